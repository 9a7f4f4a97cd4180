//! Creating and opening an index: the new directory's files (the kind's configuration, an
//! optional given codec, the empty first manifest, `CURRENT`), written so that a failed create
//! leaves no index behind, and opening an existing one (O(1) in its data: `CURRENT`, the
//! manifest, the segments' maps).

use super::*;

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
        Self::create_inner(path.as_ref(), dim, dtype, compression, None)
    }

    /// [`Index::create_with`] for a compressed index that starts with a given, already trained
    /// codec (`codec`: the bytes of a codec file, e.g. another index's [`Index::codec_bytes`] or
    /// [`crate::compressed::train_codec_on_documents`]'s output), so that several indexes (the
    /// shards of one collection) share one codec. The index never trains: its first commit
    /// encodes with this codec, whatever its size (`train_min_tokens` does not apply), and a
    /// `compression` with `retrain_growth` is refused (`InvalidArgument`), as growth retraining
    /// would replace the shared codec; only an explicit `compact(retrain)` retrains.
    ///
    /// The codec is checked before anything is written: a damaged file fails with `Corrupted`
    /// (magic, sizes, checksum) or `UnsupportedVersion`; a codec of another dimension, with other
    /// code bytes per vector than `compression` gives, or with another number of centroids than
    /// `compression.n_centroids` (when set) fails with `InvalidArgument`.
    pub fn create_with_codec(
        path: impl AsRef<Path>,
        dim: usize,
        dtype: Dtype,
        compression: Compression,
        codec: &[u8],
    ) -> Result<Index> {
        Self::create_inner(path.as_ref(), dim, dtype, Some(compression), Some(codec))
    }

    fn create_inner(
        path: &Path,
        dim: usize,
        dtype: Dtype,
        compression: Option<Compression>,
        codec: Option<&[u8]>,
    ) -> Result<Index> {
        let dir = path.to_path_buf();
        if dim == 0 || dim > MAX_DIM {
            return Err(LatixError::invalid(format!(
                "dim must be between 1 and {MAX_DIM}, got {dim}"
            )));
        }
        if let Some(c) = &compression {
            c.validate(dim)?;
            if let Some(b) = codec {
                if c.retrain_growth != 0 {
                    // A retraining would replace the shared codec and the shards would diverge.
                    return Err(LatixError::invalid(format!(
                        "retrain_growth={} retrains the codec as the index grows, but an index \
                         created with a given (shared) codec must keep it: pass retrain_growth=0",
                        c.retrain_growth
                    )));
                }
                crate::compressed::check_given_codec(c, dim, b)?;
            }
        }
        let kind = Kind::new(compression);
        let file_name = |name: &str| format!("{INDEX_FILE_PREFIX}{name}-{:020}", 0);
        let config_file = file_name(crate::compressed::CONFIG_FILE);
        let codec_file = file_name(crate::compressed::CODEC_FILE);
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
                    && name != codec_file
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
        for (name, bytes) in kind.create_files(codec) {
            let file = file_name(name);
            write_atomic(&dir, &file, &bytes)?;
            index_files.push((name.to_owned(), file.clone()));
            if let Some(crc) = named_file_checksum(&bytes) {
                checksums.insert(file, crc);
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
            kind,
            closed: AtomicBool::new(false),
            snapshot: Mutex::new(Some(snap)),
            writer: Mutex::new(Some(Writer::new(lock_file))),
            writer_pid: AtomicU32::new(std::process::id()),
            merge_policy: Mutex::new(Some(MergePolicy::default())),
            merge_health: Mutex::new(MergeHealth::default()),
            growth_deferred: Mutex::new(None),
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
        let index = Index {
            dim: snap.dim(),
            dtype: snap.dtype(),
            kind: Kind::load(&snap)?,
            dir,
            closed: AtomicBool::new(false),
            snapshot: Mutex::new(Some(snap)),
            writer: Mutex::new(None),
            writer_pid: AtomicU32::new(0),
            merge_policy: Mutex::new(Some(MergePolicy::default())),
            merge_health: Mutex::new(MergeHealth::default()),
            growth_deferred: Mutex::new(None),
        };
        if mode == OpenMode::Write {
            let mut w = lock(&index.writer);
            index.writer_mut(&mut w)?;
        }
        Ok(index)
    }
}
