//! HTTP/1.1 `http_protocol_options` of the connection manager and of a cluster:
//! `header_key_format: proper_case_words` (field names as written to the client and to the
//! upstream) and `enable_trailers` (a chunked response's trailers reach the client), seen
//! on the wire from a raw client and a raw upstream. Compared with Envoy when `envoy` is on
//! PATH.

mod http_support;

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use http_support::*;

/// An upstream that records each request head it reads and answers with a chunked body
/// ending in a trailer.
fn recording_upstream() -> (SocketAddr, Arc<Mutex<Vec<String>>>) {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
    let addr = listener.local_addr().expect("addr");
    let heads = Arc::new(Mutex::new(Vec::new()));
    let seen = heads.clone();
    std::thread::spawn(move || {
        for s in listener.incoming().flatten() {
            let seen = seen.clone();
            std::thread::spawn(move || serve(s, &seen));
        }
    });
    (addr, heads)
}

fn serve(mut s: TcpStream, seen: &Mutex<Vec<String>>) {
    let mut buf = Vec::new();
    let mut chunk = [0u8; 4096];
    loop {
        // A head, then (for these tests) a body that is empty or chunked and small.
        while !buf.windows(4).any(|w| w == b"\r\n\r\n") {
            match s.read(&mut chunk) {
                Ok(0) | Err(_) => return,
                Ok(n) => buf.extend_from_slice(&chunk[..n]),
            }
        }
        let end = buf
            .windows(4)
            .position(|w| w == b"\r\n\r\n")
            .map_or(0, |p| p + 4);
        let head = String::from_utf8_lossy(&buf[..end]).into_owned();
        buf.drain(..end);
        if head
            .to_ascii_lowercase()
            .contains("transfer-encoding: chunked")
        {
            while !buf.windows(5).any(|w| w == b"0\r\n\r\n") {
                match s.read(&mut chunk) {
                    Ok(0) | Err(_) => return,
                    Ok(n) => buf.extend_from_slice(&chunk[..n]),
                }
            }
            let end = buf
                .windows(5)
                .position(|w| w == b"0\r\n\r\n")
                .map_or(0, |p| p + 5);
            buf.drain(..end);
        }
        seen.lock().expect("heads").push(head);
        let answer = b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\nx-from-up: 1\r\n\r\n2\r\nok\r\n0\r\nx-trailer: t\r\n\r\n";
        if s.write_all(answer).is_err() {
            return;
        }
    }
}

/// The field names of a head, in order, as written.
fn names(head: &str) -> Vec<String> {
    head.split("\r\n")
        .skip(1)
        .filter_map(|l| l.split_once(':').map(|(n, _)| n.to_string()))
        .collect()
}

/// What the client read (status line, field names sorted, the body's end with trailers)
/// and the field names each upstream head carried (sorted), for a GET and a chunked POST.
fn exchange(p: &Courier, heads: &Mutex<Vec<String>>) -> Vec<String> {
    let mut out = Vec::new();
    let requests: [&[u8]; 2] = [
        b"GET /get HTTP/1.1\r\nhost: h\r\nx-custom-field: 1\r\n\r\n",
        b"POST /post HTTP/1.1\r\nhost: h\r\nx-custom-field: 1\r\ntransfer-encoding: chunked\r\n\r\n3\r\nabc\r\n0\r\n\r\n",
    ];
    for (i, request) in requests.iter().enumerate() {
        let mut s = TcpStream::connect(p.listener).expect("connect");
        s.set_read_timeout(Some(Duration::from_secs(5)))
            .expect("timeout");
        s.write_all(request).expect("request");
        let mut got = Vec::new();
        let mut chunk = [0u8; 4096];
        // The response ends with the chunked body's last empty line.
        while !(got.windows(5).any(|w| w == b"\r\n0\r\n") && got.ends_with(b"\r\n\r\n")) {
            match s.read(&mut chunk) {
                Ok(0) | Err(_) => break,
                Ok(n) => got.extend_from_slice(&chunk[..n]),
            }
        }
        let text = String::from_utf8_lossy(&got).into_owned();
        let (head, body) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
        let mut response_names = names(head);
        response_names.sort();
        out.push(format!(
            "{i}: {} {response_names:?} body {body:?}",
            head.lines().next().unwrap_or("")
        ));
        let upstream_head = heads
            .lock()
            .expect("heads")
            .get(i)
            .cloned()
            .unwrap_or_default();
        let mut upstream_names = names(&upstream_head);
        upstream_names.sort();
        out.push(format!("{i}: upstream saw {upstream_names:?}"));
    }
    out
}

#[test]
fn proper_case_keys_and_trailers_match_envoy() {
    let options = "{ enable_trailers: true, header_key_format: { proper_case_words: {} } }";
    let start = |envoy: bool| {
        let (addr, heads) = recording_upstream();
        let hcm = format!("          http_protocol_options: {options}\n");
        let cluster_opts = format!("    http_protocol_options: {options}\n");
        let boot = bootstrap(&all_to("up"), &hcm, &cluster("up", &[addr], &cluster_opts));
        let p = if envoy {
            Courier::start_envoy(&boot)?
        } else {
            Courier::start(&boot)
        };
        Some((p, heads))
    };
    let (courier, heads) = start(false).expect("courier");
    let got = exchange(&courier, &heads);
    assert!(got[0].contains("\"X-From-Up\""), "{got:?}");
    assert!(
        got[0].contains("0\\r\\nx-trailer: t\\r\\n\\r\\n"),
        "{got:?}"
    );
    assert!(got[1].contains("\"X-Custom-Field\""), "{got:?}");
    let Some((envoy, heads)) = start(true) else {
        eprintln!("envoy not on PATH: skipping the HTTP/1 options differential");
        return;
    };
    assert_eq!(exchange(&envoy, &heads), got, "envoy vs courier");
}

/// `allow_chunked_length`: a chunked request that also has `content-length` is taken (the
/// length dropped on the way up) instead of refused with `400`. As Envoy.
#[test]
fn allow_chunked_length_matches_envoy() {
    let run = |envoy: bool, allow: bool| -> Option<(u16, Vec<String>)> {
        let (addr, heads) = recording_upstream();
        let hcm = format!("          http_protocol_options: {{ allow_chunked_length: {allow} }}\n");
        let boot = bootstrap(&all_to("up"), &hcm, &cluster("up", &[addr], ""));
        let p = if envoy {
            Courier::start_envoy(&boot)?
        } else {
            Courier::start(&boot)
        };
        let mut c = Client::connect(p.listener);
        c.send_raw(b"POST /x HTTP/1.1\r\nhost: h\r\ncontent-length: 3\r\ntransfer-encoding: chunked\r\n\r\n3\r\nabc\r\n0\r\n\r\n");
        let status = c.read().map_or(0, |r| r.status);
        let upstream = heads
            .lock()
            .expect("heads")
            .first()
            .map(|h| names(h))
            .unwrap_or_default()
            .into_iter()
            .filter(|n| n.contains("length") || n.contains("encoding"))
            .collect();
        Some((status, upstream))
    };
    let got: Vec<_> = [false, true]
        .into_iter()
        .map(|allow| run(false, allow).expect("courier"))
        .collect();
    assert_eq!(got[0], (400, vec![]));
    assert_eq!(got[1], (200, vec!["transfer-encoding".to_string()]));
    if run(true, false).is_none() {
        eprintln!("envoy not on PATH: skipping the allow_chunked_length differential");
        return;
    }
    let envoy: Vec<_> = [false, true]
        .into_iter()
        .map(|allow| run(true, allow).expect("envoy"))
        .collect();
    assert_eq!(envoy, got, "envoy vs courier");
}
