//! Compressed index: codec round trip, code-level scores against exact dot products, recall of the
//! WARP-style search against exhaustive MaxSim on seeded clustered data, filters, file round trips
//! and bad input.

use latix_core::compressed::fastscan::{
    build_lut, has_avx2, pack_block, scan_block, scan_block_scalar, BLOCK,
};
use latix_core::compressed::kmeans::Rng;
use latix_core::compressed::{
    codec_checksum, search_segments, Codec, CodecParams, IvfSegment, QueryPlan, SegmentView,
};
use latix_core::maxsim::{scalar::maxsim_f32, DocVectors};
use latix_core::LatixError;

mod common;
use common::{as_version_3, gauss, normalise, v4_layout, with_crc};

/// Clustered unit vectors: `n_topics` topic centres, every document draws its tokens around 2 of them.
pub struct Corpus {
    pub dim: usize,
    pub vectors: Vec<f32>,
    pub offsets: Vec<u64>,
    pub centres: Vec<f32>,
}

pub fn corpus(seed: u64, n_docs: usize, dim: usize, n_topics: usize) -> Corpus {
    let mut rng = Rng::new(seed);
    let mut centres = Vec::new();
    for _ in 0..n_topics {
        let mut c: Vec<f32> = (0..dim).map(|_| gauss(&mut rng)).collect();
        normalise(&mut c);
        centres.extend(c);
    }
    let mut vectors = Vec::new();
    let mut offsets = vec![0u64];
    for _ in 0..n_docs {
        let len = 5 + rng.below(20);
        let topics = [rng.below(n_topics), rng.below(n_topics)];
        for t in 0..len {
            let c = &centres[topics[t % 2] * dim..(topics[t % 2] + 1) * dim];
            let mut v: Vec<f32> = c
                .iter()
                .map(|&x| x + 0.6 * gauss(&mut rng) / (dim as f32).sqrt())
                .collect();
            normalise(&mut v);
            vectors.extend(v);
        }
        offsets.push((vectors.len() / dim) as u64);
    }
    Corpus {
        dim,
        vectors,
        offsets,
        centres,
    }
}

fn query(c: &Corpus, rng: &mut Rng, nq: usize) -> Vec<f32> {
    let n_topics = c.centres.len() / c.dim;
    let topics = [rng.below(n_topics), rng.below(n_topics)];
    let mut q = Vec::new();
    for t in 0..nq {
        let ctr = &c.centres[topics[t % 2] * c.dim..(topics[t % 2] + 1) * c.dim];
        let mut v: Vec<f32> = ctr
            .iter()
            .map(|&x| x + 0.8 * gauss(rng) / (c.dim as f32).sqrt())
            .collect();
        normalise(&mut v);
        q.extend(v);
    }
    q
}

fn train(c: &Corpus, k: usize, bytes: usize) -> Codec {
    let p = CodecParams {
        n_centroids: Some(k),
        bytes_per_token: Some(bytes),
        kmeans_iters: Some(8),
        seed: 1,
    };
    Codec::train(&c.vectors, c.dim, c.vectors.len() / c.dim, &p, Some(2)).expect("train")
}

#[test]
fn round_trip_error_is_small_and_shrinks_with_more_bytes() {
    let c = corpus(1, 300, 64, 12);
    let n = c.vectors.len() / c.dim;
    let mut errs = Vec::new();
    for bytes in [4, 16] {
        let codec = train(&c, 32, bytes);
        let (ids, codes) =
            latix_core::parallel::install(Some(2), || codec.encode(&c.vectors)).unwrap();
        assert_eq!(codes.len(), n * bytes);
        let rec = codec.decode(&ids, &codes);
        let err: f32 = c
            .vectors
            .iter()
            .zip(&rec)
            .map(|(a, b)| (a - b) * (a - b))
            .sum::<f32>()
            / n as f32;
        // Centroid only (no residual code): the error the PQ must beat.
        let cen = codec.centroids();
        let err_c: f32 = c
            .vectors
            .chunks_exact(c.dim)
            .zip(&ids)
            .map(|(v, &i)| {
                v.iter()
                    .zip(&cen[i as usize * c.dim..])
                    .map(|(a, b)| (a - b) * (a - b))
                    .sum::<f32>()
            })
            .sum::<f32>()
            / n as f32;
        assert!(
            err < 0.8 * err_c,
            "bytes {bytes}: PQ error {err} vs centroid-only {err_c}"
        );
        assert!(
            err < 0.3,
            "bytes {bytes}: mean squared error {err} of unit vectors"
        );
        errs.push(err);
    }
    assert!(
        errs[1] < errs[0] * 0.8,
        "more bytes must reduce the error: {errs:?}"
    );
}

#[test]
fn code_level_scores_match_dot_with_decoded_vector() {
    let c = corpus(2, 200, 32, 8);
    let codec = train(&c, 16, 8);
    let (ids, codes) = latix_core::parallel::install(Some(1), || codec.encode(&c.vectors)).unwrap();
    let rec = codec.decode(&ids, &codes);
    let mut rng = Rng::new(5);
    let q = query(&c, &mut rng, 1);
    let lut = build_lut(&codec, &q);
    // Re-pack the first 32 tokens as a block and score them from codes.
    let m = codec.n_subspaces();
    let mut block = vec![0u8; m * 16];
    pack_block(&codes[..BLOCK * m / 2], m, &mut block);
    let mut acc = [0u16; BLOCK];
    let mut acc2 = [0u16; BLOCK];
    scan_block(&lut.lut, &block, m, has_avx2(), &mut acc);
    scan_block_scalar(&lut.lut, &block, m, &mut acc2);
    assert_eq!(acc, acc2);
    let cen = codec.centroids();
    for t in 0..BLOCK {
        let cid = ids[t] as usize;
        let cs: f32 = q
            .iter()
            .zip(&cen[cid * c.dim..(cid + 1) * c.dim])
            .map(|(a, b)| a * b)
            .sum();
        let est = cs + lut.bias + lut.scale * acc[t] as f32;
        let exact_dec: f32 = q
            .iter()
            .zip(&rec[t * c.dim..(t + 1) * c.dim])
            .map(|(a, b)| a * b)
            .sum();
        // u8 table rounding: at most half a step per subspace.
        assert!(
            (est - exact_dec).abs() <= 0.5 * lut.scale * m as f32 + 1e-4,
            "token {t}: {est} vs {exact_dec}"
        );
        let exact: f32 = q
            .iter()
            .zip(&c.vectors[t * c.dim..(t + 1) * c.dim])
            .map(|(a, b)| a * b)
            .sum();
        assert!(
            (est - exact).abs() < 0.2,
            "token {t}: code score {est} vs exact {exact}"
        );
    }
}

fn exact_topk(c: &Corpus, q: &[f32], k: usize, allowed: impl Fn(usize) -> bool) -> Vec<usize> {
    let nd = c.offsets.len() - 1;
    let mut s: Vec<(f32, usize)> = (0..nd)
        .filter(|&d| allowed(d))
        .map(|d| {
            (
                maxsim_f32(
                    q,
                    &c.vectors[c.offsets[d] as usize * c.dim..c.offsets[d + 1] as usize * c.dim],
                    c.dim,
                ),
                d,
            )
        })
        .collect();
    s.sort_by(|a, b| b.0.total_cmp(&a.0).then(a.1.cmp(&b.1)));
    s.into_iter().take(k).map(|x| x.1).collect()
}

#[test]
fn search_recall_against_exhaustive_maxsim() {
    let c = corpus(3, 2000, 64, 32);
    let codec = train(&c, 64, 16);
    let crc = codec_checksum(&codec.to_bytes());
    let seg = latix_core::parallel::install(Some(2), || {
        IvfSegment::build(&codec, crc, DocVectors::F32(&c.vectors), &c.offsets)
    })
    .unwrap()
    .unwrap();
    assert_eq!(seg.n_docs(), 2000);
    // Exhaustive MaxSim over the decoded vectors isolates the search structure from codec error.
    let (ids, codes) = latix_core::parallel::install(Some(2), || codec.encode(&c.vectors)).unwrap();
    // Decoded vectors rescaled to their original lengths: what search scores (see ivf's norm_scale).
    let mut dec = codec.decode(&ids, &codes);
    for (r, x) in dec
        .chunks_exact_mut(c.dim)
        .zip(c.vectors.chunks_exact(c.dim))
    {
        let nr = r.iter().map(|v| v * v).sum::<f32>().sqrt();
        let nx = x.iter().map(|v| v * v).sum::<f32>().sqrt();
        r.iter_mut().for_each(|v| *v *= nx / nr);
    }
    let decoded = Corpus {
        dim: c.dim,
        vectors: dec,
        offsets: c.offsets.clone(),
        centres: c.centres.clone(),
    };
    let mut rng = Rng::new(11);
    let (mut hit_all, mut hit_probe, mut hit_exact, mut total) = (0, 0, 0, 0);
    for _ in 0..20 {
        let q = query(&c, &mut rng, 8);
        let view = [SegmentView {
            seg: &seg,
            allowed: None,
        }];
        let all = search_segments(&QueryPlan::new(&codec, &q, 64).unwrap(), &view, 10).unwrap();
        let probed = latix_core::parallel::install(Some(2), || {
            search_segments(&QueryPlan::new(&codec, &q, 16).unwrap(), &view, 10)
        })
        .unwrap()
        .unwrap();
        let want_dec = exact_topk(&decoded, &q, 10, |_| true);
        let want = exact_topk(&c, &q, 10, |_| true);
        hit_all += all
            .iter()
            .filter(|g| want_dec.contains(&(g.2 as usize)))
            .count();
        hit_probe += probed
            .iter()
            .filter(|g| want_dec.contains(&(g.2 as usize)))
            .count();
        hit_exact += probed
            .iter()
            .filter(|g| want.contains(&(g.2 as usize)))
            .count();
        total += 10;
        // Scores are sorted best first.
        assert!(probed.windows(2).all(|w| w[0].0 >= w[1].0));
    }
    let r = |h: usize| h as f64 / total as f64;
    assert!(
        r(hit_all) >= 0.97,
        "all lists probed: recall@10 vs exhaustive on decoded vectors = {}",
        r(hit_all)
    );
    assert!(
        r(hit_probe) >= 0.9,
        "nprobe 16/64: recall@10 vs exhaustive on decoded vectors = {}",
        r(hit_probe)
    );
    assert!(
        r(hit_exact) >= 0.75,
        "nprobe 16/64: recall@10 vs exact exhaustive = {}",
        r(hit_exact)
    );
}

#[test]
fn filter_restricts_candidates_and_segments_round_trip_through_files() {
    let c = corpus(4, 600, 32, 10);
    let codec = train(&c, 32, 8);
    let bytes = codec.to_bytes();
    let crc = codec_checksum(&bytes);
    let dir = tempfile::tempdir().unwrap();
    let seg = latix_core::parallel::install(Some(1), || {
        IvfSegment::build(&codec, crc, DocVectors::F32(&c.vectors), &c.offsets)
    })
    .unwrap()
    .unwrap();
    let p = dir.path().join("seg.ivf");
    seg.save(&p).unwrap();
    let seg2 = IvfSegment::open(&p, true).unwrap();
    assert_eq!(seg2.as_bytes(), seg.as_bytes());
    let codec2 = Codec::from_bytes(&bytes, &p).unwrap();
    assert_eq!(codec2.to_bytes(), bytes);
    // Only even documents allowed.
    let mut bits = vec![0u64; 600usize.div_ceil(64)];
    for d in (0..600).step_by(2) {
        bits[d / 64] |= 1 << (d % 64);
    }
    let mut rng = Rng::new(2);
    let q = query(&c, &mut rng, 6);
    let plan = QueryPlan::new(&codec2, &q, 16).unwrap();
    let got = search_segments(
        &plan,
        &[SegmentView {
            seg: &seg2,
            allowed: Some(&bits),
        }],
        10,
    )
    .unwrap();
    assert_eq!(got.len(), 10);
    assert!(
        got.iter().all(|g| g.2 % 2 == 0),
        "filtered search returned an odd document"
    );
    let want = exact_topk(&c, &q, 10, |d| d % 2 == 0);
    let hit = got
        .iter()
        .filter(|g| want.contains(&(g.2 as usize)))
        .count();
    assert!(hit >= 7, "filtered recall {hit}/10");
    // A corrupted byte is caught by the checksum.
    let mut raw = std::fs::read(&p).unwrap();
    let mid = raw.len() / 2;
    raw[mid] ^= 0x55;
    std::fs::write(&p, &raw).unwrap();
    assert!(matches!(
        IvfSegment::open(&p, true),
        Err(LatixError::Corrupted { .. })
    ));
    let mut cb = bytes.clone();
    cb[40] ^= 1;
    assert!(matches!(
        Codec::from_bytes(&cb, &p),
        Err(LatixError::Corrupted { .. })
    ));
}

#[test]
fn bad_input_is_rejected_with_clear_errors() {
    let c = corpus(5, 40, 16, 4);
    let few = &c.vectors[..100 * 16];
    let e = Codec::train(few, 16, 100, &CodecParams::default(), Some(1)).unwrap_err();
    assert!(e.to_string().contains("at least 256"), "{e}");
    let e = Codec::train(
        &c.vectors[..c.vectors.len() - 1],
        16,
        1,
        &CodecParams::default(),
        Some(1),
    )
    .unwrap_err();
    assert!(e.to_string().contains("dim"), "{e}");
    // 2 * 9 subspaces cannot split 16 dimensions; 0 bytes is no code.
    for bytes in [9, 0] {
        let p = CodecParams {
            bytes_per_token: Some(bytes),
            ..Default::default()
        };
        let e = Codec::train(&c.vectors, 16, 1000, &p, Some(1)).unwrap_err();
        assert!(e.to_string().contains("bytes_per_token"), "{e}");
    }
    let p = CodecParams {
        n_centroids: Some(1 << 30),
        ..Default::default()
    };
    assert!(Codec::train(&c.vectors, 16, 1000, &p, Some(1))
        .unwrap_err()
        .to_string()
        .contains("n_centroids"));
    let mut nan = c.vectors.clone();
    nan[5] = f32::NAN;
    assert!(
        Codec::train(&nan, 16, 1000, &CodecParams::default(), Some(1))
            .unwrap_err()
            .to_string()
            .contains("non-finite")
    );
    let codec = train(&c, 8, 4);
    let e = QueryPlan::new(&codec, &[0.0; 15], 2).unwrap_err();
    assert!(e.to_string().contains("query"), "{e}");
    let e = QueryPlan::new(&codec, &[0.1; 16], 9).unwrap_err();
    assert!(e.to_string().contains("nprobe"), "{e}");
}

/// Anisotropic loss of codes `cd` for token `x` with centroid `cen` (scalar reference).
fn aniso_loss(codec: &Codec, x: &[f32], cen: &[f32], cd: &[u8]) -> f32 {
    let rec = codec.decode(&[0], cd);
    // decode adds centroid 0; replace it by `cen`.
    let c0 = &codec.centroids()[..x.len()];
    let xn = x.iter().map(|v| v * v).sum::<f32>().sqrt();
    let (mut n2, mut p) = (0.0f32, 0.0f32);
    for j in 0..x.len() {
        let e = x[j] - (rec[j] - c0[j] + cen[j]);
        n2 += e * e;
        p += e * x[j] / xn;
    }
    n2 + (codec.aniso_eta() - 1.0) * p * p
}

#[test]
fn uneven_subspaces_and_anisotropic_codes() {
    // 3 bytes = 6 subspaces over 64 dimensions: 11, 11, 11, 11, 10, 10.
    let c = corpus(7, 120, 64, 6);
    let codec = train(&c, 16, 3).with_aniso_eta(4.0).unwrap();
    assert_eq!(codec.subspace_offsets(), &[0, 11, 22, 33, 44, 54, 64]);
    assert!(train(&c, 16, 3).with_aniso_eta(f32::NAN).is_err());
    let n = c.vectors.len() / c.dim;
    let (ids, codes) = latix_core::parallel::install(Some(2), || codec.encode(&c.vectors)).unwrap();
    assert_eq!(codes.len(), n * 3);
    // Saved and reloaded codecs encode identically.
    let back = Codec::from_bytes(&codec.to_bytes(), std::path::Path::new("x")).unwrap();
    assert_eq!(back.aniso_eta(), codec.aniso_eta());
    let (ids2, codes2) =
        latix_core::parallel::install(Some(1), || back.encode(&c.vectors)).unwrap();
    assert_eq!((&ids, &codes), (&ids2, &codes2));
    // Against the squared-error nearest codewords (computed here by brute force), the encoder's
    // codes never have a larger anisotropic loss and, summed, have a smaller error along x.
    let so = codec.subspace_offsets().to_vec();
    let (mut par_aniso, mut par_mse) = (0.0f32, 0.0f32);
    for t in 0..n {
        let x = &c.vectors[t * c.dim..(t + 1) * c.dim];
        let cen = &codec.centroids()[ids[t] as usize * c.dim..(ids[t] as usize + 1) * c.dim];
        let mut mse_codes = vec![0u8; 3];
        for s in 0..6 {
            let (a, b) = (so[s], so[s + 1]);
            let book = codec.codebook(s);
            let best = (0..16)
                .min_by(|&i, &j| {
                    let d = |k: usize| -> f32 {
                        (a..b)
                            .map(|dd| (x[dd] - cen[dd] - book[k * (b - a) + dd - a]).powi(2))
                            .sum()
                    };
                    d(i).total_cmp(&d(j))
                })
                .unwrap() as u8;
            mse_codes[s / 2] |= best << (4 * (s % 2));
        }
        let got = &codes[t * 3..(t + 1) * 3];
        let la = aniso_loss(&codec, x, cen, got);
        let lm = aniso_loss(&codec, x, cen, &mse_codes);
        assert!(la <= lm + 1e-5, "token {t}: {la} > {lm}");
        let par = |cd: &[u8]| {
            let rec = codec.decode(&[ids[t]], cd);
            let xn = x.iter().map(|v| v * v).sum::<f32>().sqrt();
            x.iter()
                .zip(&rec)
                .map(|(a, b)| (a - b) * a / xn)
                .sum::<f32>()
                .powi(2)
        };
        par_aniso += par(got);
        par_mse += par(&mse_codes);
    }
    assert!(
        par_aniso < 0.9 * par_mse,
        "parallel error {par_aniso} vs {par_mse}"
    );
}

#[test]
fn segments_over_65536_documents_use_document_chunks() {
    // 70,000 one-token documents: two u16 document chunks.
    let dim = 8;
    let c = corpus(8, 60, dim, 4);
    let codec = train(&c, 8, 2);
    let n_docs = 70_000usize;
    let base = c.vectors.len() / dim;
    let vectors: Vec<f32> = (0..n_docs)
        .flat_map(|d| c.vectors[(d % base) * dim..(d % base + 1) * dim].to_vec())
        .collect();
    let offsets: Vec<u64> = (0..=n_docs as u64).collect();
    let crc = codec_checksum(&codec.to_bytes());
    let seg = latix_core::parallel::install(Some(2), || {
        IvfSegment::build(&codec, crc, DocVectors::F32(&vectors), &offsets)
    })
    .unwrap()
    .unwrap();
    assert_eq!(seg.n_doc_chunks(), 2);
    // Every document appears exactly once, under its own centroid.
    let (ids, _) = latix_core::parallel::install(Some(1), || codec.encode(&vectors)).unwrap();
    let mut seen = vec![false; n_docs];
    let docs = seg.doc_of_token();
    for cid in 0..codec.n_centroids() {
        for (t0, t1, _, doc_base) in seg.sublists(cid) {
            for &d in &docs[t0..t1] {
                let d = doc_base + d as usize;
                assert!(!seen[d], "document {d} twice");
                seen[d] = true;
                assert_eq!(ids[d] as usize, cid);
            }
        }
    }
    assert!(seen.iter().all(|&s| s));
    // A document of the second chunk is found by search.
    let q = &vectors[69_999 * dim..70_000 * dim];
    let plan = QueryPlan::new(&codec, q, codec.n_centroids()).unwrap();
    let got = search_segments(
        &plan,
        &[SegmentView {
            seg: &seg,
            allowed: None,
        }],
        70_000,
    )
    .unwrap();
    assert!(got.iter().any(|g| g.2 == 69_999));
    assert!(got.iter().all(|g| (g.2 as usize) < n_docs));
}

#[test]
fn document_map_is_exact_validated_and_version_3_lists_still_load() {
    let c = corpus(6, 300, 32, 8);
    let codec = train(&c, 24, 8);
    let crc = codec_checksum(&codec.to_bytes());
    let seg = latix_core::parallel::install(Some(2), || {
        IvfSegment::build(&codec, crc, DocVectors::F32(&c.vectors), &c.offsets)
    })
    .unwrap()
    .unwrap();
    assert_eq!(seg.version(), 5);
    // The map names exactly each document's tokens, ascending, and list_of_position finds the
    // sub-list of every position.
    let lt = seg.list_tokens().to_vec();
    for l in 0..lt.len() - 1 {
        for t in lt[l] as usize..lt[l + 1] as usize {
            assert_eq!(seg.list_of_position(t), l, "position {t}");
        }
    }
    let owner: Vec<usize> = seg.doc_of_token().iter().map(|&d| d as usize).collect();
    for d in 0..seg.n_docs() {
        let want: Vec<u32> = (0..seg.n_tokens())
            .filter(|&t| owner[t] == d)
            .map(|t| t as u32)
            .collect();
        assert_eq!(seg.doc_positions(d).unwrap(), &want[..], "document {d}");
        assert_eq!(want.len() as u64, c.offsets[d + 1] - c.offsets[d]);
    }
    assert!(seg.doc_positions(seg.n_docs()).is_none());
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("seg.ivf");
    // A position that names another document's token, with a valid checksum: rejected by the
    // map's validation, not only by the checksum.
    let [.., dpos, _] = v4_layout(&seg);
    let mut raw = seg.as_bytes().to_vec();
    let d0 = seg.doc_positions(0).unwrap()[0];
    let other = seg.doc_positions(1).unwrap()[0];
    assert_ne!(d0, other);
    raw[dpos..dpos + 4].copy_from_slice(&other.to_le_bytes());
    std::fs::write(&p, with_crc(raw)).unwrap();
    let e = IvfSegment::open(&p, true)
        .err()
        .expect("bad document map accepted");
    assert!(
        matches!(e, LatixError::Corrupted { .. }) && e.to_string().contains("document 0"),
        "{e}"
    );
    // Version 3: loads, has no map, searches like version 4 from the same codes, and refuses to
    // refine.
    std::fs::write(&p, as_version_3(&seg)).unwrap();
    let old = IvfSegment::open(&p, true).unwrap();
    assert_eq!((old.version(), old.has_doc_map()), (3, false));
    assert!(old.doc_positions(0).is_none());
    let mut rng = Rng::new(4);
    let q = query(&c, &mut rng, 5);
    let plan = QueryPlan::new(&codec, &q, 6).unwrap();
    let view = |s| {
        [SegmentView {
            seg: s,
            allowed: None,
        }]
    };
    let a = search_segments(&plan, &view(&seg), 20).unwrap();
    let b = search_segments(&plan, &view(&old), 20).unwrap();
    assert_eq!(a, b);
    let e = latix_core::compressed::refine(&codec, &plan, &view(&old), &b).unwrap_err();
    assert!(e.to_string().contains("document map"), "{e}");
    // The upgrade rebuilds the very file latix writes today (same codes, map and scales).
    assert!(seg.upgraded().unwrap().is_none());
    let up = old.upgraded().unwrap().expect("version 3 is upgraded");
    assert_eq!(up.as_bytes(), seg.as_bytes());
    // Version 4 (the same sections, interleaved code blocks): loads, is not upgraded, and
    // generates and refines the very same candidates and scores.
    let p4 = dir.path().join("seg4.ivf");
    std::fs::write(&p4, seg.as_version_4().unwrap().as_bytes()).unwrap();
    let v4 = IvfSegment::open(&p4, true).unwrap();
    assert_eq!((v4.version(), v4.has_doc_map()), (4, true));
    assert!(v4.upgraded().unwrap().is_none());
    assert_eq!(search_segments(&plan, &view(&v4), 20).unwrap(), a);
    let refine = |s| latix_core::compressed::refine(&codec, &plan, &view(s), &a).unwrap();
    assert_eq!(refine(&v4), refine(&seg));
    assert_eq!(v4.as_version_4().unwrap().as_bytes(), v4.as_bytes());
    // Every token's codes read the same from both files.
    for d in [0usize, 7, 299] {
        let mut x: Vec<Vec<u8>> = Vec::new();
        let mut y: Vec<Vec<u8>> = Vec::new();
        let mut z: Vec<Vec<u8>> = Vec::new();
        for (s, out) in [(&seg, &mut x), (&old, &mut y), (&v4, &mut z)] {
            for l in 0..lt.len() - 1 {
                for t in lt[l] as usize..lt[l + 1] as usize {
                    if s.doc_of_token()[t] as usize == d {
                        out.push(s.token_codes(l, t));
                    }
                }
            }
        }
        assert_eq!(x, y);
        assert_eq!(x, z);
    }
}

#[test]
fn damaged_lists_with_valid_checksums_fail_cleanly_or_search_without_panicking() {
    // Damage with the checksum recomputed, so only the structural validation stands between it
    // and the search (whose scan and refinement index without bounds checks on validated data):
    // parsing must either fail as corruption or give lists that search, refine and decode.
    let c = corpus(9, 140, 16, 4);
    let codec = train(&c, 8, 4);
    let crc = codec_checksum(&codec.to_bytes());
    let seg = IvfSegment::build(&codec, crc, DocVectors::F32(&c.vectors), &c.offsets).unwrap();
    let base = seg.as_bytes().to_vec();
    let words = (base.len() - 4) / 4;
    let mut rng = Rng::new(77);
    let q = query(&c, &mut rng, 3);
    let (mut ok, mut rejected) = (0, 0);
    for trial in 0..4000 {
        let mut b = base.clone();
        match trial % 4 {
            // A random byte anywhere before the checksum.
            0 => b[rng.below(base.len() - 4)] ^= 1 + rng.below(255) as u8,
            // A random aligned word set to a boundary value.
            1 | 2 => {
                let w = 4 * rng.below(words);
                let v = [
                    0u32,
                    1,
                    u32::MAX,
                    seg.n_tokens() as u32,
                    seg.n_docs() as u32,
                ][rng.below(5)]
                .wrapping_add(rng.below(3) as u32);
                b[w..w + 4].copy_from_slice(&v.to_le_bytes());
            }
            // A byte of the header or of the offset tables (most of the structure).
            _ => b[rng.below(base.len().min(64 + 8 * seg.list_tokens().len()))] ^= 0x80,
        }
        match IvfSegment::from_bytes(&with_crc(b), true) {
            Err(LatixError::Corrupted { .. } | LatixError::UnsupportedVersion { .. }) => {
                rejected += 1
            }
            Err(e) => panic!("trial {trial}: unexpected error kind {e}"),
            Ok(s) => {
                ok += 1;
                let view = [SegmentView {
                    seg: &s,
                    allowed: None,
                }];
                let plan = QueryPlan::new(&codec, &q, 3).unwrap();
                if let Ok(cands) = search_segments(&plan, &view, 20) {
                    if s.has_doc_map() {
                        latix_core::compressed::refine(&codec, &plan, &view, &cands).unwrap();
                    }
                }
                for d in 0..s.n_docs() {
                    if let Some(p) = s.doc_positions(d) {
                        for &t in p {
                            let l = s.list_of_position(t as usize);
                            assert!(s.token_codes(l, t as usize).len() == s.n_subspaces() / 2);
                        }
                    }
                }
            }
        }
    }
    assert!(ok > 100 && rejected > 100, "ok {ok}, rejected {rejected}");
}
