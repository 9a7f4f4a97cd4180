//! The one CPU detection of latix: which instruction-set [`Level`] every kernel runs at (MaxSim,
//! fastscan, linalg, candidate generation, refinement, fidelity scoring).
//!
//! The level is chosen once per process ([`level`]): the fastest the CPU can run
//! ([`Level::fastest`]), unless the environment variable `LATIX_KERNEL` names another (`scalar`,
//! `portable`, `avx2`, `avx512`; case and surrounding blanks ignored), read on first use. A name
//! this CPU cannot run, or an unknown one, falls back to the detected level (one warning on
//! stderr says so): a process started with a wrong setting still runs, on the fastest correct
//! kernels. [`set_level`] changes the level at run time for tests and benchmarks and refuses a
//! level the CPU cannot run with an error.
//!
//! What a level means for each kernel:
//! - MaxSim ([`crate::maxsim`]): its own kernel per level (the scalar loops are the oracle).
//! - The other kernels have an AVX2 (+FMA, +F16C) path and a portable one (which is their
//!   oracle): [`avx2`] is true at [`Level::Avx2`] and above. `Scalar` and `Portable` both run
//!   the portable code; `Avx512` runs their AVX2 path (every AVX-512 CPU has AVX2, FMA, F16C),
//!   except the dense tiles of centroid scoring and k-means ([`crate::compressed::linalg`]),
//!   which have an AVX-512F path ([`avx512`]), and the fast-scan block kernel of refinement and
//!   the tiers, which has an AVX-512BW one ([`avx512bw`]): both give the AVX2 path's results
//!   bit for bit.
//!
//! A `#[target_feature(enable = "...")]` function is only ever called behind [`avx2`] or a
//! [`crate::maxsim::PreparedQuery`] of a level whose [`Level::is_available`] checked every
//! feature it enables (AVX2 *and* FMA *and* F16C: a CPU may have AVX2 without FMA, and calling an
//! `avx2,fma` kernel there is undefined behaviour). The selected level is one atomic load.

use std::sync::atomic::{AtomicU8, Ordering};

use crate::error::{LatixError, Result};

/// An instruction-set level, slowest first (`Ord` follows that order).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
#[repr(u8)]
pub enum Level {
    /// Plain loops; the reference every other kernel is tested against.
    Scalar,
    /// Portable Rust that LLVM auto-vectorises (NEON on aarch64, SSE2 on x86-64).
    Portable,
    /// x86-64 AVX2 + FMA, F16C for half-precision data.
    Avx2,
    /// x86-64 AVX-512F for MaxSim and the dense tiles of centroid scoring, AVX2 for the other
    /// kernels.
    Avx512,
}

impl Level {
    /// Every level, slowest first.
    pub const ALL: [Level; 4] = [Level::Scalar, Level::Portable, Level::Avx2, Level::Avx512];

    /// Short name (`"scalar"`, `"portable"`, `"avx2"`, `"avx512"`), as `LATIX_KERNEL` takes it.
    pub fn name(self) -> &'static str {
        match self {
            Level::Scalar => "scalar",
            Level::Portable => "portable",
            Level::Avx2 => "avx2",
            Level::Avx512 => "avx512",
        }
    }

    /// Parses a name produced by [`Level::name`] (case and surrounding blanks ignored).
    pub fn from_name(name: &str) -> Option<Level> {
        let n = name.trim().to_ascii_lowercase();
        Level::ALL.into_iter().find(|k| k.name() == n)
    }

    /// Whether this CPU can run the level (every feature its kernels enable was detected).
    pub fn is_available(self) -> bool {
        match self {
            Level::Scalar | Level::Portable => true,
            #[cfg(target_arch = "x86_64")]
            Level::Avx2 => {
                std::arch::is_x86_feature_detected!("avx2")
                    && std::arch::is_x86_feature_detected!("fma")
                    && std::arch::is_x86_feature_detected!("f16c")
            }
            // AVX2/FMA/F16C too: the NaN scan, the remainders and the other kernels use them.
            #[cfg(target_arch = "x86_64")]
            Level::Avx512 => {
                std::arch::is_x86_feature_detected!("avx512f") && Level::Avx2.is_available()
            }
            #[cfg(not(target_arch = "x86_64"))]
            Level::Avx2 | Level::Avx512 => false,
        }
    }

    /// The levels this CPU can run, slowest first.
    pub fn available() -> Vec<Level> {
        Level::ALL
            .into_iter()
            .filter(|k| k.is_available())
            .collect()
    }

    /// The level the kernels run at: [`level`] (`LATIX_KERNEL`, [`set_level`], else
    /// [`Level::fastest`]).
    #[inline]
    pub fn detect() -> Level {
        level()
    }

    /// The fastest level this CPU can run (ignores `LATIX_KERNEL` and [`set_level`]).
    pub fn fastest() -> Level {
        Level::ALL
            .into_iter()
            .rev()
            .find(|k| k.is_available())
            .unwrap_or(Level::Scalar)
    }

    #[inline]
    fn from_u8(v: u8) -> Level {
        match v {
            0 => Level::Scalar,
            1 => Level::Portable,
            2 => Level::Avx2,
            _ => Level::Avx512,
        }
    }
}

/// The selected level as `Level as u8`, or [`UNSET`] before the first [`level`].
static SELECTED: AtomicU8 = AtomicU8::new(UNSET);
const UNSET: u8 = u8::MAX;

/// The level `LATIX_KERNEL` selects on this CPU (see the module documentation), and the warning
/// to print when the variable was set to something that cannot be used.
fn from_env(var: Option<&str>) -> (Level, Option<String>) {
    let detected = Level::fastest();
    match var.map(str::trim) {
        None | Some("") => (detected, None),
        Some(v) => match Level::from_name(v) {
            Some(l) if l.is_available() => (l, None),
            Some(l) => (
                detected,
                Some(format!(
                    "latix: LATIX_KERNEL={v}: this CPU cannot run {} kernels; using {}",
                    l.name(),
                    detected.name()
                )),
            ),
            None => (
                detected,
                Some(format!(
                    "latix: LATIX_KERNEL={v} is not one of scalar, portable, avx2, avx512; \
                     using {}",
                    detected.name()
                )),
            ),
        },
    }
}

/// The level every kernel runs at in this process: `LATIX_KERNEL` or [`set_level`], else
/// [`Level::fastest`] (see the module documentation).
#[inline]
pub fn level() -> Level {
    let v = SELECTED.load(Ordering::Relaxed);
    if v != UNSET {
        return Level::from_u8(v);
    }
    init_level()
}

#[cold]
fn init_level() -> Level {
    let var = std::env::var("LATIX_KERNEL").ok();
    let (l, warn) = from_env(var.as_deref());
    // Only the first thread to get here decides (and warns); a concurrent `set_level` wins.
    match SELECTED.compare_exchange(UNSET, l as u8, Ordering::Relaxed, Ordering::Relaxed) {
        Ok(_) => {
            if let Some(w) = warn {
                eprintln!("{w}");
            }
            l
        }
        Err(cur) => Level::from_u8(cur),
    }
}

/// Makes every kernel run at `level` from now on (for tests and benchmarks; queries already
/// packed keep their kernel). Fails, changing nothing, when this CPU cannot run it.
pub fn set_level(level: Level) -> Result<()> {
    if !level.is_available() {
        return Err(LatixError::invalid(format!(
            "this CPU cannot run {} kernels (available: {})",
            level.name(),
            Level::available()
                .iter()
                .map(|l| l.name())
                .collect::<Vec<_>>()
                .join(", ")
        )));
    }
    SELECTED.store(level as u8, Ordering::Relaxed);
    Ok(())
}

/// True when the kernels that have an AVX-512F path take it (the dense tiles of
/// [`crate::compressed::linalg`]): the selected [`level`] is [`Level::Avx512`], which guarantees
/// AVX-512F on top of everything [`avx2`] guarantees.
#[inline]
pub fn avx512() -> bool {
    let v = SELECTED.load(Ordering::Relaxed);
    if v != UNSET {
        v >= Level::Avx512 as u8
    } else {
        init_level() >= Level::Avx512
    }
}

/// True when the fast-scan block kernel ([`crate::compressed::fastscan::scan_block`]) takes its
/// AVX-512BW path: [`avx512`] and AVX-512BW detected (every AVX-512 server CPU since Skylake has
/// it; the detection is cached).
#[inline]
pub fn avx512bw() -> bool {
    static BW: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    avx512()
        && *BW.get_or_init(|| {
            #[cfg(target_arch = "x86_64")]
            {
                std::arch::is_x86_feature_detected!("avx512bw")
            }
            #[cfg(not(target_arch = "x86_64"))]
            {
                false
            }
        })
}

/// True when the non-MaxSim kernels take their AVX2 path: the selected [`level`] is at least
/// [`Level::Avx2`], which guarantees AVX2, FMA and F16C.
#[inline]
pub fn avx2() -> bool {
    // Called per block by some kernels: one load and one comparison once the level is set.
    let v = SELECTED.load(Ordering::Relaxed);
    if v != UNSET {
        v >= Level::Avx2 as u8
    } else {
        init_level() >= Level::Avx2
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn env_values_select_or_fall_back_to_the_detected_level() {
        let d = Level::fastest();
        assert_eq!(from_env(None), (d, None));
        assert_eq!(from_env(Some(" ")), (d, None));
        assert_eq!(from_env(Some(" Scalar ")), (Level::Scalar, None));
        assert_eq!(from_env(Some("portable")), (Level::Portable, None));
        let (l, w) = from_env(Some("no-such-kernel"));
        assert_eq!(l, d);
        assert!(w.expect("warning").contains("not one of"));
        for l in Level::ALL {
            let (got, w) = from_env(Some(l.name()));
            if l.is_available() {
                assert_eq!((got, w), (l, None));
            } else {
                assert_eq!(got, d);
                assert!(w.expect("warning").contains("cannot run"));
            }
            assert_eq!(Level::from_name(l.name()), Some(l));
        }
        assert!(Level::fastest().is_available());
        assert!(Level::available().contains(&Level::Portable));
    }
}
