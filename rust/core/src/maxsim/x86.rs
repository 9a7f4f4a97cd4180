//! x86-64 MaxSim micro-kernels: AVX2+FMA (+F16C for half-precision storage) and AVX-512F.
//!
//! The scheme is the register-blocked outer-product micro-kernel of BLIS/GotoBLAS sgemm (Van Zee &
//! van de Geijn, "BLIS: A Framework for Rapidly Instantiating BLAS Functionality", TOMS 2015) with
//! the MaxSim reduction fused into it, so the (n_query x n_doc_tokens) similarity matrix never
//! leaves registers. The query is packed once (see [`super::PreparedQuery`]) transposed, per query
//! block of `C` vectors: `qt[k * C * W + lane]` = query token `lane` of the block, dimension `k`.
//! A tile of `R` document tokens x `C` query vectors keeps `R * C` accumulators; for each `k` it
//! loads `C` query vectors, broadcasts `R` document scalars and issues `R * C` FMAs. After the `k`
//! loop the `R` rows are max-reduced (vertically, no shuffles) into a running per-query-lane max.
//!
//! AVX2: R = 6, C = 2 -> 12 accumulators + 2 query vectors + 1 broadcast = 15 of the 16 ymm
//! registers (the 6x16 shape of BLIS's Haswell sgemm kernel). AVX-512: R = 12, C = 2 -> 24 of 32
//! zmm registers. The AVX-512 kernel is compiled and dispatched but has NOT been run on hardware
//! here (the development machine has no AVX-512); the AVX2 kernel is the tested fast path.

use std::arch::x86_64::*;

use half::f16;

/// Document tokens per AVX2 tile.
pub const AVX2_ROWS: usize = 6;
/// Query lanes per AVX2 vector.
pub const AVX2_LANES: usize = 8;
/// Document tokens per AVX-512 tile.
pub const AVX512_ROWS: usize = 12;
/// Query lanes per AVX-512 vector.
pub const AVX512_LANES: usize = 16;

/// Software-prefetches `len` floats from `from` (clipped at `end`) into L2, one hint per cache
/// line: the next tile's document rows, while the current tile computes (hundreds of cycles).
/// Measured (thread CPU time, DRAM-resident data, d=128): 42-47 -> 72 GFLOP/s; the L2 hint
/// matches L1 (T0) at d=128 and keeps the next tile from evicting the packed query at d=384.
#[inline(always)]
unsafe fn prefetch_next(from: *const f32, end: *const f32, len: usize) {
    let stop = from.wrapping_add(len).min(end);
    let mut p = from;
    while p < stop {
        _mm_prefetch::<_MM_HINT_T1>(p as *const i8);
        p = p.wrapping_add(16);
    }
}

/// One AVX2 tile: `R` document tokens starting at `d` against a query block of `C` vectors.
///
/// # Safety
/// AVX2 and FMA must be available; `qt` must hold `dim * C * 8` floats, `d` `R * dim` floats and
/// `maxbuf` `C * 8` floats.
#[inline(always)]
unsafe fn tile_avx2<const R: usize, const C: usize>(
    qt: *const f32,
    d: *const f32,
    dim: usize,
    maxbuf: *mut f32,
) {
    let mut acc = [[_mm256_setzero_ps(); C]; R];
    let mut q = qt;
    let mut dk = d;
    for _ in 0..dim {
        let mut qv = [_mm256_setzero_ps(); C];
        for (c, v) in qv.iter_mut().enumerate() {
            *v = _mm256_loadu_ps(q.add(c * AVX2_LANES));
        }
        for (r, row) in acc.iter_mut().enumerate() {
            let b = _mm256_set1_ps(*dk.add(r * dim));
            for (c, a) in row.iter_mut().enumerate() {
                *a = _mm256_fmadd_ps(b, qv[c], *a);
            }
        }
        q = q.add(C * AVX2_LANES);
        dk = dk.add(1);
    }
    for c in 0..C {
        let mut m = acc[0][c];
        for row in acc.iter().skip(1) {
            m = _mm256_max_ps(m, row[c]);
        }
        let p = maxbuf.add(c * AVX2_LANES);
        _mm256_storeu_ps(p, _mm256_max_ps(_mm256_loadu_ps(p), m));
    }
}

#[inline(always)]
unsafe fn block_avx2<const C: usize>(
    qt: *const f32,
    doc: *const f32,
    n_tok: usize,
    dim: usize,
    maxbuf: *mut f32,
) {
    let full = n_tok / AVX2_ROWS;
    let end = doc.add(n_tok * dim);
    for t in 0..full {
        let d = doc.add(t * AVX2_ROWS * dim);
        prefetch_next(d.add(AVX2_ROWS * dim), end, AVX2_ROWS * dim);
        tile_avx2::<AVX2_ROWS, C>(qt, d, dim, maxbuf);
    }
    let d = doc.add(full * AVX2_ROWS * dim);
    match n_tok % AVX2_ROWS {
        1 => tile_avx2::<1, C>(qt, d, dim, maxbuf),
        2 => tile_avx2::<2, C>(qt, d, dim, maxbuf),
        3 => tile_avx2::<3, C>(qt, d, dim, maxbuf),
        4 => tile_avx2::<4, C>(qt, d, dim, maxbuf),
        5 => tile_avx2::<5, C>(qt, d, dim, maxbuf),
        _ => {}
    }
}

/// Folds every token of `doc` (`n_tok * dim` f32, row-major) into `maxbuf` (`n_vec * 8` running
/// maxima, one per query lane) for one packed query block of `n_vec` (1 or 2) vectors.
///
/// # Safety
/// The CPU must support AVX2 and FMA.
#[target_feature(enable = "avx2,fma")]
pub unsafe fn block_f32_avx2(
    qt: &[f32],
    n_vec: usize,
    doc: &[f32],
    dim: usize,
    maxbuf: &mut [f32],
) {
    let n_tok = doc.len() / dim;
    assert!(qt.len() >= dim * n_vec * AVX2_LANES && maxbuf.len() >= n_vec * AVX2_LANES);
    match n_vec {
        2 => block_avx2::<2>(qt.as_ptr(), doc.as_ptr(), n_tok, dim, maxbuf.as_mut_ptr()),
        1 => block_avx2::<1>(qt.as_ptr(), doc.as_ptr(), n_tok, dim, maxbuf.as_mut_ptr()),
        _ => unreachable!("AVX2 query blocks hold 1 or 2 vectors"),
    }
}

/// Converts f16 to f32 with F16C (`vcvtph2ps`), 8 values per instruction.
///
/// # Safety
/// The CPU must support AVX and F16C.
#[target_feature(enable = "avx,f16c")]
pub unsafe fn f16_to_f32_f16c(src: &[f16], dst: &mut [f32]) {
    assert_eq!(src.len(), dst.len());
    let n8 = src.len() / 8 * 8;
    let (s, d) = (src.as_ptr(), dst.as_mut_ptr());
    let mut i = 0;
    while i < n8 {
        let h = _mm_loadu_si128(s.add(i) as *const __m128i);
        _mm256_storeu_ps(d.add(i), _mm256_cvtph_ps(h));
        i += 8;
    }
    for j in n8..src.len() {
        dst[j] = src[j].to_f32();
    }
}

/// One AVX-512 tile (same structure as [`tile_avx2`], 16 lanes per vector).
///
/// # Safety
/// AVX-512F must be available; buffer sizes as for [`tile_avx2`] with 16 lanes.
#[inline(always)]
unsafe fn tile_avx512<const R: usize, const C: usize>(
    qt: *const f32,
    d: *const f32,
    dim: usize,
    maxbuf: *mut f32,
) {
    let mut acc = [[_mm512_setzero_ps(); C]; R];
    let mut q = qt;
    let mut dk = d;
    for _ in 0..dim {
        let mut qv = [_mm512_setzero_ps(); C];
        for (c, v) in qv.iter_mut().enumerate() {
            *v = _mm512_loadu_ps(q.add(c * AVX512_LANES));
        }
        for (r, row) in acc.iter_mut().enumerate() {
            let b = _mm512_set1_ps(*dk.add(r * dim));
            for (c, a) in row.iter_mut().enumerate() {
                *a = _mm512_fmadd_ps(b, qv[c], *a);
            }
        }
        q = q.add(C * AVX512_LANES);
        dk = dk.add(1);
    }
    for c in 0..C {
        let mut m = acc[0][c];
        for row in acc.iter().skip(1) {
            m = _mm512_max_ps(m, row[c]);
        }
        let p = maxbuf.add(c * AVX512_LANES);
        _mm512_storeu_ps(p, _mm512_max_ps(_mm512_loadu_ps(p), m));
    }
}

#[inline(always)]
unsafe fn block_avx512<const C: usize>(
    qt: *const f32,
    doc: *const f32,
    n_tok: usize,
    dim: usize,
    maxbuf: *mut f32,
) {
    let full = n_tok / AVX512_ROWS;
    let end = doc.add(n_tok * dim);
    for t in 0..full {
        let d = doc.add(t * AVX512_ROWS * dim);
        prefetch_next(d.add(AVX512_ROWS * dim), end, AVX512_ROWS * dim);
        tile_avx512::<AVX512_ROWS, C>(qt, d, dim, maxbuf);
    }
    let mut d = doc.add(full * AVX512_ROWS * dim);
    let mut rem = n_tok % AVX512_ROWS;
    // Remainder of 1-11 tokens as tiles of 8, 4 and 1-3: few instantiations, all register-resident.
    if rem >= 8 {
        tile_avx512::<8, C>(qt, d, dim, maxbuf);
        d = d.add(8 * dim);
        rem -= 8;
    }
    if rem >= 4 {
        tile_avx512::<4, C>(qt, d, dim, maxbuf);
        d = d.add(4 * dim);
        rem -= 4;
    }
    match rem {
        1 => tile_avx512::<1, C>(qt, d, dim, maxbuf),
        2 => tile_avx512::<2, C>(qt, d, dim, maxbuf),
        3 => tile_avx512::<3, C>(qt, d, dim, maxbuf),
        _ => {}
    }
}

/// AVX-512F version of [`block_f32_avx2`] (16 lanes per vector). Untested on hardware.
///
/// # Safety
/// The CPU must support AVX-512F.
#[target_feature(enable = "avx512f")]
pub unsafe fn block_f32_avx512(
    qt: &[f32],
    n_vec: usize,
    doc: &[f32],
    dim: usize,
    maxbuf: &mut [f32],
) {
    let n_tok = doc.len() / dim;
    assert!(qt.len() >= dim * n_vec * AVX512_LANES && maxbuf.len() >= n_vec * AVX512_LANES);
    match n_vec {
        2 => block_avx512::<2>(qt.as_ptr(), doc.as_ptr(), n_tok, dim, maxbuf.as_mut_ptr()),
        1 => block_avx512::<1>(qt.as_ptr(), doc.as_ptr(), n_tok, dim, maxbuf.as_mut_ptr()),
        _ => unreachable!("AVX-512 query blocks hold 1 or 2 vectors"),
    }
}

/// Converts f16 to f32 with AVX-512F's `vcvtph2ps zmm`, 16 values per instruction.
///
/// # Safety
/// The CPU must support AVX-512F.
#[target_feature(enable = "avx512f")]
pub unsafe fn f16_to_f32_avx512(src: &[f16], dst: &mut [f32]) {
    assert_eq!(src.len(), dst.len());
    let n16 = src.len() / 16 * 16;
    let (s, d) = (src.as_ptr(), dst.as_mut_ptr());
    let mut i = 0;
    while i < n16 {
        let h = _mm256_loadu_si256(s.add(i) as *const __m256i);
        _mm512_storeu_ps(d.add(i), _mm512_cvtph_ps(h));
        i += 16;
    }
    for j in n16..src.len() {
        dst[j] = src[j].to_f32();
    }
}

/// [`super::any_above_portable`] compiled for AVX2 (256-bit `vpmaxud` / `vpmaxuw`).
///
/// # Safety
/// The CPU must support AVX2.
#[target_feature(enable = "avx2")]
pub unsafe fn any_above_avx2(values: super::DocVectors<'_>, f32_limit: u32) -> bool {
    super::any_above_portable(values, f32_limit)
}
