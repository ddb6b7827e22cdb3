//! The external processing filter (`envoy.filters.http.ext_proc`) against a real gRPC
//! `ExternalProcessor` (tonic, one bidirectional stream per request), scripted per
//! request by its `x-script` field: header changes on the request and its answer,
//! buffered bodies replaced both ways, immediate responses, skip modes, per-route
//! `disabled` and mode overrides, spurious answers, and the failure modes with a service
//! that is absent, fails, hangs past `message_timeout` or answers what is not gRPC.
//! Each scenario runs through Courier and, when `envoy` is on PATH, through Envoy 1.40:
//! statuses, fields, bodies, what the upstream got and the counters must be equal.

mod ext_proc_support;
mod http_support;

use courier_proto::envoy::config::core::v3::header_value_option::HeaderAppendAction;
use courier_proto::envoy::config::core::v3::{HeaderValue, HeaderValueOption};
use courier_proto::envoy::r#type::v3::HttpStatus;
use courier_proto::envoy::service::ext_proc::v3::external_processor_server::{
    ExternalProcessor, ExternalProcessorServer,
};
use courier_proto::envoy::service::ext_proc::v3::{
    body_mutation, common_response::ResponseStatus, processing_request, processing_response,
    BodyMutation, BodyResponse, CommonResponse, HeaderMutation, HeadersResponse, ImmediateResponse,
    ProcessingRequest, ProcessingResponse,
};
use ext_proc_support::{body, counters, set, Answers};
use http_support::*;

const H2: &str = "    typed_extension_protocol_options:\n      envoy.extensions.upstreams.http.v3.HttpProtocolOptions:\n        \"@type\": type.googleapis.com/envoy.extensions.upstreams.http.v3.HttpProtocolOptions\n        explicit_http_config: { http2_protocol_options: {} }\n";

/// The scripted processor: what a stream's request headers ask in `x-script` decides
/// every answer on that stream.
#[derive(Clone, Default)]
struct Proc;

fn with_action(mut h: HeaderValueOption, action: HeaderAppendAction) -> HeaderValueOption {
    h.append_action = action as i32;
    h
}

#[allow(deprecated)]
fn appended(mut h: HeaderValueOption) -> HeaderValueOption {
    h.append = Some(courier_proto::google::protobuf::BoolValue { value: true });
    h
}

fn common(set_headers: Vec<HeaderValueOption>, remove: &[&str]) -> CommonResponse {
    CommonResponse {
        header_mutation: Some(HeaderMutation {
            set_headers,
            remove_headers: remove.iter().map(|s| s.to_string()).collect(),
        }),
        ..Default::default()
    }
}

fn headers_answer(request: bool, c: CommonResponse) -> ProcessingResponse {
    let h = HeadersResponse { response: Some(c) };
    ProcessingResponse {
        response: Some(if request {
            processing_response::Response::RequestHeaders(h)
        } else {
            processing_response::Response::ResponseHeaders(h)
        }),
        ..Default::default()
    }
}

fn body_answer(request: bool, c: CommonResponse) -> ProcessingResponse {
    let b = BodyResponse { response: Some(c) };
    ProcessingResponse {
        response: Some(if request {
            processing_response::Response::RequestBody(b)
        } else {
            processing_response::Response::ResponseBody(b)
        }),
        ..Default::default()
    }
}

/// A header message's fields as `name=value`, sorted, the volatile ones left out.
fn summary(h: &courier_proto::envoy::service::ext_proc::v3::HttpHeaders) -> String {
    let mut names: Vec<String> = h
        .headers
        .iter()
        .flat_map(|m| &m.headers)
        .filter(|v| {
            !matches!(
                v.key.as_str(),
                "x-request-id" | "x-envoy-upstream-service-time" | "date" | "server"
            )
        })
        .map(|v| {
            format!(
                "{}={}{}",
                v.key,
                String::from_utf8_lossy(&v.raw_value),
                if v.value.is_empty() { "" } else { "(value)" }
            )
        })
        .collect();
    names.sort();
    format!("{names:?} eos={}", h.end_of_stream)
}

/// The answer to one message, or none (the service stays silent), or the stream's end.
enum Reply {
    Send(Box<ProcessingResponse>),
    Silent,
    Fail(tonic::Status),
    Close,
}

fn send(r: ProcessingResponse) -> Reply {
    Reply::Send(Box::new(r))
}

/// A common answer replacing the body with `b`.
fn with_body(b: Option<BodyMutation>) -> CommonResponse {
    CommonResponse {
        body_mutation: b,
        ..Default::default()
    }
}

fn answer(script: &mut String, msg: ProcessingRequest) -> Reply {
    use processing_request::Request as R;
    let Some(req) = msg.request else {
        return Reply::Silent;
    };
    if let R::RequestHeaders(h) = &req {
        *script = h
            .headers
            .iter()
            .flat_map(|m| &m.headers)
            .find(|v| v.key == "x-script")
            .map(|v| String::from_utf8_lossy(&v.raw_value).into_owned())
            .unwrap_or_default();
    }
    let s = script.as_str();
    match (s, req) {
        ("error", _) => Reply::Fail(tonic::Status::internal("boom")),
        ("hang", _) => Reply::Silent,
        ("close", _) => Reply::Close,
        ("spurious", R::RequestHeaders(_)) => {
            send(headers_answer(false, CommonResponse::default()))
        }
        ("immediate", R::RequestHeaders(_)) => send(ProcessingResponse {
            response: Some(processing_response::Response::ImmediateResponse(
                ImmediateResponse {
                    status: Some(HttpStatus { code: 403 }),
                    headers: Some(HeaderMutation {
                        set_headers: vec![
                            set("x-imm", "1"),
                            set("content-type", "application/json"),
                            set("x-envoy-imm", "e"),
                        ],
                        remove_headers: vec![],
                    }),
                    body: b"{\"denied\":true}".to_vec(),
                    details: "no way".into(),
                    ..Default::default()
                },
            )),
            ..Default::default()
        }),
        ("immediate-bare", R::RequestHeaders(_)) => send(ProcessingResponse {
            response: Some(processing_response::Response::ImmediateResponse(
                ImmediateResponse {
                    status: Some(HttpStatus { code: 100 }),
                    body: b"bare".to_vec(),
                    ..Default::default()
                },
            )),
            ..Default::default()
        }),
        ("immediate-late", R::ResponseHeaders(_)) => send(ProcessingResponse {
            response: Some(processing_response::Response::ImmediateResponse(
                ImmediateResponse {
                    status: Some(HttpStatus { code: 418 }),
                    body: b"late".to_vec(),
                    ..Default::default()
                },
            )),
            ..Default::default()
        }),
        ("mutate", R::RequestHeaders(h)) => send(headers_answer(
            true,
            common(
                vec![
                    set("x-added", "1"),
                    set("x-existing", "new"),
                    appended(set("x-multi", "2")),
                    with_action(set("x-existing", "never"), HeaderAppendAction::AddIfAbsent),
                    with_action(set("x-absent", "a"), HeaderAppendAction::AddIfAbsent),
                    with_action(
                        set("x-absent2", "never"),
                        HeaderAppendAction::OverwriteIfExists,
                    ),
                    set("x-envoy-foo", "no"),
                    set("host", "other.example"),
                    set(":path", "/rewritten"),
                    set("x-seen", &summary(&h)),
                ],
                &["x-remove-me", ":method"],
            ),
        )),
        ("mutate", R::ResponseHeaders(h)) => send(headers_answer(
            false,
            common(
                vec![
                    set("x-resp-set", "r"),
                    set(":status", "201"),
                    set("x-resp-seen", &summary(&h)),
                ],
                &["x-upstream"],
            ),
        )),
        ("value-only", R::RequestHeaders(_)) => send(headers_answer(true, {
            let mut c = common(vec![], &[]);
            if let Some(m) = c.header_mutation.as_mut() {
                m.set_headers.push(HeaderValueOption {
                    header: Some(HeaderValue {
                        key: "x-value-only".into(),
                        value: "v".into(),
                        ..Default::default()
                    }),
                    ..Default::default()
                });
            }
            c
        })),
        ("bad-header", R::RequestHeaders(_)) => send(headers_answer(
            true,
            common(vec![set("bad header", "x")], &[]),
        )),
        ("replace-body", R::RequestHeaders(_)) => send(headers_answer(
            true,
            common(vec![set("x-req-phase", "headers")], &["content-length"]),
        )),
        ("replace-body", R::RequestBody(b)) => send(body_answer(true, {
            let mut c = common(vec![set("x-req-phase", "body")], &[]);
            c.body_mutation = body(&format!("REPLACED({})", String::from_utf8_lossy(&b.body)));
            c
        })),
        ("replace-body", R::ResponseHeaders(_)) => {
            send(headers_answer(false, common(vec![], &["content-length"])))
        }
        ("replace-body", R::ResponseBody(b)) => send(body_answer(false, {
            let mut c = common(vec![set("x-resp-phase", "body")], &[]);
            c.body_mutation = body(&format!("RESP({})", String::from_utf8_lossy(&b.body)));
            c
        })),
        ("mismatch", R::RequestBody(_)) => {
            send(body_answer(true, with_body(body("a different length"))))
        }
        ("clear-resp", R::ResponseBody(_)) => send(body_answer(
            false,
            with_body(Some(BodyMutation {
                mutation: Some(body_mutation::Mutation::ClearBody(true)),
            })),
        )),
        ("continue-replace", R::RequestHeaders(_)) => send(headers_answer(true, {
            let mut c = common(vec![set("x-car", "1")], &[]);
            c.status = ResponseStatus::ContinueAndReplace as i32;
            c.body_mutation = body("CAR");
            c
        })),
        ("more-time", R::RequestHeaders(_)) => send(ProcessingResponse {
            override_message_timeout: Some(courier_proto::google::protobuf::Duration {
                seconds: 0,
                nanos: 100_000_000,
            }),
            ..Default::default()
        }),
        (_, R::RequestHeaders(h)) => send(headers_answer(
            true,
            common(vec![set("x-proc-seen", &summary(&h))], &[]),
        )),
        (_, R::ResponseHeaders(h)) => send(headers_answer(
            false,
            common(vec![set("x-resp-proc", &summary(&h))], &[]),
        )),
        (_, R::RequestBody(b)) => send(body_answer(
            true,
            with_body(body(&String::from_utf8_lossy(&b.body).to_uppercase())),
        )),
        (_, R::ResponseBody(b)) => send(body_answer(
            false,
            with_body(body(&format!("[{}]", String::from_utf8_lossy(&b.body)))),
        )),
        _ => Reply::Silent,
    }
}

#[tonic::async_trait]
impl ExternalProcessor for Proc {
    type ProcessStream = Answers;

    async fn process(
        &self,
        request: tonic::Request<tonic::Streaming<ProcessingRequest>>,
    ) -> Result<tonic::Response<Answers>, tonic::Status> {
        let mut inbound = request.into_inner();
        let (tx, rx) = tokio::sync::mpsc::channel(8);
        tokio::spawn(async move {
            let mut script = String::new();
            while let Ok(Some(msg)) = inbound.message().await {
                match answer(&mut script, msg) {
                    Reply::Send(r) => {
                        if tx.send(Ok(*r)).await.is_err() {
                            return;
                        }
                    }
                    Reply::Silent => {}
                    Reply::Fail(s) => {
                        let _ = tx.send(Err(s)).await;
                        return;
                    }
                    Reply::Close => return,
                }
            }
        });
        Ok(tonic::Response::new(Box::pin(
            tokio_stream::wrappers::ReceiverStream::new(rx),
        )))
    }
}

/// A service that answers every stream `200 application/grpc` and then a frame that is
/// no `ProcessingResponse`, holding the stream open.
fn garbage_server() -> std::net::SocketAddr {
    spawn_tokio_server(|s| async move {
        let Ok(mut conn) = h2::server::handshake(s).await else {
            return;
        };
        while let Some(Ok((req, mut respond))) = conn.accept().await {
            tokio::spawn(async move {
                let Ok(resp) = http::Response::builder()
                    .status(200)
                    .header("content-type", "application/grpc")
                    .body(())
                else {
                    return;
                };
                if let Ok(mut send) = respond.send_response(resp, false) {
                    let _ = send.send_data(
                        bytes::Bytes::from_static(&[0, 0, 0, 0, 3, 0xff, 0xff, 0xff]),
                        false,
                    );
                    let _held = req;
                    std::future::pending::<()>().await;
                }
            });
        }
    })
}

/// Routes: `/off` with the filter disabled; `/buffered` sending both bodies;
/// `/skip` sending nothing; `/resp-only` the response's headers only; `/body-only` the
/// request's body only; everything else the filter's own mode (headers both ways).
const ROUTES: &str = r#"            name: local
            virtual_hosts:
            - name: main
              domains: ["*"]
              routes:
              - match: { prefix: "/off" }
                route: { cluster: up }
                typed_per_filter_config:
                  proc:
                    "@type": type.googleapis.com/envoy.extensions.filters.http.ext_proc.v3.ExtProcPerRoute
                    disabled: true
              - match: { prefix: "/buffered" }
                route: { cluster: up }
                typed_per_filter_config:
                  proc:
                    "@type": type.googleapis.com/envoy.extensions.filters.http.ext_proc.v3.ExtProcPerRoute
                    overrides: { processing_mode: { request_body_mode: BUFFERED, response_body_mode: BUFFERED } }
              - match: { prefix: "/skip" }
                route: { cluster: up }
                typed_per_filter_config:
                  proc:
                    "@type": type.googleapis.com/envoy.extensions.filters.http.ext_proc.v3.ExtProcPerRoute
                    overrides: { processing_mode: { request_header_mode: SKIP, response_header_mode: SKIP } }
              - match: { prefix: "/resp-only" }
                route: { cluster: up }
                typed_per_filter_config:
                  proc:
                    "@type": type.googleapis.com/envoy.extensions.filters.http.ext_proc.v3.ExtProcPerRoute
                    overrides: { processing_mode: { request_header_mode: SKIP } }
              - match: { prefix: "/body-only" }
                route: { cluster: up }
                typed_per_filter_config:
                  proc:
                    "@type": type.googleapis.com/envoy.extensions.filters.http.ext_proc.v3.ExtProcPerRoute
                    overrides: { processing_mode: { request_header_mode: SKIP, response_header_mode: SKIP, request_body_mode: BUFFERED } }
              - match: { prefix: "/" }
                route: { cluster: up }
"#;

fn filter(failure_mode_allow: bool) -> String {
    format!(
        r#"          - name: proc
            typed_config:
              "@type": type.googleapis.com/envoy.extensions.filters.http.ext_proc.v3.ExternalProcessor
              failure_mode_allow: {failure_mode_allow}
              message_timeout: 0.3s
              grpc_service: {{ envoy_grpc: {{ cluster_name: proc }} }}
"#
    )
}

fn boot(proc: std::net::SocketAddr, up: std::net::SocketAddr, failure_mode_allow: bool) -> String {
    let clusters = cluster("up", &[up], "") + &cluster("proc", &[proc], H2);
    with_filters(
        &bootstrap(ROUTES, "", &clusters),
        &filter(failure_mode_allow),
    )
}

/// One request and what came of it: status, the fields that matter, body, and what the
/// upstream got (if it got the request).
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
        .map(|(k, v)| (k.to_ascii_lowercase(), v))
        .filter(|(k, _)| {
            (k.starts_with("x-") && k != "x-envoy-upstream-service-time") || k == "content-type"
        })
        .map(|(k, v)| format!("{k}={v}"))
        .collect();
    keep.sort();
    let mut out = format!(
        "{method} {path} -> {} {keep:?} body={:?}",
        r.status,
        r.body_str()
    );
    let after = up.requests.load(std::sync::atomic::Ordering::SeqCst);
    match up.last().filter(|_| after > before) {
        Some(seen) => {
            let mut fields: Vec<String> = seen
                .headers
                .iter()
                .map(|(k, v)| (k.to_ascii_lowercase(), v))
                .filter(|(k, _)| {
                    (k.starts_with("x-")
                        && !matches!(
                            k.as_str(),
                            "x-request-id" | "x-forwarded-proto" | "x-envoy-expected-rq-timeout-ms"
                        ))
                        || k == "host"
                        || k == "content-length"
                })
                .map(|(k, v)| format!("{k}={v}"))
                .collect();
            fields.sort();
            out.push_str(&format!(
                " | upstream {} {} {fields:?} body={:?}",
                seen.method,
                seen.path,
                String::from_utf8_lossy(&seen.body)
            ));
        }
        None => out.push_str(" | not forwarded"),
    }
    out
}

const COUNTERS: &[&str] = &[
    "streams_started",
    "stream_msgs_sent",
    "stream_msgs_received",
    "spurious_msgs_received",
    "streams_closed",
    "streams_failed",
    "failure_mode_allowed",
    "message_timeouts",
    "rejected_header_mutations",
    "override_message_timeout_ignored",
];

/// Runs `scenario` through Courier and (when on PATH) Envoy on the bootstrap `b`; both
/// transcripts must be equal. Courier's is returned.
fn agree(b: &str, scenario: impl Fn(&Courier) -> Vec<String>) -> Vec<String> {
    let courier = scenario(&Courier::start(b));
    for line in &courier {
        eprintln!("courier: {line}");
    }
    if let Some(envoy) = Courier::start_envoy(b).map(|e| scenario(&e)) {
        for line in &envoy {
            eprintln!("envoy:   {line}");
        }
        for (c, e) in courier.iter().zip(&envoy) {
            assert_eq!(c, e, "Courier (left) and Envoy (right) differ");
        }
        assert_eq!(courier.len(), envoy.len());
    }
    courier
}

#[test]
fn processing_matches_envoy() {
    let proc = spawn_grpc_server(ExternalProcessorServer::new(Proc));
    let up = Upstream::start("up");
    let b = boot(proc, up.addr, false);
    let t = agree(&b, |p| {
        let mut t = Vec::new();
        let mut go = |m: &str, path: &str, h: &[(&str, &str)], body: &[u8]| {
            t.push(exchange(p, &up, m, path, h, body));
        };
        go("GET", "/plain?q=1", &[("x-custom", "c")], b"");
        go(
            "GET",
            "/mut",
            &[
                ("x-script", "mutate"),
                ("x-existing", "old"),
                ("x-multi", "1"),
                ("x-remove-me", "r"),
            ],
            b"",
        );
        go("GET", "/v", &[("x-script", "value-only")], b"");
        go("GET", "/imm", &[("x-script", "immediate")], b"");
        go("GET", "/imm", &[("x-script", "immediate-bare")], b"");
        go("GET", "/late", &[("x-script", "immediate-late")], b"");
        go("GET", "/bad", &[("x-script", "bad-header")], b"");
        go("GET", "/sp", &[("x-script", "spurious")], b"");
        go("GET", "/closed", &[("x-script", "close")], b"");
        go("GET", "/mt", &[("x-script", "more-time")], b"");
        go("GET", "/off/a", &[("x-script", "immediate")], b"");
        go("GET", "/skip/a", &[("x-script", "immediate")], b"");
        go("GET", "/resp-only/a", &[("x-script", "immediate")], b"");
        go(
            "POST",
            "/body-only/echo",
            &[("x-script", "immediate")],
            b"lower body",
        );
        go(
            "POST",
            "/buffered/echo",
            &[("x-script", "replace-body")],
            b"abc",
        );
        go(
            "POST",
            "/buffered/echo",
            &[("x-script", "mismatch")],
            b"abc",
        );
        go(
            "POST",
            "/buffered/echo",
            &[("x-script", "clear-resp")],
            b"abc",
        );
        go("POST", "/buffered/echo", &[], b"plain body");
        go("GET", "/buffered/none", &[], b"");
        go(
            "POST",
            "/echo",
            &[("x-script", "continue-replace")],
            b"original",
        );
        t.extend(counters(p, COUNTERS));
        t
    });
    let line = |prefix: &str, n: usize| {
        t.iter()
            .filter(|l| l.starts_with(prefix))
            .nth(n)
            .cloned()
            .unwrap_or_default()
    };
    assert!(
        line("GET /imm", 0).contains("-> 403"),
        "{}",
        line("GET /imm", 0)
    );
    assert!(
        line("GET /bad", 0).contains("-> 500"),
        "{}",
        line("GET /bad", 0)
    );
    assert!(
        line("GET /off/a", 0).contains("-> 200"),
        "{}",
        line("GET /off/a", 0)
    );
    assert!(
        line("GET /mut", 0).contains("/rewritten"),
        "{}",
        line("GET /mut", 0)
    );
}

#[test]
fn failures_follow_the_failure_mode_as_envoy() {
    let proc = spawn_grpc_server(ExternalProcessorServer::new(Proc));
    let garbage = garbage_server();
    let absent = refusing_addr();
    for allow in [false, true] {
        for (name, service, script) in [
            ("absent", absent, ""),
            ("garbage", garbage, ""),
            ("error", proc, "error"),
            ("hang", proc, "hang"),
            ("spurious", proc, "spurious"),
        ] {
            let up = Upstream::start("up");
            let b = boot(service, up.addr, allow);
            let t = agree(&b, |p| {
                let mut t = vec![format!("{name} failure_mode_allow={allow}")];
                t.push(exchange(p, &up, "GET", "/a", &[("x-script", script)], b""));
                t.push(exchange(
                    p,
                    &up,
                    "GET",
                    "/off/b",
                    &[("x-script", script)],
                    b"",
                ));
                t.extend(counters(p, COUNTERS));
                t
            });
            let want = match (allow, name) {
                (true, _) => "-> 200",
                (false, "hang") => "-> 504",
                (false, _) => "-> 500",
            };
            assert!(t[1].contains(want), "{}", t[1]);
            assert!(t[2].contains("-> 200"), "{}", t[2]);
        }
    }
}

#[test]
fn refuses_what_it_does_not_act_on() {
    let base = boot(
        "127.0.0.1:2".parse().expect("addr"),
        "127.0.0.1:1".parse().expect("addr"),
        false,
    );
    let at = "static_resources.listeners[0].filter_chains[0].filters[0].typed_config.http_filters[0].typed_config";
    let f = "              message_timeout: 0.3s\n";
    let with = |extra: &str| format!("{f}              {extra}\n");
    let cases = [
        (
            with("request_attributes: [request.path]"),
            format!("{at}.request_attributes"),
        ),
        (
            with("response_attributes: [response.code]"),
            format!("{at}.response_attributes"),
        ),
        (
            with("mutation_rules: { allow_all_routing: true }"),
            format!("{at}.mutation_rules"),
        ),
        (
            with("max_message_timeout: 1s"),
            format!("{at}.max_message_timeout"),
        ),
        (
            with("disable_immediate_response: true"),
            format!("{at}.disable_immediate_response"),
        ),
        (
            with("observability_mode: true"),
            format!("{at}.observability_mode"),
        ),
        (
            with("send_body_without_waiting_for_header_response: true"),
            format!("{at}.send_body_without_waiting_for_header_response"),
        ),
    ];
    let cases: Vec<(&str, &str, &str)> = cases
        .iter()
        .map(|(to, want)| (f, to.as_str(), want.as_str()))
        .chain([
            (
                "overrides: { processing_mode: { request_header_mode: SKIP } }",
                "overrides: { grpc_service: { envoy_grpc: { cluster_name: up } } }",
                "overrides.grpc_service",
            ),
            // A route's body streamed both ways with its trailers not sent (Envoy lets the
            // trailers pass before the service's body).
            (
                "overrides: { processing_mode: { request_header_mode: SKIP } }",
                "overrides: { processing_mode: { response_body_mode: FULL_DUPLEX_STREAMED } }",
                "overrides.processing_mode.response_trailer_mode",
            ),
        ])
        .collect();
    assert_refused_by_path(&base, &cases);
}
