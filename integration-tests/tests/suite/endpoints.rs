//! EDS: add / remove / reweight endpoints under load, health status, HTTP/2 and gRPC
//! upstreams behind tcp_proxy.

use courier_integration_tests::bootstrap::ADS_SOURCE;
use courier_integration_tests::resources::*;
use courier_integration_tests::traffic::{tcp_distribution, Load, LoadKind, TcpSession};
use courier_integration_tests::upstream::Upstream;
use courier_integration_tests::{eventually, free_port};

use crate::fixture::Fx;

/// Endpoints added, removed and reweighted while load runs: zero failures (every endpoint
/// that is ever removed keeps running, so no exchange may fail), traffic follows the set.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn eds_add_remove_reweight_under_load() {
    let a = Upstream::tcp_echo("a").await;
    let b = Upstream::tcp_echo("b").await;
    let c = Upstream::tcp_echo("c").await;
    let port = free_port();
    let fx = Fx::ads(vec![
        eds_cluster("c1"),
        endpoints("c1", &[a.port, b.port]),
        tcp_listener("l1", port, "c1"),
    ])
    .await;
    let mut held = TcpSession::open(port).await.expect("held session");
    let load = Load::start(LoadKind::Tcp, port, 4);
    load.wait_progress(20).await;

    // Add c.
    fx.update(vec![endpoints("c1", &[a.port, b.port, c.port])])
        .await;
    fx.proxy.wait_hosts("c1", &[a.port, b.port, c.port]).await;
    eventually("c serves", || async {
        load.snapshot().ok.contains_key("c").then_some(())
    })
    .await;

    // Remove a (it keeps running: nothing may fail).
    fx.update(vec![endpoints("c1", &[b.port, c.port])]).await;
    fx.proxy.wait_hosts("c1", &[b.port, c.port]).await;
    load.reset();
    load.wait_progress(40).await;
    let r = load.snapshot();
    assert!(
        !r.ok.contains_key("a"),
        "removed host a still picked: {r:?}"
    );

    // Reweight: c 9, b 1.
    fx.update(vec![endpoints_weighted(
        "c1",
        &[(b.port, 1, ""), (c.port, 9, "")],
    )])
    .await;
    eventually("c has weight 9 in /clusters", || async {
        fx.proxy
            .hosts("c1")
            .await
            .iter()
            .any(|h| h.0.ends_with(&format!(":{}", c.port)) && h.2 == 9)
            .then_some(())
    })
    .await;
    let report = load.stop().await;
    assert_eq!(report.error_count, 0, "failures: {:?}", report.errors);
    let dist = tcp_distribution(port, 100).await;
    let (nb, nc) = (
        dist.get("b").copied().unwrap_or(0),
        dist.get("c").copied().unwrap_or(0),
    );
    assert!(
        nc > 3 * nb && nb + nc == 100,
        "weights 1:9 honoured: {dist:?}"
    );

    // The session opened to a (or b) before all this still works: host removal does not cut
    // connections to hosts that still run.
    held.roundtrip("still alive").await.expect("held session");
    assert_eq!(fx.proxy.stat("cluster.c1.membership_total").await, Some(2));
}

/// Endpoints with health_status DRAINING and UNHEALTHY are never picked (and TIMEOUT too).
/// Four healthy hosts of seven keep the cluster above the 50% panic threshold (below it,
/// Envoy balances over every host).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn eds_unhealthy_and_draining_excluded() {
    let a = Upstream::tcp_echo("a").await;
    let a2 = Upstream::tcp_echo("a").await;
    let a3 = Upstream::tcp_echo("a").await;
    let a4 = Upstream::tcp_echo("a").await;
    let b = Upstream::tcp_echo("b").await;
    let c = Upstream::tcp_echo("c").await;
    let d = Upstream::tcp_echo("d").await;
    let port = free_port();
    let fx = Fx::ads(vec![
        eds_cluster("c1"),
        endpoints_weighted(
            "c1",
            &[
                (a.port, 1, "HEALTHY"),
                (a2.port, 1, "HEALTHY"),
                (a3.port, 1, ""),
                (a4.port, 1, "HEALTHY"),
                (b.port, 1, "DRAINING"),
                (c.port, 1, "UNHEALTHY"),
                (d.port, 1, "TIMEOUT"),
            ],
        ),
        tcp_listener("l1", port, "c1"),
    ])
    .await;
    let dist = tcp_distribution(port, 40).await;
    assert_eq!(dist.get("a"), Some(&40), "only the healthy host: {dist:?}");
    assert_eq!(
        fx.proxy.stat("cluster.c1.membership_healthy").await,
        Some(4)
    );
    let hosts = fx.proxy.hosts("c1").await;
    assert_eq!(hosts.len(), 7, "{hosts:?}");
    let healthy_ports = [a.port, a2.port, a3.port, a4.port];
    for (addr, flags, _) in hosts {
        let healthy = healthy_ports
            .iter()
            .any(|p| addr.ends_with(&format!(":{p}")));
        assert_eq!(flags == "healthy", healthy, "{addr}: {flags}");
    }
    // Mark b healthy: it joins.
    fx.update(vec![endpoints_weighted(
        "c1",
        &[(a.port, 1, "HEALTHY"), (b.port, 1, "HEALTHY")],
    )])
    .await;
    eventually("b serves once HEALTHY", || async {
        tcp_distribution(port, 10)
            .await
            .contains_key("b")
            .then_some(())
    })
    .await;
}

/// HTTP/2 and gRPC upstreams behind a tcp_proxy listener, across an endpoint move.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http2_and_grpc_upstreams_through_tcp_proxy() {
    let a = Upstream::http("a").await;
    let b = Upstream::http("b").await;
    let port = free_port();
    let fx = Fx::ads(vec![
        eds_cluster("c1"),
        endpoints("c1", &[a.port]),
        tcp_listener("l1", port, "c1"),
    ])
    .await;
    assert_eq!(h2_upstream(port, false).await.as_deref(), Ok("a"));
    assert_eq!(h2_upstream(port, true).await.as_deref(), Ok("a"));
    fx.update(vec![endpoints("c1", &[b.port])]).await;
    eventually("h2 moves to b", || async {
        (h2_upstream(port, false).await.as_deref() == Ok("b")).then_some(())
    })
    .await;
    assert_eq!(h2_upstream(port, true).await.as_deref(), Ok("b"));
}

/// One HTTP/2 (prior knowledge) request; `grpc` sends a unary gRPC call and checks
/// grpc-status 0. Returns the serving upstream.
async fn h2_upstream(port: u16, grpc: bool) -> Result<String, String> {
    use bytes::Bytes;
    use http_body_util::{BodyExt, Full};
    let s = tokio::net::TcpStream::connect(("127.0.0.1", port))
        .await
        .map_err(|e| e.to_string())?;
    let (mut send, conn) = hyper::client::conn::http2::handshake(
        hyper_util::rt::TokioExecutor::new(),
        hyper_util::rt::TokioIo::new(s),
    )
    .await
    .map_err(|e| e.to_string())?;
    tokio::spawn(conn);
    let mut req = hyper::Request::builder().uri(format!("http://127.0.0.1:{port}/echo.Echo/Say"));
    let body = if grpc {
        req = req
            .method("POST")
            .header("content-type", "application/grpc")
            .header("te", "trailers");
        Bytes::from_static(&[0, 0, 0, 0, 0])
    } else {
        Bytes::new()
    };
    let resp = send
        .send_request(req.body(Full::new(body)).expect("request"))
        .await
        .map_err(|e| e.to_string())?;
    let upstream = resp
        .headers()
        .get("x-upstream")
        .and_then(|v| v.to_str().ok())
        .map(str::to_string)
        .ok_or("no x-upstream")?;
    let collected = resp
        .into_body()
        .collect()
        .await
        .map_err(|e| e.to_string())?;
    if grpc {
        let status = collected
            .trailers()
            .and_then(|t| t.get("grpc-status"))
            .and_then(|v| v.to_str().ok())
            .map(str::to_string);
        if status.as_deref() != Some("0") {
            return Err(format!("grpc-status {status:?}"));
        }
    }
    Ok(upstream)
}

/// With active health checking, a host EDS removes stays while it passes its checks
/// (`/pending_dynamic_removal`, still serving) and goes once it fails one, as in Envoy.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn eds_removed_host_stays_until_it_fails_health_checks() {
    let a = Upstream::tcp_echo("a").await;
    let b = Upstream::tcp_echo("b").await;
    let b_port = b.port;
    let port = free_port();
    let hc = "health_checks: [{ timeout: 1s, interval: 0.1s, no_traffic_interval: 0.1s, unhealthy_threshold: 1, healthy_threshold: 1, tcp_health_check: {} }]\n";
    let fx = Fx::ads(vec![
        eds_cluster_with("c1", ADS_SOURCE, hc),
        endpoints("c1", &[a.port, b.port]),
        tcp_listener("l1", port, "c1"),
    ])
    .await;
    eventually("both hosts pass their checks", || async {
        let hosts = fx.proxy.hosts("c1").await;
        (hosts.len() == 2 && hosts.iter().all(|h| h.1 == "healthy")).then_some(())
    })
    .await;
    fx.update(vec![endpoints("c1", &[a.port])]).await;
    eventually("b stays, pending removal", || async {
        fx.proxy
            .hosts("c1")
            .await
            .iter()
            .any(|h| h.0.ends_with(&format!(":{b_port}")) && h.1 == "/pending_dynamic_removal")
            .then_some(())
    })
    .await;
    let dist = tcp_distribution(port, 20).await;
    assert!(dist.contains_key("b"), "b no longer serves: {dist:?}");
    // b stops: its next check fails and it goes.
    drop(b);
    eventually("b removed once it fails its check", || async {
        let hosts = fx.proxy.hosts("c1").await;
        (hosts.len() == 1).then_some(())
    })
    .await;
}
