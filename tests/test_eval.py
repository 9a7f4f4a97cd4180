"""Embedding cache and evaluation helpers."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from encoder_tiny_model import build
from latix.encoder import Encoder
from latix.eval import EmbeddingCache, data_checksum, percentiles


def test_cache_roundtrip_and_keys(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    build(tmp_path / "m", {"dim": 8})
    enc = Encoder.load(tmp_path / "m")
    cache = EmbeddingCache(tmp_path / "cache")
    ids, texts = ["a", "b", "c"], ["the cat sat", "dog", "big red house on the mat"]
    v, o = cache.get_or_compute(enc, ids, texts, chunk=2)
    ref = enc.encode_documents_packed(texts)
    assert v.dtype == np.float16 and o.tolist() == ref.offsets.tolist()
    np.testing.assert_allclose(v.astype(np.float32), ref.vectors, atol=1e-3)

    def boom(*a: object, **k: object) -> None:
        raise AssertionError("re-encoded despite the cache")

    monkeypatch.setattr(enc, "encode_documents_packed", boom)
    v2, o2 = cache.get_or_compute(enc, ids, texts)
    assert np.array_equal(np.asarray(v2), v) and np.array_equal(o2, o)
    # other data, other kind, env var root
    assert cache.entry_dir(enc, "document", ids, texts) != cache.entry_dir(
        enc, "document", ids, [*texts[:2], "changed"]
    )
    monkeypatch.setenv("LATIX_CACHE_DIR", str(tmp_path / "env"))
    assert EmbeddingCache().root == tmp_path / "env"
    q, _ = EmbeddingCache().get_or_compute(Encoder.load(tmp_path / "m"), ids, texts, "query")
    assert q.dtype == np.float32


def test_checksum_and_percentiles() -> None:
    assert data_checksum(["a"], ["bc"]) != data_checksum(["ab"], ["c"])  # length-prefixed
    p = percentiles([float(i) for i in range(1, 101)])
    assert p["p50"] == pytest.approx(50.5) and p["p99"] == pytest.approx(99.01)
    assert np.isnan(percentiles([])["p50"])
