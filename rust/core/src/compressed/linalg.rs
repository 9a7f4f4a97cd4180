//! Dense dot-product tiles for k-means assignment and centroid scoring.
//!
//! Classic GEMM micro-kernel shape (Goto & van de Geijn, "Anatomy of high-performance matrix
//! multiplication", 2008): the right-hand matrix is packed into panels of `NR` columns stored
//! dimension-major, and an `MR x NR` tile of dot products is accumulated in registers by
//! broadcasting one left-hand scalar per row and multiplying it with a panel row. The inner loop has
//! no horizontal reduction, so the plain Rust below vectorises; it is compiled twice (baseline and
//! AVX2+FMA), and an AVX-512F tile (one 16-lane register per row of a taller tile) sits beside
//! them; the fastest the selected level allows is chosen at run time. The AVX2 and AVX-512F tiles
//! accumulate every product with the same fused multiply-adds in the same order: same bits.

/// Columns per packed panel.
pub const NR: usize = 16;
/// Rows per register tile.
pub const MR: usize = 6;

/// Rows of a matrix packed into panels of [`NR`] rows, each stored dimension-major
/// (`panel[j * NR + c]` = row `c` of the panel, dimension `j`). Missing rows of the last panel are 0.
#[derive(Clone, Debug)]
pub struct Panels {
    /// Dimension of each row.
    pub dim: usize,
    /// Number of real rows.
    pub n: usize,
    data: Vec<f32>,
}

impl Panels {
    /// Packs `rows` (`n * dim`, row-major).
    pub fn new(rows: &[f32], dim: usize) -> Self {
        let n = rows.len().checked_div(dim).unwrap_or(0);
        let n_panels = n.div_ceil(NR);
        let mut data = vec![0.0f32; n_panels * dim * NR];
        for (r, row) in rows.chunks_exact(dim.max(1)).enumerate().take(n) {
            let (p, c) = (r / NR, r % NR);
            let base = p * dim * NR;
            for (j, &v) in row.iter().enumerate() {
                data[base + j * NR + c] = v;
            }
        }
        Panels { dim, n, data }
    }

    /// Number of rows rounded up to a multiple of [`NR`].
    pub fn n_padded(&self) -> usize {
        self.n.div_ceil(NR) * NR
    }

    fn panel(&self, p: usize) -> &[f32] {
        &self.data[p * self.dim * NR..(p + 1) * self.dim * NR]
    }
}

#[inline(always)]
fn tile_generic<const R: usize>(x: &[f32], dim: usize, panel: &[f32], acc: &mut [[f32; NR]; R]) {
    for a in acc.iter_mut() {
        *a = [0.0; NR];
    }
    for j in 0..dim {
        let prow: &[f32; NR] = panel[j * NR..(j + 1) * NR].try_into().expect("panel row");
        for r in 0..R {
            let xv = x[r * dim + j];
            for c in 0..NR {
                acc[r][c] += xv * prow[c];
            }
        }
    }
}

/// Computes `out[r * n_padded + c] = <x_r, row_c>` for every row of `x` (`m * dim`); with
/// `lower`, only the panels holding a column `c <= r` of some row of a tile (see [`gram_lower`]).
fn scores_generic(x: &[f32], panels: &Panels, out: &mut [f32], lower: bool) {
    let dim = panels.dim;
    let m = x.len() / dim;
    let np = panels.n_padded();
    let n_panels = np / NR;
    let mut r0 = 0;
    while r0 < m {
        let rows = (m - r0).min(MR);
        let last = if lower {
            ((r0 + rows - 1) / NR + 1).min(n_panels)
        } else {
            n_panels
        };
        for p in 0..last {
            let panel = panels.panel(p);
            let xs = &x[r0 * dim..(r0 + rows) * dim];
            if rows == MR {
                let mut acc = [[0.0f32; NR]; MR];
                tile_generic::<MR>(xs, dim, panel, &mut acc);
                for (r, a) in acc.iter().enumerate() {
                    out[(r0 + r) * np + p * NR..(r0 + r) * np + (p + 1) * NR].copy_from_slice(a);
                }
            } else {
                for r in 0..rows {
                    let mut acc = [[0.0f32; NR]; 1];
                    tile_generic::<1>(&xs[r * dim..(r + 1) * dim], dim, panel, &mut acc);
                    out[(r0 + r) * np + p * NR..(r0 + r) * np + (p + 1) * NR]
                        .copy_from_slice(&acc[0]);
                }
            }
        }
        r0 += rows;
    }
}

/// AVX2+FMA register tile: `R` rows of `x` times one panel, 2 x R accumulators of 8 lanes.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn tile_avx2<const R: usize>(
    x: &[f32],
    dim: usize,
    panel: &[f32],
    out: &mut [f32],
    out_stride: usize,
) {
    use std::arch::x86_64::*;
    debug_assert!(x.len() >= R * dim && panel.len() >= dim * NR);
    let mut acc0 = [_mm256_setzero_ps(); R];
    let mut acc1 = [_mm256_setzero_ps(); R];
    let pp = panel.as_ptr();
    let xp = x.as_ptr();
    for j in 0..dim {
        // SAFETY: j < dim, so the panel row j (16 floats) and x[r * dim + j] are in bounds.
        let p0 = _mm256_loadu_ps(pp.add(j * NR));
        let p1 = _mm256_loadu_ps(pp.add(j * NR + 8));
        for r in 0..R {
            let xv = _mm256_broadcast_ss(&*xp.add(r * dim + j));
            acc0[r] = _mm256_fmadd_ps(xv, p0, acc0[r]);
            acc1[r] = _mm256_fmadd_ps(xv, p1, acc1[r]);
        }
    }
    for r in 0..R {
        // SAFETY: the caller passes out with R rows of at least NR values at out_stride.
        _mm256_storeu_ps(out.as_mut_ptr().add(r * out_stride), acc0[r]);
        _mm256_storeu_ps(out.as_mut_ptr().add(r * out_stride + 8), acc1[r]);
    }
}

/// [`tile_avx2`] for `rows` (1 to [`MR`]) rows.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn tile_rows_avx2(
    rows: usize,
    xs: &[f32],
    dim: usize,
    panel: &[f32],
    out: &mut [f32],
    stride: usize,
) {
    match rows {
        6 => tile_avx2::<6>(xs, dim, panel, out, stride),
        5 => tile_avx2::<5>(xs, dim, panel, out, stride),
        4 => tile_avx2::<4>(xs, dim, panel, out, stride),
        3 => tile_avx2::<3>(xs, dim, panel, out, stride),
        2 => tile_avx2::<2>(xs, dim, panel, out, stride),
        _ => tile_avx2::<1>(xs, dim, panel, out, stride),
    }
}

/// A register-tile kernel: `(rows, x rows, dim, panel, out, out stride)`, `rows` from 1 to its
/// kernel's height ([`tile_rows_avx2`], [`tile_rows_avx512`]).
#[cfg(target_arch = "x86_64")]
type TileRows = unsafe fn(usize, &[f32], usize, &[f32], &mut [f32], usize);

/// Where [`scores_tiled`] reads its panels: f32 panels as they are, or half-float panels widened
/// one at a time into an f32 buffer by the given kernel.
#[cfg(target_arch = "x86_64")]
#[derive(Clone, Copy)]
enum PanelSource<'a> {
    F32(&'a Panels),
    Half(&'a HalfPanels, unsafe fn(&[half::f16], &mut [f32])),
}

/// The SIMD paths' one driver: `out[r * n_padded + c] = <x_r, row_c>` by register tiles of at
/// most `mr` rows (`tile`); with `lower`, only what [`gram_lower`] needs. The caller guarantees
/// the CPU features of `tile` and of the widening kernel.
#[cfg(target_arch = "x86_64")]
unsafe fn scores_tiled(
    x: &[f32],
    src: PanelSource<'_>,
    out: &mut [f32],
    lower: bool,
    mr: usize,
    tile: TileRows,
) {
    let (dim, np) = match src {
        PanelSource::F32(p) => (p.dim, p.n_padded()),
        PanelSource::Half(h, _) => (h.dim, h.n_padded()),
    };
    let m = x.len() / dim;
    // Half panels: each is widened once into an L1-resident f32 buffer, then every row tile runs
    // the f32 kernel on it (the memory traffic is f16, the conversion cost 1/m of the FMAs).
    let mut buf = match src {
        PanelSource::Half(..) => vec![0.0f32; dim * NR],
        PanelSource::F32(_) => Vec::new(),
    };
    // Panel-outer order: a panel (dim x 16 floats, 24 KB at dim 384) stays in L1 while every row
    // tile uses it, so the centroid matrix streams from memory once per call instead of once per
    // tile of rows (the row-outer order was bandwidth-bound for query-sized inputs).
    for p in 0..np / NR {
        let panel: &[f32] = match src {
            PanelSource::F32(ps) => ps.panel(p),
            PanelSource::Half(h, widen) => {
                widen(h.panel(p), &mut buf);
                &buf
            }
        };
        // Lower: the row tiles from the one holding row p * NR (earlier rows need no column of
        // this panel). Tiles keep their rows, and a row's products do not depend on its tile.
        let mut r0 = if lower { (p * NR / mr) * mr } else { 0 };
        while r0 < m {
            let rows = (m - r0).min(mr);
            let xs = &x[r0 * dim..(r0 + rows) * dim];
            tile(rows, xs, dim, panel, &mut out[r0 * np + p * NR..], np);
            r0 += rows;
        }
    }
}

/// [`scores_tiled`] with the AVX2 tiles. Needs AVX2 and FMA.
#[cfg(target_arch = "x86_64")]
unsafe fn scores_avx2(x: &[f32], panels: &Panels, out: &mut [f32], lower: bool) {
    scores_tiled(x, PanelSource::F32(panels), out, lower, MR, tile_rows_avx2)
}

/// Rows per register tile of the AVX-512F kernel: one 16-lane accumulator per row (12 of the 32
/// vector registers), enough independent multiply-adds in flight to keep two FMA ports busy.
const MR512: usize = 12;

/// AVX-512F register tile: `R` rows of `x` times one panel ([`NR`] = 16 columns = one register),
/// one accumulator per row. Every lane adds `x[r][j] * panel[j][c]` over `j` in order with fused
/// multiply-adds, exactly as [`tile_avx2`] does, so the two kernels give the same bits.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
unsafe fn tile_avx512<const R: usize>(
    x: &[f32],
    dim: usize,
    panel: &[f32],
    out: &mut [f32],
    out_stride: usize,
) {
    use std::arch::x86_64::*;
    debug_assert!(x.len() >= R * dim && panel.len() >= dim * NR);
    let mut acc = [_mm512_setzero_ps(); R];
    let pp = panel.as_ptr();
    let xp = x.as_ptr();
    for j in 0..dim {
        // SAFETY: j < dim, so the panel row j (16 floats) and x[r * dim + j] are in bounds.
        let p = _mm512_loadu_ps(pp.add(j * NR));
        for (r, a) in acc.iter_mut().enumerate() {
            *a = _mm512_fmadd_ps(_mm512_set1_ps(*xp.add(r * dim + j)), p, *a);
        }
    }
    for (r, a) in acc.iter().enumerate() {
        // SAFETY: the caller passes out with R rows of at least NR values at out_stride.
        _mm512_storeu_ps(out.as_mut_ptr().add(r * out_stride), *a);
    }
}

/// [`tile_avx512`] for `rows` (1 to [`MR512`]) rows.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
unsafe fn tile_rows_avx512(
    rows: usize,
    xs: &[f32],
    dim: usize,
    panel: &[f32],
    out: &mut [f32],
    stride: usize,
) {
    match rows {
        12 => tile_avx512::<12>(xs, dim, panel, out, stride),
        11 => tile_avx512::<11>(xs, dim, panel, out, stride),
        10 => tile_avx512::<10>(xs, dim, panel, out, stride),
        9 => tile_avx512::<9>(xs, dim, panel, out, stride),
        8 => tile_avx512::<8>(xs, dim, panel, out, stride),
        7 => tile_avx512::<7>(xs, dim, panel, out, stride),
        6 => tile_avx512::<6>(xs, dim, panel, out, stride),
        5 => tile_avx512::<5>(xs, dim, panel, out, stride),
        4 => tile_avx512::<4>(xs, dim, panel, out, stride),
        3 => tile_avx512::<3>(xs, dim, panel, out, stride),
        2 => tile_avx512::<2>(xs, dim, panel, out, stride),
        _ => tile_avx512::<1>(xs, dim, panel, out, stride),
    }
}

/// [`scores_tiled`] with AVX-512F tiles of [`MR512`] rows: twice the products per instruction.
/// Needs AVX-512F.
#[cfg(target_arch = "x86_64")]
unsafe fn scores_avx512(x: &[f32], panels: &Panels, out: &mut [f32], lower: bool) {
    scores_tiled(
        x,
        PanelSource::F32(panels),
        out,
        lower,
        MR512,
        tile_rows_avx512,
    )
}

/// Dot products of every row of `x` (`m * dim`, row-major) with every packed row:
/// `out[r * panels.n_padded() + c]`. `out` must hold `m * panels.n_padded()` values; padded
/// columns receive 0.
pub fn scores(x: &[f32], panels: &Panels, out: &mut [f32]) {
    let m = x.len() / panels.dim.max(1);
    assert!(
        out.len() >= m * panels.n_padded(),
        "scores: output too small"
    );
    #[cfg(target_arch = "x86_64")]
    {
        if crate::simd::avx512() {
            // SAFETY: the selected level is Avx512, so AVX-512F was detected at run time.
            unsafe { scores_avx512(x, panels, out, false) };
            return;
        }
        if crate::simd::avx2() {
            // SAFETY: the required CPU features were detected at run time.
            unsafe { scores_avx2(x, panels, out, false) };
            return;
        }
    }
    scores_generic(x, panels, out, false)
}

/// The lower triangle of the Gram matrix of `x` (`n * dim`, row-major; `panels` packs the same
/// rows): `out[r * panels.n_padded() + c] = <x_r, x_c>` for every `c <= r` (other entries may be
/// left as they were), at about half the products of [`scores`]. Each product is computed by
/// the same kernel as by [`scores`], and is symmetric bit for bit (`<x_r, x_c>` and `<x_c, x_r>`
/// multiply and add the same values in the same order), so the upper triangle is the mirror.
pub fn gram_lower(x: &[f32], panels: &Panels, out: &mut [f32]) {
    let m = x.len() / panels.dim.max(1);
    assert!(
        m == panels.n && out.len() >= m * panels.n_padded(),
        "gram_lower: the rows must be the panels' and the output large enough"
    );
    #[cfg(target_arch = "x86_64")]
    {
        if crate::simd::avx512() {
            // SAFETY: the selected level is Avx512, so AVX-512F was detected at run time.
            unsafe { scores_avx512(x, panels, out, true) };
            return;
        }
        if crate::simd::avx2() {
            // SAFETY: the required CPU features were detected at run time.
            unsafe { scores_avx2(x, panels, out, true) };
            return;
        }
    }
    scores_generic(x, panels, out, true)
}

/// Rows packed like [`Panels`] but stored as IEEE half floats: half the bytes to stream when the
/// rows are themselves f16 values (the coarse centroids are), with identical products since the
/// f16 -> f32 conversion is exact. Used for per-query centroid scoring, which is bandwidth-bound
/// (the whole centroid table is read once per query).
#[derive(Clone, Debug)]
pub struct HalfPanels {
    /// Dimension of each row.
    pub dim: usize,
    /// Number of real rows.
    pub n: usize,
    data: Vec<half::f16>,
}

impl HalfPanels {
    /// Packs `rows` (`n * dim`, row-major), rounding to f16.
    pub fn new(rows: &[f32], dim: usize) -> Self {
        let p = Panels::new(rows, dim);
        HalfPanels {
            dim,
            n: p.n,
            data: p.data.iter().map(|&v| half::f16::from_f32(v)).collect(),
        }
    }

    /// Number of rows rounded up to a multiple of [`NR`].
    pub fn n_padded(&self) -> usize {
        self.n.div_ceil(NR) * NR
    }

    fn panel(&self, p: usize) -> &[half::f16] {
        &self.data[p * self.dim * NR..(p + 1) * self.dim * NR]
    }
}

/// Widens a half-float panel into `out`, 8 values at a time (F16C).
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,f16c")]
unsafe fn widen_avx2(src: &[half::f16], out: &mut [f32]) {
    use std::arch::x86_64::*;
    for (o, h) in out.chunks_exact_mut(8).zip(src.chunks_exact(8)) {
        // SAFETY: both chunks hold exactly 8 elements (8 halves = 16 bytes, 8 floats).
        let v = _mm256_cvtph_ps(_mm_loadu_si128(h.as_ptr() as *const __m128i));
        _mm256_storeu_ps(o.as_mut_ptr(), v);
    }
}

/// Widens a half-float panel into `out`, 16 values at a time (AVX-512F).
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
unsafe fn widen_avx512(src: &[half::f16], out: &mut [f32]) {
    use std::arch::x86_64::*;
    for (o, h) in out.chunks_exact_mut(16).zip(src.chunks_exact(16)) {
        // SAFETY: both chunks hold exactly 16 elements (16 halves = 32 bytes, 16 floats).
        let v = _mm512_cvtph_ps(_mm256_loadu_si256(h.as_ptr() as *const __m256i));
        _mm512_storeu_ps(o.as_mut_ptr(), v);
    }
}

/// [`scores_tiled`] over half panels with the AVX2 tiles. Needs AVX2, FMA and F16C.
#[cfg(target_arch = "x86_64")]
unsafe fn scores_half_avx2(x: &[f32], panels: &HalfPanels, out: &mut [f32]) {
    let src = PanelSource::Half(panels, widen_avx2);
    scores_tiled(x, src, out, false, MR, tile_rows_avx2)
}

/// [`scores_half_avx2`] with AVX-512F widening and tiles. Needs AVX-512F.
#[cfg(target_arch = "x86_64")]
unsafe fn scores_half_avx512(x: &[f32], panels: &HalfPanels, out: &mut [f32]) {
    let src = PanelSource::Half(panels, widen_avx512);
    scores_tiled(x, src, out, false, MR512, tile_rows_avx512)
}

/// [`scores`] against half-float panels: `out[r * panels.n_padded() + c] = <x_r, row_c>`.
pub fn scores_half(x: &[f32], panels: &HalfPanels, out: &mut [f32]) {
    let dim = panels.dim.max(1);
    let m = x.len() / dim;
    assert!(
        out.len() >= m * panels.n_padded(),
        "scores_half: output too small"
    );
    #[cfg(target_arch = "x86_64")]
    {
        if crate::simd::avx512() {
            // SAFETY: the selected level is Avx512, so AVX-512F was detected at run time.
            unsafe { scores_half_avx512(x, panels, out) };
            return;
        }
        if crate::simd::avx2() {
            // SAFETY: the required CPU features were detected at run time.
            unsafe { scores_half_avx2(x, panels, out) };
            return;
        }
    }
    let np = panels.n_padded();
    for p in 0..np / NR {
        let panel: Vec<f32> = panels.panel(p).iter().map(|h| h.to_f32()).collect();
        for r in 0..m {
            let mut acc = [[0.0f32; NR]; 1];
            tile_generic::<1>(&x[r * dim..(r + 1) * dim], dim, &panel, &mut acc);
            out[r * np + p * NR..r * np + (p + 1) * NR].copy_from_slice(&acc[0]);
        }
    }
}

/// Scalar dot product (reference for tests and small cases).
pub fn dot(a: &[f32], b: &[f32]) -> f32 {
    a.iter().zip(b).map(|(x, y)| x * y).sum()
}

/// For each row of `x`, the index of the row `c` of `panels` maximising `<x, c> - half_norms[c]`
/// (nearest centroid in Euclidean distance when `half_norms[c] = |c|^2 / 2`) and that value.
/// Single-threaded; callers parallelise over chunks of rows.
pub fn argmax_rows(x: &[f32], panels: &Panels, half_norms: &[f32], out: &mut [(u32, f32)]) {
    let dim = panels.dim;
    let np = panels.n_padded();
    // Bound the scratch matrix: score blocks of rows at a time.
    let n_rows = x.len() / dim.max(1);
    let block = (4096 * 16 / np.max(1)).clamp(MR, 1024).min(n_rows.max(1));
    let mut buf = vec![0.0f32; block * np];
    for (bi, xs) in x.chunks(block * dim).enumerate() {
        let m = xs.len() / dim;
        scores(xs, panels, &mut buf[..m * np]);
        for r in 0..m {
            let row = &buf[r * np..r * np + panels.n];
            let mut best = (0u32, f32::NEG_INFINITY);
            for (c, (&s, &h)) in row.iter().zip(half_norms).enumerate() {
                let v = s - h;
                if v > best.1 {
                    best = (c as u32, v);
                }
            }
            out[bi * block + r] = best;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn half_panels_match_scalar_dots_of_rounded_rows() {
        let mut s = 7u64;
        let mut next = || {
            s = s
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            ((s >> 40) as f32 / (1u64 << 24) as f32) - 0.5
        };
        for &(m, n, dim) in &[(1, 1, 1), (7, 17, 5), (13, 40, 33), (21, 50, 384)] {
            let x: Vec<f32> = (0..m * dim).map(|_| next()).collect();
            let c: Vec<f32> = (0..n * dim)
                .map(|_| half::f16::from_f32(next()).to_f32())
                .collect();
            let p = HalfPanels::new(&c, dim);
            let mut out = vec![f32::NAN; m * p.n_padded()];
            scores_half(&x, &p, &mut out);
            let full = Panels::new(&c, dim);
            let mut want = vec![0.0; m * full.n_padded()];
            scores(&x, &full, &mut want);
            for r in 0..m {
                for j in 0..p.n_padded() {
                    let d = if j < n {
                        dot(&x[r * dim..(r + 1) * dim], &c[j * dim..(j + 1) * dim])
                    } else {
                        0.0
                    };
                    let got = out[r * p.n_padded() + j];
                    assert!((got - d).abs() < 1e-4, "{m} {n} {dim} {r} {j}");
                    // Rows already f16: the same products as the f32 panels, bit for bit.
                    assert_eq!(got, want[r * full.n_padded() + j]);
                }
            }
        }
    }

    #[test]
    fn gram_lower_is_the_lower_triangle_of_scores_bit_for_bit() {
        let mut s = 5u64;
        let mut next = || {
            s = s
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            ((s >> 40) as f32 / (1u64 << 24) as f32) - 0.5
        };
        for &(n, dim) in &[(1, 1), (5, 3), (16, 8), (17, 33), (40, 384), (97, 20)] {
            let x: Vec<f32> = (0..n * dim).map(|_| next()).collect();
            let p = Panels::new(&x, dim);
            let np = p.n_padded();
            let mut full = vec![0.0; n * np];
            scores(&x, &p, &mut full);
            let mut low = vec![f32::NAN; n * np];
            gram_lower(&x, &p, &mut low);
            for r in 0..n {
                for c in 0..=r {
                    assert_eq!(low[r * np + c], full[r * np + c], "{n} {dim} {r} {c}");
                    // The symmetry the mirror relies on.
                    assert_eq!(full[r * np + c], full[c * np + r], "{n} {dim} {r} {c}");
                }
            }
            // The portable path alike.
            let mut generic = vec![f32::NAN; n * np];
            scores_generic(&x, &p, &mut generic, true);
            let mut generic_full = vec![0.0; n * np];
            scores_generic(&x, &p, &mut generic_full, false);
            for r in 0..n {
                for c in 0..=r {
                    assert_eq!(generic[r * np + c], generic_full[r * np + c]);
                    assert_eq!(generic_full[r * np + c], generic_full[c * np + r]);
                }
            }
        }
    }

    /// The AVX-512F tiles against the AVX2 ones, bit for bit (full, lower triangle and half
    /// panels), on random shapes covering every tile height of both kernels; and against
    /// scalar dots. Skipped (passes) on a CPU without AVX-512F.
    #[cfg(target_arch = "x86_64")]
    #[test]
    fn avx512_tiles_match_avx2_bit_for_bit() {
        if !crate::simd::Level::Avx512.is_available() {
            eprintln!("skipped: this CPU cannot run AVX-512F");
            return;
        }
        let mut s = 11u64;
        let mut next = || {
            s = s
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            ((s >> 40) as f32 / (1u64 << 24) as f32) - 0.5
        };
        let shapes = [
            (1, 1, 1),
            (5, 3, 7),
            (11, 16, 8),
            (12, 17, 33),
            (13, 40, 128),
            (25, 31, 5),
            (32, 2048, 384),
            (37, 64, 96),
            (40, 40, 384),
        ];
        for &(m, n, dim) in &shapes {
            let x: Vec<f32> = (0..m * dim).map(|_| next()).collect();
            let c: Vec<f32> = (0..n * dim).map(|_| next()).collect();
            let p = Panels::new(&c, dim);
            let np = p.n_padded();
            let (mut a, mut b) = (vec![f32::NAN; m * np], vec![f32::NAN; m * np]);
            // SAFETY: AVX-512F, AVX2, FMA and F16C were detected (Level::Avx512 is available).
            unsafe {
                scores_avx2(&x, &p, &mut a, false);
                scores_avx512(&x, &p, &mut b, false);
            }
            for r in 0..m {
                for j in 0..np {
                    let (u, v) = (a[r * np + j], b[r * np + j]);
                    assert_eq!(u.to_bits(), v.to_bits(), "full {m} {n} {dim} {r} {j}");
                    if j < n {
                        let d = dot(&x[r * dim..(r + 1) * dim], &c[j * dim..(j + 1) * dim]);
                        assert!((v - d).abs() < 1e-4, "dot {m} {n} {dim} {r} {j}");
                    }
                }
            }
            // The Gram matrix's lower triangle (rows = panels).
            let g = Panels::new(&x, dim);
            let gp = g.n_padded();
            let (mut a, mut b) = (vec![f32::NAN; m * gp], vec![f32::NAN; m * gp]);
            // SAFETY: as above.
            unsafe {
                scores_avx2(&x, &g, &mut a, true);
                scores_avx512(&x, &g, &mut b, true);
            }
            for r in 0..m {
                for j in 0..=r {
                    let (u, v) = (a[r * gp + j], b[r * gp + j]);
                    assert_eq!(u.to_bits(), v.to_bits(), "lower {m} {dim} {r} {j}");
                }
            }
            // Half panels.
            let h = HalfPanels::new(&c, dim);
            let (mut a, mut b) = (vec![f32::NAN; m * np], vec![f32::NAN; m * np]);
            // SAFETY: as above.
            unsafe {
                scores_half_avx2(&x, &h, &mut a);
                scores_half_avx512(&x, &h, &mut b);
            }
            for (i, (u, v)) in a.iter().zip(&b).enumerate() {
                assert_eq!(u.to_bits(), v.to_bits(), "half {m} {n} {dim} {i}");
            }
        }
    }

    #[test]
    fn tiles_match_scalar_dots() {
        let mut s = 1u64;
        let mut next = || {
            s = s
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            ((s >> 40) as f32 / (1u64 << 24) as f32) - 0.5
        };
        for &(m, n, dim) in &[(1, 1, 1), (7, 17, 5), (13, 40, 33), (6, 16, 8)] {
            let x: Vec<f32> = (0..m * dim).map(|_| next()).collect();
            let c: Vec<f32> = (0..n * dim).map(|_| next()).collect();
            let p = Panels::new(&c, dim);
            let mut out = vec![f32::NAN; m * p.n_padded()];
            scores(&x, &p, &mut out);
            for r in 0..m {
                for j in 0..p.n_padded() {
                    let want = if j < n {
                        dot(&x[r * dim..(r + 1) * dim], &c[j * dim..(j + 1) * dim])
                    } else {
                        0.0
                    };
                    assert!(
                        (out[r * p.n_padded() + j] - want).abs() < 1e-5,
                        "{m} {n} {dim} {r} {j}"
                    );
                }
            }
        }
    }
}

/// Eigen-decomposition of the symmetric `n x n` matrix `a` (row-major, f64): eigenvalues in
/// descending order and the matching unit eigenvectors as the rows of the returned `n x n`
/// matrix. Householder reduction to tridiagonal form, then the implicit QL algorithm with
/// shifts (EISPACK's `tred2` / `tql2`, as in JAMA's symmetric eigensolver: Bowdler, Martin,
/// Reinsch and Wilkinson, Numer. Math. 11, 1968), O(n^3): about 0.1 s at n = 384. Only the lower
/// triangle of `a` is read. Non-finite input gives non-finite output (callers check).
pub fn sym_eigen(a: &[f64], n: usize) -> (Vec<f64>, Vec<f64>) {
    assert_eq!(a.len(), n * n, "sym_eigen: a must be n x n");
    if n == 0 {
        return (Vec::new(), Vec::new());
    }
    // v[i * n + j] = V[i][j]; the lower triangle mirrored.
    let mut v = vec![0f64; n * n];
    for i in 0..n {
        for j in 0..=i {
            v[i * n + j] = a[i * n + j];
            v[j * n + i] = a[i * n + j];
        }
    }
    let mut d = vec![0f64; n];
    let mut e = vec![0f64; n];
    tred2(&mut v, &mut d, &mut e, n);
    tql2(&mut v, &mut d, &mut e, n);
    // Columns of V are the eigenvectors: sort by eigenvalue descending, emit as rows.
    let mut order: Vec<usize> = (0..n).collect();
    order.sort_by(|&x, &y| d[y].total_cmp(&d[x]));
    let vals = order.iter().map(|&i| d[i]).collect();
    let mut vecs = vec![0f64; n * n];
    for (r, &i) in order.iter().enumerate() {
        for k in 0..n {
            vecs[r * n + k] = v[k * n + i];
        }
    }
    (vals, vecs)
}

/// Householder tridiagonalisation (`tred2`): `v` becomes the accumulated transformation, `d`
/// the diagonal and `e` the sub-diagonal (in `e[1..]`).
fn tred2(v: &mut [f64], d: &mut [f64], e: &mut [f64], n: usize) {
    for j in 0..n {
        d[j] = v[(n - 1) * n + j];
    }
    for i in (1..n).rev() {
        let mut scale = 0f64;
        let mut h = 0f64;
        for dk in d.iter().take(i) {
            scale += dk.abs();
        }
        if scale == 0.0 {
            e[i] = d[i - 1];
            for j in 0..i {
                d[j] = v[(i - 1) * n + j];
                v[i * n + j] = 0.0;
                v[j * n + i] = 0.0;
            }
        } else {
            for dk in d.iter_mut().take(i) {
                *dk /= scale;
                h += *dk * *dk;
            }
            let mut f = d[i - 1];
            let mut g = h.sqrt();
            if f > 0.0 {
                g = -g;
            }
            e[i] = scale * g;
            h -= f * g;
            d[i - 1] = f - g;
            for ej in e.iter_mut().take(i) {
                *ej = 0.0;
            }
            for j in 0..i {
                f = d[j];
                v[j * n + i] = f;
                g = e[j] + v[j * n + j] * f;
                for k in j + 1..i {
                    g += v[k * n + j] * d[k];
                    e[k] += v[k * n + j] * f;
                }
                e[j] = g;
            }
            f = 0.0;
            for j in 0..i {
                e[j] /= h;
                f += e[j] * d[j];
            }
            let hh = f / (h + h);
            for j in 0..i {
                e[j] -= hh * d[j];
            }
            for j in 0..i {
                f = d[j];
                g = e[j];
                for k in j..i {
                    v[k * n + j] -= f * e[k] + g * d[k];
                }
                d[j] = v[(i - 1) * n + j];
                v[i * n + j] = 0.0;
            }
        }
        d[i] = h;
    }
    for i in 0..n - 1 {
        v[(n - 1) * n + i] = v[i * n + i];
        v[i * n + i] = 1.0;
        let h = d[i + 1];
        if h != 0.0 {
            for k in 0..=i {
                d[k] = v[k * n + i + 1] / h;
            }
            for j in 0..=i {
                let mut g = 0f64;
                for k in 0..=i {
                    g += v[k * n + i + 1] * v[k * n + j];
                }
                for k in 0..=i {
                    v[k * n + j] -= g * d[k];
                }
            }
        }
        for k in 0..=i {
            v[k * n + i + 1] = 0.0;
        }
    }
    for j in 0..n {
        d[j] = v[(n - 1) * n + j];
        v[(n - 1) * n + j] = 0.0;
    }
    v[(n - 1) * n + n - 1] = 1.0;
    e[0] = 0.0;
}

/// Implicit QL with shifts on the tridiagonal matrix (`tql2`): `d` becomes the eigenvalues and
/// the columns of `v` the eigenvectors.
fn tql2(v: &mut [f64], d: &mut [f64], e: &mut [f64], n: usize) {
    for i in 1..n {
        e[i - 1] = e[i];
    }
    e[n - 1] = 0.0;
    let mut f = 0f64;
    let mut tst1 = 0f64;
    let eps = f64::EPSILON;
    for l in 0..n {
        tst1 = tst1.max(d[l].abs() + e[l].abs());
        let mut m = l;
        while m < n - 1 && e[m].abs() > eps * tst1 {
            m += 1;
        }
        if m > l {
            // Bounded: converges in a few iterations for finite input.
            for _ in 0..64 {
                let g = d[l];
                let mut p = (d[l + 1] - g) / (2.0 * e[l]);
                let mut r = p.hypot(1.0);
                if p < 0.0 {
                    r = -r;
                }
                d[l] = e[l] / (p + r);
                d[l + 1] = e[l] * (p + r);
                let dl1 = d[l + 1];
                let mut h = g - d[l];
                for di in d.iter_mut().skip(l + 2) {
                    *di -= h;
                }
                f += h;
                p = d[m];
                let (mut c, mut c2, mut c3) = (1f64, 1f64, 1f64);
                let el1 = e[l + 1];
                let (mut s, mut s2) = (0f64, 0f64);
                for i in (l..m).rev() {
                    c3 = c2;
                    c2 = c;
                    s2 = s;
                    let g = c * e[i];
                    h = c * p;
                    r = p.hypot(e[i]);
                    e[i + 1] = s * r;
                    s = e[i] / r;
                    c = p / r;
                    p = c * d[i] - s * g;
                    d[i + 1] = h + s * (c * g + s * d[i]);
                    for k in 0..n {
                        let hk = v[k * n + i + 1];
                        v[k * n + i + 1] = s * v[k * n + i] + c * hk;
                        v[k * n + i] = c * v[k * n + i] - s * hk;
                    }
                }
                p = -s * s2 * c3 * el1 * e[l] / dl1;
                e[l] = s * p;
                d[l] = c * p;
                if e[l].abs() <= eps * tst1 || !e[l].is_finite() {
                    break;
                }
            }
        }
        d[l] += f;
        e[l] = 0.0;
    }
}

#[cfg(test)]
mod eigen_tests {
    use super::sym_eigen;
    use crate::compressed::kmeans::Rng;

    /// A V^T = V^T diag(w), V orthonormal, eigenvalues descending, for random symmetric
    /// matrices (Gram matrices, so with a spread of eigenvalues, and ones with repeats).
    #[test]
    fn sym_eigen_decomposes() {
        let mut rng = Rng::new(3);
        for &n in &[1usize, 2, 3, 7, 32, 128] {
            let m = n + 5;
            let x: Vec<f64> = (0..m * n)
                .map(|_| rng.below(2001) as f64 / 1000.0 - 1.0)
                .collect();
            let mut a = vec![0f64; n * n];
            for i in 0..n {
                for j in 0..n {
                    a[i * n + j] = (0..m).map(|r| x[r * n + i] * x[r * n + j]).sum();
                }
            }
            // A repeated eigenvalue too: the identity block added on the diagonal only.
            if n == 7 {
                a.iter_mut().for_each(|v| *v = 0.0);
                for i in 0..n {
                    a[i * n + i] = if i < 3 { 2.0 } else { 1.0 };
                }
            }
            let (w, v) = sym_eigen(&a, n);
            assert!(w.windows(2).all(|p| p[0] >= p[1]), "descending, n = {n}");
            let scale = w[0].abs().max(1.0);
            for r in 0..n {
                for s in 0..n {
                    let dot: f64 = (0..n).map(|k| v[r * n + k] * v[s * n + k]).sum();
                    let want = if r == s { 1.0 } else { 0.0 };
                    assert!((dot - want).abs() < 1e-9, "orthonormal, n = {n}");
                }
                for i in 0..n {
                    let av: f64 = (0..n).map(|k| a[i * n + k] * v[r * n + k]).sum();
                    assert!(
                        (av - w[r] * v[r * n + i]).abs() < 1e-9 * scale,
                        "A v = w v, n = {n}"
                    );
                }
            }
        }
    }
}
