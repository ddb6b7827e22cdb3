//! One proxied TCP connection: an explicit state machine over two non-blocking sockets.
//!
//! ```text
//!   accept ──► Connecting ──(upstream writable, no error)──► Open ──(both directions
//!                 │  ▲                                          │     closed)──► closed
//!                 │  └──(failure, attempts left: next host)     └──(reset/error/idle)──► closed
//!                 └──(failure or timeout, no attempts left)──► downstream closed
//! ```
//!
//! Data is read into the worker's shared scratch buffer and written straight to the other
//! side; only what the other side cannot take right now is copied into this direction's
//! `pending` buffer. While `pending` is above the high watermark (the receiving
//! connection's buffer limit) the source is not read, which pushes back on the sender
//! through TCP flow control. An idle connection holds no buffer memory at all.

use std::io::{self, IoSlice, Read, Write};
use std::mem::MaybeUninit;
use std::net::Shutdown;
use std::sync::Arc;
use std::time::{Duration, Instant};

use mio::event::Event;
use mio::net::TcpStream;
use mio::Interest;

use super::TcpProxyConfig;
use crate::access_log::{AccessLogType, LogEntry};
use crate::listener::AcceptedConnection;
use crate::listener::ListenerStats;
use crate::overload::connection_limit::ConnectionPermit;
use crate::transport_socket::tls::{AlpnFallback, TlsConnectionInfo, TlsSession};
use crate::upstream::{ClusterInfo, Host, ThreadLocalClusterManager};
use crate::worker::{Ctx, EventHandler, HandlerId, Next, WorkerLocal};

const DOWNSTREAM: usize = 0;
const UPSTREAM: usize = 1;

const TIMER_IDLE: u64 = 1;
const TIMER_MAX_DURATION: u64 = 2;
const TIMER_HANDSHAKE: u64 = 3;
const TIMER_ACCESS_LOG: u64 = 4;
/// Connect timeouts carry the attempt number so a stale one is ignored.
const TIMER_CONNECT: u64 = 1 << 32;

/// Size of the per-worker scratch buffer reads go through. Bulk transfers spend nearly
/// all their time in the kernel's copies and the wake-ups each `send` causes, so fewer,
/// larger reads and writes cost less CPU per byte; one buffer per worker, not per
/// connection, so the size costs no memory per connection.
pub const SCRATCH_SIZE: usize = 256 * 1024;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    Connecting,
    Open,
}

/// One socket and what we know of its readiness (mio is edge-triggered: a flag stays set
/// until a syscall returns `WouldBlock`), with its TLS session when its transport socket
/// is TLS.
struct Side {
    stream: TcpStream,
    tls: Option<Box<TlsSession>>,
    readable: bool,
    writable: bool,
    read_closed: bool,
    write_closed: bool,
}

impl Side {
    fn new(stream: TcpStream, tls: Option<TlsSession>) -> Side {
        Side {
            stream,
            tls: tls.map(Box::new),
            readable: false,
            writable: false,
            read_closed: false,
            write_closed: false,
        }
    }

    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        match &mut self.tls {
            None => self.stream.read(buf),
            Some(tls) => {
                // SAFETY: `MaybeUninit<u8>` has the layout of `u8`; only bytes are written.
                let out = unsafe { &mut *(buf as *mut [u8] as *mut [MaybeUninit<u8>]) };
                tls.read(&mut self.stream, out)
            }
        }
    }

    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        match &mut self.tls {
            None => self.stream.write(buf),
            Some(tls) => tls.write(&mut self.stream, &[IoSlice::new(buf)]),
        }
    }

    /// Writes what the TLS session holds (handshake messages, records a full socket
    /// refused); an error only when the socket failed.
    fn flush_tls(&mut self) -> io::Result<()> {
        let Some(tls) = &mut self.tls else {
            return Ok(());
        };
        if !self.writable || !tls.wants_write() {
            return Ok(());
        }
        match tls.flush(&mut self.stream) {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                self.writable = false;
                Ok(())
            }
            Err(e) => Err(e),
        }
    }

    fn shutdown_write(&mut self) -> io::Result<()> {
        if let Some(tls) = &mut self.tls {
            // close_notify, best effort: the FIN follows regardless.
            let _ = tls.close(&mut self.stream);
        }
        self.stream.shutdown(Shutdown::Write)
    }

    fn note(&mut self, event: &Event) {
        self.readable |= event.is_readable() || event.is_read_closed() || event.is_error();
        self.writable |= event.is_writable() || event.is_write_closed() || event.is_error();
    }

    fn done(&self) -> bool {
        self.read_closed && self.write_closed
    }

    /// Makes the close an RST, so the peer learns the other side was reset.
    fn reset_on_close(&self) {
        let _ = socket2::SockRef::from(&self.stream).set_linger(Some(Duration::ZERO));
    }
}

/// Bytes read from one side that the other side has not accepted yet.
#[derive(Default)]
struct Pending {
    data: Vec<u8>,
    start: usize,
}

impl Pending {
    fn len(&self) -> usize {
        self.data.len() - self.start
    }

    fn is_empty(&self) -> bool {
        self.start == self.data.len()
    }

    fn bytes(&self) -> &[u8] {
        &self.data[self.start..]
    }

    fn consume(&mut self, n: usize) {
        self.start += n;
        if self.is_empty() {
            // Release memory once drained: idle connections should cost nothing.
            if self.data.capacity() > 16 * 1024 {
                self.data = Vec::new();
            } else {
                self.data.clear();
            }
            self.start = 0;
        }
    }

    fn push(&mut self, bytes: &[u8]) {
        if self.start > 0 && self.start >= self.data.len() / 2 {
            self.data.drain(..self.start);
            self.start = 0;
        }
        self.data.extend_from_slice(bytes);
    }
}

/// Why a session ends abnormally.
enum Failure {
    /// A socket error on `side`: propagate it as a reset to the other side.
    Reset(usize),
    /// A filter before this one denied the connection on its first bytes.
    Denied,
}

/// A TCP proxy session.
pub struct TcpProxySession {
    /// The connection's share of the global connection limit.
    _permit: ConnectionPermit,
    /// Its places in the chain's connection limits.
    _held: crate::filters::network::on_new_connection::Held,
    config: Arc<TcpProxyConfig>,
    chain_tag: u64,
    listener_stats: Arc<ListenerStats>,
    worker: usize,
    state: State,
    downstream: Side,
    upstream: Option<Side>,
    cluster: Option<Arc<ClusterInfo>>,
    host: Option<Arc<Host>>,
    /// The original destination the listener restored (an `ORIGINAL_DST` cluster's host).
    restored_local: Option<std::net::SocketAddr>,
    /// The client address a PROXY protocol header gave.
    restored_remote: Option<std::net::SocketAddr>,
    attempts: u32,
    to_upstream: Pending,
    to_downstream: Pending,
    downstream_limit: usize,
    last_activity: Instant,
    /// What the access logs say of the connection (only when the filter has some).
    log: Option<Box<SessionLog>>,
    /// The chain's filters before this one, until they decide on the first bytes, with
    /// what the connection offers them.
    gate: Option<Box<Gate>>,
}

/// What the filters before the TCP proxy decide on.
struct Gate {
    filters: crate::filters::network::rbac::ReadFilters,
    local: Option<std::net::SocketAddr>,
    peer: Option<std::net::SocketAddr>,
    requested_server_name: Option<String>,
    local_uri_sans: Vec<String>,
}

/// What a TCP proxy connection's access-log entries say.
struct SessionLog {
    start: Instant,
    start_wall: std::time::SystemTime,
    /// Bytes read from and written to the downstream connection.
    received: u64,
    sent: u64,
    /// Envoy's response flags.
    flags: &'static str,
    /// Why the last upstream connection attempt failed.
    transport_failure: Option<String>,
    upstream_local: Option<std::net::SocketAddr>,
    /// The upstream connection's address, once connected.
    upstream_remote: Option<std::net::SocketAddr>,
    local: Option<std::net::SocketAddr>,
    remote: Option<std::net::SocketAddr>,
    /// The downstream connection's id.
    connection_id: u64,
    /// The peer's own address, when a PROXY protocol header named another.
    direct_remote: Option<std::net::SocketAddr>,
    requested_server_name: Option<String>,
    /// The downstream TLS context's URI SANs (for `%DOWNSTREAM_LOCAL_URI_SAN%`).
    local_uri_sans: Vec<String>,
    /// The listener's access logs (its entry when the connection ends).
    listener_logs: Option<crate::access_log::SharedLogs>,
}

impl TcpProxySession {
    /// Starts proxying an accepted connection: registers it and connects upstream. Returns
    /// an error (and the connection is closed by drop) when no cluster or host is usable.
    pub fn start(
        ctx: &mut Ctx,
        me: HandlerId,
        accepted: AcceptedConnection,
        config: Arc<TcpProxyConfig>,
    ) -> io::Result<Box<dyn EventHandler<WorkerLocal>>> {
        let AcceptedConnection {
            mut stream,
            chain_tag,
            listener_stats,
            buffer_limit: downstream_limit,
            tls,
            handshake_timeout,
            restored_local,
            restored_remote,
            permit,
            requested_server_name,
            listener_logs,
            read_filters,
            held,
            ..
        } = accepted;
        let worker = ctx.local.id;
        let gate = (!read_filters.is_empty()).then(|| {
            Box::new(Gate {
                filters: read_filters,
                local: restored_local.or_else(|| crate::listener::local_addr(&stream).ok()),
                peer: crate::listener::peer_addr(&stream).ok(),
                requested_server_name: requested_server_name.clone(),
                local_uri_sans: tls
                    .as_ref()
                    .map(|t| t.context.local_uri_sans())
                    .unwrap_or_default(),
            })
        });
        let log = (!config.access_logs.is_empty() || listener_logs.is_some()).then(|| {
            let peer = crate::listener::peer_addr(&stream).ok();
            Box::new(SessionLog {
                start: ctx.now,
                start_wall: std::time::SystemTime::now(),
                received: 0,
                sent: 0,
                flags: "-",
                transport_failure: None,
                upstream_local: None,
                upstream_remote: None,
                local: restored_local.or_else(|| crate::listener::local_addr(&stream).ok()),
                remote: restored_remote.or(peer),
                connection_id: crate::access_log::next_connection_id(),
                direct_remote: peer,
                requested_server_name: requested_server_name.clone(),
                local_uri_sans: tls
                    .as_ref()
                    .map(|t| t.context.local_uri_sans())
                    .unwrap_or_default(),
                listener_logs,
            })
        });
        let tls = tls.map(|t| t.session(worker)).transpose()?;
        ctx.registry.register(
            &mut stream,
            me.token(DOWNSTREAM),
            Interest::READABLE | Interest::WRITABLE,
        )?;
        config.stats.downstream_cx_total.inc(worker);
        // Counted here, next to the session that un-counts them on drop.
        listener_stats.downstream_cx_total.inc(worker);
        listener_stats.downstream_cx_active.inc(worker);
        let mut session = TcpProxySession {
            _permit: permit,
            _held: held,
            config,
            chain_tag,
            listener_stats,
            worker,
            state: State::Connecting,
            downstream: Side::new(stream, tls),
            upstream: None,
            cluster: None,
            host: None,
            restored_local,
            restored_remote,
            attempts: 0,
            to_upstream: Pending::default(),
            to_downstream: Pending::default(),
            downstream_limit,
            last_activity: ctx.now,
            log,
            gate,
        };
        session.connect(ctx, me)?;
        if let Some(idle) = session.config.idle_timeout {
            ctx.schedule(me, idle, TIMER_IDLE);
        }
        if let Some(max) = session.config.max_duration {
            ctx.schedule(me, max, TIMER_MAX_DURATION);
        }
        if let (true, Some(t)) = (session.downstream.tls.is_some(), handshake_timeout) {
            ctx.schedule(me, t, TIMER_HANDSHAKE);
        }
        if let Some(every) = session.config.log_interval {
            ctx.schedule(me, every, TIMER_ACCESS_LOG);
        }
        ctx.local.track_connection(chain_tag, me);
        Ok(Box::new(session))
    }

    /// Opens a connection to the next host of the cluster.
    fn connect(&mut self, ctx: &mut Ctx, me: HandlerId) -> io::Result<()> {
        let cluster_name = self.config.pick_cluster();
        let cluster = ThreadLocalClusterManager::with(|tlcm| tlcm.get(cluster_name));
        let Some(cluster) = cluster else {
            self.config.stats.downstream_cx_no_route.inc(self.worker);
            if let Some(l) = self.log.as_mut() {
                l.flags = "NC";
            }
            tracing::debug!(
                cluster = cluster_name,
                "tcp_proxy: unknown cluster, closing"
            );
            return Err(io::Error::new(io::ErrorKind::NotFound, "no such cluster"));
        };
        let host = ThreadLocalClusterManager::with(|tlcm| match &cluster.original_dst {
            Some(od) => od
                .destination(None, self.restored_local, self.worker)
                .and_then(|dst| tlcm.original_dst_host(&cluster, dst)),
            None => tlcm.choose_host(&cluster, None, 0),
        });
        let Some(host) = host else {
            cluster.stats.upstream_cx_none_healthy.inc(self.worker);
            self.set_flags("UH");
            tracing::debug!(cluster = %cluster.name, "tcp_proxy: no healthy upstream, closing");
            // Envoy's entry names the cluster that had no host.
            self.cluster = Some(cluster);
            return Err(io::Error::new(
                io::ErrorKind::NotFound,
                "no healthy upstream",
            ));
        };
        if cluster.hosts.panic {
            cluster.stats.lb_healthy_panic.inc(self.worker);
        }
        self.attempts += 1;
        self.release_upstream();
        // The host's transport socket (a `transport_socket_matches` entry, else the
        // cluster's); no request names the server here (`auto_sni` is HTTP's), the host
        // may (`auto_host_sni`).
        let tls = cluster
            .host_tls(&host)
            .map(|t| {
                let name = t.context.host_name(host.hostname.as_deref());
                t.session(
                    host.address.ip(),
                    AlpnFallback::None,
                    name.as_ref(),
                    self.worker,
                )
            })
            .transpose()?;
        let mut stream = crate::upstream::bind_config::open(host.address, cluster.bind.as_ref())?;
        let _ = stream.set_nodelay(true);
        ctx.registry.register(
            &mut stream,
            me.token(UPSTREAM),
            Interest::READABLE | Interest::WRITABLE,
        )?;
        cluster.stats.upstream_cx_total.inc(self.worker);
        cluster.stats.upstream_cx_active.inc(self.worker);
        host.stats.cx_total.inc(self.worker);
        host.stats.cx_active.inc(self.worker);
        ctx.schedule(
            me,
            cluster.connect_timeout,
            TIMER_CONNECT | self.attempts as u64,
        );
        self.upstream = Some(Side::new(stream, tls));
        self.cluster = Some(cluster);
        self.host = Some(host);
        self.state = State::Connecting;
        Ok(())
    }

    /// Forgets the current upstream connection (closing it) and its gauges.
    fn release_upstream(&mut self) {
        if self.upstream.take().is_some() {
            if let Some(cluster) = &self.cluster {
                cluster.stats.upstream_cx_active.dec(self.worker);
                cluster.stats.upstream_cx_destroy.inc(self.worker);
            }
            if let Some(host) = &self.host {
                host.stats.cx_active.dec(self.worker);
            }
        }
    }

    /// A connect attempt failed: try another host or give up.
    fn connect_failed(&mut self, ctx: &mut Ctx, me: HandlerId, timeout: bool) -> Next {
        if let Some(cluster) = &self.cluster {
            cluster.stats.upstream_cx_connect_fail.inc(self.worker);
            if timeout {
                cluster.stats.upstream_cx_connect_timeout.inc(self.worker);
            }
        }
        if let Some(host) = &self.host {
            host.stats.cx_connect_fail.inc(self.worker);
            if let Some(d) = self.cluster.as_ref().and_then(|c| c.outlier.as_ref()) {
                use crate::upstream::outlier_detection::Report;
                d.report(
                    host,
                    if timeout {
                        Report::Timeout(504)
                    } else {
                        Report::ConnectFailed
                    },
                );
            }
        }
        self.release_upstream();
        if self.attempts < self.config.max_connect_attempts && self.connect(ctx, me).is_ok() {
            return Next::Continue;
        }
        // As Envoy: the connect failed, and no attempt is left (`max_connect_attempts`).
        if self.log.as_ref().is_some_and(|l| l.flags == "-") {
            self.set_flags("UF,URX");
        }
        self.close(ctx, me)
    }

    /// Under `upstream_proxy_protocol`, writes the PROXY header naming the downstream
    /// connection's addresses, before any byte of it (and before a TLS handshake);
    /// whether the connection may go on.
    fn send_proxy_header(&mut self) -> bool {
        use std::io::Write;
        let Some(version) = self.cluster.as_ref().and_then(|c| c.proxy_protocol) else {
            return true;
        };
        let src = self
            .restored_remote
            .or_else(|| crate::listener::peer_addr(&self.downstream.stream).ok());
        let dst = self
            .restored_local
            .or_else(|| crate::listener::local_addr(&self.downstream.stream).ok());
        let (Some(src), Some(dst), Some(up)) = (src, dst, self.upstream.as_mut()) else {
            return false;
        };
        let header = crate::transport_socket::upstream_proxy_protocol::header(version, src, dst);
        // A new connection's send buffer takes a header of at most a few hundred bytes.
        matches!(up.stream.write(&header), Ok(n) if n == header.len())
    }

    /// Checks a connecting upstream after an event: connected, failed, or not yet.
    fn check_connected(&mut self) -> Option<bool> {
        let up = self.upstream.as_mut()?;
        match up.stream.take_error() {
            Ok(Some(e)) | Err(e) => {
                if let Some(l) = self.log.as_mut() {
                    l.transport_failure =
                        Some(crate::upstream::connect::transport_failure_reason(&e));
                }
                return Some(false);
            }
            Ok(None) => {}
        }
        match up.stream.peer_addr() {
            Ok(_) => Some(true),
            Err(e) if e.kind() == io::ErrorKind::NotConnected => None,
            Err(_) => Some(false),
        }
    }

    /// Sets Envoy's response flags for the access log.
    fn set_flags(&mut self, flags: &'static str) {
        if let Some(l) = self.log.as_mut() {
            l.flags = flags;
        }
    }

    /// Writes an entry of `log_type` to each of `logs`: the filter's (`TcpUpstreamConnected`,
    /// `TcpPeriodic`, `TcpConnectionEnd`) or the listener's (`NotSet`), which say the same
    /// of the connection, as Envoy's share the connection's stream info.
    fn write_log(&self, logs: &[Arc<crate::access_log::AccessLog>], log_type: AccessLogType) {
        let Some(l) = &self.log else { return };
        if logs.is_empty() {
            return;
        }
        let tls = self
            .downstream
            .tls
            .as_ref()
            .filter(|t| !t.is_handshaking())
            .map(|t| TlsConnectionInfo::of(t, &l.local_uri_sans, Default::default()));
        let no_headers = http::HeaderMap::new();
        let entry = LogEntry {
            start: l.start_wall,
            flags: l.flags,
            bytes_received: l.received,
            bytes_sent: l.sent,
            duration: l.start.elapsed(),
            upstream_host: self.host.as_ref().map(|h| h.address),
            upstream_cluster: self.cluster.as_ref().map(|c| c.name.as_str()),
            remote: l
                .remote
                .unwrap_or_else(|| std::net::SocketAddr::from(([0, 0, 0, 0], 0))),
            tls: tls.as_ref(),
            requested_server_name: l.requested_server_name.as_deref(),
            log_type,
            local: l.local,
            direct_remote: l.direct_remote,
            upstream_local: l.upstream_local,
            upstream_remote: l.upstream_remote,
            upstream_hostname: self.host.as_ref().and_then(|h| h.hostname.as_deref()),
            connection_id: Some(l.connection_id),
            transport_failure: l.transport_failure.as_deref(),
            ..LogEntry::connection(&no_headers)
        };
        for log in logs {
            log.log(&entry, self.worker);
        }
    }

    fn close(&mut self, ctx: &mut Ctx, me: HandlerId) -> Next {
        ctx.local.untrack_connection(self.chain_tag, me);
        Next::Close
    }

    /// Moves bytes in both directions until nothing more can move.
    fn pump(&mut self, scratch: &mut [u8]) -> Result<bool, Failure> {
        let mut any = false;
        loop {
            let Some(up) = self.upstream.as_mut() else {
                return Ok(any);
            };
            let cluster_stats = self.cluster.as_ref().map(|c| &c.stats);
            let upstream_limit = self.cluster.as_ref().map_or(1 << 20, |c| c.buffer_limit);
            let mut progress = false;
            // downstream → upstream; the first bytes wait for the filters before this one.
            let hold = self.gate.is_some();
            let n = flow(
                &mut self.downstream,
                up,
                &mut self.to_upstream,
                upstream_limit,
                scratch,
                hold,
            )
            .map_err(|side| Failure::Reset(if side { UPSTREAM } else { DOWNSTREAM }))?;
            // As Envoy: decided on the first bytes, or on the close of a connection that
            // sent none.
            let first = n.read > 0 || self.downstream.read_closed;
            if hold && first && !admitted(&mut self.gate, &self.downstream, self.worker) {
                return Err(Failure::Denied);
            }
            if n.read + n.written > 0 || n.closed {
                progress = true;
                self.config
                    .stats
                    .downstream_cx_rx_bytes_total
                    .add(self.worker, n.read);
                if let Some(l) = self.log.as_mut() {
                    l.received += n.read;
                }
                if let Some(s) = cluster_stats {
                    s.upstream_cx_tx_bytes_total.add(self.worker, n.written);
                }
            }
            // upstream → downstream
            let n = flow(
                up,
                &mut self.downstream,
                &mut self.to_downstream,
                self.downstream_limit,
                scratch,
                false,
            )
            .map_err(|side| Failure::Reset(if side { DOWNSTREAM } else { UPSTREAM }))?;
            if n.read + n.written > 0 || n.closed {
                progress = true;
                self.config
                    .stats
                    .downstream_cx_tx_bytes_total
                    .add(self.worker, n.written);
                if let Some(l) = self.log.as_mut() {
                    l.sent += n.written;
                }
                if let Some(s) = cluster_stats {
                    s.upstream_cx_rx_bytes_total.add(self.worker, n.read);
                }
            }
            if !progress {
                return Ok(any);
            }
            any = true;
        }
    }

    fn finished(&self) -> bool {
        self.downstream.done() && self.upstream.as_ref().is_some_and(Side::done)
    }

    fn run(&mut self, ctx: &mut Ctx, me: HandlerId) -> Next {
        if self.state != State::Open {
            return Next::Continue;
        }
        match self.pump(&mut ctx.local.scratch[..]) {
            Ok(progress) => {
                if progress {
                    self.last_activity = ctx.now;
                }
                if self.finished() {
                    return self.close(ctx, me);
                }
                Next::Continue
            }
            Err(Failure::Denied) => {
                tracing::debug!("tcp_proxy: connection denied by a network filter");
                self.close(ctx, me)
            }
            Err(Failure::Reset(side)) => {
                // Propagate the reset to the side that did not fail.
                if side == DOWNSTREAM {
                    if let Some(up) = &self.upstream {
                        up.reset_on_close();
                    }
                } else {
                    self.downstream.reset_on_close();
                }
                self.close(ctx, me)
            }
        }
    }
}

struct Moved {
    read: u64,
    written: u64,
    closed: bool,
}

/// Whether the filters before the TCP proxy let the connection go on (asked once, on its
/// first bytes, after the TLS handshake of `downstream`).
fn admitted(gate: &mut Option<Box<Gate>>, downstream: &Side, worker: usize) -> bool {
    let Some(gate) = gate.take() else {
        return true;
    };
    let tls = downstream
        .tls
        .as_ref()
        .filter(|t| !t.is_handshaking())
        .map(|t| TlsConnectionInfo::of(t, &gate.local_uri_sans, Default::default()));
    let unknown = std::net::SocketAddr::from(([0, 0, 0, 0], 0));
    let facts = crate::filters::network::rbac::ConnectionFacts {
        local: gate.local.unwrap_or(unknown),
        peer: gate.peer.unwrap_or(unknown),
        requested_server_name: gate.requested_server_name.as_deref(),
        tls: tls.as_ref(),
    };
    gate.filters.admit(&facts, worker)
}

/// One direction, `src` → `dst`; with `hold`, what is read is kept, not written (a
/// filter has yet to let it go on). On error returns whether the failing socket is `dst`.
fn flow(
    src: &mut Side,
    dst: &mut Side,
    pending: &mut Pending,
    high_watermark: usize,
    scratch: &mut [u8],
    hold: bool,
) -> Result<Moved, bool> {
    let mut moved = Moved {
        read: 0,
        written: 0,
        closed: false,
    };
    // What the TLS session holds goes first (its handshake, records a full socket left).
    dst.flush_tls().map_err(|_| true)?;
    src.flush_tls().map_err(|_| false)?;
    // Flush what is already buffered first, to preserve order.
    while !hold && !pending.is_empty() && dst.writable {
        match dst.write(pending.bytes()) {
            Ok(0) => return Err(true),
            Ok(n) => {
                pending.consume(n);
                moved.written += n as u64;
            }
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => dst.writable = false,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(_) => return Err(true),
        }
    }
    if src.readable && !src.read_closed && pending.len() < high_watermark.max(1) {
        match src.read(scratch) {
            Ok(0) => {
                src.read_closed = true;
                moved.closed = true;
            }
            Ok(n) => {
                moved.read += n as u64;
                let mut off = 0;
                if !hold && pending.is_empty() && dst.writable {
                    match dst.write(&scratch[..n]) {
                        Ok(w) => off = w,
                        Err(e) if e.kind() == io::ErrorKind::WouldBlock => dst.writable = false,
                        Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                        Err(_) => return Err(true),
                    }
                }
                moved.written += off as u64;
                if off < n {
                    pending.push(&scratch[off..n]);
                }
            }
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => src.readable = false,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(_) => return Err(false),
        }
    }
    // Half-close: once the source finished and everything reached dst, send FIN.
    if src.read_closed && pending.is_empty() && !dst.write_closed {
        dst.write_closed = true;
        moved.closed = true;
        if let Err(e) = dst.shutdown_write() {
            if e.kind() != io::ErrorKind::NotConnected {
                return Err(true);
            }
        }
    }
    Ok(moved)
}

impl EventHandler<WorkerLocal> for TcpProxySession {
    fn on_ready(&mut self, source: usize, event: &Event, ctx: &mut Ctx, me: HandlerId) -> Next {
        match source {
            DOWNSTREAM => self.downstream.note(event),
            _ => {
                if let Some(up) = self.upstream.as_mut() {
                    up.note(event);
                }
            }
        }
        if self.state == State::Connecting {
            if source != UPSTREAM {
                return Next::Continue;
            }
            match self.check_connected() {
                None => return Next::Continue,
                Some(false) => return self.connect_failed(ctx, me, false),
                Some(true) => {
                    if !self.send_proxy_header() {
                        return self.connect_failed(ctx, me, false);
                    }
                    self.state = State::Open;
                    if let Some(l) = self.log.as_mut() {
                        l.upstream_local = self
                            .upstream
                            .as_ref()
                            .and_then(|u| u.stream.local_addr().ok());
                        l.upstream_remote = self
                            .upstream
                            .as_ref()
                            .and_then(|u| u.stream.peer_addr().ok());
                        l.transport_failure = None;
                    }
                    if self.config.log_on_connected {
                        self.write_log(
                            &self.config.access_logs,
                            AccessLogType::TcpUpstreamConnected,
                        );
                    }
                    if let (Some(host), Some(d)) = (
                        &self.host,
                        self.cluster.as_ref().and_then(|c| c.outlier.as_ref()),
                    ) {
                        // For a TCP proxy, connecting is the whole transaction.
                        d.report(
                            host,
                            crate::upstream::outlier_detection::Report::ConnectSuccessFinal,
                        );
                    }
                    // The downstream may have sent data while we connected; read it now.
                    self.downstream.readable = true;
                    self.downstream.writable = true;
                }
            }
        }
        self.run(ctx, me)
    }

    fn on_timer(&mut self, tag: u64, ctx: &mut Ctx, me: HandlerId) -> Next {
        if tag & TIMER_CONNECT != 0 {
            let attempt = (tag & 0xffff_ffff) as u32;
            if self.state == State::Connecting && attempt == self.attempts {
                tracing::debug!("tcp_proxy: upstream connect timeout");
                return self.connect_failed(ctx, me, true);
            }
            return Next::Continue;
        }
        match tag {
            TIMER_IDLE => {
                let Some(idle) = self.config.idle_timeout else {
                    return Next::Continue;
                };
                let quiet = ctx.now.saturating_duration_since(self.last_activity);
                if quiet >= idle {
                    self.config.stats.idle_timeout.inc(self.worker);
                    return self.close(ctx, me);
                }
                ctx.schedule(me, idle - quiet, TIMER_IDLE);
                Next::Continue
            }
            TIMER_MAX_DURATION => self.close(ctx, me),
            TIMER_ACCESS_LOG => {
                self.write_log(&self.config.access_logs, AccessLogType::TcpPeriodic);
                if let Some(every) = self.config.log_interval {
                    ctx.schedule(me, every, TIMER_ACCESS_LOG);
                }
                Next::Continue
            }
            TIMER_HANDSHAKE => {
                if !self
                    .downstream
                    .tls
                    .as_ref()
                    .is_some_and(|t| t.is_handshaking())
                {
                    return Next::Continue;
                }
                self.listener_stats
                    .downstream_cx_transport_socket_connect_timeout
                    .inc(self.worker);
                self.close(ctx, me)
            }
            _ => Next::Continue,
        }
    }

    fn on_drain(&mut self, _ctx: &mut Ctx, _me: HandlerId) -> Next {
        // Envoy does not cut TCP proxy connections when a drain starts; they finish on
        // their own or are closed when the drain time ends.
        Next::Continue
    }
}

impl Drop for TcpProxySession {
    fn drop(&mut self) {
        self.write_log(&self.config.access_logs, AccessLogType::TcpConnectionEnd);
        if let Some(logs) = self.log.as_ref().and_then(|l| l.listener_logs.clone()) {
            self.write_log(&logs, AccessLogType::NotSet);
        }
        self.release_upstream();
        self.listener_stats.downstream_cx_active.dec(self.worker);
        self.listener_stats.downstream_cx_destroy.inc(self.worker);
    }
}
