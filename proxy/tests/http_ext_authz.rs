//! The external authorization filter (`envoy.filters.http.ext_authz`) against a real
//! gRPC authorization service (tonic, `envoy.service.auth.v3.Authorization`) and a real
//! HTTP one: allowed requests and their mutations, denials, errors and timeouts under
//! both failure modes, per-route `disabled` and `context_extensions`, the request body,
//! and the counters. Each scenario runs through Courier and, when `envoy` is on PATH,
//! through Envoy 1.40: the two transcripts must be equal, and equal to what is written
//! here where it matters.

mod http_support;

use std::collections::BTreeMap;
use std::time::Duration;

use courier_proto::envoy::config::core::v3::{HeaderValue, HeaderValueOption, QueryParameter};
use courier_proto::envoy::r#type::v3::HttpStatus;
use courier_proto::envoy::service::auth::v3::authorization_server::{
    Authorization, AuthorizationServer,
};
use courier_proto::envoy::service::auth::v3::check_response::HttpResponse;
use courier_proto::envoy::service::auth::v3::{
    CheckRequest, CheckResponse, DeniedHttpResponse, OkHttpResponse,
};
use courier_proto::google::rpc::Status;
use http_support::*;

/// The gRPC authorization service: its answer is chosen by the request's `x-authz`
/// field; an allowed request carries, in `x-check`, a summary of what the service was
/// told (for the upstream to show).
#[derive(Clone, Default)]
struct Authz;

fn hvo(key: &str, value: &str, append: Option<bool>) -> HeaderValueOption {
    #[allow(deprecated)]
    HeaderValueOption {
        header: Some(HeaderValue {
            key: key.into(),
            value: value.into(),
            ..Default::default()
        }),
        append: append.map(|value| courier_proto::google::protobuf::BoolValue { value }),
        ..Default::default()
    }
}

/// What the service was told, in a stable form.
fn summary(req: &CheckRequest) -> String {
    let attrs = req.attributes.clone().unwrap_or_default();
    let http = attrs.request.and_then(|r| r.http).unwrap_or_default();
    let mut names: Vec<&String> = http
        .headers
        .keys()
        .filter(|k| !matches!(k.as_str(), "x-request-id" | "x-forwarded-proto"))
        .collect();
    names.sort();
    let ctx: BTreeMap<_, _> = attrs.context_extensions.into_iter().collect();
    let source = attrs
        .source
        .and_then(|s| s.address)
        .map(|a| format!("{a:?}").contains("127.0.0.1"))
        .unwrap_or(false);
    format!(
        "method={} path={} host={} scheme={} protocol={} query={} size={} body={:?} x-authz={:?} headers={names:?} ctx={ctx:?} source_local={source}",
        http.method,
        http.path,
        http.host,
        http.scheme,
        http.protocol,
        http.query,
        http.size,
        http.body,
        http.headers.get("x-authz"),
    )
}

#[tonic::async_trait]
impl Authorization for Authz {
    async fn check(
        &self,
        request: tonic::Request<CheckRequest>,
    ) -> Result<tonic::Response<CheckResponse>, tonic::Status> {
        let req = request.into_inner();
        let mode = req
            .attributes
            .as_ref()
            .and_then(|a| a.request.as_ref())
            .and_then(|r| r.http.as_ref())
            .and_then(|h| h.headers.get("x-authz").cloned())
            .unwrap_or_default();
        let ok = |ok: OkHttpResponse| CheckResponse {
            status: Some(Status::default()),
            http_response: Some(HttpResponse::OkResponse(ok)),
            ..Default::default()
        };
        let resp = match mode.as_str() {
            "deny" => CheckResponse {
                status: Some(Status {
                    code: 7,
                    ..Default::default()
                }),
                http_response: Some(HttpResponse::DeniedResponse(DeniedHttpResponse {
                    status: Some(HttpStatus { code: 401 }),
                    headers: vec![
                        hvo("x-deny-reason", "no-token", None),
                        hvo("set-cookie", "a=1", None),
                        hvo("set-cookie", "b=2", None),
                    ],
                    body: "denied by test".into(),
                })),
                ..Default::default()
            },
            "deny-bare" => CheckResponse {
                status: Some(Status {
                    code: 16,
                    ..Default::default()
                }),
                ..Default::default()
            },
            "error" => return Err(tonic::Status::internal("boom")),
            "slow" => {
                // Past the filter's 300 ms timeout: the call must be abandoned.
                tokio::time::sleep(Duration::from_millis(1500)).await;
                ok(OkHttpResponse::default())
            }
            "mutate" => ok(OkHttpResponse {
                headers: vec![
                    hvo("x-authz-user", "alice", None),
                    hvo("x-existing", "appended", Some(true)),
                    hvo("x-absent", "never", Some(true)),
                ],
                headers_to_remove: vec!["x-remove-me".into(), ":path".into()],
                response_headers_to_add: vec![
                    hvo("x-resp-add", "r1", Some(true)),
                    hvo("x-resp-set", "r2", Some(false)),
                ],
                query_parameters_to_set: vec![QueryParameter {
                    key: "added".into(),
                    value: "1".into(),
                }],
                query_parameters_to_remove: vec!["drop".into()],
                ..Default::default()
            }),
            _ => ok(OkHttpResponse {
                headers: vec![hvo("x-check", &summary(&req), None)],
                ..Default::default()
            }),
        };
        Ok(tonic::Response::new(resp))
    }
}

const H2: &str = "    typed_extension_protocol_options:\n      envoy.extensions.upstreams.http.v3.HttpProtocolOptions:\n        \"@type\": type.googleapis.com/envoy.extensions.upstreams.http.v3.HttpProtocolOptions\n        explicit_http_config: { http2_protocol_options: {} }\n";

/// The routes: `/public` with the filter off, `/ctx` with context extensions at the route
/// (over the virtual host's), everything else to `up`.
const ROUTES: &str = r#"            name: local
            virtual_hosts:
            - name: main
              domains: ["*"]
              typed_per_filter_config:
                authz:
                  "@type": type.googleapis.com/envoy.extensions.filters.http.ext_authz.v3.ExtAuthzPerRoute
                  check_settings: { context_extensions: { level: vhost, vh: main } }
              routes:
              - match: { prefix: "/public" }
                route: { cluster: up }
                typed_per_filter_config:
                  authz:
                    "@type": type.googleapis.com/envoy.extensions.filters.http.ext_authz.v3.ExtAuthzPerRoute
                    disabled: true
              - match: { prefix: "/ctx" }
                route: { cluster: up }
                typed_per_filter_config:
                  authz:
                    "@type": type.googleapis.com/envoy.extensions.filters.http.ext_authz.v3.ExtAuthzPerRoute
                    check_settings: { context_extensions: { level: route, route: ctx } }
              - match: { prefix: "/" }
                route: { cluster: up }
"#;

fn grpc_filter(failure_mode_allow: bool, extra: &str) -> String {
    format!(
        r#"          - name: authz
            typed_config:
              "@type": type.googleapis.com/envoy.extensions.filters.http.ext_authz.v3.ExtAuthz
              transport_api_version: V3
              failure_mode_allow: {failure_mode_allow}
              failure_mode_allow_header_add: true
              grpc_service: {{ envoy_grpc: {{ cluster_name: authz }}, timeout: 0.3s }}
{extra}"#
    )
}

fn grpc_bootstrap(authz: std::net::SocketAddr, up: std::net::SocketAddr, filter: &str) -> String {
    let clusters = cluster("up", &[up], "") + &cluster("authz", &[authz], H2);
    with_filters(&bootstrap(ROUTES, "", &clusters), filter)
}

/// One request and what came of it: the answer's status, the fields that matter, its
/// body, and what the upstream got (if it got the request).
fn exchange(
    proxy: &Courier,
    up: &Upstream,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &[u8],
) -> String {
    let before = up.requests.load(std::sync::atomic::Ordering::SeqCst);
    let r = Client::connect(proxy.listener).request(method, "example.com", path, headers, body);
    let mut keep: Vec<String> = r
        .headers
        .iter()
        .filter(|(k, _)| {
            let k = k.to_ascii_lowercase();
            k.starts_with("x-resp")
                || k.starts_with("x-deny")
                || k == "set-cookie"
                || k == "content-type"
                || k == "www-authenticate"
                || k == "x-other"
        })
        .map(|(k, v)| format!("{}={v}", k.to_ascii_lowercase()))
        .collect();
    keep.sort();
    let mut out = format!(
        "{method} {path} -> {} {keep:?} body={:?}",
        r.status,
        r.body_str()
    );
    let after = up.requests.load(std::sync::atomic::Ordering::SeqCst);
    if after > before {
        if let Some(seen) = up.last() {
            let mut fields: Vec<String> = seen
                .headers
                .iter()
                .filter(|(k, _)| {
                    let k = k.to_ascii_lowercase();
                    k.starts_with("x-")
                        && !matches!(
                            k.as_str(),
                            "x-request-id" | "x-forwarded-proto" | "x-envoy-expected-rq-timeout-ms"
                        )
                })
                .map(|(k, v)| format!("{}={v}", k.to_ascii_lowercase()))
                .collect();
            fields.sort();
            out.push_str(&format!(
                " | upstream {} {} {fields:?} body={:?}",
                seen.method,
                seen.path,
                String::from_utf8_lossy(&seen.body)
            ));
        }
    } else {
        out.push_str(" | not forwarded");
    }
    out
}

fn grpc_scenario(proxy: &Courier, up: &Upstream) -> Vec<String> {
    let mut t = Vec::new();
    let mut go = |m: &str, p: &str, h: &[(&str, &str)], b: &[u8]| {
        t.push(exchange(proxy, up, m, p, h, b));
    };
    go("GET", "/public/a", &[("x-authz", "deny")], b"");
    go("GET", "/a?x=1", &[("x-custom", "v")], b"");
    go("GET", "/ctx/b", &[], b"");
    go("GET", "/a", &[("x-authz", "deny")], b"");
    go("GET", "/a", &[("x-authz", "deny-bare")], b"");
    go("GET", "/a", &[("x-authz", "error")], b"");
    go("GET", "/a", &[("x-authz", "slow")], b"");
    go(
        "GET",
        "/m?drop=1&keep=2",
        &[
            ("x-authz", "mutate"),
            ("x-existing", "orig"),
            ("x-remove-me", "1"),
        ],
        b"",
    );
    go(
        "POST",
        "/post",
        &[("content-type", "text/plain")],
        b"hello body",
    );
    go(
        "GET",
        "/a",
        &[("authorization", "Bearer t"), ("x-a", "1"), ("x-a", "2")],
        b"",
    );
    for name in ["ok", "denied", "error", "failure_mode_allowed", "disabled"] {
        t.push(format!(
            "http.ingress.ext_authz.{name}={}",
            proxy.stat(&format!("http.ingress.ext_authz.{name}"))
        ));
        t.push(format!(
            "cluster.up.ext_authz.{name}={}",
            proxy.stat(&format!("cluster.up.ext_authz.{name}"))
        ));
    }
    t.push(format!(
        "cluster.up.upstream_rq_401={}",
        proxy.stat("cluster.up.upstream_rq_401")
    ));
    t
}

fn compare(courier: &[String], envoy: Option<&[String]>) {
    let Some(envoy) = envoy else { return };
    for (c, e) in courier.iter().zip(envoy) {
        assert_eq!(c, e, "Courier (left) and Envoy (right) differ");
    }
    assert_eq!(courier.len(), envoy.len());
}

#[test]
fn grpc_service_decides_as_envoy() {
    let authz = spawn_grpc_server(AuthorizationServer::new(Authz));
    let up = Upstream::start("up");
    let b = grpc_bootstrap(authz, up.addr, &grpc_filter(false, ""));
    let courier = grpc_scenario(&Courier::start(&b), &up);
    for line in &courier {
        eprintln!("courier: {line}");
    }
    let envoy = Courier::start_envoy(&b).map(|e| grpc_scenario(&e, &up));
    if let Some(e) = &envoy {
        for line in e {
            eprintln!("envoy:   {line}");
        }
    }
    compare(&courier, envoy.as_deref());
    assert!(courier[0].contains("-> 200"), "{}", courier[0]);
    assert!(courier[3].contains("-> 401") && courier[3].contains("denied by test"));
    assert!(courier[4].contains("-> 403"), "{}", courier[4]);
    assert!(courier[5].contains("-> 403") && courier[5].contains("not forwarded"));
    assert!(courier[6].contains("-> 403"), "{}", courier[6]);
}

#[test]
fn grpc_failure_mode_allow_lets_requests_through() {
    let authz = spawn_grpc_server(AuthorizationServer::new(Authz));
    let up = Upstream::start("up");
    let b = grpc_bootstrap(
        authz,
        up.addr,
        &grpc_filter(true, "              status_on_error: { code: 503 }\n"),
    );
    let run = |proxy: &Courier| {
        let mut t = Vec::new();
        t.push(exchange(
            proxy,
            &up,
            "GET",
            "/a",
            &[("x-authz", "error")],
            b"",
        ));
        t.push(exchange(
            proxy,
            &up,
            "GET",
            "/a",
            &[("x-authz", "slow")],
            b"",
        ));
        t.push(exchange(
            proxy,
            &up,
            "GET",
            "/a",
            &[("x-authz", "deny")],
            b"",
        ));
        for name in ["error", "failure_mode_allowed", "denied"] {
            t.push(format!(
                "{name}={}",
                proxy.stat(&format!("http.ingress.ext_authz.{name}"))
            ));
        }
        t
    };
    let courier = run(&Courier::start(&b));
    let envoy = Courier::start_envoy(&b).map(|e| run(&e));
    compare(&courier, envoy.as_deref());
    assert!(
        courier[0].contains("-> 200")
            && courier[0].contains("x-envoy-auth-failure-mode-allowed=true"),
        "{}",
        courier[0]
    );
    assert!(courier[2].contains("-> 401"), "{}", courier[2]);
    assert_eq!(courier[3], "error=2");
}

/// The HTTP authorization service: `…/deny…` is refused `401`, `…/fail…` answered `503`,
/// anything else allowed with fields for the request and its answer; `x-seen` tells what
/// the service got.
fn http_authz() -> std::net::SocketAddr {
    http_service(|posted| {
        let mut names: Vec<&str> = posted
            .headers
            .iter()
            .map(|(k, _)| k.as_str())
            .filter(|k| {
                !matches!(
                    *k,
                    "x-request-id" | "x-forwarded-proto" | "x-envoy-expected-rq-timeout-ms"
                )
            })
            .collect();
        names.sort();
        let seen = format!(
            "{} {} {names:?} len={:?} static={:?} partial={:?} body={:?}",
            posted.method,
            posted.path,
            posted
                .headers
                .iter()
                .find(|(k, _)| k == "content-length")
                .map(|(_, v)| v.clone()),
            posted
                .headers
                .iter()
                .find(|(k, _)| k == "x-static")
                .map(|(_, v)| v.clone()),
            posted
                .headers
                .iter()
                .find(|(k, _)| k == "x-envoy-auth-partial-body")
                .map(|(_, v)| v.clone()),
            String::from_utf8_lossy(&posted.body),
        );
        let h = |k: &str, v: &str| (k.to_string(), v.to_string());
        if posted.path.contains("/deny") {
            Answer {
                status: 401,
                headers: vec![
                    h("www-authenticate", "Bearer"),
                    h("x-other", "1"),
                    h("x-deny-reason", "nope"),
                    h("content-type", "text/html"),
                ],
                body: bytes::Bytes::from_static(b"go away"),
            }
        } else if posted.path.contains("/fail") {
            Answer {
                status: 503,
                headers: vec![],
                body: bytes::Bytes::from_static(b"broken"),
            }
        } else {
            Answer {
                status: 200,
                headers: vec![
                    h("x-authz-user", "bob"),
                    h("x-seen", &seen),
                    h("x-envoy-auth-headers-to-remove", "x-remove-me"),
                    h("x-resp", "yes"),
                    h("x-append", "a"),
                    h("x-not-allowed", "z"),
                ],
                body: bytes::Bytes::new(),
            }
        }
    })
}

fn http_filter(extra: &str) -> String {
    format!(
        r#"          - name: authz
            typed_config:
              "@type": type.googleapis.com/envoy.extensions.filters.http.ext_authz.v3.ExtAuthz
              transport_api_version: V3
              allowed_headers: {{ patterns: [{{ exact: x-custom }}, {{ prefix: x-remove }}] }}
              http_service:
                server_uri: {{ uri: "http://authz", cluster: authz, timeout: 1s }}
                path_prefix: /authz
                authorization_request:
                  headers_to_add: [{{ key: x-static, value: s }}]
                authorization_response:
                  allowed_upstream_headers: {{ patterns: [{{ exact: x-authz-user }}, {{ exact: x-seen }}] }}
                  allowed_upstream_headers_to_append: {{ patterns: [{{ exact: x-append }}] }}
                  allowed_client_headers_on_success: {{ patterns: [{{ exact: x-resp }}] }}
{extra}"#
    )
}

fn http_run(proxy: &Courier, up: &Upstream) -> Vec<String> {
    let mut t = Vec::new();
    let mut go = |m: &str, p: &str, h: &[(&str, &str)], b: &[u8]| {
        t.push(exchange(proxy, up, m, p, h, b));
    };
    go(
        "GET",
        "/a?q=1",
        &[
            ("x-custom", "c"),
            ("x-ignored", "i"),
            ("authorization", "Basic x"),
        ],
        b"",
    );
    go(
        "GET",
        "/b",
        &[("x-remove-me", "r"), ("x-append", "orig")],
        b"",
    );
    go("GET", "/deny/x", &[], b"");
    go("GET", "/fail", &[], b"");
    go("POST", "/post", &[], b"0123456789");
    go("GET", "/public/deny", &[], b"");
    for name in ["ok", "denied", "error"] {
        t.push(format!(
            "{name}={}",
            proxy.stat(&format!("http.ingress.ext_authz.{name}"))
        ));
    }
    t
}

#[test]
fn http_service_decides_as_envoy() {
    let authz = http_authz();
    let up = Upstream::start("up");
    let clusters = cluster("up", &[up.addr], "") + &cluster("authz", &[authz], "");
    let b = with_filters(&bootstrap(ROUTES, "", &clusters), &http_filter(""));
    let courier = http_run(&Courier::start(&b), &up);
    for line in &courier {
        eprintln!("courier: {line}");
    }
    let envoy = Courier::start_envoy(&b).map(|e| http_run(&e, &up));
    if let Some(e) = &envoy {
        for line in e {
            eprintln!("envoy:   {line}");
        }
    }
    compare(&courier, envoy.as_deref());
    assert!(
        courier[2].contains("-> 401") && courier[2].contains("go away"),
        "{}",
        courier[2]
    );
    assert!(courier[3].contains("-> 403"), "{}", courier[3]);
}

#[test]
fn request_body_goes_to_the_service_as_envoy() {
    let authz = http_authz();
    let up = Upstream::start("up");
    let clusters = cluster("up", &[up.addr], "") + &cluster("authz", &[authz], "");
    let run = |partial: bool| {
        let b = with_filters(
            &bootstrap(ROUTES, "", &clusters),
            &http_filter(&format!(
                "              with_request_body: {{ max_request_bytes: 4, allow_partial_message: {partial} }}\n"
            )),
        );
        let go = |proxy: &Courier| {
            vec![
                exchange(proxy, &up, "POST", "/short", &[], b"abc"),
                exchange(proxy, &up, "POST", "/long", &[], b"0123456789"),
                exchange(proxy, &up, "GET", "/none", &[], b""),
            ]
        };
        let courier = go(&Courier::start(&b));
        for line in &courier {
            eprintln!("courier: {line}");
        }
        let envoy = Courier::start_envoy(&b).map(|e| go(&e));
        if let Some(e) = &envoy {
            for line in e {
                eprintln!("envoy:   {line}");
            }
        }
        compare(&courier, envoy.as_deref());
        courier
    };
    let partial = run(true);
    assert!(
        partial[1].contains("-> 200") && partial[1].contains("body=\\\"0123\\\""),
        "{}",
        partial[1]
    );
    assert!(
        partial[1].contains("partial=Some(\\\"true\\\")"),
        "{}",
        partial[1]
    );
    assert!(
        partial[0].contains("partial=Some(\\\"false\\\")"),
        "{}",
        partial[0]
    );
    let whole = run(false);
    assert!(whole[1].contains("-> 413"), "{}", whole[1]);
}

#[test]
fn refuses_what_it_does_not_act_on() {
    let clusters = cluster("up", &["127.0.0.1:1".parse().expect("addr")], "")
        + &cluster("authz", &["127.0.0.1:2".parse().expect("addr")], H2);
    let base = with_filters(&bootstrap(ROUTES, "", &clusters), &grpc_filter(false, ""));
    let at = "static_resources.listeners[0].filter_chains[0].filters[0].typed_config.http_filters[0].typed_config";
    let f = "              failure_mode_allow: false\n";
    assert_refused_by_path(
        &base,
        &[
            (f, "              failure_mode_allow: false\n              clear_route_cache: true\n", &format!("{at}.clear_route_cache")),
            (f, "              failure_mode_allow: false\n              validate_mutations: true\n", &format!("{at}.validate_mutations")),
            (f, "              failure_mode_allow: false\n              metadata_context_namespaces: [a]\n", &format!("{at}.metadata_context_namespaces")),
            (f, "              failure_mode_allow: false\n              shadow_mode: true\n", &format!("{at}.shadow_mode")),
            ("transport_api_version: V3", "transport_api_version: V2", "transport_api_version"),
            (
                "check_settings: { context_extensions: { level: route, route: ctx } }",
                "check_settings: { with_request_body: { max_request_bytes: 5 } }",
                "check_settings.with_request_body",
            ),
        ],
    );
    // Envoy refuses the same invalid one.
    for (from, to) in [("transport_api_version: V3", "transport_api_version: V2")] {
        if let Some((code, _)) = envoy_validate(&base.replacen(from, to, 1)) {
            assert_ne!(code, Some(0), "Envoy accepts {to}");
        }
    }
}
