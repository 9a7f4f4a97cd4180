//! Helpers shared by the integration tests: the version-3 inverted-list format that latix wrote
//! before the document map, rebuilt from current lists (to test reading and upgrading it); seeded
//! clustered data, the exact reference and small index helpers.

#![allow(dead_code)]

use latix_core::compressed::IvfSegment;
// Seeded clustered data, the exact reference and small index helpers shared by the index tests
// (each test binary uses a different part of this module).

use std::path::Path;

use latix_core::compressed::kmeans::Rng;
use latix_core::index::Index;
use latix_core::maxsim::scalar::maxsim_f32;
use latix_core::CompressedSearch;

/// A standard normal sample (Box-Muller).
pub fn gauss(rng: &mut Rng) -> f32 {
    let u1 = ((rng.next_u64() >> 11) as f64 + 1.0) / (1u64 << 53) as f64;
    let u2 = (rng.next_u64() >> 11) as f64 / (1u64 << 53) as f64;
    ((-2.0 * u1.ln()).sqrt() * (2.0 * std::f64::consts::PI * u2).cos()) as f32
}

/// Scales `v` to unit length (a zero vector stays zero).
pub fn normalise(v: &mut [f32]) {
    let n = v.iter().map(|x| x * x).sum::<f32>().sqrt().max(1e-12);
    v.iter_mut().for_each(|x| *x /= n);
}

/// Seeded clustered data: 24 topic centres; documents and queries mix two topics.
pub struct Data {
    dim: usize,
    /// Document lengths are `6 + below(len_spread)` tokens.
    len_spread: usize,
    /// Noise of document tokens around their topic centre.
    doc_noise: f32,
    centres: Vec<f32>,
    rng: Rng,
}

impl Data {
    /// Data of dimension `dim`; documents of `6 + below(len_spread)` tokens at noise `doc_noise`.
    pub fn new(seed: u64, dim: usize, len_spread: usize, doc_noise: f32) -> Data {
        let mut rng = Rng::new(seed);
        let mut centres = Vec::new();
        for _ in 0..24 {
            let mut c: Vec<f32> = (0..dim).map(|_| gauss(&mut rng)).collect();
            normalise(&mut c);
            centres.extend(c);
        }
        Data {
            dim,
            len_spread,
            doc_noise,
            centres,
            rng,
        }
    }

    /// `n` unit vectors around two random topics (alternating), `noise` away from them.
    pub fn mat(&mut self, n: usize, noise: f32) -> Vec<f32> {
        let dim = self.dim;
        let t = [self.rng.below(24), self.rng.below(24)];
        let mut out = Vec::with_capacity(n * dim);
        for i in 0..n {
            let c = &self.centres[t[i % 2] * dim..(t[i % 2] + 1) * dim];
            let mut v: Vec<f32> = c
                .iter()
                .map(|&x| x + noise * gauss(&mut self.rng) / (dim as f32).sqrt())
                .collect();
            normalise(&mut v);
            out.extend(v);
        }
        out
    }

    /// `n` documents.
    pub fn docs(&mut self, n: usize) -> Vec<Vec<f32>> {
        (0..n)
            .map(|_| {
                let len = 6 + self.rng.below(self.len_spread);
                self.mat(len, self.doc_noise)
            })
            .collect()
    }
}

/// Exact top-k (scalar MaxSim over f16-rounded documents, as stored) among `live`; ties by id.
pub fn exact_topk(
    q: &[f32],
    live: &[(String, Vec<f32>)],
    k: usize,
    dim: usize,
) -> Vec<(String, f32)> {
    let mut s: Vec<(String, f32)> = live
        .iter()
        .map(|(id, d)| {
            let r: Vec<f32> = d.iter().map(|&x| half::f16::from_f32(x).to_f32()).collect();
            (id.clone(), maxsim_f32(q, &r, dim))
        })
        .collect();
    s.sort_by(|a, b| b.1.total_cmp(&a.1).then(a.0.cmp(&b.0)));
    s.truncate(k);
    s
}

/// The `(id, score)` hits of one query (padding dropped), on 2 threads.
pub fn search(ix: &Index, q: &[f32], k: usize, opts: CompressedSearch) -> Vec<(String, f32)> {
    let r = ix
        .search_with(&[q], k, Some(2), None, opts)
        .expect("search");
    r.ids
        .into_iter()
        .zip(r.scores)
        .filter(|(i, _)| !i.is_empty())
        .collect()
}

/// Sorted names of the files of `dir` containing `part`.
pub fn files(dir: &Path, part: &str) -> Vec<String> {
    let mut v: Vec<String> = std::fs::read_dir(dir)
        .expect("dir")
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| n.contains(part))
        .collect();
    v.sort();
    v
}

fn align64(x: usize) -> usize {
    x.div_ceil(64) * 64
}

/// Section offsets of a version-4 or 5 file: (list_tokens, list_blocks, doc_of_token, norm_scale,
/// doc_offsets, doc_positions, codes), as the module documentation of `ivf` lays them out.
pub fn v4_layout(seg: &IvfSegment) -> [usize; 7] {
    let nl = seg.list_tokens().len() - 1;
    let (nd, nt) = (seg.n_docs(), seg.n_tokens());
    let lt = 64;
    let lb = align64(lt + (nl + 1) * 4);
    let dt = align64(lb + (nl + 1) * 4);
    let ns = align64(dt + nt * 2);
    let doff = align64(ns + nt * 2);
    let dpos = align64(doff + (nd + 1) * 4);
    let codes = align64(dpos + nt * 4);
    [lt, lb, dt, ns, doff, dpos, codes]
}

pub fn with_crc(mut b: Vec<u8>) -> Vec<u8> {
    let n = b.len() - 4;
    let crc = crc32c::crc32c(&b[..n]);
    b[n..].copy_from_slice(&crc.to_le_bytes());
    b
}

/// The same lists in the version-3 format (f32 norm scales, no document map, interleaved code
/// blocks) that latix wrote before the document map existed.
pub fn as_version_3(seg: &IvfSegment) -> Vec<u8> {
    let interleaved = seg.as_version_4().unwrap();
    let seg = &interleaved;
    let v4 = seg.as_bytes();
    let nt = seg.n_tokens();
    let [_, _, dt, ns, _, _, codes] = v4_layout(seg);
    let ns_end = align64(ns + nt * 4);
    let mut b = vec![0u8; ns_end];
    b[..dt + nt * 2].copy_from_slice(&v4[..dt + nt * 2]);
    b[8..12].copy_from_slice(&3u32.to_le_bytes());
    for t in 0..nt {
        b[ns + 4 * t..ns + 4 * t + 4].copy_from_slice(&seg.norm_scales().get(t).to_le_bytes());
    }
    b.extend_from_slice(&v4[codes..v4.len() - 4]);
    b.extend_from_slice(&[0; 4]);
    with_crc(b)
}
