//! Compaction of a compressed index in the codes domain: when every segment of the snapshot holds
//! current-format inverted lists of the index's codec (the normal case), the merged segment's
//! lists are the k-way merge of theirs ([`super::ivf::merge_into`]): no token is decoded or
//! re-encoded, so search scores are the same before and after, and memory is bounded by a
//! setting instead of growing with the corpus. A fidelity tier's refinement files merge
//! losslessly too ([`super::fidelity::merge`]: every kept token's centroid id, scales and codes
//! copied, each source's quantiser levels kept as a level set of the merged file), so a tiered
//! index's scores are also the same before and after. Retraining, lists an older latix wrote,
//! refinement files of another codec or of mixed versions and a codec not yet trained keep the
//! decode / re-encode path of [`super::commit`] (for a tier: re-encoding the reconstructions,
//! which costs recall).

use super::config::{Compression, IVF_FILE};
use super::fidelity::{FidSegment, Fidelity, MergeSource, FID_FILE};
use super::ivf::{merge_into, MergeInput};
use super::state::{load_codec, load_fid, load_ivf, LoadedCodec};
use super::IvfSegment;
use crate::error::{LatixError, Result};
use crate::store::{set_live_tmp, tmp_name, CommitContext, Snapshot};

/// Default of the compaction memory setting: mapped input bytes a merge reads between releases
/// of their pages (the merge's resident set stays near this plus a few MB).
pub const DEFAULT_MERGE_MEMORY: u64 = 1 << 30;
/// Smallest memory setting a merge uses: smaller settings act as this (releasing pages more
/// often than every MiB costs time and saves nothing measurable).
pub const MIN_MERGE_MEMORY: u64 = 1 << 20;

/// How segments `range` of `snap` merge without decoding: `Some(true)` merging their inverted
/// lists in the codes domain (a trained codec, the codes tier, every segment with current-format
/// lists and no other side file (a fidelity tier: besides them, refinement files of the codec, all
/// of the same bits per stage), and every segment with vectors or every one without: the merged
/// segment is one or the other), `Some(false)` as plain segments (no codec yet: every segment
/// keeps its vectors and has no side file), `None` when they must be re-encoded.
pub(crate) fn merge_mode(
    snap: &Snapshot,
    cfg: &Compression,
    range: std::ops::Range<usize>,
) -> Result<Option<bool>> {
    let segs = snap.segments().get(range).unwrap_or(&[]);
    let Some(first) = segs.first() else {
        return Ok(None);
    };
    let Some((_, _, crc)) = load_codec(snap)? else {
        let plain = segs
            .iter()
            .all(|v| v.segment.has_vectors() && v.entry.side_files.is_empty());
        return Ok(plain.then_some(false));
    };
    let tier = cfg.fidelity != Fidelity::Codes;
    let vectors = first.segment.has_vectors();
    let mut shape = None;
    for v in segs {
        if v.segment.has_vectors() != vectors || v.entry.side_files.len() != 1 + tier as usize {
            return Ok(None);
        }
        if tier {
            let Some((_, f)) = v.entry.side_files.iter().find(|(n, _)| n == FID_FILE) else {
                return Ok(None);
            };
            // The header and section bounds (the merge verifies the checksum).
            let fid = FidSegment::open(&snap.dir().join(f), false)?;
            let s = (fid.nbits(), fid.nbits2(), fid.transform_bits());
            if fid.codec_checksum() != crc || *shape.get_or_insert(s) != s {
                return Ok(None);
            }
        }
        let Some((_, f)) = v.entry.side_files.iter().find(|(n, _)| n == IVF_FILE) else {
            return Ok(None);
        };
        if IvfSegment::is_old_version(IvfSegment::file_version(&snap.dir().join(f))?) {
            return Ok(None);
        }
    }
    Ok(Some(true))
}

/// Writes the merged lists of the live documents of segments `range` of `snap` as the lists of
/// `file`, the one new segment of the commit `ctx` (whose documents are those of these segments,
/// in order, without the deleted ones). Each input is verified in full (checksum, manifest binding, codec, sizes)
/// before it is used, so a damaged input is an error naming it and nothing is published.
/// `memory`: see [`DEFAULT_MERGE_MEMORY`].
pub(crate) fn write_merged_lists(
    ctx: &mut CommitContext<'_>,
    snap: &Snapshot,
    range: std::ops::Range<usize>,
    file: &str,
    memory: u64,
) -> Result<()> {
    let segs = snap
        .segments()
        .get(range)
        .ok_or_else(|| LatixError::invalid("segment range out of the snapshot"))?;
    let (cfile, codec, crc) =
        load_codec(snap)?.ok_or_else(|| LatixError::invalid("the index has no trained codec"))?;
    let codec = LoadedCodec {
        file: cfile,
        codec,
        crc,
    };
    let mut lists = Vec::with_capacity(segs.len());
    for v in segs {
        let f = v
            .entry
            .side_files
            .iter()
            .find(|(n, _)| n == IVF_FILE)
            .map(|(_, f)| f.clone())
            .ok_or_else(|| {
                LatixError::corrupted(
                    snap.dir().join(v.segment.file_name()),
                    "segment has no inverted lists in a trained compressed index",
                )
            })?;
        let ivf = load_ivf(snap, &f, &v.segment, &codec)?;
        // Verification read the whole file: its pages leave the resident set until the merge.
        ivf.release_pages();
        lists.push(ivf);
    }
    // A tier's refinement files, verified, merged losslessly (in memory, as a segment's is
    // encoded) before the lists.
    let tier = segs
        .iter()
        .any(|v| v.entry.side_files.iter().any(|(n, _)| n == FID_FILE));
    if tier {
        let mut fids = Vec::with_capacity(segs.len());
        let mut docs = Vec::with_capacity(segs.len());
        for v in segs {
            let f = v
                .entry
                .side_files
                .iter()
                .find(|(n, _)| n == FID_FILE)
                .map(|(_, f)| f.clone())
                .ok_or_else(|| {
                    LatixError::corrupted(
                        snap.dir().join(v.segment.file_name()),
                        "segment of a fidelity tier has no refinement file",
                    )
                })?;
            fids.push(load_fid(snap, &f, &v.segment, &codec)?);
            let live: Vec<(usize, usize)> = (0..v.segment.n_docs() as u32)
                .filter(|&d| !v.is_deleted(d))
                .map(|d| {
                    let (a, b) = v.segment.doc_range(d);
                    (a as usize, b as usize)
                })
                .collect();
            docs.push(live);
        }
        let sources: Vec<MergeSource<'_>> = fids
            .iter()
            .zip(&docs)
            .map(|(fid, docs)| MergeSource { fid, docs })
            .collect();
        let merged = super::fidelity::merge(&sources)?;
        drop(sources);
        drop(fids);
        ctx.write_segment_file(file, FID_FILE, merged.as_bytes())?;
    }
    let inputs: Vec<MergeInput<'_>> = lists
        .iter()
        .zip(segs)
        .map(|(l, v)| MergeInput {
            lists: l,
            deleted: &v.entry.tombstones,
        })
        .collect();
    let tmp = ctx.dir().join(tmp_name("ivf-merge"));
    set_live_tmp(&tmp, true);
    let res = merge_into(&inputs, &tmp, memory)
        .and_then(|checksum| ctx.adopt_segment_file(file, IVF_FILE, &tmp, checksum));
    if res.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    set_live_tmp(&tmp, false);
    res
}
