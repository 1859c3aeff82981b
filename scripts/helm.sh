#!/usr/bin/env bash
# Build the pinned Helm from Go modules into the project-local, git-ignored .tools/helm, for the
# chart tests (tests/helm.rs) and for rendering charts/kevents by hand.
# Idempotent: does nothing when the pinned version is already there.
#
#   scripts/helm.sh            build (if missing) and print the binary's path
#   scripts/helm.sh --path     only print the binary's path
#
# Output: <repo>/.tools/helm/<version>/helm. The build happens in a throwaway module
# (go mod init + go get helm.sh/helm/v4/cmd/helm@<version> + go build) so the repository carries
# no go.mod for it. ~3 min cold on 2 cores; runs under `nice`.
set -euo pipefail

HELM_VERSION="${HELM_VERSION:-v4.3.2}"
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
OUT_DIR="${ROOT}/.tools/helm/${HELM_VERSION}"
BIN="${OUT_DIR}/helm"

if [[ "${1:-}" == "--path" ]]; then
    echo "${BIN}"
    exit 0
elif [[ $# -gt 0 ]]; then
    echo "usage: $0 [--path]" >&2
    exit 2
fi

installed() {
    [[ -x "${BIN}" ]] && [[ "$("${BIN}" version --template '{{.Version}}' 2>/dev/null)" == "${HELM_VERSION}" ]]
}

if installed; then
    echo "helm: ${HELM_VERSION} already built in ${OUT_DIR}"
    echo "${BIN}"
    exit 0
fi

command -v go >/dev/null || { echo "helm: 'go' not found in PATH (Go is needed to build helm)" >&2; exit 1; }

start=$(date +%s)
work="$(mktemp -d)"
trap 'rm -rf "${work}"' EXIT
mkdir -p "${OUT_DIR}"

export CGO_ENABLED=0
export GOTOOLCHAIN=local     # never try to download a toolchain
export GOFLAGS="-mod=mod -buildvcs=false"
build_jobs=${HELM_BUILD_JOBS:-2}

echo "helm: building helm.sh/helm/v4/cmd/helm@${HELM_VERSION} (CGO_ENABLED=0, -p ${build_jobs}) ..."
(
    cd "${work}"
    go mod init kevents.local/helm-build >/dev/null 2>&1
    go get "helm.sh/helm/v4/cmd/helm@${HELM_VERSION}"
    # Stamp the version like helm's own Makefile does, so `helm version` and
    # .Capabilities.HelmVersion report it instead of a development version.
    nice -n 10 go build -p "${build_jobs}" -trimpath \
        -ldflags "-s -w -X helm.sh/helm/v4/internal/version.version=${HELM_VERSION}" \
        -o "${BIN}.tmp" helm.sh/helm/v4/cmd/helm
) || {
    rc=$?
    rm -f "${BIN}.tmp"
    echo "helm: FAILED to build helm ${HELM_VERSION} (exit ${rc})" >&2
    exit "${rc}"
}
# Built under a temporary name so an interrupted build never looks finished.
mv -f "${BIN}.tmp" "${BIN}"
installed || {
    echo "helm: ${BIN} does not report ${HELM_VERSION}: $("${BIN}" version 2>&1)" >&2
    exit 1
}
echo "helm: built ${HELM_VERSION} in $(( $(date +%s) - start ))s"
echo "${BIN}"
