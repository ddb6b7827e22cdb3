//! `http2_protocol_options` windows and `connection_keepalive`, downstream (the
//! connection manager's) and upstream (a cluster's), seen from raw HTTP/2 peers: the
//! SETTINGS and WINDOW_UPDATE a peer is sent, the PINGs, and the connection closed when
//! PINGs go unanswered. Compared with Envoy on the same bootstrap when `envoy` is on PATH.

mod http_support;

use std::io::{ErrorKind, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use http_support::*;

use http_support::h2_raw::*;

/// One frame read off a connection.
struct Frame {
    kind: u8,
    flags: u8,
    stream: u32,
    payload: Vec<u8>,
}

/// Reads frames from a raw HTTP/2 connection.
struct FrameReader {
    s: TcpStream,
    buf: Vec<u8>,
}

impl FrameReader {
    fn new(s: TcpStream) -> FrameReader {
        s.set_read_timeout(Some(Duration::from_millis(50)))
            .expect("read timeout");
        FrameReader { s, buf: Vec::new() }
    }

    /// The next frame, `Ok(None)` when nothing came by `deadline`, `Err` at the
    /// connection's end.
    fn next(&mut self, deadline: Instant) -> Result<Option<Frame>, ()> {
        loop {
            if self.buf.len() >= 9 {
                let len = (usize::from(self.buf[0]) << 16)
                    | (usize::from(self.buf[1]) << 8)
                    | usize::from(self.buf[2]);
                if self.buf.len() >= 9 + len {
                    let f: Vec<u8> = self.buf.drain(..9 + len).collect();
                    return Ok(Some(Frame {
                        kind: f[3],
                        flags: f[4],
                        stream: u32::from_be_bytes([f[5], f[6], f[7], f[8]]) & 0x7fff_ffff,
                        payload: f[9..].to_vec(),
                    }));
                }
            }
            if Instant::now() >= deadline {
                return Ok(None);
            }
            let mut chunk = [0u8; 16384];
            match self.s.read(&mut chunk) {
                Ok(0) => return Err(()),
                Ok(n) => self.buf.extend_from_slice(&chunk[..n]),
                Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {}
                Err(_) => return Err(()),
            }
        }
    }

    fn send(&mut self, bytes: &[u8]) {
        // The peer may have closed already; that shows in the next read.
        let _ = self.s.write_all(bytes);
    }
}

/// What one side of a connection was told and how the connection went.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
struct Seen {
    /// SETTINGS_INITIAL_WINDOW_SIZE and SETTINGS_MAX_CONCURRENT_STREAMS, when sent.
    initial_window: Option<u32>,
    max_streams: Option<u32>,
    /// The connection-level WINDOW_UPDATE increments.
    connection_window_update: u32,
    /// A PING arrived.
    pinged: bool,
    /// The connection ended while PINGs went unanswered.
    closed: bool,
}

/// Records a frame in `seen`; answers SETTINGS with an ACK, and PINGs when `answer_pings`.
fn observe(r: &mut FrameReader, f: &Frame, seen: &mut Seen, answer_pings: bool) {
    match (f.kind, f.flags & ACK) {
        (SETTINGS, 0) => {
            for s in f.payload.chunks_exact(6) {
                let value = u32::from_be_bytes([s[2], s[3], s[4], s[5]]);
                match u16::from_be_bytes([s[0], s[1]]) {
                    3 => seen.max_streams = Some(value),
                    4 => seen.initial_window = Some(value),
                    _ => {}
                }
            }
            r.send(&frame(SETTINGS, ACK, 0, &[]));
        }
        (WINDOW_UPDATE, _) if f.stream == 0 && f.payload.len() == 4 => {
            let p = &f.payload;
            seen.connection_window_update += u32::from_be_bytes([p[0], p[1], p[2], p[3]]);
        }
        (PING, 0) => {
            seen.pinged = true;
            if answer_pings {
                r.send(&frame(PING, ACK, 0, &f.payload));
            }
        }
        _ => {}
    }
}

/// Reads `r` for up to `within`, observing frames; whether the connection ended.
fn watch(r: &mut FrameReader, seen: &mut Seen, answer_pings: bool, within: Duration) -> bool {
    let deadline = Instant::now() + within;
    loop {
        match r.next(deadline) {
            Ok(Some(f)) => observe(r, &f, seen, answer_pings),
            Ok(None) => return false,
            Err(()) => return true,
        }
    }
}

const H2_OPTIONS: &str = "{ max_concurrent_streams: 50, initial_stream_window_size: 131072, initial_connection_window_size: 1048576, connection_keepalive: { interval: 0.3s, timeout: 0.3s } }";

/// A downstream HTTP/2 client's view: what it is told, and whether unanswered PINGs
/// close its connection (within 3 s) while answered ones keep it (for 1.5 s).
fn downstream_view(p: &Courier) -> (Seen, bool) {
    let connect = || {
        let mut r = FrameReader::new(TcpStream::connect(p.listener).expect("connect"));
        r.send(&[PREFACE, &frame(SETTINGS, 0, 0, &[])].concat());
        r
    };
    let mut silent = connect();
    let mut seen = Seen::default();
    seen.closed = watch(&mut silent, &mut seen, false, Duration::from_secs(3));
    let mut answering = connect();
    let mut answered = Seen::default();
    let kept = !watch(
        &mut answering,
        &mut answered,
        true,
        Duration::from_millis(1500),
    );
    assert!(answered.pinged, "PINGs while the client answers");
    (seen, kept)
}

#[test]
fn downstream_http2_windows_and_keepalive_match_envoy() {
    let up = Upstream::start("up");
    let hcm = format!("          http2_protocol_options: {H2_OPTIONS}\n");
    let boot = bootstrap(&all_to("up"), &hcm, &cluster("up", &[up.addr], ""));
    let got = downstream_view(&Courier::start(&boot));
    assert_eq!(
        got,
        (
            Seen {
                initial_window: Some(131072),
                max_streams: Some(50),
                connection_window_update: 1048576 - 65535,
                pinged: true,
                closed: true,
            },
            true
        )
    );
    let Some(envoy) = Courier::start_envoy(&boot) else {
        eprintln!("envoy not on PATH: skipping the HTTP/2 options differential");
        return;
    };
    assert_eq!(downstream_view(&envoy), got, "envoy vs courier");
}

/// An HTTP/2 upstream that answers every request `200` with no body and never answers a
/// PING; what it was told on its first connection, and when that connection ended.
fn silent_h2_upstream() -> (SocketAddr, Arc<Mutex<Option<Seen>>>) {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
    let addr = listener.local_addr().expect("addr");
    let result = Arc::new(Mutex::new(None));
    let out = result.clone();
    std::thread::spawn(move || {
        let Some(Ok(s)) = listener.incoming().next() else {
            return;
        };
        let mut r = FrameReader::new(s);
        let mut preface = [0u8; 24];
        r.s.set_read_timeout(Some(Duration::from_secs(5)))
            .expect("timeout");
        if r.s.read_exact(&mut preface).is_err() {
            return;
        }
        r.s.set_read_timeout(Some(Duration::from_millis(50)))
            .expect("timeout");
        r.send(&frame(SETTINGS, 0, 0, &[]));
        let mut seen = Seen::default();
        let deadline = Instant::now() + Duration::from_secs(5);
        loop {
            match r.next(deadline) {
                Ok(Some(f)) => {
                    if f.kind == HEADERS {
                        // `:status: 200` (static table 8), the stream ended.
                        r.send(&frame(HEADERS, END_HEADERS | END_STREAM, f.stream, &[0x88]));
                    }
                    observe(&mut r, &f, &mut seen, false);
                }
                Ok(None) => break,
                Err(()) => {
                    seen.closed = true;
                    break;
                }
            }
        }
        *out.lock().expect("result") = Some(seen);
    });
    (addr, result)
}

#[test]
fn upstream_http2_windows_and_keepalive_match_envoy() {
    let run = |envoy: bool| -> Option<Seen> {
        let (addr, result) = silent_h2_upstream();
        let opts = format!(
            "    typed_extension_protocol_options:\n      envoy.extensions.upstreams.http.v3.HttpProtocolOptions:\n        \"@type\": type.googleapis.com/envoy.extensions.upstreams.http.v3.HttpProtocolOptions\n        explicit_http_config:\n          http2_protocol_options: {H2_OPTIONS}\n"
        );
        let boot = bootstrap(&all_to("up"), "", &cluster("up", &[addr], &opts));
        let p = if envoy {
            Courier::start_envoy(&boot)?
        } else {
            Courier::start(&boot)
        };
        assert_eq!(get(p.listener, "h", "/", &[]).status, 200);
        let deadline = Instant::now() + Duration::from_secs(8);
        loop {
            if let Some(seen) = result.lock().expect("result").clone() {
                return Some(seen);
            }
            assert!(Instant::now() < deadline, "the upstream connection went on");
            std::thread::sleep(Duration::from_millis(20));
        }
    };
    let got = run(false).expect("courier");
    assert_eq!(
        got,
        Seen {
            initial_window: Some(131072),
            max_streams: got.max_streams,
            connection_window_update: 1048576 - 65535,
            pinged: true,
            closed: true,
        }
    );
    let Some(envoy) = run(true) else {
        eprintln!("envoy not on PATH: skipping the upstream HTTP/2 options differential");
        return;
    };
    // What a client says of its own stream limit differs (Envoy sends none).
    assert_eq!(
        Seen {
            max_streams: None,
            ..envoy
        },
        Seen {
            max_streams: None,
            ..got
        },
        "envoy vs courier"
    );
}
