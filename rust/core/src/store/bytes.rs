//! The bytes of an immutable side file (inverted lists, fidelity refinement data): memory-mapped
//! from a regular file, or an 8-byte-aligned copy held in memory (files built by a commit before
//! they are written, and the `from_bytes` parsers of fuzzing and damaged-file tests). One pair of
//! constructors for every such format, so each opens and copies its files the same way.

use std::path::Path;

use crate::error::{LatixError, Result};

/// Byte storage of a side file: built in memory (8-byte aligned) or memory-mapped.
pub(crate) enum FileBytes {
    /// `len` bytes at the start of an 8-byte-aligned buffer.
    Owned(Vec<u64>, usize),
    /// A read-only map of the whole file.
    Mapped(memmap2::Mmap),
}

impl FileBytes {
    /// An aligned copy of `data` (parsers cast sections to `u32` / `u64` / `f32` slices).
    pub(crate) fn copied(data: &[u8]) -> FileBytes {
        let mut store = vec![0u64; data.len().div_ceil(8)];
        bytemuck::cast_slice_mut::<u64, u8>(&mut store)[..data.len()].copy_from_slice(data);
        FileBytes::Owned(store, data.len())
    }

    /// Maps the regular file at `path` (symlinks and special files refused by
    /// [`super::open_regular`]).
    pub(crate) fn map(path: &Path) -> Result<FileBytes> {
        let f = super::open_regular(path)?;
        // SAFETY: side files are immutable once renamed into place; latix never writes them again.
        let map = unsafe { memmap2::Mmap::map(&f) }.map_err(|e| LatixError::io(path, e))?;
        Ok(FileBytes::Mapped(map))
    }

    /// The bytes.
    #[inline]
    pub(crate) fn as_slice(&self) -> &[u8] {
        match self {
            FileBytes::Owned(v, len) => &bytemuck::cast_slice::<u64, u8>(v)[..*len],
            FileBytes::Mapped(m) => m,
        }
    }

    /// Drops the mapped pages from this process's resident set (`MADV_DONTNEED`; a later read
    /// faults them in again from the page cache or the file). Nothing for bytes held in memory.
    /// Bounds the memory of a pass over files larger than memory (a codes-domain merge).
    pub(crate) fn release(&self) {
        if let FileBytes::Mapped(m) = self {
            // SAFETY: the map is a read-only shared map of an immutable file: dropping its pages
            // loses nothing (they are re-read from the file), unlike a private writable map.
            let _ = unsafe { m.unchecked_advise(memmap2::UncheckedAdvice::DontNeed) };
        }
    }

    /// `Corrupted` (naming `path`) if a mapped file no longer has its mapped size: truncated or
    /// rewritten from outside latix, so that reading it would raise SIGBUS (best effort).
    pub(crate) fn check_size(&self, path: &Path) -> Result<()> {
        match self {
            FileBytes::Mapped(m) => super::check_mapped_size(path, m.len() as u64),
            FileBytes::Owned(..) => Ok(()),
        }
    }
}
