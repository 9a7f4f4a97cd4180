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
pub use plan::{default_nprobe, Candidate, QueryPlan, SegmentView, IMPUTE_SHIFT};
pub use refinement::{
    centroid_interaction, default_refine, default_refine_for_rerank, refine, rerank_depth,
    REFINE_MIN,
};
pub use rerank::{rerank_exact, rerank_tier, tier_rerank_depth, FullVectors, TierRows};
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
    /// `None` is [`default_refine`] of `k` (and off for indexes whose lists predate the document
    /// map).
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
    if nprobe == 0 || nprobe > kc {
        return Err(LatixError::invalid(format!(
            "nprobe must be between 1 and the number of centroids ({kc}), got {nprobe}"
        )));
    }
    let segs = snap.segments();
    // A fidelity tier re-ranks from its refinement data (every encoded segment has a file).
    let tiered = !keep_vectors
        && state
            .ivfs
            .iter()
            .zip(&state.fids)
            .any(|(i, f)| i.is_some() && f.is_some());
    let rerank = opts.rerank.unwrap_or(keep_vectors || tiered);
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
    let n_refine = match opts.refine {
        Some(0) => 0,
        Some(r) if !all_mapped => {
            return Err(LatixError::invalid(format!(
                "refine={r} needs inverted lists with a document map, and some segments of this \
                 index were written by an older latix: compact() rewrites them"
            )))
        }
        Some(r) => r.max(k),
        None if !all_mapped => 0,
        None if rerank => default_refine_for_rerank(k),
        None => default_refine(k),
    };
    // No stage can return more documents than the snapshot holds: depths beyond that mean
    // "all of them" and are capped before anything is sized by them (refine=10**9 once asked
    // for a 48 GB candidate buffer).
    let live = snap.len().max(1);
    let n_refine = n_refine.min(live);
    let exact_depth = match opts.rerank_depth {
        Some(r) if rerank => r.max(k),
        _ if rerank && tiered => tier_rerank_depth(k),
        _ if rerank => rerank_depth(k, n_refine > 0),
        _ => k,
    }
    .min(live);
    let depth = exact_depth.max(n_refine);
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
    let per_query = |q: &[f32]| -> Result<Vec<(f32, usize, u32)>> {
        let mut hits: Vec<(f32, usize, u32)> = Vec::new();
        if !views.is_empty() {
            let plan = QueryPlan::new(&codec.codec, q, nprobe)?;
            // A filtered search ranks many candidates by centroid interaction and refines the
            // best of them (all allowed documents when exhaustive).
            let ci_refine = |c: &[Candidate]| -> Result<Vec<Candidate>> {
                let r = FILTERED_REFINE.max(depth);
                if c.len() <= r {
                    return refine(&codec.codec, &plan, &views, c);
                }
                let mut ci = centroid_interaction(&codec.codec, &plan, &views, c)?;
                ci.truncate(r);
                refine(&codec.codec, &plan, &views, &ci)
            };
            let deep = filtered && n_refine > 0;
            let mut cands = match &exhaustive {
                Some(all) => ci_refine(all)?,
                None if deep => {
                    ci_refine(&search_segments(&plan, &views, FILTERED_DEPTH.max(depth))?)?
                }
                None => search_segments(&plan, &views, depth)?,
            };
            if n_refine > 0 && exhaustive.is_none() && !deep {
                // Re-score the best n_refine with all their codes; the rest keep their order
                // below them (only reached when the exact re-rank asks for more).
                let rest = cands.split_off(n_refine.min(cands.len()));
                cands = refine(&codec.codec, &plan, &views, &cands)?;
                cands.extend(rest);
            }
            cands.truncate(exact_depth);
            if rerank && tiered {
                cands = rerank_tier(&codec.codec, &plan, q, &tiers, &cands, k)?;
            } else if rerank {
                for &(_, vi, d) in &cands {
                    // Verified read of the rows the re-rank is about to use.
                    let seg = &segs[view_seg[vi as usize]].segment;
                    let (a, b) = seg.doc_range(d);
                    seg.check_rows(a, b)?;
                }
                cands = rerank_exact(q, dim, &fulls, &cands, k)?;
            }
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
    let all: Vec<Vec<(f32, usize, u32)>> = crate::parallel::install(n_threads, || {
        queries.iter().map(|q| per_query(q)).collect::<Result<_>>()
    })??;
    SearchResults::assemble(snap, k, all.into_iter())
}
