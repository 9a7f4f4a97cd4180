//! Building inverted lists: encoding a segment's tokens with the codec ([`IvfSegment::build`])
//! and upgrading lists an older latix wrote ([`IvfSegment::upgraded`]).

use rayon::prelude::*;

use super::*;
use crate::compressed::codec::Codec;
use crate::compressed::fastscan::{BlockLayout, BLOCK};
use crate::error::{try_filled, try_vec, LatixError, Result};
use crate::maxsim::DocVectors;

impl IvfSegment {
    /// Encodes documents `offsets[i]..offsets[i+1]` of `vectors` (`dim`-wide rows) with `codec` and
    /// builds the segment's lists. `codec_crc` is [`codec_checksum`] of the codec's bytes. Runs in the
    /// current rayon pool; inputs must be valid (offsets non-decreasing, within `vectors`).
    pub fn build(
        codec: &Codec,
        codec_crc: u32,
        vectors: DocVectors<'_>,
        offsets: &[u64],
    ) -> Result<IvfSegment> {
        let dim = codec.dim();
        if !vectors.len().is_multiple_of(dim) {
            return Err(LatixError::invalid(format!(
                "vectors have dim {}, the codec has dim {dim}",
                vectors.len()
            )));
        }
        let n_docs = offsets.len().saturating_sub(1);
        let n_tokens = offsets.last().copied().unwrap_or(0) as usize;
        if n_tokens > vectors.len() / dim
            || offsets.windows(2).any(|w| w[1] < w[0])
            || offsets.first().copied().unwrap_or(0) != 0
        {
            return Err(LatixError::invalid(
                "offsets must start at 0, be non-decreasing and stay within the vectors",
            ));
        }
        if n_tokens >= u32::MAX as usize || n_docs >= u32::MAX as usize {
            return Err(LatixError::invalid(
                "a segment holds fewer than 2^32 tokens",
            ));
        }
        let m = codec.n_subspaces();
        let bpt = m / 2;
        let k = codec.n_centroids();
        // Encode in chunks so f16 input is converted to f32 a piece at a time.
        const CHUNK: usize = 65536;
        // Every buffer below is sized by the segment's token count: reserved fallibly, so a
        // commit too large for memory is an error, not an abort.
        let what = "encoding a segment's tokens";
        let mut cids = try_vec(n_tokens, what)?;
        let mut codes = try_vec(n_tokens.saturating_mul(bpt), what)?;
        let mut scales: Vec<f32> = try_vec(n_tokens, what)?;
        let mut buf = Vec::new();
        let mut t0 = 0;
        while t0 < n_tokens {
            let t1 = (t0 + CHUNK).min(n_tokens);
            let x: &[f32] = match vectors {
                DocVectors::F32(v) => &v[t0 * dim..t1 * dim],
                DocVectors::F16(v) => {
                    use half::slice::HalfFloatSliceExt;
                    buf.clear();
                    buf.resize((t1 - t0) * dim, 0.0);
                    v[t0 * dim..t1 * dim].convert_to_f32_slice(&mut buf);
                    &buf
                }
            };
            crate::maxsim::check_finite_from(DocVectors::F32(x), "token vectors", dim, t0)?;
            let (c, cd) = codec.encode(x);
            let _norms = crate::profile::span("ivf/norm-scales");
            // Decoded a piece at a time, in parallel (the same values as one decode).
            const PIECE: usize = 1024;
            let piece_scales: Vec<Vec<f32>> = x
                .par_chunks(PIECE * dim)
                .zip(c.par_chunks(PIECE))
                .zip(cd.par_chunks(PIECE * bpt))
                .map(|((xs, cs), cds)| {
                    let decoded = codec.decode(cs, cds);
                    xs.chunks_exact(dim)
                        .zip(decoded.chunks_exact(dim))
                        .map(|(a, r)| norm_ratio(a, r))
                        .collect()
                })
                .collect();
            for p in piece_scales {
                scales.extend_from_slice(&p);
            }
            cids.extend_from_slice(&c);
            codes.extend_from_slice(&cd);
            t0 = t1;
        }
        let _lists = crate::profile::span("ivf/lists");
        // Counting sort of tokens by sub-list (centroid, document chunk); stable, so document order
        // inside a sub-list.
        let nch = n_docs.div_ceil(DOC_CHUNK).max(1);
        let nl = k * nch;
        let mut doc_full = try_filled(n_tokens, 0u32, what)?;
        {
            let mut doc = 0usize;
            for (t, h) in doc_full.iter_mut().enumerate() {
                while offsets[doc + 1] as usize <= t {
                    doc += 1;
                }
                *h = doc as u32;
            }
        }
        let list_of = |c: u32, d: u32| c as usize * nch + d as usize / DOC_CHUNK;
        let mut list_tokens = vec![0u32; nl + 1];
        for (&c, &d) in cids.iter().zip(&doc_full) {
            list_tokens[list_of(c, d) + 1] += 1;
        }
        let mut list_blocks = vec![0u32; nl + 1];
        for l in 0..nl {
            let len = list_tokens[l + 1];
            list_tokens[l + 1] += list_tokens[l];
            list_blocks[l + 1] = list_blocks[l] + (len as usize).div_ceil(BLOCK) as u32;
        }
        let n_blocks = list_blocks[nl] as usize;
        let mut order = try_filled(n_tokens, 0u32, what)?;
        let mut doc_of_token = try_filled(n_tokens, 0u16, what)?;
        let mut norm_scale = try_filled(n_tokens, 0u16, what)?;
        // The document map: list position of every token, in token order, then sorted per
        // document (the documents' token ranges are the input offsets).
        let mut doc_positions = try_filled(n_tokens, 0u32, what)?;
        let mut fill = list_tokens.clone();
        for (t, (&c, &d)) in cids.iter().zip(&doc_full).enumerate() {
            let l = list_of(c, d);
            let pos = fill[l] as usize;
            fill[l] += 1;
            order[pos] = t as u32;
            doc_of_token[pos] = (d as usize % DOC_CHUNK) as u16;
            norm_scale[pos] = norm_fixed(scales[t]);
            doc_positions[t] = pos as u32;
        }
        drop(scales);
        drop(doc_full);
        let doc_offsets: Vec<u32> = offsets.iter().map(|&o| o as u32).collect();
        for w in doc_offsets.windows(2) {
            doc_positions[w[0] as usize..w[1] as usize].sort_unstable();
        }
        let block_bytes = m * 16;
        let sections = Sections {
            k,
            m,
            n_docs,
            n_blocks,
            codec_crc,
            n_chunks: nch,
            list_tokens: &list_tokens,
            list_blocks: &list_blocks,
            doc_of_token: &doc_of_token,
            norm_scale: &norm_scale,
            doc_offsets: &doc_offsets,
            doc_positions: &doc_positions,
        };
        sections.assemble(VERSION, |code_area| {
            // Fill blocks sub-list by sub-list (in parallel).
            let blocks: Vec<(usize, Vec<u8>)> = (0..nl)
                .into_par_iter()
                .filter(|&l| list_tokens[l + 1] > list_tokens[l])
                .map(|l| {
                    let (a, e) = (list_tokens[l] as usize, list_tokens[l + 1] as usize);
                    let nb = (e - a).div_ceil(BLOCK);
                    let mut out = vec![0u8; nb * block_bytes];
                    let mut tok = Vec::with_capacity(BLOCK * bpt);
                    for bi in 0..nb {
                        tok.clear();
                        for &t in &order[a + bi * BLOCK..(a + (bi + 1) * BLOCK).min(e)] {
                            tok.extend_from_slice(&codes[t as usize * bpt..(t as usize + 1) * bpt]);
                        }
                        let at = bi * block_bytes..(bi + 1) * block_bytes;
                        BlockLayout::Halves.pack(&tok, m, &mut out[at]);
                    }
                    (l, out)
                })
                .collect();
            for (l, out) in blocks {
                let off = list_blocks[l] as usize * block_bytes;
                code_area[off..off + out.len()].copy_from_slice(&out);
            }
        })
    }

    /// The same lists in the current format, or None when they need no upgrade: version-3 lists
    /// (f32 norm scales, no document map) get the document map, derived from their document
    /// numbers, u16 norm scales and the split-half code blocks. Lossless for the codes, so a
    /// vector-free index is upgraded without re-encoding reconstructions. Version-4 lists (the
    /// interleaved blocks) are searched as they are (None).
    pub fn upgraded(&self) -> Result<Option<IvfSegment>> {
        if self.version >= VERSION_V4 {
            return Ok(None);
        }
        let n_tokens = self.n_tokens;
        let nch = self.n_chunks;
        let lt = self.list_tokens();
        let docs = self.doc_of_token();
        // Owner of every list position, then a counting sort into per-document position lists
        // (ascending, as positions are visited in order).
        let mut owner = vec![0u32; n_tokens];
        for l in 0..lt.len() - 1 {
            let base = (l % nch) * DOC_CHUNK;
            for t in lt[l] as usize..lt[l + 1] as usize {
                owner[t] = (base + docs[t] as usize) as u32;
            }
        }
        let mut doc_offsets = vec![0u32; self.n_docs + 1];
        for &d in &owner {
            doc_offsets[d as usize + 1] += 1;
        }
        for d in 0..self.n_docs {
            doc_offsets[d + 1] += doc_offsets[d];
        }
        let mut fill = doc_offsets.clone();
        let mut doc_positions = vec![0u32; n_tokens];
        for (t, &d) in owner.iter().enumerate() {
            doc_positions[fill[d as usize] as usize] = t as u32;
            fill[d as usize] += 1;
        }
        let norms = self.norm_scales();
        let norm_scale: Vec<u16> = (0..n_tokens).map(|t| norm_fixed(norms.get(t))).collect();
        let sections = Sections {
            k: self.k,
            m: self.m,
            n_docs: self.n_docs,
            n_blocks: self.codes().len() / (self.m * 16),
            codec_crc: self.codec_crc,
            n_chunks: nch,
            list_tokens: lt,
            list_blocks: self.list_blocks(),
            doc_of_token: docs,
            norm_scale: &norm_scale,
            doc_offsets: &doc_offsets,
            doc_positions: &doc_positions,
        };
        let from = self.block_layout();
        sections
            .assemble(VERSION, |code_area| {
                relayout(self.codes(), self.m, from, BlockLayout::Halves, code_area)
            })
            .map(Some)
    }

    /// The same lists as a version-4 file (interleaved code blocks), what latix wrote before
    /// version 5: for the tests that older indexes are still read and searched alike. Needs the
    /// document map (version 4 or later).
    #[doc(hidden)]
    pub fn as_version_4(&self) -> Result<IvfSegment> {
        let (NormScales::Fixed(norms), true) = (self.norm_scales(), self.has_doc_map()) else {
            return Err(LatixError::invalid(
                "as_version_4 needs version-4 or later lists",
            ));
        };
        let doc_offsets = self.u32s(SEC_DOC_OFFSETS).to_vec();
        let doc_positions = self.u32s(SEC_DOC_POSITIONS).to_vec();
        let sections = Sections {
            k: self.k,
            m: self.m,
            n_docs: self.n_docs,
            n_blocks: self.codes().len() / (self.m * 16),
            codec_crc: self.codec_crc,
            n_chunks: self.n_chunks,
            list_tokens: self.list_tokens(),
            list_blocks: self.list_blocks(),
            doc_of_token: self.doc_of_token(),
            norm_scale: norms,
            doc_offsets: &doc_offsets,
            doc_positions: &doc_positions,
        };
        let from = self.block_layout();
        sections.assemble(VERSION_V4, |code_area| {
            relayout(
                self.codes(),
                self.m,
                from,
                BlockLayout::Interleaved,
                code_area,
            )
        })
    }
}

/// Rewrites the code blocks `codes` (`m * 16` bytes each) from layout `from` into `to` in `out`.
fn relayout(codes: &[u8], m: usize, from: BlockLayout, to: BlockLayout, out: &mut [u8]) {
    let bb = m * 16;
    let mut tok = vec![0u8; BLOCK * m / 2];
    for (src, dst) in codes.chunks_exact(bb).zip(out.chunks_exact_mut(bb)) {
        tok.fill(0);
        for t in 0..BLOCK {
            for s in 0..m {
                tok[t * m / 2 + s / 2] |= from.code(src, m, t, s) << (4 * (s % 2));
            }
        }
        to.pack(&tok, m, dst);
    }
}
