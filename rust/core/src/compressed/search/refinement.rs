//! Code-level MaxSim of short lists: [`refine`] (every token of each candidate from its codes)
//! and [`centroid_interaction`] (PLAID's pruning stage over many candidates).

use super::*;
use crate::compressed::codec::Codec;
use crate::compressed::fastscan::BLOCK;
use crate::compressed::ivf::IvfSegment;
use crate::compressed::linalg::scores_half;
use crate::error::{LatixError, Result};

/// Documents re-scored by [`refine`] by default: at least this many, and at least `k`.
/// Measured on SciFact's 809 train queries (K 2048, nprobe 8, 1 thread): recall@10 against
/// exact search 0.780 without refinement, 0.853 / 0.870 / 0.874 refining the best 16 / 24 / 32,
/// at p50 1.07 / 1.49 / 1.80 / 2.07 ms: each refined document costs ~30 us (its ~120 tokens
/// against ~20 query tokens), so 16 keeps a SciFact query under 2 ms.
pub const REFINE_MIN: usize = 16;

/// Candidate generation's work per refined document, above which [`default_refine`] refines
/// more than [`REFINE_MIN`]. A query token scans `nprobe` lists of about `tokens / K` tokens
/// each, and refines each candidate's `tokens / documents` tokens, so refining `r` documents
/// costs `r * K / (nprobe * documents)` of the scan, whatever the document length: at
/// `r = nprobe * documents / (K * REFINE_SCAN_RATIO)` refinement stays near 4 % of the scan.
/// Chosen on train queries of the 100M-token scale index (420,697 documents, K 2048, nprobe
/// 8; benches/tune_scale.py, bench-results/tune-scale-100m.md): refining 64 instead of 16
/// lifts recall@10 against exact from 0.794 to 0.820 for 1.048x p50 (23.37 -> 24.49 ms,
/// bench-results/refine-scale.md), where 128 adds 0.008 for 1.07x; SciFact (5,183 documents)
/// and SciFact + 100k distractors (105,183), whose depth of 16 was chosen on their own train
/// queries, still get 16.
pub const REFINE_SCAN_RATIO: usize = 26;

/// Default refinement depth for `k` results of a search probing `nprobe` of `n_centroids`
/// lists over `live_docs` documents: `max(k, REFINE_MIN, ceil(nprobe * live_docs /
/// (n_centroids * REFINE_SCAN_RATIO)))`. The last term grows the depth with the documents per
/// list, where candidate generation's imputed estimates get coarser and refinement is a
/// shrinking share of the query's cost.
pub fn default_refine(k: usize, nprobe: usize, n_centroids: usize, live_docs: usize) -> usize {
    let per_scan = (nprobe as u128 * live_docs as u128)
        .div_ceil(n_centroids.max(1) as u128 * REFINE_SCAN_RATIO as u128);
    k.max(REFINE_MIN)
        .max(usize::try_from(per_scan).unwrap_or(usize::MAX))
}

/// Default refinement depth when the refined list is then re-ranked exactly: the exact re-rank
/// reads [`rerank_depth`] documents' full vectors, chosen from this many refined candidates.
/// SciFact + 100k distractors, 200 train queries, nprobe 16, re-ranking 16: recall@10 against
/// exact 0.970 / 0.976 refining 48 / 64 (0.896 re-ranking the stage-1 top 16 unrefined).
pub fn default_refine_for_rerank(k: usize) -> usize {
    (4 * k).max(48)
}

/// Documents re-ranked exactly from the full vectors for `k` results: `max(2k, 16)` after
/// refinement (the refined order already holds the exact top 10 in its first 16 for 97% of
/// SciFact + distractors train queries), `max(4k, 100)` when refinement is off.
pub fn rerank_depth(k: usize, refined: bool) -> usize {
    if refined {
        (2 * k).max(16)
    } else {
        (4 * k).max(100)
    }
}

/// Per-thread buffers of [`refine`]: one document's tokens repacked into fast-scan blocks.
#[derive(Default)]
pub(super) struct RefineScratch {
    blocks: Vec<u8>,
    /// Per token (padded to whole blocks): centroid id, and norm scale.
    cid: Vec<u32>,
    scale: Vec<f32>,
    src: Vec<(usize, usize)>,
}

/// Code-level MaxSim of the document whose tokens sit at list `positions` of `seg` (from the
/// document map): the tokens' codes are gathered out of their lists' blocks into blocks of the
/// document's own ([`crate::compressed::fastscan::BlockLayout::gather`]), scored against every query token's lookup table, and the
/// best token per query token is summed. No imputation: every query token meets every token.
fn refine_doc(
    plan: &QueryPlan,
    cs: &[f32],
    cs_stride: usize,
    seg: &IvfSegment,
    positions: &[u32],
    simd: bool,
    sc: &mut RefineScratch,
) -> f32 {
    #[cfg(target_arch = "x86_64")]
    {
        if simd {
            // SAFETY: `simd` is true only when AVX2 and FMA were detected at run time
            // (`simd::avx2`: level Avx2 or above guarantees AVX2, FMA and F16C, the features `refine_doc_avx2` enables).
            return unsafe { refine_doc_avx2(plan, cs, cs_stride, seg, positions, sc) };
        }
    }
    refine_doc_body::<false>(plan, cs, cs_stride, seg, positions, simd, sc, &mut [])
}

/// [`refine_doc`] that also writes the codes' score of each of the document's pooled tokens
/// for each query token to `out` (`nq * positions.len()`, query-token-major, tokens in
/// `positions` order): what a transform-coded tier adds its residual terms to.
#[allow(clippy::too_many_arguments)]
pub(super) fn pooled_scores(
    plan: &QueryPlan,
    cs: &[f32],
    cs_stride: usize,
    seg: &IvfSegment,
    positions: &[u32],
    simd: bool,
    sc: &mut RefineScratch,
    out: &mut [f32],
) -> f32 {
    #[cfg(target_arch = "x86_64")]
    {
        if simd {
            // SAFETY: as in `refine_doc`: AVX2 and FMA were detected at run time.
            return unsafe { pooled_scores_avx2(plan, cs, cs_stride, seg, positions, sc, out) };
        }
    }
    refine_doc_body::<true>(plan, cs, cs_stride, seg, positions, simd, sc, out)
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn pooled_scores_avx2(
    plan: &QueryPlan,
    cs: &[f32],
    cs_stride: usize,
    seg: &IvfSegment,
    positions: &[u32],
    sc: &mut RefineScratch,
    out: &mut [f32],
) -> f32 {
    refine_doc_body::<true>(plan, cs, cs_stride, seg, positions, true, sc, out)
}

/// [`refine_doc_body`] compiled for AVX2, so its fixed-length loops run 8 lanes wide.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn refine_doc_avx2(
    plan: &QueryPlan,
    cs: &[f32],
    cs_stride: usize,
    seg: &IvfSegment,
    positions: &[u32],
    sc: &mut RefineScratch,
) -> f32 {
    refine_doc_body::<false>(plan, cs, cs_stride, seg, positions, true, sc, &mut [])
}

/// Code-level MaxSim of a document; with `KEEP`, every token's score per query token is also
/// written to `out` (see [`pooled_scores`]).
#[inline(always)]
#[allow(clippy::too_many_arguments)]
fn refine_doc_body<const KEEP: bool>(
    plan: &QueryPlan,
    cs: &[f32],
    cs_stride: usize,
    seg: &IvfSegment,
    positions: &[u32],
    simd: bool,
    sc: &mut RefineScratch,
    out: &mut [f32],
) -> f32 {
    let n = positions.len();
    if n == 0 {
        return 0.0;
    }
    let m = plan.m;
    let bb = m * 16;
    let nb = n.div_ceil(BLOCK);
    let nch = seg.n_doc_chunks();
    let (lt, lb) = (seg.list_tokens(), seg.list_blocks());
    let norms = seg.norm_scales();
    // The document's blocks take its segment's layout (gathered and scanned alike).
    let layout = seg.block_layout();
    sc.blocks.resize(nb * bb, 0);
    sc.cid.clear();
    sc.scale.clear();
    sc.src.clear();
    for &p in positions {
        let p = p as usize;
        let l = seg.list_of_position(p);
        let j = p - lt[l] as usize;
        sc.src.push((lb[l] as usize + j / BLOCK, j % BLOCK));
        sc.cid.push((l / nch) as u32);
        sc.scale.push(norms.get(p));
    }
    // Padding lanes: any valid centroid, and a score forced to -inf below.
    sc.cid.resize(nb * BLOCK, 0);
    sc.scale.resize(nb * BLOCK, 0.0);
    for (b, out) in sc.blocks.chunks_exact_mut(bb).enumerate() {
        let toks = &sc.src[b * BLOCK..((b + 1) * BLOCK).min(n)];
        layout.gather(seg.codes(), m, toks, out);
    }
    let tail = n - (nb - 1) * BLOCK;
    let mut acc = [0u16; BLOCK];
    let mut v = [0.0f32; BLOCK];
    let mut total = 0.0f32;
    for (i, lut) in plan.luts.iter().enumerate() {
        let row = &cs[i * cs_stride..(i + 1) * cs_stride];
        let mut best = [f32::NEG_INFINITY; 8];
        for b in 0..nb {
            layout.scan(
                &lut.lut,
                &sc.blocks[b * bb..(b + 1) * bb],
                m,
                simd,
                &mut acc,
            );
            let cid: &[u32; BLOCK] = sc.cid[b * BLOCK..(b + 1) * BLOCK]
                .try_into()
                .expect("block");
            let r: &[f32; BLOCK] = sc.scale[b * BLOCK..(b + 1) * BLOCK]
                .try_into()
                .expect("block");
            for (o, &c) in v.iter_mut().zip(cid) {
                *o = row[c as usize];
            }
            // Fixed-length loops: these vectorise.
            for ((o, &a), &r) in v.iter_mut().zip(&acc).zip(r) {
                *o = (*o + lut.bias + lut.scale * a as f32) * r;
            }
            if KEEP {
                let w = if b == nb - 1 { tail } else { BLOCK };
                out[i * n + b * BLOCK..i * n + b * BLOCK + w].copy_from_slice(&v[..w]);
            }
            if b == nb - 1 {
                v[tail..].fill(f32::NEG_INFINITY);
            }
            for c in v.chunks_exact(8) {
                for (bm, &x) in best.iter_mut().zip(c) {
                    *bm = if x > *bm { x } else { *bm };
                }
            }
        }
        total += best.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    }
    total
}

/// Re-scores `cands` (from [`search_segments`] over the same `segments`) with code-level MaxSim
/// over *all* of each document's tokens, and returns them best first (ties by segment then
/// document). This is PLAID's last stage (Santhanam et al., CIKM 2022, section 4.4) done from the
/// codes: candidate generation only sees a document's tokens in the probed lists and imputes the
/// rest, which misorders close documents; the short list gets exact code-level scores instead.
/// Needs the document map (version-4 lists) of every segment a candidate comes from. Runs in the
/// latix pool it is called in (serially outside one).
pub fn refine(
    codec: &Codec,
    plan: &QueryPlan,
    segments: &[SegmentView<'_>],
    cands: &[Candidate],
) -> Result<Vec<Candidate>> {
    let mut out = refine_each(codec, plan, segments, cands, |job| {
        (
            refine_doc(
                plan,
                job.cs,
                job.stride,
                job.seg,
                job.positions,
                job.simd,
                job.sc,
            ),
            job.si,
            job.d,
        )
    })?;
    crate::topk::sort(&mut out);
    Ok(out)
}

/// [`refine`] that also returns, with each candidate, the codes' score of each of its pooled
/// tokens for each query token ([`pooled_scores`]: `nq * n_pooled`, query-token-major): a
/// transform-coded tier re-scores the head of the refined list on top of these, so its
/// documents' codes are gathered and scored once instead of twice (~13 us a document). Same
/// scores and order as [`refine`] (the same kernel, which only also stores what it computes).
pub fn refine_pooled(
    codec: &Codec,
    plan: &QueryPlan,
    segments: &[SegmentView<'_>],
    cands: &[Candidate],
) -> Result<Vec<(Candidate, Vec<f32>)>> {
    let nq = plan.n_query_tokens();
    let mut out = refine_each(codec, plan, segments, cands, |job| {
        let mut pooled = vec![0.0f32; nq * job.positions.len()];
        let s = pooled_scores(
            plan,
            job.cs,
            job.stride,
            job.seg,
            job.positions,
            job.simd,
            job.sc,
            &mut pooled,
        );
        ((s, job.si, job.d), pooled)
    })?;
    out.sort_by(|a, b| crate::topk::order(&a.0, &b.0));
    Ok(out)
}

/// What [`refine_each`] hands its per-document function: one candidate's segment, number and
/// list positions, the centroid scores to read and the thread's scratch.
struct RefineJob<'a> {
    cs: &'a [f32],
    stride: usize,
    seg: &'a IvfSegment,
    positions: &'a [u32],
    si: u32,
    d: u32,
    simd: bool,
    sc: &'a mut RefineScratch,
}

/// The shared frame of [`refine`] and [`refine_pooled`]: checks the candidates' document maps,
/// gets every centroid's score, and maps `one` over the candidates in the latix pool (unsorted).
fn refine_each<T: Send>(
    codec: &Codec,
    plan: &QueryPlan,
    segments: &[SegmentView<'_>],
    cands: &[Candidate],
    one: impl Fn(RefineJob<'_>) -> T + Sync,
) -> Result<Vec<T>> {
    check_doc_maps(segments, cands)?;
    let full = AllCentroidScores::new(codec, plan);
    let (cs, stride) = full.rows(plan);
    let simd = crate::simd::avx2();
    let score = |sc: &mut RefineScratch, &(_, si, d): &Candidate| -> Result<T> {
        let seg = segments[si as usize].seg;
        let positions = doc_positions(seg, si, d)?;
        Ok(one(RefineJob {
            cs,
            stride,
            seg,
            positions,
            si,
            d,
            simd,
            sc,
        }))
    };
    crate::parallel::map_init::<_, _, _, Result<_>>(cands, 8, RefineScratch::default, score)
}

/// Checks that every candidate's segment exists and has the document map refinement reads.
fn check_doc_maps(segments: &[SegmentView<'_>], cands: &[Candidate]) -> Result<()> {
    for &(_, si, _) in cands {
        let v = segments
            .get(si as usize)
            .ok_or_else(|| LatixError::invalid(format!("candidate of unknown segment {si}")))?;
        if !v.seg.has_doc_map() {
            return Err(LatixError::invalid(format!(
                "segment {si} has version-{} inverted lists without a document map; compact the \
                 index to rewrite them",
                v.seg.version()
            )));
        }
    }
    Ok(())
}

/// The list positions of document `d` of segment `si` (from its document map).
fn doc_positions(seg: &IvfSegment, si: u32, d: u32) -> Result<&[u32]> {
    seg.doc_positions(d as usize)
        .ok_or_else(|| LatixError::invalid(format!("segment {si} has no document {d}")))
}

/// Every centroid's score for every query token: the plan's own, or, for a two-level plan
/// (which scored only some centroids), all of them scored now.
pub(super) struct AllCentroidScores(Option<(Vec<f32>, usize)>);

impl AllCentroidScores {
    pub(super) fn new(codec: &Codec, plan: &QueryPlan) -> AllCentroidScores {
        if !plan.centroid_scores.is_empty() {
            return AllCentroidScores(None);
        }
        let panels = codec.centroid_half_panels();
        let np = panels.n_padded();
        let mut out = vec![0.0f32; plan.query.len() / codec.dim() * np];
        scores_half(&plan.query, panels, &mut out);
        AllCentroidScores(Some((out, np)))
    }

    /// The scores, one row per query token, and the row stride.
    pub(super) fn rows<'a>(&'a self, plan: &'a QueryPlan) -> (&'a [f32], usize) {
        match &self.0 {
            Some((f, np)) => (f, *np),
            None => (&plan.centroid_scores, plan.cs_stride),
        }
    }
}

/// Centroid interaction (PLAID, Santhanam et al., CIKM 2022, section 4.2): scores each of
/// `cands` with every one of its tokens replaced by its coarse centroid, i.e. the sum over query
/// tokens of the best centroid score among the document's tokens, and returns them best first
/// (ties by segment then document). No residual codes are read: about a microsecond per
/// document, against tens for [`refine`], so it can rank every document of a small filtered set
/// and leave [`refine`] only the best of them. Needs the document map of every segment a
/// candidate comes from. Runs in the latix pool it is called in (serially outside one).
pub fn centroid_interaction(
    codec: &Codec,
    plan: &QueryPlan,
    segments: &[SegmentView<'_>],
    cands: &[Candidate],
) -> Result<Vec<Candidate>> {
    check_doc_maps(segments, cands)?;
    let nq = plan.n_query_tokens();
    let full = AllCentroidScores::new(codec, plan);
    let (cs, stride) = full.rows(plan);
    let kc = codec.n_centroids();
    with_centroid_major(cs, stride, nq, kc, |by_centroid| {
        ci_score(segments, cands, nq, by_centroid)
    })
}

// Per-thread buffer of `centroid_interaction`'s centroid-major table (`K * nq` floats, 1 MB at
// K 8192 and 32 query tokens), reused instead of allocated and zeroed for every query.
thread_local! {
    static BY_CENTROID: std::cell::RefCell<Vec<f32>> = const { std::cell::RefCell::new(Vec::new()) };
}

/// Runs `f` with the centroid scores `cs` (`nq` rows of `stride`, the first `kc` used) laid out
/// centroid-major (`kc` rows of `nq`), so that a document token reads one contiguous row.
/// Transposed in tiles of 16 centroids: every source cache line is read once and the writes stay
/// within one 16 x nq tile (a row-at-a-time loop writes with a stride of nq floats across the
/// whole table, a cache line per value once the table outgrows L2). Every value of the first
/// `kc * nq` is overwritten, so the buffer is never cleared.
fn with_centroid_major<R>(
    cs: &[f32],
    stride: usize,
    nq: usize,
    kc: usize,
    f: impl FnOnce(&[f32]) -> R,
) -> R {
    const T: usize = 16;
    let fill = |by: &mut Vec<f32>| {
        if by.len() < kc * nq {
            by.resize(kc * nq, 0.0);
        }
        for c0 in (0..kc).step_by(T) {
            let w = T.min(kc - c0);
            let tile = &mut by[c0 * nq..(c0 + w) * nq];
            for i in 0..nq {
                let src = &cs[i * stride + c0..i * stride + c0 + w];
                for (j, &x) in src.iter().enumerate() {
                    tile[j * nq + i] = x;
                }
            }
        }
    };
    BY_CENTROID.with(|cell| match cell.try_borrow_mut() {
        Ok(mut by) => {
            fill(&mut by);
            f(&by[..kc * nq])
        }
        // Re-entrant use (a nested search on this thread while the table is in use).
        Err(_) => {
            let mut by = Vec::new();
            fill(&mut by);
            f(&by[..kc * nq])
        }
    })
}

/// Centroid-interaction scores of `cands` from the centroid-major table, best first.
fn ci_score(
    segments: &[SegmentView<'_>],
    cands: &[Candidate],
    nq: usize,
    by_centroid: &[f32],
) -> Result<Vec<Candidate>> {
    let score = |acc: &mut Vec<f32>, &(_, si, d): &Candidate| -> Result<Candidate> {
        let seg = segments[si as usize].seg;
        let positions = doc_positions(seg, si, d)?;
        let nch = seg.n_doc_chunks();
        acc.clear();
        acc.resize(nq, f32::NEG_INFINITY);
        for &p in positions {
            let c = seg.list_of_position(p as usize) / nch;
            let row = &by_centroid[c * nq..(c + 1) * nq];
            for (a, &x) in acc.iter_mut().zip(row) {
                *a = if x > *a { x } else { *a };
            }
        }
        let total = if positions.is_empty() {
            0.0
        } else {
            acc.iter().sum()
        };
        Ok((total, si, d))
    };
    let mut out: Vec<Candidate> =
        crate::parallel::map_init::<_, _, _, Result<_>>(cands, 256, Vec::new, score)?;
    crate::topk::sort(&mut out);
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn default_refine_grows_with_documents_per_list() {
        // SciFact, SciFact + 100k distractors and a small index keep the measured 16.
        assert_eq!(default_refine(10, 8, 2048, 5_183), REFINE_MIN);
        assert_eq!(default_refine(10, 8, 2048, 105_183), REFINE_MIN);
        assert_eq!(default_refine(10, 8, 256, 0), REFINE_MIN);
        // The 100M-token scale index: 8 * 420,697 / (2048 * 26) = 63.2 -> 64.
        assert_eq!(default_refine(10, 8, 2048, 420_697), 64);
        // More lists per query token scan more: the depth follows nprobe.
        assert_eq!(default_refine(10, 16, 2048, 420_697), 127);
        // k above every other term wins; no overflow at absurd sizes; K 0 does not divide by 0.
        assert_eq!(default_refine(100, 8, 2048, 5_183), 100);
        assert!(default_refine(10, usize::MAX, 1, usize::MAX) >= REFINE_MIN);
        assert_eq!(default_refine(10, 8, 0, 26), REFINE_MIN);
        assert_eq!(default_refine(10, 8, 0, 100), 31);
    }
}
