//! Access-log command operators and filters as Envoy 1.40 writes them, for requests of
//! every kind Courier serves: plain HTTP/1.1 ones, proxied, answered directly, refused,
//! without a healthy host, retried; traced ones (`traceparent`, a request id marked for
//! tracing, `x-envoy-force-trace`); gRPC ones over HTTP/2 and HTTP/1.1, whose upstream
//! answers `grpc-status` in trailers, in headers only, not at all, or with an HTTP error,
//! and gRPC local replies. The operators: `%GRPC_STATUS%` (its three forms and
//! `%GRPC_STATUS_NUMBER%`), `%TRAILER%`, `%TRACE_ID%`, `%STREAM_ID%`, `%CONNECTION_ID%`,
//! `%UPSTREAM_REQUEST_ATTEMPT_COUNT%`, the upstream addresses and host names,
//! `%VIRTUAL_CLUSTER_NAME%`, `%ENVIRONMENT%`, `%REQ_WITHOUT_QUERY%` (its formatter
//! extension), the four request and response durations, `%START_TIME(<format>)%` and
//! `%START_TIME_LOCAL%`; the filters `traceable_filter` and `grpc_status_filter`. The same
//! requests go through Courier and, when `envoy` is on PATH, through Envoy; the lines must
//! be equal once the run's own ports, ids and times are named.

mod http_support;

use std::convert::Infallible;
use std::io::{Read, Write};
use std::net::SocketAddr;
use std::path::Path;
use std::time::{Duration, SystemTime};

use bytes::Bytes;
use http::{HeaderMap, HeaderValue, Request, Response};
use http_body_util::combinators::BoxBody;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo};

use http_support::*;

/// The trace id the traced requests bring.
const TRACE: &str = "0af7651916cd43dd8448eb211c80319c";

/// The environment both proxies run in.
const ENV: &[(&str, &str)] = &[("COURIER_ALOG_ENV", "hello-world"), ("TZ", "Asia/Kolkata")];

/// An HTTP/2 gRPC upstream; the method (the path's last part) chooses the answer:
/// `Trailers<v>`: a message, then `grpc-status: <v>` in trailers; `Only<v>`: headers only,
/// with `grpc-status: <v>`; `Http<code>`: that HTTP status and nothing else; anything
/// else: a message and no status at all.
fn grpc_upstream() -> SocketAddr {
    spawn_tokio_server(|s| async move {
        let svc = hyper::service::service_fn(|req: Request<Incoming>| async move {
            let path = req.uri().path().to_string();
            let _ = req.into_body().collect().await;
            let method = path.rsplit('/').next().unwrap_or("").to_string();
            let message = || Full::new(Bytes::from_static(&[0, 0, 0, 0, 0]));
            let grpc = |status: u16, body: BoxBody<Bytes, Infallible>| {
                let mut r = Response::new(body);
                *r.status_mut() = http::StatusCode::from_u16(status).expect("status");
                r.headers_mut()
                    .insert("content-type", HeaderValue::from_static("application/grpc"));
                r
            };
            let resp = if let Some(v) = method.strip_prefix("Trailers") {
                let mut t = HeaderMap::new();
                t.insert("grpc-status", HeaderValue::from_str(v).expect("value"));
                grpc(
                    200,
                    message()
                        .with_trailers(async move { Some(Ok::<_, Infallible>(t)) })
                        .boxed(),
                )
            } else if let Some(v) = method.strip_prefix("Only") {
                let mut r = grpc(200, Full::new(Bytes::new()).boxed());
                r.headers_mut()
                    .insert("grpc-status", HeaderValue::from_str(v).expect("value"));
                r
            } else if let Some(code) = method.strip_prefix("Http") {
                let mut r = Response::new(Full::new(Bytes::new()).boxed());
                *r.status_mut() =
                    http::StatusCode::from_u16(code.parse().expect("code")).expect("status");
                r
            } else {
                grpc(200, message().boxed())
            };
            Ok::<_, Infallible>(resp)
        });
        let _ = hyper::server::conn::http2::Builder::new(TokioExecutor::new())
            .serve_connection(TokioIo::new(s), svc)
            .await;
    })
}

const ROUTES: &str = r#"            name: local
            virtual_hosts:
            - name: main
              domains: ["*"]
              virtual_clusters:
              - name: vc_get
                headers: [{ name: ":method", string_match: { exact: GET } }]
              routes:
              - name: direct
                match: { prefix: "/direct" }
                direct_response: { status: 200, body: { inline_string: hello } }
              - name: refused
                match: { prefix: "/refused" }
                route: { cluster: refused }
              - name: empty
                match: { prefix: "/empty" }
                route: { cluster: empty }
              - name: retried
                match: { prefix: "/flaky" }
                route: { cluster: a, retry_policy: { retry_on: 5xx, num_retries: 3 } }
              - name: grpc
                match: { prefix: "/t.S/" }
                route: { cluster: grpc }
              - name: proxied
                match: { prefix: "/" }
                route: { cluster: a }
"#;

/// Every operator of this test, one line a request.
const OPS: &str = "%REQ(:METHOD)% %REQ(:PATH)% %RESPONSE_CODE% %PROTOCOL% grpc=%GRPC_STATUS% camel=%GRPC_STATUS(CAMEL_STRING)% snake=%GRPC_STATUS(SNAKE_STRING)% num=%GRPC_STATUS(NUMBER)% gn=%GRPC_STATUS_NUMBER% tr=%TRAILER(GRPC-STATUS)% trace=%TRACE_ID% sid=%STREAM_ID% cid=%CONNECTION_ID% att=%UPSTREAM_REQUEST_ATTEMPT_COUNT% ura=%UPSTREAM_REMOTE_ADDRESS% uran=%UPSTREAM_REMOTE_ADDRESS_WITHOUT_PORT% urp=%UPSTREAM_REMOTE_PORT% ulan=%UPSTREAM_LOCAL_ADDRESS_WITHOUT_PORT% ulp=%UPSTREAM_LOCAL_PORT% uhn=%UPSTREAM_HOST_NAME% uhnp=%UPSTREAM_HOST_NAME_WITHOUT_PORT% vc=%VIRTUAL_CLUSTER_NAME% env=%ENVIRONMENT(COURIER_ALOG_ENV)% env5=%ENVIRONMENT(COURIER_ALOG_ENV):5% nenv=%ENVIRONMENT(COURIER_ALOG_NO_SUCH)% rwq=%REQ_WITHOUT_QUERY(:PATH)% rwq3=%REQ_WITHOUT_QUERY(X-NONE?:PATH):3% rd=%REQUEST_DURATION% rtd=%REQUEST_TX_DURATION% rsd=%RESPONSE_DURATION% rstd=%RESPONSE_TX_DURATION% ddrp=%DOWNSTREAM_DIRECT_REMOTE_PORT% details=%RESPONSE_CODE_DETAILS(ALLOW_WHITESPACES)%\n";

fn file_logger(dir: &Path, name: &str, filter: &str, format: &str) -> String {
    let filter = if filter.is_empty() {
        String::new()
    } else {
        format!("            filter: {{ {filter} }}\n")
    };
    format!(
        "          - name: {name}
{filter}            typed_config:
              \"@type\": type.googleapis.com/envoy.extensions.access_loggers.file.v3.FileAccessLog
              path: {}
              log_format:
{format}",
        dir.join(format!("{name}.log")).display()
    )
}

fn boot(dir: &Path, a: SocketAddr, grpc: SocketAddr, refused: SocketAddr) -> String {
    let path_only = "                text_format: \"%REQ(:PATH)%\\n\"\n";
    let loggers = [
        file_logger(
            dir,
            "ops",
            "",
            &format!(
                "                text_format: {OPS:?}
                formatters:
                - name: envoy.formatter.req_without_query
                  typed_config:
                    \"@type\": type.googleapis.com/envoy.extensions.formatter.req_without_query.v3.ReqWithoutQuery
"
            ),
        ),
        file_logger(
            dir,
            "json",
            "",
            "                json_format: { path: \"%REQ(:PATH)%\", grpc: \"%GRPC_STATUS%\", num: \"%GRPC_STATUS(NUMBER)%\", gn: \"%GRPC_STATUS_NUMBER%\", att: \"%UPSTREAM_REQUEST_ATTEMPT_COUNT%\", cid: \"%CONNECTION_ID%\", urp: \"%UPSTREAM_REMOTE_PORT%\", rd: \"%REQUEST_DURATION%\", rtd: \"%REQUEST_TX_DURATION%\", rsd: \"%RESPONSE_DURATION%\", rstd: \"%RESPONSE_TX_DURATION%\", vc: \"%VIRTUAL_CLUSTER_NAME%\", sid: \"%STREAM_ID%\", trace: \"%TRACE_ID%\", nenv: \"%ENVIRONMENT(COURIER_ALOG_NO_SUCH)%\", env: \"%ENVIRONMENT(COURIER_ALOG_ENV):3%\" }\n",
        ),
        file_logger(
            dir,
            "omit",
            "",
            "                omit_empty_values: true\n                json_format: { grpc: \"%GRPC_STATUS%\", vc: \"%VIRTUAL_CLUSTER_NAME%\", nenv: \"%ENVIRONMENT(COURIER_ALOG_NO_SUCH)%\", rsd: \"%RESPONSE_DURATION%\" }\n",
        ),
        file_logger(dir, "traced", "traceable_filter: {}", path_only),
        file_logger(
            dir,
            "grpc_in",
            "grpc_status_filter: { statuses: [OK, UNKNOWN, NOT_FOUND] }",
            path_only,
        ),
        file_logger(
            dir,
            "grpc_out",
            "grpc_status_filter: { statuses: [OK, UNKNOWN, NOT_FOUND], exclude: true }",
            path_only,
        ),
    ]
    .concat();
    let tracing = "          tracing:
            provider:
              name: envoy.tracers.opentelemetry
              typed_config:
                \"@type\": type.googleapis.com/envoy.config.trace.v3.OpenTelemetryConfig
                grpc_service: { envoy_grpc: { cluster_name: collector }, timeout: 0.25s }
                service_name: courier-test
";
    let h2 = "    typed_extension_protocol_options:\n      envoy.extensions.upstreams.http.v3.HttpProtocolOptions:\n        \"@type\": type.googleapis.com/envoy.extensions.upstreams.http.v3.HttpProtocolOptions\n        explicit_http_config: { http2_protocol_options: {} }\n";
    let clusters = [
        format!(
            "  - name: a\n    type: STATIC\n    connect_timeout: 1s\n    load_assignment:\n      cluster_name: a\n      endpoints:\n      - lb_endpoints:\n        - endpoint: {{ hostname: up.example, address: {{ socket_address: {{ address: {}, port_value: {} }} }} }}\n",
            a.ip(),
            a.port()
        ),
        cluster("grpc", &[grpc], h2),
        cluster("refused", &[refused], ""),
        cluster("collector", &[refusing_addr()], h2),
        "  - name: empty\n    type: STATIC\n    connect_timeout: 1s\n    load_assignment: { cluster_name: empty, endpoints: [] }\n".to_string(),
    ]
    .concat();
    bootstrap(
        ROUTES,
        &format!("{tracing}          access_log:\n{loggers}"),
        &clusters,
    )
}

/// An HTTP/1.1 request on a connection of its own; waits for the whole response.
fn send(addr: SocketAddr, method: &str, path: &str, headers: &[(&str, &str)]) {
    let Ok(mut s) = std::net::TcpStream::connect(addr) else {
        return;
    };
    let _ = s.set_read_timeout(Some(Duration::from_secs(5)));
    let mut head = format!("{method} {path} HTTP/1.1\r\nhost: h\r\nconnection: close\r\n");
    for (k, v) in headers {
        head.push_str(&format!("{k}: {v}\r\n"));
    }
    if method == "POST" {
        head.push_str("content-length: 5\r\n\r\n\0\0\0\0\0");
    } else {
        head.push_str("\r\n");
    }
    let _ = s.write_all(head.as_bytes());
    let mut sink = Vec::new();
    let _ = s.read_to_end(&mut sink);
}

/// gRPC calls over one HTTP/2 connection, one after the other (`content-type`, path).
fn grpc_calls(addr: SocketAddr, calls: &[(&str, &str)]) {
    block_on(async move {
        let tcp = tokio::net::TcpStream::connect(addr).await.expect("connect");
        let (mut sender, conn) = hyper::client::conn::http2::handshake::<_, _, Full<Bytes>>(
            TokioExecutor::new(),
            TokioIo::new(tcp),
        )
        .await
        .expect("h2 handshake");
        tokio::spawn(conn);
        for (ct, path) in calls {
            let req = Request::post(format!("http://h{path}"))
                .header("content-type", *ct)
                .header("te", "trailers")
                .body(Full::new(Bytes::from_static(&[0, 0, 0, 0, 0])))
                .expect("request");
            let resp = sender.send_request(req).await.expect("response");
            let _ = resp.into_body().collect().await;
        }
    })
}

/// An HTTP/1.1 request: method, path, headers.
type Case = (
    &'static str,
    &'static str,
    &'static [(&'static str, &'static str)],
);

/// The HTTP/1.1 requests.
const H1: &[Case] = &[
    ("GET", "/ok", &[]),
    ("GET", "/ok?x=1&y=2", &[("x-request-id", "given-id")]),
    ("POST", "/echo", &[]),
    ("GET", "/direct?q", &[]),
    ("GET", "/refused", &[]),
    ("GET", "/empty", &[]),
    ("GET", "/flaky/2", &[]),
    ("GET", "/status/503", &[]),
    (
        "GET",
        "/traced",
        &[(
            "traceparent",
            "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01",
        )],
    ),
    (
        "GET",
        "/unsampled",
        &[(
            "traceparent",
            "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-00",
        )],
    ),
    ("GET", "/bad-context", &[("traceparent", "garbage")]),
    (
        "GET",
        "/forced-id",
        &[("x-request-id", "6fbc4a5e-2ce4-aa53-a09f-0000b2d8e3c2")],
    ),
    ("GET", "/force-trace", &[("x-envoy-force-trace", "1")]),
    (
        "POST",
        "/status/503",
        &[("content-type", "application/grpc")],
    ),
    ("POST", "/ok", &[("content-type", "application/grpc")]),
    ("POST", "/empty", &[("content-type", "application/grpc")]),
    (
        "POST",
        "/direct",
        &[("content-type", "application/grpc+proto")],
    ),
    (
        "POST",
        "/t.S/Trailers5",
        &[("content-type", "application/grpc-web")],
    ),
    (
        "POST",
        "/t.S/Trailers3",
        &[("content-type", "application/grpc"), ("te", "trailers")],
    ),
];

/// The gRPC calls over HTTP/2.
const H2: &[(&str, &str)] = &[
    ("application/grpc", "/t.S/Trailers0"),
    ("application/grpc", "/t.S/Trailers5"),
    ("application/grpc", "/t.S/Only7"),
    ("application/grpc", "/t.S/Only16"),
    ("application/grpc", "/t.S/Bare"),
    ("application/grpc", "/t.S/Http503"),
    ("application/grpc", "/t.S/Http404"),
    ("application/grpc", "/t.S/Trailers99"),
    ("application/grpc", "/t.S/Trailersabc"),
    ("application/grpc", "/t.S/Only13?q=1"),
    ("application/grpc", "/empty"),
    ("application/grpc+proto", "/t.S/Trailers14"),
];

/// Names the run's own addresses, ports, ids and durations in a line.
fn normalise(line: &str, a: SocketAddr, grpc: SocketAddr, refused: SocketAddr) -> String {
    let mut s = line
        .replace(&a.to_string(), "A")
        .replace(&grpc.to_string(), "G")
        .replace(&refused.to_string(), "R");
    let port_names = [(a.port(), "A"), (grpc.port(), "G"), (refused.port(), "R")];
    let urp = regex::Regex::new(r#"(urp=|"urp":)(\d+)"#).expect("regex");
    s = urp
        .replace_all(&s, |c: &regex::Captures<'_>| {
            let port: u16 = c[2].parse().unwrap_or(0);
            let name = port_names
                .iter()
                .find(|(p, _)| *p == port)
                .map_or("?", |(_, n)| n);
            format!("{}{name}", &c[1])
        })
        .into_owned();
    for (re, to) in [
        // Ephemeral ports, connection ids (Envoy counts its upstream connections too) and
        // durations.
        (r"\b(ulp|ddrp|cid|rd|rtd|rsd|rstd)=\d+", "$1=N"),
        (r#""(cid|rd|rtd|rsd|rstd)":\d+"#, "\"$1\":N"),
        // Generated request ids and trace ids.
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
    let trace = regex::Regex::new(r"\b[0-9a-f]{32}\b").expect("regex");
    trace
        .replace_all(&s, |c: &regex::Captures<'_>| {
            if &c[0] == TRACE {
                "TRACE".to_string()
            } else {
                "NEW_TRACE".to_string()
            }
        })
        .into_owned()
}

/// Each log's lines, normalised, as `<log>: <line>`.
fn run(start: &dyn Fn(&str) -> Option<Courier>) -> Option<Vec<String>> {
    let dir = tempfile::tempdir().expect("tempdir");
    let a = Upstream::start("a");
    let grpc = grpc_upstream();
    let refused = refusing_addr();
    let proxy = start(&boot(dir.path(), a.addr, grpc, refused))?;
    for (method, path, headers) in H1 {
        send(proxy.listener, method, path, headers);
    }
    grpc_calls(proxy.listener, H2);
    let total = H1.len() + H2.len();
    let mut out = Vec::new();
    for (name, n) in [
        ("ops", total),
        ("json", total),
        ("omit", total),
        ("traced", 1),
        ("grpc_in", 16),
        ("grpc_out", 15),
    ] {
        for line in log_lines(&dir.path().join(format!("{name}.log")), n) {
            out.push(format!(
                "{name}: {}",
                normalise(&line, a.addr, grpc, refused)
            ));
        }
    }
    Some(out)
}

const FLUSH: &[&str] = &["--file-flush-interval-msec", "20"];

#[test]
fn operators_and_filters_are_logged_as_envoy_logs_them() {
    let got = run(&|b| Some(Courier::start_with_env(b, &[], ENV))).expect("courier starts");
    if let Some(envoy) = run(&|b| Courier::start_envoy_with_env(b, FLUSH, ENV)) {
        for (e, c) in envoy.iter().zip(&got) {
            assert_eq!(e, c, "envoy (left) vs courier (right)");
        }
        assert_eq!(envoy.len(), got.len(), "{envoy:#?}\n{got:#?}");
    }
    let expected: Vec<String> = EXPECTED.lines().map(str::to_string).collect();
    for (e, c) in expected.iter().zip(&got) {
        assert_eq!(e, c, "expected (left) vs courier (right)");
    }
    assert_eq!(expected.len(), got.len(), "{got:#?}");
}

/// What Envoy 1.40 logs for the requests, normalised.
const EXPECTED: &str = r#"ops: GET /ok 200 HTTP/1.1 grpc=- camel=- snake=- num=- gn=- tr=- trace=NEW_TRACE sid=UUID cid=N att=1 ura=A uran=127.0.0.1 urp=A ulan=127.0.0.1 ulp=N uhn=up.example uhnp=up.example vc=vc_get env=hello-world env5=hello nenv=- rwq=/ok rwq3=/ok rd=N rtd=N rsd=N rstd=N ddrp=N details=via_upstream
ops: GET /ok?x=1&y=2 200 HTTP/1.1 grpc=- camel=- snake=- num=- gn=- tr=- trace=NEW_TRACE sid=given-id cid=N att=1 ura=A uran=127.0.0.1 urp=A ulan=127.0.0.1 ulp=N uhn=up.example uhnp=up.example vc=vc_get env=hello-world env5=hello nenv=- rwq=/ok rwq3=/ok rd=N rtd=N rsd=N rstd=N ddrp=N details=via_upstream
ops: POST /echo 200 HTTP/1.1 grpc=- camel=- snake=- num=- gn=- tr=- trace=NEW_TRACE sid=UUID cid=N att=1 ura=A uran=127.0.0.1 urp=A ulan=127.0.0.1 ulp=N uhn=up.example uhnp=up.example vc=- env=hello-world env5=hello nenv=- rwq=/echo rwq3=/ec rd=N rtd=N rsd=N rstd=N ddrp=N details=via_upstream
ops: GET /direct?q 200 HTTP/1.1 grpc=- camel=- snake=- num=- gn=- tr=- trace=NEW_TRACE sid=UUID cid=N att=0 ura=- uran=- urp=- ulan=- ulp=- uhn=- uhnp=- vc=- env=hello-world env5=hello nenv=- rwq=/direct rwq3=/di rd=N rtd=- rsd=- rstd=- ddrp=N details=direct_response
ops: GET /refused 503 HTTP/1.1 grpc=- camel=- snake=- num=- gn=- tr=- trace=NEW_TRACE sid=UUID cid=N att=1 ura=- uran=- urp=- ulan=- ulp=- uhn=R uhnp=127.0.0.1 vc=vc_get env=hello-world env5=hello nenv=- rwq=/refused rwq3=/re rd=N rtd=- rsd=- rstd=- ddrp=N details=upstream_reset_before_response_started{remote_connection_failure|delayed_connect_error:_Connection_refused}
ops: GET /empty 503 HTTP/1.1 grpc=- camel=- snake=- num=- gn=- tr=- trace=NEW_TRACE sid=UUID cid=N att=1 ura=- uran=- urp=- ulan=- ulp=- uhn=- uhnp=- vc=vc_get env=hello-world env5=hello nenv=- rwq=/empty rwq3=/em rd=N rtd=- rsd=- rstd=- ddrp=N details=no_healthy_upstream
ops: GET /flaky/2 200 HTTP/1.1 grpc=- camel=- snake=- num=- gn=- tr=- trace=NEW_TRACE sid=UUID cid=N att=3 ura=A uran=127.0.0.1 urp=A ulan=127.0.0.1 ulp=N uhn=up.example uhnp=up.example vc=vc_get env=hello-world env5=hello nenv=- rwq=/flaky/2 rwq3=/fl rd=N rtd=N rsd=N rstd=N ddrp=N details=via_upstream
ops: GET /status/503 503 HTTP/1.1 grpc=- camel=- snake=- num=- gn=- tr=- trace=NEW_TRACE sid=UUID cid=N att=1 ura=A uran=127.0.0.1 urp=A ulan=127.0.0.1 ulp=N uhn=up.example uhnp=up.example vc=vc_get env=hello-world env5=hello nenv=- rwq=/status/503 rwq3=/st rd=N rtd=N rsd=N rstd=N ddrp=N details=via_upstream
ops: GET /traced 200 HTTP/1.1 grpc=- camel=- snake=- num=- gn=- tr=- trace=TRACE sid=UUID cid=N att=1 ura=A uran=127.0.0.1 urp=A ulan=127.0.0.1 ulp=N uhn=up.example uhnp=up.example vc=vc_get env=hello-world env5=hello nenv=- rwq=/traced rwq3=/tr rd=N rtd=N rsd=N rstd=N ddrp=N details=via_upstream
ops: GET /unsampled 200 HTTP/1.1 grpc=- camel=- snake=- num=- gn=- tr=- trace=TRACE sid=UUID cid=N att=1 ura=A uran=127.0.0.1 urp=A ulan=127.0.0.1 ulp=N uhn=up.example uhnp=up.example vc=vc_get env=hello-world env5=hello nenv=- rwq=/unsampled rwq3=/un rd=N rtd=N rsd=N rstd=N ddrp=N details=via_upstream
ops: GET /bad-context 200 HTTP/1.1 grpc=- camel=- snake=- num=- gn=- tr=- trace=- sid=UUID cid=N att=1 ura=A uran=127.0.0.1 urp=A ulan=127.0.0.1 ulp=N uhn=up.example uhnp=up.example vc=vc_get env=hello-world env5=hello nenv=- rwq=/bad-context rwq3=/ba rd=N rtd=N rsd=N rstd=N ddrp=N details=via_upstream
ops: GET /forced-id 200 HTTP/1.1 grpc=- camel=- snake=- num=- gn=- tr=- trace=NEW_TRACE sid=UUID cid=N att=1 ura=A uran=127.0.0.1 urp=A ulan=127.0.0.1 ulp=N uhn=up.example uhnp=up.example vc=vc_get env=hello-world env5=hello nenv=- rwq=/forced-id rwq3=/fo rd=N rtd=N rsd=N rstd=N ddrp=N details=via_upstream
ops: GET /force-trace 200 HTTP/1.1 grpc=- camel=- snake=- num=- gn=- tr=- trace=NEW_TRACE sid=UUID cid=N att=1 ura=A uran=127.0.0.1 urp=A ulan=127.0.0.1 ulp=N uhn=up.example uhnp=up.example vc=vc_get env=hello-world env5=hello nenv=- rwq=/force-trace rwq3=/fo rd=N rtd=N rsd=N rstd=N ddrp=N details=via_upstream
ops: POST /status/503 503 HTTP/1.1 grpc=Unavailable camel=Unavailable snake=UNAVAILABLE num=14 gn=14 tr=- trace=NEW_TRACE sid=UUID cid=N att=1 ura=A uran=127.0.0.1 urp=A ulan=127.0.0.1 ulp=N uhn=up.example uhnp=up.example vc=- env=hello-world env5=hello nenv=- rwq=/status/503 rwq3=/st rd=N rtd=N rsd=N rstd=N ddrp=N details=via_upstream
ops: POST /ok 200 HTTP/1.1 grpc=Unknown camel=Unknown snake=UNKNOWN num=2 gn=2 tr=- trace=NEW_TRACE sid=UUID cid=N att=1 ura=A uran=127.0.0.1 urp=A ulan=127.0.0.1 ulp=N uhn=up.example uhnp=up.example vc=- env=hello-world env5=hello nenv=- rwq=/ok rwq3=/ok rd=N rtd=N rsd=N rstd=N ddrp=N details=via_upstream
ops: POST /empty 200 HTTP/1.1 grpc=Unavailable camel=Unavailable snake=UNAVAILABLE num=14 gn=14 tr=- trace=NEW_TRACE sid=UUID cid=N att=1 ura=- uran=- urp=- ulan=- ulp=- uhn=- uhnp=- vc=- env=hello-world env5=hello nenv=- rwq=/empty rwq3=/em rd=- rtd=- rsd=- rstd=- ddrp=N details=no_healthy_upstream
ops: POST /direct 200 HTTP/1.1 grpc=Unknown camel=Unknown snake=UNKNOWN num=2 gn=2 tr=- trace=NEW_TRACE sid=UUID cid=N att=0 ura=- uran=- urp=- ulan=- ulp=- uhn=- uhnp=- vc=- env=hello-world env5=hello nenv=- rwq=/direct rwq3=/di rd=- rtd=- rsd=- rstd=- ddrp=N details=direct_response
ops: POST /t.S/Trailers5 200 HTTP/1.1 grpc=- camel=- snake=- num=- gn=- tr=5 trace=NEW_TRACE sid=UUID cid=N att=1 ura=G uran=127.0.0.1 urp=G ulan=127.0.0.1 ulp=N uhn=G uhnp=127.0.0.1 vc=- env=hello-world env5=hello nenv=- rwq=/t.S/Trailers5 rwq3=/t. rd=N rtd=N rsd=N rstd=N ddrp=N details=via_upstream
ops: POST /t.S/Trailers3 200 HTTP/1.1 grpc=InvalidArgument camel=InvalidArgument snake=INVALID_ARGUMENT num=3 gn=3 tr=3 trace=NEW_TRACE sid=UUID cid=N att=1 ura=G uran=127.0.0.1 urp=G ulan=127.0.0.1 ulp=N uhn=G uhnp=127.0.0.1 vc=- env=hello-world env5=hello nenv=- rwq=/t.S/Trailers3 rwq3=/t. rd=N rtd=N rsd=N rstd=N ddrp=N details=via_upstream
ops: POST /t.S/Trailers0 200 HTTP/2 grpc=OK camel=OK snake=OK num=0 gn=0 tr=0 trace=NEW_TRACE sid=UUID cid=N att=1 ura=G uran=127.0.0.1 urp=G ulan=127.0.0.1 ulp=N uhn=G uhnp=127.0.0.1 vc=- env=hello-world env5=hello nenv=- rwq=/t.S/Trailers0 rwq3=/t. rd=N rtd=N rsd=N rstd=N ddrp=N details=via_upstream
ops: POST /t.S/Trailers5 200 HTTP/2 grpc=NotFound camel=NotFound snake=NOT_FOUND num=5 gn=5 tr=5 trace=NEW_TRACE sid=UUID cid=N att=1 ura=G uran=127.0.0.1 urp=G ulan=127.0.0.1 ulp=N uhn=G uhnp=127.0.0.1 vc=- env=hello-world env5=hello nenv=- rwq=/t.S/Trailers5 rwq3=/t. rd=N rtd=N rsd=N rstd=N ddrp=N details=via_upstream
ops: POST /t.S/Only7 200 HTTP/2 grpc=PermissionDenied camel=PermissionDenied snake=PERMISSION_DENIED num=7 gn=7 tr=- trace=NEW_TRACE sid=UUID cid=N att=1 ura=G uran=127.0.0.1 urp=G ulan=127.0.0.1 ulp=N uhn=G uhnp=127.0.0.1 vc=- env=hello-world env5=hello nenv=- rwq=/t.S/Only7 rwq3=/t. rd=N rtd=N rsd=N rstd=N ddrp=N details=via_upstream
ops: POST /t.S/Only16 200 HTTP/2 grpc=Unauthenticated camel=Unauthenticated snake=UNAUTHENTICATED num=16 gn=16 tr=- trace=NEW_TRACE sid=UUID cid=N att=1 ura=G uran=127.0.0.1 urp=G ulan=127.0.0.1 ulp=N uhn=G uhnp=127.0.0.1 vc=- env=hello-world env5=hello nenv=- rwq=/t.S/Only16 rwq3=/t. rd=N rtd=N rsd=N rstd=N ddrp=N details=via_upstream
ops: POST /t.S/Bare 200 HTTP/2 grpc=Unknown camel=Unknown snake=UNKNOWN num=2 gn=2 tr=- trace=NEW_TRACE sid=UUID cid=N att=1 ura=G uran=127.0.0.1 urp=G ulan=127.0.0.1 ulp=N uhn=G uhnp=127.0.0.1 vc=- env=hello-world env5=hello nenv=- rwq=/t.S/Bare rwq3=/t. rd=N rtd=N rsd=N rstd=N ddrp=N details=via_upstream
ops: POST /t.S/Http503 503 HTTP/2 grpc=Unavailable camel=Unavailable snake=UNAVAILABLE num=14 gn=14 tr=- trace=NEW_TRACE sid=UUID cid=N att=1 ura=G uran=127.0.0.1 urp=G ulan=127.0.0.1 ulp=N uhn=G uhnp=127.0.0.1 vc=- env=hello-world env5=hello nenv=- rwq=/t.S/Http503 rwq3=/t. rd=N rtd=N rsd=N rstd=N ddrp=N details=via_upstream
ops: POST /t.S/Http404 404 HTTP/2 grpc=Unimplemented camel=Unimplemented snake=UNIMPLEMENTED num=12 gn=12 tr=- trace=NEW_TRACE sid=UUID cid=N att=1 ura=G uran=127.0.0.1 urp=G ulan=127.0.0.1 ulp=N uhn=G uhnp=127.0.0.1 vc=- env=hello-world env5=hello nenv=- rwq=/t.S/Http404 rwq3=/t. rd=N rtd=N rsd=N rstd=N ddrp=N details=via_upstream
ops: POST /t.S/Trailers99 200 HTTP/2 grpc=99 camel=99 snake=99 num=99 gn=99 tr=99 trace=NEW_TRACE sid=UUID cid=N att=1 ura=G uran=127.0.0.1 urp=G ulan=127.0.0.1 ulp=N uhn=G uhnp=127.0.0.1 vc=- env=hello-world env5=hello nenv=- rwq=/t.S/Trailers99 rwq3=/t. rd=N rtd=N rsd=N rstd=N ddrp=N details=via_upstream
ops: POST /t.S/Trailersabc 200 HTTP/2 grpc=-1 camel=-1 snake=-1 num=-1 gn=-1 tr=abc trace=NEW_TRACE sid=UUID cid=N att=1 ura=G uran=127.0.0.1 urp=G ulan=127.0.0.1 ulp=N uhn=G uhnp=127.0.0.1 vc=- env=hello-world env5=hello nenv=- rwq=/t.S/Trailersabc rwq3=/t. rd=N rtd=N rsd=N rstd=N ddrp=N details=via_upstream
ops: POST /t.S/Only13?q=1 200 HTTP/2 grpc=Internal camel=Internal snake=INTERNAL num=13 gn=13 tr=- trace=NEW_TRACE sid=UUID cid=N att=1 ura=G uran=127.0.0.1 urp=G ulan=127.0.0.1 ulp=N uhn=G uhnp=127.0.0.1 vc=- env=hello-world env5=hello nenv=- rwq=/t.S/Only13 rwq3=/t. rd=N rtd=N rsd=N rstd=N ddrp=N details=via_upstream
ops: POST /empty 200 HTTP/2 grpc=Unavailable camel=Unavailable snake=UNAVAILABLE num=14 gn=14 tr=- trace=NEW_TRACE sid=UUID cid=N att=1 ura=- uran=- urp=- ulan=- ulp=- uhn=- uhnp=- vc=- env=hello-world env5=hello nenv=- rwq=/empty rwq3=/em rd=- rtd=- rsd=- rstd=- ddrp=N details=no_healthy_upstream
ops: POST /t.S/Trailers14 200 HTTP/2 grpc=Unavailable camel=Unavailable snake=UNAVAILABLE num=14 gn=14 tr=14 trace=NEW_TRACE sid=UUID cid=N att=1 ura=G uran=127.0.0.1 urp=G ulan=127.0.0.1 ulp=N uhn=G uhnp=127.0.0.1 vc=- env=hello-world env5=hello nenv=- rwq=/t.S/Trailers14 rwq3=/t. rd=N rtd=N rsd=N rstd=N ddrp=N details=via_upstream
json: {"att":1,"cid":N,"env":"hel","gn":null,"grpc":null,"nenv":"-","num":null,"path":"/ok","rd":N,"rsd":N,"rstd":N,"rtd":N,"sid":"UUID","trace":"NEW_TRACE","urp":A,"vc":"vc_get"}
json: {"att":1,"cid":N,"env":"hel","gn":null,"grpc":null,"nenv":"-","num":null,"path":"/ok?x=1&y=2","rd":N,"rsd":N,"rstd":N,"rtd":N,"sid":"given-id","trace":"NEW_TRACE","urp":A,"vc":"vc_get"}
json: {"att":1,"cid":N,"env":"hel","gn":null,"grpc":null,"nenv":"-","num":null,"path":"/echo","rd":N,"rsd":N,"rstd":N,"rtd":N,"sid":"UUID","trace":"NEW_TRACE","urp":A,"vc":null}
json: {"att":0,"cid":N,"env":"hel","gn":null,"grpc":null,"nenv":"-","num":null,"path":"/direct?q","rd":N,"rsd":null,"rstd":null,"rtd":null,"sid":"UUID","trace":"NEW_TRACE","urp":null,"vc":null}
json: {"att":1,"cid":N,"env":"hel","gn":null,"grpc":null,"nenv":"-","num":null,"path":"/refused","rd":N,"rsd":null,"rstd":null,"rtd":null,"sid":"UUID","trace":"NEW_TRACE","urp":null,"vc":"vc_get"}
json: {"att":1,"cid":N,"env":"hel","gn":null,"grpc":null,"nenv":"-","num":null,"path":"/empty","rd":N,"rsd":null,"rstd":null,"rtd":null,"sid":"UUID","trace":"NEW_TRACE","urp":null,"vc":"vc_get"}
json: {"att":3,"cid":N,"env":"hel","gn":null,"grpc":null,"nenv":"-","num":null,"path":"/flaky/2","rd":N,"rsd":N,"rstd":N,"rtd":N,"sid":"UUID","trace":"NEW_TRACE","urp":A,"vc":"vc_get"}
json: {"att":1,"cid":N,"env":"hel","gn":null,"grpc":null,"nenv":"-","num":null,"path":"/status/503","rd":N,"rsd":N,"rstd":N,"rtd":N,"sid":"UUID","trace":"NEW_TRACE","urp":A,"vc":"vc_get"}
json: {"att":1,"cid":N,"env":"hel","gn":null,"grpc":null,"nenv":"-","num":null,"path":"/traced","rd":N,"rsd":N,"rstd":N,"rtd":N,"sid":"UUID","trace":"TRACE","urp":A,"vc":"vc_get"}
json: {"att":1,"cid":N,"env":"hel","gn":null,"grpc":null,"nenv":"-","num":null,"path":"/unsampled","rd":N,"rsd":N,"rstd":N,"rtd":N,"sid":"UUID","trace":"TRACE","urp":A,"vc":"vc_get"}
json: {"att":1,"cid":N,"env":"hel","gn":null,"grpc":null,"nenv":"-","num":null,"path":"/bad-context","rd":N,"rsd":N,"rstd":N,"rtd":N,"sid":"UUID","trace":null,"urp":A,"vc":"vc_get"}
json: {"att":1,"cid":N,"env":"hel","gn":null,"grpc":null,"nenv":"-","num":null,"path":"/forced-id","rd":N,"rsd":N,"rstd":N,"rtd":N,"sid":"UUID","trace":"NEW_TRACE","urp":A,"vc":"vc_get"}
json: {"att":1,"cid":N,"env":"hel","gn":null,"grpc":null,"nenv":"-","num":null,"path":"/force-trace","rd":N,"rsd":N,"rstd":N,"rtd":N,"sid":"UUID","trace":"NEW_TRACE","urp":A,"vc":"vc_get"}
json: {"att":1,"cid":N,"env":"hel","gn":14,"grpc":"Unavailable","nenv":"-","num":14,"path":"/status/503","rd":N,"rsd":N,"rstd":N,"rtd":N,"sid":"UUID","trace":"NEW_TRACE","urp":A,"vc":null}
json: {"att":1,"cid":N,"env":"hel","gn":2,"grpc":"Unknown","nenv":"-","num":2,"path":"/ok","rd":N,"rsd":N,"rstd":N,"rtd":N,"sid":"UUID","trace":"NEW_TRACE","urp":A,"vc":null}
json: {"att":1,"cid":N,"env":"hel","gn":14,"grpc":"Unavailable","nenv":"-","num":14,"path":"/empty","rd":null,"rsd":null,"rstd":null,"rtd":null,"sid":"UUID","trace":"NEW_TRACE","urp":null,"vc":null}
json: {"att":0,"cid":N,"env":"hel","gn":2,"grpc":"Unknown","nenv":"-","num":2,"path":"/direct","rd":null,"rsd":null,"rstd":null,"rtd":null,"sid":"UUID","trace":"NEW_TRACE","urp":null,"vc":null}
json: {"att":1,"cid":N,"env":"hel","gn":null,"grpc":null,"nenv":"-","num":null,"path":"/t.S/Trailers5","rd":N,"rsd":N,"rstd":N,"rtd":N,"sid":"UUID","trace":"NEW_TRACE","urp":G,"vc":null}
json: {"att":1,"cid":N,"env":"hel","gn":3,"grpc":"InvalidArgument","nenv":"-","num":3,"path":"/t.S/Trailers3","rd":N,"rsd":N,"rstd":N,"rtd":N,"sid":"UUID","trace":"NEW_TRACE","urp":G,"vc":null}
json: {"att":1,"cid":N,"env":"hel","gn":0,"grpc":"OK","nenv":"-","num":0,"path":"/t.S/Trailers0","rd":N,"rsd":N,"rstd":N,"rtd":N,"sid":"UUID","trace":"NEW_TRACE","urp":G,"vc":null}
json: {"att":1,"cid":N,"env":"hel","gn":5,"grpc":"NotFound","nenv":"-","num":5,"path":"/t.S/Trailers5","rd":N,"rsd":N,"rstd":N,"rtd":N,"sid":"UUID","trace":"NEW_TRACE","urp":G,"vc":null}
json: {"att":1,"cid":N,"env":"hel","gn":7,"grpc":"PermissionDenied","nenv":"-","num":7,"path":"/t.S/Only7","rd":N,"rsd":N,"rstd":N,"rtd":N,"sid":"UUID","trace":"NEW_TRACE","urp":G,"vc":null}
json: {"att":1,"cid":N,"env":"hel","gn":16,"grpc":"Unauthenticated","nenv":"-","num":16,"path":"/t.S/Only16","rd":N,"rsd":N,"rstd":N,"rtd":N,"sid":"UUID","trace":"NEW_TRACE","urp":G,"vc":null}
json: {"att":1,"cid":N,"env":"hel","gn":2,"grpc":"Unknown","nenv":"-","num":2,"path":"/t.S/Bare","rd":N,"rsd":N,"rstd":N,"rtd":N,"sid":"UUID","trace":"NEW_TRACE","urp":G,"vc":null}
json: {"att":1,"cid":N,"env":"hel","gn":14,"grpc":"Unavailable","nenv":"-","num":14,"path":"/t.S/Http503","rd":N,"rsd":N,"rstd":N,"rtd":N,"sid":"UUID","trace":"NEW_TRACE","urp":G,"vc":null}
json: {"att":1,"cid":N,"env":"hel","gn":12,"grpc":"Unimplemented","nenv":"-","num":12,"path":"/t.S/Http404","rd":N,"rsd":N,"rstd":N,"rtd":N,"sid":"UUID","trace":"NEW_TRACE","urp":G,"vc":null}
json: {"att":1,"cid":N,"env":"hel","gn":99,"grpc":"99","nenv":"-","num":99,"path":"/t.S/Trailers99","rd":N,"rsd":N,"rstd":N,"rtd":N,"sid":"UUID","trace":"NEW_TRACE","urp":G,"vc":null}
json: {"att":1,"cid":N,"env":"hel","gn":-1,"grpc":"-1","nenv":"-","num":-1,"path":"/t.S/Trailersabc","rd":N,"rsd":N,"rstd":N,"rtd":N,"sid":"UUID","trace":"NEW_TRACE","urp":G,"vc":null}
json: {"att":1,"cid":N,"env":"hel","gn":13,"grpc":"Internal","nenv":"-","num":13,"path":"/t.S/Only13?q=1","rd":N,"rsd":N,"rstd":N,"rtd":N,"sid":"UUID","trace":"NEW_TRACE","urp":G,"vc":null}
json: {"att":1,"cid":N,"env":"hel","gn":14,"grpc":"Unavailable","nenv":"-","num":14,"path":"/empty","rd":null,"rsd":null,"rstd":null,"rtd":null,"sid":"UUID","trace":"NEW_TRACE","urp":null,"vc":null}
json: {"att":1,"cid":N,"env":"hel","gn":14,"grpc":"Unavailable","nenv":"-","num":14,"path":"/t.S/Trailers14","rd":N,"rsd":N,"rstd":N,"rtd":N,"sid":"UUID","trace":"NEW_TRACE","urp":G,"vc":null}
omit: {"nenv":"-","rsd":N,"vc":"vc_get"}
omit: {"nenv":"-","rsd":N,"vc":"vc_get"}
omit: {"nenv":"-","rsd":N}
omit: {"nenv":"-"}
omit: {"nenv":"-","vc":"vc_get"}
omit: {"nenv":"-","vc":"vc_get"}
omit: {"nenv":"-","rsd":N,"vc":"vc_get"}
omit: {"nenv":"-","rsd":N,"vc":"vc_get"}
omit: {"nenv":"-","rsd":N,"vc":"vc_get"}
omit: {"nenv":"-","rsd":N,"vc":"vc_get"}
omit: {"nenv":"-","rsd":N,"vc":"vc_get"}
omit: {"nenv":"-","rsd":N,"vc":"vc_get"}
omit: {"nenv":"-","rsd":N,"vc":"vc_get"}
omit: {"grpc":"Unavailable","nenv":"-","rsd":N}
omit: {"grpc":"Unknown","nenv":"-","rsd":N}
omit: {"grpc":"Unavailable","nenv":"-"}
omit: {"grpc":"Unknown","nenv":"-"}
omit: {"nenv":"-","rsd":N}
omit: {"grpc":"InvalidArgument","nenv":"-","rsd":N}
omit: {"grpc":"OK","nenv":"-","rsd":N}
omit: {"grpc":"NotFound","nenv":"-","rsd":N}
omit: {"grpc":"PermissionDenied","nenv":"-","rsd":N}
omit: {"grpc":"Unauthenticated","nenv":"-","rsd":N}
omit: {"grpc":"Unknown","nenv":"-","rsd":N}
omit: {"grpc":"Unavailable","nenv":"-","rsd":N}
omit: {"grpc":"Unimplemented","nenv":"-","rsd":N}
omit: {"grpc":"99","nenv":"-","rsd":N}
omit: {"grpc":"-1","nenv":"-","rsd":N}
omit: {"grpc":"Internal","nenv":"-","rsd":N}
omit: {"grpc":"Unavailable","nenv":"-"}
omit: {"grpc":"Unavailable","nenv":"-","rsd":N}
traced: /forced-id
grpc_in: /ok
grpc_in: /ok?x=1&y=2
grpc_in: /echo
grpc_in: /direct?q
grpc_in: /flaky/2
grpc_in: /traced
grpc_in: /unsampled
grpc_in: /bad-context
grpc_in: /forced-id
grpc_in: /force-trace
grpc_in: /ok
grpc_in: /direct
grpc_in: /t.S/Trailers5
grpc_in: /t.S/Trailers0
grpc_in: /t.S/Trailers5
grpc_in: /t.S/Bare
grpc_out: /refused
grpc_out: /empty
grpc_out: /status/503
grpc_out: /status/503
grpc_out: /empty
grpc_out: /t.S/Trailers3
grpc_out: /t.S/Only7
grpc_out: /t.S/Only16
grpc_out: /t.S/Http503
grpc_out: /t.S/Http404
grpc_out: /t.S/Trailers99
grpc_out: /t.S/Trailersabc
grpc_out: /t.S/Only13?q=1
grpc_out: /empty
grpc_out: /t.S/Trailers14"#;

/// `%START_TIME(…)%` formats, each piece in `[]`, its sub-second digits between `<>`
/// (trimmed ones between `{}`).
const TIMES: &str = "[%START_TIME%] [%START_TIME()%] [%START_TIME(%Y-%m-%dT%H:%M:%S.<%3f>%z)%] [%START_TIME(%s|<%f>|<%1f>|<%6f>|<%9f>)%] [%START_TIME(%a %A %b %B %c|%C %d %D %e %F %g %G %h %H %I %j %k %l %m %M %p %P %r %R %S %T %u %U %V %w %W %x %X %y %Y %z %Z %%)%] [%START_TIME(%E4Y %Ez %E*z %:z %::z %ET %-d %_H %^a %#b %5Y %10f %Q %+ %E %O x%)%] [%START_TIME(%E0S|<%E3S>|{%E*S}|<%E3f>|{%E*f}|<%E0f>|<%%f>|%%s|<%%E3S>)%] [%START_TIME_LOCAL%] [%START_TIME_LOCAL(%Y-%m-%dT%H:%M:%S %z %Z %Ez|<%E3S>|%c)%]\n";

/// The two proxies' lines for requests made in the same second, their sub-second digits
/// masked.
fn times_of(proxies: &[SocketAddr; 2], dirs: &[&Path; 2]) -> Vec<[String; 2]> {
    let mask = |line: &str| {
        let fixed = regex::Regex::new(r"<[^<>]*>").expect("regex");
        let trimmed = regex::Regex::new(r"\{[0-9.]*\}").expect("regex");
        let line = fixed.replace_all(line, |c: &regex::Captures<'_>| {
            c[0].chars()
                .map(|ch| if ch.is_ascii_digit() { 'D' } else { ch })
                .collect::<String>()
        });
        let line = trimmed.replace_all(&line, "{F}");
        // The default formats' milliseconds.
        let millis = regex::Regex::new(r"(\d\d:\d\d:\d\d)\.\d{3}").expect("regex");
        millis.replace_all(&line, "$1.DDD").into_owned()
    };
    let epoch = |line: &str| -> Option<String> {
        let re = regex::Regex::new(r"\[(\d+)\|<").expect("regex");
        re.captures(line).map(|c| c[1].to_string())
    };
    let mut pairs = Vec::new();
    let mut n = 0;
    while pairs.len() < 3 {
        // Both requests within one second: started early in a second.
        loop {
            let sub = SystemTime::now()
                .duration_since(SystemTime::UNIX_EPOCH)
                .expect("clock")
                .subsec_millis();
            if sub < 500 {
                break;
            }
            std::thread::sleep(Duration::from_millis(u64::from(1000 - sub) + 5));
        }
        n += 1;
        for p in proxies {
            send(*p, "GET", "/time", &[]);
        }
        let lines: Vec<String> = dirs
            .iter()
            .map(|d| log_lines(&d.join("times.log"), n).pop().unwrap_or_default())
            .collect();
        if epoch(&lines[0]) == epoch(&lines[1]) {
            pairs.push([mask(&lines[0]), mask(&lines[1])]);
        }
        assert!(n < 20, "no two requests in one second");
    }
    pairs
}

fn times_boot(dir: &Path) -> String {
    bootstrap(
        "            name: local
            virtual_hosts:
            - name: main
              domains: [\"*\"]
              routes:
              - match: { prefix: \"/\" }
                direct_response: { status: 200 }
",
        &format!(
            "          access_log:\n{}",
            file_logger(
                dir,
                "times",
                "",
                &format!("                text_format: {TIMES:?}\n")
            )
        ),
        "    []\n",
    )
}

#[test]
fn start_times_are_formatted_as_envoy_formats_them() {
    let cdir = tempfile::tempdir().expect("tempdir");
    let courier = Courier::start_with_env(&times_boot(cdir.path()), &[], ENV);
    let edir = tempfile::tempdir().expect("tempdir");
    let Some(envoy) = Courier::start_envoy_with_env(&times_boot(edir.path()), FLUSH, ENV) else {
        // Without Envoy: Courier's lines have the shape Envoy's have.
        send(courier.listener, "GET", "/time", &[]);
        let line = log_lines(&cdir.path().join("times.log"), 1)
            .pop()
            .unwrap_or_default();
        assert!(line.contains("+0530 IST +05:30"), "{line}");
        return;
    };
    for [c, e] in times_of(
        &[courier.listener, envoy.listener],
        &[cdir.path(), edir.path()],
    ) {
        assert_eq!(e, c, "envoy (left) vs courier (right)");
    }
}

#[test]
fn bootstraps_validate_in_envoy_and_unsupported_operators_are_refused() {
    let addr: SocketAddr = "127.0.0.1:9".parse().expect("addr");
    let dir = tempfile::tempdir().expect("tempdir");
    let base = boot(dir.path(), addr, addr, addr);
    if let Some((code, out)) = envoy_validate(&base) {
        assert_eq!(code, Some(0), "{out}");
    }
    if let Some((code, out)) = envoy_validate(&times_boot(dir.path())) {
        assert_eq!(code, Some(0), "{out}");
    }
    const OPS_ANCHOR: &str = "grpc=%GRPC_STATUS%";
    const FILTER_ANCHOR: &str = "traceable_filter: {}";
    const FORMATTER: &str = "envoy.extensions.formatter.req_without_query.v3.ReqWithoutQuery";
    // What Envoy serves and Courier has nothing for, refused by name.
    assert_refused_by_path(
        &base,
        &[
            (
                OPS_ANCHOR,
                "grpc=%DYNAMIC_METADATA(envoy.lb:canary)%",
                "%DYNAMIC_METADATA% is not supported by Courier: Courier keeps no dynamic metadata",
            ),
            (
                OPS_ANCHOR,
                "grpc=%FILTER_STATE(key:PLAIN)%",
                "%FILTER_STATE% is not supported by Courier: Courier keeps no filter state",
            ),
            (
                OPS_ANCHOR,
                "grpc=%UPSTREAM_PEER_SUBJECT%",
                "%UPSTREAM_PEER_SUBJECT% is not supported by Courier",
            ),
            (
                FILTER_ANCHOR,
                "metadata_filter: { matcher: { filter: f, path: [{ key: k }], value: { present_match: true } } }",
                "access_log[3].filter.metadata_filter: not supported by Courier: it keeps no dynamic metadata",
            ),
            (
                FILTER_ANCHOR,
                "extension_filter: { name: x, typed_config: { \"@type\": type.googleapis.com/google.protobuf.Struct } }",
                "access_log[3].filter.extension_filter",
            ),
            (
                FORMATTER,
                "envoy.extensions.formatter.metadata.v3.Metadata",
                "log_format.formatters[0]: formatter extension envoy.formatter.req_without_query is not supported by Courier",
            ),
        ],
    );
    // What Envoy refuses too.
    for (from, to, want) in [
        (OPS_ANCHOR, "grpc=%GRPC_STATUS(LOWER)%", "GrpcStatusFormatter only supports"),
        (OPS_ANCHOR, "grpc=%TRACE_ID(X)%", "TRACE_ID does not take any parameters or length"),
        (OPS_ANCHOR, "grpc=%ENVIRONMENT%", "ENVIRONMENT requires parameters"),
        (OPS_ANCHOR, "grpc=%START_TIME(%s):4%", "START_TIME does not allow length"),
        (OPS_ANCHOR, "grpc=%START_TIME(%Y%n)%", "Format string contains newline"),
        (OPS_ANCHOR, "grpc=100%", "Couldn't find valid command at position"),
        (
            "                formatters:\n                - name: envoy.formatter.req_without_query\n                  typed_config:\n                    \"@type\": type.googleapis.com/envoy.extensions.formatter.req_without_query.v3.ReqWithoutQuery\n",
            "",
            "Not supported field in StreamInfo: REQ_WITHOUT_QUERY",
        ),
    ] {
        assert!(base.contains(from), "{from}");
        let bad = base.replacen(from, to, 1);
        let (code, err) = validate(&bad);
        assert_eq!(code, Some(1), "{to}: {err}");
        assert!(err.contains(want), "{to}: want {want:?} in {err}");
        if let Some((code, out)) = envoy_validate(&bad) {
            assert_ne!(code, Some(0), "envoy accepted {to}: {out}");
        }
    }
}
