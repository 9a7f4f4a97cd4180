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

mod bytes;
pub mod commit;
pub mod manifest;
pub mod segment;
pub mod snapshot;

use std::fs::{File, OpenOptions};
use std::io::Read;
use std::os::unix::fs::{FileTypeExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

use crate::error::{LatixError, Result};

pub(crate) use bytes::FileBytes;
// The atomic write and temporary-file naming are the file-format layer's (crate::format).
pub use crate::format::TMP_PREFIX;
pub(crate) use crate::format::{fsync_dir, tmp_name, write_atomic};
pub use commit::{CommitContext, CommitHook};
pub use manifest::{Manifest, SegmentEntry};
pub use segment::{Segment, SegmentWriter};
pub use snapshot::{SegmentView, Snapshot};

/// Name of the lock file (flock target of the writer).
pub const LOCK_FILE: &str = "LOCK";
/// Name of the file holding the name of the live manifest.
pub const CURRENT_FILE: &str = "CURRENT";
/// Prefix of manifest files; the suffix is the zero-padded generation.
pub const MANIFEST_PREFIX: &str = "MANIFEST-";

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

/// What a non-regular file is, for error messages.
fn file_kind(ft: std::fs::FileType) -> &'static str {
    if ft.is_dir() {
        "a directory"
    } else if ft.is_fifo() {
        "a FIFO"
    } else if ft.is_char_device() || ft.is_block_device() {
        "a device"
    } else if ft.is_socket() {
        "a socket"
    } else {
        "not a regular file"
    }
}

/// Opens `path` for reading, only if it is a regular file (after following symlinks): a FIFO, a
/// device or a directory where latix expects one of its files is `Corrupted`, never a blocking
/// open or an endless read. `O_NONBLOCK` makes opening a FIFO return at once; the type is then
/// checked on the opened descriptor (no race with a rename in between).
pub(crate) fn open_regular(path: &Path) -> Result<File> {
    open_regular_len(path).map(|(f, _)| f)
}

/// [`open_regular`] that also returns the file's size (from the same `fstat`).
pub(crate) fn open_regular_len(path: &Path) -> Result<(File, u64)> {
    let f = OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NONBLOCK | libc::O_CLOEXEC)
        .open(path)
        .map_err(|e| LatixError::io(path, e))?;
    let len = check_regular(&f, path)?.len();
    Ok((f, len))
}

/// `Corrupted` unless the open file `f` (named `path`) is a regular file.
pub(crate) fn check_regular(f: &File, path: &Path) -> Result<std::fs::Metadata> {
    let m = f.metadata().map_err(|e| LatixError::io(path, e))?;
    if !m.file_type().is_file() {
        return Err(LatixError::corrupted(
            path,
            format!(
                "is {} where latix expects a regular file",
                file_kind(m.file_type())
            ),
        ));
    }
    Ok(m)
}

/// Reads the whole regular file `path`, which must be at most `max_len` bytes (`what` names it
/// in errors): the size is checked before anything is allocated, and the buffer is reserved
/// fallibly.
pub(crate) fn read_bounded(path: &Path, max_len: u64, what: &str) -> Result<Vec<u8>> {
    let (f, len) = open_regular_len(path)?;
    if len > max_len {
        return Err(LatixError::corrupted(
            path,
            format!("{what} is {len} bytes, more than the {max_len} latix ever writes"),
        ));
    }
    let mut buf = crate::error::try_vec(len as usize, what)?;
    // One byte more than the size: a file that grew meanwhile is noticed, not read forever.
    f.take(max_len + 1)
        .read_to_end(&mut buf)
        .map_err(|e| LatixError::io(path, e))?;
    if buf.len() as u64 > max_len {
        return Err(LatixError::corrupted(
            path,
            format!("{what} is larger than the {max_len} bytes latix ever writes"),
        ));
    }
    Ok(buf)
}

/// `Corrupted` if the file at `path`, mapped with `mapped_len` bytes, now has another size: it was
/// truncated or rewritten from outside latix (which never modifies a file it wrote), and reading
/// the lost pages of the map would kill the process with SIGBUS. A file that is gone was unlinked
/// by a later commit: its map stays valid. A `stat` by name, so that no descriptor stays open
/// per mapped file. Racy by nature (the file may change right after): a best-effort guard.
pub(crate) fn check_mapped_size(path: &Path, mapped_len: u64) -> Result<()> {
    match std::fs::metadata(path) {
        Ok(m) if m.len() != mapped_len => Err(LatixError::corrupted(
            path,
            format!(
                "file size changed from {mapped_len} to {} bytes while mapped (truncated or \
                 rewritten from outside latix)",
                m.len()
            ),
        )),
        Ok(_) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(LatixError::io(path, e)),
    }
}

/// Rate limit of [`check_mapped_size`] on paths that run on every call: true at most once per
/// [`SIZE_CHECK_INTERVAL_NS`] per `last` (an atomic timestamp owned by a snapshot or state), so
/// the cost stays negligible whatever the number of files.
pub(crate) fn size_check_due(last: &std::sync::atomic::AtomicU64) -> bool {
    use std::sync::atomic::Ordering;
    static EPOCH: std::sync::OnceLock<std::time::Instant> = std::sync::OnceLock::new();
    let now = EPOCH
        .get_or_init(std::time::Instant::now)
        .elapsed()
        .as_nanos() as u64
        + 1;
    let prev = last.load(Ordering::Relaxed);
    if prev != 0 && now.saturating_sub(prev) < SIZE_CHECK_INTERVAL_NS {
        return false;
    }
    last.compare_exchange(prev, now, Ordering::Relaxed, Ordering::Relaxed)
        .is_ok()
}

/// Interval of the per-call size checks (10 ms).
pub const SIZE_CHECK_INTERVAL_NS: u64 = 10_000_000;

/// Temporary files of this process's live [`SegmentWriter`]s (a writer's staging file, a
/// compaction's merged segment): the cleanup of unreferenced files never removes them, whatever
/// path led there (a staging file deleted under its writer once lost every staged document).
fn live_tmp() -> &'static std::sync::Mutex<std::collections::HashSet<PathBuf>> {
    static LIVE: std::sync::OnceLock<std::sync::Mutex<std::collections::HashSet<PathBuf>>> =
        std::sync::OnceLock::new();
    LIVE.get_or_init(Default::default)
}

/// Registers (`true`) or unregisters a live temporary file (see [`is_live_tmp`]).
pub(crate) fn set_live_tmp(path: &Path, live: bool) {
    let mut g = live_tmp().lock().unwrap_or_else(|e| e.into_inner());
    if live {
        g.insert(path.to_path_buf());
    } else {
        g.remove(path);
    }
}

/// True if `path` is the temporary file of a live segment writer of this process.
pub(crate) fn is_live_tmp(path: &Path) -> bool {
    live_tmp()
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .contains(path)
}

/// Rounds `x` up to a multiple of 64 (section alignment), `None` on overflow.
pub(crate) fn align64(x: u64) -> Option<u64> {
    x.checked_add(63).map(|v| v & !63)
}
