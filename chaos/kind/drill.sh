#!/usr/bin/env bash
# shellcheck source-path=SCRIPTDIR
# Failover drills on the kind cluster of create-cluster.sh. Each run starts clean (a new store and
# sink, a new kevents-drill namespace), records the ground truth with a watch of its own, deploys
# chaos/kind/overlay, generates events at a steady rate, injects the fault while they flow, waits
# for the pipeline to drain, and then checks:
#   - the oracle (kevents-lab oracle, the same comparison as the local drills): 0 missing and
#     0 duplicated versions under (uid, resourceVersion);
#   - the fence log: no write by a stale leader after a newer epoch began;
#   - the handover time against the scenario's bar.
# It prints one PASS/FAIL line per run and a summary, and exits non-zero if any run failed.
#
#   chaos/kind/drill.sh SCENARIO|all [RUNS]
# Scenarios: delete-leader kill-leader drain-leader-node partition-leader rolling-restart
# Environment: RATE (events/s, 20), UPDATES (updates/s, 5), DURATION (s of generation, 90),
# WARMUP (s before the fault, 20), GRACEFUL_MAX_MS (5000), HARD_MAX_MS (derived from the lease).
# shellcheck source=lib.sh
source "$(dirname "$0")/lib.sh"
need kubectl docker jq awk

SCENARIOS=(delete-leader kill-leader drain-leader-node partition-leader rolling-restart)
RATE=${RATE:-20}
UPDATES=${UPDATES:-5}
DURATION=${DURATION:-90}
WARMUP=${WARMUP:-20}
# Graceful: the leader releases the Lease on SIGTERM; the 3 s handover bar of the local drills plus
# the API server -> kubelet -> SIGTERM path (measured from the delete/evict request) and sampling.
GRACEFUL_MAX_MS=${GRACEFUL_MAX_MS:-5000}
# Hard: nobody releases; a follower takes over once the lease expired by its own clock:
# lease_duration + 2 x retry_period, plus sampling.
HARD_MAX_MS=${HARD_MAX_MS:-$(((LEASE_DURATION_S + 2 * RETRY_PERIOD_S) * 1000 + 500))}

RUNS_DIR="$CHAOS_DIR/.runs"

usage() {
    echo "usage: $0 SCENARIO|all [RUNS]   (scenarios: ${SCENARIOS[*]})" >&2
    exit 2
}

[[ $# -ge 1 ]] || usage
if [[ $1 == all ]]; then
    selected=("${SCENARIOS[@]}")
else
    selected=("$1")
    [[ " ${SCENARIOS[*]} " == *" $1 "* ]] || usage
fi
runs=${2:-1}
[[ -x $KEVENTS_LAB ]] || die "$KEVENTS_LAB not found: cargo build --release --bin kevents-lab"
"$KEVENTS_LAB" oracle --help >/dev/null 2>&1 || die "$KEVENTS_LAB has no 'oracle' command (see chaos/README.md)"
kc get nodes >/dev/null || die "no cluster at context $KUBE_CONTEXT: run chaos/kind/create-cluster.sh"

# --- per-run plumbing -------------------------------------------------------------------------

BACKGROUND=()
stop_background() {
    local pid
    for pid in "${BACKGROUND[@]}"; do
        kill "$pid" 2>/dev/null || true
        wait "$pid" 2>/dev/null || true
    done
    BACKGROUND=()
}
cleanup() {
    stop_background
    # Never leave a node cordoned or a pod isolated behind.
    local node
    for node in $(kc get nodes -o jsonpath='{range .items[?(@.spec.unschedulable==true)]}{.metadata.name}{" "}{end}' 2>/dev/null); do
        kc uncordon "$node" >/dev/null 2>&1 || true
    done
    kc -n "$NS" label pods --all kevents.drill/isolated- >/dev/null 2>&1 || true
}
trap cleanup EXIT

# Removes the previous run's kevents (not the claim: its volume is reused) and events.
reset() {
    kc -n "$NS" delete deployment kevents --ignore-not-found --wait=true >/dev/null
    kc -n "$NS" wait --for=delete pod -l app.kubernetes.io/name=kevents --timeout=120s >/dev/null 2>&1 || true
    kc -n "$NS" delete lease "$LEASE" --ignore-not-found >/dev/null
    kc delete namespace "$DRILL_NS" --ignore-not-found --wait=true >/dev/null
    kc create namespace "$DRILL_NS" >/dev/null
}

# Ground truth: every event version the API server stored in kevents-drill, from a watch that
# starts before kevents does and outlives the drill. Raw watch output now, keys at the end.
start_truth() {
    local raw=$1
    kc -n "$DRILL_NS" get events --watch --output-watch-events -o json >"$raw" 2>"$raw.err" &
    BACKGROUND+=($!)
    TRUTH_PID=$!
}

# The truth as the oracle reads it: one {"uid", "resourceVersion", "name"} line per ADDED or
# MODIFIED version.
write_truth() {
    jq -c 'select(.type == "ADDED" or .type == "MODIFIED")
        | {uid: .object.metadata.uid, resourceVersion: .object.metadata.resourceVersion,
           name: .object.metadata.name}' "$1" >"$2"
}

# Lease timeline: "<ms> <holder> <terminating pods>" every ~200 ms.
start_timeline() {
    local out=$1
    (
        while :; do
            printf '%s %s %s\n' "$(now_ms)" "$(lease_holder | sed 's/^$/-/')" \
                "$(kc -n "$NS" get pods -l app.kubernetes.io/name=kevents -o json 2>/dev/null |
                    jq -r '[.items[] | select(.metadata.deletionTimestamp != null) | .metadata.name] | join(",")')"
            sleep 0.2
        done
    ) >"$out" &
    BACKGROUND+=($!)
}

# Writes a marker event and waits until the truth watch has seen it (the watch is live).
await_truth_live() {
    local run=$1 raw=$2 deadline
    kc -n "$DRILL_NS" create --validate=false -f - -o name >/dev/null <<JSON
{"apiVersion":"v1","kind":"Event","metadata":{"name":"drill-$run-start","namespace":"$DRILL_NS"},
 "involvedObject":{"apiVersion":"v1","kind":"ConfigMap","name":"drill-target","namespace":"$DRILL_NS"},
 "reason":"DrillStart","message":"run $run","type":"Normal","source":{"component":"kevents-drill"},
 "firstTimestamp":"$(date -u +%Y-%m-%dT%H:%M:%SZ)","lastTimestamp":"$(date -u +%Y-%m-%dT%H:%M:%SZ)","count":1}
JSON
    deadline=$(($(date +%s) + 30))
    until grep -q "\"drill-$run-start\"" "$raw"; do
        (($(date +%s) < deadline)) || die "the ground-truth watch saw nothing within 30s"
        sleep 0.2
    done
}

deploy_run() {
    local run=$1 dir=$2
    cat >"$dir/kustomization.yaml" <<YAML
apiVersion: kustomize.config.k8s.io/v1beta1
kind: Kustomization
resources:
  - ../../overlay
configMapGenerator:
  - name: kevents-env
    behavior: merge
    literals:
      - KEVENTS_RUN=$run
YAML
    kc apply -k "$dir" >/dev/null
    kc -n "$NS" rollout status deployment/kevents --timeout=180s >/dev/null
}

# Waits until the generator's events are all shipped: the leader's outbox is empty, and the truth
# watch and the sink stop growing.
await_drained() {
    local sink=$1 raw=$2 deadline leader pod outbox rows=-1 facts=-1 stable=0
    deadline=$(($(date +%s) + 180))
    while (($(date +%s) < deadline)); do
        leader=$(lease_holder)
        pod=$(pod_of_identity "$leader")
        outbox=$( [[ -n $leader ]] && metric "$pod" kevents_outbox_events || echo x)
        local now_rows now_facts
        now_rows=$(cat "$sink"* 2>/dev/null | wc -l | tr -d ' ')
        now_facts=$(wc -c <"$raw" | tr -d ' ')
        if [[ $outbox == 0 && $now_rows == "$rows" && $now_facts == "$facts" ]]; then
            stable=$((stable + 1))
            ((stable >= 3)) && return 0
        else
            stable=0
        fi
        rows=$now_rows
        facts=$now_facts
        sleep 2
    done
    log "not drained after 180s (outbox=$outbox rows=$rows truth=$facts)"
    return 1
}

# Exit 0 when no stale leader wrote: once an epoch began, no line of an older epoch follows, and
# every epoch has one writer.
check_fence() {
    local fence=$1
    [[ -s $fence ]] || { echo "fence log empty"; return 1; }
    sort -n -k1,1 -s "$fence" | awk '
        NF != 3 { next }
        {
            if (($3 in owner) && owner[$3] != $2) { printf "epoch %s written by %s and %s\n", $3, owner[$3], $2; bad = 1 }
            owner[$3] = $2
            if (started && $3 + 0 < max) { printf "stale write at %s by %s (epoch %s after epoch %s)\n", $1, $2, $3, max; bad = 1 }
            if (!started || $3 + 0 > max) { max = $3 + 0; started = 1 }
        }
        END { exit bad }'
}

# --- faults -----------------------------------------------------------------------------------
# Each prints the handover time in ms (fault -> a new holder observed), or fails.

handover_after() {
    local old=$1 t0=$2 bar=$3 new
    new=$(wait_new_holder "$old" $(((bar / 1000) + 60))) || { echo "no new leader within $(((bar / 1000) + 60))s" >&2; return 1; }
    echo "$(($(now_ms) - t0)) $new"
}

fault_delete_leader() {
    local leader=$1 t0
    t0=$(now_ms)
    kc -n "$NS" delete pod "$(pod_of_identity "$leader")" --wait=false >/dev/null
    handover_after "$leader" "$t0" "$GRACEFUL_MAX_MS"
}

fault_kill_leader() {
    local leader=$1 pod node pid t0
    pod=$(pod_of_identity "$leader")
    node=$(node_of_pod "$pod")
    pid=$(container_pid "$pod")
    t0=$(now_ms)
    docker exec "$node" kill -9 "$pid"
    handover_after "$leader" "$t0" "$HARD_MAX_MS"
}

fault_drain_leader_node() {
    local leader=$1 node t0 out
    node=$(node_of_pod "$(pod_of_identity "$leader")")
    t0=$(now_ms)
    kc cordon "$node" >/dev/null
    kc drain "$node" --ignore-daemonsets --delete-emptydir-data --timeout=180s >/dev/null 2>&1 &
    local drain=$!
    out=$(handover_after "$leader" "$t0" "$GRACEFUL_MAX_MS") || { wait "$drain" || true; kc uncordon "$node" >/dev/null; return 1; }
    wait "$drain" || log "drain of $node did not finish"
    kc uncordon "$node" >/dev/null
    echo "$out"
}

fault_partition_leader() {
    local leader=$1 pod node ip t0 out gauge deadline
    pod=$(pod_of_identity "$leader")
    node=$(node_of_pod "$pod")
    ip=$(kc -n "$NS" get pod "$pod" -o jsonpath='{.status.podIP}')
    t0=$(now_ms)
    kc -n "$NS" label pod "$pod" kevents.drill/isolated=true >/dev/null
    # Some policy engines let established connections live on; drop the pod's tracked flows so its
    # open watch and keep-alive connections to the API server are judged by the policy too.
    docker exec "$node" conntrack -D -s "$ip" >/dev/null 2>&1 || true
    out=$(handover_after "$leader" "$t0" "$HARD_MAX_MS") || { kc -n "$NS" label pod "$pod" kevents.drill/isolated- >/dev/null; return 1; }
    # The cut-off leader must have stepped down by itself (renew deadline), not merely lost the Lease.
    deadline=$(($(date +%s) + 15))
    gauge=$(metric "$pod" kevents_leader)
    while [[ $gauge != 0 ]] && (($(date +%s) < deadline)); do
        sleep 0.5
        gauge=$(metric "$pod" kevents_leader)
    done
    kc -n "$NS" label pod "$pod" kevents.drill/isolated- >/dev/null
    [[ $gauge == 0 ]] || { echo "the cut-off leader $pod still reports kevents_leader=$gauge" >&2; return 1; }
    echo "$out"
}

# Rolling restart: several handovers; prints the longest, each measured from the first sample
# that shows the leader's pod terminating (or the Lease released) to the next holder.
fault_rolling_restart() {
    local leader=$1 timeline=$2 t0
    t0=$(now_ms)
    kc -n "$NS" rollout restart deployment/kevents >/dev/null
    kc -n "$NS" rollout status deployment/kevents --timeout=600s >/dev/null
    wait_any_holder 60 >/dev/null || { echo "no leader after the rollout" >&2; return 1; }
    sleep 1
    awk -v t0="$t0" '
        $1 < t0 { holder = $2; next }
        {
            pod = holder; sub(/-[^-]*$/, "", pod)
            terminating = ("," $3 ",") ~ ("," pod ",")
            if (start == 0 && holder != "-" && ($2 == "-" || terminating)) start = $1
            if ($2 != "-" && $2 != holder) {
                if (start == 0) start = $1
                if ($1 - start > worst) worst = $1 - start
                n++; start = 0; holder = $2
            }
        }
        END {
            if (n == 0) { print "no handover seen" > "/dev/stderr"; exit 1 }
            printf "%d %d-handovers\n", worst, n
        }' "$timeline"
}

# --- one run ----------------------------------------------------------------------------------

SUMMARY=()
FAILED=0

run_once() {
    local scenario=$1 run dir raw truth timeline sink fence gen leader result ms bar verdict=PASS notes=()
    run="$(date -u +%Y%m%d%H%M%S)-$scenario"
    dir="$RUNS_DIR/$run"
    mkdir -p "$dir"
    raw="$dir/watch.json"
    truth="$dir/truth.ndjson"
    timeline="$dir/lease-timeline.txt"
    sink="$SHARED_DIR/$run/events.ndjson"
    fence="$SHARED_DIR/$run-fence.log"
    case $scenario in
        delete-leader | drain-leader-node | rolling-restart) bar=$GRACEFUL_MAX_MS ;;
        *) bar=$HARD_MAX_MS ;;
    esac
    log "[$run] property: 0 missing, 0 duplicated, no stale-leader write, handover <= ${bar} ms"

    reset
    start_truth "$raw"
    await_truth_live "$run" "$raw"
    deploy_run "$run" "$dir"
    leader=$(wait_any_holder 60) || die "no leader within 60s"
    start_timeline "$timeline"
    "$CHAOS_DIR/generate.sh" "$run" "$RATE" "$DURATION" "$UPDATES" 2>>"$dir/generator.log" &
    gen=$!
    BACKGROUND+=("$gen")
    sleep "$WARMUP"
    leader=$(lease_holder)
    log "[$run] fault: $scenario on $leader"
    if result=$("fault_${scenario//-/_}" "$leader" "$timeline" 2>>"$dir/fault.log"); then
        ms=${result%% *}
        notes+=("handover=${ms}ms (${result#* })")
        ((ms <= bar)) || { verdict=FAIL; notes+=("handover over ${bar}ms"); }
    else
        verdict=FAIL
        ms=-
        notes+=("fault: $(tail -n 1 "$dir/fault.log")")
    fi
    wait "$gen" || true
    await_drained "$sink" "$raw" || { verdict=FAIL; notes+=("not drained"); }
    kill -0 "$TRUTH_PID" 2>/dev/null || { verdict=FAIL; notes+=("ground-truth watch ended early: truth incomplete"); }
    stop_background
    write_truth "$raw" "$truth"

    if "$KEVENTS_LAB" oracle --truth "$truth" --delivered "$sink" >"$dir/oracle.txt" 2>&1; then
        notes+=("oracle: $(tr '\n' ' ' <"$dir/oracle.txt")")
    else
        verdict=FAIL
        notes+=("oracle FAILED: $(tr '\n' ' ' <"$dir/oracle.txt")")
    fi
    if check_fence "$fence" >"$dir/fence.txt"; then
        notes+=("fence: ok")
    else
        verdict=FAIL
        notes+=("fence: $(head -n 3 "$dir/fence.txt" | tr '\n' ';')")
    fi
    kc -n "$NS" logs -l app.kubernetes.io/name=kevents --all-containers --prefix --tail=-1 >"$dir/kevents.log" 2>&1 || true

    [[ $verdict == PASS ]] || FAILED=$((FAILED + 1))
    printf '%s %s %s\n' "$verdict" "$run" "${notes[*]}"
    SUMMARY+=("$(printf '%s\t%s\t%s' "$scenario" "$verdict" "$ms")")
}

for scenario in "${selected[@]}"; do
    for ((i = 1; i <= runs; i++)); do
        run_once "$scenario"
    done
done

echo
printf 'scenario\tverdict\thandover_ms\n' | tee "$RUNS_DIR/summary.tsv"
printf '%s\n' "${SUMMARY[@]}" | tee -a "$RUNS_DIR/summary.tsv"
((FAILED == 0)) || { log "$FAILED run(s) failed; details in $RUNS_DIR"; exit 1; }
