//! Exhaustive exact MaxSim search of a snapshot: the search of [`super::kind::Kind::Exact`] (and
//! of the segments of a compressed index before its codec is trained).
//!
//! Documents are scored in chunks of about [`CHUNK_BYTES`] of vectors on latix's thread pool,
//! keeping a per-query [`TopK`] per worker, so memory does not grow with the index. Ties are
//! broken by insertion order (segment, then document number: [`crate::topk::order`]).

use rayon::prelude::*;

use crate::error::{LatixError, Result};
use crate::maxsim;
use crate::store::{Segment, Snapshot};
use crate::topk::TopK;
use crate::types::SearchResults;

/// Target bytes of document vectors scored per work item (fits in L2 with room for the query).
pub const CHUNK_BYTES: usize = 256 * 1024;

/// One unit of search work: a range of documents of one segment, or a list of them (subset).
enum Work<'a> {
    Range { seg: usize, start: u32, end: u32 },
    List { seg: usize, docs: &'a [u32] },
}

/// The set document numbers of each bitmap, ascending.
pub(crate) fn bitmap_docs(bits: &[Vec<u64>]) -> Vec<Vec<u32>> {
    bits.iter()
        .map(|b| {
            let mut docs = Vec::with_capacity(b.iter().map(|w| w.count_ones() as usize).sum());
            for (i, &w) in b.iter().enumerate() {
                let mut w = w;
                while w != 0 {
                    docs.push((i as u32) << 6 | w.trailing_zeros());
                    w &= w - 1;
                }
            }
            docs
        })
        .collect()
}

/// Number of documents per work item for segment `seg`, from its mean document size.
fn docs_per_chunk(seg: &Segment) -> u32 {
    let bytes_per_doc =
        (seg.n_tokens() as usize * seg.dim() * seg.dtype().size()) / seg.n_docs().max(1);
    (CHUNK_BYTES / bytes_per_doc.max(1)).clamp(1, 1024) as u32
}

/// Search over an explicit snapshot (the core of [`crate::Index::search`] on an exact index).
/// Inputs must be valid (k >= 1, each query a non-empty multiple of dim, finite).
pub fn search_snapshot(
    snap: &Snapshot,
    queries: &[&[f32]],
    k: usize,
    n_threads: Option<usize>,
    subset: Option<&[&str]>,
) -> Result<SearchResults> {
    // Subset: resolve ids to (segment, doc), sorted by insertion order, grouped per segment.
    let subset_docs: Option<Vec<Vec<u32>>> = subset.map(|ids| {
        let mut per: Vec<Vec<u32>> = vec![Vec::new(); snap.segments().len()];
        for id in ids {
            if let Some((s, d)) = snap.lookup(id) {
                per[s].push(d);
            }
        }
        for v in per.iter_mut() {
            v.sort_unstable();
            v.dedup();
        }
        per
    });
    search_snapshot_docs(snap, queries, k, n_threads, subset_docs)
}

/// [`search_snapshot`] restricted to `subset_docs[s]`: sorted, unique, live document numbers of
/// segment `s` for every segment of `snap` (`None`: every live document).
pub fn search_snapshot_docs(
    snap: &Snapshot,
    queries: &[&[f32]],
    k: usize,
    n_threads: Option<usize>,
    subset_docs: Option<Vec<Vec<u32>>>,
) -> Result<SearchResults> {
    let nq = queries.len();
    SearchResults::check_slots(nq, k)?;
    let dim = snap.dim();
    let segs = snap.segments();
    if subset_docs.as_ref().is_some_and(|p| p.len() != segs.len()) {
        return Err(LatixError::invalid(
            "subset_docs must have one list per segment of the snapshot",
        ));
    }
    // Pack each query once for the kernel, not once per chunk of documents.
    let prepared = queries
        .iter()
        .map(|q| maxsim::PreparedQuery::new(q, dim))
        .collect::<Result<Vec<_>>>()?;
    // Work items are derived from a flat index through per-segment prefix sums: O(segments)
    // memory, however many documents.
    let mut starts = Vec::with_capacity(segs.len() + 1);
    let mut per_chunk = Vec::with_capacity(segs.len());
    starts.push(0usize);
    for (i, v) in segs.iter().enumerate() {
        let c = docs_per_chunk(&v.segment) as usize;
        let n = match &subset_docs {
            Some(per) => per[i].len(),
            None => v.segment.n_docs(),
        };
        per_chunk.push(c);
        starts.push(starts[i] + n.div_ceil(c));
    }
    let n_work = starts[segs.len()];
    let work = |w: usize| -> Work<'_> {
        let seg = starts.partition_point(|&s| s <= w) - 1;
        let j = w - starts[seg];
        let c = per_chunk[seg];
        match &subset_docs {
            Some(per) => {
                let list = &per[seg];
                Work::List {
                    seg,
                    docs: &list[j * c..((j + 1) * c).min(list.len())],
                }
            }
            None => {
                let n = segs[seg].segment.n_docs();
                Work::Range {
                    seg,
                    start: (j * c) as u32,
                    end: ((j + 1) * c).min(n) as u32,
                }
            }
        }
    };

    struct Acc {
        tops: Vec<TopK<u32>>,
        scores: Vec<f32>,
        offs: Vec<u64>,
    }
    let new_acc = || Acc {
        tops: vec![TopK::new(k); nq],
        scores: Vec::new(),
        offs: Vec::new(),
    };
    let process = |mut acc: Acc, w: usize| -> Result<Acc> {
        match work(w) {
            Work::Range { seg, start, end } => {
                let v = &segs[seg];
                let s = &v.segment;
                let offsets = s.offsets();
                let (lo, hi) = (offsets[start as usize], offsets[end as usize]);
                acc.offs.clear();
                acc.offs.extend(
                    offsets[start as usize..=end as usize]
                        .iter()
                        .map(|o| o - lo),
                );
                let n = (end - start) as usize;
                acc.scores.resize(n, 0.0);
                let rows = s.rows_checked(lo, hi)?;
                let tomb = &v.entry.tombstones;
                let t0 = tomb.partition_point(|&t| t < start);
                for (q, top) in prepared.iter().zip(acc.tops.iter_mut()) {
                    q.score_docs(rows, &acc.offs, &mut acc.scores);
                    let mut ti = t0;
                    for (i, &sc) in acc.scores.iter().enumerate() {
                        let d = start + i as u32;
                        if tomb.get(ti) == Some(&d) {
                            ti += 1;
                            continue;
                        }
                        top.push((sc, seg as u32, d));
                    }
                }
            }
            Work::List { seg, docs } => {
                let s = &segs[seg].segment;
                let mut one = [0f32; 1];
                for &d in docs {
                    let (a, b) = s.doc_range(d);
                    let rows = s.rows_checked(a, b)?;
                    let offs = [0u64, b - a];
                    for (q, top) in prepared.iter().zip(acc.tops.iter_mut()) {
                        q.score_docs(rows, &offs, &mut one);
                        top.push((one[0], seg as u32, d));
                    }
                }
            }
        }
        Ok(acc)
    };
    let tops: Vec<TopK<u32>> = if nq == 0 || n_work == 0 {
        vec![TopK::new(k); nq]
    } else if n_work == 1 || crate::parallel::resolve_threads(n_threads)? == 1 {
        // Nothing to parallelise: skip the hand-off to the pool (a thread wake-up costs more
        // than scoring a small index).
        (0..n_work).try_fold(new_acc(), process)?.tops
    } else {
        crate::parallel::install(n_threads, || {
            (0..n_work)
                .into_par_iter()
                .try_fold(new_acc, process)
                .map(|a| a.map(|a| a.tops))
                .try_reduce(
                    || vec![TopK::new(k); nq],
                    |a, b| Ok(a.into_iter().zip(b).map(|(x, y)| x.merge(y)).collect()),
                )
        })??
    };
    SearchResults::assemble(
        snap,
        k,
        tops.into_iter().map(|top| {
            top.finish()
                .into_iter()
                .map(|(score, seg, d)| (score, seg as usize, d))
        }),
    )
}
