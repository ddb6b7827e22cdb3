#!/usr/bin/env bash
# Where Courier's CPU goes in one filter configuration: `perf record` on the proxy (1
# worker) under the same load as run.sh, then the top of `perf report` by symbol.
#
#   bench/filters/profile.sh jwt_authn [SECONDS]
set -euo pipefail
ROOT="$(cd "$(dirname "$0")/../.." && pwd)"
CONFIG="${1:?configuration: none, jwt_authn, ext_authz, ratelimit or rbac}"
SECONDS_="${2:-10}"
TARGET_DIR="${CARGO_TARGET_DIR:-$ROOT/target}"
WORK="$(mktemp -d)"
trap 'kill $(jobs -p) 2>/dev/null || true; rm -rf "$WORK"' EXIT
export PX_PORT=18300 ADMIN_PORT=18301 UP_PORT=18380 AUTHZ_PORT=18381 RLS_PORT=18382
cat >"$WORK/upstream.conf" <<CONF
worker_processes 1;
pid $WORK/upstream.pid;
error_log /dev/null;
events { worker_connections 4096; }
http { access_log off; keepalive_requests 1000000;
  server { listen 127.0.0.1:$UP_PORT; location / { return 200 "ok"; } } }
CONF
nginx -c "$WORK/upstream.conf" -g "daemon off;" &
"$TARGET_DIR/release/filter-services" serve "$AUTHZ_PORT" "$RLS_PORT" &
"$TARGET_DIR/release/filter-services" jwt "$WORK"
JWKS="$(cat "$WORK/jwks.json")"; export JWKS
# shellcheck source=bench/filters/bootstrap.sh
source "$(dirname "$0")/bootstrap.sh"
filters_bootstrap "$CONFIG" >"$WORK/c.yaml"
"$TARGET_DIR/release/courier" -c "$WORK/c.yaml" --concurrency 1 -l error &
PID=$!
until curl -s -o /dev/null "http://127.0.0.1:$PX_PORT/"; do sleep 0.1; done
wrk -t1 -c50 -d"$((SECONDS_ + 2))s" -H "Authorization: Bearer $(cat "$WORK/token")" \
  "http://127.0.0.1:$PX_PORT/" >/dev/null &
sleep 1
perf record -q -g -p "$PID" -o "$WORK/perf.data" -- sleep "$SECONDS_" 2>/dev/null
perf report -i "$WORK/perf.data" --no-children --sort dso,symbol --stdio 2>/dev/null \
  | grep -E '^ +[0-9]' | head -40
