#!/usr/bin/env bash
# Install a built latix wheel into a fresh venv and run the smoke search (scripts/wheel/smoke.py),
# with no Rust toolchain on PATH (cargo, rustc and ~/.cargo/bin removed), so that a wheel which
# would need compiling at install time fails here.
#
#   scripts/wheel/test.sh WHEEL [PYTHON]
#
# PYTHON (default python3) creates the venv; numpy comes from PyPI (or pip's cache).
set -euo pipefail
wheel="$(cd "$(dirname "$1")" && pwd)/$(basename "$1")"
python="${2:-python3}"
python="$(command -v "$python")"
here="$(cd "$(dirname "$0")" && pwd)"
tmp="$(mktemp -d "${TMPDIR:-/tmp}/latix-wheel-test.XXXXXX")"
trap 'rm -rf "$tmp"' EXIT

# PATH without any directory that holds cargo or rustc.
clean_path=""
IFS=: read -r -a dirs <<< "$PATH"
for d in "${dirs[@]}"; do
    [ -z "$d" ] && continue
    if [ -x "$d/cargo" ] || [ -x "$d/rustc" ]; then continue; fi
    case "$d" in */.venv/bin) continue ;; esac
    clean_path="${clean_path:+$clean_path:}$d"
done
export PATH="$clean_path"
unset CARGO_HOME RUSTUP_HOME RUSTUP_TOOLCHAIN VIRTUAL_ENV PYTHONPATH
# No default model: the smoke test checks the error that names the install command.
export LATIX_MODEL_DIR="$tmp/no-model"
if command -v cargo >/dev/null || command -v rustc >/dev/null; then
    echo "wheel test: a Rust toolchain is still on PATH" >&2
    exit 1
fi

"$python" -m venv "$tmp/venv"
"$tmp/venv/bin/python" -m pip install -q --disable-pip-version-check --only-binary=:all: "$wheel"
echo "wheel test: installed $(basename "$wheel") into a fresh venv ($(du -sh "$tmp/venv" | cut -f1)); no cargo/rustc on PATH"
# Run from an empty directory so that no source tree can shadow the installed package.
cd "$tmp"
"$tmp/venv/bin/python" "$here/smoke.py"
if "$tmp/venv/bin/latix" model info > "$tmp/info.txt" 2>&1; then
    echo "wheel test: \`latix model info\` succeeded without a model" >&2
    exit 1
fi
grep -q "latix model install" "$tmp/info.txt" || { cat "$tmp/info.txt" >&2; exit 1; }
echo "wheel test: the console script runs; without a model it names: $(grep -o "pip install.*" "$tmp/info.txt")"
