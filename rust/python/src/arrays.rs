//! numpy <-> Rust conversions shared by the bindings: argument checks that name the argument and
//! both shapes, and contiguous views. An array that is not C-contiguous and aligned (a strided
//! or broadcast view, Fortran order, a buffer at an odd address) is copied once by numpy into a
//! fresh C-ordered array, never rejected; a copy that cannot fit in memory is `LatixMemoryError`
//! (refused up front when it exceeds the machine's memory, which a broadcast view's can by any
//! factor), never an abort.

use std::borrow::Cow;

use half::f16;
use numpy::{
    PyArrayDescrMethods, PyReadonlyArray1, PyReadonlyArray2, PyUntypedArray, PyUntypedArrayMethods,
};
use pyo3::prelude::*;

use latix_core::maxsim::DocVectors;

use crate::errors::{invalid, to_py, IntoPyResult};
use latix_core::error::{human_bytes, physical_memory};
use latix_core::LatixError;

/// A 2-D float array in one of the storage precisions latix accepts.
pub enum FloatMatrix<'py> {
    F32(PyReadonlyArray2<'py, f32>),
    F16(PyReadonlyArray2<'py, f16>),
}

/// Describes an object for an error message: numpy arrays by dtype and shape.
pub fn describe(obj: &Bound<'_, PyAny>) -> String {
    if let Ok(a) = obj.cast::<PyUntypedArray>() {
        format!("array of dtype {} and shape {:?}", a.dtype(), a.shape())
    } else {
        format!(
            "object of type {}",
            obj.get_type()
                .name()
                .map(|s| s.to_string())
                .unwrap_or_default()
        )
    }
}

/// `obj` itself if it is not a numpy array or is C-contiguous and aligned, else a C-ordered copy
/// made by numpy (`name` names the argument in errors). A copy larger than the machine's
/// physical memory is refused before it is attempted, and numpy's `MemoryError` becomes
/// `LatixMemoryError`: a huge broadcast view (`np.broadcast_to(row, (2**31, 16))`) costs nothing
/// to make but 128 GiB to copy.
pub fn c_contiguous<'py>(obj: &Bound<'py, PyAny>, name: &str) -> PyResult<Bound<'py, PyAny>> {
    let Ok(a) = obj.cast::<PyUntypedArray>() else {
        return Ok(obj.clone());
    };
    if a.is_c_contiguous() && a.is_aligned() {
        return Ok(obj.clone());
    }
    let py = obj.py();
    let bytes = a.len() as u128 * a.dtype().itemsize() as u128;
    let oom = || {
        to_py(
            py,
            LatixError::OutOfMemory(format!(
                "{name} (an array of shape {:?} that is not C-contiguous and aligned, e.g. a \
                 broadcast or strided view) must be copied, and its copy needs {} ({bytes} \
                 bytes){}",
                a.shape(),
                human_bytes(bytes),
                physical_memory()
                    .map(|m| format!(", this machine has {}", human_bytes(m)))
                    .unwrap_or_default()
            )),
        )
    };
    if physical_memory().is_some_and(|m| bytes > m) {
        return Err(oom());
    }
    match obj.call_method1("copy", ("C",)) {
        Ok(c) => Ok(c),
        Err(e) if e.is_instance_of::<pyo3::exceptions::PyMemoryError>(py) => Err(oom()),
        Err(e) => Err(e),
    }
}

/// Extracts a 2-D float32 array, or raises `InvalidArgumentError` naming `name` and `expected`.
pub fn f32_matrix<'py>(
    obj: &Bound<'py, PyAny>,
    name: &str,
    expected: &str,
) -> PyResult<PyReadonlyArray2<'py, f32>> {
    let obj = &c_contiguous(obj, name)?;
    obj.extract::<PyReadonlyArray2<'py, f32>>().map_err(|_| {
        invalid(
            obj.py(),
            format!(
                "{name} must be a float32 array of shape {expected}, got {}",
                describe(obj)
            ),
        )
    })
}

/// Extracts a 2-D float32 or float16 array (C-contiguous: see [`c_contiguous`]).
pub fn float_matrix<'py>(
    obj: &Bound<'py, PyAny>,
    name: &str,
    expected: &str,
) -> PyResult<FloatMatrix<'py>> {
    let obj = &c_contiguous(obj, name)?;
    if let Ok(a) = obj.extract::<PyReadonlyArray2<'py, f32>>() {
        return Ok(FloatMatrix::F32(a));
    }
    if let Ok(a) = obj.extract::<PyReadonlyArray2<'py, f16>>() {
        return Ok(FloatMatrix::F16(a));
    }
    Err(invalid(
        obj.py(),
        format!(
            "{name} must be a float32 or float16 array of shape {expected}, got {}",
            describe(obj)
        ),
    ))
}

/// Extracts a 1-D int64 array (C-contiguous: see [`c_contiguous`]).
pub fn i64_vector<'py>(
    obj: &Bound<'py, PyAny>,
    name: &str,
    expected: &str,
) -> PyResult<PyReadonlyArray1<'py, i64>> {
    let obj = &c_contiguous(obj, name)?;
    obj.extract::<PyReadonlyArray1<'py, i64>>().map_err(|_| {
        invalid(
            obj.py(),
            format!(
                "{name} must be an int64 array of shape {expected}, got {}",
                describe(obj)
            ),
        )
    })
}

/// A row-major contiguous slice of a 2-D array; copies only when the array is not C-contiguous
/// (never, for arrays from the extractors above, which copy such arrays with numpy first).
pub fn contiguous2<'a, T: numpy::Element + Clone>(a: &'a PyReadonlyArray2<'_, T>) -> Cow<'a, [T]> {
    // `as_slice` also accepts Fortran-ordered arrays (in column-major order): borrow only C order.
    match a.as_slice() {
        Ok(s) if a.is_c_contiguous() => Cow::Borrowed(s),
        _ => Cow::Owned(a.as_array().iter().cloned().collect()),
    }
}

/// A contiguous slice of a 1-D array; copies only when the array is strided.
pub fn contiguous1<'a, T: numpy::Element + Clone>(a: &'a PyReadonlyArray1<'_, T>) -> Cow<'a, [T]> {
    match a.as_slice() {
        Ok(s) => Cow::Borrowed(s),
        Err(_) => Cow::Owned(a.as_array().iter().cloned().collect()),
    }
}

/// Rejects NaN and infinities, naming the argument and the first bad position (the core's
/// vectorised check).
pub fn check_finite_f32(py: Python<'_>, data: &[f32], name: &str, dim: usize) -> PyResult<()> {
    latix_core::maxsim::check_finite(DocVectors::F32(data), name, dim).py_err(py)
}

/// Rejects NaN and infinities in float16 data.
pub fn check_finite_f16(py: Python<'_>, data: &[f16], name: &str, dim: usize) -> PyResult<()> {
    latix_core::maxsim::check_finite(DocVectors::F16(data), name, dim).py_err(py)
}
