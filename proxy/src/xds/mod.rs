//! The xDS client (Envoy's subscription layer) on the main thread.
//!
//! - [`mux`]: one gRPC stream (ADS or per-type, SotW or delta) with the protocol state.
//! - [`apply`]: what a response does to the cluster and listener managers and route tables.
//! - [`path_source`]: `path_config_source`, files watched on disk.
//! - [`transport`]: where a stream connects.
//! - [`rest`]: REST-JSON polling (`api_type: REST`) for a mux instead of a stream.
//! - here: which stream serves which type, keeping EDS/RDS subscriptions in step with the
//!   clusters and listeners that need them, initial-fetch timeouts, and initialisation
//!   (RTDS layers' first resources, then CDS round, then LDS round, then LIVE — as
//!   Envoy's server and init manager).

pub mod apply;
pub mod initial_fetch;
pub mod mux;
pub mod on_demand;
pub mod path_source;
pub mod rest;
pub mod rest_target;
pub mod transport;
pub mod ttl;

use std::collections::{BTreeMap, BTreeSet, HashSet};
use std::rc::Rc;
use std::sync::Arc;
use std::time::Duration;

use courier_proto::envoy::config::bootstrap::v3::Bootstrap;
use courier_proto::envoy::config::core::v3::{
    config_source::ConfigSourceSpecifier, ApiConfigSource, ConfigSource,
};
use courier_proto::{type_url, ResourceType};
use prost::Message;

use crate::config::{self, ConfigError};
use crate::http::route::rds::{RouteProvider, RouteSnapshot};
use crate::http::route::RouteTable;
use crate::server::{Server, ServerState};
pub use crate::stats::subscription::{
    self as subscription_stats, ControlPlaneStats, SubscriptionStats,
};
use crate::stats::{Counter, Gauge, MAIN_THREAD};
use courier_runtime::thread_local::Slot;
use mux::{Mux, Protocol, Rpc};

const DEFAULT_INITIAL_FETCH_TIMEOUT: Duration = Duration::from_secs(15);

/// The CDS and LDS subscriptions' stats (made when the bootstrap configures them: Envoy
/// shows none without), and what a stream failure or a response that does not decode
/// counts.
#[derive(Default)]
pub struct XdsStats {
    /// `cluster_manager.cds.*`.
    pub cds: Option<SubscriptionStats>,
    /// `listener_manager.lds.*`.
    pub lds: Option<SubscriptionStats>,
    /// `cluster_manager.cds.config_reload` (accepted updates that added or changed
    /// clusters) and `config_reload_time_ms`.
    pub cds_config_reload: Option<(Arc<Counter>, Arc<Gauge>)>,
}

impl XdsStats {
    /// The CDS or LDS subscription's stats; EDS, RDS and SDS subscriptions are per
    /// resource (see [`subscriptions_of`]).
    fn wildcard(&self, kind: ResourceType) -> Option<&SubscriptionStats> {
        match kind {
            ResourceType::Cluster => self.cds.as_ref(),
            ResourceType::Listener => self.lds.as_ref(),
            ResourceType::Endpoint
            | ResourceType::Route
            | ResourceType::Secret
            | ResourceType::Runtime => None,
        }
    }

    /// Counts `update_failure` for a config source file that does not parse (Envoy: a file
    /// that parses but holds invalid resources is `update_rejected`, one that does not parse
    /// is `update_failure`).
    pub fn file_failed(&self, kind: ResourceType) {
        if let Some(stats) = self.wildcard(kind) {
            stats.connection_failed();
        }
    }

    /// Counts `update_rejected` for a file whose resources did not decode.
    pub fn file_rejected(&self, kind: ResourceType) {
        if let Some(stats) = self.wildcard(kind) {
            stats.rejected();
        }
    }
}

/// The stats of every subscription to `name` of `kind` (`name` empty for CDS/LDS): one
/// for CDS or LDS, one per cluster using an EDS service name, one per connection manager
/// needing a route configuration, one per RTDS layer subscribed to the runtime `name` (they
/// share Envoy's `runtime.*` scope). SDS counts on its own (`sds.<name>.*`).
pub fn subscriptions_of(server: &Server, kind: ResourceType, name: &str) -> Vec<SubscriptionStats> {
    match kind {
        // Named clusters are on-demand ones: not the CDS subscription's.
        ResourceType::Cluster | ResourceType::Listener if !name.is_empty() => Vec::new(),
        ResourceType::Cluster | ResourceType::Listener => server
            .xds
            .borrow()
            .stats
            .wildcard(kind)
            .cloned()
            .into_iter()
            .collect(),
        ResourceType::Endpoint => server
            .cluster_manager
            .borrow()
            .eds_users(name)
            .filter(|e| e.info.stats.eds)
            .map(|e| e.info.stats.updates.clone())
            .collect(),
        ResourceType::Route => rds_stat_scopes(server, name)
            .iter()
            .map(|scope| SubscriptionStats::new(&server.store, scope))
            .collect(),
        ResourceType::Secret => Vec::new(),
        ResourceType::Runtime => {
            let watchers = server.runtime.rtds_watchers(name);
            if watchers == 0 {
                return Vec::new();
            }
            vec![SubscriptionStats::new(&server.store, RTDS_SCOPE); watchers]
        }
    }
}

/// The scope of every RTDS subscription's stats (and of a stream of its own's
/// `control_plane.*`), as Envoy's `RtdsSubscription` makes them.
const RTDS_SCOPE: &str = "runtime";

/// `http.<stat_prefix>.rds.<name>` of every connection manager needing route config `name`.
fn rds_stat_scopes(server: &Server, name: &str) -> Vec<String> {
    rds_scopes_in(&server.listener_manager.borrow().rds_needs(), name)
}

/// The scopes of route config `name` among connection managers' `needs`.
pub(crate) fn rds_scopes_in(needs: &[crate::listener::RdsNeed], name: &str) -> Vec<String> {
    let mut scopes: Vec<String> = needs
        .iter()
        .filter(|n| n.name() == name)
        .map(|n| format!("http.{}.rds.{name}", n.stat_prefix))
        .collect();
    scopes.sort();
    scopes.dedup();
    scopes
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum InitPhase {
    /// Waiting for the RTDS layers' first resources (or their failure or timeout) before
    /// CDS starts, as Envoy's `onRuntimeReady` starts the secondary clusters.
    Runtime,
    Clusters,
    Listeners,
    Done,
}

/// Where one resource type comes from.
#[derive(Clone)]
enum Source {
    Mux(Rc<Mux>),
    Path,
}

/// The streams of one type's subscriptions that have a stream of their own: by encoded
/// config source, then by resource name.
type OwnStreams = BTreeMap<Vec<u8>, BTreeMap<String, Rc<Mux>>>;

/// The xDS client's state, owned by the server.
pub struct XdsState {
    /// Stats.
    pub stats: XdsStats,
    /// The RDS route tables.
    routes: RouteProvider,
    /// RDS names whose first response arrived or whose initial fetch timed out.
    routes_ready: HashSet<String>,
    /// EDS names whose first response arrived.
    eds_ready: HashSet<String>,
    /// RTDS resource names whose first response arrived, was rejected or timed out.
    rtds_ready: HashSet<String>,
    /// Scopes (`http.<prefix>.rds.<name>`) of the RDS subscriptions started.
    rds_started: HashSet<String>,
    /// `initial_fetch_timeout` deadlines.
    initial_fetch: initial_fetch::InitialFetchTimers,
    /// `path_config_source` files watched, by (type, path).
    watched_paths: HashSet<(ResourceType, String)>,
    cds: Option<Source>,
    lds: Option<Source>,
    /// Streams of non-ADS sources, by config source (serialized), type and resource name
    /// (empty for CDS and LDS): as in Envoy, each subscription has a stream of its own.
    muxes: BTreeMap<ResourceType, OwnStreams>,
    ads: Option<Rc<Mux>>,
    phase: InitPhase,
    cds_initialized: bool,
    lds_initialized: bool,
    cds_timeout: Duration,
    lds_timeout: Duration,
    /// The last rejected update per (type, name): config_dump's `error_state`.
    errors: BTreeMap<(ResourceType, String), serde_json::Value>,
}

impl XdsState {
    /// State publishing RDS tables through `route_slot`.
    pub fn new(route_slot: Slot<RouteSnapshot>) -> XdsState {
        XdsState {
            stats: XdsStats::default(),
            routes: RouteProvider::new(route_slot),
            routes_ready: HashSet::new(),
            eds_ready: HashSet::new(),
            rtds_ready: HashSet::new(),
            rds_started: HashSet::new(),
            initial_fetch: Default::default(),
            watched_paths: HashSet::new(),
            cds: None,
            lds: None,
            muxes: BTreeMap::new(),
            ads: None,
            phase: InitPhase::Clusters,
            cds_initialized: false,
            lds_initialized: false,
            cds_timeout: DEFAULT_INITIAL_FETCH_TIMEOUT,
            lds_timeout: DEFAULT_INITIAL_FETCH_TIMEOUT,
            errors: BTreeMap::new(),
        }
    }

    /// Extra config_dump sections: RDS route tables.
    pub fn dumps(&self) -> Vec<serde_json::Value> {
        let dynamic: Vec<serde_json::Value> = self
            .routes
            .tables()
            .map(|t| {
                let mut route = serde_json::Map::new();
                route.insert("@type".into(), ResourceType::Route.type_url().into());
                if let serde_json::Value::Object(fields) = courier_proto::to_json(&*t.proto) {
                    route.extend(fields);
                }
                serde_json::json!({ "route_config": route })
            })
            .collect();
        vec![serde_json::json!({
            "@type": "type.googleapis.com/envoy.admin.v3.RoutesConfigDump",
            "dynamic_route_configs": dynamic,
        })]
    }

    /// Last accepted CDS version.
    pub fn cds_version(&self) -> Option<String> {
        self.stats
            .cds
            .as_ref()
            .map(SubscriptionStats::version_text)
            .filter(|v| !v.is_empty())
    }

    /// Last accepted LDS version.
    pub fn lds_version(&self) -> Option<String> {
        self.stats
            .lds
            .as_ref()
            .map(SubscriptionStats::version_text)
            .filter(|v| !v.is_empty())
    }

    /// Records a rejected resource (Envoy's `UpdateFailureState`).
    pub fn record_error(
        &mut self,
        kind: ResourceType,
        name: &str,
        version: &str,
        failed: serde_json::Value,
        details: &str,
    ) {
        let mut failed_configuration = serde_json::Map::new();
        failed_configuration.insert("@type".into(), kind.type_url().into());
        if let serde_json::Value::Object(fields) = failed {
            failed_configuration.extend(fields);
        }
        self.errors.insert(
            (kind, name.to_string()),
            serde_json::json!({
                "failed_configuration": failed_configuration,
                "last_update_attempt": crate::admin::timestamp(std::time::SystemTime::now()),
                "details": details,
                "version_info": version,
            }),
        );
    }

    /// Forgets the error of a resource that was accepted since.
    pub fn clear_error(&mut self, kind: ResourceType, name: &str) {
        self.errors.remove(&(kind, name.to_string()));
    }

    /// The last rejected update of a resource, if it has not been accepted since.
    pub fn error_state(&self, kind: ResourceType, name: &str) -> Option<&serde_json::Value> {
        self.errors
            .iter()
            .find(|((t, n), _)| *t == kind && n == name)
            .map(|(_, v)| v)
    }

    /// Names of resources of `kind` with a recorded error.
    pub fn error_names(&self, kind: ResourceType) -> Vec<String> {
        self.errors
            .keys()
            .filter(|(t, _)| *t == kind)
            .map(|(_, n)| n.clone())
            .collect()
    }

    /// Whether listeners needing `name` may stop warming.
    pub fn route_ready(&self, name: &str) -> bool {
        self.routes_ready.contains(name) || self.routes.contains(name)
    }

    fn set_route(&mut self, table: Arc<RouteTable>) {
        self.routes_ready.insert(table.name.clone());
        self.routes.set(table);
    }

    fn remove_route(&mut self, name: &str) {
        self.routes.remove(name);
    }

    fn publish_routes(&self) {
        self.routes.publish();
    }

    fn eds_received(&mut self, name: &str) {
        self.eds_ready.insert(name.to_string());
    }
}

pub use config::validate_config_source;

fn protocol(api: &ApiConfigSource) -> Result<Protocol, ConfigError> {
    Ok(if config::api_type_is_delta(api)? {
        Protocol::Delta
    } else {
        Protocol::Sotw
    })
}

fn initial_fetch_timeout(source: &ConfigSource) -> Duration {
    source
        .initial_fetch_timeout
        .as_ref()
        .and_then(|d| config::duration(d, "initial_fetch_timeout").ok())
        .unwrap_or(DEFAULT_INITIAL_FETCH_TIMEOUT)
}

/// Checks `dynamic_resources` (also used by validate mode).
pub fn validate_bootstrap(bootstrap: &Bootstrap) -> Result<(), ConfigError> {
    let Some(dr) = &bootstrap.dynamic_resources else {
        return validate_rtds_sources(bootstrap);
    };
    if let Some(ads) = &dr.ads_config {
        if config::is_rest(ads) {
            return Err(ConfigError::new(
                "dynamic_resources.ads_config",
                "envoy.config.core.v3.ApiConfigSource type must be of non-aggregated gRPC",
            ));
        }
        protocol(ads).map_err(|e| e.at("dynamic_resources.ads_config"))?;
        transport::grpc_target(ads, bootstrap).map_err(|e| e.at("dynamic_resources.ads_config"))?;
    }
    for (field, source) in [
        ("cds_config", &dr.cds_config),
        ("lds_config", &dr.lds_config),
    ] {
        let Some(source) = source else { continue };
        let path = format!("dynamic_resources.{field}");
        validate_config_source(source).map_err(|e| e.at(&path))?;
        match &source.config_source_specifier {
            Some(ConfigSourceSpecifier::Ads(_)) if dr.ads_config.is_none() => {
                return Err(ConfigError::new(
                    path,
                    "ads: {} needs dynamic_resources.ads_config",
                ));
            }
            Some(ConfigSourceSpecifier::ApiConfigSource(api)) => {
                transport(api, bootstrap)
                    .map_err(|e| e.at(&format!("{path}.api_config_source")))?;
            }
            _ => {}
        }
    }
    validate_rtds_sources(bootstrap)?;
    if !dr.cds_resources_locator.is_empty() || !dr.lds_resources_locator.is_empty() {
        return Err(ConfigError::unsupported(
            "dynamic_resources.*_resources_locator",
        ));
    }
    Ok(())
}

/// The RTDS layers' config sources: `ads` needs `ads_config`, an `api_config_source` a
/// transport (the layers' own checks are the runtime loader's).
fn validate_rtds_sources(bootstrap: &Bootstrap) -> Result<(), ConfigError> {
    use courier_proto::envoy::config::bootstrap::v3::runtime_layer::LayerSpecifier;
    let has_ads = bootstrap
        .dynamic_resources
        .as_ref()
        .is_some_and(|d| d.ads_config.is_some());
    let layers = bootstrap
        .layered_runtime
        .as_ref()
        .map(|r| r.layers.as_slice())
        .unwrap_or_default();
    for (i, layer) in layers.iter().enumerate() {
        let Some(LayerSpecifier::RtdsLayer(rtds)) = &layer.layer_specifier else {
            continue;
        };
        let path = format!("layered_runtime.layers[{i}].rtds_layer.rtds_config");
        match rtds
            .rtds_config
            .as_ref()
            .and_then(|c| c.config_source_specifier.as_ref())
        {
            Some(ConfigSourceSpecifier::Ads(_)) if !has_ads => {
                return Err(ConfigError::new(
                    path,
                    "ads: {} needs dynamic_resources.ads_config",
                ));
            }
            Some(ConfigSourceSpecifier::ApiConfigSource(api)) => {
                transport(api, bootstrap)
                    .map_err(|e| e.at(&format!("{path}.api_config_source")))?;
            }
            _ => {}
        }
    }
    Ok(())
}

fn node(bootstrap: &Bootstrap) -> courier_proto::envoy::config::core::v3::Node {
    bootstrap.node.clone().unwrap_or_default()
}

/// Starts a stream; its `control_plane.*` stats live under `stats_scope` (empty: the root).
fn new_mux(
    server: &Rc<Server>,
    name: &str,
    api: &ApiConfigSource,
    rpc: Rpc,
    stats_scope: &str,
) -> Result<Rc<Mux>, ConfigError> {
    let target = transport(api, &server.bootstrap)?;
    let rest = match &target {
        mux::Transport::Rest(target) => Some(target.clone()),
        mux::Transport::Grpc(_) => None,
    };
    let mux = Mux::new(
        name.to_string(),
        target,
        protocol(api)?,
        rpc,
        node(&server.bootstrap),
        api.set_node_on_first_message_only,
        ControlPlaneStats::new(&server.store, stats_scope),
    );
    match rest {
        Some(target) => mux.start_with(Rc::downgrade(server), move |mux, server| {
            rest::run(mux, target, server)
        }),
        None => mux.start_with(Rc::downgrade(server), Mux::run),
    }
    Ok(mux)
}

/// The transport of an `ApiConfigSource` of `bootstrap`: REST-JSON polls for `api_type:
/// REST`, else a gRPC target.
pub fn transport(
    api: &ApiConfigSource,
    bootstrap: &Bootstrap,
) -> Result<mux::Transport, ConfigError> {
    if config::is_rest(api) {
        rest_target::rest_target(api, bootstrap).map(mux::Transport::Rest)
    } else {
        transport::grpc_target(api, bootstrap).map(mux::Transport::from)
    }
}

/// The scope of the subscription to `name` of `kind` (Envoy's: the CDS/LDS API, the
/// cluster, the connection manager's RDS, the secret).
fn subscription_scope(server: &Server, kind: ResourceType, name: &str) -> String {
    match kind {
        ResourceType::Cluster if name == on_demand::ON_DEMAND_STREAM => {
            "cluster_manager.odcds".into()
        }
        ResourceType::Cluster => "cluster_manager.cds".into(),
        ResourceType::Listener => "listener_manager.lds".into(),
        ResourceType::Endpoint => server
            .cluster_manager
            .borrow()
            .eds_users(name)
            .map(|e| format!("cluster.{}", e.info.name))
            .next()
            .unwrap_or_else(|| format!("cluster.{name}")),
        ResourceType::Route => rds_stat_scopes(server, name)
            .into_iter()
            .next()
            .unwrap_or_else(|| format!("rds.{name}")),
        ResourceType::Secret => format!("sds.{name}"),
        ResourceType::Runtime => RTDS_SCOPE.into(),
    }
}

/// Where the subscription to `name` of `kind` (empty for CDS/LDS) comes from: the ADS
/// stream, a stream of its own (started on first use), or a file.
fn source_for(
    server: &Rc<Server>,
    source: &ConfigSource,
    kind: ResourceType,
    name: &str,
) -> Result<Source, ConfigError> {
    match &source.config_source_specifier {
        Some(ConfigSourceSpecifier::Ads(_)) => server
            .xds
            .borrow()
            .ads
            .clone()
            .map(Source::Mux)
            .ok_or_else(|| ConfigError::new("ads", "needs dynamic_resources.ads_config")),
        Some(ConfigSourceSpecifier::ApiConfigSource(api)) => {
            api_mux(server, api, &api.encode_to_vec(), kind, name).map(Source::Mux)
        }
        #[allow(deprecated)]
        Some(ConfigSourceSpecifier::PathConfigSource(_) | ConfigSourceSpecifier::Path(_)) => {
            Ok(Source::Path)
        }
        _ => Err(ConfigError::unsupported("config source")),
    }
}

/// The stream of its own of the subscription to `name` of `kind` from `api` (`encoded`),
/// started on first use.
fn api_mux(
    server: &Rc<Server>,
    api: &ApiConfigSource,
    encoded: &[u8],
    kind: ResourceType,
    name: &str,
) -> Result<Rc<Mux>, ConfigError> {
    let held = server
        .xds
        .borrow()
        .muxes
        .get(&kind)
        .and_then(|by_source| by_source.get(encoded))
        .and_then(|by_name| by_name.get(name).cloned());
    if let Some(m) = held {
        return Ok(m);
    }
    let label = match name {
        "" => type_url::message_name(kind.type_url()).to_string(),
        _ => format!("{} {name}", type_url::message_name(kind.type_url())),
    };
    let scope = subscription_scope(server, kind, name);
    let mux = new_mux(server, &label, api, Rpc::Single(kind), &scope)?;
    server
        .xds
        .borrow_mut()
        .muxes
        .entry(kind)
        .or_default()
        .entry(encoded.to_vec())
        .or_default()
        .insert(name.to_string(), mux.clone());
    Ok(mux)
}

/// A CDS or LDS file must exist when the server starts: Envoy's start-up error (`--mode
/// validate` does not check, as Envoy's does not).
fn check_source_files(bootstrap: &Bootstrap) -> anyhow::Result<()> {
    let Some(dr) = &bootstrap.dynamic_resources else {
        return Ok(());
    };
    for (field, source) in [
        ("cds_config", &dr.cds_config),
        ("lds_config", &dr.lds_config),
    ] {
        if let Some(path) = source.as_ref().and_then(path_of) {
            if !std::path::Path::new(&path).exists() {
                anyhow::bail!(
                    "dynamic_resources.{field}: paths must refer to an existing path in the system: '{path}' does not exist"
                );
            }
        }
    }
    Ok(())
}

fn path_of(source: &ConfigSource) -> Option<String> {
    #[allow(deprecated)]
    match &source.config_source_specifier {
        Some(ConfigSourceSpecifier::PathConfigSource(p)) => Some(p.path.clone()),
        Some(ConfigSourceSpecifier::Path(p)) => Some(p.clone()),
        _ => None,
    }
}

/// Starts the subscriptions and drives initialisation; returns once the server is LIVE
/// (at once without `dynamic_resources`).
pub async fn start(server: &Rc<Server>) -> anyhow::Result<()> {
    if let Some(requests) = crate::upstream::on_demand::install() {
        on_demand::spawn(Rc::downgrade(server), requests);
    }
    validate_bootstrap(&server.bootstrap).map_err(|e| anyhow::anyhow!("{e}"))?;
    check_source_files(&server.bootstrap)?;
    initial_fetch::spawn(Rc::downgrade(server), on_initial_fetch_timeout);
    // Without dynamic_resources initialisation still waits for static listeners' RDS.
    let dr = server
        .bootstrap
        .dynamic_resources
        .clone()
        .unwrap_or_default();
    if let Some(ads) = &dr.ads_config {
        let mux = new_mux(server, "ads", ads, Rpc::Ads, "")
            .map_err(|e| anyhow::anyhow!("{}", e.at("dynamic_resources.ads_config")))?;
        server.xds.borrow_mut().ads = Some(mux);
    }
    if let Some(cds) = &dr.cds_config {
        let source = source_for(server, cds, ResourceType::Cluster, "")
            .map_err(|e| anyhow::anyhow!("{}", e.at("dynamic_resources.cds_config")))?;
        let mut xds = server.xds.borrow_mut();
        let stats = SubscriptionStats::new(&server.store, "cluster_manager.cds");
        stats.started();
        xds.stats.cds = Some(stats);
        xds.stats.cds_config_reload = Some((
            server.store.counter("cluster_manager.cds.config_reload"),
            server
                .store
                .gauge("cluster_manager.cds.config_reload_time_ms"),
        ));
        xds.cds = Some(source);
        xds.cds_timeout = initial_fetch_timeout(cds);
    } else {
        server.xds.borrow_mut().cds_initialized = true;
    }
    if let Some(lds) = &dr.lds_config {
        let source = source_for(server, lds, ResourceType::Listener, "")
            .map_err(|e| anyhow::anyhow!("{}", e.at("dynamic_resources.lds_config")))?;
        let mut xds = server.xds.borrow_mut();
        xds.stats.lds = Some(SubscriptionStats::new(
            &server.store,
            "listener_manager.lds",
        ));
        xds.lds = Some(source);
        xds.lds_timeout = initial_fetch_timeout(lds);
    } else {
        server.xds.borrow_mut().lds_initialized = true;
    }
    // RTDS first, then CDS; LDS starts once the cluster manager is initialised (Envoy's
    // order).
    check_rtds_node(server)?;
    if !start_rtds(server) {
        start_cds(server);
    }
    after_update(server);
    // Wait for init to finish (admin answers INITIALIZING meanwhile).
    let mut changes = server.xds_changes.subscribe();
    while server.xds.borrow().phase != InitPhase::Done {
        if changes.changed().await.is_err() {
            break;
        }
    }
    Ok(())
}

/// Starts `initial_fetch_timeout` for one subscription (`name` empty for CDS/LDS).
fn start_initial_fetch_timer(
    server: &Rc<Server>,
    kind: ResourceType,
    name: String,
    timeout: Duration,
) {
    server
        .xds
        .borrow_mut()
        .initial_fetch
        .start((kind, name), timeout);
}

fn on_initial_fetch_timeout(server: &Rc<Server>, kind: ResourceType, name: &str) {
    let mut fired = false;
    {
        let mut xds = server.xds.borrow_mut();
        match kind {
            ResourceType::Cluster if !xds.cds_initialized => {
                xds.cds_initialized = true;
                if let Some(stats) = &xds.stats.cds {
                    stats.fetch_timed_out();
                }
                fired = true;
            }
            ResourceType::Listener if !xds.lds_initialized => {
                xds.lds_initialized = true;
                if let Some(stats) = &xds.stats.lds {
                    stats.fetch_timed_out();
                }
                fired = true;
            }
            ResourceType::Route if !xds.route_ready(name) => {
                xds.routes_ready.insert(name.to_string());
                fired = true;
                // RDS subscriptions' stats come from the listener manager, not `xds`.
                for stats in subscriptions_of(server, kind, name) {
                    stats.fetch_timed_out();
                }
            }
            ResourceType::Runtime if !xds.rtds_ready.contains(name) => {
                xds.rtds_ready.insert(name.to_string());
                fired = true;
                for stats in subscriptions_of(server, kind, name) {
                    stats.fetch_timed_out();
                }
            }
            // Already initialised or ready; EDS and SDS are handled below.
            _ => {}
        }
    }
    if kind == ResourceType::Secret && !crate::transport_socket::tls::sds::settled(name) {
        crate::transport_socket::tls::sds::give_up(name);
        server
            .store
            .counter(&format!("sds.{name}.init_fetch_timeout"))
            .inc(MAIN_THREAD);
        on_secrets_settled(server);
        fired = true;
    }
    if kind == ResourceType::Endpoint && !server.xds.borrow().eds_ready.contains(name) {
        for stats in subscriptions_of(server, kind, name) {
            stats.fetch_timed_out();
        }
        server
            .cluster_manager
            .borrow_mut()
            .finish_warming_service(name);
        server.cluster_manager.borrow_mut().publish();
        fired = true;
    }
    if kind == ResourceType::Route && fired {
        let xds = server.xds.borrow();
        let ready = |n: &str| xds.route_ready(n);
        server.listener_manager.borrow_mut().on_routes_ready(&ready);
    }
    if fired {
        tracing::warn!(
            type_url = kind.type_url(),
            name,
            "initial fetch timed out; continuing without it"
        );
        after_update(server);
    }
}

/// Marks the first response of CDS/LDS.
pub(crate) fn mark_initialized(server: &Server, kind: ResourceType) {
    let mut xds = server.xds.borrow_mut();
    match kind {
        ResourceType::Cluster => xds.cds_initialized = true,
        ResourceType::Listener => xds.lds_initialized = true,
        ResourceType::Endpoint
        | ResourceType::Route
        | ResourceType::Secret
        | ResourceType::Runtime => {}
    }
}

/// The RTDS resources `names` had their first response (accepted or rejected): their
/// layers no longer hold initialisation back. The caller runs [`after_update`].
pub(crate) fn rtds_settled(server: &Server, names: &[String]) {
    let mut xds = server.xds.borrow_mut();
    for name in names {
        xds.rtds_ready.insert(name.clone());
    }
}

/// An RTDS subscription needs a named node, as every Envoy subscription does
/// (`checkLocalInfo`): Envoy refuses to start without one.
fn check_rtds_node(server: &Server) -> anyhow::Result<()> {
    if server.runtime.rtds_layers().is_empty() {
        return Ok(());
    }
    let node = node(&server.bootstrap);
    if node.id.is_empty() || node.cluster.is_empty() {
        anyhow::bail!(
            "{}: node 'id' and 'cluster' are required. Set it either in 'node' config or via --service-node and --service-cluster options.",
            type_url::RUNTIME
        );
    }
    Ok(())
}

/// A file of RTDS layers that could not be taken: each layer reading `path` counts the
/// rejection and stops holding initialisation back.
fn rtds_file_rejected(server: &Rc<Server>, path: &str) {
    let names: Vec<String> = server
        .runtime
        .rtds_layers()
        .iter()
        .filter(|l| path_of(&l.config_source).as_deref() == Some(path))
        .map(|l| l.resource.clone())
        .collect();
    for _ in &names {
        SubscriptionStats::new(&server.store, RTDS_SCOPE).rejected();
    }
    rtds_settled(server, &names);
    after_update(server);
}

/// Subscribes every RTDS layer's resource (grouped by config source); returns whether
/// there is any. Each subscription counts its start in `runtime.update_attempt`.
fn start_rtds(server: &Rc<Server>) -> bool {
    let mut groups: Vec<(ConfigSource, Vec<String>)> = Vec::new();
    for layer in server.runtime.rtds_layers() {
        SubscriptionStats::new(&server.store, RTDS_SCOPE).started();
        match groups.iter_mut().find(|(s, _)| *s == layer.config_source) {
            Some((_, names)) => names.push(layer.resource.clone()),
            None => groups.push((layer.config_source.clone(), vec![layer.resource.clone()])),
        }
    }
    if groups.is_empty() {
        return false;
    }
    server.xds.borrow_mut().phase = InitPhase::Runtime;
    subscribe_named(server, ResourceType::Runtime, &groups, &|xds, n| {
        xds.rtds_ready.contains(n)
    });
    true
}

/// Subscribes to every resource of `kind` (CDS, LDS) from `source`: its stream, or the
/// file its `dynamic_resources` config names. False when there is no source.
fn subscribe_wildcard(server: &Rc<Server>, source: Option<Source>, kind: ResourceType) -> bool {
    match source {
        Some(Source::Mux(m)) => m.subscribe_wildcard(kind),
        Some(Source::Path) => {
            let config = server.bootstrap.dynamic_resources.as_ref().and_then(|d| {
                if kind == ResourceType::Cluster {
                    d.cds_config.as_ref()
                } else {
                    d.lds_config.as_ref()
                }
            });
            if let Some(path) = config.and_then(path_of) {
                path_source::watch(server, path, kind);
            }
        }
        None => return false,
    }
    true
}

/// Starts CDS (its subscription and initial-fetch timer) once the runtime is ready.
fn start_cds(server: &Rc<Server>) {
    let cds = server.xds.borrow().cds.clone();
    if !subscribe_wildcard(server, cds, ResourceType::Cluster) {
        return;
    }
    let timeout = server.xds.borrow().cds_timeout;
    start_initial_fetch_timer(server, ResourceType::Cluster, String::new(), timeout);
}

/// After any change: follow EDS/RDS needs, pause/resume CDS, advance initialisation.
pub fn after_update(server: &Rc<Server>) {
    sync_eds(server);
    sync_rds(server);
    sync_sds(server);
    sync_jwks_fetches(server);
    // Envoy holds its CDS ACK while clusters warm, so a server sees one ACK per update.
    let warming = !server.cluster_manager.borrow().warming().is_empty();
    let cds = server.xds.borrow().cds.clone();
    if let Some(Source::Mux(m)) = cds {
        if warming {
            m.pause(ResourceType::Cluster);
        } else {
            m.resume(ResourceType::Cluster);
        }
    }
    advance_init(server);
    server.xds_changes.send_modify(|v| *v += 1);
}

fn sync_eds(server: &Rc<Server>) {
    // Group by the encoded config source: thousands of clusters share a handful of them.
    let groups: Vec<(ConfigSource, Vec<String>)> = {
        let cm = server.cluster_manager.borrow();
        let mut by_source: BTreeMap<&[u8], (ConfigSource, Vec<String>)> = BTreeMap::new();
        for e in cm.active().values().chain(cm.warming().values()) {
            if let crate::upstream::DiscoveryType::Eds {
                service_name,
                eds_config,
            } = &e.info.discovery
            {
                by_source
                    .entry(eds_config.bytes())
                    .or_insert_with(|| (eds_config.decode(), Vec::new()))
                    .1
                    .push(service_name.clone());
            }
        }
        by_source.into_values().collect()
    };
    let all = subscribe_named(server, ResourceType::Endpoint, &groups, &|xds, n| {
        xds.eds_ready.contains(n)
    });
    server.cluster_manager.borrow_mut().retain_assignments(&all);
    server
        .xds
        .borrow_mut()
        .eds_ready
        .retain(|n| all.contains(n));
}

fn sync_rds(server: &Rc<Server>) {
    let mut groups: Vec<(ConfigSource, Vec<String>)> = Vec::new();
    let needs = server.listener_manager.borrow().rds_needs();
    start_rds_subscriptions(server, &needs);
    for need in needs {
        let rds = need.rds;
        match groups.iter_mut().find(|(s, _)| *s == rds.config_source) {
            Some((_, names)) => names.push(rds.route_config_name),
            None => groups.push((rds.config_source, vec![rds.route_config_name])),
        }
    }
    let names = subscribe_named(server, ResourceType::Route, &groups, &|xds, n| {
        xds.route_ready(n)
    });
    let mut xds = server.xds.borrow_mut();
    let dropped = xds.routes.retain(|n| names.contains(n));
    xds.routes_ready.retain(|n| names.contains(n));
    if dropped {
        xds.publish_routes();
    }
}

/// Counts the start of each RDS subscription that is new (Envoy creates its stats, the
/// RDS-only ones included, and counts an attempt); forgets those no longer needed.
fn start_rds_subscriptions(server: &Server, needs: &[crate::listener::RdsNeed]) {
    let scopes: HashSet<String> = needs
        .iter()
        .map(|n| format!("http.{}.rds.{}", n.stat_prefix, n.name()))
        .collect();
    let mut xds = server.xds.borrow_mut();
    for scope in &scopes {
        if xds.rds_started.insert(scope.clone()) {
            SubscriptionStats::new(&server.store, scope).started();
            server.store.counter(&format!("{scope}.config_reload"));
            server.store.counter(&format!("{scope}.update_empty"));
            server
                .store
                .gauge(&format!("{scope}.config_reload_time_ms"));
        }
    }
    xds.rds_started.retain(|s| scopes.contains(s));
}

/// Subscribes to the server secrets that live TLS contexts name.
fn sync_sds(server: &Rc<Server>) {
    use crate::transport_socket::tls::sds;
    let groups = sds::server_needs();
    let names = subscribe_named(server, ResourceType::Secret, &groups, &|_, n| {
        sds::settled(n)
    });
    sds::retain_received(&names);
}

/// Starts fetching the key sets JWT filters want fetched ahead of requests, once the
/// cluster manager is initialised (the fetches need their clusters); a set's first
/// fetch over, listeners waiting on it may serve.
fn sync_jwks_fetches(server: &Rc<Server>) {
    if matches!(
        server.xds.borrow().phase,
        InitPhase::Listeners | InitPhase::Done
    ) {
        crate::server::jwks_fetch::sync(server, |server| {
            on_secrets_settled(server);
            after_update(server);
        });
    }
}

/// Listeners and clusters whose secrets have all arrived (or timed out) stop warming.
pub(crate) fn on_secrets_settled(server: &Server) {
    {
        let xds = server.xds.borrow();
        let ready = |n: &str| xds.route_ready(n);
        server.listener_manager.borrow_mut().on_routes_ready(&ready);
    }
    let mut cm = server.cluster_manager.borrow_mut();
    cm.on_secrets_settled();
    cm.publish();
}

/// Keeps the named subscriptions of `kind` (EDS or RDS) in step with what clusters
/// and listeners need, as Envoy's subscriptions follow the resources holding them:
/// `groups` are the needed names by config source. Every mux serving the type gets its
/// whole name set (an empty one unsubscribes), file sources are watched, and names not yet
/// received get an initial-fetch timer. Returns every needed name.
fn subscribe_named(
    server: &Rc<Server>,
    kind: ResourceType,
    groups: &[(ConfigSource, Vec<String>)],
    received: &dyn Fn(&XdsState, &str) -> bool,
) -> HashSet<String> {
    let mut per_mux: Vec<(Rc<Mux>, BTreeSet<String>)> = Vec::new();
    let mut all = HashSet::new();
    for (source, names) in groups {
        let timeout = initial_fetch_timeout(source);
        {
            let mut xds = server.xds.borrow_mut();
            for name in names {
                all.insert(name.clone());
                if !received(&xds, name) {
                    xds.initial_fetch.start((kind, name.clone()), timeout);
                }
            }
        }
        // Encoded once for the group: thousands of subscriptions share a source.
        let api = match &source.config_source_specifier {
            Some(ConfigSourceSpecifier::ApiConfigSource(api)) => Some((api, api.encode_to_vec())),
            _ => None,
        };
        for name in names {
            let found = match &api {
                // A stream of its own, told its name below.
                Some((api, encoded)) => match api_mux(server, api, encoded, kind, name) {
                    Ok(_) => continue,
                    Err(e) => Err(e),
                },
                None => source_for(server, source, kind, name),
            };
            match found {
                Ok(Source::Mux(m)) => match per_mux.iter_mut().find(|(x, _)| Rc::ptr_eq(x, &m)) {
                    Some((_, set)) => {
                        set.insert(name.clone());
                    }
                    None => per_mux.push((m, BTreeSet::from([name.clone()]))),
                },
                Ok(Source::Path) => {
                    if let Some(path) = path_of(source) {
                        path_source::watch(server, path, kind);
                    }
                }
                Err(e) => {
                    tracing::warn!(type_url = kind.type_url(), name, error = %e, "cannot subscribe")
                }
            }
        }
    }
    // A subscription's own stream ends with it; the ADS stream gets its whole name set
    // (an empty one unsubscribes).
    let gone: Vec<Rc<Mux>> = {
        let mut xds = server.xds.borrow_mut();
        let mut gone = Vec::new();
        if let Some(by_source) = xds.muxes.get_mut(&kind) {
            for by_name in by_source.values_mut() {
                by_name.retain(|name, m| {
                    let keep = all.contains(name);
                    if !keep {
                        gone.push(m.clone());
                    }
                    keep
                });
            }
            by_source.retain(|_, by_name| !by_name.is_empty());
        }
        gone
    };
    for m in gone {
        m.stop();
    }
    let own: Vec<(String, Rc<Mux>)> = server
        .xds
        .borrow()
        .muxes
        .get(&kind)
        .into_iter()
        .flat_map(|by_source| by_source.values())
        .flat_map(|by_name| by_name.iter().map(|(n, m)| (n.clone(), m.clone())))
        .collect();
    for (name, m) in own {
        m.subscribe_one(kind, &name);
    }
    let ads = server.xds.borrow().ads.clone();
    if let Some(m) = ads {
        let names = per_mux
            .into_iter()
            .find(|(x, _)| Rc::ptr_eq(x, &m))
            .map(|(_, n)| n)
            .unwrap_or_default();
        m.set_names(kind, names);
    }
    // Received names need no timer: forgetting them keeps only pending ones in memory.
    let mut xds = server.xds.borrow_mut();
    let mut timers = std::mem::take(&mut xds.initial_fetch);
    timers.retain(kind, |n| all.contains(n) && !received(&xds, n));
    xds.initial_fetch = timers;
    drop(xds);
    all
}

fn advance_init(server: &Rc<Server>) {
    if server.xds.borrow().phase == InitPhase::Runtime {
        let done = {
            let xds = server.xds.borrow();
            server
                .runtime
                .rtds_layers()
                .iter()
                .all(|l| xds.rtds_ready.contains(&l.resource))
        };
        if !done {
            return;
        }
        tracing::info!("RTDS has finished initialization");
        server.xds.borrow_mut().phase = InitPhase::Clusters;
        start_cds(server);
    }
    let phase = server.xds.borrow().phase;
    if phase == InitPhase::Clusters {
        let done = server.xds.borrow().cds_initialized
            && server.cluster_manager.borrow().warming().is_empty();
        if !done {
            return;
        }
        server.xds.borrow_mut().phase = InitPhase::Listeners;
        let (lds, timeout) = {
            let xds = server.xds.borrow();
            if let Some(stats) = &xds.stats.lds {
                stats.started();
            }
            (xds.lds.clone(), xds.lds_timeout)
        };
        if subscribe_wildcard(server, lds, ResourceType::Listener) {
            start_initial_fetch_timer(server, ResourceType::Listener, String::new(), timeout);
        }
    }
    if server.xds.borrow().phase == InitPhase::Listeners {
        sync_jwks_fetches(server);
        let done = server.xds.borrow().lds_initialized
            && server.listener_manager.borrow().warming().is_empty();
        if !done {
            return;
        }
        server.xds.borrow_mut().phase = InitPhase::Done;
        server.listener_manager.borrow_mut().start_workers();
        server.on_workers_started();
        if server.state() != ServerState::Draining {
            server.set_state(ServerState::Live);
        }
        tracing::info!("all dependencies initialized; starting workers");
    }
}
