//! Compaction of a compressed index in the codes domain: the merged inverted lists must be
//! byte-identical to lists encoded from scratch from the original vectors (the reference: the
//! re-encoding path's `IvfSegment::build` over the live documents, pooled as a commit pools
//! them), whether the index kept its vectors or not, on random shapes (dimension, codec size,
//! pooling, number and size of segments, deletes, document chunks of 65,536); search results
//! (ids and scores) are identical before and after; a damaged input is a `Corrupted` error that
//! publishes nothing.

use std::collections::HashMap;
use std::path::Path;

use half::f16;
use latix_core::compressed::kmeans::Rng;
use latix_core::compressed::{codec_id, pool, Codec, IvfSegment};
use latix_core::index::Index;
use latix_core::maxsim::DocVectors;
use latix_core::store::Dtype;
use latix_core::{CompressedSearch, Compression, LatixError};

mod common;
use common::{files, search, Data};

/// One random shape of the test.
#[derive(Clone, Copy, Debug)]
struct Shape {
    dim: usize,
    bytes_per_token: usize,
    n_centroids: usize,
    pool_factor: usize,
    /// Documents of each commit.
    commits: &'static [usize],
    /// Length spread of documents (`6 + below(spread)` tokens).
    spread: usize,
    /// Share of documents deleted (per thousand) before compaction.
    delete_ppm: u64,
}

fn cfg(s: &Shape, keep: bool) -> Compression {
    Compression {
        bytes_per_token: Some(s.bytes_per_token),
        n_centroids: Some(s.n_centroids),
        keep_vectors: keep,
        train_min_tokens: 1500,
        train_sample_tokens: 3000,
        seed: 11,
        pool_factor: s.pool_factor,
        fidelity: Default::default(),
        ..Default::default()
    }
}

/// The two indexes of [`build`], the live documents by id, and the queries.
type Built = (Index, Index, HashMap<String, Vec<f32>>, Vec<Vec<f32>>);

/// Builds the same index twice (vectors kept and dropped), with the same commits and deletes;
/// returns both and the live documents by id.
fn build(root: &Path, s: &Shape, seed: u64) -> Built {
    let mut data = Data::new(seed, s.dim, s.spread, 0.6);
    let kept = Index::create_with(root.join("kept"), s.dim, Dtype::F16, Some(cfg(s, true)))
        .expect("create");
    let free = Index::create_with(root.join("free"), s.dim, Dtype::F16, Some(cfg(s, false)))
        .expect("create");
    let mut live = HashMap::new();
    let mut rng = Rng::new(seed ^ 0xde1);
    let mut next = 0usize;
    for &n in s.commits {
        let docs = data.docs(n);
        let ids: Vec<String> = (next..next + n).map(|i| format!("d{i}")).collect();
        next += n;
        let refs: Vec<&str> = ids.iter().map(|x| x.as_str()).collect();
        let dv: Vec<DocVectors<'_>> = docs.iter().map(|d| DocVectors::F32(d)).collect();
        for ix in [&kept, &free] {
            ix.add(&refs, &dv, false).expect("add");
            ix.commit().expect("commit");
        }
        live.extend(ids.into_iter().zip(docs));
    }
    let mut dead: Vec<String> = live
        .keys()
        .filter(|_| (rng.below(1000) as u64) < s.delete_ppm)
        .cloned()
        .collect();
    dead.sort();
    if !dead.is_empty() {
        let refs: Vec<&str> = dead.iter().map(|x| x.as_str()).collect();
        for ix in [&kept, &free] {
            ix.delete(&refs).expect("delete");
            ix.commit().expect("commit");
        }
    }
    for d in &dead {
        live.remove(d);
    }
    let queries = (0..6).map(|_| data.mat(5, 0.8)).collect();
    (kept, free, live, queries)
}

/// The only file of `dir` containing `part`, read.
fn only(dir: &Path, part: &str) -> Vec<u8> {
    let f = files(dir, part);
    assert_eq!(f.len(), 1, "{part}: {f:?}");
    std::fs::read(dir.join(&f[0])).expect("read")
}

/// The reference: the lists of the compacted segment encoded from scratch from the original
/// vectors (stored as f16; pooled documents rounded to f16, as the commit hook stores them).
fn reference(ix: &Index, live: &HashMap<String, Vec<f32>>, s: &Shape) -> Vec<u8> {
    let dir = ix.path().to_path_buf();
    let codec_bytes = only(&dir, "idx-codec");
    let codec = Codec::from_bytes(&codec_bytes, &dir).expect("codec");
    let segs = ix.segments().expect("segments");
    assert_eq!(segs.len(), 1);
    let ids = ix.segment_ids(&segs[0].file).expect("ids");
    let (mut rows, mut offsets) = (Vec::new(), vec![0u64]);
    for id in &ids {
        let x: Vec<f32> = live[id]
            .iter()
            .map(|&v| f16::from_f32(v).to_f32())
            .collect();
        let p = if s.pool_factor > 1 {
            pool::pool_document(&x, s.dim, s.pool_factor)
        } else {
            x
        };
        offsets.push(offsets[offsets.len() - 1] + (p.len() / s.dim) as u64);
        rows.extend(p.into_iter().map(f16::from_f32));
    }
    let lists = IvfSegment::build(
        &codec,
        codec_id(&codec_bytes),
        DocVectors::F16(&rows),
        &offsets,
    )
    .expect("build");
    lists.as_bytes().to_vec()
}

fn hits(ix: &Index, queries: &[Vec<f32>], opts: CompressedSearch) -> Vec<Vec<(String, f32)>> {
    queries.iter().map(|q| search(ix, q, 20, opts)).collect()
}

fn check_shape(s: Shape, seed: u64, memory: Option<u64>) {
    let tmp = tempfile::tempdir().expect("tmp");
    let (kept, free, live, queries) = build(tmp.path(), &s, seed);
    assert_eq!(
        only(kept.path(), "idx-codec"),
        only(free.path(), "idx-codec"),
        "{s:?}: both indexes train the same codec"
    );
    let every = CompressedSearch {
        nprobe: Some(s.n_centroids),
        rerank: None,
        refine: Some(1000),
        rerank_depth: None,
    };
    let before: Vec<_> = [CompressedSearch::default(), every]
        .iter()
        .map(|o| hits(&free, &queries, *o))
        .collect();
    assert!(free.segments().expect("segments").len() >= s.commits.len().min(2));
    for ix in [&kept, &free] {
        ix.compact_options(false, memory).expect("compact");
    }
    let want = reference(&free, &live, &s);
    assert_eq!(
        only(free.path(), ".ivf-"),
        want,
        "{s:?}: vector-free merge = encoding from scratch"
    );
    assert_eq!(
        only(kept.path(), ".ivf-"),
        want,
        "{s:?}: merge with kept vectors = encoding from scratch"
    );
    assert_eq!(free.len().expect("len"), live.len());
    // Token counts are the original documents' (not pooled) lengths.
    let n_tokens: usize = live.values().map(|v| v.len() / s.dim).sum();
    assert_eq!(free.num_tokens().expect("tokens"), n_tokens as u64);
    assert_eq!(kept.num_tokens().expect("tokens"), n_tokens as u64);
    free.verify().expect("verify");
    kept.verify().expect("verify");
    // Lossless: every list probed and everything refined, the same ids and scores as before;
    // with the defaults as well (the segments' candidates now come from one set of lists).
    let after: Vec<_> = [CompressedSearch::default(), every]
        .iter()
        .map(|o| hits(&free, &queries, *o))
        .collect();
    for (b, a) in before[1].iter().zip(&after[1]) {
        assert_eq!(b, a, "{s:?}: exhaustive search changed by compaction");
    }
    for (b, a) in before[0].iter().zip(&after[0]) {
        assert_eq!(b, a, "{s:?}: default search changed by compaction");
    }
    // The vectors kept are the documents'.
    let id = live.keys().next().expect("a live document");
    match kept.get(id).expect("get") {
        latix_core::index::OwnedVectors::F16(v) => {
            let want: Vec<f16> = live[id].iter().map(|&x| f16::from_f32(x)).collect();
            assert_eq!(v, want);
        }
        other => panic!("unexpected dtype {other:?}"),
    }
}

#[test]
fn codes_merge_is_lossless_on_random_shapes() {
    let shapes = [
        Shape {
            dim: 32,
            bytes_per_token: 8,
            n_centroids: 32,
            pool_factor: 1,
            commits: &[150, 40, 7, 60],
            spread: 20,
            delete_ppm: 150,
        },
        Shape {
            dim: 16,
            bytes_per_token: 4,
            n_centroids: 16,
            pool_factor: 2,
            commits: &[200, 1, 90],
            spread: 30,
            delete_ppm: 0,
        },
        Shape {
            dim: 48,
            bytes_per_token: 16,
            n_centroids: 64,
            pool_factor: 3,
            commits: &[120, 30, 30, 30, 30, 5],
            spread: 40,
            delete_ppm: 400,
        },
        Shape {
            dim: 24,
            bytes_per_token: 12,
            n_centroids: 40,
            pool_factor: 1,
            commits: &[300],
            spread: 10,
            delete_ppm: 300,
        },
    ];
    for (i, s) in shapes.iter().enumerate() {
        check_shape(*s, 100 + i as u64, None);
        // A tiny memory setting (pages released every MiB) gives the same files.
        check_shape(*s, 100 + i as u64, Some(1 << 20));
    }
}

#[test]
fn codes_merge_across_document_chunks() {
    // 2 x 40,000 short documents: the merged segment has two document chunks of 65,536, and the
    // second input's first chunk is split between them.
    let s = Shape {
        dim: 8,
        bytes_per_token: 4,
        n_centroids: 16,
        pool_factor: 1,
        commits: &[40_000, 40_000],
        spread: 1,
        delete_ppm: 20,
    };
    let tmp = tempfile::tempdir().expect("tmp");
    let (kept, free, live, _) = build(tmp.path(), &s, 5);
    drop(kept);
    free.compact().expect("compact");
    assert_eq!(only(free.path(), ".ivf-"), reference(&free, &live, &s));
    let lists = IvfSegment::from_bytes(&only(free.path(), ".ivf-"), true).expect("parse");
    assert_eq!(lists.n_doc_chunks(), 2);
}

#[test]
fn damaged_input_lists_are_an_error_and_nothing_changes() {
    let s = Shape {
        dim: 16,
        bytes_per_token: 8,
        n_centroids: 16,
        pool_factor: 1,
        commits: &[150, 50, 50],
        spread: 10,
        delete_ppm: 100,
    };
    let tmp = tempfile::tempdir().expect("tmp");
    let (kept, free, _, _) = build(tmp.path(), &s, 9);
    drop(kept);
    let dir = free.path().to_path_buf();
    let current = std::fs::read(dir.join("CURRENT")).expect("CURRENT");
    let names = files(&dir, ".ivf-");
    let victim = dir.join(&names[1]);
    let mut b = std::fs::read(&victim).expect("read");
    let at = b.len() / 2;
    b[at] ^= 0x5a;
    std::fs::write(&victim, &b).expect("write");
    let before = files(&dir, "");
    match free.compact() {
        Err(LatixError::Corrupted { path, .. }) => assert_eq!(path, victim),
        other => panic!("expected a Corrupted error naming the damaged lists, got {other:?}"),
    }
    assert_eq!(
        std::fs::read(dir.join("CURRENT")).expect("CURRENT"),
        current
    );
    assert_eq!(files(&dir, ""), before, "no file left behind or removed");
}
