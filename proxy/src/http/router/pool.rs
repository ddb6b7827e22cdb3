//! Per-worker upstream HTTP connection pools (Envoy's `ConnectionPool`): HTTP/1.1
//! keep-alive reuse, and multiplexed HTTP/2 connections per host, another opened when the
//! open ones carry as many streams as their server allows (its
//! `SETTINGS_MAX_CONCURRENT_STREAMS`, read by [`crate::http::codec::h2_settings`]) or the cluster's
//! `max_concurrent_streams`; the cluster's circuit breakers counted per worker; and each
//! connection's lifetime ([`ConnLifetime`]: idle timeout, maximum duration and requests),
//! kept by one sweeper task per pool that sleeps until the next connection is due.

use std::cell::{Cell, RefCell};
use std::collections::VecDeque;
use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::rc::Rc;
use std::sync::Arc;
use std::task::{Poll, Waker};
use std::time::Instant;

use hyper::client::conn::{http1, http2};
use rustc_hash::{FxHashMap, FxHashSet};

use crate::http::codec::body::ProxyBody;
use crate::http::codec::h2_settings::{PeerSettings, SettingsWatch};
use crate::http::codec::upstream_h1::H1Connection;
use crate::http::request_stats::RequestStats;
use crate::protocol::key_format::KeyFormat;
use crate::protocol::stream_limits::DEFAULT_MAX_HEADERS;
use crate::stats::{Counter, Gauge, Store};
use crate::upstream::{ClusterInfo, ConnLifetime, ConnPool, Host, ThreadLocalClusterManager};
use courier_runtime::event::rt::{self, LocalExec, RtTimer, Sleep};

use crate::transport_socket::tls::{AlpnFallback, AutoName};
use crate::upstream::connect::{self, ConnectError};

/// Which connections can carry a request: those to its host, opened with its server
/// name when the cluster takes it from each request (`auto_sni`; Envoy keys its pools by
/// the transport socket options the same way).
#[derive(Clone, PartialEq, Eq, Hash, Debug)]
pub struct ConnKey {
    /// The host.
    pub addr: SocketAddr,
    /// The server name the request chose, under `auto_sni`.
    pub name: Option<AutoName>,
    /// Under `upstream_proxy_protocol`: the downstream connection's (client,
    /// destination) addresses its PROXY header names (a connection serves one downstream
    /// connection's requests, as Envoy pools them).
    pub downstream: Option<(SocketAddr, SocketAddr)>,
    /// Under `use_downstream_protocol_config`: the request came over HTTP/2, so it goes
    /// on the host's HTTP/2 connections (Envoy keys its pools by protocol the same way);
    /// false for every other cluster, whose protocol is the cluster's.
    pub h2: bool,
}

impl ConnKey {
    /// Connections to `addr` named `name`.
    pub fn new(addr: SocketAddr, name: Option<&AutoName>) -> ConnKey {
        ConnKey {
            addr,
            name: name.cloned(),
            downstream: None,
            h2: false,
        }
    }
}

/// `cluster.<name>.*` HTTP stats, created on first use on each worker.
pub struct ClusterHttpStats {
    /// The upstream request stats a route and a virtual cluster keep too.
    pub rq: RequestStats,
    /// `upstream_rq_active`.
    pub rq_active: Arc<Gauge>,
    /// `retry_or_shadow_abandoned`: a request body outgrew its buffer limit, so the
    /// request went without retries.
    pub retry_or_shadow_abandoned: Arc<Counter>,
    /// `upstream_rq_per_try_timeout`.
    pub rq_per_try_timeout: Arc<Counter>,
    /// `upstream_rq_max_duration_reached`: streams ended by the cluster's
    /// `max_stream_duration`.
    pub rq_max_duration_reached: Arc<Counter>,
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
    /// `upstream_cx_idle_timeout`: connections closed by the cluster's `idle_timeout`.
    pub cx_idle_timeout: Arc<Counter>,
    /// `upstream_cx_max_requests`: connections that reached `max_requests_per_connection`.
    pub cx_max_requests: Arc<Counter>,
    /// `upstream_cx_max_duration_reached`: connections retired by
    /// `max_connection_duration`.
    pub cx_max_duration_reached: Arc<Counter>,
    /// Counters filters keep in the cluster's scope (`cluster.<name>.ext_authz.ok`),
    /// by leaf name, created on their first use on this worker.
    named: RefCell<FxHashMap<Box<str>, Arc<Counter>>>,
}

impl ClusterHttpStats {
    fn new(store: &Store, name: &str) -> ClusterHttpStats {
        let c = |s: &str| store.counter(&format!("cluster.{name}.{s}"));
        let g = |s: &str| store.gauge(&format!("cluster.{name}.{s}"));
        ClusterHttpStats {
            rq: RequestStats::cluster(store, name),
            rq_active: g("upstream_rq_active"),
            retry_or_shadow_abandoned: c("retry_or_shadow_abandoned"),
            rq_per_try_timeout: c("upstream_rq_per_try_timeout"),
            rq_max_duration_reached: c("upstream_rq_max_duration_reached"),
            rq_pending_overflow: c("upstream_rq_pending_overflow"),
            rq_pending_total: c("upstream_rq_pending_total"),
            rq_pending_active: g("upstream_rq_pending_active"),
            rq_rx_reset: c("upstream_rq_rx_reset"),
            cx_protocol_error: c("upstream_cx_protocol_error"),
            cx_http1_total: c("upstream_cx_http1_total"),
            cx_http2_total: c("upstream_cx_http2_total"),
            cx_idle_timeout: c("upstream_cx_idle_timeout"),
            cx_max_requests: c("upstream_cx_max_requests"),
            cx_max_duration_reached: c("upstream_cx_max_duration_reached"),
            named: RefCell::default(),
        }
    }

    /// The counter `cluster.<cluster>.<leaf>`, which a filter counts in the scope of
    /// the cluster a request goes to.
    pub fn named(&self, store: &Store, cluster: &str, leaf: &str) -> Arc<Counter> {
        if let Some(c) = self.named.borrow().get(leaf) {
            return c.clone();
        }
        let c = store.counter(&format!("cluster.{cluster}.{leaf}"));
        self.named.borrow_mut().insert(leaf.into(), c.clone());
        c
    }
}

/// A request sender on an upstream connection.
pub enum Sender {
    /// An HTTP/1.1 connection through hyper's client (exclusive while the request is in
    /// flight): for streamed request bodies.
    H1(http1::SendRequest<ProxyBody>, ConnUsage),
    /// An HTTP/1.1 connection driven by the request itself ([`H1Connection`]): for requests
    /// whose body is complete.
    Raw(H1Connection, ConnUsage),
    /// An HTTP/2 connection (shared), and the stream's place on it.
    H2(http2::SendRequest<ProxyBody>, H2Stream),
}

impl Sender {
    /// The connection's local address.
    pub fn local_addr(&self) -> Option<SocketAddr> {
        match self {
            Sender::H1(_, u) | Sender::Raw(_, u) => u.local,
            Sender::H2(_, s) => s.usage.local,
        }
    }
}

/// What an upstream HTTP/1 connection has done so far, against the cluster's
/// [`ConnLifetime`]. It travels with the connection between the pool and its request.
#[derive(Clone, Copy, Debug)]
pub struct ConnUsage {
    opened: Instant,
    requests: u32,
    /// The connection's local address (for the access log).
    local: Option<SocketAddr>,
}

impl ConnUsage {
    /// A connection opened now from `local`, before its first request.
    fn new(local: Option<SocketAddr>) -> ConnUsage {
        ConnUsage {
            opened: Instant::now(),
            requests: 0,
            local,
        }
    }
}

/// An HTTP/1 connection in the pool, waiting for a request.
struct Idle<C> {
    conn: C,
    usage: ConnUsage,
    since: Instant,
}

/// Why the pool retires a connection.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Retire {
    /// `idle_timeout`: nothing on it for that long.
    Idle,
    /// `max_connection_duration`: open for that long.
    MaxDuration,
}

impl Retire {
    /// When a connection opened at `opened` is retired, if it has been idle since `idle`
    /// (`None` while requests are on it).
    fn due(
        lifetime: &ConnLifetime,
        opened: Instant,
        idle: Option<Instant>,
    ) -> Option<(Instant, Retire)> {
        let by_idle = idle
            .zip(lifetime.idle_timeout)
            .map(|(since, d)| (since + d, Retire::Idle));
        let by_age = lifetime
            .max_duration
            .map(|d| (opened + d, Retire::MaxDuration));
        match (by_idle, by_age) {
            (Some(a), Some(b)) => Some(if b.0 <= a.0 { b } else { a }),
            (a, b) => a.or(b),
        }
    }

    fn count(self, stats: &ClusterHttpStats, worker: usize) {
        match self {
            Retire::Idle => stats.cx_idle_timeout.inc(worker),
            Retire::MaxDuration => stats.cx_max_duration_reached.inc(worker),
        }
    }
}

/// The streams on an HTTP/2 connection, shared with each [`H2Stream`].
struct H2Usage {
    /// The connection's local address (for the access log).
    local: Option<SocketAddr>,
    /// Requests sent whose responses have not ended.
    active: Cell<u32>,
    /// When `active` last fell to zero.
    idle_since: Cell<Instant>,
}

/// One HTTP/2 connection to a host, shared by the requests on it.
struct H2Conn {
    sender: http2::SendRequest<ProxyBody>,
    usage: Rc<H2Usage>,
    /// Streams opened on it so far.
    requests: u32,
    opened: Instant,
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
        self.usage.active.get() < limit.min(cluster_max).max(1)
    }

    /// Whether the server's settings are still to come.
    fn settling(&self) -> bool {
        self.peer.max_streams().is_none() && !self.sender.is_closed()
    }
}

/// A request in flight, counted in the cluster's `max_requests` until dropped
/// ([`ClusterPool::request_slot`]).
pub struct RequestSlot(Rc<ClusterPool>);

impl Drop for RequestSlot {
    fn drop(&mut self) {
        let b = &self.0.breakers;
        b.requests.set(b.requests.get().saturating_sub(1));
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
    key: ConnKey,
}

impl Drop for H2Connecting {
    fn drop(&mut self) {
        if let Some(h) = self.pool.hosts.borrow_mut().get_mut(&self.key) {
            h.h2_connecting = false;
        }
        self.pool.wake_all();
    }
}

/// A stream's place on an HTTP/2 connection, given back when dropped (once the response
/// has ended, or the request failed).
pub struct H2Stream {
    usage: Rc<H2Usage>,
    pool: Rc<ClusterPool>,
}

impl Drop for H2Stream {
    fn drop(&mut self) {
        let active = self.usage.active.get().saturating_sub(1);
        self.usage.active.set(active);
        if active == 0 {
            let now = Instant::now();
            self.usage.idle_since.set(now);
            if let Some(d) = self.pool.lifetime.get().idle_timeout {
                self.pool.sweep_by(now + d);
            }
        }
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

/// A host's connections on this worker. The idle lists are stacks: the connection most
/// recently used goes first, so the oldest idle ones sit at the bottom and time out.
#[derive(Default)]
struct HostPool {
    idle: Vec<Idle<http1::SendRequest<ProxyBody>>>,
    raw_idle: Vec<Idle<H1Connection>>,
    h2: Vec<H2Conn>,
    h2_connecting: bool,
    /// `auto_config`: the host negotiated `h2` on its last connection, so its next
    /// requests look for room on its HTTP/2 connections first (as Envoy's mixed pool
    /// remembers a host's protocol).
    alpn_h2: bool,
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

/// Where a waiting request's waker sits until a connection frees up; emptied when the
/// request stops waiting.
type WaitSlot = Rc<Cell<Option<Waker>>>;

/// One cluster's pools on this worker.
pub struct ClusterPool {
    hosts: RefCell<FxHashMap<ConnKey, HostPool>>,
    /// Requests waiting for a connection, each with the connections it can take.
    waiters: RefCell<VecDeque<(ConnKey, WaitSlot)>>,
    /// Open connections per host (`per_host_thresholds.max_connections`). Apart from
    /// `hosts`: a connection closes (and counts down) while `hosts` may be borrowed.
    host_connections: RefCell<FxHashMap<SocketAddr, u32>>,
    /// The cluster's connection lifetime, as of its latest request.
    lifetime: Cell<ConnLifetime>,
    /// The sweeper's next wake-up, while it runs (see [`ClusterPool::sweep_by`]).
    sweep_at: Cell<Option<Instant>>,
    sweeper: Cell<Option<Waker>>,
    /// The cluster was removed or replaced: connections close as their requests end.
    draining: Cell<bool>,
    /// Hosts that left the cluster while connections to them were open: those close as
    /// their requests end. An address leaves the set with its last connection.
    gone: RefCell<FxHashSet<SocketAddr>>,
    worker: usize,
    /// Circuit-breaker counts.
    pub breakers: Breakers,
    /// HTTP stats.
    pub stats: ClusterHttpStats,
}

/// The pool of `cluster` on worker `worker` (this one), kept by the worker's
/// [`ThreadLocalClusterManager`] (which drains it when the cluster goes).
pub fn cluster_pool(cluster: &ClusterInfo, store: &Store, worker: usize) -> Rc<ClusterPool> {
    ThreadLocalClusterManager::with(|tlcm| {
        tlcm.conn_pool(cluster, || ClusterPool {
            hosts: RefCell::new(FxHashMap::default()),
            waiters: RefCell::new(VecDeque::new()),
            host_connections: RefCell::new(FxHashMap::default()),
            lifetime: Cell::new(cluster.conn_lifetime),
            sweep_at: Cell::new(None),
            sweeper: Cell::new(None),
            draining: Cell::new(false),
            gone: RefCell::new(FxHashSet::default()),
            worker,
            breakers: Breakers::default(),
            stats: ClusterHttpStats::new(store, &cluster.name),
        })
    })
}

/// Picks a host of `cluster` with this worker's load balancer (the one `tcp_proxy` uses
/// too).
pub fn choose_host(cluster: &ClusterInfo, hash: Option<u64>) -> Option<Arc<Host>> {
    ThreadLocalClusterManager::with(|tlcm| tlcm.choose_host(cluster, hash, 0))
}

/// The host of an `ORIGINAL_DST` cluster for destination `dst` (see
/// [`ThreadLocalClusterManager::original_dst_host`]).
pub fn original_dst_host(cluster: &ClusterInfo, dst: std::net::SocketAddr) -> Option<Arc<Host>> {
    ThreadLocalClusterManager::with(|tlcm| tlcm.original_dst_host(cluster, dst))
}

/// Picks a host that the retry policy's host predicates accept: not one already tried
/// (`previous_hosts`), not a canary (`omit_canary_hosts`); up to `reselections` more
/// picks, then the last one whatever it is, as Envoy's.
pub fn choose_host_avoiding(
    cluster: &ClusterInfo,
    hash: Option<u64>,
    tried: &[std::net::SocketAddr],
    omit_canary: bool,
    reselections: u32,
) -> Option<Arc<Host>> {
    ThreadLocalClusterManager::with(|tlcm| {
        let mut host = None;
        for attempt in 0..=reselections {
            host = tlcm.choose_host(cluster, hash, attempt);
            match &host {
                Some(h) if tried.contains(&h.address) || (omit_canary && h.canary) => continue,
                _ => break,
            }
        }
        host
    })
}

/// Releases a circuit-breaker slot (the cluster's and the host's) and wakes a waiter.
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
        let addr = self.host.address;
        {
            let mut counts = self.pool.host_connections.borrow_mut();
            if let Some(n) = counts.get_mut(&addr) {
                *n = n.saturating_sub(1);
                // Gone hosts leave no entry behind.
                if *n == 0 {
                    counts.remove(&addr);
                    self.pool.gone.borrow_mut().remove(&addr);
                }
            }
        }
        // Room for a connection to this host first, else to any.
        self.pool.wake_for_or_any(addr);
    }
}

impl ClusterPool {
    /// Counts a request in flight (`max_requests`) until the slot drops; the caller
    /// checked the limit.
    pub fn request_slot(self: &Rc<Self>) -> RequestSlot {
        let b = &self.breakers;
        b.requests.set(b.requests.get() + 1);
        RequestSlot(self.clone())
    }

    /// Wakes a request waiting for `addr` (whatever its server name), else any: a
    /// connection slot is free.
    fn wake_for_or_any(&self, addr: SocketAddr) {
        if !self.wake_first(|k| k.addr == addr) {
            self.wake_one();
        }
    }

    fn wake_all(&self) {
        let waiters = std::mem::take(&mut *self.waiters.borrow_mut());
        for (_, w) in waiters {
            if let Some(w) = w.take() {
                w.wake();
            }
        }
    }

    fn wake_one(&self) {
        while let Some((_, w)) = self.waiters.borrow_mut().pop_front() {
            if let Some(w) = w.take() {
                w.wake();
                return;
            }
        }
    }

    /// Wakes the first request waiting for `key`'s connections (one is free); false when
    /// there is none.
    fn wake_for(&self, key: &ConnKey) -> bool {
        self.wake_first(|k| k == key)
    }

    /// Wakes the first waiting request whose key `wanted` accepts; false when none does.
    fn wake_first(&self, wanted: impl Fn(&ConnKey) -> bool) -> bool {
        let mut waiters = self.waiters.borrow_mut();
        // Given-up waits are dropped on the way.
        waiters.retain(|(_, w)| {
            let live = w.take();
            let keep = live.is_some();
            w.set(live);
            keep
        });
        let Some(i) = waiters.iter().position(|(k, _)| wanted(k)) else {
            return false;
        };
        let waker = waiters.remove(i).and_then(|(_, w)| w.take());
        drop(waiters);
        if let Some(w) = waker {
            w.wake();
        }
        true
    }

    /// Returns an HTTP/1 connection for reuse once its response is complete.
    pub fn release(
        self: &Rc<Self>,
        key: ConnKey,
        sender: http1::SendRequest<ProxyBody>,
        usage: ConnUsage,
    ) {
        if sender.is_closed() || self.retired(key.addr) {
            return;
        }
        if let Some(idle) = self.idle_entry(sender, usage) {
            self.hosts
                .borrow_mut()
                .entry(key.clone())
                .or_default()
                .idle
                .push(idle);
            self.wake_for(&key);
        }
    }

    /// Returns a connection of Courier's own HTTP/1 client for reuse.
    pub fn release_raw(self: &Rc<Self>, key: ConnKey, conn: H1Connection, usage: ConnUsage) {
        if self.retired(key.addr) {
            return;
        }
        if let Some(idle) = self.idle_entry(conn, usage) {
            self.hosts
                .borrow_mut()
                .entry(key.clone())
                .or_default()
                .raw_idle
                .push(idle);
            self.wake_for(&key);
        }
    }

    /// Whether connections to `addr` close rather than wait for another request: the
    /// cluster or the host is gone.
    fn retired(&self, addr: SocketAddr) -> bool {
        self.draining.get() || {
            let gone = self.gone.borrow();
            !gone.is_empty() && gone.contains(&addr)
        }
    }

    /// A connection whose request ended, as an idle one: `None` (closing it) when it has
    /// carried its `max_requests_per_connection` or outlived its `max_connection_duration`.
    fn idle_entry<C>(self: &Rc<Self>, conn: C, usage: ConnUsage) -> Option<Idle<C>> {
        let lifetime = self.lifetime.get();
        if lifetime.max_requests.is_some_and(|m| usage.requests >= m) {
            return None;
        }
        let now = Instant::now();
        match Retire::due(&lifetime, usage.opened, Some(now)) {
            Some((at, why)) if at <= now => {
                why.count(&self.stats, self.worker);
                None
            }
            Some((at, _)) => {
                self.sweep_by(at);
                Some(Idle {
                    conn,
                    usage,
                    since: now,
                })
            }
            None => Some(Idle {
                conn,
                usage,
                since: now,
            }),
        }
    }

    /// Has the sweeper run by `at`: started if it is not running, woken early if it would
    /// run later. One sweeper per pool closes every connection whose time is up, so an idle
    /// connection costs no timer of its own.
    fn sweep_by(self: &Rc<Self>, at: Instant) {
        match self.sweep_at.get() {
            Some(t) if t <= at => {}
            Some(_) => {
                self.sweep_at.set(Some(at));
                if let Some(w) = self.sweeper.take() {
                    w.wake();
                }
            }
            None => {
                // Not on a worker (its runtime is being torn down): nothing left to sweep.
                let pool = self.clone();
                if rt::try_with(move |rt| rt.spawn(pool.sweep())).is_some() {
                    self.sweep_at.set(Some(at));
                }
            }
        }
    }

    async fn sweep(self: Rc<Self>) {
        while let Some(at) = self.sweep_at.get() {
            let mut sleep = Sleep::until(at);
            std::future::poll_fn(|cx| {
                // Brought forward by `sweep_by`.
                match self.sweep_at.get() {
                    Some(t) if t < sleep.deadline() => sleep.reset(t),
                    _ => {}
                }
                self.sweeper.set(Some(cx.waker().clone()));
                Pin::new(&mut sleep).poll(cx)
            })
            .await;
            self.sweeper.take();
            let next = self.retire_due(Instant::now());
            self.sweep_at.set(next);
        }
    }

    /// Closes the idle connections whose `idle_timeout` has passed and retires those past
    /// their `max_connection_duration` (an HTTP/2 one in use drains: it takes no new
    /// streams and closes after its last). Returns when the next one is due.
    fn retire_due(&self, now: Instant) -> Option<Instant> {
        let lifetime = self.lifetime.get();
        let mut next: Option<Instant> = None;
        let (stats, worker) = (&self.stats, self.worker);
        let mut keep = |opened: Instant, idle: Option<Instant>| -> bool {
            match Retire::due(&lifetime, opened, idle) {
                Some((at, why)) if at <= now => {
                    why.count(stats, worker);
                    false
                }
                Some((at, _)) => {
                    next = Some(next.map_or(at, |n| n.min(at)));
                    true
                }
                None => true,
            }
        };
        for host in self.hosts.borrow_mut().values_mut() {
            host.idle
                .retain(|c| !c.conn.is_closed() && keep(c.usage.opened, Some(c.since)));
            host.raw_idle
                .retain(|c| keep(c.usage.opened, Some(c.since)));
            host.h2.retain(|c| {
                let idle = (c.usage.active.get() == 0).then(|| c.usage.idle_since.get());
                !c.sender.is_closed() && keep(c.opened, idle)
            });
        }
        next
    }

    async fn wait_for_slot(&self, key: &ConnKey) {
        /// A wait given up (its request dropped, by a timeout or a reset) leaves an empty
        /// slot in the queue, which a wake-up then skips rather than spends; one given up
        /// after its wake-up passes the wake-up on, so that the connection it was woken for
        /// does not sit unused while others wait.
        struct Slot<'a> {
            waker: WaitSlot,
            pool: &'a ClusterPool,
            addr: SocketAddr,
            registered: bool,
            done: bool,
        }
        impl Drop for Slot<'_> {
            fn drop(&mut self) {
                let woken = self.registered && !self.done && self.waker.take().is_none();
                if woken {
                    self.pool.wake_for_or_any(self.addr);
                }
            }
        }
        let mut slot = Slot {
            waker: Rc::new(Cell::new(None)),
            pool: self,
            addr: key.addr,
            registered: false,
            done: false,
        };
        std::future::poll_fn(|cx| {
            if slot.registered && slot.waker.take().is_none() {
                slot.done = true;
                return Poll::Ready(());
            }
            slot.waker.set(Some(cx.waker().clone()));
            if !slot.registered {
                slot.registered = true;
                self.waiters
                    .borrow_mut()
                    .push_back((key.clone(), slot.waker.clone()));
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
        key: &ConnKey,
        worker: usize,
        raw: bool,
    ) -> Result<(Sender, bool), PoolError> {
        // Counted while this request waits, and given back however the wait ends (the
        // request may be dropped while it waits).
        let mut pending: Option<PendingGuard<'_>> = None;
        self.lifetime.set(cluster.conn_lifetime);
        loop {
            let h2 = self.speaks_h2(cluster, key);
            if h2 {
                if let Some(s) = self.h2_stream(cluster, key, worker) {
                    break Ok((s, true));
                }
            } else if raw {
                let reused = loop {
                    let c = self
                        .hosts
                        .borrow_mut()
                        .get_mut(key)
                        .and_then(|h| h.raw_idle.pop());
                    let Some(mut c) = c else { break None };
                    // Not if it closed (or sent unsolicited bytes) while idle.
                    if c.conn.is_reusable() && self.still_young(&c.usage) {
                        break Some(c);
                    }
                };
                if let Some(c) = reused {
                    let usage = self.one_more_request(c.usage, worker);
                    break Ok((Sender::Raw(c.conn, usage), true));
                }
            } else {
                let mut reused = None;
                loop {
                    let s = self
                        .hosts
                        .borrow_mut()
                        .get_mut(key)
                        .and_then(|h| h.idle.pop());
                    let Some(mut s) = s else { break };
                    if s.conn.is_closed() || !self.still_young(&s.usage) {
                        continue;
                    }
                    if s.conn.ready().await.is_ok() {
                        reused = Some(s);
                        break;
                    }
                }
                if let Some(s) = reused {
                    let usage = self.one_more_request(s.usage, worker);
                    break Ok((Sender::H1(s.conn, usage), true));
                }
            }
            let b = &self.breakers;
            // A connection on its way, or one whose server's limit is not yet known, may
            // have room: wait for it rather than open another.
            let h2_busy = h2
                && self
                    .hosts
                    .borrow()
                    .get(key)
                    .is_some_and(|h| h.h2_connecting || h.h2.iter().any(H2Conn::settling));
            let host_full = cluster
                .thresholds
                .per_host_max_connections
                .is_some_and(|m| {
                    self.host_connections
                        .borrow()
                        .get(&host.address)
                        .is_some_and(|&n| n >= m)
                });
            let full = b.connections.get() >= cluster.thresholds.max_connections || host_full;
            // Idle connections of the other HTTP/1 client cannot serve this request: one
            // goes to make room (if it closes now, at once; else its close wakes this wait).
            if full && !h2 && self.evict_other_idle(key, raw) == Some(true) {
                continue;
            }
            if full || h2_busy {
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
                self.wait_for_slot(key).await;
                continue;
            }
            // Boxed: connecting (and the handshake futures) is rare once the pool is warm,
            // and would otherwise make every request's future larger.
            break Box::pin(self.connect(cluster, host, key, worker, raw))
                .await
                .map(|s| (s, false));
        }
    }

    /// Whether requests to `addr` go on HTTP/2 connections: the cluster's protocol, under
    /// `use_downstream_protocol_config` the request's, or under `auto_config` what the
    /// host negotiated last.
    fn speaks_h2(&self, cluster: &ClusterInfo, key: &ConnKey) -> bool {
        cluster.http2
            || key.h2
            || (cluster.http_auto && self.hosts.borrow().get(key).is_some_and(|h| h.alpn_h2))
    }

    /// Closes an idle HTTP/1 connection to `addr` of the other client than the one `raw`
    /// asks for, to make room under a connection limit: `Some(true)` when its slot is free
    /// now (Courier's client closes at once), `Some(false)` when it frees as hyper's
    /// connection task ends, `None` when there is none.
    fn evict_other_idle(&self, key: &ConnKey, raw: bool) -> Option<bool> {
        let mut hosts = self.hosts.borrow_mut();
        let h = hosts.get_mut(key)?;
        if raw {
            let open = std::iter::from_fn(|| h.idle.pop()).find(|c| !c.conn.is_closed())?;
            // Closed outside the borrow: its guard wakes waiters.
            drop(hosts);
            drop(open);
            Some(false)
        } else {
            let conn = h.raw_idle.pop()?;
            drop(hosts);
            drop(conn);
            Some(true)
        }
    }

    /// Whether an idle connection is within its `max_connection_duration` (the sweeper
    /// may not have run yet); one past it is counted here, for the caller to drop.
    fn still_young(&self, usage: &ConnUsage) -> bool {
        match self.lifetime.get().max_duration {
            Some(d) if usage.opened.elapsed() >= d => {
                Retire::MaxDuration.count(&self.stats, self.worker);
                false
            }
            _ => true,
        }
    }

    /// Counts a request on a connection; the one that reaches
    /// `max_requests_per_connection` is counted in `upstream_cx_max_requests`, as Envoy
    /// counts it when it assigns that request.
    fn one_more_request(&self, mut usage: ConnUsage, worker: usize) -> ConnUsage {
        usage.requests += 1;
        if self.lifetime.get().max_requests == Some(usage.requests) {
            self.stats.cx_max_requests.inc(worker);
        }
        usage
    }

    /// A stream on an open HTTP/2 connection to `host` with room for one. The stream that
    /// reaches `max_requests_per_connection` takes the connection out of the pool: it
    /// closes once its streams end.
    fn h2_stream(
        self: &Rc<Self>,
        cluster: &ClusterInfo,
        key: &ConnKey,
        worker: usize,
    ) -> Option<Sender> {
        let mut hosts = self.hosts.borrow_mut();
        let h = hosts.get_mut(key)?;
        h.h2.retain(|c| !c.sender.is_closed());
        let i =
            h.h2.iter()
                .position(|c| c.has_room(cluster.http2_options.max_concurrent_streams))?;
        let c = &mut h.h2[i];
        c.usage.active.set(c.usage.active.get() + 1);
        c.requests += 1;
        let stream = H2Stream {
            usage: c.usage.clone(),
            pool: self.clone(),
        };
        let sender = Sender::H2(c.sender.clone(), stream);
        // `>=`: a config update may have lowered the limit below a live connection's count.
        if let Some(max) = cluster
            .conn_lifetime
            .max_requests
            .filter(|&m| c.requests >= m)
        {
            if c.requests == max {
                self.stats.cx_max_requests.inc(worker);
            }
            h.h2.swap_remove(i);
        }
        Some(sender)
    }

    async fn connect(
        self: &Rc<Self>,
        cluster: &Arc<ClusterInfo>,
        host: &Arc<Host>,
        key: &ConnKey,
        worker: usize,
        raw: bool,
    ) -> Result<Sender, PoolError> {
        let b = &self.breakers;
        b.connections.set(b.connections.get() + 1);
        *self
            .host_connections
            .borrow_mut()
            .entry(host.address)
            .or_default() += 1;
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
        let known_h2 = self.speaks_h2(cluster, key);
        let _connecting = known_h2.then(|| {
            self.hosts
                .borrow_mut()
                .entry(key.clone())
                .or_default()
                .h2_connecting = true;
            H2Connecting {
                pool: self.clone(),
                key: key.clone(),
            }
        });
        let alpn = if cluster.http2 || key.h2 {
            AlpnFallback::Http2
        } else if cluster.http_auto {
            AlpnFallback::Auto
        } else {
            AlpnFallback::Http1
        };
        let io = match connect::connect(
            cluster,
            host,
            alpn,
            key.name.as_ref(),
            worker,
            key.downstream,
        )
        .await
        {
            Err(ConnectError::Timeout) => {
                self.connect_failed(cluster, host, key, worker);
                cluster.stats.upstream_cx_connect_timeout.inc(worker);
                return Err(PoolError::ConnectTimeout);
            }
            Err(ConnectError::Failed(e)) => {
                self.connect_failed(cluster, host, key, worker);
                return Err(PoolError::ConnectFailure(
                    crate::upstream::connect::transport_failure_reason(&e),
                ));
            }
            Ok(io) => io,
        };
        let local = io.tcp().stream().local_addr().ok();
        let h2 = if cluster.http_auto {
            let h2 = io.alpn() == Some(b"h2");
            let mut hosts = self.hosts.borrow_mut();
            let h = hosts.entry(key.clone()).or_default();
            h.alpn_h2 = h2;
            if !h2 {
                h.h2_connecting = false;
            }
            h2
        } else {
            cluster.http2 || key.h2
        };
        if h2 {
            let peer = Rc::new(PeerSettings::default());
            let pool = self.clone();
            // Requests waiting for this connection's settings may fit on it now.
            let io = SettingsWatch::new(io, peer.clone(), Box::new(move || pool.wake_all()));
            let mut builder = http2::Builder::new(LocalExec);
            builder.timer(RtTimer);
            cluster.http2_options.apply_client(&mut builder);
            let handshake = builder.handshake::<_, ProxyBody>(io).await;
            self.hosts
                .borrow_mut()
                .entry(key.clone())
                .or_default()
                .h2_connecting = false;
            let (sender, conn) = match handshake {
                Ok(x) => x,
                Err(e) => {
                    self.connect_failed(cluster, host, key, worker);
                    return Err(PoolError::ConnectFailure(e.to_string()));
                }
            };
            self.stats.cx_http2_total.inc(worker);
            let usage = self.add_h2(cluster, key, &sender, peer, worker, local);
            self.wake_for(key);
            let pool = self.clone();
            let key = key.clone();
            rt::spawn(async move {
                if let Err(e) = conn.await {
                    tracing::debug!(error = %e, "upstream h2 connection closed");
                }
                if let Some(h) = pool.hosts.borrow_mut().get_mut(&key) {
                    h.h2.retain(|c| !c.sender.is_closed());
                }
                drop(guard);
            });
            let stream = H2Stream {
                usage,
                pool: self.clone(),
            };
            Ok(Sender::H2(sender, stream))
        } else if raw {
            self.stats.cx_http1_total.inc(worker);
            let usage = self.one_more_request(ConnUsage::new(local), worker);
            let conn = H1Connection::new(
                io,
                Box::new(guard),
                cluster.http1_key_format,
                cluster.stream_limits.max_headers,
            );
            Ok(Sender::Raw(conn, usage))
        } else {
            let mut builder = http1::Builder::new();
            // hyper's title case capitalises after `-` only (Envoy's after any symbol): the
            // same for every usual field name.
            builder.title_case_headers(cluster.http1_key_format == KeyFormat::ProperCase);
            // hyper's default is Envoy's (100); setting it moves hyper's parse slots to the
            // heap, so only another limit is set.
            if cluster.stream_limits.max_headers != DEFAULT_MAX_HEADERS {
                builder.max_headers(cluster.stream_limits.max_headers);
            }
            let (sender, conn) = match builder.handshake::<_, ProxyBody>(io).await {
                Ok(x) => x,
                Err(e) => {
                    self.connect_failed(cluster, host, key, worker);
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
            let usage = self.one_more_request(ConnUsage::new(local), worker);
            Ok(Sender::H1(sender, usage))
        }
    }

    /// A new HTTP/2 connection to `addr` in the pool, its first stream this request's:
    /// kept for more requests unless it may carry only one (`max_requests_per_connection`)
    /// or the host was drained while it connected. Its usage, which the stream shares.
    fn add_h2(
        self: &Rc<Self>,
        cluster: &ClusterInfo,
        key: &ConnKey,
        sender: &http2::SendRequest<ProxyBody>,
        peer: Rc<PeerSettings>,
        worker: usize,
        local: Option<SocketAddr>,
    ) -> Rc<H2Usage> {
        // This request's stream is the first on it.
        let now = Instant::now();
        let usage = Rc::new(H2Usage {
            local,
            active: Cell::new(1),
            idle_since: Cell::new(now),
        });
        let lifetime = cluster.conn_lifetime;
        if lifetime.max_requests == Some(1) {
            // Its one request: it never joins the pool.
            self.stats.cx_max_requests.inc(worker);
        } else if self.retired(key.addr) {
            // Drained while it connected: it carries this request only.
        } else {
            self.hosts
                .borrow_mut()
                .entry(key.clone())
                .or_default()
                .h2
                .push(H2Conn {
                    sender: sender.clone(),
                    usage: usage.clone(),
                    requests: 1,
                    opened: now,
                    peer,
                });
            if let Some(d) = lifetime.max_duration {
                self.sweep_by(now + d);
            }
        }
        usage
    }

    fn connect_failed(&self, cluster: &ClusterInfo, host: &Host, key: &ConnKey, worker: usize) {
        cluster.stats.upstream_cx_connect_fail.inc(worker);
        host.stats.cx_connect_fail.inc(worker);
        if let Some(h) = self.hosts.borrow_mut().get_mut(key) {
            h.h2_connecting = false;
        }
    }
}

impl ConnPool for ClusterPool {
    fn drain(&self) {
        self.draining.set(true);
        // Dropped outside the borrow: a closing connection's guard reaches the pool.
        let hosts = std::mem::take(&mut *self.hosts.borrow_mut());
        drop(hosts);
        self.wake_all();
    }

    fn drain_hosts(&self, gone: &FxHashSet<SocketAddr>) {
        let mut left = Vec::new();
        {
            let mut hosts = self.hosts.borrow_mut();
            let open = self.host_connections.borrow();
            let mut retired = self.gone.borrow_mut();
            for addr in gone {
                // Every server name's connections to it.
                let keys: Vec<ConnKey> =
                    hosts.keys().filter(|k| k.addr == *addr).cloned().collect();
                left.extend(keys.iter().filter_map(|k| hosts.remove(k)));
                // Busy connections to it close when their requests end.
                if open.contains_key(addr) {
                    retired.insert(*addr);
                }
            }
        }
        drop(left);
        self.wake_all();
    }
}
