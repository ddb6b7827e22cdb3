#!/usr/bin/env bash
# Quickstart: builds Courier, then runs the bundled control plane (courier-cp) on
# examples/cp/resources.yaml, a demo upstream on 127.0.0.1:8080, and a courier proxy that
# takes its whole configuration from courier-cp over ADS (examples/cp/envoy-ads.yaml).
# Ctrl-C stops everything.
set -euo pipefail
cd "$(dirname "$0")/.."

cargo build --release -p courier -p courier-control-plane
bin="${CARGO_TARGET_DIR:-target}/release"
logs=$(mktemp -d)
pids=()
cleanup() { for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done; }
trap cleanup EXIT INT TERM

wait_for() { # url
  for _ in $(seq 1 100); do
    curl -fs "$1" >/dev/null 2>&1 && return 0
    sleep 0.1
  done
  echo "timed out waiting for $1 (logs in $logs)" >&2
  return 1
}

python3 -m http.server 8080 --bind 127.0.0.1 >"$logs/upstream.log" 2>&1 &
pids+=($!)
"$bin/courier-cp" --listen 127.0.0.1:18000 --resources examples/cp/resources.yaml \
  --admin 127.0.0.1:18001 >"$logs/courier-cp.log" 2>&1 &
pids+=($!)
"$bin/courier" -c examples/cp/envoy-ads.yaml >"$logs/courier.log" 2>&1 &
pids+=($!)

wait_for http://127.0.0.1:9901/ready

cat <<MSG

Courier is LIVE, configured over ADS by courier-cp.

  curl http://127.0.0.1:10000/            # HTTP listener -> route demo-route -> cluster demo
  curl http://127.0.0.1:10001/            # TCP proxy listener -> cluster demo
  curl http://127.0.0.1:9901/config_dump  # courier's admin: what it received
  curl http://127.0.0.1:18001/status      # courier-cp: what each node ACKed or NACKed

Edit examples/cp/resources.yaml (e.g. add an endpoint or a listener): courier-cp pushes
the new version within a second and courier applies it live.
Logs: $logs   —   Ctrl-C to stop.
MSG
wait
