//! The commit hook of a compressed index: trains the codec at the first commit that reaches
//! `train_min_tokens` (on a seeded sample of pooled live tokens), encodes each new segment into
//! its inverted lists with the existing codec afterwards, strips vectors when they are not kept,
//! and upgrades lists an older latix wrote. Everything goes through the store's
//! [`CommitContext`], inside its atomic commit.

use std::path::Path;

use half::f16;

use super::config::{Compression, CODEC_FILE, IVF_FILE, MIN_TRAIN_TOKENS};
use super::fidelity::{Fidelity, FID_FILE};
use super::state::{codec_id, load_codec};
use super::{Codec, CodecParams, IvfSegment};
use crate::error::{LatixError, Result};
use crate::maxsim::DocVectors;
use crate::store::{CommitContext, Segment, Snapshot};

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
        DocVectors::F16(v) => {
            // The slice conversion runs F16C eight values at a time (the same exact values).
            use half::slice::HalfFloatSliceExt;
            let mut out = vec![0.0f32; v.len()];
            v.convert_to_f32_slice(&mut out);
            out
        }
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
    // K follows the expected size when the configuration gives one, and the sample follows K.
    let basis = cfg.k_basis(pooled_live);
    let picked = draw_training_documents(cfg, ranges, pooled_live, sample_for(cfg, basis));
    let mut x = pool_ranges(segs, &picked, pool_factor, n_threads)?;
    // A sample that drew too few vectors (small indexes) falls back to every live document.
    let fewest = (MIN_TRAIN_TOKENS as usize).max(cfg.n_centroids.unwrap_or(0));
    if x.len() / dim.max(1) < fewest && picked.len() < ranges.len() {
        x = pool_ranges(segs, ranges, pool_factor, n_threads)?;
    }
    Codec::train(&x, dim, basis as usize, &codec_params(cfg, dim), n_threads)
}

/// Pooled vectors to sample for a codec trained for `basis` pooled vectors (K's basis).
fn sample_for(cfg: &Compression, basis: u64) -> u64 {
    let k = cfg
        .n_centroids
        .unwrap_or_else(|| crate::compressed::default_n_centroids(basis as usize));
    cfg.sample_tokens(k)
}

/// The seeded draw of the documents (`docs`, in index order) a codec is trained on, shared by
/// every training path so that [`train_codec_on_documents`] gives the codec an index would train:
/// each document is kept with probability about `sample / pooled_live` (`sample`:
/// [`Compression::sample_tokens`]; every one when the sample covers them), from one seeded
/// stream.
fn draw_training_documents<T: Copy>(
    cfg: &Compression,
    docs: &[T],
    pooled_live: u64,
    sample: u64,
) -> Vec<T> {
    // Probability of drawing a document, in millionths.
    let want = sample.min(pooled_live);
    let p_ppm = if want >= pooled_live {
        1_000_000
    } else {
        (want.saturating_mul(1_000_000) / pooled_live.max(1)).max(1)
    };
    let mut rng = crate::compressed::kmeans::Rng::new(cfg.seed ^ 0x5eed_c0de_c0de_5eed);
    docs.iter()
        .copied()
        .filter(|_| (rng.below(1_000_000) as u64) < p_ppm)
        .collect()
}

/// The codec parameters a commit of an index configured by `cfg` trains with.
fn codec_params(cfg: &Compression, dim: usize) -> CodecParams {
    CodecParams {
        n_centroids: cfg.n_centroids,
        bytes_per_token: Some(cfg.code_bytes(dim)),
        kmeans_iters: None,
        seed: cfg.seed,
    }
}

/// Trains the codec an index configured by `cfg` would train, on documents given by the caller
/// instead of an index's segments: `vectors` (`n_tokens * dim` f32, row-major) holds the
/// documents' token rows, document `i` being rows `offsets[i]..offsets[i + 1]`. As at a
/// training commit, documents are drawn (seeded by `cfg.seed`) until about
/// `cfg.train_sample_tokens` pooled vectors (more for a large automatic K:
/// [`Compression::sample_tokens`]) are gathered, each pooled by `cfg.pool_factor`, and K
/// defaults from `n_tokens_hint` (pooled vectors the index is expected to hold; default: those
/// of the given documents, or `cfg.expected_tokens` pooled when larger). The result can be given to [`crate::Index::create_with_codec`] of
/// any number of indexes (a codec shared by the shards of a collection).
pub fn train_codec_on_documents(
    cfg: &Compression,
    dim: usize,
    vectors: &[f32],
    offsets: &[u64],
    n_tokens_hint: Option<usize>,
    n_threads: Option<usize>,
) -> Result<Codec> {
    cfg.validate(dim)?;
    let n_rows = vectors.len().checked_div(dim).unwrap_or(0);
    if dim == 0
        || vectors.len() != n_rows * dim
        || offsets.first() != Some(&0)
        || offsets.last().copied() != Some(n_rows as u64)
        || offsets.windows(2).any(|w| w[1] < w[0])
    {
        return Err(LatixError::invalid(format!(
            "training documents: offsets must rise from 0 to the {n_rows} rows of the (n, {dim}) vectors"
        )));
    }
    let pool = cfg.pool_factor;
    let ranges: Vec<(u64, u64)> = offsets
        .windows(2)
        .filter(|w| w[1] > w[0])
        .map(|w| (w[0], w[1]))
        .collect();
    let pooled_live: u64 = ranges
        .iter()
        .map(|&(a, b)| crate::compressed::pool::pooled_len((b - a) as usize, pool) as u64)
        .sum();
    // The same seeded draw of documents as `train_codec`.
    let basis = n_tokens_hint.map_or(cfg.k_basis(pooled_live), |h| h as u64);
    let picked = draw_training_documents(cfg, &ranges, pooled_live, sample_for(cfg, basis));
    let pool_of = |rs: &[(u64, u64)]| -> Result<Vec<f32>> {
        let pooled: Vec<Vec<f32>> = crate::parallel::install(n_threads, || {
            use rayon::prelude::*;
            rs.par_iter()
                .map(|&(a, b)| {
                    let x = &vectors[a as usize * dim..b as usize * dim];
                    crate::compressed::pool::pool_document(x, dim, pool)
                })
                .collect()
        })?;
        let total = pooled.iter().map(|p| p.len()).sum();
        let mut out = crate::error::try_vec(total, "the codec's training sample")?;
        for p in pooled {
            out.extend_from_slice(&p);
        }
        Ok(out)
    };
    let mut x = pool_of(&picked)?;
    let fewest = (MIN_TRAIN_TOKENS as usize).max(cfg.n_centroids.unwrap_or(0));
    if x.len() / dim < fewest && picked.len() < ranges.len() {
        x = pool_of(&ranges)?;
    }
    Codec::train(&x, dim, basis as usize, &codec_params(cfg, dim), n_threads)
}

/// Checks that `codec_bytes` is a codec an index of dimension `dim` configured by `cfg` can use
/// from its first commit (see [`crate::Index::create_with_codec`]): a valid, checksummed codec
/// file (else [`LatixError::Corrupted`] or [`LatixError::UnsupportedVersion`]) of dimension
/// `dim`, with the code bytes per vector `cfg` gives and, when `cfg` fixes it, its number of
/// centroids (else [`LatixError::InvalidArgument`]).
pub(crate) fn check_given_codec(cfg: &Compression, dim: usize, codec_bytes: &[u8]) -> Result<()> {
    let codec = Codec::from_bytes(codec_bytes, Path::new("<the given codec>"))?;
    if codec.dim() != dim {
        return Err(LatixError::invalid(format!(
            "the given codec has dimension {}, the index {dim}",
            codec.dim()
        )));
    }
    let want = cfg.code_bytes(dim);
    if codec.bytes_per_token() != want {
        return Err(LatixError::invalid(format!(
            "the given codec has {} code bytes per vector, the index's compression gives {want}",
            codec.bytes_per_token()
        )));
    }
    if let Some(k) = cfg.n_centroids {
        if codec.n_centroids() != k {
            return Err(LatixError::invalid(format!(
                "the given codec has {} centroids, the index's compression asks for {k}",
                codec.n_centroids()
            )));
        }
    }
    Ok(())
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
        let pooling = crate::profile::span("commit/read+pool");
        if pool_factor <= 1 {
            // Verified read: encoding must not launder damaged vectors into fresh checksums.
            let rows = seg.rows_checked(0, seg.n_tokens())?;
            drop(pooling);
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
                use half::slice::HalfFloatSliceExt;
                out.convert_from_f32_slice(&p);
                Ok(())
            })?;
        drop(pooling);
        IvfSegment::build(codec, crc, DocVectors::F16(&rows), &offsets)
    })??;
    // The tier's refinement data, from the segment's original (unpooled) rows, read verified.
    // A transform-coded tier's residuals are taken against the decoded pooled vectors of the
    // lists just built.
    let fid = match (cfg.fidelity.nbits(), cfg.fidelity.transform_bytes()) {
        (_, Some(bytes)) => Some(crate::parallel::install(n_threads, || {
            let _span = crate::profile::span("commit/tier-transform");
            let rows = seg.rows_checked(0, seg.n_tokens())?;
            let bits = super::fidelity::transform_bits(bytes, codec.dim());
            super::fidelity::build_transform(codec, crc, rows, seg.offsets(), &ivf, bits)
        })??),
        (0, None) => None,
        (nbits, None) => Some(crate::parallel::install(n_threads, || {
            let rows = seg.rows_checked(0, seg.n_tokens())?;
            super::fidelity::build(codec, crc, rows, seg.n_docs(), nbits, cfg.fidelity.nbits2())
        })??),
    };
    drop(seg);
    let strip = crate::profile::span("commit/strip-vectors");
    let target = if cfg.keep_vectors {
        file.to_owned()
    } else {
        ctx.strip_vectors_with(file, token_counts)?
    };
    drop(strip);
    let _write = crate::profile::span("commit/write-lists");
    ctx.write_segment_file(&target, IVF_FILE, ivf.as_bytes())?;
    if let Some(f) = fid {
        ctx.write_segment_file(&target, FID_FILE, f.as_bytes())?;
    }
    Ok(())
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
    // A tiered index compacts from its refinement data's reconstructions: one row per original
    // token, in order, so they are pooled and encoded like original vectors.
    let decoded_input = decoded_input.filter(|_| cfg.fidelity == Fidelity::Codes);
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
    let training = crate::profile::span("commit/train");
    let codec = train_codec(cfg, &segs, &ranges, pooled_live, pool, n_threads)?;
    drop(training);
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

/// The number of centroids of the codec of `snap` (`None`: no codec yet), from its file's header
/// only (the growth check runs after every commit; a damaged file is caught where it is loaded
/// in full, so a header that does not parse only means no retraining).
fn codec_k(snap: &Snapshot) -> Result<Option<usize>> {
    use std::io::Read;
    let Some(path) = snap.index_file(CODEC_FILE) else {
        return Ok(None);
    };
    let mut head = [0u8; Codec::HEADER_PREFIX_LEN];
    let mut f = std::fs::File::open(&path).map_err(|e| LatixError::io(&path, e))?;
    if f.read_exact(&mut head).is_err() {
        return Ok(None);
    }
    Ok(Codec::n_centroids_in_header(&head))
}

/// The pooled vectors of the index `snap` (configured by `cfg`) when it is due for a growth
/// retraining (`None`: not due): see [`Compression::growth_due`]; pooled vectors are estimated
/// as the snapshot's live tokens / pool factor.
pub(crate) fn growth_due(snap: &Snapshot, cfg: &Compression) -> Result<Option<u64>> {
    if cfg.retrain_growth == 0 || cfg.n_centroids.is_some() {
        return Ok(None);
    }
    let Some(k) = codec_k(snap)? else {
        return Ok(None);
    };
    let pooled = snap.num_tokens() / cfg.pool_factor.max(1) as u64;
    Ok(cfg.growth_due(k, pooled).then_some(pooled))
}

/// True when a segment of `snap` carries side files of a user commit hook (files other than
/// the inverted lists and a fidelity tier's refinement file): a retraining without that hook
/// would drop them, so growth retraining leaves such an index alone (as the merge policy does).
pub(crate) fn has_user_side_files(snap: &Snapshot) -> bool {
    snap.segments().iter().any(|v| {
        v.entry
            .side_files
            .iter()
            .any(|(n, _)| n != IVF_FILE && n != FID_FILE)
    })
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
