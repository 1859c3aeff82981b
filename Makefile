# kevents — run `make help` for the targets.
SHELL := /bin/bash
.DEFAULT_GOAL := help
CARGO ?= cargo
# Process-level tests spawn API servers and kevents replicas; two at a time suits 2 cores.
TEST_THREADS ?= 2
# Drills: fault repetitions per scenario (the README figures use 20).
DRILL_RUNS ?= 20

.PHONY: help
help: ## List the targets
	@awk 'BEGIN {FS = ":.*## "} /^[a-zA-Z0-9_-]+:.*## / {printf "  %-16s %s\n", $$1, $$2}' $(MAKEFILE_LIST)

.PHONY: build
build: ## Build kevents and kevents-lab (debug)
	$(CARGO) build --locked --bins

.PHONY: release
release: ## Build kevents and kevents-lab (release)
	$(CARGO) build --locked --release --bins

.PHONY: tools
tools: ## Check the tools the tests need (kubectl, go, openssl)
	@command -v kubectl >/dev/null || { echo "kubectl is required by the tests (tests/kubectl.rs) but is not on PATH" >&2; exit 1; }
	@command -v go >/dev/null || { echo "go is required to build kube-apiserver and etcd (make kube-binaries)" >&2; exit 1; }
	@command -v openssl >/dev/null || { echo "openssl is required to make the test API server's certificates" >&2; exit 1; }

.PHONY: kube-binaries
kube-binaries: ## Build the real kube-apiserver and etcd from Go modules (cached; no-op when present)
	scripts/kube-binaries.sh

.PHONY: azurite
azurite: ## Install the pinned Azurite (npm) into .tools/azurite for the ADX tests
	scripts/azurite.sh

.PHONY: fmt
fmt: ## Format the code
	$(CARGO) fmt

.PHONY: lint
lint: ## rustfmt check and clippy with warnings as errors
	$(CARGO) fmt --check
	$(CARGO) clippy --locked --all-targets -- -D warnings

.PHONY: test
test: tools lint kube-binaries azurite ## Everything: lint, unit, emulator, real-apiserver and process tests
	$(CARGO) test --locked -- --test-threads=$(TEST_THREADS)

.PHONY: demo
demo: release ## The main job on an embedded default (see README)
	./target/release/kevents-lab demo

.PHONY: drill
drill: release ## Failover drills (short scenarios, DRILL_RUNS each)
	./target/release/kevents-lab drill all --runs $(DRILL_RUNS)

.PHONY: bench
bench: release azurite ## Benchmarks: capture path (events/s, RSS, CPU) and ADX queued ingestion
	./target/release/kevents-lab bench capture --events 1000000 --rate 20000
	./target/release/kevents-lab bench adx
