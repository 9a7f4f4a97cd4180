"""Collection API edges a service hits: close while other threads read, text that is not valid
Unicode, arguments of the wrong kind, creates that fail, and the CLI on bad paths.

Each test is the regression test of a defect found by attacking the public API (each failed
before its fix): the expected outcome is a ``latix.LatixError`` subclass with a message naming
the argument, and the collection unchanged (compared with what the test itself added).
"""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any

import latix
import numpy as np
import pytest
from latix import cli
from latix.collection import Collection

DIM = 8


def vecs(rng: np.random.Generator, n: int) -> list[np.ndarray]:
    sizes = rng.integers(1, 5, size=n)
    return [rng.standard_normal((int(m), DIM)).astype(np.float32) for m in sizes]


def new(tmp: Path, **kw: Any) -> Collection:
    kw.setdefault("compression", None)
    return Collection.create(tmp / "c", model=None, dim=DIM, **kw)


def state(col: Collection) -> tuple[Any, ...]:
    ids = col.ids()
    return (col.index.generation, ids, [col.get(i) for i in ids], len(col.index))


# ------------------------------------------------------------------------ close while reading

_CLOSE_WHILE_READING = textwrap.dedent(
    """
    import sys, threading, time, collections
    import numpy as np, latix
    D = 8
    rng = np.random.default_rng(0)
    out = collections.Counter()
    comp = latix.Compression(train_min_tokens=256, n_centroids=16, keep_vectors=True)
    for rnd in range(3):
        col = latix.Collection.create(
            f"{sys.argv[1]}/c{rnd}", model=None, dim=D, compression=comp if rnd else None
        )
        col.add(
            [(f"d{i}", f"word{i % 5} common", {"n": i}) for i in range(150)],
            vectors=[rng.standard_normal((4, D)).astype(np.float32) for _ in range(150)],
        )
        stop = threading.Event()

        def reader(j):
            q = np.random.default_rng(j).standard_normal((3, D)).astype(np.float32)
            while not stop.is_set():
                try:
                    m = j % 4
                    if m == 0:
                        col.search(query_vectors=q, k=10)
                    elif m == 1:
                        col.search(query_vectors=q, k=10, where={"n": {"$lt": 50}})
                    elif m == 2:
                        col.search("word1 common", k=10, mode="keyword", where={"n": {"$gte": 5}})
                    else:
                        col.get_many(["d1", "d2"]); len(col); col.count(where={"n": 3})
                except latix.IndexClosedError:
                    out["closed"] += 1
                    return
                except BaseException as e:
                    out[f"{type(e).__name__}: {e}"] += 1
                    return

        ts = [threading.Thread(target=reader, args=(j,)) for j in range(8)]
        for t in ts:
            t.start()
        time.sleep(0.2)
        col.delete(where={"n": {"$lt": 10}})
        col.compact()
        col.close()  # while the readers are inside SQLite and the index
        time.sleep(0.1)
        stop.set()
        for t in ts:
            t.join()
    print(dict(out))
    """
)


def test_close_while_threads_read_is_an_error_not_a_crash(tmp_path: Path) -> None:
    # Collection.close() used to close every thread's sqlite3 connection while other threads
    # were stepping statements on them: the interpreter died of SIGSEGV within a few rounds.
    # Run in a child so that a crash fails this test instead of killing pytest.
    r = subprocess.run(
        [sys.executable, "-X", "faulthandler", "-c", _CLOSE_WHILE_READING, str(tmp_path)],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert r.returncode == 0, (r.returncode, r.stderr[-3000:])
    # every reader of every round saw IndexClosedError, nothing else
    assert r.stdout.strip() == "{'closed': 24}", r.stdout + r.stderr[-2000:]


def test_reads_after_close_raise_closed(tmp_path: Path) -> None:
    col = new(tmp_path)
    col.add([("a", "alpha")], vectors=vecs(np.random.default_rng(0), 1))
    store = col._store
    col.close()
    for fn in (
        lambda: store.count(1),
        lambda: store.get(["a"], 1),
        lambda: store.fields(),
        lambda: store.keyword('"alpha"', 5, 1),
        lambda: store.check(),
    ):
        with pytest.raises(latix.IndexClosedError):
            fn()


# ------------------------------------------------------------------------ texts, not Unicode


def test_lone_surrogates_in_texts_and_queries_are_invalid_arguments(tmp_path: Path) -> None:
    # A text with a lone surrogate (valid JSON: "\\ud800") used to escape as sqlite3's
    # UnicodeEncodeError (and as the tokenizer's TypeError with a model: a 500 in latix serve).
    rng = np.random.default_rng(1)
    col = new(tmp_path)
    col.add([("a", "alpha beta")], vectors=vecs(rng, 1))
    before = state(col)
    bad: list[Any] = [
        ("s", "ok \ud800 text"),
        {"id": "s", "text": "\udfff"},
        latix.Record("s", "\ud83d"),
    ]
    for rec in bad:
        with pytest.raises(latix.InvalidArgumentError, match="text is not valid Unicode"):
            col.add([rec], vectors=vecs(rng, 1))
        with pytest.raises(latix.InvalidArgumentError, match="not valid Unicode"):
            col.upsert([("a", "x"), rec], vectors=vecs(rng, 2))
    for mode in ("keyword", "hybrid"):
        with pytest.raises(latix.InvalidArgumentError, match=r"queries\[0\] is not valid Unicode"):
            col.search("alpha \ud800", mode=mode, query_vectors=vecs(rng, 1)[0])
    with pytest.raises(latix.InvalidArgumentError, match=r"queries\[1\] is not valid Unicode"):
        col.search_batch(["alpha", "\ud800"], mode="keyword")
    assert state(col) == before
    col.verify()
    # a pair of surrogates written as one character is fine
    col.add([("e", "emoji \U0001f642 text")], vectors=vecs(rng, 1))
    assert col.get("e").text == "emoji \U0001f642 text"
    assert [h.id for h in col.search("emoji", mode="keyword")] == ["e"]
    col.close()


def test_lone_surrogate_text_with_a_model(tmp_path: Path, encoder: Any) -> None:
    col = Collection.create(tmp_path / "m", encoder=encoder, compression=None)
    col.add([("a", "insulin resistance")])
    with pytest.raises(latix.InvalidArgumentError, match="not valid Unicode"):
        col.add([("s", "glucose \ud800")])
    with pytest.raises(latix.InvalidArgumentError, match="not valid Unicode"):
        col.search("\ud800 insulin")
    assert col.ids() == ["a"] and [h.id for h in col.search("insulin")] == ["a"]
    # over HTTP the same record was a 500 (the tokenizer's TypeError): now a 400 naming it
    from fastapi.testclient import TestClient  # the dev extra has the serve packages
    from latix.serve import create_app

    with TestClient(create_app(col, workers=1), raise_server_exceptions=False) as client:
        body = b'{"records": [{"id": "s", "text": "glucose \\ud800"}]}'
        r = client.post("/records", content=body, headers={"content-type": "application/json"})
        assert r.status_code == 400, r.text
        assert "not valid Unicode" in r.json()["message"]
    assert col.ids() == ["a"]
    col.close()


# ------------------------------------------------------------------------ wrong kinds


def test_get_many_and_writes_refuse_arguments_of_the_wrong_kind(tmp_path: Path) -> None:
    rng = np.random.default_rng(2)
    col = new(tmp_path)
    col.add([("a", "x"), ("b", "y")], vectors=vecs(rng, 2))
    before = state(col)
    # get_many("ab") used to answer the records "a" and "b" (one id per character)
    for bad in ("ab", b"ab", None, 5):
        with pytest.raises(latix.InvalidArgumentError, match="ids must be a list of str"):
            col.get_many(bad)  # type: ignore[arg-type]
    assert [r.id if r else None for r in col.get_many(["b", "zz", "a"])] == ["b", None, "a"]
    # add(None) / add(5) / delete(5) used to raise TypeError
    for bad in (None, 5, 2.5):
        with pytest.raises(latix.InvalidArgumentError, match="records must be a list"):
            col.add(bad)  # type: ignore[arg-type]
        with pytest.raises(latix.InvalidArgumentError, match="records must be a list"):
            col.upsert(bad)  # type: ignore[arg-type]
    for bad in (5, b"a", "a"):
        with pytest.raises(latix.InvalidArgumentError, match="ids must be a list of str"):
            col.delete(bad)  # type: ignore[arg-type]
    # hybrid's alpha: a bool was taken as 0 or 1, numpy floats were refused
    q = vecs(rng, 1)[0]
    for bad_alpha in (True, False, "0.5", float("nan"), 1.5, -0.1):
        with pytest.raises(latix.InvalidArgumentError, match="alpha"):
            col.search("x", mode="hybrid", query_vectors=q, alpha=bad_alpha)  # type: ignore[arg-type]
    for ok in (0, 1, 0.25, np.float32(0.25), np.float64(0.75)):
        assert len(col.search("x", mode="hybrid", query_vectors=q, alpha=ok)) == 2  # type: ignore[arg-type]
    assert state(col) == before
    col.close()


def test_failed_create_leaves_nothing(tmp_path: Path) -> None:
    # create(dtype="int8") used to leave a directory marked "creating" behind, and a schema
    # given as a list raised AttributeError.
    p = tmp_path / "c"
    with pytest.raises(latix.InvalidArgumentError, match="dtype"):
        Collection.create(p, model=None, dim=DIM, dtype="int8")  # type: ignore[arg-type]
    assert not p.exists()
    with pytest.raises(latix.InvalidArgumentError, match="schema must be a dict"):
        Collection.create(p, model=None, dim=DIM, schema=[("x", "int")])  # type: ignore[arg-type]
    assert not p.exists()
    # a compression the index refuses when it creates its files (not in the Python checks)
    bad = latix.Compression(bytes_per_token=1000)  # more subspaces than the 8 dimensions
    with pytest.raises(latix.InvalidArgumentError):
        Collection.create(p, model=None, dim=DIM, compression=bad)
    assert not p.exists()
    # an existing empty directory stays, empty
    p.mkdir()
    with pytest.raises(latix.InvalidArgumentError):
        Collection.create(p, model=None, dim=DIM, compression=bad)
    assert p.is_dir() and not any(p.iterdir())
    Collection.create(p, model=None, dim=DIM).close()
    # a path that cannot be created is an I/O error naming it
    blocker = tmp_path / "file"
    blocker.write_text("x")
    with pytest.raises(latix.LatixIOError, match="cannot create the collection"):
        Collection.create(blocker / "c", model=None, dim=DIM)


# ------------------------------------------------------------------------ CLI on bad paths


def test_cli_delete_ids_file_errors_are_reported(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # A missing, unreadable or non-UTF-8 --ids-file used to end in a traceback.
    col = new(tmp_path)
    col.add([("d1", "x"), ("d2", "y")], vectors=vecs(np.random.default_rng(3), 2))
    col.close()
    c = str(tmp_path / "c")
    bad_utf8 = tmp_path / "ids.txt"
    bad_utf8.write_bytes(b"d1\n\xff\xfe\n")
    for f in (tmp_path / "missing.txt", tmp_path, bad_utf8):
        assert cli.main(["delete", c, "--ids-file", str(f)]) == 1
        err = capsys.readouterr().err
        assert err.startswith("latix delete: error: cannot read --ids-file") and str(f) in err
    good = tmp_path / "good.txt"
    good.write_text("d2\n\n")
    assert cli.main(["delete", c, "--ids-file", str(good)]) == 0
    assert "deleted 1 records; 1 remain" in capsys.readouterr().out
    with Collection.open(c) as col2:
        assert col2.ids() == ["d1"]


def test_refused_compact_commits_nothing(tmp_path: Path) -> None:
    # compact(retrain=True) on a plain collection used to commit the batch's staged writes and
    # then raise: a refused call had published the batch half-way.
    rng = np.random.default_rng(4)
    col = new(tmp_path)
    col.add([("a", "x")], vectors=vecs(rng, 1))
    gen = col.index.generation
    with col.batch():
        col.add([("b", "y")], vectors=vecs(rng, 1))
        for bad in (True, 1, "yes"):
            with pytest.raises(latix.InvalidArgumentError, match="retrain"):
                col.compact(retrain=bad)  # type: ignore[arg-type]
        assert col.ids() == ["a"] and col.index.generation == gen  # still staged only
    assert col.ids() == ["a", "b"] and col.index.generation == gen + 1
    col.compact()
    assert col.ids() == ["a", "b"]
    col.verify()
    col.close()


_FORK_WHILE_READING = textwrap.dedent(
    """
    import os, signal, sys, threading
    import numpy as np, latix
    D = 8
    rng = np.random.default_rng(0)
    col = latix.Collection.create(sys.argv[1], model=None, dim=D, compression=None)
    col.add(
        [(f"d{i}", f"word{i % 3}", {"n": i}) for i in range(60)],
        vectors=[rng.standard_normal((3, D)).astype(np.float32) for _ in range(60)],
    )
    stop = threading.Event()

    def reader():
        q = np.ones((2, D), np.float32)
        while not stop.is_set():
            col.search(query_vectors=q, k=5, where={"n": {"$lt": 30}})
            col.count(where={"n": 3})

    ts = [threading.Thread(target=reader) for _ in range(4)]
    for t in ts:
        t.start()
    codes = []
    for _ in range(40):
        pid = os.fork()
        if pid == 0:  # the parent's readers were in flight: they do not exist here
            signal.alarm(20)  # a hung child dies (exit status SIGALRM) instead of hanging
            code = 1
            try:
                hits = col.search("word1", k=100, mode="keyword")
                ok = len(hits) == 20 and len(col) == 60
                col.close()  # must not wait for the parent's reads
                code = 0 if ok else 2
            finally:
                os._exit(code)
        codes.append(os.waitpid(pid, 0)[1])
    stop.set()
    for t in ts:
        t.join()
    col.close()
    print(codes)
    """
)


@pytest.mark.skipif(not hasattr(os, "fork"), reason="fork")
def test_forked_child_reads_and_closes_while_the_parent_reads(tmp_path: Path) -> None:
    # A child forked while the parent's threads were inside SQLite inherited SQLite's mutexes
    # locked: its first sqlite3.connect hung forever (1 child in about 100 here). fork() now
    # waits for the reads and writes in flight and holds new ones back; and the child's close()
    # must not wait for reads that ran in the parent's threads.
    r = subprocess.run(
        [sys.executable, "-c", _FORK_WHILE_READING, str(tmp_path / "c")],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert r.returncode == 0, r.stderr[-3000:]
    assert r.stdout.strip() == str([0] * 40), r.stdout + r.stderr[-2000:]


_FORK_INSIDE_A_READ = textwrap.dedent(
    """
    import os, sys
    import numpy as np, latix
    col = latix.Collection.create(sys.argv[1], model=None, dim=4, compression=None)
    col.add([("a", "x", None)], vectors=[np.ones((2, 4), np.float32)])
    with col._store.reading():  # a fork from inside one of latix's own reads
        pid = os.fork()
        if pid == 0:
            os._exit(0 if len(latix.Collection.open(sys.argv[1])) == 1 else 3)
        _, status = os.waitpid(pid, 0)
    col.close()
    print(os.waitstatus_to_exitcode(status))
    """
)


def test_fork_from_inside_a_read_does_not_wait_for_itself(tmp_path: Path) -> None:
    # The fork hook waits for reads in flight; the forking thread's own read cannot end before
    # the fork does, so waiting for it would hang.
    r = subprocess.run(
        [sys.executable, "-c", _FORK_INSIDE_A_READ, str(tmp_path / "c")],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert r.returncode == 0, r.stderr[-3000:]
    assert r.stdout.strip() == "0", r.stdout + r.stderr[-2000:]


# ------------------------------------------------------------------------ search options

_BAD_OPTIONS: list[dict[str, Any]] = [
    {"nprobe": 0},
    {"nprobe": -3},
    {"nprobe": 2.5},
    {"nprobe": "4"},
    {"nprobe": True},
    {"refine": -1},
    {"refine": 1.5},
    {"refine": "16"},
    {"rerank": "yes"},
    {"rerank": 1},
]


@pytest.mark.parametrize("kind", ["plain", "auto-untrained", "trained"])
def test_invalid_search_options_raise_whatever_the_kind(tmp_path: Path, kind: str) -> None:
    # Before: a plain collection (and keyword mode of any) dropped nprobe / refine / rerank
    # unchecked, so nprobe=0 or refine="16" "worked" until the collection was compressed.
    comp: Any = {
        "plain": None,
        "auto-untrained": "auto",
        "trained": latix.Compression(train_min_tokens=256, n_centroids=16, pool_factor=1),
    }[kind]
    rng = np.random.default_rng(5)
    col = new(tmp_path, compression=comp)
    col.add(
        [(f"d{i}", "alpha beta", {"n": i}) for i in range(120)],
        vectors=[[rng.standard_normal((4, DIM)).astype(np.float32)] for _ in range(120)],
    )
    assert col.index.stats()["trained"] == (kind == "trained")
    q = rng.standard_normal((3, DIM)).astype(np.float32)
    for bad in _BAD_OPTIONS:
        for mode_call in range(4):
            with pytest.raises(latix.InvalidArgumentError, match=next(iter(bad))):
                _search_all_modes_one(col, q, mode_call, **bad)
    # Valid values: no effect where search is exact (plain, untrained), the same hits as
    # without them; nprobe's upper bound is the trained codec's centroid count.
    plain_hits = [h.id for h in col.search(query_vectors=q, k=5)]
    opts = {"nprobe": 16, "refine": 500}
    if kind == "plain":
        opts["rerank"] = True
    got = [h.id for h in col.search(query_vectors=q, k=5, **opts)]
    if kind != "trained":
        assert got == plain_hits
        assert [h.id for h in col.search(query_vectors=q, k=5, nprobe=10**6)] == plain_hits
    else:
        with pytest.raises(latix.InvalidArgumentError, match="nprobe"):
            col.search(query_vectors=q, k=5, nprobe=17)
    if kind != "plain":  # no kept vectors, no tier: an exact re-rank is impossible, trained or not
        with pytest.raises(latix.InvalidArgumentError, match="rerank"):
            col.search(query_vectors=q, k=5, rerank=True)
    col.close()


def _search_all_modes_one(col: Collection, q: np.ndarray, which: int, **opts: Any) -> Any:
    if which == 0:
        return col.search(query_vectors=q, k=5, **opts)
    if which == 1:
        return col.search("alpha", k=5, mode="keyword", **opts)
    if which == 2:
        return col.search("alpha", k=5, mode="hybrid", query_vectors=q, **opts)
    return col.search_batch(query_vectors=[q], k=5, **opts)


@pytest.mark.parametrize(
    "flags,named",
    [
        (["--max-body-mb", "nan"], "--max-body-mb"),  # before: ValueError traceback
        (["--max-body-mb", "inf"], "--max-body-mb"),  # before: OverflowError traceback
        (["--max-body-mb", "0"], "--max-body-mb"),
        (["--batch-wait-ms", "inf"], "--batch-wait-ms"),  # before: served, lone texts waited
        (["--batch-wait-ms", "nan"], "--batch-wait-ms"),  # before: served
        (["--lone-threads", "5000"], "--lone-threads"),  # before: every lone search failed
    ],
)
def test_cli_serve_refuses_bad_numbers_before_serving(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], flags: list[str], named: str
) -> None:
    new(tmp_path).close()
    assert cli.main(["serve", str(tmp_path / "c"), "--port", "0", *flags]) == 1
    err = capsys.readouterr().err
    assert f"latix serve: error: {named}" in err, err


def test_serve_app_and_batcher_refuse_what_would_fail_later(tmp_path: Path) -> None:
    pytest.importorskip("fastapi")
    from concurrent.futures import ThreadPoolExecutor

    from latix.serve import MAX_THREADS, QueryBatcher, create_app

    col = new(tmp_path)
    with pytest.raises(latix.InvalidArgumentError, match="lone_threads"):
        create_app(col, lone_threads=MAX_THREADS + 1)
    create_app(col, lone_threads=MAX_THREADS)  # the bound itself is a valid thread count
    with ThreadPoolExecutor(1) as ex:
        for wait in (float("inf"), float("nan"), -1.0):
            with pytest.raises(latix.InvalidArgumentError, match="max_wait"):
                QueryBatcher(lambda t: [], ex, max_wait=wait)
    col.close()
