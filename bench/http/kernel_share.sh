#!/usr/bin/env bash
# Where an HTTP/1.1 request's CPU goes, Courier against nginx as a proxy (1 worker each, the
# same nginx upstream, wrk with 50 connections): user and kernel microseconds per request
# from /proc, and per request the syscalls, softirqs and context switches `perf stat` counts
# on the proxy. Needs perf (Debian's linux-perf) with tracepoints readable.
# Not a test: numbers depend on the machine.
#
#   bench/http/kernel_share.sh            # 5 s per proxy
#   DURATION=10 bench/http/kernel_share.sh
set -euo pipefail

ROOT="$(cd "$(dirname "$0")/../.." && pwd)"
DURATION="${DURATION:-5}"
TARGET_DIR="${CARGO_TARGET_DIR:-$ROOT/target}"
WORK="$(mktemp -d)"
trap 'kill $(jobs -p) 2>/dev/null || true; rm -rf "$WORK"' EXIT

need() { command -v "$1" >/dev/null 2>&1; }
if ! need wrk || ! need nginx || ! need perf || ! need bc; then
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq wrk nginx-light linux-perf bc >/dev/null
fi
(cd "$ROOT" && CARGO_TARGET_DIR="$TARGET_DIR" cargo build --release -p courier -q)

UP=18180; CX=18100; NX=18101
cat >"$WORK/up.conf" <<CONF
worker_processes 1; pid $WORK/up.pid; error_log /dev/null;
events { worker_connections 4096; }
http { access_log off; keepalive_requests 1000000;
  server { listen 127.0.0.1:$UP; location / { return 200 "ok"; } } }
CONF
cat >"$WORK/nx.conf" <<CONF
worker_processes 1; pid $WORK/nx.pid; error_log /dev/null;
events { worker_connections 8192; }
http { access_log off;
  upstream up { server 127.0.0.1:$UP; keepalive 256; }
  server { listen 127.0.0.1:$NX;
    location / { proxy_pass http://up; proxy_http_version 1.1; proxy_set_header Connection ""; } } }
CONF
# shellcheck source=bench/http/bootstrap.sh
source "$(dirname "$0")/bootstrap.sh"
courier_bootstrap "$CX" "$UP" >"$WORK/c.yaml"

EVENTS=context-switches,syscalls:sys_enter_epoll_wait,syscalls:sys_enter_recvfrom,syscalls:sys_enter_read,syscalls:sys_enter_sendto,syscalls:sys_enter_writev,syscalls:sys_enter_write,irq:softirq_entry
wait_port() { for _ in $(seq 100); do curl -s -o /dev/null "http://127.0.0.1:$1/" && return 0; sleep 0.1; done; return 1; }
measure() { # name pid port
  wrk -t1 -c50 -d1s "http://127.0.0.1:$3/" >/dev/null
  local tck u0 s0 u1 s1 out n
  tck=$(getconf CLK_TCK)
  read -r u0 s0 < <(awk '{print $14, $15}' "/proc/$2/stat")
  perf stat -x, -e "$EVENTS" -p "$2" -o "$WORK/perf.$1" & local perf=$!
  out=$(wrk -t1 -c50 -d"${DURATION}s" "http://127.0.0.1:$3/")
  kill -INT "$perf"; wait "$perf" || true
  read -r u1 s1 < <(awk '{print $14, $15}' "/proc/$2/stat")
  n=$(awk '/requests in/ {print $1}' <<<"$out")
  printf "%-8s req/s=%-10s user_us=%-5s kernel_us=%-5s" "$1" "$(awk '/Requests\/sec/ {print $2}' <<<"$out")" \
    "$(echo "scale=2; ($u1 - $u0) * 1000000 / $tck / $n" | bc)" "$(echo "scale=2; ($s1 - $s0) * 1000000 / $tck / $n" | bc)"
  awk -F, -v n="$n" '$1 ~ /^[0-9.]+$/ {split($3, a, ":"); printf " %s=%.3f", a[length(a)], $1 / n}' "$WORK/perf.$1"
  echo
}

nginx -c "$WORK/up.conf" -g "daemon off;" &
"$TARGET_DIR/release/courier" -c "$WORK/c.yaml" --concurrency 1 -l error & C=$!
nginx -c "$WORK/nx.conf" -g "daemon off;" & N=$!
wait_port "$CX"; wait_port "$NX"
measure courier "$C" "$CX"
measure nginx "$(pgrep -P "$N" | head -1)" "$NX"
