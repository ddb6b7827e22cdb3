//! DNS clusters' refresh: each STRICT_DNS cluster is resolved again at its own
//! `dns_refresh_rate` (Envoy's default 5 s), counted in `update_attempt`. Compared with
//! Envoy on the same bootstrap when `envoy` is on PATH.

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
