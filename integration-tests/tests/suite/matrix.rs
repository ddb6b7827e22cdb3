//! The compatibility matrix: one scenario — clusters, endpoints, listeners and routes
//! added, updated and removed, each change checked with traffic — through every way a
//! proxy can take its configuration from a server: ADS state of the world, ADS delta,
//! per-type streams (SotW and delta) and REST-JSON polls. It runs on Courier and on Envoy
//! (`PROXY_UNDER_TEST=envoy`) alike.

use courier_control_plane::ResourceType;
use courier_integration_tests::bootstrap::Mode;
use courier_integration_tests::resources::*;
use courier_integration_tests::traffic::{http_get, tcp_hello};
use courier_integration_tests::upstream::Upstream;
use courier_integration_tests::{eventually, free_port, Bootstrap, Cp};

use crate::fixture::{Fx, NODE};

/// How the proxy reaches the control plane.
enum Transport {
    AdsSotw,
    AdsDelta,
    PerTypeSotw,
    PerTypeDelta,
    Rest,
}

async fn http_upstream_of(port: u16) -> Option<String> {
    match http_get(port).await {
        Ok(r) if r.status == 200 => r.upstream().map(str::to_string),
        _ => None,
    }
}

/// The scenario, through `mode`.
async fn add_update_remove(mode: Transport) {
    let (a, b) = (Upstream::tcp_echo("a").await, Upstream::tcp_echo("b").await);
    let (ha, hb) = (Upstream::http("ha").await, Upstream::http("hb").await);
    let (port, http_port) = (free_port(), free_port());
    let cp = Cp::start().await;
    let rest_port = cp.rest_port;
    let mode = match mode {
        Transport::AdsSotw => Mode::Ads { delta: false },
        Transport::AdsDelta => Mode::Ads { delta: true },
        Transport::PerTypeSotw => Mode::PerType { delta: false },
        Transport::PerTypeDelta => Mode::PerType { delta: true },
        Transport::Rest => Mode::Rest { port: rest_port },
    };
    let boot = move |p| Bootstrap::ads(NODE, p).mode(mode.clone());
    let source = boot(0).dependent_source();
    let fx = Fx::with(
        cp,
        boot,
        vec![
            eds_cluster_with("c1", source, ""),
            endpoints("c1", &[a.port]),
            tcp_listener("l1", port, "c1"),
        ],
    )
    .await;
    assert_eq!(tcp_hello(port).await.as_deref(), Ok("a"));

    // EDS update.
    fx.update(vec![endpoints("c1", &[b.port])]).await;
    eventually("EDS moved traffic to b", || async {
        (tcp_hello(port).await.as_deref() == Ok("b")).then_some(())
    })
    .await;

    // CDS add (a new EDS subscription name), LDS update onto it.
    fx.update(vec![
        eds_cluster_with("c2", source, ""),
        endpoints("c2", &[a.port]),
        tcp_listener("l1", port, "c2"),
    ])
    .await;
    eventually("l1 moved to the new cluster c2 (a)", || async {
        (tcp_hello(port).await.as_deref() == Ok("a")).then_some(())
    })
    .await;

    // LDS add with RDS, then an RDS update.
    fx.update(vec![
        static_cluster("hca", &[ha.port], ""),
        static_cluster("hcb", &[hb.port], ""),
        http_listener_with("hl", http_port, "r1", source),
        route("r1", "hca"),
    ])
    .await;
    eventually("hl routes to ha", || async {
        (http_upstream_of(http_port).await.as_deref() == Some("ha")).then_some(())
    })
    .await;
    fx.update(vec![route("r1", "hcb")]).await;
    eventually("RDS moved hl to hb", || async {
        (http_upstream_of(http_port).await.as_deref() == Some("hb")).then_some(())
    })
    .await;

    // CDS and LDS removals.
    fx.remove(&[
        (ResourceType::Cluster, "c1"),
        (ResourceType::Listener, "hl"),
    ])
    .await;
    eventually("CDS removed c1", || async {
        (!fx.proxy.active_clusters().await.contains_key("c1")).then_some(())
    })
    .await;
    eventually("LDS removed hl", || async {
        http_get(http_port).await.is_err().then_some(())
    })
    .await;
    assert_eq!(tcp_hello(port).await.as_deref(), Ok("a"));
    fx.remove(&[(ResourceType::Listener, "l1")]).await;
    eventually("LDS removed l1", || async {
        tcp_hello(port).await.is_err().then_some(())
    })
    .await;
    assert!(fx.proxy.stat("cluster_manager.cds.update_success").await >= Some(3));
    assert!(fx.proxy.stat("listener_manager.lds.update_success").await >= Some(3));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ads_sotw() {
    add_update_remove(Transport::AdsSotw).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ads_delta() {
    add_update_remove(Transport::AdsDelta).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn per_type_sotw() {
    add_update_remove(Transport::PerTypeSotw).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn per_type_delta() {
    add_update_remove(Transport::PerTypeDelta).await;
}

/// REST-JSON (`api_type: REST`) for every type, each change ACKed through the next poll's
/// `version_info`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rest_json() {
    add_update_remove(Transport::Rest).await;
}
