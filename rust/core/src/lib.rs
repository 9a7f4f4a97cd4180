//! latix-core: the engine of latix, a late-interaction (ColBERT-style) retrieval library.
//!
//! Pure Rust, no Python: token-vector storage (`store`), exact MaxSim kernels (`maxsim`),
//! compression (`codec`), candidate generation (`ivf`) and the index that ties them together.
//! The PyO3 binding lives in the `latix-python` crate and only converts and delegates.

pub mod cindex;
pub mod compressed;
pub mod error;
pub mod index;
pub mod maxsim;
pub mod parallel;
pub mod simd;
pub mod store;
pub mod types;

pub use cindex::{CompressedSearch, Compression};
pub use error::{LatixError, Result};
pub use index::{
    DocFilter, Index, IndexStats, OpenMode, OwnedVectors, SearchResults, SegmentInfo, SegmentMasks,
};
pub use store::Dtype;
