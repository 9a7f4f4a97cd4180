//! Fuzzes `FidSegment::from_bytes` (a fidelity tier's refinement file: header, levels, centroid
//! ids, block codes, the optional second residual stage of version 2, the level-set table of
//! version 3, the rotations, rates, levels, pooled indices and packed codes of a transform-coded
//! file of version 4) and every reader of a parsed file, and the lossless merge of a parsed file: never
//! panics or reads out of bounds, whatever the bytes. Input: a mode byte (bit 0: recompute the
//! trailing CRC so the structural validation is reached), then the file.
#![no_main]

use latix_core::compressed::fidelity::{
    merge, score_doc, score_doc_transform, FidQuery, FidSegment, MergeSource, TX_LEVELS,
};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Some((_, b)) = latix_fuzz::sealed_input(data) else {
        return;
    };
    let Ok(seg) = FidSegment::from_bytes(&b, true) else {
        return;
    };
    let (dim, k, n) = (seg.dim(), seg.n_centroids(), seg.n_tokens());
    if dim > 4096 || k > 1 << 16 {
        return; // valid but too large to score here
    }
    if seg.is_transform() {
        transform(&seg);
        return;
    }
    assert_eq!(seg.codes().len(), n.div_ceil(32) * seg.n_sub() * 16);
    assert_eq!(seg.codes2().len(), n.div_ceil(32) * seg.n_sub2() * 16);
    let nl2 = if seg.nbits2() > 0 { 1 << seg.nbits2() } else { 0 };
    let sets = seg.n_sets();
    assert_eq!(seg.levels2().len(), dim * nl2 * sets);
    assert_eq!(seg.levels().len(), dim * (1 << seg.nbits()) * sets);
    assert!(sets >= 1 && seg.set_starts()[0] == 0);
    for i in 0..sets {
        let (a, b) = seg.set_rows(i);
        assert!(a <= b && b <= n.max(a));
        assert_eq!(seg.set_of(a), i);
    }
    for t in 0..n.min(256) {
        assert!((seg.cid(t) as usize) < k);
        for d in 0..dim.min(64) {
            assert!(seg.level(t, d) < 1 << seg.nbits());
            if seg.nbits2() > 0 {
                assert!(seg.level2(t, d) < 1 << seg.nbits2());
            }
        }
    }
    let centroids = vec![0.5f32; k * dim];
    let m = n.min(64);
    let rows = seg.decode_rows(&centroids, 0, m).expect("decode");
    assert_eq!(rows.len(), m * dim);
    let q = vec![0.25f32; 2 * dim];
    let fq = FidQuery::new(&q, &seg);
    let cs = vec![0.1f32; 2 * k];
    let s = score_doc(&fq, &cs, k, &seg, 0, m, latix_core::simd::avx2());
    assert!(s.is_finite());
    // Each level set's rows scored, and merged (as documents) into a file that opens again and
    // scores them the same.
    let docs: Vec<(usize, usize)> = (0..sets)
        .map(|i| seg.set_rows(i))
        .filter(|r| r.1 - r.0 <= 256)
        .collect();
    let merged = merge(&[MergeSource {
        fid: &seg,
        docs: &docs,
    }])
    .expect("merge of a valid file");
    let again = FidSegment::from_bytes(merged.as_bytes(), true).expect("merged file parses");
    let mq = FidQuery::new(&q, &again);
    let mut u = 0;
    for &(a, b) in &docs {
        let want = score_doc(&fq, &cs, k, &seg, a, b, false);
        let got = score_doc(&mq, &cs, k, &again, u, u + b - a, false);
        assert_eq!(want.to_bits(), got.to_bits());
        u += b - a;
    }
});

/// The readers, decoder, kernel and merge of a transform-coded file (version 4).
fn transform(seg: &FidSegment) {
    let (dim, n, sets) = (seg.dim(), seg.n_tokens(), seg.n_sets());
    if dim > 512 {
        return; // a rotation of dim^2 floats per set: valid but slow to score here
    }
    assert_eq!(seg.codes().len(), n.div_ceil(32) * seg.n_sub() * 16);
    assert!(seg.levels().is_empty() && seg.codes2().is_empty());
    for i in 0..sets {
        let bits: usize = seg.rates(i).iter().map(|&r| r as usize).sum();
        assert_eq!(bits, seg.transform_bits());
        assert_eq!(seg.rotation(i).len(), dim * dim);
        assert_eq!(seg.component_levels(i).len(), dim * TX_LEVELS);
        let (a, b) = seg.set_rows(i);
        assert!(a <= b && b <= n.max(a));
    }
    let m = n.min(64);
    // Pooled vectors enough for every index the rows name.
    let np = (0..m).map(|t| seg.pooled_index(t) + 1).max().unwrap_or(1);
    let pooled = vec![0.5f32; np * dim];
    let rows = seg.decode_rows_transform(&pooled, 0, m).expect("decode");
    assert_eq!(rows.len(), m * dim);
    let q = vec![0.25f32; 2 * dim];
    let fq = FidQuery::new(&q, seg);
    let ps = vec![0.1f32; 2 * np];
    let s = score_doc_transform(&fq, &ps, np, seg, 0, m, latix_core::simd::avx2());
    assert!(s.is_finite() || m == 0);
    let docs: Vec<(usize, usize)> = (0..sets)
        .map(|i| seg.set_rows(i))
        .filter(|r| r.1 - r.0 <= 64)
        .collect();
    let merged = merge(&[MergeSource { fid: seg, docs: &docs }]).expect("merge of a valid file");
    let again = FidSegment::from_bytes(merged.as_bytes(), true).expect("merged file parses");
    let mq = FidQuery::new(&q, &again);
    let mut u = 0;
    for &(a, b) in &docs {
        let np = (a..b).map(|t| seg.pooled_index(t) + 1).max().unwrap_or(1);
        let ps = vec![0.1f32; 2 * np];
        let want = score_doc_transform(&fq, &ps, np, seg, a, b, false);
        let got = score_doc_transform(&mq, &ps, np, &again, u, u + b - a, false);
        assert_eq!(want.to_bits(), got.to_bits());
        u += b - a;
    }
}
