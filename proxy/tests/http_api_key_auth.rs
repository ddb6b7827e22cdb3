//! The API key auth filter (`envoy.filters.http.api_key_auth`): keys from a field
//! (`Bearer ` or bare), a query parameter and a cookie, in the sources' order; unknown,
//! empty and missing keys; `forwarding` (the client's field, `hide_credentials` taking
//! every source's key away: the field, the query rebuilt, the cookie); an
//! `ApiKeyAuthPerRoute`'s `allowed_clients` (`403`), credentials, key sources and
//! forwarding; the counters, the response code details, and the configs Envoy refuses.
//! Each case runs through Courier and, when `envoy` is on PATH, through Envoy 1.40; the
//! two must agree, and agree with the values written here.

mod http_support;

use std::path::Path;
use std::sync::atomic::Ordering;

use http_support::*;

const FILTER: &str = r#"          - name: envoy.filters.http.api_key_auth
            typed_config:
              "@type": type.googleapis.com/envoy.extensions.filters.http.api_key_auth.v3.ApiKeyAuth
              credentials: [{ key: k1, client: c1 }, { key: k2, client: c2 }, { key: k3, client: c3 }]
              key_sources: [{ header: X-Api-Key }, { query: api_key }, { cookie: ak }]
              forwarding: { header: x-client, hide_credentials: true }
"#;

const ROUTES: &str = r#"            name: local
            virtual_hosts:
            - name: main
              domains: ["*"]
              routes:
              - match: { prefix: "/allowed-fwd" }
                route: { cluster: a }
                typed_per_filter_config:
                  envoy.filters.http.api_key_auth:
                    "@type": type.googleapis.com/envoy.extensions.filters.http.api_key_auth.v3.ApiKeyAuthPerRoute
                    allowed_clients: [c2, c3]
                    forwarding: { header: x-route-client }
              - match: { prefix: "/allowed" }
                route: { cluster: a }
                typed_per_filter_config:
                  envoy.filters.http.api_key_auth:
                    "@type": type.googleapis.com/envoy.extensions.filters.http.api_key_auth.v3.ApiKeyAuthPerRoute
                    allowed_clients: [c2]
              - match: { prefix: "/route-creds" }
                route: { cluster: a }
                typed_per_filter_config:
                  envoy.filters.http.api_key_auth:
                    "@type": type.googleapis.com/envoy.extensions.filters.http.api_key_auth.v3.ApiKeyAuthPerRoute
                    credentials: [{ key: rk, client: rc }]
                    key_sources: [{ header: x-route-key }]
                    forwarding: { header: x-client, hide_credentials: true }
              - match: { prefix: "/off" }
                route: { cluster: a }
                typed_per_filter_config:
                  envoy.filters.http.api_key_auth:
                    "@type": type.googleapis.com/envoy.config.route.v3.FilterConfig
                    disabled: true
              - match: { prefix: "/direct" }
                direct_response: { status: 200, body: { inline_string: "d" } }
              - match: { prefix: "/" }
                route: { cluster: a }
"#;

fn boot(dir: &Path, a: &Upstream, filter: &str) -> String {
    let log = format!(
        "          access_log:
          - name: details
            typed_config:
              \"@type\": type.googleapis.com/envoy.extensions.access_loggers.file.v3.FileAccessLog
              path: {}
              log_format: {{ text_format: \"%RESPONSE_CODE% %RESPONSE_CODE_DETAILS%\\n\" }}
",
        dir.join("details.log").display()
    );
    with_filters(
        &bootstrap(ROUTES, &log, &cluster("a", &[a.addr], "")),
        filter,
    )
}

/// One request: path, headers.
type Case<'a> = (&'a str, &'a [(&'a str, &'a str)]);

/// What the upstream got of the fields the filter reads or writes.
const SEEN: &[&str] = &[
    "x-client",
    "x-route-client",
    "x-api-key",
    "x-route-key",
    "cookie",
];

/// Each request as `label: status body upstream=n`, with the path and fields the upstream
/// got when it got the request; each request's log line; the counters.
fn run(proxy: &Courier, dir: &Path, a: &Upstream, cases: &[(&str, Case<'_>)]) -> Vec<String> {
    let mut out: Vec<String> = cases
        .iter()
        .map(|(label, (path, headers))| {
            let before = a.requests.load(Ordering::SeqCst);
            let r =
                Client::connect(proxy.listener).request("GET", "example.com", path, headers, b"");
            let reached = a.requests.load(Ordering::SeqCst) - before;
            let seen = match (reached, a.last()) {
                (1, Some(s)) => {
                    let fields: Vec<String> = SEEN
                        .iter()
                        .filter_map(|n| s.header(n).map(|v| format!("{n}={v}")))
                        .collect();
                    format!(" {} {}", s.path, fields.join(" "))
                }
                _ => String::new(),
            };
            format!(
                "{label}: {} {:?} upstream={reached}{seen}",
                r.status,
                r.body_str()
            )
            .trim_end()
            .to_string()
        })
        .collect();
    out.extend(log_lines(&dir.join("details.log"), cases.len()));
    for c in ["allowed", "unauthorized", "forbidden"] {
        out.push(format!(
            "{c}={}",
            proxy.stat(&format!("http.ingress.api_key_auth.{c}"))
        ));
    }
    out
}

/// Runs `cases` through Courier and Envoy (when on PATH): they must agree; Courier's.
fn differential(filter: &str, cases: &[(&str, Case<'_>)]) -> Vec<String> {
    courier_and_envoy_agree(
        |dir, a| boot(dir, a, filter),
        |proxy, dir, a| run(proxy, dir, a, cases),
    )
}

const UNAUTHORIZED: &str = "401 \"Client authentication failed.\" upstream=0";
const FORBIDDEN: &str = "403 \"Client is forbidden.\" upstream=0";

#[test]
fn api_key_auth_matches_envoy() {
    let cases: Vec<(&str, Case<'_>)> = vec![
        ("no key", ("/x", &[])),
        ("header", ("/x", &[("x-api-key", "k1")])),
        ("header, bearer", ("/x", &[("x-api-key", "Bearer k2")])),
        (
            "header, lowercase bearer",
            ("/x", &[("x-api-key", "bearer k2")]),
        ),
        ("header, unknown", ("/x", &[("x-api-key", "nope")])),
        (
            "header repeated",
            ("/x", &[("x-api-key", "k1"), ("x-api-key", "k2")]),
        ),
        (
            "header empty, query",
            ("/x?api_key=k1", &[("x-api-key", "")]),
        ),
        ("query", ("/x?b=1&api_key=k2&a=2&b=0", &[])),
        ("query, encoded", ("/x?api%5Fkey=k%33&z", &[])),
        ("query, first of two", ("/x?api_key=k1&api_key=k2", &[])),
        ("query, empty first", ("/x?api_key=&api_key=k2", &[])),
        (
            "query unknown before a cookie",
            ("/x?api_key=bad", &[("cookie", "ak=k1")]),
        ),
        (
            "header wins, query hidden",
            ("/x?q&api_key=zz", &[("x-api-key", "k3")]),
        ),
        ("cookie", ("/x", &[("cookie", "a=b; ak=k1; c=d")])),
        ("cookie, quoted", ("/x", &[("cookie", "ak=\"k2\"")])),
        (
            "cookie, two fields",
            ("/x", &[("cookie", "ak=k1"), ("cookie", "z=1")]),
        ),
        (
            "cookie, trailing blank",
            ("/x", &[("cookie", "b = 2 ;  ak=k1 ; c=3")]),
        ),
        ("cookie, no value", ("/x", &[("cookie", "ak")])),
        (
            "spoofed client",
            ("/x", &[("x-api-key", "k1"), ("x-client", "root")]),
        ),
        ("route allows c2", ("/allowed", &[("x-api-key", "k2")])),
        ("route forbids c1", ("/allowed", &[("x-api-key", "k1")])),
        (
            "route forbids, unknown key",
            ("/allowed", &[("x-api-key", "zz")]),
        ),
        ("route forwarding", ("/allowed-fwd?api_key=k3", &[])),
        (
            "route credentials",
            ("/route-creds", &[("x-route-key", "rk")]),
        ),
        (
            "route credentials, filter's key",
            ("/route-creds", &[("x-api-key", "k1")]),
        ),
        ("disabled", ("/off", &[])),
        ("direct response", ("/direct", &[])),
        ("direct response, key", ("/direct", &[("x-api-key", "k1")])),
    ];
    let got = differential(FILTER, &cases);
    let ok = |rest: &str| format!("200 \"a GET {rest}");
    let expected: Vec<String> = [
        ("no key", UNAUTHORIZED.to_string()),
        ("header", ok("/x\" upstream=1 /x x-client=c1")),
        ("header, bearer", ok("/x\" upstream=1 /x x-client=c2")),
        ("header, lowercase bearer", UNAUTHORIZED.into()),
        ("header, unknown", UNAUTHORIZED.into()),
        ("header repeated", ok("/x\" upstream=1 /x x-client=c1")),
        ("header empty, query", ok("/x\" upstream=1 /x x-client=c1")),
        (
            "query",
            ok("/x?a=2&b=1&b=0\" upstream=1 /x?a=2&b=1&b=0 x-client=c2"),
        ),
        ("query, encoded", ok("/x?z=\" upstream=1 /x?z= x-client=c3")),
        ("query, first of two", ok("/x\" upstream=1 /x x-client=c1")),
        ("query, empty first", UNAUTHORIZED.into()),
        ("query unknown before a cookie", UNAUTHORIZED.into()),
        (
            "header wins, query hidden",
            ok("/x?q=\" upstream=1 /x?q= x-client=c3"),
        ),
        (
            "cookie",
            ok("/x\" upstream=1 /x x-client=c1 cookie=a=b; c=d"),
        ),
        ("cookie, quoted", ok("/x\" upstream=1 /x x-client=c2")),
        (
            "cookie, two fields",
            ok("/x\" upstream=1 /x x-client=c1 cookie=z=1"),
        ),
        ("cookie, trailing blank", UNAUTHORIZED.into()),
        ("cookie, no value", UNAUTHORIZED.into()),
        ("spoofed client", ok("/x\" upstream=1 /x x-client=c1")),
        (
            "route allows c2",
            ok("/allowed\" upstream=1 /allowed x-api-key=k2"),
        ),
        ("route forbids c1", FORBIDDEN.into()),
        ("route forbids, unknown key", UNAUTHORIZED.into()),
        (
            "route forwarding",
            ok("/allowed-fwd?api_key=k3\" upstream=1 /allowed-fwd?api_key=k3 x-route-client=c3"),
        ),
        (
            "route credentials",
            ok("/route-creds\" upstream=1 /route-creds x-client=rc"),
        ),
        ("route credentials, filter's key", UNAUTHORIZED.into()),
        ("disabled", ok("/off\" upstream=1 /off")),
        ("direct response", UNAUTHORIZED.into()),
        ("direct response, key", "200 \"d\" upstream=0".into()),
    ]
    .into_iter()
    .map(|(l, v)| format!("{l}: {v}"))
    .collect();
    assert_eq!(got[..cases.len()], expected[..]);
    let n = cases.len();
    let details = &got[n..2 * n];
    assert_eq!(details[0], "401 missing_api_key");
    assert_eq!(details[4], "401 unknown_api_key");
    assert_eq!(details[20], "403 client_not_allowed");
    assert_eq!(details[1], "200 via_upstream");
    assert_eq!(
        got[2 * n..],
        ["allowed=16", "unauthorized=10", "forbidden=1"]
    );
}

/// A filter with key sources but no credentials (a route brings them), and one with
/// neither.
#[test]
fn missing_sources_and_credentials_match_envoy() {
    let cases: Vec<(&str, Case<'_>)> = vec![
        ("no credentials", ("/x", &[("x-api-key", "k1")])),
        (
            "route credentials",
            ("/route-creds", &[("x-route-key", "rk")]),
        ),
    ];
    let sources_only = FILTER
        .lines()
        .filter(|l| !l.contains("credentials: [") && !l.contains("forwarding:"))
        .map(|l| format!("{l}\n"))
        .collect::<String>();
    let got = differential(&sources_only, &cases);
    assert_eq!(
        got[..2],
        [
            format!("no credentials: {UNAUTHORIZED}"),
            "route credentials: 200 \"a GET /route-creds\" upstream=1 /route-creds x-client=rc"
                .to_string(),
        ]
    );
    assert_eq!(got[2], "401 missing_credentials");
    let empty = sources_only
        .lines()
        .filter(|l| !l.contains("key_sources"))
        .map(|l| format!("{l}\n"))
        .collect::<String>();
    let got = differential(&empty, &cases[..1]);
    assert_eq!(got[0], format!("no credentials: {UNAUTHORIZED}"));
    assert_eq!(got[1], "401 missing_key_sources");
}

#[test]
fn bad_configs_are_refused_as_envoy_refuses_them() {
    let a = Upstream::start("a");
    let dir = tempfile::tempdir().expect("tempdir");
    let base = boot(dir.path(), &a, FILTER);
    for (from, to, want) in [
        (
            "{ key: k2, client: c2 }",
            "{ key: k1, client: c2 }",
            "Duplicated credential key: 'k1'",
        ),
        (
            "{ cookie: ak }",
            "{}",
            "One of 'header'/'query'/'cookie' must be set.",
        ),
        ("{ key: k2, client: c2 }", "{ key: '', client: c2 }", ""),
        ("{ key: k2, client: c2 }", "{ key: k2, client: '' }", ""),
    ] {
        let cfg = base.replacen(from, to, 1);
        let (code, stderr) = validate(&cfg);
        assert_eq!(code, Some(1), "{to}: {stderr}");
        assert!(stderr.contains(want), "{to}: want {want:?} in {stderr}");
        if let Some((code, out)) = envoy_validate(&cfg) {
            assert_ne!(code, Some(0), "{to}: envoy took it");
            assert!(out.contains(want), "{to}: envoy said {out}");
        }
    }
    let (code, stderr) = validate(&base);
    assert_eq!(code, Some(0), "{stderr}");
}
