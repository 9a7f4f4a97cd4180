//! Training a codec: two-level k-means for the coarse centroids, then product-quantiser
//! codebooks on the residuals (see [`super`] for the algorithm).

use rayon::prelude::*;

use super::*;
use crate::compressed::kmeans::{kmeans, kmeans_sampled, Rng, MAX_POINTS_PER_CENTROID};
use crate::error::{LatixError, Result};

impl Codec {
    /// Trains a codec on `x` (`n * dim` f32, row-major; the caller samples) for an index expected
    /// to hold about `n_tokens_hint` tokens (sets the default K). Runs in latix's pool.
    pub fn train(
        x: &[f32],
        dim: usize,
        n_tokens_hint: usize,
        params: &CodecParams,
        n_threads: Option<usize>,
    ) -> Result<Codec> {
        if dim == 0 || !x.len().is_multiple_of(dim) {
            return Err(LatixError::invalid(format!("training vectors must be an (n, dim) array with dim > 0, got {} values for dim {dim}", x.len())));
        }
        crate::maxsim::check_finite(crate::maxsim::DocVectors::F32(x), "training vectors", dim)?;
        let n = x.len() / dim;
        if n < MIN_TRAIN_TOKENS {
            return Err(LatixError::invalid(format!(
                "training the codec needs at least {MIN_TRAIN_TOKENS} token vectors, got {n}"
            )));
        }
        let k = params
            .n_centroids
            .unwrap_or_else(|| default_n_centroids(n_tokens_hint.max(n)).min(n / 4));
        if k < 1 || k > n || k > (1 << 24) {
            return Err(LatixError::invalid(format!("n_centroids must be in 1..={} (the number of training vectors, at most 2^24), got {k}", n.min(1 << 24))));
        }
        let default_bytes = if dim >= 256 { dim / 16 } else { dim / 8 }.max(1);
        let bytes = params.bytes_per_token.unwrap_or(default_bytes);
        let m = bytes * 2;
        if bytes == 0 || m > dim || m > 256 {
            return Err(LatixError::invalid(format!(
                "bytes_per_token must be in 1..={} (2 * bytes_per_token subspaces of at least one of the {dim} dimensions, at most 128 bytes), got {bytes}",
                (dim / 2).min(128)
            )));
        }
        let iters = params.kmeans_iters.unwrap_or(10);
        if iters == 0 || iters > 1000 {
            return Err(LatixError::invalid(format!(
                "kmeans_iters must be in 1..=1000, got {iters}"
            )));
        }
        let seed = params.seed;
        crate::parallel::install(n_threads, || Self::train_inner(x, dim, k, m, iters, seed))
    }

    fn train_inner(x: &[f32], dim: usize, k: usize, m: usize, iters: usize, seed: u64) -> Codec {
        let n = x.len() / dim;
        let mut rng = Rng::new(seed);
        // Level 1: G top clusters.
        let g = ((k as f64).sqrt().round() as usize).clamp(1, k);
        let top = kmeans_sampled(x, dim, g, iters, rng.next_u64(), MAX_POINTS_PER_CENTROID);
        let asg = crate::compressed::kmeans::assign(x, dim, &top);
        let mut members: Vec<Vec<u32>> = vec![Vec::new(); g];
        for (i, &(c, _)) in asg.iter().enumerate() {
            members[c as usize].push(i as u32);
        }
        // Share of the K leaves per top cluster: proportional to size (largest remainder), at least
        // one for a non-empty cluster, never more than its points.
        let mut share: Vec<usize> = members.iter().map(|mm| (k * mm.len()) / n).collect();
        for (s, mm) in share.iter_mut().zip(&members) {
            *s = (*s).clamp(usize::from(!mm.is_empty()), mm.len());
        }
        let mut total: usize = share.iter().sum();
        let mut order: Vec<usize> = (0..g).collect();
        order.sort_by(|&a, &b| {
            let ra = members[a].len() as f64 / (share[a] as f64 + 1.0);
            let rb = members[b].len() as f64 / (share[b] as f64 + 1.0);
            rb.total_cmp(&ra).then(a.cmp(&b))
        });
        let mut oi = 0;
        while total < k && !order.is_empty() {
            let gi = order[oi % order.len()];
            if share[gi] < members[gi].len() {
                share[gi] += 1;
                total += 1;
            }
            oi += 1;
            if oi > 4 * k + g {
                break;
            }
        }
        while total > k {
            let gi = (0..g).max_by_key(|&i| share[i]).unwrap_or(0);
            share[gi] -= 1;
            total -= 1;
        }
        let seeds: Vec<u64> = (0..g).map(|_| rng.next_u64()).collect();
        let leaves: Vec<Vec<f32>> = (0..g)
            .into_par_iter()
            .map(|gi| {
                if share[gi] == 0 {
                    return Vec::new();
                }
                let mut pts = Vec::with_capacity(members[gi].len() * dim);
                for &i in &members[gi] {
                    pts.extend_from_slice(&x[i as usize * dim..(i as usize + 1) * dim]);
                }
                kmeans_sampled(
                    &pts,
                    dim,
                    share[gi],
                    iters,
                    seeds[gi],
                    MAX_POINTS_PER_CENTROID,
                )
            })
            .collect();
        let mut group_off = vec![0u32];
        let mut centroids = Vec::with_capacity(k * dim);
        let mut kept_top = Vec::new();
        for (gi, l) in leaves.into_iter().enumerate() {
            if l.is_empty() {
                continue;
            }
            centroids.extend_from_slice(&l);
            kept_top.extend_from_slice(&top[gi * dim..(gi + 1) * dim]);
            group_off.push((centroids.len() / dim) as u32);
        }
        round_f16(&mut centroids);
        // PQ codebooks on residuals of (a sample of) the training vectors.
        let mut codec = Codec::from_parts(
            dim,
            m,
            ANISO_ETA,
            group_off,
            kept_top,
            centroids,
            vec![0.0; KSUB * dim],
        );
        let n_pq = n.min(65536);
        let idx = rng.sample_indices(n, n_pq);
        let mut sample = Vec::with_capacity(n_pq * dim);
        for &i in &idx {
            sample.extend_from_slice(&x[i * dim..(i + 1) * dim]);
        }
        let cids = codec.assign(&sample);
        let mut res = sample;
        for (row, &c) in res.chunks_exact_mut(dim).zip(&cids) {
            for (v, cv) in row
                .iter_mut()
                .zip(&codec.centroids[c as usize * dim..(c as usize + 1) * dim])
            {
                *v -= cv;
            }
        }
        let sub_seeds: Vec<u64> = (0..m).map(|_| rng.next_u64()).collect();
        let so = codec.sub_off.clone();
        let books: Vec<Vec<f32>> = (0..m)
            .into_par_iter()
            .map(|s| {
                let (a, b) = (so[s], so[s + 1]);
                let mut sub = Vec::with_capacity(n_pq * (b - a));
                for row in res.chunks_exact(dim) {
                    sub.extend_from_slice(&row[a..b]);
                }
                kmeans(&sub, b - a, KSUB, iters.max(16), sub_seeds[s])
            })
            .collect();
        codec.codebooks = books.concat();
        codec.codewords_t = transpose_codebooks(&codec.codebooks, &codec.sub_off);
        codec
    }
}
