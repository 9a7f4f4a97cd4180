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
//!
//! Version 2 binds every named file to the manifest as the segments already are (by their header
//! checksum): each (name, file) pair is followed by the file's checksum, the crc32c of its body
//! that every latix named file ends with ([`named_file_checksum`]). A loader compares it with the
//! file it opens, so a file replaced by another valid latix file of the same kind and shape (another
//! segment's inverted lists, another index's codec or configuration) is reported as corruption.
//! Version-1 manifests (no checksums) are still read; the next commit records the checksums.
//!
//! Decoding also checks what no latix writer produces: every referenced file is distinct and none
//! is a reserved name (`CURRENT`, `LOCK`, a manifest, a temp file); names of index files and of a
//! segment's side files are unique; the next segment id is above every segment's id (else the next
//! commit would reuse a live segment's name).

use std::collections::{BTreeMap, HashSet};
use std::path::Path;
use std::sync::Arc;

use crate::error::{LatixError, Result};
use crate::format;
use crate::store::{Dtype, MANIFEST_PREFIX};

/// Magic bytes at the start of every manifest.
pub const MANIFEST_MAGIC: &[u8; 8] = b"LATIXMAN";
/// Current manifest format version.
pub const MANIFEST_VERSION: u32 = 2;
/// The version without named-file checksums, still read.
pub const MANIFEST_VERSION_V1: u32 = 1;
/// Largest manifest read (a manifest holds names and tombstones: far below this).
pub const MAX_MANIFEST_BYTES: u64 = 1 << 30;

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
    /// Checksum of each named file (file name -> [`named_file_checksum`]); a file read from a
    /// version-1 manifest has none until the next commit records it.
    pub checksums: BTreeMap<String, u32>,
}

/// The checksum binding a named file to the manifest: the crc32c of the file's body, which every
/// latix named file (codec, compression configuration, inverted lists) stores as its last four
/// bytes. `None` if the file is shorter than four bytes. (The crc32c of a whole file that ends
/// with its own crc32c is the same constant for every file, so it cannot be the binding.)
pub fn named_file_checksum(bytes: &[u8]) -> Option<u32> {
    format::trailing_checksum(bytes)
}

/// Prefix of segment file names (`seg-<10-digit id>.lxs`).
pub const SEGMENT_PREFIX: &str = "seg-";

/// The id of a segment file name `seg-<digits>.lxs`, if it has that form.
pub fn segment_id(file: &str) -> Option<u64> {
    let d = file.strip_prefix(SEGMENT_PREFIX)?.strip_suffix(".lxs")?;
    if d.is_empty() || !d.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    d.parse().ok()
}

/// True for names latix reserves for itself: no manifest may reference them as data files.
fn is_reserved(name: &str) -> bool {
    name == crate::store::CURRENT_FILE
        || name == crate::store::LOCK_FILE
        || name.starts_with(MANIFEST_PREFIX)
        || name.starts_with(crate::store::TMP_PREFIX)
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

/// Named files (name, file), each followed by its checksum when `crcs` is given (version 2).
fn put_files(out: &mut Vec<u8>, files: &[(String, String)], crcs: Option<&BTreeMap<String, u32>>) {
    out.extend_from_slice(&(files.len() as u32).to_le_bytes());
    for (n, f) in files {
        put_str(out, n);
        put_str(out, f);
        if let Some(crcs) = crcs {
            // Callers record every checksum before encoding (Manifest::missing_checksums); 0 is
            // only a placeholder that no valid file matches by more than chance.
            out.extend_from_slice(&crcs.get(f).copied().unwrap_or(0).to_le_bytes());
        }
    }
}

impl Manifest {
    /// Serialises the manifest, checksum included.
    pub fn encode(&self) -> Vec<u8> {
        self.encode_version(MANIFEST_VERSION)
    }

    /// Serialises the manifest in the version-1 format (no named-file checksums), as latix wrote
    /// before version 2: for tests of indexes written by an older latix.
    pub fn encode_v1(&self) -> Vec<u8> {
        self.encode_version(MANIFEST_VERSION_V1)
    }

    fn encode_version(&self, version: u32) -> Vec<u8> {
        let crcs = (version >= MANIFEST_VERSION).then_some(&self.checksums);
        let mut out = Vec::new();
        format::put_header(&mut out, MANIFEST_MAGIC, version);
        out.extend_from_slice(&(self.dim as u32).to_le_bytes());
        out.extend_from_slice(&self.dtype.code().to_le_bytes());
        out.extend_from_slice(&self.generation.to_le_bytes());
        out.extend_from_slice(&self.next_segment_id.to_le_bytes());
        put_files(&mut out, &self.index_files, crcs);
        out.extend_from_slice(&(self.segments.len() as u32).to_le_bytes());
        for s in &self.segments {
            put_str(&mut out, &s.file);
            out.extend_from_slice(&s.n_docs.to_le_bytes());
            out.extend_from_slice(&s.n_tokens.to_le_bytes());
            out.extend_from_slice(&s.header_crc.to_le_bytes());
            put_files(&mut out, &s.side_files, crcs);
            out.extend_from_slice(&(s.tombstones.len() as u64).to_le_bytes());
            for t in s.tombstones.iter() {
                out.extend_from_slice(&t.to_le_bytes());
            }
        }
        format::seal(&mut out);
        out
    }

    /// Parses and validates a manifest read from `path` (named in errors).
    pub fn decode(bytes: &[u8], path: &Path) -> Result<Manifest> {
        let bad = |d: &str| LatixError::corrupted(path, format!("manifest: {d}"));
        let Some(version) = format::version(bytes, MANIFEST_MAGIC) else {
            return Err(bad("bad magic (not a latix manifest) or truncated"));
        };
        if version != MANIFEST_VERSION && version != MANIFEST_VERSION_V1 {
            return Err(LatixError::UnsupportedVersion {
                path: path.to_path_buf(),
                detail: format!("manifest format version {version}, this latix reads version {MANIFEST_VERSION}"),
            });
        }
        if bytes.len() < 16 {
            return Err(bad("truncated"));
        }
        if !format::checksum_ok(bytes) {
            return Err(bad("checksum mismatch"));
        }
        let body = &bytes[..bytes.len() - format::CHECKSUM_LEN];
        let mut r = Reader {
            r: format::Reader::new(body, format::PREFIX_LEN),
            with_crcs: version >= MANIFEST_VERSION,
            crcs: BTreeMap::new(),
        };
        let m = (|| {
            let dim = r.u32()? as usize;
            let dtype = Dtype::from_code(r.u32()?)?;
            let generation = r.u64()?;
            let next_segment_id = r.u64()?;
            let index_files = r.files()?;
            let n_seg = r.u32()? as usize;
            // Each entry takes at least 36 bytes: a count the file cannot hold reserves nothing.
            let mut segments = Vec::with_capacity(n_seg.min(r.remaining() / 36));
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
                checksums: std::mem::take(&mut r.crcs),
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
        let mut names = HashSet::new();
        for s in &m.segments {
            if !names.insert(s.file.as_str()) {
                return Err(bad(&format!("segment {} is listed twice", s.file)));
            }
            if !is_plain_file_name(&s.file) {
                return Err(bad(&format!("invalid segment file name {:?}", s.file)));
            }
            if let Some(id) = segment_id(&s.file) {
                if id >= m.next_segment_id {
                    return Err(bad(&format!(
                        "next segment id {} is not above the id of segment {} (the next commit \
                         would overwrite it)",
                        m.next_segment_id, s.file
                    )));
                }
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
        // Every referenced file once, none of them a reserved name; role names unique.
        let mut seen = HashSet::new();
        for f in m.referenced_files() {
            if is_reserved(&f) {
                return Err(bad(&format!("references the reserved file name {f:?}")));
            }
            if !seen.insert(f.clone()) {
                return Err(bad(&format!("references file {f} more than once")));
            }
        }
        let lists = std::iter::once(&m.index_files).chain(m.segments.iter().map(|s| &s.side_files));
        for files in lists {
            let mut roles = HashSet::new();
            if let Some((n, _)) = files.iter().find(|(n, _)| !roles.insert(n.as_str())) {
                return Err(bad(&format!("names two files {n:?} in one place")));
            }
        }
        Ok(m)
    }

    /// The named files (index-level and side files) this manifest has no checksum for: those
    /// carried over from a version-1 manifest. A commit records them before encoding.
    pub fn missing_checksums(&self) -> Vec<String> {
        self.named_files()
            .filter(|f| !self.checksums.contains_key(*f))
            .map(|f| f.to_owned())
            .collect()
    }

    /// File names of the index-level and side files.
    fn named_files(&self) -> impl Iterator<Item = &str> {
        self.index_files
            .iter()
            .chain(self.segments.iter().flat_map(|s| s.side_files.iter()))
            .map(|(_, f)| f.as_str())
    }

    /// Drops the checksums of files this manifest no longer references.
    pub fn prune_checksums(&mut self) {
        let live: HashSet<String> = self.named_files().map(|f| f.to_owned()).collect();
        self.checksums.retain(|f, _| live.contains(f));
    }

    /// `Corrupted` unless `actual` (the [`named_file_checksum`] of the file at `path`, named `file`
    /// in this manifest) is the checksum this manifest recorded for it (a version-1 manifest
    /// recorded none: accepted).
    pub fn check_named_file(&self, file: &str, path: &Path, actual: Option<u32>) -> Result<()> {
        match self.checksums.get(file) {
            Some(&want) if Some(want) != actual => Err(LatixError::corrupted(
                path,
                format!(
                    "is not the file this index wrote there (checksum {}, the manifest recorded \
                     {want:#010x}): it was replaced by another file",
                    actual.map_or("none".into(), |a| format!("{a:#010x}"))
                ),
            )),
            _ => Ok(()),
        }
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

/// The manifest's reader: the format's little-endian reader, plus the named-file checksums it
/// collects from a version-2 manifest.
struct Reader<'a> {
    r: format::Reader<'a>,
    /// Version 2: a checksum follows each named file (collected into `crcs`).
    with_crcs: bool,
    crcs: BTreeMap<String, u32>,
}

impl Reader<'_> {
    fn remaining(&self) -> usize {
        self.r.remaining()
    }
    fn u32(&mut self) -> Option<u32> {
        self.r.u32()
    }
    fn u64(&mut self) -> Option<u64> {
        self.r.u64()
    }
    fn str(&mut self) -> Option<String> {
        let n = self.u32()? as usize;
        String::from_utf8(self.r.take(n)?.to_vec()).ok()
    }
    fn files(&mut self) -> Option<Vec<(String, String)>> {
        let n = self.u32()? as usize;
        if n > self.remaining() / 8 {
            return None;
        }
        let mut v = Vec::with_capacity(n);
        for _ in 0..n {
            let (name, file) = (self.str()?, self.str()?);
            if self.with_crcs {
                let crc = self.u32()?;
                self.crcs.insert(file.clone(), crc);
            }
            v.push((name, file));
        }
        Some(v)
    }
}
