//! latix-core: the engine of latix, a late-interaction (ColBERT-style) retrieval library.
//!
//! Pure Rust, no Python; the PyO3 binding lives in the `latix-python` crate and only converts
//! and delegates. The layers, each depending only on those below it:
//!
//! ```text
//! index/        the handle (create, open, add, delete, commit, compact, get, search, stats):
//!               validates and dispatches through index::kind::Kind { Exact, Compressed }
//!   ├── exact         exhaustive exact MaxSim over a snapshot (maxsim kernels, thread pool)
//!   └── compressed/   codec, inverted lists, commit hook, search pipeline
//!                     (generate from codes -> refine from codes -> exact re-rank)
//! store/        segments, manifests, snapshots, atomic commits (CommitContext for kind hooks)
//! maxsim/       exact MaxSim kernels (runtime dispatch, scalar oracle)
//! types, topk, error, parallel, simd   shared vocabulary, the one top-k and hit order, errors,
//!               the pool, the one CPU detection (simd::Level, LATIX_KERNEL) of every kernel
//! profile       timing spans of a commit's stages (LATIX_PROFILE_COMMIT)
//! format        header (magic + version), crc32c seal, LE reads, write_atomic: every file format
//! ```
//!
//! A search: `Index::search_filtered` validates the queries, refreshes its snapshot (and, for a
//! compressed index, the codec state of that snapshot), resolves the filter and hands both to
//! `Kind::search`. A commit: the writer seals the staged segment, the kind's hook attaches its
//! files through [`store::CommitContext`], then the new manifest is written and `CURRENT`
//! switched to it (see ARCHITECTURE.md at the repository root).
//!
//! ```
//! use latix_core::{maxsim::DocVectors, Dtype, Index};
//! let dir = tempfile::tempdir().unwrap();
//! let ix = Index::create(dir.path().join("ix"), 2, Dtype::F32).unwrap();
//! let docs = [DocVectors::F32(&[1.0, 0.0]), DocVectors::F32(&[0.0, 1.0])];
//! ix.add(&["a", "b"], &docs, false).unwrap();
//! ix.commit().unwrap();
//! let r = ix.search(&[&[1.0, 0.0]], 1, Some(1), None).unwrap();
//! assert_eq!(r.ids, vec!["a".to_string()]);
//! ```

#![warn(missing_docs)]

pub mod compressed;
pub mod error;
pub mod format;
pub mod index;
pub mod maxsim;
pub mod parallel;
pub mod profile;
pub mod simd;
pub mod store;
pub mod topk;
pub mod types;

pub use compressed::{CompressedSearch, Compression};
pub use error::{LatixError, Result};
pub use index::{
    DocFilter, Index, IndexStats, OpenMode, OwnedVectors, SearchResults, SegmentInfo, SegmentMasks,
};
pub use store::Dtype;
