use super::*;
use crate::compressed::codec::{Codec, CodecParams};
use crate::compressed::kmeans::Rng;
use crate::maxsim::DocVectors;

fn gauss(rng: &mut Rng) -> f32 {
    // Sum of uniforms: close enough to normal for clustered test data.
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

fn codec(x: &[f32], dim: usize, k: usize) -> Codec {
    let p = CodecParams {
        n_centroids: Some(k),
        bytes_per_token: Some(dim / 8),
        kmeans_iters: Some(4),
        seed: 1,
    };
    Codec::train(x, dim, x.len() / dim, &p, Some(1)).expect("train")
}

#[test]
fn round_trip_and_reconstruction_beats_the_centroid() {
    for &(dim, nbits, nbits2, n) in &[
        (32usize, 1usize, 0usize, 700usize),
        (48, 2, 0, 513),
        (24, 1, 0, 300),
        (30, 2, 0, 420),
        (48, 2, 1, 513),
        (30, 2, 1, 270),
        (32, 1, 1, 300),
        (36, 2, 2, 280),
    ] {
        let x = data(n, dim, 9, dim as u64 + nbits as u64);
        let c = codec(&x, dim, 16);
        let f = build(&c, 77, DocVectors::F32(&x), 5, nbits, nbits2).expect("build");
        assert_eq!(
            (f.n_tokens(), f.n_docs(), f.nbits(), f.nbits2(), f.dim()),
            (n, 5, nbits, nbits2, dim)
        );
        let g = FidSegment::from_bytes(f.as_bytes(), true).expect("parse");
        assert_eq!(g.as_bytes(), f.as_bytes());
        assert_eq!(g.codec_checksum(), 77);
        let rec = g.decode_rows(c.centroids(), 0, n).expect("decode");
        let (mut e_rec, mut e_cent) = (0f64, 0f64);
        for t in 0..n {
            let cid = g.cid(t) as usize;
            for d in 0..dim {
                let v = x[t * dim + d];
                e_rec += ((v - rec[t * dim + d]) as f64).powi(2);
                e_cent += ((v - c.centroids()[cid * dim + d]) as f64).powi(2);
            }
        }
        // 1 bit/dim of a Gaussian-like residual keeps ~36 % of its energy, 2 bits ~12 %,
        // 2 + 1 bits (additive) ~5 %.
        let most = match nbits + nbits2 {
            1 => 0.5,
            2 => 0.2,
            _ => 0.1,
        };
        assert!(
            e_rec < most * e_cent,
            "dim {dim} nbits {nbits}+{nbits2}: {e_rec} vs {e_cent}"
        );
        if nbits2 > 0 {
            // The second stage only refines: dropping it (the first stage alone) is worse.
            let one = build(&c, 77, DocVectors::F32(&x), 5, nbits, 0).expect("build");
            let rec1 = one.decode_rows(c.centroids(), 0, n).expect("decode");
            let e1: f64 = x
                .iter()
                .zip(&rec1)
                .map(|(a, b)| ((a - b) as f64).powi(2))
                .sum();
            assert!(e_rec < 0.7 * e1, "second stage: {e_rec} vs one stage {e1}");
            for t in 0..n {
                assert_eq!(g.cid(t), one.cid(t));
                for d in 0..dim {
                    assert_eq!(g.level(t, d), one.level(t, d), "stage 1 unchanged");
                    assert!(g.level2(t, d) < 1 << nbits2);
                }
            }
        }
    }
}

/// The trailing checksum of `b` recomputed after an edit.
fn reseal(b: &mut [u8]) {
    let n = b.len() - 4;
    let crc = crc32c::crc32c(&b[..n]);
    b[n..].copy_from_slice(&crc.to_le_bytes());
}

#[test]
fn version_1_files_still_open_and_score_alike() {
    // A single-stage file of version 2 has the version-1 layout: as version 1 it reads the same.
    let (dim, n) = (40, 333);
    let x = data(n, dim, 5, 21);
    let c = codec(&x, dim, 8);
    for nbits in [1, 2] {
        let f = build(&c, 3, DocVectors::F32(&x), 2, nbits, 0).expect("build");
        let mut b = f.as_bytes().to_vec();
        assert_eq!(u32::from_le_bytes([b[8], b[9], b[10], b[11]]), 2);
        b[8..12].copy_from_slice(&1u32.to_le_bytes());
        reseal(&mut b);
        let old = FidSegment::from_bytes(&b, true).expect("version 1 opens");
        assert_eq!((old.nbits(), old.nbits2()), (nbits, 0));
        assert_eq!(
            old.decode_rows(c.centroids(), 0, n).expect("decode"),
            f.decode_rows(c.centroids(), 0, n).expect("decode")
        );
        // Version 1 ignores bytes 48..64; version 2 rejects anything there but nbits2.
        b[56] = 7;
        reseal(&mut b);
        assert!(FidSegment::from_bytes(&b, true).is_ok());
        b[8..12].copy_from_slice(&2u32.to_le_bytes());
        reseal(&mut b);
        assert!(FidSegment::from_bytes(&b, true).is_err());
        // An unknown version is UnsupportedVersion (4 is the transform-coded layout).
        b[8..12].copy_from_slice(&5u32.to_le_bytes());
        reseal(&mut b);
        assert!(matches!(
            FidSegment::from_bytes(&b, true),
            Err(LatixError::UnsupportedVersion { .. })
        ));
    }
    // A second stage the header announces but the file lacks is a size mismatch.
    let f = build(&c, 3, DocVectors::F32(&x), 2, 2, 0).expect("build");
    let mut b = f.as_bytes().to_vec();
    b[48..52].copy_from_slice(&1u32.to_le_bytes());
    reseal(&mut b);
    assert!(FidSegment::from_bytes(&b, true).is_err());
}

#[test]
fn re_encoding_a_reconstruction_keeps_its_codes() {
    let (dim, n) = (32, 600);
    for (nbits, nbits2) in [(1, 0), (2, 0), (2, 1)] {
        let x = data(n, dim, 7, 5 + nbits as u64);
        let c = codec(&x, dim, 12);
        let f = build(&c, 1, DocVectors::F32(&x), 1, nbits, nbits2).expect("build");
        let rec = f.decode_rows(c.centroids(), 0, n).expect("decode");
        let g = build(&c, 1, DocVectors::F32(&rec), 1, nbits, nbits2).expect("rebuild");
        let same_cid: Vec<bool> = (0..n).map(|t| f.cid(t) == g.cid(t)).collect();
        assert!(same_cid.iter().filter(|&&s| s).count() * 10 >= n * 9);
        let (mut same, mut all) = (0usize, 0usize);
        for t in (0..n).filter(|&t| same_cid[t]) {
            for d in 0..dim {
                same += (f.level(t, d) == g.level(t, d)) as usize;
                all += 1;
            }
        }
        assert!(
            same as f64 >= 0.95 * all as f64,
            "nbits {nbits}: {same} of {all} levels kept"
        );
    }
}

#[test]
fn kernel_matches_portable_path_and_float_oracle() {
    let mut rng = Rng::new(99);
    for &(dim, nbits, nbits2) in &[
        (32usize, 1usize, 0usize),
        (40, 2, 0),
        (20, 1, 0),
        (384, 1, 0),
        (384, 2, 0),
        (18, 2, 0),
        (384, 2, 1),
        (40, 2, 1),
        (18, 2, 1),
        (20, 1, 2),
    ] {
        let n = 256 + rng.below(300);
        let x = data(n, dim, 6, dim as u64 * 3 + nbits as u64);
        let c = codec(&x, dim, 10);
        let f = build(&c, 0, DocVectors::F32(&x), 1, nbits, nbits2).expect("build");
        let k = c.n_centroids();
        for _ in 0..6 {
            let nq = 1 + rng.below(9);
            let q = data(nq, dim, 3, rng.next_u64());
            let fq = FidQuery::new(&q, &f);
            // Centroid scores, rows of stride >= K as the query plan lays them out.
            let stride = k + rng.below(5);
            let mut cs = vec![0f32; nq * stride];
            for i in 0..nq {
                for j in 0..k {
                    cs[i * stride + j] = (0..dim)
                        .map(|d| q[i * dim + d] * c.centroids()[j * dim + d])
                        .sum();
                }
            }
            let a = rng.below(n);
            let b = a + rng.below(n - a + 1);
            let p = score_doc(&fq, &cs, stride, &f, a, b, false);
            let s = score_doc(&fq, &cs, stride, &f, a, b, crate::simd::avx2());
            assert_eq!(
                p.to_bits(),
                s.to_bits(),
                "dim {dim} nbits {nbits} rows {a}..{b}"
            );
            let o = score_doc_scalar(&q, c.centroids(), &f, a, b);
            let rmax = (a..b).map(|t| f.scale(t)).fold(0f32, f32::max);
            let rmax2 = (a..b).map(|t| f.scale2(t)).fold(0f32, f32::max);
            let tol: f32 = (0..nq)
                .map(|i| fq.max_error(&f, 0, i) * rmax + fq.max_error2(&f, 0, i) * rmax2)
                .sum::<f32>()
                + 1e-4 * nq as f32;
            assert!((p - o).abs() <= tol, "{p} vs oracle {o} (tol {tol})");
            if b == a {
                assert_eq!(p, 0.0);
            }
        }
    }
}

#[test]
fn damaged_files_are_rejected() {
    let (dim, n) = (16, 300);
    let x = data(n, dim, 4, 3);
    let c = codec(&x, dim, 8);
    let f = build(&c, 5, DocVectors::F32(&x), 2, 2, 1).expect("build");
    let good = f.as_bytes().to_vec();
    let mut rng = Rng::new(4);
    for _ in 0..64 {
        let mut b = good.clone();
        let i = rng.below(b.len());
        b[i] ^= 1 << rng.below(8);
        assert!(FidSegment::from_bytes(&b, true).is_err(), "flip at {i}");
    }
    for cut in [0, 10, 64, good.len() / 2, good.len() - 1] {
        assert!(FidSegment::from_bytes(&good[..cut], false).is_err());
    }
    // A centroid id past K is caught without the checksum.
    let mut b = good.clone();
    let cids = super::layout(dim, 2, 1, 2, n, 1, 2).expect("layout").cids;
    b[cids..cids + 2].copy_from_slice(&9u16.to_le_bytes());
    assert!(FidSegment::from_bytes(&b, false).is_err());
}

#[test]
fn lloyd_max_levels_are_sorted_conditional_means() {
    let mut rng = Rng::new(8);
    for nbits in [1, 2] {
        let mut x: Vec<f32> = (0..5000).map(|_| gauss(&mut rng)).collect();
        x.sort_by(f32::total_cmp);
        let l = build::lloyd_max(&x, nbits);
        assert!(l.windows(2).all(|w| w[0] <= w[1]));
        // Each level is the mean of the values nearest it.
        let cuts: Vec<f32> = l.windows(2).map(|w| 0.5 * (w[0] + w[1])).collect();
        for (li, &lv) in l.iter().enumerate() {
            let lo = if li == 0 {
                f32::NEG_INFINITY
            } else {
                cuts[li - 1]
            };
            let hi = cuts.get(li).copied().unwrap_or(f32::INFINITY);
            let v: Vec<f32> = x.iter().copied().filter(|&v| v >= lo && v < hi).collect();
            let m = v.iter().sum::<f32>() / v.len() as f32;
            assert!((m - lv).abs() < 0.02, "level {li}: {lv} vs mean {m}");
        }
    }
    // One value: every level is that value.
    assert!(build::lloyd_max(&[0.25], 2).iter().all(|&v| v == 0.25));
}

/// Random documents (row ranges) of a file of `n` rows: consecutive ranges of 1 to 12 rows.
fn split_docs(rng: &mut Rng, n: usize) -> Vec<(usize, usize)> {
    let mut out = Vec::new();
    let mut a = 0;
    while a < n {
        let b = (a + 1 + rng.below(12)).min(n);
        out.push((a, b));
        a = b;
    }
    out
}

/// MaxSim of `q` against rows `a..b` of `f` through the block kernel, with `cs` the query's
/// centroid scores (stride `k`).
fn kernel_score(q: &[f32], cs: &[f32], k: usize, f: &FidSegment, a: usize, b: usize) -> f32 {
    score_doc(&FidQuery::new(q, f), cs, k, f, a, b, crate::simd::avx2())
}

#[test]
fn merged_files_keep_every_kept_documents_scores_and_reconstruction_bit_identical() {
    let mut rng = Rng::new(12);
    for &(dim, nbits, nbits2, n_src) in &[
        (32usize, 1usize, 0usize, 3usize),
        (20, 1, 0, 1),
        (48, 2, 1, 4),
        (18, 2, 1, 2),
        (36, 2, 0, 3),
    ] {
        // One codec, sources encoded from differently distributed data: each has its own levels.
        let all = data(900, dim, 7, dim as u64 * 5 + nbits as u64);
        let c = codec(&all, dim, 12);
        let k = c.n_centroids();
        let mut srcs = Vec::new();
        for i in 0..n_src {
            let n = 33 + rng.below(200);
            let x = data(n, dim, 2 + i, rng.next_u64());
            let docs = split_docs(&mut rng, n);
            let f = build(&c, 9, DocVectors::F32(&x), docs.len(), nbits, nbits2).expect("build");
            srcs.push((f, docs));
        }
        // A merge of merged files too: the first merge's output is a source of the second.
        let mut kept_all: Vec<Vec<(usize, usize)>> = Vec::new();
        for (_, docs) in &srcs {
            // Drop about a third of the documents (every one, sometimes).
            let drop_all = rng.below(8) == 0;
            kept_all.push(
                docs.iter()
                    .copied()
                    .filter(|_| !drop_all && rng.below(3) != 0)
                    .collect(),
            );
        }
        let sources: Vec<MergeSource<'_>> = srcs
            .iter()
            .zip(&kept_all)
            .map(|((f, _), docs)| MergeSource { fid: f, docs })
            .collect();
        let m = merge(&sources).expect("merge");
        let m = FidSegment::from_bytes(m.as_bytes(), true).expect("reparse");
        let kept: Vec<(usize, usize, usize)> = kept_all
            .iter()
            .enumerate()
            .flat_map(|(s, d)| d.iter().map(move |&(a, b)| (s, a, b)))
            .collect();
        let total: usize = kept.iter().map(|&(_, a, b)| b - a).sum();
        assert_eq!((m.n_tokens(), m.n_docs()), (total, kept.len()));
        assert_eq!((m.nbits(), m.nbits2(), m.dim()), (nbits, nbits2, dim));
        let distinct = kept_all.iter().filter(|d| !d.is_empty()).count();
        assert_eq!(
            m.n_sets(),
            distinct.max(1),
            "one level set per source with rows"
        );
        let expect_version = if distinct > 1 { 3 } else { 2 };
        assert_eq!(crate::format::le_u32(m.as_bytes(), 8), expect_version);
        let nq = 1 + rng.below(6);
        let q = data(nq, dim, 3, rng.next_u64());
        let mut cs = vec![0f32; nq * k];
        for i in 0..nq {
            for j in 0..k {
                cs[i * k + j] = (0..dim)
                    .map(|d| q[i * dim + d] * c.centroids()[j * dim + d])
                    .sum();
            }
        }
        let mq = FidQuery::new(&q, &m);
        let mut u = 0;
        let mut merged_docs = Vec::new();
        for &(s, a, b) in &kept {
            let f = &srcs[s].0;
            let v = u + (b - a);
            let want = kernel_score(&q, &cs, k, f, a, b);
            for simd in [false, crate::simd::avx2()] {
                let got = score_doc(&mq, &cs, k, &m, u, v, simd);
                assert_eq!(
                    got.to_bits(),
                    want.to_bits(),
                    "dim {dim}: doc {a}..{b} of {s}"
                );
            }
            let r0 = f.decode_rows(c.centroids(), a, b).expect("decode");
            let r1 = m.decode_rows(c.centroids(), u, v).expect("decode");
            assert_eq!(
                r0.iter().map(|x| x.to_bits()).collect::<Vec<_>>(),
                r1.iter().map(|x| x.to_bits()).collect::<Vec<_>>()
            );
            merged_docs.push((u, v));
            u = v;
        }
        // Merging the merged file again (with half its documents) keeps them too.
        let half: Vec<(usize, usize)> = merged_docs.iter().copied().step_by(2).collect();
        let again = merge(&[MergeSource {
            fid: &m,
            docs: &half,
        }])
        .expect("merge again");
        let mut w = 0;
        for &(a, b) in &half {
            let want = kernel_score(&q, &cs, k, &m, a, b);
            let got = kernel_score(&q, &cs, k, &again, w, w + b - a);
            assert_eq!(got.to_bits(), want.to_bits());
            w += b - a;
        }
        // A document range crossing a level set is refused.
        if m.n_sets() > 1 {
            let s = m.set_starts()[1];
            let bad = [(s - 1, s + 1)];
            assert!(merge(&[MergeSource {
                fid: &m,
                docs: &bad
            }])
            .is_err());
        }
    }
}

#[test]
fn crafted_level_set_tables_are_rejected() {
    let dim = 16;
    let mut rng = Rng::new(5);
    let c = codec(&data(400, dim, 4, 1), dim, 8);
    let mut srcs = Vec::new();
    for i in 0..3 {
        let x = data(70 + 10 * i, dim, 2, 40 + i as u64);
        srcs.push((
            build(&c, 5, DocVectors::F32(&x), 7, 1, 0).expect("build"),
            x.len() / dim,
        ));
    }
    let docs: Vec<Vec<(usize, usize)>> = srcs.iter().map(|s| split_docs(&mut rng, s.1)).collect();
    let sources: Vec<MergeSource<'_>> = srcs
        .iter()
        .zip(&docs)
        .map(|(s, d)| MergeSource { fid: &s.0, docs: d })
        .collect();
    let m = merge(&sources).expect("merge");
    assert_eq!(m.n_sets(), 3);
    let good = m.as_bytes().to_vec();
    let n = m.n_tokens() as u64;
    let lay = super::layout(dim, 1, 0, 2, m.n_tokens(), 3, 3).expect("layout");
    // Set starts not from 0, not ascending, repeated, past the rows; a count of 0, too many
    // sets for the file, a count that moves the sections: each a Corrupted error, checksum
    // resealed (the structural checks reached) or not.
    let starts = |v: [u64; 3]| {
        let mut b = good.clone();
        for (i, x) in v.iter().enumerate() {
            let o = lay.sets + 8 * i;
            b[o..o + 8].copy_from_slice(&x.to_le_bytes());
        }
        b
    };
    let mut bad = vec![
        starts([1, 70, 150]),
        starts([0, 150, 70]),
        starts([0, 70, 70]),
        starts([0, 70, n]),
        starts([0, 70, u64::MAX]),
    ];
    for count in [0u32, 1, 2, 4, 1 << 30, u32::MAX] {
        let mut b = good.clone();
        b[52..56].copy_from_slice(&count.to_le_bytes());
        bad.push(b);
    }
    let mut b = good.clone();
    b[56] = 1; // unused header bytes
    bad.push(b);
    for mut b in bad {
        reseal(&mut b);
        match FidSegment::from_bytes(&b, true) {
            Err(crate::error::LatixError::Corrupted { .. }) => {}
            Err(e) => panic!("not a Corrupted error: {e}"),
            Ok(_) => panic!("crafted level-set table accepted"),
        }
    }
    assert!(FidSegment::from_bytes(&good, true).is_ok());
}
