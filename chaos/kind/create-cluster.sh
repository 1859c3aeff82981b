#!/usr/bin/env bash
# shellcheck source-path=SCRIPTDIR
# Creates the kind cluster of the drills (one control plane, three workers, all mounting the host
# directory $KEVENTS_SHARED_DIR at /kevents-shared), builds the kevents image with Docker and loads
# it into the cluster. Needs docker, kind and kubectl.
#   chaos/kind/create-cluster.sh
# shellcheck source=lib.sh
source "$(dirname "$0")/lib.sh"
need docker kind kubectl

mkdir -p "$SHARED_DIR"
# The pods run as 65534; the host directory is theirs to write.
chmod 0777 "$SHARED_DIR"

config=$(mktemp)
trap 'rm -f "$config"' EXIT
{
    echo "kind: Cluster"
    echo "apiVersion: kind.x-k8s.io/v1alpha4"
    echo "nodes:"
    for role in control-plane worker worker worker; do
        echo "  - role: $role"
        echo "    extraMounts:"
        echo "      - hostPath: $SHARED_DIR"
        echo "        containerPath: /kevents-shared"
    done
} >"$config"

if kind get clusters 2>/dev/null | grep -qx "$KIND_CLUSTER"; then
    log "kind cluster $KIND_CLUSTER exists"
else
    log "creating kind cluster $KIND_CLUSTER (shared directory $SHARED_DIR)"
    kind create cluster --name "$KIND_CLUSTER" --config "$config" --wait 120s
fi

log "building $IMAGE"
docker build -t "$IMAGE" "$REPO_DIR"
log "loading $IMAGE into $KIND_CLUSTER"
kind load docker-image "$IMAGE" --name "$KIND_CLUSTER"
log "done: deploy with chaos/kind/deploy.sh, drill with chaos/kind/drill.sh"
