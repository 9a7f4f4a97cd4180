//! The one mapping from the core's `LatixError` to latix's Python exception hierarchy.
//! The classes themselves are defined in Python (`latix/errors.py`) so that they are documented,
//! typed and picklable like any Python class; this file only looks them up (once) and raises them.

use latix_core::LatixError;
use pyo3::prelude::*;
use pyo3::sync::PyOnceLock;
use pyo3::types::PyType;

const CLASS_NAMES: [&str; 9] = [
    "InvalidArgumentError",
    "NotFoundError",
    "AlreadyExistsError",
    "CorruptedIndexError",
    "IndexLockedError",
    "IndexClosedError",
    "UnsupportedVersionError",
    "LatixIOError",
    "LatixMemoryError",
];

static CLASSES: PyOnceLock<Vec<Py<PyType>>> = PyOnceLock::new();

fn classes(py: Python<'_>) -> PyResult<&Vec<Py<PyType>>> {
    CLASSES.get_or_try_init(py, || {
        let module = py.import("latix.errors")?;
        CLASS_NAMES
            .iter()
            .map(|name| Ok(module.getattr(*name)?.cast_into::<PyType>()?.unbind()))
            .collect()
    })
}

/// Converts a core error into the matching Python exception.
pub fn to_py(py: Python<'_>, e: LatixError) -> PyErr {
    let idx = match &e {
        LatixError::InvalidArgument(_) => 0,
        LatixError::NotFound(_) => 1,
        LatixError::AlreadyExists(_) => 2,
        LatixError::Corrupted { .. } => 3,
        LatixError::Locked(_) => 4,
        LatixError::Closed(_) => 5,
        LatixError::UnsupportedVersion { .. } => 6,
        LatixError::Io { .. } => 7,
        LatixError::OutOfMemory(_) => 8,
    };
    match classes(py) {
        Ok(cls) => PyErr::from_type(cls[idx].bind(py).clone(), e.to_string()),
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
