//! Body pacing: the bandwidth limit filter (`envoy.filters.http.bandwidth_limit`), its
//! own config and routes', request, response and both directions, runtime switched,
//! with its delay trailers. Each case runs through Courier and, when `envoy` is on PATH,
//! through Envoy 1.40; statuses, bodies, trailers and counters must agree. Timing is only
//! asserted as lower bounds (a paced body cannot be early), with wide margins.

mod http_support;

use std::time::{Duration, Instant};

use http_support::*;

/// A route under `prefix` to cluster `a` with the per-route `BandwidthLimit` whose
/// fields are `config` (a YAML flow mapping's, without its braces).
fn route(prefix: &str, config: &str) -> String {
    format!(
        r#"              - match: {{ prefix: "{prefix}" }}
                route: {{ cluster: a }}
                typed_per_filter_config:
                  bw: {{ "@type": type.googleapis.com/envoy.extensions.filters.http.bandwidth_limit.v3.BandwidthLimit, {config} }}
"#
    )
}

/// The per-route configs' stat prefixes, and the filter's own (`own`).
const PREFIXES: &[&str] = &["own", "resp", "req", "dis", "rt", "tr", "tb", "fast"];

fn boot(a: &Upstream) -> String {
    let mut routes = String::from(
        "            name: local\n            virtual_hosts:\n            - name: main\n              domains: [\"*\"]\n              routes:\n",
    );
    for (prefix, config) in [
        ("/resp/", "stat_prefix: resp, enable_mode: RESPONSE, limit_kbps: 32"),
        ("/req/", "stat_prefix: req, enable_mode: REQUEST, limit_kbps: 32"),
        ("/off/", "stat_prefix: dis, limit_kbps: 32"),
        (
            "/rt/",
            "stat_prefix: rt, enable_mode: RESPONSE, limit_kbps: 32, runtime_enabled: { runtime_key: bw.rt, default_value: false }",
        ),
        (
            "/trailers/",
            "stat_prefix: tr, enable_mode: RESPONSE, limit_kbps: 64, enable_response_trailers: true, response_trailer_prefix: x",
        ),
        (
            "/trailers-both/",
            "stat_prefix: tb, enable_mode: REQUEST_AND_RESPONSE, limit_kbps: 64, fill_interval: 0.1s, enable_response_trailers: true",
        ),
        (
            "/fast/",
            "stat_prefix: fast, enable_mode: REQUEST_AND_RESPONSE, limit_kbps: 100000",
        ),
    ] {
        routes.push_str(&route(prefix, config));
    }
    routes.push_str(
        r#"              - match: { prefix: "/nobw/" }
                route: { cluster: a }
                typed_per_filter_config:
                  bw:
                    "@type": type.googleapis.com/envoy.config.route.v3.FilterConfig
                    disabled: true
              - match: { prefix: "/" }
                route: { cluster: a }
"#,
    );
    let boot = bootstrap(&routes, "", &cluster("a", &[a.addr], ""));
    with_filters(
        &boot,
        r#"          - name: bw
            typed_config:
              "@type": type.googleapis.com/envoy.extensions.filters.http.bandwidth_limit.v3.BandwidthLimit
              stat_prefix: own
              enable_mode: REQUEST_AND_RESPONSE
              limit_kbps: 32
"#,
    )
}

/// Each config's counters and pending gauges, a line each; `enforced` as whether any
/// tick left bytes waiting (how many depends on the box's timing).
fn counters(proxy: &Courier) -> Vec<String> {
    PREFIXES
        .iter()
        .map(|p| {
            let mut line = format!("{p}:");
            for dir in ["request", "response"] {
                for c in [
                    "enabled",
                    "incoming_total_size",
                    "allowed_total_size",
                    "pending",
                ] {
                    let v = proxy.stat(&format!("{p}.http_bandwidth_limit.{dir}_{c}"));
                    line.push_str(&format!(" {dir}_{c}={v}"));
                }
                let enforced = proxy.stat(&format!("{p}.http_bandwidth_limit.{dir}_enforced"));
                line.push_str(&format!(" {dir}_enforced>0={}", enforced > 0));
            }
            line
        })
        .collect()
}

/// A request on a fresh HTTP/1.1 connection: status, whether the body is `want`, and
/// how long it took.
fn timed(
    proxy: &Courier,
    method: &str,
    path: &str,
    body: &[u8],
    want: &[u8],
) -> (String, Duration) {
    let started = Instant::now();
    let r = Client::connect(proxy.listener).request(method, "h", path, &[], body);
    let took = started.elapsed();
    let fact = format!(
        "{method} {path}: {} len={} same={}",
        r.status,
        r.body.len(),
        r.body == want
    );
    (fact, took)
}

/// An HTTP/2 request: status, whether the body is `want`, its trailers' names (values
/// are times), and how long it took.
fn timed_h2(
    proxy: &Courier,
    method: &str,
    path: &str,
    body: &[u8],
    want: &[u8],
) -> (String, Duration) {
    let started = Instant::now();
    let a = h2_call(proxy.listener, method, path, &[], body).expect("an HTTP/2 answer");
    let took = started.elapsed();
    // Envoy 1.40 was seen not to send the request's delay trailers its source says it
    // sends (the request's transfer finished first, and was paced): only the
    // response's are compared.
    let mut names: Vec<String> = a
        .trailers
        .iter()
        .flat_map(|t| t.iter())
        .filter(|(k, _)| !k.as_str().contains("bandwidth-request-"))
        .map(|(k, v)| {
            // Each a whole number of milliseconds.
            let ms: Option<u64> = v.to_str().ok().and_then(|v| v.parse().ok());
            format!("{k}={}", if ms.is_some() { "ms" } else { "?" })
        })
        .collect();
    names.sort();
    let fact = format!(
        "h2 {method} {path}: {} len={} same={} trailers={names:?}",
        a.parts.status.as_u16(),
        a.body.len(),
        a.body == want
    );
    (fact, took)
}

fn at_least(what: &str, took: Duration, ms: u64) {
    assert!(
        took >= Duration::from_millis(ms),
        "{what} took {took:?}, under {ms} ms"
    );
}

#[test]
fn bodies_are_paced_as_envoy_paces_them() {
    let facts = courier_and_envoy_agree(
        |_, a| boot(a),
        |proxy, _, _| {
            let mut facts = Vec::new();
            let big = shape_text(65_536);
            // The response: 32 KiB at once (the bucket starts full), the rest in a second.
            let (f, took) = timed(proxy, "GET", "/resp/shape?n=65536", b"", &big);
            at_least(&f, took, 700);
            facts.push(f);
            // The request, the same way; the upstream echoes it.
            let (f, took) = timed(proxy, "POST", "/req/shape?echo=1", &big, &big);
            at_least(&f, took, 700);
            facts.push(f);
            // Both ways through one bucket: 64 KiB up, then 64 KiB down, 32 KiB at once.
            let (f, took) = timed(proxy, "POST", "/own/shape?echo=1", &big, &big);
            at_least(&f, took, 2_000);
            facts.push(f);
            // Not paced: DISABLED, the runtime flag off, the filter off for the route.
            for path in [
                "/off/shape?n=65536",
                "/rt/shape?n=65536",
                "/nobw/shape?n=65536",
            ] {
                facts.push(timed(proxy, "GET", path, b"", &big).0);
            }
            facts.push(timed(proxy, "POST", "/off/shape?echo=1", &big, &big).0);
            // Trailers over HTTP/2: the response's times (a prefix before them).
            let long = shape_text(80_000);
            let (f, took) = timed_h2(proxy, "GET", "/trailers/shape?n=80000", b"", &long);
            at_least(&f, took, 150);
            facts.push(f);
            // Request and response times, without a prefix; the response waits for the
            // bucket the request emptied.
            let (f, took) = timed_h2(proxy, "POST", "/trailers-both/shape?echo=1", &long, &long);
            at_least(&f, took, 1_000);
            facts.push(f);
            // Over HTTP/1.1 with a length the trailers do not go.
            facts.push(timed(proxy, "GET", "/trailers/shape?n=100", b"", &shape_text(100)).0);
            // Small bodies through a wide limit, and bodiless requests and responses
            // (counted as enabled, never pending).
            for n in [1usize, 10, 100, 1_000, 10_000] {
                let body = shape_text(n);
                facts.push(timed(proxy, "GET", &format!("/fast/shape?n={n}"), b"", &body).0);
                facts.push(timed(proxy, "POST", "/fast/shape?echo=1", &body, &body).0);
            }
            facts.push(timed(proxy, "GET", "/fast/shape?status=204", b"", b"").0);
            facts.push(timed(proxy, "HEAD", "/fast/shape?n=10", b"", b"").0);
            facts.push(
                timed(
                    proxy,
                    "GET",
                    "/fast/shape?n=10&chunked=1&chunks=3",
                    b"",
                    &shape_text(10),
                )
                .0,
            );
            facts.extend(counters(proxy));
            facts
        },
    );
    assert!(facts.len() > 20 + PREFIXES.len(), "{facts:#?}");
    assert!(
        facts.iter().all(|f| !f.contains("same=false")),
        "{facts:#?}"
    );
}

#[test]
fn a_paced_body_holds_neither_the_worker_nor_anything_once_its_client_goes() {
    let a = Upstream::start("a");
    let proxy = Courier::start(&boot(&a));
    let pending = "resp.http_bandwidth_limit.response_pending";
    // 256 KiB at 32 KiB/s: seven seconds of pacing; the client reads the head and stops.
    let mut slow = Client::connect(proxy.listener);
    slow.send_raw(b"GET /resp/shape?n=262144 HTTP/1.1\r\nhost: h\r\n\r\n");
    let (status, _) = read_head(&mut slow.reader).expect("the paced response's head");
    assert!(status.contains(" 200 "), "{status}");
    assert_eq!(proxy.wait_stat(pending, 1), 1);
    // The one worker answers others meanwhile, the paced body still going.
    let r = get(proxy.listener, "h", "/nobw/shape?n=10", &[]);
    assert_eq!((r.status, r.body), (200, shape_text(10)));
    assert_eq!(proxy.stat(pending), 1, "still paced");
    // The client leaves: its body, its timer and its count go (Envoy's count stays).
    drop(slow);
    let deadline = Instant::now() + Duration::from_secs(10);
    while proxy.stat(pending) != 0 && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(20));
    }
    assert_eq!(proxy.stat(pending), 0);
}

#[test]
fn configs_envoy_refuses_are_refused() {
    let a = Upstream::start("a");
    let base = boot(&a);
    for (from, to, want) in [
        (
            "stat_prefix: resp, enable_mode: RESPONSE, limit_kbps: 32",
            "stat_prefix: resp, enable_mode: RESPONSE",
            "limit must be set for per route filter config",
        ),
        (
            "fill_interval: 0.1s",
            "fill_interval: 0.01s",
            "fill_interval",
        ),
        ("fill_interval: 0.1s", "fill_interval: 2s", "fill_interval"),
        ("stat_prefix: fast, ", "", "stat_prefix"),
        ("limit_kbps: 100000", "limit_kbps: 0", "limit_kbps"),
    ] {
        let bad = base.replacen(from, to, 1);
        if let Some((code, text)) = envoy_validate(&bad) {
            assert_ne!(code, Some(0), "envoy took {to}: {text}");
        }
        assert_refused_by_path(&base, &[(from, to, want)]);
    }
}
