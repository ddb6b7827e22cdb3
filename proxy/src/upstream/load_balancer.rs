//! Worker-local load balancing (Envoy's `LoadBalancer`), one state per cluster per worker.
//!
//! State is rebuilt when the cluster's host set changes (pointer identity of the published
//! `Arc<HostSet>`), so an endpoint update costs nothing until the next pick. With
//! locality-weighted balancing a locality is picked first (Envoy's EDF over the
//! localities' effective weights), then a host among the locality's eligible ones. Round
//! robin, least request and random keep their state per such source of hosts; weighted
//! least request and slow start schedule by EDF as Envoy's `EdfLoadBalancerBase`. A pick
//! allocates nothing.

use std::cmp::Ordering;
use std::collections::BinaryHeap;
use std::sync::Arc;
use std::time::Instant;

use super::cluster::{ClusterInfo, LbPolicy, LeastRequest, SlowStart};
use super::host::Host;
use super::host_set::HostSet;
use super::maglev::MaglevTable;
use super::ring_hash::Ring;

/// Load-balancer state of every cluster this worker has picked from.
#[derive(Default)]
pub struct LbStates {
    /// By cluster, one state per priority level that takes load.
    states: rustc_hash::FxHashMap<String, Vec<Option<LbState>>>,
}

struct LbState {
    hosts: Arc<HostSet>,
    /// The eligible hosts as one source of hosts (Envoy's `HostsSource`), or, with
    /// locality-weighted balancing, one source per locality (indexed by
    /// [`Host::locality`]; an empty one for a locality without eligible hosts).
    sources: Vec<Picker>,
    /// Locality-weighted balancing: the schedule of the localities with a positive
    /// effective weight (`EdfEntry::slot` indexes `sources`), and those weights. Empty
    /// otherwise, or when no locality has weight (then `sources[0]` has every eligible
    /// host, as Envoy falls back to them).
    localities: Edf,
    locality_weights: Vec<f64>,
    /// A `RING_HASH` ring of this worker's own, when the host set's shared one has other
    /// sizes (a cluster update that changed only them).
    own_ring: Option<Ring>,
    /// A `MAGLEV` table of this worker's own, when the host set's shared one has another
    /// size (a cluster update that changed only the table size).
    own_maglev: Option<MaglevTable>,
    /// The policy the state was built for, whether locality-weighted, its slow start.
    policy: Policy,
}

/// What a state is built for: the policy, locality weighting, slow start.
type Policy = (LbPolicy, bool, Option<SlowStart>);

/// The state of one source of hosts.
struct Picker {
    /// Indices into the host set's `hosts`.
    members: Vec<usize>,
    /// Whether the members' weights differ.
    weighted: bool,
    /// Smooth weighted round robin: current weights per member.
    current: Vec<i64>,
    total_weight: i64,
    /// Plain round robin position when all weights are equal.
    next: usize,
    /// Weighted LEAST_REQUEST, or either policy in slow start: Envoy's
    /// earliest-deadline-first schedule, each member due again `1 / weight` after its last
    /// pick, its weight as of then (scaled down by its active requests, or by its age).
    edf: Edf,
    /// Slow start, when a host was in its window as the state was built: Envoy then
    /// schedules by EDF until the host set next changes, each weight scaled by the host's
    /// age while it is in the window.
    slow_start: Option<SlowStart>,
}

/// An earliest-deadline-first schedule (Envoy's `EdfScheduler`).
#[derive(Default)]
struct Edf {
    heap: BinaryHeap<EdfEntry>,
    /// The schedule's clock: the deadline of the last pick.
    now: f64,
    /// The last `EdfEntry::seq` given.
    seq: u64,
}

impl Edf {
    /// Schedules `slot` with `weight`, first due at a random point of its first period,
    /// so that workers (each with its own schedule) do not all start on the same one.
    fn add_randomly(&mut self, slot: usize, weight: f64) {
        self.seq += 1;
        self.heap.push(EdfEntry {
            deadline: fastrand::f64() / weight,
            seq: self.seq,
            slot,
        });
    }

    /// The slot due first, scheduled again with `weight(slot)` (as of now).
    fn pick(&mut self, weight: impl Fn(usize) -> f64) -> Option<usize> {
        let mut entry = self.heap.pop()?;
        self.now = entry.deadline;
        entry.deadline = self.now + 1.0 / weight(entry.slot);
        self.seq += 1;
        entry.seq = self.seq;
        let slot = entry.slot;
        self.heap.push(entry);
        Some(slot)
    }
}

/// A slot in an EDF schedule. The heap is a max-heap, so the order is reversed: the
/// earliest deadline (then the earliest added) comes out first.
struct EdfEntry {
    deadline: f64,
    /// Ties go to the entry added first, as Envoy's `order_offset`.
    seq: u64,
    slot: usize,
}

impl PartialEq for EdfEntry {
    fn eq(&self, other: &Self) -> bool {
        self.cmp(other) == Ordering::Equal
    }
}
impl Eq for EdfEntry {}
impl PartialOrd for EdfEntry {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}
impl Ord for EdfEntry {
    fn cmp(&self, other: &Self) -> Ordering {
        other
            .deadline
            .total_cmp(&self.deadline)
            .then(other.seq.cmp(&self.seq))
    }
}

/// A host's weight in an EDF schedule: its weight, as least request scales it, and as
/// slow start scales it while the host is in the window.
fn edf_weight(
    host: &Host,
    lr: Option<LeastRequest>,
    slow_start: Option<SlowStart>,
    now: Instant,
) -> f64 {
    let weight = match lr {
        Some(lr) => least_request_weight(host, lr.active_request_bias),
        None => f64::from(host.weight.max(1)),
    };
    // As Envoy, only a healthy host ramps up, from when it became healthy.
    match (slow_start, host.stats.healthy_since()) {
        (Some(s), Some(since)) if host.health == super::host::HostHealth::Healthy => {
            weight * s.factor(now.saturating_duration_since(since))
        }
        _ => weight,
    }
}

/// A host's LEAST_REQUEST weight with unequal weights, as Envoy's:
/// `weight / (active_requests + 1)^bias`.
fn least_request_weight(host: &Host, bias: f64) -> f64 {
    let weight = f64::from(host.weight.max(1));
    let active = host.stats.rq_active.value().max(0) as f64 + 1.0;
    if bias == 1.0 {
        weight / active
    } else if bias == 0.0 {
        weight
    } else {
        weight / active.powf(bias)
    }
}

impl Picker {
    fn new(hosts: &[Arc<Host>], members: Vec<usize>, policy: Policy, now: Instant) -> Picker {
        let weight = |i: usize| hosts[i].weight;
        let weighted = members.windows(2).any(|w| weight(w[0]) != weight(w[1]));
        let total_weight = members.iter().map(|&i| i64::from(weight(i))).sum();
        // Start each worker at a random position so workers don't all hit host 0 first.
        let next = if members.is_empty() {
            0
        } else {
            fastrand::usize(..members.len())
        };
        // Envoy's `noHostsAreInSlowStart`, as of this host set: did a healthy host become
        // healthy within the window?
        let slow_start = policy.2.filter(|s| {
            members.iter().any(|&i| {
                let h = &hosts[i];
                h.health == super::host::HostHealth::Healthy
                    && h.stats
                        .healthy_since()
                        .is_some_and(|since| now.saturating_duration_since(since) <= s.window)
            })
        });
        let mut edf = Edf::default();
        let lr = match policy.0 {
            LbPolicy::LeastRequest(lr) => Some(lr),
            _ => None,
        };
        if slow_start.is_some() || (weighted && lr.is_some()) {
            for (slot, &i) in members.iter().enumerate() {
                edf.add_randomly(slot, edf_weight(&hosts[i], lr, slow_start, now));
            }
        }
        Picker {
            current: vec![0; members.len()],
            members,
            weighted,
            total_weight,
            next,
            edf,
            slow_start,
        }
    }

    fn round_robin(&mut self, hosts: &[Arc<Host>]) -> Option<usize> {
        let members = &self.members;
        if members.is_empty() {
            return None;
        }
        let pick = if let Some(slow_start) = self.slow_start {
            let now = Instant::now();
            self.edf
                .pick(|slot| edf_weight(&hosts[members[slot]], None, Some(slow_start), now))?
        } else if self.weighted {
            // Smooth weighted round robin: same long-run shares as Envoy's EDF scheduler,
            // interleaved rather than bursty.
            let mut best = 0;
            for (i, &host) in members.iter().enumerate() {
                self.current[i] += i64::from(hosts[host].weight);
                if self.current[i] > self.current[best] {
                    best = i;
                }
            }
            self.current[best] -= self.total_weight;
            best
        } else {
            let p = self.next % members.len();
            self.next = self.next.wrapping_add(1);
            p
        };
        Some(members[pick])
    }

    fn random(&self) -> Option<usize> {
        // Envoy's RANDOM draws uniformly among the eligible hosts: weights play no part.
        if self.members.is_empty() {
            return None;
        }
        Some(self.members[fastrand::usize(..self.members.len())])
    }

    fn least_request(&mut self, hosts: &[Arc<Host>], config: LeastRequest) -> Option<usize> {
        let members = &self.members;
        let n = members.len();
        if n == 0 {
            return None;
        }
        // Envoy's load is the host's active requests (across workers), not connections.
        let load = |slot: usize| hosts[members[slot]].stats.rq_active.value();
        let slot = if self.weighted || self.slow_start.is_some() {
            // Envoy's EDF: the host due first is picked and scheduled again with its weight
            // as of now (the request being picked for is not yet active on it).
            let now = Instant::now();
            let slow_start = self.slow_start;
            self.edf
                .pick(|slot| edf_weight(&hosts[members[slot]], Some(config), slow_start, now))?
        } else if config.full_scan {
            // Every host; ties broken uniformly at random (reservoir sampling), as Envoy.
            let mut best = 0;
            let mut tied = 1u32;
            for slot in 1..n {
                match load(slot).cmp(&load(best)) {
                    Ordering::Less => {
                        best = slot;
                        tied = 1;
                    }
                    Ordering::Equal => {
                        tied += 1;
                        if fastrand::u32(..tied) == 0 {
                            best = slot;
                        }
                    }
                    Ordering::Greater => {}
                }
            }
            best
        } else {
            // `choice_count` random hosts (with replacement, as Envoy); the first sampled
            // keeps a tie.
            let mut best = fastrand::usize(..n);
            for _ in 1..config.choice_count {
                let sampled = fastrand::usize(..n);
                if load(sampled) < load(best) {
                    best = sampled;
                }
            }
            best
        };
        Some(members[slot])
    }
}

impl LbState {
    fn new(hosts: Arc<HostSet>, (policy, locality_weighted, slow_start): Policy) -> LbState {
        let now = Instant::now();
        let picker_policy = (policy, locality_weighted, slow_start);
        let own_ring = match policy {
            LbPolicy::RingHash {
                min_ring_size,
                max_ring_size,
            } if !hosts
                .ring(min_ring_size, max_ring_size)
                .built_with(min_ring_size, max_ring_size) =>
            {
                Some(Ring::build(
                    &hosts.hosts,
                    &hosts.eligible,
                    min_ring_size,
                    max_ring_size,
                ))
            }
            _ => None,
        };
        let own_maglev = match policy {
            LbPolicy::Maglev { table_size } if hosts.maglev(table_size).size() != table_size => {
                Some(MaglevTable::build(
                    &hosts.hosts,
                    &hosts.eligible,
                    table_size,
                ))
            }
            _ => None,
        };
        let mut localities = Edf::default();
        let mut locality_weights = Vec::new();
        let mut sources = Vec::new();
        // In panic Envoy balances over every host, localities aside.
        if locality_weighted && !hosts.panic && !hosts.eligible.is_empty() {
            locality_weights = locality_weights_of(&hosts);
            for (l, &w) in locality_weights.iter().enumerate() {
                if w > 0.0 {
                    localities.add_randomly(l, w);
                }
            }
            if !localities.heap.is_empty() {
                sources = (0..locality_weights.len())
                    .map(|l| {
                        let members = hosts
                            .eligible
                            .iter()
                            .copied()
                            .filter(|&i| hosts.hosts[i].locality as usize == l)
                            .collect();
                        Picker::new(&hosts.hosts, members, picker_policy, now)
                    })
                    .collect();
            }
        }
        if sources.is_empty() {
            sources.push(Picker::new(
                &hosts.hosts,
                hosts.eligible.clone(),
                picker_policy,
                now,
            ));
        }
        LbState {
            sources,
            localities,
            locality_weights,
            own_ring,
            own_maglev,
            policy: picker_policy,
            hosts,
        }
    }
}

/// The source to pick from: a locality by its schedule, else the only one.
fn source<'a>(
    sources: &'a mut [Picker],
    localities: &mut Edf,
    weights: &[f64],
) -> Option<&'a mut Picker> {
    let i = if localities.heap.is_empty() {
        0
    } else {
        localities.pick(|l| weights[l])?
    };
    sources.get_mut(i)
}

/// Each locality's effective weight, as Envoy's `effectiveLocalityWeight`: its weight
/// times the share of its hosts that are eligible, inflated by the overprovisioning
/// factor and capped at 1. A locality without hosts at the eligible priority weighs 0.
fn locality_weights_of(hosts: &HostSet) -> Vec<f64> {
    let Some(priority) = hosts.eligible.first().map(|&i| hosts.hosts[i].priority) else {
        return Vec::new();
    };
    let count = hosts
        .hosts
        .iter()
        .map(|h| h.locality as usize + 1)
        .max()
        .unwrap_or(0);
    let mut all = vec![0u32; count];
    let mut eligible = vec![0u32; count];
    let mut weight = vec![0u32; count];
    for h in hosts.hosts.iter().filter(|h| h.priority == priority) {
        all[h.locality as usize] += 1;
        weight[h.locality as usize] = h.locality_weight;
    }
    for &i in &hosts.eligible {
        eligible[hosts.hosts[i].locality as usize] += 1;
    }
    let factor = f64::from(hosts.overprovisioning) / 100.0;
    (0..count)
        .map(|l| {
            if all[l] == 0 {
                return 0.0;
            }
            let availability = f64::from(eligible[l]) / f64::from(all[l]);
            f64::from(weight[l]) * (factor * availability).min(1.0)
        })
        .collect()
}

impl LbStates {
    /// Picks a host of `cluster` per its policy; `None` when no host is eligible. `hash` is
    /// the request's (a route's `hash_policy`), for hashing policies; without one they pick
    /// at random, as Envoy's. `attempt` counts the picks a retry host predicate refused
    /// (hashing policies step away from the refused host).
    pub fn choose(
        &mut self,
        cluster: &ClusterInfo,
        hash: Option<u64>,
        attempt: u32,
    ) -> Option<Arc<Host>> {
        let policy = (
            cluster.lb_policy,
            cluster.locality_weighted,
            cluster.slow_start,
        );
        // The priority level: by the request's hash for hashing policies (a key keeps
        // its level), else at random, by the levels' shares of the load.
        let (slot, hosts) = match cluster.hosts.levels() {
            None => (0, &cluster.hosts),
            Some(levels) => {
                let hashing = matches!(
                    cluster.lb_policy,
                    LbPolicy::RingHash { .. } | LbPolicy::Maglev { .. }
                );
                let draw = match hash {
                    Some(h) if hashing => (h % 100) as u32,
                    _ => fastrand::u32(..100),
                };
                let i = levels
                    .iter()
                    .position(|(cumulative, _)| draw < *cumulative)
                    .unwrap_or(levels.len() - 1);
                (i, &levels[i].1)
            }
        };
        if !self.states.contains_key(&cluster.name) {
            self.states.insert(cluster.name.clone(), Vec::new());
        }
        let slots = self.states.get_mut(&cluster.name)?;
        // One slot per level that takes load now (fewer levels: the others' states go).
        let count = cluster.hosts.levels().map_or(1, <[_]>::len);
        slots.resize_with(count.max(slot + 1), || None);
        let state = match &mut slots[slot] {
            // A changed policy (a cluster update) needs its own state too.
            Some(s) if Arc::ptr_eq(&s.hosts, hosts) && s.policy == policy => s,
            entry => entry.insert(LbState::new(hosts.clone(), policy)),
        };
        let LbState {
            hosts: set,
            sources,
            localities,
            locality_weights,
            own_ring,
            own_maglev,
            ..
        } = state;
        let index = match cluster.lb_policy {
            LbPolicy::RoundRobin => {
                source(sources, localities, locality_weights)?.round_robin(&set.hosts)
            }
            LbPolicy::Random => source(sources, localities, locality_weights)?.random(),
            LbPolicy::LeastRequest(config) => {
                source(sources, localities, locality_weights)?.least_request(&set.hosts, config)
            }
            LbPolicy::RingHash {
                min_ring_size,
                max_ring_size,
            } => {
                let ring = match own_ring {
                    Some(r) => r,
                    None => set.ring(min_ring_size, max_ring_size),
                };
                ring.choose(hash.unwrap_or_else(|| fastrand::u64(..)), attempt)
            }
            LbPolicy::Maglev { table_size } => {
                let table = match own_maglev {
                    Some(t) => t,
                    None => set.maglev(table_size),
                };
                table.choose(hash.unwrap_or_else(|| fastrand::u64(..)), attempt)
            }
            // The cluster picks by each request's destination
            // ([`super::original_dst`]), never here.
            LbPolicy::ClusterProvided => None,
        }?;
        set.hosts.get(index).cloned()
    }

    /// Drops state of clusters that no longer exist.
    pub fn retain(&mut self, keep: impl Fn(&str) -> bool) {
        self.states.retain(|name, _| keep(name));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::upstream::host_set::test_host_set;

    fn state(weights: &[u32], lr: LeastRequest) -> LbState {
        LbState::new(
            Arc::new(test_host_set(weights)),
            (LbPolicy::LeastRequest(lr), false, None),
        )
    }

    /// How many of `picks` picks went to each host.
    fn shares(s: &mut LbState, lr: LeastRequest, picks: usize) -> Vec<usize> {
        let mut counts = vec![0; s.hosts.hosts.len()];
        for _ in 0..picks {
            let i = s.sources[0]
                .least_request(&s.hosts.hosts, lr)
                .expect("a host");
            counts[i] += 1;
        }
        counts
    }

    /// A cluster over `(weight, locality, locality weight, healthy)` hosts.
    fn cluster(hosts: &[(u32, u32, u32, bool)], policy: LbPolicy) -> ClusterInfo {
        let proto: courier_proto::envoy::config::cluster::v3::Cluster =
            courier_proto::from_yaml("name: c\nconnect_timeout: 1s\n").expect("a cluster");
        let store = crate::stats::Store::new(1);
        let mut info = super::super::compile_cluster(&proto, &store).expect("compiles");
        let hosts = hosts
            .iter()
            .enumerate()
            .map(|(i, &(weight, locality, locality_weight, healthy))| {
                let health = if healthy {
                    crate::upstream::HostHealth::Healthy
                } else {
                    crate::upstream::HostHealth::Unhealthy
                };
                Arc::new(
                    Host::new(
                        std::net::SocketAddr::from(([10, 0, 0, i as u8 + 1], 80)),
                        weight,
                        health,
                        0,
                        crate::upstream::HostStats::new(&store),
                        None,
                        None,
                    )
                    .in_locality(locality, locality_weight),
                )
            })
            .collect();
        info = info.with_hosts(Arc::new(HostSet::new(hosts, 0.0)));
        info.lb_policy = policy;
        info.locality_weighted = true;
        info
    }

    /// How many of `picks` picks of `cluster` went to each host.
    fn cluster_shares(cluster: &ClusterInfo, picks: usize) -> Vec<usize> {
        let mut states = LbStates::default();
        let mut counts = vec![0; cluster.hosts.hosts.len()];
        for _ in 0..picks {
            let host = states.choose(cluster, None, 0).expect("a host");
            let i = cluster
                .hosts
                .hosts
                .iter()
                .position(|h| Arc::ptr_eq(h, &host))
                .expect("one of the set");
            counts[i] += 1;
        }
        counts
    }

    #[test]
    fn slow_start_scales_new_hosts_by_age() {
        use std::time::Duration;
        let s = SlowStart {
            window: Duration::from_secs(10),
            aggression: 1.0,
            min_weight: 0.1,
        };
        assert_eq!(s.factor(Duration::from_secs(5)), 0.5);
        assert_eq!(s.factor(Duration::from_millis(100)), 0.1);
        assert_eq!(s.factor(Duration::from_secs(10)), 1.0);
        let aggressive = SlowStart {
            aggression: 2.0,
            ..s
        };
        assert!((aggressive.factor(Duration::from_millis(2500)) - 0.5).abs() < 1e-9);

        // Hosts 0 and 1 healthy for a minute, host 2 new: host 2 at a tenth of its weight.
        let set = test_host_set(&[1, 1, 1]);
        let old = Instant::now() - Duration::from_secs(60);
        for h in &set.hosts[..2] {
            h.stats.set_healthy_since(old);
        }
        let set = Arc::new(set);
        for policy in [
            LbPolicy::RoundRobin,
            LbPolicy::LeastRequest(LeastRequest::default()),
        ] {
            let mut st = LbState::new(set.clone(), (policy, false, Some(s)));
            let mut counts = [0usize; 3];
            for _ in 0..2100 {
                let i = match policy {
                    LbPolicy::RoundRobin => st.sources[0].round_robin(&set.hosts),
                    _ => st.sources[0].least_request(&set.hosts, LeastRequest::default()),
                };
                counts[i.expect("a host")] += 1;
            }
            // 1 : 1 : 0.1, give or take the ramp over the test's few milliseconds.
            assert!(counts[2].abs_diff(100) <= 10, "{policy:?}: {counts:?}");
            assert!(counts[0].abs_diff(1000) <= 10, "{policy:?}: {counts:?}");
        }
        // Once every host is out of the window, plain round robin.
        let set = test_host_set(&[1, 1]);
        for h in &set.hosts {
            h.stats.set_healthy_since(old);
        }
        let st = LbState::new(Arc::new(set), (LbPolicy::RoundRobin, false, Some(s)));
        assert!(st.sources[0].slow_start.is_none());
    }

    #[test]
    fn localities_are_picked_by_weight_then_hosts_within() {
        // Localities 0 (weight 20: hosts 0, 1), 1 (weight 60: host 2), 2 (unweighted: host
        // 3, never picked).
        let hosts = [
            (1, 0, 20, true),
            (1, 0, 20, true),
            (1, 1, 60, true),
            (5, 2, 0, true),
        ];
        for policy in [
            LbPolicy::RoundRobin,
            LbPolicy::LeastRequest(LeastRequest::default()),
        ] {
            let counts = cluster_shares(&cluster(&hosts, policy), 8000);
            assert_eq!(counts.iter().sum::<usize>(), 8000);
            // The locality schedule is deterministic once started; within locality 0,
            // least request's idle hosts tie and split at random.
            assert!(
                (counts[0] + counts[1]).abs_diff(2000) <= 2,
                "{policy:?}: {counts:?}"
            );
            assert!(counts[2].abs_diff(6000) <= 2, "{policy:?}: {counts:?}");
            assert!(counts[0].abs_diff(1000) <= 150, "{policy:?}: {counts:?}");
            assert_eq!(counts[3], 0, "{policy:?}: {counts:?}");
        }
        // A locality with half its hosts down: 1.4 x 0.5 = 0.7 of its weight.
        let hosts = [(1, 0, 10, true), (1, 0, 10, false), (1, 1, 7, true)];
        let counts = cluster_shares(&cluster(&hosts, LbPolicy::RoundRobin), 1400);
        for (count, expected) in counts.iter().zip([700, 0, 700]) {
            assert!(count.abs_diff(expected) <= 2, "{counts:?}");
        }
        // No locality weighted: every eligible host, as without localities.
        let hosts = [(1, 0, 0, true), (1, 1, 0, true)];
        let counts = cluster_shares(&cluster(&hosts, LbPolicy::RoundRobin), 100);
        assert_eq!(counts, [50, 50]);
    }

    #[test]
    fn weighted_least_request_follows_the_weights_when_idle() {
        let lr = LeastRequest::default();
        let mut s = state(&[1, 2, 3], lr);
        let counts = shares(&mut s, lr, 6000);
        // EDF is deterministic once started: each host within a pick or two of its share.
        for (count, expected) in counts.iter().zip([1000, 2000, 3000]) {
            assert!(count.abs_diff(expected) <= 3, "{counts:?}");
        }
    }

    #[test]
    fn weighted_least_request_scales_weights_by_active_requests() {
        let lr = LeastRequest::default();
        let mut s = state(&[1, 2, 3], lr);
        // 2 active on the heaviest host: 3 / (2 + 1) = 1, the lightest's weight.
        s.hosts.hosts[2].stats.rq_active.set(2);
        let counts = shares(&mut s, lr, 4000);
        for (count, expected) in counts.iter().zip([1000, 2000, 1000]) {
            assert!(count.abs_diff(expected) <= 10, "{counts:?}");
        }
        // A bias of 0 ignores the active requests.
        let lr = LeastRequest {
            active_request_bias: 0.0,
            ..lr
        };
        let mut s = state(&[1, 2, 3], lr);
        s.hosts.hosts[2].stats.rq_active.set(2);
        let counts = shares(&mut s, lr, 6000);
        for (count, expected) in counts.iter().zip([1000, 2000, 3000]) {
            assert!(count.abs_diff(expected) <= 3, "{counts:?}");
        }
    }

    #[test]
    fn equal_weights_compare_choice_count_hosts() {
        let lr = LeastRequest {
            choice_count: 16,
            ..LeastRequest::default()
        };
        let mut s = state(&[1, 1, 1], lr);
        s.hosts.hosts[0].stats.rq_active.set(5);
        // Host 0 wins only when all 16 samples are host 0: (1/3)^16.
        let counts = shares(&mut s, lr, 3000);
        assert_eq!(counts[0], 0, "{counts:?}");
        assert!(counts[1] > 1200 && counts[2] > 1200, "{counts:?}");

        // Full scan: never the loaded host; the tie is split at random.
        let lr = LeastRequest {
            full_scan: true,
            ..LeastRequest::default()
        };
        let mut s = state(&[1, 1, 1], lr);
        s.hosts.hosts[0].stats.rq_active.set(1);
        let counts = shares(&mut s, lr, 3000);
        assert_eq!(counts[0], 0, "{counts:?}");
        assert!(counts[1] > 1300 && counts[2] > 1300, "{counts:?}");
    }
}
