//! Fuzzes `Manifest::decode`: never panics; whatever it accepts re-encodes to the same bytes.
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
        let enc = m.encode();
        assert_eq!(
            enc, b,
            "decode accepted bytes that do not re-encode identically"
        );
        let _ = m.referenced_files();
    }
});
