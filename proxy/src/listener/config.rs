//! A compiled listener.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use courier_proto::envoy::config::core::v3::config_source::ConfigSourceSpecifier;
use courier_proto::envoy::config::listener::v3::{self as pb, listener::DrainType};

use super::filter_chain_match::{self, ChainMatch, ConnectionFacts};
use super::tls_inspector::TlsInspector;
use crate::config::{self, ConfigError};
use crate::filters::network::{compile_filters, NetworkFilter};
use crate::http::RdsSubscription;
use crate::stats::{Counter, Gauge, Store};
use crate::transport_socket::tls::{ServerContext, SslStats};

/// `listener.<address or stat_prefix>.*` stats.
pub struct ListenerStats {
    /// `downstream_cx_total`.
    pub downstream_cx_total: Arc<Counter>,
    /// `downstream_cx_active`.
    pub downstream_cx_active: Arc<Gauge>,
    /// `downstream_cx_destroy`.
    pub downstream_cx_destroy: Arc<Counter>,
    /// `no_filter_chain_match`.
    pub no_filter_chain_match: Arc<Counter>,
    /// `downstream_cx_accept_error`.
    pub downstream_cx_accept_error: Arc<Counter>,
    /// `downstream_cx_transport_socket_connect_timeout`: TLS handshakes cut at the chain's
    /// `transport_socket_connect_timeout`.
    pub downstream_cx_transport_socket_connect_timeout: Arc<Counter>,
    /// `downstream_pre_cx_timeout`: listener filters (the TLS inspector) timed out.
    pub downstream_pre_cx_timeout: Arc<Counter>,
    /// `downstream_global_cx_overflow`: connections closed at accept, the process being
    /// at its global connection limit.
    pub downstream_global_cx_overflow: Arc<Counter>,
    /// `downstream_cx_overload_reject`: connections closed at accept by the overload
    /// manager's `reject_incoming_connections`.
    pub downstream_cx_overload_reject: Arc<Counter>,
    /// `ssl.*`, when a chain terminates TLS.
    pub ssl: Option<Arc<SslStats>>,
}

impl ListenerStats {
    fn new(store: &Store, prefix: &str, tls: bool) -> Arc<ListenerStats> {
        let c = |s: &str| store.counter(&format!("listener.{prefix}.{s}"));
        Arc::new(ListenerStats {
            downstream_cx_total: c("downstream_cx_total"),
            downstream_cx_active: store.gauge(&format!("listener.{prefix}.downstream_cx_active")),
            downstream_cx_destroy: c("downstream_cx_destroy"),
            no_filter_chain_match: c("no_filter_chain_match"),
            downstream_cx_accept_error: c("downstream_cx_accept_error"),
            downstream_cx_transport_socket_connect_timeout: c(
                "downstream_cx_transport_socket_connect_timeout",
            ),
            downstream_pre_cx_timeout: c("downstream_pre_cx_timeout"),
            downstream_global_cx_overflow: c("downstream_global_cx_overflow"),
            downstream_cx_overload_reject: c("downstream_cx_overload_reject"),
            ssl: tls.then(|| SslStats::new(store, &format!("listener.{prefix}"), true)),
        })
    }
}

/// One filter chain: its match and its terminal filter.
pub struct FilterChain {
    /// A unique id: connections are tracked per chain so that an in-place update drains
    /// only the connections of chains that changed.
    pub tag: u64,
    /// `name` (may be empty).
    pub name: String,
    /// `filter_chain_match`.
    pub matching: ChainMatch,
    /// `transport_socket`: TLS, or the raw socket (`None`).
    pub tls: Option<Arc<ServerContext>>,
    /// `transport_socket_connect_timeout`: how long a TLS handshake may take.
    pub transport_socket_connect_timeout: Option<std::time::Duration>,
    /// The terminal network filter.
    pub filter: NetworkFilter,
    /// The filters before it deciding when a connection is established.
    pub on_new_connection: crate::filters::network::on_new_connection::NewConnectionFilters,
    /// The filters before it deciding on a connection's first bytes.
    pub read_filters: crate::filters::network::rbac::ReadFilters,
    /// The source proto, to tell which chains changed on an in-place update.
    pub proto: pb::FilterChain,
}

/// A compiled listener. Immutable; an update builds a new one.
pub struct ListenerConfig {
    /// Listener name.
    pub name: String,
    /// Bind address (port 0 means "any", resolved at bind).
    pub address: SocketAddr,
    /// `enable_reuse_port` (default true): one socket per worker.
    pub reuse_port: bool,
    /// `tcp_backlog_size`.
    pub backlog: u32,
    /// `socket_address.ipv4_compat`: an IPv6 socket that takes IPv4 connections too.
    pub ipv4_compat: bool,
    /// `per_connection_buffer_limit_bytes` (default 1 MiB).
    pub buffer_limit: usize,
    /// `drain_type`: MODIFY_ONLY listeners are not drained by `/drain_listeners`.
    pub modify_only: bool,
    /// Filter chains in order.
    pub filter_chains: Vec<Arc<FilterChain>>,
    /// `default_filter_chain`.
    pub default_chain: Option<Arc<FilterChain>>,
    /// `filter_chain_matcher`, which replaces the chains' `filter_chain_match`.
    pub chain_matcher: Option<super::filter_chain_matcher::ChainMatcher>,
    /// Whether picking a chain needs the connection's local address (`getsockname`).
    pub match_local: bool,
    /// Whether picking a chain needs the peer's address (`getpeername`).
    pub match_peer: bool,
    /// `listener_filters`: the TLS inspector, if configured.
    pub tls_inspector: Option<TlsInspector>,
    /// `socket_options`, set on its sockets.
    pub socket_options: Vec<super::socket_options::SocketOption>,
    /// The HTTP inspector, when its listener filters have it.
    pub http_inspector: Option<super::http_inspector::HttpInspector>,
    /// The original destination filter (or `use_original_dst`): a redirected
    /// connection's local address is the one it was sent to.
    pub restore_original_dst: bool,
    /// `use_original_dst`: a redirected connection goes to the listener of its original
    /// destination, when there is one.
    pub use_original_dst: bool,
    /// `bind_to_port` (default true): false for a listener reached only by hand-off.
    pub bind_to_port: bool,
    /// The PROXY protocol filter, when configured.
    pub proxy_protocol: Option<super::proxy_protocol::ProxyProtocol>,
    /// `listener_filters_timeout` (default 15 s; `None` when 0, no limit).
    pub listener_filters_timeout: Option<std::time::Duration>,
    /// `continue_on_listener_filters_timeout`.
    pub continue_on_listener_filters_timeout: bool,
    /// `ignore_global_conn_limit`: exempt from the global downstream connection limit.
    pub ignore_global_conn_limit: bool,
    /// Stats.
    pub stats: Arc<ListenerStats>,
    /// `access_log`: an entry for each connection when it ends (`None` when there are
    /// none).
    pub access_logs: Option<crate::access_log::SharedLogs>,
    /// Source proto (config_dump, change detection).
    pub proto: Arc<pb::Listener>,
}

impl ListenerConfig {
    /// The chain for a connection (see [`filter_chain_match`]).
    pub fn select_chain(&self, facts: &ConnectionFacts) -> Option<&Arc<FilterChain>> {
        if let Some(m) = &self.chain_matcher {
            use super::filter_chain_matcher::Picked;
            return match m.pick(facts) {
                Picked::Chain(i) => self.filter_chains.get(i),
                Picked::Unknown => None,
                Picked::NoMatch => self.default_chain.as_ref(),
            };
        }
        filter_chain_match::select(self.filter_chains.iter().map(|c| (&c.matching, c)), facts)
            .or(self.default_chain.as_ref())
    }

    /// A connection's listener filters ran out of `listener_filters_timeout`: counted
    /// (`downstream_pre_cx_timeout`); whether it goes on to its chain as it is
    /// (`continue_on_listener_filters_timeout`) rather than close, as Envoy decides for
    /// every listener filter.
    pub fn filters_timed_out(&self, worker: usize) -> bool {
        self.stats.downstream_pre_cx_timeout.inc(worker);
        self.continue_on_listener_filters_timeout
    }

    /// Every chain, the default one last.
    pub fn chains(&self) -> impl Iterator<Item = &Arc<FilterChain>> {
        self.filter_chains.iter().chain(self.default_chain.iter())
    }

    /// Whether `other` differs from this listener only in its filter chains, so it can be
    /// updated in place (Envoy's `listener_in_place_updated`).
    pub fn differs_only_in_chains(&self, other: &pb::Listener) -> bool {
        let strip = |l: &pb::Listener| {
            let mut l = l.clone();
            l.filter_chains.clear();
            l.default_filter_chain = None;
            l
        };
        strip(&self.proto) == strip(other)
    }

    /// Whether it can serve: its routes satisfy `routes_ready`, its secrets (and the key
    /// sets its JWT filters fetch ahead) are settled.
    pub fn dependencies_ready(&self, routes_ready: &dyn Fn(&str) -> bool) -> bool {
        self.rds_needs().iter().all(|r| routes_ready(r.name())) && self.secrets_settled()
    }

    /// Whether every server secret its TLS contexts and HTTP filters name has arrived (or
    /// its initial fetch timed out), and every key set its JWT filters fetch ahead of
    /// requests had its first fetch: until then the listener warms.
    pub fn secrets_settled(&self) -> bool {
        use crate::transport_socket::tls::sds;
        self.chains()
            .filter_map(|c| c.tls.as_ref())
            .all(|t| t.pending().iter().all(|n| sds::settled(n)))
            && self.chains().all(|c| match &c.filter {
                // HTTP filters that wait for a server's secret (the credential injector, OAuth2).
                NetworkFilter::HttpConnectionManager(h) => {
                    h.filters.iter().all(|f| match &f.filter {
                        crate::filters::http::HttpFilter::CredentialInjector(ci) => {
                            ci.server_secret().is_none_or(sds::settled)
                        }
                        crate::filters::http::HttpFilter::OAuth2(o) => {
                            o.server_secrets().all(sds::settled)
                        }
                        // `remote_jwks.async_fetch` without `fast_listener`: the first fetch.
                        crate::filters::http::HttpFilter::JwtAuthn(j) => j.key_sets_settled(),
                        _ => true,
                    })
                }
                NetworkFilter::TcpProxy(_) => true,
            })
    }

    /// The RDS route configurations the listener needs before it can serve
    /// (`http_connection_manager.rds`), each with the stat prefix of the HCM needing it.
    pub fn rds_needs(&self) -> Vec<RdsNeed> {
        let mut out: Vec<RdsNeed> = self
            .chains()
            .filter_map(|chain| match &chain.filter {
                NetworkFilter::HttpConnectionManager(h) => h.rds().map(|rds| RdsNeed {
                    stat_prefix: h.stat_prefix.clone(),
                    rds: rds.clone(),
                }),
                NetworkFilter::TcpProxy(_) => None,
            })
            .collect();
        RdsNeed::sort_dedup(&mut out);
        out
    }

    /// Rejects an HCM taking its routes from `ads: {}` when the bootstrap configures no ADS
    /// stream (`ads_configured`), as Envoy rejects it.
    pub fn check_rds_sources(&self, ads_configured: bool) -> Result<(), ConfigError> {
        if ads_configured {
            return Ok(());
        }
        let needs = self.rds_needs();
        let Some(need) = needs.iter().find(|n| {
            matches!(
                n.rds.config_source.config_source_specifier,
                Some(ConfigSourceSpecifier::Ads(_))
            )
        }) else {
            return Ok(());
        };
        Err(ConfigError::new(
            "filter_chains.filters.typed_config.rds.config_source",
            format!(
                "ADS must be configured to support an ADS config source: \
                 http_connection_manager '{}' takes route configuration '{}' from ads: {{}}, \
                 but the bootstrap has no dynamic_resources.ads_config",
                need.stat_prefix, need.rds.route_config_name
            ),
        ))
    }

    /// A cluster an HTTP connection manager's inline routes name that `known` does not
    /// (Envoy refuses the listener; see [`crate::http::route::RouteTable::unknown_cluster`]).
    pub fn unknown_cluster(&self, known: &dyn Fn(&str) -> bool) -> Option<ConfigError> {
        let chains = self
            .filter_chains
            .iter()
            .enumerate()
            .map(|(i, c)| (format!("filter_chains[{i}]"), c))
            .chain(
                self.default_chain
                    .iter()
                    .map(|c| ("default_filter_chain".to_string(), c)),
            );
        for (path, chain) in chains {
            let NetworkFilter::HttpConnectionManager(h) = &chain.filter else {
                continue;
            };
            if let Some(e) = h.unknown_cluster(known) {
                // The connection manager is the chain's last (terminal) filter.
                let filter = chain.proto.filters.len().saturating_sub(1);
                return Some(e.at(&format!("{path}.filters[{filter}].typed_config")));
            }
        }
        None
    }

    /// Every cluster the listener's filters may route to.
    pub fn referenced_clusters(&self) -> Vec<String> {
        let mut out = Vec::new();
        for chain in self.chains() {
            out.extend(chain.filter.cluster_names());
        }
        out.sort();
        out.dedup();
        out
    }
}

static NEXT_TAG: AtomicU64 = AtomicU64::new(1);

/// Compiles a Listener proto. Chains identical to one of `previous` are reused as they are
/// (same tag), so their connections are untouched by an in-place update.
pub fn compile_listener(
    proto: &pb::Listener,
    store: &Store,
    previous: Option<&ListenerConfig>,
) -> Result<ListenerConfig, ConfigError> {
    if proto.name.is_empty() {
        return Err(ConfigError::new("name", "listener name must not be empty"));
    }
    let address = config::socket_address(proto.address.as_ref(), "address")?;
    for (field, set) in [
        (
            "additional_addresses",
            !proto.additional_addresses.is_empty(),
        ),
        ("fcds_config", proto.fcds_config.is_some()),
        ("api_listener", proto.api_listener.is_some()),
        ("udp_listener_config", proto.udp_listener_config.is_some()),
        (
            "transparent",
            proto.transparent.as_ref().is_some_and(|v| v.value),
        ),
    ] {
        if set {
            return Err(ConfigError::unsupported(field));
        }
    }
    let listener_filters = super::listener_filters::compile(&proto.listener_filters, store)?;
    // An HCM traces egress on an `OUTBOUND` listener; a chain compiled for the other
    // direction is not reused.
    let egress = proto.traffic_direction
        == courier_proto::envoy::config::core::v3::TrafficDirection::Outbound as i32;
    let previous = previous.filter(|p| p.proto.traffic_direction == proto.traffic_direction);
    let use_original_dst = proto.use_original_dst.as_ref().is_some_and(|v| v.value);
    if proto.filter_chains.is_empty() && proto.default_filter_chain.is_none() {
        return Err(ConfigError::new(
            "filter_chains",
            "no filter chains specified",
        ));
    }
    let filter_chains = proto
        .filter_chains
        .iter()
        .enumerate()
        .map(|(i, c)| {
            compile_chain(c, store, previous, egress)
                .map_err(|e| e.at(&format!("filter_chains[{i}]")))
        })
        .collect::<Result<Vec<_>, _>>()?;
    let chain_matcher = proto
        .filter_chain_matcher
        .as_ref()
        .map(|m| {
            let names: Vec<&str> = filter_chains.iter().map(|c| c.name.as_str()).collect();
            super::filter_chain_matcher::ChainMatcher::compile(m, &names, &address.to_string())
        })
        .transpose()?;
    let mut seen = std::collections::HashSet::new();
    for (i, c) in filter_chains.iter().enumerate() {
        // With a matcher, the chains' own matches are ignored (Envoy checks none).
        if chain_matcher.is_none() && !c.matching.keys().into_iter().all(|k| seen.insert(k)) {
            return Err(ConfigError::new(
                format!("filter_chains[{i}].filter_chain_match"),
                format!(
                    "multiple filter chains with the same matching rules are defined (listener '{}')",
                    proto.name
                ),
            ));
        }
    }
    let default_chain = proto
        .default_filter_chain
        .as_ref()
        .map(|c| {
            compile_chain(c, store, previous, egress).map_err(|e| e.at("default_filter_chain"))
        })
        .transpose()?;
    let prefix = if proto.stat_prefix.is_empty() {
        config::address_stat_name(&address)
    } else {
        proto.stat_prefix.clone()
    };
    let terminates_tls = filter_chains
        .iter()
        .chain(default_chain.iter())
        .any(|c| c.tls.is_some());
    let listener_filters_timeout = match &proto.listener_filters_timeout {
        Some(d) => config::duration(d, "listener_filters_timeout")?,
        None => std::time::Duration::from_secs(15),
    };
    let by_match = chain_matcher.is_none();
    let match_local = !by_match
        || filter_chains
            .iter()
            .any(|c| c.matching.destination_port.is_some() || c.matching.needs_local());
    let match_peer = !by_match || filter_chains.iter().any(|c| c.matching.needs_peer());
    Ok(ListenerConfig {
        name: proto.name.clone(),
        address,
        reuse_port: proto.enable_reuse_port.as_ref().is_none_or(|v| v.value),
        backlog: proto.tcp_backlog_size.as_ref().map_or(1024, |v| v.value),
        ipv4_compat: config::ipv4_compat(proto.address.as_ref()),
        buffer_limit: proto
            .per_connection_buffer_limit_bytes
            .as_ref()
            .map_or(1024 * 1024, |v| v.value as usize),
        modify_only: proto.drain_type == DrainType::ModifyOnly as i32,
        filter_chains,
        default_chain,
        chain_matcher,
        match_local,
        match_peer,
        tls_inspector: listener_filters.tls_inspector,
        http_inspector: listener_filters.http_inspector,
        socket_options: super::socket_options::compile(&proto.socket_options, "socket_options")?,
        // `use_original_dst` adds the original destination filter, as in Envoy.
        restore_original_dst: use_original_dst || listener_filters.original_dst,
        use_original_dst,
        bind_to_port: proto.bind_to_port.as_ref().is_none_or(|v| v.value),
        proxy_protocol: listener_filters.proxy_protocol,
        listener_filters_timeout: (!listener_filters_timeout.is_zero())
            .then_some(listener_filters_timeout),
        continue_on_listener_filters_timeout: proto.continue_on_listener_filters_timeout,
        ignore_global_conn_limit: proto.ignore_global_conn_limit,
        stats: ListenerStats::new(store, &prefix, terminates_tls),
        access_logs: Some(crate::access_log::compile_all(
            &proto.access_log,
            "access_log",
            store,
        )?)
        .filter(|l| !l.is_empty())
        .map(Arc::from),
        proto: Arc::new(proto.clone()),
    })
}

fn compile_chain(
    chain: &pb::FilterChain,
    store: &Store,
    previous: Option<&ListenerConfig>,
    egress: bool,
) -> Result<Arc<FilterChain>, ConfigError> {
    if let Some(same) = previous.and_then(|p| p.chains().find(|c| c.proto == *chain)) {
        return Ok(same.clone());
    }
    #[allow(deprecated)]
    if chain.use_proxy_proto.is_some_and(|b| b.value) {
        // A PROXY protocol header would be read as the first bytes of the stream.
        return Err(ConfigError::unsupported("use_proxy_proto"));
    }
    let matching = ChainMatch::compile(chain.filter_chain_match.as_ref())?;
    let tls = crate::transport_socket::compile_downstream(
        chain.transport_socket.as_ref(),
        "transport_socket",
    )?;
    let filters = compile_filters(&chain.filters, store, egress)?;
    Ok(Arc::new(FilterChain {
        tag: NEXT_TAG.fetch_add(1, Ordering::Relaxed),
        name: chain.name.clone(),
        matching,
        tls,
        transport_socket_connect_timeout: chain
            .transport_socket_connect_timeout
            .as_ref()
            .map(|d| config::duration(d, "transport_socket_connect_timeout"))
            .transpose()?
            .filter(|d| !d.is_zero()),
        filter: filters.terminal,
        on_new_connection: filters.on_new_connection,
        read_filters: filters.read,
        proto: chain.clone(),
    }))
}

/// An RDS route configuration a listener needs, and the connection manager needing it.
#[derive(Clone, Debug, PartialEq)]
pub struct RdsNeed {
    /// The HCM's `stat_prefix` (for `http.<stat_prefix>.rds.<name>.*`).
    pub stat_prefix: String,
    /// What to subscribe to, and where.
    pub rds: RdsSubscription,
}

impl RdsNeed {
    /// The route configuration's name.
    pub fn name(&self) -> &str {
        &self.rds.route_config_name
    }

    /// Sorts by (stat prefix, name) and drops repeats.
    pub fn sort_dedup(needs: &mut Vec<RdsNeed>) {
        needs.sort_by(|a, b| (&a.stat_prefix, a.name()).cmp(&(&b.stat_prefix, b.name())));
        needs.dedup();
    }
}
