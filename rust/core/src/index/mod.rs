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
//! Layout: this file is the handle (the mutating calls, reads), which only validates
//! (`validate`) and dispatches; `create` creates and opens index directories; `writer` holds the write lock, staged changes and
//! the commit protocol; `kind` is the seam between the index kinds (an index created with a
//! [`Compression`] configuration is *compressed*: its commits run the hook of
//! [`crate::compressed`] and its searches go through candidate generation from codes once a codec
//! is trained); `exact` is exhaustive exact search.

mod create;
mod exact;
mod kind;
mod validate;
mod writer;

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::{Arc, Mutex};

use crate::compressed::{CompressedSearch, Compression};
use crate::error::{LatixError, Result};
use crate::parallel::lock;
use crate::store::commit::INDEX_FILE_PREFIX;
use crate::store::manifest::{manifest_name, named_file_checksum, Manifest};
use crate::store::snapshot::read_current;
use crate::store::{write_atomic, Dtype, Snapshot, CURRENT_FILE, LOCK_FILE, TMP_PREFIX};
use kind::{Kind, View};
use writer::{take_lock, Writer};

mod merge;
pub use merge::{MergeHealth, MergePolicy, DEFAULT_MAX_MERGE_TOKENS};

pub use crate::store::commit::{CommitContext, CommitHook};
pub use crate::types::{
    DocFilter, OwnedVectors, SearchResults, SegmentInfo, SegmentMasks, MAX_DIM, MAX_ID_BYTES,
    MAX_PADDED_K, MAX_RESULT_SLOTS,
};
pub use exact::{search_snapshot, search_snapshot_docs, CHUNK_BYTES};

/// How [`Index::open`] opens an index.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum OpenMode {
    /// Read-only until the first mutating call, which then takes the write lock.
    Read,
    /// Take the write lock now (fails with `Locked` if another writer holds it).
    Write,
}

/// A handle on an index directory. Thread-safe: searches run concurrently; mutations serialise.
pub struct Index {
    dir: PathBuf,
    dim: usize,
    dtype: Dtype,
    /// Exact or compressed (fixed at create, persisted in the index), with the kind's state.
    kind: Kind,
    closed: AtomicBool,
    snapshot: Mutex<Option<Arc<Snapshot>>>,
    writer: Mutex<Option<Writer>>,
    /// Process id of the writer in `writer` (0: none), readable without the mutex, so that a
    /// forked child refuses writes (and closes) without waiting on a mutex that a thread of the
    /// parent may have held at the time of the fork.
    writer_pid: AtomicU32,
    /// The merge policy run after every commit (`None`: off); see [`merge::MergePolicy`].
    merge_policy: Mutex<Option<MergePolicy>>,
    /// Merges of the policy that failed after their commit was published (see
    /// [`Index::merge_health`]).
    merge_health: Mutex<MergeHealth>,
    /// Pooled vectors at the last growth retraining that failed or was skipped: none is tried
    /// again until the index has grown by another `retrain_growth` factor or a compaction
    /// succeeded (see `merge.rs`).
    growth_deferred: Mutex<Option<u64>>,
}

impl std::fmt::Debug for Index {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Index")
            .field("dir", &self.dir)
            .field("dim", &self.dim)
            .field("dtype", &self.dtype)
            .field("compression", &self.kind.compression())
            .finish()
    }
}

impl Index {
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
        self.kind.compression()
    }

    /// The bytes of the index's codec file (checked against the manifest and parsed), as
    /// [`Index::create_with_codec`] takes them; `None` for an exact index or a compressed one
    /// that has not trained its codec yet.
    pub fn codec_bytes(&self) -> Result<Option<Vec<u8>>> {
        self.ensure_open()?;
        let snap = self.snapshot()?;
        self.kind.codec_bytes(&snap)
    }

    /// The latest snapshot with what the index kind derives from it (see [`Kind::refresh`]).
    fn refresh(&self) -> Result<View> {
        self.kind.refresh(&self.dir, || self.snapshot())
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

    /// Makes staged changes durable and visible, atomically (a no-op without staged changes),
    /// then runs the merge policy. An error means nothing was published (or, rarely, that the
    /// publication's last step failed after `CURRENT` switched); a failed merge of the policy
    /// after a published commit is not the commit's error: it is recorded in
    /// [`Index::merge_health`], the index keeps the state the commit published, and the next
    /// commit (or `compact`) tries again. [`Index::commit_report`] also returns it.
    pub fn commit(&self) -> Result<()> {
        self.commit_inner(None).map(drop)
    }

    /// [`Index::commit`], returning the error of a merge of the policy that failed after the
    /// commit was published (`Ok(Some(e))`: the commit happened; the merge is retried later).
    pub fn commit_report(&self) -> Result<Option<LatixError>> {
        self.commit_inner(None)
    }

    /// [`Index::commit`] with a hook that may attach named files to the commit (always commits
    /// when a hook is given, even without staged changes). On a compressed index the compression
    /// hook runs first.
    pub fn commit_with(&self, hook: Option<CommitHook<'_>>) -> Result<()> {
        self.commit_inner(hook).map(drop)
    }

    /// Commits staged changes, then rewrites all live documents into one new segment (dropping
    /// deleted ones and any per-segment side files), commits that, and removes the old files.
    /// Ids and insertion order are preserved. Readers keep their snapshots. `hook` may attach
    /// files (e.g. re-encoded codes) to the compacted segment.
    pub fn compact_with(&self, hook: Option<CommitHook<'_>>) -> Result<()> {
        self.compact_inner(hook, false, crate::compressed::DEFAULT_MERGE_MEMORY, true)
    }

    /// [`Index::compact_with`] without a hook.
    pub fn compact(&self) -> Result<()> {
        self.compact_with(None)
    }

    /// Compaction of a compressed index: merges every live document into one segment with one
    /// set of inverted lists. Without `retrain`, when every segment holds current lists of the
    /// index's codec (and, in a fidelity tier, refinement files of that codec), the lists are
    /// merged in the codes domain and the refinement files losslessly (no decoding: codes, norm
    /// scales, residual codes and levels and so search scores are unchanged; the lists' memory is
    /// bounded by [`crate::compressed::DEFAULT_MERGE_MEMORY`], see [`Index::compact_options`],
    /// the merged refinement file is assembled in memory).
    /// Otherwise the merged segment is re-encoded: `retrain` first retrains the codec on the live
    /// tokens (see [`Index::compact_with`]), and segments without vectors contribute their
    /// decoded approximations (lossy: re-encoding a reconstruction may change a few codes, and a
    /// codec retrained on reconstructions learns the reconstructions, not the original vectors).
    pub fn compact_retrain(&self, retrain: bool) -> Result<()> {
        self.compact_options(retrain, None)
    }

    /// [`Index::compact_retrain`] with the memory setting of a codes-domain merge: `memory` bytes
    /// of mapped input read between releases of their pages (default
    /// [`crate::compressed::DEFAULT_MERGE_MEMORY`], 1 GiB; at least 1 MiB), which bounds the
    /// merge's resident memory independently of the corpus (plus a few MB of buffers and 8 bytes
    /// per document and per inverted sub-list).
    pub fn compact_options(&self, retrain: bool, memory: Option<u64>) -> Result<()> {
        if retrain && self.kind.compression().is_none() {
            return Err(LatixError::invalid(
                "retrain applies to compressed indexes only (create the index with compression)",
            ));
        }
        if memory == Some(0) {
            return Err(LatixError::invalid(
                "memory must be a positive number of bytes",
            ));
        }
        let memory = memory.unwrap_or(crate::compressed::DEFAULT_MERGE_MEMORY);
        self.compact_inner(None, retrain, memory, true)
    }

    /// Compaction by the re-encoding path even where the codes-domain merge applies (decoding
    /// vector-free segments): the baseline of `benches/bench_compact.py` and a reference of the
    /// tests. Not for users: it is lossy without kept vectors and its memory grows with the corpus.
    #[doc(hidden)]
    pub fn compact_reencode(&self) -> Result<()> {
        self.compact_inner(None, false, crate::compressed::DEFAULT_MERGE_MEMORY, false)
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
        // One refresh: the snapshot and the codec state that decodes it belong together.
        let view = self.refresh()?;
        self.kind
            .get(&view, id)?
            .ok_or_else(|| LatixError::NotFound(format!("id {id:?} is not in the index")))
    }

    /// Full integrity check of the committed snapshot (reads every byte of every segment).
    pub fn verify(&self) -> Result<()> {
        let snap = self.snapshot()?;
        snap.verify()?;
        self.kind.verify(&snap)
    }

    /// Size and state figures of the latest committed snapshot.
    pub fn stats(&self) -> Result<IndexStats> {
        let (view, bytes) = loop {
            let view = self.refresh()?;
            let snap = &view.snap;
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
                break (view, b);
            }
        };
        let (trained, n_centroids, code_bytes) = self.kind.codec_stats(&view);
        let snap = &view.snap;
        let compression = self.kind.compression();
        Ok(IndexStats {
            compressed: compression.is_some(),
            n_docs: snap.len(),
            n_tokens: snap.num_tokens(),
            n_segments: snap.segments().len(),
            bytes_on_disk: bytes,
            trained,
            n_centroids,
            code_bytes_per_token: code_bytes,
            keep_vectors: compression.is_none_or(|c| c.keep_vectors),
            merge_health: self.merge_health(),
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
        self.kind.check_options(&opts)?;
        validate::check_search(queries, k, self.dim, n_threads, opts.nprobe)?;
        let view = self.refresh()?;
        let snap = &view.snap;
        if k > MAX_PADDED_K.max(snap.len()) {
            return Err(LatixError::invalid(format!(
                "k = {k} exceeds both the number of documents ({}) and {MAX_PADDED_K}; the results \
                 would be mostly padding",
                snap.len()
            )));
        }
        let Some(allowed) = kind::resolve(snap, filter)? else {
            return Ok(None);
        };
        self.kind
            .search(&view, queries, k, n_threads, allowed, opts)
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
    /// Merges of this handle's merge policy that failed after their commit was published.
    pub merge_health: MergeHealth,
}

impl Drop for Index {
    fn drop(&mut self) {
        self.close();
    }
}
