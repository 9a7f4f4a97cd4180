//! Candidate generation and code-level scoring over compressed segments (WARP-style, Scheerer et
//! al., SIGIR 2025, section 4): every query token is scored against all coarse centroids; its
//! `nprobe` best lists are scanned, each token scored from its codes as
//! `<q, c> + sum_m lut_m[code_m]` (the dot product with the decoded vector, never materialised);
//! each document keeps its best token per query token. A document with no token in the probed lists
//! of query token i gets the imputed score `m_i` = the score of the best centroid that was *not*
//! probed, an upper bound of what an unprobed centroid contributes (WARP's missing-similarity
//! estimate). Document score = sum over query tokens; documents outside a filter are skipped while
//! scanning, so a subset restricts candidate generation itself rather than its output.
//!
//! Query tokens are split among threads; each thread accumulates `best - m_i` per touched
//! document, and the partial sums are added at the end.

use rayon::prelude::*;

use super::codec::Codec;
use super::fastscan::{build_lut, has_avx2, scan_block, TokenLut, BLOCK};
use super::ivf::IvfSegment;
use super::linalg::scores;
use crate::error::{LatixError, Result};
use crate::maxsim::DocVectors;
const IMPUTE_SHIFT: f32 = 0.0;

/// Default number of lists probed per query token for a codec with `k` centroids.
pub fn default_nprobe(k: usize) -> usize {
    (k / 64).clamp(8, 32).min(k)
}

/// A query prepared for scanning: probed lists, imputed scores and lookup tables per token.
#[derive(Clone, Debug)]
pub struct QueryPlan {
    nprobe: usize,
    probes: Vec<u32>,
    probe_scores: Vec<f32>,
    impute: Vec<f32>,
    luts: Vec<TokenLut>,
    m: usize,
    k: usize,
}

impl QueryPlan {
    /// Prepares `query` (`nq * dim` f32) for `codec`, probing `nprobe` lists per token.
    pub fn new(codec: &Codec, query: &[f32], nprobe: usize) -> Result<QueryPlan> {
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
        let panels = codec.centroid_panels();
        let np = panels.n_padded();
        let mut cs = vec![0.0f32; nq * np];
        scores(query, panels, &mut cs);
        let mut probes = Vec::with_capacity(nq * nprobe);
        let mut probe_scores = Vec::with_capacity(nq * nprobe);
        let mut impute = Vec::with_capacity(nq);
        let mut idx: Vec<u32> = Vec::with_capacity(k);
        for i in 0..nq {
            let row = &cs[i * np..i * np + k];
            idx.clear();
            idx.extend(0..k as u32);
            let cmp =
                |a: &u32, b: &u32| row[*b as usize].total_cmp(&row[*a as usize]).then(a.cmp(b));
            if nprobe < k {
                idx.select_nth_unstable_by(nprobe, cmp);
                impute.push(row[idx[nprobe] as usize] + IMPUTE_SHIFT);
            } else {
                impute.push(0.0);
            }
            let top = &mut idx[..nprobe];
            // List order: ascending centroid id, for sequential memory access.
            top.sort_unstable();
            for &c in top.iter() {
                probes.push(c);
                probe_scores.push(row[c as usize]);
            }
        }
        let luts = query
            .chunks_exact(dim)
            .map(|q| build_lut(codec, q))
            .collect();
        Ok(QueryPlan {
            nprobe,
            probes,
            probe_scores,
            impute,
            luts,
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

/// Per-thread dense accumulators, reused across queries and segments. Invariant between uses:
/// `best` is all `-inf`, `partial` all 0, `hit` all 0 and both chunk bitmaps empty; only the
/// chunks marked in `dirty` / `any` are written, and exactly those are reset, so a query costs
/// O(tokens scanned + chunks touched), never O(documents) of clearing.
struct Scratch {
    /// Best code-level score of each document for the current query token (`-inf` = unreached).
    best: Vec<f32>,
    /// Sum over the query tokens folded so far of `best - m_i` (reached tokens only).
    partial: Vec<f32>,
    /// 1 when some query token reached the document (it is a candidate).
    hit: Vec<u8>,
    /// One bit per chunk of [`CHUNK`] documents: `best` holds values there.
    dirty: Vec<u64>,
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

    /// Grows the arrays to cover `nd` documents (whole chunks), keeping the invariant.
    fn ensure(&mut self, nd: usize) {
        let n = nd.div_ceil(CHUNK) * CHUNK;
        if self.best.len() < n {
            self.best.resize(n, f32::NEG_INFINITY);
            self.partial.resize(n, 0.0);
            self.hit.resize(n, 0);
        }
        let words = (n / CHUNK).div_ceil(64);
        if self.dirty.len() < words {
            self.dirty.resize(words, 0);
            self.any.resize(words, 0);
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
/// probed tokens of `<q_i, c> + lut(codes)`. Branch-free per token (a max and a chunk-bit set).
fn scan_token(plan: &QueryPlan, i: usize, seg: &IvfSegment, simd: bool, s: &mut Scratch) {
    let m = plan.m;
    let bb = m * 16;
    let lt = seg.list_tokens();
    let lb = seg.list_blocks();
    let docs = seg.doc_of_token();
    let codes = seg.codes();
    let lut = &plan.luts[i];
    let best = &mut s.best[..];
    let dirty = &mut s.dirty[..];
    let mut acc = [0u16; BLOCK];
    let mut sc = [0.0f32; BLOCK];
    for p in 0..plan.nprobe {
        let c = plan.probes[i * plan.nprobe + p] as usize;
        let base = plan.probe_scores[i * plan.nprobe + p] + lut.bias;
        let (t_start, t_end) = (lt[c] as usize, lt[c + 1] as usize);
        let list_codes = &codes[lb[c] as usize * bb..];
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
            for (&d, &v) in docs[t0..t0 + n].iter().zip(&sc) {
                let d = d as usize;
                let b = &mut best[d];
                // A select (maxss), not a branch: the outcome is unpredictable.
                *b = if v > *b { v } else { *b };
                dirty[d >> 12] |= 1u64 << ((d >> 6) & 63);
            }
        }
    }
}

/// Folds the current query token into the per-document sums: `partial += best - m_i` where
/// reached, marks hits, and resets `best` (dirty chunks only).
fn fold_token(mi: f32, s: &mut Scratch) {
    for w in 0..s.dirty.len() {
        let mut bits = s.dirty[w];
        if bits == 0 {
            continue;
        }
        s.any[w] |= bits;
        s.dirty[w] = 0;
        while bits != 0 {
            let c = w * 64 + bits.trailing_zeros() as usize;
            bits &= bits - 1;
            let r = c * CHUNK..(c + 1) * CHUNK;
            for ((b, p), h) in s.best[r.clone()]
                .iter_mut()
                .zip(&mut s.partial[r.clone()])
                .zip(&mut s.hit[r])
            {
                let reached = *b != f32::NEG_INFINITY;
                *p += if reached { *b - mi } else { 0.0 };
                *h |= reached as u8;
                *b = f32::NEG_INFINITY;
            }
        }
    }
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
    fn new(n: usize) -> Self {
        TopN {
            n,
            buf: Vec::with_capacity(4 * n + 64),
            thr: f32::NEG_INFINITY,
        }
    }

    #[inline]
    fn push(&mut self, c: Candidate) {
        if c.0 > self.thr || self.thr == f32::NEG_INFINITY {
            self.buf.push(c);
            if self.buf.len() >= 4 * self.n + 64 {
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
    for w in 0..s.any.len() {
        let mut bits = s.any[w];
        if bits == 0 {
            continue;
        }
        s.any[w] = 0;
        while bits != 0 {
            let c = w * 64 + bits.trailing_zeros() as usize;
            bits &= bits - 1;
            for d in c * CHUNK..(c + 1) * CHUNK {
                if s.hit[d] != 0 {
                    // The filter decides which documents become candidates, before the short
                    // list is cut (scores are per document, so this equals skipping them while
                    // scanning, at a fraction of the cost).
                    let ok = allowed.is_none_or(|a| a[d >> 6] >> (d & 63) & 1 == 1);
                    if ok {
                        top.push((base + s.partial[d], si as u32, d as u32));
                    }
                    s.hit[d] = 0;
                }
                s.partial[d] = 0.0;
            }
        }
    }
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
    if n_out == 0 {
        return Ok(Vec::new());
    }
    let nq = plan.n_query_tokens();
    let simd = has_avx2();
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
                        for w in 0..s.any.len() {
                            let mut bits = s.any[w];
                            s.any[w] = 0;
                            while bits != 0 {
                                let c = w * 64 + bits.trailing_zeros() as usize;
                                bits &= bits - 1;
                                for d in c * CHUNK..(c + 1) * CHUNK {
                                    if s.hit[d] != 0 {
                                        out.push((d as u32, s.partial[d]));
                                        s.hit[d] = 0;
                                    }
                                    s.partial[d] = 0.0;
                                }
                            }
                        }
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
                    s.hit[d] = 1;
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
                let lt = v.seg.list_tokens();
                for &c in &plan.probes[i * plan.nprobe..(i + 1) * plan.nprobe] {
                    w += (lt[c as usize + 1] - lt[c as usize]) as u64;
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
/// best `k`. Single-threaded (the short list is small); ties broken by segment then document.
pub fn rerank_exact(
    query: &[f32],
    dim: usize,
    full: &[FullVectors<'_>],
    cands: &[Candidate],
    k: usize,
) -> Result<Vec<Candidate>> {
    let mut out = Vec::with_capacity(cands.len());
    let mut one = [0.0f32; 1];
    for &(_, s, d) in cands {
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
        crate::maxsim::score_docs(query, dim, rows, &[0, (b - a) as u64], &mut one);
        out.push((one[0], s, d));
    }
    out.sort_by(|a, b| b.0.total_cmp(&a.0).then(a.1.cmp(&b.1)).then(a.2.cmp(&b.2)));
    out.truncate(k);
    Ok(out)
}
