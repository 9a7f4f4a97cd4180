"""Smoke test of an installed latix wheel (run by scripts/wheel/test.sh in a fresh venv).

Checks that latix is imported from the venv's site-packages (not a source tree), that the base
install is search only (no onnxruntime, tokenizers, torch) and says so politely, and that a
search over random token vectors of many shapes returns exactly what a numpy MaxSim over all
documents returns (plain and float32 indexes, several k).
"""

from __future__ import annotations

import importlib.util
import sys
import sysconfig
import tempfile
from pathlib import Path

import numpy as np


def _maxsim(q: np.ndarray, d: np.ndarray) -> float:
    return float((q @ d.T).max(axis=1).sum())


def main() -> int:
    import latix
    from latix import _core

    site = Path(sysconfig.get_paths()["platlib"]).resolve()
    where = Path(_core.__file__).resolve()
    assert site in where.parents, f"latix._core comes from {where}, not {site}"
    for mod in ("onnxruntime", "tokenizers", "torch", "transformers", "huggingface_hub"):
        assert importlib.util.find_spec(mod) is None, f"{mod} is installed in a base install"
    try:
        latix.Encoder.default()
    except latix.LatixError as e:
        msg = str(e)
        assert "latix model install" in msg or "latix[model]" in msg, msg
    else:
        raise AssertionError("Encoder.default() worked without the model extra")

    rng = np.random.default_rng(7)
    n_checked = 0
    with tempfile.TemporaryDirectory() as tmp:
        for trial, (dim, dtype) in enumerate([(8, "float32"), (64, "float16"), (128, "float32")]):
            n_docs = int(rng.integers(20, 200))
            docs = []
            for _ in range(n_docs):
                v = rng.standard_normal((int(rng.integers(1, 40)), dim)).astype(np.float32)
                docs.append(v / np.linalg.norm(v, axis=1, keepdims=True))
            ids = [f"d{i}" for i in range(n_docs)]
            stored = [d.astype(dtype).astype(np.float32) for d in docs]
            with latix.Index.create(Path(tmp) / f"i{trial}", dim=dim, dtype=dtype) as idx:
                idx.add(ids, docs)
                idx.commit()
                for _ in range(5):
                    q = rng.standard_normal((int(rng.integers(1, 32)), dim)).astype(np.float32)
                    k = int(rng.integers(1, n_docs + 1))
                    ref = np.array([_maxsim(q, d) for d in stored])
                    want = np.argsort(-ref, kind="stable")[:k]
                    scores, got = idx.search(q, k=k)
                    np.testing.assert_allclose(scores[0], ref[want], rtol=1e-4, atol=1e-4)
                    # Each returned id scores what numpy computes for that document.
                    by_id = {ids[i]: ref[i] for i in range(n_docs)}
                    np.testing.assert_allclose(
                        [by_id[str(i)] for i in got[0]], scores[0], rtol=1e-4, atol=1e-4
                    )
                    n_checked += 1
    print(
        f"wheel smoke: latix {latix.__version__} from {where.parent}, kernel "
        f"{latix.kernel_name()}, {n_checked} searches equal to numpy MaxSim, "
        f"python {sys.version.split()[0]}"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
