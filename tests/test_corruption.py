"""Corruption detection (fast part): truncate or flip bytes of every file of an index; each case
must raise CorruptedIndexError naming the file or give exactly the undamaged results.

The long run is ``make soak`` (``python -m harness.corruption --cases 1000``).
"""

from __future__ import annotations

import os
from pathlib import Path

import latix
import numpy as np
import pytest
from harness import corruption

CASES = int(os.environ.get("LATIX_CORRUPTION_CASES", "200"))


@pytest.mark.parametrize("seed,dtype", [(21, "float16"), (22, "float32")])
def test_random_damage(seed: int, dtype: str) -> None:
    stats = corruption.run(CASES // 2, seed, dtype)
    print(stats.summary())
    assert stats.failures == 0, stats.summary()
    assert stats.trials == CASES // 2
    # Every file is hit, and with today's formats every byte is covered by a check.
    assert stats.details["files"] >= 5
    assert stats.details.get("undetected_exact", 0) == 0


def test_random_damage_compressed() -> None:
    # Compressed base: configuration, codec, ivf side files and vector-free segments are damaged
    # too; each of its ~9 files is hit at least ~5 times.
    stats = corruption.run(CASES // 4, 23, "float16", compressed=True)
    print(stats.summary())
    assert stats.failures == 0, stats.summary()
    assert stats.details["files"] >= 8
    assert stats.details.get("undetected_exact", 0) == 0


def _single_segment(tmp_path: Path) -> tuple[Path, Path, dict[str, np.ndarray]]:
    p = tmp_path / "ix"
    rng = np.random.default_rng(0)
    docs = {f"d{i}": rng.standard_normal((3000, 16)).astype(np.float32) for i in range(30)}
    with latix.Index.create(p, dim=16, dtype="float32") as ix:
        ix.add(list(docs), list(docs.values()))
        ix.commit()
    (seg,) = [f for f in p.iterdir() if f.name.startswith("seg-")]
    return p, seg, docs


def test_damaged_vectors_are_detected_on_use_not_returned(tmp_path: Path) -> None:
    # Regression: the store verified vector checksums only in verify(); search and get returned
    # damaged vectors silently. Now each 1 MiB block is checked on first touch.
    p, seg, docs = _single_segment(tmp_path)
    size = seg.stat().st_size
    b = bytearray(seg.read_bytes())
    at = 256 + 3 * (1 << 20) + 100  # inside vector block 3
    b[at] ^= 0x40
    seg.write_bytes(bytes(b))
    assert size == seg.stat().st_size
    with latix.Index.open(p) as ix:  # open stays O(1): vectors are not read
        assert len(ix) == 30
        assert np.array_equal(ix.get("d0"), docs["d0"])  # block 0: intact, returned exactly
        with pytest.raises(latix.CorruptedIndexError, match=f"{seg.name}.*block 3"):
            ix.search(np.ones((1, 16), np.float32), k=3)
        doc = (3 * (1 << 20) + 100) // (16 * 4) // 3000  # the document holding that byte
        with pytest.raises(latix.CorruptedIndexError, match=seg.name):
            ix.get(f"d{doc}")
        with pytest.raises(latix.CorruptedIndexError, match=seg.name):
            ix.search(np.ones((1, 16), np.float32), k=3, subset=[f"d{doc}"])
        # An untouched block is still searched, exactly: d0's score is its numpy MaxSim.
        q = np.ones((1, 16), np.float32)
        scores, hits = ix.search(q, k=3, subset=["d0"])
        assert list(hits[0]) == ["d0", "", ""]
        want = (q.astype(np.float64) @ docs["d0"].astype(np.float64).T).max(axis=1).sum()
        assert scores[0, 0] == pytest.approx(want, rel=1e-5)
    with latix.Index.open(p, "w") as ix:
        ix.delete(["d29"])  # a tombstone makes compaction rewrite the segment
        with pytest.raises(latix.CorruptedIndexError, match=seg.name):
            ix.compact()  # it must not copy damaged vectors into a fresh, valid segment
    with latix.Index.open(p) as ix, pytest.raises(latix.CorruptedIndexError):
        ix.verify()


def test_damaged_current_names_current(tmp_path: Path) -> None:
    # Regression: a digit flipped in CURRENT was reported as a missing manifest.
    p, _, _ = _single_segment(tmp_path)
    cur = p / "CURRENT"
    text = cur.read_text()
    cur.write_text(text.replace("1\n", "7\n"))
    with pytest.raises(latix.CorruptedIndexError, match="CURRENT"):
        latix.Index.open(p)
    cur.write_text(text.rstrip("\n") + " \n")
    with pytest.raises(latix.CorruptedIndexError, match="CURRENT"):
        latix.Index.open(p)
