//! Every class of invalid resource is NACKed naming the resource and the reason, the NACK is
//! visible in the control plane's status, the last good config keeps serving, and the proxy
//! never crashes. Cases run in sequence on one proxy per resource type; all failures are
//! reported together.

use std::sync::Arc;

use courier_control_plane::{Resource, ResourceType};
use courier_integration_tests::resources::*;
use courier_integration_tests::traffic::tcp_hello;
use courier_integration_tests::upstream::Upstream;
use courier_integration_tests::{free_port, ProxyKind};
use courier_proto::envoy::config::cluster::v3::Cluster;
use courier_proto::envoy::config::listener::v3::Listener;

use crate::fixture::Fx;

struct Case {
    name: &'static str,
    /// The rejected resources (the first is the one the NACK must name).
    resources: Vec<Arc<Resource>>,
    /// The NACKed type.
    kind: ResourceType,
    /// Name the NACK must mention.
    names: String,
    /// Any of these (case-insensitive) must be in the NACK: the reason.
    reasons: &'static [&'static str],
    /// Envoy's NACK names the resource for this kind (CDS/LDS); Courier's always must.
    envoy_names_it: bool,
}

fn case(
    name: &'static str,
    kind: ResourceType,
    resources: Vec<Arc<Resource>>,
    reasons: &'static [&'static str],
) -> Case {
    let names = resources[0].name().to_string();
    Case {
        name,
        kind,
        envoy_names_it: kind != ResourceType::Endpoint,
        names,
        resources,
        reasons,
    }
}

/// NACK cases Courier fails today (case name, where the fix goes); listed in README.md.
const COURIER_KNOWN_BUGS: &[(&str, &str)] = &[];

const EXT: &[&str] = &["registered", "unsupported", "unknown", "not supported"];
const UNDECODABLE: &[&str] = &["unpack", "decode", "unable", "invalid", "malformed"];

/// Runs each case: push it, await the NACK (naming resource and reason), check the stat,
/// status and that the good config still serves; then restore. Returns failures.
async fn run_cases(fx: &Fx, up: &Upstream, port: u16, cases: Vec<Case>, stat: Option<&str>) {
    let mut failures = Vec::new();
    let total = cases.len();
    for (i, c) in cases.into_iter().enumerate() {
        let before = match stat {
            Some(s) => fx.proxy.stat(s).await.unwrap_or(0),
            None => 0,
        };
        let snap = fx
            .cp
            .cp
            .cache()
            .update_resources(fx.node(), c.resources.clone(), [])
            .expect("consistent");
        let version = snap.version(c.kind).to_string();
        let outcome = fx.cp.outcome(fx.node(), c.kind, &version).await;
        let mut problems = Vec::new();
        match &outcome {
            Ok(()) => problems.push("ACKed instead of NACKed".to_string()),
            Err(msg) => {
                let lower = msg.to_ascii_lowercase();
                let must_name = c.envoy_names_it || fx.proxy.kind == ProxyKind::Courier;
                if must_name && !msg.contains(&c.names) {
                    problems.push(format!("NACK does not name {:?}: {msg}", c.names));
                }
                if !c.reasons.iter().any(|r| lower.contains(r)) {
                    problems.push(format!("NACK reason not one of {:?}: {msg}", c.reasons));
                }
                let last = fx.cp.cp.status().last_nack(fx.node(), c.kind);
                if last.as_ref().map(|n| n.code) != Some(13) {
                    problems.push(format!("status last_nack code is not 13: {last:?}"));
                }
            }
        }
        if let Some(s) = stat {
            let after = fx.proxy.stat(s).await.unwrap_or(0);
            if after <= before {
                problems.push(format!("{s} did not increase ({before} → {after})"));
            }
        }
        if !fx.proxy.running() {
            panic!(
                "case {}: the proxy crashed; log:\n{}",
                c.name,
                fx.proxy.log()
            );
        }
        match tcp_hello(port).await {
            Ok(n) if n == "a" => {}
            other => problems.push(format!("last good config no longer serves: {other:?}")),
        }
        // Restore: drop the bad resources (of wildcard types) and add a marker cluster so a
        // new, valid version is sent and ACKed.
        let mut rm = Vec::new();
        for r in &c.resources {
            if matches!(r.kind(), ResourceType::Cluster | ResourceType::Listener) {
                rm.push((r.kind(), r.name().to_string()));
            }
        }
        let restore_up = if c.kind == ResourceType::Endpoint {
            vec![endpoints("c1", &[up.port])]
        } else {
            vec![]
        };
        let snap = fx
            .cp
            .cp
            .cache()
            .update_resources(
                fx.node(),
                restore_up
                    .into_iter()
                    .chain([static_cluster(&format!("marker{i}"), &[1], "")]),
                rm,
            )
            .expect("restore");
        fx.cp
            .ack(
                fx.node(),
                ResourceType::Cluster,
                snap.version(ResourceType::Cluster),
            )
            .await;
        let status = if problems.is_empty() { "ok" } else { "FAILED" };
        eprintln!(
            "nack case {}/{total} {}: {status} — {}",
            i + 1,
            c.name,
            outcome.err().unwrap_or_default()
        );
        // Strict expected failures: a known Courier bug must still fail (else: remove it
        // from COURIER_KNOWN_BUGS), and does not fail the run meanwhile.
        let known = fx.proxy.kind == ProxyKind::Courier
            && COURIER_KNOWN_BUGS.iter().any(|(n, _)| *n == c.name);
        match (known, problems.is_empty()) {
            (false, false) => failures.push(format!("{}: {}", c.name, problems.join("; "))),
            (true, false) => eprintln!("  XFAIL (known courier bug): {}", problems.join("; ")),
            (true, true) => failures.push(format!(
                "{}: passes now: remove it from COURIER_KNOWN_BUGS",
                c.name
            )),
            (false, true) => {}
        }
    }
    assert!(
        failures.is_empty(),
        "NACK cases failed:\n{}",
        failures.join("\n")
    );
}

async fn fixture() -> (Fx, Upstream, u16) {
    let a = Upstream::tcp_echo("a").await;
    let port = free_port();
    let fx = Fx::ads(vec![
        eds_cluster("c1"),
        endpoints("c1", &[a.port]),
        tcp_listener("l1", port, "c1"),
    ])
    .await;
    (fx, a, port)
}

fn cluster_with(yaml: &str, f: impl FnOnce(&mut Cluster)) -> Arc<Resource> {
    let mut c: Cluster = courier_proto::from_yaml(yaml).expect("yaml");
    f(&mut c);
    Resource::cluster(&c).expect("resource")
}

fn listener_with(yaml: &str, f: impl FnOnce(&mut Listener)) -> Arc<Resource> {
    let mut l: Listener = courier_proto::from_yaml(yaml).expect("yaml");
    f(&mut l);
    Resource::listener(&l).expect("resource")
}

const STRUCT_ANY: &str = "{ '@type': type.googleapis.com/google.protobuf.Struct, value: {} }";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nack_invalid_clusters() {
    let (fx, a, port) = fixture().await;
    let st = "connect_timeout: 1s\ntype: STATIC\n";
    let cases = vec![
        case(
            "EDS cluster without eds_cluster_config",
            ResourceType::Cluster,
            vec![
                cluster_yaml("name: bad_eds\nconnect_timeout: 1s\ntype: EDS\n"),
                endpoints("bad_eds", &[1]),
            ],
            &["eds"],
        ),
        case(
            "STATIC cluster with a hostname",
            ResourceType::Cluster,
            vec![cluster_yaml(&format!(
                "name: bad_ip\n{st}load_assignment: {{ cluster_name: bad_ip, endpoints: [{{ lb_endpoints: [{{ endpoint: {{ address: {{ socket_address: {{ address: not-an-ip.example, port_value: 80 }} }} }} }}] }}] }}\n"
            ))],
            &["malformed", "invalid", "ip address", "not-an-ip"],
        ),
        case(
            "zero connect_timeout",
            ResourceType::Cluster,
            vec![cluster_yaml("name: bad_timeout\nconnect_timeout: 0s\ntype: STATIC\n")],
            &["connect_timeout", "connecttimeout"],
        ),
        case(
            "CLUSTER_PROVIDED lb_policy on a STATIC cluster",
            ResourceType::Cluster,
            vec![cluster_yaml(&format!("name: bad_lb\n{st}lb_policy: CLUSTER_PROVIDED\n"))],
            &["cluster_provided", "cluster provided", "lb policy", "lb_policy"],
        ),
        case(
            "undefined lb_policy enum value",
            ResourceType::Cluster,
            vec![cluster_with(&format!("name: bad_enum\n{st}"), |c| c.lb_policy = 77)],
            &["lb_policy", "lbpolicy", "enum"],
        ),
        case(
            "unknown cluster_type extension",
            ResourceType::Cluster,
            vec![cluster_yaml(&format!(
                "name: bad_ext\nconnect_timeout: 1s\ncluster_type: {{ name: envoy.clusters.bogus, typed_config: {STRUCT_ANY} }}\n"
            ))],
            EXT,
        ),
        case(
            "unknown transport_socket extension",
            ResourceType::Cluster,
            vec![cluster_yaml(&format!(
                "name: bad_ts\n{st}transport_socket: {{ name: envoy.transport_sockets.bogus, typed_config: {STRUCT_ANY} }}\n"
            ))],
            EXT,
        ),
        case(
            "upstream TLS whose trusted CA is not a certificate",
            ResourceType::Cluster,
            vec![cluster_yaml(&format!(
                "name: bad_ca\n{st}transport_socket: {{ name: envoy.transport_sockets.tls, typed_config: {{ '@type': type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.UpstreamTlsContext, common_tls_context: {{ validation_context: {{ trusted_ca: {{ inline_string: 'not a certificate' }} }} }} }} }}\n"
            ))],
            &["trusted ca", "certificate"],
        ),
        case(
            "undecodable typed_extension_protocol_options",
            ResourceType::Cluster,
            vec![cluster_with(&format!("name: bad_opts\n{st}"), |c| {
                c.typed_extension_protocol_options.insert(
                    "envoy.extensions.upstreams.http.v3.HttpProtocolOptions".into(),
                    courier_proto::google::protobuf::Any {
                        type_url: "type.googleapis.com/envoy.extensions.upstreams.http.v3.HttpProtocolOptions".into(),
                        value: vec![0xff, 0xff, 0xff, 0xff],
                    },
                );
            })],
            UNDECODABLE,
        ),
        case(
            "health check without required timeout and thresholds",
            ResourceType::Cluster,
            vec![cluster_yaml(&format!(
                "name: bad_hc\n{st}health_checks: [{{ interval: 1s, tcp_health_check: {{}} }}]\n"
            ))],
            &["timeout", "required", "threshold"],
        ),
        case(
            "ring hash minimum_ring_size above maximum",
            ResourceType::Cluster,
            vec![cluster_yaml(&format!(
                "name: bad_ring\n{st}lb_policy: RING_HASH\nring_hash_lb_config: {{ minimum_ring_size: 1000, maximum_ring_size: 10 }}\n"
            ))],
            &["ring", "unsupported"],
        ),
    ];
    run_cases(
        &fx,
        &a,
        port,
        cases,
        Some("cluster_manager.cds.update_rejected"),
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nack_invalid_endpoints() {
    let (fx, a, port) = fixture().await;
    let ep = |addr: &str, extra: &str| {
        endpoints_yaml(&format!(
            "cluster_name: c1\nendpoints: [{{ lb_endpoints: [{{ endpoint: {{ address: {{ socket_address: {{ address: {addr}, port_value: 9 }} }} }}{extra} }}] }}]\n"
        ))
    };
    let cases = vec![
        case(
            "endpoint address is not an IP",
            ResourceType::Endpoint,
            vec![ep("999.1.1.1", "")],
            &["malformed", "invalid", "ip"],
        ),
        case(
            "endpoint weight 0",
            ResourceType::Endpoint,
            vec![ep("127.0.0.1", ", load_balancing_weight: 0")],
            &["weight"],
        ),
        case(
            "locality weight 0 is fine but overprovisioning_factor 0 is not",
            ResourceType::Endpoint,
            vec![endpoints_yaml(
                "cluster_name: c1\nendpoints: [{ priority: 1, lb_endpoints: [{ endpoint: { address: { socket_address: { address: 127.0.0.1, port_value: 9 } } } }] }]\npolicy: { overprovisioning_factor: 0 }\n",
            )],
            &["overprovisioning", "priority", "factor"],
        ),
    ];
    run_cases(&fx, &a, port, cases, Some("cluster.c1.update_rejected")).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nack_invalid_listeners() {
    let (fx, a, port) = fixture().await;
    let p = free_port();
    let tcp = |name: &str, spec: &str, extra: &str| {
        listener_yaml(&tcp_listener_text(name, p, spec, extra))
    };
    let cases = vec![
        case(
            "duplicate address",
            ResourceType::Listener,
            vec![tcp_listener("dup_addr", port, "c1")],
            &["duplicate", "address", "in use"],
        ),
        case(
            "unknown network filter",
            ResourceType::Listener,
            vec![listener_yaml(&format!(
                "name: bad_filter\naddress: {{ socket_address: {{ address: 127.0.0.1, port_value: {p} }} }}\nfilter_chains: [{{ filters: [{{ name: envoy.filters.network.bogus, typed_config: {STRUCT_ANY} }}] }}]\n"
            ))],
            EXT,
        ),
        case(
            "undecodable tcp_proxy typed_config",
            ResourceType::Listener,
            vec![listener_with(&tcp_listener_text("bad_any", p, "cluster: c1", ""), |l| {
                l.filter_chains[0].filters[0].config_type = Some(
                    courier_proto::envoy::config::listener::v3::filter::ConfigType::TypedConfig(
                        courier_proto::google::protobuf::Any {
                            type_url: "type.googleapis.com/envoy.extensions.filters.network.tcp_proxy.v3.TcpProxy".into(),
                            value: vec![0x0a, 0xff, 0xff, 0xff, 0xff],
                        },
                    ),
                );
            })],
            UNDECODABLE,
        ),
        case(
            "tcp_proxy without stat_prefix",
            ResourceType::Listener,
            vec![listener_yaml(
                &tcp_listener_text("no_prefix", p, "cluster: c1", "")
                    .replace("stat_prefix: no_prefix", ""),
            )],
            &["stat_prefix", "statprefix"],
        ),
        case(
            "tcp_proxy without a cluster",
            ResourceType::Listener,
            vec![tcp("no_cluster", "", "")],
            &["cluster"],
        ),
        case(
            "tcp_proxy weighted cluster of weight 0",
            ResourceType::Listener,
            vec![tcp(
                "zero_weight",
                "weighted_clusters: { clusters: [{ name: c1, weight: 0 }] }",
                "",
            )],
            &["weight"],
        ),
        case(
            "listener without address",
            ResourceType::Listener,
            vec![listener_yaml(
                "name: no_addr\nfilter_chains: [{ filters: [{ name: envoy.filters.network.tcp_proxy, typed_config: { '@type': type.googleapis.com/envoy.extensions.filters.network.tcp_proxy.v3.TcpProxy, stat_prefix: x, cluster: c1 } }] }]\n",
            )],
            &["address"],
        ),
        case(
            "listener address is not an IP",
            ResourceType::Listener,
            vec![listener_yaml(
                &tcp_listener_text("bad_ip", p, "cluster: c1", "")
                    .replace("address: 127.0.0.1", "address: not-an-ip"),
            )],
            &["malformed", "invalid", "ip"],
        ),
        case(
            "downstream TLS whose certificate chain is not a certificate",
            ResourceType::Listener,
            vec![listener_yaml(&format!(
                "name: bad_cert\naddress: {{ socket_address: {{ address: 127.0.0.1, port_value: {p} }} }}\nfilter_chains:\n- transport_socket: {{ name: envoy.transport_sockets.tls, typed_config: {{ '@type': type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.DownstreamTlsContext, common_tls_context: {{ tls_certificates: [{{ certificate_chain: {{ inline_string: 'garbage' }}, private_key: {{ inline_string: 'garbage' }} }}] }} }} }}\n  filters: [{{ name: envoy.filters.network.tcp_proxy, typed_config: {{ '@type': type.googleapis.com/envoy.extensions.filters.network.tcp_proxy.v3.TcpProxy, stat_prefix: x, cluster: c1 }} }}]\n"
            ))],
            &["certificate chain"],
        ),
        case(
            "two filter chains with the same match",
            ResourceType::Listener,
            vec![listener_yaml(&format!(
                "name: same_match\naddress: {{ socket_address: {{ address: 127.0.0.1, port_value: {p} }} }}\nfilter_chains:\n- filters: [{{ name: envoy.filters.network.tcp_proxy, typed_config: {{ '@type': type.googleapis.com/envoy.extensions.filters.network.tcp_proxy.v3.TcpProxy, stat_prefix: x, cluster: c1 }} }}]\n- filters: [{{ name: envoy.filters.network.tcp_proxy, typed_config: {{ '@type': type.googleapis.com/envoy.extensions.filters.network.tcp_proxy.v3.TcpProxy, stat_prefix: z, cluster: c1 }} }}]\n"
            ))],
            &["same matching", "duplicate", "multiple filter chains"],
        ),
        case(
            "listener without filter chains",
            ResourceType::Listener,
            vec![listener_yaml(&format!(
                "name: no_chains\naddress: {{ socket_address: {{ address: 127.0.0.1, port_value: {p} }} }}\n"
            ))],
            &["filter chain", "filter_chain"],
        ),
        case(
            // Inline routes are checked against the known clusters (`validate_clusters`
            // defaults to true for them).
            "inline route to an unknown cluster",
            ResourceType::Listener,
            vec![listener_yaml(&format!(
                "name: inline_unknown\naddress: {{ socket_address: {{ address: 127.0.0.1, port_value: {p} }} }}\nfilter_chains: [{{ filters: [{{ name: envoy.filters.network.http_connection_manager, typed_config: {{ '@type': type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager, stat_prefix: x, route_config: {{ virtual_hosts: [{{ name: all, domains: ['*'], routes: [{{ match: {{ prefix: / }}, route: {{ cluster: nope }} }}] }}] }}, http_filters: [{{ name: envoy.filters.http.router, typed_config: {{ '@type': type.googleapis.com/envoy.extensions.filters.http.router.v3.Router }} }}] }} }}] }}]\n"
            ))],
            &["unknown cluster 'nope'"],
        ),
        case(
            "unknown listener filter",
            ResourceType::Listener,
            vec![tcp(
                "bad_lf",
                "cluster: c1",
                &format!("listener_filters: [{{ name: envoy.filters.listener.bogus, typed_config: {STRUCT_ANY} }}]"),
            )],
            EXT,
        ),
    ];
    run_cases(
        &fx,
        &a,
        port,
        cases,
        Some("listener_manager.lds.update_rejected"),
    )
    .await;
}
