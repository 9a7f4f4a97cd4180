//! Compressed index structures: the token codec (coarse centroid + 4-bit product-quantised
//! residual), per-segment inverted lists over centroids, and WARP-style candidate generation that
//! scores tokens straight from their codes. See each module's header for the algorithm and its
//! source.

pub mod codec;
mod commit;
mod compact;
pub mod config;
pub mod fastscan;
pub mod fidelity;
pub mod ivf;
pub mod kmeans;
pub mod linalg;
pub mod pool;
pub mod search;
mod state;

pub use codec::{default_n_centroids, Codec, CodecParams};
pub use commit::train_codec_on_documents;
pub(crate) use commit::{
    check_given_codec, commit_hook, growth_due, has_old_lists, has_user_side_files,
};
pub(crate) use compact::{merge_mode, write_merged_lists};
pub use compact::{DEFAULT_MERGE_MEMORY, MIN_MERGE_MEMORY};
pub use config::{
    Compression, CODEC_FILE, CONFIG_FILE, IVF_FILE, MAX_POOL_FACTOR, MIN_TRAIN_TOKENS,
};
pub use fidelity::{FidSegment, Fidelity, FID_FILE};
pub use ivf::{codec_checksum, IvfSegment};
pub use search::{
    centroid_interaction, default_nprobe, default_refine, default_refine_for_rerank, refine,
    rerank_depth, rerank_exact, search_segments, Candidate, FullVectors, QueryPlan, SegmentView,
};
pub use search::{
    filtered_depth, search_encoded, CompressedSearch, EXHAUSTIVE_EXACT_ALL, EXHAUSTIVE_REFINE_ALL,
    FILTERED_DEPTH, FILTERED_DEPTH_BROAD, FILTERED_REFINE,
};
pub use state::codec_id;
pub(crate) use state::read_codec_bytes;
pub(crate) use state::{decode_segment_doc, load_state, verify, CState};
