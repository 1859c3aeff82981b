# shellcheck shell=bash disable=SC2034
# Shared settings and helpers of the kind drills. Sourced, never run.

set -euo pipefail

CHAOS_DIR=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
REPO_DIR=$(cd "$CHAOS_DIR/../.." && pwd)

# The kind cluster, its kubectl context, and the host directory every node mounts at
# /kevents-shared (the store, the file sink and the fence log of every run live there).
KIND_CLUSTER=${KIND_CLUSTER:-kevents}
KUBE_CONTEXT=${KUBE_CONTEXT:-kind-$KIND_CLUSTER}
SHARED_DIR=${KEVENTS_SHARED_DIR:-$HOME/.cache/kevents-kind/shared}
IMAGE=${KEVENTS_IMAGE:-kevents:dev}
# kevents-lab (built on the host) holds the oracle the local drills use.
KEVENTS_LAB=${KEVENTS_LAB:-$REPO_DIR/target/release/kevents-lab}

NS=kevents
DRILL_NS=kevents-drill
LEASE=kevents
# Lease timings of the deployed config (the defaults), for the failover bars.
LEASE_DURATION_S=15
RETRY_PERIOD_S=2

log() { printf '%s %s\n' "$(date -u +%H:%M:%S)" "$*" >&2; }
die() { log "error: $*"; exit 1; }

need() {
    local tool
    for tool in "$@"; do
        command -v "$tool" >/dev/null || die "$tool is required but not on PATH"
    done
}

kc() { kubectl --context "$KUBE_CONTEXT" "$@"; }

# Milliseconds since the epoch (GNU date, else perl for BSD/macOS date).
now_ms() {
    local ms
    ms=$(date +%s%3N)
    if [[ $ms == *N ]]; then
        ms=$(perl -MTime::HiRes=time -e 'printf "%d\n", time * 1000')
    fi
    printf '%s\n' "$ms"
}

# The Lease holder's identity ("" when released or absent).
lease_holder() {
    kc -n "$NS" get lease "$LEASE" -o jsonpath='{.spec.holderIdentity}' 2>/dev/null || true
}

# kevents' identity is "$POD_NAME-<5-character suffix>".
pod_of_identity() { printf '%s\n' "${1%-*}"; }

node_of_pod() { kc -n "$NS" get pod "$1" -o jsonpath='{.spec.nodeName}'; }

# One sample of a metric of one replica, through the API server's pod proxy ("" if unreachable).
metric() {
    local pod=$1 name=$2
    kc get --raw "/api/v1/namespaces/$NS/pods/$pod:9102/proxy/metrics" 2>/dev/null |
        awk -v name="$name" '$1 == name { print $2; exit }'
}

# Waits until a holder other than $1 (and not empty) holds the Lease; prints it.
wait_new_holder() {
    local old=$1 timeout_s=$2 holder deadline
    deadline=$(($(date +%s) + timeout_s))
    while (($(date +%s) < deadline)); do
        holder=$(lease_holder)
        if [[ -n $holder && $holder != "$old" ]]; then
            printf '%s\n' "$holder"
            return 0
        fi
        sleep 0.1
    done
    return 1
}

# Waits until some replica holds the Lease; prints its identity.
wait_any_holder() { wait_new_holder "" "$1"; }

# The container id and the host pid of a pod's kevents container, on its kind node.
container_pid() {
    local pod=$1 node cid
    node=$(node_of_pod "$pod")
    cid=$(docker exec "$node" crictl ps -q --name '^kevents$' --label "io.kubernetes.pod.name=$pod")
    [[ -n $cid ]] || die "no running kevents container for pod $pod on $node"
    docker exec "$node" crictl inspect --output go-template --template '{{.info.pid}}' "$cid"
}
