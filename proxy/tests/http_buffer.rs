//! The buffer filter (`envoy.filters.http.buffer`): whole bodies held up to
//! `max_request_bytes` (sized and chunked, at and past the limit, empty, with trailers),
//! the `content-length` a chunked request goes upstream with, `413 Payload Too Large`
//! with its details and `downstream_rq_too_large`, and `BufferPerRoute` (`disabled`, a
//! route's own limit). Each case runs through Courier and, when `envoy` is on PATH,
//! through Envoy 1.40; the two must agree, and agree with the values written here.

mod http_support;

use std::path::Path;
use std::sync::atomic::Ordering;

use http_support::*;

const FILTER: &str = r#"          - name: envoy.filters.http.buffer
            typed_config:
              "@type": type.googleapis.com/envoy.extensions.filters.http.buffer.v3.Buffer
              max_request_bytes: 10
"#;

const ROUTES: &str = r#"            name: local
            virtual_hosts:
            - name: main
              domains: ["*"]
              routes:
              - match: { prefix: "/off" }
                route: { cluster: a }
                typed_per_filter_config:
                  envoy.filters.http.buffer:
                    "@type": type.googleapis.com/envoy.extensions.filters.http.buffer.v3.BufferPerRoute
                    disabled: true
              - match: { prefix: "/twenty" }
                route: { cluster: a }
                typed_per_filter_config:
                  envoy.filters.http.buffer:
                    "@type": type.googleapis.com/envoy.extensions.filters.http.buffer.v3.BufferPerRoute
                    buffer: { max_request_bytes: 20 }
              - match: { prefix: "/direct" }
                direct_response: { status: 200, body: { inline_string: "d" } }
              - match: { prefix: "/" }
                route: { cluster: a }
"#;

fn boot(dir: &Path, a: &Upstream) -> String {
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
        FILTER,
    )
}

/// A request with a sized body.
fn sized(method: &str, path: &str, body: &str) -> String {
    format!(
        "{method} {path} HTTP/1.1\r\nhost: example.com\r\ncontent-length: {}\r\n\r\n{body}",
        body.len()
    )
}

/// A chunked request, its body in `chunks`, then `trailers` (`name: value\r\n` lines).
fn chunked(path: &str, chunks: &[&str], trailers: &str) -> String {
    let mut r =
        format!("POST {path} HTTP/1.1\r\nhost: example.com\r\ntransfer-encoding: chunked\r\n\r\n");
    for c in chunks {
        r.push_str(&format!("{:x}\r\n{c}\r\n", c.len()));
    }
    r.push_str(&format!("0\r\n{trailers}\r\n"));
    r
}

/// Each request on a fresh connection as `label: status body upstream=n`, with the
/// framing and body the upstream got, and whether the proxy then closed the connection;
/// each request's log line; the counter.
fn run(proxy: &Courier, dir: &Path, a: &Upstream, cases: &[(&str, String)]) -> Vec<String> {
    let mut out: Vec<String> = cases
        .iter()
        .map(|(label, raw)| {
            let before = a.requests.load(Ordering::SeqCst);
            let mut c = Client::connect(proxy.listener);
            c.send_raw(raw.as_bytes());
            let r = c.read().expect("a response");
            let reached = a.requests.load(Ordering::SeqCst) - before;
            let seen = match (reached, a.last()) {
                (1, Some(s)) => format!(
                    " content-length={:?} transfer-encoding={:?} body={:?}",
                    s.header("content-length"),
                    s.header("transfer-encoding"),
                    String::from_utf8_lossy(&s.body)
                ),
                _ => String::new(),
            };
            // A refused body may be left unread: the connection is closed after it.
            let closed = if r.status == 413 {
                format!(
                    " connection={:?} closed={}",
                    r.header("connection"),
                    c.closed()
                )
            } else {
                String::new()
            };
            format!(
                "{label}: {} {:?} upstream={reached}{seen}{closed}",
                r.status,
                r.body_str()
            )
        })
        .collect();
    out.extend(log_lines(&dir.join("details.log"), cases.len()));
    out.push(format!(
        "downstream_rq_too_large={}",
        proxy.stat("http.ingress.downstream_rq_too_large")
    ));
    out
}

#[test]
fn buffer_matches_envoy() {
    let cases: Vec<(&str, String)> = vec![
        ("sized", sized("POST", "/echo", "12345")),
        ("sized, at the limit", sized("POST", "/echo", "1234567890")),
        (
            "sized, past the limit",
            sized("POST", "/echo", "12345678901"),
        ),
        ("sized PUT", sized("PUT", "/echo", "123")),
        ("sized, empty", sized("POST", "/echo", "")),
        ("GET", "GET /x HTTP/1.1\r\nhost: example.com\r\n\r\n".into()),
        ("chunked", chunked("/echo", &["123", "45"], "")),
        (
            "chunked, at the limit",
            chunked("/echo", &["12345", "67890"], ""),
        ),
        (
            "chunked, past the limit",
            chunked("/echo", &["12345", "678901"], ""),
        ),
        (
            "chunked, one chunk past",
            chunked("/echo", &["12345678901"], ""),
        ),
        ("chunked, empty", chunked("/echo", &[], "")),
        (
            "chunked, trailers",
            chunked("/echo", &["12", "3"], "x-t: 1\r\n"),
        ),
        (
            "disabled, chunked",
            chunked("/off/echo", &["12345", "678901"], ""),
        ),
        ("disabled, sized", sized("POST", "/off/echo", "12345678901")),
        (
            "route limit, under",
            chunked("/twenty/echo", &["1234567890", "12345"], ""),
        ),
        (
            "route limit, at",
            chunked("/twenty/echo", &["1234567890", "1234567890"], ""),
        ),
        (
            "route limit, past",
            chunked("/twenty/echo", &["1234567890", "12345678901"], ""),
        ),
        (
            "route limit, sized past",
            sized("POST", "/twenty/echo", "123456789012345678901"),
        ),
        ("direct, under", sized("POST", "/direct", "12345")),
        ("direct, past", chunked("/direct", &["12345678901"], "")),
        (
            "no route, past",
            sized("POST", "/nowhere-no/echo", "12345678901"),
        ),
    ];
    let got = courier_and_envoy_agree(boot, |proxy, dir, a| run(proxy, dir, a, &cases));
    let n = cases.len();
    let statuses: Vec<&str> = got[..n]
        .iter()
        .map(|l| l.split(": ").nth(1).and_then(|r| r.get(..3)).unwrap_or(""))
        .collect();
    assert_eq!(
        statuses,
        [
            "200", "200", "413", "200", "200", "200", "200", "200", "413", "413", "200", "200",
            "200", "200", "200", "200", "413", "413", "200", "413", "413"
        ]
    );
    assert_eq!(
        got[6],
        "chunked: 200 \"12345\" upstream=1 content-length=Some(\"5\") transfer-encoding=None body=\"12345\""
    );
    assert!(
        got[2].ends_with("connection=Some(\"close\") closed=true"),
        "{}",
        got[2]
    );
    assert_eq!(got[n + 2], "413 request_payload_too_large");
    assert_eq!(got[2 * n], "downstream_rq_too_large=7");
}

#[test]
fn bad_configs_are_refused_as_envoy_refuses_them() {
    let a = Upstream::start("a");
    let dir = tempfile::tempdir().expect("tempdir");
    let base = boot(dir.path(), &a);
    for (from, to) in [
        ("max_request_bytes: 10", "max_request_bytes: 0"),
        ("max_request_bytes: 10", ""),
        ("disabled: true", "disabled: false"),
        ("buffer: { max_request_bytes: 20 }", "buffer: {}"),
    ] {
        let cfg = base.replacen(from, to, 1);
        let (code, stderr) = validate(&cfg);
        assert_eq!(code, Some(1), "{to}: {stderr}");
        if let Some((code, out)) = envoy_validate(&cfg) {
            assert_ne!(code, Some(0), "{to}: envoy took it: {out}");
        }
    }
    let (code, stderr) = validate(&base);
    assert_eq!(code, Some(0), "{stderr}");
}
