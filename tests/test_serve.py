"""The HTTP service (latix.serve) and the async Collection API.

References are independent of the code under test: hits are checked against numpy MaxSim over
vectors the test computes itself with the collection's encoder (documents rounded to float16,
what the plain index stores) and filters against the pure-Python reference of test_filters;
writes against a dict the test keeps. In-process tests drive the ASGI app through FastAPI's
TestClient (no sockets); one test runs ``latix serve`` as a real uvicorn process on a free
loopback port, kills it with SIGKILL during writes, restarts it and checks that every write it
acknowledged is there, then stops it with SIGTERM during writes (graceful: the same holds).
A hypothesis test sends generated bodies to every operation of the OpenAPI schema: 0 server
errors.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import latix
import numpy as np
import pytest
from fastapi.testclient import TestClient  # noqa: E402
from helpers import LANGS, TAGS, WORDS, rand_meta, rand_text, ref_eval, ref_search
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from latix.collection import Collection
from latix.serve import MAX_K, QueryBatcher, create_app  # noqa: E402


def rand_where(rng: np.random.Generator) -> dict[str, Any]:
    c = int(rng.integers(0, 5))
    if c == 0:
        return {"n": {"$gte": int(rng.integers(2000, 2025))}}
    if c == 1:
        return {"s": str(rng.choice(LANGS))}
    if c == 2:
        return {"tags": {"$in": [str(rng.choice(TAGS))]}}
    if c == 3:
        return {"$or": [{"s": "en"}, {"n": {"$lt": 2010}}]}
    return {"$not": {"tags": "a"}, "n": {"$lte": 2020}}


@pytest.fixture(scope="module")
def encoder() -> latix.Encoder:
    return latix.Encoder.default()


@pytest.fixture(scope="module")
def served(
    tmp_path_factory: pytest.TempPathFactory, encoder: latix.Encoder
) -> Iterator[tuple[Collection, TestClient, dict[str, dict[str, Any]]]]:
    """A plain collection of 60 random records behind the app, and the test's own copy."""
    rng = np.random.default_rng(11)
    col = Collection.create(
        tmp_path_factory.mktemp("serve") / "c", encoder=encoder, compression=None
    )
    recs = {
        f"r{i}": {"id": f"r{i}", "text": rand_text(rng), "metadata": rand_meta(rng)}
        for i in range(60)
    }
    col.add(list(recs.values()))
    with TestClient(create_app(col, workers=2)) as client:
        yield col, client, recs
    col.close()


def check_hits(hits: list[dict[str, Any]], ref: list[tuple[str, float]], recs: Any) -> None:
    assert len(hits) == len(ref)
    got = [h["score"] for h in hits]
    np.testing.assert_allclose(got, [s for _, s in ref], atol=2e-3)
    assert got == sorted(got, reverse=True)
    for h, (rid, s) in zip(hits, ref, strict=True):
        if h["id"] != rid:  # a near tie may swap: the score must still be the reference's
            assert abs(h["score"] - s) < 2e-3
        assert h["text"] == recs[h["id"]]["text"]
        assert h["metadata"] == recs[h["id"]]["metadata"]


# ------------------------------------------------------------------------------------ contract


def test_search_matches_numpy_maxsim(served: Any, encoder: latix.Encoder) -> None:
    _, client, recs = served
    rng = np.random.default_rng(1)
    for trial in range(6):
        q = rand_text(rng, 1, 6)
        k = int(rng.integers(1, 12))
        where = rand_where(rng) if trial % 2 else None
        r = client.post("/search", json={"query": q, "k": k, "where": where})
        assert r.status_code == 200, r.text
        check_hits(r.json()["hits"], ref_search(encoder, q, recs, k, where), recs)
    # Many queries: one list per query, in order.
    qs = [rand_text(rng, 1, 5) for _ in range(5)]
    r = client.post("/search", json={"query": qs, "k": 3})
    assert r.status_code == 200
    lists = r.json()["hits"]
    assert len(lists) == 5
    for q, hits in zip(qs, lists, strict=True):
        check_hits(hits, ref_search(encoder, q, recs, 3), recs)


def test_answer_equals_hits_to_dict_in_every_mode(tmp_path: Path, encoder: latix.Encoder) -> None:
    """The server builds its answer from the result columns (BatchResults.hit_dicts, orjson):
    it must be exactly what ``Hit.to_dict`` gives (field for field, after a JSON round trip),
    with passages (spans), short result lists (padding), filters, lists of queries and modes."""
    from latix.collection import Passages

    rng = np.random.default_rng(5)
    col = Collection.create(
        tmp_path / "p", encoder=encoder, compression=None, passages=Passages(16, overlap=4)
    )
    recs = [
        {"id": f"p{i}", "text": rand_text(rng, 3, 40), "metadata": rand_meta(rng)}
        for i in range(30)
    ]
    col.add(recs)
    assert any(h.span is not None for h in col.search("glucose insulin heart", 30))
    with TestClient(create_app(col, workers=2)) as client:
        for trial in range(12):
            qs = [rand_text(rng, 1, 6) for _ in range(int(rng.integers(1, 4)))]
            k = int(rng.choice([1, 5, 40]))  # 40 > 30 records: padded columns
            mode = str(rng.choice(["late", "keyword", "hybrid"]))
            where = rand_where(rng) if trial % 2 else None
            one = trial % 3 == 0
            body = {"query": qs[0] if one else qs, "k": k, "mode": mode, "where": where}
            r = client.post("/search", json=body)
            assert r.status_code == 200, r.text
            ref = col.search(qs[0] if one else qs, k, mode=mode, where=where)
            lists = [ref] if one else ref
            want = [[h.to_dict() for h in hs] for hs in lists]  # type: ignore[union-attr]
            got = r.json()["hits"]
            assert (got if not one else [got]) == json.loads(json.dumps(want))
            res = col.search_batch(qs, k, mode=mode, where=where)
            for i in range(len(res)):
                assert res.hit_dicts(i) == [h.to_dict() for h in res.hits(i)]
    col.close()


def test_keyword_and_hybrid_modes_match_collection(served: Any) -> None:
    col, client, recs = served
    for mode in ("keyword", "hybrid"):
        for where in (None, {"s": "en"}):
            r = client.post(
                "/search", json={"query": "glucose insulin", "k": 7, "mode": mode, "where": where}
            )
            assert r.status_code == 200
            hits = r.json()["hits"]
            ref = col.search("glucose insulin", 7, mode=mode, where=where)
            assert [h["id"] for h in hits] == [h.id for h in ref]
            if where is not None:
                assert all(recs[h["id"]]["metadata"].get("s") == "en" for h in hits)
            if mode == "keyword":  # every keyword hit contains a query word
                assert all(
                    {"glucose", "insulin"} & set(recs[h["id"]]["text"].split()) for h in hits
                )


def test_explain_returns_matched_words(served: Any) -> None:
    _, client, recs = served
    r = client.post("/search", json={"query": "insulin", "k": 2, "explain": True})
    assert r.status_code == 200
    for h in r.json()["hits"]:
        words = set(recs[h["id"]]["text"].split())
        for m in h["explanation"]:
            assert m["text"] == "" or m["text"] in words


def test_concurrent_requests_are_batched_and_correct(served: Any, encoder: latix.Encoder) -> None:
    _, client, recs = served
    rng = np.random.default_rng(5)
    qs = [rand_text(rng, 1, 5) for _ in range(24)]
    before = client.get("/stats").json()["server"]
    out: dict[int, Any] = {}

    def one(i: int) -> None:
        out[i] = client.post("/search", json={"query": qs[i], "k": 4}).json()["hits"]

    ts = [threading.Thread(target=one, args=(i,)) for i in range(len(qs))]
    for t in ts:
        t.start()
    for t in ts:
        t.join()
    after = client.get("/stats").json()["server"]
    assert after["batching"] is True  # an fp32 query encoder: batch-independent vectors
    assert after["queries_encoded"] - before["queries_encoded"] == len(qs)
    for i, q in enumerate(qs):
        check_hits(out[i], ref_search(encoder, q, recs, 4), recs)


def test_int8_queries_are_not_batched_so_results_do_not_depend_on_traffic(served: Any) -> None:
    col, _, _ = served
    enc8 = latix.Encoder.default(query_precision="int8")
    # Why: int8 vectors of a query change with its batch-mates (one activation scale per call).
    qs = ["insulin resistance in muscle", "glacier", "tumour immune response of patients"]
    alone = [enc8.encode_queries([q])[0] for q in qs]
    together = enc8.encode_queries(qs)
    assert max(float(np.abs(a - b).max()) for a, b in zip(alone, together, strict=True)) > 1e-4
    c8 = Collection.open(col.path, encoder=enc8)
    try:
        with TestClient(create_app(c8, workers=2)) as client:
            out: dict[int, Any] = {}

            def one(i: int) -> None:
                out[i] = client.post("/search", json={"query": qs[i % 3], "k": 5}).json()["hits"]

            ts = [threading.Thread(target=one, args=(i,)) for i in range(12)]
            for t in ts:
                t.start()
            for t in ts:
                t.join()
            srv = client.get("/stats").json()["server"]
            assert srv["batching"] is False
            assert srv["encoder_calls"] == srv["queries_encoded"]  # one query per call
            for i in range(12):
                q = enc8.encode_queries([qs[i % 3]])[0]
                ref = [h.id for h in c8.search(None, 5, query_vectors=q)]
                assert [h["id"] for h in out[i]] == ref
    finally:
        c8.close()


@pytest.mark.parametrize("precision", ["int8", "fp32"])
def test_a_lone_request_runs_on_two_threads_with_the_same_answer(
    tmp_path: Path, precision: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A request that is the only search in flight encodes on the encoder's 2-thread query
    session and searches with 2 threads; concurrent ones take 1 each. Either way the answer is
    the one of a 1-thread encoding and search (compressed index, no exact re-rank: the search
    splits query tokens over its threads and sums their partial scores). Without an idle core
    (other processes' threads runnable) a lone request takes 1 thread too."""
    rng = np.random.default_rng(23)
    enc = latix.Encoder.default(
        n_threads=1,
        query_precision=precision,  # type: ignore[arg-type]
        query_threads=[2],
    )
    comp = latix.Compression(
        bytes_per_token=4,
        n_centroids=16,
        keep_vectors=False,
        train_min_tokens=300,
        train_sample_tokens=4000,
        seed=1,
        pool_factor=1,
    )
    col = Collection.create(tmp_path / "c", encoder=enc, compression=comp)
    col.add([{"id": f"r{i}", "text": rand_text(rng, 4, 20)} for i in range(80)])
    qs = [rand_text(rng, 1, 12) for _ in range(10)]
    refs = {}
    for q in qs:  # the reference: 1-thread encoding (default session), 1 search thread
        res = col.search_batch([q], 7, query_vectors=enc.encode_queries([q]), n_threads=1)
        refs[q] = json.loads(json.dumps(res.hit_dicts(0)))
    seen_enc: list[int | None] = []
    seen_search: list[int | None] = []
    delay = [0.0]
    enc_orig, sb_orig = enc.encode_queries_packed, col.search_batch

    def spy_enc(texts: Any, *, n_threads: int | None = None) -> Any:
        seen_enc.append(n_threads)
        return enc_orig(texts, n_threads=n_threads)

    def spy_search(*a: Any, **kw: Any) -> Any:
        seen_search.append(kw.get("n_threads"))
        time.sleep(delay[0])  # holds concurrent requests in flight together
        return sb_orig(*a, **kw)

    enc.encode_queries_packed = spy_enc  # type: ignore[method-assign]
    col.search_batch = spy_search  # type: ignore[method-assign]
    try:
        # lone_always: this test's machine may have no idle core (checked below).
        with TestClient(create_app(col, workers=2, lone_threads=2, lone_always=True)) as client:
            assert client.get("/stats").json()["server"]["lone_encoder_threads"] == 2
            seen_enc.clear()
            for q in qs:  # one at a time: each is alone
                r = client.post("/search", json={"query": q, "k": 7})
                assert r.status_code == 200, r.text
                assert r.json()["hits"] == refs[q]
            assert seen_enc == [2] * len(qs) and seen_search == [2] * len(qs)
            srv = client.get("/stats").json()["server"]
            assert srv["lone_searches"] == len(qs) and srv["lone_encodes"] == len(qs)
            seen_enc.clear()
            seen_search.clear()
            delay[0] = 0.05
            out: dict[int, Any] = {}

            def one(i: int) -> None:
                out[i] = client.post("/search", json={"query": qs[i % 10], "k": 7}).json()

            ts = [threading.Thread(target=one, args=(i,)) for i in range(12)]
            for t in ts:
                t.start()
            for t in ts:
                t.join()
            assert None in seen_enc and 1 in seen_search  # concurrent: 1 thread each
            for i in range(12):
                assert out[i]["hits"] == refs[qs[i % 10]]
        delay[0] = 0.0
        # Off (lone_threads=1), and no idle core (the kernel's runnable count says all busy):
        # 1 thread; an idle core: 2.
        for kw, idle, want in (
            ({"lone_threads": 1, "lone_always": True}, 2, (None, 1)),
            ({"lone_threads": 2}, 0, (None, 1)),
            ({"lone_threads": 2}, 1, (2, 2)),
        ):
            monkeypatch.setattr("latix.serve._idle_cpus", lambda idle=idle: idle)
            with TestClient(create_app(col, workers=2, **kw)) as client:  # type: ignore[arg-type]
                seen_enc.clear()
                seen_search.clear()
                for q in qs[:3]:
                    r = client.post("/search", json={"query": q, "k": 7})
                    assert r.json()["hits"] == refs[q]
                assert seen_enc == [want[0]] * 3 and seen_search == [want[1]] * 3
        with pytest.raises(latix.InvalidArgumentError, match="lone_threads"):
            create_app(col, lone_threads=0)
    finally:
        col.close()


def test_idle_cpus_sees_other_processes_busy() -> None:
    """With twice as many busy processes as CPUs, no core is idle (the kernel's runnable count
    includes them), so a lone request would not take a second thread."""
    from latix.serve import _idle_cpus

    n = 2 * (os.cpu_count() or 1)
    busy = [
        subprocess.Popen(
            [sys.executable, "-c", "import time\nt = time.time() + 20\nwhile time.time() < t: pass"]
        )
        for _ in range(n)
    ]
    try:
        time.sleep(0.3)
        assert min(_idle_cpus() for _ in range(20)) <= 0
    finally:
        for p in busy:
            p.kill()
            p.wait()


def test_writes_round_trip_against_a_dict(tmp_path: Path, encoder: latix.Encoder) -> None:
    rng = np.random.default_rng(3)
    col = Collection.create(tmp_path / "w", encoder=encoder, compression=None)
    model: dict[str, dict[str, Any]] = {}
    with TestClient(create_app(col, workers=2)) as c:
        for step in range(12):
            op = step % 4
            if op in (0, 1):
                n = int(rng.integers(1, 4))
                batch = [
                    {
                        "id": f"d{step}-{j}"
                        if op == 0 or not model
                        else str(rng.choice(list(model))),
                        "text": rand_text(rng),
                        "metadata": rand_meta(rng),
                    }
                    for j in range(n)
                ]
                batch = list({b["id"]: b for b in batch}.values())
                r = (
                    c.post("/records", json={"records": batch})
                    if op == 0
                    else c.put("/records", json={"records": batch})
                )
                assert r.status_code == 200, r.text
                assert r.json()["n_added"] + r.json()["n_replaced"] == len(batch)
                for b in batch:
                    model[b["id"]] = b
            elif op == 2 and model:
                victim = str(rng.choice(list(model)))
                assert c.delete(f"/records/{victim}").json() == {"deleted": 1}
                del model[victim]
            else:
                where = {"n": {"$lt": 2008}}
                n = c.post("/records/delete", json={"where": where}).json()["deleted"]
                gone = [i for i, r in model.items() if ref_eval(where, r["metadata"])]
                assert n == len(gone)
                for i in gone:
                    del model[i]
            # The server's view equals the model after every step.
            ids = list(model) + ["missing"]
            got = c.post("/records/get", json={"ids": ids}).json()["records"]
            assert got[-1] is None
            for i, g in zip(ids[:-1], got[:-1], strict=True):
                want = model[i]
                assert g == {"id": i, "text": want["text"], "metadata": want["metadata"]}
            assert c.get("/stats").json()["n_records"] == len(model)
        assert (
            c.post("/records", json={"records": [{"id": "dup", "text": "x"}] * 2}).status_code
            == 400
        )
        if model:
            some = next(iter(model))
            r = c.post("/records", json={"records": [{"id": some, "text": "again"}]})
            assert r.status_code == 409
        assert c.delete("/records/never").status_code == 404
    col.close()


BAD: list[tuple[str, str, Any, int]] = [
    ("POST", "/search", b"{not json", 400),
    ("POST", "/search", b"", 422),
    ("POST", "/search", [], 422),
    ("POST", "/search", {"k": 3}, 422),
    ("POST", "/search", {"query": 5}, 422),
    ("POST", "/search", {"query": ""}, 422),
    ("POST", "/search", {"query": "   "}, 400),
    ("POST", "/search", {"query": []}, 422),
    ("POST", "/search", {"query": ["ok", 3]}, 422),
    ("POST", "/search", {"query": "x", "k": 0}, 422),
    ("POST", "/search", {"query": "x", "k": MAX_K + 1}, 422),
    ("POST", "/search", {"query": "x", "k": "10"}, 422),
    ("POST", "/search", {"query": "x", "k": 2.0}, 422),
    ("POST", "/search", {"query": "x", "k": True}, 422),
    ("POST", "/search", {"query": "x", "mode": "semantic"}, 422),
    ("POST", "/search", {"query": "x", "wehre": {"s": "en"}}, 422),
    ("POST", "/search", {"query": "x", "where": {"nope": 1}}, 400),
    ("POST", "/search", {"query": "x", "where": {"n": "2020"}}, 400),
    ("POST", "/search", {"query": "x", "where": {"n": {"$regex": "a"}}}, 400),
    ("POST", "/search", {"query": "x", "where": {"n": {"$gt": float("nan")}}}, 400),
    ("POST", "/search", {"query": "x", "where": []}, 422),
    ("POST", "/search", {"query": "x", "where": {"s": "'; DROP TABLE records; --"}}, 200),
    ("POST", "/records", {"records": []}, 422),
    ("POST", "/records", {"records": [{"id": "", "text": "t"}]}, 422),
    ("POST", "/records", {"records": [{"id": "z", "text": "t", "extra": 1}]}, 422),
    ("POST", "/records", {"records": [{"id": "z", "text": "t", "metadata": {"n": "x"}}]}, 400),
    ("POST", "/records", {"records": [{"id": "z", "text": "t", "metadata": {"o": {"a": 1}}}]}, 400),
    ("POST", "/records", {"records": [{"id": "z", "text": "t", "metadata": {"bad name": 1}}]}, 400),
    ("POST", "/records", {"records": [{"id": "z", "text": "a\x00b"}]}, 400),
    ("POST", "/records/delete", {}, 400),
    ("POST", "/records/delete", {"ids": ["r1"], "where": {"s": "en"}}, 400),
    ("POST", "/records/delete", {"ids": ["not-there"]}, 404),
    ("POST", "/records/delete", {"where": {"zzz": 1}}, 400),
    ("POST", "/records/get", {"ids": "r1"}, 422),
    ("GET", "/records/nope", None, 404),
    ("GET", "/nowhere", None, 404),
    ("PATCH", "/search", None, 405),
    ("GET", "/search", None, 405),
]


@pytest.mark.parametrize("method,path,body,status", BAD)
def test_bad_input_is_a_clear_4xx(
    served: Any, method: str, path: str, body: Any, status: int
) -> None:
    _, client, _ = served
    if isinstance(body, bytes):
        r = client.request(method, path, content=body, headers={"content-type": "application/json"})
    elif body is None:
        r = client.request(method, path)
    else:
        raw = json.dumps(body)  # NaN goes out as the NaN literal Python's json accepts
        r = client.request(method, path, content=raw, headers={"content-type": "application/json"})
    assert r.status_code == status, r.text
    if status >= 400:
        e = r.json()
        assert e["error"] and e["message"]


def test_body_limit(encoder: latix.Encoder, tmp_path: Path) -> None:
    col = Collection.create(tmp_path / "b", encoder=encoder, compression=None)
    with TestClient(create_app(col, workers=1, max_body_bytes=1000)) as c:
        big = {"records": [{"id": "x", "text": "word " * 400}]}
        r = c.post("/records", json=big)
        assert r.status_code == 413 and "1000" in r.json()["message"]

        def chunks() -> Iterator[bytes]:  # no Content-Length: the limit applies while streaming
            yield b'{"records": [{"id": "x", "text": "'
            for _ in range(50):
                yield b"word " * 10
            yield b'"}]}'

        r = c.post("/records", content=chunks(), headers={"content-type": "application/json"})
        assert r.status_code == 413
        assert c.post("/records", json={"records": [{"id": "x", "text": "ok"}]}).status_code == 200
        assert len(col) == 1
    col.close()


def test_health_ready_openapi(served: Any) -> None:
    col, client, _ = served
    assert client.get("/health").json() == {"status": "ok"}
    assert client.get("/ready").json() == {"status": "ready", "records": len(col)}
    spec = client.get("/openapi.json").json()
    for path in (
        "/search",
        "/records",
        "/records/delete",
        "/records/get",
        "/records/{id}",
        "/stats",
        "/health",
        "/ready",
    ):
        assert path in spec["paths"]
    st_ = client.get("/stats").json()
    assert st_["n_records"] == len(col) and st_["dim"] == col.dim


def test_missing_extra_names_the_install_command(monkeypatch: pytest.MonkeyPatch) -> None:
    from latix._optional import MissingDependencyError, require

    monkeypatch.setitem(sys.modules, "fastapi", None)  # what an absent package looks like
    with pytest.raises(MissingDependencyError, match=r"pip install 'latix\[serve\]'") as ei:
        require("serve", "fastapi")
    assert isinstance(ei.value, latix.LatixError) and isinstance(ei.value, ImportError)


# ------------------------------------------------------------------------------------ schema fuzz

JSONV = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**70), 2**70) | st.floats() | st.text(max_size=8),
    lambda ch: st.lists(ch, max_size=4) | st.dictionaries(st.text(max_size=6), ch, max_size=4),
    max_leaves=12,
)
FIELDS = [
    "query",
    "k",
    "where",
    "mode",
    "explain",
    "records",
    "ids",
    "id",
    "text",
    "metadata",
    "n",
    "s",
    "tags",
    "$gte",
    "$in",
    "$or",
    "$not",
]


@st.composite
def body_for(draw: st.DrawFn, props: dict[str, Any]) -> Any:
    """A body near the schema: its own fields with values of any JSON type (often the right
    one), sometimes an unknown field, sometimes not an object at all."""
    if draw(st.integers(0, 9)) == 0:
        return draw(JSONV)
    out: dict[str, Any] = {}
    for name in props:
        if draw(st.booleans()):
            out[name] = draw(
                st.one_of(
                    JSONV,
                    st.integers(-3, MAX_K + 3),
                    st.sampled_from(["late", "keyword", "hybrid", "metformin", " ", ""]),
                    st.lists(st.text(WORDS[0] + " ab", max_size=12), max_size=3),
                    st.lists(
                        st.fixed_dictionaries(
                            {"id": st.text(max_size=4), "text": st.text(max_size=12)},
                            optional={
                                "metadata": st.dictionaries(
                                    st.sampled_from(FIELDS), JSONV, max_size=2
                                )
                            },
                        ),
                        max_size=3,
                    ),
                    st.dictionaries(st.sampled_from(FIELDS), JSONV, max_size=3),
                )
            )
    if draw(st.integers(0, 5)) == 0:
        out[draw(st.sampled_from(FIELDS))] = draw(JSONV)
    return out


def _operations(spec: dict[str, Any]) -> list[tuple[str, str, dict[str, Any]]]:
    ops = []
    for path, item in spec["paths"].items():
        for method, op in item.items():
            props: dict[str, Any] = {}
            body = op.get("requestBody", {}).get("content", {}).get("application/json")
            if body:
                ref = body["schema"]["$ref"].rsplit("/", 1)[-1]
                props = spec["components"]["schemas"][ref]["properties"]
            ops.append((method.upper(), path, props))
    return ops


def test_openapi_fuzz_no_server_errors(served: Any) -> None:
    _, client, _ = served
    spec = client.get("/openapi.json").json()
    ops = _operations(spec)
    assert len(ops) >= 9
    seen: set[tuple[str, str]] = set()
    statuses: dict[int, int] = {}

    @settings(
        max_examples=int(os.environ.get("LATIX_SERVE_FUZZ_EXAMPLES", "160")),
        deadline=None,
        suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
        database=None,
    )
    @given(
        st.sampled_from(ops).flatmap(
            lambda o: st.tuples(st.just(o), body_for(o[2]), st.text(max_size=6))
        )
    )
    def run(case: Any) -> None:
        (method, path, props), body, pid = case
        seen.add((method, path))
        url = path.replace("{id}", urllib.parse.quote(pid, safe="") or "r1")
        raw = json.dumps(body, allow_nan=True)
        kw: dict[str, Any] = {"content": raw, "headers": {"content-type": "application/json"}}
        r = client.request(method, url, **(kw if props else {}))
        statuses[r.status_code] = statuses.get(r.status_code, 0) + 1
        assert r.status_code < 500, (method, url, raw, r.text)
        r.json()  # every answer is JSON

    run()
    assert len(seen) == len(ops), set((m, p) for m, p, _ in ops) - seen
    assert any(s == 200 for s in statuses) and any(400 <= s < 500 for s in statuses)


# ------------------------------------------------------------------------------------ batcher


def test_query_batcher_batches_bounds_and_isolates_failures() -> None:
    from concurrent.futures import ThreadPoolExecutor

    calls: list[list[str]] = []
    lock = threading.Lock()

    def encode(texts: list[str]) -> list[np.ndarray]:
        with lock:
            calls.append(list(texts))
        if "bad" in texts:
            raise latix.InvalidArgumentError("bad text")
        time.sleep(0.01)
        return [np.full((len(t), 2), float(len(t)), np.float32) for t in texts]

    async def main() -> None:
        with ThreadPoolExecutor(4) as ex:
            b = QueryBatcher(encode, ex, max_wait=0.002, max_batch=4, max_inflight=1)
            # Alone: encoded at once, one call.
            (v,) = await b.encode(["abc"])
            assert v.shape == (3, 2) and calls == [["abc"]]
            calls.clear()
            reqs = [[f"q{i}" * (i % 3 + 1)] for i in range(10)] + [[f"long{j}" for j in range(9)]]
            outs = await asyncio.gather(*(b.encode(r) for r in reqs))
            for r, o in zip(reqs, outs, strict=True):  # every request gets its own vectors
                assert [x.shape[0] for x in o] == [len(t) for t in r]
            assert all(len(c) <= 4 for c in calls)
            assert sum(len(c) for c in calls) == 19
            assert len(calls) < 11  # concurrent texts shared calls
            # A bad text fails its own request only.
            res = await asyncio.gather(
                b.encode(["fine"]), b.encode(["bad"]), b.encode(["ok"]), return_exceptions=True
            )
            assert isinstance(res[1], latix.InvalidArgumentError)
            assert res[0][0].shape == (4, 2) and res[2][0].shape == (2, 2)

    asyncio.run(main())


def _fake_vectors(text: str) -> np.ndarray:
    """A text's own vectors (shape and values from its bytes), the reference for batched calls."""
    seed = int.from_bytes(text.encode(), "little") % (2**32)
    r = np.random.default_rng(seed)
    return r.standard_normal((len(text) % 5 + 1, 3)).astype(np.float32)


class _SlowEncoder:
    """A fake encode function that records its calls and how many are in flight at once.

    The first ``n_gated`` calls block on ``gate``; every call then holds one of ``cores``
    "cores" for ``delay`` seconds, so that, as with the real encoder on a 2-core machine, calls
    beyond the cores queue for CPU instead of running for free.
    """

    def __init__(self, delay: float = 0.0, n_gated: int = 0, cores: int = 2) -> None:
        self.delay = delay
        self.n_gated = n_gated
        self.gate = threading.Event()
        self.cores = threading.Semaphore(cores)
        self.lock = threading.Lock()
        self.calls: list[list[str]] = []
        self.running = 0
        self.max_running = 0

    def __call__(self, texts: list[str]) -> list[np.ndarray]:
        with self.lock:
            self.calls.append(list(texts))
            gated = len(self.calls) <= self.n_gated
            self.running += 1
            self.max_running = max(self.max_running, self.running)
        try:
            if gated:
                assert self.gate.wait(30), "gate never opened"
            with self.cores:
                time.sleep(self.delay)
            return [_fake_vectors(t) for t in texts]
        finally:
            with self.lock:
                self.running -= 1


def test_query_batcher_queues_while_every_slot_is_busy() -> None:
    """Texts arriving while all ``max_inflight`` calls run wait for a free slot (no extra call
    after ``max_wait``) and then share calls, FIFO, each request getting its own vectors."""
    from concurrent.futures import ThreadPoolExecutor

    enc = _SlowEncoder(n_gated=2)

    async def main() -> None:
        with ThreadPoolExecutor(6) as ex:
            b = QueryBatcher(enc, ex, max_wait=0.002, max_batch=4, max_inflight=2)
            try:
                first = [asyncio.ensure_future(b.encode([f"a{i}"])) for i in range(2)]
                await asyncio.sleep(0.01)
                assert len(enc.calls) == 2  # both slots taken, one text each
                reqs = [[f"q{i}"] for i in range(6)] + [[f"long{j}" for j in range(9)]]
                reqs += [[f"r{i}"] for i in range(3)]
                rest = []
                for r in reqs:  # arriving apart, each after more than max_wait
                    rest.append(asyncio.ensure_future(b.encode(r)))
                    await asyncio.sleep(0.005)
                # Every slot is busy, so nothing new may start, however long they wait.
                await asyncio.sleep(0.05)
                assert len(enc.calls) == 2 and b.n_calls == 2
            finally:
                enc.gate.set()
            outs = await asyncio.gather(*first, *rest)
        for r, o in zip([["a0"], ["a1"], *reqs], outs, strict=True):
            assert len(o) == len(r)
            for t, v in zip(r, o, strict=True):
                np.testing.assert_array_equal(v, _fake_vectors(t))
        assert enc.max_running <= 2
        queued = [t for r in reqs for t in r]
        later = enc.calls[2:]
        assert all(1 <= len(c) <= 4 for c in later)
        # FIFO: the calls are consecutive runs of the arrival order (the two slots may enter
        # their threads in either order, hence the sort by first position).
        later.sort(key=lambda c: queued.index(c[0]))
        assert [t for c in later for t in c] == queued
        # 18 queued texts in ceil(18 / 4) = 5 calls at best; a long request's chunks do not
        # merge with a neighbour's across the 4-text limit, hence at most 6 (a call per
        # arrival, 12, before: a timer started one whenever a text had waited max_wait).
        assert len(later) <= 6, later
        assert b.n_calls == len(enc.calls) and b.n_texts == 20

    asyncio.run(main())


def test_query_batcher_closed_loop_clients_share_calls() -> None:
    """16 clients each sending 8 queries one after another onto 2 slots of a slow encoder: the
    queries share few calls (the old timer made about one call per query), never more than 2
    at once, and every query gets its own vectors."""
    from concurrent.futures import ThreadPoolExecutor

    enc = _SlowEncoder(delay=0.005)
    n_clients, n_each = 16, 8

    async def client(b: QueryBatcher, c: int) -> None:
        for j in range(n_each):
            texts = [f"c{c}-{j}" + "x" * (j % 3)]
            if j == 3:
                texts = [f"c{c}-{j}-{m}" for m in range(20)]  # long: cut into chunks of 8
            out = await b.encode(texts)
            assert len(out) == len(texts)
            for t, v in zip(texts, out, strict=True):
                np.testing.assert_array_equal(v, _fake_vectors(t))

    async def main() -> QueryBatcher:
        with ThreadPoolExecutor(8) as ex:
            b = QueryBatcher(enc, ex, max_wait=0.002, max_batch=8, max_inflight=2)
            await asyncio.gather(*(client(b, c) for c in range(n_clients)))
            return b

    b = asyncio.run(main())
    n_texts = n_clients * (n_each - 1 + 20)
    assert b.n_texts == n_texts == sum(len(c) for c in enc.calls)
    assert enc.max_running <= 2
    assert all(len(c) <= 8 for c in enc.calls)
    # ceil(n_texts / 8) = 54 calls at best; about one call per short query (128) before.
    assert b.n_calls <= n_texts // 4, (b.n_calls, n_texts)


# ------------------------------------------------------------------------------------ async API


def test_async_api_matches_sync(tmp_path: Path) -> None:
    rng = np.random.default_rng(7)
    col = Collection.create(tmp_path / "a", model=None, dim=8, compression=None)
    docs = [rng.standard_normal((int(rng.integers(2, 6)), 8)).astype(np.float32) for _ in range(30)]
    docs = [d / np.linalg.norm(d, axis=1, keepdims=True) for d in docs]

    async def main() -> None:
        reps = await asyncio.gather(
            *(
                col.aadd(
                    [{"id": f"x{i}", "text": f"t{i}", "metadata": {"n": i}}], vectors=[docs[i]]
                )
                for i in range(30)
            )
        )
        assert sum(r.n_added for r in reps) == 30 and len(col) == 30
        qs = [rng.standard_normal((3, 8)).astype(np.float32) for _ in range(8)]
        got = await asyncio.gather(*(col.asearch(None, 5, query_vectors=q) for q in qs))
        for q, hits in zip(qs, got, strict=True):
            ref = sorted(
                range(30),
                key=lambda i: (
                    -float((q @ docs[i].astype(np.float16).astype(np.float32).T).max(1).sum())
                ),
            )[:5]
            assert [h.id for h in hits] == [f"x{i}" for i in ref]  # type: ignore[union-attr]
        assert (await col.aget("x3")).metadata == {"n": 3}
        assert [r.id if r else None for r in await col.aget_many(["x1", "zz"])] == ["x1", None]
        assert await col.acount({"n": {"$lt": 10}}) == 10
        assert await col.adelete(where={"n": {"$lt": 10}}) == 10
        assert (await col.astats())["n_records"] == 20
        with pytest.raises(latix.NotFoundError):
            await col.aget("x1")

    asyncio.run(main())
    col.close()
    with pytest.raises(latix.IndexClosedError):
        asyncio.run(col.asearch(None, 1, query_vectors=np.ones((1, 8), np.float32)))


# ------------------------------------------------------------------------------------ real server


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _http(
    port: int, method: str, path: str, body: Any = None, timeout: float = 30
) -> tuple[int, Any]:
    data = None if body is None else json.dumps(body).encode()
    req = urllib.request.Request(
        f"http://127.0.0.1:{port}{path}",
        data=data,
        method=method,
        headers={"content-type": "application/json"},
    )
    try:
        with urllib.request.urlopen(req, timeout=timeout) as r:
            return r.status, json.loads(r.read())
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read())


def _start(path: Path, port: int) -> subprocess.Popen[bytes]:
    p = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "latix.cli",
            "serve",
            str(path),
            "--port",
            str(port),
            "--workers",
            "2",
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    t0 = time.time()
    while time.time() - t0 < 120:
        if p.poll() is not None:
            raise AssertionError(f"server exited: {p.stderr.read().decode() if p.stderr else ''}")
        try:
            if _http(port, "GET", "/ready", timeout=2)[0] == 200:
                return p
        except OSError:
            pass
        time.sleep(0.1)
    p.kill()
    raise AssertionError("server not ready in 120 s")


def _writer_threads(
    port: int, n_threads: int, acked: dict[str, str], stop: threading.Event
) -> list[threading.Thread]:
    def loop(t: int) -> None:
        i = 0
        while not stop.is_set():
            rid = f"w{t}-{i}"
            text = f"written by thread {t} step {i} glucose"
            try:
                s, _ = _http(port, "POST", "/records", {"records": [{"id": rid, "text": text}]}, 10)
            except OSError:
                return  # the server died: this write was never acknowledged
            if s == 200:
                acked[rid] = text
            i += 1

    ts = [threading.Thread(target=loop, args=(t,), daemon=True) for t in range(n_threads)]
    for t in ts:
        t.start()
    return ts


def test_real_server_kill9_and_sigterm_lose_no_acknowledged_write(
    tmp_path: Path, encoder: latix.Encoder
) -> None:
    path = tmp_path / "srv"
    col = Collection.create(path, encoder=encoder, compression=None)
    col.add([{"id": "seed", "text": "metformin lowers blood glucose", "metadata": {"n": 2021}}])
    col.close()
    port = _free_port()
    p = _start(path, port)
    acked: dict[str, str] = {}
    try:
        s, body = _http(port, "POST", "/search", {"query": "diabetes drug", "k": 1})
        assert s == 200 and body["hits"][0]["id"] == "seed"
        assert _http(port, "POST", "/search", {"query": "x", "k": 0})[0] == 422
        stop = threading.Event()
        ts = _writer_threads(port, 3, acked, stop)
        t0 = time.time()
        while len(acked) < 15 and time.time() - t0 < 60:
            time.sleep(0.02)
        p.send_signal(signal.SIGKILL)  # mid-write: requests are in flight
        p.wait(10)
        stop.set()
        for t in ts:
            t.join(15)
        assert len(acked) >= 15
    finally:
        if p.poll() is None:
            p.kill()
    # Restart on the same directory (the dead writer's lock is gone with its process).
    n_before = len(acked)
    p = _start(path, port)
    try:
        ids = list(acked)
        s, body = _http(port, "POST", "/records/get", {"ids": ids})
        assert s == 200
        lost = [
            i
            for i, r in zip(ids, body["records"], strict=True)
            if r is None or r["text"] != acked[i]
        ]
        assert lost == [], f"{len(lost)} acknowledged writes lost: {lost[:5]}"
        # Graceful stop during writes: running requests finish, queued writes commit.
        stop = threading.Event()
        ts = _writer_threads(port, 3, acked, stop)
        t0 = time.time()
        while len(acked) < n_before + 10 and time.time() - t0 < 60:
            time.sleep(0.02)
        p.send_signal(signal.SIGTERM)
        # uvicorn re-raises the signal once it has shut down gracefully.
        assert p.wait(60) in (0, -signal.SIGTERM)
        stop.set()
        for t in ts:
            t.join(15)
    finally:
        if p.poll() is None:
            p.kill()
    with Collection.open(path) as col:
        got = col.get_many(list(acked))
        assert all(r is not None and r.text == acked[i] for i, r in zip(acked, got, strict=True))
        col.verify()
        assert os.path.isdir(path)
