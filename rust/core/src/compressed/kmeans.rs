//! Seeded, multithreaded Lloyd k-means (Lloyd 1982) with random-sample initialisation, used to
//! train the coarse centroids and the product-quantisation codebooks. Assignment uses the packed
//! dot-product tiles of [`super::linalg`]; empty clusters are re-seeded from the points farthest
//! from their centroid (as FAISS does, to avoid wasting codewords). Deterministic for a given seed
//! and input, independent of the number of threads (partial sums are reduced in a fixed order).

use rayon::prelude::*;

use super::linalg::{argmax_rows, Panels};

/// SplitMix64 (Steele et al. 2014): a tiny seeded generator, enough for sampling.
#[derive(Clone, Debug)]
pub struct Rng(u64);

impl Rng {
    /// A generator for `seed`.
    pub fn new(seed: u64) -> Self {
        Rng(seed ^ 0x9E37_79B9_7F4A_7C15)
    }

    /// Next 64 random bits.
    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// Uniform integer in `0..n` (n > 0).
    pub fn below(&mut self, n: usize) -> usize {
        ((self.next_u64() as u128 * n as u128) >> 64) as usize
    }

    /// `k` distinct indices of `0..n` in random order (k <= n), by a partial Fisher-Yates shuffle.
    pub fn sample_indices(&mut self, n: usize, k: usize) -> Vec<usize> {
        if k * 4 >= n {
            let mut all: Vec<usize> = (0..n).collect();
            for i in 0..k {
                let j = i + self.below(n - i);
                all.swap(i, j);
            }
            all.truncate(k);
            all
        } else {
            let mut seen = std::collections::HashSet::with_capacity(k * 2);
            let mut out = Vec::with_capacity(k);
            while out.len() < k {
                let i = self.below(n);
                if seen.insert(i) {
                    out.push(i);
                }
            }
            out
        }
    }
}

/// Half squared norms of the rows of `c`.
pub fn half_norms(c: &[f32], dim: usize) -> Vec<f32> {
    c.chunks_exact(dim)
        .map(|r| 0.5 * r.iter().map(|v| v * v).sum::<f32>())
        .collect()
}

/// Nearest centroid of every row of `x`, in parallel in the current rayon pool.
pub fn assign(x: &[f32], dim: usize, centroids: &[f32]) -> Vec<(u32, f32)> {
    let panels = Panels::new(centroids, dim);
    let hn = half_norms(centroids, dim);
    let n = x.len() / dim;
    let mut out = vec![(0u32, 0.0f32); n];
    const CHUNK: usize = 256;
    out.par_chunks_mut(CHUNK)
        .zip(x.par_chunks(CHUNK * dim))
        .for_each(|(o, xs)| argmax_rows(xs, &panels, &hn, o));
    out
}

/// Squared Euclidean distance with 8 independent partial sums, so it vectorises (a single running
/// f32 sum cannot be reordered by the compiler).
#[inline]
pub fn sqdist(a: &[f32], b: &[f32]) -> f32 {
    let mut acc = [0.0f32; 8];
    let (ca, cb) = (a.chunks_exact(8), b.chunks_exact(8));
    let tail: f32 = ca
        .remainder()
        .iter()
        .zip(cb.remainder())
        .map(|(x, y)| (x - y) * (x - y))
        .sum();
    for (x, y) in ca.zip(cb) {
        for i in 0..8 {
            let d = x[i] - y[i];
            acc[i] += d * d;
        }
    }
    acc.iter().sum::<f32>() + tail
}

/// k-means++ seeding (Arthur & Vassilvitskii, SODA 2007): each new centroid is a point drawn with
/// probability proportional to its squared distance to the nearest centroid chosen so far.
fn kmeans_pp_init(x: &[f32], dim: usize, k: usize, rng: &mut Rng) -> Vec<f32> {
    let n = x.len() / dim;
    let mut c: Vec<f32> = Vec::with_capacity(k * dim);
    let first = rng.below(n);
    c.extend_from_slice(&x[first * dim..(first + 1) * dim]);
    let mut d2 = vec![f64::INFINITY; n];
    for _ in 1..k {
        let last = c[c.len() - dim..].to_vec();
        d2.par_chunks_mut(4096)
            .zip(x.par_chunks(4096 * dim))
            .for_each(|(ds, xs)| {
                for (dv, row) in ds.iter_mut().zip(xs.chunks_exact(dim)) {
                    *dv = dv.min(sqdist(row, &last) as f64);
                }
            });
        let total: f64 = d2.iter().sum();
        let pick = if total > 0.0 {
            let mut r = (rng.next_u64() >> 11) as f64 / (1u64 << 53) as f64 * total;
            let mut idx = n - 1;
            for (i, &dv) in d2.iter().enumerate() {
                r -= dv;
                if r < 0.0 {
                    idx = i;
                    break;
                }
            }
            idx
        } else {
            rng.below(n)
        };
        c.extend_from_slice(&x[pick * dim..(pick + 1) * dim]);
    }
    c
}

/// Training points per centroid beyond which [`kmeans_sampled`] subsamples (the FAISS default:
/// more points barely move the centroids but cost proportionally more).
pub const MAX_POINTS_PER_CENTROID: usize = 256;

/// Points per centroid that k-means++ seeding looks at (a seeded subsample beyond that).
pub const INIT_POINTS_PER_CENTROID: usize = 32;

/// [`kmeans`] on a seeded uniform subsample of at most `k * max_points_per_centroid` rows of `x`.
pub fn kmeans_sampled(
    x: &[f32],
    dim: usize,
    k: usize,
    iters: usize,
    seed: u64,
    max_points_per_centroid: usize,
) -> Vec<f32> {
    let n = x.len() / dim;
    let cap = k.saturating_mul(max_points_per_centroid.max(1));
    if n <= cap {
        return kmeans(x, dim, k, iters, seed);
    }
    let mut rng = Rng::new(seed ^ 0x5A5A_5A5A_5A5A_5A5A);
    let mut idx = rng.sample_indices(n, cap);
    // Gather in row order, for sequential reads.
    idx.sort_unstable();
    let mut sub = Vec::with_capacity(cap * dim);
    for &i in &idx {
        sub.extend_from_slice(&x[i * dim..(i + 1) * dim]);
    }
    kmeans(&sub, dim, k, iters, seed)
}

/// Trains `k` centroids on `x` (`n * dim`, row-major) with `iters` Lloyd iterations.
/// Requires `n >= k >= 1`; runs in the current rayon pool.
pub fn kmeans(x: &[f32], dim: usize, k: usize, iters: usize, seed: u64) -> Vec<f32> {
    let n = x.len() / dim;
    assert!(k >= 1 && n >= k, "kmeans needs n >= k >= 1");
    let mut rng = Rng::new(seed);
    // k-means++ costs k passes over its input: seed from a subsample of INIT_POINTS_PER_CENTROID
    // points per centroid (enough to place seeds; Lloyd then uses every point).
    let mut c = if n > k * INIT_POINTS_PER_CENTROID {
        let mut idx = rng.sample_indices(n, k * INIT_POINTS_PER_CENTROID);
        idx.sort_unstable();
        let mut sub = Vec::with_capacity(idx.len() * dim);
        for &i in &idx {
            sub.extend_from_slice(&x[i * dim..(i + 1) * dim]);
        }
        kmeans_pp_init(&sub, dim, k, &mut rng)
    } else {
        kmeans_pp_init(x, dim, k, &mut rng)
    };
    for _ in 0..iters {
        let a = assign(x, dim, &c);
        // Partial sums per chunk, reduced in chunk order so the result does not depend on threads.
        const CHUNK: usize = 8192;
        let partials: Vec<(Vec<f64>, Vec<u32>)> = x
            .par_chunks(CHUNK * dim)
            .zip(a.par_chunks(CHUNK))
            .map(|(xs, asg)| {
                let mut s = vec![0.0f64; k * dim];
                let mut cnt = vec![0u32; k];
                for (row, &(ci, _)) in xs.chunks_exact(dim).zip(asg) {
                    let ci = ci as usize;
                    cnt[ci] += 1;
                    for (acc, &v) in s[ci * dim..(ci + 1) * dim].iter_mut().zip(row) {
                        *acc += v as f64;
                    }
                }
                (s, cnt)
            })
            .collect();
        let mut sums = vec![0.0f64; k * dim];
        let mut counts = vec![0u32; k];
        for (s, cnt) in partials {
            for (a, b) in sums.iter_mut().zip(&s) {
                *a += b;
            }
            for (a, b) in counts.iter_mut().zip(&cnt) {
                *a += b;
            }
        }
        // Points ordered by how badly they are served, for re-seeding empty clusters.
        let empty: Vec<usize> = (0..k).filter(|&i| counts[i] == 0).collect();
        let mut worst: Vec<usize> = Vec::new();
        if !empty.is_empty() {
            // 0.5 |x|^2 - (<x,c> - 0.5 |c|^2) = half the squared distance to the assigned centroid.
            let mut d: Vec<(f32, usize)> = a
                .iter()
                .enumerate()
                .map(|(i, &(_, v))| {
                    let xn: f32 =
                        0.5 * x[i * dim..(i + 1) * dim].iter().map(|t| t * t).sum::<f32>();
                    (xn - v, i)
                })
                .collect();
            d.sort_by(|p, q| q.0.total_cmp(&p.0).then(p.1.cmp(&q.1)));
            worst = d.into_iter().take(empty.len()).map(|(_, i)| i).collect();
        }
        for ci in 0..k {
            if counts[ci] > 0 {
                let inv = 1.0 / counts[ci] as f64;
                for j in 0..dim {
                    c[ci * dim + j] = (sums[ci * dim + j] * inv) as f32;
                }
            }
        }
        for (&ci, &pi) in empty.iter().zip(&worst) {
            c[ci * dim..(ci + 1) * dim].copy_from_slice(&x[pi * dim..(pi + 1) * dim]);
        }
    }
    c
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn recovers_separated_clusters() {
        let dim = 4;
        let centers = [
            [5.0, 0.0, 0.0, 0.0],
            [0.0, 5.0, 0.0, 0.0],
            [0.0, 0.0, 5.0, 0.0],
        ];
        let mut rng = Rng::new(3);
        let mut x = Vec::new();
        for i in 0..300 {
            for &cv in &centers[i % 3] {
                let noise = (rng.below(1000) as f32 / 1000.0 - 0.5) * 0.2;
                x.push(cv + noise);
            }
        }
        let c = crate::parallel::install(Some(2), || kmeans(&x, dim, 3, 10, 7)).unwrap();
        for ctr in centers {
            let best = c
                .chunks_exact(dim)
                .map(|r| {
                    r.iter()
                        .zip(&ctr)
                        .map(|(a, b)| (a - b).powi(2))
                        .sum::<f32>()
                })
                .fold(f32::INFINITY, f32::min);
            assert!(best < 0.01, "center {ctr:?} not found: {c:?}");
        }
        let c1 = crate::parallel::install(Some(1), || kmeans(&x, dim, 3, 10, 7)).unwrap();
        assert_eq!(c, c1, "result must not depend on the thread count");
    }
}
