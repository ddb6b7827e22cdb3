//! courier-cp (in-process library) against a real Envoy 1.40 over ADS, state of the world and
//! delta: every step is asserted through the cache's ACK facts, Envoy's admin and real traffic.

mod common;

use std::time::Duration;

use common::*;
use courier_control_plane::{ControlPlane, ResourceType, Snapshot};

const NODE: &str = "envoy-under-test";
const ACK_TIMEOUT: Duration = Duration::from_secs(20);

async fn ack(cp: &ControlPlane, kind: ResourceType, version: &str) {
    cp.status()
        .wait_for_ack(NODE, kind, version, ACK_TIMEOUT)
        .await
        .unwrap_or_else(|e| panic!("{e}"));
}

async fn wait_body(port: u16, expected: &str) {
    eventually(&format!("GET :{port} answers {expected:?}"), || async {
        get_body(port, "/").await.filter(|b| b == expected)
    })
    .await;
}

async fn lifecycle(delta: bool) {
    let a = Upstream::start("upstream-a").await;
    let b = Upstream::start("upstream-b").await;
    let cp = ControlPlane::new();
    let server = cp
        .start("127.0.0.1:0".parse().expect("addr"))
        .await
        .expect("start cp");
    let (admin, p1, p2) = (free_port(), free_port(), free_port());

    // Step 1: a cluster (EDS) and an HTTP listener (RDS) → traffic flows to upstream A.
    let snapshot = Snapshot::builder()
        .resource(eds_cluster("c1"))
        .resource(endpoints("c1", &[a.port]))
        .resource(http_listener("l1", p1, "r1"))
        .resource(route("r1", "c1"))
        .build()
        .expect("consistent snapshot");
    let s = cp.cache().set_snapshot(NODE, snapshot);
    let envoy = Envoy::start(
        &ads_bootstrap(NODE, server.local_addr().port(), admin, delta),
        admin,
    )
    .await;
    for kind in [
        ResourceType::Cluster,
        ResourceType::Endpoint,
        ResourceType::Listener,
        ResourceType::Route,
    ] {
        ack(&cp, kind, s.version(kind)).await;
    }
    wait_body(p1, "upstream-a").await;
    let dump = envoy.config_dump().await;
    assert!(
        dump.contains("\"name\": \"l1\""),
        "listener l1 in config_dump"
    );
    assert!(
        dump.contains("\"name\": \"c1\""),
        "cluster c1 in config_dump"
    );
    assert!(envoy
        .clusters()
        .await
        .contains(&format!("c1::127.0.0.1:{}::", a.port)));
    assert_eq!(
        envoy.stat("cluster_manager.warming_clusters").await,
        Some(0)
    );

    // Step 2: endpoints move to B → traffic moves.
    let v = cp
        .cache()
        .update_resource(NODE, endpoints("c1", &[b.port]))
        .expect("update eds");
    ack(&cp, ResourceType::Endpoint, &v).await;
    wait_body(p1, "upstream-b").await;
    let clusters = envoy.clusters().await;
    assert!(clusters.contains(&format!("c1::127.0.0.1:{}::", b.port)));
    assert!(!clusters.contains(&format!("c1::127.0.0.1:{}::", a.port)));

    // Step 3: a second (TCP proxy) listener.
    let v = cp
        .cache()
        .update_resource(NODE, tcp_listener("l2", p2, "c1"))
        .expect("add l2");
    ack(&cp, ResourceType::Listener, &v).await;
    eventually("l2 accepts", || async { port_open(p2).await.then_some(()) }).await;
    assert_eq!(tcp_get_body(p2).await.as_deref(), Some("upstream-b"));
    envoy
        .wait_stat_at_least("listener_manager.total_listeners_active", 2)
        .await;

    // Step 4: update the route to a new cluster c2 (→ A).
    let s = cp
        .cache()
        .update_resources(NODE, [endpoints("c2", &[a.port]), eds_cluster("c2")], [])
        .expect("add c2");
    ack(&cp, ResourceType::Cluster, s.version(ResourceType::Cluster)).await;
    let v = cp
        .cache()
        .update_resource(NODE, route("r1", "c2"))
        .expect("update route");
    ack(&cp, ResourceType::Route, &v).await;
    wait_body(p1, "upstream-a").await;
    assert!(envoy.config_dump().await.contains("\"cluster\": \"c2\""));

    // Step 5: remove the TCP listener → its port closes; the other keeps serving.
    let v = cp
        .cache()
        .remove_resource(NODE, ResourceType::Listener, "l2")
        .expect("remove l2");
    ack(&cp, ResourceType::Listener, &v).await;
    eventually("l2's port closes", || async {
        (!port_open(p2).await).then_some(())
    })
    .await;
    envoy
        .wait_stat_at_least("listener_manager.listener_removed", 1)
        .await;
    assert_eq!(get_body(p1, "/").await.as_deref(), Some("upstream-a"));

    // Step 6: remove cluster c1 → Envoy drops it.
    let v = cp
        .cache()
        .remove_resource(NODE, ResourceType::Cluster, "c1")
        .expect("remove c1");
    ack(&cp, ResourceType::Cluster, &v).await;
    envoy
        .wait_stat_at_least("cluster_manager.cluster_removed", 1)
        .await;
    let clusters = envoy.clusters().await;
    assert!(
        !clusters.contains("c1::"),
        "c1 still in /clusters:\n{clusters}"
    );
    assert!(clusters.contains("c2::"));
    assert_eq!(get_body(p1, "/").await.as_deref(), Some("upstream-a"));

    // Step 7: an invalid listener (duplicate address of l1) → Envoy NACKs, courier-cp
    // records the NACK with Envoy's error; the good config keeps serving.
    let rejected = cp
        .cache()
        .update_resource(NODE, tcp_listener("l3", p1, "c2"))
        .expect("add l3");
    let nack = cp
        .status()
        .wait_for_nack(NODE, ResourceType::Listener, &rejected, ACK_TIMEOUT)
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    assert!(
        nack.message.contains("l3"),
        "NACK names the listener: {}",
        nack.message
    );
    assert!(
        nack.message.contains("duplicate address"),
        "NACK says why: {}",
        nack.message
    );
    assert_eq!(nack.code, 13);
    assert_eq!(
        cp.status().last_nack(NODE, ResourceType::Listener),
        Some(nack)
    );
    envoy
        .wait_stat_at_least("listener_manager.lds.update_rejected", 1)
        .await;
    assert_eq!(get_body(p1, "/").await.as_deref(), Some("upstream-a"));
    let node = cp.status().node(NODE).expect("node status");
    assert_eq!(node.of(ResourceType::Listener).nacks, 1);
    assert_eq!(node.connected_streams, 1);

    // Recovery: removing the bad listener is ACKed.
    let v = cp
        .cache()
        .remove_resource(NODE, ResourceType::Listener, "l3")
        .expect("remove l3");
    ack(&cp, ResourceType::Listener, &v).await;
    let lds = cp
        .status()
        .node(NODE)
        .expect("node")
        .of(ResourceType::Listener);
    assert_eq!(
        lds.nacks, 1,
        "the rejected version was not re-sent (no push loop)"
    );
    assert_eq!(lds.acked_version.as_deref(), Some(v.as_str()));

    drop(envoy);
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn envoy_sotw_ads_lifecycle() {
    lifecycle(false).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn envoy_delta_ads_lifecycle() {
    lifecycle(true).await;
}

/// Warming: a cluster whose endpoints are updated while Envoy has it; and a reconnect after
/// the control plane restarts keeps Envoy serving and re-syncs without a new push of what it
/// already holds.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn envoy_reconnects_after_control_plane_restart() {
    let a = Upstream::start("upstream-a").await;
    let cp = ControlPlane::new();
    let cp_port = free_port();
    let addr: std::net::SocketAddr = format!("127.0.0.1:{cp_port}").parse().expect("addr");
    let server = cp.start(addr).await.expect("start cp");
    let (admin, p1) = (free_port(), free_port());
    let snapshot = Snapshot::builder()
        .resource(eds_cluster("c1"))
        .resource(endpoints("c1", &[a.port]))
        .resource(http_listener("l1", p1, "r1"))
        .resource(route("r1", "c1"))
        .build()
        .expect("snapshot");
    let s = cp.cache().set_snapshot(NODE, snapshot);
    let envoy = Envoy::start(&ads_bootstrap(NODE, cp_port, admin, false), admin).await;
    ack(&cp, ResourceType::Route, s.version(ResourceType::Route)).await;
    wait_body(p1, "upstream-a").await;

    // The control plane goes away: Envoy keeps serving.
    server.shutdown().await;
    eventually("envoy notices the disconnect", || async {
        envoy
            .stat("control_plane.connected_state")
            .await
            .filter(|v| *v == 0)
    })
    .await;
    assert_eq!(get_body(p1, "/").await.as_deref(), Some("upstream-a"));

    // A new control plane with the same content: Envoy reconnects with its versions, which
    // match (content-derived), so nothing is pushed again; status shows them as ACKed.
    let cp2 = ControlPlane::new();
    cp2.cache().set_snapshot(NODE, (*s).clone());
    let server2 = cp2.start(addr).await.expect("restart cp");
    for kind in [ResourceType::Cluster, ResourceType::Listener] {
        cp2.status()
            .wait_for_ack(NODE, kind, s.version(kind), ACK_TIMEOUT)
            .await
            .unwrap_or_else(|e| panic!("{e}"));
    }
    envoy
        .wait_stat_at_least("control_plane.connected_state", 1)
        .await;
    let status = cp2.status().node(NODE).expect("status");
    assert_eq!(
        status.of(ResourceType::Cluster).pushes,
        0,
        "no redundant CDS push: {status:?}"
    );
    assert_eq!(
        status.of(ResourceType::Listener).pushes,
        0,
        "no redundant LDS push: {status:?}"
    );
    assert_eq!(get_body(p1, "/").await.as_deref(), Some("upstream-a"));
    drop(envoy);
    server2.shutdown().await;
}
