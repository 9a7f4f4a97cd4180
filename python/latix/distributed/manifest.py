"""The shard manifest ``OUT/sharded.json``: format, version, routing, shard names, model and
dimension, SHA-256 checksum; written temp + fsync + rename."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

from latix.collection import (
    _write_json_atomic,
)
from latix.distributed.routing import ROUTING
from latix.errors import (
    CorruptedIndexError,
    NotFoundError,
    UnsupportedVersionError,
)

if TYPE_CHECKING:
    pass


MANIFEST = "sharded.json"
_FORMAT = "latix-sharded"
_VERSION = 1


def _checksum(m: Mapping[str, Any]) -> str:
    body = {k: v for k, v in m.items() if k != "checksum"}
    return hashlib.sha256(json.dumps(body, sort_keys=True).encode("utf-8")).hexdigest()


def _write_manifest(out: Path, m: dict[str, Any]) -> None:
    m = dict(m)
    m["checksum"] = _checksum(m)
    _write_json_atomic(out / MANIFEST, m)


def _read_manifest(out: Path) -> dict[str, Any]:
    mp = out / MANIFEST
    if not mp.is_file():
        raise NotFoundError(
            f"{out} is not a sharded latix collection (no {MANIFEST}); build one with "
            "latix.distributed.build"
        )
    try:
        m = json.loads(mp.read_text(encoding="utf-8"))
    except (OSError, ValueError) as e:
        raise CorruptedIndexError(f"{mp}: unreadable ({e})") from None
    if not isinstance(m, dict) or m.get("format") != _FORMAT:
        raise CorruptedIndexError(f"{mp}: not a latix shard manifest")
    if m.get("checksum") != _checksum(m):
        raise CorruptedIndexError(f"{mp}: checksum mismatch (the manifest was damaged)")
    if m.get("version") != _VERSION:
        raise UnsupportedVersionError(
            f"{mp}: sharded format {m.get('version')!r}, this latix reads {_VERSION}"
        )
    if m.get("routing") != ROUTING:
        raise UnsupportedVersionError(f"{mp}: unknown routing {m.get('routing')!r}")
    n = m.get("n_shards")
    shards = m.get("shards")
    if not isinstance(n, int) or n < 1 or not isinstance(shards, list) or len(shards) != n:
        raise CorruptedIndexError(f"{mp}: bad shard list")
    for s in shards:
        if not isinstance(s, str) or "/" in s or s.startswith("."):
            raise CorruptedIndexError(f"{mp}: bad shard name {s!r}")
    return m
