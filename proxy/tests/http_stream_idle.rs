//! The stream idle timeout (`stream_idle_timeout`, a route's `idle_timeout`), on Courier and
//! on a real Envoy with the same bootstrap: the same replies, the same resets, the same
//! counter.

mod http_support;

use std::io::Read;
use std::time::{Duration, Instant};

use http_support::*;

const ROUTES: &str = r#"            name: local
            virtual_hosts:
            - name: main
              domains: ["*"]
              routes:
              - match: { prefix: "/route-idle" }
                route: { cluster: a, timeout: 0s, idle_timeout: 0.2s }
              - match: { prefix: "/route-timeout" }
                route: { cluster: a, timeout: 0.3s, idle_timeout: 0s }
              - match: { prefix: "/no-idle" }
                route: { cluster: a, timeout: 0s, idle_timeout: 0s }
              - match: { prefix: "/" }
                route: { cluster: a, timeout: 0s }
"#;

const HCM: &str = "          stream_idle_timeout: 0.4s\n";

/// A GET of a `/stall/` path whose response the proxy must cut off after the head and 3
/// body bytes (the connection closes well before the upstream's 3 s stall ends).
fn cut_off_body(p: &Courier, path: &str) -> String {
    let mut c = Client::connect(p.listener);
    c.send_raw(format!("GET {path} HTTP/1.1\r\nhost: h\r\n\r\n").as_bytes());
    let started = Instant::now();
    let mut got = Vec::new();
    let _ = c.reader.read_to_end(&mut got);
    assert!(
        started.elapsed() < Duration::from_millis(2500),
        "{path}: closed late"
    );
    let text = String::from_utf8_lossy(&got);
    format!(
        "starts 200={} ends with the 3 bytes={}",
        text.starts_with("HTTP/1.1 200"),
        text.ends_with("\r\n\r\nabc")
    )
}

/// Runs every case against one proxy; returns what it saw, for comparing proxies.
fn run_cases(p: &Courier) -> Vec<String> {
    let mut seen = Vec::new();
    // Upstream silent past the connection manager's timeout: 504 "stream timeout".
    let started = Instant::now();
    let r = get(p.listener, "h", "/slow/delay/1500", &[]);
    assert!(
        started.elapsed() < Duration::from_millis(1400),
        "timed out late"
    );
    seen.push(format!("silent upstream: {} {}", r.status, r.body_str()));
    // The route's idle_timeout replaces it (shorter here)…
    let started = Instant::now();
    let r = get(p.listener, "h", "/route-idle/delay/1000", &[]);
    assert!(
        started.elapsed() < Duration::from_millis(380),
        "route timeout not used"
    );
    seen.push(format!("route idle timeout: {} {}", r.status, r.body_str()));
    // …and zero disables it.
    let r = get(p.listener, "h", "/no-idle/delay/700", &[]);
    seen.push(format!("route disables it: {} {}", r.status, r.body_str()));
    // A request body that stops arriving: 408, and the connection closes.
    let mut c = Client::connect(p.listener);
    c.send_raw(b"POST /slow/echo HTTP/1.1\r\nhost: h\r\ncontent-length: 10\r\n\r\nabc");
    let r = c.read().expect("a reply to the stalled request");
    seen.push(format!(
        "stalled request body: {} {} closed={}",
        r.status,
        r.body_str(),
        c.closed()
    ));
    // A response body that stalls after its head: the connection is closed mid-body (Envoy
    // closes a second later than Courier: its delayed close).
    seen.push(format!(
        "stalled response body: {}",
        cut_off_body(p, "/stall/3000")
    ));
    // The route timeout spans the whole response (Envoy's): a body still arriving when it
    // ends is cut off, with no idle timeout in play.
    seen.push(format!(
        "route timeout mid-body: {}",
        cut_off_body(p, "/route-timeout/stall/3000")
    ));
    // Over HTTP/2 the stream is reset instead.
    seen.push(format!(
        "route timeout mid-body, HTTP/2: {}",
        h2_body_outcome(p.listener, "/route-timeout/stall/3000")
    ));
    seen.push(format!(
        "upstream_rq_timeout={}",
        p.wait_stat("cluster.a.upstream_rq_timeout", 2)
    ));
    seen.push(format!(
        "downstream_rq_idle_timeout={}",
        p.wait_stat("http.ingress.downstream_rq_idle_timeout", 4)
    ));
    seen
}

/// An HTTP/2 GET of `path`: its status and how its body ended.
fn h2_body_outcome(addr: std::net::SocketAddr, path: &str) -> String {
    use http_body_util::BodyExt;
    block_on(async {
        let mut sender = h2_connect(addr).await;
        let req = http::Request::get(format!("http://h{path}"))
            .body(http_body_util::Empty::new())
            .expect("request");
        let (parts, mut body) = sender
            .send_request(req)
            .await
            .expect("response")
            .into_parts();
        let mut got = 0;
        let end = loop {
            match body.frame().await {
                Some(Ok(f)) => got += f.data_ref().map_or(0, |d| d.len()),
                Some(Err(_)) => break "reset",
                None => break "complete",
            }
        };
        format!("{}, body {end} after {got} bytes", parts.status.as_u16())
    })
}

#[test]
fn stream_idle_timeouts_match_envoy() {
    let a = Upstream::start("a");
    let boot = bootstrap(ROUTES, HCM, &cluster("a", &[a.addr], ""));
    let courier = Courier::start(&boot);
    let got = run_cases(&courier);
    assert_eq!(
        got,
        [
            "silent upstream: 504 stream timeout",
            "route idle timeout: 504 stream timeout",
            "route disables it: 200 a GET /no-idle/delay/700",
            "stalled request body: 408 stream timeout closed=true",
            "stalled response body: starts 200=true ends with the 3 bytes=true",
            "route timeout mid-body: starts 200=true ends with the 3 bytes=true",
            "route timeout mid-body, HTTP/2: 200, body reset after 3 bytes",
            "upstream_rq_timeout=2",
            "downstream_rq_idle_timeout=4",
        ]
    );
    let Some(envoy) = Courier::start_envoy(&boot) else {
        eprintln!("envoy not on PATH: skipping the stream idle timeout differential");
        return;
    };
    assert_eq!(run_cases(&envoy), got, "envoy vs courier");
}

/// Routes for `stream_durations_and_grpc_timeouts_match_envoy`.
const DURATION_ROUTES: &str = r#"            name: local
            virtual_hosts:
            - name: main
              domains: ["*"]
              routes:
              - match: { prefix: "/msd/" }
                route: { cluster: a, max_stream_duration: { max_stream_duration: 0.3s } }
              - match: { prefix: "/empty/" }
                route: { cluster: a, timeout: 0.2s, max_stream_duration: {} }
              - match: { prefix: "/hdr/" }
                route: { cluster: a, max_stream_duration: { grpc_timeout_header_max: 0s } }
              - match: { prefix: "/cap/" }
                route: { cluster: a, max_stream_duration: { grpc_timeout_header_max: 0.3s } }
              - match: { prefix: "/both/" }
                route: { cluster: a, max_stream_duration: { max_stream_duration: 0.5s, grpc_timeout_header_max: 0s, grpc_timeout_header_offset: 0.1s } }
              - match: { prefix: "/mgt/" }
                route: { cluster: a, max_grpc_timeout: 0s }
              - match: { prefix: "/mgc/" }
                route: { cluster: a, max_grpc_timeout: 0.3s }
"#;

/// A request: gRPC or not, its path and its `grpc-timeout`.
type DurationCase = (bool, &'static str, Option<&'static str>);

/// The cases on [`DURATION_ROUTES`].
const ROUTE_DURATION_CASES: [DurationCase; 19] = [
    // `max_stream_duration` ends the stream (gRPC's DEADLINE_EXCEEDED), and a gRPC
    // request carries it upstream as its `grpc-timeout`.
    (true, "/msd/delay/2000", None),
    (false, "/msd/delay/2000", None),
    (true, "/msd/delay/10", None),
    // With `max_stream_duration` set, the route `timeout` is not used.
    (false, "/empty/delay/700", None),
    // `grpc_timeout_header_max`: the request's `grpc-timeout` is the duration (capped;
    // less the offset), whatever the content type; without one, `max_stream_duration`.
    (true, "/hdr/delay/2000", Some("200m")),
    (true, "/hdr/delay/10", Some("300m")),
    (true, "/hdr/delay/700", None),
    (false, "/hdr/delay/2000", Some("200m")),
    (true, "/cap/delay/2000", Some("5S")),
    // The server is told the capped deadline (`300m`), or the route timeout below.
    (true, "/cap/delay/10", Some("5S")),
    (true, "/mgc/delay/10", None),
    (true, "/both/delay/2000", Some("400m")),
    (true, "/both/delay/2000", None),
    // `max_grpc_timeout`: a gRPC request's `grpc-timeout` is the route timeout (504,
    // gRPC's UNAVAILABLE), capped; 0 is no limit; not for other requests.
    (true, "/mgt/delay/2000", Some("200m")),
    (true, "/mgt/delay/700", None),
    (true, "/mgt/delay/10", Some("300m")),
    (true, "/mgc/delay/2000", None),
    (true, "/mgc/delay/2000", Some("5S")),
    (false, "/mgc/delay/700", None),
];

/// Each case's reply (gRPC's form for gRPC requests), the `grpc-timeout` the upstream saw
/// when it answered, and `downstream_rq_max_duration_reached` once it reaches `ended`.
fn duration_cases(p: &Courier, a: &Upstream, cases: &[DurationCase], ended: u64) -> Vec<String> {
    let mut seen = Vec::new();
    for &(grpc, path, timeout) in cases {
        let mut headers = Vec::new();
        if grpc {
            headers.push(("content-type", "application/grpc"));
        }
        if let Some(t) = timeout {
            headers.push(("grpc-timeout", t));
        }
        let before = a.requests.load(std::sync::atomic::Ordering::SeqCst);
        let r = Client::connect(p.listener).request("POST", "h", path, &headers, b"");
        // The upstream answered: what `grpc-timeout` it was sent.
        let answered = r.status == 200 && r.header("grpc-status").is_none();
        let sent = a
            .last()
            .filter(|_| answered && a.requests.load(std::sync::atomic::Ordering::SeqCst) > before)
            .and_then(|s| s.header("grpc-timeout").map(str::to_string));
        seen.push(format!(
            "{path} grpc={grpc} timeout={timeout:?}: {} grpc-status={:?} grpc-message={:?} body={:?} upstream grpc-timeout={sent:?}",
            r.status,
            r.header("grpc-status"),
            r.header("grpc-message"),
            r.body_str().split(' ').take(2).collect::<Vec<_>>().join(" "),
        ));
    }
    seen.push(format!(
        "downstream_rq_max_duration_reached={}",
        p.wait_stat("http.ingress.downstream_rq_max_duration_reached", ended)
    ));
    seen
}

/// `max_stream_duration` (with `grpc_timeout_header_max`/`_offset`) and `max_grpc_timeout`,
/// as Envoy applies them (they were accepted without effect, and such routes kept the
/// 15 s route timeout Envoy does not use there).
#[test]
fn stream_durations_and_grpc_timeouts_match_envoy() {
    let a = Upstream::start("a");
    let boot = bootstrap(DURATION_ROUTES, "", &cluster("a", &[a.addr], ""));
    let got = duration_cases(&Courier::start(&boot), &a, &ROUTE_DURATION_CASES, 7);
    assert!(
        got[0].contains(
            "200 grpc-status=Some(\"4\") grpc-message=Some(\"downstream duration timeout\")"
        ),
        "{got:?}"
    );
    assert!(
        got[2].contains("upstream grpc-timeout=Some(\"300m\")"),
        "{got:?}"
    );
    assert_eq!(
        got.last().map(String::as_str),
        Some("downstream_rq_max_duration_reached=7")
    );
    let a = Upstream::start("a");
    let boot = bootstrap(DURATION_ROUTES, "", &cluster("a", &[a.addr], ""));
    let Some(envoy) = Courier::start_envoy(&boot) else {
        eprintln!("envoy not on PATH: skipping the stream duration differential");
        return;
    };
    assert_eq!(
        duration_cases(&envoy, &a, &ROUTE_DURATION_CASES, 7),
        got,
        "envoy vs courier"
    );
}

const HCM_DURATION_ROUTES: &str = r#"            name: local
            virtual_hosts:
            - name: main
              domains: ["*"]
              routes:
              - match: { prefix: "/plain/" }
                route: { cluster: a }
              - match: { prefix: "/short/" }
                route: { cluster: a, timeout: 0.2s }
              - match: { prefix: "/zero/" }
                route: { cluster: a, max_stream_duration: { max_stream_duration: 0s } }
              - match: { prefix: "/empty/" }
                route: { cluster: a, timeout: 0.2s, max_stream_duration: {} }
              - match: { prefix: "/msd/" }
                route: { cluster: a, max_stream_duration: { max_stream_duration: 0.3s } }
              - match: { prefix: "/hdr/" }
                route: { cluster: a, max_stream_duration: { grpc_timeout_header_max: 0s } }
"#;

/// The connection manager's `common_http_protocol_options.max_stream_duration`: every
/// stream's duration unless its route sets one, alongside the route timeout (measured
/// against Envoy 1.40; it was accepted without effect).
#[test]
fn connection_manager_stream_duration_matches_envoy() {
    let cases: [DurationCase; 10] = [
        // Ends a stream on a route without one (gRPC's DEADLINE_EXCEEDED); the server is
        // not told it.
        (false, "/plain/delay/2000", None),
        (true, "/plain/delay/2000", None),
        (true, "/plain/delay/10", None),
        // A shorter route timeout still ends the request first.
        (false, "/short/delay/2000", None),
        // A route's own duration (0: none) wins; an empty one falls back to the connection
        // manager's, which the server then learns as its `grpc-timeout`.
        (false, "/zero/delay/700", None),
        (false, "/msd/delay/2000", None),
        (false, "/empty/delay/2000", None),
        (true, "/empty/delay/10", None),
        (true, "/hdr/delay/10", None),
        (true, "/hdr/delay/700", Some("600m")),
    ];
    let hcm = "          common_http_protocol_options: { max_stream_duration: 0.4s }\n";
    let a = Upstream::start("a");
    let boot = bootstrap(HCM_DURATION_ROUTES, hcm, &cluster("a", &[a.addr], ""));
    let got = duration_cases(&Courier::start(&boot), &a, &cases, 5);
    assert!(got[0].contains(": 504 "), "{got:?}");
    assert_eq!(
        got.last().map(String::as_str),
        Some("downstream_rq_max_duration_reached=5")
    );
    assert!(got[4].contains(": 200 "), "{got:?}");
    assert!(
        got[7].contains("upstream grpc-timeout=Some(\"400m\")"),
        "{got:?}"
    );
    let a = Upstream::start("a");
    let boot = bootstrap(HCM_DURATION_ROUTES, hcm, &cluster("a", &[a.addr], ""));
    let Some(envoy) = Courier::start_envoy(&boot) else {
        eprintln!("envoy not on PATH: skipping the stream duration differential");
        return;
    };
    assert_eq!(
        duration_cases(&envoy, &a, &cases, 5),
        got,
        "envoy vs courier"
    );
}

/// The connection manager's timers on a request whose head arrives slowly, one set per
/// case: as in Envoy they all run from the head's first byte, and bytes of an unfinished
/// head do not restart the idle timer.
const HEAD_TIMER_CASES: [(&str, &str); 4] = [
    ("idle", "stream_idle_timeout: 0.4s"),
    (
        "headers",
        "stream_idle_timeout: 10s\n          request_headers_timeout: 0.4s",
    ),
    (
        "request",
        "stream_idle_timeout: 10s\n          request_timeout: 0.6s",
    ),
    (
        "headers before request",
        "stream_idle_timeout: 10s\n          request_timeout: 0.8s\n          request_headers_timeout: 0.4s",
    ),
];

/// The bootstrap of one [`HEAD_TIMER_CASES`] entry, logging each request to `log`.
fn head_timer_bootstrap(
    timers: &str,
    upstream: std::net::SocketAddr,
    log: &std::path::Path,
) -> String {
    let hcm = format!(
        r#"          {timers}
          access_log:
          - name: envoy.access_loggers.file
            typed_config:
              "@type": type.googleapis.com/envoy.extensions.access_loggers.file.v3.FileAccessLog
              path: {}
              log_format: {{ text_format_source: {{ inline_string: "%RESPONSE_CODE% %RESPONSE_FLAGS% %REQ(:METHOD)% %PROTOCOL%\n" }} }}
"#,
        log.display()
    );
    let routes = "            name: local\n            virtual_hosts:\n            - name: main\n              domains: [\"*\"]\n              routes:\n              - match: { prefix: \"/\" }\n                route: { cluster: a, timeout: 0s }\n";
    bootstrap(routes, &hcm, &cluster("a", &[upstream], ""))
}

/// What a client whose request `head` trickles in (one more byte each time 50 ms pass
/// without an answer, for at most `trickle_for`, then `rest` at once) gets back, and
/// whether it came within `within` of the head's first byte.
fn slow_head(
    p: &Courier,
    head: &[u8],
    trickle: &[u8],
    trickle_for: Duration,
    rest: &[u8],
    within: Duration,
) -> String {
    let mut c = Client::connect(p.listener);
    let started = Instant::now();
    c.send_raw(head);
    c.stream
        .set_read_timeout(Some(Duration::from_millis(50)))
        .expect("timeout");
    let mut first = [0u8; 1];
    let answered_early = loop {
        match c.reader.get_mut().peek(&mut first) {
            Ok(_) => break true,
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ) => {}
            Err(e) => panic!("read: {e}"),
        }
        if started.elapsed() >= trickle_for {
            break false;
        }
        // A reset closed connection is an answer too: Envoy may have replied already.
        if std::io::Write::write_all(&mut c.stream, trickle).is_err() {
            break true;
        }
    };
    if !answered_early {
        c.send_raw(rest);
    }
    c.stream
        .set_read_timeout(Some(Duration::from_secs(20)))
        .expect("timeout");
    let r = c.read().expect("a reply");
    let took = started.elapsed();
    format!(
        "{} {:?} closed={} answered while the head trickled={answered_early} in time={}",
        r.status,
        r.body_str(),
        c.closed(),
        took < within,
    )
}

/// Every head-timer case on one proxy: the replies, the counters, the access log.
fn head_timer_outcomes(p: &Courier, log: &std::path::Path, case: &str) -> Vec<String> {
    let mut seen = Vec::new();
    let endless = Duration::from_secs(5);
    // The first timer, plus room for a busy machine (and less than any later timer).
    let within = match case {
        "request" => Duration::from_millis(850),
        _ => Duration::from_millis(700),
    };
    // A head that stops arriving half-way.
    seen.push(format!(
        "stalled head: {}",
        slow_head(
            p,
            b"GET / HTTP/1.1\r\nhost: h\r\n",
            b"",
            Duration::ZERO,
            b"",
            within
        )
    ));
    // A head that keeps trickling in, a byte at a time (a slowloris): the bytes are no
    // activity, so the idle timer runs out as for a silent client.
    seen.push(format!(
        "trickled head: {}",
        slow_head(p, b"GET / HTTP/1.1\r\nx-a: ", b"a", endless, b"", within)
    ));
    // `request_timeout` counts the head's time too: a head taking 0.3 s, then a body that
    // stalls, is answered 0.6 s after the head's first byte (not after its last).
    if case == "request" {
        seen.push(format!(
            "slow head, stalled body: {}",
            slow_head(
                p,
                b"POST /echo HTTP/1.1\r\nx-a: ",
                b"a",
                Duration::from_millis(300),
                b"\r\nhost: h\r\ncontent-length: 10\r\n\r\nabc",
                within,
            )
        ));
    }
    let expected = seen.len() as u64;
    for stat in [
        "downstream_rq_idle_timeout",
        "downstream_rq_header_timeout",
        "downstream_rq_timeout",
        "downstream_rq_4xx",
        "downstream_rq_total",
    ] {
        let name = format!("http.ingress.{stat}");
        let v = if p.stat(&name) > 0 {
            p.wait_stat(&name, expected)
        } else {
            0
        };
        seen.push(format!("{stat}={v}"));
    }
    // The access log (written with a delay by Envoy).
    let lines = wait_for_lines(log, expected as usize);
    seen.extend(lines.into_iter().map(|l| format!("log: {l}")));
    seen
}

/// The first `n` lines of `path`, once it has them.
fn wait_for_lines(path: &std::path::Path, n: usize) -> Vec<String> {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let text = std::fs::read_to_string(path).unwrap_or_default();
        let lines: Vec<String> = text.lines().map(str::to_string).collect();
        if lines.len() >= n {
            return lines;
        }
        assert!(
            Instant::now() < deadline,
            "{n} access log lines in {path:?}; have {lines:?}"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// `stream_idle_timeout`, `request_headers_timeout` and `request_timeout` on a request head
/// that arrives slowly or not at all, HTTP/1.1: Envoy's 408s (`stream timeout`, `request
/// header timeout`, `request timeout`), its counters and its access log flags (`SI` for the
/// idle timeout). Before, only the header timeout applied to a head, and a slowloris kept
/// its connection for the connection's whole `idle_timeout` (an hour).
#[test]
fn slow_request_heads_time_out_as_in_envoy() {
    let a = Upstream::start("a");
    let dir = tempfile::tempdir().expect("tempdir");
    let mut all = Vec::new();
    for (case, timers) in HEAD_TIMER_CASES {
        let log = dir.path().join(format!("courier-{}.log", all.len()));
        let courier = Courier::start(&head_timer_bootstrap(timers, a.addr, &log));
        let got = head_timer_outcomes(&courier, &log, case);
        all.push((case, timers, got));
    }
    let by_case = |c: &str| {
        all.iter()
            .find(|(case, _, _)| *case == c)
            .map(|(_, _, g)| g.clone())
    };
    assert_eq!(
        by_case("idle").expect("idle"),
        [
            "stalled head: 408 \"stream timeout\" closed=true answered while the head trickled=false in time=true",
            "trickled head: 408 \"stream timeout\" closed=true answered while the head trickled=true in time=true",
            "downstream_rq_idle_timeout=2",
            "downstream_rq_header_timeout=0",
            "downstream_rq_timeout=0",
            "downstream_rq_4xx=2",
            "downstream_rq_total=2",
            "log: 408 SI - HTTP/1.1",
            "log: 408 SI - HTTP/1.1",
        ]
    );
    assert_eq!(
        by_case("request").expect("request"),
        [
            "stalled head: 408 \"request timeout\" closed=true answered while the head trickled=false in time=true",
            "trickled head: 408 \"request timeout\" closed=true answered while the head trickled=true in time=true",
            "slow head, stalled body: 408 \"request timeout\" closed=true answered while the head trickled=false in time=true",
            "downstream_rq_idle_timeout=0",
            "downstream_rq_header_timeout=0",
            "downstream_rq_timeout=3",
            "downstream_rq_4xx=3",
            "downstream_rq_total=3",
            "log: 408 - - HTTP/1.1",
            "log: 408 - - HTTP/1.1",
            "log: 408 - POST HTTP/1.1",
        ]
    );
    for case in ["headers", "headers before request"] {
        let got = by_case(case).expect("case");
        assert!(
            got[0].starts_with("stalled head: 408 \"request header timeout\" closed=true")
                && got[1].starts_with("trickled head: 408 \"request header timeout\" closed=true")
                && got.contains(&"downstream_rq_header_timeout=2".to_string())
                && got.contains(&"log: 408 - - HTTP/1.1".to_string()),
            "{case}: {got:?}"
        );
    }
    for (case, timers, got) in &all {
        let log = dir.path().join(format!("envoy-{case}.log"));
        let Some(envoy) = Courier::start_envoy_with(
            &head_timer_bootstrap(timers, a.addr, &log),
            &["--file-flush-interval-msec", "20"],
        ) else {
            eprintln!("envoy not on PATH: skipping the head timer differential");
            return;
        };
        assert_eq!(
            &head_timer_outcomes(&envoy, &log, case),
            got,
            "{case}: envoy vs courier"
        );
    }
}

/// An HTTP/2 client that opens a request's header block (HEADERS without END_HEADERS) and
/// never ends it: how the proxy ends it, and whether within `within`.
fn h2_stalled_head(p: &Courier, within: Duration) -> String {
    use h2_raw::*;
    use std::io::Write;
    let mut s = std::net::TcpStream::connect(p.listener).expect("connect");
    s.set_read_timeout(Some(Duration::from_secs(10)))
        .expect("timeout");
    let started = Instant::now();
    let mut out = PREFACE.to_vec();
    out.extend(frame(SETTINGS, 0, 0, &[]));
    // `:method GET`, `:scheme http`, `:path /` (static table), and no END_HEADERS.
    out.extend(frame(HEADERS, 0, 1, &[0x82, 0x86, 0x84]));
    s.write_all(&out).expect("write");
    let (mut buf, mut seen) = (Vec::new(), Vec::new());
    let mut chunk = [0u8; 4096];
    let end = loop {
        match s.read(&mut chunk) {
            Ok(0) => break "connection closed".to_string(),
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
            Err(e) => break format!("read error {:?}", e.kind()),
        }
        for f in take_frames(&mut buf) {
            match (f.kind, f.stream) {
                (HEADERS, 1) => seen.push("response head".to_string()),
                (0x0, 1) => seen.push(format!("body {:?}", String::from_utf8_lossy(&f.payload))),
                _ => {}
            }
            if f.kind == RST_STREAM && f.stream == 1 {
                seen.push(format!("RST_STREAM {:?}", f.payload));
            }
        }
        if seen.iter().any(|s| s.starts_with("RST_STREAM")) {
            break format!("stream answered: {}", seen.join(", "));
        }
    };
    format!("{end}; in time={}", started.elapsed() < within)
}

/// The same timers on HTTP/2, where the head is a header block that never ends. Envoy
/// answers the stream `408` and resets it; Courier (hyper has no stream to answer until the
/// block ends, and nothing else may cross the connection until it does) closes the
/// connection — at the same moment, with the same counter and the same access log flag
/// (documented in DIFFERENCES.md).
#[test]
fn slow_http2_request_heads_time_out_as_in_envoy() {
    let a = Upstream::start("a");
    let dir = tempfile::tempdir().expect("tempdir");
    let cases = [
        (
            HEAD_TIMER_CASES[0],
            "downstream_rq_idle_timeout",
            "SI",
            "stream timeout",
        ),
        (
            HEAD_TIMER_CASES[1],
            "downstream_rq_header_timeout",
            "-",
            "request header timeout",
        ),
        (
            HEAD_TIMER_CASES[2],
            "downstream_rq_timeout",
            "-",
            "request timeout",
        ),
    ];
    let outcome = |p: &Courier, log: &std::path::Path, counter: &str| {
        let end = h2_stalled_head(p, Duration::from_millis(850));
        let n = p.wait_stat(&format!("http.ingress.{counter}"), 1);
        let line = wait_for_lines(log, 1).remove(0);
        let (status, rest) = line.split_once(' ').expect("a log line");
        (
            end,
            format!("{counter}={n}; log: {rest}"),
            status.to_string(),
        )
    };
    for ((case, timers), counter, flag, body) in cases {
        let log = dir.path().join(format!("courier-h2-{counter}.log"));
        let boot = head_timer_bootstrap(timers, a.addr, &log).replace(
            "          stat_prefix: ingress\n",
            "          stat_prefix: ingress\n          codec_type: HTTP2\n",
        );
        let courier = Courier::start(&boot);
        let (end, common, status) = outcome(&courier, &log, counter);
        assert_eq!(end, "connection closed; in time=true", "{case}");
        assert_eq!(
            common,
            format!("{counter}=1; log: {flag} - HTTP/2"),
            "{case}"
        );
        assert_eq!(status, "0", "{case}: nothing was answered");

        let log = dir.path().join(format!("envoy-h2-{counter}.log"));
        let boot = head_timer_bootstrap(timers, a.addr, &log).replace(
            "          stat_prefix: ingress\n",
            "          stat_prefix: ingress\n          codec_type: HTTP2\n",
        );
        let Some(envoy) = Courier::start_envoy_with(&boot, &["--file-flush-interval-msec", "20"])
        else {
            eprintln!("envoy not on PATH: skipping the HTTP/2 head timer differential");
            return;
        };
        let (envoy_end, envoy_common, envoy_status) = outcome(&envoy, &log, counter);
        assert_eq!(envoy_common, common, "{case}: envoy vs courier");
        assert_eq!(
            envoy_end,
            format!("stream answered: response head, body {body:?}, RST_STREAM [0, 0, 0, 0]; in time=true"),
            "{case}: envoy"
        );
        assert_eq!(envoy_status, "408", "{case}: envoy");
    }
}
