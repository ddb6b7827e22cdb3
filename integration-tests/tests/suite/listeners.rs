//! LDS: add, update (full and filter-chain-only) with draining, remove, address change,
//! replacement on the same port, weighted shift.

use std::time::Duration;

use courier_control_plane::ResourceType;
use courier_integration_tests::proxy::{port_open, ProxyOptions};
use courier_integration_tests::resources::*;
use courier_integration_tests::traffic::{tcp_distribution, tcp_hello, TcpSession};
use courier_integration_tests::upstream::Upstream;
use courier_integration_tests::{eventually, free_port, Bootstrap, Cp};

use crate::fixture::{Fx, NODE};

const DRAIN_S: u64 = 2;

/// Two upstreams a/b, clusters ca/cb, listener l1 on a fresh port → ca; drain time 2 s.
async fn two_clusters() -> (Fx, Upstream, Upstream, u16) {
    let (a, b) = (Upstream::tcp_echo("a").await, Upstream::tcp_echo("b").await);
    let port = free_port();
    let fx = Fx::with_opts(
        Cp::start().await,
        |p| Bootstrap::ads(NODE, p),
        vec![
            static_cluster("ca", &[a.port], ""),
            static_cluster("cb", &[b.port], ""),
            tcp_listener("l1", port, "ca"),
        ],
        ProxyOptions {
            drain_time_s: DRAIN_S,
            ..ProxyOptions::default()
        },
    )
    .await;
    (fx, a, b, port)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn add_listener() {
    let (fx, _a, _b, port) = two_clusters().await;
    let p2 = free_port();
    assert!(!port_open(p2).await);
    fx.update(vec![tcp_listener("l2", p2, "cb")]).await;
    eventually("l2 accepts", || async { port_open(p2).await.then_some(()) }).await;
    assert_eq!(tcp_hello(p2).await.as_deref(), Ok("b"));
    assert_eq!(tcp_hello(port).await.as_deref(), Ok("a"));
    assert!(fx.proxy.stat("listener_manager.listener_added").await >= Some(2));
    fx.proxy
        .wait_stat("listener_manager.total_listeners_active", ">= 2", |v| {
            v >= 2
        })
        .await;
    assert!(fx.proxy.active_listeners().await.contains_key("l2"));
}

/// A listener-level change: a new listener takes the socket; the long-lived session on the
/// old one keeps working while it drains and is closed at the end of the drain time; new
/// connections get the new config.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn update_listener_drains_old_connections() {
    let (fx, _a, _b, port) = two_clusters().await;
    let mut held = TcpSession::open(port).await.expect("held session");
    assert_eq!(held.upstream, "a");
    let updated = listener_yaml(&tcp_listener_text(
        "l1",
        port,
        "cluster: cb",
        "per_connection_buffer_limit_bytes: 32768",
    ));
    fx.update(vec![updated]).await;
    eventually("new connections get cb", || async {
        (tcp_hello(port).await.as_deref() == Ok("b")).then_some(())
    })
    .await;
    assert!(fx.proxy.stat("listener_manager.listener_modified").await >= Some(1));
    held.roundtrip("draining but alive")
        .await
        .expect("the old listener's connection survives the update");
    assert!(
        held.closed_within(Duration::from_secs(DRAIN_S + 15)).await,
        "the old connection is closed at the end of the drain"
    );
    fx.proxy
        .wait_stat("listener_manager.total_listeners_draining", "== 0", |v| {
            v == 0
        })
        .await;
}

/// Only the filter chain changes: the listener is updated in place
/// (`listener_in_place_updated`), the old chain's connection drains, new ones use the new
/// chain, and the socket never stops accepting.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn filter_chain_only_update_in_place() {
    let (fx, _a, _b, port) = two_clusters().await;
    let mut held = TcpSession::open(port).await.expect("held session");
    fx.update(vec![tcp_listener("l1", port, "cb")]).await;
    eventually("new connections get cb", || async {
        (tcp_hello(port).await.as_deref() == Ok("b")).then_some(())
    })
    .await;
    fx.proxy
        .wait_stat("listener_manager.listener_in_place_updated", ">= 1", |v| {
            v >= 1
        })
        .await;
    held.roundtrip("old chain drains")
        .await
        .expect("old chain's connection alive during drain");
    assert!(
        held.closed_within(Duration::from_secs(DRAIN_S + 15)).await,
        "the changed chain's connection is closed after the drain"
    );
    // Removing the listener after an in-place update works (Envoy's listener_lds test).
    fx.remove(&[(ResourceType::Listener, "l1")]).await;
    eventually("port refuses after removal", || async {
        (!port_open(port).await).then_some(())
    })
    .await;
}

/// Remove a listener: the port refuses new connections at once; the open session drains.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn remove_listener() {
    let (fx, _a, _b, port) = two_clusters().await;
    let mut held = TcpSession::open(port).await.expect("held session");
    fx.remove(&[(ResourceType::Listener, "l1")]).await;
    eventually("port refuses new connections", || async {
        (!port_open(port).await).then_some(())
    })
    .await;
    held.roundtrip("draining")
        .await
        .expect("old connection drains");
    assert!(fx.proxy.stat("listener_manager.listener_removed").await >= Some(1));
    assert!(!fx.proxy.active_listeners().await.contains_key("l1"));
    assert!(held.closed_within(Duration::from_secs(DRAIN_S + 15)).await);
}

/// Changing a listener's address moves it: the old port refuses, the new one serves.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn address_change_moves_listener() {
    let (fx, _a, _b, port) = two_clusters().await;
    let p2 = free_port();
    fx.update(vec![tcp_listener("l1", p2, "ca")]).await;
    eventually("new address accepts", || async {
        port_open(p2).await.then_some(())
    })
    .await;
    assert_eq!(tcp_hello(p2).await.as_deref(), Ok("a"));
    eventually("old address refuses", || async {
        (!port_open(port).await).then_some(())
    })
    .await;
}

/// One update removes l1 and adds l1b on the same address: removals go first, so l1b binds.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replace_listener_on_same_address() {
    let (fx, _a, _b, port) = two_clusters().await;
    fx.change(
        vec![tcp_listener("l1b", port, "cb")],
        vec![(ResourceType::Listener, "l1".to_string())],
    )
    .await;
    eventually("l1b serves on the same port", || async {
        (tcp_hello(port).await.as_deref() == Ok("b")).then_some(())
    })
    .await;
    let active = fx.proxy.active_listeners().await;
    assert!(
        active.contains_key("l1b") && !active.contains_key("l1"),
        "{active:?}"
    );
}

/// Repeated LDS updates of one listener share its socket: it never refuses in between.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn repeated_listener_updates_keep_accepting() {
    let (fx, _a, _b, port) = two_clusters().await;
    for (i, cluster) in ["cb", "ca", "cb", "ca"].iter().enumerate() {
        let l = listener_yaml(&tcp_listener_text(
            "l1",
            port,
            &format!("cluster: {cluster}"),
            &format!("per_connection_buffer_limit_bytes: {}", 16384 + i * 1024),
        ));
        fx.update(vec![l]).await;
        let name = tcp_hello(port).await;
        assert!(name.is_ok(), "update {i}: {name:?}");
    }
    eventually("last update serves a", || async {
        (tcp_hello(port).await.as_deref() == Ok("a")).then_some(())
    })
    .await;
}

/// tcp_proxy weighted clusters shifted from 99/1 to 1/99 (tcp_proxy weights are ≥ 1).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tcp_weighted_cluster_shift() {
    let (fx, _a, _b, port) = two_clusters().await;
    fx.update(vec![tcp_listener_weighted(
        "l1",
        port,
        &[("ca", 99), ("cb", 1)],
    )])
    .await;
    eventually("mostly a", || async {
        let d = tcp_distribution(port, 50).await;
        (d.get("a").copied().unwrap_or(0) >= 45).then_some(())
    })
    .await;
    fx.update(vec![tcp_listener_weighted(
        "l1",
        port,
        &[("ca", 1), ("cb", 99)],
    )])
    .await;
    eventually("mostly b", || async {
        let d = tcp_distribution(port, 50).await;
        (d.get("b").copied().unwrap_or(0) >= 45).then_some(())
    })
    .await;
}
