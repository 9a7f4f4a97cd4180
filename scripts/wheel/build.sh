#!/usr/bin/env bash
# Build the source distribution, then from it (unpacked in a temporary folder, so that the wheel
# proves the sdist builds from source) a release wheel that PyPI accepts and old Linux
# distributions install:
# abi3 (one wheel for CPython >= 3.10), linked by zig against glibc 2.17 symbols (manylinux2014:
# CentOS 7, Ubuntu 18.04+, Debian 9+, RHEL/Rocky 8, Amazon Linux 2), debug info stripped; then
# `auditwheel show` must report the wheel consistent with the requested platform tag, and the
# extension must carry no .debug_* section.
#
#   scripts/wheel/build.sh [TARGET] [COMPAT] [OUT]
#
# TARGET: Rust target triple (default x86_64-unknown-linux-gnu; aarch64-unknown-linux-gnu
# cross-compiles, which needs that target's standard library: `rustup target add ...`).
# COMPAT: manylinux2014 (default) or manylinux_2_28. OUT: output folder (default dist).
# Tools (maturin, ziglang, auditwheel) come from the venv of `make wheel` (the wheel extra).
set -euo pipefail
cd "$(dirname "$0")/../.."
target="${1:-x86_64-unknown-linux-gnu}"
compat="${2:-manylinux2014}"
out="${3:-dist}"
bin="$(cd "${VENV_BIN:-.venv/bin}" && pwd)"
arch="${target%%-*}"
case "$compat" in
    manylinux2014) tag=manylinux_2_17 ;;
    manylinux_2_*) tag="$compat" ;;
    *) echo "build.sh: unknown compatibility $compat" >&2; exit 2 ;;
esac
# maturin finds zig as `python -m ziglang` of the interpreter on PATH: the venv's.
export PATH="$bin:$PATH"
mkdir -p "$out"
out="$(cd "$out" && pwd)"
root="$(pwd)"
rm -f "$out"/latix-*-"$arch".whl "$out"/latix-*_"$arch".whl "$out"/latix-*.tar.gz
tmp="$(mktemp -d)"
trap 'rm -rf "$tmp"' EXIT
start=$(date +%s)
"$bin/maturin" sdist --out "$out"
sdist="$(ls -t "$out"/latix-*.tar.gz | head -n 1)"
echo "sdist: $sdist, $(du -k "$sdist" | cut -f1) KB, $(tar -tzf "$sdist" | wc -l) files"
tar -xzf "$sdist" -C "$tmp"
src="$(find "$tmp" -mindepth 1 -maxdepth 1 -type d | head -n 1)"
# The target folder stays in the clone so that a second build is incremental.
(cd "$src" && CARGO_TARGET_DIR="$root/target/wheel" "$bin/maturin" build --release --strip \
    --zig --compatibility "$compat" --target "$target" --out "$out")
wheel="$(ls -t "$out"/latix-*"$arch".whl | head -n 1)"
echo "wheel: built $wheel from the sdist in $(( $(date +%s) - start )) s, $(du -k "$wheel" | cut -f1) KB"

report="$("$bin/auditwheel" show "$wheel")"
echo "$report"
if ! tr '\n' ' ' <<< "$report" | grep -q "consistent with the following platform tag: \"${tag}_${arch}\""; then
    echo "wheel: auditwheel does not find $(basename "$wheel") consistent with ${tag}_${arch}" >&2
    exit 1
fi
case "$(basename "$wheel")" in
    *-cp310-abi3-*"${tag}_${arch}"*) ;;
    *) echo "wheel: $(basename "$wheel") is not tagged cp310-abi3 ${tag}_${arch}" >&2; exit 1 ;;
esac

# The extension: size, and no debug sections left.
mkdir "$tmp/unpacked"
"$bin/python" -m zipfile -e "$wheel" "$tmp/unpacked"
so="$(find "$tmp/unpacked" -name '_core*.so' | head -n 1)"
if readelf -S "$so" | grep -q '\.debug_'; then
    echo "wheel: $so still has debug sections" >&2
    exit 1
fi
max_glibc="$(readelf --dyn-syms -W "$so" | grep -o 'GLIBC_[0-9.]*' | sort -uV | tail -n 1)"
echo "wheel: _core .so $(du -k "$so" | cut -f1) KB unpacked, no debug sections, newest glibc symbol $max_glibc"
