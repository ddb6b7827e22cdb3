#!/usr/bin/env python3
"""Hot restart under load, Envoy 1.40 beside Courier (see README.md; run through run.sh).

For each proxy: epoch 0, then 5 hot restarts driven as Envoy's hot-restarter.py does (start
`--restart-epoch N --base-id B`, the new process takes the listen sockets over and terminates
its parent at --parent-shutdown-time-s), under HTTP/1.1 keep-alive clients, new-connection-per-
request clients and a 100 MB tcp_proxy echo transfer (sha256 both ways) started before the first
restart. Prints one JSON line per proxy and a table.
"""
import argparse
import hashlib
import http.server
import json
import os
import socket
import socketserver
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request

BOOTSTRAP = """
admin: {{address: {{socket_address: {{address: 127.0.0.1, port_value: 0}}}}}}
static_resources:
  listeners:
  - name: http
    address: {{socket_address: {{address: 127.0.0.1, port_value: {http}}}}}
    filter_chains:
    - filters:
      - name: envoy.filters.network.http_connection_manager
        typed_config:
          "@type": type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager
          stat_prefix: ingress
          http_filters:
          - name: envoy.filters.http.router
            typed_config: {{"@type": type.googleapis.com/envoy.extensions.filters.http.router.v3.Router}}
          route_config:
            virtual_hosts:
            - {{name: all, domains: ["*"], routes: [{{match: {{prefix: "/"}}, route: {{cluster: web}}}}]}}
  - name: tcp
    address: {{socket_address: {{address: 127.0.0.1, port_value: {tcp}}}}}
    filter_chains:
    - filters:
      - name: envoy.filters.network.tcp_proxy
        typed_config:
          "@type": type.googleapis.com/envoy.extensions.filters.network.tcp_proxy.v3.TcpProxy
          stat_prefix: t
          cluster: echo
  clusters:
  - name: web
    type: STATIC
    connect_timeout: 1s
    load_assignment: {{cluster_name: web, endpoints: [{{lb_endpoints: [{{endpoint: {{address: {{socket_address: {{address: 127.0.0.1, port_value: {web}}}}}}}}}]}}]}}
  - name: echo
    type: STATIC
    connect_timeout: 1s
    load_assignment: {{cluster_name: echo, endpoints: [{{lb_endpoints: [{{endpoint: {{address: {{socket_address: {{address: 127.0.0.1, port_value: {echo}}}}}}}}}]}}]}}
"""


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Web(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def do_GET(self):
        self.send_response(200)
        self.send_header("content-length", "2")
        self.end_headers()
        self.wfile.write(b"ok")

    def log_message(self, *a):
        pass


class Echo(socketserver.BaseRequestHandler):
    def handle(self):
        while data := self.request.recv(65536):
            self.request.sendall(data)


class Tally:
    def __init__(self):
        self.lock = threading.Lock()
        self.ok = 0
        self.failed = {}
        self.stop = False

    def fail(self, kind):
        with self.lock:
            self.failed[kind] = self.failed.get(kind, 0) + 1

    def good(self):
        with self.lock:
            self.ok += 1


def kind_of(e):
    if isinstance(e, ConnectionResetError):
        return "reset"
    if isinstance(e, ConnectionRefusedError):
        return "refused"
    return type(e).__name__


def get(sock, f):
    sock.sendall(b"GET / HTTP/1.1\r\nhost: x\r\n\r\n")
    status = f.readline()
    if not status.startswith(b"HTTP/1.1 200"):
        raise EOFError(f"status {status!r}")
    close, length = False, 0
    while (line := f.readline()) not in (b"\r\n", b""):
        low = line.lower()
        close |= low.startswith(b"connection: close")
        if low.startswith(b"content-length:"):
            length = int(low.split(b":")[1])
    if len(f.read(length)) != length:
        raise EOFError("short body")
    return close


def keep_alive(addr, t):
    while not t.stop:
        try:
            s = socket.create_connection(addr, timeout=10)
        except OSError as e:
            t.fail("keep-alive connect " + kind_of(e))
            continue
        f = s.makefile("rb")
        try:
            while not t.stop:
                closed = get(s, f)
                t.good()
                if closed:
                    break
        except (OSError, EOFError) as e:
            t.fail("keep-alive " + kind_of(e))
        finally:
            s.close()


def new_connection(addr, t):
    while not t.stop:
        try:
            with socket.create_connection(addr, timeout=10) as s:
                get(s, s.makefile("rb"))
                t.good()
        except (OSError, EOFError) as e:
            t.fail("new-connection " + kind_of(e))


def transfer(addr, total, resume, out):
    """Sends `total` bytes through the echo tcp_proxy (the second half once `resume` is set)."""
    block = bytes(range(256)) * 256
    sent_h, got_h, got = hashlib.sha256(), hashlib.sha256(), [0]
    try:
        s = socket.create_connection(addr, timeout=30)
    except OSError as e:
        out.update(error=kind_of(e))
        return

    def reader():
        try:
            while got[0] < total and (data := s.recv(1 << 16)):
                got_h.update(data)
                got[0] += len(data)
        except OSError as e:
            out["error"] = kind_of(e)

    r = threading.Thread(target=reader)
    r.start()
    sent = 0
    try:
        while sent < total:
            if sent >= total // 2:
                resume.wait(60)
            chunk = block[: min(len(block), total - sent)]
            s.sendall(chunk)
            sent_h.update(chunk)
            sent += len(chunk)
    except OSError as e:
        out["error"] = kind_of(e)
    r.join()
    s.close()
    out.update(bytes=got[0], checksum_ok=got[0] == total and sent_h.digest() == got_h.digest())


def admin_of(path):
    try:
        return open(path).read().strip()
    except OSError:
        return None


def live(admin):
    try:
        with urllib.request.urlopen(f"http://{admin}/ready", timeout=2) as r:
            return r.read().strip() == b"LIVE"
    except OSError:
        return False


def counter(admin, name):
    with urllib.request.urlopen(f"http://{admin}/stats?filter=^{name}$", timeout=5) as r:
        for line in r.read().decode().splitlines():
            if line.startswith(name + ":"):
                return int(line.split(":")[1])
    return 0


def run(proxy, binary, restarts, transfer_mb, workdir):
    ports = {"http": free_port(), "tcp": free_port()}
    web = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Web)
    echo = socketserver.ThreadingTCPServer(("127.0.0.1", 0), Echo)
    echo.daemon_threads = web.daemon_threads = True
    for srv in (web, echo):
        threading.Thread(target=srv.serve_forever, daemon=True).start()
    boot = os.path.join(workdir, f"{proxy}.yaml")
    with open(boot, "w") as f:
        f.write(BOOTSTRAP.format(web=web.server_address[1], echo=echo.server_address[1], **ports))
    base_id = str(9000 + os.getpid() % 500 + (0 if proxy == "envoy" else 500))
    procs = []

    def start(epoch):
        admin_path = os.path.join(workdir, f"{proxy}-admin-{epoch}")
        log = open(os.path.join(workdir, f"{proxy}-{epoch}.log"), "wb")
        p = subprocess.Popen([binary, "-c", boot, "--restart-epoch", str(epoch), "--base-id", base_id,
                              "--admin-address-path", admin_path, "--concurrency", "2",
                              "--drain-time-s", "1", "--parent-shutdown-time-s", "3", "-l", "warning"],
                             stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
        procs.append(p)
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            if p.poll() is not None:
                raise SystemExit(f"{proxy} epoch {epoch} exited with {p.returncode}; see {log.name}")
            admin = admin_of(admin_path)
            if admin and live(admin):
                return p, admin
            time.sleep(0.02)
        raise SystemExit(f"{proxy} epoch {epoch} not live; see {log.name}")

    started = time.monotonic()
    current, admin = start(0)
    t = Tally()
    clients = [threading.Thread(target=f, args=(("127.0.0.1", ports["http"]), t))
               for f in (keep_alive, keep_alive, new_connection, new_connection)]
    for c in clients:
        c.start()
    resume, result = threading.Event(), {}
    xfer = threading.Thread(target=transfer, args=(("127.0.0.1", ports["tcp"]), transfer_mb << 20, resume, result))
    xfer.start()
    totals = []
    for epoch in range(1, restarts + 1):
        before = t.ok
        while t.ok < before + 50:
            time.sleep(0.01)
        nxt, nxt_admin = start(epoch)
        resume.set()
        current.wait(60)
        totals.append(counter(nxt_admin, "http.ingress.downstream_rq_total"))
        current, admin = nxt, nxt_admin
    t.stop = True
    for c in clients:
        c.join()
    xfer.join()
    for p in procs:
        if p.poll() is None:
            p.terminate()
            p.wait(30)
    web.shutdown()
    echo.shutdown()
    return {"proxy": proxy, "restarts": restarts, "requests_ok": t.ok,
            "requests_failed": sum(t.failed.values()), "failures": t.failed,
            "transfer_mb": transfer_mb, "transfer_bytes": result.get("bytes", 0),
            "transfer_checksum_ok": result.get("checksum_ok", False),
            "transfer_error": result.get("error"),
            "rq_total_by_epoch": totals, "counters_grow": totals == sorted(totals) and len(set(totals)) == len(totals),
            "seconds": round(time.monotonic() - started, 1)}


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--envoy", default="envoy")
    ap.add_argument("--courier", required=True)
    ap.add_argument("--restarts", type=int, default=5)
    ap.add_argument("--transfer-mb", type=int, default=100)
    a = ap.parse_args()
    rows = []
    with tempfile.TemporaryDirectory(prefix="hr-bench-") as d:
        for proxy, binary in (("envoy", a.envoy), ("courier", a.courier)):
            row = run(proxy, binary, a.restarts, a.transfer_mb, d)
            print(json.dumps(row), flush=True)
            rows.append(row)
    print()
    print(f"{'proxy':8} {'restarts':>8} {'ok':>8} {'failed':>7}  {'failures':30} {'transfer':>9} {'checksum':>8} {'counters':>8}")
    for r in rows:
        print(f"{r['proxy']:8} {r['restarts']:>8} {r['requests_ok']:>8} {r['requests_failed']:>7}  "
              f"{json.dumps(r['failures']):30} {r['transfer_bytes'] >> 20:>7}MB {str(r['transfer_checksum_ok']):>8} "
              f"{str(r['counters_grow']):>8}")


if __name__ == "__main__":
    sys.exit(main())
