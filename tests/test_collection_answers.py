"""Collection search answers (the hits' ids, scores, passages, spans, texts and metadata) against
a reference assembled independently from the same ranking: the late / keyword / fused lists the
collection ranks with, and each hit's row read straight from ``records.sqlite`` with the sqlite3
module (no latix record store, no cache), built into hits as the search path built them before
the row cache and the columnar assembly (issue 11). Random collections: plain and compressed
indexes, records of one to several passages, every mode, random filters, and writes (upserts,
deletes, compaction) between searches on the writing handle and on a second reading handle.
"""

from __future__ import annotations

import json
import sqlite3
from pathlib import Path
from typing import Any

import latix
import latix.collection as lc
import numpy as np
import pytest
from helpers import WORDS, rand_filter, rand_record
from latix import filters as flt
from latix.collection import Collection, Hit, _fts_query, _fuse, _hybrid_params

DIM = 16


def vecs(rng: np.random.Generator, n: int, lo: int = 2, hi: int = 10) -> list[np.ndarray]:
    out = []
    for _ in range(n):
        v = rng.standard_normal((int(rng.integers(lo, hi)), DIM)).astype(np.float32)
        out.append(v / np.linalg.norm(v, axis=1, keepdims=True))
    return out


def text(rng: np.random.Generator) -> str:
    return " ".join(rng.choice(WORDS, int(rng.integers(2, 9))).tolist())


def sql_rows(col: Collection, rks: list[int]) -> dict[int, tuple[str, str, dict, Any]]:
    """rk -> (id, text, metadata, spans), read with sqlite3 alone."""
    con = sqlite3.connect(col.path / "records.sqlite")
    try:
        marks = ",".join("?" * len(rks))
        q = f"SELECT rk, id, text, meta, spans FROM records WHERE rk IN ({marks})"
        out = {}
        for rk, id_, t, meta, spans in con.execute(q, rks):
            sp = [tuple(x) for x in json.loads(spans)] if spans else None
            out[rk] = (id_, t, json.loads(meta) if meta else {}, sp)
        return out
    finally:
        con.close()


def ref_hits(
    col: Collection, q: str | None, qv: np.ndarray | None, k: int, where: Any, mode: str
) -> list[Hit]:
    """The hits of one query, from the collection's ranking lists and sqlite3 rows."""
    node = None if where is None else flt.parse(where, col._store.fields())
    wkey = None if where is None else flt.cache_key(where)
    gen, n_passages = col._index.generation_and_len()
    hp = _hybrid_params(None, None)
    depth = max(k, int(hp["depth"])) if mode == "hybrid" else k
    if mode != "keyword":
        vq = qv if qv is not None else col.encoder.encode_queries([q])[0]
        schema = None if where is None else col._store.fields()
        late = col._late([vq], depth, node, wkey, None, {}, gen, n_passages, schema=schema)[0]
    if mode != "late":
        kw = col._store.keyword(_fts_query(q or ""), depth, gen, node)
    if mode == "late":
        lst = [(rk, s, p, s, float("nan")) for rk, s, p in late]
    elif mode == "keyword":
        lst = [(rk, s, 0, float("nan"), s) for rk, s in kw[:k]]
    else:
        lst = _fuse(late, kw, k, hp)
    rows = sql_rows(col, [t[0] for t in lst]) if lst else {}
    out = []
    for rk, s, p, ls, ks in lst[:k]:
        id_, t, meta, spans = rows[rk]
        f32 = [float(np.float32(x)) for x in (s, ls, ks)]
        out.append(
            Hit(
                id=id_,
                score=f32[0],
                text=t,
                metadata=meta,
                passage=int(p),
                span=spans[p] if spans is not None and p < len(spans) else None,
                late_score=None if np.isnan(f32[1]) else f32[1],
                keyword_score=None if np.isnan(f32[2]) else f32[2],
            )
        )
    return out


def check(col: Collection, rng: np.random.Generator, n_queries: int, modes: list[str]) -> int:
    """Searches ``col`` with random queries, k, filters and modes, each answer against
    :func:`ref_hits` and the columnar forms against the hits; returns the hits compared."""
    n_hits = 0
    for _ in range(n_queries):
        mode = str(rng.choice(modes))
        k = int(rng.choice([1, 3, 10, 25]))
        where = rand_filter(rng) if rng.random() < 0.5 else None
        q = text(rng)
        qv = vecs(rng, 1, 2, 6)[0] if col.model is None else None
        want = ref_hits(col, q, qv, k, where, mode)
        got = col.search(q, k, where=where, mode=mode, query_vectors=qv)  # type: ignore[call-overload]
        assert got == want, (mode, k, where)
        qvs = None if qv is None else [qv]
        res = col.search_batch([q], k, where=where, mode=mode, query_vectors=qvs)  # type: ignore[arg-type]
        assert res.hits(0) == want
        assert res.hit_dicts(0) == [h.to_dict() for h in want]
        n_hits += len(want)
        if got:  # returned metadata belongs to the caller: changing it changes no later answer
            got[0].metadata["mutated"] = 1
            res.metadata[0][0]["mutated"] = 1  # type: ignore[index]
    return n_hits


def build(tmp: Path, seed: int, compression: Any, n: int = 240) -> tuple[Collection, list]:
    rng = np.random.default_rng(seed)
    col = Collection.create(tmp / f"c{seed}", model=None, dim=DIM, compression=compression)
    recs = [(f"r{i}", text(rng), rand_record(rng)) for i in range(n)]
    # 1-4 passages per record (a list of per-passage vectors)
    vs = [vecs(rng, int(rng.integers(1, 5))) for _ in range(n)]
    for a, b in ((0, 100), (100, 170), (170, n)):
        col.add(recs[a:b], vectors=vs[a:b])
    return col, recs


def small_compression() -> latix.Compression:
    return latix.Compression(
        bytes_per_token=4,
        n_centroids=16,
        keep_vectors=True,
        train_min_tokens=400,
        train_sample_tokens=4000,
        seed=1,
        pool_factor=1,
    )


@pytest.mark.parametrize("compressed", [False, True])
def test_answers_match_the_reference_across_writes(tmp_path: Path, compressed: bool) -> None:
    col, recs = build(tmp_path, 11 + compressed, small_compression() if compressed else None)
    reader = Collection.open(col.path)  # its own cache, warmed before each write
    rng = np.random.default_rng(30 + compressed)
    modes = ["late", "keyword", "hybrid"]
    n = 0
    for step in range(4):
        n += check(col, rng, 25, modes) + check(reader, rng, 25, modes)
        # New versions of searched records (new text and metadata under the same id), deletes,
        # and once a compaction: no answer may show a version its generation does not hold.
        ids = [r[0] for r in recs]
        pick = rng.choice(len(ids), 30, replace=False).tolist()
        ups = [(ids[i], text(rng), rand_record(rng)) for i in pick[:20]]
        col.upsert(ups, vectors=[vecs(rng, int(rng.integers(1, 4))) for _ in ups])
        col.delete([ids[i] for i in pick[20:]])
        if step == 2:
            col.compact()
    n += check(col, rng, 25, modes) + check(reader, rng, 25, modes)
    assert n > 1500  # hits were compared, not empty lists
    reader.close()
    col.close()


def test_row_cache_is_bounded_and_answers_stay_equal(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(lc, "ROW_CACHE_BYTES", 4000)  # a handful of rows
    col, _ = build(tmp_path, 21, None, n=120)
    rng = np.random.default_rng(22)
    assert check(col, rng, 40, ["late", "hybrid"]) > 200
    assert 0 < len(col._row_cache) < 40 and col._row_cache_bytes <= 4000
    assert col._row_cache_bytes == sum(nb for _, nb in col._row_cache.values())
    col.close()


def test_text_collection_spans_match_the_reference(tmp_path: Path, encoder: Any) -> None:
    """Records split into passages by the encoder (spans stored), every mode, filters."""
    rng = np.random.default_rng(41)
    col = Collection.create(
        tmp_path / "t",
        encoder=encoder,
        compression=None,
        passages=lc.Passages(max_tokens=20, overlap=4),
    )
    recs = [
        (f"d{i}", " ".join(text(rng) for _ in range(int(rng.integers(1, 6)))), rand_record(rng))
        for i in range(60)
    ]
    col.add(recs)
    assert any(r.spans for r in col._store.by_key(list(range(1, 61))).values())
    assert check(col, rng, 30, ["late", "keyword", "hybrid"]) > 100
    col.close()
