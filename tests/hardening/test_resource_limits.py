"""Huge parameters and inputs: every depth and size a caller controls is capped or rejected
against the index before anything is allocated, and an allocation that cannot succeed is a
``LatixMemoryError``, never a process abort. Each case runs in a subprocess (an abort would kill
pytest) that must exit 0 after printing the outcome. Also: latix's thread pools stay bounded
whatever ``n_threads`` values are used.
"""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap

import pytest

SETUP = """
import json, os, sys
import numpy as np
import latix
rng = np.random.default_rng(0)
def build(path, compressed, keep=False, n=300, dim=16):
    comp = latix.Compression(bytes_per_token=4, n_centroids=16, train_min_tokens=256,
                             train_sample_tokens=4000, keep_vectors=keep) if compressed else None
    ix = latix.Index.create(path, dim=dim, compression=comp)
    docs = [rng.standard_normal((8, dim)).astype(np.float32) for _ in range(n)]
    ix.add([f"d{i}" for i in range(n)], docs)
    ix.commit()
    return ix
def outcome(f):
    try:
        r = f()
        print("OK", json.dumps(r) if r is not None else "")
    except latix.LatixError as e:
        print("ERR", type(e).__name__, str(e)[:300])
"""


def run_case(body: str, tmp: str, timeout: float = 120) -> list[str]:
    """Runs SETUP + body in a fresh interpreter; returns its outcome lines (exit 0 required)."""
    code = SETUP + textwrap.dedent(body)
    env = dict(os.environ, TMP_DIR=tmp)
    p = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=timeout, env=env
    )
    assert p.returncode == 0, f"exit {p.returncode}\n{p.stdout[-2000:]}\n{p.stderr[-3000:]}"
    return [ln for ln in p.stdout.splitlines() if ln.startswith(("OK", "ERR"))]


@pytest.mark.parametrize("keep", [False, True])
def test_huge_refine_is_capped_at_the_index_size(tmp_path: object, keep: bool) -> None:
    out = run_case(
        """
        ix = build(os.environ["TMP_DIR"] + "/ix", compressed=True, keep=KEEP)
        assert ix.stats()["trained"]
        q = rng.standard_normal((4, 16)).astype(np.float32)
        for refine in (10**9, 2**62):
            outcome(lambda: ix.search(q, k=5, refine=refine)[1].tolist())
        outcome(lambda: ix.search(q, k=5, refine=300)[1].tolist())
        outcome(lambda: ix.search(q, k=300, refine=10**9, nprobe=16)[1].tolist())
        outcome(lambda: ix.search(q, k=300, refine=300, nprobe=16)[1].tolist())
        """.replace("KEEP", repr(keep)),
        str(tmp_path),
    )
    assert all(o.startswith("OK") for o in out), out
    # Capped, not changed: a depth above the index size means "every document".
    assert out[0] == out[1] == out[2]
    assert out[3] == out[4]


def test_huge_depth_parameters_are_rejected_or_capped(tmp_path: object) -> None:
    out = run_case(
        """
        ix = build(os.environ["TMP_DIR"] + "/ix", compressed=True)
        q = rng.standard_normal((4, 16)).astype(np.float32)
        outcome(lambda: ix.search(q, k=2**40))
        outcome(lambda: ix.search(q, k=10, nprobe=2**40))
        outcome(lambda: ix.search(q, k=10, n_threads=2**40))
        outcome(lambda: ix.search([q] * 100, k=2**20))
        outcome(lambda: ix.search(q, k=2**20)[0].shape)
        """,
        str(tmp_path),
    )
    assert [o.split()[:2] for o in out[:4]] == [["ERR", "InvalidArgumentError"]] * 4, out
    assert out[4] == "OK [1, 1048576]", out


_HUGE_INPUT_CALLS = [
    "ix.add(['big'], [big])",
    "ix.add(['big'], big[None])",
    "ix.search(big, k=5)",
    "latix.maxsim(big, np.ones((4, 16), np.float32), np.array([0, 4]))",
    "latix.maxsim(np.ones((4, 16), np.float32), big, np.array([0, 2**31]))",
]


# latix.maxsim takes float32 queries only, so a float16 `big` is never passed as its query.
@pytest.mark.parametrize(
    ("call", "dtype"),
    [
        (call, dtype)
        for call in _HUGE_INPUT_CALLS
        for dtype in ("float32", "float16")
        if not ("maxsim(big" in call and dtype == "float16")
    ],
)
def test_huge_non_contiguous_input_is_a_memory_error(
    tmp_path: object, call: str, dtype: str
) -> None:
    out = run_case(
        f"""
        ix = build(os.environ["TMP_DIR"] + "/ix", compressed=False)
        big = np.broadcast_to(np.ones((1, 16), np.{dtype}), (2**31, 16))
        outcome(lambda: {call})
        outcome(lambda: len(ix))
        """,
        str(tmp_path),
    )
    assert out[0].startswith("ERR LatixMemoryError"), out
    assert "2147483648" in out[0] or "GiB" in out[0], out
    assert out[1] == "OK 300", out  # nothing was staged, the handle still works


def test_moderate_non_contiguous_input_is_copied_and_stored(tmp_path: object) -> None:
    out = run_case(
        """
        import numpy as np
        ix = build(os.environ["TMP_DIR"] + "/ix", compressed=False)
        row = rng.standard_normal((1, 16)).astype(np.float32)
        v = np.broadcast_to(row, (5000, 16))
        t = np.asfortranarray(rng.standard_normal((7, 16)).astype(np.float32))
        ix.add(["wide", "fortran"], [v, t]); ix.commit()
        same = np.array_equal(ix.get("wide"), np.ascontiguousarray(v).astype(np.float16))
        same2 = np.array_equal(ix.get("fortran"), t.astype(np.float16))
        outcome(lambda: [same, same2])
        s, h = ix.search(v[:3], k=1)
        outcome(lambda: h.tolist())
        """,
        str(tmp_path),
    )
    assert out == ["OK [true, true]", 'OK [["wide"]]'], out


def test_thread_pools_stay_bounded(tmp_path: object) -> None:
    out = run_case(
        """
        ix = build(os.environ["TMP_DIR"] + "/ix", compressed=False, n=2000)
        q = rng.standard_normal((4, 16)).astype(np.float32)
        tasks = lambda: len(os.listdir("/proc/self/task"))
        base = tasks()
        want = ix.search(q, k=10)[1].tolist()
        same = True
        for n in range(1, 101):
            same &= ix.search(q, k=10, n_threads=n)[1].tolist() == want
            latix.maxsim(q, np.ones((40, 16), np.float32), np.arange(0, 41, 4), n_threads=n)
        import time
        for _ in range(100):  # evicted pools' threads exit asynchronously
            if tasks() - base <= 4 * os.cpu_count() + 4:
                break
            time.sleep(0.05)
        outcome(lambda: [same, tasks() - base, os.cpu_count()])
        """,
        str(tmp_path),
    )
    same, extra, ncpu = eval(out[0][3:].replace("true", "True").replace("false", "False"))
    assert same
    assert extra <= 4 * ncpu + 4, f"{extra} threads left after n_threads = 1..100"
