"""Special files in an index directory: a FIFO, a device or a directory where latix expects one
of its regular files (CURRENT, a manifest, a segment, inverted lists, the codec or the compression
configuration) is reported as ``CorruptedIndexError`` naming it, never a hang or an unbounded
read. Each case runs in a subprocess with a timeout (a hang would block pytest).
"""

from __future__ import annotations

import os
import resource
import shutil
import subprocess
import sys
from pathlib import Path

import latix
import numpy as np
import pytest

PROBE = """
import sys, latix, numpy as np
try:
    ix = latix.Index.open(sys.argv[1])
    ix.search(np.ones((2, 16), np.float32), k=3)
    ix.verify()
    print("OK")
except latix.LatixError as e:
    print("ERR", type(e).__name__, e)
"""


def _limit_memory() -> None:
    # An unbounded read (of /dev/zero, say) must fail fast in the probe, not exhaust the machine.
    resource.setrlimit(resource.RLIMIT_AS, (4 << 30, 4 << 30))


def _compressed(path: Path) -> None:
    rng = np.random.default_rng(5)
    comp = latix.Compression(
        bytes_per_token=4, n_centroids=16, train_min_tokens=256, train_sample_tokens=4000
    )
    with latix.Index.create(path, dim=16, compression=comp) as ix:
        ix.add([f"d{i}" for i in range(100)], list(rng.standard_normal((100, 8, 16), np.float32)))
        ix.commit()
        assert ix.stats()["trained"]


@pytest.fixture(scope="module")
def template(tmp_path_factory: pytest.TempPathFactory) -> Path:
    p = tmp_path_factory.mktemp("special") / "ix"
    _compressed(p)
    return p


def _target(ix: Path, which: str) -> Path:
    pats = {
        "CURRENT": "CURRENT",
        "manifest": "MANIFEST-*",
        "segment": "seg-*.lxs",
        "ivf": "seg-*.ivf-*",
        "codec": "idx-codec-*",
        "config": "idx-compression-*",
        "LOCK": "LOCK",
    }
    found = sorted(ix.glob(pats[which]))
    assert found, which
    return found[0]


@pytest.mark.parametrize(
    "which", ["CURRENT", "manifest", "segment", "ivf", "codec", "config", "LOCK"]
)
@pytest.mark.parametrize("kind", ["fifo", "dev_zero", "directory"])
def test_special_file_is_reported_not_followed(
    template: Path, tmp_path: Path, which: str, kind: str
) -> None:
    ix = tmp_path / "ix"
    shutil.copytree(template, ix)
    t = _target(ix, which)
    t.unlink()
    if kind == "fifo":
        os.mkfifo(t)
    elif kind == "dev_zero":
        os.symlink("/dev/zero", t)
    else:
        t.mkdir()
    p = subprocess.run(
        [sys.executable, "-c", PROBE, str(ix)],
        capture_output=True,
        text=True,
        timeout=30,
        preexec_fn=_limit_memory,
    )
    assert p.returncode == 0, p.stderr[-2000:]
    if which == "LOCK":
        # Readers never open LOCK; a writer must refuse to lock a non-regular file.
        assert p.stdout.startswith("OK"), p.stdout
        with pytest.raises(latix.CorruptedIndexError, match="LOCK"):
            latix.Index.open(ix, "w")
        return
    assert p.stdout.startswith("ERR CorruptedIndexError"), p.stdout + p.stderr[-2000:]
    assert t.name in p.stdout and "regular file" in p.stdout, p.stdout
