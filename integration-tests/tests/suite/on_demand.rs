//! On-demand CDS (`envoy.filters.http.on_demand` with `odcds` over delta ADS): the proxy
//! starts with no clusters at all (no `cds_config`); a request routed to a cluster the
//! control plane has waits for it, is served, and the cluster stays; a request for a
//! cluster nobody has gets 503 once `odcds.timeout` passes.

use std::time::{Duration, Instant};

use courier_control_plane::ResourceType;
use courier_integration_tests::proxy::ProxyOptions;
use courier_integration_tests::resources::*;
use courier_integration_tests::traffic::http1_once;
use courier_integration_tests::upstream::Upstream;
use courier_integration_tests::{free_port, Bootstrap, Cp, Proxy, ProxyKind};

use crate::fixture::snapshot;

const NODE: &str = "on-demand";

/// `odcds.source` over ADS.
const OVER_ADS: &str = "{ ads: {}, resource_api_version: V3 }";
/// `odcds.source` on a delta stream of its own.
const OWN_STREAM: &str = "{ api_config_source: { api_type: DELTA_GRPC, transport_api_version: V3, grpc_services: [{ envoy_grpc: { cluster_name: xds } }] }, resource_api_version: V3 }";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cluster_is_discovered_over_ads_when_a_request_needs_it() {
    discovered_on_demand(OVER_ADS).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cluster_is_discovered_on_its_own_delta_stream() {
    discovered_on_demand(OWN_STREAM).await;
}

async fn discovered_on_demand(source: &str) {
    let upstream = Upstream::http("od").await;
    let port = free_port();
    let cp = Cp::start().await;
    let s = cp.set(
        NODE,
        snapshot(vec![
            static_cluster("od", &[upstream.port], ""),
            on_demand_http_listener("l1", port, "r1", source, "1s"),
            route_yaml(
                "name: r1\nvirtual_hosts: [{ name: all, domains: ['*'], routes: [{ match: { prefix: /od }, route: { cluster: od } }, { match: { prefix: /nope }, route: { cluster: nope } }] }]\n",
            ),
        ]),
    );
    let proxy = Proxy::start_with(
        ProxyKind::from_env(),
        &Bootstrap::delta_ads(NODE, cp.port).without_cds().yaml(),
        ProxyOptions::default(),
    )
    .await;
    cp.ack(
        NODE,
        ResourceType::Listener,
        s.version(ResourceType::Listener),
    )
    .await;
    cp.ack(NODE, ResourceType::Route, s.version(ResourceType::Route))
        .await;
    proxy.wait_live().await;
    assert!(
        !proxy.active_clusters().await.contains_key("od"),
        "no cluster is pushed up front"
    );
    let addr = format!("127.0.0.1:{port}").parse().expect("addr");
    let r = http1_once(addr, "GET", "/od", "localhost")
        .await
        .expect("response");
    assert_eq!(r.status, 200, "the first request waits for the cluster");
    assert_eq!(r.upstream(), Some("od"));
    assert!(proxy.active_clusters().await.contains_key("od"));
    let r = http1_once(addr, "GET", "/od", "localhost")
        .await
        .expect("response");
    assert_eq!(r.status, 200, "the cluster stays");
    // A cluster the control plane does not have: 503 after odcds.timeout (1 s).
    let started = Instant::now();
    let r = http1_once(addr, "GET", "/nope", "localhost")
        .await
        .expect("response");
    assert_eq!(r.status, 503);
    assert!(
        started.elapsed() >= Duration::from_millis(900),
        "answered after the timeout, not before: {:?}",
        started.elapsed()
    );
}
