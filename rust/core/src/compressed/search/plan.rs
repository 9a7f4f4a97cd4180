//! Query planning: every query token scored against the coarse centroids, its probed lists,
//! imputed scores and lookup tables ([`QueryPlan`]).

use rayon::prelude::*;

use crate::compressed::codec::Codec;
use crate::compressed::fastscan::{build_lut, TokenLut};
use crate::compressed::ivf::IvfSegment;
use crate::compressed::linalg::{scores, scores_half};
use crate::error::{LatixError, Result};

/// Added to the imputed score of a query token that reached no token of a document. The best
/// unprobed centroid's score bounds the centroid term only; a document's best token also gains from
/// its residual (the max over tokens of `<q, r>` is positive), so the bound alone under-credits
/// unreached documents. Chosen on SciFact's 809 *train* queries (default model, pooled index,
/// nprobe 16): nDCG@10 0.6798 / 0.6842 / 0.6881 / 0.6885 at shift 0 / 0.05 / 0.1 / 0.15. Test
/// queries: 0.6950 -> 0.7128 at 0.1 (recall@10 vs exact 0.814 -> 0.824; with 100k distractors
/// nDCG@10 0.7127 -> 0.7141 but recall@10 0.793 -> 0.753).
pub const IMPUTE_SHIFT: f32 = 0.1;

/// Default number of lists probed per query token for a codec with `k` centroids: `k / 512`
/// within 8..=32 (at most `k`), i.e. 8 up to K = 4096, 16 at K = 8192. Candidate generation only
/// has to bring the true top documents into the short list that [`super::refine`] re-scores, so fewer
/// probes suffice than when its estimates were final. Measured on SciFact's 809 *train* queries
/// (default model, pooled index, K 2048, 1 thread, recall@10 against exact search): nprobe 8 /
/// 12 / 16 with the best 16 refined: 0.853 / 0.863 / 0.869 at p50 1.49 / 1.63 / 1.87 ms (no
/// refine: 0.780 at nprobe 8, 0.821 at 16). On SciFact + 100k distractors (K 8192, 200 train
/// queries), nprobe 8 / 16 refining 16: 0.813 / 0.863.
pub fn default_nprobe(k: usize) -> usize {
    (k / 512).clamp(8, 32).min(k)
}

/// A query prepared for scanning: probed lists, imputed scores and lookup tables per token.
#[derive(Clone, Debug, PartialEq)]
pub struct QueryPlan {
    pub(super) nprobe: usize,
    pub(super) probes: Vec<u32>,
    pub(super) probe_scores: Vec<f32>,
    pub(super) impute: Vec<f32>,
    pub(super) luts: Vec<TokenLut>,
    /// Every centroid's score for every query token (`nq` rows of `cs_stride` values), kept
    /// for [`refine`]; empty when the plan scored only some centroids (two-level probing).
    pub(super) centroid_scores: Vec<f32>,
    pub(super) cs_stride: usize,
    /// The query tokens (`nq * dim`), kept only when `centroid_scores` is empty, for [`refine`]
    /// to score every centroid.
    pub(super) query: Vec<f32>,
    pub(super) m: usize,
    pub(super) k: usize,
}

/// Sortable key of a scored centroid: a larger key is a higher score, ties to the lower id.
#[inline]
pub(super) fn key(score: f32, c: u32) -> u64 {
    let b = score.to_bits();
    let o = if b >> 31 == 1 { !b } else { b | 0x8000_0000 };
    ((o as u64) << 32) | (u32::MAX - c) as u64
}

#[inline]
fn key_id(k: u64) -> u32 {
    u32::MAX - k as u32
}

#[inline]
fn key_score(k: u64) -> f32 {
    let o = (k >> 32) as u32;
    f32::from_bits(if o >> 31 == 1 { o & 0x7FFF_FFFF } else { !o })
}

/// Leaves `buf` holding the `n` largest keys of `it` in descending order. One comparison per
/// rejected key: keys are buffered while they beat the running threshold and the buffer is cut
/// back to `n` whenever it fills.
pub(super) fn top_keys(it: impl Iterator<Item = u64>, n: usize, buf: &mut Vec<u64>) {
    buf.clear();
    if n == 0 {
        return;
    }
    let cap = 4 * n + 32;
    let mut thr = 0u64;
    let desc = |a: &u64, b: &u64| b.cmp(a);
    for k in it {
        if k > thr {
            buf.push(k);
            if buf.len() == cap {
                buf.select_nth_unstable_by(n - 1, desc);
                buf.truncate(n);
                thr = buf[n - 1];
            }
        }
    }
    if buf.len() > n {
        buf.select_nth_unstable_by(n - 1, desc);
        buf.truncate(n);
    }
    buf.sort_unstable_by(desc);
}

/// Leaves `buf` holding the keys of the `n` best entries of `row` (score, then lower index), in
/// descending order. The maxima of groups of 16 give a threshold that at least `n` entries reach
/// (the `n`-th best group maximum), so only the few entries at or above it become keys; the
/// result equals [`top_keys`] over the whole row.
pub(super) fn top_of_row(row: &[f32], n: usize, gmax: &mut Vec<f32>, buf: &mut Vec<u64>) {
    const G: usize = 16;
    let n_groups = row.len().div_ceil(G);
    if n == 0 || n_groups <= n {
        top_keys(
            row.iter().enumerate().map(|(c, &v)| key(v, c as u32)),
            n,
            buf,
        );
        return;
    }
    gmax.clear();
    for g in row.chunks(G) {
        let mut m = g[0];
        for &v in &g[1..] {
            m = if v > m { v } else { m };
        }
        gmax.push(m);
    }
    gmax.select_nth_unstable_by(n - 1, |a, b| b.total_cmp(a));
    let thr = gmax[n - 1];
    top_keys(
        row.iter()
            .enumerate()
            .filter(|&(_, &v)| v >= thr)
            .map(|(c, &v)| key(v, c as u32)),
        n,
        buf,
    );
}

/// Scores the leaves of every cluster against the query tokens listed for it (one small GEMM per
/// cluster), appends their keys to those tokens' candidates and empties the lists.
fn score_groups(
    codec: &Codec,
    query: &[f32],
    members: &mut [Vec<u32>],
    cand: &mut [Vec<u64>],
    scratch: &mut (Vec<f32>, Vec<f32>),
) {
    let dim = codec.dim();
    let (rows, out) = scratch;
    for (gi, mem) in members.iter_mut().enumerate() {
        if mem.is_empty() {
            continue;
        }
        let (range, pan) = codec.group(gi);
        rows.clear();
        for &i in mem.iter() {
            rows.extend_from_slice(&query[i as usize * dim..(i as usize + 1) * dim]);
        }
        let np = pan.n_padded();
        out.clear();
        out.resize(mem.len() * np, 0.0);
        scores(rows, pan, out);
        for (r, &i) in mem.iter().enumerate() {
            cand[i as usize].extend(
                out[r * np..r * np + range.len()]
                    .iter()
                    .enumerate()
                    .map(|(j, &v)| key(v, (range.start + j) as u32)),
            );
        }
        mem.clear();
    }
}

/// The one range check of `nprobe` (lists probed per query token): `1..=n_centroids`. Run once
/// per search, before any query is planned (index searches, the building blocks' search, and
/// the public [`QueryPlan`] constructors).
pub fn check_nprobe(nprobe: usize, n_centroids: usize) -> Result<()> {
    if nprobe == 0 || nprobe > n_centroids {
        return Err(LatixError::invalid(format!(
            "nprobe must be between 1 and the number of centroids ({n_centroids}), got {nprobe}"
        )));
    }
    Ok(())
}

impl QueryPlan {
    /// Prepares `query` (`nq * dim` f32) for `codec`, probing `nprobe` lists per token: every
    /// query token is scored against all K centroids (what [`crate::Index`] searches with; the
    /// two-level tree search of [`QueryPlan::with_probe_groups`] is an explicit opt-in that no
    /// index search uses).
    pub fn new(codec: &Codec, query: &[f32], nprobe: usize) -> Result<QueryPlan> {
        Self::with_probe_groups(codec, query, nprobe, codec.n_groups())
    }

    /// Like [`QueryPlan::new`], scoring for each query token only the leaf centroids of its
    /// `probe_groups` best top-level clusters (at least enough clusters to hold `nprobe + 1`
    /// leaves) instead of all K centroids: the two-level quantiser's tree search (as in its
    /// assignment). `probe_groups >= codec.n_groups()` scores every centroid exactly. The imputed
    /// score of unprobed lists is then the best scored, unprobed leaf.
    pub fn with_probe_groups(
        codec: &Codec,
        query: &[f32],
        nprobe: usize,
        probe_groups: usize,
    ) -> Result<QueryPlan> {
        check_nprobe(nprobe, codec.n_centroids())?;
        Self::build(codec, query, nprobe, probe_groups)
    }

    /// [`QueryPlan::with_probe_groups`] for an `nprobe` the caller range-checked with
    /// [`check_nprobe`] (once per search, not once per query).
    pub(super) fn build(
        codec: &Codec,
        query: &[f32],
        nprobe: usize,
        probe_groups: usize,
    ) -> Result<QueryPlan> {
        let dim = codec.dim();
        if query.is_empty() || !query.len().is_multiple_of(dim) {
            return Err(LatixError::invalid(format!(
                "query must be a non-empty (n_query_tokens, {dim}) array, got {} values",
                query.len()
            )));
        }
        let k = codec.n_centroids();
        debug_assert!((1..=k).contains(&nprobe), "nprobe {nprobe} not checked");
        let nq = query.len() / dim;
        let want = (nprobe + 1).min(k);
        let mut probes = Vec::with_capacity(nq * nprobe);
        let mut probe_scores = Vec::with_capacity(nq * nprobe);
        let mut impute = Vec::with_capacity(nq);
        let mut top: Vec<u64> = Vec::with_capacity(4 * want + 32);
        let mut push_token = |top: &mut Vec<u64>| {
            impute.push(if top.len() > nprobe {
                key_score(top[nprobe]) + IMPUTE_SHIFT
            } else {
                0.0
            });
            let n_sel = nprobe.min(top.len());
            let sel = &mut top[..n_sel];
            // List order: ascending centroid id, for sequential memory access.
            sel.sort_unstable_by_key(|&kk| key_id(kk));
            for &kk in sel.iter() {
                probes.push(key_id(kk));
                probe_scores.push(key_score(kk));
            }
        };
        let g = codec.n_groups();
        let mut centroid_scores = Vec::new();
        let mut cs_stride = 0;
        if probe_groups >= g || g <= 1 {
            let panels = codec.centroid_half_panels();
            let np = panels.n_padded();
            let mut cs = vec![0.0f32; nq * np];
            // With several threads, each scores every centroid for a share of the query tokens
            // (the largest single piece of a query's work at large K).
            let threads = crate::parallel::pool_threads();
            if threads > 1 && nq > 1 {
                let rows = nq.div_ceil(threads);
                cs.par_chunks_mut(rows * np)
                    .zip(query.par_chunks(rows * dim))
                    .for_each(|(out, q)| scores_half(q, panels, out));
            } else {
                scores_half(query, panels, &mut cs);
            }
            let mut gmax = Vec::new();
            for i in 0..nq {
                top_of_row(&cs[i * np..i * np + k], want, &mut gmax, &mut top);
                push_token(&mut top);
            }
            centroid_scores = cs;
            cs_stride = np;
        } else {
            // Level 1: top-level cluster scores.
            let tp = codec.top_panels();
            let gp = tp.n_padded();
            let mut ts = vec![0.0f32; nq * gp];
            scores(query, tp, &mut ts);
            let mut members: Vec<Vec<u32>> = vec![Vec::new(); g];
            let mut order: Vec<u64> = Vec::with_capacity(g);
            for i in 0..nq {
                order.clear();
                order.extend(
                    ts[i * gp..i * gp + g]
                        .iter()
                        .enumerate()
                        .map(|(c, &v)| key(v, c as u32)),
                );
                order.sort_unstable_by(|a, b| b.cmp(a));
                // The best `probe_groups` clusters, more if they hold fewer than `want` leaves.
                let mut leaves = 0;
                for (n, &kk) in order.iter().enumerate() {
                    if n >= probe_groups && leaves >= want {
                        break;
                    }
                    let gi = key_id(kk) as usize;
                    leaves += codec.group(gi).0.len();
                    members[gi].push(i as u32);
                }
            }
            // Level 2: exact scores of the chosen clusters' leaves.
            let mut cand: Vec<Vec<u64>> = vec![Vec::new(); nq];
            let mut scratch = (Vec::new(), Vec::new());
            score_groups(codec, query, &mut members, &mut cand, &mut scratch);
            for c in &cand {
                top_keys(c.iter().copied(), want, &mut top);
                push_token(&mut top);
            }
        }
        let luts = if crate::parallel::pool_threads() > 1 {
            query
                .par_chunks_exact(dim)
                .map(|q| build_lut(codec, q))
                .collect()
        } else {
            query
                .chunks_exact(dim)
                .map(|q| build_lut(codec, q))
                .collect()
        };
        Ok(QueryPlan {
            nprobe,
            probes,
            probe_scores,
            impute,
            luts,
            centroid_scores,
            cs_stride,
            query: if cs_stride == 0 {
                query.to_vec()
            } else {
                Vec::new()
            },
            m: codec.n_subspaces(),
            k,
        })
    }

    /// Number of query tokens.
    pub fn n_query_tokens(&self) -> usize {
        self.impute.len()
    }
}

/// A segment to search, with an optional filter: bit `d` of `allowed` set = document `d` may be
/// returned (tombstones and user subsets are both expressed this way).
#[derive(Clone, Copy)]
pub struct SegmentView<'a> {
    /// The segment's inverted lists.
    pub seg: &'a IvfSegment,
    /// Allowed-document bitmap (`ceil(n_docs / 64)` words), None = all documents.
    pub allowed: Option<&'a [u64]>,
}

/// A scored candidate: estimated MaxSim, segment index (in the slice given), local document.
pub type Candidate = (f32, u32, u32);
