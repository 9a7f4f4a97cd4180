//! The merge policy: tiered, log-structured merging of segments after every commit, so that the
//! number of segments a search visits stays logarithmic in the number of commits without an
//! explicit compaction (the policy of LSM trees and of Lucene's and tantivy's log merge policies:
//! segments of similar size are merged once a tier holds enough of them, so every token is
//! rewritten O(log n) times), with every merge bounded in size, so that the work a commit does
//! does not grow with the index.
//!
//! Tiers: a segment of `t` live tokens is in tier 0 when `t <= floor_tokens`, else in the
//! smallest tier `i` with `t <= floor_tokens * segments_per_tier^i`. A segment above half the
//! bound ([`MergePolicy::max_merge_tokens`], default 2^25 live tokens) is *frozen*: the policy
//! never merges it again (deletes can thaw it). After a commit, the policy plans
//! ([`MergePolicy::plan_blocked`]):
//! 1. for the lowest tier `T` with a *full run* — a maximal run of consecutive unfrozen
//!    segments, every one in tier `T` or below, holding `segments_per_tier` segments of tier `T`
//!    itself, anywhere in the segment list — that run is merged into one segment (the smaller
//!    segments in it along);
//! 2. else a *closed run*, two or more unfrozen segments followed by a frozen one (no later
//!    commit can join them), is merged: without this, a commit above the frozen size would
//!    strand the few smaller segments before it for good;
//!
//! and repeats until nothing is planned. A run is merged from its newest segment backwards as
//! far as the bound allows: each merge writes at most `max_merge_tokens` live tokens (an
//! unfrozen segment holds at most half of it, so a merge always takes two or more), whatever
//! the index size; the rest of a longer run is planned again. Merges are made in place (the
//! output takes the run's position), so documents keep their commit order. Each token is
//! rewritten about once per tier below the frozen size, plus once by a closed-run merge: O(log)
//! times. The segment count is then the frozen segments (each over half the bound: at most
//! `2 * tokens / max_merge_tokens`), at most one unfrozen segment between two of them, and fewer
//! than `segments_per_tier` segments of each tier in each run of the newest ones.
//! `max_merge_tokens = u64::MAX` turns the bound off: merges then grow with the index (the
//! 100th of 100 equal commits rewrites every token inside that commit).
//!
//! The bound is per merge, not per commit: a commit that fills a tier can set off a cascade
//! (the merge of a run cut by the bound freezes its output, then the closed run before it is
//! merged in parts), about `segments_per_tier * max_merge_tokens / 2` tokens at the most, still
//! independent of the index size (the 100th of 100 commits of 1M at the default writes 10M,
//! then three merges of 30M: 100M in that commit, in four bounded merges).
//!
//! Commits of mixed sizes can still leave more segments: up to `segments_per_tier - 1` of each
//! lower tier between two larger segments, and nested patterns of commit sizes that never fill a
//! tier at all (the tests build one: nothing merges). `compact()` merges them.
//!
//! `compact()` still merges everything into one.
//!
//! A merge is a commit of its own (the store's protocol: a new segment, a new manifest, the
//! `CURRENT` switch; a crash leaves the previous committed state) made right after the user's
//! commit under the same hold of the writer mutex, and it never decodes: a compressed index
//! merges its inverted lists in the codes domain ([`crate::compressed::write_merged_lists`],
//! memory bounded by [`MergePolicy::memory`]; a fidelity tier's refinement files losslessly,
//! keeping each source's levels, see [`crate::compressed::fidelity::merge`]), an exact index (or
//! a compressed one before its codec is trained) concatenates its segments. Segments that would
//! need re-encoding (lists an older latix wrote, refinement files of another codec or of mixed
//! versions) or that carry side files of a user hook are left alone: `compact()` still merges
//! them.
//!
//! Growth retraining (a compressed index configured with `retrain_growth`, see
//! [`crate::compressed::Compression::growth_due`]) runs first, whether or not a policy is set:
//! once the index holds `retrain_growth` times the tokens its codec's K was chosen for, the commit
//! is followed by a compaction that retrains the codec with the K of the current size (the path
//! of `compact(retrain=True)`: vector-free segments contribute their decoded reconstructions) and
//! re-encodes everything, a commit of its own like every merge. The trigger is geometric in the
//! index's size, so the retrainings of an index grown from nothing rewrite each token O(1) times
//! on average (about `1 / (1 - 1 / G')` rewrites of the final size in all, `G'` being
//! `retrain_growth` rounded to a power of 4: 4 for G = 2..7, 16 for 8..31, as K doubles per 4x
//! of size, see [`crate::compressed::Compression::growth_due`]). Its cost is that of
//! `compact(retrain=True)` inside the commit, writer mutex held: every document's full (or
//! decoded) vectors staged on disk, every pooled row in memory while re-encoding. A retraining
//! that fails, or is skipped because segments carry side files of a user hook (which it would
//! drop), is recorded in [`MergeHealth`] and the policy's merges still run; the handle does not
//! try again until the index has grown by another `retrain_growth` factor or a compaction
//! succeeded.

use std::ops::Range;
use std::sync::Arc;

use super::Index;
use crate::error::{LatixError, Result};
use crate::parallel::lock;
use crate::store::{CommitContext, CommitHook, SegmentWriter, Snapshot};

/// The merge policy of a handle (see the module documentation). Not persisted: a setting of each
/// writer handle, on by default with [`MergePolicy::default`], off with
/// `Index::set_merge_policy(None)`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct MergePolicy {
    /// Segments a tier holds before they are merged into one (at least 2; default 10). Lower
    /// means fewer segments (faster search) and more rewriting at commit time.
    pub segments_per_tier: usize,
    /// Live tokens up to which a segment is in the lowest tier (default 65,536; at least 1).
    pub floor_tokens: u64,
    /// The memory setting of a codes-domain merge (see `Index::compact_options`; default 1 GiB).
    pub memory: u64,
    /// The most live tokens one merge writes (default [`DEFAULT_MAX_MERGE_TOKENS`], 2^25;
    /// `u64::MAX`: unbounded). Segments above half of it are not merged again (module docs).
    pub max_merge_tokens: u64,
}

/// The default of [`MergePolicy::max_merge_tokens`]: 2^25 live tokens (33.5M; about 1 GB of
/// codes at 30 B/token, 26 GB of 384-d float16 vectors), so no merge writes more than that (a
/// commit can run a few merges in a row: see the module docs).
pub const DEFAULT_MAX_MERGE_TOKENS: u64 = 1 << 25;

impl Default for MergePolicy {
    fn default() -> Self {
        MergePolicy {
            segments_per_tier: 10,
            floor_tokens: 1 << 16,
            memory: crate::compressed::DEFAULT_MERGE_MEMORY,
            max_merge_tokens: DEFAULT_MAX_MERGE_TOKENS,
        }
    }
}

impl MergePolicy {
    /// `InvalidInput` for a setting out of range.
    pub fn validate(&self) -> Result<()> {
        if self.segments_per_tier < 2
            || self.floor_tokens == 0
            || self.memory == 0
            || self.max_merge_tokens < 2
        {
            return Err(LatixError::invalid(format!(
                "merge policy: segments_per_tier and max_merge_tokens must be at least 2, \
                 floor_tokens and memory positive (got {}, {}, {}, {})",
                self.segments_per_tier, self.floor_tokens, self.memory, self.max_merge_tokens
            )));
        }
        Ok(())
    }

    /// The tier of a segment of `tokens` live tokens.
    pub fn tier(&self, tokens: u64) -> u32 {
        let (mut cap, mut tier) = (self.floor_tokens, 0u32);
        while tokens > cap {
            cap = cap.saturating_mul(self.segments_per_tier as u64);
            tier += 1;
        }
        tier
    }

    /// Live tokens above which a segment is *frozen*, no longer merged by the policy: half the
    /// bound (`max_merge_tokens / 2`), so that any two unfrozen segments fit in one merge;
    /// unreachable without a bound.
    pub fn frozen_above(&self) -> u64 {
        self.max_merge_tokens / 2
    }

    /// The run of segments to merge next, given the live tokens of each segment in order, or
    /// `None` when the policy has nothing left to merge (see [`MergePolicy::plan_blocked`]).
    pub fn plan(&self, live_tokens: &[u64]) -> Option<Range<usize>> {
        self.plan_blocked(live_tokens, &vec![false; live_tokens.len()])
    }

    /// [`MergePolicy::plan`] with some segments `blocked` (their merge would need re-encoding
    /// or would drop a hook's side files): like frozen ones, they end runs and are never part
    /// of a merge.
    ///
    /// The plan, first match wins:
    /// 1. the lowest tier `t` with a *full run*: a maximal run of consecutive movable (neither
    ///    frozen nor blocked) segments of tier `t` or below that holds `segments_per_tier`
    ///    segments of tier `t` itself; the newest such run is merged;
    /// 2. else the newest *closed run* of two or more movable segments: a maximal run followed
    ///    by a frozen or blocked segment, which no new commit can join (without this, a commit
    ///    above the frozen size would strand the few smaller segments before it for good);
    ///    merging it rewrites its tokens once, as the commits after it cannot grow it again
    ///    (until deletes thaw the frozen segment that closes it).
    ///
    /// A run is merged from its newest segment backwards as far as the bound allows (every
    /// merge writes at most `max_merge_tokens` live tokens: movable segments hold at most half
    /// of it, so a merge always takes two or more); the older rest of a run longer than the
    /// bound is planned again after the merge. Runs are merged in place, so documents keep
    /// their commit order.
    pub fn plan_blocked(&self, live_tokens: &[u64], blocked: &[bool]) -> Option<Range<usize>> {
        let n = live_tokens.len();
        let frozen = self.frozen_above();
        let movable =
            |i: usize| !blocked.get(i).copied().unwrap_or(false) && live_tokens[i] <= frozen;
        let tiers: Vec<u32> = live_tokens.iter().map(|&t| self.tier(t)).collect();
        // The maximal runs of movable segments satisfying `keep`, newest first.
        let runs = |keep: &dyn Fn(usize) -> bool| -> Vec<Range<usize>> {
            let mut out = Vec::new();
            let mut end = n;
            while end > 0 {
                if !keep(end - 1) {
                    end -= 1;
                    continue;
                }
                let mut start = end - 1;
                while start > 0 && keep(start - 1) {
                    start -= 1;
                }
                out.push(start..end);
                end = start;
            }
            out
        };
        let top = tiers.iter().copied().max()?;
        for t in 0..=top {
            for run in runs(&|i| movable(i) && tiers[i] <= t) {
                if tiers[run.clone()].iter().filter(|&&x| x == t).count() >= self.segments_per_tier
                {
                    return Some(self.within_bound(live_tokens, run));
                }
            }
        }
        runs(&|i| movable(i))
            .into_iter()
            .find(|r| r.end < n && r.len() >= 2)
            .map(|r| self.within_bound(live_tokens, r))
    }

    /// The newest part of `run` whose live tokens fit the bound (two segments at least: each
    /// movable segment holds at most half the bound).
    fn within_bound(&self, live_tokens: &[u64], run: Range<usize>) -> Range<usize> {
        let mut start = run.end;
        let mut sum = 0u64;
        while start > run.start {
            let next = sum.saturating_add(live_tokens[start - 1]);
            if next > self.max_merge_tokens && run.end - start >= 2 {
                break;
            }
            sum = next;
            start -= 1;
        }
        start..run.end
    }
}

/// The record of a handle's merges that failed after their commit was published (a full disk, a
/// damaged input segment, memory): such a failure is not the commit's error (the commit is
/// durable and visible; retrying it would write it twice), so it is kept here, in
/// [`super::IndexStats`], and returned by [`Index::commit_report`].
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct MergeHealth {
    /// Failed runs of the merge policy since the handle was opened.
    pub failures: u64,
    /// The error of the last failed run, until a later run of the policy (after any commit) or
    /// a compaction succeeds.
    pub last_error: Option<String>,
}

/// Live tokens of each segment of `snap` (exact: the tokens of its deleted documents are
/// subtracted, so skewed deletes cannot make a merge exceed the bound).
fn live_tokens(snap: &Snapshot) -> Vec<u64> {
    snap.segments().iter().map(|v| v.live_tokens).collect()
}

impl Index {
    /// Sets the merge policy run after every commit of this handle (`None`: off; see
    /// [`MergePolicy`]).
    pub fn set_merge_policy(&self, policy: Option<MergePolicy>) -> Result<()> {
        if let Some(p) = &policy {
            p.validate()?;
        }
        *lock(&self.merge_policy) = policy;
        Ok(())
    }

    /// The merge policy of this handle (`None`: off).
    pub fn merge_policy(&self) -> Option<MergePolicy> {
        *lock(&self.merge_policy)
    }

    /// The record of this handle's merges that failed after a published commit.
    pub fn merge_health(&self) -> MergeHealth {
        lock(&self.merge_health).clone()
    }

    /// Runs the merge policy after a published commit (the caller holds the writer mutex and
    /// the write lock) and records the outcome in [`MergeHealth`]: a failure is returned, never
    /// raised, as the commit before it happened. Whatever failed, the index is in a committed
    /// state (a merge is a commit of its own) and the next run plans again from it.
    pub(super) fn run_merge_policy(&self) -> Option<LatixError> {
        let res = self.merge_by_policy();
        let mut h = lock(&self.merge_health);
        match res {
            Ok(()) => {
                h.last_error = None;
                None
            }
            Err(e) => {
                h.failures += 1;
                h.last_error = Some(e.to_string());
                Some(e)
            }
        }
    }

    /// A compaction merged every segment: a merge failure recorded before is resolved, and a
    /// growth retraining deferred by a failure may run again.
    pub(super) fn merges_resolved(&self) {
        lock(&self.merge_health).last_error = None;
        *lock(&self.growth_deferred) = None;
    }

    /// Runs the merge policy on the latest snapshot (the caller holds the writer mutex and the
    /// write lock, after a commit): a growth retraining when due, then merges of full tiers
    /// until none is left. A failed (or skipped) retraining is returned after the policy's
    /// merges ran, so it is recorded in [`MergeHealth`] without blocking them.
    fn merge_by_policy(&self) -> Result<()> {
        let growth = self.retrain_if_grown();
        let merges = self.merge_tiers();
        growth.and(merges)
    }

    /// Growth retraining (a configuration setting, run whether or not a policy is set): a
    /// compaction of everything, so no tier is left for the policy to merge. After a failure, or
    /// when segments carry side files of a user commit hook (the retraining passes no hook and
    /// would drop them), the error is returned and no retraining is tried again on this handle
    /// until the index has grown by another `retrain_growth` factor or a compaction succeeded
    /// (a whole-index rewrite at every commit that fails every time is what this prevents).
    fn retrain_if_grown(&self) -> Result<()> {
        let base = self.snapshot()?;
        let Some((pooled, factor)) = self.kind.growth_due(&base)? else {
            return Ok(());
        };
        if let Some(at) = *lock(&self.growth_deferred) {
            if pooled < at.saturating_mul(factor as u64) {
                return Ok(());
            }
        }
        let res = if crate::compressed::has_user_side_files(&base) {
            Err(LatixError::invalid(
                "growth retraining skipped: segments carry side files of a user commit hook, \
                 which a retraining without that hook would drop; compact(retrain=True) with the \
                 hook retrains the codec",
            ))
        } else {
            // The memory setting only applies to a codes-domain merge, which a retraining is not.
            self.compact_committed(base, None, true, 0, true)
        };
        *lock(&self.growth_deferred) = res.is_err().then_some(pooled);
        res
    }

    /// Runs the merges the policy plans (if one is set) until none is left. A run whose merge
    /// the index kind refuses (lists an older latix wrote, refinement files of another codec,
    /// side files of a user hook: [`super::kind::Kind::merge_mode`]) is left to `compact()`, its
    /// segments blocked for the rest of this call, and planning goes on around it.
    fn merge_tiers(&self) -> Result<()> {
        let Some(policy) = self.merge_policy() else {
            return Ok(());
        };
        let mut blocked_files: std::collections::HashSet<String> = Default::default();
        // Each merge lowers the segment count and each refusal blocks segments not blocked
        // before, so this ends; the bound is a guard (what is left is planned again after the
        // next commit).
        for _ in 0..64 {
            let base = self.snapshot()?;
            let blocked: Vec<bool> = base
                .segments()
                .iter()
                .map(|v| blocked_files.contains(&v.entry.file))
                .collect();
            let Some(run) = policy.plan_blocked(&live_tokens(&base), &blocked) else {
                return Ok(());
            };
            if let Some(lists) = self.kind.merge_mode(&base, run.clone())? {
                self.merge_segments(&base, run, None, policy.memory, lists)?;
                continue;
            }
            // Block the segments refused on their own.
            let mut alone = Vec::new();
            for i in run.clone() {
                if self.kind.merge_mode(&base, i..i + 1)?.is_none() {
                    alone.push(i);
                }
            }
            let refused: Vec<usize> = if !alone.is_empty() {
                alone
            } else {
                // Each merges alone but the run does not: it mixes kinds of segments (with and
                // without vectors, refinement files of an older latix and of this one). Cut it
                // where two neighbours do not merge and merge the newest group of two or more,
                // so that segments of one kind keep merging among themselves; with no such
                // group (or if it is refused too), block the run.
                let mut groups = Vec::new();
                let mut start = run.start;
                for i in run.start + 1..run.end {
                    if self.kind.merge_mode(&base, i - 1..i + 1)?.is_none() {
                        groups.push(start..i);
                        start = i;
                    }
                }
                groups.push(start..run.end);
                let group = groups.into_iter().rev().find(|g| g.len() >= 2);
                if let Some(g) = group.clone() {
                    if let Some(lists) = self.kind.merge_mode(&base, g.clone())? {
                        self.merge_segments(&base, g, None, policy.memory, lists)?;
                        continue;
                    }
                }
                group.unwrap_or(run).collect()
            };
            blocked_files.extend(
                refused
                    .into_iter()
                    .map(|i| base.segments()[i].entry.file.clone()),
            );
        }
        Ok(())
    }

    /// Merges the consecutive segments `run` of `base` into one new segment, put where the run
    /// was, in one commit, without decoding anything (the caller holds the writer mutex and
    /// checked [`super::kind::Kind::merge_mode`], which gave `lists`): the live documents are
    /// streamed into the new segment (their vectors if the segments have them, else ids and
    /// token counts), and with `lists` their inverted lists are merged in the codes domain. The
    /// kind's commit hook does not run: nothing is encoded. `hook` (compaction's) runs after.
    pub(super) fn merge_segments(
        &self,
        base: &Arc<Snapshot>,
        run: Range<usize>,
        mut hook: Option<CommitHook<'_>>,
        memory: u64,
        lists: bool,
    ) -> Result<()> {
        let n = base.segments().len();
        if run.end > n || run.start >= run.end {
            return Err(LatixError::invalid(
                "merge of an empty or out-of-range run of segments",
            ));
        }
        // The inverted lists' merge applies the same floor (`ivf::merge::merge_into`).
        let memory = memory.max(crate::compressed::MIN_MERGE_MEMORY);
        let segs = &base.segments()[run.clone()];
        let vectors = segs.iter().all(|v| v.segment.has_vectors());
        let mut stage = if vectors {
            SegmentWriter::create(&self.dir, self.dim, self.dtype)?
        } else {
            SegmentWriter::create_without_vectors(&self.dir, self.dim, self.dtype)?
        };
        for v in segs {
            let seg = &v.segment;
            let mut read = 0u64;
            for d in 0..seg.n_docs() as u32 {
                if v.is_deleted(d) {
                    continue;
                }
                let (a, b) = seg.doc_range(d);
                if vectors {
                    // Verified read: a merge must not launder damaged vectors.
                    stage.add_doc(seg.id(d)?, seg.rows_checked(a, b)?)?;
                    read += (b - a) * (self.dim * self.dtype.size()) as u64;
                    if read > memory {
                        seg.release_pages();
                        read = 0;
                    }
                } else {
                    stage.add_doc_without_vectors(seg.id(d)?, b - a)?;
                }
            }
            seg.release_pages();
        }
        let entries = |r: Range<usize>| -> Vec<_> {
            base.segments()[r].iter().map(|v| v.entry.clone()).collect()
        };
        let (before, after) = (entries(0..run.start), entries(run.end..n));
        let mut merged = |ctx: &mut CommitContext<'_>| -> Result<()> {
            // No new segment when every merged document was deleted: nothing to merge.
            if let (true, Some(file)) = (lists, ctx.new_segments().first().cloned()) {
                crate::compressed::write_merged_lists(ctx, base, run.clone(), &file, memory)?;
            }
            if let Some(h) = hook.as_mut() {
                h(ctx)?;
            }
            Ok(())
        };
        // On failure the temporary segment is removed when `stage` drops; nothing changed.
        self.publish(
            base,
            before,
            Some(&mut stage),
            after,
            Vec::new(),
            Some(&mut merged),
        )
        .1
    }
}

#[cfg(test)]
mod tests {
    use super::{MergePolicy, DEFAULT_MAX_MERGE_TOKENS};

    /// The segment sizes after `commits`, merging as `Index::merge_by_policy` does after each
    /// commit (the tests check invariants of the result: tokens kept, no full tier left, the
    /// logarithmic bound).
    fn simulate(p: &MergePolicy, commits: &[u64]) -> Vec<u64> {
        let mut segs: Vec<u64> = Vec::new();
        for &c in commits {
            segs.push(c);
            while let Some(r) = p.plan(&segs) {
                let merged: u64 = segs.drain(r.clone()).sum();
                segs.insert(r.start, merged);
            }
        }
        segs
    }

    #[test]
    fn tiers_follow_powers_of_the_fan_out() {
        let p = MergePolicy {
            segments_per_tier: 4,
            floor_tokens: 100,
            ..Default::default()
        };
        for (t, want) in [
            (0, 0),
            (100, 0),
            (101, 1),
            (400, 1),
            (401, 2),
            (1600, 2),
            (1601, 3),
        ] {
            assert_eq!(p.tier(t), want, "{t} tokens");
        }
    }

    #[test]
    fn segment_count_stays_logarithmic_and_tokens_are_kept() {
        let mut rng = crate::compressed::kmeans::Rng::new(3);
        for fan in [2usize, 3, 4, 10] {
            let p = MergePolicy {
                segments_per_tier: fan,
                floor_tokens: 1000,
                ..Default::default()
            };
            let commits: Vec<u64> = (0..400).map(|_| 1 + rng.below(3000) as u64).collect();
            for n in [1usize, 9, 30, 100, 400] {
                let segs = simulate(&p, &commits[..n]);
                assert_eq!(segs.iter().sum::<u64>(), commits[..n].iter().sum::<u64>());
                // Fewer than fan segments of each tier in each trailing run, tiers up to
                // log_fan of the total, and the smaller segments a merge left before a larger
                // one: below 2 * fan per tier.
                let total: u64 = commits[..n].iter().sum();
                let tiers = p.tier(total) as usize + 1;
                assert!(
                    segs.len() < 2 * fan * tiers,
                    "fan {fan}, {n} commits: {} segments ({segs:?})",
                    segs.len()
                );
                assert!(p.plan(&segs).is_none(), "a full tier was left");
            }
        }
        // Without merging, one segment a commit; 30 equal commits at fan 10 leave 3 segments,
        // and a large segment is not rewritten by the commits after it until its tier fills.
        let p = MergePolicy::default();
        assert_eq!(simulate(&p, &[300_000; 30]).len(), 3);
        let p = MergePolicy {
            segments_per_tier: 3,
            floor_tokens: 100,
            ..Default::default()
        };
        assert_eq!(p.plan(&[480, 160, 160]), None);
        assert_eq!(p.plan(&[480, 160, 160, 160]), Some(1..4));
        assert_eq!(p.plan(&[480, 480, 50, 480, 160]), Some(0..5));
        // A full run inside the list (closed by a larger segment) is merged in place.
        assert_eq!(p.plan(&[160, 160, 160, 2000, 50]), Some(0..3));
    }

    /// The tokens each merge of `simulate` produces, after each commit.
    fn merges(p: &MergePolicy, commits: &[u64]) -> (Vec<u64>, Vec<Vec<u64>>) {
        let mut segs: Vec<u64> = Vec::new();
        let mut made = Vec::new();
        for &c in commits {
            segs.push(c);
            let mut now = Vec::new();
            while let Some(r) = p.plan(&segs) {
                assert!(r.len() >= 2, "a merge of one segment: {segs:?}");
                let merged: u64 = segs.drain(r.clone()).sum();
                segs.insert(r.start, merged);
                now.push(merged);
            }
            made.push(now);
        }
        (segs, made)
    }

    #[test]
    fn merges_are_bounded_and_segments_stay_few() {
        let mut rng = crate::compressed::kmeans::Rng::new(5);
        for (fan, cap) in [(2usize, 20_000u64), (3, 50_000), (4, 40_000), (10, 100_000)] {
            let p = MergePolicy {
                segments_per_tier: fan,
                floor_tokens: 1000,
                max_merge_tokens: cap,
                ..Default::default()
            };
            let commits: Vec<u64> = (0..2000).map(|_| 1 + rng.below(3000) as u64).collect();
            let (segs, made) = merges(&p, &commits);
            let total: u64 = commits.iter().sum();
            assert_eq!(segs.iter().sum::<u64>(), total);
            assert!(p.plan(&segs).is_none(), "a mergeable run was left");
            check_gaps(&p, &segs);
            // No merge above the bound, whatever the index size: the work of one commit is
            // bounded (without the bound, the largest merge is the whole index).
            let largest = made.iter().flatten().copied().max().unwrap_or(0);
            assert!(largest <= cap, "fan {fan}: a merge of {largest} > {cap}");
            let frozen = p.frozen_above();
            let tiers = p.tier(frozen) as usize + 1;
            let per_commit: u64 = made.iter().map(|m| m.iter().sum::<u64>()).max().unwrap();
            assert!(
                per_commit <= cap * tiers as u64 * 2,
                "{per_commit} in one commit"
            );
            // Segments: the frozen ones (each over cap / 2 tokens), at most one unfrozen
            // segment between two of them, and the logarithmic trailing run.
            let n_frozen = segs.iter().filter(|&&t| t > frozen).count();
            assert!(n_frozen > 0, "the bound never applied");
            assert!(
                n_frozen as u64 <= total / frozen,
                "{n_frozen} frozen: {segs:?}"
            );
            assert!(
                segs.len() <= 2 * n_frozen + 2 * fan * tiers,
                "fan {fan}, cap {cap}: {} segments ({segs:?})",
                segs.len()
            );
            let unbounded = MergePolicy {
                max_merge_tokens: u64::MAX,
                ..p
            };
            let (_, made_u) = merges(&unbounded, &commits);
            assert!(made_u.iter().flatten().any(|&m| m > cap));
        }
        // Unbounded, the 100th equal commit at fan 10 rewrites the whole index in one merge;
        // bounded, the first 99 commits merge the same and the 100th merges the ten 10M
        // segments in bounded parts: the newest three (30M, frozen), then the closed run before
        // it, three at a time.
        let unbounded = MergePolicy {
            max_merge_tokens: u64::MAX,
            ..Default::default()
        };
        let (_, made) = merges(&unbounded, &[1_000_000; 100]);
        assert_eq!(made[99].last(), Some(&100_000_000));
        let bounded = MergePolicy::default();
        let (segs, made_b) = merges(&bounded, &[1_000_000; 100]);
        assert_eq!(made_b[..99], made[..99]);
        assert_eq!(
            made_b[99],
            vec![10_000_000, 30_000_000, 30_000_000, 30_000_000]
        );
        assert!(made_b.iter().flatten().all(|&m| m <= CAP));
        assert_eq!(segs, vec![10_000_000, 30_000_000, 30_000_000, 30_000_000]);
        // Past the bound: 300 commits of 1M make frozen segments of 30M (three tier-2 merges of
        // 10M each), never rewritten again, so each commit's work stays bounded.
        let (segs, made_b) = merges(&bounded, &[1_000_000; 300]);
        assert!(made_b.iter().flatten().all(|&m| m <= CAP));
        assert_eq!(segs.iter().sum::<u64>(), 300_000_000);
        assert!(segs.len() <= 20, "{segs:?}");
    }

    /// The invariants the policy keeps, brute force: in every maximal run of consecutive
    /// unfrozen segments of tier `t` or below (anywhere in the list), fewer than
    /// `segments_per_tier` are of tier `t`; and every run of unfrozen segments closed by a
    /// frozen one holds one segment at most.
    fn check_gaps(p: &MergePolicy, segs: &[u64]) {
        let frozen = p.frozen_above();
        let tiers: Vec<u32> = segs.iter().map(|&x| p.tier(x)).collect();
        for t in 0..=tiers.iter().copied().max().unwrap_or(0) {
            // Runs: split at segments of a higher tier and at frozen ones.
            let mut runs: Vec<Vec<u32>> = vec![Vec::new()];
            for (&tier, &x) in tiers.iter().zip(segs) {
                if tier > t || x > frozen {
                    runs.push(Vec::new());
                } else {
                    runs.last_mut().unwrap().push(tier);
                }
            }
            for run in runs {
                let n = run.iter().filter(|&&x| x == t).count();
                assert!(
                    n < p.segments_per_tier,
                    "tier {t}: {n} in a run of {segs:?}"
                );
            }
        }
        if let Some(last) = segs.iter().rposition(|&x| x > frozen) {
            let mut n = 0;
            for &x in &segs[..last] {
                n = if x > frozen { 0 } else { n + 1 };
                assert!(n <= 1, "a closed run of {n} segments: {segs:?}");
            }
        }
    }

    /// Adversarial commit sizes (sizes at and around the tier thresholds, commits of many
    /// tiers, deletes shrinking earlier segments) against the brute-force invariants, unbounded
    /// and with bounds the sizes cross: tokens kept, no full run left anywhere, no closed run of
    /// two, no merge of one segment, no merge above the bound.
    #[test]
    fn adversarial_commit_sizes_keep_the_invariant() {
        let mut rng = crate::compressed::kmeans::Rng::new(11);
        for case in 0..900 {
            let fan = [2usize, 3, 4, 10][case % 4];
            let floor = [1u64, 100, 65_536][case % 3];
            let cap = [u64::MAX, floor * (fan as u64).pow(3), floor * 7 + 3][case % 5 % 3];
            let p = MergePolicy {
                segments_per_tier: fan,
                floor_tokens: floor,
                max_merge_tokens: cap,
                ..Default::default()
            };
            let deletes = case % 2 == 1;
            let mut segs: Vec<u64> = Vec::new();
            let mut total = 0u64;
            for _ in 0..1 + rng.below(200) {
                let edge = floor * (fan as u64).pow(rng.below(5) as u32);
                let c = match rng.below(10) {
                    0 => edge - 1 + rng.below(3) as u64, // at a threshold, +-1
                    1 => 1 + rng.below((floor * (fan as u64).pow(5)) as usize) as u64,
                    _ => 1 + rng.below(2 * floor as usize) as u64,
                };
                let c = c.max(1);
                segs.push(c);
                total += c;
                if deletes && rng.below(5) == 0 {
                    let j = rng.below(segs.len());
                    let cut = rng.below(segs[j] as usize) as u64;
                    segs[j] -= cut;
                    total -= cut;
                }
                while let Some(r) = p.plan(&segs) {
                    assert!(r.len() >= 2, "a merge of one segment: {segs:?}");
                    let merged: u64 = segs.drain(r.clone()).sum();
                    assert!(merged <= cap, "a merge of {merged} > {cap}");
                    segs.insert(r.start, merged);
                }
                assert_eq!(segs.iter().sum::<u64>(), total);
                check_gaps(&p, &segs);
            }
        }
    }

    /// Segments a planner refuses to merge (blocked) end runs like frozen ones, and planning
    /// goes on around them.
    #[test]
    fn blocked_segments_are_planned_around() {
        let p = MergePolicy {
            segments_per_tier: 3,
            floor_tokens: 100,
            ..Default::default()
        };
        let segs = [50, 50, 50, 50];
        assert_eq!(p.plan(&segs), Some(0..4));
        assert_eq!(
            p.plan_blocked(&segs, &[false, false, true, false]),
            Some(0..2)
        );
        assert_eq!(p.plan_blocked(&segs, &[false, true, false, false]), None);
    }

    /// Commit sizes can defeat the tiered policy: (fan - 1) times [the same pattern one tier
    /// down, then one commit of a tier], recursively, never fills a tier, so nothing merges
    /// (the limit the module doc states; `compact()` is the remedy).
    #[test]
    fn nested_commit_sizes_never_merge() {
        fn pattern(fan: u64, floor: u64, t: u32, out: &mut Vec<u64>) {
            for _ in 0..fan - 1 {
                if t > 0 {
                    pattern(fan, floor, t - 1, out);
                }
                out.push(floor * fan.pow(t));
            }
        }
        for (fan, top) in [(3usize, 5u32), (10, 2)] {
            let p = MergePolicy {
                segments_per_tier: fan,
                ..Default::default()
            };
            let mut commits = Vec::new();
            pattern(fan as u64, p.floor_tokens, top, &mut commits);
            assert_eq!(simulate(&p, &commits), commits);
        }
    }

    /// The default bound, 2^25 live tokens.
    const CAP: u64 = 1 << 25;

    /// Whether `segs` strands segments: two or more unfrozen ones in a run closed by a frozen
    /// one (no commit can join such a run).
    fn stranded(p: &MergePolicy, segs: &[u64]) -> bool {
        let frozen = p.frozen_above();
        let Some(last) = segs.iter().rposition(|&t| t > frozen) else {
            return false;
        };
        segs[..last]
            .split(|&t| t > frozen)
            .any(|run| run.len() >= 2)
    }

    #[test]
    fn the_default_is_bounded() {
        let p = MergePolicy::default();
        assert_eq!(p.max_merge_tokens, CAP);
        assert_eq!(DEFAULT_MAX_MERGE_TOKENS, CAP);
        assert_eq!(p.frozen_above(), CAP / 2);
    }

    /// The review's examples, which defeated the earlier bound (a frozen commit stranding the
    /// segments before it; merges at 2x the bound; a segment count linear past cap / fan): the
    /// default bound now strands nothing, merges at most the bound, and keeps few segments.
    #[test]
    fn review_examples_under_the_default_bound() {
        let b = MergePolicy::default();
        let u = MergePolicy {
            max_merge_tokens: u64::MAX,
            ..Default::default()
        };
        let log_bound = |p: &MergePolicy, segs: &[u64]| {
            let tiers = p.tier(segs.iter().sum()) as usize + 1;
            segs.len() < 2 * p.segments_per_tier * tiers
        };
        // 1. A commit of 5M between commits of 300k: nothing stranded.
        let mut c1 = vec![300_000u64; 5];
        c1.push(5_000_000);
        c1.extend([300_000u64; 200]);
        // 2. Commits whose merges reached 2.05x the earlier bound.
        let c2: Vec<u64> = (0..10)
            .flat_map(|_| [655_000u64; 9].into_iter().chain([1_000_000]))
            .collect();
        // 3. Commits of 409k and 3.4M (just over the earlier freeze size, never merged then),
        // and commits above the freeze size of this one (20M: frozen as committed).
        let c3 = vec![409_000u64; 250];
        let c4 = vec![3_400_000u64; 30];
        let mut c5 = vec![300_000u64; 7];
        for _ in 0..6 {
            c5.push(20_000_000);
            c5.extend([300_000u64; 3]);
        }
        for c in [&c1, &c2, &c3, &c4, &c5] {
            let (segs, made) = merges(&b, c);
            assert!(!stranded(&b, &segs), "{segs:?}");
            assert!(made.iter().flatten().all(|&m| m <= CAP), "{made:?}");
            check_gaps(&b, &segs);
            assert!(segs.len() <= 20, "{} segments: {segs:?}", segs.len());
            let segs_u = simulate(&u, c);
            assert!(log_bound(&u, &segs_u), "{segs_u:?}");
        }
        // The 5M commit is merged with the 300k segments around it.
        assert!(simulate(&b, &c1).len() < 10);
    }

    #[test]
    fn a_zero_bound_is_refused() {
        let p = MergePolicy {
            max_merge_tokens: 0,
            ..Default::default()
        };
        assert!(p.validate().is_err());
    }
}
