//! Building a segment file one document at a time (see [`super`] for the format).

use std::fs::{File, OpenOptions};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

use half::f16;
use half::slice::HalfFloatSliceExt;

use super::*;
use crate::error::{LatixError, Result};
use crate::maxsim::DocVectors;
use crate::store::{align64, set_live_tmp, tmp_name, Dtype};

/// Checks values given for storage in `dtype` (`(rows, dim)` row-major, rows numbered from `row0`
/// in errors, `name` naming the matrix): finite, within [`crate::maxsim::MAX_ABS_VALUE`], and
/// within the float16 range for float16 storage.
pub fn check_storable(
    values: DocVectors<'_>,
    name: &str,
    dim: usize,
    dtype: Dtype,
    row0: usize,
) -> Result<()> {
    crate::maxsim::check_values_from(values, name, dim, row0)?;
    if let (DocVectors::F32(v), Dtype::F16) = (values, dtype) {
        // Hoisted: `to_f32` is a run-time dispatched call, once per value inside the closure.
        let most = f16::MAX.to_f32();
        if let Some(p) = v.iter().position(|x| x.abs() > most) {
            return Err(LatixError::invalid(format!(
                "{name} contains a value outside the float16 range ({}) at row {}, column {}",
                v[p],
                row0 + p / dim.max(1),
                p % dim.max(1)
            )));
        }
    }
    Ok(())
}

/// State of a [`SegmentWriter`] to roll back to.
#[derive(Clone, Debug)]
pub struct SegmentCheckpoint {
    n_docs: usize,
    pos: u64,
    crc: BlockCrc,
}

/// Builds a segment in a temporary file of the index directory, one document at a time, so a
/// batch of any size costs disk, not memory. [`SegmentWriter::finish`] writes the trailing
/// sections and the header and renames the file into place. Dropping an unfinished writer removes
/// its temporary file.
pub struct SegmentWriter {
    tmp_path: PathBuf,
    pub(super) file: Option<File>,
    dim: usize,
    dtype: Dtype,
    ids: Vec<String>,
    offsets: Vec<u64>,
    pub(super) pos: u64,
    crc: BlockCrc,
    /// Conversion buffers of `add_doc` (one piece of a document).
    buf32: Vec<f32>,
    buf16: Vec<f16>,
    /// Where [`SegmentWriter::finish`] renamed the file, until [`SegmentWriter::unpublish`].
    published: Option<PathBuf>,
    /// Writes a vector-free (version 2) segment: documents are added with
    /// [`SegmentWriter::add_doc_without_vectors`].
    no_vectors: bool,
}

impl SegmentWriter {
    /// Starts a new segment in a temporary file in `dir`.
    pub fn create(dir: &Path, dim: usize, dtype: Dtype) -> Result<Self> {
        let tmp_path = dir.join(tmp_name("segment"));
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create_new(true)
            .open(&tmp_path)
            .map_err(|e| LatixError::io(&tmp_path, e))?;
        set_live_tmp(&tmp_path, true);
        let mut w = SegmentWriter {
            tmp_path,
            file: Some(file),
            dim,
            dtype,
            ids: Vec::new(),
            offsets: vec![0],
            pos: HEADER_SIZE as u64,
            crc: BlockCrc::new(VECTOR_BLOCK_SIZE),
            buf32: Vec::new(),
            buf16: Vec::new(),
            published: None,
            no_vectors: false,
        };
        // Placeholder header, overwritten by finish(); a file left by a crash is recognisably bad.
        w.write_at(&[0u8; HEADER_SIZE], 0)?;
        Ok(w)
    }

    fn write_at(&mut self, bytes: &[u8], at: u64) -> Result<()> {
        match &self.file {
            Some(f) => f
                .write_all_at(bytes, at)
                .map_err(|e| LatixError::io(&self.tmp_path, e)),
            None => Err(LatixError::Closed("segment writer already finished".into())),
        }
    }

    /// Starts a vector-free segment (ids and token offsets only, see [`FLAG_NO_VECTORS`]): a
    /// compressed index that dropped the vectors keeps its documents' codes in side files.
    pub fn create_without_vectors(dir: &Path, dim: usize, dtype: Dtype) -> Result<Self> {
        let mut w = Self::create(dir, dim, dtype)?;
        w.no_vectors = true;
        Ok(w)
    }

    /// Appends one document of `n_tokens` tokens to a vector-free segment; returns its number.
    pub fn add_doc_without_vectors(&mut self, id: &str, n_tokens: u64) -> Result<u32> {
        if !self.no_vectors {
            return Err(LatixError::invalid(
                "add_doc_without_vectors needs a writer made by create_without_vectors",
            ));
        }
        if self.ids.len() >= (u32::MAX - 1) as usize {
            return Err(LatixError::invalid(
                "a segment holds at most 2^32 - 2 documents; commit first",
            ));
        }
        self.offsets.push(self.n_tokens() + n_tokens);
        self.ids.push(id.to_owned());
        Ok((self.ids.len() - 1) as u32)
    }

    /// False for a writer made by [`SegmentWriter::create_without_vectors`].
    pub fn has_vectors(&self) -> bool {
        !self.no_vectors
    }

    /// A point the writer can be rolled back to (see [`SegmentWriter::rollback`]).
    pub fn checkpoint(&self) -> SegmentCheckpoint {
        SegmentCheckpoint {
            n_docs: self.ids.len(),
            pos: self.pos,
            crc: self.crc.clone(),
        }
    }

    /// Forgets every document added after `cp` (used to make a failed multi-document add a no-op).
    pub fn rollback(&mut self, cp: SegmentCheckpoint) {
        if let Some(f) = &self.file {
            let _ = f.set_len(cp.pos);
        }
        self.ids.truncate(cp.n_docs);
        self.offsets.truncate(cp.n_docs + 1);
        self.pos = cp.pos;
        self.crc = cp.crc;
    }

    /// Number of documents added so far.
    pub fn n_docs(&self) -> usize {
        self.ids.len()
    }

    /// Number of token vectors added so far.
    pub fn n_tokens(&self) -> u64 {
        self.offsets.last().copied().unwrap_or(0)
    }

    /// The ids added so far, in document order.
    pub fn ids(&self) -> &[String] {
        &self.ids
    }

    /// Appends one document (`vectors` is row-major `(n, dim)`, converted to the storage dtype)
    /// and returns its document number. The caller validated the input (dim, finiteness). On an
    /// I/O error the writer is rolled back to its previous state.
    pub fn add_doc(&mut self, id: &str, vectors: DocVectors<'_>) -> Result<u32> {
        self.add_doc_impl(id, vectors, None)
    }

    /// [`SegmentWriter::add_doc`] for caller data: the values are checked (finite, within
    /// [`crate::maxsim::MAX_ABS_VALUE`], within the float16 range for float16 storage) on the copy
    /// that is converted and written, piece by piece, so what is stored is exactly what was
    /// checked even if the caller's buffer changes meanwhile (another thread writing to a numpy
    /// array during `add`). `name` names the matrix in errors. On error nothing is added.
    pub fn add_doc_checked(
        &mut self,
        id: &str,
        vectors: DocVectors<'_>,
        name: &str,
    ) -> Result<u32> {
        self.add_doc_impl(id, vectors, Some(name))
    }

    fn add_doc_impl(
        &mut self,
        id: &str,
        vectors: DocVectors<'_>,
        check: Option<&str>,
    ) -> Result<u32> {
        if self.no_vectors {
            return Err(LatixError::invalid(
                "this segment writer stores no vectors; use add_doc_without_vectors",
            ));
        }
        let n_values = vectors.len();
        if self.dim == 0 || !n_values.is_multiple_of(self.dim) {
            return Err(LatixError::invalid(
                "document vectors length is not a multiple of dim",
            ));
        }
        if self.ids.len() >= (u32::MAX - 1) as usize {
            return Err(LatixError::invalid(
                "a segment holds at most 2^32 - 2 documents; commit first",
            ));
        }
        let saved_crc = self.crc.clone();
        let at = self.pos;
        // Converted and written in pieces of whole rows: memory stays bounded whatever the
        // document's size.
        let rows = (WRITE_CHUNK_VALUES / self.dim).max(1);
        let n_rows = n_values / self.dim;
        let mut r0 = 0;
        let mut res = Ok(());
        while r0 < n_rows && res.is_ok() {
            let r1 = (r0 + rows).min(n_rows);
            res = self.write_rows(vectors.slice(r0 * self.dim, r1 * self.dim), r0, check);
            r0 = r1;
        }
        if let Err(e) = res {
            // Undo a partial write so the staged state stays exactly the previous one.
            if let Some(f) = &self.file {
                let _ = f.set_len(at);
            }
            self.crc = saved_crc;
            self.pos = at;
            return Err(e);
        }
        let n_tok = n_rows as u64;
        self.offsets.push(self.n_tokens() + n_tok);
        self.ids.push(id.to_owned());
        Ok((self.ids.len() - 1) as u32)
    }

    /// Copies rows (`row0`.. of the document) into the writer's buffers, checks the copy when
    /// asked, converts it to the storage dtype and appends it to the file.
    fn write_rows(&mut self, part: DocVectors<'_>, row0: usize, check: Option<&str>) -> Result<()> {
        let mut b32 = std::mem::take(&mut self.buf32);
        let mut b16 = std::mem::take(&mut self.buf16);
        b32.clear();
        b16.clear();
        let res = (|| {
            match part {
                DocVectors::F32(v) => b32.extend_from_slice(v),
                DocVectors::F16(v) => b16.extend_from_slice(v),
            }
            if let Some(name) = check {
                let copy = if b32.is_empty() {
                    DocVectors::F16(&b16)
                } else {
                    DocVectors::F32(&b32)
                };
                check_storable(copy, name, self.dim, self.dtype, row0)?;
            }
            match (part, self.dtype) {
                (DocVectors::F32(_), Dtype::F16) => {
                    b16.resize(b32.len(), f16::ZERO);
                    b16.convert_from_f32_slice(&b32);
                }
                (DocVectors::F16(_), Dtype::F32) => {
                    b32.resize(b16.len(), 0.0);
                    b16.convert_to_f32_slice(&mut b32);
                }
                _ => {}
            }
            let bytes: &[u8] = match self.dtype {
                Dtype::F16 => bytemuck::cast_slice(&b16),
                Dtype::F32 => bytemuck::cast_slice(&b32),
            };
            self.write_at(bytes, self.pos)?;
            self.crc.update(bytes);
            self.pos += bytes.len() as u64;
            Ok(())
        })();
        self.buf32 = b32;
        self.buf16 = b16;
        res
    }

    /// Writes the trailing sections and the header, fsyncs, and renames the file to `target`.
    /// Returns the header checksum (recorded in the manifest). The caller fsyncs the directory.
    /// On error the writer keeps its documents (the tail is cut off again), so a commit that
    /// failed (e.g. disk full) can be retried; after success, dropping the writer keeps the file
    /// unless [`SegmentWriter::unpublish`] takes it back.
    pub fn finish(&mut self, target: &Path) -> Result<u32> {
        self.finish_with(target, true)
    }

    /// [`SegmentWriter::finish`]; `durable = false` skips the fsync, for a segment that the same
    /// commit replaces before publishing (a compressed index re-writes it vector-free): no
    /// manifest ever references it, so it need not survive a crash, and its pages are dropped
    /// unwritten when it is removed.
    pub fn finish_with(&mut self, target: &Path, durable: bool) -> Result<u32> {
        if self.published.is_some() {
            return Err(LatixError::Closed("segment writer already finished".into()));
        }
        let res = self.finish_inner(target, durable);
        if res.is_err() {
            if let Some(f) = &self.file {
                let _ = f.set_len(self.pos);
            }
        } else {
            self.published = Some(target.to_path_buf());
            set_live_tmp(&self.tmp_path, false);
        }
        res
    }

    /// Moves a finished segment file back to its temporary name (the commit that was to publish
    /// it failed before switching `CURRENT`), ready for more documents or another `finish`.
    pub fn unpublish(&mut self) -> Result<()> {
        if let Some(target) = self.published.take() {
            if let Err(e) = std::fs::rename(&target, &self.tmp_path) {
                self.published = Some(target.clone());
                return Err(LatixError::io(target, e));
            }
            set_live_tmp(&self.tmp_path, true);
            if let Some(f) = &self.file {
                f.set_len(self.pos)
                    .map_err(|e| LatixError::io(&self.tmp_path, e))?;
            }
        }
        Ok(())
    }

    fn finish_inner(&mut self, target: &Path, durable: bool) -> Result<u32> {
        let n_docs = self.ids.len() as u64;
        let n_tokens = self.n_tokens();
        let mut sections = [Section::default(); N_SECTIONS];
        sections[SEC_VECTORS] = Section {
            offset: HEADER_SIZE as u64,
            len: self.pos - HEADER_SIZE as u64,
            crc: 0,
        };

        let mut tail: Vec<u8> = Vec::new();
        let tail_start =
            align64(self.pos).ok_or_else(|| LatixError::invalid("segment too large"))?;
        let push = |tail: &mut Vec<u8>, bytes: &[u8]| -> Section {
            let rel = (tail.len() as u64 + 63) & !63;
            tail.resize(rel as usize, 0);
            tail.extend_from_slice(bytes);
            Section {
                offset: tail_start + rel,
                len: bytes.len() as u64,
                crc: crc32c::crc32c(bytes),
            }
        };
        sections[SEC_OFFSETS] = push(&mut tail, bytemuck::cast_slice(&self.offsets));
        let mut id_offsets: Vec<u64> = Vec::with_capacity(self.ids.len() + 1);
        let mut id_bytes: Vec<u8> = Vec::new();
        id_offsets.push(0);
        for id in &self.ids {
            id_bytes.extend_from_slice(id.as_bytes());
            id_offsets.push(id_bytes.len() as u64);
        }
        sections[SEC_ID_OFFSETS] = push(&mut tail, bytemuck::cast_slice(&id_offsets));
        sections[SEC_ID_BYTES] = push(&mut tail, &id_bytes);
        let mut sorted: Vec<u32> = (0..n_docs as u32).collect();
        // Stable sort: equal ids (a replaced staged doc and its replacement) stay in doc order.
        sorted.sort_by(|&a, &b| {
            self.ids[a as usize]
                .as_bytes()
                .cmp(self.ids[b as usize].as_bytes())
        });
        sections[SEC_SORTED] = push(&mut tail, bytemuck::cast_slice(&sorted));
        let crcs = self.crc.clone().finish();
        sections[SEC_BLOCK_CRCS] = push(&mut tail, bytemuck::cast_slice(&crcs));

        let header = encode_header(
            self.no_vectors,
            self.dtype,
            self.dim as u32,
            n_docs,
            n_tokens,
            VECTOR_BLOCK_SIZE,
            &sections,
        );
        let header_crc = le_u32(&header, HEADER_CRC_AT);
        if tail_start > self.pos {
            let pad = vec![0u8; (tail_start - self.pos) as usize];
            self.write_at(&pad, self.pos)?;
        }
        self.write_at(&tail, tail_start)?;
        self.write_at(&header, 0)?;
        let file = self
            .file
            .as_ref()
            .ok_or_else(|| LatixError::Closed("segment writer already finished".into()))?;
        if durable {
            file.sync_all()
                .map_err(|e| LatixError::io(&self.tmp_path, e))?;
        }
        std::fs::rename(&self.tmp_path, target).map_err(|e| LatixError::io(target, e))?;
        Ok(header_crc)
    }
}

impl SegmentWriter {
    /// Closes the writer's file without removing it: a process that inherited the writer through
    /// `fork()` must leave the parent's staging file alone.
    pub fn abandon(mut self) {
        // (The registry of live temp files is left alone: this process never writes the index,
        // and a thread of the parent may have held its mutex at the fork.)
        drop(self.file.take());
    }

    /// Path of the temporary file this writer fills.
    pub fn tmp_path(&self) -> &Path {
        &self.tmp_path
    }
}

impl Drop for SegmentWriter {
    fn drop(&mut self) {
        if self.published.is_none() && self.file.take().is_some() {
            let _ = std::fs::remove_file(&self.tmp_path);
            set_live_tmp(&self.tmp_path, false);
        }
    }
}
