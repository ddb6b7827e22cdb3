//! The on-demand scenario: the control plane holds N clusters; the proxy either takes them
//! all up front (CDS over delta ADS) or none, discovering those requests need through
//! `envoy.filters.http.on_demand` (`odcds` over the same ADS stream). Requests ask for K
//! distinct clusters by `x-cluster` header (`cluster_header`). Reported: time until the
//! proxy holds what it needs (all clusters ACKed, or LIVE), memory, and the latency of the
//! first request to each cluster (which includes the discovery when on demand).

use std::net::{SocketAddr, TcpListener};
use std::time::{Duration, Instant};

use anyhow::{bail, Result};
use courier_control_plane::{ControlPlane, Resource, ResourceType, Snapshot};
use courier_proto::envoy::config::cluster::v3::Cluster;
use courier_proto::envoy::config::listener::v3::Listener;
use courier_proto::envoy::config::route::v3::RouteConfiguration;

use super::{bootstrap_with, http_get_with, start_proxy, usage, wait_live, Args};

/// An HTTP/1.1 upstream answering every request with an empty 200, then closing.
fn http_upstream() -> Result<u16> {
    let listener = TcpListener::bind("127.0.0.1:0")?;
    let port = listener.local_addr()?.port();
    std::thread::spawn(move || {
        for stream in listener.incoming().flatten() {
            std::thread::spawn(move || {
                let mut stream = stream;
                let mut buf = [0u8; 4096];
                let mut seen = Vec::new();
                while !seen.windows(4).any(|w| w == b"\r\n\r\n") {
                    match std::io::Read::read(&mut stream, &mut buf) {
                        Ok(0) | Err(_) => return,
                        Ok(n) => seen.extend_from_slice(&buf[..n]),
                    }
                }
                let _ = std::io::Write::write_all(
                    &mut stream,
                    b"HTTP/1.1 200 OK\r\ncontent-length: 0\r\nconnection: close\r\n\r\n",
                );
            });
        }
    });
    Ok(port)
}

fn static_cluster(name: &str, port: u16) -> Result<Cluster> {
    Ok(courier_proto::from_yaml(&format!(
        "name: {name}\ntype: STATIC\nconnect_timeout: 1s\nload_assignment: {{ cluster_name: {name}, endpoints: [{{ lb_endpoints: [{{ endpoint: {{ address: {{ socket_address: {{ address: 127.0.0.1, port_value: {port} }} }} }} }}] }}] }}\n"
    ))?)
}

fn http_listener(port: u16, on_demand: bool) -> Result<Listener> {
    let filter = if on_demand {
        r#"      - name: envoy.filters.http.on_demand
        typed_config:
          "@type": type.googleapis.com/envoy.extensions.filters.http.on_demand.v3.OnDemand
          odcds: { source: { ads: {}, resource_api_version: V3 }, timeout: 10s }
"#
    } else {
        ""
    };
    Ok(courier_proto::from_yaml(&format!(
        r#"name: http
address: {{ socket_address: {{ address: 127.0.0.1, port_value: {port} }} }}
filter_chains:
- filters:
  - name: envoy.filters.network.http_connection_manager
    typed_config:
      "@type": type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager
      stat_prefix: http
      rds: {{ route_config_name: r, config_source: {{ ads: {{}}, resource_api_version: V3 }} }}
      http_filters:
{filter}      - name: envoy.filters.http.router
        typed_config: {{ "@type": type.googleapis.com/envoy.extensions.filters.http.router.v3.Router }}
"#
    ))?)
}

fn route() -> Result<RouteConfiguration> {
    Ok(courier_proto::from_yaml(
        "name: r\nvirtual_hosts: [{ name: all, domains: ['*'], routes: [{ match: { prefix: / }, route: { cluster_header: x-cluster } }] }]\n",
    )?)
}

struct Figures {
    /// Start of the run until the proxy holds what it needs.
    ready: Duration,
    rss_ready: u64,
    rss_after: u64,
    clusters_after: u64,
    first_p50: Duration,
    first_p99: Duration,
}

fn run(kind: &str, on_demand: bool, args: &Args, rt: &tokio::runtime::Runtime) -> Result<Figures> {
    let dir = tempfile::tempdir()?;
    let upstream = http_upstream()?;
    let cp = ControlPlane::new();
    let server = rt.block_on(cp.start("127.0.0.1:0".parse()?))?;
    let node = format!("bench-{kind}-{on_demand}");
    let port = super::free_port_block(1)?;
    let mut resources = vec![
        Resource::listener(&http_listener(port, on_demand)?)?,
        Resource::route(&route()?)?,
    ];
    for i in 0..args.clusters {
        resources.push(Resource::cluster(&static_cluster(
            &format!("c{i}"),
            upstream,
        )?)?);
    }
    let snapshot = cp
        .cache()
        .set_snapshot(&node, Snapshot::builder().resources(resources).build()?);
    let config = dir.path().join("bootstrap.yaml");
    std::fs::write(
        &config,
        bootstrap_with(&node, server.local_addr().port(), "DELTA_GRPC", !on_demand),
    )?;
    let t0 = Instant::now();
    let proxy = start_proxy(kind, &args.courier, &config, dir.path(), args.concurrency)?;
    let timeout = Duration::from_secs(900);
    let mut kinds = vec![ResourceType::Listener, ResourceType::Route];
    if !on_demand {
        kinds.insert(0, ResourceType::Cluster);
    }
    for k in kinds {
        let v = snapshot.version(k).to_string();
        rt.block_on(cp.status().wait_for_ack(&node, k, &v, timeout))?;
    }
    wait_live(&proxy)?;
    let ready = t0.elapsed();
    let pid = proxy.child.id();
    let (rss_ready, _) = usage(pid);
    let addr: SocketAddr = format!("127.0.0.1:{port}").parse()?;
    let mut firsts = Vec::new();
    let step = (args.clusters / args.requests.max(1)).max(1);
    for r in 0..args.requests.min(args.clusters) {
        let name = format!("c{}", r * step);
        let t = Instant::now();
        let answer = http_get_with(addr, "/", &format!("x-cluster: {name}\r\n"))?;
        if !answer.starts_with("HTTP/1.1 200") {
            bail!(
                "{kind}: request for {name}: {}",
                answer.lines().next().unwrap_or("")
            );
        }
        firsts.push(t.elapsed());
    }
    let (rss_after, _) = usage(pid);
    let stats = super::http_get(proxy.admin, "/stats?filter=cluster_manager.active_clusters")?;
    let clusters_after = stats
        .lines()
        .find_map(|l| l.split_once("cluster_manager.active_clusters: "))
        .and_then(|(_, v)| v.trim().parse().ok())
        .unwrap_or(0);
    firsts.sort();
    let pick = |q: f64| {
        firsts
            .get(((firsts.len() as f64 - 1.0) * q).round() as usize)
            .copied()
            .unwrap_or_default()
    };
    let (first_p50, first_p99) = (pick(0.5), pick(0.99));
    drop(proxy);
    rt.block_on(server.shutdown());
    Ok(Figures {
        ready,
        rss_ready,
        rss_after,
        clusters_after,
        first_p50,
        first_p99,
    })
}

/// Runs each proxy pushed up front and on demand; prints a table.
pub fn main(args: &Args, rt: &tokio::runtime::Runtime) -> Result<()> {
    println!(
        "On-demand CDS: {} clusters on the control plane, requests for {} of them, concurrency {}",
        args.clusters, args.requests, args.concurrency
    );
    let mut rows = Vec::new();
    for kind in &args.proxies {
        for on_demand in [false, true] {
            let f = run(kind, on_demand, args, rt)?;
            rows.push((kind.as_str(), on_demand, f));
        }
    }
    println!(
        "{:<8} {:<10} {:>10} {:>12} {:>12} {:>10} {:>14} {:>14}",
        "proxy",
        "clusters",
        "ready (s)",
        "rss MiB",
        "rss+req MiB",
        "held",
        "1st req p50",
        "1st req p99"
    );
    for (kind, on_demand, f) in &rows {
        println!(
            "{:<8} {:<10} {:>10.2} {:>12.1} {:>12.1} {:>10} {:>11.2} ms {:>11.2} ms",
            kind,
            if *on_demand { "on demand" } else { "up front" },
            f.ready.as_secs_f64(),
            f.rss_ready as f64 / 1048576.0,
            f.rss_after as f64 / 1048576.0,
            f.clusters_after,
            f.first_p50.as_secs_f64() * 1e3,
            f.first_p99.as_secs_f64() * 1e3,
        );
    }
    Ok(())
}
