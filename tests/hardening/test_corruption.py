"""Corruption detection: damaged index files must raise CorruptedIndexError naming the file (or
give exactly the undamaged results), never crash.

Random damage (fast part): truncate or flip bytes of every file of an index, through
tests/harness/corruption.py; the long run is ``make soak`` (``python -m harness.corruption
--cases 1000``). Targeted damage: each section of a segment, the manifest and CURRENT, version
fields, swapped and missing files, random byte flips.
"""

from __future__ import annotations

import os
import struct
from pathlib import Path

import latix
import numpy as np
import pytest
from harness import corruption
from latix import CorruptedIndexError, LatixError, UnsupportedVersionError, _core

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


# Targeted damage, one file and one place at a time (formerly tests/test_index_corruption.py).

# The segment layout, from the core (never a copy of it).
HEADER = _core.SEGMENT_HEADER_SIZE


def build(tmp_path: Path) -> Path:
    rng = np.random.default_rng(1)
    p = tmp_path / "ix"
    with latix.Index.create(p, dim=16, dtype="float32") as ix:
        docs = [
            rng.standard_normal((int(rng.integers(1, 30)), 16)).astype(np.float32)
            for _ in range(50)
        ]
        ix.add([f"doc{i}" for i in range(50)], docs)
        ix.commit()
    return p


def segment(p: Path) -> Path:
    (seg,) = [f for f in p.iterdir() if f.name.startswith("seg-")]
    return seg


def manifest(p: Path) -> Path:
    return p / (p / "CURRENT").read_text().strip()


def section(seg: Path, i: int) -> tuple[int, int]:
    b = seg.read_bytes()
    at = _core.SEGMENT_SECTIONS_AT + i * _core.SEGMENT_SECTION_DESC_LEN
    off, length = struct.unpack_from("<QQ", b, at)
    return off, length


def flip(path: Path, at: int) -> None:
    b = bytearray(path.read_bytes())
    b[at] ^= 0x5A
    path.write_bytes(bytes(b))


def open_and_use(p: Path) -> None:
    with latix.Index.open(p) as ix:
        ix.search(np.ones((2, 16), np.float32), k=3)
        ix.verify()


@pytest.mark.parametrize("cut", [0, 10, HEADER - 1, HEADER + 100, -5])
def test_truncated_segment(tmp_path: Path, cut: int) -> None:
    p = build(tmp_path)
    seg = segment(p)
    size = seg.stat().st_size
    os.truncate(seg, cut if cut >= 0 else size + cut)
    with pytest.raises(CorruptedIndexError, match=seg.name):
        open_and_use(p)


@pytest.mark.parametrize("at", [0, 20, 30, 60, 200])
def test_segment_header_byte(tmp_path: Path, at: int) -> None:
    p = build(tmp_path)
    seg = segment(p)
    flip(seg, at)
    with pytest.raises(CorruptedIndexError, match=seg.name):
        latix.Index.open(p)


@pytest.mark.parametrize("sec", [1, 2, 3, 4, 5])
def test_small_section_byte_detected_at_open(tmp_path: Path, sec: int) -> None:
    p = build(tmp_path)
    seg = segment(p)
    off, length = section(seg, sec)
    flip(seg, off + length // 2)
    with pytest.raises(CorruptedIndexError, match="checksum"):
        latix.Index.open(p)


def test_vector_byte_detected_by_verify(tmp_path: Path) -> None:
    p = build(tmp_path)
    seg = segment(p)
    off, length = section(seg, 0)
    flip(seg, off + length - 3)
    ix = latix.Index.open(p)  # vectors are not read at open
    # Blocks are verified on first touch: search never scores damaged vectors silently.
    with pytest.raises(CorruptedIndexError, match=f"{seg.name}.*block 0"):
        ix.search(np.ones((1, 16), np.float32), k=2)
    with pytest.raises(CorruptedIndexError, match=f"{seg.name}.*block 0"):
        ix.verify()


def test_unsupported_segment_version(tmp_path: Path) -> None:
    p = build(tmp_path)
    seg = segment(p)
    b = bytearray(seg.read_bytes())
    struct.pack_into("<I", b, 8, 99)
    seg.write_bytes(bytes(b))
    with pytest.raises(UnsupportedVersionError, match="version 99"):
        latix.Index.open(p)


@pytest.mark.parametrize("where", ["start", "middle", "end", "truncate", "empty"])
def test_manifest_damage(tmp_path: Path, where: str) -> None:
    p = build(tmp_path)
    m = manifest(p)
    size = m.stat().st_size
    if where == "truncate":
        os.truncate(m, size - 7)
    elif where == "empty":
        m.write_bytes(b"")
    else:
        flip(m, {"start": 2, "middle": size // 2, "end": size - 1}[where])
    with pytest.raises(CorruptedIndexError, match=m.name):
        latix.Index.open(p)


def test_current_damage_and_missing_files(tmp_path: Path) -> None:
    p = build(tmp_path)
    (p / "CURRENT").write_text("../../etc/passwd\n")
    with pytest.raises(CorruptedIndexError, match="CURRENT"):
        latix.Index.open(p)
    p2 = build(tmp_path / "b")
    segment(p2).unlink()
    with pytest.raises(CorruptedIndexError, match="missing"):
        latix.Index.open(p2)
    p3 = build(tmp_path / "c")
    manifest(p3).unlink()
    with pytest.raises(CorruptedIndexError, match="does not exist|missing"):
        latix.Index.open(p3)


def test_segment_swapped_for_another(tmp_path: Path) -> None:
    """A valid segment file of another index is caught by the manifest's header checksum."""
    p = build(tmp_path / "a")
    q = tmp_path / "b"
    with latix.Index.create(q, dim=16, dtype="float32") as ix:
        ix.add(["x"], [np.ones((3, 16), np.float32)])
        ix.commit()
    segment(p).write_bytes(segment(q).read_bytes())
    with pytest.raises(CorruptedIndexError, match="manifest"):
        latix.Index.open(p)


def test_random_byte_flips_never_crash(tmp_path: Path) -> None:
    rng = np.random.default_rng(5)
    p = build(tmp_path)
    seg = segment(p)
    pristine = seg.read_bytes()
    for _ in range(60):
        b = bytearray(pristine)
        for at in rng.integers(0, len(b), size=int(rng.integers(1, 4))):
            b[at] ^= int(rng.integers(1, 256))
        seg.write_bytes(bytes(b))
        try:
            open_and_use(p)
        except LatixError as e:
            assert isinstance(e, CorruptedIndexError | UnsupportedVersionError), e
        else:  # only possible if the flips cancelled out
            assert bytes(b) == pristine
