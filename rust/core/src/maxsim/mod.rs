//! Exact MaxSim: score(q, d) = sum over query tokens i of max over document tokens j of <q_i, d_j>.
//!
//! (Placeholder: scalar only. The SIMD kernels and dispatch replace this module body.)

pub mod scalar;

use half::f16;
use rayon::prelude::*;

use crate::error::{LatixError, Result};

/// Stored document token vectors, row-major `(n_tokens, dim)`, in either storage precision.
#[derive(Clone, Copy, Debug)]
pub enum DocVectors<'a> {
    F32(&'a [f32]),
    F16(&'a [f16]),
}

impl DocVectors<'_> {
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
}

/// Scores documents `i in 0..offsets.len()-1` (tokens `offsets[i]..offsets[i+1]` of `docs`,
/// offsets relative to the start of `docs`) into `out[i]`, on the calling thread. The building
/// block for the index's search, which parallelises over chunks of documents itself.
/// Inputs must already be valid (the caller checked them); panics on inconsistent lengths.
pub fn score_docs(query: &[f32], dim: usize, docs: DocVectors<'_>, offsets: &[u64], out: &mut [f32]) {
    assert_eq!(out.len() + 1, offsets.len());
    for (i, o) in out.iter_mut().enumerate() {
        let (a, b) = (offsets[i] as usize * dim, offsets[i + 1] as usize * dim);
        *o = match docs {
            DocVectors::F32(v) => scalar::maxsim_f32(query, &v[a..b], dim),
            DocVectors::F16(v) => scalar::maxsim_f16(query, &v[a..b], dim),
        };
    }
}

/// Scores every document `i` (tokens `offsets[i]..offsets[i+1]` of `docs`) against `query`
/// (`n_query_tokens * dim` f32, row-major). Runs in latix's pool; validates all inputs.
pub fn maxsim(
    query: &[f32],
    dim: usize,
    docs: DocVectors<'_>,
    offsets: &[u64],
    n_threads: Option<usize>,
) -> Result<Vec<f32>> {
    if dim == 0 {
        return Err(LatixError::invalid("dim must be positive"));
    }
    if query.is_empty() || query.len() % dim != 0 {
        return Err(LatixError::invalid("query must be a non-empty (n_query_tokens, dim) array"));
    }
    if offsets.is_empty() {
        return Err(LatixError::invalid("doc_offsets must have n_docs + 1 entries"));
    }
    let n_tokens = (docs.len() / dim) as u64;
    for w in offsets.windows(2) {
        if w[1] < w[0] {
            return Err(LatixError::invalid("doc_offsets must be non-decreasing"));
        }
    }
    if offsets[offsets.len() - 1] > n_tokens {
        return Err(LatixError::invalid("doc_offsets point past the end of doc_vectors"));
    }
    let n_docs = offsets.len() - 1;
    crate::parallel::install(n_threads, || {
        (0..n_docs)
            .into_par_iter()
            .map(|i| {
                let (a, b) = (offsets[i] as usize * dim, offsets[i + 1] as usize * dim);
                match docs {
                    DocVectors::F32(v) => scalar::maxsim_f32(query, &v[a..b], dim),
                    DocVectors::F16(v) => scalar::maxsim_f16(query, &v[a..b], dim),
                }
            })
            .collect()
    })
}
