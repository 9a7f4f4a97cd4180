"""Writes seed inputs for the cargo-fuzz targets (fuzz/corpus/<target>/) from small real indexes.

Usage: python scripts/hardening/fuzz_seeds.py fuzz/corpus
"""

from __future__ import annotations

import struct
import sys
import tempfile
from pathlib import Path

import latix
import numpy as np


def build(path: Path, dtype: str, dim: int) -> tuple[bytes, bytes, bytes]:
    """A one-segment index with a tombstone: (manifest, segment, CURRENT) bytes."""
    rng = np.random.default_rng(0)
    with latix.Index.create(path, dim=dim, dtype=dtype) as ix:
        ids = ["a", "bb", "c\u00e9", "d", "e"]
        ix.add(
            ids, [rng.standard_normal((int(n), dim)).astype(np.float32) for n in (1, 3, 2, 4, 1)]
        )
        ix.commit()
        ix.delete(["d"])
        ix.commit()
    current = (path / "CURRENT").read_bytes()
    manifest = (path / current.decode().strip()).read_bytes()
    (seg,) = sorted(path.glob("seg-*"))
    return manifest, seg.read_bytes(), current


def build_ivf(path: Path) -> tuple[bytes, bytes, bytes]:
    """The inverted-list, codec and compression-config files of a small trained compressed
    index."""
    rng = np.random.default_rng(1)
    comp = latix.Compression(
        bytes_per_token=2,
        n_centroids=8,
        train_min_tokens=256,
        train_sample_tokens=256,
        pool_factor=1,
    )
    with latix.Index.create(path, dim=8, compression=comp) as ix:
        docs = [rng.standard_normal((int(n), 8)).astype(np.float32) for n in rng.integers(1, 9, 80)]
        ix.add([f"d{i}" for i in range(len(docs))], docs)
        ix.commit()
    (ivf,) = sorted(path.glob("*.ivf-*"))
    (codec,) = sorted(path.glob("idx-codec-*"))
    (config,) = sorted(path.glob("idx-compression-*"))
    return ivf.read_bytes(), codec.read_bytes(), config.read_bytes()


def build_fid(path: Path) -> bytes:
    """The refinement file (fidelity tier) of a small trained compressed index."""
    rng = np.random.default_rng(2)
    comp = latix.Compression(
        bytes_per_token=2,
        n_centroids=8,
        train_min_tokens=256,
        train_sample_tokens=256,
        pool_factor=2,
        fidelity="high",
    )
    with latix.Index.create(path, dim=8, compression=comp) as ix:
        docs = [
            rng.standard_normal((int(n), 8)).astype(np.float32) for n in rng.integers(1, 9, 200)
        ]
        ix.add([f"d{i}" for i in range(len(docs))], docs)
        ix.commit()
    (fid,) = sorted(path.glob("*.fid-*"))
    return fid.read_bytes()


def main(out: str) -> None:
    root = Path(out)
    targets = ("manifest_decode", "segment_open", "current_parse", "index_open", "ivf_parse")
    for t in targets + ("codec_parse", "compression_decode", "fid_parse"):
        (root / t).mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp:
        for dtype, dim in (("float32", 4), ("float16", 8)):
            m, s, c = build(Path(tmp) / f"{dtype}", dtype, dim)
            for mode in (0, 1, 3):
                tag = f"{dtype}-{mode}"
                (root / "manifest_decode" / f"seed-{tag}").write_bytes(bytes([mode]) + m)
                (root / "segment_open" / f"seed-{tag}").write_bytes(bytes([mode]) + s)
                (root / "index_open" / f"seed-{tag}").write_bytes(
                    bytes([mode]) + struct.pack("<H", len(m)) + m + s
                )
            (root / "current_parse" / f"seed-{dtype}").write_bytes(c)
        ivf, codec, config = build_ivf(Path(tmp) / "compressed")
        for mode in (0, 1):
            (root / "ivf_parse" / f"seed-{mode}").write_bytes(bytes([mode]) + ivf)
            (root / "codec_parse" / f"seed-{mode}").write_bytes(bytes([mode]) + codec)
            (root / "compression_decode" / f"seed-{mode}").write_bytes(bytes([mode]) + config)
        fid = build_fid(Path(tmp) / "tiered")
        for mode in (0, 1):
            (root / "fid_parse" / f"seed-{mode}").write_bytes(bytes([mode]) + fid)


if __name__ == "__main__":
    main(sys.argv[1] if len(sys.argv) > 1 else "fuzz/corpus")
