//! Fuzzes `Codec::from_bytes` (the `idx-codec-*` file: header, top-level cluster ranges and
//! centroids, f16 leaf centroids, PQ codebooks) and the readers of a parsed codec: never panics or
//! reads out of bounds, whatever the bytes; whatever it accepts re-serialises to the same bytes,
//! and a query plan, an assignment, an encoding and a decoding run on it. Input: a mode byte
//! (bit 0: recompute the trailing CRC so the structural validation is reached), then the file.
#![no_main]

use latix_core::compressed::{Codec, QueryPlan};
use libfuzzer_sys::fuzz_target;
use std::path::Path;

fuzz_target!(|data: &[u8]| {
    let Some((_, b)) = latix_fuzz::sealed_input(data) else {
        return;
    };
    let Ok(codec) = Codec::from_bytes(&b, Path::new("fuzz-codec")) else {
        return;
    };
    // Every field is stored exactly (f16 centroids widen to f32 and back losslessly).
    assert_eq!(
        codec.to_bytes(),
        b,
        "accepted codec does not re-serialise to its bytes"
    );
    let (dim, k, m) = (codec.dim(), codec.n_centroids(), codec.n_subspaces());
    assert!(dim > 0 && k > 0 && m > 0 && m <= dim);
    // A query and a token derived from the input (finite, bounded).
    let q: Vec<f32> = (0..dim)
        .map(|i| (b[i % b.len()] as f32 - 127.5) / 64.0)
        .collect();
    for nprobe in [1, k.min(3), k] {
        if let Ok(plan) = QueryPlan::new(&codec, &q, nprobe) {
            drop(plan);
        }
    }
    let cids = codec.assign(&q);
    assert_eq!(cids.len(), 1);
    assert!((cids[0] as usize) < k);
    let (ec, codes) = codec.encode(&q);
    assert_eq!(ec.len(), 1);
    assert!((ec[0] as usize) < k);
    assert_eq!(codes.len(), m / 2);
    let x = codec.decode(&ec, &codes);
    assert_eq!(x.len(), dim);
});
