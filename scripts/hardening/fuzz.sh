#!/usr/bin/env bash
# Runs every fuzzer for a bounded time: the libFuzzer targets over latix's on-disk parsers
# (fuzz/fuzz_targets/*) and the hypothesis harness over the public Python API
# (tests/harness/api_fuzz.py). Usage: scripts/hardening/fuzz.sh [SECONDS_PER_TARGET]
#
# With a nightly toolchain and cargo-fuzz (`cargo +nightly fuzz`), targets are built by cargo-fuzz
# with AddressSanitizer. Without them (a machine with only the stable toolchain, as CI's), the same
# targets are built on stable with libFuzzer's coverage instrumentation (the sanitizer-coverage
# flags cargo-fuzz passes, which are stable rustc options; no ASan, debug assertions on) and run
# directly: coverage-guided fuzzing either way. LATIX_FUZZ_MODE=stable forces the stable path.
# A crash leaves its input in fuzz/artifacts/<target>/: turn it into a regression test
# (rust/core/tests/hardening.rs) and fix the parser.
set -euo pipefail
SECS="${1:-60}"
ROOT="$(cd "$(dirname "$0")/../.." && pwd)"
PY="${PYTHON:-$ROOT/.venv/bin/python}"
cd "$ROOT"
"$PY" scripts/hardening/fuzz_seeds.py fuzz/corpus
status=0
mkdir -p fuzz/artifacts
targets=$(sed -n 's/^name = "\(.*\)"$/\1/p' fuzz/Cargo.toml | grep -v '^latix-fuzz$')
mode="${LATIX_FUZZ_MODE:-}"
if [ -z "$mode" ]; then
    if cargo +nightly fuzz --version >/dev/null 2>&1; then mode=nightly; else mode=stable; fi
fi
echo "== fuzz mode: $mode ($(if [ "$mode" = nightly ]; then echo 'cargo-fuzz, ASan'; else echo 'stable rustc, sanitizer-coverage, no ASan'; fi))"
if [ "$mode" = nightly ]; then
    (cd fuzz && cargo +nightly fuzz build -O)
    run_target() {
        (cd fuzz && cargo +nightly fuzz run -O "$1" -- "${@:2}")
    }
else
    host="$(rustc -vV | sed -n 's/^host: //p')"
    # --target keeps these flags off build scripts and proc macros (which cannot link the
    # coverage callbacks), as cargo-fuzz does.
    RUSTFLAGS="-Cpasses=sancov-module -Cllvm-args=-sanitizer-coverage-level=4 \
-Cllvm-args=-sanitizer-coverage-inline-8bit-counters -Cllvm-args=-sanitizer-coverage-pc-table \
-Cllvm-args=-sanitizer-coverage-trace-compares --cfg fuzzing -Cdebug-assertions" \
        cargo build --release --manifest-path fuzz/Cargo.toml --target "$host" \
        --target-dir fuzz/target/stable-cov
    run_target() {
        mkdir -p "fuzz/artifacts/$1"
        "fuzz/target/stable-cov/$host/release/$1" "fuzz/corpus/$1" \
            -artifact_prefix="fuzz/artifacts/$1/" "${@:2}"
    }
fi
for t in $targets; do
    echo "== fuzz $t (${SECS}s)"
    mkdir -p "fuzz/corpus/$t"
    if ! run_target "$t" -max_total_time="$SECS" -rss_limit_mb=2048 -timeout=20 \
        -print_final_stats=1 2>"$ROOT/fuzz/artifacts/$t.log"; then
        echo "FAILED: $t, see fuzz/artifacts/$t.log and fuzz/artifacts/$t/"
        tail -n 30 "$ROOT/fuzz/artifacts/$t.log" || true
        status=1
    fi
    grep -E "stat::number_of_executed_units|stat::peak_rss_mb" "$ROOT/fuzz/artifacts/$t.log" | sed "s/^/   /" || true
    grep -E "^#[0-9]+[[:space:]]+DONE" "$ROOT/fuzz/artifacts/$t.log" | sed "s/^/   /" || true
done
echo "== hypothesis API fuzz (${SECS}s)"
PYTHONPATH=tests "$PY" -m harness.api_fuzz --seconds "$SECS" || status=1
exit $status
