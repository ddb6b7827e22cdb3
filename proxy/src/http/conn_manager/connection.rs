//! A downstream HTTP connection on a worker: an [`EventHandler`] owning the codec (Courier's
//! HTTP/1.1 server, [`crate::http::codec::h1_server`], or hyper's HTTP/2 server connection), polled when
//! its waker fires (`on_wake`).
//!
//! ```text
//!  accept ─► [Handshake (TLS): ALPN h2 / http/1.1 decides the codec] ─►
//!            Detect (AUTO: HTTP/2 preface?) ─► H1 | H2 ─► done (close)
//!                        drain / idle / max duration ─► graceful shutdown (Connection: close
//!                                                       or GOAWAY) ─► done
//!            H1 ─► 101 ─► Tunnel (the socket is spliced elsewhere) ─► done when the tunnel
//!                         ends; closing the connection (a drain's end) ends the tunnel
//! ```

use std::cell::Cell;
use std::future::Future;
use std::io;
use std::mem::MaybeUninit;
use std::pin::Pin;
use std::rc::Rc;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::task::{Context, Poll, Waker};
use std::time::{Duration, Instant};

use hyper::server::conn::http2;
use mio::event::Event;

use crate::http::codec::body::ProxyBody;
use crate::http::codec::h1_server::{End, H1Server, ServeFuture};
use crate::http::codec::h2_head_watch::HeadWatch;
use crate::http::codec::handoff::PrefixedIo;
use crate::http::codec::request_fields::is_valid_authority;
use crate::http::conn_manager::config::{Codec, HcmConfig};
use crate::http::conn_manager::conn_info::ConnInfo;
use crate::http::conn_manager::conn_info::ListenerLog;
use crate::http::conn_manager::local_reply::local_reply;
use crate::http::conn_manager::upgrade;
use crate::listener::AcceptedConnection;
use crate::overload::load_shed::{self, Point};
use crate::overload::scaled_timers::{self, scaled, ScaleWatch, TimerType};
use crate::transport_socket::tls::{ServerContext, TlsConnectionInfo};
use crate::transport_socket::{TlsIo, Transport};
use crate::worker::{Ctx, EventHandler, HandlerId, Next, WorkerLocal};
use courier_runtime::event::rt::{self, LocalExec, RtTimer, TcpIo};

const PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";
const TIMER_IDLE: u64 = 1;
const TIMER_MAX_DURATION: u64 = 2;
const TIMER_HANDSHAKE: u64 = 3;
const TIMER_H2_HEAD: u64 = 4;

/// The request handler hyper's HTTP/2 server calls.
#[derive(Clone)]
pub struct HcmService {
    conn: Rc<ConnInfo>,
}

impl hyper::service::Service<http::Request<hyper::body::Incoming>> for HcmService {
    type Response = http::Response<ProxyBody>;
    type Error = std::convert::Infallible;
    type Future = ServeFuture;

    fn call(&self, mut req: http::Request<hyper::body::Incoming>) -> Self::Future {
        if let Some(authority) = req.uri().authority() {
            // RFC 9113 §8.3.1: no userinfo in `:authority`; Envoy also refuses characters
            // an authority may not hold (the `h2` crate refuses most of them first).
            let a = authority.as_str().as_bytes();
            if a.contains(&b'@') || !is_valid_authority(a) {
                tracing::debug!(authority = %authority, "invalid :authority refused");
                let reply = local_reply(http::StatusCode::BAD_REQUEST, "");
                return Box::pin(std::future::ready(Ok(reply)));
            }
        }
        let upgrade = upgrade::h2_to_h1_request(&mut req);
        crate::http::conn_manager::headers::join_cookies(req.headers_mut());
        crate::http::conn_manager::serve::serve_boxed(
            self.conn.clone(),
            req.map(|b| ProxyBody::stream(b, None)),
            upgrade,
            Instant::now(),
        )
    }
}

type H2Conn = http2::Connection<HeadWatch, HcmService, LocalExec>;

enum State {
    /// The TLS handshake (a chain with a TLS transport socket).
    Handshake(Option<Box<TlsIo>>, Arc<ServerContext>),
    Detect {
        io: Option<Transport>,
        buf: Vec<u8>,
    },
    H1(Box<H1Server<ConnInfo>>),
    H2(Pin<Box<H2Conn>>),
    /// An HTTP/1.1 connection upgraded: the tunnel has its socket; kept so that closing
    /// the connection (a listener's drain) closes the tunnel.
    Tunnel(crate::http::codec::handoff::TunnelLink),
    Done,
}

/// One downstream HTTP connection.
pub struct HttpConnection {
    config: Arc<HcmConfig>,
    chain_tag: u64,
    worker: usize,
    state: State,
    waker: Waker,
    info: Rc<ConnInfo>,
    started: Instant,
    shutting_down: bool,
    /// HTTP/2: since when a client's header block has been waiting for its end (what the
    /// stream timers run from while hyper has no stream to show yet).
    h2_head: Option<Rc<Cell<Option<Instant>>>>,
    /// The open header block the head timer is armed for.
    h2_head_armed: Option<Instant>,
    /// The filter chain's `transport_socket_connect_timeout` (TLS chains).
    handshake_timeout: Option<Duration>,
    /// `max_connection_duration` has run out (the connection drains).
    max_duration_reached: bool,
    /// Registered while `reduce_timeouts` scales one of the connection's timers: woken
    /// when the scale changes, the timers are looked at again.
    scale_watch: Option<ScaleWatch>,
    /// The scale generation the timers were last looked at in.
    scale_seen: u64,
    /// The chain's filters before this one, until they decide (when the connection is
    /// established: after its TLS handshake, before its codec reads).
    read_filters: Option<crate::filters::network::rbac::ReadFilters>,
}

impl HttpConnection {
    /// Takes over an accepted connection.
    pub fn start(
        ctx: &mut Ctx,
        me: HandlerId,
        accepted: AcceptedConnection,
        config: Arc<HcmConfig>,
    ) -> io::Result<Box<dyn EventHandler<WorkerLocal>>> {
        let AcceptedConnection {
            stream,
            chain_tag,
            listener_stats,
            buffer_limit,
            tls,
            requested_server_name,
            handshake_timeout,
            restored_local,
            restored_remote,
            permit,
            listener_logs,
            read_filters,
            held,
        } = accepted;
        let worker = ctx.local.id;
        let (remote, direct_remote) = match restored_remote {
            Some(src) => (src, crate::listener::peer_addr(&stream).ok()),
            None => (crate::listener::peer_addr(&stream)?, None),
        };
        let local = match restored_local {
            Some(dst) => dst,
            None => crate::listener::local_addr(&stream)?,
        };
        let rt = rt::current().ok_or_else(|| io::Error::other("no worker runtime"))?;
        let tcp = TcpIo::new(stream)?;
        let listener_log = listener_logs.map(|logs| ListenerLog {
            logs,
            start: ctx.now,
            start_wall: std::time::SystemTime::now(),
            counters: tcp.counters(),
        });
        let secure = tls.is_some();
        let state = match tls {
            Some(tls) => State::Handshake(
                Some(Box::new(TlsIo::new(tcp, tls.session(worker)?))),
                tls.context,
            ),
            None => State::Detect {
                io: Some(Transport::Raw(tcp)),
                buf: Vec::new(),
            },
        };
        let waker = rt.handler_waker(me);
        listener_stats.downstream_cx_total.inc(worker);
        listener_stats.downstream_cx_active.inc(worker);
        config.stats.downstream_cx_total.inc(worker);
        config.stats.downstream_cx_active.inc(worker);
        let logged = !config.access_logs.is_empty() || listener_log.is_some();
        let info = Rc::new(ConnInfo {
            id: if logged {
                crate::access_log::next_connection_id()
            } else {
                0
            },
            permit,
            held,
            rate_limit_buckets: Default::default(),
            draining: Default::default(),
            config: config.clone(),
            remote,
            direct_remote,
            local,
            local_restored: restored_local.is_some(),
            worker,
            requests: Cell::new(0),
            active: Cell::new(0),
            closing: Cell::new(false),
            last_activity: Cell::new(ctx.now),
            listener_stats,
            http2: Cell::new(None),
            buffer_limit,
            h1: config.h1_settings(),
            secure,
            tls: Default::default(),
            requested_server_name: requested_server_name.map(String::into_boxed_str),
            listener_log,
        });
        let mut conn = HttpConnection {
            config,
            chain_tag,
            worker,
            state,
            waker,
            info,
            started: ctx.now,
            shutting_down: false,
            h2_head: None,
            h2_head_armed: None,
            handshake_timeout: handshake_timeout.filter(|_| secure),
            max_duration_reached: false,
            scale_watch: None,
            scale_seen: scaled_timers::generation(),
            read_filters: (!read_filters.is_empty()).then_some(read_filters),
        };
        let scaled_type = [
            TimerType::ConnectionIdle,
            TimerType::ConnectionMax,
            TimerType::TransportSocketConnect,
        ]
        .into_iter()
        .find(|t| scaled_timers::scales(*t));
        if let Some(t) = scaled_type {
            conn.scale_watch = ScaleWatch::register(t, &conn.waker);
        }
        // Each timer is armed for its duration scaled by `reduce_timeouts` now, and looks
        // at the scale again when it fires.
        if let Some(idle) = conn.config.idle_timeout {
            ctx.schedule(me, scaled(TimerType::ConnectionIdle, idle), TIMER_IDLE);
        }
        if let Some(max) = conn.config.max_connection_duration {
            ctx.schedule(
                me,
                scaled(TimerType::ConnectionMax, max),
                TIMER_MAX_DURATION,
            );
        }
        if let Some(t) = conn.handshake_timeout {
            ctx.schedule(
                me,
                scaled(TimerType::TransportSocketConnect, t),
                TIMER_HANDSHAKE,
            );
        }
        ctx.local.track_connection(chain_tag, me);
        if conn.poll() {
            // Finished before it began (peer closed at once); still a handler until the
            // first wake, which the dispatcher delivers right away.
            conn.waker.wake_by_ref();
        } else {
            // The first read may already have opened a header block.
            conn.arm_h2_head_timer(ctx, me);
        }
        Ok(Box::new(conn))
    }

    fn service(&self) -> HcmService {
        HcmService {
            conn: self.info.clone(),
        }
    }

    fn h1(&mut self, io: Transport, prefix: &[u8]) {
        let cfg = &self.config;
        cfg.stats.downstream_cx_http1_total.inc(self.worker);
        cfg.stats.downstream_cx_http1_active.inc(self.worker);
        self.info.http2.set(Some(false));
        self.state = State::H1(Box::new(H1Server::new(io, prefix, self.info.clone())));
    }

    fn h2(&mut self, io: PrefixedIo) {
        let cfg = &self.config;
        let mut b = http2::Builder::new(LocalExec);
        // The h2 crate counts 32 bytes more a field than Envoy (RFC 9113's list size);
        // with that allowance, `check_header_fields` holds the block to Envoy's limit
        // (name and value bytes) and answers `431`.
        let overhead = 32 * (cfg.max_headers_count as u32).saturating_add(5);
        b.timer(RtTimer)
            .max_header_list_size((cfg.max_request_headers_kb * 1024).saturating_add(overhead));
        cfg.h2.apply_server(&mut b);
        if cfg.h2_allow_connect {
            b.enable_connect_protocol();
        }
        let open = Rc::new(Cell::new(None));
        let conn = b.serve_connection(
            HeadWatch::new(io, open.clone(), cfg.h2.flood),
            self.service(),
        );
        self.h2_head = Some(open);
        cfg.stats.downstream_cx_http2_total.inc(self.worker);
        cfg.stats.downstream_cx_http2_active.inc(self.worker);
        self.info.http2.set(Some(true));
        self.state = State::H2(Box::pin(conn));
    }

    /// Asks the chain's filters before this one, once the connection is established
    /// (after its TLS handshake); true when one denied it (the connection is done).
    fn denied_by_read_filters(&mut self) -> bool {
        let Some(filters) = self.read_filters.take() else {
            return false;
        };
        let info = &self.info;
        let facts = crate::filters::network::rbac::ConnectionFacts {
            local: info.local,
            peer: info.direct_remote.unwrap_or(info.remote),
            requested_server_name: info.requested_server_name.as_deref(),
            tls: info.tls.get().map(|t| &**t),
        };
        if filters.admit(&facts, self.worker) {
            return false;
        }
        tracing::debug!("connection denied by a network filter");
        self.state = State::Done;
        true
    }

    /// Drives the connection; true when it is finished.
    fn poll(&mut self) -> bool {
        // A response asked for the connection to drain (a failed health check).
        if self.info.draining.get() && !self.shutting_down && !self.defers_drain() {
            self.graceful();
        }
        // The `http2_server_go_away_on_dispatch` load shed point, each time the HTTP/2
        // codec is driven (data arrived, mostly): a GOAWAY, and the connection drains.
        if !self.shutting_down
            && matches!(self.state, State::H2(_))
            && load_shed::should_shed(Point::H2ServerGoAwayOnDispatch, self.worker)
        {
            tracing::debug!("HTTP/2 GOAWAY on dispatch: overloaded");
            self.graceful();
        }
        let waker = self.waker.clone();
        let mut cx = Context::from_waker(&waker);
        loop {
            match &mut self.state {
                State::Handshake(tls, context) => {
                    let Some(io) = tls.as_mut() else { return true };
                    match io.poll_handshake(&mut cx) {
                        Poll::Pending => return false,
                        Poll::Ready(Err(e)) => {
                            tracing::debug!(error = %e, "downstream TLS handshake failed");
                            self.state = State::Done;
                            return true;
                        }
                        Poll::Ready(Ok(())) => {}
                    }
                    let Some(io) = tls.take() else { return true };
                    let _ = self.info.tls.set(Box::new(TlsConnectionInfo::of(
                        io.session(),
                        &context.local_uri_sans(),
                        self.config.client_cert.encodings(),
                    )));
                    // Decided before ALPN may name the codec and skip detection.
                    if self.read_filters.is_some() && self.denied_by_read_filters() {
                        return true;
                    }
                    // With AUTO, ALPN names the codec; without it the preface does.
                    let alpn = match self.config.codec {
                        Codec::Auto => io
                            .session()
                            .connection()
                            .alpn_protocol()
                            .map(<[u8]>::to_vec),
                        _ => None,
                    };
                    let io = Transport::Tls(io);
                    if alpn.is_some()
                        && load_shed::should_shed(Point::HcmOndataCreatingCodec, self.worker)
                    {
                        self.shed_codec();
                        return true;
                    }
                    match alpn.as_deref() {
                        Some(b"h2") => self.h2(PrefixedIo::new(Vec::new(), io)),
                        Some(b"http/1.1") => self.h1(io, &[]),
                        _ => {
                            self.state = State::Detect {
                                io: Some(io),
                                buf: Vec::new(),
                            }
                        }
                    }
                    if self.shutting_down || (self.info.draining.get() && !self.defers_drain()) {
                        self.graceful();
                    }
                }
                State::Detect { .. } if self.read_filters.is_some() => {
                    if self.denied_by_read_filters() {
                        return true;
                    }
                }
                State::Detect { io, buf } => {
                    let codec = self.config.codec;
                    let decided = match codec {
                        Codec::Http1 => Some(false),
                        Codec::Http2 => Some(true),
                        Codec::Auto => {
                            let Some(tcp) = io.as_mut() else { return true };
                            let mut tmp = [MaybeUninit::<u8>::uninit(); 24];
                            let want = PREFACE.len() - buf.len();
                            match tcp.poll_recv(&mut cx, &mut tmp[..want]) {
                                Poll::Pending => return false,
                                Poll::Ready(Err(_)) | Poll::Ready(Ok(0)) => {
                                    self.state = State::Done;
                                    return true;
                                }
                                Poll::Ready(Ok(n)) => {
                                    // SAFETY: `recv` initialised the first `n` bytes.
                                    let got = unsafe {
                                        std::slice::from_raw_parts(tmp.as_ptr() as *const u8, n)
                                    };
                                    buf.extend_from_slice(got);
                                }
                            }
                            if !PREFACE.starts_with(buf) {
                                Some(false)
                            } else if buf.len() == PREFACE.len() {
                                Some(true)
                            } else {
                                None
                            }
                        }
                    };
                    let Some(is_h2) = decided else { continue };
                    if load_shed::should_shed(Point::HcmOndataCreatingCodec, self.worker) {
                        // What already arrived is read first, as Envoy has it when it
                        // closes: the close is a FIN, not a reset.
                        if let Some(tcp) = io.as_mut() {
                            let mut tmp = [MaybeUninit::<u8>::uninit(); 4096];
                            while let Poll::Ready(Ok(n)) = tcp.poll_recv(&mut cx, &mut tmp) {
                                if n == 0 {
                                    break;
                                }
                            }
                        }
                        self.shed_codec();
                        return true;
                    }
                    let State::Detect { io, buf } = &mut self.state else {
                        return true;
                    };
                    let Some(tcp) = io.take() else { return true };
                    let prefix = std::mem::take(buf);
                    if is_h2 {
                        self.h2(PrefixedIo::new(prefix, tcp));
                    } else {
                        self.h1(tcp, &prefix);
                    }
                    if self.shutting_down || (self.info.draining.get() && !self.defers_drain()) {
                        self.graceful();
                    }
                }
                State::H1(conn) => {
                    return match conn.poll(&mut cx) {
                        Poll::Pending => false,
                        Poll::Ready(r) => {
                            let State::H1(conn) = std::mem::replace(&mut self.state, State::Done)
                            else {
                                return true;
                            };
                            match r {
                                Ok(End::Upgraded) => {
                                    if let Some(link) = conn.hand_over() {
                                        self.state = State::Tunnel(link);
                                        continue;
                                    }
                                }
                                Ok(End::Closed) => {}
                                Err(e) => {
                                    tracing::debug!(error = %e, "downstream connection error")
                                }
                            }
                            true
                        }
                    };
                }
                State::Tunnel(link) => {
                    return match Pin::new(link).poll(&mut cx) {
                        Poll::Pending => false,
                        Poll::Ready(()) => {
                            self.state = State::Done;
                            true
                        }
                    };
                }
                State::H2(conn) => {
                    return match conn.as_mut().poll(&mut cx) {
                        Poll::Pending => false,
                        Poll::Ready(r) => {
                            if let Err(e) = r {
                                self.note_error(&e);
                            }
                            self.state = State::Done;
                            true
                        }
                    };
                }
                State::Done => return true,
            }
        }
    }

    /// The `hcm_ondata_creating_codec` load shed point shed the connection: it closes
    /// before a codec is made for it (counted in `downstream_rq_overload_close`, as
    /// Envoy's).
    fn shed_codec(&mut self) {
        self.config
            .stats
            .downstream_rq_overload_close
            .inc(self.worker);
        tracing::debug!("closing the connection before creating its codec: overloaded");
        self.state = State::Done;
    }

    fn note_error(&self, e: &hyper::Error) {
        if e.is_parse() || e.is_parse_too_large() || e.is_parse_status() {
            self.config
                .stats
                .downstream_cx_protocol_error
                .inc(self.worker);
        } else if e.is_timeout() {
            self.config
                .stats
                .downstream_rq_header_timeout
                .inc(self.worker);
        }
        tracing::debug!(error = %e, "downstream http connection error");
    }

    fn graceful(&mut self) {
        self.shutting_down = true;
        match &mut self.state {
            State::H1(c) => c.graceful(),
            State::H2(c) => c.as_mut().graceful_shutdown(),
            // Nothing to tell a tunnel: it closes with the connection at the drain's end.
            State::Handshake(..) | State::Detect { .. } | State::Tunnel(_) | State::Done => {}
        }
        self.waker.wake_by_ref();
    }

    fn close(&mut self, ctx: &mut Ctx, me: HandlerId) -> Next {
        ctx.local.untrack_connection(self.chain_tag, me);
        Next::Close
    }

    fn run(&mut self, ctx: &mut Ctx, me: HandlerId) -> Next {
        if self.scale_watch.is_some() && self.scale_seen != scaled_timers::generation() {
            // `reduce_timeouts`' scale changed: every timer looks at its deadline again.
            self.scale_seen = scaled_timers::generation();
            for tag in [TIMER_IDLE, TIMER_MAX_DURATION, TIMER_HANDSHAKE] {
                ctx.schedule(me, Duration::ZERO, tag);
            }
        }
        if self.poll() {
            return self.close(ctx, me);
        }
        self.arm_h2_head_timer(ctx, me);
        Next::Continue
    }

    /// HTTP/2: a header block that opened and has not ended gets the stream's first timer
    /// (from the block's first frame), once per block.
    fn arm_h2_head_timer(&mut self, ctx: &mut Ctx, me: HandlerId) {
        let Some(since) = self.h2_head.as_ref().and_then(|open| open.get()) else {
            return;
        };
        if self.h2_head_armed == Some(since) {
            return;
        }
        let Some((timeout, _)) = self.info.h1.first_head_timer() else {
            return;
        };
        self.h2_head_armed = Some(since);
        ctx.schedule(
            me,
            (since + timeout).saturating_duration_since(ctx.now),
            TIMER_H2_HEAD,
        );
    }
}

impl EventHandler<WorkerLocal> for HttpConnection {
    fn on_ready(&mut self, _source: usize, _event: &Event, ctx: &mut Ctx, me: HandlerId) -> Next {
        self.run(ctx, me)
    }

    fn on_wake(&mut self, ctx: &mut Ctx, me: HandlerId) -> Next {
        self.run(ctx, me)
    }

    fn on_timer(&mut self, tag: u64, ctx: &mut Ctx, me: HandlerId) -> Next {
        match tag {
            TIMER_IDLE => {
                let Some(idle) = self.config.idle_timeout else {
                    return Next::Continue;
                };
                let idle = scaled(TimerType::ConnectionIdle, idle);
                if self.info.active.get() > 0 {
                    ctx.schedule(me, idle, TIMER_IDLE);
                    return Next::Continue;
                }
                let quiet = ctx
                    .now
                    .saturating_duration_since(self.info.last_activity.get());
                if quiet >= idle {
                    self.config
                        .stats
                        .downstream_cx_idle_timeout
                        .inc(self.worker);
                    if matches!(self.state, State::Detect { .. } | State::Handshake(..)) {
                        return self.close(ctx, me);
                    }
                    self.graceful();
                    return self.run(ctx, me);
                }
                ctx.schedule(me, idle - quiet, TIMER_IDLE);
                Next::Continue
            }
            TIMER_HANDSHAKE => {
                let Some(timeout) = self.handshake_timeout else {
                    return Next::Continue;
                };
                if !matches!(self.state, State::Handshake(..)) {
                    return Next::Continue;
                }
                let timeout = scaled(TimerType::TransportSocketConnect, timeout);
                let age = ctx.now.saturating_duration_since(self.started);
                if age < timeout {
                    ctx.schedule(me, timeout - age, TIMER_HANDSHAKE);
                    return Next::Continue;
                }
                self.info
                    .listener_stats
                    .downstream_cx_transport_socket_connect_timeout
                    .inc(self.worker);
                tracing::debug!("TLS handshake timed out");
                self.close(ctx, me)
            }
            TIMER_H2_HEAD => {
                self.h2_head_armed = None;
                let Some(since) = self.h2_head.as_ref().and_then(|open| open.get()) else {
                    return Next::Continue;
                };
                let Some((timeout, which)) = self.info.h1.first_head_timer() else {
                    return Next::Continue;
                };
                if ctx.now < since + timeout {
                    // Another block opened since the timer was armed.
                    self.arm_h2_head_timer(ctx, me);
                    return Next::Continue;
                }
                // Envoy answers the stream a 408 and resets it; hyper has no stream to
                // answer until the block ends, and until then nothing else may cross the
                // connection (RFC 9113 §6.10): it closes.
                tracing::debug!(timer = ?which, "HTTP/2 request head timed out; closing the connection");
                self.info.head_timed_out(which, since, None, 0);
                self.close(ctx, me)
            }
            TIMER_MAX_DURATION => {
                let Some(max) = self.config.max_connection_duration else {
                    return Next::Continue;
                };
                if self.max_duration_reached {
                    return Next::Continue;
                }
                let max = scaled(TimerType::ConnectionMax, max);
                let age = ctx.now.saturating_duration_since(self.started);
                if age < max {
                    ctx.schedule(me, max - age, TIMER_MAX_DURATION);
                    return Next::Continue;
                }
                self.max_duration_reached = true;
                self.config
                    .stats
                    .downstream_cx_max_duration_reached
                    .inc(self.worker);
                self.info.closing.set(true);
                self.graceful();
                self.run(ctx, me)
            }
            _ => Next::Continue,
        }
    }

    fn on_drain(&mut self, ctx: &mut Ctx, me: HandlerId) -> Next {
        // Envoy drains HTTP connections gracefully: `Connection: close` on HTTP/1.1, GOAWAY
        // on HTTP/2.
        self.info.drain_close();
        if self.defers_drain() {
            // A hot restart's parent: a connection closed before it has read what the
            // client sent resets it, and an idle HTTP/1 connection (or one not yet
            // speaking) may have a request on the wire. It ends after its next response
            // (`connection: close`) instead, or when the drain time ends.
            return Next::Continue;
        }
        if matches!(self.state, State::Detect { .. } | State::Handshake(..)) {
            return self.close(ctx, me);
        }
        self.graceful();
        self.run(ctx, me)
    }
}

impl HttpConnection {
    /// Whether a drain leaves this connection open until its next response: in a hot
    /// restart's parent, HTTP/1 connections and those whose codec is not chosen yet
    /// (HTTP/2 ones get their GOAWAY, which a client reads before it sends more).
    fn defers_drain(&self) -> bool {
        matches!(
            self.state,
            State::H1(_) | State::Detect { .. } | State::Handshake(..)
        ) && HAND_OVER_DRAIN.load(Ordering::Relaxed)
    }
}

/// Set in a hot restart's parent once it hands its listeners over: HTTP/1 connections
/// drain by `connection: close` on their next response, idle ones are not cut at once.
pub static HAND_OVER_DRAIN: std::sync::atomic::AtomicBool =
    std::sync::atomic::AtomicBool::new(false);
