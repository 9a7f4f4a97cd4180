//! The nearest PQ codeword of every subspace of a residual, the squared-error step of
//! [`super::Codec::encode`], computed sixteen codewords at a time.
//!
//! The reference is the scalar loop (kept in the tests): per subspace, per codeword, the
//! squared distance `sum_d (r_d - c_d)^2` accumulated over the subspace's dimensions in order,
//! and the first codeword of least distance. This kernel runs the same additions in the same
//! order, only for the sixteen codewords side by side (from the dimension-major codewords of
//! [`super::Codec::codewords_by_dim`], one 16-lane row per dimension), with separate multiplies
//! and adds (Rust never fuses them), so every distance is bit-identical to the scalar loop's and
//! the codes are the same. Compiled twice, portable and AVX2 (chosen by [`crate::simd::avx2`]).

use super::KSUB;

/// Sets `codes[s]` to the first codeword of least squared distance to `r[sub_off[s]..sub_off[s
/// + 1]]`, for every subspace `s`; `codewords_t` is dimension-major (`[d * KSUB + j]`).
#[inline(always)]
fn nearest_body(r: &[f32], codewords_t: &[f32], sub_off: &[usize], codes: &mut [u8]) {
    for (s, code) in codes.iter_mut().enumerate() {
        let (a, b) = (sub_off[s], sub_off[s + 1]);
        let mut acc = [0.0f32; KSUB];
        for (&rv, row) in r[a..b]
            .iter()
            .zip(codewords_t[a * KSUB..b * KSUB].chunks_exact(KSUB))
        {
            let row: &[f32; KSUB] = row.try_into().expect("a row of 16 codewords");
            for (acc_j, &c) in acc.iter_mut().zip(row) {
                let t = rv - c;
                *acc_j += t * t;
            }
        }
        // First index of the least value: strict `<`, as the scalar loop.
        let mut best = 0usize;
        for j in 1..KSUB {
            if acc[j] < acc[best] {
                best = j;
            }
        }
        *code = best as u8;
    }
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn nearest_avx2(r: &[f32], codewords_t: &[f32], sub_off: &[usize], codes: &mut [u8]) {
    nearest_body(r, codewords_t, sub_off, codes)
}

/// The nearest codeword of each subspace of residual `r` (see the module documentation):
/// `codes` holds one entry per subspace (`sub_off.len() - 1`).
pub(super) fn nearest_codewords(
    r: &[f32],
    codewords_t: &[f32],
    sub_off: &[usize],
    codes: &mut [u8],
) {
    debug_assert_eq!(codes.len() + 1, sub_off.len());
    #[cfg(target_arch = "x86_64")]
    {
        if crate::simd::avx2() {
            // SAFETY: AVX2 and FMA were detected at run time (`simd::avx2`).
            unsafe { nearest_avx2(r, codewords_t, sub_off, codes) };
            return;
        }
    }
    nearest_body(r, codewords_t, sub_off, codes)
}

#[cfg(test)]
mod tests {
    use super::super::{subspace_offsets, transpose_codebooks};
    use super::*;
    use crate::compressed::kmeans::Rng;

    /// The scalar reference: the loop `Codec::pq_encode` ran before this kernel.
    fn nearest_scalar(r: &[f32], codebooks: &[f32], sub_off: &[usize], codes: &mut [u8]) {
        for s in 0..codes.len() {
            let (a, b) = (sub_off[s], sub_off[s + 1]);
            let book = &codebooks[KSUB * a..KSUB * b];
            let mut best = (0usize, f32::INFINITY);
            for (j, cw) in book.chunks_exact(b - a).enumerate() {
                let d: f32 = r[a..b].iter().zip(cw).map(|(p, q)| (p - q) * (p - q)).sum();
                if d < best.1 {
                    best = (j, d);
                }
            }
            codes[s] = best.0 as u8;
        }
    }

    #[test]
    fn kernel_codes_equal_the_scalar_loop() {
        let mut rng = Rng::new(3);
        let mut uni = |scale: f32| (rng.next_u64() >> 40) as f32 / (1u64 << 24) as f32 * scale;
        for &(dim, m) in &[
            (1, 1),
            (8, 2),
            (13, 5),
            (48, 12),
            (64, 32),
            (384, 96),
            (384, 48),
        ] {
            let sub_off = subspace_offsets(dim, m);
            for trial in 0..20 {
                // Few distinct values make ties frequent: the first least codeword must win.
                let q = if trial % 2 == 0 { 4.0 } else { 1e6 };
                let mut val = |s: f32| (uni(s) * q).round() / q - 0.5 * s;
                let books: Vec<f32> = (0..KSUB * dim).map(|_| val(1.0)).collect();
                let r: Vec<f32> = (0..dim).map(|_| val(1.5)).collect();
                let t = transpose_codebooks(&books, &sub_off);
                let mut want = vec![0u8; m];
                nearest_scalar(&r, &books, &sub_off, &mut want);
                let mut got = vec![0u8; m];
                nearest_body(&r, &t, &sub_off, &mut got);
                assert_eq!(got, want, "portable, dim {dim} m {m} trial {trial}");
                got.fill(0);
                nearest_codewords(&r, &t, &sub_off, &mut got);
                assert_eq!(got, want, "dispatched, dim {dim} m {m} trial {trial}");
            }
        }
    }
}
