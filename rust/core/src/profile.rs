//! Timing spans of a commit's stages, for profiling build throughput (issue 18): off unless the
//! environment variable `LATIX_PROFILE_COMMIT` is set (read once) or [`set_enabled`] is called.
//!
//! A span ([`span`]) measures the wall time and the process's CPU time (every thread's, from
//! `CLOCK_PROCESS_CPUTIME_ID`) between its creation and its drop, and adds both to the totals of
//! its stage name; [`take`] returns and clears the totals. Spans are opened by the thread that
//! drives a stage (never inside a parallel map), so a stage's CPU time includes its workers' and
//! CPU / wall is the parallelism it reached. With the variable set, every commit prints its
//! stages to stderr when it ends. Off, a span is one relaxed atomic load.

use std::sync::atomic::{AtomicU8, Ordering};
use std::sync::Mutex;
use std::time::Instant;

/// 0 = not read yet, 1 = off, 2 = on ([`set_enabled`]), 3 = on and printed (the variable).
static STATE: AtomicU8 = AtomicU8::new(0);

/// Totals per stage, in the order stages were first seen.
struct Totals(Mutex<Vec<StageTime>>);

impl Totals {
    fn add(&self, name: &'static str, wall_s: f64, cpu_s: f64) {
        let mut t = crate::parallel::lock(&self.0);
        match t.iter_mut().find(|s| s.name == name) {
            Some(s) => {
                s.wall_s += wall_s;
                s.cpu_s += cpu_s;
                s.count += 1;
            }
            None => t.push(StageTime {
                name,
                wall_s,
                cpu_s,
                count: 1,
            }),
        }
    }

    fn take(&self) -> Vec<StageTime> {
        std::mem::take(&mut *crate::parallel::lock(&self.0))
    }
}

static TOTALS: Totals = Totals(Mutex::new(Vec::new()));

/// The time spent in one stage since the last [`take`].
#[derive(Clone, Debug, PartialEq)]
pub struct StageTime {
    /// The stage's name (e.g. `"commit/pool"`).
    pub name: &'static str,
    /// Wall-clock seconds.
    pub wall_s: f64,
    /// CPU seconds of the whole process (all threads) during the stage's spans.
    pub cpu_s: f64,
    /// Number of spans measured.
    pub count: u64,
}

/// True when spans are measured.
pub fn enabled() -> bool {
    match STATE.load(Ordering::Relaxed) {
        0 => {
            let on = std::env::var_os("LATIX_PROFILE_COMMIT").is_some_and(|v| !v.is_empty());
            STATE.store(if on { 3 } else { 1 }, Ordering::Relaxed);
            on
        }
        s => s >= 2,
    }
}

/// Turns the measuring of spans on or off for the whole process (benches, which read the
/// totals with [`take`]: commits then print nothing).
pub fn set_enabled(on: bool) {
    STATE.store(if on { 2 } else { 1 }, Ordering::Relaxed);
}

/// CPU seconds used by this process so far (all threads).
pub fn process_cpu_s() -> f64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: `ts` is a valid, writable timespec.
    let rc = unsafe { libc::clock_gettime(libc::CLOCK_PROCESS_CPUTIME_ID, &mut ts) };
    if rc != 0 {
        return 0.0;
    }
    ts.tv_sec as f64 + ts.tv_nsec as f64 * 1e-9
}

/// An open span of stage `name` (see the module documentation); measured when dropped.
pub struct Span {
    name: &'static str,
    wall: Instant,
    cpu: f64,
}

/// Opens a span of stage `name`, or `None` when profiling is off.
pub fn span(name: &'static str) -> Option<Span> {
    enabled().then(|| Span {
        name,
        wall: Instant::now(),
        cpu: process_cpu_s(),
    })
}

impl Drop for Span {
    fn drop(&mut self) {
        let wall = self.wall.elapsed().as_secs_f64();
        TOTALS.add(self.name, wall, process_cpu_s() - self.cpu);
    }
}

/// The totals of every stage since the last call, cleared.
pub fn take() -> Vec<StageTime> {
    TOTALS.take()
}

/// With `LATIX_PROFILE_COMMIT` set, prints the stages measured since the last [`take`] to stderr (one line
/// each, after a `what` heading) and clears them.
pub(crate) fn report(what: &str) {
    if !enabled() || STATE.load(Ordering::Relaxed) != 3 {
        return;
    }
    let stages = take();
    let mut out = format!("latix profile: {what}\n");
    for s in &stages {
        out += &format!(
            "  {:<28} wall {:>8.3} s  cpu {:>8.3} s  ({} spans)\n",
            s.name, s.wall_s, s.cpu_s, s.count
        );
    }
    eprint!("{out}");
}

#[cfg(test)]
mod tests {
    use super::*;

    // The global totals are shared with every commit of the test binary: tested on a local one.
    #[test]
    fn totals_add_up_per_stage_and_take_clears() {
        let t = Totals(Mutex::new(Vec::new()));
        t.add("a", 1.0, 2.0);
        t.add("b", 0.5, 0.25);
        t.add("a", 0.5, 1.0);
        let got = t.take();
        assert_eq!(got.len(), 2);
        assert_eq!(
            (got[0].name, got[0].wall_s, got[0].cpu_s, got[0].count),
            ("a", 1.5, 3.0, 2)
        );
        assert_eq!((got[1].name, got[1].count), ("b", 1));
        assert!(t.take().is_empty());
    }

    #[test]
    fn process_cpu_time_advances_with_work() {
        // Not timed: spins until the clock moves (a 0 from a failed call never would).
        let c0 = process_cpu_s();
        let mut x = 0u64;
        for _ in 0..1_000_000_000u64 {
            x = std::hint::black_box(x.wrapping_add(1));
            if x.is_multiple_of(4096) && process_cpu_s() > c0 {
                break;
            }
        }
        assert!(c0 > 0.0 && process_cpu_s() > c0);
    }
}
