"""Helpers several test files share (each file once imported them from another test file):
random filters and records with a reference evaluator (the filter tests, the collection, serve and
integration tests), seeded clustered vectors with exact MaxSim (the compressed-index and fidelity
tests), random texts and metadata with an exact MaxSim search over an encoder (the serve and
integration tests)."""

from __future__ import annotations

from typing import Any

import latix
import numpy as np
from latix import filters as flt

# From test_filters.py.

SCHEMA: dict[str, flt.FieldType] = {
    "n": "int",
    "x": "float",
    "s": "str",
    "b": "bool",
    "tags": "list[str]",
}
INTS = [-5, -1, 0, 1, 2, 3, 7, 2**53 + 1, -(2**53) - 1, 2**63 - 1, -(2**63)]
FLOATS = [-1.5, -0.0, 0.0, 0.1, 2.0, 2.5, 3.0, 1e300, -1e-300]
STRS = ["", "a", "b", "ab", "B", "é", "z", "a'b", "'; DROP TABLE records; --", '" OR 1=1 --']


def rand_value(rng: np.random.Generator, ftype: str) -> Any:
    if ftype == "int":
        return int(rng.choice(INTS)) if rng.random() < 0.3 else int(rng.integers(-4, 5))
    if ftype == "float":
        return float(rng.choice(FLOATS))
    if ftype == "str":
        return str(rng.choice(STRS))
    if ftype == "bool":
        return bool(rng.random() < 0.5)
    return [str(rng.choice(STRS)) for _ in range(int(rng.integers(0, 4)))]


def rand_record(rng: np.random.Generator) -> dict[str, Any]:
    return {f: rand_value(rng, t) for f, t in SCHEMA.items() if rng.random() < 0.75}


def rand_operand(rng: np.random.Generator, ftype: str) -> Any:
    """A filter operand compatible with the field (ints for floats and floats for ints too)."""
    if ftype == "int" and rng.random() < 0.3:
        return float(rng.choice([2.5, -0.5, 3.0, 1e30, -1e30, 7.0]))
    if ftype == "float" and rng.random() < 0.3:
        return int(rng.integers(-3, 4))
    if ftype == "list[str]":
        return str(rng.choice(STRS))
    return rand_value(rng, ftype)


def rand_filter(rng: np.random.Generator, depth: int = 0) -> dict[str, Any]:
    r = rng.random()
    if depth < 3 and r < 0.25:
        op = str(rng.choice(["$and", "$or"]))
        return {op: [rand_filter(rng, depth + 1) for _ in range(int(rng.integers(1, 4)))]}
    if depth < 3 and r < 0.35:
        return {"$not": rand_filter(rng, depth + 1)}
    f = str(rng.choice(list(SCHEMA)))
    t = SCHEMA[f]
    if t == "list[str]":
        ops = ["$eq", "$ne", "$in", "$nin", "$all", "$exists", "bare"]
    elif t == "bool":
        ops = ["$eq", "$ne", "$in", "$nin", "$exists", "bare"]
    else:
        ops = ["$eq", "$ne", "$gt", "$gte", "$lt", "$lte", "$in", "$nin", "$exists", "bare"]
    op = str(rng.choice(ops))
    if op == "bare":
        return {f: rand_operand(rng, t)}
    if op == "$exists":
        return {f: {op: bool(rng.random() < 0.5)}}
    if op in ("$in", "$nin", "$all"):
        n = int(rng.integers(1 if op == "$all" else 0, 4))
        return {f: {op: [rand_operand(rng, t) for _ in range(n)]}}
    spec = {op: rand_operand(rng, t)}
    if rng.random() < 0.2:  # two operators on one field: ANDed
        op2 = str(
            rng.choice([o for o in ops if o not in ("bare", "$exists", "$in", "$nin", "$all")])
        )
        spec[op2] = rand_operand(rng, t)
    return {f: spec}


# ------------------------------------------------------------------ independent reference


def ref_eval(where: dict[str, Any], meta: dict[str, Any]) -> bool:
    """The documented semantics, evaluated on Python values (exact arithmetic)."""
    out = True
    for key, val in where.items():
        if key == "$and":
            out &= all(ref_eval(w, meta) for w in val)
        elif key == "$or":
            out &= any(ref_eval(w, meta) for w in val)
        elif key == "$not":
            out &= not ref_eval(val, meta)
        else:
            spec = val if isinstance(val, dict) else {"$eq": val}
            for op, arg in spec.items():
                out &= ref_leaf(key, op, arg, meta)
    return out


def _num(v: Any) -> Any:
    # Exact comparisons between ints and floats: Python's own int/float comparison is exact.
    return v


def ref_leaf(f: str, op: str, arg: Any, meta: dict[str, Any]) -> bool:
    has = f in meta
    if op == "$exists":
        return has == arg
    if not has:
        return False
    v = meta[f]
    if SCHEMA[f] == "list[str]":
        if op == "$eq":
            return arg in v
        if op == "$ne":
            return arg not in v
        if op == "$in":
            return any(a in v for a in arg)
        if op == "$nin":
            return not any(a in v for a in arg)
        return all(a in v for a in arg)  # $all
    if op == "$eq":
        return v == arg
    if op == "$ne":
        return v != arg
    if op == "$gt":
        return v > arg
    if op == "$gte":
        return v >= arg
    if op == "$lt":
        return v < arg
    if op == "$lte":
        return v <= arg
    if op == "$in":
        return any(v == a for a in arg)
    return all(v != a for a in arg)  # $nin


# ------------------------------------------------------------------ back-ends under test


# From test_compressed_index.py.

DIM = 32


class Data:
    """Seeded clustered unit vectors: 24 topic centres, documents and queries mix two topics."""

    def __init__(self, seed: int) -> None:
        self.rng = np.random.default_rng(seed)
        c = self.rng.standard_normal((24, DIM))
        self.centres = c / np.linalg.norm(c, axis=1, keepdims=True)

    def mat(self, n: int, noise: float) -> np.ndarray:
        t = self.rng.integers(0, 24, 2)
        eps = self.rng.standard_normal((n, DIM)) / np.sqrt(DIM)
        x = self.centres[t[np.arange(n) % 2]] + noise * eps
        return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)

    def docs(self, n: int) -> list[np.ndarray]:
        return [self.mat(int(self.rng.integers(6, 26)), 0.6) for _ in range(n)]


def maxsim(q: np.ndarray, d: np.ndarray) -> float:
    d = d.astype(np.float16).astype(np.float32)  # what a float16 index stores
    return float((q @ d.T).max(axis=1).sum())


def exact_top(q: np.ndarray, live: dict[str, np.ndarray], k: int) -> list[str]:
    s = sorted(live, key=lambda i: -maxsim(q, live[i]))
    return s[:k]


# From test_serve.py.

WORDS = (
    "metformin glucose insulin diabetes kidney liver heart protein gene cell tumour cancer "
    "vaccine virus immune response patients trial dose blood pressure brain neuron memory sleep "
    "glacier climate ocean carbon forest river soil bacteria antibiotic resistance mouse model "
    "therapy risk obesity diet exercise muscle bone fracture aging mortality"
).split()
LANGS = ["en", "fr", "de"]
TAGS = ["a", "b", "c", "d"]


def rand_text(rng: np.random.Generator, lo: int = 3, hi: int = 14) -> str:
    return " ".join(rng.choice(WORDS, int(rng.integers(lo, hi))).tolist())


def rand_meta(rng: np.random.Generator) -> dict[str, Any]:
    m: dict[str, Any] = {}
    if rng.random() < 0.9:
        m["n"] = int(rng.integers(2000, 2025))
    if rng.random() < 0.8:
        m["s"] = str(rng.choice(LANGS))
    if rng.random() < 0.7:
        m["tags"] = sorted(set(rng.choice(TAGS, int(rng.integers(0, 3))).tolist()))
    return m


_DOC_VECS: dict[str, np.ndarray] = {}  # text -> its float16-rounded document vectors


def ref_search(
    encoder: latix.Encoder,
    query: str,
    recs: dict[str, dict[str, Any]],
    k: int,
    where: dict[str, Any] | None = None,
) -> list[tuple[str, float]]:
    """Exact MaxSim over float16-rounded document vectors, numpy only."""
    q = encoder.encode_queries([query])[0].astype(np.float64)
    ids = [i for i, r in recs.items() if where is None or ref_eval(where, r["metadata"])]
    todo = [recs[i]["text"] for i in ids if recs[i]["text"] not in _DOC_VECS]
    for t, d in zip(todo, encoder.encode_documents(todo) if todo else [], strict=True):
        _DOC_VECS[t] = d.astype(np.float16).astype(np.float64)
    docs = [_DOC_VECS[recs[i]["text"]] for i in ids]
    sc = [float((q @ d.T).max(axis=1).sum()) for d in docs]
    order = sorted(range(len(ids)), key=lambda j: -sc[j])[:k]
    return [(ids[j], sc[j]) for j in order]


# Crafted files: a damaged field behind a valid checksum.


def _crc32c_table() -> list[int]:
    table = []
    for i in range(256):
        c = i
        for _ in range(8):
            c = (c >> 1) ^ 0x82F63B78 if c & 1 else c >> 1
        table.append(c)
    return table


_CRC32C = _crc32c_table()


def crc32c(b: bytes) -> int:
    """CRC-32C (Castagnoli), the checksum that seals latix's files (a slow reference, for
    tests that craft small files)."""
    c = 0xFFFFFFFF
    for x in b:
        c = _CRC32C[(c ^ x) & 0xFF] ^ (c >> 8)
    return c ^ 0xFFFFFFFF


def reseal(b: bytes | bytearray) -> bytes:
    """``b`` with its trailing crc32c recomputed, so that a crafted field reaches the parser's
    checks behind the checksum."""
    out = bytearray(b)
    out[-4:] = crc32c(bytes(out[:-4])).to_bytes(4, "little")
    return bytes(out)
