//! Compressed search against an independent reference: the same estimator (probed lists, best
//! token per document, imputed score for unprobed query tokens) computed in f64 from the
//! *decoded* token vectors (`Codec::decode` of each token's codes, times its norm scale) with
//! plain loops and hash maps, over several segments, with and without a filter, with 1 and 2
//! threads; plus the two-level centroid probing option. The reference shares no scoring code
//! with search (no lookup tables, no block scan): the search's u8 tables may differ from exact
//! dot products by half a table step per subspace, which is the tolerance, bounded from the
//! codebooks here too.

use std::collections::HashMap;

use latix_core::compressed::kmeans::Rng;
use latix_core::compressed::{
    codec_checksum, search_segments, Codec, CodecParams, IvfSegment, QueryPlan, SegmentView,
};
use latix_core::maxsim::DocVectors;

mod common;
use common::{gauss, normalise};

fn unit(rng: &mut Rng, centre: &[f32], noise: f32) -> Vec<f32> {
    let dim = centre.len();
    let mut v: Vec<f32> = centre
        .iter()
        .map(|&c| c + noise * gauss(rng) / (dim as f32).sqrt())
        .collect();
    normalise(&mut v);
    v
}

/// Clustered unit vectors: documents of 3..20 tokens around 2 of `n_topics` random centres.
fn corpus(seed: u64, n_docs: usize, dim: usize, n_topics: usize) -> (Vec<f32>, Vec<u64>, Vec<f32>) {
    let mut rng = Rng::new(seed);
    let zero = vec![0.0; dim];
    let centres: Vec<f32> = (0..n_topics)
        .flat_map(|_| unit(&mut rng, &zero, 1.0))
        .collect();
    let (mut v, mut off) = (Vec::new(), vec![0u64]);
    for _ in 0..n_docs {
        let t = [rng.below(n_topics), rng.below(n_topics)];
        for j in 0..3 + rng.below(18) {
            let c = &centres[t[j % 2] * dim..(t[j % 2] + 1) * dim];
            v.extend(unit(&mut rng, c, 0.7));
        }
        off.push((v.len() / dim) as u64);
    }
    (v, off, centres)
}

fn dot64(a: &[f32], b: &[f32]) -> f64 {
    a.iter().zip(b).map(|(x, y)| *x as f64 * *y as f64).sum()
}

/// The estimator, computed from scratch in f64 over decoded vectors: returns (score, segment,
/// doc) of every reached document.
fn reference(
    codec: &Codec,
    segs: &[&IvfSegment],
    q: &[f32],
    nprobe: usize,
    allowed: &dyn Fn(usize, usize) -> bool,
) -> Vec<(f64, u32, u32)> {
    let dim = codec.dim();
    let k = codec.n_centroids();
    let cen = codec.centroids();
    let mut acc: HashMap<(u32, u32), f64> = HashMap::new();
    let mut base = 0.0f64;
    let nq = q.len() / dim;
    for i in 0..nq {
        let qi = &q[i * dim..(i + 1) * dim];
        let mut cs: Vec<(f64, usize)> = (0..k)
            .map(|c| (dot64(qi, &cen[c * dim..(c + 1) * dim]), c))
            .collect();
        cs.sort_by(|a, b| b.0.total_cmp(&a.0).then(a.1.cmp(&b.1)));
        // Imputed score of a document this query token does not reach: the best unprobed
        // centroid's score plus the documented shift.
        let mi = if nprobe < k {
            cs[nprobe].0 + latix_core::compressed::search::IMPUTE_SHIFT as f64
        } else {
            0.0
        };
        base += mi;
        let mut best: HashMap<(u32, u32), f64> = HashMap::new();
        for &(_, c) in &cs[..nprobe] {
            for (si, seg) in segs.iter().enumerate() {
                let nch = seg.n_doc_chunks();
                let lt = seg.list_tokens();
                for l in c * nch..(c + 1) * nch {
                    let doc_base = (l % nch) * latix_core::compressed::ivf::DOC_CHUNK;
                    for t in lt[l] as usize..lt[l + 1] as usize {
                        let d = doc_base + seg.doc_of_token()[t] as usize;
                        if !allowed(si, d) {
                            continue;
                        }
                        let x = codec.decode(&[c as u32], &seg.token_codes(l, t));
                        let s = dot64(qi, &x) * seg.norm_scales().get(t) as f64;
                        let e = best
                            .entry((si as u32, d as u32))
                            .or_insert(f64::NEG_INFINITY);
                        *e = e.max(s);
                    }
                }
            }
        }
        for (key, b) in best {
            *acc.entry(key).or_insert(0.0) += b - mi;
        }
    }
    acc.into_iter()
        .map(|((s, d), p)| (base + p, s, d))
        .collect()
}

/// An upper bound on how far the search's score of one document can be from the f64 reference
/// for query `q`: per query token, half a u8 table step in each of the `M` subspaces (the step
/// is the widest subspace's range of codeword dot products over 255), scaled by the largest norm
/// scale, plus f32 rounding.
fn score_tolerance(codec: &Codec, segs: &[&IvfSegment], q: &[f32]) -> f64 {
    let dim = codec.dim();
    let m = codec.n_subspaces();
    let so = codec.subspace_offsets();
    let max_scale = segs
        .iter()
        .flat_map(|s| (0..s.n_tokens()).map(|t| s.norm_scales().get(t) as f64))
        .fold(1.0, f64::max);
    q.chunks_exact(dim)
        .map(|qi| {
            let step = (0..m)
                .map(|s| {
                    let (a, b) = (so[s], so[s + 1]);
                    let cb = codec.codebook(s);
                    let dots: Vec<f64> = (0..16)
                        .map(|j| dot64(&qi[a..b], &cb[j * (b - a)..(j + 1) * (b - a)]))
                        .collect();
                    let hi = dots.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
                    let lo = dots.iter().cloned().fold(f64::INFINITY, f64::min);
                    hi - lo
                })
                .fold(0.0, f64::max)
                / 255.0;
            0.5 * m as f64 * step * max_scale + 2e-3
        })
        .sum()
}

fn check(got: &[(f32, u32, u32)], want: &[(f64, u32, u32)], n: usize, tol: f64, what: &str) {
    let map: HashMap<(u32, u32), f64> = want.iter().map(|&(s, a, b)| ((a, b), s)).collect();
    let mut sorted: Vec<f64> = want.iter().map(|w| w.0).collect();
    sorted.sort_by(|a, b| b.total_cmp(a));
    assert_eq!(got.len(), n.min(want.len()), "{what}: result count");
    let kth = sorted[got.len() - 1];
    for w in got.windows(2) {
        assert!(w[0].0 >= w[1].0, "{what}: not sorted");
    }
    for &(s, seg, d) in got {
        let r = map
            .get(&(seg, d))
            .unwrap_or_else(|| panic!("{what}: ({seg}, {d}) was not reached by the reference"));
        assert!(
            (s as f64 - r).abs() <= tol,
            "{what}: ({seg}, {d}) score {s} vs reference {r} (tol {tol})"
        );
        // The n best by the reference all score >= kth - tol in the search, so nothing returned
        // may be below that.
        assert!(
            s as f64 >= kth - tol,
            "{what}: ({seg}, {d}) {s} below the reference's k-th best {kth} (tol {tol})"
        );
    }
}

#[test]
fn search_matches_scalar_reference_over_segments_filters_and_threads() {
    let dim = 32;
    let (v, off, centres) = corpus(21, 900, dim, 12);
    let p = CodecParams {
        n_centroids: Some(48),
        bytes_per_token: Some(8),
        kmeans_iters: Some(6),
        seed: 3,
    };
    let codec = Codec::train(&v, dim, v.len() / dim, &p, Some(2)).unwrap();
    let crc = codec_checksum(&codec.to_bytes());
    // Three segments of unequal size (the middle one holds documents 300..800).
    let cuts = [0usize, 300, 800, 900];
    let segs: Vec<IvfSegment> = cuts
        .windows(2)
        .map(|w| {
            let (a, b) = (off[w[0]] as usize, off[w[1]] as usize);
            let o: Vec<u64> = off[w[0]..=w[1]].iter().map(|&x| x - off[w[0]]).collect();
            latix_core::parallel::install(Some(2), || {
                IvfSegment::build(&codec, crc, DocVectors::F32(&v[a * dim..b * dim]), &o)
            })
            .unwrap()
            .unwrap()
        })
        .collect();
    let refs: Vec<&IvfSegment> = segs.iter().collect();
    // Filter: documents whose number is not a multiple of 3.
    let bits: Vec<Vec<u64>> = segs
        .iter()
        .map(|s| {
            let mut b = vec![0u64; s.n_docs().div_ceil(64)];
            for d in (0..s.n_docs()).filter(|d| d % 3 != 0) {
                b[d / 64] |= 1 << (d % 64);
            }
            b
        })
        .collect();
    let mut rng = Rng::new(8);
    for trial in 0..12 {
        let nq = 1 + rng.below(12);
        let q: Vec<f32> = (0..nq)
            .flat_map(|_| {
                let t = rng.below(12);
                unit(&mut rng, &centres[t * dim..(t + 1) * dim], 0.9)
            })
            .collect();
        let nprobe = [1, 4, 9, 48][trial % 4];
        let n_out = [1, 10, 50][trial % 3];
        let plan = QueryPlan::new(&codec, &q, nprobe).unwrap();
        // Built with two threads (centroid scores and tables split by query token): the same.
        let plan2 =
            latix_core::parallel::install(Some(2), || QueryPlan::new(&codec, &q, nprobe)).unwrap();
        assert_eq!(plan2.unwrap(), plan);
        let filtered = trial % 2 == 1;
        let views: Vec<SegmentView> = segs
            .iter()
            .zip(&bits)
            .map(|(s, b)| SegmentView {
                seg: s,
                allowed: filtered.then_some(b.as_slice()),
            })
            .collect();
        let want = reference(&codec, &refs, &q, nprobe, &|_, d| !filtered || d % 3 != 0);
        let tol = score_tolerance(&codec, &refs, &q);
        for threads in [1, 2] {
            let got = latix_core::parallel::install(Some(threads), || {
                search_segments(&plan, &views, n_out)
            })
            .unwrap()
            .unwrap();
            let what = format!("trial {trial} nq {nq} nprobe {nprobe} threads {threads}");
            check(&got, &want, n_out, tol, &what);
            if filtered {
                assert!(got.iter().all(|g| g.2 % 3 != 0), "{what}: filtered doc");
            }
        }
        // The same query twice in a row: scratch state must not leak between queries.
        let again = search_segments(&plan, &views, n_out).unwrap();
        let first = search_segments(&plan, &views, n_out).unwrap();
        assert_eq!(again, first);
    }
    assert!(
        search_segments(&QueryPlan::new(&codec, &centres[..dim], 2).unwrap(), &[], 5)
            .unwrap()
            .is_empty()
    );
}

#[test]
fn two_level_probing_scores_only_the_best_clusters_leaves() {
    let dim = 32;
    let (v, off, centres) = corpus(5, 1500, dim, 16);
    let p = CodecParams {
        n_centroids: Some(100),
        bytes_per_token: Some(8),
        kmeans_iters: Some(6),
        seed: 1,
    };
    let codec = Codec::train(&v, dim, v.len() / dim, &p, Some(2)).unwrap();
    let g = codec.n_groups();
    assert!(g >= 5, "{g} top-level clusters");
    let crc = codec_checksum(&codec.to_bytes());
    let seg = latix_core::parallel::install(Some(2), || {
        IvfSegment::build(&codec, crc, DocVectors::F32(&v), &off)
    })
    .unwrap()
    .unwrap();
    let views = [SegmentView {
        seg: &seg,
        allowed: None,
    }];
    let mut rng = Rng::new(3);
    let (mut hit, mut total) = (0, 0);
    for _ in 0..10 {
        let q: Vec<f32> = (0..6)
            .flat_map(|_| {
                let t = rng.below(16);
                unit(&mut rng, &centres[t * dim..(t + 1) * dim], 0.9)
            })
            .collect();
        // Probing every cluster is the exact path.
        let exact = search_segments(&QueryPlan::new(&codec, &q, 8).unwrap(), &views, 10).unwrap();
        let all = QueryPlan::with_probe_groups(&codec, &q, 8, g).unwrap();
        assert_eq!(search_segments(&all, &views, 10).unwrap(), exact);
        // Half of the clusters: close to the exact result on clustered data.
        let half = QueryPlan::with_probe_groups(&codec, &q, 8, g / 2).unwrap();
        let got = search_segments(&half, &views, 10).unwrap();
        hit += got
            .iter()
            .filter(|x| exact.iter().any(|e| e.2 == x.2))
            .count();
        total += exact.len();
        // One cluster still yields nprobe lists (clusters are added until they hold enough).
        let one = QueryPlan::with_probe_groups(&codec, &q, 8, 1).unwrap();
        assert_eq!(search_segments(&one, &views, 10).unwrap().len(), 10);
    }
    assert!(hit as f64 >= 0.8 * total as f64, "{hit}/{total}");
}

/// MaxSim of `q` with the decoded, norm-rescaled vectors of every token of document `d` of
/// `seg`, found by scanning every list (not through the document map), in f64.
fn decoded_maxsim(codec: &Codec, seg: &IvfSegment, q: &[f32], d: usize) -> f64 {
    let dim = codec.dim();
    let m = codec.n_subspaces();
    let nch = seg.n_doc_chunks();
    let lt = seg.list_tokens();
    let mut rows: Vec<Vec<f32>> = Vec::new();
    for l in 0..lt.len() - 1 {
        let base = (l % nch) * latix_core::compressed::ivf::DOC_CHUNK;
        for t in lt[l] as usize..lt[l + 1] as usize {
            if base + seg.doc_of_token()[t] as usize == d {
                let codes = seg.token_codes(l, t);
                assert_eq!(codes.len(), m / 2);
                let mut x = codec.decode(&[(l / nch) as u32], &codes);
                let r = seg.norm_scales().get(t);
                x.iter_mut().for_each(|v| *v *= r);
                rows.push(x);
            }
        }
    }
    q.chunks_exact(dim)
        .map(|qi| {
            rows.iter()
                .map(|x| {
                    qi.iter()
                        .zip(x)
                        .map(|(a, b)| *a as f64 * *b as f64)
                        .sum::<f64>()
                })
                .fold(f64::NEG_INFINITY, f64::max)
        })
        .sum()
}

#[test]
fn refine_scores_equal_maxsim_over_decoded_tokens() {
    let dim = 32;
    let (v, off, centres) = corpus(31, 700, dim, 10);
    let p = CodecParams {
        n_centroids: Some(40),
        bytes_per_token: Some(8),
        kmeans_iters: Some(6),
        seed: 5,
    };
    let codec = Codec::train(&v, dim, v.len() / dim, &p, Some(2)).unwrap();
    let crc = codec_checksum(&codec.to_bytes());
    let cuts = [0usize, 250, 700];
    let segs: Vec<IvfSegment> = cuts
        .windows(2)
        .map(|w| {
            let (a, b) = (off[w[0]] as usize, off[w[1]] as usize);
            let o: Vec<u64> = off[w[0]..=w[1]].iter().map(|&x| x - off[w[0]]).collect();
            IvfSegment::build(&codec, crc, DocVectors::F32(&v[a * dim..b * dim]), &o).unwrap()
        })
        .collect();
    for s in &segs {
        assert!(s.has_doc_map());
    }
    let seg_refs: Vec<&IvfSegment> = segs.iter().collect();
    let views: Vec<SegmentView> = segs
        .iter()
        .map(|s| SegmentView {
            seg: s,
            allowed: None,
        })
        .collect();
    let mut rng = Rng::new(12);
    for trial in 0..8 {
        let nq = 1 + rng.below(10);
        let q: Vec<f32> = (0..nq)
            .flat_map(|_| {
                let t = rng.below(10);
                unit(&mut rng, &centres[t * dim..(t + 1) * dim], 0.9)
            })
            .collect();
        let nprobe = [1, 3, 8, 40][trial % 4];
        let plan = QueryPlan::new(&codec, &q, nprobe).unwrap();
        let cands = search_segments(&plan, &views, 40).unwrap();
        for threads in [1, 2] {
            let got = latix_core::parallel::install(Some(threads), || {
                latix_core::compressed::refine(&codec, &plan, &views, &cands)
            })
            .unwrap()
            .unwrap();
            let what = format!("trial {trial} nq {nq} nprobe {nprobe} threads {threads}");
            // The same documents, re-scored and sorted best first.
            let mut a: Vec<(u32, u32)> = got.iter().map(|c| (c.1, c.2)).collect();
            let mut b: Vec<(u32, u32)> = cands.iter().map(|c| (c.1, c.2)).collect();
            a.sort_unstable();
            b.sort_unstable();
            assert_eq!(a, b, "{what}: candidate set");
            assert!(got.windows(2).all(|w| w[0].0 >= w[1].0), "{what}: order");
            for &(s, si, d) in &got {
                let want = decoded_maxsim(&codec, &segs[si as usize], &q, d as usize);
                // u8 lookup tables: at most half a step per subspace and query token.
                let tol = score_tolerance(&codec, &seg_refs, &q);
                assert!(
                    (s as f64 - want).abs() <= tol,
                    "{what}: ({si}, {d}) refined {s} vs decoded MaxSim {want} (tol {tol})"
                );
            }
        }
    }
    // A two-level plan (not every centroid scored) refines to the same scores.
    let q: Vec<f32> = unit(&mut rng, &centres[..dim], 0.9);
    let full = QueryPlan::new(&codec, &q, 4).unwrap();
    let two = QueryPlan::with_probe_groups(&codec, &q, 4, 1).unwrap();
    let cands = search_segments(&full, &views, 20).unwrap();
    let a = latix_core::compressed::refine(&codec, &full, &views, &cands).unwrap();
    let b = latix_core::compressed::refine(&codec, &two, &views, &cands).unwrap();
    assert_eq!(a, b);
}
