#!/usr/bin/env bash
# Instructions per proxied HTTP/1.1 request, counted by callgrind: repeatable on a noisy
# machine, unlike requests per second. Courier runs under valgrind with one worker in front
# of a small keep-alive upstream; one client connection sends SMALL and then LARGE requests
# in two runs, and the difference of the two totals over LARGE - SMALL is the cost of a
# request without start-up and shutdown.
#
#   bench/http/callgrind.sh [COURIER_BINARY]    (default: target/release/courier)
#   KEEP=DIR bench/http/callgrind.sh …          (keeps the callgrind outputs in DIR, for
#                                                callgrind_annotate)
set -euo pipefail
cd "$(dirname "$0")/../.."
BIN="${1:-target/release/courier}"
SMALL="${SMALL:-5000}"
LARGE="${LARGE:-50000}"
command -v valgrind >/dev/null || { echo "valgrind is needed" >&2; exit 1; }
source bench/http/bootstrap.sh
WORK="$(mktemp -d)"
trap 'kill $(jobs -p) 2>/dev/null || true; rm -rf "$WORK"' EXIT

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }

# The upstream: answers every request on a connection with a 2-byte body.
UP_PORT="$(free_port)"
python3 - "$UP_PORT" <<'EOF' &
import socket, sys, threading
srv = socket.socket(); srv.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
srv.bind(("127.0.0.1", int(sys.argv[1]))); srv.listen(64)
RESP = b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok"
def serve(c):
    buf = b""
    while True:
        d = c.recv(65536)
        if not d:
            return
        buf += d
        while b"\r\n\r\n" in buf:
            _, buf = buf.split(b"\r\n\r\n", 1)
            c.sendall(RESP)
while True:
    c, _ = srv.accept()
    threading.Thread(target=serve, args=(c,), daemon=True).start()
EOF

run() { # requests -> total instructions
  local n="$1" port
  port="$(free_port)"
  courier_bootstrap "$port" "$UP_PORT" | sed 's/connect_timeout: 1s/connect_timeout: 30s/' > "$WORK/b.yaml"
  valgrind --tool=callgrind --callgrind-out-file="$WORK/cg.$n" "$BIN" -c "$WORK/b.yaml" \
    --concurrency 1 > "$WORK/log.$n" 2>&1 &
  local pid=$!
  python3 - "$port" "$n" <<'EOF'
import socket, sys, time
port, n = int(sys.argv[1]), int(sys.argv[2])
deadline = time.time() + 120
while True:
    try:
        s = socket.create_connection(("127.0.0.1", port)); break
    except OSError:
        if time.time() > deadline: raise
        time.sleep(0.2)
REQ = b"GET /bench HTTP/1.1\r\nhost: bench\r\nuser-agent: callgrind\r\naccept: */*\r\n\r\n"
for _ in range(n):
    s.sendall(REQ)
    buf = b""
    while not buf.endswith(b"ok"):
        d = s.recv(65536)
        if not d: raise SystemExit("connection closed")
        buf += d
s.close()
EOF
  kill -INT "$pid"; wait "$pid" || true
  if [ -n "${KEEP:-}" ]; then mkdir -p "$KEEP" && cp "$WORK/cg.$n" "$KEEP/"; fi
  awk '/^summary:/ { print $2 }' "$WORK/cg.$n"
}

small="$(run "$SMALL")"
large="$(run "$LARGE")"
echo "instructions per HTTP/1.1 request: $(( (large - small) / (LARGE - SMALL) )) ($BIN)"
