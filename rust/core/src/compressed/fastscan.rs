//! "Fast scan" scoring of 4-bit product-quantisation codes with in-register lookup tables
//! (André, Kermarrec & Le Scouarnec, "Cache locality is not enough: high-performance nearest
//! neighbor search with product quantization fast scan", VLDB 2015; the FAISS `IndexPQFastScan`
//! layout). Codes of 32 tokens are stored subspace-major so that one 32-byte load holds two
//! subspaces of all 32 tokens; `pshufb` looks up 32 table entries at once. Tables are quantised to
//! u8 per query token (one scale shared by all subspaces so sums stay comparable) and summed in u16
//! lanes, two tokens per lane pair, with the odd/even trick of FAISS (no widening instructions).
//!
//! The scalar [`scan_block_scalar`] is the reference the SIMD kernel is tested against.

use super::codec::{Codec, KSUB};

/// Tokens per block.
pub const BLOCK: usize = 32;

/// A query token's quantised lookup table: `lut[s * 16 + j]` ~ `(<q_s, codeword_{s,j}> - min_s) / scale`.
#[derive(Clone, Debug)]
pub struct TokenLut {
    /// `M * 16` quantised entries.
    pub lut: Vec<u8>,
    /// Sum over subspaces of the minimum entry (added back to every score).
    pub bias: f32,
    /// Value of one quantisation step.
    pub scale: f32,
}

/// Builds the lookup table of one query token `q` (`dim` f32).
pub fn build_lut(codec: &Codec, q: &[f32]) -> TokenLut {
    let m = codec.n_subspaces();
    let so = codec.subspace_offsets();
    let mut lf = vec![0.0f32; m * KSUB];
    for s in 0..m {
        let qs = &q[so[s]..so[s + 1]];
        for (j, cw) in codec.codebook(s).chunks_exact(qs.len()).enumerate() {
            lf[s * KSUB + j] = qs.iter().zip(cw).map(|(a, b)| a * b).sum();
        }
    }
    let mut bias = 0.0f32;
    let mut range = 0.0f32;
    let mut mins = vec![0.0f32; m];
    for s in 0..m {
        let row = &lf[s * KSUB..(s + 1) * KSUB];
        let lo = row.iter().copied().fold(f32::INFINITY, f32::min);
        let hi = row.iter().copied().fold(f32::NEG_INFINITY, f32::max);
        mins[s] = lo;
        bias += lo;
        range = range.max(hi - lo);
    }
    let scale = if range > 0.0 { range / 255.0 } else { 1.0 };
    let lut = lf
        .iter()
        .enumerate()
        .map(|(i, &v)| ((v - mins[i / KSUB]) / scale).round().clamp(0.0, 255.0) as u8)
        .collect();
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
    let mask = _mm256_set1_epi8(0x0f);
    let mut lo_e = _mm256_setzero_si256();
    let mut lo_o = _mm256_setzero_si256();
    let mut hi_e = _mm256_setzero_si256();
    let mut hi_o = _mm256_setzero_si256();
    for p in 0..m / 2 {
        // SAFETY: p * 32 + 32 <= m * 16 <= both lengths (checked by the caller).
        let c = _mm256_loadu_si256(block.as_ptr().add(p * 32) as *const __m256i);
        let l = _mm256_loadu_si256(lut.as_ptr().add(p * 32) as *const __m256i);
        let rlo = _mm256_shuffle_epi8(l, _mm256_and_si256(c, mask));
        let rhi = _mm256_shuffle_epi8(l, _mm256_and_si256(_mm256_srli_epi16(c, 4), mask));
        // As u16 words, rlo holds even + 256 * odd tokens; the sum of the shifted words is the odd sum.
        lo_e = _mm256_add_epi16(lo_e, rlo);
        lo_o = _mm256_add_epi16(lo_o, _mm256_srli_epi16(rlo, 8));
        hi_e = _mm256_add_epi16(hi_e, rhi);
        hi_o = _mm256_add_epi16(hi_o, _mm256_srli_epi16(rhi, 8));
    }
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

/// True when the AVX2 kernel can run on this CPU (detected once by std).
#[inline]
pub fn has_avx2() -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        std::arch::is_x86_feature_detected!("avx2")
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        false
    }
}

/// Sums the table entries of the 32 tokens of `block` (SIMD when available).
#[inline]
pub fn scan_block(lut: &[u8], block: &[u8], m: usize, simd: bool, out: &mut [u16; BLOCK]) {
    assert!(lut.len() >= m * 16 && block.len() >= m * 16 && m.is_multiple_of(2));
    #[cfg(target_arch = "x86_64")]
    {
        if simd {
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
