//! The thread pool latix owns (never rayon's global pool, so that embedding applications keep
//! control of theirs). Size: `n_threads` per call, else `LATIX_NUM_THREADS`, else the number of
//! CPUs. Pools are cached per size and rebuilt after `fork()` (a child inherits the pool object but
//! not its threads), detected by comparing the process id.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, OnceLock};

use rayon::{ThreadPool, ThreadPoolBuilder};

use crate::error::{LatixError, Result};

struct PoolCache {
    pid: u32,
    pools: HashMap<usize, Arc<ThreadPool>>,
}

fn cache() -> &'static Mutex<PoolCache> {
    static CACHE: OnceLock<Mutex<PoolCache>> = OnceLock::new();
    CACHE.get_or_init(|| {
        Mutex::new(PoolCache {
            pid: std::process::id(),
            pools: HashMap::new(),
        })
    })
}

/// The default number of threads: `LATIX_NUM_THREADS` if set to a positive integer, else the
/// number of CPUs available to this process.
pub fn default_num_threads() -> usize {
    if let Ok(v) = std::env::var("LATIX_NUM_THREADS") {
        if let Ok(n) = v.trim().parse::<usize>() {
            if n > 0 {
                return n;
            }
        }
    }
    std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(1)
}

/// Resolves a user's `n_threads` (None = default) into a thread count, rejecting 0.
pub fn resolve_threads(n_threads: Option<usize>) -> Result<usize> {
    match n_threads {
        None => Ok(default_num_threads()),
        Some(0) => Err(LatixError::invalid(
            "n_threads must be a positive integer or None, got 0",
        )),
        Some(n) if n > 1024 => Err(LatixError::invalid(format!(
            "n_threads must be at most 1024, got {n}"
        ))),
        Some(n) => Ok(n),
    }
}

/// Returns latix's pool with `n_threads` threads (None = default), building it on first use.
pub fn pool(n_threads: Option<usize>) -> Result<Arc<ThreadPool>> {
    let n = resolve_threads(n_threads)?;
    // A poisoned lock only means another thread panicked while holding it; the map is still valid.
    let mut cache = cache().lock().unwrap_or_else(|e| e.into_inner());
    let pid = std::process::id();
    if cache.pid != pid {
        // We are in a forked child: the parent's worker threads do not exist here. Leak the old
        // pools rather than drop them (dropping would try to signal threads that are gone).
        for (_, p) in cache.pools.drain() {
            std::mem::forget(p);
        }
        cache.pid = pid;
    }
    if let Some(p) = cache.pools.get(&n) {
        return Ok(p.clone());
    }
    let p = ThreadPoolBuilder::new()
        .num_threads(n)
        .thread_name(|i| format!("latix-{i}"))
        .build()
        .map_err(|e| LatixError::invalid(format!("cannot start {n} threads: {e}")))?;
    let p = Arc::new(p);
    cache.pools.insert(n, p.clone());
    Ok(p)
}

/// Runs `f` inside latix's pool of `n_threads` threads.
pub fn install<R: Send>(n_threads: Option<usize>, f: impl FnOnce() -> R + Send) -> Result<R> {
    let p = pool(n_threads)?;
    Ok(p.install(f))
}
