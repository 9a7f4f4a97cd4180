//! The one conversion of a compression configuration between Python and the core: the fields of
//! `latix.Compression` (python/latix/index.py), read by attribute name from any object that has
//! them (the dataclass itself), and written back as a dict of the same names.

use latix_core::compressed::Fidelity;
use latix_core::Compression;
use pyo3::prelude::*;

/// `latix.Compression` as the binding sees it: one field per attribute, same names, same order.
/// Types are checked by the dataclass; ranges by the core (`Compression::validate`).
#[derive(FromPyObject, IntoPyObject)]
pub struct CompressionArg {
    bytes_per_token: Option<usize>,
    n_centroids: Option<usize>,
    keep_vectors: bool,
    train_min_tokens: u64,
    train_sample_tokens: u64,
    seed: u64,
    pool_factor: usize,
    fidelity: String,
    expected_tokens: Option<u64>,
    retrain_growth: u32,
}

impl CompressionArg {
    /// The core's configuration (`InvalidArgument` for an unknown fidelity).
    pub fn into_core(self) -> latix_core::Result<Compression> {
        Ok(Compression {
            bytes_per_token: self.bytes_per_token,
            n_centroids: self.n_centroids,
            keep_vectors: self.keep_vectors,
            train_min_tokens: self.train_min_tokens,
            train_sample_tokens: self.train_sample_tokens,
            seed: self.seed,
            pool_factor: self.pool_factor,
            fidelity: Fidelity::parse(&self.fidelity)?,
            expected_tokens: self.expected_tokens,
            retrain_growth: self.retrain_growth,
        })
    }

    /// The configuration of an open index, for `latix.Compression(**d)`.
    pub fn from_core(c: &Compression) -> CompressionArg {
        CompressionArg {
            bytes_per_token: c.bytes_per_token,
            n_centroids: c.n_centroids,
            keep_vectors: c.keep_vectors,
            train_min_tokens: c.train_min_tokens,
            train_sample_tokens: c.train_sample_tokens,
            seed: c.seed,
            pool_factor: c.pool_factor,
            fidelity: c.fidelity.name().to_owned(),
            expected_tokens: c.expected_tokens,
            retrain_growth: c.retrain_growth,
        }
    }
}
