//! `envoy.filters.http.grpc_json_transcoder` against a gRPC upstream, the same requests
//! through Courier and Envoy 1.40 under two configs: what HTTP/1.1 JSON clients get back
//! (status, the headers that matter, the body as a JSON value) and what the upstream
//! received (path, the gRPC headers, the framed message).

mod http_support;

use http_support::*;

const TRANSCODER_TYPE: &str =
    "type.googleapis.com/envoy.extensions.filters.http.grpc_json_transcoder.v3.GrpcJsonTranscoder";

/// The test's FileDescriptorSet (shop.proto and the google.api files it imports), compiled
/// without protoc; its extension options (the http rules) kept.
fn descriptor_set() -> Vec<u8> {
    let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/grpc_json_transcoder");
    protox::Compiler::new([dir])
        .expect("compiler")
        .include_imports(true)
        .open_files(["shop.proto"])
        .expect("shop.proto compiles")
        .encode_file_descriptor_set()
}

const ROUTES: &str = r#"            name: local
            virtual_hosts:
            - name: main
              domains: ["*"]
              routes:
              - match: { prefix: "/" }
                route: { cluster: backend }
"#;

fn boot(dir: &std::path::Path, up: std::net::SocketAddr, fields: &str) -> String {
    let pb = dir.join("shop.pb");
    std::fs::write(&pb, descriptor_set()).expect("write descriptor");
    let filter = format!(
        "          - name: envoy.filters.http.grpc_json_transcoder\n            typed_config:\n              \"@type\": {TRANSCODER_TYPE}\n              proto_descriptor: {}\n              services: [shop.Books, shop.Unmapped]\n{fields}",
        pb.display()
    );
    with_filters(
        &bootstrap(ROUTES, "", &cluster("backend", &[up], H2_CLUSTER)),
        &filter,
    )
}

/// One request: (name, method, path, headers, body).
type Case = (
    &'static str,
    &'static str,
    &'static str,
    Vec<(&'static str, &'static str)>,
    Vec<u8>,
);

fn cases() -> Vec<Case> {
    let json = ("content-type", "application/json");
    let grpc = ("content-type", "application/grpc");
    let b = |s: &str| s.as_bytes().to_vec();
    vec![
        ("get with path variables", "GET", "/v1/shelves/fiction/books/42", vec![], vec![]),
        (
            "get with query params",
            "GET",
            "/v1/shelves/s1/books/7?title=Dune&tags=a&tags=b&author.name=Frank%20Herbert&genre=SCIENCE&available=true&page_count=412",
            vec![],
            vec![],
        ),
        (
            "post body star",
            "POST",
            "/v1/shelves/s2/books",
            vec![json],
            b(r#"{"id":"9","title":"Solaris","author":{"name":"Lem","bornYear":1921},"tags":["x"]}"#),
        ),
        (
            "post body with proto names",
            "POST",
            "/v1/shelves/s2/books",
            vec![json],
            b(r#"{"page_count": 100, "genre": 1}"#),
        ),
        ("post empty body", "POST", "/v1/shelves/s3/books", vec![json], vec![]),
        (
            "put body field",
            "PUT",
            "/v1/books/5",
            vec![json],
            b(r#"{"name":"Le Guin","bornYear":1929}"#),
        ),
        (
            "patch",
            "PATCH",
            "/v1/books/6",
            vec![json],
            b(r#"{"title":"Patched","available":true}"#),
        ),
        ("delete", "DELETE", "/v1/books/8", vec![], vec![]),
        ("multi-segment variable", "GET", "/v1/titles/a/b%20c/d%2Fe", vec![], vec![]),
        ("nested path variable", "GET", "/v1/authors/Borges/books", vec![], vec![]),
        ("custom verb", "POST", "/v1/books/3:archive", vec![json], b(r#"{"title":"old"}"#)),
        ("custom method", "LIST", "/v1/books", vec![], vec![]),
        (
            "single-segment variable unescaped",
            "GET",
            "/v1/shelves/a%2Fb%3Fc/books/1",
            vec![],
            vec![],
        ),
        ("unknown query parameter", "GET", "/v1/shelves/s/books/1?nope=1", vec![], vec![]),
        ("ignored query parameter", "GET", "/v1/shelves/s/books/1?key=abc", vec![], vec![]),
        ("bad JSON", "POST", "/v1/shelves/s/books", vec![json], b(r#"{"title": "#)),
        ("unknown JSON field", "POST", "/v1/shelves/s/books", vec![json], b(r#"{"what": 1}"#)),
        ("wrong JSON type", "POST", "/v1/shelves/s/books", vec![json], b(r#"{"available": "x"}"#)),
        ("bad path value", "GET", "/v1/shelves/s/books/notanumber", vec![], vec![]),
        ("grpc error status", "GET", "/v1/fail/1", vec![], vec![]),
        ("no rule: passes through", "GET", "/v1/nothing/here", vec![], vec![]),
        ("wrong verb: passes through", "DELETE", "/v1/shelves/s/books/1", vec![], vec![]),
        ("auto-mapped or not", "POST", "/shop.Unmapped/Echo", vec![json], b(r#"{"name":"x"}"#)),
        (
            "grpc request passes through",
            "POST",
            "/shop.Books/Echo",
            vec![grpc],
            grpc_frame(b"\x12\x02hi"),
        ),
    ]
}

/// What the upstream received: path, the gRPC headers, the message as JSON.
type UpstreamSaw = (String, Vec<(String, String)>, String);

/// What one request came to: the answer and what the upstream received.
#[derive(Debug, PartialEq)]
struct Outcome {
    name: &'static str,
    status: u16,
    headers: Vec<(String, Option<String>)>,
    body: BodyView,
    upstream: Vec<UpstreamSaw>,
}

/// A body as a JSON value when it is JSON (whitespace may differ), else its text.
#[derive(Debug, PartialEq)]
enum BodyView {
    Json(serde_json::Value),
    Text(String),
}

fn view(body: &[u8]) -> BodyView {
    match serde_json::from_slice(body) {
        Ok(v) => BodyView::Json(v),
        Err(_) => BodyView::Text(String::from_utf8_lossy(body).into_owned()),
    }
}

const ANSWER_HEADERS: &[&str] = &["content-type", "grpc-status", "grpc-message"];
const UPSTREAM_HEADERS: &[&str] = &[
    "content-type",
    "te",
    "x-envoy-original-path",
    "x-envoy-original-method",
];

/// A framed `shop.Book` (or `shop.Author` for `Unmapped`) as JSON: the field order of its
/// encoding is not compared (Envoy's weaver writes the body's fields, then the bindings).
fn decoded(path: &str, body: &[u8]) -> String {
    use prost_reflect::DescriptorPool;
    let pool = DescriptorPool::decode(descriptor_set().as_slice()).expect("pool");
    let name = if path.starts_with("/shop.Unmapped") {
        "shop.Author"
    } else {
        "shop.Book"
    };
    let desc = pool.get_message_by_name(name).expect("type");
    if body.len() < 5 || !path.starts_with("/shop.") {
        return format!("{body:?}");
    }
    match prost_reflect::DynamicMessage::decode(desc, &body[5..]) {
        Ok(m) => serde_json::to_string(&m).unwrap_or_default(),
        Err(_) => format!("{body:?}"),
    }
}

/// Cases whose local reply text is the JSON parser's own sentence (compared by status).
const PARSER_TEXT: &[&str] = &[
    "bad JSON",
    "unknown JSON field",
    "wrong JSON type",
    "bad path value",
];

fn run_all(fields: &'static str) -> Vec<Outcome> {
    let (up, seen) = grpc_upstream();
    let got = courier_and_envoy_agree(
        |dir, _| boot(dir, up, fields),
        |proxy, _, _| {
            seen.lock().expect("seen").clear();
            let mut out = Vec::new();
            for (name, method, path, headers, body) in cases() {
                let r = Client::connect(proxy.listener).request(
                    method,
                    "example.com",
                    path,
                    &headers,
                    &body,
                );
                let upstream = std::mem::take(&mut *seen.lock().expect("seen"))
                    .into_iter()
                    // Envoy opens the upstream stream before the body is transcoded: a
                    // request refused for its body leaves one without a message, seen at
                    // a moment no fact marks.
                    .filter(|s| !(s.body.is_empty() && s.path.starts_with("/shop.")))
                    .map(|s| {
                        let h = UPSTREAM_HEADERS
                            .iter()
                            .filter_map(|n| {
                                s.headers.get(*n).map(|v| {
                                    (
                                        n.to_string(),
                                        String::from_utf8_lossy(v.as_bytes()).into_owned(),
                                    )
                                })
                            })
                            .collect();
                        let body = decoded(&s.path, &s.body);
                        (s.path, h, body)
                    })
                    .collect();
                let body = if PARSER_TEXT.contains(&name) {
                    BodyView::Text(String::new())
                } else {
                    view(&r.body)
                };
                let o = Outcome {
                    name,
                    status: r.status,
                    headers: ANSWER_HEADERS
                        .iter()
                        .map(|n| (n.to_string(), r.header(n).map(str::to_string)))
                        .collect(),
                    body,
                    upstream,
                };
                eprintln!("OUTCOME {o:?}");
                out.push(o);
            }
            out
        },
    );
    for o in &got {
        eprintln!("{o:?}");
    }
    got
}

fn find<'a>(got: &'a [Outcome], name: &str) -> &'a Outcome {
    got.iter().find(|o| o.name == name).expect("case")
}

#[test]
fn defaults_transcode_unary_calls_as_envoy() {
    let got = run_all("              ignored_query_parameters: [key]\n");
    let o = find(&got, "get with path variables");
    assert_eq!(o.status, 200);
    assert_eq!(
        o.body,
        BodyView::Json(serde_json::json!({"id": "42", "shelf": "fiction"}))
    );
    assert_eq!(o.upstream[0].0, "/shop.Books/Echo");
    assert_eq!(find(&got, "bad JSON").status, 400);
    assert_eq!(find(&got, "grpc error status").status, 403);
    assert_eq!(
        find(&got, "no rule: passes through").upstream[0].0,
        "/v1/nothing/here"
    );
}

#[test]
fn options_change_printing_validation_and_status_conversion() {
    let got = run_all(concat!(
        "              print_options:\n",
        "                add_whitespace: true\n",
        "                always_print_primitive_fields: true\n",
        "                always_print_enums_as_ints: true\n",
        "                preserve_proto_field_names: true\n",
        "              auto_mapping: true\n",
        "              convert_grpc_status: true\n",
        "              ignore_unknown_query_parameters: true\n",
        "              match_incoming_request_route: true\n",
        "              url_unescape_spec: ALL_CHARACTERS\n",
        "              request_validation_options:\n",
        "                reject_unknown_method: true\n",
    ));
    assert_eq!(find(&got, "no rule: passes through").status, 404);
    assert_eq!(find(&got, "auto-mapped or not").status, 200);
    let o = find(&got, "grpc error status");
    assert_eq!(
        o.body,
        BodyView::Json(serde_json::json!({"code": 7, "message": "denied", "details": []}))
    );
    let o = find(&got, "unknown query parameter");
    assert_eq!(o.status, 200);
    assert_eq!(o.upstream[0].0, "/shop.Books/Echo");
}

#[test]
fn per_route_config_and_disabled_apply_as_envoy() {
    // One route turns the filter off, another brings a config with auto_mapping.
    let routes = |pb: &str| {
        format!(
            r#"            name: local
            virtual_hosts:
            - name: main
              domains: ["*"]
              routes:
              - match: {{ prefix: "/v1/shelves/off" }}
                route: {{ cluster: backend }}
                typed_per_filter_config:
                  envoy.filters.http.grpc_json_transcoder:
                    "@type": type.googleapis.com/envoy.config.route.v3.FilterConfig
                    disabled: true
              - match: {{ prefix: "/shop.Unmapped" }}
                route: {{ cluster: backend }}
                typed_per_filter_config:
                  envoy.filters.http.grpc_json_transcoder:
                    "@type": {TRANSCODER_TYPE}
                    proto_descriptor: {pb}
                    services: [shop.Unmapped]
                    auto_mapping: true
                    match_incoming_request_route: true
              - match: {{ prefix: "/" }}
                route: {{ cluster: backend }}
"#
        )
    };
    let (up, seen) = grpc_upstream();
    let json = [("content-type", "application/json")];
    let got = courier_and_envoy_agree(
        |dir, _| {
            let pb = dir.join("shop.pb");
            std::fs::write(&pb, descriptor_set()).expect("write descriptor");
            let filter = format!(
                "          - name: envoy.filters.http.grpc_json_transcoder\n            typed_config:\n              \"@type\": {TRANSCODER_TYPE}\n              proto_descriptor: {}\n              services: [shop.Books]\n",
                pb.display()
            );
            let routes = routes(&pb.display().to_string());
            with_filters(
                &bootstrap(&routes, "", &cluster("backend", &[up], H2_CLUSTER)),
                &filter,
            )
        },
        |proxy, _, _| {
            seen.lock().expect("seen").clear();
            let mut out = Vec::new();
            for (method, path, body) in [
                ("GET", "/v1/shelves/off/books/1", ""),
                ("GET", "/v1/shelves/on/books/1", ""),
                ("POST", "/shop.Unmapped/Echo", r#"{"name":"n"}"#),
            ] {
                let r = Client::connect(proxy.listener).request(
                    method,
                    "example.com",
                    path,
                    &json,
                    body.as_bytes(),
                );
                let paths: Vec<String> = std::mem::take(&mut *seen.lock().expect("seen"))
                    .into_iter()
                    .map(|s| s.path)
                    .collect();
                out.push((r.status, view(&r.body), paths));
            }
            out
        },
    );
    assert_eq!(got[0].2, vec!["/v1/shelves/off/books/1".to_string()]);
    assert_eq!(got[1].2, vec!["/shop.Books/Echo".to_string()]);
    assert_eq!(got[2].0, 200);
    assert_eq!(got[2].1, BodyView::Json(serde_json::json!({"name": "n"})));
}

#[test]
fn config_errors_and_refusals() {
    let dir = tempfile::tempdir().expect("tempdir");
    let pb = dir.path().join("shop.pb");
    std::fs::write(&pb, descriptor_set()).expect("write descriptor");
    let up = refusing_addr();
    let base = with_filters(
        &bootstrap(ROUTES, "", &cluster("backend", &[up], H2_CLUSTER)),
        &format!(
            "          - name: envoy.filters.http.grpc_json_transcoder\n            typed_config:\n              \"@type\": {TRANSCODER_TYPE}\n              proto_descriptor: {}\n              services: [shop.Books]\n",
            pb.display()
        ),
    );
    // A service the set does not have: both refuse it.
    let missing = base.replace("services: [shop.Books]", "services: [shop.Nope]");
    let (code, stderr) = validate(&missing);
    assert_eq!(code, Some(1), "{stderr}");
    assert!(
        stderr.contains("Could not find 'shop.Nope' in the proto descriptor"),
        "{stderr}"
    );
    if let Some((code, out)) = envoy_validate(&missing) {
        assert_ne!(code, Some(0));
        assert!(
            out.contains("Could not find 'shop.Nope' in the proto descriptor"),
            "{out}"
        );
    }
    // The descriptor inline (`proto_descriptor_bin`) validates as the file does.
    use base64::Engine as _;
    let inline = base.replace(
        &format!("proto_descriptor: {}", pb.display()),
        &format!(
            "proto_descriptor_bin: {}",
            base64::engine::general_purpose::STANDARD.encode(descriptor_set())
        ),
    );
    assert_eq!(validate(&inline).0, Some(0));
    assert_refused_by_path(
        &base,
        &[
            (
                "services: [shop.Books]\n",
                "services: [shop.Books]\n              case_insensitive_enum_parsing: true\n",
                "case_insensitive_enum_parsing",
            ),
            (
                "services: [shop.Books]\n",
                "services: [shop.Books]\n              match_unregistered_custom_verb: true\n",
                "match_unregistered_custom_verb",
            ),
            (
                "services: [shop.Books]\n",
                "services: [shop.Books]\n              capture_unknown_query_parameters: true\n",
                "capture_unknown_query_parameters",
            ),
        ],
    );
}
