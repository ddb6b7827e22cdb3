//! The fault injection filter (`envoy.filters.http.fault`): delays, aborts and response
//! rate limits from the filter's own config or a route's, fixed or asked for by request
//! headers. Each case runs through Courier and, when `envoy` is on PATH, through Envoy
//! 1.40; the two must agree. Paced bodies are timed only by generous lower bounds.

mod http_support;

use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use http_support::*;

const ROUTES: &str = r#"            name: local
            virtual_hosts:
            - name: main
              domains: ["*"]
              response_headers_to_add: [{ header: { key: x-vh, value: "1" } }]
              routes:
              - match: { prefix: "/abort" }
                route: { cluster: a }
                typed_per_filter_config:
                  envoy.filters.http.fault:
                    "@type": type.googleapis.com/envoy.extensions.filters.http.fault.v3.HTTPFault
                    abort: { http_status: 418, percentage: { numerator: 100 } }
              - match: { prefix: "/no-percentage" }
                route: { cluster: a }
                typed_per_filter_config:
                  envoy.filters.http.fault:
                    "@type": type.googleapis.com/envoy.extensions.filters.http.fault.v3.HTTPFault
                    abort: { http_status: 418 }
              - match: { prefix: "/grpc-abort" }
                route: { cluster: a }
                typed_per_filter_config:
                  envoy.filters.http.fault:
                    "@type": type.googleapis.com/envoy.extensions.filters.http.fault.v3.HTTPFault
                    abort: { grpc_status: 14, percentage: { numerator: 100 } }
              - match: { prefix: "/delay" }
                route: { cluster: a }
                typed_per_filter_config:
                  envoy.filters.http.fault:
                    "@type": type.googleapis.com/envoy.extensions.filters.http.fault.v3.HTTPFault
                    delay: { fixed_delay: 0.2s, percentage: { numerator: 100 } }
                    max_active_faults: 1
              - match: { prefix: "/both" }
                route: { cluster: a }
                typed_per_filter_config:
                  envoy.filters.http.fault:
                    "@type": type.googleapis.com/envoy.extensions.filters.http.fault.v3.HTTPFault
                    delay: { fixed_delay: 0.1s, percentage: { numerator: 100 } }
                    abort: { http_status: 503, percentage: { numerator: 100 }, response_body: "injected" }
              - match: { prefix: "/hdr" }
                route: { cluster: a }
                typed_per_filter_config:
                  envoy.filters.http.fault:
                    "@type": type.googleapis.com/envoy.extensions.filters.http.fault.v3.HTTPFault
                    abort: { header_abort: {}, percentage: { numerator: 100 } }
                    delay: { header_delay: {}, percentage: { numerator: 100 } }
              - match: { prefix: "/targeted" }
                route: { cluster: a }
                typed_per_filter_config:
                  envoy.filters.http.fault:
                    "@type": type.googleapis.com/envoy.extensions.filters.http.fault.v3.HTTPFault
                    abort: { http_status: 500, percentage: { numerator: 100 } }
                    headers: [{ name: x-fault, string_match: { exact: "yes" } }]
                    downstream_nodes: [node-a]
              - match: { prefix: "/other-cluster" }
                route: { cluster: a }
                typed_per_filter_config:
                  envoy.filters.http.fault:
                    "@type": type.googleapis.com/envoy.extensions.filters.http.fault.v3.HTTPFault
                    abort: { http_status: 500, percentage: { numerator: 100 } }
                    upstream_cluster: b
              - match: { prefix: "/off" }
                route: { cluster: a }
                typed_per_filter_config:
                  envoy.filters.http.fault:
                    "@type": type.googleapis.com/envoy.config.route.v3.FilterConfig
                    disabled: true
              - match: { prefix: "/direct-fault" }
                direct_response: { status: 200, body: { inline_string: "d" } }
                typed_per_filter_config:
                  envoy.filters.http.fault:
                    "@type": type.googleapis.com/envoy.extensions.filters.http.fault.v3.HTTPFault
                    abort: { http_status: 418, percentage: { numerator: 100 } }
              - match: { prefix: "/direct-off" }
                direct_response: { status: 200, body: { inline_string: "d" } }
                typed_per_filter_config:
                  envoy.filters.http.fault:
                    "@type": type.googleapis.com/envoy.config.route.v3.FilterConfig
                    disabled: true
              - match: { prefix: "/direct" }
                direct_response: { status: 200, body: { inline_string: "d" } }
              - match: { prefix: "/" }
                route: { cluster: a }
"#;

/// The filter's own config: aborts everything with 401 unless a route says otherwise.
const FILTER: &str = "          - name: envoy.filters.http.fault\n            typed_config:\n              \"@type\": type.googleapis.com/envoy.extensions.filters.http.fault.v3.HTTPFault\n              abort: { http_status: 401, percentage: { numerator: 100 } }\n";

fn boot(a: &Upstream) -> String {
    with_filters(&bootstrap(ROUTES, "", &cluster("a", &[a.addr], "")), FILTER)
}

/// A request: its path, headers, and the delay it should take (ms).
type Case<'a> = (&'a str, &'a [(&'a str, &'a str)], u64);

/// Each request's status, body, gRPC and `x-vh` headers, whether it reached the
/// upstream, and whether it took its delay (`delayed`: at least 90% of it).
fn run(proxy: &Courier, a: &Upstream) -> Vec<String> {
    const GRPC: (&str, &str) = ("content-type", "application/grpc");
    let cases: &[Case] = &[
        ("/x", &[], 0),
        ("/abort", &[], 0),
        ("/abort", &[GRPC], 0),
        ("/no-percentage", &[], 0),
        ("/grpc-abort", &[], 0),
        ("/grpc-abort", &[GRPC], 0),
        ("/delay", &[], 200),
        ("/both", &[], 100),
        ("/hdr", &[], 0),
        ("/hdr", &[("x-envoy-fault-abort-request", "429")], 0),
        ("/hdr", &[("x-envoy-fault-abort-request", "600")], 0),
        (
            "/hdr",
            &[("x-envoy-fault-abort-grpc-request", "5"), GRPC],
            0,
        ),
        ("/hdr", &[("x-envoy-fault-delay-request", "150")], 150),
        (
            "/hdr",
            &[
                ("x-envoy-fault-abort-request", "429"),
                ("x-envoy-fault-abort-request-percentage", "0"),
            ],
            0,
        ),
        ("/targeted", &[("x-fault", "yes")], 0),
        (
            "/targeted",
            &[
                ("x-fault", "yes"),
                ("x-envoy-downstream-service-node", "node-a"),
            ],
            0,
        ),
        ("/other-cluster", &[], 0),
        ("/off", &[], 0),
        ("/direct", &[], 0),
        ("/direct-fault", &[], 0),
        ("/direct-off", &[], 0),
    ];
    let mut out = Vec::new();
    for (path, headers, delay_ms) in cases {
        let before = a.requests.load(Ordering::SeqCst);
        let start = Instant::now();
        let r = Client::connect(proxy.listener).request("GET", "h", path, headers, b"");
        let delayed = start.elapsed() >= Duration::from_millis(delay_ms * 9 / 10);
        let upstream = a.requests.load(Ordering::SeqCst) - before;
        let shown: Vec<String> = ["grpc-status", "grpc-message", "content-type", "x-vh"]
            .iter()
            .filter_map(|n| r.header(n).map(|v| format!("{n}: {v}")))
            .collect();
        out.push(format!(
            "{path} {headers:?}: {} {:?} {shown:?} upstream={upstream} delayed={delayed}",
            r.status,
            r.body_str()
        ));
    }
    for c in ["delays_injected", "aborts_injected", "faults_overflow"] {
        let name = format!("http.ingress.fault.{c}");
        out.push(format!("{name}={}", proxy.stat(&name)));
    }
    out
}

/// `max_active_faults`: while one delayed request is held, the next gets no fault.
fn overflow(proxy: &Courier) -> String {
    let listener = proxy.listener;
    let held = std::thread::spawn(move || get(listener, "h", "/delay", &[]).status);
    let active = proxy.wait_stat("http.ingress.fault.active_faults", 1);
    let start = Instant::now();
    let r = get(listener, "h", "/delay", &[]);
    let quick = start.elapsed() < Duration::from_millis(150);
    let first = held.join().unwrap_or(0);
    format!(
        "active={active} second={} quick={quick} first={first} faults_overflow={}",
        r.status,
        proxy.stat("http.ingress.fault.faults_overflow")
    )
}

#[test]
fn faults_match_envoy() {
    let a = Upstream::start("a");
    let courier = Courier::start(&boot(&a));
    let got = run(&courier, &a);
    let got_overflow = overflow(&courier);
    let a = Upstream::start("a");
    match Courier::start_envoy(&boot(&a)) {
        Some(envoy) => {
            assert_eq!(run(&envoy, &a), got, "envoy vs courier");
            assert_eq!(overflow(&envoy), got_overflow, "envoy vs courier");
        }
        None => eprintln!("envoy not on PATH: skipping the fault differential"),
    }
    assert_eq!(
        got_overflow,
        "active=1 second=200 quick=true first=200 faults_overflow=1"
    );
    assert_eq!(
        got,
        [
            "/x []: 401 \"fault filter abort\" [\"content-type: text/plain\", \"x-vh: 1\"] upstream=0 delayed=true",
            "/abort []: 418 \"fault filter abort\" [\"content-type: text/plain\", \"x-vh: 1\"] upstream=0 delayed=true",
            "/abort [(\"content-type\", \"application/grpc\")]: 200 \"\" [\"grpc-status: 2\", \"grpc-message: fault filter abort\", \"content-type: application/grpc\", \"x-vh: 1\"] upstream=0 delayed=true",
            "/no-percentage []: 200 \"a GET /no-percentage\" [\"x-vh: 1\"] upstream=1 delayed=true",
            "/grpc-abort []: 200 \"fault filter abort\" [\"content-type: text/plain\", \"x-vh: 1\"] upstream=0 delayed=true",
            "/grpc-abort [(\"content-type\", \"application/grpc\")]: 200 \"\" [\"grpc-status: 14\", \"grpc-message: fault filter abort\", \"content-type: application/grpc\", \"x-vh: 1\"] upstream=0 delayed=true",
            "/delay []: 200 \"a GET /delay\" [\"x-vh: 1\"] upstream=1 delayed=true",
            "/both []: 503 \"injected\" [\"content-type: text/plain\", \"x-vh: 1\"] upstream=0 delayed=true",
            "/hdr []: 200 \"a GET /hdr\" [\"x-vh: 1\"] upstream=1 delayed=true",
            "/hdr [(\"x-envoy-fault-abort-request\", \"429\")]: 429 \"fault filter abort\" [\"content-type: text/plain\", \"x-vh: 1\"] upstream=0 delayed=true",
            "/hdr [(\"x-envoy-fault-abort-request\", \"600\")]: 200 \"a GET /hdr\" [\"x-vh: 1\"] upstream=1 delayed=true",
            "/hdr [(\"x-envoy-fault-abort-grpc-request\", \"5\"), (\"content-type\", \"application/grpc\")]: 200 \"\" [\"grpc-status: 5\", \"grpc-message: fault filter abort\", \"content-type: application/grpc\", \"x-vh: 1\"] upstream=0 delayed=true",
            "/hdr [(\"x-envoy-fault-delay-request\", \"150\")]: 200 \"a GET /hdr\" [\"x-vh: 1\"] upstream=1 delayed=true",
            "/hdr [(\"x-envoy-fault-abort-request\", \"429\"), (\"x-envoy-fault-abort-request-percentage\", \"0\")]: 200 \"a GET /hdr\" [\"x-vh: 1\"] upstream=1 delayed=true",
            "/targeted [(\"x-fault\", \"yes\")]: 200 \"a GET /targeted\" [\"x-vh: 1\"] upstream=1 delayed=true",
            "/targeted [(\"x-fault\", \"yes\"), (\"x-envoy-downstream-service-node\", \"node-a\")]: 500 \"fault filter abort\" [\"content-type: text/plain\", \"x-vh: 1\"] upstream=0 delayed=true",
            "/other-cluster []: 200 \"a GET /other-cluster\" [\"x-vh: 1\"] upstream=1 delayed=true",
            "/off []: 200 \"a GET /off\" [\"x-vh: 1\"] upstream=1 delayed=true",
            "/direct []: 401 \"fault filter abort\" [\"content-type: text/plain\"] upstream=0 delayed=true",
            "/direct-fault []: 418 \"fault filter abort\" [\"content-type: text/plain\"] upstream=0 delayed=true",
            "/direct-off []: 200 \"d\" [\"content-type: text/plain\", \"x-vh: 1\"] upstream=0 delayed=true",
            "http.ingress.fault.delays_injected=3",
            "http.ingress.fault.aborts_injected=11",
            "http.ingress.fault.faults_overflow=0",
        ]
    );
}

/// A client that goes away during a delay takes its request (and active fault) with it,
/// as Envoy resets the stream: nothing is left waiting out the delay.
#[test]
fn a_client_leaving_during_a_delay_ends_its_fault_like_envoy() {
    let check = |proxy: &Courier| {
        let mut c = Client::connect(proxy.listener);
        c.send_raw(b"GET /hdr HTTP/1.1\r\nhost: h\r\nx-envoy-fault-delay-request: 30000\r\n\r\n");
        let active = proxy.wait_stat("http.ingress.fault.active_faults", 1);
        drop(c);
        let deadline = Instant::now() + Duration::from_secs(5);
        while proxy.stat("http.ingress.fault.active_faults") > 0 && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(10));
        }
        format!(
            "active while held={active}, after the client left={}",
            proxy.stat("http.ingress.fault.active_faults")
        )
    };
    let a = Upstream::start("a");
    let got = check(&Courier::start(&boot(&a)));
    if let Some(envoy) = Courier::start_envoy(&boot(&a)) {
        assert_eq!(check(&envoy), got, "envoy vs courier");
    }
    assert_eq!(got, "active while held=1, after the client left=0");
}

/// A fault filter disabled in the chain runs only where a route's `FilterConfig` turns it
/// on.
#[test]
fn a_disabled_fault_filter_runs_where_a_route_enables_it_like_envoy() {
    let routes = r#"            name: local
            virtual_hosts:
            - name: main
              domains: ["*"]
              routes:
              - match: { prefix: "/on" }
                route: { cluster: a }
                typed_per_filter_config:
                  envoy.filters.http.fault:
                    "@type": type.googleapis.com/envoy.config.route.v3.FilterConfig
                    disabled: false
                    config:
                      "@type": type.googleapis.com/envoy.extensions.filters.http.fault.v3.HTTPFault
                      abort: { http_status: 418, percentage: { numerator: 100 } }
              - match: { prefix: "/" }
                route: { cluster: a }
"#;
    let filter = "          - name: envoy.filters.http.fault\n            disabled: true\n            typed_config:\n              \"@type\": type.googleapis.com/envoy.extensions.filters.http.fault.v3.HTTPFault\n              abort: { http_status: 401, percentage: { numerator: 100 } }\n";
    let boot =
        |a: &Upstream| with_filters(&bootstrap(routes, "", &cluster("a", &[a.addr], "")), filter);
    let check = |proxy: &Courier| {
        ["/on", "/off"]
            .map(|p| format!("{p}: {}", get(proxy.listener, "h", p, &[]).status))
            .join(", ")
    };
    let a = Upstream::start("a");
    let got = check(&Courier::start(&boot(&a)));
    if let Some(envoy) = Courier::start_envoy(&boot(&a)) {
        assert_eq!(check(&envoy), got, "envoy vs courier");
    }
    assert_eq!(got, "/on: 418, /off: 200");
}

/// A route under `prefix` to cluster `a` with the per-route `HTTPFault` whose fields are
/// `fault` (a YAML flow mapping's, without its braces).
fn fault_route(prefix: &str, fault: &str) -> String {
    format!(
        r#"              - match: {{ prefix: "{prefix}" }}
                route: {{ cluster: a }}
                typed_per_filter_config:
                  envoy.filters.http.fault: {{ "@type": type.googleapis.com/envoy.extensions.filters.http.fault.v3.HTTPFault, {fault} }}
"#
    )
}

/// `response_rate_limit`: the filter's own paces responses to the rate a request's
/// `x-envoy-fault-throughput-response` asks; routes pace to a fixed rate, or not at all,
/// some with a delay or an abort.
fn rate_limit_boot(a: &Upstream) -> String {
    let mut routes = String::from(
        "            name: local\n            virtual_hosts:\n            - name: main\n              domains: [\"*\"]\n              routes:\n",
    );
    let fixed = |kbps: u32, pct: u32| {
        format!("response_rate_limit: {{ fixed_limit: {{ limit_kbps: {kbps} }}, percentage: {{ numerator: {pct} }} }}")
    };
    for (prefix, fault) in [
        ("/fixed/", fixed(32, 100)),
        ("/fixed0/", fixed(32, 0)),
        ("/fast/", fixed(100_000, 100)),
        ("/none/", "max_active_faults: 5".to_string()),
        (
            "/hdr0/",
            "response_rate_limit: { header_limit: {}, percentage: { numerator: 0 } }".into(),
        ),
        (
            "/delayed/",
            format!(
                "delay: {{ fixed_delay: 0.3s, percentage: {{ numerator: 100 }} }}, {}",
                fixed(32, 100)
            ),
        ),
        (
            "/aborted/",
            format!(
                "abort: {{ http_status: 503, percentage: {{ numerator: 100 }} }}, {}",
                fixed(1, 100)
            ),
        ),
        (
            "/delay-only/",
            "delay: { fixed_delay: 0.1s, percentage: { numerator: 100 } }".into(),
        ),
        (
            "/delay-rl0/",
            format!(
                "delay: {{ fixed_delay: 0.1s, percentage: {{ numerator: 100 }} }}, {}",
                fixed(32, 0)
            ),
        ),
        ("/max/", format!("max_active_faults: 1, {}", fixed(32, 100))),
    ] {
        routes.push_str(&fault_route(prefix, &fault));
    }
    routes.push_str(
        "              - match: { prefix: \"/\" }\n                route: { cluster: a }\n",
    );
    with_filters(
        &bootstrap(&routes, "", &cluster("a", &[a.addr], "")),
        "          - name: envoy.filters.http.fault\n            typed_config:\n              \"@type\": type.googleapis.com/envoy.extensions.filters.http.fault.v3.HTTPFault\n              response_rate_limit: { header_limit: {}, percentage: { numerator: 100 } }\n",
    )
}

/// 64 KiB paced at 32 KiB a second takes about 2 s (the bucket starts with 50 ms' worth):
/// 1.2 s is a generous lower bound, and an unpaced body on the loopback takes far less.
const PACED: Duration = Duration::from_millis(1_200);

/// Each request's status, body (whether it is the upstream's whole), and whether it was
/// paced; then the filter's counters and gauge.
fn rate_limits(proxy: &Courier) -> Vec<String> {
    const RATE: &str = "x-envoy-fault-throughput-response";
    const RATE_PCT: &str = "x-envoy-fault-throughput-response-percentage";
    const BIG: &str = "shape?n=65536";
    let big = shape_text(65_536);
    let cases: &[(&str, &[(&str, &str)])] = &[
        ("/fixed/", &[]),
        ("/fixed0/", &[]),
        // A fixed limit reads no header.
        ("/fast/", &[(RATE, "1")]),
        // No `response_rate_limit` in the route's policy: the header is not read.
        ("/none/", &[(RATE, "32")]),
        ("/hdr0/", &[(RATE, "32"), (RATE_PCT, "100")]),
        ("/", &[]),
        ("/", &[(RATE, "32")]),
        ("/", &[(RATE, "0")]),
        ("/", &[(RATE, "abc")]),
        ("/", &[(RATE, "32"), (RATE_PCT, "0")]),
        ("/", &[(RATE, "32"), (RATE_PCT, "100")]),
        ("/delayed/", &[]),
        ("/aborted/", &[]),
    ];
    let mut out = Vec::new();
    for (prefix, headers) in cases {
        let path = format!("{prefix}{BIG}");
        let start = Instant::now();
        let r = Client::connect(proxy.listener).request("GET", "h", &path, headers, b"");
        let took = start.elapsed();
        out.push(format!(
            "{prefix} {headers:?}: {} len={} whole={} paced={}",
            r.status,
            r.body.len(),
            r.body == big,
            took >= PACED
        ));
        if *prefix == "/delayed/" {
            assert!(
                took >= PACED + Duration::from_millis(300),
                "{path}: {took:?}"
            );
        }
    }
    for c in [
        "response_rl_injected",
        "delays_injected",
        "aborts_injected",
        "faults_overflow",
        "active_faults",
    ] {
        let name = format!("http.ingress.fault.{c}");
        out.push(format!("{name}={}", proxy.stat(&name)));
    }
    out
}

/// `active_faults` while the upstream answers (slowly) a request whose delay is over:
/// Envoy stops counting a delay once it is over, unless its policy has a
/// `response_rate_limit` (even one this request was not sampled for).
fn active_after_delay(proxy: &Courier, a: &Upstream, prefix: &str) -> String {
    let before = a.requests.load(Ordering::SeqCst);
    let listener = proxy.listener;
    let path = format!("{prefix}delay/1500");
    let held = std::thread::spawn(move || get(listener, "h", &path, &[]).status);
    let deadline = Instant::now() + Duration::from_secs(10);
    while a.requests.load(Ordering::SeqCst) == before && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(10));
    }
    let active = proxy.stat("http.ingress.fault.active_faults");
    let status = held.join().unwrap_or(0);
    format!("{prefix}: active while upstream answers={active} status={status}")
}

/// `max_active_faults` with a paced response: while one is paced, the next gets no limit.
fn rate_limit_overflow(proxy: &Courier) -> String {
    let listener = proxy.listener;
    let held = std::thread::spawn(move || get(listener, "h", "/max/shape?n=65536", &[]).body.len());
    let active = proxy.wait_stat("http.ingress.fault.active_faults", 1);
    let start = Instant::now();
    let r = get(listener, "h", "/max/shape?n=65536", &[]);
    let paced = start.elapsed() >= PACED;
    let first = held.join().unwrap_or(0);
    format!(
        "active={active} second={} len={} paced={paced} first len={first} faults_overflow={}",
        r.status,
        r.body.len(),
        proxy.stat("http.ingress.fault.faults_overflow")
    )
}

#[test]
fn response_rate_limits_match_envoy() {
    let got = courier_and_envoy_agree(
        |_, a| rate_limit_boot(a),
        |proxy, _, a| {
            let mut facts = rate_limits(proxy);
            facts.push(active_after_delay(proxy, a, "/delay-only/"));
            facts.push(active_after_delay(proxy, a, "/delay-rl0/"));
            facts.push(rate_limit_overflow(proxy));
            facts
        },
    );
    assert_eq!(
        got,
        [
            "/fixed/ []: 200 len=65536 whole=true paced=true",
            "/fixed0/ []: 200 len=65536 whole=true paced=false",
            "/fast/ [(\"x-envoy-fault-throughput-response\", \"1\")]: 200 len=65536 whole=true paced=false",
            "/none/ [(\"x-envoy-fault-throughput-response\", \"32\")]: 200 len=65536 whole=true paced=false",
            "/hdr0/ [(\"x-envoy-fault-throughput-response\", \"32\"), (\"x-envoy-fault-throughput-response-percentage\", \"100\")]: 200 len=65536 whole=true paced=false",
            "/ []: 200 len=65536 whole=true paced=false",
            "/ [(\"x-envoy-fault-throughput-response\", \"32\")]: 200 len=65536 whole=true paced=true",
            "/ [(\"x-envoy-fault-throughput-response\", \"0\")]: 200 len=65536 whole=true paced=false",
            "/ [(\"x-envoy-fault-throughput-response\", \"abc\")]: 200 len=65536 whole=true paced=false",
            "/ [(\"x-envoy-fault-throughput-response\", \"32\"), (\"x-envoy-fault-throughput-response-percentage\", \"0\")]: 200 len=65536 whole=true paced=false",
            "/ [(\"x-envoy-fault-throughput-response\", \"32\"), (\"x-envoy-fault-throughput-response-percentage\", \"100\")]: 200 len=65536 whole=true paced=true",
            "/delayed/ []: 200 len=65536 whole=true paced=true",
            "/aborted/ []: 503 len=18 whole=false paced=false",
            "http.ingress.fault.response_rl_injected=6",
            "http.ingress.fault.delays_injected=1",
            "http.ingress.fault.aborts_injected=1",
            "http.ingress.fault.faults_overflow=0",
            "http.ingress.fault.active_faults=0",
            "/delay-only/: active while upstream answers=0 status=200",
            "/delay-rl0/: active while upstream answers=1 status=200",
            "active=1 second=200 len=65536 paced=false first len=65536 faults_overflow=1",
        ]
    );
}

/// A `response_rate_limit` Envoy refuses (no limit type, a fixed limit of 0) Courier
/// refuses by path.
#[test]
fn invalid_response_rate_limits_are_refused_like_envoy() {
    let a = Upstream::start("a");
    let base = rate_limit_boot(&a);
    let cases = [
        (
            "response_rate_limit: { header_limit: {}, percentage: { numerator: 100 } }",
            "response_rate_limit: { percentage: { numerator: 100 } }",
            "response_rate_limit: one of fixed_limit or header_limit is required",
        ),
        (
            "limit_kbps: 32 }, percentage: { numerator: 100 }",
            "limit_kbps: 0 }, percentage: { numerator: 100 }",
            "response_rate_limit.fixed_limit.limit_kbps: value must be greater than or equal to 1",
        ),
    ];
    assert_refused_by_path(&base, &cases);
    for (from, to, _) in cases {
        if let Some((code, text)) = envoy_validate(&base.replacen(from, to, 1)) {
            assert_ne!(code, Some(0), "envoy accepted {to}: {text}");
        }
    }
    if let Some((code, text)) = envoy_validate(&base) {
        assert_eq!(code, Some(0), "{text}");
    }
}

/// `filter_metadata` (dynamic metadata set when a fault is injected, which nothing of
/// Courier's reads) is refused by its path.
#[test]
fn filter_metadata_is_refused_by_path() {
    let a = Upstream::start("a");
    let base = rate_limit_boot(&a);
    assert_refused_by_path(
        &base,
        &[(
            "max_active_faults: 5",
            "max_active_faults: 5, filter_metadata: { k: v }",
            "filter_metadata",
        )],
    );
}

/// A request's downstream cluster (`x-envoy-downstream-service-cluster`): its runtime
/// keys replace the policy's shares and override its delays and statuses, and it has
/// counters of its own unless `disable_downstream_cluster_stats`.
#[test]
fn downstream_cluster_keys_and_counters_match_envoy() {
    let routes = String::from(
        r#"            name: local
            virtual_hosts:
            - name: main
              domains: ["*"]
              routes:
"#,
    ) + &fault_route(
        "/abort",
        "abort: { http_status: 500, percentage: { numerator: 100 } }",
    ) + &fault_route(
        "/delay",
        "delay: { fixed_delay: 0.2s, percentage: { numerator: 100 } }",
    ) + &fault_route(
        "/hdr",
        "abort: { header_abort: {}, percentage: { numerator: 100 } }",
    ) + &fault_route(
        "/grpc",
        "abort: { grpc_status: 14, percentage: { numerator: 100 } }",
    ) + &fault_route(
        "/quiet",
        "abort: { http_status: 503, percentage: { numerator: 100 } }, disable_downstream_cluster_stats: true",
    ) + &fault_route("/", "abort: { http_status: 502, percentage: { numerator: 0 } }");
    let runtime = "layered_runtime:\n  layers:\n  - name: static\n    static_layer:\n      fault.http.abort.http_status: 429\n      fault.http.abort.grpc_status: 9\n      fault.http.svc-a.abort.abort_percent: 0\n      fault.http.svc-a.delay.fixed_delay_percent: 0\n      fault.http.svc-b.abort.http_status: 418\n      fault.http.svc-b.abort.grpc_status: 7\n      fault.http.svc-b.delay.fixed_duration_ms: 800\n";
    let boot = |a: &Upstream| {
        with_filters(
            &bootstrap(&routes, "", &cluster("a", &[a.addr], "")),
            FILTER,
        ) + runtime
    };
    let run = |proxy: &Courier| {
        type Case<'a> = (&'a str, Option<&'a str>, &'a [(&'a str, &'a str)]);
        let cases: &[Case] = &[
            ("/abort", None, &[]),
            ("/abort", Some("svc-a"), &[]),
            ("/abort", Some("svc-b"), &[]),
            ("/abort", Some("svc-c"), &[]),
            ("/abort", Some(""), &[]),
            ("/delay", None, &[]),
            ("/delay", Some("svc-a"), &[]),
            ("/delay", Some("svc-b"), &[]),
            ("/delay", Some("svc-c"), &[]),
            ("/hdr", None, &[("x-envoy-fault-abort-request", "404")]),
            (
                "/hdr",
                Some("svc-b"),
                &[("x-envoy-fault-abort-request", "404")],
            ),
            (
                "/hdr",
                Some("svc-c"),
                &[("x-envoy-fault-abort-request", "404")],
            ),
            ("/grpc", None, &[("content-type", "application/grpc")]),
            (
                "/grpc",
                Some("svc-b"),
                &[("content-type", "application/grpc")],
            ),
            (
                "/grpc",
                Some("svc-c"),
                &[("content-type", "application/grpc")],
            ),
            ("/quiet", Some("svc-b"), &[]),
            ("/quiet", Some("svc-c"), &[]),
            ("/x", Some("svc-b"), &[]),
        ];
        let mut out = Vec::new();
        for (path, dc, headers) in cases {
            let mut h: Vec<(&str, &str)> = headers.to_vec();
            if let Some(dc) = dc {
                h.push(("x-envoy-downstream-service-cluster", dc));
            }
            let start = Instant::now();
            let r = Client::connect(proxy.listener).request("GET", "h", path, &h, b"");
            let ms = start.elapsed().as_millis();
            // The configured 200 ms, or svc-b's 800 ms (timers may fire a little early).
            let delay = match ms {
                0..150 => "none",
                150..600 => "configured",
                _ => "svc-b's",
            };
            out.push(format!(
                "{path} {dc:?}: {} grpc-status={:?} delay={delay}",
                r.status,
                r.header("grpc-status")
            ));
        }
        for dc in ["svc-a", "svc-b", "svc-c", ""] {
            for c in ["delays_injected", "aborts_injected"] {
                let name = format!("http.ingress.fault.{dc}.{c}");
                out.push(format!("{name}={}", proxy.stat(&name)));
            }
        }
        out
    };
    let a = Upstream::start("a");
    let got = run(&Courier::start(&boot(&a)));
    if let Some(envoy) = Courier::start_envoy(&boot(&a)) {
        let want = run(&envoy);
        for (e, c) in want.iter().zip(&got) {
            if e != c {
                eprintln!("envoy:   {e}\ncourier: {c}");
            }
        }
        assert_eq!(want, got, "envoy vs courier");
    }
    assert_eq!(
        got,
        [
            // The policy's runtime key sets the status, unless a downstream cluster's
            // replaces it (even with the configured one).
            r#"/abort None: 429 grpc-status=None delay=none"#,
            r#"/abort Some("svc-a"): 200 grpc-status=None delay=none"#,
            r#"/abort Some("svc-b"): 418 grpc-status=None delay=none"#,
            r#"/abort Some("svc-c"): 500 grpc-status=None delay=none"#,
            r#"/abort Some(""): 500 grpc-status=None delay=none"#,
            r#"/delay None: 200 grpc-status=None delay=configured"#,
            r#"/delay Some("svc-a"): 200 grpc-status=None delay=none"#,
            r#"/delay Some("svc-b"): 200 grpc-status=None delay=svc-b's"#,
            r#"/delay Some("svc-c"): 200 grpc-status=None delay=configured"#,
            r#"/hdr None: 429 grpc-status=None delay=none"#,
            r#"/hdr Some("svc-b"): 418 grpc-status=None delay=none"#,
            r#"/hdr Some("svc-c"): 404 grpc-status=None delay=none"#,
            r#"/grpc None: 200 grpc-status=Some("9") delay=none"#,
            r#"/grpc Some("svc-b"): 200 grpc-status=Some("7") delay=none"#,
            r#"/grpc Some("svc-c"): 200 grpc-status=Some("14") delay=none"#,
            r#"/quiet Some("svc-b"): 418 grpc-status=None delay=none"#,
            r#"/quiet Some("svc-c"): 503 grpc-status=None delay=none"#,
            r#"/x Some("svc-b"): 200 grpc-status=None delay=none"#,
            "http.ingress.fault.svc-a.delays_injected=0",
            "http.ingress.fault.svc-a.aborts_injected=0",
            "http.ingress.fault.svc-b.delays_injected=1",
            "http.ingress.fault.svc-b.aborts_injected=3",
            "http.ingress.fault.svc-c.delays_injected=1",
            "http.ingress.fault.svc-c.aborts_injected=3",
            "http.ingress.fault..delays_injected=0",
            "http.ingress.fault..aborts_injected=0",
        ]
    );
}
