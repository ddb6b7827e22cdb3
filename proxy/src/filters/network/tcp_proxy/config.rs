//! The compiled TcpProxy config.

use std::sync::Arc;
use std::time::Duration;

use courier_proto::envoy::extensions::filters::network::tcp_proxy::v3::{
    tcp_proxy::ClusterSpecifier, TcpProxy,
};

use crate::access_log::AccessLog;
use crate::config::{self, ConfigError};
use crate::stats::{Counter, Gauge, Store};

/// `tcp.<stat_prefix>.*` stats.
pub struct TcpStats {
    /// `downstream_cx_total`.
    pub downstream_cx_total: Arc<Counter>,
    /// `downstream_cx_no_route`.
    pub downstream_cx_no_route: Arc<Counter>,
    /// `downstream_cx_tx_bytes_total`.
    pub downstream_cx_tx_bytes_total: Arc<Counter>,
    /// `downstream_cx_rx_bytes_total`.
    pub downstream_cx_rx_bytes_total: Arc<Counter>,
    /// `downstream_cx_tx_bytes_buffered`.
    pub downstream_cx_tx_bytes_buffered: Arc<Gauge>,
    /// `idle_timeout`.
    pub idle_timeout: Arc<Counter>,
    /// `upstream_flush_active`.
    pub upstream_flush_active: Arc<Gauge>,
}

/// A compiled TcpProxy.
pub struct TcpProxyConfig {
    /// `stat_prefix`.
    pub stat_prefix: String,
    /// Clusters with weights (a single `cluster` is one entry of weight 1).
    pub clusters: Vec<(String, u32)>,
    total_weight: u64,
    /// `idle_timeout` (default 1 h; `None` when set to 0s).
    pub idle_timeout: Option<Duration>,
    /// `max_connect_attempts` (default 1).
    pub max_connect_attempts: u32,
    /// `max_downstream_connection_duration`.
    pub max_duration: Option<Duration>,
    /// Stats.
    pub stats: TcpStats,
    /// `access_log`: an entry when the connection ends (and as `access_log_options` ask).
    pub access_logs: Vec<Arc<AccessLog>>,
    /// `flush_access_log_on_connected`: an entry once the upstream connection is made.
    pub log_on_connected: bool,
    /// `access_log_flush_interval`: an entry every interval while the connection lives.
    pub log_interval: Option<Duration>,
}

impl TcpProxyConfig {
    /// Compiles the filter config.
    pub fn compile(proto: &TcpProxy, store: &Store) -> Result<TcpProxyConfig, ConfigError> {
        if proto.stat_prefix.is_empty() {
            return Err(ConfigError::new(
                "stat_prefix",
                "value length must be at least 1 characters",
            ));
        }
        let clusters: Vec<(String, u32)> = match &proto.cluster_specifier {
            Some(ClusterSpecifier::Cluster(c)) if !c.is_empty() => vec![(c.clone(), 1)],
            Some(ClusterSpecifier::WeightedClusters(w)) => {
                if w.clusters.is_empty() {
                    return Err(ConfigError::new(
                        "weighted_clusters.clusters",
                        "value must contain at least 1 item(s)",
                    ));
                }
                w.clusters
                    .iter()
                    .map(|c| (c.name.clone(), c.weight))
                    .collect()
            }
            _ => {
                return Err(ConfigError::new(
                    "cluster_specifier",
                    "one of cluster or weighted_clusters is required",
                ))
            }
        };
        let total_weight: u64 = clusters.iter().map(|(_, w)| *w as u64).sum();
        if total_weight == 0 {
            return Err(ConfigError::new(
                "weighted_clusters",
                "the sum of weights must be greater than 0",
            ));
        }
        for (field, set) in [
            ("tunneling_config", proto.tunneling_config.is_some()),
            ("on_demand", proto.on_demand.is_some()),
            ("hash_policy", !proto.hash_policy.is_empty()),
            ("metadata_match", proto.metadata_match.is_some()),
        ] {
            if set {
                return Err(ConfigError::unsupported(field));
            }
        }
        let idle_timeout = config::duration_or(
            proto.idle_timeout.as_ref(),
            Duration::from_secs(3600),
            "idle_timeout",
        )?;
        let max_duration = proto
            .max_downstream_connection_duration
            .as_ref()
            .map(|d| config::duration(d, "max_downstream_connection_duration"))
            .transpose()?
            .filter(|d| !d.is_zero());
        let max_connect_attempts = proto.max_connect_attempts.as_ref().map_or(1, |v| v.value);
        if max_connect_attempts == 0 {
            return Err(ConfigError::new(
                "max_connect_attempts",
                "value must be greater than or equal to 1",
            ));
        }
        let (log_on_connected, log_interval) = access_log_options(proto)?;
        let p = &proto.stat_prefix;
        let c = |s: &str| store.counter(&format!("tcp.{p}.{s}"));
        let g = |s: &str| store.gauge(&format!("tcp.{p}.{s}"));
        Ok(TcpProxyConfig {
            stat_prefix: p.clone(),
            clusters,
            total_weight,
            idle_timeout: (!idle_timeout.is_zero()).then_some(idle_timeout),
            max_connect_attempts,
            max_duration,
            stats: TcpStats {
                downstream_cx_total: c("downstream_cx_total"),
                downstream_cx_no_route: c("downstream_cx_no_route"),
                downstream_cx_tx_bytes_total: c("downstream_cx_tx_bytes_total"),
                downstream_cx_rx_bytes_total: c("downstream_cx_rx_bytes_total"),
                downstream_cx_tx_bytes_buffered: g("downstream_cx_tx_bytes_buffered"),
                idle_timeout: c("idle_timeout"),
                upstream_flush_active: g("upstream_flush_active"),
            },
            access_logs: crate::access_log::compile_all(&proto.access_log, "access_log", store)?,
            log_on_connected,
            log_interval,
        })
    }

    /// Picks the cluster for a new connection (by weight).
    pub fn pick_cluster(&self) -> &str {
        if self.clusters.len() == 1 {
            return &self.clusters[0].0;
        }
        let mut r = fastrand::u64(0..self.total_weight);
        for (name, w) in &self.clusters {
            if r < *w as u64 {
                return name;
            }
            r -= *w as u64;
        }
        &self.clusters[self.clusters.len() - 1].0
    }

    /// Every cluster this filter may route to.
    pub fn cluster_names(&self) -> impl Iterator<Item = &str> {
        self.clusters.iter().map(|(n, _)| n.as_str())
    }
}

/// `access_log_options` (or their deprecated top-level forms, not both): whether to log
/// once connected, and the periodic interval (at least 1 ms).
#[allow(deprecated)] // the top-level forms are deprecated, still honoured by Envoy
fn access_log_options(proto: &TcpProxy) -> Result<(bool, Option<Duration>), ConfigError> {
    let options = proto.access_log_options.as_ref();
    if options.is_some() {
        for (legacy, set) in [
            (
                "access_log_flush_interval",
                proto.access_log_flush_interval.is_some(),
            ),
            (
                "flush_access_log_on_connected",
                proto.flush_access_log_on_connected,
            ),
        ] {
            if set {
                return Err(ConfigError::new(
                    "access_log_options",
                    format!("Only one of {legacy} or access_log_options can be specified."),
                ));
            }
        }
    }
    let (interval, at, on_connected) = match options {
        Some(o) => (
            o.access_log_flush_interval.as_ref(),
            "access_log_options.access_log_flush_interval",
            o.flush_access_log_on_connected,
        ),
        None => (
            proto.access_log_flush_interval.as_ref(),
            "access_log_flush_interval",
            proto.flush_access_log_on_connected,
        ),
    };
    let interval = interval.map(|d| config::duration(d, at)).transpose()?;
    if interval.is_some_and(|d| d < Duration::from_millis(1)) {
        return Err(ConfigError::new(
            at,
            "value must be greater than or equal to 1ms",
        ));
    }
    Ok((on_connected, interval))
}
