#!/usr/bin/env bash
# shellcheck source-path=SCRIPTDIR
# Deletes the drills' kind cluster and what the pods wrote to the shared directory (files owned by
# uid 65534, removed from inside a node, which runs as root).
#   chaos/kind/delete-cluster.sh
# shellcheck source=lib.sh
source "$(dirname "$0")/lib.sh"
need docker kind

if kind get clusters 2>/dev/null | grep -qx "$KIND_CLUSTER"; then
    docker exec "$KIND_CLUSTER-control-plane" sh -c 'rm -rf /kevents-shared/* /kevents-shared/.[!.]*' || true
    kind delete cluster --name "$KIND_CLUSTER"
fi
rmdir "$SHARED_DIR" 2>/dev/null || log "left $SHARED_DIR (not empty)"
