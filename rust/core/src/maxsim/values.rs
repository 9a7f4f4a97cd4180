//! The one check of input values: NaN, infinities and values beyond [`MAX_ABS_VALUE`] are
//! refused wherever latix takes vectors (documents, queries, training and encoding input), by a
//! vectorised max-reduction over the bits (AVX2 when available), with an error naming the first
//! bad value.

use super::{DocVectors, Kernel};
use crate::error::{LatixError, Result};

/// Largest absolute value accepted in a document or a query (inclusive). With every value within
/// it, a dot product is at most `dim * 1e18 <= 6.6e22` and a MaxSim score at most that times the
/// number of query tokens: below `f32::MAX` (3.4e38) for any query shorter than 5e15 tokens, so
/// finite inputs always give finite scores. Real embeddings are many orders of magnitude smaller.
pub const MAX_ABS_VALUE: f32 = 1e9;

/// Bits of `|x|` as u32: a positive float's bits order like its value, so a bound on `|x|` is a
/// bound on these (NaN and infinities have the largest).
const F32_ABS: u32 = 0x7fff_ffff;
const F16_ABS: u16 = 0x7fff;
/// `f32::MAX` and `f16::MAX` bits: above them, a value is infinite or NaN.
const F32_FINITE_MAX: u32 = 0x7f7f_ffff;
const F16_FINITE_MAX: u16 = 0x7bff;

/// Whether any f32 value has `|x|` bits above `f32_limit` (or any f16 value is non-finite: every
/// finite f16 is below [`MAX_ABS_VALUE`]). A branch-free max-reduction, so LLVM vectorises it;
/// `#[inline(always)]` so the AVX2 wrapper in `x86.rs` gets a 256-bit version.
#[inline(always)]
pub(super) fn any_above_portable(values: DocVectors<'_>, f32_limit: u32) -> bool {
    match values {
        DocVectors::F32(v) => v.iter().fold(0, |m, x| m.max(x.to_bits() & F32_ABS)) > f32_limit,
        DocVectors::F16(v) => {
            v.iter().fold(0, |m, x| m.max(x.to_bits() & F16_ABS)) > F16_FINITE_MAX
        }
    }
}

/// [`any_above_portable`] with the fastest scan this CPU has.
pub(super) fn any_above(values: DocVectors<'_>, f32_limit: u32) -> bool {
    #[cfg(target_arch = "x86_64")]
    if matches!(Kernel::detect(), Kernel::Avx2 | Kernel::Avx512) {
        // SAFETY: both kernels are only detected on CPUs with AVX2.
        return unsafe { super::x86::any_above_avx2(values, f32_limit) };
    }
    any_above_portable(values, f32_limit)
}

/// Whether any value is NaN or infinite.
pub(super) fn any_non_finite(values: DocVectors<'_>) -> bool {
    any_above(values, F32_FINITE_MAX)
}

/// Whether any value is NaN, infinite or beyond [`MAX_ABS_VALUE`].
pub(super) fn any_invalid(values: DocVectors<'_>) -> bool {
    any_above(values, MAX_ABS_VALUE.to_bits())
}

/// The error for the first value of `values` (`(rows, dim)` row-major) that is non-finite or, with
/// `bounded`, beyond [`MAX_ABS_VALUE`] (there must be one); rows are numbered from `row0`.
pub(super) fn value_error(
    values: DocVectors<'_>,
    name: &str,
    dim: usize,
    row0: usize,
    bounded: bool,
) -> LatixError {
    let limit = if bounded { MAX_ABS_VALUE } else { f32::MAX };
    // Each value is read once: `values` may be a caller's buffer that another process changes
    // while it is scanned, and the error must name the value that failed, not a later one.
    let found = match values {
        DocVectors::F32(v) => v
            .iter()
            .copied()
            .enumerate()
            .find(|(_, x)| x.is_nan() || x.abs() > limit),
        DocVectors::F16(v) => v
            .iter()
            .map(|x| x.to_f32())
            .enumerate()
            .find(|(_, x)| !x.is_finite()),
    };
    let (pos, value) = found.unwrap_or((0, f32::NAN));
    let dim = dim.max(1);
    let what = if value.is_finite() {
        format!(
            "a value too large ({value:e}; at most {MAX_ABS_VALUE:e} in absolute value, so that \
             scores cannot overflow float32)"
        )
    } else {
        format!("a non-finite value ({value})")
    };
    LatixError::invalid(format!(
        "{name} contains {what} at row {}, column {}",
        row0 + pos / dim,
        pos % dim
    ))
}

/// Rejects NaN and infinities in `values` (`(rows, dim)` row-major), naming the argument `name`
/// and the first bad position. Vectorised: about one memory pass over the data.
pub fn check_finite(values: DocVectors<'_>, name: &str, dim: usize) -> Result<()> {
    check_finite_from(values, name, dim, 0)
}

/// [`check_finite`] with rows numbered from `row0` in the error (a piece of a larger matrix).
pub fn check_finite_from(
    values: DocVectors<'_>,
    name: &str,
    dim: usize,
    row0: usize,
) -> Result<()> {
    if any_non_finite(values) {
        return Err(value_error(values, name, dim, row0, false));
    }
    Ok(())
}

/// Rejects what latix never scores: NaN, infinities and values beyond [`MAX_ABS_VALUE`] (the
/// check on every document and query a caller passes). Vectorised like [`check_finite`].
pub fn check_values(values: DocVectors<'_>, name: &str, dim: usize) -> Result<()> {
    check_values_from(values, name, dim, 0)
}

/// [`check_values`] with rows numbered from `row0` in the error (a piece of a larger matrix).
pub fn check_values_from(
    values: DocVectors<'_>,
    name: &str,
    dim: usize,
    row0: usize,
) -> Result<()> {
    if any_invalid(values) {
        return Err(value_error(values, name, dim, row0, true));
    }
    Ok(())
}
