//! Fuzzes the header sanitation a request goes through before it is forwarded: the codec's
//! field checks (authority, `Connection` nominations, repeated fields joined) and the hop-by-hop
//! stripping the router applies. Nothing may panic, and what is forwarded must hold:
//! no connection-level field but `te: trailers` (or an empty `te`), none of the fields a
//! `Connection` line nominated, and every `x-forwarded-*` field the client sent, on one line.
#![no_main]

use bytes::BytesMut;
use courier::http::codec::downstream_h1::{parse_request_head, Limits};
use courier::http::codec::request_fields::is_valid_authority;
use courier::http::conn_manager::headers::strip_hop_by_hop;
use http::header::{self, HeaderName};
use libfuzzer_sys::fuzz_target;

const LIMITS: Limits = Limits {
    max_headers: 100,
    max_head_bytes: 60 * 1024,
    accept_http_10: true,
    allow_chunked_length: false,
    preserve_case: None,
};

const FORWARDING: [&str; 3] = ["x-forwarded-for", "x-forwarded-host", "x-forwarded-proto"];

fuzz_target!(|data: &[u8]| {
    let mut buf = BytesMut::from(data);
    let Ok(Some(head)) = parse_request_head(&mut buf, &LIMITS) else {
        return;
    };
    let mut headers = head.parts.headers;
    if head.parts.uri.authority().is_none() {
        if let Some(host) = headers.get(header::HOST) {
            assert!(is_valid_authority(host.as_bytes()), "{host:?}");
        }
    }
    let nominated: Vec<HeaderName> = headers
        .get_all(header::CONNECTION)
        .iter()
        .flat_map(|v| v.as_bytes().split(|&b| b == b','))
        .filter_map(|t| HeaderName::from_bytes(&t.trim_ascii().to_ascii_lowercase()).ok())
        .collect();
    let forwarding: Vec<bool> = FORWARDING
        .iter()
        .map(|n| headers.contains_key(*n))
        .collect();
    for n in FORWARDING {
        assert!(headers.get_all(n).iter().count() <= 1, "{n} not joined");
    }
    strip_hop_by_hop(&mut headers);
    for n in [
        "connection",
        "keep-alive",
        "proxy-connection",
        "transfer-encoding",
        "upgrade",
    ] {
        assert!(!headers.contains_key(n), "{n} forwarded");
    }
    if let Some(te) = headers.get(header::TE) {
        assert!(te.is_empty() || te == "trailers", "te: {te:?} forwarded");
    }
    for n in &nominated {
        if n != header::HOST && n != header::CONTENT_LENGTH && n != header::TE {
            assert!(!headers.contains_key(n), "nominated {n} forwarded");
        }
    }
    for (n, had) in FORWARDING.iter().zip(forwarding) {
        assert_eq!(headers.contains_key(*n), had, "{n} stripped by the client");
    }
});
