//! numpy <-> Rust conversions shared by the bindings: argument checks that name the argument and
//! both shapes, and contiguous views (a non-contiguous array is copied once, never rejected).

use std::borrow::Cow;

use half::f16;
use numpy::{PyReadonlyArray1, PyReadonlyArray2, PyUntypedArray, PyUntypedArrayMethods};
use pyo3::prelude::*;

use latix_core::maxsim::DocVectors;

use crate::errors::{invalid, IntoPyResult};

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

/// Extracts a 2-D float32 array, or raises `InvalidArgumentError` naming `name` and `expected`.
pub fn f32_matrix<'py>(
    obj: &Bound<'py, PyAny>,
    name: &str,
    expected: &str,
) -> PyResult<PyReadonlyArray2<'py, f32>> {
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

/// Extracts a 2-D float32 or float16 array.
pub fn float_matrix<'py>(
    obj: &Bound<'py, PyAny>,
    name: &str,
    expected: &str,
) -> PyResult<FloatMatrix<'py>> {
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

/// Extracts a 1-D int64 array.
pub fn i64_vector<'py>(
    obj: &Bound<'py, PyAny>,
    name: &str,
    expected: &str,
) -> PyResult<PyReadonlyArray1<'py, i64>> {
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

/// A row-major contiguous slice of a 2-D array; copies only when the array is not C-contiguous.
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
