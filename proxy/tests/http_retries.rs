//! Retries, per-try timeouts and circuit breakers through courier's router.

mod http_support;

use std::sync::atomic::Ordering;

use http_support::*;

const ROUTES: &str = r#"            name: local
            virtual_hosts:
            - name: main
              domains: ["*"]
              routes:
              - match: { prefix: "/retry5xx" }
                route:
                  cluster: a
                  retry_policy: { retry_on: "5xx", num_retries: 2, retry_back_off: { base_interval: 0.005s } }
              - match: { prefix: "/retrycodes" }
                route:
                  cluster: a
                  retry_policy: { retry_on: "retriable-status-codes", retriable_status_codes: [418], num_retries: 1, retry_back_off: { base_interval: 0.005s } }
              - match: { prefix: "/pertry" }
                route:
                  cluster: a
                  timeout: 2s
                  retry_policy: { retry_on: "5xx", num_retries: 1, per_try_timeout: 0.1s, retry_back_off: { base_interval: 0.005s } }
              - match: { prefix: "/connect" }
                route:
                  cluster: mixed
                  retry_policy: { retry_on: "connect-failure", num_retries: 1, retry_back_off: { base_interval: 0.005s } }
              - match: { prefix: "/grpc" }
                route:
                  cluster: a
                  retry_policy: { retry_on: "unavailable,cancelled", num_retries: 1, retry_back_off: { base_interval: 0.005s } }
              - match: { prefix: "/headers" }
                route:
                  cluster: a
                  retry_policy:
                    retry_on: "retriable-headers,envoy-ratelimited"
                    num_retries: 1
                    retry_back_off: { base_interval: 0.005s }
                    retriable_headers: [{ name: x-retry-me, string_match: { exact: "yes" } }]
              - match: { prefix: "/only-marked" }
                route:
                  cluster: a
                  retry_policy:
                    retry_on: "5xx"
                    num_retries: 1
                    retry_back_off: { base_interval: 0.005s }
                    retriable_request_headers: [{ name: x-retry-ok, present_match: true }]
              - match: { prefix: "/reset-before" }
                route:
                  cluster: a
                  retry_policy: { retry_on: "reset-before-request", num_retries: 1, retry_back_off: { base_interval: 0.005s } }
              - match: { prefix: "/any-reset" }
                route:
                  cluster: a
                  retry_policy: { retry_on: "reset", num_retries: 1, retry_back_off: { base_interval: 0.005s } }
              - match: { prefix: "/small-buffer" }
                route:
                  cluster: a
                  retry_policy: { retry_on: "5xx", num_retries: 1, retry_back_off: { base_interval: 0.005s } }
                per_request_buffer_limit_bytes: 1000
              - match: { prefix: "/cb" }
                route: { cluster: limited }
              - match: { prefix: "/" }
                route: { cluster: a }
"#;

fn setup() -> (Courier, Upstream, Upstream) {
    let a = Upstream::start("a");
    let l = Upstream::start("limited");
    let dead = refusing_addr();
    let clusters = format!(
        "{}{}{}",
        cluster("a", &[a.addr], ""),
        cluster("mixed", &[dead, a.addr], ""),
        cluster(
            "limited",
            &[l.addr],
            "    circuit_breakers:\n      thresholds:\n      - { max_connections: 1, max_pending_requests: 1, max_requests: 2 }\n"
        ),
    );
    let c = Courier::start(&bootstrap(ROUTES, "", &clusters));
    (c, a, l)
}

#[test]
fn http_retries_on_5xx_until_success() {
    let (c, a, _l) = setup();
    let r = get(c.listener, "h", "/retry5xx/flaky/2", &[]);
    assert_eq!(r.status, 200);
    assert_eq!(a.requests.load(Ordering::SeqCst), 3);
    assert_eq!(c.wait_stat("cluster.a.upstream_rq_retry", 2), 2);
    assert_eq!(c.wait_stat("cluster.a.upstream_rq_retry_success", 1), 1);
    // As Envoy, the retried answers are counted apart from the one the request ends with.
    assert_eq!(c.wait_stat("cluster.a.retry.upstream_rq_503", 2), 2);
    assert_eq!(c.stat("cluster.a.upstream_rq_503"), 0);
    assert_eq!(c.stat("cluster.a.upstream_rq_200"), 1);
    // Retries exhausted: the last upstream response is returned.
    let r = get(c.listener, "h", "/retry5xx/flaky/5", &[]);
    assert_eq!(r.status, 503);
    assert_eq!(r.body_str(), "flaky");
    // Retriable status codes.
    let r = get(c.listener, "h", "/retrycodes/status/418", &[]);
    assert_eq!(r.status, 418);
    // Retries keep the request body.
    let r =
        Client::connect(c.listener).request("POST", "h", "/retry5xx/flaky/1/echo", &[], b"payload");
    assert_eq!(r.status, 200);
    assert_eq!(a.last().map(|s| s.body), Some(b"payload".to_vec()));
}

#[test]
fn http_per_try_timeout_and_connect_failure_retry() {
    let (c, _a, _l) = setup();
    let r = get(c.listener, "h", "/pertry/delay/1000", &[]);
    assert_eq!(r.status, 504);
    assert_eq!(r.body_str(), "upstream request timeout");
    assert!(c.wait_stat("cluster.a.upstream_rq_per_try_timeout", 2) >= 2);
    // Half the hosts refuse connections; one retry on connect-failure always succeeds.
    for _ in 0..6 {
        let r = get(c.listener, "h", "/connect", &[]);
        assert_eq!(r.status, 200, "{}", r.body_str());
    }
    assert!(c.wait_stat("cluster.mixed.upstream_cx_connect_fail", 1) >= 1);
}

#[test]
fn http_circuit_breakers_overflow() {
    let (c, _a, l) = setup();
    let addr = c.listener;
    // max_connections 1, max_pending_requests 1: of three concurrent slow requests one is
    // served, one waits for the connection, one overflows.
    let handles: Vec<_> = (0..3)
        .map(|_| std::thread::spawn(move || get(addr, "h", "/cb/delay/400", &[])))
        .collect();
    let results: Vec<Resp> = handles
        .into_iter()
        .map(|h| h.join().expect("thread"))
        .collect();
    let ok = results.iter().filter(|r| r.status == 200).count();
    let overflow: Vec<&Resp> = results.iter().filter(|r| r.status == 503).collect();
    assert_eq!(ok, 2, "{results:?}");
    assert_eq!(overflow.len(), 1, "{results:?}");
    assert_eq!(overflow[0].header("x-envoy-overloaded"), Some("true"));
    assert_eq!(
        overflow[0].body_str(),
        "upstream connect error or disconnect/reset before headers. reset reason: overflow"
    );
    assert_eq!(
        c.wait_stat("cluster.limited.upstream_rq_pending_overflow", 1),
        1
    );
    assert_eq!(l.connections.load(Ordering::SeqCst), 1);
}

/// `ROUTES` with every cluster it names served by `a`.
fn one_upstream_boot(a: &Upstream) -> String {
    let clusters: String = ["a", "mixed", "limited"]
        .iter()
        .map(|n| cluster(n, &[a.addr], ""))
        .collect();
    bootstrap(ROUTES, "", &clusters)
}

/// What a proxy does with request bodies past the buffer limit for retries: each reply,
/// how many attempts the upstream saw, and how much body the last one carried.
fn buffer_limit_cases(p: &Courier, a: &Upstream) -> Vec<String> {
    let mut seen = Vec::new();
    let cases: [(&str, usize); 3] = [
        // Under the route's `per_request_buffer_limit_bytes`: buffered, retried.
        ("/small-buffer/flaky/1/under", 1000),
        // Over it: sent once, streamed, without a retry.
        ("/small-buffer/flaky/1/over", 1001),
        // Over the listener's default (1 MiB) on a route without a limit.
        ("/retry5xx/flaky/1/huge", 2_000_000),
    ];
    for (path, len) in cases {
        let before = a.requests.load(Ordering::SeqCst);
        let r = Client::connect(p.listener).request("POST", "h", path, &[], &vec![b'x'; len]);
        let attempts = a.requests.load(Ordering::SeqCst) - before;
        let body = a.last().map_or(0, |s| s.body.len());
        seen.push(format!(
            "{path} ({len} bytes): {} after {attempts} attempt(s), last carried {body}",
            r.status
        ));
    }
    seen.push(format!(
        "retry_or_shadow_abandoned={}",
        p.wait_stat("cluster.a.retry_or_shadow_abandoned", 2)
    ));
    seen
}

/// A request body past its buffer limit goes upstream streamed, without retries
/// (`retry_or_shadow_abandoned`), as in Envoy; it was refused with `413`.
#[test]
fn request_bodies_past_the_buffer_limit_go_without_retries() {
    let a = Upstream::start("a");
    let courier = Courier::start(&one_upstream_boot(&a));
    let got = buffer_limit_cases(&courier, &a);
    assert_eq!(
        got,
        [
            "/small-buffer/flaky/1/under (1000 bytes): 200 after 2 attempt(s), last carried 1000",
            "/small-buffer/flaky/1/over (1001 bytes): 503 after 1 attempt(s), last carried 1001",
            "/retry5xx/flaky/1/huge (2000000 bytes): 503 after 1 attempt(s), last carried 2000000",
            "retry_or_shadow_abandoned=2",
        ]
    );
    let a = Upstream::start("a");
    let Some(envoy) = Courier::start_envoy(&one_upstream_boot(&a)) else {
        eprintln!("envoy not on PATH: skipping the buffer limit differential");
        return;
    };
    assert_eq!(buffer_limit_cases(&envoy, &a), got, "envoy vs courier");
}

/// A request: method, path, header fields.
type RawRequest<'a> = (&'a str, &'a str, &'a [(&'a str, &'a str)]);

/// Retry conditions beyond status codes: each case's reply and the attempts it took.
fn retry_condition_cases(p: &Courier, a: &Upstream) -> Vec<String> {
    let cases: [RawRequest<'_>; 10] = [
        // A trailers-only gRPC answer whose `grpc-status` is listed: retried.
        ("GET", "/grpc/flaky-header/1/grpc-status=14", &[]),
        ("GET", "/grpc/flaky-header/1/grpc-status=1", &[]),
        // Not listed (INVALID_ARGUMENT): passed on.
        ("GET", "/grpc/flaky-header/1/grpc-status=3", &[]),
        // A response header matching `retriable_headers`, or `x-envoy-ratelimited`.
        ("GET", "/headers/flaky-header/1/x-retry-me=yes", &[]),
        ("GET", "/headers/flaky-header/1/x-retry-me=no", &[]),
        ("GET", "/headers/flaky-header/1/x-envoy-ratelimited=1", &[]),
        // `retriable_request_headers`: only marked requests are retried.
        ("GET", "/only-marked/flaky/1/marked", &[("x-retry-ok", "1")]),
        ("GET", "/only-marked/flaky/1/unmarked", &[]),
        // The upstream reads the request, then closes: a reset after the request was
        // sent, which `reset-before-request` does not retry and `reset` does.
        ("POST", "/reset-before/close", &[]),
        ("POST", "/any-reset/close", &[]),
    ];
    let mut seen = Vec::new();
    for (method, path, headers) in cases {
        let before = a.requests.load(Ordering::SeqCst);
        let r = Client::connect(p.listener).request(method, "h", path, headers, b"body");
        let attempts = a.requests.load(Ordering::SeqCst) - before;
        seen.push(format!(
            "{method} {path}: {} {:?} after {attempts}",
            r.status,
            r.body_str().split(' ').next().unwrap_or("")
        ));
    }
    seen
}

/// gRPC, header and request-header retry conditions, and `reset-before-request` against
/// `reset`, as Envoy retries them (they were accepted and never triggered, and
/// `reset-before-request` retried like `reset`).
#[test]
fn retry_conditions_match_envoy() {
    let a = Upstream::start("a");
    let courier = Courier::start(&one_upstream_boot(&a));
    let got = retry_condition_cases(&courier, &a);
    assert_eq!(
        got,
        [
            "GET /grpc/flaky-header/1/grpc-status=14: 200 \"a\" after 2",
            "GET /grpc/flaky-header/1/grpc-status=1: 200 \"a\" after 2",
            "GET /grpc/flaky-header/1/grpc-status=3: 200 \"flaky\" after 1",
            "GET /headers/flaky-header/1/x-retry-me=yes: 200 \"a\" after 2",
            "GET /headers/flaky-header/1/x-retry-me=no: 200 \"flaky\" after 1",
            "GET /headers/flaky-header/1/x-envoy-ratelimited=1: 200 \"a\" after 2",
            "GET /only-marked/flaky/1/marked: 200 \"a\" after 2",
            "GET /only-marked/flaky/1/unmarked: 503 \"flaky\" after 1",
            "POST /reset-before/close: 503 \"upstream\" after 1",
            "POST /any-reset/close: 503 \"upstream\" after 2",
        ]
    );
    let a = Upstream::start("a");
    let Some(envoy) = Courier::start_envoy(&one_upstream_boot(&a)) else {
        eprintln!("envoy not on PATH: skipping the retry conditions differential");
        return;
    };
    assert_eq!(retry_condition_cases(&envoy, &a), got, "envoy vs courier");
}

/// A cluster's `retry_budget` replaces `max_retries`: with no budget (0%, no minimum)
/// every retry overflows; a minimum of one lets one through. As Envoy (it was accepted
/// without effect).
#[test]
fn retry_budgets_match_envoy() {
    let routes = r#"            name: local
            virtual_hosts:
            - name: main
              domains: ["*"]
              routes:
              - match: { prefix: "/none" }
                route: { cluster: none, retry_policy: { retry_on: "5xx", num_retries: 1, retry_back_off: { base_interval: 0.005s } } }
              - match: { prefix: "/one" }
                route: { cluster: one, retry_policy: { retry_on: "5xx", num_retries: 1, retry_back_off: { base_interval: 0.005s } } }
"#;
    let budget = |min: u32| {
        format!("    circuit_breakers:\n      thresholds:\n      - retry_budget: {{ budget_percent: {{ value: 0 }}, min_retry_concurrency: {min} }}\n")
    };
    let run = |p: &Courier, a: &Upstream| {
        let mut seen = Vec::new();
        for path in ["/none/flaky/1/x", "/one/flaky/1/x"] {
            let before = a.requests.load(Ordering::SeqCst);
            let r = get(p.listener, "h", path, &[]);
            let attempts = a.requests.load(Ordering::SeqCst) - before;
            seen.push(format!("{path}: {} after {attempts}", r.status));
        }
        for c in ["none", "one"] {
            let name = format!("cluster.{c}.upstream_rq_retry_overflow");
            seen.push(format!("{name}={}", p.stat(&name)));
        }
        seen
    };
    let boot = |a: &Upstream| {
        let clusters = [
            cluster("none", &[a.addr], &budget(0)),
            cluster("one", &[a.addr], &budget(1)),
        ]
        .concat();
        bootstrap(routes, "", &clusters)
    };
    let a = Upstream::start("a");
    let got = run(&Courier::start(&boot(&a)), &a);
    assert_eq!(
        got,
        [
            "/none/flaky/1/x: 503 after 1",
            "/one/flaky/1/x: 200 after 2",
            "cluster.none.upstream_rq_retry_overflow=1",
            "cluster.one.upstream_rq_retry_overflow=0",
        ]
    );
    let a = Upstream::start("a");
    let Some(envoy) = Courier::start_envoy(&boot(&a)) else {
        eprintln!("envoy not on PATH: skipping the retry budget differential");
        return;
    };
    assert_eq!(run(&envoy, &a), got, "envoy vs courier");
}

/// `per_host_thresholds.max_connections`: requests past a host's limit wait for its
/// connection rather than open another (counted in `upstream_cx_overflow`). As Envoy (it
/// was accepted without effect).
#[test]
fn per_host_connection_limit_matches_envoy() {
    let routes = r#"            name: local
            virtual_hosts:
            - name: main
              domains: ["*"]
              routes:
              - match: { prefix: "/" }
                route: { cluster: ph }
"#;
    let limit = "    circuit_breakers:\n      per_host_thresholds:\n      - max_connections: 1\n";
    let run = |p: &Courier, a: &Upstream| {
        let listener = p.listener;
        let threads: Vec<_> = (0..3)
            .map(|_| std::thread::spawn(move || get(listener, "h", "/delay/300", &[]).status))
            .collect();
        let statuses: Vec<u16> = threads
            .into_iter()
            .map(|t| t.join().expect("request thread"))
            .collect();
        let overflowed = p.stat("cluster.ph.upstream_cx_overflow") > 0;
        let connections = a.connections.load(Ordering::SeqCst);
        // A streamed upload, then a bodiless request: the host's one connection serves
        // both in turn (Courier keeps them apart, so the idle one of the first kind is
        // closed to make room rather than blocking the second).
        let mut c = Client::connect(listener);
        c.send_raw(b"POST /streamed HTTP/1.1\r\nhost: h\r\ntransfer-encoding: chunked\r\n\r\n3\r\nabc\r\n0\r\n\r\n");
        let streamed = c.read().map_or(0, |r| r.status);
        let plain = get(listener, "h", "/plain", &[]).status;
        (statuses, connections, overflowed, streamed, plain)
    };
    let a = Upstream::start("a");
    let boot = bootstrap(routes, "", &cluster("ph", &[a.addr], limit));
    let got = run(&Courier::start(&boot), &a);
    assert_eq!(got, (vec![200, 200, 200], 1, true, 200, 200));
    let a = Upstream::start("a");
    let boot = bootstrap(routes, "", &cluster("ph", &[a.addr], limit));
    let Some(envoy) = Courier::start_envoy(&boot) else {
        eprintln!("envoy not on PATH: skipping the per-host limit differential");
        return;
    };
    assert_eq!(run(&envoy, &a), got, "envoy vs courier");
}

/// On a route with retries a request body goes upstream as it arrives (a copy kept for a
/// retry), as Envoy: an upstream that answers on the head answers a request whose body is
/// still coming (it used to be held until the whole body was in), and a retry sends the
/// body again whole, what came before the first attempt failed and after.
#[test]
fn streamed_bodies_go_upstream_at_once_and_replay_on_retry() {
    let routes = r#"            name: local
            virtual_hosts:
            - name: main
              domains: ["*"]
              routes:
              - match: { prefix: "/early" }
                route: { cluster: early, retry_policy: { retry_on: "5xx", num_retries: 1 } }
              - match: { prefix: "/" }
                route: { cluster: a, retry_policy: { retry_on: "5xx", num_retries: 1, retry_back_off: { base_interval: 0.005s } } }
"#;
    // Answers every request as soon as its head is in.
    let early = {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        let addr = listener.local_addr().expect("addr");
        std::thread::spawn(move || {
            for mut s in listener.incoming().flatten() {
                std::thread::spawn(move || {
                    let mut head = Vec::new();
                    let mut b = [0u8; 1];
                    while !head.ends_with(b"\r\n\r\n") {
                        match std::io::Read::read(&mut s, &mut b) {
                            Ok(1) => head.push(b[0]),
                            _ => return,
                        }
                    }
                    let _ = std::io::Write::write_all(
                        &mut s,
                        b"HTTP/1.1 200 OK\r\ncontent-length: 5\r\nconnection: close\r\n\r\nearly",
                    );
                });
            }
        });
        addr
    };
    let run = |p: &Courier, a: &Upstream| {
        // The body's end never comes: the answer does.
        let mut c = Client::connect(p.listener);
        c.send_raw(
            b"POST /early HTTP/1.1\r\nhost: h\r\ntransfer-encoding: chunked\r\n\r\n3\r\nabc\r\n",
        );
        let early_status = c.read().map_or(0, |r| r.status);
        // Half the body; once the first attempt is under way (the upstream has its
        // connection), the rest. The first attempt gets 503, the retry the whole body.
        let mut c = Client::connect(p.listener);
        c.send_raw(b"POST /flaky/1/streamed HTTP/1.1\r\nhost: h\r\ntransfer-encoding: chunked\r\n\r\n3\r\nabc\r\n");
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        while a.connections.load(Ordering::SeqCst) == 0 {
            assert!(
                std::time::Instant::now() < deadline,
                "no attempt before the body's end"
            );
            std::thread::sleep(std::time::Duration::from_millis(5));
        }
        c.send_raw(b"3\r\ndef\r\n0\r\n\r\n");
        let retried = c.read().map_or(0, |r| r.status);
        let body = a
            .last()
            .map(|s| String::from_utf8_lossy(&s.body).into_owned());
        (early_status, retried, body)
    };
    let boot = |a: &Upstream| {
        let clusters = [cluster("a", &[a.addr], ""), cluster("early", &[early], "")].concat();
        bootstrap(routes, "", &clusters)
    };
    let a = Upstream::start("a");
    let got = run(&Courier::start(&boot(&a)), &a);
    assert_eq!(got, (200, 200, Some("abcdef".to_string())));
    let a = Upstream::start("a");
    let Some(envoy) = Courier::start_envoy(&boot(&a)) else {
        eprintln!("envoy not on PATH: skipping the streamed retry body differential");
        return;
    };
    assert_eq!(run(&envoy, &a), got, "envoy vs courier");
}

/// A virtual host's `include_request_attempt_count`, `include_attempt_count_in_response`
/// and `include_is_timeout_retry_header`: `x-envoy-attempt-count` on each upstream request
/// (1, then 2 on the retry) and on the response, and `x-envoy-is-timeout-retry` on a retry
/// (`true` after a per-try timeout). As Envoy (they were accepted without effect).
#[test]
fn attempt_counts_match_envoy() {
    let routes = r#"            name: local
            virtual_hosts:
            - name: main
              domains: ["*"]
              include_request_attempt_count: true
              include_attempt_count_in_response: true
              include_is_timeout_retry_header: true
              routes:
              - match: { prefix: "/" }
                route: { cluster: a, retry_policy: { retry_on: "5xx", num_retries: 1, per_try_timeout: 0.3s, retry_back_off: { base_interval: 0.005s } } }
"#;
    let run = |p: &Courier, a: &Upstream| {
        let mut out = Vec::new();
        for path in ["/flaky/1/counted", "/delay/600"] {
            let r = get(p.listener, "h", path, &[]);
            out.push(format!(
                "{path}: {} x-envoy-attempt-count={:?}",
                r.status,
                r.header("x-envoy-attempt-count")
            ));
        }
        for s in a.seen.lock().expect("seen").iter() {
            out.push(format!(
                "upstream {}: attempt {:?} timeout retry {:?}",
                s.path,
                s.header("x-envoy-attempt-count"),
                s.header("x-envoy-is-timeout-retry")
            ));
        }
        out
    };
    let a = Upstream::start("a");
    let boot = bootstrap(routes, "", &cluster("a", &[a.addr], ""));
    let got = run(&Courier::start(&boot), &a);
    assert_eq!(
        got,
        [
            "/flaky/1/counted: 200 x-envoy-attempt-count=Some(\"2\")",
            "/delay/600: 504 x-envoy-attempt-count=Some(\"2\")",
            "upstream /flaky/1/counted: attempt Some(\"1\") timeout retry None",
            "upstream /flaky/1/counted: attempt Some(\"2\") timeout retry Some(\"false\")",
            "upstream /delay/600: attempt Some(\"1\") timeout retry None",
            "upstream /delay/600: attempt Some(\"2\") timeout retry Some(\"true\")",
        ]
    );
    let a = Upstream::start("a");
    let boot = bootstrap(routes, "", &cluster("a", &[a.addr], ""));
    let Some(envoy) = Courier::start_envoy(&boot) else {
        eprintln!("envoy not on PATH: skipping the attempt count differential");
        return;
    };
    assert_eq!(run(&envoy, &a), got, "envoy vs courier");
}
