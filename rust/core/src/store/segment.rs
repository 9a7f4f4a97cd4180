//! Segment files: one immutable file per commit holding documents' token vectors (CSR layout:
//! a flat `(n_tokens, dim)` array plus `n_docs + 1` token offsets), their external string ids and
//! a sorted permutation of the ids for binary-search lookup straight on the map.
//!
//! Layout (all integers little-endian, every section 64-byte aligned):
//! ```text
//! 0    magic "LATIXSEG", format version u32, dtype u32, dim u32, flags u32,
//!      n_docs u64, n_tokens u64, vector checksum block size u64,
//! 48   6 section descriptors (offset u64, length u64, crc32c u32, reserved u32):
//!      vectors, offsets, id offsets, id bytes, sorted ids, vector block checksums
//! 192  crc32c of bytes 0..192; zero padding to 256
//! 256  vectors section, then the others in descriptor order
//! ```
//! The vectors section carries no whole-section checksum: it is covered by one crc32c per
//! `block_size` bytes (the last section), so a verifier can check it lazily, block by block,
//! without reading gigabytes at open. All other sections are small and verified at open.
//! Every read of vector rows through [`Segment::rows_checked`] verifies the blocks it touches the
//! first time they are touched (a bitmap of verified blocks, atomics, so concurrent searches share
//! the work and pay one bit test per block afterwards): damaged vectors surface as `Corrupted`,
//! never as silently wrong scores.
//!
//! Version 2 adds one flag, [`FLAG_NO_VECTORS`]: a *vector-free* segment (a compressed index that
//! keeps only codes) has empty vectors and block-checksum sections and holds ids and offsets only.
//! Version-1 files (flags 0) are still read; vector-bearing segments are still written as version 1.

use std::fs::{File, OpenOptions};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

use half::f16;
use half::slice::HalfFloatSliceExt;
use memmap2::Mmap;

use crate::error::{LatixError, Result};
use crate::maxsim::DocVectors;
use crate::store::{align64, check_mapped_size, open_regular, set_live_tmp, tmp_name, Dtype};

/// Magic bytes at the start of every segment file.
pub const SEGMENT_MAGIC: &[u8; 8] = b"LATIXSEG";
/// Format version of segments that store vectors (also the oldest version read).
pub const SEGMENT_VERSION: u32 = 1;
/// Format version of vector-free segments (flag [`FLAG_NO_VECTORS`] set, no vector data).
pub const SEGMENT_VERSION_NO_VECTORS: u32 = 2;
/// Header flag: the segment stores no vector data (ids and token offsets only).
pub const FLAG_NO_VECTORS: u32 = 1;
/// Size of the fixed header; the vectors section starts here.
pub const HEADER_SIZE: usize = 256;
/// Bytes of vector data covered by one block checksum.
pub const VECTOR_BLOCK_SIZE: u64 = 1 << 20;
/// Values a [`SegmentWriter`] converts and writes at a time (256 KiB of f32).
const WRITE_CHUNK_VALUES: usize = 1 << 16;

const N_SECTIONS: usize = 6;
const SEC_VECTORS: usize = 0;
const SEC_OFFSETS: usize = 1;
const SEC_ID_OFFSETS: usize = 2;
const SEC_ID_BYTES: usize = 3;
const SEC_SORTED: usize = 4;
const SEC_BLOCK_CRCS: usize = 5;
const SECTION_NAMES: [&str; N_SECTIONS] = [
    "vectors",
    "offsets",
    "id offsets",
    "id bytes",
    "sorted ids",
    "block checksums",
];
const HEADER_CRC_AT: usize = 48 + N_SECTIONS * 24;

#[derive(Clone, Copy, Debug, Default)]
struct Section {
    offset: u64,
    len: u64,
    crc: u32,
}

/// Running crc32c over fixed-size blocks of a byte stream.
#[derive(Clone, Debug)]
struct BlockCrc {
    block: u64,
    fill: u64,
    cur: u32,
    done: Vec<u32>,
}

impl BlockCrc {
    fn new(block: u64) -> Self {
        BlockCrc {
            block,
            fill: 0,
            cur: 0,
            done: Vec::new(),
        }
    }

    fn update(&mut self, mut bytes: &[u8]) {
        while !bytes.is_empty() {
            let take = ((self.block - self.fill) as usize).min(bytes.len());
            self.cur = crc32c::crc32c_append(self.cur, &bytes[..take]);
            self.fill += take as u64;
            bytes = &bytes[take..];
            if self.fill == self.block {
                self.done.push(self.cur);
                self.cur = 0;
                self.fill = 0;
            }
        }
    }

    fn finish(mut self) -> Vec<u32> {
        if self.fill > 0 {
            self.done.push(self.cur);
        }
        self.done
    }
}

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
        if let Some(p) = v.iter().position(|x| x.abs() > f16::MAX.to_f32()) {
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
    file: Option<File>,
    dim: usize,
    dtype: Dtype,
    ids: Vec<String>,
    offsets: Vec<u64>,
    pos: u64,
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
        let header_crc = u32::from_le_bytes([
            header[HEADER_CRC_AT],
            header[HEADER_CRC_AT + 1],
            header[HEADER_CRC_AT + 2],
            header[HEADER_CRC_AT + 3],
        ]);
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

fn encode_header(
    no_vectors: bool,
    dtype: Dtype,
    dim: u32,
    n_docs: u64,
    n_tokens: u64,
    block: u64,
    sections: &[Section; N_SECTIONS],
) -> [u8; HEADER_SIZE] {
    let mut h = [0u8; HEADER_SIZE];
    h[0..8].copy_from_slice(SEGMENT_MAGIC);
    let (version, flags) = if no_vectors {
        (SEGMENT_VERSION_NO_VECTORS, FLAG_NO_VECTORS)
    } else {
        (SEGMENT_VERSION, 0)
    };
    h[8..12].copy_from_slice(&version.to_le_bytes());
    h[12..16].copy_from_slice(&dtype.code().to_le_bytes());
    h[16..20].copy_from_slice(&dim.to_le_bytes());
    h[20..24].copy_from_slice(&flags.to_le_bytes());
    h[24..32].copy_from_slice(&n_docs.to_le_bytes());
    h[32..40].copy_from_slice(&n_tokens.to_le_bytes());
    h[40..48].copy_from_slice(&block.to_le_bytes());
    for (i, s) in sections.iter().enumerate() {
        let at = 48 + i * 24;
        h[at..at + 8].copy_from_slice(&s.offset.to_le_bytes());
        h[at + 8..at + 16].copy_from_slice(&s.len.to_le_bytes());
        h[at + 16..at + 20].copy_from_slice(&s.crc.to_le_bytes());
    }
    let crc = crc32c::crc32c(&h[..HEADER_CRC_AT]);
    h[HEADER_CRC_AT..HEADER_CRC_AT + 4].copy_from_slice(&crc.to_le_bytes());
    h
}

fn le_u32(b: &[u8], at: usize) -> u32 {
    let mut a = [0u8; 4];
    a.copy_from_slice(&b[at..at + 4]);
    u32::from_le_bytes(a)
}

fn le_u64(b: &[u8], at: usize) -> u64 {
    let mut a = [0u8; 8];
    a.copy_from_slice(&b[at..at + 8]);
    u64::from_le_bytes(a)
}

/// A read-only, memory-mapped segment whose header and small sections have been validated, so
/// every accessor below is in bounds by construction.
pub struct Segment {
    path: PathBuf,
    file_name: String,
    map: Mmap,
    dim: usize,
    dtype: Dtype,
    n_docs: usize,
    n_tokens: u64,
    block_size: u64,
    sections: [Section; N_SECTIONS],
    header_crc: u32,
    /// Vector-free (version 2) segment.
    no_vectors: bool,
    /// One bit per vector block: set once the block's checksum has been checked.
    verified: Box<[AtomicU64]>,
}

impl std::fmt::Debug for Segment {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Segment")
            .field("path", &self.path)
            .field("n_docs", &self.n_docs)
            .field("n_tokens", &self.n_tokens)
            .finish()
    }
}

impl Segment {
    /// Maps and validates a segment: magic, version, header checksum (and that it equals
    /// `expected_header_crc` from the manifest), dim/dtype, every section's bounds and alignment,
    /// the checksums of all sections but the vectors, and the monotonicity of the offset tables.
    /// Costs O(n_docs), never reads the vectors.
    pub fn open(
        path: &Path,
        dim: usize,
        dtype: Dtype,
        expected_header_crc: Option<u32>,
    ) -> Result<Segment> {
        let file = open_regular(path)?;
        // SAFETY: segment files are immutable once renamed into place (never modified or
        // truncated by latix); the map stays valid after the file is unlinked. A file truncated
        // from outside latix makes reads past its new end raise SIGBUS: see `check_size`.
        let map = unsafe { Mmap::map(&file) }.map_err(|e| LatixError::io(path, e))?;
        let bad = |detail: String| LatixError::corrupted(path, detail);
        if map.len() < HEADER_SIZE {
            return Err(bad(format!(
                "file is {} bytes, shorter than the {HEADER_SIZE}-byte segment header",
                map.len()
            )));
        }
        let h = &map[..HEADER_SIZE];
        if &h[0..8] != SEGMENT_MAGIC {
            return Err(bad("bad magic (not a latix segment file)".into()));
        }
        let version = le_u32(h, 8);
        if version != SEGMENT_VERSION && version != SEGMENT_VERSION_NO_VECTORS {
            return Err(LatixError::UnsupportedVersion {
                path: path.to_path_buf(),
                detail: format!(
                    "segment format version {version}, this latix reads versions \
                     {SEGMENT_VERSION} and {SEGMENT_VERSION_NO_VECTORS}"
                ),
            });
        }
        let header_crc = le_u32(h, HEADER_CRC_AT);
        if crc32c::crc32c(&h[..HEADER_CRC_AT]) != header_crc {
            return Err(bad("header checksum mismatch".into()));
        }
        if let Some(exp) = expected_header_crc {
            if exp != header_crc {
                return Err(bad(format!(
                    "header checksum {header_crc:#010x} differs from the manifest's {exp:#010x}"
                )));
            }
        }
        // Each version has exactly one flag set: an unknown flag is damage, not a feature.
        let flags = le_u32(h, 20);
        let no_vectors = version == SEGMENT_VERSION_NO_VECTORS;
        if flags != if no_vectors { FLAG_NO_VECTORS } else { 0 } {
            return Err(bad(format!(
                "header flags {flags:#x} are invalid for format version {version}"
            )));
        }
        let file_dtype = Dtype::from_code(le_u32(h, 12))
            .ok_or_else(|| bad(format!("unknown dtype code {}", le_u32(h, 12))))?;
        let file_dim = le_u32(h, 16) as usize;
        if file_dim != dim || file_dtype != dtype {
            return Err(bad(format!(
                "segment has dim {file_dim} and dtype {}, the index has dim {dim} and dtype {}",
                file_dtype.name(),
                dtype.name()
            )));
        }
        let n_docs64 = le_u64(h, 24);
        let n_tokens = le_u64(h, 32);
        let block_size = le_u64(h, 40);
        if n_docs64 >= u32::MAX as u64 {
            return Err(bad(format!("n_docs {n_docs64} out of range")));
        }
        let n_docs = n_docs64 as usize;
        if block_size == 0 || !block_size.is_multiple_of(64) {
            return Err(bad(format!("bad vector block size {block_size}")));
        }
        let mut sections = [Section::default(); N_SECTIONS];
        for (i, s) in sections.iter_mut().enumerate() {
            let at = 48 + i * 24;
            *s = Section {
                offset: le_u64(h, at),
                len: le_u64(h, at + 8),
                crc: le_u32(h, at + 16),
            };
            let end = s.offset.checked_add(s.len);
            if s.offset % 64 != 0
                || s.offset < HEADER_SIZE as u64
                || end.is_none_or(|e| e > map.len() as u64)
            {
                return Err(bad(format!(
                    "{} section (offset {}, length {}) lies outside the {}-byte file or is misaligned",
                    SECTION_NAMES[i],
                    s.offset,
                    s.len,
                    map.len()
                )));
            }
        }
        // Canonical layout: sections in order, each at the next 64-byte boundary, the file ends
        // with the last one, and every padding byte is zero. Then no byte of the file escapes
        // a check (header crc, section crcs, block crcs, or this).
        let mut expect_at = HEADER_SIZE as u64;
        let mut gaps = vec![(HEADER_CRC_AT + 4, HEADER_SIZE)];
        for (i, s) in sections.iter().enumerate() {
            let aligned = align64(expect_at).unwrap_or(u64::MAX);
            if s.offset != aligned {
                return Err(bad(format!(
                    "{} section starts at {}, expected {aligned}",
                    SECTION_NAMES[i], s.offset
                )));
            }
            gaps.push((expect_at as usize, s.offset as usize));
            expect_at = s.offset + s.len;
        }
        if expect_at != map.len() as u64 {
            return Err(bad(format!(
                "file is {} bytes, its sections end at {expect_at}",
                map.len()
            )));
        }
        if gaps.iter().any(|&(a, b)| map[a..b].iter().any(|&x| x != 0)) {
            return Err(bad("non-zero padding bytes".into()));
        }
        // Section lengths implied by the counts; checked arithmetic so hostile counts cannot wrap.
        let vec_len = if no_vectors {
            Some(0)
        } else {
            n_tokens
                .checked_mul(dim as u64)
                .and_then(|v| v.checked_mul(dtype.size() as u64))
        };
        let n_blocks = vec_len.map(|v| v.div_ceil(block_size));
        let expect = [
            (SEC_VECTORS, vec_len),
            (SEC_OFFSETS, Some((n_docs64 + 1) * 8)),
            (SEC_ID_OFFSETS, Some((n_docs64 + 1) * 8)),
            (SEC_SORTED, Some(n_docs64 * 4)),
            (SEC_BLOCK_CRCS, n_blocks.and_then(|b| b.checked_mul(4))),
        ];
        for (i, want) in expect {
            if Some(sections[i].len) != want {
                return Err(bad(format!(
                    "{} section has length {}, expected {:?} for {n_docs} documents and {n_tokens} tokens",
                    SECTION_NAMES[i], sections[i].len, want
                )));
            }
        }
        let seg = Segment {
            path: path.to_path_buf(),
            file_name: path
                .file_name()
                .map(|s| s.to_string_lossy().into_owned())
                .unwrap_or_default(),
            map,
            dim,
            dtype,
            n_docs,
            n_tokens,
            block_size,
            sections,
            header_crc,
            no_vectors,
            verified: (0..n_blocks.unwrap_or(0).div_ceil(64))
                .map(|_| AtomicU64::new(0))
                .collect(),
        };
        for i in [
            SEC_OFFSETS,
            SEC_ID_OFFSETS,
            SEC_ID_BYTES,
            SEC_SORTED,
            SEC_BLOCK_CRCS,
        ] {
            if crc32c::crc32c(seg.section(i)) != sections[i].crc {
                return Err(
                    seg.corrupted(format!("{} section checksum mismatch", SECTION_NAMES[i]))
                );
            }
        }
        // Casts cannot fail on a page-aligned map with 64-aligned sections, but never panic.
        let offsets = seg.try_u64(SEC_OFFSETS)?;
        if offsets.first() != Some(&0)
            || offsets.last() != Some(&n_tokens)
            || offsets.windows(2).any(|w| w[1] < w[0])
        {
            return Err(
                seg.corrupted("token offsets are not non-decreasing from 0 to n_tokens".into())
            );
        }
        let id_offsets = seg.try_u64(SEC_ID_OFFSETS)?;
        let id_len = sections[SEC_ID_BYTES].len;
        if id_offsets.first() != Some(&0)
            || id_offsets.last() != Some(&id_len)
            || id_offsets.windows(2).any(|w| w[1] < w[0])
        {
            return Err(seg.corrupted(
                "id offsets are not non-decreasing from 0 to the id bytes length".into(),
            ));
        }
        // Lookups binary-search this table: one out of order (or a document listed twice, so
        // another never) would make live ids silently "not found". O(ids) at open.
        seg.check_sorted_ids()?;
        match dtype {
            Dtype::F16 => {
                bytemuck::try_cast_slice::<u8, f16>(seg.section(SEC_VECTORS))
                    .map_err(|e| seg.corrupted(format!("vectors: {e}")))?;
            }
            Dtype::F32 => {
                bytemuck::try_cast_slice::<u8, f32>(seg.section(SEC_VECTORS))
                    .map_err(|e| seg.corrupted(format!("vectors: {e}")))?;
            }
        }
        Ok(seg)
    }

    fn corrupted(&self, detail: String) -> LatixError {
        LatixError::corrupted(&self.path, detail)
    }

    fn section(&self, i: usize) -> &[u8] {
        let s = self.sections[i];
        // Bounds were validated in open().
        &self.map[s.offset as usize..(s.offset + s.len) as usize]
    }

    fn try_u64(&self, i: usize) -> Result<&[u64]> {
        bytemuck::try_cast_slice(self.section(i))
            .map_err(|e| self.corrupted(format!("{}: {e}", SECTION_NAMES[i])))
    }

    fn try_u32(&self, i: usize) -> Result<&[u32]> {
        bytemuck::try_cast_slice(self.section(i))
            .map_err(|e| self.corrupted(format!("{}: {e}", SECTION_NAMES[i])))
    }

    fn u64s(&self, i: usize) -> &[u64] {
        self.try_u64(i).unwrap_or(&[])
    }

    /// Path of the segment file.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// File name of the segment (as recorded in the manifest).
    pub fn file_name(&self) -> &str {
        &self.file_name
    }

    /// Number of documents (live or tombstoned) in the segment.
    pub fn n_docs(&self) -> usize {
        self.n_docs
    }

    /// Number of token vectors in the segment.
    pub fn n_tokens(&self) -> u64 {
        self.n_tokens
    }

    /// Vector dimension.
    pub fn dim(&self) -> usize {
        self.dim
    }

    /// Storage dtype.
    pub fn dtype(&self) -> Dtype {
        self.dtype
    }

    /// Checksum of the header, as recorded in the manifest.
    pub fn header_crc(&self) -> u32 {
        self.header_crc
    }

    /// False for a vector-free segment (see [`FLAG_NO_VECTORS`]): its rows cannot be read.
    pub fn has_vectors(&self) -> bool {
        !self.no_vectors
    }

    /// All token vectors, row-major `(n_tokens, dim)`, *unverified*: use
    /// [`Segment::rows_checked`] (or [`Segment::check_rows`] first) before trusting the values.
    pub fn vectors(&self) -> DocVectors<'_> {
        let b = self.section(SEC_VECTORS);
        match self.dtype {
            Dtype::F16 => DocVectors::F16(bytemuck::try_cast_slice(b).unwrap_or(&[])),
            Dtype::F32 => DocVectors::F32(bytemuck::try_cast_slice(b).unwrap_or(&[])),
        }
    }

    /// Token offsets (`n_docs + 1`, non-decreasing, from 0 to `n_tokens`).
    pub fn offsets(&self) -> &[u64] {
        self.u64s(SEC_OFFSETS)
    }

    /// Token range `start..end` of document `doc` (`doc < n_docs`).
    pub fn doc_range(&self, doc: u32) -> (u64, u64) {
        let o = self.offsets();
        let d = doc as usize;
        match (o.get(d), o.get(d + 1)) {
            (Some(&a), Some(&b)) => (a, b),
            _ => (0, 0),
        }
    }

    /// Verifies (once per block, on first touch) the checksums of the vector blocks holding rows
    /// `start..end`; `Corrupted` naming the file and block if one does not match.
    pub fn check_rows(&self, start: u64, end: u64) -> Result<()> {
        if self.no_vectors && end > start {
            return Err(LatixError::invalid(format!(
                "segment {} stores no vectors (a compressed index created with keep_vectors=False)",
                self.file_name
            )));
        }
        let row_bytes = (self.dim * self.dtype.size()) as u64;
        let vec_len = self.sections[SEC_VECTORS].len;
        let (a, b) = (
            start.saturating_mul(row_bytes).min(vec_len),
            end.saturating_mul(row_bytes).min(vec_len),
        );
        if b <= a {
            return Ok(());
        }
        for blk in a / self.block_size..=(b - 1) / self.block_size {
            let (word, bit) = ((blk / 64) as usize, 1u64 << (blk % 64));
            let Some(w) = self.verified.get(word) else {
                return Err(self.corrupted(format!("vector block {blk} out of range")));
            };
            if w.load(Ordering::Acquire) & bit == 0 {
                self.check_block(blk)?;
                w.fetch_or(bit, Ordering::AcqRel);
            }
        }
        Ok(())
    }

    fn check_block(&self, blk: u64) -> Result<()> {
        let vectors = self.section(SEC_VECTORS);
        let crcs: &[u32] = self.try_u32(SEC_BLOCK_CRCS)?;
        let lo = blk
            .saturating_mul(self.block_size)
            .min(vectors.len() as u64) as usize;
        let hi = (lo as u64 + self.block_size).min(vectors.len() as u64) as usize;
        let want = crcs.get(blk as usize).copied();
        if want != Some(crc32c::crc32c(&vectors[lo..hi])) {
            return Err(self.corrupted(format!(
                "vector data checksum mismatch in block {blk} (bytes {lo}..{hi} of the vectors section)"
            )));
        }
        // Writers store only finite values in range: a block with others (a file crafted with
        // valid checksums) would make scores overflow or NaN, so it is damage too.
        let values = match self.dtype {
            Dtype::F16 => bytemuck::try_cast_slice(&vectors[lo..hi]).map(DocVectors::F16),
            Dtype::F32 => bytemuck::try_cast_slice(&vectors[lo..hi]).map(DocVectors::F32),
        }
        .map_err(|e| self.corrupted(format!("vectors: {e}")))?;
        if let Err(e) = crate::maxsim::check_finite(values, "vectors", self.dim) {
            return Err(self.corrupted(format!("vector data block {blk}: {e}")));
        }
        Ok(())
    }

    /// Token vectors of rows `start..end` after [`Segment::check_rows`]: the verified way to read
    /// vectors.
    pub fn rows_checked(&self, start: u64, end: u64) -> Result<DocVectors<'_>> {
        self.check_rows(start, end)?;
        Ok(self.rows(start, end))
    }

    /// Token vectors of rows `start..end` (token numbers, as from [`Segment::doc_range`]),
    /// *unverified* (see [`Segment::rows_checked`]).
    pub fn rows(&self, start: u64, end: u64) -> DocVectors<'_> {
        let (a, b) = (start as usize * self.dim, end as usize * self.dim);
        match self.vectors() {
            DocVectors::F16(v) => DocVectors::F16(v.get(a..b).unwrap_or(&[])),
            DocVectors::F32(v) => DocVectors::F32(v.get(a..b).unwrap_or(&[])),
        }
    }

    fn id_bytes(&self, doc: usize) -> &[u8] {
        let o = self.u64s(SEC_ID_OFFSETS);
        match (o.get(doc), o.get(doc + 1)) {
            (Some(&a), Some(&b)) => self
                .section(SEC_ID_BYTES)
                .get(a as usize..b as usize)
                .unwrap_or(&[]),
            _ => &[],
        }
    }

    /// External id of document `doc`.
    pub fn id(&self, doc: u32) -> Result<&str> {
        std::str::from_utf8(self.id_bytes(doc as usize))
            .map_err(|_| self.corrupted(format!("id of document {doc} is not valid UTF-8")))
    }

    /// Document numbers whose id is `id` (binary search on the sorted id table; at most a few:
    /// a staged document replaced before its commit keeps its slot, tombstoned).
    pub fn find(&self, id: &str) -> Vec<u32> {
        let sorted: &[u32] = bytemuck::try_cast_slice(self.section(SEC_SORTED)).unwrap_or(&[]);
        let key = id.as_bytes();
        let start = sorted.partition_point(|&d| self.id_bytes(d as usize) < key);
        sorted[start..]
            .iter()
            .take_while(|&&d| self.id_bytes(d as usize) == key)
            .copied()
            .collect()
    }

    /// Full check: every vector block checksum, UTF-8 ids, sorted id order and permutation.
    /// Reads the whole file.
    pub fn verify(&self) -> Result<()> {
        // Re-checks every block, even those already verified: this is the full scrub.
        let n_blocks = self.sections[SEC_VECTORS].len.div_ceil(self.block_size);
        for blk in 0..n_blocks {
            self.check_block(blk)?;
            if let Some(w) = self.verified.get((blk / 64) as usize) {
                w.fetch_or(1u64 << (blk % 64), Ordering::AcqRel);
            }
        }
        for d in 0..self.n_docs as u32 {
            self.id(d)?;
        }
        self.check_sorted_ids()?;
        self.check_size()
    }

    /// The sorted id table is a permutation of the documents in id order.
    fn check_sorted_ids(&self) -> Result<()> {
        let sorted = self.try_u32(SEC_SORTED)?;
        let mut seen = vec![0u64; self.n_docs.div_ceil(64)];
        for &d in sorted {
            let Some(w) = seen.get_mut(d as usize / 64) else {
                return Err(
                    self.corrupted("sorted id table holds a document number out of range".into())
                );
            };
            if d as usize >= self.n_docs || *w >> (d % 64) & 1 == 1 {
                return Err(self.corrupted(
                    "sorted id table is not a permutation (a document out of range or listed \
                     twice)"
                        .into(),
                ));
            }
            *w |= 1 << (d % 64);
        }
        if sorted
            .windows(2)
            .any(|w| self.id_bytes(w[0] as usize) > self.id_bytes(w[1] as usize))
        {
            return Err(self.corrupted("sorted id table is not sorted".into()));
        }
        Ok(())
    }

    /// `Corrupted` if the file's size differs from what was mapped (truncated or rewritten from
    /// outside latix: reading the lost pages would raise SIGBUS). Best effort, see
    /// [`crate::store::check_mapped_size`].
    pub fn check_size(&self) -> Result<()> {
        check_mapped_size(&self.path, self.map.len() as u64)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Rewrites the sorted-id section of the segment at `path` with `sorted` and re-encodes the
    /// header with this module's encoder (valid checksums: a crafted, not a damaged, file).
    fn craft_sorted_table(path: &Path, sorted: &[u32]) -> u32 {
        let mut b = std::fs::read(path).expect("read");
        let h = &b[..HEADER_SIZE];
        let mut sections = [Section::default(); N_SECTIONS];
        for (i, s) in sections.iter_mut().enumerate() {
            let at = 48 + i * 24;
            *s = Section {
                offset: le_u64(h, at),
                len: le_u64(h, at + 8),
                crc: le_u32(h, at + 16),
            };
        }
        let (no_vectors, dtype, dim) = (
            le_u32(h, 8) == SEGMENT_VERSION_NO_VECTORS,
            Dtype::from_code(le_u32(h, 12)).expect("dtype"),
            le_u32(h, 16),
        );
        let (n_docs, n_tokens, block) = (le_u64(h, 24), le_u64(h, 32), le_u64(h, 40));
        let s = &mut sections[SEC_SORTED];
        let bytes: &[u8] = bytemuck::cast_slice(sorted);
        assert_eq!(bytes.len() as u64, s.len);
        b[s.offset as usize..(s.offset + s.len) as usize].copy_from_slice(bytes);
        s.crc = crc32c::crc32c(bytes);
        let header = encode_header(no_vectors, dtype, dim, n_docs, n_tokens, block, &sections);
        b[..HEADER_SIZE].copy_from_slice(&header);
        std::fs::write(path, &b).expect("write");
        le_u32(&header, HEADER_CRC_AT)
    }

    #[test]
    fn crafted_sorted_id_tables_are_refused_at_open() {
        let tmp = tempfile::tempdir().expect("tempdir");
        let path = tmp.path().join("seg-0000000000.lxs");
        for (sorted, why) in [
            (vec![0u32, 1, 2], "not sorted"), // ids are "b", "a", "c": [1, 0, 2] is sorted
            (vec![1u32, 1, 2], "permutation"), // "a" twice, "b" never
            (vec![1u32, 0, 3], "permutation"), // a document that does not exist
        ] {
            let mut w = SegmentWriter::create(tmp.path(), 2, Dtype::F32).expect("create");
            for id in ["b", "a", "c"] {
                w.add_doc(id, DocVectors::F32(&[1.0, 2.0])).expect("add");
            }
            w.finish(&path).expect("finish");
            let good = Segment::open(&path, 2, Dtype::F32, None).expect("a written segment opens");
            assert_eq!(good.find("a"), vec![1]);
            drop(good);
            let crc = craft_sorted_table(&path, &sorted);
            let e = match Segment::open(&path, 2, Dtype::F32, Some(crc)) {
                Err(e) => e.to_string(),
                Ok(_) => panic!("{sorted:?}: a crafted sorted-id table was accepted"),
            };
            assert!(
                e.contains("sorted id table") && e.contains(why),
                "{sorted:?}: {e}"
            );
        }
    }

    #[test]
    fn add_doc_checked_refuses_and_rolls_back() {
        let tmp = tempfile::tempdir().expect("tempdir");
        let mut w = SegmentWriter::create(tmp.path(), 2, Dtype::F16).expect("create");
        w.add_doc_checked("a", DocVectors::F32(&[1.0, 2.0]), "e[0]")
            .expect("add");
        let pos = w.pos;
        // A bad value in a later piece than the first: the earlier pieces were written.
        let mut big = vec![0.5f32; 2 * (WRITE_CHUNK_VALUES + 10)];
        for (bad, what) in [
            (f32::NAN, "non-finite"),
            (1e10, "too large"),
            (70000.0, "float16 range"),
        ] {
            let at = big.len() - 3;
            big[at] = bad;
            let e = w
                .add_doc_checked("b", DocVectors::F32(&big), "e[1]")
                .expect_err("bad value");
            assert!(
                e.to_string().contains(what) && e.to_string().contains("e[1]"),
                "{e}"
            );
            let row = (at / 2).to_string();
            assert!(e.to_string().contains(&format!("row {row}")), "{e}");
            assert_eq!((w.pos, w.n_docs()), (pos, 1));
            assert_eq!(
                w.file
                    .as_ref()
                    .expect("file")
                    .metadata()
                    .expect("meta")
                    .len(),
                pos
            );
            big[at] = 0.5;
        }
        w.add_doc_checked("b", DocVectors::F32(&big), "e[1]")
            .expect("add");
        w.finish(&tmp.path().join("seg-0000000000.lxs"))
            .expect("finish");
        let seg = Segment::open(&tmp.path().join("seg-0000000000.lxs"), 2, Dtype::F16, None)
            .expect("open");
        seg.verify().expect("verify");
        assert_eq!(seg.n_tokens(), 1 + big.len() as u64 / 2);
    }
}
