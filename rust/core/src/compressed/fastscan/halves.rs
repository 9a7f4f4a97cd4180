//! The split-half block layout of fast-scan codes (inverted lists of format version 5).
//!
//! A block still holds 32 tokens in `M * 16` bytes, but as two halves of `M * 8` bytes, tokens
//! 0-15 then 16-31; in a half, row `r` (16 bytes, byte `j` for the half's token `j`) holds two
//! subspaces of each token, one per nibble. Subspaces go in groups of 8 (4 rows; a last group of
//! `M % 8` has `M % 8 / 2` rows): row `l` of the group starting at subspace `b` holds subspace
//! `b + l` in its low nibble and `b + rows + l` in its high nibble, so that a 64-byte load (one
//! group of one half) is looked up with two 64-byte tables that are contiguous in the query
//! token's table (`lut[b * 16..]` for the low nibbles, `lut[(b + rows) * 16..]` for the high).
//!
//! Why: refinement gathers a document's tokens out of their lists' blocks, and in the
//! interleaved layout of versions 3-4 (a row = one subspace of all 32 tokens) a token's codes sit
//! in every cache line of its block (24 lines at M = 96); here they sit in its half (12 lines),
//! and each of its bytes moves whole (no nibble selection). `cargo bench -p latix-core --bench
//! kernels` (Intel Xeon, 2026-12-04): a token gathered at random from 36 MB of M = 96 blocks
//! takes 43.3 ns against 67.5 interleaved at the AVX-512 level (1.56x), 42.2 against 72.9 at AVX2
//! (1.73x), 80 against 179 scalar; scanning a block against one table costs 57.3 ns against
//! 53.9 (AVX-512), 63.8 against 61.8 (AVX2), 729 against 770 (scalar). The sums are exactly
//! those of the interleaved layout for the same codes.

use super::BLOCK;

/// Rows of group `g` of a block of `m` subspaces, and the group's first subspace.
#[inline]
fn group(m: usize, g: usize) -> (usize, usize) {
    let base = 8 * g;
    ((m - base).min(8) / 2, base)
}

/// Byte offset and nibble shift of subspace `s` of token `t` in a block of `m` subspaces.
#[inline]
pub fn locate(m: usize, t: usize, s: usize) -> (usize, u32) {
    let (rows, base) = group(m, s / 8);
    let (l, hi) = if s - base < rows {
        (s - base, 0)
    } else {
        (s - base - rows, 4)
    };
    ((t / 16) * m * 8 + (base / 2 + l) * 16 + t % 16, hi)
}

/// Packs up to 32 tokens (`M / 2` bytes each, token-major, nibble-packed as
/// [`crate::compressed::Codec::encode`] writes them) into one block. Missing tokens get code 0.
pub fn pack(tokens: &[u8], m: usize, out: &mut [u8]) {
    let bpt = m / 2;
    let n = tokens.len() / bpt;
    debug_assert!(n <= BLOCK && out.len() == m * 16);
    out.fill(0);
    for t in 0..n {
        let tc = &tokens[t * bpt..(t + 1) * bpt];
        for s in 0..m {
            let (at, sh) = locate(m, t, s);
            out[at] |= ((tc[s / 2] >> (4 * (s % 2))) & 15) << sh;
        }
    }
}

/// Code of subspace `s` of token `t` of `block`.
#[inline]
pub fn code(block: &[u8], m: usize, t: usize, s: usize) -> u8 {
    let (at, sh) = locate(m, t, s);
    (block[at] >> sh) & 15
}

/// Reference kernel: `out[t] = sum_s lut[s * 16 + code(t, s)]` for the 32 tokens of a block,
/// row by row (the portable path's speed: one table lookup per code, as the interleaved
/// layout's scalar kernel).
pub fn scan_scalar(lut: &[u8], block: &[u8], m: usize, out: &mut [u16; BLOCK]) {
    *out = [0; BLOCK];
    for (h, sums) in out.chunks_exact_mut(16).enumerate() {
        let half = &block[h * m * 8..(h + 1) * m * 8];
        for g in 0..m.div_ceil(8) {
            let (rows, base) = group(m, g);
            for l in 0..rows {
                let lo = &lut[(base + l) * 16..(base + l + 1) * 16];
                let hi = &lut[(base + rows + l) * 16..(base + rows + l + 1) * 16];
                let row = &half[(base / 2 + l) * 16..(base / 2 + l + 1) * 16];
                for (o, &b) in sums.iter_mut().zip(row) {
                    *o += lo[(b & 15) as usize] as u16 + hi[(b >> 4) as usize] as u16;
                }
            }
        }
    }
}

/// Sums the table entries of the 32 tokens of `block` (SIMD when available).
#[inline]
pub fn scan(lut: &[u8], block: &[u8], m: usize, simd: bool, out: &mut [u16; BLOCK]) {
    assert!(lut.len() >= m * 16 && block.len() >= m * 16 && m.is_multiple_of(2));
    #[cfg(target_arch = "x86_64")]
    {
        if simd {
            if crate::simd::avx512bw() {
                // SAFETY: AVX-512F/BW and AVX2 detected at run time (`simd::avx512bw`); lengths
                // asserted above.
                unsafe { scan_avx512(lut, block, m, out) };
                return;
            }
            // SAFETY: the caller's `simd` means AVX2 was detected (`simd::avx2`); lengths
            // asserted above.
            unsafe { scan_avx2(lut, block, m, out) };
            return;
        }
    }
    let _ = simd;
    scan_scalar(lut, block, m, out)
}

/// The accumulators of one half: as u16 words, even tokens + 256 * odd tokens, and odd tokens
/// (each 128-bit lane summing other subspaces of the same 16 tokens).
#[cfg(target_arch = "x86_64")]
type HalfSums = (std::arch::x86_64::__m256i, std::arch::x86_64::__m256i);

/// Adds the `rows` rows of the group at subspace `base` of one half to `acc`, two rows per
/// 256-bit step (a last odd one in the low lane).
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
#[inline]
unsafe fn rows_avx2(
    lut: &[u8],
    half: &[u8],
    (rows, base): (usize, usize),
    (mut e, mut o): HalfSums,
) -> HalfSums {
    use std::arch::x86_64::*;
    let mask = _mm256_set1_epi8(0x0f);
    let mut add = |c: __m256i, tl: __m256i, th: __m256i| {
        let rlo = _mm256_shuffle_epi8(tl, _mm256_and_si256(c, mask));
        let rhi = _mm256_shuffle_epi8(th, _mm256_and_si256(_mm256_srli_epi16(c, 4), mask));
        e = _mm256_add_epi16(e, _mm256_add_epi16(rlo, rhi));
        o = _mm256_add_epi16(
            o,
            _mm256_add_epi16(_mm256_srli_epi16(rlo, 8), _mm256_srli_epi16(rhi, 8)),
        );
    };
    let mut l = 0;
    while l + 1 < rows {
        // SAFETY (all loads): rows l, l + 1 of the group lie inside the half (M * 8 bytes);
        // table rows base + l + 1 and base + rows + l + 1 are below M (checked by the caller).
        add(
            _mm256_loadu_si256(half.as_ptr().add((base / 2 + l) * 16) as *const __m256i),
            _mm256_loadu_si256(lut.as_ptr().add((base + l) * 16) as *const __m256i),
            _mm256_loadu_si256(lut.as_ptr().add((base + rows + l) * 16) as *const __m256i),
        );
        l += 2;
    }
    if l < rows {
        // One row in the low lane; the high lane looks up zeros (index 0 of an all-zero table).
        let row = |p: *const u8| _mm256_zextsi128_si256(_mm_loadu_si128(p as *const __m128i));
        add(
            row(half.as_ptr().add((base / 2 + l) * 16)),
            row(lut.as_ptr().add((base + l) * 16)),
            row(lut.as_ptr().add((base + rows + l) * 16)),
        );
    }
    (e, o)
}

/// The 16 token sums of a half out of its accumulators.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
#[inline]
unsafe fn store_half((e, o): HalfSums, out: &mut [u16]) {
    use std::arch::x86_64::*;
    // The two lanes hold other subspaces of the same tokens: sums modulo 2^16 are linear.
    let fold =
        |v: __m256i| _mm_add_epi16(_mm256_castsi256_si128(v), _mm256_extracti128_si256(v, 1));
    let (e, o) = (fold(e), fold(o));
    // Exact modulo 2^16, and the true sums are below 2^16 (m <= 256, entries <= 255).
    let even = _mm_sub_epi16(e, _mm_slli_epi16(o, 8));
    let p = out.as_mut_ptr() as *mut __m128i;
    // SAFETY: out holds 16 u16 = 2 x 16 bytes (the caller passes a half of the output).
    _mm_storeu_si128(p, _mm_unpacklo_epi16(even, o));
    _mm_storeu_si128(p.add(1), _mm_unpackhi_epi16(even, o));
}

/// AVX2 [`scan`]: two rows per 256-bit step; a whole group's four table rows are loaded once
/// for both halves, a short last group by [`rows_avx2`].
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
unsafe fn scan_avx2(lut: &[u8], block: &[u8], m: usize, out: &mut [u16; BLOCK]) {
    use std::arch::x86_64::*;
    let mask = _mm256_set1_epi8(0x0f);
    let hb = m * 8;
    let z = _mm256_setzero_si256();
    let mut acc = [(z, z), (z, z)];
    let full = m / 8;
    let ld = |p: *const u8| _mm256_loadu_si256(p as *const __m256i);
    for g in 0..full {
        // SAFETY (all loads): group g < m / 8 is whole: table bytes g * 128 + 128 <= m * 16 and
        // half bytes h * hb + g * 64 + 64 <= m * 16 (lengths checked by the caller).
        let t = lut.as_ptr().add(g * 128);
        // Rows 0-1 look up subspaces 8g, 8g + 1 (low nibbles) and 8g + 4, 8g + 5 (high);
        // rows 2-3 subspaces 8g + 2, 8g + 3 and 8g + 6, 8g + 7.
        let tables = [(ld(t), ld(t.add(64))), (ld(t.add(32)), ld(t.add(96)))];
        for (h, (e, o)) in acc.iter_mut().enumerate() {
            for (r, &(tl, th)) in tables.iter().enumerate() {
                let c = ld(block.as_ptr().add(h * hb + g * 64 + r * 32));
                let rlo = _mm256_shuffle_epi8(tl, _mm256_and_si256(c, mask));
                let rhi = _mm256_shuffle_epi8(th, _mm256_and_si256(_mm256_srli_epi16(c, 4), mask));
                *e = _mm256_add_epi16(*e, _mm256_add_epi16(rlo, rhi));
                *o = _mm256_add_epi16(
                    *o,
                    _mm256_add_epi16(_mm256_srli_epi16(rlo, 8), _mm256_srli_epi16(rhi, 8)),
                );
            }
        }
    }
    for (h, sums) in acc.into_iter().enumerate() {
        let mut sums = sums;
        if full * 8 < m {
            sums = rows_avx2(lut, &block[h * hb..(h + 1) * hb], group(m, full), sums);
        }
        store_half(sums, &mut out[16 * h..16 * (h + 1)]);
    }
}

/// AVX-512BW [`scan`]: one group of one half (four rows) per 512-bit step, both halves against
/// the same two table registers; a short last group by the AVX2 steps.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx512bw,avx2")]
unsafe fn scan_avx512(lut: &[u8], block: &[u8], m: usize, out: &mut [u16; BLOCK]) {
    use std::arch::x86_64::*;
    let mask = _mm512_set1_epi8(0x0f);
    let full = m / 8;
    let hb = m * 8;
    let z = _mm512_setzero_si512();
    let mut acc = [(z, z), (z, z)];
    for g in 0..full {
        // SAFETY (all loads): group g < m / 8 is whole: table bytes g * 128 + 128 <= m * 16 and
        // half bytes h * hb + g * 64 + 64 <= m * 16 (lengths checked by the caller).
        let tlo = _mm512_loadu_si512(lut.as_ptr().add(g * 128) as *const _);
        let thi = _mm512_loadu_si512(lut.as_ptr().add(g * 128 + 64) as *const _);
        for (h, (e, o)) in acc.iter_mut().enumerate() {
            let c = _mm512_loadu_si512(block.as_ptr().add(h * hb + g * 64) as *const _);
            let rlo = _mm512_shuffle_epi8(tlo, _mm512_and_si512(c, mask));
            let rhi = _mm512_shuffle_epi8(thi, _mm512_and_si512(_mm512_srli_epi16(c, 4), mask));
            *e = _mm512_add_epi16(*e, _mm512_add_epi16(rlo, rhi));
            *o = _mm512_add_epi16(
                *o,
                _mm512_add_epi16(_mm512_srli_epi16(rlo, 8), _mm512_srli_epi16(rhi, 8)),
            );
        }
    }
    // Fold the four lanes to two (other subspaces of the same 16 tokens): sums modulo 2^16 are
    // linear; then the AVX2 steps' ending.
    let fold =
        |v: __m512i| _mm256_add_epi16(_mm512_castsi512_si256(v), _mm512_extracti64x4_epi64::<1>(v));
    for (h, (e, o)) in acc.into_iter().enumerate() {
        let mut sums = (fold(e), fold(o));
        if full * 8 < m {
            sums = rows_avx2(lut, &block[h * hb..(h + 1) * hb], group(m, full), sums);
        }
        store_half(sums, &mut out[16 * h..16 * (h + 1)]);
    }
}

/// Copies the codes of up to 32 tokens, each `(block, lane)` in the block array `codes`
/// (`M * 16` bytes per block), into one block `out` (token `u` of `tokens` at lane `u`; missing
/// lanes get code 0). Panics if a token is out of range.
pub fn gather(codes: &[u8], m: usize, tokens: &[(usize, usize)], out: &mut [u8]) {
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
        if super::has_avx2() {
            if crate::simd::avx512bw() {
                // SAFETY: AVX-512F/BW and AVX2 detected at run time (`simd::avx512bw`); every
                // source block and `out` checked above.
                unsafe { gather_avx512(codes, m, tokens, out) };
                return;
            }
            // SAFETY: AVX2 detected at run time; every source block and `out` checked above.
            unsafe { gather_avx2(codes, m, tokens, out) };
            return;
        }
    }
    gather_scalar(codes, m, tokens, out)
}

/// Reference for [`gather`]: one byte at a time.
pub fn gather_scalar(codes: &[u8], m: usize, tokens: &[(usize, usize)], out: &mut [u8]) {
    let (bb, hb) = (m * 16, m * 8);
    out.fill(0);
    for (u, &(b, lane)) in tokens.iter().enumerate() {
        let src = &codes[b * bb + (lane / 16) * hb..b * bb + (lane / 16 + 1) * hb];
        let dst = &mut out[(u / 16) * hb..(u / 16 + 1) * hb];
        for (d, s) in dst.chunks_exact_mut(16).zip(src.chunks_exact(16)) {
            d[u % 16] = s[lane % 16];
        }
    }
}

/// Per token of a gather: a shuffle index moving its byte `lane % 16` of every 16-byte row to
/// byte `u % 16` (0x80, which zeroes, elsewhere), and the start of its half of its source block.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
#[inline]
unsafe fn gather_setup(
    codes: &[u8],
    m: usize,
    tokens: &[(usize, usize)],
) -> ([std::arch::x86_64::__m128i; BLOCK], [*const u8; BLOCK]) {
    use std::arch::x86_64::*;
    let iota = _mm_setr_epi8(0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15);
    let zero_idx = _mm_set1_epi8(0x80u8 as i8);
    let mut idx = [zero_idx; BLOCK];
    let mut src = [codes.as_ptr(); BLOCK];
    for (u, &(b, lane)) in tokens.iter().enumerate() {
        let at = _mm_cmpeq_epi8(iota, _mm_set1_epi8((u % 16) as i8));
        idx[u] = _mm_blendv_epi8(zero_idx, _mm_set1_epi8((lane % 16) as i8), at);
        // In range: b < codes.len() / (m * 16), checked by the caller.
        src[u] = codes.as_ptr().add(b * m * 16 + (lane / 16) * m * 8);
    }
    (idx, src)
}

/// AVX2 [`gather`]: for each output row pair (32 bytes), one `pshufb` per token of the half
/// moves its byte into place and an OR accumulates the 16 tokens; four row pairs at a time so
/// the accumulators stay in registers.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
unsafe fn gather_avx2(codes: &[u8], m: usize, tokens: &[(usize, usize)], out: &mut [u8]) {
    use std::arch::x86_64::*;
    const G: usize = 4;
    let hb = m * 8;
    let (idx, src) = gather_setup(codes, m, tokens);
    let idx: Vec<__m256i> = idx.iter().map(|&i| _mm256_set_m128i(i, i)).collect();
    let n = tokens.len();
    let pairs = m / 4;
    for h in 0..2 {
        let us = if h == 0 { 0..n.min(16) } else { 16..n.max(16) };
        let mut p0 = 0;
        while p0 < pairs {
            let g = (pairs - p0).min(G);
            let mut acc = [_mm256_setzero_si256(); G];
            for u in us.clone() {
                let s = src[u].add(p0 * 32);
                for (j, a) in acc.iter_mut().enumerate().take(g) {
                    // SAFETY: (p0 + j) * 32 + 32 <= m * 8, inside the token's half block.
                    let v = _mm256_loadu_si256(s.add(j * 32) as *const __m256i);
                    *a = _mm256_or_si256(*a, _mm256_shuffle_epi8(v, idx[u]));
                }
            }
            for (j, a) in acc.iter().enumerate().take(g) {
                // SAFETY: h * hb + (p0 + j) * 32 + 32 <= m * 16 = out.len().
                _mm256_storeu_si256(out.as_mut_ptr().add(h * hb + (p0 + j) * 32) as *mut _, *a);
            }
            p0 += g;
        }
        gather_last_row(&idx, &src, us, m, &mut out[h * hb..(h + 1) * hb], pairs * 2);
    }
}

/// The rows from `first` of a gathered half (at most one: `m / 2` odd), 16 bytes a row.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
#[inline]
unsafe fn gather_last_row(
    idx: &[std::arch::x86_64::__m256i],
    src: &[*const u8; BLOCK],
    us: std::ops::Range<usize>,
    m: usize,
    out: &mut [u8],
    first: usize,
) {
    use std::arch::x86_64::*;
    for r in first..m / 2 {
        let mut a = _mm_setzero_si128();
        for u in us.clone() {
            // SAFETY: r * 16 + 16 <= m * 8, inside the token's half block.
            let v = _mm_loadu_si128(src[u].add(r * 16) as *const __m128i);
            a = _mm_or_si128(a, _mm_shuffle_epi8(v, _mm256_castsi256_si128(idx[u])));
        }
        // SAFETY: r * 16 + 16 <= m * 8 = out.len().
        _mm_storeu_si128(out.as_mut_ptr().add(r * 16) as *mut __m128i, a);
    }
}

/// AVX-512BW [`gather`]: the AVX2 kernel's moves four rows (one 64-byte register) at a time;
/// the rows past whole groups of four by the AVX2 steps. Same bytes out.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx512bw,avx2")]
unsafe fn gather_avx512(codes: &[u8], m: usize, tokens: &[(usize, usize)], out: &mut [u8]) {
    use std::arch::x86_64::*;
    const G: usize = 4;
    let hb = m * 8;
    let (idx, src) = gather_setup(codes, m, tokens);
    let idx4: Vec<__m512i> = idx.iter().map(|&i| _mm512_broadcast_i32x4(i)).collect();
    let idx2: Vec<__m256i> = idx.iter().map(|&i| _mm256_set_m128i(i, i)).collect();
    let n = tokens.len();
    let quads = m / 8;
    for h in 0..2 {
        let us = if h == 0 { 0..n.min(16) } else { 16..n.max(16) };
        let mut q0 = 0;
        while q0 < quads {
            let g = (quads - q0).min(G);
            let mut acc = [_mm512_setzero_si512(); G];
            for u in us.clone() {
                let s = src[u].add(q0 * 64);
                for (j, a) in acc.iter_mut().enumerate().take(g) {
                    // SAFETY: (q0 + j) * 64 + 64 <= m * 8, inside the token's half block.
                    let v = _mm512_loadu_si512(s.add(j * 64) as *const _);
                    *a = _mm512_or_si512(*a, _mm512_shuffle_epi8(v, idx4[u]));
                }
            }
            for (j, a) in acc.iter().enumerate().take(g) {
                // SAFETY: h * hb + (q0 + j) * 64 + 64 <= m * 16 = out.len().
                _mm512_storeu_si512(out.as_mut_ptr().add(h * hb + (q0 + j) * 64) as *mut _, *a);
            }
            q0 += g;
        }
        // Rows past whole quads (m % 8 != 0): a pair, then a single row.
        let mut r = quads * 4;
        let half_out = &mut out[h * hb..(h + 1) * hb];
        if r + 2 <= m / 2 {
            let mut a = _mm256_setzero_si256();
            for u in us.clone() {
                // SAFETY: r * 16 + 32 <= m * 8, inside the token's half block.
                let v = _mm256_loadu_si256(src[u].add(r * 16) as *const __m256i);
                a = _mm256_or_si256(a, _mm256_shuffle_epi8(v, idx2[u]));
            }
            // SAFETY: r * 16 + 32 <= m * 8 = half_out.len().
            _mm256_storeu_si256(half_out.as_mut_ptr().add(r * 16) as *mut __m256i, a);
            r += 2;
        }
        gather_last_row(&idx2, &src, us, m, half_out, r);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::compressed::fastscan::{gather_block_scalar, pack_block, scan_block_scalar};
    use crate::compressed::kmeans::Rng;

    /// Every kernel of the layout against the interleaved layout's oracles on the same codes:
    /// scan sums, gathered tokens' sums and codes, for every even `m` up to 40 and the codecs'
    /// sizes; the SIMD kernels (every level this CPU runs) against the scalar ones.
    #[test]
    fn kernels_match_the_interleaved_layout() {
        let mut rng = Rng::new(41);
        let sizes: Vec<usize> = (1..=20)
            .map(|h| 2 * h)
            .chain([94, 96, 128, 254, 256])
            .collect();
        for &m in &sizes {
            let (bpt, bb, n_blocks) = (m / 2, m * 16, 3);
            let toks: Vec<u8> = (0..n_blocks * BLOCK * bpt)
                .map(|_| rng.below(256) as u8)
                .collect();
            let (mut old, mut new) = (vec![0u8; n_blocks * bb], vec![0u8; n_blocks * bb]);
            for b in 0..n_blocks {
                let t = &toks[b * BLOCK * bpt..(b + 1) * BLOCK * bpt];
                pack_block(t, m, &mut old[b * bb..(b + 1) * bb]);
                pack(t, m, &mut new[b * bb..(b + 1) * bb]);
                for u in 0..BLOCK {
                    for s in 0..m {
                        let want = (t[u * bpt + s / 2] >> (4 * (s % 2))) & 15;
                        assert_eq!(code(&new[b * bb..(b + 1) * bb], m, u, s), want);
                    }
                }
            }
            let lut: Vec<u8> = (0..m * 16).map(|_| rng.below(256) as u8).collect();
            for b in 0..n_blocks {
                let (mut a, mut c) = ([0u16; BLOCK], [0u16; BLOCK]);
                scan_block_scalar(&lut, &old[b * bb..(b + 1) * bb], m, &mut a);
                scan_scalar(&lut, &new[b * bb..(b + 1) * bb], m, &mut c);
                assert_eq!(a, c, "scalar m {m}");
                scan(&lut, &new[b * bb..(b + 1) * bb], m, true, &mut c);
                assert_eq!(a, c, "scan m {m}");
                #[cfg(target_arch = "x86_64")]
                if crate::simd::Level::Avx2.is_available() {
                    // SAFETY: AVX2 detected.
                    unsafe { scan_avx2(&lut, &new[b * bb..(b + 1) * bb], m, &mut c) };
                    assert_eq!(a, c, "avx2 m {m}");
                }
            }
            for n in 0..=BLOCK {
                let sel: Vec<(usize, usize)> = (0..n)
                    .map(|_| (rng.below(n_blocks), rng.below(BLOCK)))
                    .collect();
                let (mut g1, mut g2) = (vec![0u8; bb], vec![0u8; bb]);
                gather_block_scalar(&old, m, &sel, &mut g1);
                gather_scalar(&new, m, &sel, &mut g2);
                let (mut s1, mut s2) = ([0u16; BLOCK], [0u16; BLOCK]);
                scan_block_scalar(&lut, &g1, m, &mut s1);
                scan_scalar(&lut, &g2, m, &mut s2);
                assert_eq!(s1, s2, "gathered sums m {m} n {n}");
                let mut g3 = vec![0xAAu8; bb];
                gather(&new, m, &sel, &mut g3);
                assert_eq!(g2, g3, "gather m {m} n {n}");
                #[cfg(target_arch = "x86_64")]
                if crate::simd::Level::Avx2.is_available() {
                    let mut g4 = vec![0x55u8; bb];
                    // SAFETY: AVX2 detected; blocks in range by construction.
                    unsafe { gather_avx2(&new, m, &sel, &mut g4) };
                    assert_eq!(g2, g4, "avx2 gather m {m} n {n}");
                }
            }
        }
    }
}
