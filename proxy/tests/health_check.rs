//! Active health checking, differential with Envoy 1.40: the same bootstrap runs through
//! Courier and (when `envoy` is on PATH) Envoy, upstreams start failing their checks and
//! recover, and both proxies must stop and resume sending them traffic, show the same
//! `health_flags`, and write the same health check events.

mod http_support;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU16, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use http_body_util::Full;
use hyper::body::{Bytes, Incoming};
use hyper::Request;
use hyper_util::rt::TokioIo;

use http_support::*;

/// An upstream whose `/healthz` answers the status the test sets, and which names itself
/// in every other answer.
struct Target {
    addr: SocketAddr,
    name: String,
    health: Arc<AtomicU16>,
    checks: Arc<AtomicUsize>,
}

impl Target {
    fn start(name: &str) -> Target {
        let health = Arc::new(AtomicU16::new(200));
        let checks = Arc::new(AtomicUsize::new(0));
        let (h, c, n) = (health.clone(), checks.clone(), name.to_string());
        let addr = spawn_tokio_server(move |stream| {
            let (h, c, n) = (h.clone(), c.clone(), n.clone());
            async move {
                let svc = hyper::service::service_fn(move |req: Request<Incoming>| {
                    let (h, c, n) = (h.clone(), c.clone(), n.clone());
                    async move {
                        let (status, body) = if req.uri().path() == "/healthz" {
                            c.fetch_add(1, Ordering::SeqCst);
                            (h.load(Ordering::SeqCst), String::from("ok"))
                        } else {
                            (200, n)
                        };
                        hyper::Response::builder()
                            .status(status)
                            .body(Full::new(Bytes::from(body)))
                    }
                });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(stream), svc)
                    .await;
            }
        });
        Target {
            addr,
            name: name.to_string(),
            health,
            checks,
        }
    }

    fn set_health(&self, status: u16) {
        self.health.store(status, Ordering::SeqCst);
    }
}

fn health_check(extra: &str) -> String {
    format!(
        "    health_checks:\n    - timeout: 1s\n      interval: 0.1s\n      no_traffic_interval: 0.1s\n      unhealthy_threshold: 2\n      healthy_threshold: 2\n{extra}"
    )
}

/// Each host's `health_flags` in `/clusters`, by port.
fn flags(proxy: &Courier, cluster: &str) -> HashMap<u16, String> {
    admin_get(proxy.admin, "/clusters")
        .unwrap_or_default()
        .lines()
        .filter_map(|l| {
            let rest = l.strip_prefix(&format!("{cluster}::"))?;
            let (addr, v) = rest.split_once("::health_flags::")?;
            Some((addr.parse::<SocketAddr>().ok()?.port(), v.to_string()))
        })
        .collect()
}

/// Waits until `/clusters` shows `want` for the host on `port`.
fn wait_flags(proxy: &Courier, cluster: &str, port: u16, want: &str) {
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let now = flags(proxy, cluster);
        if now.get(&port).is_some_and(|f| f == want) {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "host {port} of {cluster} never showed {want}: {now:?}"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Which targets answer `n` requests.
fn spread(proxy: &Courier, n: usize) -> HashMap<String, usize> {
    let mut out = HashMap::new();
    for _ in 0..n {
        let r = get(proxy.listener, "x", "/", &[]);
        assert_eq!(r.status, 200, "{}", r.body_str());
        *out.entry(r.body_str()).or_insert(0) += 1;
    }
    out
}

/// Health check events without their timestamps, sorted.
fn events(path: &std::path::Path) -> Vec<serde_json::Value> {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let mut out: Vec<serde_json::Value> = text
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .map(|mut v| {
            if let Some(o) = v.as_object_mut() {
                o.remove("timestamp");
            }
            v
        })
        .collect();
    out.sort_by_key(|v| v.to_string());
    out
}

/// One scenario on one proxy: three hosts pass, one fails with 503 and is taken out
/// of rotation at once (an ACTIVE failure), then passes twice and comes back. Returns the
/// events written.
fn fail_and_recover(start: impl Fn(&str) -> Option<Courier>) -> Option<Vec<serde_json::Value>> {
    let targets: Vec<Target> = ["a", "b", "c"].iter().map(|n| Target::start(n)).collect();
    let dir = tempfile::tempdir().expect("tempdir");
    let log = dir.path().join("hc.log");
    let hc = health_check(&format!(
        "      event_log_path: {}\n      http_health_check: {{ path: /healthz }}\n",
        log.display()
    ));
    let addrs: Vec<SocketAddr> = targets.iter().map(|t| t.addr).collect();
    let proxy = start(&bootstrap(&all_to("hc"), "", &cluster("hc", &addrs, &hc)))?;
    // The cluster warmed on its first checks: every host passed already.
    for t in &targets {
        assert!(
            t.checks.load(Ordering::SeqCst) >= 1,
            "{} was not checked before serving",
            t.name
        );
        wait_flags(&proxy, "hc", t.addr.port(), "healthy");
    }
    let seen = spread(&proxy, 30);
    assert_eq!(seen.len(), 3, "all three hosts serve: {seen:?}");

    targets[1].set_health(503);
    wait_flags(&proxy, "hc", targets[1].addr.port(), "/failed_active_hc");
    let seen = spread(&proxy, 30);
    assert!(
        !seen.contains_key("b"),
        "a failing host got traffic: {seen:?}"
    );

    targets[1].set_health(200);
    wait_flags(&proxy, "hc", targets[1].addr.port(), "healthy");
    // A health change within `update_merge_window` (1 s) of the previous one reaches the
    // workers when the window ends, on both proxies.
    let t0 = Instant::now();
    loop {
        let seen = spread(&proxy, 30);
        if seen.contains_key("b") {
            break;
        }
        assert!(
            t0.elapsed() < Duration::from_secs(3),
            "a recovered host got no traffic: {seen:?}"
        );
    }

    assert!(proxy.stat("cluster.hc.health_check.attempt") >= 6);
    assert!(proxy.stat("cluster.hc.health_check.failure") >= 1);
    assert_eq!(proxy.stat("cluster.hc.health_check.healthy"), 3);
    // Three first checks, an ejection and a recovery. Envoy flushes its event log about
    // once a second: wait for the file to hold them.
    let deadline = Instant::now() + Duration::from_secs(10);
    while events(&log).len() < 5 && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(50));
    }
    drop(proxy);
    Some(events(&log))
}

#[test]
fn http_checks_take_failing_hosts_out_and_bring_them_back_as_envoy() {
    let courier = fail_and_recover(|b| Some(Courier::start(b))).expect("courier ran");
    let kinds: Vec<String> = courier
        .iter()
        .filter_map(|e| e.as_object())
        .flat_map(|o| o.keys().filter(|k| k.ends_with("event")).cloned())
        .collect();
    assert_eq!(
        kinds.iter().filter(|k| *k == "add_healthy_event").count(),
        4,
        "three first checks and one recovery: {courier:?}"
    );
    assert_eq!(
        kinds
            .iter()
            .filter(|k| *k == "eject_unhealthy_event")
            .count(),
        1
    );
    if let Some(envoy) = fail_and_recover(Courier::start_envoy) {
        // The same events, field for field (the hosts' ports differ between runs).
        let strip = |v: &[serde_json::Value]| -> Vec<String> {
            let mut out: Vec<String> = v
                .iter()
                .map(|e| {
                    let mut e = e.clone();
                    if let Some(sa) = e.pointer_mut("/host/socket_address") {
                        if let Some(o) = sa.as_object_mut() {
                            o.remove("port_value");
                        }
                    }
                    e.to_string()
                })
                .collect();
            out.sort();
            out
        };
        assert_eq!(strip(&courier), strip(&envoy));
    }
}

/// A TCP check with a payload: a host must answer `pong` to `ping`. One that refuses
/// connections fails after `unhealthy_threshold` network failures.
fn tcp_scenario(start: impl Fn(&str) -> Option<Courier>) -> Option<String> {
    let up = Upstream::start("up");
    let pong = spawn_tokio_server(|mut s| async move {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let mut buf = [0u8; 64];
        while let Ok(n) = s.read(&mut buf).await {
            if n == 0 || s.write_all(b"pong").await.is_err() {
                return;
            }
        }
    });
    let refusing = refusing_addr();
    let hc = health_check(
        "      tcp_health_check: { send: { text: \"70696e67\" }, receive: [ { text: \"706f6e67\" } ] }\n",
    );
    // The routed cluster is plain; the checked one holds one answering and one dead host.
    let clusters = format!(
        "{}{}",
        cluster("up", &[up.addr], ""),
        cluster("tcp", &[pong, refusing], &hc)
    );
    let proxy = start(&bootstrap(&all_to("up"), "", &clusters))?;
    wait_flags(&proxy, "tcp", pong.port(), "healthy");
    wait_flags(&proxy, "tcp", refusing.port(), "/failed_active_hc");
    let deadline = Instant::now() + Duration::from_secs(10);
    while proxy.stat("cluster.tcp.health_check.network_failure") < 3 {
        assert!(Instant::now() < deadline, "no network failures counted");
        std::thread::sleep(Duration::from_millis(20));
    }
    Some(format!("{:?}", flags(&proxy, "tcp").len()))
}

#[test]
fn tcp_checks_match_payloads_and_fail_dead_hosts_as_envoy() {
    let courier = tcp_scenario(|b| Some(Courier::start(b))).expect("courier ran");
    if let Some(envoy) = tcp_scenario(Courier::start_envoy) {
        assert_eq!(courier, envoy);
    }
}

#[test]
fn invalid_health_checks_are_refused_as_envoy_refuses_them() {
    let up = Upstream::start("up");
    for (hc, why) in [
        (
            "    health_checks:\n    - { timeout: 1s, interval: 1s, unhealthy_threshold: 1, healthy_threshold: 1, http_health_check: { path: /h, expected_statuses: [ { start: 300, end: 200 } ] } }\n",
            "expecting start < end",
        ),
        (
            "    health_checks:\n    - { timeout: 1s, interval: 1s, unhealthy_threshold: 1, healthy_threshold: 1, tcp_health_check: {} }\n    - { timeout: 1s, interval: 1s, unhealthy_threshold: 1, healthy_threshold: 1, tcp_health_check: {} }\n",
            "Multiple health checks not supported",
        ),
        (
            "    health_checks:\n    - { timeout: 1s, interval: 1s, unhealthy_threshold: 1, healthy_threshold: 1, grpc_health_check: {} }\n",
            "must support HTTP/2 for gRPC healthchecking",
        ),
    ] {
        let b = bootstrap(&all_to("c"), "", &cluster("c", &[up.addr], hc));
        let (code, out) = validate(&b);
        assert_ne!(code, Some(0), "accepted: {hc}");
        assert!(out.contains(why), "{why} not in: {out}");
    }
}

/// A gRPC upstream (HTTP/2) whose `grpc.health.v1.Health/Check` answers the serving
/// status the test sets (1 SERVING, 2 NOT_SERVING), and which records the service asked.
struct GrpcTarget {
    addr: SocketAddr,
    status: Arc<AtomicU16>,
    asked: Arc<std::sync::Mutex<Vec<u8>>>,
}

impl GrpcTarget {
    fn start() -> GrpcTarget {
        use http_body_util::{BodyExt, StreamBody};
        use hyper::body::Frame;
        let status = Arc::new(AtomicU16::new(1));
        let asked = Arc::new(std::sync::Mutex::new(Vec::new()));
        let (s, a) = (status.clone(), asked.clone());
        let addr = spawn_tokio_server(move |stream| {
            let (s, a) = (s.clone(), a.clone());
            async move {
                let svc = hyper::service::service_fn(move |req: Request<Incoming>| {
                    let (s, a) = (s.clone(), a.clone());
                    async move {
                        let path = req.uri().path().to_string();
                        let body = req.into_body().collect().await.map(|c| c.to_bytes());
                        if let (Ok(b), Ok(mut seen)) = (body, a.lock()) {
                            *seen = b.to_vec();
                        }
                        let msg: Vec<u8> = if path == "/grpc.health.v1.Health/Check" {
                            vec![0, 0, 0, 0, 2, 0x08, s.load(Ordering::SeqCst) as u8]
                        } else {
                            vec![0, 0, 0, 0, 0]
                        };
                        let mut trailers = http::HeaderMap::new();
                        trailers.insert("grpc-status", http::HeaderValue::from_static("0"));
                        let frames = vec![
                            Ok::<_, std::convert::Infallible>(Frame::data(Bytes::from(msg))),
                            Ok(Frame::trailers(trailers)),
                        ];
                        hyper::Response::builder()
                            .header("content-type", "application/grpc")
                            .body(StreamBody::new(futures::stream::iter(frames)))
                    }
                });
                let _ =
                    hyper::server::conn::http2::Builder::new(hyper_util::rt::TokioExecutor::new())
                        .serve_connection(TokioIo::new(stream), svc)
                        .await;
            }
        });
        GrpcTarget {
            addr,
            status,
            asked,
        }
    }
}

/// gRPC health checks: the standard service, asked about `service_name`; NOT_SERVING
/// fails the host at once, SERVING brings it back after the healthy threshold.
fn grpc_scenario(start: impl Fn(&str) -> Option<Courier>) -> Option<Vec<String>> {
    let target = GrpcTarget::start();
    let up = Upstream::start("up");
    let hc = health_check("      grpc_health_check: { service_name: svc }\n");
    let h2 = "    typed_extension_protocol_options:\n      envoy.extensions.upstreams.http.v3.HttpProtocolOptions:\n        \"@type\": type.googleapis.com/envoy.extensions.upstreams.http.v3.HttpProtocolOptions\n        explicit_http_config: { http2_protocol_options: {} }\n";
    let clusters = format!(
        "{}{}",
        cluster("up", &[up.addr], ""),
        cluster("grpc", &[target.addr], &format!("{h2}{hc}"))
    );
    let proxy = start(&bootstrap(&all_to("up"), "", &clusters))?;
    let port = target.addr.port();
    let mut seen = vec![flags(&proxy, "grpc")
        .get(&port)
        .cloned()
        .unwrap_or_default()];
    target.status.store(2, Ordering::SeqCst);
    wait_flags(&proxy, "grpc", port, "/failed_active_hc");
    seen.push("/failed_active_hc".into());
    target.status.store(1, Ordering::SeqCst);
    wait_flags(&proxy, "grpc", port, "healthy");
    seen.push("healthy".into());
    // HealthCheckRequest { service: "svc" } in one gRPC message.
    let asked = target.asked.lock().map(|a| a.clone()).unwrap_or_default();
    assert_eq!(asked, [0, 0, 0, 0, 5, 0x0a, 3, b's', b'v', b'c']);
    Some(seen)
}

#[test]
fn grpc_checks_follow_the_serving_status_as_envoy() {
    let courier = grpc_scenario(|b| Some(Courier::start(b))).expect("courier ran");
    assert_eq!(courier, ["healthy", "/failed_active_hc", "healthy"]);
    if let Some(envoy) = grpc_scenario(Courier::start_envoy) {
        assert_eq!(courier, envoy);
    }
}
