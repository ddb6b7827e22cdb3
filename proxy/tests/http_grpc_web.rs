//! `envoy.filters.http.grpc_web` against a gRPC upstream, the same requests through
//! Courier and Envoy 1.40: what the upstream receives, what the HTTP/1.1 client gets back,
//! and the `cluster.<name>.grpc-web.*` counters.

mod http_support;

use base64::Engine as _;
use http_support::*;

const FILTER: &str = "          - name: envoy.filters.http.grpc_web\n            typed_config:\n              \"@type\": type.googleapis.com/envoy.extensions.filters.http.grpc_web.v3.GrpcWeb\n";

const ROUTES: &str = r#"            name: local
            virtual_hosts:
            - name: main
              domains: ["*"]
              routes:
              - match: { prefix: "/svc" }
                route: { cluster: grpc }
              - match: { prefix: "/plain" }
                route: { cluster: grpc }
"#;

fn boot(up: std::net::SocketAddr) -> String {
    with_filters(
        &bootstrap(ROUTES, "", &cluster("grpc", &[up], H2_CLUSTER)),
        FILTER,
    )
}

fn b64(b: &[u8]) -> Vec<u8> {
    base64::engine::general_purpose::STANDARD
        .encode(b)
        .into_bytes()
}

/// One request: (name, path, headers, body).
type Case = (
    &'static str,
    &'static str,
    Vec<(&'static str, &'static str)>,
    Vec<u8>,
);

fn cases() -> Vec<Case> {
    let web = ("content-type", "application/grpc-web+proto");
    let web_plain = ("content-type", "application/grpc-web");
    let text = ("content-type", "application/grpc-web-text");
    let text_proto = ("content-type", "application/grpc-web-text+proto");
    let accept_text = ("accept", "application/grpc-web-text");
    let hello = grpc_frame(b"hello");
    let mut two = grpc_frame(b"first");
    two.extend(grpc_frame(b"second!"));
    let mut padded_twice = b64(&grpc_frame(b""));
    padded_twice.extend(b64(&grpc_frame(b"bb")));
    vec![
        (
            "binary echo",
            "/svc.Greeter/Echo",
            vec![
                web,
                ("x-grpc-web", "1"),
                ("x-user-agent", "grpc-web-javascript/0.1"),
            ],
            hello.clone(),
        ),
        (
            "grpc-web echo",
            "/svc.Greeter/Echo",
            vec![web_plain],
            hello.clone(),
        ),
        (
            "text echo",
            "/svc.Greeter/Echo",
            vec![text, accept_text],
            b64(&hello),
        ),
        (
            "text+proto in, binary out",
            "/svc.Greeter/Echo",
            vec![text_proto],
            b64(&two),
        ),
        (
            "binary in, text+proto out",
            "/svc.Greeter/Echo",
            vec![web, ("accept", "application/grpc-web-text+proto")],
            two.clone(),
        ),
        (
            "text two frames",
            "/svc.Greeter/Echo",
            vec![text, accept_text],
            b64(&two),
        ),
        (
            "trailers-only",
            "/svc.Greeter/Fail",
            vec![web],
            hello.clone(),
        ),
        (
            "trailers-only text",
            "/svc.Greeter/Fail",
            vec![text, accept_text],
            b64(&hello),
        ),
        (
            "error status",
            "/svc.Greeter/Error",
            vec![web],
            hello.clone(),
        ),
        (
            "many frames text",
            "/svc.Greeter/Many",
            vec![web, accept_text],
            hello.clone(),
        ),
        (
            "many frames binary",
            "/svc.Greeter/Many",
            vec![web],
            hello.clone(),
        ),
        ("non-grpc 503", "/plain503", vec![web], hello.clone()),
        (
            "non-grpc 200",
            "/plain200",
            vec![web, accept_text],
            hello.clone(),
        ),
        ("no route", "/other/Echo", vec![web], hello.clone()),
        (
            "bad base64 size",
            "/svc.Greeter/Echo",
            vec![text],
            b"AAAAA".to_vec(),
        ),
        (
            "bad base64 data",
            "/svc.Greeter/Echo",
            vec![text],
            b"!!!!".to_vec(),
        ),
        (
            "padding inside one chunk",
            "/svc.Greeter/Echo",
            vec![text],
            padded_twice,
        ),
        (
            "not grpc-web",
            "/plain200",
            vec![("content-type", "application/json")],
            b"{}".to_vec(),
        ),
        (
            "grpc-web with parameters is not grpc-web",
            "/svc.Greeter/Echo",
            vec![("content-type", "application/grpc-web; charset=utf-8")],
            hello.clone(),
        ),
        (
            "grpc-accept-encoding kept",
            "/svc.Greeter/Echo",
            vec![web, ("grpc-accept-encoding", "gzip")],
            hello.clone(),
        ),
        (
            "garbage frames text",
            "/svc.Greeter/Garbage",
            vec![web, accept_text],
            hello.clone(),
        ),
        (
            "garbage frames binary",
            "/svc.Greeter/Garbage",
            vec![web],
            hello.clone(),
        ),
        ("other service", "/svc.Other/Echo", vec![web], hello.clone()),
        (
            "query in path",
            "/svc.Greeter/Echo?x=1",
            vec![web],
            hello.clone(),
        ),
        (
            "not a method path",
            "/svc.Greeter/Echo/more",
            vec![web],
            hello.clone(),
        ),
    ]
}

/// What upstream headers matter.
const UPSTREAM_HEADERS: &[&str] = &[
    "content-type",
    "content-length",
    "te",
    "grpc-accept-encoding",
    "x-grpc-web",
    "x-user-agent",
    "accept",
];

/// What response headers matter.
const RESPONSE_HEADERS: &[&str] = &[
    "content-type",
    "content-length",
    "grpc-status",
    "grpc-message",
];

fn run(start: &dyn Fn(&str) -> Option<Courier>) -> Option<Vec<String>> {
    let (up, seen) = grpc_upstream();
    let proxy = start(&boot(up))?;
    let mut out = Vec::new();
    for (i, (name, path, headers, body)) in cases().into_iter().enumerate() {
        let case = i.to_string();
        let mut headers = headers;
        headers.push(("x-case", &case));
        let mut client = Client::connect(proxy.listener);
        let mut raw = format!("POST {path} HTTP/1.1\r\nhost: x\r\n");
        for (k, v) in &headers {
            raw += &format!("{k}: {v}\r\n");
        }
        raw += &format!("content-length: {}\r\n\r\n", body.len());
        let mut raw = raw.into_bytes();
        raw.extend_from_slice(&body);
        client.send_raw(&raw);
        let Some(resp) = client.read() else {
            out.push(format!("{name}: no response"));
            eprintln!("{}", out.last().expect("line"));
            continue;
        };
        let mut line = format!("{name}: {}", resp.status);
        for h in RESPONSE_HEADERS {
            line += &format!(" {h}={:?}", resp.header(h));
        }
        line += &format!(" body={:?}", String::from_utf8_lossy(&resp.body));
        out.push(line);
        eprintln!("{}", out.last().expect("line"));
        let got = seen
            .lock()
            .expect("seen")
            .iter()
            .find(|s| s.headers.get("x-case").is_some_and(|v| v == case.as_str()))
            .cloned();
        // A refused body may or may not have reached the upstream first: only what a
        // request the upstream answered looked like is compared.
        if let Some(got) = got.filter(|_| resp.status != 400) {
            let mut line = format!("  upstream {}", got.path);
            for h in UPSTREAM_HEADERS {
                line += &format!(" {h}={:?}", got.headers.get(*h));
            }
            line += &format!(" body={:?}", got.body);
            out.push(line);
        }
    }
    out.extend(stats_with(&proxy, ".grpc-web."));
    Some(out)
}

#[test]
fn grpc_web_is_translated_as_envoy_translates_it() {
    let courier = run(&|b| Some(Courier::start(b))).expect("courier");
    // The facts this test is about, whatever Envoy says.
    assert!(courier
        .iter()
        .any(|l| l.starts_with("text echo: 200") && l.contains("grpc-web-text+proto")));
    assert!(courier
        .iter()
        .any(|l| l.starts_with("cluster.grpc.grpc-web.svc.Greeter.Fail.7: 2")));
    let Some(envoy) = run(&Courier::start_envoy) else {
        eprintln!("no envoy on PATH: compared with nothing");
        return;
    };
    for (c, e) in courier.iter().zip(&envoy) {
        assert_eq!(c, e);
    }
    assert_eq!(courier.len(), envoy.len(), "{courier:#?}\n{envoy:#?}");
}
