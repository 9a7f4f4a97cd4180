//! MaxSim of a query against a document's refinement data, without decoding: per query token a
//! quantised table of `q_s . level` over each 4-bit subspace (the tables of
//! [`crate::compressed::fastscan`], built from the file's residual levels instead of PQ
//! codewords), the block kernel [`scan_block`] (AVX2 `pshufb`, scalar oracle) summing a block of
//! 32 tokens' residual terms, plus each token's centroid score read from the query's centroid
//! scores. [`score_doc_scalar`] is the float oracle the kernel is tested against.

use super::{n_subspaces, FidSegment};
use crate::compressed::fastscan::{scan_block, BLOCK};

/// A query's quantised tables for one residual stage's levels.
struct StageTables {
    /// Per query token: `n_sub * 16` quantised entries.
    luts: Vec<u8>,
    /// Per query token: sum of the subspace minima, and the quantisation step.
    bias: Vec<f32>,
    scale: Vec<f32>,
    n_sub: usize,
}

impl StageTables {
    /// Tables of the query `q` (`nq * dim` f32) for levels `lv` (`2^nbits` per dimension).
    fn new(q: &[f32], dim: usize, nbits: usize, lv: &[f32]) -> StageTables {
        let nl = 1usize << nbits;
        let per = 4 / nbits;
        let mask = (1usize << nbits) - 1;
        let nsub = n_subspaces(dim, nbits);
        let nq = q.len() / dim.max(1);
        let mut luts = vec![0u8; nq * nsub * 16];
        let mut bias = Vec::with_capacity(nq);
        let mut scale = Vec::with_capacity(nq);
        let mut lf = vec![[0f32; 16]; nsub];
        for (i, qi) in q.chunks_exact(dim).enumerate() {
            let (mut b0, mut range) = (0f32, 0f32);
            let mut mins = vec![0f32; nsub];
            for (s, row) in lf.iter_mut().enumerate() {
                // t[j][l] = q_d * level_d[l] for the subspace's dimensions d = s * per + j.
                let mut t = [[0f32; 4]; 4];
                for (j, tj) in t.iter_mut().enumerate().take(per) {
                    let d = s * per + j;
                    if d < dim {
                        for l in 0..nl {
                            tj[l] = qi[d] * lv[d * nl + l];
                        }
                    }
                }
                for (code, e) in row.iter_mut().enumerate() {
                    let mut v = 0f32;
                    for (j, tj) in t.iter().enumerate().take(per) {
                        v += tj[(code >> (j * nbits)) & mask];
                    }
                    *e = v;
                }
                let (mut lo, mut hi) = (row[0], row[0]);
                for &v in &row[1..] {
                    lo = if v < lo { v } else { lo };
                    hi = if v > hi { v } else { hi };
                }
                mins[s] = lo;
                b0 += lo;
                range = range.max(hi - lo);
            }
            let sc = if range > 0.0 { range / 255.0 } else { 1.0 };
            let inv = 1.0 / sc;
            let out = &mut luts[i * nsub * 16..(i + 1) * nsub * 16];
            for (s, row) in lf.iter().enumerate() {
                for (c, &v) in row.iter().enumerate() {
                    let y = ((v - mins[s]) * inv + 0.5).clamp(0.0, 255.0);
                    out[s * 16 + c] = if y.is_nan() { 0 } else { y as u8 };
                }
            }
            bias.push(b0);
            scale.push(sc);
        }
        StageTables {
            luts,
            bias,
            scale,
            n_sub: nsub,
        }
    }

    /// Largest error of one token's residual term (before its scale) from table quantisation,
    /// for query token `i`: half a step per subspace.
    fn max_error(&self, i: usize) -> f32 {
        0.5 * self.scale[i] * self.n_sub as f32
    }
}

/// A query's tables for one level set (both stages when the file has two).
struct SetTables {
    t1: StageTables,
    t2: Option<StageTables>,
}

/// A query's tables for one refinement file's levels: one set of tables per level set of the
/// file, built when a document of that set is first scored (a merged file holds one level set
/// per source; a query scores few of them).
pub struct FidQuery {
    q: Vec<f32>,
    nq: usize,
    sets: Vec<std::sync::OnceLock<SetTables>>,
    /// The tables of each level set of a transform-coded file (empty for the others).
    tx: Vec<std::sync::OnceLock<super::transform::TxTables>>,
}

impl FidQuery {
    /// Tables of the query `q` (`nq * dim` f32) for the levels of `seg`.
    pub fn new(q: &[f32], seg: &FidSegment) -> FidQuery {
        let (n, ntx) = if seg.is_transform() {
            (0, seg.n_sets())
        } else {
            (seg.n_sets(), 0)
        };
        FidQuery {
            q: q.to_vec(),
            nq: q.len() / seg.dim().max(1),
            sets: (0..n).map(|_| Default::default()).collect(),
            tx: (0..ntx).map(|_| Default::default()).collect(),
        }
    }

    /// The tables of level set `i` of the transform-coded `seg` (the file the query was made
    /// for): the query rotated once per level set.
    pub(crate) fn tx_tables(&self, seg: &FidSegment, i: usize) -> &super::transform::TxTables {
        self.tx[i].get_or_init(|| super::transform::TxTables::new(&self.q, seg, i))
    }

    /// Largest error of one token's residual term (before its scale) from the table
    /// quantisation of a transform-coded file, for query token `i` and level set `set`.
    pub fn max_error_transform(&self, seg: &FidSegment, set: usize, i: usize) -> f32 {
        self.tx_tables(seg, set).max_error(i)
    }

    /// The tables of level set `i` of `seg` (the file the query was made for).
    fn tables(&self, seg: &FidSegment, i: usize) -> &SetTables {
        self.sets[i].get_or_init(|| {
            let dim = seg.dim();
            SetTables {
                t1: StageTables::new(&self.q, dim, seg.nbits(), seg.set_levels(i)),
                t2: match seg.nbits2() {
                    0 => None,
                    nb => Some(StageTables::new(&self.q, dim, nb, seg.set_levels2(i))),
                },
            }
        })
    }

    /// Query tokens.
    pub fn n_query_tokens(&self) -> usize {
        self.nq
    }

    /// Largest error of one token's first-stage residual term (before its scale) from table
    /// quantisation, for query token `i` and the rows of level set `set` of `seg`: half a step
    /// per subspace.
    pub fn max_error(&self, seg: &FidSegment, set: usize, i: usize) -> f32 {
        self.tables(seg, set).t1.max_error(i)
    }

    /// The same for the second stage's term (0 without a second stage).
    pub fn max_error2(&self, seg: &FidSegment, set: usize, i: usize) -> f32 {
        self.tables(seg, set)
            .t2
            .as_ref()
            .map_or(0.0, |t| t.max_error(i))
    }
}

/// MaxSim of the query of `fq` over rows `a..b` of `seg`: the sum over query tokens of the best
/// `cs[i * stride + cid] + residual term` (the query token's centroid scores in row `i` of `cs`).
/// 0 for an empty range. The rows are scored with the tables of the level set of row `a`; those
/// past its set (never a document's, as opening a file in an index checks) are left out. `simd`: AVX2 was detected (see [`crate::simd::avx2`]).
pub fn score_doc(
    fq: &FidQuery,
    cs: &[f32],
    stride: usize,
    seg: &FidSegment,
    a: usize,
    b: usize,
    simd: bool,
) -> f32 {
    #[cfg(target_arch = "x86_64")]
    {
        if simd {
            // SAFETY: `simd` is true only when AVX2 and FMA were detected at run time, the
            // features `score_doc_avx2` enables.
            return unsafe { score_doc_avx2(fq, cs, stride, seg, a, b) };
        }
    }
    score_doc_body(fq, cs, stride, seg, a, b, false)
}

/// [`score_doc_body`] compiled for AVX2, so its fixed-length loops run 8 lanes wide.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn score_doc_avx2(
    fq: &FidQuery,
    cs: &[f32],
    stride: usize,
    seg: &FidSegment,
    a: usize,
    b: usize,
) -> f32 {
    score_doc_body(fq, cs, stride, seg, a, b, true)
}

#[inline(always)]
fn score_doc_body(
    fq: &FidQuery,
    cs: &[f32],
    stride: usize,
    seg: &FidSegment,
    a: usize,
    b: usize,
    simd: bool,
) -> f32 {
    if b <= a || fq.sets.is_empty() {
        return 0.0;
    }
    let set = seg.set_of(a);
    let b = b.min(seg.set_rows(set).1);
    if b <= a {
        return 0.0;
    }
    let tabs = fq.tables(seg, set);
    let (t1, t2) = (&tabs.t1, tabs.t2.as_ref());
    let nsub = t1.n_sub;
    let bb = nsub * 16;
    let codes = seg.codes();
    // The second stage, when both the file and the tables have one (tables are built per file).
    let stage2 = t2.filter(|t| t.n_sub == seg.n_sub2() && seg.nbits2() > 0);
    let nsub2 = stage2.map_or(0, |t| t.n_sub);
    let bb2 = nsub2 * 16;
    let codes2 = seg.codes2();
    let (b0, b1) = (a / BLOCK, (b - 1) / BLOCK + 1);
    // Centroid ids of the blocks' lanes (lanes outside a..b masked below).
    let nlanes = (b1 - b0) * BLOCK;
    let mut cid = vec![0u32; nlanes];
    let mut rs = vec![0f32; nlanes];
    let mut rs2 = vec![0f32; if stage2.is_some() { nlanes } else { 0 }];
    for (l, (c, r)) in cid.iter_mut().zip(rs.iter_mut()).enumerate() {
        let t = b0 * BLOCK + l;
        if t >= a && t < b {
            *c = seg.cid(t);
            *r = seg.scale(t);
            if let Some(r2) = rs2.get_mut(l) {
                *r2 = seg.scale2(t);
            }
        }
    }
    let (lo_mask, hi_mask) = (a - b0 * BLOCK, b - b0 * BLOCK);
    let mut acc = [0u16; BLOCK];
    let mut acc2 = [0u16; BLOCK];
    let mut v = [0f32; BLOCK];
    let mut total = 0f32;
    for i in 0..fq.n_query_tokens() {
        let lut = &t1.luts[i * bb..(i + 1) * bb];
        let row = &cs[i * stride..(i + 1) * stride];
        let (bias, scale) = (t1.bias[i], t1.scale[i]);
        let mut best = [f32::NEG_INFINITY; 8];
        for (k, blk) in (b0..b1).enumerate() {
            scan_block(lut, &codes[blk * bb..(blk + 1) * bb], nsub, simd, &mut acc);
            let ids: &[u32; BLOCK] = cid[k * BLOCK..(k + 1) * BLOCK].try_into().expect("block");
            for (o, &c) in v.iter_mut().zip(ids) {
                *o = row[c as usize];
            }
            let r: &[f32; BLOCK] = rs[k * BLOCK..(k + 1) * BLOCK].try_into().expect("block");
            for ((o, &x), &r) in v.iter_mut().zip(&acc).zip(r) {
                *o += r * (bias + scale * x as f32);
            }
            if let Some(t) = stage2 {
                let lut2 = &t.luts[i * bb2..(i + 1) * bb2];
                scan_block(
                    lut2,
                    &codes2[blk * bb2..(blk + 1) * bb2],
                    nsub2,
                    simd,
                    &mut acc2,
                );
                let (bias2, scale2) = (t.bias[i], t.scale[i]);
                let r2: &[f32; BLOCK] = rs2[k * BLOCK..(k + 1) * BLOCK].try_into().expect("block");
                for ((o, &x), &r) in v.iter_mut().zip(&acc2).zip(r2) {
                    *o += r * (bias2 + scale2 * x as f32);
                }
            }
            fold_block_max(&mut v, k * BLOCK, lo_mask, hi_mask, &mut best);
        }
        total += best.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    }
    total
}

/// Folds one block of scores `v` (rows `base..base + BLOCK` of a document's rows) into the
/// eight running maxima `best`, rows outside `lo_mask..hi_mask` (the document's own rows in its
/// block-aligned stretch) masked out first. Shared by every tier's block scorer.
#[inline(always)]
pub(super) fn fold_block_max(
    v: &mut [f32; BLOCK],
    base: usize,
    lo_mask: usize,
    hi_mask: usize,
    best: &mut [f32; 8],
) {
    if base < lo_mask {
        v[..lo_mask - base].fill(f32::NEG_INFINITY);
    }
    if base + BLOCK > hi_mask {
        v[hi_mask.saturating_sub(base)..].fill(f32::NEG_INFINITY);
    }
    for c in v.chunks_exact(8) {
        for (m, &x) in best.iter_mut().zip(c) {
            *m = if x > *m { x } else { *m };
        }
    }
}

/// Float oracle of [`score_doc`]: MaxSim over the reconstructed vectors `c + r^` of rows `a..b`
/// (`centroids`: the codec's, `n_centroids * dim`), every dot product in f32.
pub fn score_doc_scalar(q: &[f32], centroids: &[f32], seg: &FidSegment, a: usize, b: usize) -> f32 {
    if b <= a {
        return 0.0;
    }
    let dim = seg.dim();
    let rows = match seg.decode_rows(centroids, a, b) {
        Ok(r) => r,
        Err(_) => return f32::NAN,
    };
    q.chunks_exact(dim)
        .map(|qi| {
            rows.chunks_exact(dim)
                .map(|r| r.iter().zip(qi).map(|(x, y)| x * y).sum::<f32>())
                .fold(f32::NEG_INFINITY, f32::max)
        })
        .sum()
}
