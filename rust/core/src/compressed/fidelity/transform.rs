//! Transform-coded refinement files (version 4): the residual of each original token is taken
//! against its document's **pooled vector as the codes decode it** (the nearest of the
//! document's decoded pooled vectors, which the 4-bit PQ codes already pay for), rotated onto
//! the principal components of the segment's residuals, and each component is quantised with
//! its own Lloyd-Max levels at a rate of 0, 1, 2 or 4 bits chosen by reverse water-filling
//! (greedy marginal allocation of the tier's bit budget on the measured distortion of each
//! component at each rate; Segall 1976 / Shoham and Gersho 1988 for the allocation, transform
//! coding after Huang and Schultheiss 1963). A per-token least-squares scale is kept as in the
//! per-dimension tiers. Measured offline (`benches/tier_transform_experiment.py`,
//! bench-results/fidelity.md): 64 B of residual reach recall@10 vs exact 0.953 at refine 96
//! on SciFact test queries, 160 B 0.987 at refine 160.
//!
//! Reconstruction of token `t` of a document: `a_{p_t} + s_t * R^T z_t`, with `a_p` the
//! document's decoded pooled vector `p_t` (in document-map order: the order of
//! [`crate::compressed::IvfSegment::doc_positions`]), `R` the rotation of the token's level set
//! (rows: principal components) and `z_t[j] = levels_j[l_tj]` (0 for a 0-bit component). A query
//! token `q` scores `<q, a_p> + s_t * <R q, z_t>`: the first term is what refinement from codes
//! computes for the document's pooled tokens, the second a sum of 16-entry table lookups over
//! 4-bit subspaces (the components packed by rate: one 4-bit component, two 2-bit or four
//! 1-bit ones per subspace, the fast-scan `pshufb` block kernel of
//! [`crate::compressed::fastscan`]).
//!
//! File layout (little endian): a 64-byte header (magic `LTXFIDSG`, version 4, dim, `n_sub`
//! (4-bit subspaces per token, even), bytes per pooled index (1 or 2), number of centroids of
//! the codec, codec checksum, n_tokens u64, n_docs u64, n_sets u32 at 48, zeros to 64), then
//! 64-byte-aligned sections `sets` (n_sets u64: first row of each level set), `rotation`
//! (n_sets * dim * dim f32, row-major, rows = components), `rates` (n_sets * dim u8, bits of
//! each component: 0, 1, 2 or 4, summing to `4 * n_sub`), `levels` (n_sets * dim * 16 f32: the
//! first `2^rate` used), `pidx` (n_tokens pooled indices), `scales` (n_tokens u16,
//! `value / 16384`), `codes` (ceil(n_tokens / 32) blocks of `n_sub * 16` bytes, fast-scan block
//! layout), then a CRC32C of everything before it.

use std::path::Path;

use rayon::prelude::*;

use super::build::lloyd_max;
use super::score::fold_block_max;
use super::{align64, FidSegment, Layout, HEADER, MAGIC, SCALE_ONE};
use crate::compressed::codec::Codec;
use crate::compressed::fastscan::{scan_block, BLOCK};
use crate::compressed::ivf::IvfSegment;
use crate::compressed::linalg::{argmax_rows, scores, sym_eigen, Panels};
use crate::error::{LatixError, Result};
use crate::format;
use crate::maxsim::DocVectors;
use crate::store::FileBytes;

/// File version of a transform-coded refinement file.
pub const TX_VERSION: u32 = 4;
/// Level slots per component in the `levels` section (a 4-bit component uses all 16).
pub const TX_LEVELS: usize = 16;
/// Residuals sampled to fit the rotation, the rates and the levels.
const SAMPLE: usize = 32_768;
/// Tokens encoded per parallel task (a multiple of [`BLOCK`]).
const CHUNK: usize = 64 * BLOCK;
/// Subspaces summed per kernel call (its u16 accumulators hold 256 entries of 255).
const KERNEL_SUB: usize = 256;

/// Residual bits per token of a transform-coded tier of `bytes` residual bytes at dimension
/// `dim`: `8 * bytes`, capped at 4 bits per component and rounded down to whole pairs of 4-bit
/// subspaces (the block kernel reads two at a time).
pub fn transform_bits(bytes: usize, dim: usize) -> usize {
    (8 * bytes).min(4 * dim) / 8 * 8
}

/// One component's place in a 4-bit subspace.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Slot {
    /// Component (row of the rotation).
    pub comp: u16,
    /// Its bits (1, 2 or 4).
    pub bits: u8,
    /// Its first bit within the subspace's 4.
    pub shift: u8,
}

/// The packing of components of `rates` into 4-bit subspaces: components by rate, highest
/// first (ties by component), each subspace filled in that order (0-bit components cost
/// nothing). With rates that are powers of two, only the last subspace can be partly filled.
/// `None` for a rate outside {0, 1, 2, 4}.
pub(crate) fn pack(rates: &[u8]) -> Option<Vec<Vec<Slot>>> {
    if rates.iter().any(|&r| !matches!(r, 0 | 1 | 2 | 4)) {
        return None;
    }
    let mut order: Vec<usize> = (0..rates.len()).filter(|&j| rates[j] > 0).collect();
    order.sort_by_key(|&j| (std::cmp::Reverse(rates[j]), j));
    let mut subs: Vec<Vec<Slot>> = Vec::new();
    let mut used = 4u8;
    for j in order {
        let r = rates[j];
        if used + r > 4 {
            subs.push(Vec::new());
            used = 0;
        }
        subs.last_mut().expect("pushed").push(Slot {
            comp: j as u16,
            bits: r,
            shift: used,
        });
        used += r;
    }
    Some(subs)
}

/// Layout and packing of a version-4 file.
pub(crate) struct Tx {
    pub n_sub: usize,
    pub pidx_bytes: usize,
    pub lay: TxLayout,
    /// Per level set, per subspace: its components.
    pub slots: Vec<Vec<Vec<Slot>>>,
    /// Per level set, what every query's tables are made from ([`QueryPrep`]), built on first use.
    pub prep: Vec<std::sync::OnceLock<QueryPrep>>,
}

/// The query-independent part of a level set's query tables, made once per file instead of once
/// per query: the rotation packed into GEMM panels, and each component's levels spread over the
/// 16 codes of its subspace (`expanded[x][code]` = the level `code` selects for slot `x`, slots in
/// subspace order), so a table row is a sum of 16-wide multiples.
pub(crate) struct QueryPrep {
    panels: Panels,
    expanded: Vec<[f32; 16]>,
    /// Per slot (subspace order): its component.
    comp: Vec<u16>,
    /// Per subspace: its slots' range in `expanded` / `comp`.
    sub_slots: Vec<(u32, u32)>,
}

impl QueryPrep {
    fn new(seg: &FidSegment, set: usize) -> QueryPrep {
        let dim = seg.dim();
        let lv = seg.component_levels(set);
        let (mut expanded, mut comp, mut sub_slots) = (Vec::new(), Vec::new(), Vec::new());
        for sl in seg.slots(set) {
            let start = comp.len() as u32;
            for x in sl {
                let mut e = [0f32; 16];
                for (code, v) in e.iter_mut().enumerate() {
                    let l = (code >> x.shift) & ((1 << x.bits) - 1);
                    *v = lv[x.comp as usize * TX_LEVELS + l];
                }
                expanded.push(e);
                comp.push(x.comp);
            }
            sub_slots.push((start, comp.len() as u32));
        }
        QueryPrep {
            panels: Panels::new(seg.rotation(set), dim),
            expanded,
            comp,
            sub_slots,
        }
    }
}

/// Byte offsets of a version-4 file's sections.
#[derive(Clone, Copy, Debug)]
pub(crate) struct TxLayout {
    pub sets: usize,
    pub rotation: usize,
    pub rates: usize,
    pub levels: usize,
    pub pidx: usize,
    pub scales: usize,
    pub codes: usize,
    pub end: usize,
}

/// Section offsets (`None` on overflow).
fn layout(dim: usize, n_sub: usize, pb: usize, n_tokens: usize, n_sets: usize) -> Option<TxLayout> {
    let sets = HEADER;
    let rotation = align64(sets.checked_add(n_sets.checked_mul(8)?)?);
    let rot_bytes = dim.checked_mul(dim)?.checked_mul(4)?.checked_mul(n_sets)?;
    let rates = align64(rotation.checked_add(rot_bytes)?);
    let levels = align64(rates.checked_add(dim.checked_mul(n_sets)?)?);
    let lv_bytes = dim.checked_mul(TX_LEVELS * 4)?.checked_mul(n_sets)?;
    let pidx = align64(levels.checked_add(lv_bytes)?);
    let scales = align64(pidx.checked_add(n_tokens.checked_mul(pb)?)?);
    let codes = align64(scales.checked_add(n_tokens.checked_mul(2)?)?);
    let code_bytes = n_tokens
        .div_ceil(BLOCK)
        .checked_mul(n_sub.checked_mul(16)?)?;
    let end = codes.checked_add(code_bytes)?;
    Some(TxLayout {
        sets,
        rotation,
        rates,
        levels,
        pidx,
        scales,
        codes,
        end,
    })
}

/// The parts of a version-4 file (see the module docs), per level set where named so.
pub(crate) struct TxParts<'a> {
    pub dim: usize,
    pub n_centroids: usize,
    pub codec_crc: u32,
    pub n_docs: usize,
    pub n_sub: usize,
    pub set_starts: &'a [usize],
    pub rotation: &'a [f32],
    pub rates: &'a [u8],
    pub levels: &'a [f32],
    pub pidx: &'a [u16],
    pub scales: &'a [u16],
    pub codes: &'a [u8],
}

/// Assembles a version-4 file in memory (validated by parsing it back).
pub(crate) fn assemble(p: TxParts<'_>) -> Result<FidSegment> {
    let n_tokens = p.pidx.len();
    let n_sets = p.set_starts.len();
    let pb = if p.pidx.iter().all(|&x| x < 256) {
        1
    } else {
        2
    };
    let lay = layout(p.dim, p.n_sub, pb, n_tokens, n_sets)
        .ok_or_else(|| LatixError::invalid("refinement file too large"))?;
    let total = lay.end + 4;
    let mut store = crate::error::try_filled(total.div_ceil(8), 0u64, "a refinement file")?;
    let b = &mut bytemuck::cast_slice_mut::<u64, u8>(&mut store)[..total];
    let head: [u32; 6] = [
        TX_VERSION,
        p.dim as u32,
        p.n_sub as u32,
        pb as u32,
        p.n_centroids as u32,
        p.codec_crc,
    ];
    format::write_header(b, MAGIC, &head);
    b[32..40].copy_from_slice(&(n_tokens as u64).to_le_bytes());
    b[40..48].copy_from_slice(&(p.n_docs as u64).to_le_bytes());
    b[48..52].copy_from_slice(&(n_sets as u32).to_le_bytes());
    for (i, &r) in p.set_starts.iter().enumerate() {
        let o = lay.sets + 8 * i;
        b[o..o + 8].copy_from_slice(&(r as u64).to_le_bytes());
    }
    let put_f32 = |b: &mut [u8], off: usize, v: &[f32]| {
        for (i, x) in v.iter().enumerate() {
            b[off + 4 * i..off + 4 * i + 4].copy_from_slice(&x.to_le_bytes());
        }
    };
    put_f32(b, lay.rotation, p.rotation);
    b[lay.rates..lay.rates + p.rates.len()].copy_from_slice(p.rates);
    put_f32(b, lay.levels, p.levels);
    for (i, &x) in p.pidx.iter().enumerate() {
        if pb == 1 {
            b[lay.pidx + i] = x as u8;
        } else {
            b[lay.pidx + 2 * i..lay.pidx + 2 * i + 2].copy_from_slice(&x.to_le_bytes());
        }
    }
    for (i, &x) in p.scales.iter().enumerate() {
        b[lay.scales + 2 * i..lay.scales + 2 * i + 2].copy_from_slice(&x.to_le_bytes());
    }
    b[lay.codes..lay.codes + p.codes.len()].copy_from_slice(p.codes);
    format::seal_at(b, lay.end);
    parse(FileBytes::Owned(store, total), Path::new("<memory>"), false)
}

/// Parses and validates a version-4 file (header, section bounds, level sets, rates and their
/// packing, finite rotations and levels, checksum when `verify`). The pooled indices are
/// checked against the documents' pooled counts where the file is opened in an index
/// ([`FidSegment::check_pooled`]).
pub(crate) fn parse(bytes: FileBytes, path: &Path, verify: bool) -> Result<FidSegment> {
    let b = bytes.as_slice();
    let bad = |d: String| LatixError::corrupted(path, format!("refinement file: {d}"));
    let rd = |i: usize| format::le_u32(b, i);
    let rd64 = |i: usize| format::le_u64(b, i);
    let (dim, n_sub, pb, k, codec_crc) = (
        rd(12) as usize,
        rd(16) as usize,
        rd(20) as usize,
        rd(24) as usize,
        rd(28),
    );
    let (n_tokens, n_docs, n_sets) = (rd64(32), rd64(40), rd(48) as usize);
    if dim == 0 || dim > 1 << 16 || k == 0 || !(1..=2).contains(&pb) {
        return Err(bad(format!(
            "bad header (dim {dim}, K {k}, pooled index of {pb} bytes)"
        )));
    }
    if n_sub == 0 || !n_sub.is_multiple_of(2) || n_sub > dim {
        return Err(bad(format!(
            "{n_sub} subspaces per token for dimension {dim} (even, at most one per component)"
        )));
    }
    if b[52..HEADER].iter().any(|&x| x != 0) {
        return Err(bad("bad header (unused bytes set)".into()));
    }
    if n_sets == 0 || n_sets > b.len() / 8 {
        return Err(bad(format!(
            "{n_sets} level sets in a file of {} bytes",
            b.len()
        )));
    }
    if n_tokens > b.len() as u64 || n_docs > n_tokens.max(1) << 32 {
        return Err(bad(format!(
            "{n_tokens} tokens / {n_docs} documents in a file of {} bytes",
            b.len()
        )));
    }
    let n_tokens = n_tokens as usize;
    let lay = layout(dim, n_sub, pb, n_tokens, n_sets)
        .ok_or_else(|| bad("section sizes overflow".into()))?;
    if b.len() != lay.end + 4 {
        return Err(bad(format!(
            "{} bytes, the header implies {}",
            b.len(),
            lay.end + 4
        )));
    }
    if verify && !format::checksum_ok(b) {
        return Err(bad("checksum mismatch".into()));
    }
    let set_starts: Vec<usize> = (0..n_sets)
        .map(|i| rd64(lay.sets + 8 * i).min(u64::MAX >> 1) as usize)
        .collect();
    let ordered = set_starts.windows(2).all(|w| w[0] < w[1]);
    if set_starts[0] != 0 || !ordered || n_sets > 1 && set_starts[n_sets - 1] >= n_tokens {
        return Err(bad(format!(
            "level sets do not start at rows ascending from 0 below {n_tokens}"
        )));
    }
    let mut slots = Vec::with_capacity(n_sets);
    for i in 0..n_sets {
        let rates = &b[lay.rates + i * dim..lay.rates + (i + 1) * dim];
        let sum: usize = rates.iter().map(|&r| r as usize).sum();
        let packed = pack(rates).ok_or_else(|| {
            bad(format!(
                "level set {i}: a component rate is not 0, 1, 2 or 4 bits"
            ))
        })?;
        if sum != 4 * n_sub || packed.len() != n_sub {
            return Err(bad(format!(
                "level set {i}: component rates sum to {sum} bits in {} subspaces, the header \
                 gives {n_sub} subspaces of 4 bits",
                packed.len()
            )));
        }
        slots.push(packed);
    }
    let f32s = |off: usize, n: usize| -> &[f32] { bytemuck::cast_slice(&b[off..off + 4 * n]) };
    let finite = |l: &[f32], lim: f32| l.iter().all(|v| v.is_finite() && v.abs() <= lim);
    if !finite(f32s(lay.rotation, n_sets * dim * dim), 1.0 + 1e-3) {
        return Err(bad(
            "a rotation entry is not finite or not in [-1, 1]".into()
        ));
    }
    if !finite(f32s(lay.levels, n_sets * dim * TX_LEVELS), 1e6) {
        return Err(bad("a residual level is not finite".into()));
    }
    let (nd, sets) = (n_docs as usize, set_starts);
    Ok(FidSegment {
        bytes,
        dim,
        nbits: 0,
        cid_bytes: 0,
        n_centroids: k,
        codec_crc,
        n_tokens,
        n_docs: nd,
        nbits2: 0,
        set_starts: sets,
        off: Layout {
            sets: lay.sets,
            levels: lay.levels,
            levels2: lay.levels,
            cids: lay.pidx,
            scales: lay.scales,
            scales2: lay.scales,
            codes: lay.codes,
            codes2: lay.codes,
            end: lay.end,
        },
        tx: Some(Tx {
            n_sub,
            pidx_bytes: pb,
            lay,
            prep: (0..slots.len())
                .map(|_| std::sync::OnceLock::new())
                .collect(),
            slots,
        }),
    })
}

impl FidSegment {
    /// True for a transform-coded file (version 4).
    pub fn is_transform(&self) -> bool {
        self.tx.is_some()
    }
    /// File format version (1 to 4).
    pub fn version(&self) -> u32 {
        format::le_u32(self.as_bytes(), 8)
    }
    /// Residual bits per token of a transform-coded file (`4 * n_sub`; 0 for the others).
    pub fn transform_bits(&self) -> usize {
        self.tx.as_ref().map_or(0, |t| 4 * t.n_sub)
    }
    fn tx(&self) -> &Tx {
        self.tx.as_ref().expect("a transform-coded file")
    }
    /// The rotation of level set `set` (`dim x dim`, rows = components; transform-coded files).
    pub fn rotation(&self, set: usize) -> &[f32] {
        let (d, o) = (self.dim, self.tx().lay.rotation);
        bytemuck::cast_slice(&self.as_bytes()[o + set * d * d * 4..o + (set + 1) * d * d * 4])
    }
    /// Bits of each component of level set `set` (0, 1, 2 or 4; transform-coded files).
    pub fn rates(&self, set: usize) -> &[u8] {
        let (d, o) = (self.dim, self.tx().lay.rates);
        &self.as_bytes()[o + set * d..o + (set + 1) * d]
    }
    /// Levels of each component of level set `set` ([`TX_LEVELS`] slots per component, the
    /// first `2^rate` used; transform-coded files).
    pub fn component_levels(&self, set: usize) -> &[f32] {
        let (n, o) = (self.dim * TX_LEVELS, self.tx().lay.levels);
        bytemuck::cast_slice(&self.as_bytes()[o + set * n * 4..o + (set + 1) * n * 4])
    }
    pub(crate) fn slots(&self, set: usize) -> &[Vec<Slot>] {
        &self.tx().slots[set]
    }
    /// Index of token `t`'s pooled vector within its document (document-map order;
    /// transform-coded files).
    #[inline]
    pub fn pooled_index(&self, t: usize) -> usize {
        let tx = self.tx();
        let b = self.as_bytes();
        if tx.pidx_bytes == 1 {
            b[tx.lay.pidx + t] as usize
        } else {
            let o = tx.lay.pidx + 2 * t;
            u16::from_le_bytes([b[o], b[o + 1]]) as usize
        }
    }
    /// Level index of component `comp` of token `t` (transform-coded files; 0 for a 0-bit
    /// component).
    pub fn component_level(&self, t: usize, comp: usize) -> usize {
        let set = self.set_of(t);
        let n_sub = self.n_sub();
        for (s, sl) in self.slots(set).iter().enumerate() {
            for x in sl {
                if x.comp as usize == comp {
                    let nib = nibble(self.codes(), n_sub, t, s);
                    return ((nib >> x.shift) & ((1 << x.bits) - 1)) as usize;
                }
            }
        }
        0
    }

    /// `Corrupted` unless every token's pooled index is below its document's pooled count:
    /// `offsets` are the segment's document row offsets, `pooled(d)` the number of pooled
    /// vectors of document `d` (its document map). `path` names the file in the error.
    pub fn check_pooled(
        &self,
        offsets: &[u64],
        pooled: impl Fn(usize) -> Option<usize>,
        path: &Path,
    ) -> Result<()> {
        if self.tx.is_none() {
            return Ok(());
        }
        for (d, w) in offsets.windows(2).enumerate() {
            let (a, b) = (w[0] as usize, (w[1] as usize).min(self.n_tokens));
            if a >= b {
                continue;
            }
            let np = pooled(d).unwrap_or(0);
            if let Some(t) = (a..b).find(|&t| self.pooled_index(t) >= np) {
                return Err(LatixError::corrupted(
                    path,
                    format!(
                        "refinement file: token {t} names pooled vector {} of document {d}, \
                         which has {np}",
                        self.pooled_index(t)
                    ),
                ));
            }
        }
        Ok(())
    }

    /// The reconstructions of rows `a..b` (one document's, f32 row-major) of a transform-coded
    /// file from the document's decoded pooled vectors `pooled` (document-map order).
    pub fn decode_rows_transform(&self, pooled: &[f32], a: usize, b: usize) -> Result<Vec<f32>> {
        let dim = self.dim;
        if self.tx.is_none() || a > b || b > self.n_tokens {
            return Err(LatixError::invalid(
                "rows out of a transform-coded refinement file",
            ));
        }
        let np = pooled.len() / dim;
        let mut out = crate::error::try_vec((b - a) * dim, "decoded token vectors")?;
        let mut z = vec![0f32; dim];
        for t in a..b {
            let set = self.set_of(t);
            let (rot, lv) = (self.rotation(set), self.component_levels(set));
            z.iter_mut().for_each(|v| *v = 0.0);
            for (s, sl) in self.slots(set).iter().enumerate() {
                let nib = nibble(self.codes(), self.n_sub(), t, s);
                for x in sl {
                    let l = (nib >> x.shift) & ((1 << x.bits) - 1);
                    z[x.comp as usize] = lv[x.comp as usize * TX_LEVELS + l as usize];
                }
            }
            let p = self.pooled_index(t);
            if p >= np {
                return Err(LatixError::invalid(format!(
                    "token {t} names pooled vector {p} of a document of {np}"
                )));
            }
            let s = self.scale(t);
            let base = out.len();
            out.extend_from_slice(&pooled[p * dim..(p + 1) * dim]);
            for (j, &zj) in z.iter().enumerate() {
                if zj != 0.0 {
                    let row = &rot[j * dim..(j + 1) * dim];
                    for (o, &r) in out[base..].iter_mut().zip(row) {
                        *o += s * zj * r;
                    }
                }
            }
        }
        Ok(out)
    }
}

/// The 4-bit code of subspace `s` of row `t` in block-layout `codes` of `n_sub` subspaces.
#[inline]
pub(crate) fn nibble(codes: &[u8], n_sub: usize, t: usize, s: usize) -> u8 {
    let (blk, lane) = (t / BLOCK, t % BLOCK);
    (codes[blk * n_sub * 16 + s * 16 + lane % 16] >> (4 * (lane / 16))) & 15
}

/// The rotation, rates and levels fitted on a residual sample.
struct Quantiser {
    /// `dim x dim`, rows = components (descending variance).
    rotation: Vec<f32>,
    rates: Vec<u8>,
    /// `dim * TX_LEVELS`.
    levels: Vec<f32>,
    /// Per component: the cutoffs between its levels (midpoints).
    cuts: Vec<Vec<f32>>,
    slots: Vec<Vec<Slot>>,
}

/// Mean squared error of quantising the sorted values `x` to `levels` (nearest level).
fn distortion(x: &[f32], levels: &[f32]) -> f64 {
    let cuts: Vec<f32> = levels.windows(2).map(|w| 0.5 * (w[0] + w[1])).collect();
    let s: f64 = x
        .iter()
        .map(|&v| {
            let l = cuts.partition_point(|&c| c <= v);
            let e = (v - levels[l]) as f64;
            e * e
        })
        .sum();
    s / x.len().max(1) as f64
}

impl Quantiser {
    /// Fits the quantiser on `sample` (residual rows of `dim`) for a budget of `bits` per token.
    fn fit(sample: &[f32], dim: usize, bits: usize) -> Result<Quantiser> {
        let n = sample.len() / dim.max(1);
        // Covariance of the residuals (centred): Gram of the sample's columns.
        let mut mean = vec![0f64; dim];
        for r in sample.chunks_exact(dim) {
            mean.iter_mut().zip(r).for_each(|(m, &v)| *m += v as f64);
        }
        mean.iter_mut().for_each(|m| *m /= n.max(1) as f64);
        let mut cols = vec![0f32; dim * n];
        for (t, r) in sample.chunks_exact(dim).enumerate() {
            for (d, &v) in r.iter().enumerate() {
                cols[d * n + t] = v - mean[d] as f32;
            }
        }
        let mut cov = vec![0f64; dim * dim];
        if n > 0 {
            let panels = Panels::new(&cols, n);
            let np = panels.n_padded();
            let mut g = vec![0f32; dim * np];
            crate::compressed::linalg::gram_lower(&cols, &panels, &mut g);
            for i in 0..dim {
                for j in 0..=i {
                    cov[i * dim + j] = g[i * np + j] as f64 / n as f64;
                }
            }
        }
        drop(cols);
        let (_, vecs) = sym_eigen(&cov, dim);
        let rotation: Vec<f32> = vecs.iter().map(|&v| v as f32).collect();
        if rotation.iter().any(|v| !v.is_finite()) {
            return Err(LatixError::invalid(
                "the residuals' principal components did not converge",
            ));
        }
        // The sample in rotated coordinates, one column per component, sorted.
        let z = rotate(sample, &rotation, dim);
        let cols: Vec<Vec<f32>> = (0..dim)
            .into_par_iter()
            .map(|j| {
                let mut c: Vec<f32> = z.chunks_exact(dim).map(|r| r[j]).collect();
                c.sort_by(f32::total_cmp);
                c
            })
            .collect();
        drop(z);
        // Levels and distortion of each component at each rate.
        const RATES: [u8; 4] = [0, 1, 2, 4];
        let fits: Vec<[(Vec<f32>, f64); 4]> = cols
            .par_iter()
            .map(|c| {
                let e0 =
                    c.iter().map(|&v| (v as f64) * (v as f64)).sum::<f64>() / c.len().max(1) as f64;
                let fit = |r: u8| -> (Vec<f32>, f64) {
                    if c.is_empty() {
                        return (vec![0.0; 1 << r], 0.0);
                    }
                    let lv = lloyd_max(c, r as usize);
                    let d = distortion(c, &lv);
                    (lv, d)
                };
                [(vec![0.0], e0), fit(1), fit(2), fit(4)]
            })
            .collect();
        // Reverse water-filling, greedy: the move (one component to its next rate) of the most
        // distortion saved per bit that fits in the budget, until the budget is spent.
        let mut ri = vec![0usize; dim]; // index into RATES
        let mut left = bits as i64;
        while left > 0 {
            let mut best: Option<(f64, usize)> = None;
            for j in 0..dim {
                let r = ri[j];
                if r + 1 >= RATES.len() {
                    continue;
                }
                let cost = (RATES[r + 1] - RATES[r]) as i64;
                if cost > left {
                    continue;
                }
                let gain = (fits[j][r].1 - fits[j][r + 1].1) / cost as f64;
                if best.is_none_or(|(g, _)| gain > g) {
                    best = Some((gain, j));
                }
            }
            let Some((_, j)) = best else { break };
            left -= (RATES[ri[j] + 1] - RATES[ri[j]]) as i64;
            ri[j] += 1;
        }
        let rates: Vec<u8> = ri.iter().map(|&r| RATES[r]).collect();
        let mut levels = vec![0f32; dim * TX_LEVELS];
        let mut cuts = Vec::with_capacity(dim);
        for j in 0..dim {
            let lv: &[f32] = if rates[j] == 0 {
                &[]
            } else {
                &fits[j][ri[j]].0
            };
            levels[j * TX_LEVELS..j * TX_LEVELS + lv.len()].copy_from_slice(lv);
            cuts.push(lv.windows(2).map(|w| 0.5 * (w[0] + w[1])).collect());
        }
        let slots = pack(&rates).expect("rates of {0, 1, 2, 4}");
        Ok(Quantiser {
            rotation,
            rates,
            levels,
            cuts,
            slots,
        })
    }

    /// Level indices of the rotated residual `z` (per component) and its stored scale.
    fn encode(&self, z: &[f32], idx: &mut [u8]) -> u16 {
        let (mut rp, mut pp) = (0f64, 0f64);
        for (j, (&v, l)) in z.iter().zip(idx.iter_mut()).enumerate() {
            if self.rates[j] == 0 {
                *l = 0;
                continue;
            }
            *l = self.cuts[j].partition_point(|&c| c <= v) as u8;
            let p = self.levels[j * TX_LEVELS + *l as usize];
            rp += (v * p) as f64;
            pp += (p * p) as f64;
        }
        let s = if pp > 0.0 { rp / pp } else { 1.0 };
        (s.clamp(0.0, 3.99) * SCALE_ONE as f64).round() as u16
    }

    /// Writes token `lane`'s level indices into its block (`n_sub` subspaces).
    fn put(&self, out: &mut [u8], idx: &[u8], lane: usize) {
        for (s, sl) in self.slots.iter().enumerate() {
            let mut nib = 0u8;
            for x in sl {
                nib |= idx[x.comp as usize] << x.shift;
            }
            out[s * 16 + lane % 16] |= nib << (4 * (lane / 16));
        }
    }
}

/// `rows` (`n x dim`) rotated: `z = R r` per row (`rotation`: `dim x dim`, rows = components).
fn rotate(rows: &[f32], rotation: &[f32], dim: usize) -> Vec<f32> {
    let n = rows.len() / dim.max(1);
    let panels = Panels::new(rotation, dim);
    let np = panels.n_padded();
    let mut out = vec![0f32; n * dim];
    const PIECE: usize = 512;
    out.par_chunks_mut(PIECE * dim)
        .zip(rows.par_chunks(PIECE * dim))
        .for_each(|(o, x)| {
            let m = x.len() / dim;
            let mut buf = vec![0f32; m * np];
            scores(x, &panels, &mut buf);
            for (r, row) in o.chunks_exact_mut(dim).enumerate() {
                row.copy_from_slice(&buf[r * np..r * np + dim]);
            }
        });
    out
}

/// Rows `a..b` of `rows` as f32.
fn rows_f32(rows: DocVectors<'_>, dim: usize, a: usize, b: usize) -> Vec<f32> {
    match rows {
        DocVectors::F32(v) => v[a * dim..b * dim].to_vec(),
        DocVectors::F16(v) => v[a * dim..b * dim].iter().map(|h| h.to_f32()).collect(),
    }
}

/// Residuals of rows `a..b` of document `d` (rows `x`, f32) against its decoded pooled vectors
/// `pooled` (document-map order): each token's nearest pooled vector (Euclidean) and `x - a_p`,
/// written to `res`, the indices to `pidx`.
fn residuals(x: &[f32], pooled: &[f32], dim: usize, res: &mut [f32], pidx: &mut [u16]) {
    let np = pooled.len() / dim;
    if np == 0 {
        res.copy_from_slice(x);
        pidx.fill(0);
        return;
    }
    let panels = Panels::new(pooled, dim);
    let half: Vec<f32> = pooled
        .chunks_exact(dim)
        .map(|r| 0.5 * r.iter().map(|v| v * v).sum::<f32>())
        .collect();
    let mut best = vec![(0u32, 0f32); x.len() / dim];
    argmax_rows(x, &panels, &half, &mut best);
    for (t, &(p, _)) in best.iter().enumerate() {
        let p = p as usize;
        pidx[t] = p as u16;
        let (xr, ar) = (&x[t * dim..(t + 1) * dim], &pooled[p * dim..(p + 1) * dim]);
        for ((o, &xv), &av) in res[t * dim..(t + 1) * dim].iter_mut().zip(xr).zip(ar) {
            *o = xv - av;
        }
    }
}

/// Encodes a segment's original tokens (`rows`, documents `offsets[d]..offsets[d + 1]`) into a
/// transform-coded file of `bits` residual bits per token ([`transform_bits`]), against the
/// decoded pooled vectors of the segment's inverted lists `ivf` (encoded with `codec`,
/// identity `codec_crc`). Runs in the current rayon pool.
pub fn build_transform(
    codec: &Codec,
    codec_crc: u32,
    rows: DocVectors<'_>,
    offsets: &[u64],
    ivf: &IvfSegment,
    bits: usize,
) -> Result<FidSegment> {
    let dim = codec.dim();
    let n = rows.len() / dim.max(1);
    let n_docs = offsets.len().saturating_sub(1);
    if offsets.last().copied().unwrap_or(0) as usize != n || ivf.n_docs() != n_docs {
        return Err(LatixError::invalid(
            "a transform-coded tier needs the segment's document offsets and its inverted lists",
        ));
    }
    if bits == 0 || !bits.is_multiple_of(8) || bits > 4 * dim {
        return Err(LatixError::invalid(format!(
            "{bits} residual bits per token at dimension {dim} (a multiple of 8, at most 4 per \
             component)"
        )));
    }
    let pooled_of = |d: usize| crate::compressed::state::decode_doc(codec, ivf, d as u32);
    let doc_rows = |d: usize| (offsets[d] as usize, offsets[d + 1] as usize);
    // The sample: every step-th token, with its document's pooled vectors.
    let step = n.div_ceil(SAMPLE).max(1);
    let parts: Vec<Vec<f32>> = (0..n_docs)
        .into_par_iter()
        .filter_map(|d| {
            let (a, b) = doc_rows(d);
            let first = a.div_ceil(step) * step;
            if first >= b {
                return None;
            }
            let x = rows_f32(rows, dim, a, b);
            let mut res = vec![0f32; x.len()];
            let mut pidx = vec![0u16; b - a];
            residuals(&x, &pooled_of(d), dim, &mut res, &mut pidx);
            Some(
                (first..b)
                    .step_by(step)
                    .flat_map(|t| res[(t - a) * dim..(t - a + 1) * dim].to_vec())
                    .collect(),
            )
        })
        .collect();
    let sample: Vec<f32> = parts.concat();
    drop(parts);
    let q = Quantiser::fit(&sample, dim, bits)?;
    drop(sample);
    let n_sub = bits / 4;
    let bb = n_sub * 16;
    let mut pidx = crate::error::try_filled(n, 0u16, "the pooled indices of a refinement file")?;
    let mut scales = crate::error::try_filled(n, 0u16, "the scales of a refinement file")?;
    let nblk = n.div_ceil(BLOCK);
    let mut codes = crate::error::try_filled(nblk * bb, 0u8, "the codes of a refinement file")?;
    let max_pooled = std::sync::atomic::AtomicUsize::new(0);
    pidx.par_chunks_mut(CHUNK)
        .zip(scales.par_chunks_mut(CHUNK))
        .zip(codes.par_chunks_mut(CHUNK / BLOCK * bb))
        .enumerate()
        .for_each(|(ci, ((pid_out, scale_out), code_out))| {
            let a = ci * CHUNK;
            let b = a + pid_out.len();
            let x = rows_f32(rows, dim, a, b);
            let mut res = vec![0f32; x.len()];
            // Documents overlapping rows a..b.
            let mut d = offsets
                .partition_point(|&o| o as usize <= a)
                .saturating_sub(1);
            while d < n_docs && (offsets[d] as usize) < b {
                let (da, db) = doc_rows(d);
                let (lo, hi) = (da.max(a), db.min(b));
                if lo < hi {
                    let pooled = pooled_of(d);
                    max_pooled.fetch_max(pooled.len() / dim, std::sync::atomic::Ordering::Relaxed);
                    residuals(
                        &x[(lo - a) * dim..(hi - a) * dim],
                        &pooled,
                        dim,
                        &mut res[(lo - a) * dim..(hi - a) * dim],
                        &mut pid_out[lo - a..hi - a],
                    );
                }
                d += 1;
            }
            let z = rotate(&res, &q.rotation, dim);
            let mut idx = vec![0u8; dim];
            for (t, zt) in z.chunks_exact(dim).enumerate() {
                scale_out[t] = q.encode(zt, &mut idx);
                let (blk, lane) = (t / BLOCK, t % BLOCK);
                q.put(&mut code_out[blk * bb..(blk + 1) * bb], &idx, lane);
            }
        });
    if max_pooled.into_inner() > 1 << 16 {
        return Err(LatixError::invalid(
            "a document of more than 65536 pooled vectors in a transform-coded tier",
        ));
    }
    assemble(TxParts {
        dim,
        n_centroids: codec.n_centroids(),
        codec_crc,
        n_docs,
        n_sub,
        set_starts: &[0],
        rotation: &q.rotation,
        rates: &q.rates,
        levels: &q.levels,
        pidx: &pidx,
        scales: &scales,
        codes: &codes,
    })
}

/// A query's quantised tables for one level set of a transform-coded file.
pub(crate) struct TxTables {
    /// Per query token: `n_sub * 16` entries.
    pub luts: Vec<u8>,
    /// Per query token: sum of the subspace minima, and the quantisation step.
    pub bias: Vec<f32>,
    pub step: Vec<f32>,
    pub n_sub: usize,
}

impl TxTables {
    /// Tables of the query `q` (`nq * dim`) for level set `set` of `seg`: each query token
    /// rotated once (`R q`), then per subspace the 16 sums of its components' `q'_j * level`.
    pub(crate) fn new(q: &[f32], seg: &FidSegment, set: usize) -> TxTables {
        let dim = seg.dim();
        let prep = seg.tx().prep[set].get_or_init(|| QueryPrep::new(seg, set));
        let nsub = prep.sub_slots.len();
        let nq = q.len() / dim.max(1);
        // The query's few rows: one GEMM on this thread (same products as `rotate`).
        let np = prep.panels.n_padded();
        let mut qr = vec![0f32; nq * np];
        scores(q, &prep.panels, &mut qr);
        let mut luts = vec![0u8; nq * nsub * 16];
        let (mut bias, mut step) = (Vec::with_capacity(nq), Vec::with_capacity(nq));
        let mut lf = vec![[0f32; 16]; nsub];
        let mut mins = vec![0f32; nsub];
        for i in 0..nq {
            let qi = &qr[i * np..i * np + dim];
            let (mut b0, mut range) = (0f32, 0f32);
            for (s, (row, &(x0, x1))) in lf.iter_mut().zip(&prep.sub_slots).enumerate() {
                // Slot by slot, in subspace order: the same products and sums as one code at a
                // time, 16 codes wide.
                *row = [0f32; 16];
                for x in x0 as usize..x1 as usize {
                    let w = qi[prep.comp[x] as usize];
                    for (e, &l) in row.iter_mut().zip(&prep.expanded[x]) {
                        *e += w * l;
                    }
                }
                let (mut lo, mut hi) = (row[0], row[0]);
                for &v in &row[1..] {
                    lo = lo.min(v);
                    hi = hi.max(v);
                }
                mins[s] = lo;
                b0 += lo;
                range = range.max(hi - lo);
            }
            let sc = if range > 0.0 { range / 255.0 } else { 1.0 };
            let out = &mut luts[i * nsub * 16..(i + 1) * nsub * 16];
            for ((o16, row), &lo) in out.chunks_exact_mut(16).zip(&lf).zip(&mins) {
                for (o, &v) in o16.iter_mut().zip(row) {
                    // `((v - lo) / sc + 0.5).clamp(0, 255)`, NaN to 0, truncated: written with
                    // selects (NaN fails both comparisons) so that the loop vectorises.
                    let y = (v - lo) / sc + 0.5;
                    let y = if y >= 0.0 { y } else { 0.0 };
                    let y = if y < 255.0 { y } else { 255.0 };
                    // SAFETY: 0 <= y <= 255 (NaN mapped to 0 above).
                    *o = unsafe { y.to_int_unchecked::<i32>() } as u8;
                }
            }
            bias.push(b0);
            step.push(sc);
        }
        TxTables {
            luts,
            bias,
            step,
            n_sub: nsub,
        }
    }

    /// Largest error of one token's residual term (before its scale) from table quantisation,
    /// for query token `i`: half a step per subspace.
    pub(crate) fn max_error(&self, i: usize) -> f32 {
        0.5 * self.step[i] * self.n_sub as f32
    }
}

/// MaxSim of the query of `fq` over rows `a..b` (one document) of the transform-coded `seg`:
/// per query token `i`, the best over the rows of `pooled[i * np + p_t] + s_t * residual term`
/// (`pooled`: the codes' scores of the document's `np` pooled vectors for each query token,
/// query-token-major, as refinement computes them), summed. The rows are scored with the
/// tables of the level set of row `a` (rows past it are left out: never a document's). `simd`:
/// AVX2 was detected ([`crate::simd::avx2`]).
pub fn score_doc_transform(
    fq: &super::FidQuery,
    pooled: &[f32],
    np: usize,
    seg: &FidSegment,
    a: usize,
    b: usize,
    simd: bool,
) -> f32 {
    #[cfg(target_arch = "x86_64")]
    {
        if simd {
            // SAFETY: `simd` is true only when AVX2 and FMA were detected at run time.
            return unsafe { score_tx_avx2(fq, pooled, np, seg, a, b) };
        }
    }
    score_tx_body(fq, pooled, np, seg, a, b, false)
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn score_tx_avx2(
    fq: &super::FidQuery,
    pooled: &[f32],
    np: usize,
    seg: &FidSegment,
    a: usize,
    b: usize,
) -> f32 {
    score_tx_body(fq, pooled, np, seg, a, b, true)
}

#[inline(always)]
fn score_tx_body(
    fq: &super::FidQuery,
    pooled: &[f32],
    np: usize,
    seg: &FidSegment,
    a: usize,
    b: usize,
    simd: bool,
) -> f32 {
    if b <= a || np == 0 || !seg.is_transform() {
        return 0.0;
    }
    let set = seg.set_of(a);
    let b = b.min(seg.set_rows(set).1);
    if b <= a {
        return 0.0;
    }
    let t = fq.tx_tables(seg, set);
    let nsub = t.n_sub;
    let bb = nsub * 16;
    let codes = seg.codes();
    let (b0, b1) = (a / BLOCK, (b - 1) / BLOCK + 1);
    let nlanes = (b1 - b0) * BLOCK;
    let mut pid = vec![0u32; nlanes];
    let mut rs = vec![0f32; nlanes];
    for (l, (p, r)) in pid.iter_mut().zip(rs.iter_mut()).enumerate() {
        let t = b0 * BLOCK + l;
        if t >= a && t < b {
            *p = seg.pooled_index(t).min(np - 1) as u32;
            *r = seg.scale(t);
        }
    }
    let (lo_mask, hi_mask) = (a - b0 * BLOCK, b - b0 * BLOCK);
    let mut acc = [0u16; BLOCK];
    let mut sum;
    let mut v = [0f32; BLOCK];
    let mut total = 0f32;
    for i in 0..fq.n_query_tokens() {
        let lut = &t.luts[i * bb..(i + 1) * bb];
        let row = &pooled[i * np..(i + 1) * np];
        let (bias, step) = (t.bias[i], t.step[i]);
        let mut best = [f32::NEG_INFINITY; 8];
        for (k, blk) in (b0..b1).enumerate() {
            let block = &codes[blk * bb..(blk + 1) * bb];
            sum = [0f32; BLOCK];
            let mut s0 = 0;
            while s0 < nsub {
                let s1 = (s0 + KERNEL_SUB).min(nsub);
                scan_block(
                    &lut[s0 * 16..s1 * 16],
                    &block[s0 * 16..s1 * 16],
                    s1 - s0,
                    simd,
                    &mut acc,
                );
                for (o, &x) in sum.iter_mut().zip(&acc) {
                    *o += x as f32;
                }
                s0 = s1;
            }
            let ids: &[u32; BLOCK] = pid[k * BLOCK..(k + 1) * BLOCK].try_into().expect("block");
            for (o, &p) in v.iter_mut().zip(ids) {
                *o = row[p as usize];
            }
            let r: &[f32; BLOCK] = rs[k * BLOCK..(k + 1) * BLOCK].try_into().expect("block");
            for ((o, &x), &r) in v.iter_mut().zip(&sum).zip(r) {
                *o += r * (bias + step * x);
            }
            fold_block_max(&mut v, k * BLOCK, lo_mask, hi_mask, &mut best);
        }
        total += best.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    }
    total
}

/// Float oracle of [`score_doc_transform`]: MaxSim of `q` (`nq * dim`) over the reconstructions
/// of rows `a..b` (one document) from its decoded pooled vectors `pooled_rows` (document-map
/// order), every dot product in f32. NaN when the rows do not decode.
pub fn score_doc_transform_scalar(
    q: &[f32],
    pooled_rows: &[f32],
    seg: &FidSegment,
    a: usize,
    b: usize,
) -> f32 {
    if b <= a {
        return 0.0;
    }
    let dim = seg.dim();
    let Ok(rows) = seg.decode_rows_transform(pooled_rows, a, b) else {
        return f32::NAN;
    };
    q.chunks_exact(dim)
        .map(|qi| {
            rows.chunks_exact(dim)
                .map(|r| r.iter().zip(qi).map(|(x, y)| x * y).sum::<f32>())
                .fold(f32::NEG_INFINITY, f32::max)
        })
        .sum()
}
