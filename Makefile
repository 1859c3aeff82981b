# kevents — run `make help` for the targets.
SHELL := /bin/bash
.DEFAULT_GOAL := help
CARGO ?= cargo
# Tests spawn API servers and kevents processes; two at a time suits a 2-core machine.
TEST_THREADS ?= 2

.PHONY: help
help: ## List the targets
	@awk 'BEGIN {FS = ":.*## "} /^[a-zA-Z0-9_-]+:.*## / {printf "  \033[36m%-16s\033[0m %s\n", $$1, $$2}' $(MAKEFILE_LIST)

.PHONY: build
build: ## Build kevents and kevents-lab (debug)
	$(CARGO) build --locked --bins

.PHONY: release
release: ## Build kevents and kevents-lab (release)
	$(CARGO) build --locked --release --bins

.PHONY: tools
tools: ## Check the tools the tests need (kubectl)
	@command -v kubectl >/dev/null || { echo "kubectl is required by the tests (tests/kubectl.rs) but is not on PATH" >&2; exit 1; }
	@kubectl version --client >/dev/null

.PHONY: fmt
fmt: ## Format the code
	$(CARGO) fmt

.PHONY: lint
lint: ## rustfmt check and clippy with warnings as errors
	$(CARGO) fmt --check
	$(CARGO) clippy --locked --all-targets -- -D warnings

.PHONY: test
test: tools lint ## Everything: lint, unit, emulator and process tests (installs what it needs)
	$(CARGO) test --locked -- --test-threads=$(TEST_THREADS)

.PHONY: demo
demo: ## The main job on an embedded default (see README)
	$(CARGO) build --locked --release --bins
	./target/release/kevents-lab demo
