//! Fuzzes `Manifest::decode`: never panics; whatever it accepts re-encodes to the same bytes (in
//! the format version it was read in).
#![no_main]

use latix_core::store::manifest::{MANIFEST_MAGIC, MANIFEST_VERSION_V1};
use latix_core::store::Manifest;
use libfuzzer_sys::fuzz_target;
use std::path::Path;

fuzz_target!(|data: &[u8]| {
    let Some((_, b)) = latix_fuzz::sealed_input(data) else {
        return;
    };
    if let Ok(m) = Manifest::decode(&b, Path::new("MANIFEST-fuzz")) {
        // Version 1 (no named-file checksums) is still read: it re-encodes in its own format.
        let enc = if latix_core::format::version(&b, MANIFEST_MAGIC) == Some(MANIFEST_VERSION_V1) {
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
