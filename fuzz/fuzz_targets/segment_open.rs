//! Fuzzes `Segment::open` (header, section table, offsets, ids) and every reader of an opened
//! segment: never panics or reads out of bounds, whatever the bytes.
#![no_main]

use latix_core::store::{Dtype, Segment};
use libfuzzer_sys::fuzz_target;
use std::sync::OnceLock;

static DIR: OnceLock<std::path::PathBuf> = OnceLock::new();

fuzz_target!(|data: &[u8]| {
    let Some((&mode, rest)) = data.split_first() else {
        return;
    };
    let mut b = rest.to_vec();
    if mode & 1 == 1 {
        latix_fuzz::fixup_segment(&mut b);
    }
    let dir = DIR.get_or_init(latix_fuzz::scratch_dir);
    let path = dir.join("seg-0000000000.lxs");
    if std::fs::write(&path, &b).is_err() {
        return;
    }
    // Take dim and dtype from the header, so that mismatches are not all the fuzzer finds.
    let (dim, dtype) = if b.len() >= 20 {
        // Header fields 1 and 2 after the magic (field 0 is the version): dtype, dim.
        let dt = latix_core::format::header_u32(&b, 1);
        let dim = latix_core::format::header_u32(&b, 2) as usize;
        (dim, if dt == 1 { Dtype::F16 } else { Dtype::F32 })
    } else {
        (16, Dtype::F32)
    };
    if dim == 0 {
        return;
    }
    let expected = if mode & 2 == 2 {
        latix_fuzz::segment_header_crc(&b)
    } else {
        None
    };
    if let Ok(seg) = Segment::open(&path, dim, dtype, expected) {
        let n = seg.n_docs() as u32;
        for d in 0..n.min(256) {
            let (a, e) = seg.doc_range(d);
            assert!(a <= e && e <= seg.n_tokens());
            if let Ok(rows) = seg.rows_checked(a, e) {
                assert_eq!(rows.len() as u64, (e - a) * dim as u64);
            }
            if let Ok(id) = seg.id(d) {
                let id = id.to_owned();
                let _ = seg.find(&id);
            }
        }
        let _ = seg.verify();
        let _ = seg.find("");
        let _ = seg.find("zzzz");
    }
});
