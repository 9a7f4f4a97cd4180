//! The building blocks of every latix file format, written once: the header (8-byte magic and a
//! little-endian `u32` format version), the trailing crc32c seal, little-endian field reads and
//! the one atomic file write.
//!
//! Every hand-rolled binary file of latix starts with `magic (8 bytes) | version u32 LE` and is
//! little-endian throughout (the store refuses big-endian targets at compile time). Codec,
//! compression configuration, manifest, inverted lists and refinement files end with the crc32c
//! (Castagnoli, as in iSCSI/ext4) of every byte before it ([`seal`], [`checksum_ok`]); that
//! trailing value is also what a manifest records to bind a named file to it
//! ([`trailing_checksum`]). Segment files instead checksum their fixed 256-byte header at a fixed
//! offset and each section separately (see `store::segment`), but read and write the same header
//! prefix and fields with these helpers.
//!
//! Files are written as a temporary file in the same directory, fsynced, renamed over the target
//! and the directory fsynced ([`write_atomic`]), so a reader sees the old or the new file, never
//! a torn one, and the rename survives a crash.

use std::fs::File;
use std::io::Write;
use std::path::{Path, PathBuf};

use crate::error::{LatixError, Result};

/// Length of a file's magic.
pub const MAGIC_LEN: usize = 8;
/// Length of the header prefix every latix file starts with: magic, then the version `u32`.
pub const PREFIX_LEN: usize = MAGIC_LEN + 4;
/// Length of the trailing crc32c of a sealed file.
pub const CHECKSUM_LEN: usize = 4;
/// Prefix of temporary files (removed by the next writer if a process died mid-write).
pub const TMP_PREFIX: &str = "tmp-";

/// Appends the header prefix (`magic`, then `version` LE) to `out`.
pub fn put_header(out: &mut Vec<u8>, magic: &[u8; MAGIC_LEN], version: u32) {
    out.extend_from_slice(magic);
    out.extend_from_slice(&version.to_le_bytes());
}

/// Writes `magic` at the start of `out`, then `fields` as consecutive `u32` LE (the first one is
/// the version). `out` must hold `MAGIC_LEN + 4 * fields.len()` bytes.
pub fn write_header(out: &mut [u8], magic: &[u8; MAGIC_LEN], fields: &[u32]) {
    out[..MAGIC_LEN].copy_from_slice(magic);
    for (i, v) in fields.iter().enumerate() {
        let at = MAGIC_LEN + 4 * i;
        out[at..at + 4].copy_from_slice(&v.to_le_bytes());
    }
}

/// True if `b` starts with `magic`.
pub fn has_magic(b: &[u8], magic: &[u8; MAGIC_LEN]) -> bool {
    b.get(..MAGIC_LEN) == Some(&magic[..])
}

/// The format version of `b` if it starts with `magic` and holds the whole header prefix.
pub fn version(b: &[u8], magic: &[u8; MAGIC_LEN]) -> Option<u32> {
    (has_magic(b, magic) && b.len() >= PREFIX_LEN).then(|| le_u32(b, MAGIC_LEN))
}

/// The `i`-th `u32` header field after the magic (field 0 is the version). `b` must hold it.
#[inline]
pub fn header_u32(b: &[u8], i: usize) -> u32 {
    le_u32(b, MAGIC_LEN + 4 * i)
}

/// Appends the crc32c of everything in `out` (seals the file).
pub fn seal(out: &mut Vec<u8>) {
    let crc = crc32c::crc32c(out);
    out.extend_from_slice(&crc.to_le_bytes());
}

/// Writes the crc32c of `b[..end]` into `b[end..end + 4]` (seals a preallocated file).
pub fn seal_at(b: &mut [u8], end: usize) {
    let crc = crc32c::crc32c(&b[..end]);
    b[end..end + CHECKSUM_LEN].copy_from_slice(&crc.to_le_bytes());
}

/// Recomputes the trailing crc32c of a sealed file in place (nothing if shorter than the
/// checksum): lets tests and fuzz targets reach the validation behind the checksum.
pub fn reseal(b: &mut [u8]) {
    if let Some(end) = b.len().checked_sub(CHECKSUM_LEN) {
        seal_at(b, end);
    }
}

/// The last four bytes of `b` as a `u32` (a sealed file's crc32c), `None` if shorter.
pub fn trailing_checksum(b: &[u8]) -> Option<u32> {
    let n = b.len().checked_sub(CHECKSUM_LEN)?;
    Some(le_u32(b, n))
}

/// True if `b` ends with the crc32c of the bytes before it.
pub fn checksum_ok(b: &[u8]) -> bool {
    match b.len().checked_sub(CHECKSUM_LEN) {
        Some(n) => crc32c::crc32c(&b[..n]) == le_u32(b, n),
        None => false,
    }
}

/// Little-endian `u16` at byte `at` (`b` must hold `at + 2` bytes; callers check lengths first).
#[inline]
pub fn le_u16(b: &[u8], at: usize) -> u16 {
    u16::from_le_bytes([b[at], b[at + 1]])
}

/// Little-endian `u32` at byte `at` (`b` must hold `at + 4` bytes).
#[inline]
pub fn le_u32(b: &[u8], at: usize) -> u32 {
    u32::from_le_bytes([b[at], b[at + 1], b[at + 2], b[at + 3]])
}

/// Little-endian `u64` at byte `at` (`b` must hold `at + 8` bytes).
#[inline]
pub fn le_u64(b: &[u8], at: usize) -> u64 {
    let mut a = [0u8; 8];
    a.copy_from_slice(&b[at..at + 8]);
    u64::from_le_bytes(a)
}

/// A forward reader of little-endian fields that returns `None` instead of reading past the end
/// (for variable-length formats such as the manifest).
#[derive(Clone, Debug)]
pub struct Reader<'a> {
    b: &'a [u8],
    at: usize,
}

impl<'a> Reader<'a> {
    /// A reader of `b` positioned at byte `at`.
    pub fn new(b: &'a [u8], at: usize) -> Self {
        Reader { b, at }
    }
    /// Bytes left after the position.
    pub fn remaining(&self) -> usize {
        self.b.len().saturating_sub(self.at)
    }
    /// The next `n` bytes.
    pub fn take(&mut self, n: usize) -> Option<&'a [u8]> {
        let end = self.at.checked_add(n)?;
        let s = self.b.get(self.at..end)?;
        self.at = end;
        Some(s)
    }
    /// The next `u32`.
    pub fn u32(&mut self) -> Option<u32> {
        self.take(4).map(|s| le_u32(s, 0))
    }
    /// The next `u64`.
    pub fn u64(&mut self) -> Option<u64> {
        self.take(8).map(|s| le_u64(s, 0))
    }
}

/// A fresh name for a temporary file of `what` (unique within the process and across processes;
/// starts with [`TMP_PREFIX`]).
pub(crate) fn tmp_name(what: &str) -> String {
    use std::sync::atomic::{AtomicU64, Ordering};
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or(0);
    format!(
        "{TMP_PREFIX}{what}-{}-{nanos}-{}",
        std::process::id(),
        COUNTER.fetch_add(1, Ordering::Relaxed)
    )
}

/// fsyncs a directory so that renames and unlinks in it are durable.
pub(crate) fn fsync_dir(dir: &Path) -> Result<()> {
    let d = File::open(dir).map_err(|e| LatixError::io(dir, e))?;
    d.sync_all().map_err(|e| LatixError::io(dir, e))
}

/// Writes `bytes` to `dir/name` atomically: temp file, fsync, rename, fsync directory. The temp
/// file is removed on failure.
pub(crate) fn write_atomic(dir: &Path, name: &str, bytes: &[u8]) -> Result<PathBuf> {
    let tmp = dir.join(tmp_name(name));
    let target = dir.join(name);
    let res = (|| {
        let mut f = File::create(&tmp).map_err(|e| LatixError::io(&tmp, e))?;
        f.write_all(bytes).map_err(|e| LatixError::io(&tmp, e))?;
        f.sync_all().map_err(|e| LatixError::io(&tmp, e))?;
        drop(f);
        std::fs::rename(&tmp, &target).map_err(|e| LatixError::io(&target, e))?;
        fsync_dir(dir)
    })();
    if res.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    res.map(|_| target)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn header_seal_and_reads_round_trip() {
        let mut b = Vec::new();
        put_header(&mut b, b"ABCDEFGH", 7);
        b.extend_from_slice(&0x0102_0304u32.to_le_bytes());
        b.extend_from_slice(&0x1122_3344_5566_7788u64.to_le_bytes());
        assert_eq!(version(&b, b"ABCDEFGH"), Some(7));
        assert_eq!(version(&b, b"ABCDEFGX"), None);
        assert_eq!(version(&b[..11], b"ABCDEFGH"), None);
        assert_eq!(header_u32(&b, 1), 0x0102_0304);
        assert_eq!(le_u64(&b, 16), 0x1122_3344_5566_7788);
        assert_eq!(le_u16(&b, 12), 0x0304);
        let mut s = b.clone();
        seal(&mut s);
        assert!(checksum_ok(&s));
        assert_eq!(trailing_checksum(&s), Some(crc32c::crc32c(&b)));
        let mut fixed = vec![0u8; b.len() + 4];
        fixed[..b.len()].copy_from_slice(&b);
        seal_at(&mut fixed, b.len());
        assert_eq!(fixed, s);
        let mut h = vec![0u8; 20];
        write_header(&mut h, b"ABCDEFGH", &[7, 0x0102_0304, 9]);
        assert_eq!(&h[..16], &b[..16]);
        assert_eq!(header_u32(&h, 2), 9);
        for i in 0..s.len() {
            let mut d = s.clone();
            d[i] ^= 0x10;
            assert!(!checksum_ok(&d), "flip at {i}");
            reseal(&mut d);
            assert!(checksum_ok(&d));
        }
        assert!(!checksum_ok(&s[..3]));
        let mut r = Reader::new(&b, 12);
        assert_eq!(r.u32(), Some(0x0102_0304));
        assert_eq!(r.remaining(), 8);
        assert_eq!(r.u64(), Some(0x1122_3344_5566_7788));
        assert_eq!(r.u32(), None);
    }

    #[test]
    fn write_atomic_replaces_and_leaves_no_temp() {
        let d = tempfile::tempdir().unwrap();
        write_atomic(d.path(), "f", b"one").unwrap();
        let p = write_atomic(d.path(), "f", b"two").unwrap();
        assert_eq!(std::fs::read(p).unwrap(), b"two");
        let names: Vec<_> = std::fs::read_dir(d.path()).unwrap().collect();
        assert_eq!(names.len(), 1);
        assert!(write_atomic(&d.path().join("missing"), "f", b"x").is_err());
    }
}
