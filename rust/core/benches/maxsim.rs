//! Criterion benchmark of the MaxSim kernels on synthetic L2-normalised data: a 32-token query
//! against 500 documents of 30-200 tokens, d = 128 and 384, f32 and f16 storage, single thread.
//! Throughput is reported in elements = floating-point operations (2 * nq * n_tokens * d), so
//! criterion's "elem/s" reads as FLOP/s. Run: `cargo bench -p latix-core --bench maxsim`.

use std::hint::black_box;

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
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

fn bench(c: &mut Criterion) {
    let mut rng = StdRng::seed_from_u64(42);
    let (nq, n_docs) = (32usize, 500usize);
    for dim in [128usize, 384] {
        let mut offsets = vec![0u64];
        for _ in 0..n_docs {
            let len = rng.random_range(30..=200u64);
            offsets.push(offsets[offsets.len() - 1] + len);
        }
        let n_tok = offsets[n_docs] as usize;
        let query = normalised(&mut rng, nq, dim);
        let docs32 = normalised(&mut rng, n_tok, dim);
        let docs16: Vec<f16> = docs32.iter().map(|&x| f16::from_f32(x)).collect();
        let mut group = c.benchmark_group(format!("maxsim_d{dim}_nq{nq}"));
        group.throughput(Throughput::Elements((2 * nq * n_tok * dim) as u64));
        group.sample_size(20);
        for kernel in Kernel::available() {
            if kernel == Kernel::Scalar && dim > 128 {
                continue; // slow and only a reference
            }
            let Ok(p) = PreparedQuery::with_kernel(&query, dim, kernel) else {
                continue;
            };
            let mut out = vec![0.0f32; n_docs];
            group.bench_function(format!("{}_f32", kernel.name()), |b| {
                b.iter(|| p.score_docs(DocVectors::F32(black_box(&docs32)), &offsets, &mut out))
            });
            group.bench_function(format!("{}_f16", kernel.name()), |b| {
                b.iter(|| p.score_docs(DocVectors::F16(black_box(&docs16)), &offsets, &mut out))
            });
        }
        group.finish();
    }
}

criterion_group!(benches, bench);
criterion_main!(benches);
