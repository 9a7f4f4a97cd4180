//! The configuration of a compressed index ([`Compression`]), persisted as the index-level file
//! `compression` (magic, version, fixed-size little-endian fields, crc32c) at create.

use std::path::Path;

use super::fidelity::Fidelity;
use crate::error::{LatixError, Result};
use crate::format;
use crate::store::Snapshot;

/// Name of the index-level file holding the [`Compression`] configuration.
pub const CONFIG_FILE: &str = "compression";
/// Name of the index-level file holding the trained codec.
pub const CODEC_FILE: &str = "codec";
/// Name of the per-segment side file holding the segment's inverted lists of codes.
pub const IVF_FILE: &str = "ivf";

/// Magic bytes at the start of a compression configuration file.
pub const CONFIG_MAGIC: &[u8; 8] = b"LTXCOMPR";
/// Current format version of the compression configuration (written when a growth setting,
/// `expected_tokens` or `retrain_growth`, is set).
pub const CONFIG_VERSION: u32 = 4;
/// Format version a fidelity tier's configuration without growth settings is written in.
pub const CONFIG_VERSION_TIERED: u32 = 3;
/// Format version a `codes` (default-tier) configuration is written in.
pub const CONFIG_VERSION_CODES: u32 = 2;
/// Version 1 had no pool factor (it reads as 1), version 2 no fidelity tier (it reads as
/// `codes`), version 3 no growth settings (they read as none). A configuration is written in the
/// oldest version that holds it (a `codes` one without growth settings still as version 2), so
/// an index that does not use a newer setting stays readable by the latix that wrote the older
/// version.
const CONFIG_LEN_V1: usize = 8 + 4 + 4 + 4 + 4 + 8 + 8 + 8 + 4;
const CONFIG_LEN_V2: usize = CONFIG_LEN_V1 + 4;
const CONFIG_LEN_V3: usize = CONFIG_LEN_V2 + 4;
const CONFIG_LEN: usize = CONFIG_LEN_V3 + 8 + 4;
/// Largest accepted token-pooling factor.
pub const MAX_POOL_FACTOR: usize = 8;

/// Smallest accepted `train_min_tokens` / `train_sample_tokens` (the codec's training minimum).
pub const MIN_TRAIN_TOKENS: u64 = crate::compressed::codec::MIN_TRAIN_TOKENS as u64;

/// Configuration of a compressed index (persisted in the index, fixed at create).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Compression {
    /// Bytes of residual code per token (`None`: the codec default, `dim / 16` for dim >= 256).
    pub bytes_per_token: Option<usize>,
    /// Number of coarse centroids (`None`: automatic from the token count at training time).
    pub n_centroids: Option<usize>,
    /// Keep the full vectors (f16/f32, memory-mapped) for exact re-ranking and exact `get`.
    pub keep_vectors: bool,
    /// Live tokens at which the first commit trains the codec (before that: exact search).
    pub train_min_tokens: u64,
    /// Tokens sampled (seeded, uniformly over live tokens) to train the codec.
    pub train_sample_tokens: u64,
    /// Seed of the sample and of k-means.
    pub seed: u64,
    /// Token pooling factor (see [`crate::compressed::pool`]): each document is stored with
    /// `ceil(n / pool_factor)` pooled vectors; 1 = no pooling.
    pub pool_factor: usize,
    /// Storage tier (see [`crate::compressed::fidelity`]): refinement data per original token
    /// beside the codes, used to re-rank the short list when the vectors are not kept.
    pub fidelity: Fidelity,
    /// Tokens (original, unpooled) the index is expected to hold (`None`: unknown). The codec
    /// trains with the automatic K of that size (and a sample of at least
    /// [`SAMPLE_PER_CENTROID`] vectors per centroid) from its first training, instead of the
    /// size of the index at that commit.
    pub expected_tokens: Option<u64>,
    /// Growth retraining (0: off): once the index holds `retrain_growth` times the pooled tokens
    /// its codec's K is the automatic count for (see [`Compression::growth_due`]), the commit
    /// is followed by a compaction that retrains the codec with K of the current size and
    /// re-encodes every segment. Applies to an automatic K (`n_centroids` unset) only; the
    /// effective factor is a power of 4 near it (see [`Compression::growth_due`]).
    /// The cost is a whole-index rewrite inside that commit (see `crate::index::merge`); refused
    /// with a given codec (`Index::create_with_codec`).
    pub retrain_growth: u32,
}

/// Fewest training vectors per centroid the sample of an automatic K holds (the sample grows
/// past `train_sample_tokens` when K needs it; k-means caps the points it uses per centroid).
pub const SAMPLE_PER_CENTROID: u64 = 32;
/// Largest accepted `retrain_growth`.
pub const MAX_RETRAIN_GROWTH: u32 = 1 << 16;

impl Default for Compression {
    fn default() -> Self {
        Compression {
            bytes_per_token: None,
            n_centroids: None,
            keep_vectors: false,
            train_min_tokens: 65_536,
            train_sample_tokens: 262_144,
            seed: 0,
            pool_factor: 2,
            fidelity: Fidelity::Codes,
            expected_tokens: None,
            retrain_growth: 0,
        }
    }
}

impl Compression {
    /// Bytes of code per stored (pooled) vector for dimension `dim`: `bytes_per_token`, or by
    /// default the codec's default (`dim / 16`, `dim / 8` below 256 dims) times the pool factor, so
    /// the bytes per original token stay the same as unpooled while each pooled vector gets a finer
    /// code (falls back to the codec default when that multiple does not split `dim` evenly).
    pub fn code_bytes(&self, dim: usize) -> usize {
        if let Some(b) = self.bytes_per_token {
            return b;
        }
        let base = if dim >= 256 { dim / 16 } else { dim / 8 }.max(1);
        let scaled = base * self.pool_factor.max(1);
        // Even subspaces (2 * bytes dividing dim) keep the scan's subspaces uniform.
        if 2 * scaled <= dim && dim.is_multiple_of(2 * scaled) && scaled <= 128 {
            scaled
        } else {
            base
        }
    }

    /// Pooled vectors the codec's automatic K is chosen for when the index holds `pooled_live`
    /// pooled vectors: that count, or the pooled equivalent of `expected_tokens` when larger.
    pub fn k_basis(&self, pooled_live: u64) -> u64 {
        let pool = self.pool_factor.max(1) as u64;
        let hint = self.expected_tokens.map_or(0, |e| e.div_ceil(pool));
        pooled_live.max(hint)
    }

    /// Pooled vectors sampled to train a codec of `k` centroids: `train_sample_tokens`, or with
    /// an automatic K at least [`SAMPLE_PER_CENTROID`] per centroid (up to 2^20 vectors, so a
    /// large K is not trained on a thin sample). This holds for every automatic-K configuration,
    /// not only with `expected_tokens`: from K > 8,192 (a first training of ~30M pooled
    /// vectors, a `compact(retrain=True)` of a large index, `train_codec` with a large hint) the
    /// sample grows past the default 262,144, up to 2^20 vectors (~1.5 GB of f32 at 384-d).
    pub fn sample_tokens(&self, k: usize) -> u64 {
        if self.n_centroids.is_some() {
            return self.train_sample_tokens;
        }
        let per_k = (k as u64).saturating_mul(SAMPLE_PER_CENTROID).min(1 << 20);
        self.train_sample_tokens.max(per_k)
    }

    /// The number of centroids a training of an index holding `pooled_live` pooled vectors
    /// would give (the one function the training and the growth trigger share): `n_centroids`,
    /// or the automatic K of [`Compression::k_basis`] clamped as `Codec::train` clamps it, to a
    /// quarter of the training sample (the sample is [`Compression::sample_tokens`] of that K,
    /// at most the live vectors). The sample is a seeded random draw, so a training may give a
    /// few centroids fewer than this when the clamp applies.
    pub fn trained_k(&self, pooled_live: u64) -> usize {
        if let Some(k) = self.n_centroids {
            return k;
        }
        let auto = crate::compressed::default_n_centroids(self.k_basis(pooled_live) as usize);
        let sample = self.sample_tokens(auto).min(pooled_live);
        auto.min((sample / 4) as usize).max(1)
    }

    /// True when an index holding `pooled_live` pooled vectors, whose codec has `k` centroids,
    /// is due for a growth retraining (see `retrain_growth`): the setting is on, K is automatic,
    /// `pooled_live` reaches `retrain_growth` times the count K is the automatic choice for
    /// (`(K / 3)^2`, the inverse of [`crate::compressed::default_n_centroids`]'s `3 * sqrt(n)`),
    /// and a retraining would train at least twice as many centroids ([`Compression::trained_k`];
    /// so a retraining never repeats at the same size, nor at every commit when the training
    /// clamps K).
    ///
    /// K is a power of two near `3 * sqrt(n)`: it doubles for every 4x of size, and within 2x
    /// of the size at the last training `(K / 3)^2` cannot tell that size. The effective factor
    /// between two retrainings is therefore a power of 4: K grows by `sqrt(G)` rounded to a
    /// power of two (at least 2), so G = 2..7 retrains every ~4x of size, 8..31 every ~16x,
    /// 32..127 every ~64x (measured on a port of this trigger, sizes grown by 5% steps), not
    /// every `retrain_growth` times.
    pub fn growth_due(&self, k: usize, pooled_live: u64) -> bool {
        if self.retrain_growth == 0 || self.n_centroids.is_some() || k == 0 {
            return false;
        }
        let design = (k as f64 / 3.0).powi(2);
        pooled_live as f64 >= self.retrain_growth as f64 * design
            && self.trained_k(pooled_live) >= k.saturating_mul(2)
    }

    /// Checks the configuration for an index of dimension `dim`; errors say which field is wrong.
    pub fn validate(&self, dim: usize) -> Result<()> {
        // Checked here, not at the training commit: a configuration the codec rejects would make
        // every commit from the threshold on fail.
        if self.pool_factor == 0 || self.pool_factor > MAX_POOL_FACTOR {
            return Err(LatixError::invalid(format!(
                "pool_factor must be between 1 (no pooling) and {MAX_POOL_FACTOR}, got {}",
                self.pool_factor
            )));
        }
        let b = self.code_bytes(dim);
        let most = (dim / 2).min(128);
        if b == 0 || b > most {
            let what = match self.bytes_per_token {
                Some(b) => format!("got {b}"),
                None => format!("the default for dim = {dim} is {b}; pass bytes_per_token"),
            };
            return Err(LatixError::invalid(format!(
                "bytes_per_token must be in 1..={most} (2 * bytes_per_token subspaces of at least \
                 one of the {dim} dimensions, at most 128 bytes); {what}"
            )));
        }
        if self.train_min_tokens < MIN_TRAIN_TOKENS || self.train_min_tokens > u32::MAX as u64 {
            return Err(LatixError::invalid(format!(
                "train_min_tokens must be between {MIN_TRAIN_TOKENS} (the fewest vectors the codec \
                 trains on) and 2^32 - 1, got {}",
                self.train_min_tokens
            )));
        }
        if self.train_sample_tokens < MIN_TRAIN_TOKENS || self.train_sample_tokens > 1 << 26 {
            return Err(LatixError::invalid(format!(
                "train_sample_tokens must be between {MIN_TRAIN_TOKENS} and 2^26, got {}",
                self.train_sample_tokens
            )));
        }
        if self.fidelity != Fidelity::Codes && self.keep_vectors {
            return Err(LatixError::invalid(format!(
                "fidelity={:?} stores refinement data instead of the full vectors; with \
                 keep_vectors=True search re-ranks from the vectors themselves: pass one of them",
                self.fidelity.name()
            )));
        }
        if self.expected_tokens == Some(0) || self.expected_tokens.is_some_and(|e| e > 1 << 48) {
            return Err(LatixError::invalid(format!(
                "expected_tokens must be between 1 and 2^48 (or unset), got {}",
                self.expected_tokens.unwrap_or(0)
            )));
        }
        if self.retrain_growth == 1 || self.retrain_growth > MAX_RETRAIN_GROWTH {
            return Err(LatixError::invalid(format!(
                "retrain_growth must be 0 (off) or between 2 and {MAX_RETRAIN_GROWTH}, got {}",
                self.retrain_growth
            )));
        }
        if self.retrain_growth != 0 && self.n_centroids.is_some() {
            return Err(LatixError::invalid(format!(
                "retrain_growth retrains with an automatic K: it needs n_centroids unset (got \
                 n_centroids = {})",
                self.n_centroids.unwrap_or(0)
            )));
        }
        if let Some(k) = self.n_centroids {
            // The training sample holds at least min(train_min_tokens, train_sample_tokens).
            let fewest = self.train_min_tokens.min(self.train_sample_tokens);
            if k == 0 || k as u64 > fewest || k > 1 << 24 {
                return Err(LatixError::invalid(format!(
                    "n_centroids must be between 1 and min(train_min_tokens, train_sample_tokens) \
                     = {fewest} (k-means needs at least one training vector per centroid), got {k}"
                )));
            }
        }
        Ok(())
    }

    /// Serialises the configuration (versioned, checksummed).
    pub fn encode(&self) -> Vec<u8> {
        let mut b = Vec::with_capacity(CONFIG_LEN);
        let tiered = self.fidelity != Fidelity::Codes;
        let growth = self.expected_tokens.is_some() || self.retrain_growth != 0;
        let version = if growth {
            CONFIG_VERSION
        } else if tiered {
            CONFIG_VERSION_TIERED
        } else {
            CONFIG_VERSION_CODES
        };
        format::put_header(&mut b, CONFIG_MAGIC, version);
        b.extend_from_slice(&(self.bytes_per_token.unwrap_or(0) as u32).to_le_bytes());
        b.extend_from_slice(&(self.n_centroids.unwrap_or(0) as u32).to_le_bytes());
        b.extend_from_slice(&(self.keep_vectors as u32).to_le_bytes());
        b.extend_from_slice(&self.train_min_tokens.to_le_bytes());
        b.extend_from_slice(&self.train_sample_tokens.to_le_bytes());
        b.extend_from_slice(&self.seed.to_le_bytes());
        b.extend_from_slice(&(self.pool_factor as u32).to_le_bytes());
        if tiered || growth {
            b.extend_from_slice(&self.fidelity.code().to_le_bytes());
        }
        if growth {
            b.extend_from_slice(&self.expected_tokens.unwrap_or(0).to_le_bytes());
            b.extend_from_slice(&self.retrain_growth.to_le_bytes());
        }
        format::seal(&mut b);
        b
    }

    /// Parses [`Compression::encode`] output read from `path` (named in errors).
    pub fn decode(b: &[u8], path: &Path) -> Result<Compression> {
        let bad = |d: &str| LatixError::corrupted(path, format!("compression config: {d}"));
        let Some(version) = format::version(b, CONFIG_MAGIC) else {
            return Err(bad(
                "bad magic (not a latix compression config) or truncated",
            ));
        };
        let u32_at = |i: usize| format::le_u32(b, i);
        if !(1..=CONFIG_VERSION).contains(&version) {
            return Err(LatixError::UnsupportedVersion {
                path: path.to_path_buf(),
                detail: format!(
                    "compression config version {version}, this latix reads {CONFIG_VERSION}"
                ),
            });
        }
        let len = match version {
            1 => CONFIG_LEN_V1,
            2 => CONFIG_LEN_V2,
            3 => CONFIG_LEN_V3,
            _ => CONFIG_LEN,
        };
        if b.len() != len {
            return Err(bad(&format!("{} bytes, expected {len}", b.len())));
        }
        if !format::checksum_ok(b) {
            return Err(bad("checksum mismatch"));
        }
        let u64_at = |i: usize| format::le_u64(b, i);
        let opt = |v: u32| (v != 0).then_some(v as usize);
        let opt64 = |v: u64| (v != 0).then_some(v);
        let keep = u32_at(20);
        if keep > 1 {
            return Err(bad("keep_vectors is neither 0 nor 1"));
        }
        let fidelity = if version >= 3 {
            Fidelity::from_code(u32_at(52)).ok_or_else(|| bad("unknown fidelity tier"))?
        } else {
            Fidelity::Codes
        };
        Ok(Compression {
            bytes_per_token: opt(u32_at(12)),
            n_centroids: opt(u32_at(16)),
            keep_vectors: keep == 1,
            train_min_tokens: u64_at(24),
            train_sample_tokens: u64_at(32),
            seed: u64_at(40),
            pool_factor: if version == 1 { 1 } else { u32_at(48) as usize },
            fidelity,
            expected_tokens: if version >= 4 {
                opt64(u64_at(56))
            } else {
                None
            },
            retrain_growth: if version >= 4 { u32_at(64) } else { 0 },
        })
    }

    /// Reads and validates the configuration of the index `snap` belongs to (`None`: a plain
    /// index), checking that the file is the one its manifest recorded.
    pub fn load(snap: &Snapshot) -> Result<Option<Compression>> {
        let Some((path, b)) = snap.read_index_file(CONFIG_FILE, 4096)? else {
            return Ok(None);
        };
        let c = Self::decode(&b, &path)?;
        c.validate(snap.dim())
            .map_err(|e| LatixError::corrupted(&path, format!("compression config: {e}")))?;
        Ok(Some(c))
    }
}
