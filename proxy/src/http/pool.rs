//! Per-worker upstream HTTP connection pools (Envoy's `ConnectionPool`): HTTP/1.1
//! keep-alive reuse, and multiplexed HTTP/2 connections per host, another opened when the
//! open ones carry as many streams as their server allows (its
//! `SETTINGS_MAX_CONCURRENT_STREAMS`, read by [`super::h2_settings`]) or the cluster's
//! `max_concurrent_streams`; the cluster's circuit breakers counted per worker.

use std::cell::{Cell, RefCell};
use std::collections::VecDeque;
use std::net::SocketAddr;
use std::rc::Rc;
use std::sync::Arc;
use std::task::{Poll, Waker};
use std::time::Instant;

use hyper::client::conn::{http1, http2};
use rustc_hash::FxHashMap;

use super::body::ProxyBody;
use super::h2_settings::{PeerSettings, SettingsWatch};
use super::upstream_h1::H1Connection;
use crate::event::rt::{self, LocalExec, RtTimer, TcpIo};
use crate::stats::{Counter, Gauge, Histogram, Store};
use crate::upstream::{ClusterInfo, Host, LbStates};

/// `cluster.<name>.*` HTTP stats, created on first use on each worker.
pub struct ClusterHttpStats {
    /// `upstream_rq_total`.
    pub rq_total: Arc<Counter>,
    /// `upstream_rq_completed`.
    pub rq_completed: Arc<Counter>,
    /// `upstream_rq_active`.
    pub rq_active: Arc<Gauge>,
    /// `upstream_rq_1xx` … `upstream_rq_5xx`.
    pub rq_xx: [Arc<Counter>; 5],
    /// `upstream_rq_retry`.
    pub rq_retry: Arc<Counter>,
    /// `upstream_rq_retry_success`.
    pub rq_retry_success: Arc<Counter>,
    /// `upstream_rq_retry_overflow`.
    pub rq_retry_overflow: Arc<Counter>,
    /// `retry_or_shadow_abandoned`: a request body outgrew its buffer limit, so the
    /// request went without retries.
    pub retry_or_shadow_abandoned: Arc<Counter>,
    /// `upstream_rq_retry_limit_exceeded`.
    pub rq_retry_limit_exceeded: Arc<Counter>,
    /// `upstream_rq_timeout`.
    pub rq_timeout: Arc<Counter>,
    /// `upstream_rq_per_try_timeout`.
    pub rq_per_try_timeout: Arc<Counter>,
    /// `upstream_rq_pending_overflow`.
    pub rq_pending_overflow: Arc<Counter>,
    /// `upstream_rq_pending_total`.
    pub rq_pending_total: Arc<Counter>,
    /// `upstream_rq_pending_active`.
    pub rq_pending_active: Arc<Gauge>,
    /// `upstream_rq_rx_reset`.
    pub rq_rx_reset: Arc<Counter>,
    /// `upstream_cx_protocol_error`.
    pub cx_protocol_error: Arc<Counter>,
    /// `upstream_cx_http1_total`.
    pub cx_http1_total: Arc<Counter>,
    /// `upstream_cx_http2_total`.
    pub cx_http2_total: Arc<Counter>,
    /// `upstream_rq_time` (ms, from the first attempt to the response headers).
    pub rq_time: Arc<Histogram>,
    codes: RefCell<Vec<(u16, Arc<Counter>)>>,
    store: Store,
    name: String,
}

impl ClusterHttpStats {
    fn new(store: &Store, name: &str) -> ClusterHttpStats {
        let c = |s: &str| store.counter(&format!("cluster.{name}.{s}"));
        let g = |s: &str| store.gauge(&format!("cluster.{name}.{s}"));
        ClusterHttpStats {
            rq_total: c("upstream_rq_total"),
            rq_completed: c("upstream_rq_completed"),
            rq_active: g("upstream_rq_active"),
            rq_xx: [
                c("upstream_rq_1xx"),
                c("upstream_rq_2xx"),
                c("upstream_rq_3xx"),
                c("upstream_rq_4xx"),
                c("upstream_rq_5xx"),
            ],
            rq_retry: c("upstream_rq_retry"),
            rq_retry_success: c("upstream_rq_retry_success"),
            rq_retry_overflow: c("upstream_rq_retry_overflow"),
            retry_or_shadow_abandoned: c("retry_or_shadow_abandoned"),
            rq_retry_limit_exceeded: c("upstream_rq_retry_limit_exceeded"),
            rq_timeout: c("upstream_rq_timeout"),
            rq_per_try_timeout: c("upstream_rq_per_try_timeout"),
            rq_pending_overflow: c("upstream_rq_pending_overflow"),
            rq_pending_total: c("upstream_rq_pending_total"),
            rq_pending_active: g("upstream_rq_pending_active"),
            rq_rx_reset: c("upstream_rq_rx_reset"),
            cx_protocol_error: c("upstream_cx_protocol_error"),
            cx_http1_total: c("upstream_cx_http1_total"),
            cx_http2_total: c("upstream_cx_http2_total"),
            rq_time: store.histogram(&format!("cluster.{name}.upstream_rq_time")),
            codes: RefCell::new(Vec::new()),
            store: store.clone(),
            name: name.to_string(),
        }
    }

    /// Counts a response status (`upstream_rq_<code>`, `upstream_rq_<class>xx`,
    /// `upstream_rq_completed`).
    pub fn status(&self, worker: usize, code: u16) {
        let class = (code / 100) as usize;
        if (1..=5).contains(&class) {
            self.rq_xx[class - 1].inc(worker);
        }
        let mut codes = self.codes.borrow_mut();
        // A handful of distinct codes per cluster: a scan beats hashing.
        match codes.iter().find(|(c, _)| *c == code) {
            Some((_, counter)) => counter.inc(worker),
            None => {
                let counter = self
                    .store
                    .counter(&format!("cluster.{}.upstream_rq_{code}", self.name));
                counter.inc(worker);
                codes.push((code, counter));
            }
        }
        self.rq_completed.inc(worker);
    }
}

/// A request sender on an upstream connection.
pub enum Sender {
    /// An HTTP/1.1 connection through hyper's client (exclusive while the request is in
    /// flight): for streamed request bodies.
    H1(http1::SendRequest<ProxyBody>),
    /// An HTTP/1.1 connection driven by the request itself ([`H1Connection`]): for requests
    /// whose body is complete.
    Raw(H1Connection),
    /// An HTTP/2 connection (shared), and the stream's place on it.
    H2(http2::SendRequest<ProxyBody>, H2Stream),
}

/// One HTTP/2 connection to a host, shared by the requests on it.
struct H2Conn {
    sender: http2::SendRequest<ProxyBody>,
    /// Streams open on it: requests sent whose responses have not ended.
    active: Rc<Cell<u32>>,
    /// The server's settings, as read so far.
    peer: Rc<PeerSettings>,
}

impl H2Conn {
    /// Whether another stream fits. Until the server's settings are read, only the
    /// request that opened the connection: Envoy's pool sends more and has them refused
    /// when the server's limit is lower. A limit of 0 is taken as 1 (the stream then waits
    /// on the connection rather than opening connection after connection).
    fn has_room(&self, cluster_max: u32) -> bool {
        let limit = self.peer.max_streams().unwrap_or(1);
        self.active.get() < limit.min(cluster_max).max(1)
    }

    /// Whether the server's settings are still to come.
    fn settling(&self) -> bool {
        self.peer.max_streams().is_none() && !self.sender.is_closed()
    }
}

/// A request waiting for a connection, counted in `max_pending_requests` until dropped.
struct PendingGuard<'a> {
    pool: &'a ClusterPool,
    worker: usize,
}

impl Drop for PendingGuard<'_> {
    fn drop(&mut self) {
        let b = &self.pool.breakers;
        b.pending.set(b.pending.get().saturating_sub(1));
        self.pool.stats.rq_pending_active.dec(self.worker);
    }
}

/// A connection attempt to an HTTP/2 host under way: requests wait for it rather than open
/// another. Cleared when the attempt ends however it ends (it may be dropped mid-way by a
/// timeout), and the waiters woken to look again.
struct H2Connecting {
    pool: Rc<ClusterPool>,
    addr: SocketAddr,
}

impl Drop for H2Connecting {
    fn drop(&mut self) {
        if let Some(h) = self.pool.hosts.borrow_mut().get_mut(&self.addr) {
            h.h2_connecting = false;
        }
        self.pool.wake_all();
    }
}

/// A stream's place on an HTTP/2 connection, given back when dropped (once the response
/// has ended, or the request failed).
pub struct H2Stream {
    active: Rc<Cell<u32>>,
    pool: Rc<ClusterPool>,
}

impl Drop for H2Stream {
    fn drop(&mut self) {
        self.active.set(self.active.get().saturating_sub(1));
        // A request waiting for room may now have it; the queue is the cluster's, and the
        // first waiter may want another host, so all look again.
        self.pool.wake_all();
    }
}

/// Why no connection could be had.
#[derive(Debug)]
pub enum PoolError {
    /// Circuit breaker overflow (`max_pending_requests` / `max_requests`).
    Overflow,
    /// The connection attempt failed.
    ConnectFailure(String),
    /// The connection attempt timed out.
    ConnectTimeout,
}

#[derive(Default)]
struct HostPool {
    idle: Vec<http1::SendRequest<ProxyBody>>,
    raw_idle: Vec<H1Connection>,
    h2: Vec<H2Conn>,
    h2_connecting: bool,
}

/// Circuit-breaker counts of one cluster on this worker.
#[derive(Default)]
pub struct Breakers {
    /// Open connections.
    pub connections: Cell<u32>,
    /// Requests waiting for a connection.
    pub pending: Cell<u32>,
    /// Requests in flight.
    pub requests: Cell<u32>,
    /// Retries in flight.
    pub retries: Cell<u32>,
}

/// One cluster's pools on this worker.
pub struct ClusterPool {
    hosts: RefCell<FxHashMap<SocketAddr, HostPool>>,
    waiters: RefCell<VecDeque<Rc<Cell<Option<Waker>>>>>,
    /// Circuit-breaker counts.
    pub breakers: Breakers,
    /// HTTP stats.
    pub stats: ClusterHttpStats,
}

thread_local! {
    static POOLS: RefCell<FxHashMap<String, Rc<ClusterPool>>> = RefCell::new(FxHashMap::default());
    static LB: RefCell<LbStates> = RefCell::new(LbStates::default());
}

/// The pool of `cluster` on this worker.
pub fn cluster_pool(cluster: &ClusterInfo, store: &Store) -> Rc<ClusterPool> {
    POOLS.with(|p| {
        if let Some(pool) = p.borrow().get(&cluster.name) {
            return pool.clone();
        }
        let pool = Rc::new(ClusterPool {
            hosts: RefCell::new(FxHashMap::default()),
            waiters: RefCell::new(VecDeque::new()),
            breakers: Breakers::default(),
            stats: ClusterHttpStats::new(store, &cluster.name),
        });
        p.borrow_mut().insert(cluster.name.clone(), pool.clone());
        pool
    })
}

/// Picks a host of `cluster` with this worker's HTTP load balancer.
pub fn choose_host(cluster: &ClusterInfo) -> Option<Arc<Host>> {
    LB.with(|lb| lb.borrow_mut().choose(cluster))
}

/// Releases a circuit-breaker slot and wakes one waiter.
struct ConnGuard {
    pool: Rc<ClusterPool>,
    cluster: Arc<ClusterInfo>,
    host: Arc<Host>,
    worker: usize,
}

impl Drop for ConnGuard {
    fn drop(&mut self) {
        let b = &self.pool.breakers;
        b.connections.set(b.connections.get().saturating_sub(1));
        self.cluster.stats.upstream_cx_active.dec(self.worker);
        self.cluster.stats.upstream_cx_destroy.inc(self.worker);
        self.host.stats.cx_active.dec(self.worker);
        self.pool.wake_one();
    }
}

impl ClusterPool {
    fn wake_all(&self) {
        let waiters = std::mem::take(&mut *self.waiters.borrow_mut());
        for w in waiters {
            if let Some(w) = w.take() {
                w.wake();
            }
        }
    }

    fn wake_one(&self) {
        while let Some(w) = self.waiters.borrow_mut().pop_front() {
            if let Some(w) = w.take() {
                w.wake();
                return;
            }
        }
    }

    /// Returns an HTTP/1 connection for reuse once its response is complete.
    pub fn release(&self, addr: SocketAddr, sender: http1::SendRequest<ProxyBody>) {
        if sender.is_closed() {
            return;
        }
        self.hosts
            .borrow_mut()
            .entry(addr)
            .or_default()
            .idle
            .push(sender);
        self.wake_one();
    }

    /// Returns a connection of Courier's own HTTP/1 client for reuse.
    pub fn release_raw(&self, addr: SocketAddr, conn: H1Connection) {
        self.hosts
            .borrow_mut()
            .entry(addr)
            .or_default()
            .raw_idle
            .push(conn);
        self.wake_one();
    }

    async fn wait_for_slot(&self) {
        /// A wait given up (its request dropped, by a timeout or a reset) leaves an empty
        /// slot in the queue, which a wake-up then skips rather than spends.
        struct Slot(Rc<Cell<Option<Waker>>>);
        impl Drop for Slot {
            fn drop(&mut self) {
                self.0.take();
            }
        }
        let slot = Slot(Rc::new(Cell::new(None)));
        let mut registered = false;
        std::future::poll_fn(|cx| {
            if registered && slot.0.take().is_none() {
                return Poll::Ready(());
            }
            slot.0.set(Some(cx.waker().clone()));
            if !registered {
                registered = true;
                self.waiters.borrow_mut().push_back(slot.0.clone());
            }
            Poll::Pending
        })
        .await
    }

    /// A connection to `host`: an idle HTTP/1 one, an HTTP/2 one with room for another
    /// stream, or a new one (waiting as a pending request when `max_connections` is
    /// reached). Returns whether the connection was reused. `raw` asks for an HTTP/1
    /// connection of Courier's own client ([`Sender::Raw`]) rather than hyper's.
    pub async fn checkout(
        self: &Rc<Self>,
        cluster: &Arc<ClusterInfo>,
        host: &Arc<Host>,
        worker: usize,
        raw: bool,
    ) -> Result<(Sender, bool), PoolError> {
        // Counted while this request waits, and given back however the wait ends (the
        // request may be dropped while it waits).
        let mut pending: Option<PendingGuard<'_>> = None;
        loop {
            if cluster.http2 {
                if let Some(s) = self.h2_stream(cluster, host) {
                    break Ok((s, true));
                }
            } else if raw {
                let reused = loop {
                    let c = self
                        .hosts
                        .borrow_mut()
                        .get_mut(&host.address)
                        .and_then(|h| h.raw_idle.pop());
                    let Some(mut c) = c else { break None };
                    // Not if it closed (or sent unsolicited bytes) while idle.
                    if c.is_reusable() {
                        break Some(c);
                    }
                };
                if let Some(c) = reused {
                    break Ok((Sender::Raw(c), true));
                }
            } else {
                let mut reused = None;
                loop {
                    let s = self
                        .hosts
                        .borrow_mut()
                        .get_mut(&host.address)
                        .and_then(|h| h.idle.pop());
                    let Some(mut s) = s else { break };
                    if s.is_closed() {
                        continue;
                    }
                    if s.ready().await.is_ok() {
                        reused = Some(s);
                        break;
                    }
                }
                if let Some(s) = reused {
                    break Ok((Sender::H1(s), true));
                }
            }
            let b = &self.breakers;
            // A connection on its way, or one whose server's limit is not yet known, may
            // have room: wait for it rather than open another.
            let h2_busy = cluster.http2
                && self
                    .hosts
                    .borrow()
                    .get(&host.address)
                    .is_some_and(|h| h.h2_connecting || h.h2.iter().any(H2Conn::settling));
            if b.connections.get() >= cluster.thresholds.max_connections || h2_busy {
                if !h2_busy {
                    cluster.stats.upstream_cx_overflow.inc(worker);
                }
                if pending.is_none() {
                    if b.pending.get() >= cluster.thresholds.max_pending_requests {
                        self.stats.rq_pending_overflow.inc(worker);
                        break Err(PoolError::Overflow);
                    }
                    b.pending.set(b.pending.get() + 1);
                    self.stats.rq_pending_total.inc(worker);
                    self.stats.rq_pending_active.inc(worker);
                    pending = Some(PendingGuard { pool: self, worker });
                }
                self.wait_for_slot().await;
                continue;
            }
            // Boxed: connecting (and the handshake futures) is rare once the pool is warm,
            // and would otherwise make every request's future larger.
            break Box::pin(self.connect(cluster, host, worker, raw))
                .await
                .map(|s| (s, false));
        }
    }

    /// A stream on an open HTTP/2 connection to `host` with room for one.
    fn h2_stream(self: &Rc<Self>, cluster: &ClusterInfo, host: &Host) -> Option<Sender> {
        let mut hosts = self.hosts.borrow_mut();
        let h = hosts.get_mut(&host.address)?;
        h.h2.retain(|c| !c.sender.is_closed());
        let c =
            h.h2.iter()
                .find(|c| c.has_room(cluster.http2_max_streams))?;
        c.active.set(c.active.get() + 1);
        let stream = H2Stream {
            active: c.active.clone(),
            pool: self.clone(),
        };
        Some(Sender::H2(c.sender.clone(), stream))
    }

    async fn connect(
        self: &Rc<Self>,
        cluster: &Arc<ClusterInfo>,
        host: &Arc<Host>,
        worker: usize,
        raw: bool,
    ) -> Result<Sender, PoolError> {
        let b = &self.breakers;
        b.connections.set(b.connections.get() + 1);
        cluster.stats.upstream_cx_total.inc(worker);
        cluster.stats.upstream_cx_active.inc(worker);
        host.stats.cx_total.inc(worker);
        host.stats.cx_active.inc(worker);
        let guard = ConnGuard {
            pool: self.clone(),
            cluster: cluster.clone(),
            host: host.clone(),
            worker,
        };
        let _connecting = cluster.http2.then(|| {
            self.hosts
                .borrow_mut()
                .entry(host.address)
                .or_default()
                .h2_connecting = true;
            H2Connecting {
                pool: self.clone(),
                addr: host.address,
            }
        });
        let deadline = Instant::now() + cluster.connect_timeout;
        let io = match rt::timeout(Some(deadline), TcpIo::connect(host.address)).await {
            None => {
                self.connect_failed(cluster, host, worker);
                cluster.stats.upstream_cx_connect_timeout.inc(worker);
                return Err(PoolError::ConnectTimeout);
            }
            Some(Err(e)) => {
                self.connect_failed(cluster, host, worker);
                return Err(PoolError::ConnectFailure(e.to_string()));
            }
            Some(Ok(io)) => io,
        };
        if cluster.http2 {
            let peer = Rc::new(PeerSettings::default());
            let pool = self.clone();
            // Requests waiting for this connection's settings may fit on it now.
            let io = SettingsWatch::new(io, peer.clone(), Box::new(move || pool.wake_all()));
            let handshake = http2::Builder::new(LocalExec)
                .timer(RtTimer)
                .handshake::<_, ProxyBody>(io)
                .await;
            self.hosts
                .borrow_mut()
                .entry(host.address)
                .or_default()
                .h2_connecting = false;
            let (sender, conn) = match handshake {
                Ok(x) => x,
                Err(e) => {
                    self.connect_failed(cluster, host, worker);
                    return Err(PoolError::ConnectFailure(e.to_string()));
                }
            };
            self.stats.cx_http2_total.inc(worker);
            // This request's stream is the first on it.
            let active = Rc::new(Cell::new(1));
            self.hosts
                .borrow_mut()
                .entry(host.address)
                .or_default()
                .h2
                .push(H2Conn {
                    sender: sender.clone(),
                    active: active.clone(),
                    peer,
                });
            self.wake_one();
            let pool = self.clone();
            let addr = host.address;
            rt::spawn(async move {
                if let Err(e) = conn.await {
                    tracing::debug!(error = %e, "upstream h2 connection closed");
                }
                if let Some(h) = pool.hosts.borrow_mut().get_mut(&addr) {
                    h.h2.retain(|c| !c.sender.is_closed());
                }
                drop(guard);
            });
            let stream = H2Stream {
                active,
                pool: self.clone(),
            };
            Ok(Sender::H2(sender, stream))
        } else if raw {
            self.stats.cx_http1_total.inc(worker);
            Ok(Sender::Raw(H1Connection::new(io, Box::new(guard))))
        } else {
            let (sender, conn) = match http1::Builder::new().handshake::<_, ProxyBody>(io).await {
                Ok(x) => x,
                Err(e) => {
                    self.connect_failed(cluster, host, worker);
                    return Err(PoolError::ConnectFailure(e.to_string()));
                }
            };
            self.stats.cx_http1_total.inc(worker);
            rt::spawn(async move {
                if let Err(e) = conn.await {
                    tracing::debug!(error = %e, "upstream h1 connection closed");
                }
                drop(guard);
            });
            Ok(Sender::H1(sender))
        }
    }

    fn connect_failed(&self, cluster: &ClusterInfo, host: &Host, worker: usize) {
        cluster.stats.upstream_cx_connect_fail.inc(worker);
        host.stats.cx_connect_fail.inc(worker);
        if let Some(h) = self.hosts.borrow_mut().get_mut(&host.address) {
            h.h2_connecting = false;
        }
    }
}
