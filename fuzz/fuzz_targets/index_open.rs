//! Fuzzes a whole index directory: a manifest plus one segment file, both fuzzed (checksums
//! optionally fixed up, the manifest's segment header checksums optionally made to agree), then
//! `Index::open` and every read path: len, ids, get, search, verify. Cross-file inconsistencies
//! (counts, tombstones, dims) must be errors, never panics or out-of-bounds reads.
//!
//! Input: mode byte, manifest length (u16 LE), manifest bytes, segment bytes.
#![no_main]

use latix_core::index::{Index, OpenMode};
use latix_core::store::Manifest;
use libfuzzer_sys::fuzz_target;
use std::path::Path;
use std::sync::OnceLock;

static DIR: OnceLock<std::path::PathBuf> = OnceLock::new();

fuzz_target!(|data: &[u8]| {
    if data.len() < 3 {
        return;
    }
    let mode = data[0];
    let mlen = (u16::from_le_bytes([data[1], data[2]]) as usize).min(data.len() - 3);
    let mut man = data[3..3 + mlen].to_vec();
    let mut seg = data[3 + mlen..].to_vec();
    if mode & 1 == 1 {
        latix_fuzz::fixup_segment(&mut seg);
        latix_fuzz::fixup_manifest(&mut man);
    }
    let mut generation = 0;
    if let Ok(mut m) = Manifest::decode(&man, Path::new("m")) {
        generation = m.generation;
        if mode & 2 == 2 {
            if let Some(crc) = latix_fuzz::segment_header_crc(&seg) {
                for s in m.segments.iter_mut() {
                    s.header_crc = crc;
                }
                man = m.encode();
            }
        }
    }
    let dir = DIR.get_or_init(latix_fuzz::scratch_dir);
    let _ = std::fs::remove_dir_all(dir);
    if std::fs::create_dir_all(dir).is_err() {
        return;
    }
    let name = format!("MANIFEST-{generation:020}");
    let ok = std::fs::write(dir.join(&name), &man).is_ok()
        && std::fs::write(dir.join("seg-0000000000.lxs"), &seg).is_ok()
        && std::fs::write(dir.join("CURRENT"), format!("{name}\n")).is_ok();
    if !ok {
        return;
    }
    let Ok(ix) = Index::open(dir, OpenMode::Read) else {
        return;
    };
    let _ = ix.len();
    let _ = ix.num_tokens();
    if let Ok(ids) = ix.ids() {
        for id in ids.iter().take(64) {
            let _ = ix.contains(id);
            let _ = ix.get(id);
        }
        if ix.dim() <= 1024 {
            let q = vec![0.5f32; ix.dim() * 2];
            let subset: Vec<&str> = ids.iter().take(8).map(|s| s.as_str()).collect();
            let _ = ix.search(&[&q], 5, Some(1), None);
            let _ = ix.search(&[&q], 3, Some(1), Some(&subset));
        }
    }
    let _ = ix.verify();
});
