//! Input validation of the handle's entry points: every check runs before anything is staged or
//! searched, so a bad call changes nothing.

use std::collections::HashSet;

use crate::error::{LatixError, Result};
use crate::maxsim::{self, DocVectors};
use crate::types::MAX_ID_BYTES;

/// Validates the shape of one document or query matrix given as a flat slice; `what` names it in
/// errors.
pub(super) fn check_shape(v: DocVectors<'_>, dim: usize, what: &str) -> Result<()> {
    if v.is_empty() {
        return Err(LatixError::invalid(format!(
            "{what} must have at least one row (token), got shape (0, {dim})"
        )));
    }
    if !v.len().is_multiple_of(dim) {
        return Err(LatixError::invalid(format!(
            "{what} must have shape (n, {dim}), got {} values",
            v.len()
        )));
    }
    Ok(())
}

pub(super) fn check_id(id: &str, i: usize) -> Result<()> {
    if id.is_empty() {
        return Err(LatixError::invalid(format!(
            "ids[{i}] is empty; ids must be non-empty strings"
        )));
    }
    if id.len() > MAX_ID_BYTES {
        return Err(LatixError::invalid(format!(
            "ids[{i}] is {} bytes long, at most {MAX_ID_BYTES} allowed",
            id.len()
        )));
    }
    Ok(())
}

pub(super) fn check_unique<'a>(ids: impl IntoIterator<Item = &'a str>) -> Result<()> {
    let mut seen = HashSet::new();
    for id in ids {
        if !seen.insert(id) {
            return Err(LatixError::invalid(format!(
                "ids contains {id:?} more than once"
            )));
        }
    }
    Ok(())
}

pub(super) fn list_some(ids: &[&str]) -> String {
    let mut s: Vec<String> = ids.iter().take(5).map(|i| format!("{i:?}")).collect();
    if ids.len() > 5 {
        s.push(format!("... ({} in all)", ids.len()));
    }
    s.join(", ")
}

/// Validates the arguments of a search of an index of dimension `dim`: `nprobe` (if given),
/// `k`, every query's shape and values, and `n_threads`.
pub(super) fn check_search(
    queries: &[&[f32]],
    k: usize,
    dim: usize,
    n_threads: Option<usize>,
    nprobe: Option<usize>,
) -> Result<()> {
    // Only the lower bound here, before the kind is known: a compressed index searched before its
    // codec is trained has no centroid count; the range (`compressed::check_nprobe`) is checked
    // once per search by the compressed search itself.
    if nprobe == Some(0) {
        return Err(LatixError::invalid("nprobe must be at least 1, got 0"));
    }
    if k == 0 {
        return Err(LatixError::invalid("k must be at least 1, got 0"));
    }
    for (i, q) in queries.iter().enumerate() {
        let what = format!("queries[{i}]");
        check_shape(DocVectors::F32(q), dim, &what)?;
        maxsim::check_values(DocVectors::F32(q), &what, dim)?;
    }
    crate::parallel::resolve_threads(n_threads)?;
    Ok(())
}
