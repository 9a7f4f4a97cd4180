//! The compressed index kind through `latix_core::Index`: training at the threshold commit,
//! vector-free segments, search recall against exhaustive MaxSim (scalar reference), adds after
//! training, deletes, subsets, reopen, compaction with and without retraining, re-rank, bad input
//! and damaged codec / inverted-list files.

use std::collections::HashSet;
use std::path::Path;

use latix_core::index::{Index, OpenMode, OwnedVectors};
use latix_core::maxsim::DocVectors;
use latix_core::store::Dtype;
use latix_core::{CompressedSearch, Compression, LatixError};

mod common;
use common::{exact_topk, files, search, Data};

const DIM: usize = 32;

/// This file's data: dimension DIM, documents of 6 to 25 tokens at noise 0.6.
fn seeded(seed: u64) -> Data {
    Data::new(seed, DIM, 20, 0.6)
}

fn add(ix: &Index, prefix: &str, docs: &[Vec<f32>], replace: bool) -> Vec<String> {
    let ids: Vec<String> = (0..docs.len()).map(|i| format!("{prefix}{i}")).collect();
    let refs: Vec<&str> = ids.iter().map(|s| s.as_str()).collect();
    let dv: Vec<DocVectors<'_>> = docs.iter().map(|d| DocVectors::F32(d)).collect();
    ix.add(&refs, &dv, replace).expect("add");
    ids
}

fn cfg(keep: bool) -> Compression {
    Compression {
        bytes_per_token: Some(8),
        n_centroids: Some(32),
        keep_vectors: keep,
        train_min_tokens: 2000,
        train_sample_tokens: 4000,
        seed: 3,
        pool_factor: 1,
        fidelity: Default::default(),
        ..Default::default()
    }
}

fn recall(ix: &Index, data: &mut Data, live: &[(String, Vec<f32>)], opts: CompressedSearch) -> f64 {
    let (mut hit, mut tot) = (0usize, 0usize);
    for _ in 0..20 {
        let q = data.mat(8, 0.8);
        let want: HashSet<String> = exact_topk(&q, live, 10, DIM)
            .into_iter()
            .map(|x| x.0)
            .collect();
        let got = search(ix, &q, 10, opts);
        hit += got.iter().filter(|(i, _)| want.contains(i)).count();
        tot += want.len();
    }
    hit as f64 / tot as f64
}

#[test]
fn lifecycle_train_add_delete_subset_reopen_compact() {
    let tmp = tempfile::tempdir().expect("tmp");
    let dir = tmp.path().join("ix");
    let mut data = seeded(7);
    let ix = Index::create_with(&dir, DIM, Dtype::F16, Some(cfg(false))).expect("create");
    let d0 = data.docs(60);
    let mut live: Vec<(String, Vec<f32>)> = Vec::new();
    for (id, d) in add(&ix, "a", &d0, false).into_iter().zip(d0) {
        live.push((id, d));
    }
    ix.commit().expect("commit");
    let st = ix.stats().expect("stats");
    assert!(
        st.compressed && !st.trained,
        "below the threshold: not trained"
    );
    assert!(st.n_tokens < 2000);
    // Untrained: exact search, identical to the reference.
    let q = data.mat(8, 0.8);
    let got = search(&ix, &q, 5, CompressedSearch::default());
    let want = exact_topk(&q, &live, 5, DIM);
    for (g, w) in got.iter().zip(&want) {
        assert_eq!(g.0, w.0);
        assert!((g.1 - w.1).abs() < 1e-3);
    }
    // Reaching the threshold trains and encodes every live segment, dropping the vectors.
    let d1 = data.docs(150);
    for (id, d) in add(&ix, "b", &d1, false).into_iter().zip(d1) {
        live.push((id, d));
    }
    ix.delete(&["a3"]).expect("delete");
    live.retain(|(i, _)| i != "a3");
    ix.commit().expect("commit");
    let st = ix.stats().expect("stats");
    assert!(st.trained && st.n_centroids == Some(32) && st.code_bytes_per_token == Some(8));
    assert_eq!(files(&dir, "idx-codec").len(), 1);
    assert_eq!(files(&dir, ".ivf-").len(), st.n_segments);
    // Vector-free: everything on disk is far below the 64 bytes per token of f16 vectors.
    let bpt = st.bytes_on_disk as f64 / st.n_tokens as f64;
    assert!(bpt < 40.0, "{bpt} bytes per token");
    assert!(matches!(
        ix.search_with(
            &[&q],
            5,
            None,
            None,
            CompressedSearch {
                nprobe: None,
                rerank: Some(true),
                refine: None,
                rerank_depth: None,
            }
        ),
        Err(LatixError::InvalidArgument(_))
    ));
    let all = CompressedSearch {
        nprobe: Some(32),
        rerank: None,
        refine: None,
        rerank_depth: None,
    };
    let r = recall(&ix, &mut data, &live, CompressedSearch::default());
    assert!(r >= 0.7, "recall@10 {r}");
    let r_all = recall(&ix, &mut data, &live, all);
    // Every list probed: what is left is codec error (0.83-0.86 across codec training changes).
    assert!(r_all >= 0.8, "recall@10 with every list probed {r_all}");
    // Deleted documents never come back.
    for _ in 0..5 {
        let q = data.mat(8, 0.8);
        assert!(search(&ix, &q, 50, all).iter().all(|(i, _)| i != "a3"));
    }
    // Added after training: encoded with the existing codec, found right after commit.
    let codec_before = files(&dir, "idx-codec");
    let d2 = data.docs(20);
    let new_ids = add(&ix, "c", &d2, false);
    ix.commit().expect("commit");
    assert_eq!(files(&dir, "idx-codec"), codec_before, "no retraining");
    for (id, d) in new_ids.iter().zip(&d2) {
        let got = search(&ix, d, 1, all);
        assert_eq!(&got[0].0, id, "a document is its own best match");
    }
    for (id, d) in new_ids.into_iter().zip(d2) {
        live.push((id, d));
    }
    // Replace: the new version is what search and get see.
    let rep = data.docs(1);
    add(&ix, "b", &rep, true);
    ix.commit().expect("commit");
    live.retain(|(i, _)| i != "b0");
    live.push(("b0".into(), rep[0].clone()));
    assert_eq!(search(&ix, &rep[0], 1, all)[0].0, "b0");
    // get: the decoded approximation, close to the original (rows in list order).
    let OwnedVectors::F16(g) = ix.get("b0").expect("get") else {
        panic!("f16 index")
    };
    assert_eq!(g.len(), rep[0].len());
    let g: Vec<f32> = g.iter().map(|h| h.to_f32()).collect();
    for row in rep[0].chunks_exact(DIM) {
        let best = g
            .chunks_exact(DIM)
            .map(|r| r.iter().zip(row).map(|(a, b)| a * b).sum::<f32>())
            .fold(f32::MIN, f32::max);
        assert!(best > 0.8, "decoded row cosine {best}");
    }
    // Subset: only subset members, and the best of them.
    let subset: Vec<String> = live.iter().step_by(3).map(|x| x.0.clone()).collect();
    let sref: Vec<&str> = subset.iter().map(|s| s.as_str()).collect();
    let sset: HashSet<&str> = sref.iter().copied().collect();
    let q = data.mat(8, 0.8);
    let r = ix
        .search_with(&[&q], 10, None, Some(&sref), all)
        .expect("subset search");
    assert!(r
        .ids
        .iter()
        .all(|i| i.is_empty() || sset.contains(i.as_str())));
    let sub_live: Vec<(String, Vec<f32>)> = live
        .iter()
        .filter(|x| sset.contains(x.0.as_str()))
        .cloned()
        .collect();
    let top = exact_topk(&q, &sub_live, 1, DIM);
    assert!(
        r.ids[..3].contains(&top[0].0),
        "best subset member in the top 3"
    );
    // Reopen: same results.
    let before = search(&ix, &q, 10, all);
    ix.close();
    let ix = Index::open(&dir, OpenMode::Read).expect("open");
    assert!(ix.compression().is_some());
    assert_eq!(search(&ix, &q, 10, all), before);
    ix.verify().expect("verify");
    // Compaction: one segment, one ivf, same documents, still good.
    let n = ix.len().expect("len");
    ix.compact().expect("compact");
    let st = ix.stats().expect("stats");
    assert_eq!((st.n_segments, st.n_docs), (1, n));
    assert_eq!(files(&dir, ".ivf-").len(), 1);
    assert_eq!(files(&dir, "idx-codec"), codec_before);
    let r_all = recall(&ix, &mut data, &live, all);
    // Every list probed: what is left is codec error (0.83-0.86 across codec training changes).
    assert!(r_all >= 0.8, "recall@10 with every list probed {r_all}");
    // Retraining (from decoded reconstructions here): a new codec, still good.
    ix.compact_retrain(true).expect("retrain");
    assert_ne!(files(&dir, "idx-codec"), codec_before);
    assert!(recall(&ix, &mut data, &live, all) >= 0.8);
    ix.verify().expect("verify");
}

#[test]
fn keep_vectors_rerank_is_exact_on_the_short_list_and_costs_the_vectors() {
    let tmp = tempfile::tempdir().expect("tmp");
    let mut data = seeded(11);
    let docs = data.docs(250);
    let mut sizes = Vec::new();
    for keep in [true, false] {
        let dir = tmp.path().join(format!("ix{keep}"));
        let ix = Index::create_with(&dir, DIM, Dtype::F16, Some(cfg(keep))).expect("create");
        let ids = add(&ix, "d", &docs, false);
        ix.commit().expect("commit");
        let st = ix.stats().expect("stats");
        assert!(st.trained && st.keep_vectors == keep);
        sizes.push(st.bytes_on_disk as f64 / st.n_tokens as f64);
        let live: Vec<(String, Vec<f32>)> = ids.into_iter().zip(docs.clone()).collect();
        if keep {
            // get is exact, re-ranked scores are the exact MaxSim of the returned documents.
            let OwnedVectors::F16(g) = ix.get("d5").expect("get") else {
                panic!("f16")
            };
            assert!(g
                .iter()
                .zip(&docs[5])
                .all(|(a, &b)| *a == half::f16::from_f32(b)));
            for _ in 0..10 {
                let q = data.mat(8, 0.8);
                let got = search(&ix, &q, 10, CompressedSearch::default());
                let want = exact_topk(&q, &live, 10, DIM);
                let exact: std::collections::HashMap<String, f32> =
                    exact_topk(&q, &live, live.len(), DIM).into_iter().collect();
                for (i, s) in &got {
                    assert!((exact[i] - s).abs() < 1e-3, "re-ranked score is exact");
                }
                assert_eq!(got[0].0, want[0].0);
            }
            let no = CompressedSearch {
                nprobe: None,
                rerank: Some(false),
                refine: None,
                rerank_depth: None,
            };
            assert!(!search(&ix, &data.mat(4, 0.8), 10, no).is_empty());
        }
    }
    // 32 + 16 centroids-and-codes bytes vs 8: vectors are 64 B/token at f16.
    assert!(sizes[0] > sizes[1] + 60.0, "{sizes:?}");
}

#[test]
fn bad_input_is_rejected_with_clear_errors() {
    let tmp = tempfile::tempdir().expect("tmp");
    let mk = |c: Compression| Index::create_with(tmp.path().join("bad"), DIM, Dtype::F16, Some(c));
    let err = |r: latix_core::Result<Index>, what: &str| match r {
        Err(LatixError::InvalidArgument(m)) => assert!(m.contains(what), "{m}"),
        other => panic!("expected InvalidArgument about {what}, got {other:?}"),
    };
    err(
        mk(Compression {
            pool_factor: 0,
            ..cfg(false)
        }),
        "pool_factor",
    );
    err(
        mk(Compression {
            pool_factor: 9,
            ..cfg(false)
        }),
        "pool_factor",
    );
    err(
        mk(Compression {
            bytes_per_token: Some(0),
            ..cfg(false)
        }),
        "bytes_per_token",
    );
    err(
        mk(Compression {
            bytes_per_token: Some(17),
            ..cfg(false)
        }),
        "bytes_per_token",
    );
    err(
        mk(Compression {
            bytes_per_token: Some(32),
            ..cfg(false)
        }),
        "bytes_per_token",
    );
    err(
        mk(Compression {
            train_min_tokens: 10,
            ..cfg(false)
        }),
        "train_min_tokens",
    );
    err(
        mk(Compression {
            train_sample_tokens: 3,
            ..cfg(false)
        }),
        "train_sample_tokens",
    );
    err(
        mk(Compression {
            n_centroids: Some(5000),
            ..cfg(false)
        }),
        "n_centroids",
    );
    err(
        mk(Compression {
            n_centroids: Some(0),
            ..cfg(false)
        }),
        "n_centroids",
    );
    // dim 1 has no code size (two subspaces need two dimensions): refused at create, not at the
    // training commit.
    let odd = Compression {
        bytes_per_token: None,
        ..cfg(false)
    };
    assert!(matches!(
        Index::create_with(tmp.path().join("bad"), 1, Dtype::F16, Some(odd)),
        Err(LatixError::InvalidArgument(m)) if m.contains("bytes_per_token")
    ));
    assert!(
        !tmp.path().join("bad").exists(),
        "nothing created on bad input"
    );
    // nprobe out of range, dim mismatch, options on a plain index.
    let mut data = seeded(5);
    let ix = Index::create_with(tmp.path().join("ok"), DIM, Dtype::F32, Some(cfg(false)))
        .expect("create");
    add(&ix, "x", &data.docs(250), false);
    ix.commit().expect("commit");
    let q = data.mat(4, 0.8);
    for np in [0, 33] {
        let o = CompressedSearch {
            nprobe: Some(np),
            rerank: None,
            refine: None,
            rerank_depth: None,
        };
        assert!(matches!(
            ix.search_with(&[&q], 5, None, None, o),
            Err(LatixError::InvalidArgument(m)) if m.contains("nprobe")
        ));
    }
    assert!(matches!(
        ix.search(&[&q[..DIM - 1]], 5, None, None),
        Err(LatixError::InvalidArgument(_))
    ));
    let bad_doc = vec![0.5f32; DIM + 1];
    assert!(matches!(
        ix.add(&["y"], &[DocVectors::F32(&bad_doc)], false),
        Err(LatixError::InvalidArgument(_))
    ));
    let plain = Index::create(tmp.path().join("plain"), DIM, Dtype::F32).expect("create");
    assert!(matches!(
        plain.search_with(
            &[&q],
            5,
            None,
            None,
            CompressedSearch {
                nprobe: Some(4),
                rerank: None,
                refine: None,
                rerank_depth: None,
            }
        ),
        Err(LatixError::InvalidArgument(_))
    ));
    assert!(matches!(
        plain.compact_retrain(true),
        Err(LatixError::InvalidArgument(_))
    ));
}

#[test]
fn damaged_codec_and_lists_are_reported_naming_the_file() {
    let tmp = tempfile::tempdir().expect("tmp");
    let mut data = seeded(13);
    let docs = data.docs(250);
    let other = seeded(14).docs(250);
    let build = |name: &str, seed: u64| {
        let dir = tmp.path().join(name);
        let docs = if seed == 1 { &docs } else { &other };
        let ix = Index::create_with(
            &dir,
            DIM,
            Dtype::F16,
            Some(Compression { seed, ..cfg(false) }),
        )
        .expect("create");
        add(&ix, "d", docs, false);
        ix.commit().expect("commit");
        ix.close();
        dir
    };
    let q = data.mat(4, 0.8);
    let check = |dir: &Path, file: &str| {
        let open = Index::open(dir, OpenMode::Read);
        let res = open.and_then(|ix| {
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
    // Truncated codec, flipped byte in the codec, truncated ivf, flipped ivf byte.
    for (what, trunc) in [
        ("idx-codec", true),
        ("idx-codec", false),
        (".ivf-", true),
        (".ivf-", false),
    ] {
        let dir = build(&format!("d{what}{trunc}"), 1);
        let f = files(&dir, what)[0].clone();
        let p = dir.join(&f);
        let mut b = std::fs::read(&p).expect("read");
        if trunc {
            b.truncate(b.len() / 2);
        } else {
            let at = b.len() / 3;
            b[at] ^= 0x20;
        }
        std::fs::write(&p, &b).expect("write");
        check(&dir, &f);
    }
    // A valid codec of the same shape trained on other data replaces the index's: the checksum
    // the manifest recorded for the codec file differs (and the lists' codec checksum too).
    let a = build("swap_a", 1);
    let b = build("swap_b", 2);
    let ca = files(&a, "idx-codec")[0].clone();
    let cb = files(&b, "idx-codec")[0].clone();
    std::fs::copy(b.join(&cb), a.join(&ca)).expect("copy");
    check(&a, &ca);
}

#[test]
fn readers_search_while_the_writer_commits_compacts_and_retrains() {
    // A reader handle must always see a consistent committed generation, even when a commit
    // removes the side files of the snapshot it just loaded (compaction, retraining).
    let tmp = tempfile::tempdir().expect("tmp");
    let dir = tmp.path().join("ix");
    let mut data = seeded(17);
    let w = Index::create_with(&dir, DIM, Dtype::F16, Some(cfg(false))).expect("create");
    add(&w, "s", &data.docs(200), false);
    w.commit().expect("commit");
    let stop = std::sync::atomic::AtomicBool::new(false);
    let queries: Vec<Vec<f32>> = (0..4).map(|_| data.mat(6, 0.8)).collect();
    std::thread::scope(|sc| {
        let reader = sc.spawn(|| {
            let r = Index::open(&dir, OpenMode::Read).expect("open");
            let mut n = 0;
            while !stop.load(std::sync::atomic::Ordering::Acquire) || n < 5 {
                let q: Vec<&[f32]> = queries.iter().map(|q| q.as_slice()).collect();
                let res = r
                    .search(&q, 5, Some(1), None)
                    .expect("search during writes");
                assert!(res.ids.iter().all(|i| !i.is_empty()));
                r.get("s150").expect("get during writes");
                r.stats().expect("stats during writes");
                n += 1;
            }
            n
        });
        for round in 0..6 {
            add(&w, &format!("r{round}-"), &data.docs(20), false);
            w.delete(&[&format!("s{round}")]).expect("delete");
            w.commit().expect("commit");
            w.compact_retrain(round % 2 == 1).expect("compact");
        }
        stop.store(true, std::sync::atomic::Ordering::Release);
        assert!(reader.join().expect("reader") >= 5);
    });
    w.verify().expect("verify");
}

#[test]
fn config_round_trips_and_every_damaged_byte_is_rejected() {
    let p = Path::new("idx-compression-0");
    for c in [cfg(true), Compression::default()] {
        let b = c.encode();
        assert_eq!(Compression::decode(&b, p).expect("decode"), c);
        for i in 0..b.len() {
            let mut d = b.clone();
            d[i] ^= 0x08;
            assert!(
                Compression::decode(&d, p).is_err(),
                "flip at byte {i} accepted"
            );
            assert!(
                Compression::decode(&b[..i], p).is_err(),
                "truncation at {i} accepted"
            );
        }
    }
}

#[test]
fn lists_written_before_the_document_map_search_and_are_upgraded_by_the_next_commit() {
    use latix_core::compressed::IvfSegment;
    let mut data = seeded(17);
    let dir = tempfile::tempdir().unwrap();
    let docs = data.docs(300);
    let more = data.docs(40);
    let queries: Vec<Vec<f32>> = (0..6).map(|_| data.mat(6, 0.8)).collect();
    let no_refine = CompressedSearch {
        nprobe: Some(4),
        rerank: None,
        refine: Some(0),
        rerank_depth: None,
    };
    let refined = CompressedSearch {
        refine: Some(20),
        ..no_refine
    };
    for (case, p) in ["compact", "add"]
        .iter()
        .zip([dir.path().join("a"), dir.path().join("b")])
    {
        let ix = Index::create_with(&p, DIM, Dtype::F16, Some(cfg(false))).unwrap();
        add(&ix, "d", &docs, false);
        ix.commit().unwrap();
        let want: Vec<_> = queries
            .iter()
            .map(|q| search(&ix, q, 10, no_refine))
            .collect();
        let want_refined: Vec<_> = queries
            .iter()
            .map(|q| search(&ix, q, 10, refined))
            .collect();
        ix.close();
        // Rewrite the lists as the previous latix wrote them, and the manifest in the format of
        // that time (no named-file checksums).
        for f in files(&p, ".ivf-") {
            let path = p.join(&f);
            let old = common::as_version_3(&IvfSegment::open(&path, true).unwrap());
            std::fs::write(&path, old).unwrap();
            assert_eq!(IvfSegment::file_version(&path).unwrap(), 3);
        }
        let name = latix_core::store::snapshot::read_current(&p).unwrap();
        let m = latix_core::store::Manifest::decode(&std::fs::read(p.join(&name)).unwrap(), &p)
            .unwrap();
        std::fs::write(p.join(&name), m.encode_v1()).unwrap();
        let ix = Index::open(&p, OpenMode::Write).unwrap();
        // Searchable as before; refinement is off by default and refused when asked for.
        for (q, w) in queries.iter().zip(&want) {
            assert_eq!(&search(&ix, q, 10, no_refine), w, "{case}");
            let default = search(&ix, q, 10, CompressedSearch::default());
            assert_eq!(default.len(), w.len(), "{case}");
        }
        let e = ix
            .search_with(&[&queries[0][..]], 10, Some(1), None, refined)
            .unwrap_err();
        assert!(e.to_string().contains("compact()"), "{e}");
        if *case == "compact" {
            ix.compact().unwrap();
        } else {
            add(&ix, "m", &more, false);
            ix.commit().unwrap();
        }
        for f in files(&p, ".ivf-") {
            assert_eq!(
                IvfSegment::file_version(&p.join(&f)).unwrap(),
                5,
                "{case}: {f}"
            );
        }
        // Lossless: the same codes score the same, and refinement works again.
        for ((q, w), wr) in queries.iter().zip(&want).zip(&want_refined) {
            let got = search(&ix, q, 10, refined);
            if *case == "compact" {
                assert_eq!(&search(&ix, q, 10, no_refine), w);
                assert_eq!(&got, wr);
            } else {
                assert_eq!(got.len(), 10);
            }
        }
        ix.verify().unwrap();
        ix.close();
    }
}

#[test]
fn lists_with_interleaved_blocks_search_alike_and_merges_write_split_halves() {
    // Version-4 lists (what latix wrote before the split-half blocks of version 5) give the very
    // same candidates, refinement and scores; a commit leaves them as they are, and a
    // compaction rewrites them as version 5.
    use latix_core::compressed::IvfSegment;
    let mut data = seeded(23);
    let tmp = tempfile::tempdir().unwrap();
    let p = tmp.path().join("ix");
    let docs = data.docs(300);
    let more = data.docs(40);
    let queries: Vec<Vec<f32>> = (0..6).map(|_| data.mat(6, 0.8)).collect();
    let refined = CompressedSearch {
        nprobe: Some(4),
        rerank: None,
        refine: Some(20),
        rerank_depth: None,
    };
    let ix = Index::create_with(&p, DIM, Dtype::F16, Some(cfg(false))).unwrap();
    add(&ix, "d", &docs, false);
    ix.commit().unwrap();
    let runs = |ix: &Index| -> Vec<_> {
        queries
            .iter()
            .flat_map(|q| {
                [
                    search(ix, q, 10, refined),
                    search(ix, q, 10, CompressedSearch::default()),
                ]
            })
            .collect()
    };
    let want = runs(&ix);
    ix.close();
    for f in files(&p, ".ivf-") {
        let path = p.join(&f);
        let v4 = IvfSegment::open(&path, true)
            .unwrap()
            .as_version_4()
            .unwrap();
        std::fs::write(&path, v4.as_bytes()).unwrap();
        assert_eq!(IvfSegment::file_version(&path).unwrap(), 4);
    }
    // The manifest of that time recorded the files' checksums; the rewritten files have others.
    let name = latix_core::store::snapshot::read_current(&p).unwrap();
    let m =
        latix_core::store::Manifest::decode(&std::fs::read(p.join(&name)).unwrap(), &p).unwrap();
    std::fs::write(p.join(&name), m.encode_v1()).unwrap();
    let ix = Index::open(&p, OpenMode::Write).unwrap();
    assert_eq!(runs(&ix), want);
    add(&ix, "m", &more, false);
    ix.commit().unwrap();
    let versions = |p: &std::path::Path| -> Vec<u32> {
        files(p, ".ivf-")
            .iter()
            .map(|f| IvfSegment::file_version(&p.join(f)).unwrap())
            .collect()
    };
    assert_eq!(
        versions(&p),
        [4, 5],
        "the old lists kept, the new ones in version 5"
    );
    ix.verify().unwrap();
    let with_more = runs(&ix);
    ix.compact().unwrap();
    assert_eq!(versions(&p), [5]);
    assert_eq!(
        runs(&ix),
        with_more,
        "a compaction in the codes domain is lossless"
    );
    ix.verify().unwrap();
    ix.close();
}

#[test]
fn a_commit_whose_staged_documents_are_all_deleted_succeeds_on_a_trained_index() {
    // Documents added and deleted before one commit leave a staged segment with every document
    // dead, which the commit drops; the codec's hook once still tried to encode it ("no segment
    // seg-….lxs"), and since a failed commit keeps what is staged, every later commit and
    // compaction of that handle failed the same way (found by the writers soak).
    for keep in [true, false] {
        let tmp = tempfile::tempdir().expect("tmp");
        let dir = tmp.path().join("ix");
        let mut data = seeded(11);
        let ix = Index::create_with(&dir, DIM, Dtype::F16, Some(cfg(keep))).expect("create");
        let d0 = data.docs(200);
        add(&ix, "a", &d0, false);
        ix.commit().expect("commit");
        assert!(
            ix.stats().expect("stats").trained,
            "trained by the first commit"
        );
        let d1 = data.docs(3);
        add(&ix, "b", &d1, false);
        ix.delete(&["b0", "b1", "b2", "a5"]).expect("delete");
        ix.commit().expect("a commit of only dead staged documents");
        assert_eq!(ix.len().expect("len"), 199);
        assert!(!ix.contains("b1").expect("contains") && !ix.contains("a5").expect("contains"));
        // The handle still commits and compacts.
        add(&ix, "c", &data.docs(2), false);
        ix.commit().expect("commit");
        ix.compact().expect("compact");
        assert_eq!(ix.len().expect("len"), 201);
        ix.verify().expect("verify");
        let reopened = Index::open(&dir, OpenMode::Read).expect("reopen");
        assert_eq!(reopened.len().expect("len"), 201);
    }
}

#[test]
fn an_index_created_with_another_indexs_codec_encodes_as_that_index() {
    let dir = tempfile::tempdir().unwrap();
    let mut data = seeded(41);
    let docs = data.docs(220);
    let a = Index::create_with(dir.path().join("a"), DIM, Dtype::F32, Some(cfg(false))).unwrap();
    let ids = add(&a, "d", &docs, false);
    a.commit().unwrap();
    let codec = a.codec_bytes().unwrap().expect("trained");
    // The codec trained from the same documents outside an index is the same file.
    let flat: Vec<f32> = docs.iter().flatten().copied().collect();
    let mut offsets = vec![0u64];
    for d in &docs {
        offsets.push(offsets[offsets.len() - 1] + (d.len() / DIM) as u64);
    }
    let trained = latix_core::compressed::train_codec_on_documents(
        &cfg(false),
        DIM,
        &flat,
        &offsets,
        None,
        Some(2),
    )
    .unwrap();
    assert_eq!(trained.to_bytes(), codec);
    // B starts with A's codec: compressed from its first commit, same hits and scores as A.
    let b = Index::create_with_codec(dir.path().join("b"), DIM, Dtype::F32, cfg(false), &codec)
        .unwrap();
    assert_eq!(b.codec_bytes().unwrap().as_deref(), Some(&codec[..]));
    add(&b, "d", &docs, false);
    b.commit().unwrap();
    let live: Vec<(String, Vec<f32>)> = ids.into_iter().zip(docs.iter().cloned()).collect();
    for _ in 0..10 {
        let q = data.mat(8, 0.8);
        let (ra, rb) = (
            search(&a, &q, 10, CompressedSearch::default()),
            search(&b, &q, 10, CompressedSearch::default()),
        );
        assert_eq!(ra, rb);
        assert_eq!(ra.len(), 10);
    }
    assert!(recall(&b, &mut data, &live, CompressedSearch::default()) >= 0.7);
    b.verify().unwrap();
    // Bad codecs fail before anything is written.
    let mut flipped = codec.clone();
    let mid = flipped.len() / 2;
    flipped[mid] ^= 1;
    let bad_cfg = Compression {
        bytes_per_token: Some(4),
        ..cfg(false)
    };
    let cases: Vec<(usize, Compression, Vec<u8>, &str)> = vec![
        (DIM, cfg(false), flipped, "checksum"),
        (DIM, cfg(false), codec[..codec.len() - 3].to_vec(), "codec"),
        (DIM * 2, cfg(false), codec.clone(), "dimension"),
        (DIM, bad_cfg, codec.clone(), "code bytes"),
        (
            DIM,
            Compression {
                n_centroids: Some(16),
                ..cfg(false)
            },
            codec.clone(),
            "centroids",
        ),
    ];
    for (j, (dim, c, bytes, msg)) in cases.into_iter().enumerate() {
        let p = dir.path().join(format!("bad{j}"));
        let e = Index::create_with_codec(&p, dim, Dtype::F32, c, &bytes).unwrap_err();
        assert!(e.to_string().contains(msg), "{e}");
        assert!(!p.exists());
    }
}
