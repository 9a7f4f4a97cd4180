//! Fidelity tiers through `latix_core::Index`: refinement files written with every encoded
//! segment (training commit, adds after training, compaction, retraining), the tier's re-rank
//! against exhaustive MaxSim (scalar reference) and against the codes-only index on the same
//! data, deletes, subsets, `get` of the reconstructions, options, configuration and damaged or
//! swapped refinement files.

use std::collections::HashSet;
use std::path::Path;

use latix_core::compressed::Fidelity;
use latix_core::index::{Index, OpenMode, OwnedVectors};
use latix_core::maxsim::{scalar::maxsim_f32, DocVectors};
use latix_core::store::Dtype;
use latix_core::{CompressedSearch, Compression, LatixError};

mod common;
use common::{exact_topk, files, search, Data};

const DIM: usize = 48;

/// This file's data: dimension DIM, documents of 6 to 45 tokens at noise 0.5.
fn seeded(seed: u64) -> Data {
    Data::new(seed, DIM, 40, 0.5)
}

fn cfg(fidelity: Fidelity) -> Compression {
    Compression {
        bytes_per_token: Some(6),
        n_centroids: Some(32),
        keep_vectors: false,
        train_min_tokens: 3000,
        train_sample_tokens: 6000,
        seed: 3,
        pool_factor: 2,
        fidelity,
        ..Default::default()
    }
}

fn add(ix: &Index, prefix: &str, docs: &[Vec<f32>]) -> Vec<(String, Vec<f32>)> {
    let ids: Vec<String> = (0..docs.len()).map(|i| format!("{prefix}{i}")).collect();
    let refs: Vec<&str> = ids.iter().map(|s| s.as_str()).collect();
    let dv: Vec<DocVectors<'_>> = docs.iter().map(|d| DocVectors::F32(d)).collect();
    ix.add(&refs, &dv, false).expect("add");
    ids.into_iter().zip(docs.iter().cloned()).collect()
}

/// Recall@10 against exact search over 30 seeded queries, and the mean absolute score error of
/// the returned hits against their exact MaxSim.
fn quality(
    ix: &Index,
    seed: u64,
    live: &[(String, Vec<f32>)],
    opts: CompressedSearch,
) -> (f64, f64) {
    let mut data = seeded(seed);
    let by_id: std::collections::HashMap<&str, &Vec<f32>> =
        live.iter().map(|(i, d)| (i.as_str(), d)).collect();
    let (mut hit, mut tot, mut err, mut n) = (0usize, 0usize, 0f64, 0usize);
    for _ in 0..30 {
        let q = data.mat(8, 0.5);
        let want: HashSet<String> = exact_topk(&q, live, 10, DIM)
            .into_iter()
            .map(|x| x.0)
            .collect();
        for (id, s) in search(ix, &q, 10, opts) {
            hit += want.contains(&id) as usize;
            let d: Vec<f32> = by_id[id.as_str()]
                .iter()
                .map(|&x| half::f16::from_f32(x).to_f32())
                .collect();
            err += (s - maxsim_f32(&q, &d, DIM)).abs() as f64;
            n += 1;
        }
        tot += want.len();
    }
    (hit as f64 / tot as f64, err / n.max(1) as f64)
}

#[test]
fn tiers_beat_codes_through_adds_deletes_subsets_compaction_and_retraining() {
    let tmp = tempfile::tempdir().expect("tmp");
    let mut data = seeded(21);
    let first = data.docs(220);
    let later = data.docs(60);
    let mut results = Vec::new();
    for fid in [
        Fidelity::Codes,
        Fidelity::Balanced,
        Fidelity::High,
        Fidelity::TransformBalanced,
        Fidelity::TransformHigh,
    ] {
        let dir = tmp.path().join(format!("{fid:?}"));
        let ix = Index::create_with(&dir, DIM, Dtype::F16, Some(cfg(fid))).expect("create");
        let mut live = add(&ix, "a", &first);
        ix.commit().expect("training commit");
        assert!(ix.stats().expect("stats").trained);
        let n_fid = files(&dir, ".fid-").len();
        assert_eq!(n_fid, if fid == Fidelity::Codes { 0 } else { 1 });
        // Added after training: the new segment gets its own refinement file.
        live.extend(add(&ix, "b", &later));
        ix.commit().expect("commit");
        assert_eq!(files(&dir, ".fid-").len(), 2 * n_fid);
        let d = CompressedSearch::default();
        let q1 = quality(&ix, 5, &live, d);
        // Deletes and subsets.
        let gone: Vec<&str> = live.iter().step_by(3).map(|x| x.0.as_str()).collect();
        ix.delete(&gone).expect("delete");
        ix.commit().expect("commit");
        let gone: HashSet<String> = gone.iter().map(|s| s.to_string()).collect();
        live.retain(|x| !gone.contains(&x.0));
        let q2 = quality(&ix, 6, &live, d);
        let subset: Vec<&str> = live.iter().step_by(2).map(|x| x.0.as_str()).collect();
        let q = data.mat(8, 0.5);
        let r = ix
            .search_with(&[&q], 10, Some(1), Some(&subset), d)
            .expect("subset search");
        let allowed: HashSet<&str> = subset.iter().copied().collect();
        assert!(r
            .ids
            .iter()
            .all(|i| i.is_empty() || allowed.contains(i.as_str())));
        // Reopen, compact, retrain: every segment keeps a refinement file.
        ix.close();
        let ix = Index::open(&dir, OpenMode::Write).expect("open");
        ix.compact().expect("compact");
        let snap_fids = files(&dir, ".fid-").len();
        assert_eq!(snap_fids, n_fid, "compaction leaves one segment");
        let q3 = quality(&ix, 6, &live, d);
        ix.compact_retrain(true).expect("retrain");
        let q4 = quality(&ix, 6, &live, d);
        ix.verify().expect("verify");
        results.push((fid, q1, q2, q3, q4));
        if fid != Fidelity::Codes {
            // get: one reconstructed row per original token, in order, close to the original.
            let (id, orig) = &live[4];
            let OwnedVectors::F16(got) = ix.get(id).expect("get") else {
                panic!("f16 index")
            };
            assert_eq!(got.len(), orig.len());
            for (g, o) in got.chunks_exact(DIM).zip(orig.chunks_exact(DIM)) {
                let dot: f32 = g.iter().zip(o).map(|(a, b)| a.to_f32() * b).sum();
                let ng = g.iter().map(|a| a.to_f32().powi(2)).sum::<f32>().sqrt();
                assert!(
                    dot / ng > 0.8,
                    "{fid:?}: reconstruction cosine {}",
                    dot / ng
                );
            }
        }
        ix.close();
    }
    let (_, c1, c2, c3, c4) = results[0];
    for &(fid, t1, t2, t3, t4) in &results[1..] {
        eprintln!("{fid:?}: {t1:?} {t2:?} {t3:?} {t4:?} (codes {c1:?} {c2:?} {c3:?} {c4:?})");
        for ((t, c), step) in [(t1, c1), (t2, c2), (t3, c3), (t4, c4)].iter().zip(1..) {
            assert!(
                t.0 > c.0,
                "{fid:?} step {step}: recall {} vs codes {}",
                t.0,
                c.0
            );
            assert!(
                t.1 < c.1,
                "{fid:?} step {step}: score error {} vs codes {}",
                t.1,
                c.1
            );
        }
    }
    // Two bits per dimension estimate closer than one.
    assert!(results[2].1 .1 < results[1].1 .1);
}

/// A transform-coded tier re-scores the head of the refined list on top of the pooled scores
/// refinement kept (`refine_pooled`): every hit's score must be the one the tier gives the same
/// document scored alone (a one-document subset: a list of one, which cannot pair a document
/// with another's scores), bit for bit, across two segments and at several `k`; and so must the
/// hits of a search that re-scores past its refined list (`rerank_depth` > `refine`), whose
/// candidates beyond the refined ones are scored from their codes inside the re-rank.
#[test]
fn transform_tier_scores_on_kept_pooled_scores_match_a_lone_document() {
    let tmp = tempfile::tempdir().expect("tmp");
    let mut data = seeded(33);
    let first = data.docs(200);
    let later = data.docs(70);
    for fid in [Fidelity::TransformBalanced, Fidelity::TransformHigh] {
        let dir = tmp.path().join(format!("{fid:?}"));
        let ix = Index::create_with(&dir, DIM, Dtype::F16, Some(cfg(fid))).expect("create");
        add(&ix, "a", &first);
        ix.commit().expect("training commit");
        add(&ix, "b", &later);
        ix.commit().expect("commit");
        let d = CompressedSearch::default();
        let past_refined = CompressedSearch {
            refine: Some(4),
            rerank_depth: Some(60),
            ..d
        };
        let mut checked = 0;
        for (qi, k) in (0..12).zip([1usize, 3, 10, 25].into_iter().cycle()) {
            let q = data.mat(4 + qi % 9, 0.5);
            let mut hits = search(&ix, &q, k, d);
            assert!(!hits.is_empty());
            hits.extend(search(&ix, &q, k.max(10), past_refined));
            for (id, score) in hits {
                let alone = ix
                    .search_with(&[&q], 1, Some(1), Some(&[id.as_str()]), d)
                    .expect("lone search");
                assert_eq!(alone.ids[0], id);
                assert_eq!(
                    alone.scores[0].to_bits(),
                    score.to_bits(),
                    "{fid:?}: query {qi}, k {k}, {id}: {} alone vs {score} in the list",
                    alone.scores[0]
                );
                checked += 1;
            }
        }
        assert!(checked > 200, "{checked}");
        ix.close();
    }
}

#[test]
fn options_and_configuration_of_a_tier() {
    let tmp = tempfile::tempdir().expect("tmp");
    let mut data = seeded(3);
    let docs = data.docs(200);
    // A tier with kept vectors is rejected at create, naming both options.
    let bad = Compression {
        keep_vectors: true,
        ..cfg(Fidelity::Balanced)
    };
    match Index::create_with(tmp.path().join("bad"), DIM, Dtype::F16, Some(bad)) {
        Err(LatixError::InvalidArgument(m)) => assert!(m.contains("keep_vectors"), "{m}"),
        other => panic!("accepted: {:?}", other.err()),
    }
    assert!(Fidelity::parse("medium").is_err());
    let dir = tmp.path().join("b");
    let ix =
        Index::create_with(&dir, DIM, Dtype::F16, Some(cfg(Fidelity::Balanced))).expect("create");
    let live = add(&ix, "d", &docs);
    ix.commit().expect("commit");
    assert_eq!(
        ix.compression().map(|c| c.fidelity),
        Some(Fidelity::Balanced)
    );
    let q = data.mat(8, 0.5);
    // rerank=True is allowed without kept vectors on a tier; rerank=False gives the codes'
    // estimates; a deeper rerank_depth never finds fewer of the exact top 10.
    let on = search(
        &ix,
        &q,
        10,
        CompressedSearch {
            rerank: Some(true),
            ..Default::default()
        },
    );
    let dflt = search(&ix, &q, 10, CompressedSearch::default());
    assert_eq!(on, dflt);
    let off = search(
        &ix,
        &q,
        10,
        CompressedSearch {
            rerank: Some(false),
            ..Default::default()
        },
    );
    assert_eq!(off.len(), 10);
    let all = search(
        &ix,
        &q,
        10,
        CompressedSearch {
            refine: Some(1000),
            rerank_depth: Some(1000),
            ..Default::default()
        },
    );
    // Every document re-ranked: the tier's own MaxSim decides, so the top-1 is the best by it.
    let want: Vec<String> = exact_topk(&q, &live, 10, DIM)
        .into_iter()
        .map(|x| x.0)
        .collect();
    let got: HashSet<&str> = all.iter().map(|x| x.0.as_str()).collect();
    assert!(want.iter().filter(|w| got.contains(w.as_str())).count() >= 8);
    // Reopened, the tier is read back from the configuration file.
    ix.close();
    let ix = Index::open(&dir, OpenMode::Read).expect("open");
    assert_eq!(
        ix.compression().expect("compressed").fidelity,
        Fidelity::Balanced
    );
    // Configuration: each tier round-trips; the default tier is written in the older format.
    let p = Path::new("idx-compression-0");
    for f in [Fidelity::Codes, Fidelity::Balanced, Fidelity::High] {
        let b = cfg(f).encode();
        assert_eq!(Compression::decode(&b, p).expect("decode"), cfg(f));
        assert_eq!(b[8], if f == Fidelity::Codes { 2 } else { 3 });
        for i in 0..b.len() {
            let mut d = b.clone();
            d[i] ^= 0x10;
            assert!(Compression::decode(&d, p).is_err(), "flip at {i} accepted");
        }
    }
    // rerank_depth on a plain index is an error.
    let plain =
        Index::create_with(tmp.path().join("plain"), DIM, Dtype::F16, None).expect("create");
    add(&plain, "p", &docs[..5]);
    plain.commit().expect("commit");
    let r = plain.search_with(
        &[&q],
        3,
        None,
        None,
        CompressedSearch {
            rerank_depth: Some(5),
            ..Default::default()
        },
    );
    assert!(matches!(r, Err(LatixError::InvalidArgument(_))));
}

#[test]
fn damaged_or_swapped_refinement_files_are_reported_naming_the_file() {
    let tmp = tempfile::tempdir().expect("tmp");
    let docs = seeded(31).docs(200);
    let more = seeded(32).docs(40);
    let build = |name: &str| {
        let dir = tmp.path().join(name);
        let ix =
            Index::create_with(&dir, DIM, Dtype::F16, Some(cfg(Fidelity::High))).expect("create");
        add(&ix, "d", &docs);
        ix.commit().expect("commit");
        add(&ix, "e", &more);
        ix.commit().expect("commit");
        ix.close();
        dir
    };
    let q = seeded(33).mat(4, 0.5);
    let check = |dir: &Path, file: &str| {
        let res = Index::open(dir, OpenMode::Read).and_then(|ix| {
            ix.search(&[&q], 5, None, None)?;
            ix.verify()
        });
        match res {
            Err(LatixError::Corrupted { path, detail }) => {
                assert!(path.to_string_lossy().contains(file), "{path:?}: {detail}")
            }
            other => panic!("damage of {file} in {dir:?} not reported: {other:?}"),
        }
    };
    for (i, trunc) in [(0usize, true), (1, false)] {
        let dir = build(&format!("t{trunc}"));
        let f = files(&dir, ".fid-")[i].clone();
        let p = dir.join(&f);
        let mut b = std::fs::read(&p).expect("read");
        if trunc {
            b.truncate(b.len() - 7);
        } else {
            let at = b.len() * 2 / 3;
            b[at] ^= 0x04;
        }
        std::fs::write(&p, &b).expect("write");
        check(&dir, &f);
    }
    // The other segment's (valid) file in its place: the manifest's recorded checksum differs.
    let dir = build("swap");
    let f = files(&dir, ".fid-");
    std::fs::copy(dir.join(&f[1]), dir.join(&f[0])).expect("copy");
    check(&dir, &f[0]);
}
