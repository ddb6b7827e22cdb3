//! The local rate limit filter's descriptors: route and virtual host `rate_limits`
//! actions (request headers, `skip_if_absent`, header value match, destination and source
//! cluster, remote and masked remote address, generic keys), the filter's own
//! `rate_limits`, `stage`, `vh_rate_limits`, `include_vh_rate_limits`,
//! `always_consume_default_token_bucket` and `x-ratelimit-*` headers reporting the bucket
//! that decided; wildcard descriptors (a bucket per request value, the least recently
//! used forgotten past `max_dynamic_descriptors`). Each case runs through Courier and, when `envoy` is on PATH, through
//! Envoy 1.40; the two must agree. Buckets refill once an hour: nothing depends on timing.

mod http_support;

use std::sync::atomic::Ordering;

use http_support::*;

const LRL: &str =
    "type.googleapis.com/envoy.extensions.filters.http.local_ratelimit.v3.LocalRateLimit";

fn routes() -> String {
    format!(
        r#"            name: local
            virtual_hosts:
            - name: main
              domains: ["*"]
              rate_limits:
              - actions: [{{ request_headers: {{ header_name: x-client, descriptor_key: client }} }}]
              routes:
              - match: {{ prefix: "/hdr" }}
                route: {{ cluster: a }}
              - match: {{ prefix: "/admin" }}
                route:
                  cluster: a
                  rate_limits:
                  - actions:
                    - header_value_match:
                        descriptor_value: admin
                        headers: [{{ name: x-admin, string_match: {{ exact: "yes" }} }}]
              - match: {{ prefix: "/dest" }}
                route:
                  cluster: a
                  include_vh_rate_limits: true
                  rate_limits:
                  - actions: [{{ destination_cluster: {{}} }}, {{ source_cluster: {{}} }}]
              - match: {{ prefix: "/masked" }}
                route:
                  cluster: a
                  rate_limits:
                  - actions: [{{ masked_remote_address: {{ v4_prefix_mask_len: 8 }} }}]
              - match: {{ prefix: "/skip" }}
                route:
                  cluster: a
                  rate_limits:
                  - actions:
                    - request_headers: {{ header_name: x-a, descriptor_key: a, skip_if_absent: true }}
                    - generic_key: {{ descriptor_key: k, descriptor_value: v1 }}
              - match: {{ prefix: "/remote" }}
                route:
                  cluster: a
                  rate_limits:
                  - {{ stage: 1, actions: [{{ remote_address: {{}} }}] }}
                  - actions: [{{ generic_key: {{ descriptor_value: stage0 }} }}]
                  - {{ stage: 1, disable_key: dk, actions: [{{ generic_key: {{ descriptor_value: disabled }} }}] }}
                typed_per_filter_config:
                  envoy.filters.http.local_ratelimit:
                    "@type": {LRL}
                    stat_prefix: route_rl
                    token_bucket: {{ max_tokens: 1, tokens_per_fill: 1, fill_interval: 3600s }}
                    filter_enabled: {{ default_value: {{ numerator: 100 }} }}
                    filter_enforced: {{ default_value: {{ numerator: 100 }} }}
                    enable_x_ratelimit_headers: DRAFT_VERSION_03
                    stage: 1
                    always_consume_default_token_bucket: false
                    descriptors:
                    - entries: [{{ key: remote_address, value: 127.0.0.1 }}]
                      token_bucket: {{ max_tokens: 2, tokens_per_fill: 1, fill_interval: 3600s }}
                    - entries: [{{ key: generic_key, value: stage0 }}]
                      token_bucket: {{ max_tokens: 1, tokens_per_fill: 1, fill_interval: 3600s }}
                    - entries: [{{ key: generic_key, value: disabled }}]
                      token_bucket: {{ max_tokens: 1, tokens_per_fill: 1, fill_interval: 3600s }}
              - match: {{ prefix: "/ignore" }}
                route: {{ cluster: a }}
                typed_per_filter_config:
                  envoy.filters.http.local_ratelimit:
                    "@type": {LRL}
                    stat_prefix: ignore_rl
                    token_bucket: {{ max_tokens: 2, tokens_per_fill: 1, fill_interval: 3600s }}
                    filter_enabled: {{ default_value: {{ numerator: 100 }} }}
                    filter_enforced: {{ default_value: {{ numerator: 100 }} }}
                    vh_rate_limits: IGNORE
                    descriptors:
                    - entries: [{{ key: client, value: carol }}]
                      token_bucket: {{ max_tokens: 1, tokens_per_fill: 1, fill_interval: 3600s }}
              - match: {{ prefix: "/direct" }}
                direct_response: {{ status: 200, body: {{ inline_string: "d" }} }}
"#
    )
}

fn filters() -> String {
    format!(
        r#"          - name: envoy.filters.http.local_ratelimit
            typed_config:
              "@type": {LRL}
              stat_prefix: filter_rl
              token_bucket: {{ max_tokens: 30, tokens_per_fill: 1, fill_interval: 3600s }}
              filter_enabled: {{ default_value: {{ numerator: 100 }} }}
              filter_enforced: {{ default_value: {{ numerator: 100 }} }}
              enable_x_ratelimit_headers: DRAFT_VERSION_03
              descriptors:
              - entries: [{{ key: client, value: alice }}]
                token_bucket: {{ max_tokens: 2, tokens_per_fill: 1, fill_interval: 3600s }}
              - entries: [{{ key: client, value: bob }}]
                token_bucket: {{ max_tokens: 1, tokens_per_fill: 1, fill_interval: 3600s }}
              - entries: [{{ key: client, value: carol }}]
                token_bucket: {{ max_tokens: 1, tokens_per_fill: 1, fill_interval: 3600s }}
              - entries: [{{ key: header_match, value: admin }}]
                token_bucket: {{ max_tokens: 1, tokens_per_fill: 1, fill_interval: 3600s }}
              - entries: [{{ key: destination_cluster, value: a }}, {{ key: source_cluster, value: edge }}]
                token_bucket: {{ max_tokens: 3, tokens_per_fill: 1, fill_interval: 3600s }}
              - entries: [{{ key: masked_remote_address, value: 127.0.0.0/8 }}]
                token_bucket: {{ max_tokens: 1, tokens_per_fill: 1, fill_interval: 3600s }}
              - entries: [{{ key: k, value: v1 }}]
                token_bucket: {{ max_tokens: 1, tokens_per_fill: 1, fill_interval: 7200s }}
          - name: second
            typed_config:
              "@type": {LRL}
              stat_prefix: second_rl
              filter_enabled: {{ default_value: {{ numerator: 100 }} }}
              filter_enforced: {{ default_value: {{ numerator: 100 }} }}
              status: {{ code: 503 }}
              rate_limits:
              - actions: [{{ request_headers: {{ header_name: x-own, descriptor_key: own }} }}]
              descriptors:
              - entries: [{{ key: own, value: "1" }}]
                token_bucket: {{ max_tokens: 1, tokens_per_fill: 1, fill_interval: 3600s }}
"#
    )
}

fn boot(a: &Upstream) -> String {
    format!(
        "node: {{ id: node1, cluster: edge }}\n{}",
        with_filters(
            &bootstrap(&routes(), "", &cluster("a", &[a.addr], "")),
            &filters()
        )
    )
}

/// A labelled request: its path and headers.
type Case<'a> = (&'a str, &'a str, &'a [(&'a str, &'a str)]);

fn run(proxy: &Courier, a: &Upstream) -> Vec<String> {
    let mut out = Vec::new();
    let cases: &[Case] = &[
        ("alice 1", "/hdr", &[("x-client", "alice")]),
        ("alice 2", "/hdr", &[("x-client", "alice")]),
        ("alice 3", "/hdr", &[("x-client", "alice")]),
        ("bob 1", "/hdr", &[("x-client", "bob")]),
        ("bob 2", "/hdr", &[("x-client", "bob")]),
        ("nobody", "/hdr", &[]),
        (
            "dave (no descriptor of its own)",
            "/hdr",
            &[("x-client", "dave")],
        ),
        (
            "admin 1",
            "/admin",
            &[("x-admin", "yes"), ("x-client", "bob")],
        ),
        ("admin 2", "/admin", &[("x-admin", "yes")]),
        ("not admin", "/admin", &[("x-admin", "no")]),
        ("dest 1", "/dest", &[]),
        ("dest 2 and alice", "/dest", &[("x-client", "alice")]),
        ("dest 3", "/dest", &[]),
        ("dest 4", "/dest", &[]),
        ("masked 1", "/masked", &[]),
        ("masked 2", "/masked", &[]),
        ("skip 1", "/skip", &[]),
        ("skip 2", "/skip", &[]),
        ("skip with x-a", "/skip", &[("x-a", "z")]),
        ("remote 1", "/remote", &[]),
        ("remote 2", "/remote", &[]),
        ("remote 3", "/remote", &[]),
        ("ignore carol 1", "/ignore", &[("x-client", "carol")]),
        ("ignore carol 2", "/ignore", &[("x-client", "carol")]),
        ("ignore carol 3", "/ignore", &[("x-client", "carol")]),
        ("own 1", "/hdr", &[("x-own", "1")]),
        ("own 2", "/hdr", &[("x-own", "1")]),
        ("direct", "/direct", &[("x-client", "bob")]),
    ];
    for (label, path, headers) in cases {
        let before = a.requests.load(Ordering::SeqCst);
        let r = get(proxy.listener, "h", path, headers);
        let reached = a.requests.load(Ordering::SeqCst) - before;
        let shown: Vec<String> = [
            "x-ratelimit-limit",
            "x-ratelimit-remaining",
            "x-ratelimit-reset",
        ]
        .iter()
        .filter_map(|n| r.header(n).map(str::to_string))
        .collect();
        out.push(format!(
            "{label}: {} {:?} rl={} upstream={reached}",
            r.status,
            r.body_str(),
            shown.join("/")
        ));
    }
    out.extend(local_rate_limit_counters(
        proxy,
        &["filter_rl", "route_rl", "ignore_rl", "second_rl"],
    ));
    out
}

#[test]
fn descriptors_and_actions_match_envoy() {
    let a = Upstream::start("a");
    let got = run(&Courier::start(&boot(&a)), &a);
    let a = Upstream::start("a");
    match Courier::start_envoy(&boot(&a)) {
        Some(envoy) => assert_eq!(run(&envoy, &a), got, "envoy vs courier"),
        None => eprintln!("envoy not on PATH: skipping the descriptors differential"),
    }
    assert_eq!(
        got,
        [
            "alice 1: 200 \"a GET /hdr\" rl=2/1/0 upstream=1",
            "alice 2: 200 \"a GET /hdr\" rl=2/0/3600 upstream=1",
            "alice 3: 429 \"local_rate_limited\" rl=2/0/3600 upstream=0",
            "bob 1: 200 \"a GET /hdr\" rl=1/0/3600 upstream=1",
            "bob 2: 429 \"local_rate_limited\" rl=1/0/3600 upstream=0",
            "nobody: 200 \"a GET /hdr\" rl=30/26/0 upstream=1",
            "dave (no descriptor of its own): 200 \"a GET /hdr\" rl=30/25/0 upstream=1",
            "admin 1: 200 \"a GET /admin\" rl=1/0/3600 upstream=1",
            "admin 2: 429 \"local_rate_limited\" rl=1/0/3600 upstream=0",
            "not admin: 200 \"a GET /admin\" rl=30/23/0 upstream=1",
            "dest 1: 200 \"a GET /dest\" rl=3/2/0 upstream=1",
            "dest 2 and alice: 429 \"local_rate_limited\" rl=2/0/3600 upstream=0",
            "dest 3: 200 \"a GET /dest\" rl=3/0/3600 upstream=1",
            "dest 4: 429 \"local_rate_limited\" rl=3/0/3600 upstream=0",
            "masked 1: 200 \"a GET /masked\" rl=1/0/3600 upstream=1",
            "masked 2: 429 \"local_rate_limited\" rl=1/0/3600 upstream=0",
            "skip 1: 200 \"a GET /skip\" rl=1/0/7200 upstream=1",
            "skip 2: 429 \"local_rate_limited\" rl=1/0/7200 upstream=0",
            "skip with x-a: 200 \"a GET /skip\" rl=30/18/0 upstream=1",
            "remote 1: 200 \"a GET /remote\" rl=2/1/0 upstream=1",
            "remote 2: 200 \"a GET /remote\" rl=2/0/3600 upstream=1",
            "remote 3: 429 \"local_rate_limited\" rl=2/0/3600 upstream=0",
            "ignore carol 1: 200 \"a GET /ignore\" rl= upstream=1",
            "ignore carol 2: 200 \"a GET /ignore\" rl= upstream=1",
            "ignore carol 3: 429 \"local_rate_limited\" rl= upstream=0",
            "own 1: 200 \"a GET /hdr\" rl=30/17/0 upstream=1",
            "own 2: 503 \"local_rate_limited\" rl=30/16/0 upstream=0",
            "direct: 200 \"d\" rl=30/15/0 upstream=0",
            "filter_rl: enabled=22 ok=15 rate_limited=7 enforced=7",
            "route_rl: enabled=3 ok=2 rate_limited=1 enforced=1",
            "ignore_rl: enabled=3 ok=2 rate_limited=1 enforced=1",
            "second_rl: enabled=19 ok=18 rate_limited=1 enforced=1",
        ]
    );
}

fn wildcard_boot(a: &Upstream) -> String {
    let routes = format!(
        r#"            name: local
            virtual_hosts:
            - name: main
              domains: ["*"]
              routes:
              - match: {{ prefix: "/lru" }}
                route: {{ cluster: a }}
                typed_per_filter_config:
                  envoy.filters.http.local_ratelimit:
                    "@type": {LRL}
                    stat_prefix: lru_rl
                    filter_enabled: {{ default_value: {{ numerator: 100 }} }}
                    filter_enforced: {{ default_value: {{ numerator: 100 }} }}
                    token_bucket: {{ max_tokens: 100, tokens_per_fill: 1, fill_interval: 3600s }}
                    enable_x_ratelimit_headers: DRAFT_VERSION_03
                    max_dynamic_descriptors: 2
                    rate_limits:
                    - actions: [{{ request_headers: {{ header_name: x-user, descriptor_key: user }} }}]
                    descriptors:
                    - entries: [{{ key: user }}]
                      token_bucket: {{ max_tokens: 1, tokens_per_fill: 1, fill_interval: 3600s }}
              - match: {{ prefix: "/" }}
                route: {{ cluster: a }}
"#
    );
    let filters = format!(
        r#"          - name: envoy.filters.http.local_ratelimit
            typed_config:
              "@type": {LRL}
              stat_prefix: wild_rl
              token_bucket: {{ max_tokens: 100, tokens_per_fill: 1, fill_interval: 3600s }}
              filter_enabled: {{ default_value: {{ numerator: 100 }} }}
              filter_enforced: {{ default_value: {{ numerator: 100 }} }}
              enable_x_ratelimit_headers: DRAFT_VERSION_03
              always_consume_default_token_bucket: false
              rate_limits:
              - actions: [{{ request_headers: {{ header_name: x-user, descriptor_key: user }} }}]
              - actions:
                - request_headers: {{ header_name: x-tenant, descriptor_key: tenant }}
                - request_headers: {{ header_name: x-user, descriptor_key: user }}
              descriptors:
              - entries: [{{ key: user }}]
                token_bucket: {{ max_tokens: 2, tokens_per_fill: 1, fill_interval: 3600s }}
              - entries: [{{ key: user, value: vip }}]
                token_bucket: {{ max_tokens: 4, tokens_per_fill: 1, fill_interval: 3600s }}
              - entries: [{{ key: tenant, value: t1 }}, {{ key: user }}]
                token_bucket: {{ max_tokens: 1, tokens_per_fill: 1, fill_interval: 7200s }}
"#
    );
    with_filters(
        &bootstrap(&routes, "", &cluster("a", &[a.addr], "")),
        &filters,
    )
}

fn run_wildcards(proxy: &Courier, a: &Upstream) -> Vec<String> {
    let cases: &[Case] = &[
        ("ann 1", "/", &[("x-user", "ann")]),
        ("ann 2", "/", &[("x-user", "ann")]),
        ("ann 3", "/", &[("x-user", "ann")]),
        ("ben 1", "/", &[("x-user", "ben")]),
        ("ben 2", "/", &[("x-user", "ben")]),
        ("ben 3", "/", &[("x-user", "ben")]),
        ("vip 1 (exact first)", "/", &[("x-user", "vip")]),
        ("vip 2", "/", &[("x-user", "vip")]),
        ("vip 3", "/", &[("x-user", "vip")]),
        ("nobody", "/", &[]),
        ("t1 cid 1", "/", &[("x-user", "cid"), ("x-tenant", "t1")]),
        ("t1 cid 2", "/", &[("x-user", "cid"), ("x-tenant", "t1")]),
        (
            "t2 cid (no wildcard)",
            "/",
            &[("x-user", "cid"), ("x-tenant", "t2")],
        ),
        ("t1 dan 1", "/", &[("x-user", "dan"), ("x-tenant", "t1")]),
        ("lru a 1", "/lru", &[("x-user", "a")]),
        ("lru a 2", "/lru", &[("x-user", "a")]),
        ("lru b 1", "/lru", &[("x-user", "b")]),
        ("lru a 3", "/lru", &[("x-user", "a")]),
        ("lru c 1 (forgets b)", "/lru", &[("x-user", "c")]),
        ("lru a 4 (kept)", "/lru", &[("x-user", "a")]),
        ("lru b 2 (full again)", "/lru", &[("x-user", "b")]),
        ("lru b 3", "/lru", &[("x-user", "b")]),
    ];
    let mut out = Vec::new();
    for (label, path, headers) in cases {
        let before = a.requests.load(Ordering::SeqCst);
        let r = get(proxy.listener, "h", path, headers);
        let reached = a.requests.load(Ordering::SeqCst) - before;
        let shown: Vec<String> = ["x-ratelimit-limit", "x-ratelimit-remaining"]
            .iter()
            .filter_map(|n| r.header(n).map(str::to_string))
            .collect();
        out.push(format!(
            "{label}: {} rl={} upstream={reached}",
            r.status,
            shown.join("/")
        ));
    }
    out.extend(local_rate_limit_counters(proxy, &["wild_rl", "lru_rl"]));
    out
}

#[test]
fn wildcard_descriptors_match_envoy() {
    let a = Upstream::start("a");
    let got = run_wildcards(&Courier::start(&wildcard_boot(&a)), &a);
    let a = Upstream::start("a");
    match Courier::start_envoy(&wildcard_boot(&a)) {
        Some(envoy) => assert_eq!(run_wildcards(&envoy, &a), got, "envoy vs courier"),
        None => eprintln!("envoy not on PATH: skipping the wildcard differential"),
    }
    assert_eq!(
        got,
        [
            "ann 1: 200 rl=2/1 upstream=1",
            "ann 2: 200 rl=2/0 upstream=1",
            "ann 3: 429 rl=2/0 upstream=0",
            "ben 1: 200 rl=2/1 upstream=1",
            "ben 2: 200 rl=2/0 upstream=1",
            "ben 3: 429 rl=2/0 upstream=0",
            "vip 1 (exact first): 200 rl=4/3 upstream=1",
            "vip 2: 200 rl=4/2 upstream=1",
            "vip 3: 200 rl=4/1 upstream=1",
            "nobody: 200 rl=100/99 upstream=1",
            "t1 cid 1: 200 rl=1/0 upstream=1",
            "t1 cid 2: 429 rl=1/0 upstream=0",
            "t2 cid (no wildcard): 200 rl=2/0 upstream=1",
            "t1 dan 1: 200 rl=1/0 upstream=1",
            "lru a 1: 200 rl=1/0 upstream=1",
            "lru a 2: 429 rl=1/0 upstream=0",
            "lru b 1: 200 rl=1/0 upstream=1",
            "lru a 3: 429 rl=1/0 upstream=0",
            "lru c 1 (forgets b): 200 rl=1/0 upstream=1",
            "lru a 4 (kept): 429 rl=1/0 upstream=0",
            "lru b 2 (full again): 200 rl=1/0 upstream=1",
            "lru b 3: 429 rl=1/0 upstream=0",
            "wild_rl: enabled=14 ok=11 rate_limited=3 enforced=3",
            "lru_rl: enabled=8 ok=4 rate_limited=4 enforced=4",
        ]
    );
}

/// What Envoy 1.40 has but Courier does not compute is refused by its path.
#[test]
fn what_is_not_built_is_refused_by_path() {
    let a = Upstream::start("a");
    let base = boot(&a);
    assert_refused_by_path(
        &base,
        &[
            (
                "{ masked_remote_address: { v4_prefix_mask_len: 8 } }",
                "{ query_parameters: { query_parameter_name: q, descriptor_key: q } }",
                "rate_limits[0].actions[0].query_parameters",
            ),
            (
                "{ generic_key: { descriptor_value: stage0 } }",
                "{ metadata: { descriptor_key: m, metadata_key: { key: k, path: [{ key: p }] } } }",
                "rate_limits[1].actions[0].metadata",
            ),
            (
                "- actions: [{ destination_cluster: {} }, { source_cluster: {} }]",
                "- { hits_addend: { number: 2 }, actions: [{ destination_cluster: {} }] }",
                "rate_limits[0].hits_addend",
            ),
        ],
    );
}
