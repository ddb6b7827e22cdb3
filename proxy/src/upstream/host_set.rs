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
    /// Indices into `hosts` that are eligible now: those of the level that takes the
    /// load (the best priority's healthy hosts, usually; all of its hosts in panic). When
    /// several levels share the load, the first's (see [`HostSet::levels`]).
    pub eligible: Vec<usize>,
    /// Whether `eligible` is a panic-mode set (Envoy's `lb_healthy_panic`).
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
    /// When several priority levels (or a level's healthy and degraded hosts) take load:
    /// each level's host set, after the cumulative percentage of the load up to it.
    split: Option<Vec<(u32, Arc<HostSet>)>>,
}

/// One level that takes load: a priority's healthy hosts, or its degraded ones (all of
/// its hosts when it is in panic).
#[derive(Debug, PartialEq)]
struct Level {
    load: u32,
    members: Vec<usize>,
    panic: bool,
}

/// Envoy's priority loads (`LoadBalancerBase::recalculatePerPriorityState`): each
/// priority is available in proportion to its healthy (then degraded) hosts, inflated by
/// the overprovisioning factor and capped at 100; the load goes to the best priorities
/// first and spills over to the next as their availability falls; the loads are
/// normalised when the total availability is below 100. When no host anywhere is
/// healthy or degraded (total panic) the load follows each priority's host count. A
/// priority in panic (healthy and degraded below the panic threshold) picks among all its
/// hosts. Returns the levels that take load, healthy ones first.
fn priority_loads(hosts: &[Arc<Host>], panic_threshold: f64, overprovisioning: u32) -> Vec<Level> {
    let levels = hosts
        .iter()
        .map(|h| h.priority as usize + 1)
        .max()
        .unwrap_or(0);
    if levels == 0 {
        return Vec::new();
    }
    let mut total = vec![0u32; levels];
    let mut healthy = vec![0u32; levels];
    let mut degraded = vec![0u32; levels];
    for h in hosts {
        let p = h.priority as usize;
        total[p] += 1;
        match h.health {
            HostHealth::Healthy => healthy[p] += 1,
            HostHealth::Degraded => degraded[p] += 1,
            HostHealth::Unhealthy => {}
        }
    }
    // In u64, as Envoy: the factor comes from the configuration.
    let availability = |count: &[u32], p: usize| -> u32 {
        (u64::from(overprovisioning) * u64::from(count[p]))
            .checked_div(u64::from(total[p]))
            .map_or(0, |a| a.min(100) as u32)
    };
    let health: Vec<u32> = (0..levels).map(|p| availability(&healthy, p)).collect();
    let degraded_availability: Vec<u32> = (0..levels).map(|p| availability(&degraded, p)).collect();
    let all_of = |p: usize| -> Vec<usize> {
        (0..hosts.len())
            .filter(|&i| hosts[i].priority as usize == p)
            .collect()
    };
    let normalized: u32 = health
        .iter()
        .chain(&degraded_availability)
        .sum::<u32>()
        .min(100);
    // Panic disabled and nothing available: all the load on the first priority's healthy
    // hosts, of which there are none ("no healthy upstream"), as Envoy.
    if normalized == 0 && panic_threshold <= 0.0 {
        return vec![Level {
            load: 100,
            members: Vec::new(),
            panic: false,
        }];
    }
    // As Envoy, no priority panics while the priorities together are fully available; an
    // empty priority counts as in panic.
    let panic: Vec<bool> = (0..levels)
        .map(|p| {
            normalized < 100
                && panic_threshold > 0.0
                && (total[p] == 0
                    || 100.0 * f64::from(healthy[p] + degraded[p]) / f64::from(total[p])
                        < panic_threshold)
        })
        .collect();
    let of = |p: usize, want: HostHealth| -> Vec<usize> {
        if panic[p] {
            return all_of(p);
        }
        (0..hosts.len())
            .filter(|&i| hosts[i].priority as usize == p && hosts[i].health == want)
            .collect()
    };
    let mut out = Vec::new();
    if panic.iter().all(|&p| p) {
        // Total panic: every host of every priority, by the priorities' host counts.
        let all: u32 = total.iter().sum();
        let mut left = 100;
        for (p, &count) in total.iter().enumerate() {
            let load = (100 * count / all.max(1)).min(left);
            left -= load;
            if count > 0 {
                out.push(Level {
                    load,
                    members: all_of(p),
                    panic: true,
                });
            }
        }
        if let Some(first) = out.first_mut() {
            first.load += left;
        }
        return out.into_iter().filter(|l| l.load > 0).collect();
    }
    let mut left = 100u32;
    let mut healthy_load = vec![0u32; levels];
    for p in 0..levels {
        healthy_load[p] = (health[p] * 100 / normalized).min(left);
        left -= healthy_load[p];
    }
    let mut degraded_load = vec![0u32; levels];
    for p in 0..levels {
        degraded_load[p] = (degraded_availability[p] * 100 / normalized).min(left);
        left -= degraded_load[p];
    }
    // Rounding leftovers go to the first available level, healthy before degraded.
    if left > 0 {
        if let Some(p) = (0..levels).find(|&p| health[p] > 0) {
            healthy_load[p] += left;
        } else if let Some(p) = (0..levels).find(|&p| degraded_availability[p] > 0) {
            degraded_load[p] += left;
        }
    }
    // The healthy levels first, then the degraded ones, as Envoy picks them.
    for (loads, health) in [
        (&healthy_load, HostHealth::Healthy),
        (&degraded_load, HostHealth::Degraded),
    ] {
        for p in (0..levels).filter(|&p| loads[p] > 0) {
            out.push(Level {
                load: loads[p],
                members: of(p, health),
                panic: panic[p],
            });
        }
    }
    out
}

impl HostSet {
    /// A host set with Envoy's panic threshold (percent; 0 disables) and the default
    /// overprovisioning factor.
    pub fn new(hosts: Vec<Arc<Host>>, panic_threshold: f64) -> HostSet {
        HostSet::with_overprovisioning(hosts, panic_threshold, DEFAULT_OVERPROVISIONING)
    }

    /// A host set: its priorities' loads as Envoy computes them ([`priority_loads`]), the
    /// eligible hosts of each level that takes load, and its panic state.
    pub fn with_overprovisioning(
        hosts: Vec<Arc<Host>>,
        panic_threshold: f64,
        overprovisioning: u32,
    ) -> HostSet {
        // Envoy's load balancers note when they first see a host healthy (its
        // `lastHcPassTime`, unless a health check set it): slow start counts from there.
        // Host sets are built as the main thread publishes them, when Envoy's workers see
        // them; Courier's balancers are built at their first pick, too late for it.
        let now = std::time::Instant::now();
        for h in hosts.iter().filter(|h| h.health == HostHealth::Healthy) {
            h.stats.healthy_since_or(now);
        }
        let mut levels = priority_loads(&hosts, panic_threshold, overprovisioning);
        let (eligible, panic) = match levels.first_mut() {
            Some(l) => (std::mem::take(&mut l.members), l.panic),
            None => (Vec::new(), false),
        };
        // More than one level takes load: each gets a host set of its own, picked by
        // its share of the load.
        let split = (levels.len() > 1).then(|| {
            let mut cumulative = 0;
            let mut out = Vec::with_capacity(levels.len());
            for (i, l) in levels.into_iter().enumerate() {
                cumulative += l.load;
                let members = if i == 0 { eligible.clone() } else { l.members };
                out.push((
                    cumulative,
                    Arc::new(HostSet::level(
                        hosts.clone(),
                        members,
                        l.panic,
                        overprovisioning,
                    )),
                ));
            }
            out
        });
        let mut set = HostSet::level(hosts, eligible, panic, overprovisioning);
        set.split = split;
        set
    }

    /// One level's host set: `eligible` are the hosts it picks from.
    fn level(
        hosts: Vec<Arc<Host>>,
        eligible: Vec<usize>,
        panic: bool,
        overprovisioning: u32,
    ) -> HostSet {
        HostSet {
            hosts,
            eligible,
            panic,
            overprovisioning,
            split: None,
            maglev: std::sync::OnceLock::new(),
            ring: std::sync::OnceLock::new(),
            by_address: std::sync::OnceLock::new(),
        }
    }

    /// When more than one priority level takes load: each level's host set, after the
    /// cumulative percentage of the load up to it (a draw in `0..100` below it picks it).
    pub fn levels(&self) -> Option<&[(u32, Arc<HostSet>)]> {
        self.split.as_deref()
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

#[cfg(test)]
mod tests {
    use super::*;

    /// Hosts by (priority, health).
    fn hosts(spec: &[(u32, HostHealth)]) -> Vec<Arc<Host>> {
        spec.iter()
            .enumerate()
            .map(|(i, &(priority, health))| {
                Arc::new(Host::new(
                    std::net::SocketAddr::from(([10, 0, 0, i as u8 + 1], 80)),
                    1,
                    health,
                    priority,
                    super::super::host::HostStats::new(&crate::stats::Store::new(1)),
                    None,
                    None,
                ))
            })
            .collect()
    }

    fn loads(spec: &[(u32, HostHealth)]) -> Vec<(u32, Vec<usize>, bool)> {
        priority_loads(&hosts(spec), 50.0, DEFAULT_OVERPROVISIONING)
            .into_iter()
            .map(|l| (l.load, l.members, l.panic))
            .collect()
    }

    use HostHealth::{Degraded as D, Healthy as H, Unhealthy as U};

    #[test]
    fn load_spills_to_the_next_priority_as_envoy_computes_it() {
        // P0 half healthy: 1.4 x 50% = 70% stays, 30% spills to P1.
        assert_eq!(
            loads(&[(0, H), (0, U), (1, H)]),
            [(70, vec![0], false), (30, vec![2], false)]
        );
        // P0 all down: everything to P1.
        assert_eq!(loads(&[(0, U), (1, H)]), [(100, vec![1], false)]);
        // Healthy hosts anywhere come before degraded ones.
        assert_eq!(loads(&[(0, D), (1, H)]), [(100, vec![1], false)]);
        assert_eq!(loads(&[(0, D), (0, U)]), [(100, vec![0], false)]);
    }

    #[test]
    fn panic_and_normalisation_as_envoy() {
        // A quarter healthy: availability 35 normalised to the whole load, and in panic
        // (below 50%) the level picks among all its hosts.
        assert_eq!(
            loads(&[(0, H), (0, U), (0, U), (0, U)]),
            [(100, vec![0, 1, 2, 3], true)]
        );
        // Nothing healthy anywhere: by host counts, every host.
        assert_eq!(
            loads(&[(0, U), (0, U), (1, U)]),
            [(67, vec![0, 1], true), (33, vec![2], true)]
        );
        // Fully available together: no priority panics, whatever its own share.
        assert_eq!(
            loads(&[(0, H), (0, U), (0, U), (0, U), (1, H)]),
            [(35, vec![0], false), (65, vec![4], false)]
        );
        // Every priority in panic: by host counts.
        assert_eq!(
            loads(&[
                (0, H),
                (0, U),
                (0, U),
                (0, U),
                (1, H),
                (1, U),
                (1, U),
                (1, U),
                (1, U),
                (1, U),
                (1, U),
                (1, U)
            ]),
            [(34, vec![0, 1, 2, 3], true), (66, (4..12).collect(), true)]
        );
        // Panic disabled, nothing available: no host.
        assert_eq!(
            priority_loads(&hosts(&[(0, U)]), 0.0, DEFAULT_OVERPROVISIONING)
                .into_iter()
                .map(|l| (l.load, l.members))
                .collect::<Vec<_>>(),
            [(100, vec![])]
        );
    }
}
