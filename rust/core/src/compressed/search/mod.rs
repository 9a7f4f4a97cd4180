//! Candidate generation and code-level scoring over compressed segments (WARP-style, Scheerer et
//! al., SIGIR 2025, section 4): every query token is scored against all coarse centroids; its
//! `nprobe` best lists are scanned, each token scored from its codes as
//! `(<q, c> + sum_m lut_m[code_m]) * norm_scale` (the dot product with the decoded vector, never
//! materialised, rescaled to the token's true length: see [`super::ivf`]);
//! each document keeps its best token per query token. A document with no token in the probed lists
//! of query token i gets the imputed score `m_i` = the score of the best centroid that was *not*
//! probed, an upper bound of what an unprobed centroid contributes (WARP's missing-similarity
//! estimate). Document score = sum over query tokens; documents outside a filter are skipped while
//! scanning, so a subset restricts candidate generation itself rather than its output.
//!
//! Query tokens are split among threads; each thread accumulates `best - m_i` per touched
//! document, and the partial sums are added at the end.
//!
//! The short list is then re-scored by [`refine`] with every token of each document (PLAID's
//! final stage, Santhanam et al., CIKM 2022, section 4.4, computed from the codes instead of
//! decompressed vectors): imputation misorders close documents, and exact code-level MaxSim over
//! a few dozen documents costs less than probing enough lists to make imputation rare. With kept
//! vectors, the best of the refined list are finally re-ranked exactly ([`rerank_exact`]).
//!
//! This module runs the whole pipeline of a trained compressed snapshot
//! (`search_snapshot`): candidate generation (`scan`, or centroid interaction over the
//! allowed documents of a filtered search), refinement from codes (`refinement`) and the exact
//! re-rank (`rerank`); segments without inverted lists are scored exactly and merged in.
//! `plan` prepares each query.

mod plan;
mod refinement;
mod rerank;
mod scan;

use crate::topk::TopK;
pub use plan::{check_nprobe, default_nprobe, Candidate, QueryPlan, SegmentView, IMPUTE_SHIFT};
pub use refinement::{
    centroid_interaction, default_refine, default_refine_for_rerank, refine, refine_pooled,
    rerank_depth, REFINE_MIN, REFINE_SCAN_RATIO,
};
pub use rerank::{
    rerank_exact, rerank_tier, tier_mix, tier_rerank_depth, transform_refine_depth,
    transform_rerank_depth, two_stage_rerank_depth, FullVectors, TierRows, TX_DEPTH_BALANCED,
    TX_DEPTH_HIGH, TX_RERANK_BALANCED, TX_RERANK_HIGH,
};
pub use scan::search_segments;

use super::state::CState;
use crate::error::{LatixError, Result};
use crate::maxsim;
use crate::store::Snapshot;
use crate::types::SearchResults;

/// Options of a compressed search.
#[derive(Clone, Copy, Debug, Default)]
pub struct CompressedSearch {
    /// Lists probed per query token (`None`: [`default_nprobe`] of the codec's K).
    pub nprobe: Option<usize>,
    /// Re-rank the short list exactly from the kept vectors (`None`: when vectors are kept).
    pub rerank: Option<bool>,
    /// Candidates re-scored with all their tokens' codes (`refinement`); `Some(0)` turns it off,
    /// `None` is [`default_refine`] of `k`, `nprobe`, K and the documents searched (and off for
    /// indexes whose lists predate the document map).
    pub refine: Option<usize>,
    /// Documents of the refined list re-ranked (exactly from kept vectors, or from a fidelity
    /// tier's refinement data); `None`: [`rerank_depth`] / [`tier_rerank_depth`] of `k`.
    pub rerank_depth: Option<usize>,
}

/// Documents of a filtered search (a subset or per-segment masks) refined from codes, chosen by
/// centroid interaction among all allowed documents (exhaustive mode) or among the best
/// [`FILTERED_DEPTH`] candidates of candidate generation. A filter moves the true best
/// documents down the unfiltered ranking, where candidate generation's imputed estimates are
/// poor: refining only its best 16 found 0.65 of the exact top 10 at 10 % selectivity on
/// SciFact + 100k distractors, refining 256 of them 0.83. Ranking 384 by centroid interaction
/// and refining 32 found 0.84 at 10 % and 0.87 at 50 %, at 1.4x the time of an unfiltered
/// search (512 and 32: 0.84 / 0.87 at 1.6x; 256 and 32: 0.83 / 0.87 at 1.35x; measured
/// interleaved with unfiltered searches, 150 test queries, one thread).
pub const FILTERED_REFINE: usize = 32;
/// Candidates of a filtered, non-exhaustive search ranked by centroid interaction.
pub const FILTERED_DEPTH: usize = 384;
/// Candidates ranked by centroid interaction when the filter keeps at least a quarter of the
/// live documents (see [`filtered_depth`]). SciFact + 100k distractors, 80 *train* queries, 50 %
/// selectivity: recall@10 against exact MaxSim over the allowed set 0.871 / 0.870 / 0.874 at
/// depth 384 / 256 / 192, p50 1.53x / 1.37x / 1.41x an unfiltered search (interleaved, one
/// thread, load 12 on 2 cores); at 10 % depth 256 loses recall (0.853 -> 0.847, 200 train
/// queries), so narrower filters keep [`FILTERED_DEPTH`].
pub const FILTERED_DEPTH_BROAD: usize = 256;
/// An exhaustive filtered search of at most this many allowed documents refines every one of
/// them from its codes instead of the best [`FILTERED_REFINE`] by centroid interaction. SciFact
/// with 100k distractors, 200 *train* queries, 105 allowed documents (0.1 %), codes only: recall@10
/// against exact MaxSim over the allowed set 0.751 -> 0.763, p50 0.91x -> 1.12x an unfiltered
/// search (interleaved, one thread). What remains is the codes' own error: refining every one
/// of 30 allowed documents finds 0.786 of their exact top 10, and kept vectors' exact re-rank
/// 0.95 of those of 105. A fidelity tier lifts the same 200 train queries to 0.815 with its
/// default re-rank of the best [`tier_rerank_depth`] refined documents; re-ranking every one of
/// the 105 from the tier found 0.817 at 1.37x the time (load 16), so the tier's re-rank depth
/// is not raised for exhaustive searches: its own score (mixed with the codes') is what limits
/// it there.
pub const EXHAUSTIVE_REFINE_ALL: usize = 128;
/// An exhaustive filtered search of an index with kept vectors scores every one of at most this
/// many allowed documents exactly from its vectors (codes not read): the result is then exact
/// MaxSim over the filtered set. The codes' error, not the depth, is what limits such small sets
/// (see [`EXHAUSTIVE_REFINE_ALL`]): kept vectors' re-rank of the best 20 refined found 0.95 of the
/// exact top 10 of 105 allowed documents.
pub const EXHAUSTIVE_EXACT_ALL: usize = EXHAUSTIVE_REFINE_ALL;

/// Candidates of a filtered search through candidate generation that centroid interaction
/// ranks, for `n_allowed` allowed of `n_live` live documents: [`FILTERED_DEPTH_BROAD`] when the
/// filter keeps at least a quarter of them, [`FILTERED_DEPTH`] below. A broad filter leaves the
/// best allowed documents near the top of the unfiltered ranking, where candidate generation's
/// estimates are good; a narrow one moves them down to where imputation misorders them.
pub fn filtered_depth(n_allowed: usize, n_live: usize) -> usize {
    if n_allowed.saturating_mul(4) >= n_live {
        FILTERED_DEPTH_BROAD
    } else {
        FILTERED_DEPTH
    }
}

fn bitmap_all_but(n: usize, dead: &[u32]) -> Vec<u64> {
    let mut b = vec![u64::MAX; n.div_ceil(64)];
    if !n.is_multiple_of(64) {
        if let Some(last) = b.last_mut() {
            *last = (1u64 << (n % 64)) - 1;
        }
    }
    for &d in dead {
        b[d as usize >> 6] &= !(1u64 << (d & 63));
    }
    b
}

/// Search of a trained compressed snapshot: encoded segments through the codec (filters as
/// allowed-document bitmaps inside candidate generation), segments without lists exactly, merged.
/// Inputs were validated by the caller (queries, k); `keep_vectors` decides the default re-rank.
/// `bits` (one bitmap of live allowed documents per segment of `snap`) replaces `subset`; when it
/// allows at most `exhaustive_below` documents, every allowed document of the encoded segments is
/// a candidate (scored with all its codes, then re-ranked exactly when re-ranking) instead of the
/// output of candidate generation: a small set is cheaper to score whole than to probe for, and
/// probing misses allowed documents when few of them sit in the probed lists.
#[allow(clippy::too_many_arguments)]
pub(crate) fn search_snapshot(
    snap: &Snapshot,
    state: &CState,
    queries: &[&[f32]],
    k: usize,
    n_threads: Option<usize>,
    subset: Option<&[&str]>,
    opts: CompressedSearch,
    keep_vectors: bool,
    bits: Option<Vec<Vec<u64>>>,
    exhaustive_below: usize,
) -> Result<SearchResults> {
    SearchResults::check_slots(queries.len(), k)?;
    let codec = state
        .codec
        .as_ref()
        .ok_or_else(|| LatixError::invalid("the index has no trained codec yet"))?;
    let kc = codec.codec.n_centroids();
    let nprobe = opts.nprobe.unwrap_or_else(|| default_nprobe(kc));
    check_nprobe(nprobe, kc)?;
    let segs = snap.segments();
    // A fidelity tier re-ranks from its refinement data (every encoded segment has a file).
    let tiered = !keep_vectors
        && state
            .ivfs
            .iter()
            .zip(&state.fids)
            .any(|(i, f)| i.is_some() && f.is_some());
    let rerank = opts.rerank.unwrap_or(keep_vectors || tiered);
    // A tier with a second residual stage re-ranks deeper ([`two_stage_rerank_depth`]).
    let two_stage = tiered && state.fids.iter().flatten().any(|(_, f)| f.nbits2() > 0);
    // A transform-coded tier refines a deep list from codes and re-scores its head
    // ([`transform_refine_depth`], [`transform_rerank_depth`]).
    let tx_bits = state
        .fids
        .iter()
        .flatten()
        .map(|(_, f)| f.transform_bits())
        .max()
        .unwrap_or(0);
    // Allowed documents per segment: the subset's live documents, or all live documents.
    let filtered = bits.is_some() || subset.is_some();
    let allowed: Vec<Option<Vec<u64>>> = match (bits, subset) {
        (Some(b), _) => b.into_iter().map(Some).collect(),
        (None, Some(ids)) => {
            let mut b: Vec<Vec<u64>> = segs
                .iter()
                .map(|v| vec![0u64; v.segment.n_docs().div_ceil(64)])
                .collect();
            for id in ids {
                if let Some((s, d)) = snap.lookup(id) {
                    b[s][d as usize >> 6] |= 1u64 << (d & 63);
                }
            }
            b.into_iter().map(Some).collect()
        }
        (None, None) => segs
            .iter()
            .map(|v| {
                (!v.entry.tombstones.is_empty())
                    .then(|| bitmap_all_but(v.segment.n_docs(), &v.entry.tombstones))
            })
            .collect(),
    };
    // Live allowed documents of a filtered search (subsets and masks alike).
    let n_allowed = filtered.then(|| {
        allowed
            .iter()
            .flatten()
            .flatten()
            .map(|w| w.count_ones() as usize)
            .sum::<usize>()
    });
    let is_allowed = |s: usize, d: u32| {
        allowed[s]
            .as_ref()
            .is_none_or(|b| b[d as usize >> 6] >> (d & 63) & 1 == 1)
    };
    let mut views = Vec::new();
    let mut view_seg = Vec::new();
    let mut fulls = Vec::new();
    let mut tiers = Vec::new();
    let mut exact_segs = Vec::new();
    for (s, v) in segs.iter().enumerate() {
        match state.ivfs.get(s).and_then(|x| x.as_ref()) {
            Some((_, ivf)) => {
                views.push(SegmentView {
                    seg: ivf,
                    allowed: allowed[s].as_deref(),
                });
                view_seg.push(s);
                if rerank && tiered {
                    let (_, fid) = state.fids.get(s).and_then(|x| x.as_ref()).ok_or_else(|| {
                        LatixError::invalid("a segment of this tiered index has no refinement data")
                    })?;
                    tiers.push(TierRows {
                        fid,
                        offsets: v.segment.offsets(),
                        ivf,
                    });
                } else if rerank {
                    if !v.segment.has_vectors() {
                        return Err(LatixError::invalid(
                            "rerank needs the full vectors, and this index was created with \
                             keep_vectors=False",
                        ));
                    }
                    fulls.push(FullVectors {
                        vectors: v.segment.vectors(),
                        offsets: v.segment.offsets(),
                    });
                }
            }
            None => exact_segs.push(s),
        }
    }
    let dim = snap.dim();
    let all_mapped = views.iter().all(|v| v.seg.has_doc_map());
    let live = snap.len().max(1);
    let tier = match (tiered, two_stage) {
        (false, _) => Tier::None,
        (true, _) if tx_bits > 0 => Tier::Transform(tx_bits),
        (true, false) => Tier::OneStage,
        (true, true) => Tier::TwoStage,
    };
    let stages = Stages::resolve(opts, k, nprobe, kc, rerank, tier, all_mapped, live)?
        .with_filter(n_allowed.unwrap_or(live), live);
    // Exhaustive: every allowed document of the encoded segments, refined whole (needs the
    // document map of every segment, like refine).
    let exhaustive: Option<Vec<Candidate>> =
        (all_mapped && n_allowed.is_some_and(|n| n <= exhaustive_below)).then(|| {
            let mut c = Vec::new();
            for (vi, v) in views.iter().enumerate() {
                match v.allowed {
                    // Set bits only: one word per 64 documents.
                    Some(b) => {
                        for (i, &w) in b.iter().enumerate() {
                            let mut w = w;
                            while w != 0 {
                                c.push((0.0f32, vi as u32, (i as u32) << 6 | w.trailing_zeros()));
                                w &= w - 1;
                            }
                        }
                    }
                    None => c.extend((0..v.seg.n_docs() as u32).map(|d| (0.0f32, vi as u32, d))),
                }
            }
            c
        });
    let final_stage = if rerank && tiered {
        Rerank::Tier(&tiers)
    } else if rerank {
        Rerank::Exact(&fulls)
    } else {
        Rerank::Off
    };
    // Verified read of the rows the exact re-rank is about to use.
    let check_rows = |cands: &[Candidate]| -> Result<()> {
        for &(_, vi, d) in cands {
            let seg = &segs[view_seg[vi as usize]].segment;
            let (a, b) = seg.doc_range(d);
            seg.check_rows(a, b)?;
        }
        Ok(())
    };
    let per_query = |q: &[f32]| -> Result<Vec<(f32, usize, u32)>> {
        let mut hits: Vec<(f32, usize, u32)> = Vec::new();
        if !views.is_empty() {
            let cands = encoded_pipeline(
                &codec.codec,
                &views,
                q,
                k,
                &stages,
                filtered,
                exhaustive.as_deref(),
                &final_stage,
                &check_rows,
            )?;
            hits.extend(
                cands
                    .iter()
                    .map(|&(s, vi, d)| (s, view_seg[vi as usize], d)),
            );
        }
        let mut one = [0f32; 1];
        for &s in &exact_segs {
            let seg = &segs[s].segment;
            for d in 0..seg.n_docs() as u32 {
                if !is_allowed(s, d) {
                    continue;
                }
                let (a, b) = seg.doc_range(d);
                let rows = seg.rows_checked(a, b)?;
                maxsim::score_docs(q, dim, rows, &[0, b - a], &mut one);
                hits.push((one[0], s, d));
            }
        }
        // Best first; ties by insertion order (segment, then document).
        Ok(crate::topk::best(hits, k))
    };
    let all: Vec<Vec<(f32, usize, u32)>> = crate::parallel::run(n_threads, || {
        queries.iter().map(|q| per_query(q)).collect::<Result<_>>()
    })??;
    SearchResults::assemble(snap, k, all.into_iter())
}

/// How the short list of [`encoded_pipeline`] is finally re-ranked.
enum Rerank<'a> {
    /// Not re-ranked: the refined order is final.
    Off,
    /// Exactly, from the full vectors of each view.
    Exact(&'a [FullVectors<'a>]),
    /// From a fidelity tier's refinement data of each view.
    Tier(&'a [TierRows<'a>]),
}

/// The stage depths of one compressed search, resolved once from its options: every default of
/// the pipeline is applied here (and nowhere else).
#[derive(Clone, Copy, Debug)]
struct Stages {
    nprobe: usize,
    /// Candidates re-scored from all their codes (0: refine off).
    n_refine: usize,
    /// Documents kept for the final stage (the exact / tier re-rank; `k` without one).
    exact_depth: usize,
    /// Candidates candidate generation returns: the deepest stage's need.
    depth: usize,
    /// Candidates of a filtered search's candidate generation ranked by centroid interaction
    /// ([`filtered_depth`] of the filter's selectivity; unused unfiltered).
    filtered_depth: usize,
}

/// What the final re-rank reads, for its default depth.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Tier {
    /// Kept vectors (or no re-rank).
    None,
    /// A fidelity tier of one residual stage per file.
    OneStage,
    /// A fidelity tier with a second residual stage.
    TwoStage,
    /// A transform-coded tier of this many residual bits per token.
    Transform(usize),
}

impl Tier {
    /// Residual bits per token of a transform-coded tier (0 for the others).
    fn bits(self) -> usize {
        match self {
            Tier::Transform(b) => b,
            _ => 0,
        }
    }
}

impl Stages {
    /// Depths for `k` results from `opts`, with `nprobe` already resolved, the final re-rank
    /// decided (`rerank`, from a fidelity tier unless `tier` is `None`), `all_mapped` (every encoded
    /// segment has a document map, which refine needs) and `live` documents searched (no stage
    /// can return more: larger depths are capped before anything is sized by them), probing
    /// `nprobe` of `n_centroids` lists.
    #[allow(clippy::too_many_arguments)]
    fn resolve(
        opts: CompressedSearch,
        k: usize,
        nprobe: usize,
        n_centroids: usize,
        rerank: bool,
        tier: Tier,
        all_mapped: bool,
        live: usize,
    ) -> Result<Stages> {
        let n_refine = match opts.refine {
            Some(0) => 0,
            Some(r) if !all_mapped => {
                return Err(LatixError::invalid(format!(
                    "refine={r} needs inverted lists with a document map, and some segments of \
                     this index were written by an older latix: compact() rewrites them"
                )))
            }
            Some(r) => r.max(k),
            None if !all_mapped => 0,
            None if rerank && tier == Tier::Transform(tier.bits()) => {
                transform_refine_depth(k, tier.bits())
            }
            None if rerank => default_refine_for_rerank(k),
            None => default_refine(k, nprobe, n_centroids, live),
        };
        // (refine=10**9 once asked for a 48 GB candidate buffer.)
        let live = live.max(1);
        let n_refine = n_refine.min(live);
        let exact_depth = match opts.rerank_depth {
            Some(r) if rerank => r.max(k),
            _ if rerank && tier == Tier::TwoStage => two_stage_rerank_depth(k),
            // Refinement off: the tier re-scores the whole candidate list instead.
            _ if rerank && tier == Tier::Transform(tier.bits()) && n_refine == 0 => {
                transform_refine_depth(k, tier.bits())
            }
            _ if rerank && tier == Tier::Transform(tier.bits()) => {
                transform_rerank_depth(k, tier.bits())
            }
            _ if rerank && tier == Tier::OneStage => tier_rerank_depth(k),
            _ if rerank => rerank_depth(k, n_refine > 0),
            _ => k,
        }
        .min(live);
        Ok(Stages {
            nprobe,
            n_refine,
            exact_depth,
            depth: exact_depth.max(n_refine),
            filtered_depth: FILTERED_DEPTH,
        })
    }

    /// The same stages for a filter keeping `n_allowed` of `n_live` live documents.
    fn with_filter(self, n_allowed: usize, n_live: usize) -> Stages {
        Stages {
            filtered_depth: filtered_depth(n_allowed, n_live),
            ..self
        }
    }
}

/// The compressed search of one query over encoded segments: generate -> refine -> rerank.
/// Returns at most `k` (score, view, doc), best first. A `filtered` search (or an `exhaustive`
/// one, whose candidates are given) ranks many candidates by centroid interaction and refines
/// the best of them; `check` verifies the rows the exact re-rank reads.
#[allow(clippy::too_many_arguments)]
fn encoded_pipeline(
    codec: &super::Codec,
    views: &[SegmentView<'_>],
    q: &[f32],
    k: usize,
    st: &Stages,
    filtered: bool,
    exhaustive: Option<&[Candidate]>,
    final_stage: &Rerank<'_>,
    check: &dyn Fn(&[Candidate]) -> Result<()>,
) -> Result<Vec<Candidate>> {
    // `st.nprobe` was range-checked once for the whole search (`check_nprobe`).
    let plan = QueryPlan::build(codec, q, st.nprobe, codec.n_groups())?;
    // A filtered search ranks many candidates by centroid interaction and refines the best of
    // them (all of them when exhaustive over a small set: centroid interaction misorders close
    // documents, and a few dozen more refinements cost little).
    // A transform-coded tier scores on top of each pooled token's codes score, which
    // refinement computes anyway: kept for the documents it re-scores (the first
    // `st.exact_depth` of the refined list).
    let keep_pooled = match final_stage {
        Rerank::Tier(t) => t.iter().all(|r| r.fid.is_transform()),
        _ => false,
    };
    let refine_keeping = |c: &[Candidate]| -> Result<(Vec<Candidate>, Vec<Vec<f32>>)> {
        if !keep_pooled {
            return Ok((refine(codec, &plan, views, c)?, Vec::new()));
        }
        let refined = refine_pooled(codec, &plan, views, c)?;
        let (mut cands, mut pooled) = (Vec::with_capacity(refined.len()), Vec::new());
        for (i, (cand, p)) in refined.into_iter().enumerate() {
            cands.push(cand);
            if i < st.exact_depth {
                pooled.push(p);
            }
        }
        Ok((cands, pooled))
    };
    let ci_refine =
        |c: &[Candidate], exhaustive: bool| -> Result<(Vec<Candidate>, Vec<Vec<f32>>)> {
            let r = FILTERED_REFINE.max(st.depth);
            if c.len() <= r || (exhaustive && c.len() <= EXHAUSTIVE_REFINE_ALL) {
                return refine_keeping(c);
            }
            let mut ci = centroid_interaction(codec, &plan, views, c)?;
            ci.truncate(r);
            refine_keeping(&ci)
        };
    if let (Some(all), Rerank::Exact(fulls)) = (exhaustive, final_stage) {
        if all.len() <= EXHAUSTIVE_EXACT_ALL {
            // Kept vectors and a filter this narrow: every allowed document scored exactly.
            check(all)?;
            return rerank_exact(q, codec.dim(), fulls, all, k);
        }
    }
    let deep = filtered && st.n_refine > 0;
    let (mut cands, mut pooled) = match exhaustive {
        Some(all) => ci_refine(all, true)?,
        None if deep => ci_refine(
            &search_segments(&plan, views, st.filtered_depth.max(st.depth))?,
            false,
        )?,
        None => (search_segments(&plan, views, st.depth)?, Vec::new()),
    };
    // A tier re-rank that ignores the codes' score (every file weighs it 0, [`tier_mix`]) and
    // takes every refined candidate sees the same set whether or not they were refined: the
    // refinement would only reorder what the tier re-scores anyway (48 documents at ~30 us
    // each, see [`REFINE_MIN`], of a 7.3 ms `high` search on SciFact), so it is skipped, with
    // identical results (`high`'s SciFact test quality unchanged: bench-results/fidelity.md).
    let refine_unused = match final_stage {
        Rerank::Tier(t) => {
            st.exact_depth >= st.n_refine && t.iter().all(|r| tier_mix(r.fid) == 0.0)
        }
        _ => false,
    };
    if st.n_refine > 0 && exhaustive.is_none() && !deep && !refine_unused {
        // Re-score the best n_refine with all their codes; the rest keep their order below
        // them (only reached when the exact re-rank asks for more).
        let rest = cands.split_off(st.n_refine.min(cands.len()));
        (cands, pooled) = refine_keeping(&cands)?;
        cands.extend(rest);
    }
    cands.truncate(st.exact_depth);
    match final_stage {
        Rerank::Off => Ok(cands),
        Rerank::Tier(tiers) => rerank_tier(codec, &plan, q, tiers, &cands, &pooled, k),
        Rerank::Exact(fulls) => {
            check(&cands)?;
            rerank_exact(q, codec.dim(), fulls, &cands, k)
        }
    }
}

/// The compressed search of one query over building blocks (a codec and encoded segments, as
/// `latix._core.compressed` exposes them), through the same pipeline and defaults as a
/// compressed [`crate::Index`]: candidate generation from codes, refinement from codes, then,
/// with `fulls` (one per view: its documents' full vectors), the exact re-rank. An `allowed`
/// bitmap of a view makes the search a filtered one (the filtered depths, like masks on an
/// index). On latix's pool of `n_threads` threads. Returns at most `k` (score, view, doc), best
/// first, ties by view then document.
pub fn search_encoded(
    codec: &super::Codec,
    views: &[SegmentView<'_>],
    fulls: &[FullVectors<'_>],
    query: &[f32],
    k: usize,
    opts: CompressedSearch,
    n_threads: Option<usize>,
) -> Result<Vec<Candidate>> {
    let dim = codec.dim();
    if k == 0 {
        return Err(LatixError::invalid("k must be at least 1, got 0"));
    }
    if query.is_empty() || !query.len().is_multiple_of(dim) {
        return Err(LatixError::invalid(format!(
            "query must have shape (n_query_tokens >= 1, {dim}), got {} values",
            query.len()
        )));
    }
    maxsim::check_values(crate::maxsim::DocVectors::F32(query), "query", dim)?;
    if !fulls.is_empty() && fulls.len() != views.len() {
        return Err(LatixError::invalid(format!(
            "full vectors must be given for every segment ({}), got {}",
            views.len(),
            fulls.len()
        )));
    }
    let kc = codec.n_centroids();
    let nprobe = opts.nprobe.unwrap_or_else(|| default_nprobe(kc));
    check_nprobe(nprobe, kc)?;
    let rerank = opts.rerank.unwrap_or(!fulls.is_empty());
    if rerank && fulls.is_empty() {
        return Err(LatixError::invalid(
            "rerank needs the full vectors of every segment",
        ));
    }
    let filtered = views.iter().any(|v| v.allowed.is_some());
    let live: usize = views
        .iter()
        .map(|v| match v.allowed {
            Some(b) => b.iter().map(|w| w.count_ones() as usize).sum(),
            None => v.seg.n_docs(),
        })
        .sum();
    let all_mapped = views.iter().all(|v| v.seg.has_doc_map());
    let n_docs: usize = views.iter().map(|v| v.seg.n_docs()).sum();
    let stages = Stages::resolve(opts, k, nprobe, kc, rerank, Tier::None, all_mapped, live)?
        .with_filter(live, n_docs);
    let final_stage = if rerank {
        Rerank::Exact(fulls)
    } else {
        Rerank::Off
    };
    let hits = crate::parallel::run(n_threads, || {
        encoded_pipeline(
            codec,
            views,
            query,
            k,
            &stages,
            filtered,
            None,
            &final_stage,
            &|_| Ok(()),
        )
    })??;
    // Best first in the one hit order (segment, then document on ties), as an index search.
    Ok(crate::topk::best(hits, k))
}
