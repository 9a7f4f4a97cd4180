//! The thread pools latix owns (never rayon's global pool, so that embedding applications keep
//! control of theirs). Size: `n_threads` per call, else `LATIX_NUM_THREADS`, else the number of
//! CPUs; a request above [`max_threads`] (the larger of those two defaults) runs on that many, as
//! more threads than that cannot make CPU-bound work faster.
//!
//! Pools are cached per size, but only a few: the default size's pool stays, and at most
//! [`MAX_POOLS`] - 1 other sizes are kept, least recently used evicted (an evicted pool's threads
//! exit once its last running call returns). So any sequence of `n_threads` values leaves at most
//! `MAX_POOLS * max_threads()` latix threads (a program once cycling n_threads through 1..100 kept
//! 5,050). Pools are rebuilt after `fork()` (a child inherits the pool objects but not their
//! threads), detected by comparing the process id.

use std::sync::{Arc, Mutex, MutexGuard, OnceLock};

use rayon::{ThreadPool, ThreadPoolBuilder};

use crate::error::{LatixError, Result};

/// Locks `m`, ignoring poisoning: a poisoned mutex means a panic elsewhere, and every mutex latix
/// holds guards state that is consistent between statements (the handle's writer, snapshot and
/// compressed state), so the next caller may proceed.
pub(crate) fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// Most pools cached at once (the default size's and the most recently used others).
pub const MAX_POOLS: usize = 4;

/// Largest `n_threads` accepted (an error above, not a cap: such a value is a mistake).
pub const MAX_N_THREADS: usize = 1024;

struct PoolCache {
    pid: u32,
    /// (size, pool, last use), in no particular order.
    pools: Vec<(usize, Arc<ThreadPool>, u64)>,
    tick: u64,
}

fn cache() -> &'static Mutex<PoolCache> {
    static CACHE: OnceLock<Mutex<PoolCache>> = OnceLock::new();
    CACHE.get_or_init(|| {
        Mutex::new(PoolCache {
            pid: std::process::id(),
            pools: Vec::new(),
            tick: 0,
        })
    })
}

/// The default number of threads: `LATIX_NUM_THREADS` if set to a positive integer, else the
/// number of CPUs available to this process.
pub fn default_num_threads() -> usize {
    if let Ok(v) = std::env::var("LATIX_NUM_THREADS") {
        if let Ok(n) = v.trim().parse::<usize>() {
            if n > 0 {
                return n.min(MAX_N_THREADS);
            }
        }
    }
    cpus()
}

/// CPUs available to this process, read once: `available_parallelism` reads cgroup files on
/// every call (tens of microseconds), too slow for a per-search path.
fn cpus() -> usize {
    static CPUS: OnceLock<usize> = OnceLock::new();
    *CPUS.get_or_init(|| {
        std::thread::available_parallelism()
            .map(|n| n.get())
            .unwrap_or(1)
    })
}

/// The most threads one call runs on: the larger of [`default_num_threads`] and the number of
/// CPUs.
pub fn max_threads() -> usize {
    default_num_threads().max(cpus())
}

/// Resolves a user's `n_threads` (None = default) into the thread count a call runs on: at most
/// [`max_threads`]; 0 and values above [`MAX_N_THREADS`] are errors.
pub fn resolve_threads(n_threads: Option<usize>) -> Result<usize> {
    match n_threads {
        None => Ok(default_num_threads()),
        Some(0) => Err(LatixError::invalid(
            "n_threads must be a positive integer or None, got 0",
        )),
        Some(n) if n > MAX_N_THREADS => Err(LatixError::invalid(format!(
            "n_threads must be at most {MAX_N_THREADS}, got {n}"
        ))),
        Some(n) => Ok(n.min(max_threads())),
    }
}

/// Returns latix's pool for `n_threads` (None = default; see [`resolve_threads`]), building it on
/// first use and evicting the least recently used other size beyond [`MAX_POOLS`].
pub fn pool(n_threads: Option<usize>) -> Result<Arc<ThreadPool>> {
    let n = resolve_threads(n_threads)?;
    // A poisoned lock only means another thread panicked while holding it; the cache is valid.
    let mut cache = lock(cache());
    let pid = std::process::id();
    if cache.pid != pid {
        // We are in a forked child: the parent's worker threads do not exist here. Leak the old
        // pools rather than drop them (dropping would try to signal threads that are gone).
        for (_, p, _) in cache.pools.drain(..) {
            std::mem::forget(p);
        }
        cache.pid = pid;
    }
    cache.tick += 1;
    let tick = cache.tick;
    if let Some(e) = cache.pools.iter_mut().find(|e| e.0 == n) {
        e.2 = tick;
        return Ok(e.1.clone());
    }
    let p = ThreadPoolBuilder::new()
        .num_threads(n)
        .thread_name(|i| format!("latix-{i}"))
        .build()
        .map_err(|e| LatixError::OutOfMemory(format!("cannot start {n} threads: {e}")))?;
    let p = Arc::new(p);
    cache.pools.push((n, p.clone(), tick));
    if cache.pools.len() > MAX_POOLS {
        let keep = default_num_threads();
        let victim = cache
            .pools
            .iter()
            .enumerate()
            .filter(|(_, e)| e.0 != keep && e.0 != n)
            .min_by_key(|(_, e)| e.2)
            .map(|(i, _)| i);
        if let Some(i) = victim {
            // Dropped here, or by the last call still running on it.
            cache.pools.swap_remove(i);
        }
    }
    Ok(p)
}

/// Runs `f` inside latix's pool of `n_threads` threads.
pub fn install<R: Send>(n_threads: Option<usize>, f: impl FnOnce() -> R + Send) -> Result<R> {
    let p = pool(n_threads)?;
    Ok(p.install(f))
}

/// Runs `f` like [`install`], but on the calling thread when `n_threads` resolves to one thread
/// and the caller is not a thread of any rayon pool: `f`'s parallel sections are sized by
/// [`pool_threads`], which is then 1, so they run serially, exactly as they would on a pool of
/// one thread. A search with `n_threads=1` then pays no hand-off (two thread wake-ups, each a
/// wait for a core on a loaded machine), and concurrent callers with one thread each run in
/// parallel instead of queueing on the one thread of the 1-thread pool. `f` must size all its
/// parallel work by [`pool_threads`] (an unconditional `par_iter` would run on rayon's global
/// pool here).
pub fn run<R: Send>(n_threads: Option<usize>, f: impl FnOnce() -> R + Send) -> Result<R> {
    if resolve_threads(n_threads)? == 1 && rayon::current_thread_index().is_none() {
        return Ok(f());
    }
    install(n_threads, f)
}

/// Threads of the latix pool the caller runs in (inside [`install`]), 1 outside any pool: the
/// internals size their parallel work with it, so a building block called from a thread that is
/// not in a pool runs serially instead of spilling onto rayon's global pool.
#[inline]
pub fn pool_threads() -> usize {
    if rayon::current_thread_index().is_some() {
        rayon::current_num_threads()
    } else {
        1
    }
}

/// `items` mapped through `f`, in order, with a per-worker scratch made by `init`: on the threads
/// of the pool the caller runs in when it has several ([`pool_threads`]) and there are more than
/// `min_par` items, serially otherwise (handing a few items to other threads costs more than
/// scoring them). The result does not depend on which way ran: each item is mapped alone.
pub(crate) fn map_init<T, S, R, C>(
    items: &[T],
    min_par: usize,
    init: impl Fn() -> S + Sync + Send,
    f: impl Fn(&mut S, &T) -> R + Sync + Send,
) -> C
where
    T: Sync,
    R: Send,
    C: FromIterator<R> + rayon::iter::FromParallelIterator<R>,
{
    use rayon::prelude::*;
    if pool_threads() > 1 && items.len() > min_par {
        items.par_iter().map_init(&init, |s, x| f(s, x)).collect()
    } else {
        let mut s = init();
        items.iter().map(|x| f(&mut s, x)).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pools_are_bounded_and_reused() {
        let max = max_threads();
        for n in 1..=64 {
            assert_eq!(
                pool(Some(n)).expect("pool").current_num_threads(),
                n.min(max)
            );
        }
        let g = cache().lock().expect("cache");
        assert!(g.pools.len() <= MAX_POOLS, "{} pools cached", g.pools.len());
        let threads: usize = g.pools.iter().map(|e| e.0).sum();
        assert!(threads <= MAX_POOLS * max);
        drop(g);
        let a = pool(Some(1)).expect("pool");
        let b = pool(Some(1)).expect("pool");
        assert!(Arc::ptr_eq(&a, &b));
        assert!(resolve_threads(Some(0)).is_err());
        assert!(resolve_threads(Some(MAX_N_THREADS + 1)).is_err());
    }

    #[test]
    fn run_is_inline_for_one_thread_outside_pools() {
        let me = std::thread::current().id();
        // One thread, called from outside any pool: the caller's thread, serial sections.
        let (id, threads) =
            run(Some(1), || (std::thread::current().id(), pool_threads())).expect("run");
        assert_eq!(id, me);
        assert_eq!(threads, 1);
        // Several threads: latix's pool, as install.
        if max_threads() >= 2 {
            let (id, threads) =
                run(Some(2), || (std::thread::current().id(), pool_threads())).expect("run");
            assert_ne!(id, me);
            assert_eq!(threads, 2);
        }
        // From inside a pool (a thread of it): install's 1-thread pool, never the caller's pool.
        let inner = install(Some(2), || {
            run(Some(1), || (rayon::current_thread_index(), pool_threads())).expect("run")
        })
        .expect("install");
        assert_eq!(inner, (Some(0), 1));
        assert!(run(Some(0), || ()).is_err());
    }
}
