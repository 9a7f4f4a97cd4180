//! Tests of transform-coded refinement files (version 4): the kernel against its portable path
//! and the float oracle over the reconstructions, merges, crafted files.

use super::*;
use crate::compressed::codec::{Codec, CodecParams};
use crate::compressed::ivf::IvfSegment;
use crate::compressed::kmeans::Rng;
use crate::maxsim::DocVectors;

fn gauss(rng: &mut Rng) -> f32 {
    (0..4)
        .map(|_| (rng.next_u64() >> 40) as f32 / (1u64 << 24) as f32 - 0.5)
        .sum::<f32>()
}

/// `n` unit vectors around `n_clusters` random centres.
fn data(n: usize, dim: usize, n_clusters: usize, seed: u64) -> Vec<f32> {
    let mut rng = Rng::new(seed);
    let centres: Vec<f32> = (0..n_clusters * dim).map(|_| gauss(&mut rng)).collect();
    let mut out = Vec::with_capacity(n * dim);
    for _ in 0..n {
        let c = rng.below(n_clusters);
        let mut v: Vec<f32> = (0..dim)
            .map(|d| centres[c * dim + d] + 0.4 * gauss(&mut rng))
            .collect();
        let norm = v.iter().map(|x| x * x).sum::<f32>().sqrt().max(1e-6);
        v.iter_mut().for_each(|x| *x /= norm);
        out.extend(v);
    }
    out
}

/// A segment as a commit encodes it: documents of the given token counts, pooled by 2, their
/// lists, and the transform-coded file of `bits`.
struct Seg {
    x: Vec<f32>,
    offsets: Vec<u64>,
    codec: Codec,
    ivf: IvfSegment,
    fid: FidSegment,
}

fn segment(dim: usize, lens: &[usize], bits: usize, seed: u64) -> Seg {
    let n: usize = lens.iter().sum();
    let x = data(n, dim, 7, seed);
    let mut offsets = vec![0u64];
    for &l in lens {
        offsets.push(offsets[offsets.len() - 1] + l as u64);
    }
    let mut pooled = Vec::new();
    let mut poff = vec![0u64];
    for w in offsets.windows(2) {
        let p = crate::compressed::pool::pool_document(
            &x[w[0] as usize * dim..w[1] as usize * dim],
            dim,
            2,
        );
        poff.push(poff[poff.len() - 1] + (p.len() / dim) as u64);
        pooled.extend(p);
    }
    let p = CodecParams {
        n_centroids: Some(8),
        bytes_per_token: Some(dim / 8),
        kmeans_iters: Some(3),
        seed: 1,
    };
    // Trained on vectors of the same distribution (the same centres), at least 300.
    let train = data(n.max(300), dim, 7, seed);
    let codec = Codec::train(&train, dim, train.len() / dim, &p, Some(1)).expect("train");
    let ivf = IvfSegment::build(&codec, 5, DocVectors::F32(&pooled), &poff).expect("ivf");
    let fid = build_transform(&codec, 5, DocVectors::F32(&x), &offsets, &ivf, bits).expect("build");
    Seg {
        x,
        offsets,
        codec,
        ivf,
        fid,
    }
}

impl Seg {
    fn pooled(&self, d: usize) -> Vec<f32> {
        crate::compressed::state::decode_doc(&self.codec, &self.ivf, d as u32)
    }
    fn rows(&self, d: usize) -> (usize, usize) {
        (self.offsets[d] as usize, self.offsets[d + 1] as usize)
    }
}

/// `<q_i, a_p>` of every query token and pooled vector (query-token-major).
fn pooled_dots(q: &[f32], pooled: &[f32], dim: usize) -> Vec<f32> {
    let np = pooled.len() / dim;
    let mut out = Vec::new();
    for qi in q.chunks_exact(dim) {
        for p in 0..np {
            out.push((0..dim).map(|d| qi[d] * pooled[p * dim + d]).sum());
        }
    }
    out
}

fn random_lens(rng: &mut Rng, n_docs: usize, max: usize) -> Vec<usize> {
    (0..n_docs).map(|_| 1 + rng.below(max)).collect()
}

#[test]
fn packing_fills_whole_subspaces_by_rate() {
    let rates = [1u8, 4, 0, 2, 1, 2, 1, 1, 4, 0];
    let p = transform::pack(&rates).expect("pack");
    let bits: Vec<u32> = p
        .iter()
        .map(|s| s.iter().map(|x| x.bits as u32).sum())
        .collect();
    assert_eq!(bits, vec![4, 4, 4, 4]);
    assert_eq!(p[0][0].comp, 1);
    assert_eq!(p[2].iter().map(|x| x.comp).collect::<Vec<_>>(), vec![3, 5]);
    assert!(transform::pack(&[3u8, 1]).is_none());
    assert_eq!(transform_bits(64, 128), 512);
    assert_eq!(transform_bits(160, 128), 512);
    assert_eq!(transform_bits(160, 384), 1280);
    assert_eq!(transform_bits(64, 20), 80);
}

#[test]
fn reconstruction_beats_the_pooled_anchor_and_round_trips() {
    let mut rng = Rng::new(5);
    for &(dim, bits) in &[(32usize, 64usize), (32, 128), (64, 256)] {
        let lens = random_lens(&mut rng, 12, 90);
        let s = segment(dim, &lens, bits, dim as u64 + bits as u64);
        let f = &s.fid;
        assert!(f.is_transform());
        assert_eq!(
            (f.version(), f.transform_bits(), f.n_sub()),
            (4, bits, bits / 4)
        );
        let g = FidSegment::from_bytes(f.as_bytes(), true).expect("parse");
        assert_eq!(g.as_bytes(), f.as_bytes());
        assert_eq!(f.rates(0).iter().map(|&r| r as usize).sum::<usize>(), bits);
        let (mut e_rec, mut e_anchor) = (0f64, 0f64);
        for d in 0..lens.len() {
            let (a, b) = s.rows(d);
            let pooled = s.pooled(d);
            let rec = f.decode_rows_transform(&pooled, a, b).expect("decode");
            for t in a..b {
                let p = f.pooled_index(t);
                for j in 0..dim {
                    let v = s.x[t * dim + j];
                    e_rec += ((v - rec[(t - a) * dim + j]) as f64).powi(2);
                    e_anchor += ((v - pooled[p * dim + j]) as f64).powi(2);
                }
            }
        }
        // 2 bits per component keep ~12 % of a Gaussian residual's energy, 4 bits ~1 %.
        let most = if bits >= 2 * dim { 0.35 } else { 0.6 };
        assert!(
            e_rec < most * e_anchor,
            "dim {dim} bits {bits}: {e_rec} vs anchor {e_anchor}"
        );
    }
}

/// The kernel (AVX2 when detected) against its portable path, bit for bit, and against MaxSim
/// over the decoded reconstructions within the table quantisation's bound, on random shapes:
/// dims 128 and 384, documents of 1 to 600 tokens (pooled counts past 256 need u16 indices).
#[test]
fn kernel_matches_portable_path_and_maxsim_over_reconstructions() {
    let mut rng = Rng::new(17);
    for &(dim, bytes, max_len) in &[
        (128usize, 64usize, 600usize),
        (128, 160, 200),
        (384, 64, 120),
        (384, 160, 600),
    ] {
        let mut lens = random_lens(&mut rng, 6, max_len);
        if max_len == 600 {
            lens.push(600); // 556 pooled vectors: two-byte pooled indices
        }
        let bits = transform_bits(bytes, dim);
        let s = segment(dim, &lens, bits, rng.next_u64());
        let f = &s.fid;
        for _ in 0..2 {
            let nq = 1 + rng.below(12);
            let q = data(nq, dim, 3, rng.next_u64());
            let fq = FidQuery::new(&q, f);
            for d in 0..lens.len() {
                let (a, b) = s.rows(d);
                let pooled = s.pooled(d);
                let np = pooled.len() / dim;
                let ps = pooled_dots(&q, &pooled, dim);
                let p = score_doc_transform(&fq, &ps, np, f, a, b, false);
                let v = score_doc_transform(&fq, &ps, np, f, a, b, crate::simd::avx2());
                assert_eq!(
                    p.to_bits(),
                    v.to_bits(),
                    "dim {dim} doc {d} of {} tokens",
                    b - a
                );
                let o = score_doc_transform_scalar(&q, &pooled, f, a, b);
                let smax = (a..b).map(|t| f.scale(t)).fold(0f32, f32::max);
                let tol: f32 = (0..nq)
                    .map(|i| fq.max_error_transform(f, 0, i) * smax)
                    .sum::<f32>()
                    + 1e-3 * nq as f32;
                assert!(
                    (p - o).abs() <= tol,
                    "dim {dim}: {p} vs oracle {o} (tol {tol})"
                );
            }
        }
    }
}

#[test]
fn merged_files_keep_scores_and_reconstructions_bit_identical() {
    let mut rng = Rng::new(23);
    let dim = 32;
    let (l1, l2) = (random_lens(&mut rng, 9, 70), random_lens(&mut rng, 7, 70));
    let s1 = segment(dim, &l1, 64, 1);
    let s2 = segment(dim, &l2, 64, 2);
    // Keep some documents of each (the same pooled vectors: the lists merge in order).
    let keep1: Vec<usize> = (0..l1.len()).filter(|d| d % 3 != 1).collect();
    let keep2: Vec<usize> = (0..l2.len()).filter(|d| d % 2 == 0).collect();
    let docs1: Vec<(usize, usize)> = keep1.iter().map(|&d| s1.rows(d)).collect();
    let docs2: Vec<(usize, usize)> = keep2.iter().map(|&d| s2.rows(d)).collect();
    let m = merge(&[
        MergeSource {
            fid: &s1.fid,
            docs: &docs1,
        },
        MergeSource {
            fid: &s2.fid,
            docs: &docs2,
        },
    ])
    .expect("merge");
    assert_eq!(m.n_sets(), 2);
    assert_eq!(m.n_docs(), keep1.len() + keep2.len());
    let q = data(5, dim, 2, 9);
    let (fq1, fq2, fqm) = (
        FidQuery::new(&q, &s1.fid),
        FidQuery::new(&q, &s2.fid),
        FidQuery::new(&q, &m),
    );
    let mut u = 0;
    for (s, fq, keep) in [(&s1, &fq1, &keep1), (&s2, &fq2, &keep2)] {
        for &d in keep.iter() {
            let (a, b) = s.rows(d);
            let pooled = s.pooled(d);
            let np = pooled.len() / dim;
            let ps = pooled_dots(&q, &pooled, dim);
            let want = score_doc_transform(fq, &ps, np, &s.fid, a, b, crate::simd::avx2());
            let (ma, mb) = (u, u + b - a);
            let got = score_doc_transform(&fqm, &ps, np, &m, ma, mb, crate::simd::avx2());
            assert_eq!(want.to_bits(), got.to_bits());
            let r1 = s.fid.decode_rows_transform(&pooled, a, b).expect("decode");
            let r2 = m.decode_rows_transform(&pooled, ma, mb).expect("decode");
            assert_eq!(r1, r2);
            u = mb;
        }
    }
    // Files of another budget do not merge losslessly.
    let s3 = segment(dim, &l2, 128, 3);
    let all3: Vec<(usize, usize)> = (0..l2.len()).map(|d| s3.rows(d)).collect();
    assert!(merge(&[
        MergeSource {
            fid: &s1.fid,
            docs: &docs1
        },
        MergeSource {
            fid: &s3.fid,
            docs: &all3
        }
    ])
    .is_err());
}

/// The trailing checksum of `b` recomputed after an edit.
fn reseal(b: &mut [u8]) {
    let n = b.len() - 4;
    let crc = crc32c::crc32c(&b[..n]);
    b[n..].copy_from_slice(&crc.to_le_bytes());
}

fn err_text(b: &[u8]) -> String {
    match FidSegment::from_bytes(b, true) {
        Ok(_) => String::from("accepted"),
        Err(e) => e.to_string(),
    }
}

#[test]
fn crafted_version_4_files_are_rejected_with_clear_errors() {
    let mut rng = Rng::new(31);
    let dim = 32;
    let lens = random_lens(&mut rng, 5, 60);
    let s = segment(dim, &lens, 64, 4);
    let good = s.fid.as_bytes().to_vec();
    let off = |name: &str| -> usize {
        // Offsets of the sections from the header (layout as the module documents).
        let a = |x: usize| x.div_ceil(64) * 64;
        let n = s.fid.n_tokens();
        let rot = a(64 + 8);
        let rates = a(rot + dim * dim * 4);
        let levels = a(rates + dim);
        let pidx = a(levels + dim * 16 * 4);
        match name {
            "rotation" => rot,
            "rates" => rates,
            "pidx" => pidx,
            _ => a(pidx + n),
        }
    };
    // Rates that do not sum to the header's bits.
    let mut b = good.clone();
    let r = off("rates");
    let j = (0..dim)
        .find(|&j| b[r + j] == 1)
        .expect("a 1-bit component");
    b[r + j] = 2;
    reseal(&mut b);
    let e = err_text(&b);
    assert!(e.contains("rates sum to 65 bits"), "{e}");
    // A rate that is no power of two.
    let mut b = good.clone();
    b[r + j] = 3;
    reseal(&mut b);
    assert!(err_text(&b).contains("not 0, 1, 2 or 4"));
    // A non-finite rotation entry.
    let mut b = good.clone();
    let o = off("rotation") + 4 * 7;
    b[o..o + 4].copy_from_slice(&f32::NAN.to_le_bytes());
    reseal(&mut b);
    assert!(
        err_text(&b).contains("rotation entry is not finite"),
        "{}",
        err_text(&b)
    );
    // Truncated, and cut anywhere.
    for cut in [0, 10, 64, good.len() / 2, good.len() - 1] {
        assert!(FidSegment::from_bytes(&good[..cut], false).is_err());
    }
    // A pooled index past its document's pooled count: parses, caught against the lists.
    let mut b = good.clone();
    let p = off("pidx");
    b[p] = 200;
    reseal(&mut b);
    let f = FidSegment::from_bytes(&b, true).expect("the file alone is well formed");
    let e = f
        .check_pooled(
            &s.offsets,
            |d| s.ivf.doc_positions(d).map(|x| x.len()),
            std::path::Path::new("fid"),
        )
        .expect_err("out of range");
    assert!(
        e.to_string()
            .contains("names pooled vector 200 of document 0"),
        "{e}"
    );
    s.fid
        .check_pooled(
            &s.offsets,
            |d| s.ivf.doc_positions(d).map(|x| x.len()),
            std::path::Path::new("fid"),
        )
        .expect("the built file's indices are in range");
    // Random bit flips: the checksum catches every one.
    for _ in 0..64 {
        let mut b = good.clone();
        let i = rng.below(b.len());
        b[i] ^= 1 << rng.below(8);
        assert!(FidSegment::from_bytes(&b, true).is_err(), "flip at {i}");
    }
}
