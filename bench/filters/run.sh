#!/usr/bin/env bash
# Filter benchmark: Courier vs Envoy 1.40 in one run, 1 worker each, the same bootstrap for
# both in each configuration (bench/filters/bootstrap.sh): no filter (the reference),
# jwt_authn (local JWKS, an RS256 token on every request), ext_authz (a gRPC authorization
# service on localhost), the global rate limit filter (a gRPC rate limit service, never
# over the limit) and RBAC with the xDS matcher API. HTTP/1.1 keep-alive with wrk.
#
# Before measuring, each configuration is checked on both proxies: a request the filter must
# refuse is refused (401, 403, 429, 403), a good one passes, and the filter's counters move;
# after measuring, the filter's counter must have grown by at least the requests wrk made and
# wrk must have seen no error and no non-2xx answer. The script fails otherwise.
# Prints requests/s, p50/p99, the proxy's CPU per request (user and kernel microseconds) and
# Courier/Envoy ratios. Not a test: numbers depend on the machine.
#
#   bench/filters/run.sh                          # every configuration, 15 s each
#   CONFIGS="none jwt_authn" DURATION=5 bench/filters/run.sh
#   PROXY_CPU=0 LOAD_CPU=1 bench/filters/run.sh   # proxy on CPU 0, the rest on CPU 1
set -euo pipefail

ROOT="$(cd "$(dirname "$0")/../.." && pwd)"
CONFIGS="${CONFIGS:-none jwt_authn ext_authz ratelimit rbac}"
CONNS="${CONNS:-50}"
DURATION="${DURATION:-15}"
TARGET_DIR="${CARGO_TARGET_DIR:-$ROOT/target}"
WORK="$(mktemp -d)"
trap 'kill $(jobs -p) 2>/dev/null || true; rm -rf "$WORK"' EXIT

need() { command -v "$1" >/dev/null 2>&1; }
if ! need wrk || ! need nginx || ! need bc; then
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq wrk nginx-light bc >/dev/null
fi
need envoy || { echo "envoy (1.40) is needed on PATH" >&2; exit 1; }

(cd "$ROOT" && CARGO_TARGET_DIR="$TARGET_DIR" cargo build --release -q \
  -p courier --bin courier -p courier-bench-filters --bin filter-services)
COURIER="$TARGET_DIR/release/courier"
SERVICES="$TARGET_DIR/release/filter-services"

# Optional pinning: the proxy on PROXY_CPU, wrk, the upstream and the services on LOAD_CPU
# (taskset execs its command: the proxy's pid stays the one measured).
PROXY_PIN=() LOAD_PIN=()
[ -n "${PROXY_CPU:-}" ] && PROXY_PIN=(taskset -c "$PROXY_CPU")
[ -n "${LOAD_CPU:-}" ] && LOAD_PIN=(taskset -c "$LOAD_CPU")

export PX_PORT=18200 ADMIN_PORT=18201 UP_PORT=18280 AUTHZ_PORT=18281 RLS_PORT=18282

# The upstream: nginx with a tiny fixed response, as bench/http's.
cat >"$WORK/upstream.conf" <<EOF
worker_processes 1;
pid $WORK/upstream.pid;
error_log /dev/null;
events { worker_connections 4096; }
http {
  access_log off;
  keepalive_requests 1000000;
  server { listen 127.0.0.1:$UP_PORT; location / { return 200 "ok"; } }
}
EOF
"${LOAD_PIN[@]}" nginx -c "$WORK/upstream.conf" -g "daemon off;" &
"${LOAD_PIN[@]}" "$SERVICES" serve "$AUTHZ_PORT" "$RLS_PORT" &
"$SERVICES" jwt "$WORK"
JWKS="$(cat "$WORK/jwks.json")"
TOKEN="$(cat "$WORK/token")"
export JWKS

# shellcheck source=bench/filters/bootstrap.sh
source "$(dirname "$0")/bootstrap.sh"

fail() { echo "FAIL: $*" >&2; exit 1; }

start_proxy() { # name config
  filters_bootstrap "$2" >"$WORK/$1-$2.yaml"
  case "$1" in
    courier) "${PROXY_PIN[@]}" "$COURIER" -c "$WORK/$1-$2.yaml" --concurrency 1 -l error \
      >"$WORK/$1.log" 2>&1 & ;;
    envoy) "${PROXY_PIN[@]}" envoy -c "$WORK/$1-$2.yaml" --concurrency 1 -l error \
      --use-dynamic-base-id >"$WORK/$1.log" 2>&1 & ;;
  esac
  PID=$!
  for _ in $(seq 100); do
    curl -s -o /dev/null "http://127.0.0.1:$ADMIN_PORT/ready" \
      && curl -s -o /dev/null "http://127.0.0.1:$PX_PORT/" && return 0
    kill -0 "$PID" 2>/dev/null || break
    sleep 0.1
  done
  cat "$WORK/$1.log" >&2
  fail "$1 did not start with $2"
}

stop_proxy() {
  kill "$PID" 2>/dev/null || true
  wait "$PID" 2>/dev/null || true
}

# The status of one request: path [curl args...].
status() {
  local path="$1"; shift
  curl -s -o /dev/null -w '%{http_code}' "$@" "http://127.0.0.1:$PX_PORT$path"
}
expect() { # what want path [curl args...]
  local what="$1" want="$2" got; shift 2
  got="$(status "$@")"
  [ "$got" = "$want" ] || fail "$PROXY_NAME/$CONFIG: $what: got $got, want $want"
}
# A counter's value from /stats (0 when absent).
counter() {
  curl -s "http://127.0.0.1:$ADMIN_PORT/stats" | awk -v n="$1:" '$1 == n {print $2; f=1} END {if (!f) print 0}'
}
AUTH=(-H "Authorization: Bearer $TOKEN")

# The counter that proves the filter ran on a request, per configuration.
proof_counter() {
  case "$1" in
    none) echo "http.bench.downstream_rq_2xx" ;;
    jwt_authn) echo "http.bench.jwt_authn.allowed" ;;
    ext_authz) echo "http.bench.ext_authz.ok" ;;
    ratelimit) echo "cluster.up.ratelimit.ok" ;;
    rbac) echo "http.bench.rbac.allowed" ;;
  esac
}

# The filter really runs: what it must refuse is refused, what it lets through reaches the
# upstream, and its counter moves.
check() { # config
  local c0 c1 proof
  proof="$(proof_counter "$1")"
  c0="$(counter "$proof")"
  expect "allowed request" 200 / "${AUTH[@]}"
  case "$1" in
    jwt_authn)
      expect "no token" 401 /
      expect "bad signature" 401 / -H "Authorization: Bearer ${TOKEN%?????}AAAAA" ;;
    ext_authz) expect "denied path" 403 /deny "${AUTH[@]}" ;;
    ratelimit) expect "over the limit" 429 / "${AUTH[@]}" -H "Host: over.example" ;;
    rbac)
      expect "denied path" 403 /admin "${AUTH[@]}"
      expect "denied header" 403 / "${AUTH[@]}" -H "x-tenant: banned-7"
      expect "no rule" 403 / "${AUTH[@]}" -H "x-debug: on" ;;
  esac
  c1="$(counter "$proof")"
  [ "$c1" -gt "$c0" ] || fail "$PROXY_NAME/$1: $proof did not move ($c0 -> $c1)"
}

# User and kernel CPU ticks (utime, stime) of a process.
ticks_of() { awk '{print $14, $15}' "/proc/$1/stat"; }
us_per_request() { # before after requests -> "user kernel"
  local u0 s0 u1 s1 hz
  read -r u0 s0 <<<"$1"; read -r u1 s1 <<<"$2"; hz="$(getconf CLK_TCK)"
  echo "$(echo "scale=1; ($u1 - $u0) * 1000000 / $hz / $3" | bc)" \
    "$(echo "scale=1; ($s1 - $s0) * 1000000 / $hz / $3" | bc)"
}

declare -A RPS CPU
printf "%-10s %-8s %10s %9s %9s %8s %8s\n" config proxy "req/s" p50 p99 user_us sys_us
for CONFIG in $CONFIGS; do
  for PROXY_NAME in courier envoy; do
    start_proxy "$PROXY_NAME" "$CONFIG"
    check "$CONFIG"
    proof="$(proof_counter "$CONFIG")"
    p0="$(counter "$proof")"
    t0="$(ticks_of "$PID")"
    out="$("${LOAD_PIN[@]}" wrk -t1 -c"$CONNS" -d"${DURATION}s" --latency \
      -H "Authorization: Bearer $TOKEN" "http://127.0.0.1:$PX_PORT/")"
    t1="$(ticks_of "$PID")"
    p1="$(counter "$proof")"
    rps="$(awk '/Requests\/sec/ {print $2}' <<<"$out")"
    n="$(awk '/requests in/ {print $1}' <<<"$out")"
    if grep -q -e "Non-2xx" -e "Socket errors" <<<"$out"; then
      echo "$out" >&2
      fail "$PROXY_NAME/$CONFIG: wrk saw errors or non-2xx answers"
    fi
    # Requests wrk had in flight when it stopped may count too; none may be missing.
    [ "$((p1 - p0))" -ge "$n" ] \
      || fail "$PROXY_NAME/$CONFIG: $proof grew by $((p1 - p0)) for $n requests"
    read -r us ss < <(us_per_request "$t0" "$t1" "$n")
    printf "%-10s %-8s %10s %9s %9s %8s %8s\n" "$CONFIG" "$PROXY_NAME" "$rps" \
      "$(awk '$1=="50%" {print $2}' <<<"$out")" "$(awk '$1=="99%" {print $2}' <<<"$out")" "$us" "$ss"
    RPS["$PROXY_NAME,$CONFIG"]=$rps
    CPU["$PROXY_NAME,$CONFIG"]="$(echo "$us + $ss" | bc)"
    stop_proxy
  done
done

echo
echo "Courier / Envoy:"
printf "%-10s %10s %22s\n" config "req/s" "proxy CPU per request"
for CONFIG in $CONFIGS; do
  printf "%-10s %9.2fx %21.2fx\n" "$CONFIG" \
    "$(echo "scale=4; ${RPS["courier,$CONFIG"]} / ${RPS["envoy,$CONFIG"]}" | bc)" \
    "$(echo "scale=4; ${CPU["envoy,$CONFIG"]} / ${CPU["courier,$CONFIG"]}" | bc)"
done
