"""Bad-input matrix: every public function and method x every kind of bad input.

Each row calls one entry point with one bad argument and expects the documented exception (a
``latix.LatixError`` subclass: InvalidArgumentError for arguments that can never work,
NotFoundError / AlreadyExistsError for ids, IndexClosedError for a closed handle), never a
TypeError/OverflowError/panic from the binding layer. After every row the index must be unchanged:
a commit then publishes nothing (same generation) and ids and stored vectors are identical.
Rows marked ``OK`` are inputs documented as accepted (non-contiguous arrays are copied, float16
queries are converted): they must give the same result as the canonical input.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import latix
import numpy as np
import pytest
from latix import (
    AlreadyExistsError,
    IndexClosedError,
    InvalidArgumentError,
    NotFoundError,
)

DIM = 8
OK = None  # expected "exception" for accepted inputs

rng = np.random.default_rng(0)
DOCS = {
    i: rng.standard_normal((int(n), DIM)).astype(np.float32)
    for i, n in zip("abc", (3, 5, 2), strict=True)
}
Q = rng.standard_normal((2, DIM)).astype(np.float32)
D = rng.standard_normal((3, DIM)).astype(np.float32)
OFFS = np.array([0, 1, 3], dtype=np.int64)


def _arr(value: float, dtype: Any = np.float32, shape: tuple[int, ...] = (3, DIM)) -> Any:
    a = np.ones(shape, dtype=dtype)
    a[1, 2] = value
    return a


# Bad 2-D float matrices (documents, queries) by kind.
BAD_MATRICES: dict[str, Any] = {
    "dtype float64": np.ones((3, DIM)),
    "dtype int32": np.ones((3, DIM), np.int32),
    "dtype bool": np.ones((3, DIM), bool),
    "dtype complex": np.ones((3, DIM), np.complex64),
    "dtype object": np.full((3, DIM), None, dtype=object),
    "rank 0": np.float32(1.0),
    "rank 1": np.ones(DIM, np.float32),
    "rank 3": np.ones((1, 3, DIM), np.float32),
    "wrong dim": np.ones((3, DIM + 1), np.float32),
    "dim 0": np.ones((3, 0), np.float32),
    "empty (0 rows)": np.ones((0, DIM), np.float32),
    "NaN": _arr(np.nan),
    "+Inf": _arr(np.inf),
    "-Inf": _arr(-np.inf),
    "NaN float16": _arr(np.nan, np.float16),
    "Inf float16": _arr(np.inf, np.float16),
    "python list": [[1.0] * DIM] * 3,
    "str": "vectors",
    "None": None,
}

# Bad id lists by kind (for add and delete).
BAD_IDS: dict[str, Any] = {
    "single str": "a",
    "bytes": [b"x"],
    "int": [1],
    "None item": [None],
    "None": None,
    "empty id": [""],
    "huge id (70 kB)": ["x" * 70_000],
    "duplicate": ["x", "x"],
    "not iterable": 5,
}

BAD_INTS: dict[str, Any] = {
    "zero": 0,
    "negative": -1,
    "float": 1.5,
    "str": "3",
    "bool": True,
    "None": None,
    "huge (2^62)": 2**62,
    "beyond int64 (2^70)": 2**70,
}


@dataclass
class Env:
    path: Path
    ix: latix.Index
    closed: latix.Index
    tmp: Path


def fingerprint(ix: latix.Index) -> tuple[Any, ...]:
    ids = ix.ids()
    return (ix.generation, ids, [ix.get(i).tobytes() for i in ids], ix.num_tokens)


@pytest.fixture
def env(tmp_path: Path) -> Iterator[Env]:
    p = tmp_path / "ix"
    ix = latix.Index.create(p, dim=DIM, dtype="float32")
    ix.add(list(DOCS), list(DOCS.values()))
    ix.commit()
    closed = latix.Index.open(p)
    closed.close()
    yield Env(p, ix, closed, tmp_path)
    ix.close()


Row = tuple[str, Callable[[Env], Any], type[BaseException] | None]
ROWS: list[Row] = []


def row(name: str, expected: type[BaseException] | None) -> Callable[[Any], Any]:
    def deco(fn: Callable[[Env], Any]) -> Callable[[Env], Any]:
        ROWS.append((name, fn, expected))
        return fn

    return deco


# ---------------------------------------------------------------- latix.maxsim
for kind, bad in BAD_MATRICES.items():
    exp = OK if kind == "empty (0 rows)" else InvalidArgumentError
    # An empty collection (0 tokens, offsets [0]) is valid; an empty query is not.
    ROWS.append(
        (f"maxsim query {kind}", lambda e, b=bad: latix.maxsim(b, D, OFFS), InvalidArgumentError)
    )
    if kind != "empty (0 rows)" and kind != "wrong dim":
        ROWS.append(
            (
                f"maxsim doc_vectors {kind}",
                lambda e, b=bad: latix.maxsim(Q, b, OFFS),
                InvalidArgumentError,
            )
        )
for kind, bad in {
    "dtype int32": np.array([0, 1, 3], np.int32),
    "dtype float": np.array([0.0, 1.0, 3.0]),
    "rank 2": np.array([[0, 1, 3]], np.int64),
    "empty": np.array([], np.int64),
    "first not 0": np.array([1, 2, 3], np.int64),
    "decreasing": np.array([0, 2, 1, 3], np.int64),
    "negative": np.array([0, -1, 3], np.int64),
    "last != n_tokens": np.array([0, 1, 2], np.int64),
    "huge": np.array([0, 2**62], np.int64),
    "list": [0, 1, 3],
}.items():
    ROWS.append(
        (f"maxsim doc_offsets {kind}", lambda e, b=bad: latix.maxsim(Q, D, b), InvalidArgumentError)
    )
for kind, bad in BAD_INTS.items():
    if bad is not None:
        ROWS.append(
            (
                f"maxsim n_threads {kind}",
                lambda e, b=bad: latix.maxsim(Q, D, OFFS, n_threads=b),
                InvalidArgumentError,
            )
        )
ROWS.append(
    (
        "maxsim non-contiguous OK",
        lambda e: _same(
            latix.maxsim(np.asfortranarray(Q), np.repeat(D, 2, axis=0)[::2], OFFS),
            latix.maxsim(Q, D, OFFS),
        ),
        OK,
    )
)

# ---------------------------------------------------------------- Index.create / open
for kind, bad in BAD_INTS.items():
    if kind in ("bool",):
        continue
    ROWS.append(
        (
            f"create dim {kind}",
            lambda e, b=bad: latix.Index.create(e.tmp / "new", dim=b),
            InvalidArgumentError,
        )
    )
ROWS += [
    (
        "create dim 10^12",
        lambda e: latix.Index.create(e.tmp / "new", dim=10**12),
        InvalidArgumentError,
    ),
    (
        "create dim bool",
        lambda e: latix.Index.create(e.tmp / "new", dim=True),
        InvalidArgumentError,
    ),
    (
        "create dtype int8",
        lambda e: latix.Index.create(e.tmp / "new", dim=4, dtype="int8"),
        InvalidArgumentError,
    ),  # type: ignore[arg-type]
    (
        "create dtype int",
        lambda e: latix.Index.create(e.tmp / "new", dim=4, dtype=5),
        InvalidArgumentError,
    ),  # type: ignore[arg-type]
    ("create path None", lambda e: latix.Index.create(None, dim=4), InvalidArgumentError),  # type: ignore[arg-type]
    ("create path int", lambda e: latix.Index.create(5, dim=4), InvalidArgumentError),  # type: ignore[arg-type]
    ("create over an index", lambda e: latix.Index.create(e.path, dim=4), AlreadyExistsError),
    (
        "create in a non-empty dir",
        lambda e: (
            (e.tmp / "junk").mkdir()
            or (e.tmp / "junk" / "f").write_text("x")
            and latix.Index.create(e.tmp / "junk", dim=4)
        ),
        AlreadyExistsError,
    ),
    (
        "create over a file",
        lambda e: (e.tmp / "file").write_text("x") and latix.Index.create(e.tmp / "file", dim=4),
        AlreadyExistsError,
    ),
    ("open missing", lambda e: latix.Index.open(e.tmp / "missing"), NotFoundError),
    (
        "open a file",
        lambda e: (e.tmp / "file").write_text("x") and latix.Index.open(e.tmp / "file"),
        NotFoundError,
    ),
    ("open a non-index dir", lambda e: latix.Index.open(e.tmp), NotFoundError),
    ("open path None", lambda e: latix.Index.open(None), InvalidArgumentError),  # type: ignore[arg-type]
    ("open mode x", lambda e: latix.Index.open(e.path, "x"), InvalidArgumentError),  # type: ignore[arg-type]
    ("open mode int", lambda e: latix.Index.open(e.path, 1), InvalidArgumentError),  # type: ignore[arg-type]
]

# ---------------------------------------------------------------- add
for kind, bad in BAD_MATRICES.items():
    ROWS.append(
        (f"add embedding {kind}", lambda e, b=bad: e.ix.add(["new"], [b]), InvalidArgumentError)
    )
    # The bad document after a good one: nothing of the call may be staged.
    ROWS.append(
        (
            f"add good + {kind}",
            lambda e, b=bad: e.ix.add(["new1", "new2"], [D, b]),
            InvalidArgumentError,
        )
    )
for kind, bad in BAD_IDS.items():
    ROWS.append(
        (
            f"add ids {kind}",
            lambda e, b=bad: e.ix.add(b, [D] * (len(b) if isinstance(b, list) else 1)),
            InvalidArgumentError,
        )
    )
ROWS += [
    ("add existing id", lambda e: e.ix.add(["a"], [D]), AlreadyExistsError),
    ("add new + existing id", lambda e: e.ix.add(["new", "b"], [D, D]), AlreadyExistsError),
    ("add len mismatch", lambda e: e.ix.add(["x", "y"], [D]), InvalidArgumentError),
    ("add embeddings a 2-D array", lambda e: e.ix.add(["x"], D), InvalidArgumentError),
    ("add embeddings str", lambda e: e.ix.add(["x"], "D"), InvalidArgumentError),
    ("add embeddings None", lambda e: e.ix.add(["x"], None), InvalidArgumentError),  # type: ignore[arg-type]
    ("add embeddings int", lambda e: e.ix.add(["x"], 3), InvalidArgumentError),  # type: ignore[arg-type]
    (
        "add 3-D array wrong dim",
        lambda e: e.ix.add(["x"], np.ones((1, 2, DIM + 1), np.float32)),
        InvalidArgumentError,
    ),
    (
        "add 3-D array wrong count",
        lambda e: e.ix.add(["x"], np.ones((2, 2, DIM), np.float32)),
        InvalidArgumentError,
    ),
    (
        "add value beyond float16 range into float16 index",
        lambda e: _f16_index(e).add(["x"], [_arr(1e6)]),
        InvalidArgumentError,
    ),
]

# ---------------------------------------------------------------- delete
for kind, bad in BAD_IDS.items():
    if kind != "huge id (70 kB)":
        ROWS.append(
            (
                f"delete ids {kind}",
                lambda e, b=bad: e.ix.delete(b),
                NotFoundError if kind == "huge id (70 kB)" else InvalidArgumentError,
            )
        )
ROWS += [
    ("delete huge id", lambda e: e.ix.delete(["x" * 70_000]), InvalidArgumentError),
    ("delete missing id", lambda e: e.ix.delete(["zz"]), NotFoundError),
    ("delete existing + missing", lambda e: e.ix.delete(["a", "zz"]), NotFoundError),
]

# ---------------------------------------------------------------- search
for kind, bad in BAD_MATRICES.items():
    if kind == "rank 3":  # a 3-D array is a documented batch of queries
        continue
    ROWS.append(
        (f"search query {kind}", lambda e, b=bad: e.ix.search(b, k=2), InvalidArgumentError)
    )
    ROWS.append(
        (
            f"search list [good, {kind}]",
            lambda e, b=bad: e.ix.search([Q, b], k=2),
            InvalidArgumentError,
        )
    )
for kind, bad in BAD_INTS.items():
    if bad is not None:
        ROWS.append(
            (f"search k {kind}", lambda e, b=bad: e.ix.search(Q, k=b), InvalidArgumentError)
        )
        ROWS.append(
            (
                f"search n_threads {kind}",
                lambda e, b=bad: e.ix.search(Q, k=2, n_threads=b),
                InvalidArgumentError,
            )
        )
ROWS += [
    (
        "search k * n_queries too large",
        lambda e: e.ix.search([Q] * 64, k=2**21),
        InvalidArgumentError,
    ),
    (
        "search 4-D queries",
        lambda e: e.ix.search(np.ones((1, 1, 2, DIM), np.float32), k=2),
        InvalidArgumentError,
    ),
    ("search queries int", lambda e: e.ix.search(5, k=2), InvalidArgumentError),  # type: ignore[arg-type]
    ("search queries None", lambda e: e.ix.search(None, k=2), InvalidArgumentError),  # type: ignore[arg-type]
    ("search subset str", lambda e: e.ix.search(Q, k=2, subset="a"), InvalidArgumentError),
    ("search subset [int]", lambda e: e.ix.search(Q, k=2, subset=[1]), InvalidArgumentError),  # type: ignore[list-item]
    ("search subset [None]", lambda e: e.ix.search(Q, k=2, subset=[None]), InvalidArgumentError),  # type: ignore[list-item]
    ("search subset int", lambda e: e.ix.search(Q, k=2, subset=5), InvalidArgumentError),  # type: ignore[arg-type]
    (
        "search non-contiguous / float16 OK",
        lambda e: _same_search(
            e.ix.search([np.asfortranarray(Q), np.repeat(Q, 2, 0)[::2]], k=2),
            e.ix.search([Q, Q], k=2),
        ),
        OK,
    ),
    (
        "search float16 query OK",
        lambda e: _same_search(
            e.ix.search(Q.astype(np.float16), k=2),
            e.ix.search(Q.astype(np.float16).astype(np.float32), k=2),
        ),
        OK,
    ),
    (
        "search subset with unknown ids OK",
        lambda e: _same_search(
            e.ix.search(Q, k=2, subset=["a", "zz"]), e.ix.search(Q, k=2, subset=["a"])
        ),
        OK,
    ),
]

# ---------------------------------------------------------------- get / contains
ROWS += [
    ("get int", lambda e: e.ix.get(1), InvalidArgumentError),  # type: ignore[arg-type]
    ("get None", lambda e: e.ix.get(None), InvalidArgumentError),  # type: ignore[arg-type]
    ("get bytes", lambda e: e.ix.get(b"a"), InvalidArgumentError),  # type: ignore[arg-type]
    ("get missing", lambda e: e.ix.get("zz"), NotFoundError),
    ("get empty", lambda e: e.ix.get(""), NotFoundError),
    ("get huge id", lambda e: e.ix.get("x" * 70_000), NotFoundError),
    ("contains int is False OK", lambda e: _is(1 in e.ix, False), OK),
    ("contains None is False OK", lambda e: _is(None in e.ix, False), OK),
    ("contains bytes is False OK", lambda e: _is(b"a" in e.ix, False), OK),
]

# ---------------------------------------------------------------- closed handle
ROWS += [
    (f"closed {name}", fn, IndexClosedError)
    for name, fn in [
        ("add", lambda e: e.closed.add(["x"], [D])),
        ("delete", lambda e: e.closed.delete(["a"])),
        ("commit", lambda e: e.closed.commit()),
        ("compact", lambda e: e.closed.compact()),
        ("search", lambda e: e.closed.search(Q, k=2)),
        ("get", lambda e: e.closed.get("a")),
        ("ids", lambda e: e.closed.ids()),
        ("len", lambda e: len(e.closed)),
        ("contains", lambda e: "a" in e.closed),
        ("iter", lambda e: list(e.closed)),
        ("verify", lambda e: e.closed.verify()),
        ("generation", lambda e: e.closed.generation),
        ("num_tokens", lambda e: e.closed.num_tokens),
    ]
]
ROWS.append(("close twice OK", lambda e: e.closed.close(), OK))


def _same(a: Any, b: Any) -> None:
    np.testing.assert_array_equal(a, b)


def _same_search(a: Any, b: Any) -> None:
    np.testing.assert_array_equal(a[0], b[0])
    np.testing.assert_array_equal(a[1], b[1])


def _is(a: Any, b: Any) -> None:
    assert a is b


def _f16_index(e: Env) -> latix.Index:
    return latix.Index.create(e.tmp / "f16", dim=DIM, dtype="float16")


@pytest.mark.parametrize("name,call,expected", ROWS, ids=[r[0] for r in ROWS])
def test_bad_input(env: Env, name: str, call: Callable[[Env], Any], expected: Any) -> None:
    before = fingerprint(env.ix)
    if expected is OK:
        call(env)
    else:
        with pytest.raises(expected) as info:
            call(env)
        # Every error is a latix error with a message, never a bare TypeError/OverflowError.
        assert isinstance(info.value, latix.LatixError), type(info.value)
        assert str(info.value)
    # The index is unchanged: nothing was staged (commit publishes nothing), content identical.
    env.ix.commit()
    assert fingerprint(env.ix) == before
    with latix.Index.open(env.path) as other:
        assert fingerprint(other) == before


def test_matrix_covers_every_public_entry_point() -> None:
    names = " ".join(r[0] for r in ROWS)
    for entry in [
        "maxsim",
        "create",
        "open",
        "add",
        "delete",
        "search",
        "get",
        "contains",
        "closed commit",
        "closed compact",
        "closed len",
        "closed ids",
        "closed verify",
    ]:
        assert entry in names, entry
    assert len(ROWS) > 200


@pytest.mark.parametrize("dtype", ["float32", "float16"])
def test_non_contiguous_and_fortran_inputs_are_stored_row_major(tmp_path: Path, dtype: str) -> None:
    # Regression: a Fortran-ordered array is "contiguous" to numpy's as_slice, and was read as
    # row-major data: add() stored the transpose's bytes and search()/maxsim() scored wrong
    # values, silently. Now only C-contiguous arrays are borrowed; everything else is copied.
    r = np.random.default_rng(1)
    base = r.standard_normal((5, DIM)).astype(np.float32)
    variants = {
        "fortran": np.asfortranarray(base),
        "strided rows": np.repeat(base, 2, axis=0)[::2],
        "strided cols": np.repeat(base, 2, axis=1)[:, ::2],
        "reversed": base[::-1][::-1],
        "fortran f16": np.asfortranarray(base.astype(np.float16)),
    }
    with latix.Index.create(tmp_path / "ix", dim=DIM, dtype=dtype) as ix:
        ix.add(list(variants), list(variants.values()))
        ix.commit()
        want = base.astype(dtype)
        for name, v in variants.items():
            expect = v.astype(np.float32).astype(dtype)
            np.testing.assert_array_equal(ix.get(name), expect, err_msg=name)
            if "f16" not in name:
                np.testing.assert_array_equal(ix.get(name), want, err_msg=name)
        q = r.standard_normal((3, DIM)).astype(np.float32)
        a = ix.search(np.asfortranarray(q), k=5)
        b = ix.search(q, k=5)
        np.testing.assert_array_equal(a[0], b[0])
    offs = np.array([0, 2, 5], np.int64)
    np.testing.assert_array_equal(
        latix.maxsim(np.asfortranarray(q), np.asfortranarray(base), offs),
        latix.maxsim(q, base, offs),
    )
