#!/usr/bin/env bash
# Start a real etcd + kube-apiserver on random 127.0.0.1 ports, envtest-style.
#
#   scripts/kube-apiserver-up.sh DIR
#
# DIR is created if needed and holds everything: pki/, etcd-data/, certs/,
# *.log, *.pid, kubeconfig and env. On success it prints (and writes to DIR/env)
# shell-style lines:
#   KUBECONFIG=DIR/kubeconfig
#   KUBE_SERVER=https://127.0.0.1:PORT
#   ETCD_ENDPOINT=http://127.0.0.1:PORT
#   ETCD_PID=...
#   KUBE_APISERVER_PID=...
# Stop with scripts/kube-apiserver-down.sh DIR. On failure nothing is left
# running and the tail of the failing log is printed.
#
# Binaries: $TEST_ASSET_KUBE_APISERVER / $TEST_ASSET_ETCD (envtest's names) or
# the ones built by scripts/kube-binaries.sh.
# Knobs (env): KUBE_EVENT_TTL (1m), KUBE_ETCD_COMPACTION_INTERVAL (30s),
# KUBE_APISERVER_EXTRA_ARGS (word-split), KUBE_UP_TIMEOUT seconds (90).
set -Eeuo pipefail

if [[ $# -ne 1 ]]; then
    echo "usage: $0 DIR" >&2
    exit 2
fi

script_dir=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
mkdir -p "$1"
dir=$(cd "$1" && pwd)

bin_dir=$("$script_dir/kube-binaries.sh" --print-dir)
apiserver_bin=${TEST_ASSET_KUBE_APISERVER:-$bin_dir/kube-apiserver}
etcd_bin=${TEST_ASSET_ETCD:-$bin_dir/etcd}
for b in "$apiserver_bin" "$etcd_bin"; do
    if [[ ! -x "$b" ]]; then
        echo "kube-apiserver-up: $b not found; run scripts/kube-binaries.sh first" >&2
        exit 1
    fi
done
for f in etcd.pid kube-apiserver.pid; do
    if [[ -f "$dir/$f" ]] && kill -0 "$(cat "$dir/$f")" 2>/dev/null; then
        echo "kube-apiserver-up: $dir/$f is running; run kube-apiserver-down.sh $dir first" >&2
        exit 1
    fi
done

event_ttl=${KUBE_EVENT_TTL:-1m}
compaction_interval=${KUBE_ETCD_COMPACTION_INTERVAL:-30s}
timeout=${KUBE_UP_TIMEOUT:-90}

# A free loopback port: bind port 0 and release it (small race, as in envtest).
free_port() {
    python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1]); s.close()'
}

on_failure() {
    local rc=$?
    echo "kube-apiserver-up: failed (exit $rc); stopping what was started" >&2
    "$script_dir/kube-apiserver-down.sh" "$dir" >&2 || true
    exit "$rc"
}
trap on_failure ERR

# --- PKI (openssl): CA, apiserver serving cert, admin client cert, SA key ---
pki=$dir/pki
certs=$dir/certs
mkdir -p "$pki" "$certs"
ossl() { openssl "$@" 2>>"$dir/openssl.log"; }
if [[ ! -f "$pki/admin.crt" ]]; then
    ossl req -x509 -newkey rsa:2048 -nodes -days 3650 -sha256 \
        -keyout "$pki/ca.key" -out "$pki/ca.crt" -subj "/CN=kevents-test-ca" \
        -addext "basicConstraints=critical,CA:TRUE" -addext "keyUsage=critical,keyCertSign,cRLSign"
    # Serving cert; kube-apiserver picks up apiserver.crt/.key from --cert-dir.
    ossl req -newkey rsa:2048 -nodes -keyout "$certs/apiserver.key" -out "$pki/apiserver.csr" \
        -subj "/CN=kube-apiserver"
    printf '%s\n' "basicConstraints=CA:FALSE" "keyUsage=critical,digitalSignature,keyEncipherment" \
        "extendedKeyUsage=serverAuth" \
        "subjectAltName=IP:127.0.0.1,DNS:localhost,DNS:kubernetes,DNS:kubernetes.default,DNS:kubernetes.default.svc,IP:10.0.0.1" \
        >"$pki/apiserver.ext"
    ossl x509 -req -in "$pki/apiserver.csr" -CA "$pki/ca.crt" -CAkey "$pki/ca.key" -CAcreateserial \
        -days 3650 -sha256 -extfile "$pki/apiserver.ext" -out "$certs/apiserver.crt"
    # Admin client cert: O=system:masters bypasses RBAC.
    ossl req -newkey rsa:2048 -nodes -keyout "$pki/admin.key" -out "$pki/admin.csr" \
        -subj "/O=system:masters/CN=kevents-admin"
    printf '%s\n' "basicConstraints=CA:FALSE" "keyUsage=critical,digitalSignature,keyEncipherment" \
        "extendedKeyUsage=clientAuth" >"$pki/admin.ext"
    ossl x509 -req -in "$pki/admin.csr" -CA "$pki/ca.crt" -CAkey "$pki/ca.key" -CAcreateserial \
        -days 3650 -sha256 -extfile "$pki/admin.ext" -out "$pki/admin.crt"
    # Service-account token signing key (RSA).
    ossl genrsa -out "$pki/sa.key" 2048
    ossl rsa -in "$pki/sa.key" -pubout -out "$pki/sa.pub"
fi

wait_for() { # what pid log command...
    local what=$1 pid=$2 log=$3 i
    shift 3
    for ((i = 0; i < timeout * 4; i++)); do
        if "$@" >/dev/null 2>&1; then
            return 0
        fi
        if ! kill -0 "$pid" 2>/dev/null; then
            echo "kube-apiserver-up: $what exited; last lines of $log:" >&2
            tail -n 30 "$log" >&2
            return 1
        fi
        sleep 0.25
    done
    echo "kube-apiserver-up: $what not ready after ${timeout}s; last lines of $log:" >&2
    tail -n 30 "$log" >&2
    return 1
}

# --- etcd ---
etcd_port=$(free_port)
etcd_peer_port=$(free_port)
etcd_url=http://127.0.0.1:$etcd_port
mkdir -p -m 700 "$dir/etcd-data"
"$etcd_bin" \
    --name kevents-test \
    --data-dir "$dir/etcd-data" \
    --listen-client-urls "$etcd_url" \
    --advertise-client-urls "$etcd_url" \
    --listen-peer-urls "http://127.0.0.1:$etcd_peer_port" \
    --initial-advertise-peer-urls "http://127.0.0.1:$etcd_peer_port" \
    --initial-cluster "kevents-test=http://127.0.0.1:$etcd_peer_port" \
    --unsafe-no-fsync \
    </dev/null >"$dir/etcd.log" 2>&1 &
etcd_pid=$!
echo "$etcd_pid" >"$dir/etcd.pid"
wait_for etcd "$etcd_pid" "$dir/etcd.log" curl -fsS "$etcd_url/health"

# --- kube-apiserver ---
# --endpoint-reconciler-type none: k8s >= 1.3x rejects a loopback
# --advertise-address with the default lease reconciler ("may not be in the
# loopback range"); upstream's own test server sets "none" the same way.
api_port=$(free_port)
server=https://127.0.0.1:$api_port
# shellcheck disable=SC2086
"$apiserver_bin" \
    --etcd-servers "$etcd_url" \
    --cert-dir "$certs" \
    --secure-port "$api_port" \
    --bind-address 127.0.0.1 \
    --advertise-address 127.0.0.1 \
    --endpoint-reconciler-type none \
    --service-cluster-ip-range 10.0.0.0/24 \
    --allow-privileged=true \
    --authorization-mode RBAC \
    --disable-admission-plugins ServiceAccount \
    --client-ca-file "$pki/ca.crt" \
    --service-account-issuer https://kubernetes.default.svc \
    --service-account-key-file "$pki/sa.pub" \
    --service-account-signing-key-file "$pki/sa.key" \
    --event-ttl "$event_ttl" \
    --etcd-compaction-interval "$compaction_interval" \
    ${KUBE_APISERVER_EXTRA_ARGS:-} \
    </dev/null >"$dir/kube-apiserver.log" 2>&1 &
api_pid=$!
echo "$api_pid" >"$dir/kube-apiserver.pid"

b64() { base64 -w0 <"$1"; }
cat >"$dir/kubeconfig" <<EOF
apiVersion: v1
kind: Config
clusters:
- name: kevents-test
  cluster:
    server: $server
    certificate-authority-data: $(b64 "$pki/ca.crt")
users:
- name: kevents-admin
  user:
    client-certificate-data: $(b64 "$pki/admin.crt")
    client-key-data: $(b64 "$pki/admin.key")
contexts:
- name: kevents-test
  context:
    cluster: kevents-test
    user: kevents-admin
current-context: kevents-test
EOF

wait_for kube-apiserver "$api_pid" "$dir/kube-apiserver.log" \
    curl -fsS --cacert "$pki/ca.crt" --cert "$pki/admin.crt" --key "$pki/admin.key" "$server/readyz"

trap - ERR
cat >"$dir/env" <<EOF
KUBECONFIG=$dir/kubeconfig
KUBE_SERVER=$server
ETCD_ENDPOINT=$etcd_url
ETCD_PID=$etcd_pid
KUBE_APISERVER_PID=$api_pid
EOF
cat "$dir/env"
