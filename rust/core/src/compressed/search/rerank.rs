//! The exact re-rank of the refined list from the kept full vectors.

use rayon::prelude::*;

use super::*;
use crate::error::{LatixError, Result};
use crate::maxsim::DocVectors;

/// Full-precision vectors of one segment (`offsets[d]..offsets[d+1]` are document `d`'s rows),
/// used to re-rank candidates exactly.
#[derive(Clone, Copy)]
pub struct FullVectors<'a> {
    /// Row-major token vectors of the segment.
    pub vectors: DocVectors<'a>,
    /// Per-document row offsets (`n_docs + 1`).
    pub offsets: &'a [u64],
}

/// Re-scores `cands` exactly (MaxSim over the documents' full vectors, `full[segment]`), keeps the
/// best `k`; ties broken by segment then document. The query is packed once for the MaxSim kernel;
/// documents are scored in parallel in the current rayon pool when it has several threads.
pub fn rerank_exact(
    query: &[f32],
    dim: usize,
    full: &[FullVectors<'_>],
    cands: &[Candidate],
    k: usize,
) -> Result<Vec<Candidate>> {
    let prepared = crate::maxsim::PreparedQuery::new(query, dim)?;
    let score = |&(_, s, d): &Candidate| -> Result<Candidate> {
        let f = full
            .get(s as usize)
            .ok_or_else(|| LatixError::invalid(format!("no full vectors for segment {s}")))?;
        let (a, b) = match (f.offsets.get(d as usize), f.offsets.get(d as usize + 1)) {
            (Some(&a), Some(&b)) if a <= b && (b as usize) * dim <= f.vectors.len() => {
                (a as usize, b as usize)
            }
            _ => {
                return Err(LatixError::invalid(format!(
                    "segment {s}: full vectors do not cover document {d}"
                )))
            }
        };
        let rows = match f.vectors {
            DocVectors::F32(v) => DocVectors::F32(&v[a * dim..b * dim]),
            DocVectors::F16(v) => DocVectors::F16(&v[a * dim..b * dim]),
        };
        Ok((prepared.score_doc(rows), s, d))
    };
    let mut out: Vec<Candidate> = if rayon::current_num_threads() > 1 && cands.len() > 8 {
        cands.par_iter().map(score).collect::<Result<_>>()?
    } else {
        cands.iter().map(score).collect::<Result<_>>()?
    };
    out.sort_by(cand_cmp);
    out.truncate(k);
    Ok(out)
}
