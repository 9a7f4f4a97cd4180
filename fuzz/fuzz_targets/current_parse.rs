//! Fuzzes the parser of `CURRENT` (the name of the live manifest): never panics, and whatever it
//! accepts is a plain manifest file name (no path traversal).
#![no_main]

use latix_core::store::snapshot::read_current;
use libfuzzer_sys::fuzz_target;
use std::sync::OnceLock;

static DIR: OnceLock<std::path::PathBuf> = OnceLock::new();

fuzz_target!(|data: &[u8]| {
    let dir = DIR.get_or_init(latix_fuzz::scratch_dir);
    if std::fs::write(dir.join("CURRENT"), data).is_err() {
        return;
    }
    if let Ok(name) = read_current(dir) {
        assert!(
            name.starts_with("MANIFEST-") && latix_core::store::manifest::is_plain_file_name(&name)
        );
        assert!(!name.contains('/') && !name.contains(".."));
    }
});
