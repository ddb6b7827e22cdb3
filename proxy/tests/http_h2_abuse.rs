//! HTTP/2 abuse from a raw-frame client: a rapid-reset flood (CVE-2023-44487) and a
//! SETTINGS flood. Each must be contained to the offending connection — GOAWAY/close or
//! backpressure, no unbounded buffering — while the worker keeps serving everyone else.
//! Courier runs one worker here, so "everyone else" shares the attacked event loop.

mod http_support;

use std::io::{ErrorKind, Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

use http_support::*;

use http_support::h2_raw::*;

const CANCEL: u32 = 0x8;

/// `GET /` for authority `h`: HPACK static-table entries for :method, :scheme and
/// :path, and a literal :authority without indexing (so every block decodes alike).
fn get_headers(stream: u32) -> Vec<u8> {
    frame(
        HEADERS,
        END_HEADERS | END_STREAM,
        stream,
        &[0x82, 0x86, 0x84, 0x01, 0x01, b'h'],
    )
}

fn setup() -> (Courier, Upstream) {
    let a = Upstream::start("a");
    let routes = r#"            name: local
            virtual_hosts:
            - name: main
              domains: ["*"]
              routes:
              - match: { prefix: "/" }
                route: { cluster: a }
"#;
    let boot = bootstrap(routes, "", &cluster("a", &[a.addr], ""));
    (Courier::start(&boot), a)
}

/// Reads frames until GOAWAY (returning its error code) or the end of the connection.
fn read_until_goaway(s: &mut TcpStream, within: Duration) -> Option<u32> {
    let deadline = Instant::now() + within;
    s.set_read_timeout(Some(Duration::from_millis(200)))
        .expect("read timeout");
    let mut buf = Vec::new();
    let mut chunk = [0u8; 16384];
    while Instant::now() < deadline {
        match s.read(&mut chunk) {
            Ok(0) => return None,
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
            Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {}
            Err(_) => return None,
        }
        for f in take_frames(&mut buf) {
            if f.kind == GOAWAY && f.payload.len() >= 8 {
                let p = &f.payload;
                return Some(u32::from_be_bytes([p[4], p[5], p[6], p[7]]));
            }
        }
    }
    panic!("the server neither sent GOAWAY nor closed within {within:?}");
}

fn assert_still_serving(c: &Courier) {
    let started = Instant::now();
    let r = get(c.listener, "h", "/after", &[]);
    assert_eq!(r.status, 200, "the worker stopped serving other clients");
    assert!(
        started.elapsed() < Duration::from_secs(2),
        "another client waited {:?}",
        started.elapsed()
    );
}

#[test]
fn http2_rapid_reset_flood_gets_goaway_and_others_are_served() {
    let (c, _a) = setup();
    let mut s = TcpStream::connect(c.listener).expect("connect");
    s.set_nodelay(true).expect("nodelay");
    let mut out = PREFACE.to_vec();
    out.extend(frame(SETTINGS, 0, 0, &[]));
    s.write_all(&out).expect("preface");
    // Open and at once cancel streams, far beyond any sane rate.
    let mut batch = Vec::new();
    for i in 0..5_000u32 {
        let id = 2 * i + 1;
        batch.extend(get_headers(id));
        batch.extend(frame(RST_STREAM, 0, id, &CANCEL.to_be_bytes()));
    }
    // The server may close while we are still writing: that is a pass, not a failure.
    let _ = s.write_all(&batch);
    // GOAWAY with ENHANCE_YOUR_CALM once too many streams were reset before they were
    // served (hyper/h2's limit; Envoy likewise closes connections with too many premature
    // resets).
    assert_eq!(
        read_until_goaway(&mut s, Duration::from_secs(10)),
        Some(0xb),
        "expected GOAWAY(ENHANCE_YOUR_CALM)"
    );
    assert_still_serving(&c);
}

#[test]
fn http2_settings_flood_is_backpressured_and_others_are_served() {
    let (c, _a) = setup();
    let rss = |pid: u32| -> u64 {
        std::fs::read_to_string(format!("/proc/{pid}/status"))
            .ok()
            .and_then(|s| {
                s.lines()
                    .find(|l| l.starts_with("VmRSS:"))
                    .and_then(|l| l.split_whitespace().nth(1)?.parse().ok())
            })
            .unwrap_or(0)
    };
    let pid = c.child.id();
    let before = rss(pid);
    let mut s = TcpStream::connect(c.listener).expect("connect");
    s.write_all(PREFACE).expect("preface");
    // Each SETTINGS frame demands an ACK; a client that never reads must not make the
    // server queue them without bound: it stops reading (or closes) instead.
    s.set_nonblocking(true).expect("nonblocking");
    let settings = frame(SETTINGS, 0, 0, &[]).repeat(1024);
    let deadline = Instant::now() + Duration::from_secs(3);
    let mut sent = 0usize;
    let mut stalled = false;
    let mut closed = false;
    while Instant::now() < deadline && sent < 64 << 20 {
        match s.write(&settings) {
            Ok(n) => sent += n,
            Err(e) if e.kind() == ErrorKind::WouldBlock => {
                stalled = true;
                // Meanwhile the worker serves others.
                assert_still_serving(&c);
                break;
            }
            // Closed by the server: contained.
            Err(_) => {
                closed = true;
                break;
            }
        }
    }
    assert!(
        stalled || closed,
        "the server took {sent} bytes of SETTINGS in 3 s without pushing back or closing"
    );
    let grown_kb = rss(pid).saturating_sub(before);
    assert!(
        grown_kb < 64 * 1024,
        "RSS grew by {grown_kb} KiB under a SETTINGS flood"
    );
    drop(s);
    assert_still_serving(&c);
}
