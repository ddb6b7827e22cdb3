//! Upstream connection pools follow the clusters: a removed cluster's connections and those
//! of hosts that EDS removed are closed (idle ones at once, busy ones when their request
//! ends), as Envoy drains them. Counted at the upstreams, over real sockets, so the same
//! assertions hold for Courier and for Envoy.

use std::sync::Arc;

use courier_control_plane::{Resource, ResourceType};
use courier_integration_tests::resources::*;
use courier_integration_tests::traffic::{HttpConn, TcpSession};
use courier_integration_tests::upstream::Upstream;
use courier_integration_tests::{eventually, free_port, http_supported, Bootstrap, Cp, Proxy};

use crate::fixture::{snapshot, Fx, NODE};

/// HTTP/2 to the upstream (prior knowledge), as `typed_extension_protocol_options`.
const H2: &str = "typed_extension_protocol_options:\n  envoy.extensions.upstreams.http.v3.HttpProtocolOptions:\n    \"@type\": type.googleapis.com/envoy.extensions.upstreams.http.v3.HttpProtocolOptions\n    explicit_http_config: { http2_protocol_options: {} }";

/// cp + proxy serving `resources`; None when the proxy does not serve HTTP.
async fn fx(resources: Vec<Arc<Resource>>) -> Option<Fx> {
    let cp = Cp::start().await;
    let boot = Bootstrap::ads(NODE, cp.port);
    let s = cp.set(NODE, snapshot(resources));
    let proxy = Proxy::start(&boot.yaml()).await;
    if !http_supported(&cp, NODE, s.version(ResourceType::Listener), &proxy).await {
        return None;
    }
    cp.ack_all(NODE, &s).await;
    proxy.wait_live().await;
    Some(Fx { cp, proxy, boot })
}

/// A keep-alive client connection the polling checks share.
type Conn = tokio::sync::Mutex<HttpConn>;

async fn open(port: u16) -> Conn {
    tokio::sync::Mutex::new(HttpConn::open(port).await.expect("connect"))
}

/// Sends requests on `conn` until one is answered by `upstream`.
async fn served_by(conn: &Conn, upstream: &str) {
    eventually(&format!("a request served by {upstream}"), || async {
        match conn.lock().await.get().await {
            Ok(r) if r.upstream() == Some(upstream) => Some(()),
            Ok(_) => None,
            Err(e) => panic!("the keep-alive connection failed: {e}"),
        }
    })
    .await;
}

/// A control plane swaps a route between clusters `c0`…`c{n-1}`, each swap adding the new
/// cluster and removing the old one, with a keep-alive request after each. Afterwards the
/// proxy holds one upstream connection (the current cluster's), not one per removed
/// cluster.
async fn swapped_clusters_leave_one_connection(n: usize, extra: &str) {
    let mut upstreams = Vec::new();
    for i in 0..n {
        upstreams.push(Upstream::http(&format!("u{i}")).await);
    }
    let port = free_port();
    let Some(fx) = fx(vec![
        static_cluster("c0", &[upstreams[0].port], extra),
        http_listener("hl", port, "r"),
        route("r", "c0"),
    ])
    .await
    else {
        return;
    };
    let conn = open(port).await;
    served_by(&conn, "u0").await;
    for (i, upstream) in upstreams.iter().enumerate().skip(1) {
        fx.change(
            vec![
                static_cluster(&format!("c{i}"), &[upstream.port], extra),
                route("r", &format!("c{i}")),
            ],
            vec![(ResourceType::Cluster, format!("c{}", i - 1))],
        )
        .await;
        served_by(&conn, &upstream.name).await;
    }
    eventually("the removed clusters' connections closed", || async {
        let open: Vec<u64> = upstreams.iter().map(Upstream::open).collect();
        (open[..n - 1].iter().all(|&o| o == 0) && open[n - 1] == 1).then_some(())
    })
    .await;
    // The current cluster's connection is still the one in use.
    served_by(&conn, &format!("u{}", n - 1)).await;
    assert_eq!(upstreams[n - 1].accepted(), 1, "its connection was reused");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn removed_clusters_http1_connections_are_closed() {
    swapped_clusters_leave_one_connection(31, "").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn removed_clusters_http2_connections_are_closed() {
    swapped_clusters_leave_one_connection(8, H2).await;
}

/// A modified cluster (a new config, the same endpoints) is a new cluster to Envoy: the
/// old one's connections close, the next request opens one of the new cluster's.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_modified_clusters_connections_are_replaced() {
    let u = Upstream::http("u").await;
    let port = free_port();
    let Some(fx) = fx(vec![
        static_cluster("c", &[u.port], ""),
        http_listener("hl", port, "r"),
        route("r", "c"),
    ])
    .await
    else {
        return;
    };
    let conn = open(port).await;
    served_by(&conn, "u").await;
    assert_eq!(u.accepted(), 1);
    fx.update(vec![static_cluster(
        "c",
        &[u.port],
        "per_connection_buffer_limit_bytes: 65536",
    )])
    .await;
    eventually(
        "the old cluster's connection closed and a new one opened",
        || async {
            let _ = conn.lock().await.get().await;
            (u.accepted() == 2 && u.open() == 1).then_some(())
        },
    )
    .await;
}

/// EDS removes a host: its connections close; the connections to the host that stays are
/// untouched.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hosts_removed_by_eds_have_their_connections_closed() {
    let (a, b) = (Upstream::http("a").await, Upstream::http("b").await);
    let port = free_port();
    let Some(fx) = fx(vec![
        eds_cluster("c"),
        endpoints("c", &[a.port, b.port]),
        http_listener("hl", port, "r"),
        route("r", "c"),
    ])
    .await
    else {
        return;
    };
    // Two keep-alive connections: round robin gives each host a connection.
    let mut conns = Vec::new();
    for _ in 0..2 {
        conns.push(open(port).await);
    }
    eventually("both hosts have a connection", || async {
        for c in &conns {
            let _ = c.lock().await.get().await;
        }
        (a.open() >= 1 && b.open() >= 1).then_some(())
    })
    .await;
    let b_open = b.open();
    fx.update(vec![endpoints("c", &[b.port])]).await;
    eventually("the removed host's connections closed", || async {
        (a.open() == 0).then_some(())
    })
    .await;
    for c in &conns {
        served_by(c, "b").await;
    }
    assert!(
        b.open() >= b_open,
        "the remaining host keeps its connections ({} open, {b_open} before)",
        b.open()
    );
}

/// `tcp_proxy` keeps no idle upstream connections: a replaced cluster's busy one is its
/// session's, which goes on until the client ends it (Envoy drains a TCP pool the same
/// way); then nothing of the old cluster stays open, and new sessions take the new one.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replaced_clusters_tcp_session_finishes_then_nothing_stays_open() {
    let (u0, u1) = (
        Upstream::tcp_echo("u0").await,
        Upstream::tcp_echo("u1").await,
    );
    let port = free_port();
    let fx = Fx::ads(vec![
        static_cluster("c", &[u0.port], ""),
        tcp_listener("tl", port, "c"),
    ])
    .await;
    let mut session = TcpSession::open(port).await.expect("session");
    assert_eq!(session.upstream, "u0");
    session.roundtrip("before").await.expect("echo before");
    // The same cluster with another endpoint: a new cluster in Envoy's terms.
    fx.update(vec![static_cluster("c", &[u1.port], "")]).await;
    eventually("new sessions go to the new endpoint", || async {
        match TcpSession::open(port).await {
            Ok(s) if s.upstream == "u1" => Some(()),
            _ => None,
        }
    })
    .await;
    session
        .roundtrip("after")
        .await
        .expect("the old cluster's session goes on");
    drop(session);
    eventually("the old cluster's connection closed", || async {
        (u0.open() == 0).then_some(())
    })
    .await;
}
