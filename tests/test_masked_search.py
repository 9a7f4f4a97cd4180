"""latix.Index.search_masked / segments / segment_ids: the per-segment bitmap filter that
collections build from metadata, through the Python binding (the core's own tests are in
rust/core/tests/masked_search.rs): results equal the id-subset search, stale masks answer None,
bad masks are clear errors; a narrow exhaustive filter on an index with kept vectors is exact
MaxSim over the allowed documents (numpy reference).
"""

from __future__ import annotations

from pathlib import Path

import latix
import numpy as np
import pytest
from latix.collection import _pack

DIM = 8


def build(tmp: Path, rng: np.random.Generator) -> latix.Index:
    ix = latix.Index.create(tmp / "ix", dim=DIM)
    for s in range(3):
        n = int(rng.integers(1, 90))
        ix.add(
            [f"s{s}-{i}" for i in range(n)],
            [
                rng.standard_normal((int(rng.integers(1, 6)), DIM)).astype(np.float32)
                for _ in range(n)
            ],
        )
        ix.commit()
    ix.delete([f"s0-{i}" for i in range(0, 10, 3) if f"s0-{i}" in ix])
    ix.commit()
    return ix


def test_pack_layout() -> None:
    rng = np.random.default_rng(0)
    for n in (0, 1, 63, 64, 65, 200):
        bits = rng.random(n) < 0.5
        words = _pack(bits)
        assert words.dtype == np.uint64 and words.shape == ((n + 63) // 64,)
        back = [(int(words[d // 64]) >> (d % 64)) & 1 == 1 for d in range(n)]
        assert back == bits.tolist()


@pytest.mark.parametrize("seed", range(4))
def test_masked_equals_subset(tmp_path: Path, seed: int) -> None:
    rng = np.random.default_rng(seed)
    ix = build(tmp_path, rng)
    segs = ix.segments()
    assert sum(n_live for _, _, n_live in segs) == len(ix)
    masks, allowed = {}, []
    for file, n_docs, _ in segs:
        ids = ix.segment_ids(file)
        assert len(ids) == n_docs
        bits = rng.random(n_docs) < 0.3
        masks[file] = _pack(bits)
        allowed += [i for i, b in zip(ids, bits, strict=True) if b]
    q = rng.standard_normal((3, DIM)).astype(np.float32)
    got = ix.search_masked(q, masks, k=15)
    assert got is not None
    want = ix.search(q, k=15, subset=allowed)
    assert np.array_equal(got[0], want[0]) and (got[1] == want[1]).all()
    # a new segment the masks do not cover: None, not a wrong answer
    ix.add(["new"], [q])
    ix.commit()
    assert ix.search_masked(q, masks, k=15) is None
    with pytest.raises(latix.InvalidArgumentError, match="uint64"):
        ix.search_masked(q, {f: m.astype(np.int64) for f, m in masks.items()}, k=3)
    with pytest.raises(latix.InvalidArgumentError, match="words"):
        bad = dict(masks)
        for f, _, _ in ix.segments():
            bad[f] = np.zeros(99, np.uint64)
        ix.search_masked(q, bad, k=3)
    with pytest.raises(latix.InvalidArgumentError, match="dict"):
        ix.search_masked(q, [1, 2], k=3)  # type: ignore[arg-type]
    with pytest.raises(latix.NotFoundError):
        ix.segment_ids("seg-0000009999.lxs")
    with pytest.raises(latix.InvalidArgumentError):
        ix.segment_ids(3)  # type: ignore[arg-type]


@pytest.mark.parametrize("seed", range(3))
def test_narrow_exhaustive_filter_with_kept_vectors_is_exact(tmp_path: Path, seed: int) -> None:
    """At most 128 allowed documents, kept vectors, exhaustive: every allowed live document is
    scored exactly, so ids and scores are numpy MaxSim's over the stored (float16) vectors."""
    rng = np.random.default_rng(100 + seed)
    dim = 16
    comp = latix.Compression(
        bytes_per_token=4,
        n_centroids=16,
        keep_vectors=True,
        train_min_tokens=300,
        train_sample_tokens=2000,
        seed=seed,
    )
    ix = latix.Index.create(tmp_path / "ix", dim=dim, compression=comp)
    docs: dict[str, np.ndarray] = {}
    for s in range(3):
        n = int(rng.integers(60, 160))
        batch = {
            f"s{s}-{i}": rng.standard_normal((int(rng.integers(1, 12)), dim)).astype(np.float32)
            for i in range(n)
        }
        ix.add(list(batch), list(batch.values()))
        ix.commit()
        docs.update(batch)
    dead = [d for d in docs if rng.random() < 0.1]
    ix.delete(dead)
    ix.commit()
    assert ix.stats()["trained"]
    for n_allowed in (1, 7, 40, 128):
        masks, allowed = {}, []
        for file, n_docs, _ in ix.segments():
            ids = ix.segment_ids(file)
            bits = np.zeros(n_docs, bool)
            bits[rng.choice(n_docs, size=min(n_docs, n_allowed // 3 + 1), replace=False)] = True
            masks[file] = _pack(bits)
            allowed += [i for i, b in zip(ids, bits, strict=True) if b and i not in dead]
        q = rng.standard_normal((int(rng.integers(1, 9)), dim)).astype(np.float32)
        got = ix.search_masked(q, masks, k=10, exhaustive_below=128)
        assert got is not None
        ref = {
            i: float((q @ docs[i].astype(np.float16).astype(np.float32).T).max(axis=1).sum())
            for i in allowed
        }
        want = sorted(ref, key=lambda i: -ref[i])[:10]
        hits = [i for i in got[1][0] if i]
        assert len(hits) == len(want)
        for i, score in zip(hits, got[0][0], strict=False):
            assert abs(score - ref[i]) <= 1e-3 * (1 + abs(ref[i])), (i, score, ref[i])
        # Same set as numpy's top 10 up to ties at the cut.
        cut = ref[want[-1]]
        assert {i for i in hits if ref[i] > cut + 1e-3} <= set(want)
        assert all(ref[i] >= cut - 1e-3 for i in hits)
