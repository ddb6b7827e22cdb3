//! What a cluster's `common_http_protocol_options` do to each upstream stream:
//! `max_headers_count` (response heads), `max_stream_duration` (before and after the
//! response starts) and `headers_with_underscores_action` (no effect on a cluster), over
//! HTTP/1.1 (Courier's own client and, for streamed request bodies, hyper's) and HTTP/2
//! upstreams, and websocket tunnels. Each case runs through Courier and, when `envoy` is on PATH, through Envoy on
//! the same bootstrap; what the client gets and the cluster's counters are held to what
//! Envoy 1.40 was measured to do.

mod http_support;

use std::convert::Infallible;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::pin::Pin;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::{Request, Response};
use http_body_util::combinators::BoxBody;
use http_body_util::{BodyExt, Full};
use hyper::body::{Frame, Incoming};
use hyper_util::rt::{TokioExecutor, TokioIo};

use http_support::*;

/// Counts its drops: the upstream's handler or body for a stream the proxy gave up on.
struct DropCount(Arc<AtomicUsize>);

impl Drop for DropCount {
    fn drop(&mut self) {
        self.0.fetch_add(1, Ordering::SeqCst);
    }
}

/// A body that sends `ab` of an announced ten bytes and then nothing.
struct Stall {
    sent: bool,
    _dropped: DropCount,
}

impl hyper::body::Body for Stall {
    type Data = Bytes;
    type Error = Infallible;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        _cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Infallible>>> {
        if self.sent {
            return Poll::Pending;
        }
        self.sent = true;
        Poll::Ready(Some(Ok(Frame::data(Bytes::from_static(b"ab")))))
    }
}

/// An upstream speaking HTTP/1.1 or HTTP/2 (prior knowledge), without a `date` field so
/// that a response head holds exactly the fields asked for:
/// - `/fields/<k>`: `200` with `k` fields besides `content-length`, body `ok`;
/// - `/under`: `200` with `x_under: 1`; notes whether the request came with `x_req`;
/// - `/hang`: never answers;
/// - `/stall`: `200` announcing ten bytes, sends two;
/// - anything else: `200 ok`.
///
/// `abandoned` counts the `/hang` handlers and `/stall` bodies dropped (their stream was
/// reset, or their connection closed and noticed).
struct LimitsUpstream {
    addr: SocketAddr,
    opened: Arc<AtomicUsize>,
    abandoned: Arc<AtomicUsize>,
    underscore_requests: Arc<AtomicUsize>,
}

impl LimitsUpstream {
    fn start(h2: bool) -> LimitsUpstream {
        let opened = Arc::new(AtomicUsize::new(0));
        let abandoned = Arc::new(AtomicUsize::new(0));
        let underscore_requests = Arc::new(AtomicUsize::new(0));
        let (o, a, u) = (
            opened.clone(),
            abandoned.clone(),
            underscore_requests.clone(),
        );
        let addr = spawn_tokio_server(move |s| {
            o.fetch_add(1, Ordering::SeqCst);
            let (a, u) = (a.clone(), u.clone());
            async move {
                let svc = hyper::service::service_fn(move |req: Request<Incoming>| {
                    let (a, u) = (a.clone(), u.clone());
                    async move { Ok::<_, Infallible>(answer(req, &a, &u).await) }
                });
                let io = TokioIo::new(s);
                if h2 {
                    let _ = hyper::server::conn::http2::Builder::new(TokioExecutor::new())
                        .auto_date_header(false)
                        .serve_connection(io, svc)
                        .await;
                } else {
                    let _ = hyper::server::conn::http1::Builder::new()
                        .auto_date_header(false)
                        .serve_connection(io, svc)
                        .await;
                }
            }
        });
        LimitsUpstream {
            addr,
            opened,
            abandoned,
            underscore_requests,
        }
    }

    fn opened(&self) -> usize {
        self.opened.load(Ordering::SeqCst)
    }

    /// Waits until `n` streams have been given up on by the proxy.
    fn wait_abandoned(&self, n: usize) {
        let start = Instant::now();
        while self.abandoned.load(Ordering::SeqCst) < n {
            assert!(
                start.elapsed() < Duration::from_secs(10),
                "{} of {n} upstream streams reset",
                self.abandoned.load(Ordering::SeqCst)
            );
            std::thread::sleep(Duration::from_millis(10));
        }
    }
}

async fn answer(
    req: Request<Incoming>,
    abandoned: &Arc<AtomicUsize>,
    underscores: &AtomicUsize,
) -> Response<BoxBody<Bytes, Infallible>> {
    let path = req.uri().path().to_string();
    if req.headers().contains_key("x_req") {
        underscores.fetch_add(1, Ordering::SeqCst);
    }
    // The request's body (a streamed one) is read to its end first.
    let _ = req.into_body().collect().await;
    let ok = || Full::new(Bytes::from_static(b"ok")).boxed();
    let mut resp = Response::new(ok());
    if let Some(k) = path.strip_prefix("/fields/") {
        let k: usize = k.parse().unwrap_or(0);
        for i in 0..k {
            resp.headers_mut().insert(
                http::HeaderName::try_from(format!("x-f{i}")).expect("name"),
                http::HeaderValue::from_static("v"),
            );
        }
    } else if path == "/under" {
        resp.headers_mut()
            .insert("x_under", http::HeaderValue::from_static("1"));
    } else if path == "/hang" {
        let _dropped = DropCount(abandoned.clone());
        std::future::pending::<()>().await;
    } else if path == "/stall" {
        let body = Stall {
            sent: false,
            _dropped: DropCount(abandoned.clone()),
        };
        let mut resp = Response::new(body.boxed());
        resp.headers_mut()
            .insert("content-length", http::HeaderValue::from_static("10"));
        return resp;
    }
    resp.headers_mut()
        .insert("content-length", http::HeaderValue::from_static("2"));
    resp
}

/// The cluster's typed `HttpProtocolOptions`: `common` (a flow mapping) and HTTP/1.1 or
/// HTTP/2.
fn protocol_options(common: &str, h2: bool) -> String {
    let protocol = if h2 {
        "http2_protocol_options: {}"
    } else {
        "http_protocol_options: {}"
    };
    format!(
        "    typed_extension_protocol_options:\n      envoy.extensions.upstreams.http.v3.HttpProtocolOptions:\n        \"@type\": type.googleapis.com/envoy.extensions.upstreams.http.v3.HttpProtocolOptions\n        common_http_protocol_options: {common}\n        explicit_http_config:\n          {protocol}\n"
    )
}

/// Starts Courier and, if it is on PATH, Envoy, each with an upstream of its own.
fn proxies(common: &str, h2: bool) -> Vec<(&'static str, Courier, LimitsUpstream)> {
    proxies_routing(common, h2, &all_to("c"))
}

/// As [`proxies`], with the route configuration `routes`.
fn proxies_routing(
    common: &str,
    h2: bool,
    routes: &str,
) -> Vec<(&'static str, Courier, LimitsUpstream)> {
    let mut out = Vec::new();
    for name in ["courier", "envoy"] {
        let up = LimitsUpstream::start(h2);
        let extra = protocol_options(common, h2);
        let config = bootstrap(routes, "", &cluster("c", &[up.addr], &extra));
        let proxy = if name == "courier" {
            Some(Courier::start(&config))
        } else {
            Courier::start_envoy(&config)
        };
        if let Some(p) = proxy {
            out.push((name, p, up));
        }
    }
    out
}

/// Sends `path` on `client`: a GET, or a POST with a chunked (streamed) body, which goes
/// through hyper's HTTP/1.1 client in Courier.
fn send(client: &mut Client, path: &str, streamed: bool) -> Resp {
    if streamed {
        client.send_raw(
            format!(
                "POST {path} HTTP/1.1\r\nhost: x\r\ntransfer-encoding: chunked\r\n\r\n4\r\nbody\r\n0\r\n\r\n"
            )
            .as_bytes(),
        );
        client.read().expect("a response")
    } else {
        client.get("x", path, &[])
    }
}

const PROTOCOL_ERROR: &str =
    "upstream connect error or disconnect/reset before headers. reset reason: protocol error";
const REMOTE_RESET: &str =
    "upstream connect error or disconnect/reset before headers. reset reason: remote reset";

#[test]
fn response_head_field_limits_match_envoy() {
    // (max_headers_count, the most fields besides content-length an HTTP/1.1 head may
    // have). Envoy's HTTP/2 codec counts `:status` too: one fewer there.
    for (limit, common) in [
        (5, "{ max_headers_count: 5 }"),
        (100, "{}"),
        (150, "{ max_headers_count: 150 }"),
    ] {
        for (h2, streamed) in [(false, false), (false, true), (true, false)] {
            for (name, proxy, up) in proxies(common, h2) {
                let what = format!("{name}, limit {limit}, HTTP/2: {h2}, streamed: {streamed}");
                let fit = if h2 { limit - 2 } else { limit - 1 };
                let mut client = Client::connect(proxy.listener);
                let resp = send(&mut client, &format!("/fields/{fit}"), streamed);
                assert_eq!(resp.status, 200, "{what}: {}", resp.body_str());
                assert_eq!(resp.header(&format!("x-f{}", fit - 1)), Some("v"), "{what}");
                let resp = send(&mut client, &format!("/fields/{}", fit + 1), streamed);
                if h2 {
                    // The stream is reset; the connection stays.
                    assert_eq!(
                        (resp.status, resp.body_str().as_str()),
                        (503, REMOTE_RESET),
                        "{what}"
                    );
                    assert_eq!(
                        proxy.wait_stat("cluster.c.upstream_rq_rx_reset", 1),
                        1,
                        "{what}"
                    );
                } else {
                    assert_eq!(
                        (resp.status, resp.body_str().as_str()),
                        (502, PROTOCOL_ERROR),
                        "{what}"
                    );
                    assert_eq!(
                        proxy.wait_stat("cluster.c.upstream_cx_protocol_error", 1),
                        1,
                        "{what}"
                    );
                }
                // The client's connection is kept; the next request is served.
                let resp = send(&mut client, "/", streamed);
                assert_eq!(resp.status, 200, "{what}: {}", resp.body_str());
                if !streamed {
                    // HTTP/1.1 drops the connection that broke the limit; HTTP/2 keeps it.
                    assert_eq!(up.opened(), if h2 { 1 } else { 2 }, "{what}");
                }
            }
        }
    }
}

#[test]
fn headers_with_underscores_action_has_no_effect_on_a_cluster_as_in_envoy() {
    for action in ["REJECT_REQUEST", "DROP_HEADER"] {
        for h2 in [false, true] {
            let common = format!("{{ headers_with_underscores_action: {action} }}");
            for (name, proxy, up) in proxies(&common, h2) {
                let what = format!("{name}, {action}, HTTP/2: {h2}");
                let resp = get(proxy.listener, "x", "/under", &[("x_req", "1")]);
                assert_eq!(resp.status, 200, "{what}: {}", resp.body_str());
                assert_eq!(resp.header("x_under"), Some("1"), "{what}");
                assert_eq!(up.underscore_requests.load(Ordering::SeqCst), 1, "{what}");
            }
        }
    }
}

#[test]
fn max_stream_duration_before_the_response_answers_504_as_in_envoy() {
    for (h2, streamed) in [(false, false), (false, true), (true, false)] {
        for (name, proxy, up) in proxies("{ max_stream_duration: 0.5s }", h2) {
            let what = format!("{name}, HTTP/2: {h2}, streamed: {streamed}");
            let mut client = Client::connect(proxy.listener);
            let start = Instant::now();
            let resp = send(&mut client, "/hang", streamed);
            let took = start.elapsed();
            assert_eq!(
                (resp.status, resp.body_str().as_str()),
                (504, "upstream max stream duration reached"),
                "{what}"
            );
            assert!(took >= Duration::from_millis(480), "{what}: after {took:?}");
            assert_eq!(
                proxy.wait_stat("cluster.c.upstream_rq_max_duration_reached", 1),
                1,
                "{what}"
            );
            if h2 {
                // The upstream stream was reset.
                up.wait_abandoned(1);
            }
            // A response within the duration is untouched, on the same client connection.
            let resp = send(&mut client, "/", streamed);
            assert_eq!(resp.status, 200, "{what}: {}", resp.body_str());
            assert_eq!(proxy.stat("cluster.c.upstream_rq_max_duration_reached"), 1);
        }
    }
}

#[test]
fn max_stream_duration_cuts_a_started_response_off_as_in_envoy() {
    for h2 in [false, true] {
        for (name, proxy, up) in proxies("{ max_stream_duration: 0.5s }", h2) {
            let what = format!("{name}, HTTP/2: {h2}");
            let mut s = TcpStream::connect(proxy.listener).expect("connect");
            s.set_read_timeout(Some(Duration::from_secs(10)))
                .expect("timeout");
            let start = Instant::now();
            s.write_all(b"GET /stall HTTP/1.1\r\nhost: x\r\n\r\n")
                .expect("write");
            // The head and the first two bytes, then the connection closes.
            let mut got = Vec::new();
            let read = s.read_to_end(&mut got);
            let took = start.elapsed();
            assert!(read.is_ok(), "{what}: not closed: {read:?}");
            let text = String::from_utf8_lossy(&got);
            assert!(text.starts_with("HTTP/1.1 200 "), "{what}: {text}");
            assert!(text.ends_with("\r\n\r\nab"), "{what}: {text}");
            assert!(took >= Duration::from_millis(480), "{what}: after {took:?}");
            assert_eq!(
                proxy.wait_stat("cluster.c.upstream_rq_max_duration_reached", 1),
                1,
                "{what}"
            );
            // The upstream stream was reset (HTTP/2) or its connection closed.
            if h2 {
                up.wait_abandoned(1);
            }
        }
    }
}

#[test]
fn max_stream_duration_while_the_request_arrives_answers_408_as_in_envoy() {
    for h2 in [false, true] {
        for (name, proxy, _up) in proxies("{ max_stream_duration: 0.5s }", h2) {
            let what = format!("{name}, HTTP/2: {h2}");
            let mut s = TcpStream::connect(proxy.listener).expect("connect");
            s.set_read_timeout(Some(Duration::from_secs(10)))
                .expect("timeout");
            // Two of the ten bytes announced: the request is still arriving.
            s.write_all(b"POST /hang HTTP/1.1\r\nhost: x\r\ncontent-length: 10\r\n\r\nab")
                .expect("write");
            let mut got = Vec::new();
            let read = s.read_to_end(&mut got);
            assert!(read.is_ok(), "{what}: not closed: {read:?}");
            let text = String::from_utf8_lossy(&got).to_lowercase();
            assert!(text.starts_with("http/1.1 408 "), "{what}: {text}");
            assert!(text.contains("\r\nconnection: close\r\n"), "{what}: {text}");
            assert!(
                text.ends_with("\r\n\r\nupstream max stream duration reached"),
                "{what}: {text}"
            );
            assert_eq!(
                proxy.wait_stat("cluster.c.upstream_rq_max_duration_reached", 1),
                1,
                "{what}"
            );
        }
    }
}

#[test]
fn max_stream_duration_is_retried_as_a_reset_as_in_envoy() {
    let routes = all_to("c").replace(
        "route: { cluster: c }",
        "route: { cluster: c, retry_policy: { retry_on: reset, num_retries: 1 } }",
    );
    for h2 in [false, true] {
        for (name, proxy, up) in proxies_routing("{ max_stream_duration: 0.5s }", h2, &routes) {
            let what = format!("{name}, HTTP/2: {h2}");
            let start = Instant::now();
            let resp = get(proxy.listener, "x", "/hang", &[]);
            let took = start.elapsed();
            assert_eq!(
                (resp.status, resp.body_str().as_str()),
                (504, "upstream max stream duration reached"),
                "{what}"
            );
            // Each attempt had its own duration.
            assert!(took >= Duration::from_millis(980), "{what}: after {took:?}");
            assert_eq!(
                proxy.wait_stat("cluster.c.upstream_rq_max_duration_reached", 2),
                2,
                "{what}"
            );
            assert_eq!(proxy.stat("cluster.c.upstream_rq_retry"), 1, "{what}");
            if h2 {
                up.wait_abandoned(2);
            }
        }
    }
}

/// An HTTP/1.1 upstream that answers any request with `101` and echoes what follows;
/// counts the tunnels that closed.
fn websocket_upstream() -> (SocketAddr, Arc<AtomicUsize>) {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
    let addr = listener.local_addr().expect("addr");
    let closed = Arc::new(AtomicUsize::new(0));
    let c = closed.clone();
    std::thread::spawn(move || {
        for stream in listener.incoming() {
            let Ok(mut s) = stream else { continue };
            let c = c.clone();
            std::thread::spawn(move || {
                let mut head = Vec::new();
                let mut byte = [0u8; 1];
                while !head.ends_with(b"\r\n\r\n") {
                    match s.read(&mut byte) {
                        Ok(1) => head.push(byte[0]),
                        _ => return,
                    }
                }
                let _ = s.write_all(
                    b"HTTP/1.1 101 Switching Protocols\r\nupgrade: websocket\r\nconnection: upgrade\r\n\r\n",
                );
                let mut buf = [0u8; 1024];
                while let Ok(n) = s.read(&mut buf) {
                    if n == 0 || s.write_all(&buf[..n]).is_err() {
                        break;
                    }
                }
                c.fetch_add(1, Ordering::SeqCst);
            });
        }
    });
    (addr, closed)
}

#[test]
fn max_stream_duration_ends_a_websocket_tunnel_as_in_envoy() {
    for name in ["courier", "envoy"] {
        let (addr, closed) = websocket_upstream();
        let config = bootstrap(
            &all_to("c"),
            "          upgrade_configs: [ { upgrade_type: websocket } ]\n",
            &cluster(
                "c",
                &[addr],
                &protocol_options("{ max_stream_duration: 0.5s }", false),
            ),
        );
        let proxy = if name == "courier" {
            Courier::start(&config)
        } else {
            match Courier::start_envoy(&config) {
                Some(p) => p,
                None => continue,
            }
        };
        let mut s = TcpStream::connect(proxy.listener).expect("connect");
        s.set_read_timeout(Some(Duration::from_secs(10)))
            .expect("timeout");
        let start = Instant::now();
        s.write_all(
            b"GET /ws HTTP/1.1\r\nhost: x\r\nupgrade: websocket\r\nconnection: upgrade\r\n\r\nping",
        )
        .expect("write");
        // The 101, the echo, then the tunnel ends.
        let mut got = Vec::new();
        let read = s.read_to_end(&mut got);
        let took = start.elapsed();
        assert!(read.is_ok(), "{name}: not closed: {read:?}");
        let text = String::from_utf8_lossy(&got);
        assert!(text.starts_with("HTTP/1.1 101 "), "{name}: {text}");
        assert!(text.ends_with("\r\n\r\nping"), "{name}: {text}");
        assert!(took >= Duration::from_millis(480), "{name}: after {took:?}");
        assert_eq!(
            proxy.wait_stat("cluster.c.upstream_rq_max_duration_reached", 1),
            1,
            "{name}"
        );
        // The upstream's side of the tunnel was closed too.
        let start = Instant::now();
        while closed.load(Ordering::SeqCst) < 1 {
            assert!(
                start.elapsed() < Duration::from_secs(10),
                "{name}: upstream open"
            );
            std::thread::sleep(Duration::from_millis(10));
        }
    }
}
