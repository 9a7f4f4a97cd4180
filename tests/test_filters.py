"""The metadata filter language: the SQL back-end, the numpy back-end (over columns built the way
collections build them, from SQLite's own parse of the JSON) and an independent pure-Python
reference written here from the documented semantics must agree on thousands of random filters
over random records; malformed filters, unknown fields and mistyped values are clear errors;
values containing SQL are data.
"""

from __future__ import annotations

import json
import math
import sqlite3
from typing import Any

import numpy as np
import pytest
from helpers import SCHEMA, rand_filter, rand_record, ref_eval
from latix import filters as flt


def make_db(records: list[dict[str, Any]]) -> sqlite3.Connection:
    con = sqlite3.connect(":memory:")
    con.execute("CREATE TABLE records (rk INTEGER PRIMARY KEY, meta TEXT)")
    con.executemany(
        "INSERT INTO records (rk, meta) VALUES (?, ?)",
        [(i, json.dumps(m) if m else None) for i, m in enumerate(records)],
    )
    return con


def columns_from_db(con: sqlite3.Connection, n: int) -> dict[str, flt.Column]:
    """Columns built as a collection builds its mirror: from SQLite's parse of the JSON."""
    cols = {}
    for f, t in SCHEMA.items():
        rows = con.execute(
            "SELECT rk, json_extract(meta, ?) FROM records ORDER BY rk", ("$." + f,)
        ).fetchall()
        raw = [None if v is None else (json.loads(v) if t == "list[str]" else v) for _, v in rows]
        assert len(raw) == n
        cols[f] = flt.Column.build(t, raw)
    return cols


def sql_eval(con: sqlite3.Connection, node: flt.Node) -> set[int]:
    sql, params = flt.to_sql(node)
    return {r[0] for r in con.execute(f"SELECT rk FROM records WHERE {sql}", params)}


@pytest.mark.parametrize("seed", range(6))
def test_sql_numpy_and_reference_agree(seed: int) -> None:
    rng = np.random.default_rng(seed)
    n = int(rng.integers(1, 120))
    records = [rand_record(rng) for _ in range(n)]
    normalized = []
    for m in records:
        stored, _ = flt.normalize_metadata(m, SCHEMA)
        normalized.append(stored)
    con = make_db(normalized)
    cols = columns_from_db(con, n)
    checked = nonempty = 0
    for _ in range(400):
        where = rand_filter(rng)
        node = flt.parse(where, SCHEMA)
        want = {i for i, m in enumerate(normalized) if ref_eval(where, m)}
        got_sql = sql_eval(con, node)
        got_np = set(np.flatnonzero(flt.evaluate(node, cols, n)).tolist())
        assert got_sql == want, (where, sorted(got_sql ^ want)[:5])
        assert got_np == want, (where, sorted(got_np ^ want)[:5])
        checked += 1
        nonempty += bool(want) and len(want) < n
    assert nonempty > checked // 4  # the filters discriminate, not just all/nothing


def test_missing_columns_and_empty_segments() -> None:
    node = flt.parse({"$or": [{"n": 1}, {"s": {"$exists": False}}]}, SCHEMA)
    # A segment whose documents never had the fields: no column at all.
    assert flt.evaluate(node, {}, 3).tolist() == [True, True, True]
    assert flt.evaluate(node, {}, 0).shape == (0,)


def test_int_and_float_normalisation_is_exact() -> None:
    big = 2**63 - 1
    cases = [
        ({"n": {"$gt": 2.5}}, [3, 4], [2, 1]),
        ({"n": {"$lte": 2.5}}, [2, -7], [3]),
        ({"n": {"$eq": 2.0}}, [2], [3]),
        ({"n": {"$eq": 2.5}}, [], [2, 3]),
        ({"n": {"$ne": 2.5}}, [2, 3], []),
        ({"n": {"$gte": 1e30}}, [], [big]),
        ({"n": {"$lt": 1e30}}, [big, -3], []),
        ({"n": {"$in": [1.5, 3.0, 2**70]}}, [3], [1, 2]),
        ({"x": {"$gt": 2}}, [2.5], [2.0]),
    ]
    for where, yes, no in cases:
        f = next(iter(where))
        recs = [{f: v} for v in yes + no] + [{}]
        con = make_db(recs)
        node = flt.parse(where, SCHEMA)
        got = sql_eval(con, node)
        assert got == set(range(len(yes))), (where, got)
        cols = columns_from_db(con, len(recs))
        assert set(np.flatnonzero(flt.evaluate(node, cols, len(recs))).tolist()) == got


@pytest.mark.parametrize(
    "where,needle",
    [
        ({"nope": 1}, "unknown field 'nope'"),
        ({"n": "2020"}, "field has type int"),
        ({"s": 3}, "field has type str"),
        ({"b": 1}, "field has type bool"),
        ({"b": {"$gt": True}}, "cannot be ordered"),
        ({"tags": {"$gt": "a"}}, "does not apply to a list[str] field"),
        ({"n": {"$regex": "x"}}, "operator '$regex'"),
        ({"$xor": []}, "unknown operator '$xor'"),
        ({"$and": []}, "non-empty list"),
        ({"$or": {"n": 1}}, "non-empty list"),
        ({}, "empty dict"),
        ({"n": {}}, "empty dict"),
        ({"n": [1, 2]}, "use {'$in'"),
        ({"n": {"$in": 3}}, "must be a list"),
        ({"n": {"$exists": 1}}, "True or False"),
        ({"x": {"$gt": float("nan")}}, "finite"),
        ({"x": {"$eq": 2**60}}, "cannot be compared exactly"),
        ({"tags": {"$all": []}}, "at least one value"),
        ("n = 1", "must be a dict"),
        ({"n; DROP TABLE records": 1}, "unknown field"),
    ],
)
def test_bad_filters_are_clear_errors(where: Any, needle: str) -> None:
    with pytest.raises(flt.FilterError) as e:
        flt.parse(where, SCHEMA)
    assert needle in str(e.value), str(e.value)
    assert isinstance(e.value, ValueError)  # catchable as the built-in


def test_limits() -> None:
    deep: dict[str, Any] = {"n": 1}
    for _ in range(40):
        deep = {"$not": deep}
    with pytest.raises(flt.FilterError, match="deeper"):
        flt.parse(deep, SCHEMA)
    with pytest.raises(flt.FilterError, match="values"):
        flt.parse({"n": {"$in": list(range(20_000))}}, SCHEMA)


def test_sql_injection_is_data() -> None:
    evil = "x'); DROP TABLE records; --"
    recs = [{"s": evil}, {"s": "x"}, {"tags": [evil, "ok"]}, {}]
    con = make_db(recs)
    for where, want in [
        ({"s": evil}, {0}),
        ({"s": {"$in": [evil, "' OR '1'='1"]}}, {0}),
        ({"s": {"$gt": "' OR 1=1 --"}}, {0, 1}),
        ({"tags": evil}, {2}),
        ({"$not": {"s": "' OR 1=1 --"}}, {0, 1, 2, 3}),
    ]:
        node = flt.parse(where, SCHEMA)
        sql, params = flt.to_sql(node)
        assert evil not in sql and "OR 1=1" not in sql  # values never reach the SQL text
        assert sql_eval(con, node) == want, where
    assert con.execute("SELECT COUNT(*) FROM records").fetchone()[0] == 4  # still there


def test_metadata_validation() -> None:
    stored, new = flt.normalize_metadata(
        {"a": 1, "b": 1.5, "c": "x", "d": True, "e": ["p", "q"], "f": None}, {}
    )
    assert stored == {"a": 1, "b": 1.5, "c": "x", "d": True, "e": ["p", "q"]}
    assert new == {"a": "int", "b": "float", "c": "str", "d": "bool", "e": "list[str]"}
    # int into a float field becomes a float; the other way is an error
    assert flt.normalize_metadata({"x": 3}, SCHEMA)[0] == {"x": 3.0}
    assert isinstance(flt.normalize_metadata({"x": 3}, SCHEMA)[0]["x"], float)
    bad = [
        ({"n": 1.5}, "has type int"),
        ({"n": True}, "has type int"),
        ({"b": 1}, "has type bool"),
        ({"n": 2**64}, "64-bit"),
        ({"x": math.inf}, "finite"),
        ({"tags": ["a", 1]}, "str only"),
        ({"tags": "a"}, "has type list[str]"),
        ({"s": "a\x00b"}, "NUL"),
        ({"s": "\ud800"}, "surrogate"),
        ({"bad name": 1}, "field name"),
        ({"o": {"nested": 1}}, "must be str, int"),
    ]
    for meta, needle in bad:
        with pytest.raises(flt.MetadataError, match=needle.replace("[", r"\[")):
            flt.normalize_metadata(meta, SCHEMA)
    with pytest.raises(flt.MetadataError, match="must be a dict"):
        flt.normalize_metadata([("a", 1)], SCHEMA)  # type: ignore[arg-type]
