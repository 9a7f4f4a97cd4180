//! The index: a directory-backed, memory-mapped collection of documents (each a matrix of token
//! vectors under a stable external string id) with exhaustive exact MaxSim search.
//!
//! Concurrency model: one writer (an exclusive `flock` on `LOCK`, taken by the first mutating
//! call, released when the handle closes or the process dies) and any number of readers. Staged
//! adds go to a temporary segment file and staged deletes to a small in-memory set; `commit`
//! publishes both atomically by switching `CURRENT` to a new manifest. Readers search an `Arc`'d
//! [`Snapshot`]; each search first compares `CURRENT` with the snapshot's manifest name (one tiny
//! read) and reloads only when a newer commit exists.
//!
//! Threads: a handle is shared freely. Every mutation (add, delete, commit, compaction) holds the
//! handle's writer mutex from start to end, so they serialise; compaction commits the staged
//! changes and merges under one hold, so nothing staged in between can be lost. Searches never
//! wait for a writer.
//!
//! Processes and `fork()`: the writer records the process id that took the lock. A forked child
//! inherits the handle (its maps and lock descriptor) but is not the writer: every mutating call
//! there is `Locked`, and closing or dropping the inherited handle neither removes the parent's
//! staging file nor unlocks (closing an inherited descriptor of a `flock`ed file does not release
//! the parent's lock). Reads keep working in the child.
//!
//! Search scores documents in chunks of about [`CHUNK_BYTES`] of vectors on latix's thread pool,
//! keeping a per-query top-k heap per worker, so its memory does not grow with the index.
//!
//! An index created with a [`Compression`] configuration is a *compressed* index: its commits run
//! the hook of [`crate::cindex`] (codec training, per-segment inverted lists, vector-free
//! segments) and its searches go through candidate generation from codes once a codec is trained.

use std::cmp::Ordering as CmpOrdering;
use std::collections::{BTreeSet, BinaryHeap, HashMap, HashSet};
use std::fs::{File, OpenOptions};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

use half::f16;
use rayon::prelude::*;

use crate::cindex::{self, CState, CompressedSearch, Compression};
use crate::error::{try_filled, LatixError, Result};
use crate::maxsim::{self, DocVectors};
use crate::store::manifest::{
    manifest_name, named_file_checksum, Manifest, SegmentEntry, SEGMENT_PREFIX,
};
use crate::store::{
    check_regular, fsync_dir, snapshot::read_current, write_atomic, Dtype, Segment, SegmentWriter,
    Snapshot, CURRENT_FILE, LOCK_FILE, MANIFEST_PREFIX, TMP_PREFIX,
};

/// Target bytes of document vectors scored per work item (fits in L2 with room for the query).
pub const CHUNK_BYTES: usize = 256 * 1024;
/// Largest accepted vector dimension.
pub const MAX_DIM: usize = 65536;
/// Longest accepted id, in UTF-8 bytes.
pub const MAX_ID_BYTES: usize = 65535;
/// Largest `k * n_queries` a search accepts: the result is allocated up front (`k` hits per
/// query, padded), so an absurd `k` must be an error, not an allocation failure.
pub const MAX_RESULT_SLOTS: usize = 1 << 26;

/// Prefix of index-level named files (so a writer recognises one orphaned by a crash).
const INDEX_FILE_PREFIX: &str = "idx-";
/// Largest `k` accepted beyond the number of documents (the result arrays are `n_queries * k`).
pub const MAX_PADDED_K: usize = 1 << 20;

/// How [`Index::open`] opens an index.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum OpenMode {
    /// Read-only until the first mutating call, which then takes the write lock.
    Read,
    /// Take the write lock now (fails with `Locked` if another writer holds it).
    Write,
}

/// A document's stored vectors, copied out of the index.
#[derive(Clone, Debug, PartialEq)]
pub enum OwnedVectors {
    /// float16 storage, row-major `(n, dim)`.
    F16(Vec<f16>),
    /// float32 storage, row-major `(n, dim)`.
    F32(Vec<f32>),
}

/// Results of [`Index::search`]: row-major `(n_queries, k)`, best first; missing hits are
/// `-inf` with id `""`.
#[derive(Clone, Debug, PartialEq)]
pub struct SearchResults {
    /// Number of queries.
    pub n_queries: usize,
    /// Hits per query.
    pub k: usize,
    /// `n_queries * k` scores.
    pub scores: Vec<f32>,
    /// `n_queries * k` ids.
    pub ids: Vec<String>,
}

/// Allowed documents per segment, for [`DocFilter::Masks`]: segment file name -> bitmap over the
/// segment's document numbers (bit `d % 64` of word `d / 64` allows document `d`; exactly
/// `n_docs.div_ceil(64)` words). Segment files are immutable, so a mask built for a file stays
/// valid for as long as the file is part of the index; tombstones are applied by the search.
pub type SegmentMasks = HashMap<String, Vec<u64>>;

/// Which documents a search may return (deleted documents never are).
#[derive(Clone, Copy, Debug)]
pub enum DocFilter<'a> {
    /// Every live document.
    All,
    /// The live documents with these ids; unknown ids are ignored.
    Ids(&'a [&'a str]),
    /// The live documents allowed by per-segment bitmaps. A compressed index scores the allowed
    /// documents exhaustively (code-level MaxSim over all their tokens, then the exact re-rank
    /// when vectors are kept) instead of through candidate generation when at most
    /// `exhaustive_below` of them are live.
    Masks {
        /// Bitmap per segment file; every segment of the searched snapshot must have one.
        masks: &'a SegmentMasks,
        /// Live allowed documents at or below which a compressed index searches exhaustively.
        exhaustive_below: usize,
    },
}

/// A segment of a committed snapshot, as [`Index::segments`] lists it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SegmentInfo {
    /// The segment's file name (the key of [`SegmentMasks`]).
    pub file: String,
    /// Documents stored in the segment, deleted ones included (document numbers `0..n_docs`).
    pub n_docs: usize,
    /// Documents of the segment that are not deleted.
    pub n_live: usize,
}

/// What a commit hook may do: add index-level or per-segment named files to the commit (e.g. a
/// trained codec and each new segment's codes). Files are written atomically and published by the
/// same manifest switch as the rest of the commit.
pub struct CommitContext<'a> {
    dir: &'a Path,
    manifest: &'a mut Manifest,
    new_segments: Vec<String>,
    previous: &'a Snapshot,
}

impl CommitContext<'_> {
    /// The generation this commit will publish.
    pub fn generation(&self) -> u64 {
        self.manifest.generation
    }

    /// The committed state this commit builds on.
    pub fn previous(&self) -> &Snapshot {
        self.previous
    }

    /// Segment entries of the new manifest (tombstones included), in order.
    pub fn segments(&self) -> &[SegmentEntry] {
        &self.manifest.segments
    }

    /// File names of the segments created by this commit.
    pub fn new_segments(&self) -> &[String] {
        &self.new_segments
    }

    /// Replaces segment `segment_file` of this commit by a vector-free copy (same ids, offsets,
    /// tombstones and side files; a new file name, returned). The old file is removed once the
    /// commit is published (if it was new) or no manifest references it any more.
    pub fn strip_vectors(&mut self, segment_file: &str) -> Result<String> {
        self.strip_vectors_with(segment_file, None)
    }

    /// [`CommitContext::strip_vectors`] recording `token_counts[d]` as document `d`'s number of
    /// tokens instead of its rows in the segment (whose rows are then decoded, already pooled
    /// approximations: the counts keep the original documents' lengths).
    pub fn strip_vectors_with(
        &mut self,
        segment_file: &str,
        token_counts: Option<&[u64]>,
    ) -> Result<String> {
        let seg = self.open_segment(segment_file)?;
        if !seg.has_vectors() {
            return Ok(segment_file.to_owned());
        }
        if token_counts.is_some_and(|c| c.len() != seg.n_docs()) {
            return Err(LatixError::invalid(format!(
                "token_counts must hold one count per document of {segment_file}"
            )));
        }
        let file = format!("{SEGMENT_PREFIX}{:010}.lxs", self.manifest.next_segment_id);
        self.claim(&file)?;
        self.manifest.next_segment_id = next_id(self.dir, self.manifest.next_segment_id)?;
        let mut w = SegmentWriter::create_without_vectors(self.dir, seg.dim(), seg.dtype())?;
        for d in 0..seg.n_docs() as u32 {
            let (a, b) = seg.doc_range(d);
            let n = token_counts.map_or(b - a, |c| c[d as usize]);
            w.add_doc_without_vectors(seg.id(d)?, n)?;
        }
        // The directory is fsynced when the manifest is written, after this rename.
        let header_crc = w.finish(&self.dir.join(&file))?;
        let n_tokens = w.n_tokens();
        let e = self.entry_mut(segment_file)?;
        e.file = file.clone();
        e.header_crc = header_crc;
        e.n_tokens = n_tokens;
        for n in self.new_segments.iter_mut() {
            if n == segment_file {
                *n = file.clone();
            }
        }
        Ok(file)
    }

    /// Maps one segment of the new manifest (new or old) for reading.
    pub fn open_segment(&self, file: &str) -> Result<Segment> {
        let e = self
            .manifest
            .segments
            .iter()
            .find(|s| s.file == file)
            .ok_or_else(|| LatixError::NotFound(format!("no segment {file}")))?;
        Segment::open(
            &self.dir.join(file),
            self.manifest.dim,
            self.manifest.dtype,
            Some(e.header_crc),
        )
    }

    fn check_name(name: &str) -> Result<()> {
        if name.is_empty()
            || name.len() > 64
            || !name
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_')
        {
            return Err(LatixError::invalid(format!(
                "side file name must match [a-z0-9_]{{1,64}}, got {name:?}"
            )));
        }
        Ok(())
    }

    /// The new manifest's entry of segment `segment_file`.
    fn entry_mut(&mut self, segment_file: &str) -> Result<&mut SegmentEntry> {
        self.manifest
            .segments
            .iter_mut()
            .find(|s| s.file == segment_file)
            .ok_or_else(|| {
                LatixError::NotFound(format!("no segment {segment_file} in this commit"))
            })
    }

    /// `Corrupted` if `file` is referenced by the previous or the new manifest: a commit creates
    /// only new files (a crafted or damaged manifest could name a live file under the name the
    /// next commit would write; overwriting it would destroy committed data).
    fn claim(&self, file: &str) -> Result<()> {
        ensure_unreferenced(self.dir, file, &[self.previous.manifest(), self.manifest])
    }

    /// The checksum that binds a named file to the manifest (see [`named_file_checksum`]); every
    /// named file must end with the crc32c of its body, so that loaders can check it cheaply.
    fn binding(name: &str, bytes: &[u8]) -> Result<u32> {
        match named_file_checksum(bytes) {
            Some(c) if crc32c::crc32c(&bytes[..bytes.len() - 4]) == c => Ok(c),
            _ => Err(LatixError::invalid(format!(
                "named file {name:?} must end with the crc32c of its contents"
            ))),
        }
    }

    /// Writes (or replaces) the index-level named file `name` (its bytes must end with the crc32c
    /// of the rest, as every latix file does: the manifest records it).
    pub fn write_index_file(&mut self, name: &str, bytes: &[u8]) -> Result<()> {
        Self::check_name(name)?;
        let crc = Self::binding(name, bytes)?;
        // A fresh file name per generation: files readers may have mapped are never overwritten.
        let file = format!("{INDEX_FILE_PREFIX}{name}-{:020}", self.manifest.generation);
        self.claim(&file)?;
        write_atomic(self.dir, &file, bytes)?;
        self.manifest.index_files.retain(|(n, _)| n != name);
        self.manifest
            .index_files
            .push((name.to_owned(), file.clone()));
        self.manifest.checksums.insert(file, crc);
        Ok(())
    }

    /// Writes (or replaces) the named side file `name` of segment `segment_file`.
    pub fn write_segment_file(
        &mut self,
        segment_file: &str,
        name: &str,
        bytes: &[u8],
    ) -> Result<()> {
        Self::check_name(name)?;
        let crc = Self::binding(name, bytes)?;
        let gen = self.manifest.generation;
        // Checked before writing: no side file for a segment outside the commit.
        self.entry_mut(segment_file)?;
        let stem = segment_file.trim_end_matches(".lxs");
        let file = format!("{stem}.{name}-{gen:020}");
        self.claim(&file)?;
        write_atomic(self.dir, &file, bytes)?;
        let e = self.entry_mut(segment_file)?;
        e.side_files.retain(|(n, _)| n != name);
        e.side_files.push((name.to_owned(), file.clone()));
        self.manifest.checksums.insert(file, crc);
        Ok(())
    }
}

/// A commit hook: called after new segments are written, before the manifest switch.
pub type CommitHook<'h> = &'h mut dyn FnMut(&mut CommitContext<'_>) -> Result<()>;

/// `id + 1`, or `Corrupted` when a counter of the manifest (generation, next segment id) cannot
/// advance: never a wrap to 0, which would reuse names of live files.
fn next_id(dir: &Path, id: u64) -> Result<u64> {
    id.checked_add(1).ok_or_else(|| {
        LatixError::corrupted(
            dir.join(CURRENT_FILE),
            format!("a counter of the manifest is exhausted ({id}): the index cannot commit"),
        )
    })
}

/// `Corrupted` if any of `manifests` references `file` (see [`CommitContext`]'s `claim`).
fn ensure_unreferenced(dir: &Path, file: &str, manifests: &[&Manifest]) -> Result<()> {
    if manifests
        .iter()
        .any(|m| m.referenced_files().iter().any(|f| f == file))
    {
        return Err(LatixError::corrupted(
            dir.join(file),
            "the manifest already references this file, which this commit was about to create: \
             refusing to overwrite it (the manifest's next segment id or generation is stale)",
        ));
    }
    Ok(())
}

/// The writer state of a handle that holds the write lock.
struct Writer {
    /// The `flock`ed `LOCK` file (released when the last descriptor of it closes).
    _lock: File,
    /// Process that took the lock and created the staging file: a handle inherited through
    /// `fork()` finds another id here and must not act as the writer (see the module docs).
    pid: u32,
    stage: Option<SegmentWriter>,
    /// Live staged ids -> staged document number.
    staged_ids: HashMap<String, u32>,
    /// Staged documents deleted or replaced before their commit.
    staged_dead: Vec<u32>,
    /// Committed documents deleted by staged operations: segment file -> document numbers.
    deletes: HashMap<String, BTreeSet<u32>>,
}

impl Drop for Writer {
    fn drop(&mut self) {
        if self.pid != std::process::id() {
            // Inherited through fork(): the staging file is the parent's, being written there.
            // Close our descriptors but leave the file (the lock descriptor closes too: that
            // does not release the parent's flock, which its own descriptor keeps).
            if let Some(s) = self.stage.take() {
                s.abandon();
            }
        }
    }
}

impl Writer {
    fn new(lock: File) -> Writer {
        Writer {
            _lock: lock,
            pid: std::process::id(),
            stage: None,
            staged_ids: HashMap::new(),
            staged_dead: Vec::new(),
            deletes: HashMap::new(),
        }
    }

    fn has_changes(&self) -> bool {
        self.stage.as_ref().is_some_and(|s| s.n_docs() > 0) || !self.deletes.is_empty()
    }

    fn reset(&mut self) {
        self.stage = None;
        self.staged_ids.clear();
        self.staged_dead.clear();
        self.deletes.clear();
    }

    /// Whether `id` is live after the staged changes, given the committed snapshot.
    fn exists(&self, snap: &Snapshot, id: &str) -> bool {
        self.staged_ids.contains_key(id) || self.committed_live(snap, id).is_some()
    }

    fn committed_live(&self, snap: &Snapshot, id: &str) -> Option<(String, u32)> {
        let (s, d) = snap.lookup(id)?;
        let file = snap.segments()[s].segment.file_name();
        if self.deletes.get(file).is_some_and(|set| set.contains(&d)) {
            return None;
        }
        Some((file.to_owned(), d))
    }

    /// Stages the deletion of live `id` (caller checked it exists).
    fn stage_delete(&mut self, snap: &Snapshot, id: &str) {
        if let Some(d) = self.staged_ids.remove(id) {
            self.staged_dead.push(d);
        } else if let Some((file, d)) = self.committed_live(snap, id) {
            self.deletes.entry(file).or_default().insert(d);
        }
    }
}

/// A handle on an index directory. Thread-safe: searches run concurrently; mutations serialise.
pub struct Index {
    dir: PathBuf,
    dim: usize,
    dtype: Dtype,
    /// Set for a compressed index (fixed at create, persisted in the index).
    compression: Option<Compression>,
    /// Codec and inverted lists of the latest snapshot used (compressed index only).
    cstate: Mutex<Option<Arc<CState>>>,
    closed: AtomicBool,
    snapshot: Mutex<Option<Arc<Snapshot>>>,
    writer: Mutex<Option<Writer>>,
    /// Process id of the writer in `writer` (0: none), readable without the mutex, so that a
    /// forked child refuses writes (and closes) without waiting on a mutex that a thread of the
    /// parent may have held at the time of the fork.
    writer_pid: AtomicU32,
}

impl std::fmt::Debug for Index {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Index")
            .field("dir", &self.dir)
            .field("dim", &self.dim)
            .field("dtype", &self.dtype)
            .field("compression", &self.compression)
            .finish()
    }
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // A poisoned mutex means a panic elsewhere; the guarded state is still consistent.
    m.lock().unwrap_or_else(|e| e.into_inner())
}

fn take_lock(dir: &Path) -> Result<File> {
    use std::os::unix::fs::OpenOptionsExt;
    let p = dir.join(LOCK_FILE);
    // Only a regular file is locked: a FIFO, device or directory there is damage (and opening a
    // FIFO without O_NONBLOCK would block).
    if let Ok(m) = std::fs::metadata(&p) {
        if !m.is_file() {
            return Err(LatixError::corrupted(
                &p,
                "is not a regular file where latix expects one (the lock file)",
            ));
        }
    }
    let f = OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .custom_flags(libc::O_NONBLOCK | libc::O_CLOEXEC)
        .open(&p)
        .map_err(|e| LatixError::io(&p, e))?;
    check_regular(&f, &p)?;
    match fs4::FileExt::try_lock(&f) {
        Ok(()) => Ok(f),
        Err(fs4::TryLockError::WouldBlock) => Err(LatixError::Locked(format!(
            "index at {} is locked by another writer (another handle or process); close it first",
            dir.display()
        ))),
        Err(fs4::TryLockError::Error(e)) => Err(LatixError::io(&p, e)),
    }
}

/// Validates the shape of one document or query matrix given as a flat slice; `what` names it in
/// errors.
fn check_shape(v: DocVectors<'_>, dim: usize, what: &str) -> Result<()> {
    if v.is_empty() {
        return Err(LatixError::invalid(format!(
            "{what} must have at least one row (token), got shape (0, {dim})"
        )));
    }
    if !v.len().is_multiple_of(dim) {
        return Err(LatixError::invalid(format!(
            "{what} must have shape (n, {dim}), got {} values",
            v.len()
        )));
    }
    Ok(())
}

/// The last four bytes of the regular file at `path` (its body checksum, for a latix named file).
fn read_trailer(path: &Path) -> Result<u32> {
    use std::os::unix::fs::FileExt;
    let (f, len) = crate::store::open_regular_len(path)?;
    if len < 4 {
        return Err(LatixError::corrupted(path, "is shorter than its checksum"));
    }
    let mut b = [0u8; 4];
    f.read_exact_at(&mut b, len - 4)
        .map_err(|e| LatixError::io(path, e))?;
    Ok(u32::from_le_bytes(b))
}

fn check_id(id: &str, i: usize) -> Result<()> {
    if id.is_empty() {
        return Err(LatixError::invalid(format!(
            "ids[{i}] is empty; ids must be non-empty strings"
        )));
    }
    if id.len() > MAX_ID_BYTES {
        return Err(LatixError::invalid(format!(
            "ids[{i}] is {} bytes long, at most {MAX_ID_BYTES} allowed",
            id.len()
        )));
    }
    Ok(())
}

fn check_unique<'a>(ids: impl IntoIterator<Item = &'a str>) -> Result<()> {
    let mut seen = HashSet::new();
    for id in ids {
        if !seen.insert(id) {
            return Err(LatixError::invalid(format!(
                "ids contains {id:?} more than once"
            )));
        }
    }
    Ok(())
}

fn list_some(ids: &[&str]) -> String {
    let mut s: Vec<String> = ids.iter().take(5).map(|i| format!("{i:?}")).collect();
    if ids.len() > 5 {
        s.push(format!("... ({} in all)", ids.len()));
    }
    s.join(", ")
}

/// A search hit; ordered so that the *worse* hit compares greater (max-heap top = worst kept).
#[derive(Clone, Copy, Debug)]
struct Hit {
    score: f32,
    /// (segment index << 32) | document number: insertion order, the tie breaker.
    ord: u64,
}

impl PartialEq for Hit {
    fn eq(&self, o: &Self) -> bool {
        self.cmp(o) == CmpOrdering::Equal
    }
}
impl Eq for Hit {}
impl PartialOrd for Hit {
    fn partial_cmp(&self, o: &Self) -> Option<CmpOrdering> {
        Some(self.cmp(o))
    }
}
impl Ord for Hit {
    fn cmp(&self, o: &Self) -> CmpOrdering {
        o.score.total_cmp(&self.score).then(self.ord.cmp(&o.ord))
    }
}

#[derive(Clone, Debug)]
struct TopK {
    k: usize,
    heap: BinaryHeap<Hit>,
}

impl TopK {
    fn new(k: usize) -> Self {
        TopK {
            k,
            heap: BinaryHeap::with_capacity(k.min(4096) + 1),
        }
    }
    fn push(&mut self, h: Hit) {
        if self.heap.len() < self.k {
            self.heap.push(h);
        } else if let Some(mut top) = self.heap.peek_mut() {
            if h < *top {
                *top = h;
            }
        }
    }
    fn merge(mut self, other: TopK) -> TopK {
        for h in other.heap {
            self.push(h);
        }
        self
    }
}

/// One unit of search work: a range of documents of one segment, or a list of them (subset).
enum Work<'a> {
    Range { seg: usize, start: u32, end: u32 },
    List { seg: usize, docs: &'a [u32] },
}

impl Index {
    /// Creates a new, empty index at `path` (the directory is created if missing) and returns a
    /// handle holding the write lock. Fails with `AlreadyExists` if an index (or any other file)
    /// is already there.
    pub fn create(path: impl AsRef<Path>, dim: usize, dtype: Dtype) -> Result<Index> {
        Self::create_with(path, dim, dtype, None)
    }

    /// [`Index::create`] with an optional [`Compression`] configuration (a compressed index).
    pub fn create_with(
        path: impl AsRef<Path>,
        dim: usize,
        dtype: Dtype,
        compression: Option<Compression>,
    ) -> Result<Index> {
        let dir = path.as_ref().to_path_buf();
        if dim == 0 || dim > MAX_DIM {
            return Err(LatixError::invalid(format!(
                "dim must be between 1 and {MAX_DIM}, got {dim}"
            )));
        }
        if let Some(c) = &compression {
            c.validate(dim)?;
        }
        let config_file = format!("{INDEX_FILE_PREFIX}{}-{:020}", cindex::CONFIG_FILE, 0);
        let not_empty = |dir: &Path| -> Result<bool> {
            let rd = std::fs::read_dir(dir).map_err(|e| LatixError::io(dir, e))?;
            for e in rd {
                let e = e.map_err(|e| LatixError::io(dir, e))?;
                let name = e.file_name().to_string_lossy().into_owned();
                // A LOCK, temp files and the first manifest (written just before CURRENT) are
                // what an interrupted create leaves behind.
                if name != LOCK_FILE
                    && !name.starts_with(TMP_PREFIX)
                    && name != manifest_name(0)
                    && name != config_file
                {
                    return Ok(true);
                }
            }
            Ok(false)
        };
        if dir.exists() {
            if !dir.is_dir() {
                return Err(LatixError::AlreadyExists(format!(
                    "{} exists and is not a directory",
                    dir.display()
                )));
            }
            if dir.join(CURRENT_FILE).exists() {
                return Err(LatixError::AlreadyExists(format!(
                    "an index already exists at {}",
                    dir.display()
                )));
            }
            if not_empty(&dir)? {
                return Err(LatixError::AlreadyExists(format!(
                    "{} is a non-empty directory that is not a latix index; refusing to create an index there",
                    dir.display()
                )));
            }
        } else {
            std::fs::create_dir_all(&dir).map_err(|e| LatixError::io(&dir, e))?;
        }
        let lock_file = take_lock(&dir)?;
        // Re-check under the lock: another process may have created the index meanwhile.
        if dir.join(CURRENT_FILE).exists() {
            return Err(LatixError::AlreadyExists(format!(
                "an index already exists at {}",
                dir.display()
            )));
        }
        let mut index_files = vec![];
        let mut checksums = std::collections::BTreeMap::new();
        if let Some(c) = &compression {
            let bytes = c.encode();
            write_atomic(&dir, &config_file, &bytes)?;
            index_files.push((cindex::CONFIG_FILE.to_owned(), config_file.clone()));
            if let Some(crc) = named_file_checksum(&bytes) {
                checksums.insert(config_file.clone(), crc);
            }
        }
        let manifest = Manifest {
            dim,
            dtype,
            generation: 0,
            next_segment_id: 0,
            index_files,
            segments: vec![],
            checksums,
        };
        let name = manifest_name(0);
        write_atomic(&dir, &name, &manifest.encode())?;
        write_atomic(&dir, CURRENT_FILE, format!("{name}\n").as_bytes())?;
        let snap = Snapshot::load(&dir, None)?;
        Ok(Index {
            dir,
            dim,
            dtype,
            compression,
            cstate: Mutex::new(None),
            closed: AtomicBool::new(false),
            snapshot: Mutex::new(Some(snap)),
            writer: Mutex::new(Some(Writer::new(lock_file))),
            writer_pid: AtomicU32::new(std::process::id()),
        })
    }

    /// Opens an existing index. O(1) in the size of the vector data: reads `CURRENT` and the
    /// manifest and maps the segments.
    pub fn open(path: impl AsRef<Path>, mode: OpenMode) -> Result<Index> {
        let dir = path.as_ref().to_path_buf();
        if !dir.join(CURRENT_FILE).exists() {
            let what = if !dir.exists() {
                "does not exist"
            } else if !dir.is_dir() {
                "is not a directory"
            } else {
                "is not a latix index (no CURRENT file)"
            };
            return Err(LatixError::NotFound(format!("{} {what}", dir.display())));
        }
        let snap = Snapshot::load(&dir, None)?;
        let compression = Compression::load(&snap)?;
        let index = Index {
            dim: snap.dim(),
            dtype: snap.dtype(),
            compression,
            cstate: Mutex::new(None),
            dir,
            closed: AtomicBool::new(false),
            snapshot: Mutex::new(Some(snap)),
            writer: Mutex::new(None),
            writer_pid: AtomicU32::new(0),
        };
        if mode == OpenMode::Write {
            let mut w = lock(&index.writer);
            index.writer_mut(&mut w)?;
        }
        Ok(index)
    }

    /// Directory of the index.
    pub fn path(&self) -> &Path {
        &self.dir
    }

    /// Vector dimension.
    pub fn dim(&self) -> usize {
        self.dim
    }

    /// Storage dtype.
    pub fn dtype(&self) -> Dtype {
        self.dtype
    }

    /// The compression configuration (`None` for a plain, exact index).
    pub fn compression(&self) -> Option<&Compression> {
        self.compression.as_ref()
    }

    /// The latest snapshot with its codec and inverted lists (compressed index). A concurrent
    /// commit may remove the side files of the snapshot just loaded before they are opened: then
    /// the newer snapshot is loaded instead, as [`Snapshot::load`] does for segments. A file
    /// missing while `CURRENT` still names the snapshot is damage.
    fn snapshot_and_state(&self) -> Result<(Arc<Snapshot>, Arc<CState>)> {
        let mut tries = 0;
        loop {
            let snap = self.snapshot()?;
            match self.cstate_for(&snap) {
                Ok(st) => {
                    st.check_sizes(&snap)?;
                    return Ok((snap, st));
                }
                Err(LatixError::Io { path, source })
                    if source.kind() == std::io::ErrorKind::NotFound =>
                {
                    tries += 1;
                    let moved = read_current(&self.dir)? != snap.manifest_name();
                    if !moved || tries > 20 {
                        return Err(LatixError::corrupted(
                            self.dir.join(snap.manifest_name()),
                            format!("references a missing file ({})", path.display()),
                        ));
                    }
                }
                Err(e) => return Err(e),
            }
        }
    }

    /// Codec and inverted lists of `snap` (compressed index), loaded once per file.
    /// Loaded outside the mutex (like [`Index::snapshot`]); the newest state is kept.
    fn cstate_for(&self, snap: &Snapshot) -> Result<Arc<CState>> {
        let prev = lock(&self.cstate).clone();
        if let Some(s) = &prev {
            if s.manifest == snap.manifest_name() {
                return Ok(s.clone());
            }
        }
        let st = Arc::new(cindex::load_state(snap, prev.as_deref())?);
        let mut g = lock(&self.cstate);
        // Manifest names are zero-padded generations: they order like the generations.
        if g.as_ref().is_none_or(|cur| cur.manifest <= st.manifest) {
            *g = Some(st.clone());
        }
        Ok(st)
    }

    fn ensure_open(&self) -> Result<()> {
        if self.closed.load(Ordering::Acquire) {
            return Err(LatixError::Closed(format!(
                "the index handle for {} is closed",
                self.dir.display()
            )));
        }
        Ok(())
    }

    /// `Locked` if this handle's writer belongs to another process: the handle was inherited
    /// through `fork()` (checked without taking the writer mutex, see `writer_pid`).
    fn ensure_not_forked(&self) -> Result<()> {
        let owner = self.writer_pid.load(Ordering::Acquire);
        let me = std::process::id();
        if owner != 0 && owner != me {
            return Err(LatixError::Locked(format!(
                "this handle on {} is the writer of process {owner}, and this process ({me}) \
                 inherited it through fork(): it may search but not write. Close it, and open \
                 the index again in this process once {owner} has closed its writer",
                self.dir.display()
            )));
        }
        Ok(())
    }

    /// The latest committed snapshot (reloaded only if `CURRENT` changed since the last call).
    /// The handle's mutex is held only to read and to publish the snapshot, never during the
    /// file reads of a reload, so searches do not queue behind one another's reloads (and a
    /// `fork()` while a thread reloads leaves no mutex held in the child).
    pub fn snapshot(&self) -> Result<Arc<Snapshot>> {
        self.ensure_open()?;
        let closed = || LatixError::Closed("the index handle is closed".into());
        let prev = lock(&self.snapshot).clone().ok_or_else(closed)?;
        let snap = Snapshot::load(&self.dir, Some(&prev))?;
        if Arc::ptr_eq(&snap, &prev) {
            return Ok(snap);
        }
        let mut g = lock(&self.snapshot);
        match g.as_ref() {
            None => Err(closed()),
            // Another thread published a newer one meanwhile: a handle never goes back in time.
            Some(cur) if cur.generation() > snap.generation() => Ok(cur.clone()),
            _ => {
                *g = Some(snap.clone());
                Ok(snap)
            }
        }
    }

    /// Takes the write lock if this handle does not hold it yet; on taking it, removes files a
    /// crashed writer left behind.
    fn writer_mut<'a>(&self, g: &'a mut MutexGuard<'_, Option<Writer>>) -> Result<&'a mut Writer> {
        self.ensure_open()?;
        self.ensure_not_forked()?;
        if g.is_none() {
            let lock_file = take_lock(&self.dir)?;
            let snap = self.snapshot()?;
            self.remove_unreferenced(&snap, None)?;
            **g = Some(Writer::new(lock_file));
            self.writer_pid.store(std::process::id(), Ordering::Release);
        }
        g.as_mut()
            .ok_or_else(|| LatixError::Closed("no writer".into()))
    }

    /// The writer mutex, after refusing a handle inherited through `fork()` (which must not wait
    /// on a mutex a thread of the parent may have held at the fork).
    fn lock_writer(&self) -> Result<MutexGuard<'_, Option<Writer>>> {
        self.ensure_open()?;
        self.ensure_not_forked()?;
        Ok(lock(&self.writer))
    }

    /// Deletes files of the directory that `snap` does not reference: temp files, old manifests,
    /// old segments and their side files (`also` lists other side files of a previous manifest).
    /// Only called by the lock holder. Never deletes the temporary file of a live segment writer
    /// of this process (a staging file, a merge in progress), whatever its name.
    fn remove_unreferenced(&self, snap: &Snapshot, also: Option<&Manifest>) -> Result<()> {
        let keep: HashSet<String> = snap
            .manifest()
            .referenced_files()
            .into_iter()
            .chain([snap.manifest_name().to_owned()])
            .collect();
        let known: HashSet<String> = also
            .map(|m| m.referenced_files().into_iter().collect())
            .unwrap_or_default();
        let rd = std::fs::read_dir(&self.dir).map_err(|e| LatixError::io(&self.dir, e))?;
        let mut removed = false;
        for e in rd.flatten() {
            let name = e.file_name().to_string_lossy().into_owned();
            let ours = name.starts_with(TMP_PREFIX)
                || name.starts_with(MANIFEST_PREFIX)
                || name.starts_with(SEGMENT_PREFIX)
                || name.starts_with(INDEX_FILE_PREFIX)
                || known.contains(&name);
            if ours
                && !keep.contains(&name)
                && name != LOCK_FILE
                && name != CURRENT_FILE
                && !crate::store::is_live_tmp(&e.path())
            {
                // Unlinking is safe for readers: their maps stay valid; a reader that has not yet
                // opened a file of an older manifest retries from CURRENT.
                let _ = std::fs::remove_file(e.path());
                removed = true;
            }
        }
        if removed {
            fsync_dir(&self.dir)?;
        }
        Ok(())
    }

    /// Stages documents. `ids[i]` gets the token vectors `docs[i]` (row-major `(n_i, dim)`, f32
    /// or f16, converted to the storage dtype). An id that already exists (committed or staged)
    /// is an `AlreadyExists` error unless `replace`, which deletes the old document in the same
    /// commit. All checks run before anything is staged: on error nothing changes.
    pub fn add(&self, ids: &[&str], docs: &[DocVectors<'_>], replace: bool) -> Result<()> {
        self.ensure_open()?;
        if ids.len() != docs.len() {
            return Err(LatixError::invalid(format!(
                "len(ids) = {} but len(embeddings) = {}; they must match",
                ids.len(),
                docs.len()
            )));
        }
        for (i, id) in ids.iter().enumerate() {
            check_id(id, i)?;
        }
        check_unique(ids.iter().copied())?;
        for (i, d) in docs.iter().enumerate() {
            let what = format!("embeddings[{i}]");
            check_shape(*d, self.dim, &what)?;
            // A fast first pass, so bad input is refused before the write lock is even taken;
            // what is stored is checked again as it is copied (SegmentWriter::add_doc_checked).
            crate::store::segment::check_storable(*d, &what, self.dim, self.dtype, 0)?;
        }
        if ids.is_empty() {
            return Ok(());
        }
        let mut g = self.lock_writer()?;
        let w = self.writer_mut(&mut g)?;
        let snap = self.snapshot()?;
        if !replace {
            let existing: Vec<&str> = ids
                .iter()
                .copied()
                .filter(|id| w.exists(&snap, id))
                .collect();
            if !existing.is_empty() {
                return Err(LatixError::AlreadyExists(format!(
                    "ids already in the index (pass replace=True to overwrite): {}",
                    list_some(&existing)
                )));
            }
        }
        if w.stage.is_none() {
            w.stage = Some(SegmentWriter::create(&self.dir, self.dim, self.dtype)?);
        }
        let stage = w
            .stage
            .as_mut()
            .ok_or_else(|| LatixError::Closed("no stage".into()))?;
        let cp = stage.checkpoint();
        let mut new_docs = Vec::with_capacity(ids.len());
        for (i, (id, d)) in ids.iter().zip(docs).enumerate() {
            match stage.add_doc_checked(id, *d, &format!("embeddings[{i}]")) {
                Ok(n) => new_docs.push(n),
                Err(e) => {
                    stage.rollback(cp);
                    return Err(e);
                }
            }
        }
        for (id, n) in ids.iter().zip(new_docs) {
            if replace && w.exists(&snap, id) {
                w.stage_delete(&snap, id);
            }
            w.staged_ids.insert((*id).to_owned(), n);
        }
        Ok(())
    }

    /// Stages the deletion of `ids`. Every id must exist (committed and not deleted, or staged);
    /// otherwise `NotFound` names the missing ones and nothing is deleted.
    pub fn delete(&self, ids: &[&str]) -> Result<()> {
        self.ensure_open()?;
        for (i, id) in ids.iter().enumerate() {
            check_id(id, i)?;
        }
        check_unique(ids.iter().copied())?;
        if ids.is_empty() {
            return Ok(());
        }
        let mut g = self.lock_writer()?;
        let w = self.writer_mut(&mut g)?;
        let snap = self.snapshot()?;
        let missing: Vec<&str> = ids
            .iter()
            .copied()
            .filter(|id| !w.exists(&snap, id))
            .collect();
        if !missing.is_empty() {
            return Err(LatixError::NotFound(format!(
                "ids not in the index (nothing deleted): {}",
                list_some(&missing)
            )));
        }
        for id in ids {
            w.stage_delete(&snap, id);
        }
        Ok(())
    }

    /// Makes staged changes durable and visible, atomically. A no-op without staged changes.
    pub fn commit(&self) -> Result<()> {
        self.commit_inner(None)
    }

    /// [`Index::commit`] with a hook that may attach named files to the commit (always commits
    /// when a hook is given, even without staged changes). On a compressed index the compression
    /// hook runs first.
    pub fn commit_with(&self, hook: Option<CommitHook<'_>>) -> Result<()> {
        self.commit_inner(hook)
    }

    /// Wraps a user hook with the compression hook of a compressed index (`retrain`: retrain the
    /// codec in this commit; `decoded_input`: the new segment holds decoded approximations, with
    /// these original token counts) and calls `f` with the result.
    fn with_hook<R>(
        &self,
        user: Option<CommitHook<'_>>,
        retrain: bool,
        decoded_input: Option<&[u64]>,
        f: impl FnOnce(Option<CommitHook<'_>>) -> R,
    ) -> R {
        match (&self.compression, user) {
            (None, user) => f(user),
            (Some(cfg), mut user) => {
                let mut combined = |ctx: &mut CommitContext<'_>| -> Result<()> {
                    cindex::commit_hook(ctx, cfg, retrain, decoded_input, None)?;
                    if let Some(h) = user.as_mut() {
                        h(ctx)?;
                    }
                    Ok(())
                };
                f(Some(&mut combined))
            }
        }
    }

    fn commit_inner(&self, hook: Option<CommitHook<'_>>) -> Result<()> {
        let mut g = self.lock_writer()?;
        self.commit_locked(&mut g, hook)
    }

    /// [`Index::commit_with`] by the holder of the writer mutex `g`.
    fn commit_locked(
        &self,
        g: &mut MutexGuard<'_, Option<Writer>>,
        hook: Option<CommitHook<'_>>,
    ) -> Result<()> {
        let force = hook.is_some();
        if g.is_none() && !force {
            return Ok(());
        }
        let w = self.writer_mut(g)?;
        if !w.has_changes() && !force {
            w.reset();
            return Ok(());
        }
        let base = self.snapshot()?;
        let mut segments = Vec::with_capacity(base.segments().len() + 1);
        for v in base.segments() {
            let mut entry = v.entry.clone();
            if let Some(dels) = w.deletes.get(v.segment.file_name()) {
                let merged: BTreeSet<u32> = entry
                    .tombstones
                    .iter()
                    .copied()
                    .chain(dels.iter().copied())
                    .collect();
                entry.tombstones = Arc::new(merged.into_iter().collect());
            }
            segments.push(entry);
        }
        let mut stage = w.stage.take();
        let mut staged_dead = w.staged_dead.clone();
        staged_dead.sort_unstable();
        let (switched, res) = self.with_hook(hook, false, None, |hook| {
            self.publish(&base, segments, stage.as_mut(), staged_dead, hook)
        });
        if switched {
            w.reset();
        } else {
            // Nothing was published: keep every staged change so the commit can be retried.
            w.stage = stage;
        }
        res
    }

    /// Publishes a commit: [`Index::write_commit`], then refreshes this handle's snapshot and
    /// removes files no longer referenced. Returns whether `CURRENT` was switched (the commit
    /// happened, even if a later step failed). If not, a finished `stage` is moved back to its
    /// temporary name so that the caller can keep it staged.
    fn publish(
        &self,
        base: &Arc<Snapshot>,
        segments: Vec<SegmentEntry>,
        stage: Option<&mut SegmentWriter>,
        stage_dead: Vec<u32>,
        hook: Option<CommitHook<'_>>,
    ) -> (bool, Result<()>) {
        let mut stage = stage.filter(|s| s.n_docs() > 0);
        if let Err(e) = self.write_commit(base, segments, stage.as_deref_mut(), stage_dead, hook) {
            // An error after the rename of CURRENT (e.g. the directory fsync) still committed.
            let target = manifest_name(base.generation() + 1);
            if read_current(&self.dir).ok().as_deref() == Some(target.as_str()) {
                return (true, Err(e));
            }
            if let Some(s) = stage {
                if let Err(e2) = s.unpublish() {
                    return (false, Err(e2));
                }
            }
            return (false, Err(e));
        }
        let res = self
            .snapshot()
            .and_then(|snap| self.remove_unreferenced(&snap, Some(base.manifest())));
        (true, res)
    }

    /// Writes the staged segment (if any), runs the hook, writes the new manifest and switches
    /// `CURRENT` to it.
    fn write_commit(
        &self,
        base: &Arc<Snapshot>,
        mut segments: Vec<SegmentEntry>,
        stage: Option<&mut SegmentWriter>,
        stage_dead: Vec<u32>,
        hook: Option<CommitHook<'_>>,
    ) -> Result<()> {
        let bm = base.manifest();
        let mut manifest = Manifest {
            dim: self.dim,
            dtype: self.dtype,
            generation: next_id(&self.dir, bm.generation)?,
            next_segment_id: bm.next_segment_id,
            index_files: bm.index_files.clone(),
            segments: Vec::new(),
            checksums: bm.checksums.clone(),
        };
        let mut new_segments = Vec::new();
        if let Some(stage) = stage {
            let file = format!("{SEGMENT_PREFIX}{:010}.lxs", manifest.next_segment_id);
            ensure_unreferenced(&self.dir, &file, &[bm])?;
            manifest.next_segment_id = next_id(&self.dir, manifest.next_segment_id)?;
            let (n_docs, n_tokens) = (stage.n_docs() as u64, stage.n_tokens());
            // A compressed index that drops vectors and already has a codec re-writes this segment
            // vector-free in the commit hook: the vector-bearing file is transient.
            let transient = self.compression.as_ref().is_some_and(|c| !c.keep_vectors)
                && bm.index_files.iter().any(|(n, _)| n == cindex::CODEC_FILE);
            let header_crc = stage.finish_with(&self.dir.join(&file), !transient)?;
            segments.push(SegmentEntry {
                file: file.clone(),
                n_docs,
                n_tokens,
                header_crc,
                side_files: vec![],
                tombstones: Arc::new(stage_dead),
            });
            new_segments.push(file);
        }
        // A segment whose every document is deleted is dropped (its file removed after), and so
        // leaves the commit's new segments too: the hook must not encode a file the manifest
        // does not reference (a staged segment whose documents were all deleted before the commit).
        segments.retain(|s| (s.tombstones.len() as u64) < s.n_docs);
        new_segments.retain(|f| segments.iter().any(|s| &s.file == f));
        manifest.segments = segments;
        if let Some(hook) = hook {
            let mut ctx = CommitContext {
                dir: &self.dir,
                manifest: &mut manifest,
                new_segments,
                previous: base,
            };
            hook(&mut ctx)?;
        }
        // Named files carried over from a version-1 manifest get their binding recorded now
        // (their trailing checksum; a damaged file is still caught when it is loaded).
        for f in manifest.missing_checksums() {
            let crc = read_trailer(&self.dir.join(&f))?;
            manifest.checksums.insert(f, crc);
        }
        manifest.prune_checksums();
        let name = manifest_name(manifest.generation);
        write_atomic(&self.dir, &name, &manifest.encode())?;
        write_atomic(&self.dir, CURRENT_FILE, format!("{name}\n").as_bytes())?;
        Ok(())
    }

    /// Commits staged changes, then rewrites all live documents into one new segment (dropping
    /// deleted ones and any per-segment side files), commits that, and removes the old files.
    /// Ids and insertion order are preserved. Readers keep their snapshots. `hook` may attach
    /// files (e.g. re-encoded codes) to the compacted segment.
    pub fn compact_with(&self, hook: Option<CommitHook<'_>>) -> Result<()> {
        self.compact_inner(hook, false)
    }

    /// [`Index::compact_with`] without a hook.
    pub fn compact(&self) -> Result<()> {
        self.compact_with(None)
    }

    /// Compaction of a compressed index: merges every live document into one segment and
    /// re-encodes it into one set of inverted lists; `retrain` first retrains the codec on the
    /// live tokens (see [`Index::compact_with`]). Segments without vectors contribute their
    /// decoded approximations (lossy: re-encoding a reconstruction may change a few codes, and a
    /// codec retrained on reconstructions learns the reconstructions, not the original vectors).
    pub fn compact_retrain(&self, retrain: bool) -> Result<()> {
        if retrain && self.compression.is_none() {
            return Err(LatixError::invalid(
                "retrain applies to compressed indexes only (create the index with compression)",
            ));
        }
        self.compact_inner(None, retrain)
    }

    fn compact_inner(&self, hook: Option<CommitHook<'_>>, retrain: bool) -> Result<()> {
        // One hold of the writer mutex for the commit of staged changes and the merge: an add or
        // delete from another thread in between would be staged against segments the merge is
        // about to replace (and lost with them).
        let mut g = self.lock_writer()?;
        self.commit_locked(&mut g, None)?;
        self.writer_mut(&mut g)?;
        let base = self.snapshot()?;
        let dirty = base.segments().len() > 1
            || base
                .segments()
                .iter()
                .any(|v| !v.entry.tombstones.is_empty());
        if !dirty && hook.is_none() && !retrain {
            // Nothing to merge, but lists an older latix wrote are still rewritten in the current
            // format (by the compression hook of an otherwise empty commit: lossless, unlike
            // merging a vector-free segment, which re-encodes reconstructions).
            if self.compression.is_some() && cindex::has_old_lists(&base)? {
                return self.commit_locked(&mut g, Some(&mut |_: &mut CommitContext<'_>| Ok(())));
            }
            return Ok(());
        }
        let state = match &self.compression {
            Some(_) if base.segments().iter().any(|v| !v.segment.has_vectors()) => {
                Some(self.cstate_for(&base)?)
            }
            _ => None,
        };
        let mut stage = SegmentWriter::create(&self.dir, self.dim, self.dtype)?;
        // Original token count of every merged document: a vector-free segment contributes its
        // decoded (pooled) rows, but the merged segment must keep the documents' true lengths.
        let mut lengths = Vec::new();
        for (s, v) in base.segments().iter().enumerate() {
            let seg = &v.segment;
            for d in 0..seg.n_docs() as u32 {
                if v.is_deleted(d) {
                    continue;
                }
                let (a, b) = seg.doc_range(d);
                lengths.push(b - a);
                if seg.has_vectors() {
                    // Verified read: compaction must not launder damaged vectors into fresh
                    // checksums.
                    stage.add_doc(seg.id(d)?, seg.rows_checked(a, b)?)?;
                } else {
                    let rows = self.decode_doc(state.as_deref(), s, d)?;
                    stage.add_doc(seg.id(d)?, DocVectors::F32(&rows))?;
                }
            }
        }
        // On failure the temporary segment is removed when `stage` drops; nothing changed.
        let decoded = state.is_some().then_some(&lengths[..]);
        self.with_hook(hook, retrain, decoded, |hook| {
            self.publish(&base, Vec::new(), Some(&mut stage), Vec::new(), hook)
                .1
        })
    }

    /// The decoded approximation of document `doc` of segment `seg` (a vector-free segment).
    fn decode_doc(&self, state: Option<&CState>, seg: usize, doc: u32) -> Result<Vec<f32>> {
        let no_codes = || LatixError::invalid("the segment has no codes to decode");
        let st = state.ok_or_else(no_codes)?;
        let codec = st.codec.as_ref().ok_or_else(no_codes)?;
        let (_, ivf) = st
            .ivfs
            .get(seg)
            .and_then(|x| x.as_ref())
            .ok_or_else(no_codes)?;
        Ok(cindex::decode_doc(&codec.codec, ivf, doc))
    }

    /// Number of live documents in the latest committed snapshot.
    pub fn len(&self) -> Result<usize> {
        Ok(self.snapshot()?.len())
    }

    /// True if the committed index has no live documents.
    pub fn is_empty(&self) -> Result<bool> {
        Ok(self.len()? == 0)
    }

    /// Number of token vectors of live documents.
    pub fn num_tokens(&self) -> Result<u64> {
        Ok(self.snapshot()?.num_tokens())
    }

    /// True if `id` is a live committed document.
    pub fn contains(&self, id: &str) -> Result<bool> {
        Ok(self.snapshot()?.lookup(id).is_some())
    }

    /// Ids of all live committed documents, in insertion order.
    pub fn ids(&self) -> Result<Vec<String>> {
        self.snapshot()?.ids()
    }

    /// Copy of the stored token vectors of `id` (row-major `(n, dim)`, storage dtype). On a
    /// compressed index that dropped the vectors: the decoded approximation (centroid + residual
    /// codewords), rows grouped by centroid rather than in the original token order.
    pub fn get(&self, id: &str) -> Result<OwnedVectors> {
        let mut snap = self.snapshot()?;
        if self.compression.is_some() {
            let (sn, st) = self.snapshot_and_state()?;
            snap = sn;
            if let Some((s, d)) = snap.lookup(id) {
                if !snap.segments()[s].segment.has_vectors() {
                    let rows = self.decode_doc(Some(&st), s, d)?;
                    return Ok(cindex::to_storage(rows, self.dtype));
                }
            }
        }
        let copy = |what: &str| format!("a copy of the vectors of {id:?} ({what})");
        match snap.get(id)? {
            Some(DocVectors::F16(v)) => {
                let mut out = crate::error::try_vec(v.len(), &copy("float16"))?;
                out.extend_from_slice(v);
                Ok(OwnedVectors::F16(out))
            }
            Some(DocVectors::F32(v)) => {
                let mut out = crate::error::try_vec(v.len(), &copy("float32"))?;
                out.extend_from_slice(v);
                Ok(OwnedVectors::F32(out))
            }
            None => Err(LatixError::NotFound(format!(
                "id {id:?} is not in the index"
            ))),
        }
    }

    /// Full integrity check of the committed snapshot (reads every byte of every segment).
    pub fn verify(&self) -> Result<()> {
        let snap = self.snapshot()?;
        snap.verify()?;
        if self.compression.is_some() {
            cindex::verify(&snap)?;
        }
        Ok(())
    }

    /// Size and state figures of the latest committed snapshot.
    pub fn stats(&self) -> Result<IndexStats> {
        let (snap, state, bytes) = loop {
            let (snap, state) = match &self.compression {
                Some(_) => {
                    let (s, st) = self.snapshot_and_state()?;
                    (s, Some(st))
                }
                None => (self.snapshot()?, None),
            };
            let mut files = snap.manifest().referenced_files();
            files.push(snap.manifest_name().to_owned());
            files.push(CURRENT_FILE.to_owned());
            let mut bytes = Some(0u64);
            for f in files {
                let p = self.dir.join(&f);
                match std::fs::metadata(&p) {
                    Ok(m) => bytes = bytes.map(|b| b + m.len()),
                    // Removed by a commit published since the snapshot: measure the new one.
                    Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                        if read_current(&self.dir)? == snap.manifest_name() {
                            return Err(LatixError::io(&p, e));
                        }
                        bytes = None;
                        break;
                    }
                    Err(e) => return Err(LatixError::io(&p, e)),
                }
            }
            if let Some(b) = bytes {
                break (snap, state, b);
            }
        };
        let (trained, n_centroids, code_bytes) = match state {
            Some(st) => match &st.codec {
                Some(c) => (
                    true,
                    Some(c.codec.n_centroids()),
                    Some(c.codec.bytes_per_token()),
                ),
                None => (false, None, None),
            },
            None => (false, None, None),
        };
        Ok(IndexStats {
            compressed: self.compression.is_some(),
            n_docs: snap.len(),
            n_tokens: snap.num_tokens(),
            n_segments: snap.segments().len(),
            bytes_on_disk: bytes,
            trained,
            n_centroids,
            code_bytes_per_token: code_bytes,
            keep_vectors: self.compression.as_ref().is_none_or(|c| c.keep_vectors),
        })
    }

    /// Closes the handle: drops staged changes (removing their temp file), releases the write
    /// lock and the maps held by this handle. Idempotent. Searches already running finish on
    /// their snapshot.
    pub fn close(&self) {
        self.closed.store(true, Ordering::Release);
        if self.ensure_not_forked().is_err() {
            // A forked child's handle: its writer is the parent's. Drop what no thread held at
            // the fork (such a thread does not exist here: waiting would hang); dropping the
            // writer leaves the parent's staging file and lock alone (`Writer`'s Drop).
            if let Ok(mut g) = self.writer.try_lock() {
                *g = None;
            }
            if let Ok(mut g) = self.snapshot.try_lock() {
                *g = None;
            }
            return;
        }
        *lock(&self.writer) = None;
        *lock(&self.snapshot) = None;
    }

    /// True once [`Index::close`] was called.
    pub fn is_closed(&self) -> bool {
        self.closed.load(Ordering::Acquire)
    }

    /// Exhaustive exact MaxSim search of the latest committed snapshot. `queries[i]` is row-major
    /// `(n_i, dim)` f32. `subset` restricts the search to those ids (unknown ids are ignored, so a
    /// filter may name documents deleted since). Ties are broken by insertion order.
    pub fn search(
        &self,
        queries: &[&[f32]],
        k: usize,
        n_threads: Option<usize>,
        subset: Option<&[&str]>,
    ) -> Result<SearchResults> {
        self.search_with(queries, k, n_threads, subset, CompressedSearch::default())
    }

    /// [`Index::search`] with the options of a compressed index (`nprobe`, `rerank`, `refine`; all
    /// must be `None` on a plain index). A compressed index searches segments that have inverted
    /// lists through candidate generation from codes (tombstones and `subset` filter inside it),
    /// re-scores the short list with all its documents' codes, then re-ranks it exactly from the
    /// kept vectors when requested (default: when vectors are kept), and searches the others
    /// exactly. Before its codec is trained, it is searched exactly.
    pub fn search_with(
        &self,
        queries: &[&[f32]],
        k: usize,
        n_threads: Option<usize>,
        subset: Option<&[&str]>,
        opts: CompressedSearch,
    ) -> Result<SearchResults> {
        let filter = subset.map_or(DocFilter::All, DocFilter::Ids);
        self.search_filtered(queries, k, n_threads, filter, opts)?
            .ok_or_else(|| LatixError::invalid("an id filter cannot be out of date"))
    }

    /// [`Index::search_with`] restricted by a [`DocFilter`]. Returns `None` (search nothing)
    /// when the filter is [`DocFilter::Masks`] and the latest snapshot has a segment the masks
    /// do not cover: a commit published a new segment since they were built; build masks for
    /// [`Index::segments`] again and retry.
    pub fn search_filtered(
        &self,
        queries: &[&[f32]],
        k: usize,
        n_threads: Option<usize>,
        filter: DocFilter<'_>,
        opts: CompressedSearch,
    ) -> Result<Option<SearchResults>> {
        self.ensure_open()?;
        match &self.compression {
            None if opts.nprobe.is_some() || opts.rerank.is_some() || opts.refine.is_some() => {
                return Err(LatixError::invalid(
                    "nprobe, rerank and refine apply to compressed indexes only",
                ));
            }
            Some(c) if opts.rerank == Some(true) && !c.keep_vectors => {
                return Err(LatixError::invalid(
                    "rerank=True needs the full vectors, and this index was created with \
                     keep_vectors=False",
                ));
            }
            _ => {}
        }
        if opts.nprobe == Some(0) {
            return Err(LatixError::invalid("nprobe must be at least 1, got 0"));
        }
        if k == 0 {
            return Err(LatixError::invalid("k must be at least 1, got 0"));
        }
        for (i, q) in queries.iter().enumerate() {
            let what = format!("queries[{i}]");
            check_shape(DocVectors::F32(q), self.dim, &what)?;
            maxsim::check_values(DocVectors::F32(q), &what, self.dim)?;
        }
        crate::parallel::resolve_threads(n_threads)?;
        let (snap, state) = match &self.compression {
            Some(_) => {
                let (s, st) = self.snapshot_and_state()?;
                (s, Some(st))
            }
            None => (self.snapshot()?, None),
        };
        if k > MAX_PADDED_K.max(snap.len()) {
            return Err(LatixError::invalid(format!(
                "k = {k} exceeds both the number of documents ({}) and {MAX_PADDED_K}; the results \
                 would be mostly padding",
                snap.len()
            )));
        }
        let (subset, bits, exhaustive_below) = match filter {
            DocFilter::All => (None, None, 0),
            DocFilter::Ids(ids) => (Some(ids), None, 0),
            DocFilter::Masks {
                masks,
                exhaustive_below,
            } => match live_masks(&snap, masks)? {
                Some(b) => (None, Some(b), exhaustive_below),
                None => return Ok(None),
            },
        };
        if let (Some(cfg), Some(st)) = (&self.compression, state) {
            if st.codec.is_some() {
                return cindex::search(
                    &snap,
                    &st,
                    queries,
                    k,
                    n_threads,
                    subset,
                    opts,
                    cfg.keep_vectors,
                    bits,
                    exhaustive_below,
                )
                .map(Some);
            }
        }
        match bits {
            Some(b) => search_snapshot_docs(&snap, queries, k, n_threads, Some(bitmap_docs(&b))),
            None => search_snapshot(&snap, queries, k, n_threads, subset),
        }
        .map(Some)
    }

    /// The segments of the latest committed snapshot, in insertion order.
    pub fn segments(&self) -> Result<Vec<SegmentInfo>> {
        let snap = self.snapshot()?;
        Ok(snap
            .segments()
            .iter()
            .map(|v| SegmentInfo {
                file: v.segment.file_name().to_owned(),
                n_docs: v.segment.n_docs(),
                n_live: v.live_docs,
            })
            .collect())
    }

    /// Ids of every document of segment `file` of the latest committed snapshot, indexed by
    /// document number (deleted documents included: their numbers stay in the segment).
    /// `NotFound` if the snapshot has no such segment (e.g. a compaction replaced it).
    pub fn segment_ids(&self, file: &str) -> Result<Vec<String>> {
        let snap = self.snapshot()?;
        let v = snap
            .segments()
            .iter()
            .find(|v| v.segment.file_name() == file)
            .ok_or_else(|| {
                LatixError::NotFound(format!("the index has no segment {file:?} (any more)"))
            })?;
        let seg = &v.segment;
        (0..seg.n_docs() as u32)
            .map(|d| seg.id(d).map(str::to_owned))
            .collect()
    }
}

/// Figures of an index snapshot ([`Index::stats`]).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct IndexStats {
    /// True for a compressed index.
    pub compressed: bool,
    /// Live documents.
    pub n_docs: usize,
    /// Token vectors of live documents.
    pub n_tokens: u64,
    /// Segments of the snapshot.
    pub n_segments: usize,
    /// Bytes of every file of the snapshot (segments, side files, codec, config, manifest,
    /// CURRENT), including not yet compacted deleted documents.
    pub bytes_on_disk: u64,
    /// A codec is trained (compressed index).
    pub trained: bool,
    /// Coarse centroids of the codec, if trained.
    pub n_centroids: Option<usize>,
    /// Bytes of residual code per token, if trained.
    pub code_bytes_per_token: Option<usize>,
    /// Segments keep their full vectors (always true for a plain index).
    pub keep_vectors: bool,
}

impl Drop for Index {
    fn drop(&mut self) {
        self.close();
    }
}

/// The `(n_queries, k)` score and id arrays of a search result, all padding (`-inf`, `""`),
/// allocated fallibly (`k` is the caller's).
pub(crate) fn padded_results(nq: usize, k: usize) -> Result<(Vec<f32>, Vec<String>)> {
    let n = nq.saturating_mul(k);
    Ok((
        try_filled(n, f32::NEG_INFINITY, "search results (scores)")?,
        try_filled(n, String::new(), "search results (ids)")?,
    ))
}

/// The masks of [`DocFilter::Masks`] for each segment of `snap`, with its deleted documents
/// cleared; `None` if a segment of `snap` has no mask.
fn live_masks(snap: &Snapshot, masks: &SegmentMasks) -> Result<Option<Vec<Vec<u64>>>> {
    let mut out = Vec::with_capacity(snap.segments().len());
    for v in snap.segments() {
        let file = v.segment.file_name();
        let Some(m) = masks.get(file) else {
            return Ok(None);
        };
        let n = v.segment.n_docs();
        if m.len() != n.div_ceil(64) {
            return Err(LatixError::invalid(format!(
                "the mask of segment {file} has {} words; its {n} documents need {}",
                m.len(),
                n.div_ceil(64)
            )));
        }
        let mut b = m.clone();
        if !n.is_multiple_of(64) {
            if let Some(last) = b.last_mut() {
                *last &= (1u64 << (n % 64)) - 1;
            }
        }
        for &d in v.entry.tombstones.iter() {
            b[d as usize >> 6] &= !(1u64 << (d & 63));
        }
        out.push(b);
    }
    Ok(Some(out))
}

/// The set document numbers of each bitmap, ascending.
fn bitmap_docs(bits: &[Vec<u64>]) -> Vec<Vec<u32>> {
    bits.iter()
        .map(|b| {
            let mut docs = Vec::with_capacity(b.iter().map(|w| w.count_ones() as usize).sum());
            for (i, &w) in b.iter().enumerate() {
                let mut w = w;
                while w != 0 {
                    docs.push((i as u32) << 6 | w.trailing_zeros());
                    w &= w - 1;
                }
            }
            docs
        })
        .collect()
}

/// Number of documents per work item for segment `seg`, from its mean document size.
fn docs_per_chunk(seg: &Segment) -> u32 {
    let bytes_per_doc =
        (seg.n_tokens() as usize * seg.dim() * seg.dtype().size()) / seg.n_docs().max(1);
    (CHUNK_BYTES / bytes_per_doc.max(1)).clamp(1, 1024) as u32
}

/// Search over an explicit snapshot (the core of [`Index::search`], usable by other index kinds).
/// Inputs must be valid (k >= 1, each query a non-empty multiple of dim, finite).
pub fn search_snapshot(
    snap: &Snapshot,
    queries: &[&[f32]],
    k: usize,
    n_threads: Option<usize>,
    subset: Option<&[&str]>,
) -> Result<SearchResults> {
    // Subset: resolve ids to (segment, doc), sorted by insertion order, grouped per segment.
    let subset_docs: Option<Vec<Vec<u32>>> = subset.map(|ids| {
        let mut per: Vec<Vec<u32>> = vec![Vec::new(); snap.segments().len()];
        for id in ids {
            if let Some((s, d)) = snap.lookup(id) {
                per[s].push(d);
            }
        }
        for v in per.iter_mut() {
            v.sort_unstable();
            v.dedup();
        }
        per
    });
    search_snapshot_docs(snap, queries, k, n_threads, subset_docs)
}

/// [`search_snapshot`] restricted to `subset_docs[s]`: sorted, unique, live document numbers of
/// segment `s` for every segment of `snap` (`None`: every live document).
pub fn search_snapshot_docs(
    snap: &Snapshot,
    queries: &[&[f32]],
    k: usize,
    n_threads: Option<usize>,
    subset_docs: Option<Vec<Vec<u32>>>,
) -> Result<SearchResults> {
    let nq = queries.len();
    if k > MAX_RESULT_SLOTS || nq.saturating_mul(k) > MAX_RESULT_SLOTS {
        return Err(LatixError::invalid(format!(
            "k * n_queries must be at most {MAX_RESULT_SLOTS}, got k = {k} with {nq} queries"
        )));
    }
    let dim = snap.dim();
    let segs = snap.segments();
    if subset_docs.as_ref().is_some_and(|p| p.len() != segs.len()) {
        return Err(LatixError::invalid(
            "subset_docs must have one list per segment of the snapshot",
        ));
    }
    // Pack each query once for the kernel, not once per chunk of documents.
    let prepared = queries
        .iter()
        .map(|q| maxsim::PreparedQuery::new(q, dim))
        .collect::<Result<Vec<_>>>()?;
    // Work items are derived from a flat index through per-segment prefix sums: O(segments)
    // memory, however many documents.
    let mut starts = Vec::with_capacity(segs.len() + 1);
    let mut per_chunk = Vec::with_capacity(segs.len());
    starts.push(0usize);
    for (i, v) in segs.iter().enumerate() {
        let c = docs_per_chunk(&v.segment) as usize;
        let n = match &subset_docs {
            Some(per) => per[i].len(),
            None => v.segment.n_docs(),
        };
        per_chunk.push(c);
        starts.push(starts[i] + n.div_ceil(c));
    }
    let n_work = starts[segs.len()];
    let work = |w: usize| -> Work<'_> {
        let seg = starts.partition_point(|&s| s <= w) - 1;
        let j = w - starts[seg];
        let c = per_chunk[seg];
        match &subset_docs {
            Some(per) => {
                let list = &per[seg];
                Work::List {
                    seg,
                    docs: &list[j * c..((j + 1) * c).min(list.len())],
                }
            }
            None => {
                let n = segs[seg].segment.n_docs();
                Work::Range {
                    seg,
                    start: (j * c) as u32,
                    end: ((j + 1) * c).min(n) as u32,
                }
            }
        }
    };

    struct Acc {
        tops: Vec<TopK>,
        scores: Vec<f32>,
        offs: Vec<u64>,
    }
    let new_acc = || Acc {
        tops: vec![TopK::new(k); nq],
        scores: Vec::new(),
        offs: Vec::new(),
    };
    let process = |mut acc: Acc, w: usize| -> Result<Acc> {
        match work(w) {
            Work::Range { seg, start, end } => {
                let v = &segs[seg];
                let s = &v.segment;
                let offsets = s.offsets();
                let (lo, hi) = (offsets[start as usize], offsets[end as usize]);
                acc.offs.clear();
                acc.offs.extend(
                    offsets[start as usize..=end as usize]
                        .iter()
                        .map(|o| o - lo),
                );
                let n = (end - start) as usize;
                acc.scores.resize(n, 0.0);
                let rows = s.rows_checked(lo, hi)?;
                let tomb = &v.entry.tombstones;
                let t0 = tomb.partition_point(|&t| t < start);
                for (q, top) in prepared.iter().zip(acc.tops.iter_mut()) {
                    q.score_docs(rows, &acc.offs, &mut acc.scores);
                    let mut ti = t0;
                    for (i, &sc) in acc.scores.iter().enumerate() {
                        let d = start + i as u32;
                        if tomb.get(ti) == Some(&d) {
                            ti += 1;
                            continue;
                        }
                        top.push(Hit {
                            score: sc,
                            ord: ((seg as u64) << 32) | d as u64,
                        });
                    }
                }
            }
            Work::List { seg, docs } => {
                let s = &segs[seg].segment;
                let mut one = [0f32; 1];
                for &d in docs {
                    let (a, b) = s.doc_range(d);
                    let rows = s.rows_checked(a, b)?;
                    let offs = [0u64, b - a];
                    for (q, top) in prepared.iter().zip(acc.tops.iter_mut()) {
                        q.score_docs(rows, &offs, &mut one);
                        top.push(Hit {
                            score: one[0],
                            ord: ((seg as u64) << 32) | d as u64,
                        });
                    }
                }
            }
        }
        Ok(acc)
    };
    let tops: Vec<TopK> = if nq == 0 || n_work == 0 {
        vec![TopK::new(k); nq]
    } else if n_work == 1 || crate::parallel::resolve_threads(n_threads)? == 1 {
        // Nothing to parallelise: skip the hand-off to the pool (a thread wake-up costs more
        // than scoring a small index).
        (0..n_work).try_fold(new_acc(), process)?.tops
    } else {
        crate::parallel::install(n_threads, || {
            (0..n_work)
                .into_par_iter()
                .try_fold(new_acc, process)
                .map(|a| a.map(|a| a.tops))
                .try_reduce(
                    || vec![TopK::new(k); nq],
                    |a, b| Ok(a.into_iter().zip(b).map(|(x, y)| x.merge(y)).collect()),
                )
        })??
    };
    let (mut scores, mut ids) = padded_results(nq, k)?;
    for (qi, top) in tops.into_iter().enumerate() {
        // Sorted ascending by Hit's order = best first.
        for (r, h) in top.heap.into_sorted_vec().into_iter().enumerate() {
            let seg = (h.ord >> 32) as usize;
            let doc = (h.ord & 0xffff_ffff) as u32;
            scores[qi * k + r] = h.score;
            ids[qi * k + r] = segs[seg].segment.id(doc)?.to_owned();
        }
    }
    Ok(SearchResults {
        n_queries: nq,
        k,
        scores,
        ids,
    })
}
