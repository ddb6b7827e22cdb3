//! The fault injection filter (`envoy.filters.http.fault`): delays and aborts from the
//! filter's own config or a route's, fixed or asked for by request headers. Each case runs
//! through Courier and, when `envoy` is on PATH, through Envoy 1.40; the two must agree.

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
