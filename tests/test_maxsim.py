"""latix.maxsim against a plain numpy MaxSim, and every kind of bad input."""

from __future__ import annotations

import os
import platform
import subprocess
import sys

import latix
import numpy as np
import numpy.typing as npt
import pytest


def numpy_maxsim(
    query: npt.NDArray[np.float32],
    docs: npt.NDArray[np.floating],
    offsets: npt.NDArray[np.int64],
) -> npt.NDArray[np.float32]:
    """Reference MaxSim in float64: per document, sum over query tokens of the best dot product."""
    q = query.astype(np.float64)
    d = docs.astype(np.float64)
    out = np.zeros(len(offsets) - 1, dtype=np.float64)
    for i in range(len(offsets) - 1):
        a, b = int(offsets[i]), int(offsets[i + 1])
        if b > a:
            out[i] = (q @ d[a:b].T).max(axis=1).sum()
    return out.astype(np.float32)


def random_case(
    rng: np.random.Generator, nq: int, dim: int, n_docs: int, max_len: int
) -> tuple[npt.NDArray[np.float32], npt.NDArray[np.float32], npt.NDArray[np.int64]]:
    lengths = rng.integers(0, max_len + 1, size=n_docs)
    offsets = np.concatenate([[0], np.cumsum(lengths)]).astype(np.int64)
    query = rng.standard_normal((nq, dim)).astype(np.float32)
    query /= np.linalg.norm(query, axis=1, keepdims=True)
    docs = rng.standard_normal((int(offsets[-1]), dim)).astype(np.float32)
    docs /= np.maximum(np.linalg.norm(docs, axis=1, keepdims=True), 1e-12)
    return query, docs, offsets


@pytest.mark.parametrize("dim", [1, 3, 8, 17, 96, 128, 129, 384])
def test_matches_numpy_on_random_shapes(dim: int) -> None:
    rng = np.random.default_rng(dim)
    for nq in (1, 7, 32, 33, 65):
        query, docs, offsets = random_case(rng, nq, dim, n_docs=25, max_len=40)
        got = latix.maxsim(query, docs, offsets)
        assert got.dtype == np.float32 and got.shape == (25,)
        np.testing.assert_allclose(got, numpy_maxsim(query, docs, offsets), rtol=1e-5, atol=1e-4)


def test_float16_storage() -> None:
    rng = np.random.default_rng(1)
    query, docs, offsets = random_case(rng, 32, 128, n_docs=40, max_len=60)
    docs16 = docs.astype(np.float16)
    got16 = latix.maxsim(query, docs16, offsets)
    # Exact against the same f16 values widened to f32 ...
    np.testing.assert_allclose(got16, numpy_maxsim(query, docs16, offsets), rtol=1e-5, atol=1e-4)
    # ... and close to full precision for normalised vectors.
    np.testing.assert_allclose(got16, latix.maxsim(query, docs, offsets), atol=1e-3)


def test_empty_documents_and_no_documents() -> None:
    rng = np.random.default_rng(2)
    query, docs, _ = random_case(rng, 4, 16, n_docs=0, max_len=0)
    docs = rng.standard_normal((5, 16)).astype(np.float32)
    offsets = np.array([0, 0, 3, 3, 5, 5], dtype=np.int64)
    got = latix.maxsim(query, docs, offsets)
    assert got[0] == 0.0 and got[2] == 0.0 and got[4] == 0.0
    np.testing.assert_allclose(got, numpy_maxsim(query, docs, offsets), rtol=1e-5, atol=1e-5)
    none = latix.maxsim(query, np.zeros((0, 16), np.float32), np.zeros(1, np.int64))
    assert none.shape == (0,) and none.dtype == np.float32


def test_non_contiguous_inputs_are_copied() -> None:
    rng = np.random.default_rng(3)
    query, docs, offsets = random_case(rng, 9, 24, n_docs=10, max_len=20)
    want = latix.maxsim(query, docs, offsets)
    q_f = np.asfortranarray(query)
    d_strided = np.repeat(docs, 2, axis=1)[:, ::2]
    d_fortran = np.asfortranarray(docs)
    o_strided = np.repeat(offsets, 2)[::2]
    assert not d_strided.flags.c_contiguous and not o_strided.flags.c_contiguous
    np.testing.assert_array_equal(latix.maxsim(q_f, d_strided, o_strided), want)
    np.testing.assert_array_equal(latix.maxsim(q_f, d_fortran, offsets), want)
    np.testing.assert_array_equal(
        latix.maxsim(query, d_fortran.astype(np.float16), offsets),
        latix.maxsim(query, docs.astype(np.float16), offsets),
    )


def test_thread_counts_give_identical_results() -> None:
    rng = np.random.default_rng(4)
    query, docs, offsets = random_case(rng, 32, 64, n_docs=2000, max_len=80)
    one = latix.maxsim(query, docs, offsets, n_threads=1)
    two = latix.maxsim(query, docs, offsets, n_threads=2)
    np.testing.assert_array_equal(one, two)
    np.testing.assert_allclose(one, numpy_maxsim(query, docs, offsets), rtol=1e-5, atol=1e-4)


def _cpu_flags() -> set[str] | None:
    """The CPU feature flags the kernel reports, from /proc/cpuinfo (None where unreadable)."""
    try:
        with open("/proc/cpuinfo", encoding="ascii", errors="replace") as f:
            for line in f:
                if line.startswith("flags"):
                    return set(line.split(":", 1)[1].split())
    except OSError:
        pass
    return None


def _kernel_in_child(forced: str | None) -> tuple[str, bool]:
    """(kernel_name(), whether maxsim matched numpy) in a fresh process, LATIX_KERNEL=forced."""
    code = (
        "import sys, numpy as np, latix\n"
        "rng = np.random.default_rng(0)\n"
        "q = rng.standard_normal((5, 40)).astype(np.float32)\n"
        "d = rng.standard_normal((30, 40)).astype(np.float32)\n"
        "o = np.array([0, 7, 7, 19, 30], np.int64)\n"
        "ref = [(q.astype(np.float64) @ d[a:b].astype(np.float64).T).max(axis=1).sum()"
        " if b > a else 0.0 for a, b in zip(o[:-1], o[1:])]\n"
        "ok = np.allclose(latix.maxsim(q, d, o), ref, rtol=1e-5, atol=1e-4)\n"
        "print(latix.kernel_name(), ok)\n"
    )
    env = {k: v for k, v in os.environ.items() if k != "LATIX_KERNEL"}
    if forced is not None:
        env["LATIX_KERNEL"] = forced
    out = subprocess.run(
        [sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True
    ).stdout.split()
    return out[0], out[1] == "True"


def test_kernel_name_follows_the_cpu_and_latix_kernel() -> None:
    # Independent of the binding: the kernel a fresh process picks must be the fastest one that
    # /proc/cpuinfo's flags allow (the documented detection rule), and LATIX_KERNEL must select
    # each slower kernel, which then still computes MaxSim correctly.
    chosen, ok = _kernel_in_child(None)
    assert ok and chosen in {"avx512", "avx2", "portable", "scalar"}
    flags = _cpu_flags()
    if platform.machine() in ("x86_64", "AMD64") and flags is not None:
        avx2 = {"avx2", "fma", "f16c"} <= flags
        want = "avx512" if avx2 and "avx512f" in flags else "avx2" if avx2 else "portable"
        assert chosen == want, (chosen, sorted(flags & {"avx2", "fma", "f16c", "avx512f"}))
    for forced in ("scalar", "portable"):
        assert _kernel_in_child(forced) == (forced, True)
    # A kernel the CPU cannot run (or an unknown name) falls back to the detected one.
    assert _kernel_in_child("no-such-kernel") == (chosen, True)


def _good() -> tuple[npt.NDArray[np.float32], npt.NDArray[np.float32], npt.NDArray[np.int64]]:
    rng = np.random.default_rng(5)
    return random_case(rng, 3, 8, n_docs=4, max_len=5)


def _bad_cases() -> list[tuple[str, dict[str, object], str]]:
    q, d, o = _good()
    n = d.shape[0]
    nan_q = q.copy()
    nan_q[1, 2] = np.nan
    inf_d = d.copy()
    if n:
        inf_d[0, 0] = np.inf
    return [
        ("query float64", {"query": q.astype(np.float64)}, "query"),
        ("query int", {"query": q.astype(np.int32)}, "query"),
        ("query rank 1", {"query": q[0]}, "query"),
        ("query rank 3", {"query": q[None]}, "query"),
        ("query empty", {"query": np.zeros((0, 8), np.float32)}, "query"),
        ("query NaN", {"query": nan_q}, "query"),
        ("query list", {"query": q.tolist()}, "query"),
        ("docs wrong dim", {"doc_vectors": np.zeros((n, 9), np.float32)}, "doc_vectors"),
        ("docs float64", {"doc_vectors": d.astype(np.float64)}, "doc_vectors"),
        ("docs int", {"doc_vectors": d.astype(np.int64)}, "doc_vectors"),
        ("docs rank 1", {"doc_vectors": d.ravel()}, "doc_vectors"),
        ("docs Inf", {"doc_vectors": inf_d}, "doc_vectors"),
        ("docs f16 Inf", {"doc_vectors": inf_d.astype(np.float16)}, "doc_vectors"),
        ("offsets not from 0", {"doc_offsets": o + 1}, "doc_offsets"),
        ("offsets decreasing", {"doc_offsets": o[::-1].copy()}, "doc_offsets"),
        ("offsets last != n_tokens", {"doc_offsets": np.append(o, n + 1)}, "doc_offsets"),
        ("offsets short of n_tokens", {"doc_offsets": o[:-1].copy()}, "doc_offsets"),
        ("offsets int32", {"doc_offsets": o.astype(np.int32)}, "doc_offsets"),
        ("offsets float", {"doc_offsets": o.astype(np.float64)}, "doc_offsets"),
        ("offsets empty", {"doc_offsets": np.zeros(0, np.int64)}, "doc_offsets"),
        ("offsets rank 2", {"doc_offsets": o[None]}, "doc_offsets"),
        ("n_threads 0", {"n_threads": 0}, "n_threads"),
    ]


@pytest.mark.parametrize("case", _bad_cases(), ids=lambda c: c[0])
def test_bad_input_raises_invalid_argument(case: tuple[str, dict[str, object], str]) -> None:
    _, override, name = case
    q, d, o = _good()
    kwargs: dict[str, object] = {"query": q, "doc_vectors": d, "doc_offsets": o}
    kwargs.update(override)
    with pytest.raises(latix.InvalidArgumentError, match=name):
        latix.maxsim(**kwargs)  # type: ignore[arg-type]


def test_n_threads_negative_is_rejected() -> None:
    q, d, o = _good()
    # Documented: "n_threads must be a positive integer or None" (InvalidArgumentError, which is
    # also a ValueError), for every non-positive or non-integer value.
    for bad in (-1, -(2**70), 2.0, "2", True):
        with pytest.raises(latix.InvalidArgumentError, match="n_threads"):
            latix.maxsim(q, d, o, n_threads=bad)  # type: ignore[arg-type]
