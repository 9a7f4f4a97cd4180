//! The codec file: a self-describing, checksummed byte string (magic, version, parameters,
//! centroids, codebooks, crc32c), validated field by field when read.

use half::f16;

use super::*;
use crate::error::{LatixError, Result};
use crate::format;

impl Codec {
    /// Serialises to a self-describing, checksummed byte string.
    pub fn to_bytes(&self) -> Vec<u8> {
        let mut b = Vec::new();
        format::put_header(&mut b, MAGIC, VERSION);
        for v in [
            self.dim as u32,
            self.n_centroids() as u32,
            (self.group_off.len() - 1) as u32,
            self.m as u32,
            KSUB as u32,
            self.eta.to_bits(),
        ] {
            b.extend_from_slice(&v.to_le_bytes());
        }
        for &v in &self.group_off {
            b.extend_from_slice(&v.to_le_bytes());
        }
        for &v in &self.top {
            b.extend_from_slice(&v.to_le_bytes());
        }
        for &v in &self.centroids {
            b.extend_from_slice(&f16::from_f32(v).to_le_bytes());
        }
        for &v in &self.codebooks {
            b.extend_from_slice(&v.to_le_bytes());
        }
        format::seal(&mut b);
        b
    }

    /// Bytes of a codec file's start that [`Codec::n_centroids_in_header`] reads.
    pub(crate) const HEADER_PREFIX_LEN: usize = 8 + 12;

    /// The number of centroids a codec file's first [`Codec::HEADER_PREFIX_LEN`] bytes give
    /// (`None`: not the start of a codec file of this version), without the checksum or any other
    /// check of [`Codec::from_bytes`] (for a cheap look at a file loaded in full elsewhere).
    pub(crate) fn n_centroids_in_header(head: &[u8]) -> Option<usize> {
        if head.len() < Self::HEADER_PREFIX_LEN
            || !format::has_magic(head, MAGIC)
            || format::header_u32(head, 0) != VERSION
        {
            return None;
        }
        Some(format::header_u32(head, 2) as usize)
    }

    /// Parses [`Codec::to_bytes`] output, validating magic, version, sizes and checksum. `path`
    /// only names the source in errors.
    pub fn from_bytes(b: &[u8], path: &std::path::Path) -> Result<Codec> {
        let bad = |d: &str| LatixError::corrupted(path, format!("codec: {d}"));
        if b.len() < 8 + 28 + 4 || !format::has_magic(b, MAGIC) {
            return Err(bad("not a latix codec file (bad magic or too short)"));
        }
        if !format::checksum_ok(b) {
            return Err(bad("checksum mismatch"));
        }
        let body = &b[..b.len() - format::CHECKSUM_LEN];
        let rd = |i: usize| format::header_u32(body, i) as usize;
        let (version, dim, k, g, m, ksub) = (rd(0), rd(1), rd(2), rd(3), rd(4), rd(5));
        let eta = f32::from_bits(rd(6) as u32);
        if version != VERSION as usize {
            return Err(LatixError::UnsupportedVersion {
                path: path.into(),
                detail: format!("codec format version {version}, this latix reads {VERSION}"),
            });
        }
        if dim == 0
            || k == 0
            || g == 0
            || g > k
            || m == 0
            || m % 2 != 0
            || m > dim
            || ksub != KSUB
            || m > 256
            || !(eta.is_finite() && eta > 0.0)
        {
            return Err(bad(&format!(
                "inconsistent header (dim {dim}, K {k}, G {g}, M {m}, ksub {ksub}, eta {eta})"
            )));
        }
        let need = 36usize
            .checked_add((g + 1) * 4)
            .and_then(|v| v.checked_add(g.checked_mul(dim)?.checked_mul(4)?))
            .and_then(|v| v.checked_add(k.checked_mul(dim)?.checked_mul(2)?))
            .and_then(|v| v.checked_add(KSUB * dim * 4))
            .ok_or_else(|| bad("sizes overflow"))?;
        if body.len() != need {
            return Err(bad(&format!(
                "expected {need} bytes before the checksum, found {}",
                body.len()
            )));
        }
        let mut pos = 36;
        let mut take = |len: usize| {
            let s = &body[pos..pos + len];
            pos += len;
            s
        };
        let group_off: Vec<u32> = take((g + 1) * 4)
            .chunks_exact(4)
            .map(|c| format::le_u32(c, 0))
            .collect();
        let top: Vec<f32> = take(g * dim * 4)
            .chunks_exact(4)
            .map(|c| f32::from_bits(format::le_u32(c, 0)))
            .collect();
        let centroids: Vec<f32> = take(k * dim * 2)
            .chunks_exact(2)
            .map(|c| f16::from_bits(format::le_u16(c, 0)).to_f32())
            .collect();
        let codebooks: Vec<f32> = take(KSUB * dim * 4)
            .chunks_exact(4)
            .map(|c| f32::from_bits(format::le_u32(c, 0)))
            .collect();
        if group_off[0] != 0
            || group_off[g] as usize != k
            || group_off.windows(2).any(|w| w[1] <= w[0])
        {
            return Err(bad("top-cluster ranges are not increasing from 0 to K"));
        }
        if top
            .iter()
            .chain(&centroids)
            .chain(&codebooks)
            .any(|v| !v.is_finite())
        {
            return Err(bad("non-finite parameter"));
        }
        // Training sees values within MAX_ABS_VALUE, so its means and residual codewords are
        // within twice that; beyond, a crafted file's finite values overflow the squared
        // distances and scores of encoding and search (every score -inf: an empty result).
        let limit = 2.0 * crate::maxsim::MAX_ABS_VALUE;
        if let Some(v) = top.iter().chain(&codebooks).find(|v| v.abs() > limit) {
            return Err(bad(&format!(
                "parameter {v:e} beyond the range training produces (|x| <= {limit:e})"
            )));
        }
        Ok(Codec::from_parts(
            dim, m, eta, group_off, top, centroids, codebooks,
        ))
    }
}
