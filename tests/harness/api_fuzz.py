"""Property-based fuzzing of the public Python API (hypothesis stateful testing).

A state machine drives one ``latix.Index`` with arbitrary ids (str of any kind, lone surrogates
included, but also ints, bytes, None), arbitrary arrays (any dtype among
float32/float16/float64/int32, rank 0-3, any shape, NaN/Inf/huge values, broadcast, strided and
unaligned views), arbitrary ``k``, ``n_threads`` and ``replace`` (non-bools included) and
arbitrary call sequences (add, replace, delete, commit, compact, close/reopen, search, get,
contains). A plain-Python model predicts every
outcome: a valid call must succeed and change the model exactly; an invalid one must raise the
documented ``LatixError`` subclass and change nothing. Searches are checked against a numpy brute
force over the model's committed documents, ``get`` byte for byte.

``python -m harness.api_fuzz --seconds 60`` runs it for a bounded time; the pytest wrapper
(tests/hardening/test_api_fuzz.py) runs a fixed number of examples. A failure prints the minimal
failing call sequence: add it as a regression test.
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
from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, precondition, rule

DIM = 4
F16_MAX = 65504.0
MAX_ABS = 1e9  # latix.maxsim's MAX_ABS_VALUE: no score can overflow float32

floats = st.floats(allow_nan=True, allow_infinity=True, width=32)
small_floats = st.floats(min_value=-4, max_value=4, width=32)
valid_matrix = st.builds(
    lambda a, dt: a.astype(dt),
    hnp.arrays(np.float32, st.tuples(st.integers(1, 4), st.just(DIM)), elements=small_floats),
    st.sampled_from([np.float32, np.float16]),
)


def _cast(a: Any, dt: Any) -> Any:
    with np.errstate(all="ignore"):
        return a.astype(dt)


any_array = st.builds(
    _cast,
    hnp.arrays(
        np.float64,
        hnp.array_shapes(min_dims=0, max_dims=3, min_side=0, max_side=5),
        elements=st.one_of(st.integers(-3, 3).map(float), floats, st.just(1e6), st.just(2e9)),
    ),
    st.sampled_from([np.float32, np.float16, np.float64, np.int32]),
)


def _unaligned(a: Any) -> Any:
    """The same values in a buffer one byte off alignment (numpy: not ALIGNED)."""
    buf = np.zeros(a.nbytes + 1, np.uint8)
    u = buf[1:].view(a.dtype).reshape(a.shape)
    u[...] = a
    return u


matrix = st.one_of(
    valid_matrix,
    valid_matrix,
    any_array,
    st.just(np.asfortranarray(np.ones((2, DIM), np.float32))),
    valid_matrix.map(_unaligned),
    valid_matrix.map(lambda a: np.broadcast_to(a[:1], (3, DIM))),
    valid_matrix.map(lambda a: np.repeat(a, 2, axis=0)[::2]),
    st.none(),
    st.text(max_size=2),
)
id_text = st.one_of(
    st.text(alphabet="abc", max_size=2),
    st.text(max_size=6),
    st.text(st.characters(codec=None, categories=["Cs", "Ll"]), max_size=3),  # lone surrogates
)
any_id = st.one_of(id_text, id_text, id_text, st.integers(), st.none(), st.binary(max_size=2))


def valid_matrix_value(a: Any, storage: str) -> bool:
    """Would latix accept ``a`` as a document/query matrix for an index of ``storage`` dtype?"""
    if not isinstance(a, np.ndarray) or a.ndim != 2 or a.dtype not in (np.float32, np.float16):
        return False
    if a.shape[0] < 1 or a.shape[1] != DIM or not np.all(np.isfinite(a)):
        return False
    if np.any(np.abs(a.astype(np.float64)) > MAX_ABS):
        return False
    return not (storage == "float16" and a.dtype == np.float32 and np.any(np.abs(a) > F16_MAX))


def valid_id(i: Any) -> bool:
    if not isinstance(i, str):
        return False
    try:
        return 0 < len(i.encode("utf-8")) <= 65535  # a lone surrogate has no UTF-8 form
    except UnicodeEncodeError:
        return False


class IndexMachine(RuleBasedStateMachine):
    """The model: committed id -> stored array, staged adds and deletes."""

    def __init__(self) -> None:
        super().__init__()
        self.tmp = Path(tempfile.mkdtemp(prefix="latix-apifuzz-"))
        self.committed: dict[str, Any] = {}
        self.staged: dict[str, Any] = {}
        self.deleted: set[str] = set()
        self.ix: latix.Index | None = None
        self.storage = "float32"

    @initialize(storage=st.sampled_from(["float32", "float16"]))
    def create(self, storage: str) -> None:
        self.storage = storage
        self.ix = latix.Index.create(self.tmp / "ix", dim=DIM, dtype=storage)

    def teardown(self) -> None:
        if self.ix is not None:
            self.ix.close()
        shutil.rmtree(self.tmp, ignore_errors=True)

    # The live view after staged changes (what add/delete check against).
    def live(self, i: str) -> bool:
        return i in self.staged or (i in self.committed and i not in self.deleted)

    def expect(self, exc: type[BaseException] | None, fn: Any) -> Any:
        if exc is None:
            return fn()
        try:
            fn()
        except exc as e:
            assert isinstance(e, latix.LatixError) and str(e)
            return None
        raise AssertionError(f"expected {exc.__name__}")

    @rule(
        ids=st.lists(any_id, max_size=4),
        mats=st.lists(matrix, max_size=4),
        replace=st.one_of(st.booleans(), st.booleans(), st.sampled_from(["False", 0, 1, None])),
    )
    def add(self, ids: list[Any], mats: list[Any], replace: Any) -> None:
        assert self.ix is not None
        mats = mats[: len(ids)] if len(mats) >= len(ids) else mats
        if not isinstance(replace, bool):
            self.expect(latix.InvalidArgumentError, lambda: self.ix.add(ids, mats, replace=replace))  # type: ignore[union-attr]
            return
        ok = (
            all(valid_id(i) for i in ids)
            and len(set(ids)) == len(ids)
            and len(ids) == len(mats)
            and all(valid_matrix_value(m, self.storage) for m in mats)
        )
        if not ok:
            self.expect(latix.InvalidArgumentError, lambda: self.ix.add(ids, mats, replace=replace))  # type: ignore[union-attr]
            return
        if not replace and any(self.live(i) for i in ids):
            self.expect(latix.AlreadyExistsError, lambda: self.ix.add(ids, mats, replace=replace))  # type: ignore[union-attr]
            return
        self.ix.add(ids, mats, replace=replace)
        for i, m in zip(ids, mats, strict=True):
            if i in self.committed:
                self.deleted.add(i)
            self.staged[i] = m.astype(self.storage)

    @rule(ids=st.lists(any_id, max_size=3))
    def delete(self, ids: list[Any]) -> None:
        assert self.ix is not None
        if not all(valid_id(i) for i in ids) or len(set(ids)) != len(ids):
            self.expect(latix.InvalidArgumentError, lambda: self.ix.delete(ids))  # type: ignore[union-attr]
            return
        if not all(self.live(i) for i in ids):
            self.expect(latix.NotFoundError, lambda: self.ix.delete(ids))  # type: ignore[union-attr]
            return
        self.ix.delete(ids)
        for i in ids:
            if i in self.staged:
                del self.staged[i]
            else:
                self.deleted.add(i)

    # Rules biased towards valid calls, so that the index actually fills up and changes.
    @rule(
        ids=st.lists(
            st.sampled_from(["a", "b", "c", "aa", "ab", "\u00e9", "x y"]),
            min_size=1,
            max_size=3,
            unique=True,
        ),
        data=st.data(),
        replace=st.booleans(),
    )
    def add_valid(self, ids: list[str], data: Any, replace: bool) -> None:
        self.add(ids, [data.draw(valid_matrix) for _ in ids], replace)

    @precondition(lambda self: self.ix is not None)
    @rule(data=st.data())
    def delete_existing(self, data: Any) -> None:
        live = sorted(i for i in set(self.committed) | set(self.staged) if self.live(i))
        if live:
            self.delete(
                data.draw(st.lists(st.sampled_from(live), min_size=1, max_size=3, unique=True))
            )

    @rule(q=valid_matrix, k=st.integers(1, 8))
    def search_valid(self, q: Any, k: int) -> None:
        self.search(q, k)

    def _publish(self) -> None:
        for i in self.deleted:
            self.committed.pop(i, None)
        self.committed.update(self.staged)
        self.staged, self.deleted = {}, set()

    @rule()
    def commit(self) -> None:
        assert self.ix is not None
        self.ix.commit()
        self._publish()

    @rule()
    def compact(self) -> None:
        assert self.ix is not None
        self.ix.compact()
        self._publish()

    @rule(mode=st.sampled_from(["r", "w"]))
    def reopen(self, mode: str) -> None:
        assert self.ix is not None
        self.ix.close()
        with self.ix_closed_checks():
            pass
        self.ix = latix.Index.open(self.tmp / "ix", mode)  # type: ignore[arg-type]
        self.staged, self.deleted = {}, set()

    def ix_closed_checks(self) -> Any:
        import contextlib

        assert self.ix is not None
        self.expect(latix.IndexClosedError, lambda: len(self.ix))  # type: ignore[arg-type]
        return contextlib.nullcontext()

    @rule(
        q=matrix,
        k=st.one_of(st.integers(-2, 12), st.just(2**40), st.floats(0, 3), st.none()),
        n_threads=st.one_of(st.none(), st.none(), st.integers(-1, 1100)),
    )
    def search(self, q: Any, k: Any, n_threads: Any = None) -> None:
        assert self.ix is not None
        if n_threads is not None and not 1 <= n_threads <= 1024:
            self.expect(
                latix.InvalidArgumentError, lambda: self.ix.search(q, k=k, n_threads=n_threads)
            )  # type: ignore[union-attr]
            return
        k_ok = isinstance(k, int) and 1 <= k <= 2**26
        is_batch = isinstance(q, np.ndarray) and q.ndim == 3
        if not k_ok or is_batch or not valid_matrix_value(q, "float32"):
            if is_batch and k_ok and all(valid_matrix_value(x, "float32") for x in q):
                self.ix.search(q, k=k, n_threads=n_threads)
                return
            self.expect(
                latix.InvalidArgumentError, lambda: self.ix.search(q, k=k, n_threads=n_threads)
            )  # type: ignore[union-attr]
            return
        scores, ids = self.ix.search(q, k=k, n_threads=n_threads)
        assert scores.shape == (1, k) and ids.shape == (1, k)
        qf = q.astype(np.float32).astype(np.float64)
        ref = {
            i: float((qf @ v.astype(np.float64).T).max(axis=1).sum())
            for i, v in self.committed.items()
        }
        best = sorted(ref.values(), reverse=True)[:k]
        n = len(best)
        np.testing.assert_allclose(scores[0, :n], best, rtol=1e-4, atol=1e-3)
        assert all(np.isneginf(scores[0, n:])) and all(x == "" for x in ids[0, n:])
        for s, i in zip(scores[0, :n], ids[0, :n], strict=True):
            assert abs(ref[i] - s) <= 1e-3 + 1e-4 * abs(s)

    @rule(i=any_id)
    def get(self, i: Any) -> None:
        assert self.ix is not None
        if not valid_id(i) and not (isinstance(i, str) and i == ""):
            self.expect(latix.InvalidArgumentError, lambda: self.ix.get(i))  # type: ignore[union-attr]
            assert (i in self.ix) is False
        elif i in self.committed:
            v = self.ix.get(i)
            assert v.dtype == self.committed[i].dtype and np.array_equal(v, self.committed[i])
            assert i in self.ix
        else:
            self.expect(latix.NotFoundError, lambda: self.ix.get(i))  # type: ignore[union-attr]
            assert i not in self.ix

    @precondition(lambda self: self.ix is not None)
    @invariant()
    def committed_view(self) -> None:
        assert self.ix is not None
        assert len(self.ix) == len(self.committed)
        assert sorted(self.ix.ids()) == sorted(self.committed)


# Health checks stay on (a strategy that filters too much or generates too slowly is a harness
# bug to fix, not to hide); only the per-example deadline is off, as one example is a whole call
# sequence whose duration depends on the machine's load.
SETTINGS = settings(
    deadline=None,
    stateful_step_count=25,
    database=None,
)


def run(max_examples: int, seed: int | None = 0) -> None:
    """Runs the state machine for ``max_examples`` sequences (raises on the first failure).

    ``seed`` fixes hypothesis's random source, so a run (and a failure) is repeatable; ``None``
    draws a fresh one. The pytest wrapper uses a fixed seed; ``--seconds`` runs seed each round.
    """
    from hypothesis import seed as hypothesis_seed
    from hypothesis.stateful import run_state_machine_as_test

    machine: Any = IndexMachine
    if seed is not None:
        # @seed on a state machine class is what run_state_machine_as_test honours; a subclass
        # per seed keeps IndexMachine itself unseeded.
        machine = hypothesis_seed(seed)(type(f"IndexMachineSeed{seed}", (IndexMachine,), {}))
    run_state_machine_as_test(machine, settings=settings(SETTINGS, max_examples=max_examples))


def main(argv: list[str] | None = None) -> int:
    """Command line: ``python -m harness.api_fuzz --seconds 60``."""
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--seconds", type=float, default=60)
    ap.add_argument("--seed", type=int, default=1, help="seed of the first round (then +1 each)")
    a = ap.parse_args(argv)
    t0 = time.monotonic()
    rounds = 0
    while time.monotonic() - t0 < a.seconds:
        run(20, seed=a.seed + rounds)  # a failure names its round's seed in the traceback
        rounds += 1
    print(
        f"[api_fuzz] sequences={rounds * 20} failures=0 seeds={a.seed}..{a.seed + rounds - 1} "
        f"seconds={time.monotonic() - t0:.0f}"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
