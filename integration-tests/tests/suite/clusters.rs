//! CDS: initial convergence, add, update under traffic, remove / re-add, warming.

use std::time::Duration;

use courier_control_plane::ResourceType;
use courier_integration_tests::bootstrap::{ADS_SOURCE, NOWHERE_SOURCE};
use courier_integration_tests::resources::*;
use courier_integration_tests::traffic::{tcp_hello, Load, LoadKind, TcpSession};
use courier_integration_tests::upstream::Upstream;
use courier_integration_tests::{eventually, free_port, Bootstrap, Cp};

use crate::fixture::{Fx, NODE};

async fn initial_convergence(delta: bool) {
    let a = Upstream::tcp_echo("a").await;
    let port = free_port();
    let cp = Cp::start().await;
    let boot = move |p| {
        if delta {
            Bootstrap::delta_ads(NODE, p)
        } else {
            Bootstrap::ads(NODE, p)
        }
    };
    let fx = Fx::with(
        cp,
        boot,
        vec![
            eds_cluster("c1"),
            endpoints("c1", &[a.port]),
            tcp_listener("l1", port, "c1"),
        ],
    )
    .await;
    assert_eq!(tcp_hello(port).await.as_deref(), Ok("a"));
    let p = &fx.proxy;
    // Admin agrees with the control plane's record.
    let clusters = p.active_clusters().await;
    assert!(clusters.contains_key("c1"), "c1 active: {clusters:?}");
    if !delta {
        assert_eq!(p.cds_version().await, fx.version(ResourceType::Cluster));
        assert_eq!(p.lds_version().await, fx.version(ResourceType::Listener));
    }
    assert!(p.active_listeners().await.contains_key("l1"));
    assert_eq!(p.stat("cluster_manager.warming_clusters").await, Some(0));
    assert!(p.stat("cluster_manager.cds.update_success").await >= Some(1));
    assert!(p.stat("listener_manager.lds.update_success").await >= Some(1));
    assert_eq!(p.stat("control_plane.connected_state").await, Some(1));
    assert_eq!(p.stat("cluster.c1.membership_total").await, Some(1));
    p.wait_hosts("c1", &[a.port]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn initial_convergence_sotw_ads() {
    initial_convergence(false).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn initial_convergence_delta_ads() {
    initial_convergence(true).await;
}

/// Adding a cluster and a listener touches only them: the untouched cluster keeps its
/// version_info and last_updated (Envoy's ads_integration_test basic flow).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn add_cluster_leaves_others_untouched() {
    let (a, b) = (Upstream::tcp_echo("a").await, Upstream::tcp_echo("b").await);
    let (p1, p2) = (free_port(), free_port());
    let fx = Fx::ads(vec![
        static_cluster("c1", &[a.port], ""),
        tcp_listener("l1", p1, "c1"),
    ])
    .await;
    let before = fx.proxy.config_dump().await;
    let c1_before = cluster_entry(&before, "c1");
    fx.update(vec![
        static_cluster("c2", &[b.port], ""),
        tcp_listener("l2", p2, "c2"),
    ])
    .await;
    assert_eq!(tcp_hello(p2).await.as_deref(), Ok("b"));
    assert_eq!(tcp_hello(p1).await.as_deref(), Ok("a"));
    let after = fx.proxy.config_dump().await;
    assert_eq!(
        cluster_entry(&after, "c1"),
        c1_before,
        "c1 was not re-applied"
    );
    assert!(fx.proxy.stat("cluster_manager.cluster_added").await >= Some(2));
    assert_eq!(
        fx.proxy.stat("cluster_manager.cluster_modified").await,
        Some(0)
    );
}

fn cluster_entry(dump: &serde_json::Value, name: &str) -> serde_json::Value {
    dump["configs"]
        .as_array()
        .into_iter()
        .flatten()
        .flat_map(|c| {
            c["dynamic_active_clusters"]
                .as_array()
                .into_iter()
                .flatten()
        })
        .find(|c| c["cluster"]["name"] == name)
        .cloned()
        .unwrap_or_else(|| panic!("{name} not in config_dump"))
}

/// An update of LB policy and timeouts while traffic runs: no new connection fails, and the
/// new settings show in config_dump.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn update_cluster_with_traffic_running() {
    let (a, b) = (Upstream::tcp_echo("a").await, Upstream::tcp_echo("b").await);
    let port = free_port();
    let fx = Fx::ads(vec![
        eds_cluster("c1"),
        endpoints("c1", &[a.port, b.port]),
        tcp_listener("l1", port, "c1"),
    ])
    .await;
    let mut held = TcpSession::open(port).await.expect("session before update");
    let load = Load::start(LoadKind::Tcp, port, 4);
    load.wait_progress(20).await;
    fx.update(vec![eds_cluster_with(
        "c1",
        ADS_SOURCE,
        "lb_policy: RANDOM\nconnect_timeout: 2s\nper_connection_buffer_limit_bytes: 65536\n",
    )])
    .await;
    fx.proxy
        .wait_stat("cluster_manager.cluster_modified", ">= 1", |v| v >= 1)
        .await;
    eventually("config_dump shows lb_policy RANDOM", || async {
        let dump = fx.proxy.config_dump().await;
        (cluster_entry(&dump, "c1")["cluster"]["lb_policy"] == "RANDOM").then_some(())
    })
    .await;
    load.wait_progress(50).await;
    let report = load.stop().await;
    assert_eq!(report.error_count, 0, "failures: {:?}", report.errors);
    assert!(report.ok.contains_key("a") && report.ok.contains_key("b"));
    held.roundtrip("still here")
        .await
        .expect("held session survives");
}

/// Remove a cluster: new sessions to it fail, an active session finishes; re-adding it brings
/// traffic back (Envoy's cds_integration_test cluster up/down/up). The endpoints change while
/// the cluster is gone (see `remove_cluster_then_add_back_same_endpoints`).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn remove_cluster_then_add_back() {
    up_down_up(false).await;
}

/// The same with unchanged endpoints: the re-added cluster re-subscribes to the EDS name it
/// dropped, and the server must answer it again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn remove_cluster_then_add_back_same_endpoints() {
    up_down_up(true).await;
}

async fn up_down_up(same_endpoints: bool) {
    let a = Upstream::tcp_echo("a").await;
    let port = free_port();
    let fx = Fx::ads(vec![
        eds_cluster("c1"),
        endpoints("c1", &[a.port]),
        tcp_listener("l1", port, "c1"),
    ])
    .await;
    let mut held = TcpSession::open(port).await.expect("session");
    fx.remove(&[(ResourceType::Cluster, "c1")]).await;
    fx.proxy
        .wait_stat("cluster_manager.cluster_removed", ">= 1", |v| v >= 1)
        .await;
    assert!(!fx.proxy.active_clusters().await.contains_key("c1"));
    eventually("new sessions fail while c1 is gone", || async {
        tcp_hello(port).await.is_err().then_some(())
    })
    .await;
    held.roundtrip("active session finishes")
        .await
        .expect("the active TCP session is not cut by the cluster removal");
    if same_endpoints {
        fx.update(vec![eds_cluster("c1")]).await;
    } else {
        fx.update(vec![
            eds_cluster("c1"),
            endpoints_weighted("c1", &[(a.port, 2, "")]),
        ])
        .await;
    }
    eventually("traffic is back", || async {
        (tcp_hello(port).await.as_deref() == Ok("a")).then_some(())
    })
    .await;
}

/// A listener whose cluster is still warming (no EDS yet): its connections fail; once the
/// cluster is updated to a source that answers, it warms and traffic flows. Covers
/// `warming_clusters` 1 → 0 and updating a warming cluster.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn warming_cluster_then_update_it() {
    let a = Upstream::tcp_echo("a").await;
    let port = free_port();
    let fx = Fx::ads(vec![]).await;
    // c1 takes EDS from a source that never answers: it stays warming (and Envoy holds
    // its CDS ACK meanwhile, so nothing waits on that).
    fx.update_wait(
        vec![
            eds_cluster_with("c1", NOWHERE_SOURCE, ""),
            endpoints("c1", &[a.port]),
        ],
        &[],
    )
    .await;
    fx.proxy
        .wait_stat("cluster_manager.warming_clusters", "== 1", |v| v == 1)
        .await;
    assert_eq!(fx.proxy.warming_clusters().await, vec!["c1".to_string()]);
    fx.update(vec![tcp_listener("l1", port, "c1")]).await;
    assert!(
        tcp_hello(port).await.is_err(),
        "no traffic to a warming cluster"
    );
    // Update the warming cluster to EDS over ADS: it warms on the ADS response.
    fx.update(vec![eds_cluster("c1")]).await;
    fx.proxy
        .wait_stat("cluster_manager.warming_clusters", "== 0", |v| v == 0)
        .await;
    eventually("traffic flows once c1 is warm", || async {
        (tcp_hello(port).await.as_deref() == Ok("a")).then_some(())
    })
    .await;
}

/// Removing a warming cluster drops it (warming_clusters back to 0, not active).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn remove_warming_cluster() {
    let fx = Fx::ads(vec![]).await;
    fx.update_wait(
        vec![
            eds_cluster_with("c1", NOWHERE_SOURCE, ""),
            endpoints("c1", &[1]),
        ],
        &[],
    )
    .await;
    fx.proxy
        .wait_stat("cluster_manager.warming_clusters", "== 1", |v| v == 1)
        .await;
    fx.remove(&[(ResourceType::Cluster, "c1")]).await;
    fx.proxy
        .wait_stat("cluster_manager.warming_clusters", "== 0", |v| v == 0)
        .await;
    assert!(fx.proxy.warming_clusters().await.is_empty());
    assert!(!fx.proxy.active_clusters().await.contains_key("c1"));
}

/// EDS initial_fetch_timeout: a cluster whose EDS never answers ends warming after the
/// timeout, active with no hosts.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn eds_initial_fetch_timeout_ends_warming() {
    let fx = Fx::ads(vec![]).await;
    let source = NOWHERE_SOURCE.replace("initial_fetch_timeout: 0s", "initial_fetch_timeout: 1s");
    fx.update_wait(
        vec![eds_cluster_with("c1", &source, ""), endpoints("c1", &[1])],
        &[ResourceType::Cluster],
    )
    .await;
    eventually("c1 active after its EDS initial_fetch_timeout", || async {
        fx.proxy
            .active_clusters()
            .await
            .contains_key("c1")
            .then_some(())
    })
    .await;
    assert_eq!(
        fx.proxy.stat("cluster_manager.warming_clusters").await,
        Some(0)
    );
    assert!(fx.proxy.hosts("c1").await.is_empty());
}

/// 1,000 clusters converge; traffic reaches the last one.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn thousand_clusters_converge() {
    let a = Upstream::tcp_echo("a").await;
    let port = free_port();
    let mut rs: Vec<_> = (0..1000)
        .map(|i| static_cluster(&format!("c{i}"), &[a.port], ""))
        .collect();
    rs.push(tcp_listener("l1", port, "c999"));
    let fx = Fx::ads(rs).await;
    fx.proxy
        .wait_stat("cluster_manager.active_clusters", ">= 1000", |v| v >= 1000)
        .await;
    assert_eq!(tcp_hello(port).await.as_deref(), Ok("a"));
    // And a thousand EDS clusters on delta, updated at once.
    let eds: Vec<_> = (0..1000)
        .flat_map(|i| {
            let n = format!("e{i}");
            [eds_cluster(&n), endpoints(&n, &[a.port])]
        })
        .collect();
    fx.update(eds).await;
    fx.proxy
        .wait_stat("cluster_manager.active_clusters", ">= 2000", |v| v >= 2000)
        .await;
    let _ = Duration::ZERO;
}

/// A DNS cluster added through CDS warms until its first resolution, as Envoy's: once CDS
/// is ACKed it has its hosts, and a session through it reaches the upstream at once (it
/// used to be active with no hosts until the next refresh, up to 5 s later).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dns_cluster_warms_until_resolved() {
    let a = Upstream::tcp_echo("a").await;
    let (p0, port) = (free_port(), free_port());
    let fx = Fx::ads(vec![
        static_cluster("c0", &[a.port], ""),
        tcp_listener("l0", p0, "c0"),
    ])
    .await;
    fx.update(vec![
        cluster_yaml(&format!(
            "name: dns\nconnect_timeout: 1s\ntype: STRICT_DNS\ndns_lookup_family: V4_ONLY\nload_assignment:\n  cluster_name: dns\n  endpoints: [{{ lb_endpoints: [{{ endpoint: {{ address: {{ socket_address: {{ address: localhost, port_value: {} }} }} }} }}] }}]\n",
            a.port
        )),
        tcp_listener("l1", port, "dns"),
    ])
    .await;
    assert_eq!(tcp_hello(port).await.as_deref(), Ok("a"));
}
