"""The merge policy and codes-domain compaction through the Python API: segment counts stay
logarithmic in the number of commits, results match numpy MaxSim (exact index) or the same index
built without the policy (compressed index: the same ids and scores), bad settings are refused."""

from __future__ import annotations

import math
from pathlib import Path

import latix
import numpy as np
import pytest
from helpers import maxsim


def _docs(rng: np.random.Generator, n: int, dim: int) -> list[np.ndarray]:
    out = []
    for _ in range(n):
        d = rng.standard_normal((int(rng.integers(3, 12)), dim)).astype(np.float32)
        out.append(d / np.linalg.norm(d, axis=1, keepdims=True))
    return out


@pytest.mark.parametrize("fan,commits", [(2, 17), (3, 25), (4, 12)])
def test_exact_index_segments_stay_logarithmic_and_results_exact(
    tmp_path: Path, fan: int, commits: int
) -> None:
    rng = np.random.default_rng(fan * 100 + commits)
    dim = 16
    live: dict[str, np.ndarray] = {}
    with latix.Index.create(tmp_path / "ix", dim=dim, dtype="float16") as ix:
        ix.set_merge_policy(fan, floor_tokens=50)
        assert ix.merge_segments_per_tier == fan
        for c in range(commits):
            docs = _docs(rng, int(rng.integers(1, 8)), dim)
            ids = [f"c{c}-{i}" for i in range(len(docs))]
            ix.add(ids, docs)
            live.update(zip(ids, docs, strict=True))
            if c % 5 == 4:  # deletes too: merged segments drop them
                gone = sorted(live)[::7][:2]
                ix.delete(gone)
                for g in gone:
                    del live[g]
            ix.commit()
            tokens = sum(len(d) for d in live.values())
            tiers = 1 + max(0, math.ceil(math.log(max(tokens, 1) / 50, fan)))
            assert len(ix.segments()) < 2 * fan * tiers + 1, (c, ix.segments())
        assert sorted(ix.ids()) == sorted(live)
        q = rng.standard_normal((4, dim)).astype(np.float32)
        scores, hits = ix.search(q, k=5)
        want = sorted(live, key=lambda i: -maxsim(q, live[i]))[:5]
        assert list(hits[0]) == want
        np.testing.assert_allclose(scores[0], [maxsim(q, live[i]) for i in want], rtol=1e-4)
        ix.verify()


def test_compressed_policy_matches_no_policy_and_compaction(tmp_path: Path) -> None:
    rng = np.random.default_rng(7)
    dim = 16
    comp = latix.Compression(
        bytes_per_token=4, n_centroids=16, keep_vectors=False, train_min_tokens=400, pool_factor=1
    )
    a = latix.Index.create(tmp_path / "a", dim=dim, compression=comp)
    b = latix.Index.create(tmp_path / "b", dim=dim, compression=comp)
    a.set_merge_policy(3, floor_tokens=40)
    b.set_merge_policy(None)
    assert b.merge_segments_per_tier is None
    for c in range(14):
        docs = _docs(rng, 15, dim)
        ids = [f"c{c}-{i}" for i in range(len(docs))]
        for ix in (a, b):
            ix.add(ids, docs)
            ix.commit()
    assert len(b.segments()) == 14
    assert len(a.segments()) < 6
    q = rng.standard_normal((6, dim)).astype(np.float32)
    opts = {"nprobe": 16, "refine": 1000}
    sa, ha = a.search(q, k=10, **opts)
    sb, hb = b.search(q, k=10, **opts)
    assert (ha == hb).all()
    np.testing.assert_array_equal(sa, sb)
    b.compact(memory=1 << 20)
    sc, hc = b.search(q, k=10, **opts)
    assert len(b.segments()) == 1
    assert (hc == hb).all()
    np.testing.assert_array_equal(sc, sb)
    a.close()
    b.close()


@pytest.mark.parametrize("fan,cap,seed", [(2, 150, 1), (3, 200, 2), (4, 240, 3)])
def test_merges_stay_under_max_merge_tokens(tmp_path: Path, fan: int, cap: int, seed: int) -> None:
    rng = np.random.default_rng(seed)
    dim = 8
    live: dict[str, np.ndarray] = {}
    bounded = latix.Index.create(tmp_path / "b", dim=dim, dtype="float16")
    unbounded = latix.Index.create(tmp_path / "u", dim=dim, dtype="float16")
    bounded.set_merge_policy(fan, floor_tokens=20, max_merge_tokens=cap)
    unbounded.set_merge_policy(fan, floor_tokens=20, max_merge_tokens=None)
    order: list[str] = []
    largest_commit = 0
    for c in range(60):
        docs = _docs(rng, int(rng.integers(1, 6)), dim)
        ids = [f"c{c}-{i}" for i in range(len(docs))]
        largest_commit = max(largest_commit, sum(len(d) for d in docs))
        live.update(zip(ids, docs, strict=True))
        order.extend(ids)
        for ix in (bounded, unbounded):
            ix.add(ids, docs)
            ix.commit()
        # No merge writes more than the bound: every segment holds at most the bound, or one
        # commit larger than it.
        for file, _, _ in bounded.segments():
            tokens = sum(len(live[i]) for i in bounded.segment_ids(file))
            assert tokens <= max(cap, largest_commit), (c, file, tokens)
        # Merges anywhere in the segment list are made in place: commit order is kept.
        assert bounded.ids() == order
    total = sum(len(d) for d in live.values())
    sizes = [
        sum(len(live[i]) for i in unbounded.segment_ids(f)) for f, _, _ in unbounded.segments()
    ]
    # Unbounded, the policy merged more: the bound did something.
    assert max(sizes) >= 2 * cap
    q = rng.standard_normal((3, dim)).astype(np.float32)
    want = sorted(live, key=lambda i: -maxsim(q, live[i]))[:5]
    for ix in (bounded, unbounded):
        assert sorted(ix.ids()) == sorted(live)
        scores, hits = ix.search(q, k=5)
        assert list(hits[0]) == want
        np.testing.assert_allclose(scores[0], [maxsim(q, live[i]) for i in want], rtol=2e-3)
    assert total > 2 * cap
    bounded.close()
    unbounded.close()


def test_bad_settings_are_refused(tmp_path: Path) -> None:
    with latix.Index.create(tmp_path / "ix", dim=4) as ix:
        for bad in (1, 0, -3, "2", 2.0):
            with pytest.raises(latix.InvalidArgumentError):
                ix.set_merge_policy(bad)  # type: ignore[arg-type]
        with pytest.raises(latix.InvalidArgumentError):
            ix.set_merge_policy(4, floor_tokens=0)
        for bad_cap in (0, 1, -1, 2.0):
            with pytest.raises(latix.InvalidArgumentError):
                ix.set_merge_policy(4, max_merge_tokens=bad_cap)  # type: ignore[arg-type]
        with pytest.raises(latix.InvalidArgumentError):
            ix.compact(memory=0)
        assert ix.merge_segments_per_tier == 10  # the default, unchanged by the refusals
