# kevents — run `make help` for the targets.
SHELL := /bin/bash
.DEFAULT_GOAL := help
CARGO ?= cargo
# Process-level tests spawn API servers and kevents replicas; two at a time suits 2 cores.
TEST_THREADS ?= 2
# Drills: fault repetitions per scenario in `make drill` (CI, under 10 minutes on 2 cores) and
# in `make drill-long` (the README figures use 20).
DRILL_RUNS ?= 2
DRILL_LONG_RUNS ?= 20
DRILL_SHORT := handover pause partition rolling apiserver-down compaction adx-429 read-only-store long-outage
# The same failovers with replicas on two nodes: one share seen through two bindfs mounts (locks do
# not cross them; sizes cached like SMB `actimeo`), with the seed's actimeo=30 and with 0.
DRILL_TWO_NODE := pause partition handover lease-deleted lease-renamed sick-leader
# The failovers again with the ADX emulator as the sink (queued: the AKS overlay's mode and
# defaults, ingestion 2-10 s after the post), on two nodes.
DRILL_ADX := handover pause partition
# Tag for `make image` (needs a Docker engine; this project's CI has none).
IMAGE ?= kevents:dev
# Debian packages the tests need: promtool (alert rules), shellcheck (scripts), musl-gcc (static
# amd64), the aarch64 cross gcc and its headers (static arm64), qemu-aarch64-static (runs that
# binary in the tests), bindfs (the drills' multi-node ground: one share seen through a FUSE mount
# per node).
APT_PACKAGES := prometheus shellcheck musl-tools gcc-aarch64-linux-gnu libc6-dev-arm64-cross \
	qemu-user-static bindfs

.PHONY: help
help: ## List the targets
	@awk 'BEGIN {FS = ":.*## "} /^[a-zA-Z0-9_-]+:.*## / {printf "  %-16s %s\n", $$1, $$2}' $(MAKEFILE_LIST)

.PHONY: build
build: ## Build kevents and kevents-lab (debug; `cargo build` alone builds the product only)
	$(CARGO) build --locked --workspace --bins

.PHONY: release
release: ## Build kevents and kevents-lab (release)
	$(CARGO) build --locked --release --workspace --bins

.PHONY: tools
tools: ## Install or check the tools the tests need (apt packages incl. bindfs, musl targets, kubectl, go, openssl, helm)
	@missing=""; \
	command -v promtool >/dev/null || missing="$$missing prometheus"; \
	command -v shellcheck >/dev/null || missing="$$missing shellcheck"; \
	command -v musl-gcc >/dev/null || missing="$$missing musl-tools"; \
	command -v aarch64-linux-gnu-gcc >/dev/null || missing="$$missing gcc-aarch64-linux-gnu"; \
	[ -f /usr/aarch64-linux-gnu/include/stdint.h ] || missing="$$missing libc6-dev-arm64-cross"; \
	command -v qemu-aarch64-static >/dev/null || missing="$$missing qemu-user-static"; \
	command -v bindfs >/dev/null || missing="$$missing bindfs"; \
	if [ -n "$$missing" ]; then \
		echo "installing:$$missing"; \
		export DEBIAN_FRONTEND=noninteractive; \
		apt-get update -qq && apt-get install -y -qq --no-install-recommends $$missing >/dev/null \
			|| { echo "cannot install$$missing with apt-get (packages: $(APT_PACKAGES))" >&2; exit 1; }; \
	fi
	@for t in x86_64-unknown-linux-musl aarch64-unknown-linux-musl; do \
		rustup target list --installed | grep -qx $$t || rustup target add $$t || exit 1; \
	done
	@command -v kubectl >/dev/null || { echo "kubectl is required by the tests (tests/kubectl.rs) but is not on PATH" >&2; exit 1; }
	@command -v go >/dev/null || { echo "go is required to build kube-apiserver and etcd (make kube-binaries)" >&2; exit 1; }
	@command -v openssl >/dev/null || { echo "openssl is required to make the test API server's certificates" >&2; exit 1; }
	@scripts/helm.sh

.PHONY: helm
helm: ## Build the pinned helm from Go modules into .tools/helm (cached; no-op when present)
	scripts/helm.sh

.PHONY: kube-binaries
kube-binaries: ## Build the real kube-apiserver and etcd from Go modules (cached; no-op when present)
	scripts/kube-binaries.sh

.PHONY: azurite
azurite: ## Install the pinned Azurite (npm) into .tools/azurite for the ADX tests
	scripts/azurite.sh

.PHONY: static
static: tools ## Static kevents (musl): target/static/kevents (amd64), target/static/aarch64/kevents
	scripts/static-build.sh

.PHONY: pgo-profile
pgo-profile: release azurite tools ## Regenerate pgo/kevents-amd64.profdata.gz, the profile the static build is laid out by (~8 min)
	scripts/pgo-profile.sh

.PHONY: image
image: ## Container image $(IMAGE) for this machine's platform (needs Docker; multi-arch: docs/README.md)
	docker build -t $(IMAGE) .

.PHONY: manifests-check
manifests-check: ## Render every overlay with kubectl kustomize and run the alert rule tests
	$(CARGO) test --locked --test manifests --test scripts -- --test-threads=$(TEST_THREADS)

.PHONY: fmt
fmt: ## Format the code
	$(CARGO) fmt --all

.PHONY: lint
lint: ## rustfmt check and clippy with warnings as errors
	$(CARGO) fmt --all --check
	$(CARGO) clippy --locked --workspace --all-targets -- -D warnings

.PHONY: test
test: tools lint kube-binaries azurite static ## Everything: lint, unit, emulator, real-apiserver and process tests (all three crates)
	$(CARGO) test --locked --workspace -- --test-threads=$(TEST_THREADS)

.PHONY: demo
demo: release azurite ## The main job: events into the ADX emulator on Azurite across two failovers (see README)
	./target/release/kevents-lab demo

.PHONY: drill
drill: release azurite tools ## Failover drills: every short scenario (one node, then two nodes), DRILL_RUNS each, one storm (CI)
	./target/release/kevents-lab drill $(DRILL_SHORT) --runs $(DRILL_RUNS)
	./target/release/kevents-lab drill $(DRILL_TWO_NODE) --runs $(DRILL_RUNS) --nodes 2 --attr-timeout 30 --workdir target/drills-2n-30
	./target/release/kevents-lab drill $(DRILL_TWO_NODE) --runs $(DRILL_RUNS) --nodes 2 --attr-timeout 0 --workdir target/drills-2n-0
	./target/release/kevents-lab drill $(DRILL_ADX) --runs $(DRILL_RUNS) --nodes 2 --attr-timeout 30 --sink adx-queued --workdir target/drills-2n-adx
	./target/release/kevents-lab drill mapping-error --runs 1
	./target/release/kevents-lab drill storm --runs 1

.PHONY: drill-long
drill-long: release azurite ## The 10-minute ADX outage, and every short drill DRILL_LONG_RUNS times
	./target/release/kevents-lab drill all --runs $(DRILL_LONG_RUNS) --workdir target/drills-long
	./target/release/kevents-lab drill long --runs 1 --workdir target/drills-long
	./target/release/kevents-lab drill $(DRILL_TWO_NODE) rolling --runs $(DRILL_LONG_RUNS) --nodes 2 --attr-timeout 30 --workdir target/drills-long-2n-30
	./target/release/kevents-lab drill $(DRILL_TWO_NODE) rolling --runs $(DRILL_LONG_RUNS) --nodes 2 --attr-timeout 0 --workdir target/drills-long-2n-0
	for sink in adx-queued adx-streaming adx-managed; do \
		./target/release/kevents-lab drill $(DRILL_ADX) --runs $(DRILL_LONG_RUNS) --nodes 2 --attr-timeout 30 --sink $$sink --workdir target/drills-long-2n-$$sink || exit 1; \
	done

.PHONY: bench
bench: release azurite ## Benchmarks: capture path (events/s, RSS, CPU; cost at 50, 500, 2,000 events/s) and ADX queued ingestion
	./target/release/kevents-lab bench capture --events 1000000 --rate 20000
	./target/release/kevents-lab bench capture --rates 50,500,2000 --duration 45s --idle 30s
	./target/release/kevents-lab bench adx

.PHONY: otelcol
otelcol: ## Build the pinned OpenTelemetry Collector (k8s receivers) into .tools/otelcol (cached)
	scripts/otelcol.sh

# `make bench-peers PEERS_ARGS="--runs 3 --duration 90s"`; outside CI (builds the collector, ~5 min cold).
PEERS_ARGS ?=
.PHONY: bench-peers
bench-peers: release kube-binaries otelcol ## kevents vs the OpenTelemetry Collector, 3 replicas, real kube-apiserver: loss, duplicates, failover, CPU, RSS
	./target/release/kevents-lab bench peers $(PEERS_ARGS)
