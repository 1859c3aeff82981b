#!/usr/bin/env bash
# Build a real kube-apiserver and etcd from Go modules for the test suite.
#
#   scripts/kube-binaries.sh              build (if missing) and print the binary paths
#   scripts/kube-binaries.sh --print-dir  only print the output directory
#
# Output: <repo>/.cache/kube-binaries/<kube-version>-<etcd-version>/{kube-apiserver,etcd}
# Versions are pinned in scripts/kube-binaries.env; the wrapper modules live in
# tests/kube-apiserver and tests/etcd (their go.mod must match the pins).
# Idempotent: does nothing when both binaries already exist.
# Heavy on 2 cores (~7 min cold, mostly kube-apiserver); runs under `nice`.
set -euo pipefail

script_dir=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
repo_root=$(cd "$script_dir/.." && pwd)
# shellcheck source=kube-binaries.env
. "$script_dir/kube-binaries.env"

out_dir="$repo_root/.cache/kube-binaries/${KUBE_VERSION}-${ETCD_VERSION}"

if [[ "${1:-}" == "--print-dir" ]]; then
    echo "$out_dir"
    exit 0
elif [[ $# -gt 0 ]]; then
    echo "usage: $0 [--print-dir]" >&2
    exit 2
fi

if [[ -x "$out_dir/kube-apiserver" && -x "$out_dir/etcd" ]]; then
    echo "kube-binaries: up to date in $out_dir"
    echo "$out_dir/kube-apiserver"
    echo "$out_dir/etcd"
    exit 0
fi

command -v go >/dev/null || { echo "kube-binaries: 'go' not found in PATH" >&2; exit 1; }

# Guard against the pins and the wrapper go.mod files drifting apart.
check_pin() { # module-dir module version
    if ! grep -Eq "^[[:space:]]*(require[[:space:]]+)?$2 $3\$" "$repo_root/tests/$1/go.mod"; then
        echo "kube-binaries: tests/$1/go.mod does not require $2 $3 (see scripts/kube-binaries.env)" >&2
        exit 1
    fi
}
check_pin kube-apiserver k8s.io/kubernetes "$KUBE_VERSION"
check_pin etcd go.etcd.io/etcd/server/v3 "$ETCD_VERSION"

mkdir -p "$out_dir"
start=$(date +%s)

export CGO_ENABLED=0
export GOTOOLCHAIN=local     # never try to download a toolchain
export GOFLAGS="-mod=readonly -buildvcs=false"
build_jobs=${KUBE_BINARIES_JOBS:-2}

# Stamp the Kubernetes version like hack/lib/version.sh does, so /version
# reports e.g. v1.37.2 instead of v0.0.0-master.
kube_ldflags="-s -w"
kube_major=${KUBE_VERSION#v}; kube_major=${kube_major%%.*}
kube_minor=${KUBE_VERSION#v*.}; kube_minor=${kube_minor%%.*}
for pkg in k8s.io/client-go/pkg/version k8s.io/component-base/version; do
    kube_ldflags+=" -X $pkg.gitVersion=$KUBE_VERSION -X $pkg.gitMajor=$kube_major"
    kube_ldflags+=" -X $pkg.gitMinor=$kube_minor -X $pkg.gitTreeState=clean"
done

build() { # name ldflags
    local name=$1 ldflags=$2 t0
    if [[ -x "$out_dir/$name" ]]; then
        echo "kube-binaries: $name already built"
        return 0
    fi
    t0=$(date +%s)
    echo "kube-binaries: building $name (CGO_ENABLED=0, -p $build_jobs) ..."
    # Build into a temporary name so an interrupted build never looks finished.
    (cd "$repo_root/tests/$name" &&
        nice -n 10 go build -p "$build_jobs" -trimpath -ldflags="$ldflags" \
            -o "$out_dir/$name.tmp" .) || {
        rc=$?
        rm -f "$out_dir/$name.tmp"
        echo "kube-binaries: FAILED: (cd tests/$name && go build -o $out_dir/$name .) exited $rc" >&2
        exit "$rc"
    }
    mv -f "$out_dir/$name.tmp" "$out_dir/$name"
    echo "kube-binaries: built $name in $(( $(date +%s) - t0 ))s"
}

build etcd "-s -w"
build kube-apiserver "$kube_ldflags"

echo "kube-binaries: done in $(( $(date +%s) - start ))s"
echo "$out_dir/kube-apiserver"
echo "$out_dir/etcd"
