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
        /// The file (or directory) the operation was on.
        path: PathBuf,
        /// The operating system's error.
        #[source]
        source: std::io::Error,
    },

    /// A file of the index is damaged: bad magic, checksum mismatch, truncated, inconsistent.
    #[error("{path}: index file is corrupted: {detail}")]
    Corrupted {
        /// The damaged file.
        path: PathBuf,
        /// What is wrong with it.
        detail: String,
    },

    /// Another writer holds the index's write lock.
    #[error("{0}")]
    Locked(String),

    /// The index was closed (or the handle is otherwise unusable).
    #[error("{0}")]
    Closed(String),

    /// A file was written by a newer (or unknown) version of latix.
    #[error("{path}: {detail}")]
    UnsupportedVersion {
        /// The file.
        path: PathBuf,
        /// Which version it has and which ones this latix reads.
        detail: String,
    },

    /// Memory for an operation could not be allocated (the message says what and how much).
    /// Returned instead of aborting the process: nothing was changed.
    #[error("{0}")]
    OutOfMemory(String),
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

/// Bytes as a short human-readable figure ("1.5 GiB").
pub fn human_bytes(n: u128) -> String {
    let units = ["bytes", "KiB", "MiB", "GiB", "TiB", "PiB", "EiB"];
    let mut v = n as f64;
    let mut u = 0;
    while v >= 1024.0 && u + 1 < units.len() {
        v /= 1024.0;
        u += 1;
    }
    if u == 0 {
        format!("{n} bytes")
    } else {
        format!("{v:.1} {}", units[u])
    }
}

/// A vector of `n` elements built by `fill` (which must push exactly what it wants), with its
/// capacity reserved fallibly: an allocation that cannot succeed is [`LatixError::OutOfMemory`]
/// naming `what`, never an abort. For every allocation whose size a caller controls.
pub fn try_vec<T>(n: usize, what: &str) -> Result<Vec<T>> {
    let mut v = Vec::new();
    v.try_reserve_exact(n).map_err(|_| {
        let bytes = (n as u128) * (std::mem::size_of::<T>() as u128);
        LatixError::OutOfMemory(format!(
            "cannot allocate {} for {what} ({n} elements)",
            human_bytes(bytes)
        ))
    })?;
    Ok(v)
}

/// Bytes of physical memory of this machine (`None` if unknown): a copy larger than this cannot
/// succeed, so it is refused before it is attempted.
pub fn physical_memory() -> Option<u128> {
    // SAFETY: sysconf has no preconditions; a negative result means "unknown".
    let (pages, size) = unsafe {
        (
            libc::sysconf(libc::_SC_PHYS_PAGES),
            libc::sysconf(libc::_SC_PAGESIZE),
        )
    };
    (pages > 0 && size > 0).then(|| pages as u128 * size as u128)
}

/// [`try_vec`] filled with `n` copies of `value`.
pub fn try_filled<T: Clone>(n: usize, value: T, what: &str) -> Result<Vec<T>> {
    let mut v = try_vec(n, what)?;
    v.resize(n, value);
    Ok(v)
}

/// Result alias used throughout the core.
pub type Result<T, E = LatixError> = std::result::Result<T, E>;
