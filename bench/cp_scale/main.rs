//! cp-scale: N simulated ADS clients against a `courier-cp` process serving M clusters (EDS)
//! with their endpoints; measures the time from a snapshot update (a PUT on the management
//! API) to each client's ACK of the new version, and courier-cp's CPU time and RSS.
//!
//! Not a test: run it with `bench/cp_scale/run.sh` (release build) and read the figures.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use clap::Parser;
use courier_proto::envoy::config::core::v3::Node;
use courier_proto::envoy::service::discovery::v3::aggregated_discovery_service_client::AggregatedDiscoveryServiceClient;
use courier_proto::envoy::service::discovery::v3::{DiscoveryRequest, DiscoveryResponse};
use courier_proto::type_url;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;

/// Scale benchmark of courier-cp.
#[derive(Debug, Parser)]
struct Args {
    /// Simulated ADS clients (one gRPC connection and stream each).
    #[arg(long, default_value_t = 1000)]
    clients: usize,
    /// Clusters (each EDS, with a ClusterLoadAssignment of one endpoint).
    #[arg(long, default_value_t = 1000)]
    clusters: usize,
    /// Update rounds per kind (EDS-only change, CDS change).
    #[arg(long, default_value_t = 5)]
    rounds: usize,
    /// courier-cp binary (default: next to this one).
    #[arg(long)]
    cp: Option<PathBuf>,
}

/// Set when the measurement is over: client errors caused by stopping courier-cp are expected.
static DONE: AtomicBool = AtomicBool::new(false);

#[derive(Debug)]
struct Ack {
    kind: &'static str,
    version: String,
    at: Instant,
}

fn cluster_yaml(i: usize, timeout_ms: u64) -> String {
    format!(
        "- name: cluster-{i}\n  connect_timeout: {}s\n  type: EDS\n  eds_cluster_config: {{ eds_config: {{ ads: {{}}, resource_api_version: V3 }} }}\n",
        timeout_ms as f64 / 1000.0
    )
}

fn cla_json(i: usize, port: u16) -> String {
    format!(
        r#"{{"cluster_name": "cluster-{i}", "endpoints": [{{"lb_endpoints": [{{"endpoint": {{"address": {{"socket_address": {{"address": "10.0.{}.{}", "port_value": {port}}}}}}}}}]}}]}}"#,
        (i / 250) % 256,
        i % 250 + 1
    )
}

fn resources_file(n: usize) -> String {
    let mut out = String::from("clusters:\n");
    for i in 0..n {
        out.push_str(&cluster_yaml(i, 1000));
    }
    out.push_str("endpoints:\n");
    for i in 0..n {
        out.push_str("- ");
        out.push_str(&cla_json(i, 8080));
        out.push('\n');
    }
    out
}

async fn http(method: &str, port: u16, path: &str, body: &str) -> anyhow::Result<(u16, String)> {
    let mut sock = tokio::net::TcpStream::connect(("127.0.0.1", port)).await?;
    let req = format!(
        "{method} {path} HTTP/1.1\r\nhost: x\r\nconnection: close\r\ncontent-length: {}\r\n\r\n{body}",
        body.len()
    );
    sock.write_all(req.as_bytes()).await?;
    let mut out = Vec::new();
    sock.read_to_end(&mut out).await?;
    let text = String::from_utf8_lossy(&out).into_owned();
    let (head, body) = text.split_once("\r\n\r\n").context("no HTTP head")?;
    let code = head
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .context("no status")?;
    Ok((code, body.to_string()))
}

async fn client(
    id: usize,
    port: u16,
    names: Arc<Vec<String>>,
    acks: mpsc::UnboundedSender<Ack>,
) -> anyhow::Result<()> {
    let channel = tonic::transport::Endpoint::from_shared(format!("http://127.0.0.1:{port}"))?
        .connect()
        .await?;
    let mut ads =
        AggregatedDiscoveryServiceClient::new(channel).max_decoding_message_size(256 * 1024 * 1024);
    let (tx, rx) = mpsc::channel::<DiscoveryRequest>(4);
    let node = Node {
        id: format!("client-{id}"),
        cluster: "bench".into(),
        ..Default::default()
    };
    tx.send(DiscoveryRequest {
        node: Some(node),
        type_url: type_url::CLUSTER.into(),
        ..Default::default()
    })
    .await?;
    let mut stream = ads
        .stream_aggregated_resources(ReceiverStream::new(rx))
        .await?
        .into_inner();
    let mut eds_subscribed = false;
    while let Some(resp) = stream.message().await? {
        let DiscoveryResponse {
            version_info,
            type_url: t,
            nonce,
            resources,
            ..
        } = resp;
        let (kind, names_for_ack) = if t == type_url::CLUSTER {
            ("cds", Vec::new())
        } else {
            ("eds", names.as_ref().clone())
        };
        // Touch the payload as a client would (it is decoded already by tonic).
        std::hint::black_box(resources.len());
        tx.send(DiscoveryRequest {
            type_url: t.clone(),
            version_info: version_info.clone(),
            response_nonce: nonce,
            resource_names: names_for_ack,
            ..Default::default()
        })
        .await?;
        let _ = acks.send(Ack {
            kind,
            version: version_info,
            at: Instant::now(),
        });
        if kind == "cds" && !eds_subscribed {
            eds_subscribed = true;
            tx.send(DiscoveryRequest {
                type_url: type_url::CLUSTER_LOAD_ASSIGNMENT.into(),
                resource_names: names.as_ref().clone(),
                ..Default::default()
            })
            .await?;
        }
    }
    Ok(())
}

/// courier-cp's (utime+stime in seconds, VmRSS MiB, VmHWM MiB).
fn proc_usage(pid: u32) -> (f64, f64, f64) {
    let ticks = 100.0; // USER_HZ on Linux
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    // Fields after the parenthesised command name; utime/stime are fields 14 and 15.
    let after = stat.rsplit_once(')').map(|(_, r)| r).unwrap_or("");
    let f: Vec<&str> = after.split_whitespace().collect();
    let cpu = f.get(11).and_then(|v| v.parse::<f64>().ok()).unwrap_or(0.0)
        + f.get(12).and_then(|v| v.parse::<f64>().ok()).unwrap_or(0.0);
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    let kb = |key: &str| {
        status
            .lines()
            .find(|l| l.starts_with(key))
            .and_then(|l| l.split_whitespace().nth(1))
            .and_then(|v| v.parse::<f64>().ok())
            .unwrap_or(0.0)
            / 1024.0
    };
    (cpu / ticks, kb("VmRSS:"), kb("VmHWM:"))
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    let idx = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[idx.min(sorted.len() - 1)]
}

/// Waits until every client reported an ACK of `version` of `kind`; returns the latencies
/// from `t0`.
async fn collect(
    rx: &mut mpsc::UnboundedReceiver<Ack>,
    clients: usize,
    kind: &str,
    version: &str,
    t0: Instant,
) -> anyhow::Result<Vec<Duration>> {
    let mut lat = Vec::with_capacity(clients);
    let deadline = tokio::time::Instant::now() + Duration::from_secs(120);
    while lat.len() < clients {
        let ack = tokio::time::timeout_at(deadline, rx.recv())
            .await
            .with_context(|| {
                format!(
                    "only {}/{clients} clients ACKed {kind} {version}",
                    lat.len()
                )
            })?
            .context("clients gone")?;
        if ack.kind == kind && ack.version == version {
            lat.push(ack.at.saturating_duration_since(t0));
        }
    }
    lat.sort();
    Ok(lat)
}

fn free_port() -> anyhow::Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port())
}

struct Kill(std::process::Child);
impl Drop for Kill {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let cp_bin = match &args.cp {
        Some(p) => p.clone(),
        None => std::env::current_exe()?
            .parent()
            .context("exe dir")?
            .join("courier-cp"),
    };
    let dir = std::env::temp_dir().join(format!("cp-scale-{}", std::process::id()));
    std::fs::create_dir_all(&dir)?;
    let file = dir.join("resources.yaml");
    std::fs::write(&file, resources_file(args.clusters))?;
    let (xds, admin) = (free_port()?, free_port()?);
    let cp = Kill(
        std::process::Command::new(&cp_bin)
            .args(["--listen", &format!("127.0.0.1:{xds}")])
            .args(["--admin", &format!("127.0.0.1:{admin}")])
            .arg("--resources")
            .arg(&file)
            .env("RUST_LOG", "warn")
            .spawn()
            .with_context(|| format!("spawning {}", cp_bin.display()))?,
    );
    let pid = cp.0.id();
    let start = Instant::now();
    while http("GET", admin, "/version", "").await.is_err() {
        if start.elapsed() > Duration::from_secs(30) {
            bail!("courier-cp did not start");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let (code, body) = http(
        "PUT",
        admin,
        "/resources/endpoints/cluster-0",
        &cla_json(0, 8080),
    )
    .await?;
    if code != 200 {
        bail!("PUT failed: {code} {body}");
    }
    let initial: serde_json::Value = serde_json::from_str(&body)?;
    let eds_v0 = initial["versions"]["endpoints"]
        .as_str()
        .unwrap_or("")
        .to_string();
    let (rss0_cpu, rss0, _) = proc_usage(pid);

    println!(
        "cp-scale: {} clients x {} clusters (+{} ClusterLoadAssignments), courier-cp pid {pid}",
        args.clients, args.clusters, args.clusters
    );
    let names: Arc<Vec<String>> =
        Arc::new((0..args.clusters).map(|i| format!("cluster-{i}")).collect());
    let (ack_tx, mut ack_rx) = mpsc::unbounded_channel();
    let t0 = Instant::now();
    for id in 0..args.clients {
        let (names, tx) = (names.clone(), ack_tx.clone());
        tokio::spawn(async move {
            if let Err(e) = client(id, xds, names, tx).await {
                if !DONE.load(Ordering::Relaxed) {
                    eprintln!("client {id}: {e:#}");
                }
            }
        });
    }
    let lat = collect(&mut ack_rx, args.clients, "eds", &eds_v0, t0).await?;
    let (cpu1, rss1, _) = proc_usage(pid);
    println!(
        "initial sync (connect + CDS + EDS of {} each): last client ACK after {:?}; courier-cp CPU {:.2}s, RSS {:.0} MiB (idle before: {:.0} MiB)",
        args.clusters,
        lat.last().copied().unwrap_or_default(),
        cpu1 - rss0_cpu,
        rss1,
        rss0
    );

    let mut results: HashMap<&str, Vec<Duration>> = HashMap::new();
    let mut cpu_per_round: HashMap<&str, Vec<f64>> = HashMap::new();
    for round in 0..args.rounds {
        for kind in ["eds", "cds"] {
            let (path, body, key) = if kind == "eds" {
                (
                    "/resources/endpoints/cluster-7".to_string(),
                    cla_json(7, 9000 + round as u16),
                    "endpoints",
                )
            } else {
                let yaml = cluster_yaml(7, 2000 + round as u64);
                let yaml = yaml.trim_start_matches("- ").replace("\n  ", "\n");
                (
                    "/resources/clusters/cluster-7".to_string(),
                    yaml,
                    "clusters",
                )
            };
            let (cpu_before, _, _) = proc_usage(pid);
            let t0 = Instant::now();
            let (code, resp) = http("PUT", admin, &path, &body).await?;
            if code != 200 {
                bail!("PUT {path}: {code} {resp}");
            }
            let v: serde_json::Value = serde_json::from_str(&resp)?;
            let version = v["versions"][key].as_str().unwrap_or("").to_string();
            let lat = collect(&mut ack_rx, args.clients, kind, &version, t0).await?;
            let (cpu_after, _, _) = proc_usage(pid);
            println!(
                "round {round} {kind}: update → ACK p50 {:?} p99 {:?} max {:?}; courier-cp CPU {:.2}s",
                percentile(&lat, 0.5),
                percentile(&lat, 0.99),
                lat.last().copied().unwrap_or_default(),
                cpu_after - cpu_before
            );
            results.entry(kind).or_default().extend(lat);
            cpu_per_round
                .entry(kind)
                .or_default()
                .push(cpu_after - cpu_before);
        }
    }
    let (_, rss, hwm) = proc_usage(pid);
    println!(
        "--- summary ({} clients x {} clusters, {} rounds) ---",
        args.clients, args.clusters, args.rounds
    );
    for kind in ["eds", "cds"] {
        let mut all = results.remove(kind).unwrap_or_default();
        all.sort();
        let cpu = cpu_per_round.remove(kind).unwrap_or_default();
        let what = if kind == "eds" {
            format!(
                "EDS change (each client gets {} ClusterLoadAssignments)",
                args.clusters
            )
        } else {
            format!("CDS change (each client gets {} Clusters)", args.clusters)
        };
        println!(
            "{what}: p50 {:?}, p99 {:?}, max {:?}; courier-cp CPU per update {:.2}s",
            percentile(&all, 0.5),
            percentile(&all, 0.99),
            all.last().copied().unwrap_or_default(),
            cpu.iter().sum::<f64>() / cpu.len().max(1) as f64
        );
    }
    println!("courier-cp RSS now {rss:.0} MiB, peak {hwm:.0} MiB");
    DONE.store(true, Ordering::Relaxed);
    let _ = std::fs::remove_dir_all(&dir);
    Ok(())
}
