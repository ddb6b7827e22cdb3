//! `Upgrade: websocket` through `upgrade_configs`: the upstream's `101` reaches the client
//! and the connection becomes a two-way byte tunnel, half-closes included; a route without
//! the upgrade type refuses it with 403, as Envoy. A tunnel counts as an active connection
//! until it closes, so a drain waits for it. Websockets over HTTP/2 (extended CONNECT) reach
//! the same HTTP/1.1 upstream.

mod http_support;

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::time::Duration;

use bytes::Bytes;
use http::{Method, Request};
use http_body_util::Empty;
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use http_support::*;

/// An upstream answering every upgrade with `101` and then echoing bytes until EOF.
fn start_ws_echo() -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
    let addr = listener.local_addr().expect("addr");
    std::thread::spawn(move || {
        for stream in listener.incoming().flatten() {
            std::thread::spawn(move || {
                let mut reader = BufReader::new(stream.try_clone().expect("clone"));
                let mut upgrade = String::new();
                loop {
                    let mut line = String::new();
                    if reader.read_line(&mut line).unwrap_or(0) == 0 {
                        return;
                    }
                    if line.to_ascii_lowercase().starts_with("upgrade:") {
                        upgrade = line.trim().to_string();
                    }
                    if line == "\r\n" {
                        break;
                    }
                }
                let mut out = stream;
                let head = format!(
                    "HTTP/1.1 101 Switching Protocols\r\n{upgrade}\r\nconnection: Upgrade\r\nx-upstream: ws\r\n\r\n"
                );
                if out.write_all(head.as_bytes()).is_err() {
                    return;
                }
                let mut buf = [0u8; 4096];
                loop {
                    match reader.read(&mut buf) {
                        Ok(0) | Err(_) => break,
                        Ok(n) => {
                            if out.write_all(&buf[..n]).is_err() {
                                return;
                            }
                        }
                    }
                }
                // The client half-closed: answer with a last message, then close.
                let _ = out.write_all(b"bye");
            });
        }
    });
    addr
}

/// An HTTP/2 upstream accepting extended CONNECT with a `200` (`x-upstream: h2ws`), then
/// echoing the stream's bytes until the client ends its side, and ending with "bye"; any
/// other request gets `400`.
fn start_h2_ws_echo() -> SocketAddr {
    spawn_tokio_server(|s| async move {
        let svc = hyper::service::service_fn(|mut req: Request<hyper::body::Incoming>| {
            let extended_connect = req.method() == Method::CONNECT
                && req.extensions().get::<hyper::ext::Protocol>().is_some();
            let upgrade = hyper::upgrade::on(&mut req);
            async move {
                if !extended_connect {
                    let refused = http::Response::builder().status(400);
                    return refused.body(Empty::<Bytes>::new());
                }
                tokio::spawn(async move {
                    let Ok(upgraded) = upgrade.await else { return };
                    let (mut r, mut w) = tokio::io::split(TokioIo::new(upgraded));
                    let _ = tokio::io::copy(&mut r, &mut w).await;
                    let _ = w.write_all(b"bye").await;
                    let _ = w.shutdown().await;
                });
                http::Response::builder()
                    .status(200)
                    .header("x-upstream", "h2ws")
                    .body(Empty::<Bytes>::new())
            }
        });
        let _ = hyper::server::conn::http2::Builder::new(TokioExecutor::new())
            .enable_connect_protocol()
            .serve_connection(TokioIo::new(s), svc)
            .await;
    })
}

/// Connection manager fields: websocket upgrades, also over HTTP/2 (extended CONNECT).
const HCM_H2_WEBSOCKET: &str = "          upgrade_configs: [ { upgrade_type: websocket } ]\n          http2_protocol_options: { allow_connect: true }\n";

/// `typed_extension_protocol_options` making a cluster HTTP/2.
const H2_CLUSTER: &str = "    typed_extension_protocol_options:\n      envoy.extensions.upstreams.http.v3.HttpProtocolOptions:\n        \"@type\": type.googleapis.com/envoy.extensions.upstreams.http.v3.HttpProtocolOptions\n        explicit_http_config:\n          http2_protocol_options: { allow_connect: true }\n";

const ROUTES: &str = r#"            name: local
            virtual_hosts:
            - name: main
              domains: ["*"]
              routes:
              - match: { prefix: "/ready" }
                direct_response: { status: 200 }
              - match: { prefix: "/plain" }
                route:
                  cluster: ws
                  upgrade_configs: [ { upgrade_type: websocket, enabled: false } ]
              - match: { prefix: "/" }
                route: { cluster: ws }
"#;

fn setup() -> Courier {
    let ws = start_ws_echo();
    let hcm = "          upgrade_configs: [ { upgrade_type: websocket } ]\n";
    Courier::start(&bootstrap(ROUTES, hcm, &cluster("ws", &[ws], "")))
}

/// Sends a websocket upgrade for `path` to `addr` and reads the response head; returns
/// the stream, its reader (for the tunnelled bytes) and the response.
fn open_upgrade(addr: SocketAddr, path: &str) -> (TcpStream, BufReader<TcpStream>, Resp) {
    let mut s = TcpStream::connect(addr).expect("connect");
    s.set_read_timeout(Some(Duration::from_secs(5)))
        .expect("timeout");
    let request = format!(
        "GET {path} HTTP/1.1\r\nhost: h\r\nupgrade: websocket\r\nconnection: Upgrade\r\nsec-websocket-version: 13\r\nsec-websocket-key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n"
    );
    s.write_all(request.as_bytes()).expect("request");
    let mut reader = BufReader::new(s.try_clone().expect("clone"));
    let resp = read_response(&mut reader, true).expect("response");
    (s, reader, resp)
}

#[test]
fn websocket_upgrade_tunnels_both_ways() {
    let c = setup();
    let (mut s, mut reader, resp) = open_upgrade(c.listener, "/chat");
    assert_eq!(resp.status, 101);
    assert_eq!(resp.header("upgrade"), Some("websocket"));
    assert_eq!(resp.header("x-upstream"), Some("ws"));
    assert!(resp
        .header("connection")
        .is_some_and(|v| v.eq_ignore_ascii_case("upgrade")));
    // Bytes both ways, several round trips on the same tunnel.
    for msg in [&b"hello"[..], b"\x81\x05world", &[7u8; 3000]] {
        s.write_all(msg).expect("write");
        let mut back = vec![0u8; msg.len()];
        reader.read_exact(&mut back).expect("echo");
        assert_eq!(back, msg);
    }
    assert_eq!(c.stat("http.ingress.downstream_cx_upgrades_active"), 1);
    // The tunnelled connection still counts as an active downstream connection.
    assert_eq!(c.stat("http.ingress.downstream_cx_active"), 1);
    // Half-close: the upstream sees EOF, answers, and the tunnel then closes.
    s.shutdown(Shutdown::Write).expect("shutdown");
    let mut rest = Vec::new();
    reader.read_to_end(&mut rest).expect("read to end");
    assert_eq!(rest, b"bye");
    assert_eq!(c.stat("http.ingress.downstream_cx_upgrades_total"), 1);
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    while c.stat("http.ingress.downstream_cx_upgrades_active") != 0
        || c.stat("http.ingress.downstream_cx_active") != 0
    {
        assert!(std::time::Instant::now() < deadline, "tunnel still active");
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// What a client sees of one websocket exchange through a proxy at `addr`: the status and
/// `upgrade` of the response, the bytes echoed while both directions are open, and what
/// arrives after the client half-closes.
fn websocket_exchange(addr: SocketAddr, path: &str) -> (u16, Option<String>, usize, Vec<u8>) {
    let (mut s, mut reader, resp) = open_upgrade(addr, path);
    let upgrade = resp.header("upgrade").map(str::to_ascii_lowercase);
    if resp.status != 101 {
        return (resp.status, upgrade, 0, Vec::new());
    }
    let mut echoed = 0;
    for msg in [&b"ping"[..], &[9u8; 5000]] {
        s.write_all(msg).expect("write");
        let mut back = vec![0u8; msg.len()];
        reader.read_exact(&mut back).expect("echo");
        assert_eq!(back, msg);
        echoed += back.len();
    }
    s.shutdown(Shutdown::Write).expect("shutdown");
    let mut after = Vec::new();
    let _ = reader.read_to_end(&mut after);
    (resp.status, upgrade, echoed, after)
}

/// The same bootstrap through Courier and a real Envoy: the same 101 and the same bytes
/// both ways, the same refusal on a route that disables the upgrade. One documented
/// difference: Courier carries a half-close through the tunnel (the upstream's last bytes
/// after the client's FIN arrive), where Envoy closes the whole connection.
#[test]
fn websocket_matches_envoy() {
    let ws = start_ws_echo();
    let hcm = "          upgrade_configs: [ { upgrade_type: websocket } ]\n";
    let boot = bootstrap(ROUTES, hcm, &cluster("ws", &[ws], ""));
    let Some(envoy) = Courier::start_envoy(&boot) else {
        eprintln!("envoy not on PATH: skipping the websocket differential test");
        return;
    };
    let courier = Courier::start(&boot);
    for path in ["/chat", "/plain"] {
        let (es, eu, ee, _) = websocket_exchange(envoy.listener, path);
        let (cs, cu, ce, after) = websocket_exchange(courier.listener, path);
        assert_eq!((cs, cu, ce), (es, eu, ee), "{path}: courier vs envoy");
        if cs == 101 {
            assert_eq!(after, b"bye", "{path}: the half-close carried through");
        }
    }
}

/// An HTTP/2 (prior knowledge) connection to `addr`, once the server's SETTINGS arrived
/// (the answer to a first request comes after them: an extended CONNECT may only be sent
/// once they enabled it); `closed` resolves when the connection ends.
async fn h2_connect_settled(
    addr: SocketAddr,
) -> (
    hyper::client::conn::http2::SendRequest<Empty<Bytes>>,
    tokio::sync::oneshot::Receiver<()>,
) {
    let tcp = tokio::net::TcpStream::connect(addr).await.expect("connect");
    let (mut send, conn) =
        hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(tcp))
            .await
            .expect("handshake");
    let (closed_tx, closed) = tokio::sync::oneshot::channel();
    tokio::spawn(async move {
        let _ = conn.await;
        let _ = closed_tx.send(());
    });
    let ready = Request::get(format!("http://{addr}/ready"))
        .body(Empty::<Bytes>::new())
        .expect("request");
    let ready = send.send_request(ready).await.expect("first request");
    assert_eq!(ready.status(), 200);
    (send, closed)
}

/// Sends an extended CONNECT with `:protocol websocket` for `path`: the status and
/// `x-upstream` of the response, and the tunnel when it was accepted.
async fn h2_websocket_open(
    send: &mut hyper::client::conn::http2::SendRequest<Empty<Bytes>>,
    addr: SocketAddr,
    path: &str,
) -> (
    u16,
    Option<String>,
    Option<TokioIo<hyper::upgrade::Upgraded>>,
) {
    let mut req = Request::builder()
        .method(Method::CONNECT)
        .uri(format!("http://{addr}{path}"))
        .header("sec-websocket-version", "13")
        .body(Empty::<Bytes>::new())
        .expect("request");
    req.extensions_mut()
        .insert(hyper::ext::Protocol::from_static("websocket"));
    let resp = send.send_request(req).await.expect("extended CONNECT");
    let status = resp.status().as_u16();
    let upstream = resp
        .headers()
        .get("x-upstream")
        .and_then(|v| v.to_str().ok())
        .map(str::to_string);
    if status != 200 {
        return (status, upstream, None);
    }
    let io = TokioIo::new(hyper::upgrade::on(resp).await.expect("tunnel"));
    (status, upstream, Some(io))
}

/// Writes `msg` into the tunnel and reads back its echo.
async fn h2_echo(io: &mut TokioIo<hyper::upgrade::Upgraded>, msg: &[u8]) {
    io.write_all(msg).await.expect("write");
    let mut back = vec![0u8; msg.len()];
    io.read_exact(&mut back).await.expect("echo");
    assert_eq!(back, msg);
}

/// Runs `f` on a fresh single-threaded runtime, failing after 10 s.
fn block_on<T>(f: impl std::future::Future<Output = T>) -> T {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime")
        .block_on(async {
            tokio::time::timeout(Duration::from_secs(10), f)
                .await
                .expect("the HTTP/2 exchange took over 10 s")
        })
}

/// One websocket over HTTP/2 through a proxy at `addr`: the status and `x-upstream` of the
/// response, the bytes echoed while both directions are open, and, with `half_close`, what
/// arrives after the client ends its side of the stream.
fn h2_websocket_exchange(
    addr: SocketAddr,
    path: &str,
    half_close: bool,
) -> (u16, Option<String>, usize, Vec<u8>) {
    block_on(async move {
        let (mut send, _closed) = h2_connect_settled(addr).await;
        let (status, upstream, io) = h2_websocket_open(&mut send, addr, path).await;
        let Some(mut io) = io else {
            return (status, upstream, 0, Vec::new());
        };
        let mut echoed = 0;
        for msg in [&b"ping"[..], &[9u8; 5000]] {
            h2_echo(&mut io, msg).await;
            echoed += msg.len();
        }
        let mut after = Vec::new();
        if half_close {
            io.shutdown().await.expect("half-close");
            let _ = io.read_to_end(&mut after).await;
        }
        (status, upstream, echoed, after)
    })
}

/// Websockets over HTTP/2 (`allow_connect`): the extended CONNECT goes upstream as an
/// HTTP/1.1 upgrade, its `101` comes back as `200`, and the stream carries the bytes both
/// ways, half-close included; the route that disables the upgrade refuses it. A real Envoy
/// given the same bootstrap answers alike (compared without the half-close: Envoy 1.40
/// neither ends the stream nor passes the upstream's last bytes after the client's
/// END_STREAM, the documented half-close difference of the HTTP/1.1 case).
#[test]
fn websocket_over_http2_matches_envoy() {
    let ws = start_ws_echo();
    let boot = bootstrap(ROUTES, HCM_H2_WEBSOCKET, &cluster("ws", &[ws], ""));
    let courier = Courier::start(&boot);
    let (status, upstream, echoed, after) = h2_websocket_exchange(courier.listener, "/chat", true);
    assert_eq!(
        (status, upstream.as_deref(), echoed),
        (200, Some("ws"), 5004)
    );
    assert_eq!(after, b"bye", "the half-close carried through");
    assert_eq!(courier.stat("http.ingress.downstream_cx_upgrades_total"), 1);
    // Counted as the upstream answered, as Envoy does before its codec makes it a 200.
    assert_eq!(courier.stat("http.ingress.downstream_rq_1xx"), 1);
    assert_eq!(
        h2_websocket_exchange(courier.listener, "/plain", false).0,
        403
    );
    let Some(envoy) = Courier::start_envoy(&boot) else {
        eprintln!("envoy not on PATH: skipping the HTTP/2 websocket differential");
        return;
    };
    for path in ["/chat", "/plain"] {
        let (es, eu, ee, _) = h2_websocket_exchange(envoy.listener, path, false);
        let (cs, cu, ce, _) = h2_websocket_exchange(courier.listener, path, false);
        assert_eq!((cs, cu, ce), (es, eu, ee), "{path}: courier vs envoy");
    }
}

/// An upstream that answers an HTTP/2 websocket's upgrade with an ordinary `200` (it
/// ignores `Upgrade`): the client gets a `502`, since any 2xx to an extended CONNECT opens
/// a tunnel (Envoy passes the `200` on; see DIFFERENCES.md).
#[test]
fn http2_websocket_not_switched_upstream_is_502() {
    let plain = Upstream::start("plain");
    let courier = Courier::start(&bootstrap(
        ROUTES,
        HCM_H2_WEBSOCKET,
        &cluster("ws", &[plain.addr], ""),
    ));
    let (status, upstream, _, _) = h2_websocket_exchange(courier.listener, "/chat", false);
    assert_eq!((status, upstream), (502, None));
    assert_eq!(plain.requests.load(std::sync::atomic::Ordering::SeqCst), 1);
    assert_eq!(courier.stat("http.ingress.downstream_rq_5xx"), 1);
}

/// An upgrade routed to an HTTP/2 cluster goes upstream as an extended CONNECT, as Envoy's
/// HTTP/2 upstream codec sends it: the upstream's `200` reaches an HTTP/1.1 client as
/// `101 Switching Protocols` and an HTTP/2 client as `200`, and bytes and the half-close
/// cross the tunnel both ways. A real Envoy answers both clients alike.
#[test]
fn websocket_to_http2_cluster_is_extended_connect() {
    let up = start_h2_ws_echo();
    let boot = bootstrap(ROUTES, HCM_H2_WEBSOCKET, &cluster("ws", &[up], H2_CLUSTER));
    let courier = Courier::start(&boot);
    let (status, upgrade, echoed, after) = websocket_exchange(courier.listener, "/chat");
    assert_eq!(
        (status, upgrade.as_deref(), echoed),
        (101, Some("websocket"), 5004)
    );
    assert_eq!(after, b"bye");
    let (status, upstream, echoed, after) = h2_websocket_exchange(courier.listener, "/chat", true);
    assert_eq!(
        (status, upstream.as_deref(), echoed),
        (200, Some("h2ws"), 5004)
    );
    assert_eq!(after, b"bye");
    assert_eq!(courier.stat("http.ingress.downstream_cx_upgrades_total"), 2);
    let Some(envoy) = Courier::start_envoy(&boot) else {
        eprintln!("envoy not on PATH: skipping the HTTP/2 cluster websocket differential");
        return;
    };
    let (es, eu, ee, _) = websocket_exchange(envoy.listener, "/chat");
    let (cs, cu, ce, _) = websocket_exchange(courier.listener, "/chat");
    assert_eq!(
        (cs, cu, ce),
        (es, eu, ee),
        "HTTP/1.1 client: courier vs envoy"
    );
    let (es, eu, ee, _) = h2_websocket_exchange(envoy.listener, "/chat", false);
    let (cs, cu, ce, _) = h2_websocket_exchange(courier.listener, "/chat", false);
    assert_eq!(
        (cs, cu, ce),
        (es, eu, ee),
        "HTTP/2 client: courier vs envoy"
    );
}

/// An HTTP/2 connection carrying a websocket is not idle. A plain HTTP/2 connection opened
/// after it reaches `idle_timeout` and is closed; by then the tunnel's connection, had it
/// counted as idle, would have timed out first. It has not: one idle timeout counted, and
/// the tunnel still carries bytes.
#[test]
fn http2_websocket_is_not_idle() {
    let ws = start_ws_echo();
    let hcm = format!(
        "{HCM_H2_WEBSOCKET}          common_http_protocol_options: {{ idle_timeout: 0.3s }}\n"
    );
    let courier = Courier::start(&bootstrap(ROUTES, &hcm, &cluster("ws", &[ws], "")));
    let addr = courier.listener;
    block_on(async {
        let (mut send, _tunnel_closed) = h2_connect_settled(addr).await;
        let (status, _, io) = h2_websocket_open(&mut send, addr, "/chat").await;
        assert_eq!(status, 200);
        let mut io = io.expect("tunnel");
        h2_echo(&mut io, b"before").await;
        let (_plain, plain_closed) = h2_connect_settled(addr).await;
        plain_closed.await.expect("the plain connection closes");
        assert_eq!(
            courier.stat("http.ingress.downstream_cx_idle_timeout"),
            1,
            "only the plain connection timed out"
        );
        h2_echo(&mut io, b"after").await;
    });
}

/// A drain (SIGTERM) waits for a tunnel, as for any open connection: the tunnel keeps
/// working after the listener has stopped accepting, and the process exits once the
/// tunnel has closed.
#[test]
fn drain_waits_for_open_tunnels() {
    let mut c = setup();
    let (mut s, mut reader, resp) = open_upgrade(c.listener, "/chat");
    assert_eq!(resp.status, 101);
    let pid = libc::pid_t::try_from(c.child.id()).expect("pid");
    // SAFETY: signalling our own child process.
    assert_eq!(unsafe { libc::kill(pid, libc::SIGTERM) }, 0);
    // The drain has begun once the listener refuses new connections.
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while TcpStream::connect(c.listener).is_ok() {
        assert!(std::time::Instant::now() < deadline, "listener still open");
        std::thread::sleep(Duration::from_millis(10));
    }
    // What the drain waits on: the tunnel is still an active connection...
    assert_eq!(c.stat("http.ingress.downstream_cx_active"), 1);
    // ...that still carries bytes.
    s.write_all(b"during drain").expect("write");
    let mut back = [0u8; 12];
    reader.read_exact(&mut back).expect("echo during drain");
    assert_eq!(&back, b"during drain");
    assert!(c.child.try_wait().expect("try_wait").is_none());
    // Closing the tunnel ends the drain.
    s.shutdown(Shutdown::Write).expect("shutdown");
    let mut rest = Vec::new();
    reader.read_to_end(&mut rest).expect("read to end");
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    let status = loop {
        if let Some(st) = c.child.try_wait().expect("try_wait") {
            break st;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "courier did not exit after the tunnel closed"
        );
        std::thread::sleep(Duration::from_millis(10));
    };
    assert!(status.success(), "exit status {status}");
}

#[test]
fn upgrade_disabled_on_the_route_is_refused() {
    let c = setup();
    let (_s, _reader, resp) = open_upgrade(c.listener, "/plain");
    assert_eq!(resp.status, 403);
    assert_eq!(c.stat("http.ingress.downstream_rq_ws_on_non_ws_route"), 1);
}

/// The stream idle timeout goes on applying to an upgraded connection, as in Envoy: a
/// tunnel that carried bytes stays open while it is used and is closed once it has been
/// idle for `stream_idle_timeout`.
#[test]
fn idle_websocket_is_closed_like_envoy() {
    let ws = start_ws_echo();
    let hcm = "          upgrade_configs: [ { upgrade_type: websocket } ]\n          stream_idle_timeout: 0.6s\n";
    let boot = bootstrap(ROUTES, hcm, &cluster("ws", &[ws], ""));
    let run = |p: &Courier| {
        let (mut s, mut reader, resp) = open_upgrade(p.listener, "/chat");
        assert_eq!(resp.status, 101);
        // Used every 0.3 s for 1.2 s: more than the timeout in all, never idle for it.
        for _ in 0..4 {
            std::thread::sleep(Duration::from_millis(300));
            s.write_all(b"ping").expect("write");
            let mut back = [0u8; 4];
            reader
                .read_exact(&mut back)
                .expect("the tunnel is still open");
        }
        // Then idle: closed after the timeout (the read times out after 5 s otherwise).
        let started = std::time::Instant::now();
        let mut rest = Vec::new();
        let closed = reader.read_to_end(&mut rest).is_ok();
        (closed, started.elapsed() < Duration::from_millis(2500))
    };
    let courier = Courier::start(&boot);
    assert_eq!(run(&courier), (true, true));
    assert_eq!(
        courier.wait_stat("http.ingress.downstream_rq_idle_timeout", 1),
        1
    );
    let Some(envoy) = Courier::start_envoy(&boot) else {
        eprintln!("envoy not on PATH: skipping the idle websocket differential");
        return;
    };
    assert_eq!(run(&envoy), (true, true), "envoy");
}

/// A stream's `max_stream_duration` (the connection manager's here, or its route's) ends a
/// tunnel however busy it is, as Envoy resets it; a route's `0s` lifts it.
#[test]
fn websocket_ends_with_its_stream_duration_like_envoy() {
    let ws = start_ws_echo();
    let hcm = "          upgrade_configs: [ { upgrade_type: websocket } ]\n          common_http_protocol_options: { max_stream_duration: 0.5s }\n";
    let routes = r#"            name: local
            virtual_hosts:
            - name: main
              domains: ["*"]
              routes:
              - match: { prefix: "/unbounded" }
                route: { cluster: ws, max_stream_duration: { max_stream_duration: 0s } }
              - match: { prefix: "/" }
                route: { cluster: ws }
"#;
    let boot = bootstrap(routes, hcm, &cluster("ws", &[ws], ""));
    // How long the tunnel lasted while used every 0.1 s (at most 2 s of pings).
    let run = |p: &Courier, path: &str| -> Option<Duration> {
        let (mut s, mut reader, resp) = open_upgrade(p.listener, path);
        assert_eq!(resp.status, 101);
        let started = std::time::Instant::now();
        for _ in 0..20 {
            std::thread::sleep(Duration::from_millis(100));
            let mut back = [0u8; 4];
            if s.write_all(b"ping").is_err() || reader.read_exact(&mut back).is_err() {
                return Some(started.elapsed());
            }
        }
        None
    };
    let check = |name: &str, p: &Courier| {
        let ended = run(p, "/chat").unwrap_or_else(|| panic!("{name}: the tunnel outlived 2 s"));
        assert!(
            ended >= Duration::from_millis(400),
            "{name}: ended after {ended:?}"
        );
        assert_eq!(run(p, "/unbounded/chat"), None, "{name}: 0s is no limit");
    };
    let courier = Courier::start(&boot);
    check("courier", &courier);
    assert_eq!(
        courier.wait_stat("http.ingress.downstream_rq_max_duration_reached", 1),
        1
    );
    let Some(envoy) = Courier::start_envoy(&boot) else {
        eprintln!("envoy not on PATH: skipping the tunnel duration differential");
        return;
    };
    check("envoy", &envoy);
}
