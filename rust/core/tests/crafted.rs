//! Crafted files with valid checksums (written through latix's own encoders, not by copying
//! layout constants): states no latix writer produces must be refused at open, and a writer must
//! never overwrite a file the manifest references, whatever the manifest claims.

use std::path::Path;

use latix_core::index::{Index, OpenMode};
use latix_core::maxsim::DocVectors;
use latix_core::store::manifest::{manifest_name, Manifest};
use latix_core::store::snapshot::read_current;
use latix_core::store::Dtype;
use latix_core::{Compression, LatixError};

const DIM: usize = 8;

fn doc(seed: u64, n: usize) -> Vec<f32> {
    let mut x = seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1;
    (0..n * DIM)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            (x >> 40) as f32 / (1u64 << 24) as f32 - 0.5
        })
        .collect()
}

fn add(ix: &Index, prefix: &str, n: usize, tokens: usize) {
    let ids: Vec<String> = (0..n).map(|i| format!("{prefix}{i}")).collect();
    let salt = prefix
        .bytes()
        .fold(7u64, |h, b| h.wrapping_mul(131).wrapping_add(b as u64));
    let vecs: Vec<Vec<f32>> = (0..n)
        .map(|i| doc(salt.wrapping_mul(1_000_003) + i as u64 * 31, tokens))
        .collect();
    let docs: Vec<DocVectors<'_>> = vecs.iter().map(|v| DocVectors::F32(v)).collect();
    let refs: Vec<&str> = ids.iter().map(|s| s.as_str()).collect();
    ix.add(&refs, &docs, false).expect("add");
}

/// An index of three committed segments.
fn three_segments(dir: &Path) {
    let ix = Index::create(dir, DIM, Dtype::F32).expect("create");
    for p in ["a", "b", "c"] {
        add(&ix, p, 10, 3);
        ix.commit().expect("commit");
    }
}

fn current_manifest(dir: &Path) -> Manifest {
    let name = read_current(dir).expect("CURRENT");
    let p = dir.join(&name);
    Manifest::decode(&std::fs::read(&p).expect("read manifest"), &p).expect("decode")
}

/// Publishes `m` (encoded by latix's own encoder, valid checksum) as the live manifest.
fn publish(dir: &Path, m: &Manifest) {
    let name = manifest_name(m.generation);
    std::fs::write(dir.join(&name), m.encode()).expect("write manifest");
    std::fs::write(dir.join("CURRENT"), format!("{name}\n")).expect("write CURRENT");
}

fn segment_bytes(dir: &Path) -> Vec<(String, Vec<u8>)> {
    let mut v: Vec<(String, Vec<u8>)> = std::fs::read_dir(dir)
        .expect("read_dir")
        .flatten()
        .filter(|e| e.file_name().to_string_lossy().starts_with("seg-"))
        .map(|e| {
            (
                e.file_name().to_string_lossy().into_owned(),
                std::fs::read(e.path()).expect("read"),
            )
        })
        .collect();
    v.sort();
    v
}

fn corrupted(r: Result<Index, LatixError>, what: &str) -> String {
    match r {
        Err(e @ LatixError::Corrupted { .. }) => e.to_string(),
        Err(e) => panic!("{what}: expected Corrupted, got {e}"),
        Ok(_) => panic!("{what}: the index opened"),
    }
}

#[test]
fn stale_next_segment_id_is_refused_at_open() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let dir = tmp.path().join("ix");
    three_segments(&dir);
    let before = segment_bytes(&dir);
    let mut m = current_manifest(&dir);
    for stale in [0, 1, 2] {
        m.next_segment_id = stale;
        publish(&dir, &m);
        let e = corrupted(Index::open(&dir, OpenMode::Read), "stale next_segment_id");
        assert!(e.contains("next segment id"), "{e}");
        let e = corrupted(Index::open(&dir, OpenMode::Write), "stale next_segment_id");
        assert!(e.contains(&format!("seg-{stale:010}.lxs")), "{e}");
    }
    // Nothing was written: every segment is byte for byte what it was.
    assert_eq!(segment_bytes(&dir), before);
    m.next_segment_id = 3;
    publish(&dir, &m);
    let ix = Index::open(&dir, OpenMode::Write).expect("a consistent manifest opens");
    add(&ix, "d", 2, 2);
    ix.commit().expect("commit");
    assert_eq!(ix.len().expect("len"), 32);
    ix.verify().expect("verify");
}

#[test]
fn exhausted_counters_are_errors_not_wraps() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let dir = tmp.path().join("ix");
    three_segments(&dir);
    let base = current_manifest(&dir);
    for (generation, next_segment_id) in [(u64::MAX, 3), (7, u64::MAX)] {
        let mut m = base.clone();
        m.generation = generation;
        m.next_segment_id = next_segment_id;
        publish(&dir, &m);
        let ix = Index::open(&dir, OpenMode::Write).expect("a readable state");
        assert_eq!(ix.len().expect("len"), 30);
        add(&ix, "x", 1, 2);
        let e = ix.commit().expect_err("the counter cannot advance");
        assert!(
            matches!(e, LatixError::Corrupted { .. }) && e.to_string().contains("exhausted"),
            "{e}"
        );
        drop(ix);
        // Nothing wrapped around: the same state is still the live one.
        let ix = Index::open(&dir, OpenMode::Read).expect("reopen");
        assert_eq!(ix.snapshot().expect("snapshot").generation(), generation);
        assert_eq!(ix.len().expect("len"), 30);
        assert!(!ix.contains("x0").expect("contains"));
    }
}

#[test]
fn files_referenced_twice_or_reserved_names_are_refused() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let dir = tmp.path().join("ix");
    three_segments(&dir);
    let base = current_manifest(&dir);
    let seg0 = base.segments[0].file.clone();
    let seg1 = base.segments[1].file.clone();
    type Craft = Box<dyn Fn(&mut Manifest)>;
    let cases: Vec<(&str, Craft)> = vec![
        (
            "segment file as a side file of another segment",
            Box::new(move |m: &mut Manifest| {
                m.segments[1].side_files.push(("ivf".into(), seg0.clone()))
            }),
        ),
        (
            "one side file for two segments",
            Box::new(|m: &mut Manifest| {
                for s in 0..2 {
                    m.segments[s].side_files.push((
                        "ivf".into(),
                        "seg-0000000000.ivf-00000000000000000003".into(),
                    ));
                }
            }),
        ),
        (
            "index file that is a segment",
            Box::new(move |m: &mut Manifest| m.index_files.push(("codec".into(), seg1.clone()))),
        ),
        (
            "CURRENT as an index file",
            Box::new(|m: &mut Manifest| m.index_files.push(("codec".into(), "CURRENT".into()))),
        ),
        (
            "a manifest as a side file",
            Box::new(|m: &mut Manifest| {
                m.segments[0]
                    .side_files
                    .push(("ivf".into(), manifest_name(1)))
            }),
        ),
        (
            "two index files of one name",
            Box::new(|m: &mut Manifest| {
                m.index_files.push(("codec".into(), "idx-codec-1".into()));
                m.index_files.push(("codec".into(), "idx-codec-2".into()));
            }),
        ),
    ];
    for (what, craft) in cases {
        let mut m = base.clone();
        craft(&mut m);
        publish(&dir, &m);
        let e = corrupted(Index::open(&dir, OpenMode::Read), what);
        assert!(e.contains("manifest"), "{what}: {e}");
    }
    publish(&dir, &base);
    Index::open(&dir, OpenMode::Read)
        .expect("the original opens")
        .verify()
        .expect("verify");
}

#[test]
fn a_commit_never_overwrites_a_referenced_file() {
    // A manifest that references a file under the name the next training commit will write
    // (its codec of generation + 1): the commit must refuse, not replace it.
    let tmp = tempfile::tempdir().expect("tempdir");
    let dir = tmp.path().join("ix");
    let cfg = Compression {
        bytes_per_token: Some(2),
        n_centroids: Some(8),
        keep_vectors: true,
        train_min_tokens: 256,
        train_sample_tokens: 4096,
        seed: 1,
        pool_factor: 1,
        fidelity: Default::default(),
        ..Default::default()
    };
    {
        let ix = Index::create_with(&dir, DIM, Dtype::F32, Some(cfg)).expect("create");
        add(&ix, "a", 10, 3);
        ix.commit().expect("commit (below the training threshold)");
    }
    let mut m = current_manifest(&dir);
    let victim = format!("idx-codec-{:020}", m.generation + 1);
    std::fs::write(dir.join(&victim), b"precious").expect("write");
    m.index_files.push(("notes".into(), victim.clone()));
    publish(&dir, &m);
    let ix = Index::open(&dir, OpenMode::Write).expect("open");
    add(&ix, "b", 100, 3); // reaches train_min_tokens: this commit trains and writes the codec
    let e = ix
        .commit()
        .expect_err("the commit would overwrite a referenced file");
    assert!(e.to_string().contains(&victim), "{e}");
    assert_eq!(std::fs::read(dir.join(&victim)).expect("read"), b"precious");
    assert_eq!(ix.len().expect("len"), 10);
}

#[test]
fn version_1_manifests_are_read_and_the_next_commit_binds_their_files() {
    // An index written before named-file checksums existed (manifest version 1) opens and
    // searches; its next commit records the checksum of every named file, after which a file
    // replaced by another valid one is detected.
    let tmp = tempfile::tempdir().expect("tempdir");
    let dir = tmp.path().join("ix");
    let cfg = Compression {
        bytes_per_token: Some(2),
        n_centroids: Some(8),
        keep_vectors: false,
        train_min_tokens: 256,
        train_sample_tokens: 4096,
        seed: 1,
        pool_factor: 1,
        fidelity: Default::default(),
        ..Default::default()
    };
    {
        let ix = Index::create_with(&dir, DIM, Dtype::F32, Some(cfg)).expect("create");
        add(&ix, "a", 60, 6);
        ix.commit().expect("commit (trains the codec)");
        add(&ix, "b", 60, 6);
        ix.commit().expect("commit");
    }
    let m = current_manifest(&dir);
    assert!(!m.checksums.is_empty());
    let name = manifest_name(m.generation);
    std::fs::write(dir.join(&name), m.encode_v1()).expect("write v1");
    let old = current_manifest(&dir);
    assert!(
        old.checksums.is_empty(),
        "a version-1 manifest records no checksums"
    );
    let q = doc(5, 3);
    let ix = Index::open(&dir, OpenMode::Write).expect("a version-1 index opens");
    let old_ids: Vec<String> = (0..60)
        .flat_map(|i| [format!("a{i}"), format!("b{i}")])
        .collect();
    let refs: Vec<&str> = old_ids.iter().map(|s| s.as_str()).collect();
    // Restricted to the old documents both times: a filtered search takes its own (exhaustive)
    // path for small allowed sets, so it is compared with itself, not with an unfiltered search.
    let before = ix.search(&[&q], 10, Some(1), Some(&refs)).expect("search");
    add(&ix, "c", 1, 6);
    ix.commit().expect("commit");
    let new = current_manifest(&dir);
    let named: Vec<String> = new
        .index_files
        .iter()
        .chain(new.segments.iter().flat_map(|s| s.side_files.iter()))
        .map(|(_, f)| f.clone())
        .collect();
    assert!(named.len() >= 4, "{named:?}");
    for f in &named {
        let b = std::fs::read(dir.join(f)).expect("read");
        let trailer = u32::from_le_bytes(b[b.len() - 4..].try_into().expect("4 bytes"));
        assert_eq!(new.checksums.get(f), Some(&trailer), "{f}");
    }
    assert_eq!(new.checksums.len(), named.len(), "no stale checksums kept");
    let after = ix.search(&[&q], 10, Some(1), Some(&refs)).expect("search");
    assert_eq!(
        &after.ids[..],
        &before.ids[..],
        "the old documents rank as before"
    );
    drop(ix);
    // Now bound: one segment's lists copied over another's are refused.
    let ivfs: Vec<&String> = named.iter().filter(|f| f.contains(".ivf-")).collect();
    std::fs::copy(dir.join(ivfs[0]), dir.join(ivfs[1])).expect("copy");
    let e = Index::open(&dir, OpenMode::Read)
        .and_then(|ix| ix.search(&[&q], 10, Some(1), None))
        .expect_err("a replaced file");
    assert!(
        matches!(&e, LatixError::Corrupted { path, .. } if path.ends_with(ivfs[1])),
        "{e}"
    );
}
