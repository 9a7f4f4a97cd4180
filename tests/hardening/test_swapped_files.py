"""Every named file of an index is bound to the manifest that references it: a side file (a
segment's inverted lists), the codec or the compression configuration replaced by another valid
latix file of the same kind and shape (from another segment, another generation or another index)
is ``CorruptedIndexError`` naming it on search and ``verify()``, never wrong results.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import latix
import numpy as np
import pytest

DIM = 16


def _comp(**kw: object) -> latix.Compression:
    base: dict[str, object] = dict(
        bytes_per_token=4, n_centroids=16, train_min_tokens=256, train_sample_tokens=4000
    )
    base.update(kw)
    return latix.Compression(**base)  # type: ignore[arg-type]


def _build(path: Path, perm_seed: int, **kw: object) -> None:
    """A trained compressed index of two segments: the same 100 documents (8 tokens each), the
    second time in a seeded random order under other ids. Both segments' inverted lists then
    have exactly the same shape (sizes, list lengths), so no count can tell them apart."""
    docs = list(np.random.default_rng(1).standard_normal((100, 8, DIM), np.float32))
    order = np.random.default_rng(perm_seed).permutation(100)
    with latix.Index.create(path, dim=DIM, compression=_comp(**kw)) as ix:
        ix.add([f"a{i}" for i in range(100)], docs)
        ix.commit()
        ix.add([f"b{i}" for i in range(100)], [docs[j] for j in order])
        ix.commit()
        assert ix.stats()["trained"] and ix.stats()["n_segments"] == 2


def _expect_corrupted(path: Path, name: str) -> None:
    q = np.random.default_rng(1).standard_normal((4, DIM)).astype(np.float32)
    with pytest.raises(latix.CorruptedIndexError, match=name):
        with latix.Index.open(path) as ix:
            ix.search(q, k=5)
    with pytest.raises(latix.CorruptedIndexError, match=name):
        with latix.Index.open(path) as ix:
            ix.verify()


def test_swapped_segment_lists(tmp_path: Path) -> None:
    p = tmp_path / "ix"
    _build(p, 1)
    a, b = sorted(p.glob("seg-*.ivf-*"))
    ba, bb = a.read_bytes(), b.read_bytes()
    assert len(ba) == len(bb) and ba != bb
    a.write_bytes(bb)
    b.write_bytes(ba)
    _expect_corrupted(p, a.name)


@pytest.mark.parametrize(
    "pattern,other",
    [
        ("seg-*.ivf-*", {}),  # same codec, same shape, documents in another order
        ("idx-codec-*", {"seed": 7}),  # a codec trained with another seed
        ("idx-compression-*", {"keep_vectors": True}),  # would make commits drop vectors
    ],
)
def test_file_from_another_index(tmp_path: Path, pattern: str, other: dict[str, object]) -> None:
    p, o = tmp_path / "ix", tmp_path / "other"
    _build(p, 1)
    _build(o, 2, **other)
    mine = sorted(p.glob(pattern))[-1]
    theirs = sorted(o.glob(pattern))[-1]
    assert mine.stat().st_size == theirs.stat().st_size
    assert mine.read_bytes() != theirs.read_bytes()
    shutil.copyfile(theirs, mine)
    _expect_corrupted(p, mine.name)
