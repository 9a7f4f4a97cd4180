//! The writer side of a handle: the write lock, staged changes, and how a commit is written and
//! published (staged segment, the kind's commit hook, new manifest, `CURRENT` switch, clean-up).

use std::collections::{BTreeSet, HashMap, HashSet};
use std::fs::{File, OpenOptions};
use std::path::Path;
use std::sync::atomic::Ordering;
use std::sync::{Arc, MutexGuard};

use super::validate;
use super::Index;
use crate::compressed::decode_segment_doc;
use crate::error::{LatixError, Result};
use crate::maxsim::DocVectors;
use crate::parallel::lock;
use crate::store::commit::{ensure_unreferenced, next_id, INDEX_FILE_PREFIX};
use crate::store::manifest::{manifest_name, Manifest, SegmentEntry, SEGMENT_PREFIX};
use crate::store::{
    check_regular, fsync_dir, snapshot::read_current, write_atomic, CommitContext, CommitHook,
    SegmentWriter, Snapshot, CURRENT_FILE, LOCK_FILE, MANIFEST_PREFIX, TMP_PREFIX,
};

/// The writer state of a handle that holds the write lock.
pub(super) struct Writer {
    /// The `flock`ed `LOCK` file (released when the last descriptor of it closes).
    _lock: File,
    /// Process that took the lock and created the staging file: a handle inherited through
    /// `fork()` finds another id here and must not act as the writer (see the module docs).
    pid: u32,
    pub(super) stage: Option<SegmentWriter>,
    /// Live staged ids -> staged document number.
    pub(super) staged_ids: HashMap<String, u32>,
    /// Staged documents deleted or replaced before their commit.
    pub(super) staged_dead: Vec<u32>,
    /// Committed documents deleted by staged operations: segment file -> document numbers.
    pub(super) deletes: HashMap<String, BTreeSet<u32>>,
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
    pub(super) fn new(lock: File) -> Writer {
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
    pub(super) fn exists(&self, snap: &Snapshot, id: &str) -> bool {
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
    pub(super) fn stage_delete(&mut self, snap: &Snapshot, id: &str) {
        if let Some(d) = self.staged_ids.remove(id) {
            self.staged_dead.push(d);
        } else if let Some((file, d)) = self.committed_live(snap, id) {
            self.deletes.entry(file).or_default().insert(d);
        }
    }
}

pub(super) fn take_lock(dir: &Path) -> Result<File> {
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
    Ok(crate::format::le_u32(&b, 0))
}

impl Index {
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
            validate::check_id(id, i)?;
        }
        validate::check_unique(ids.iter().copied())?;
        for (i, d) in docs.iter().enumerate() {
            let what = format!("embeddings[{i}]");
            validate::check_shape(*d, self.dim, &what)?;
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
                    validate::list_some(&existing)
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
            validate::check_id(id, i)?;
        }
        validate::check_unique(ids.iter().copied())?;
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
                validate::list_some(&missing)
            )));
        }
        for id in ids {
            w.stage_delete(&snap, id);
        }
        Ok(())
    }

    /// Takes the write lock if this handle does not hold it yet; on taking it, removes files a
    /// crashed writer left behind.
    pub(super) fn writer_mut<'a>(
        &self,
        g: &'a mut MutexGuard<'_, Option<Writer>>,
    ) -> Result<&'a mut Writer> {
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
    pub(super) fn lock_writer(&self) -> Result<MutexGuard<'_, Option<Writer>>> {
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

    /// A commit, then the merge policy; returns the merge's error, if one failed (the commit was
    /// published: its error is only what `commit_locked` returns).
    pub(super) fn commit_inner(&self, hook: Option<CommitHook<'_>>) -> Result<Option<LatixError>> {
        let mut g = self.lock_writer()?;
        let committing = crate::profile::span("commit");
        self.commit_locked(&mut g, hook)?;
        drop(committing);
        // Under the same hold of the writer mutex: nothing is staged against segments a merge
        // replaces. The commit above is published whatever the merges do.
        let merge_error = if g.is_some() {
            let _merging = crate::profile::span("merge-policy");
            self.run_merge_policy()
        } else {
            None
        };
        crate::profile::report("commit");
        Ok(merge_error)
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
        let (switched, res) = self.kind.with_hook(hook, false, None, |hook| {
            self.publish(
                &base,
                segments,
                stage.as_mut(),
                Vec::new(),
                staged_dead,
                hook,
            )
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
    /// temporary name so that the caller can keep it staged. The new manifest lists `segments`,
    /// then the staged segment (if any), then `tail` (a merge of a run inside the segment list
    /// puts its output where the run was).
    pub(super) fn publish(
        &self,
        base: &Arc<Snapshot>,
        segments: Vec<SegmentEntry>,
        stage: Option<&mut SegmentWriter>,
        tail: Vec<SegmentEntry>,
        stage_dead: Vec<u32>,
        hook: Option<CommitHook<'_>>,
    ) -> (bool, Result<()>) {
        let mut stage = stage.filter(|s| s.n_docs() > 0);
        if let Err(e) =
            self.write_commit(base, segments, stage.as_deref_mut(), tail, stage_dead, hook)
        {
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

    /// Writes the staged segment (if any), runs the hook, writes the new manifest (`segments`,
    /// the staged segment, `tail`) and switches `CURRENT` to it.
    fn write_commit(
        &self,
        base: &Arc<Snapshot>,
        mut segments: Vec<SegmentEntry>,
        stage: Option<&mut SegmentWriter>,
        tail: Vec<SegmentEntry>,
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
            // (A vector-free stage, a codes-domain compaction's, is the final file.)
            let transient = stage.has_vectors() && self.kind.stage_is_transient(bm);
            let sealing = crate::profile::span("commit/seal-staged");
            let header_crc = stage.finish_with(&self.dir.join(&file), !transient)?;
            drop(sealing);
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
        segments.extend(tail);
        // A segment whose every document is deleted is dropped (its file removed after), and so
        // leaves the commit's new segments too: the hook must not encode a file the manifest
        // does not reference (a staged segment whose documents were all deleted before the commit).
        segments.retain(|s| (s.tombstones.len() as u64) < s.n_docs);
        new_segments.retain(|f| segments.iter().any(|s| &s.file == f));
        manifest.segments = segments;
        if let Some(hook) = hook {
            let mut ctx = CommitContext::new(&self.dir, &mut manifest, new_segments, base);
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

    /// Compaction (see [`Index::compact_with`]); a success resolves a merge failure recorded by
    /// the merge policy.
    pub(super) fn compact_inner(
        &self,
        hook: Option<CommitHook<'_>>,
        retrain: bool,
        memory: u64,
        codes_domain: bool,
    ) -> Result<()> {
        let res = self.compact_all(hook, retrain, memory, codes_domain);
        if res.is_ok() {
            self.merges_resolved();
        }
        res
    }

    fn compact_all(
        &self,
        hook: Option<CommitHook<'_>>,
        retrain: bool,
        memory: u64,
        codes_domain: bool,
    ) -> Result<()> {
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
            if self.kind.needs_upgrade(&base)? {
                return self.commit_locked(&mut g, Some(&mut |_: &mut CommitContext<'_>| Ok(())));
            }
            return Ok(());
        }
        self.compact_committed(base, hook, retrain, memory, codes_domain)
    }

    /// The compaction of [`Index::compact_inner`] of the committed snapshot `base` (nothing
    /// staged; the caller holds the writer mutex and the write lock): also the merge policy's
    /// growth retraining, right after a commit.
    pub(super) fn compact_committed(
        &self,
        base: Arc<Snapshot>,
        hook: Option<CommitHook<'_>>,
        retrain: bool,
        memory: u64,
        codes_domain: bool,
    ) -> Result<()> {
        let all = 0..base.segments().len();
        if codes_domain && !retrain {
            // Compressed indexes only: plain segments keep the commit hook's path (which trains
            // a codec once the index has enough tokens).
            if let Some(true) = self.kind.merge_mode(&base, all.clone())? {
                return self.merge_segments(&base, all, hook, memory, true);
            }
        }
        let state = self.kind.decoder(&base)?;
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
                    let rows = decode_segment_doc(state.as_deref(), s, d, (a, b))?;
                    stage.add_doc(seg.id(d)?, DocVectors::F32(&rows))?;
                }
            }
        }
        // On failure the temporary segment is removed when `stage` drops; nothing changed.
        let decoded = state.is_some().then_some(&lengths[..]);
        self.kind.with_hook(hook, retrain, decoded, |hook| {
            self.publish(
                &base,
                Vec::new(),
                Some(&mut stage),
                Vec::new(),
                Vec::new(),
                hook,
            )
            .1
        })
    }
}
