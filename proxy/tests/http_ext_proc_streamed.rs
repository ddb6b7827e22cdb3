//! The external processing filter's streamed modes against a real gRPC
//! `ExternalProcessor`: `STREAMED` request and response bodies (each chunk sent as it
//! comes, changed per chunk, an immediate response or a failure mid-body),
//! `BUFFERED_PARTIAL` past the buffer limit, and trailers `SEND` with each body mode.
//! The client writes a chunked request body chunk by chunk, each once the service has
//! seen the one before; the upstream answers chunk by chunk the same way. Each scenario
//! runs through Courier and, when `envoy` is on PATH, Envoy 1.40: statuses, fields,
//! bodies, trailers, what the upstream got, the messages the service saw (their order,
//! `end_of_stream` flags and chunks) and the counters must be equal.

mod ext_proc_support;
mod http_support;

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use courier_proto::envoy::config::core::v3::HeaderValueOption;
use courier_proto::envoy::extensions::filters::http::ext_proc::v3::processing_mode::{
    BodySendMode, HeaderSendMode,
};
use courier_proto::envoy::extensions::filters::http::ext_proc::v3::ProcessingMode;
use courier_proto::envoy::r#type::v3::HttpStatus;
use courier_proto::envoy::service::ext_proc::v3::external_processor_server::{
    ExternalProcessor, ExternalProcessorServer,
};
use courier_proto::envoy::service::ext_proc::v3::{
    body_mutation, processing_request, processing_response, BodyMutation, BodyResponse,
    CommonResponse, HeaderMutation, HeadersResponse, ImmediateResponse, ProcessingRequest,
    ProcessingResponse, StreamedBodyResponse, TrailersResponse,
};
use ext_proc_support::{body, counters, set, Answers};
use http_support::*;

const H2: &str = "    typed_extension_protocol_options:\n      envoy.extensions.upstreams.http.v3.HttpProtocolOptions:\n        \"@type\": type.googleapis.com/envoy.extensions.upstreams.http.v3.HttpProtocolOptions\n        explicit_http_config: { http2_protocol_options: {} }\n";
const H1_TRAILERS: &str = "    typed_extension_protocol_options:\n      envoy.extensions.upstreams.http.v3.HttpProtocolOptions:\n        \"@type\": type.googleapis.com/envoy.extensions.upstreams.http.v3.HttpProtocolOptions\n        explicit_http_config: { http_protocol_options: { enable_trailers: true } }\n";

/// What the service saw, by request id (`x-id`), in order.
type Log = Arc<Mutex<Vec<(String, String)>>>;

fn seen(log: &Log, id: &str) -> Vec<String> {
    log.lock()
        .map(|l| {
            l.iter()
                .filter(|(i, _)| i == id)
                .map(|(_, m)| m.clone())
                .collect()
        })
        .unwrap_or_default()
}

/// Waits until the service has seen `n` messages of request `id` starting with `kind`.
fn wait_seen(log: &Log, id: &str, kind: &str, n: usize) -> bool {
    let deadline = Instant::now() + Duration::from_secs(5);
    while Instant::now() < deadline {
        if seen(log, id).iter().filter(|m| m.starts_with(kind)).count() >= n {
            return true;
        }
        std::thread::sleep(Duration::from_millis(5));
    }
    false
}

#[derive(Clone)]
struct Proc(Log);

fn mutation(set_headers: Vec<HeaderValueOption>) -> Option<HeaderMutation> {
    Some(HeaderMutation {
        set_headers,
        remove_headers: vec![],
    })
}

fn answer(r: processing_response::Response) -> Option<ProcessingResponse> {
    Some(ProcessingResponse {
        response: Some(r),
        ..Default::default()
    })
}

fn headers(c: CommonResponse, request: bool) -> Option<ProcessingResponse> {
    let h = HeadersResponse { response: Some(c) };
    answer(match request {
        true => processing_response::Response::RequestHeaders(h),
        false => processing_response::Response::ResponseHeaders(h),
    })
}

fn body_answer(c: CommonResponse, request: bool) -> Option<ProcessingResponse> {
    let b = BodyResponse { response: Some(c) };
    answer(match request {
        true => processing_response::Response::RequestBody(b),
        false => processing_response::Response::ResponseBody(b),
    })
}

fn immediate(code: i32, b: &str) -> Option<ProcessingResponse> {
    answer(processing_response::Response::ImmediateResponse(
        ImmediateResponse {
            status: Some(HttpStatus { code }),
            body: b.as_bytes().to_vec(),
            details: "mid stream".into(),
            ..Default::default()
        },
    ))
}

fn names(m: &Option<courier_proto::envoy::config::core::v3::HeaderMap>) -> Vec<String> {
    let mut v: Vec<String> = m
        .iter()
        .flat_map(|m| &m.headers)
        .filter(|h| {
            !matches!(
                h.key.as_str(),
                // `transfer-encoding`: Envoy's response header map keeps an HTTP/1.1
                // upstream's, Courier's does not (DIFFERENCES.md).
                "x-request-id"
                    | "date"
                    | "server"
                    | "x-envoy-upstream-service-time"
                    | "transfer-encoding"
            )
        })
        .map(|h| format!("{}={}", h.key, String::from_utf8_lossy(&h.raw_value)))
        .collect();
    v.sort();
    v
}

/// What a stream's message is, for the log.
fn describe(r: &processing_request::Request) -> String {
    use processing_request::Request as R;
    match r {
        R::RequestHeaders(h) => format!(
            "req-headers eos={} {:?}",
            h.end_of_stream,
            names(&h.headers)
        ),
        R::ResponseHeaders(h) => {
            format!(
                "resp-headers eos={} {:?}",
                h.end_of_stream,
                names(&h.headers)
            )
        }
        R::RequestBody(b) => format!(
            "req-body eos={} {:?}",
            b.end_of_stream,
            String::from_utf8_lossy(&b.body)
        ),
        R::ResponseBody(b) => format!(
            "resp-body eos={} {:?}",
            b.end_of_stream,
            String::from_utf8_lossy(&b.body)
        ),
        R::RequestTrailers(t) => format!("req-trailers {:?}", names(&t.trailers)),
        R::ResponseTrailers(t) => format!("resp-trailers {:?}", names(&t.trailers)),
    }
}

/// The answer to a message of the stream scripted `script`, whose `n`th body chunk of
/// its direction this is (from 1).
fn script_answer(
    script: &str,
    r: &processing_request::Request,
    n: usize,
) -> Option<ProcessingResponse> {
    use processing_request::Request as R;
    match (script, r) {
        ("immediate-mid", R::RequestBody(_)) if n == 2 => immediate(403, "stopped"),
        ("resp-immediate-mid", R::ResponseBody(_)) if n == 2 => immediate(418, "late"),
        ("hang-chunk", R::RequestBody(_)) if n == 2 => None,
        ("spurious-chunk", R::RequestBody(_)) if n == 2 => {
            headers(CommonResponse::default(), false)
        }
        // A streamed response (full duplex's) to a STREAMED chunk.
        ("streamed-resp", R::RequestBody(b)) if b.end_of_stream => {
            Some(streamed("late", true, true))
        }
        ("clear-chunk", R::RequestBody(_)) if n == 1 => body_answer(
            CommonResponse {
                body_mutation: Some(BodyMutation {
                    mutation: Some(body_mutation::Mutation::ClearBody(true)),
                }),
                ..Default::default()
            },
            true,
        ),
        ("plain", R::RequestBody(_) | R::ResponseBody(_)) => {
            body_answer(CommonResponse::default(), matches!(r, R::RequestBody(_)))
        }
        (_, R::RequestHeaders(_)) => headers(
            CommonResponse {
                header_mutation: mutation(vec![set("x-proc", "req")]),
                ..Default::default()
            },
            true,
        )
        .map(|mut a| {
            a.mode_override = override_for(script, true);
            a
        }),
        (_, R::ResponseHeaders(_)) => headers(
            CommonResponse {
                header_mutation: mutation(vec![set("x-proc-resp", "resp")]),
                ..Default::default()
            },
            false,
        )
        .map(|mut a| {
            a.mode_override = override_for(script, false);
            a
        }),
        (_, R::RequestBody(b)) => body_answer(
            CommonResponse {
                // Header changes in a streamed chunk's answer come too late (ignored).
                header_mutation: mutation(vec![set("x-from-body", "1")]),
                body_mutation: body(&format!(
                    "<{}>",
                    String::from_utf8_lossy(&b.body).to_uppercase()
                )),
                ..Default::default()
            },
            true,
        ),
        (_, R::ResponseBody(b)) => body_answer(
            CommonResponse {
                header_mutation: mutation(vec![set("x-from-resp-body", "1")]),
                body_mutation: body(&format!("[{}]", String::from_utf8_lossy(&b.body))),
                ..Default::default()
            },
            false,
        ),
        (_, R::RequestTrailers(_)) => answer(processing_response::Response::RequestTrailers(
            TrailersResponse {
                header_mutation: mutation(vec![set("x-req-trailer-added", "yes")]),
            },
        )),
        (_, R::ResponseTrailers(_)) => answer(processing_response::Response::ResponseTrailers(
            TrailersResponse {
                header_mutation: mutation(vec![set("x-resp-trailer-added", "yes")]),
            },
        )),
    }
}

/// The `mode_override` a script's answer to the request's (`request`) or the response's
/// headers carries.
fn override_for(script: &str, request: bool) -> Option<ProcessingMode> {
    let (h, b) = (HeaderSendMode::Send as i32, BodySendMode::Buffered as i32);
    let m = match (script, request) {
        ("ov-req-streamed", true) => ProcessingMode {
            request_body_mode: BodySendMode::Streamed as i32,
            ..Default::default()
        },
        ("ov-req-buffered", true) => ProcessingMode {
            request_body_mode: b,
            ..Default::default()
        },
        ("ov-resp-buffered", true) | ("ov-in-resp", false) => ProcessingMode {
            response_body_mode: b,
            ..Default::default()
        },
        ("ov-send-resp-buffered", true) => ProcessingMode {
            response_header_mode: h,
            response_body_mode: b,
            ..Default::default()
        },
        ("ov-skip-resp-headers", true) => ProcessingMode {
            response_header_mode: HeaderSendMode::Skip as i32,
            ..Default::default()
        },
        ("ov-resp-trailers", true) => ProcessingMode {
            response_trailer_mode: h,
            response_body_mode: b,
            ..Default::default()
        },
        ("ov-req-duplex", true) => ProcessingMode {
            request_body_mode: BodySendMode::FullDuplexStreamed as i32,
            request_trailer_mode: h,
            ..Default::default()
        },
        _ => return None,
    };
    Some(m)
}

/// A piece of the body the service streams back (`FULL_DUPLEX_STREAMED`).
fn streamed(b: &str, end_of_stream: bool, request: bool) -> ProcessingResponse {
    body_answer(
        CommonResponse {
            body_mutation: Some(BodyMutation {
                mutation: Some(body_mutation::Mutation::StreamedResponse(
                    StreamedBodyResponse {
                        body: b.as_bytes().to_vec(),
                        end_of_stream,
                        ..Default::default()
                    },
                )),
            }),
            ..Default::default()
        },
        request,
    )
    .unwrap_or_default()
}

/// What a full-duplex script's service has seen of the request's body.
#[derive(Default)]
struct DuplexSeen {
    body: String,
}

/// The answers to a message of a stream whose bodies stream both ways, scripted
/// `script` (the `n`th body chunk of its direction): each chunk answered by its own
/// changed piece unless the script says otherwise.
fn duplex_answers(
    script: &str,
    r: &processing_request::Request,
    n: usize,
    seen: &mut DuplexSeen,
) -> Vec<ProcessingResponse> {
    use processing_request::Request as R;
    let upper = |b: &[u8]| String::from_utf8_lossy(b).to_uppercase();
    match (script, r) {
        // The headers answered once the whole body is in, with what it said.
        ("fd-late-headers", R::RequestHeaders(_)) => vec![],
        ("fd-late-headers", R::RequestBody(b)) => {
            seen.body.push_str(&String::from_utf8_lossy(&b.body));
            if !b.end_of_stream {
                return vec![];
            }
            let h = headers(
                CommonResponse {
                    header_mutation: mutation(vec![
                        set("x-proc", "req"),
                        set("x-body", &seen.body),
                    ]),
                    ..Default::default()
                },
                true,
            );
            h.into_iter()
                .chain([streamed(&format!("<{}>", seen.body), true, true)])
                .collect()
        }
        // The body gathered, then given back in two pieces.
        ("fd-gather", R::RequestBody(b)) => {
            seen.body.push_str(&String::from_utf8_lossy(&b.body));
            match b.end_of_stream {
                true => vec![
                    streamed(&format!("all:{}", seen.body), false, true),
                    streamed("", true, true),
                ],
                false => vec![],
            }
        }
        // Each chunk in two pieces.
        ("fd-split", R::RequestBody(b)) => {
            let u = upper(&b.body);
            let (a, z) = u.split_at(u.len() / 2);
            vec![
                streamed(&format!("({a}"), false, true),
                streamed(&format!("{z})"), b.end_of_stream, true),
            ]
        }
        // At the body's end (every chunk sent by then, whatever the proxy's pace): a body
        // answer that is not a streamed response, out of order; an immediate response.
        ("fd-plain", R::RequestBody(b)) if b.end_of_stream => {
            body_answer(CommonResponse::default(), true)
                .into_iter()
                .collect()
        }
        ("fd-immediate", R::RequestBody(b)) if b.end_of_stream => {
            immediate(403, "stopped").into_iter().collect()
        }
        (_, R::RequestBody(b)) => vec![streamed(
            &format!("<{}>", upper(&b.body)),
            b.end_of_stream,
            true,
        )],
        (_, R::ResponseBody(b)) => vec![streamed(
            &format!("[{}]", String::from_utf8_lossy(&b.body)),
            b.end_of_stream,
            false,
        )],
        _ => script_answer(script, r, n).into_iter().collect(),
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
        let (tx, rx) = tokio::sync::mpsc::channel(16);
        let log = self.0.clone();
        tokio::spawn(async move {
            let (mut id, mut script) = (String::new(), String::new());
            let (mut req_chunks, mut resp_chunks) = (0, 0);
            let mut duplex_seen = DuplexSeen::default();
            while let Ok(Some(msg)) = inbound.message().await {
                let Some(r) = msg.request else { continue };
                if let processing_request::Request::RequestHeaders(h) = &r {
                    let field = |n: &str| {
                        h.headers
                            .iter()
                            .flat_map(|m| &m.headers)
                            .find(|v| v.key == n)
                            .map(|v| String::from_utf8_lossy(&v.raw_value).into_owned())
                            .unwrap_or_default()
                    };
                    id = field("x-id");
                    script = field("x-script");
                }
                let n = match &r {
                    processing_request::Request::RequestBody(_) => {
                        req_chunks += 1;
                        req_chunks
                    }
                    processing_request::Request::ResponseBody(_) => {
                        resp_chunks += 1;
                        resp_chunks
                    }
                    _ => 0,
                };
                let second_chunk =
                    matches!(r, processing_request::Request::RequestBody(_)) && n == 2;
                let body_end =
                    matches!(&r, processing_request::Request::RequestBody(b) if b.end_of_stream);
                let fail =
                    (script == "error-chunk" && second_chunk) || (script == "fd-error" && body_end);
                // The service ends the stream (status OK) at the second chunk.
                let close = script == "fd-close" && second_chunk;
                // A service slower than `message_timeout` (0.5 s): with the request's
                // body's end, its headers, or the response's headers.
                let slow = match (script.as_str(), &r) {
                    ("fd-slow", processing_request::Request::RequestBody(b)) => b.end_of_stream,
                    ("fd-slow-headers", processing_request::Request::RequestHeaders(_))
                    | ("fd-slow-resp-headers", processing_request::Request::ResponseHeaders(_)) => {
                        true
                    }
                    _ => false,
                };
                let replies: Vec<ProcessingResponse> =
                    if script.starts_with("fd") || script == "ov-req-duplex" {
                        duplex_answers(&script, &r, n, &mut duplex_seen)
                    } else {
                        script_answer(&script, &r, n).into_iter().collect()
                    };
                if close {
                    // The chunk is logged once the proxy has taken the close (it closes
                    // its side then): what the client sends after it comes after.
                    drop(tx);
                    while let Ok(Some(_)) = inbound.message().await {}
                    if let Ok(mut l) = log.lock() {
                        l.push((id.clone(), describe(&r)));
                    }
                    return;
                }
                if let Ok(mut l) = log.lock() {
                    l.push((id.clone(), describe(&r)));
                }
                if fail {
                    let _ = tx.send(Err(tonic::Status::internal("boom"))).await;
                    return;
                }
                if slow && !replies.is_empty() {
                    tokio::time::sleep(Duration::from_millis(800)).await;
                }
                for reply in replies {
                    if tx.send(Ok(reply)).await.is_err() {
                        return;
                    }
                }
            }
        });
        Ok(tonic::Response::new(Box::pin(
            tokio_stream::wrappers::ReceiverStream::new(rx),
        )))
    }
}

/// What the upstream got of one request.
#[derive(Clone, Debug)]
struct UpSeen {
    id: String,
    line: String,
    fields: Vec<String>,
    body: String,
    trailers: Vec<String>,
}

/// Reads a chunked body and its trailers.
fn read_chunked(r: &mut impl BufRead) -> Option<(Vec<u8>, Vec<String>)> {
    let mut body = Vec::new();
    loop {
        let mut size = String::new();
        r.read_line(&mut size).ok()?;
        let n = usize::from_str_radix(size.trim().split(';').next()?, 16).ok()?;
        if n == 0 {
            let mut trailers = Vec::new();
            loop {
                let mut l = String::new();
                r.read_line(&mut l).ok()?;
                let l = l.trim_end();
                if l.is_empty() {
                    trailers.sort();
                    return Some((body, trailers));
                }
                trailers.push(l.to_ascii_lowercase().replace(": ", "="));
            }
        }
        let mut chunk = vec![0; n + 2];
        r.read_exact(&mut chunk).ok()?;
        body.extend_from_slice(&chunk[..n]);
    }
}

/// An HTTP/1.1 upstream that records each request (its trailers too) and answers
/// `/chunks` paths with the body `r1`, `r2`, `r3` in chunks, each once the service has
/// seen the one before when the path has `/sync`, and trailers when it has `/trailers`;
/// other paths with the request's body.
fn upstream(log: Log) -> (SocketAddr, Arc<Mutex<Vec<UpSeen>>>) {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
    let addr = listener.local_addr().expect("addr");
    let got = Arc::new(Mutex::new(Vec::new()));
    let g = got.clone();
    std::thread::spawn(move || {
        for s in listener.incoming() {
            let Ok(s) = s else { continue };
            let (g, log) = (g.clone(), log.clone());
            std::thread::spawn(move || {
                let Ok(mut w) = s.try_clone() else { return };
                let mut r = BufReader::new(s);
                while let Some((line, hs)) = read_head(&mut r) {
                    let get = |n: &str| hs.iter().find(|(k, _)| k == n).map(|(_, v)| v.clone());
                    let (body, trailers) = if get("transfer-encoding").is_some() {
                        match read_chunked(&mut r) {
                            Some(b) => b,
                            None => return,
                        }
                    } else {
                        let n: usize = get("content-length")
                            .and_then(|v| v.parse().ok())
                            .unwrap_or(0);
                        let mut b = vec![0; n];
                        if r.read_exact(&mut b).is_err() {
                            return;
                        }
                        (b, vec![])
                    };
                    let id = get("x-id").unwrap_or_default();
                    let mut fields: Vec<String> = hs
                        .iter()
                        .filter(|(k, _)| {
                            matches!(
                                k.as_str(),
                                "content-length"
                                    | "transfer-encoding"
                                    | "x-proc"
                                    | "x-from-body"
                                    | "x-body"
                            )
                        })
                        .map(|(k, v)| format!("{k}={v}"))
                        .collect();
                    fields.sort();
                    if let Ok(mut g) = g.lock() {
                        g.push(UpSeen {
                            id: id.clone(),
                            line: line.clone(),
                            fields,
                            body: String::from_utf8_lossy(&body).into_owned(),
                            trailers,
                        });
                    }
                    let path = line.split(' ').nth(1).unwrap_or("").to_owned();
                    if path.contains("/chunks") {
                        if w.write_all(
                            b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\nx-up: 1\r\n\r\n",
                        )
                        .is_err()
                        {
                            return;
                        }
                        for (i, c) in ["r1", "r2", "r3"].iter().enumerate() {
                            if w.write_all(format!("2\r\n{c}\r\n").as_bytes()).is_err() {
                                return;
                            }
                            if path.contains("/sync") {
                                wait_seen(&log, &id, "resp-body", i + 1);
                            }
                        }
                        let end = match path.contains("/trailers") {
                            true => "0\r\nx-up-trailer: t\r\n\r\n",
                            false => "0\r\n\r\n",
                        };
                        if w.write_all(end.as_bytes()).is_err() {
                            return;
                        }
                    } else if path.contains("/sync") {
                        // The echo in one chunk, its end once the service has seen it.
                        let head = format!(
                            "HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\nx-up: 1\r\n\r\n{:x}\r\n",
                            body.len()
                        );
                        if w.write_all(head.as_bytes()).is_err()
                            || w.write_all(&body).is_err()
                            || w.write_all(b"\r\n").is_err()
                        {
                            return;
                        }
                        if !body.is_empty() {
                            wait_seen(&log, &id, "resp-body", 1);
                        }
                        if w.write_all(b"0\r\n\r\n").is_err() {
                            return;
                        }
                    } else {
                        let head = format!(
                            "HTTP/1.1 200 OK\r\ncontent-length: {}\r\nx-up: 1\r\n\r\n",
                            body.len()
                        );
                        if w.write_all(head.as_bytes()).is_err() || w.write_all(&body).is_err() {
                            return;
                        }
                    }
                }
            });
        }
    });
    (addr, got)
}

/// Per route, the processing mode: by path prefix.
const ROUTES: &str = r#"            name: local
            virtual_hosts:
            - name: main
              domains: ["*"]
              routes:
              - match: { prefix: "/duplex-req" }
                route: { cluster: up }
                typed_per_filter_config:
                  proc:
                    "@type": type.googleapis.com/envoy.extensions.filters.http.ext_proc.v3.ExtProcPerRoute
                    overrides: { processing_mode: { request_body_mode: FULL_DUPLEX_STREAMED, request_trailer_mode: SEND } }
              - match: { prefix: "/duplex-resp" }
                route: { cluster: up }
                typed_per_filter_config:
                  proc:
                    "@type": type.googleapis.com/envoy.extensions.filters.http.ext_proc.v3.ExtProcPerRoute
                    overrides: { processing_mode: { response_header_mode: SKIP, response_body_mode: FULL_DUPLEX_STREAMED, response_trailer_mode: SEND } }
              - match: { prefix: "/duplex" }
                route: { cluster: up }
                typed_per_filter_config:
                  proc:
                    "@type": type.googleapis.com/envoy.extensions.filters.http.ext_proc.v3.ExtProcPerRoute
                    overrides: { processing_mode: { request_body_mode: FULL_DUPLEX_STREAMED, response_body_mode: FULL_DUPLEX_STREAMED, request_trailer_mode: SEND, response_trailer_mode: SEND } }
              - match: { prefix: "/streamed-trailers" }
                route: { cluster: up }
                typed_per_filter_config:
                  proc:
                    "@type": type.googleapis.com/envoy.extensions.filters.http.ext_proc.v3.ExtProcPerRoute
                    overrides: { processing_mode: { request_body_mode: STREAMED, response_body_mode: STREAMED, request_trailer_mode: SEND, response_trailer_mode: SEND } }
              - match: { prefix: "/streamed" }
                route: { cluster: up }
                typed_per_filter_config:
                  proc:
                    "@type": type.googleapis.com/envoy.extensions.filters.http.ext_proc.v3.ExtProcPerRoute
                    overrides: { processing_mode: { request_body_mode: STREAMED, response_body_mode: STREAMED } }
              - match: { prefix: "/body-skip-headers" }
                route: { cluster: up }
                typed_per_filter_config:
                  proc:
                    "@type": type.googleapis.com/envoy.extensions.filters.http.ext_proc.v3.ExtProcPerRoute
                    overrides: { processing_mode: { response_header_mode: SKIP, request_body_mode: STREAMED } }
              - match: { prefix: "/trailers" }
                route: { cluster: up }
                typed_per_filter_config:
                  proc:
                    "@type": type.googleapis.com/envoy.extensions.filters.http.ext_proc.v3.ExtProcPerRoute
                    overrides: { processing_mode: { request_trailer_mode: SEND, response_trailer_mode: SEND } }
              - match: { prefix: "/buffered-trailers" }
                route: { cluster: up }
                typed_per_filter_config:
                  proc:
                    "@type": type.googleapis.com/envoy.extensions.filters.http.ext_proc.v3.ExtProcPerRoute
                    overrides: { processing_mode: { request_body_mode: BUFFERED, response_body_mode: BUFFERED, request_trailer_mode: SEND, response_trailer_mode: SEND } }
              - match: { prefix: "/partial" }
                route: { cluster: up }
                typed_per_filter_config:
                  proc:
                    "@type": type.googleapis.com/envoy.extensions.filters.http.ext_proc.v3.ExtProcPerRoute
                    overrides: { processing_mode: { request_body_mode: BUFFERED_PARTIAL, response_body_mode: BUFFERED_PARTIAL } }
              - match: { prefix: "/" }
                route: { cluster: up }
"#;

fn boot(proc: SocketAddr, up: SocketAddr, failure_mode_allow: bool) -> String {
    boot_with(proc, up, failure_mode_allow, "")
}

/// [`boot`] with more of the filter's fields (`extra`: YAML lines at its indent).
fn boot_with(proc: SocketAddr, up: SocketAddr, failure_mode_allow: bool, extra: &str) -> String {
    let clusters = cluster("up", &[up], H1_TRAILERS) + &cluster("proc", &[proc], H2);
    let filter = format!(
        r#"          - name: proc
            typed_config:
              "@type": type.googleapis.com/envoy.extensions.filters.http.ext_proc.v3.ExternalProcessor
              failure_mode_allow: {failure_mode_allow}
              message_timeout: 0.5s
              grpc_service: {{ envoy_grpc: {{ cluster_name: proc }} }}
{extra}"#
    );
    with_filters(
        &bootstrap(
            ROUTES,
            "          http_protocol_options: { enable_trailers: true }\n",
            &clusters,
        ),
        &filter,
    )
    // A small buffer limit, for BUFFERED_PARTIAL to pass it.
    .replacen(
        "    filter_chains:\n",
        "    per_connection_buffer_limit_bytes: 16\n    filter_chains:\n",
        1,
    )
}

/// One request: `chunks` written one by one, each once the service saw the one before
/// (when `sync`), then the end (with `trailers`); its transcript.
#[allow(clippy::too_many_arguments)]
fn run(
    proxy: &Courier,
    log: &Log,
    got: &Arc<Mutex<Vec<UpSeen>>>,
    id: &str,
    path: &str,
    script: &str,
    chunks: &[&str],
    trailers: bool,
    sync: bool,
) -> String {
    let mut s = TcpStream::connect(proxy.listener).expect("connect");
    s.set_read_timeout(Some(Duration::from_secs(10)))
        .expect("timeout");
    let head = format!(
        "POST {path} HTTP/1.1\r\nhost: example.com\r\nx-id: {id}\r\nx-script: {script}\r\ntransfer-encoding: chunked\r\n\r\n"
    );
    // Waits until the service has seen `n` messages of `kind` (or a while, when the
    // chunk passes on unseen), or the proxy answered (or closed) first: `false` then,
    // and nothing more is written.
    let wait = |s: &TcpStream, kind: &str, n: usize| {
        let deadline = Instant::now() + Duration::from_secs(2);
        let _ = s.set_read_timeout(Some(Duration::from_millis(2)));
        let mut byte = [0u8; 1];
        let mut going = true;
        while Instant::now() < deadline {
            if seen(log, id).iter().filter(|m| m.starts_with(kind)).count() >= n {
                break;
            }
            match s.peek(&mut byte) {
                Ok(_) => {
                    going = false;
                    break;
                }
                Err(e)
                    if e.kind() == std::io::ErrorKind::WouldBlock
                        || e.kind() == std::io::ErrorKind::TimedOut => {}
                Err(_) => {
                    going = false;
                    break;
                }
            }
        }
        let _ = s.set_read_timeout(Some(Duration::from_secs(10)));
        going
    };
    let mut ok = s.write_all(head.as_bytes()).is_ok();
    if sync {
        ok &= wait(&s, "req-headers", 1);
    }
    for (i, c) in chunks.iter().enumerate() {
        if !ok {
            break;
        }
        ok &= s
            .write_all(format!("{:x}\r\n{c}\r\n", c.len()).as_bytes())
            .is_ok();
        if sync {
            ok &= wait(&s, "req-body", i + 1);
        }
    }
    let end = match trailers {
        true => "0\r\nx-client-trailer: c\r\n\r\n",
        false => "0\r\n\r\n",
    };
    if ok {
        let _ = s.write_all(end.as_bytes());
    }
    let mut r = BufReader::new(s);
    let resp = match read_head(&mut r) {
        None => "no response (reset)".to_owned(),
        Some((line, hs)) => {
            let status = line.split(' ').nth(1).unwrap_or("").to_owned();
            let chunked = hs.iter().any(|(k, _)| k == "transfer-encoding");
            let (body, trailers) = if chunked {
                read_chunked(&mut r)
                    .map(|(b, t)| (String::from_utf8_lossy(&b).into_owned(), t))
                    .unwrap_or_else(|| ("<broken>".into(), vec![]))
            } else {
                let n: usize = hs
                    .iter()
                    .find(|(k, _)| k == "content-length")
                    .and_then(|(_, v)| v.parse().ok())
                    .unwrap_or(0);
                let mut b = vec![0; n];
                let _ = r.read_exact(&mut b);
                (String::from_utf8_lossy(&b).into_owned(), vec![])
            };
            let mut keep: Vec<String> = hs
                .iter()
                .filter(|(k, _)| k.starts_with("x-") && k != "x-envoy-upstream-service-time")
                .map(|(k, v)| format!("{k}={v}"))
                .collect();
            keep.sort();
            format!("{status} {keep:?} chunked={chunked} body={body:?} trailers={trailers:?}")
        }
    };
    let up = got
        .lock()
        .ok()
        .and_then(|g| g.iter().rev().find(|u| u.id == id).cloned());
    let up = match up {
        // The trailers an HTTP/1.1 upstream gets are left out: Courier's HTTP/1.1
        // client writes none it was not told of in a `trailer` field (DIFFERENCES.md).
        Some(u) => {
            let _ = u.trailers;
            format!("upstream {} {:?} body={:?}", u.line, u.fields, u.body)
        }
        None => "not forwarded".into(),
    };
    format!(
        "{id} {path} -> {resp} | {up} | service saw {:?}",
        seen(log, id)
    )
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
];

/// Runs `scenario` through Courier and (when on PATH) Envoy; the transcripts must be
/// equal. Courier's is returned. Each run gets its own request ids.
fn agree(b: &str, scenario: impl Fn(&Courier, &str) -> Vec<String>) -> Vec<String> {
    let courier = scenario(&Courier::start(b), "c");
    for line in &courier {
        eprintln!("courier: {line}");
    }
    if let Some(envoy) = Courier::start_envoy(b).map(|e| scenario(&e, "e")) {
        for line in &envoy {
            eprintln!("envoy:   {line}");
        }
        for (c, e) in courier.iter().zip(&envoy) {
            // The ids differ by their run's prefix only.
            assert_eq!(
                c.replace("c#", "X#"),
                e.replace("e#", "X#"),
                "Courier (left) and Envoy (right) differ"
            );
        }
        assert_eq!(courier.len(), envoy.len());
    }
    courier
}

#[test]
fn streamed_bodies_and_trailers_match_envoy() {
    let log: Log = Arc::default();
    let proc = spawn_grpc_server(ExternalProcessorServer::new(Proc(log.clone())));
    let (up, got) = upstream(log.clone());
    let b = boot(proc, up, false);
    let t = agree(&b, |p, run_id| {
        let mut t = Vec::new();
        let mut n = 0;
        let mut go = |path: &str, script: &str, chunks: &[&str], trailers: bool, sync: bool| {
            n += 1;
            let id = format!("{run_id}#{n}");
            let started = Instant::now();
            t.push(run(
                p, &log, &got, &id, path, script, chunks, trailers, sync,
            ));
            if run_id == "c" {
                let line = t.last().cloned().unwrap_or_default();
                assert!(
                    started.elapsed() < Duration::from_secs(5),
                    "{id} stalled: {line}"
                );
            }
        };
        // STREAMED both ways: every chunk changed, in order; the response's too.
        go(
            "/streamed/chunks/sync",
            "",
            &["ab", "cd", "ef"],
            false,
            true,
        );
        go("/streamed/echo/sync", "", &["one", "two"], false, true);
        go(
            "/streamed/echo/sync",
            "plain",
            &["keep", "as", "is"],
            false,
            true,
        );
        go(
            "/streamed/echo/sync",
            "clear-chunk",
            &["gone", "kept"],
            false,
            true,
        );
        // An immediate response after the first chunk went upstream.
        go(
            "/streamed/echo/sync",
            "immediate-mid",
            &["a", "b", "c"],
            false,
            true,
        );
        // The response's second chunk answered with an immediate response.
        go(
            "/streamed/chunks/sync",
            "resp-immediate-mid",
            &["x"],
            false,
            true,
        );
        // Failures mid-body.
        go(
            "/streamed/echo/sync",
            "error-chunk",
            &["a", "b"],
            false,
            true,
        );
        go(
            "/streamed/echo/sync",
            "spurious-chunk",
            &["a", "b"],
            false,
            true,
        );
        // Request headers sent, the response's skipped, the request body streamed.
        go("/body-skip-headers/echo", "", &["s1", "s2"], false, true);
        // Trailers: streamed bodies with trailers sent both ways.
        go(
            "/streamed-trailers/chunks/sync/trailers",
            "",
            &["t1", "t2"],
            true,
            true,
        );
        // Trailers sent, bodies not.
        go("/trailers/chunks/trailers", "", &["n1", "n2"], true, true);
        // Trailers with held bodies.
        go(
            "/buffered-trailers/chunks/trailers",
            "",
            &["b1", "b2"],
            true,
            true,
        );
        // Trailers in STREAMED mode not sent: the last chunk is not the end.
        go("/streamed/chunks/sync/trailers", "", &["u1"], true, true);
        // BUFFERED_PARTIAL: under the limit, whole; over it, its first part.
        go("/partial/echo", "", &["small"], false, false);
        go(
            "/partial/echo",
            "",
            &["0123456789abcdefghijKLMNO", "tail"],
            false,
            true,
        );
        t.extend(counters(p, COUNTERS));
        t
    });
    let line = |id: &str| {
        t.iter()
            .find(|l| l.starts_with(&format!("{id} ")))
            .cloned()
            .unwrap_or_default()
    };
    assert!(
        line("c#1").contains("body=\"[r1][r2][r3][]\""),
        "{}",
        line("c#1")
    );
    assert!(line("c#2").contains("upstream POST /streamed/echo/sync HTTP/1.1 [\"transfer-encoding=chunked\", \"x-proc=req\"] body=\"<ONE><TWO><>\""), "{}", line("c#2"));
    assert!(
        line("c#5").starts_with("c#5 /streamed/echo/sync -> 403"),
        "{}",
        line("c#5")
    );
}

#[test]
fn streamed_failures_let_the_request_go_on_under_failure_mode_allow() {
    let log: Log = Arc::default();
    let proc = spawn_grpc_server(ExternalProcessorServer::new(Proc(log.clone())));
    let (up, got) = upstream(log.clone());
    let b = boot(proc, up, true);
    let t = agree(&b, |p, run_id| {
        let mut t = Vec::new();
        let mut n = 0;
        let mut go = |path: &str, script: &str, chunks: &[&str]| {
            n += 1;
            let id = format!("{run_id}#{n}");
            t.push(run(p, &log, &got, &id, path, script, chunks, false, true));
        };
        go("/streamed/echo/sync", "error-chunk", &["a", "b"]);
        go("/streamed/echo/sync", "spurious-chunk", &["a", "b"]);
        go("/streamed/echo/sync", "", &["fine"]);
        t.extend(counters(p, COUNTERS));
        t
    });
    assert!(t[0].contains("-> 200"), "{}", t[0]);
}

/// A chunk left unanswered after the one ahead of it was answered: Envoy 1.40 stops its
/// message timer at that answer and the request hangs until the route's timeout;
/// Courier times the waiting chunk out (DIFFERENCES.md). Courier only.
#[test]
fn a_chunk_left_unanswered_times_out() {
    let log: Log = Arc::default();
    let proc = spawn_grpc_server(ExternalProcessorServer::new(Proc(log.clone())));
    let (up, got) = upstream(log.clone());
    for allow in [false, true] {
        let p = Courier::start(&boot(proc, up, allow));
        let id = format!("t{allow}");
        let started = Instant::now();
        // The plain echo: processing ends at the timeout, and the answer is not sent.
        let line = run(
            &p,
            &log,
            &got,
            &id,
            "/streamed/echo",
            "hang-chunk",
            &["a", "b"],
            false,
            true,
        );
        assert!(started.elapsed() < Duration::from_secs(5), "{line}");
        let want = match allow {
            false => "-> 504",
            // Answers go to the chunks in order: the last chunk's answer is taken
            // as the second's, as Envoy's.
            true => "upstream POST /streamed/echo HTTP/1.1 [\"transfer-encoding=chunked\", \"x-proc=req\"] body=\"<A><>\"",
        };
        assert!(line.contains(want), "{line}");
        assert_eq!(p.stat("http.ingress.ext_proc.message_timeouts"), 1);
        assert_eq!(
            p.stat("http.ingress.ext_proc.failure_mode_allowed"),
            u64::from(allow)
        );
    }
}

/// The transcript of each request of `scenario` (its id made from the run's and a count).
type Go<'a> = dyn FnMut(&str, &str, &[&str], bool, bool) + 'a;

/// Runs `requests` through Courier and Envoy on `b`: their transcripts and the counters.
fn compare(
    b: &str,
    log: &Log,
    got: &Arc<Mutex<Vec<UpSeen>>>,
    requests: impl Fn(&mut Go<'_>),
) -> Vec<String> {
    agree(b, |p, run_id| {
        let mut t = Vec::new();
        let mut n = 0;
        let mut go = |path: &str, script: &str, chunks: &[&str], trailers: bool, sync: bool| {
            n += 1;
            let id = format!("{run_id}#{n}");
            t.push(run(p, log, got, &id, path, script, chunks, trailers, sync));
        };
        requests(&mut go);
        t.extend(counters(p, COUNTERS));
        t
    })
}

/// The line of request `id` in a transcript.
fn line_of(t: &[String], id: &str) -> String {
    t.iter()
        .find(|l| l.starts_with(&format!("{id} ")))
        .cloned()
        .unwrap_or_default()
}

/// `FULL_DUPLEX_STREAMED` (a route's): the body that goes on is the one the service
/// streams back, in its own pieces; trailers end it with their answer; the headers may
/// wait for the whole body; failures mid-body.
#[test]
fn full_duplex_bodies_match_envoy() {
    let log: Log = Arc::default();
    let proc = spawn_grpc_server(ExternalProcessorServer::new(Proc(log.clone())));
    let (up, got) = upstream(log.clone());
    let t = compare(&boot(proc, up, false), &log, &got, |go| {
        // Both ways, each chunk answered by its own piece.
        go("/duplex/chunks/sync", "fd", &["ab", "cd"], false, true);
        go("/duplex-req/echo/sync", "fd", &["one", "two"], false, true);
        // Each chunk in two pieces; the whole body in two pieces at its end.
        go(
            "/duplex-req/echo/sync",
            "fd-split",
            &["abcd", "ef"],
            false,
            true,
        );
        go(
            "/duplex-req/echo/sync",
            "fd-gather",
            &["x", "y", "z"],
            false,
            true,
        );
        // The headers answered only once the service has the whole body.
        go(
            "/duplex-req/echo/sync",
            "fd-late-headers",
            &["p", "q"],
            false,
            true,
        );
        // Trailers: sent, their answer ends the body.
        go("/duplex-req/echo/sync", "fd", &["t1", "t2"], true, true);
        go("/duplex/chunks/sync/trailers", "fd", &["u1"], true, true);
        // The response's body alone, its headers skipped.
        go("/duplex-resp/chunks/sync", "fd", &["v"], false, true);
        go(
            "/duplex-resp/chunks/sync/trailers",
            "fd",
            &["w"],
            false,
            true,
        );
        // At the body's end: a body answer that is not a streamed response, an immediate
        // response, a gRPC error; the service's close at the second chunk.
        go(
            "/duplex-req/echo/sync",
            "fd-plain",
            &["a", "b"],
            false,
            true,
        );
        go(
            "/duplex-req/echo/sync",
            "fd-immediate",
            &["a", "b"],
            false,
            true,
        );
        go(
            "/duplex-req/echo/sync",
            "fd-error",
            &["a", "b"],
            false,
            true,
        );
        go(
            "/duplex-req/echo/sync",
            "fd-close",
            &["a", "b", "c"],
            false,
            true,
        );
        // No message timer where a body streams both ways: a service slower than
        // `message_timeout` with the body or the headers; the response's headers, not
        // streamed both ways, still time out.
        go("/duplex-req/echo/sync", "fd-slow", &["s"], false, true);
        go(
            "/duplex-req/echo/sync",
            "fd-slow-headers",
            &["h"],
            false,
            true,
        );
        go(
            "/duplex-req/echo",
            "fd-slow-resp-headers",
            &["r"],
            false,
            true,
        );
        // A streamed response to a STREAMED chunk: out of order.
        go("/streamed/echo/sync", "streamed-resp", &["a"], false, true);
    });
    let l = |id: &str| line_of(&t, id);
    assert!(
        l("c#1").contains("-> 200") && l("c#1").contains("body=\"[r1][r2][r3][]\""),
        "{}",
        l("c#1")
    );
    assert!(
        l("c#1").contains("body=\"<AB><CD><>\""),
        "the upstream got the service's body: {}",
        l("c#1")
    );
    assert!(l("c#3").contains("body=\"(ABCD)(EF)()\""), "{}", l("c#3"));
    assert!(l("c#4").contains("body=\"all:xyz\""), "{}", l("c#4"));
    assert!(
        l("c#5").contains("\"x-body=pq\", \"x-proc=req\"] body=\"<pq>\""),
        "{}",
        l("c#5")
    );
    assert!(l("c#10").contains("-> 500"), "{}", l("c#10"));
    assert!(l("c#11").contains("-> 403"), "{}", l("c#11"));
    assert!(l("c#12").contains("-> 500"), "{}", l("c#12"));
    assert!(
        l("c#14").contains("-> 200") && l("c#14").contains("body=\"<S><>\""),
        "{}",
        l("c#14")
    );
    assert!(l("c#15").contains("-> 200"), "{}", l("c#15"));
    assert!(l("c#16").contains("-> 504"), "{}", l("c#16"));
    assert!(l("c#17").contains("-> 500"), "{}", l("c#17"));
}

/// A body streamed both ways is gone once sent: a failure then answers the request
/// whatever `failure_mode_allow` says.
#[test]
fn full_duplex_fails_closed_once_the_body_is_sent() {
    let log: Log = Arc::default();
    let proc = spawn_grpc_server(ExternalProcessorServer::new(Proc(log.clone())));
    let (up, got) = upstream(log.clone());
    let t = compare(&boot(proc, up, true), &log, &got, |go| {
        go(
            "/duplex-req/echo/sync",
            "fd-error",
            &["a", "b"],
            false,
            true,
        );
        go(
            "/duplex-req/echo/sync",
            "fd-plain",
            &["a", "b"],
            false,
            true,
        );
        go("/duplex-req/echo/sync", "fd", &["fine"], false, true);
        // A STREAMED route's failure is still allowed.
        go(
            "/streamed/echo/sync",
            "error-chunk",
            &["a", "b"],
            false,
            true,
        );
    });
    assert!(
        line_of(&t, "c#1").contains("-> 500"),
        "{}",
        line_of(&t, "c#1")
    );
    assert!(
        line_of(&t, "c#2").contains("-> 500"),
        "{}",
        line_of(&t, "c#2")
    );
    assert!(
        line_of(&t, "c#4").contains("-> 200"),
        "{}",
        line_of(&t, "c#4")
    );
}

/// The filter's own `FULL_DUPLEX_STREAMED` needs its trailers sent, as Envoy checks.
#[test]
fn full_duplex_without_trailers_sent_is_refused_as_envoy() {
    let proc: SocketAddr = "127.0.0.1:1".parse().expect("addr");
    for (mode, ok) in [
        ("{ request_body_mode: FULL_DUPLEX_STREAMED }", false),
        (
            "{ response_body_mode: FULL_DUPLEX_STREAMED, request_trailer_mode: SEND }",
            false,
        ),
        (
            "{ request_body_mode: FULL_DUPLEX_STREAMED, request_trailer_mode: SEND }",
            true,
        ),
        (
            "{ response_body_mode: FULL_DUPLEX_STREAMED, response_trailer_mode: SEND }",
            true,
        ),
    ] {
        let b = boot_with(
            proc,
            proc,
            false,
            &format!("              processing_mode: {mode}\n"),
        );
        let (code, err) = validate(&b);
        assert_eq!(code == Some(0), ok, "{mode}: {err}");
        if !ok {
            assert!(err.contains("has to be set to SEND"), "{err}");
        }
        if let Some((code, out)) = envoy_validate(&b) {
            assert_eq!(code == Some(0), ok, "envoy, {mode}: {out}");
        }
    }
}

/// `allow_mode_override`: the service's `mode_override` in its answer to the headers
/// changes what is sent for the rest of the request.
#[test]
fn mode_override_matches_envoy() {
    let log: Log = Arc::default();
    let proc = spawn_grpc_server(ExternalProcessorServer::new(Proc(log.clone())));
    let (up, got) = upstream(log.clone());
    let b = boot_with(proc, up, false, "              allow_mode_override: true\n");
    let t = compare(&b, &log, &got, |go| {
        go("/ov/echo/sync", "", &["plain"], false, true);
        go(
            "/ov/echo/sync",
            "ov-req-streamed",
            &["ab", "cd"],
            false,
            true,
        );
        go(
            "/ov/echo/sync",
            "ov-req-buffered",
            &["ab", "cd"],
            false,
            true,
        );
        go("/ov/chunks", "ov-resp-buffered", &["x"], false, true);
        go("/ov/chunks", "ov-skip-resp-headers", &["x"], false, true);
        go(
            "/ov/chunks/trailers",
            "ov-resp-trailers",
            &["x"],
            false,
            true,
        );
        // In the answer to the response's headers.
        go("/ov/chunks", "ov-in-resp", &["x"], false, true);
        // To a body streamed both ways.
        go("/ov/echo/sync", "ov-req-duplex", &["ab", "cd"], false, true);
        // Over a route's mode.
        go(
            "/streamed/echo/sync",
            "ov-req-buffered",
            &["ab", "cd"],
            false,
            true,
        );
    });
    assert!(
        line_of(&t, "c#2").contains("body=\"<AB><CD><>\""),
        "{}",
        line_of(&t, "c#2")
    );
    assert!(
        line_of(&t, "c#4").contains("resp-body eos=true \\\"r1r2r3\\\""),
        "{}",
        line_of(&t, "c#4")
    );
}

/// Without `allow_mode_override` the service's `mode_override` is ignored.
#[test]
fn mode_override_is_ignored_unless_allowed() {
    let log: Log = Arc::default();
    let proc = spawn_grpc_server(ExternalProcessorServer::new(Proc(log.clone())));
    let (up, got) = upstream(log.clone());
    let t = compare(&boot(proc, up, false), &log, &got, |go| {
        go(
            "/ov/echo/sync",
            "ov-req-streamed",
            &["ab", "cd"],
            false,
            true,
        );
        go("/ov/chunks", "ov-resp-buffered", &["x"], false, true);
    });
    assert!(
        line_of(&t, "c#1").contains("body=\"abcd\""),
        "{}",
        line_of(&t, "c#1")
    );
}

/// `allowed_override_modes`: an override is taken only when the mode it makes (its
/// `DEFAULT` header and trailer modes the filter's own) is listed.
#[test]
fn allowed_override_modes_match_envoy() {
    let log: Log = Arc::default();
    let proc = spawn_grpc_server(ExternalProcessorServer::new(Proc(log.clone())));
    let (up, got) = upstream(log.clone());
    let extra = "              processing_mode: { response_header_mode: SKIP }
              allow_mode_override: true
              allowed_override_modes:
              - { request_body_mode: STREAMED, response_header_mode: SKIP }
              - { response_header_mode: SEND, response_body_mode: BUFFERED }
";
    let t = compare(&boot_with(proc, up, false, extra), &log, &got, |go| {
        go(
            "/ov/echo/sync",
            "ov-req-streamed",
            &["ab", "cd"],
            false,
            true,
        );
        go("/ov/chunks", "ov-resp-buffered", &["x"], false, true);
        go("/ov/chunks", "ov-send-resp-buffered", &["x"], false, true);
        go(
            "/ov/echo/sync",
            "ov-req-buffered",
            &["ab", "cd"],
            false,
            true,
        );
    });
    assert!(
        line_of(&t, "c#4").contains("body=\"abcd\""),
        "{}",
        line_of(&t, "c#4")
    );
}
