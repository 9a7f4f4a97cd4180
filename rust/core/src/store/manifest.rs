//! The manifest: the small versioned file that names everything a snapshot of the index consists
//! of. `CURRENT` holds the name of the live manifest (`MANIFEST-<generation>`); a commit writes a
//! new manifest and then atomically replaces `CURRENT`, so readers see either the old or the new
//! state, never a mix.
//!
//! Binary layout (little-endian): magic "LATIXMAN", format version u32, dim u32, dtype u32,
//! generation u64, next segment id u64, index-level named files (u32 count, then name and file
//! strings), segments (u32 count, then for each: file string, n_docs u64, n_tokens u64, header
//! crc32c u32, named side files, tombstones as u64 count + sorted u32 document numbers), and a
//! trailing crc32c of everything before it. Strings are u32 length + UTF-8. The named-file maps let
//! later components (codecs, codes, IVF lists) add files without changing the format.

use std::path::Path;
use std::sync::Arc;

use crate::error::{LatixError, Result};
use crate::store::{Dtype, MANIFEST_PREFIX};

/// Magic bytes at the start of every manifest.
pub const MANIFEST_MAGIC: &[u8; 8] = b"LATIXMAN";
/// Current manifest format version.
pub const MANIFEST_VERSION: u32 = 1;

/// One segment of a snapshot, as recorded in the manifest.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SegmentEntry {
    /// File name of the segment in the index directory.
    pub file: String,
    /// Documents stored in the segment (including tombstoned ones).
    pub n_docs: u64,
    /// Token vectors stored in the segment.
    pub n_tokens: u64,
    /// Checksum of the segment header (detects a swapped or rewritten file).
    pub header_crc: u32,
    /// Named side files of this segment (name -> file name), e.g. compressed codes.
    pub side_files: Vec<(String, String)>,
    /// Deleted document numbers, sorted ascending, unique.
    pub tombstones: Arc<Vec<u32>>,
}

/// The decoded contents of a manifest file.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Manifest {
    /// Vector dimension of the index.
    pub dim: usize,
    /// Storage dtype of the index.
    pub dtype: Dtype,
    /// Commit generation (0 for a freshly created index), strictly increasing.
    pub generation: u64,
    /// Number used for the next segment file name.
    pub next_segment_id: u64,
    /// Index-level named files (name -> file name), e.g. a trained codec.
    pub index_files: Vec<(String, String)>,
    /// Segments in insertion order.
    pub segments: Vec<SegmentEntry>,
}

/// File name of the manifest of `generation`.
pub fn manifest_name(generation: u64) -> String {
    format!("{MANIFEST_PREFIX}{generation:020}")
}

/// True if `name` is a plain file name latix may have written (no path separators, no leading dot).
pub fn is_plain_file_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 255
        && !name.starts_with('.')
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'.' || b == b'_' || b == b'-')
}

fn put_str(out: &mut Vec<u8>, s: &str) {
    out.extend_from_slice(&(s.len() as u32).to_le_bytes());
    out.extend_from_slice(s.as_bytes());
}

fn put_files(out: &mut Vec<u8>, files: &[(String, String)]) {
    out.extend_from_slice(&(files.len() as u32).to_le_bytes());
    for (n, f) in files {
        put_str(out, n);
        put_str(out, f);
    }
}

impl Manifest {
    /// Serialises the manifest, checksum included.
    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::new();
        out.extend_from_slice(MANIFEST_MAGIC);
        out.extend_from_slice(&MANIFEST_VERSION.to_le_bytes());
        out.extend_from_slice(&(self.dim as u32).to_le_bytes());
        out.extend_from_slice(&self.dtype.code().to_le_bytes());
        out.extend_from_slice(&self.generation.to_le_bytes());
        out.extend_from_slice(&self.next_segment_id.to_le_bytes());
        put_files(&mut out, &self.index_files);
        out.extend_from_slice(&(self.segments.len() as u32).to_le_bytes());
        for s in &self.segments {
            put_str(&mut out, &s.file);
            out.extend_from_slice(&s.n_docs.to_le_bytes());
            out.extend_from_slice(&s.n_tokens.to_le_bytes());
            out.extend_from_slice(&s.header_crc.to_le_bytes());
            put_files(&mut out, &s.side_files);
            out.extend_from_slice(&(s.tombstones.len() as u64).to_le_bytes());
            for t in s.tombstones.iter() {
                out.extend_from_slice(&t.to_le_bytes());
            }
        }
        let crc = crc32c::crc32c(&out);
        out.extend_from_slice(&crc.to_le_bytes());
        out
    }

    /// Parses and validates a manifest read from `path` (named in errors).
    pub fn decode(bytes: &[u8], path: &Path) -> Result<Manifest> {
        let bad = |d: &str| LatixError::corrupted(path, format!("manifest: {d}"));
        if bytes.len() < 12 || &bytes[..8] != MANIFEST_MAGIC {
            return Err(bad("bad magic (not a latix manifest) or truncated"));
        }
        let mut r = Reader { b: bytes, at: 8 };
        let version = r.u32().ok_or_else(|| bad("truncated"))?;
        if version != MANIFEST_VERSION {
            return Err(LatixError::UnsupportedVersion {
                path: path.to_path_buf(),
                detail: format!("manifest format version {version}, this latix reads version {MANIFEST_VERSION}"),
            });
        }
        if bytes.len() < 16 {
            return Err(bad("truncated"));
        }
        let body = &bytes[..bytes.len() - 4];
        let mut crc = [0u8; 4];
        crc.copy_from_slice(&bytes[bytes.len() - 4..]);
        if crc32c::crc32c(body) != u32::from_le_bytes(crc) {
            return Err(bad("checksum mismatch"));
        }
        let mut r = Reader { b: body, at: 12 };
        let m = (|| {
            let dim = r.u32()? as usize;
            let dtype = Dtype::from_code(r.u32()?)?;
            let generation = r.u64()?;
            let next_segment_id = r.u64()?;
            let index_files = r.files()?;
            let n_seg = r.u32()? as usize;
            let mut segments = Vec::with_capacity(n_seg.min(1 << 16));
            for _ in 0..n_seg {
                let file = r.str()?;
                let n_docs = r.u64()?;
                let n_tokens = r.u64()?;
                let header_crc = r.u32()?;
                let side_files = r.files()?;
                let n_t = r.u64()? as usize;
                if n_t > r.remaining() / 4 {
                    return None;
                }
                let mut t = Vec::with_capacity(n_t);
                for _ in 0..n_t {
                    t.push(r.u32()?);
                }
                segments.push(SegmentEntry {
                    file,
                    n_docs,
                    n_tokens,
                    header_crc,
                    side_files,
                    tombstones: Arc::new(t),
                });
            }
            if r.remaining() != 0 {
                return None;
            }
            Some(Manifest {
                dim,
                dtype,
                generation,
                next_segment_id,
                index_files,
                segments,
            })
        })()
        .ok_or_else(|| bad("malformed contents (truncated field or unknown dtype)"))?;
        if m.dim == 0 {
            return Err(bad("dim is 0"));
        }
        let all_files = m
            .index_files
            .iter()
            .chain(m.segments.iter().flat_map(|s| s.side_files.iter()));
        for (name, file) in all_files {
            if !is_plain_file_name(name) || !is_plain_file_name(file) {
                return Err(bad(&format!("invalid file entry {name:?} -> {file:?}")));
            }
        }
        let mut names = std::collections::HashSet::new();
        for s in &m.segments {
            if !names.insert(s.file.as_str()) {
                return Err(bad(&format!("segment {} is listed twice", s.file)));
            }
            if !is_plain_file_name(&s.file) {
                return Err(bad(&format!("invalid segment file name {:?}", s.file)));
            }
            let t = &s.tombstones;
            if t.windows(2).any(|w| w[1] <= w[0]) || t.last().is_some_and(|&l| l as u64 >= s.n_docs)
            {
                return Err(bad(&format!(
                    "tombstones of {} are unsorted or out of range",
                    s.file
                )));
            }
        }
        Ok(m)
    }

    /// Every file this manifest references (segments and side files).
    pub fn referenced_files(&self) -> Vec<String> {
        let mut v: Vec<String> = self.index_files.iter().map(|(_, f)| f.clone()).collect();
        for s in &self.segments {
            v.push(s.file.clone());
            v.extend(s.side_files.iter().map(|(_, f)| f.clone()));
        }
        v
    }
}

struct Reader<'a> {
    b: &'a [u8],
    at: usize,
}

impl Reader<'_> {
    fn remaining(&self) -> usize {
        self.b.len() - self.at
    }
    fn take(&mut self, n: usize) -> Option<&[u8]> {
        let end = self.at.checked_add(n)?;
        let s = self.b.get(self.at..end)?;
        self.at = end;
        Some(s)
    }
    fn u32(&mut self) -> Option<u32> {
        let mut a = [0u8; 4];
        a.copy_from_slice(self.take(4)?);
        Some(u32::from_le_bytes(a))
    }
    fn u64(&mut self) -> Option<u64> {
        let mut a = [0u8; 8];
        a.copy_from_slice(self.take(8)?);
        Some(u64::from_le_bytes(a))
    }
    fn str(&mut self) -> Option<String> {
        let n = self.u32()? as usize;
        String::from_utf8(self.take(n)?.to_vec()).ok()
    }
    fn files(&mut self) -> Option<Vec<(String, String)>> {
        let n = self.u32()? as usize;
        if n > self.remaining() / 8 {
            return None;
        }
        let mut v = Vec::with_capacity(n);
        for _ in 0..n {
            v.push((self.str()?, self.str()?));
        }
        Some(v)
    }
}
