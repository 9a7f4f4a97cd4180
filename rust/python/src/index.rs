//! `latix._core.Index`: the binding of `latix_core::Index`. Validates and converts arguments
//! (naming the argument and the expected shape/dtype), releases the GIL around the core call and
//! converts results back. The public, documented facade is `latix.Index` (python/latix/index.py).

use std::borrow::Cow;
use std::path::PathBuf;

use half::f16;
use half::slice::HalfFloatSliceExt;
use numpy::{IntoPyArray, PyArrayMethods, PyUntypedArrayMethods};
use pyo3::prelude::*;
use pyo3::types::{PyList, PyString, PyTuple};

use latix_core::index::{Index as CoreIndex, OpenMode, OwnedVectors};
use latix_core::maxsim::DocVectors;
use latix_core::store::Dtype;

use crate::arrays::{contiguous2, describe, float_matrix, FloatMatrix};
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
        out.push(s.to_str()?.to_owned());
    }
    Ok(out)
}

fn shape(m: &FloatMatrix<'_>) -> (usize, usize) {
    match m {
        FloatMatrix::F32(a) => (a.shape()[0], a.shape()[1]),
        FloatMatrix::F16(a) => (a.shape()[0], a.shape()[1]),
    }
}

/// The Rust index handle behind `latix.Index`.
#[pyclass(frozen, module = "latix._core", name = "Index")]
pub struct PyIndex {
    inner: CoreIndex,
}

#[pymethods]
impl PyIndex {
    /// Creates a new empty index directory (holding the write lock).
    #[staticmethod]
    #[pyo3(signature = (path, dim, dtype="float16"))]
    fn create(py: Python<'_>, path: PathBuf, dim: i64, dtype: &str) -> PyResult<PyIndex> {
        if dim < 1 {
            return Err(invalid(
                py,
                format!("dim must be a positive integer, got {dim}"),
            ));
        }
        let dtype = Dtype::parse(dtype).py_err(py)?;
        let inner = py
            .detach(|| CoreIndex::create(&path, dim as usize, dtype))
            .py_err(py)?;
        Ok(PyIndex { inner })
    }

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
        let mut mats = Vec::with_capacity(list.len());
        for (i, e) in list.iter().enumerate() {
            let name = format!("embeddings[{i}]");
            let m = float_matrix(e, &name, &format!("(n_tokens, {dim})"))?;
            let (n, d) = shape(&m);
            if d != dim {
                return Err(invalid(
                    py,
                    format!(
                        "{name} has shape ({n}, {d}), expected (n_tokens, {dim}) for this index"
                    ),
                ));
            }
            if n == 0 {
                return Err(invalid(
                    py,
                    format!("{name} has shape (0, {d}): a document needs at least one token"),
                ));
            }
            mats.push(m);
        }
        enum Data<'a> {
            F32(Cow<'a, [f32]>),
            F16(Cow<'a, [f16]>),
        }
        let datas: Vec<Data<'_>> = mats
            .iter()
            .map(|m| match m {
                FloatMatrix::F32(a) => Data::F32(contiguous2(a)),
                FloatMatrix::F16(a) => Data::F16(contiguous2(a)),
            })
            .collect();
        let docs: Vec<DocVectors<'_>> = datas
            .iter()
            .map(|d| match d {
                Data::F32(c) => DocVectors::F32(c),
                Data::F16(c) => DocVectors::F16(c),
            })
            .collect();
        let id_refs: Vec<&str> = ids.iter().map(|s| s.as_str()).collect();
        py.detach(|| self.inner.add(&id_refs, &docs, replace))
            .py_err(py)
    }

    fn delete(&self, py: Python<'_>, ids: &Bound<'_, PyAny>) -> PyResult<()> {
        let ids = extract_ids(ids, "ids")?;
        let id_refs: Vec<&str> = ids.iter().map(|s| s.as_str()).collect();
        py.detach(|| self.inner.delete(&id_refs)).py_err(py)
    }

    fn commit(&self, py: Python<'_>) -> PyResult<()> {
        py.detach(|| self.inner.commit()).py_err(py)
    }

    fn compact(&self, py: Python<'_>) -> PyResult<()> {
        py.detach(|| self.inner.compact()).py_err(py)
    }

    fn verify(&self, py: Python<'_>) -> PyResult<()> {
        py.detach(|| self.inner.verify()).py_err(py)
    }

    fn close(&self, py: Python<'_>) {
        py.detach(|| self.inner.close())
    }

    /// Returns (scores float32 (n_queries, k), ids list[str] of length n_queries * k).
    #[pyo3(signature = (queries, k=10, n_threads=None, subset=None))]
    fn search<'py>(
        &self,
        py: Python<'py>,
        queries: &Bound<'py, PyList>,
        k: i64,
        n_threads: Option<i64>,
        subset: Option<&Bound<'py, PyAny>>,
    ) -> PyResult<Bound<'py, PyTuple>> {
        if self.inner.is_closed() {
            return self.inner.len().map(|_| PyTuple::empty(py)).py_err(py);
        }
        if k < 1 {
            return Err(invalid(
                py,
                format!("k must be a positive integer, got {k}"),
            ));
        }
        let n_threads = match n_threads {
            None => None,
            Some(n) if n >= 1 => Some(n as usize),
            Some(n) => {
                return Err(invalid(
                    py,
                    format!("n_threads must be a positive integer or None, got {n}"),
                ))
            }
        };
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
        for m in &mats {
            qs.push(match m {
                FloatMatrix::F32(a) => contiguous2(a),
                FloatMatrix::F16(a) => {
                    let h = contiguous2(a);
                    let mut v = vec![0f32; h.len()];
                    h.convert_to_f32_slice(&mut v);
                    Cow::Owned(v)
                }
            });
        }
        let subset: Option<Vec<String>> = subset.map(|s| extract_ids(s, "subset")).transpose()?;
        let q_refs: Vec<&[f32]> = qs.iter().map(|c| c.as_ref()).collect();
        let s_refs: Option<Vec<&str>> = subset
            .as_ref()
            .map(|v| v.iter().map(|s| s.as_str()).collect());
        let k = k as usize;
        let res = py
            .detach(|| self.inner.search(&q_refs, k, n_threads, s_refs.as_deref()))
            .py_err(py)?;
        let scores = res
            .scores
            .into_pyarray(py)
            .reshape([res.n_queries, res.k])?;
        let ids = PyList::new(py, res.ids)?;
        PyTuple::new(py, [scores.into_any(), ids.into_any()])
    }

    /// The stored vectors of `id` as an (n, dim) array of the storage dtype.
    fn get<'py>(&self, py: Python<'py>, id: &Bound<'py, PyAny>) -> PyResult<Bound<'py, PyAny>> {
        let id: String = id
            .cast::<PyString>()
            .map_err(|_| invalid(py, format!("id must be str, got {}", describe(id))))?
            .to_str()?
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

    fn __len__(&self, py: Python<'_>) -> PyResult<usize> {
        self.inner.len().py_err(py)
    }

    fn contains(&self, py: Python<'_>, id: &Bound<'_, PyAny>) -> PyResult<bool> {
        match id.cast::<PyString>() {
            Ok(s) => {
                let s = s.to_str()?.to_owned();
                py.detach(|| self.inner.contains(&s)).py_err(py)
            }
            Err(_) => self.inner.len().map(|_| false).py_err(py),
        }
    }

    fn ids(&self, py: Python<'_>) -> PyResult<Vec<String>> {
        py.detach(|| self.inner.ids()).py_err(py)
    }

    #[getter]
    fn dim(&self) -> usize {
        self.inner.dim()
    }

    #[getter]
    fn dtype(&self) -> &'static str {
        self.inner.dtype().name()
    }

    #[getter]
    fn path(&self) -> PathBuf {
        self.inner.path().to_path_buf()
    }

    #[getter]
    fn num_tokens(&self, py: Python<'_>) -> PyResult<u64> {
        self.inner.num_tokens().py_err(py)
    }

    #[getter]
    fn generation(&self, py: Python<'_>) -> PyResult<u64> {
        self.inner.snapshot().map(|s| s.generation()).py_err(py)
    }

    #[getter]
    fn closed(&self) -> bool {
        self.inner.is_closed()
    }
}

pub fn register(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add_class::<PyIndex>()?;
    Ok(())
}
