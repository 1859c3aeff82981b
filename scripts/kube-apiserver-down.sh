#!/usr/bin/env bash
# Stop the kube-apiserver and etcd started by scripts/kube-apiserver-up.sh DIR.
#
#   scripts/kube-apiserver-down.sh DIR [--clean]
#
# Sends SIGTERM to the recorded pids (apiserver first), waits up to 10 s, then
# SIGKILL. Only a pid whose command line still names the expected binary is
# signalled. --clean also removes DIR. Safe to run twice.
set -euo pipefail

if [[ $# -lt 1 || $# -gt 2 || ( $# -eq 2 && "$2" != "--clean" ) ]]; then
    echo "usage: $0 DIR [--clean]" >&2
    exit 2
fi
dir=$1

stop() { # pidfile name
    local pidfile=$1 name=$2 pid i
    [[ -f "$pidfile" ]] || return 0
    pid=$(cat "$pidfile")
    if [[ -n "$pid" ]] && kill -0 "$pid" 2>/dev/null &&
        tr '\0' ' ' <"/proc/$pid/cmdline" 2>/dev/null | grep -q -- "$name"; then
        kill -TERM "$pid" 2>/dev/null || true
        for ((i = 0; i < 40; i++)); do
            kill -0 "$pid" 2>/dev/null || break
            sleep 0.25
        done
        if kill -0 "$pid" 2>/dev/null; then
            echo "kube-apiserver-down: $name ($pid) ignored SIGTERM; sending SIGKILL" >&2
            kill -KILL "$pid" 2>/dev/null || true
        fi
        # Reap it if it is our child; otherwise wait until it is gone.
        wait "$pid" 2>/dev/null || true
        for ((i = 0; i < 40; i++)); do
            kill -0 "$pid" 2>/dev/null || break
            sleep 0.25
        done
        echo "kube-apiserver-down: stopped $name ($pid)"
    fi
    rm -f "$pidfile"
}

stop "$dir/kube-apiserver.pid" kube-apiserver
stop "$dir/etcd.pid" etcd

if [[ "${2:-}" == "--clean" ]]; then
    rm -rf "$dir"
fi
