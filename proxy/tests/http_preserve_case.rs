//! HTTP/1 `header_key_format: { stateful_formatter: preserve_case }` on the connection
//! manager and on clusters: the exact header lines a raw upstream receives and the exact
//! response head a raw client reads, under each side's setting alone and both (with
//! `formatter_type_on_envoy_headers` and `forward_reason_phrase`), a local reply, and a
//! `proper_case_words` side meeting a `preserve_case` one. Each configuration runs through
//! Courier and, when `envoy` is on PATH, through Envoy 1.40: the transcripts must be
//! equal, and equal to what is written here where it matters.

mod http_support;

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use http_support::*;

/// A raw upstream: every request head it reads, byte for byte; it answers each with a
/// mixed-case head and the reason phrase `Very Fine`.
fn raw_upstream() -> (SocketAddr, Arc<Mutex<Vec<String>>>) {
    let l = TcpListener::bind("127.0.0.1:0").expect("bind");
    let addr = l.local_addr().expect("addr");
    let heads: Arc<Mutex<Vec<String>>> = Arc::default();
    let keep = heads.clone();
    std::thread::spawn(move || {
        for s in l.incoming() {
            let Ok(s) = s else { continue };
            let keep = keep.clone();
            std::thread::spawn(move || {
                let Ok(mut w) = s.try_clone() else { return };
                let mut r = BufReader::new(s);
                while let Some(head) = read_raw_head(&mut r) {
                    keep.lock().expect("heads").push(head);
                    let resp = "HTTP/1.1 200 Very Fine\r\nX-Mixed-Case: v\r\nCONTENT-TYPE: text/plain\r\nx-lower: l\r\nContent-Length: 2\r\n\r\nok";
                    if w.write_all(resp.as_bytes()).is_err() {
                        return;
                    }
                }
            });
        }
    });
    (addr, heads)
}

/// One head (up to its empty line), as received.
fn read_raw_head(r: &mut impl BufRead) -> Option<String> {
    let mut head = String::new();
    loop {
        let mut line = String::new();
        if r.read_line(&mut line).ok()? == 0 {
            return None;
        }
        head.push_str(&line);
        if line == "\r\n" {
            return Some(head);
        }
    }
}

/// Sends `raw` on a new connection; the response head as received (its body read by its
/// length).
fn exchange(proxy: SocketAddr, raw: &str) -> String {
    let mut s = TcpStream::connect(proxy).expect("connect");
    s.set_read_timeout(Some(Duration::from_secs(5))).ok();
    s.write_all(raw.as_bytes()).expect("send");
    let mut r = BufReader::new(s);
    let Some(head) = read_raw_head(&mut r) else {
        return "no response".into();
    };
    let len = head
        .lines()
        .find_map(|l| {
            let (k, v) = l.split_once(':')?;
            k.eq_ignore_ascii_case("content-length")
                .then(|| v.trim().parse::<usize>().ok())
                .flatten()
        })
        .unwrap_or(0);
    let mut body = vec![0; len];
    let _ = r.read_exact(&mut body);
    format!("{head}{}", String::from_utf8_lossy(&body))
}

/// Values that differ from run to run made fixed (the request id, the date, the upstream
/// time), the names left as they are; the fields sorted (Courier's header map keeps a
/// repeated name's lines together and orders added fields its own way, which
/// `tests/http_differential.rs` covers).
fn normalised(text: &str) -> String {
    let (head, body) = text.split_once("\r\n\r\n").unwrap_or((text, ""));
    let mut lines = head.split("\r\n");
    let first = lines.next().unwrap_or_default().to_string();
    let mut fields: Vec<String> = lines
        .map(|l| match l.split_once(": ") {
            Some((k, _))
                if ["x-request-id", "date", "x-envoy-upstream-service-time"]
                    .iter()
                    .any(|n| k.eq_ignore_ascii_case(n)) =>
            {
                format!("{k}: X")
            }
            _ => l.to_string(),
        })
        .collect();
    fields.sort_by_key(|l| l.to_ascii_lowercase());
    format!("{first}\n{}\n\n{body}", fields.join("\n"))
}

fn preserve_case(extra: &str, indent: &str) -> String {
    format!(
        "{indent}header_key_format:
{indent}  stateful_formatter:
{indent}    name: preserve_case
{indent}    typed_config:
{indent}      \"@type\": type.googleapis.com/envoy.extensions.http.header_formatters.preserve_case.v3.PreserveCaseFormatterConfig
{extra}"
    )
}

/// The connection manager's and the cluster's `http_protocol_options` bodies (empty: none).
fn boot(upstream: SocketAddr, hcm: &str, cluster_opts: &str) -> String {
    let routes = "            name: local
            virtual_hosts:
            - name: main
              domains: [\"*\"]
              routes:
              - match: { prefix: \"/local\" }
                direct_response: { status: 200, body: { inline_string: hi } }
                response_headers_to_add: [ { header: { key: X-Added-Resp, value: v } } ]
              - match: { prefix: \"/\" }
                route: { cluster: c }
                request_headers_to_add: [ { header: { key: X-Added-Req, value: v } } ]
";
    let hcm = if hcm.is_empty() {
        String::new()
    } else {
        format!("          http_protocol_options:\n{hcm}")
    };
    let extra = if cluster_opts.is_empty() {
        String::new()
    } else {
        format!(
            "    typed_extension_protocol_options:
      envoy.extensions.upstreams.http.v3.HttpProtocolOptions:
        \"@type\": type.googleapis.com/envoy.extensions.upstreams.http.v3.HttpProtocolOptions
        explicit_http_config:
          http_protocol_options:
{cluster_opts}"
        )
    };
    bootstrap(routes, &hcm, &cluster("c", &[upstream], &extra))
}

/// The requests, raw.
const REQUESTS: &[&str] = &[
    "GET /a HTTP/1.1\r\nHost: example.com\r\nX-Foo-BAR: 1\r\nx-lower: 2\r\nACCEPT: */*\r\nx-foo-bar: 3\r\n\r\n",
    "GET /b HTTP/1.1\r\nhOsT: example.com\r\nUSER-AGENT: Raw/1.0\r\nX-Forwarded-Proto: https\r\n\r\n",
    "GET /c HTTP/1.1\r\nHost: example.com\r\nCoOkIe: a=1\r\nX-Request-ID: 00000000-1111-4222-8333-444444444444\r\n\r\n",
    "GET /local HTTP/1.1\r\nHost: example.com\r\nX-Foo: 1\r\n\r\n",
    "HEAD /d HTTP/1.1\r\nHost: example.com\r\nIf-None-Match: \"x\"\r\n\r\n",
    "DELETE /e HTTP/1.1\r\nHost: example.com\r\nX-Mixed-Case: q\r\n\r\n",
];

fn transcript(
    start: fn(&str) -> Option<Courier>,
    hcm: &str,
    cluster_opts: &str,
) -> Option<Vec<String>> {
    let (upstream, heads) = raw_upstream();
    let proxy = start(&boot(upstream, hcm, cluster_opts))?;
    let mut out = Vec::new();
    for raw in REQUESTS {
        let before = heads.lock().expect("heads").len();
        let resp = exchange(proxy.listener, raw);
        let got = heads.lock().expect("heads");
        let sent = if got.len() > before {
            got[got.len() - 1].clone()
        } else {
            "-".into()
        };
        out.push(format!(
            "upstream got:\n{}\nclient got:\n{}",
            normalised(&sent),
            normalised(&resp)
        ));
    }
    Some(out)
}

fn compared(hcm: &str, cluster_opts: &str) -> Vec<String> {
    let ours = transcript(|b| Some(Courier::start(b)), hcm, cluster_opts).expect("courier");
    if let Some(theirs) = transcript(Courier::start_envoy, hcm, cluster_opts) {
        for (a, b) in ours.iter().zip(&theirs) {
            assert_eq!(a, b, "courier vs envoy");
        }
        assert_eq!(ours.len(), theirs.len());
    }
    ours
}

const HCM_INDENT: &str = "            ";
const CLUSTER_INDENT: &str = "            ";

#[test]
fn connection_manager_side_keeps_the_clients_names_upstream() {
    let t = compared(&preserve_case("", HCM_INDENT), "");
    // A name's first spelling is its every line's.
    assert!(t[0].contains("\nACCEPT: */*\nHost: example.com\nx-added-req: v\nx-envoy-expected-rq-timeout-ms: 15000\nX-Foo-BAR: 1\nX-Foo-BAR: 3\nx-forwarded-proto: http\nx-lower: 2\n"), "{}", t[0]);
    // The response the upstream spelled goes back lower-case (the cluster records nothing).
    assert!(
        t[0].contains("HTTP/1.1 200 OK\ncontent-length: 2\ncontent-type: text/plain\n"),
        "{}",
        t[0]
    );
}

#[test]
fn cluster_side_keeps_the_upstreams_names_and_reason_downstream() {
    let t = compared(
        "",
        &preserve_case(
            &format!("{CLUSTER_INDENT}      forward_reason_phrase: true\n"),
            CLUSTER_INDENT,
        ),
    );
    assert!(
        t[0].contains("HTTP/1.1 200 Very Fine\nContent-Length: 2\nCONTENT-TYPE: text/plain\n"),
        "{}",
        t[0]
    );
    assert!(t[0].contains("\nX-Mixed-Case: v\n"), "{}", t[0]);
    assert!(t[0].contains("\nx-foo-bar: 1\n"), "{}", t[0]);
}

#[test]
fn both_sides_with_proper_case_for_the_proxys_own_names() {
    let t = compared(
        &preserve_case(
            &format!("{HCM_INDENT}      formatter_type_on_envoy_headers: PROPER_CASE\n"),
            HCM_INDENT,
        ),
        &preserve_case("", CLUSTER_INDENT),
    );
    assert!(t[0].contains("\nX-Added-Req: v\n"), "{}", t[0]);
    assert!(t[0].contains("\nX-Request-Id: X\n"), "{}", t[0]);
    // Without `forward_reason_phrase` the reason is the proxy's.
    assert!(
        t[0].contains("HTTP/1.1 200 OK\nContent-Length: 2\n"),
        "{}",
        t[0]
    );
    // A local reply was received by no side: lower-case.
    assert!(t[3].contains("\nx-added-resp: v\n"), "{}", t[3]);
}

#[test]
fn a_recorded_case_wins_over_proper_case_words() {
    let proper = format!("{HCM_INDENT}header_key_format: {{ proper_case_words: {{}} }}\n");
    compared(&proper, &preserve_case("", CLUSTER_INDENT));
    compared(&preserve_case("", HCM_INDENT), &proper);
}

#[test]
fn bad_formatters_are_refused_as_envoy_refuses_them() {
    let base = boot(
        refusing_addr(),
        &preserve_case(
            &format!("{HCM_INDENT}      forward_reason_phrase: true\n"),
            HCM_INDENT,
        ),
        "",
    );
    if let Some((code, out)) = envoy_validate(&base) {
        assert_eq!(code, Some(0), "{out}");
    }
    let cases: &[(&str, &str, &str)] = &[
        (
            "type.googleapis.com/envoy.extensions.http.header_formatters.preserve_case.v3.PreserveCaseFormatterConfig",
            "type.googleapis.com/google.protobuf.Struct",
            "http_protocol_options.header_key_format.stateful_formatter.typed_config",
        ),
        (
            "forward_reason_phrase: true",
            "formatter_type_on_envoy_headers: 7",
            "formatter_type_on_envoy_headers",
        ),
    ];
    for (from, to, _) in cases {
        if let Some((code, out)) = envoy_validate(&base.replacen(from, to, 1)) {
            assert_ne!(code, Some(0), "envoy took {to}: {out}");
        }
    }
    assert_refused_by_path(&base, cases);
}
