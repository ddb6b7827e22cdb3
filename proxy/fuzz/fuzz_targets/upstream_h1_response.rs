//! Fuzzes Courier's own HTTP/1.1 upstream client on what an upstream may send: arbitrary
//! bytes, delivered in pieces, through the response-head parser and the body decoder.
//! Nothing may panic, the body can never hold more bytes than were received, and a head
//! that passes is framed as Envoy accepts it: at most one `content-length`, none but `0`
//! on a `204` or an interim response, and a `content-length` that is one number unless the
//! response is a `304`.
#![no_main]

use bytes::BytesMut;
use courier::http::codec::upstream_h1::{parse_response_head, Decoded};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Some((&control, input)) = data.split_first() else {
        return;
    };
    let head_request = control & 1 == 1;
    let step = usize::from(control >> 1).max(1);
    // Envoy's default field limit, or one past the parser's inline slots.
    let max_headers = if control & 0x80 == 0 {
        courier::protocol::stream_limits::DEFAULT_MAX_HEADERS
    } else {
        150
    };
    let mut pieces = input.chunks(step);
    let mut buf = BytesMut::new();
    // The head (1xx heads are skipped, as the client does).
    let mut head = loop {
        let parsed = parse_response_head(&mut buf, head_request, max_headers, None);
        if let Ok(Some(h)) = &parsed {
            let status = h.parts.status;
            let lengths: Vec<_> = h.parts.headers.get_all("content-length").iter().collect();
            assert!(lengths.len() <= 1, "{lengths:?}");
            let bodiless = status == 204 || (status.is_informational() && status != 101);
            if bodiless {
                assert!(lengths.iter().all(|v| *v == "0"), "{status} {lengths:?}");
            } else if status != 304 {
                assert!(
                    lengths
                        .iter()
                        .all(|v| v.as_bytes().iter().all(u8::is_ascii_digit)),
                    "{lengths:?}"
                );
            }
        }
        match parsed {
            Ok(Some(h)) if h.parts.status.is_informational() => continue,
            Ok(Some(h)) => break h,
            Ok(None) => match pieces.next() {
                Some(p) => buf.extend_from_slice(p),
                None => return,
            },
            Err(_) => return,
        }
    };
    let mut body_len = 0usize;
    loop {
        match head.decoder.decode(&mut buf) {
            Ok(Decoded::Data(d)) => body_len += d.len(),
            Ok(Decoded::Trailers(_)) | Ok(Decoded::End) | Err(_) => break,
            Ok(Decoded::NeedMore) => match pieces.next() {
                Some(p) => buf.extend_from_slice(p),
                None => {
                    let _ = head.decoder.eof();
                    break;
                }
            },
        }
    }
    assert!(body_len <= input.len());
});
