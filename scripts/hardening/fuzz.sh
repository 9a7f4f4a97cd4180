#!/usr/bin/env bash
# Runs every fuzzer for a bounded time: the cargo-fuzz targets over latix's on-disk parsers
# (fuzz/fuzz_targets/*) and the hypothesis harness over the public Python API
# (tests/harness/api_fuzz.py). Usage: scripts/hardening/fuzz.sh [SECONDS_PER_TARGET]
# A crash leaves its input in fuzz/artifacts/<target>/: turn it into a regression test
# (rust/core/tests/hardening.rs) and fix the parser. Needs: cargo +nightly, cargo-fuzz.
set -euo pipefail
SECS="${1:-60}"
ROOT="$(cd "$(dirname "$0")/../.." && pwd)"
PY="${PYTHON:-$ROOT/.venv/bin/python}"
cd "$ROOT"
"$PY" scripts/hardening/fuzz_seeds.py fuzz/corpus
status=0
cd fuzz
cargo +nightly fuzz build -O
mkdir -p artifacts
for t in $(cargo +nightly fuzz list); do
    echo "== cargo fuzz $t (${SECS}s)"
    if ! cargo +nightly fuzz run -O "$t" -- -max_total_time="$SECS" -rss_limit_mb=2048 \
        -timeout=20 -print_final_stats=1 2>"$ROOT/fuzz/artifacts/$t.log"; then
        echo "FAILED: $t, see fuzz/artifacts/$t.log and fuzz/artifacts/$t/"
        status=1
    fi
    grep -E "stat::number_of_executed_units|stat::peak_rss_mb" "$ROOT/fuzz/artifacts/$t.log" | sed "s/^/   /" || true
done
cd "$ROOT"
echo "== hypothesis API fuzz (${SECS}s)"
PYTHONPATH=tests "$PY" -m harness.api_fuzz --seconds "$SECS" || status=1
exit $status
