"""Tests of latix.Index against an independent numpy MaxSim reference."""

from __future__ import annotations

import os
import subprocess
import sys
import threading
from pathlib import Path

import latix
import numpy as np
import pytest
from latix import (
    AlreadyExistsError,
    IndexClosedError,
    IndexLockedError,
    InvalidArgumentError,
    NotFoundError,
)

DTYPES = ["float16", "float32"]


def rand_docs(rng: np.random.Generator, n: int, dim: int, max_tok: int = 6) -> list[np.ndarray]:
    return [
        rng.standard_normal((int(rng.integers(1, max_tok + 1)), dim)).astype(np.float32)
        for _ in range(n)
    ]


def stored(x: np.ndarray, dtype: str) -> np.ndarray:
    """What the index stores for input ``x``, as float32."""
    return x.astype(dtype).astype(np.float32)


def ref_maxsim(q: np.ndarray, d: np.ndarray) -> float:
    return float((q.astype(np.float64) @ d.astype(np.float64).T).max(axis=1).sum())


def check_search(
    index: latix.Index,
    truth: dict[str, np.ndarray],
    order: list[str],
    queries: list[np.ndarray],
    k: int,
    subset: list[str] | None = None,
    n_threads: int | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Compares search results with brute force over ``truth`` (id -> stored f32 vectors);
    returns them (scores, ids)."""
    scores, ids = index.search(queries, k=k, subset=subset, n_threads=n_threads)
    assert scores.shape == (len(queries), k) and scores.dtype == np.float32
    assert ids.shape == (len(queries), k) and ids.dtype == object
    cands = [i for i in order if subset is None or i in set(subset)]
    for qi, q in enumerate(queries):
        ref = sorted(
            ((ref_maxsim(q, truth[i]), n) for n, i in enumerate(cands)), key=lambda t: -t[0]
        )
        n_hits = min(k, len(cands))
        np.testing.assert_allclose(
            scores[qi, :n_hits], [s for s, _ in ref[:n_hits]], rtol=1e-4, atol=1e-4
        )
        for j in range(n_hits):
            # Each returned id's true score equals the returned score (robust to near-ties).
            assert ids[qi, j] in truth and (subset is None or ids[qi, j] in subset)
            assert ref_maxsim(q, truth[ids[qi, j]]) == pytest.approx(
                scores[qi, j], rel=1e-4, abs=1e-4
            )
        assert len(set(ids[qi, :n_hits])) == n_hits
        assert np.all(np.isneginf(scores[qi, n_hits:]))
        assert all(x == "" for x in ids[qi, n_hits:])
    return scores, ids


def state(index: latix.Index, q: np.ndarray) -> tuple[int, list[str], list[float], list[str]]:
    s, i = index.search(q, k=5)
    return len(index), index.ids(), s.tolist(), i.tolist()


@pytest.fixture
def small(tmp_path: Path) -> tuple[latix.Index, dict[str, np.ndarray], np.ndarray]:
    rng = np.random.default_rng(7)
    docs = rand_docs(rng, 12, 8)
    ids = [f"doc{i}" for i in range(12)]
    index = latix.Index.create(tmp_path / "ix", dim=8, dtype="float32")
    index.add(ids, docs)
    index.commit()
    q = rng.standard_normal((3, 8)).astype(np.float32)
    return index, dict(zip(ids, docs, strict=True)), q


@pytest.mark.parametrize("dtype", DTYPES)
def test_round_trip(tmp_path: Path, dtype: str) -> None:
    rng = np.random.default_rng(0)
    docs = rand_docs(rng, 30, 16)
    docs[3] = docs[3].astype(np.float16)  # float16 input is accepted by either storage
    ids = [f"id-{i}-é" for i in range(30)]
    with latix.Index.create(tmp_path / "ix", dim=16, dtype=dtype) as index:
        index.add(ids[:10], docs[:10])
        index.commit()
        index.add(ids[10:], docs[10:])
        index.commit()
        assert index.dtype == dtype and index.dim == 16
    with latix.Index.open(tmp_path / "ix") as index:
        assert len(index) == 30
        assert index.ids() == ids
        assert index.num_tokens == sum(len(d) for d in docs)
        assert index.path == tmp_path / "ix"
        for i, d in zip(ids, docs, strict=True):
            got = index.get(i)
            assert got.dtype == np.dtype(dtype) and got.shape == d.shape
            np.testing.assert_array_equal(got, d.astype(dtype))
            assert i in index
        assert "nope" not in index and 3 not in index
        index.verify()
    assert sorted(os.listdir(tmp_path / "ix")) == [
        "CURRENT",
        "LOCK",
        "MANIFEST-00000000000000000002",
        "seg-0000000000.lxs",
        "seg-0000000001.lxs",
    ]


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize(
    ("n_docs", "dim", "max_tok", "k"),
    [(1, 1, 1, 1), (5, 3, 4, 10), (40, 32, 9, 7), (200, 24, 5, 3), (64, 130, 3, 64)],
)
def test_search_matches_numpy(
    tmp_path: Path, dtype: str, n_docs: int, dim: int, max_tok: int, k: int
) -> None:
    rng = np.random.default_rng(n_docs * 1000 + dim)
    docs = rand_docs(rng, n_docs, dim, max_tok)
    ids = [f"d{i}" for i in range(n_docs)]
    index = latix.Index.create(tmp_path / "ix", dim=dim, dtype=dtype)
    # Several commits -> several segments.
    for a in range(0, n_docs, 17):
        index.add(ids[a : a + 17], docs[a : a + 17])
        index.commit()
    truth = {i: stored(d, dtype) for i, d in zip(ids, docs, strict=True)}
    queries = [
        rng.standard_normal((int(rng.integers(1, 5)), dim)).astype(np.float32) for _ in range(4)
    ]
    # Each thread count's own results are checked against brute force, and 1 and 2 threads
    # must agree exactly (same scores, same tie order).
    s1, i1 = check_search(index, truth, ids, queries, k, n_threads=1)
    s2, i2 = check_search(index, truth, ids, queries, k, n_threads=2)
    np.testing.assert_array_equal(s1, s2)
    assert (i1 == i2).all()
    subset = [ids[j] for j in rng.choice(n_docs, size=max(1, n_docs // 3), replace=False)]
    check_search(index, truth, ids, queries, k, subset=subset)
    check_search(index, truth, ids, queries, n_docs + 5)


def test_single_query_array_and_3d(
    small: tuple[latix.Index, dict[str, np.ndarray], np.ndarray],
) -> None:
    index, truth, q = small
    s1, i1 = index.search(q, k=4)
    assert s1.shape == (1, 4)
    s2, i2 = index.search(np.stack([q, q]), k=4)
    assert s2.shape == (2, 4)
    np.testing.assert_array_equal(s2[0], s1[0])
    s3, _ = index.search(q.astype(np.float16), k=4)
    check_search(index, truth, list(truth), [q.astype(np.float16).astype(np.float32)], 4)
    assert s3.shape == (1, 4)
    s4, _ = index.search([], k=3)
    assert s4.shape == (0, 3)


def test_ties_follow_insertion_order(tmp_path: Path) -> None:
    index = latix.Index.create(tmp_path / "ix", dim=4, dtype="float32")
    v = np.ones((2, 4), np.float32)
    index.add(["c", "a", "b"], [v, v, v])
    index.commit()
    index.add(["z", "y"], [v, v])
    index.commit()
    _, ids = index.search(v, k=5)
    assert ids.tolist() == [["c", "a", "b", "z", "y"]]
    index.add(["a"], [v], replace=True)  # re-added: now the newest
    index.commit()
    _, ids = index.search(v, k=5, n_threads=2)
    assert ids.tolist() == [["c", "b", "z", "y", "a"]]


def test_empty_index(tmp_path: Path) -> None:
    index = latix.Index.create(tmp_path / "ix", dim=4)
    assert len(index) == 0 and index.ids() == [] and index.num_tokens == 0
    s, i = index.search(np.ones((2, 4), np.float32), k=3)
    assert np.all(np.isneginf(s)) and i.tolist() == [["", "", ""]]
    index.commit()  # nothing staged: no-op
    index.close()
    assert len(latix.Index.open(tmp_path / "ix")) == 0


def test_delete(small: tuple[latix.Index, dict[str, np.ndarray], np.ndarray]) -> None:
    index, truth, q = small
    index.delete(["doc3", "doc5"])
    assert "doc3" in index  # staged only
    index.commit()
    assert "doc3" not in index and len(index) == 10
    with pytest.raises(NotFoundError):
        index.get("doc3")
    del truth["doc3"], truth["doc5"]
    check_search(index, truth, list(truth), [q], 20)
    # Unknown id: nothing deleted, not even the known one.
    with pytest.raises(NotFoundError, match="doc3"):
        index.delete(["doc4", "doc3"])
    index.commit()
    assert "doc4" in index
    # Deleting a staged document.
    index.add(["new"], [np.ones((1, 8), np.float32)])
    index.delete(["new"])
    index.commit()
    assert "new" not in index and len(index) == 10
    # Deleted ids can be added again; other ids never change.
    index.add(["doc3"], [np.ones((2, 8), np.float32)])
    index.commit()
    np.testing.assert_array_equal(index.get("doc3"), np.ones((2, 8)))
    np.testing.assert_array_equal(index.get("doc4"), truth["doc4"])
    # Deleting everything drops the segments.
    index.delete(index.ids())
    index.commit()
    assert len(index) == 0
    assert sorted(os.listdir(index.path)) == ["CURRENT", "LOCK", "MANIFEST-00000000000000000005"]


def test_replace(small: tuple[latix.Index, dict[str, np.ndarray], np.ndarray]) -> None:
    index, truth, q = small
    new = np.full((3, 8), 0.5, np.float32)
    with pytest.raises(AlreadyExistsError, match="doc1"):
        index.add(["zz", "doc1"], [new, new])
    assert "zz" not in index.ids()
    index.add(["doc1"], [new], replace=True)
    index.add(["staged"], [new])
    with pytest.raises(AlreadyExistsError):
        index.add(["staged"], [new])
    index.add(["staged"], [new * 2], replace=True)
    index.add(["doc1"], [new * 3], replace=True)
    index.commit()
    np.testing.assert_array_equal(index.get("doc1"), new * 3)
    np.testing.assert_array_equal(index.get("staged"), new * 2)
    assert len(index) == 13 and index.ids().count("doc1") == 1
    truth["doc1"] = new * 3
    truth["staged"] = new * 2
    check_search(index, truth, list(truth), [q], 13)
    index.verify()


def dir_size(p: Path) -> int:
    return sum(f.stat().st_size for f in p.iterdir())


@pytest.mark.parametrize("dtype", DTYPES)
def test_compact(tmp_path: Path, dtype: str) -> None:
    rng = np.random.default_rng(3)
    docs = rand_docs(rng, 60, 32, 10)
    ids = [f"d{i}" for i in range(60)]
    index = latix.Index.create(tmp_path / "ix", dim=32, dtype=dtype)
    for a in range(0, 60, 20):
        index.add(ids[a : a + 20], docs[a : a + 20])
        index.commit()
    index.delete(ids[::3])
    index.commit()
    queries = [rng.standard_normal((4, 32)).astype(np.float32) for _ in range(3)]
    before = index.search(queries, k=15)
    ids_before = index.ids()
    size_before = dir_size(index.path)
    reader = latix.Index.open(tmp_path / "ix")
    reader_before = reader.search(queries, k=15)
    index.compact()
    after = index.search(queries, k=15)
    np.testing.assert_array_equal(before[0], after[0])
    assert (before[1] == after[1]).all()
    assert index.ids() == ids_before
    for i in ids_before:
        np.testing.assert_array_equal(index.get(i), docs[int(i[1:])].astype(dtype))
    assert dir_size(index.path) < size_before
    segs = [f for f in os.listdir(index.path) if f.startswith("seg-")]
    assert len(segs) == 1
    # The reader picks up the compacted snapshot on its next search; results are identical.
    r_after = reader.search(queries, k=15)
    np.testing.assert_array_equal(reader_before[0], r_after[0])
    index.verify()
    index.close()
    assert latix.Index.open(tmp_path / "ix").ids() == ids_before


def test_snapshot_isolation(small: tuple[latix.Index, dict[str, np.ndarray], np.ndarray]) -> None:
    writer, truth, q = small
    reader = latix.Index.open(writer.path)
    before = state(reader, q)
    writer.add(["x"], [q * 10])
    writer.delete(["doc0"])
    # Staged changes are invisible to other handles and to the writer's own reads.
    assert state(reader, q) == before
    assert state(writer, q) == before
    assert "x" not in writer
    with pytest.raises(NotFoundError):
        writer.get("x")
    writer.commit()
    after = state(reader, q)
    assert after != before
    assert after[0] == len(before[1]) and "x" in after[1] and "doc0" not in after[1]
    assert after == state(writer, q)
    assert after[3][0][0] == "x"


def test_uncommitted_lost_on_close(tmp_path: Path) -> None:
    index = latix.Index.create(tmp_path / "ix", dim=4)
    index.add(["a"], [np.ones((2, 4), np.float32)])
    index.commit()
    index.add(["b"], [np.ones((100, 4), np.float32)])
    index.delete(["a"])
    assert any(f.startswith("tmp-") for f in os.listdir(tmp_path / "ix"))
    index.close()
    assert not any(f.startswith("tmp-") for f in os.listdir(tmp_path / "ix"))
    index = latix.Index.open(tmp_path / "ix")
    assert index.ids() == ["a"]


def test_second_writer_thread(small: tuple[latix.Index, dict[str, np.ndarray], np.ndarray]) -> None:
    writer, truth, q = small
    writer.add(["w"], [q])  # takes the lock
    errors: list[BaseException] = []
    found: list[tuple[np.ndarray, np.ndarray]] = []

    def other() -> None:
        h = latix.Index.open(writer.path)
        try:
            found.append(h.search(q, k=2))  # readers are fine: checked below
            h.add(["t"], [q])
        except BaseException as e:  # noqa: B036
            errors.append(e)
        finally:
            h.close()

    t = threading.Thread(target=other)
    t.start()
    t.join()
    assert len(errors) == 1 and isinstance(errors[0], IndexLockedError)
    # The reader saw the committed documents only (not the staged "w"), best two by MaxSim.
    ((scores, hits),) = found
    want = sorted(truth, key=lambda i: -ref_maxsim(q, truth[i]))[:2]
    assert list(hits[0]) == want
    np.testing.assert_allclose(scores[0], [ref_maxsim(q, truth[i]) for i in want], rtol=1e-5)
    with pytest.raises(IndexLockedError):
        latix.Index.open(writer.path, mode="w")
    writer.commit()
    writer.close()
    with latix.Index.open(writer.path, mode="w") as h:
        h.add(["t"], [q])
        h.commit()
        assert "t" in h and "w" in h


def test_second_writer_process(
    small: tuple[latix.Index, dict[str, np.ndarray], np.ndarray],
) -> None:
    writer, _, _ = small
    writer.delete(["doc1"])  # takes the lock
    code = (
        "import sys, latix\n"
        "ix = latix.Index.open(sys.argv[1])\n"
        "n = len(ix)\n"
        "try:\n"
        "    ix.delete(['doc2'])\n"
        "except latix.IndexLockedError:\n"
        "    print('locked', n)\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", code, str(writer.path)], capture_output=True, text=True, check=True
    )
    assert out.stdout.strip() == "locked 12"
    writer.close()  # lock released: the other process can write now
    code2 = code.replace("print('locked', n)", "pass") + "ix.commit(); print(len(ix))\n"
    out = subprocess.run(
        [sys.executable, "-c", code2, str(writer.path)], capture_output=True, text=True, check=True
    )
    assert out.stdout.strip() == "11"


def test_lock_released_when_process_dies(tmp_path: Path) -> None:
    latix.Index.create(tmp_path / "ix", dim=2).close()
    code = (
        "import sys, os, numpy as np, latix\n"
        "ix = latix.Index.open(sys.argv[1], mode='w')\n"
        "ix.add(['a'], [np.ones((1, 2), np.float32)])\n"
        "os._exit(0)\n"
    )
    subprocess.run([sys.executable, "-c", code, str(tmp_path / "ix")], check=True)
    with latix.Index.open(tmp_path / "ix", mode="w") as ix:  # lock free, orphan temp removed
        assert len(ix) == 0
        assert sorted(os.listdir(tmp_path / "ix")) == [
            "CURRENT",
            "LOCK",
            "MANIFEST-00000000000000000000",
        ]


BAD_ADDS = [
    ("dim", lambda q: (["n"], [np.ones((2, 7), np.float32)]), "shape"),
    ("dtype", lambda q: (["n"], [np.ones((2, 8), np.float64)]), "float32 or float16"),
    ("int dtype", lambda q: (["n"], [np.ones((2, 8), np.int32)]), "float32 or float16"),
    ("1-D", lambda q: (["n"], [np.ones(8, np.float32)]), "embeddings\\[0\\]"),
    ("nan", lambda q: (["n", "m"], [q, np.full((1, 8), np.nan, np.float32)]), "non-finite"),
    ("inf", lambda q: (["n"], [np.full((1, 8), np.inf, np.float16)]), "non-finite"),
    ("empty doc", lambda q: (["n", "m"], [q, np.zeros((0, 8), np.float32)]), "at least one"),
    ("dup ids", lambda q: (["n", "n"], [q, q]), "more than once"),
    ("id not str", lambda q: (["n", 3], [q, q]), "ids\\[1\\] must be str"),
    ("ids str", lambda q: ("n", [q]), "list of str"),
    ("empty id", lambda q: ([""], [q]), "empty"),
    ("len mismatch", lambda q: (["n", "m"], [q]), "len\\(ids\\)"),
    ("not arrays", lambda q: (["n"], [[[1.0] * 8]]), "float32 or float16"),
]


@pytest.mark.parametrize(("what", "make", "match"), BAD_ADDS, ids=[b[0] for b in BAD_ADDS])
def test_bad_add_leaves_index_unchanged(
    small: tuple[latix.Index, dict[str, np.ndarray], np.ndarray], what: str, make, match: str
) -> None:
    index, _, q = small
    before = state(index, q)
    ids, embs = make(q)
    with pytest.raises(InvalidArgumentError, match=match):
        index.add(ids, embs)
    index.commit()
    assert state(index, q) == before


def test_f16_range_and_noncontiguous(tmp_path: Path) -> None:
    index = latix.Index.create(tmp_path / "ix", dim=4, dtype="float16")
    with pytest.raises(InvalidArgumentError, match="float16 range"):
        index.add(["a"], [np.full((1, 4), 1e6, np.float32)])
    base = np.arange(32, dtype=np.float32).reshape(4, 8)
    nc = base[:, ::2]  # non-contiguous view: copied, accepted
    assert not nc.flags["C_CONTIGUOUS"]
    index.add(["a"], [nc])
    index.commit()
    np.testing.assert_array_equal(index.get("a"), nc.astype(np.float16))
    s, _ = index.search(np.asfortranarray(np.ones((3, 4), np.float32)), k=1)
    assert s[0, 0] == pytest.approx(3 * nc.sum(axis=1).max())


def test_bad_search_and_delete(
    small: tuple[latix.Index, dict[str, np.ndarray], np.ndarray],
) -> None:
    index, _, q = small
    before = state(index, q)
    bad_queries = [
        (np.ones((2, 7), np.float32), "shape"),
        (np.ones((0, 8), np.float32), "at least one"),
        (np.ones((2, 8), np.float64), "float32 or float16"),
        (np.full((2, 8), np.nan, np.float32), "non-finite"),
        (np.ones(8, np.float32), "queries must be"),
        ("text", "queries must be"),
    ]
    for bad, match in bad_queries:
        with pytest.raises(InvalidArgumentError, match=match):
            index.search(bad, k=3)  # type: ignore[arg-type]
    for k in (0, -1):
        with pytest.raises(InvalidArgumentError, match="k must be"):
            index.search(q, k=k)
    with pytest.raises(InvalidArgumentError, match="n_threads"):
        index.search(q, n_threads=0)
    with pytest.raises(InvalidArgumentError, match="subset"):
        index.search(q, subset="doc1")
    s, i = index.search(q, k=3, subset=["doc1", "unknown", "doc1"])  # unknown ignored
    assert i.tolist() == [["doc1", "", ""]]
    s, i = index.search(q, k=3, subset=[])
    assert i.tolist() == [["", "", ""]]
    with pytest.raises(InvalidArgumentError, match="more than once"):
        index.delete(["doc1", "doc1"])
    with pytest.raises(InvalidArgumentError, match="must be str"):
        index.delete(["doc1", 5])  # type: ignore[list-item]
    with pytest.raises(NotFoundError):
        index.get("missing")
    with pytest.raises(InvalidArgumentError):
        index.get(5)  # type: ignore[arg-type]
    index.commit()
    assert state(index, q) == before


def test_closed(small: tuple[latix.Index, dict[str, np.ndarray], np.ndarray]) -> None:
    index, _, q = small
    index.close()
    index.close()
    assert index.closed and "closed" in repr(index)
    for call in (
        lambda: index.search(q),
        lambda: index.add(["a"], [q]),
        lambda: index.delete(["doc1"]),
        lambda: index.commit(),
        lambda: index.get("doc1"),
        lambda: len(index),
        lambda: index.ids(),
        lambda: "doc1" in index,
        lambda: index.compact(),
        lambda: index.num_tokens,
    ):
        with pytest.raises(IndexClosedError):
            call()


def test_create_and_open_errors(tmp_path: Path) -> None:
    latix.Index.create(tmp_path / "ix", dim=4).close()
    with pytest.raises(AlreadyExistsError, match="already exists"):
        latix.Index.create(tmp_path / "ix", dim=4)
    other = tmp_path / "other"
    other.mkdir()
    (other / "notes.txt").write_text("hello")
    with pytest.raises(AlreadyExistsError, match="not a latix index"):
        latix.Index.create(other, dim=4)
    with pytest.raises(NotFoundError, match="not a latix index"):
        latix.Index.open(other)
    with pytest.raises(NotFoundError, match="does not exist"):
        latix.Index.open(tmp_path / "missing")
    with pytest.raises(InvalidArgumentError, match="dim"):
        latix.Index.create(tmp_path / "z", dim=0)
    with pytest.raises(InvalidArgumentError, match="dtype"):
        latix.Index.create(tmp_path / "z", dim=4, dtype="int8")  # type: ignore[arg-type]
    with pytest.raises(InvalidArgumentError, match="mode"):
        latix.Index.open(tmp_path / "ix", mode="x")  # type: ignore[arg-type]
    empty = tmp_path / "empty"
    empty.mkdir()
    latix.Index.create(empty, dim=4, dtype="float32").close()
    assert latix.Index.open(empty).dtype == "float32"


def test_add_views_of_one_array_and_3d_batch(tmp_path: Path) -> None:
    rng = np.random.default_rng(11)
    flat = rng.standard_normal((3000, 8)).astype(np.float32)
    views = np.split(flat, np.arange(3, 3000, 3))  # 1000 views sharing one base array
    index = latix.Index.create(tmp_path / "ix", dim=8, dtype="float32")
    index.add([f"v{i}" for i in range(1000)], views)
    batch = rng.standard_normal((5, 4, 8)).astype(np.float16)
    index.add([f"b{i}" for i in range(5)], batch)
    index.commit()
    assert len(index) == 1005
    np.testing.assert_array_equal(index.get("v999"), flat[2997:])
    np.testing.assert_array_equal(index.get("b4"), batch[4].astype(np.float32))
