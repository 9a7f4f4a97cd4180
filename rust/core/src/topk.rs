//! The one bounded top-k of latix and the one order of its hits.
//!
//! A hit is `(score, segment, document)`. The order ([`order`]) is: higher score first
//! ([`f32::total_cmp`]), ties broken by insertion order, i.e. the lower segment index, then the
//! lower document number. Every search (exact, compressed candidate generation, refine, re-rank,
//! exhaustive scoring of segments without lists) ranks with it, so the same documents with the
//! same scores always come back in the same order whichever path scored them.
//!
//! [`TopK`] keeps the `k` best hits of a stream without sorting it: hits are buffered while they
//! beat the worst hit kept at the last cut, and when the buffer reaches `4k + 64` it is cut back
//! to the best `k` with a selection (`select_nth_unstable`, linear time). A rejected hit costs
//! one float comparison; the result is the exact top-k under [`order`] whatever the arrival order
//! (two top-ks of disjoint streams merge into the top-k of their union), so any split of the work
//! across threads returns the same hits. [`best`] does the same for a whole vector at once.

use std::cmp::Ordering;

/// A ranked hit: `(score, segment index, document number)`.
pub type Hit<S> = (f32, S, u32);

/// The one order of hits: best first (higher score by [`f32::total_cmp`]), then lower segment,
/// then lower document number. `Less` means `a` ranks before `b`.
#[inline]
pub fn order<S: Ord>(a: &Hit<S>, b: &Hit<S>) -> Ordering {
    b.0.total_cmp(&a.0)
        .then_with(|| a.1.cmp(&b.1))
        .then_with(|| a.2.cmp(&b.2))
}

/// Sorts `hits` best first by [`order`].
pub fn sort<S: Ord>(hits: &mut [Hit<S>]) {
    hits.sort_by(order);
}

/// The `k` best of `hits`, best first (what sorting by [`order`] then truncating returns; a long
/// list is first cut to `k` with a linear selection, a short one is just sorted, which costs
/// less than selecting then sorting).
pub fn best<S: Ord>(mut hits: Vec<Hit<S>>, k: usize) -> Vec<Hit<S>> {
    if k == 0 {
        hits.clear();
        return hits;
    }
    if hits.len() > k.saturating_mul(4).saturating_add(64) {
        hits.select_nth_unstable_by(k - 1, order);
        hits.truncate(k);
    }
    hits.sort_by(order);
    hits.truncate(k);
    hits
}

/// Bounded top-k of a stream of hits (see the module documentation for the algorithm).
#[derive(Clone, Debug)]
pub struct TopK<S> {
    k: usize,
    buf: Vec<Hit<S>>,
    /// Score of the worst hit kept at the last cut (`-inf` before the first): a hit scoring
    /// above it is buffered, one below it dropped, an equal one compared in full with `worst`.
    thr: f32,
    /// The worst hit kept at the last cut (`None` before the first).
    worst: Option<Hit<S>>,
}

impl<S: Ord + Copy> TopK<S> {
    /// Buffer length at which [`TopK::push`] cuts back to the best `k`.
    fn cap(k: usize) -> usize {
        k.saturating_mul(4).saturating_add(64)
    }

    /// An empty top-`k`.
    pub fn new(k: usize) -> Self {
        TopK {
            k,
            // Reserved lazily beyond a small start: `k` may exceed what the stream holds.
            buf: Vec::with_capacity(Self::cap(k).min(4096)),
            thr: f32::NEG_INFINITY,
            worst: None,
        }
    }

    /// Offers one hit.
    #[inline]
    pub fn push(&mut self, h: Hit<S>) {
        // `>` and `<` agree with `total_cmp` on the finite, non-zero-signed case; anything else
        // (equal scores, signed zeros, infinities; NaN, which `!(<)` lets through) takes the
        // full comparison.
        // `beats_worst` takes the hit's fields as scalars (in registers): given the hit (`&h`, or
        // `h` by value, which Rust passes through memory as well) the compiler stored every hit
        // to the stack before the threshold test, hot path included: 3 more instructions a hit,
        // +0.11 % on the callgrind count of 40 SciFact queries (benches/callgrind_search.py).
        #[allow(clippy::neg_cmp_op_on_partial_ord)]
        if h.0 > self.thr || (!(h.0 < self.thr) && self.beats_worst(h.0, h.1, h.2)) {
            self.buf.push(h);
            if self.buf.len() >= Self::cap(self.k) {
                self.cut();
            }
        }
    }

    #[cold]
    #[inline(never)]
    fn beats_worst(&self, score: f32, seg: S, doc: u32) -> bool {
        match &self.worst {
            None => true,
            Some(w) => order(&(score, seg, doc), w) == Ordering::Less,
        }
    }

    fn cut(&mut self) {
        if self.k == 0 {
            self.buf.clear();
        } else if self.buf.len() > self.k {
            self.buf.select_nth_unstable_by(self.k - 1, order);
            self.buf.truncate(self.k);
            // After the selection the k-th element is the worst of those kept.
            let w = self.buf[self.k - 1];
            self.thr = w.0;
            self.worst = Some(w);
        }
    }

    /// Adds every hit `other` kept (the top-k of the union of both streams).
    pub fn merge(mut self, other: TopK<S>) -> TopK<S> {
        for h in other.buf {
            self.push(h);
        }
        self
    }

    /// The `k` best hits offered, best first.
    pub fn finish(mut self) -> Vec<Hit<S>> {
        self.cut();
        self.buf.sort_by(order);
        self.buf.truncate(self.k);
        self.buf
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Small pseudo-random generator (no dependency, deterministic).
    fn lcg(state: &mut u64) -> u64 {
        *state = state
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        *state >> 33
    }

    #[test]
    fn topk_equals_full_sort_on_streams_with_ties() {
        let mut st = 7u64;
        for case in 0..300 {
            let n = (lcg(&mut st) % 500) as usize;
            let k = (lcg(&mut st) % 40) as usize;
            // Few distinct scores so that ties are common; signed zeros and infinities included.
            let levels = [
                -1.0f32,
                -0.0,
                0.0,
                0.5,
                1.0,
                f32::INFINITY,
                f32::NEG_INFINITY,
            ];
            let mut hits: Vec<Hit<u32>> = (0..n)
                .map(|i| {
                    let s = if case % 2 == 0 {
                        levels[(lcg(&mut st) % levels.len() as u64) as usize]
                    } else {
                        (lcg(&mut st) % 1000) as f32 / 7.0
                    };
                    (s, (lcg(&mut st) % 4) as u32, i as u32)
                })
                .collect();
            // Arrival order shuffled: the result must not depend on it.
            for i in (1..hits.len()).rev() {
                hits.swap(i, (lcg(&mut st) % (i as u64 + 1)) as usize);
            }
            let mut want = hits.clone();
            want.sort_by(order);
            want.truncate(k);
            let mut top = TopK::new(k);
            let mut a = TopK::new(k);
            let mut b = TopK::new(k);
            for (i, &h) in hits.iter().enumerate() {
                top.push(h);
                if i % 3 == 0 {
                    a.push(h)
                } else {
                    b.push(h)
                }
            }
            let bits = |v: &[Hit<u32>]| -> Vec<(u32, u32, u32)> {
                v.iter().map(|h| (h.0.to_bits(), h.1, h.2)).collect()
            };
            assert_eq!(bits(&top.finish()), bits(&want), "case {case}");
            assert_eq!(
                bits(&a.merge(b).finish()),
                bits(&want),
                "merge, case {case}"
            );
            assert_eq!(bits(&best(hits, k)), bits(&want), "best, case {case}");
        }
    }
}
