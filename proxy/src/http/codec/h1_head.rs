//! An HTTP/1.1 message head, parsed by `httparse`, turned into an owned header map that
//! shares the read buffer's bytes, with the fields that frame the message noted on the way.
//!
//! Shared by the downstream server codec ([`crate::http::codec::downstream_h1`]) and the upstream client
//! ([`crate::http::codec::upstream_h1`]). Per message this is the proxy's busiest code, so it avoids what
//! a plain conversion would cost: no field bytes are copied (values are slices of the head),
//! the fields' offsets go to a scratch list the worker keeps, the header map comes from the
//! worker's spare maps ([`crate::http::codec::header_map_pool`]), and framing needs no lookups afterwards.

use std::cell::Cell;
use std::ops::Range;

use bytes::{Bytes, BytesMut};
use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http::Version;

use crate::http::codec::fields::{has_token, is_response_hop_by_hop, is_valid_authority};
use crate::http::codec::header_map_pool;
use crate::protocol::header_case::HeaderCase;
use crate::protocol::key_format::PreserveCase;

thread_local! {
    /// Field offsets of the head being split off: kept between heads so that parsing one
    /// allocates nothing.
    static FIELD_SPANS: Cell<Vec<(Range<usize>, Range<usize>)>> = const { Cell::new(Vec::new()) };
}

/// What a head's framing fields say, noted as the head is split off.
#[derive(Debug, Default)]
pub(crate) struct FramingFields {
    /// The first `Content-Length` value.
    pub content_length: Option<HeaderValue>,
    /// How many `Content-Length` fields there are.
    pub content_length_fields: usize,
    /// The last `Transfer-Encoding` value.
    pub transfer_encoding: Option<HeaderValue>,
    /// How many `Transfer-Encoding` fields there are.
    pub transfer_encoding_fields: usize,
    /// A `Connection` token is `close`.
    pub close: bool,
    /// A `Connection` token is `keep-alive`.
    pub keep_alive: bool,
    /// `Expect: 100-continue`.
    pub expect_continue: bool,
    /// How many `Host` fields there are (a request's).
    pub host_fields: usize,
    /// A `Host` value holds a character an authority may not hold.
    pub host_invalid: bool,
    /// How many `Connection` fields there are.
    pub connection_fields: usize,
    /// Some field name came more than once.
    pub repeated: bool,
}

impl FramingFields {
    /// Whether the peer allows the connection to carry another message: `close` always
    /// wins; otherwise `keep-alive` or HTTP/1.1's default.
    pub fn keeps_alive(&self, version: Version) -> bool {
        !self.close && (self.keep_alive || version == Version::HTTP_11)
    }

    fn note(&mut self, name: &HeaderName, value: &HeaderValue) {
        if name == header::CONTENT_LENGTH {
            if self.content_length.is_none() {
                self.content_length = Some(value.clone());
            }
            self.content_length_fields += 1;
        } else if name == header::TRANSFER_ENCODING {
            self.transfer_encoding = Some(value.clone());
            self.transfer_encoding_fields += 1;
        } else if name == header::CONNECTION {
            self.connection_fields += 1;
            self.close |= has_token(value, b"close");
            self.keep_alive |= has_token(value, b"keep-alive");
        } else if name == header::EXPECT {
            self.expect_continue |= value.as_bytes().eq_ignore_ascii_case(b"100-continue");
        } else if name == header::HOST {
            self.host_fields += 1;
            self.host_invalid |= !is_valid_authority(value.as_bytes());
        }
    }
}

/// A head split off the read buffer.
pub(crate) struct SplitHead {
    /// The request target's bytes (empty for a response).
    pub target: Bytes,
    /// The header fields (without a response's hop-by-hop ones when asked to drop them).
    pub headers: HeaderMap,
    /// What the framing fields said.
    pub framing: FramingFields,
    /// The names as spelled, when asked to record them (`preserve_case`); boxed, as it
    /// is rare.
    pub case: Option<Box<HeaderCase>>,
}

/// Where a parsed head's target and header fields lie in the read buffer: recorded as
/// offsets so that, once the head is split off the buffer, the URI and the values share its
/// bytes (no copy).
pub(crate) struct HeadSpans {
    target: Option<Range<usize>>,
    fields: Vec<(Range<usize>, Range<usize>)>,
}

impl HeadSpans {
    /// Records the spans of `headers` (and of the request target, if any) inside `buf`.
    pub(crate) fn new(buf: &[u8], headers: &[httparse::Header<'_>], target: Option<&[u8]>) -> Self {
        let base = buf.as_ptr() as usize;
        let span = |s: &[u8]| {
            let at = s.as_ptr() as usize - base;
            at..at + s.len()
        };
        let mut fields = FIELD_SPANS.take();
        fields.clear();
        fields.extend(
            headers
                .iter()
                .map(|h| (span(h.name.as_bytes()), span(h.value))),
        );
        HeadSpans {
            target: target.map(span),
            fields,
        }
    }

    /// Splits the `len` bytes of the head off `buf` into a [`SplitHead`], the header map
    /// with room for `room` more fields (what the proxy adds, so that the map does not grow
    /// and rehash on the way). `drop_hop_by_hop`: a response's connection-level fields are
    /// noted for framing but left out of the map, as the proxy would strip them anyway.
    /// `case`: the names' spellings are recorded too (slices of the head, no copy).
    pub(crate) fn split_off(
        self,
        buf: &mut BytesMut,
        len: usize,
        room: usize,
        drop_hop_by_hop: bool,
        case: Option<PreserveCase>,
    ) -> Result<SplitHead, &'static str> {
        let HeadSpans { target, mut fields } = self;
        let head = buf.split_to(len).freeze();
        let mut headers = header_map_pool::take(fields.len() + room);
        let mut framing = FramingFields::default();
        // Apart from the main loop, which stays as lean as without it.
        let case = case.map(|c| record_case(&head, &fields, c));
        for (name, value) in fields.drain(..) {
            let name = HeaderName::from_bytes(&head[name]).map_err(|_| "invalid header name")?;
            let value = HeaderValue::from_maybe_shared(head.slice(value))
                .map_err(|_| "invalid header value")?;
            framing.note(&name, &value);
            if !(drop_hop_by_hop && is_response_hop_by_hop(&name)) {
                framing.repeated |= headers.append(name, value);
            }
        }
        FIELD_SPANS.set(fields);
        let target = target.map_or_else(Bytes::new, |t| head.slice(t));
        Ok(SplitHead {
            target,
            headers,
            framing,
            case,
        })
    }
}

/// The names of `fields` as spelled in `head` (slices of it, no copy).
#[cold]
fn record_case(
    head: &Bytes,
    fields: &[(Range<usize>, Range<usize>)],
    c: PreserveCase,
) -> Box<HeaderCase> {
    let mut case = HeaderCase::new(c.others_proper_case, fields.len());
    for (name, _) in fields {
        case.record(head.slice(name.clone()));
    }
    Box::new(case)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn split(raw: &[u8], drop_hop_by_hop: bool) -> SplitHead {
        let mut buf = BytesMut::from(raw);
        let mut slots = [httparse::EMPTY_HEADER; 16];
        let mut resp = httparse::Response::new(&mut slots);
        let len = match resp.parse(&buf) {
            Ok(httparse::Status::Complete(len)) => len,
            other => panic!("not a complete head: {other:?}"),
        };
        let spans = HeadSpans::new(&buf, resp.headers, None);
        spans
            .split_off(&mut buf, len, 0, drop_hop_by_hop, None)
            .expect("valid head")
    }

    #[test]
    fn framing_fields_are_noted_and_hop_by_hop_ones_dropped_on_request() {
        let raw = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nConnection: Keep-Alive, X-A\r\n\
                    Keep-Alive: timeout=5\r\nTransfer-Encoding: gzip\r\nTransfer-Encoding: chunked\r\n\
                    X-A: 1\r\nExpect: 100-Continue\r\n\r\nok";
        let kept = split(raw, false);
        assert_eq!(kept.headers.len(), 7);
        let dropped = split(raw, true);
        let names: Vec<&str> = dropped.headers.keys().map(|n| n.as_str()).collect();
        assert_eq!(names, ["content-length", "x-a", "expect"]);
        let f = &dropped.framing;
        assert_eq!(
            f.content_length.as_ref().map(|v| v.as_bytes()),
            Some(&b"2"[..])
        );
        assert_eq!(
            (f.content_length_fields, f.transfer_encoding_fields),
            (1, 2)
        );
        assert_eq!(
            f.transfer_encoding.as_ref().map(|v| v.as_bytes()),
            Some(&b"chunked"[..])
        );
        assert!(f.keep_alive && !f.close && f.expect_continue);
        assert!(f.keeps_alive(Version::HTTP_10));
    }

    #[test]
    fn close_wins_over_keep_alive() {
        let head = split(
            b"HTTP/1.1 200 OK\r\nconnection: close\r\nconnection: keep-alive\r\n\r\n",
            true,
        );
        assert!(head.headers.is_empty());
        assert!(!head.framing.keeps_alive(Version::HTTP_11));
        let head = split(b"HTTP/1.0 200 OK\r\n\r\n", true);
        assert!(!head.framing.keeps_alive(Version::HTTP_10));
        assert!(head.framing.keeps_alive(Version::HTTP_11));
    }
}
