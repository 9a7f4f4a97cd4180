//! Every kernel this CPU can run against the scalar oracle on random shapes (seeded).

use half::f16;
use rand::rngs::StdRng;
use rand::{RngExt, SeedableRng};

use super::*;

const DIMS: [usize; 13] = [1, 3, 7, 8, 15, 16, 17, 31, 96, 100, 128, 129, 384];

fn random_vectors(rng: &mut StdRng, n: usize, dim: usize, normalise: bool) -> Vec<f32> {
    let mut v: Vec<f32> = (0..n * dim)
        .map(|_| rng.random_range(-1.0f32..1.0))
        .collect();
    if normalise {
        for row in v.chunks_exact_mut(dim) {
            let norm = row.iter().map(|x| x * x).sum::<f32>().sqrt().max(1e-12);
            row.iter_mut().for_each(|x| *x /= norm);
        }
    }
    v
}

/// Random document lengths (including empty documents) and their offsets.
fn random_offsets(rng: &mut StdRng, n_docs: usize, max_len: usize) -> Vec<u64> {
    let mut offsets = vec![0u64];
    for _ in 0..n_docs {
        let len = match rng.random_range(0..10) {
            0 => 0,
            1 => 1,
            _ => rng.random_range(1..=max_len),
        };
        offsets.push(offsets.last().copied().unwrap_or(0) + len as u64);
    }
    offsets
}

fn oracle(query: &[f32], dim: usize, docs: DocVectors<'_>, offsets: &[u64]) -> Vec<f32> {
    let mut out = vec![0.0; offsets.len() - 1];
    score_docs_with(Kernel::Scalar, query, dim, docs, offsets, &mut out);
    out
}

/// Tolerance for f32 sums of `nq` maxima of `dim`-term dot products of values in [-1, 1],
/// computed in different orders (FMA vs separate multiply-add, blocked accumulation).
fn tol(nq: usize, dim: usize, scale: f32) -> f32 {
    1e-5 * (nq as f32) * (dim as f32).sqrt() * scale + 1e-5
}

fn assert_close(got: &[f32], want: &[f32], tol: f32, what: &str) {
    assert_eq!(got.len(), want.len(), "{what}: length");
    for (i, (g, w)) in got.iter().zip(want).enumerate() {
        assert!(
            (g - w).abs() <= tol,
            "{what}: doc {i}: got {g}, want {w} (tol {tol})"
        );
    }
}

#[test]
fn every_kernel_matches_scalar_on_random_shapes() {
    let mut rng = StdRng::seed_from_u64(7);
    let kernels = Kernel::available();
    assert!(kernels.contains(&Kernel::Portable));
    for case in 0..120 {
        let dim = DIMS[case % DIMS.len()];
        let nq = match case % 5 {
            0 => 1,
            1 => 32,
            _ => rng.random_range(1..70),
        };
        let n_docs = rng.random_range(0..12);
        let max_len = if case % 7 == 0 { 1 } else { 40 };
        let offsets = random_offsets(&mut rng, n_docs, max_len);
        let n_tok = *offsets.last().unwrap_or(&0) as usize;
        let normalise = case % 2 == 0;
        let query = random_vectors(&mut rng, nq, dim, normalise);
        let docs32 = random_vectors(&mut rng, n_tok, dim, normalise);
        let docs16: Vec<f16> = docs32.iter().map(|&x| f16::from_f32(x)).collect();
        let scale = if normalise { 1.0 } else { (dim as f32).sqrt() };
        let want32 = oracle(&query, dim, DocVectors::F32(&docs32), &offsets);
        let want16 = oracle(&query, dim, DocVectors::F16(&docs16), &offsets);
        for &k in &kernels {
            let what = format!(
                "case {case} kernel {} nq {nq} dim {dim} docs {n_docs}",
                k.name()
            );
            let mut got = vec![f32::NAN; n_docs];
            score_docs_with(k, &query, dim, DocVectors::F32(&docs32), &offsets, &mut got);
            assert_close(&got, &want32, tol(nq, dim, scale), &format!("{what} f32"));
            score_docs_with(k, &query, dim, DocVectors::F16(&docs16), &offsets, &mut got);
            assert_close(&got, &want16, tol(nq, dim, scale), &format!("{what} f16"));
            // Empty documents score exactly 0.
            for (i, w) in offsets.windows(2).enumerate() {
                if w[0] == w[1] {
                    assert_eq!(got[i], 0.0, "{what}: empty doc {i}");
                }
            }
        }
    }
}

#[test]
fn long_documents_cross_chunk_boundaries() {
    // Documents longer than one conversion chunk (CHUNK_FLOATS / dim tokens) and long queries.
    let mut rng = StdRng::seed_from_u64(11);
    for &(dim, n_tok, nq) in &[
        (384usize, 300usize, 33usize),
        (128, 1000, 32),
        (17, 3000, 9),
    ] {
        let query = random_vectors(&mut rng, nq, dim, true);
        let docs32 = random_vectors(&mut rng, n_tok, dim, true);
        let docs16: Vec<f16> = docs32.iter().map(|&x| f16::from_f32(x)).collect();
        let offsets = vec![0, 1, n_tok as u64 / 2, n_tok as u64];
        let want32 = oracle(&query, dim, DocVectors::F32(&docs32), &offsets);
        let want16 = oracle(&query, dim, DocVectors::F16(&docs16), &offsets);
        for k in Kernel::available() {
            let mut got = vec![0.0; 3];
            score_docs_with(k, &query, dim, DocVectors::F32(&docs32), &offsets, &mut got);
            assert_close(&got, &want32, tol(nq, dim, 1.0), k.name());
            score_docs_with(k, &query, dim, DocVectors::F16(&docs16), &offsets, &mut got);
            assert_close(&got, &want16, tol(nq, dim, 1.0), k.name());
        }
    }
}

#[test]
fn f16_storage_is_close_to_f32_for_normalised_vectors() {
    let mut rng = StdRng::seed_from_u64(3);
    for &dim in &[96usize, 128, 384] {
        let nq = 32;
        let offsets = random_offsets(&mut rng, 20, 60);
        let n_tok = *offsets.last().unwrap_or(&0) as usize;
        let query = random_vectors(&mut rng, nq, dim, true);
        let docs32 = random_vectors(&mut rng, n_tok, dim, true);
        let docs16: Vec<f16> = docs32.iter().map(|&x| f16::from_f32(x)).collect();
        let mut a = vec![0.0; 20];
        let mut b = vec![0.0; 20];
        score_docs(&query, dim, DocVectors::F32(&docs32), &offsets, &mut a);
        score_docs(&query, dim, DocVectors::F16(&docs16), &offsets, &mut b);
        // Relative error of f16 rounding is 2^-11 per element; per query token the error of a
        // dot product of unit vectors is far below 1e-3 / 32.
        assert_close(&b, &a, 1e-3, &format!("f16 vs f32 dim {dim}"));
    }
}

#[test]
fn maxsim_is_parallel_and_thread_count_independent() {
    let mut rng = StdRng::seed_from_u64(5);
    let dim = 64;
    let offsets = random_offsets(&mut rng, 3000, 50);
    let n_tok = *offsets.last().unwrap_or(&0) as usize;
    let query = random_vectors(&mut rng, 20, dim, true);
    let docs = random_vectors(&mut rng, n_tok, dim, true);
    let one = maxsim(&query, dim, DocVectors::F32(&docs), &offsets, Some(1)).expect("1 thread");
    let three = maxsim(&query, dim, DocVectors::F32(&docs), &offsets, Some(3)).expect("3 threads");
    assert_eq!(one, three);
    let want = oracle(&query, dim, DocVectors::F32(&docs), &offsets);
    assert_close(&one, &want, tol(20, dim, 1.0), "maxsim vs oracle");
    // Offsets need not start at 0 and may stop before the end of the collection.
    let part = maxsim(
        &query,
        dim,
        DocVectors::F32(&docs),
        &offsets[5..20],
        Some(2),
    )
    .expect("sub-range");
    assert_eq!(part, one[5..19].to_vec());
    // Zero documents.
    assert!(
        maxsim(&query, dim, DocVectors::F32(&docs), &offsets[..1], None)
            .expect("zero docs")
            .is_empty()
    );
}

#[test]
fn maxsim_rejects_invalid_input() {
    let q = vec![0.5f32; 8];
    let d = vec![0.5f32; 16];
    let docs = DocVectors::F32(&d);
    let msg = |r: Result<Vec<f32>>| match r {
        Err(LatixError::InvalidArgument(m)) => m,
        other => panic!("expected InvalidArgument, got {other:?}"),
    };
    assert!(msg(maxsim(&q, 0, docs, &[0, 4], None)).contains("dim"));
    assert!(msg(maxsim(&[], 4, docs, &[0, 4], None)).contains("query"));
    assert!(msg(maxsim(&q[..7], 4, docs, &[0, 4], None)).contains("query"));
    assert!(msg(maxsim(&q, 4, DocVectors::F32(&d[..15]), &[0, 3], None)).contains("doc_vectors"));
    assert!(msg(maxsim(&q, 4, docs, &[], None)).contains("doc_offsets"));
    assert!(msg(maxsim(&q, 4, docs, &[0, 3, 2], None)).contains("doc_offsets"));
    assert!(msg(maxsim(&q, 4, docs, &[0, 5], None)).contains("doc_offsets"));
    assert!(msg(maxsim(&q, 4, docs, &[0, 4], Some(0))).contains("n_threads"));
}

#[test]
fn prepared_query_scores_single_documents() {
    let mut rng = StdRng::seed_from_u64(9);
    let dim = 100;
    let query = random_vectors(&mut rng, 13, dim, true);
    let doc = random_vectors(&mut rng, 29, dim, true);
    let p = PreparedQuery::new(&query, dim).expect("valid query");
    assert_eq!(
        (p.dim(), p.n_tokens(), p.kernel()),
        (dim, 13, Kernel::detect())
    );
    let want = scalar::maxsim_f32(&query, &doc, dim);
    assert!((p.score_doc(DocVectors::F32(&doc)) - want).abs() <= tol(13, dim, 1.0));
    assert_eq!(p.score_doc(DocVectors::F32(&[])), 0.0);
    assert!(PreparedQuery::new(&query, 0).is_err());
    assert!(PreparedQuery::new(&query[..5], dim).is_err());
}

#[test]
fn kernel_detection() {
    let k = Kernel::detect();
    assert!(k.is_available());
    assert_eq!(kernel_name(), k.name());
    for k in Kernel::ALL {
        assert_eq!(Kernel::from_name(k.name()), Some(k));
    }
    #[cfg(target_arch = "x86_64")]
    if is_x86_feature_detected!("avx2")
        && is_x86_feature_detected!("fma")
        && is_x86_feature_detected!("f16c")
    {
        assert!(Kernel::Avx2.is_available());
        if std::env::var("LATIX_KERNEL").is_err() {
            assert!(matches!(k, Kernel::Avx2 | Kernel::Avx512));
        }
    }
}
