//! Courier's own HTTP/1.1 upstream client (`http/upstream_h1.rs`) against a scripted
//! upstream: every way a response body can be framed, 1xx responses, protocol errors, and
//! keep-alive reuse (including a connection the upstream closed while it sat idle).

mod http_support;

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpListener};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use http_support::*;

/// What the scripted upstream has seen.
#[derive(Default)]
struct Counts {
    connections: AtomicUsize,
    /// Connections the upstream has closed on its own after answering.
    closed: AtomicUsize,
    /// Requests read whole.
    requests: AtomicUsize,
}

/// The raw response for a request line, and whether to close the connection after it.
fn script(method: &str, path: &str) -> (String, bool) {
    let r = |s: &str| s.to_string();
    match path {
        "/no-length" if method == "HEAD" => (r("HTTP/1.1 200 OK\r\nconnection: close\r\n\r\n"), true),
        "/chunked" if method == "HEAD" => (
            r("HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n"),
            false,
        ),
        "/chunked" => (
            r("HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n5\r\nhello\r\n6;ext=1\r\n world\r\n0\r\nx-trailer: t\r\n\r\n"),
            false,
        ),
        "/continue" => (
            r("HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok"),
            false,
        ),
        "/until-close" => (r("HTTP/1.1 200 OK\r\n\r\nstreamed to the close"), true),
        "/big-chunked" => {
            let mut out = r("HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n");
            for chunk in big_chunks() {
                out.push_str(&format!("{:x}\r\n{chunk}\r\n", chunk.len()));
            }
            out.push_str("0\r\n\r\n");
            (out, false)
        }
        "/no-content" => (r("HTTP/1.1 204 No Content\r\n\r\n"), false),
        "/both" => (
            r("HTTP/1.1 200 OK\r\ncontent-length: 100\r\ntransfer-encoding: chunked\r\n\r\n2\r\nok\r\n0\r\n\r\n"),
            false,
        ),
        "/bad-length" => (r("HTTP/1.1 200 OK\r\ncontent-length: 1x\r\n\r\nx"), true),
        "/garbage" => (r("HTX/9 what\r\n\r\n"), true),
        "/truncated" => (r("HTTP/1.1 200 OK\r\ncontent-le"), true),
        "/idle-close" => (r("HTTP/1.1 200 OK\r\ncontent-length: 4\r\n\r\nbye!"), true),
        // Read whole, never answered: the connection closes.
        "/read-then-close" => (String::new(), true),
        "/len" if method == "HEAD" => (r("HTTP/1.1 200 OK\r\ncontent-length: 10\r\n\r\n"), false),
        _ => (r("HTTP/1.1 200 OK\r\ncontent-length: 5\r\n\r\nplain"), false),
    }
}

fn start_scripted() -> (SocketAddr, Arc<Counts>) {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
    let addr = listener.local_addr().expect("addr");
    let counts = Arc::new(Counts::default());
    let c = counts.clone();
    std::thread::spawn(move || {
        for stream in listener.incoming().flatten() {
            c.connections.fetch_add(1, Ordering::SeqCst);
            let c = c.clone();
            std::thread::spawn(move || {
                let mut reader = BufReader::new(stream.try_clone().expect("clone"));
                let mut out = stream;
                loop {
                    let mut line = String::new();
                    if reader.read_line(&mut line).unwrap_or(0) == 0 {
                        return;
                    }
                    let mut parts = line.split(' ');
                    let method = parts.next().unwrap_or("").to_string();
                    let path = parts.next().unwrap_or("").to_string();
                    let mut length = 0usize;
                    loop {
                        let mut h = String::new();
                        if reader.read_line(&mut h).unwrap_or(0) == 0 {
                            return;
                        }
                        if let Some(v) = h.to_ascii_lowercase().strip_prefix("content-length:") {
                            length = v.trim().parse().unwrap_or(0);
                        }
                        if h == "\r\n" {
                            break;
                        }
                    }
                    let mut body = vec![0u8; length];
                    if reader.read_exact(&mut body).is_err() {
                        return;
                    }
                    c.requests.fetch_add(1, Ordering::SeqCst);
                    let (resp, close) = script(&method, &path);
                    if out.write_all(resp.as_bytes()).is_err() {
                        return;
                    }
                    if close {
                        // Closed first, counted after: a test that waits on the count must
                        // find the FIN already on its way.
                        let _ = out.shutdown(std::net::Shutdown::Both);
                        drop(out);
                        drop(reader);
                        c.closed.fetch_add(1, Ordering::SeqCst);
                        return;
                    }
                }
            });
        }
    });
    (addr, counts)
}

fn setup() -> (Courier, Arc<Counts>) {
    let (up, counts) = start_scripted();
    let c = Courier::start(&bootstrap(&all_to("up"), "", &cluster("up", &[up], "")));
    (c, counts)
}

/// 40 distinct chunks of 5000 bytes: more large pieces than one `writev` takes.
fn big_chunks() -> Vec<String> {
    (0..40u8)
        .map(|i| char::from(b'A' + i % 26).to_string().repeat(5000))
        .collect()
}

#[test]
fn response_framings() {
    let (c, counts) = setup();
    let mut client = Client::connect(c.listener);
    let r = client.get("h", "/chunked", &[]);
    assert_eq!((r.status, r.body_str().as_str()), (200, "hello world"));
    let r = client.get("h", "/continue", &[]);
    assert_eq!((r.status, r.body_str().as_str()), (200, "ok"));
    let r = client.get("h", "/no-content", &[]);
    assert_eq!(r.status, 204);
    let r = client.request("HEAD", "h", "/len", &[], b"");
    assert_eq!((r.status, r.header("content-length")), (200, Some("10")));
    // A HEAD response without a length announces the chunked coding a GET would get, as
    // Envoy's codec does.
    let r = client.request("HEAD", "h", "/chunked", &[], b"");
    assert_eq!(
        (r.status, r.header("transfer-encoding")),
        (200, Some("chunked"))
    );
    // All of the above on one upstream connection, kept alive.
    assert_eq!(counts.connections.load(Ordering::SeqCst), 1);
    let r = client.get("h", "/until-close", &[]);
    assert_eq!(
        (r.status, r.body_str().as_str()),
        (200, "streamed to the close")
    );
    // After a response that ran to the close, a new upstream connection.
    let before = counts.connections.load(Ordering::SeqCst);
    let r = client.get("h", "/plain", &[]);
    assert_eq!((r.status, r.body_str().as_str()), (200, "plain"));
    assert_eq!(counts.connections.load(Ordering::SeqCst), before + 1);
    // A large chunked body arrives whole and in order.
    let r = client.get("h", "/big-chunked", &[]);
    assert_eq!((r.status, r.body_str()), (200, big_chunks().concat()));
    // POST with a body goes out with its length.
    let r = client.request("POST", "h", "/plain", &[], b"abc");
    assert_eq!(r.status, 200);
}

/// A response that breaks HTTP/1.1 (a Content-Length with chunked coding among them) gets
/// Envoy's `502` "protocol error", and the connection is dropped.
#[test]
fn protocol_errors_are_502() {
    let (c, _) = setup();
    for path in ["/bad-length", "/garbage", "/both"] {
        let r = get(c.listener, "h", path, &[]);
        assert_eq!(r.status, 502, "{path}");
        assert!(
            r.body_str().ends_with("reset reason: protocol error"),
            "{path}: {}",
            r.body_str()
        );
    }
    assert_eq!(c.stat("cluster.up.upstream_cx_protocol_error"), 3);
    // A head cut short by the upstream's close is a reset (503), not a protocol error.
    let r = get(c.listener, "h", "/truncated", &[]);
    assert_eq!(r.status, 503);
    assert!(
        r.body_str()
            .ends_with("reset reason: connection termination"),
        "{}",
        r.body_str()
    );
    assert_eq!(c.stat("cluster.up.upstream_cx_protocol_error"), 3);
    // The worker still serves.
    assert_eq!(get(c.listener, "h", "/plain", &[]).status, 200);
}

#[test]
fn a_connection_closed_while_idle_is_not_reused() {
    let (c, counts) = setup();
    let mut client = Client::connect(c.listener);
    for i in 0..20 {
        let r = client.get("h", "/idle-close", &[]);
        assert_eq!(
            (r.status, r.body_str().as_str()),
            (200, "bye!"),
            "round {i}"
        );
        // Wait until the upstream has closed that connection, then go again at once: the
        // next request must not fail on the dead connection.
        let deadline = Instant::now() + Duration::from_secs(5);
        while counts.closed.load(Ordering::SeqCst) < i + 1 {
            assert!(Instant::now() < deadline, "upstream did not close");
            std::thread::sleep(Duration::from_millis(1));
        }
    }
    assert_eq!(counts.connections.load(Ordering::SeqCst), 20);
    assert_eq!(c.stat("cluster.up.upstream_rq_rx_reset"), 0);
}

/// A request the upstream read whole and closed on without answering is sent once, as by
/// Envoy (`503`, "connection termination"): the upstream may have acted on it, so only a
/// request that could not be written goes again on another connection.
#[test]
fn a_request_written_whole_is_sent_once() {
    let (up, counts) = start_scripted();
    let boot = bootstrap(&all_to("up"), "", &cluster("up", &[up], ""));
    let observe = |p: &Courier| {
        let mut client = Client::connect(p.listener);
        // A kept-alive upstream connection first, so that the next request reuses it.
        assert_eq!(client.get("h", "/plain", &[]).status, 200);
        let before = counts.requests.load(Ordering::SeqCst);
        let r = client.get("h", "/read-then-close", &[]);
        let sent = counts.requests.load(Ordering::SeqCst) - before;
        (r.status, sent, r.body_str())
    };
    let c = Courier::start(&boot);
    let got = observe(&c);
    assert_eq!((got.0, got.1), (503, 1), "{got:?}");
    if let Some(envoy) = Courier::start_envoy(&boot) {
        assert_eq!(observe(&envoy), got, "Envoy");
    }
}

/// What an HTTP/2 client gets for `path`: the body and the `x-trailer` trailer.
fn h2_body_and_trailer(addr: SocketAddr, path: &str) -> (String, Option<String>) {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    rt.block_on(async {
        let mut sender = h2_connect(addr).await;
        let (_, body, trailer) = h2_fetch(&mut sender, path, "x-trailer").await;
        (body, trailer)
    })
}

/// An HTTP/1.1 upstream's trailers are read only with the cluster's `enable_trailers`, as
/// by Envoy's codec: without it an HTTP/2 client gets the body and no trailers.
#[test]
fn http1_upstream_trailers_need_enable_trailers() {
    let (up, _) = start_scripted();
    let enabled = "    typed_extension_protocol_options:\n      envoy.extensions.upstreams.http.v3.HttpProtocolOptions:\n        \"@type\": type.googleapis.com/envoy.extensions.upstreams.http.v3.HttpProtocolOptions\n        explicit_http_config:\n          http_protocol_options: { enable_trailers: true }\n";
    for (extra, want) in [("", None), (enabled, Some("t"))] {
        let boot = bootstrap(&all_to("up"), "", &cluster("up", &[up], extra));
        let c = Courier::start(&boot);
        let got = h2_body_and_trailer(c.listener, "/chunked");
        assert_eq!(got, ("hello world".to_string(), want.map(str::to_string)));
        if let Some(envoy) = Courier::start_envoy(&boot) {
            assert_eq!(
                h2_body_and_trailer(envoy.listener, "/chunked"),
                got,
                "Envoy"
            );
        }
    }
}

/// HEAD responses' framing fields, as Envoy writes them: the upstream's length, or, without
/// one, `transfer-encoding: chunked` (for HTTP/1.1 clients).
#[test]
fn head_response_framing_matches_envoy() {
    let (up, _) = start_scripted();
    let boot = bootstrap(&all_to("up"), "", &cluster("up", &[up], ""));
    let observe = |p: &Courier| {
        let mut out = Vec::new();
        for (path, version) in [
            ("/len", "1.1"),
            ("/chunked", "1.1"),
            ("/no-length", "1.1"),
            ("/chunked", "1.0"),
        ] {
            let mut client = Client::connect(p.listener);
            client.send_raw(format!("HEAD {path} HTTP/{version}\r\nhost: h\r\n\r\n").as_bytes());
            let r = read_response(&mut client.reader, true).expect("response");
            out.push((
                format!("{path} {version}"),
                r.status,
                r.header("content-length").map(str::to_string),
                r.header("transfer-encoding").map(str::to_string),
            ));
        }
        out
    };
    let c = Courier::start(&boot);
    let got = observe(&c);
    assert_eq!(got[2].3.as_deref(), Some("chunked"), "{got:?}");
    assert_eq!(got[3].3, None, "an HTTP/1.0 client: {got:?}");
    if let Some(envoy) = Courier::start_envoy(&boot) {
        assert_eq!(observe(&envoy), got, "Envoy");
    }
}
