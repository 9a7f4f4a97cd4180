//! Helpers shared by the fuzz targets: a per-process scratch directory, and "fix-ups" that
//! recompute the checksums of a mutated file. Checksums stop almost every random mutation at the
//! first check; fixing them up (when the input's first byte says so) lets the fuzzer reach the
//! structural validation behind them: offsets, lengths, counts, cross-file consistency.
//!
//! To fuzz a new on-disk structure (e.g. a PQ codebook or IVF lists), add a target in
//! `fuzz_targets/` that calls its public decoder on the bytes (and on `fixup_*`-ed bytes if it
//! has checksums), a `[[bin]]` entry in Cargo.toml, and seeds in `scripts/hardening/fuzz.sh`.

use std::path::PathBuf;

/// Layout constants of segment files (see latix-core `store/segment.rs`).
pub const SEG_HEADER: usize = 256;
const SEG_SECTIONS: usize = 6;
const SEG_HEADER_CRC_AT: usize = 48 + SEG_SECTIONS * 24;

fn le_u64(b: &[u8], at: usize) -> u64 {
    let mut a = [0u8; 8];
    a.copy_from_slice(&b[at..at + 8]);
    u64::from_le_bytes(a)
}

/// A scratch directory private to this fuzzing process, emptied.
pub fn scratch_dir() -> PathBuf {
    // /dev/shm when available: these targets write a file per input, keep that off the disk.
    let shm = std::path::Path::new("/dev/shm");
    let base = if shm.is_dir() {
        shm.to_path_buf()
    } else {
        std::env::temp_dir()
    };
    let d = base.join(format!("latix-fuzz-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).expect("cannot create the fuzz scratch directory");
    d
}

/// Recomputes a manifest's trailing crc32c.
pub fn fixup_manifest(b: &mut [u8]) {
    if b.len() >= 16 {
        let n = b.len() - 4;
        let crc = crc32c::crc32c(&b[..n]);
        b[n..].copy_from_slice(&crc.to_le_bytes());
    }
}

/// Recomputes a segment's vector block checksums, section checksums and header checksum
/// (whatever of them lies inside the file).
pub fn fixup_segment(b: &mut [u8]) {
    if b.len() < SEG_HEADER {
        return;
    }
    let sec = |b: &[u8], i: usize| -> Option<(usize, usize)> {
        let at = 48 + i * 24;
        let (o, l) = (le_u64(b, at), le_u64(b, at + 8));
        let end = o.checked_add(l)?;
        (end <= b.len() as u64).then_some((o as usize, end as usize))
    };
    let block = le_u64(b, 40);
    if let (Some((vo, ve)), Some((co, ce)), true) = (sec(b, 0), sec(b, 5), block > 0) {
        let block = block.min(1 << 30) as usize;
        let n = ((ce - co) / 4).min((ve - vo).div_ceil(block));
        for j in 0..n {
            let lo = vo + j * block;
            let hi = (lo + block).min(ve);
            let crc = crc32c::crc32c(&b[lo..hi]);
            if ce <= vo || co >= ve {
                b[co + 4 * j..co + 4 * j + 4].copy_from_slice(&crc.to_le_bytes());
            }
        }
    }
    for i in 1..SEG_SECTIONS {
        if let Some((o, e)) = sec(b, i) {
            let crc = crc32c::crc32c(&b[o..e]);
            let at = 48 + i * 24 + 16;
            b[at..at + 4].copy_from_slice(&crc.to_le_bytes());
        }
    }
    let crc = crc32c::crc32c(&b[..SEG_HEADER_CRC_AT]);
    b[SEG_HEADER_CRC_AT..SEG_HEADER_CRC_AT + 4].copy_from_slice(&crc.to_le_bytes());
}

/// The header checksum a segment carries (what a manifest must record for it).
pub fn segment_header_crc(b: &[u8]) -> Option<u32> {
    let s = b.get(SEG_HEADER_CRC_AT..SEG_HEADER_CRC_AT + 4)?;
    Some(u32::from_le_bytes([s[0], s[1], s[2], s[3]]))
}
