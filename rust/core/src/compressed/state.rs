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
//! - every later commit encodes its new segment with the existing codec (no retraining, unless
//!   `retrain_growth`: see [`crate::compressed::Compression::growth_due`]);
//! - compaction merges everything into one segment and re-encodes it, optionally retraining.
//!
//! Every `ivf` file records the checksum of the codec it was encoded with; loading checks it, so
//! lists encoded with another codec are reported as corruption instead of silently mis-scored.
//! The manifest also records the checksum of every one of these files (configuration, codec,
//! each segment's lists: see [`crate::store::manifest`]) and each is checked against it when
//! loaded, so a file replaced by another valid one of the same shape (another segment's lists,
//! another index's codec or configuration) is corruption too.
//!
//! This file holds the per-snapshot state (codec and inverted lists, loaded once per file and
//! shared between snapshots); [`super::commit`] the commit hook; [`super::search`] the search.

use std::collections::HashMap;
use std::sync::Arc;

use super::config::{Compression, CODEC_FILE, IVF_FILE, MAX_POOL_FACTOR};
use super::fidelity::{FidSegment, Fidelity, FID_FILE};
use super::{codec_checksum, Codec, IvfSegment};
use crate::error::{LatixError, Result};
use crate::store::{Segment, Snapshot};

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
    /// Per snapshot segment: its refinement file (fidelity tiers), if encoded.
    pub(crate) fids: Vec<Option<(String, Arc<FidSegment>)>>,
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
        let ivfs = self
            .ivfs
            .iter()
            .flatten()
            .map(|(f, s)| (f, s.check_size(&snap.dir().join(f))));
        let fids = self
            .fids
            .iter()
            .flatten()
            .map(|(f, s)| (f, s.check_size(&snap.dir().join(f))));
        for (_, checked) in ivfs.chain(fids) {
            if let Err(e) = checked {
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
pub(super) fn load_codec(snap: &Snapshot) -> Result<Option<(String, Codec, u32)>> {
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

/// The bytes of the codec file of `snap`, if it has one, checked against the manifest's record
/// of it and parsed (what another index can be created with: [`crate::Index::create_with_codec`]).
pub(crate) fn read_codec_bytes(snap: &Snapshot) -> Result<Option<Vec<u8>>> {
    let Some((path, bytes)) = snap.read_index_file(CODEC_FILE, MAX_CODEC_BYTES)? else {
        return Ok(None);
    };
    Codec::from_bytes(&bytes, &path)?;
    Ok(Some(bytes))
}

/// Opens the `ivf` file `file` of `snap` fully verified (checksum included) and checks it against
/// the manifest's record of it, its segment and the codec.
pub(super) fn load_ivf(
    snap: &Snapshot,
    file: &str,
    seg: &Segment,
    codec: &LoadedCodec,
) -> Result<IvfSegment> {
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

/// Opens the refinement file `file` of `snap` fully verified and checks it against the
/// manifest's record of it, its segment and the codec.
pub(crate) fn load_fid(
    snap: &Snapshot,
    file: &str,
    seg: &Segment,
    codec: &LoadedCodec,
) -> Result<FidSegment> {
    let path = &snap.dir().join(file);
    let fid = FidSegment::open(path, true)?;
    snap.manifest()
        .check_named_file(file, path, Some(fid.file_checksum()))?;
    if fid.codec_checksum() != codec.crc
        || fid.n_centroids() != codec.codec.n_centroids()
        || fid.dim() != codec.codec.dim()
    {
        return Err(LatixError::corrupted(
            path,
            format!(
                "refinement file was encoded with another codec (checksum {:#010x}, the index \
                 codec {} has {:#010x})",
                fid.codec_checksum(),
                codec.file,
                codec.crc
            ),
        ));
    }
    if fid.n_tokens() as u64 != seg.n_tokens() || fid.n_docs() != seg.n_docs() {
        return Err(LatixError::corrupted(
            path,
            format!(
                "refinement file holds {} documents and {} tokens, segment {} holds {} and {}",
                fid.n_docs(),
                fid.n_tokens(),
                seg.file_name(),
                seg.n_docs(),
                seg.n_tokens()
            ),
        ));
    }
    // Each level set starts at a document: a document's rows are scored with one set's tables.
    let n_docs = seg.n_docs() as u32;
    for &r in &fid.set_starts()[1..] {
        // The first document starting at or after row r (document starts ascend).
        let (mut lo, mut hi) = (0u32, n_docs);
        while lo < hi {
            let mid = lo + (hi - lo) / 2;
            if seg.doc_range(mid).0 < r as u64 {
                lo = mid + 1;
            } else {
                hi = mid;
            }
        }
        let d = lo;
        if d >= n_docs || seg.doc_range(d).0 != r as u64 {
            return Err(LatixError::corrupted(
                path,
                format!("refinement file has a level set starting inside a document (row {r})"),
            ));
        }
    }
    Ok(fid)
}

/// Loads the compressed state of `snap` (an index of tier `fidelity`), reusing what `prev`
/// already loaded.
pub(crate) fn load_state(
    snap: &Snapshot,
    prev: Option<&CState>,
    fidelity: Fidelity,
) -> Result<CState> {
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
    let reuse_fid: HashMap<&str, &Arc<FidSegment>> = prev
        .map(|p| {
            p.fids
                .iter()
                .flatten()
                .map(|(f, s)| (f.as_str(), s))
                .collect()
        })
        .unwrap_or_default();
    let manifest_path = dir.join(snap.manifest_name());
    let mut ivfs = Vec::with_capacity(snap.segments().len());
    let mut fids = Vec::with_capacity(snap.segments().len());
    for v in snap.segments() {
        let fid_file = v
            .entry
            .side_files
            .iter()
            .find(|(n, _)| n == FID_FILE)
            .map(|(_, f)| f.clone());
        let has_ivf = v.entry.side_files.iter().any(|(n, _)| n == IVF_FILE);
        match (fid_file, &codec) {
            (Some(f), Some(c)) if has_ivf && fidelity != Fidelity::Codes => {
                let fid = match reuse_fid.get(f.as_str()) {
                    Some(s) => Arc::clone(s),
                    None => Arc::new(load_fid(snap, &f, &v.segment, c)?),
                };
                // A tier's file of this latix has its second stage; one written before the
                // second stage existed (version 1, high tier) has none and still scores. A
                // transform-coded tier's files are of version 4 with the tier's bits.
                let tx_bits = fidelity
                    .transform_bytes()
                    .map_or(0, |b| super::fidelity::transform_bits(b, c.codec.dim()));
                if fid.nbits() != fidelity.nbits()
                    || fid.nbits2() != fidelity.nbits2() && fid.nbits2() != 0
                    || fid.transform_bits() != tx_bits
                {
                    return Err(LatixError::corrupted(
                        dir.join(&f),
                        format!(
                            "refinement file of {} + {} bits per dimension ({} transform-coded \
                             bits per token) in an index of fidelity {:?}",
                            fid.nbits(),
                            fid.nbits2(),
                            fid.transform_bits(),
                            fidelity.name()
                        ),
                    ));
                }
                fids.push(Some((f, fid)));
            }
            (Some(f), _) => {
                return Err(LatixError::corrupted(
                    &manifest_path,
                    format!(
                        "segment side file {f} is refinement data, and the index has no codec, \
                         no inverted lists for the segment or fidelity \"codes\""
                    ),
                ))
            }
            (None, _) if has_ivf && fidelity != Fidelity::Codes => {
                return Err(LatixError::corrupted(
                    &manifest_path,
                    format!(
                        "segment {} has inverted lists but no refinement file, and the index \
                         has fidelity {:?}",
                        v.segment.file_name(),
                        fidelity.name()
                    ),
                ))
            }
            (None, _) => fids.push(None),
        }
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
                // A transform-coded file's pooled indices name pooled vectors of their
                // documents (checked once per file loaded).
                if let Some((ff, fid)) = fids
                    .last()
                    .and_then(|x: &Option<(String, Arc<FidSegment>)>| x.as_ref())
                {
                    if fid.is_transform() && !reuse_fid.contains_key(ff.as_str()) {
                        fid.check_pooled(
                            v.segment.offsets(),
                            |d| ivf.doc_positions(d).map(|p| p.len()),
                            &dir.join(ff),
                        )?;
                    }
                }
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
        fids,
        size_checked: std::sync::atomic::AtomicU64::new(0),
    })
}

/// Full check of the compressed files of `snap`: configuration, codec, every `ivf` (read
/// entirely, checksum, offsets, codec checksum, counts against the segment).
pub(crate) fn verify(snap: &Snapshot) -> Result<()> {
    let fidelity = Compression::load(snap)?.map_or(Fidelity::Codes, |c| c.fidelity);
    // A fresh load (no reuse) re-reads and re-checks every file.
    load_state(snap, None, fidelity).map(|_| ())
}

/// The decoded approximation of document `doc` of segment `seg` of a snapshot whose compressed
/// state is `state` (a vector-free segment: its rows are reconstructed from codes).
///
/// With a fidelity tier the document's rows `rows` (its range in the segment) are reconstructed
/// from the refinement file instead: one row per original token, in the original order.
pub(crate) fn decode_segment_doc(
    state: Option<&CState>,
    seg: usize,
    doc: u32,
    rows: (u64, u64),
) -> Result<Vec<f32>> {
    let no_codes = || LatixError::invalid("the segment has no codes to decode");
    let st = state.ok_or_else(no_codes)?;
    let codec = st.codec.as_ref().ok_or_else(no_codes)?;
    if let Some((_, fid)) = st.fids.get(seg).and_then(|x| x.as_ref()) {
        // A tier: the reconstruction of every original token, in order.
        let (a, b) = (rows.0 as usize, rows.1 as usize);
        if a > b || b > fid.n_tokens() {
            return Err(no_codes());
        }
        if fid.is_transform() {
            // Against the document's decoded pooled vectors.
            let (_, ivf) = st
                .ivfs
                .get(seg)
                .and_then(|x| x.as_ref())
                .ok_or_else(no_codes)?;
            let pooled = decode_doc(&codec.codec, ivf, doc);
            return fid.decode_rows_transform(&pooled, a, b);
        }
        return fid.decode_rows(codec.codec.centroids(), a, b);
    }
    let (_, ivf) = st
        .ivfs
        .get(seg)
        .and_then(|x| x.as_ref())
        .ok_or_else(no_codes)?;
    Ok(decode_doc(&codec.codec, ivf, doc))
}

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
