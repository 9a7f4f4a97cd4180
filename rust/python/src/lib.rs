//! latix._core: the PyO3 binding of latix-core. Each function validates and converts its
//! arguments, releases the GIL, calls the core and converts the result back. Nothing else.

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
    maxsim::register(m)?;
    compressed::register(m)?;
    index::register(m)?;
    Ok(())
}
