//! Fuzzes `Manifest::decode`: never panics; whatever it accepts re-encodes to the same bytes (in
//! the format version it was read in).
#![no_main]

use latix_core::store::Manifest;
use libfuzzer_sys::fuzz_target;
use std::path::Path;

fuzz_target!(|data: &[u8]| {
    let Some((&mode, rest)) = data.split_first() else {
        return;
    };
    let mut b = rest.to_vec();
    if mode & 1 == 1 {
        latix_fuzz::fixup_manifest(&mut b);
    }
    if let Ok(m) = Manifest::decode(&b, Path::new("MANIFEST-fuzz")) {
        // Version 1 (no named-file checksums) is still read: it re-encodes in its own format.
        let enc = if b[8..12] == 1u32.to_le_bytes() {
            m.encode_v1()
        } else {
            m.encode()
        };
        assert_eq!(
            enc, b,
            "decode accepted bytes that do not re-encode identically"
        );
        let _ = m.referenced_files();
    }
});
