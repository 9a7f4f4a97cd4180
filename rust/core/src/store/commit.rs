//! The commit API of the store: what a commit hook may add to a commit ([`CommitContext`]: named
//! files of the index and of its segments, vector-free copies of segments) before the manifest
//! switch publishes it. Index kinds attach their derived files (a compressed index's codec and
//! inverted lists) through it, so the store knows nothing of them.

use std::path::Path;

use super::manifest::{named_file_checksum, Manifest, SegmentEntry, SEGMENT_PREFIX};
use super::{write_atomic, Segment, SegmentWriter, Snapshot, CURRENT_FILE};
use crate::error::{LatixError, Result};

/// Prefix of index-level named files (so a writer recognises one orphaned by a crash).
pub(crate) const INDEX_FILE_PREFIX: &str = "idx-";

/// What a commit hook may do: add index-level or per-segment named files to the commit (e.g. a
/// trained codec and each new segment's codes). Files are written atomically and published by the
/// same manifest switch as the rest of the commit.
pub struct CommitContext<'a> {
    dir: &'a Path,
    manifest: &'a mut Manifest,
    new_segments: Vec<String>,
    previous: &'a Snapshot,
}

impl<'a> CommitContext<'a> {
    /// The context of a commit of `manifest` (built on `previous`) in directory `dir`, whose
    /// new segments are `new_segments`.
    pub(crate) fn new(
        dir: &'a Path,
        manifest: &'a mut Manifest,
        new_segments: Vec<String>,
        previous: &'a Snapshot,
    ) -> CommitContext<'a> {
        CommitContext {
            dir,
            manifest,
            new_segments,
            previous,
        }
    }

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
            Some(c) if crate::format::checksum_ok(bytes) => Ok(c),
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

impl CommitContext<'_> {
    /// Makes the finished file `tmp` (in the index directory, its contents fsynced, ending with
    /// the crc32c `checksum` of the rest) the named side file `name` of segment `segment_file`:
    /// [`CommitContext::write_segment_file`] for a file written by streaming (a codes-domain
    /// merge), which never holds the whole file in memory. The rename is made durable by the
    /// directory fsync of the manifest write that publishes the commit.
    pub fn adopt_segment_file(
        &mut self,
        segment_file: &str,
        name: &str,
        tmp: &Path,
        checksum: u32,
    ) -> Result<()> {
        Self::check_name(name)?;
        let gen = self.manifest.generation;
        self.entry_mut(segment_file)?;
        let stem = segment_file.trim_end_matches(".lxs");
        let file = format!("{stem}.{name}-{gen:020}");
        self.claim(&file)?;
        let target = self.dir.join(&file);
        std::fs::rename(tmp, &target).map_err(|e| LatixError::io(&target, e))?;
        let e = self.entry_mut(segment_file)?;
        e.side_files.retain(|(n, _)| n != name);
        e.side_files.push((name.to_owned(), file.clone()));
        self.manifest.checksums.insert(file, checksum);
        Ok(())
    }

    /// The index directory.
    pub fn dir(&self) -> &Path {
        self.dir
    }
}

/// A commit hook: called after new segments are written, before the manifest switch.
pub type CommitHook<'h> = &'h mut dyn FnMut(&mut CommitContext<'_>) -> Result<()>;

/// `id + 1`, or `Corrupted` when a counter of the manifest (generation, next segment id) cannot
/// advance: never a wrap to 0, which would reuse names of live files.
pub(crate) fn next_id(dir: &Path, id: u64) -> Result<u64> {
    id.checked_add(1).ok_or_else(|| {
        LatixError::corrupted(
            dir.join(CURRENT_FILE),
            format!("a counter of the manifest is exhausted ({id}): the index cannot commit"),
        )
    })
}

/// `Corrupted` if any of `manifests` references `file` (see [`CommitContext`]'s `claim`).
pub(crate) fn ensure_unreferenced(dir: &Path, file: &str, manifests: &[&Manifest]) -> Result<()> {
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
