#!/usr/bin/env bash
# Build the pinned OpenTelemetry Collector (k8sobjects + k8s_events receivers, k8s_leader_elector,
# file exporter) from Go modules with the OpenTelemetry Collector Builder, into the project-local,
# git-ignored .tools/otelcol, for `kevents-lab bench peers` (make bench-peers).
# Idempotent: does nothing when the pinned version is already there.
#
#   scripts/otelcol.sh            build (if missing) and print the binary's path
#   scripts/otelcol.sh --path     only print the binary's path
#
# Output: <repo>/.tools/otelcol/<version>/otelcol-kevents-peers. The builder itself is installed
# with `go install` into the same folder; it generates a throwaway module (main.go, components.go,
# go.mod) in a temporary directory and runs go mod tidy + go build there, so the repository
# carries no go.mod for it. The component list is scripts/otelcol/builder-config.yaml.
# ~5 min cold on 2 cores; runs under `nice`.
set -euo pipefail

# One release for everything: the builder, core (v0.139.0 / v1.45.0) and contrib. The manifest
# names the same versions; change both together.
OTELCOL_VERSION="${OTELCOL_VERSION:-v0.139.0}"
OTELCOL_BUILDER_VERSION="${OTELCOL_BUILDER_VERSION:-${OTELCOL_VERSION}}"
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
MANIFEST="${ROOT}/scripts/otelcol/builder-config.yaml"
OUT_DIR="${ROOT}/.tools/otelcol/${OTELCOL_VERSION}"
BIN="${OUT_DIR}/otelcol-kevents-peers"
BUILDER="${OUT_DIR}/builder"

if [[ "${1:-}" == "--path" ]]; then
    echo "${BIN}"
    exit 0
elif [[ $# -gt 0 ]]; then
    echo "usage: $0 [--path]" >&2
    exit 2
fi

installed() {
    [[ -x "${BIN}" ]] && "${BIN}" --version 2>/dev/null | grep -q "${OTELCOL_VERSION#v}"
}

if installed; then
    echo "otelcol: ${OTELCOL_VERSION} already built in ${OUT_DIR}" >&2
    echo "${BIN}"
    exit 0
fi

command -v go >/dev/null || { echo "otelcol: 'go' not found in PATH (Go is needed to build the collector)" >&2; exit 1; }
grep -q "${OTELCOL_VERSION}" "${MANIFEST}" \
    || { echo "otelcol: ${MANIFEST} does not name ${OTELCOL_VERSION}" >&2; exit 1; }

start=$(date +%s)
work="$(mktemp -d)"
trap 'rm -rf "${work}"' EXIT
mkdir -p "${OUT_DIR}"

export CGO_ENABLED=0
export GOTOOLCHAIN=local     # never try to download a toolchain (v0.139.0 needs go1.24+)
export GOFLAGS="-mod=mod -buildvcs=false"
export GOPROXY="${GOPROXY:-https://proxy.golang.org}"
export GOMAXPROCS="${OTELCOL_BUILD_JOBS:-2}"

if [[ ! -x "${BUILDER}" ]]; then
    echo "otelcol: installing go.opentelemetry.io/collector/cmd/builder@${OTELCOL_BUILDER_VERSION} ..." >&2
    GOBIN="${OUT_DIR}" go install "go.opentelemetry.io/collector/cmd/builder@${OTELCOL_BUILDER_VERSION}" >&2
fi

sed "s|@OUTPUT_PATH@|${work}/dist|" "${MANIFEST}" > "${work}/builder-config.yaml"
echo "otelcol: building the collector ${OTELCOL_VERSION} (CGO_ENABLED=0) ..." >&2
(
    cd "${work}"
    nice -n 10 "${BUILDER}" --config "${work}/builder-config.yaml" >&2
) || {
    rc=$?
    echo "otelcol: FAILED to build the collector ${OTELCOL_VERSION} (exit ${rc})" >&2
    exit "${rc}"
}
# Copied under a temporary name so an interrupted build never looks finished.
cp "${work}/dist/otelcol-kevents-peers" "${BIN}.tmp"
mv -f "${BIN}.tmp" "${BIN}"
installed || {
    echo "otelcol: ${BIN} does not report ${OTELCOL_VERSION}: $("${BIN}" --version 2>&1)" >&2
    exit 1
}
echo "otelcol: built ${OTELCOL_VERSION} in $(( $(date +%s) - start ))s" >&2
echo "${BIN}"
