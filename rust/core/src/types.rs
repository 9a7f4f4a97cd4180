//! The shared vocabulary of the crate: what an index hands out (copied vectors, search results,
//! segment listings), what a search is restricted by (a [`DocFilter`]) and the input limits every
//! layer checks against. Both index kinds (exact and compressed) build on these; nothing here
//! depends on either, so neither imports the other.

use std::collections::HashMap;

use half::f16;

use crate::error::{try_filled, LatixError, Result};
use crate::store::{Dtype, Snapshot};

/// Largest accepted vector dimension.
pub const MAX_DIM: usize = 65536;
/// Longest accepted id, in UTF-8 bytes.
pub const MAX_ID_BYTES: usize = 65535;
/// Largest `k * n_queries` a search accepts: the result is allocated up front (`k` hits per
/// query, padded), so an absurd `k` must be an error, not an allocation failure.
pub const MAX_RESULT_SLOTS: usize = 1 << 26;
/// Largest `k` accepted beyond the number of documents (the result arrays are `n_queries * k`).
pub const MAX_PADDED_K: usize = 1 << 20;

/// A document's stored vectors, copied out of the index.
#[derive(Clone, Debug, PartialEq)]
pub enum OwnedVectors {
    /// float16 storage, row-major `(n, dim)`.
    F16(Vec<f16>),
    /// float32 storage, row-major `(n, dim)`.
    F32(Vec<f32>),
}

impl OwnedVectors {
    /// f32 rows converted to the storage dtype `dtype`.
    pub(crate) fn from_f32(v: Vec<f32>, dtype: Dtype) -> OwnedVectors {
        match dtype {
            Dtype::F32 => OwnedVectors::F32(v),
            Dtype::F16 => OwnedVectors::F16(v.into_iter().map(f16::from_f32).collect()),
        }
    }
}

/// Results of [`crate::Index::search`]: row-major `(n_queries, k)`, best first; missing hits are
/// `-inf` with id `""`.
#[derive(Clone, Debug, PartialEq)]
pub struct SearchResults {
    /// Number of queries.
    pub n_queries: usize,
    /// Hits per query.
    pub k: usize,
    /// `n_queries * k` scores.
    pub scores: Vec<f32>,
    /// `n_queries * k` ids.
    pub ids: Vec<String>,
}

impl SearchResults {
    /// `InvalidInput` unless `n_queries * k` fits [`MAX_RESULT_SLOTS`] (checked before any
    /// buffer is sized by `k`).
    pub(crate) fn check_slots(n_queries: usize, k: usize) -> Result<()> {
        if k > MAX_RESULT_SLOTS || n_queries.saturating_mul(k) > MAX_RESULT_SLOTS {
            return Err(LatixError::invalid(format!(
                "k * n_queries must be at most {MAX_RESULT_SLOTS}, got k = {k} with \
                 {n_queries} queries"
            )));
        }
        Ok(())
    }

    /// The padded `(n_queries, k)` result of per-query hit lists, each best first and at most
    /// `k` long, a hit being `(score, segment index, document number)` of `snap`; rows shorter
    /// than `k` are padded with `-inf` and `""`. The arrays are allocated fallibly (`k` is the
    /// caller's).
    pub(crate) fn assemble<I, H>(snap: &Snapshot, k: usize, per_query: I) -> Result<SearchResults>
    where
        I: ExactSizeIterator<Item = H>,
        H: IntoIterator<Item = (f32, usize, u32)>,
    {
        let nq = per_query.len();
        let n = nq.saturating_mul(k);
        let mut scores = try_filled(n, f32::NEG_INFINITY, "search results (scores)")?;
        let mut ids = try_filled(n, String::new(), "search results (ids)")?;
        let segs = snap.segments();
        for (qi, hits) in per_query.enumerate() {
            for (r, (sc, s, d)) in hits.into_iter().take(k).enumerate() {
                scores[qi * k + r] = sc;
                ids[qi * k + r] = segs[s].segment.id(d)?.to_owned();
            }
        }
        Ok(SearchResults {
            n_queries: nq,
            k,
            scores,
            ids,
        })
    }
}

/// Allowed documents per segment, for [`DocFilter::Masks`]: segment file name -> bitmap over the
/// segment's document numbers (bit `d % 64` of word `d / 64` allows document `d`; exactly
/// `n_docs.div_ceil(64)` words). Segment files are immutable, so a mask built for a file stays
/// valid for as long as the file is part of the index; tombstones are applied by the search.
pub type SegmentMasks = HashMap<String, Vec<u64>>;

/// Which documents a search may return (deleted documents never are).
#[derive(Clone, Copy, Debug)]
pub enum DocFilter<'a> {
    /// Every live document.
    All,
    /// The live documents with these ids; unknown ids are ignored.
    Ids(&'a [&'a str]),
    /// The live documents allowed by per-segment bitmaps. A compressed index scores the allowed
    /// documents exhaustively (code-level MaxSim over all their tokens, then the exact re-rank
    /// when vectors are kept) instead of through candidate generation when at most
    /// `exhaustive_below` of them are live.
    Masks {
        /// Bitmap per segment file; every segment of the searched snapshot must have one.
        masks: &'a SegmentMasks,
        /// Live allowed documents at or below which a compressed index searches exhaustively.
        exhaustive_below: usize,
    },
}

/// A segment of a committed snapshot, as [`crate::Index::segments`] lists it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SegmentInfo {
    /// The segment's file name (the key of [`SegmentMasks`]).
    pub file: String,
    /// Documents stored in the segment, deleted ones included (document numbers `0..n_docs`).
    pub n_docs: usize,
    /// Documents of the segment that are not deleted.
    pub n_live: usize,
}
