"""The equal-recall interpolation of benches/bench_peers.py (the latix / peer latency ratio)."""

from __future__ import annotations

import importlib
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[1]


def _bench() -> Any:
    sys.path.insert(0, str(ROOT / "benches"))
    try:
        return importlib.import_module("bench_peers")
    finally:
        sys.path.pop(0)


@pytest.mark.parametrize("seed", range(20))
def test_latency_at_recall_on_a_log_linear_curve(seed: int) -> None:
    """Points on latency = exp(a + b * recall), shuffled and mixed with dominated points (slower
    and no better): the interpolation gives the curve's own value at every recall inside it,
    None outside it, and always lies between the step bounds of the envelope."""
    f = _bench().latency_at_recall
    rng = np.random.default_rng(seed)
    n = int(rng.integers(2, 12))
    rec = np.sort(rng.uniform(0.3, 1.0, n))
    rec = np.unique(np.round(rec, 4))
    a, b = rng.uniform(-1, 2), rng.uniform(0.5, 6)
    lat = np.exp(a + b * rec)
    pts = list(zip(lat.tolist(), rec.tolist(), strict=True))
    # Dominated points: each slower than some envelope point of higher or equal recall.
    for _ in range(int(rng.integers(0, 8))):
        j = int(rng.integers(0, len(rec)))
        pts.append((float(lat[j] * rng.uniform(1.01, 3)), float(rec[j] - rng.uniform(0, 0.2))))
    rng.shuffle(pts)
    for r in rng.uniform(rec[0], rec[-1], 50):
        got = f(pts, float(r))
        assert got is not None
        np.testing.assert_allclose(got, np.exp(a + b * r), rtol=1e-9)
        hi = min(v for v, x in zip(lat, rec, strict=True) if x >= r)
        lo = max(v for v, x in zip(lat, rec, strict=True) if x <= r)
        assert lo * (1 - 1e-12) <= got <= hi * (1 + 1e-12)
    for x, v in zip(rec, lat, strict=True):
        np.testing.assert_allclose(f(pts, float(x)), v, rtol=1e-9)
    assert f(pts, float(rec[-1]) + 1e-3) is None
    assert f(pts, float(rec[0]) - 1e-3) is None


def test_latency_at_recall_edge_cases() -> None:
    f = _bench().latency_at_recall
    assert f([], 0.5) is None
    assert f([(2.0, 0.8)], 0.8) == 2.0
    assert f([(2.0, 0.8)], 0.81) is None
    # A faster point with higher recall hides a slower, worse one.
    assert f([(5.0, 0.7), (1.0, 0.9)], 0.7) is None  # below the fastest point's recall
    assert f([(5.0, 0.7), (1.0, 0.9)], 0.9) == 1.0
    # Geometric between 1 ms at 0.8 and 4 ms at 1.0: 2 ms at 0.9.
    np.testing.assert_allclose(f([(4.0, 1.0), (1.0, 0.8)], 0.9), 2.0)
