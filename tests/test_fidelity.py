"""Fidelity tiers (``Compression(fidelity=...)``) through the Python API: tier scores are numpy
MaxSim over the reconstructions ``get()`` returns (the transform-coded tiers of new indexes, file
version 4), the tier's top 10 is closer to exact search's than the codes' own, and bad values are
refused."""

from __future__ import annotations

from pathlib import Path

import latix
import numpy as np
import pytest
from helpers import DIM, Data, exact_top, maxsim


def cfg(fidelity: str, **kw: object) -> latix.Compression:
    base: dict[str, object] = dict(
        bytes_per_token=8,
        n_centroids=32,
        train_min_tokens=2000,
        train_sample_tokens=4000,
        seed=3,
        pool_factor=2,
        fidelity=fidelity,
    )
    base.update(kw)
    return latix.Compression(**base)  # type: ignore[arg-type]


@pytest.mark.parametrize("fidelity", ["balanced", "high"])
def test_tier_scores_are_maxsim_over_the_reconstructions(tmp_path: Path, fidelity: str) -> None:
    data = Data(7)
    docs = data.docs(260)
    ids = [f"d{i}" for i in range(len(docs))]
    live = dict(zip(ids, docs, strict=True))
    with latix.Index.create(tmp_path / "t", DIM, compression=cfg(fidelity)) as ix:
        ix.add(ids[:200], docs[:200])
        ix.commit()
        ix.add(ids[200:], docs[200:])  # encoded with the trained codec: its own tier file
        ix.commit()
        ix.delete(["d5", "d230"])
        ix.commit()
        live.pop("d5")
        live.pop("d230")
        assert ix.compression is not None and ix.compression.fidelity == fidelity
        assert len(list((tmp_path / "t").glob("*.fid-*"))) == 2
        # get(): one reconstructed row per original token, in order, near the original.
        rec = {i: ix.get(i).astype(np.float32) for i in live}
        for i in list(live)[:20]:
            assert rec[i].shape == live[i].shape
            cos = (rec[i] * live[i]).sum(1) / np.linalg.norm(rec[i], axis=1)
            assert cos.min() > 0.8
        hit_t = hit_c = 0
        with latix.Index.create(tmp_path / "c", DIM, compression=cfg("codes")) as codes:
            codes.add(ids, docs)
            codes.commit()
            codes.delete(["d5", "d230"])
            codes.commit()
            for trial in range(15):
                q = data.mat(1 + trial % 8, 0.8)
                scores, got = ix.search(q, k=10)
                hits = [i for i in got[0] if i]
                assert "d5" not in hits and "d230" not in hits
                # The tier's score: MaxSim over the reconstruction (up to the 8-bit tables and
                # the codes' tables of the pooled vectors they are anchored on), alone.
                want = [float((q @ rec[i].T).max(axis=1).sum()) for i in hits]
                np.testing.assert_allclose(scores[0][: len(hits)], want, atol=0.02 * len(q))
                # The tier ignores the codes' score and re-ranks its whole list (96 documents
                # for k = 10 at up to 64 residual bytes; at this DIM both tiers are capped at 4
                # bits per component, 4 * DIM bits), so it skips their refinement: its top 10
                # is the best of candidate generation's top 96 (refine=0) by numpy MaxSim over
                # their reconstructions (up to the tables).
                _, gen = ix.search(q, k=96, rerank=False, refine=0)
                pool = {i: float((q @ rec[i].T).max(axis=1).sum()) for i in gen[0] if i}
                assert set(hits) <= set(pool)
                tenth = sorted(pool.values(), reverse=True)[len(hits) - 1]
                assert min(pool[i] for i in hits) >= tenth - 0.04 * len(q)
                top = set(exact_top(q, live, 10))
                hit_t += len(top & set(hits))
                hit_c += len(top & set(codes.search(q, k=10)[1][0]))
                # The estimate is close to exact MaxSim of the original document.
                for s, i in zip(scores[0][:3], hits[:3], strict=False):
                    assert abs(s - maxsim(q, live[i])) < 0.15 * len(q)
                # subset: only allowed documents.
                sub = ids[::3]
                _, g = ix.search(q, k=10, subset=sub)
                assert set(i for i in g[0] if i) <= set(sub)
        assert hit_t > hit_c, (hit_t, hit_c)
        # rerank=False returns the codes' estimates; rerank_depth is validated.
        s_off, _ = ix.search(data.mat(4, 0.8), k=5, rerank=False)
        assert s_off.shape == (1, 5)
        for bad in (0, -2, 1.5):
            with pytest.raises(latix.InvalidArgumentError, match="rerank_depth"):
                ix.search(data.mat(3, 0.8), k=5, rerank_depth=bad)  # type: ignore[arg-type]
        ix.compact()
        ix.verify()
        assert len(ix) == len(live)


def test_fidelity_knob_is_checked(tmp_path: Path) -> None:
    for bad in ("medium", "", 1, None):
        with pytest.raises(latix.InvalidArgumentError, match="fidelity"):
            cfg(bad)  # type: ignore[arg-type]
    with pytest.raises(latix.InvalidArgumentError, match="keep_vectors"):
        cfg("high", keep_vectors=True)
    assert latix.Compression().fidelity == "codes"
    with latix.Index.create(tmp_path / "p", DIM) as plain:
        plain.add(["a"], [np.ones((2, DIM), np.float32)])
        plain.commit()
        with pytest.raises(latix.InvalidArgumentError, match="rerank_depth"):
            plain.search(np.ones((1, DIM), np.float32), k=1, rerank_depth=4)


def test_damaged_tier_file_raises_corrupted(tmp_path: Path) -> None:
    data = Data(9)
    docs = data.docs(220)
    with latix.Index.create(tmp_path / "t", DIM, compression=cfg("balanced")) as ix:
        ix.add([f"d{i}" for i in range(len(docs))], docs)
        ix.commit()
    (f,) = sorted((tmp_path / "t").glob("*.fid-*"))
    b = bytearray(f.read_bytes())
    b[len(b) // 2] ^= 0x40
    f.write_bytes(bytes(b))
    with pytest.raises(latix.CorruptedIndexError, match="fid"):
        with latix.Index.open(tmp_path / "t") as ix:
            ix.search(data.mat(3, 0.8), k=5)


def _tier_index(path: Path, fidelity: str, parts: list[list[np.ndarray]]) -> latix.Index:
    """An index of ``fidelity`` with one commit per part (merge policy off), ids ``p<i>d<j>``."""
    ix = latix.Index.create(path, DIM, compression=cfg(fidelity, train_min_tokens=500))
    ix.set_merge_policy(None)
    for p, docs in enumerate(parts):
        ix.add([f"p{p}d{j}" for j in range(len(docs))], docs)
        ix.commit()
    return ix


def _recall(ix: latix.Index, qs: list[np.ndarray], live: dict[str, np.ndarray]) -> float:
    hit = 0
    for q in qs:
        _, got = ix.search(q, k=10)
        hit += len(set(exact_top(q, live, 10)) & {i for i in got[0] if i})
    return hit / (10 * len(qs))


# Every list probed, every candidate refined and re-ranked: results independent of the segments.
EVERY = dict(nprobe=32, refine=100_000, rerank_depth=100_000)


@pytest.mark.parametrize("fidelity", ["balanced", "high"])
@pytest.mark.parametrize("shape", [(8, 100), (5, 60), (12, 30)])
def test_tier_compaction_and_policy_merges_are_lossless(
    tmp_path: Path, fidelity: str, shape: tuple[int, int]
) -> None:
    """Issue 13: compacting a tiered index (once, twice, with deletes) and the merge policy's
    merges keep every surviving document's score to the bit and recall against exact MaxSim."""
    n_seg, per = shape
    data = Data(40 + n_seg)
    parts = [data.docs(per) for _ in range(n_seg)]
    live = {f"p{p}d{j}": d for p, docs in enumerate(parts) for j, d in enumerate(docs)}
    qs = [data.mat(1 + t % 8, 0.8) for t in range(20)]
    ix = _tier_index(tmp_path / "a", fidelity, parts)
    gone = [i for n, i in enumerate(live) if n % 7 == 3]
    ix.delete(gone)
    ix.commit()
    for i in gone:
        live.pop(i)
    assert len(ix.segments()) == n_seg
    before = [ix.search(q, k=10, **EVERY) for q in qs]
    r0 = _recall(ix, qs, live)
    ix.compact()
    assert len(ix.segments()) == 1
    r1 = _recall(ix, qs, live)
    for q, (s, g) in zip(qs, before, strict=True):
        s1, g1 = ix.search(q, k=10, **EVERY)
        assert g1.tolist() == g.tolist()
        assert s1.tobytes() == s.tobytes()
    ix.compact()  # nothing to merge: a no-op
    ix.delete([next(iter(live))])
    live.pop(next(iter(live)))
    ix.compact()
    r2 = _recall(ix, qs, live)
    ix.verify()
    ix.close()
    # The merge policy merges tier segments as they fill, through the same lossless path.
    px = latix.Index.create(tmp_path / "p", DIM, compression=cfg(fidelity, train_min_tokens=500))
    px.set_merge_policy(3, floor_tokens=800)
    for p, docs in enumerate(parts):
        px.add([f"p{p}d{j}" for j in range(len(docs))], docs)
        px.commit()
    px.delete(gone)
    px.commit()
    assert len(px.segments()) < n_seg
    for q, (s, g) in zip(qs, before, strict=True):
        s1, g1 = px.search(q, k=10, **EVERY)
        assert g1.tolist() == g.tolist()
        assert s1.tobytes() == s.tobytes()
    px.close()
    print(f"{fidelity} {shape}: recall@10 vs exact {r0:.3f} / {r1:.3f} / {r2:.3f}")
    assert r1 == r0
    assert r2 >= r0 - 0.02
