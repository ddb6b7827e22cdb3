//! A connection whose filter chain is known: the chain picked from what the listener
//! knows of it (Envoy's `newConnection`), the chain's filters that decide when a
//! connection is established asked (a connection limit, a local rate limit), and the
//! connection handed to the chain's terminal filter with the chain's transport socket.

use std::sync::Arc;

use super::filter_chain_match::ConnectionFacts;
use super::ListenerConfig;
use crate::filters::network::on_new_connection::{Admission, Held};
use crate::filters::network::{tcp_proxy::TcpProxySession, NetworkFilter};
use crate::overload::connection_limit::ConnectionPermit;
use crate::transport_socket::tls::ServerTls;
use crate::worker::{Ctx, EventHandler, HandlerId, Next, WorkerLocal};

/// An accepted connection on its way to its chain's terminal filter.
pub struct AcceptedConnection {
    /// The socket.
    pub stream: mio::net::TcpStream,
    /// The chain's tag (connections are tracked per chain for in-place updates).
    pub chain_tag: u64,
    /// The listener's stats.
    pub listener_stats: Arc<super::ListenerStats>,
    /// `per_connection_buffer_limit_bytes`.
    pub buffer_limit: usize,
    /// The chain's TLS, when its transport socket is TLS.
    pub tls: Option<ServerTls>,
    /// The chain's `transport_socket_connect_timeout`: the handshake's deadline.
    pub handshake_timeout: Option<std::time::Duration>,
    /// The SNI the TLS inspector found (Envoy's "requested server name": only a listener
    /// filter sets it).
    pub requested_server_name: Option<String>,
    /// The original destination a listener filter restored: the connection's local
    /// address (an `ORIGINAL_DST` cluster connects to it).
    pub restored_local: Option<std::net::SocketAddr>,
    /// The client address a PROXY protocol header gave: the connection's remote address.
    pub restored_remote: Option<std::net::SocketAddr>,
    /// The connection's share of the global connection limit, held while it lives.
    pub permit: ConnectionPermit,
    /// The listener's access logs, written when the connection ends.
    pub listener_logs: Option<crate::access_log::SharedLogs>,
    /// The chain's filters before its terminal one: they decide on the connection's
    /// first bytes whether it goes on.
    pub read_filters: crate::filters::network::rbac::ReadFilters,
    /// What the filters that decided when it was established keep while it lives (its
    /// places in connection limits).
    pub held: Held,
}

/// Picks the connection's filter chain and hands the connection to its terminal filter.
pub fn new_connection(
    ctx: &mut Ctx,
    config: &Arc<ListenerConfig>,
    stream: mio::net::TcpStream,
    facts: &ConnectionFacts,
    permit: ConnectionPermit,
) {
    let Some(chain) = config.select_chain(facts) else {
        config.stats.no_filter_chain_match.inc(ctx.local.id);
        if let Some(logs) = &config.access_logs {
            log_unmatched(logs, &stream, facts, ctx.local.id);
        }
        return;
    };
    // Envoy's `onNewConnection` of the filters before the terminal one.
    let held = match chain.on_new_connection.is_empty() {
        true => Held::default(),
        false => match chain.on_new_connection.admit(ctx.local.id) {
            Admission::Continue(held) => held,
            Admission::Close => {
                drop(Refused::count(ctx, config, &chain.filter, &stream, facts));
                return;
            }
            Admission::CloseAfter(delay, held) => {
                let refused = Refused::count(ctx, config, &chain.filter, &stream, facts);
                let started = ctx.insert_handler(move |ctx, id| {
                    DelayedClose::start(ctx, id, stream, delay, (refused, permit, held))
                });
                if let Err(e) = started {
                    tracing::debug!(listener = %config.name, error = %e, "connection closed at start");
                }
                return;
            }
        },
    };
    let accepted = AcceptedConnection {
        stream,
        chain_tag: chain.tag,
        listener_stats: config.stats.clone(),
        buffer_limit: config.buffer_limit,
        tls: chain
            .tls
            .clone()
            .zip(config.stats.ssl.clone())
            .map(|(context, stats)| ServerTls { context, stats }),
        requested_server_name: facts.server_name.clone(),
        restored_local: facts.restored_local,
        restored_remote: facts.restored_remote,
        handshake_timeout: chain.transport_socket_connect_timeout,
        permit,
        listener_logs: config.access_logs.clone(),
        read_filters: chain.read_filters.clone(),
        held,
    };
    let started = match &chain.filter {
        NetworkFilter::TcpProxy(tcp) => {
            let tcp = tcp.clone();
            ctx.insert_handler(move |ctx, id| TcpProxySession::start(ctx, id, accepted, tcp))
        }
        NetworkFilter::HttpConnectionManager(hcm) => {
            let hcm = hcm.clone();
            ctx.insert_handler(move |ctx, id| {
                crate::http::conn_manager::connection::HttpConnection::start(ctx, id, accepted, hcm)
            })
        }
    };
    if let Err(e) = started {
        tracing::debug!(listener = %config.name, error = %e, "connection closed at start");
    }
}

/// A connection a filter refused when it was established, counted and logged as Envoy
/// counts and logs it while it is open and when it closes: Envoy had made a connection
/// of it, and given it its terminal filter, before the filters ran.
struct Refused {
    listener: Arc<super::ListenerStats>,
    terminal: NetworkFilter,
    worker: usize,
    /// What its access log entries say (only when there are logs to write).
    log: Option<Box<RefusedLog>>,
}

/// What a refused connection's entries say: a TCP proxy's (`TcpConnectionEnd`) and the
/// listener's (`NotSet`), of a connection that never reached an upstream.
struct RefusedLog {
    start: std::time::Instant,
    start_wall: std::time::SystemTime,
    local: Option<std::net::SocketAddr>,
    remote: std::net::SocketAddr,
    direct_remote: Option<std::net::SocketAddr>,
    requested_server_name: Option<String>,
    connection_id: u64,
    filter_logs: Option<Arc<crate::filters::network::tcp_proxy::TcpProxyConfig>>,
    listener_logs: Option<crate::access_log::SharedLogs>,
}

impl Refused {
    fn count(
        ctx: &Ctx,
        config: &ListenerConfig,
        terminal: &NetworkFilter,
        stream: &mio::net::TcpStream,
        facts: &ConnectionFacts,
    ) -> Refused {
        let worker = ctx.local.id;
        let listener = &config.stats;
        listener.downstream_cx_total.inc(worker);
        listener.downstream_cx_active.inc(worker);
        let mut filter_logs = None;
        match terminal {
            NetworkFilter::TcpProxy(t) => {
                t.stats.downstream_cx_total.inc(worker);
                filter_logs = Some(t.clone()).filter(|t| !t.access_logs.is_empty());
            }
            NetworkFilter::HttpConnectionManager(h) => {
                h.stats.downstream_cx_total.inc(worker);
                h.stats.downstream_cx_active.inc(worker);
            }
        }
        let log = (filter_logs.is_some() || config.access_logs.is_some()).then(|| {
            let peer = super::peer_addr(stream).ok();
            Box::new(RefusedLog {
                start: ctx.now,
                start_wall: std::time::SystemTime::now(),
                local: facts
                    .restored_local
                    .or_else(|| super::local_addr(stream).ok()),
                remote: facts
                    .restored_remote
                    .or(peer)
                    .unwrap_or_else(|| std::net::SocketAddr::from(([0, 0, 0, 0], 0))),
                direct_remote: peer,
                requested_server_name: facts.server_name.clone(),
                connection_id: crate::access_log::next_connection_id(),
                filter_logs,
                listener_logs: config.access_logs.clone(),
            })
        });
        Refused {
            listener: listener.clone(),
            terminal: terminal.clone(),
            worker,
            log,
        }
    }
}

impl Drop for Refused {
    fn drop(&mut self) {
        let w = self.worker;
        self.listener.downstream_cx_active.dec(w);
        self.listener.downstream_cx_destroy.inc(w);
        if let NetworkFilter::HttpConnectionManager(h) = &self.terminal {
            h.stats.downstream_cx_active.dec(w);
            h.stats.downstream_cx_destroy.inc(w);
        }
        let Some(l) = &self.log else { return };
        let no_headers = http::HeaderMap::new();
        let mut entry = crate::access_log::LogEntry {
            start: l.start_wall,
            duration: l.start.elapsed(),
            remote: l.remote,
            requested_server_name: l.requested_server_name.as_deref(),
            local: l.local,
            direct_remote: l.direct_remote,
            connection_id: Some(l.connection_id),
            log_type: crate::access_log::AccessLogType::TcpConnectionEnd,
            ..crate::access_log::LogEntry::connection(&no_headers)
        };
        for log in l.filter_logs.iter().flat_map(|t| t.access_logs.iter()) {
            log.log(&entry, w);
        }
        entry.log_type = crate::access_log::AccessLogType::NotSet;
        for log in l.listener_logs.iter().flat_map(|logs| logs.iter()) {
            log.log(&entry, w);
        }
    }
}

/// A connection over a connection limit, held open for the limit's `delay` and then
/// closed (Envoy's delayed rejection, against clients reconnecting at once). It keeps
/// its places in the limits, and the global one, until it is closed; a peer that closes
/// first, having sent nothing, ends it early. Nothing it sends is read.
struct DelayedClose {
    stream: mio::net::TcpStream,
    _held: (Refused, ConnectionPermit, Held),
}

const TIMER_DELAY: u64 = 1;

impl DelayedClose {
    fn start(
        ctx: &mut Ctx,
        me: HandlerId,
        mut stream: mio::net::TcpStream,
        delay: std::time::Duration,
        held: (Refused, ConnectionPermit, Held),
    ) -> std::io::Result<Box<dyn EventHandler<WorkerLocal>>> {
        ctx.registry
            .register(&mut stream, me.token(0), mio::Interest::READABLE)?;
        ctx.schedule(me, delay, TIMER_DELAY);
        Ok(Box::new(DelayedClose {
            stream,
            _held: held,
        }))
    }
}

impl EventHandler<WorkerLocal> for DelayedClose {
    fn on_ready(
        &mut self,
        _source: usize,
        _event: &mio::event::Event,
        _ctx: &mut Ctx,
        _me: HandlerId,
    ) -> Next {
        // Peeked, not read: what it sent stays unread, and the close resets the
        // connection as Envoy's does. Only a peer closing before sending anything is seen.
        let mut byte = [0u8; 1];
        loop {
            return match self.stream.peek(&mut byte) {
                Ok(0) => Next::Close,
                Ok(_) => Next::Continue,
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => Next::Continue,
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                Err(_) => Next::Close,
            };
        }
    }

    fn on_timer(&mut self, tag: u64, _ctx: &mut Ctx, _me: HandlerId) -> Next {
        match tag {
            TIMER_DELAY => Next::Close,
            _ => Next::Continue,
        }
    }
}

/// The listener's entry for a connection no filter chain takes (`NR`,
/// `filter_chain_not_found`), closed at once.
fn log_unmatched(
    logs: &crate::access_log::SharedLogs,
    stream: &mio::net::TcpStream,
    facts: &ConnectionFacts,
    worker: usize,
) {
    let peer = super::peer_addr(stream).ok();
    let no_headers = http::HeaderMap::new();
    let entry = crate::access_log::LogEntry {
        local: facts
            .restored_local
            .or_else(|| super::local_addr(stream).ok()),
        remote: facts
            .restored_remote
            .or(peer)
            .unwrap_or_else(|| std::net::SocketAddr::from(([0, 0, 0, 0], 0))),
        direct_remote: peer,
        requested_server_name: facts.server_name.as_deref(),
        flags: "NR",
        details: "filter_chain_not_found",
        connection_id: Some(crate::access_log::next_connection_id()),
        ..crate::access_log::LogEntry::connection(&no_headers)
    };
    for l in logs.iter() {
        l.log(&entry, worker);
    }
}
