"""Compressed-index building blocks through the Python binding: codec round trip, code-level
scores against numpy, updates (new segments encoded with the existing codec), tombstone and
subset filters inside candidate generation, exact re-rank, files round trip, bad input."""

from __future__ import annotations

from pathlib import Path

import latix
import numpy as np
import pytest
from latix._core import compressed as C


def clustered(
    seed: int, n_docs: int, dim: int = 32, topics: int = 16
) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(topics, dim)).astype(np.float32)
    centres /= np.linalg.norm(centres, axis=1, keepdims=True)
    lens = rng.integers(5, 25, n_docs)
    vecs = []
    for n in lens:
        t = rng.integers(0, topics, 2)
        v = centres[t[np.arange(n) % 2]] + 0.6 / np.sqrt(dim) * rng.normal(size=(n, dim))
        vecs.append(v / np.linalg.norm(v, axis=1, keepdims=True))
    return np.concatenate(vecs).astype(np.float32), np.concatenate([[0], np.cumsum(lens)]).astype(
        np.int64
    )


def maxsim_np(q: np.ndarray, v: np.ndarray, off: np.ndarray) -> np.ndarray:
    s = v @ q.T
    return np.array([s[off[d] : off[d + 1]].max(0).sum() for d in range(len(off) - 1)])


@pytest.fixture(scope="module")
def data() -> tuple[np.ndarray, np.ndarray, C.Codec]:
    v, off = clustered(0, 400)
    codec = C.Codec.train(v, n_centroids=16, bytes_per_token=8, seed=3, n_threads=2)
    return v, off, codec


def test_round_trip_error_is_below_centroid_only(
    data: tuple[np.ndarray, np.ndarray, C.Codec],
) -> None:
    v, _, codec = data
    cids, codes = codec.encode(v)
    assert cids.dtype == np.uint32 and codes.shape == (len(v), 8)
    rec = codec.decode(cids, codes)
    err = ((v - rec) ** 2).sum(1).mean()
    err_c = ((v - codec.centroids[cids]) ** 2).sum(1).mean()
    assert err < 0.8 * err_c and err < 0.3
    again = C.Codec.from_bytes(codec.to_bytes())
    assert np.array_equal(again.encode(v)[1], codes)


def test_uneven_subspaces_and_anisotropic_codec_round_trip(
    data: tuple[np.ndarray, np.ndarray, C.Codec],
) -> None:
    v, _, _ = data
    # 5 bytes = 10 subspaces over 32 dimensions (sizes 4 and 3): allowed since codec v2.
    codec = C.Codec.train(v, n_centroids=16, bytes_per_token=5, seed=3, n_threads=2)
    assert codec.aniso_eta == 1.0
    aniso = codec.with_aniso_eta(4.0)
    cids, codes = aniso.encode(v)
    assert codes.shape == (len(v), 5)
    rec = aniso.decode(cids, codes)
    # Error along each token's own direction: smaller than with squared-error codes.
    par = lambda r: float((((v - r) * v).sum(1) ** 2).mean())  # noqa: E731
    plain = codec.decode(*codec.encode(v))
    assert par(rec) < par(plain)
    again = C.Codec.from_bytes(aniso.to_bytes())
    assert again.aniso_eta == 4.0 and np.array_equal(again.encode(v)[1], codes)
    with pytest.raises(latix.InvalidArgumentError, match="aniso_eta"):
        codec.with_aniso_eta(0.0)


def test_code_level_scores_match_numpy_on_decoded(
    data: tuple[np.ndarray, np.ndarray, C.Codec],
) -> None:
    v, off, codec = data
    seg = C.CompressedSegment.build(codec, v, off)
    dec = codec.decode(*codec.encode(v))
    # Rescaled to the original lengths, as the search scores tokens (the lists' norm scales).
    dec = (
        dec * (np.linalg.norm(v.astype(np.float32), axis=1) / np.linalg.norm(dec, axis=1))[:, None]
    )
    q = v[off[7] : off[7] + 4] + 0.01
    s, sg, dd = C.search(codec, [seg], q.astype(np.float32), 20, nprobe=16)
    want = maxsim_np(q, dec, off)
    # All lists probed: estimated scores = MaxSim over rescaled decoded vectors, up to u8 table
    # rounding.
    assert np.allclose(s, want[dd], atol=0.05)
    assert set(dd[:10]) >= set(np.argsort(-want)[:5])


def test_updates_deletes_subset_and_rerank(
    tmp_path: Path, data: tuple[np.ndarray, np.ndarray, C.Codec]
) -> None:
    v, off, codec = data
    v2, off2 = clustered(1, 50)
    seg1 = C.CompressedSegment.build(codec, v, off)
    seg2 = C.CompressedSegment.build(codec, v2.astype(np.float16), off2)  # added after training
    seg1.save(tmp_path / "a.ivf")
    seg2.save(tmp_path / "b.ivf")
    segs = [
        C.CompressedSegment.open(tmp_path / "a.ivf", codec),
        C.CompressedSegment.open(tmp_path / "b.ivf", codec),
    ]
    q = v2[off2[3] : off2[4]]
    s, sg, dd = C.search(codec, segs, q, 5, nprobe=8)
    assert (sg[0], dd[0]) == (1, 3)  # the new document is found right away
    # Tombstone it: it must vanish from candidate generation.
    alive = np.ones(50, bool)
    alive[3] = False
    s, sg, dd = C.search(codec, segs, q, 5, nprobe=8, allowed=[None, alive])
    assert (1, 3) not in set(zip(sg.tolist(), dd.tolist(), strict=True))
    # Subset: only 10 documents of segment 0 allowed, none of segment 1.
    sub = np.zeros(len(off) - 1, bool)
    sub[::40] = True
    s, sg, dd = C.search(codec, segs, q, 20, nprobe=16, allowed=[sub, np.zeros(50, bool)])
    assert set(sg.tolist()) <= {0} and all(sub[d] for d in dd) and len(dd) == 10
    # Exact re-rank from full vectors reproduces exact MaxSim order on the candidates.
    s, sg, dd = C.search(codec, segs, q, 5, nprobe=16, full=[(v, off), (v2, off2)], n_candidates=50)
    ex = np.concatenate([maxsim_np(q, v, off), maxsim_np(q, v2.astype(np.float32), off2)])
    flat = np.where(sg == 0, dd, dd + len(off) - 1)
    assert np.allclose(s, ex[flat], atol=1e-4)
    assert list(flat) == list(np.argsort(-ex, kind="stable")[:5])


def test_bad_input_raises_clear_errors(data: tuple[np.ndarray, np.ndarray, C.Codec]) -> None:
    v, off, codec = data
    with pytest.raises(latix.InvalidArgumentError, match="at least 256"):
        C.Codec.train(v[:100])
    with pytest.raises(latix.InvalidArgumentError, match="bytes_per_token"):
        C.Codec.train(v, bytes_per_token=17)
    with pytest.raises(latix.InvalidArgumentError, match="n_centroids"):
        C.Codec.train(v, n_centroids=10**7)
    with pytest.raises(latix.InvalidArgumentError, match="dim"):
        codec.encode(np.zeros((3, 16), np.float32))
    with pytest.raises(latix.InvalidArgumentError, match="dim"):
        C.CompressedSegment.build(codec, np.zeros((3, 16), np.float32), np.array([0, 3], np.int64))
    seg = C.CompressedSegment.build(codec, v, off)
    with pytest.raises(latix.InvalidArgumentError, match="nprobe"):
        C.search(codec, [seg], v[:2], 5, nprobe=999)
    with pytest.raises(latix.InvalidArgumentError, match="allowed"):
        C.search(codec, [seg], v[:2], 5, allowed=[np.ones(3, bool)])
    with pytest.raises(latix.CorruptedIndexError):
        C.Codec.from_bytes(codec.to_bytes()[:-3] + b"xyz")


@pytest.mark.parametrize("keep", [False, True])
def test_blocks_search_ranks_like_index_search(tmp_path: Path, keep: bool) -> None:
    """The building blocks run the pipeline of a compressed index (generate -> refine -> rerank,
    the same defaults): on the index's own codec and lists, ``search`` returns Index.search's
    ranking and scores, and both find most of the exact top 10 (numpy MaxSim)."""
    rng = np.random.default_rng(7)
    v, off = clustered(5, 300)
    docs = [v[off[i] : off[i + 1]] for i in range(len(off) - 1)]
    ids = [f"d{i}" for i in range(len(docs))]
    comp = latix.Compression(
        bytes_per_token=8,
        n_centroids=16,
        keep_vectors=keep,
        train_min_tokens=256,
        train_sample_tokens=4000,
        seed=3,
        pool_factor=1,
    )
    with latix.Index.create(tmp_path / "ix", 32, dtype="float32", compression=comp) as ix:
        ix.add(ids, docs)
        ix.commit()
        assert ix.stats()["trained"]
        ((file, n_docs, _),) = ix.segments()
        seg_ids = ix.segment_ids(file)
        codec = C.Codec.from_bytes(next((tmp_path / "ix").glob("idx-codec-*")).read_bytes())
        seg = C.CompressedSegment.open(next((tmp_path / "ix").glob("*.ivf-*")), codec)
        assert seg.n_docs == n_docs == len(docs)
        full = [(v, off)] if keep else None
        exact = maxsim_np
        hit = 0
        for _ in range(12):
            d = int(rng.integers(0, len(docs)))
            q = (docs[d][:4] + 0.05 * rng.standard_normal((min(4, len(docs[d])), 32))).astype(
                np.float32
            )
            scores, found = ix.search(q, k=10)
            s, sg, dd = C.search(codec, [seg], q, 10, full=full, n_threads=1)
            assert [seg_ids[x] for x in dd] == list(found[0])
            assert np.allclose(s, scores[0], atol=1e-5)
            ex = exact(q, v, off)
            hit += len(set(dd.tolist()) & set(np.argsort(-ex, kind="stable")[:10].tolist()))
        assert hit / 120 >= (0.95 if keep else 0.7), hit / 120


def test_segments_of_another_codec_are_refused(
    tmp_path: Path, data: tuple[np.ndarray, np.ndarray, C.Codec]
) -> None:
    v, off, codec = data
    other = C.Codec.train(v, n_centroids=16, bytes_per_token=8, seed=4, n_threads=2)
    seg = C.CompressedSegment.build(other, v, off)
    with pytest.raises(latix.InvalidArgumentError, match="different codec"):
        C.search(codec, [seg], v[:2], 5)
    seg.save(tmp_path / "o.ivf")
    with pytest.raises(latix.InvalidArgumentError, match="different codec"):
        C.CompressedSegment.open(tmp_path / "o.ivf", codec)
