# Rillet: `make run` serves and demonstrates the default engine; `make test` runs lint, types and tests.
# Both install what they need into .venv first.
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
PROTO_BASELINE := proto/baseline/rillet_v1.binpb
# Pinned tools outside Python, cached in .tools/ (git-ignored): Go tools by `go install` from the Go module proxy
# (checksums verified), Node packages by `npm ci` from client_sdk/ts/package-lock.json.
TOOLS := $(CURDIR)/.tools
PROTOC_GEN_GO := google.golang.org/protobuf/cmd/protoc-gen-go@v1.36.11
PROTOC_GEN_GO_GRPC := google.golang.org/grpc/cmd/protoc-gen-go-grpc@v1.6.2
GRPCURL := github.com/fullstorydev/grpcurl/cmd/grpcurl@v1.9.3
GHZ := github.com/bojand/ghz/cmd/ghz@v0.120.0
# helm for the chart's checks in tests/deploy (helm lint; helm template validated offline by kubernetes-validate;
# hadolint comes with the dev extra): compiled from source once, about 4 minutes on 2 cores and 1.1 GB of Go caches.
HELM := helm.sh/helm/v3/cmd/helm@v3.22.0
HELM_STAMP := $(TOOLS)/stamps/$(subst /,+,$(HELM))
GO_TOOL_STAMPS := $(foreach t,$(PROTOC_GEN_GO) $(PROTOC_GEN_GO_GRPC) $(GRPCURL) $(GHZ) $(HELM),$(TOOLS)/stamps/$(subst /,+,$(t)))
TS_DEPS := client_sdk/ts/node_modules/.package-lock.json
# The browser tests (tests/browser) drive Debian's Chromium with playwright-core (pinned in package-lock.json)
# through its executablePath: no browser download. 156 is the Chromium playwright-core 1.64.1 was built for.
CHROMIUM_VERSION := 156.0.8078.129-1~deb12u1
PROTOSET := build/rillet.protoset
# The local Go unless a go.mod needs a newer one, which is then fetched as that go.mod pins it.
export GOTOOLCHAIN ?= auto
# llama-cpp-python compiles llama.cpp from source; the multimodal part is not needed.
export CMAKE_ARGS ?= -DLLAVA_BUILD=OFF

.PHONY: install proto proto-tools tools proto-baseline protoset page browser-deps lint test test-sdks test-fast run serve bench gpu-check clean

install: $(STAMP)

$(STAMP): pyproject.toml client_sdk/pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet --config-settings editable_mode=compat -e ./client_sdk -e ".[dev,cpu,speech]"
	touch $(STAMP)

$(TOOLS)/stamps/%:
	mkdir -p $(TOOLS)/stamps
	GOBIN=$(TOOLS)/bin go install $(subst +,/,$*)
	touch $@

$(TS_DEPS): client_sdk/ts/package.json client_sdk/ts/package-lock.json
	cd client_sdk/ts && npm ci --no-audit --no-fund
	touch $@

# The plugins proto/buf.gen.yaml runs (Go, TypeScript; the Python ones come with the dev extra), and the tools the
# tests drive the server with (grpcurl, ghz).
proto-tools: install $(TS_DEPS) $(TOOLS)/stamps/$(subst /,+,$(PROTOC_GEN_GO)) $(TOOLS)/stamps/$(subst /,+,$(PROTOC_GEN_GO_GRPC))
tools: proto-tools $(GO_TOOL_STAMPS)

# Every language's generated code, from proto/buf.gen.yaml (the reasons' enum and README table first, from the
# catalogue in server/rillet/server/reasons.py).
proto: proto-tools
	$(PY) scripts/gen_reasons.py
	$(PY) scripts/gen_protos.py
	cd proto && ../$(BIN)/buf lint

# Record the current contract as the baseline `buf breaking` compares against (after a deliberate release).
proto-baseline: install
	cd proto && ../$(BIN)/buf build --path rillet -o baseline/rillet_v1.binpb

# A descriptor set of the contract and its imports, with comments, for tools that load one (ghz --protoset,
# grpcurl -protoset, Postman's import).
protoset: install
	mkdir -p $(dir $(PROTOSET))
	cd proto && ../$(BIN)/buf build --path rillet --as-file-descriptor-set -o ../$(PROTOSET)
	@echo "wrote $(PROTOSET)"

# The demo page the WebSocket edge serves, built from client_sdk/ts/page into the server's package (committed).
page: $(TS_DEPS)
	cd client_sdk/ts && npm run build:page

# Chromium for the browser tests, from Debian (CI runs as root on Debian): the pinned version when the archive
# still has it, else its current one (a security update), with a warning. Elsewhere install it the platform's way.
browser-deps:
	@command -v chromium >/dev/null || { \
		apt-get update -qq && \
		{ DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium=$(CHROMIUM_VERSION) || \
		  { echo "warning: chromium $(CHROMIUM_VERSION) is gone from the archive; installing the current one"; \
		    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium; }; }; }
	@chromium --version

lint: proto-tools
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy
	$(PY) scripts/gen_reasons.py --check
	$(PY) scripts/gen_protos.py --check
	cd client_sdk/ts && npm run check:page
	cd proto && ../$(BIN)/buf lint && ../$(BIN)/buf breaking --against baseline/rillet_v1.binpb

# The Go and TypeScript packages: vet, types, their own tests (the conformance suite runs them against a live
# server from pytest, tests/conformance/).
test-sdks: proto-tools
	cd client_sdk/go && go vet ./... && go test ./...
	cd client_sdk/ts && npm run typecheck && npm test

test: lint tools test-sdks browser-deps
	$(BIN)/pytest

# Tests without the real model and voice, nor a browser (seconds, not minutes).
test-fast: install $(HELM_STAMP)
	$(BIN)/pytest -m "not model and not voice and not browser"

serve: install
	$(BIN)/rillet serve

run: install
	scripts/run_demo.sh

bench: install
	$(PY) -m pip install --quiet -e ".[bench]"
	bench/build_llama_server.sh
	$(PY) bench/bench_cpu.py
	$(PY) bench/soak.py
	$(PY) bench/bench_speech.py

# The acceptance run on a GPU host (deploy/gpu/README.md "Acceptance run"): the contract suite and the gpu tests on
# the real TensorRT-LLM and a small public model, then bench/bench_gpu.py beside trtllm-serve, in one report under
# bench/results/gpu_check_<date>/. It runs with the Python that has TensorRT-LLM (GPU_PYTHON, e.g. NVIDIA's container's
# python3 with Rillet's dev extra installed beside it), never this .venv. GPU_CHECK_DOUBLE=1 runs the same logic on
# the TensorRT-LLM test double, with no GPU; GPU_CHECK_ARGS passes more (--model, --concurrency, --samplers, --out).
GPU_PYTHON ?= python3
gpu-check:
ifdef GPU_CHECK_DOUBLE
	$(MAKE) install
	$(PY) deploy/gpu/gpu_check.py --double $(GPU_CHECK_ARGS)
else
	$(GPU_PYTHON) deploy/gpu/gpu_check.py $(GPU_CHECK_ARGS)
endif

clean:
	rm -rf $(VENV) build dist .mypy_cache .ruff_cache .pytest_cache $(TOOLS) client_sdk/ts/node_modules client_sdk/ts/dist
