//! The exact re-rank of the refined list from the kept full vectors.

use super::refinement::{self, RefineScratch};
use super::*;
use crate::compressed::codec::Codec;
use crate::compressed::fidelity::{score_doc, score_doc_transform, FidQuery, FidSegment};
use crate::compressed::ivf::IvfSegment;
use crate::error::{LatixError, Result};
use crate::maxsim::DocVectors;

/// Full-precision vectors of one segment (`offsets[d]..offsets[d+1]` are document `d`'s rows),
/// used to re-rank candidates exactly.
#[derive(Clone, Copy)]
pub struct FullVectors<'a> {
    /// Row-major token vectors of the segment.
    pub vectors: DocVectors<'a>,
    /// Per-document row offsets (`n_docs + 1`).
    pub offsets: &'a [u64],
}

/// Re-scores `cands` exactly (MaxSim over the documents' full vectors, `full[segment]`), keeps the
/// best `k`; ties broken by segment then document. The query is packed once for the MaxSim kernel;
/// documents are scored in parallel in the latix pool it is called in when it has several threads.
pub fn rerank_exact(
    query: &[f32],
    dim: usize,
    full: &[FullVectors<'_>],
    cands: &[Candidate],
    k: usize,
) -> Result<Vec<Candidate>> {
    let prepared = crate::maxsim::PreparedQuery::new(query, dim)?;
    let score = |&(_, s, d): &Candidate| -> Result<Candidate> {
        let f = full
            .get(s as usize)
            .ok_or_else(|| LatixError::invalid(format!("no full vectors for segment {s}")))?;
        let (a, b) = match (f.offsets.get(d as usize), f.offsets.get(d as usize + 1)) {
            (Some(&a), Some(&b)) if a <= b && (b as usize) * dim <= f.vectors.len() => {
                (a as usize, b as usize)
            }
            _ => {
                return Err(LatixError::invalid(format!(
                    "segment {s}: full vectors do not cover document {d}"
                )))
            }
        };
        let rows = match f.vectors {
            DocVectors::F32(v) => DocVectors::F32(&v[a * dim..b * dim]),
            DocVectors::F16(v) => DocVectors::F16(&v[a * dim..b * dim]),
        };
        Ok((prepared.score_doc(rows), s, d))
    };
    let out: Result<Vec<Candidate>> = crate::parallel::map_init(cands, 8, || (), |_, c| score(c));
    Ok(crate::topk::best(out?, k))
}

/// The refinement data of one encoded segment (a fidelity tier) and its documents' row offsets,
/// used to re-rank candidates from the per-original-token reconstructions.
#[derive(Clone, Copy)]
pub struct TierRows<'a> {
    /// The segment's refinement file.
    pub fid: &'a FidSegment,
    /// Per-document row offsets of the segment (`n_docs + 1`).
    pub offsets: &'a [u64],
    /// The segment's inverted lists (a transform-coded file's residuals are against the
    /// documents' pooled vectors, scored from these codes).
    pub ivf: &'a IvfSegment,
}

/// Weight of the candidate's score from codes (refinement over the pooled PQ codes) in a tier's
/// re-rank score; the rest is the tier's MaxSim over the per-token reconstructions. The two
/// estimates err independently (pooled 4-bit PQ against per-token 1- or 2-bit residuals), so
/// their mean is closer to exact MaxSim than either. Chosen on SciFact's first 400 *train*
/// queries (balanced tier, nprobe 8, refine 32, re-rank 16): recall@10 against exact 0.869 at
/// weight 0 (tier alone), 0.889 at 0.5. Used for files of one residual stage.
pub const TIER_MIX: f32 = 0.5;

/// The weight of [`TIER_MIX`] for a file with a second residual stage (high tier, 2 + 1 bits):
/// its reconstruction is so much closer than the codes that averaging costs recall. SciFact's
/// first 400 *train* queries (nprobe 8, refine 48, re-rank 16): recall@10 against exact 0.952 at
/// weight 0, 0.949 at 0.2, 0.942 at 0.35 (0.922 at 0.5, all 809 queries).
pub const TIER_MIX_TWO_STAGE: f32 = 0.0;

/// Weight of the codes' score for candidates re-ranked from `fid`.
pub fn tier_mix(fid: &FidSegment) -> f32 {
    // A transform-coded file's score already holds the codes' score of each token's pooled
    // vector (offline, the mean with the document's codes score was worse by 0.01-0.04).
    if fid.nbits2() > 0 || fid.is_transform() {
        TIER_MIX_TWO_STAGE
    } else {
        TIER_MIX
    }
}

/// Documents re-ranked from a tier's refinement data for `k` results, after refinement from
/// codes: `max(2k, 16)`, like the exact re-rank of kept vectors (see [`rerank_depth`]).
pub fn tier_rerank_depth(k: usize) -> usize {
    (2 * k).max(16)
}

/// Documents re-ranked from a tier whose files have a second residual stage (high): every
/// refined candidate, `max(4k, 48)` (see [`default_refine_for_rerank`]), as the tier score alone
/// orders them better than the codes do. SciFact's first 400 *train* queries, nprobe 8, refine
/// 48: recall@10 against exact 0.952 / 0.958 re-ranking 16 / 48 (refine 64 : re-rank 32 0.961,
/// 96 : 96 0.963, 160 : 160 0.965: the tier's own error, not the depth, is what is left).
pub fn two_stage_rerank_depth(k: usize) -> usize {
    crate::compressed::search::default_refine_for_rerank(k)
}

/// Candidates refined from codes for a transform-coded tier of `bits` residual bits per token
/// (file version 4) and `k` results: `max(TX_DEPTH_BALANCED, 4k)` for up to 64 residual bytes,
/// `max(TX_DEPTH_HIGH, 4k)` above. The tier then re-scores the best [`transform_rerank_depth`]
/// of them. Offline, SciFact train: a tier scoring the best 48 / 96 / 160 candidates of the
/// list loses 0.008 / 0.002 / 0.001 recall against an ideal list, so the list is deep.
pub fn transform_refine_depth(k: usize, bits: usize) -> usize {
    let base = if bits <= 512 {
        TX_DEPTH_BALANCED
    } else {
        TX_DEPTH_HIGH
    };
    base.max(4 * k)
}

/// Documents re-scored from a transform-coded tier of `bits` residual bits per token for `k`
/// results, the best of the [`transform_refine_depth`] candidates refined from codes:
/// `max(TX_RERANK_BALANCED, 2k)` for up to 64 residual bytes, `max(TX_RERANK_HIGH, 3k)` above.
/// The codes' order of a deep list already holds the tier's top 10 near its head, and the tier
/// costs ~18 us (balanced) to ~45 us (high) per document on top of refinement's ~13 us.
/// SciFact's 809 train queries, nprobe 8, 1 thread (Intel Xeon, AVX-512; p50 ms, recall@10 vs
/// exact): balanced refine 96 re-scoring 96 / 32 / 24 / 16: 4.28 / 3.50 / 3.18 / 2.94 ms,
/// 0.952 / 0.952 / 0.952 / 0.948; high refine 160 re-scoring 160 / 48 / 32 / 24: 9.23 / 5.88 /
/// 5.03 / 4.60 ms, 0.981 / 0.981 / 0.981 / 0.978 (train nDCG@10 equal within 0.0001 wherever
/// recall is). With refinement off the tier re-scores the whole candidate list instead.
pub fn transform_rerank_depth(k: usize, bits: usize) -> usize {
    if bits <= 512 {
        TX_RERANK_BALANCED.max(2 * k)
    } else {
        TX_RERANK_HIGH.max(3 * k)
    }
}

/// Default refinement depth of a transform-coded `balanced` tier (64 B), k = 10.
pub const TX_DEPTH_BALANCED: usize = 96;
/// Default refinement depth of a transform-coded `high` tier (160 B), k = 10.
pub const TX_DEPTH_HIGH: usize = 160;
/// Default tier re-rank depth of a transform-coded `balanced` tier, k = 10.
pub const TX_RERANK_BALANCED: usize = 24;
/// Default tier re-rank depth of a transform-coded `high` tier, k = 10.
pub const TX_RERANK_HIGH: usize = 32;

/// Re-scores `cands` with MaxSim over their original tokens' reconstructions (`tiers[segment]`,
/// see [`crate::compressed::fidelity`]), scored from the refinement codes against the query's
/// tables and averaged with the candidate's own score (from codes: [`tier_mix`]); keeps the best
/// `k`, ties broken by segment then document. `plan`'s centroid scores
/// (or, for two-level plans, every centroid scored now) give each token's centroid term.
/// `pooled[i]`, where given, holds what [`refinement::pooled_scores`] computes for `cands[i]`
/// (from [`refinement::refine_pooled`]): a transform-coded file then reads it instead of
/// scoring the document's codes again; candidates past `pooled.len()` are scored here.
pub fn rerank_tier(
    codec: &Codec,
    plan: &QueryPlan,
    query: &[f32],
    tiers: &[TierRows<'_>],
    cands: &[Candidate],
    pooled: &[Vec<f32>],
    k: usize,
) -> Result<Vec<Candidate>> {
    let full = refinement::AllCentroidScores::new(codec, plan);
    let (cs, stride) = full.rows(plan);
    // One set of tables per segment a candidate comes from (each file has its own levels).
    let mut tables: Vec<Option<FidQuery>> = (0..tiers.len()).map(|_| None).collect();
    for &(_, s, d) in cands {
        let t = tiers
            .get(s as usize)
            .ok_or_else(|| LatixError::invalid(format!("no refinement data for segment {s}")))?;
        let covered = match (t.offsets.get(d as usize), t.offsets.get(d as usize + 1)) {
            (Some(&a), Some(&b)) => a <= b && b as usize <= t.fid.n_tokens(),
            _ => false,
        };
        if !covered {
            return Err(LatixError::invalid(format!(
                "segment {s}: refinement data does not cover document {d}"
            )));
        }
        if tables[s as usize].is_none() {
            tables[s as usize] = Some(FidQuery::new(query, t.fid));
        }
    }
    let simd = crate::simd::avx2();
    let nq = plan.n_query_tokens();
    let indexed: Vec<(usize, Candidate)> = cands.iter().copied().enumerate().collect();
    let score = |sc: &mut (RefineScratch, Vec<f32>),
                 &(ci, (c, s, d)): &(usize, Candidate)|
     -> Result<Candidate> {
        let t = &tiers[s as usize];
        let (a, b) = (
            t.offsets[d as usize] as usize,
            t.offsets[d as usize + 1] as usize,
        );
        let fq = tables[s as usize].as_ref().expect("tables built above");
        let tier = if t.fid.is_transform() {
            // The codes' scores of the document's pooled tokens, then each original token's
            // residual term on top of its pooled vector's.
            let positions = t.ivf.doc_positions(d as usize).ok_or_else(|| {
                LatixError::invalid(format!("segment {s} has no document map for document {d}"))
            })?;
            let np = positions.len();
            match pooled.get(ci) {
                Some(p) if p.len() == nq * np => score_doc_transform(fq, p, np, t.fid, a, b, simd),
                _ => {
                    sc.1.clear();
                    sc.1.resize(nq * np, 0.0);
                    refinement::pooled_scores(
                        plan, cs, stride, t.ivf, positions, simd, &mut sc.0, &mut sc.1,
                    );
                    score_doc_transform(fq, &sc.1, np, t.fid, a, b, simd)
                }
            }
        } else {
            score_doc(fq, cs, stride, t.fid, a, b, simd)
        };
        let mix = tier_mix(t.fid);
        Ok(((1.0 - mix) * tier + mix * c, s, d))
    };
    let out: Vec<Candidate> = crate::parallel::map_init::<_, _, _, Result<_>>(
        &indexed,
        8,
        || (RefineScratch::default(), Vec::new()),
        score,
    )?;
    Ok(crate::topk::best(out, k))
}
