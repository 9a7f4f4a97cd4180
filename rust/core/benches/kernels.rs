//! The fastscan block scan, refinement's gather of tokens out of list blocks (in both block
//! layouts, the split halves of version-5 lists against the interleaved blocks before), and a
//! whole compressed search (candidate generation, refinement from codes) under every
//! instruction-set level this CPU can run ([`simd::set_level`]), timed as the minimum over
//! repeats of thread CPU time (robust to a shared machine), each printed with its ratio to a
//! baseline measured in the same run (the scalar level; for the gather, the interleaved layout).
//! Run: `cargo bench -p latix-core --bench kernels`.

use latix_core::compressed::fastscan::{scan_block_scalar, BlockLayout, BLOCK};
use latix_core::maxsim::DocVectors;
use latix_core::simd::{self, Level};
use latix_core::{CompressedSearch, Compression, Dtype, Index};
use rand::rngs::StdRng;
use rand::{RngExt, SeedableRng};

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

/// Minimum thread CPU time of `f` over `reps` runs.
fn min_time(reps: usize, mut f: impl FnMut()) -> f64 {
    (0..reps)
        .map(|_| {
            let t = thread_cpu_time();
            f();
            thread_cpu_time() - t
        })
        .fold(f64::INFINITY, f64::min)
}

fn unit_rows(rng: &mut StdRng, n: usize, dim: usize, centres: &[f32], noise: f32) -> Vec<f32> {
    let n_c = centres.len() / dim;
    let mut out = Vec::with_capacity(n * dim);
    let c = rng.random_range(0..n_c);
    for _ in 0..n {
        let mut v: Vec<f32> = centres[c * dim..(c + 1) * dim]
            .iter()
            .map(|&x| x + noise * rng.random_range(-1.0f32..1.0))
            .collect();
        let norm = v.iter().map(|x| x * x).sum::<f32>().sqrt().max(1e-12);
        v.iter_mut().for_each(|x| *x /= norm);
        out.extend(v);
    }
    out
}

fn bench_fastscan(rng: &mut StdRng) {
    println!("fastscan scan_block: 4096 blocks of {BLOCK} tokens, min of 9 runs");
    println!(
        "{:>4} {:>9} {:>12} {:>9} {:>14}",
        "m", "level", "ns/block", "vs scalar", "halves ns/blk"
    );
    for m in [16usize, 32, 64, 96] {
        let n_blocks = 4096;
        let lut: Vec<u8> = (0..m * 16).map(|_| rng.random_range(0..=255u8)).collect();
        let blocks: Vec<u8> = (0..n_blocks * m * 16)
            .map(|_| rng.random_range(0..=255u8))
            .collect();
        let mut sink = 0u64;
        let mut out = [0u16; BLOCK];
        let scalar = min_time(9, || {
            for b in blocks.chunks_exact(m * 16) {
                scan_block_scalar(&lut, b, m, &mut out);
                sink = sink.wrapping_add(out[0] as u64);
            }
        });
        let per = |t: f64| t * 1e9 / n_blocks as f64;
        println!("{m:>4} {:>9} {:>12.1} {:>8.2}x", "scalar", per(scalar), 1.0);
        for l in Level::available() {
            simd::set_level(l).expect("available level");
            let time = |layout: BlockLayout, sink: &mut u64, out: &mut [u16; BLOCK]| {
                min_time(9, || {
                    for b in blocks.chunks_exact(m * 16) {
                        layout.scan(&lut, b, m, simd::avx2(), out);
                        *sink = sink.wrapping_add(out[0] as u64);
                    }
                })
            };
            let t = time(BlockLayout::Interleaved, &mut sink, &mut out);
            let h = time(BlockLayout::Halves, &mut sink, &mut out);
            println!(
                "{m:>4} {:>9} {:>12.1} {:>8.2}x {:>14.1}",
                l.name(),
                per(t),
                scalar / t,
                per(h)
            );
        }
        std::hint::black_box(sink);
    }
}

/// Refinement's gather: documents of 30 tokens drawn at random from a 36 MB array of list blocks
/// (M = 96, SciFact's codes: larger than the L2 cache, as lists are), gathered into one block each.
fn bench_gather(rng: &mut StdRng) {
    let m = 96;
    let bb = m * 16;
    let n_blocks = (36usize << 20) / bb;
    let codes: Vec<u8> = (0..n_blocks * bb)
        .map(|_| rng.random_range(0..=255u8))
        .collect();
    let docs: Vec<Vec<(usize, usize)>> = (0..4000)
        .map(|_| {
            (0..30)
                .map(|_| (rng.random_range(0..n_blocks), rng.random_range(0..BLOCK)))
                .collect()
        })
        .collect();
    println!(
        "\ngather: 4000 documents of 30 random tokens from {} MB of blocks (m={m}), min of 5 runs",
        codes.len() >> 20
    );
    println!(
        "{:>9} {:>12} {:>12} {:>9}",
        "level", "interleaved", "halves", "halves vs"
    );
    let mut out = vec![0u8; bb];
    let mut sink = 0u64;
    for l in Level::available() {
        simd::set_level(l).expect("available level");
        let mut time = |layout: BlockLayout| {
            min_time(5, || {
                for d in &docs {
                    layout.gather(&codes, m, d, &mut out);
                    sink = sink.wrapping_add(out[5] as u64);
                }
            })
        };
        let (a, b) = (time(BlockLayout::Interleaved), time(BlockLayout::Halves));
        let per = |t: f64| format!("{:.1} ns", t * 1e9 / (docs.len() * 30) as f64);
        println!(
            "{:>9} {:>12} {:>12} {:>8.2}x",
            l.name(),
            per(a),
            per(b),
            a / b
        );
    }
    std::hint::black_box(sink);
}

fn bench_compressed_search(rng: &mut StdRng) {
    let (dim, n_docs, nq) = (128usize, 5000usize, 40usize);
    let centres: Vec<f32> = (0..64 * dim)
        .map(|_| rng.random_range(-1.0f32..1.0))
        .collect();
    let docs: Vec<Vec<f32>> = (0..n_docs)
        .map(|_| {
            let len = rng.random_range(20..=120usize);
            unit_rows(rng, len, dim, &centres, 0.8)
        })
        .collect();
    let queries: Vec<Vec<f32>> = (0..nq)
        .map(|_| unit_rows(rng, 32, dim, &centres, 0.8))
        .collect();
    let tmp = tempfile::tempdir().expect("tmp");
    let cfg = Compression {
        n_centroids: Some(512),
        ..Compression::default()
    };
    let ix = Index::create_with(tmp.path().join("ix"), dim, Dtype::F16, Some(cfg)).expect("ix");
    let ids: Vec<String> = (0..n_docs).map(|i| format!("d{i}")).collect();
    let refs: Vec<&str> = ids.iter().map(|s| s.as_str()).collect();
    let dv: Vec<DocVectors<'_>> = docs.iter().map(|d| DocVectors::F32(d)).collect();
    ix.add(&refs, &dv, false).expect("add");
    ix.commit().expect("commit");
    println!(
        "\ncompressed search: {n_docs} documents (d={dim}, K=512), {nq} queries of 32 tokens, \
         k=10, 1 thread, min of 5 runs"
    );
    println!("{:>9} {:>12} {:>9}", "level", "us/query", "vs scalar");
    let run = || {
        for q in &queries {
            let r = ix
                .search_with(&[q], 10, Some(1), None, CompressedSearch::default())
                .expect("search");
            std::hint::black_box(r);
        }
    };
    let mut scalar = None;
    for l in Level::available() {
        simd::set_level(l).expect("available level");
        run(); // warm-up: snapshot and codec state loaded, caches filled
        let t = min_time(5, run);
        let base = *scalar.get_or_insert(t);
        println!(
            "{:>9} {:>12.1} {:>8.2}x",
            l.name(),
            t * 1e6 / nq as f64,
            base / t
        );
    }
}

fn main() {
    let mut rng = StdRng::seed_from_u64(7);
    bench_fastscan(&mut rng);
    bench_gather(&mut rng);
    bench_compressed_search(&mut rng);
    simd::set_level(Level::fastest()).expect("fastest level");
}
