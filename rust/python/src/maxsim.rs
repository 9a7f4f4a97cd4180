//! `latix.maxsim`: exact MaxSim of one query against packed documents.

use numpy::{IntoPyArray, PyArray1, PyUntypedArrayMethods};
use pyo3::prelude::*;

use latix_core::maxsim::{self as core_maxsim, DocVectors};

use crate::arrays::{contiguous1, contiguous2, f32_matrix, float_matrix, i64_vector, FloatMatrix};
use crate::errors::{invalid, IntoPyResult};

/// (query: NDArray[np.float32], doc_vectors: NDArray[np.float32] | NDArray[np.float16], doc_offsets: NDArray[np.int64], n_threads: int | None = None) -> NDArray[np.float32]
///
/// Exact MaxSim scores of one query against a packed document collection.
///
/// Args:
///     query: (n_query_tokens, dim) float32 query token vectors.
///     doc_vectors: (n_tokens, dim) float32 or float16 document token vectors, all documents
///         concatenated.
///     doc_offsets: (n_docs + 1,) int64; document i is rows doc_offsets[i]:doc_offsets[i+1].
///     n_threads: threads to use (default: LATIX_NUM_THREADS or the number of CPUs).
///
/// Returns:
///     (n_docs,) float32: for each document, the sum over query tokens of the best dot product
///     with any of its tokens (0 for a document with no tokens).
///
/// Raises:
///     InvalidArgumentError: wrong dtype, rank or dim, NaN/Inf, inconsistent offsets.
#[pyfunction]
#[pyo3(signature = (query, doc_vectors, doc_offsets, n_threads=None))]
fn maxsim<'py>(
    py: Python<'py>,
    query: &Bound<'py, PyAny>,
    doc_vectors: &Bound<'py, PyAny>,
    doc_offsets: &Bound<'py, PyAny>,
    n_threads: Option<&Bound<'py, PyAny>>,
) -> PyResult<Bound<'py, PyArray1<f32>>> {
    // Extracted by hand: a float, bool, negative or huge count is an InvalidArgumentError, not
    // a TypeError/OverflowError from argument conversion.
    let n_threads = match n_threads {
        None => None,
        Some(o) => match o.extract::<i64>() {
            Ok(n) if n >= 1 && !o.is_instance_of::<pyo3::types::PyBool>() => Some(n as usize),
            _ => {
                return Err(invalid(
                    py,
                    format!(
                        "n_threads must be a positive integer or None, got {}",
                        o.repr()?
                    ),
                ))
            }
        },
    };
    let q = f32_matrix(query, "query", "(n_query_tokens, dim)")?;
    let docs = float_matrix(doc_vectors, "doc_vectors", "(n_tokens, dim)")?;
    let offs = i64_vector(doc_offsets, "doc_offsets", "(n_docs + 1,)")?;
    let (nq, dim) = (q.shape()[0], q.shape()[1]);
    let (n_tokens, doc_dim) = match &docs {
        FloatMatrix::F32(a) => (a.shape()[0], a.shape()[1]),
        FloatMatrix::F16(a) => (a.shape()[0], a.shape()[1]),
    };
    if nq == 0 || dim == 0 {
        return Err(invalid(
            py,
            format!("query must have at least one token and dim > 0, got shape ({nq}, {dim})"),
        ));
    }
    if doc_dim != dim {
        return Err(invalid(
            py,
            format!("doc_vectors has dim {doc_dim} but query has dim {dim}: shapes (n_tokens, {doc_dim}) and ({nq}, {dim})"),
        ));
    }
    let offsets = contiguous1(&offs);
    if offsets.is_empty() {
        return Err(invalid(
            py,
            "doc_offsets must have n_docs + 1 entries (at least 1), got 0",
        ));
    }
    if offsets[0] != 0 {
        return Err(invalid(
            py,
            format!("doc_offsets[0] must be 0, got {}", offsets[0]),
        ));
    }
    if let Some(i) = offsets.windows(2).position(|w| w[1] < w[0]) {
        return Err(invalid(py, format!("doc_offsets must be non-decreasing, but doc_offsets[{}] = {} > doc_offsets[{}] = {}", i, offsets[i], i + 1, offsets[i + 1])));
    }
    let last = offsets[offsets.len() - 1];
    if last as usize != n_tokens {
        return Err(invalid(
            py,
            format!("doc_offsets[-1] must equal doc_vectors.shape[0] = {n_tokens}, got {last}"),
        ));
    }
    let offsets_u64: Vec<u64> = offsets.iter().map(|&o| o as u64).collect();
    let q_data = contiguous2(&q);
    // NaN/Inf checks run without the GIL, fused with scoring (no extra pass over the documents).
    let run = |docs: DocVectors<'_>| {
        core_maxsim::maxsim_checked(&q_data, dim, docs, &offsets_u64, n_threads)
    };
    let scores = match &docs {
        FloatMatrix::F32(a) => {
            let d = contiguous2(a);
            py.detach(|| run(DocVectors::F32(&d))).py_err(py)?
        }
        FloatMatrix::F16(a) => {
            let d = contiguous2(a);
            py.detach(|| run(DocVectors::F16(&d))).py_err(py)?
        }
    };
    Ok(scores.into_pyarray(py))
}

/// () -> str
///
/// Name of the MaxSim kernel selected for this CPU at run time.
///
/// Returns:
///     One of "avx512", "avx2", "portable" (auto-vectorised, NEON on aarch64) or "scalar". The
///     environment variable LATIX_KERNEL, read once at first use, can force a slower one.
#[pyfunction]
fn kernel_name() -> &'static str {
    core_maxsim::kernel_name()
}

pub fn register(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add_function(wrap_pyfunction!(maxsim, m)?)?;
    m.add_function(wrap_pyfunction!(kernel_name, m)?)?;
    Ok(())
}
