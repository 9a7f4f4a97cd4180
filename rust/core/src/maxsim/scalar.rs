//! Scalar reference MaxSim: the test oracle for every SIMD kernel. Plain loops, f32 accumulation
//! in token order; a document with no tokens scores 0 for every query token.

use half::f16;

/// MaxSim of one query (`nq * dim`) against one document (`nt * dim`), f32 storage.
pub fn maxsim_f32(query: &[f32], doc: &[f32], dim: usize) -> f32 {
    let mut total = 0.0f32;
    for q in query.chunks_exact(dim) {
        let mut best = f32::NEG_INFINITY;
        for d in doc.chunks_exact(dim) {
            let s: f32 = q.iter().zip(d).map(|(a, b)| a * b).sum();
            best = best.max(s);
        }
        if best.is_finite() {
            total += best;
        }
    }
    total
}

/// MaxSim of one query against one document stored as f16 (converted exactly to f32).
pub fn maxsim_f16(query: &[f32], doc: &[f16], dim: usize) -> f32 {
    let mut total = 0.0f32;
    for q in query.chunks_exact(dim) {
        let mut best = f32::NEG_INFINITY;
        for d in doc.chunks_exact(dim) {
            let s: f32 = q.iter().zip(d).map(|(a, b)| a * b.to_f32()).sum();
            best = best.max(s);
        }
        if best.is_finite() {
            total += best;
        }
    }
    total
}
