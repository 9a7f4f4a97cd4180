//! The on-disk token-vector store: an index is a directory of immutable, memory-mapped segment
//! files plus a small versioned manifest naming the live ones (an LSM-style layout in the manner
//! of Lucene/Lance: append-only segments, tombstone deletes, atomic manifest switch).
//!
//! Directory at rest: `LOCK` (flock target of the single writer), `CURRENT` (name of the live
//! manifest), `MANIFEST-<generation>`, segment files `seg-<id>.lxs` and optional named side files
//! registered in the manifest. Every file is written to a `tmp-*` file in the same directory,
//! fsynced, renamed into place, and the directory fsynced; a file that readers may have mapped is
//! never modified or truncated, only unlinked once no manifest references it.

// Files are little-endian and mapped without byte swapping.
#[cfg(target_endian = "big")]
compile_error!("latix index files are little-endian; big-endian targets are not supported");

pub mod manifest;
pub mod segment;
pub mod snapshot;

use std::fs::File;
use std::io::Write;
use std::path::{Path, PathBuf};

use crate::error::{LatixError, Result};

pub use manifest::{Manifest, SegmentEntry};
pub use segment::{Segment, SegmentWriter};
pub use snapshot::{SegmentView, Snapshot};

/// Name of the lock file (flock target of the writer).
pub const LOCK_FILE: &str = "LOCK";
/// Name of the file holding the name of the live manifest.
pub const CURRENT_FILE: &str = "CURRENT";
/// Prefix of manifest files; the suffix is the zero-padded generation.
pub const MANIFEST_PREFIX: &str = "MANIFEST-";
/// Prefix of temporary files (removed by the next writer if a process died mid-write).
pub const TMP_PREFIX: &str = "tmp-";

/// Storage precision of the token vectors of an index.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Dtype {
    /// IEEE half precision, 2 bytes per value.
    F16,
    /// IEEE single precision, 4 bytes per value.
    F32,
}

impl Dtype {
    /// Bytes per stored value.
    pub fn size(self) -> usize {
        match self {
            Dtype::F16 => 2,
            Dtype::F32 => 4,
        }
    }

    /// The numpy-style name: `"float16"` or `"float32"`.
    pub fn name(self) -> &'static str {
        match self {
            Dtype::F16 => "float16",
            Dtype::F32 => "float32",
        }
    }

    /// Parses `"float16"`/`"f16"` or `"float32"`/`"f32"`.
    pub fn parse(s: &str) -> Result<Dtype> {
        match s {
            "float16" | "f16" => Ok(Dtype::F16),
            "float32" | "f32" => Ok(Dtype::F32),
            _ => Err(LatixError::invalid(format!(
                "dtype must be \"float16\" or \"float32\", got {s:?}"
            ))),
        }
    }

    /// The code stored in file headers.
    pub(crate) fn code(self) -> u32 {
        match self {
            Dtype::F16 => 1,
            Dtype::F32 => 2,
        }
    }

    pub(crate) fn from_code(c: u32) -> Option<Dtype> {
        match c {
            1 => Some(Dtype::F16),
            2 => Some(Dtype::F32),
            _ => None,
        }
    }
}

/// A unique name for a temporary file in an index directory.
pub(crate) fn tmp_name(what: &str) -> String {
    use std::sync::atomic::{AtomicU64, Ordering};
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or(0);
    format!(
        "{TMP_PREFIX}{what}-{}-{nanos}-{}",
        std::process::id(),
        COUNTER.fetch_add(1, Ordering::Relaxed)
    )
}

/// fsyncs a directory so that renames and unlinks in it are durable.
pub(crate) fn fsync_dir(dir: &Path) -> Result<()> {
    let d = File::open(dir).map_err(|e| LatixError::io(dir, e))?;
    d.sync_all().map_err(|e| LatixError::io(dir, e))
}

/// Writes `bytes` to `dir/name` atomically: temp file, fsync, rename, fsync directory.
pub(crate) fn write_atomic(dir: &Path, name: &str, bytes: &[u8]) -> Result<PathBuf> {
    let tmp = dir.join(tmp_name(name));
    let target = dir.join(name);
    let res = (|| {
        let mut f = File::create(&tmp).map_err(|e| LatixError::io(&tmp, e))?;
        f.write_all(bytes).map_err(|e| LatixError::io(&tmp, e))?;
        f.sync_all().map_err(|e| LatixError::io(&tmp, e))?;
        drop(f);
        std::fs::rename(&tmp, &target).map_err(|e| LatixError::io(&target, e))?;
        fsync_dir(dir)
    })();
    if res.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    res.map(|_| target)
}

/// Rounds `x` up to a multiple of 64 (section alignment), `None` on overflow.
pub(crate) fn align64(x: u64) -> Option<u64> {
    x.checked_add(63).map(|v| v & !63)
}
