"""Property-based fuzzing of ``latix.Collection`` (hypothesis stateful testing).

A state machine drives one collection without a model (records come with their own token
vectors, one or two passages each) through arbitrary sequences of ``add``, ``upsert``,
``delete`` (by ids and by filter), ``with batch():`` blocks opened and closed across steps
(committed, rolled back by an exception, or by ``rollback()``), ``commit()`` inside a batch,
``compact()`` (inside a batch too; search results must not change), merge policies on the
writer's index handle (with commits that fill its tiers), ``close()`` inside a batch (refused),
close and reopen, and a second read handle. The same machine runs on a plain collection and on a
compressed one that trains its codec mid-sequence (:class:`CompressedCollectionMachine`).
Inputs include duplicate ids in one call, ids already present or absent,
unicode ids, empty texts, metadata of the wrong type for its field, a field whose type the first
record using it fixes (so rolled-back batches must forget it), and filters with mistyped values
or unknown fields.

A plain-Python model predicts every outcome: a valid call must succeed and change the model
exactly as documented; an invalid one must raise the documented ``LatixError`` subclass and
change nothing (inside a batch, the batch's other staged changes stay). After every step the
committed view must equal the model's committed records: ``len``, ``ids()`` (insertion order
of the current versions), ``get``/``get_many``, ``in``, ``count(where)``; staged changes are
invisible until their commit. Searches are checked against independent references: late
search against numpy MaxSim over the model's vectors (a record scores its best passage), with
filters evaluated by ``helpers.ref_eval``; keyword search against the records whose text holds
the word; hybrid search for its count, filter and order.

``python -m harness.collection_fuzz --seconds 60`` runs it for a bounded time; the pytest
wrapper (tests/hardening/test_collection_fuzz.py) runs a fixed number of seeded examples. A
failure prints the minimal failing call sequence: add it as a regression test.
"""

from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import latix
import numpy as np
from helpers import SCHEMA, rand_filter, rand_record, ref_eval
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, precondition, rule
from latix.collection import HYBRID_DEFAULTS, Collection

DIM = 4
WORDS = ["alpha", "beta", "gamma", "delta"]  # porter stems each to itself
IDS = ["a", "b", "c", "d", "e", "é", "日本", "x y", "'; --"]
EXTRA = "u"  # the one field not declared at create: its type is fixed by its first use


class _Boom(Exception):
    """Raised inside a batch to roll it back."""


ids_st = st.sampled_from(IDS)
text_st = st.lists(st.sampled_from(WORDS), max_size=4).map(" ".join)
seed_st = st.integers(0, 2**32 - 1)


def _vectors(seed: int) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    return [
        rng.standard_normal((int(rng.integers(1, 4)), DIM)).astype(np.float32)
        for _ in range(int(rng.integers(1, 3)))
    ]


def _meta(seed: int) -> dict[str, Any]:
    """Metadata of the declared fields, sometimes a value of the wrong type (MetadataError) and
    sometimes the undeclared field ``u`` (an int or a str)."""
    rng = np.random.default_rng(seed)
    m = rand_record(rng)
    r = rng.random()
    if r < 0.1:
        m[str(rng.choice(["n", "b", "tags"]))] = "not-that-type"
    elif r < 0.3:
        m[EXTRA] = int(rng.integers(0, 3)) if rng.random() < 0.5 else str(rng.choice(["p", "q"]))
    return m


def _maxsim(q: np.ndarray, passages: list[np.ndarray]) -> float:
    q64 = q.astype(np.float64)
    return max(float((q64 @ p.astype(np.float64).T).max(axis=1).sum()) for p in passages)


class Rec:
    """One record version of the model."""

    def __init__(self, rid: str, text: str, meta: dict[str, Any], vecs: list[np.ndarray]) -> None:
        self.id, self.text, self.meta, self.vecs = rid, text, meta, vecs


class CollectionMachine(RuleBasedStateMachine):
    """The model: committed and head (writer's view) records, in insertion order, and the
    committed and head types of the undeclared field."""

    #: The collection's compression (None: plain, every late search checked against exact
    #: MaxSim; see :class:`CompressedCollectionMachine`).
    COMPRESSION: latix.Compression | None = None

    def __init__(self) -> None:
        super().__init__()
        self.tmp = Path(tempfile.mkdtemp(prefix="latix-colfuzz-"))
        self.path = self.tmp / "c"
        self.col: Collection | None = None
        self.committed: dict[str, Rec] = {}
        self.head: dict[str, Rec] = {}
        self.extra_committed: str | None = None
        self.extra_head: str | None = None
        self.batch: Any = None  # the open batch's context manager

    @initialize()
    def create(self) -> None:
        self.col = Collection.create(
            self.path,
            model=None,
            dim=DIM,
            dtype="float32",
            compression=self.COMPRESSION,
            schema=SCHEMA,
        )

    def teardown(self) -> None:
        if self.col is not None:
            if self.batch is not None:
                self.batch.__exit__(None, None, None)
            self.col.close()
        shutil.rmtree(self.tmp, ignore_errors=True)

    # ------------------------------------------------------------------------ helpers

    @property
    def c(self) -> Collection:
        assert self.col is not None
        return self.col

    def _publish(self) -> None:
        self.committed = dict(self.head)
        self.extra_committed = self.extra_head

    def _expect(self, exc: type[BaseException] | None, fn: Any) -> Any:
        if exc is None:
            return fn()
        try:
            fn()
        except exc:
            return None
        except BaseException as e:
            raise AssertionError(f"expected {exc.__name__}, got {type(e).__name__}: {e}") from e
        raise AssertionError(f"expected {exc.__name__}, nothing raised")

    def _schema(self, head: bool = True) -> dict[str, str]:
        s = dict(SCHEMA)
        t = self.extra_head if head else self.extra_committed
        if t is not None:
            s[EXTRA] = t
        return s

    def _meta_error(self, meta: dict[str, Any], extra: str | None) -> tuple[bool, str | None]:
        """(whether normalising ``meta`` fails, the type of ``u`` afterwards)."""
        for f, v in meta.items():
            t = SCHEMA.get(f) or extra
            if f == EXTRA and t is None:
                extra = "int" if isinstance(v, int) else "str"
                continue
            want = {"int": int, "str": str, "bool": bool, "float": float, "list[str]": list}[t]
            if want is int and isinstance(v, bool) or not isinstance(v, want):
                if not (want is float and isinstance(v, int) and not isinstance(v, bool)):
                    return True, extra
        return False, extra

    def _write(self, recs: list[tuple[str, str, int]], replace: bool) -> None:
        """The model's verdict on one add/upsert call, then the call."""
        metas = [_meta(s) for _, _, s in recs]
        vecs = [_vectors(s + 1) for _, _, s in recs]
        exc: type[BaseException] | None = None
        seen: set[str] = set()
        extra = self.extra_head
        for (rid, _, _), m in zip(recs, metas, strict=True):
            if rid in seen:
                exc = latix.InvalidArgumentError
                break
            seen.add(rid)
            bad, extra = self._meta_error(m, extra)
            if bad:
                exc = latix.filters.MetadataError
                break
        if exc is None and not replace and any(rid in self.head for rid, _, _ in recs):
            exc = latix.AlreadyExistsError
        call = self.c.upsert if replace else self.c.add
        records = [(rid, text, m) for (rid, text, _), m in zip(recs, metas, strict=True)]
        rep = self._expect(exc, lambda: call(records, vectors=vecs))
        if exc is not None:
            return
        n_old = sum(rid in self.head for rid, _, _ in recs)
        assert rep.n_added == len(recs) - n_old and rep.n_replaced == n_old, rep
        assert rep.n_passages == sum(len(v) for v in vecs)
        for (rid, text, _), m, v in zip(recs, metas, vecs, strict=True):
            self.head.pop(rid, None)  # a new version goes to the end of the insertion order
            self.head[rid] = Rec(rid, text, {k: x for k, x in m.items() if x is not None}, v)
        self.extra_head = extra
        if self.batch is None:
            self._publish()

    def _where(self, seed: int) -> tuple[dict[str, Any], type[BaseException] | None]:
        """A filter and the error parsing it must raise (None: valid)."""
        rng = np.random.default_rng(seed)
        r = rng.random()
        if r < 0.15:  # the undeclared field: unknown until used, then typed
            v: Any = int(rng.integers(0, 3)) if rng.random() < 0.5 else str(rng.choice(["p", "q"]))
            t = self.extra_head
            ok = t is not None and (t == "int") == isinstance(v, int)
            return {EXTRA: v}, None if ok else latix.filters.FilterError
        if r < 0.2:
            return {"n": {"$gte": "2020"}}, latix.filters.FilterError
        if r < 0.25:
            return {"nope": 1}, latix.filters.FilterError
        return rand_filter(rng), None

    def _matches(self, where: dict[str, Any] | None, rec: Rec) -> bool:
        if where is None:
            return True
        if EXTRA in where:
            return rec.meta.get(EXTRA) == where[EXTRA]
        return ref_eval(where, rec.meta)

    # ------------------------------------------------------------------------ writes

    @rule(
        recs=st.lists(st.tuples(ids_st, text_st, seed_st), min_size=1, max_size=3),
        replace=st.booleans(),
    )
    def write(self, recs: list[tuple[str, str, int]], replace: bool) -> None:
        self._write(recs, replace)

    @rule(
        n=st.integers(1, 40),
        fail=st.sampled_from(["dup", "meta", "exists", "none"]),
        replace=st.booleans(),
    )
    def write_chunks(self, n: int, fail: str, replace: bool) -> None:
        """One call of more records than one chunk (256): a failure in its second chunk must
        take back what the first chunk staged, and nothing else of an open batch."""
        base = f"bulk{len(self.head)}-"
        ids = [base + str(i) for i in range(256 + n)]
        recs = [(i, "alpha", {"n": j}) for j, i in enumerate(ids)]
        vecs = [np.full((1, DIM), 0.5 + j % 7, np.float32) for j in range(len(recs))]
        exc: type[BaseException] | None = None
        if fail == "dup":
            recs[-1] = (ids[0], "beta", {})
            exc = latix.InvalidArgumentError
        elif fail == "meta":
            recs[-1] = (ids[-1], "beta", {"n": "not an int"})
            exc = latix.filters.MetadataError
        elif fail == "exists" and self.head:
            recs[-1] = (next(iter(self.head)), "beta", {})
            exc = None if replace else latix.AlreadyExistsError
        call = self.c.upsert if replace else self.c.add
        self._expect(exc, lambda: call(recs, vectors=vecs))
        if exc is not None:
            return
        for (rid, text, m), v in zip(recs, vecs, strict=True):
            self.head.pop(rid, None)
            self.head[rid] = Rec(rid, text, m, [v])
        if self.batch is None:
            self._publish()

    @rule(ids=st.lists(ids_st, max_size=3))
    def delete(self, ids: list[str]) -> None:
        exc: type[BaseException] | None = None
        if len(set(ids)) != len(ids):
            exc = latix.InvalidArgumentError
        elif any(i not in self.head for i in ids):
            exc = latix.NotFoundError
        n = self._expect(exc, lambda: self.c.delete(ids))
        if exc is None:
            assert n == len(ids)
            for i in ids:
                del self.head[i]
            if self.batch is None:
                self._publish()

    @rule(seed=seed_st)
    def delete_where(self, seed: int) -> None:
        where, exc = self._where(seed)
        n = self._expect(exc, lambda: self.c.delete(where=where))
        if exc is None:
            gone = [i for i, r in self.head.items() if self._matches(where, r)]
            assert n == len(gone), (where, n, gone)
            for i in gone:
                del self.head[i]
            if self.batch is None:
                self._publish()

    # ------------------------------------------------------------------------ batches

    @precondition(lambda self: self.batch is None)
    @rule()
    def begin_batch(self) -> None:
        self.batch = self.c.batch()
        assert self.batch.__enter__() is self.c

    @precondition(lambda self: self.batch is not None)
    @rule(how=st.sampled_from(["commit", "raise", "rollback"]))
    def end_batch(self, how: str) -> None:
        cm, self.batch = self.batch, None
        if how == "commit":
            cm.__exit__(None, None, None)
            self._publish()
            return
        if how == "rollback":  # rollback() inside the block, then a normal exit
            self.c.rollback()
            cm.__exit__(None, None, None)
        else:
            try:
                raise _Boom()
            except _Boom as e:
                assert not cm.__exit__(type(e), e, e.__traceback__)
        self.head = dict(self.committed)
        self.extra_head = self.extra_committed

    @precondition(lambda self: self.batch is not None)
    @rule()
    def commit_in_batch(self) -> None:
        self.c.commit()
        self._publish()

    @rule(retrain=st.booleans(), seed=seed_st)
    def compact(self, retrain: bool, seed: int) -> None:
        if retrain and self.COMPRESSION is None:  # no codec: refused before anything is committed
            self._expect(latix.InvalidArgumentError, lambda: self.c.compact(retrain=True))
            return
        # Compaction changes no search result (codes merge in the codes domain, or re-encode
        # kept vectors with the same codec): the same hits and scores before and after.
        q = np.random.default_rng(seed).standard_normal((2, DIM)).astype(np.float32)
        before = None if self.batch is not None or retrain else self._late_hits(q, 6)
        self.c.compact(retrain=retrain)  # commits what a batch staged first
        self._publish()
        if before is not None:
            after = self._late_hits(q, 6)
            assert [h.id for h in after] == [h.id for h in before], (before, after)
            np.testing.assert_allclose(
                [h.score for h in after], [h.score for h in before], atol=1e-5
            )

    @precondition(lambda self: self.batch is None)
    @rule(
        fan=st.sampled_from([None, 2, 3, 10]),
        floor=st.sampled_from([1, 4, 64, 65536]),
        commits=st.integers(0, 4),
    )
    def merge_policy(self, fan: int | None, floor: int, commits: int) -> None:
        """A merge policy on the writer's index handle (which a rollback or a reopen replaces
        by one with the default policy), then a few one-record commits, so that tiers fill
        and merge while later rules read and write."""
        self.c.recover()  # takes the write lock: the writer handle exists
        w = self.c._writer
        assert w is not None
        w.set_merge_policy(fan, floor_tokens=floor)
        assert w.merge_segments_per_tier == fan
        for i in range(commits):
            self._write([(f"m{len(self.head)}-{i}", "delta", 1000 + i)], replace=True)
        if not w.closed:  # (a write whose undo rolled back replaced the writer handle)
            assert w.stats()["merge_failures"] == 0

    @precondition(lambda self: self.batch is not None)
    @rule()
    def close_in_batch_is_refused(self) -> None:
        self._expect(latix.InvalidArgumentError, self.c.close)

    @precondition(lambda self: self.batch is None)
    @rule()
    def reopen(self) -> None:
        self.c.close()
        self.c.close()  # idempotent
        self._expect(latix.IndexClosedError, lambda: len(self.c))
        self.col = Collection.open(self.path)

    @rule()
    def second_reader(self) -> None:
        with Collection.open(self.path) as other:
            assert other.ids() == list(self.committed)
            for i, r in self.committed.items():
                assert other.get(i).text == r.text

    # ------------------------------------------------------------------------ reads

    def _trained(self) -> bool:
        return bool(self.c.index.stats()["trained"])

    def _late_hits(self, q: np.ndarray, k: int, where: Any = None) -> Any:
        """A late search; on a trained compressed collection with every list probed and every
        candidate refined (its re-rank from kept vectors then scores each hit exactly)."""
        opts: dict[str, Any] = {}
        if self.COMPRESSION is not None and self._trained():
            opts = {"nprobe": self.c.index.stats()["n_centroids"], "refine": 10**6}
        return self.c.search(query_vectors=q, k=k, where=where, **opts)

    @rule(seed=seed_st, k=st.integers(1, 12), filtered=st.booleans())
    def search_late(self, seed: int, k: int, filtered: bool) -> None:
        rng = np.random.default_rng(seed)
        q = rng.standard_normal((int(rng.integers(1, 4)), DIM)).astype(np.float32)
        where, exc = self._where(seed) if filtered else (None, None)
        hits = self._expect(exc, lambda: self._late_hits(q, k, where))
        if exc is not None:
            return
        live = [r for r in self.committed.values() if self._matches(where, r)]
        ref = sorted(((_maxsim(q, r.vecs), r.id) for r in live), key=lambda t: -t[0])[:k]
        assert len(hits) == len(ref), (where, [h.id for h in hits], ref)
        if self.COMPRESSION is not None and self._trained():
            # Approximate ranking: every hit allowed, once, best first, scored exactly.
            assert len({h.id for h in hits}) == len(hits)
            assert {h.id for h in hits} <= {r.id for r in live}
            assert [h.score for h in hits] == sorted([h.score for h in hits], reverse=True)
            for h in hits:
                rec = self.committed[h.id]
                assert h.text == rec.text and h.metadata == rec.meta
                assert abs(h.score - _maxsim(q, rec.vecs[h.passage : h.passage + 1])) < 1e-4
            return
        np.testing.assert_allclose([h.score for h in hits], [s for s, _ in ref], atol=1e-4)
        for h, (s, rid) in zip(hits, ref, strict=True):
            if h.id != rid:  # a near tie may swap: the score must still be the record's own
                assert abs(_maxsim(q, self.committed[h.id].vecs) - s) < 1e-4
            rec = self.committed[h.id]
            assert h.text == rec.text and h.metadata == rec.meta
            assert 0 <= h.passage < len(rec.vecs)
            assert abs(h.score - _maxsim(q, rec.vecs[h.passage : h.passage + 1])) < 1e-4
        assert len({h.id for h in hits}) == len(hits)

    @rule(word=st.sampled_from(WORDS), k=st.integers(1, 12), filtered=st.booleans())
    def search_keyword(self, word: str, k: int, filtered: bool) -> None:
        where = {"n": {"$gte": 0}} if filtered else None
        hits = self.c.search(word, k=k, mode="keyword", where=where)
        want = {
            r.id
            for r in self.committed.values()
            if word in r.text.split() and self._matches(where, r)
        }
        assert len(hits) == min(k, len(want)), (word, [h.id for h in hits], want)
        assert {h.id for h in hits} <= want
        scores = [h.score for h in hits]
        assert scores == sorted(scores, reverse=True)

    @rule(seed=seed_st, word=st.sampled_from(WORDS), k=st.integers(1, 12))
    def search_hybrid(self, seed: int, word: str, k: int) -> None:
        rng = np.random.default_rng(seed)
        q = rng.standard_normal((2, DIM)).astype(np.float32)
        where = {"b": True} if rng.random() < 0.5 else None
        hits = self.c.search(word, k=k, mode="hybrid", query_vectors=q, where=where)
        live = {r.id for r in self.committed.values() if self._matches(where, r)}
        # the late list holds every allowed record unless there are more than its depth (100)
        assert len(hits) == min(k, len(live)) and {h.id for h in hits} <= live
        scores = [h.score for h in hits]
        assert scores == sorted(scores, reverse=True)
        for h in hits:
            if h.late_score is None:  # a keyword-only hit: the late list stops at its depth
                assert len(live) > HYBRID_DEFAULTS["depth"], (h, len(live))
                continue
            assert abs(h.late_score - _maxsim(q, self.committed[h.id].vecs)) < 1e-4

    @rule(seed=seed_st)
    def count_where(self, seed: int) -> None:
        where, exc = self._where(seed)
        n = self._expect(exc, lambda: self.c.count(where))
        if exc is None:
            assert n == sum(self._matches(where, r) for r in self.committed.values()), where
            ids = self.c.ids(where)
            assert ids == [i for i, r in self.committed.items() if self._matches(where, r)]

    @rule(ids=st.lists(ids_st, max_size=4))
    def get_many(self, ids: list[str]) -> None:
        got = self.c.get_many(ids)
        for i, r in zip(ids, got, strict=True):
            if i in self.committed:
                assert r is not None and r.text == self.committed[i].text
                assert r.metadata == self.committed[i].meta
            else:
                assert r is None
                self._expect(latix.NotFoundError, lambda i=i: self.c.get(i))

    @rule()
    def verify(self) -> None:
        self.c.verify()

    @invariant()
    def committed_view(self) -> None:
        if self.col is None:
            return
        c = self.c
        assert len(c) == len(self.committed)
        assert c.ids() == list(self.committed), (c.ids(), list(self.committed))
        got_all = c.get_many(list(self.committed))
        for r, got in zip(self.committed.values(), got_all, strict=True):
            assert got is not None and got.text == r.text and got.metadata == r.meta, (got, r)
        for i in list(self.committed)[:3]:
            assert i in c and c.get(i).text == self.committed[i].text
        st_ = c.stats()
        assert st_["n_records"] == len(self.committed)
        assert st_["n_passages"] == sum(len(r.vecs) for r in self.committed.values())
        assert c.schema.get(EXTRA) == self.extra_head


class CompressedCollectionMachine(CollectionMachine):
    """The same machine on a compressed collection that trains its codec as soon as it holds
    256 tokens (a ``write_chunks`` step gets there) and keeps its vectors: late searches are
    checked against exact MaxSim until then, and after for what an approximate search with an
    exact re-rank guarantees; ``compact(retrain=True)`` is allowed."""

    COMPRESSION = latix.Compression(
        bytes_per_token=1,
        n_centroids=4,
        keep_vectors=True,
        train_min_tokens=256,
        train_sample_tokens=512,
        pool_factor=1,
    )


MACHINES: dict[str, type[CollectionMachine]] = {
    "plain": CollectionMachine,
    "compressed": CompressedCollectionMachine,
}


def run(max_examples: int, seed: int | None = 0, steps: int = 30, kind: str = "plain") -> None:
    """Runs the state machine of collection ``kind`` (a key of :data:`MACHINES`) for
    ``max_examples`` sequences of up to ``steps`` steps (raises on the first failure). ``seed``
    fixes hypothesis's random source (None: a fresh one)."""
    from hypothesis import seed as hypothesis_seed
    from hypothesis.stateful import run_state_machine_as_test

    machine: Any = MACHINES[kind]
    if seed is not None:
        # @seed on a state machine class is what run_state_machine_as_test honours.
        machine = hypothesis_seed(seed)(type(f"CollectionSeed{seed}", (MACHINES[kind],), {}))
    run_state_machine_as_test(
        machine,
        settings=settings(
            max_examples=max_examples,
            stateful_step_count=steps,
            deadline=None,
            database=None,
            suppress_health_check=list(HealthCheck),
        ),
    )


def main(argv: list[str] | None = None) -> int:
    """Command line: ``python -m harness.collection_fuzz --seconds 60``."""
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--seconds", type=float, default=60)
    ap.add_argument("--seed", type=int, default=1, help="seed of the first round (then +1 each)")
    ap.add_argument("--steps", type=int, default=40, help="steps per call sequence")
    a = ap.parse_args(argv)
    t0 = time.monotonic()
    rounds = 0
    while time.monotonic() - t0 < a.seconds:
        for kind in MACHINES:  # a failure names its round's seed and kind
            run(20, seed=a.seed + rounds, steps=a.steps, kind=kind)
        rounds += 1
    print(
        f"[collection_fuzz] sequences={rounds * 20 * len(MACHINES)} failures=0 "
        f"seeds={a.seed}..{a.seed + rounds - 1} seconds={time.monotonic() - t0:.0f}"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
