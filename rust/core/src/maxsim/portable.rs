//! Portable MaxSim micro-kernel: the same register-blocked tile as the x86 kernels (see
//! `x86.rs`), written with fixed-size arrays of 8 lanes so that LLVM's SLP vectoriser turns each
//! lane group into SIMD registers of whatever the target has as baseline: NEON on aarch64 (two
//! 4-lane registers per group), SSE2 on x86-64 (used there only as a fallback and in tests).
//! No `core::arch` code, so it compiles for every target.

/// Query lanes per vector group (same packing as the AVX2 kernel).
pub const LANES: usize = 8;

/// Document tokens per tile. aarch64 has 32 SIMD registers: 6 x 2 groups x 2 NEON registers = 24
/// accumulators. x86-64 baseline (SSE2) has 16, so the tile is smaller there.
#[cfg(target_arch = "aarch64")]
pub const ROWS: usize = 6;
#[cfg(not(target_arch = "aarch64"))]
pub const ROWS: usize = 3;

#[inline(always)]
fn fma(a: f32, b: f32, c: f32) -> f32 {
    // aarch64 has a fused multiply-add instruction in its baseline; elsewhere `mul_add` could be a
    // libm call, so use a separate multiply and add.
    #[cfg(target_arch = "aarch64")]
    {
        a.mul_add(b, c)
    }
    #[cfg(not(target_arch = "aarch64"))]
    {
        a * b + c
    }
}

#[inline(always)]
fn tile<const R: usize, const C: usize>(qt: &[f32], d: &[f32], dim: usize, maxbuf: &mut [f32]) {
    let mut acc = [[[0.0f32; LANES]; C]; R];
    let qt = &qt[..dim * C * LANES];
    let d = &d[..R * dim];
    for (k, qrow) in qt.chunks_exact(C * LANES).enumerate() {
        for (r, row) in acc.iter_mut().enumerate() {
            let b = d[r * dim + k];
            for (c, a) in row.iter_mut().enumerate() {
                for l in 0..LANES {
                    a[l] = fma(b, qrow[c * LANES + l], a[l]);
                }
            }
        }
    }
    for c in 0..C {
        let mut m = acc[0][c];
        for row in acc.iter().skip(1) {
            for l in 0..LANES {
                m[l] = m[l].max(row[c][l]);
            }
        }
        let out = &mut maxbuf[c * LANES..(c + 1) * LANES];
        for l in 0..LANES {
            out[l] = out[l].max(m[l]);
        }
    }
}

fn block<const C: usize>(qt: &[f32], doc: &[f32], dim: usize, maxbuf: &mut [f32]) {
    let n_tok = doc.len() / dim;
    let full = n_tok / ROWS;
    for t in 0..full {
        tile::<ROWS, C>(qt, &doc[t * ROWS * dim..], dim, maxbuf);
    }
    let mut t = full * ROWS;
    while t < n_tok {
        tile::<1, C>(qt, &doc[t * dim..], dim, maxbuf);
        t += 1;
    }
}

/// Folds every token of `doc` (`n_tok * dim` f32) into `maxbuf` for a query block of `n_vec`
/// (1 or 2) groups of 8 lanes packed as `qt[k * n_vec * 8 + lane]`.
pub fn block_f32(qt: &[f32], n_vec: usize, doc: &[f32], dim: usize, maxbuf: &mut [f32]) {
    match n_vec {
        2 => block::<2>(qt, doc, dim, maxbuf),
        1 => block::<1>(qt, doc, dim, maxbuf),
        _ => unreachable!("portable query blocks hold 1 or 2 lane groups"),
    }
}
