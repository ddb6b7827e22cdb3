//! Fuzzes the request cookie parser every cookie reader shares
//! (`courier::protocol::cookie`, Envoy's `forEachCookie`): a `cookie` field of arbitrary
//! bytes. Nothing may panic; no name or value holds the `;` that separates them, no name
//! the `=` that ends it or a leading space; and the pairs written back as
//! `name="value"` read back as the same pairs.
#![no_main]

use courier::protocol::cookie;
use http::header::COOKIE;
use http::{HeaderMap, HeaderValue};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(v) = HeaderValue::from_bytes(data) else {
        return;
    };
    let mut headers = HeaderMap::new();
    headers.append(COOKIE, v);
    let pairs: Vec<(&[u8], &[u8])> = cookie::pairs(&headers).collect();
    assert!(pairs.len() <= data.split(|&b| b == b';').count());
    let mut again = Vec::new();
    for (name, value) in &pairs {
        assert!(!name.contains(&b';') && !name.contains(&b'='), "{name:?}");
        assert!(!name.starts_with(b" "), "{name:?}");
        assert!(!value.contains(&b';'), "{value:?}");
        if !again.is_empty() {
            again.extend_from_slice(b"; ");
        }
        again.extend_from_slice(name);
        again.extend_from_slice(b"=\"");
        again.extend_from_slice(value);
        again.push(b'"');
    }
    let Ok(v) = HeaderValue::from_bytes(&again) else {
        panic!("written back: {again:?}");
    };
    let mut written = HeaderMap::new();
    written.append(COOKIE, v);
    let read: Vec<(&[u8], &[u8])> = cookie::pairs(&written).collect();
    assert_eq!(read, pairs);
    if let Some((name, value)) = pairs.first() {
        let first = pairs.iter().find(|(n, _)| n == name).map(|(_, v)| *v);
        assert_eq!(cookie::value(&headers, name), first);
        let _ = value;
    }
});
