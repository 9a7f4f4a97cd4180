//! Helpers shared by the fuzz targets: a per-process scratch directory, and "fix-ups" that
//! recompute the checksums of a mutated file. Checksums stop almost every random mutation at the
//! first check; fixing them up (when the input's first byte says so) lets the fuzzer reach the
//! structural validation behind them: offsets, lengths, counts, cross-file consistency.
//!
//! To fuzz a new on-disk structure (e.g. a PQ codebook or IVF lists), add a target in
//! `fuzz_targets/` that calls its public decoder on the bytes (and on `fixup_*`-ed bytes if it
//! has checksums), a `[[bin]]` entry in Cargo.toml, and seeds in `scripts/hardening/fuzz.sh`.

use std::path::PathBuf;

use latix_core::format::{self, le_u64};
// Segment layout: the core's own constants, never copies.
use latix_core::store::segment::{
    BLOCK_SIZE_AT, HEADER_CRC_AT, HEADER_SIZE, N_SECTIONS, SECTIONS_AT, SECTION_DESC_LEN,
    SEC_BLOCK_CRCS, SEC_VECTORS,
};

/// Splits a fuzz input into its mode byte and the file bytes; when bit 0 of the mode is set, the
/// file's trailing crc32c is recomputed ([`format::reseal`]) so that the structural validation
/// behind the checksum is reached. `None` for an empty input. (The input convention of every
/// target over a file sealed with a trailing checksum: codec, compression config, manifest,
/// inverted lists, refinement files.)
pub fn sealed_input(data: &[u8]) -> Option<(u8, Vec<u8>)> {
    let (&mode, rest) = data.split_first()?;
    let mut b = rest.to_vec();
    if mode & 1 == 1 {
        format::reseal(&mut b);
    }
    Some((mode, b))
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
    format::reseal(b);
}

/// Recomputes a segment's vector block checksums, section checksums and header checksum
/// (whatever of them lies inside the file).
pub fn fixup_segment(b: &mut [u8]) {
    if b.len() < HEADER_SIZE {
        return;
    }
    let sec = |b: &[u8], i: usize| -> Option<(usize, usize)> {
        let at = SECTIONS_AT + i * SECTION_DESC_LEN;
        let (o, l) = (le_u64(b, at), le_u64(b, at + 8));
        let end = o.checked_add(l)?;
        (end <= b.len() as u64).then_some((o as usize, end as usize))
    };
    let block = le_u64(b, BLOCK_SIZE_AT);
    let (vectors, crcs) = (sec(b, SEC_VECTORS), sec(b, SEC_BLOCK_CRCS));
    if let (Some((vo, ve)), Some((co, ce)), true) = (vectors, crcs, block > 0) {
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
    for i in (0..N_SECTIONS).filter(|&i| i != SEC_VECTORS) {
        if let Some((o, e)) = sec(b, i) {
            let crc = crc32c::crc32c(&b[o..e]);
            let at = SECTIONS_AT + i * SECTION_DESC_LEN + 16;
            b[at..at + 4].copy_from_slice(&crc.to_le_bytes());
        }
    }
    let crc = crc32c::crc32c(&b[..HEADER_CRC_AT]);
    b[HEADER_CRC_AT..HEADER_CRC_AT + 4].copy_from_slice(&crc.to_le_bytes());
}

/// The header checksum a segment carries (what a manifest must record for it).
pub fn segment_header_crc(b: &[u8]) -> Option<u32> {
    b.get(HEADER_CRC_AT..HEADER_CRC_AT + 4)
        .map(|s| format::le_u32(s, 0))
}
