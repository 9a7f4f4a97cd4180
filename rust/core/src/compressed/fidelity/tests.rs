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
        // An unknown version is UnsupportedVersion.
        b[8..12].copy_from_slice(&3u32.to_le_bytes());
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
                .map(|i| fq.max_error(i) * rmax + fq.max_error2(i) * rmax2)
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
    let cids = super::layout(dim, 2, 1, 2, n).expect("layout").cids;
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
