"""Optional dependencies fail politely: every extra's missing package gives a LatixError (and an
ImportError) naming the extra and the pip command, at every call site that imports one.

A package is made missing with ``sys.modules[name] = None`` (the import system then raises
ModuleNotFoundError for it, as if it were not installed).
"""

from __future__ import annotations

import json
import re
import sys
from pathlib import Path

import latix
import numpy as np
import pytest
from latix import cli
from latix._optional import EXTRAS, MissingDependencyError, install_command, require

ROOT = Path(__file__).resolve().parent.parent


def _pyproject_extras() -> set[str]:
    text = (ROOT / "pyproject.toml").read_text()
    section = text.split("[project.optional-dependencies]", 1)[1].split("\n[", 1)[0]
    return set(re.findall(r"^([A-Za-z0-9_-]+)\s*=", section, flags=re.M))


def test_every_user_extra_is_declared() -> None:
    # Extras a user installs must be nameable by require(); test/dev/wheel/docs and the peer
    # benchmark's libraries are for developers.
    declared = _pyproject_extras()
    assert {"model", "eval", "export", "hub"} <= declared
    assert declared - {"test", "dev", "wheel", "docs", "bench-peers"} <= set(EXTRAS)


@pytest.mark.parametrize("extra", sorted(EXTRAS))
def test_require_message_names_extra_and_command(extra: str) -> None:
    module = f"latix_absent_module_for_{extra.replace('-', '_')}"
    with pytest.raises(MissingDependencyError) as e:
        require(extra, module)
    err = e.value
    assert isinstance(err, latix.LatixError) and isinstance(err, ImportError)
    assert err.extra == extra and err.module == module and err.name == module
    msg = str(err)
    assert f"pip install 'latix[{extra}]'" in msg and repr(module) in msg
    assert install_command(extra) == f"pip install 'latix[{extra}]'"


def test_require_returns_the_module_and_rejects_unknown_extras() -> None:
    assert require("model", "json") is json
    with pytest.raises(ValueError, match="unknown latix extra"):
        require("no-such-extra", "json")


def test_require_names_a_missing_dependency_of_the_module(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    # The module exists but one of its own imports does not: the message says which.
    pkg = "latix_test_pkg_with_missing_dep"
    (tmp_path / f"{pkg}.py").write_text("import latix_absent_dependency\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.setitem(sys.modules, "latix_absent_dependency", None)
    monkeypatch.delitem(sys.modules, pkg, raising=False)
    with pytest.raises(MissingDependencyError, match="latix_absent_dependency") as e:
        require("serve", pkg)
    assert "latix[serve]" in str(e.value)
    sys.modules.pop(pkg, None)


def test_encoder_without_onnxruntime(monkeypatch: pytest.MonkeyPatch) -> None:
    from latix.models import default_model_files

    default_model_files()  # the files are there: only the runtime is missing below
    for mod in ("onnxruntime", "tokenizers"):
        with monkeypatch.context() as m:
            m.setitem(sys.modules, mod, None)
            with pytest.raises(MissingDependencyError, match=r"pip install 'latix\[model\]'"):
                latix.Encoder.default()


def test_eval_without_ir_measures(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from latix.eval import evaluate

    monkeypatch.setitem(sys.modules, "ir_measures", None)
    with latix.Index.create(tmp_path / "i", dim=4) as idx:
        idx.add(["a"], [np.ones((2, 4), np.float32)])
        with pytest.raises(MissingDependencyError, match=r"pip install 'latix\[eval\]'"):
            evaluate(
                idx,
                None,
                {"q": "text"},
                {"q": {"a": 1}},
                query_vectors={"q": np.ones((1, 4), np.float32)},
            )
    # The CLI checks before doing any work (the collection does not even exist) and exits 1.
    q = tmp_path / "q.jsonl"
    q.write_text('{"_id": "q", "text": "x"}\n')
    r = tmp_path / "r.tsv"
    r.write_text("query-id\tcorpus-id\tscore\nq\ta\t1\n")
    argv = ["eval", str(tmp_path / "absent"), "--queries", str(q), "--qrels", str(r)]
    assert cli.main(argv) == 1
    err = capsys.readouterr().err
    assert "pip install 'latix[eval]'" in err and "Traceback" not in err


def test_index_cli_without_tqdm(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setitem(sys.modules, "tqdm", None)
    corpus = tmp_path / "c.jsonl"
    corpus.write_text('{"_id": "d", "text": "some text"}\n')
    assert cli.main(["index", str(corpus), "--out", str(tmp_path / "o"), "--no-progress"]) == 1
    assert "pip install 'latix[model]'" in capsys.readouterr().err


def test_export_without_torch(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    from latix.export import export_checkpoint

    for mod in ("torch", "transformers"):
        with monkeypatch.context() as m:
            m.setitem(sys.modules, mod, None)
            with pytest.raises(MissingDependencyError, match=r"pip install 'latix\[export\]'"):
                export_checkpoint(tmp_path, tmp_path / "out")


def test_hub_without_huggingface_hub(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "huggingface_hub", None)
    with pytest.raises(latix.ModelError, match=r"pip install 'latix\[hub\]'"):
        latix.Encoder.load("someone/model-not-here")


def test_makefile_installs_the_extras_pins() -> None:
    # The Makefile installs the export and wheel tools without rebuilding latix (`pip install
    # ".[export]"` would): its requirement strings must be the extras' own.
    text = (ROOT / "pyproject.toml").read_text()
    make = (ROOT / "Makefile").read_text()
    for extra, skip in (
        ("export", {"latix[model]", "onnx>=1.15"}),
        ("wheel", set()),
        ("ray", set()),
    ):
        m = re.search(rf"^{extra} = \[(.*?)\]\s*$", text, flags=re.M | re.S)
        assert m is not None, extra
        reqs = set(re.findall(r'"([^"]+)"', m.group(1))) - skip
        assert reqs, extra
        for req in reqs:
            assert f'"{req}"' in make, f"Makefile does not install {req} of the {extra} extra"
