//! The token-vector codec: a coarse centroid plus a product-quantised residual.
//!
//! A token vector x is stored as the id of its coarse centroid c (ColBERTv2, Santhanam et al.
//! NAACL 2022, section 3.2) and the residual x - c quantised by product quantisation (Jegou et al.,
//! "Product quantization for nearest neighbor search", TPAMI 2011, with residual encoding as in
//! their IVFADC): the dimensions are split into `M` contiguous subspaces (of `dim / M` dimensions,
//! rounded: when `M` does not divide `dim` the first `dim % M` subspaces get one more dimension, so
//! any byte budget up to `dim / 2` is possible) and each sub-residual is replaced by one of 16
//! codewords, i.e. 4 bits, so a token costs `M / 2` bytes plus its centroid (implicit in the
//! inverted-list layout of [`super::ivf`]).
//!
//! Codewords can be chosen with a score-aware (anisotropic) loss instead of plain squared error
//! (opt-in, [`Codec::with_aniso_eta`]; Guo et al.,
//! "Accelerating Large-Scale Inference with Anisotropic Vector Quantization", ICML 2020): the
//! error e = r - r^ is penalised `|e|^2 + (eta - 1) <e, x/|x|>^2`, i.e. `eta` times more along the
//! token's own direction. A query token that matches x well is nearly parallel to x, so this is the
//! error that moves the max-scoring tokens MaxSim keeps; errors orthogonal to x mostly hit tokens
//! that lose the max anyway. The loss couples subspaces through `<e, x>`, so a token is encoded by
//! squared-error nearest codewords and then a few rounds of coordinate descent (one subspace at a
//! time, all 16 codewords tried, the others fixed), as in the paper. Codebooks are trained by plain
//! k-means on residuals; decoding and scoring are unchanged.
//!
//! The coarse quantiser is a two-level k-means tree: `G ~ sqrt(K)` top centroids, then each top
//! cluster's points are split into a share of the `K` leaves proportional to its size. Training and
//! assignment cost `O(G + p * K / G)` dot products per vector instead of `O(K)` (assignment probes the
//! `p` best top clusters), which keeps a 13M-token build within minutes on two cores; the leaves
//! are the coarse centroids used everywhere else. Centroids are rounded to f16 (their storage type)
//! before residuals are computed, so saved and in-memory codecs encode identically.
//!
//! Scoring never decompresses: `<q, x^> = <q, c> + sum_m <q_m, codeword_m>`, the second term read
//! from a per-query-token lookup table (see [`super::fastscan`]).

use half::f16;
use rayon::prelude::*;

use crate::compressed::kmeans::half_norms;
use crate::compressed::linalg::{argmax_rows, scores, HalfPanels, Panels};
use crate::error::{LatixError, Result};

mod format;
mod pq;
mod train;

/// Codewords per subspace (4-bit codes).
pub const KSUB: usize = 16;
const MAGIC: &[u8; 8] = b"LTXCODEC";
const VERSION: u32 = 2;
/// Default weight of the error along the token's direction relative to the orthogonal error
/// (anisotropic encoding, see the module docs). 1 = plain squared error: on SciFact eta = 4 did not
/// raise nDCG@10 (0.6835 vs 0.6843, decoded vectors, 27 B codes) and triples encoding time, so it
/// is opt-in ([`Codec::with_aniso_eta`]). Stored in the file so re-encoding is identical.
pub const ANISO_ETA: f32 = 1.0;
/// Coordinate-descent rounds of the anisotropic encoder.
const ANISO_ROUNDS: usize = 2;
/// Fewest training vectors accepted.
pub const MIN_TRAIN_TOKENS: usize = 256;
/// Top clusters probed when assigning a vector to a leaf centroid.
const ASSIGN_PROBE: usize = 4;

/// Training parameters; `None` fields get automatic values from the data size.
#[derive(Clone, Debug, Default)]
pub struct CodecParams {
    /// Number of coarse centroids K (default: [`default_n_centroids`], the power of two nearest
    /// `3 * sqrt(n_tokens)`).
    pub n_centroids: Option<usize>,
    /// Bytes of residual code per token, `M / 2` (default: `dim / 16`, i.e. 8-dim subspaces);
    /// `1..=dim / 2`.
    pub bytes_per_token: Option<usize>,
    /// Lloyd iterations (default 10).
    pub kmeans_iters: Option<usize>,
    /// Seed of every random choice.
    pub seed: u64,
}

/// Automatic number of coarse centroids for an index of `n_tokens` tokens: the power of two
/// nearest to `3 * sqrt(n_tokens)`, at most `n_tokens / 8`. A query costs `O(K)` per query token
/// to score the centroids and `O(nprobe * n_tokens / K)` to scan the probed lists; with the
/// measured unit costs (about 21 ns per centroid and 6 ns per scanned token, 384-d, AVX2) the sum
/// is smallest near `K = 2..3 * sqrt(n_tokens)` for nprobe 16..32, and the larger end also shrinks
/// the residuals the PQ codes carry (PLAID uses `16 * sqrt`, but its lists are far shorter).
/// Measured, 300 SciFact queries, codes only, 1 thread: SciFact (1.23M tokens) K 4096 / nprobe 16
/// gives nDCG@10 0.690 and recall@10 vs exact 0.761 at 2.1 ms, against 0.682 / 0.753 at 3.0 ms for
/// the former `2 * sqrt` (K 2048, nprobe 32); SciFact + 100k distractors (14M tokens) K 8192 /
/// nprobe 16: nDCG@10 0.669 at 9.7 ms (K 16384 would double the centroid scoring, ~4 ms).
pub fn default_n_centroids(n_tokens: usize) -> usize {
    let target = 3.0 * (n_tokens.max(1) as f64).sqrt();
    let p = target.log2().round().max(4.0) as u32;
    let k = 1usize << p.min(20);
    k.min((n_tokens / 8).max(16)).max(16)
}

/// A trained codec (see the module documentation).
#[derive(Clone, Debug)]
pub struct Codec {
    dim: usize,
    m: usize,
    /// Anisotropic loss weight used by the encoder.
    eta: f32,
    /// Top-level clusters: leaves of top cluster g are `group_off[g]..group_off[g+1]`.
    group_off: Vec<u32>,
    top: Vec<f32>,
    centroids: Vec<f32>,
    /// Codewords: subspace `s` holds `KSUB` rows of `sub_off[s+1] - sub_off[s]` values starting
    /// at `KSUB * sub_off[s]` (`KSUB * dim` in all).
    codebooks: Vec<f32>,
    // Derived, not serialised.
    /// The codewords dimension-major: `codewords_t[d * KSUB + j]` = dimension `d` of codeword `j`
    /// of the subspace holding `d`, so a query's lookup table is 16-wide multiply-adds.
    codewords_t: Vec<f32>,
    sub_off: Vec<usize>,
    top_panels: Panels,
    top_hn: Vec<f32>,
    group_panels: Vec<(Panels, Vec<f32>)>,
    centroid_panels: Panels,
    centroid_half_panels: HalfPanels,
}

/// Subspace boundaries: `m` contiguous ranges covering `0..dim`, the first `dim % m` one longer.
pub fn subspace_offsets(dim: usize, m: usize) -> Vec<usize> {
    let (q, r) = (dim / m, dim % m);
    let mut off = Vec::with_capacity(m + 1);
    off.push(0);
    for s in 0..m {
        off.push(off[s] + q + usize::from(s < r));
    }
    off
}

/// The codebooks dimension-major (see [`Codec::codewords_by_dim`]).
fn transpose_codebooks(codebooks: &[f32], sub_off: &[usize]) -> Vec<f32> {
    let dim = sub_off.last().copied().unwrap_or(0);
    let mut t = vec![0.0f32; KSUB * dim];
    for w in sub_off.windows(2) {
        let (a, b) = (w[0], w[1]);
        for (j, cw) in codebooks[KSUB * a..KSUB * b]
            .chunks_exact(b - a)
            .enumerate()
        {
            for (d, &v) in cw.iter().enumerate() {
                t[(a + d) * KSUB + j] = v;
            }
        }
    }
    t
}

fn round_f16(v: &mut [f32]) {
    for x in v {
        *x = f16::from_f32(*x).to_f32();
    }
}

impl Codec {
    /// Vector dimension.
    pub fn dim(&self) -> usize {
        self.dim
    }
    /// Number of PQ subspaces M.
    pub fn n_subspaces(&self) -> usize {
        self.m
    }
    /// Bytes of code per token (M / 2).
    pub fn bytes_per_token(&self) -> usize {
        self.m / 2
    }
    /// Number of coarse centroids K.
    pub fn n_centroids(&self) -> usize {
        self.centroids.len() / self.dim
    }
    /// Coarse centroids, `K * dim` row-major.
    pub fn centroids(&self) -> &[f32] {
        &self.centroids
    }
    /// Centroids packed for scoring queries.
    pub fn centroid_panels(&self) -> &Panels {
        &self.centroid_panels
    }
    /// Centroids packed as f16 (their stored precision, so scores are identical to
    /// [`Codec::centroid_panels`]) for bandwidth-bound per-query scoring.
    pub fn centroid_half_panels(&self) -> &HalfPanels {
        &self.centroid_half_panels
    }
    /// Number of top-level clusters G of the two-level coarse quantiser.
    pub fn n_groups(&self) -> usize {
        self.group_off.len() - 1
    }
    /// Top-level centroids packed for scoring (`G` rows).
    pub fn top_panels(&self) -> &Panels {
        &self.top_panels
    }
    /// Leaf centroids of top-level cluster `g`: ids `group_range(g)` (contiguous), packed for
    /// scoring in the same order.
    pub fn group(&self, g: usize) -> (std::ops::Range<usize>, &Panels) {
        (
            self.group_off[g] as usize..self.group_off[g + 1] as usize,
            &self.group_panels[g].0,
        )
    }
    /// PQ codewords, `16 * dim` values: subspace `s`'s 16 codewords (each
    /// `subspace_offsets()[s+1] - subspace_offsets()[s]` long) start at `16 * subspace_offsets()[s]`.
    pub fn codebooks(&self) -> &[f32] {
        &self.codebooks
    }
    /// The codewords dimension-major (`16 * dim` values): `[d * 16 + j]` is dimension `d` of
    /// codeword `j` of the subspace that holds dimension `d`.
    pub fn codewords_by_dim(&self) -> &[f32] {
        &self.codewords_t
    }
    /// Subspace boundaries (`M + 1` dimension offsets).
    pub fn subspace_offsets(&self) -> &[usize] {
        &self.sub_off
    }
    /// Codewords of subspace `s`: `KSUB` rows of the subspace's length.
    pub fn codebook(&self, s: usize) -> &[f32] {
        &self.codebooks[KSUB * self.sub_off[s]..KSUB * self.sub_off[s + 1]]
    }
    /// Anisotropic loss weight the encoder uses (see the module docs).
    pub fn aniso_eta(&self) -> f32 {
        self.eta
    }
    /// The same codec with another anisotropic loss weight `eta` (`1.0` = plain squared error;
    /// must be finite and positive). Only encoding changes: codes written before still decode and
    /// score the same, and the weight is saved with the codec.
    pub fn with_aniso_eta(&self, eta: f32) -> Result<Codec> {
        if !(eta.is_finite() && eta > 0.0) {
            return Err(LatixError::invalid(format!(
                "aniso_eta must be finite and positive, got {eta}"
            )));
        }
        let mut c = self.clone();
        c.eta = eta;
        Ok(c)
    }

    #[allow(clippy::too_many_arguments)]
    fn from_parts(
        dim: usize,
        m: usize,
        eta: f32,
        group_off: Vec<u32>,
        top: Vec<f32>,
        centroids: Vec<f32>,
        codebooks: Vec<f32>,
    ) -> Self {
        let top_panels = Panels::new(&top, dim);
        let top_hn = half_norms(&top, dim);
        let group_panels = group_off
            .windows(2)
            .map(|w| {
                let c = &centroids[w[0] as usize * dim..w[1] as usize * dim];
                (Panels::new(c, dim), half_norms(c, dim))
            })
            .collect();
        let centroid_panels = Panels::new(&centroids, dim);
        let centroid_half_panels = HalfPanels::new(&centroids, dim);
        let sub_off = subspace_offsets(dim, m);
        let codewords_t = transpose_codebooks(&codebooks, &sub_off);
        Codec {
            dim,
            m,
            eta,
            group_off,
            top,
            centroids,
            codebooks,
            codewords_t,
            sub_off,
            top_panels,
            top_hn,
            group_panels,
            centroid_panels,
            centroid_half_panels,
        }
    }

    /// Leaf centroid of every row of `x` (two-level search, see module docs); current pool.
    pub fn assign(&self, x: &[f32]) -> Vec<u32> {
        let dim = self.dim;
        let n = x.len() / dim;
        let mut out = vec![0u32; n];
        const CHUNK: usize = 1024;
        out.par_chunks_mut(CHUNK)
            .zip(x.par_chunks(CHUNK * dim))
            .for_each(|(o, xs)| self.assign_chunk(xs, o));
        out
    }

    fn assign_chunk(&self, xs: &[f32], out: &mut [u32]) {
        let dim = self.dim;
        let n = xs.len() / dim;
        let g = self.group_off.len() - 1;
        let p = ASSIGN_PROBE.min(g);
        let np = self.top_panels.n_padded();
        let mut ts = vec![0.0f32; n * np];
        scores(xs, &self.top_panels, &mut ts);
        let mut buckets: Vec<Vec<u32>> = vec![Vec::new(); g];
        let mut cand: Vec<(f32, u32)> = Vec::with_capacity(g);
        for r in 0..n {
            cand.clear();
            cand.extend((0..g).map(|gi| (ts[r * np + gi] - self.top_hn[gi], gi as u32)));
            if p < g {
                cand.select_nth_unstable_by(p - 1, |a, b| b.0.total_cmp(&a.0));
            }
            for &(_, gi) in &cand[..p] {
                buckets[gi as usize].push(r as u32);
            }
        }
        let mut best = vec![(0u32, f32::NEG_INFINITY); n];
        let mut rows = Vec::new();
        let mut res = Vec::new();
        for (gi, b) in buckets.iter().enumerate() {
            if b.is_empty() {
                continue;
            }
            rows.clear();
            for &r in b {
                rows.extend_from_slice(&xs[r as usize * dim..(r as usize + 1) * dim]);
            }
            res.clear();
            res.resize(b.len(), (0u32, 0.0f32));
            let (pan, hn) = &self.group_panels[gi];
            argmax_rows(&rows, pan, hn, &mut res);
            let base = self.group_off[gi];
            for (&r, &(c, v)) in b.iter().zip(&res) {
                let bb = &mut best[r as usize];
                if v > bb.1 || (v == bb.1 && base + c < bb.0) {
                    *bb = (base + c, v);
                }
            }
        }
        for (o, b) in out.iter_mut().zip(best) {
            *o = b.0;
        }
    }

    /// Encodes `x` (`n * dim` f32): leaf centroid ids and PQ codes, `M / 2` bytes per token with
    /// subspace `2i` in the low nibble of byte `i` and `2i + 1` in the high nibble. Current pool.
    pub fn encode(&self, x: &[f32]) -> (Vec<u32>, Vec<u8>) {
        let assigning = crate::profile::span("encode/assign");
        let cids = self.assign(x);
        drop(assigning);
        let _pq = crate::profile::span("encode/pq");
        let bpt = self.m / 2;
        let mut codes = vec![0u8; cids.len() * bpt];
        const CHUNK: usize = 1024;
        codes
            .par_chunks_mut(CHUNK * bpt)
            .zip(x.par_chunks(CHUNK * self.dim))
            .zip(cids.par_chunks(CHUNK))
            .for_each(|((cd, xs), cs)| {
                let mut r = vec![0.0f32; self.dim];
                let mut scratch = EncodeScratch::new(self.dim, self.m);
                for ((row, &c), out) in xs
                    .chunks_exact(self.dim)
                    .zip(cs)
                    .zip(cd.chunks_exact_mut(bpt))
                {
                    let cen = &self.centroids[c as usize * self.dim..(c as usize + 1) * self.dim];
                    for ((rv, &xv), &cv) in r.iter_mut().zip(row).zip(cen) {
                        *rv = xv - cv;
                    }
                    self.pq_encode(row, &r, out, &mut scratch);
                }
            });
        (cids, codes)
    }

    /// Codes of one residual `r` of token `x` (both `dim`), nibble-packed into `out`: squared-error
    /// nearest codewords, then anisotropic coordinate descent (module docs).
    fn pq_encode(&self, x: &[f32], r: &[f32], out: &mut [u8], sc: &mut EncodeScratch) {
        let so = &self.sub_off;
        let codes = &mut sc.codes;
        pq::nearest_codewords(r, &self.codewords_t, so, codes);
        let xn2: f32 = x.iter().map(|v| v * v).sum();
        if self.eta != 1.0 && xn2 > 0.0 {
            // e = r - r^ and p = <e, u>, u = x / |x|, kept up to date as codes change.
            let inv = 1.0 / xn2.sqrt();
            let u = &mut sc.u;
            for (uv, &xv) in u.iter_mut().zip(x) {
                *uv = xv * inv;
            }
            let e = &mut sc.e;
            for s in 0..self.m {
                let (a, b) = (so[s], so[s + 1]);
                let cw = &self.codebook(s)
                    [codes[s] as usize * (b - a)..(codes[s] as usize + 1) * (b - a)];
                for ((ev, &rv), &w) in e[a..b].iter_mut().zip(&r[a..b]).zip(cw) {
                    *ev = rv - w;
                }
            }
            let mut p: f32 = e.iter().zip(u.iter()).map(|(a, b)| a * b).sum();
            let w_par = self.eta - 1.0;
            for _ in 0..ANISO_ROUNDS {
                let mut changed = false;
                for s in 0..self.m {
                    let (a, b) = (so[s], so[s + 1]);
                    let (es, us, rs) = (&e[a..b], &u[a..b], &r[a..b]);
                    let p_rest = p - es.iter().zip(us).map(|(a, b)| a * b).sum::<f32>();
                    let mut best = (codes[s] as usize, f32::INFINITY);
                    for (j, cw) in self.codebook(s).chunks_exact(b - a).enumerate() {
                        let (mut n2, mut pj) = (0.0f32, 0.0f32);
                        for ((&rv, &w), &uv) in rs.iter().zip(cw).zip(us) {
                            let d = rv - w;
                            n2 += d * d;
                            pj += d * uv;
                        }
                        let pp = p_rest + pj;
                        let loss = n2 + w_par * pp * pp;
                        if loss < best.1 {
                            best = (j, loss);
                        }
                    }
                    if best.0 != codes[s] as usize {
                        changed = true;
                        codes[s] = best.0 as u8;
                        let cw = &self.codebook(s)[best.0 * (b - a)..(best.0 + 1) * (b - a)];
                        for ((ev, &rv), &w) in e[a..b].iter_mut().zip(rs).zip(cw) {
                            *ev = rv - w;
                        }
                        p = p_rest + e[a..b].iter().zip(us).map(|(a, b)| a * b).sum::<f32>();
                    }
                }
                if !changed {
                    break;
                }
            }
        }
        for (s, &code) in codes.iter().enumerate() {
            if s % 2 == 0 {
                out[s / 2] = code;
            } else {
                out[s / 2] |= code << 4;
            }
        }
    }

    /// Reconstructs token vectors from centroid ids and codes (for tests and diagnostics only; search
    /// never decompresses).
    pub fn decode(&self, cids: &[u32], codes: &[u8]) -> Vec<f32> {
        let dim = self.dim;
        let bpt = self.m / 2;
        let mut out = Vec::with_capacity(cids.len() * dim);
        for (&c, cd) in cids.iter().zip(codes.chunks_exact(bpt)) {
            let cen = &self.centroids[c as usize * dim..(c as usize + 1) * dim];
            for s in 0..self.m {
                let code = ((cd[s / 2] >> (4 * (s % 2))) & 15) as usize;
                let (a, b) = (self.sub_off[s], self.sub_off[s + 1]);
                let cw = &self.codebook(s)[code * (b - a)..(code + 1) * (b - a)];
                for (j, &w) in cw.iter().enumerate() {
                    out.push(cen[a + j] + w);
                }
            }
        }
        out
    }
}

/// Per-thread buffers of the anisotropic encoder.
struct EncodeScratch {
    codes: Vec<u8>,
    u: Vec<f32>,
    e: Vec<f32>,
}

impl EncodeScratch {
    fn new(dim: usize, m: usize) -> Self {
        EncodeScratch {
            codes: vec![0; m],
            u: vec![0.0; dim],
            e: vec![0.0; dim],
        }
    }
}
