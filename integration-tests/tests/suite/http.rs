//! HTTP scenarios (http_connection_manager + RDS). Against Courier they run as soon as it
//! serves HTTP: until then each one skips, printing why, on the fact that Courier NACKed the
//! HTTP listener for an unsupported `http_connection_manager` (see README).

use std::sync::Arc;
use std::time::Duration;

use courier_control_plane::{Resource, ResourceType};
use courier_integration_tests::proxy::port_open;
use courier_integration_tests::proxy::ProxyOptions;
use courier_integration_tests::resources::*;
use courier_integration_tests::traffic::{http_get, HttpConn};
use courier_integration_tests::upstream::{Behaviour, Upstream};
use courier_integration_tests::{
    eventually, free_port, http_supported, Bootstrap, Cp, Proxy, ProxyKind,
};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::fixture::{snapshot, Fx, NODE};

/// Starts cp + proxy with `resources`; None when the proxy does not serve HTTP yet.
async fn http_fx(resources: Vec<Arc<Resource>>, drain_time_s: u64) -> Option<Fx> {
    let cp = Cp::start().await;
    let boot = Bootstrap::ads(NODE, cp.port);
    let s = cp.set(NODE, snapshot(resources));
    let proxy = Proxy::start_with(
        ProxyKind::from_env(),
        &boot.yaml(),
        ProxyOptions {
            drain_time_s,
            ..ProxyOptions::default()
        },
    )
    .await;
    if !http_supported(&cp, NODE, s.version(ResourceType::Listener), &proxy).await {
        return None;
    }
    cp.ack_all(NODE, &s).await;
    proxy.wait_live().await;
    Some(Fx { cp, proxy, boot })
}

async fn upstream_of(port: u16) -> Option<String> {
    match http_get(port).await {
        Ok(r) if r.status == 200 => r.upstream().map(str::to_string),
        _ => None,
    }
}

/// RDS route update: new requests take the new route; a request in flight on the old route
/// completes from the old cluster.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rds_route_update_in_flight_unaffected() {
    let a = Upstream::http_with("a", Behaviour::Slow(Duration::from_millis(1500))).await;
    let b = Upstream::http("b").await;
    let port = free_port();
    let Some(fx) = http_fx(
        vec![
            static_cluster("ca", &[a.port], ""),
            static_cluster("cb", &[b.port], ""),
            http_listener("hl", port, "r1"),
            route("r1", "ca"),
        ],
        5,
    )
    .await
    else {
        return;
    };
    let in_flight = tokio::spawn(async move { http_get(port).await });
    eventually("the slow request reached a", || async {
        (a.served.load(std::sync::atomic::Ordering::SeqCst) >= 1).then_some(())
    })
    .await;
    fx.update(vec![route("r1", "cb")]).await;
    eventually("new requests go to b", || async {
        (upstream_of(port).await.as_deref() == Some("b")).then_some(())
    })
    .await;
    let r = in_flight.await.expect("join").expect("in-flight request");
    assert_eq!((r.status, r.upstream()), (200, Some("a")));
    assert!(fx.proxy.stat("http.hl.rds.r1.update_success").await >= Some(2));
}

/// Weighted clusters 100/0 → 0/100 over RDS.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http_weighted_cluster_shift() {
    let (a, b) = (Upstream::http("a").await, Upstream::http("b").await);
    let port = free_port();
    let Some(fx) = http_fx(
        vec![
            static_cluster("ca", &[a.port], ""),
            static_cluster("cb", &[b.port], ""),
            http_listener("hl", port, "r1"),
            route_weighted("r1", &[("ca", 100), ("cb", 0)]),
        ],
        5,
    )
    .await
    else {
        return;
    };
    for _ in 0..20 {
        assert_eq!(upstream_of(port).await.as_deref(), Some("a"));
    }
    fx.update(vec![route_weighted("r1", &[("ca", 0), ("cb", 100)])])
        .await;
    eventually("shifted to b", || async {
        (upstream_of(port).await.as_deref() == Some("b")).then_some(())
    })
    .await;
    for _ in 0..20 {
        assert_eq!(upstream_of(port).await.as_deref(), Some("b"));
    }
}

/// Listener update with an HTTP keep-alive connection open on the old listener: its next
/// request is still served by the old config and the connection is closed by the drain;
/// new connections get the new config.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http_keepalive_connection_drains_on_listener_update() {
    let (a, b) = (Upstream::http("a").await, Upstream::http("b").await);
    let port = free_port();
    let Some(fx) = http_fx(
        vec![
            static_cluster("ca", &[a.port], ""),
            static_cluster("cb", &[b.port], ""),
            http_listener("hl", port, "r1"),
            route("r1", "ca"),
            route("r2", "cb"),
        ],
        2,
    )
    .await
    else {
        return;
    };
    let mut conn = HttpConn::open(port).await.expect("connect");
    let r = conn.get().await.expect("first request");
    assert_eq!(r.upstream(), Some("a"));
    fx.update(vec![http_listener("hl", port, "r2")]).await;
    eventually("new connections get r2 → b", || async {
        (upstream_of(port).await.as_deref() == Some("b")).then_some(())
    })
    .await;
    // The old connection: served by the old listener (a) until the drain closes it.
    let mut closed = false;
    for _ in 0..40 {
        match conn.get().await {
            Ok(r) => {
                assert_eq!((r.status, r.upstream()), (200, Some("a")));
                if r.headers.get("connection").is_some_and(|v| v == "close") {
                    closed = true;
                    break;
                }
            }
            Err(_) => {
                closed = true;
                break;
            }
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert!(closed, "the drained keep-alive connection was closed");
}

/// A websocket tunnel through an HTTP listener that is then removed: the tunnel keeps
/// carrying bytes while the listener drains and is closed when the drain time ends (not
/// before), as a drained listener's every connection is.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn websocket_tunnel_closed_when_its_listener_drain_ends() {
    const DRAIN_S: u64 = 4;
    let a = Upstream::http("a").await;
    let port = free_port();
    let Some(fx) = http_fx(
        vec![
            static_cluster("ca", &[a.port], ""),
            http_listener_websocket("hl", port, "r1"),
            route("r1", "ca"),
        ],
        DRAIN_S,
    )
    .await
    else {
        return;
    };
    let mut ws = tokio::net::TcpStream::connect(("127.0.0.1", port))
        .await
        .expect("connect");
    ws.write_all(
        b"GET /chat HTTP/1.1\r\nhost: x\r\nupgrade: websocket\r\nconnection: upgrade\r\nsec-websocket-version: 13\r\nsec-websocket-key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n",
    )
    .await
    .expect("upgrade request");
    let mut head = Vec::new();
    while !head.ends_with(b"\r\n\r\n") {
        let mut byte = [0u8; 1];
        let n = tokio::time::timeout(IO_TIMEOUT, ws.read(&mut byte))
            .await
            .expect("response head within 10 s")
            .expect("read");
        assert_eq!(n, 1, "closed before the response head ended: {head:?}");
        head.push(byte[0]);
    }
    let head = String::from_utf8_lossy(&head).to_ascii_lowercase();
    assert!(head.starts_with("http/1.1 101"), "{head}");
    assert!(head.contains("x-upstream: a"), "{head}");
    echo(&mut ws, b"before").await;
    let removed = std::time::Instant::now();
    fx.remove(&[(ResourceType::Listener, "hl")]).await;
    eventually("port refuses new connections", || async {
        (!port_open(port).await).then_some(())
    })
    .await;
    echo(&mut ws, b"draining").await;
    let mut buf = [0u8; 16];
    let end = tokio::time::timeout(Duration::from_secs(DRAIN_S + 15), ws.read(&mut buf)).await;
    assert!(
        matches!(end, Ok(Ok(0)) | Ok(Err(_))),
        "the tunnel is closed at the end of the drain: {end:?}"
    );
    // Closed by the drain's end, not by the removal itself.
    let after = removed.elapsed();
    assert!(
        after >= Duration::from_secs(DRAIN_S - 1),
        "closed after {after:?}"
    );
}

const IO_TIMEOUT: Duration = Duration::from_secs(10);

/// Writes `msg` into a tunnel and reads back its echo.
async fn echo(s: &mut tokio::net::TcpStream, msg: &[u8]) {
    s.write_all(msg).await.expect("write");
    let mut back = vec![0u8; msg.len()];
    tokio::time::timeout(IO_TIMEOUT, s.read_exact(&mut back))
        .await
        .expect("echo within 10 s")
        .expect("echo");
    assert_eq!(back, msg);
}

/// Invalid route configurations are NACKed on RDS and the previous routes keep serving.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rds_invalid_route_configs_nacked() {
    let a = Upstream::http("a").await;
    let port = free_port();
    let Some(fx) = http_fx(
        vec![
            static_cluster("ca", &[a.port], ""),
            http_listener("hl", port, "r1"),
            route("r1", "ca"),
        ],
        5,
    )
    .await
    else {
        return;
    };
    let cases = [
        (
            "invalid regex",
            "name: r1\nvirtual_hosts: [{ name: all, domains: ['*'], routes: [{ match: { safe_regex: { regex: '(' } }, route: { cluster: ca } }] }]\n",
            &["regex", "missing )", "missing ')'"][..],
        ),
        (
            "unknown cluster with validate_clusters",
            "name: r1\nvalidate_clusters: true\nvirtual_hosts: [{ name: all, domains: ['*'], routes: [{ match: { prefix: / }, route: { cluster: nope } }] }]\n",
            &["unknown cluster", "nope"][..],
        ),
        (
            "duplicate virtual host domains",
            "name: r1\nvirtual_hosts: [{ name: v1, domains: ['*'], routes: [] }, { name: v2, domains: ['*'], routes: [] }]\n",
            &["duplicate", "only a single wildcard", "domain"][..],
        ),
    ];
    for (what, yaml, reasons) in cases {
        let v = fx.push(route_yaml(yaml));
        let msg = fx.cp.nack(NODE, ResourceType::Route, &v).await;
        let lower = msg.to_ascii_lowercase();
        assert!(
            reasons.iter().any(|r| lower.contains(r)),
            "{what}: reason not in {reasons:?}: {msg}"
        );
        assert_eq!(upstream_of(port).await.as_deref(), Some("a"), "{what}");
        let v = fx.push(route("r1", "ca"));
        let _ = fx.cp.outcome(NODE, ResourceType::Route, &v).await;
    }
    assert!(fx.proxy.stat("http.hl.rds.r1.update_rejected").await >= Some(3));
}
