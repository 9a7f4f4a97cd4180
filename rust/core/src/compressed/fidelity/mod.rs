//! Fidelity tiers: per-*original*-token refinement data of a compressed segment, read only for the
//! short list a search re-ranks.
//!
//! The inverted lists ([`super::ivf`]) hold pooled tokens as 4-bit PQ codes: enough to find
//! candidates, not to order them as exact MaxSim does (recall@10 against exact search ~0.86 on
//! SciFact; MaxSim over the decoded pooled vectors caps at ~0.89, pooling costing ~0.04). A tier
//! adds, for every original (unpooled) token of a segment, its coarse centroid and a scalar
//! quantisation of its residual to the centroid with `nbits` bits per dimension (ColBERTv2's
//! residual compression, Santhanam et al., NAACL 2022, section 3.3: centroid id + b-bit residual
//! per dimension), and search re-ranks its refined short list with MaxSim over these
//! reconstructions instead of the kept full vectors.
//!
//! Quantiser: per dimension, `2^nbits` reconstruction levels fitted by Lloyd-Max on the segment's
//! own residuals (a strided sample; levels start at the conditional means of the quantile
//! buckets, then alternate cutoffs = midpoints of adjacent levels and levels = bucket means), and
//! per token a least-squares scale of its level pattern (u16 fixed point), so a residual shorter
//! or longer than typical keeps its length: the reconstruction is `c + s * (v_d[l_d])_d`.
//! Each file carries its levels, so a file decodes on its own and scores of segments encoded with
//! different levels stay comparable (every score approximates `<q, x>`). Re-encoding a
//! reconstruction (compaction of a tiered index, which has no original vectors any more) keeps
//! almost every level index (the reconstruction's residual values are multiples of the levels,
//! on their side of the midpoint cutoffs), so compaction drifts little; tokens whose
//! reconstruction lies closer to another centroid are re-encoded against that one.
//!
//! Scoring never materialises vectors: with residual levels `v_d[l]`, a token scores
//! `<q, c> + s * sum_d q_d v_d[l_d]`. Dimensions are grouped into 4-bit subspaces (4 dimensions of
//! 1 bit, or 2 of 2 bits), so the residual term is a sum of 16-entry table lookups, the shape of
//! [`super::fastscan`]: the same quantised tables and AVX2 `pshufb` block kernel ([`score`]), and
//! `<q, c>` is read from the query's centroid scores.
//!
//! File format (little endian): a 64-byte header (magic `LTXFIDSG`, version, dim, nbits, centroid
//! id width in bytes (2 or 4), number of centroids, codec checksum, n_tokens as u64, n_docs), then
//! 64-byte-aligned sections `levels` (dim * 2^nbits f32, ascending per dimension), `cids`
//! (n_tokens ids), `scales` (n_tokens u16, `value / 16384`), `codes` (ceil(n_tokens / 32) blocks of `n_sub * 16` bytes in the fast-scan
//! block layout, tokens in the segment's row order, so a document's rows `a..b` are lanes of
//! consecutive blocks and no per-document table is needed), then a CRC32C of everything before it.

use std::path::Path;

use crate::compressed::fastscan::BLOCK;
use crate::error::{LatixError, Result};
use crate::format;
use crate::store::FileBytes;

mod build;
mod score;

pub use build::build;
pub use score::{score_doc, score_doc_scalar, FidQuery};

const MAGIC: &[u8; 8] = b"LTXFIDSG";
const VERSION: u32 = 1;
const HEADER: usize = 64;

/// Name of the per-segment side file holding a tier's refinement data.
pub const FID_FILE: &str = "fid";

/// Storage tier of a compressed index (fixed at create, persisted in its configuration).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum Fidelity {
    /// Pooled 4-bit PQ codes only (the inverted lists).
    #[default]
    Codes,
    /// Codes + per original token: centroid id and a 1-bit residual per dimension.
    Balanced,
    /// Codes + per original token: centroid id and a 2-bit residual per dimension.
    High,
}

impl Fidelity {
    /// Residual bits per dimension of the tier's refinement file (0: no file).
    pub fn nbits(self) -> usize {
        match self {
            Fidelity::Codes => 0,
            Fidelity::Balanced => 1,
            Fidelity::High => 2,
        }
    }

    /// The name users pass (`"codes"`, `"balanced"`, `"high"`).
    pub fn name(self) -> &'static str {
        match self {
            Fidelity::Codes => "codes",
            Fidelity::Balanced => "balanced",
            Fidelity::High => "high",
        }
    }

    /// Parses a tier name; the error lists the accepted ones.
    pub fn parse(s: &str) -> Result<Fidelity> {
        match s {
            "codes" => Ok(Fidelity::Codes),
            "balanced" => Ok(Fidelity::Balanced),
            "high" => Ok(Fidelity::High),
            _ => Err(LatixError::invalid(format!(
                "fidelity must be \"codes\", \"balanced\" or \"high\", got {s:?}"
            ))),
        }
    }

    pub(crate) fn code(self) -> u32 {
        self as u32
    }

    pub(crate) fn from_code(c: u32) -> Option<Fidelity> {
        [Fidelity::Codes, Fidelity::Balanced, Fidelity::High]
            .get(c as usize)
            .copied()
    }
}

/// Number of 4-bit subspaces for `dim` dimensions of `nbits` bits (even, as the block kernel
/// reads two subspaces per 32-byte load; virtual dimensions past `dim` hold level 0 of a zero
/// query coordinate).
pub fn n_subspaces(dim: usize, nbits: usize) -> usize {
    (dim * nbits).div_ceil(4).next_multiple_of(2)
}

fn align64(x: usize) -> usize {
    x.div_ceil(64) * 64
}

/// One segment's refinement file (see module docs). Immutable.
pub struct FidSegment {
    bytes: FileBytes,
    dim: usize,
    nbits: usize,
    cid_bytes: usize,
    n_centroids: usize,
    codec_crc: u32,
    n_tokens: usize,
    n_docs: usize,
    levels_off: usize,
    cids_off: usize,
    scales_off: usize,
    codes_off: usize,
}

/// Fixed-point unit of a token's residual scale: stored `u16` = `round(scale * SCALE_ONE)`.
pub const SCALE_ONE: f32 = 16384.0;

/// Section offsets of a file: (levels, cids, residual scales, codes, checksum position).
fn layout(
    dim: usize,
    nbits: usize,
    cid_bytes: usize,
    n_tokens: usize,
) -> Option<(usize, usize, usize, usize, usize)> {
    let levels = HEADER;
    let cids = align64(levels.checked_add(dim.checked_mul(4 << nbits)?)?);
    let scales = align64(cids.checked_add(n_tokens.checked_mul(cid_bytes)?)?);
    let codes = align64(scales.checked_add(n_tokens.checked_mul(2)?)?);
    let n_blocks = n_tokens.div_ceil(BLOCK);
    let end = codes.checked_add(n_blocks.checked_mul(n_subspaces(dim, nbits) * 16)?)?;
    Some((levels, cids, scales, codes, end))
}

impl FidSegment {
    /// Assembles a file in memory from its parts (`codes` already in block layout).
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn assemble(
        dim: usize,
        nbits: usize,
        n_centroids: usize,
        codec_crc: u32,
        n_docs: usize,
        levels: &[f32],
        cids: &[u32],
        scales: &[u16],
        codes: &[u8],
    ) -> Result<FidSegment> {
        let cid_bytes = if n_centroids <= 1 << 16 { 2 } else { 4 };
        let n_tokens = cids.len();
        let (lo, co, so, ko, end) = layout(dim, nbits, cid_bytes, n_tokens)
            .ok_or_else(|| LatixError::invalid("refinement file too large"))?;
        let total = end + 4;
        let mut store = crate::error::try_filled(total.div_ceil(8), 0u64, "a refinement file")?;
        let b = &mut bytemuck::cast_slice_mut::<u64, u8>(&mut store)[..total];
        let head: [u32; 6] = [
            VERSION,
            dim as u32,
            nbits as u32,
            cid_bytes as u32,
            n_centroids as u32,
            codec_crc,
        ];
        format::write_header(b, MAGIC, &head);
        b[32..40].copy_from_slice(&(n_tokens as u64).to_le_bytes());
        b[40..48].copy_from_slice(&(n_docs as u64).to_le_bytes());
        for (i, v) in levels.iter().enumerate() {
            b[lo + 4 * i..lo + 4 * i + 4].copy_from_slice(&v.to_le_bytes());
        }
        for (i, &c) in cids.iter().enumerate() {
            let o = co + i * cid_bytes;
            if cid_bytes == 2 {
                b[o..o + 2].copy_from_slice(&(c as u16).to_le_bytes());
            } else {
                b[o..o + 4].copy_from_slice(&c.to_le_bytes());
            }
        }
        for (i, &r) in scales.iter().enumerate() {
            b[so + 2 * i..so + 2 * i + 2].copy_from_slice(&r.to_le_bytes());
        }
        b[ko..ko + codes.len()].copy_from_slice(codes);
        format::seal_at(b, end);
        Self::parse(FileBytes::Owned(store, total), Path::new("<memory>"), false)
    }

    /// Parses a serialised file held in memory (copied), validated as [`FidSegment::open`] does
    /// (for fuzzing and tests of damaged files).
    pub fn from_bytes(data: &[u8], verify_checksum: bool) -> Result<FidSegment> {
        Self::parse(
            FileBytes::copied(data),
            Path::new("<memory>"),
            verify_checksum,
        )
    }

    /// Memory-maps a refinement file, validating header, section bounds, levels, centroid ids
    /// and (when `verify_checksum`) the CRC.
    pub fn open(path: &Path, verify_checksum: bool) -> Result<FidSegment> {
        Self::parse(FileBytes::map(path)?, path, verify_checksum)
    }

    fn parse(bytes: FileBytes, path: &Path, verify: bool) -> Result<FidSegment> {
        let b = bytes.as_slice();
        let bad = |d: String| LatixError::corrupted(path, format!("refinement file: {d}"));
        if b.len() < HEADER + 4 || !format::has_magic(b, MAGIC) {
            return Err(bad(
                "not a latix refinement file (bad magic or too short)".into()
            ));
        }
        let rd = |i: usize| format::le_u32(b, i);
        let rd64 = |i: usize| format::le_u64(b, i);
        let version = rd(8);
        if version != VERSION {
            return Err(LatixError::UnsupportedVersion {
                path: path.into(),
                detail: format!("refinement file version {version}, this latix reads {VERSION}"),
            });
        }
        let (dim, nbits, cid_bytes, k, codec_crc) = (
            rd(12) as usize,
            rd(16) as usize,
            rd(20) as usize,
            rd(24) as usize,
            rd(28),
        );
        let (n_tokens, n_docs) = (rd64(32), rd64(40));
        if dim == 0 || dim > 1 << 16 || !(1..=2).contains(&nbits) || k == 0 {
            return Err(bad(format!("bad header (dim {dim}, nbits {nbits}, K {k})")));
        }
        if !(cid_bytes == 2 && k <= 1 << 16 || cid_bytes == 4 && k > 1 << 16) {
            return Err(bad(format!(
                "centroid ids of {cid_bytes} bytes for {k} centroids"
            )));
        }
        if n_tokens > b.len() as u64 || n_docs > n_tokens.max(1) << 32 {
            return Err(bad(format!(
                "{n_tokens} tokens / {n_docs} documents in a file of {} bytes",
                b.len()
            )));
        }
        let n_tokens = n_tokens as usize;
        let (lo, co, so, ko, end) = layout(dim, nbits, cid_bytes, n_tokens)
            .ok_or_else(|| bad("section sizes overflow".into()))?;
        if b.len() != end + 4 {
            return Err(bad(format!(
                "{} bytes, the header implies {}",
                b.len(),
                end + 4
            )));
        }
        if verify && !format::checksum_ok(b) {
            return Err(bad("checksum mismatch".into()));
        }
        let s = FidSegment {
            bytes,
            dim,
            nbits,
            cid_bytes,
            n_centroids: k,
            codec_crc,
            n_tokens,
            n_docs: n_docs as usize,
            levels_off: lo,
            cids_off: co,
            scales_off: so,
            codes_off: ko,
        };
        if !s.levels().iter().all(|v| v.is_finite() && v.abs() < 1e6) {
            return Err(bad("a residual level is not finite".into()));
        }
        // Ids index the query's centroid scores: each must name a centroid.
        if (0..n_tokens).any(|t| s.cid(t) as usize >= k) {
            return Err(bad(format!("a centroid id is not below K = {k}")));
        }
        Ok(s)
    }

    /// The serialised form (what [`FidSegment::open`] reads).
    pub fn as_bytes(&self) -> &[u8] {
        self.bytes.as_slice()
    }
    /// Dimension of the tokens.
    pub fn dim(&self) -> usize {
        self.dim
    }
    /// Residual bits per dimension.
    pub fn nbits(&self) -> usize {
        self.nbits
    }
    /// 4-bit subspaces per token ([`n_subspaces`]).
    pub fn n_sub(&self) -> usize {
        n_subspaces(self.dim, self.nbits)
    }
    /// Tokens (the segment's rows).
    pub fn n_tokens(&self) -> usize {
        self.n_tokens
    }
    /// Documents of the segment the file was built for.
    pub fn n_docs(&self) -> usize {
        self.n_docs
    }
    /// Coarse centroids of the codec the ids refer to.
    pub fn n_centroids(&self) -> usize {
        self.n_centroids
    }
    /// Identity ([`super::codec_id`]) of the codec whose centroids the ids refer to.
    pub fn codec_checksum(&self) -> u32 {
        self.codec_crc
    }
    /// The trailing CRC32C (what the manifest records).
    pub fn file_checksum(&self) -> u32 {
        format::trailing_checksum(self.as_bytes()).unwrap_or(0)
    }
    /// Residual levels, `2^nbits` per dimension (dimension-major).
    pub fn levels(&self) -> &[f32] {
        let n = self.dim << self.nbits;
        bytemuck::cast_slice(&self.as_bytes()[self.levels_off..self.levels_off + 4 * n])
    }
    /// Coarse centroid of token `t` (`t < n_tokens`).
    #[inline]
    pub fn cid(&self, t: usize) -> u32 {
        let b = self.as_bytes();
        let o = self.cids_off + t * self.cid_bytes;
        if self.cid_bytes == 2 {
            u16::from_le_bytes([b[o], b[o + 1]]) as u32
        } else {
            u32::from_le_bytes([b[o], b[o + 1], b[o + 2], b[o + 3]])
        }
    }
    /// Residual scale of token `t` (`t < n_tokens`): its residual is `scale * level pattern`.
    #[inline]
    pub fn scale(&self, t: usize) -> f32 {
        let b = self.as_bytes();
        let o = self.scales_off + 2 * t;
        u16::from_le_bytes([b[o], b[o + 1]]) as f32 / SCALE_ONE
    }
    /// Codes in block layout (`ceil(n_tokens / 32)` blocks of `n_sub * 16` bytes).
    pub fn codes(&self) -> &[u8] {
        let bb = self.n_sub() * 16;
        &self.as_bytes()[self.codes_off..self.codes_off + self.n_tokens.div_ceil(BLOCK) * bb]
    }
    /// Level index of dimension `d` of token `t`.
    pub fn level(&self, t: usize, d: usize) -> usize {
        let per = 4 / self.nbits; // dimensions per subspace
        let (s, j) = (d / per, d % per);
        let bb = self.n_sub() * 16;
        let (blk, lane) = (t / BLOCK, t % BLOCK);
        let byte = self.codes()[blk * bb + s * 16 + lane % 16];
        let code = (byte >> (4 * (lane / 16))) & 15;
        ((code >> (j * self.nbits)) & ((1 << self.nbits) - 1)) as usize
    }
    /// `Corrupted` (naming `path`) if a mapped file no longer has its mapped size (truncated from
    /// outside latix; reading it would raise SIGBUS).
    pub fn check_size(&self, path: &Path) -> Result<()> {
        self.bytes.check_size(path)
    }

    /// The reconstruction `c_t + r^_t` of rows `a..b` (f32, row-major), given the codec's
    /// `centroids` (`n_centroids * dim`).
    pub fn decode_rows(&self, centroids: &[f32], a: usize, b: usize) -> Result<Vec<f32>> {
        let dim = self.dim;
        let lv = self.levels();
        let nl = 1 << self.nbits;
        let mut out = crate::error::try_vec((b - a) * dim, "decoded token vectors")?;
        for t in a..b {
            let c = self.cid(t) as usize;
            let r = self.scale(t);
            let row = &centroids[c * dim..(c + 1) * dim];
            for (d, &cv) in row.iter().enumerate() {
                out.push(cv + r * lv[d * nl + self.level(t, d)]);
            }
        }
        Ok(out)
    }
}

#[cfg(test)]
mod tests;
