//! Upstream hosts: an endpoint's address, weight, health and stats.

use std::net::SocketAddr;
use std::sync::Arc;

use crate::stats::{Counter, Gauge, Store};

/// Per-host stats (Envoy's `/clusters` `cx_total`, `cx_active`, …). They survive endpoint
/// updates that keep the host.
pub struct HostStats {
    /// Connections opened to the host.
    pub cx_total: Arc<Counter>,
    /// Connections open now.
    pub cx_active: Arc<Gauge>,
    /// Failed connection attempts.
    pub cx_connect_fail: Arc<Counter>,
    /// Requests sent.
    pub rq_total: Arc<Counter>,
    /// Requests in flight.
    pub rq_active: Arc<Gauge>,
}

impl HostStats {
    /// Fresh stats; like Envoy's they appear in `/clusters`, not in `/stats`.
    pub fn new(store: &Store) -> Arc<HostStats> {
        Arc::new(HostStats {
            cx_total: store.detached_counter(),
            cx_active: store.detached_gauge(),
            cx_connect_fail: store.detached_counter(),
            rq_total: store.detached_counter(),
            rq_active: store.detached_gauge(),
        })
    }
}

/// EDS `health_status` as far as host selection is concerned.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HostHealth {
    /// UNKNOWN or HEALTHY: eligible.
    Healthy,
    /// DEGRADED: eligible only when no healthy host exists.
    Degraded,
    /// UNHEALTHY, DRAINING or TIMEOUT: not picked (outside panic mode).
    Unhealthy,
}

/// One upstream endpoint.
pub struct Host {
    /// Where to connect.
    pub address: SocketAddr,
    /// `load_balancing_weight` (default 1).
    pub weight: u32,
    /// Health as reported by EDS.
    pub health: HostHealth,
    /// Locality priority (0 is the highest).
    pub priority: u32,
    /// Shared stats.
    pub stats: Arc<HostStats>,
    /// The endpoint's hostname, what `auto_host_rewrite` sends: the name a DNS cluster
    /// resolved, or an EDS/static endpoint's `hostname` (none by default).
    pub hostname: Option<Arc<str>>,
    /// The `transport_socket_matches` entry its metadata chose (`None`: the cluster's
    /// `transport_socket`).
    pub transport_match: Option<u16>,
    /// Its locality: an index among the assignment's distinct localities (Envoy's
    /// order: by region, zone and sub-zone), for locality-weighted balancing.
    pub locality: u32,
    /// Its locality's `load_balancing_weight` (0 when unset, as Envoy reads it).
    pub locality_weight: u32,
    /// When the host was created: kept across endpoint updates that keep its address, as
    /// Envoy keeps the host, for slow start.
    pub created: std::time::Instant,
}
