//! HTTP/1.1 from downstream clients, sans I/O: request heads parsed and checked as Envoy's
//! codec checks them, response heads encoded. [`crate::http::codec::h1_server`] drives it on a socket.
//!
//! What a request head must satisfy (each failure is Envoy's local reply, and the
//! connection closes after it):
//!
//! - a valid request line and header fields (`httparse`: no obs-fold, no whitespace before
//!   the colon, no control characters, no NUL), else `400`; a version other than 1.0 or
//!   1.1, `426`;
//! - at most `max_headers_count` fields and `max_request_headers_kb` of head, else `431`;
//! - at most one `Content-Length`, all digits, else `400` (Envoy rejects even a repeated
//!   equal value);
//! - `Transfer-Encoding` only with HTTP/1.1, never with `Content-Length` (`400`), and only
//!   `chunked` (anything else is `501`).

use std::cell::RefCell;
use std::mem::MaybeUninit;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bytes::{BufMut, BytesMut};
use http::header::{self, HeaderMap, HeaderValue};
use http::{Method, StatusCode, Uri, Version};
use percent_encoding::{percent_encode, AsciiSet};

pub use crate::http::codec::codec_error::CodecError;
use crate::http::codec::h1_head::{FramingFields, HeadSpans, SplitHead};
use crate::http::codec::request_fields;
use crate::http::codec::upstream_h1::BodyDecoder;
use crate::protocol::header_case::HeaderCase;
use crate::protocol::key_format::KeyFormat;

/// Header fields parsed on the stack before falling back to the heap.
const STACK_FIELDS: usize = 128;

/// Limits from the connection manager's config.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// `common_http_protocol_options.max_headers_count`.
    pub max_headers: usize,
    /// `max_request_headers_kb`, in bytes (the request line and header fields).
    pub max_head_bytes: usize,
    /// `http_protocol_options.accept_http_10`.
    pub accept_http_10: bool,
    /// `http_protocol_options.allow_chunked_length`: a chunked request may also carry
    /// `content-length`, which is then dropped.
    pub allow_chunked_length: bool,
    /// `http_protocol_options.header_key_format`'s `preserve_case`: the request's names
    /// are recorded as spelled.
    pub preserve_case: Option<crate::protocol::key_format::PreserveCase>,
}

/// A request head that passed the codec's checks.
pub struct RequestHead {
    /// Method, target, version and header fields.
    pub parts: http::request::Parts,
    /// The body's framing; `None` when the request has no body.
    pub body: Option<BodyDecoder>,
    /// Whether the client allows the connection to carry another request.
    pub keep_alive: bool,
    /// `Expect: 100-continue` on a request with a body.
    pub expect_continue: bool,
}

/// Parses a request head off the front of `buf` once it is complete (`None` until then).
pub fn parse_request_head(
    buf: &mut BytesMut,
    limits: &Limits,
) -> Result<Option<RequestHead>, CodecError> {
    // Uninitialised slots: zeroing room for 100 fields would cost more than parsing five.
    let mut stack = [const { MaybeUninit::<httparse::Header<'_>>::uninit() }; STACK_FIELDS];
    let mut heap = Vec::new();
    let slots = if limits.max_headers <= STACK_FIELDS {
        &mut stack[..limits.max_headers]
    } else {
        heap.resize_with(limits.max_headers, MaybeUninit::uninit);
        &mut heap[..]
    };
    let mut req = httparse::Request::new(&mut []);
    let parsed =
        httparse::ParserConfig::default().parse_request_with_uninit_headers(&mut req, buf, slots);
    let len = match parsed {
        Ok(httparse::Status::Complete(len)) => len,
        Ok(httparse::Status::Partial) if buf.len() > limits.max_head_bytes => {
            return Err(CodecError::too_large())
        }
        Ok(httparse::Status::Partial) => return Ok(None),
        Err(httparse::Error::TooManyHeaders) => return Err(CodecError::too_large()),
        Err(httparse::Error::Version) if names_other_version(buf) => {
            return Err(CodecError::upgrade_required())
        }
        Err(_) => return Err(CodecError::bad("malformed request head")),
    };
    if len > limits.max_head_bytes {
        return Err(CodecError::too_large());
    }
    // What Envoy's connection manager refuses (a bare `400`) is found here too, but
    // answered only once the codec's own checks have passed, as in Envoy, where they come
    // first.
    let mut refusal: Option<CodecError> = None;
    let method = match request_method(req.method.unwrap_or_default()) {
        Ok(m) => m,
        Err(e) if e.bare => {
            refusal = Some(e);
            Method::GET
        }
        Err(e) => return Err(e),
    };
    let version = match req.version {
        Some(0) if !limits.accept_http_10 => return Err(CodecError::upgrade_required()),
        Some(0) => Version::HTTP_10,
        _ => Version::HTTP_11,
    };
    let target = req.path.unwrap_or_default().as_bytes();
    // Raw non-ASCII bytes and a fragment have no place in a request target (RFC 9112
    // §3.2), and the `http` crate would take the one and drop the other. Envoy's codec
    // refuses the first, its connection manager the second.
    if target.iter().any(|&b| b >= 0x80) {
        return Err(CodecError::bad("non-ASCII byte in the target"));
    }
    if target.contains(&b'#') {
        refusal = refusal.or(Some(CodecError::refused("fragment in the target")));
    }
    // Origin form (`/path`), absolute form (`http://host/path`), OPTIONS' `*`, or
    // CONNECT's authority form: anything else (`GET host:80`, `GET path`) would be read as
    // an authority and override the Host header, so Envoy's codec refuses it, and so does
    // this one.
    // (A `://` inside an origin-form target's query does not make it absolute.)
    let absolute = !target.starts_with(b"/") && target.windows(3).any(|w| w == b"://");
    let asterisk = target == b"*" && method == Method::OPTIONS;
    if method == Method::CONNECT {
        if !is_authority_with_port(target) {
            return Err(CodecError::bad("CONNECT target is not host:port"));
        }
    } else if !(target.starts_with(b"/") || asterisk || absolute) {
        return Err(CodecError::bad("request target in authority form"));
    }
    let spans = HeadSpans::new(buf, req.headers, Some(target));
    let SplitHead {
        target,
        mut headers,
        framing,
        case,
    } = spans
        .split_off(buf, len, 8, false, limits.preserve_case)
        .map_err(CodecError::bad)?;
    if framing.host_fields > 1 {
        // Envoy's header map keeps one `Host`, the values comma-joined.
        crate::http::codec::fields::join_fields(&mut headers, &header::HOST, b",");
    }
    if framing.repeated {
        request_fields::join_repeated(&mut headers);
    }
    // An upgrade's `Connection` goes upstream as it came (Envoy checks no nomination); an
    // `h2c` one is no upgrade to Envoy (its codec drops it), so it is checked.
    let mut host_nominated = false;
    if framing.connection_fields > 0 && !request_fields::is_upgrade_kept(&headers) {
        host_nominated = request_fields::check_connection(&headers, absolute)?;
        if host_nominated {
            refusal = refusal.or(Some(CodecError::refused(
                "connection header nominates host",
            )));
        }
    }
    // An absolute-form target's authority replaces `Host`, so only that one is checked; a
    // nominated `Host` is gone before Envoy would check it.
    let target = if absolute {
        request_fields::absolute_form(target)?
    } else if framing.host_invalid && !host_nominated {
        return Err(CodecError::bad("invalid authority"));
    } else {
        target
    };
    let uri = target_uri(target, absolute)?;
    let body = body_framing(&framing, version, limits.allow_chunked_length)?;
    if method == Method::CONNECT && body.is_some() {
        // A CONNECT has no content (RFC 9110 §9.3.6): Envoy's codec refuses a coding
        // (`501`) or a length other than 0 (`400`).
        return Err(if framing.transfer_encoding.is_some() {
            CodecError {
                status: StatusCode::NOT_IMPLEMENTED,
                ..CodecError::bad("transfer-encoding on CONNECT")
            }
        } else {
            CodecError::bad("content-length on CONNECT")
        });
    }
    if framing.transfer_encoding.is_some() && framing.content_length_fields > 0 {
        // Allowed: chunked framing wins and the length goes, as Envoy forwards it.
        headers.remove(header::CONTENT_LENGTH);
    }
    if let Some(e) = refusal {
        return Err(e);
    }
    let keep_alive = framing.keeps_alive(version);
    // Envoy answers `100 Continue` to any HTTP/1.1 request that expects it, body or not.
    // Repeated `Expect` lines are one joined value, which is then not `100-continue`.
    let expect_continue = version == Version::HTTP_11
        && framing.expect_continue
        && headers
            .get(header::EXPECT)
            .is_some_and(|v| v.as_bytes().eq_ignore_ascii_case(b"100-continue"));
    let mut parts = http::Request::new(()).into_parts().0;
    parts.method = method;
    parts.uri = uri;
    parts.version = version;
    parts.headers = headers;
    if let Some(case) = case {
        parts.extensions.insert(*case);
    }
    Ok(Some(RequestHead {
        parts,
        body,
        keep_alive,
        expect_continue,
    }))
}

/// Whether a CONNECT target is an authority with a port (`host:443`, `[::1]:443`), the only
/// form Envoy's codec takes for CONNECT (`host`, `host:`, `:443`, `host:99999`,
/// `user@host:443` and `host:443/x` get `400`).
fn is_authority_with_port(target: &[u8]) -> bool {
    let Some(colon) = target.iter().rposition(|&b| b == b':') else {
        return false;
    };
    let (host, port) = (&target[..colon], &target[colon + 1..]);
    // Leading zeros are fine (`h:0080`), as in Envoy.
    let port_ok = !port.is_empty()
        && port.iter().all(u8::is_ascii_digit)
        && port.iter().fold(0u32, |n, d| {
            n.saturating_mul(10).saturating_add(u32::from(d - b'0'))
        }) <= 65535;
    let bracketed = host.first() == Some(&b'[');
    let host_ok = !host.is_empty()
        && bracketed == (host.last() == Some(&b']'))
        && !host.iter().any(|b| matches!(b, b'@' | b'/' | b'?'))
        && (bracketed || !host.contains(&b':'));
    port_ok && host_ok
}

/// Characters Envoy forwards in a request path but the `http` crate's URI grammar
/// refuses: percent-encoded instead (`%3C`), which every URI decoder reads as the same path.
const PATH_ESCAPES: &AsciiSet = &AsciiSet::EMPTY.add(b'<').add(b'>').add(b'`');
/// The same for a query: `"` is refused there too (a backtick is not).
const QUERY_ESCAPES: &AsciiSet = &AsciiSet::EMPTY.add(b'<').add(b'>').add(b'"');

/// The request target as a URI. Envoy's codec forwards `<`, `>` and a backtick in a path,
/// and `"`, `<` and `>` in a query; the `http` crate's URI refuses them, so they are
/// percent-encoded rather than refused (a documented difference: Envoy forwards them
/// raw). The common target is parsed as it is, without a copy.
fn target_uri(target: bytes::Bytes, absolute: bool) -> Result<Uri, CodecError> {
    let invalid = |_| CodecError::bad("invalid target");
    if !target
        .iter()
        .any(|b| matches!(b, b'<' | b'>' | b'`' | b'"'))
    {
        return Uri::from_maybe_shared(target).map_err(invalid);
    }
    // The path starts after an absolute URL's authority.
    let path_start = if absolute {
        let after_scheme = target
            .windows(3)
            .position(|w| w == b"://")
            .map_or(0, |i| i + 3);
        target[after_scheme..]
            .iter()
            .position(|b| matches!(b, b'/' | b'?'))
            .map_or(target.len(), |i| after_scheme + i)
    } else {
        0
    };
    let query_start = target[path_start..]
        .iter()
        .position(|&b| b == b'?')
        .map_or(target.len(), |i| path_start + i);
    let mut escaped = String::with_capacity(target.len() + 8);
    // The target is ASCII (checked above), so every byte is a char.
    escaped.extend(target[..path_start].iter().map(|&b| char::from(b)));
    escaped.extend(percent_encode(
        &target[path_start..query_start],
        PATH_ESCAPES,
    ));
    escaped.extend(percent_encode(&target[query_start..], QUERY_ESCAPES));
    Uri::try_from(escaped).map_err(invalid)
}

/// The methods Envoy's HTTP/1 codec accepts, the common ones first (measured against
/// Envoy 1.40; its codec answers any other token, `get` or `M-SEARCH` included, `400`).
const ACCEPTED_METHODS: [&str; 34] = [
    "GET",
    "POST",
    "HEAD",
    "PUT",
    "DELETE",
    "OPTIONS",
    "PATCH",
    "TRACE",
    "CONNECT",
    "ACL",
    "BIND",
    "CHECKOUT",
    "COPY",
    "LINK",
    "LOCK",
    "MERGE",
    "MKACTIVITY",
    "MKCALENDAR",
    "MKCOL",
    "MOVE",
    "MSEARCH",
    "NOTIFY",
    "PROPFIND",
    "PROPPATCH",
    "PURGE",
    "REBIND",
    "REPORT",
    "SEARCH",
    "SOURCE",
    "SUBSCRIBE",
    "UNBIND",
    "UNLINK",
    "UNLOCK",
    "UNSUBSCRIBE",
];

/// A request line's method, if Envoy would take it.
fn request_method(token: &str) -> Result<Method, CodecError> {
    if !ACCEPTED_METHODS.contains(&token) {
        // Envoy's codec reads `QUERY`, but its connection manager then refuses it.
        return Err(if token == "QUERY" {
            CodecError::refused("QUERY method")
        } else {
            CodecError::bad("invalid method")
        });
    }
    Method::from_bytes(token.as_bytes()).map_err(|_| CodecError::bad("invalid method"))
}

/// A status line's reason phrase, as Envoy writes it whatever the upstream sent: the
/// registered phrase, with Envoy's own for a few codes and `Unknown` for the rest.
pub fn reason_phrase(status: StatusCode) -> &'static str {
    match status.as_u16() {
        203 => "Non-Authoritative Information",
        102 | 103 | 418 | 451 => "Unknown",
        599 => "Last Unassigned Server Error Code",
        _ => status.canonical_reason().unwrap_or("Unknown"),
    }
}

/// Whether the request line is well formed but for its version (`HTTP/2.0`, `HTTP/1.2`):
/// Envoy answers those `426`, and anything else malformed `400`.
fn names_other_version(buf: &[u8]) -> bool {
    let line = buf.split(|b| *b == b'\n').next().unwrap_or_default();
    let line = line.strip_suffix(b"\r").unwrap_or(line);
    let mut words = line.split(|b| *b == b' ');
    let (Some(_method), Some(_target), Some(version), None) =
        (words.next(), words.next(), words.next(), words.next())
    else {
        return false;
    };
    matches!(version, [b'H', b'T', b'T', b'P', b'/', major, b'.', minor]
        if major.is_ascii_digit() && minor.is_ascii_digit())
}

/// The request body's framing, as Envoy's codec accepts it.
fn body_framing(
    fields: &FramingFields,
    version: Version,
    allow_chunked_length: bool,
) -> Result<Option<BodyDecoder>, CodecError> {
    if let Some(te) = &fields.transfer_encoding {
        if version == Version::HTTP_10 {
            return Err(CodecError::bad("transfer-encoding in an HTTP/1.0 request"));
        }
        // Envoy (without `allow_chunked_length`) refuses the smuggling ambiguity outright.
        if fields.content_length_fields > 0 && !allow_chunked_length {
            return Err(CodecError::bad("both content-length and transfer-encoding"));
        }
        if fields.transfer_encoding_fields > 1 || !te.as_bytes().eq_ignore_ascii_case(b"chunked") {
            return Err(CodecError {
                status: StatusCode::NOT_IMPLEMENTED,
                reason: "transfer-encoding other than chunked",
                bare: false,
            });
        }
        return Ok(Some(BodyDecoder::chunked()));
    }
    let Some(value) = &fields.content_length else {
        return Ok(None);
    };
    if fields.content_length_fields > 1 {
        return Err(CodecError::bad("repeated content-length"));
    }
    let digits = value.as_bytes();
    if digits.is_empty() || digits.len() > 19 || !digits.iter().all(u8::is_ascii_digit) {
        return Err(CodecError::bad("invalid content-length"));
    }
    let n = digits
        .iter()
        .fold(0u64, |n, d| n * 10 + u64::from(d - b'0'));
    Ok((n > 0).then(|| BodyDecoder::with_length(n)))
}

/// What a response's own fields say about its framing on the downstream connection.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct ResponseFields {
    /// Its `Content-Length`, when that is one valid number.
    pub content_length: Option<u64>,
    /// A `Connection` token is `close`.
    pub close: bool,
}

/// Reads a response's framing fields in one pass over its headers (cheaper than a hashed
/// lookup per name for the handful of fields a response has).
pub fn response_fields(headers: &HeaderMap) -> ResponseFields {
    let mut fields = ResponseFields::default();
    let mut lengths = 0;
    for (name, value) in headers {
        if name == header::CONTENT_LENGTH {
            lengths += 1;
            fields.content_length = std::str::from_utf8(value.as_bytes())
                .ok()
                .and_then(|s| s.parse().ok());
        } else if name == header::CONNECTION {
            fields.close |= crate::http::codec::fields::has_token(value, b"close");
        }
    }
    if lengths > 1 {
        // Repeated: the body's own length decides.
        fields.content_length = None;
    }
    fields
}

/// How a response body is delimited on the wire.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ResponseFraming {
    /// No body is written (`HEAD`, `1xx`, `204`, `304`).
    None,
    /// Exactly this many bytes.
    Length(u64),
    /// Chunked transfer coding.
    Chunked,
    /// A HEAD response without a length: `transfer-encoding: chunked` is announced (the
    /// coding a GET would get), no body is written, as Envoy's codec does.
    HeadChunked,
    /// Until the connection closes (HTTP/1.0 clients with a body of unknown length).
    UntilClose,
}

/// What the connection says in the response's `Connection` header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ConnectionHeader {
    /// Nothing (HTTP/1.1 keep-alive).
    Omit,
    /// `keep-alive` (an HTTP/1.0 client that asked for it).
    KeepAlive,
    /// `close`.
    Close,
    /// The response's own (`upgrade` on a `101`).
    AsGiven,
}

/// Encodes a response head: status line (`HTTP/1.0` when `parts.version` says so, else
/// `HTTP/1.1`), the response's fields except the hop-by-hop ones
/// the connection decides (`connection`, `keep-alive`, `transfer-encoding`), the framing,
/// and `date` when the response has none.
pub fn encode_response_head(
    out: &mut BytesMut,
    parts: &http::response::Parts,
    framing: ResponseFraming,
    connection: ConnectionHeader,
    keys: KeyFormat,
) {
    out.reserve(256);
    out.put_slice(if parts.version == Version::HTTP_10 {
        b"HTTP/1.0 "
    } else {
        b"HTTP/1.1 "
    });
    // The names the response came with (an upstream's, under its cluster's
    // `preserve_case`), whatever this side's format.
    let case = parts.extensions.get::<HeaderCase>();
    out.put_slice(parts.status.as_str().as_bytes());
    out.put_u8(b' ');
    match case.and_then(HeaderCase::reason) {
        Some(reason) => out.put_slice(reason),
        None => out.put_slice(reason_phrase(parts.status).as_bytes()),
    }
    out.put_slice(b"\r\n");
    let mut has_length = false;
    let mut has_date = false;
    for (name, value) in &parts.headers {
        if (name == header::CONNECTION && connection != ConnectionHeader::AsGiven)
            || name == header::TRANSFER_ENCODING
            || name.as_str() == "keep-alive"
        {
            continue;
        }
        has_length |= name == header::CONTENT_LENGTH;
        has_date |= name == header::DATE;
        put_field(out, keys, case, name.as_str().as_bytes(), value.as_bytes());
    }
    match framing {
        ResponseFraming::Length(n) if !has_length => {
            put_field(
                out,
                keys,
                case,
                b"content-length",
                crate::http::codec::fields::decimal_value(n).as_bytes(),
            );
        }
        ResponseFraming::Chunked | ResponseFraming::HeadChunked => {
            put_field(out, keys, case, b"transfer-encoding", b"chunked")
        }
        _ => {}
    }
    if !has_date {
        DATE.with_borrow_mut(|d| put_field(out, keys, case, b"date", d.now()));
    }
    match connection {
        ConnectionHeader::Omit | ConnectionHeader::AsGiven => {}
        ConnectionHeader::KeepAlive => put_field(out, keys, case, b"connection", b"keep-alive"),
        ConnectionHeader::Close => put_field(out, keys, case, b"connection", b"close"),
    }
    out.put_slice(b"\r\n");
}

fn put_field(
    out: &mut BytesMut,
    keys: KeyFormat,
    case: Option<&HeaderCase>,
    name: &[u8],
    value: &[u8],
) {
    keys.put_name(out, name, case);
    out.put_slice(b": ");
    out.put_slice(value);
    out.put_slice(b"\r\n");
}

/// The `Date` value, formatted once a second per worker.
struct CachedDate {
    second: u64,
    value: HeaderValue,
}

impl CachedDate {
    fn now(&mut self) -> &[u8] {
        let now = SystemTime::now();
        let second = now
            .duration_since(UNIX_EPOCH)
            .unwrap_or(Duration::ZERO)
            .as_secs();
        if second != self.second {
            self.second = second;
            if let Ok(v) = HeaderValue::from_str(&httpdate::fmt_http_date(now)) {
                self.value = v;
            }
        }
        self.value.as_bytes()
    }
}

thread_local! {
    static DATE: RefCell<CachedDate> = const {
        RefCell::new(CachedDate {
            second: 0,
            value: HeaderValue::from_static(""),
        })
    };
}

#[cfg(test)]
mod tests {
    use super::*;

    const LIMITS: Limits = Limits {
        max_headers: 100,
        max_head_bytes: 60 * 1024,
        accept_http_10: true,
        allow_chunked_length: false,
        preserve_case: None,
    };

    fn parse(raw: &[u8]) -> Result<Option<RequestHead>, CodecError> {
        parse_request_head(&mut BytesMut::from(raw), &LIMITS)
    }

    fn status(raw: &[u8]) -> u16 {
        match parse(raw) {
            Ok(Some(_)) => 200,
            Ok(None) => 0,
            Err(e) => e.status.as_u16(),
        }
    }

    fn target(raw: &[u8]) -> String {
        match parse(raw) {
            Ok(Some(head)) => head.parts.uri.to_string(),
            other => panic!("{:?}", other.map(|h| h.map(|h| h.parts))),
        }
    }

    #[test]
    fn characters_the_uri_grammar_refuses_are_percent_encoded() {
        let cases: &[(&[u8], &str)] = &[
            (b"GET /a HTTP/1.1\r\n\r\n", "/a"),
            (b"GET /a<b>`c HTTP/1.1\r\n\r\n", "/a%3Cb%3E%60c"),
            // `"` is allowed in a path, a backtick in a query.
            (b"GET /a\"?q=\"<>` HTTP/1.1\r\n\r\n", "/a\"?q=%22%3C%3E`"),
            (
                b"GET http://h<x/p<?q=< HTTP/1.1\r\n\r\n",
                "http://h<x/p%3C?q=%3C",
            ),
        ];
        for (raw, want) in cases {
            if want.contains("h<x") {
                // `<` in an authority stays refused.
                assert_eq!(status(raw), 400);
            } else {
                assert_eq!(target(raw), *want, "{}", String::from_utf8_lossy(raw));
            }
        }
        assert_eq!(
            target(b"GET http://h/p<?q=\"x\" HTTP/1.1\r\n\r\n"),
            "http://h/p%3C?q=%22x%22"
        );
        // A URL in the query of an origin-form target.
        assert_eq!(
            target(b"GET /a<b?u=http://x/<y> HTTP/1.1\r\n\r\n"),
            "/a%3Cb?u=http://x/%3Cy%3E"
        );
    }

    #[test]
    fn connect_takes_only_an_authority_with_a_port() {
        let ok = ["h:80", "[::1]:443", "1.2.3.4:0", "h:065535", "h:00000080"];
        let bad = [
            "h",
            "h:",
            ":80",
            "h:99999",
            "h:99999999999",
            "h:+80",
            "h:80x",
            "a@h:80",
            "h:80/x",
            "/x",
            "[::1",
            "::1:80",
            "http://h:80",
        ];
        for t in ok {
            assert!(is_authority_with_port(t.as_bytes()), "{t}");
        }
        for t in bad {
            assert!(!is_authority_with_port(t.as_bytes()), "{t}");
            let raw = format!("CONNECT {t} HTTP/1.1\r\nhost: h\r\n\r\n");
            assert_eq!(status(raw.as_bytes()), 400, "{t}");
        }
    }

    #[test]
    fn smuggling_and_malformed_heads_get_envoys_status() {
        let cases: &[(&[u8], u16)] = &[
            (b"GET / HTTP/1.1\r\nhost: h\r\n\r\n", 200),
            (b"GET / HTTP/1.1\nhost: h\n\n", 200),
            (b"GARBAGE\r\n\r\n", 400),
            (b"G@T / HTTP/1.1\r\nhost: h\r\n\r\n", 400),
            (b"GET /a b HTTP/1.1\r\nhost: h\r\n\r\n", 400),
            (b"GET / HTTP/1.1\r\nhost: h\r\nx-a: b\x01c\r\n\r\n", 400),
            (b"GET / HTTP/1.1\r\nhost: h\r\nx-a : b\r\n\r\n", 400),
            (b"GET / HTTP/1.1\r\nhost: h\r\nx-a: b\r\n  folded\r\n\r\n", 400),
            (b"GET / HTTP/1.1\r\nhost: h\rx: y\r\n\r\n", 400),
            (b"GET / HTTP/1.2\r\nhost: h\r\n\r\n", 426),
            (b"GET / HTTP/2.0\r\nhost: h\r\n\r\n", 426),
            (b"POST / HTTP/1.1\r\ncontent-length: 3\r\ntransfer-encoding: chunked\r\n\r\n", 400),
            (b"POST / HTTP/1.1\r\ncontent-length: 3\r\ncontent-length: 4\r\n\r\n", 400),
            (b"POST / HTTP/1.1\r\ncontent-length: 4\r\ncontent-length: 4\r\n\r\n", 400),
            (b"POST / HTTP/1.1\r\ncontent-length: 4, 4\r\n\r\n", 400),
            (b"POST / HTTP/1.1\r\ncontent-length: +4\r\n\r\n", 400),
            (b"POST / HTTP/1.1\r\ntransfer-encoding: gzip\r\n\r\n", 501),
            (b"POST / HTTP/1.1\r\ntransfer-encoding: gzip, chunked\r\n\r\n", 501),
            (b"POST / HTTP/1.1\r\ntransfer-encoding: chunked\r\ntransfer-encoding: chunked\r\n\r\n", 501),
            (b"POST / HTTP/1.0\r\ntransfer-encoding: chunked\r\n\r\n", 400),
            (b"GET / HTTP/1.0\r\n\r\n", 200),
            (b"GET /a#frag HTTP/1.1\r\nhost: h\r\n\r\n", 400),
            (b"GET /\xc3\xa9 HTTP/1.1\r\nhost: h\r\n\r\n", 400),
            (b"GET / HTTP/1.1\r\nhost: h\r\n", 0),
        ];
        for (raw, want) in cases {
            assert_eq!(status(raw), *want, "{}", String::from_utf8_lossy(raw));
        }
    }

    #[test]
    fn chunked_with_a_length_is_refused_unless_allowed() {
        let raw = &b"POST / HTTP/1.1\r\nhost: h\r\ncontent-length: 3\r\ntransfer-encoding: chunked\r\n\r\n"[..];
        let r = parse_request_head(&mut BytesMut::from(raw), &LIMITS);
        assert_eq!(r.err().map(|e| e.status.as_u16()), Some(400));
        let allow = Limits {
            allow_chunked_length: true,
            ..LIMITS
        };
        let head = parse_request_head(&mut BytesMut::from(raw), &allow)
            .ok()
            .flatten()
            .expect("a head");
        assert!(head.body.is_some());
        assert!(!head.parts.headers.contains_key(header::CONTENT_LENGTH));
    }

    #[test]
    fn http_10_is_refused_unless_accepted() {
        let refuse = Limits {
            accept_http_10: false,
            ..LIMITS
        };
        let r = parse_request_head(
            &mut BytesMut::from(&b"POST / HTTP/1.0\r\ntransfer-encoding: chunked\r\n\r\n"[..]),
            &refuse,
        );
        assert_eq!(r.err().map(|e| e.status.as_u16()), Some(426));
    }

    #[test]
    fn limits_give_431() {
        let mut many = b"GET / HTTP/1.1\r\n".to_vec();
        for i in 0..101 {
            many.extend_from_slice(format!("x-{i}: v\r\n").as_bytes());
        }
        many.extend_from_slice(b"\r\n");
        assert_eq!(status(&many), 431);
        let big = format!("GET / HTTP/1.1\r\nx: {}\r\n\r\n", "a".repeat(61 * 1024));
        assert_eq!(status(big.as_bytes()), 431);
        // Still incomplete but already too large.
        let partial = format!("GET / HTTP/1.1\r\nx: {}", "a".repeat(61 * 1024));
        assert_eq!(status(partial.as_bytes()), 431);
    }

    #[test]
    fn head_fields_and_framing() {
        let mut buf = BytesMut::from(
            &b"POST /p?q=1 HTTP/1.1\r\nHost: h\r\nContent-Length: 5\r\nExpect: 100-continue\r\n\r\nhelloGET"[..],
        );
        let head = parse_request_head(&mut buf, &LIMITS)
            .expect("valid")
            .expect("complete");
        assert_eq!(head.parts.method, Method::POST);
        assert_eq!(
            head.parts.uri.path_and_query().map(|p| p.as_str()),
            Some("/p?q=1")
        );
        assert_eq!(head.parts.headers["host"], "h");
        assert_eq!(head.body.as_ref().and_then(|b| b.exact_len()), Some(5));
        assert!(head.keep_alive && head.expect_continue);
        // The body and the next request stay in the buffer.
        assert_eq!(&buf[..], b"helloGET");
        let head = parse(b"GET http://a.example/x HTTP/1.0\r\nconnection: keep-alive\r\n\r\n")
            .expect("valid")
            .expect("complete");
        assert_eq!(head.parts.version, Version::HTTP_10);
        assert_eq!(
            head.parts.uri.authority().map(|a| a.as_str()),
            Some("a.example")
        );
        assert!(head.keep_alive && head.body.is_none());
        let head =
            parse(b"GET / HTTP/1.1\r\nconnection: Keep-Alive, close\r\ncontent-length: 0\r\n\r\n")
                .expect("valid")
                .expect("complete");
        assert!(!head.keep_alive && head.body.is_none());
    }

    #[test]
    fn response_heads_carry_the_connections_framing() {
        let mut resp = http::Response::new(());
        resp.headers_mut()
            .insert(header::CONNECTION, HeaderValue::from_static("keep-alive"));
        resp.headers_mut()
            .insert(header::TRANSFER_ENCODING, HeaderValue::from_static("gzip"));
        resp.headers_mut().insert(
            header::DATE,
            HeaderValue::from_static("Thu, 01 Jan 1970 00:00:00 GMT"),
        );
        let (parts, ()) = resp.into_parts();
        let mut out = BytesMut::new();
        encode_response_head(
            &mut out,
            &parts,
            ResponseFraming::Chunked,
            ConnectionHeader::Close,
            KeyFormat::Lower,
        );
        assert_eq!(
            &out[..],
            &b"HTTP/1.1 200 OK\r\ndate: Thu, 01 Jan 1970 00:00:00 GMT\r\ntransfer-encoding: chunked\r\nconnection: close\r\n\r\n"[..]
        );
        let parts = http::Response::new(()).into_parts().0;
        let mut out = BytesMut::new();
        encode_response_head(
            &mut out,
            &parts,
            ResponseFraming::Length(2),
            ConnectionHeader::Omit,
            KeyFormat::ProperCase,
        );
        let text = String::from_utf8_lossy(&out);
        assert!(
            text.starts_with("HTTP/1.1 200 OK\r\nContent-Length: 2\r\nDate: "),
            "{text}"
        );
        assert!(text.ends_with(" GMT\r\n\r\n"), "{text}");
    }
}
