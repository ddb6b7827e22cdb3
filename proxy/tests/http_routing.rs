//! End-to-end HTTP/1.1 through courier's http_connection_manager: routing, actions,
//! header mutations, keep-alive pools, local replies and stats.

mod http_support;

use http_support::*;

fn routes(a: &Upstream, b: &Upstream) -> (String, String) {
    let route_config = r#"            name: local
            validate_clusters: false
            response_headers_to_add:
            - header: { key: x-global, value: g }
            virtual_hosts:
            - name: exact
              domains: ["exact.example.com"]
              routes:
              - match: { prefix: "/" }
                route: { cluster: b }
            - name: suffix
              domains: ["*.wild.com"]
              routes:
              - match: { prefix: "/" }
                direct_response: { status: 200, body: { inline_string: "suffix" } }
            - name: prefix
              domains: ["pre.*"]
              routes:
              - match: { prefix: "/" }
                direct_response: { status: 200, body: { inline_string: "prefix" } }
            - name: main
              domains: ["*"]
              request_headers_to_add:
              - header: { key: x-vh, value: v }
              response_headers_to_add:
              - header: { key: x-vh-resp, value: v }
              routes:
              - match: { path: "/exact" }
                route: { cluster: a }
              - match: { safe_regex: { regex: "/re/[0-9]+" } }
                route: { cluster: b }
              - match: { prefix: "/hdr", headers: [ { name: x-pick, string_match: { exact: b } } ] }
                route: { cluster: b }
              - match: { prefix: "/q", query_parameters: [ { name: pick, string_match: { exact: b } } ] }
                route: { cluster: b }
              - match: { path_separated_prefix: "/sep" }
                route: { cluster: b }
              - match: { prefix: "/rewrite/" }
                route: { cluster: a, prefix_rewrite: "/new/" }
              - match: { prefix: "/rx/" }
                route:
                  cluster: a
                  regex_rewrite: { pattern: { regex: "^/rx/(\\w+)/(\\w+)$" }, substitution: "/\\2/\\1" }
              - match: { prefix: "/host-literal" }
                route: { cluster: a, host_rewrite_literal: rewritten.example }
              - match: { prefix: "/direct" }
                direct_response: { status: 418, body: { inline_string: "teapot" } }
              - match: { prefix: "/redirect" }
                redirect: { host_redirect: "other.example", path_redirect: "/moved", response_code: FOUND }
              - match: { prefix: "/https" }
                redirect: { https_redirect: true }
              - match: { prefix: "/weighted" }
                route:
                  weighted_clusters:
                    clusters:
                    - { name: a, weight: 0 }
                    - { name: b, weight: 100 }
              - match: { prefix: "/timeout" }
                route: { cluster: a, timeout: 0.2s }
              - match: { prefix: "/missing-cluster" }
                route: { cluster: nope }
              - match: { prefix: "/dead" }
                route: { cluster: dead }
              - match: { prefix: "/cluster-header" }
                route: { cluster_header: x-cluster }
              - match: { prefix: "/hdrs" }
                request_headers_to_add:
                - header: { key: x-route, value: "r-%DOWNSTREAM_REMOTE_ADDRESS_WITHOUT_PORT%" }
                request_headers_to_remove: [ x-remove-me ]
                response_headers_to_add:
                - header: { key: x-route-resp, value: r }
                response_headers_to_remove: [ x-upstream ]
                route: { cluster: a }
              - match: { prefix: "/" }
                route: { cluster: a }
"#
    .to_string();
    let dead = refusing_addr();
    let clusters = format!(
        "{}{}{}",
        cluster("a", &[a.addr], ""),
        cluster("b", &[b.addr], ""),
        cluster("dead", &[dead], "")
    );
    (route_config, clusters)
}

fn setup() -> (Courier, Upstream, Upstream) {
    let a = Upstream::start("a");
    let b = Upstream::start("b");
    let (rc, clusters) = routes(&a, &b);
    let c = Courier::start(&bootstrap(&rc, "", &clusters));
    (c, a, b)
}

#[test]
fn http_routing_matchers_and_actions() {
    let (c, a, b) = setup();
    let addr = c.listener;
    let who = |path: &str, host: &str, hdrs: &[(&str, &str)]| {
        let r = get(addr, host, path, hdrs);
        (
            r.status,
            r.header("x-upstream").unwrap_or("-").to_string(),
            r.body_str(),
        )
    };
    // Virtual hosts.
    assert_eq!(who("/", "exact.example.com", &[]).1, "b");
    assert_eq!(who("/", "x.wild.com", &[]).2, "suffix");
    assert_eq!(who("/", "pre.anything", &[]).2, "prefix");
    assert_eq!(who("/", "other", &[]).1, "a");
    // Path matchers.
    assert_eq!(who("/exact", "h", &[]).1, "a");
    assert_eq!(who("/re/42", "h", &[]).1, "b");
    assert_eq!(who("/re/4x", "h", &[]).1, "a");
    assert_eq!(who("/hdr", "h", &[("x-pick", "b")]).1, "b");
    assert_eq!(who("/hdr", "h", &[("x-pick", "c")]).1, "a");
    assert_eq!(who("/q?x=1&pick=b", "h", &[]).1, "b");
    assert_eq!(who("/sep/x", "h", &[]).1, "b");
    assert_eq!(who("/sepx", "h", &[]).1, "a");
    // Rewrites.
    let (_, up, body) = who("/rewrite/x?y=1", "h", &[]);
    assert_eq!(up, "a");
    assert_eq!(body, "a GET /new/x?y=1");
    assert_eq!(
        a.last()
            .and_then(|s| s.header("x-envoy-original-path").map(String::from))
            .as_deref(),
        Some("/rewrite/x?y=1")
    );
    assert_eq!(who("/rx/one/two", "h", &[]).2, "a GET /two/one");
    who("/host-literal", "h", &[]);
    assert_eq!(
        a.last()
            .and_then(|s| s.header("host").map(String::from))
            .as_deref(),
        Some("rewritten.example")
    );
    // Direct responses and redirects.
    let r = get(addr, "h", "/direct", &[]);
    assert_eq!((r.status, r.body_str().as_str()), (418, "teapot"));
    assert_eq!(r.header("x-global"), Some("g"));
    assert_eq!(r.header("x-vh-resp"), Some("v"));
    assert_eq!(r.header("server"), Some("envoy"));
    let r = get(addr, "h", "/redirect?a=b", &[]);
    assert_eq!(r.status, 302);
    assert_eq!(r.header("location"), Some("http://other.example/moved?a=b"));
    let r = get(addr, "h:8080", "/https/x", &[]);
    assert_eq!(r.status, 301);
    assert_eq!(r.header("location"), Some("https://h:8080/https/x"));
    // Weighted clusters.
    for _ in 0..5 {
        assert_eq!(who("/weighted", "h", &[]).1, "b");
    }
    // cluster_header.
    assert_eq!(who("/cluster-header", "h", &[("x-cluster", "b")]).1, "b");
    assert_eq!(who("/cluster-header", "h", &[]).0, 503);
    // Header mutations.
    let r = get(addr, "h", "/hdrs", &[("x-remove-me", "1")]);
    assert_eq!(r.status, 200);
    assert_eq!(r.header("x-upstream"), None);
    assert_eq!(r.header("x-route-resp"), Some("r"));
    let seen = a.last().expect("seen");
    assert_eq!(seen.header("x-route"), Some("r-127.0.0.1"));
    assert_eq!(seen.header("x-vh"), Some("v"));
    assert_eq!(seen.header("x-remove-me"), None);
    assert_eq!(seen.header("x-forwarded-proto"), Some("http"));
    assert!(seen.header("x-request-id").is_some_and(|v| v.len() == 36));
    assert_eq!(seen.header("x-envoy-expected-rq-timeout-ms"), Some("15000"));
    let _ = b;
}

#[test]
fn http_local_replies_and_stats() {
    let (c, _a, _b) = setup();
    let addr = c.listener;
    let r = get(addr, "h", "/missing-cluster", &[]);
    assert_eq!(r.status, 503);
    assert_eq!(r.body_str(), "");
    let r = get(addr, "h", "/dead", &[]);
    assert_eq!(r.status, 503);
    assert!(
        r.body_str()
            .starts_with("upstream connect error or disconnect/reset before headers"),
        "{}",
        r.body_str()
    );
    let r = get(addr, "h", "/timeout/delay/2000", &[]);
    assert_eq!(r.status, 504);
    assert_eq!(r.body_str(), "upstream request timeout");
    assert_eq!(r.header("content-type"), Some("text/plain"));
    let r = get(addr, "h", "/", &[]);
    assert_eq!(r.status, 200);
    assert!(r.header("x-envoy-upstream-service-time").is_some());
    assert!(c.wait_stat("http.ingress.downstream_rq_total", 4) >= 4);
    assert!(c.wait_stat("http.ingress.downstream_rq_5xx", 3) >= 3);
    assert!(c.wait_stat("http.ingress.downstream_rq_2xx", 1) >= 1);
    assert!(c.wait_stat("http.ingress.no_cluster", 1) >= 1);
    assert!(c.wait_stat("cluster.a.upstream_rq_timeout", 1) >= 1);
    assert!(c.wait_stat("cluster.a.upstream_rq_200", 1) >= 1);
    assert!(c.wait_stat("cluster.dead.upstream_cx_connect_fail", 1) >= 1);
    assert!(c.wait_stat("http.ingress.downstream_cx_http1_total", 4) >= 4);
    // Request-time histograms: every completed request counted, the timed-out one in a
    // bucket above the route timeout.
    let count_line =
        "envoy_http_downstream_rq_time_count{envoy_http_conn_manager_prefix=\"ingress\"}";
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
    let prom = loop {
        let prom = admin_get(c.admin, "/stats/prometheus").unwrap_or_default();
        let count = prom
            .lines()
            .find_map(|l| l.strip_prefix(count_line))
            .and_then(|v| v.trim().parse::<u64>().ok())
            .unwrap_or(0);
        if count >= 4 {
            break prom;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "histogram count {count}: {prom}"
        );
        std::thread::sleep(std::time::Duration::from_millis(20));
    };
    assert!(prom.contains("# TYPE envoy_http_downstream_rq_time histogram"));
    assert!(prom.contains(
        "envoy_http_downstream_rq_time_bucket{envoy_http_conn_manager_prefix=\"ingress\",le=\"+Inf\"}"
    ));
    let bucket = |le: &str| -> u64 {
        let prefix = format!(
            "envoy_http_downstream_rq_time_bucket{{envoy_http_conn_manager_prefix=\"ingress\",le=\"{le}\"}}"
        );
        prom.lines()
            .find_map(|l| l.strip_prefix(prefix.as_str()))
            .and_then(|v| v.trim().parse().ok())
            .unwrap_or_else(|| panic!("no le={le} bucket in {prom}"))
    };
    // The 504 came after the 0.2 s route timeout: above 100 ms, within 500 ms.
    assert!(bucket("100") < bucket("500"), "{prom}");
    assert!(prom.contains("envoy_cluster_upstream_rq_time_count{envoy_cluster_name=\"a\"}"));
    let text = admin_get(c.admin, "/stats?filter=downstream_rq_time").unwrap_or_default();
    let line = text
        .lines()
        .find(|l| l.starts_with("http.ingress.downstream_rq_time: "))
        .unwrap_or_else(|| panic!("no histogram line in {text}"));
    assert!(
        line.contains(" P50(nan,") && line.contains(" P100(nan,"),
        "{line}"
    );
}

#[test]
fn http_keepalive_reuses_upstream_connections() {
    let (c, a, _b) = setup();
    let mut client = Client::connect(c.listener);
    for i in 0..20 {
        let r = client.get("h", &format!("/k/{i}"), &[]);
        assert_eq!(r.status, 200);
        assert_eq!(r.body_str(), format!("a GET /k/{i}"));
    }
    // One downstream connection, sequential requests: one upstream connection.
    assert_eq!(a.connections.load(std::sync::atomic::Ordering::SeqCst), 1);
    // POST bodies, chunked request bodies.
    let r = client.request("POST", "h", "/echo", &[], b"hello body");
    assert_eq!(r.body_str(), "hello body");
    client.send_raw(b"POST /echo HTTP/1.1\r\nhost: h\r\ntransfer-encoding: chunked\r\n\r\n5\r\nhello\r\n6\r\n world\r\n0\r\n\r\n");
    let r = client.read().expect("response");
    assert_eq!(r.body_str(), "hello world");
    // Pipelined requests are answered in order.
    client.send_raw(b"GET /p/1 HTTP/1.1\r\nhost: h\r\n\r\nGET /p/2 HTTP/1.1\r\nhost: h\r\n\r\n");
    assert_eq!(client.read().expect("first").body_str(), "a GET /p/1");
    assert_eq!(client.read().expect("second").body_str(), "a GET /p/2");
    // Connection: close is honoured.
    let r = client.get("h", "/bye", &[("connection", "close")]);
    assert_eq!(r.status, 200);
    assert!(client.closed());
}

#[test]
fn http_bad_requests_get_envoy_codes() {
    let (c, _a, _b) = setup();
    // Each is Envoy's codec reply: the status, its reason as the body, and a close.
    let cases: &[(&[u8], u16)] = &[
        (b"GET / HTTP/1.0\r\nhost: h\r\n\r\n", 426),
        (b"GARBAGE\r\n\r\n", 400),
        (b"POST /echo HTTP/1.1\r\nhost: h\r\ncontent-length: 3\r\ntransfer-encoding: chunked\r\n\r\n0\r\n\r\n", 400),
        (b"POST /echo HTTP/1.1\r\nhost: h\r\ncontent-length: 3\r\ncontent-length: 4\r\n\r\nabcd", 400),
        (b"POST /echo HTTP/1.1\r\nhost: h\r\ntransfer-encoding: chunked\r\n\r\nzz\r\nabc\r\n0\r\n\r\n", 400),
        (b"POST /echo HTTP/1.1\r\nhost: h\r\ntransfer-encoding: gzip\r\n\r\n", 501),
        (b"GET / HTTP/1.1\r\nhost: h\r\nx-a: b\r\n  folded\r\n\r\n", 400),
    ];
    for (raw, status) in cases {
        let mut cl = Client::connect(c.listener);
        cl.send_raw(raw);
        let r = cl.read().expect("a reply");
        let what = String::from_utf8_lossy(raw);
        assert_eq!(r.status, *status, "{what}");
        assert_eq!(r.header("connection"), Some("close"), "{what}");
        let reason = http::StatusCode::from_u16(*status)
            .ok()
            .and_then(|s| s.canonical_reason())
            .unwrap_or_default();
        assert_eq!(r.body_str(), reason, "{what}");
        assert!(cl.closed(), "{what}");
    }
    // Oversized headers.
    let mut cl = Client::connect(c.listener);
    let big = "x".repeat(70 * 1024);
    cl.send_raw(format!("GET / HTTP/1.1\r\nhost: h\r\nx-big: {big}\r\n\r\n").as_bytes());
    assert_eq!(cl.read().expect("a reply").status, 431);
    // Missing host.
    let mut cl = Client::connect(c.listener);
    cl.send_raw(b"GET / HTTP/1.1\r\n\r\n");
    assert_eq!(cl.read().expect("resp").status, 400);
    let stats =
        admin_get(c.admin, "/stats?filter=downstream_cx_protocol_error").unwrap_or_default();
    assert!(
        stats.contains("http.ingress.downstream_cx_protocol_error: 8"),
        "{stats}"
    );
    // The worker still serves everyone else.
    assert_eq!(get(c.listener, "h", "/", &[]).status, 200);
}

#[test]
fn slow_request_heads_get_408() {
    let a = Upstream::start("a");
    let b = Upstream::start("b");
    let (rc, clusters) = routes(&a, &b);
    let hcm = "          request_headers_timeout: 0.3s\n";
    let c = Courier::start(&bootstrap(&rc, hcm, &clusters));
    // Slowloris: a head that never completes gets Envoy's 408 and a close.
    let mut slow = Client::connect(c.listener);
    slow.send_raw(b"GET / HTTP/1.1\r\nhost: h\r\nx-slow: ");
    let r = slow.read().expect("a reply");
    assert_eq!(r.status, 408);
    assert_eq!(r.body_str(), "request header timeout");
    assert_eq!(r.header("connection"), Some("close"));
    assert!(slow.closed());
    // Other connections are served as before.
    let mut idle = Client::connect(c.listener);
    assert_eq!(idle.get("h", "/", &[]).status, 200);
    let stats =
        admin_get(c.admin, "/stats?filter=downstream_rq_header_timeout").unwrap_or_default();
    assert!(
        stats.contains("http.ingress.downstream_rq_header_timeout: 1"),
        "{stats}"
    );
}

/// `append_x_forwarded_host`: a rewritten host's original is appended to
/// `x-forwarded-host` (not when it is the last value already). As Envoy (it was accepted
/// without effect).
#[test]
fn append_x_forwarded_host_matches_envoy() {
    let routes = r#"            name: local
            virtual_hosts:
            - name: main
              domains: ["*"]
              routes:
              - match: { prefix: "/" }
                route: { cluster: a, host_rewrite_literal: rewritten, append_x_forwarded_host: true }
"#;
    let run = |p: &Courier, a: &Upstream| -> Vec<Option<String>> {
        [None, Some("first"), Some("first,orig")]
            .into_iter()
            .map(|xfh| {
                let headers: Vec<(&str, &str)> =
                    xfh.map(|v| ("x-forwarded-host", v)).into_iter().collect();
                assert_eq!(get(p.listener, "orig", "/", &headers).status, 200);
                a.last()
                    .and_then(|s| s.header("x-forwarded-host").map(str::to_string))
            })
            .collect()
    };
    let a = Upstream::start("a");
    let boot = bootstrap(routes, "", &cluster("a", &[a.addr], ""));
    let got = run(&Courier::start(&boot), &a);
    assert_eq!(
        got,
        [
            Some("orig".to_string()),
            Some("first,orig".to_string()),
            Some("first,orig".to_string())
        ]
    );
    let a = Upstream::start("a");
    let boot = bootstrap(routes, "", &cluster("a", &[a.addr], ""));
    let Some(envoy) = Courier::start_envoy(&boot) else {
        eprintln!("envoy not on PATH: skipping the x-forwarded-host differential");
        return;
    };
    assert_eq!(run(&envoy, &a), got, "envoy vs courier");
}

/// Header matchers on pseudo-headers (`:method`, `:authority`, `:path` with its query,
/// `:scheme`; a response's `:status` in `retriable_headers`), as control planes write them
/// (Istio matches methods this way). They were refused as invalid header names.
#[test]
fn pseudo_header_matchers_match_envoy() {
    let routes = r#"            name: local
            virtual_hosts:
            - name: main
              domains: ["*"]
              routes:
              - match: { prefix: "/retry", headers: [{ name: ":method", string_match: { exact: "GET" } }] }
                route:
                  cluster: a
                  retry_policy:
                    retry_on: retriable-headers
                    num_retries: 1
                    retry_back_off: { base_interval: 0.005s }
                    retriable_headers: [{ name: ":status", range_match: { start: 500, end: 600 } }]
              - match: { prefix: "/", headers: [{ name: ":method", string_match: { exact: "POST" } }] }
                direct_response: { status: 200, body: { inline_string: "post" } }
              - match: { prefix: "/", headers: [{ name: ":authority", string_match: { prefix: "a." } }] }
                direct_response: { status: 200, body: { inline_string: "authority a" } }
              - match: { prefix: "/", headers: [{ name: ":path", string_match: { contains: "q=1" } }] }
                direct_response: { status: 200, body: { inline_string: "path with q" } }
              - match: { prefix: "/", headers: [{ name: ":scheme", string_match: { exact: "https" } }] }
                direct_response: { status: 200, body: { inline_string: "https" } }
              - match: { prefix: "/", headers: [{ name: ":unknown", present_match: true }] }
                direct_response: { status: 200, body: { inline_string: "unknown pseudo" } }
              - match: { prefix: "/", headers: [{ name: ":scheme", string_match: { exact: "http" } }] }
                direct_response: { status: 200, body: { inline_string: "http" } }
"#;
    let run = |p: &Courier, a: &Upstream| {
        let mut out = Vec::new();
        for (method, host, path) in [
            ("POST", "h", "/x"),
            ("GET", "a.example", "/x"),
            ("GET", "h", "/x?q=1"),
            ("GET", "h", "/x"),
            ("DELETE", "h", "/retry/flaky/1/x"),
            ("GET", "h", "/retry/flaky/1/y"),
        ] {
            let before = a.requests.load(std::sync::atomic::Ordering::SeqCst);
            let r = Client::connect(p.listener).request(method, host, path, &[], b"");
            let attempts = a.requests.load(std::sync::atomic::Ordering::SeqCst) - before;
            out.push(format!(
                "{method} {host} {path}: {} {:?} attempts={attempts}",
                r.status,
                r.body_str()
            ));
        }
        out
    };
    let a = Upstream::start("a");
    let boot = bootstrap(routes, "", &cluster("a", &[a.addr], ""));
    let got = run(&Courier::start(&boot), &a);
    let a2 = Upstream::start("a");
    let boot2 = bootstrap(routes, "", &cluster("a", &[a2.addr], ""));
    if let Some(envoy) = Courier::start_envoy(&boot2) {
        assert_eq!(run(&envoy, &a2), got, "envoy vs courier");
    }
    assert_eq!(
        got,
        [
            "POST h /x: 200 \"post\" attempts=0",
            "GET a.example /x: 200 \"authority a\" attempts=0",
            "GET h /x?q=1: 200 \"path with q\" attempts=0",
            "GET h /x: 200 \"http\" attempts=0",
            "DELETE h /retry/flaky/1/x: 200 \"http\" attempts=0",
            "GET h /retry/flaky/1/y: 200 \"a GET /retry/flaky/1/y\" attempts=2",
        ]
    );
}

/// A virtual host's `require_tls`: a plaintext request (by `x-forwarded-proto`) is sent to
/// `https` with a `301` before any route is matched; `EXTERNAL_ONLY` spares internal
/// requests. Behind a TLS-terminating load balancer (`x-forwarded-proto: https`, trusted
/// without `use_remote_address`) nothing is redirected. As Envoy.
#[test]
fn require_tls_matches_envoy() {
    let routes = r#"            name: local
            virtual_hosts:
            - name: all
              domains: ["all.example", "all.example:8080"]
              require_tls: ALL
              routes:
              - match: { prefix: "/only" }
                route: { cluster: a }
            - name: external
              domains: ["ext.example"]
              require_tls: EXTERNAL_ONLY
              routes:
              - match: { prefix: "/" }
                route: { cluster: a }
            - name: rest
              domains: ["*"]
              routes:
              - match: { prefix: "/" }
                route: { cluster: a }
"#;
    type Case<'a> = (&'a str, &'a str, &'a [(&'a str, &'a str)]);
    let cases: &[Case] = &[
        ("all.example", "/only/x", &[]),
        ("all.example", "/nothing/here?q=1&r=2", &[]),
        ("all.example:8080", "/only", &[]),
        ("all.example", "/only/x", &[("x-forwarded-proto", "https")]),
        ("all.example", "/only/x", &[("x-forwarded-proto", "http")]),
        ("ext.example", "/x", &[]),
        ("ext.example", "/x", &[("x-envoy-internal", "true")]),
        ("ext.example", "/x", &[("x-forwarded-proto", "https")]),
        ("other.example", "/x", &[]),
    ];
    let run = |p: &Courier, a: &Upstream| {
        let mut out = Vec::new();
        for (host, path, headers) in cases {
            let before = a.requests.load(std::sync::atomic::Ordering::SeqCst);
            let r = get(p.listener, host, path, headers);
            let upstream = a.requests.load(std::sync::atomic::Ordering::SeqCst) - before;
            let what = if r.status == 200 {
                format!("200 from {:?}", r.header("x-upstream"))
            } else {
                format!(
                    "{} location={:?} length={:?} body={:?}",
                    r.status,
                    r.header("location"),
                    r.header("content-length"),
                    r.body_str(),
                )
            };
            out.push(format!(
                "{host}{path} {headers:?}: {what} upstream={upstream}"
            ));
        }
        out
    };
    let edge = "          use_remote_address: true\n          internal_address_config: { cidr_ranges: [{ address_prefix: 127.0.0.1, prefix_len: 32 }] }\n";
    let mut reports = Vec::new();
    for hcm in ["", edge] {
        let a = Upstream::start("a");
        let got = run(
            &Courier::start(&bootstrap(routes, hcm, &cluster("a", &[a.addr], ""))),
            &a,
        );
        let a = Upstream::start("a");
        match Courier::start_envoy(&bootstrap(routes, hcm, &cluster("a", &[a.addr], ""))) {
            Some(envoy) => assert_eq!(run(&envoy, &a), got, "envoy vs courier ({hcm:?})"),
            None => eprintln!("envoy not on PATH: skipping the require_tls differential"),
        }
        reports.push(got);
    }
    let redirect =
        |to: &str| format!("301 location=Some({to:?}) length=Some(\"0\") body=\"\" upstream=0");
    let passed = "200 from Some(\"a\") upstream=1";
    let expected_plain = [
        redirect("https://all.example/only/x"),
        redirect("https://all.example/nothing/here?q=1&r=2"),
        redirect("https://all.example:8080/only"),
        passed.to_string(),
        redirect("https://all.example/only/x"),
        redirect("https://ext.example/x"),
        redirect("https://ext.example/x"),
        passed.to_string(),
        passed.to_string(),
    ];
    // At the edge `x-forwarded-proto` is the connection's own (`http`), and the loopback
    // client is internal.
    let expected_edge = [
        redirect("https://all.example/only/x"),
        redirect("https://all.example/nothing/here?q=1&r=2"),
        redirect("https://all.example:8080/only"),
        redirect("https://all.example/only/x"),
        redirect("https://all.example/only/x"),
        passed.to_string(),
        passed.to_string(),
        passed.to_string(),
        passed.to_string(),
    ];
    for (got, expected) in reports.iter().zip([expected_plain, expected_edge]) {
        let got: Vec<&str> = got
            .iter()
            .map(|l| l.split_once(": ").map_or("", |x| x.1))
            .collect();
        assert_eq!(got, expected, "{reports:#?}");
    }
}
