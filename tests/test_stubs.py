"""The checked-in type stubs of the Rust extension (python/latix/_core/*.pyi) are what
scripts/gen_stubs.py generates from the built module: a function, method, parameter, default or
doc comment changed in rust/python without regenerating them fails here (and so in CI)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "scripts" / "gen_stubs.py"


def test_checked_in_stubs_match_the_built_module() -> None:
    res = subprocess.run(
        [sys.executable, str(SCRIPT), "--check"], capture_output=True, text=True, cwd=ROOT
    )
    assert res.returncode == 0, res.stdout + res.stderr


def test_check_fails_on_a_stale_stub(tmp_path: Path) -> None:
    """The check can fail: a stub with one parameter renamed is reported, with a diff."""
    sys.path.insert(0, str(SCRIPT.parent))
    try:
        import gen_stubs
    finally:
        sys.path.remove(str(SCRIPT.parent))
    stubs = gen_stubs.generate()
    init = gen_stubs.OUT / "__init__.pyi"
    assert "def maxsim(" in stubs[init] and "n_threads: int | None = None" in stubs[init]
    # Every callable of the built module is in a stub, with its parameters in order.
    import inspect

    import latix._core as core

    for mod, path in ((core, init), (core.compressed, gen_stubs.OUT / "compressed.pyi")):
        for name, obj in vars(mod).items():
            if callable(obj) and not name.startswith("_"):
                assert f"def {name}(" in stubs[path] or f"class {name}:" in stubs[path], name
                if not isinstance(obj, type):
                    params = list(inspect.signature(obj).parameters)
                    assert all(p in stubs[path] for p in params), (name, params)
    stale = tmp_path / "out"
    stale.mkdir()
    old_out = gen_stubs.OUT
    gen_stubs.OUT = stale
    try:
        fresh = gen_stubs.generate()
        for p, text in fresh.items():
            p.write_text(text.replace("n_threads", "n_thread", 1), encoding="utf-8")
        assert gen_stubs.main(["--check"]) == 1
        for p, text in fresh.items():
            p.write_text(text, encoding="utf-8")
        assert gen_stubs.main(["--check"]) == 0
    finally:
        gen_stubs.OUT = old_out
