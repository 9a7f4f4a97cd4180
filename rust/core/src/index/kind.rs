//! The index-kind seam: everything that differs between a plain (exact) index and a compressed
//! one, behind one enum, so the handle in [`super`] only dispatches.
//!
//! | step     | [`Kind::Exact`]              | [`Kind::Compressed`]                                     |
//! |----------|------------------------------|----------------------------------------------------------|
//! | create   | nothing                      | writes the [`Compression`] configuration file            |
//! | commit   | the user's hook only         | codec training / encoding hook, then the user's hook     |
//! | refresh  | the latest snapshot          | the snapshot with its codec and inverted lists (cached)  |
//! | search   | exhaustive exact MaxSim      | generate -> refine -> rerank (vectors or tier) once trained |
//! | get      | stored vectors               | decoded codes (or tier file) for a vector-free segment   |
//! | verify   | the store's check            | + configuration, codec, inverted-list and tier files     |
//! | stats    | `compressed: false`          | codec figures                                            |

use std::path::Path;
use std::sync::{Arc, Mutex};

use super::exact::{bitmap_docs, search_snapshot, search_snapshot_docs};
use crate::compressed::{self, decode_segment_doc, CState, CompressedSearch, Compression};
use crate::error::{LatixError, Result};
use crate::maxsim::DocVectors;
use crate::parallel::lock;
use crate::store::manifest::Manifest;
use crate::store::snapshot::read_current;
use crate::store::{CommitContext, CommitHook, Snapshot};
use crate::types::{DocFilter, OwnedVectors, SearchResults, SegmentMasks};

/// What an index is, fixed at create and persisted (a compressed index has a configuration
/// file).
pub(crate) enum Kind {
    /// Full vectors, exhaustive exact MaxSim.
    Exact,
    /// Codec + inverted lists (see [`crate::compressed`]).
    Compressed(CompressedKind),
}

/// The state of a compressed index handle.
pub(crate) struct CompressedKind {
    cfg: Compression,
    /// Codec and inverted lists of the latest snapshot used.
    state: Mutex<Option<Arc<CState>>>,
}

/// A committed snapshot with what the index kind derives from it (one [`Kind::refresh`]).
pub(crate) struct View {
    pub(crate) snap: Arc<Snapshot>,
    /// Codec and inverted lists of `snap` (compressed index only).
    state: Option<Arc<CState>>,
}

/// The documents a search may return, resolved against the searched snapshot.
pub(crate) enum Allowed<'a> {
    /// Every live document.
    All,
    /// The live documents with these ids.
    Ids(&'a [&'a str]),
    /// One bitmap of live allowed documents per segment, and the exhaustive threshold of
    /// [`DocFilter::Masks`].
    Bits(Vec<Vec<u64>>, usize),
}

impl Kind {
    /// The kind of an index with configuration `compression`.
    pub(crate) fn new(compression: Option<Compression>) -> Kind {
        match compression {
            None => Kind::Exact,
            Some(cfg) => Kind::Compressed(CompressedKind {
                cfg,
                state: Mutex::new(None),
            }),
        }
    }

    /// The kind of the index whose latest snapshot is `snap`.
    pub(crate) fn load(snap: &Snapshot) -> Result<Kind> {
        Ok(Kind::new(Compression::load(snap)?))
    }

    /// The compression configuration (`None` for a plain, exact index).
    pub(crate) fn compression(&self) -> Option<&Compression> {
        match self {
            Kind::Exact => None,
            Kind::Compressed(c) => Some(&c.cfg),
        }
    }

    /// Index-level files of a new index: `(name, bytes)` (the configuration of a compressed one,
    /// and the codec it was given, already checked by [`Index::create_with_codec`]).
    pub(crate) fn create_files(&self, codec: Option<&[u8]>) -> Vec<(&'static str, Vec<u8>)> {
        match self {
            Kind::Exact => vec![],
            Kind::Compressed(c) => {
                let mut files = vec![(compressed::CONFIG_FILE, c.cfg.encode())];
                if let Some(b) = codec {
                    files.push((compressed::CODEC_FILE, b.to_vec()));
                }
                files
            }
        }
    }

    /// The bytes of the codec of snapshot `snap` (checked against the manifest's record of the
    /// file and parsed), `None` for an exact index or a compressed one not yet trained.
    pub(crate) fn codec_bytes(&self, snap: &Snapshot) -> Result<Option<Vec<u8>>> {
        if matches!(self, Kind::Exact) {
            return Ok(None);
        }
        compressed::read_codec_bytes(snap)
    }

    /// The latest snapshot `latest()` returns, with its codec and inverted lists (compressed
    /// index). A concurrent commit may remove the side files of the snapshot just loaded before
    /// they are opened: then the newer snapshot is loaded instead, as [`Snapshot::load`] does for
    /// segments. A file missing while `CURRENT` still names the snapshot is damage.
    pub(crate) fn refresh(
        &self,
        dir: &Path,
        latest: impl Fn() -> Result<Arc<Snapshot>>,
    ) -> Result<View> {
        let c = match self {
            Kind::Exact => {
                return Ok(View {
                    snap: latest()?,
                    state: None,
                })
            }
            Kind::Compressed(c) => c,
        };
        let mut tries = 0;
        loop {
            let snap = latest()?;
            match c.state_for(&snap) {
                Ok(st) => {
                    st.check_sizes(&snap)?;
                    return Ok(View {
                        snap,
                        state: Some(st),
                    });
                }
                Err(LatixError::Io { path, source })
                    if source.kind() == std::io::ErrorKind::NotFound =>
                {
                    tries += 1;
                    let moved = read_current(dir)? != snap.manifest_name();
                    if !moved || tries > 20 {
                        return Err(LatixError::corrupted(
                            dir.join(snap.manifest_name()),
                            format!("references a missing file ({})", path.display()),
                        ));
                    }
                }
                Err(e) => return Err(e),
            }
        }
    }

    /// Wraps a user hook with the commit hook of the kind (`retrain`: retrain the codec in this
    /// commit; `decoded_input`: the new segment holds decoded approximations, with these original
    /// token counts) and calls `f` with the result.
    pub(crate) fn with_hook<R>(
        &self,
        user: Option<CommitHook<'_>>,
        retrain: bool,
        decoded_input: Option<&[u64]>,
        f: impl FnOnce(Option<CommitHook<'_>>) -> R,
    ) -> R {
        match (self, user) {
            (Kind::Exact, user) => f(user),
            (Kind::Compressed(c), mut user) => {
                let mut combined = |ctx: &mut CommitContext<'_>| -> Result<()> {
                    compressed::commit_hook(ctx, &c.cfg, retrain, decoded_input, None)?;
                    if let Some(h) = user.as_mut() {
                        h(ctx)?;
                    }
                    Ok(())
                };
                f(Some(&mut combined))
            }
        }
    }

    /// True when a new segment committed on top of `base` is rewritten vector-free by the commit
    /// hook (a compressed index that drops vectors and already has a codec): its vector-bearing
    /// file is transient.
    pub(crate) fn stage_is_transient(&self, base: &Manifest) -> bool {
        self.compression().is_some_and(|c| !c.keep_vectors)
            && base
                .index_files
                .iter()
                .any(|(n, _)| n == compressed::CODEC_FILE)
    }

    /// The pooled vectors of the compressed index `snap` when it is due for a growth retraining
    /// (its configuration's `retrain_growth`, see [`compressed::Compression::growth_due`]), and
    /// its `retrain_growth` factor; `None`: not due.
    pub(crate) fn growth_due(&self, snap: &Snapshot) -> Result<Option<(u64, u32)>> {
        match self {
            Kind::Exact => Ok(None),
            Kind::Compressed(c) => {
                Ok(compressed::growth_due(snap, &c.cfg)?.map(|p| (p, c.cfg.retrain_growth)))
            }
        }
    }

    /// True when compacting `snap` without merging is still worth a commit: inverted lists an
    /// older latix wrote are rewritten in the current format.
    pub(crate) fn needs_upgrade(&self, snap: &Snapshot) -> Result<bool> {
        match self {
            Kind::Exact => Ok(false),
            Kind::Compressed(_) => compressed::has_old_lists(snap),
        }
    }

    /// How segments `range` of `snap` merge without decoding or re-encoding: `Some(true)` with a
    /// codes-domain merge of their inverted lists, `Some(false)` as plain segments (vectors, no
    /// side files), `None` when they cannot (see [`compressed::merge_mode`]).
    pub(crate) fn merge_mode(
        &self,
        snap: &Snapshot,
        range: std::ops::Range<usize>,
    ) -> Result<Option<bool>> {
        match self {
            Kind::Compressed(c) => compressed::merge_mode(snap, &c.cfg, range),
            Kind::Exact => {
                let segs = snap.segments().get(range).unwrap_or(&[]);
                let plain = !segs.is_empty()
                    && segs
                        .iter()
                        .all(|v| v.segment.has_vectors() && v.entry.side_files.is_empty());
                Ok(plain.then_some(false))
            }
        }
    }

    /// The state needed to decode the vector-free segments of `snap` (`None` if it has none).
    pub(crate) fn decoder(&self, snap: &Snapshot) -> Result<Option<Arc<CState>>> {
        match self {
            Kind::Compressed(c) if snap.segments().iter().any(|v| !v.segment.has_vectors()) => {
                Ok(Some(c.state_for(snap)?))
            }
            _ => Ok(None),
        }
    }

    /// `InvalidInput` if `opts` does not apply to this kind.
    pub(crate) fn check_options(&self, opts: &CompressedSearch) -> Result<()> {
        match self.compression() {
            None if opts.nprobe.is_some()
                || opts.rerank.is_some()
                || opts.refine.is_some()
                || opts.rerank_depth.is_some() =>
            {
                Err(LatixError::invalid(
                    "nprobe, rerank, refine and rerank_depth apply to compressed indexes only",
                ))
            }
            Some(c)
                if opts.rerank == Some(true)
                    && !c.keep_vectors
                    && c.fidelity == compressed::Fidelity::Codes =>
            {
                Err(LatixError::invalid(
                    "rerank=True needs the full vectors or a fidelity tier, and this index was \
                     created with keep_vectors=False and fidelity=\"codes\"",
                ))
            }
            _ => Ok(()),
        }
    }

    /// Searches `view` (inputs validated by the caller): candidate generation from codes once a
    /// codec is trained, exhaustive exact MaxSim otherwise.
    pub(crate) fn search(
        &self,
        view: &View,
        queries: &[&[f32]],
        k: usize,
        n_threads: Option<usize>,
        allowed: Allowed<'_>,
        opts: CompressedSearch,
    ) -> Result<SearchResults> {
        let snap = &view.snap;
        if let (Some(cfg), Some(st)) = (self.compression(), &view.state) {
            if st.codec.is_some() {
                let (subset, bits, exhaustive_below) = match allowed {
                    Allowed::All => (None, None, 0),
                    Allowed::Ids(ids) => (Some(ids), None, 0),
                    Allowed::Bits(b, e) => (None, Some(b), e),
                };
                return compressed::search::search_snapshot(
                    snap,
                    st,
                    queries,
                    k,
                    n_threads,
                    subset,
                    opts,
                    cfg.keep_vectors,
                    bits,
                    exhaustive_below,
                );
            }
        }
        match allowed {
            Allowed::Bits(b, _) => {
                search_snapshot_docs(snap, queries, k, n_threads, Some(bitmap_docs(&b)))
            }
            Allowed::Ids(ids) => search_snapshot(snap, queries, k, n_threads, Some(ids)),
            Allowed::All => search_snapshot(snap, queries, k, n_threads, None),
        }
    }

    /// The vectors of `id` in `view`, if it is a live document: decoded from its codes when its
    /// segment is vector-free, otherwise copied from the segment.
    pub(crate) fn get(&self, view: &View, id: &str) -> Result<Option<OwnedVectors>> {
        let snap = &view.snap;
        if let Some((s, d)) = snap.lookup(id) {
            if !snap.segments()[s].segment.has_vectors() {
                let range = snap.segments()[s].segment.doc_range(d);
                let rows = decode_segment_doc(view.state.as_deref(), s, d, range)?;
                return Ok(Some(OwnedVectors::from_f32(rows, snap.dtype())));
            }
        }
        let copy = |what: &str| format!("a copy of the vectors of {id:?} ({what})");
        Ok(match snap.get(id)? {
            Some(DocVectors::F16(v)) => {
                let mut out = crate::error::try_vec(v.len(), &copy("float16"))?;
                out.extend_from_slice(v);
                Some(OwnedVectors::F16(out))
            }
            Some(DocVectors::F32(v)) => {
                let mut out = crate::error::try_vec(v.len(), &copy("float32"))?;
                out.extend_from_slice(v);
                Some(OwnedVectors::F32(out))
            }
            None => None,
        })
    }

    /// Full check of the kind's own files of `snap` (the store's are checked by the caller).
    pub(crate) fn verify(&self, snap: &Snapshot) -> Result<()> {
        match self {
            Kind::Exact => Ok(()),
            Kind::Compressed(_) => compressed::verify(snap),
        }
    }

    /// The kind's figures of `view`: (trained, coarse centroids, code bytes per token).
    pub(crate) fn codec_stats(&self, view: &View) -> (bool, Option<usize>, Option<usize>) {
        match view.state.as_ref().and_then(|st| st.codec.as_ref()) {
            Some(c) => (
                true,
                Some(c.codec.n_centroids()),
                Some(c.codec.bytes_per_token()),
            ),
            None => (false, None, None),
        }
    }
}

impl CompressedKind {
    /// Codec and inverted lists of `snap`, loaded once per file. Loaded outside the mutex (like
    /// [`super::Index::snapshot`]); the newest state is kept.
    fn state_for(&self, snap: &Snapshot) -> Result<Arc<CState>> {
        let prev = lock(&self.state).clone();
        if let Some(s) = &prev {
            if s.manifest == snap.manifest_name() {
                return Ok(s.clone());
            }
        }
        let st = Arc::new(compressed::load_state(
            snap,
            prev.as_deref(),
            self.cfg.fidelity,
        )?);
        let mut g = lock(&self.state);
        // Manifest names are zero-padded generations: they order like the generations.
        if g.as_ref().is_none_or(|cur| cur.manifest <= st.manifest) {
            *g = Some(st.clone());
        }
        Ok(st)
    }
}

/// Resolves `filter` against `snap`; `None` when the filter is [`DocFilter::Masks`] and `snap`
/// has a segment the masks do not cover.
pub(crate) fn resolve<'a>(snap: &Snapshot, filter: DocFilter<'a>) -> Result<Option<Allowed<'a>>> {
    Ok(Some(match filter {
        DocFilter::All => Allowed::All,
        DocFilter::Ids(ids) => Allowed::Ids(ids),
        DocFilter::Masks {
            masks,
            exhaustive_below,
        } => match live_masks(snap, masks)? {
            Some(b) => Allowed::Bits(b, exhaustive_below),
            None => return Ok(None),
        },
    }))
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
