//! Snapshots: one committed state of an index (a manifest plus its mapped segments), shared by
//! `Arc` between concurrent searches. Loading reads `CURRENT`, the manifest and maps the segments
//! (O(1) in vector data); a refresh reuses the maps of segments it already holds, so picking up a
//! new commit costs only the new segments.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use crate::error::{LatixError, Result};
use crate::maxsim::DocVectors;
use crate::store::manifest::{
    is_plain_file_name, manifest_name, named_file_checksum, Manifest, SegmentEntry,
    MAX_MANIFEST_BYTES,
};
use crate::store::{read_bounded, Dtype, Segment, CURRENT_FILE, MANIFEST_PREFIX};

/// How many times a load restarts when a file vanished under it (a concurrent commit removed it).
const LOAD_RETRIES: usize = 20;

/// A segment as seen by one snapshot: the mapped file and that snapshot's tombstones.
#[derive(Clone, Debug)]
pub struct SegmentView {
    /// The mapped segment (shared with other snapshots that contain it).
    pub segment: Arc<Segment>,
    /// The manifest entry: tombstones and named side files.
    pub entry: SegmentEntry,
    /// Documents not tombstoned.
    pub live_docs: usize,
    /// Token vectors of the documents not tombstoned.
    pub live_tokens: u64,
}

impl SegmentView {
    /// True if document `doc` of this segment is deleted in this snapshot.
    pub fn is_deleted(&self, doc: u32) -> bool {
        self.entry.tombstones.binary_search(&doc).is_ok()
    }

    /// The live document numbers with id `id` (at most one in a consistent index).
    pub fn find_live(&self, id: &str) -> Option<u32> {
        self.segment
            .find(id)
            .into_iter()
            .find(|&d| !self.is_deleted(d))
    }
}

/// One committed, immutable state of an index.
#[derive(Debug)]
pub struct Snapshot {
    dir: PathBuf,
    manifest_name: String,
    manifest: Manifest,
    segments: Vec<SegmentView>,
    n_live: usize,
    n_live_tokens: u64,
    /// When the mapped files' sizes were last checked ([`crate::store::size_check_due`]).
    size_checked: std::sync::atomic::AtomicU64,
}

/// Whether an error means "a file was not there" (possibly removed by a concurrent commit).
fn is_not_found(e: &LatixError) -> bool {
    matches!(e, LatixError::Io { source, .. } if source.kind() == std::io::ErrorKind::NotFound)
}

/// Reads the name of the live manifest from `dir/CURRENT`.
pub fn read_current(dir: &Path) -> Result<String> {
    let p = dir.join(CURRENT_FILE);
    // A manifest name and a newline; a bound far above it, so a huge file is damage, not a read.
    let bytes = read_bounded(&p, 4096, "CURRENT")?;
    let name = std::str::from_utf8(&bytes)
        .ok()
        .and_then(|s| s.strip_suffix('\n'))
        // Exactly what commits write ("MANIFEST-" + 20 digits): a damaged CURRENT is reported
        // as such rather than as some other file being missing.
        .filter(|s| {
            s.strip_prefix(MANIFEST_PREFIX)
                .is_some_and(|g| g.len() == 20 && g.bytes().all(|b| b.is_ascii_digit()))
                && is_plain_file_name(s)
        })
        .ok_or_else(|| LatixError::corrupted(&p, "does not name a manifest file"))?;
    Ok(name.to_owned())
}

impl Snapshot {
    /// Loads the snapshot `CURRENT` names, reusing the segment maps of `previous` (and returning
    /// `previous` itself when `CURRENT` is unchanged: one small read, no reload). The mapped
    /// segment files are checked to still have their mapped size ([`Segment::check_size`]) when
    /// a snapshot reuses them, and at most every 10 ms when `CURRENT` is unchanged, so a file
    /// truncated from outside is reported instead of crashing a read with SIGBUS (best effort: a
    /// truncation between the check and the read still crashes).
    pub fn load(dir: &Path, previous: Option<&Arc<Snapshot>>) -> Result<Arc<Snapshot>> {
        let mut last_err = None;
        for _ in 0..LOAD_RETRIES {
            let name = read_current(dir)?;
            if let Some(prev) = previous {
                if prev.manifest_name == name {
                    if crate::store::size_check_due(&prev.size_checked) {
                        if let Err(e) = prev.check_sizes() {
                            // Damaged: every later call checks again (and fails), undelayed.
                            prev.size_checked
                                .store(0, std::sync::atomic::Ordering::Relaxed);
                            return Err(e);
                        }
                    }
                    return Ok(prev.clone());
                }
            }
            match Self::load_manifest(dir, &name, previous) {
                Ok(s) => return Ok(Arc::new(s)),
                // A concurrent commit may have switched CURRENT and removed files we were about
                // to open: retry. If CURRENT did not move, the file is really missing.
                Err(e) if is_not_found(&e) => {
                    if read_current(dir)? == name {
                        let missing = match &e {
                            LatixError::Io { path, .. } => path.display().to_string(),
                            _ => String::new(),
                        };
                        if !dir.join(&name).exists() {
                            return Err(LatixError::corrupted(
                                dir.join(CURRENT_FILE),
                                format!("names {name}, which is missing"),
                            ));
                        }
                        return Err(LatixError::corrupted(
                            dir.join(&name),
                            format!("references a missing file ({missing})"),
                        ));
                    }
                    last_err = Some(e)
                }
                Err(e) => return Err(e),
            }
        }
        Err(last_err
            .unwrap_or_else(|| LatixError::corrupted(dir, "cannot load a consistent snapshot")))
    }

    fn load_manifest(dir: &Path, name: &str, previous: Option<&Arc<Snapshot>>) -> Result<Snapshot> {
        let path = dir.join(name);
        let bytes = read_bounded(&path, MAX_MANIFEST_BYTES, "the manifest")?;
        let manifest = Manifest::decode(&bytes, &path)?;
        if manifest_name(manifest.generation) != name {
            return Err(LatixError::corrupted(
                &path,
                format!(
                    "holds generation {}, which does not match its file name",
                    manifest.generation
                ),
            ));
        }
        if let Some(prev) = previous {
            if prev.manifest.dim != manifest.dim || prev.manifest.dtype != manifest.dtype {
                return Err(LatixError::corrupted(
                    &path,
                    "dim or dtype differs from the previous generation",
                ));
            }
        }
        let reuse: HashMap<&str, &Arc<Segment>> = previous
            .map(|p| {
                p.segments
                    .iter()
                    .map(|v| (v.segment.file_name(), &v.segment))
                    .collect()
            })
            .unwrap_or_default();
        let mut segments = Vec::with_capacity(manifest.segments.len());
        let (mut n_live, mut n_live_tokens) = (0usize, 0u64);
        for entry in &manifest.segments {
            let seg = match reuse.get(entry.file.as_str()) {
                Some(s) if s.header_crc() == entry.header_crc => {
                    // A mapped file truncated from outside would kill the next read with SIGBUS:
                    // refuse the refreshed snapshot instead (cheap: one fstat per segment).
                    s.check_size()?;
                    Arc::clone(s)
                }
                _ => Arc::new(Segment::open(
                    &dir.join(&entry.file),
                    manifest.dim,
                    manifest.dtype,
                    Some(entry.header_crc),
                )?),
            };
            if seg.n_docs() as u64 != entry.n_docs || seg.n_tokens() != entry.n_tokens {
                return Err(LatixError::corrupted(
                    seg.path(),
                    format!(
                        "segment holds {} documents and {} tokens, the manifest says {} and {}",
                        seg.n_docs(),
                        seg.n_tokens(),
                        entry.n_docs,
                        entry.n_tokens
                    ),
                ));
            }
            let dead_tokens: u64 = entry
                .tombstones
                .iter()
                .map(|&d| {
                    let (a, b) = seg.doc_range(d);
                    b - a
                })
                .sum();
            let view = SegmentView {
                live_docs: seg.n_docs() - entry.tombstones.len(),
                live_tokens: seg.n_tokens() - dead_tokens,
                segment: seg,
                entry: entry.clone(),
            };
            n_live += view.live_docs;
            n_live_tokens += view.live_tokens;
            segments.push(view);
        }
        Ok(Snapshot {
            dir: dir.to_path_buf(),
            manifest_name: name.to_owned(),
            manifest,
            segments,
            n_live,
            n_live_tokens,
            size_checked: std::sync::atomic::AtomicU64::new(0),
        })
    }

    /// [`Segment::check_size`] of every segment.
    pub fn check_sizes(&self) -> Result<()> {
        self.segments
            .iter()
            .try_for_each(|v| v.segment.check_size())
    }

    /// Directory of the index.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// File name of this snapshot's manifest.
    pub fn manifest_name(&self) -> &str {
        &self.manifest_name
    }

    /// The decoded manifest.
    pub fn manifest(&self) -> &Manifest {
        &self.manifest
    }

    /// Commit generation.
    pub fn generation(&self) -> u64 {
        self.manifest.generation
    }

    /// Vector dimension.
    pub fn dim(&self) -> usize {
        self.manifest.dim
    }

    /// Storage dtype.
    pub fn dtype(&self) -> Dtype {
        self.manifest.dtype
    }

    /// Segments in insertion order.
    pub fn segments(&self) -> &[SegmentView] {
        &self.segments
    }

    /// Number of live documents.
    pub fn len(&self) -> usize {
        self.n_live
    }

    /// True if no live documents.
    pub fn is_empty(&self) -> bool {
        self.n_live == 0
    }

    /// Number of token vectors of live documents.
    pub fn num_tokens(&self) -> u64 {
        self.n_live_tokens
    }

    /// Location `(segment index, document number)` of the live document with id `id`.
    pub fn lookup(&self, id: &str) -> Option<(usize, u32)> {
        // Newest first: a replaced id's live copy is in the latest segment holding it.
        self.segments
            .iter()
            .enumerate()
            .rev()
            .find_map(|(i, v)| v.find_live(id).map(|d| (i, d)))
    }

    /// Stored token vectors `(n, dim)` of the live document `id`, straight from the map, after
    /// verifying the checksums of the blocks holding them (`Corrupted` if damaged).
    pub fn get(&self, id: &str) -> Result<Option<DocVectors<'_>>> {
        let Some((s, d)) = self.lookup(id) else {
            return Ok(None);
        };
        let seg = &self.segments[s].segment;
        let (a, b) = seg.doc_range(d);
        seg.rows_checked(a, b).map(Some)
    }

    /// Ids of all live documents in insertion order.
    pub fn ids(&self) -> Result<Vec<String>> {
        let mut out = Vec::with_capacity(self.n_live);
        for v in &self.segments {
            let t = &v.entry.tombstones;
            let mut ti = 0;
            for d in 0..v.segment.n_docs() as u32 {
                if t.get(ti) == Some(&d) {
                    ti += 1;
                    continue;
                }
                out.push(v.segment.id(d)?.to_owned());
            }
        }
        Ok(out)
    }

    /// Reads the index-level named file `name` (at most `max_len` bytes, a regular file) and
    /// checks that it is the file this snapshot's manifest recorded (its binding checksum, see
    /// [`crate::store::manifest`]): `Ok(None)` if the manifest has no such file.
    pub fn read_index_file(&self, name: &str, max_len: u64) -> Result<Option<(PathBuf, Vec<u8>)>> {
        let Some((_, file)) = self.manifest.index_files.iter().find(|(n, _)| n == name) else {
            return Ok(None);
        };
        let path = self.dir.join(file);
        let bytes = read_bounded(&path, max_len, &format!("the {name} file"))?;
        self.manifest
            .check_named_file(file, &path, named_file_checksum(&bytes))?;
        Ok(Some((path, bytes)))
    }

    /// Path of the index-level named file `name`, if the manifest has one.
    pub fn index_file(&self, name: &str) -> Option<PathBuf> {
        self.manifest
            .index_files
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, f)| self.dir.join(f))
    }

    /// Full integrity check: every segment's data checksums and tables, that no live id appears
    /// twice, and that every named file exists.
    pub fn verify(&self) -> Result<()> {
        for v in &self.segments {
            v.segment.verify()?;
        }
        let mut seen: HashMap<&str, ()> = HashMap::with_capacity(self.n_live);
        for v in &self.segments {
            let t = &v.entry.tombstones;
            for d in 0..v.segment.n_docs() as u32 {
                if t.binary_search(&d).is_ok() {
                    continue;
                }
                let id = v.segment.id(d)?;
                if seen.insert(id, ()).is_some() {
                    return Err(LatixError::corrupted(
                        v.segment.path(),
                        format!("id {id:?} is live in more than one place"),
                    ));
                }
            }
        }
        for f in self.manifest.referenced_files() {
            // Segments are held by their maps (checked above); a side file missing because a
            // later commit removed it means this snapshot is old, not that the index is damaged.
            if self.segments.iter().any(|v| v.segment.file_name() == f) {
                continue;
            }
            let p = self.dir.join(&f);
            if !p.is_file() && read_current(&self.dir).ok().as_deref() == Some(&self.manifest_name)
            {
                return Err(LatixError::corrupted(
                    self.dir.join(&self.manifest_name),
                    format!("references missing file {f}"),
                ));
            }
        }
        Ok(())
    }
}
