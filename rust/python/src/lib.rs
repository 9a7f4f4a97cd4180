//! latix._core: the PyO3 binding of latix-core. Each function converts its arguments (checking
//! only what the binding alone holds: array shapes and dtypes it turns into slices, the codec a
//! segment was built with), releases the GIL, calls the core (which validates values) and
//! converts the result back. Nothing else: no algorithm lives here (`compressed.rs`'s search is
//! the core's `search_encoded`, the pipeline of an index search).
//!
//! Convention: every Python-visible item's doc comment starts with its Python signature
//! (`(a: int, b: str = "x") -> T`, `-> T` for a property), from which `scripts/gen_stubs.py`
//! generates `python/latix/_core/*.pyi`; `tests/test_stubs.py` fails when they are stale.

use pyo3::prelude::*;

mod arrays;
mod compressed;
mod compression;
mod errors;
mod index;
mod maxsim;

#[pymodule]
fn _core(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add("__version__", env!("CARGO_PKG_VERSION"))?;
    // Segment layout constants of the core, for tests that damage files at chosen places (so
    // that they never copy the layout).
    use latix_core::store::segment::{HEADER_SIZE, SECTIONS_AT, SECTION_DESC_LEN};
    m.add("SEGMENT_HEADER_SIZE", HEADER_SIZE)?;
    m.add("SEGMENT_SECTIONS_AT", SECTIONS_AT)?;
    m.add("SEGMENT_SECTION_DESC_LEN", SECTION_DESC_LEN)?;
    maxsim::register(m)?;
    compressed::register(m)?;
    index::register(m)?;
    Ok(())
}
