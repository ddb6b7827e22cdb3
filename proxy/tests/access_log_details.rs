//! What an access log says about how each request ended, as Envoy 1.40 says it: the
//! response flags, `%RESPONSE_CODE_DETAILS%`, `%CONNECTION_TERMINATION_DETAILS%`,
//! `%UPSTREAM_TRANSPORT_FAILURE_REASON%`, the clusters and addresses, for requests that
//! end every way Courier can end them (proxied, no route, no cluster, no healthy host,
//! refused connection, timeouts, resets, faults, rate limits, RBAC, redirects, direct
//! responses, health checks, overflow), and what a second log says of the same requests'
//! upstream attempts and timing (`%UPSTREAM_REQUEST_ATTEMPT_COUNT%`, the upstream remote
//! address and host name, which of the four durations each has). The same requests go
//! through Courier and, when `envoy` is on PATH, through Envoy; the logged lines must be
//! equal.

mod http_support;

use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;

use http_support::*;

const ROUTES: &str = r#"            name: local
            virtual_hosts:
            - name: main
              domains: ["*"]
              routes:
              - name: direct
                match: { prefix: "/direct" }
                direct_response: { status: 200, body: { inline_string: hello } }
              - name: redirect
                match: { prefix: "/redirect" }
                redirect: { path_redirect: /ok }
              - name: by_header
                match: { prefix: "/missing" }
                route: { cluster_header: x-cluster }
              - name: refused
                match: { prefix: "/refused" }
                route: { cluster: refused }
              - name: empty
                match: { prefix: "/empty" }
                route: { cluster: empty }
              - name: overflow
                match: { prefix: "/overflow" }
                route: { cluster: tiny }
              - name: timeout
                match: { prefix: "/timeout" }
                route: { cluster: a, timeout: 0.1s, prefix_rewrite: /delay/600 }
              - name: per_try
                match: { prefix: "/per-try" }
                route:
                  cluster: a
                  timeout: 2s
                  prefix_rewrite: /delay/600
                  retry_policy: { retry_on: 5xx, num_retries: 0, per_try_timeout: 0.1s }
              - name: stream_idle
                match: { prefix: "/idle" }
                route: { cluster: a, idle_timeout: 0.1s, prefix_rewrite: /stall/400 }
              - name: route_timeout_in_body
                match: { prefix: "/late" }
                route: { cluster: a, timeout: 0.1s, prefix_rewrite: /stall/400 }
              - name: max_duration
                match: { prefix: "/max-duration" }
                route: { cluster: durations, prefix_rewrite: /delay/400 }
              - name: limited
                match: { prefix: "/limited" }
                route: { cluster: a }
                typed_per_filter_config:
                  envoy.filters.http.local_ratelimit:
                    "@type": type.googleapis.com/envoy.extensions.filters.http.local_ratelimit.v3.LocalRateLimit
                    stat_prefix: route_rl
                    token_bucket: { max_tokens: 1, tokens_per_fill: 1, fill_interval: 60s }
                    filter_enabled: { default_value: { numerator: 100 } }
                    filter_enforced: { default_value: { numerator: 100 } }
              - name: proxied
                match: { prefix: "/" }
                route: { cluster: a }
"#;

const FILTERS: &str = r#"          - name: envoy.filters.http.health_check
            typed_config:
              "@type": type.googleapis.com/envoy.extensions.filters.http.health_check.v3.HealthCheck
              pass_through_mode: false
              headers: [{ name: ":path", string_match: { exact: /healthz } }]
          - name: envoy.filters.http.rbac
            typed_config:
              "@type": type.googleapis.com/envoy.extensions.filters.http.rbac.v3.RBAC
              rules:
                action: DENY
                policies:
                  deny-flagged:
                    permissions: [{ header: { name: x-deny, present_match: true } }]
                    principals: [{ any: true }]
          - name: envoy.filters.http.fault
            typed_config:
              "@type": type.googleapis.com/envoy.extensions.filters.http.fault.v3.HTTPFault
              abort: { header_abort: {}, percentage: { numerator: 100 } }
              delay: { header_delay: {}, percentage: { numerator: 100 } }
          - name: envoy.filters.http.local_ratelimit
            typed_config:
              "@type": type.googleapis.com/envoy.extensions.filters.http.local_ratelimit.v3.LocalRateLimit
              stat_prefix: filter_rl
"#;

/// Everything each line says: the request, how it ended, where it went.
const FORMAT: &str = "%REQ(:METHOD)% %REQ(:PATH)% %RESPONSE_CODE% rx=%BYTES_RECEIVED% tx=%BYTES_SENT% %RESPONSE_FLAGS% %RESPONSE_CODE_DETAILS% %CONNECTION_TERMINATION_DETAILS% %UPSTREAM_TRANSPORT_FAILURE_REASON% %UPSTREAM_CLUSTER% %UPSTREAM_CLUSTER_RAW% %ROUTE_NAME% %ACCESS_LOG_TYPE% up=%UPSTREAM_HOST% up_local=%UPSTREAM_LOCAL_ADDRESS% local=%DOWNSTREAM_LOCAL_ADDRESS% local_ip=%DOWNSTREAM_LOCAL_ADDRESS_WITHOUT_PORT% local_port=%DOWNSTREAM_LOCAL_PORT% remote_ip=%DOWNSTREAM_REMOTE_ADDRESS_WITHOUT_PORT% direct=%DOWNSTREAM_DIRECT_REMOTE_ADDRESS_WITHOUT_PORT% host=%HOSTNAME%\n";

/// The attempts and timing of each request (durations only as there or not: `N`, `-`).
const TIMING: &str = "%REQ(:METHOD)% %REQ(:PATH)% %RESPONSE_CODE% att=%UPSTREAM_REQUEST_ATTEMPT_COUNT% remote=%UPSTREAM_REMOTE_ADDRESS% remote_port=%UPSTREAM_REMOTE_PORT% host_name=%UPSTREAM_HOST_NAME% rd=%REQUEST_DURATION% rtd=%REQUEST_TX_DURATION% rsd=%RESPONSE_DURATION% rstd=%RESPONSE_TX_DURATION% grpc=%GRPC_STATUS% sid=%STREAM_ID%\n";

fn boot(dir: &Path, a: &Upstream, refused: SocketAddr) -> String {
    let log = format!(
        "          access_log:
          - name: details
            typed_config:
              \"@type\": type.googleapis.com/envoy.extensions.access_loggers.file.v3.FileAccessLog
              path: {}
              log_format: {{ text_format: {:?} }}
          - name: timing
            typed_config:
              \"@type\": type.googleapis.com/envoy.extensions.access_loggers.file.v3.FileAccessLog
              path: {}
              log_format: {{ text_format: {:?} }}
",
        dir.join("details.log").display(),
        FORMAT,
        dir.join("timing.log").display(),
        TIMING
    );
    let clusters = [
        cluster("a", &[a.addr], ""),
        cluster("refused", &[refused], ""),
        "  - name: empty\n    type: STATIC\n    connect_timeout: 1s\n    load_assignment: { cluster_name: empty, endpoints: [] }\n".to_string(),
        cluster(
            "durations",
            &[a.addr],
            "    typed_extension_protocol_options:\n      envoy.extensions.upstreams.http.v3.HttpProtocolOptions:\n        \"@type\": type.googleapis.com/envoy.extensions.upstreams.http.v3.HttpProtocolOptions\n        common_http_protocol_options: { max_stream_duration: 0.1s }\n        explicit_http_config: { http_protocol_options: {} }\n",
        ),
        cluster(
            "tiny",
            &[a.addr],
            "    circuit_breakers: { thresholds: [{ max_requests: 0 }] }\n",
        ),
    ]
    .concat();
    with_filters(&bootstrap(ROUTES, &log, &clusters), FILTERS)
}

/// A request: method, path, headers.
type Case = (
    &'static str,
    &'static str,
    &'static [(&'static str, &'static str)],
);

/// The requests.
const REQUESTS: &[Case] = &[
    ("GET", "/ok", &[]),
    ("HEAD", "/ok", &[]),
    ("POST", "/echo", &[]),
    ("POST", "/echo/chunked", &[("transfer-encoding", "chunked")]),
    ("POST", "/nowhere-with-body", &[("x-deny", "1")]),
    ("GET", "/status/503", &[]),
    ("GET", "/status/404", &[]),
    ("GET", "/direct", &[]),
    ("HEAD", "/direct", &[]),
    ("GET", "/redirect", &[]),
    ("GET", "/missing", &[("x-cluster", "nowhere")]),
    ("GET", "/missing", &[]),
    ("GET", "/missing", &[("x-cluster", "a")]),
    ("GET", "/refused", &[]),
    ("GET", "/empty", &[]),
    ("GET", "/overflow", &[]),
    ("GET", "/timeout", &[]),
    ("GET", "/per-try", &[]),
    ("GET", "/close", &[]),
    ("GET", "/idle", &[]),
    ("GET", "/max-duration", &[]),
    ("GET", "/late", &[]),
    ("GET", "/ok", &[("x-envoy-fault-abort-request", "418")]),
    ("GET", "/ok", &[("x-envoy-fault-abort-grpc-request", "14")]),
    ("GET", "/ok", &[("x-envoy-fault-delay-request", "10")]),
    ("GET", "/limited", &[]),
    ("GET", "/limited", &[]),
    ("GET", "/ok", &[("x-deny", "1")]),
    ("GET", "/healthz", &[]),
    (
        "GET",
        "/ok",
        &[("x-envoy-upstream-rq-timeout-ms", "50"), ("x-test", "t")],
    ),
    (
        "GET",
        "/delay/300",
        &[("x-envoy-upstream-rq-timeout-ms", "50")],
    ),
    (
        "GET",
        "/flaky/1",
        &[("x-envoy-retry-on", "5xx"), ("x-envoy-max-retries", "1")],
    ),
    (
        "GET",
        "/flaky/5",
        &[("x-envoy-retry-on", "5xx"), ("x-envoy-max-retries", "1")],
    ),
    ("OPTIONS", "/ok", &[]),
    ("DELETE", "/ok", &[]),
];

fn send(addr: SocketAddr, method: &str, path: &str, headers: &[(&str, &str)]) {
    use std::io::{Read, Write};
    let Ok(mut s) = std::net::TcpStream::connect(addr) else {
        return;
    };
    let _ = s.set_read_timeout(Some(Duration::from_secs(5)));
    let mut head = format!("{method} {path} HTTP/1.1\r\nhost: h\r\nconnection: close\r\n");
    for (k, v) in headers {
        head.push_str(&format!("{k}: {v}\r\n"));
    }
    if headers.iter().any(|(k, _)| *k == "transfer-encoding") {
        head.push_str("\r\n4\r\nbody\r\n6\r\n-more-\r\n0\r\n\r\n");
    } else if method == "POST" {
        head.push_str("content-length: 4\r\n\r\nbody");
    } else {
        head.push_str("\r\n");
    }
    let _ = s.write_all(head.as_bytes());
    let mut sink = Vec::new();
    let _ = s.read_to_end(&mut sink);
}

/// The lines of log `name` once it has `n` (or after 10 s).
fn lines(dir: &Path, name: &str, n: usize) -> Vec<String> {
    log_lines(&dir.join(format!("{name}.log")), n)
}

/// A line with the run's own addresses and ports named.
fn normalise(line: &str, listener: SocketAddr, a: SocketAddr, refused: SocketAddr) -> String {
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname").unwrap_or_default();
    let mut s = line
        .replace(&listener.to_string(), "LISTENER")
        .replace(
            &format!("local_port={}", listener.port()),
            "local_port=LPORT",
        )
        .replace(&a.to_string(), "UPSTREAM_A")
        .replace(&refused.to_string(), "REFUSED");
    if !host.trim().is_empty() {
        s = s.replace(host.trim(), "HOSTNAME");
    }
    s = s
        .replace(&format!("remote_port={}", a.port()), "remote_port=A_PORT")
        .replace(
            &format!("remote_port={}", refused.port()),
            "remote_port=REFUSED_PORT",
        );
    for (re, to) in [
        // The upstream connection's own port is the kernel's choice.
        (r"up_local=127\.0\.0\.1:\d+", "up_local=127.0.0.1:EPHEMERAL"),
        // Durations: there or not.
        (r"\b(rd|rtd|rsd|rstd)=\d+", "$1=N"),
        (
            r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}",
            "UUID",
        ),
    ] {
        s = regex::Regex::new(re)
            .expect("regex")
            .replace_all(&s, to)
            .into_owned();
    }
    s
}

fn run(start: &dyn Fn(&str) -> Option<Courier>) -> Option<Vec<String>> {
    let dir = tempfile::tempdir().expect("tempdir");
    let a = Upstream::start("a");
    let refused = refusing_addr();
    let proxy = start(&boot(dir.path(), &a, refused))?;
    for (method, path, headers) in REQUESTS {
        send(proxy.listener, method, path, headers);
    }
    let mut got = lines(dir.path(), "details", REQUESTS.len());
    got.extend(lines(dir.path(), "timing", REQUESTS.len()));
    Some(
        got.iter()
            .map(|l| normalise(l, proxy.listener, a.addr, refused))
            .collect(),
    )
}

#[test]
fn every_way_a_request_ends_is_logged_as_envoy_logs_it() {
    let got = run(&|b| Some(Courier::start(b))).expect("courier starts");
    assert_eq!(got.len(), 2 * REQUESTS.len(), "{got:#?}");
    if let Some(envoy) =
        run(&|b| Courier::start_envoy_with(b, &["--file-flush-interval-msec", "20"]))
    {
        for (e, c) in envoy.iter().zip(&got) {
            assert_eq!(e, c, "envoy (left) vs courier (right)");
        }
        assert_eq!(envoy.len(), got.len());
    }
}
