//! Fuzzes `IvfSegment::from_bytes` (inverted lists: header, list offsets, document numbers, norm
//! scales, the version-4 document map) and every reader of parsed lists: never panics or reads
//! out of bounds, whatever the bytes. Input: a mode byte (bit 0: recompute the trailing CRC so
//! the structural validation is reached), then the file.
#![no_main]

use latix_core::compressed::IvfSegment;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Some((_, b)) = latix_fuzz::sealed_input(data) else {
        return;
    };
    let Ok(seg) = IvfSegment::from_bytes(&b, true) else {
        return;
    };
    let norms = seg.norm_scales();
    assert_eq!(norms.len(), seg.n_tokens());
    for d in 0..seg.n_docs().min(512) {
        if let Some(p) = seg.doc_positions(d) {
            for &t in p {
                let t = t as usize;
                assert!(t < seg.n_tokens());
                let l = seg.list_of_position(t);
                assert_eq!(seg.token_codes(l, t).len(), seg.n_subspaces() / 2);
                let _ = norms.get(t);
            }
        }
    }
    for c in 0..seg.n_centroids().min(4096) {
        let _ = seg.list_len(c);
        for (a, e, blk, _) in seg.sublists(c) {
            assert!(a <= e && e <= seg.n_tokens());
            assert!((blk + (e - a).div_ceil(32)) * seg.n_subspaces() * 16 <= seg.codes().len());
        }
    }
});
