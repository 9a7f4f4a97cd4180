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

struct Scratch {
    best: Vec<f32>,
    touched: Vec<u32>,
    partial: Vec<f32>,
    seen: Vec<bool>,
    any: Vec<u32>,
}

fn scan_token(plan: &QueryPlan, i: usize, v: &SegmentView<'_>, simd: bool, s: &mut Scratch) {
    let seg = v.seg;
    let m = plan.m;
    let bb = m * 16;
    let docs = seg.doc_of_token();
    let codes = seg.codes();
    let lut = &plan.luts[i];
    let mut acc = [0u16; BLOCK];
    for p in 0..plan.nprobe {
        let c = plan.probes[i * plan.nprobe + p] as usize;
        let base = plan.probe_scores[i * plan.nprobe + p] + lut.bias;
        // One sub-list per chunk of 65,536 documents (u16 document numbers, see ivf).
        for (t_start, t_end, b_start, doc_base) in seg.sublists(c) {
            let mut t0 = t_start;
            let mut bi = b_start;
            while t0 < t_end {
                scan_block(&lut.lut, &codes[bi * bb..(bi + 1) * bb], m, simd, &mut acc);
                let n = (t_end - t0).min(BLOCK);
                for (j, &a) in acc[..n].iter().enumerate() {
                    let d = doc_base + docs[t0 + j] as usize;
                    if let Some(bits) = v.allowed {
                        if bits[d >> 6] >> (d & 63) & 1 == 0 {
                            continue;
                        }
                    }
                    let sc = base + lut.scale * a as f32;
                    let b = &mut s.best[d];
                    if *b == f32::NEG_INFINITY {
                        s.touched.push(d as u32);
                    }
                    if sc > *b {
                        *b = sc;
                    }
                }
                t0 += BLOCK;
                bi += 1;
            }
        }
    }
    let mi = plan.impute[i];
    for &d in &s.touched {
        let d = d as usize;
        if !s.seen[d] {
            s.seen[d] = true;
            s.any.push(d as u32);
        }
        s.partial[d] += s.best[d] - mi;
        s.best[d] = f32::NEG_INFINITY;
    }
    s.touched.clear();
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
    let nq = plan.n_query_tokens();
    let simd = has_avx2();
    let n_tasks = rayon::current_num_threads().min(nq).max(1);
    let per = nq.div_ceil(n_tasks);
    // Each task: a range of query tokens over every segment -> sparse partial sums per segment.
    let parts: Vec<Vec<Vec<(u32, f32)>>> = (0..n_tasks)
        .into_par_iter()
        .map(|t| {
            let (a, b) = (t * per, ((t + 1) * per).min(nq));
            segments
                .iter()
                .map(|v| {
                    let nd = v.seg.n_docs();
                    let mut s = Scratch {
                        best: vec![f32::NEG_INFINITY; nd],
                        touched: Vec::new(),
                        partial: vec![0.0; nd],
                        seen: vec![false; nd],
                        any: Vec::new(),
                    };
                    for i in a..b {
                        scan_token(plan, i, v, simd, &mut s);
                    }
                    s.any.iter().map(|&d| (d, s.partial[d as usize])).collect()
                })
                .collect()
        })
        .collect();
    let base: f32 = plan.impute.iter().sum();
    let mut cands: Vec<Candidate> = Vec::new();
    for (si, v) in segments.iter().enumerate() {
        let nd = v.seg.n_docs();
        if parts.len() == 1 {
            cands.extend(parts[0][si].iter().map(|&(d, p)| (base + p, si as u32, d)));
            continue;
        }
        let mut tot = vec![0.0f32; nd];
        let mut seen = vec![false; nd];
        let mut any = Vec::new();
        for part in &parts {
            for &(d, p) in &part[si] {
                tot[d as usize] += p;
                if !seen[d as usize] {
                    seen[d as usize] = true;
                    any.push(d);
                }
            }
        }
        cands.extend(any.iter().map(|&d| (base + tot[d as usize], si as u32, d)));
    }
    let cmp =
        |a: &Candidate, b: &Candidate| b.0.total_cmp(&a.0).then(a.1.cmp(&b.1)).then(a.2.cmp(&b.2));
    if cands.len() > n_out && n_out > 0 {
        cands.select_nth_unstable_by(n_out - 1, cmp);
        cands.truncate(n_out);
    }
    cands.sort_by(cmp);
    cands.truncate(n_out);
    Ok(cands)
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
