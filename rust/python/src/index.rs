//! `latix._core.Index`: the binding of `latix_core::Index`. Validates and converts arguments
//! (naming the argument and the expected shape/dtype), releases the GIL around the core call and
//! converts results back. The public, documented facade is `latix.Index` (python/latix/index.py).

use std::borrow::Cow;
use std::path::PathBuf;

use half::f16;
use half::slice::HalfFloatSliceExt;
use numpy::{IntoPyArray, PyArray1, PyArray2, PyArrayMethods, PyUntypedArrayMethods};
use pyo3::prelude::*;
use pyo3::types::{PyDict, PyList, PyString, PyTuple};

use latix_core::index::{DocFilter, Index as CoreIndex, OpenMode, OwnedVectors, SegmentMasks};
use latix_core::maxsim::DocVectors;
use latix_core::store::Dtype;
use latix_core::CompressedSearch;

use crate::arrays::{c_contiguous, contiguous2, describe, float_matrix, FloatMatrix};
use crate::compression::CompressionArg;
use crate::errors::{invalid, IntoPyResult};

/// Extracts a list of str ids (any iterable but a bare str), naming the offending position.
fn extract_ids(obj: &Bound<'_, PyAny>, name: &str) -> PyResult<Vec<String>> {
    let py = obj.py();
    if obj.is_instance_of::<PyString>() || obj.is_instance_of::<pyo3::types::PyBytes>() {
        return Err(invalid(
            py,
            format!(
                "{name} must be a list of str, got a single {}",
                describe(obj)
            ),
        ));
    }
    let iter = obj.try_iter().map_err(|_| {
        invalid(
            py,
            format!("{name} must be a list of str, got {}", describe(obj)),
        )
    })?;
    let mut out = Vec::new();
    for (i, item) in iter.enumerate() {
        let item = item?;
        let s = item.cast::<PyString>().map_err(|_| {
            invalid(
                py,
                format!("{name}[{i}] must be str, got {}", describe(&item)),
            )
        })?;
        out.push(utf8(s, &format!("{name}[{i}]"))?.to_owned());
    }
    Ok(out)
}

/// The UTF-8 text of `s`, or `InvalidArgumentError` naming `name` when it cannot have one (a
/// lone surrogate, as `os.fsdecode` or `surrogateescape` produce for undecodable bytes).
fn utf8<'a>(s: &'a Bound<'_, PyString>, name: &str) -> PyResult<&'a str> {
    let py = s.py();
    s.to_str().map_err(|e| {
        if e.is_instance_of::<pyo3::exceptions::PyUnicodeEncodeError>(py) {
            invalid(
                py,
                format!(
                    "{name} is not valid Unicode (it contains a lone surrogate, e.g. from bytes \
                     decoded with surrogateescape): ids must be encodable as UTF-8 ({e})"
                ),
            )
        } else {
            e
        }
    })
}

fn shape(m: &FloatMatrix<'_>) -> (usize, usize) {
    match m {
        FloatMatrix::F32(a) => (a.shape()[0], a.shape()[1]),
        FloatMatrix::F16(a) => (a.shape()[0], a.shape()[1]),
    }
}

/// A document matrix held for the duration of a call: the numpy array itself when it is
/// C-contiguous and aligned (no copy), else numpy's C-ordered copy of it ([`c_contiguous`]).
enum Held<'py> {
    F32(Bound<'py, PyArray2<f32>>),
    F16(Bound<'py, PyArray2<f16>>),
}

impl Held<'_> {
    /// The data as a flat slice.
    ///
    /// # Safety
    /// Reads the array's buffer without rust-numpy's dynamic borrow tracking, whose per-borrow
    /// cost is linear in the number of live borrows of the same base array, so borrowing n views
    /// of one array (`np.split`, a 3-D batch) costs O(n^2): 7 s for 40k documents. The tracking
    /// only guards against other Rust borrows, never against Python code writing to the array, so
    /// the contract is the same as with `PyReadonlyArray`: the caller must not mutate the arrays
    /// while the call runs. The array is C-contiguous and kept alive by `self`.
    unsafe fn view(&self) -> DocVectors<'_> {
        // `as_slice` cannot fail: the array is C-contiguous and aligned (checked when held).
        match self {
            Held::F32(a) => DocVectors::F32(unsafe { a.as_slice() }.unwrap_or(&[])),
            Held::F16(a) => DocVectors::F16(unsafe { a.as_slice() }.unwrap_or(&[])),
        }
    }
}

/// Checks that `obj` is an `(n >= 1, dim)` float32/float16 array and holds it (see [`Held`]).
fn hold_matrix<'py>(
    obj: &Bound<'py, PyAny>,
    name: &str,
    dim: usize,
    rows: &str,
    what: &str,
) -> PyResult<Held<'py>> {
    let py = obj.py();
    let expected = || {
        format!(
            "{name} must be a float32 or float16 array of shape ({rows}, {dim}), got {}",
            describe(obj)
        )
    };
    let (n, d) = if let Ok(a) = obj.cast::<PyArray2<f32>>() {
        (a.shape()[0], a.shape()[1])
    } else if let Ok(a) = obj.cast::<PyArray2<f16>>() {
        (a.shape()[0], a.shape()[1])
    } else {
        return Err(invalid(py, expected()));
    };
    if d != dim {
        return Err(invalid(
            py,
            format!("{name} has shape ({n}, {d}), expected ({rows}, {dim}) for this index"),
        ));
    }
    if n == 0 {
        return Err(invalid(
            py,
            format!("{name} has shape (0, {d}): a {what} needs at least one token"),
        ));
    }
    // Checked before any copy: a wrong shape is an argument error, whatever the array's size.
    let obj = c_contiguous(obj, name)?;
    Ok(
        match (obj.cast::<PyArray2<f32>>(), obj.cast::<PyArray2<f16>>()) {
            (Ok(a), _) => Held::F32(a.clone()),
            (_, Ok(a)) => Held::F16(a.clone()),
            _ => return Err(invalid(py, expected())),
        },
    )
}

/// The Rust index handle behind `latix.Index`.
#[pyclass(frozen, module = "latix._core", name = "Index")]
pub struct PyIndex {
    inner: CoreIndex,
}

#[pymethods]
impl PyIndex {
    /// (path: str | os.PathLike[str], dim: int, dtype: str = "float16", compression: Compression | None = None, codec: bytes | None = None) -> Index
    ///
    /// Creates a new empty index directory (holding the write lock); with `compression` (a
    /// `latix.Compression`, read by attribute), a compressed index; with `codec` too (a codec
    /// file's bytes), one that starts with that trained codec. Ranges, and the codec, are
    /// checked by the core.
    #[staticmethod]
    #[pyo3(signature = (path, dim, dtype="float16", compression=None, codec=None))]
    fn create(
        py: Python<'_>,
        path: PathBuf,
        dim: usize,
        dtype: &str,
        compression: Option<CompressionArg>,
        codec: Option<Vec<u8>>,
    ) -> PyResult<PyIndex> {
        let dtype = Dtype::parse(dtype).py_err(py)?;
        let compression = compression.map(|c| c.into_core()).transpose().py_err(py)?;
        let inner = match (compression, codec) {
            (Some(c), Some(b)) => {
                py.detach(|| CoreIndex::create_with_codec(&path, dim, dtype, c, &b))
            }
            (None, Some(_)) => {
                return Err(invalid(
                    py,
                    "a codec is given to a compressed index only: pass compression too",
                ))
            }
            (c, None) => py.detach(|| CoreIndex::create_with(&path, dim, dtype, c)),
        }
        .py_err(py)?;
        Ok(PyIndex { inner })
    }

    /// () -> bytes | None
    ///
    /// The bytes of the index's codec file (checked), None for a plain index or a compressed
    /// one that has not trained its codec yet.
    fn codec_bytes<'py>(
        &self,
        py: Python<'py>,
    ) -> PyResult<Option<Bound<'py, pyo3::types::PyBytes>>> {
        let b = py.detach(|| self.inner.codec_bytes()).py_err(py)?;
        Ok(b.map(|b| pyo3::types::PyBytes::new(py, &b)))
    }

    /// -> dict[str, Any] | None
    ///
    /// The compression configuration as a dict of `latix.Compression`'s fields, or None for a
    /// plain index.
    #[getter]
    fn compression(&self) -> Option<CompressionArg> {
        self.inner.compression().map(CompressionArg::from_core)
    }

    /// () -> dict[str, object]
    ///
    /// Figures of the latest committed snapshot, as a dict.
    fn stats<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, pyo3::types::PyDict>> {
        let s = py.detach(|| self.inner.stats()).py_err(py)?;
        let d = pyo3::types::PyDict::new(py);
        d.set_item("kind", if s.compressed { "compressed" } else { "plain" })?;
        d.set_item("n_docs", s.n_docs)?;
        d.set_item("n_tokens", s.n_tokens)?;
        d.set_item("n_segments", s.n_segments)?;
        d.set_item("bytes_on_disk", s.bytes_on_disk)?;
        d.set_item("trained", s.trained)?;
        d.set_item("n_centroids", s.n_centroids)?;
        d.set_item("code_bytes_per_token", s.code_bytes_per_token)?;
        d.set_item("keep_vectors", s.keep_vectors)?;
        d.set_item("merge_failures", s.merge_health.failures)?;
        d.set_item("merge_error", s.merge_health.last_error)?;
        Ok(d)
    }

    /// (path: str | os.PathLike[str], mode: str = "r") -> Index
    ///
    /// Opens an existing index; mode "r" (lock taken on first mutation) or "w" (lock now).
    #[staticmethod]
    #[pyo3(signature = (path, mode="r"))]
    fn open(py: Python<'_>, path: PathBuf, mode: &str) -> PyResult<PyIndex> {
        let mode = match mode {
            "r" => OpenMode::Read,
            "w" => OpenMode::Write,
            _ => {
                return Err(invalid(
                    py,
                    format!("mode must be \"r\" or \"w\", got {mode:?}"),
                ))
            }
        };
        let inner = py.detach(|| CoreIndex::open(&path, mode)).py_err(py)?;
        Ok(PyIndex { inner })
    }

    /// (ids: object, embeddings: object, replace: bool = False) -> None
    ///
    /// Stages documents: str ids and their (n_i, dim) arrays (a list, or one 3-D array).
    #[pyo3(signature = (ids, embeddings, replace=false))]
    fn add(
        &self,
        py: Python<'_>,
        ids: &Bound<'_, PyAny>,
        embeddings: &Bound<'_, PyAny>,
        replace: bool,
    ) -> PyResult<()> {
        if self.inner.is_closed() {
            return self.inner.len().map(|_| ()).py_err(py);
        }
        let ids = extract_ids(ids, "ids")?;
        if embeddings.is_instance_of::<PyString>() {
            return Err(invalid(
                py,
                "embeddings must be a list of (n_i, dim) arrays, got str",
            ));
        }
        let list: Vec<Bound<'_, PyAny>> = match embeddings.cast::<numpy::PyUntypedArray>() {
            // A single 3-D array (n_docs, n_tokens, dim) is accepted as a list of its rows.
            Ok(a) if a.ndim() == 3 => embeddings.try_iter()?.collect::<PyResult<_>>()?,
            Ok(_) => {
                return Err(invalid(
                    py,
                    format!(
                        "embeddings must be a list of (n_i, dim) arrays, got {}",
                        describe(embeddings)
                    ),
                ))
            }
            Err(_) => embeddings
                .try_iter()
                .map_err(|_| {
                    invalid(
                        py,
                        format!(
                            "embeddings must be a list of (n_i, dim) arrays, got {}",
                            describe(embeddings)
                        ),
                    )
                })?
                .collect::<PyResult<_>>()?,
        };
        if ids.len() != list.len() {
            return Err(invalid(
                py,
                format!(
                    "len(ids) = {} but len(embeddings) = {}; they must match",
                    ids.len(),
                    list.len()
                ),
            ));
        }
        let dim = self.inner.dim();
        let held = list
            .iter()
            .enumerate()
            .map(|(i, e)| hold_matrix(e, &format!("embeddings[{i}]"), dim, "n_tokens", "document"))
            .collect::<PyResult<Vec<_>>>()?;
        // SAFETY: see `Held::view`; `held` keeps every array alive until after the call.
        let docs: Vec<DocVectors<'_>> = held.iter().map(|h| unsafe { h.view() }).collect();
        let id_refs: Vec<&str> = ids.iter().map(|s| s.as_str()).collect();
        py.detach(|| self.inner.add(&id_refs, &docs, replace))
            .py_err(py)
    }

    /// (ids: object) -> None
    ///
    /// Stages the deletion of documents.
    fn delete(&self, py: Python<'_>, ids: &Bound<'_, PyAny>) -> PyResult<()> {
        let ids = extract_ids(ids, "ids")?;
        let id_refs: Vec<&str> = ids.iter().map(|s| s.as_str()).collect();
        py.detach(|| self.inner.delete(&id_refs)).py_err(py)
    }

    /// (segments_per_tier: int | None, floor_tokens: int = 65536, memory: int = 1073741824, max_merge_tokens: int | None = 33554432) -> None
    ///
    /// Sets the merge policy run after every commit of this handle (`None`: off; each merge
    /// writes at most `max_merge_tokens` live tokens, `None`: merges unbounded).
    #[pyo3(signature = (segments_per_tier, floor_tokens=65536, memory=1073741824, max_merge_tokens=Some(latix_core::index::DEFAULT_MAX_MERGE_TOKENS)))]
    fn set_merge_policy(
        &self,
        py: Python<'_>,
        segments_per_tier: Option<usize>,
        floor_tokens: u64,
        memory: u64,
        max_merge_tokens: Option<u64>,
    ) -> PyResult<()> {
        let policy = segments_per_tier.map(|n| latix_core::index::MergePolicy {
            segments_per_tier: n,
            floor_tokens,
            memory,
            max_merge_tokens: max_merge_tokens.unwrap_or(u64::MAX),
        });
        self.inner.set_merge_policy(policy).py_err(py)
    }

    /// () -> int | None
    ///
    /// Segments per tier of the merge policy (`None`: off).
    fn merge_segments_per_tier(&self) -> Option<usize> {
        self.inner.merge_policy().map(|p| p.segments_per_tier)
    }

    /// () -> str | None
    ///
    /// Publishes the staged changes atomically, then runs the merge policy; returns the message
    /// of a merge that failed after the commit was published (None: no failure).
    fn commit(&self, py: Python<'_>) -> PyResult<Option<String>> {
        let merge_error = py.detach(|| self.inner.commit_report()).py_err(py)?;
        Ok(merge_error.map(|e| e.to_string()))
    }

    /// (retrain: bool = False, memory: int | None = None, reencode: bool = False) -> None
    ///
    /// Rewrites the live documents into one segment (retraining the codec if asked); `memory`
    /// bounds a codes-domain merge's resident memory (bytes); `reencode` forces the re-encoding
    /// path (the baseline of benches/bench_compact.py; lossy without kept vectors).
    #[pyo3(signature = (retrain=false, memory=None, reencode=false))]
    fn compact(
        &self,
        py: Python<'_>,
        retrain: bool,
        memory: Option<u64>,
        reencode: bool,
    ) -> PyResult<()> {
        py.detach(|| {
            if reencode && !retrain {
                self.inner.compact_reencode()
            } else {
                self.inner.compact_options(retrain, memory)
            }
        })
        .py_err(py)
    }

    /// () -> None
    ///
    /// Checks every file of the latest snapshot against its checksum.
    fn verify(&self, py: Python<'_>) -> PyResult<()> {
        py.detach(|| self.inner.verify()).py_err(py)
    }

    /// () -> None
    ///
    /// Releases the write lock and the files; later calls raise IndexClosedError.
    fn close(&self, py: Python<'_>) {
        py.detach(|| self.inner.close())
    }

    /// (queries: list[object], k: int = 10, n_threads: int | None = None, subset: list[str] | None = None, nprobe: int | None = None, rerank: bool | None = None, refine: int | None = None, masks: dict[str, NDArray[np.uint64]] | None = None, exhaustive_below: int = 0, rerank_depth: int | None = None) -> tuple[NDArray[np.float32], list[str]] | None
    ///
    /// Returns (scores float32 (n_queries, k), ids list[str] of length n_queries * k). `masks`
    /// (segment file -> uint64 bitmap, see `segments`) restricts the search like `subset`; then
    /// the result is None when the latest snapshot has a segment the masks do not cover, and a
    /// compressed index scores the allowed documents exhaustively when at most
    /// `exhaustive_below` are live.
    #[pyo3(signature = (queries, k=10, n_threads=None, subset=None, nprobe=None, rerank=None, refine=None, masks=None, exhaustive_below=0, rerank_depth=None))]
    #[allow(clippy::too_many_arguments)]
    fn search<'py>(
        &self,
        py: Python<'py>,
        queries: &Bound<'py, PyList>,
        k: usize,
        n_threads: Option<usize>,
        subset: Option<&Bound<'py, PyAny>>,
        nprobe: Option<usize>,
        rerank: Option<bool>,
        refine: Option<usize>,
        masks: Option<&Bound<'py, PyDict>>,
        exhaustive_below: usize,
        rerank_depth: Option<usize>,
    ) -> PyResult<Option<Bound<'py, PyTuple>>> {
        // Counts arrive checked by latix.Index (their Python type and range); the core
        // validates their values against the index (nprobe, k, n_threads).
        let opts = CompressedSearch {
            nprobe,
            rerank,
            refine,
            rerank_depth,
        };
        if self.inner.is_closed() {
            return self.inner.len().map(|_| None).py_err(py);
        }
        let dim = self.inner.dim();
        let mut qs: Vec<Cow<'_, [f32]>> = Vec::with_capacity(queries.len());
        let mats: Vec<FloatMatrix<'py>> = queries
            .iter()
            .enumerate()
            .map(|(i, q)| {
                let name = format!("queries[{i}]");
                let m = float_matrix(&q, &name, &format!("(n_query_tokens, {dim})"))?;
                let (n, d) = shape(&m);
                if d != dim {
                    return Err(invalid(py, format!("{name} has shape ({n}, {d}), expected (n_query_tokens, {dim}) for this index")));
                }
                if n == 0 {
                    return Err(invalid(py, format!("{name} has shape (0, {d}): a query needs at least one token")));
                }
                Ok(m)
            })
            .collect::<PyResult<_>>()?;
        // Queries are copied (they are small next to the search): the core checks and scores
        // the same values, even if another thread writes to the caller's arrays meanwhile.
        for (i, m) in mats.iter().enumerate() {
            let what = format!("a copy of queries[{i}]");
            qs.push(Cow::Owned(match m {
                FloatMatrix::F32(a) => {
                    let q = contiguous2(a);
                    let mut v = latix_core::error::try_vec(q.len(), &what).py_err(py)?;
                    v.extend_from_slice(&q);
                    v
                }
                FloatMatrix::F16(a) => {
                    let h = contiguous2(a);
                    let mut v = latix_core::error::try_filled(h.len(), 0f32, &what).py_err(py)?;
                    h.convert_to_f32_slice(&mut v);
                    v
                }
            }));
        }
        let subset: Option<Vec<String>> = subset.map(|s| extract_ids(s, "subset")).transpose()?;
        let q_refs: Vec<&[f32]> = qs.iter().map(|c| c.as_ref()).collect();
        let s_refs: Option<Vec<&str>> = subset
            .as_ref()
            .map(|v| v.iter().map(|s| s.as_str()).collect());
        let masks = masks.map(extract_masks).transpose()?;
        if masks.is_some() && s_refs.is_some() {
            return Err(invalid(py, "pass subset or masks, not both"));
        }
        let res = py
            .detach(|| {
                let filter = match (&masks, &s_refs) {
                    (Some(m), _) => DocFilter::Masks {
                        masks: m,
                        exhaustive_below,
                    },
                    (None, Some(ids)) => DocFilter::Ids(ids),
                    (None, None) => DocFilter::All,
                };
                self.inner
                    .search_filtered(&q_refs, k, n_threads, filter, opts)
            })
            .py_err(py)?;
        let Some(res) = res else {
            return Ok(None);
        };
        let scores = res
            .scores
            .into_pyarray(py)
            .reshape([res.n_queries, res.k])?;
        let ids = PyList::new(py, res.ids)?;
        PyTuple::new(py, [scores.into_any(), ids.into_any()]).map(Some)
    }

    /// () -> list[tuple[str, int, int]]
    ///
    /// The segments of the latest snapshot: (file, n_docs, n_live) per segment, in order.
    fn segments(&self, py: Python<'_>) -> PyResult<Vec<(String, usize, usize)>> {
        let segs = py.detach(|| self.inner.segments()).py_err(py)?;
        Ok(segs
            .into_iter()
            .map(|s| (s.file, s.n_docs, s.n_live))
            .collect())
    }

    /// (file: str) -> list[str]
    ///
    /// The ids of every document of segment `file`, by document number (deleted ones too).
    fn segment_ids(&self, py: Python<'_>, file: &str) -> PyResult<Vec<String>> {
        py.detach(|| self.inner.segment_ids(file)).py_err(py)
    }

    /// (id: object) -> NDArray[np.float32] | NDArray[np.float16]
    ///
    /// The stored vectors of `id` as an (n, dim) array of the storage dtype.
    fn get<'py>(&self, py: Python<'py>, id: &Bound<'py, PyAny>) -> PyResult<Bound<'py, PyAny>> {
        let id: String = utf8(
            id.cast::<PyString>()
                .map_err(|_| invalid(py, format!("id must be str, got {}", describe(id))))?,
            "id",
        )?
        .to_owned();
        let v = py.detach(|| self.inner.get(&id)).py_err(py)?;
        let dim = self.inner.dim();
        Ok(match v {
            OwnedVectors::F16(v) => {
                let n = v.len() / dim;
                v.into_pyarray(py).reshape([n, dim])?.into_any()
            }
            OwnedVectors::F32(v) => {
                let n = v.len() / dim;
                v.into_pyarray(py).reshape([n, dim])?.into_any()
            }
        })
    }

    /// () -> int
    ///
    /// Live documents of the latest snapshot.
    fn __len__(&self, py: Python<'_>) -> PyResult<usize> {
        self.inner.len().py_err(py)
    }

    /// (id: object) -> bool
    ///
    /// Whether `id` is a live document of the latest snapshot.
    fn contains(&self, py: Python<'_>, id: &Bound<'_, PyAny>) -> PyResult<bool> {
        // Not a str, or a str that is not valid Unicode: never an id of the index.
        match id.cast::<PyString>().ok().and_then(|s| s.to_str().ok()) {
            Some(s) => {
                let s = s.to_owned();
                py.detach(|| self.inner.contains(&s)).py_err(py)
            }
            None => self.inner.len().map(|_| false).py_err(py),
        }
    }

    /// () -> list[str]
    ///
    /// The live ids of the latest snapshot.
    fn ids(&self, py: Python<'_>) -> PyResult<Vec<String>> {
        py.detach(|| self.inner.ids()).py_err(py)
    }

    /// -> int
    ///
    /// Vector dimension.
    #[getter]
    fn dim(&self) -> usize {
        self.inner.dim()
    }

    /// -> str
    ///
    /// Storage dtype: "float16" or "float32".
    #[getter]
    fn dtype(&self) -> &'static str {
        self.inner.dtype().name()
    }

    /// -> pathlib.Path
    ///
    /// The index directory.
    #[getter]
    fn path(&self) -> PathBuf {
        self.inner.path().to_path_buf()
    }

    /// -> int
    ///
    /// Live tokens of the latest snapshot.
    #[getter]
    fn num_tokens(&self, py: Python<'_>) -> PyResult<u64> {
        self.inner.num_tokens().py_err(py)
    }

    /// -> int
    ///
    /// Generation of the latest snapshot.
    #[getter]
    fn generation(&self, py: Python<'_>) -> PyResult<u64> {
        self.inner.snapshot().map(|s| s.generation()).py_err(py)
    }

    /// () -> tuple[int, int]
    ///
    /// (generation, live documents) of the latest snapshot, both from one snapshot (one
    /// `CURRENT` read where `generation` and `len` take one each).
    fn generation_and_len(&self, py: Python<'_>) -> PyResult<(u64, usize)> {
        self.inner
            .snapshot()
            .map(|s| (s.generation(), s.len()))
            .py_err(py)
    }

    /// -> bool
    ///
    /// Whether the handle was closed.
    #[getter]
    fn closed(&self) -> bool {
        self.inner.is_closed()
    }
}

pub fn register(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add_class::<PyIndex>()?;
    Ok(())
}

/// Per-segment masks from a dict of segment file name -> 1-D uint64 array (bit `d % 64` of word
/// `d / 64` allows document `d`), copied (a few KB per segment).
fn extract_masks(d: &Bound<'_, PyDict>) -> PyResult<SegmentMasks> {
    let py = d.py();
    let mut out = SegmentMasks::with_capacity(d.len());
    for (key, value) in d.iter() {
        let file: String = key
            .cast::<PyString>()
            .map_err(|_| {
                invalid(
                    py,
                    format!("masks keys must be str, got {}", describe(&key)),
                )
            })?
            .to_str()?
            .to_owned();
        let arr = value.cast::<PyArray1<u64>>().map_err(|_| {
            invalid(
                py,
                format!(
                    "masks[{file:?}] must be a 1-D uint64 array, got {}",
                    describe(&value)
                ),
            )
        })?;
        let words: Vec<u64> = arr.readonly().as_array().iter().copied().collect();
        out.insert(file, words);
    }
    Ok(out)
}
