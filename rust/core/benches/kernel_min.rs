//! Minimum-of-N timing of the MaxSim kernels in thread CPU time (robust to a noisy shared machine
//! where the process is descheduled): prints GFLOP/s of the best run for each kernel, dim,
//! storage and working-set size.
//! Run: `cargo bench -p latix-core --bench kernel_min`.

use half::f16;
use latix_core::maxsim::{DocVectors, Kernel, PreparedQuery};
use rand::rngs::StdRng;
use rand::{RngExt, SeedableRng};

fn normalised(rng: &mut StdRng, n: usize, dim: usize) -> Vec<f32> {
    let mut v: Vec<f32> = (0..n * dim)
        .map(|_| rng.random_range(-1.0f32..1.0))
        .collect();
    for row in v.chunks_exact_mut(dim) {
        let norm = row.iter().map(|x| x * x).sum::<f32>().sqrt();
        row.iter_mut().for_each(|x| *x /= norm);
    }
    v
}

/// CPU time of the calling thread in seconds (excludes time spent descheduled).
fn thread_cpu_time() -> f64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: `ts` is a valid timespec to write to.
    unsafe { libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &mut ts) };
    ts.tv_sec as f64 + ts.tv_nsec as f64 * 1e-9
}

fn main() {
    let mut rng = StdRng::seed_from_u64(42);
    let nq = 32usize;
    let kernels: Vec<Kernel> = Kernel::available()
        .into_iter()
        .filter(|&k| k != Kernel::Scalar)
        .collect();
    for dim in [128usize, 384] {
        for n_docs in [40usize, 2000] {
            let mut offsets = vec![0u64];
            for _ in 0..n_docs {
                let len = rng.random_range(30..=200u64);
                offsets.push(offsets[offsets.len() - 1] + len);
            }
            let n_tok = offsets[n_docs] as usize;
            let query = normalised(&mut rng, nq, dim);
            let docs32 = normalised(&mut rng, n_tok, dim);
            let docs16: Vec<f16> = docs32.iter().map(|&x| f16::from_f32(x)).collect();
            let flops = (2 * nq * n_tok * dim) as f64;
            let reps = (4e9 / flops).clamp(5.0, 200.0) as usize;
            for &k in &kernels {
                let p = PreparedQuery::with_kernel(&query, dim, k).expect("kernel");
                let mut out = vec![0.0f32; n_docs];
                for (name, docs) in [
                    ("f32", DocVectors::F32(&docs32)),
                    ("f16", DocVectors::F16(&docs16)),
                ] {
                    let mut best = f64::INFINITY;
                    for _ in 0..reps {
                        let t = thread_cpu_time();
                        p.score_docs(docs, &offsets, &mut out);
                        best = best.min(thread_cpu_time() - t);
                    }
                    println!(
                        "d={dim:4} docs={n_docs:5} ({:6.1} MB f32) {:9} {name}: {:6.1} GFLOP/s",
                        (n_tok * dim * 4) as f64 / 1e6,
                        k.name(),
                        flops / best / 1e9
                    );
                }
            }
        }
    }
}
