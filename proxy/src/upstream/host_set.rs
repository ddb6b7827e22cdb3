//! A cluster's host set: its hosts, the subset eligible now (priority, health, panic), and
//! the hashing tables built over it once and shared by the workers.

use std::sync::Arc;

use super::host::{Host, HostHealth};

/// Envoy's default `overprovisioning_factor`.
pub const DEFAULT_OVERPROVISIONING: u32 = 140;

/// A cluster's hosts and the subset a load balancer may pick from.
pub struct HostSet {
    /// Every host, in configuration order.
    pub hosts: Vec<Arc<Host>>,
    /// Indices into `hosts` that are eligible now: the healthy hosts of the best priority
    /// that has any, or every host when the cluster is in panic mode.
    pub eligible: Vec<usize>,
    /// Whether `eligible` is the panic-mode set (Envoy's `lb_healthy_panic`).
    pub panic: bool,
    /// The assignment's `policy.overprovisioning_factor` (default 140): how much a
    /// locality's share of eligible hosts is inflated before it loses weight.
    pub overprovisioning: u32,
    /// A `MAGLEV` cluster's table over these hosts, built by the first worker to need it
    /// and shared by all (a table is large).
    maglev: std::sync::OnceLock<super::maglev::MaglevTable>,
    /// A `RING_HASH` cluster's ring over these hosts, likewise.
    ring: std::sync::OnceLock<super::ring_hash::Ring>,
    /// The hosts by address, built on first use (an `ORIGINAL_DST` cluster's lookups).
    by_address: std::sync::OnceLock<rustc_hash::FxHashMap<std::net::SocketAddr, usize>>,
}

impl HostSet {
    /// Computes the eligible subset with Envoy's panic threshold (percent; 0 disables).
    pub fn new(hosts: Vec<Arc<Host>>, panic_threshold: f64) -> HostSet {
        // Envoy's load balancers note when they first see a host healthy (its
        // `lastHcPassTime`, unless a health check set it): slow start counts from there.
        // Host sets are built as the main thread publishes them, when Envoy's workers see
        // them; Courier's balancers are built at their first pick, too late for it.
        let now = std::time::Instant::now();
        for h in hosts.iter().filter(|h| h.health == HostHealth::Healthy) {
            h.stats.healthy_since_or(now);
        }
        let healthy: Vec<usize> = hosts
            .iter()
            .enumerate()
            .filter(|(_, h)| h.health == HostHealth::Healthy)
            .map(|(i, _)| i)
            .collect();
        // Envoy routes to the highest-priority level with healthy hosts.
        let best_priority = healthy.iter().map(|&i| hosts[i].priority).min();
        let mut eligible: Vec<usize> = healthy
            .iter()
            .copied()
            .filter(|&i| Some(hosts[i].priority) == best_priority)
            .collect();
        if eligible.is_empty() {
            eligible = hosts
                .iter()
                .enumerate()
                .filter(|(_, h)| h.health == HostHealth::Degraded)
                .map(|(i, _)| i)
                .collect();
        }
        let total = hosts.len();
        let healthy_pct = if total == 0 {
            100.0
        } else {
            100.0 * healthy.len() as f64 / total as f64
        };
        let panic = total > 0 && panic_threshold > 0.0 && healthy_pct < panic_threshold;
        if panic {
            // Panic mode: Envoy balances over all hosts rather than overload the few healthy.
            eligible = (0..total).collect();
        }
        HostSet {
            hosts,
            eligible,
            panic,
            overprovisioning: DEFAULT_OVERPROVISIONING,
            maglev: std::sync::OnceLock::new(),
            ring: std::sync::OnceLock::new(),
            by_address: std::sync::OnceLock::new(),
        }
    }

    /// The hash ring over the eligible hosts, built on first use (a worker asking
    /// meanwhile waits for it, once per host set).
    pub fn ring(&self, min_ring_size: u64, max_ring_size: u64) -> &super::ring_hash::Ring {
        self.ring.get_or_init(|| {
            super::ring_hash::Ring::build(&self.hosts, &self.eligible, min_ring_size, max_ring_size)
        })
    }

    /// The Maglev table of `size` slots over the eligible hosts, built on first use (a
    /// worker asking meanwhile waits for it, once per host set).
    pub fn maglev(&self, size: u64) -> &super::maglev::MaglevTable {
        self.maglev
            .get_or_init(|| super::maglev::MaglevTable::build(&self.hosts, &self.eligible, size))
    }

    /// The host at `address`.
    pub fn find(&self, address: std::net::SocketAddr) -> Option<&Arc<Host>> {
        let index = self.by_address.get_or_init(|| {
            self.hosts
                .iter()
                .enumerate()
                .map(|(i, h)| (h.address, i))
                .collect()
        });
        index.get(&address).and_then(|&i| self.hosts.get(i))
    }

    /// Number of hosts whose health is `Healthy`.
    pub fn healthy_count(&self) -> usize {
        self.hosts
            .iter()
            .filter(|h| h.health == HostHealth::Healthy)
            .count()
    }
}

/// A host set of healthy hosts `10.0.0.<i + 1>:80` with these weights, for tests.
#[cfg(test)]
pub(crate) fn test_host_set(weights: &[u32]) -> HostSet {
    let hosts = weights
        .iter()
        .enumerate()
        .map(|(i, &weight)| {
            Arc::new(Host::new(
                std::net::SocketAddr::from(([10, 0, 0, i as u8 + 1], 80)),
                weight,
                HostHealth::Healthy,
                0,
                super::host::HostStats::new(&crate::stats::Store::new(1)),
                None,
                None,
            ))
        })
        .collect();
    HostSet::new(hosts, 50.0)
}
