//! Priorities, differential with Envoy 1.40 (when `envoy` is on PATH): the load a
//! priority keeps and the share that spills to the next as its hosts become unhealthy
//! (the overprovisioning factor), healthy hosts before degraded ones, and total panic.
//! The same static cluster runs through both proxies and the shares must agree.

mod http_support;

use std::collections::HashMap;
use std::net::SocketAddr;

use http_support::*;

/// A static cluster `p` whose endpoints are (address, priority, health_status).
fn cluster_with_priorities(eps: &[(SocketAddr, u32, &str)]) -> String {
    let mut out = String::from(
        "  - name: p\n    type: STATIC\n    connect_timeout: 1s\n    load_assignment:\n      cluster_name: p\n      endpoints:\n",
    );
    for (addr, priority, health) in eps {
        let health = if health.is_empty() {
            String::new()
        } else {
            format!(", health_status: {health}")
        };
        out.push_str(&format!(
            "      - priority: {priority}\n        lb_endpoints:\n        - {{ endpoint: {{ address: {{ socket_address: {{ address: {}, port_value: {} }} }} }}{health} }}\n",
            addr.ip(),
            addr.port()
        ));
    }
    out
}

/// Requests per upstream name over `n` requests.
fn shares(
    start: impl Fn(&str) -> Option<Courier>,
    cluster: &str,
    n: usize,
) -> Option<HashMap<String, usize>> {
    let proxy = start(&bootstrap(&all_to("p"), "", cluster))?;
    let mut out = HashMap::new();
    let mut client = Client::connect(proxy.listener);
    for _ in 0..n {
        let r = client.get("x", "/", &[]);
        *out.entry(r.header("x-upstream").unwrap_or("none").to_string())
            .or_insert(0) += 1;
    }
    Some(out)
}

/// Asserts the shares (fraction of `n`) on Courier, and that Envoy's agree.
fn check(cluster: &str, want: &[(&str, f64)]) {
    const N: usize = 1000;
    let courier = shares(|b| Some(Courier::start(b)), cluster, N).expect("courier ran");
    let envoy = shares(Courier::start_envoy, cluster, N);
    for (name, share) in want {
        let got = *courier.get(*name).unwrap_or(&0) as f64 / N as f64;
        assert!(
            (got - share).abs() < 0.06,
            "courier: {name} got {got}, want {share}: {courier:?}"
        );
        if let Some(envoy) = &envoy {
            let e = *envoy.get(*name).unwrap_or(&0) as f64 / N as f64;
            assert!((got - e).abs() < 0.08, "{name}: courier {got}, envoy {e}");
        }
    }
}

#[test]
fn a_half_healthy_priority_keeps_seventy_percent() {
    let (a, x, b) = (
        Upstream::start("a"),
        Upstream::start("x"),
        Upstream::start("b"),
    );
    let c = cluster_with_priorities(&[
        (a.addr, 0, "HEALTHY"),
        (x.addr, 0, "UNHEALTHY"),
        (b.addr, 1, ""),
    ]);
    // 1.4 x 50% healthy = 70% stays on priority 0; 30% spills to priority 1.
    check(&c, &[("a", 0.7), ("b", 0.3), ("x", 0.0)]);
}

#[test]
fn healthy_hosts_of_a_lower_priority_come_before_degraded_ones() {
    let (a, b) = (Upstream::start("a"), Upstream::start("b"));
    let c = cluster_with_priorities(&[(a.addr, 0, "DEGRADED"), (b.addr, 1, "HEALTHY")]);
    check(&c, &[("a", 0.0), ("b", 1.0)]);
}

#[test]
fn total_panic_spreads_by_host_count() {
    let (a1, a2, b) = (
        Upstream::start("a"),
        Upstream::start("a"),
        Upstream::start("b"),
    );
    let c = cluster_with_priorities(&[
        (a1.addr, 0, "UNHEALTHY"),
        (a2.addr, 0, "UNHEALTHY"),
        (b.addr, 1, "UNHEALTHY"),
    ]);
    check(&c, &[("a", 0.67), ("b", 0.33)]);
}
