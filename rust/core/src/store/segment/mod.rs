//! Segment files: one immutable file per commit holding documents' token vectors (CSR layout:
//! a flat `(n_tokens, dim)` array plus `n_docs + 1` token offsets), their external string ids and
//! a sorted permutation of the ids for binary-search lookup straight on the map.
//!
//! Layout (all integers little-endian, every section 64-byte aligned):
//! ```text
//! 0    magic "LATIXSEG", format version u32, dtype u32, dim u32, flags u32,
//!      n_docs u64, n_tokens u64, vector checksum block size u64,
//! 48   6 section descriptors (offset u64, length u64, crc32c u32, reserved u32):
//!      vectors, offsets, id offsets, id bytes, sorted ids, vector block checksums
//! 192  crc32c of bytes 0..192; zero padding to 256
//! 256  vectors section, then the others in descriptor order
//! ```
//! The vectors section carries no whole-section checksum: it is covered by one crc32c per
//! `block_size` bytes (the last section), so a verifier can check it lazily, block by block,
//! without reading gigabytes at open. All other sections are small and verified at open.
//! Every read of vector rows through [`Segment::rows_checked`] verifies the blocks it touches the
//! first time they are touched (a bitmap of verified blocks, atomics, so concurrent searches share
//! the work and pay one bit test per block afterwards): damaged vectors surface as `Corrupted`,
//! never as silently wrong scores.
//!
//! Version 2 adds one flag, [`FLAG_NO_VECTORS`]: a *vector-free* segment (a compressed index that
//! keeps only codes) has empty vectors and block-checksum sections and holds ids and offsets only.
//! Version-1 files (flags 0) are still read; vector-bearing segments are still written as version 1.
//!
//! Files: this one holds the format (constants, section table, header encoding, block
//! checksums); `writer` builds segments, `reader` maps and validates them.

mod reader;
#[cfg(test)]
mod tests;
mod writer;

pub use reader::Segment;
pub use writer::{check_storable, SegmentCheckpoint, SegmentWriter};

use crate::store::Dtype;

/// Magic bytes at the start of every segment file.
pub const SEGMENT_MAGIC: &[u8; 8] = b"LATIXSEG";
/// Format version of segments that store vectors (also the oldest version read).
pub const SEGMENT_VERSION: u32 = 1;
/// Format version of vector-free segments (flag [`FLAG_NO_VECTORS`] set, no vector data).
pub const SEGMENT_VERSION_NO_VECTORS: u32 = 2;
/// Header flag: the segment stores no vector data (ids and token offsets only).
pub const FLAG_NO_VECTORS: u32 = 1;
/// Size of the fixed header; the vectors section starts here.
pub const HEADER_SIZE: usize = 256;
/// Bytes of vector data covered by one block checksum.
pub const VECTOR_BLOCK_SIZE: u64 = 1 << 20;
/// Values a [`SegmentWriter`] converts and writes at a time (256 KiB of f32).
const WRITE_CHUNK_VALUES: usize = 1 << 16;

/// Number of section descriptors in the header.
pub const N_SECTIONS: usize = 6;
/// Byte offset of the first section descriptor in the header.
pub const SECTIONS_AT: usize = 48;
/// Bytes of one section descriptor (offset u64, length u64, crc32c u32, reserved u32).
pub const SECTION_DESC_LEN: usize = 24;
/// Byte offset of the vector checksum block size (u64) in the header.
pub const BLOCK_SIZE_AT: usize = 40;
/// Index of the vectors section among the descriptors.
pub const SEC_VECTORS: usize = 0;
const SEC_OFFSETS: usize = 1;
const SEC_ID_OFFSETS: usize = 2;
const SEC_ID_BYTES: usize = 3;
const SEC_SORTED: usize = 4;
/// Index of the vector block checksums section among the descriptors.
pub const SEC_BLOCK_CRCS: usize = 5;
const SECTION_NAMES: [&str; N_SECTIONS] = [
    "vectors",
    "offsets",
    "id offsets",
    "id bytes",
    "sorted ids",
    "block checksums",
];
/// Byte offset of the header's crc32c (of the bytes before it).
pub const HEADER_CRC_AT: usize = SECTIONS_AT + N_SECTIONS * SECTION_DESC_LEN;

#[derive(Clone, Copy, Debug, Default)]
struct Section {
    offset: u64,
    len: u64,
    crc: u32,
}

/// Running crc32c over fixed-size blocks of a byte stream.
#[derive(Clone, Debug)]
struct BlockCrc {
    block: u64,
    fill: u64,
    cur: u32,
    done: Vec<u32>,
}

impl BlockCrc {
    fn new(block: u64) -> Self {
        BlockCrc {
            block,
            fill: 0,
            cur: 0,
            done: Vec::new(),
        }
    }

    fn update(&mut self, mut bytes: &[u8]) {
        while !bytes.is_empty() {
            let take = ((self.block - self.fill) as usize).min(bytes.len());
            self.cur = crc32c::crc32c_append(self.cur, &bytes[..take]);
            self.fill += take as u64;
            bytes = &bytes[take..];
            if self.fill == self.block {
                self.done.push(self.cur);
                self.cur = 0;
                self.fill = 0;
            }
        }
    }

    fn finish(mut self) -> Vec<u32> {
        if self.fill > 0 {
            self.done.push(self.cur);
        }
        self.done
    }
}

fn encode_header(
    no_vectors: bool,
    dtype: Dtype,
    dim: u32,
    n_docs: u64,
    n_tokens: u64,
    block: u64,
    sections: &[Section; N_SECTIONS],
) -> [u8; HEADER_SIZE] {
    let mut h = [0u8; HEADER_SIZE];
    let (version, flags) = if no_vectors {
        (SEGMENT_VERSION_NO_VECTORS, FLAG_NO_VECTORS)
    } else {
        (SEGMENT_VERSION, 0)
    };
    format::write_header(&mut h, SEGMENT_MAGIC, &[version, dtype.code(), dim, flags]);
    h[24..32].copy_from_slice(&n_docs.to_le_bytes());
    h[32..40].copy_from_slice(&n_tokens.to_le_bytes());
    h[BLOCK_SIZE_AT..BLOCK_SIZE_AT + 8].copy_from_slice(&block.to_le_bytes());
    for (i, s) in sections.iter().enumerate() {
        let at = SECTIONS_AT + i * SECTION_DESC_LEN;
        h[at..at + 8].copy_from_slice(&s.offset.to_le_bytes());
        h[at + 8..at + 16].copy_from_slice(&s.len.to_le_bytes());
        h[at + 16..at + 20].copy_from_slice(&s.crc.to_le_bytes());
    }
    let crc = crc32c::crc32c(&h[..HEADER_CRC_AT]);
    h[HEADER_CRC_AT..HEADER_CRC_AT + 4].copy_from_slice(&crc.to_le_bytes());
    h
}

use crate::format::{self, le_u32, le_u64};
