#!/usr/bin/env bash
# The Python test suite on aarch64: the interpreter and packages of scripts/aarch64/setup.sh,
# run under qemu-user from the source tree's tests/ (the installed aarch64 wheel is what they
# import: PYTHONPATH is the site directory only, python/ is not on the path).
#
#   scripts/aarch64/test.sh [DIR] [PYTEST ARGS...]
#
# Emulation is ~20-40x slower than native, so by default the subjects that exercise the
# extension's code on this architecture run (kernels, both index kinds, fidelity tiers,
# filters, collections, corruption and bad input, the encoder); pass pytest arguments to choose
# others.
set -euo pipefail
dir="$(cd "${1:-target/aarch64-py}" && pwd)"
shift || true
[ -x "$dir/bin/python3" ] || { echo "aarch64: run scripts/aarch64/setup.sh first" >&2; exit 1; }
if [ "$#" -eq 0 ]; then
    set -- tests/test_maxsim.py tests/test_index.py tests/test_compressed_blocks.py \
        tests/test_compressed_index.py tests/test_fidelity.py tests/test_masked_search.py \
        tests/test_filters.py tests/hardening/test_corruption.py \
        tests/hardening/test_api_edges.py tests/hardening/test_bad_input_matrix.py \
        tests/hardening/test_swapped_files.py tests/hardening/test_special_files.py \
        tests/hardening/test_resource_limits.py tests/test_bert_graph.py
fi
cd "$(dirname "$0")/../.."
unset VIRTUAL_ENV
PYTHONPATH="$dir/site" "$dir/bin/python3" -c 'import platform, latix; assert platform.machine() == "aarch64", platform.machine(); print("aarch64: latix from", latix.__file__)'
PYTHONPATH="$dir/site" exec "$dir/bin/python3" -m pytest -q -p no:cacheprovider "$@"
