//! "Fast scan" scoring of 4-bit product-quantisation codes with in-register lookup tables
//! (André, Kermarrec & Le Scouarnec, "Cache locality is not enough: high-performance nearest
//! neighbor search with product quantization fast scan", VLDB 2015; the FAISS `IndexPQFastScan`
//! layout). Codes of 32 tokens are stored subspace-major so that one 32-byte load holds two
//! subspaces of all 32 tokens; `pshufb` looks up 32 table entries at once. Tables are quantised to
//! u8 per query token (one scale shared by all subspaces so sums stay comparable) and summed in u16
//! lanes, two tokens per lane pair, with the odd/even trick of FAISS (no widening instructions).
//!
//! The scalar [`scan_block_scalar`] is the reference the SIMD kernel is tested against.
//!
//! Two layouts of a block's bytes ([`BlockLayout`]): the interleaved one of this file (a row is
//! one subspace of all 32 tokens: fidelity files and inverted lists up to version 4), and the
//! split halves of [`halves`] (inverted lists from version 5), where a token's codes sit in half
//! as many cache lines, which is what refinement's gather pays for.

use super::codec::{Codec, KSUB};

pub mod halves;

/// Tokens per block.
pub const BLOCK: usize = 32;

/// How the codes of a block's 32 tokens are laid out in its `M * 16` bytes (both give the same
/// sums for the same codes).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BlockLayout {
    /// Row `s` (16 bytes) holds subspace `s` of all 32 tokens: byte `j` has token `j` in its low
    /// nibble and token `j + 16` in its high one (inverted lists of versions 3-4, and the
    /// fidelity files). [`pack_block`], [`scan_block`], [`gather_block`].
    Interleaved,
    /// Two halves of 16 tokens, a row holding two subspaces of each (inverted lists of version
    /// 5): a token's codes sit in half the cache lines ([`halves`]).
    Halves,
}

impl BlockLayout {
    /// Packs up to 32 tokens' codes (token-major, nibble-packed) into one block.
    pub fn pack(self, tokens: &[u8], m: usize, out: &mut [u8]) {
        match self {
            BlockLayout::Interleaved => pack_block(tokens, m, out),
            BlockLayout::Halves => halves::pack(tokens, m, out),
        }
    }

    /// Sums the table entries of the 32 tokens of `block` (SIMD when `simd`).
    #[inline]
    pub fn scan(self, lut: &[u8], block: &[u8], m: usize, simd: bool, out: &mut [u16; BLOCK]) {
        match self {
            BlockLayout::Interleaved => scan_block(lut, block, m, simd, out),
            BlockLayout::Halves => halves::scan(lut, block, m, simd, out),
        }
    }

    /// Copies the codes of up to 32 `(block, lane)` tokens of `codes` into one block of the
    /// same layout (token `u` at lane `u`).
    #[inline]
    pub fn gather(self, codes: &[u8], m: usize, tokens: &[(usize, usize)], out: &mut [u8]) {
        match self {
            BlockLayout::Interleaved => gather_block(codes, m, tokens, out),
            BlockLayout::Halves => halves::gather(codes, m, tokens, out),
        }
    }

    /// Code of subspace `s` of token `t` of `block`.
    #[inline]
    pub fn code(self, block: &[u8], m: usize, t: usize, s: usize) -> u8 {
        match self {
            BlockLayout::Interleaved => (block[s * 16 + t % 16] >> (4 * (t / 16))) & 15,
            BlockLayout::Halves => halves::code(block, m, t, s),
        }
    }
}

/// A query token's quantised lookup table: `lut[s * 16 + j]` ~ `(<q_s, codeword_{s,j}> - min_s) / scale`.
#[derive(Clone, Debug, PartialEq)]
pub struct TokenLut {
    /// `M * 16` quantised entries.
    pub lut: Vec<u8>,
    /// Sum over subspaces of the minimum entry (added back to every score).
    pub bias: f32,
    /// Value of one quantisation step.
    pub scale: f32,
}

/// Builds the lookup table of one query token `q` (`dim` f32).
///
/// The float table of a subspace is 16 multiply-adds per dimension against the dimension-major
/// codewords ([`Codec::codewords_by_dim`]), and min / max / rounding are plain compare-selects,
/// so the whole build vectorises (it was a tenth of a SciFact query's instructions as dot products,
/// `f32::min` folds and libm `roundf` calls).
pub fn build_lut(codec: &Codec, q: &[f32]) -> TokenLut {
    let m = codec.n_subspaces();
    let so = codec.subspace_offsets();
    let cwt = codec.codewords_by_dim();
    let mut lf = vec![[0.0f32; KSUB]; m];
    let mut mins = vec![0.0f32; m];
    let mut bias = 0.0f32;
    let mut range = 0.0f32;
    for (s, out) in lf.iter_mut().enumerate() {
        let mut acc = [0.0f32; KSUB];
        for d in so[s]..so[s + 1] {
            let qd = q[d];
            let row: &[f32; KSUB] = cwt[d * KSUB..(d + 1) * KSUB]
                .try_into()
                .expect("KSUB codewords per dimension");
            for j in 0..KSUB {
                acc[j] += qd * row[j];
            }
        }
        *out = acc;
        let (mut lo, mut hi) = (acc[0], acc[0]);
        for &v in &acc[1..] {
            lo = if v < lo { v } else { lo };
            hi = if v > hi { v } else { hi };
        }
        mins[s] = lo;
        bias += lo;
        range = range.max(hi - lo);
    }
    let scale = if range > 0.0 { range / 255.0 } else { 1.0 };
    let inv = 1.0 / scale;
    let mut lut = vec![0u8; m * KSUB];
    for ((out, row), &lo) in lut.chunks_exact_mut(KSUB).zip(&lf).zip(&mins) {
        for (o, &v) in out.iter_mut().zip(row) {
            // v - lo >= 0, so adding 0.5 and truncating rounds to nearest. The selects map NaN
            // (only from overflowing inputs) to 0 and clamp to 0..=255, so the unchecked
            // conversion, which vectorises unlike a saturating `as`, is always defined.
            let y = (v - lo) * inv + 0.5;
            let y = if y >= 0.0 { y } else { 0.0 };
            let y = if y < 255.0 { y } else { 255.0 };
            // SAFETY: 0 <= y <= 255 (NaN excluded by the first select).
            *o = unsafe { y.to_int_unchecked::<i32>() } as u8;
        }
    }
    TokenLut { lut, bias, scale }
}

/// Packs the codes of up to 32 tokens (`M / 2` bytes each, token-major, nibble-packed as
/// [`Codec::encode`] writes them) into one block of `M * 16` bytes. Missing tokens get code 0.
pub fn pack_block(tokens: &[u8], m: usize, out: &mut [u8]) {
    let bpt = m / 2;
    let n = tokens.len() / bpt;
    debug_assert!(n <= BLOCK && out.len() == m * 16);
    out.fill(0);
    for t in 0..n {
        let tc = &tokens[t * bpt..(t + 1) * bpt];
        for s in 0..m {
            let code = (tc[s / 2] >> (4 * (s % 2))) & 15;
            let (byte, shift) = (t % 16, 4 * (t / 16));
            out[s * 16 + byte] |= code << shift;
        }
    }
}

/// Reference kernel: `out[t] = sum_s lut[s * 16 + code(t, s)]` for the 32 tokens of a block.
pub fn scan_block_scalar(lut: &[u8], block: &[u8], m: usize, out: &mut [u16; BLOCK]) {
    *out = [0; BLOCK];
    for s in 0..m {
        let l = &lut[s * 16..(s + 1) * 16];
        let b = &block[s * 16..(s + 1) * 16];
        for j in 0..16 {
            out[j] += l[(b[j] & 15) as usize] as u16;
            out[j + 16] += l[(b[j] >> 4) as usize] as u16;
        }
    }
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
unsafe fn scan_block_avx2(lut: &[u8], block: &[u8], m: usize, out: &mut [u16; BLOCK]) {
    use std::arch::x86_64::*;
    debug_assert!(lut.len() >= m * 16 && block.len() >= m * 16 && m.is_multiple_of(2));
    let acc = scan_pairs_avx2(lut, block, 0..m / 2, [_mm256_setzero_si256(); 4]);
    store_sums_avx2(acc, out);
}

/// Adds row pairs `pairs` (32 bytes each) of `block` looked up in `lut` to the accumulators
/// `[lo_e, lo_o, hi_e, hi_o]`: as u16 words, a lookup of the low (high) nibbles holds even + 256
/// * odd tokens of lanes 0-15 (16-31), and the sum of the words shifted right by 8 is the odd sum.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
#[inline]
unsafe fn scan_pairs_avx2(
    lut: &[u8],
    block: &[u8],
    pairs: std::ops::Range<usize>,
    acc: [std::arch::x86_64::__m256i; 4],
) -> [std::arch::x86_64::__m256i; 4] {
    use std::arch::x86_64::*;
    let mask = _mm256_set1_epi8(0x0f);
    let [mut lo_e, mut lo_o, mut hi_e, mut hi_o] = acc;
    for p in pairs {
        // SAFETY: p * 32 + 32 <= m * 16 <= both lengths (checked by the caller).
        let c = _mm256_loadu_si256(block.as_ptr().add(p * 32) as *const __m256i);
        let l = _mm256_loadu_si256(lut.as_ptr().add(p * 32) as *const __m256i);
        let rlo = _mm256_shuffle_epi8(l, _mm256_and_si256(c, mask));
        let rhi = _mm256_shuffle_epi8(l, _mm256_and_si256(_mm256_srli_epi16(c, 4), mask));
        lo_e = _mm256_add_epi16(lo_e, rlo);
        lo_o = _mm256_add_epi16(lo_o, _mm256_srli_epi16(rlo, 8));
        hi_e = _mm256_add_epi16(hi_e, rhi);
        hi_o = _mm256_add_epi16(hi_o, _mm256_srli_epi16(rhi, 8));
    }
    [lo_e, lo_o, hi_e, hi_o]
}

/// The 32 token sums out of the accumulators of [`scan_pairs_avx2`].
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
#[inline]
unsafe fn store_sums_avx2(acc: [std::arch::x86_64::__m256i; 4], out: &mut [u16; BLOCK]) {
    use std::arch::x86_64::*;
    let [mut lo_e, lo_o, mut hi_e, hi_o] = acc;
    // Exact modulo 2^16, and the true sums are below 2^16 (m <= 256, entries <= 255).
    lo_e = _mm256_sub_epi16(lo_e, _mm256_slli_epi16(lo_o, 8));
    hi_e = _mm256_sub_epi16(hi_e, _mm256_slli_epi16(hi_o, 8));
    // Lane 0 holds even subspaces, lane 1 odd ones: add them.
    let fold =
        |v: __m256i| _mm_add_epi16(_mm256_castsi256_si128(v), _mm256_extracti128_si256(v, 1));
    let (le, lo, he, ho) = (fold(lo_e), fold(lo_o), fold(hi_e), fold(hi_o));
    let p = out.as_mut_ptr() as *mut __m128i;
    // SAFETY: out holds 32 u16 = 4 x 16 bytes.
    _mm_storeu_si128(p, _mm_unpacklo_epi16(le, lo));
    _mm_storeu_si128(p.add(1), _mm_unpackhi_epi16(le, lo));
    _mm_storeu_si128(p.add(2), _mm_unpacklo_epi16(he, ho));
    _mm_storeu_si128(p.add(3), _mm_unpackhi_epi16(he, ho));
}

/// AVX-512BW [`scan_block`]: four 16-byte rows (subspaces) per 64-byte register, against the
/// AVX2 kernel's two, with the same arithmetic on each row (so the same sums, exactly): the
/// AVX2 loop is bound by its instruction count (13 per row pair) rather than by its shuffles, and
/// this one issues those 13 per four rows. A trailing pair of rows (`m % 4 == 2`) takes one
/// 256-bit step.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx512bw,avx2")]
unsafe fn scan_block_avx512(lut: &[u8], block: &[u8], m: usize, out: &mut [u16; BLOCK]) {
    use std::arch::x86_64::*;
    debug_assert!(lut.len() >= m * 16 && block.len() >= m * 16 && m.is_multiple_of(2));
    let mask = _mm512_set1_epi8(0x0f);
    let mut lo_e = _mm512_setzero_si512();
    let mut lo_o = _mm512_setzero_si512();
    let mut hi_e = _mm512_setzero_si512();
    let mut hi_o = _mm512_setzero_si512();
    for p in 0..m / 4 {
        // SAFETY: p * 64 + 64 <= m * 16 <= both lengths (checked by the caller).
        let c = _mm512_loadu_si512(block.as_ptr().add(p * 64) as *const _);
        let l = _mm512_loadu_si512(lut.as_ptr().add(p * 64) as *const _);
        let rlo = _mm512_shuffle_epi8(l, _mm512_and_si512(c, mask));
        let rhi = _mm512_shuffle_epi8(l, _mm512_and_si512(_mm512_srli_epi16(c, 4), mask));
        lo_e = _mm512_add_epi16(lo_e, rlo);
        lo_o = _mm512_add_epi16(lo_o, _mm512_srli_epi16(rlo, 8));
        hi_e = _mm512_add_epi16(hi_e, rhi);
        hi_o = _mm512_add_epi16(hi_o, _mm512_srli_epi16(rhi, 8));
    }
    // Fold the four 128-bit lanes (subspaces 4p .. 4p + 3) to two: sums modulo 2^16 are linear;
    // then the trailing pair and the AVX2 kernel's ending.
    let half =
        |v: __m512i| _mm256_add_epi16(_mm512_castsi512_si256(v), _mm512_extracti64x4_epi64::<1>(v));
    let acc = [half(lo_e), half(lo_o), half(hi_e), half(hi_o)];
    let acc = scan_pairs_avx2(lut, block, m / 4 * 2..m / 2, acc);
    store_sums_avx2(acc, out);
}

/// Copies the codes of up to 32 tokens, each `(block, lane)` in the block array `codes`
/// (`M * 16` bytes per block), into one block `out` (token `u` of `tokens` at lane `u`; missing
/// lanes get code 0): the inverse of scattering a document's tokens over inverted lists, so they
/// can be scored with [`scan_block`] (see `search::refine`). Panics if a token is out of range.
pub fn gather_block(codes: &[u8], m: usize, tokens: &[(usize, usize)], out: &mut [u8]) {
    let bb = m * 16;
    assert!(tokens.len() <= BLOCK && out.len() == bb && m.is_multiple_of(2));
    for &(b, lane) in tokens {
        assert!(
            lane < BLOCK && (b + 1) * bb <= codes.len(),
            "token out of range"
        );
    }
    #[cfg(target_arch = "x86_64")]
    {
        if has_avx2() && m <= 256 {
            if crate::simd::avx512bw() {
                // SAFETY: AVX-512F/BW and AVX2 detected at run time (`simd::avx512bw`); every
                // source block and `out` checked above.
                unsafe { gather_block_avx512(codes, m, tokens, out) };
                return;
            }
            // SAFETY: AVX2 detected at run time; every source block and `out` checked above.
            unsafe { gather_block_avx2(codes, m, tokens, out, 0) };
            return;
        }
    }
    gather_block_scalar(codes, m, tokens, out)
}

/// Reference for [`gather_block`]: one nibble at a time.
pub fn gather_block_scalar(codes: &[u8], m: usize, tokens: &[(usize, usize)], out: &mut [u8]) {
    let bb = m * 16;
    out.fill(0);
    for (u, &(b, lane)) in tokens.iter().enumerate() {
        let src = &codes[b * bb..(b + 1) * bb];
        let (sb, ssh) = (lane % 16, 4 * (lane / 16));
        let (db, dsh) = (u % 16, 4 * (u / 16));
        for (d, s) in out.chunks_exact_mut(16).zip(src.chunks_exact(16)) {
            d[db] |= ((s[sb] >> ssh) & 15) << dsh;
        }
    }
}

/// AVX2 [`gather_block`]. Byte `db` of every 16-byte row of the output comes from byte `sb` of
/// the same row of the token's source block, so one `pshufb` per pair of rows moves a token's
/// bytes into place (an index of 0x80 zeroes the other bytes) and an OR accumulates the 16
/// tokens of each output nibble half. Each accumulated byte still holds both of its source
/// nibbles; the right one is selected per token at the end. Row pairs are done four at a time
/// so the accumulators stay in registers.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
unsafe fn gather_block_avx2(
    codes: &[u8],
    m: usize,
    tokens: &[(usize, usize)],
    out: &mut [u8],
    first_pair: usize,
) {
    use std::arch::x86_64::*;
    const G: usize = 4;
    let pairs = m / 2;
    let bb = m * 16;
    let iota = _mm256_setr_epi8(
        0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15, 0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11,
        12, 13, 14, 15,
    );
    let zero_idx = _mm256_set1_epi8(0x80u8 as i8);
    // Per token: its shuffle index (0x80 everywhere but byte db of each 128-bit lane, which
    // reads byte sb) and its source block.
    let mut idx = [zero_idx; BLOCK];
    let mut src = [codes.as_ptr(); BLOCK];
    let mut high = [[0u8; 32]; 2];
    for (u, &(b, lane)) in tokens.iter().enumerate() {
        let (h, db) = (u / 16, u % 16);
        let at_db = _mm256_cmpeq_epi8(iota, _mm256_set1_epi8(db as i8));
        idx[u] = _mm256_blendv_epi8(zero_idx, _mm256_set1_epi8((lane % 16) as i8), at_db);
        src[u] = codes.as_ptr().add(b * bb);
        if lane >= 16 {
            high[h][db] = 0xFF;
            high[h][db + 16] = 0xFF;
        }
    }
    let n = tokens.len();
    let (n_lo, n_hi) = (n.min(16), n.saturating_sub(16));
    let low_mask = _mm256_set1_epi8(0x0f);
    let sel_lo = _mm256_loadu_si256(high[0].as_ptr() as *const __m256i);
    let sel_hi = _mm256_loadu_si256(high[1].as_ptr() as *const __m256i);
    let nib = |v: __m256i, s: __m256i| {
        _mm256_blendv_epi8(
            _mm256_and_si256(v, low_mask),
            _mm256_and_si256(_mm256_srli_epi16(v, 4), low_mask),
            s,
        )
    };
    let mut p0 = first_pair;
    while p0 < pairs {
        let g = (pairs - p0).min(G);
        let mut lo = [_mm256_setzero_si256(); G];
        let mut hi = [_mm256_setzero_si256(); G];
        for (acc, range) in [(&mut lo, 0..n_lo), (&mut hi, 16..16 + n_hi)] {
            for u in range {
                let ix = idx[u];
                let s = src[u].add(p0 * 32);
                for (j, a) in acc.iter_mut().enumerate().take(g) {
                    // SAFETY: (p0 + j) * 32 + 32 <= bb, inside the source block (checked by the
                    // caller).
                    let v = _mm256_loadu_si256(s.add(j * 32) as *const __m256i);
                    *a = _mm256_or_si256(*a, _mm256_shuffle_epi8(v, ix));
                }
            }
        }
        for j in 0..g {
            // Nibbles are at most 15, so the 16-bit shift keeps each in its byte.
            let v = _mm256_or_si256(nib(lo[j], sel_lo), _mm256_slli_epi16(nib(hi[j], sel_hi), 4));
            // SAFETY: (p0 + j) * 32 + 32 <= bb = out.len().
            _mm256_storeu_si256(out.as_mut_ptr().add((p0 + j) * 32) as *mut __m256i, v);
        }
        p0 += g;
    }
}

/// AVX-512BW [`gather_block`]: the AVX2 kernel's moves four rows (one 64-byte register) at a
/// time instead of two, with the per-byte selections as mask registers; a trailing pair of rows
/// (`m % 4 == 2`) is left to the AVX2 kernel. Same bytes out.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx512bw,avx2")]
unsafe fn gather_block_avx512(codes: &[u8], m: usize, tokens: &[(usize, usize)], out: &mut [u8]) {
    use std::arch::x86_64::*;
    const G: usize = 4;
    let quads = m / 4;
    let bb = m * 16;
    let iota = _mm512_broadcast_i32x4(_mm_setr_epi8(
        0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15,
    ));
    let zero_idx = _mm512_set1_epi8(0x80u8 as i8);
    // Per token: its shuffle index (0x80 everywhere but byte db of each 128-bit lane, which
    // reads byte sb) and its source block; per output half, which bytes take a high nibble.
    let mut idx = [zero_idx; BLOCK];
    let mut src = [codes.as_ptr(); BLOCK];
    let mut high: [__mmask64; 2] = [0, 0];
    for (u, &(b, lane)) in tokens.iter().enumerate() {
        let (h, db) = (u / 16, u % 16);
        let at_db = _mm512_cmpeq_epi8_mask(iota, _mm512_set1_epi8(db as i8));
        idx[u] = _mm512_mask_blend_epi8(at_db, zero_idx, _mm512_set1_epi8((lane % 16) as i8));
        src[u] = codes.as_ptr().add(b * bb);
        if lane >= 16 {
            high[h] |= at_db;
        }
    }
    let n = tokens.len();
    let (n_lo, n_hi) = (n.min(16), n.saturating_sub(16));
    let low_mask = _mm512_set1_epi8(0x0f);
    let nib = |v: __m512i, k: __mmask64| {
        _mm512_mask_blend_epi8(
            k,
            _mm512_and_si512(v, low_mask),
            _mm512_and_si512(_mm512_srli_epi16(v, 4), low_mask),
        )
    };
    let mut q0 = 0;
    while q0 < quads {
        let g = (quads - q0).min(G);
        let mut lo = [_mm512_setzero_si512(); G];
        let mut hi = [_mm512_setzero_si512(); G];
        for (acc, range) in [(&mut lo, 0..n_lo), (&mut hi, 16..16 + n_hi)] {
            for u in range {
                let ix = idx[u];
                let s = src[u].add(q0 * 64);
                for (j, a) in acc.iter_mut().enumerate().take(g) {
                    // SAFETY: (q0 + j) * 64 + 64 <= bb, inside the source block (checked by the
                    // caller).
                    let v = _mm512_loadu_si512(s.add(j * 64) as *const _);
                    *a = _mm512_or_si512(*a, _mm512_shuffle_epi8(v, ix));
                }
            }
        }
        for j in 0..g {
            let v = _mm512_or_si512(
                nib(lo[j], high[0]),
                _mm512_slli_epi16(nib(hi[j], high[1]), 4),
            );
            // SAFETY: (q0 + j) * 64 + 64 <= bb = out.len().
            _mm512_storeu_si512(out.as_mut_ptr().add((q0 + j) * 64) as *mut _, v);
        }
        q0 += g;
    }
    if m % 4 == 2 {
        gather_block_avx2(codes, m, tokens, out, m / 2 - 1);
    }
}

/// True when the AVX2 kernel runs: [`crate::simd::avx2`] (the selected level is Avx2 or above).
#[inline]
pub fn has_avx2() -> bool {
    crate::simd::avx2()
}

/// Sums the table entries of the 32 tokens of `block` (SIMD when available).
#[inline]
pub fn scan_block(lut: &[u8], block: &[u8], m: usize, simd: bool, out: &mut [u16; BLOCK]) {
    assert!(lut.len() >= m * 16 && block.len() >= m * 16 && m.is_multiple_of(2));
    #[cfg(target_arch = "x86_64")]
    {
        if simd {
            if crate::simd::avx512bw() {
                // SAFETY: the selected level is Avx512 and AVX-512BW was detected at run time
                // (`simd::avx512bw`), AVX2 too; lengths asserted above.
                unsafe { scan_block_avx512(lut, block, m, out) };
                return;
            }
            // SAFETY: AVX2 was detected by the caller (`has_avx2`); lengths asserted above.
            unsafe { scan_block_avx2(lut, block, m, out) };
            return;
        }
    }
    let _ = simd;
    scan_block_scalar(lut, block, m, out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::compressed::kmeans::Rng;

    /// The AVX-512BW block kernel against the scalar one (and the AVX2 one), every even `m`
    /// up to 40 and the tiers' sizes, random tables and codes. Skipped on a CPU without it.
    #[cfg(target_arch = "x86_64")]
    #[test]
    fn avx512_block_kernel_matches_scalar() {
        if !(crate::simd::Level::Avx512.is_available() && is_x86_feature_detected!("avx512bw")) {
            eprintln!("skipped: this CPU cannot run AVX-512BW");
            return;
        }
        let mut rng = Rng::new(17);
        let sizes: Vec<usize> = (1..=20)
            .map(|h| 2 * h)
            .chain([94, 96, 128, 254, 256])
            .collect();
        for &m in &sizes {
            for _ in 0..4 {
                let lut: Vec<u8> = (0..m * 16).map(|_| rng.below(256) as u8).collect();
                let block: Vec<u8> = (0..m * 16).map(|_| rng.below(256) as u8).collect();
                let (mut a, mut b, mut c) = ([0u16; BLOCK], [0u16; BLOCK], [0u16; BLOCK]);
                scan_block_scalar(&lut, &block, m, &mut a);
                // SAFETY: AVX-512F/BW and AVX2 detected above.
                unsafe {
                    scan_block_avx512(&lut, &block, m, &mut b);
                    scan_block_avx2(&lut, &block, m, &mut c);
                }
                assert_eq!(a, b, "m {m}");
                assert_eq!(a, c, "m {m}");
            }
        }
    }

    #[test]
    fn simd_matches_scalar() {
        let mut rng = Rng::new(9);
        for &m in &[2usize, 16, 48, 96, 256] {
            let lut: Vec<u8> = (0..m * 16).map(|_| rng.below(256) as u8).collect();
            let block: Vec<u8> = (0..m * 16).map(|_| rng.below(256) as u8).collect();
            let mut a = [0u16; BLOCK];
            let mut b = [0u16; BLOCK];
            scan_block_scalar(&lut, &block, m, &mut a);
            scan_block(&lut, &block, m, has_avx2(), &mut b);
            assert_eq!(a, b, "m = {m}");
        }
    }

    #[test]
    fn gather_matches_scalar_and_reads_token_codes() {
        let mut rng = Rng::new(11);
        for &m in &[2usize, 8, 48, 96, 256] {
            let bb = m * 16;
            let n_blocks = 7;
            let codes: Vec<u8> = (0..n_blocks * bb).map(|_| rng.below(256) as u8).collect();
            for n in [0usize, 1, 15, 16, 17, 31, 32] {
                let toks: Vec<(usize, usize)> = (0..n)
                    .map(|_| (rng.below(n_blocks), rng.below(BLOCK)))
                    .collect();
                let mut a = vec![0xAAu8; bb];
                let mut b = vec![0x55u8; bb];
                gather_block(&codes, m, &toks, &mut a);
                gather_block_scalar(&codes, m, &toks, &mut b);
                assert_eq!(a, b, "m {m} n {n}");
                // Lane u of the output holds token u's code in every subspace.
                for (u, &(blk, lane)) in toks.iter().enumerate() {
                    for s in 0..m {
                        let src = (codes[blk * bb + s * 16 + lane % 16] >> (4 * (lane / 16))) & 15;
                        let dst = (a[s * 16 + u % 16] >> (4 * (u / 16))) & 15;
                        assert_eq!(src, dst);
                    }
                }
            }
        }
    }

    /// The AVX-512BW gather against the scalar one, every even `m` up to 40 and the codecs'
    /// sizes, every token count. Skipped on a CPU without AVX-512BW.
    #[cfg(target_arch = "x86_64")]
    #[test]
    fn avx512_gather_matches_scalar() {
        if !(crate::simd::Level::Avx512.is_available() && is_x86_feature_detected!("avx512bw")) {
            eprintln!("skipped: this CPU cannot run AVX-512BW");
            return;
        }
        let mut rng = Rng::new(23);
        let sizes: Vec<usize> = (1..=20)
            .map(|h| 2 * h)
            .chain([48, 94, 96, 254, 256])
            .collect();
        for &m in &sizes {
            let bb = m * 16;
            let n_blocks = 5;
            let codes: Vec<u8> = (0..n_blocks * bb).map(|_| rng.below(256) as u8).collect();
            for n in 0..=BLOCK {
                let toks: Vec<(usize, usize)> = (0..n)
                    .map(|_| (rng.below(n_blocks), rng.below(BLOCK)))
                    .collect();
                let mut a = vec![0xAAu8; bb];
                let mut b = vec![0x55u8; bb];
                // SAFETY: AVX-512F/BW and AVX2 detected above; blocks in range by construction.
                unsafe { gather_block_avx512(&codes, m, &toks, &mut a) };
                gather_block_scalar(&codes, m, &toks, &mut b);
                assert_eq!(a, b, "m {m} n {n}");
            }
        }
    }

    #[test]
    fn pack_then_scan_reads_token_codes() {
        let mut rng = Rng::new(4);
        let m = 8;
        let n = 21;
        let toks: Vec<u8> = (0..n * m / 2).map(|_| rng.below(256) as u8).collect();
        let mut block = vec![0u8; m * 16];
        pack_block(&toks, m, &mut block);
        let lut: Vec<u8> = (0..m * 16).map(|_| rng.below(256) as u8).collect();
        let mut out = [0u16; BLOCK];
        scan_block(&lut, &block, m, has_avx2(), &mut out);
        for t in 0..n {
            let want: u16 = (0..m)
                .map(|s| {
                    lut[s * 16 + ((toks[t * m / 2 + s / 2] >> (4 * (s % 2))) & 15) as usize] as u16
                })
                .sum();
            assert_eq!(out[t], want);
        }
    }
}
