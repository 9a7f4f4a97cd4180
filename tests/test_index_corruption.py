"""Damaged index files must raise CorruptedIndexError naming the file, never crash."""

from __future__ import annotations

import os
import struct
from pathlib import Path

import latix
import numpy as np
import pytest
from latix import CorruptedIndexError, LatixError, UnsupportedVersionError

HEADER = 256


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
    off, length = struct.unpack_from("<QQ", b, 48 + i * 24)
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
