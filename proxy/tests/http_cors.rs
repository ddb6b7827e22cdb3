//! The CORS filter (`envoy.filters.http.cors`): preflights answered by the proxy, CORS
//! headers on responses to allowed origins, policies from `typed_per_filter_config` and
//! the deprecated `cors` fields. Each case runs through Courier and, when `envoy` is on
//! PATH, through Envoy 1.40; the two must agree.

mod http_support;

use std::sync::atomic::Ordering;

use http_support::*;

/// The virtual host's policy, then routes that refine it.
const ROUTES: &str = r#"            name: local
            response_headers_to_add: [{ header: { key: x-rc, value: "1" } }]
            virtual_hosts:
            - name: main
              domains: ["*"]
              VH_POLICY
              response_headers_to_add: [{ header: { key: x-vh, value: "1" } }]
              routes:
              - match: { prefix: "/route-policy" }
                route: { cluster: a }
                typed_per_filter_config:
                  envoy.filters.http.cors:
                    "@type": type.googleapis.com/envoy.extensions.filters.http.cors.v3.CorsPolicy
                    allow_methods: "*"
                    allow_headers: "*"
                    allow_credentials: false
                    forward_not_matching_preflights: false
              - match: { prefix: "/off" }
                route: { cluster: a }
                typed_per_filter_config:
                  envoy.filters.http.cors:
                    "@type": type.googleapis.com/envoy.config.route.v3.FilterConfig
                    disabled: true
              - match: { prefix: "/never" }
                route: { cluster: a }
                typed_per_filter_config:
                  envoy.filters.http.cors:
                    "@type": type.googleapis.com/envoy.extensions.filters.http.cors.v3.CorsPolicy
                    filter_enabled: { default_value: { numerator: 0 } }
              - match: { prefix: "/shadow" }
                route: { cluster: a }
                typed_per_filter_config:
                  envoy.filters.http.cors:
                    "@type": type.googleapis.com/envoy.extensions.filters.http.cors.v3.CorsPolicy
                    filter_enabled: { default_value: { numerator: 0 } }
                    shadow_enabled: { default_value: { numerator: 100 } }
              - match: { prefix: "/direct" }
                direct_response: { status: 200, body: { inline_string: "d" } }
              - match: { prefix: "/dead" }
                route: { cluster: dead }
              - match: { prefix: "/" }
                route: { cluster: a }
"#;

const POLICY_FIELDS: &str = r#"allow_origin_string_match: [{ exact: "http://a.com" }, { suffix: ".b.com" }]
                allow_methods: "GET, POST"
                allow_headers: "x-foo"
                expose_headers: "x-bar"
                max_age: "600"
                allow_credentials: true"#;

fn boot(a: &Upstream, vh_policy: &str) -> String {
    let clusters = [
        cluster("a", &[a.addr], ""),
        cluster("dead", &[refusing_addr()], ""),
    ]
    .concat();
    let cors_filter = "          - name: envoy.filters.http.cors\n            typed_config: { \"@type\": type.googleapis.com/envoy.extensions.filters.http.cors.v3.Cors }\n";
    with_filters(
        &bootstrap(&ROUTES.replace("VH_POLICY", vh_policy), "", &clusters),
        cors_filter,
    )
}

/// `typed_per_filter_config` on the virtual host.
fn typed_policy() -> String {
    format!("typed_per_filter_config:\n                envoy.filters.http.cors:\n                  \"@type\": type.googleapis.com/envoy.extensions.filters.http.cors.v3.CorsPolicy\n                  {}", POLICY_FIELDS.replace("\n                ", "\n                  "))
}

/// The deprecated `cors` field of the virtual host.
fn legacy_policy() -> String {
    format!("cors:\n                {POLICY_FIELDS}")
}

/// A request: its label, method, path and headers.
type Case<'a> = (&'a str, &'a str, &'a str, &'a [(&'a str, &'a str)]);

/// Each request's status, body, `access-control-*` headers (sorted), whether it reached
/// the upstream, then the filter's counters.
fn run(proxy: &Courier, a: &Upstream) -> Vec<String> {
    const PREFLIGHT: (&str, &str) = ("access-control-request-method", "PUT");
    const ORIGIN: (&str, &str) = ("origin", "http://a.com");
    const OTHER: (&str, &str) = ("origin", "http://z.com");
    let cases: &[Case] = &[
        (
            "preflight",
            "OPTIONS",
            "/x",
            &[ORIGIN, PREFLIGHT, ("access-control-request-headers", "x-y")],
        ),
        (
            "preflight from another origin",
            "OPTIONS",
            "/x",
            &[OTHER, PREFLIGHT],
        ),
        (
            "route preflight from another origin",
            "OPTIONS",
            "/route-policy",
            &[OTHER, PREFLIGHT],
        ),
        (
            "route preflight",
            "OPTIONS",
            "/route-policy",
            &[
                ("origin", "http://x.b.com"),
                PREFLIGHT,
                ("access-control-request-headers", "x-y"),
            ],
        ),
        ("options without a method asked", "OPTIONS", "/x", &[ORIGIN]),
        ("options without origin", "OPTIONS", "/x", &[PREFLIGHT]),
        ("get", "GET", "/x", &[ORIGIN]),
        ("get from another origin", "GET", "/x", &[OTHER]),
        ("get with an empty origin", "GET", "/x", &[("origin", "")]),
        ("direct response", "GET", "/direct", &[ORIGIN]),
        ("router's reply", "GET", "/dead", &[ORIGIN]),
        ("disabled route", "GET", "/off", &[ORIGIN]),
        (
            "disabled route preflight",
            "OPTIONS",
            "/off",
            &[ORIGIN, PREFLIGHT],
        ),
        ("filter_enabled 0", "GET", "/never", &[ORIGIN]),
        ("shadow_enabled", "GET", "/shadow", &[ORIGIN]),
        (
            "shadow_enabled preflight",
            "OPTIONS",
            "/shadow",
            &[ORIGIN, PREFLIGHT],
        ),
    ];
    let mut out = Vec::new();
    for (label, method, path, headers) in cases {
        let before = a.requests.load(Ordering::SeqCst);
        let r = Client::connect(proxy.listener).request(method, "h", path, headers, b"");
        let upstream = a.requests.load(Ordering::SeqCst) - before;
        let mut cors: Vec<String> = r
            .headers
            .iter()
            .filter(|(k, _)| {
                k.starts_with("access-control-") || k.starts_with("x-vh") || k == "content-length"
            })
            .map(|(k, v)| format!("{k}: {v}"))
            .collect();
        cors.sort();
        out.push(format!(
            "{label}: {} {:?} upstream={upstream} {cors:?}",
            r.status,
            r.body_str()
        ));
    }
    for c in ["origin_valid", "origin_invalid"] {
        let name = format!("http.ingress.cors.{c}");
        out.push(format!("{name}={}", proxy.stat(&name)));
    }
    out
}

fn compare(vh_policy: &str) -> Vec<String> {
    let a = Upstream::start("a");
    let got = run(&Courier::start(&boot(&a, vh_policy)), &a);
    let a = Upstream::start("a");
    match Courier::start_envoy(&boot(&a, vh_policy)) {
        Some(envoy) => assert_eq!(run(&envoy, &a), got, "envoy vs courier"),
        None => eprintln!("envoy not on PATH: skipping the CORS differential"),
    }
    got
}

/// What Envoy 1.40 answers with the virtual host's policy in `typed_per_filter_config`.
const EXPECTED: &[&str] = &[
    "preflight: 200 \"\" upstream=0 [\"access-control-allow-credentials: true\", \"access-control-allow-headers: x-foo\", \"access-control-allow-methods: GET, POST\", \"access-control-allow-origin: http://a.com\", \"access-control-expose-headers: x-bar\", \"access-control-max-age: 600\", \"content-length: 0\"]",
    "preflight from another origin: 200 \"a OPTIONS /x\" upstream=1 [\"content-length: 12\", \"x-vh: 1\"]",
    "route preflight from another origin: 200 \"\" upstream=0 [\"access-control-allow-headers: \", \"access-control-allow-methods: PUT\", \"access-control-max-age: 600\", \"content-length: 0\"]",
    "route preflight: 200 \"\" upstream=0 [\"access-control-allow-headers: x-y\", \"access-control-allow-methods: PUT\", \"access-control-allow-origin: http://x.b.com\", \"access-control-expose-headers: x-bar\", \"access-control-max-age: 600\", \"content-length: 0\"]",
    "options without a method asked: 200 \"a OPTIONS /x\" upstream=1 [\"access-control-allow-credentials: true\", \"access-control-allow-origin: http://a.com\", \"access-control-expose-headers: x-bar\", \"content-length: 12\", \"x-vh: 1\"]",
    "options without origin: 200 \"a OPTIONS /x\" upstream=1 [\"content-length: 12\", \"x-vh: 1\"]",
    "get: 200 \"a GET /x\" upstream=1 [\"access-control-allow-credentials: true\", \"access-control-allow-origin: http://a.com\", \"access-control-expose-headers: x-bar\", \"content-length: 8\", \"x-vh: 1\"]",
    "get from another origin: 200 \"a GET /x\" upstream=1 [\"content-length: 8\", \"x-vh: 1\"]",
    "get with an empty origin: 200 \"a GET /x\" upstream=1 [\"content-length: 8\", \"x-vh: 1\"]",
    "direct response: 200 \"d\" upstream=0 [\"content-length: 1\", \"x-vh: 1\"]",
    "router's reply: 503 \"upstream connect error or disconnect/reset before headers. reset reason: remote connection failure\" upstream=0 [\"access-control-allow-credentials: true\", \"access-control-allow-origin: http://a.com\", \"access-control-expose-headers: x-bar\", \"content-length: 98\", \"x-vh: 1\"]",
    "disabled route: 200 \"a GET /off\" upstream=1 [\"content-length: 10\", \"x-vh: 1\"]",
    "disabled route preflight: 200 \"a OPTIONS /off\" upstream=1 [\"content-length: 14\", \"x-vh: 1\"]",
    "filter_enabled 0: 200 \"a GET /never\" upstream=1 [\"content-length: 12\", \"x-vh: 1\"]",
    "shadow_enabled: 200 \"a GET /shadow\" upstream=1 [\"content-length: 13\", \"x-vh: 1\"]",
    "shadow_enabled preflight: 200 \"a OPTIONS /shadow\" upstream=1 [\"content-length: 17\", \"x-vh: 1\"]",
    "http.ingress.cors.origin_valid=7",
    "http.ingress.cors.origin_invalid=3",
];

#[test]
fn cors_policies_match_envoy() {
    assert_eq!(compare(&typed_policy()), EXPECTED);
}

/// The deprecated `cors` field of a virtual host works as a `typed_per_filter_config`
/// policy does (Envoy 1.40 warns and applies it).
#[test]
fn deprecated_cors_field_matches_envoy() {
    let got = compare(&legacy_policy());
    // The route's `typed_per_filter_config` policy is there, so the virtual host's
    // deprecated one is not consulted for it: no origin matches, and the route's policy
    // has no `max_age` or `expose_headers`.
    let mut expected: Vec<String> = EXPECTED.iter().map(|s| s.to_string()).collect();
    expected[2] = r#"route preflight from another origin: 200 "" upstream=0 ["access-control-allow-headers: ", "access-control-allow-methods: PUT", "content-length: 0"]"#.into();
    expected[3] = r#"route preflight: 200 "" upstream=0 ["access-control-allow-headers: x-y", "access-control-allow-methods: PUT", "content-length: 0"]"#.into();
    let counters = expected.len() - 2;
    expected[counters] = "http.ingress.cors.origin_valid=4".into();
    expected[counters + 1] = "http.ingress.cors.origin_invalid=6".into();
    assert_eq!(got, expected);
}
