//! Fuzzes `Compression::decode` (the `idx-compression-*` file: a compressed index's persisted
//! configuration, versions 1 and 2) and its validation: never panics, whatever the bytes; a
//! version-2 file it accepts re-encodes to the same bytes. Input: a mode byte (bit 0: recompute
//! the trailing CRC so the field checks are reached), then the file.
#![no_main]

use latix_core::compressed::config::{CONFIG_MAGIC, CONFIG_VERSION_CODES};
use latix_core::format;
use latix_core::Compression;
use libfuzzer_sys::fuzz_target;
use std::path::Path;

fuzz_target!(|data: &[u8]| {
    let Some((_, b)) = latix_fuzz::sealed_input(data) else {
        return;
    };
    let Ok(c) = Compression::decode(&b, Path::new("fuzz-compression")) else {
        return;
    };
    if format::version(&b, CONFIG_MAGIC) == Some(CONFIG_VERSION_CODES) {
        assert_eq!(
            c.encode(),
            b,
            "accepted config does not re-encode to its bytes"
        );
    }
    // What a reader does next with it: validation against the index's dimension.
    for dim in [1usize, 2, 7, 32, 128, 384, 4096] {
        let _ = c.code_bytes(dim);
        let _ = c.validate(dim);
    }
});
