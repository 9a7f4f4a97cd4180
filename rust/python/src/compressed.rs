//! `latix._core.compressed`: the compressed-index building blocks (`Codec`: training, encoding;
//! `CompressedSegment`: one segment's inverted lists; `search`: the compressed search of a
//! compressed `Index`, over them). Conversion only: the work, and the validation of values, is
//! in `latix_core::compressed`; this file checks what only the binding holds (array shapes it
//! turns into slices, segments' codec checksums).

use std::path::PathBuf;
use std::sync::Arc;

use numpy::ndarray::Array2;
use numpy::{
    IntoPyArray, PyArray1, PyArray2, PyReadonlyArray1, PyReadonlyArray2, PyUntypedArrayMethods,
};
use pyo3::prelude::*;
use pyo3::types::PyBytes;

use latix_core::compressed::{
    self as cc, Codec, CodecParams, CompressedSearch, IvfSegment, SegmentView,
};
use latix_core::maxsim::DocVectors;

use crate::arrays::{
    check_finite_f16, check_finite_f32, contiguous1, contiguous2, describe, f32_matrix,
    float_matrix, i64_vector, FloatMatrix,
};
use crate::errors::{invalid, IntoPyResult};

/// A trained token codec (coarse centroids + 4-bit product-quantised residuals).
#[pyclass(frozen, name = "Codec", module = "latix._core.compressed")]
pub struct PyCodec {
    pub inner: Arc<Codec>,
    pub crc: u32,
}

impl PyCodec {
    fn wrap(c: Codec) -> Self {
        // The identity an index records in its inverted lists (the crc32c of the serialised
        // body: the crc32c of the whole form, trailing crc included, is the same for every codec).
        let crc = cc::codec_id(&c.to_bytes());
        PyCodec {
            inner: Arc::new(c),
            crc,
        }
    }
}

#[pymethods]
impl PyCodec {
    /// (vectors: NDArray[np.float32], n_tokens_hint: int | None = None, n_centroids: int | None = None, bytes_per_token: int | None = None, kmeans_iters: int | None = None, seed: int = 0, n_threads: int | None = None) -> Codec
    ///
    /// Trains on (n, dim) float32 sample vectors (n >= 256); K defaults from n_tokens_hint.
    #[staticmethod]
    #[pyo3(signature = (vectors, n_tokens_hint=None, n_centroids=None, bytes_per_token=None, kmeans_iters=None, seed=0, n_threads=None))]
    #[allow(clippy::too_many_arguments)]
    fn train(
        py: Python<'_>,
        vectors: &Bound<'_, PyAny>,
        n_tokens_hint: Option<usize>,
        n_centroids: Option<usize>,
        bytes_per_token: Option<usize>,
        kmeans_iters: Option<usize>,
        seed: u64,
        n_threads: Option<usize>,
    ) -> PyResult<Self> {
        let v = f32_matrix(vectors, "vectors", "(n, dim)")?;
        let (n, dim) = (v.shape()[0], v.shape()[1]);
        let data = contiguous2(&v);
        let params = CodecParams {
            n_centroids,
            bytes_per_token,
            kmeans_iters,
            seed,
        };
        let c = py
            .detach(|| Codec::train(&data, dim, n_tokens_hint.unwrap_or(n), &params, n_threads))
            .py_err(py)?;
        Ok(Self::wrap(c))
    }

    /// (data: bytes) -> Codec
    ///
    /// Loads a codec serialised by `to_bytes` (checksummed; CorruptedIndexError if damaged).
    #[staticmethod]
    fn from_bytes(py: Python<'_>, data: &[u8]) -> PyResult<Self> {
        let c = Codec::from_bytes(data, std::path::Path::new("<bytes>")).py_err(py)?;
        Ok(Self::wrap(c))
    }

    /// () -> bytes
    ///
    /// Versioned, checksummed serialisation.
    fn to_bytes<'py>(&self, py: Python<'py>) -> Bound<'py, PyBytes> {
        PyBytes::new(py, &self.inner.to_bytes())
    }

    /// -> int
    ///
    /// Vector dimension.
    #[getter]
    fn dim(&self) -> usize {
        self.inner.dim()
    }
    /// -> int
    ///
    /// Coarse centroids K.
    #[getter]
    fn n_centroids(&self) -> usize {
        self.inner.n_centroids()
    }
    /// -> int
    ///
    /// Residual code bytes per token.
    #[getter]
    fn bytes_per_token(&self) -> usize {
        self.inner.bytes_per_token()
    }
    /// -> float
    ///
    /// Weight of the error along a token's own direction in the encoder's loss (1.0 = MSE).
    #[getter]
    fn aniso_eta(&self) -> f32 {
        self.inner.aniso_eta()
    }

    /// (eta: float) -> Codec
    ///
    /// A copy of this codec whose encoder uses the anisotropic loss weight `eta` (> 0; 1.0 =
    /// plain squared error). Decoding and scoring are unchanged.
    fn with_aniso_eta(&self, py: Python<'_>, eta: f32) -> PyResult<Self> {
        Ok(Self::wrap(self.inner.with_aniso_eta(eta).py_err(py)?))
    }

    /// -> NDArray[np.float32]
    ///
    /// Coarse centroids, (n_centroids, dim) float32.
    #[getter]
    fn centroids<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyArray2<f32>>> {
        let a = Array2::from_shape_vec(
            (self.inner.n_centroids(), self.inner.dim()),
            self.inner.centroids().to_vec(),
        )
        .map_err(|e| invalid(py, e.to_string()))?;
        Ok(a.into_pyarray(py))
    }

    /// (vectors: NDArray[np.float32], n_threads: int | None = None) -> tuple[NDArray[np.uint32], NDArray[np.uint8]]
    ///
    /// Encodes vectors: (centroid ids (n,) uint32, codes (n, bytes_per_token) uint8).
    #[allow(clippy::type_complexity)]
    #[pyo3(signature = (vectors, n_threads=None))]
    fn encode<'py>(
        &self,
        py: Python<'py>,
        vectors: &Bound<'py, PyAny>,
        n_threads: Option<usize>,
    ) -> PyResult<(Bound<'py, PyArray1<u32>>, Bound<'py, PyArray2<u8>>)> {
        let v = f32_matrix(vectors, "vectors", "(n, dim)")?;
        let (n, dim) = (v.shape()[0], v.shape()[1]);
        if dim != self.inner.dim() {
            return Err(invalid(py, format!("vectors have dim {dim} but the codec was trained with dim {}: shape ({n}, {dim})", self.inner.dim())));
        }
        let data = contiguous2(&v);
        check_finite_f32(py, &data, "vectors", dim)?;
        let codec = self.inner.clone();
        let (c, codes) = py
            .detach(|| latix_core::parallel::install(n_threads, || codec.encode(&data)))
            .py_err(py)?;
        let bpt = self.inner.bytes_per_token();
        let codes =
            Array2::from_shape_vec((n, bpt), codes).map_err(|e| invalid(py, e.to_string()))?;
        Ok((c.into_pyarray(py), codes.into_pyarray(py)))
    }

    /// (centroid_ids: NDArray[np.uint32], codes: NDArray[np.uint8]) -> NDArray[np.float32]
    ///
    /// Reconstructed (n, dim) float32 vectors (diagnostics; search never decompresses).
    fn decode<'py>(
        &self,
        py: Python<'py>,
        centroid_ids: PyReadonlyArray1<'py, u32>,
        codes: PyReadonlyArray2<'py, u8>,
    ) -> PyResult<Bound<'py, PyArray2<f32>>> {
        let ids = contiguous1(&centroid_ids);
        let cd = contiguous2(&codes);
        let bpt = self.inner.bytes_per_token();
        if codes.shape()[0] != ids.len() || codes.shape()[1] != bpt {
            return Err(invalid(
                py,
                format!(
                    "codes must have shape ({}, {bpt}), got {:?}",
                    ids.len(),
                    codes.shape()
                ),
            ));
        }
        let k = self.inner.n_centroids();
        if let Some(&bad) = ids.iter().find(|&&c| c as usize >= k) {
            return Err(invalid(
                py,
                format!("centroid id {bad} out of range 0..{k}"),
            ));
        }
        let out = self.inner.decode(&ids, &cd);
        let a = Array2::from_shape_vec((ids.len(), self.inner.dim()), out)
            .map_err(|e| invalid(py, e.to_string()))?;
        Ok(a.into_pyarray(py))
    }
}

/// (compression: Compression, doc_vectors: NDArray[np.float32], doc_offsets: NDArray[np.int64], n_tokens_hint: int | None = None, n_threads: int | None = None) -> Codec
///
/// The codec an index configured by `compression` would train, trained on the (n_tokens, dim)
/// documents given (rows doc_offsets[i]:doc_offsets[i+1]): the same seeded draw of documents,
/// pooling and parameters; K from `n_tokens_hint` (pooled vectors the index will hold; default
/// those given). Give its `to_bytes()` to `Index.create(..., codec=...)` of any number of indexes.
#[pyfunction]
#[pyo3(signature = (compression, doc_vectors, doc_offsets, n_tokens_hint=None, n_threads=None))]
fn train_codec(
    py: Python<'_>,
    compression: crate::compression::CompressionArg,
    doc_vectors: &Bound<'_, PyAny>,
    doc_offsets: &Bound<'_, PyAny>,
    n_tokens_hint: Option<usize>,
    n_threads: Option<usize>,
) -> PyResult<PyCodec> {
    let cfg = compression.into_core().py_err(py)?;
    let v = f32_matrix(doc_vectors, "doc_vectors", "(n_tokens, dim)")?;
    let offs = i64_vector(doc_offsets, "doc_offsets", "(n_docs + 1,)")?;
    let dim = v.shape()[1];
    let data = contiguous2(&v);
    let o = contiguous1(&offs);
    if o.iter().any(|&x| x < 0) {
        return Err(invalid(
            py,
            format!(
                "doc_offsets must be non-negative, got {}",
                describe(doc_offsets)
            ),
        ));
    }
    let offsets: Vec<u64> = o.iter().map(|&x| x as u64).collect();
    let c = py
        .detach(|| {
            cc::train_codec_on_documents(&cfg, dim, &data, &offsets, n_tokens_hint, n_threads)
        })
        .py_err(py)?;
    Ok(PyCodec::wrap(c))
}

/// One segment's compressed inverted lists.
#[pyclass(frozen, name = "CompressedSegment", module = "latix._core.compressed")]
pub struct PyCompressedSegment {
    pub inner: Arc<IvfSegment>,
}

#[pymethods]
impl PyCompressedSegment {
    /// (codec: Codec, doc_vectors: NDArray[np.float32] | NDArray[np.float16], doc_offsets: NDArray[np.int64], n_threads: int | None = None) -> CompressedSegment
    ///
    /// Encodes (n_tokens, dim) documents (rows doc_offsets[i]:doc_offsets[i+1]) with `codec`
    /// and builds the segment's inverted lists.
    #[staticmethod]
    #[pyo3(signature = (codec, doc_vectors, doc_offsets, n_threads=None))]
    fn build(
        py: Python<'_>,
        codec: &PyCodec,
        doc_vectors: &Bound<'_, PyAny>,
        doc_offsets: &Bound<'_, PyAny>,
        n_threads: Option<usize>,
    ) -> PyResult<Self> {
        let docs = float_matrix(doc_vectors, "doc_vectors", "(n_tokens, dim)")?;
        let offs = i64_vector(doc_offsets, "doc_offsets", "(n_docs + 1,)")?;
        let (n_tokens, dim) = match &docs {
            FloatMatrix::F32(a) => (a.shape()[0], a.shape()[1]),
            FloatMatrix::F16(a) => (a.shape()[0], a.shape()[1]),
        };
        if dim != codec.inner.dim() {
            return Err(invalid(py, format!("doc_vectors has dim {dim} but the codec was trained with dim {}: shape ({n_tokens}, {dim})", codec.inner.dim())));
        }
        let o = contiguous1(&offs);
        if o.is_empty()
            || o[0] != 0
            || o.windows(2).any(|w| w[1] < w[0])
            || o[o.len() - 1] as usize != n_tokens
        {
            return Err(invalid(py, format!("doc_offsets must be non-decreasing from 0 to doc_vectors.shape[0] = {n_tokens}, got {}", describe(doc_offsets))));
        }
        let offsets: Vec<u64> = o.iter().map(|&v| v as u64).collect();
        let c = codec.inner.clone();
        let crc = codec.crc;
        let seg = match &docs {
            FloatMatrix::F32(a) => {
                let d = contiguous2(a);
                check_finite_f32(py, &d, "doc_vectors", dim)?;
                py.detach(|| {
                    latix_core::parallel::install(n_threads, || {
                        IvfSegment::build(&c, crc, DocVectors::F32(&d), &offsets)
                    })
                })
            }
            FloatMatrix::F16(a) => {
                let d = contiguous2(a);
                check_finite_f16(py, &d, "doc_vectors", dim)?;
                py.detach(|| {
                    latix_core::parallel::install(n_threads, || {
                        IvfSegment::build(&c, crc, DocVectors::F16(&d), &offsets)
                    })
                })
            }
        }
        .py_err(py)?
        .py_err(py)?;
        Ok(PyCompressedSegment {
            inner: Arc::new(seg),
        })
    }

    /// (path: str | os.PathLike[str]) -> None
    ///
    /// Writes the segment file (atomically).
    fn save(&self, py: Python<'_>, path: PathBuf) -> PyResult<()> {
        let s = self.inner.clone();
        py.detach(|| s.save(&path)).py_err(py)
    }

    /// (path: str | os.PathLike[str], codec: Codec) -> CompressedSegment
    ///
    /// Memory-maps a segment file written by `save`, checking it was built with `codec`.
    #[staticmethod]
    fn open(py: Python<'_>, path: PathBuf, codec: &PyCodec) -> PyResult<Self> {
        let s = py.detach(|| IvfSegment::open(&path, true)).py_err(py)?;
        if s.codec_checksum() != codec.crc {
            return Err(crate::errors::to_py(
                py,
                latix_core::LatixError::invalid(format!(
                    "{}: segment was encoded with a different codec",
                    path.display()
                )),
            ));
        }
        Ok(PyCompressedSegment { inner: Arc::new(s) })
    }

    /// -> int
    ///
    /// Documents of the segment.
    #[getter]
    fn n_docs(&self) -> usize {
        self.inner.n_docs()
    }
    /// -> int
    ///
    /// Tokens of the segment.
    #[getter]
    fn n_tokens(&self) -> usize {
        self.inner.n_tokens()
    }
    /// -> int
    ///
    /// Size of the serialised segment in bytes.
    #[getter]
    fn nbytes(&self) -> usize {
        self.inner.byte_len()
    }
}

/// (codec: Codec, segments: list[CompressedSegment], query: NDArray[np.float32], k: int, nprobe: int | None = None, allowed: list[NDArray[np.bool_] | None] | None = None, full: list[tuple[NDArray[np.float32] | NDArray[np.float16], NDArray[np.int64]]] | None = None, n_candidates: int | None = None, n_threads: int | None = None, refine: int | None = None, rerank: bool | None = None) -> tuple[NDArray[np.float32], NDArray[np.int64], NDArray[np.int64]]
///
/// Top-k documents of `segments` for one (n_query_tokens, dim) float32 query, by the pipeline
/// and defaults of a compressed `latix.Index` (per query token the best `nprobe` centroid lists
/// scanned from codes, the short list refined from all its documents' codes, then, with `full`
/// (per segment: vectors, offsets), the best `n_candidates` re-ranked exactly). `allowed[i]`
/// ((n_docs,) bool, None = all) filters segment i while scanning, as masks filter an index
/// search. `refine` and `rerank` are those of `latix.Index.search` (`refine=0`: candidate
/// generation's order is final). Runs on latix's pool of `n_threads` threads. Returns (scores
/// (n,) float32, segment (n,) int64, doc (n,) int64), best first.
#[pyfunction]
#[pyo3(signature = (codec, segments, query, k, nprobe=None, allowed=None, full=None, n_candidates=None, n_threads=None, refine=None, rerank=None))]
#[allow(clippy::too_many_arguments, clippy::type_complexity)]
fn search<'py>(
    py: Python<'py>,
    codec: &PyCodec,
    segments: Vec<PyRef<'py, PyCompressedSegment>>,
    query: &Bound<'py, PyAny>,
    k: usize,
    nprobe: Option<usize>,
    allowed: Option<Vec<Option<PyReadonlyArray1<'py, bool>>>>,
    full: Option<Vec<(Bound<'py, PyAny>, Bound<'py, PyAny>)>>,
    n_candidates: Option<usize>,
    n_threads: Option<usize>,
    refine: Option<usize>,
    rerank: Option<bool>,
) -> PyResult<(
    Bound<'py, PyArray1<f32>>,
    Bound<'py, PyArray1<i64>>,
    Bound<'py, PyArray1<i64>>,
)> {
    let q = f32_matrix(query, "query", "(n_query_tokens, dim)")?;
    let dim = codec.inner.dim();
    let qd = contiguous2(&q);
    if q.shape()[1] != dim {
        return Err(invalid(
            py,
            format!(
                "query must have shape (n_query_tokens >= 1, {dim}), got {:?}",
                q.shape()
            ),
        ));
    }
    for (i, s) in segments.iter().enumerate() {
        if s.inner.codec_checksum() != codec.crc {
            return Err(invalid(
                py,
                format!("segments[{i}] was encoded with a different codec"),
            ));
        }
    }
    let bitmaps = allowed_bitmaps(py, allowed.as_deref(), &segments)?;
    let full_arrays = full_matrices(py, full.as_deref(), &segments, dim)?;
    let held: Vec<Held<'_>> = full_arrays
        .iter()
        .map(|(m, _)| match m {
            FloatMatrix::F32(a) => Held::F32(contiguous2(a)),
            FloatMatrix::F16(a) => Held::F16(contiguous2(a)),
        })
        .collect();
    let fulls: Vec<cc::FullVectors<'_>> = held
        .iter()
        .zip(&full_arrays)
        .map(|(h, (_, o))| cc::FullVectors {
            vectors: match h {
                Held::F32(v) => DocVectors::F32(v),
                Held::F16(v) => DocVectors::F16(v),
            },
            offsets: o,
        })
        .collect();
    let opts = CompressedSearch {
        nprobe,
        rerank,
        refine,
        rerank_depth: n_candidates,
    };
    let segs: Vec<Arc<IvfSegment>> = segments.iter().map(|s| s.inner.clone()).collect();
    let c = codec.inner.clone();
    let res = py
        .detach(|| {
            let views: Vec<SegmentView<'_>> = segs
                .iter()
                .zip(&bitmaps)
                .map(|(s, b)| SegmentView {
                    seg: s,
                    allowed: b.as_deref(),
                })
                .collect();
            cc::search_encoded(&c, &views, &fulls, &qd, k, opts, n_threads)
        })
        .py_err(py)?;
    let scores: Vec<f32> = res.iter().map(|r| r.0).collect();
    let seg: Vec<i64> = res.iter().map(|r| r.1 as i64).collect();
    let doc: Vec<i64> = res.iter().map(|r| r.2 as i64).collect();
    Ok((
        scores.into_pyarray(py),
        seg.into_pyarray(py),
        doc.into_pyarray(py),
    ))
}

/// Full vectors of a segment held for a call: borrowed when contiguous, else copied.
enum Held<'a> {
    F32(std::borrow::Cow<'a, [f32]>),
    F16(std::borrow::Cow<'a, [half::f16]>),
}

/// `allowed` (one (n_docs,) bool array or None per segment) as per-segment bitmaps.
fn allowed_bitmaps(
    py: Python<'_>,
    allowed: Option<&[Option<PyReadonlyArray1<'_, bool>>]>,
    segments: &[PyRef<'_, PyCompressedSegment>],
) -> PyResult<Vec<Option<Vec<u64>>>> {
    let mut bitmaps: Vec<Option<Vec<u64>>> = vec![None; segments.len()];
    let Some(al) = allowed else {
        return Ok(bitmaps);
    };
    if al.len() != segments.len() {
        return Err(invalid(
            py,
            format!(
                "allowed must have one entry per segment ({}), got {}",
                segments.len(),
                al.len()
            ),
        ));
    }
    for (i, a) in al.iter().enumerate() {
        if let Some(a) = a {
            let v = contiguous1(a);
            let nd = segments[i].inner.n_docs();
            if v.len() != nd {
                return Err(invalid(
                    py,
                    format!("allowed[{i}] must have shape ({nd},), got ({},)", v.len()),
                ));
            }
            let mut bits = vec![0u64; nd.div_ceil(64)];
            for (d, &ok) in v.iter().enumerate() {
                if ok {
                    bits[d >> 6] |= 1 << (d & 63);
                }
            }
            bitmaps[i] = Some(bits);
        }
    }
    Ok(bitmaps)
}

/// `full` (one (vectors, offsets) pair per segment) checked against the segments: the core
/// reads rows by these offsets.
fn full_matrices<'py>(
    py: Python<'py>,
    full: Option<&[(Bound<'py, PyAny>, Bound<'py, PyAny>)]>,
    segments: &[PyRef<'py, PyCompressedSegment>],
    dim: usize,
) -> PyResult<Vec<(FloatMatrix<'py>, Vec<u64>)>> {
    let Some(list) = full else {
        return Ok(Vec::new());
    };
    if list.len() != segments.len() {
        return Err(invalid(
            py,
            format!(
                "full must have one (vectors, offsets) pair per segment ({}), got {}",
                segments.len(),
                list.len()
            ),
        ));
    }
    let mut out = Vec::with_capacity(list.len());
    for (i, (v, o)) in list.iter().enumerate() {
        let m = float_matrix(v, &format!("full[{i}][0]"), "(n_tokens, dim)")?;
        let offs = i64_vector(o, &format!("full[{i}][1]"), "(n_docs + 1,)")?;
        let o = contiguous1(&offs);
        let (rows, d) = match &m {
            FloatMatrix::F32(a) => (a.shape()[0], a.shape()[1]),
            FloatMatrix::F16(a) => (a.shape()[0], a.shape()[1]),
        };
        let nd = segments[i].inner.n_docs();
        if d != dim
            || o.len() != nd + 1
            || o[0] != 0
            || o.windows(2).any(|w| w[1] < w[0])
            || o[nd] as usize != rows
        {
            return Err(invalid(py, format!("full[{i}] must be ((n_tokens, {dim}) vectors, ({},) non-decreasing offsets from 0 to n_tokens)", nd + 1)));
        }
        out.push((m, o.iter().map(|&x| x as u64).collect()));
    }
    Ok(out)
}

/// Adds the submodule `compressed` to `_core` (also importable as `latix._core.compressed`).
pub fn register(parent: &Bound<'_, PyModule>) -> PyResult<()> {
    let py = parent.py();
    let m = PyModule::new(py, "compressed")?;
    m.add(
        "__doc__",
        "Compressed-index building blocks: codec, per-segment inverted lists, and the search of\n\
         a compressed latix.Index over them.",
    )?;
    m.add_class::<PyCodec>()?;
    m.add_function(wrap_pyfunction!(train_codec, &m)?)?;
    m.add_class::<PyCompressedSegment>()?;
    m.add_function(wrap_pyfunction!(search, &m)?)?;
    parent.add_submodule(&m)?;
    py.import("sys")?
        .getattr("modules")?
        .set_item("latix._core.compressed", &m)?;
    Ok(())
}
