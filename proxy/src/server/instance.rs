//! The server instance and its start-up sequence.

use std::cell::{Cell, RefCell};
use std::net::SocketAddr;
use std::rc::Rc;
use std::sync::Arc;
use std::time::{Instant, SystemTime};

use anyhow::Context;
use courier_proto::envoy::config::bootstrap::v3::Bootstrap;
use tokio::sync::Notify;

use super::hot_restart::child::HotRestartingChild;
use super::hot_restart::parent::{HotRestartingParent, ParentHooks};
use super::hot_restart::stats::{StatsExporter, StatsImporter};
use super::hot_restart::{self_restart, HotRestartConfig, HOT_RESTART_VERSION};
use crate::http::route::rds::{self, RouteSnapshot};
use crate::listener::ListenerManager;
use crate::options::{Mode, Options};
use crate::stats::sinks::flush::Flusher;
use crate::stats::sinks::FlushTrigger;
use crate::stats::{Gauge, Store};
use crate::upstream::{ClusterManager, ClusterSnapshot, ThreadLocalClusterManager};
use crate::worker::Worker;
use crate::worker::{MainPoster, ThreadLocal};
use crate::xds::XdsState;

/// Envoy's server states, as `/ready` and `server.state` report them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ServerState {
    /// Serving.
    Live,
    /// Draining (signal, `/healthcheck/fail`, `/drain_listeners?graceful`).
    Draining,
    /// Before initialisation started.
    PreInitializing,
    /// Waiting for the first xDS round.
    Initializing,
}

impl ServerState {
    /// The name `/ready` prints.
    pub fn name(self) -> &'static str {
        match self {
            ServerState::Live => "LIVE",
            ServerState::Draining => "DRAINING",
            ServerState::PreInitializing => "PRE_INITIALIZING",
            ServerState::Initializing => "INITIALIZING",
        }
    }

    fn gauge_value(self) -> i64 {
        match self {
            ServerState::Live => 0,
            ServerState::Draining => 1,
            ServerState::PreInitializing => 2,
            ServerState::Initializing => 3,
        }
    }
}

struct ServerStats {
    live: Arc<Gauge>,
    state: Arc<Gauge>,
    concurrency: Arc<Gauge>,
    uptime: Arc<Gauge>,
    total_connections: Arc<Gauge>,
    memory_physical_size: Arc<Gauge>,
    days_until_first_cert_expiring: Arc<Gauge>,
    /// Always 0: Courier staples no OCSP responses (as Envoy without any).
    _seconds_until_first_ocsp_response_expiring: Arc<Gauge>,
}

/// The main thread's view of the whole proxy.
pub struct Server {
    /// The command line.
    pub options: Options,
    /// The bootstrap as loaded (with `--service-*` overrides).
    pub bootstrap: Bootstrap,
    /// Every stat.
    pub store: Store,
    /// The slot system reaching the workers.
    pub tls: Arc<ThreadLocal>,
    /// Clusters.
    pub cluster_manager: RefCell<ClusterManager>,
    /// Listeners.
    pub listener_manager: RefCell<ListenerManager>,
    /// xDS subscriptions (empty without `dynamic_resources`).
    pub xds: RefCell<XdsState>,
    /// Bumped after every applied xDS update (initialisation waits on it).
    pub xds_changes: tokio::sync::watch::Sender<u64>,
    /// Wall-clock start time.
    pub started_at: SystemTime,
    started: Instant,
    state: Cell<ServerState>,
    health_failed: Cell<bool>,
    stats: ServerStats,
    pub(crate) exit: Notify,
    /// The admin server's bound address.
    pub admin_address: Cell<Option<SocketAddr>>,
    /// The runtime (`layered_runtime`).
    pub runtime: Rc<crate::layered_runtime::Loader>,
    /// The stats flush to `stats_sinks` (set once static resources are loaded).
    stats_flush: RefCell<Option<Flusher>>,
    /// `stats_flush_on_admin`: the admin's `/stats` flushes instead of a timer.
    stats_flush_on_admin: Cell<bool>,
    /// Hot restart's state (`None` fields under `--disable-hot-restart`).
    pub hot_restart: HotRestartState,
}

/// What a self hot restart request did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SelfRestart {
    /// The next generation was started (its pid).
    Started(u32),
    /// This process still has a parent: the restart starts once the parent is terminated.
    Queued,
    /// Sent on to the generation this process started (its pid), which is taking over.
    Forwarded(u32),
}

impl std::fmt::Display for SelfRestart {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            SelfRestart::Started(pid) => write!(f, "next generation started, pid {pid}"),
            SelfRestart::Queued => f.write_str(
                "queued: the next generation starts once the parent generation is terminated",
            ),
            SelfRestart::Forwarded(pid) => {
                write!(f, "forwarded to the generation taking over, pid {pid}")
            }
        }
    }
}

/// What the server keeps of hot restart.
#[derive(Default)]
pub struct HotRestartState {
    /// The configuration (`None`: disabled).
    pub config: Option<HotRestartConfig>,
    /// The parent generation, while this process has one.
    pub child: Option<Rc<HotRestartingChild>>,
    exporter: RefCell<StatsExporter>,
    importer: RefCell<StatsImporter>,
    admin_task: RefCell<Option<tokio::task::JoinHandle<()>>>,
    parent_task: RefCell<Option<tokio::task::JoinHandle<()>>>,
    /// When the first epoch started (Unix seconds).
    original_start: Cell<u64>,
    /// The pid of the next generation this process started, while one lives.
    spawned_child: Cell<Option<u32>>,
    /// Whether this process handed its listeners over (was told to drain).
    handed_over: Cell<bool>,
    /// Whether this process ever started a generation itself.
    self_restarted: Cell<bool>,
    /// The last generation this process started (kept after the hand-over).
    next_generation: Cell<Option<u32>>,
    /// A self restart asked for while this process still had a parent: it starts once the
    /// parent is terminated.
    restart_pending: Cell<bool>,
    /// The signal (SIGTERM/SIGINT) that stopped this process, if one did: a process that
    /// becomes the holder passes it on to the generations it started.
    pub stop_signal: Cell<Option<i32>>,
    workers_started: Notify,
}

impl Server {
    /// The state `/ready` reports: DRAINING while health checks are failed.
    pub fn state(&self) -> ServerState {
        if self.health_failed.get() && self.state.get() == ServerState::Live {
            ServerState::Draining
        } else {
            self.state.get()
        }
    }

    /// Sets the lifecycle state.
    pub fn set_state(&self, state: ServerState) {
        self.state.set(state);
        self.refresh_server_stats();
    }

    /// `/healthcheck/fail` and `/healthcheck/ok`. Resolves once every worker knows: from
    /// then on (until `/healthcheck/ok`) their HTTP connections drain-close, as Envoy's.
    pub async fn set_health_failed(&self, failed: bool) {
        self.health_failed.set(failed);
        self.refresh_server_stats();
        self.tls
            .run_on_all_workers_async(move |_| {
                crate::worker::set_health_failed(failed);
            })
            .await;
    }

    /// Recomputes the `server.*` gauges read by admin.
    pub fn refresh_server_stats(&self) {
        let state = self.state();
        self.stats.state.set(state.gauge_value());
        self.stats.live.set(i64::from(state == ServerState::Live));
        self.stats
            .uptime
            .set(self.started.elapsed().as_secs() as i64);
        self.stats.concurrency.set(self.tls.concurrency() as i64);
        self.stats
            .total_connections
            .set(super::drain::active_downstream_connections(&self.store));
        if let Some(rss) = crate::memory::resident_bytes() {
            self.stats.memory_physical_size.set(rss as i64);
        }
        let days = crate::transport_socket::tls::inventory::days_until_first_cert_expiring(
            SystemTime::now(),
        );
        self.stats
            .days_until_first_cert_expiring
            .set(i64::try_from(days).unwrap_or(i64::MAX));
    }

    /// `/server_info`.
    pub fn server_info(&self) -> serde_json::Value {
        let uptime = format!("{}s", self.started.elapsed().as_secs());
        let now = SystemTime::now()
            .duration_since(SystemTime::UNIX_EPOCH)
            .map_or(0, |d| d.as_secs());
        let all_epochs = format!(
            "{}s",
            now.saturating_sub(self.hot_restart.original_start.get())
        );
        serde_json::json!({
            "version": format!("{}/{}", crate::GIT_REVISION, crate::VERSION),
            "state": self.state().name(),
            "hot_restart_version": self.hot_restart_version(),
            "uptime_current_epoch": uptime,
            "uptime_all_epochs": all_epochs,
            "node": courier_proto::to_json(self.bootstrap.node.as_ref().unwrap_or(&Default::default())),
            "command_line_options": {
                "concurrency": self.tls.concurrency(),
                "config_path": self.options.config_path.as_ref().map(|p| p.display().to_string()).unwrap_or_default(),
                "config_yaml": self.options.config_yaml.clone().unwrap_or_default(),
                "log_level": self.options.log_level,
                "service_cluster": self.options.service_cluster.clone().unwrap_or_default(),
                "service_node": self.options.service_node.clone().unwrap_or_default(),
                "drain_time": format!("{}s", self.options.drain_time_s),
                "drain_strategy": match self.options.drain_strategy {
                    crate::options::DrainStrategy::Gradual => "Gradual",
                    crate::options::DrainStrategy::Immediate => "Immediate",
                },
                "mode": "Serve",
                "restart_epoch": self.options.restart_epoch,
                "base_id": self.hot_restart.config.as_ref().map_or(0, |c| c.base_id).to_string(),
                "use_dynamic_base_id": self.options.use_dynamic_base_id,
                "parent_shutdown_time": format!("{}s", self.options.parent_shutdown_time_s),
                "disable_hot_restart": self.options.disable_hot_restart,
                "socket_path": self.options.socket_path,
                "socket_mode": self.options.socket_mode,
            },
        })
    }

    /// Flushes stats to the sinks now (Envoy's `flushStats`: the `server.*` gauges are
    /// brought up to date first).
    pub fn flush_stats(&self) {
        self.refresh_server_stats();
        if let Some(f) = self.stats_flush.borrow_mut().as_mut() {
            f.flush();
        }
    }

    /// Whether the admin's `/stats` flushes stats (`stats_flush_on_admin`).
    pub fn flushes_on_admin(&self) -> bool {
        self.stats_flush_on_admin.get()
    }

    /// `/drain_listeners`; `inbound_only` (`?inboundonly`): only `INBOUND` listeners.
    pub fn drain_listeners(&self, graceful: bool, inbound_only: bool) {
        if graceful {
            self.set_state(ServerState::Draining);
        }
        self.listener_manager
            .borrow_mut()
            .stop_listeners(false, graceful, inbound_only);
    }

    /// `/hot_restart_version`.
    pub fn hot_restart_version(&self) -> &'static str {
        if self.hot_restart.config.is_some() {
            HOT_RESTART_VERSION
        } else {
            "disabled"
        }
    }

    /// Marks the server initialised (workers accepting): a hot-restarted child now tells
    /// its parent to drain.
    pub fn on_workers_started(&self) {
        self.hot_restart.workers_started.notify_one();
    }

    /// Self hot restart (SIGHUP, `POST /hot_restart`): starts the next generation with
    /// this process's arguments, which takes the sockets over. A request while this process
    /// still has a parent generation waits until the parent is terminated (only two
    /// generations live at once); one to the supervisor's process while its own restart is
    /// under way goes to the generation it started (a holder forwards signals to every
    /// generation, so other draining generations leave it to the newest).
    pub fn self_restart(self: &Rc<Self>) -> Result<SelfRestart, String> {
        let Some(config) = &self.hot_restart.config else {
            return Err("hot restart is disabled (--disable-hot-restart)".into());
        };
        if self.hot_restart.spawned_child.get().is_some() || self.hot_restart.handed_over.get() {
            if let Some(pid) = self.hot_restart.next_generation.get() {
                if !self_restart::spawned() {
                    // SAFETY: kill takes plain integers; the generation blocks SIGHUP
                    // until it handles it.
                    unsafe {
                        libc::kill(pid as i32, libc::SIGHUP);
                    }
                    return Ok(SelfRestart::Forwarded(pid));
                }
            }
            return Err("a hot restart from this process is already under way".into());
        }
        if self
            .hot_restart
            .child
            .as_ref()
            .is_some_and(|c| !c.parent_terminated())
        {
            self.hot_restart.restart_pending.set(true);
            return Ok(SelfRestart::Queued);
        }
        if self.state() == ServerState::Initializing || self.state() == ServerState::PreInitializing
        {
            return Err("not initialised yet".into());
        }
        let pid = self_restart::spawn(config.epoch + 1, config.base_id)
            .map_err(|e| format!("cannot start the next generation: {e}"))?;
        self.hot_restart.spawned_child.set(Some(pid));
        self.hot_restart.next_generation.set(Some(pid));
        self.hot_restart.self_restarted.set(true);
        // A child that fails before taking over leaves this process serving.
        let weak = Rc::downgrade(self);
        tokio::task::spawn_local(async move {
            let mut tick = tokio::time::interval(std::time::Duration::from_millis(100));
            loop {
                tick.tick().await;
                let Some(server) = weak.upgrade() else { return };
                if server.hot_restart.handed_over.get() {
                    return;
                }
                let mut status = 0;
                // SAFETY: waitpid writes the status into a local.
                let r = unsafe { libc::waitpid(pid as i32, &mut status, libc::WNOHANG) };
                if r == pid as i32 || r < 0 {
                    let code = if libc::WIFEXITED(status) {
                        libc::WEXITSTATUS(status)
                    } else {
                        128 + libc::WTERMSIG(status)
                    };
                    tracing::error!(pid, code, "self hot restart: the next generation exited before taking over; still serving");
                    server.hot_restart.spawned_child.set(None);
                    server.hot_restart.next_generation.set(None);
                    return;
                }
            }
        });
        Ok(SelfRestart::Started(pid))
    }

    /// `/quitquitquit`: exit now.
    pub fn request_exit(&self) {
        self.exit.notify_one();
    }

    /// Extra config_dump sections from xDS (routes, endpoints).
    pub fn xds_dumps(&self) -> Vec<serde_json::Value> {
        self.xds.borrow().dumps()
    }

    /// The last accepted CDS version.
    pub fn cds_version(&self) -> Option<String> {
        self.xds.borrow().cds_version()
    }

    /// The last accepted LDS version.
    pub fn lds_version(&self) -> Option<String> {
        self.xds.borrow().lds_version()
    }
}

/// Runs the proxy until it is told to exit; the error is the one-line start-up failure.
pub async fn run(options: Options) -> anyhow::Result<()> {
    // What `--hot-restart-on-config-change` compares the file with later (read before the
    // load, so a change during the start-up counts).
    let loaded_digest = options
        .config_path
        .as_deref()
        .and_then(self_restart::file_digest);
    let bootstrap = crate::bootstrap::load(&options)?;
    // Secrets first: listeners, clusters and the xDS transport name them.
    crate::transport_socket::tls::sds::configure(&bootstrap).map_err(|e| anyhow::anyhow!("{e}"))?;
    if options.mode == Mode::Validate {
        validate(&bootstrap, &options)?;
        return Ok(());
    }
    options.check().map_err(|e| anyhow::anyhow!("{e}"))?;
    let mut hr_config =
        HotRestartConfig::from_options(&options).map_err(|e| anyhow::anyhow!("{e}"))?;
    let hr_child = match &hr_config {
        Some(c) if c.epoch > 0 => Some(Rc::new(
            HotRestartingChild::new(c).map_err(|e| anyhow::anyhow!("{e}"))?,
        )),
        _ => None,
    };
    let hr_parent = match hr_config.as_mut() {
        Some(c) => match HotRestartingParent::bind(c, options.use_dynamic_base_id) {
            Ok(p) => Some(p),
            // Without an explicit base id, a first epoch whose default socket is taken
            // (another proxy on this host) serves without hot restart instead of failing.
            Err(e) if c.epoch == 0 && options.base_id.is_none() && !options.use_dynamic_base_id => {
                tracing::warn!("{e}; hot restart disabled for this process");
                None
            }
            Err(e) => return Err(anyhow::anyhow!("{e}")),
        },
        None => None,
    };
    if hr_parent.is_none() {
        hr_config = None;
    }
    if let Some(c) = &hr_config {
        if c.epoch == 0 {
            super::hot_restart::publish_version(c);
        }
        if let Some(path) = &options.base_id_path {
            std::fs::write(path, c.base_id.to_string())
                .with_context(|| format!("cannot write --base-id-path {}", path.display()))?;
        }
    }
    // The default connection limit is derived from the raised limit (1024 if unreadable).
    let nofile = super::fd_limit::raise().map_or(1024, |l| l.soft);
    let overload = crate::overload::compile(bootstrap.overload_manager.as_ref(), nofile)
        .map_err(|e| anyhow::anyhow!("{e}"))?;
    match overload.connection_limit {
        crate::overload::connection_limit::LimitSource::Monitor(max) => {
            tracing::info!(max, "global downstream connection limit (overload manager)")
        }
        crate::overload::connection_limit::LimitSource::RuntimeOrDefault(default) => {
            tracing::info!(
                default,
                nofile,
                "no global downstream connection limit configured: Courier's default applies \
                 unless the runtime sets overload.global_downstream_max_connections"
            )
        }
    }
    let concurrency = options.concurrency();
    let store = Store::new(concurrency);
    store.set_view(super::stats_config::compile(&bootstrap).map_err(|e| anyhow::anyhow!("{e}"))?);
    crate::transport_socket::tls::sds::set_store(&store);
    let (main_poster, mut main_inbox) = MainPoster::new();
    let tls = ThreadLocal::new(main_poster);
    // Each worker hands every new value to its own manager of it.
    let cluster_slot =
        tls.allocate_slot_applied::<ClusterSnapshot>(ThreadLocalClusterManager::apply);
    let route_slot = tls.allocate_slot_applied::<RouteSnapshot>(rds::apply_on_worker);
    let runtime_slot = tls.allocate_slot::<crate::layered_runtime::Snapshot>();
    let overload_slot = tls.allocate_slot_applied(crate::overload::actions::apply_on_worker);
    let mut workers = Vec::with_capacity(concurrency);
    for id in 0..concurrency {
        workers.push(Worker::spawn(id).context("starting worker threads")?);
    }
    tls.register_workers(workers.iter().map(|w| w.dispatcher.clone()).collect());
    tokio::task::spawn_local(async move {
        while let Some(task) = main_inbox.recv().await {
            task();
        }
    });

    let outlier_log = match bootstrap
        .cluster_manager
        .as_ref()
        .and_then(|c| c.outlier_detection.as_ref())
        .map(|o| o.event_log_path.as_str())
        .filter(|p| !p.is_empty())
    {
        Some(path) => Some(Arc::new(
            crate::upstream::outlier_detection::EventLog::open(path).with_context(|| {
                format!("cannot open cluster_manager.outlier_detection.event_log_path '{path}'")
            })?,
        )),
        None => None,
    };
    let (outlier_events, outlier_decider) = crate::upstream::outlier_detection::Decider::channel();
    let (new_hosts, host_adder) = crate::upstream::original_dst::HostAdder::channel();
    let mut cluster_manager = ClusterManager::new(
        store.clone(),
        cluster_slot,
        crate::upstream::ToMainThread {
            outlier_events,
            new_hosts,
            outlier_log,
        },
    );
    cluster_manager.set_default_bind(
        crate::bootstrap::upstream_bind_config(&bootstrap).map_err(|e| anyhow::anyhow!("{e}"))?,
    );
    let runtime = Rc::new(
        crate::layered_runtime::Loader::new(
            bootstrap.layered_runtime.as_ref(),
            bootstrap.node.as_ref().map_or("", |n| n.cluster.as_str()),
            &store,
            runtime_slot,
        )
        .map_err(|e| anyhow::anyhow!("{e}"))?,
    );
    crate::layered_runtime::Loader::watch_disk_layers(runtime.clone());
    crate::overload::OverloadManager::start(overload, &store, overload_slot, tls.clone());
    let mut listener_manager =
        ListenerManager::new(store.clone(), tls.clone(), options.drain_time());
    listener_manager.set_ads_configured(ads_configured(&bootstrap));
    let server = Rc::new(Server {
        options: options.clone(),
        bootstrap: bootstrap.clone(),
        store: store.clone(),
        tls: tls.clone(),
        cluster_manager: RefCell::new(cluster_manager),
        listener_manager: RefCell::new(listener_manager),
        xds: RefCell::new(XdsState::new(route_slot)),
        xds_changes: tokio::sync::watch::channel(0).0,
        started_at: SystemTime::now(),
        started: Instant::now(),
        state: Cell::new(ServerState::PreInitializing),
        health_failed: Cell::new(false),
        stats: ServerStats {
            live: store.gauge("server.live"),
            state: store.gauge("server.state"),
            concurrency: store.gauge("server.concurrency"),
            uptime: store.gauge("server.uptime"),
            total_connections: store.gauge("server.total_connections"),
            memory_physical_size: store.gauge("server.memory_physical_size"),
            days_until_first_cert_expiring: store.gauge("server.days_until_first_cert_expiring"),
            _seconds_until_first_ocsp_response_expiring: store
                .gauge("server.seconds_until_first_ocsp_response_expiring"),
        },
        exit: Notify::new(),
        admin_address: Cell::new(None),
        runtime,
        stats_flush: RefCell::new(None),
        stats_flush_on_admin: Cell::new(false),
        hot_restart: HotRestartState {
            config: hr_config.clone(),
            child: hr_child.clone(),
            original_start: Cell::new(
                SystemTime::now()
                    .duration_since(SystemTime::UNIX_EPOCH)
                    .map_or(0, |d| d.as_secs()),
            ),
            ..Default::default()
        },
    });
    store
        .gauge("server.hot_restart_epoch")
        .set(i64::from(options.restart_epoch));
    store
        .gauge("server.hot_restart_generation")
        .set(i64::from(options.restart_epoch) + 1);
    if let Some(parent) = hr_parent {
        let hooks: std::rc::Weak<dyn ParentHooks> = Rc::downgrade(&server) as _;
        *server.hot_restart.parent_task.borrow_mut() =
            Some(tokio::task::spawn_local(parent.serve(hooks)));
    }
    if let Some(child) = &hr_child {
        // The first question doubles as the check that a parent answers.
        let stats = child.parent_stats().map_err(|e| anyhow::anyhow!("{e}"))?;
        server
            .hot_restart
            .importer
            .borrow_mut()
            .merge(&store, stats);
        let source = child.clone();
        server
            .listener_manager
            .borrow_mut()
            .set_socket_source(Some(Box::new(move |address, worker| {
                source
                    .duplicate_parent_listen_socket(address, worker)
                    .map_err(std::io::Error::other)
            })));
    }
    server.refresh_server_stats();
    // Reports to collectors (spans, logs, metrics) go to a host of their cluster, as the
    // cluster is now.
    let weak = Rc::downgrade(&server);
    crate::upstream::async_client::set_host_of(Rc::new(move |cluster: &str| {
        let server = weak.upgrade()?;
        let cm = server.cluster_manager.borrow();
        let hosts = &cm.get(cluster)?.info.hosts;
        let pick = hosts
            .eligible
            .first()
            .and_then(|i| hosts.hosts.get(*i))
            .or_else(|| hosts.hosts.first())?;
        Some(pick.address)
    }));
    crate::tracers::start_reporters();
    crate::access_log::grpc_export::start();

    load_static_resources(&server)?;
    start_stats_flush(&server)?;

    if let Some(admin) = bootstrap.admin.as_ref().and_then(|a| a.address.as_ref()) {
        let address = crate::config::socket_address(Some(admin), "admin.address")
            .map_err(|e| anyhow::anyhow!("{e}"))?;
        if let Some(child) = &hr_child {
            let start = child
                .shutdown_parent_admin()
                .map_err(|e| anyhow::anyhow!("{e}"))?;
            if start > 0 {
                server.hot_restart.original_start.set(start);
            }
        }
        let listener = crate::admin::bind(address)
            .await
            .with_context(|| format!("cannot bind admin address {address}"))?;
        server.admin_address.set(listener.local_addr().ok());
        tracing::info!(address = %listener.local_addr().map(|a| a.to_string()).unwrap_or_default(), "admin listening");
        *server.hot_restart.admin_task.borrow_mut() = Some(tokio::task::spawn_local(
            crate::admin::serve(listener, server.clone()),
        ));
    }

    server.set_state(ServerState::Initializing);
    crate::upstream::dns::resolve_all(&server.cluster_manager).await;
    tokio::task::spawn_local(crate::upstream::dns::refresh_loop(server.clone()));
    tokio::task::spawn_local(crate::upstream::health_checker::runner::run(server.clone()));
    tokio::task::spawn_local(crate::upstream::outlier_detection::run(
        server.clone(),
        outlier_decider,
    ));
    tokio::task::spawn_local(crate::upstream::original_dst::run(
        server.clone(),
        host_adder,
    ));
    tokio::task::spawn_local(crate::transport_socket::tls::sds::watch_files());
    server.runtime.rtds_initialized();
    crate::xds::start(&server).await?;
    if options.mode == Mode::InitOnly {
        return Ok(());
    }

    if let Some(child) = hr_child {
        tokio::task::spawn_local(take_over_from_parent(Rc::downgrade(&server), child));
    }
    if let (true, Some(path)) = (
        options.hot_restart_on_config_change,
        options.config_path.clone(),
    ) {
        tokio::task::spawn_local(restart_on_config_change(
            Rc::downgrade(&server),
            path,
            loaded_digest,
        ));
    }

    let exit_code = super::drain::run_until_shutdown(server.clone()).await;
    // The last generation leaves no version behind: no next epoch can find a parent now.
    if !server.hot_restart.handed_over.get() {
        if let Some(c) = &server.hot_restart.config {
            super::hot_restart::unpublish_version(c);
        }
    }
    // A last flush on the way out, as Envoy's `terminate()` does.
    server.flush_stats();
    // The next generations may reuse this epoch's socket name.
    if let Some(task) = server.hot_restart.parent_task.borrow_mut().take() {
        task.abort();
    }
    let hold = server.hot_restart.self_restarted.get() && !self_restart::spawned();
    let stop_signal = server.hot_restart.stop_signal.get();
    drop(server);
    for w in workers {
        w.stop();
    }
    if exit_code != 0 {
        anyhow::bail!("exiting on a second signal");
    }
    if hold {
        if let Some(signal) = stop_signal {
            // Stopped while a generation it started serves: that one stops too.
            for pid in self_restart::descendants() {
                // SAFETY: kill takes plain integers.
                unsafe {
                    libc::kill(pid, signal);
                }
            }
        }
        let code = self_restart::hold().await;
        if code != 0 {
            anyhow::bail!("the last generation exited with code {code}");
        }
    }
    Ok(())
}

/// `--hot-restart-on-config-change`: polls the bootstrap file and, when its bytes differ
/// from what this generation loaded, starts a self hot restart (the next generation loads
/// the new file). A change whose generation fails to start is not retried until the file
/// changes again; a draining generation leaves it to the newest.
async fn restart_on_config_change(
    server: std::rc::Weak<Server>,
    path: std::path::PathBuf,
    loaded: Option<u64>,
) {
    let mut tried = loaded;
    let mut tick = tokio::time::interval(std::time::Duration::from_secs(1));
    loop {
        tick.tick().await;
        let Some(server) = server.upgrade() else {
            return;
        };
        if server.hot_restart.handed_over.get() {
            return;
        }
        let now = self_restart::file_digest(&path);
        if now.is_none() || now == tried || server.hot_restart.spawned_child.get().is_some() {
            continue;
        }
        match server.self_restart() {
            Ok(done) => {
                tracing::info!(path = %path.display(), "the bootstrap changed; hot restart: {done}");
                tried = now;
            }
            // Not initialised yet, or a restart under way: the next tick tries again.
            Err(e) => tracing::debug!("the bootstrap changed; no hot restart yet: {e}"),
        }
    }
}

/// The child's side once it serves: the parent drains, its stats are merged every few
/// seconds, and it is terminated at `--parent-shutdown-time-s`.
async fn take_over_from_parent(server: std::rc::Weak<Server>, child: Rc<HotRestartingChild>) {
    let (notified, shutdown_time) = {
        let Some(s) = server.upgrade() else { return };
        let time = s
            .hot_restart
            .config
            .as_ref()
            .map_or(std::time::Duration::ZERO, |c| c.parent_shutdown_time);
        // Waiting holds no borrow of the server: only the Notify's owner lives on.
        (Rc::clone(&s), time)
    };
    notified.hot_restart.workers_started.notified().await;
    drop(notified);
    if let Err(e) = child.drain_parent_listeners() {
        tracing::error!(error = %e, "hot restart: cannot tell the parent to drain");
    }
    tracing::info!(
        ?shutdown_time,
        "hot restart: serving; the parent drains and is terminated at --parent-shutdown-time-s"
    );
    let deadline = tokio::time::Instant::now() + shutdown_time;
    let merge = |server: &Server| match child.parent_stats() {
        Ok(stats) => server
            .hot_restart
            .importer
            .borrow_mut()
            .merge(&server.store, stats),
        Err(e) => tracing::warn!(error = %e, "hot restart: parent stats"),
    };
    loop {
        let next = (tokio::time::Instant::now() + std::time::Duration::from_secs(5)).min(deadline);
        tokio::time::sleep_until(next).await;
        let Some(s) = server.upgrade() else { return };
        merge(&s);
        if next >= deadline {
            if let Err(e) = child.terminate_parent() {
                tracing::warn!(error = %e, "hot restart: cannot terminate the parent");
            }
            s.hot_restart.importer.borrow_mut().parent_gone(&s.store);
            s.listener_manager.borrow_mut().set_socket_source(None);
            tracing::info!("hot restart: parent terminated");
            if s.hot_restart.restart_pending.take() {
                match s.self_restart() {
                    Ok(done) => tracing::info!("queued self hot restart: {done}"),
                    Err(e) => tracing::warn!("queued self hot restart not started: {e}"),
                }
            }
            return;
        }
    }
}

impl ParentHooks for Server {
    fn listen_socket(&self, address: SocketAddr, worker: usize) -> Option<std::os::fd::OwnedFd> {
        self.listener_manager
            .borrow()
            .listen_socket(address, worker)
            .map(std::os::fd::OwnedFd::from)
    }

    fn shutdown_admin(&self) -> (u64, Option<tokio::task::JoinHandle<()>>) {
        let task = self.hot_restart.admin_task.borrow_mut().take();
        if let Some(task) = &task {
            task.abort();
        }
        (self.hot_restart.original_start.get(), task)
    }

    fn drain_listeners(&self) {
        self.hot_restart.handed_over.set(true);
        self.hot_restart.spawned_child.set(None);
        self.set_state(ServerState::Draining);
        crate::http::conn_manager::connection::HAND_OVER_DRAIN
            .store(true, std::sync::atomic::Ordering::Relaxed);
        let immediate = self.options.drain_strategy == crate::options::DrainStrategy::Immediate;
        if !immediate {
            let drain_time = self.options.drain_time();
            self.tls.run_on_all_workers(
                std::sync::Arc::new(move |_: &mut crate::worker::Ctx| {
                    crate::worker::start_gradual_drain(drain_time)
                }),
                Box::new(|| {}),
            );
        }
        // The child holds duplicates of the sockets: closing ours loses no queued
        // connection; our connections drain over --drain-time-s (gradual) or at once.
        self.listener_manager.borrow_mut().hand_over(immediate);
    }

    fn stats(&self) -> super::hot_restart::message::StatsReply {
        let connections = super::drain::active_downstream_connections(&self.store);
        self.hot_restart
            .exporter
            .borrow_mut()
            .export(&self.store, u64::try_from(connections).unwrap_or(0))
    }

    fn terminate(&self) {
        self.request_exit();
    }
}

/// Builds the stats sinks (a TCP StatsD sink's cluster must exist by now, as Envoy
/// checks) and starts the flush timer, unless the admin triggers flushes.
fn start_stats_flush(server: &Rc<Server>) -> anyhow::Result<()> {
    let config =
        crate::stats::sinks::compile(&server.bootstrap).map_err(|e| anyhow::anyhow!("{e}"))?;
    for (i, sink) in config.sinks.iter().enumerate() {
        if let Some(cluster) = sink.required_cluster() {
            if !server.cluster_manager.borrow().contains(cluster) {
                anyhow::bail!("stats_sinks[{i}]: tcp statsd: unknown cluster '{cluster}'");
            }
        }
    }
    let node = server.bootstrap.node.clone().unwrap_or_default();
    *server.stats_flush.borrow_mut() = Some(Flusher::new(server.store.clone(), config.sinks, node));
    match config.trigger {
        FlushTrigger::OnAdmin => server.stats_flush_on_admin.set(true),
        FlushTrigger::Every(interval) => {
            let weak = Rc::downgrade(server);
            tokio::task::spawn_local(async move {
                loop {
                    // Re-armed after each flush, as Envoy's timer is.
                    tokio::time::sleep(interval).await;
                    let Some(server) = weak.upgrade() else { return };
                    server.flush_stats();
                }
            });
        }
    }
    Ok(())
}

/// Adds bootstrap clusters and listeners; any failure is a start-up error.
fn load_static_resources(server: &Server) -> anyhow::Result<()> {
    let Some(sr) = &server.bootstrap.static_resources else {
        return Ok(());
    };
    let mut cm = server.cluster_manager.borrow_mut();
    let mut pipe_clusters = std::collections::HashSet::new();
    for (i, cluster) in sr.clusters.iter().enumerate() {
        if cm.contains(&cluster.name) || pipe_clusters.contains(&cluster.name) {
            anyhow::bail!(
                "static_resources.clusters[{i}].name: duplicate cluster '{}'",
                cluster.name
            );
        }
        if crate::xds::transport::is_pipe_cluster(cluster) {
            tracing::info!(cluster = %cluster.name, "cluster with pipe endpoints: used only by gRPC config sources");
            pipe_clusters.insert(cluster.name.clone());
            continue;
        }
        cm.add_or_update(cluster, "", false)
            .map_err(|e| anyhow::anyhow!("{}", e.at(&format!("static_resources.clusters[{i}]"))))?;
    }
    cm.publish();
    drop(cm);
    let mut lm = server.listener_manager.borrow_mut();
    for (i, listener) in sr.listeners.iter().enumerate() {
        if lm.listeners().contains_key(&listener.name) || lm.warming().contains_key(&listener.name)
        {
            anyhow::bail!(
                "static_resources.listeners[{i}].name: duplicate listener '{}'",
                listener.name
            );
        }
        // A listener needing RDS warms until its routes arrive (or their initial fetch
        // times out), holding initialisation back as Envoy's init manager does.
        let cm = server.cluster_manager.borrow();
        lm.add_or_update(listener, "", false, &|_| false, &|name| cm.contains(name))
            .map_err(|e| {
                anyhow::anyhow!("{}", e.at(&format!("static_resources.listeners[{i}]")))
            })?;
    }
    Ok(())
}

/// Whether the bootstrap configures an ADS stream.
fn ads_configured(bootstrap: &Bootstrap) -> bool {
    bootstrap
        .dynamic_resources
        .as_ref()
        .is_some_and(|d| d.ads_config.is_some())
}

/// `--mode validate`: compile everything, open no socket.
fn validate(bootstrap: &Bootstrap, options: &Options) -> anyhow::Result<()> {
    let store = Store::new(1);
    if let Some(sr) = &bootstrap.static_resources {
        let mut names = std::collections::HashSet::new();
        for (i, cluster) in sr.clusters.iter().enumerate() {
            if !names.insert(&cluster.name) {
                anyhow::bail!(
                    "static_resources.clusters[{i}].name: duplicate cluster '{}'",
                    cluster.name
                );
            }
            if crate::xds::transport::is_pipe_cluster(cluster) {
                continue;
            }
            crate::upstream::compile_cluster(cluster, &store).map_err(|e| {
                anyhow::anyhow!("{}", e.at(&format!("static_resources.clusters[{i}]")))
            })?;
        }
        let clusters = names;
        let mut names = std::collections::HashSet::new();
        for (i, listener) in sr.listeners.iter().enumerate() {
            if !names.insert(&listener.name) {
                anyhow::bail!(
                    "static_resources.listeners[{i}].name: duplicate listener '{}'",
                    listener.name
                );
            }
            crate::listener::compile_listener(listener, &store, None)
                .and_then(|config| {
                    config.check_rds_sources(ads_configured(bootstrap))?;
                    match config.unknown_cluster(&|name| clusters.iter().any(|c| *c == name)) {
                        Some(e) => Err(e),
                        None => Ok(()),
                    }
                })
                .map_err(|e| {
                    anyhow::anyhow!("{}", e.at(&format!("static_resources.listeners[{i}]")))
                })?;
        }
    }
    crate::xds::validate_bootstrap(bootstrap)?;
    let origin = options
        .config_path
        .as_ref()
        .map_or_else(|| "--config-yaml".to_string(), |p| p.display().to_string());
    println!("configuration '{origin}' OK");
    Ok(())
}

/// DNS resolution, health checking and outlier detection reach the main thread through
/// this narrow view of the server.
impl crate::upstream::UpstreamContext for Server {
    fn cluster_manager(&self) -> &RefCell<ClusterManager> {
        &self.cluster_manager
    }

    fn cluster_changes(&self) -> tokio::sync::watch::Receiver<u64> {
        self.xds_changes.subscribe()
    }

    fn clusters_warmed(self: &Rc<Self>) {
        crate::xds::after_update(self);
    }
}
