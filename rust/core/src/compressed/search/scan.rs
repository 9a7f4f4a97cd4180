//! Candidate generation: the probed lists of every query token scanned from their codes
//! ([`search_segments`]), per-document best scores folded into imputed sums, the best kept.

use rayon::prelude::*;

use super::*;
use crate::compressed::fastscan::{has_avx2, BLOCK};
use crate::compressed::ivf::{IvfSegment, NormScales, NORM_ONE};
use crate::error::{LatixError, Result};

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
            // (`simd::avx2`: level Avx2 or above guarantees AVX2, FMA and F16C, the features `scan_token_avx2` enables).
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

/// Blocks ahead of the one being scanned whose data is software-prefetched. Lists larger than
/// the caches stall on every block's first load (at 100M tokens, 42 % of the scan's samples sat
/// on the code load): the hardware prefetcher has not ramped up on a list of a few kilobytes
/// before it ends. Measured on a 100M-token index, 300 SciFact queries, 1 thread, 5 interleaved
/// rounds (p50 ms, median of rounds): none 39.7, 2 blocks ahead 29.8, 4 ahead 30.3, 2 ahead
/// plus the next list's first blocks 32.3 (so the next list is not prefetched).
const PREFETCH_BLOCKS: usize = 2;

/// Hints the cache lines of `bytes` bytes from `p` into L1 (no-op off x86-64). Prefetches
/// never fault, so `p` may point past the end of the lists (it is never dereferenced).
#[inline(always)]
fn prefetch(p: *const u8, bytes: usize) {
    #[cfg(target_arch = "x86_64")]
    {
        use std::arch::x86_64::{_mm_prefetch, _MM_HINT_T0};
        let mut o = 0;
        while o < bytes {
            // SAFETY: a prefetch is a hint: it reads nothing architecturally and never faults.
            unsafe { _mm_prefetch::<_MM_HINT_T0>(p.wrapping_add(o) as *const i8) };
            o += 64;
        }
    }
    #[cfg(not(target_arch = "x86_64"))]
    let _ = (p, bytes);
}

/// Per-token norm scales as stored (f32 in version-3 lists, u16 fixed point in version 4).
trait NormSlice: Copy {
    /// Prefetches the scales of tokens `t..t + BLOCK` (may be past the end: never read).
    fn prefetch_block(self, t: usize);
    /// The scales of tokens `t0..t0 + BLOCK` times `scores` (only the first `n` are meaningful;
    /// the rest may be anything when the list ends inside the block).
    fn scale_block(self, t0: usize, n: usize, scores: &mut [f32; BLOCK]);
}

impl NormSlice for &[f32] {
    #[inline(always)]
    fn prefetch_block(self, t: usize) {
        prefetch(self.as_ptr().wrapping_add(t) as *const u8, BLOCK * 4);
    }
    #[inline(always)]
    fn scale_block(self, t0: usize, n: usize, scores: &mut [f32; BLOCK]) {
        for (o, &r) in scores[..n].iter_mut().zip(&self[t0..t0 + n]) {
            *o *= r;
        }
    }
}

impl NormSlice for &[u16] {
    #[inline(always)]
    fn prefetch_block(self, t: usize) {
        prefetch(self.as_ptr().wrapping_add(t) as *const u8, BLOCK * 2);
    }
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
    let layout = seg.block_layout();
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
                // The codes, document numbers and scales of the block PREFETCH_BLOCKS ahead
                // (past the sub-list's end: the next one's, or nothing useful; never read).
                let tf = t0 + PREFETCH_BLOCKS * BLOCK;
                prefetch(
                    list_codes
                        .as_ptr()
                        .wrapping_add((bi + PREFETCH_BLOCKS) * bb),
                    bb,
                );
                prefetch(docs.as_ptr().wrapping_add(tf) as *const u8, BLOCK * 2);
                norms.prefetch_block(tf);
                layout.scan(
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

/// Moves the candidates of segment `si` (hit and allowed documents) from the scratch into `top`,
/// resetting the scratch chunks they occupied.
fn drain_candidates(
    s: &mut Scratch,
    si: usize,
    base: f32,
    allowed: Option<&[u64]>,
    top: &mut TopK<u32>,
) {
    s.take_hits(allowed, |d, p| top.push((base + p, si as u32, d as u32)));
}

/// Scans `segments` for `plan` and returns the `n_out` best documents by estimated score, best
/// first (ties broken by segment then document number: [`crate::topk::order`]). Runs in the
/// latix pool it is called in (serially outside one).
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
    let simd = crate::simd::avx2();
    let base: f32 = plan.impute.iter().sum();
    let n_tasks = crate::parallel::pool_threads().min(nq).max(1);
    let mut top = TopK::new(n_out);
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

#[cfg(test)]
mod tests {
    use super::super::plan::{key, top_keys, top_of_row};
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
