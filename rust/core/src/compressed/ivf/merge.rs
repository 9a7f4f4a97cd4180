//! Merging inverted lists in the codes domain: the lists of several segments encoded with the same
//! codec become the lists of their concatenation (deleted documents dropped) without decoding a
//! token, so compaction is lossless (the same codes and norm scales, in the order
//! [`IvfSegment::build`] would give them) and its memory does not grow with the corpus.
//!
//! The output is the current format (see [`super`]), written section by section to a file with
//! positioned, buffered writes while the inputs are read from their memory maps: a k-way merge of
//! the sub-lists of each centroid (inputs in segment order, each input's sub-lists in document
//! order, so every output sub-list comes out in (document, token) order, as a build sorts it).
//! Three passes over the inputs: counts (the output's list offsets), list order (document
//! numbers, norm scales and re-packed code blocks of each output sub-list, in one pass that feeds
//! three section writers) and document order (the document map: each output document's tokens, in
//! the order of its input positions, take the next free position of their output sub-list, which
//! is where the list-order pass put them). The file checksum is combined from the sections'
//! running checksums (`crc32c_combine`), so nothing is read back to seal it.
//!
//! Memory: two `u32` per output sub-list (K * document chunks), one `u32` per input document,
//! a few MB of write buffers, and the mapped input pages, which are released (`MADV_DONTNEED`;
//! the page cache keeps them) whenever the bytes read since the last release exceed
//! `resident_budget`, so the merge's resident set is bounded by that setting and not by the
//! corpus.

use std::fs::{File, OpenOptions};
use std::os::unix::fs::FileExt;
use std::path::Path;

use super::*;
use crate::compressed::fastscan::halves;
use crate::error::{try_filled, try_vec, LatixError, Result};

/// One input of [`merge_into`]: a segment's lists and its deleted documents (sorted, unique).
pub struct MergeInput<'a> {
    /// The segment's inverted lists (current format: with the document map).
    pub lists: &'a IvfSegment,
    /// Segment-local numbers of its deleted documents, ascending.
    pub deleted: &'a [u32],
}

/// Bytes a section writer buffers before one positioned write.
const WRITE_BUF: usize = 1 << 20;

/// A buffered, positioned writer of one contiguous region of the output, with the running crc32c
/// of what it wrote (regions are combined in file order at the end).
struct RegionWriter<'f> {
    file: &'f File,
    path: &'f Path,
    pos: u64,
    buf: Vec<u8>,
    crc: u32,
    len: u64,
}

impl<'f> RegionWriter<'f> {
    fn new(file: &'f File, path: &'f Path, at: usize) -> Result<RegionWriter<'f>> {
        Ok(RegionWriter {
            file,
            path,
            pos: at as u64,
            buf: try_vec(WRITE_BUF, "a write buffer of a lists merge")?,
            crc: 0,
            len: 0,
        })
    }

    fn put(&mut self, b: &[u8]) -> Result<()> {
        self.buf.extend_from_slice(b);
        if self.buf.len() >= WRITE_BUF {
            self.flush()?;
        }
        Ok(())
    }

    fn flush(&mut self) -> Result<()> {
        if self.buf.is_empty() {
            return Ok(());
        }
        self.file
            .write_all_at(&self.buf, self.pos)
            .map_err(|e| LatixError::io(self.path, e))?;
        self.crc = crc32c::crc32c_append(self.crc, &self.buf);
        self.pos += self.buf.len() as u64;
        self.len += self.buf.len() as u64;
        self.buf.clear();
        Ok(())
    }

    /// Zero bytes up to absolute offset `end` (the next section's aligned start).
    fn pad_to(&mut self, end: usize) -> Result<()> {
        let cur = self.pos as usize + self.buf.len();
        if end > cur {
            self.buf.resize(self.buf.len() + (end - cur), 0);
        }
        self.flush()
    }

    fn finish(mut self) -> Result<(u32, u64)> {
        self.flush()?;
        Ok((self.crc, self.len))
    }
}

/// Releases the inputs' mapped pages once `budget` bytes were read since the last release.
struct Resident<'a> {
    inputs: &'a [MergeInput<'a>],
    budget: u64,
    read: u64,
}

impl Resident<'_> {
    #[inline]
    fn read(&mut self, bytes: u64) {
        self.read += bytes;
        if self.read > self.budget {
            self.release();
        }
    }

    fn release(&mut self) {
        for i in self.inputs {
            i.lists.bytes.release();
        }
        self.read = 0;
    }
}

/// Output document number of every input document (`u32::MAX` for a deleted one), and the number
/// of live documents and tokens.
fn doc_maps(inputs: &[MergeInput<'_>]) -> Result<(Vec<Vec<u32>>, usize, usize)> {
    let mut maps = Vec::with_capacity(inputs.len());
    let (mut n_docs, mut n_tokens) = (0usize, 0usize);
    for i in inputs {
        let nd = i.lists.n_docs();
        let mut map = try_filled(nd, u32::MAX, "the document map of a lists merge")?;
        let mut dead = i.deleted.iter().peekable();
        for (d, slot) in map.iter_mut().enumerate() {
            if dead.peek().is_some_and(|&&x| x as usize == d) {
                dead.next();
                continue;
            }
            *slot = n_docs as u32;
            n_docs += 1;
            n_tokens += i.lists.doc_positions(d).map_or(0, |p| p.len());
        }
        if dead.next().is_some() {
            return Err(LatixError::invalid(
                "deleted documents of a lists merge must be ascending and within the segment",
            ));
        }
        maps.push(map);
    }
    if n_docs >= u32::MAX as usize || n_tokens >= u32::MAX as usize {
        return Err(LatixError::invalid(
            "a merged segment holds fewer than 2^32 documents and tokens",
        ));
    }
    Ok((maps, n_docs, n_tokens))
}

/// Writes the inverted lists of the concatenation of `inputs` (their live documents, in order) to
/// a new file at `path` (which must not exist), fsynced; returns its file checksum (the trailing
/// crc32c, as [`IvfSegment::file_checksum`]). Every input must be current-format lists of the same
/// codec. `resident_budget`: bytes of mapped input read between releases of the mapped pages
/// (see the module documentation). On error the file is removed.
pub fn merge_into(inputs: &[MergeInput<'_>], path: &Path, resident_budget: u64) -> Result<u32> {
    let file = OpenOptions::new()
        .read(true)
        .write(true)
        .create_new(true)
        .open(path)
        .map_err(|e| LatixError::io(path, e))?;
    let res = merge_file(
        inputs,
        &file,
        path,
        resident_budget.max(crate::compressed::MIN_MERGE_MEMORY),
    );
    if res.is_err() {
        drop(file);
        let _ = std::fs::remove_file(path);
    }
    res
}

fn merge_file(inputs: &[MergeInput<'_>], file: &File, path: &Path, budget: u64) -> Result<u32> {
    let first = inputs
        .first()
        .ok_or_else(|| LatixError::invalid("a lists merge needs at least one input"))?
        .lists;
    let (k, m) = (first.n_centroids(), first.n_subspaces());
    for i in inputs {
        let l = i.lists;
        if !l.has_doc_map() {
            return Err(LatixError::invalid(
                "a lists merge reads current-format lists (with the document map) only",
            ));
        }
        if l.n_centroids() != k || l.n_subspaces() != m || l.codec_checksum() != first.codec_crc {
            return Err(LatixError::invalid(
                "lists merged in the codes domain must share their codec",
            ));
        }
    }
    let (maps, n_docs, n_tokens) = doc_maps(inputs)?;
    let nch = n_docs.div_ceil(DOC_CHUNK).max(1);
    let nl = k
        .checked_mul(nch)
        .filter(|&v| v < u32::MAX as usize)
        .ok_or_else(|| LatixError::invalid("a merged segment has too many sub-lists"))?;
    let mut res = Resident {
        inputs,
        budget,
        read: 0,
    };

    // Pass 1: tokens per output sub-list.
    let what = "the list offsets of a lists merge";
    let mut list_tokens = try_filled(nl + 1, 0u32, what)?;
    for (i, map) in inputs.iter().zip(&maps) {
        let (lt, dot, nch_in) = (
            i.lists.list_tokens(),
            i.lists.doc_of_token(),
            i.lists.n_chunks,
        );
        for l_in in 0..lt.len() - 1 {
            let (c, base) = (l_in / nch_in, (l_in % nch_in) * DOC_CHUNK);
            let (a, e) = (lt[l_in] as usize, lt[l_in + 1] as usize);
            for &d in &dot[a..e] {
                let nd = map[base + d as usize];
                if nd != u32::MAX {
                    list_tokens[c * nch + nd as usize / DOC_CHUNK + 1] += 1;
                }
            }
            res.read(2 * (e - a) as u64);
        }
    }
    let mut list_blocks = try_filled(nl + 1, 0u32, what)?;
    for l in 0..nl {
        let len = list_tokens[l + 1];
        list_tokens[l + 1] += list_tokens[l];
        list_blocks[l + 1] = list_blocks[l] + (len as usize).div_ceil(BLOCK) as u32;
    }
    let n_blocks = list_blocks[nl] as usize;
    let [s0, s1, s2, s3, s4, s5, s6] = layout(VERSION, nl, n_docs, n_tokens);
    let end = s6 + n_blocks * m * 16;

    // Header and list offsets.
    let mut head = RegionWriter::new(file, path, 0)?;
    let mut h = [0u8; HEADER];
    format::write_header(
        &mut h,
        MAGIC,
        &[
            VERSION,
            k as u32,
            m as u32,
            n_docs as u32,
            n_tokens as u32,
            n_blocks as u32,
            first.codec_crc,
            nch as u32,
        ],
    );
    head.put(&h)?;
    head.pad_to(s0)?;
    head.put(bytemuck::cast_slice(&list_tokens))?;
    head.pad_to(s1)?;
    head.put(bytemuck::cast_slice(&list_blocks))?;
    head.pad_to(s2)?;

    // Pass 2, list order: document numbers, norm scales and code blocks.
    let mut w_doc = RegionWriter::new(file, path, s2)?;
    let mut w_norm = RegionWriter::new(file, path, s3)?;
    let mut w_codes = RegionWriter::new(file, path, s6)?;
    let bb = m * 16;
    let mut block = vec![0u8; bb];
    // Per subspace: its row's byte offset in a half of an output block, and its nibble.
    let rows: Vec<(usize, u32)> = (0..m).map(|s| halves::locate(m, 0, s)).collect();
    // (output sub-list, tokens in `block`) of the block being filled.
    let (mut cur_l, mut fill) = (usize::MAX, 0usize);
    for c in 0..k {
        for (i, map) in inputs.iter().zip(&maps) {
            let l = i.lists;
            let NormScales::Fixed(norms) = l.norm_scales() else {
                return Err(LatixError::invalid(
                    "a lists merge reads current-format lists",
                ));
            };
            let (lt, lb, dot, codes) = (
                l.list_tokens(),
                l.list_blocks(),
                l.doc_of_token(),
                l.codes(),
            );
            for h_in in 0..l.n_chunks {
                let l_in = c * l.n_chunks + h_in;
                let (a, e, b0) = (lt[l_in] as usize, lt[l_in + 1] as usize, lb[l_in] as usize);
                for t in a..e {
                    let nd = map[h_in * DOC_CHUNK + dot[t] as usize];
                    if nd == u32::MAX {
                        continue;
                    }
                    let l_out = c * nch + nd as usize / DOC_CHUNK;
                    if l_out != cur_l || fill == BLOCK {
                        if fill > 0 {
                            w_codes.put(&block)?;
                        }
                        block.fill(0);
                        (cur_l, fill) = (l_out, 0);
                    }
                    w_doc.put(&((nd as usize % DOC_CHUNK) as u16).to_le_bytes())?;
                    w_norm.put(&norms[t].to_le_bytes())?;
                    // The token's codes in its input block, moved to its lane of the output
                    // block (split halves: lane u is byte u % 16 of each row of half u / 16).
                    let j = t - a;
                    let src = &codes[(b0 + j / BLOCK) * bb..(b0 + j / BLOCK + 1) * bb];
                    let (sl, dl) = (j % BLOCK, fill);
                    let dst = &mut block[(dl / 16) * bb / 2..(dl / 16 + 1) * bb / 2];
                    match l.block_layout() {
                        // Whole bytes: a row holds the same two subspaces in both.
                        BlockLayout::Halves => {
                            let src = &src[(sl / 16) * bb / 2..(sl / 16 + 1) * bb / 2];
                            for (d, s) in dst.chunks_exact_mut(16).zip(src.chunks_exact(16)) {
                                d[dl % 16] = s[sl % 16];
                            }
                        }
                        // An older file's interleaved block: nibble by nibble.
                        BlockLayout::Interleaved => {
                            for (s, &(at, sh)) in rows.iter().enumerate() {
                                let code = BlockLayout::Interleaved.code(src, m, sl, s);
                                dst[at + dl % 16] |= code << sh;
                            }
                        }
                    }
                    fill += 1;
                }
                res.read((e - a) as u64 * (4 + bb as u64 / BLOCK as u64));
            }
        }
    }
    if fill > 0 {
        w_codes.put(&block)?;
    }
    w_doc.pad_to(s3)?;
    w_norm.pad_to(s4)?;

    // Pass 3, document order: the document map.
    let mut w_off = RegionWriter::new(file, path, s4)?;
    let mut acc = 0u32;
    w_off.put(&acc.to_le_bytes())?;
    for (i, map) in inputs.iter().zip(&maps) {
        for (d, &nd) in map.iter().enumerate() {
            if nd != u32::MAX {
                acc += i.lists.doc_positions(d).map_or(0, |p| p.len() as u32);
                w_off.put(&acc.to_le_bytes())?;
            }
        }
    }
    w_off.pad_to(s5)?;
    let mut cursor = list_tokens.clone();
    for (i, map) in inputs.iter().zip(&maps) {
        let l = i.lists;
        for (d, &nd) in map.iter().enumerate() {
            if nd == u32::MAX {
                continue;
            }
            let h_out = nd as usize / DOC_CHUNK;
            let positions = l.doc_positions(d).unwrap_or(&[]);
            for &q in positions {
                let c = l.list_of_position(q as usize) / l.n_chunks;
                let l_out = c * nch + h_out;
                let p = cursor[l_out];
                if p >= list_tokens[l_out + 1] {
                    return Err(LatixError::invalid(
                        "inverted lists to merge disagree with their document map",
                    ));
                }
                cursor[l_out] = p + 1;
                w_off.put(&p.to_le_bytes())?;
            }
            res.read(positions.len() as u64 * 4);
        }
    }
    w_off.pad_to(s6)?;
    res.release();

    // Seal: the regions' checksums combined in file order.
    let mut crc = 0u32;
    let mut len = 0u64;
    for (rc, rl) in [
        head.finish()?,
        w_doc.finish()?,
        w_norm.finish()?,
        w_off.finish()?,
        w_codes.finish()?,
    ] {
        crc = if len == 0 {
            rc
        } else {
            crc32c::crc32c_combine(crc, rc, rl as usize)
        };
        len += rl;
    }
    if len != end as u64 {
        return Err(LatixError::invalid(format!(
            "a lists merge wrote {len} bytes where its layout has {end}"
        )));
    }
    file.write_all_at(&crc.to_le_bytes(), end as u64)
        .map_err(|e| LatixError::io(path, e))?;
    file.sync_all().map_err(|e| LatixError::io(path, e))?;
    Ok(crc)
}
