//! The custom response filter's `RedirectPolicy` (an internal redirect: the request goes
//! again, to the policy's URI, and the new answer is returned with the policy's status
//! and headers) and the local policy's `body_format`. Each case runs through Courier and,
//! when `envoy` is on PATH, through Envoy 1.40; the two must agree, and agree with the
//! values written here.

mod http_support;

use std::path::Path;

use http_support::*;

const STATUS: &str = r#"{ name: s, typed_config: { "@type": type.googleapis.com/envoy.type.matcher.v3.HttpResponseStatusCodeMatchInput } }"#;
const CLASS: &str = r#"{ name: c, typed_config: { "@type": type.googleapis.com/envoy.type.matcher.v3.HttpResponseStatusCodeClassMatchInput } }"#;
const LOCAL: &str =
    "type.googleapis.com/envoy.extensions.http.custom_response.local_response_policy.v3.LocalResponsePolicy";
const REDIRECT: &str =
    "type.googleapis.com/envoy.extensions.http.custom_response.redirect_policy.v3.RedirectPolicy";

fn on(code: &str, action: &str) -> String {
    format!(
        "                  - predicate: {{ single_predicate: {{ input: {STATUS}, value_match: {{ exact: \"{code}\" }} }} }}\n                    on_match: {{ action: {{ name: p{code}, typed_config: {action} }} }}\n"
    )
}

fn filter() -> String {
    let mut m = String::new();
    m += &on("404", &format!("{{ \"@type\": {REDIRECT}, uri: \"http://errors.example/pages/not-found?from=cr#frag\", response_headers_to_add: [{{ header: {{ key: x-cr, value: redirected }} }}], request_headers_to_add: [{{ header: {{ key: x-cr-req, value: \"%PROTOCOL%\" }} }}] }}"));
    m += &on("401", &format!("{{ \"@type\": {REDIRECT}, redirect_action: {{ path_redirect: \"/pages/login\" }}, status_code: 200 }}"));
    m += &on("403", &format!("{{ \"@type\": {REDIRECT}, redirect_action: {{ host_redirect: \"errors.example\" }}, status_code: 299 }}"));
    m += &on(
        "418",
        &format!("{{ \"@type\": {REDIRECT}, uri: \"http://narrow.example/x\" }}"),
    );
    m += &on("429", &format!("{{ \"@type\": {REDIRECT}, uri: \"http://errors.example/status/503\", response_headers_to_add: [{{ header: {{ key: x-loop, value: once }} }}] }}"));
    m += &on(
        "409",
        &format!("{{ \"@type\": {REDIRECT}, uri: \"http://errors.example/direct\" }}"),
    );
    m += &on("410", &format!("{{ \"@type\": {LOCAL}, body: {{ inline_string: \"gone\" }}, body_format: {{ text_format: \"gone %RESPONSE_CODE% %REQ(:PATH)% %REQ(x-main-route)% %RESP(x-upstream)%\\n\" }}, status_code: 411 }}"));
    m += &on("412", &format!("{{ \"@type\": {LOCAL}, body_format: {{ json_format: {{ code: \"%RESPONSE_CODE%\", path: \"%REQ(:PATH)%\", method: \"%REQ(:METHOD)%\" }}, content_type: application/json }} }}"));
    m += &on("417", &format!("{{ \"@type\": {LOCAL}, body_format: {{ text_format: \"bad %RESPONSE_CODE%\" }}, status_code: 400 }}"));
    m += &format!(
        "                  - predicate: {{ single_predicate: {{ input: {CLASS}, value_match: {{ exact: \"5xx\" }} }} }}\n                    on_match: {{ action: {{ name: five, typed_config: {{ \"@type\": {REDIRECT}, uri: \"https://errors.example/pages/oops\", status_code: 502 }} }} }}\n"
    );
    format!(
        r#"          - name: envoy.filters.http.custom_response
            typed_config:
              "@type": type.googleapis.com/envoy.extensions.filters.http.custom_response.v3.CustomResponse
              custom_response_matcher:
                matcher_list:
                  matchers:
{m}"#
    )
}

fn routes() -> String {
    format!(
        r#"            name: local
            virtual_hosts:
            - name: main
              domains: ["*"]
              routes:
              - match: {{ prefix: "/o/" }}
                route: {{ cluster: a, prefix_rewrite: "/status/" }}
                typed_per_filter_config:
                  envoy.filters.http.custom_response:
                    "@type": type.googleapis.com/envoy.extensions.filters.http.custom_response.v3.CustomResponse
                    custom_response_matcher:
                      matcher_tree:
                        input: {STATUS}
                        exact_match_map:
                          map:
                            "404": {{ action: {{ name: r, typed_config: {{ "@type": {REDIRECT}, uri: "http://errors.example/pages/route-404", status_code: 410 }} }} }}
              - match: {{ prefix: "/retry/" }}
                route: {{ cluster: a, prefix_rewrite: "/status/", retry_policy: {{ retry_on: "5xx", num_retries: 1 }} }}
              - match: {{ prefix: "/" }}
                route: {{ cluster: a }}
                request_headers_to_add: [{{ header: {{ key: x-main-route, value: "1" }} }}]
            - name: narrow
              domains: ["narrow.example"]
              routes:
              - match: {{ prefix: "/only" }}
                route: {{ cluster: a }}
            - name: errors
              domains: ["errors.example"]
              request_headers_to_add: [{{ header: {{ key: x-errors-vh, value: "errors" }} }}]
              response_headers_to_add: [{{ header: {{ key: x-errors-resp, value: "1" }} }}]
              routes:
              - match: {{ prefix: "/direct" }}
                direct_response: {{ status: 200, body: {{ inline_string: "direct page" }} }}
              - match: {{ prefix: "/" }}
                route: {{ cluster: b }}
"#
    )
}

fn boot(dir: &Path, a: &Upstream, b: &Upstream) -> String {
    let log = format!(
        "          access_log:
          - name: details
            typed_config:
              \"@type\": type.googleapis.com/envoy.extensions.access_loggers.file.v3.FileAccessLog
              path: {}
              log_format: {{ text_format: \"%REQ(:METHOD)% %REQ(:AUTHORITY)% %REQ(:PATH)% %RESPONSE_CODE% %RESPONSE_CODE_DETAILS% %RESPONSE_FLAGS% %UPSTREAM_CLUSTER% %BYTES_RECEIVED% %BYTES_SENT%\\n\" }}
",
        dir.join("details.log").display()
    );
    let clusters = cluster("a", &[a.addr], "") + &cluster("b", &[b.addr], "");
    with_filters(&bootstrap(&routes(), &log, &clusters), &filter())
}

/// What a response shows: status, headers (but `date`, and the upstream's timing by name
/// only), body.
fn shown(r: &Resp) -> String {
    let mut headers: Vec<String> = r
        .headers
        .iter()
        .filter(|(k, _)| !k.eq_ignore_ascii_case("date"))
        .map(|(k, v)| match k.to_ascii_lowercase().as_str() {
            "x-envoy-upstream-service-time" => k.to_ascii_lowercase(),
            k => format!("{k}: {v}"),
        })
        .collect();
    headers.sort();
    format!("{} [{}] {:?}", r.status, headers.join("; "), r.body_str())
}

/// What an upstream received: method, path, headers (the request id by name only), body.
fn received(name: &str, s: &Seen) -> String {
    let mut headers: Vec<String> = s
        .headers
        .iter()
        .map(|(k, v)| match k.to_ascii_lowercase().as_str() {
            "x-request-id" => k.to_ascii_lowercase(),
            k => format!("{k}: {v}"),
        })
        .collect();
    headers.sort();
    format!(
        "{name}< {} {} [{}] {:?}",
        s.method,
        s.path,
        headers.join("; "),
        String::from_utf8_lossy(&s.body)
    )
}

fn new_seen(u: &Upstream, from: &mut usize) -> Vec<Seen> {
    let all = u.seen.lock().map(|s| s.clone()).unwrap_or_default();
    let out = all[*from..].to_vec();
    *from = all.len();
    out
}

/// Runs `run` on Courier, then (when `envoy` is on PATH) on Envoy 1.40, each with its own
/// directory and upstreams `a` and `b`; the two accounts must agree; Courier's is returned.
fn on_both<T: PartialEq + std::fmt::Debug>(
    boot: impl Fn(&Path, &Upstream, &Upstream) -> String,
    run: impl Fn(&Courier, &Path, &Upstream, &Upstream) -> T,
) -> T {
    let start = |envoy: bool| {
        let dir = tempfile::tempdir().expect("tempdir");
        let (a, b) = (Upstream::start("a"), Upstream::start("b"));
        let text = boot(dir.path(), &a, &b);
        let proxy = match envoy {
            true => Courier::start_envoy(&text),
            false => Some(Courier::start(&text)),
        };
        proxy.map(|p| run(&p, dir.path(), &a, &b))
    };
    let got = start(false).expect("courier");
    match start(true) {
        Some(envoy) => assert_eq!(envoy, got, "envoy vs courier"),
        None => eprintln!("envoy not on PATH: Courier's side only"),
    }
    got
}

type Case = (&'static str, &'static str, &'static str, &'static [u8]);

const CASES: &[Case] = &[
    ("GET", "x", "/status/200", b""),
    ("GET", "x", "/status/404", b""),
    ("GET", "x", "/status/401?q=1", b""),
    ("GET", "x", "/status/403", b""),
    ("GET", "x", "/status/418", b""),
    ("GET", "x", "/status/429", b""),
    ("GET", "x", "/status/409", b""),
    ("GET", "x", "/status/410", b""),
    ("GET", "x", "/status/412?x=1", b""),
    ("GET", "x", "/o/412", b""),
    ("GET", "x", "/status/500", b""),
    ("GET", "x", "/status/503", b""),
    ("GET", "x", "/status/400", b""),
    ("GET", "x", "/o/404", b""),
    ("GET", "x", "/o/500", b""),
    ("GET", "x", "/o/200", b""),
    ("POST", "x", "/status/404", b"hello"),
    ("PUT", "x", "/status/401", b"a body"),
    ("GET", "errors.example", "/status/404", b""),
    ("GET", "narrow.example", "/nothing", b""),
    ("GET", "x", "/status/404", b""),
    ("DELETE", "x", "/status/403?a=b", b""),
    // Last: Envoy sends the redirected answer's body to a HEAD request.
    ("HEAD", "x", "/status/404", b""),
];

/// Each case's response, then what the upstreams received for it.
fn transcript(proxy: &Courier, a: &Upstream, b: &Upstream) -> Vec<String> {
    let (mut na, mut nb) = (0, 0);
    let mut c = Client::connect(proxy.listener);
    let mut out = Vec::new();
    for (m, h, p, body) in CASES {
        let r = c.request(m, h, p, &[], body);
        out.push(format!("{m} {h} {p} -> {}", shown(&r)));
        for s in new_seen(a, &mut na) {
            out.push(format!("   {}", received("a", &s)));
        }
        for s in new_seen(b, &mut nb) {
            out.push(format!("   {}", received("b", &s)));
        }
    }
    out
}

#[test]
fn redirect_policies_make_the_request_again() {
    let (got, logged, stats) = on_both(boot, |proxy, dir, a, b| {
        let got = transcript(proxy, a, b);
        // One line a request, and one more for each first request redirected.
        let mut logged = log_lines(&dir.join("details.log"), CASES.len() + 16);
        // Envoy sends the redirected answer's body to a HEAD request (the last case):
        // its bytes sent are not compared.
        if let Some(last) = logged.last_mut() {
            if let Some(i) = last.rfind(' ') {
                last.truncate(i);
            }
        }
        let mut stats = stats_with(proxy, "custom_response");
        for name in [
            "http.ingress.downstream_rq_total",
            "http.ingress.downstream_rq_http1_total",
            "http.ingress.downstream_rq_completed",
            "http.ingress.downstream_rq_2xx",
            "http.ingress.downstream_rq_4xx",
            "http.ingress.downstream_rq_5xx",
            "cluster.a.upstream_rq_total",
            "cluster.b.upstream_rq_total",
            "cluster.a.upstream_rq_404",
        ] {
            stats.push(format!("{name}: {}", proxy.stat(name)));
        }
        (got, logged, stats)
    });
    let want = |case: &str| {
        let at = got
            .iter()
            .position(|l| l.starts_with(&format!("{case} -> ")))
            .unwrap_or_else(|| panic!("{case}: {got:#?}"));
        let mut lines = vec![got[at][case.len() + 4..].to_string()];
        lines.extend(
            got[at + 1..]
                .iter()
                .take_while(|l| l.starts_with("   "))
                .map(|l| l.trim().to_string()),
        );
        lines
    };
    // Untouched: no policy matches.
    assert_eq!(
        want("GET x /status/200")[0],
        "200 [content-length: 17; server: envoy; x-envoy-upstream-service-time; x-upstream: a] \"a GET /status/200\""
    );
    // `uri`: another host and cluster; the first status kept; the policy's headers on
    // the answer, its request headers on the new request, which carries the first
    // route's added header (Envoy's router changes the request in place).
    assert_eq!(
        want("GET x /status/404"),
        [
            "404 [content-length: 30; server: envoy; x-cr: redirected; x-envoy-upstream-service-time; x-errors-resp: 1; x-upstream: b] \"b GET /pages/not-found?from=cr\"",
            "a< GET /status/404 [host: x; x-envoy-expected-rq-timeout-ms: 15000; x-forwarded-proto: http; x-main-route: 1; x-request-id] \"\"",
            "b< GET /pages/not-found?from=cr [host: errors.example; x-cr-req: HTTP/1.1; x-envoy-expected-rq-timeout-ms: 15000; x-errors-vh: errors; x-forwarded-proto: http; x-main-route: 1; x-request-id] \"\"",
        ]
    );
    // `redirect_action`: a new path (the query kept), the same host and route (whose
    // header goes on twice); the policy's status.
    assert_eq!(
        want("GET x /status/401?q=1")[2],
        "a< GET /pages/login?q=1 [host: x; x-envoy-expected-rq-timeout-ms: 15000; x-forwarded-proto: http; x-main-route: 1; x-main-route: 1; x-request-id] \"\""
    );
    assert!(want("GET x /status/401?q=1")[0].starts_with("200 "));
    // A new host, the path kept; a body-carrying method goes again as a GET without it.
    assert!(want("DELETE x /status/403?a=b")[0].starts_with("299 "));
    assert!(want("DELETE x /status/403?a=b")[2]
        .starts_with("b< GET /status/403?a=b [host: errors.example;"));
    assert!(want("POST x /status/404")[1].ends_with("\"hello\""));
    assert!(want("POST x /status/404")[2]
        .starts_with("b< GET /pages/not-found?from=cr [host: errors.example;"));
    assert!(want("POST x /status/404")[2].ends_with("\"\""));
    assert!(!want("POST x /status/404")[2].contains("content-length"));
    // No route for the new request: the first response passes, counted.
    assert_eq!(want("GET x /status/418").len(), 2);
    assert!(
        want("GET x /status/418")[0].starts_with("418 ")
            && want("GET x /status/418")[0].contains("x-upstream: a")
    );
    // The redirected answer is never matched again (503 matches the 5xx policy).
    assert!(
        want("GET x /status/429")[0].starts_with("429 ")
            && want("GET x /status/429")[0].contains("x-loop: once")
    );
    // `body_format`: the access log's operators on the request (the route's added
    // header, the path as rewritten) and the response it replaces (its status); a JSON
    // format is still `text/plain`.
    assert_eq!(
        want("GET x /status/410")[0],
        "411 [content-length: 25; content-type: text/plain; server: envoy] \"gone 410 /status/410 1 a\\n\""
    );
    assert_eq!(
        want("GET x /o/412")[0],
        "412 [content-length: 49; content-type: text/plain; server: envoy] \"{\\\"code\\\":412,\\\"method\\\":\\\"GET\\\",\\\"path\\\":\\\"/status/412\\\"}\\n\""
    );
    // A direct response answers the new request.
    assert_eq!(
        want("GET x /status/409")[0],
        "409 [content-length: 11; content-type: text/plain; server: envoy; x-errors-resp: 1] \"direct page\""
    );
    // The route's policy first; the filter's when the route's picks nothing.
    assert!(
        want("GET x /o/404")[0].starts_with("410 ")
            && want("GET x /o/404")[0].contains("b GET /pages/route-404")
    );
    assert!(want("GET x /o/404")[2].contains("x-envoy-original-path: /o/404"));
    assert!(
        want("GET x /o/500")[0].starts_with("502 ")
            && want("GET x /o/500")[0].contains("b GET /pages/oops")
    );
    // The router's own answer (no route) is redirected too.
    assert!(
        want("GET narrow.example /nothing")[0].starts_with("404 ")
            && want("GET narrow.example /nothing")[0].contains("x-upstream: b")
    );
    // The access log tells of both requests, the first as `internal_redirect` (nothing
    // sent), both with the new request's head.
    assert_eq!(logged.len(), CASES.len() + 16, "{logged:#?}");
    assert!(
        logged.contains(&"GET x /status/412 412  - a 0 49".to_string()),
        "{logged:#?}"
    );
    assert_eq!(
        logged[1..3],
        [
            "GET errors.example /pages/not-found?from=cr 404 internal_redirect - b 0 0",
            "GET errors.example /pages/not-found?from=cr 404 via_upstream - b 0 30",
        ],
        "{logged:#?}"
    );
    assert!(
        logged.contains(
            &"GET errors.example /pages/not-found?from=cr 404 internal_redirect NR b 0 0"
                .to_string()
        ),
        "{logged:#?}"
    );
    assert!(
        logged.contains(&"GET x /status/418 418 via_upstream - - 0 17".to_string()),
        "{logged:#?}"
    );
    assert!(
        logged.contains(&"GET errors.example /direct 409 direct_response - - 0 11".to_string()),
        "{logged:#?}"
    );
    // Each request made again counts as a new one (`downstream_rq_total`), its answer
    // once.
    assert_eq!(
        stats,
        [
            "custom_response_invalid_uri: 0",
            "custom_response_redirect_no_route: 0",
            "http.ingress.custom_response_invalid_uri: 0",
            "http.ingress.custom_response_redirect_no_route: 1",
            "http.ingress.downstream_rq_total: 39",
            "http.ingress.downstream_rq_http1_total: 39",
            "http.ingress.downstream_rq_completed: 23",
            "http.ingress.downstream_rq_2xx: 6",
            "http.ingress.downstream_rq_4xx: 14",
            "http.ingress.downstream_rq_5xx: 3",
            "cluster.a.upstream_rq_total: 23",
            "cluster.b.upstream_rq_total: 14",
            "cluster.a.upstream_rq_404: 5",
        ]
    );
}

/// An upstream that answers `404` with body `eager` once it has a request's head, then
/// reads the request's body (its `content-length`) and waits for the next; its address.
fn eager_upstream() -> std::net::SocketAddr {
    use std::io::{BufRead, BufReader, Read, Write};
    let l = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let addr = l.local_addr().expect("addr");
    std::thread::spawn(move || {
        for s in l.incoming().flatten() {
            std::thread::spawn(move || {
                let Ok(mut w) = s.try_clone() else { return };
                let mut r = BufReader::new(s);
                loop {
                    let mut len = 0usize;
                    loop {
                        let mut line = String::new();
                        if r.read_line(&mut line).unwrap_or(0) == 0 {
                            return;
                        }
                        if line == "\r\n" {
                            break;
                        }
                        if let Some((k, v)) = line.split_once(':') {
                            if k.eq_ignore_ascii_case("content-length") {
                                len = v.trim().parse().unwrap_or(0);
                            }
                        }
                    }
                    if w.write_all(b"HTTP/1.1 404 X\r\ncontent-length: 5\r\n\r\neager")
                        .is_err()
                    {
                        return;
                    }
                    let mut body = vec![0; len];
                    if r.read_exact(&mut body).is_err() {
                        return;
                    }
                }
            });
        }
    });
    addr
}

/// A request whose body has not all arrived when the answer a redirect policy matches
/// comes is not made again (Envoy's `recreateStream` needs the request whole): the
/// answer passes, and the connection closes after it.
#[test]
fn a_request_still_arriving_is_not_redirected() {
    let eager = eager_upstream();
    let boot_eager = |dir: &Path, a: &Upstream, b: &Upstream| {
        boot(dir, a, b).replacen(
            "              - match: { prefix: \"/\" }\n                route: { cluster: a }\n",
            "              - match: { prefix: \"/eager\" }\n                route: { cluster: eager }\n              - match: { prefix: \"/\" }\n                route: { cluster: a }\n",
            1,
        ) + &cluster("eager", &[eager], "")
    };
    let got = on_both(boot_eager, |proxy, _, _, b| {
        let mut out = Vec::new();
        for _ in 0..3 {
            let mut c = Client::connect(proxy.listener);
            c.send_raw(b"POST /eager HTTP/1.1\r\nhost: x\r\ncontent-length: 10\r\n\r\nhello");
            // Envoy leaves out `x-envoy-upstream-service-time` here: not compared.
            out.push(
                c.read()
                    .map(|r| shown(&r).replace("; x-envoy-upstream-service-time", "")),
            );
            c.send_raw(b"world");
            out.push(Some(format!("closed: {}", c.closed())));
        }
        // A whole request to the same upstream is redirected.
        let mut c = Client::connect(proxy.listener);
        out.push(Some(shown(&c.request(
            "POST",
            "x",
            "/eager",
            &[],
            b"helloworld",
        ))));
        out.push(Some(format!(
            "b saw {}",
            b.seen.lock().map_or(0, |s| s.len())
        )));
        out
    });
    assert_eq!(
        got[..2],
        [
            Some("404 [connection: close; content-length: 5; server: envoy] \"eager\"".to_string()),
            Some("closed: true".to_string()),
        ]
    );
    assert!(
        got[6]
            .as_deref()
            .is_some_and(|r| r.contains("b GET /pages/not-found?from=cr")),
        "{got:#?}"
    );
    assert_eq!(got[7].as_deref(), Some("b saw 1"));
}

/// A `body_format` reply with status `400`: whether the connection stays open after it is
/// Envoy's too.
#[test]
fn a_formatted_400_reply_as_envoy_sends_it() {
    let got = on_both(boot, |proxy, _, _, _| {
        let mut c = Client::connect(proxy.listener);
        let first = shown(&c.get("x", "/status/417", &[]));
        let second = if first.contains("connection: close") {
            format!("closed: {}", c.closed())
        } else {
            shown(&c.get("x", "/status/200", &[]))
        };
        (first, second)
    });
    assert!(
        got.0.starts_with("400 ") && got.0.ends_with("\"bad 417\""),
        "{got:?}"
    );
}

/// Over HTTP/2 the request made again is the same (its `:authority` the policy's).
#[test]
fn http2_requests_are_redirected_as_in_envoy() {
    let got = on_both(boot, |proxy, _, a, b| {
        let (mut na, mut nb) = (0, 0);
        let mut out = Vec::new();
        for (method, path, body) in [
            ("GET", "/status/404", &b""[..]),
            ("GET", "/status/401?q=1", b""),
            ("POST", "/status/403", b"a body"),
            ("GET", "/status/410", b""),
            ("GET", "/status/200", b""),
        ] {
            let r = h2_call(proxy.listener, method, path, &[], body).expect("an answer");
            let mut headers: Vec<String> = r
                .parts
                .headers
                .iter()
                .filter(|(k, _)| !matches!(k.as_str(), "date" | "x-envoy-upstream-service-time"))
                .map(|(k, v)| format!("{k}: {}", v.to_str().unwrap_or("?")))
                .collect();
            headers.sort();
            out.push(format!(
                "{method} {path} -> {} [{}] {:?}",
                r.parts.status.as_u16(),
                headers.join("; "),
                String::from_utf8_lossy(&r.body)
            ));
            for s in new_seen(a, &mut na) {
                out.push(format!("   {}", received("a", &s)));
            }
            for s in new_seen(b, &mut nb) {
                out.push(format!("   {}", received("b", &s)));
            }
        }
        out
    });
    assert!(
        got.contains(&"   b< GET /pages/not-found?from=cr [host: errors.example; x-cr-req: HTTP/2; x-envoy-expected-rq-timeout-ms: 15000; x-errors-vh: errors; x-forwarded-proto: http; x-main-route: 1; x-request-id] \"\"".to_string()),
        "{got:#?}"
    );
    assert!(got[0].starts_with("GET /status/404 -> 404 ["), "{got:#?}");
}
