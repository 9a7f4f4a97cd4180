"""Edges of the Python API found by an independent attack: unaligned arrays, non-bool flags, ids
that are not valid Unicode, finite inputs whose scores would overflow, values changed by another
thread or process while ``add`` runs, token counts after compaction, and files truncated under
an open handle.
"""

from __future__ import annotations

import gc
import multiprocessing
import subprocess
import sys
from collections.abc import Iterator
from multiprocessing import shared_memory
from pathlib import Path
from typing import Any

import latix
import numpy as np
import pytest

DIM = 16


def unaligned(a: np.ndarray) -> np.ndarray:
    """A copy of ``a`` whose data starts one byte past an aligned address (numpy: not ALIGNED)."""
    buf = np.zeros(a.nbytes + 1, np.uint8)
    u = buf[1:].view(a.dtype).reshape(a.shape)
    u[...] = a
    assert not u.flags.aligned and u.flags.c_contiguous
    return u


@pytest.mark.parametrize("dtype", [np.float32, np.float16])
def test_unaligned_arrays_are_accepted(tmp_path: Path, dtype: type) -> None:
    rng = np.random.default_rng(0)
    docs = [rng.standard_normal((n, DIM)).astype(dtype) for n in (3, 7, 1)]
    q = rng.standard_normal((4, DIM)).astype(dtype)
    with latix.Index.create(tmp_path / "a", DIM) as a, latix.Index.create(tmp_path / "u", DIM) as u:
        a.add(["x", "y", "z"], docs)
        u.add(["x", "y", "z"], [unaligned(d) for d in docs])
        a.commit()
        u.commit()
        for i in "xyz":
            np.testing.assert_array_equal(a.get(i), u.get(i))
        sa, ha = a.search(q, k=3)
        su, hu = u.search(unaligned(q), k=3)
        np.testing.assert_array_equal(ha, hu)
        np.testing.assert_array_equal(sa, su)
    if dtype == np.float32:
        d = np.concatenate(docs).astype(np.float32)
        off = np.array([0, 3, 10, 11])
        np.testing.assert_array_equal(
            latix.maxsim(q, d, off), latix.maxsim(unaligned(q), unaligned(d), unaligned(off))
        )


def test_flags_must_be_bools(tmp_path: Path) -> None:
    with latix.Index.create(tmp_path / "ix", DIM) as ix:
        v = [np.ones((2, DIM), np.float32)]
        ix.add(["a"], v)
        for bad in ("False", "no", 1, 0, None, 1.0):
            with pytest.raises(latix.InvalidArgumentError, match="replace must be a bool"):
                ix.add(["a"], v, replace=bad)  # type: ignore[arg-type]
        with pytest.raises(latix.AlreadyExistsError):
            ix.add(["a"], v, replace=np.bool_(False))  # type: ignore[arg-type]
        ix.add(["a"], v, replace=np.bool_(True))  # type: ignore[arg-type]
        for bad in ("False", 1, None):
            with pytest.raises(latix.InvalidArgumentError, match="retrain must be a bool"):
                ix.compact(retrain=bad)  # type: ignore[arg-type]
        ix.compact(retrain=False)
        assert len(ix) == 1


def test_ids_that_are_not_unicode(tmp_path: Path) -> None:
    bad = "doc\ud800"
    with latix.Index.create(tmp_path / "ix", DIM) as ix:
        v = np.ones((2, DIM), np.float32)
        ix.add(["ok"], [v])
        ix.commit()
        with pytest.raises(latix.InvalidArgumentError, match=r"ids\[1\].*surrogate"):
            ix.add(["fine", bad], [v, v])
        with pytest.raises(latix.InvalidArgumentError, match=r"ids\[0\].*surrogate"):
            ix.delete([bad])
        with pytest.raises(latix.InvalidArgumentError, match=r"subset\[1\].*surrogate"):
            ix.search(v, k=1, subset=["ok", bad])
        with pytest.raises(latix.InvalidArgumentError, match="id.*surrogate"):
            ix.get(bad)
        assert bad not in ix  # can never be an id, like any non-str
        assert ix.ids() == ["ok"] and "fine" not in ix


def test_scores_cannot_overflow(tmp_path: Path) -> None:
    big = np.full((2, DIM), 1e30, np.float32)
    ok = np.full((2, DIM), 1e9, np.float32)
    with latix.Index.create(tmp_path / "ix", DIM, dtype="float32") as ix:
        with pytest.raises(latix.InvalidArgumentError, match=r"embeddings\[0\].*1e\+?9"):
            ix.add(["big"], [big])
        ix.add(["ok"], [ok])
        ix.commit()
        with pytest.raises(latix.InvalidArgumentError, match=r"queries\[0\].*1e\+?9"):
            ix.search(big, k=1)
        s, _ = ix.search(ok, k=1)
        assert np.isfinite(s).all() and s[0, 0] == pytest.approx(2 * DIM * 1e18, rel=1e-5)
    with pytest.raises(latix.InvalidArgumentError, match="query"):
        latix.maxsim(big, ok, np.array([0, 2]))
    with pytest.raises(latix.InvalidArgumentError, match="doc_vectors"):
        latix.maxsim(ok, big, np.array([0, 2]))
    assert np.isfinite(latix.maxsim(ok, ok, np.array([0, 2]))).all()


def _flipper(name: str, shape: tuple[int, int], ready: Any, stop: Any) -> None:
    """Flips one value of the shared array between NaN and 0 until ``stop`` (another process,
    so it runs on the other core whatever the GIL does)."""
    shm = shared_memory.SharedMemory(name=name)
    v: np.ndarray = np.ndarray(shape, np.float32, buffer=shm.buf)
    ready.set()
    while not stop.is_set():
        for _ in range(1000):
            v[-1, 0] = np.nan
            v[-1, 0] = 0.0
    del v
    shm.close()


@pytest.fixture
def shared_array() -> Iterator[Any]:
    """Makes float32 arrays in shared memory, released at teardown (after pytest has reported a
    failure: its report reads the arrays)."""
    blocks: list[Any] = []

    def make(shape: tuple[int, int]) -> tuple[str, np.ndarray]:
        shm = shared_memory.SharedMemory(create=True, size=shape[0] * shape[1] * 4)
        blocks.append(shm)
        return shm.name, np.ndarray(shape, np.float32, buffer=shm.buf)

    yield make
    gc.collect()
    for shm in blocks:
        try:
            shm.close()
        except BufferError:  # still referenced (a failure report): leave it mapped
            pass
        shm.unlink()


@pytest.mark.parametrize("dtype", ["float16", "float32"])
def test_values_changed_during_add_are_checked_as_stored(
    tmp_path: Path, dtype: str, shared_array: Any
) -> None:
    # Another process flips the last value of the document between NaN and 0 while add() runs:
    # whatever add() stores must be finite, or add() must refuse. (A race: on a latix that checked
    # the caller's buffer before copying it, a few percent of these adds stored a NaN.)
    ctx = multiprocessing.get_context("spawn")
    stored = refused = 0
    others: list[str] = []
    with latix.Index.create(tmp_path / "ix", DIM, dtype=dtype) as ix:
        for rows in (500, 2000, 3000):
            name, v = shared_array((rows, DIM))
            v[...] = np.random.default_rng(rows).standard_normal((rows, DIM))
            ready, stop = ctx.Event(), ctx.Event()
            p = ctx.Process(target=_flipper, args=(name, (rows, DIM), ready, stop))
            p.start()
            assert ready.wait(60), "the flipping process did not start"
            try:
                for i in range(100):
                    try:
                        ix.add([f"d{rows}-{i}"], [v])
                        stored += 1
                    except latix.InvalidArgumentError as e:
                        refused += 1
                        if "non-finite" not in str(e):
                            others.append(str(e))
            finally:
                stop.set()
                p.join()
        ix.commit()
        nan = [i for i in ix.ids() if not np.isfinite(ix.get(i)).all()]
    assert not others, others[:3]
    assert not nan, f"{len(nan)} documents were stored with a NaN: {nan[:5]}"
    assert stored + refused == 300 and stored > 0


def test_compaction_keeps_original_token_counts(tmp_path: Path) -> None:
    rng = np.random.default_rng(3)
    lens = rng.integers(1, 30, 300)
    docs = [rng.standard_normal((int(n), DIM)).astype(np.float32) for n in lens]
    comp = latix.Compression(
        bytes_per_token=4, n_centroids=16, train_min_tokens=256, train_sample_tokens=4000
    )
    with latix.Index.create(tmp_path / "ix", DIM, compression=comp) as ix:
        ix.add([f"d{i}" for i in range(300)], docs)
        ix.commit()
        ix.add(["late"], [docs[0]])
        ix.commit()
        assert ix.stats()["trained"] and not ix.stats()["keep_vectors"]
        total = int(lens.sum()) + int(lens[0])
        assert ix.stats()["n_tokens"] == ix.num_tokens == total
        ix.delete(["d1"])
        ix.compact()
        total -= int(lens[1])
        assert ix.stats()["n_tokens"] == ix.num_tokens == total
        ix.compact(retrain=True)
        assert ix.stats()["n_tokens"] == ix.num_tokens == total
    with latix.Index.open(tmp_path / "ix") as ix:
        assert ix.stats()["n_tokens"] == total
        ix.verify()


TRUNCATE = """
import sys, time, numpy as np, latix, os
p = sys.argv[1]
r = latix.Index.open(p)
q = np.ones((2, 16), np.float32)
r.search(q, k=5)
w = latix.Index.open(p, "w")
seg = sorted(f for f in os.listdir(p) if f.startswith(sys.argv[2]))[0]
os.truncate(os.path.join(p, seg), 4096)  # from outside latix, under the open handles
time.sleep(0.05)  # calls check the mapped files' sizes at most every 10 ms
for what, f in [("search", lambda: r.search(q, k=5)), ("add", lambda: w.add(["new"], [q])),
                ("get", lambda: r.get("d1")), ("verify", r.verify)]:
    try:
        f()
        print(what, "OK")
    except latix.CorruptedIndexError as e:
        print(what, "ERR", e)
"""


@pytest.mark.parametrize("compressed", [False, True])
def test_truncated_file_is_reported_not_a_crash(tmp_path: Path, compressed: bool) -> None:
    # Truncating a mapped file from outside latix would kill the next read with SIGBUS: calls
    # check the mapped files' sizes first (at most every 10 ms; best effort: a truncation racing
    # a read can still crash, see README "Threads, processes and fork").
    p = tmp_path / "ix"
    rng = np.random.default_rng(0)
    comp = (
        latix.Compression(
            bytes_per_token=4, n_centroids=16, train_min_tokens=256, train_sample_tokens=4000
        )
        if compressed
        else None
    )
    with latix.Index.create(p, DIM, compression=comp) as ix:
        ix.add(
            [f"d{i}" for i in range(2000)], list(rng.standard_normal((2000, 8, DIM), np.float32))
        )
        ix.commit()
    prefix = "seg-0000000001.ivf" if compressed else "seg-"
    out = subprocess.run(
        [sys.executable, "-c", TRUNCATE, str(p), prefix], capture_output=True, text=True, timeout=60
    )
    assert out.returncode == 0, f"exit {out.returncode} (SIGBUS is -7): {out.stderr[-1000:]}"
    lines = out.stdout.splitlines()
    assert len(lines) == 4, out.stdout
    for ln in lines:
        if compressed and ln.startswith("add"):
            assert ln == "add OK"  # staging reads no inverted lists
            continue
        assert " ERR " in ln and prefix in ln, ln
        # verify() re-reads the files afresh; the other calls find their maps' files shrunk.
        assert ln.startswith("verify") or "size changed" in ln, ln
