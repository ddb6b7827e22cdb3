//! Upstream hosts: an endpoint's address, weight, health and stats.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::Arc;

use super::health_flags::HealthFlags;
use crate::stats::{Counter, Gauge, Store};

/// What a host keeps across endpoint updates that keep it (same address): Envoy's
/// `/clusters` stats (`cx_total`, `cx_active`, …) and the health the main thread's health
/// checkers and outlier detector found.
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
    /// Health flags set by active health checking and outlier detection (written by the
    /// main thread only; workers see them through the host set it publishes).
    flags: AtomicU32,
    /// Whether active health checking has had a first result for the host.
    hc_checked: AtomicBool,
    /// Outlier detection's per-host counters, when the cluster has it.
    pub outlier: super::outlier_detection::host_monitor::HostMonitor,
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
            flags: AtomicU32::new(0),
            hc_checked: AtomicBool::new(false),
            outlier: Default::default(),
        })
    }

    /// The flags health checking and outlier detection set.
    pub fn flags(&self) -> HealthFlags {
        HealthFlags::from_bits(self.flags.load(Ordering::Relaxed))
    }

    /// Sets (`on`) or clears `flag`; whether that changed anything.
    pub fn set_flag(&self, flag: HealthFlags, on: bool) -> bool {
        let old = if on {
            self.flags.fetch_or(flag.bits(), Ordering::Relaxed)
        } else {
            self.flags.fetch_and(!flag.bits(), Ordering::Relaxed)
        };
        (old & flag.bits() != 0) != on
    }

    /// Whether active health checking has had a first result for the host.
    pub fn hc_checked(&self) -> bool {
        self.hc_checked.load(Ordering::Relaxed)
    }

    /// Records that active health checking had a result for the host.
    pub fn set_hc_checked(&self) {
        self.hc_checked.store(true, Ordering::Relaxed);
    }

    /// A host of a cluster with active health checking starts as failing it until its
    /// first check (as Envoy's); a cluster without loses the flags checking set.
    pub fn prepare_for(&self, health_checked: bool) {
        if health_checked {
            if !self.hc_checked() {
                self.set_flag(HealthFlags::FAILED_ACTIVE_HC, true);
            }
        } else {
            self.set_flag(
                HealthFlags::FAILED_ACTIVE_HC
                    | HealthFlags::DEGRADED_ACTIVE_HC
                    | HealthFlags::ACTIVE_HC_TIMEOUT,
                false,
            );
            self.hc_checked.store(false, Ordering::Relaxed);
        }
    }
}

/// A host's health as far as host selection is concerned.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HostHealth {
    /// EDS UNKNOWN or HEALTHY, and no failed check: eligible.
    Healthy,
    /// EDS DEGRADED or a degraded active check: eligible only when no healthy host exists.
    Degraded,
    /// EDS UNHEALTHY, DRAINING or TIMEOUT, a failed active check or an outlier ejection:
    /// not picked (outside panic mode).
    Unhealthy,
}

/// One upstream endpoint.
pub struct Host {
    /// Where to connect.
    pub address: SocketAddr,
    /// `load_balancing_weight` (default 1).
    pub weight: u32,
    /// Health as reported by EDS (`Healthy` for other hosts).
    pub eds_health: HostHealth,
    /// Health for host selection: EDS's, with what checking and outlier detection found
    /// when the host was published.
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
}

impl Host {
    /// A host with its EDS health; its selection health is computed from `stats`' flags.
    pub fn new(
        address: SocketAddr,
        weight: u32,
        eds_health: HostHealth,
        priority: u32,
        stats: Arc<HostStats>,
        hostname: Option<Arc<str>>,
        transport_match: Option<u16>,
    ) -> Host {
        Host {
            address,
            weight,
            eds_health,
            health: effective_health(eds_health, stats.flags()),
            priority,
            stats,
            hostname,
            transport_match,
        }
    }

    /// This host with its selection health recomputed from the current flags.
    pub fn refreshed(&self) -> Host {
        Host::new(
            self.address,
            self.weight,
            self.eds_health,
            self.priority,
            self.stats.clone(),
            self.hostname.clone(),
            self.transport_match,
        )
    }

    /// Envoy's `health_flags` text for `/clusters`: `healthy`, or each flag as
    /// `/failed_active_hc`…
    pub fn health_flags_text(&self) -> String {
        let mut flags = self.stats.flags();
        match self.eds_health {
            HostHealth::Unhealthy => flags |= HealthFlags::FAILED_EDS_HEALTH,
            HostHealth::Degraded => flags |= HealthFlags::DEGRADED_EDS_HEALTH,
            HostHealth::Healthy => {}
        }
        flags.to_string()
    }
}

/// Selection health from EDS's and the flags checking set.
fn effective_health(eds: HostHealth, flags: HealthFlags) -> HostHealth {
    if eds == HostHealth::Unhealthy || flags.intersects(HealthFlags::UNHEALTHY) {
        HostHealth::Unhealthy
    } else if eds == HostHealth::Degraded || flags.intersects(HealthFlags::DEGRADED_ACTIVE_HC) {
        HostHealth::Degraded
    } else {
        HostHealth::Healthy
    }
}
