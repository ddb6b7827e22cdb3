//! The `omit_canary_hosts` retry host predicate: a retry avoids the endpoints whose
//! `envoy.lb` metadata says `canary: true` (within `host_selection_retry_max_attempts`),
//! on Courier as on Envoy 1.40 (when `envoy` is on PATH). As Envoy, the predicate plays
//! no part in a first attempt.

mod http_support;

use std::collections::BTreeMap;

use http_support::*;

/// Over 90 requests: (attempt count, host) -> responses. A canary that refuses
/// connections fails first attempts; their retries land on the other canary or the
/// stable host.
fn run(
    start: impl Fn(&str) -> Option<Courier>,
    predicate: bool,
) -> Option<BTreeMap<(String, String), usize>> {
    let (canary, stable) = (Upstream::start("canary"), Upstream::start("stable"));
    let dead = refusing_addr();
    let predicates = if predicate {
        "                    host_selection_retry_max_attempts: 20\n                    retry_host_predicate:\n                    - name: envoy.retry_host_predicates.omit_canary_hosts\n                      typed_config: { \"@type\": type.googleapis.com/envoy.extensions.retry.host.omit_canary_hosts.v3.OmitCanaryHostsPredicate }\n"
    } else {
        ""
    };
    let routes = format!(
        "            name: local\n            virtual_hosts:\n            - name: main\n              domains: [\"*\"]\n              include_attempt_count_in_response: true\n              routes:\n              - match: {{ prefix: \"/\" }}\n                route:\n                  cluster: c\n                  retry_policy:\n                    retry_on: connect-failure\n                    num_retries: 1\n                    retry_back_off: {{ base_interval: 0.001s }}\n{predicates}"
    );
    let endpoint = |addr: std::net::SocketAddr, canary: bool| {
        let meta = if canary {
            "\n          metadata: { filter_metadata: { envoy.lb: { canary: true } } }"
        } else {
            ""
        };
        format!(
            "\n        - endpoint: {{ address: {{ socket_address: {{ address: 127.0.0.1, port_value: {} }} }} }}{meta}",
            addr.port()
        )
    };
    let cluster = format!(
        "  - name: c\n    type: STATIC\n    connect_timeout: 1s\n    load_assignment:\n      cluster_name: c\n      endpoints:\n      - lb_endpoints:{}{}{}\n",
        endpoint(dead, true),
        endpoint(canary.addr, true),
        endpoint(stable.addr, false)
    );
    let proxy = start(&bootstrap(&routes, "", &cluster))?;
    let mut out = BTreeMap::new();
    for _ in 0..90 {
        let r = get(proxy.listener, "x", "/", &[]);
        let key = (
            r.header("x-envoy-attempt-count").unwrap_or("-").to_string(),
            r.header("x-upstream").unwrap_or("none").to_string(),
        );
        *out.entry(key).or_insert(0) += 1;
    }
    Some(out)
}

fn retried_to_canary(r: &BTreeMap<(String, String), usize>) -> usize {
    r.get(&("2".to_string(), "canary".to_string()))
        .copied()
        .unwrap_or(0)
}

#[test]
fn retries_avoid_canary_hosts_as_envoy() {
    let with = run(|b| Some(Courier::start(b)), true).expect("courier ran");
    assert_eq!(retried_to_canary(&with), 0, "{with:?}");
    let without = run(|b| Some(Courier::start(b)), false).expect("courier ran");
    assert!(retried_to_canary(&without) > 0, "{without:?}");
    if let Some(envoy) = run(Courier::start_envoy, true) {
        assert_eq!(retried_to_canary(&envoy), 0, "{envoy:?}");
    }
}
