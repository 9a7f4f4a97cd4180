//! Compressed index structures: the token codec (coarse centroid + 4-bit product-quantised
//! residual), per-segment inverted lists over centroids, and WARP-style candidate generation that
//! scores tokens straight from their codes. See each module's header for the algorithm and its
//! source.

pub mod codec;
pub mod fastscan;
pub mod ivf;
pub mod kmeans;
pub mod linalg;
pub mod pool;
pub mod search;

pub use codec::{default_n_centroids, Codec, CodecParams};
pub use ivf::{codec_checksum, IvfSegment};
pub use search::{
    centroid_interaction, default_nprobe, default_probe_groups, default_refine,
    default_refine_for_rerank, refine, rerank_depth, rerank_exact, search_segments, Candidate,
    FullVectors, QueryPlan, SegmentView,
};
