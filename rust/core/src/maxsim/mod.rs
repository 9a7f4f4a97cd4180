//! Exact MaxSim (ColBERT late interaction, Khattab & Zaharia, SIGIR 2020):
//! `score(q, d) = sum over query tokens i of max over document tokens j of <q_i, d_j>`.
//!
//! The query is packed once into a [`PreparedQuery`] (transposed, zero-padded to whole SIMD
//! vectors, split into blocks of at most two vectors); documents are then streamed through a
//! register-blocked micro-kernel that computes a tile of dot products with FMAs and folds it
//! straight into a running per-query-token max, so the similarity matrix is never stored.
//! Kernels are chosen once at run time ([`Kernel::detect`]): AVX-512F, AVX2+FMA(+F16C), a portable
//! kernel LLVM auto-vectorises (NEON on aarch64), and the scalar reference ([`scalar`]), which is
//! also the test oracle. Half-precision documents are converted to f32 a chunk at a time into a
//! small per-thread buffer and scored with the same f32 kernel.

mod portable;
pub mod scalar;
mod values;
#[cfg(target_arch = "x86_64")]
mod x86;

use std::cell::RefCell;

use half::f16;
use rayon::prelude::*;

use crate::error::{LatixError, Result};
use values::{any_above_portable, any_invalid, value_error};
pub use values::{check_finite, check_finite_from, check_values, check_values_from, MAX_ABS_VALUE};

/// Stored document token vectors, row-major `(n_tokens, dim)`, in either storage precision.
#[derive(Clone, Copy, Debug)]
pub enum DocVectors<'a> {
    /// float32 rows.
    F32(&'a [f32]),
    /// float16 rows.
    F16(&'a [f16]),
}

impl<'a> DocVectors<'a> {
    /// Number of scalars stored.
    pub fn len(&self) -> usize {
        match self {
            DocVectors::F32(v) => v.len(),
            DocVectors::F16(v) => v.len(),
        }
    }

    /// True when no scalars are stored.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Scalars `a..b` (a sub-range of tokens when `a` and `b` are multiples of `dim`).
    pub fn slice(&self, a: usize, b: usize) -> DocVectors<'a> {
        match *self {
            DocVectors::F32(v) => DocVectors::F32(&v[a..b]),
            DocVectors::F16(v) => DocVectors::F16(&v[a..b]),
        }
    }
}

/// A MaxSim implementation: the instruction-set level of [`crate::simd`] (one detection, one
/// `LATIX_KERNEL` override for every kernel). [`Kernel::detect`] is the level in use.
pub use crate::simd::Level as Kernel;

impl Kernel {
    /// SIMD lanes per query vector in this kernel's packing.
    fn lanes(self) -> usize {
        match self {
            Kernel::Avx512 => 16,
            _ => 8,
        }
    }

    /// Document tokens per micro-kernel tile (the f16 conversion chunk is a multiple of it).
    fn rows(self) -> usize {
        match self {
            Kernel::Scalar => 1,
            Kernel::Portable => portable::ROWS,
            Kernel::Avx2 => 6,
            Kernel::Avx512 => 12,
        }
    }
}

/// Name of the kernel [`maxsim`] and [`score_docs`] use on this machine (see [`Kernel::detect`]).
pub fn kernel_name() -> &'static str {
    Kernel::detect().name()
}

/// One block of packed query vectors (at most two, so the tile fits in registers).
#[derive(Clone, Copy, Debug)]
struct QBlock {
    /// First query lane (token) of the block.
    lane0: usize,
    /// Vectors in the block (1 or 2).
    n_vec: usize,
    /// Start of the block's `dim * n_vec * lanes` packed floats in `PreparedQuery::qt`.
    offset: usize,
}

/// A query packed for a kernel: transposed, zero-padded to whole vectors, in blocks of <= 2
/// vectors. Build it once per query and score any number of documents with it.
#[derive(Clone, Debug)]
pub struct PreparedQuery {
    kernel: Kernel,
    dim: usize,
    nq: usize,
    nq_pad: usize,
    blocks: Vec<QBlock>,
    qt: Vec<f32>,
    /// The row-major query, for the scalar kernel.
    query: Vec<f32>,
}

/// Floats of document data processed per chunk: bounds the f16 conversion buffer (192 KB, stays
/// in L2) and keeps a long document's chunk cached while each query block passes over it.
const CHUNK_FLOATS: usize = 48 * 1024;

/// Per-thread scratch: running maxima and the f16 -> f32 conversion buffer.
#[derive(Default)]
struct Scratch {
    maxbuf: Vec<f32>,
    conv: Vec<f32>,
}

thread_local! {
    static SCRATCH: RefCell<Scratch> = RefCell::new(Scratch::default());
}

impl PreparedQuery {
    /// Packs `query` (`n_query_tokens * dim` f32, row-major) for the detected kernel.
    pub fn new(query: &[f32], dim: usize) -> Result<Self> {
        Self::with_kernel(query, dim, Kernel::detect())
    }

    /// Packs `query` for a given kernel; fails if this CPU cannot run it.
    pub fn with_kernel(query: &[f32], dim: usize, kernel: Kernel) -> Result<Self> {
        if dim == 0 {
            return Err(LatixError::invalid("dim must be positive, got 0"));
        }
        if query.is_empty() || !query.len().is_multiple_of(dim) {
            return Err(LatixError::invalid(format!(
                "query must be a non-empty (n_query_tokens, dim={dim}) array, got {} values",
                query.len()
            )));
        }
        if !kernel.is_available() {
            return Err(LatixError::invalid(format!(
                "kernel {} is not supported by this CPU",
                kernel.name()
            )));
        }
        let nq = query.len() / dim;
        let lanes = kernel.lanes();
        let n_vec_total = nq.div_ceil(lanes);
        let nq_pad = n_vec_total * lanes;
        let mut blocks = Vec::new();
        let mut qt = Vec::new();
        if kernel != Kernel::Scalar {
            qt = vec![0.0f32; dim * nq_pad];
            let mut v = 0;
            while v < n_vec_total {
                let n_vec = (n_vec_total - v).min(2);
                let (lane0, width, offset) = (v * lanes, n_vec * lanes, v * lanes * dim);
                for lane in 0..width {
                    let tok = lane0 + lane;
                    if tok < nq {
                        let row = &query[tok * dim..(tok + 1) * dim];
                        for (k, &x) in row.iter().enumerate() {
                            qt[offset + k * width + lane] = x;
                        }
                    }
                }
                blocks.push(QBlock {
                    lane0,
                    n_vec,
                    offset,
                });
                v += n_vec;
            }
        }
        Ok(PreparedQuery {
            kernel,
            dim,
            nq,
            nq_pad,
            blocks,
            qt,
            query: query.to_vec(),
        })
    }

    /// The kernel this query was packed for.
    pub fn kernel(&self) -> Kernel {
        self.kernel
    }

    /// Vector dimension.
    pub fn dim(&self) -> usize {
        self.dim
    }

    /// Number of query tokens.
    pub fn n_tokens(&self) -> usize {
        self.nq
    }

    /// MaxSim of the query against one document (`n_tokens * dim` scalars, row-major); a
    /// document with no tokens scores 0. Panics if the length is not a multiple of `dim`.
    pub fn score_doc(&self, doc: DocVectors<'_>) -> f32 {
        self.with_scratch(|s| self.score_one(doc, s, false).unwrap_or(f32::NAN))
    }

    /// Scores documents `i in 0..offsets.len()-1` (tokens `offsets[i]..offsets[i+1]` of `docs`)
    /// into `out[i]` on the calling thread. Panics on inconsistent lengths (callers validate).
    pub fn score_docs(&self, docs: DocVectors<'_>, offsets: &[u64], out: &mut [f32]) {
        assert_eq!(
            out.len() + 1,
            offsets.len(),
            "out must have offsets.len() - 1 entries"
        );
        // Without the check `score_one` cannot fail.
        let _ = self.score_docs_impl(docs, offsets, out, false);
    }

    /// [`PreparedQuery::score_docs`] that also rejects NaN, infinities and values beyond
    /// [`MAX_ABS_VALUE`] in the scored documents,
    /// fused with scoring (each piece of a document is checked just before the kernel reads it,
    /// while it is in cache). The error names `doc_vectors` and the first bad row (counted from
    /// the start of `docs`) and column.
    pub fn score_docs_checked(
        &self,
        docs: DocVectors<'_>,
        offsets: &[u64],
        out: &mut [f32],
    ) -> Result<()> {
        self.score_docs_impl(docs, offsets, out, true)
    }

    fn score_docs_impl(
        &self,
        docs: DocVectors<'_>,
        offsets: &[u64],
        out: &mut [f32],
        check: bool,
    ) -> Result<()> {
        assert_eq!(
            out.len() + 1,
            offsets.len(),
            "out must have offsets.len() - 1 entries"
        );
        let dim = self.dim;
        self.with_scratch(|s| {
            for (i, o) in out.iter_mut().enumerate() {
                let (a, b) = (offsets[i] as usize * dim, offsets[i + 1] as usize * dim);
                let doc = docs.slice(a, b);
                match self.score_one(doc, s, check) {
                    Ok(score) => *o = score,
                    Err(t0) => {
                        let row0 = offsets[i] as usize + t0;
                        let rest = doc.slice(t0 * dim, doc.len());
                        return Err(value_error(rest, "doc_vectors", dim, row0, true));
                    }
                }
            }
            Ok(())
        })
    }

    fn with_scratch<R>(&self, f: impl FnOnce(&mut Scratch) -> R) -> R {
        SCRATCH.with(|cell| match cell.try_borrow_mut() {
            Ok(mut s) => f(&mut s),
            // Re-entered on this thread (cannot happen today): use a fresh buffer.
            Err(_) => f(&mut Scratch::default()),
        })
    }

    /// MaxSim of one document. With `check`, each chunk is first scanned for NaN/infinity (it is
    /// then in cache for the kernel, so the scan costs no extra memory traffic); `Err(t)` means
    /// the chunk starting at token `t` holds one.
    fn score_one(
        &self,
        doc: DocVectors<'_>,
        s: &mut Scratch,
        check: bool,
    ) -> std::result::Result<f32, usize> {
        let dim = self.dim;
        assert!(
            doc.len().is_multiple_of(dim),
            "document length {} is not a multiple of dim {dim}",
            doc.len()
        );
        if doc.is_empty() {
            return Ok(0.0);
        }
        if self.kernel == Kernel::Scalar {
            if check && any_invalid(doc) {
                return Err(0);
            }
            return Ok(match doc {
                DocVectors::F32(v) => scalar::maxsim_f32(&self.query, v, dim),
                DocVectors::F16(v) => scalar::maxsim_f16(&self.query, v, dim),
            });
        }
        s.maxbuf.clear();
        s.maxbuf.resize(self.nq_pad, f32::NEG_INFINITY);
        let rows = self.kernel.rows();
        let chunk_tok = (CHUNK_FLOATS / dim / rows).max(1) * rows;
        let n_tok = doc.len() / dim;
        let mut t0 = 0;
        while t0 < n_tok {
            let t1 = (t0 + chunk_tok).min(n_tok);
            let part = doc.slice(t0 * dim, t1 * dim);
            if check && any_invalid(part) {
                return Err(t0);
            }
            match part {
                DocVectors::F32(v) => self.fold_f32(v, &mut s.maxbuf),
                DocVectors::F16(v) => {
                    s.conv.resize(v.len(), 0.0);
                    self.convert(v, &mut s.conv[..v.len()]);
                    let conv = std::mem::take(&mut s.conv);
                    self.fold_f32(&conv[..v.len()], &mut s.maxbuf);
                    s.conv = conv;
                }
            }
            t0 = t1;
        }
        // Sum in query-token order, ignoring padded lanes.
        Ok(s.maxbuf[..self.nq].iter().sum())
    }

    /// Folds f32 document tokens into the running maxima, block by block.
    fn fold_f32(&self, doc: &[f32], maxbuf: &mut [f32]) {
        let lanes = self.kernel.lanes();
        for b in &self.blocks {
            let qt = &self.qt[b.offset..b.offset + self.dim * b.n_vec * lanes];
            let mb = &mut maxbuf[b.lane0..b.lane0 + b.n_vec * lanes];
            match self.kernel {
                #[cfg(target_arch = "x86_64")]
                // SAFETY: `with_kernel` checked that the CPU supports AVX2, FMA and F16C.
                Kernel::Avx2 => unsafe { x86::block_f32_avx2(qt, b.n_vec, doc, self.dim, mb) },
                #[cfg(target_arch = "x86_64")]
                // SAFETY: `with_kernel` checked that the CPU supports AVX-512F.
                Kernel::Avx512 => unsafe { x86::block_f32_avx512(qt, b.n_vec, doc, self.dim, mb) },
                _ => portable::block_f32(qt, b.n_vec, doc, self.dim, mb),
            }
        }
    }

    /// Converts f16 document data to f32 with the kernel's instruction set.
    fn convert(&self, src: &[f16], dst: &mut [f32]) {
        match self.kernel {
            #[cfg(target_arch = "x86_64")]
            // SAFETY: `with_kernel` checked that the CPU supports AVX2, FMA and F16C.
            Kernel::Avx2 => unsafe { x86::f16_to_f32_f16c(src, dst) },
            #[cfg(target_arch = "x86_64")]
            // SAFETY: `with_kernel` checked that the CPU supports AVX-512F.
            Kernel::Avx512 => unsafe { x86::f16_to_f32_avx512(src, dst) },
            _ => {
                use half::slice::HalfFloatSliceExt;
                src.convert_to_f32_slice(dst)
            }
        }
    }
}

/// Scores documents `i in 0..offsets.len()-1` (tokens `offsets[i]..offsets[i+1]` of `docs`,
/// offsets relative to the start of `docs`) into `out[i]`, on the calling thread, with the
/// detected kernel. The building block for the index's search, which parallelises over chunks
/// of documents itself. Inputs must already be valid (the caller checked them); panics on
/// inconsistent lengths. Packs the query on every call: use [`PreparedQuery`] to pack it once.
pub fn score_docs(
    query: &[f32],
    dim: usize,
    docs: DocVectors<'_>,
    offsets: &[u64],
    out: &mut [f32],
) {
    score_docs_with(Kernel::detect(), query, dim, docs, offsets, out)
}

/// [`score_docs`] with a given kernel (tests and benchmarks). Panics if the CPU cannot run it.
pub fn score_docs_with(
    kernel: Kernel,
    query: &[f32],
    dim: usize,
    docs: DocVectors<'_>,
    offsets: &[u64],
    out: &mut [f32],
) {
    match PreparedQuery::with_kernel(query, dim, kernel) {
        Ok(p) => p.score_docs(docs, offsets, out),
        Err(e) => panic!("score_docs: {e}"),
    }
}

/// Checks `offsets` against a collection of `n_tokens` tokens: non-empty, non-decreasing, last
/// entry at most `n_tokens`.
fn check_offsets(offsets: &[u64], n_tokens: u64) -> Result<()> {
    let Some(&last) = offsets.last() else {
        return Err(LatixError::invalid(
            "doc_offsets must have n_docs + 1 entries (at least 1), got 0",
        ));
    };
    if let Some(i) = offsets.windows(2).position(|w| w[1] < w[0]) {
        return Err(LatixError::invalid(format!(
            "doc_offsets must be non-decreasing, but doc_offsets[{i}] = {} > doc_offsets[{}] = {}",
            offsets[i],
            i + 1,
            offsets[i + 1]
        )));
    }
    if last > n_tokens {
        return Err(LatixError::invalid(format!(
            "doc_offsets[-1] = {last} points past the end of doc_vectors ({n_tokens} tokens)"
        )));
    }
    Ok(())
}

/// Scores every document `i` (tokens `offsets[i]..offsets[i+1]` of `docs`) against `query`
/// (`n_query_tokens * dim` f32, row-major) with the detected kernel. Validates all inputs and
/// runs in latix's pool of `n_threads` threads (None = default), documents split into chunks of
/// similar token counts. Results do not depend on the number of threads.
pub fn maxsim(
    query: &[f32],
    dim: usize,
    docs: DocVectors<'_>,
    offsets: &[u64],
    n_threads: Option<usize>,
) -> Result<Vec<f32>> {
    maxsim_with(Kernel::detect(), query, dim, docs, offsets, n_threads)
}

/// [`maxsim`] that also rejects NaN, infinities and values beyond [`MAX_ABS_VALUE`] in the query
/// and in the scored documents
/// (an `InvalidArgument` naming `query` or `doc_vectors`, row and column). The document check is
/// fused with scoring, so it costs no extra pass over memory: use it for untrusted input.
pub fn maxsim_checked(
    query: &[f32],
    dim: usize,
    docs: DocVectors<'_>,
    offsets: &[u64],
    n_threads: Option<usize>,
) -> Result<Vec<f32>> {
    check_values(DocVectors::F32(query), "query", dim)?;
    maxsim_impl(Kernel::detect(), query, dim, docs, offsets, n_threads, true)
}

/// [`maxsim`] with a given kernel (tests and benchmarks); fails if the CPU cannot run it.
pub fn maxsim_with(
    kernel: Kernel,
    query: &[f32],
    dim: usize,
    docs: DocVectors<'_>,
    offsets: &[u64],
    n_threads: Option<usize>,
) -> Result<Vec<f32>> {
    maxsim_impl(kernel, query, dim, docs, offsets, n_threads, false)
}

fn maxsim_impl(
    kernel: Kernel,
    query: &[f32],
    dim: usize,
    docs: DocVectors<'_>,
    offsets: &[u64],
    n_threads: Option<usize>,
    check: bool,
) -> Result<Vec<f32>> {
    let prepared = PreparedQuery::with_kernel(query, dim, kernel)?;
    if !docs.len().is_multiple_of(dim) {
        return Err(LatixError::invalid(format!(
            "doc_vectors must be (n_tokens, dim={dim}), got {} values (not a multiple of dim)",
            docs.len()
        )));
    }
    check_offsets(offsets, (docs.len() / dim) as u64)?;
    let n_docs = offsets.len() - 1;
    let mut out = vec![0.0f32; n_docs];
    crate::parallel::install(n_threads, || {
        let n_threads = rayon::current_num_threads();
        let total = offsets[n_docs] - offsets[0];
        // Several chunks per thread for balance, but big enough that scheduling costs nothing.
        let target = (total / (n_threads as u64 * 8)).max(4096);
        let mut tasks: Vec<(usize, &mut [f32])> = Vec::new();
        let mut rest: &mut [f32] = &mut out;
        let mut start = 0;
        while start < n_docs {
            let mut end = start + 1;
            while end < n_docs && offsets[end] - offsets[start] < target {
                end += 1;
            }
            let (head, tail) = rest.split_at_mut(end - start);
            tasks.push((start, head));
            rest = tail;
            start = end;
        }
        // Each task stops at its first error; the first failing task in document order has the
        // first bad row overall, so the reported error does not depend on scheduling.
        let results: Vec<Result<()>> = tasks
            .into_par_iter()
            .map(|(start, chunk)| {
                let end = start + chunk.len();
                prepared.score_docs_impl(docs, &offsets[start..=end], chunk, check)
            })
            .collect();
        results.into_iter().collect::<Result<()>>()
    })??;
    Ok(out)
}

#[cfg(test)]
mod tests;
