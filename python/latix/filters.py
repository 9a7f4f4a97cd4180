"""Metadata of collection records and the filter language over it.

Metadata is a flat dict per record; each field has one type for the whole collection, fixed by the
first record that uses it (or declared up front): ``"str"``, ``"int"`` (64-bit), ``"float"``
(finite), ``"bool"`` or ``"list[str]"``. A filter is a dict in the style of MongoDB / Chroma::

    {"year": {"$gte": 2020}, "lang": "en", "tags": {"$in": ["a", "b"]}}
    {"$or": [{"lang": "en"}, {"$not": {"tags": "draft"}}]}

Several keys in one dict are ANDed. Operators: ``$eq`` (a bare value means ``$eq``), ``$ne``,
``$gt``, ``$gte``, ``$lt``, ``$lte`` (numbers and strings; strings compare by code point),
``$in``, ``$nin``, ``$exists``; on ``list[str]`` fields ``$eq``/bare value means "contains",
``$ne`` "does not contain", ``$in`` "contains any", ``$nin`` "contains none", ``$all`` "contains
all"; logical ``$and``, ``$or`` (non-empty lists of filters) and ``$not`` (a filter).

Missing fields: every comparison is false on a record that lacks the field (``$ne`` and ``$nin``
included: they mean "has the field and it differs"), except ``{"$exists": False}``; ``$not``
negates whatever its filter says, so ``{"$not": {"lang": "en"}}`` also matches records without
``lang``. An int field compared with a float compares exactly (``{"n": {"$gt": 2.5}}`` is
``n >= 3``); a float field compared with an int of magnitude above 2**53 is rejected (it cannot
be compared exactly in both back-ends).

A filter is parsed and type-checked once into a small AST (:func:`parse`) with two back-ends that
give the same answer (a property test checks it on random data and filters):

* :func:`to_sql`: a parameterised SQL expression over the JSON metadata column (SQLite JSON1);
  values and field paths are bound parameters, never spliced into the SQL text, so a filter
  value containing SQL is data. Used for deletes, counts and keyword search.
* :func:`evaluate`: vectorised numpy over a columnar mirror of the metadata of one index segment
  (:class:`Columns`), giving the segment's allowed-document bitmap that candidate generation
  honours. Per-query SQL cannot do that at scale: fetching the 500k rowids of a broad filter
  through Python's sqlite3 costs about 0.5 s, evaluating it over numpy columns about 1 ms.
"""

from __future__ import annotations

import bisect
import json
import math
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np
import numpy.typing as npt

from latix.errors import InvalidArgumentError

__all__ = [
    "FieldType",
    "FIELD_TYPES",
    "FilterError",
    "MetadataError",
    "Node",
    "Leaf",
    "And",
    "Or",
    "Not",
    "Const",
    "Columns",
    "parse",
    "to_sql",
    "evaluate",
    "normalize_metadata",
    "infer_type",
    "field_names",
]

FieldType = Literal["str", "int", "float", "bool", "list[str]"]
FIELD_TYPES: tuple[FieldType, ...] = ("str", "int", "float", "bool", "list[str]")

#: Field names: identifiers, so that a JSON path ``$.name`` needs no quoting.
NAME_RE = re.compile(r"[A-Za-z_][A-Za-z0-9_]{0,63}")
I64_MIN, I64_MAX = -(2**63), 2**63 - 1
#: Largest integer compared exactly with a float field (every int up to it is a double).
EXACT_FLOAT_INT = 2**53
MAX_DEPTH = 32
MAX_LEAVES = 256
MAX_VALUES = 10_000
MAX_STR_BYTES = 65_535
MAX_LIST = 1_000


class FilterError(InvalidArgumentError):
    """A filter is malformed, names an unknown field, or compares a field with a value of the
    wrong type. The message says which part and what was expected."""


class MetadataError(InvalidArgumentError):
    """A record's metadata has an invalid field name or value, or a value whose type differs
    from the type the collection already has for that field."""


# ----------------------------------------------------------------------------------------------
# metadata values


def _check_str(s: str, where: str, err: type[InvalidArgumentError]) -> str:
    try:
        b = s.encode("utf-8")
    except UnicodeEncodeError:
        raise err(f"{where} is not valid Unicode (lone surrogate)") from None
    if "\x00" in s:
        # SQLite's JSON functions end text at NUL: it could not be compared like the rest.
        raise err(f"{where} contains a NUL character")
    if len(b) > MAX_STR_BYTES:
        raise err(f"{where} is {len(b)} bytes long; at most {MAX_STR_BYTES} allowed")
    return s


def infer_type(value: object) -> FieldType | None:
    """The field type a metadata value gives a new field (None for an unsupported value)."""
    if isinstance(value, bool | np.bool_):
        return "bool"
    if isinstance(value, int | np.integer):
        return "int"
    if isinstance(value, float | np.floating):
        return "float"
    if isinstance(value, str):
        return "str"
    if isinstance(value, list | tuple):
        return "list[str]"
    return None


def _coerce(value: object, ftype: FieldType, where: str) -> object:
    """``value`` as stored for a field of type ``ftype``, else MetadataError."""
    got = infer_type(value)
    if ftype == "bool":
        if got == "bool":
            return bool(value)
    elif ftype == "int":
        if got == "int":
            v = int(value)  # type: ignore[call-overload]
            if not I64_MIN <= v <= I64_MAX:
                raise MetadataError(f"{where} = {v} does not fit in a 64-bit integer")
            return v
    elif ftype == "float":
        if got in ("float", "int"):
            f = float(value)  # type: ignore[arg-type]
            if got == "int" and abs(int(value)) > EXACT_FLOAT_INT:  # type: ignore[call-overload]
                raise MetadataError(f"{where} = {value} is too large to store exactly as a float")
            if not math.isfinite(f):
                raise MetadataError(f"{where} is {f}; float values must be finite")
            return f
    elif ftype == "str":
        if got == "str":
            return _check_str(str(value), where, MetadataError)
    else:  # list[str]
        if got == "list[str]":
            items = list(value)  # type: ignore[call-overload]
            if len(items) > MAX_LIST:
                raise MetadataError(f"{where} has {len(items)} items; at most {MAX_LIST} allowed")
            for i, it in enumerate(items):
                if not isinstance(it, str):
                    raise MetadataError(
                        f"{where}[{i}] is {type(it).__name__}; lists must hold str only"
                    )
                _check_str(it, f"{where}[{i}]", MetadataError)
            return items
    raise MetadataError(
        f"{where} is {type(value).__name__} {value!r:.60}, but the field has type {ftype}"
    )


def normalize_metadata(
    meta: Mapping[str, object] | None, schema: Mapping[str, FieldType], where: str = "metadata"
) -> tuple[dict[str, object], dict[str, FieldType]]:
    """Checks a record's metadata against the collection's field types.

    Args:
        meta: the metadata dict (None: none). A None value means "field absent".
        schema: the collection's field types so far.
        where: how to name the record in errors.

    Returns:
        ``(stored, new_fields)``: the values as stored (ints within int64, finite floats, lists
        of str) and the types of fields this record introduces.

    Raises:
        MetadataError: a bad field name, an unsupported or out-of-range value, or a type that
            differs from the field's.
    """
    if meta is None:
        return {}, {}
    if not isinstance(meta, Mapping):
        raise MetadataError(f"{where} must be a dict, got {type(meta).__name__}")
    out: dict[str, object] = {}
    new: dict[str, FieldType] = {}
    for k, v in meta.items():
        if not isinstance(k, str) or not NAME_RE.fullmatch(k):
            raise MetadataError(
                f"{where}: field name {k!r:.70} must match [A-Za-z_][A-Za-z0-9_]* (at most 64)"
            )
        if v is None:
            continue
        ftype = schema.get(k) or new.get(k)
        if ftype is None:
            ftype = infer_type(v)
            if ftype is None:
                raise MetadataError(
                    f"{where}[{k!r}] is {type(v).__name__}; metadata values must be str, int, "
                    "float, bool or a list of str"
                )
            new[k] = ftype
        out[k] = _coerce(v, ftype, f"{where}[{k!r}]")
    return out, new


# ----------------------------------------------------------------------------------------------
# the AST

Op = Literal["eq", "ne", "gt", "gte", "lt", "lte", "in", "nin", "exists", "missing", "all"]


@dataclass(frozen=True)
class Leaf:
    """One test of one field.

    Attributes:
        field: the field name.
        ftype: its type.
        op: ``eq ne gt gte lt lte in nin exists missing`` (scalars; ``in``/``nin`` hold several
            values) or, on list fields, ``in`` (contains any), ``nin`` (present, contains none),
            ``all`` (contains all), ``exists``, ``missing``.
        values: the operands, already of the field's stored type (ints normalised so that an int
            field is only ever compared with ints).
    """

    field: str
    ftype: FieldType
    op: Op
    values: tuple[Any, ...] = ()


@dataclass(frozen=True)
class And:
    """All of ``items``."""

    items: tuple[Node, ...]


@dataclass(frozen=True)
class Or:
    """Any of ``items``."""

    items: tuple[Node, ...]


@dataclass(frozen=True)
class Not:
    """The negation of ``item``."""

    item: Node


@dataclass(frozen=True)
class Const:
    """Always ``value`` (what a test that no stored value can pass simplifies to)."""

    value: bool


Node = Leaf | And | Or | Not | Const

_SCALAR_OPS = {"$eq", "$ne", "$gt", "$gte", "$lt", "$lte", "$in", "$nin", "$exists"}
_LIST_OPS = {"$eq", "$ne", "$in", "$nin", "$all", "$exists"}
_ORDER_TYPES = ("str", "int", "float")


@dataclass
class _Budget:
    leaves: int = 0
    values: int = 0

    def leaf(self, n_values: int) -> None:
        self.leaves += 1
        self.values += n_values
        if self.leaves > MAX_LEAVES:
            raise FilterError(f"the filter has more than {MAX_LEAVES} conditions")
        if self.values > MAX_VALUES:
            raise FilterError(f"the filter has more than {MAX_VALUES} values in all")


def parse(where: object, schema: Mapping[str, FieldType]) -> Node:
    """Parses and type-checks a filter.

    Args:
        where: the filter dict (see the module documentation).
        schema: field name -> type, the collection's fields.

    Returns:
        The filter's AST.

    Raises:
        FilterError: malformed filter, unknown operator or field, value of the wrong type.
    """
    return _parse(where, schema, 0, _Budget(), "where")


def _parse(where: object, schema: Mapping[str, FieldType], depth: int, b: _Budget, at: str) -> Node:
    if depth > MAX_DEPTH:
        raise FilterError(f"{at}: the filter nests deeper than {MAX_DEPTH} levels")
    if not isinstance(where, Mapping):
        raise FilterError(f"{at} must be a dict, got {type(where).__name__}")
    if not where:
        raise FilterError(f"{at} is an empty dict; a filter needs at least one condition")
    items: list[Node] = []
    for key, val in where.items():
        if not isinstance(key, str):
            raise FilterError(f"{at}: keys must be str, got {type(key).__name__}")
        here = f"{at}[{key!r}]"
        if key in ("$and", "$or"):
            if not isinstance(val, list | tuple) or not val:
                raise FilterError(f"{here} must be a non-empty list of filters")
            subs = tuple(_parse(v, schema, depth + 1, b, f"{here}[{i}]") for i, v in enumerate(val))
            items.append(And(subs) if key == "$and" else Or(subs))
        elif key == "$not":
            items.append(Not(_parse(val, schema, depth + 1, b, here)))
        elif key.startswith("$"):
            raise FilterError(
                f"{at}: unknown operator {key!r} at the top of a filter; use $and, $or, $not or "
                "a field name"
            )
        else:
            items.append(_field(key, val, schema, b, here))
    return items[0] if len(items) == 1 else And(tuple(items))


def _field(name: str, spec: object, schema: Mapping[str, FieldType], b: _Budget, at: str) -> Node:
    ftype = schema.get(name)
    if ftype is None:
        known = ", ".join(sorted(schema)) or "none yet"
        raise FilterError(f"{at}: unknown field {name!r} (fields: {known})")
    if not isinstance(spec, Mapping):
        if isinstance(spec, list | tuple):
            raise FilterError(
                f"{at}: a list is not a value to compare with; use {{'$in': [...]}}"
                + (" or {'$all': [...]}" if ftype == "list[str]" else "")
            )
        spec = {"$eq": spec}
    if not spec:
        raise FilterError(f"{at} is an empty dict; give an operator such as $eq")
    ops = _LIST_OPS if ftype == "list[str]" else _SCALAR_OPS
    items: list[Node] = []
    for op, val in spec.items():
        if op not in ops:
            raise FilterError(
                f"{at}: operator {op!r} does not apply to a {ftype} field (use one of "
                f"{', '.join(sorted(ops))})"
            )
        here = f"{at}[{op!r}]"
        if op == "$exists":
            if not isinstance(val, bool | np.bool_):
                raise FilterError(f"{here} must be True or False, got {type(val).__name__}")
            b.leaf(0)
            items.append(Leaf(name, ftype, "exists" if val else "missing"))
            continue
        if op in ("$in", "$nin", "$all"):
            if not isinstance(val, list | tuple):
                raise FilterError(f"{here} must be a list of values, got {type(val).__name__}")
            if op == "$all" and not val:
                raise FilterError(f"{here} needs at least one value")
            b.leaf(len(val))
            vals = [_value(v, ftype, f"{here}[{i}]") for i, v in enumerate(val)]
            items.append(_multi(name, ftype, op[1:], vals))
            continue
        b.leaf(1)
        v = _value(val, ftype, here)
        if op in ("$gt", "$gte", "$lt", "$lte") and ftype not in _ORDER_TYPES:
            raise FilterError(f"{here}: {ftype} fields cannot be ordered; use $eq or $in")
        items.append(_single(name, ftype, op[1:], v))
    return items[0] if len(items) == 1 else And(tuple(items))


def _value(v: object, ftype: FieldType, at: str) -> object:
    """A filter operand checked against the field type (ints stay Python ints)."""
    got = infer_type(v)
    if ftype in ("str", "list[str]"):
        if got == "str":
            return _check_str(str(v), at, FilterError)
        want = "str"
    elif ftype == "bool":
        if got == "bool":
            return bool(v)
        want = "bool"
    else:
        if got == "int":
            return int(v)  # type: ignore[call-overload]
        if got == "float":
            f = float(v)  # type: ignore[arg-type]
            if not math.isfinite(f):
                raise FilterError(f"{at} is {f}; filter values must be finite")
            return f
        want = "int or float"
    raise FilterError(
        f"{at} is {type(v).__name__} {v!r:.60}, but the field has type {ftype} (expected {want})"
    )


def _exists(name: str, ftype: FieldType) -> Leaf:
    return Leaf(name, ftype, "exists")


def _single(name: str, ftype: FieldType, op: str, v: object) -> Node:
    """Leaf of a one-value operator, with ints normalised for int and float fields."""
    if ftype == "list[str]":
        if op == "eq":
            return Leaf(name, ftype, "in", (v,))
        return Leaf(name, ftype, "nin", (v,))  # ne: present and does not contain
    if ftype == "float" and isinstance(v, int):
        if abs(v) > EXACT_FLOAT_INT:
            raise FilterError(
                f"{name}: the integer {v} cannot be compared exactly with a float field "
                f"(magnitude above 2**53); pass a float"
            )
        v = float(v)
    if ftype != "int" or op in ("eq", "ne") and isinstance(v, int):
        if ftype == "int" and not I64_MIN <= v <= I64_MAX:  # type: ignore[operator]
            return Const(False) if op == "eq" else _exists(name, ftype)
        return Leaf(name, ftype, op, (v,))  # type: ignore[arg-type]
    # int field: compare with an integer threshold, exactly (also for float operands).
    if op in ("eq", "ne"):  # a float operand
        assert isinstance(v, float)
        if not v.is_integer():
            return Const(False) if op == "eq" else _exists(name, ftype)
        return _single(name, ftype, op, int(v))
    x = v
    if op == "gt":  # n > x  <=>  n >= floor(x) + 1
        t, op2 = math.floor(x) + 1, "gte"  # type: ignore[call-overload]
    elif op == "gte":
        t, op2 = math.ceil(x), "gte"  # type: ignore[call-overload]
    elif op == "lt":  # n < x  <=>  n < ceil(x)
        t, op2 = math.ceil(x), "lt"  # type: ignore[call-overload]
    else:  # lte: n <= x  <=>  n < floor(x) + 1
        t, op2 = math.floor(x) + 1, "lt"  # type: ignore[call-overload]
    if op2 == "gte":
        if t > I64_MAX:
            return Const(False)
        if t <= I64_MIN:
            return _exists(name, ftype)
    else:
        if t > I64_MAX:
            return _exists(name, ftype)
        if t <= I64_MIN:
            return Const(False)
    return Leaf(name, ftype, op2, (int(t),))  # type: ignore[arg-type]


def _multi(name: str, ftype: FieldType, op: str, vals: list[object]) -> Node:
    """Leaf of ``in``/``nin``/``all`` with values deduplicated and normalised."""
    if ftype == "int":
        ints: list[int] = []
        for v in vals:
            if isinstance(v, float):
                if not v.is_integer():
                    continue  # matches no int
                v = int(v)
            assert isinstance(v, int)
            if I64_MIN <= v <= I64_MAX:
                ints.append(v)
        vals = list(ints)
    elif ftype == "float":
        fl: list[object] = []
        for v in vals:
            if isinstance(v, int) and not isinstance(v, bool):
                if abs(v) > EXACT_FLOAT_INT:
                    raise FilterError(
                        f"{name}: the integer {v} cannot be compared exactly with a float field"
                    )
                v = float(v)
            fl.append(v)
        vals = fl
    uniq = tuple(sorted(set(vals), key=lambda x: (str(type(x)), x)))
    if op == "in" and not uniq:
        return Const(False)
    if op == "nin" and not uniq:
        return _exists(name, ftype)
    return Leaf(name, ftype, op, uniq)  # type: ignore[arg-type]


def field_names(node: Node) -> set[str]:
    """Fields a filter reads."""
    if isinstance(node, Leaf):
        return {node.field}
    if isinstance(node, And | Or):
        out: set[str] = set()
        for it in node.items:
            out |= field_names(it)
        return out
    if isinstance(node, Not):
        return field_names(node.item)
    return set()


def cache_key(where: object) -> str | None:
    """A canonical string of a filter dict (for caches), or None if it is not JSON data."""
    try:
        return json.dumps(where, sort_keys=True, allow_nan=False)
    except (TypeError, ValueError):
        return None


# ----------------------------------------------------------------------------------------------
# SQL back-end

_SQL_CMP = {"eq": "=", "ne": "!=", "gt": ">", "gte": ">=", "lt": "<", "lte": "<="}


def to_sql(node: Node, column: str = "meta") -> tuple[str, list[object]]:
    """The filter as a SQLite boolean expression over a JSON column, with its parameters.

    Every sub-expression is two-valued (a missing field gives 0, never NULL), so ``NOT`` means
    the same as in :func:`evaluate`. Field paths and values are bound parameters.

    Args:
        node: a parsed filter.
        column: the SQL name of the JSON metadata column (a fixed identifier chosen by latix,
            such as ``"meta"`` or ``"r.meta"``, never user input).

    Returns:
        ``(sql, params)`` for ``WHERE <sql>`` with ``?`` placeholders.
    """
    params: list[object] = []
    sql = _sql(node, column, params)
    return sql, params


def _sql(node: Node, col: str, p: list[object]) -> str:
    if isinstance(node, Const):
        return "1" if node.value else "0"
    if isinstance(node, And | Or):
        joiner = " AND " if isinstance(node, And) else " OR "
        return "(" + joiner.join(_sql(it, col, p) for it in node.items) + ")"
    if isinstance(node, Not):
        return f"(NOT {_sql(node.item, col, p)})"
    path = "$." + node.field
    if node.op == "exists":
        p.append(path)
        return f"(json_type({col}, ?) IS NOT NULL)"
    if node.op == "missing":
        p.append(path)
        return f"(json_type({col}, ?) IS NULL)"
    marks = ", ".join("?" * len(node.values))
    if node.ftype == "list[str]":
        if node.op == "in":
            p.append(path)
            p.extend(node.values)
            return f"(EXISTS (SELECT 1 FROM json_each({col}, ?) WHERE value IN ({marks})))"
        if node.op == "nin":
            p.append(path)
            p.append(path)
            p.extend(node.values)
            return (
                f"(json_type({col}, ?) IS NOT NULL AND NOT EXISTS (SELECT 1 FROM "
                f"json_each({col}, ?) WHERE value IN ({marks})))"
            )
        parts = []
        for v in node.values:  # all
            p.append(path)
            p.append(v)
            parts.append(f"EXISTS (SELECT 1 FROM json_each({col}, ?) WHERE value = ?)")
        return "(" + " AND ".join(parts) + ")"
    if node.op == "in":
        p.append(path)
        p.extend(node.values)
        return f"IFNULL(json_extract({col}, ?) IN ({marks}), 0)"
    if node.op == "nin":
        p.append(path)
        p.extend(node.values)
        return f"IFNULL(json_extract({col}, ?) NOT IN ({marks}), 0)"
    p.append(path)
    p.append(node.values[0])
    return f"IFNULL(json_extract({col}, ?) {_SQL_CMP[node.op]} ?, 0)"


# ----------------------------------------------------------------------------------------------
# numpy back-end


@dataclass
class Column:
    """One field's values for the documents of one segment (the columnar mirror).

    Attributes:
        ftype: the field type.
        present: (n,) bool, the document has the field.
        values: (n,) int64 (int), float64 (float), int8 (bool) or int32 dictionary codes (str;
            -1 where missing).
        dictionary: sorted distinct strings of the segment (str and list fields).
        elem_codes: list fields: (n_elements,) int32 codes of every list element.
        elem_doc: list fields: (n_elements,) int32 document of every element.
    """

    ftype: FieldType
    present: npt.NDArray[np.bool_]
    values: npt.NDArray[Any] | None = None
    dictionary: list[str] = field(default_factory=list)
    elem_codes: npt.NDArray[np.int32] | None = None
    elem_doc: npt.NDArray[np.int32] | None = None

    @classmethod
    def build(cls, ftype: FieldType, raw: Sequence[object]) -> Column:
        """A column from one raw value per document (None: missing; lists for list fields;
        bools may come as 0/1 from SQLite)."""
        n = len(raw)
        present = np.fromiter((v is not None for v in raw), dtype=bool, count=n)
        if ftype == "int":
            vals = np.fromiter((0 if v is None else v for v in raw), dtype=np.int64, count=n)
            return cls(ftype, present, vals)
        if ftype == "float":
            valf = np.fromiter((0.0 if v is None else v for v in raw), np.float64, count=n)
            return cls(ftype, present, valf)
        if ftype == "bool":
            valb = np.fromiter((-1 if v is None else int(bool(v)) for v in raw), np.int8, n)
            return cls(ftype, present, valb)
        if ftype == "str":
            dictionary = sorted({v for v in raw if v is not None})  # type: ignore[type-var]
            pos = {s: i for i, s in enumerate(dictionary)}
            codes = np.fromiter((-1 if v is None else pos[v] for v in raw), np.int32, count=n)
            return cls(ftype, present, codes, dictionary)  # type: ignore[arg-type]
        lists = [v if v is not None else () for v in raw]
        dictionary = sorted({s for lst in lists for s in lst})  # type: ignore[attr-defined]
        pos = {s: i for i, s in enumerate(dictionary)}
        counts = np.fromiter((len(lst) for lst in lists), np.int64, count=n)  # type: ignore[arg-type]
        total = int(counts.sum())
        elem_codes = np.fromiter(
            (pos[s] for lst in lists for s in lst),  # type: ignore[attr-defined]
            np.int32,
            count=total,
        )
        elem_doc = np.repeat(np.arange(n, dtype=np.int32), counts)
        return cls(ftype, present, None, [str(x) for x in dictionary], elem_codes, elem_doc)


Columns = Mapping[str, Column]


def evaluate(node: Node, cols: Columns, n: int) -> npt.NDArray[np.bool_]:
    """The filter over the documents of one segment.

    Args:
        node: a parsed filter.
        cols: field name -> :class:`Column` for every field the filter reads (others may be
            absent); a field without a column is missing in every document.
        n: number of documents.

    Returns:
        (n,) bool: the documents the filter allows.
    """
    if isinstance(node, Const):
        return np.full(n, node.value, dtype=bool)
    if isinstance(node, And):
        out = evaluate(node.items[0], cols, n)
        for it in node.items[1:]:
            out &= evaluate(it, cols, n)
        return out
    if isinstance(node, Or):
        out = evaluate(node.items[0], cols, n)
        for it in node.items[1:]:
            out |= evaluate(it, cols, n)
        return out
    if isinstance(node, Not):
        return ~evaluate(node.item, cols, n)
    col = cols.get(node.field)
    if col is None:
        return np.full(n, node.op == "missing", dtype=bool)
    op = node.op
    if op == "exists":
        return np.array(col.present, dtype=bool)
    if op == "missing":
        return ~col.present
    if node.ftype == "list[str]":
        return _eval_list(node, col, n)
    if node.ftype == "str":
        return _eval_str(node, col)
    assert col.values is not None
    vals = col.values
    if node.ftype == "bool":
        want = np.array([int(v) for v in node.values], dtype=np.int8)
        if op in ("eq", "in"):
            return np.isin(vals, want)
        return col.present & ~np.isin(vals, want)  # ne, nin
    arr = np.array(node.values, dtype=vals.dtype)
    if op == "in":
        return col.present & np.isin(vals, arr)
    if op == "nin":
        return col.present & ~np.isin(vals, arr)
    x = arr[0]
    if op == "eq":
        r = vals == x
    elif op == "ne":
        r = vals != x
    elif op == "gt":
        r = vals > x
    elif op == "gte":
        r = vals >= x
    elif op == "lt":
        r = vals < x
    else:
        r = vals <= x
    return np.asarray(col.present & r, dtype=bool)


def _eval_str(node: Leaf, col: Column) -> npt.NDArray[np.bool_]:
    d = col.dictionary
    codes = col.values
    assert codes is not None
    op = node.op

    def code_of(s: object) -> int:
        i = bisect.bisect_left(d, str(s))
        return i if i < len(d) and d[i] == s else -2  # -2 matches no document

    if op in ("in", "nin", "eq", "ne"):
        lut = np.zeros(len(d) + 1, dtype=bool)  # lut[code + 1]; code -1 (missing) -> lut[0]
        for s in node.values:
            c = code_of(s)
            if c >= 0:
                lut[c + 1] = True
        hit: npt.NDArray[np.bool_] = lut[codes + 1]
        return hit if op in ("in", "eq") else col.present & ~hit
    s = node.values[0]
    if op == "gt":
        return codes >= bisect.bisect_right(d, s)
    if op == "gte":
        return codes >= bisect.bisect_left(d, s)
    if op == "lt":
        return col.present & (codes < bisect.bisect_left(d, s))
    return col.present & (codes < bisect.bisect_right(d, s))  # lte


def _eval_list(node: Leaf, col: Column, n: int) -> npt.NDArray[np.bool_]:
    d = col.dictionary
    elem_codes, elem_doc = col.elem_codes, col.elem_doc
    assert elem_codes is not None and elem_doc is not None

    def contains(values: Sequence[object]) -> npt.NDArray[np.bool_]:
        lut = np.zeros(len(d), dtype=bool)
        for s in values:
            i = bisect.bisect_left(d, str(s))
            if i < len(d) and d[i] == s:
                lut[i] = True
        out = np.zeros(n, dtype=bool)
        if lut.any():
            out[elem_doc[lut[elem_codes]]] = True
        return out

    if node.op == "in":
        return contains(node.values)
    if node.op == "nin":
        return col.present & ~contains(node.values)
    out: npt.NDArray[np.bool_] = col.present.copy()  # all
    for v in node.values:
        out &= contains((v,))
    return out
