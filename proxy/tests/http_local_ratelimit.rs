//! The local rate limit filter (`envoy.filters.http.local_ratelimit`): the filter's own
//! token bucket, per-route ones, shadow mode, per-connection buckets, `x-ratelimit-*`
//! headers and gRPC refusals. Each case runs through Courier and, when `envoy` is on PATH,
//! through Envoy 1.40; the two must agree. Buckets refill slowly (one token per 60 s) so
//! that no case depends on timing.

mod http_support;

use std::sync::atomic::Ordering;

use http_support::*;

const ROUTES: &str = r#"            name: local
            virtual_hosts:
            - name: main
              domains: ["*"]
              response_headers_to_add: [{ header: { key: x-vh, value: "1" } }]
              routes:
              - match: { prefix: "/route" }
                route: { cluster: a }
                typed_per_filter_config:
                  envoy.filters.http.local_ratelimit:
                    "@type": type.googleapis.com/envoy.extensions.filters.http.local_ratelimit.v3.LocalRateLimit
                    stat_prefix: route_rl
                    token_bucket: { max_tokens: 2, tokens_per_fill: 1, fill_interval: 60s }
                    filter_enabled: { default_value: { numerator: 100 } }
                    filter_enforced: { default_value: { numerator: 100 } }
                    status: { code: 403 }
                    response_headers_to_add: [{ header: { key: x-limited, value: "yes" } }]
                    enable_x_ratelimit_headers: DRAFT_VERSION_03
                    enable_retry_after_header: true
              - match: { prefix: "/shadow" }
                route: { cluster: a }
                typed_per_filter_config:
                  envoy.filters.http.local_ratelimit:
                    "@type": type.googleapis.com/envoy.extensions.filters.http.local_ratelimit.v3.LocalRateLimit
                    stat_prefix: shadow_rl
                    token_bucket: { max_tokens: 1, tokens_per_fill: 1, fill_interval: 60s }
                    filter_enabled: { default_value: { numerator: 100 } }
                    request_headers_to_add_when_not_enforced: [{ header: { key: x-would-limit, value: "yes" } }]
              - match: { prefix: "/per-connection" }
                route: { cluster: a }
                typed_per_filter_config:
                  envoy.filters.http.local_ratelimit:
                    "@type": type.googleapis.com/envoy.extensions.filters.http.local_ratelimit.v3.LocalRateLimit
                    stat_prefix: conn_rl
                    token_bucket: { max_tokens: 1, tokens_per_fill: 1, fill_interval: 60s }
                    filter_enabled: { default_value: { numerator: 100 } }
                    filter_enforced: { default_value: { numerator: 100 } }
                    local_rate_limit_per_downstream_connection: true
              - match: { prefix: "/grpc" }
                route: { cluster: a }
                typed_per_filter_config:
                  envoy.filters.http.local_ratelimit:
                    "@type": type.googleapis.com/envoy.extensions.filters.http.local_ratelimit.v3.LocalRateLimit
                    stat_prefix: grpc_rl
                    token_bucket: { max_tokens: 1, tokens_per_fill: 1, fill_interval: 60s }
                    filter_enabled: { default_value: { numerator: 100 } }
                    filter_enforced: { default_value: { numerator: 100 } }
                    rate_limited_as_resource_exhausted: true
              - match: { prefix: "/off" }
                route: { cluster: a }
                typed_per_filter_config:
                  envoy.filters.http.local_ratelimit:
                    "@type": type.googleapis.com/envoy.extensions.filters.http.local_ratelimit.v3.LocalRateLimit
                    stat_prefix: off_rl
                    token_bucket: { max_tokens: 1, tokens_per_fill: 1, fill_interval: 60s }
              - match: { prefix: "/direct" }
                direct_response: { status: 200, body: { inline_string: "d" } }
              - match: { prefix: "/" }
                route: { cluster: a }
"#;

/// The filter's own bucket: two tokens, answered `503` past them.
const FILTER: &str = "          - name: envoy.filters.http.local_ratelimit\n            typed_config:\n              \"@type\": type.googleapis.com/envoy.extensions.filters.http.local_ratelimit.v3.LocalRateLimit\n              stat_prefix: filter_rl\n              token_bucket: { max_tokens: 2, tokens_per_fill: 1, fill_interval: 60s }\n              filter_enabled: { default_value: { numerator: 100 } }\n              filter_enforced: { default_value: { numerator: 100 } }\n              status: { code: 503 }\n";

fn boot(a: &Upstream) -> String {
    with_filters(&bootstrap(ROUTES, "", &cluster("a", &[a.addr], "")), FILTER)
}

/// Each request (on a fresh connection unless it says `same`) as status, body, the
/// interesting headers, and what the upstream saw; then the counters.
fn run(proxy: &Courier, a: &Upstream) -> Vec<String> {
    const GRPC: (&str, &str) = ("content-type", "application/grpc");
    let mut out = Vec::new();
    let mut show = |label: &str, r: Resp, before: usize| {
        let reached = a.requests.load(Ordering::SeqCst) - before;
        let marked = a
            .last()
            .and_then(|s| s.header("x-would-limit").map(str::to_string));
        let shown: Vec<String> = [
            "x-ratelimit-limit",
            "x-ratelimit-remaining",
            "x-ratelimit-reset",
            "retry-after",
            "x-limited",
            "x-vh",
            "grpc-status",
            "grpc-message",
        ]
        .iter()
        .filter_map(|n| r.header(n).map(|v| format!("{n}: {v}")))
        .collect();
        out.push(format!(
            "{label}: {} {:?} {shown:?} upstream={reached} marked={marked:?}",
            r.status,
            r.body_str()
        ));
    };
    for (label, path, headers) in [
        ("filter 1", "/x", &[][..]),
        ("filter 2", "/x", &[][..]),
        ("filter 3", "/x", &[][..]),
        ("direct response", "/direct", &[][..]),
        ("route 1", "/route", &[][..]),
        ("route 2", "/route", &[][..]),
        ("route 3", "/route", &[][..]),
        ("shadow 1", "/shadow", &[][..]),
        ("shadow 2", "/shadow", &[][..]),
        ("grpc 1", "/grpc", &[GRPC][..]),
        ("grpc 2", "/grpc", &[GRPC][..]),
        ("off 1", "/off", &[][..]),
        ("off 2", "/off", &[][..]),
    ] {
        let before = a.requests.load(Ordering::SeqCst);
        let r = get(proxy.listener, "h", path, headers);
        show(label, r, before);
    }
    // One connection's bucket, then another's.
    let mut c = Client::connect(proxy.listener);
    for label in ["connection 1, request 1", "connection 1, request 2"] {
        let before = a.requests.load(Ordering::SeqCst);
        let r = c.get("h", "/per-connection", &[]);
        show(label, r, before);
    }
    let before = a.requests.load(Ordering::SeqCst);
    let r = get(proxy.listener, "h", "/per-connection", &[]);
    show("connection 2", r, before);
    out.extend(local_rate_limit_counters(
        proxy,
        &["filter_rl", "route_rl", "shadow_rl", "conn_rl"],
    ));
    out
}

#[test]
fn local_rate_limits_match_envoy() {
    let a = Upstream::start("a");
    let got = run(&Courier::start(&boot(&a)), &a);
    let a = Upstream::start("a");
    match Courier::start_envoy(&boot(&a)) {
        Some(envoy) => assert_eq!(run(&envoy, &a), got, "envoy vs courier"),
        None => eprintln!("envoy not on PATH: skipping the local rate limit differential"),
    }
    assert_eq!(
        got,
        [
            "filter 1: 200 \"a GET /x\" [\"x-vh: 1\"] upstream=1 marked=None",
            "filter 2: 200 \"a GET /x\" [\"x-vh: 1\"] upstream=1 marked=None",
            "filter 3: 503 \"local_rate_limited\" [\"x-vh: 1\"] upstream=0 marked=None",
            "direct response: 503 \"local_rate_limited\" [] upstream=0 marked=None",
            "route 1: 200 \"a GET /route\" [\"x-ratelimit-limit: 2\", \"x-ratelimit-remaining: 1\", \"x-ratelimit-reset: 0\", \"x-vh: 1\"] upstream=1 marked=None",
            "route 2: 200 \"a GET /route\" [\"x-ratelimit-limit: 2\", \"x-ratelimit-remaining: 0\", \"x-ratelimit-reset: 60\", \"x-vh: 1\"] upstream=1 marked=None",
            "route 3: 403 \"local_rate_limited\" [\"x-ratelimit-limit: 2\", \"x-ratelimit-remaining: 0\", \"x-ratelimit-reset: 60\", \"x-limited: yes\", \"x-vh: 1\"] upstream=0 marked=None",
            "shadow 1: 200 \"a GET /shadow\" [\"x-vh: 1\"] upstream=1 marked=None",
            "shadow 2: 200 \"a GET /shadow\" [\"x-vh: 1\"] upstream=1 marked=Some(\"yes\")",
            "grpc 1: 200 \"a GET /grpc\" [\"x-vh: 1\"] upstream=1 marked=None",
            "grpc 2: 200 \"\" [\"x-vh: 1\", \"grpc-status: 8\", \"grpc-message: local_rate_limited\"] upstream=0 marked=None",
            "off 1: 200 \"a GET /off\" [\"x-vh: 1\"] upstream=1 marked=None",
            "off 2: 200 \"a GET /off\" [\"x-vh: 1\"] upstream=1 marked=None",
            "connection 1, request 1: 200 \"a GET /per-connection\" [\"x-vh: 1\"] upstream=1 marked=None",
            "connection 1, request 2: 429 \"local_rate_limited\" [\"x-vh: 1\"] upstream=0 marked=None",
            "connection 2: 200 \"a GET /per-connection\" [\"x-vh: 1\"] upstream=1 marked=None",
            "filter_rl: enabled=4 ok=2 rate_limited=2 enforced=2",
            "route_rl: enabled=3 ok=2 rate_limited=1 enforced=1",
            "shadow_rl: enabled=2 ok=1 rate_limited=1 enforced=0",
            "conn_rl: enabled=3 ok=2 rate_limited=1 enforced=1",
        ]
    );
}
