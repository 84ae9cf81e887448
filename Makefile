# Rillet: `make run` serves and demonstrates the default engine; `make test` runs lint, types and tests.
# Both install what they need into .venv first.
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
PROTO_BASELINE := proto/baseline/rillet_v1.binpb
# llama-cpp-python compiles llama.cpp from source; the multimodal part is not needed.
export CMAKE_ARGS ?= -DLLAVA_BUILD=OFF

.PHONY: install proto proto-baseline lint test test-fast run serve bench clean

install: $(STAMP)

$(STAMP): pyproject.toml client_sdk/pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet --config-settings editable_mode=compat -e ./client_sdk -e ".[dev,cpu,speech]"
	touch $(STAMP)

proto: install
	$(PY) scripts/gen_protos.py
	cd proto && ../$(BIN)/buf lint

# Record the current contract as the baseline `buf breaking` compares against (after a deliberate release).
proto-baseline: install
	$(PY) scripts/gen_protos.py --stage-only
	cd proto && ../$(BIN)/buf build --path rillet -o baseline/rillet_v1.binpb

lint: install
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy
	$(PY) scripts/gen_protos.py --check
	cd proto && ../$(BIN)/buf lint && ../$(BIN)/buf breaking --against baseline/rillet_v1.binpb

test: lint
	$(BIN)/pytest

# Tests without the real model and voice (seconds, not minutes).
test-fast: install
	$(BIN)/pytest -m "not model and not voice"

serve: install
	$(BIN)/rillet serve

run: install
	scripts/run_demo.sh

bench: install
	$(PY) -m pip install --quiet -e ".[bench]"
	bench/build_llama_server.sh
	$(PY) bench/bench_cpu.py
	$(PY) bench/soak_cpu.py
	$(PY) bench/bench_speech.py

clean:
	rm -rf $(VENV) build dist .mypy_cache .ruff_cache .pytest_cache proto/third_party
