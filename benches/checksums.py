"""Content checksums of benchmark data files (BLAKE2b-128 of every byte, read in 16 MiB chunks):
what ties a cached result (the exact reference of benches/bench_compressed.py) or a generated
corpus (benches/make_distractors.py's checksums.json) to the exact bytes it was made from."""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Iterable


def file_digest(path: str) -> str:
    """Hex BLAKE2b-128 of the file's bytes."""
    h = hashlib.blake2b(digest_size=16)
    with open(path, "rb") as f:
        while chunk := f.read(16 << 20):
            h.update(chunk)
    return h.hexdigest()


def digests(directory: str, names: Iterable[str]) -> dict[str, str]:
    """{name: file_digest} of each named file of `directory`."""
    return {n: file_digest(os.path.join(directory, n)) for n in names}


def combined(parts: Iterable[object]) -> str:
    """One hex BLAKE2b-128 over a JSON rendering of `parts` (digests, parameters, shapes)."""
    return hashlib.blake2b(
        json.dumps(list(parts), sort_keys=True).encode(), digest_size=16
    ).hexdigest()
