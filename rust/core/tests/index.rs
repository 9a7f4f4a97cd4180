//! Integration tests of `Index`, the on-disk index handle: round trips, search against a
//! brute-force reference built from the scalar MaxSim oracle, deletes/replace/compaction,
//! snapshots, locking, commit hooks, and exhaustive truncation/byte-flip corruption of a small
//! segment.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use half::f16;
use latix_core::index::{CommitContext, OpenMode, OwnedVectors};
use latix_core::maxsim::{scalar, DocVectors};
use latix_core::store::Snapshot;
use latix_core::{Dtype, Index, LatixError};

/// Small deterministic generator (xorshift64*), so the tests need no RNG crate API.
struct Rng(u64);
impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
    fn normal_vec(&mut self, n: usize) -> Vec<f32> {
        (0..n)
            .map(|_| (self.next() >> 40) as f32 / (1u64 << 24) as f32 * 2.0 - 1.0)
            .collect()
    }
}

fn tmp() -> tempfile::TempDir {
    tempfile::tempdir().expect("tempdir")
}

fn docs(rng: &mut Rng, n: usize, dim: usize, max_tok: u64) -> Vec<Vec<f32>> {
    (0..n)
        .map(|_| {
            let n = (1 + rng.below(max_tok)) as usize;
            rng.normal_vec(n * dim)
        })
        .collect()
}

fn stored(v: &[f32], dtype: Dtype) -> Vec<f32> {
    match dtype {
        Dtype::F32 => v.to_vec(),
        Dtype::F16 => v.iter().map(|&x| f16::from_f32(x).to_f32()).collect(),
    }
}

fn add_all(ix: &Index, ids: &[String], docs: &[Vec<f32>]) {
    let refs: Vec<&str> = ids.iter().map(|s| s.as_str()).collect();
    let dv: Vec<DocVectors<'_>> = docs.iter().map(|d| DocVectors::F32(d)).collect();
    ix.add(&refs, &dv, false).expect("add");
}

/// Brute-force top-k: (score desc, insertion position asc), from the scalar oracle.
fn brute(q: &[f32], dim: usize, live: &[(String, Vec<f32>)], k: usize) -> Vec<(String, f32)> {
    let mut all: Vec<(usize, f32)> = live
        .iter()
        .enumerate()
        .map(|(i, (_, d))| (i, scalar::maxsim_f32(q, d, dim)))
        .collect();
    all.sort_by(|a, b| b.1.total_cmp(&a.1).then(a.0.cmp(&b.0)));
    all.into_iter()
        .take(k)
        .map(|(i, s)| (live[i].0.clone(), s))
        .collect()
}

fn check_search(
    ix: &Index,
    live: &[(String, Vec<f32>)],
    queries: &[Vec<f32>],
    k: usize,
    threads: usize,
) {
    let dim = ix.dim();
    let qrefs: Vec<&[f32]> = queries.iter().map(|q| q.as_slice()).collect();
    let res = ix.search(&qrefs, k, Some(threads), None).expect("search");
    assert_eq!((res.n_queries, res.k), (queries.len(), k));
    for (qi, q) in queries.iter().enumerate() {
        let want = brute(q, dim, live, k);
        for r in 0..k {
            let (s, id) = (res.scores[qi * k + r], &res.ids[qi * k + r]);
            match want.get(r) {
                Some((wid, ws)) => {
                    assert!(
                        (s - ws).abs() <= 1e-4 * (1.0 + ws.abs()),
                        "query {qi} rank {r}: {s} vs {ws}"
                    );
                    // Ids must agree except between near-equal scores (summation order).
                    if id != wid {
                        let other = live
                            .iter()
                            .find(|(i, _)| i == id)
                            .expect("returned id is live");
                        let so = scalar::maxsim_f32(q, &other.1, dim);
                        assert!((so - ws).abs() <= 1e-4 * (1.0 + ws.abs()));
                    }
                }
                None => {
                    assert_eq!(s, f32::NEG_INFINITY);
                    assert_eq!(id, "");
                }
            }
        }
    }
}

fn ids(prefix: &str, n: usize) -> Vec<String> {
    (0..n).map(|i| format!("{prefix}{i}")).collect()
}

#[test]
fn round_trip_and_search_both_dtypes() {
    for dtype in [Dtype::F16, Dtype::F32] {
        for (n, dim, max_tok) in [(1usize, 1usize, 1u64), (37, 8, 5), (300, 33, 12)] {
            let dir = tmp();
            let path = dir.path().join("ix");
            let mut rng = Rng(n as u64 * 7919 + dim as u64);
            let d = docs(&mut rng, n, dim, max_tok);
            let id = ids("doc-", n);
            {
                let ix = Index::create(&path, dim, dtype).expect("create");
                let half = n / 2;
                add_all(&ix, &id[..half], &d[..half]);
                ix.commit().expect("commit");
                add_all(&ix, &id[half..], &d[half..]);
                ix.commit().expect("commit");
            }
            let ix = Index::open(&path, OpenMode::Read).expect("open");
            assert_eq!(ix.len().expect("len"), n);
            assert_eq!(ix.ids().expect("ids"), id);
            let total: usize = d.iter().map(|v| v.len() / dim).sum();
            assert_eq!(ix.num_tokens().expect("tokens") as usize, total);
            for (i, v) in id.iter().zip(&d) {
                let got = ix.get(i).expect("get");
                match (dtype, got) {
                    (Dtype::F32, OwnedVectors::F32(g)) => assert_eq!(&g, v),
                    (Dtype::F16, OwnedVectors::F16(g)) => {
                        assert_eq!(
                            g.iter().map(|x| x.to_f32()).collect::<Vec<_>>(),
                            stored(v, dtype)
                        )
                    }
                    _ => panic!("wrong dtype returned"),
                }
            }
            ix.verify().expect("verify");
            let live: Vec<(String, Vec<f32>)> = id
                .iter()
                .cloned()
                .zip(d.iter().map(|v| stored(v, dtype)))
                .collect();
            let queries: Vec<Vec<f32>> = (0..3).map(|i| rng.normal_vec((1 + i) * dim)).collect();
            for k in [1, 5, n + 3] {
                check_search(&ix, &live, &queries, k, 1);
                check_search(&ix, &live, &queries, k, 2);
            }
        }
    }
}

#[test]
fn delete_replace_compact() {
    let dir = tmp();
    let path = dir.path().join("ix");
    let dim = 16;
    let mut rng = Rng(42);
    let ix = Index::create(&path, dim, Dtype::F32).expect("create");
    let mut live: Vec<(String, Vec<f32>)> = Vec::new();
    for round in 0..4 {
        let d = docs(&mut rng, 50, dim, 8);
        let id = ids(&format!("r{round}-"), 50);
        add_all(&ix, &id, &d);
        live.extend(id.into_iter().zip(d));
        ix.commit().expect("commit");
    }
    // Delete every third document, replace a few (committed and staged).
    let del: Vec<String> = live.iter().step_by(3).map(|(i, _)| i.clone()).collect();
    let del_refs: Vec<&str> = del.iter().map(|s| s.as_str()).collect();
    ix.delete(&del_refs).expect("delete");
    live.retain(|(i, _)| !del.contains(i));
    let new = rng.normal_vec(3 * dim);
    ix.add(&["r1-1"], &[DocVectors::F32(&new)], true)
        .expect("replace");
    assert!(matches!(
        ix.add(&["r1-1"], &[DocVectors::F32(&new)], false),
        Err(LatixError::AlreadyExists(_))
    ));
    let newer = rng.normal_vec(2 * dim);
    ix.add(&["r1-1"], &[DocVectors::F32(&newer)], true)
        .expect("replace staged");
    live.retain(|(i, _)| i != "r1-1");
    live.push(("r1-1".into(), newer.clone()));
    // Unknown id: NotFound, nothing deleted.
    assert!(matches!(
        ix.delete(&["r2-2", "nope"]),
        Err(LatixError::NotFound(_))
    ));
    ix.commit().expect("commit");
    assert_eq!(ix.len().expect("len"), live.len());
    let want_ids: Vec<String> = live.iter().map(|(i, _)| i.clone()).collect();
    assert_eq!(ix.ids().expect("ids"), want_ids);
    let queries: Vec<Vec<f32>> = (0..4).map(|_| rng.normal_vec(4 * dim)).collect();
    check_search(&ix, &live, &queries, 10, 2);

    let size = |p: &Path| -> u64 {
        std::fs::read_dir(p)
            .expect("dir")
            .map(|e| e.expect("entry").metadata().expect("meta").len())
            .sum()
    };
    let before_size = size(&path);
    let qrefs: Vec<&[f32]> = queries.iter().map(|q| q.as_slice()).collect();
    let before = ix.search(&qrefs, 10, Some(1), None).expect("search");
    // A snapshot taken before compaction stays readable after its files are unlinked.
    let old_snap: Arc<Snapshot> = ix.snapshot().expect("snapshot");
    ix.compact().expect("compact");
    let after = ix.search(&qrefs, 10, Some(1), None).expect("search");
    assert_eq!(before, after);
    assert_eq!(ix.ids().expect("ids"), want_ids);
    assert!(size(&path) < before_size);
    let segs: Vec<PathBuf> = std::fs::read_dir(&path)
        .expect("dir")
        .map(|e| e.expect("entry").path())
        .filter(|p| {
            p.file_name()
                .is_some_and(|n| n.to_string_lossy().starts_with("seg-"))
        })
        .collect();
    assert_eq!(segs.len(), 1);
    for (i, v) in &live {
        match old_snap.get(i).unwrap() {
            Some(DocVectors::F32(g)) => assert_eq!(g, v.as_slice()),
            _ => panic!("old snapshot lost {i}"),
        }
    }
    ix.verify().expect("verify");
}

#[test]
fn snapshots_locks_and_staging() {
    let dir = tmp();
    let path = dir.path().join("ix");
    let w = Index::create(&path, 4, Dtype::F16).expect("create");
    let v = vec![1.0f32; 8];
    w.add(&["a"], &[DocVectors::F32(&v)], false).expect("add");
    w.commit().expect("commit");
    let r = Index::open(&path, OpenMode::Read).expect("open");
    let s1 = r.snapshot().expect("snap");
    assert!(
        Arc::ptr_eq(&s1, &r.snapshot().expect("snap")),
        "unchanged CURRENT must not reload"
    );
    w.add(&["b"], &[DocVectors::F32(&v)], false).expect("add");
    assert_eq!(r.len().expect("len"), 1);
    assert_eq!(
        w.len().expect("len"),
        1,
        "staged adds are invisible to the writer's reads"
    );
    // Second writer: Locked, immediately.
    assert!(matches!(r.delete(&["a"]), Err(LatixError::Locked(_))));
    assert!(matches!(
        Index::open(&path, OpenMode::Write),
        Err(LatixError::Locked(_))
    ));
    w.commit().expect("commit");
    let s2 = r.snapshot().expect("snap");
    assert_eq!(s2.generation(), s1.generation() + 1);
    assert_eq!((s1.len(), s2.len()), (1, 2));
    assert!(
        Arc::ptr_eq(&s1.segments()[0].segment, &s2.segments()[0].segment),
        "segment maps are reused"
    );
    // Uncommitted changes vanish with the handle, with their temp file.
    w.add(&["c"], &[DocVectors::F32(&v)], false).expect("add");
    w.close();
    assert!(matches!(w.len(), Err(LatixError::Closed(_))));
    let names: Vec<String> = std::fs::read_dir(&path)
        .expect("dir")
        .map(|e| e.expect("e").file_name().to_string_lossy().into_owned())
        .collect();
    assert!(names.iter().all(|n| !n.starts_with("tmp-")), "{names:?}");
    // The lock is free again; an orphaned temp file is removed by the next writer.
    std::fs::write(path.join("tmp-segment-orphan"), b"junk").expect("write");
    std::fs::write(path.join("MANIFEST-00000000000000000099"), b"junk").expect("write");
    std::fs::write(path.join("idx-codec-00000000000000000042"), b"junk").expect("write");
    std::fs::write(path.join("user-notes.txt"), b"keep me").expect("write");
    let w2 = Index::open(&path, OpenMode::Write).expect("open w");
    assert!(!path.join("idx-codec-00000000000000000042").exists());
    assert!(
        path.join("user-notes.txt").exists(),
        "files latix did not write are never removed"
    );
    assert!(!path.join("tmp-segment-orphan").exists());
    assert!(!path.join("MANIFEST-00000000000000000099").exists());
    assert_eq!(
        w2.ids().expect("ids"),
        vec!["a".to_string(), "b".to_string()]
    );
}

#[test]
fn commit_hook_side_files() {
    let dir = tmp();
    let path = dir.path().join("ix");
    let ix = Index::create(&path, 2, Dtype::F32).expect("create");
    let v = vec![0.5f32; 4];
    ix.add(
        &["a", "b"],
        &[DocVectors::F32(&v), DocVectors::F32(&v)],
        false,
    )
    .expect("add");
    // Every named file ends with the crc32c of its body (the checksum the manifest records).
    let sealed = |b: &[u8]| {
        let mut v = b.to_vec();
        v.extend_from_slice(&crc32c::crc32c(b).to_le_bytes());
        v
    };
    let mut hook = |ctx: &mut CommitContext<'_>| -> latix_core::Result<()> {
        ctx.write_index_file("codec", &sealed(b"centroids"))?;
        let segs = ctx.new_segments().to_vec();
        assert_eq!(segs.len(), 1);
        let seg = ctx.open_segment(&segs[0])?;
        assert_eq!(seg.n_docs(), 2);
        ctx.write_segment_file(&segs[0], "codes", &sealed(b"codes-bytes"))?;
        assert!(ctx.write_index_file("Bad/Name", &sealed(b"")).is_err());
        assert!(ctx
            .write_index_file("unsealed", b"no checksum at the end")
            .is_err());
        assert!(ctx.write_segment_file(&segs[0], "short", b"abc").is_err());
        Ok(())
    };
    ix.commit_with(Some(&mut hook)).expect("commit");
    drop(ix);
    let ix = Index::open(&path, OpenMode::Read).expect("open");
    let snap = ix.snapshot().expect("snap");
    let codec = snap.index_file("codec").expect("codec listed");
    assert_eq!(std::fs::read(codec).expect("read"), sealed(b"centroids"));
    let side = &snap.segments()[0].entry.side_files;
    assert_eq!(side.len(), 1);
    assert_eq!(
        std::fs::read(path.join(&side[0].1)).expect("read"),
        sealed(b"codes-bytes")
    );
    ix.verify().expect("verify");
    // Compaction drops per-segment side files (they describe the old segments), keeps the codec.
    ix.delete(&["a"]).expect("delete");
    ix.compact().expect("compact");
    let snap = ix.snapshot().expect("snap");
    assert!(snap.segments()[0].entry.side_files.is_empty());
    assert!(!path.join(&side[0].1).exists());
    assert!(snap.index_file("codec").is_some());
    ix.verify().expect("verify");
}

#[test]
fn invalid_arguments_change_nothing() {
    let dir = tmp();
    let path = dir.path().join("ix");
    let ix = Index::create(&path, 3, Dtype::F16).expect("create");
    let ok = vec![0.1f32; 6];
    ix.add(&["a"], &[DocVectors::F32(&ok)], false).expect("add");
    ix.commit().expect("commit");
    let nan = vec![f32::NAN; 3];
    let big = vec![1e9f32; 3];
    let short = vec![0.0f32; 4];
    let cases: Vec<(Vec<&str>, Vec<DocVectors<'_>>)> = vec![
        (
            vec!["x", "y"],
            vec![DocVectors::F32(&ok), DocVectors::F32(&nan)],
        ),
        (vec!["x"], vec![DocVectors::F32(&big)]),
        (vec!["x"], vec![DocVectors::F32(&short)]),
        (vec!["x"], vec![DocVectors::F32(&[])]),
        (
            vec!["x", "x"],
            vec![DocVectors::F32(&ok), DocVectors::F32(&ok)],
        ),
        (vec![""], vec![DocVectors::F32(&ok)]),
        (vec!["x"], vec![]),
    ];
    for (i, d) in cases {
        assert!(
            matches!(ix.add(&i, &d, false), Err(LatixError::InvalidArgument(_))),
            "{i:?}"
        );
    }
    assert!(matches!(
        ix.search(&[&ok], 0, None, None),
        Err(LatixError::InvalidArgument(_))
    ));
    assert!(matches!(
        ix.search(&[&ok], usize::MAX, None, None),
        Err(LatixError::InvalidArgument(_))
    ));
    assert_eq!(
        ix.search(&[&ok], 1 << 20, None, None)
            .expect("padded")
            .scores
            .len(),
        1 << 20
    );
    assert!(matches!(
        ix.search(&[&short], 1, None, None),
        Err(LatixError::InvalidArgument(_))
    ));
    assert!(matches!(
        ix.search(&[&ok], 1, Some(0), None),
        Err(LatixError::InvalidArgument(_))
    ));
    ix.commit().expect("commit");
    assert_eq!(ix.ids().expect("ids"), vec!["a".to_string()]);
    assert!(matches!(
        Index::create(&path, 3, Dtype::F16),
        Err(LatixError::AlreadyExists(_))
    ));
    assert!(matches!(
        Index::open(dir.path().join("none"), OpenMode::Read),
        Err(LatixError::NotFound(_))
    ));
}

fn small_index(path: &Path) -> PathBuf {
    let ix = Index::create(path, 4, Dtype::F32).expect("create");
    let mut rng = Rng(9);
    let d = docs(&mut rng, 6, 4, 3);
    add_all(&ix, &ids("x", 6), &d);
    ix.commit().expect("commit");
    std::fs::read_dir(path)
        .expect("dir")
        .map(|e| e.expect("e").path())
        .find(|p| {
            p.file_name()
                .is_some_and(|n| n.to_string_lossy().starts_with("seg-"))
        })
        .expect("segment")
}

fn open_use_verify(path: &Path) -> latix_core::Result<()> {
    let ix = Index::open(path, OpenMode::Read)?;
    let q = vec![1.0f32; 8];
    ix.search(&[&q], 3, Some(1), None)?;
    for id in ix.ids()? {
        ix.get(&id)?;
    }
    ix.verify()
}

/// Overwrites a file in place (no truncate-to-zero first: on ext4 that forces a slow flush).
fn put(path: &Path, bytes: &[u8]) {
    use std::os::unix::fs::FileExt;
    let f = std::fs::OpenOptions::new()
        .write(true)
        .open(path)
        .expect("open");
    f.write_all_at(bytes, 0).expect("write");
    f.set_len(bytes.len() as u64).expect("set_len");
}

#[test]
fn every_truncation_and_byte_flip_is_detected() {
    let dir = tmp();
    let path = dir.path().join("ix");
    let seg = small_index(&path);
    let pristine = std::fs::read(&seg).expect("read");
    open_use_verify(&path).expect("pristine index is valid");
    let name = seg
        .file_name()
        .expect("name")
        .to_string_lossy()
        .into_owned();
    let is_detected = |r: latix_core::Result<()>| match r {
        Err(LatixError::Corrupted { path, .. }) => path.to_string_lossy().contains(&name),
        Err(LatixError::UnsupportedVersion { .. }) => true,
        _ => false,
    };
    for len in 0..pristine.len() {
        put(&seg, &pristine[..len]);
        assert!(
            is_detected(open_use_verify(&path)),
            "truncation to {len} bytes not detected"
        );
    }
    for at in 0..pristine.len() {
        let mut b = pristine.clone();
        b[at] ^= 0x41;
        put(&seg, &b);
        assert!(
            is_detected(open_use_verify(&path)),
            "flip at byte {at} not detected"
        );
    }
    put(&seg, &pristine);
    // The manifest too: every truncation and flip.
    let man = path.join(
        std::fs::read_to_string(path.join("CURRENT"))
            .expect("current")
            .trim(),
    );
    let mpristine = std::fs::read(&man).expect("read");
    for len in 0..mpristine.len() {
        put(&man, &mpristine[..len]);
        assert!(
            matches!(open_use_verify(&path), Err(LatixError::Corrupted { .. })),
            "manifest len {len}"
        );
    }
    for at in 0..mpristine.len() {
        let mut b = mpristine.clone();
        b[at] ^= 0x41;
        put(&man, &b);
        let r = open_use_verify(&path);
        assert!(
            matches!(
                r,
                Err(LatixError::Corrupted { .. }) | Err(LatixError::UnsupportedVersion { .. })
            ),
            "manifest flip at {at}: {r:?}"
        );
    }
}

#[test]
fn readers_stay_consistent_during_commits_and_compactions() {
    let dir = tmp();
    let path = dir.path().join("ix");
    let dim = 4;
    let w = Index::create(&path, dim, Dtype::F32).expect("create");
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    // Every document i has all components equal to i, so a snapshot's content is checkable:
    // ids are "d<i>" and get(id) must return i everywhere.
    let reader = {
        let (path, stop) = (path.clone(), stop.clone());
        std::thread::spawn(move || {
            let r = Index::open(&path, OpenMode::Read).expect("open");
            let mut seen_generations = std::collections::BTreeSet::new();
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                let snap = r.snapshot().expect("snapshot during concurrent commits");
                seen_generations.insert(snap.generation());
                for id in snap.ids().expect("ids") {
                    let want: f32 = id[1..].parse().expect("number");
                    match snap.get(&id).unwrap() {
                        Some(DocVectors::F32(v)) => assert!(v.iter().all(|&x| x == want), "{id}"),
                        _ => panic!("{id} listed but not readable"),
                    }
                }
                let q = vec![1.0f32; dim];
                let res = r.search(&[&q], 3, Some(1), None).expect("search");
                assert!(res
                    .scores
                    .windows(2)
                    .all(|w| w[0] >= w[1] || w[1] == f32::NEG_INFINITY));
            }
            seen_generations.len()
        })
    };
    let mut next = 0u32;
    for round in 0..40 {
        let vals: Vec<Vec<f32>> = (0..5)
            .map(|i| vec![(next + i) as f32; dim * (1 + i as usize % 3)])
            .collect();
        let id: Vec<String> = (0..5).map(|i| format!("d{}", next + i)).collect();
        add_all(&w, &id, &vals);
        next += 5;
        w.commit().expect("commit");
        if round % 3 == 0 {
            let victim = format!("d{}", next - 3);
            w.delete(&[victim.as_str()]).expect("delete");
            w.commit().expect("commit");
        }
        if round % 7 == 6 {
            w.compact().expect("compact");
        }
    }
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let generations = reader.join().expect("reader thread panicked");
    assert!(generations >= 2, "reader saw {generations} generations");
    w.verify().expect("verify");
}

#[test]
fn failed_commit_keeps_staged_changes_for_a_retry() {
    let dir = tmp();
    let path = dir.path().join("ix");
    let ix = Index::create(&path, 2, Dtype::F32).expect("create");
    let v = vec![0.25f32; 4];
    ix.add(
        &["a", "b"],
        &[DocVectors::F32(&v), DocVectors::F32(&v)],
        false,
    )
    .expect("add");
    ix.commit().expect("commit");
    ix.add(&["c"], &[DocVectors::F32(&v)], false).expect("add");
    ix.delete(&["a"]).expect("delete");
    // The hook runs after the new segment was written and renamed: its failure must undo that.
    let mut failing = |_: &mut CommitContext<'_>| -> latix_core::Result<()> {
        Err(LatixError::invalid("hook failed on purpose"))
    };
    assert!(ix.commit_with(Some(&mut failing)).is_err());
    assert_eq!(
        ix.ids().expect("ids"),
        vec!["a".to_string(), "b".to_string()]
    );
    let names: Vec<String> = std::fs::read_dir(&path)
        .expect("dir")
        .map(|e| e.expect("e").file_name().to_string_lossy().into_owned())
        .collect();
    assert_eq!(
        names.iter().filter(|n| n.starts_with("seg-")).count(),
        1,
        "{names:?}"
    );
    // Staged changes survived: a plain retry publishes them.
    ix.add(&["d"], &[DocVectors::F32(&v)], false)
        .expect("add after failed commit");
    ix.commit().expect("retry");
    assert_eq!(
        ix.ids().expect("ids"),
        vec!["b".to_string(), "c".to_string(), "d".to_string()]
    );
    ix.verify().expect("verify");
    drop(ix);
    let ix = Index::open(&path, OpenMode::Read).expect("open");
    assert_eq!(
        ix.ids().expect("ids"),
        vec!["b".to_string(), "c".to_string(), "d".to_string()]
    );
    // A failing compaction changes nothing either.
    assert!(ix.compact_with(Some(&mut failing)).is_err());
    assert_eq!(ix.ids().expect("ids").len(), 3);
    ix.verify().expect("verify");
}

/// A merge of the policy that fails after the commit before it was published (here: an older
/// segment whose vectors were damaged on disk, which the merge's verified read refuses) is not
/// that commit's error: the commit returns Ok, the failure is in `merge_health` and `stats`, the
/// index keeps the published state, and every later commit tries the merge again.
#[test]
fn a_failed_merge_does_not_fail_the_published_commit() {
    let dir = tmp();
    let dim = 8;
    let ix = Index::create(dir.path(), dim, Dtype::F32).expect("create");
    ix.set_merge_policy(Some(latix_core::index::MergePolicy {
        segments_per_tier: 3,
        floor_tokens: 1 << 20,
        ..Default::default()
    }))
    .expect("policy");
    let mut rng = Rng(7);
    let mut all = Vec::new();
    for c in 0..2 {
        let d = docs(&mut rng, 4, dim, 6);
        let ids: Vec<String> = (0..4).map(|i| format!("c{c}-{i}")).collect();
        add_all(&ix, &ids, &d);
        ix.commit().expect("commit");
        all.extend(ids);
    }
    // Damage one vector value of the first segment: NaN bits in its vector data block.
    let first = ix.segments().expect("segments")[0].file.clone();
    let path = dir.path().join(&first);
    let mut bytes = std::fs::read(&path).expect("read");
    // (Read through another handle: the writer's must not have verified that block already.)
    let v0 = Index::open(dir.path(), OpenMode::Read)
        .and_then(|r| r.get("c0-0"))
        .expect("get");
    let OwnedVectors::F32(v0) = v0 else {
        panic!("f32 index")
    };
    let needle: Vec<u8> = v0[..2].iter().flat_map(|x| x.to_le_bytes()).collect();
    let at = bytes
        .windows(needle.len())
        .position(|w| w == needle.as_slice())
        .expect("vector bytes in the segment");
    bytes[at..at + 4].copy_from_slice(&f32::NAN.to_le_bytes());
    std::fs::write(&path, &bytes).expect("write");
    let d = docs(&mut rng, 4, dim, 6);
    let ids: Vec<String> = (0..4).map(|i| format!("c2-{i}")).collect();
    add_all(&ix, &ids, &d);
    all.extend(ids);
    let merge_error = ix.commit_report().expect("the commit itself succeeded");
    assert!(
        matches!(merge_error, Some(LatixError::Corrupted { .. })),
        "{merge_error:?}"
    );
    ix.commit()
        .expect("an empty commit: the policy fails again, the commit does not");
    let health = ix.merge_health();
    assert_eq!(health.failures, 2);
    assert!(
        health.last_error.as_deref().unwrap_or("").contains(&first),
        "{health:?}"
    );
    assert_eq!(ix.stats().expect("stats").merge_health, health);
    let mut ids = ix.ids().expect("ids");
    ids.sort();
    all.sort();
    assert_eq!(ids, all, "the third commit is published");
    assert_eq!(ix.segments().expect("segments").len(), 3, "no merge landed");
    let reader = Index::open(dir.path(), OpenMode::Read).expect("open");
    assert_eq!(reader.len().expect("len"), 12);
    // Without the damaged segment (all its documents deleted, so the commit drops it) the
    // policy has nothing to merge and runs clean: the failure is resolved.
    ix.delete(&["c0-0", "c0-1", "c0-2", "c0-3"])
        .expect("delete");
    assert!(ix.commit_report().expect("commit").is_none());
    assert_eq!(ix.segments().expect("segments").len(), 2);
    assert_eq!(ix.merge_health().last_error, None);
    assert_eq!(ix.merge_health().failures, 2);
    ix.verify().expect("verify");
}
