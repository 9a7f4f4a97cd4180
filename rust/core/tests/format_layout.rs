//! The on-disk bytes of every latix file format, checked against layouts written out here by
//! hand with literal offsets (the layouts latix wrote before its formats shared `format.rs`):
//! what latix writes is byte for byte what the old layout says, and what the old layout says is
//! read back to the same values. An independent reference: nothing here uses the core's encoders
//! or constants to build the expected bytes.

mod common;

use std::path::Path;

use latix_core::compressed::kmeans::Rng;
use latix_core::compressed::{Codec, Compression, FidSegment, Fidelity, IvfSegment};
use latix_core::maxsim::DocVectors;
use latix_core::store::{Manifest, SegmentEntry};
use latix_core::{Dtype, Index};

fn crc(b: &[u8]) -> u32 {
    crc32c::crc32c(b)
}

fn u32_at(b: &[u8], at: usize) -> u32 {
    u32::from_le_bytes(b[at..at + 4].try_into().expect("4 bytes"))
}

fn u64_at(b: &[u8], at: usize) -> u64 {
    u64::from_le_bytes(b[at..at + 8].try_into().expect("8 bytes"))
}

fn sealed(mut b: Vec<u8>) -> Vec<u8> {
    let c = crc(&b);
    b.extend_from_slice(&c.to_le_bytes());
    b
}

/// The compression configuration by hand: "LTXCOMPR", version, then the fields at fixed offsets.
fn config_bytes(c: &Compression, version: u32, fid_code: u32) -> Vec<u8> {
    let mut b = b"LTXCOMPR".to_vec();
    b.extend_from_slice(&version.to_le_bytes());
    b.extend_from_slice(&(c.bytes_per_token.unwrap_or(0) as u32).to_le_bytes()); // 12
    b.extend_from_slice(&(c.n_centroids.unwrap_or(0) as u32).to_le_bytes()); // 16
    b.extend_from_slice(&(c.keep_vectors as u32).to_le_bytes()); // 20
    b.extend_from_slice(&c.train_min_tokens.to_le_bytes()); // 24
    b.extend_from_slice(&c.train_sample_tokens.to_le_bytes()); // 32
    b.extend_from_slice(&c.seed.to_le_bytes()); // 40
    if version >= 2 {
        b.extend_from_slice(&(c.pool_factor as u32).to_le_bytes()); // 48
    }
    if version >= 3 {
        b.extend_from_slice(&fid_code.to_le_bytes()); // 52
    }
    sealed(b)
}

#[test]
fn compression_config_bytes_match_the_layout() {
    let mut rng = Rng::new(11);
    let tiers = [
        (Fidelity::Codes, 0u32),
        (Fidelity::Balanced, 1),
        (Fidelity::High, 2),
    ];
    for case in 0..60 {
        let (fidelity, code) = tiers[case % 3];
        let r = |rng: &mut Rng, m: u64| rng.next_u64() % m;
        let c = Compression {
            bytes_per_token: (case % 2 == 0).then(|| 2 * (1 + r(&mut rng, 64) as usize)),
            n_centroids: (case % 4 != 1).then(|| 1 + r(&mut rng, 1 << 16) as usize),
            keep_vectors: r(&mut rng, 2) == 1,
            train_min_tokens: rng.next_u64() >> r(&mut rng, 64),
            train_sample_tokens: rng.next_u64(),
            seed: rng.next_u64(),
            pool_factor: 1 + r(&mut rng, 4) as usize,
            fidelity,
            ..Default::default()
        };
        let version = if fidelity == Fidelity::Codes { 2 } else { 3 };
        let want = config_bytes(&c, version, code);
        assert_eq!(c.encode(), want, "case {case}");
        let back = Compression::decode(&want, Path::new("c")).expect("decode");
        assert_eq!(back, c, "case {case}");
        // Version 1 (no pool factor, read as 1; no tier).
        let v1 = config_bytes(&c, 1, 0);
        let back = Compression::decode(&v1, Path::new("c")).expect("decode v1");
        assert_eq!(back.pool_factor, 1);
        assert_eq!(back.fidelity, Fidelity::Codes);
        assert_eq!(back.seed, c.seed);
    }
}

fn put_str(b: &mut Vec<u8>, s: &str) {
    b.extend_from_slice(&(s.len() as u32).to_le_bytes());
    b.extend_from_slice(s.as_bytes());
}

fn put_files(b: &mut Vec<u8>, files: &[(String, String)], crcs: Option<&Manifest>) {
    b.extend_from_slice(&(files.len() as u32).to_le_bytes());
    for (name, file) in files {
        put_str(b, name);
        put_str(b, file);
        if let Some(m) = crcs {
            b.extend_from_slice(&m.checksums[file].to_le_bytes());
        }
    }
}

/// The manifest by hand: "LATIXMAN", version, dim, dtype, generation, next segment id, index
/// files, segments (file, counts, header crc, side files, tombstones), crc.
fn manifest_bytes(m: &Manifest, version: u32, dtype_code: u32) -> Vec<u8> {
    let crcs = (version == 2).then_some(m);
    let mut b = b"LATIXMAN".to_vec();
    b.extend_from_slice(&version.to_le_bytes());
    b.extend_from_slice(&(m.dim as u32).to_le_bytes());
    b.extend_from_slice(&dtype_code.to_le_bytes());
    b.extend_from_slice(&m.generation.to_le_bytes());
    b.extend_from_slice(&m.next_segment_id.to_le_bytes());
    put_files(&mut b, &m.index_files, crcs);
    b.extend_from_slice(&(m.segments.len() as u32).to_le_bytes());
    for s in &m.segments {
        put_str(&mut b, &s.file);
        b.extend_from_slice(&s.n_docs.to_le_bytes());
        b.extend_from_slice(&s.n_tokens.to_le_bytes());
        b.extend_from_slice(&s.header_crc.to_le_bytes());
        put_files(&mut b, &s.side_files, crcs);
        b.extend_from_slice(&(s.tombstones.len() as u64).to_le_bytes());
        for t in s.tombstones.iter() {
            b.extend_from_slice(&t.to_le_bytes());
        }
    }
    sealed(b)
}

#[test]
fn manifest_bytes_match_the_layout() {
    let mut rng = Rng::new(5);
    for case in 0..40u64 {
        let n_seg = (rng.next_u64() % 5) as usize;
        let mut m = Manifest {
            dim: 1 + (rng.next_u64() % 512) as usize,
            dtype: if case % 2 == 0 {
                Dtype::F16
            } else {
                Dtype::F32
            },
            generation: 1 + case,
            next_segment_id: 1 + n_seg as u64 + rng.next_u64() % 100,
            index_files: Vec::new(),
            segments: Vec::new(),
            checksums: Default::default(),
        };
        if case % 3 != 0 {
            for what in ["codec", "compression"] {
                let file = format!("idx-{what}-{:020}", case);
                m.checksums.insert(file.clone(), rng.next_u64() as u32);
                m.index_files.push((what.to_string(), file));
            }
        }
        for s in 0..n_seg {
            let file = format!("seg-{s:010}.lxs");
            let n_docs = 1 + rng.next_u64() % 50;
            let mut tomb: Vec<u32> = (0..n_docs as u32)
                .filter(|_| rng.next_u64().is_multiple_of(4))
                .collect();
            tomb.dedup();
            let mut side_files = Vec::new();
            if case % 3 != 0 {
                let side = format!("{file}.ivf-{case:020}");
                m.checksums.insert(side.clone(), rng.next_u64() as u32);
                side_files.push(("ivf".to_string(), side));
            }
            m.segments.push(SegmentEntry {
                file,
                n_docs,
                n_tokens: n_docs * (1 + rng.next_u64() % 30),
                header_crc: rng.next_u64() as u32,
                side_files,
                tombstones: std::sync::Arc::new(tomb),
            });
        }
        let code = if m.dtype == Dtype::F16 { 1 } else { 2 };
        let want = manifest_bytes(&m, 2, code);
        assert_eq!(m.encode(), want, "case {case}");
        let back = Manifest::decode(&want, Path::new("MANIFEST-x")).expect("decode");
        assert_eq!(back.encode(), want, "case {case}");
        assert_eq!(back.checksums, m.checksums);
        let want1 = manifest_bytes(&m, 1, code);
        assert_eq!(m.encode_v1(), want1, "case {case} (version 1)");
        let back = Manifest::decode(&want1, Path::new("MANIFEST-x")).expect("decode v1");
        assert!(back.checksums.is_empty());
        assert_eq!(back.encode_v1(), want1);
    }
}

/// A random valid codec by hand: "LTXCODEC", version 2, dim, K, G, M, ksub 16, eta bits, group
/// offsets, top centroids (f32), leaf centroids (f16), codebooks (f32), crc.
fn codec_bytes(rng: &mut Rng, dim: usize, k: usize, g: usize, m: usize) -> Vec<u8> {
    let mut b = b"LTXCODEC".to_vec();
    let eta = 1.0f32 + (rng.next_u64() % 100) as f32 / 10.0;
    for v in [
        2u32,
        dim as u32,
        k as u32,
        g as u32,
        m as u32,
        16,
        eta.to_bits(),
    ] {
        b.extend_from_slice(&v.to_le_bytes());
    }
    // Strictly increasing group offsets from 0 to K.
    let mut off: Vec<u32> = vec![0];
    for i in 1..g {
        let lo = *off.last().expect("offset") + 1;
        let hi = (k - (g - i)) as u32;
        off.push(lo + (rng.next_u64() % (hi - lo + 1) as u64) as u32);
    }
    off.push(k as u32);
    for v in off {
        b.extend_from_slice(&v.to_le_bytes());
    }
    let val = |rng: &mut Rng| ((rng.next_u64() % 2001) as f32 - 1000.0) / 256.0;
    for _ in 0..g * dim {
        b.extend_from_slice(&val(rng).to_le_bytes());
    }
    for _ in 0..k * dim {
        // Exactly representable in f16 (11 significant bits at most).
        let v = half::f16::from_f32(val(rng));
        b.extend_from_slice(&v.to_bits().to_le_bytes());
    }
    for _ in 0..16 * dim {
        b.extend_from_slice(&val(rng).to_le_bytes());
    }
    sealed(b)
}

#[test]
fn codec_bytes_match_the_layout() {
    let mut rng = Rng::new(3);
    for (dim, k, g, m) in [
        (8, 4, 1, 2),
        (16, 32, 4, 8),
        (33, 17, 17, 10),
        (64, 200, 9, 32),
    ] {
        let want = codec_bytes(&mut rng, dim, k, g, m);
        let c = Codec::from_bytes(&want, Path::new("codec")).expect("codec");
        assert_eq!((c.dim(), c.n_centroids(), c.n_subspaces()), (dim, k, m));
        assert_eq!(c.to_bytes(), want, "dim {dim} K {k}");
    }
}

/// Checks the headers of every file of a real index (exact segments, and a compressed index of a
/// fidelity tier: codec, configuration, inverted lists, refinement files, vector-free segments)
/// at the layouts' literal offsets, and every checksum where the layout puts it.
#[test]
fn files_of_an_index_match_the_layouts() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut data = common::Data::new(9, 32, 20, 0.3);
    let docs = data.docs(300);
    let ids: Vec<String> = (0..docs.len()).map(|i| format!("d{i}")).collect();
    let refs: Vec<&str> = ids.iter().map(|s| s.as_str()).collect();
    let dv: Vec<DocVectors<'_>> = docs.iter().map(|d| DocVectors::F32(d)).collect();
    let comp = Compression {
        bytes_per_token: Some(8),
        n_centroids: Some(16),
        keep_vectors: false,
        train_min_tokens: 500,
        train_sample_tokens: 2000,
        seed: 1,
        pool_factor: 1,
        fidelity: Fidelity::Balanced,
        ..Default::default()
    };
    for (name, c) in [("exact", None), ("tier", Some(comp.clone()))] {
        let p = dir.path().join(name);
        let ix = Index::create_with(&p, 32, Dtype::F32, c).expect("create");
        ix.add(&refs, &dv, false).expect("add");
        ix.commit().expect("commit");
        drop(ix);
        let mut seen = [0usize; 5];
        for f in common::files(&p, "") {
            let b = std::fs::read(p.join(&f)).expect("read");
            if f.ends_with(".lxs") {
                seen[0] += 1;
                assert_eq!(&b[..8], b"LATIXSEG");
                let (version, flags) = (u32_at(&b, 8), u32_at(&b, 20));
                assert_eq!(
                    (version, flags),
                    if name == "exact" { (1, 0) } else { (2, 1) }
                );
                assert_eq!((u32_at(&b, 12), u32_at(&b, 16)), (2, 32), "dtype f32, dim");
                assert_eq!(u64_at(&b, 24), docs.len() as u64);
                assert_eq!(u64_at(&b, 40), 1 << 20, "vector block size");
                assert_eq!(u32_at(&b, 192), crc(&b[..192]), "header crc at 192");
                assert!(b[196..256].iter().all(|&x| x == 0));
                for i in 1..6 {
                    let at = 48 + 24 * i;
                    let (o, l) = (u64_at(&b, at) as usize, u64_at(&b, at + 8) as usize);
                    assert_eq!(o % 64, 0);
                    assert_eq!(u32_at(&b, at + 16), crc(&b[o..o + l]), "section {i}");
                }
                continue;
            }
            let is_sealed = f.starts_with("MANIFEST-")
                || f.starts_with("idx-")
                || f.contains(".ivf-")
                || f.contains(".fid-");
            if is_sealed {
                let n = b.len() - 4;
                assert_eq!(u32_at(&b, n), crc(&b[..n]), "{f}: trailing crc");
            }
            if f.starts_with("idx-codec-") {
                seen[1] += 1;
                assert_eq!((&b[..8], u32_at(&b, 8)), (&b"LTXCODEC"[..], 2));
                assert_eq!((u32_at(&b, 12), u32_at(&b, 16)), (32, 16), "dim, K");
                assert_eq!(u32_at(&b, 28), 16, "ksub");
            } else if f.starts_with("idx-compression-") {
                seen[2] += 1;
                assert_eq!(b, config_bytes(&comp, 3, 1));
            } else if f.contains(".ivf-") {
                seen[3] += 1;
                assert_eq!((&b[..8], u32_at(&b, 8)), (&b"LTXIVFSG"[..], 5));
                let seg = IvfSegment::from_bytes(&b, true).expect("ivf");
                let head = [16, seg.n_subspaces(), docs.len(), seg.n_tokens()];
                for (i, v) in head.iter().enumerate() {
                    assert_eq!(u32_at(&b, 12 + 4 * i) as usize, *v, "ivf field {i}");
                }
                assert_eq!(u32_at(&b, 32), seg.codec_checksum());
                let lay = common::v4_layout(&seg);
                assert_eq!(b.len(), lay[6] + seg.codes().len() + 4);
            } else if f.contains(".fid-") {
                seen[4] += 1;
                // Version 2 (the second residual stage): its bit count at byte 48, 0 for the
                // balanced tier written here, whose layout is otherwise version 1's.
                assert_eq!((&b[..8], u32_at(&b, 8)), (&b"LTXFIDSG"[..], 2));
                assert_eq!(u32_at(&b, 48), 0, "balanced tier: no second stage");
                let seg = FidSegment::from_bytes(&b, true).expect("fid");
                assert_eq!(u32_at(&b, 12) as usize, seg.dim());
                assert_eq!(u32_at(&b, 24) as usize, seg.n_centroids());
                assert_eq!(u64_at(&b, 32) as usize, seg.n_tokens());
            } else if f.starts_with("MANIFEST-") {
                assert_eq!((&b[..8], u32_at(&b, 8)), (&b"LATIXMAN"[..], 2));
            }
        }
        let want = if name == "exact" {
            [1, 0, 0, 0, 0]
        } else {
            [1, 1, 1, 1, 1]
        };
        assert_eq!(seen, want, "{name}: files found");
    }
}
