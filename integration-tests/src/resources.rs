//! xDS resources, written in YAML as a user would write them.

use std::sync::Arc;

use courier_control_plane::Resource;
use courier_proto::envoy::config::cluster::v3::Cluster;
use courier_proto::envoy::config::endpoint::v3::ClusterLoadAssignment;
use courier_proto::envoy::config::listener::v3::Listener;
use courier_proto::envoy::config::route::v3::RouteConfiguration;

use crate::bootstrap::ADS_SOURCE;

/// A Cluster from YAML.
pub fn cluster_yaml(yaml: &str) -> Arc<Resource> {
    let c: Cluster =
        courier_proto::from_yaml(yaml).unwrap_or_else(|e| panic!("cluster yaml: {e}\n{yaml}"));
    Resource::cluster(&c).expect("cluster resource")
}

/// A Listener from YAML.
pub fn listener_yaml(yaml: &str) -> Arc<Resource> {
    let l: Listener =
        courier_proto::from_yaml(yaml).unwrap_or_else(|e| panic!("listener yaml: {e}\n{yaml}"));
    Resource::listener(&l).expect("listener resource")
}

/// A ClusterLoadAssignment from YAML.
pub fn endpoints_yaml(yaml: &str) -> Arc<Resource> {
    let c: ClusterLoadAssignment =
        courier_proto::from_yaml(yaml).unwrap_or_else(|e| panic!("cla yaml: {e}\n{yaml}"));
    Resource::endpoint(&c).expect("cla resource")
}

/// A RouteConfiguration from YAML.
pub fn route_yaml(yaml: &str) -> Arc<Resource> {
    let r: RouteConfiguration =
        courier_proto::from_yaml(yaml).unwrap_or_else(|e| panic!("route yaml: {e}\n{yaml}"));
    Resource::route(&r).expect("route resource")
}

/// An EDS cluster over ADS.
pub fn eds_cluster(name: &str) -> Arc<Resource> {
    eds_cluster_with(name, ADS_SOURCE, "")
}

/// An EDS cluster with its EDS config source and extra YAML lines (top level).
pub fn eds_cluster_with(name: &str, source: &str, extra: &str) -> Arc<Resource> {
    cluster_yaml(&format!(
        "name: {name}\nconnect_timeout: 1s\ntype: EDS\neds_cluster_config: {{ eds_config: {source} }}\n{extra}"
    ))
}

/// A STATIC cluster on 127.0.0.1 `ports`, with extra YAML lines.
pub fn static_cluster(name: &str, ports: &[u16], extra: &str) -> Arc<Resource> {
    cluster_yaml(&format!(
        "name: {name}\nconnect_timeout: 1s\ntype: STATIC\n{extra}\nload_assignment:\n  cluster_name: {name}\n  endpoints: [{{ lb_endpoints: [{}] }}]\n",
        lb_endpoints(&ports.iter().map(|p| (*p, 1, "")).collect::<Vec<_>>())
    ))
}

fn lb_endpoints(eps: &[(u16, u32, &str)]) -> String {
    eps.iter()
        .map(|(p, w, health)| {
            let health = if health.is_empty() {
                String::new()
            } else {
                format!(", health_status: {health}")
            };
            format!(
                "{{ endpoint: {{ address: {{ socket_address: {{ address: 127.0.0.1, port_value: {p} }} }} }}, load_balancing_weight: {w}{health} }}"
            )
        })
        .collect::<Vec<_>>()
        .join(", ")
}

/// A ClusterLoadAssignment for `cluster` with 127.0.0.1 `ports` (weight 1, health unknown).
pub fn endpoints(cluster: &str, ports: &[u16]) -> Arc<Resource> {
    endpoints_weighted(
        cluster,
        &ports.iter().map(|p| (*p, 1, "")).collect::<Vec<_>>(),
    )
}

/// A ClusterLoadAssignment with (port, weight, health_status) endpoints.
pub fn endpoints_weighted(cluster: &str, eps: &[(u16, u32, &str)]) -> Arc<Resource> {
    endpoints_yaml(&format!(
        "cluster_name: {cluster}\nendpoints: [{{ lb_endpoints: [{}] }}]\n",
        lb_endpoints(eps)
    ))
}

/// A tcp_proxy listener on 127.0.0.1:`port` to `cluster`.
pub fn tcp_listener(name: &str, port: u16, cluster: &str) -> Arc<Resource> {
    listener_yaml(&tcp_listener_text(
        name,
        port,
        &format!("cluster: {cluster}"),
        "",
    ))
}

/// A tcp_proxy listener to weighted clusters.
pub fn tcp_listener_weighted(name: &str, port: u16, clusters: &[(&str, u32)]) -> Arc<Resource> {
    let cs: Vec<String> = clusters
        .iter()
        .map(|(c, w)| format!("{{ name: {c}, weight: {w} }}"))
        .collect();
    listener_yaml(&tcp_listener_text(
        name,
        port,
        &format!("weighted_clusters: {{ clusters: [{}] }}", cs.join(", ")),
        "",
    ))
}

/// The YAML of a tcp_proxy listener: `spec` is the cluster specifier line(s) of the filter,
/// `extra` top-level listener lines.
pub fn tcp_listener_text(name: &str, port: u16, spec: &str, extra: &str) -> String {
    format!(
        r#"name: {name}
address: {{ socket_address: {{ address: 127.0.0.1, port_value: {port} }} }}
{extra}
filter_chains:
- filters:
  - name: envoy.filters.network.tcp_proxy
    typed_config:
      "@type": type.googleapis.com/envoy.extensions.filters.network.tcp_proxy.v3.TcpProxy
      stat_prefix: {name}
      {spec}
"#
    )
}

/// An HTTP listener (http_connection_manager) taking its routes from RDS `route`.
pub fn http_listener(name: &str, port: u16, route: &str) -> Arc<Resource> {
    http_listener_with(name, port, route, ADS_SOURCE)
}

/// An HTTP listener with the RDS config source `source`.
pub fn http_listener_with(name: &str, port: u16, route: &str, source: &str) -> Arc<Resource> {
    http_listener_text(name, port, route, source, "", "")
}

/// An HTTP listener whose connection manager also takes `upgrade_configs: [websocket]`.
pub fn http_listener_websocket(name: &str, port: u16, route: &str) -> Arc<Resource> {
    let extra = "      upgrade_configs: [ { upgrade_type: websocket } ]\n";
    http_listener_text(name, port, route, ADS_SOURCE, extra, "")
}

/// An HTTP listener; `hcm_extra` holds more `http_connection_manager` fields (YAML lines
/// indented six spaces), `filters` the HTTP filters before the router (list items indented
/// six spaces).
fn http_listener_text(
    name: &str,
    port: u16,
    route: &str,
    source: &str,
    hcm_extra: &str,
    filters: &str,
) -> Arc<Resource> {
    listener_yaml(&format!(
        r#"name: {name}
address: {{ socket_address: {{ address: 127.0.0.1, port_value: {port} }} }}
filter_chains:
- filters:
  - name: envoy.filters.network.http_connection_manager
    typed_config:
      "@type": type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager
      stat_prefix: {name}
      rds: {{ route_config_name: {route}, config_source: {source} }}
{hcm_extra}      http_filters:
{filters}      - name: envoy.filters.http.router
        typed_config: {{ "@type": type.googleapis.com/envoy.extensions.filters.http.router.v3.Router }}
"#
    ))
}

/// A route configuration sending everything to `cluster`.
pub fn route(name: &str, cluster: &str) -> Arc<Resource> {
    route_yaml(&format!(
        "name: {name}\nvirtual_hosts: [{{ name: all, domains: ['*'], routes: [{{ match: {{ prefix: / }}, route: {{ cluster: {cluster} }} }}] }}]\n"
    ))
}

/// A route configuration with a weighted-cluster action.
pub fn route_weighted(name: &str, clusters: &[(&str, u32)]) -> Arc<Resource> {
    let cs: Vec<String> = clusters
        .iter()
        .map(|(c, w)| format!("{{ name: {c}, weight: {w} }}"))
        .collect();
    route_yaml(&format!(
        "name: {name}\nvirtual_hosts: [{{ name: all, domains: ['*'], routes: [{{ match: {{ prefix: / }}, route: {{ weighted_clusters: {{ clusters: [{}] }} }} }}] }}]\n",
        cs.join(", ")
    ))
}

/// The proto3 JSON of a resource with its `@type`, for file-based config sources.
pub fn to_file_json(r: &Resource) -> serde_json::Value {
    let mut v = r.to_json();
    if let Some(o) = v.as_object_mut() {
        o.insert("@type".into(), r.any().type_url.clone().into());
    }
    v
}

/// Writes a DiscoveryResponse file atomically (write + rename, which Envoy's file watch and
/// Courier's poll both see).
pub fn write_discovery_file(path: &std::path::Path, version: &str, resources: &[Arc<Resource>]) {
    let body = serde_json::json!({
        "version_info": version,
        "resources": resources.iter().map(|r| to_file_json(r)).collect::<Vec<_>>(),
    });
    let tmp = path.with_extension(format!("tmp{}", fastrand::u32(..)));
    std::fs::write(&tmp, serde_json::to_vec_pretty(&body).expect("json")).expect("write");
    std::fs::rename(&tmp, path).expect("rename");
}

/// An HTTP listener whose connection manager runs `envoy.filters.http.on_demand` with
/// on-demand CDS from `odcds_source` (waiting up to `timeout`), then the router; routes
/// come over RDS (`route`, over ADS).
pub fn on_demand_http_listener(
    name: &str,
    port: u16,
    route: &str,
    odcds_source: &str,
    timeout: &str,
) -> Arc<Resource> {
    let on_demand = format!(
        r#"      - name: envoy.filters.http.on_demand
        typed_config:
          "@type": type.googleapis.com/envoy.extensions.filters.http.on_demand.v3.OnDemand
          odcds: {{ source: {odcds_source}, timeout: {timeout} }}
"#
    );
    http_listener_text(name, port, route, ADS_SOURCE, "", &on_demand)
}
