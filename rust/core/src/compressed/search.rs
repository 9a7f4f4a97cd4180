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

use rayon::prelude::*;

use super::codec::Codec;
use super::fastscan::{build_lut, gather_block, has_avx2, scan_block, TokenLut, BLOCK};
use super::ivf::{IvfSegment, NormScales, NORM_ONE};
use super::linalg::{scores, scores_half};
use crate::error::{LatixError, Result};
use crate::maxsim::DocVectors;
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
/// has to bring the true top documents into the short list that [`refine`] re-scores, so fewer
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
    nprobe: usize,
    probes: Vec<u32>,
    probe_scores: Vec<f32>,
    impute: Vec<f32>,
    luts: Vec<TokenLut>,
    /// Every centroid's score for every query token (`nq` rows of `cs_stride` values), kept
    /// for [`refine`]; empty when the plan scored only some centroids (two-level probing).
    centroid_scores: Vec<f32>,
    cs_stride: usize,
    /// The query tokens (`nq * dim`), kept only when `centroid_scores` is empty, for [`refine`]
    /// to score every centroid.
    query: Vec<f32>,
    m: usize,
    k: usize,
}

/// Sortable key of a scored centroid: a larger key is a higher score, ties to the lower id.
#[inline]
fn key(score: f32, c: u32) -> u64 {
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
fn top_keys(it: impl Iterator<Item = u64>, n: usize, buf: &mut Vec<u64>) {
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
fn top_of_row(row: &[f32], n: usize, gmax: &mut Vec<f32>, buf: &mut Vec<u64>) {
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

/// Default number of top-level clusters whose leaf centroids are scored per query token (see
/// [`QueryPlan::with_probe_groups`]) for a codec with `n_groups` top-level clusters.
pub fn default_probe_groups(n_groups: usize) -> usize {
    n_groups
}

impl QueryPlan {
    /// Prepares `query` (`nq * dim` f32) for `codec`, probing `nprobe` lists per token (centroid
    /// candidates from [`default_probe_groups`] top-level clusters).
    pub fn new(codec: &Codec, query: &[f32], nprobe: usize) -> Result<QueryPlan> {
        Self::with_probe_groups(codec, query, nprobe, default_probe_groups(codec.n_groups()))
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
        let dim = codec.dim();
        if query.is_empty() || !query.len().is_multiple_of(dim) {
            return Err(LatixError::invalid(format!(
                "query must be a non-empty (n_query_tokens, {dim}) array, got {} values",
                query.len()
            )));
        }
        let k = codec.n_centroids();
        if nprobe == 0 || nprobe > k {
            return Err(LatixError::invalid(format!(
                "nprobe must be in 1..={k} (the number of centroids), got {nprobe}"
            )));
        }
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
            let threads = rayon::current_num_threads();
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
        let luts = if rayon::current_num_threads() > 1 {
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

/// Documents per accumulator chunk: the unit in which dirty regions are tracked and cleared.
const CHUNK: usize = 64;
// A chunk's hit mask is one u64 word, and filters (one bit per document, 64 per word) are
// applied a chunk at a time.
const _: () = assert!(CHUNK == 64);

/// Per-thread dense accumulators, reused across queries and segments. Invariant between uses:
/// `best` is all `-inf`, `partial` all 0, `hit` all 0 and both chunk bitmaps empty; only the
/// chunks marked in `dirty` / `any` are written, and exactly those are reset, so a query costs
/// O(tokens scanned + chunks touched), never O(documents) of clearing.
struct Scratch {
    /// Best code-level score of each document for the current query token (`-inf` = unreached).
    best: Vec<f32>,
    /// Sum over the query tokens folded so far of `best - m_i` (reached tokens only).
    partial: Vec<f32>,
    /// One word per chunk, bit `d % 64` set when some query token reached document `d` (it is a
    /// candidate).
    hit: Vec<u64>,
    /// One byte per chunk of [`CHUNK`] documents: `best` holds values there (a plain byte store
    /// per token, so consecutive tokens do not chain through a read-modify-write of one word).
    dirty: Vec<u8>,
    /// One bit per chunk: `partial` / `hit` hold values there.
    any: Vec<u64>,
}

impl Scratch {
    const fn new() -> Self {
        Scratch {
            best: Vec::new(),
            partial: Vec::new(),
            hit: Vec::new(),
            dirty: Vec::new(),
            any: Vec::new(),
        }
    }

    /// Calls `f(document, partial)` for every document some query token reached (and `allowed`
    /// lets through: one bit per document, one word per chunk), in document order, and resets the
    /// chunks they occupied, restoring the invariant. The filter decides which documents become
    /// candidates before the short list is cut (scores are per document, so this equals skipping
    /// them while scanning, at a fraction of the cost).
    fn take_hits(&mut self, allowed: Option<&[u64]>, mut f: impl FnMut(usize, f32)) {
        for w in 0..self.any.len() {
            let mut bits = std::mem::take(&mut self.any[w]);
            while bits != 0 {
                let c = w * 64 + bits.trailing_zeros() as usize;
                bits &= bits - 1;
                let mut hit = std::mem::take(&mut self.hit[c]);
                if let Some(a) = allowed {
                    hit &= a.get(c).copied().unwrap_or(0);
                }
                while hit != 0 {
                    let d = c * CHUNK + hit.trailing_zeros() as usize;
                    hit &= hit - 1;
                    f(d, self.partial[d]);
                }
                self.partial[c * CHUNK..(c + 1) * CHUNK].fill(0.0);
            }
        }
    }

    /// Grows the arrays to cover `nd` documents (whole chunks), keeping the invariant.
    fn ensure(&mut self, nd: usize) {
        let n = nd.div_ceil(CHUNK) * CHUNK;
        if self.best.len() < n {
            self.best.resize(n, f32::NEG_INFINITY);
            self.partial.resize(n, 0.0);
        }
        if self.hit.len() < n / CHUNK {
            self.hit.resize(n / CHUNK, 0);
        }
        if self.dirty.len() < n / CHUNK {
            self.dirty.resize(n / CHUNK, 0);
            self.any.resize((n / CHUNK).div_ceil(64), 0);
        }
    }
}

thread_local! {
    static SCRATCH: std::cell::RefCell<Scratch> = const { std::cell::RefCell::new(Scratch::new()) };
}

/// Runs `f` with this thread's scratch (a fresh one if it is already borrowed, which only a
/// re-entrant call could cause).
fn with_scratch<R>(f: impl FnOnce(&mut Scratch) -> R) -> R {
    SCRATCH.with(|c| match c.try_borrow_mut() {
        Ok(mut s) => f(&mut s),
        Err(_) => f(&mut Scratch::new()),
    })
}

/// Scans the probed lists of query token `i` in one segment: `best[d]` = max over the document's
/// probed tokens of `<q_i, c> + lut(codes)`. Branch-free per token (a max and a chunk-byte store).
fn scan_token(plan: &QueryPlan, i: usize, seg: &IvfSegment, simd: bool, s: &mut Scratch) {
    #[cfg(target_arch = "x86_64")]
    {
        if simd {
            // SAFETY: `simd` is true only when AVX2 and FMA were detected at run time
            // (`simd::avx2_fma`, the features `scan_token_avx2` enables).
            unsafe { scan_token_avx2(plan, i, seg, s) };
            return;
        }
    }
    scan_token_body(plan, i, seg, simd, s)
}

/// [`scan_token_body`] compiled for AVX2, so the block kernel and the score conversion inline.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn scan_token_avx2(plan: &QueryPlan, i: usize, seg: &IvfSegment, s: &mut Scratch) {
    scan_token_body(plan, i, seg, true, s)
}

#[inline(always)]
fn scan_token_body(plan: &QueryPlan, i: usize, seg: &IvfSegment, simd: bool, s: &mut Scratch) {
    match seg.norm_scales() {
        NormScales::F32(n) => scan_lists(plan, i, seg, n, simd, s),
        NormScales::Fixed(n) => scan_lists(plan, i, seg, n, simd, s),
    }
}

/// Per-token norm scales as stored (f32 in version-3 lists, u16 fixed point in version 4).
trait NormSlice: Copy {
    /// The scales of tokens `t0..t0 + BLOCK` times `scores` (only the first `n` are meaningful;
    /// the rest may be anything when the list ends inside the block).
    fn scale_block(self, t0: usize, n: usize, scores: &mut [f32; BLOCK]);
}

impl NormSlice for &[f32] {
    #[inline(always)]
    fn scale_block(self, t0: usize, n: usize, scores: &mut [f32; BLOCK]) {
        for (o, &r) in scores[..n].iter_mut().zip(&self[t0..t0 + n]) {
            *o *= r;
        }
    }
}

impl NormSlice for &[u16] {
    #[inline(always)]
    fn scale_block(self, t0: usize, n: usize, scores: &mut [f32; BLOCK]) {
        if n == BLOCK {
            // Fixed length: the multiply vectorises.
            let r: &[u16; BLOCK] = self[t0..t0 + BLOCK].try_into().expect("a full block");
            for (o, &r) in scores.iter_mut().zip(r) {
                *o *= r as f32 * (1.0 / NORM_ONE);
            }
        } else {
            for (o, &r) in scores[..n].iter_mut().zip(&self[t0..t0 + n]) {
                *o *= r as f32 * (1.0 / NORM_ONE);
            }
        }
    }
}

#[inline(always)]
fn scan_lists<N: NormSlice>(
    plan: &QueryPlan,
    i: usize,
    seg: &IvfSegment,
    norms: N,
    simd: bool,
    s: &mut Scratch,
) {
    let m = plan.m;
    let bb = m * 16;
    let docs = seg.doc_of_token();
    let codes = seg.codes();
    let lut = &plan.luts[i];
    let best = &mut s.best[..];
    let dirty = &mut s.dirty[..];
    // Every document number below is < seg.n_docs() (checked when the lists were parsed), and the
    // scratch covers n_docs documents in whole chunks (`Scratch::ensure`).
    assert!(best.len() >= seg.n_docs() && dirty.len() * CHUNK >= seg.n_docs());
    let mut acc = [0u16; BLOCK];
    let mut sc = [0.0f32; BLOCK];
    for p in 0..plan.nprobe {
        let c = plan.probes[i * plan.nprobe + p] as usize;
        let base = plan.probe_scores[i * plan.nprobe + p] + lut.bias;
        // One sub-list per chunk of 65,536 documents (u16 document numbers, see ivf).
        for (t_start, t_end, b_start, doc_base) in seg.sublists(c) {
            let list_codes = &codes[b_start * bb..];
            for (bi, t0) in (t_start..t_end).step_by(BLOCK).enumerate() {
                scan_block(
                    &lut.lut,
                    &list_codes[bi * bb..(bi + 1) * bb],
                    m,
                    simd,
                    &mut acc,
                );
                for (o, &a) in sc.iter_mut().zip(&acc) {
                    *o = base + lut.scale * a as f32;
                }
                let n = (t_end - t0).min(BLOCK);
                // The decoded vector rescaled to the token's true length (see ivf).
                norms.scale_block(t0, n, &mut sc);
                for (&d, &v) in docs[t0..t0 + n].iter().zip(&sc[..n]) {
                    let d = doc_base + d as usize;
                    debug_assert!(d < seg.n_docs());
                    // SAFETY: d < seg.n_docs() <= best.len() and d / CHUNK < dirty.len()
                    // (asserted above; document numbers validated at parse).
                    unsafe {
                        let b = best.get_unchecked_mut(d);
                        // A select (maxss), not a branch: the outcome is unpredictable.
                        *b = if v > *b { v } else { *b };
                        *dirty.get_unchecked_mut(d / CHUNK) = 1;
                    }
                }
            }
        }
    }
}

/// Folds the current query token into the per-document sums: `partial += best - m_i` where
/// reached, marks hits, and resets `best` (dirty chunks only).
fn fold_token(mi: f32, s: &mut Scratch) {
    let simd = has_avx2();
    for c in 0..s.dirty.len() {
        if s.dirty[c] == 0 {
            continue;
        }
        s.dirty[c] = 0;
        s.any[c >> 6] |= 1u64 << (c & 63);
        let r = c * CHUNK..(c + 1) * CHUNK;
        let best: &mut [f32; CHUNK] = (&mut s.best[r.clone()]).try_into().expect("a chunk");
        let partial: &mut [f32; CHUNK] = (&mut s.partial[r]).try_into().expect("a chunk");
        s.hit[c] |= fold_chunk(best, partial, mi, simd);
    }
}

/// One chunk of [`fold_token`]; returns the chunk's reached documents as bits.
#[inline]
fn fold_chunk(best: &mut [f32; CHUNK], partial: &mut [f32; CHUNK], mi: f32, simd: bool) -> u64 {
    #[cfg(target_arch = "x86_64")]
    {
        if simd {
            // SAFETY: `simd` is true only when AVX2 was detected at run time.
            return unsafe { fold_chunk_avx2(best, partial, mi) };
        }
    }
    let _ = simd;
    let mut bits = 0u64;
    for (j, (b, p)) in best.iter_mut().zip(partial.iter_mut()).enumerate() {
        let reached = *b != f32::NEG_INFINITY;
        *p += if reached { *b - mi } else { 0.0 };
        bits |= (reached as u64) << j;
        *b = f32::NEG_INFINITY;
    }
    bits
}

/// AVX2 [`fold_chunk`]: eight documents per step, the reached mask as a movemask.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
unsafe fn fold_chunk_avx2(best: &mut [f32; CHUNK], partial: &mut [f32; CHUNK], mi: f32) -> u64 {
    use std::arch::x86_64::*;
    let ninf = _mm256_set1_ps(f32::NEG_INFINITY);
    let vmi = _mm256_set1_ps(mi);
    let mut bits = 0u64;
    for g in 0..CHUNK / 8 {
        // SAFETY: g * 8 + 8 <= CHUNK for both arrays.
        let bp = best.as_mut_ptr().add(g * 8);
        let pp = partial.as_mut_ptr().add(g * 8);
        let b = _mm256_loadu_ps(bp);
        // Scores are never NaN (finite queries and codes), so "not equal" means "reached".
        let reached = _mm256_cmp_ps::<_CMP_NEQ_OQ>(b, ninf);
        let add = _mm256_and_ps(_mm256_sub_ps(b, vmi), reached);
        _mm256_storeu_ps(pp, _mm256_add_ps(_mm256_loadu_ps(pp), add));
        _mm256_storeu_ps(bp, ninf);
        bits |= ((_mm256_movemask_ps(reached) as u32 & 0xFF) as u64) << (g * 8);
    }
    bits
}

/// Keeps the `n` best candidates seen so far without sorting everything: candidates are pushed
/// while they beat the current threshold; when the buffer fills it is cut back to the best `n`.
struct TopN {
    n: usize,
    buf: Vec<Candidate>,
    /// Score of the n-th best after the last cut (`-inf` before): pushes must beat it. Candidates
    /// arrive in increasing (segment, document) order, so an equal score would lose the tie.
    thr: f32,
}

fn cand_cmp(a: &Candidate, b: &Candidate) -> std::cmp::Ordering {
    b.0.total_cmp(&a.0).then(a.1.cmp(&b.1)).then(a.2.cmp(&b.2))
}

impl TopN {
    /// Buffer length at which [`TopN::push`] cuts back to the best `n`.
    fn cap(n: usize) -> usize {
        n.saturating_mul(4).saturating_add(64)
    }

    fn new(n: usize) -> Self {
        TopN {
            n,
            // Reserved lazily beyond a small start: `n` may exceed what the segments hold.
            buf: Vec::with_capacity(Self::cap(n).min(4096)),
            thr: f32::NEG_INFINITY,
        }
    }

    #[inline]
    fn push(&mut self, c: Candidate) {
        if c.0 > self.thr || self.thr == f32::NEG_INFINITY {
            self.buf.push(c);
            if self.buf.len() >= Self::cap(self.n) {
                self.cut();
            }
        }
    }

    fn cut(&mut self) {
        if self.buf.len() > self.n && self.n > 0 {
            self.buf.select_nth_unstable_by(self.n - 1, cand_cmp);
            self.buf.truncate(self.n);
            self.thr = self.buf[self.n - 1].0;
            for c in &self.buf {
                self.thr = self.thr.min(c.0);
            }
        }
    }

    fn finish(mut self) -> Vec<Candidate> {
        self.cut();
        self.buf.sort_by(cand_cmp);
        self.buf.truncate(self.n);
        self.buf
    }
}

/// Moves the candidates of segment `si` (hit and allowed documents) from the scratch into `top`,
/// resetting the scratch chunks they occupied.
fn drain_candidates(
    s: &mut Scratch,
    si: usize,
    base: f32,
    allowed: Option<&[u64]>,
    top: &mut TopN,
) {
    s.take_hits(allowed, |d, p| top.push((base + p, si as u32, d as u32)));
}

/// Scans `segments` for `plan` and returns the `n_out` best documents by estimated score, best
/// first (ties broken by segment then document number). Runs in the current rayon pool.
pub fn search_segments(
    plan: &QueryPlan,
    segments: &[SegmentView<'_>],
    n_out: usize,
) -> Result<Vec<Candidate>> {
    for (si, v) in segments.iter().enumerate() {
        if v.seg.n_centroids() != plan.k || v.seg.n_subspaces() != plan.m {
            return Err(LatixError::invalid(format!("segment {si} was encoded with a different codec (K {}, M {}) than the query plan (K {}, M {})", v.seg.n_centroids(), v.seg.n_subspaces(), plan.k, plan.m)));
        }
        if let Some(a) = v.allowed {
            if a.len() * 64 < v.seg.n_docs() {
                return Err(LatixError::invalid(format!(
                    "segment {si}: filter bitmap has {} words for {} documents",
                    a.len(),
                    v.seg.n_docs()
                )));
            }
        }
    }
    // More candidates than documents cannot exist (this also bounds every buffer sized by it).
    let n_docs: usize = segments.iter().map(|v| v.seg.n_docs()).sum();
    let n_out = n_out.min(n_docs);
    if n_out == 0 {
        return Ok(Vec::new());
    }
    let nq = plan.n_query_tokens();
    let simd = crate::simd::avx2_fma();
    let base: f32 = plan.impute.iter().sum();
    let n_tasks = rayon::current_num_threads().min(nq).max(1);
    let mut top = TopN::new(n_out);
    if n_tasks == 1 {
        with_scratch(|s| {
            for (si, v) in segments.iter().enumerate() {
                s.ensure(v.seg.n_docs());
                for i in 0..nq {
                    scan_token(plan, i, v.seg, simd, s);
                    fold_token(plan.impute[i], s);
                }
                drain_candidates(s, si, base, v.allowed, &mut top);
            }
        });
        return Ok(top.finish());
    }
    // Several threads: each takes a share of the query tokens (balanced by the number of tokens
    // its probed lists hold) over every segment and returns sparse partial sums per segment.
    let groups = split_tokens(plan, segments, n_tasks);
    let parts: Vec<Vec<Vec<(u32, f32)>>> = groups
        .par_iter()
        .map(|toks| {
            with_scratch(|s| {
                segments
                    .iter()
                    .map(|v| {
                        s.ensure(v.seg.n_docs());
                        for &i in toks {
                            scan_token(plan, i, v.seg, simd, s);
                            fold_token(plan.impute[i], s);
                        }
                        let mut out = Vec::new();
                        s.take_hits(None, |d, p| out.push((d as u32, p)));
                        out
                    })
                    .collect()
            })
        })
        .collect();
    with_scratch(|s| {
        for (si, v) in segments.iter().enumerate() {
            s.ensure(v.seg.n_docs());
            // Added in task order, so the sums do not depend on scheduling.
            for part in &parts {
                for &(d, p) in &part[si] {
                    let d = d as usize;
                    s.partial[d] += p;
                    s.hit[d / CHUNK] |= 1u64 << (d % CHUNK);
                    s.any[d >> 12] |= 1u64 << ((d >> 6) & 63);
                }
            }
            drain_candidates(s, si, base, v.allowed, &mut top);
        }
    });
    Ok(top.finish())
}

/// Splits the query tokens into `n` groups of about equal scan work (tokens in their probed lists,
/// summed over segments): greedy, largest first, each to the lightest group.
fn split_tokens(plan: &QueryPlan, segments: &[SegmentView<'_>], n: usize) -> Vec<Vec<usize>> {
    let nq = plan.n_query_tokens();
    let mut cost: Vec<(u64, usize)> = (0..nq)
        .map(|i| {
            let mut w = 0u64;
            for v in segments {
                for &c in &plan.probes[i * plan.nprobe..(i + 1) * plan.nprobe] {
                    w += v.seg.list_len(c as usize) as u64;
                }
            }
            (w, i)
        })
        .collect();
    cost.sort_by(|a, b| b.0.cmp(&a.0).then(a.1.cmp(&b.1)));
    let mut groups: Vec<(u64, Vec<usize>)> = vec![(0, Vec::new()); n];
    for (w, i) in cost {
        let g = (0..n).min_by_key(|&g| (groups[g].0, g)).unwrap_or(0);
        groups[g].0 += w;
        groups[g].1.push(i);
    }
    groups
        .into_iter()
        .map(|(_, mut t)| {
            t.sort_unstable();
            t
        })
        .filter(|t| !t.is_empty())
        .collect()
}

/// Documents re-scored by [`refine`] by default: at least this many, and at least `k`.
/// Measured on SciFact's 809 train queries (K 2048, nprobe 8, 1 thread): recall@10 against
/// exact search 0.780 without refinement, 0.853 / 0.870 / 0.874 refining the best 16 / 24 / 32,
/// at p50 1.07 / 1.49 / 1.80 / 2.07 ms: each refined document costs ~30 us (its ~120 tokens
/// against ~20 query tokens), so 16 keeps a SciFact query under 2 ms.
pub const REFINE_MIN: usize = 16;

/// Default refinement depth for `k` results: `max(k, REFINE_MIN)`.
pub fn default_refine(k: usize) -> usize {
    k.max(REFINE_MIN)
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
struct RefineScratch {
    blocks: Vec<u8>,
    /// Per token (padded to whole blocks): centroid id, and norm scale.
    cid: Vec<u32>,
    scale: Vec<f32>,
    src: Vec<(usize, usize)>,
}

/// Code-level MaxSim of the document whose tokens sit at list `positions` of `seg` (from the
/// document map): the tokens' codes are gathered out of their lists' blocks into blocks of the
/// document's own ([`gather_block`]), scored against every query token's lookup table, and the
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
            // (`simd::avx2_fma`, the features `refine_doc_avx2` enables).
            return unsafe { refine_doc_avx2(plan, cs, cs_stride, seg, positions, sc) };
        }
    }
    refine_doc_body(plan, cs, cs_stride, seg, positions, simd, sc)
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
    refine_doc_body(plan, cs, cs_stride, seg, positions, true, sc)
}

#[inline(always)]
fn refine_doc_body(
    plan: &QueryPlan,
    cs: &[f32],
    cs_stride: usize,
    seg: &IvfSegment,
    positions: &[u32],
    simd: bool,
    sc: &mut RefineScratch,
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
        gather_block(seg.codes(), m, toks, out);
    }
    let tail = n - (nb - 1) * BLOCK;
    let mut acc = [0u16; BLOCK];
    let mut v = [0.0f32; BLOCK];
    let mut total = 0.0f32;
    for (i, lut) in plan.luts.iter().enumerate() {
        let row = &cs[i * cs_stride..(i + 1) * cs_stride];
        let mut best = [f32::NEG_INFINITY; 8];
        for b in 0..nb {
            scan_block(
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
/// current rayon pool.
pub fn refine(
    codec: &Codec,
    plan: &QueryPlan,
    segments: &[SegmentView<'_>],
    cands: &[Candidate],
) -> Result<Vec<Candidate>> {
    for &(_, si, _) in cands {
        let v = segments
            .get(si as usize)
            .ok_or_else(|| LatixError::invalid(format!("candidate of unknown segment {si}")))?;
        if !v.seg.has_doc_map() {
            return Err(LatixError::invalid(format!(
                "segment {si} has version-{} inverted lists without a document map; compact the \
                 index to refine its results",
                v.seg.version()
            )));
        }
    }
    // Two-level plans did not score every centroid: score them all now.
    let full;
    let (cs, stride) = if plan.centroid_scores.is_empty() {
        let panels = codec.centroid_half_panels();
        let np = panels.n_padded();
        let dim = codec.dim();
        let q = &plan.query;
        let mut out = vec![0.0f32; q.len() / dim * np];
        scores_half(q, panels, &mut out);
        full = out;
        (&full[..], np)
    } else {
        (&plan.centroid_scores[..], plan.cs_stride)
    };
    let simd = crate::simd::avx2_fma();
    let score = |sc: &mut RefineScratch, &(_, si, d): &Candidate| -> Result<Candidate> {
        let seg = segments[si as usize].seg;
        let positions = seg
            .doc_positions(d as usize)
            .ok_or_else(|| LatixError::invalid(format!("segment {si} has no document {d}")))?;
        Ok((
            refine_doc(plan, cs, stride, seg, positions, simd, sc),
            si,
            d,
        ))
    };
    let mut out: Vec<Candidate> = if rayon::current_num_threads() > 1 && cands.len() > 8 {
        cands
            .par_iter()
            .map_init(RefineScratch::default, score)
            .collect::<Result<_>>()?
    } else {
        let mut sc = RefineScratch::default();
        cands
            .iter()
            .map(|c| score(&mut sc, c))
            .collect::<Result<_>>()?
    };
    out.sort_by(cand_cmp);
    Ok(out)
}

/// Centroid interaction (PLAID, Santhanam et al., CIKM 2022, section 4.2): scores each of
/// `cands` with every one of its tokens replaced by its coarse centroid, i.e. the sum over query
/// tokens of the best centroid score among the document's tokens, and returns them best first
/// (ties by segment then document). No residual codes are read: about a microsecond per
/// document, against tens for [`refine`], so it can rank every document of a small filtered set
/// and leave [`refine`] only the best of them. Needs the document map of every segment a
/// candidate comes from. Runs in the current rayon pool.
pub fn centroid_interaction(
    codec: &Codec,
    plan: &QueryPlan,
    segments: &[SegmentView<'_>],
    cands: &[Candidate],
) -> Result<Vec<Candidate>> {
    for &(_, si, _) in cands {
        let v = segments
            .get(si as usize)
            .ok_or_else(|| LatixError::invalid(format!("candidate of unknown segment {si}")))?;
        if !v.seg.has_doc_map() {
            return Err(LatixError::invalid(format!(
                "segment {si} has inverted lists without a document map"
            )));
        }
    }
    let nq = plan.n_query_tokens();
    let full;
    let (cs, stride) = if plan.centroid_scores.is_empty() {
        let panels = codec.centroid_half_panels();
        let np = panels.n_padded();
        let mut out = vec![0.0f32; nq * np];
        scores_half(&plan.query, panels, &mut out);
        full = out;
        (&full[..], np)
    } else {
        (&plan.centroid_scores[..], plan.cs_stride)
    };
    // Centroid-major: a document token reads one contiguous row of nq scores.
    let kc = codec.n_centroids();
    let mut by_centroid = vec![0.0f32; kc * nq];
    for i in 0..nq {
        let row = &cs[i * stride..i * stride + kc];
        for (c, &x) in row.iter().enumerate() {
            by_centroid[c * nq + i] = x;
        }
    }
    let score = |acc: &mut Vec<f32>, &(_, si, d): &Candidate| -> Result<Candidate> {
        let seg = segments[si as usize].seg;
        let positions = seg
            .doc_positions(d as usize)
            .ok_or_else(|| LatixError::invalid(format!("segment {si} has no document {d}")))?;
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
    let mut out: Vec<Candidate> = if rayon::current_num_threads() > 1 && cands.len() > 256 {
        cands
            .par_iter()
            .map_init(Vec::new, score)
            .collect::<Result<_>>()?
    } else {
        let mut acc = Vec::new();
        cands
            .iter()
            .map(|c| score(&mut acc, c))
            .collect::<Result<_>>()?
    };
    out.sort_by(cand_cmp);
    Ok(out)
}

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
/// documents are scored in parallel in the current rayon pool when it has several threads.
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
    let mut out: Vec<Candidate> = if rayon::current_num_threads() > 1 && cands.len() > 8 {
        cands.par_iter().map(score).collect::<Result<_>>()?
    } else {
        cands.iter().map(score).collect::<Result<_>>()?
    };
    out.sort_by(cand_cmp);
    out.truncate(k);
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::compressed::kmeans::Rng;

    #[test]
    fn fold_chunk_simd_matches_scalar() {
        let mut rng = Rng::new(5);
        for _ in 0..50 {
            let mut b = [0.0f32; CHUNK];
            for v in b.iter_mut() {
                *v = if rng.below(3) == 0 {
                    f32::NEG_INFINITY
                } else {
                    rng.below(1000) as f32 / 500.0 - 1.0
                };
            }
            let p: [f32; CHUNK] = std::array::from_fn(|_| rng.below(100) as f32 / 10.0);
            let (mut b1, mut p1, mut b2, mut p2) = (b, p, b, p);
            let m1 = fold_chunk(&mut b1, &mut p1, 0.25, false);
            let m2 = fold_chunk(&mut b2, &mut p2, 0.25, has_avx2());
            assert_eq!(m1, m2);
            assert_eq!(p1, p2);
            assert!(b1.iter().chain(&b2).all(|&x| x == f32::NEG_INFINITY));
            for j in 0..CHUNK {
                assert_eq!(m1 >> j & 1 == 1, b[j] != f32::NEG_INFINITY);
                let want = if b[j] == f32::NEG_INFINITY {
                    p[j]
                } else {
                    p[j] + (b[j] - 0.25)
                };
                assert_eq!(p1[j], want);
            }
        }
    }

    #[test]
    fn top_of_row_equals_full_selection() {
        let mut rng = Rng::new(3);
        let mut gmax = Vec::new();
        let (mut got, mut want) = (Vec::new(), Vec::new());
        for &len in &[1usize, 15, 16, 17, 100, 2048, 3001] {
            for &n in &[0usize, 1, 5, 17, 33, 200] {
                for coarse in [false, true] {
                    // Coarse values make many ties, which must resolve to the lower index.
                    let row: Vec<f32> = (0..len)
                        .map(|_| {
                            let v = rng.below(1000) as f32 / 1000.0 - 0.5;
                            if coarse {
                                (v * 8.0).round()
                            } else {
                                v
                            }
                        })
                        .collect();
                    top_of_row(&row, n, &mut gmax, &mut got);
                    top_keys(
                        row.iter().enumerate().map(|(c, &v)| key(v, c as u32)),
                        n,
                        &mut want,
                    );
                    assert_eq!(got, want, "len {len} n {n} coarse {coarse}");
                }
            }
        }
    }
}
