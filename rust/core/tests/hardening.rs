//! Regression tests for the faults the hardening harnesses (tests/harness, fuzz/) found, and the
//! guarantees they rely on: snapshots outlive compaction, damaged vectors are detected on first
//! use, absurd arguments are errors (never panics), a damaged CURRENT or manifest is named.

use std::fs::OpenOptions;
use std::os::unix::fs::FileExt;
use std::path::Path;

use latix_core::index::{search_snapshot, Index, OpenMode};
use latix_core::maxsim::DocVectors;
use latix_core::store::Dtype;
use latix_core::LatixError;

const DIM: usize = 8;

fn doc(seed: u64, n: usize) -> Vec<f32> {
    // A small deterministic generator: no dependency, different per seed.
    let mut x = seed
        .wrapping_mul(6364136223846793005)
        .wrapping_add(1442695040888963407);
    (0..n * DIM)
        .map(|_| {
            x = x
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            ((x >> 33) as f32 / (1u64 << 31) as f32) - 0.5
        })
        .collect()
}

fn add(ix: &Index, ids: &[String], tokens: usize) {
    let vecs: Vec<Vec<f32>> = ids
        .iter()
        .enumerate()
        .map(|(i, _)| doc(i as u64 + ids.len() as u64 * 7919, tokens))
        .collect();
    let docs: Vec<DocVectors<'_>> = vecs.iter().map(|v| DocVectors::F32(v)).collect();
    let refs: Vec<&str> = ids.iter().map(|s| s.as_str()).collect();
    ix.add(&refs, &docs, false).expect("add");
}

fn names(prefix: &str, n: usize) -> Vec<String> {
    (0..n).map(|i| format!("{prefix}{i}")).collect()
}

fn seg_files(dir: &Path) -> Vec<std::path::PathBuf> {
    let mut v: Vec<_> = std::fs::read_dir(dir)
        .expect("read_dir")
        .flatten()
        .map(|e| e.path())
        .filter(|p| {
            p.file_name()
                .is_some_and(|n| n.to_string_lossy().starts_with("seg-"))
        })
        .collect();
    v.sort();
    v
}

#[test]
fn snapshot_outlives_compaction_that_removes_its_files() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let dir = tmp.path().join("ix");
    let ix = Index::create(&dir, DIM, Dtype::F32).expect("create");
    for p in ["a", "b", "c"] {
        add(&ix, &names(p, 20), 5);
        ix.commit().expect("commit");
    }
    let old = ix.snapshot().expect("snapshot");
    let q = doc(99, 3);
    let before = search_snapshot(&old, &[&q], 60, Some(1), None).expect("search");
    let old_files = seg_files(&dir);
    assert_eq!(old_files.len(), 3);
    ix.delete(&["a1", "b2"]).expect("delete");
    ix.compact().expect("compact");
    // Every file the old snapshot maps is gone from the directory...
    assert!(old_files.iter().all(|f| !f.exists()));
    // ...yet it still searches, verifies and reads exactly as before.
    let after = search_snapshot(&old, &[&q], 60, Some(1), None).expect("search old");
    assert_eq!(before, after);
    old.verify().expect("verify old snapshot");
    assert_eq!(old.len(), 60);
    assert!(old.get("a1").expect("get").is_some());
    // The handle itself moved on.
    assert_eq!(ix.len().expect("len"), 58);
    assert!(!ix.contains("a1").expect("contains"));
}

#[test]
fn damaged_vectors_are_detected_on_first_touch() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let dir = tmp.path().join("ix");
    let ix = Index::create(&dir, DIM, Dtype::F32).expect("create");
    // 40 documents x 1000 tokens x 32 bytes = 1.28 MB: two checksum blocks of 1 MiB.
    add(&ix, &names("d", 40), 1000);
    ix.commit().expect("commit");
    drop(ix);
    let seg = &seg_files(&dir)[0];
    let at = 256 + (1 << 20) + 5; // in block 1 = documents 32..39
    let f = OpenOptions::new()
        .read(true)
        .write(true)
        .open(seg)
        .expect("open");
    let mut b = [0u8; 1];
    f.read_exact_at(&mut b, at).expect("read");
    f.write_all_at(&[b[0] ^ 0x10], at).expect("write");
    drop(f);
    let ix = Index::open(&dir, OpenMode::Read).expect("open is O(1), does not read vectors");
    assert!(ix.get("d0").is_ok(), "block 0 is intact");
    let err = ix.get("d35").expect_err("block 1 is damaged");
    assert!(
        matches!(&err, LatixError::Corrupted { path, .. } if path == seg),
        "{err}"
    );
    let q = doc(1, 2);
    let err = ix
        .search(&[&q], 5, Some(2), None)
        .expect_err("search touches block 1");
    assert!(err.to_string().contains("block 1"), "{err}");
    assert!(ix.search(&[&q], 5, Some(1), Some(&["d1", "d2"])).is_ok());
    assert!(ix.verify().is_err());
}

#[test]
fn absurd_k_is_an_error_not_a_panic() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let ix = Index::create(tmp.path().join("ix"), DIM, Dtype::F16).expect("create");
    add(&ix, &names("d", 3), 2);
    ix.commit().expect("commit");
    let q = doc(1, 1);
    for k in [usize::MAX, 1 << 40, (1 << 26) + 1] {
        let err = ix.search(&[&q], k, None, None).expect_err("k too large");
        assert!(matches!(err, LatixError::InvalidArgument(_)), "{err}");
    }
    let qs: Vec<&[f32]> = (0..1024).map(|_| q.as_slice()).collect();
    assert!(ix.search(&qs, 1 << 17, None, None).is_err());
    assert!(ix.search(&[&q], 1 << 20, None, None).is_ok());
}

#[test]
fn damaged_current_and_renamed_manifest_are_named() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let dir = tmp.path().join("ix");
    {
        let ix = Index::create(&dir, DIM, Dtype::F32).expect("create");
        add(&ix, &names("d", 3), 2);
        ix.commit().expect("commit");
    }
    let cur = dir.join("CURRENT");
    let good = std::fs::read_to_string(&cur).expect("CURRENT");
    let current_err = |text: &str| {
        std::fs::write(&cur, text).expect("write CURRENT");
        let e = Index::open(&dir, OpenMode::Read).expect_err("damaged CURRENT");
        assert!(
            matches!(&e, LatixError::Corrupted { path, .. } if path == &cur),
            "{text:?}: {e}"
        );
    };
    current_err(&good.replace("1\n", "3\n")); // a manifest that does not exist
    current_err(good.trim_end()); // no newline: a torn write
    current_err(&format!("{good}{good}"));
    current_err("MANIFEST-1\n");
    current_err("");
    // A valid manifest under another generation's name.
    let m1 = dir.join(good.trim_end());
    let m5 = dir.join(format!("MANIFEST-{:020}", 5));
    std::fs::copy(&m1, &m5).expect("copy");
    std::fs::write(&cur, format!("MANIFEST-{:020}\n", 5)).expect("write");
    let e = Index::open(&dir, OpenMode::Read).expect_err("generation mismatch");
    assert!(
        matches!(&e, LatixError::Corrupted { path, .. } if path == &m5),
        "{e}"
    );
    std::fs::write(&cur, &good).expect("restore");
    assert_eq!(
        Index::open(&dir, OpenMode::Read)
            .expect("open")
            .len()
            .expect("len"),
        3
    );
}
