"""Record-to-shard routing: a stable hash of the record id (see :func:`shard_of`)."""

from __future__ import annotations

import hashlib
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    pass


ROUTING = "blake2b-8-le-mod"
"""The routing rule's name, recorded in every shard manifest (a manifest naming another rule is
refused): :func:`shard_of`."""


def shard_of(id: str, n_shards: int) -> int:
    """The shard that owns record ``id``: BLAKE2b (8-byte digest) of its UTF-8 bytes, as a
    little-endian unsigned int, modulo ``n_shards`` (stable across processes, machines and
    Python versions).

    Args:
        id: the record id (non-empty str).
        n_shards: number of shards (>= 1).

    Returns:
        The shard number in ``0 .. n_shards - 1``.
    """
    h = hashlib.blake2b(id.encode("utf-8"), digest_size=8).digest()
    return int.from_bytes(h, "little") % n_shards
