//! Searches restricted by per-segment bitmaps (`DocFilter::Masks`), the form a collection's
//! metadata filter takes: on plain and compressed indexes, with several segments and deleted
//! documents, masks must give exactly the results of the equivalent id subset; the exhaustive
//! mode of a compressed index must equal candidate generation that probes every list and
//! refines every candidate (and, with kept vectors, re-ranks every one exactly); a snapshot with a segment the masks do not cover answers `None`.

use std::collections::HashSet;

use latix_core::compressed::kmeans::Rng;
use latix_core::index::{DocFilter, Index, SegmentMasks};
use latix_core::maxsim::DocVectors;
use latix_core::store::Dtype;
use latix_core::{CompressedSearch, Compression, LatixError};

const DIM: usize = 16;

fn rand_doc(rng: &mut Rng, n: usize) -> Vec<f32> {
    let mut v: Vec<f32> = (0..n * DIM)
        .map(|_| (rng.next_u64() >> 40) as f32 / (1u64 << 24) as f32 - 0.5)
        .collect();
    for row in v.chunks_mut(DIM) {
        let norm = row.iter().map(|x| x * x).sum::<f32>().sqrt().max(1e-6);
        row.iter_mut().for_each(|x| *x /= norm);
    }
    v
}

/// Adds `n` documents named `{prefix}{i}` and commits (one new segment).
fn add_segment(ix: &Index, rng: &mut Rng, prefix: &str, n: usize) {
    let docs: Vec<Vec<f32>> = (0..n)
        .map(|_| {
            let len = 3 + rng.below(12);
            rand_doc(rng, len)
        })
        .collect();
    let ids: Vec<String> = (0..n).map(|i| format!("{prefix}{i}")).collect();
    let refs: Vec<&str> = ids.iter().map(|s| s.as_str()).collect();
    let dv: Vec<DocVectors<'_>> = docs.iter().map(|d| DocVectors::F32(d)).collect();
    ix.add(&refs, &dv, false).expect("add");
    ix.commit().expect("commit");
}

/// A random mask per segment and the ids it allows (deleted documents included: the search
/// must drop them itself).
fn random_masks(ix: &Index, rng: &mut Rng, keep_per_mille: usize) -> (SegmentMasks, Vec<String>) {
    let mut masks = SegmentMasks::new();
    let mut ids = Vec::new();
    for s in ix.segments().expect("segments") {
        let names = ix.segment_ids(&s.file).expect("segment ids");
        assert_eq!(names.len(), s.n_docs);
        let mut bits = vec![0u64; s.n_docs.div_ceil(64)];
        for (d, name) in names.iter().enumerate() {
            if rng.below(1000) < keep_per_mille {
                bits[d >> 6] |= 1 << (d & 63);
                ids.push(name.clone());
            }
        }
        masks.insert(s.file, bits);
    }
    (masks, ids)
}

fn hits(r: &latix_core::SearchResults) -> Vec<(String, f32)> {
    r.ids
        .iter()
        .cloned()
        .zip(r.scores.iter().copied())
        .filter(|(i, _)| !i.is_empty())
        .collect()
}

fn build(dir: &std::path::Path, compression: Option<Compression>, rng: &mut Rng) -> Index {
    let ix = Index::create_with(dir, DIM, Dtype::F16, compression).expect("create");
    add_segment(&ix, rng, "a", 150);
    add_segment(&ix, rng, "b", 70);
    let dels: Vec<String> = (0..150).step_by(7).map(|i| format!("a{i}")).collect();
    let refs: Vec<&str> = dels.iter().map(|s| s.as_str()).collect();
    ix.delete(&refs).expect("delete");
    ix.commit().expect("commit");
    add_segment(&ix, rng, "c", 90);
    ix
}

#[test]
fn masks_equal_subsets_on_a_plain_index() {
    let dir = tempfile::tempdir().expect("tmp");
    let mut rng = Rng::new(7);
    let ix = build(&dir.path().join("ix"), None, &mut rng);
    let segs = ix.segments().expect("segments");
    assert_eq!(segs.len(), 3);
    assert_eq!(
        segs.iter().map(|s| s.n_live).sum::<usize>(),
        ix.len().expect("len")
    );
    for keep in [0, 3, 50, 400, 1000] {
        let (masks, ids) = random_masks(&ix, &mut rng, keep);
        let refs: Vec<&str> = ids.iter().map(|s| s.as_str()).collect();
        let q = rand_doc(&mut rng, 5);
        let f = DocFilter::Masks {
            masks: &masks,
            exhaustive_below: 0,
        };
        let got = ix
            .search_filtered(&[&q], 20, Some(1), f, CompressedSearch::default())
            .expect("search")
            .expect("masks cover the snapshot");
        let want = ix
            .search_with(&[&q], 20, Some(1), Some(&refs), CompressedSearch::default())
            .expect("search");
        assert_eq!(hits(&got), hits(&want), "keep {keep}");
        let allowed: HashSet<&String> = ids.iter().collect();
        assert!(hits(&got).iter().all(|(i, _)| allowed.contains(i)));
        assert!(hits(&got)
            .iter()
            .all(|(i, _)| ix.contains(i).expect("contains")));
    }
}

#[test]
fn uncovered_segment_answers_none_and_bad_masks_are_errors() {
    let dir = tempfile::tempdir().expect("tmp");
    let mut rng = Rng::new(8);
    let ix = build(&dir.path().join("ix"), None, &mut rng);
    let (mut masks, _) = random_masks(&ix, &mut rng, 500);
    let q = rand_doc(&mut rng, 4);
    let opts = CompressedSearch::default();
    let search = |m: &SegmentMasks| {
        let f = DocFilter::Masks {
            masks: m,
            exhaustive_below: 0,
        };
        ix.search_filtered(&[&q], 5, Some(1), f, opts)
    };
    assert!(search(&masks).expect("search").is_some());
    // A commit adds a segment the masks do not know: None, then masks for it make it work.
    add_segment(&ix, &mut rng, "d", 10);
    assert!(search(&masks).expect("search").is_none());
    let new = ix.segments().expect("segments").pop().expect("a segment");
    masks.insert(new.file.clone(), vec![u64::MAX; new.n_docs.div_ceil(64)]);
    assert!(search(&masks).expect("search").is_some());
    // Wrong length: an error naming the segment.
    masks.insert(new.file.clone(), vec![0; 7]);
    match search(&masks) {
        Err(LatixError::InvalidArgument(m)) => assert!(m.contains(&new.file), "{m}"),
        other => panic!("expected InvalidArgument, got {other:?}"),
    }
    assert!(matches!(
        ix.segment_ids("seg-9999999999.lxs"),
        Err(LatixError::NotFound(_))
    ));
}

fn compression(keep: bool) -> Compression {
    Compression {
        bytes_per_token: Some(4),
        n_centroids: Some(16),
        keep_vectors: keep,
        train_min_tokens: 300,
        train_sample_tokens: 4000,
        seed: 5,
        pool_factor: 1,
        fidelity: Default::default(),
        ..Default::default()
    }
}

#[test]
fn masks_on_a_compressed_index_and_the_exhaustive_mode() {
    for keep in [false, true] {
        let dir = tempfile::tempdir().expect("tmp");
        let mut rng = Rng::new(9 + keep as u64);
        let ix = build(&dir.path().join("ix"), Some(compression(keep)), &mut rng);
        assert!(ix.stats().expect("stats").trained);
        let n_docs: usize = ix.segments().expect("segs").iter().map(|s| s.n_docs).sum();
        for keep_pm in [2, 20, 150, 300, 1000] {
            let (masks, ids) = random_masks(&ix, &mut rng, keep_pm);
            let refs: Vec<&str> = ids.iter().map(|s| s.as_str()).collect();
            let q = rand_doc(&mut rng, 6);
            // Candidate generation with masks = candidate generation with the same subset.
            let opts = CompressedSearch::default();
            let f = DocFilter::Masks {
                masks: &masks,
                exhaustive_below: 0,
            };
            let got = ix
                .search_filtered(&[&q], 10, Some(1), f, opts)
                .expect("search")
                .expect("covered");
            let want = ix
                .search_with(&[&q], 10, Some(1), Some(&refs), opts)
                .expect("search");
            assert_eq!(
                hits(&got),
                hits(&want),
                "keep_vectors {keep}, {keep_pm}/1000"
            );
            // Exhaustive = probing every list and refining every candidate.
            let f = DocFilter::Masks {
                masks: &masks,
                exhaustive_below: usize::MAX,
            };
            let got = ix
                .search_filtered(&[&q], 10, Some(1), f, opts)
                .expect("search")
                .expect("covered");
            // With kept vectors an exhaustive set this small is scored exactly: every
            // allowed document re-ranked from its vectors.
            let all = CompressedSearch {
                nprobe: Some(16),
                refine: Some(n_docs),
                rerank_depth: keep.then_some(n_docs),
                ..opts
            };
            let want = ix
                .search_with(&[&q], 10, Some(1), Some(&refs), all)
                .expect("search");
            let (g, w) = (hits(&got), hits(&want));
            assert_eq!(g.len(), w.len());
            let live_allowed = ids.iter().filter(|i| ix.contains(i).expect("c")).count();
            let refine_all = latix_core::compressed::EXHAUSTIVE_REFINE_ALL
                .max(latix_core::compressed::FILTERED_REFINE);
            if live_allowed <= refine_all {
                // Few enough to refine them all (exhaustive searches of up to
                // EXHAUSTIVE_REFINE_ALL documents do): exactly probing everything and refining
                // all; with kept vectors (up to EXHAUSTIVE_EXACT_ALL), exact MaxSim of all.
                assert!(latix_core::compressed::EXHAUSTIVE_EXACT_ALL >= refine_all);
                for ((gi, gs), (wi, ws)) in g.iter().zip(&w) {
                    assert!(
                        (gs - ws).abs() <= 1e-4 * (1.0 + ws.abs()),
                        "{gi} {gs} vs {wi} {ws}"
                    );
                }
            } else {
                // Centroid interaction chose which to refine (its own scores are checked by
                // centroid_interaction_matches_a_scalar_reference): each hit carries its refined
                // score (with kept vectors: its exact one).
                let every = ix
                    .search_with(&[&q], n_docs, Some(1), Some(&refs), all)
                    .expect("search");
                let score_of: std::collections::HashMap<String, f32> =
                    hits(&every).into_iter().collect();
                for (gi, gs) in &g {
                    if !keep {
                        let ws = score_of[gi];
                        assert!(
                            (gs - ws).abs() <= 1e-4 * (1.0 + ws.abs()),
                            "{gi} {gs} vs {ws}"
                        );
                    }
                }
                assert!(g.windows(2).all(|x| x[0].1 >= x[1].1), "best first");
            }
            let allowed: HashSet<&String> = ids.iter().collect();
            assert!(g
                .iter()
                .all(|(i, _)| allowed.contains(i) && ix.contains(i).expect("c")));
            // As many hits as allowed live documents (up to k): nothing missed.
            assert_eq!(g.len(), live_allowed.min(10));
        }
    }
}

/// Centroid interaction against a from-scratch reference: each document's tokens found by
/// scanning every inverted list (not through the document map), their centroids scored with
/// the codec's f32 centroids in f64, the best per query token summed.
#[test]
fn centroid_interaction_matches_a_scalar_reference() {
    use latix_core::compressed::{
        centroid_interaction, codec_checksum, Codec, CodecParams, IvfSegment, QueryPlan,
        SegmentView,
    };
    let dim = DIM;
    let mut rng = Rng::new(21);
    let mut v = Vec::new();
    let mut off = vec![0u64];
    for _ in 0..300 {
        let n = 2 + rng.below(15);
        v.extend(rand_doc(&mut rng, n));
        off.push((v.len() / dim) as u64);
    }
    let p = CodecParams {
        n_centroids: Some(24),
        bytes_per_token: Some(4),
        kmeans_iters: Some(5),
        seed: 2,
    };
    let codec = Codec::train(&v, dim, v.len() / dim, &p, Some(1)).expect("train");
    let crc = codec_checksum(&codec.to_bytes());
    let seg = IvfSegment::build(&codec, crc, DocVectors::F32(&v), &off).expect("build");
    let views = [SegmentView {
        seg: &seg,
        allowed: None,
    }];
    // document -> centroids of its tokens, by scanning the lists
    let nch = seg.n_doc_chunks();
    let lt = seg.list_tokens();
    let mut cents: Vec<Vec<usize>> = vec![Vec::new(); 300];
    for l in 0..lt.len() - 1 {
        let base = (l % nch) * latix_core::compressed::ivf::DOC_CHUNK;
        for t in lt[l] as usize..lt[l + 1] as usize {
            cents[base + seg.doc_of_token()[t] as usize].push(l / nch);
        }
    }
    let cen = codec.centroids();
    for trial in 0..6 {
        let nq = 1 + rng.below(8);
        let q = rand_doc(&mut rng, nq);
        let plan = QueryPlan::new(&codec, &q, 1 + trial % 4).expect("plan");
        let cands: Vec<(f32, u32, u32)> = (0..300u32)
            .filter(|d| d % 3 != trial as u32 % 3)
            .map(|d| (0.0, 0, d))
            .collect();
        for threads in [1, 2] {
            let got = latix_core::parallel::install(Some(threads), || {
                centroid_interaction(&codec, &plan, &views, &cands)
            })
            .expect("pool")
            .expect("ci");
            assert_eq!(got.len(), cands.len());
            assert!(got.windows(2).all(|w| w[0].0 >= w[1].0), "best first");
            for &(s, _, d) in &got {
                let want: f64 = q
                    .chunks_exact(dim)
                    .map(|qi| {
                        cents[d as usize]
                            .iter()
                            .map(|&c| {
                                qi.iter()
                                    .zip(&cen[c * dim..(c + 1) * dim])
                                    .map(|(a, b)| *a as f64 * *b as f64)
                                    .sum::<f64>()
                            })
                            .fold(f64::NEG_INFINITY, f64::max)
                    })
                    .sum();
                // centroid scores come from f16 centroid panels
                assert!(
                    (s as f64 - want).abs() <= 2e-3 * nq as f64,
                    "doc {d}: {s} vs {want}"
                );
            }
        }
    }
}
