//! The xDS client (Envoy's subscription layer) on the main thread.
//!
//! - [`mux`]: one gRPC stream (ADS or per-type, SotW or delta) with the protocol state.
//! - [`apply`]: what a response does to the cluster and listener managers and route tables.
//! - [`path_source`]: `path_config_source`, files watched on disk.
//! - [`transport`]: where a stream connects.
//! - here: which stream serves which type, keeping EDS/RDS subscriptions in step with the
//!   clusters and listeners that need them, initial-fetch timeouts, and initialisation
//!   (CDS round, then LDS round, then LIVE — as Envoy's init manager).

pub mod apply;
pub mod initial_fetch;
pub mod mux;
pub mod path_source;
pub mod transport;

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
use crate::stats::{Counter, Gauge, Store, MAIN_THREAD};
use courier_runtime::thread_local::Slot;
use mux::{Mux, Protocol, Rpc};

const DEFAULT_INITIAL_FETCH_TIMEOUT: Duration = Duration::from_secs(15);

/// `cluster_manager.cds.*` / `listener_manager.lds.*`.
#[derive(Clone)]
pub struct SubscriptionStats {
    /// `update_attempt`.
    pub update_attempt: Arc<Counter>,
    /// `update_success`.
    pub update_success: Arc<Counter>,
    /// `update_rejected`.
    pub update_rejected: Arc<Counter>,
    /// `update_failure` (stream failures).
    pub update_failure: Arc<Counter>,
    /// `update_empty`.
    pub update_empty: Arc<Counter>,
    /// `init_fetch_timeout`.
    pub init_fetch_timeout: Arc<Counter>,
    /// `version`: a hash of the last accepted version_info, as Envoy's.
    pub version: Arc<Gauge>,
    /// `version_text` is not a number; kept for config_dump.
    pub version_text: std::rc::Rc<std::cell::RefCell<String>>,
}

impl SubscriptionStats {
    fn new(store: &Store, prefix: &str) -> SubscriptionStats {
        let c = |s: &str| store.counter(&format!("{prefix}.{s}"));
        SubscriptionStats {
            update_attempt: c("update_attempt"),
            update_success: c("update_success"),
            update_rejected: c("update_rejected"),
            update_failure: c("update_failure"),
            update_empty: c("update_empty"),
            init_fetch_timeout: c("init_fetch_timeout"),
            version: store.gauge(&format!("{prefix}.version")),
            version_text: Default::default(),
        }
    }

    /// Records an accepted version.
    pub fn set_version(&self, version: &str) {
        use std::hash::{Hash, Hasher};
        let mut h = std::collections::hash_map::DefaultHasher::new();
        version.hash(&mut h);
        self.version.set((h.finish() >> 1) as i64);
        *self.version_text.borrow_mut() = version.to_string();
    }
}

/// Stats of the xDS client.
pub struct XdsStats {
    connected_state: Arc<Gauge>,
    /// CDS.
    pub cds: SubscriptionStats,
    /// LDS.
    pub lds: SubscriptionStats,
}

impl XdsStats {
    /// `control_plane.connected_state`.
    pub fn set_connected(&self, connected: bool) {
        self.connected_state.set(i64::from(connected));
    }

    /// Counts `update_rejected` for a response whose resources did not decode (wrong type
    /// URL, undecodable bytes): Envoy rejects those like any invalid resource.
    pub fn decode_rejected(&self, kind: ResourceType) {
        if let Some(stats) = self.subscription(kind) {
            stats.update_rejected.inc(MAIN_THREAD);
        }
    }

    /// Counts `update_failure` for a config source file that does not parse (Envoy: a file
    /// that parses but holds invalid resources is `update_rejected`, one that does not parse
    /// is `update_failure`).
    pub fn file_failed(&self, kind: ResourceType) {
        if let Some(stats) = self.subscription(kind) {
            stats.update_failure.inc(MAIN_THREAD);
        }
    }

    /// Counts `update_failure` for the types of a stream that failed.
    pub fn stream_failed(&self, types: Vec<ResourceType>) {
        for stats in types.into_iter().filter_map(|kind| self.subscription(kind)) {
            stats.update_failure.inc(MAIN_THREAD);
        }
    }

    /// The subscription stats of `kind`: CDS and LDS have them, EDS, RDS and SDS do not
    /// (EDS counts per cluster, RDS per connection manager).
    fn subscription(&self, kind: ResourceType) -> Option<&SubscriptionStats> {
        match kind {
            ResourceType::Cluster => Some(&self.cds),
            ResourceType::Listener => Some(&self.lds),
            ResourceType::Endpoint | ResourceType::Route | ResourceType::Secret => None,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum InitPhase {
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
    /// `initial_fetch_timeout` deadlines.
    initial_fetch: initial_fetch::InitialFetchTimers,
    /// `path_config_source` files watched, by (type, path).
    watched_paths: HashSet<(ResourceType, String)>,
    cds: Option<Source>,
    lds: Option<Source>,
    /// EDS/RDS muxes by config source (serialized), for non-ADS sources.
    muxes: BTreeMap<(Vec<u8>, ResourceType), Rc<Mux>>,
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
    pub fn new(route_slot: Slot<RouteSnapshot>, store: &Store) -> XdsState {
        XdsState {
            stats: XdsStats {
                connected_state: store.gauge("control_plane.connected_state"),
                cds: SubscriptionStats::new(store, "cluster_manager.cds"),
                lds: SubscriptionStats::new(store, "listener_manager.lds"),
            },
            routes: RouteProvider::new(route_slot),
            routes_ready: HashSet::new(),
            eds_ready: HashSet::new(),
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
        Some(self.stats.cds.version_text.borrow().clone()).filter(|v| !v.is_empty())
    }

    /// Last accepted LDS version.
    pub fn lds_version(&self) -> Option<String> {
        Some(self.stats.lds.version_text.borrow().clone()).filter(|v| !v.is_empty())
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
        return Ok(());
    };
    if let Some(ads) = &dr.ads_config {
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
                transport::grpc_target(api, bootstrap)
                    .map_err(|e| e.at(&format!("{path}.api_config_source")))?;
            }
            _ => {}
        }
    }
    if !dr.cds_resources_locator.is_empty() || !dr.lds_resources_locator.is_empty() {
        return Err(ConfigError::unsupported(
            "dynamic_resources.*_resources_locator",
        ));
    }
    Ok(())
}

fn node(bootstrap: &Bootstrap) -> courier_proto::envoy::config::core::v3::Node {
    bootstrap.node.clone().unwrap_or_default()
}

fn new_mux(
    server: &Rc<Server>,
    name: &str,
    api: &ApiConfigSource,
    rpc: Rpc,
) -> Result<Rc<Mux>, ConfigError> {
    let target = transport::grpc_target(api, &server.bootstrap)?;
    let mux = Mux::new(
        name.to_string(),
        target,
        protocol(api)?,
        rpc,
        node(&server.bootstrap),
        api.set_node_on_first_message_only,
    );
    mux.start(Rc::downgrade(server));
    Ok(mux)
}

fn source_for(
    server: &Rc<Server>,
    source: &ConfigSource,
    kind: ResourceType,
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
            let key = (api.encode_to_vec(), kind);
            if let Some(m) = server.xds.borrow().muxes.get(&key) {
                return Ok(Source::Mux(m.clone()));
            }
            let mux = new_mux(
                server,
                type_url::message_name(kind.type_url()),
                api,
                Rpc::Single(kind),
            )?;
            server.xds.borrow_mut().muxes.insert(key, mux.clone());
            Ok(Source::Mux(mux))
        }
        #[allow(deprecated)]
        Some(ConfigSourceSpecifier::PathConfigSource(_) | ConfigSourceSpecifier::Path(_)) => {
            Ok(Source::Path)
        }
        _ => Err(ConfigError::unsupported("config source")),
    }
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
        let mux = new_mux(server, "ads", ads, Rpc::Ads)
            .map_err(|e| anyhow::anyhow!("{}", e.at("dynamic_resources.ads_config")))?;
        server.xds.borrow_mut().ads = Some(mux);
    }
    if let Some(cds) = &dr.cds_config {
        let source = source_for(server, cds, ResourceType::Cluster)
            .map_err(|e| anyhow::anyhow!("{}", e.at("dynamic_resources.cds_config")))?;
        let mut xds = server.xds.borrow_mut();
        xds.cds = Some(source);
        xds.cds_timeout = initial_fetch_timeout(cds);
    } else {
        server.xds.borrow_mut().cds_initialized = true;
    }
    if let Some(lds) = &dr.lds_config {
        let source = source_for(server, lds, ResourceType::Listener)
            .map_err(|e| anyhow::anyhow!("{}", e.at("dynamic_resources.lds_config")))?;
        let mut xds = server.xds.borrow_mut();
        xds.lds = Some(source);
        xds.lds_timeout = initial_fetch_timeout(lds);
    } else {
        server.xds.borrow_mut().lds_initialized = true;
    }
    // CDS first; LDS starts once the cluster manager is initialised (Envoy's order).
    let cds = server.xds.borrow().cds.clone();
    match cds {
        Some(Source::Mux(m)) => m.subscribe_wildcard(ResourceType::Cluster),
        Some(Source::Path) => {
            if let Some(path) = dr.cds_config.as_ref().and_then(path_of) {
                path_source::watch(server, path, ResourceType::Cluster);
            }
        }
        None => {}
    }
    if server.xds.borrow().cds.is_some() {
        let timeout = server.xds.borrow().cds_timeout;
        start_initial_fetch_timer(server, ResourceType::Cluster, String::new(), timeout);
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
                xds.stats.cds.init_fetch_timeout.inc(MAIN_THREAD);
                fired = true;
            }
            ResourceType::Listener if !xds.lds_initialized => {
                xds.lds_initialized = true;
                xds.stats.lds.init_fetch_timeout.inc(MAIN_THREAD);
                fired = true;
            }
            ResourceType::Route if !xds.route_ready(name) => {
                xds.routes_ready.insert(name.to_string());
                fired = true;
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
        server
            .cluster_manager
            .borrow_mut()
            .finish_warming_service(name);
        server.cluster_manager.borrow_mut().publish();
        server
            .store
            .counter(&format!("cluster.{name}.init_fetch_timeout"))
            .inc(MAIN_THREAD);
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
        ResourceType::Endpoint | ResourceType::Route | ResourceType::Secret => {}
    }
}

/// After any change: follow EDS/RDS needs, pause/resume CDS, advance initialisation.
pub fn after_update(server: &Rc<Server>) {
    sync_eds(server);
    sync_rds(server);
    sync_sds(server);
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
    for need in server.listener_manager.borrow().rds_needs() {
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

/// Subscribes to the server secrets that live TLS contexts name.
fn sync_sds(server: &Rc<Server>) {
    use crate::transport_socket::tls::sds;
    let groups = sds::server_needs();
    let names = subscribe_named(server, ResourceType::Secret, &groups, &|_, n| {
        sds::settled(n)
    });
    sds::retain_received(&names);
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
        match source_for(server, source, kind) {
            Ok(Source::Mux(m)) => match per_mux.iter_mut().find(|(x, _)| Rc::ptr_eq(x, &m)) {
                Some((_, set)) => set.extend(names.iter().cloned()),
                None => per_mux.push((m, names.iter().cloned().collect())),
            },
            Ok(Source::Path) => {
                if let Some(path) = path_of(source) {
                    path_source::watch(server, path, kind);
                }
            }
            Err(e) => {
                tracing::warn!(type_url = kind.type_url(), names = ?names, error = %e, "cannot subscribe")
            }
        }
    }
    let muxes: Vec<Rc<Mux>> = {
        let xds = server.xds.borrow();
        xds.ads
            .iter()
            .cloned()
            .chain(
                xds.muxes
                    .iter()
                    .filter(|((_, t), _)| *t == kind)
                    .map(|(_, m)| m.clone()),
            )
            .collect()
    };
    for m in muxes {
        let names = per_mux
            .iter()
            .find(|(x, _)| Rc::ptr_eq(x, &m))
            .map(|(_, n)| n.clone())
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
            (xds.lds.clone(), xds.lds_timeout)
        };
        match lds {
            Some(Source::Mux(m)) => m.subscribe_wildcard(ResourceType::Listener),
            Some(Source::Path) => {
                if let Some(path) = server
                    .bootstrap
                    .dynamic_resources
                    .as_ref()
                    .and_then(|d| d.lds_config.as_ref())
                    .and_then(path_of)
                {
                    path_source::watch(server, path, ResourceType::Listener);
                }
            }
            None => {}
        }
        if server.xds.borrow().lds.is_some() {
            start_initial_fetch_timer(server, ResourceType::Listener, String::new(), timeout);
        }
    }
    if server.xds.borrow().phase == InitPhase::Listeners {
        let done = server.xds.borrow().lds_initialized
            && server.listener_manager.borrow().warming().is_empty();
        if !done {
            return;
        }
        server.xds.borrow_mut().phase = InitPhase::Done;
        server.listener_manager.borrow_mut().start_workers();
        if server.state() != ServerState::Draining {
            server.set_state(ServerState::Live);
        }
        tracing::info!("all dependencies initialized; starting workers");
    }
}
