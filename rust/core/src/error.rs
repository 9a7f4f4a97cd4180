//! The one error type of the core. The Python binding maps each variant to a
//! `latix.LatixError` subclass, so variants are chosen by what a caller can do about them.

use std::path::PathBuf;

/// Every failure the core can report.
#[derive(Debug, thiserror::Error)]
pub enum LatixError {
    /// A caller passed an argument that can never work (wrong shape, NaN, bad parameter).
    /// The message names the argument and what was expected.
    #[error("{0}")]
    InvalidArgument(String),

    /// An id that the operation needs is not in the index.
    #[error("{0}")]
    NotFound(String),

    /// An id that the operation would create already exists.
    #[error("{0}")]
    AlreadyExists(String),

    /// An operating-system I/O failure on a file of the index.
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },

    /// A file of the index is damaged: bad magic, checksum mismatch, truncated, inconsistent.
    #[error("{path}: index file is corrupted: {detail}")]
    Corrupted { path: PathBuf, detail: String },

    /// Another writer holds the index's write lock.
    #[error("{0}")]
    Locked(String),

    /// The index was closed (or the handle is otherwise unusable).
    #[error("{0}")]
    Closed(String),

    /// A file was written by a newer (or unknown) version of latix.
    #[error("{path}: {detail}")]
    UnsupportedVersion { path: PathBuf, detail: String },
}

impl LatixError {
    /// Shorthand for [`LatixError::InvalidArgument`].
    pub fn invalid(msg: impl Into<String>) -> Self {
        LatixError::InvalidArgument(msg.into())
    }

    /// Wraps an I/O error with the path it happened on.
    pub fn io(path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        LatixError::Io {
            path: path.into(),
            source,
        }
    }

    /// Shorthand for [`LatixError::Corrupted`].
    pub fn corrupted(path: impl Into<PathBuf>, detail: impl Into<String>) -> Self {
        LatixError::Corrupted {
            path: path.into(),
            detail: detail.into(),
        }
    }
}

/// Result alias used throughout the core.
pub type Result<T, E = LatixError> = std::result::Result<T, E>;
