#!/usr/bin/env bash
# shellcheck source-path=SCRIPTDIR
# Deploys manifests/overlays/kind (every event of the cluster into a file sink) and waits for three
# ready replicas and a leader. Rows appear on the host in $KEVENTS_SHARED_DIR/events.ndjson.
#   chaos/kind/deploy.sh
# shellcheck source=lib.sh
source "$(dirname "$0")/lib.sh"
need kubectl

kc apply -k "$REPO_DIR/manifests/overlays/kind"
kc -n "$NS" rollout status deployment/kevents --timeout=180s
holder=$(wait_any_holder 60) || die "no replica took the Lease within 60s"
log "leader: $holder"
log "rows: $SHARED_DIR/events.ndjson"
