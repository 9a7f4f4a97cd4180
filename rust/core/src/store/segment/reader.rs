//! A mapped, validated segment file (see [`super`] for the format).

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

use half::f16;
use memmap2::Mmap;

use super::*;
use crate::error::{LatixError, Result};
use crate::maxsim::DocVectors;
use crate::store::{align64, check_mapped_size, open_regular, Dtype};

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
        if !format::has_magic(h, SEGMENT_MAGIC) {
            return Err(bad("bad magic (not a latix segment file)".into()));
        }
        let version = format::header_u32(h, 0);
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
        let block_size = le_u64(h, BLOCK_SIZE_AT);
        if n_docs64 >= u32::MAX as u64 {
            return Err(bad(format!("n_docs {n_docs64} out of range")));
        }
        let n_docs = n_docs64 as usize;
        if block_size == 0 || !block_size.is_multiple_of(64) {
            return Err(bad(format!("bad vector block size {block_size}")));
        }
        let mut sections = [Section::default(); N_SECTIONS];
        for (i, s) in sections.iter_mut().enumerate() {
            let at = SECTIONS_AT + i * SECTION_DESC_LEN;
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

    /// Drops the segment's mapped pages from the process's resident set (`MADV_DONTNEED`; read
    /// again from the page cache or the file on the next access), so a pass over segments larger
    /// than memory (a compaction) keeps its memory bounded.
    pub fn release_pages(&self) {
        // SAFETY: a read-only shared map of an immutable file: its pages are re-read on access.
        let _ = unsafe {
            self.map
                .unchecked_advise(memmap2::UncheckedAdvice::DontNeed)
        };
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
