//! Header helpers shared by the connection manager and the router: hop-by-hop fields,
//! Envoy's control headers, joined values, request ids.

use crate::http::codec::fields::joined_values;
pub use crate::http::codec::fields::{
    decimal_value, has_token, is_response_hop_by_hop, join_fields,
};
use http::header::{HeaderMap, HeaderName, HeaderValue};

/// Whether `name` is a hop-by-hop header (RFC 9110 §7.6.1, plus `proxy-connection`).
fn is_hop_by_hop(name: &HeaderName) -> bool {
    use http::header::*;
    name == CONNECTION
        || name == TRANSFER_ENCODING
        || name == UPGRADE
        || name == TE
        || matches!(name.as_str(), "keep-alive" | "proxy-connection")
}

/// Hop-by-hop headers a proxy must not forward.
pub fn strip_hop_by_hop(headers: &mut HeaderMap) {
    use http::header::*;
    // Most requests carry none: one pass over the names is cheaper than a hashed removal
    // per hop-by-hop name.
    if !headers.keys().any(is_hop_by_hop) {
        return;
    }
    // Every `Connection` line nominates fields.
    let nominated: Vec<HeaderName> = headers
        .get_all(CONNECTION)
        .iter()
        .flat_map(|v| v.as_bytes().split(|&b| b == b','))
        .map(<[u8]>::trim_ascii)
        .filter(|t| {
            !t.is_empty()
                && !t.eq_ignore_ascii_case(b"close")
                && !t.eq_ignore_ascii_case(b"keep-alive")
        })
        .filter_map(|t| HeaderName::from_bytes(&t.to_ascii_lowercase()).ok())
        .collect();
    let mut te_nominated = false;
    for n in nominated {
        // Never let the client strip the headers we rely on or set (an upgrade's
        // `Connection` is not checked by the codec); `te` is dealt with below.
        te_nominated |= n == TE;
        let kept = n == HOST
            || n == CONTENT_LENGTH
            || n == TE
            || matches!(
                n.as_str(),
                "x-forwarded-for" | "x-forwarded-host" | "x-forwarded-proto"
            );
        if !kept {
            headers.remove(n);
        }
    }
    headers.remove(CONNECTION);
    headers.remove("keep-alive");
    headers.remove("proxy-connection");
    headers.remove(TRANSFER_ENCODING);
    headers.remove(UPGRADE);
    if let Some(te) = headers.get(TE).filter(|te| te_nominated || !te.is_empty()) {
        // Only `te: trailers` survives (gRPC needs it); an empty one goes on as it came
        // unless `Connection` names it, as from Envoy.
        let keep = te.to_str().is_ok_and(|s| {
            s.split(',')
                .any(|t| t.trim().eq_ignore_ascii_case("trailers"))
        });
        if keep {
            headers.insert(TE, HeaderValue::from_static("trailers"));
        } else {
            headers.remove(TE);
        }
    }
}

/// Turns an `Upgrade: h2c` request into a plain one, as Envoy's HTTP/1 codec does: drops
/// `Upgrade` and `HTTP2-Settings`, and the `upgrade` and `http2-settings` tokens of
/// `Connection` (other tokens stay, so `close` keeps its meaning). For a request whose
/// `Upgrade` is `h2c`.
pub fn drop_h2c_upgrade(headers: &mut HeaderMap) {
    use http::header::{CONNECTION, UPGRADE};
    headers.remove(UPGRADE);
    headers.remove("http2-settings");
    if let Some(conn) = headers.get(CONNECTION) {
        let kept: Vec<&str> = conn
            .to_str()
            .unwrap_or_default()
            .split(',')
            .map(str::trim)
            .filter(|t| {
                !t.is_empty()
                    && !t.eq_ignore_ascii_case("upgrade")
                    && !t.eq_ignore_ascii_case("http2-settings")
            })
            .collect();
        match HeaderValue::from_str(&kept.join(",")) {
            Ok(v) if !kept.is_empty() => {
                headers.insert(CONNECTION, v);
            }
            _ => {
                headers.remove(CONNECTION);
            }
        }
    }
}

/// Removes the hop-by-hop headers of an upstream response (kept on a 101, whose
/// `Connection`/`Upgrade` the client needs).
pub fn strip_response_hop_by_hop(headers: &mut HeaderMap, status: http::StatusCode) {
    if status == http::StatusCode::SWITCHING_PROTOCOLS
        || !headers.keys().any(is_response_hop_by_hop)
    {
        return;
    }
    // Usually `Connection: keep-alive` is the only one.
    headers.remove(http::header::CONNECTION);
    if !headers.keys().any(is_response_hop_by_hop) {
        return;
    }
    headers.remove("keep-alive");
    headers.remove("proxy-connection");
    headers.remove(http::header::TRANSFER_ENCODING);
    headers.remove(http::header::UPGRADE);
}

/// Adds `value` to the message's `name` field as Envoy appends (`via`): one field, the
/// values comma-separated.
pub fn append_value(headers: &mut HeaderMap, name: &HeaderName, value: &HeaderValue) {
    let joined = joined_values(headers, name, b", ", Some(value));
    headers.insert(name.clone(), joined.unwrap_or_else(|| value.clone()));
}

/// A header value that is a decimal number (surrounding whitespace allowed, as Envoy's
/// `SimpleAtoi`); `None` when absent or not one.
pub fn parse_decimal(v: Option<&HeaderValue>) -> Option<u64> {
    v?.to_str().ok()?.trim().parse().ok()
}

/// Envoy's control headers, which a request from outside must not set (the router here,
/// and the hops after this one, would obey them): removed from every external request, as
/// Envoy removes them ([`crate::http::conn_manager::internal_address`] tells which are internal).
/// (`x-forwarded-client-cert` is `forward_client_cert_details`' to decide:
/// [`crate::http::conn_manager::client_cert`].)
const EXTERNAL_STRIPPED: &[&str] = &[
    "x-envoy-internal",
    "x-envoy-retriable-status-codes",
    "x-envoy-retriable-header-names",
    "x-envoy-retry-on",
    "x-envoy-retry-grpc-on",
    "x-envoy-max-retries",
    "x-envoy-upstream-alt-stat-name",
    "x-envoy-upstream-rq-timeout-ms",
    "x-envoy-upstream-rq-per-try-timeout-ms",
    "x-envoy-upstream-rq-timeout-alt-response",
    "x-envoy-expected-rq-timeout-ms",
    "x-envoy-force-trace",
    "x-envoy-ip-tags",
    "x-envoy-original-url",
    "x-envoy-hedge-on-per-try-timeout",
];

/// Also removed at the edge (`use_remote_address`).
const EDGE_STRIPPED: &[&str] = &[
    "x-envoy-decorator-operation",
    "x-envoy-downstream-service-cluster",
    "x-envoy-downstream-service-node",
    "x-envoy-original-path",
];

/// Removes the control headers an external request may not carry (`EXTERNAL_STRIPPED`,
/// and `EDGE_STRIPPED` when `edge`).
pub fn strip_external_control_headers(headers: &mut HeaderMap, edge: bool) {
    let stripped = |name: &HeaderName| {
        let n = name.as_str();
        EXTERNAL_STRIPPED.contains(&n) || (edge && EDGE_STRIPPED.contains(&n))
    };
    // Most requests carry none: one pass over the names first.
    if !headers.keys().any(|k| {
        let n = k.as_str();
        n.starts_with("x-envoy-") || n == "x-forwarded-client-cert"
    }) {
        return;
    }
    let doomed: Vec<HeaderName> = headers.keys().filter(|k| stripped(k)).cloned().collect();
    for name in doomed {
        headers.remove(name);
    }
}

/// Joins the `cookie` fields an HTTP/2 client split (RFC 9113 §8.2.3) into one, with `; `,
/// as Envoy's codec does: an HTTP/1.1 upstream may read only one `Cookie` line.
pub fn join_cookies(headers: &mut HeaderMap) {
    join_fields(headers, &http::header::COOKIE, b"; ");
}

/// A random (version 4) UUID, as Envoy generates for `x-request-id`.
pub fn uuid4_value() -> HeaderValue {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    let mut bytes = fastrand::u128(..).to_be_bytes();
    bytes[6] = (bytes[6] & 0x0f) | 0x40; // version 4
    bytes[8] = (bytes[8] & 0x3f) | 0x80; // variant 10xx
    let mut out = [b'-'; 36];
    let mut at = 0;
    for (i, b) in bytes.iter().enumerate() {
        if matches!(i, 4 | 6 | 8 | 10) {
            at += 1; // the dash
        }
        out[at] = HEX[(b >> 4) as usize];
        out[at + 1] = HEX[(b & 0xf) as usize];
        at += 2;
    }
    let shared = arena_bytes(&out);
    // SAFETY: hexadecimal digits and dashes only, all visible ASCII, which a header value
    // may hold (the checked constructor would walk the 36 bytes again on every request).
    unsafe { HeaderValue::from_maybe_shared_unchecked(shared) }
}

/// Bytes the value arena allocates at a time.
const ARENA_CHUNK: usize = 4096;

thread_local! {
    /// Generated header values are cut from this buffer: a request id each request would
    /// otherwise be an allocation of its own.
    static VALUE_ARENA: std::cell::RefCell<bytes::BytesMut> =
        std::cell::RefCell::new(bytes::BytesMut::new());
}

/// `bytes`, cut from the worker's value arena: an allocation per few kilobytes of values
/// rather than per value (a chunk is reused once all its values are dropped).
fn arena_bytes(bytes: &[u8]) -> bytes::Bytes {
    VALUE_ARENA.with_borrow_mut(|arena| {
        if arena.capacity() - arena.len() < bytes.len() {
            arena.reserve(ARENA_CHUNK.max(bytes.len()));
        }
        arena.extend_from_slice(bytes);
        arena.split().freeze()
    })
}

/// A header map of `pairs`, in order (for tests).
#[cfg(test)]
pub(crate) fn test_header_map(pairs: &[(&'static str, &'static str)]) -> HeaderMap {
    let mut h = HeaderMap::new();
    for (k, v) in pairs {
        h.append(*k, HeaderValue::from_static(v));
    }
    h
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn control_headers_are_stripped_from_external_requests() {
        let mut h = HeaderMap::new();
        for name in [
            "x-envoy-retry-on",
            "x-envoy-internal",
            "x-forwarded-client-cert",
            "x-envoy-original-path",
            "x-envoy-custom",
            "x-other",
        ] {
            h.append(HeaderName::from_static(name), HeaderValue::from_static("v"));
        }
        let mut edge = h.clone();
        let names = |h: &HeaderMap| {
            let mut v: Vec<String> = h.keys().map(|k| k.to_string()).collect();
            v.sort();
            v
        };
        strip_external_control_headers(&mut h, false);
        assert_eq!(
            names(&h),
            [
                "x-envoy-custom",
                "x-envoy-original-path",
                "x-forwarded-client-cert",
                "x-other"
            ]
        );
        strip_external_control_headers(&mut edge, true);
        // XFCC is the client certificate policy's (`client_cert.rs`).
        assert_eq!(
            names(&edge),
            ["x-envoy-custom", "x-forwarded-client-cert", "x-other"]
        );
    }

    #[test]
    fn split_cookies_are_joined() {
        let mut h = HeaderMap::new();
        h.append(http::header::COOKIE, HeaderValue::from_static("a=1"));
        join_cookies(&mut h);
        assert_eq!(h.get_all(http::header::COOKIE).iter().count(), 1);
        h.append(http::header::COOKIE, HeaderValue::from_static("b=2"));
        h.append(http::header::COOKIE, HeaderValue::from_static("c=3"));
        join_cookies(&mut h);
        let all: Vec<_> = h.get_all(http::header::COOKIE).iter().collect();
        assert_eq!(all, ["a=1; b=2; c=3"]);
    }

    #[test]
    fn arena_values_stay_intact_across_chunks() {
        // Enough ids to span several arena chunks, all held at once.
        let ids: Vec<HeaderValue> = (0..500).map(|_| uuid4_value()).collect();
        let mut seen = std::collections::HashSet::new();
        for id in &ids {
            let s = id.to_str().unwrap_or_default();
            assert!(s.bytes().all(|b| b.is_ascii_hexdigit() || b == b'-'), "{s}");
            assert_eq!(s.len(), 36, "{s}");
            assert_eq!(s.matches('-').count(), 4, "{s}");
            assert!(seen.insert(s.to_string()), "repeated id {s}");
        }
        drop(ids);
        // A chunk whose values are all gone is reused.
        let again = uuid4_value();
        assert_eq!(again.len(), 36);
        assert_eq!(&arena_bytes(b"x")[..], b"x");
    }
}
