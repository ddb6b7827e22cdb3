//! Upstream hosts: an endpoint's address, weight, health and stats.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicI64, AtomicU32, Ordering};
use std::sync::{Arc, LazyLock};
use std::time::{Duration, Instant};

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
    /// Envoy's `lastHcPassTime`, where slow start counts a host's age from: when active
    /// health checking last found the host healthy again, else when a load balancer first
    /// saw it healthy. Nanoseconds from [`EPOCH`] ([`UNSET`]: not yet).
    healthy_since: AtomicI64,
}

/// The origin of [`HostStats`]' timestamps (kept in atomics, signed: a time may precede
/// it).
static EPOCH: LazyLock<Instant> = LazyLock::new(Instant::now);

/// No timestamp.
const UNSET: i64 = i64::MIN;

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
            healthy_since: AtomicI64::new(UNSET),
        })
    }

    /// When the host became healthy, as far as slow start is concerned (Envoy's
    /// `lastHcPassTime`).
    pub fn healthy_since(&self) -> Option<Instant> {
        match self.healthy_since.load(Ordering::Relaxed) {
            UNSET => None,
            n => Some(Self::instant(n)),
        }
    }

    /// Records that the host became healthy `at` (active health checking's pass).
    pub fn set_healthy_since(&self, at: Instant) {
        self.healthy_since.store(Self::stamp(at), Ordering::Relaxed);
    }

    /// When the host became healthy, recording `now` if nothing did before (a load
    /// balancer seeing a healthy host with no check passed, as Envoy's).
    pub fn healthy_since_or(&self, now: Instant) -> Instant {
        match self.healthy_since.compare_exchange(
            UNSET,
            Self::stamp(now),
            Ordering::Relaxed,
            Ordering::Relaxed,
        ) {
            Ok(_) => now,
            Err(n) => Self::instant(n),
        }
    }

    fn stamp(at: Instant) -> i64 {
        // i64 nanoseconds span 292 years either way: saturating is never reached, and
        // -i64::MAX is above UNSET.
        let nanos = |d: Duration| i64::try_from(d.as_nanos()).unwrap_or(i64::MAX);
        match at.checked_duration_since(*EPOCH) {
            Some(after) => nanos(after),
            None => -nanos(EPOCH.duration_since(at)),
        }
    }

    fn instant(stamp: i64) -> Instant {
        let d = Duration::from_nanos(stamp.unsigned_abs());
        if stamp >= 0 {
            *EPOCH + d
        } else {
            EPOCH.checked_sub(d).unwrap_or(*EPOCH)
        }
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
    /// Its locality: an index among the assignment's distinct localities (Envoy's
    /// order: by region, zone and sub-zone), for locality-weighted balancing.
    pub locality: u32,
    /// Its locality's `load_balancing_weight` (0 when unset, as Envoy reads it).
    pub locality_weight: u32,
    /// `envoy.lb` metadata `canary: true` (what the `omit_canary_hosts` retry host
    /// predicate avoids).
    pub canary: bool,
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
            locality: 0,
            locality_weight: 0,
            canary: false,
        }
    }

    /// This host marked canary (its `envoy.lb` metadata says `canary: true`).
    pub fn with_canary(mut self, canary: bool) -> Host {
        self.canary = canary;
        self
    }

    /// This host in `locality` (see [`Host::locality`]) of weight `weight`.
    pub fn in_locality(mut self, locality: u32, weight: u32) -> Host {
        self.locality = locality;
        self.locality_weight = weight;
        self
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
        .in_locality(self.locality, self.locality_weight)
        .with_canary(self.canary)
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
