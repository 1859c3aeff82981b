#!/usr/bin/env bash
# shellcheck source-path=SCRIPTDIR
# Writes core/v1 Events into the namespace kevents-drill at a steady rate: every second RATE new
# events, and UPDATES of the previous second's events updated (count and lastTimestamp, so a new
# resourceVersion of the same uid). Stops after DURATION seconds.
#   chaos/kind/generate.sh RUN_ID [RATE] [DURATION] [UPDATES]
# shellcheck source=lib.sh
source "$(dirname "$0")/lib.sh"
need kubectl

run=${1:?usage: generate.sh RUN_ID [RATE] [DURATION] [UPDATES]}
rate=${2:-20}
duration=${3:-90}
updates=${4:-5}
((updates <= rate)) || die "UPDATES ($updates) must not exceed RATE ($rate)"

event() {
    local name=$1 ts=$2
    printf '{"apiVersion":"v1","kind":"Event","metadata":{"name":"%s","namespace":"%s"},' "$name" "$DRILL_NS"
    printf '"involvedObject":{"apiVersion":"v1","kind":"ConfigMap","name":"drill-target","namespace":"%s"},' "$DRILL_NS"
    printf '"reason":"DrillTick","message":"run %s event %s","type":"Normal",' "$run" "$name"
    printf '"source":{"component":"kevents-drill"},"firstTimestamp":"%s","lastTimestamp":"%s","count":1}' "$ts" "$ts"
}

seq=0
previous=()
end=$(($(date +%s) + duration))
while (($(date +%s) < end)); do
    tick=$(now_ms)
    ts=$(date -u +%Y-%m-%dT%H:%M:%SZ)
    names=()
    body='{"apiVersion":"v1","kind":"List","items":['
    for ((i = 0; i < rate; i++)); do
        seq=$((seq + 1))
        name="drill-$run-$seq"
        names+=("$name")
        ((i == 0)) || body+=','
        body+=$(event "$name" "$ts")
    done
    body+=']}'
    printf '%s' "$body" | kc create --validate=false -f - -o name >/dev/null ||
        log "generator: a create failed (counted by the oracle only if the API server stored it)"
    if ((updates > 0 && ${#previous[@]} > 0)); then
        kc -n "$DRILL_NS" patch event "${previous[@]:0:updates}" --type merge \
            -p "{\"count\":2,\"lastTimestamp\":\"$ts\"}" -o name >/dev/null ||
            log "generator: an update failed"
    fi
    previous=("${names[@]}")
    # Sleep out the rest of the second.
    elapsed=$(($(now_ms) - tick))
    if ((elapsed < 1000)); then
        sleep "$(printf '0.%03d' $((1000 - elapsed)))"
    fi
done
log "generator: $seq events created"
