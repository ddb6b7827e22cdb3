//! HTTP/1.1 to upstreams, driven by the request that uses the connection.
//!
//! hyper's client runs each connection as a task of its own and hands every request to it
//! over channels; for a proxied request that was a third of the proxy's user-space work.
//! Here the request's own future writes the request and reads the response head, and the
//! response body reads the rest straight from the socket, then hands the connection back
//! to the pool. Used for requests whose body is already complete (none, or buffered for
//! retries); streamed request bodies and upgrades still go through hyper's client.
//!
//! Responses are parsed with `httparse` and framed as RFC 9112 §6.3 says: no body after
//! `HEAD`, `1xx`, `204` or `304`; `Transfer-Encoding: chunked` (trailers kept), which, as
//! in Envoy's codec, must be the only coding and come without a `Content-Length`; a
//! `Content-Length` must be one valid number (repeats must agree); with neither, the body
//! runs to the close. Anything else is a protocol error (Envoy's `502`) and the connection
//! is dropped.

use std::future::poll_fn;
use std::io::{self, Write as _};
use std::mem::MaybeUninit;
use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::{Buf, Bytes, BytesMut};
use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http::{Method, StatusCode, Version};
use hyper::body::Frame;

use crate::http::codec::fields::join_each;
use crate::http::codec::h1_head::{FramingFields, HeadSpans, SplitHead};
use crate::protocol::header_case::HeaderCase;
use crate::protocol::key_format::{KeyFormat, PreserveCase};
use crate::transport_socket::Transport;

/// Largest response head (status line and headers) accepted: Envoy's default
/// `max_response_headers_kb` is 60.
const MAX_HEAD: usize = 60 * 1024;
/// Most trailer fields accepted, and the response head fields parsed without allocating
/// (Envoy's default `max_headers_count`).
const MAX_HEADERS: usize = 100;
/// How much is read from the socket at a time.
const READ_CHUNK: usize = 16 * 1024;
/// The first read of a connection, on the stack (most request heads fit).
const FIRST_READ: usize = 2048;

/// Why a request got no usable response.
#[derive(Debug, thiserror::Error)]
pub enum H1Error {
    /// Reading the socket failed.
    #[error("upstream connection: {0}")]
    Io(#[from] io::Error),
    /// Writing the request failed: the connection was closed or reset before the request
    /// went out whole, so the upstream cannot have served it.
    #[error("upstream connection closed before the request was written: {0}")]
    Unsent(io::Error),
    /// The upstream closed the connection before any byte of a response (or of the rest
    /// of a body).
    #[error("upstream closed the connection")]
    Closed,
    /// The upstream closed the connection partway through the response head (a reset,
    /// as Envoy reports it, not a protocol error).
    #[error("upstream closed the connection in the response head")]
    Truncated,
    /// The response broke HTTP/1.1.
    #[error("upstream protocol error: {0}")]
    Protocol(&'static str),
}

/// What the pool keeps alive with a connection (its circuit-breaker slot and gauges).
pub type Guard = Box<dyn std::any::Any>;

impl H1Error {
    /// Whether the request never went out whole (the connection was found closed as it
    /// was written): on a reused keep-alive connection that is the pool's race with the
    /// upstream's idle close, and the request may go on another connection. A request
    /// written whole is never sent again (the upstream may have acted on it), as in
    /// Envoy, which sends it once and answers `503` when no response comes.
    pub fn unsent(&self) -> bool {
        matches!(self, H1Error::Unsent(_))
    }
}

/// One HTTP/1.1 connection to an upstream host, idle or carrying one request.
pub struct H1Connection {
    io: Transport,
    buf: BytesMut,
    /// The request head being written: kept between requests so that encoding allocates
    /// nothing.
    head: Vec<u8>,
    /// How the request's field names are written (the cluster's `header_key_format`).
    keys: KeyFormat,
    /// The most fields a response head may carry (the cluster's `max_headers_count`).
    max_headers: usize,
    _guard: Guard,
}

/// How the response body is delimited.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Framing {
    /// This many bytes are left.
    Length(u64),
    /// Chunked: expecting a chunk-size line.
    ChunkSize,
    /// Chunked: this many data bytes left in the current chunk, then CRLF.
    ChunkData(u64),
    /// Chunked: the CRLF after a chunk's data.
    ChunkEnd,
    /// Chunked: the trailer section after the last chunk.
    Trailers,
    /// Until the upstream closes.
    UntilClose,
    /// Complete.
    Done,
}

/// Calls back when the response body ends: with the connection if it can carry another
/// request.
pub type OnDone = Box<dyn FnOnce(Option<H1Connection>)>;

/// A response body read straight from the upstream connection.
pub struct UpstreamBody {
    conn: Option<H1Connection>,
    decoder: BodyDecoder,
    reusable: bool,
    on_done: Option<OnDone>,
}

impl H1Connection {
    /// Wraps a connected socket whose responses may carry up to `max_headers` fields.
    pub fn new(io: Transport, guard: Guard, keys: KeyFormat, max_headers: usize) -> Self {
        H1Connection {
            io,
            buf: BytesMut::new(),
            head: Vec::new(),
            keys,
            max_headers,
            _guard: guard,
        }
    }

    /// Whether an idle connection may carry a request: nothing arrived while it sat in the
    /// pool (a close, or bytes no request asked for, both retire it).
    pub fn is_reusable(&mut self) -> bool {
        if !self.buf.is_empty() {
            return false;
        }
        if !self.io.may_have_input() {
            return true;
        }
        let waker = std::task::Waker::noop();
        let mut cx = Context::from_waker(waker);
        // Nothing to read (`Pending`) is the healthy answer.
        self.read_more(&mut cx).is_pending()
    }

    fn read_more(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<usize>> {
        recv_into(&mut self.io, &mut self.buf, cx)
    }

    async fn write_all(&mut self, head: &[u8], body: &[u8]) -> io::Result<()> {
        let (mut head, mut body) = (head, body);
        while !head.is_empty() || !body.is_empty() {
            let n = poll_fn(|cx| {
                self.io
                    .poll_send_vectored(cx, &[io::IoSlice::new(head), io::IoSlice::new(body)])
            })
            .await?;
            if n == 0 {
                return Err(io::ErrorKind::WriteZero.into());
            }
            let from_head = n.min(head.len());
            head = &head[from_head..];
            body = &body[n - from_head..];
        }
        Ok(())
    }

    /// Sends a request whose body is complete (`body` may be empty) and reads the response
    /// head. The body of the response then streams from the returned [`UpstreamBody`],
    /// which calls `on_done` at its end.
    pub async fn send(
        mut self,
        parts: &http::request::Parts,
        body: &Bytes,
        on_done: OnDone,
    ) -> Result<(http::response::Parts, UpstreamBody), H1Error> {
        let mut head = std::mem::take(&mut self.head);
        encode_request(&mut head, parts, body.len(), self.keys);
        let case = self.keys.recorded();
        self.write_all(&head, body).await.map_err(H1Error::Unsent)?;
        self.head = head;
        let head_request = parts.method == Method::HEAD;
        loop {
            let head = poll_fn(|cx| self.poll_head(cx, head_request, case)).await?;
            if head.parts.status.is_informational() {
                // 100 Continue and the like: the real response follows. (A 101 cannot
                // come: upgrades do not take this path.)
                if head.parts.status == StatusCode::SWITCHING_PROTOCOLS {
                    return Err(H1Error::Protocol("unexpected 101 Switching Protocols"));
                }
                continue;
            }
            let mut body = UpstreamBody {
                conn: Some(self),
                decoder: head.decoder,
                reusable: head.reusable,
                on_done: Some(on_done),
            };
            if body.decoder.is_done() {
                body.finish(true);
            }
            let resp = head.parts;
            return Ok((resp, body));
        }
    }

    /// Reads until a whole response head is buffered and parses it.
    fn poll_head(
        &mut self,
        cx: &mut Context<'_>,
        head_request: bool,
        case: Option<PreserveCase>,
    ) -> Poll<Result<ResponseHead, H1Error>> {
        loop {
            if !self.buf.is_empty() {
                if let Some(head) =
                    parse_response_head(&mut self.buf, head_request, self.max_headers, case)?
                {
                    return Poll::Ready(Ok(head));
                }
            }
            match self.read_more(cx) {
                Poll::Pending => return Poll::Pending,
                Poll::Ready(Ok(0)) if self.buf.is_empty() => {
                    return Poll::Ready(Err(H1Error::Closed))
                }
                Poll::Ready(Ok(0)) => return Poll::Ready(Err(H1Error::Truncated)),
                Poll::Ready(Ok(_)) => {}
                Poll::Ready(Err(e)) => return Poll::Ready(Err(e.into())),
            }
        }
    }
}

/// Reads what the socket has (up to 16 KiB) onto the end of `buf`.
pub(crate) fn recv_into(
    io: &mut Transport,
    buf: &mut BytesMut,
    cx: &mut Context<'_>,
) -> Poll<io::Result<usize>> {
    if buf.capacity() == 0 {
        // A connection's first read goes through the stack: nothing is allocated until
        // bytes arrive, so a connection that sends nothing (a TLS client after its
        // handshake, a preconnected one) holds no read buffer.
        let mut first = [MaybeUninit::<u8>::uninit(); FIRST_READ];
        return match io.poll_recv(cx, &mut first) {
            Poll::Ready(Ok(n)) => {
                // SAFETY: `recv` initialised exactly the first `n` bytes.
                let read = unsafe { std::slice::from_raw_parts(first.as_ptr().cast::<u8>(), n) };
                buf.reserve(READ_CHUNK.max(n));
                buf.extend_from_slice(read);
                Poll::Ready(Ok(n))
            }
            other => other,
        };
    }
    buf.reserve(READ_CHUNK);
    let spare = buf.spare_capacity_mut();
    match io.poll_recv(cx, spare) {
        Poll::Ready(Ok(n)) => {
            // SAFETY: `recv` initialised exactly `n` bytes of the spare capacity.
            unsafe { buf.set_len(buf.len() + n) };
            Poll::Ready(Ok(n))
        }
        other => other,
    }
}

/// Writes the request head into `out` (emptied first): request line, the headers as given,
/// and the body's length.
fn encode_request(
    out: &mut Vec<u8>,
    parts: &http::request::Parts,
    body_len: usize,
    keys: KeyFormat,
) {
    out.clear();
    out.reserve(256);
    out.extend_from_slice(parts.method.as_str().as_bytes());
    out.push(b' ');
    let target = parts.uri.path_and_query().map_or("/", |p| p.as_str());
    out.extend_from_slice(target.as_bytes());
    out.extend_from_slice(b" HTTP/1.1\r\n");
    // The names the request came with (a client's, under the connection manager's
    // `preserve_case`), whatever the cluster's format.
    let case = parts.extensions.get::<HeaderCase>();
    let mut had_length = false;
    for (name, value) in &parts.headers {
        if name == header::CONTENT_LENGTH {
            had_length = true;
            continue;
        }
        if name == header::TRANSFER_ENCODING {
            continue;
        }
        keys.put_name(out, name.as_str().as_bytes(), case);
        out.extend_from_slice(b": ");
        out.extend_from_slice(value.as_bytes());
        out.extend_from_slice(b"\r\n");
    }
    // A body is always sent with its length; an empty one is announced unless the method
    // has no body (Envoy's codec: all but GET, HEAD, DELETE, TRACE and CONNECT).
    if body_len > 0
        || had_length
        || !matches!(
            parts.method,
            Method::GET | Method::HEAD | Method::DELETE | Method::TRACE | Method::CONNECT
        )
    {
        keys.put_name(out, b"content-length", case);
        // Writing to a `Vec` cannot fail.
        let _ = write!(out, ": {body_len}\r\n");
    }
    out.extend_from_slice(b"\r\n");
}

/// A response head, parsed.
pub struct ResponseHead {
    /// Status, version and headers.
    pub parts: http::response::Parts,
    /// Takes the body that follows off the connection's buffer.
    pub decoder: BodyDecoder,
    /// Whether the connection may carry another request after this response.
    pub reusable: bool,
}

/// Parses a response head off the front of `buf` once it is complete (`None` until then).
/// `head_request`: the response answers a `HEAD` and has no body whatever it says. The
/// connection-level fields (`connection`, `keep-alive`, `proxy-connection`,
/// `transfer-encoding`, `upgrade`) frame the response but are left out of its headers,
/// as a proxy strips them; a `101` keeps them. More than `max_headers` fields is a
/// protocol error, as in Envoy's codec. `case`: the names' spellings (and the reason
/// phrase, with `forward_reason_phrase`) are kept in the response's extensions.
pub fn parse_response_head(
    buf: &mut BytesMut,
    head_request: bool,
    max_headers: usize,
    case: Option<PreserveCase>,
) -> Result<Option<ResponseHead>, H1Error> {
    let Some((parts, framing, keep_alive)) = parse_head(buf, max_headers, case)? else {
        if buf.len() > MAX_HEAD {
            return Err(H1Error::Protocol("response headers too large"));
        }
        return Ok(None);
    };
    let status = parts.status;
    let framing = if head_request
        || status.is_informational()
        || status == StatusCode::NO_CONTENT
        || status == StatusCode::NOT_MODIFIED
    {
        Framing::Done
    } else {
        framing
    };
    Ok(Some(ResponseHead {
        parts,
        decoder: BodyDecoder { framing },
        reusable: keep_alive && framing != Framing::UntilClose,
    }))
}

/// Parses a response head off the front of `buf` if it is complete: the response parts,
/// the body's framing and whether the connection may be kept alive.
fn parse_head(
    buf: &mut BytesMut,
    max_headers: usize,
    case: Option<PreserveCase>,
) -> Result<Option<(http::response::Parts, Framing, bool)>, H1Error> {
    // Uninitialised: zeroing room for 100 headers would cost more than parsing five. A
    // limit above the default takes its room from the heap.
    let mut stack = [const { MaybeUninit::<httparse::Header<'_>>::uninit() }; MAX_HEADERS];
    let mut heap = Vec::new();
    let slots = if max_headers <= MAX_HEADERS {
        &mut stack[..max_headers]
    } else {
        heap.resize_with(max_headers, MaybeUninit::uninit);
        &mut heap[..]
    };
    let mut resp = httparse::Response::new(&mut []);
    let parsed =
        httparse::ParserConfig::default().parse_response_with_uninit_headers(&mut resp, buf, slots);
    let len = match parsed {
        Ok(httparse::Status::Complete(len)) => len,
        Ok(httparse::Status::Partial) => return Ok(None),
        Err(httparse::Error::TooManyHeaders) => {
            return Err(H1Error::Protocol("too many response headers"))
        }
        Err(_) => return Err(H1Error::Protocol("malformed response head")),
    };
    let code = resp.code.unwrap_or(0);
    let status = StatusCode::from_u16(code).map_err(|_| H1Error::Protocol("bad status code"))?;
    let version = if resp.version == Some(0) {
        Version::HTTP_10
    } else {
        Version::HTTP_11
    };
    let reason = case
        .filter(|c| c.forward_reason_phrase)
        .and(resp.reason)
        .map(|r| Bytes::copy_from_slice(r.as_bytes()));
    let spans = HeadSpans::new(buf, resp.headers, None);
    let drop_hop_by_hop = status != StatusCode::SWITCHING_PROTOCOLS;
    let SplitHead {
        headers: map,
        framing: fields,
        case: recorded,
        ..
    } = spans
        .split_off(buf, len, 4, drop_hop_by_hop, case)
        .map_err(H1Error::Protocol)?;
    let keep_alive = fields.keeps_alive(version);
    let framing = response_framing(status, &fields)?;
    let mut map = map;
    if fields.repeated {
        join_each(&mut map, JOINED_RESPONSE_FIELDS);
    }
    let mut parts = http::Response::new(()).into_parts().0;
    parts.status = status;
    parts.version = version;
    parts.headers = map;
    if let Some(mut recorded) = recorded {
        if let Some(r) = reason {
            recorded.set_reason(r);
        }
        parts.extensions.insert(*recorded);
    }
    Ok(Some((parts, framing, keep_alive)))
}

/// The response fields Envoy's header map keeps as one, their repeated lines joined with
/// `,` (measured against Envoy 1.40); others (`set-cookie`, `link`, …) keep their lines.
const JOINED_RESPONSE_FIELDS: &[&str] = &[
    "access-control-allow-headers",
    "access-control-allow-methods",
    "access-control-allow-origin",
    "access-control-expose-headers",
    "access-control-max-age",
    "age",
    "cache-control",
    "content-encoding",
    "content-type",
    "etag",
    "expires",
    "grpc-message",
    "grpc-status",
    "last-modified",
    "location",
    "vary",
    "via",
    "x-envoy-attempt-count",
    "x-envoy-decorator-operation",
    "x-envoy-degraded",
    "x-envoy-immediate-health-check-fail",
    "x-envoy-ratelimited",
    "x-envoy-upstream-canary",
    "x-request-id",
];

/// The body's framing from a response's fields, refused where Envoy's codec refuses it
/// (measured against Envoy 1.40; each is a `502` to the client): more than one
/// `Content-Length` field, a length that is not one decimal number (`3, 3` included), a
/// `1xx` (but `101`) or `204` that announces a body (`content-length: 0` is allowed),
/// and any coding but `chunked`, or `chunked` with a length. A `304`'s length describes
/// the resource, not this message, and is passed on as it came.
fn response_framing(status: StatusCode, fields: &FramingFields) -> Result<Framing, H1Error> {
    if fields.content_length_fields > 1 {
        return Err(H1Error::Protocol("repeated content-length"));
    }
    let bodiless = (status.is_informational() && status != StatusCode::SWITCHING_PROTOCOLS)
        || status == StatusCode::NO_CONTENT;
    if bodiless {
        let announces_body = fields.transfer_encoding.is_some()
            || fields
                .content_length
                .as_ref()
                .is_some_and(|v| v.as_bytes() != b"0");
        if announces_body {
            return Err(H1Error::Protocol(
                "a body announced on a 1xx or 204 response",
            ));
        }
        return Ok(Framing::Done);
    }
    if let Some(te) = &fields.transfer_encoding {
        // As Envoy's codec: `chunked` is the only coding, and never with a length (RFC
        // 9112 §6.3 makes that a smuggling risk).
        if fields.content_length_fields > 0 {
            return Err(H1Error::Protocol(
                "both content-length and transfer-encoding",
            ));
        }
        if fields.transfer_encoding_fields > 1
            || !te.as_bytes().trim_ascii().eq_ignore_ascii_case(b"chunked")
        {
            return Err(H1Error::Protocol("transfer-encoding other than chunked"));
        }
        return Ok(if status == StatusCode::NOT_MODIFIED {
            Framing::Done
        } else {
            Framing::ChunkSize
        });
    }
    if status == StatusCode::NOT_MODIFIED {
        return Ok(Framing::Done);
    }
    match &fields.content_length {
        Some(v) => content_length(v.as_bytes()).map(Framing::Length),
        None => Ok(Framing::UntilClose),
    }
}

/// A response's `Content-Length`: one decimal number.
fn content_length(value: &[u8]) -> Result<u64, H1Error> {
    let digits = value.trim_ascii();
    if digits.is_empty() || !digits.iter().all(u8::is_ascii_digit) || digits.len() > 19 {
        return Err(H1Error::Protocol("invalid content-length"));
    }
    Ok(digits
        .iter()
        .fold(0u64, |n, d| n * 10 + u64::from(d - b'0')))
}

impl UpstreamBody {
    fn finish(&mut self, clean: bool) {
        self.decoder.framing = Framing::Done;
        let conn = self.conn.take().filter(|_| clean && self.reusable);
        if let Some(f) = self.on_done.take() {
            f(conn);
        }
    }

    /// Whether the body is complete.
    pub fn is_end_stream(&self) -> bool {
        self.decoder.is_done()
    }

    /// The exact length, when known.
    pub fn exact_len(&self) -> Option<u64> {
        self.decoder.exact_len()
    }

    /// The next data or trailers frame.
    pub fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, H1Error>>> {
        let this = self.get_mut();
        let r = this.step(cx);
        if let Poll::Ready(Some(Err(_))) = &r {
            this.finish(false);
        }
        r
    }

    fn step(&mut self, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, H1Error>>> {
        loop {
            let Some(conn) = self.conn.as_mut() else {
                return Poll::Ready(None);
            };
            let decoded = match self.decoder.decode(&mut conn.buf) {
                Ok(d) => d,
                Err(e) => return Poll::Ready(Some(Err(e))),
            };
            match decoded {
                Decoded::Data(data) => {
                    if self.decoder.is_done() {
                        self.finish(true);
                    }
                    return Poll::Ready(Some(Ok(Frame::data(data))));
                }
                Decoded::Trailers(trailers) => {
                    self.finish(true);
                    return Poll::Ready(Some(Ok(Frame::trailers(trailers))));
                }
                Decoded::End => {
                    self.finish(true);
                    return Poll::Ready(None);
                }
                Decoded::NeedMore => {}
            }
            match conn.read_more(cx) {
                Poll::Pending => return Poll::Pending,
                Poll::Ready(Ok(0)) => {
                    if let Err(e) = self.decoder.eof() {
                        return Poll::Ready(Some(Err(e)));
                    }
                    self.finish(true);
                    return Poll::Ready(None);
                }
                Poll::Ready(Ok(_)) => {}
                Poll::Ready(Err(e)) => return Poll::Ready(Some(Err(e.into()))),
            }
        }
    }
}

/// What [`BodyDecoder::decode`] took from the buffer.
#[derive(Debug)]
pub enum Decoded {
    /// Body bytes.
    Data(Bytes),
    /// The trailer section of a chunked body (which is then complete).
    Trailers(HeaderMap),
    /// The body is complete.
    End,
    /// The buffer holds no more of the body yet.
    NeedMore,
}

/// Takes a response body off the connection's read buffer as its framing says (sans I/O,
/// so it is tested and fuzzed on plain bytes).
#[derive(Debug)]
pub struct BodyDecoder {
    framing: Framing,
}

impl BodyDecoder {
    /// A body of exactly `n` bytes.
    pub fn with_length(n: u64) -> Self {
        BodyDecoder {
            framing: Framing::Length(n),
        }
    }

    /// A chunked body.
    pub fn chunked() -> Self {
        BodyDecoder {
            framing: Framing::ChunkSize,
        }
    }

    /// Whether the body is complete.
    pub fn is_done(&self) -> bool {
        matches!(self.framing, Framing::Done | Framing::Length(0))
    }

    /// The bytes left, when known.
    pub fn exact_len(&self) -> Option<u64> {
        match self.framing {
            Framing::Length(n) => Some(n),
            Framing::Done => Some(0),
            _ => None,
        }
    }

    /// The upstream closed the connection: the end of a body that runs to the close, an
    /// error for any other.
    pub fn eof(&mut self) -> Result<(), H1Error> {
        match self.framing {
            Framing::UntilClose | Framing::Done | Framing::Length(0) => {
                self.framing = Framing::Done;
                Ok(())
            }
            _ => Err(H1Error::Closed),
        }
    }

    /// Takes the next piece of the body from the front of `buf`.
    pub fn decode(&mut self, buf: &mut BytesMut) -> Result<Decoded, H1Error> {
        loop {
            match self.framing {
                Framing::Done | Framing::Length(0) => {
                    self.framing = Framing::Done;
                    return Ok(Decoded::End);
                }
                Framing::Length(left) | Framing::ChunkData(left) if !buf.is_empty() => {
                    let take = (buf.len() as u64).min(left) as usize;
                    let data = buf.split_to(take).freeze();
                    let left = left - take as u64;
                    self.framing = match self.framing {
                        Framing::Length(_) => Framing::Length(left),
                        _ if left == 0 => Framing::ChunkEnd,
                        _ => Framing::ChunkData(left),
                    };
                    return Ok(Decoded::Data(data));
                }
                Framing::UntilClose if !buf.is_empty() => {
                    return Ok(Decoded::Data(buf.split().freeze()));
                }
                Framing::ChunkSize => match httparse::parse_chunk_size(buf) {
                    Ok(httparse::Status::Complete((used, size))) => {
                        buf.advance(used);
                        self.framing = if size == 0 {
                            Framing::Trailers
                        } else {
                            Framing::ChunkData(size)
                        };
                        continue;
                    }
                    Ok(httparse::Status::Partial) if buf.len() > 1024 => {
                        return Err(H1Error::Protocol("chunk size line too long"))
                    }
                    Ok(httparse::Status::Partial) => return Ok(Decoded::NeedMore),
                    Err(_) => return Err(H1Error::Protocol("invalid chunk size")),
                },
                Framing::ChunkEnd if buf.len() >= 2 => {
                    if &buf[..2] != b"\r\n" {
                        return Err(H1Error::Protocol("missing CRLF after chunk"));
                    }
                    buf.advance(2);
                    self.framing = Framing::ChunkSize;
                    continue;
                }
                Framing::Trailers => {
                    let mut fields = [httparse::EMPTY_HEADER; MAX_HEADERS];
                    return match httparse::parse_headers(buf, &mut fields) {
                        Ok(httparse::Status::Complete((used, fields))) => {
                            let mut trailers = HeaderMap::new();
                            for f in fields {
                                if let (Ok(n), Ok(v)) = (
                                    HeaderName::from_bytes(f.name.as_bytes()),
                                    HeaderValue::from_bytes(f.value),
                                ) {
                                    trailers.append(n, v);
                                }
                            }
                            buf.advance(used);
                            self.framing = Framing::Done;
                            Ok(if trailers.is_empty() {
                                Decoded::End
                            } else {
                                Decoded::Trailers(trailers)
                            })
                        }
                        Ok(httparse::Status::Partial) if buf.len() > MAX_HEAD => {
                            Err(H1Error::Protocol("trailers too large"))
                        }
                        Ok(httparse::Status::Partial) => Ok(Decoded::NeedMore),
                        Err(_) => Err(H1Error::Protocol("invalid trailers")),
                    };
                }
                _ => return Ok(Decoded::NeedMore),
            }
        }
    }
}

impl Drop for UpstreamBody {
    fn drop(&mut self) {
        // Dropped before its end (client gone, timeout): the connection is not reusable.
        if self.on_done.is_some() {
            self.finish(false);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn head(text: &str) -> Result<Option<(http::response::Parts, Framing, bool)>, H1Error> {
        parse_head(&mut BytesMut::from(text.as_bytes()), MAX_HEADERS, None)
    }

    #[test]
    fn head_fields_are_limited_by_max_headers() {
        let with = |n: usize| {
            let fields: String = (0..n).map(|i| format!("x-{i}: v\r\n")).collect();
            format!("HTTP/1.1 200 OK\r\n{fields}\r\n")
        };
        for limit in [5, MAX_HEADERS, 150] {
            let mut ok = BytesMut::from(with(limit).as_bytes());
            assert!(
                matches!(parse_head(&mut ok, limit, None), Ok(Some(_))),
                "{limit}"
            );
            let mut over = BytesMut::from(with(limit + 1).as_bytes());
            assert!(
                matches!(
                    parse_head(&mut over, limit, None),
                    Err(H1Error::Protocol(_))
                ),
                "{limit}"
            );
        }
    }

    #[test]
    fn framing_follows_rfc_9112() {
        let r = head("HTTP/1.1 200 OK\r\ncontent-length: 5\r\n\r\n");
        assert!(matches!(r, Ok(Some((ref p, Framing::Length(5), true))) if p.status == 200));
        let r = head("HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n");
        assert!(matches!(r, Ok(Some((_, Framing::ChunkSize, true)))));
        let r = head("HTTP/1.1 200 OK\r\nTransfer-Encoding: Chunked\r\n\r\n");
        assert!(matches!(r, Ok(Some((_, Framing::ChunkSize, true)))));
        // Envoy's codec refuses the rest (a 502).
        for bad in [
            "HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\ncontent-length: 5\r\n\r\n",
            "HTTP/1.1 200 OK\r\ntransfer-encoding: gzip\r\n\r\n",
            "HTTP/1.1 200 OK\r\ntransfer-encoding: gzip, chunked\r\n\r\n",
            "HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\ntransfer-encoding: chunked\r\n\r\n",
        ] {
            assert!(matches!(head(bad), Err(H1Error::Protocol(_))), "{bad}");
        }
        let r = head("HTTP/1.1 200 OK\r\n\r\n");
        assert!(matches!(r, Ok(Some((_, Framing::UntilClose, true)))));
        let r = head("HTTP/1.0 200 OK\r\ncontent-length: 1\r\n\r\n");
        assert!(matches!(r, Ok(Some((_, Framing::Length(1), false)))));
        let r = head("HTTP/1.1 200 OK\r\nconnection: close\r\ncontent-length: 1\r\n\r\n");
        assert!(matches!(r, Ok(Some((_, Framing::Length(1), false)))));
        // Envoy refuses a repeated length even when the values agree, and a list.
        for bad in [
            "HTTP/1.1 200 OK\r\ncontent-length: 5\r\ncontent-length: 5\r\n\r\n",
            "HTTP/1.1 200 OK\r\ncontent-length: 5\r\ncontent-length: 6\r\n\r\n",
            "HTTP/1.1 200 OK\r\ncontent-length: 5, 5\r\n\r\n",
            "HTTP/1.1 304 OK\r\ncontent-length: 5\r\ncontent-length: 5\r\n\r\n",
            "HTTP/1.1 204 OK\r\ncontent-length: 5\r\n\r\n",
            "HTTP/1.1 204 OK\r\ncontent-length: 00\r\n\r\n",
            "HTTP/1.1 204 OK\r\ntransfer-encoding: chunked\r\n\r\n",
            "HTTP/1.1 100 Continue\r\ncontent-length: 5\r\n\r\n",
        ] {
            assert!(head(bad).is_err(), "{bad}");
        }
        let r = head("HTTP/1.1 204 OK\r\ncontent-length: 0\r\n\r\n");
        assert!(matches!(r, Ok(Some((_, Framing::Done, true)))));
        // A 304's length describes the resource: passed on as it came.
        let r = head("HTTP/1.1 304 OK\r\ncontent-length: x\r\n\r\n");
        assert!(matches!(r, Ok(Some((_, Framing::Done, true)))));
        assert!(head("HTTP/1.1 200 OK\r\ncontent-length: -1\r\n\r\n").is_err());
        assert!(head("HTTP/1.1 200 OK\r\ncontent-length: 1x\r\n\r\n").is_err());
        assert!(head("HTTP/1.1 999x OK\r\n\r\n").is_err());
        assert!(matches!(head("HTTP/1.1 200 OK\r\ncontent-le"), Ok(None)));
    }

    /// Feeds `input` to a decoder `step` bytes at a time; returns the body and trailers.
    fn decode_in_steps(
        framing: Framing,
        input: &[u8],
        step: usize,
    ) -> Result<(Vec<u8>, Option<HeaderMap>), H1Error> {
        let mut d = BodyDecoder { framing };
        let mut buf = BytesMut::new();
        let (mut body, mut trailers) = (Vec::new(), None);
        let mut chunks = input.chunks(step.max(1));
        loop {
            match d.decode(&mut buf)? {
                Decoded::Data(b) => body.extend_from_slice(&b),
                Decoded::Trailers(t) => {
                    trailers = Some(t);
                    break;
                }
                Decoded::End => break,
                Decoded::NeedMore => match chunks.next() {
                    Some(c) => buf.extend_from_slice(c),
                    None => {
                        d.eof()?;
                        break;
                    }
                },
            }
        }
        Ok((body, trailers))
    }

    #[test]
    fn chunked_bodies_decode_however_they_are_split() {
        let wire = b"5\r\nhello\r\n6;ext=1\r\n world\r\n0\r\nx-t: 1\r\n\r\n";
        for step in 1..wire.len() {
            let (body, trailers) =
                decode_in_steps(Framing::ChunkSize, wire, step).unwrap_or_default();
            assert_eq!(body, b"hello world", "step {step}");
            let t = trailers.unwrap_or_default();
            assert_eq!(
                t.get("x-t").map(|v| v.as_bytes()),
                Some(&b"1"[..]),
                "step {step}"
            );
        }
        let (body, trailers) =
            decode_in_steps(Framing::ChunkSize, b"2\r\nok\r\n0\r\n\r\n", 3).unwrap_or_default();
        assert_eq!((body.as_slice(), trailers.is_none()), (&b"ok"[..], true));
        for bad in [&b"zz\r\n"[..], b"2\r\nokXX0\r\n\r\n", b"5\r\nhel"] {
            assert!(decode_in_steps(Framing::ChunkSize, bad, 2).is_err());
        }
    }

    #[test]
    fn length_and_close_delimited_bodies() {
        let (body, _) = decode_in_steps(Framing::Length(5), b"helloEXTRA", 3).unwrap_or_default();
        assert_eq!(body, b"hello");
        assert!(decode_in_steps(Framing::Length(5), b"hel", 1).is_err());
        let (body, _) = decode_in_steps(Framing::UntilClose, b"to the end", 4).unwrap_or_default();
        assert_eq!(body, b"to the end");
    }

    #[test]
    fn request_head_carries_the_body_length() {
        let mut req = http::Request::new(());
        *req.method_mut() = Method::POST;
        *req.uri_mut() = "/p?q=1".parse().unwrap_or_default();
        req.headers_mut()
            .insert(header::HOST, HeaderValue::from_static("h"));
        req.headers_mut()
            .insert(header::CONTENT_LENGTH, HeaderValue::from_static("99"));
        let (parts, ()) = req.into_parts();
        let mut out = Vec::new();
        encode_request(&mut out, &parts, 3, KeyFormat::Lower);
        let text = String::from_utf8(out).unwrap_or_default();
        assert_eq!(
            text,
            "POST /p?q=1 HTTP/1.1\r\nhost: h\r\ncontent-length: 3\r\n\r\n"
        );
        let mut get = http::Request::new(());
        *get.uri_mut() = "/".parse().unwrap_or_default();
        let (parts, ()) = get.into_parts();
        let mut out = b"left over".to_vec();
        encode_request(&mut out, &parts, 0, KeyFormat::Lower);
        let text = String::from_utf8(out).unwrap_or_default();
        assert_eq!(text, "GET / HTTP/1.1\r\n\r\n");
    }
}
