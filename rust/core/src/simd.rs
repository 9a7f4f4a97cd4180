//! Run-time CPU feature detection shared by the kernels that are not MaxSim's own dispatch
//! (fastscan, compressed search, linalg): one predicate per feature *set* a kernel enables, so a
//! `#[target_feature(enable = "...")]` function is only ever called behind a guard that checked
//! every feature it enables (std caches the CPUID result: each call is an atomic load).

/// True when AVX2 is available (the fastscan block kernel and the fold step enable only it).
#[inline]
pub fn avx2() -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        std::arch::is_x86_feature_detected!("avx2")
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        false
    }
}

/// True when AVX2 and FMA are both available (kernels compiled with `enable = "avx2,fma"`; a CPU
/// may have AVX2 without FMA, and calling such a kernel there is undefined behaviour).
#[inline]
pub fn avx2_fma() -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        std::arch::is_x86_feature_detected!("avx2") && std::arch::is_x86_feature_detected!("fma")
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        false
    }
}

/// True when AVX2, FMA and F16C are all available (kernels that also convert float16).
#[inline]
pub fn avx2_fma_f16c() -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        avx2_fma() && std::arch::is_x86_feature_detected!("f16c")
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        false
    }
}
