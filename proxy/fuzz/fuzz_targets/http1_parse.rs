//! Fuzzes the downstream HTTP/1 parsing path: arbitrary bytes, delivered in pieces, through
//! Courier's request-head parser (as the connection manager configures it), the request
//! body decoder, and the path sanitiser the router applies next. Nothing may panic; every
//! input ends in requests, a refusal with one of Envoy's codec statuses, or more to read;
//! a body never holds more bytes than were received.
#![no_main]

use bytes::BytesMut;
use courier::http::codec::downstream_h1::{parse_request_head, Limits};
use courier::http::codec::upstream_h1::Decoded;
use libfuzzer_sys::fuzz_target;

const LIMITS: Limits = Limits {
    max_headers: 100,
    max_head_bytes: 60 * 1024,
    accept_http_10: true,
    allow_chunked_length: false,
    preserve_case: None,
};

fuzz_target!(|data: &[u8]| {
    let Some((&step, input)) = data.split_first() else {
        return;
    };
    let mut pieces = input.chunks(usize::from(step).max(1));
    let mut buf = BytesMut::new();
    let mut body_len = 0usize;
    // Pipelined requests, one after the other, as the connection reads them.
    loop {
        let head = match parse_request_head(&mut buf, &LIMITS) {
            Ok(Some(head)) => head,
            Ok(None) => match pieces.next() {
                Some(p) => {
                    buf.extend_from_slice(p);
                    continue;
                }
                None => break,
            },
            Err(e) => {
                assert!(
                    matches!(e.status.as_u16(), 400 | 403 | 426 | 431 | 501),
                    "{e}"
                );
                break;
            }
        };
        let _ = courier::http::conn_manager::path::sanitize_path(head.parts.uri.path(), true, true);
        let Some(mut decoder) = head.body else {
            continue;
        };
        loop {
            match decoder.decode(&mut buf) {
                Ok(Decoded::Data(d)) => body_len += d.len(),
                Ok(Decoded::Trailers(_)) | Ok(Decoded::End) => break,
                Err(_) => return,
                Ok(Decoded::NeedMore) => match pieces.next() {
                    Some(p) => buf.extend_from_slice(p),
                    None => return,
                },
            }
        }
    }
    assert!(body_len <= input.len());
});
