//! A downstream HTTP/1.1 connection: Courier's own server codec ([`crate::http::codec::downstream_h1`])
//! driven on the worker's socket, one request at a time.
//!
//! ```text
//!  Head ─► Serve (router) ─► Body (response body out) ─► Flush ─┬─► Head (keep-alive)
//!    │                                                         ├─► upgrade (101: the
//!    │                                                         │    socket joins a tunnel)
//!    └─ codec error: Envoy's local reply ─────────────────────►└─► Linger ─► closed
//! ```
//!
//! hyper's server ran a dispatcher task with its own buffers and state per connection;
//! this is the part of a proxied request that is left once parsing is `httparse` and the
//! response head, its framing and a small body go out in one `writev`.
//!
//! Pipelined requests wait in the read buffer until the response before them is written.
//! A request body is read by the router through [`DownstreamBody`], straight off the same
//! buffer and socket. The connection is kept only when the client asked for it, the
//! response said nothing against it, and the request body was read to its end (as Envoy,
//! a response that finishes before its request closes the connection). Closing first
//! half-closes and then reads what the client still sends for up to a second (Envoy's
//! delayed close), so that a reply is not destroyed by a reset.

use std::cell::RefCell;
use std::collections::VecDeque;
use std::convert::Infallible;
use std::future::Future;
use std::io;
use std::pin::Pin;
use std::rc::Rc;
use std::task::{ready, Context, Poll};
use std::time::{Duration, Instant};

use bytes::{Buf, Bytes, BytesMut};
use futures::channel::oneshot;
use http::header::{self, HeaderMap};
use http::{Method, Request, Response, StatusCode, Version};
use hyper::body::Body as _;

use crate::http::codec::body::ProxyBody;
use crate::http::codec::downstream_body::{ConnReader, DownstreamBody};
use crate::http::codec::downstream_h1::{
    encode_response_head, parse_request_head, reason_phrase, response_fields, CodecError,
    ConnectionHeader, Limits, RequestHead, ResponseFraming,
};
use crate::http::codec::handoff::{
    is_upgrade, tunnel_link, DownstreamUpgrade, PrefixedIo, TunnelEnd, TunnelLink,
};
use crate::http::codec::header_map_pool;
use crate::http::codec::upstream_h1::recv_into;
use crate::overload::scaled_timers;
use crate::protocol::key_format::KeyFormat;
use courier_runtime::event::rt::Sleep;

use crate::transport_socket::Transport;

/// Body chunks up to this size are copied next to the framing (one `writev` slice, no
/// reference kept); larger ones are queued as they are.
const COPY_MAX: usize = 4096;
/// The response body is not polled further while this much waits to be written.
const HIGH_WATER: usize = 64 * 1024;
/// How much a client may pipeline while its request is served; past it the connection is
/// not read (and a close not noticed) until the response is out.
const PIPELINED_MAX: usize = 64 * 1024;
const CONTINUE: &[u8] = b"HTTP/1.1 100 Continue\r\n\r\n";

/// Bytes waiting to be written: small pieces copied together, large bodies by reference.
#[derive(Default)]
struct WriteQueue {
    staged: BytesMut,
    queued: VecDeque<Bytes>,
    len: usize,
}

impl WriteQueue {
    fn push_slice(&mut self, b: &[u8]) {
        self.staged.extend_from_slice(b);
        self.len += b.len();
    }

    fn push_bytes(&mut self, b: Bytes) {
        if b.len() <= COPY_MAX {
            return self.push_slice(&b);
        }
        if !self.staged.is_empty() {
            self.queued.push_back(self.staged.split().freeze());
        }
        self.len += b.len();
        self.queued.push_back(b);
    }

    /// Ends a chunked body with its trailers (names as held: lower-case, as Envoy).
    fn push_trailers(&mut self, trailers: &HeaderMap) {
        let mut block = Vec::with_capacity(64);
        block.extend_from_slice(b"0\r\n");
        for (name, value) in trailers {
            block.extend_from_slice(name.as_str().as_bytes());
            block.extend_from_slice(b": ");
            block.extend_from_slice(value.as_bytes());
            block.extend_from_slice(b"\r\n");
        }
        block.extend_from_slice(b"\r\n");
        self.push_slice(&block);
    }

    /// Adds a response head.
    fn push_head(
        &mut self,
        parts: &http::response::Parts,
        framing: ResponseFraming,
        connection: ConnectionHeader,
        keys: KeyFormat,
    ) {
        let before = self.staged.len();
        encode_response_head(&mut self.staged, parts, framing, connection, keys);
        self.len += self.staged.len() - before;
    }

    fn poll_flush(&mut self, io: &mut Transport, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        while self.len > 0 {
            let mut slices = [io::IoSlice::new(&[]); 8];
            let mut k = 0;
            for b in self.queued.iter().take(slices.len() - 1) {
                slices[k] = io::IoSlice::new(b);
                k += 1;
            }
            // The staged bytes come after everything queued: only with all of it.
            if !self.staged.is_empty() && k == self.queued.len() && k < slices.len() {
                slices[k] = io::IoSlice::new(&self.staged);
                k += 1;
            }
            let mut n = ready!(io.poll_send_vectored(cx, &slices[..k]))?;
            if n == 0 {
                return Poll::Ready(Err(io::ErrorKind::WriteZero.into()));
            }
            self.len -= n;
            while n > 0 {
                match self.queued.front_mut() {
                    Some(front) if front.len() <= n => {
                        n -= front.len();
                        self.queued.pop_front();
                    }
                    Some(front) => {
                        front.advance(n);
                        n = 0;
                    }
                    None => {
                        self.staged.advance(n);
                        n = 0;
                    }
                }
            }
        }
        self.staged.clear();
        // What a TLS transport still holds goes out before the response counts as sent.
        io.poll_flush_transport(cx)
    }
}

// The body is the phase a connection spends most of its time in; boxing it would cost an
// allocation per response to save bytes in one enum per connection.
#[allow(clippy::large_enum_variant)]
enum Phase {
    /// Waiting for (the rest of) a request head.
    Head,
    /// The router is handling the request.
    Serve(ServeFuture),
    /// The response body is going out.
    Body {
        body: ProxyBody,
        framing: ResponseFraming,
        /// Bytes left when the length was announced.
        left: u64,
    },
    /// The last bytes of the response are going out.
    Flush,
    /// Half-closed; reading what the client still sends until it closes or time is up.
    Linger(Pin<Box<Sleep>>),
}

/// The current request/response exchange.
#[derive(Default)]
struct Exchange {
    /// The connection may carry another request after this one.
    keep_alive: bool,
    head_request: bool,
    http10: bool,
    /// The request asked for an upgrade; the sender gets the connection after a `101`.
    upgrade: Option<oneshot::Sender<(PrefixedIo, TunnelEnd)>>,
    /// The response was `101 Switching Protocols` to an upgrade request.
    switching: bool,
}

/// How a connection ended.
pub enum End {
    /// Closed (or the client went away).
    Closed,
    /// `101` written: [`H1Server::hand_over`] gives the socket to the tunnel.
    Upgraded,
}

/// A request's future, as the connection manager serves it.
pub type ServeFuture = Pin<Box<dyn Future<Output = Result<Response<ProxyBody>, Infallible>>>>;

/// What the HTTP/1.1 server codec asks of the connection manager above it (which it never
/// imports): settings, the request service, local replies and stat counts.
pub trait H1Service: 'static {
    /// This connection's codec settings.
    fn settings(&self) -> &H1Settings;
    /// Serves a request whose head's first byte arrived at `started` (the stream's start,
    /// from which `request_timeout` runs); `upgrade` receives the socket after a `101`.
    fn serve(
        self: Rc<Self>,
        req: Request<ProxyBody>,
        upgrade: Option<DownstreamUpgrade>,
        started: Instant,
    ) -> ServeFuture;
    /// A reply the codec sends itself (a refused head, a header timeout), finished as the
    /// connection manager finishes its own.
    fn local_reply(&self, status: StatusCode, body: &str) -> Response<ProxyBody>;
    /// Whether the connection closes after the current response (a drain).
    fn closing(&self) -> bool;
    /// Counts `event` in the connection manager's stats.
    fn count(&self, event: CodecEvent);
    /// A head still arriving ran out of time (`which`; its first byte came at `started`):
    /// the connection manager counts and logs the stream and gives the reply.
    fn head_timeout(&self, which: HeadTimeout, started: Instant) -> Response<ProxyBody>;
    /// Bytes arrived for a new request: the reply when the connection manager sheds
    /// them instead (the overload manager's `http1_server_abort_dispatch`), after which
    /// the connection closes. (It may instead have the connection close after the
    /// response: `http2_server_go_away_on_dispatch`, which Envoy checks on HTTP/1 too.)
    fn abort_dispatch(&self) -> Option<Response<ProxyBody>>;
}

/// Which of a stream's timers ran out while its head was still arriving. As in Envoy, the
/// stream starts with the head's first byte, and so do all three; bytes of an unfinished
/// head do not restart the idle timer (a slowly sent head is not activity).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HeadTimeout {
    /// `stream_idle_timeout` (default 5 min).
    StreamIdle,
    /// `request_timeout`.
    Request,
    /// `request_headers_timeout`.
    RequestHeaders,
}

impl HeadTimeout {
    /// The body of Envoy's `408` for it.
    pub fn reply_body(self) -> &'static str {
        match self {
            HeadTimeout::StreamIdle => "stream timeout",
            HeadTimeout::Request => "request timeout",
            HeadTimeout::RequestHeaders => "request header timeout",
        }
    }
}

/// Codec events the connection manager counts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CodecEvent {
    /// `downstream_cx_protocol_error`.
    ProtocolError,
}

/// The HTTP/1.1 server codec's settings (from the connection manager's config).
#[derive(Debug, Clone, Copy)]
pub struct H1Settings {
    /// `common_http_protocol_options.max_headers_count`.
    pub max_headers: usize,
    /// `max_request_headers_kb`, in bytes.
    pub max_head_bytes: usize,
    /// `http_protocol_options.accept_http_10`.
    pub accept_http_10: bool,
    /// `http_protocol_options.allow_chunked_length`.
    pub allow_chunked_length: bool,
    /// `delayed_close_timeout`.
    pub delayed_close_timeout: Option<Duration>,
    /// `request_headers_timeout`.
    pub request_headers_timeout: Option<Duration>,
    /// `stream_idle_timeout`: also bounds a head still arriving.
    pub stream_idle_timeout: Option<Duration>,
    /// `request_timeout`: runs from the head's first byte.
    pub request_timeout: Option<Duration>,
    /// `http_protocol_options.header_key_format`.
    pub key_format: KeyFormat,
    /// `http_protocol_options.enable_trailers`.
    pub trailers: bool,
}

impl H1Settings {
    /// The first of the stream's timers to run out on a head still arriving, and after
    /// how long from its first byte (`None`: the head may take forever).
    pub fn first_head_timer(&self) -> Option<(Duration, HeadTimeout)> {
        // On a tie, the timer Envoy creates first fires first. The idle timer is scaled
        // by the overload manager's `reduce_timeouts` as the head starts.
        let idle = self
            .stream_idle_timeout
            .map(|t| scaled_timers::scaled(scaled_timers::TimerType::StreamIdle, t));
        [
            (idle, HeadTimeout::StreamIdle),
            (self.request_timeout, HeadTimeout::Request),
            (self.request_headers_timeout, HeadTimeout::RequestHeaders),
        ]
        .into_iter()
        .filter_map(|(t, which)| Some((t?, which)))
        .min_by_key(|&(t, _)| t)
    }
}

/// One downstream HTTP/1.1 connection, serving its requests with `S`.
pub struct H1Server<S: H1Service> {
    t: Rc<RefCell<ConnReader>>,
    info: Rc<S>,
    limits: Limits,
    out: WriteQueue,
    phase: Phase,
    exchange: Exchange,
    shutting_down: bool,
    /// When the current head's first byte arrived (the stream's start).
    head_started: Option<Instant>,
    /// Bytes arrived since the codec last looked (a dispatch, in Envoy's terms).
    fresh: bool,
    /// The first of the stream's timers to run out while its head arrives, armed when
    /// the head is found incomplete.
    head_timer: Option<(Pin<Box<Sleep>>, HeadTimeout)>,
}

impl<S: H1Service> H1Server<S> {
    /// Serves `io`, whose first bytes (read to detect the protocol) are `prefix`.
    pub fn new(io: Transport, prefix: &[u8], info: Rc<S>) -> Self {
        let cfg = info.settings();
        let limits = Limits {
            max_headers: cfg.max_headers.max(1),
            max_head_bytes: cfg.max_head_bytes,
            accept_http_10: cfg.accept_http_10,
            allow_chunked_length: cfg.allow_chunked_length,
            preserve_case: cfg.key_format.recorded(),
        };
        H1Server {
            t: Rc::new(RefCell::new(ConnReader {
                io,
                rbuf: BytesMut::from(prefix),
                body: None,
                body_error: None,
            })),
            info,
            limits,
            out: WriteQueue::default(),
            phase: Phase::Head,
            exchange: Exchange::default(),
            shutting_down: false,
            head_started: None,
            fresh: !prefix.is_empty(),
            head_timer: None,
        }
    }

    /// Stops taking requests: the one in flight (if any) is answered with
    /// `Connection: close`, an idle connection closes at once.
    pub fn graceful(&mut self) {
        self.shutting_down = true;
    }

    /// After [`End::Upgraded`]: the socket, with any bytes the client sent past the
    /// request head, goes to whoever waits on the [`DownstreamUpgrade`]; the link to the
    /// tunnel comes back (`None`: no one took the socket, and it closes).
    pub fn hand_over(mut self) -> Option<TunnelLink> {
        let tx = self.exchange.upgrade.take()?;
        match Rc::try_unwrap(self.t) {
            Ok(t) => {
                let t = t.into_inner();
                let (link, end) = tunnel_link();
                // An error: the router gave up waiting (timeout).
                tx.send((PrefixedIo::new(t.rbuf.to_vec(), t.io), end))
                    .ok()
                    .map(|()| link)
            }
            Err(_) => {
                tracing::debug!("upgrade with the request body still held; closing");
                None
            }
        }
    }

    /// Drives the connection until it ends.
    pub fn poll(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<End>> {
        loop {
            match &mut self.phase {
                Phase::Head => {
                    if self.shutting_down {
                        return Poll::Ready(Ok(End::Closed));
                    }
                    if std::mem::take(&mut self.fresh) {
                        if let Some(reply) = self.info.abort_dispatch() {
                            self.head_timer = None;
                            self.head_started = None;
                            self.t.borrow_mut().rbuf.clear();
                            self.exchange = Exchange::default();
                            self.respond(reply);
                            continue;
                        }
                    }
                    let parsed = {
                        let mut t = self.t.borrow_mut();
                        if t.rbuf.is_empty() {
                            None
                        } else {
                            // The stream starts with the head's first byte.
                            self.head_started.get_or_insert_with(Instant::now);
                            Some(parse_request_head(&mut t.rbuf, &self.limits))
                        }
                    };
                    match parsed {
                        Some(Ok(Some(head))) => {
                            self.head_timer = None;
                            let started = self.head_started.take().unwrap_or_else(Instant::now);
                            self.start(head, started);
                            continue;
                        }
                        Some(Err(e)) => {
                            self.head_timer = None;
                            self.head_started = None;
                            self.codec_error(e);
                            continue;
                        }
                        Some(Ok(None)) | None => {}
                    }
                    let read = {
                        let mut t = self.t.borrow_mut();
                        let t = &mut *t;
                        recv_into(&mut t.io, &mut t.rbuf, cx)
                    };
                    match read {
                        Poll::Ready(Ok(0)) => return Poll::Ready(Ok(End::Closed)),
                        Poll::Ready(Ok(_)) => {
                            self.fresh = true;
                            continue;
                        }
                        Poll::Ready(Err(e)) => return Poll::Ready(Err(e)),
                        Poll::Pending if self.head_timed_out(cx) => continue,
                        Poll::Pending => return Poll::Pending,
                    }
                }
                Phase::Serve(fut) => {
                    // What is already queued (`100 Continue`) goes out while the router works.
                    if self.out.len > 0 {
                        let mut t = self.t.borrow_mut();
                        if let Poll::Ready(Err(e)) = self.out.poll_flush(&mut t.io, cx) {
                            return Poll::Ready(Err(e));
                        }
                    }
                    let Poll::Ready(Ok(resp)) = fut.as_mut().poll(cx) else {
                        if self.client_gone(cx) {
                            // The request goes with the connection, as Envoy resets the
                            // stream of a client that closes.
                            return Poll::Ready(Ok(End::Closed));
                        }
                        return Poll::Pending;
                    };
                    let resp = match self.t.borrow_mut().body_error.take() {
                        Some(e) => {
                            self.info.count(CodecEvent::ProtocolError);
                            self.exchange.keep_alive = false;
                            error_reply(&*self.info, e)
                        }
                        None => resp,
                    };
                    self.respond(resp);
                }
                Phase::Body { .. } => ready!(self.poll_body(cx))?,
                Phase::Flush => {
                    {
                        let mut t = self.t.borrow_mut();
                        ready!(self.out.poll_flush(&mut t.io, cx))?;
                    }
                    if self.exchange.switching {
                        return Poll::Ready(Ok(End::Upgraded));
                    }
                    let reusable = self.exchange.keep_alive && {
                        let mut t = self.t.borrow_mut();
                        let done = t.body_done();
                        t.body = None;
                        done
                    };
                    self.exchange = Exchange::default();
                    if reusable && !self.shutting_down {
                        self.phase = Phase::Head;
                        continue;
                    }
                    let mut t = self.t.borrow_mut();
                    t.io.shutdown_write();
                    drop(t);
                    // The client learns of the close at once (Envoy's FIN waits for the
                    // delay); what it still sends is read and dropped meanwhile, so that
                    // its arrival does not reset a response it has not read yet.
                    let Some(delay) = self.info.settings().delayed_close_timeout else {
                        return Poll::Ready(Ok(End::Closed));
                    };
                    self.phase = Phase::Linger(Box::pin(Sleep::after(delay)));
                }
                Phase::Linger(timer) => {
                    if timer.as_mut().poll(cx).is_ready() {
                        return Poll::Ready(Ok(End::Closed));
                    }
                    let mut t = self.t.borrow_mut();
                    let t = &mut *t;
                    loop {
                        t.rbuf.clear();
                        match ready!(recv_into(&mut t.io, &mut t.rbuf, cx)) {
                            Ok(0) | Err(_) => return Poll::Ready(Ok(End::Closed)),
                            Ok(_) => {}
                        }
                    }
                }
            }
        }
    }

    /// While the router works on a request whose body is all read, whether the client has
    /// closed the connection (or it failed). Bytes it pipelines meanwhile are kept for the
    /// next request, up to [`PIPELINED_MAX`]. Costs no syscall until the socket reports
    /// input; an upgrade's connection is left alone (its bytes belong to the tunnel).
    fn client_gone(&mut self, cx: &mut Context<'_>) -> bool {
        if self.exchange.upgrade.is_some() {
            return false;
        }
        let mut t = self.t.borrow_mut();
        let t = &mut *t;
        while t.body_done() && t.rbuf.len() < PIPELINED_MAX {
            if t.io.poll_read_ready(cx).is_pending() {
                return false;
            }
            match recv_into(&mut t.io, &mut t.rbuf, cx) {
                Poll::Ready(Ok(0)) | Poll::Ready(Err(_)) => return true,
                Poll::Ready(Ok(_)) => {}
                Poll::Pending => return false,
            }
        }
        false
    }

    /// Waiting for more of a head: the stream's timers run from its first byte, and the
    /// first to run out gets its reply (Envoy's `408`s), after which the connection closes.
    fn head_timed_out(&mut self, cx: &mut Context<'_>) -> bool {
        let Some(started) = self.head_started else {
            return false;
        };
        if self.head_timer.is_none() {
            let Some((timeout, which)) = self.info.settings().first_head_timer() else {
                return false;
            };
            self.head_timer = Some((Box::pin(Sleep::until(started + timeout)), which));
        }
        let Some((timer, which)) = self.head_timer.as_mut() else {
            return false;
        };
        if timer.as_mut().poll(cx).is_pending() {
            return false;
        }
        let which = *which;
        self.head_timer = None;
        self.head_started = None;
        self.t.borrow_mut().rbuf.clear();
        self.exchange = Exchange::default();
        let reply = self.info.head_timeout(which, started);
        self.respond(reply);
        true
    }

    /// A request head arrived: the router takes it.
    fn start(&mut self, head: RequestHead, started: Instant) {
        let RequestHead {
            parts,
            body,
            keep_alive,
            expect_continue,
        } = head;
        self.exchange = Exchange {
            keep_alive,
            head_request: parts.method == Method::HEAD,
            http10: parts.version == Version::HTTP_10,
            ..Exchange::default()
        };
        if expect_continue {
            // Envoy answers `100 Continue` itself, at once.
            self.out.push_slice(CONTINUE);
        }
        let body = match body {
            None => ProxyBody::empty(),
            Some(decoder) => {
                let mut t = self.t.borrow_mut();
                t.body = Some(decoder);
                t.body_error = None;
                drop(t);
                ProxyBody::downstream(DownstreamBody { t: self.t.clone() })
            }
        };
        let upgrade = is_upgrade(&parts.headers).then(|| {
            let (tx, rx) = oneshot::channel();
            self.exchange.upgrade = Some(tx);
            DownstreamUpgrade::Http1(rx)
        });
        let req = Request::from_parts(parts, body);
        self.phase = Phase::Serve(self.info.clone().serve(req, upgrade, started));
    }

    /// The head was refused: Envoy's local reply, then the connection closes.
    fn codec_error(&mut self, e: CodecError) {
        tracing::debug!(error = %e, "downstream HTTP/1.1 codec error");
        // A bare refusal is the connection manager's in Envoy, not a codec error.
        if !e.bare {
            self.info.count(CodecEvent::ProtocolError);
        }
        self.t.borrow_mut().rbuf.clear();
        self.exchange = Exchange::default();
        self.respond(error_reply(&*self.info, e));
    }

    /// Queues the response head and moves on to its body.
    fn respond(&mut self, resp: Response<ProxyBody>) {
        let (mut parts, body) = resp.into_parts();
        let status = parts.status;
        if status.is_informational() || status == StatusCode::NO_CONTENT {
            // RFC 9110 §8.6: these never carry a length.
            parts.headers.remove(header::CONTENT_LENGTH);
        }
        let ex = &mut self.exchange;
        ex.switching = status == StatusCode::SWITCHING_PROTOCOLS && ex.upgrade.is_some();
        let no_body = ex.head_request
            || status.is_informational()
            || status == StatusCode::NO_CONTENT
            || status == StatusCode::NOT_MODIFIED;
        let fields = response_fields(&parts.headers);
        let framing = if no_body {
            let announce_chunked = ex.head_request
                && !ex.http10
                && fields.content_length.is_none()
                && !status.is_informational()
                && status != StatusCode::NO_CONTENT
                && status != StatusCode::NOT_MODIFIED;
            if announce_chunked {
                ResponseFraming::HeadChunked
            } else {
                ResponseFraming::None
            }
        } else if let Some(n) = fields.content_length {
            ResponseFraming::Length(n)
        } else if let Some(n) = body.size_hint().exact() {
            ResponseFraming::Length(n)
        } else if ex.http10 {
            ResponseFraming::UntilClose
        } else {
            ResponseFraming::Chunked
        };
        // As Envoy: a response that goes out before its request has fully arrived ends the
        // connection (the rest of the request cannot be told from a next one).
        if framing == ResponseFraming::UntilClose
            || !self.t.borrow().body_done()
            || self.shutting_down
            || self.info.closing()
            || fields.close
        {
            ex.keep_alive = false;
        }
        let connection = if ex.switching {
            ConnectionHeader::AsGiven
        } else if !ex.keep_alive {
            ConnectionHeader::Close
        } else if ex.http10 {
            ConnectionHeader::KeepAlive
        } else {
            ConnectionHeader::Omit
        };
        // The status line carries the client's version, as Envoy's does.
        parts.version = if ex.http10 {
            Version::HTTP_10
        } else {
            Version::HTTP_11
        };
        let keys = self.info.settings().key_format;
        self.out.push_head(&parts, framing, connection, keys);
        header_map_pool::recycle(parts.headers);
        self.phase = match framing {
            // The body's completion hooks (stats, access log) run as it is dropped.
            ResponseFraming::None | ResponseFraming::HeadChunked => Phase::Flush,
            _ => Phase::Body {
                body,
                framing,
                left: match framing {
                    ResponseFraming::Length(n) => n,
                    _ => 0,
                },
            },
        };
    }

    /// Moves response body frames into the write queue, and out.
    fn poll_body(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let Phase::Body {
            body,
            framing,
            left,
        } = &mut self.phase
        else {
            return Poll::Ready(Ok(()));
        };
        loop {
            if self.out.len >= HIGH_WATER {
                let mut t = self.t.borrow_mut();
                ready!(self.out.poll_flush(&mut t.io, cx))?;
            }
            let frame = match Pin::new(&mut *body).poll_frame(cx) {
                Poll::Pending => {
                    let mut t = self.t.borrow_mut();
                    ready!(self.out.poll_flush(&mut t.io, cx))?;
                    return Poll::Pending;
                }
                Poll::Ready(f) => f,
            };
            match frame {
                Some(Ok(frame)) => {
                    let mut data = match frame.into_data() {
                        Ok(data) => data,
                        // Trailers end a chunked body with `enable_trailers`; otherwise
                        // (and after a length) they are dropped, as Envoy's codec does.
                        Err(frame) => {
                            let trailers = frame.into_trailers().ok();
                            if let (Some(t), ResponseFraming::Chunked, true) =
                                (trailers, &*framing, self.info.settings().trailers)
                            {
                                self.out.push_trailers(&t);
                                *framing = ResponseFraming::None;
                            }
                            continue;
                        }
                    };
                    if data.is_empty() {
                        continue;
                    }
                    match framing {
                        ResponseFraming::Length(_) => {
                            if data.len() as u64 > *left {
                                // More than announced: cut, and never reuse the connection.
                                data.truncate(*left as usize);
                                self.exchange.keep_alive = false;
                            }
                            *left -= data.len() as u64;
                            self.out.push_bytes(data);
                        }
                        ResponseFraming::Chunked => {
                            self.out
                                .push_slice(format!("{:x}\r\n", data.len()).as_bytes());
                            self.out.push_bytes(data);
                            self.out.push_slice(b"\r\n");
                        }
                        ResponseFraming::UntilClose => self.out.push_bytes(data),
                        ResponseFraming::None | ResponseFraming::HeadChunked => {}
                    }
                }
                None => {
                    match framing {
                        ResponseFraming::Chunked => self.out.push_slice(b"0\r\n\r\n"),
                        // Less than announced: the client sees the close.
                        ResponseFraming::Length(_) if *left > 0 => {
                            self.exchange.keep_alive = false;
                        }
                        _ => {}
                    }
                    self.phase = Phase::Flush;
                    return Poll::Ready(Ok(()));
                }
                Some(Err(e)) => {
                    // The upstream failed mid-body: what was sent stands, unterminated, and
                    // the connection closes (as Envoy resets the stream).
                    tracing::debug!(error = %e, "response body failed");
                    self.exchange.keep_alive = false;
                    self.phase = Phase::Flush;
                    return Poll::Ready(Ok(()));
                }
            }
        }
    }
}

/// Envoy's reply to a request its codec refuses: the status and its reason as the body (no
/// body for a target its connection manager refuses).
fn error_reply(info: &impl H1Service, e: CodecError) -> Response<ProxyBody> {
    let body = if e.bare { "" } else { reason_phrase(e.status) };
    info.local_reply(e.status, body)
}
