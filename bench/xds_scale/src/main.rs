//! xDS convergence benchmark (see README.md). Not a test: it prints figures.

use std::io::Read;
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use courier_control_plane::{ControlPlane, Resource, ResourceType, Snapshot};
use courier_proto::envoy::config::cluster::v3::Cluster;
use courier_proto::envoy::config::endpoint::v3::ClusterLoadAssignment;
use courier_proto::envoy::config::listener::v3::Listener;

mod on_demand;

struct Args {
    courier: PathBuf,
    clusters: usize,
    listeners: usize,
    updates: usize,
    concurrency: usize,
    /// Which proxies to run (both by default; one alone while iterating).
    proxies: Vec<String>,
    /// `convergence` (the default) or `on-demand`.
    scenario: String,
    /// On-demand scenario: how many distinct clusters requests ask for.
    requests: usize,
}

fn parse_args() -> Result<Args> {
    let mut args = Args {
        courier: PathBuf::from("target/release/courier"),
        clusters: 10_000,
        listeners: 1_000,
        updates: 100,
        concurrency: 2,
        proxies: vec!["courier".into(), "envoy".into()],
        scenario: "convergence".into(),
        requests: 100,
    };
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        let value = it.next().with_context(|| format!("{flag} needs a value"))?;
        match flag.as_str() {
            "--courier" => args.courier = value.into(),
            "--clusters" => args.clusters = value.parse()?,
            "--listeners" => args.listeners = value.parse()?,
            "--updates" => args.updates = value.parse()?,
            "--concurrency" => args.concurrency = value.parse()?,
            "--proxies" => args.proxies = value.split(',').map(String::from).collect(),
            "--scenario" => args.scenario = value,
            "--requests" => args.requests = value.parse()?,
            other => bail!("unknown flag {other}"),
        }
    }
    if args.listeners > args.clusters {
        bail!("--listeners must not exceed --clusters");
    }
    Ok(args)
}

/// An upstream that writes its tag to every connection and closes it.
fn tag_upstream(tag: u8) -> Result<u16> {
    let listener = TcpListener::bind("127.0.0.1:0")?;
    let port = listener.local_addr()?.port();
    std::thread::spawn(move || {
        for stream in listener.incoming().flatten() {
            let mut stream = stream;
            let _ = std::io::Write::write_all(&mut stream, &[tag]);
        }
    });
    Ok(port)
}

fn free_port_block(n: usize) -> Result<u16> {
    // Probe for a block of n free ports starting at a random base.
    'outer: for base in (20000u16..50000).step_by(2000) {
        if base as usize + n >= 65000 {
            break;
        }
        for p in base..base + n as u16 {
            if TcpListener::bind(("127.0.0.1", p)).is_err() {
                continue 'outer;
            }
        }
        return Ok(base);
    }
    bail!("no block of {n} free ports")
}

fn cluster(name: &str) -> Result<Cluster> {
    Ok(courier_proto::from_yaml(&format!(
        "name: {name}\ntype: EDS\nconnect_timeout: 1s\neds_cluster_config: {{ eds_config: {{ ads: {{}}, resource_api_version: V3 }} }}\n"
    ))?)
}

fn assignment(name: &str, port: u16) -> Result<ClusterLoadAssignment> {
    Ok(courier_proto::from_yaml(&format!(
        "cluster_name: {name}\nendpoints:\n- lb_endpoints:\n  - endpoint: {{ address: {{ socket_address: {{ address: 127.0.0.1, port_value: {port} }} }} }}\n"
    ))?)
}

fn listener(name: &str, port: u16, cluster: &str) -> Result<Listener> {
    Ok(courier_proto::from_yaml(&format!(
        r#"name: {name}
address: {{ socket_address: {{ address: 127.0.0.1, port_value: {port} }} }}
filter_chains:
- filters:
  - name: envoy.filters.network.tcp_proxy
    typed_config:
      "@type": type.googleapis.com/envoy.extensions.filters.network.tcp_proxy.v3.TcpProxy
      stat_prefix: {name}
      cluster: {cluster}
"#
    ))?)
}

fn bootstrap(node: &str, xds_port: u16) -> String {
    bootstrap_with(node, xds_port, "GRPC", true)
}

/// A bootstrap over ADS (`api_type`), with a CDS subscription or (on-demand) without.
fn bootstrap_with(node: &str, xds_port: u16, api_type: &str, cds: bool) -> String {
    let cds = if cds {
        "  cds_config: { ads: {}, resource_api_version: V3 }\n"
    } else {
        ""
    };
    format!(
        r#"node: {{ id: {node}, cluster: bench }}
admin: {{ address: {{ socket_address: {{ address: 127.0.0.1, port_value: 0 }} }} }}
dynamic_resources:
  ads_config:
    api_type: {api_type}
    transport_api_version: V3
    grpc_services: [{{ envoy_grpc: {{ cluster_name: xds }} }}]
{cds}  lds_config: {{ ads: {{}}, resource_api_version: V3 }}
static_resources:
  clusters:
  - name: xds
    type: STATIC
    connect_timeout: 1s
    typed_extension_protocol_options:
      envoy.extensions.upstreams.http.v3.HttpProtocolOptions:
        "@type": type.googleapis.com/envoy.extensions.upstreams.http.v3.HttpProtocolOptions
        explicit_http_config: {{ http2_protocol_options: {{}} }}
    load_assignment:
      cluster_name: xds
      endpoints:
      - lb_endpoints:
        - endpoint: {{ address: {{ socket_address: {{ address: 127.0.0.1, port_value: {xds_port} }} }} }}
"#
    )
}

struct Proxy {
    child: Child,
    admin: SocketAddr,
}

impl Drop for Proxy {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn start_proxy(
    kind: &str,
    courier: &Path,
    config: &Path,
    dir: &Path,
    concurrency: usize,
) -> Result<Proxy> {
    let admin_path = dir.join(format!("{kind}.admin"));
    let mut cmd = match kind {
        "courier" => Command::new(courier),
        _ => {
            let mut c = Command::new("envoy");
            c.arg("--use-dynamic-base-id");
            c
        }
    };
    cmd.arg("-c")
        .arg(config)
        .arg("--concurrency")
        .arg(concurrency.to_string())
        .arg("--admin-address-path")
        .arg(&admin_path)
        .args(["-l", "error"])
        .stdout(Stdio::null())
        .stderr(Stdio::null());
    let child = cmd.spawn().with_context(|| format!("starting {kind}"))?;
    let deadline = Instant::now() + Duration::from_secs(30);
    let admin = loop {
        if let Ok(text) = std::fs::read_to_string(&admin_path) {
            if let Ok(addr) = text.trim().parse() {
                break addr;
            }
        }
        if Instant::now() > deadline {
            bail!("{kind} did not write its admin address");
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    Ok(Proxy { child, admin })
}

fn http_get(addr: SocketAddr, path: &str) -> Result<String> {
    http_get_with(addr, path, "")
}

/// GET with extra header lines (each ending in CRLF).
fn http_get_with(addr: SocketAddr, path: &str, headers: &str) -> Result<String> {
    let mut s = TcpStream::connect(addr)?;
    s.set_read_timeout(Some(Duration::from_secs(10)))?;
    std::io::Write::write_all(
        &mut s,
        format!("GET {path} HTTP/1.1\r\nHost: x\r\n{headers}Connection: close\r\n\r\n").as_bytes(),
    )?;
    let mut out = String::new();
    s.read_to_string(&mut out)?;
    Ok(out)
}

fn wait_live(proxy: &Proxy) -> Result<()> {
    let deadline = Instant::now() + Duration::from_secs(60);
    while Instant::now() < deadline {
        if http_get(proxy.admin, "/ready").is_ok_and(|r| r.contains("LIVE")) {
            return Ok(());
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    bail!("proxy not LIVE")
}

/// (RSS bytes, main-thread CPU seconds).
fn usage(pid: u32) -> (u64, f64) {
    let rss = std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmRSS:"))
                .and_then(|l| l.split_whitespace().nth(1)?.parse::<u64>().ok())
        })
        .unwrap_or(0)
        * 1024;
    let cpu = std::fs::read_to_string(format!("/proc/{pid}/task/{pid}/stat"))
        .ok()
        .and_then(|s| {
            let after = s.rsplit_once(')')?.1;
            let f: Vec<&str> = after.split_whitespace().collect();
            let ticks: u64 = f.get(11)?.parse::<u64>().ok()? + f.get(12)?.parse::<u64>().ok()?;
            Some(ticks as f64 / 100.0)
        })
        .unwrap_or(0.0);
    (rss, cpu)
}

/// Reads the tag of the upstream a new connection through `port` reaches.
fn probe(port: u16) -> Option<u8> {
    let mut s = TcpStream::connect(("127.0.0.1", port)).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(2))).ok()?;
    let mut b = [0u8; 1];
    s.read_exact(&mut b).ok()?;
    Some(b[0])
}

struct Figures {
    /// Median update → ACK recorded by courier-cp.
    ack_p50: Duration,
    ack: Duration,
    serve: Duration,
    cpu: f64,
    rss_before: u64,
    rss_after: u64,
    p50: Duration,
    p99: Duration,
}

fn run(kind: &str, args: &Args, rt: &tokio::runtime::Runtime) -> Result<Figures> {
    let dir = tempfile::tempdir()?;
    let up_a = tag_upstream(b'A')?;
    let up_b = tag_upstream(b'B')?;
    let cp = ControlPlane::new();
    let server = rt.block_on(cp.start("127.0.0.1:0".parse()?))?;
    let node = format!("bench-{kind}");
    cp.cache().set_snapshot(&node, Snapshot::empty());
    let config = dir.path().join("bootstrap.yaml");
    std::fs::write(&config, bootstrap(&node, server.local_addr().port()))?;
    let proxy = start_proxy(kind, &args.courier, &config, dir.path(), args.concurrency)?;
    wait_live(&proxy)?;
    let pid = proxy.child.id();
    let (rss_before, cpu_before) = usage(pid);

    let base = free_port_block(args.listeners)?;
    let mut resources = Vec::new();
    for i in 0..args.clusters {
        let name = format!("c{i}");
        resources.push(Resource::cluster(&cluster(&name)?)?);
        resources.push(Resource::endpoint(&assignment(&name, up_a)?)?);
    }
    for i in 0..args.listeners {
        resources.push(Resource::listener(&listener(
            &format!("l{i}"),
            base + i as u16,
            &format!("c{i}"),
        )?)?);
    }
    let snapshot = Snapshot::builder().resources(resources).build()?;
    let t0 = Instant::now();
    let snapshot = cp.cache().set_snapshot(&node, snapshot);
    let timeout = Duration::from_secs(600);
    for kind in [
        ResourceType::Cluster,
        ResourceType::Endpoint,
        ResourceType::Listener,
    ] {
        let v = snapshot.version(kind).to_string();
        rt.block_on(cp.status().wait_for_ack(&node, kind, &v, timeout))?;
    }
    let ack = t0.elapsed();
    let last = base + args.listeners as u16 - 1;
    while probe(last) != Some(b'A') {
        if t0.elapsed() > timeout {
            bail!("{kind}: last listener never served");
        }
        std::thread::sleep(Duration::from_millis(5));
    }
    let serve = t0.elapsed();
    let (rss_after, cpu_after) = usage(pid);

    // Each update: when the control plane records the proxy's ACK (the proxy applied it on
    // its main thread), and when 16 consecutive new connections — spread over every worker
    // by SO_REUSEPORT — reach the new endpoint. The first includes courier-cp's own push
    // time; the second is the proxy's propagation to its workers.
    let mut to_ack = Vec::new();
    let mut latencies = Vec::new();
    for u in 0..args.updates {
        let j = u % args.listeners;
        let (port, tag) = if (u / args.listeners).is_multiple_of(2) {
            (up_b, b'B')
        } else {
            (up_a, b'A')
        };
        let name = format!("c{j}");
        let t = Instant::now();
        let version = cp
            .cache()
            .update_resource(&node, Resource::endpoint(&assignment(&name, port)?)?)?;
        let acked = std::sync::Arc::new(std::sync::Mutex::new(None));
        let waiter = {
            let cp = cp.clone();
            let node = node.clone();
            let acked = acked.clone();
            rt.spawn(async move {
                let ok = cp
                    .status()
                    .wait_for_ack(
                        &node,
                        ResourceType::Endpoint,
                        &version,
                        Duration::from_secs(30),
                    )
                    .await;
                if ok.is_ok() {
                    if let Ok(mut a) = acked.lock() {
                        *a = Some(Instant::now());
                    }
                }
            })
        };
        let mut streak = 0;
        let mut first_of_streak = None;
        while streak < 16 {
            if t.elapsed() > Duration::from_secs(30) {
                bail!("{kind}: update {u} never propagated");
            }
            if probe(base + j as u16) == Some(tag) {
                if streak == 0 {
                    first_of_streak = Some(Instant::now());
                }
                streak += 1;
            } else {
                streak = 0;
            }
        }
        rt.block_on(waiter)?;
        let ack_at = acked
            .lock()
            .ok()
            .and_then(|a| *a)
            .context("update never ACKed")?;
        let served_at = first_of_streak.unwrap_or_else(Instant::now);
        to_ack.push(ack_at.duration_since(t));
        latencies.push(served_at.saturating_duration_since(ack_at));
    }
    to_ack.sort();
    latencies.sort();
    let pick = |q: f64| {
        latencies
            .get(((latencies.len() as f64 - 1.0) * q).round() as usize)
            .copied()
            .unwrap_or_default()
    };
    let ack_p50 = to_ack.get(to_ack.len() / 2).copied().unwrap_or_default();
    drop(proxy);
    rt.block_on(server.shutdown());
    Ok(Figures {
        ack_p50,
        ack,
        serve,
        cpu: cpu_after - cpu_before,
        rss_before,
        rss_after,
        p50: pick(0.5),
        p99: pick(0.99),
    })
}

fn main() -> Result<()> {
    let args = parse_args()?;
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()?;
    if args.scenario == "on-demand" {
        return on_demand::main(&args, &rt);
    }
    println!(
        "xDS convergence: {} EDS clusters, {} listeners, {} updates, concurrency {}",
        args.clusters, args.listeners, args.updates, args.concurrency
    );
    let mut rows = Vec::new();
    for kind in &args.proxies {
        let kind = kind.as_str();
        let f = run(kind, &args, &rt).with_context(|| format!("{kind} run"))?;
        rows.push((kind, f));
    }
    println!(
        "{:<8} {:>10} {:>10} {:>10} {:>10} {:>10} {:>14} {:>12} {:>12} {:>12}",
        "proxy",
        "ack (s)",
        "serve (s)",
        "main cpu",
        "rss0 MiB",
        "rss1 MiB",
        "bytes/cluster",
        "upd→ack ms",
        "ack→all p50",
        "ack→all p99"
    );
    for (kind, f) in &rows {
        println!(
            "{:<8} {:>10.2} {:>10.2} {:>10.2} {:>10.1} {:>10.1} {:>14.0} {:>12.2} {:>12.2} {:>12.2}",
            kind,
            f.ack.as_secs_f64(),
            f.serve.as_secs_f64(),
            f.cpu,
            f.rss_before as f64 / 1048576.0,
            f.rss_after as f64 / 1048576.0,
            (f.rss_after.saturating_sub(f.rss_before)) as f64 / args.clusters as f64,
            f.ack_p50.as_secs_f64() * 1e3,
            f.p50.as_secs_f64() * 1e3,
            f.p99.as_secs_f64() * 1e3,
        );
    }
    if let [(_, c), (_, e)] = rows.as_slice() {
        let per = |f: &Figures| (f.rss_after.saturating_sub(f.rss_before)).max(1) as f64;
        println!(
            "ratios (envoy/courier): ack {:.1}x, serve {:.1}x, main cpu {:.1}x, memory per cluster {:.1}x; propagation p99 courier {:.2} ms vs envoy {:.2} ms",
            e.ack.as_secs_f64() / c.ack.as_secs_f64(),
            e.serve.as_secs_f64() / c.serve.as_secs_f64(),
            e.cpu / c.cpu.max(0.01),
            per(e) / per(c),
            c.p99.as_secs_f64() * 1e3,
            e.p99.as_secs_f64() * 1e3,
        );
    }
    Ok(())
}
