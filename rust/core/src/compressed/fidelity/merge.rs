//! Lossless merge of refinement files (a merge of tier segments whose codec is unchanged): each
//! kept token's centroid id, stored scales and residual codes are copied verbatim into the merged
//! file's row order and block layout, and each source's level sets are kept as level sets of the
//! merged file over the rows they now hold, so every surviving document scores bit-identically
//! (its rows lie in one level set, scored with that set's tables; see [`super::score`]).

use super::{n_subspaces, FidSegment, StageParts};
use crate::compressed::fastscan::BLOCK;
use crate::error::{LatixError, Result};

/// One source of a merge: a refinement file and the row ranges of its kept documents (in row
/// order, each inside one of its level sets, as documents are).
pub struct MergeSource<'a> {
    /// The source file.
    pub fid: &'a FidSegment,
    /// Rows `a..b` of each kept document, ascending.
    pub docs: &'a [(usize, usize)],
}

/// The 4-bit code of subspace `s` of row `t` in block-layout `codes` of `n_sub` subspaces.
#[inline]
fn nibble(codes: &[u8], n_sub: usize, t: usize, s: usize) -> u8 {
    let (blk, lane) = (t / BLOCK, t % BLOCK);
    (codes[blk * n_sub * 16 + s * 16 + lane % 16] >> (4 * (lane / 16))) & 15
}

/// Copies row `t` of `src` into row `u` of `dst` (both block layout of `n_sub` subspaces; `dst`
/// zeroed where not yet written).
#[inline]
fn copy_row(src: &[u8], dst: &mut [u8], n_sub: usize, t: usize, u: usize) {
    let (blk, lane) = (u / BLOCK, u % BLOCK);
    for s in 0..n_sub {
        dst[blk * n_sub * 16 + s * 16 + lane % 16] |= nibble(src, n_sub, t, s) << (4 * (lane / 16));
    }
}

/// Merges `sources` (same dimension, bits per stage, codec) into one file of their kept
/// documents, in order (`InvalidInput` when the files disagree or a document range is out of
/// its file or crosses a level set). Adjacent level sets with bit-identical levels are joined.
/// Holds the merged file in memory (as the encoding of a segment does).
pub fn merge(sources: &[MergeSource<'_>]) -> Result<FidSegment> {
    let first = sources
        .first()
        .ok_or_else(|| LatixError::invalid("a merge of no refinement files"))?
        .fid;
    let (dim, nbits, nbits2) = (first.dim(), first.nbits(), first.nbits2());
    for s in sources {
        let f = s.fid;
        if (
            f.dim(),
            f.nbits(),
            f.nbits2(),
            f.n_centroids(),
            f.codec_checksum(),
            f.transform_bits(),
        ) != (
            dim,
            nbits,
            nbits2,
            first.n_centroids(),
            first.codec_checksum(),
            first.transform_bits(),
        ) {
            return Err(LatixError::invalid(
                "refinement files of different shapes or codecs do not merge losslessly",
            ));
        }
    }
    let n: usize = sources
        .iter()
        .flat_map(|s| s.docs.iter())
        .map(|&(a, b)| b.saturating_sub(a))
        .sum();
    let n_docs: usize = sources.iter().map(|s| s.docs.len()).sum();
    if first.is_transform() {
        return merge_transform(sources, n, n_docs);
    }
    let (nsub, nsub2) = (first.n_sub(), first.n_sub2());
    let nblk = n.div_ceil(BLOCK);
    let mut cids = crate::error::try_filled(n, 0u32, "the centroid ids of a merged file")?;
    let mut scales = crate::error::try_filled(n, 0u16, "the scales of a merged file")?;
    let n2 = if nbits2 > 0 { n } else { 0 };
    let mut scales2 = crate::error::try_filled(n2, 0u16, "the second-stage scales")?;
    let mut codes = crate::error::try_filled(nblk * nsub * 16, 0u8, "the merged codes")?;
    let mut codes2 = crate::error::try_filled(nblk * nsub2 * 16, 0u8, "the merged codes")?;
    let (mut levels, mut levels2) = (Vec::new(), Vec::new());
    let mut starts: Vec<usize> = Vec::new();
    // The source level set of the last set of the merged file (joined when the next is the same
    // set or holds bit-identical levels).
    let mut last: Option<(Vec<u32>, Vec<u32>)> = None;
    let mut u = 0usize;
    for src in sources {
        let f = src.fid;
        let (c1, c2) = (f.codes(), f.codes2());
        for &(a, b) in src.docs {
            if a > b || b > f.n_tokens() {
                return Err(LatixError::invalid(format!(
                    "rows {a}..{b} out of a refinement file of {} rows",
                    f.n_tokens()
                )));
            }
            if a == b {
                continue;
            }
            let set = f.set_of(a);
            if f.set_rows(set).1 < b {
                return Err(LatixError::invalid(format!(
                    "rows {a}..{b} cross a level set of a refinement file"
                )));
            }
            let (l1, l2) = (f.set_levels(set), f.set_levels2(set));
            let key = (
                l1.iter().map(|v| v.to_bits()).collect::<Vec<_>>(),
                l2.iter().map(|v| v.to_bits()).collect::<Vec<_>>(),
            );
            if last.as_ref() != Some(&key) {
                starts.push(u);
                levels.extend_from_slice(l1);
                levels2.extend_from_slice(l2);
                last = Some(key);
            }
            for t in a..b {
                cids[u] = f.cid(t);
                let (s1, s2) = f.scales_raw(t);
                scales[u] = s1;
                copy_row(c1, &mut codes, nsub, t, u);
                if nbits2 > 0 {
                    scales2[u] = s2;
                    copy_row(c2, &mut codes2, nsub2, t, u);
                }
                u += 1;
            }
        }
    }
    if starts.is_empty() {
        // No row kept: one set (the first source's levels) over no rows.
        starts.push(0);
        levels.extend_from_slice(first.set_levels(0));
        levels2.extend_from_slice(first.set_levels2(0));
    }
    debug_assert_eq!(nsub, n_subspaces(dim, nbits));
    FidSegment::assemble(
        dim,
        first.n_centroids(),
        first.codec_checksum(),
        n_docs,
        &cids,
        &starts,
        StageParts {
            nbits,
            levels: &levels,
            scales: &scales,
            codes: &codes,
        },
        (nbits2 > 0).then_some(StageParts {
            nbits: nbits2,
            levels: &levels2,
            scales: &scales2,
            codes: &codes2,
        }),
    )
}

/// [`merge`] of transform-coded files (version 4): pooled indices, scales and codes copied, each
/// source's rotation, rates and levels kept as a level set (adjacent bit-identical ones joined).
/// A document's pooled vectors keep their document-map order through a merge of the inverted
/// lists (its tokens stay in list order), so the pooled indices stay valid.
fn merge_transform(sources: &[MergeSource<'_>], n: usize, n_docs: usize) -> Result<FidSegment> {
    let first = sources[0].fid;
    let nsub = first.n_sub();
    let nblk = n.div_ceil(BLOCK);
    let mut pidx = crate::error::try_filled(n, 0u16, "the pooled indices of a merged file")?;
    let mut scales = crate::error::try_filled(n, 0u16, "the scales of a merged file")?;
    let mut codes = crate::error::try_filled(nblk * nsub * 16, 0u8, "the merged codes")?;
    let (mut rot, mut rates, mut levels) = (Vec::new(), Vec::new(), Vec::new());
    let mut starts: Vec<usize> = Vec::new();
    let mut last: Option<(Vec<u32>, Vec<u8>, Vec<u32>)> = None;
    let mut u = 0usize;
    let bits = |v: &[f32]| v.iter().map(|x| x.to_bits()).collect::<Vec<_>>();
    for src in sources {
        let f = src.fid;
        let c = f.codes();
        for &(a, b) in src.docs {
            if a > b || b > f.n_tokens() {
                return Err(LatixError::invalid(format!(
                    "rows {a}..{b} out of a refinement file of {} rows",
                    f.n_tokens()
                )));
            }
            if a == b {
                continue;
            }
            let set = f.set_of(a);
            if f.set_rows(set).1 < b {
                return Err(LatixError::invalid(format!(
                    "rows {a}..{b} cross a level set of a refinement file"
                )));
            }
            let key = (
                bits(f.rotation(set)),
                f.rates(set).to_vec(),
                bits(f.component_levels(set)),
            );
            if last.as_ref() != Some(&key) {
                starts.push(u);
                rot.extend_from_slice(f.rotation(set));
                rates.extend_from_slice(f.rates(set));
                levels.extend_from_slice(f.component_levels(set));
                last = Some(key);
            }
            for t in a..b {
                pidx[u] = f.pooled_index(t) as u16;
                scales[u] = f.scales_raw(t).0;
                copy_row(c, &mut codes, nsub, t, u);
                u += 1;
            }
        }
    }
    if starts.is_empty() {
        starts.push(0);
        rot.extend_from_slice(first.rotation(0));
        rates.extend_from_slice(first.rates(0));
        levels.extend_from_slice(first.component_levels(0));
    }
    super::transform::assemble(super::transform::TxParts {
        dim: first.dim(),
        n_centroids: first.n_centroids(),
        codec_crc: first.codec_checksum(),
        n_docs,
        n_sub: nsub,
        set_starts: &starts,
        rotation: &rot,
        rates: &rates,
        levels: &levels,
        pidx: &pidx,
        scales: &scales,
        codes: &codes,
    })
}
