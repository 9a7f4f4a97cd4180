//! Regression tests for inputs the fuzz targets (fuzz/fuzz_targets/*, run by `make check`) found:
//! each damaged file must be an error, never a panic.

use latix_core::compressed::kmeans::Rng;
use latix_core::compressed::{codec_checksum, Codec, CodecParams, IvfSegment};
use latix_core::maxsim::DocVectors;

/// A small inverted-list file (v4) of 60 random documents, 8-d, 8 centroids.
fn ivf_bytes() -> (Vec<u8>, usize) {
    let dim = 8;
    let mut rng = Rng::new(4);
    let (mut v, mut off) = (Vec::new(), vec![0u64]);
    for _ in 0..60 {
        for _ in 0..1 + rng.below(8) {
            v.extend((0..dim).map(|_| (rng.next_u64() >> 40) as f32 / (1u64 << 24) as f32 - 0.5));
        }
        off.push((v.len() / dim) as u64);
    }
    let p = CodecParams {
        n_centroids: Some(8),
        bytes_per_token: Some(2),
        kmeans_iters: Some(4),
        seed: 1,
    };
    let codec = Codec::train(&v, dim, v.len() / dim, &p, Some(1)).unwrap();
    let crc = codec_checksum(&codec.to_bytes());
    let seg = IvfSegment::build(&codec, crc, DocVectors::F32(&v), &off).unwrap();
    (seg.as_bytes().to_vec(), v.len() / dim)
}

fn with_crc(mut b: Vec<u8>) -> Vec<u8> {
    let n = b.len() - 4;
    let crc = crc32c::crc32c(&b[..n]);
    b[n..].copy_from_slice(&crc.to_le_bytes());
    b
}

#[test]
fn ivf_sub_list_past_the_tokens_is_an_error_not_a_panic() {
    // Found by fuzz/fuzz_targets/ivf_parse.rs on stable (`make check`): a sub-list offset larger
    // than the token count, with a valid checksum, made from_bytes slice past the document
    // numbers ("range end index 356 out of range for slice of length 355").
    let (good, n_tokens) = ivf_bytes();
    assert!(IvfSegment::from_bytes(&good, true).is_ok());
    // Layout (ivf.rs): 64-byte header, then list_tokens[n_lists + 1] (u32), then list_blocks
    // aligned to 64 bytes; n_lists = 8 centroids x 1 document chunk.
    const LT: usize = 64;
    const LB: usize = 128;
    let u32_at = |b: &[u8], at: usize| u32::from_le_bytes(b[at..at + 4].try_into().unwrap());
    for l in [1usize, 2, 5] {
        let mut b = good.clone();
        // Sub-list l - 1 ends one token past the end; its block count agrees, so only the
        // token range is wrong.
        let end = n_tokens as u32 + 1;
        let blocks =
            u32_at(&b, LB + 4 * (l - 1)) + (end - u32_at(&b, LT + 4 * (l - 1))).div_ceil(32);
        b[LT + 4 * l..LT + 4 * l + 4].copy_from_slice(&end.to_le_bytes());
        b[LB + 4 * l..LB + 4 * l + 4].copy_from_slice(&blocks.to_le_bytes());
        let err = IvfSegment::from_bytes(&with_crc(b), true)
            .err()
            .unwrap_or_else(|| panic!("sub-list {l} past the end was accepted"));
        assert!(err.to_string().contains("sub-list"), "{err}");
    }
}
