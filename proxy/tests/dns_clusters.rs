//! DNS clusters' refresh: each STRICT_DNS cluster is resolved again at its own
//! `dns_refresh_rate` (Envoy's default 5 s), counted in `update_attempt`. Compared with
//! Envoy on the same bootstrap when `envoy` is on PATH. The `envoy.cluster.dns` cluster type
//! (a `DnsCluster`) does the same, strict or logical.

mod http_support;

use http_support::*;

fn dns_cluster(name: &str, port: u16, extra: &str) -> String {
    format!(
        "  - name: {name}\n    type: STRICT_DNS\n    dns_lookup_family: V4_ONLY\n    connect_timeout: 1s\n{extra}    load_assignment:\n      cluster_name: {name}\n      endpoints:\n      - lb_endpoints:\n        - endpoint:\n            address:\n              socket_address: {{ address: localhost, port_value: {port} }}\n"
    )
}

/// Whether the fast cluster was resolved again at its rate while the default one was not,
/// and traffic through the fast one.
fn observe(p: &Courier) -> (bool, bool, u16) {
    let fast = p.wait_stat("cluster.fast.update_attempt", 5);
    let slow = p.stat("cluster.slow.update_attempt");
    (fast >= 5, slow <= 2, get(p.listener, "h", "/", &[]).status)
}

#[test]
fn dns_refresh_rate_matches_envoy() {
    let a = Upstream::start("a");
    let clusters = [
        dns_cluster("fast", a.addr.port(), "    dns_refresh_rate: 0.2s\n"),
        dns_cluster("slow", a.addr.port(), ""),
    ]
    .concat();
    let boot = bootstrap(&all_to("fast"), "", &clusters);
    let got = observe(&Courier::start(&boot));
    assert_eq!(got, (true, true, 200));
    let Some(envoy) = Courier::start_envoy(&boot) else {
        eprintln!("envoy not on PATH: skipping the DNS refresh differential");
        return;
    };
    assert_eq!(observe(&envoy), got, "envoy vs courier");
}

/// A cluster of type `envoy.cluster.dns` (what Envoy Gateway sends for DNS backends) with
/// these `DnsCluster` fields.
fn typed_dns_cluster(name: &str, port: u16, fields: &str) -> String {
    format!(
        "  - name: {name}\n    connect_timeout: 1s\n    cluster_type:\n      name: envoy.cluster.dns\n      typed_config:\n        \"@type\": type.googleapis.com/envoy.extensions.clusters.dns.v3.DnsCluster\n        dns_lookup_family: V4_ONLY\n{fields}    load_assignment:\n      cluster_name: {name}\n      endpoints:\n      - lb_endpoints:\n        - endpoint:\n            address:\n              socket_address: {{ address: localhost, port_value: {port} }}\n"
    )
}

#[test]
fn dns_cluster_extension_resolves_as_envoy() {
    let a = Upstream::start("a");
    let port = a.addr.port();
    let clusters = [
        // Strict: refreshed at its own rate.
        typed_dns_cluster("fast", port, "        dns_refresh_rate: 0.2s\n"),
        typed_dns_cluster("slow", port, "        respect_dns_ttl: true\n"),
        // Logical: one host for the name.
        typed_dns_cluster(
            "logical",
            port,
            "        all_addresses_in_single_endpoint: true\n",
        ),
    ]
    .concat();
    let routes = "            name: local\n            virtual_hosts:\n            - name: main\n              domains: [\"*\"]\n              routes:\n              - match: { prefix: \"/logical\" }\n                route: { cluster: logical }\n              - match: { prefix: \"/\" }\n                route: { cluster: fast }\n";
    let boot = bootstrap(routes, "", &clusters);
    let observe_all = |p: &Courier| {
        let (refreshed, default_rate, status) = observe(p);
        let logical = get(p.listener, "h", "/logical", &[]);
        (
            refreshed,
            default_rate,
            status,
            logical.status,
            logical.header("x-upstream").map(str::to_string),
        )
    };
    let got = observe_all(&Courier::start(&boot));
    assert_eq!(got, (true, true, 200, 200, Some("a".to_string())));
    let Some(envoy) = Courier::start_envoy(&boot) else {
        eprintln!("envoy not on PATH: skipping the DNS cluster differential");
        return;
    };
    assert_eq!(observe_all(&envoy), got, "envoy vs courier");
}
