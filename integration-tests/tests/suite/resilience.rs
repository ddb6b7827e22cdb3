//! The control plane goes away, restarts, or is not there at start; per-node snapshots.

use courier_control_plane::ResourceType;
use courier_integration_tests::resources::*;
use courier_integration_tests::traffic::{tcp_hello, TcpSession};
use courier_integration_tests::upstream::Upstream;
use courier_integration_tests::{eventually, free_port, Bootstrap, Cp, Proxy};

use crate::fixture::{snapshot, Fx, NODE};

/// Kill the control plane: the proxy keeps serving (and keeps its sessions); a new control
/// plane on the same address with a new snapshot: the proxy reconnects and converges.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn control_plane_killed_and_restarted() {
    let (a, b) = (Upstream::tcp_echo("a").await, Upstream::tcp_echo("b").await);
    let port = free_port();
    let mut fx = Fx::ads(vec![
        eds_cluster("c1"),
        endpoints("c1", &[a.port]),
        tcp_listener("l1", port, "c1"),
    ])
    .await;
    let mut held = TcpSession::open(port).await.expect("session");
    fx.cp.stop().await;
    fx.proxy
        .wait_stat("control_plane.connected_state", "== 0", |v| v == 0)
        .await;
    assert_eq!(tcp_hello(port).await.as_deref(), Ok("a"));
    held.roundtrip("cp is gone")
        .await
        .expect("session survives");

    let cp2 = Cp::start_on(fx.cp.port).await;
    let s = cp2.set(
        NODE,
        snapshot(vec![
            eds_cluster("c1"),
            endpoints("c1", &[b.port]),
            tcp_listener("l1", port, "c1"),
        ]),
    );
    cp2.ack_all(NODE, &s).await;
    fx.proxy
        .wait_stat("control_plane.connected_state", "== 1", |v| v == 1)
        .await;
    eventually("converged to the new snapshot", || async {
        (tcp_hello(port).await.as_deref() == Ok("b")).then_some(())
    })
    .await;
    held.roundtrip("after reconnect")
        .await
        .expect("session survives");
    fx.cp = cp2;
}

/// Nothing listens at start: after initial_fetch_timeout the proxy initialises without
/// config (LIVE, `init_fetch_timeout` counted); when the control plane appears, it converges.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn control_plane_unreachable_at_start() {
    let a = Upstream::tcp_echo("a").await;
    let (cp_port, port) = (free_port(), free_port());
    let boot = Bootstrap::ads(NODE, cp_port).initial_fetch_timeout("1s");
    let proxy = Proxy::start(&boot.yaml()).await;
    proxy.wait_live().await;
    assert!(proxy.stat("cluster_manager.cds.init_fetch_timeout").await >= Some(1));
    assert_eq!(proxy.stat("control_plane.connected_state").await, Some(0));
    let cp = Cp::start_on(cp_port).await;
    let s = cp.set(
        NODE,
        snapshot(vec![
            eds_cluster("c1"),
            endpoints("c1", &[a.port]),
            tcp_listener("l1", port, "c1"),
        ]),
    );
    cp.ack_all(NODE, &s).await;
    eventually("traffic once the control plane appeared", || async {
        (tcp_hello(port).await.as_deref() == Ok("a")).then_some(())
    })
    .await;
}

/// Reconnecting to the same control plane (same snapshot) changes nothing: no cluster or
/// listener is modified or re-added (SotW: same versions; delta: initial_resource_versions).
async fn reconnect_without_churn(delta: bool) {
    let a = Upstream::tcp_echo("a").await;
    let port = free_port();
    let cp = Cp::start().await;
    let mut fx = Fx::with(
        cp,
        |p| {
            if delta {
                Bootstrap::delta_ads(NODE, p)
            } else {
                Bootstrap::ads(NODE, p)
            }
        },
        vec![
            eds_cluster("c1"),
            endpoints("c1", &[a.port]),
            static_cluster("c2", &[a.port], ""),
            tcp_listener("l1", port, "c1"),
        ],
    )
    .await;
    let added = fx.proxy.stat("cluster_manager.cluster_added").await;
    let listeners_added = fx.proxy.stat("listener_manager.listener_added").await;
    let pushes = fx
        .cp
        .cp
        .status()
        .node(NODE)
        .expect("node")
        .of(ResourceType::Cluster)
        .acks;
    // Restart the same control plane (same cache) on the same port.
    let cp_port = fx.cp.port;
    fx.cp.stop().await;
    fx.proxy
        .wait_stat("control_plane.connected_state", "== 0", |v| v == 0)
        .await;
    let handle = fx
        .cp
        .cp
        .start(format!("127.0.0.1:{cp_port}").parse().expect("addr"))
        .await
        .expect("restart");
    fx.proxy
        .wait_stat("control_plane.connected_state", "== 1", |v| v == 1)
        .await;
    // A fact that the new stream is fully established: a change made now is ACKed.
    fx.update(vec![static_cluster("c3", &[a.port], "")]).await;
    assert_eq!(
        fx.proxy.stat("cluster_manager.cluster_modified").await,
        Some(0)
    );
    assert_eq!(
        fx.proxy.stat("cluster_manager.cluster_added").await,
        added.map(|v| v + 1),
        "only c3 was added"
    );
    assert_eq!(
        fx.proxy.stat("listener_manager.listener_added").await,
        listeners_added
    );
    assert_eq!(
        fx.proxy.stat("listener_manager.listener_modified").await,
        Some(0)
    );
    assert_eq!(tcp_hello(port).await.as_deref(), Ok("a"));
    let _ = pushes;
    handle.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sotw_reconnect_does_not_churn() {
    reconnect_without_churn(false).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn delta_reconnect_does_not_churn() {
    reconnect_without_churn(true).await;
}

/// Two proxies with different node ids get their own snapshots.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn per_node_snapshots() {
    let (a, b) = (Upstream::tcp_echo("a").await, Upstream::tcp_echo("b").await);
    let (p1, p2) = (free_port(), free_port());
    let cp = Cp::start().await;
    let s1 = cp.set(
        "node-1",
        snapshot(vec![
            static_cluster("c", &[a.port], ""),
            tcp_listener("l", p1, "c"),
        ]),
    );
    let s2 = cp.set(
        "node-2",
        snapshot(vec![
            static_cluster("c", &[b.port], ""),
            tcp_listener("l", p2, "c"),
        ]),
    );
    let x1 = Proxy::start(&Bootstrap::ads("node-1", cp.port).yaml()).await;
    let x2 = Proxy::start(&Bootstrap::delta_ads("node-2", cp.port).yaml()).await;
    cp.ack_all("node-1", &s1).await;
    cp.ack_all("node-2", &s2).await;
    assert_eq!(tcp_hello(p1).await.as_deref(), Ok("a"));
    assert_eq!(tcp_hello(p2).await.as_deref(), Ok("b"));
    // Updating node-2 leaves node-1 alone.
    let v = cp
        .cp
        .cache()
        .update_resource("node-2", static_cluster("c", &[a.port], ""))
        .expect("update");
    cp.ack("node-2", ResourceType::Cluster, &v).await;
    eventually("node-2 moved to a", || async {
        (tcp_hello(p2).await.as_deref() == Ok("a")).then_some(())
    })
    .await;
    assert_eq!(x1.stat("cluster_manager.cluster_modified").await, Some(0));
    assert_eq!(x2.stat("cluster_manager.cluster_modified").await, Some(1));
}
