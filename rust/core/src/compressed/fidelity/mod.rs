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
//! different levels stay comparable (every score approximates `<q, x>`).
//!
//! Merges (compaction, the merge policy) of files of one codec are lossless ([`merge`]): the
//! kept tokens' centroid ids, stored scales and level indices are copied into the merged file's
//! row order and block layout, and each source's levels stay a *level set* of the merged file,
//! holding the levels of a contiguous range of rows (whole documents: a document is scored with
//! the tables of its set, so its score is bit-identical to the one its source file gave).
//! Re-encoding a reconstruction (compaction with retraining, or of files of another codec) keeps
//! most level indices (the reconstruction's residual values are multiples of the levels, on
//! their side of the midpoint cutoffs) but not all, and tokens whose reconstruction lies closer
//! to another centroid are re-encoded against that one: each such pass costs recall (measured
//! in `tests/tier_compaction.rs`).
//!
//! Scoring never materialises vectors: with residual levels `v_d[l]`, a token scores
//! `<q, c> + s * sum_d q_d v_d[l_d]`. Dimensions are grouped into 4-bit subspaces (4 dimensions of
//! 1 bit, or 2 of 2 bits), so the residual term is a sum of 16-entry table lookups, the shape of
//! [`super::fastscan`]: the same quantised tables and AVX2 `pshufb` block kernel ([`score`]), and
//! `<q, c>` is read from the query's centroid scores. A second stage adds `s2 * sum_d q_d w_d[m_d]`,
//! one more table pass over its own codes.
//!
//! Second stage (high tier, file version 2): the residual left after the first stage,
//! `x - c - s * p`, is quantised again the same way (its own Lloyd-Max levels per dimension, fitted
//! on the segment's stage-1 errors, 1 bit per dimension, and its own least-squares scale), so the
//! reconstruction is `c + s * p + s2 * p2`: 2 + 1 bits per dimension, an additive form of 3-bit
//! residuals that the same 4-bit table kernel scores (one more table pass per block). ColBERTv2's
//! residuals are per-dimension uniform buckets; the additive second stage is residual
//! (multi-stage) quantisation (Juang & Gray 1982) applied to them.
//!
//! File format (little endian): a 64-byte header (magic `LTXFIDSG`, version, dim, nbits, centroid
//! id width in bytes (2 or 4), number of centroids, codec checksum, n_tokens as u64, n_docs as
//! u64; version 2 adds at byte 48 the second stage's bits per dimension `nbits2`, 0 for none),
//! then 64-byte-aligned sections `levels` (dim * 2^nbits f32, ascending per dimension), `levels2`
//! (dim * 2^nbits2 f32), `cids` (n_tokens ids), `scales` (n_tokens u16, `value / 16384`),
//! `scales2` (n_tokens u16), `codes` (ceil(n_tokens / 32) blocks of `n_sub * 16` bytes in the
//! fast-scan block layout, tokens in the segment's row order, so a document's rows `a..b` are
//! lanes of consecutive blocks and no per-document table is needed), `codes2` (the same for the
//! second stage), then a CRC32C of everything before it. The stage-2 sections are empty when
//! `nbits2` = 0, which makes a version-1 file's layout (read as `nbits2` = 0) the same.
//!
//! Version 3 (a file of several level sets, written by merges; a file of one set is still
//! written as version 2) adds at byte 52 the number of level sets `n_sets` (at least 1), then
//! right after the header a section `sets` (n_sets u64: the first row of each set, the first 0,
//! strictly ascending, each below n_tokens), and its `levels` / `levels2` sections hold
//! `n_sets` level tables each, set after set. Opening a file in an index also checks that each
//! set starts at a document of its segment.
//!
//! Version 4 ([`transform`]; the `balanced` and `high` of indexes created since, recorded as
//! [`Fidelity::TransformBalanced`] / [`Fidelity::TransformHigh`] in the configuration, so an
//! older index keeps its per-dimension scheme and files) anchors each original token on the
//! nearest of its document's pooled vectors as the codes decode it instead of a coarse centroid,
//! and transform-codes the residual: a PCA rotation per level set, 0/1/2/4 bits per component
//! by reverse water-filling, Lloyd-Max levels per component, the same least-squares scale, and
//! the same 4-bit table kernel over the packed components (its layout: [`transform`]).

use std::path::Path;

use crate::compressed::fastscan::BLOCK;
use crate::error::{LatixError, Result};
use crate::format;
use crate::store::FileBytes;

mod build;
mod merge;
mod score;
pub mod transform;

pub use build::build;
pub use merge::{merge, MergeSource};
pub use score::{score_doc, score_doc_scalar, FidQuery};
pub use transform::{
    build_transform, score_doc_transform, score_doc_transform_scalar, transform_bits, TX_LEVELS,
    TX_VERSION,
};

const MAGIC: &[u8; 8] = b"LTXFIDSG";
/// Written by this latix for a file of several level sets; versions 1 (no second stage) and 2
/// (one level set) are still read.
const VERSION: u32 = 3;
/// Written for a file of one level set (readable by a latix of version-2 files).
const VERSION_ONE_SET: u32 = 2;
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
    /// Codes + per original token: centroid id, a 2-bit residual per dimension and a 1-bit
    /// second stage of what it leaves (files of version 1: the 2-bit residual alone).
    High,
    /// `"balanced"` of indexes created since file version 4: per original token, the index of
    /// its pooled vector within its document, a scale and a transform-coded residual against
    /// that pooled vector as the codes decode it, 64 bytes ([`transform`]).
    TransformBalanced,
    /// `"high"` of indexes created since file version 4: as [`Fidelity::TransformBalanced`]
    /// with a residual of 160 bytes.
    TransformHigh,
}

impl Fidelity {
    /// Residual bits per dimension of a per-dimension tier's refinement file (0: no file, or a
    /// transform-coded tier: see [`Fidelity::transform_bytes`]).
    pub fn nbits(self) -> usize {
        match self {
            Fidelity::Balanced => 1,
            Fidelity::High => 2,
            _ => 0,
        }
    }

    /// Residual bytes per original token of a transform-coded tier (file version 4; `None` for
    /// the others). At dimensions too small for them, [`transform_bits`] caps the bits.
    pub fn transform_bytes(self) -> Option<usize> {
        match self {
            Fidelity::TransformBalanced => Some(64),
            Fidelity::TransformHigh => Some(160),
            _ => None,
        }
    }

    /// True for every tier but `codes` (the index has refinement files).
    pub fn is_tier(self) -> bool {
        self != Fidelity::Codes
    }

    /// Bits per dimension of the second residual stage (0: none).
    pub fn nbits2(self) -> usize {
        match self {
            Fidelity::High => 1,
            _ => 0,
        }
    }

    /// The name users pass (`"codes"`, `"balanced"`, `"high"`; both schemes of a tier have its
    /// name: an index keeps the scheme it was created with).
    pub fn name(self) -> &'static str {
        match self {
            Fidelity::Codes => "codes",
            Fidelity::Balanced | Fidelity::TransformBalanced => "balanced",
            Fidelity::High | Fidelity::TransformHigh => "high",
        }
    }

    /// Parses a tier name; the error lists the accepted ones. A new index gets the
    /// transform-coded scheme of `"balanced"` and `"high"`.
    pub fn parse(s: &str) -> Result<Fidelity> {
        match s {
            "codes" => Ok(Fidelity::Codes),
            "balanced" => Ok(Fidelity::TransformBalanced),
            "high" => Ok(Fidelity::TransformHigh),
            _ => Err(LatixError::invalid(format!(
                "fidelity must be \"codes\", \"balanced\" or \"high\", got {s:?}"
            ))),
        }
    }

    pub(crate) fn code(self) -> u32 {
        self as u32
    }

    pub(crate) fn from_code(c: u32) -> Option<Fidelity> {
        [
            Fidelity::Codes,
            Fidelity::Balanced,
            Fidelity::High,
            Fidelity::TransformBalanced,
            Fidelity::TransformHigh,
        ]
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
    nbits2: usize,
    /// First row of each level set (ascending, the first 0).
    set_starts: Vec<usize>,
    off: Layout,
    /// A transform-coded file's layout and subspace packing (version 4; `None` before).
    tx: Option<transform::Tx>,
}

/// Byte offsets of a file's sections (stage-2 sections empty when `nbits2` = 0).
#[derive(Clone, Copy, Debug)]
struct Layout {
    /// The level sets' first rows (version 3; empty before).
    sets: usize,
    levels: usize,
    levels2: usize,
    cids: usize,
    scales: usize,
    scales2: usize,
    codes: usize,
    codes2: usize,
    /// Position of the trailing checksum.
    end: usize,
}

/// Fixed-point unit of a token's residual scale: stored `u16` = `round(scale * SCALE_ONE)`.
pub const SCALE_ONE: f32 = 16384.0;

/// Section offsets of a file (see the module docs); `None` on overflow.
fn layout(
    dim: usize,
    nbits: usize,
    nbits2: usize,
    cid_bytes: usize,
    n_tokens: usize,
    n_sets: usize,
    version: u32,
) -> Option<Layout> {
    let n_blocks = n_tokens.div_ceil(BLOCK);
    let code_bytes = |nb: usize| match nb {
        0 => Some(0),
        _ => n_blocks.checked_mul(n_subspaces(dim, nb) * 16),
    };
    let sets = HEADER;
    let set_bytes = if version >= 3 {
        n_sets.checked_mul(8)?
    } else {
        0
    };
    let levels = align64(sets.checked_add(set_bytes)?);
    let per_set = dim.checked_mul(4 << nbits)?;
    let levels2 = align64(levels.checked_add(per_set.checked_mul(n_sets)?)?);
    let l2 = if nbits2 == 0 {
        0
    } else {
        dim.checked_mul(4 << nbits2)?.checked_mul(n_sets)?
    };
    let cids = align64(levels2.checked_add(l2)?);
    let scales = align64(cids.checked_add(n_tokens.checked_mul(cid_bytes)?)?);
    let scales2 = align64(scales.checked_add(n_tokens.checked_mul(2)?)?);
    let s2 = if nbits2 == 0 {
        0
    } else {
        n_tokens.checked_mul(2)?
    };
    let codes = align64(scales2.checked_add(s2)?);
    let codes_end = codes.checked_add(code_bytes(nbits)?)?;
    // Without a second stage nothing follows the codes (the version-1 layout).
    let codes2 = if nbits2 == 0 {
        codes_end
    } else {
        align64(codes_end)
    };
    let end = codes2.checked_add(code_bytes(nbits2)?)?;
    Some(Layout {
        sets,
        levels,
        levels2,
        cids,
        scales,
        scales2,
        codes,
        codes2,
        end,
    })
}

/// One residual stage of a file being assembled: `2^nbits` levels per dimension
/// (dimension-major) of each level set (set after set), one scale per token (stored fixed
/// point), codes in block layout.
pub(crate) struct StageParts<'a> {
    pub nbits: usize,
    pub levels: &'a [f32],
    pub scales: &'a [u16],
    pub codes: &'a [u8],
}

impl FidSegment {
    /// Assembles a file in memory from its parts: the first rows of its level sets
    /// (`set_starts`, ascending from 0; one entry for a file of one set), the first residual
    /// stage and optionally a second. Version 2 for one level set, 3 for several.
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn assemble(
        dim: usize,
        n_centroids: usize,
        codec_crc: u32,
        n_docs: usize,
        cids: &[u32],
        set_starts: &[usize],
        stage1: StageParts<'_>,
        stage2: Option<StageParts<'_>>,
    ) -> Result<FidSegment> {
        let cid_bytes = if n_centroids <= 1 << 16 { 2 } else { 4 };
        let n_tokens = cids.len();
        let nbits = stage1.nbits;
        let nbits2 = stage2.as_ref().map_or(0, |s| s.nbits);
        let n_sets = set_starts.len();
        let version = if n_sets > 1 { VERSION } else { VERSION_ONE_SET };
        let lay = layout(dim, nbits, nbits2, cid_bytes, n_tokens, n_sets, version)
            .ok_or_else(|| LatixError::invalid("refinement file too large"))?;
        let total = lay.end + 4;
        let mut store = crate::error::try_filled(total.div_ceil(8), 0u64, "a refinement file")?;
        let b = &mut bytemuck::cast_slice_mut::<u64, u8>(&mut store)[..total];
        let head: [u32; 6] = [
            version,
            dim as u32,
            nbits as u32,
            cid_bytes as u32,
            n_centroids as u32,
            codec_crc,
        ];
        format::write_header(b, MAGIC, &head);
        b[32..40].copy_from_slice(&(n_tokens as u64).to_le_bytes());
        b[40..48].copy_from_slice(&(n_docs as u64).to_le_bytes());
        b[48..52].copy_from_slice(&(nbits2 as u32).to_le_bytes());
        if version >= 3 {
            b[52..56].copy_from_slice(&(n_sets as u32).to_le_bytes());
            for (i, &r) in set_starts.iter().enumerate() {
                let o = lay.sets + 8 * i;
                b[o..o + 8].copy_from_slice(&(r as u64).to_le_bytes());
            }
        }
        let put_stage = |b: &mut [u8], st: &StageParts<'_>, lo: usize, so: usize, ko: usize| {
            for (i, v) in st.levels.iter().enumerate() {
                b[lo + 4 * i..lo + 4 * i + 4].copy_from_slice(&v.to_le_bytes());
            }
            for (i, &r) in st.scales.iter().enumerate() {
                b[so + 2 * i..so + 2 * i + 2].copy_from_slice(&r.to_le_bytes());
            }
            b[ko..ko + st.codes.len()].copy_from_slice(st.codes);
        };
        put_stage(b, &stage1, lay.levels, lay.scales, lay.codes);
        if let Some(st) = &stage2 {
            put_stage(b, st, lay.levels2, lay.scales2, lay.codes2);
        }
        for (i, &c) in cids.iter().enumerate() {
            let o = lay.cids + i * cid_bytes;
            if cid_bytes == 2 {
                b[o..o + 2].copy_from_slice(&(c as u16).to_le_bytes());
            } else {
                b[o..o + 4].copy_from_slice(&c.to_le_bytes());
            }
        }
        format::seal_at(b, lay.end);
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
        if version == TX_VERSION {
            return transform::parse(bytes, path, verify);
        }
        if !(1..=VERSION).contains(&version) {
            return Err(LatixError::UnsupportedVersion {
                path: path.into(),
                detail: format!(
                    "refinement file version {version}, this latix reads 1 to {TX_VERSION}"
                ),
            });
        }
        // Version 1 has no second stage (its header bytes 48..64 are unused), version 2 one
        // level set (bytes 52..64 unused).
        let nbits2 = if version >= 2 { rd(48) as usize } else { 0 };
        let n_sets = if version >= 3 { rd(52) as usize } else { 1 };
        let unused = if version >= 3 { 56 } else { 52 };
        if nbits2 > 2 || version >= 2 && b[unused..HEADER].iter().any(|&x| x != 0) {
            return Err(bad(format!("bad header (second stage of {nbits2} bits)")));
        }
        if n_sets == 0 || n_sets > b.len() / 8 {
            return Err(bad(format!(
                "{n_sets} level sets in a file of {} bytes",
                b.len()
            )));
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
        let lay = layout(dim, nbits, nbits2, cid_bytes, n_tokens, n_sets, version)
            .ok_or_else(|| bad("section sizes overflow".into()))?;
        let end = lay.end;
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
        // Level sets: the first starts at row 0, each later one after the one before, every
        // one holding at least a row.
        let set_starts: Vec<usize> = if version >= 3 {
            (0..n_sets)
                .map(|i| rd64(lay.sets + 8 * i).min(u64::MAX >> 1) as usize)
                .collect()
        } else {
            vec![0]
        };
        let ordered = set_starts.windows(2).all(|w| w[0] < w[1]);
        if set_starts[0] != 0 || !ordered || n_sets > 1 && set_starts[n_sets - 1] >= n_tokens {
            return Err(bad(format!(
                "level sets do not start at rows ascending from 0 below {n_tokens}"
            )));
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
            nbits2,
            set_starts,
            off: lay,
            tx: None,
        };
        let finite = |l: &[f32]| l.iter().all(|v| v.is_finite() && v.abs() < 1e6);
        if !finite(s.levels()) || !finite(s.levels2()) {
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
    /// Bits per dimension of the second residual stage (0: the file has none).
    pub fn nbits2(&self) -> usize {
        self.nbits2
    }
    /// 4-bit subspaces per token ([`n_subspaces`]).
    pub fn n_sub(&self) -> usize {
        if let Some(tx) = &self.tx {
            return tx.n_sub;
        }
        n_subspaces(self.dim, self.nbits)
    }
    /// 4-bit subspaces per token of the second stage (0 without one).
    pub fn n_sub2(&self) -> usize {
        match self.nbits2 {
            0 => 0,
            nb => n_subspaces(self.dim, nb),
        }
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
    /// Residual levels of every level set, `2^nbits` per dimension (dimension-major), set
    /// after set.
    pub fn levels(&self) -> &[f32] {
        if self.tx.is_some() {
            return &[];
        }
        let n = (self.dim << self.nbits) * self.n_sets();
        bytemuck::cast_slice(&self.as_bytes()[self.off.levels..self.off.levels + 4 * n])
    }
    /// Second-stage levels of every level set, `2^nbits2` per dimension (empty without a second
    /// stage).
    pub fn levels2(&self) -> &[f32] {
        if self.tx.is_some() {
            return &[];
        }
        let n = if self.nbits2 == 0 {
            0
        } else {
            (self.dim << self.nbits2) * self.n_sets()
        };
        bytemuck::cast_slice(&self.as_bytes()[self.off.levels2..self.off.levels2 + 4 * n])
    }
    /// Level sets of the file: each holds the levels of a contiguous range of rows (a merged
    /// file keeps the levels each of its sources was encoded with; a file encoded from vectors
    /// has one).
    pub fn n_sets(&self) -> usize {
        self.set_starts.len()
    }
    /// First row of each level set (ascending, the first 0).
    pub fn set_starts(&self) -> &[usize] {
        &self.set_starts
    }
    /// The level set holding row `t`.
    #[inline]
    pub fn set_of(&self, t: usize) -> usize {
        self.set_starts
            .partition_point(|&s| s <= t)
            .saturating_sub(1)
    }
    /// Rows `a..b` of level set `i` (`i < n_sets`).
    pub fn set_rows(&self, i: usize) -> (usize, usize) {
        let b = self.set_starts.get(i + 1).copied().unwrap_or(self.n_tokens);
        (self.set_starts[i], b.max(self.set_starts[i]))
    }
    /// First-stage levels of level set `i` (`2^nbits` per dimension).
    pub fn set_levels(&self, i: usize) -> &[f32] {
        let n = self.dim << self.nbits;
        &self.levels()[i * n..(i + 1) * n]
    }
    /// Second-stage levels of level set `i` (empty without a second stage).
    pub fn set_levels2(&self, i: usize) -> &[f32] {
        if self.nbits2 == 0 {
            return &[];
        }
        let n = self.dim << self.nbits2;
        &self.levels2()[i * n..(i + 1) * n]
    }
    /// Coarse centroid of token `t` (`t < n_tokens`).
    #[inline]
    pub fn cid(&self, t: usize) -> u32 {
        if self.tx.is_some() {
            return 0; // a transform-coded file has no centroid ids
        }
        let b = self.as_bytes();
        let o = self.off.cids + t * self.cid_bytes;
        if self.cid_bytes == 2 {
            u16::from_le_bytes([b[o], b[o + 1]]) as u32
        } else {
            u32::from_le_bytes([b[o], b[o + 1], b[o + 2], b[o + 3]])
        }
    }
    /// Stored (fixed point) residual scale of token `t` and of its second stage (0 without).
    #[inline]
    pub fn scales_raw(&self, t: usize) -> (u16, u16) {
        let b = self.as_bytes();
        let o = self.scales_off() + 2 * t;
        let s1 = u16::from_le_bytes([b[o], b[o + 1]]);
        if self.nbits2 == 0 {
            return (s1, 0);
        }
        let o = self.off.scales2 + 2 * t;
        (s1, u16::from_le_bytes([b[o], b[o + 1]]))
    }
    /// Residual scale of token `t` (`t < n_tokens`): its residual is `scale * level pattern`.
    #[inline]
    pub fn scale(&self, t: usize) -> f32 {
        let b = self.as_bytes();
        let o = self.scales_off() + 2 * t;
        u16::from_le_bytes([b[o], b[o + 1]]) as f32 / SCALE_ONE
    }
    /// Second-stage scale of token `t` (`t < n_tokens`; 0 without a second stage).
    #[inline]
    pub fn scale2(&self, t: usize) -> f32 {
        if self.nbits2 == 0 {
            return 0.0;
        }
        let b = self.as_bytes();
        let o = self.off.scales2 + 2 * t;
        u16::from_le_bytes([b[o], b[o + 1]]) as f32 / SCALE_ONE
    }
    /// Offset of the scales section.
    fn scales_off(&self) -> usize {
        self.tx.as_ref().map_or(self.off.scales, |t| t.lay.scales)
    }
    /// Codes in block layout (`ceil(n_tokens / 32)` blocks of `n_sub * 16` bytes; of a
    /// transform-coded file, its components' level indices packed into the subspaces).
    pub fn codes(&self) -> &[u8] {
        let bb = self.n_sub() * 16;
        let o = self.tx.as_ref().map_or(self.off.codes, |t| t.lay.codes);
        &self.as_bytes()[o..o + self.n_tokens.div_ceil(BLOCK) * bb]
    }
    /// Second-stage codes in block layout (`n_sub2 * 16` bytes per block; empty without one).
    pub fn codes2(&self) -> &[u8] {
        if self.tx.is_some() {
            return &[];
        }
        let bb = self.n_sub2() * 16;
        &self.as_bytes()[self.off.codes2..self.off.codes2 + self.n_tokens.div_ceil(BLOCK) * bb]
    }
    /// Level index of dimension `d` of token `t`.
    pub fn level(&self, t: usize, d: usize) -> usize {
        level_of(self.codes(), self.nbits, self.n_sub(), t, d)
    }
    /// Second-stage level index of dimension `d` of token `t` (requires `nbits2() > 0`).
    pub fn level2(&self, t: usize, d: usize) -> usize {
        level_of(self.codes2(), self.nbits2, self.n_sub2(), t, d)
    }
    /// `Corrupted` (naming `path`) if a mapped file no longer has its mapped size (truncated from
    /// outside latix; reading it would raise SIGBUS).
    pub fn check_size(&self, path: &Path) -> Result<()> {
        self.bytes.check_size(path)
    }

    /// The reconstruction `c_t + r^_t` of rows `a..b` (f32, row-major), given the codec's
    /// `centroids` (`n_centroids * dim`).
    pub fn decode_rows(&self, centroids: &[f32], a: usize, b: usize) -> Result<Vec<f32>> {
        if self.tx.is_some() {
            return Err(LatixError::invalid(
                "a transform-coded refinement file decodes from its document's pooled vectors \
                 (decode_rows_transform)",
            ));
        }
        let dim = self.dim;
        let (nl, nl2) = (1 << self.nbits, 1 << self.nbits2);
        let mut out = crate::error::try_vec((b - a) * dim, "decoded token vectors")?;
        for t in a..b {
            let set = self.set_of(t);
            let (lv, lv2) = (self.set_levels(set), self.set_levels2(set));
            let c = self.cid(t) as usize;
            let (r, r2) = (self.scale(t), self.scale2(t));
            let row = &centroids[c * dim..(c + 1) * dim];
            for (d, &cv) in row.iter().enumerate() {
                let mut v = cv + r * lv[d * nl + self.level(t, d)];
                if self.nbits2 > 0 {
                    v += r2 * lv2[d * nl2 + self.level2(t, d)];
                }
                out.push(v);
            }
        }
        Ok(out)
    }
}

/// Level index of dimension `d` of token `t` in block-layout `codes` of `nbits` per dimension.
fn level_of(codes: &[u8], nbits: usize, n_sub: usize, t: usize, d: usize) -> usize {
    let per = 4 / nbits; // dimensions per subspace
    let (s, j) = (d / per, d % per);
    let bb = n_sub * 16;
    let (blk, lane) = (t / BLOCK, t % BLOCK);
    let byte = codes[blk * bb + s * 16 + lane % 16];
    let code = (byte >> (4 * (lane / 16))) & 15;
    ((code >> (j * nbits)) & ((1 << nbits) - 1)) as usize
}

#[cfg(test)]
mod tests;
#[cfg(test)]
mod tests_transform;
