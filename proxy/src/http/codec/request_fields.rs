//! The checks Envoy's HTTP/1 codec makes on a request's fields and target beyond their
//! syntax and framing (measured against Envoy 1.40), so that a client cannot use the proxy
//! to send what Envoy would refuse:
//!
//! - the authority (`Host`, or an absolute-form target's) holds only characters an
//!   authority may hold ([`is_valid_authority`]);
//! - an absolute-form target is `http`/`https` with a valid port, and its userinfo is
//!   dropped ([`absolute_form`]);
//! - `Connection` may not nominate the fields the proxy itself sets, a pseudo-header, or
//!   ten fields or more ([`check_connection`]);
//! - repeated lines of the fields Envoy keeps as one are joined with `,`
//!   ([`join_repeated`]), so that, for one, `xff_num_trusted_hops` counts the addresses
//!   of every `x-forwarded-for` line.

use bytes::{Bytes, BytesMut};
use http::header::{self, HeaderMap};

use crate::http::codec::codec_error::CodecError;
pub use crate::http::codec::fields::is_valid_authority;
use crate::http::codec::fields::join_each;

/// The request fields Envoy's header map keeps as one, their repeated lines joined with
/// `,` (measured: a request with two lines of each reaches Envoy's upstream with one).
/// Other fields (`cookie`, `x-*`) keep their lines.
const JOINED: &[&str] = &[
    "accept",
    "accept-encoding",
    "access-control-request-headers",
    "access-control-request-method",
    "authorization",
    "cache-control",
    "cdn-loop",
    "connection",
    "content-encoding",
    "content-type",
    "expect",
    "grpc-accept-encoding",
    "grpc-timeout",
    "if-match",
    "if-modified-since",
    "if-none-match",
    "if-range",
    "if-unmodified-since",
    "origin",
    "pragma",
    "referer",
    "te",
    "upgrade",
    "user-agent",
    "via",
    "x-client-trace-id",
    "x-envoy-attempt-count",
    "x-envoy-is-timeout-retry",
    "x-forwarded-for",
    "x-forwarded-host",
    "x-forwarded-port",
    "x-forwarded-proto",
    "x-request-id",
];

/// Joins the repeated lines of the request fields Envoy keeps as one. Called only for a
/// head in which some name repeats.
pub fn join_repeated(headers: &mut HeaderMap) {
    join_each(headers, JOINED);
}

/// Whether the request is an upgrade Envoy keeps (`Connection: upgrade` and an `Upgrade`
/// other than `h2c`, which Envoy's codec drops).
pub fn is_upgrade_kept(headers: &HeaderMap) -> bool {
    crate::http::codec::handoff::is_upgrade(headers)
        && !headers
            .get(header::UPGRADE)
            .is_some_and(|v| v.as_bytes().eq_ignore_ascii_case(b"h2c"))
}

/// How many fields `Connection` may nominate: Envoy refuses ten or more.
const MAX_CONNECTION_TOKENS: usize = 9;

/// Envoy's codec refuses a `Connection` field that would strip what the proxy adds or
/// relies on: `x-forwarded-for`, `-host` and `-proto`, a pseudo-header, or ten tokens and
/// more (`400`, its codec reply). Naming `host` removes it, and a request without a host
/// is refused after the codec (a bare `400`): the caller's to do. Every `Connection` line
/// counts.
/// An absolute-form target (`absolute`) names the authority itself, so `host` may go.
/// `Ok(true)`: `host` is named (Envoy removes it, so its value is never checked) and the
/// request is to be refused once the codec's checks pass.
pub fn check_connection(headers: &HeaderMap, absolute: bool) -> Result<bool, CodecError> {
    let mut tokens = 0;
    let mut names_host = false;
    for value in headers.get_all(header::CONNECTION) {
        for token in value.as_bytes().split(|&b| b == b',') {
            let token = token.trim_ascii();
            if token.is_empty() {
                continue;
            }
            tokens += 1;
            let protected = token.first() == Some(&b':')
                || [
                    &b"x-forwarded-for"[..],
                    b"x-forwarded-host",
                    b"x-forwarded-proto",
                ]
                .iter()
                .any(|p| token.eq_ignore_ascii_case(p));
            if protected {
                return Err(CodecError::bad(
                    "connection header nominates a protected field",
                ));
            }
            names_host |= token.eq_ignore_ascii_case(b"host");
        }
    }
    if tokens > MAX_CONNECTION_TOKENS {
        return Err(CodecError::bad(
            "connection header nominates too many fields",
        ));
    }
    Ok(names_host && !absolute)
}

/// Checks an absolute-form target (`scheme://authority/path`) as Envoy's codec does and
/// returns it without userinfo: the scheme is `http` or `https` in any case (`https` over
/// a plaintext connection is `403`), the authority is not empty and valid, a port is
/// 0–65535. `http://user@host/` names `host` (the userinfo is dropped, as Envoy sends
/// the upstream `host`), never `user@host`.
pub fn absolute_form(target: Bytes) -> Result<Bytes, CodecError> {
    let invalid = || CodecError::bad("invalid absolute url");
    let Some(sep) = target.windows(3).position(|w| w == b"://") else {
        return Err(invalid());
    };
    let scheme = &target[..sep];
    if scheme.eq_ignore_ascii_case(b"https") {
        return Err(CodecError::forbidden("https url on a plaintext connection"));
    }
    if !scheme.eq_ignore_ascii_case(b"http") {
        return Err(invalid());
    }
    let start = sep + 3;
    let end = target[start..]
        .iter()
        .position(|&b| b == b'/' || b == b'?')
        .map_or(target.len(), |i| start + i);
    let authority = &target[start..end];
    let userinfo = authority.iter().rposition(|&b| b == b'@');
    let host_port = userinfo.map_or(authority, |at| &authority[at + 1..]);
    // RFC 3986 userinfo: unreserved, percent-encoded, sub-delims and `:` (Envoy refuses a
    // second `@`, or a bracket, there).
    let userinfo_ok = userinfo.is_none_or(|at| {
        authority[..at]
            .iter()
            .all(|&b| b.is_ascii_alphanumeric() || b"-._~%!$&'()*+,;=:".contains(&b))
    });
    if !userinfo_ok {
        return Err(invalid());
    }
    // Envoy's URL parser takes a narrower host than a Host field may hold: letters,
    // digits, `-`, `.`, `%` and an IPv6 literal's `[`, `:`, `]` (no `_`, `~` or
    // sub-delims); the userinfo it drops may hold anything an authority may.
    let host_ok = host_port.iter().all(|&b| {
        b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'%' | b'[' | b']' | b':')
    });
    if host_port.is_empty() || !host_ok || !is_valid_authority(authority) || !valid_port(host_port)
    {
        return Err(invalid());
    }
    let Some(at) = userinfo else {
        return Ok(target);
    };
    let mut out = BytesMut::with_capacity(target.len());
    out.extend_from_slice(&target[..start]);
    out.extend_from_slice(&target[start + at + 1..]);
    Ok(out.freeze())
}

/// Whether the port of `host[:port]` (or `[v6]:port`), if any, is a number up to 65535.
fn valid_port(host_port: &[u8]) -> bool {
    let after_host = match host_port.iter().rposition(|&b| b == b']') {
        Some(close) => &host_port[close + 1..],
        None => host_port,
    };
    let Some(colon) = after_host.iter().rposition(|&b| b == b':') else {
        return true;
    };
    let port = &after_host[colon + 1..];
    !port.is_empty()
        && port.len() <= 5
        && port.iter().all(u8::is_ascii_digit)
        && port.iter().fold(0u32, |n, d| n * 10 + u32::from(d - b'0')) <= 65535
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::{HeaderName, HeaderValue};

    #[test]
    fn authority_characters() {
        for ok in [
            &b"h"[..],
            b"h:80",
            b"[::1]:80",
            b"a@h",
            b"h%20x",
            b"h:99999",
            b"",
        ] {
            assert!(is_valid_authority(ok), "{ok:?}");
        }
        for bad in [
            &b"h/x"[..],
            b"h x",
            b"h?",
            b"h#",
            b"h\\",
            b"h\"",
            b"<h>",
            b"h\t",
            b"h{}",
            b"h|^",
        ] {
            assert!(!is_valid_authority(bad), "{bad:?}");
        }
    }

    #[test]
    fn absolute_targets() {
        let ok = |t: &str| {
            absolute_form(Bytes::copy_from_slice(t.as_bytes()))
                .map(|b| String::from_utf8_lossy(&b).into_owned())
        };
        assert_eq!(ok("http://u:p@h/x").as_deref(), Ok("http://h/x"));
        assert_eq!(ok("http://h@evil/").as_deref(), Ok("http://evil/"));
        assert_eq!(ok("HTTP://h:0/").as_deref(), Ok("HTTP://h:0/"));
        assert_eq!(ok("http://[::1]:80/").as_deref(), Ok("http://[::1]:80/"));
        for bad in [
            "ftp://h/",
            "://h/",
            "http:///x",
            "http://h:/",
            "http://h:99999/",
            "http://h:8a/",
            "http://h{/",
            "http://h_y/",
            "http://h~y/",
            "http://h,y/",
        ] {
            assert_eq!(ok(bad).map_err(|e| e.status.as_u16()), Err(400), "{bad}");
        }
        assert_eq!(ok("https://h/").map_err(|e| e.status.as_u16()), Err(403));
    }

    #[test]
    fn connection_nominations() {
        let check = |values: &[&'static str]| {
            let mut h = HeaderMap::new();
            for v in values {
                h.append(header::CONNECTION, HeaderValue::from_static(v));
            }
            check_connection(&h, false).map_err(|e| (e.status.as_u16(), e.bare))
        };
        assert_eq!(check(&["keep-alive, x-a, te"]), Ok(false));
        assert_eq!(check(&["a,b,c,d,e,f,g,h,i"]), Ok(false));
        assert_eq!(check(&["a,b,c,d,e", "f,g,h,i,j"]), Err((400, false)));
        assert_eq!(check(&["X-Forwarded-For"]), Err((400, false)));
        assert_eq!(check(&[":path"]), Err((400, false)));
        assert_eq!(check(&["host"]), Ok(true));
        assert_eq!(check(&["x-a, ,x-b,,,,,,,,,,"]), Ok(false));
    }

    #[test]
    fn repeated_lines_of_envoys_single_fields_are_joined() {
        let mut h = HeaderMap::new();
        for (k, v) in [
            ("x-forwarded-for", "1.1.1.1"),
            ("x-forwarded-for", "2.2.2.2"),
            ("cookie", "a"),
            ("cookie", "b"),
            ("accept", "a"),
            ("accept", "b"),
        ] {
            h.append(HeaderName::from_static(k), HeaderValue::from_static(v));
        }
        join_repeated(&mut h);
        assert_eq!(
            h.get_all("x-forwarded-for").iter().collect::<Vec<_>>(),
            ["1.1.1.1,2.2.2.2"]
        );
        assert_eq!(h.get_all("accept").iter().collect::<Vec<_>>(), ["a,b"]);
        assert_eq!(h.get_all("cookie").iter().count(), 2);
    }
}
