//! HTTP/2 requests whose fields HTTP/2 forbids or Envoy refuses — an invalid
//! `:authority`, connection-specific fields, `te` other than `trailers` — sent frame by
//! frame to Courier and to Envoy 1.40 (`envoy` on PATH): Courier must forward exactly what
//! Envoy forwards, except a `%` in `:authority` (the `h2` crate refuses it; Envoy forwards
//! it; integration-tests/DIFFERENCES.md). Envoy closes the connection on a malformed
//! request; Courier resets the stream (`h2`) or answers `400`, and the connection serves
//! on. (The HTTP/1.1 side of these checks is fuzzed in `http1_diff_fuzz`.)

mod http_support;

use std::io::{ErrorKind, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::{Duration, Instant};

use http_support::h2_raw::*;
use http_support::*;

/// A HEADERS block for `GET /` with `authority` and `extra` fields: static-table entries
/// for `:method GET`, `:scheme http` and `:path /`, literals without indexing for the rest.
fn request_block(authority: &[u8], extra: &[(&[u8], &[u8])]) -> Vec<u8> {
    let mut block = vec![0x82, 0x86, 0x84];
    let mut literal = |name: &[u8], value: &[u8]| {
        block.push(0x00);
        block.push(name.len() as u8);
        block.extend_from_slice(name);
        block.push(value.len() as u8);
        block.extend_from_slice(value);
    };
    literal(b":authority", authority);
    for (k, v) in extra {
        literal(k, v);
    }
    block
}

/// What became of the stream.
#[derive(Debug, PartialEq, Eq)]
enum Outcome {
    /// Response headers came.
    Response,
    /// The stream was reset.
    Reset,
    /// The connection was closed (GOAWAY or EOF) without a response.
    Closed,
}

/// Sends one request on a new HTTP/2 connection and reads until the stream ends.
fn send(proxy: SocketAddr, block: &[u8]) -> Outcome {
    let mut s = TcpStream::connect(proxy).expect("connect");
    s.set_read_timeout(Some(Duration::from_millis(100)))
        .expect("read timeout");
    let mut out = PREFACE.to_vec();
    out.extend(frame(SETTINGS, 0, 0, &[]));
    out.extend(frame(HEADERS, END_HEADERS | END_STREAM, 1, block));
    s.write_all(&out).expect("write");
    let deadline = Instant::now() + Duration::from_secs(5);
    let mut buf = Vec::new();
    let mut chunk = [0u8; 16384];
    while Instant::now() < deadline {
        match s.read(&mut chunk) {
            Ok(0) => return Outcome::Closed,
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
            Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {}
            Err(_) => return Outcome::Closed,
        }
        for f in take_frames(&mut buf) {
            match f.kind {
                HEADERS if f.stream == 1 => return Outcome::Response,
                RST_STREAM if f.stream == 1 => return Outcome::Reset,
                GOAWAY => return Outcome::Closed,
                _ => {}
            }
        }
    }
    panic!("no response, reset or close within 5 s");
}

fn cases() -> Vec<(&'static str, Vec<u8>)> {
    let plain = |authority: &[u8]| request_block(authority, &[]);
    vec![
        ("valid", plain(b"h")),
        ("authority with a slash", plain(b"h/x")),
        ("authority with a space", plain(b"h x")),
        ("authority with a brace", plain(b"h{")),
        ("authority with a backslash", plain(b"h\\x")),
        ("authority with a quote", plain(b"h\"")),
        ("authority with userinfo", plain(b"a@h")),
        ("authority with a percent", plain(b"h%20")),
        (
            "connection",
            request_block(b"h", &[(b"connection", b"keep-alive")]),
        ),
        (
            "proxy-connection",
            request_block(b"h", &[(b"proxy-connection", b"close")]),
        ),
        (
            "keep-alive",
            request_block(b"h", &[(b"keep-alive", b"timeout=5")]),
        ),
        (
            "transfer-encoding",
            request_block(b"h", &[(b"transfer-encoding", b"chunked")]),
        ),
        (
            "upgrade",
            request_block(b"h", &[(b"upgrade", b"websocket")]),
        ),
        ("te trailers", request_block(b"h", &[(b"te", b"trailers")])),
        ("te gzip", request_block(b"h", &[(b"te", b"gzip")])),
        ("uppercase name", request_block(b"h", &[(b"X-A", b"b")])),
    ]
}

#[test]
fn http2_field_checks_match_envoy() {
    let routes = all_to("up");
    let run = |envoy: bool| -> Option<Vec<(&'static str, bool, Outcome)>> {
        let up = Upstream::start("up");
        let boot = bootstrap(
            &routes,
            "          codec_type: HTTP2\n",
            &cluster("up", &[up.addr], ""),
        );
        let proxy = if envoy {
            Courier::start_envoy(&boot)?
        } else {
            Courier::start(&boot)
        };
        Some(
            cases()
                .into_iter()
                .map(|(name, block)| {
                    let before = up.requests.load(std::sync::atomic::Ordering::SeqCst);
                    let outcome = send(proxy.listener, &block);
                    let forwarded = up.requests.load(std::sync::atomic::Ordering::SeqCst) > before;
                    (name, forwarded, outcome)
                })
                .collect(),
        )
    };
    let Some(envoy) = run(true) else {
        eprintln!("envoy not on PATH: skipped");
        return;
    };
    let courier = run(false).expect("courier");
    for ((name, e_fwd, e_out), (_, c_fwd, c_out)) in envoy.iter().zip(&courier) {
        eprintln!("{name}: Envoy {e_fwd} {e_out:?}, Courier {c_fwd} {c_out:?}");
    }
    for ((name, e_fwd, _), (_, c_fwd, _)) in envoy.iter().zip(&courier) {
        if *name == "authority with a percent" {
            assert!(
                *e_fwd && !*c_fwd,
                "{name}: the documented difference changed"
            );
            continue;
        }
        assert_eq!(
            c_fwd, e_fwd,
            "{name}: forwarded by Envoy {e_fwd}, by Courier {c_fwd}"
        );
    }
    assert!(envoy[0].1, "the valid request must be forwarded");
}
