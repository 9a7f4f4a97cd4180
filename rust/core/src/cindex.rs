//! The compressed index kind: an [`crate::Index`] whose segments are searched through the codec
//! and inverted lists of [`crate::compressed`] (WARP-style candidate generation from codes) once
//! it holds enough tokens to train a codec.
//!
//! Lifecycle (all of it inside the store's atomic commit, so a crash at any moment leaves the
//! previous committed state):
//! - the [`Compression`] configuration is an index-level file (`compression`), written at create;
//! - until the index holds `train_min_tokens` live tokens, segments keep their vectors and are
//!   searched exactly;
//! - the first commit that reaches the threshold trains the codec on a seeded sample of live
//!   tokens, writes it as the index-level file `codec` and gives every live segment a side file
//!   `ivf` (its inverted lists of codes); with `keep_vectors = false` every segment is rewritten
//!   vector-free (ids and offsets only) in that same commit;
//! - every later commit encodes its new segment with the existing codec (no retraining);
//! - compaction merges everything into one segment and re-encodes it, optionally retraining.
//!
//! Every `ivf` file records the checksum of the codec it was encoded with; loading checks it, so
//! lists encoded with another codec are reported as corruption instead of silently mis-scored.
//! The manifest also records the checksum of every one of these files (configuration, codec,
//! each segment's lists: see [`crate::store::manifest`]) and each is checked against it when
//! loaded, so a file replaced by another valid one of the same shape (another segment's lists,
//! another index's codec or configuration) is corruption too.

use std::collections::HashMap;
use std::path::Path;
use std::sync::Arc;

use half::f16;

use crate::compressed::{
    centroid_interaction, codec_checksum, default_nprobe, default_refine,
    default_refine_for_rerank, refine, rerank_depth, rerank_exact, search_segments, Candidate,
    Codec, CodecParams, FullVectors, IvfSegment, QueryPlan, SegmentView as IvfView,
};
use crate::error::{LatixError, Result};
use crate::maxsim::{self, DocVectors};
use crate::store::CommitContext;
use crate::store::{Segment, Snapshot};
use crate::types::SearchResults;

/// Name of the index-level file holding the [`Compression`] configuration.
pub const CONFIG_FILE: &str = "compression";
/// Name of the index-level file holding the trained codec.
pub const CODEC_FILE: &str = "codec";
/// Name of the per-segment side file holding the segment's inverted lists of codes.
pub const IVF_FILE: &str = "ivf";

const CONFIG_MAGIC: &[u8; 8] = b"LTXCOMPR";
const CONFIG_VERSION: u32 = 2;
/// Version 1 had no pool factor (it reads as 1).
const CONFIG_LEN_V1: usize = 8 + 4 + 4 + 4 + 4 + 8 + 8 + 8 + 4;
const CONFIG_LEN: usize = CONFIG_LEN_V1 + 4;
/// Largest accepted token-pooling factor.
pub const MAX_POOL_FACTOR: usize = 8;

/// Smallest accepted `train_min_tokens` / `train_sample_tokens` (the codec's training minimum).
pub const MIN_TRAIN_TOKENS: u64 = crate::compressed::codec::MIN_TRAIN_TOKENS as u64;

/// Configuration of a compressed index (persisted in the index, fixed at create).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Compression {
    /// Bytes of residual code per token (`None`: the codec default, `dim / 16` for dim >= 256).
    pub bytes_per_token: Option<usize>,
    /// Number of coarse centroids (`None`: automatic from the token count at training time).
    pub n_centroids: Option<usize>,
    /// Keep the full vectors (f16/f32, memory-mapped) for exact re-ranking and exact `get`.
    pub keep_vectors: bool,
    /// Live tokens at which the first commit trains the codec (before that: exact search).
    pub train_min_tokens: u64,
    /// Tokens sampled (seeded, uniformly over live tokens) to train the codec.
    pub train_sample_tokens: u64,
    /// Seed of the sample and of k-means.
    pub seed: u64,
    /// Token pooling factor (see [`crate::compressed::pool`]): each document is stored with
    /// `ceil(n / pool_factor)` pooled vectors; 1 = no pooling.
    pub pool_factor: usize,
}

impl Default for Compression {
    fn default() -> Self {
        Compression {
            bytes_per_token: None,
            n_centroids: None,
            keep_vectors: false,
            train_min_tokens: 65_536,
            train_sample_tokens: 262_144,
            seed: 0,
            pool_factor: 2,
        }
    }
}

impl Compression {
    /// Bytes of code per stored (pooled) vector for dimension `dim`: `bytes_per_token`, or by
    /// default the codec's default (`dim / 16`, `dim / 8` below 256 dims) times the pool factor, so
    /// the bytes per original token stay the same as unpooled while each pooled vector gets a finer
    /// code (falls back to the codec default when that multiple does not split `dim` evenly).
    pub fn code_bytes(&self, dim: usize) -> usize {
        if let Some(b) = self.bytes_per_token {
            return b;
        }
        let base = if dim >= 256 { dim / 16 } else { dim / 8 }.max(1);
        let scaled = base * self.pool_factor.max(1);
        // Even subspaces (2 * bytes dividing dim) keep the scan's subspaces uniform.
        if 2 * scaled <= dim && dim.is_multiple_of(2 * scaled) && scaled <= 128 {
            scaled
        } else {
            base
        }
    }

    /// Checks the configuration for an index of dimension `dim`; errors say which field is wrong.
    pub fn validate(&self, dim: usize) -> Result<()> {
        // Checked here, not at the training commit: a configuration the codec rejects would make
        // every commit from the threshold on fail.
        if self.pool_factor == 0 || self.pool_factor > MAX_POOL_FACTOR {
            return Err(LatixError::invalid(format!(
                "pool_factor must be between 1 (no pooling) and {MAX_POOL_FACTOR}, got {}",
                self.pool_factor
            )));
        }
        let b = self.code_bytes(dim);
        let most = (dim / 2).min(128);
        if b == 0 || b > most {
            let what = match self.bytes_per_token {
                Some(b) => format!("got {b}"),
                None => format!("the default for dim = {dim} is {b}; pass bytes_per_token"),
            };
            return Err(LatixError::invalid(format!(
                "bytes_per_token must be in 1..={most} (2 * bytes_per_token subspaces of at least \
                 one of the {dim} dimensions, at most 128 bytes); {what}"
            )));
        }
        if self.train_min_tokens < MIN_TRAIN_TOKENS || self.train_min_tokens > u32::MAX as u64 {
            return Err(LatixError::invalid(format!(
                "train_min_tokens must be between {MIN_TRAIN_TOKENS} (the fewest vectors the codec \
                 trains on) and 2^32 - 1, got {}",
                self.train_min_tokens
            )));
        }
        if self.train_sample_tokens < MIN_TRAIN_TOKENS || self.train_sample_tokens > 1 << 26 {
            return Err(LatixError::invalid(format!(
                "train_sample_tokens must be between {MIN_TRAIN_TOKENS} and 2^26, got {}",
                self.train_sample_tokens
            )));
        }
        if let Some(k) = self.n_centroids {
            // The training sample holds at least min(train_min_tokens, train_sample_tokens).
            let fewest = self.train_min_tokens.min(self.train_sample_tokens);
            if k == 0 || k as u64 > fewest || k > 1 << 24 {
                return Err(LatixError::invalid(format!(
                    "n_centroids must be between 1 and min(train_min_tokens, train_sample_tokens) \
                     = {fewest} (k-means needs at least one training vector per centroid), got {k}"
                )));
            }
        }
        Ok(())
    }

    /// Serialises the configuration (versioned, checksummed).
    pub fn encode(&self) -> Vec<u8> {
        let mut b = Vec::with_capacity(CONFIG_LEN);
        b.extend_from_slice(CONFIG_MAGIC);
        b.extend_from_slice(&CONFIG_VERSION.to_le_bytes());
        b.extend_from_slice(&(self.bytes_per_token.unwrap_or(0) as u32).to_le_bytes());
        b.extend_from_slice(&(self.n_centroids.unwrap_or(0) as u32).to_le_bytes());
        b.extend_from_slice(&(self.keep_vectors as u32).to_le_bytes());
        b.extend_from_slice(&self.train_min_tokens.to_le_bytes());
        b.extend_from_slice(&self.train_sample_tokens.to_le_bytes());
        b.extend_from_slice(&self.seed.to_le_bytes());
        b.extend_from_slice(&(self.pool_factor as u32).to_le_bytes());
        let crc = crc32c::crc32c(&b);
        b.extend_from_slice(&crc.to_le_bytes());
        b
    }

    /// Parses [`Compression::encode`] output read from `path` (named in errors).
    pub fn decode(b: &[u8], path: &Path) -> Result<Compression> {
        let bad = |d: &str| LatixError::corrupted(path, format!("compression config: {d}"));
        if b.len() < 12 || &b[..8] != CONFIG_MAGIC {
            return Err(bad(
                "bad magic (not a latix compression config) or truncated",
            ));
        }
        let u32_at = |i: usize| u32::from_le_bytes([b[i], b[i + 1], b[i + 2], b[i + 3]]);
        let version = u32_at(8);
        if version != CONFIG_VERSION && version != 1 {
            return Err(LatixError::UnsupportedVersion {
                path: path.to_path_buf(),
                detail: format!(
                    "compression config version {version}, this latix reads {CONFIG_VERSION}"
                ),
            });
        }
        let len = if version == 1 {
            CONFIG_LEN_V1
        } else {
            CONFIG_LEN
        };
        if b.len() != len {
            return Err(bad(&format!("{} bytes, expected {len}", b.len())));
        }
        if crc32c::crc32c(&b[..len - 4]) != u32_at(len - 4) {
            return Err(bad("checksum mismatch"));
        }
        let u64_at = |i: usize| {
            let mut a = [0u8; 8];
            a.copy_from_slice(&b[i..i + 8]);
            u64::from_le_bytes(a)
        };
        let opt = |v: u32| (v != 0).then_some(v as usize);
        let keep = u32_at(20);
        if keep > 1 {
            return Err(bad("keep_vectors is neither 0 nor 1"));
        }
        Ok(Compression {
            bytes_per_token: opt(u32_at(12)),
            n_centroids: opt(u32_at(16)),
            keep_vectors: keep == 1,
            train_min_tokens: u64_at(24),
            train_sample_tokens: u64_at(32),
            seed: u64_at(40),
            pool_factor: if version == 1 { 1 } else { u32_at(48) as usize },
        })
    }

    /// Reads and validates the configuration of the index `snap` belongs to (`None`: a plain
    /// index), checking that the file is the one its manifest recorded.
    pub fn load(snap: &Snapshot) -> Result<Option<Compression>> {
        let Some((path, b)) = snap.read_index_file(CONFIG_FILE, 4096)? else {
            return Ok(None);
        };
        let c = Self::decode(&b, &path)?;
        c.validate(snap.dim())
            .map_err(|e| LatixError::corrupted(&path, format!("compression config: {e}")))?;
        Ok(Some(c))
    }
}

/// A loaded codec with the checksum its inverted lists must carry.
pub(crate) struct LoadedCodec {
    pub(crate) file: String,
    pub(crate) codec: Codec,
    pub(crate) crc: u32,
}

/// The compressed state of one snapshot: its codec and each segment's inverted lists (loaded
/// once per file and shared with later snapshots of the same handle).
pub(crate) struct CState {
    pub(crate) manifest: String,
    pub(crate) codec: Option<Arc<LoadedCodec>>,
    /// Per snapshot segment: its inverted lists, if encoded.
    pub(crate) ivfs: Vec<Option<(String, Arc<IvfSegment>)>>,
    /// When the lists' file sizes were last checked.
    pub(crate) size_checked: std::sync::atomic::AtomicU64,
}

impl CState {
    /// [`IvfSegment::check_size`] of every mapped list file of `snap` (this state's snapshot), at
    /// most every 10 ms (see [`crate::store::size_check_due`]).
    pub(crate) fn check_sizes(&self, snap: &Snapshot) -> Result<()> {
        if !crate::store::size_check_due(&self.size_checked) {
            return Ok(());
        }
        for (f, ivf) in self.ivfs.iter().flatten() {
            if let Err(e) = ivf.check_size(&snap.dir().join(f)) {
                // Damaged: every later call checks again (and fails), undelayed.
                self.size_checked
                    .store(0, std::sync::atomic::Ordering::Relaxed);
                return Err(e);
            }
        }
        Ok(())
    }
}

/// The identity of a codec recorded in its inverted lists. The codec's serialised form ends with a
/// crc32c of everything before it, and the crc32c of a message followed by its own crc32c is the
/// same constant for every message, so the whole file cannot be hashed: its body is.
pub fn codec_id(codec_bytes: &[u8]) -> u32 {
    codec_checksum(&codec_bytes[..codec_bytes.len().saturating_sub(4)])
}

/// Largest codec file read (centroids and codebooks: far below this for any configuration
/// `Compression::validate` accepts with real data).
const MAX_CODEC_BYTES: u64 = 1 << 34;

/// The codec of `snap`, if it has one: (file name, codec, [`codec_id`]), the file checked against
/// the manifest's record of it.
fn load_codec(snap: &Snapshot) -> Result<Option<(String, Codec, u32)>> {
    let Some((path, bytes)) = snap.read_index_file(CODEC_FILE, MAX_CODEC_BYTES)? else {
        return Ok(None);
    };
    let codec = Codec::from_bytes(&bytes, &path)?;
    let dim = snap.dim();
    if codec.dim() != dim {
        return Err(LatixError::corrupted(
            &path,
            format!("codec has dim {}, the index has dim {dim}", codec.dim()),
        ));
    }
    let file = path
        .file_name()
        .map(|f| f.to_string_lossy().into_owned())
        .unwrap_or_default();
    Ok(Some((file, codec, codec_id(&bytes))))
}

/// Opens the `ivf` file `file` of `snap` fully verified (checksum included) and checks it against
/// the manifest's record of it, its segment and the codec.
fn load_ivf(snap: &Snapshot, file: &str, seg: &Segment, codec: &LoadedCodec) -> Result<IvfSegment> {
    let path = &snap.dir().join(file);
    let ivf = IvfSegment::open(path, true)?;
    snap.manifest()
        .check_named_file(file, path, Some(ivf.file_checksum()))?;
    if ivf.codec_checksum() != codec.crc {
        return Err(LatixError::corrupted(
            path,
            format!(
                "inverted lists were encoded with another codec (checksum {:#010x}, the index codec \
                 {} has {:#010x})",
                ivf.codec_checksum(),
                codec.file,
                codec.crc
            ),
        ));
    }
    if ivf.n_centroids() != codec.codec.n_centroids()
        || ivf.n_subspaces() != codec.codec.n_subspaces()
    {
        return Err(LatixError::corrupted(
            path,
            "inverted lists do not match the codec's centroids or subspaces",
        ));
    }
    // The lists hold the segment's tokens, or its documents pooled by some factor (the pooled
    // count of every document is determined by its length).
    let pooled_count = |f: usize| -> u64 {
        (0..seg.n_docs() as u32)
            .map(|d| {
                let (a, b) = seg.doc_range(d);
                crate::compressed::pool::pooled_len((b - a) as usize, f) as u64
            })
            .sum()
    };
    let tokens_match = ivf.n_tokens() as u64 == seg.n_tokens()
        || (2..=MAX_POOL_FACTOR).any(|f| ivf.n_tokens() as u64 == pooled_count(f));
    if ivf.n_docs() != seg.n_docs() || !tokens_match {
        return Err(LatixError::corrupted(
            path,
            format!(
                "inverted lists hold {} documents and {} tokens, segment {} holds {} and {} \
                 (and no pooling factor gives that count)",
                ivf.n_docs(),
                ivf.n_tokens(),
                seg.file_name(),
                seg.n_docs(),
                seg.n_tokens()
            ),
        ));
    }
    Ok(ivf)
}

/// Loads the compressed state of `snap`, reusing what `prev` already loaded.
pub(crate) fn load_state(snap: &Snapshot, prev: Option<&CState>) -> Result<CState> {
    let dir = snap.dir();
    let codec_file = snap
        .manifest()
        .index_files
        .iter()
        .find(|(n, _)| n == CODEC_FILE)
        .map(|(_, f)| f.clone());
    let codec = match codec_file {
        None => None,
        Some(f) => match prev.and_then(|p| p.codec.as_ref()).filter(|c| c.file == f) {
            Some(c) => Some(c.clone()),
            None => load_codec(snap)?
                .map(|(file, codec, crc)| Arc::new(LoadedCodec { file, codec, crc })),
        },
    };
    let reuse: HashMap<&str, &Arc<IvfSegment>> = prev
        .map(|p| {
            p.ivfs
                .iter()
                .flatten()
                .map(|(f, s)| (f.as_str(), s))
                .collect()
        })
        .unwrap_or_default();
    let manifest_path = dir.join(snap.manifest_name());
    let mut ivfs = Vec::with_capacity(snap.segments().len());
    for v in snap.segments() {
        let file = v
            .entry
            .side_files
            .iter()
            .find(|(n, _)| n == IVF_FILE)
            .map(|(_, f)| f.clone());
        match (file, &codec) {
            (Some(f), Some(c)) => {
                let ivf = match reuse.get(f.as_str()) {
                    Some(s) => Arc::clone(s),
                    None => Arc::new(load_ivf(snap, &f, &v.segment, c)?),
                };
                ivfs.push(Some((f, ivf)));
            }
            (Some(f), None) => {
                return Err(LatixError::corrupted(
                    &manifest_path,
                    format!("segment side file {f} needs a codec, and the index has none"),
                ))
            }
            (None, _) if !v.segment.has_vectors() => {
                return Err(LatixError::corrupted(
                    &manifest_path,
                    format!(
                        "segment {} stores no vectors and has no inverted lists",
                        v.segment.file_name()
                    ),
                ))
            }
            (None, _) => ivfs.push(None),
        }
    }
    Ok(CState {
        manifest: snap.manifest_name().to_owned(),
        codec,
        ivfs,
        size_checked: std::sync::atomic::AtomicU64::new(0),
    })
}

/// Full check of the compressed files of `snap`: configuration, codec, every `ivf` (read
/// entirely, checksum, offsets, codec checksum, counts against the segment).
pub(crate) fn verify(snap: &Snapshot) -> Result<()> {
    Compression::load(snap)?;
    // A fresh load (no reuse) re-reads and re-checks every file.
    load_state(snap, None).map(|_| ())
}

// ----------------------------------------------------------------------------------- commit

/// A token range `(segment index, row start, row end)`.
type Range = (usize, u64, u64);

/// The segments of a commit (mapped), the live token ranges of their documents in order, and the
/// number of live tokens.
fn live_ranges(ctx: &CommitContext<'_>) -> Result<(Vec<Segment>, Vec<Range>, u64)> {
    let mut segs = Vec::new();
    let mut ranges = Vec::new();
    let mut total = 0u64;
    for (i, e) in ctx.segments().iter().enumerate() {
        let seg = ctx.open_segment(&e.file)?;
        for d in 0..seg.n_docs() as u32 {
            if e.tombstones.binary_search(&d).is_ok() {
                continue;
            }
            let (a, b) = seg.doc_range(d);
            if b > a {
                ranges.push((i, a, b));
                total += b - a;
            }
        }
        segs.push(seg);
    }
    Ok((segs, ranges, total))
}

/// The f32 rows of document rows `a..b` of `seg`, read verified (encoding must not launder
/// damaged vectors into fresh checksums), pooled by `pool_factor`.
fn pooled_doc(seg: &Segment, a: u64, b: u64, pool_factor: usize) -> Result<Vec<f32>> {
    let x = match seg.rows_checked(a, b)? {
        DocVectors::F32(v) => v.to_vec(),
        DocVectors::F16(v) => v.iter().map(|h| h.to_f32()).collect(),
    };
    Ok(crate::compressed::pool::pool_document(
        &x,
        seg.dim(),
        pool_factor,
    ))
}

/// The pooled vectors of the document ranges `ranges`, concatenated (f32, row-major), pooled in
/// parallel in latix's pool.
fn pool_ranges(
    segs: &[Segment],
    ranges: &[Range],
    pool_factor: usize,
    n_threads: Option<usize>,
) -> Result<Vec<f32>> {
    let pooled: Vec<Vec<f32>> = crate::parallel::install(n_threads, || {
        use rayon::prelude::*;
        ranges
            .par_iter()
            .map(|&(si, a, b)| pooled_doc(&segs[si], a, b, pool_factor))
            .collect::<Result<Vec<_>>>()
    })??;
    // The sample's size follows train_sample_tokens and the data: reserved fallibly.
    let total = pooled.iter().map(|p| p.len()).sum();
    let mut out = crate::error::try_vec(total, "the codec's training sample")?;
    for p in pooled {
        out.extend_from_slice(&p);
    }
    Ok(out)
}

/// Trains a codec on a seeded sample of the commit's live (pooled) token vectors: documents are
/// drawn uniformly until about `train_sample_tokens` of the `pooled_live` pooled vectors are
/// gathered, so the codec learns the distribution it will encode.
fn train_codec(
    cfg: &Compression,
    segs: &[Segment],
    ranges: &[Range],
    pooled_live: u64,
    pool_factor: usize,
    n_threads: Option<usize>,
) -> Result<Codec> {
    let dim = segs.first().map(|s| s.dim()).unwrap_or(0);
    // Probability of drawing a document, in millionths (all documents when the sample covers them).
    let want = cfg.train_sample_tokens.min(pooled_live);
    let p_ppm = if want >= pooled_live {
        1_000_000
    } else {
        (want.saturating_mul(1_000_000) / pooled_live.max(1)).max(1)
    };
    let mut rng = crate::compressed::kmeans::Rng::new(cfg.seed ^ 0x5eed_c0de_c0de_5eed);
    let picked: Vec<Range> = ranges
        .iter()
        .copied()
        .filter(|_| (rng.below(1_000_000) as u64) < p_ppm)
        .collect();
    let mut x = pool_ranges(segs, &picked, pool_factor, n_threads)?;
    // A sample that drew too few vectors (small indexes) falls back to every live document.
    let fewest = (MIN_TRAIN_TOKENS as usize).max(cfg.n_centroids.unwrap_or(0));
    if x.len() / dim.max(1) < fewest && picked.len() < ranges.len() {
        x = pool_ranges(segs, ranges, pool_factor, n_threads)?;
    }
    let params = CodecParams {
        n_centroids: cfg.n_centroids,
        bytes_per_token: Some(cfg.code_bytes(dim)),
        kmeans_iters: None,
        seed: cfg.seed,
    };
    Codec::train(&x, dim, pooled_live as usize, &params, n_threads)
}

/// Encodes segment `file` of the commit with `codec` (pooling each document by `pool_factor`),
/// attaches its `ivf` side file and, without `keep_vectors`, replaces it by a vector-free copy
/// (whose documents get `token_counts` as lengths when given: see [`commit_hook`]).
#[allow(clippy::too_many_arguments)]
fn encode_segment(
    ctx: &mut CommitContext<'_>,
    file: &str,
    codec: &Codec,
    crc: u32,
    cfg: &Compression,
    pool_factor: usize,
    n_threads: Option<usize>,
    token_counts: Option<&[u64]>,
) -> Result<()> {
    let seg = ctx.open_segment(file)?;
    let ivf = crate::parallel::install(n_threads, || -> Result<IvfSegment> {
        if pool_factor <= 1 {
            // Verified read: encoding must not launder damaged vectors into fresh checksums.
            let rows = seg.rows_checked(0, seg.n_tokens())?;
            return IvfSegment::build(codec, crc, rows, seg.offsets());
        }
        use rayon::prelude::*;
        // Pooled rows are written in place (f16, the precision of the stored vectors) so a
        // 20k-document segment costs one pooled copy, not two f32 ones.
        let dim = seg.dim();
        let mut offsets = Vec::with_capacity(seg.n_docs() + 1);
        offsets.push(0u64);
        for d in 0..seg.n_docs() as u32 {
            let (a, b) = seg.doc_range(d);
            let n = crate::compressed::pool::pooled_len((b - a) as usize, pool_factor) as u64;
            offsets.push(offsets[offsets.len() - 1] + n);
        }
        let total = offsets[offsets.len() - 1] as usize;
        let mut rows = crate::error::try_filled(
            total.saturating_mul(dim),
            f16::ZERO,
            "the pooled vectors of a segment",
        )?;
        let mut slices = Vec::with_capacity(seg.n_docs());
        let mut rest = &mut rows[..];
        for w in offsets.windows(2) {
            let (head, tail) = rest.split_at_mut((w[1] - w[0]) as usize * dim);
            slices.push(head);
            rest = tail;
        }
        slices
            .into_par_iter()
            .enumerate()
            .try_for_each(|(d, out)| -> Result<()> {
                let (a, b) = seg.doc_range(d as u32);
                let p = pooled_doc(&seg, a, b, pool_factor)?;
                for (o, v) in out.iter_mut().zip(&p) {
                    *o = f16::from_f32(*v);
                }
                Ok(())
            })?;
        IvfSegment::build(codec, crc, DocVectors::F16(&rows), &offsets)
    })??;
    let target = if cfg.keep_vectors {
        file.to_owned()
    } else {
        ctx.strip_vectors_with(file, token_counts)?
    };
    ctx.write_segment_file(&target, IVF_FILE, ivf.as_bytes())
}

/// The commit hook of a compressed index (see the module documentation). `retrain` retrains the
/// codec from the commit's live tokens even if one exists (compaction with retraining).
///
/// `decoded_input`: the commit's new segment holds decoded approximations (compaction of
/// vector-free segments), which are already pooled and must not be pooled again; the slice holds
/// the original token count of each of its documents, which its vector-free copy keeps (so that
/// token counts do not shrink by the pool factor at every compaction).
pub(crate) fn commit_hook(
    ctx: &mut CommitContext<'_>,
    cfg: &Compression,
    retrain: bool,
    decoded_input: Option<&[u64]>,
    n_threads: Option<usize>,
) -> Result<()> {
    if !retrain {
        upgrade_old_lists(ctx)?;
    }
    let pool = if decoded_input.is_some() {
        1
    } else {
        cfg.pool_factor
    };
    let prev_codec = ctx.previous().index_file(CODEC_FILE).is_some();
    let counts_of = |ctx: &CommitContext<'_>, f: &str| {
        decoded_input.filter(|_| ctx.new_segments().iter().any(|n| n == f))
    };
    // Encodes the commit's new segments with the codec already in the index.
    let encode_new = |ctx: &mut CommitContext<'_>| -> Result<()> {
        let (_, codec, crc) = load_codec(ctx.previous())?
            .ok_or_else(|| LatixError::invalid("the index has no trained codec yet"))?;
        for f in ctx.new_segments().to_vec() {
            let counts = counts_of(ctx, &f);
            encode_segment(ctx, &f, &codec, crc, cfg, pool, n_threads, counts)?;
        }
        Ok(())
    };
    if prev_codec && !retrain {
        return encode_new(ctx);
    }
    let (segs, ranges, total) = live_ranges(ctx)?;
    // Vectors the codec would train on: the pooled count, which must reach the codec's minimum
    // and the number of centroids asked for.
    let pooled_live: u64 = ranges
        .iter()
        .map(|&(_, a, b)| crate::compressed::pool::pooled_len((b - a) as usize, pool) as u64)
        .sum();
    let trainable = MIN_TRAIN_TOKENS.max(cfg.n_centroids.unwrap_or(0) as u64);
    if (total < cfg.train_min_tokens || pooled_live < trainable) && !(retrain && prev_codec) {
        return Ok(()); // still exact: segments keep their vectors
    }
    if pooled_live < trainable {
        // Retraining an index shrunk below the codec's minimum: keep the current codec.
        if prev_codec {
            encode_new(ctx)?;
        }
        return Ok(());
    }
    let codec = train_codec(cfg, &segs, &ranges, pooled_live, pool, n_threads)?;
    drop(segs);
    let bytes = codec.to_bytes();
    let crc = codec_id(&bytes);
    ctx.write_index_file(CODEC_FILE, &bytes)?;
    let files: Vec<String> = ctx.segments().iter().map(|e| e.file.clone()).collect();
    for f in files {
        let counts = counts_of(ctx, &f);
        encode_segment(ctx, &f, &codec, crc, cfg, pool, n_threads, counts)?;
    }
    Ok(())
}

/// The inverted-list files of `entries` that an older latix wrote: (segment file, lists file).
fn old_lists<'a>(
    dir: &Path,
    entries: impl Iterator<Item = &'a crate::store::SegmentEntry>,
) -> Result<Vec<(String, String)>> {
    let mut out = Vec::new();
    for e in entries {
        if let Some((_, f)) = e.side_files.iter().find(|(n, _)| n == IVF_FILE) {
            if IvfSegment::is_old_version(IvfSegment::file_version(&dir.join(f))?) {
                out.push((e.file.clone(), f.clone()));
            }
        }
    }
    Ok(out)
}

/// True when some segment of `snap` has inverted lists in a format latix no longer writes.
pub(crate) fn has_old_lists(snap: &Snapshot) -> Result<bool> {
    Ok(!old_lists(snap.dir(), snap.segments().iter().map(|v| &v.entry))?.is_empty())
}

/// Rewrites the old-format inverted lists of the segments this commit keeps in the current
/// format, in the same commit (lossless: same codes; [`IvfSegment::upgraded`]). Each commit peeks
/// at one header per segment; only old files are read in full.
fn upgrade_old_lists(ctx: &mut CommitContext<'_>) -> Result<()> {
    let dir = ctx.previous().dir().to_path_buf();
    for (seg, f) in old_lists(&dir, ctx.segments().iter())? {
        let path = dir.join(&f);
        let ivf = IvfSegment::open(&path, true)?;
        // Upgrading must not bless a replaced file with a fresh binding.
        ctx.previous()
            .manifest()
            .check_named_file(&f, &path, Some(ivf.file_checksum()))?;
        if let Some(up) = ivf.upgraded()? {
            ctx.write_segment_file(&seg, IVF_FILE, up.as_bytes())?;
        }
    }
    Ok(())
}

// ----------------------------------------------------------------------------------- reading

/// The decoded approximation of document `doc` of a compressed segment, rows in list order
/// (grouped by centroid, not in the original token order), as f32 `(n, dim)`.
pub(crate) fn decode_doc(codec: &Codec, ivf: &IvfSegment, doc: u32) -> Vec<f32> {
    use crate::compressed::ivf::DOC_CHUNK;
    let nch = ivf.n_doc_chunks();
    let norms = ivf.norm_scales();
    let mut cids = Vec::new();
    let mut codes = Vec::new();
    let mut scales = Vec::new();
    if let Some(positions) = ivf.doc_positions(doc as usize) {
        // The document map names the tokens directly (ascending positions = list order).
        for &p in positions {
            let p = p as usize;
            let l = ivf.list_of_position(p);
            cids.push((l / nch) as u32);
            codes.extend_from_slice(&ivf.token_codes(l, p));
            scales.push(norms.get(p));
        }
    } else {
        // Version-3 lists: find the document's tokens in its chunk's sub-lists.
        let docs = ivf.doc_of_token();
        let h = doc as usize / DOC_CHUNK;
        let local = (doc as usize % DOC_CHUNK) as u16;
        for c in 0..ivf.n_centroids() {
            if let Some((t0, t1, _, _)) = ivf.sublists(c).nth(h) {
                for (pos, &d) in docs[t0..t1].iter().enumerate() {
                    if d == local {
                        cids.push(c as u32);
                        codes.extend_from_slice(&ivf.token_codes(c * nch + h, t0 + pos));
                        scales.push(norms.get(t0 + pos));
                    }
                }
            }
        }
    }
    // Rescaled to each token's true length, as search scores them.
    let mut rows = codec.decode(&cids, &codes);
    let dim = codec.dim();
    for (row, r) in rows.chunks_exact_mut(dim).zip(scales) {
        row.iter_mut().for_each(|v| *v *= r);
    }
    rows
}

/// Options of a compressed search.
#[derive(Clone, Copy, Debug, Default)]
pub struct CompressedSearch {
    /// Lists probed per query token (`None`: [`default_nprobe`] of the codec's K).
    pub nprobe: Option<usize>,
    /// Re-rank the short list exactly from the kept vectors (`None`: when vectors are kept).
    pub rerank: Option<bool>,
    /// Candidates re-scored with all their tokens' codes ([`refine`]); `Some(0)` turns it off,
    /// `None` is [`default_refine`] of `k` (and off for indexes whose lists predate the document
    /// map).
    pub refine: Option<usize>,
}

/// Documents of a filtered search (a subset or per-segment masks) refined from codes, chosen by
/// centroid interaction among all allowed documents (exhaustive mode) or among the best
/// [`FILTERED_DEPTH`] candidates of candidate generation. A filter moves the true best
/// documents down the unfiltered ranking, where candidate generation's imputed estimates are
/// poor: refining only its best 16 found 0.65 of the exact top 10 at 10 % selectivity on
/// SciFact + 100k distractors, refining 256 of them 0.83. Ranking 384 by centroid interaction
/// and refining 32 found 0.84 at 10 % and 0.87 at 50 %, at 1.4x the time of an unfiltered
/// search (512 and 32: 0.84 / 0.87 at 1.6x; 256 and 32: 0.83 / 0.87 at 1.35x; measured
/// interleaved with unfiltered searches, 150 test queries, one thread).
pub const FILTERED_REFINE: usize = 32;
/// Candidates of a filtered, non-exhaustive search ranked by centroid interaction.
pub const FILTERED_DEPTH: usize = 384;

fn bitmap_all_but(n: usize, dead: &[u32]) -> Vec<u64> {
    let mut b = vec![u64::MAX; n.div_ceil(64)];
    if !n.is_multiple_of(64) {
        if let Some(last) = b.last_mut() {
            *last = (1u64 << (n % 64)) - 1;
        }
    }
    for &d in dead {
        b[d as usize >> 6] &= !(1u64 << (d & 63));
    }
    b
}

/// Search of a trained compressed snapshot: encoded segments through the codec (filters as
/// allowed-document bitmaps inside candidate generation), segments without lists exactly, merged.
/// Inputs were validated by the caller (queries, k); `keep_vectors` decides the default re-rank.
/// `bits` (one bitmap of live allowed documents per segment of `snap`) replaces `subset`; when it
/// allows at most `exhaustive_below` documents, every allowed document of the encoded segments is
/// a candidate (scored with all its codes, then re-ranked exactly when re-ranking) instead of the
/// output of candidate generation: a small set is cheaper to score whole than to probe for, and
/// probing misses allowed documents when few of them sit in the probed lists.
#[allow(clippy::too_many_arguments)]
pub(crate) fn search(
    snap: &Snapshot,
    state: &CState,
    queries: &[&[f32]],
    k: usize,
    n_threads: Option<usize>,
    subset: Option<&[&str]>,
    opts: CompressedSearch,
    keep_vectors: bool,
    bits: Option<Vec<Vec<u64>>>,
    exhaustive_below: usize,
) -> Result<SearchResults> {
    SearchResults::check_slots(queries.len(), k)?;
    let codec = state
        .codec
        .as_ref()
        .ok_or_else(|| LatixError::invalid("the index has no trained codec yet"))?;
    let kc = codec.codec.n_centroids();
    let nprobe = opts.nprobe.unwrap_or_else(|| default_nprobe(kc));
    if nprobe == 0 || nprobe > kc {
        return Err(LatixError::invalid(format!(
            "nprobe must be between 1 and the number of centroids ({kc}), got {nprobe}"
        )));
    }
    let rerank = opts.rerank.unwrap_or(keep_vectors);
    let segs = snap.segments();
    // Allowed documents per segment: the subset's live documents, or all live documents.
    let filtered = bits.is_some() || subset.is_some();
    let allowed: Vec<Option<Vec<u64>>> = match (bits, subset) {
        (Some(b), _) => b.into_iter().map(Some).collect(),
        (None, Some(ids)) => {
            let mut b: Vec<Vec<u64>> = segs
                .iter()
                .map(|v| vec![0u64; v.segment.n_docs().div_ceil(64)])
                .collect();
            for id in ids {
                if let Some((s, d)) = snap.lookup(id) {
                    b[s][d as usize >> 6] |= 1u64 << (d & 63);
                }
            }
            b.into_iter().map(Some).collect()
        }
        (None, None) => segs
            .iter()
            .map(|v| {
                (!v.entry.tombstones.is_empty())
                    .then(|| bitmap_all_but(v.segment.n_docs(), &v.entry.tombstones))
            })
            .collect(),
    };
    // Live allowed documents of a filtered search (subsets and masks alike).
    let n_allowed = filtered.then(|| {
        allowed
            .iter()
            .flatten()
            .flatten()
            .map(|w| w.count_ones() as usize)
            .sum::<usize>()
    });
    let is_allowed = |s: usize, d: u32| {
        allowed[s]
            .as_ref()
            .is_none_or(|b| b[d as usize >> 6] >> (d & 63) & 1 == 1)
    };
    let mut views = Vec::new();
    let mut view_seg = Vec::new();
    let mut fulls = Vec::new();
    let mut exact_segs = Vec::new();
    for (s, v) in segs.iter().enumerate() {
        match state.ivfs.get(s).and_then(|x| x.as_ref()) {
            Some((_, ivf)) => {
                views.push(IvfView {
                    seg: ivf,
                    allowed: allowed[s].as_deref(),
                });
                view_seg.push(s);
                if rerank {
                    if !v.segment.has_vectors() {
                        return Err(LatixError::invalid(
                            "rerank needs the full vectors, and this index was created with \
                             keep_vectors=False",
                        ));
                    }
                    fulls.push(FullVectors {
                        vectors: v.segment.vectors(),
                        offsets: v.segment.offsets(),
                    });
                }
            }
            None => exact_segs.push(s),
        }
    }
    let dim = snap.dim();
    let all_mapped = views.iter().all(|v| v.seg.has_doc_map());
    let n_refine = match opts.refine {
        Some(0) => 0,
        Some(r) if !all_mapped => {
            return Err(LatixError::invalid(format!(
                "refine={r} needs inverted lists with a document map, and some segments of this \
                 index were written by an older latix: compact() rewrites them"
            )))
        }
        Some(r) => r.max(k),
        None if !all_mapped => 0,
        None if rerank => default_refine_for_rerank(k),
        None => default_refine(k),
    };
    // No stage can return more documents than the snapshot holds: depths beyond that mean
    // "all of them" and are capped before anything is sized by them (refine=10**9 once asked
    // for a 48 GB candidate buffer).
    let live = snap.len().max(1);
    let n_refine = n_refine.min(live);
    let exact_depth = if rerank {
        rerank_depth(k, n_refine > 0)
    } else {
        k
    }
    .min(live);
    let depth = exact_depth.max(n_refine);
    // Exhaustive: every allowed document of the encoded segments, refined whole (needs the
    // document map of every segment, like refine).
    let exhaustive: Option<Vec<Candidate>> =
        (all_mapped && n_allowed.is_some_and(|n| n <= exhaustive_below)).then(|| {
            let mut c = Vec::new();
            for (vi, v) in views.iter().enumerate() {
                match v.allowed {
                    // Set bits only: one word per 64 documents.
                    Some(b) => {
                        for (i, &w) in b.iter().enumerate() {
                            let mut w = w;
                            while w != 0 {
                                c.push((0.0f32, vi as u32, (i as u32) << 6 | w.trailing_zeros()));
                                w &= w - 1;
                            }
                        }
                    }
                    None => c.extend((0..v.seg.n_docs() as u32).map(|d| (0.0f32, vi as u32, d))),
                }
            }
            c
        });
    let per_query = |q: &[f32]| -> Result<Vec<(f32, usize, u32)>> {
        let mut hits: Vec<(f32, usize, u32)> = Vec::new();
        if !views.is_empty() {
            let plan = QueryPlan::new(&codec.codec, q, nprobe)?;
            // A filtered search ranks many candidates by centroid interaction and refines the
            // best of them (all allowed documents when exhaustive).
            let ci_refine = |c: &[Candidate]| -> Result<Vec<Candidate>> {
                let r = FILTERED_REFINE.max(depth);
                if c.len() <= r {
                    return refine(&codec.codec, &plan, &views, c);
                }
                let mut ci = centroid_interaction(&codec.codec, &plan, &views, c)?;
                ci.truncate(r);
                refine(&codec.codec, &plan, &views, &ci)
            };
            let deep = filtered && n_refine > 0;
            let mut cands = match &exhaustive {
                Some(all) => ci_refine(all)?,
                None if deep => {
                    ci_refine(&search_segments(&plan, &views, FILTERED_DEPTH.max(depth))?)?
                }
                None => search_segments(&plan, &views, depth)?,
            };
            if n_refine > 0 && exhaustive.is_none() && !deep {
                // Re-score the best n_refine with all their codes; the rest keep their order
                // below them (only reached when the exact re-rank asks for more).
                let rest = cands.split_off(n_refine.min(cands.len()));
                cands = refine(&codec.codec, &plan, &views, &cands)?;
                cands.extend(rest);
            }
            cands.truncate(exact_depth);
            if rerank {
                for &(_, vi, d) in &cands {
                    // Verified read of the rows the re-rank is about to use.
                    let seg = &segs[view_seg[vi as usize]].segment;
                    let (a, b) = seg.doc_range(d);
                    seg.check_rows(a, b)?;
                }
                cands = rerank_exact(q, dim, &fulls, &cands, k)?;
            }
            hits.extend(
                cands
                    .iter()
                    .map(|&(s, vi, d)| (s, view_seg[vi as usize], d)),
            );
        }
        let mut one = [0f32; 1];
        for &s in &exact_segs {
            let seg = &segs[s].segment;
            for d in 0..seg.n_docs() as u32 {
                if !is_allowed(s, d) {
                    continue;
                }
                let (a, b) = seg.doc_range(d);
                let rows = seg.rows_checked(a, b)?;
                maxsim::score_docs(q, dim, rows, &[0, b - a], &mut one);
                hits.push((one[0], s, d));
            }
        }
        // Best first; ties by insertion order (segment, then document).
        hits.sort_by(|a, b| b.0.total_cmp(&a.0).then(a.1.cmp(&b.1)).then(a.2.cmp(&b.2)));
        hits.truncate(k);
        Ok(hits)
    };
    let all: Vec<Vec<(f32, usize, u32)>> = crate::parallel::install(n_threads, || {
        queries.iter().map(|q| per_query(q)).collect::<Result<_>>()
    })??;
    SearchResults::assemble(snap, k, all.into_iter())
}
