//! Helpers shared by the integration tests: the version-3 inverted-list format that latix wrote
//! before the document map, rebuilt from current lists (to test reading and upgrading it).

use latix_core::compressed::IvfSegment;

fn align64(x: usize) -> usize {
    x.div_ceil(64) * 64
}

/// Section offsets of a version-4 file: (list_tokens, list_blocks, doc_of_token, norm_scale,
/// doc_offsets, doc_positions, codes), as the module documentation of `ivf` lays them out.
pub fn v4_layout(seg: &IvfSegment) -> [usize; 7] {
    let nl = seg.list_tokens().len() - 1;
    let (nd, nt) = (seg.n_docs(), seg.n_tokens());
    let lt = 64;
    let lb = align64(lt + (nl + 1) * 4);
    let dt = align64(lb + (nl + 1) * 4);
    let ns = align64(dt + nt * 2);
    let doff = align64(ns + nt * 2);
    let dpos = align64(doff + (nd + 1) * 4);
    let codes = align64(dpos + nt * 4);
    [lt, lb, dt, ns, doff, dpos, codes]
}

pub fn with_crc(mut b: Vec<u8>) -> Vec<u8> {
    let n = b.len() - 4;
    let crc = crc32c::crc32c(&b[..n]);
    b[n..].copy_from_slice(&crc.to_le_bytes());
    b
}

/// The same lists in the version-3 format (f32 norm scales, no document map) that latix wrote
/// before the document map existed.
pub fn as_version_3(seg: &IvfSegment) -> Vec<u8> {
    let v4 = seg.as_bytes();
    let nt = seg.n_tokens();
    let [_, _, dt, ns, _, _, codes] = v4_layout(seg);
    let ns_end = align64(ns + nt * 4);
    let mut b = vec![0u8; ns_end];
    b[..dt + nt * 2].copy_from_slice(&v4[..dt + nt * 2]);
    b[8..12].copy_from_slice(&3u32.to_le_bytes());
    for t in 0..nt {
        b[ns + 4 * t..ns + 4 * t + 4].copy_from_slice(&seg.norm_scales().get(t).to_le_bytes());
    }
    b.extend_from_slice(&v4[codes..v4.len() - 4]);
    b.extend_from_slice(&[0; 4]);
    with_crc(b)
}
