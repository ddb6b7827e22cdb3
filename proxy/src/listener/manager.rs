//! The main thread's listener manager (Envoy's `ListenerManager`).
//!
//! Adding a listener binds its sockets here (so "address in use" is an error of the add,
//! i.e. a start-up failure or a NACK) and, once workers run, posts one socket to each
//! worker. An update that changes only filter chains replaces the config in place on every
//! worker and drains just the connections of changed chains; any other update builds a new
//! generation (reusing the sockets when the address is unchanged) and drains every old
//! connection. Removal closes the sockets at once and drains. Draining connections get
//! `on_drain` now and are closed when the drain time ends.

use std::collections::BTreeMap;
use std::net::{SocketAddr, TcpListener};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use courier_proto::envoy::config::listener::v3::Listener;

use super::config::{compile_listener, ListenerConfig, RdsNeed};
use super::socket::bind_listener_sockets;
use super::ActiveTcpListener;
use crate::config::ConfigError;
use crate::stats::{Counter, Gauge, Store, MAIN_THREAD};
use crate::worker::Ctx;
use crate::worker::ThreadLocal;
use crate::worker::WorkerListener;

/// `listener_manager.*` stats.
struct ListenerManagerStats {
    listener_added: Arc<Counter>,
    listener_modified: Arc<Counter>,
    listener_removed: Arc<Counter>,
    listener_in_place_updated: Arc<Counter>,
    listener_create_success: Arc<Counter>,
    listener_create_failure: Arc<Counter>,
    total_listeners_active: Arc<Gauge>,
    total_listeners_warming: Arc<Gauge>,
    total_listeners_draining: Arc<Gauge>,
}

/// A listener as the manager keeps it.
pub struct ListenerEntry {
    /// The compiled listener.
    pub config: Arc<ListenerConfig>,
    /// The address actually bound (port 0 resolved).
    pub bound: SocketAddr,
    /// `version_info` of the response that carried it (empty for static listeners).
    pub version_info: String,
    /// When it was last added or updated.
    pub last_updated: SystemTime,
    /// Whether it came from LDS.
    pub added_via_api: bool,
    /// The main thread's copies of the sockets (workers hold duplicates).
    sockets: Vec<TcpListener>,
}

/// What an add or update did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ListenerChange {
    /// Identical to the existing listener.
    Unchanged,
    /// New listener.
    Added,
    /// Filter chains replaced in place.
    UpdatedInPlace,
    /// Replaced by a new generation.
    Updated,
}

/// The listener manager.
pub struct ListenerManager {
    store: Store,
    tls: Arc<ThreadLocal>,
    active: BTreeMap<String, ListenerEntry>,
    warming: BTreeMap<String, ListenerEntry>,
    stats: ListenerManagerStats,
    drain_time: Duration,
    workers_started: bool,
    draining: Arc<std::sync::atomic::AtomicI64>,
    /// Whether the bootstrap has `dynamic_resources.ads_config`: without it, an HCM whose
    /// RDS source is `ads: {}` is rejected, as Envoy rejects it.
    ads_configured: bool,
    /// A hot-restarted child's parent, asked for a listen socket before one is bound.
    socket_source: Option<SocketSource>,
}

/// Where a listen socket can come from before it is bound: a hot restart's parent,
/// asked by address and worker index (`Ok(None)`: it has none).
pub type SocketSource = Box<dyn Fn(SocketAddr, usize) -> std::io::Result<Option<TcpListener>>>;

impl ListenerManager {
    /// A manager that posts to `tls`'s workers and drains for `drain_time`.
    pub fn new(store: Store, tls: Arc<ThreadLocal>, drain_time: Duration) -> ListenerManager {
        let c = |s: &str| store.counter(&format!("listener_manager.{s}"));
        let stats = ListenerManagerStats {
            listener_added: c("listener_added"),
            listener_modified: c("listener_modified"),
            listener_removed: c("listener_removed"),
            listener_in_place_updated: c("listener_in_place_updated"),
            listener_create_success: c("listener_create_success"),
            listener_create_failure: c("listener_create_failure"),
            total_listeners_active: store.gauge("listener_manager.total_listeners_active"),
            total_listeners_warming: store.gauge("listener_manager.total_listeners_warming"),
            total_listeners_draining: store.gauge("listener_manager.total_listeners_draining"),
        };
        ListenerManager {
            store,
            tls,
            active: BTreeMap::new(),
            warming: BTreeMap::new(),
            stats,
            drain_time,
            workers_started: false,
            draining: Default::default(),
            ads_configured: false,
            socket_source: None,
        }
    }

    /// Sets where listen sockets are taken from before binding (a hot restart's parent),
    /// or stops taking them (`None`).
    pub fn set_socket_source(&mut self, source: Option<SocketSource>) {
        self.socket_source = source;
    }

    /// A duplicate of the socket an active listener bound at `address` accepts on for
    /// `worker` (the parent's side of a hot restart).
    pub fn listen_socket(&self, address: SocketAddr, worker: usize) -> Option<TcpListener> {
        let entry = self
            .active
            .values()
            .chain(self.warming.values())
            .find(|e| e.bound == address && !e.sockets.is_empty())?;
        let socket = if entry.config.reuse_port {
            entry.sockets.get(worker)?
        } else {
            // One socket shared by every worker: asked for once.
            if worker > 0 {
                return None;
            }
            entry.sockets.first()?
        };
        socket.try_clone().ok()
    }

    /// Binds a listener's sockets, first taking what the socket source has.
    fn bind_or_take(
        &self,
        config: &ListenerConfig,
    ) -> std::io::Result<(SocketAddr, Vec<TcpListener>)> {
        let count = if config.reuse_port {
            self.tls.concurrency().max(1)
        } else {
            1
        };
        let mut taken = Vec::new();
        if let Some(source) = self
            .socket_source
            .as_ref()
            .filter(|_| config.address.port() != 0)
        {
            while taken.len() < count {
                match source(config.address, taken.len())? {
                    Some(s) => taken.push(s),
                    None => break,
                }
            }
        }
        if taken.len() == count {
            return Ok((config.address, taken));
        }
        // What the parent lacks (more workers here, or a new address) is bound beside it.
        let (bound, rest) = bind_listener_sockets(
            config.address,
            config.reuse_port,
            config.backlog,
            config.ipv4_compat,
            count - taken.len(),
            &config.socket_options,
        )?;
        taken.extend(rest);
        Ok((bound, taken))
    }

    /// Declares whether an ADS stream is configured (`dynamic_resources.ads_config`).
    pub fn set_ads_configured(&mut self, configured: bool) {
        self.ads_configured = configured;
    }

    /// Adds or updates a listener. It warms (the previous version, if any, keeps serving)
    /// until every RDS route configuration it needs satisfies `routes_ready` and every
    /// server secret it names has arrived. Its inline
    /// routes may name only clusters `known_cluster` knows (unless they opt out with
    /// `validate_clusters: false`).
    pub fn add_or_update(
        &mut self,
        proto: &Listener,
        version_info: &str,
        added_via_api: bool,
        routes_ready: &dyn Fn(&str) -> bool,
        known_cluster: &dyn Fn(&str) -> bool,
    ) -> Result<ListenerChange, ConfigError> {
        let current = self
            .warming
            .get(&proto.name)
            .or_else(|| self.active.get(&proto.name));
        if current.is_some_and(|e| *e.config.proto == *proto) {
            return Ok(ListenerChange::Unchanged);
        }
        if self
            .active
            .get(&proto.name)
            .is_some_and(|e| !e.added_via_api && added_via_api)
        {
            return Err(ConfigError::new(
                "name",
                format!(
                    "listener '{}': cannot update a static listener through LDS",
                    proto.name
                ),
            ));
        }
        let config = Arc::new(compile_listener(
            proto,
            &self.store,
            self.active.get(&proto.name).map(|e| &*e.config),
        )?);
        config.check_rds_sources(self.ads_configured)?;
        if let Some(e) = config.unknown_cluster(known_cluster) {
            return Err(e);
        }
        // Two listeners may not share an address (port 0 is always distinct).
        if config.address.port() != 0 {
            let clash = self
                .active
                .iter()
                .chain(self.warming.iter())
                .find(|(n, e)| **n != proto.name && e.config.address == config.address);
            if let Some((other, _)) = clash {
                return Err(ConfigError::new(
                    "address",
                    format!(
                        "error adding listener '{}': listener '{other}' has duplicate address '{}' as existing listener",
                        proto.name, config.address
                    ),
                ));
            }
        }
        // Reuse the sockets of the current generation when the address is unchanged, so
        // no connection waiting in the accept queue is lost.
        let same_address = self
            .warming
            .get(&proto.name)
            .or_else(|| self.active.get(&proto.name))
            .filter(|e| {
                e.config.address == config.address
                    && e.config.ipv4_compat == config.ipv4_compat
                    && e.config.bind_to_port == config.bind_to_port
                    // New options, new sockets (bound beside the old ones).
                    && e.config.socket_options == config.socket_options
            });
        let (bound, sockets) = match same_address {
            // Reached only through another listener's hand-off: nothing to bind.
            _ if !config.bind_to_port => (config.address, Vec::new()),
            Some(e) => (
                e.bound,
                dup_all(&e.sockets).map_err(|err| {
                    ConfigError::new(
                        "address",
                        format!("cannot duplicate listener socket: {err}"),
                    )
                })?,
            ),
            None => match self.bind_or_take(&config) {
                Ok(b) => b,
                Err(e) => {
                    self.stats.listener_create_failure.inc(MAIN_THREAD);
                    return Err(ConfigError::new(
                        "address",
                        format!(
                            "cannot bind '{}' for listener '{}': {e}",
                            config.address, proto.name
                        ),
                    ));
                }
            },
        };
        self.stats.listener_create_success.inc(MAIN_THREAD);
        let change = match self.active.get(&proto.name) {
            None => ListenerChange::Added,
            Some(p)
                if p.config.address == config.address && p.config.differs_only_in_chains(proto) =>
            {
                ListenerChange::UpdatedInPlace
            }
            Some(_) => ListenerChange::Updated,
        };
        match change {
            ListenerChange::Added => self.stats.listener_added.inc(MAIN_THREAD),
            ListenerChange::UpdatedInPlace => {
                self.stats.listener_modified.inc(MAIN_THREAD);
                self.stats.listener_in_place_updated.inc(MAIN_THREAD);
            }
            _ => self.stats.listener_modified.inc(MAIN_THREAD),
        }
        let entry = ListenerEntry {
            config,
            bound,
            version_info: version_info.to_string(),
            last_updated: SystemTime::now(),
            added_via_api,
            sockets,
        };
        self.warming.remove(&proto.name);
        if entry.config.dependencies_ready(routes_ready) {
            self.activate(entry);
        } else {
            tracing::debug!(listener = %proto.name, "listener warming until its routes and secrets arrive");
            self.warming.insert(proto.name.clone(), entry);
        }
        self.update_gauges();
        Ok(change)
    }

    /// Activates warming listeners whose routes (and secrets) are now ready.
    pub fn on_routes_ready(&mut self, routes_ready: &dyn Fn(&str) -> bool) {
        let ready: Vec<String> = self
            .warming
            .iter()
            .filter(|(_, e)| e.config.dependencies_ready(routes_ready))
            .map(|(n, _)| n.clone())
            .collect();
        for name in ready {
            if let Some(entry) = self.warming.remove(&name) {
                self.activate(entry);
            }
        }
        self.update_gauges();
    }

    /// Makes `entry` the serving generation, replacing (and draining) the previous one.
    fn activate(&mut self, entry: ListenerEntry) {
        let name = entry.config.name.clone();
        let previous = self.active.remove(&name);
        if self.workers_started {
            let same_address = previous.as_ref().is_some_and(|p| {
                p.config.address == entry.config.address
                    && p.config.bind_to_port == entry.config.bind_to_port
            });
            // Chains whose tag survives in the new config keep their connections.
            let drained: Vec<u64> = previous
                .as_ref()
                .map(|p| {
                    p.config
                        .chains()
                        .map(|c| c.tag)
                        .filter(|t| !entry.config.chains().any(|c| c.tag == *t))
                        .collect()
                })
                .unwrap_or_default();
            if same_address {
                self.post_config(&entry);
            } else {
                drop(previous);
                self.post_stop(&name);
                self.post_start(&entry);
            }
            self.drain_chains(drained);
        }
        self.active.insert(name, entry);
    }

    /// RDS route configurations needed by active and warming listeners.
    pub fn rds_needs(&self) -> Vec<RdsNeed> {
        let mut needs: Vec<RdsNeed> = self
            .active
            .values()
            .chain(self.warming.values())
            .flat_map(|e| e.config.rds_needs())
            .collect();
        RdsNeed::sort_dedup(&mut needs);
        needs
    }

    /// Warming listeners by name.
    pub fn warming(&self) -> &BTreeMap<String, ListenerEntry> {
        &self.warming
    }

    /// Removes a listener: its sockets close at once, its connections drain.
    pub fn remove(&mut self, name: &str) -> bool {
        let warming = self.warming.remove(name).is_some();
        let Some(entry) = self.active.remove(name) else {
            if warming {
                self.stats.listener_removed.inc(MAIN_THREAD);
                self.update_gauges();
            }
            return warming;
        };
        let tags: Vec<u64> = entry.config.chains().map(|c| c.tag).collect();
        // Drop the main thread's copies first so the kernel stops routing to these
        // sockets as soon as the workers close theirs.
        drop(entry);
        if self.workers_started {
            self.post_stop(name);
            self.drain_chains(tags);
        }
        self.stats.listener_removed.inc(MAIN_THREAD);
        self.update_gauges();
        true
    }

    /// Starts accepting on every worker (after init).
    pub fn start_workers(&mut self) {
        if self.workers_started {
            return;
        }
        self.workers_started = true;
        for entry in self.active.values() {
            self.post_start(entry);
        }
    }

    /// Stops accepting on every listener (`/drain_listeners`, shutdown); `graceful` also
    /// drains their connections. MODIFY_ONLY listeners are skipped unless `all`, and all
    /// but `INBOUND` ones with `inbound_only`.
    pub fn stop_listeners(&mut self, all: bool, graceful: bool, inbound_only: bool) {
        let inbound = courier_proto::envoy::config::core::v3::TrafficDirection::Inbound as i32;
        let names: Vec<String> = self
            .active
            .iter()
            .filter(|(_, e)| all || !e.config.modify_only)
            .filter(|(_, e)| !inbound_only || e.config.proto.traffic_direction == inbound)
            .map(|(n, _)| n.clone())
            .collect();
        for name in names {
            if let Some(entry) = self.active.get_mut(&name) {
                entry.sockets.clear();
                let tags: Vec<u64> = entry.config.chains().map(|c| c.tag).collect();
                self.post_stop(&name);
                if graceful {
                    self.drain_chains(tags);
                }
            }
        }
    }

    /// A hot restart's parent hands its listeners over: every listener stops accepting
    /// (the child holds the same sockets, so nothing queued is lost), and, with
    /// `drain_now` (`--drain-strategy immediate`), every connection is told to drain at
    /// once; otherwise responses drain-close as the worker's drain decision says (gradual).
    /// Connections are not closed at the end of the drain time: as Envoy's, they live until
    /// the child terminates this process at `--parent-shutdown-time-s`.
    pub fn hand_over(&mut self, drain_now: bool) {
        let names: Vec<String> = self.active.keys().cloned().collect();
        let mut tags = Vec::new();
        for name in names {
            if let Some(entry) = self.active.get_mut(&name) {
                entry.sockets.clear();
                tags.extend(entry.config.chains().map(|c| c.tag));
                self.post_stop(&name);
            }
        }
        if drain_now && !tags.is_empty() {
            self.tls.run_on_all_workers(
                Arc::new(move |ctx: &mut Ctx| {
                    for tag in tags.iter() {
                        for id in ctx.local.connections_of(*tag) {
                            ctx.drain_handler(id);
                        }
                    }
                }),
                Box::new(|| {}),
            );
        }
    }

    /// Listeners by name.
    pub fn listeners(&self) -> &BTreeMap<String, ListenerEntry> {
        &self.active
    }

    fn post_start(&self, entry: &ListenerEntry) {
        let name = entry.config.name.clone();
        if !entry.config.bind_to_port {
            let config = entry.config.clone();
            self.tls.run_on_all_workers(
                Arc::new(move |ctx: &mut Ctx| {
                    ctx.local.listeners.insert(
                        name.clone(),
                        WorkerListener {
                            handler: None,
                            config: config.clone(),
                        },
                    );
                }),
                Box::new(|| {}),
            );
            return;
        }
        for worker in 0..self.tls.concurrency() {
            let socket = match entry.sockets.get(worker).or(entry.sockets.first()) {
                Some(s) => match s.try_clone() {
                    Ok(s) => s,
                    Err(e) => {
                        tracing::error!(listener = %name, error = %e, "cannot duplicate listener socket");
                        continue;
                    }
                },
                None => continue,
            };
            let config = entry.config.clone();
            let name = name.clone();
            self.tls.post_to(
                worker,
                Box::new(move |ctx: &mut Ctx| {
                    let started = ctx.insert_handler(|ctx, id| {
                        ActiveTcpListener::start(ctx, id, name.clone(), socket)
                    });
                    match started {
                        Ok(handler) => {
                            ctx.local.listeners.insert(
                                name,
                                WorkerListener {
                                    handler: Some(handler),
                                    config,
                                },
                            );
                        }
                        Err(e) => {
                            tracing::error!(listener = %name, error = %e, "worker cannot register listener")
                        }
                    }
                }),
            );
        }
    }

    fn post_config(&self, entry: &ListenerEntry) {
        let name = entry.config.name.clone();
        let config = entry.config.clone();
        self.tls.run_on_all_workers(
            Arc::new(move |ctx: &mut Ctx| {
                if let Some(l) = ctx.local.listeners.get_mut(&name) {
                    l.config = config.clone();
                }
            }),
            Box::new(|| {}),
        );
    }

    fn post_stop(&self, name: &str) {
        let name = name.to_string();
        self.tls.run_on_all_workers(
            Arc::new(move |ctx: &mut Ctx| {
                if let Some(handler) = ctx.local.listeners.remove(&name).and_then(|l| l.handler) {
                    ctx.close_handler(handler);
                }
            }),
            Box::new(|| {}),
        );
    }

    /// Drains the connections of `tags` now and closes what is left after the drain time.
    fn drain_chains(&self, tags: Vec<u64>) {
        if tags.is_empty() {
            return;
        }
        let tags = Arc::new(tags);
        let drain = tags.clone();
        self.tls.run_on_all_workers(
            Arc::new(move |ctx: &mut Ctx| {
                for tag in drain.iter() {
                    for id in ctx.local.connections_of(*tag) {
                        ctx.drain_handler(id);
                    }
                }
            }),
            Box::new(|| {}),
        );
        let tls = self.tls.clone();
        let draining = self.draining.clone();
        let gauge = self.stats.total_listeners_draining.clone();
        draining.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        gauge.set(draining.load(std::sync::atomic::Ordering::Relaxed));
        let drain_time = self.drain_time;
        tokio::task::spawn_local(async move {
            tokio::time::sleep(drain_time).await;
            tls.run_on_all_workers_async(move |ctx: &mut Ctx| {
                for tag in tags.iter() {
                    for id in ctx.local.connections_of(*tag) {
                        ctx.close_handler(id);
                    }
                    ctx.local.connections.remove(tag);
                }
            })
            .await;
            // The drained connections' buffers and the old listeners' state were freed on
            // the workers; give those pages back instead of keeping them in the arenas.
            crate::memory::release_free_heap();
            let left = draining.fetch_sub(1, std::sync::atomic::Ordering::Relaxed) - 1;
            gauge.set(left);
        });
    }

    fn update_gauges(&self) {
        self.stats
            .total_listeners_active
            .set(self.active.len() as i64);
        self.stats
            .total_listeners_warming
            .set(self.warming.len() as i64);
    }
}

fn dup_all(sockets: &[TcpListener]) -> std::io::Result<Vec<TcpListener>> {
    sockets.iter().map(TcpListener::try_clone).collect()
}
