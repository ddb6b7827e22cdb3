//! `envoy.filters.http.grpc_http1_bridge` against a gRPC upstream, the same requests
//! through Courier and Envoy 1.40 with the filter's defaults and with
//! `upgrade_protobuf_to_grpc` and `ignore_query_parameters`: what the upstream receives
//! and what HTTP/1.1 (bridged) and HTTP/2 (not bridged) clients get back.

mod http_support;

use http_support::*;

const BRIDGE_TYPE: &str =
    "type.googleapis.com/envoy.extensions.filters.http.grpc_http1_bridge.v3.Config";

const ROUTES: &str = r#"            name: local
            virtual_hosts:
            - name: main
              domains: ["*"]
              routes:
              - match: { prefix: "/down." }
                route: { cluster: down }
              - match: { prefix: "/" }
                route: { cluster: backend }
"#;

fn boot(up: std::net::SocketAddr, fields: &str) -> String {
    let clusters =
        cluster("backend", &[up], H2_CLUSTER) + &cluster("down", &[refusing_addr()], H2_CLUSTER);
    let filter = format!(
        "          - name: envoy.filters.http.grpc_http1_bridge\n            typed_config:\n              \"@type\": {BRIDGE_TYPE}\n{fields}"
    );
    with_filters(&bootstrap(ROUTES, "", &clusters), &filter)
}

const CONFIGS: &[(&str, &str)] = &[
    ("defaults", ""),
    (
        "upgrade and ignore query",
        "              upgrade_protobuf_to_grpc: true\n              ignore_query_parameters: true\n",
    ),
];

/// One request: (name, HTTP/2 client, path, headers, body).
type Case = (
    &'static str,
    bool,
    &'static str,
    Vec<(&'static str, &'static str)>,
    Vec<u8>,
);

fn cases() -> Vec<Case> {
    let grpc = ("content-type", "application/grpc");
    let proto = ("content-type", "application/x-protobuf");
    let hello = grpc_frame(b"hello");
    let mut two = grpc_frame(b"a");
    two.extend(grpc_frame(b"bb"));
    vec![
        (
            "echo",
            false,
            "/svc.Greeter/Echo",
            vec![grpc],
            hello.clone(),
        ),
        (
            "echo two messages",
            false,
            "/svc.Greeter/Echo",
            vec![grpc],
            two,
        ),
        ("echo empty", false, "/svc.Greeter/Echo", vec![grpc], vec![]),
        (
            "grpc+proto",
            false,
            "/svc.Greeter/Echo",
            vec![("content-type", "application/grpc+proto")],
            hello.clone(),
        ),
        (
            "many",
            false,
            "/svc.Greeter/Many",
            vec![grpc],
            hello.clone(),
        ),
        (
            "error in trailers",
            false,
            "/svc.Greeter/Error",
            vec![grpc],
            hello.clone(),
        ),
        (
            "trailers-only",
            false,
            "/svc.Greeter/Fail",
            vec![grpc],
            hello.clone(),
        ),
        (
            "garbage frames",
            false,
            "/svc.Greeter/Garbage",
            vec![grpc],
            hello.clone(),
        ),
        (
            "unknown method (404)",
            false,
            "/svc.Greeter/Nope",
            vec![grpc],
            hello.clone(),
        ),
        (
            "plain 503",
            false,
            "/plain.Svc/plain503",
            vec![grpc],
            hello.clone(),
        ),
        (
            "plain 200",
            false,
            "/plain.Svc/plain200",
            vec![grpc],
            hello.clone(),
        ),
        ("upstream down", false, "/down.Svc/Call", vec![grpc], vec![]),
        (
            "query",
            false,
            "/svc.Greeter/Echo?x=1&y",
            vec![grpc],
            hello.clone(),
        ),
        (
            "protobuf",
            false,
            "/svc.Greeter/Echo",
            vec![proto],
            b"hello".to_vec(),
        ),
        (
            "protobuf with query",
            false,
            "/svc.Greeter/Echo?q",
            vec![proto],
            b"hi".to_vec(),
        ),
        (
            "protobuf many",
            false,
            "/svc.Greeter/Many",
            vec![proto],
            b"hello".to_vec(),
        ),
        (
            "protobuf error",
            false,
            "/svc.Greeter/Error",
            vec![proto],
            b"hello".to_vec(),
        ),
        (
            "protobuf trailers-only",
            false,
            "/svc.Greeter/Fail",
            vec![proto],
            b"x".to_vec(),
        ),
        (
            "protobuf empty",
            false,
            "/svc.Greeter/Echo",
            vec![proto],
            vec![],
        ),
        (
            "protobuf with parameters",
            false,
            "/svc.Greeter/Echo",
            vec![("content-type", "application/x-protobuf; a=b")],
            b"hello".to_vec(),
        ),
        (
            "not grpc",
            false,
            "/plain.Svc/plain200?q",
            vec![("content-type", "text/plain")],
            b"hi".to_vec(),
        ),
        (
            "h2 echo",
            true,
            "/svc.Greeter/Echo?x=1",
            vec![grpc],
            hello.clone(),
        ),
        (
            "h2 error",
            true,
            "/svc.Greeter/Error",
            vec![grpc],
            hello.clone(),
        ),
        (
            "h2 protobuf",
            true,
            "/svc.Greeter/Echo",
            vec![proto],
            b"hello".to_vec(),
        ),
    ]
}

/// What upstream headers matter.
const UPSTREAM_HEADERS: &[&str] = &["content-type", "content-length", "te"];

/// What response headers matter.
const RESPONSE_HEADERS: &[&str] = &[
    "content-type",
    "content-length",
    "transfer-encoding",
    "grpc-status",
    "grpc-message",
];

fn run(fields: &str, start: &dyn Fn(&str) -> Option<Courier>) -> Option<Vec<String>> {
    let (up, seen) = grpc_upstream();
    let proxy = start(&boot(up, fields))?;
    let mut out = Vec::new();
    for (i, (name, h2, path, headers, body)) in cases().into_iter().enumerate() {
        let case = i.to_string();
        let mut headers = headers;
        headers.push(("x-case", &case));
        let line = if h2 {
            match h2_call(proxy.listener, "POST", path, &headers, &body) {
                None => format!("{name}: no response"),
                Some(a) => {
                    let mut line = format!("{name}: {}", a.parts.status.as_u16());
                    for h in RESPONSE_HEADERS {
                        line += &format!(" {h}={:?}", a.parts.headers.get(*h));
                    }
                    line += &format!(" body={:?}", a.body);
                    if let Some(t) = &a.trailers {
                        line += &format!(" trailer grpc-status={:?}", t.get("grpc-status"));
                    }
                    line
                }
            }
        } else {
            let mut client = Client::connect(proxy.listener);
            let resp = client.request("POST", "x", path, &headers, &body);
            let mut line = format!("{name}: {}", resp.status);
            for h in RESPONSE_HEADERS {
                line += &format!(" {h}={:?}", resp.header(h));
            }
            line + &format!(" body={:?}", bytes::Bytes::from(resp.body))
        };
        eprintln!("{line}");
        out.push(line);
        let got = seen
            .lock()
            .expect("seen")
            .iter()
            .find(|s| s.headers.get("x-case").is_some_and(|v| v == case.as_str()))
            .cloned();
        if let Some(got) = got {
            let mut line = format!("  upstream {}", got.path);
            for h in UPSTREAM_HEADERS {
                line += &format!(" {h}={:?}", got.headers.get(*h));
            }
            line += &format!(" body={:?}", got.body);
            eprintln!("{line}");
            out.push(line);
        }
    }
    Some(out)
}

#[test]
fn http1_grpc_calls_are_bridged_as_envoy_bridges_them() {
    for (config, fields) in CONFIGS {
        eprintln!("-- {config}");
        let courier = run(fields, &|b| Some(Courier::start(b))).expect("courier");
        // The facts this test is about, whatever Envoy says.
        let has = |start: &str, parts: &[&str]| {
            courier
                .iter()
                .any(|l| l.starts_with(start) && parts.iter().all(|p| l.contains(p)))
        };
        assert!(
            has(
                "error in trailers: 503",
                &[
                    "content-length=Some(\"12\")",
                    "grpc-status=Some(\"13\")",
                    "grpc-message=Some(\"bad thing\")"
                ]
            ),
            "{courier:#?}"
        );
        assert!(
            has("h2 error: 200", &["trailer grpc-status=Some(\"13\")"]),
            "{courier:#?}"
        );
        if fields.is_empty() {
            assert!(
                has("  upstream /svc.Greeter/Echo?x=1&y", &[]),
                "{courier:#?}"
            );
        } else {
            assert!(
                has(
                    "protobuf: 200",
                    &["content-length=Some(\"5\")", "body=b\"hello\""]
                ),
                "{courier:#?}"
            );
            assert!(has("  upstream /svc.Greeter/Echo content-type=Some(\"application/grpc\") content-length=None te=None body=b\"\\0\\0\\0\\0\\x02hi\"", &[]), "{courier:#?}");
        }
        if let Some(envoy) = run(fields, &Courier::start_envoy) {
            let differ: Vec<_> = courier.iter().zip(&envoy).filter(|(c, e)| c != e).collect();
            assert!(differ.is_empty(), "{config}: {differ:#?}");
            assert_eq!(
                courier.len(),
                envoy.len(),
                "{config}: {courier:#?}\n{envoy:#?}"
            );
        } else {
            eprintln!("no envoy on PATH: compared with nothing");
        }
    }
}
