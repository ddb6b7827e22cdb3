//! Internal requests (`internal_address_config`) and the `x-envoy-*` controls the router
//! obeys on them: retries, timeouts, the timeout's alternative response. Each case runs
//! through Courier and, when `envoy` is on PATH, through Envoy 1.40, and the two are
//! compared: what the client gets, how many attempts the upstream saw, and the first
//! attempt's forwarding and control headers.

mod http_support;

use std::sync::atomic::Ordering;

use http_support::*;

/// The request headers a case's upstream reports (a generated request id as `<uuid>`).
const REPORTED: &[&str] = &[
    "x-forwarded-for",
    "x-envoy-internal",
    "x-envoy-external-address",
    "x-request-id",
    "x-envoy-expected-rq-timeout-ms",
    "x-envoy-force-trace",
    "x-envoy-retry-on",
    "x-envoy-max-retries",
    "x-envoy-upstream-rq-timeout-ms",
    "x-envoy-upstream-alt-stat-name",
    "x-envoy-hedge-on-per-try-timeout",
    "x-secret",
    "x-forwarded-client-cert",
    "grpc-timeout",
];

/// Sends each `(path, headers)` and reports the status, body, the response's request id,
/// the attempts the upstream saw, and the first attempt's [`REPORTED`] headers.
fn run(
    proxy: &Courier,
    a: &Upstream,
    cases: &[(&str, &[(&str, &str)])],
    appends: bool,
) -> Vec<String> {
    let mut out = Vec::new();
    for (path, headers) in cases {
        let before = a.requests.load(Ordering::SeqCst);
        let seen_before = a.seen.lock().map_or(0, |s| s.len());
        let r = get(proxy.listener, "h", path, headers);
        let attempts = a.requests.load(Ordering::SeqCst) - before;
        let first = a.seen.lock().ok().and_then(|s| s.get(seen_before).cloned());
        let mut upstream: Vec<String> = first
            .map(|s| {
                REPORTED
                    .iter()
                    .filter_map(|n| {
                        s.header(n)
                            .map(|v| format!("{n}={}", masked(n, v, appends)))
                    })
                    .collect()
            })
            .unwrap_or_default();
        upstream.sort();
        out.push(format!(
            "{path}: {} {:?} id={:?} after {attempts}; upstream {upstream:?}",
            r.status,
            r.body_str(),
            r.header("x-request-id").map(mask_uuid),
        ));
    }
    out
}

/// A generated request id (a UUID) as `<uuid>`: it differs on every run.
fn mask_uuid(v: &str) -> String {
    if v.len() == 36 && v.matches('-').count() == 4 {
        "<uuid>".into()
    } else {
        v.to_string()
    }
}

/// A reported header's value, with what differs between machines and runs masked: a
/// generated request id, and the address a proxy with `use_remote_address` appends to
/// `x-forwarded-for` (the machine's own for a loopback client) as `<self>`.
fn masked(name: &str, v: &str, appends: bool) -> String {
    match v.rsplit_once(',') {
        _ if name != "x-forwarded-for" => mask_uuid(v),
        _ if !appends => v.to_string(),
        Some((before, _)) => format!("{before},<self>"),
        None => "<self>".to_string(),
    }
}

/// The bootstrap: `hcm` goes into the connection manager, `router` into the router's
/// `typed_config`.
fn boot(a: &Upstream, hcm: &str, router: &str) -> String {
    let routes = r#"            name: local
            internal_only_headers: [x-secret]
            virtual_hosts:
            - name: main
              domains: ["*"]
              routes:
              - match: { prefix: "/grpc" }
                route: { cluster: a, max_grpc_timeout: 0s }
              - match: { prefix: "/" }
                route: { cluster: a }
"#;
    const ROUTER: &str =
        "\"@type\": type.googleapis.com/envoy.extensions.filters.http.router.v3.Router\n";
    bootstrap(routes, hcm, &cluster("a", &[a.addr], ""))
        .replace(ROUTER, &format!("{ROUTER}{router}"))
}

/// Courier's report, then Envoy's when it is on PATH (asserted equal).
fn compare(hcm: &str, router: &str, cases: &[(&str, &[(&str, &str)])], expected: &[&str]) {
    let a = Upstream::start("a");
    let appends = hcm.contains("use_remote_address: true");
    let got = run(&Courier::start(&boot(&a, hcm, router)), &a, cases, appends);
    let a = Upstream::start("a");
    match Courier::start_envoy(&boot(&a, hcm, router)) {
        Some(envoy) => assert_eq!(run(&envoy, &a, cases, appends), got, "envoy vs courier"),
        None => eprintln!("envoy not on PATH: skipping the internal request differential"),
    }
    assert_eq!(got, expected);
}

/// The client is on loopback: internal unless it sends `x-forwarded-for`.
const BY_PEER: &str = "          use_remote_address: true\n          internal_address_config: { cidr_ranges: [{ address_prefix: 127.0.0.0, prefix_len: 8 }] }\n";

#[test]
fn internal_requests_steer_the_router_like_envoy() {
    const XFF: (&str, &str) = ("x-forwarded-for", "1.2.3.4");
    let retry_5xx: &[(&str, &str)] = &[("x-envoy-retry-on", "5xx"), ("x-envoy-max-retries", "2")];
    let cases: &[(&str, &[(&str, &str)])] = &[
        ("/flaky/2/a", retry_5xx),
        ("/flaky/2/b", &[retry_5xx[0], retry_5xx[1], XFF]),
        ("/flaky/1/c", &[("x-envoy-retry-on", "5xx")]),
        ("/flaky/1/d", &[("x-envoy-max-retries", "3")]),
        (
            "/flaky/1/e",
            &[
                ("x-envoy-retry-on", "bogus, 5xx"),
                ("x-envoy-max-retries", "abc"),
                ("x-envoy-upstream-rq-timeout-ms", "abc"),
            ],
        ),
        ("/delay/600/f", &[("x-envoy-upstream-rq-timeout-ms", "200")]),
        (
            "/delay/600/g",
            &[
                ("x-envoy-upstream-rq-timeout-ms", "200"),
                ("x-envoy-upstream-rq-timeout-alt-response", "1"),
            ],
        ),
        (
            "/delay/400/h",
            &[
                ("x-envoy-retry-on", "5xx"),
                ("x-envoy-upstream-rq-per-try-timeout-ms", "100"),
            ],
        ),
        (
            "/delay/400/i",
            &[("x-envoy-upstream-rq-per-try-timeout-ms", "100")],
        ),
        (
            "/status/418/j",
            &[
                ("x-envoy-retry-on", "retriable-status-codes"),
                ("x-envoy-retriable-status-codes", "417, 418"),
            ],
        ),
        (
            "/flaky-header/1/x-foo=1/k",
            &[
                ("x-envoy-retry-on", "retriable-headers"),
                ("x-envoy-retriable-header-names", "x-foo"),
            ],
        ),
        (
            "/flaky-header/1/grpc-status=14/l",
            &[
                ("x-envoy-retry-grpc-on", "unavailable"),
                ("content-type", "application/grpc"),
            ],
        ),
        ("/m", &[("x-envoy-upstream-rq-timeout-ms", "0")]),
        (
            "/n",
            &[
                ("x-envoy-upstream-rq-timeout-ms", "300"),
                ("x-envoy-upstream-rq-per-try-timeout-ms", "500"),
            ],
        ),
        (
            "/o",
            &[
                ("x-envoy-upstream-rq-timeout-ms", "300"),
                ("x-envoy-upstream-rq-per-try-timeout-ms", "100"),
            ],
        ),
        (
            "/p",
            &[
                ("x-request-id", "abc"),
                ("x-secret", "s"),
                ("x-envoy-force-trace", "1"),
                ("x-envoy-upstream-alt-stat-name", "alt"),
                ("x-envoy-hedge-on-per-try-timeout", "true"),
                ("x-envoy-internal", "false"),
            ],
        ),
        (
            "/grpc/r",
            &[
                ("content-type", "application/grpc"),
                ("grpc-timeout", "10S"),
                ("x-envoy-upstream-rq-timeout-ms", "100"),
            ],
        ),
        (
            "/grpc/s",
            &[
                ("content-type", "application/grpc"),
                ("grpc-timeout", "10S"),
                ("x-envoy-upstream-rq-per-try-timeout-ms", "200"),
            ],
        ),
        (
            "/grpc/t",
            &[
                ("content-type", "application/grpc"),
                ("grpc-timeout", "10S"),
            ],
        ),
        ("/u", &[("x-forwarded-client-cert", "By=spoof")]),
        (
            "/q",
            &[
                ("x-request-id", "abc"),
                ("x-secret", "s"),
                ("x-envoy-force-trace", "1"),
                ("x-envoy-internal", "true"),
                XFF,
            ],
        ),
    ];
    compare(BY_PEER, "", cases, &expected_by_peer());
}

/// What Envoy 1.40 does with [`internal_requests_steer_the_router_like_envoy`]'s cases
/// (the machine's own address stands for a loopback client in `x-forwarded-for`).
fn expected_by_peer() -> Vec<&'static str> {
    vec![
        "/flaky/2/a: 200 \"a GET /flaky/2/a\" id=None after 3; upstream [\"x-envoy-expected-rq-timeout-ms=15000\", \"x-envoy-internal=true\", \"x-forwarded-for=<self>\", \"x-request-id=<uuid>\"]",
        "/flaky/2/b: 503 \"flaky\" id=None after 1; upstream [\"x-envoy-expected-rq-timeout-ms=15000\", \"x-envoy-external-address=127.0.0.1\", \"x-forwarded-for=1.2.3.4,<self>\", \"x-request-id=<uuid>\"]",
        "/flaky/1/c: 200 \"a GET /flaky/1/c\" id=None after 2; upstream [\"x-envoy-expected-rq-timeout-ms=15000\", \"x-envoy-internal=true\", \"x-forwarded-for=<self>\", \"x-request-id=<uuid>\"]",
        "/flaky/1/d: 503 \"flaky\" id=None after 1; upstream [\"x-envoy-expected-rq-timeout-ms=15000\", \"x-envoy-internal=true\", \"x-forwarded-for=<self>\", \"x-request-id=<uuid>\"]",
        "/flaky/1/e: 200 \"a GET /flaky/1/e\" id=None after 2; upstream [\"x-envoy-expected-rq-timeout-ms=15000\", \"x-envoy-internal=true\", \"x-forwarded-for=<self>\", \"x-request-id=<uuid>\"]",
        "/delay/600/f: 504 \"upstream request timeout\" id=None after 1; upstream [\"x-envoy-expected-rq-timeout-ms=200\", \"x-envoy-internal=true\", \"x-forwarded-for=<self>\", \"x-request-id=<uuid>\"]",
        "/delay/600/g: 204 \"\" id=None after 1; upstream [\"x-envoy-expected-rq-timeout-ms=200\", \"x-envoy-internal=true\", \"x-forwarded-for=<self>\", \"x-request-id=<uuid>\"]",
        "/delay/400/h: 504 \"upstream request timeout\" id=None after 2; upstream [\"x-envoy-expected-rq-timeout-ms=100\", \"x-envoy-internal=true\", \"x-forwarded-for=<self>\", \"x-request-id=<uuid>\"]",
        "/delay/400/i: 504 \"upstream request timeout\" id=None after 1; upstream [\"x-envoy-expected-rq-timeout-ms=100\", \"x-envoy-internal=true\", \"x-forwarded-for=<self>\", \"x-request-id=<uuid>\"]",
        "/status/418/j: 418 \"a GET /status/418/j\" id=None after 2; upstream [\"x-envoy-expected-rq-timeout-ms=15000\", \"x-envoy-internal=true\", \"x-forwarded-for=<self>\", \"x-request-id=<uuid>\"]",
        "/flaky-header/1/x-foo=1/k: 200 \"a GET /flaky-header/1/x-foo=1/k\" id=None after 2; upstream [\"x-envoy-expected-rq-timeout-ms=15000\", \"x-envoy-internal=true\", \"x-forwarded-for=<self>\", \"x-request-id=<uuid>\"]",
        "/flaky-header/1/grpc-status=14/l: 200 \"a GET /flaky-header/1/grpc-status=14/l\" id=None after 2; upstream [\"x-envoy-expected-rq-timeout-ms=15000\", \"x-envoy-internal=true\", \"x-forwarded-for=<self>\", \"x-request-id=<uuid>\"]",
        "/m: 200 \"a GET /m\" id=None after 1; upstream [\"x-envoy-internal=true\", \"x-forwarded-for=<self>\", \"x-request-id=<uuid>\"]",
        "/n: 200 \"a GET /n\" id=None after 1; upstream [\"x-envoy-expected-rq-timeout-ms=300\", \"x-envoy-internal=true\", \"x-forwarded-for=<self>\", \"x-request-id=<uuid>\"]",
        "/o: 200 \"a GET /o\" id=None after 1; upstream [\"x-envoy-expected-rq-timeout-ms=100\", \"x-envoy-internal=true\", \"x-forwarded-for=<self>\", \"x-request-id=<uuid>\"]",
        "/p: 200 \"a GET /p\" id=Some(\"abc\") after 1; upstream [\"x-envoy-expected-rq-timeout-ms=15000\", \"x-envoy-force-trace=1\", \"x-envoy-internal=true\", \"x-forwarded-for=<self>\", \"x-request-id=abc\", \"x-secret=s\"]",
        "/grpc/r: 200 \"a GET /grpc/r\" id=None after 1; upstream [\"grpc-timeout=100m\", \"x-envoy-expected-rq-timeout-ms=100\", \"x-envoy-internal=true\", \"x-forwarded-for=<self>\", \"x-request-id=<uuid>\"]",
        "/grpc/s: 200 \"a GET /grpc/s\" id=None after 1; upstream [\"grpc-timeout=200m\", \"x-envoy-expected-rq-timeout-ms=200\", \"x-envoy-internal=true\", \"x-forwarded-for=<self>\", \"x-request-id=<uuid>\"]",
        "/grpc/t: 200 \"a GET /grpc/t\" id=None after 1; upstream [\"grpc-timeout=10000m\", \"x-envoy-expected-rq-timeout-ms=10000\", \"x-envoy-internal=true\", \"x-forwarded-for=<self>\", \"x-request-id=<uuid>\"]",
        "/u: 200 \"a GET /u\" id=None after 1; upstream [\"x-envoy-expected-rq-timeout-ms=15000\", \"x-envoy-internal=true\", \"x-forwarded-for=<self>\", \"x-request-id=<uuid>\"]",
        "/q: 200 \"a GET /q\" id=None after 1; upstream [\"x-envoy-expected-rq-timeout-ms=15000\", \"x-envoy-external-address=127.0.0.1\", \"x-forwarded-for=1.2.3.4,<self>\", \"x-request-id=<uuid>\"]",
    ]
}

/// Without `use_remote_address` the address is `x-forwarded-for`'s only one; with
/// `internal_address_config` and no ranges, Envoy's private addresses are internal.
#[test]
fn private_forwarded_addresses_are_internal_like_envoy() {
    let retry = ("x-envoy-retry-on", "5xx");
    let cases: &[(&str, &[(&str, &str)])] = &[
        ("/flaky/1/a", &[retry]),
        ("/flaky/1/b", &[retry, ("x-forwarded-for", "10.1.1.1")]),
        ("/flaky/1/c", &[retry, ("x-forwarded-for", "192.168.3.4")]),
        ("/flaky/1/d", &[retry, ("x-forwarded-for", "11.1.1.1")]),
        (
            "/flaky/1/e",
            &[retry, ("x-forwarded-for", "11.1.1.1, 10.1.1.1")],
        ),
        ("/flaky/1/f", &[retry, ("x-forwarded-for", "fd00::1")]),
    ];
    compare(
        "          internal_address_config: {}\n",
        "",
        cases,
        &[
            "/flaky/1/a: 503 \"flaky\" id=None after 1; upstream [\"x-envoy-expected-rq-timeout-ms=15000\", \"x-request-id=<uuid>\"]",
            "/flaky/1/b: 200 \"a GET /flaky/1/b\" id=None after 2; upstream [\"x-envoy-expected-rq-timeout-ms=15000\", \"x-envoy-internal=true\", \"x-forwarded-for=10.1.1.1\", \"x-request-id=<uuid>\"]",
            "/flaky/1/c: 200 \"a GET /flaky/1/c\" id=None after 2; upstream [\"x-envoy-expected-rq-timeout-ms=15000\", \"x-envoy-internal=true\", \"x-forwarded-for=192.168.3.4\", \"x-request-id=<uuid>\"]",
            "/flaky/1/d: 503 \"flaky\" id=None after 1; upstream [\"x-envoy-expected-rq-timeout-ms=15000\", \"x-forwarded-for=11.1.1.1\", \"x-request-id=<uuid>\"]",
            "/flaky/1/e: 503 \"flaky\" id=None after 1; upstream [\"x-envoy-expected-rq-timeout-ms=15000\", \"x-forwarded-for=11.1.1.1, 10.1.1.1\", \"x-request-id=<uuid>\"]",
            "/flaky/1/f: 200 \"a GET /flaky/1/f\" id=None after 2; upstream [\"x-envoy-expected-rq-timeout-ms=15000\", \"x-envoy-internal=true\", \"x-forwarded-for=fd00::1\", \"x-request-id=<uuid>\"]",
        ],
    );
}

/// `always_set_request_id_in_response` echoes the request id the request went on with: one
/// this hop generated in place of an external client's, an internal client's own.
#[test]
fn echoed_request_ids_match_envoy() {
    let own = ("x-request-id", "abc");
    let cases: &[(&str, &[(&str, &str)])] = &[
        ("/a", &[own]),
        ("/b", &[own, ("x-forwarded-for", "1.2.3.4")]),
        ("/c", &[]),
        ("/flaky-header/9/x-request-id=from-upstream/d", &[own]),
    ];
    compare(
        &format!("{BY_PEER}          always_set_request_id_in_response: true\n"),
        "",
        cases,
        &[
            "/a: 200 \"a GET /a\" id=Some(\"abc\") after 1; upstream [\"x-envoy-expected-rq-timeout-ms=15000\", \"x-envoy-internal=true\", \"x-forwarded-for=<self>\", \"x-request-id=abc\"]",
            "/b: 200 \"a GET /b\" id=Some(\"<uuid>\") after 1; upstream [\"x-envoy-expected-rq-timeout-ms=15000\", \"x-envoy-external-address=127.0.0.1\", \"x-forwarded-for=1.2.3.4,<self>\", \"x-request-id=<uuid>\"]",
            "/c: 200 \"a GET /c\" id=Some(\"<uuid>\") after 1; upstream [\"x-envoy-expected-rq-timeout-ms=15000\", \"x-envoy-internal=true\", \"x-forwarded-for=<self>\", \"x-request-id=<uuid>\"]",
            "/flaky-header/9/x-request-id=from-upstream/d: 200 \"flaky\" id=Some(\"abc\") after 1; upstream [\"x-envoy-expected-rq-timeout-ms=15000\", \"x-envoy-internal=true\", \"x-forwarded-for=<self>\", \"x-request-id=abc\"]",
        ],
    );
}

/// The router's `strict_check_headers` refuses malformed controls; its
/// `respect_expected_rq_timeout` takes the timeout from `x-envoy-expected-rq-timeout-ms`.
#[test]
fn strict_and_expected_timeout_router_options_match_envoy() {
    let router = "              respect_expected_rq_timeout: true\n              strict_check_headers: [x-envoy-upstream-rq-timeout-ms, x-envoy-upstream-rq-per-try-timeout-ms, x-envoy-max-retries, x-envoy-retry-on, x-envoy-retry-grpc-on]\n";
    let cases: &[(&str, &[(&str, &str)])] = &[
        ("/a", &[("x-envoy-upstream-rq-timeout-ms", "abc")]),
        ("/b", &[("x-envoy-upstream-rq-per-try-timeout-ms", "-1")]),
        ("/c", &[("x-envoy-max-retries", "x")]),
        ("/d", &[("x-envoy-retry-on", "5xx,bogus")]),
        ("/e", &[("x-envoy-retry-grpc-on", "bogus")]),
        (
            "/flaky/1/f",
            &[
                ("x-envoy-retry-on", "5xx, reset"),
                ("x-envoy-max-retries", "1"),
            ],
        ),
        (
            "/g",
            &[
                ("x-envoy-retry-on", "bogus"),
                ("x-forwarded-for", "1.2.3.4"),
            ],
        ),
        ("/delay/500/h", &[("x-envoy-expected-rq-timeout-ms", "200")]),
        (
            "/delay/500/i",
            &[
                ("x-envoy-expected-rq-timeout-ms", "200"),
                ("x-envoy-upstream-rq-timeout-ms", "100"),
            ],
        ),
        ("/delay/300/j", &[("x-envoy-upstream-rq-timeout-ms", "100")]),
    ];
    compare(
        BY_PEER,
        router,
        cases,
        &[
            "/a: 400 \"invalid header 'x-envoy-upstream-rq-timeout-ms' with value 'abc'\" id=None after 0; upstream []",
            "/b: 400 \"invalid header 'x-envoy-upstream-rq-per-try-timeout-ms' with value '-1'\" id=None after 0; upstream []",
            "/c: 400 \"invalid header 'x-envoy-max-retries' with value 'x'\" id=None after 0; upstream []",
            "/d: 400 \"invalid header 'x-envoy-retry-on' with value '5xx,bogus'\" id=None after 0; upstream []",
            "/e: 400 \"invalid header 'x-envoy-retry-grpc-on' with value 'bogus'\" id=None after 0; upstream []",
            "/flaky/1/f: 200 \"a GET /flaky/1/f\" id=None after 2; upstream [\"x-envoy-expected-rq-timeout-ms=15000\", \"x-envoy-internal=true\", \"x-forwarded-for=<self>\", \"x-request-id=<uuid>\"]",
            "/g: 200 \"a GET /g\" id=None after 1; upstream [\"x-envoy-expected-rq-timeout-ms=15000\", \"x-envoy-external-address=127.0.0.1\", \"x-forwarded-for=1.2.3.4,<self>\", \"x-request-id=<uuid>\"]",
            "/delay/500/h: 504 \"upstream request timeout\" id=None after 1; upstream [\"x-envoy-expected-rq-timeout-ms=200\", \"x-envoy-internal=true\", \"x-forwarded-for=<self>\", \"x-request-id=<uuid>\"]",
            "/delay/500/i: 504 \"upstream request timeout\" id=None after 1; upstream [\"x-envoy-expected-rq-timeout-ms=200\", \"x-envoy-internal=true\", \"x-envoy-upstream-rq-timeout-ms=100\", \"x-forwarded-for=<self>\", \"x-request-id=<uuid>\"]",
            "/delay/300/j: 504 \"upstream request timeout\" id=None after 1; upstream [\"x-envoy-expected-rq-timeout-ms=100\", \"x-envoy-internal=true\", \"x-forwarded-for=<self>\", \"x-request-id=<uuid>\"]",
        ],
    );
}
