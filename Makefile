# One entry point for everything: `make setup`, `make demo`, `make test`, `make check`, `make bench`.
# Everything runs inside the project's own virtual environment (.venv), created by `make setup`.

PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
export PATH := $(abspath $(BIN)):$(PATH)

.PHONY: setup build demo test test-rust test-python lint check bench clean

# Create .venv and install latix (built by maturin, release mode) with test and dev tools.
setup: $(BIN)/python
	$(BIN)/pip install --upgrade pip
	$(BIN)/pip install -e ".[dev,model]"

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)

# Rebuild the Rust extension in place after changing Rust code.
build:
	$(BIN)/maturin develop --release

# The main job: index a corpus every machine has and answer a query (see README).
demo:
	$(BIN)/python -m latix.demo

test-rust:
	cargo test --release -p latix-core

test-python:
	$(BIN)/python -m pytest -q

# The test command CI runs.
test: test-rust test-python

lint:
	cargo fmt --all -- --check
	cargo clippy --release --all-targets -- -D warnings
	$(BIN)/ruff check python tests benches
	$(BIN)/ruff format --check python tests benches
	$(BIN)/mypy

check: lint test

bench:
	$(BIN)/python benches/bench_maxsim.py

clean:
	cargo clean
	rm -rf $(VENV)
