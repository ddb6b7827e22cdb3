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
use courier_integration_tests::{free_port, Cp, Proxy, ProxyKind};

use crate::fixture::snapshot;

const NODE: &str = "on-demand";

fn bootstrap(cp_port: u16) -> String {
    format!(
        r#"node: {{ id: {NODE}, cluster: it-cluster }}
admin: {{ address: {{ socket_address: {{ address: 127.0.0.1, port_value: 0 }} }} }}
dynamic_resources:
  ads_config: {{ api_type: DELTA_GRPC, transport_api_version: V3, set_node_on_first_message_only: true, grpc_services: [{{ envoy_grpc: {{ cluster_name: xds }} }}] }}
  lds_config: {{ ads: {{}}, resource_api_version: V3 }}
static_resources:
  clusters:
  - name: xds
    type: STATIC
    connect_timeout: 1s
    typed_extension_protocol_options:
      envoy.extensions.upstreams.http.v3.HttpProtocolOptions:
        "@type": type.googleapis.com/envoy.extensions.upstreams.http.v3.HttpProtocolOptions
        explicit_http_config: {{ http2_protocol_options: {{}} }}
    load_assignment:
      cluster_name: xds
      endpoints: [{{ lb_endpoints: [{{ endpoint: {{ address: {{ socket_address: {{ address: 127.0.0.1, port_value: {cp_port} }} }} }} }}] }}]
"#
    )
}

/// `odcds.source` over ADS.
const OVER_ADS: &str = "{ ads: {}, resource_api_version: V3 }";
/// `odcds.source` on a delta stream of its own.
const OWN_STREAM: &str = "{ api_config_source: { api_type: DELTA_GRPC, transport_api_version: V3, grpc_services: [{ envoy_grpc: { cluster_name: xds } }] }, resource_api_version: V3 }";

fn listener(port: u16, source: &str) -> std::sync::Arc<courier_control_plane::Resource> {
    listener_yaml(&format!(
        r#"name: l1
address: {{ socket_address: {{ address: 127.0.0.1, port_value: {port} }} }}
filter_chains:
- filters:
  - name: envoy.filters.network.http_connection_manager
    typed_config:
      "@type": type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager
      stat_prefix: l1
      rds: {{ route_config_name: r1, config_source: {{ ads: {{}}, resource_api_version: V3 }} }}
      http_filters:
      - name: envoy.filters.http.on_demand
        typed_config:
          "@type": type.googleapis.com/envoy.extensions.filters.http.on_demand.v3.OnDemand
          odcds: {{ source: {source}, timeout: 1s }}
      - name: envoy.filters.http.router
        typed_config: {{ "@type": type.googleapis.com/envoy.extensions.filters.http.router.v3.Router }}
"#
    ))
}

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
            listener(port, source),
            route_yaml(
                "name: r1\nvirtual_hosts: [{ name: all, domains: ['*'], routes: [{ match: { prefix: /od }, route: { cluster: od } }, { match: { prefix: /nope }, route: { cluster: nope } }] }]\n",
            ),
        ]),
    );
    let proxy = Proxy::start_with(
        ProxyKind::from_env(),
        &bootstrap(cp.port),
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
