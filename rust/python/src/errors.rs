//! The one mapping from the core's `LatixError` to latix's Python exception hierarchy.
//! The classes themselves are defined in Python (`latix/errors.py`) so that they are documented,
//! typed and picklable like any Python class; this file only looks them up (once) and raises them.

use latix_core::LatixError;
use pyo3::prelude::*;
use pyo3::sync::PyOnceLock;
use pyo3::types::{PyModule, PyType};

/// The Python class (in `latix.errors`) raised for a core error: the one mapping, kept next to
/// the core's variants so that a new variant fails to compile here until it has a class.
fn class_name(e: &LatixError) -> &'static str {
    match e {
        LatixError::InvalidArgument(_) => "InvalidArgumentError",
        LatixError::NotFound(_) => "NotFoundError",
        LatixError::AlreadyExists(_) => "AlreadyExistsError",
        LatixError::Corrupted { .. } => "CorruptedIndexError",
        LatixError::Locked(_) => "IndexLockedError",
        LatixError::Closed(_) => "IndexClosedError",
        LatixError::UnsupportedVersion { .. } => "UnsupportedVersionError",
        LatixError::Io { .. } => "LatixIOError",
        LatixError::OutOfMemory(_) => "LatixMemoryError",
    }
}

/// `latix.errors`, imported once.
static ERRORS: PyOnceLock<Py<PyModule>> = PyOnceLock::new();

/// Converts a core error into the matching Python exception.
pub fn to_py(py: Python<'_>, e: LatixError) -> PyErr {
    let class = ERRORS
        .get_or_try_init(py, || Ok::<_, PyErr>(py.import("latix.errors")?.unbind()))
        .and_then(|m| Ok(m.bind(py).getattr(class_name(&e))?.cast_into::<PyType>()?));
    match class {
        Ok(cls) => PyErr::from_type(cls, e.to_string()),
        // Only reachable if latix.errors cannot be imported: still raise, never lose the message.
        Err(import_error) => import_error,
    }
}

/// Extension trait: `core_result.py_err(py)?` in binding code.
pub trait IntoPyResult<T> {
    fn py_err(self, py: Python<'_>) -> PyResult<T>;
}

impl<T> IntoPyResult<T> for latix_core::Result<T> {
    fn py_err(self, py: Python<'_>) -> PyResult<T> {
        self.map_err(|e| to_py(py, e))
    }
}

/// An `InvalidArgumentError` raised from binding-side validation.
pub fn invalid(py: Python<'_>, msg: impl Into<String>) -> PyErr {
    to_py(py, LatixError::invalid(msg))
}
