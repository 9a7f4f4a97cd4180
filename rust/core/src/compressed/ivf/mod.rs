//! Per-segment inverted lists over coarse centroids, stored as compressed tokens.
//!
//! WARP-style layout (Scheerer et al., "WARP: An Efficient Engine for Multi-Vector Retrieval",
//! SIGIR 2025): the tokens of a segment are grouped by coarse centroid; each list holds, for every
//! token, its segment-local document number and its residual codes, the codes laid out in
//! 32-token blocks for [`super::fastscan`]. Document numbers are stored as u16 (2 bytes a token
//! instead of 4, spent on codes instead): a segment's documents are cut into chunks of
//! [`DOC_CHUNK`], each centroid's list is split into one sub-list per chunk (each starting on a
//! block boundary), and a token's document is `chunk * DOC_CHUNK + u16`. Segments of at most
//! 65,536 documents (the common case) have one sub-list per centroid. Search probes a few lists per query token and scores
//! their tokens straight from codes; no per-document token table is needed, so a segment is a
//! single immutable file that fits the store's append-only segments (new documents are encoded
//! with the existing codec into the new segment's file).
//!
//! File format (little endian): a 64-byte header (magic `LTXIVFSG`, version, K, M, n_docs,
//! n_tokens, n_blocks, codec checksum, n_chunks), then 64-byte-aligned sections `list_tokens`
//! (K * n_chunks + 1 u32, token offsets of each sub-list, sub-list `c * n_chunks + h` = centroid
//! `c`, document chunk `h`), `list_blocks` (K * n_chunks + 1 u32, block offsets), `doc_of_token`
//! (n_tokens u16, document number within its chunk), `norm_scale` (n_tokens, in list order),
//! in version 4 `doc_offsets` (n_docs + 1 u32) and `doc_positions` (n_tokens u32: the list
//! positions of document `d`'s tokens are `doc_positions[doc_offsets[d]..doc_offsets[d + 1]]`,
//! ascending), and `codes` (n_blocks * M * 16 bytes), then a CRC32C of everything before it.
//! Version 5 (written since 2026-12-04) lays each code block out in split halves
//! ([`BlockLayout::Halves`]: a token's codes in half of its block's cache lines, which halves what
//! refinement's gather reads); version 4 files (the interleaved blocks) are read and searched
//! with the same results, and merges rewrite them as version 5.
//! Version 4 stores the norm scale as u16 fixed point (`value / 16384`, 6e-5 resolution, 2 bytes
//! instead of 4); version 3 files (f32 norm scales, no document map) are still read, and are
//! searched without the code-level refinement that needs the document map (see
//! [`super::search::refine`]) until the next commit rewrites them ([`IvfSegment::upgraded`]).
//!
//! The document map costs 4 bytes per stored token (2 per original token with pooling by 2) and
//! lets search re-score a short list of documents with *all* their tokens' codes (PLAID's final
//! stage, from codes), where candidate generation only saw the tokens in probed lists.
//!
//! `norm_scale` of a token is `|x| / |x^|`, its true norm over the norm of its decoded vector: a
//! token is scored as `<q, x^> * norm_scale`, i.e. the decoded vector rescaled to the original
//! length. Quantisation error shrinks or stretches decoded vectors, and MaxSim's max over a
//! document's tokens favours the stretched ones; removing the norm error leaves only the
//! direction error. Measured on SciFact (pooled by 2, 48 B codes, exact top-200 re-scored):
//! nDCG@10 0.6991 -> 0.7121, recall@10 vs exact 0.850 -> 0.866, for 4 bytes per stored vector.

use std::path::Path;

use crate::compressed::fastscan::{BlockLayout, BLOCK};
use crate::error::{try_filled, LatixError, Result};
use crate::format;
use crate::store::FileBytes;

mod build;
mod merge;

pub use merge::{merge_into, MergeInput};

const MAGIC: &[u8; 8] = b"LTXIVFSG";
/// Version 5: code blocks in the split-half layout ([`BlockLayout::Halves`]).
const VERSION: u32 = 5;
/// Version 4: the same sections, code blocks interleaved ([`BlockLayout::Interleaved`]); still
/// read and searched, never rewritten for the layout alone (merges write version 5).
const VERSION_V4: u32 = 4;
/// Version 3 (f32 norm scales, no document map), still read.
const VERSION_V3: u32 = 3;
/// Fixed-point unit of a version-4 norm scale: stored `u16` = `round(scale * NORM_ONE)`.
pub const NORM_ONE: f32 = 16384.0;
const HEADER: usize = 64;
/// Documents per document-number chunk (u16 document numbers).
pub const DOC_CHUNK: usize = 1 << 16;

fn align64(x: usize) -> usize {
    x.div_ceil(64) * 64
}

/// One segment's inverted lists (see module docs). Immutable.
pub struct IvfSegment {
    bytes: FileBytes,
    k: usize,
    m: usize,
    n_docs: usize,
    n_tokens: usize,
    n_chunks: usize,
    codec_crc: u32,
    version: u32,
    /// In memory only: the sub-list holding list position `b << POS_BUCKET_SHIFT`, per bucket, so
    /// [`IvfSegment::list_of_position`] is a lookup and a short forward walk.
    pos_bucket: Vec<u32>,
    /// (byte offset, element count) of the sections, indexed by the `SEC_*` constants; the
    /// document map sections are empty in version 3.
    sec: [(usize, usize); 7],
}

const SEC_LIST_TOKENS: usize = 0;
const SEC_LIST_BLOCKS: usize = 1;
const SEC_DOC_OF_TOKEN: usize = 2;
const SEC_NORM: usize = 3;
const SEC_DOC_OFFSETS: usize = 4;
const SEC_DOC_POSITIONS: usize = 5;
const SEC_CODES: usize = 6;

/// Log2 of the list positions per bucket of [`IvfSegment::list_of_position`]'s table (4 bytes per
/// 64 tokens in memory).
const POS_BUCKET_SHIFT: usize = 6;

/// Byte offsets of the sections of a file of `version`, indexed by the `SEC_*` constants (a
/// version-3 file's document-map sections are empty, at the codes' offset).
fn layout(version: u32, n_lists: usize, n_docs: usize, n_tokens: usize) -> [usize; 7] {
    let lt = HEADER;
    let lb = align64(lt + (n_lists + 1) * 4);
    let dt = align64(lb + (n_lists + 1) * 4);
    let ns = align64(dt + n_tokens * 2);
    if version == VERSION_V3 {
        let codes = align64(ns + n_tokens * 4);
        return [lt, lb, dt, ns, codes, codes, codes];
    }
    let doff = align64(ns + n_tokens * 2);
    let dpos = align64(doff + (n_docs + 1) * 4);
    let codes = align64(dpos + n_tokens * 4);
    [lt, lb, dt, ns, doff, dpos, codes]
}

/// A segment's per-token norm scales (see the module documentation), in list order.
#[derive(Clone, Copy, Debug)]
pub enum NormScales<'a> {
    /// Version 3: plain f32.
    F32(&'a [f32]),
    /// Version 4: u16 fixed point, `value / NORM_ONE`.
    Fixed(&'a [u16]),
}

impl NormScales<'_> {
    /// The scale of the token at list position `t`.
    #[inline(always)]
    pub fn get(&self, t: usize) -> f32 {
        match self {
            NormScales::F32(v) => v[t],
            NormScales::Fixed(v) => v[t] as f32 * (1.0 / NORM_ONE),
        }
    }

    /// Number of tokens.
    pub fn len(&self) -> usize {
        match self {
            NormScales::F32(v) => v.len(),
            NormScales::Fixed(v) => v.len(),
        }
    }

    /// True when there are no tokens.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// A norm scale rounded to the version-4 fixed point (saturating at the largest value, ~4).
fn norm_fixed(r: f32) -> u16 {
    (r * NORM_ONE + 0.5).clamp(0.0, u16::MAX as f32) as u16
}

/// `|x| / |x^|` for a vector `x` and its decoding `x^` (1 when either is zero, so nothing is
/// amplified without bound).
fn norm_ratio(x: &[f32], decoded: &[f32]) -> f32 {
    let nx = x.iter().map(|v| v * v).sum::<f32>().sqrt();
    let nd = decoded.iter().map(|v| v * v).sum::<f32>().sqrt();
    if nx > 0.0 && nd > 1e-6 * nx.max(1e-30) {
        (nx / nd).min(1e6)
    } else {
        1.0
    }
}

/// Checksum identifying a codec, stored in every segment built with it.
pub fn codec_checksum(codec_bytes: &[u8]) -> u32 {
    crc32c::crc32c(codec_bytes)
}

/// Everything of a current-version file but the codes, for [`Sections::assemble`].
struct Sections<'a> {
    k: usize,
    m: usize,
    n_docs: usize,
    n_blocks: usize,
    codec_crc: u32,
    n_chunks: usize,
    list_tokens: &'a [u32],
    list_blocks: &'a [u32],
    doc_of_token: &'a [u16],
    norm_scale: &'a [u16],
    doc_offsets: &'a [u32],
    doc_positions: &'a [u32],
}

impl Sections<'_> {
    /// Lays out a file of `version` (4 or 5: the document map), lets `fill_codes` write the code
    /// blocks (in that version's [`BlockLayout`]), appends the checksum and parses the result
    /// (validated like a file read from disk).
    fn assemble(&self, version: u32, fill_codes: impl FnOnce(&mut [u8])) -> Result<IvfSegment> {
        debug_assert!(version == VERSION || version == VERSION_V4);
        let n_tokens = self.doc_of_token.len();
        let nl = self.list_tokens.len() - 1;
        let [s0, s1, s2, s3, s4, s5, s6] = layout(version, nl, self.n_docs, n_tokens);
        let end = s6 + self.n_blocks * self.m * 16;
        let total = end + 4;
        let mut store = try_filled(total.div_ceil(8), 0u64, "an inverted-list file")?;
        {
            let b: &mut [u8] = &mut bytemuck::cast_slice_mut::<u64, u8>(&mut store)[..total];
            format::write_header(
                b,
                MAGIC,
                &[
                    version,
                    self.k as u32,
                    self.m as u32,
                    self.n_docs as u32,
                    n_tokens as u32,
                    self.n_blocks as u32,
                    self.codec_crc,
                    self.n_chunks as u32,
                ],
            );
            let put =
                |b: &mut [u8], at: usize, src: &[u8]| b[at..at + src.len()].copy_from_slice(src);
            put(b, s0, bytemuck::cast_slice(self.list_tokens));
            put(b, s1, bytemuck::cast_slice(self.list_blocks));
            put(b, s2, bytemuck::cast_slice(self.doc_of_token));
            put(b, s3, bytemuck::cast_slice(self.norm_scale));
            put(b, s4, bytemuck::cast_slice(self.doc_offsets));
            put(b, s5, bytemuck::cast_slice(self.doc_positions));
            fill_codes(&mut b[s6..end]);
            format::seal_at(b, end);
        }
        IvfSegment::parse(FileBytes::Owned(store, total), Path::new("<memory>"), false)
    }
}

impl IvfSegment {
    /// The serialised form (what [`IvfSegment::open`] reads).
    pub fn as_bytes(&self) -> &[u8] {
        self.bytes.as_slice()
    }

    /// Writes the segment to `path` (temp file, fsync, rename, directory fsync: the store's
    /// `write_atomic`).
    pub fn save(&self, path: &Path) -> Result<()> {
        let dir = match path.parent() {
            Some(d) if !d.as_os_str().is_empty() => d,
            _ => Path::new("."),
        };
        let name = path
            .file_name()
            .and_then(|n| n.to_str())
            .ok_or_else(|| LatixError::invalid(format!("{} is not a file name", path.display())))?;
        crate::store::write_atomic(dir, name, self.as_bytes()).map(|_| ())
    }

    /// The format version of the lists file at `path` (its header only; not validated further).
    pub fn file_version(path: &Path) -> Result<u32> {
        use std::io::Read;
        let mut h = [0u8; 12];
        crate::store::open_regular(path)?
            .read_exact(&mut h)
            .map_err(|e| LatixError::io(path, e))?;
        format::version(&h, MAGIC).ok_or_else(|| {
            LatixError::corrupted(
                path,
                "inverted lists: not a latix inverted-list file (bad magic)",
            )
        })
    }

    /// True when lists of this version are read but rewritten by the next commit (version 3,
    /// without the document map: see [`Self::upgraded`]). Version 4 lists (interleaved blocks)
    /// are searched as they are; merges and compaction write version 5.
    pub fn is_old_version(version: u32) -> bool {
        version < VERSION_V4
    }

    /// Parses a serialised segment held in memory (copied), with the same validation as
    /// [`IvfSegment::open`] (for fuzzing and tests of damaged files).
    pub fn from_bytes(data: &[u8], verify_checksum: bool) -> Result<IvfSegment> {
        Self::parse(
            FileBytes::copied(data),
            Path::new("<memory>"),
            verify_checksum,
        )
    }

    /// Memory-maps a segment file, validating header, section bounds, list offsets, document
    /// numbers and (when `verify_checksum`) the CRC.
    pub fn open(path: &Path, verify_checksum: bool) -> Result<IvfSegment> {
        Self::parse(FileBytes::map(path)?, path, verify_checksum)
    }

    fn parse(bytes: FileBytes, path: &Path, verify: bool) -> Result<IvfSegment> {
        let b = bytes.as_slice();
        let bad = |d: String| LatixError::corrupted(path, format!("inverted lists: {d}"));
        if b.len() < HEADER + 4 || !format::has_magic(b, MAGIC) {
            return Err(bad(
                "not a latix inverted-list file (bad magic or too short)".into(),
            ));
        }
        let rd = |i: usize| format::header_u32(b, i);
        let version = rd(0);
        if !(VERSION_V3..=VERSION).contains(&version) {
            return Err(LatixError::UnsupportedVersion {
                path: path.into(),
                detail: format!(
                    "inverted-list format version {version}, this latix reads versions \
                     {VERSION_V3} to {VERSION}"
                ),
            });
        }
        let (k, m, n_docs, n_tokens, n_blocks, codec_crc, nch) = (
            rd(1) as usize,
            rd(2) as usize,
            rd(3) as usize,
            rd(4) as usize,
            rd(5) as usize,
            rd(6),
            rd(7) as usize,
        );
        if k == 0 || m == 0 || m % 2 != 0 || m > 256 {
            return Err(bad(format!("bad header (K {k}, M {m})")));
        }
        if nch != n_docs.div_ceil(DOC_CHUNK).max(1) {
            return Err(bad(format!("{nch} document chunks for {n_docs} documents")));
        }
        let nl = k
            .checked_mul(nch)
            .filter(|&v| v < u32::MAX as usize)
            .ok_or_else(|| bad("sizes overflow".into()))?;
        if n_docs >= u32::MAX as usize || n_tokens >= u32::MAX as usize {
            return Err(bad(format!(
                "{n_docs} documents / {n_tokens} tokens overflow u32"
            )));
        }
        let lay = layout(version, nl, n_docs, n_tokens);
        let end = n_blocks
            .checked_mul(m * 16)
            .and_then(|v| v.checked_add(lay[SEC_CODES]))
            .ok_or_else(|| bad("sizes overflow".into()))?;
        if b.len() != end + 4 {
            return Err(bad(format!(
                "expected {} bytes, found {}",
                end + 4,
                b.len()
            )));
        }
        // `b` is exactly `end + 4` bytes long here: its trailing checksum covers `b[..end]`.
        if verify && !format::checksum_ok(b) {
            return Err(bad("checksum mismatch".into()));
        }
        let v4 = version >= VERSION_V4;
        let mut seg = IvfSegment {
            k,
            m,
            n_docs,
            n_tokens,
            n_chunks: nch,
            codec_crc,
            version,
            pos_bucket: Vec::new(),
            sec: [
                (lay[SEC_LIST_TOKENS], nl + 1),
                (lay[SEC_LIST_BLOCKS], nl + 1),
                (lay[SEC_DOC_OF_TOKEN], n_tokens),
                (lay[SEC_NORM], n_tokens),
                (lay[SEC_DOC_OFFSETS], if v4 { n_docs + 1 } else { 0 }),
                (lay[SEC_DOC_POSITIONS], if v4 { n_tokens } else { 0 }),
                (lay[SEC_CODES], n_blocks * m * 16),
            ],
            bytes,
        };
        // Validate every offset the search will follow.
        let lt = seg.list_tokens();
        let lb = seg.list_blocks();
        if lt[0] != 0 || lb[0] != 0 || lt[nl] as usize != n_tokens || lb[nl] as usize != n_blocks {
            return Err(bad("list offsets do not span the tokens/blocks".into()));
        }
        if let NormScales::F32(v) = seg.norm_scales() {
            if v.iter().any(|v| !v.is_finite() || *v < 0.0) {
                return Err(bad("a token's norm scale is negative or not finite".into()));
            }
        }
        let docs = seg.doc_of_token();
        if v4 {
            // The document map: offsets span the tokens, and every position names a token of
            // that document (its chunk-local number matches), ascending.
            let doff = seg.u32s(SEC_DOC_OFFSETS);
            let dpos = seg.u32s(SEC_DOC_POSITIONS);
            if doff[0] != 0 || doff[n_docs] as usize != n_tokens {
                return Err(bad("document offsets do not span the tokens".into()));
            }
            for d in 0..n_docs {
                let (a, e) = (doff[d] as usize, doff[d + 1] as usize);
                if e < a || e > n_tokens {
                    return Err(bad(format!("document {d} has a bad token range")));
                }
                let local = (d % DOC_CHUNK) as u16;
                let mut prev: Option<u32> = None;
                for &p in &dpos[a..e] {
                    if p as usize >= n_tokens
                        || docs[p as usize] != local
                        || prev.is_some_and(|q| q >= p)
                    {
                        return Err(bad(format!(
                            "document {d}: token position {p} is out of range, out of order or \
                             belongs to another document"
                        )));
                    }
                    prev = Some(p);
                }
            }
        }
        for l in 0..nl {
            let len = lt[l + 1]
                .checked_sub(lt[l])
                .ok_or_else(|| bad(format!("sub-list {l} has negative length")))?;
            let nb = lb[l + 1]
                .checked_sub(lb[l])
                .ok_or_else(|| bad(format!("sub-list {l} has negative block count")))?;
            if nb as usize != (len as usize).div_ceil(BLOCK) {
                return Err(bad(format!("sub-list {l}: {len} tokens but {nb} blocks")));
            }
            // Documents of chunk h are h * DOC_CHUNK + u16 and must exist.
            let base = (l % nch) * DOC_CHUNK;
            if docs
                .get(lt[l] as usize..lt[l + 1] as usize)
                .ok_or_else(|| bad(format!("sub-list {l} runs past the tokens")))?
                .iter()
                .any(|&d| base + d as usize >= n_docs)
            {
                return Err(bad("a token refers to a document past the end".into()));
            }
        }
        // Bucket table of list_of_position: sub-lists are contiguous and ascending, so a bucket's
        // first position lies in the last sub-list starting at or before it.
        let n_buckets = n_tokens.div_ceil(1 << POS_BUCKET_SHIFT);
        let mut bucket = Vec::with_capacity(n_buckets);
        let lt = seg.list_tokens();
        let mut l = 0usize;
        for b in 0..n_buckets {
            let t = b << POS_BUCKET_SHIFT;
            while lt[l + 1] as usize <= t {
                l += 1;
            }
            bucket.push(l as u32);
        }
        seg.pos_bucket = bucket;
        Ok(seg)
    }

    fn u32s(&self, i: usize) -> &[u32] {
        let (off, n) = self.sec[i];
        // Sections are 64-byte aligned in an 8-byte aligned (or page-aligned) buffer.
        bytemuck::cast_slice(&self.bytes.as_slice()[off..off + n * 4])
    }

    /// Token offsets of each sub-list (`K * n_doc_chunks + 1`; sub-list `c * n_doc_chunks + h`
    /// holds centroid `c`'s tokens of document chunk `h`).
    pub fn list_tokens(&self) -> &[u32] {
        self.u32s(SEC_LIST_TOKENS)
    }
    /// Block offsets of each sub-list (`K * n_doc_chunks + 1`).
    pub fn list_blocks(&self) -> &[u32] {
        self.u32s(SEC_LIST_BLOCKS)
    }
    /// File format version (3 or 4).
    pub fn version(&self) -> u32 {
        self.version
    }
    /// True when the segment has the document map (versions 4 and 5), which code-level
    /// refinement needs.
    pub fn has_doc_map(&self) -> bool {
        self.version >= VERSION_V4
    }
    /// How the code blocks are laid out: split halves from version 5, interleaved before.
    pub fn block_layout(&self) -> BlockLayout {
        if self.version >= VERSION {
            BlockLayout::Halves
        } else {
            BlockLayout::Interleaved
        }
    }
    /// List positions of document `doc`'s tokens, ascending (None without a document map or for a
    /// document number out of range).
    pub fn doc_positions(&self, doc: usize) -> Option<&[u32]> {
        if !self.has_doc_map() || doc >= self.n_docs {
            return None;
        }
        let off = self.u32s(SEC_DOC_OFFSETS);
        let pos = self.u32s(SEC_DOC_POSITIONS);
        // Validated at parse: offsets within the tokens and non-decreasing.
        pos.get(off[doc] as usize..off[doc + 1] as usize)
    }
    /// The sub-list holding list position `pos` (`pos < n_tokens`; panics otherwise): a table
    /// lookup and a forward walk over the few sub-lists that start inside its bucket.
    #[inline]
    pub fn list_of_position(&self, pos: usize) -> usize {
        let lt = self.list_tokens();
        let mut l = self.pos_bucket[pos >> POS_BUCKET_SHIFT] as usize;
        while lt[l + 1] as usize <= pos {
            l += 1;
        }
        l
    }
    /// Document number of each token within its chunk, in list order: the segment-local
    /// document is `h * DOC_CHUNK + doc_of_token()[t]` for a token of sub-list chunk `h`.
    pub fn doc_of_token(&self) -> &[u16] {
        let (off, n) = self.sec[SEC_DOC_OF_TOKEN];
        bytemuck::cast_slice(&self.bytes.as_slice()[off..off + n * 2])
    }
    /// Number of document chunks of [`DOC_CHUNK`] documents (at least 1).
    pub fn n_doc_chunks(&self) -> usize {
        self.n_chunks
    }
    /// Sub-lists of centroid `c`: `(first token, end token, first block, document base)` each.
    pub fn sublists(&self, c: usize) -> impl Iterator<Item = (usize, usize, usize, usize)> + '_ {
        let (lt, lb) = (self.list_tokens(), self.list_blocks());
        (0..self.n_chunks).map(move |h| {
            let l = c * self.n_chunks + h;
            (
                lt[l] as usize,
                lt[l + 1] as usize,
                lb[l] as usize,
                h * DOC_CHUNK,
            )
        })
    }
    /// Number of tokens in centroid `c`'s list (all its sub-lists).
    pub fn list_len(&self, c: usize) -> usize {
        let lt = self.list_tokens();
        (lt[(c + 1) * self.n_chunks] - lt[c * self.n_chunks]) as usize
    }
    /// `|x| / |x^|` of every token, in list order (see the module documentation).
    pub fn norm_scales(&self) -> NormScales<'_> {
        let (off, n) = self.sec[SEC_NORM];
        let b = self.bytes.as_slice();
        if self.version == VERSION_V3 {
            NormScales::F32(bytemuck::cast_slice(&b[off..off + n * 4]))
        } else {
            NormScales::Fixed(bytemuck::cast_slice(&b[off..off + n * 2]))
        }
    }
    /// All code blocks, `M * 16` bytes each.
    pub fn codes(&self) -> &[u8] {
        let (off, n) = self.sec[SEC_CODES];
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
    /// The file's own checksum (its last four bytes: the crc32c of everything before them), the
    /// value an index manifest records to bind the file to its segment.
    pub fn file_checksum(&self) -> u32 {
        // parse() requires at least a header and the checksum.
        format::trailing_checksum(self.as_bytes()).unwrap_or(0)
    }
    /// Size in bytes of the serialised segment.
    pub fn byte_len(&self) -> usize {
        self.as_bytes().len()
    }
    /// Drops the file's mapped pages from the process's resident set (they are read again on the
    /// next access): a pass over many lists files keeps its memory bounded.
    pub fn release_pages(&self) {
        self.bytes.release();
    }
    /// `Corrupted` (naming `path`) if a mapped file no longer has its mapped size: truncated or
    /// rewritten from outside latix, so that reading it would raise SIGBUS (best effort, like
    /// [`crate::store::Segment::check_size`]).
    pub fn check_size(&self, path: &Path) -> Result<()> {
        self.bytes.check_size(path)
    }
    /// Codes of the token at position `pos` of sub-list `list` (`c * n_doc_chunks + chunk`; `M / 2`
    /// bytes, nibble-packed as
    /// [`crate::compressed::Codec::encode`] writes them): the inverse of the block packing, for decoding a document.
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
        let layout = self.block_layout();
        for s in 0..m {
            out[s / 2] |= layout.code(block, m, t, s) << (4 * (s % 2));
        }
        out
    }
}
