//! Per-segment inverted lists over coarse centroids, stored as compressed tokens.
//!
//! WARP-style layout (Scheerer et al., "WARP: An Efficient Engine for Multi-Vector Retrieval",
//! SIGIR 2025): the tokens of a segment are grouped by coarse centroid; each list holds, for every
//! token, the segment-local document number (u32) and its residual codes, the codes laid out in
//! 32-token blocks for [`super::fastscan`]. Search probes a few lists per query token and scores
//! their tokens straight from codes; no per-document token table is needed, so a segment is a
//! single immutable file that fits the store's append-only segments (new documents are encoded
//! with the existing codec into the new segment's file).
//!
//! File format (little endian): a 64-byte header (magic `LTXIVFSG`, version, K, M, n_docs,
//! n_tokens, n_blocks, codec checksum), then 64-byte-aligned sections `list_tokens` (K+1 u32, token
//! offsets of each list), `list_blocks` (K+1 u32, block offsets), `doc_of_token` (n_tokens u32) and
//! `codes` (n_blocks * M * 16 bytes), then a CRC32C of everything before it.

use std::path::Path;

use rayon::prelude::*;

use super::codec::Codec;
use super::fastscan::{pack_block, BLOCK};
use crate::error::{LatixError, Result};
use crate::maxsim::DocVectors;

const MAGIC: &[u8; 8] = b"LTXIVFSG";
const VERSION: u32 = 1;
const HEADER: usize = 64;

fn align64(x: usize) -> usize {
    x.div_ceil(64) * 64
}

/// Byte storage of a segment: built in memory (8-byte aligned) or memory-mapped.
enum Bytes {
    Owned(Vec<u64>, usize),
    Mapped(memmap2::Mmap),
}

impl Bytes {
    fn as_slice(&self) -> &[u8] {
        match self {
            Bytes::Owned(v, len) => &bytemuck::cast_slice::<u64, u8>(v)[..*len],
            Bytes::Mapped(m) => m,
        }
    }
}

/// One segment's inverted lists (see module docs). Immutable.
pub struct IvfSegment {
    bytes: Bytes,
    k: usize,
    m: usize,
    n_docs: usize,
    n_tokens: usize,
    codec_crc: u32,
    sec: [(usize, usize); 4],
}

/// Checksum identifying a codec, stored in every segment built with it.
pub fn codec_checksum(codec_bytes: &[u8]) -> u32 {
    crc32c::crc32c(codec_bytes)
}

impl IvfSegment {
    /// Encodes documents `offsets[i]..offsets[i+1]` of `vectors` (`dim`-wide rows) with `codec` and
    /// builds the segment's lists. `codec_crc` is [`codec_checksum`] of the codec's bytes. Runs in the
    /// current rayon pool; inputs must be valid (offsets non-decreasing, within `vectors`).
    pub fn build(
        codec: &Codec,
        codec_crc: u32,
        vectors: DocVectors<'_>,
        offsets: &[u64],
    ) -> Result<IvfSegment> {
        let dim = codec.dim();
        if !vectors.len().is_multiple_of(dim) {
            return Err(LatixError::invalid(format!(
                "vectors have dim {}, the codec has dim {dim}",
                vectors.len()
            )));
        }
        let n_docs = offsets.len().saturating_sub(1);
        let n_tokens = offsets.last().copied().unwrap_or(0) as usize;
        if n_tokens > vectors.len() / dim
            || offsets.windows(2).any(|w| w[1] < w[0])
            || offsets.first().copied().unwrap_or(0) != 0
        {
            return Err(LatixError::invalid(
                "offsets must start at 0, be non-decreasing and stay within the vectors",
            ));
        }
        if n_tokens >= u32::MAX as usize || n_docs >= u32::MAX as usize {
            return Err(LatixError::invalid(
                "a segment holds fewer than 2^32 tokens",
            ));
        }
        let m = codec.n_subspaces();
        let bpt = m / 2;
        let k = codec.n_centroids();
        // Encode in chunks so f16 input is converted to f32 a piece at a time.
        const CHUNK: usize = 65536;
        let mut cids = Vec::with_capacity(n_tokens);
        let mut codes = Vec::with_capacity(n_tokens * bpt);
        let mut buf = Vec::new();
        let mut t0 = 0;
        while t0 < n_tokens {
            let t1 = (t0 + CHUNK).min(n_tokens);
            let x: &[f32] = match vectors {
                DocVectors::F32(v) => &v[t0 * dim..t1 * dim],
                DocVectors::F16(v) => {
                    buf.clear();
                    buf.extend(v[t0 * dim..t1 * dim].iter().map(|h| h.to_f32()));
                    &buf
                }
            };
            if let Some(pos) = x.iter().position(|v| !v.is_finite()) {
                return Err(LatixError::invalid(format!(
                    "token vector {} contains a non-finite value",
                    t0 + pos / dim
                )));
            }
            let (c, cd) = codec.encode(x);
            cids.extend_from_slice(&c);
            codes.extend_from_slice(&cd);
            t0 = t1;
        }
        // Counting sort of tokens by centroid (stable: document order inside a list).
        let mut list_tokens = vec![0u32; k + 1];
        for &c in &cids {
            list_tokens[c as usize + 1] += 1;
        }
        let mut list_blocks = vec![0u32; k + 1];
        for c in 0..k {
            let len = list_tokens[c + 1];
            list_tokens[c + 1] += list_tokens[c];
            list_blocks[c + 1] = list_blocks[c] + (len as usize).div_ceil(BLOCK) as u32;
        }
        let n_blocks = list_blocks[k] as usize;
        let mut order = vec![0u32; n_tokens];
        let mut doc_of_token = vec![0u32; n_tokens];
        let mut fill = list_tokens.clone();
        let mut doc = 0usize;
        for (t, &c) in cids.iter().enumerate() {
            while offsets[doc + 1] as usize <= t {
                doc += 1;
            }
            let pos = fill[c as usize] as usize;
            fill[c as usize] += 1;
            order[pos] = t as u32;
            doc_of_token[pos] = doc as u32;
        }
        // Layout and write.
        let block_bytes = m * 16;
        let s0 = HEADER;
        let s1 = align64(s0 + (k + 1) * 4);
        let s2 = align64(s1 + (k + 1) * 4);
        let s3 = align64(s2 + n_tokens * 4);
        let end = s3 + n_blocks * block_bytes;
        let total = end + 4;
        let mut store = vec![0u64; total.div_ceil(8)];
        {
            let b: &mut [u8] = &mut bytemuck::cast_slice_mut::<u64, u8>(&mut store)[..total];
            b[..8].copy_from_slice(MAGIC);
            for (i, v) in [
                VERSION,
                k as u32,
                m as u32,
                n_docs as u32,
                n_tokens as u32,
                n_blocks as u32,
                codec_crc,
            ]
            .iter()
            .enumerate()
            {
                b[8 + 4 * i..12 + 4 * i].copy_from_slice(&v.to_le_bytes());
            }
            b[s0..s0 + (k + 1) * 4].copy_from_slice(bytemuck::cast_slice(&list_tokens));
            b[s1..s1 + (k + 1) * 4].copy_from_slice(bytemuck::cast_slice(&list_blocks));
            b[s2..s2 + n_tokens * 4].copy_from_slice(bytemuck::cast_slice(&doc_of_token));
            let code_area = &mut b[s3..end];
            // Fill blocks list by list (in parallel over lists).
            let blocks: Vec<(usize, Vec<u8>)> = (0..k)
                .into_par_iter()
                .filter(|&c| list_tokens[c + 1] > list_tokens[c])
                .map(|c| {
                    let (a, e) = (list_tokens[c] as usize, list_tokens[c + 1] as usize);
                    let nb = (e - a).div_ceil(BLOCK);
                    let mut out = vec![0u8; nb * block_bytes];
                    let mut tok = Vec::with_capacity(BLOCK * bpt);
                    for bi in 0..nb {
                        tok.clear();
                        for &t in &order[a + bi * BLOCK..(a + (bi + 1) * BLOCK).min(e)] {
                            tok.extend_from_slice(&codes[t as usize * bpt..(t as usize + 1) * bpt]);
                        }
                        pack_block(&tok, m, &mut out[bi * block_bytes..(bi + 1) * block_bytes]);
                    }
                    (c, out)
                })
                .collect();
            for (c, out) in blocks {
                let off = list_blocks[c] as usize * block_bytes;
                code_area[off..off + out.len()].copy_from_slice(&out);
            }
            let crc = crc32c::crc32c(&b[..end]);
            b[end..end + 4].copy_from_slice(&crc.to_le_bytes());
        }
        Self::parse(Bytes::Owned(store, total), Path::new("<memory>"), false)
    }

    /// The serialised form (what [`IvfSegment::open`] reads).
    pub fn as_bytes(&self) -> &[u8] {
        self.bytes.as_slice()
    }

    /// Writes the segment to `path` (temp file, fsync, rename).
    pub fn save(&self, path: &Path) -> Result<()> {
        write_atomic(path, self.as_bytes())
    }

    /// Memory-maps a segment file, validating header, section bounds, list offsets, document
    /// numbers and (when `verify_checksum`) the CRC.
    pub fn open(path: &Path, verify_checksum: bool) -> Result<IvfSegment> {
        let f = std::fs::File::open(path).map_err(|e| LatixError::io(path, e))?;
        // SAFETY: segment files are immutable once renamed into place; latix never writes them again.
        let map = unsafe { memmap2::Mmap::map(&f) }.map_err(|e| LatixError::io(path, e))?;
        Self::parse(Bytes::Mapped(map), path, verify_checksum)
    }

    fn parse(bytes: Bytes, path: &Path, verify: bool) -> Result<IvfSegment> {
        let b = bytes.as_slice();
        let bad = |d: String| LatixError::corrupted(path, format!("inverted lists: {d}"));
        if b.len() < HEADER + 4 || &b[..8] != MAGIC {
            return Err(bad(
                "not a latix inverted-list file (bad magic or too short)".into(),
            ));
        }
        let rd = |i: usize| {
            u32::from_le_bytes([b[8 + 4 * i], b[9 + 4 * i], b[10 + 4 * i], b[11 + 4 * i]])
        };
        let version = rd(0);
        if version != VERSION {
            return Err(LatixError::UnsupportedVersion {
                path: path.into(),
                detail: format!(
                    "inverted-list format version {version}, this latix reads {VERSION}"
                ),
            });
        }
        let (k, m, n_docs, n_tokens, n_blocks, codec_crc) = (
            rd(1) as usize,
            rd(2) as usize,
            rd(3) as usize,
            rd(4) as usize,
            rd(5) as usize,
            rd(6),
        );
        if k == 0 || m == 0 || m % 2 != 0 || m > 256 {
            return Err(bad(format!("bad header (K {k}, M {m})")));
        }
        let s0 = HEADER;
        let s1 = align64(s0 + (k + 1) * 4);
        let s2 = align64(s1 + (k + 1) * 4);
        let s3 = align64(s2 + n_tokens * 4);
        let end = n_blocks
            .checked_mul(m * 16)
            .and_then(|v| v.checked_add(s3))
            .ok_or_else(|| bad("sizes overflow".into()))?;
        if b.len() != end + 4 {
            return Err(bad(format!(
                "expected {} bytes, found {}",
                end + 4,
                b.len()
            )));
        }
        if verify {
            let crc = u32::from_le_bytes([b[end], b[end + 1], b[end + 2], b[end + 3]]);
            if crc32c::crc32c(&b[..end]) != crc {
                return Err(bad("checksum mismatch".into()));
            }
        }
        let seg = IvfSegment {
            k,
            m,
            n_docs,
            n_tokens,
            codec_crc,
            sec: [
                (s0, k + 1),
                (s1, k + 1),
                (s2, n_tokens),
                (s3, n_blocks * m * 16),
            ],
            bytes,
        };
        // Validate every offset the search will follow.
        let lt = seg.list_tokens();
        let lb = seg.list_blocks();
        if lt[0] != 0 || lb[0] != 0 || lt[k] as usize != n_tokens || lb[k] as usize != n_blocks {
            return Err(bad("list offsets do not span the tokens/blocks".into()));
        }
        for c in 0..k {
            let len = lt[c + 1]
                .checked_sub(lt[c])
                .ok_or_else(|| bad(format!("list {c} has negative length")))?;
            let nb = lb[c + 1]
                .checked_sub(lb[c])
                .ok_or_else(|| bad(format!("list {c} has negative block count")))?;
            if nb as usize != (len as usize).div_ceil(BLOCK) {
                return Err(bad(format!("list {c}: {len} tokens but {nb} blocks")));
            }
        }
        if seg.doc_of_token().iter().any(|&d| d as usize >= n_docs) {
            return Err(bad("a token refers to a document past the end".into()));
        }
        Ok(seg)
    }

    fn u32s(&self, i: usize) -> &[u32] {
        let (off, n) = self.sec[i];
        // Sections are 64-byte aligned in an 8-byte aligned (or page-aligned) buffer.
        bytemuck::cast_slice(&self.bytes.as_slice()[off..off + n * 4])
    }

    /// Token offsets of each list (K+1).
    pub fn list_tokens(&self) -> &[u32] {
        self.u32s(0)
    }
    /// Block offsets of each list (K+1).
    pub fn list_blocks(&self) -> &[u32] {
        self.u32s(1)
    }
    /// Segment-local document number of each token, in list order.
    pub fn doc_of_token(&self) -> &[u32] {
        self.u32s(2)
    }
    /// All code blocks, `M * 16` bytes each.
    pub fn codes(&self) -> &[u8] {
        let (off, n) = self.sec[3];
        &self.bytes.as_slice()[off..off + n]
    }
    /// Number of coarse centroids the segment was built with.
    pub fn n_centroids(&self) -> usize {
        self.k
    }
    /// Number of PQ subspaces.
    pub fn n_subspaces(&self) -> usize {
        self.m
    }
    /// Documents in the segment.
    pub fn n_docs(&self) -> usize {
        self.n_docs
    }
    /// Tokens in the segment.
    pub fn n_tokens(&self) -> usize {
        self.n_tokens
    }
    /// Checksum of the codec the segment was encoded with.
    pub fn codec_checksum(&self) -> u32 {
        self.codec_crc
    }
    /// Size in bytes of the serialised segment.
    pub fn byte_len(&self) -> usize {
        self.as_bytes().len()
    }
    /// Codes of the token at list position `pos` of list `list` (`M / 2` bytes, nibble-packed as
    /// [`Codec::encode`] writes them): the inverse of the block packing, for decoding a document.
    /// Out-of-range positions give zero codes.
    pub fn token_codes(&self, list: usize, pos: usize) -> Vec<u8> {
        let m = self.m;
        let mut out = vec![0u8; m / 2];
        let (lt, lb) = (self.list_tokens(), self.list_blocks());
        let (Some(&t0), Some(&b0)) = (lt.get(list), lb.get(list)) else {
            return out;
        };
        let Some(j) = pos.checked_sub(t0 as usize) else {
            return out;
        };
        let (bi, t) = (b0 as usize + j / BLOCK, j % BLOCK);
        let Some(block) = self.codes().get(bi * m * 16..(bi + 1) * m * 16) else {
            return out;
        };
        for s in 0..m {
            let code = (block[s * 16 + t % 16] >> (4 * (t / 16))) & 15;
            out[s / 2] |= code << (4 * (s % 2));
        }
        out
    }
}

/// Writes `data` to `path` atomically: temp file in the same directory, fsync, rename.
pub fn write_atomic(path: &Path, data: &[u8]) -> Result<()> {
    use std::io::Write;
    let dir = path.parent().unwrap_or(Path::new("."));
    let tmp = dir.join(format!(
        ".{}.tmp{}",
        path.file_name().and_then(|s| s.to_str()).unwrap_or("file"),
        std::process::id()
    ));
    let mut f = std::fs::File::create(&tmp).map_err(|e| LatixError::io(&tmp, e))?;
    f.write_all(data).map_err(|e| LatixError::io(&tmp, e))?;
    f.sync_all().map_err(|e| LatixError::io(&tmp, e))?;
    drop(f);
    std::fs::rename(&tmp, path).map_err(|e| LatixError::io(path, e))?;
    Ok(())
}
