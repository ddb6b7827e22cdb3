//! A compiled cluster: everything a worker needs to connect to it, immutable.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use courier_proto::envoy::config::cluster::v3::cluster::DnsLookupFamily;
use courier_proto::envoy::config::cluster::v3::{self as pb, cluster};
use courier_proto::envoy::config::core::v3::{
    ConfigSource, HealthStatus, HttpProtocolOptions as CommonHttpProtocolOptions,
};
use courier_proto::envoy::config::endpoint::v3::{lb_endpoint, ClusterLoadAssignment};
use courier_proto::envoy::extensions::upstreams::http::v3::{
    http_protocol_options, HttpProtocolOptions,
};

use super::health_flags::HealthFlags;
use super::host::{Host, HostHealth, HostStats};
use super::host_set::HostSet;
use super::transport_socket_match::SocketMatches;
use crate::config::{self, ConfigError};
use crate::memory::Encoded;
use crate::protocol::h2_options::H2Options;
use crate::protocol::key_format::KeyFormat;
use crate::protocol::stream_limits::StreamLimits;
use crate::stats::{Counter, Gauge, Store};
use crate::transport_socket::tls::AutoName;

const HTTP_PROTOCOL_OPTIONS: &str = "envoy.extensions.upstreams.http.v3.HttpProtocolOptions";

/// How the cluster learns its hosts.
#[derive(Debug, Clone, PartialEq)]
pub enum DiscoveryType {
    /// `load_assignment` in the cluster itself.
    Static,
    /// Names in `load_assignment` resolved by the main thread, all addresses used.
    StrictDns,
    /// Names resolved by the main thread, first address used.
    LogicalDns,
    /// `ORIGINAL_DST`: each request's original destination is its host
    /// ([`super::original_dst`]).
    OriginalDst,
    /// Endpoints from EDS under this service name.
    Eds {
        /// `eds_cluster_config.service_name`, or the cluster name.
        service_name: String,
        /// `eds_cluster_config.eds_config`: where the assignment comes from.
        eds_config: Encoded<ConfigSource>,
    },
}

pub use super::lb_policy::{Balancing, LbPolicy, LeastRequest, SlowStart};

/// How a DNS cluster resolves: the cluster-level fields (`STRICT_DNS`, `LOGICAL_DNS`) or
/// the `envoy.cluster.dns` extension's `DnsCluster`.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct DnsSettings {
    /// `dns_lookup_family`.
    pub family: DnsLookupFamily,
    /// `dns_refresh_rate` (default 5 s).
    pub refresh: Duration,
    /// `dns_failure_refresh_rate.base_interval`, else the refresh rate.
    pub failure_refresh: Duration,
    /// `dns_failure_refresh_rate.max_interval` (default ten times the base): with a
    /// failure rate, failures back off exponentially, jittered, up to it (Envoy's
    /// `JitteredExponentialBackOffStrategy`); without, every retry waits the refresh rate.
    pub failure_max: Option<Duration>,
}

impl DnsSettings {
    /// The failure back-off's maximum of a `dns_failure_refresh_rate` with these
    /// intervals (`None`: none configured).
    fn failure_max_of(
        base_interval: Option<&courier_proto::google::protobuf::Duration>,
        max_interval: Option<&courier_proto::google::protobuf::Duration>,
        base: Duration,
    ) -> Option<Duration> {
        base_interval?;
        Some(rate(max_interval, base * 10).max(base))
    }
}

/// Envoy's default `dns_refresh_rate`.
const DEFAULT_DNS_REFRESH: Duration = Duration::from_secs(5);

/// A positive duration from the proto, else `default`.
fn rate(d: Option<&courier_proto::google::protobuf::Duration>, default: Duration) -> Duration {
    d.and_then(|d| crate::config::duration(d, "").ok())
        .filter(|d| !d.is_zero())
        .unwrap_or(default)
}

impl DnsSettings {
    /// The cluster-level DNS fields.
    #[allow(deprecated)] // the cluster-level DNS fields are what configs say
    fn of_cluster(proto: &pb::Cluster) -> DnsSettings {
        let refresh = rate(proto.dns_refresh_rate.as_ref(), DEFAULT_DNS_REFRESH);
        DnsSettings {
            family: DnsLookupFamily::try_from(proto.dns_lookup_family)
                .unwrap_or(DnsLookupFamily::Auto),
            refresh,
            failure_refresh: rate(
                proto
                    .dns_failure_refresh_rate
                    .as_ref()
                    .and_then(|f| f.base_interval.as_ref()),
                refresh,
            ),
            failure_max: None,
        }
        .with_failure_max(
            proto
                .dns_failure_refresh_rate
                .as_ref()
                .and_then(|f| f.base_interval.as_ref()),
            proto
                .dns_failure_refresh_rate
                .as_ref()
                .and_then(|f| f.max_interval.as_ref()),
        )
    }

    fn with_failure_max(
        mut self,
        base_interval: Option<&courier_proto::google::protobuf::Duration>,
        max_interval: Option<&courier_proto::google::protobuf::Duration>,
    ) -> DnsSettings {
        self.failure_max =
            DnsSettings::failure_max_of(base_interval, max_interval, self.failure_refresh);
        self
    }
}

/// The cluster type `envoy.cluster.dns` (its config a `DnsCluster`): `STRICT_DNS`, or
/// `LOGICAL_DNS` with `all_addresses_in_single_endpoint`. Settings are read as the
/// cluster-level ones are, and what those refuse is refused here too.
fn dns_cluster(
    ct: &cluster::CustomClusterType,
) -> Result<(DiscoveryType, DnsSettings), ConfigError> {
    use courier_proto::envoy::extensions::clusters::common::dns::v3::DnsLookupFamily as Family;
    use courier_proto::envoy::extensions::clusters::dns::v3::DnsCluster;
    const PATH: &str = "cluster_type.typed_config";
    let c: DnsCluster = match &ct.typed_config {
        None => DnsCluster::default(),
        Some(any) => {
            let any = match courier_proto::unwrap_typed_struct(any) {
                Some(inner) => inner.map_err(|e| ConfigError::new(PATH, e.to_string()))?,
                None => any.clone(),
            };
            courier_proto::unpack_any(&any).map_err(|e| ConfigError::new(PATH, e.to_string()))?
        }
    };
    let refused = [
        ("dns_jitter", c.dns_jitter.is_some()),
        (
            "typed_dns_resolver_config",
            c.typed_dns_resolver_config.is_some(),
        ),
        // Envoy's floor under the refresh rate, which Courier would not apply.
        ("dns_min_refresh_rate", c.dns_min_refresh_rate.is_some()),
    ];
    if let Some((field, _)) = refused.iter().find(|(_, set)| *set) {
        return Err(ConfigError::unsupported(format!("{PATH}.{field}")));
    }
    // Envoy's proto validation: more than 1 ms.
    let over_1ms = |d: &courier_proto::google::protobuf::Duration, field: &str| {
        let path = format!("{PATH}.{field}");
        if config::duration(d, &path)? <= Duration::from_millis(1) {
            return Err(ConfigError::new(path, "value must be greater than 1ms"));
        }
        Ok(())
    };
    if let Some(d) = &c.dns_refresh_rate {
        over_1ms(d, "dns_refresh_rate")?;
    }
    if let Some(d) = c
        .dns_failure_refresh_rate
        .as_ref()
        .and_then(|f| f.base_interval.as_ref())
    {
        over_1ms(d, "dns_failure_refresh_rate.base_interval")?;
    }
    let refresh = rate(c.dns_refresh_rate.as_ref(), DEFAULT_DNS_REFRESH);
    let family = match Family::try_from(c.dns_lookup_family) {
        // Unspecified is Envoy's AUTO.
        Ok(Family::Unspecified | Family::Auto) => DnsLookupFamily::Auto,
        Ok(Family::V4Only) => DnsLookupFamily::V4Only,
        Ok(Family::V6Only) => DnsLookupFamily::V6Only,
        Ok(Family::V4Preferred) => DnsLookupFamily::V4Preferred,
        Ok(Family::All) => DnsLookupFamily::All,
        Err(_) => {
            return Err(ConfigError::new(
                format!("{PATH}.dns_lookup_family"),
                "value must be one of the defined enum values",
            ))
        }
    };
    let settings = DnsSettings {
        family,
        refresh,
        failure_refresh: rate(
            c.dns_failure_refresh_rate
                .as_ref()
                .and_then(|f| f.base_interval.as_ref()),
            refresh,
        ),
        failure_max: None,
    }
    .with_failure_max(
        c.dns_failure_refresh_rate
            .as_ref()
            .and_then(|f| f.base_interval.as_ref()),
        c.dns_failure_refresh_rate
            .as_ref()
            .and_then(|f| f.max_interval.as_ref()),
    );
    let discovery = if c.all_addresses_in_single_endpoint {
        DiscoveryType::LogicalDns
    } else {
        DiscoveryType::StrictDns
    };
    Ok((discovery, settings))
}

/// Circuit-breaker thresholds of the default priority (Envoy's defaults: 1024, 1024, 1024, 3).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Thresholds {
    /// `max_connections`.
    pub max_connections: u32,
    /// `max_pending_requests`.
    pub max_pending_requests: u32,
    /// `max_requests`.
    pub max_requests: u32,
    /// `max_retries`.
    pub max_retries: u32,
    /// `retry_budget`: replaces `max_retries` with a share of the requests active and
    /// pending, `budget_percent` (default 20) but at least `min_retry_concurrency`
    /// (default 3).
    pub retry_budget: Option<RetryBudget>,
    /// `per_host_thresholds.max_connections` (the one per-host threshold Envoy has).
    pub per_host_max_connections: Option<u32>,
}

/// A cluster's `retry_budget`.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct RetryBudget {
    /// `budget_percent`.
    pub percent: f64,
    /// `min_retry_concurrency`.
    pub min_concurrency: u32,
}

impl Thresholds {
    /// How many retries may be in flight with this many requests active and pending.
    pub fn max_retries(&self, active_and_pending: u32) -> u32 {
        match self.retry_budget {
            None => self.max_retries,
            Some(b) => {
                ((b.percent / 100.0 * f64::from(active_and_pending)) as u32).max(b.min_concurrency)
            }
        }
    }
}

impl Default for Thresholds {
    fn default() -> Self {
        Thresholds {
            max_connections: 1024,
            max_pending_requests: 1024,
            max_requests: 1024,
            max_retries: 3,
            retry_budget: None,
            per_host_max_connections: None,
        }
    }
}

/// `cluster.<name>.*` stats.
pub struct ClusterStats {
    /// `upstream_cx_total`.
    pub upstream_cx_total: Arc<Counter>,
    /// `upstream_cx_active`.
    pub upstream_cx_active: Arc<Gauge>,
    /// `upstream_cx_connect_fail`.
    pub upstream_cx_connect_fail: Arc<Counter>,
    /// `upstream_cx_connect_timeout`.
    pub upstream_cx_connect_timeout: Arc<Counter>,
    /// `upstream_cx_rx_bytes_total`.
    pub upstream_cx_rx_bytes_total: Arc<Counter>,
    /// `upstream_cx_tx_bytes_total`.
    pub upstream_cx_tx_bytes_total: Arc<Counter>,
    /// `upstream_cx_destroy`.
    pub upstream_cx_destroy: Arc<Counter>,
    /// `upstream_cx_none_healthy`.
    pub upstream_cx_none_healthy: Arc<Counter>,
    /// `upstream_cx_overflow`.
    pub upstream_cx_overflow: Arc<Counter>,
    /// `lb_healthy_panic`.
    pub lb_healthy_panic: Arc<Counter>,
    /// `membership_total`.
    pub membership_total: Arc<Gauge>,
    /// `membership_healthy`.
    pub membership_healthy: Arc<Gauge>,
    /// The configuration-update stats (`update_attempt`, `update_success`,
    /// `update_failure`, `update_empty`, `update_no_rebuild`, `version`; DNS resolutions
    /// count there), with the EDS subscription's for an EDS cluster, as in Envoy.
    pub updates: crate::stats::subscription::SubscriptionStats,
    /// Whether `updates` are an EDS subscription's.
    pub eds: bool,
}

impl ClusterStats {
    /// Registers (or finds) the stats of cluster `name`, with an EDS subscription's when
    /// `eds`.
    pub fn new(store: &Store, name: &str, eds: bool) -> Arc<ClusterStats> {
        let c = |s: &str| store.counter(&format!("cluster.{name}.{s}"));
        let g = |s: &str| store.gauge(&format!("cluster.{name}.{s}"));
        Arc::new(ClusterStats {
            upstream_cx_total: c("upstream_cx_total"),
            upstream_cx_active: g("upstream_cx_active"),
            upstream_cx_connect_fail: c("upstream_cx_connect_fail"),
            upstream_cx_connect_timeout: c("upstream_cx_connect_timeout"),
            upstream_cx_rx_bytes_total: c("upstream_cx_rx_bytes_total"),
            upstream_cx_tx_bytes_total: c("upstream_cx_tx_bytes_total"),
            upstream_cx_destroy: c("upstream_cx_destroy"),
            upstream_cx_none_healthy: c("upstream_cx_none_healthy"),
            upstream_cx_overflow: c("upstream_cx_overflow"),
            lb_healthy_panic: c("lb_healthy_panic"),
            membership_total: g("membership_total"),
            membership_healthy: g("membership_healthy"),
            updates: crate::stats::subscription::SubscriptionStats::for_cluster(
                store,
                &format!("cluster.{name}"),
                eds,
            ),
            eds,
        })
    }
}

/// One cluster, compiled. A new `ClusterInfo` is built for every change (including an
/// endpoint update, which only swaps `hosts`).
pub struct ClusterInfo {
    /// Cluster name.
    pub name: String,
    /// Host discovery.
    pub discovery: DiscoveryType,
    /// `connect_timeout` (default 5 s).
    pub connect_timeout: Duration,
    /// How a DNS cluster resolves (unused by the other types).
    pub dns: DnsSettings,
    /// Load-balancing policy.
    pub lb_policy: LbPolicy,
    /// Locality-weighted balancing: a locality first, then a host in it by `lb_policy`.
    pub locality_weighted: bool,
    /// Slow start: hosts newer than its window get part of their weight.
    pub slow_start: Option<SlowStart>,
    /// `common_lb_config.healthy_panic_threshold` in percent (default 50).
    pub panic_threshold: f64,
    /// `common_lb_config.update_merge_window` (default 1 s): health changes this close
    /// to the previous update reach the workers together when it ends.
    pub update_merge_window: Duration,
    /// `per_connection_buffer_limit_bytes` (default 1 MiB).
    pub buffer_limit: usize,
    /// Default-priority circuit breakers.
    pub thresholds: Thresholds,
    /// Whether upstream HTTP uses HTTP/2.
    pub http2: bool,
    /// `auto_config`: each connection speaks what TLS's ALPN negotiates (`h2` or
    /// `http/1.1`); `http2` is then false and the pool learns each host's protocol.
    pub http_auto: bool,
    /// `use_downstream_protocol_config`: each request goes upstream in its downstream
    /// protocol (HTTP/1.x as HTTP/1.1, HTTP/2 as HTTP/2), its connections pooled apart;
    /// `http2` and `http_auto` are then false.
    pub http_downstream: bool,
    /// `upstream_http_protocol_options.auto_sni`: each request names its upstream
    /// connection's server.
    pub auto_sni: Option<AutoSni>,
    /// `http2_protocol_options` (typed or legacy): `max_concurrent_streams` is the most
    /// streams an upstream HTTP/2 connection carries, below the server's own limit.
    pub http2_options: H2Options,
    /// `http_protocol_options.enable_trailers`: an HTTP/1.1 upstream's response trailers
    /// are passed on (off by default, as Envoy, whose HTTP/1 codec then drops them).
    pub http1_trailers: bool,
    /// `http_protocol_options.header_key_format`: how request field names are written to
    /// an HTTP/1.1 upstream.
    pub http1_key_format: KeyFormat,
    /// How long an upstream HTTP connection lives and how many requests it carries.
    pub conn_lifetime: ConnLifetime,
    /// What bounds each upstream stream: response head fields and duration.
    pub stream_limits: StreamLimits,
    /// `transport_socket`: TLS to the hosts, or the raw socket (`None`).
    pub tls: Option<crate::transport_socket::tls::ClientTls>,
    /// `upstream_proxy_protocol`: each connection starts with a PROXY protocol header
    /// naming its downstream connection's addresses.
    pub proxy_protocol:
        Option<crate::transport_socket::upstream_proxy_protocol::ProxyProtocolVersion>,
    /// `transport_socket_matches`: other sockets, for the hosts whose metadata asks.
    pub socket_matches: Arc<SocketMatches>,
    /// `health_checks`: the active check and its `health_check.*` stats.
    pub health_check: Option<(
        Arc<super::health_checker::HealthCheck>,
        Arc<super::health_checker::HealthCheckStats>,
    )>,
    /// `upstream_bind_config` (else the bootstrap's): the local address connections to
    /// the hosts are made from.
    pub bind: Option<super::bind_config::BindConfig>,
    /// `outlier_detection`: its settings and the way workers report to it.
    pub outlier: Option<Arc<super::outlier_detection::Detector>>,
    /// `ignore_health_on_host_removal`: a host EDS removes goes at once, even while it
    /// passes its health checks.
    pub ignore_health_on_host_removal: bool,
    /// An `ORIGINAL_DST` cluster's settings.
    pub original_dst: Option<Arc<super::original_dst::OriginalDst>>,
    /// The hosts, replaced as a whole on every membership change.
    pub hosts: Arc<HostSet>,
    /// `cluster.<name>.*`.
    pub stats: Arc<ClusterStats>,
    /// The source proto (for `/config_dump` and change detection), kept encoded.
    pub proto: Arc<Encoded<pb::Cluster>>,
}

impl ClusterInfo {
    /// The TLS a connection to `host` runs: its transport socket match's, else the
    /// cluster's (`None`: the raw socket).
    pub fn host_tls(&self, host: &Host) -> Option<&crate::transport_socket::tls::ClientTls> {
        match host.transport_match {
            Some(i) => self.socket_matches.tls(i),
            None => self.tls.as_ref(),
        }
    }

    /// Every TLS context of the cluster (its own and its matches').
    pub fn tls_contexts(&self) -> impl Iterator<Item = &crate::transport_socket::tls::ClientTls> {
        self.tls
            .iter()
            .chain(self.socket_matches.sockets().flatten())
    }

    /// A copy of this cluster with a new host set (an endpoint update).
    pub fn with_hosts(&self, hosts: Arc<HostSet>) -> ClusterInfo {
        ClusterInfo {
            name: self.name.clone(),
            discovery: self.discovery.clone(),
            connect_timeout: self.connect_timeout,
            dns: self.dns,
            lb_policy: self.lb_policy,
            locality_weighted: self.locality_weighted,
            slow_start: self.slow_start,
            panic_threshold: self.panic_threshold,
            update_merge_window: self.update_merge_window,
            buffer_limit: self.buffer_limit,
            thresholds: self.thresholds,
            http2: self.http2,
            http_auto: self.http_auto,
            http_downstream: self.http_downstream,
            auto_sni: self.auto_sni.clone(),
            http2_options: self.http2_options,
            http1_trailers: self.http1_trailers,
            http1_key_format: self.http1_key_format,
            conn_lifetime: self.conn_lifetime,
            stream_limits: self.stream_limits,
            tls: self.tls.clone(),
            proxy_protocol: self.proxy_protocol,
            socket_matches: self.socket_matches.clone(),
            health_check: self.health_check.clone(),
            outlier: self.outlier.clone(),
            ignore_health_on_host_removal: self.ignore_health_on_host_removal,
            original_dst: self.original_dst.clone(),
            bind: self.bind,
            hosts,
            stats: self.stats.clone(),
            proto: self.proto.clone(),
        }
    }

    /// Refreshes the membership gauges after the host set changed.
    pub fn update_membership_stats(&self) {
        self.stats
            .membership_total
            .set(self.hosts.hosts.len() as i64);
        self.stats
            .membership_healthy
            .set(self.hosts.healthy_count() as i64);
    }
}

/// Where a cluster's workers post what the main thread decides on: outlier detection's
/// consecutive failures, and the hosts an `ORIGINAL_DST` cluster's workers made.
#[derive(Clone)]
pub struct ToMainThread {
    /// Outlier detection's events ([`super::outlier_detection::run`]).
    pub outlier_events: tokio::sync::mpsc::UnboundedSender<super::outlier_detection::OutlierEvent>,
    /// New `ORIGINAL_DST` hosts ([`super::original_dst::run`]).
    pub new_hosts: tokio::sync::mpsc::UnboundedSender<super::original_dst::NewHost>,
    /// `cluster_manager.outlier_detection.event_log_path`, where outlier detectors log.
    pub outlier_log: Option<Arc<super::outlier_detection::EventLog>>,
}

impl ToMainThread {
    /// Channels nobody reads (a cluster compiled only to be checked).
    pub fn nowhere() -> ToMainThread {
        ToMainThread {
            outlier_events: tokio::sync::mpsc::unbounded_channel().0,
            new_hosts: tokio::sync::mpsc::unbounded_channel().0,
            outlier_log: None,
        }
    }
}

/// Compiles a Cluster proto. `hosts` are the initial hosts (for EDS: none until the first
/// assignment arrives; for DNS: none until the first resolution). What its workers would
/// post to the main thread goes nowhere (see [`compile_cluster_reporting`]).
pub fn compile_cluster(proto: &pb::Cluster, store: &Store) -> Result<ClusterInfo, ConfigError> {
    compile_cluster_reporting(proto, store, &ToMainThread::nowhere())
}

/// [`compile_cluster`], its workers posting to the main thread through `to_main`.
pub fn compile_cluster_reporting(
    proto: &pb::Cluster,
    store: &Store,
    to_main: &ToMainThread,
) -> Result<ClusterInfo, ConfigError> {
    if proto.name.is_empty() {
        return Err(ConfigError::new("name", "cluster name must not be empty"));
    }
    reject_unsupported(proto)?;
    let mut dns = DnsSettings::of_cluster(proto);
    let discovery = match &proto.cluster_discovery_type {
        None => DiscoveryType::Static,
        Some(cluster::ClusterDiscoveryType::Type(t)) => {
            match cluster::DiscoveryType::try_from(*t) {
                Ok(cluster::DiscoveryType::Static) => DiscoveryType::Static,
                Ok(cluster::DiscoveryType::StrictDns) => DiscoveryType::StrictDns,
                Ok(cluster::DiscoveryType::LogicalDns) => DiscoveryType::LogicalDns,
                Ok(cluster::DiscoveryType::OriginalDst) => DiscoveryType::OriginalDst,
                Ok(cluster::DiscoveryType::Eds) => {
                    let Some(eds_config) = proto
                        .eds_cluster_config
                        .as_ref()
                        .and_then(|c| c.eds_config.as_ref())
                    else {
                        return Err(ConfigError::new(
                            "eds_cluster_config",
                            "cannot create an EDS cluster without an EDS config",
                        ));
                    };
                    crate::config::validate_config_source(eds_config)
                        .map_err(|e| e.at("eds_cluster_config.eds_config"))?;
                    DiscoveryType::Eds {
                        service_name: proto
                            .eds_cluster_config
                            .as_ref()
                            .map(|c| c.service_name.clone())
                            .filter(|s| !s.is_empty())
                            .unwrap_or_else(|| proto.name.clone()),
                        eds_config: Encoded::new(eds_config),
                    }
                }
                _ => return Err(ConfigError::unsupported("type").at("")),
            }
        }
        Some(cluster::ClusterDiscoveryType::ClusterType(ct)) if ct.name == "envoy.cluster.dns" => {
            let (discovery, settings) = dns_cluster(ct)?;
            dns = settings;
            discovery
        }
        Some(cluster::ClusterDiscoveryType::ClusterType(ct)) => {
            return Err(ConfigError::new(
                "cluster_type.name",
                format!("cluster type '{}' not supported by Courier", ct.name),
            ))
        }
    };
    common_lb_settings_built(proto)?;
    let Balancing {
        policy: lb_policy,
        locality_weighted,
        slow_start,
    } = super::lb_policy::compile(proto, discovery == DiscoveryType::OriginalDst)?;
    let connect_timeout = config::duration_or(
        proto.connect_timeout.as_ref(),
        Duration::from_secs(5),
        "connect_timeout",
    )?;
    if connect_timeout.is_zero() {
        return Err(ConfigError::new(
            "connect_timeout",
            "must be greater than 0s",
        ));
    }
    let panic_threshold = proto
        .common_lb_config
        .as_ref()
        .and_then(|c| c.healthy_panic_threshold.as_ref())
        .map_or(50.0, |p| p.value);
    // `envoy.type.v3.Percent`'s rule (NaN and the infinities fail it too).
    if !(0.0..=100.0).contains(&panic_threshold) {
        return Err(ConfigError::new(
            "common_lb_config.healthy_panic_threshold.value",
            "value must be inside range [0, 100]",
        ));
    }
    let update_merge_window = config::duration_or(
        proto
            .common_lb_config
            .as_ref()
            .and_then(|c| c.update_merge_window.as_ref()),
        Duration::from_secs(1),
        "common_lb_config.update_merge_window",
    )?;
    let buffer_limit = proto
        .per_connection_buffer_limit_bytes
        .as_ref()
        .map_or(1024 * 1024, |v| v.value as usize);
    let thresholds = thresholds(proto);
    let UpstreamHttp {
        http2,
        http_auto,
        http_downstream,
        auto_sni,
        http2_options,
        http1_trailers,
        http1_key_format,
        conn_lifetime,
        stream_limits,
    } = upstream_http(proto)?;
    let stats = ClusterStats::new(
        store,
        &proto.name,
        matches!(discovery, DiscoveryType::Eds { .. }),
    );
    // One `ssl.*` for every TLS socket of the cluster, as Envoy's cluster scope; made
    // only for a cluster with TLS.
    let ssl = std::cell::OnceCell::new();
    let ssl = || {
        ssl.get_or_init(|| {
            crate::transport_socket::tls::SslStats::new(
                store,
                &format!("cluster.{}", proto.name),
                false,
            )
        })
        .clone()
    };
    let (tls, proxy_protocol) = crate::transport_socket::compile_upstream_socket(
        proto.transport_socket.as_ref(),
        "transport_socket",
    )?;
    let tls = tls.map(|context| crate::transport_socket::tls::ClientTls {
        context,
        stats: ssl(),
    });
    let socket_matches = Arc::new(SocketMatches::compile(proto, store, &ssl)?);
    let every_socket_tls = tls.is_some() && socket_matches.sockets().all(|t| t.is_some());
    if http_auto && !every_socket_tls {
        // Envoy's check: ALPN needs a transport socket that negotiates it.
        return Err(ConfigError::new(
            "typed_extension_protocol_options",
            format!(
                "ALPN configured for cluster {} which has a non-ALPN transport socket",
                proto.name
            ),
        ));
    }
    let health_check =
        super::health_checker::HealthCheck::compile_all(&proto.health_checks, &proto.name, http2)?
            .map(|c| {
                (
                    c,
                    super::health_checker::HealthCheckStats::new(store, &proto.name),
                )
            });
    let outlier = match &proto.outlier_detection {
        Some(o) => Some(Arc::new(super::outlier_detection::Detector::new(
            super::outlier_detection::OutlierConfig::compile(o)
                .map_err(|e| e.at("outlier_detection"))?,
            store,
            &proto.name,
            to_main.outlier_events.clone(),
            to_main.outlier_log.clone(),
        ))),
        None => None,
    };
    let original_dst =
        match discovery {
            DiscoveryType::OriginalDst => Some(Arc::new(
                super::original_dst::OriginalDst::compile(proto, store, &to_main.new_hosts)?,
            )),
            _ => None,
        };
    let hosts = match (&discovery, &proto.load_assignment) {
        (DiscoveryType::Static, Some(cla)) => build_host_set(
            cla,
            store,
            None,
            HostSetParams {
                panic_threshold,
                matches: &socket_matches,
                health_checked: health_check.is_some(),
                keep_healthy_removed: false,
            },
        )
        .map_err(|e| e.at("load_assignment"))?,
        (DiscoveryType::StrictDns | DiscoveryType::LogicalDns, Some(cla)) => {
            // Validate the names now; resolution happens on the main thread.
            dns_targets(cla, &SocketMatches::default()).map_err(|e| e.at("load_assignment"))?;
            Arc::new(HostSet::new(Vec::new(), panic_threshold))
        }
        (DiscoveryType::StrictDns | DiscoveryType::LogicalDns, None) => {
            return Err(ConfigError::new(
                "load_assignment",
                "a DNS cluster needs load_assignment",
            ))
        }
        _ => Arc::new(HostSet::new(Vec::new(), panic_threshold)),
    };
    let info = ClusterInfo {
        name: proto.name.clone(),
        discovery,
        connect_timeout,
        dns,
        lb_policy,
        locality_weighted,
        slow_start,
        panic_threshold,
        update_merge_window,
        buffer_limit,
        thresholds,
        http2,
        http_auto,
        http_downstream,
        auto_sni,
        http2_options,
        http1_trailers,
        http1_key_format,
        conn_lifetime,
        stream_limits,
        tls,
        proxy_protocol,
        socket_matches,
        health_check,
        outlier,
        ignore_health_on_host_removal: proto.ignore_health_on_host_removal,
        original_dst,
        bind: proto
            .upstream_bind_config
            .as_ref()
            .map(|b| super::bind_config::BindConfig::compile(b, "upstream_bind_config"))
            .transpose()?,
        hosts,
        stats,
        proto: Arc::new(Encoded::new(proto)),
    };
    info.update_membership_stats();
    Ok(info)
}

/// Refuses the `common_lb_config` settings Courier does not act on, whatever the policy
/// (each changes which host a request gets or when connections close).
fn common_lb_settings_built(proto: &pb::Cluster) -> Result<(), ConfigError> {
    let Some(c) = &proto.common_lb_config else {
        return Ok(());
    };
    let refused = [
        (
            "common_lb_config.close_connections_on_host_set_change",
            c.close_connections_on_host_set_change,
        ),
        (
            "common_lb_config.override_host_status",
            c.override_host_status.is_some(),
        ),
        (
            "common_lb_config.ignore_new_hosts_until_first_hc",
            c.ignore_new_hosts_until_first_hc,
        ),
    ];
    match refused.iter().find(|(_, set)| *set) {
        Some((field, _)) => Err(ConfigError::unsupported(*field)),
        None => Ok(()),
    }
}

#[allow(deprecated)] // deprecated DNS fields are still what some configs send
fn reject_unsupported(proto: &pb::Cluster) -> Result<(), ConfigError> {
    // Each changes what traffic gets, its stats or its DNS: refused until built.
    let unbuilt = [
        ("alt_stat_name", !proto.alt_stat_name.is_empty()),
        ("stats_matcher", proto.stats_matcher.is_some()),
        ("track_cluster_stats", proto.track_cluster_stats.is_some()),
        ("track_timeout_budgets", proto.track_timeout_budgets),
        (
            "upstream_connection_options",
            proto.upstream_connection_options.is_some(),
        ),
        ("upstream_config", proto.upstream_config.is_some()),
        ("protocol_selection", proto.protocol_selection != 0),
        ("preconnect_policy", proto.preconnect_policy.is_some()),
        (
            "connection_pool_per_downstream_connection",
            proto.connection_pool_per_downstream_connection,
        ),
        ("queuing_policies", proto.queuing_policies.is_some()),
        (
            "per_connection_buffer_high_watermark_timeout",
            proto.per_connection_buffer_high_watermark_timeout.is_some(),
        ),
        (
            "wait_for_warm_on_init",
            proto
                .wait_for_warm_on_init
                .as_ref()
                .is_some_and(|b| !b.value),
        ),
        ("dns_jitter", proto.dns_jitter.is_some()),
        ("dns_resolvers", !proto.dns_resolvers.is_empty()),
        ("use_tcp_for_dns_lookups", proto.use_tcp_for_dns_lookups),
        (
            "dns_resolution_config",
            proto.dns_resolution_config.is_some(),
        ),
        (
            "typed_dns_resolver_config",
            proto.typed_dns_resolver_config.is_some(),
        ),
    ];
    if let Some((field, _)) = unbuilt.iter().find(|(_, set)| *set) {
        return Err(ConfigError::unsupported(*field));
    }
    if proto.lb_subset_config.is_some() {
        return Err(ConfigError::unsupported("lb_subset_config"));
    }
    if !proto.filters.is_empty() {
        return Err(ConfigError::unsupported("filters"));
    }
    if proto.lrs_server.is_some() {
        return Err(ConfigError::unsupported("lrs_server"));
    }
    Ok(())
}

fn thresholds(proto: &pb::Cluster) -> Thresholds {
    let mut t = Thresholds::default();
    let Some(cb) = &proto.circuit_breakers else {
        return t;
    };
    // Only the DEFAULT priority routes traffic in Courier (no priority routing).
    if let Some(th) = cb.per_host_thresholds.iter().find(|th| th.priority == 0) {
        t.per_host_max_connections = th.max_connections.as_ref().map(|v| v.value);
    }
    if let Some(th) = cb.thresholds.iter().find(|th| th.priority == 0) {
        if let Some(v) = &th.max_connections {
            t.max_connections = v.value;
        }
        if let Some(v) = &th.max_pending_requests {
            t.max_pending_requests = v.value;
        }
        if let Some(v) = &th.max_requests {
            t.max_requests = v.value;
        }
        if let Some(v) = &th.max_retries {
            t.max_retries = v.value;
        }
        if let Some(b) = &th.retry_budget {
            t.retry_budget = Some(RetryBudget {
                percent: b.budget_percent.as_ref().map_or(20.0, |p| p.value),
                min_concurrency: b.min_retry_concurrency.as_ref().map_or(3, |v| v.value),
            });
        }
    }
    t
}

/// The protocol a cluster's upstream HTTP speaks, and how.
struct UpstreamHttp {
    http2: bool,
    http_auto: bool,
    http_downstream: bool,
    auto_sni: Option<AutoSni>,
    http2_options: H2Options,
    http1_trailers: bool,
    http1_key_format: KeyFormat,
    conn_lifetime: ConnLifetime,
    stream_limits: StreamLimits,
}

/// How long an upstream HTTP connection lives and how many requests it carries: a
/// cluster's `common_http_protocol_options` (in its `HttpProtocolOptions`, else the legacy
/// field) and the legacy `max_requests_per_connection`. Zero turns each off, as in Envoy.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ConnLifetime {
    /// `idle_timeout`: a connection with no request on it this long is closed (default
    /// 1 h).
    pub idle_timeout: Option<Duration>,
    /// `max_connection_duration`: a connection this old takes no more requests and is
    /// closed once its last one ends (no limit by default).
    pub max_duration: Option<Duration>,
    /// `max_requests_per_connection`: a connection that has carried this many requests
    /// takes no more and is closed once they end (no limit by default).
    pub max_requests: Option<u32>,
}

impl Default for ConnLifetime {
    fn default() -> Self {
        ConnLifetime {
            idle_timeout: Some(DEFAULT_UPSTREAM_IDLE_TIMEOUT),
            max_duration: None,
            max_requests: None,
        }
    }
}

/// Envoy's default upstream connection `idle_timeout`.
const DEFAULT_UPSTREAM_IDLE_TIMEOUT: Duration = Duration::from_secs(3600);

/// A cluster's connection lifetime from its `common_http_protocol_options` (`common`, at
/// `path`) and its legacy `max_requests_per_connection`.
fn parse_conn_lifetime(
    common: Option<&CommonHttpProtocolOptions>,
    legacy_max_requests: Option<u32>,
    path: &str,
) -> Result<ConnLifetime, ConfigError> {
    let nonzero = |d: Duration| (!d.is_zero()).then_some(d);
    let mut out = ConnLifetime {
        max_requests: legacy_max_requests.filter(|&n| n > 0),
        ..ConnLifetime::default()
    };
    let Some(common) = common else {
        return Ok(out);
    };
    if let Some(d) = &common.idle_timeout {
        out.idle_timeout = nonzero(config::duration(d, &format!("{path}.idle_timeout"))?);
    }
    if let Some(d) = &common.max_connection_duration {
        out.max_duration = nonzero(config::duration(
            d,
            &format!("{path}.max_connection_duration"),
        )?);
    }
    if let Some(n) = &common.max_requests_per_connection {
        if legacy_max_requests.is_some() {
            return Err(ConfigError::new(
                format!("{path}.max_requests_per_connection"),
                "only one of max_requests_per_connection from Cluster or HttpProtocolOptions \
                 can be specified",
            ));
        }
        out.max_requests = (n.value > 0).then_some(n.value);
    }
    Ok(out)
}

/// The per-protocol options of a config that speaks both HTTP/1.1 and HTTP/2
/// (`auto_config`, `use_downstream_protocol_config`), at `at`: HTTP/1.1's trailers and
/// header-name format (`http1`, the legacy options', unless given) and HTTP/2's options.
fn both_protocols(
    http1: Option<&courier_proto::envoy::config::core::v3::Http1ProtocolOptions>,
    http2: Option<&courier_proto::envoy::config::core::v3::Http2ProtocolOptions>,
    legacy: (bool, KeyFormat),
    at: &str,
) -> Result<(bool, KeyFormat, H2Options), ConfigError> {
    let (trailers, keys) = match http1 {
        Some(o) => (
            o.enable_trailers,
            KeyFormat::compile(Some(o), &format!("{at}.http_protocol_options"))?,
        ),
        None => legacy,
    };
    let h2 = H2Options::compile_client(http2, &format!("{at}.http2_protocol_options"))?;
    Ok((trailers, keys, h2))
}

#[allow(deprecated)] // the legacy `http2_protocol_options` is still common in configs
fn upstream_http(proto: &pb::Cluster) -> Result<UpstreamHttp, ConfigError> {
    let mut http2 = proto.http2_protocol_options.is_some();
    let mut http_auto = false;
    let mut http_downstream = false;
    let mut auto_sni = AutoSni::compile(
        proto.upstream_http_protocol_options.as_ref(),
        "upstream_http_protocol_options",
    )?;
    let mut http2_options = H2Options::compile_client(
        proto.http2_protocol_options.as_ref(),
        "http2_protocol_options",
    )?;
    let mut http1_key_format = KeyFormat::compile(
        proto.http_protocol_options.as_ref(),
        "http_protocol_options",
    )?;
    let mut http1_trailers = proto
        .http_protocol_options
        .as_ref()
        .is_some_and(|o| o.enable_trailers);
    let legacy_max_requests = proto.max_requests_per_connection.as_ref().map(|v| v.value);
    let mut conn_lifetime = parse_conn_lifetime(
        proto.common_http_protocol_options.as_ref(),
        legacy_max_requests,
        "common_http_protocol_options",
    )?;
    let mut stream_limits = StreamLimits::compile(
        proto.common_http_protocol_options.as_ref(),
        "common_http_protocol_options",
    )?;
    let mut keys: Vec<&String> = proto.typed_extension_protocol_options.keys().collect();
    keys.sort();
    for key in keys {
        let any = &proto.typed_extension_protocol_options[key];
        let path = format!("typed_extension_protocol_options[{key:?}]");
        if key != HTTP_PROTOCOL_OPTIONS {
            return Err(ConfigError::new(path, "unknown protocol options extension"));
        }
        let opts: HttpProtocolOptions = courier_proto::unpack_any(any)
            .map_err(|e| ConfigError::new(path.clone(), e.to_string()))?;
        // Not built: refused rather than ignored, as each changes what traffic gets.
        for (field, set) in [
            ("http_filters", !opts.http_filters.is_empty()),
            ("retry_policy", opts.retry_policy.is_some()),
            (
                "request_mirror_policies",
                !opts.request_mirror_policies.is_empty(),
            ),
            ("outlier_detection", opts.outlier_detection.is_some()),
            (
                "header_validation_config",
                opts.header_validation_config.is_some(),
            ),
            ("hash_policy", !opts.hash_policy.is_empty()),
        ] {
            if set {
                return Err(ConfigError::unsupported(format!("{path}.{field}")));
            }
        }
        // The typed options replace the legacy ones, as in Envoy.
        if let Some(o) = &opts.upstream_http_protocol_options {
            auto_sni =
                AutoSni::compile(Some(o), &format!("{path}.upstream_http_protocol_options"))?;
        }
        conn_lifetime = parse_conn_lifetime(
            opts.common_http_protocol_options.as_ref(),
            legacy_max_requests,
            &format!("{path}.common_http_protocol_options"),
        )?;
        stream_limits = StreamLimits::compile(
            opts.common_http_protocol_options.as_ref(),
            &format!("{path}.common_http_protocol_options"),
        )?;
        use http_protocol_options::explicit_http_config::ProtocolConfig;
        use http_protocol_options::UpstreamProtocolOptions;
        match opts.upstream_protocol_options {
            Some(UpstreamProtocolOptions::ExplicitHttpConfig(c)) => {
                http2 = matches!(
                    c.protocol_config,
                    Some(ProtocolConfig::Http2ProtocolOptions(_))
                );
                match &c.protocol_config {
                    Some(ProtocolConfig::HttpProtocolOptions(o)) => {
                        http1_trailers = o.enable_trailers;
                        http1_key_format = KeyFormat::compile(
                            Some(o),
                            &format!("{path}.explicit_http_config.http_protocol_options"),
                        )?;
                    }
                    Some(ProtocolConfig::Http2ProtocolOptions(o)) => {
                        http2_options = H2Options::compile_client(
                            Some(o),
                            &format!("{path}.explicit_http_config.http2_protocol_options"),
                        )?;
                    }
                    _ => {}
                }
            }
            Some(UpstreamProtocolOptions::UseDownstreamProtocolConfig(c)) => {
                let at = format!("{path}.use_downstream_protocol_config");
                if c.http3_protocol_options.is_some() {
                    return Err(ConfigError::unsupported(format!(
                        "{at}.http3_protocol_options"
                    )));
                }
                http2 = false;
                http_downstream = true;
                (http1_trailers, http1_key_format, http2_options) = both_protocols(
                    c.http_protocol_options.as_ref(),
                    c.http2_protocol_options.as_ref(),
                    (http1_trailers, http1_key_format),
                    &at,
                )?;
            }
            Some(UpstreamProtocolOptions::AutoConfig(c)) => {
                let at = format!("{path}.auto_config");
                if c.http3_protocol_options.is_some() {
                    return Err(ConfigError::unsupported(format!(
                        "{at}.http3_protocol_options"
                    )));
                }
                if c.alternate_protocols_cache_options.is_some() {
                    return Err(ConfigError::unsupported(format!(
                        "{at}.alternate_protocols_cache_options"
                    )));
                }
                http2 = false;
                http_auto = true;
                (http1_trailers, http1_key_format, http2_options) = both_protocols(
                    c.http_protocol_options.as_ref(),
                    c.http2_protocol_options.as_ref(),
                    (http1_trailers, http1_key_format),
                    &at,
                )?;
            }
            None => {}
        }
    }
    Ok(UpstreamHttp {
        http2,
        http_auto,
        http_downstream,
        auto_sni,
        http2_options,
        http1_trailers,
        http1_key_format,
        conn_lifetime,
        stream_limits,
    })
}

/// `upstream_http_protocol_options`: the upstream connection's server name taken from
/// each request (`auto_sni`), and checked against the server's certificate
/// (`auto_san_validation`). Connections are pooled per name, as Envoy pools them per
/// transport socket options.
#[derive(Debug, Clone)]
pub struct AutoSni {
    /// `auto_san_validation`: the certificate must name the host (instead of the SAN
    /// matchers of the validation context).
    pub san_validation: bool,
    /// `override_auto_sni_header`: the header naming the server, when present.
    pub header: Option<http::HeaderName>,
}

impl AutoSni {
    /// `None` unless `auto_sni` is set.
    fn compile(
        o: Option<&courier_proto::envoy::config::core::v3::UpstreamHttpProtocolOptions>,
        path: &str,
    ) -> Result<Option<AutoSni>, ConfigError> {
        let Some(o) = o else { return Ok(None) };
        if !o.auto_sni {
            if o.auto_san_validation {
                // Envoy would check the host's name while sending the configured SNI;
                // Courier checks the name it connects with.
                return Err(ConfigError::unsupported(format!(
                    "{path}.auto_san_validation without auto_sni"
                )));
            }
            return Ok(None);
        }
        let header = if o.override_auto_sni_header.is_empty() {
            None
        } else {
            Some(
                http::HeaderName::from_bytes(o.override_auto_sni_header.as_bytes()).map_err(
                    |_| {
                        ConfigError::new(
                            format!("{path}.override_auto_sni_header"),
                            format!(
                                "'{}' is not a valid header name",
                                o.override_auto_sni_header
                            ),
                        )
                    },
                )?,
            )
        };
        Ok(Some(AutoSni {
            san_validation: o.auto_san_validation,
            header,
        }))
    }

    /// The server name `req` asks for: its `override_auto_sni_header`, else its host,
    /// without the port.
    pub fn name_for<B>(&self, req: &http::Request<B>) -> Option<AutoName> {
        let from_header = self
            .header
            .as_ref()
            .and_then(|h| req.headers().get(h))
            .and_then(|v| v.to_str().ok())
            .filter(|v| !v.is_empty());
        let authority = from_header
            .or_else(|| req.uri().authority().map(|a| a.as_str()))
            .or_else(|| {
                req.headers()
                    .get(http::header::HOST)
                    .and_then(|v| v.to_str().ok())
            })?;
        let host = match authority.strip_prefix('[') {
            Some(rest) => rest.split(']').next().unwrap_or(rest),
            None => match authority.rsplit_once(':') {
                Some((h, port)) if port.bytes().all(|b| b.is_ascii_digit()) => h,
                _ => authority,
            },
        };
        (!host.is_empty()).then(|| AutoName {
            name: Arc::from(host),
            san_validation: self.san_validation,
        })
    }
}

/// A DNS cluster's endpoint to resolve.
#[derive(Debug, Clone)]
pub struct DnsTarget {
    /// The name to resolve.
    pub name: String,
    /// The port.
    pub port: u16,
    /// `load_balancing_weight` (default 1).
    pub weight: u32,
    /// The transport socket match its metadata chose.
    pub transport_match: Option<u16>,
    /// Its locality (see [`Host::locality`]).
    pub locality: u32,
    /// Its locality's weight (see [`Host::locality_weight`]).
    pub locality_weight: u32,
}

/// The targets of a DNS cluster's load assignment (each choosing among `matches`; the
/// choice is counted as each resolved host is created).
pub fn dns_targets(
    cla: &ClusterLoadAssignment,
    matches: &SocketMatches,
) -> Result<Vec<DnsTarget>, ConfigError> {
    let mut out = Vec::new();
    let groups = localities(cla);
    for ((li, locality), &(locality_index, locality_weight)) in
        cla.endpoints.iter().enumerate().zip(&groups)
    {
        for (ei, lb) in locality.lb_endpoints.iter().enumerate() {
            let path = format!("endpoints[{li}].lb_endpoints[{ei}]");
            let Some(lb_endpoint::HostIdentifier::Endpoint(ep)) = &lb.host_identifier else {
                return Err(ConfigError::new(path, "endpoint is required"));
            };
            let (host, port) = config::socket_address_parts(
                ep.address.as_ref(),
                &format!("{path}.endpoint.address"),
            )?;
            let weight = lb.load_balancing_weight.as_ref().map_or(1, |w| w.value);
            out.push(DnsTarget {
                name: host,
                port,
                weight,
                transport_match: matches.find(lb.metadata.as_ref(), locality.metadata.as_ref()),
                locality: locality_index,
                locality_weight,
            });
        }
    }
    Ok(out)
}

/// One endpoint of an assignment, validated.
struct ParsedEndpoint {
    address: std::net::SocketAddr,
    weight: u32,
    health: HostHealth,
    priority: u32,
    hostname: Option<Arc<str>>,
    transport_match: Option<u16>,
    locality: u32,
    locality_weight: u32,
    canary: bool,
}

/// Whether an endpoint's metadata marks it canary (`envoy.lb` `canary: true`).
fn is_canary(metadata: Option<&courier_proto::envoy::config::core::v3::Metadata>) -> bool {
    use courier_proto::google::protobuf::value::Kind;
    metadata
        .and_then(|m| m.filter_metadata.get("envoy.lb"))
        .and_then(|s| s.fields.get("canary"))
        .is_some_and(|v| matches!(v.kind, Some(Kind::BoolValue(true))))
}

/// Each `endpoints` entry's locality, as Envoy groups them: an index among the distinct
/// localities (sorted by region, zone and sub-zone, as Envoy's `LocalityLess`), and the
/// weight of that locality at that priority (the last entry's, as Envoy's map keeps).
fn localities(cla: &ClusterLoadAssignment) -> Vec<(u32, u32)> {
    fn key(
        e: &courier_proto::envoy::config::endpoint::v3::LocalityLbEndpoints,
    ) -> (&str, &str, &str) {
        e.locality
            .as_ref()
            .map(|l| (l.region.as_str(), l.zone.as_str(), l.sub_zone.as_str()))
            .unwrap_or_default()
    }
    let mut keys: Vec<(&str, &str, &str)> = cla.endpoints.iter().map(key).collect();
    keys.sort_unstable();
    keys.dedup();
    let mut weights: HashMap<(u32, u32), u32> = HashMap::new();
    let indices: Vec<u32> = cla
        .endpoints
        .iter()
        .map(|e| {
            let index = keys.binary_search(&key(e)).unwrap_or(0) as u32;
            let weight = e.load_balancing_weight.as_ref().map_or(0, |w| w.value);
            weights.insert((e.priority, index), weight);
            index
        })
        .collect();
    cla.endpoints
        .iter()
        .zip(indices)
        .map(|(e, i)| (i, weights.get(&(e.priority, i)).copied().unwrap_or(0)))
        .collect()
}

/// An assignment's `policy.overprovisioning_factor`.
pub fn overprovisioning(cla: &ClusterLoadAssignment) -> u32 {
    cla.policy
        .as_ref()
        .and_then(|p| p.overprovisioning_factor.as_ref())
        .map_or(super::host_set::DEFAULT_OVERPROVISIONING, |f| f.value)
}

/// Validates an assignment and reads its endpoints (each choosing among `matches`);
/// allocates nothing that lasts.
fn parse_assignment(
    cla: &ClusterLoadAssignment,
    matches: &SocketMatches,
) -> Result<Vec<ParsedEndpoint>, ConfigError> {
    let overprovisioning = cla
        .policy
        .as_ref()
        .and_then(|p| p.overprovisioning_factor.as_ref());
    if overprovisioning.is_some_and(|f| f.value == 0) {
        return Err(ConfigError::new(
            "policy.overprovisioning_factor",
            "value must be greater than 0",
        ));
    }
    if let Some(p) = &cla.policy {
        // Each changes which host, or whether any, gets a request: refused until built.
        for (field, set) in [
            ("policy.drop_overloads", !p.drop_overloads.is_empty()),
            (
                "policy.endpoint_stale_after",
                p.endpoint_stale_after.is_some(),
            ),
            (
                "policy.weighted_priority_health",
                p.weighted_priority_health,
            ),
        ] {
            if set {
                return Err(ConfigError::unsupported(field));
            }
        }
    }
    let mut endpoints = Vec::new();
    let groups = localities(cla);
    for ((li, locality), &(locality_index, locality_weight)) in
        cla.endpoints.iter().enumerate().zip(&groups)
    {
        for (ei, lb) in locality.lb_endpoints.iter().enumerate() {
            let path = format!("endpoints[{li}].lb_endpoints[{ei}]");
            let Some(lb_endpoint::HostIdentifier::Endpoint(ep)) = &lb.host_identifier else {
                return Err(ConfigError::new(path, "endpoint is required"));
            };
            let address =
                config::socket_address(ep.address.as_ref(), &format!("{path}.endpoint.address"))?;
            if ep
                .health_check_config
                .as_ref()
                .is_some_and(|c| *c != Default::default())
            {
                // A check on another port or name, or none for this host: not built.
                return Err(ConfigError::unsupported(format!(
                    "{path}.endpoint.health_check_config"
                )));
            }
            let weight = lb.load_balancing_weight.as_ref().map_or(1, |w| w.value);
            if weight == 0 {
                return Err(ConfigError::new(
                    format!("{path}.load_balancing_weight"),
                    "value must be greater than or equal to 1",
                ));
            }
            let health = match HealthStatus::try_from(lb.health_status) {
                Ok(HealthStatus::Unhealthy | HealthStatus::Draining | HealthStatus::Timeout) => {
                    HostHealth::Unhealthy
                }
                Ok(HealthStatus::Degraded) => HostHealth::Degraded,
                _ => HostHealth::Healthy,
            };
            endpoints.push(ParsedEndpoint {
                address,
                weight,
                health,
                priority: locality.priority,
                hostname: (!ep.hostname.is_empty()).then(|| Arc::from(ep.hostname.as_str())),
                transport_match: matches.choose(lb.metadata.as_ref(), locality.metadata.as_ref()),
                locality: locality_index,
                locality_weight,
                canary: is_canary(lb.metadata.as_ref()),
            });
        }
    }
    Ok(endpoints)
}

/// Checks an assignment (EDS validation of a whole response before any of it applies).
pub fn validate_assignment(cla: &ClusterLoadAssignment) -> Result<(), ConfigError> {
    parse_assignment(cla, &SocketMatches::default()).map(|_| ())
}

/// What a host set is built with, of its cluster.
#[derive(Clone, Copy)]
pub struct HostSetParams<'a> {
    /// `healthy_panic_threshold`.
    pub panic_threshold: f64,
    /// The transport socket matches hosts choose among.
    pub matches: &'a SocketMatches,
    /// Whether the cluster has active health checking (new hosts start failing it).
    pub health_checked: bool,
    /// Whether a host EDS removes stays while it passes its health checks (Envoy's
    /// default with health checking; `ignore_health_on_host_removal` turns it off).
    pub keep_healthy_removed: bool,
}

impl ClusterInfo {
    /// What its host sets are built with.
    pub fn host_set_params(&self) -> HostSetParams<'_> {
        HostSetParams {
            panic_threshold: self.panic_threshold,
            matches: &self.socket_matches,
            health_checked: self.health_check.is_some(),
            keep_healthy_removed: self.health_check.is_some()
                && !self.ignore_health_on_host_removal,
        }
    }
}

/// Builds a host set from an assignment, reusing the stats (and health) of hosts already
/// in `previous`, so that they survive endpoint updates.
pub fn build_host_set(
    cla: &ClusterLoadAssignment,
    store: &Store,
    previous: Option<&HostSet>,
    params: HostSetParams<'_>,
) -> Result<Arc<HostSet>, ConfigError> {
    let known: HashMap<std::net::SocketAddr, Arc<HostStats>> = previous
        .map(|p| {
            p.hosts
                .iter()
                .map(|h| (h.address, h.stats.clone()))
                .collect()
        })
        .unwrap_or_default();
    let mut hosts: Vec<Arc<Host>> = parse_assignment(cla, params.matches)?
        .into_iter()
        .map(|e| {
            let stats = known
                .get(&e.address)
                .cloned()
                .unwrap_or_else(|| HostStats::new(store));
            stats.prepare_for(params.health_checked);
            stats.set_flag(HealthFlags::PENDING_DYNAMIC_REMOVAL, false);
            Arc::new(
                Host::new(
                    e.address,
                    e.weight,
                    e.health,
                    e.priority,
                    stats,
                    e.hostname,
                    e.transport_match,
                )
                .in_locality(e.locality, e.locality_weight)
                .with_canary(e.canary),
            )
        })
        .collect();
    // As Envoy: with health checking, a host EDS removed that still passes its checks
    // stays (and serves) until it fails one.
    if let (true, Some(previous)) = (params.keep_healthy_removed, previous) {
        for h in &previous.hosts {
            let flags = h.stats.flags();
            if hosts.iter().any(|n| n.address == h.address)
                || flags.intersects(HealthFlags::FAILED_ACTIVE_HC)
            {
                continue;
            }
            h.stats.set_flag(HealthFlags::PENDING_DYNAMIC_REMOVAL, true);
            hosts.push(Arc::new(h.refreshed()));
        }
    }
    let set = HostSet::with_overprovisioning(hosts, params.panic_threshold, overprovisioning(cla));
    Ok(Arc::new(set))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn compile(yaml: &str) -> Result<ClusterInfo, ConfigError> {
        let head = "name: c\nconnect_timeout: 1s\n";
        let proto: pb::Cluster =
            courier_proto::from_yaml(&format!("{head}{yaml}")).expect("a Cluster");
        compile_cluster(&proto, &Store::new(1))
    }

    fn typed(common: &str) -> String {
        format!(
            "typed_extension_protocol_options:\n  envoy.extensions.upstreams.http.v3.HttpProtocolOptions:\n    \"@type\": type.googleapis.com/envoy.extensions.upstreams.http.v3.HttpProtocolOptions\n    common_http_protocol_options: {common}\n    explicit_http_config: {{ http_protocol_options: {{}} }}\n"
        )
    }

    #[test]
    fn fields_not_built_are_refused_by_path() {
        for (yaml, path) in [
            (
                "upstream_http_protocol_options: { auto_san_validation: true }\n",
                "upstream_http_protocol_options.auto_san_validation without auto_sni",
            ),
            ("alt_stat_name: other\n", "alt_stat_name"),
            (
                "upstream_connection_options: { tcp_keepalive: {} }\n",
                "upstream_connection_options",
            ),
            (
                "protocol_selection: USE_DOWNSTREAM_PROTOCOL\n",
                "protocol_selection",
            ),
            ("wait_for_warm_on_init: false\n", "wait_for_warm_on_init"),
            (
                "lb_policy: LEAST_REQUEST\nleast_request_lb_config: { slow_start_config: { slow_start_window: 1s, aggression: { default_value: 2, runtime_key: k } } }\n",
                "least_request_lb_config.slow_start_config.aggression.runtime_key",
            ),
            (
                "lb_policy: MAGLEV\ncommon_lb_config: { locality_weighted_lb_config: {} }\n",
                "common_lb_config.locality_weighted_lb_config",
            ),
            (
                "dns_resolvers: [{ socket_address: { address: 1.1.1.1, port_value: 53 } }]\n",
                "dns_resolvers",
            ),
        ] {
            let err = compile(yaml).err().map(|e| e.path).unwrap_or_default();
            assert_eq!(err, path, "{yaml}");
        }
        // Envoy's defaults, written out, are fine.
        assert!(compile(
            "wait_for_warm_on_init: true\nprotocol_selection: USE_CONFIGURED_PROTOCOL\n"
        )
        .is_ok());
        // Another policy's settings are ignored, as Envoy ignores them.
        assert!(compile("least_request_lb_config: { slow_start_config: {} }\n").is_ok());
    }

    /// A `load_balancing_policy` of these `policies` (each a YAML flow map of a
    /// `typed_extension_config`).
    fn typed_lb(policies: &[&str]) -> String {
        let mut yaml = String::from("load_balancing_policy:\n  policies:\n");
        for p in policies {
            yaml.push_str(&format!("  - typed_extension_config: {p}\n"));
        }
        yaml
    }

    fn lb_any(kind: &str, message: &str, fields: &str) -> String {
        format!(
            "{{ name: envoy.load_balancing_policies.{kind}, typed_config: {{ \"@type\": type.googleapis.com/envoy.extensions.load_balancing_policies.{kind}.v3.{message}{fields} }} }}"
        )
    }

    #[test]
    fn least_request_settings_are_acted_on() {
        let policy = |yaml: &str| compile(yaml).map(|c| c.lb_policy);
        assert_eq!(
            policy("lb_policy: LEAST_REQUEST\n").expect("compiles"),
            LbPolicy::LeastRequest(LeastRequest::default())
        );
        assert_eq!(
            policy("lb_policy: LEAST_REQUEST\nleast_request_lb_config: { choice_count: 5, active_request_bias: { default_value: 0.5 } }\n")
                .expect("compiles"),
            LbPolicy::LeastRequest(LeastRequest {
                choice_count: 5,
                active_request_bias: 0.5,
                full_scan: false
            })
        );
        // A negative bias is Envoy's 1.0 (with a warning).
        assert_eq!(
            policy("lb_policy: LEAST_REQUEST\nleast_request_lb_config: { active_request_bias: { default_value: -2 } }\n")
                .expect("compiles"),
            LbPolicy::LeastRequest(LeastRequest::default())
        );
        let err = |yaml: &str| compile(yaml).err().map(|e| e.path).unwrap_or_default();
        assert_eq!(
            err("lb_policy: LEAST_REQUEST\nleast_request_lb_config: { choice_count: 1 }\n"),
            "least_request_lb_config.choice_count"
        );
        assert_eq!(
            err("lb_policy: LEAST_REQUEST\nleast_request_lb_config: { active_request_bias: { default_value: 2, runtime_key: k } }\n"),
            "least_request_lb_config.active_request_bias.runtime_key"
        );
        let typed = policy(&typed_lb(&[&lb_any(
            "least_request",
            "LeastRequest",
            ", choice_count: 3, selection_method: FULL_SCAN, active_request_bias: { default_value: 0 }",
        )]))
        .expect("compiles");
        assert_eq!(
            typed,
            LbPolicy::LeastRequest(LeastRequest {
                choice_count: 3,
                active_request_bias: 0.0,
                full_scan: true
            })
        );
    }

    #[test]
    fn typed_load_balancing_policies_compile_as_envoy() {
        let policy = |yaml: &str| compile(yaml).map(|c| c.lb_policy);
        let p0 = "load_balancing_policy.policies[0].typed_extension_config.typed_config";
        // Envoy Gateway's usual form; `lb_policy` is ignored when the typed policy is set.
        assert_eq!(
            policy(&format!(
                "lb_policy: MAGLEV\n{}",
                typed_lb(&[&lb_any("least_request", "LeastRequest", "")])
            ))
            .expect("compiles"),
            LbPolicy::LeastRequest(LeastRequest::default())
        );
        assert_eq!(
            policy(&typed_lb(&[&lb_any("round_robin", "RoundRobin", "")])).expect("rr"),
            LbPolicy::RoundRobin
        );
        assert_eq!(
            policy(&typed_lb(&[&lb_any("random", "Random", "")])).expect("random"),
            LbPolicy::Random
        );
        assert_eq!(
            policy(&typed_lb(&[&lb_any(
                "ring_hash",
                "RingHash",
                ", minimum_ring_size: 64, maximum_ring_size: 128"
            )]))
            .expect("ring"),
            LbPolicy::RingHash {
                min_ring_size: 64,
                max_ring_size: 128
            }
        );
        assert_eq!(
            policy(&typed_lb(&[&lb_any("maglev", "Maglev", ", table_size: 7")])).expect("maglev"),
            LbPolicy::Maglev { table_size: 7 }
        );
        // Without a typed_config the name finds the policy, with its defaults.
        assert_eq!(
            policy(&typed_lb(&[
                "{ name: envoy.load_balancing_policies.maglev }"
            ]))
            .expect("by name"),
            LbPolicy::Maglev { table_size: 65537 }
        );
        // Unknown types are skipped; the first known one wins.
        let unknown = "{ name: my.policy, typed_config: { \"@type\": type.googleapis.com/envoy.config.core.v3.Locality } }";
        assert_eq!(
            policy(&typed_lb(&[unknown, &lb_any("random", "Random", "")])).expect("second"),
            LbPolicy::Random
        );
        let none = compile(&typed_lb(&[unknown])).err().expect("refused");
        assert_eq!(none.path, "load_balancing_policy");
        assert_eq!(
            none.message,
            "cluster: didn't find a registered load balancer factory implementation for cluster: 'c' with names from [my.policy]"
        );
        // LOAD_BALANCING_POLICY_CONFIG needs the field.
        assert_eq!(
            compile("lb_policy: LOAD_BALANCING_POLICY_CONFIG\n")
                .err()
                .map(|e| e.message)
                .unwrap_or_default(),
            "cluster: field load_balancing_policy need to be set"
        );

        let err = |yaml: &str| compile(yaml).err().map(|e| e.path).unwrap_or_default();
        for (yaml, path) in [
            // What Envoy knows and Courier does not build is refused, not skipped.
            (
                typed_lb(&[
                    &lb_any("wrr_locality", "WrrLocality", ""),
                    &lb_any("random", "Random", ""),
                ]),
                "load_balancing_policy.policies[0].typed_extension_config".to_string(),
            ),
            (
                typed_lb(&[&lb_any("least_request", "LeastRequest", ", choice_count: 1")]),
                format!("{p0}.choice_count"),
            ),
            (
                typed_lb(&[&lb_any(
                    "round_robin",
                    "RoundRobin",
                    ", slow_start_config: { slow_start_window: 10s, min_weight_percent: { value: 120 } }",
                )]),
                format!("{p0}.slow_start_config.min_weight_percent.value"),
            ),
            (
                typed_lb(&[&lb_any(
                    "random",
                    "Random",
                    ", locality_lb_config: { zone_aware_lb_config: { fail_traffic_on_panic: true } }",
                )]),
                format!("{p0}.locality_lb_config.zone_aware_lb_config.fail_traffic_on_panic"),
            ),
            (
                typed_lb(&[&lb_any(
                    "ring_hash",
                    "RingHash",
                    ", minimum_ring_size: 30, maximum_ring_size: 20",
                )]),
                p0.to_string(),
            ),
            (
                typed_lb(&[&lb_any("ring_hash", "RingHash", ", hash_function: MURMUR_HASH_2")]),
                format!("{p0}.hash_function"),
            ),
            (
                typed_lb(&[&lb_any(
                    "ring_hash",
                    "RingHash",
                    ", consistent_hashing_lb_config: { hash_balance_factor: 150 }",
                )]),
                format!("{p0}.consistent_hashing_lb_config.hash_balance_factor"),
            ),
            (
                typed_lb(&[&lb_any("maglev", "Maglev", ", table_size: 100")]),
                format!("{p0}.table_size"),
            ),
            (
                typed_lb(&[&lb_any("maglev", "Maglev", ", locality_weighted_lb_config: {}")]),
                format!("{p0}.locality_weighted_lb_config"),
            ),
            (
                format!(
                    "common_lb_config: {{ consistent_hashing_lb_config: {{}} }}\n{}",
                    typed_lb(&[&lb_any("maglev", "Maglev", "")])
                ),
                "common_lb_config.consistent_hashing_lb_config".to_string(),
            ),
        ] {
            assert_eq!(err(&yaml), path, "{yaml}");
        }
        // A cluster-provided policy on a cluster that provides none: Envoy's error.
        let provided = compile(&typed_lb(&[&lb_any(
            "cluster_provided",
            "ClusterProvided",
            "",
        )]))
        .err()
        .expect("refused");
        assert_eq!(
            provided.message,
            "cluster manager: cluster provided LB specified but cluster 'c' did not provide one. Check cluster documentation."
        );
        // Envoy Gateway's form: least request, locality-weighted.
        let eg = compile(&typed_lb(&[&lb_any(
            "least_request",
            "LeastRequest",
            ", locality_lb_config: { locality_weighted_lb_config: {} }",
        )]))
        .expect("compiles");
        assert!(eg.locality_weighted);
        assert_eq!(
            eg.lb_policy,
            LbPolicy::LeastRequest(LeastRequest::default())
        );
        assert!(
            compile("common_lb_config: { locality_weighted_lb_config: {} }\n")
                .expect("compiles")
                .locality_weighted
        );
        // Slow start, as Envoy Gateway sends it.
        let slow = compile(&typed_lb(&[&lb_any(
            "round_robin",
            "RoundRobin",
            ", slow_start_config: { slow_start_window: 30s, aggression: { default_value: 2 }, min_weight_percent: { value: 5 } }",
        )]))
        .expect("compiles");
        assert_eq!(
            slow.slow_start,
            Some(SlowStart {
                window: Duration::from_secs(30),
                aggression: 2.0,
                min_weight: 0.05
            })
        );
        let lr = compile("lb_policy: LEAST_REQUEST\nleast_request_lb_config: { slow_start_config: { slow_start_window: 5s } }\n")
            .expect("compiles");
        assert_eq!(
            lr.slow_start,
            Some(SlowStart {
                window: Duration::from_secs(5),
                aggression: 1.0,
                min_weight: 0.1
            })
        );
        // No window: no slow start, as Envoy.
        assert_eq!(
            compile(&typed_lb(&[&lb_any(
                "least_request",
                "LeastRequest",
                ", slow_start_config: {}"
            )]))
            .expect("compiles")
            .slow_start,
            None
        );
        // A zone-aware config changes nothing without a local cluster.
        assert!(compile(&typed_lb(&[&lb_any(
            "least_request",
            "LeastRequest",
            ", locality_lb_config: { zone_aware_lb_config: { min_cluster_size: 1 } }",
        )]))
        .is_ok());
    }

    #[test]
    fn dns_cluster_extension_maps_onto_strict_and_logical_dns() {
        let la = "load_assignment: { endpoints: [{ lb_endpoints: [{ endpoint: { address: { socket_address: { address: localhost, port_value: 80 } } } }] }] }\n";
        let dns = |fields: &str| {
            compile(&format!(
                "{la}cluster_type: {{ name: envoy.cluster.dns, typed_config: {{ \"@type\": type.googleapis.com/envoy.extensions.clusters.dns.v3.DnsCluster{fields} }} }}\n"
            ))
        };
        let strict =
            dns(", dns_refresh_rate: 30s, respect_dns_ttl: true, dns_lookup_family: V4_PREFERRED")
                .expect("compiles");
        assert_eq!(strict.discovery, DiscoveryType::StrictDns);
        assert_eq!(
            strict.dns,
            DnsSettings {
                family: DnsLookupFamily::V4Preferred,
                refresh: Duration::from_secs(30),
                failure_refresh: Duration::from_secs(30),
                failure_max: None,
            }
        );
        let logical = dns(", all_addresses_in_single_endpoint: true, dns_failure_refresh_rate: { base_interval: 2s, max_interval: 10s }")
            .expect("compiles");
        assert_eq!(logical.discovery, DiscoveryType::LogicalDns);
        assert_eq!(
            logical.dns,
            DnsSettings {
                family: DnsLookupFamily::Auto,
                refresh: Duration::from_secs(5),
                failure_refresh: Duration::from_secs(2),
                failure_max: Some(Duration::from_secs(10)),
            }
        );
        let err = |r: Result<ClusterInfo, ConfigError>| r.err().map(|e| e.path).unwrap_or_default();
        assert_eq!(
            err(dns(", dns_jitter: 1s")),
            "cluster_type.typed_config.dns_jitter"
        );
        assert_eq!(
            err(dns(", dns_min_refresh_rate: 10s")),
            "cluster_type.typed_config.dns_min_refresh_rate"
        );
        assert_eq!(
            err(dns(", dns_refresh_rate: 0.001s")),
            "cluster_type.typed_config.dns_refresh_rate"
        );
        assert_eq!(
            err(dns(
                ", typed_dns_resolver_config: { name: envoy.network.dns_resolver.cares }"
            )),
            "cluster_type.typed_config.typed_dns_resolver_config"
        );
        // A DNS cluster still needs its names.
        assert_eq!(
            err(compile("cluster_type: { name: envoy.cluster.dns }\n")),
            "load_assignment"
        );
        let other = compile("cluster_type: { name: envoy.clusters.aggregate }\n")
            .err()
            .expect("refused");
        assert_eq!(other.path, "cluster_type.name");
        assert!(
            other.message.contains("envoy.clusters.aggregate"),
            "{}",
            other.message
        );
    }

    #[test]
    fn ring_hash_settings_are_checked_as_envoy_checks_them() {
        let policy =
            |yaml: &str| compile(&format!("lb_policy: RING_HASH\n{yaml}")).map(|c| c.lb_policy);
        assert_eq!(
            policy("").expect("compiles"),
            LbPolicy::RingHash {
                min_ring_size: 1024,
                max_ring_size: 8 * 1024 * 1024
            }
        );
        assert_eq!(
            policy("ring_hash_lb_config: { minimum_ring_size: 10, maximum_ring_size: 20 }\n")
                .expect("compiles"),
            LbPolicy::RingHash {
                min_ring_size: 10,
                max_ring_size: 20
            }
        );
        let err = |yaml: &str| policy(yaml).err().map(|e| e.path).unwrap_or_default();
        assert_eq!(
            err("ring_hash_lb_config: { minimum_ring_size: 30, maximum_ring_size: 20 }\n"),
            "ring_hash_lb_config"
        );
        assert_eq!(
            err("ring_hash_lb_config: { maximum_ring_size: 9000000 }\n"),
            "ring_hash_lb_config.maximum_ring_size"
        );
        assert_eq!(
            err("ring_hash_lb_config: { hash_function: MURMUR_HASH_2 }\n"),
            "ring_hash_lb_config.hash_function"
        );
        assert_eq!(
            err("common_lb_config: { consistent_hashing_lb_config: { use_hostname_for_hashing: true } }\n"),
            "common_lb_config.consistent_hashing_lb_config.use_hostname_for_hashing"
        );
        assert_eq!(
            compile("lb_policy: MAGLEV\n")
                .map(|c| c.lb_policy)
                .expect("compiles"),
            LbPolicy::Maglev { table_size: 65537 }
        );
        assert_eq!(
            compile("lb_policy: MAGLEV\nmaglev_lb_config: { table_size: 100 }\n")
                .err()
                .map(|e| e.path)
                .unwrap_or_default(),
            "maglev_lb_config.table_size"
        );
    }

    #[test]
    fn connection_lifetime_defaults_and_overrides_as_envoy() {
        let default = compile("").expect("compiles").conn_lifetime;
        assert_eq!(default.idle_timeout, Some(Duration::from_secs(3600)));
        assert_eq!((default.max_duration, default.max_requests), (None, None));

        let set = compile(&typed(
            "{ idle_timeout: 2s, max_connection_duration: 3s, max_requests_per_connection: 4 }",
        ))
        .expect("compiles")
        .conn_lifetime;
        assert_eq!(set.idle_timeout, Some(Duration::from_secs(2)));
        assert_eq!(set.max_duration, Some(Duration::from_secs(3)));
        assert_eq!(set.max_requests, Some(4));

        // Zero turns each off.
        let off = compile(&typed(
            "{ idle_timeout: 0s, max_connection_duration: 0s, max_requests_per_connection: 0 }",
        ))
        .expect("compiles")
        .conn_lifetime;
        assert_eq!(
            (off.idle_timeout, off.max_duration, off.max_requests),
            (None, None, None)
        );

        // The legacy fields, and the typed options replacing the legacy common ones.
        let legacy = compile(
            "max_requests_per_connection: 7\ncommon_http_protocol_options: { idle_timeout: 9s }\n",
        )
        .expect("compiles")
        .conn_lifetime;
        assert_eq!(legacy.max_requests, Some(7));
        assert_eq!(legacy.idle_timeout, Some(Duration::from_secs(9)));
        let replaced = compile(&format!(
            "common_http_protocol_options: {{ idle_timeout: 9s }}\n{}",
            typed("{}")
        ))
        .expect("compiles")
        .conn_lifetime;
        assert_eq!(replaced.idle_timeout, Some(Duration::from_secs(3600)));
    }

    #[test]
    fn cluster_http_options_courier_does_not_build_are_refused() {
        let err = compile(&typed("{}").replace(
            "    explicit_http_config:",
            "    retry_policy: { retry_on: 5xx }\n    explicit_http_config:",
        ))
        .err()
        .expect("refused");
        assert!(
            err.to_string()
                .contains("HttpProtocolOptions\"].retry_policy"),
            "{err}"
        );
    }

    #[test]
    fn max_requests_per_connection_in_both_places_is_refused() {
        let err = compile(&format!(
            "max_requests_per_connection: 1\n{}",
            typed("{ max_requests_per_connection: 2 }")
        ))
        .err()
        .expect("refused");
        assert!(
            err.to_string()
                .contains("only one of max_requests_per_connection"),
            "{err}"
        );
    }
}
