"""The compressed index kind through latix.Index: training at the threshold commit, search recall
against an exact numpy MaxSim, adds after training, deletes, replacements, subsets, reopening,
compaction with and without retraining, kept vectors and re-rank, bad input, damaged files."""

from __future__ import annotations

from pathlib import Path

import latix
import numpy as np
import pytest
from helpers import DIM, Data, exact_top, maxsim


def cfg(keep: bool = False, **kw: object) -> latix.Compression:
    base: dict[str, object] = dict(
        bytes_per_token=8,
        n_centroids=32,
        keep_vectors=keep,
        train_min_tokens=2000,
        train_sample_tokens=4000,
        seed=3,
        pool_factor=1,
    )
    base.update(kw)
    return latix.Compression(**base)  # type: ignore[arg-type]


def recall(ix: latix.Index, data: Data, live: dict[str, np.ndarray], **kw: object) -> float:
    hit = tot = 0
    for _ in range(20):
        q = data.mat(8, 0.8)
        want = set(exact_top(q, live, 10))
        _, ids = ix.search(q, k=10, **kw)  # type: ignore[arg-type]
        hit += len(want & set(ids[0]))
        tot += len(want)
    return hit / tot


def add(ix: latix.Index, prefix: str, docs: list[np.ndarray], live: dict[str, np.ndarray]) -> None:
    ids = [f"{prefix}{i}" for i in range(len(docs))]
    ix.add(ids, docs, replace=True)
    live.update(zip(ids, docs, strict=True))


def test_lifecycle(tmp_path: Path) -> None:
    data = Data(7)
    live: dict[str, np.ndarray] = {}
    path = tmp_path / "ix"
    ix = latix.Index.create(path, DIM, compression=cfg())
    assert ix.compression == cfg()
    add(ix, "a", data.docs(60), live)
    ix.commit()
    st = ix.stats()
    assert st["kind"] == "compressed" and st["trained"] is False and st["n_centroids"] is None
    # Below the threshold the index is exact.
    q = data.mat(8, 0.8)
    scores, ids = ix.search(q, k=5)
    assert list(ids[0]) == exact_top(q, live, 5)
    np.testing.assert_allclose(scores[0], [maxsim(q, live[i]) for i in ids[0]], rtol=1e-4)

    add(ix, "b", data.docs(150), live)
    ix.delete(["a3"])
    del live["a3"]
    ix.commit()
    st = ix.stats()
    assert st["trained"] is True and st["n_centroids"] == 32 and st["code_bytes_per_token"] == 8
    assert st["n_docs"] == len(live)
    assert st["n_tokens"] == sum(len(v) for v in live.values())
    assert isinstance(st["bytes_per_token"], float) and st["bytes_per_token"] < 40
    codec_files = sorted(p.name for p in path.glob("idx-codec-*"))
    assert len(codec_files) == 1
    assert recall(ix, data, live) >= 0.7
    assert recall(ix, data, live, nprobe=32) >= 0.8  # every list probed: codec error only
    for _ in range(5):
        _, ids = ix.search(data.mat(8, 0.8), k=50, nprobe=32)
        assert "a3" not in set(ids[0])

    # Adds after training: encoded with the same codec, found right after the commit.
    new = data.docs(20)
    add(ix, "c", new, live)
    ix.commit()
    assert sorted(p.name for p in path.glob("idx-codec-*")) == codec_files
    for i, d in enumerate(new):
        _, ids = ix.search(d, k=1, nprobe=32)
        assert ids[0, 0] == f"c{i}"
    # Replacement: search and get see the new version.
    rep = data.docs(1)
    add(ix, "b", rep, live)
    ix.commit()
    _, ids = ix.search(rep[0], k=1, nprobe=32)
    assert ids[0, 0] == "b0"
    g = ix.get("b0")
    assert g.shape == rep[0].shape and g.dtype == np.float16
    cos = (rep[0] @ g.astype(np.float32).T).max(axis=1)
    assert cos.min() > 0.8  # decoded approximation, rows in list order

    # Subset: only members, the best member near the top.
    sub = sorted(live)[::3]
    q = data.mat(8, 0.8)
    _, ids = ix.search(q, k=10, subset=sub, nprobe=32)
    assert set(ids[0]) - {""} <= set(sub)
    best = exact_top(q, {i: live[i] for i in sub}, 1)[0]
    assert best in list(ids[0][:3])

    # Reopen: same configuration, same results.
    before = ix.search(q, k=10, nprobe=32)
    ix.close()
    ix = latix.Index.open(path)
    assert ix.compression == cfg()
    after = ix.search(q, k=10, nprobe=32)
    assert np.array_equal(before[0], after[0]) and np.array_equal(before[1], after[1])
    ix.verify()

    # Compaction: one segment, same documents, same codec, still good; retraining: a new codec.
    ix.compact()
    st = ix.stats()
    assert st["n_segments"] == 1 and st["n_docs"] == len(live)
    assert sorted(p.name for p in path.glob("idx-codec-*")) == codec_files
    assert recall(ix, data, live, nprobe=32) >= 0.8  # every list probed: codec error only
    ix.compact(retrain=True)
    assert sorted(p.name for p in path.glob("idx-codec-*")) != codec_files
    assert recall(ix, data, live, nprobe=32) >= 0.8
    ix.verify()
    assert sorted(ix.ids()) == sorted(live)
    ix.close()


@pytest.mark.parametrize("factor", [2, 3])
def test_token_pooling(tmp_path: Path, factor: int) -> None:
    """Pooled index: fewer stored vectors (each doc ceil(n / factor), checked through the decoded
    get), a smaller index than unpooled at the same code size, recall against exact MaxSim over
    the original vectors, adds after training pooled too, and reopen + compaction (which must
    not pool the already pooled vectors again)."""
    data = Data(11)
    docs = data.docs(220)
    sizes = {}
    for f in (1, factor):
        live: dict[str, np.ndarray] = {}
        path = tmp_path / f"ix{f}"
        with latix.Index.create(path, DIM, compression=cfg(pool_factor=f)) as ix:
            add(ix, "a", docs, live)
            ix.commit()
            sizes[f] = ix.stats()["bytes_on_disk"]
            assert ix.stats()["n_tokens"] == sum(len(v) for v in live.values())
            if f == 1:
                continue
            for i in (0, 5, 17):
                got = ix.get(f"a{i}")
                assert got.shape == (-(-len(docs[i]) // f), DIM)
            assert recall(ix, data, live, nprobe=32) >= 0.6
            extra = data.docs(30)
            add(ix, "b", extra, live)
            ix.commit()
            assert ix.get("b3").shape == (-(-len(extra[3]) // f), DIM)
        with latix.Index.open(path) as ix:
            assert ix.compression is not None and ix.compression.pool_factor == f
            ix.delete(["a1"])
            ix.compact()
            assert ix.get("b3").shape == (-(-len(extra[3]) // f), DIM)
            ix.verify()
            live.pop("a1")
            assert recall(ix, data, live, nprobe=32) >= 0.6
    assert sizes[factor] < 0.75 * sizes[1]


def test_keep_vectors_sizes_and_rerank(tmp_path: Path) -> None:
    data = Data(11)
    docs = data.docs(250)
    ids = [f"d{i}" for i in range(len(docs))]
    live = dict(zip(ids, docs, strict=True))
    per_token = {}
    for keep in (True, False):
        with latix.Index.create(tmp_path / f"ix{keep}", DIM, compression=cfg(keep)) as ix:
            ix.add(ids, docs)
            ix.commit()
            st = ix.stats()
            assert st["trained"] and st["keep_vectors"] is keep
            per_token[keep] = st["bytes_per_token"]
            if keep:
                np.testing.assert_array_equal(ix.get("d5"), docs[5].astype(np.float16))
                for _ in range(10):
                    q = data.mat(8, 0.8)
                    scores, got = ix.search(q, k=10)  # re-ranked by default
                    np.testing.assert_allclose(
                        scores[0], [maxsim(q, live[i]) for i in got[0]], rtol=1e-4, atol=1e-4
                    )
                    assert got[0, 0] == exact_top(q, live, 1)[0]
                    _, approx = ix.search(q, k=10, rerank=False)
                    assert len(set(approx[0]) & set(got[0])) >= 5
            else:
                with pytest.raises(latix.InvalidArgumentError, match="keep_vectors"):
                    ix.search(data.mat(4, 0.8), k=5, rerank=True)
    # Vectors cost dim * 2 = 64 bytes per token at float16.
    assert per_token[True] > per_token[False] + 60  # type: ignore[operator]


@pytest.mark.parametrize("factor", [1, 2])
def test_refine_scores_are_maxsim_over_the_decoded_vectors(tmp_path: Path, factor: int) -> None:
    """With refine, a hit's score is MaxSim over every stored (decoded) vector of the document,
    i.e. numpy MaxSim over what get() returns (up to the 8-bit lookup tables); without it,
    candidate generation's estimate (probed lists + imputation) is returned instead."""
    data = Data(13)
    docs = data.docs(260)
    ids = [f"d{i}" for i in range(len(docs))]
    live = dict(zip(ids, docs, strict=True))
    with latix.Index.create(tmp_path / "ix", DIM, compression=cfg(pool_factor=factor)) as ix:
        ix.add(ids[:200], docs[:200])
        ix.commit()
        ix.add(ids[200:], docs[200:])  # a second segment, encoded with the trained codec
        ix.commit()
        ix.delete(["d3", "d201"])
        ix.commit()
        live.pop("d3")
        live.pop("d201")
        decoded = {i: ix.get(i).astype(np.float32) for i in live}
        differs = 0
        for trial in range(12):
            q = data.mat(1 + trial % 9, 0.8)
            for k, refine in ((10, None), (5, 40), (30, 7)):
                scores, got = ix.search(q, k=k, nprobe=2, refine=refine)
                hits = [i for i in got[0] if i]  # nprobe=2 may reach fewer than k documents
                assert "d3" not in hits and "d201" not in hits
                want = [float((q @ decoded[i].T).max(axis=1).sum()) for i in hits]
                np.testing.assert_allclose(scores[0][: len(hits)], want, atol=0.02 * len(q))
                assert list(scores[0]) == sorted(scores[0], reverse=True)
            est, got0 = ix.search(q, k=10, nprobe=2, refine=0)
            hits0 = [i for i in got0[0] if i]
            want0 = [float((q @ decoded[i].T).max(axis=1).sum()) for i in hits0]
            differs += not np.allclose(est[0][: len(hits0)], want0, atol=0.02 * len(q))
        # nprobe=2 of 32 lists leaves most query tokens unreached: imputed, not exact.
        assert differs > 0
        # Re-scoring misordered candidates brings the top 10 closer to exact MaxSim.
        with_refine = recall(ix, data, live, nprobe=2, refine=40)
        without = recall(ix, data, live, nprobe=2, refine=0)
        assert with_refine > without, (with_refine, without)
        for bad in (-1, 2.5, "3"):
            with pytest.raises(latix.InvalidArgumentError, match="refine"):
                ix.search(data.mat(3, 0.8), k=5, refine=bad)  # type: ignore[arg-type]


def test_bad_input(tmp_path: Path) -> None:
    p = tmp_path / "bad"
    for kw, what in [
        (dict(bytes_per_token=0), "bytes_per_token"),
        (dict(bytes_per_token=17), "bytes_per_token"),
        (dict(bytes_per_token=32), "bytes_per_token"),
        (dict(train_min_tokens=10), "train_min_tokens"),
        (dict(n_centroids=5000), "n_centroids"),
    ]:
        with pytest.raises(latix.InvalidArgumentError, match=what):
            latix.Index.create(p, DIM, compression=cfg(**kw))
    for bad in (0, 9):
        with pytest.raises(latix.InvalidArgumentError, match="pool_factor"):
            latix.Compression(pool_factor=bad)
    with pytest.raises(latix.InvalidArgumentError, match="keep_vectors"):
        latix.Compression(keep_vectors="yes")  # type: ignore[arg-type]
    with pytest.raises(latix.InvalidArgumentError, match="compression"):
        latix.Index.create(p, DIM, compression={"n_centroids": 4})  # type: ignore[arg-type]
    assert not p.exists()
    data = Data(5)
    with latix.Index.create(tmp_path / "ok", DIM, compression=cfg()) as ix:
        ix.add([f"x{i}" for i in range(250)], data.docs(250))
        ix.commit()
        q = data.mat(4, 0.8)
        for n in (0, 33):
            with pytest.raises(latix.InvalidArgumentError, match="nprobe"):
                ix.search(q, k=5, nprobe=n)
        with pytest.raises(latix.InvalidArgumentError, match="keep_vectors"):
            ix.search(q, k=5, rerank=True)
        with pytest.raises(latix.InvalidArgumentError):
            ix.search(np.ones((3, DIM + 1), np.float32), k=5)
        with pytest.raises(latix.InvalidArgumentError):
            ix.add(["y"], [np.ones((3, DIM - 1), np.float32)])
    with latix.Index.create(tmp_path / "plain", DIM) as plain:
        assert plain.compression is None and plain.stats()["kind"] == "plain"
        with pytest.raises(latix.InvalidArgumentError, match="compressed"):
            plain.search(q, k=5, nprobe=4)
        with pytest.raises(latix.InvalidArgumentError, match="compressed"):
            plain.search(q, k=5, refine=8)
        with pytest.raises(latix.InvalidArgumentError, match="compressed"):
            plain.compact(retrain=True)


@pytest.mark.parametrize("pattern", ["idx-codec-*", "*.ivf-*"])
@pytest.mark.parametrize("how", ["truncate", "flip"])
def test_damaged_codec_or_lists_raise_corrupted(tmp_path: Path, pattern: str, how: str) -> None:
    data = Data(13)
    path = tmp_path / "ix"
    with latix.Index.create(path, DIM, compression=cfg()) as ix:
        ix.add([f"d{i}" for i in range(250)], data.docs(250))
        ix.commit()
    (f,) = path.glob(pattern)
    b = bytearray(f.read_bytes())
    if how == "truncate":
        del b[len(b) // 2 :]
    else:
        b[len(b) // 3] ^= 0x10
    f.write_bytes(bytes(b))
    with pytest.raises(latix.CorruptedIndexError, match=f.name):
        with latix.Index.open(path) as ix:
            ix.search(data.mat(4, 0.8), k=5)
    with pytest.raises(latix.CorruptedIndexError, match=f.name):
        with latix.Index.open(path) as ix:
            ix.verify()
