//! What a request knows about its downstream connection ([`ConnInfo`]), and how the
//! HTTP/1.1 codec reaches the connection manager through it.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Instant;

use crate::http::codec::h1_server::H1Settings;
use crate::http::conn_manager::config::HcmConfig;

/// A listener's access logs for one connection, written when it ends.
pub struct ListenerLog {
    /// The logs.
    pub logs: crate::access_log::SharedLogs,
    /// When the connection was accepted.
    pub start: Instant,
    /// The same, on the wall clock.
    pub start_wall: std::time::SystemTime,
    /// The connection's bytes.
    pub counters: courier_runtime::event::rt::IoCounters,
}

/// What a request knows about its connection.
pub struct ConnInfo {
    /// The connection manager.
    pub config: Arc<HcmConfig>,
    /// The connection's share of the global connection limit, given back with the
    /// connection's `downstream_cx_active`.
    pub permit: crate::overload::connection_limit::ConnectionPermit,
    /// Its places in the chain's connection limits, given back with the connection.
    pub held: crate::filters::network::on_new_connection::Held,
    /// Client address.
    pub remote: SocketAddr,
    /// Local address.
    pub local: SocketAddr,
    /// The peer's own address, when a PROXY protocol header named another as `remote`.
    pub direct_remote: Option<SocketAddr>,
    /// Whether `local` is an original destination a listener filter restored (what an
    /// `ORIGINAL_DST` cluster connects to).
    pub local_restored: bool,
    /// Worker index.
    pub worker: usize,
    /// Requests started on this connection.
    pub requests: std::cell::Cell<u32>,
    /// Requests in flight on this connection.
    pub active: std::cell::Cell<u32>,
    /// Set when the connection should close after the current request.
    pub closing: std::cell::Cell<bool>,
    /// Last time a request started or finished.
    pub last_activity: std::cell::Cell<Instant>,
    /// The listener's stats (its `downstream_cx_active` is what a drain waits on).
    pub listener_stats: Arc<crate::listener::ListenerStats>,
    /// The codec once detected: `Some(true)` for HTTP/2.
    pub http2: std::cell::Cell<Option<bool>>,
    /// The listener's `per_connection_buffer_limit_bytes`: by default, how much of a
    /// request body is buffered to be replayed on retries.
    pub buffer_limit: usize,
    /// The connection's own rate limit buckets (`local_rate_limit_per_downstream_connection`).
    pub rate_limit_buckets: crate::filters::http::local_ratelimit::ConnectionBuckets,
    /// The connection drains (a listener drain, a failed health check): it takes no new
    /// request after the current ones (HTTP/2: GOAWAY).
    pub draining: std::cell::Cell<bool>,
    /// The HTTP/1.1 codec's settings, from `config`.
    pub h1: H1Settings,
    /// The connection is TLS (`x-forwarded-proto: https`).
    pub secure: bool,
    /// The SNI the listener's TLS inspector found.
    pub requested_server_name: Option<Box<str>>,
    /// The listener's access logs and what they say of the connection.
    pub listener_log: Option<ListenerLog>,
    /// What its TLS handshake settled, once it has.
    pub tls: std::cell::OnceCell<Box<crate::transport_socket::tls::TlsConnectionInfo>>,
    /// The connection's id (`%CONNECTION_ID%`; 0 when nothing logs it).
    pub id: u64,
}

impl ConnInfo {
    /// Starts draining the connection (`downstream_cx_drain_close`, once): HTTP/1.1 closes
    /// after the current response, HTTP/2 sends GOAWAY ([`crate::http::conn_manager::connection`] acts on it).
    pub fn drain_close(&self) {
        self.closing.set(true);
        if !self.draining.replace(true) {
            self.config.stats.downstream_cx_drain_close.inc(self.worker);
        }
    }

    /// Ends the connection after the current response without counting a drain (the
    /// overload manager's `disable_http_keepalive`): HTTP/1.1 `connection: close`,
    /// HTTP/2 GOAWAY.
    pub fn close_after_response(&self) {
        self.closing.set(true);
        self.draining.set(true);
    }
}

/// The connection counts as active until its last holder is gone: the connection itself,
/// a response still finishing, or a tunnel (an upgraded connection outlives its HTTP codec;
/// as in Envoy, it stays in `downstream_cx_active` and a drain waits for it).
impl Drop for ConnInfo {
    fn drop(&mut self) {
        let w = self.worker;
        let stats = &self.config.stats;
        match self.http2.get() {
            Some(true) => stats.downstream_cx_http2_active.dec(w),
            Some(false) => stats.downstream_cx_http1_active.dec(w),
            None => {}
        }
        stats.downstream_cx_active.dec(w);
        stats.downstream_cx_destroy.inc(w);
        self.listener_stats.downstream_cx_active.dec(w);
        self.listener_stats.downstream_cx_destroy.inc(w);
        if let Some(l) = &self.listener_log {
            let no_headers = http::HeaderMap::new();
            let entry = crate::access_log::LogEntry {
                start: l.start_wall,
                protocol: match self.http2.get() {
                    Some(true) => "HTTP/2",
                    Some(false) => "HTTP/1.1",
                    None => "",
                },
                bytes_received: l.counters.received(),
                bytes_sent: l.counters.sent(),
                duration: l.start.elapsed(),
                remote: self.remote,
                tls: self.tls.get().map(|t| &**t),
                requested_server_name: self.requested_server_name.as_deref(),
                local: Some(self.local),
                direct_remote: self.direct_remote,
                connection_id: Some(self.id),
                ..crate::access_log::LogEntry::connection(&no_headers)
            };
            for log in l.logs.iter() {
                log.log(&entry, self.worker);
            }
        }
    }
}
