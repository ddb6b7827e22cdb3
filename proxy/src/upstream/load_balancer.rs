//! Worker-local load balancing (Envoy's `LoadBalancer`), one state per cluster per worker.
//!
//! State is rebuilt when the cluster's host set changes (pointer identity of the published
//! `Arc<HostSet>`), so an endpoint update costs nothing until the next pick.

use std::sync::Arc;

use std::cmp::Ordering;
use std::collections::BinaryHeap;

use super::cluster::{ClusterInfo, LbPolicy, LeastRequest};
use super::host::Host;
use super::host_set::HostSet;
use super::maglev::MaglevTable;
use super::ring_hash::Ring;

/// Load-balancer state of every cluster this worker has picked from.
#[derive(Default)]
pub struct LbStates {
    states: rustc_hash::FxHashMap<String, LbState>,
}

struct LbState {
    hosts: Arc<HostSet>,
    /// Smooth weighted round robin: current weights per eligible host.
    current: Vec<i64>,
    total_weight: i64,
    /// Plain round robin position when all weights are equal.
    next: usize,
    weighted: bool,
    /// A `RING_HASH` ring of this worker's own, when the host set's shared one has other
    /// sizes (a cluster update that changed only them).
    own_ring: Option<Ring>,
    /// A `MAGLEV` table of this worker's own, when the host set's shared one has another
    /// size (a cluster update that changed only the table size).
    own_maglev: Option<MaglevTable>,
    /// The policy the state was built for.
    policy: LbPolicy,
    /// Weighted LEAST_REQUEST: Envoy's earliest-deadline-first schedule, each eligible host
    /// due again `1 / weight` after its last pick, its weight then scaled down by its
    /// active requests.
    edf: BinaryHeap<EdfEntry>,
    /// The schedule's clock: the deadline of the last pick.
    edf_now: f64,
    /// The last `EdfEntry::seq` given.
    edf_seq: u64,
}

/// A host in the EDF schedule. The heap is a max-heap, so the order is reversed: the
/// earliest deadline (then the earliest added) comes out first.
struct EdfEntry {
    deadline: f64,
    /// Ties go to the host added first, as Envoy's `order_offset`.
    seq: u64,
    /// Index into `eligible`.
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

impl LbState {
    fn new(hosts: Arc<HostSet>, policy: LbPolicy) -> LbState {
        let weights: Vec<u32> = hosts
            .eligible
            .iter()
            .map(|&i| hosts.hosts[i].weight)
            .collect();
        let weighted = weights.windows(2).any(|w| w[0] != w[1]);
        let total_weight = weights.iter().map(|&w| w as i64).sum();
        // Start each worker at a random position so workers don't all hit host 0 first.
        let next = if hosts.eligible.is_empty() {
            0
        } else {
            fastrand::usize(..hosts.eligible.len())
        };
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
        let mut edf = BinaryHeap::new();
        if let (LbPolicy::LeastRequest(lr), true) = (policy, weighted) {
            // Each host starts at a random point of its first period, so that workers
            // (each with its own schedule) do not all start on the same host.
            for (slot, &i) in hosts.eligible.iter().enumerate() {
                let period = 1.0 / least_request_weight(&hosts.hosts[i], lr.active_request_bias);
                edf.push(EdfEntry {
                    deadline: period * fastrand::f64(),
                    seq: slot as u64,
                    slot,
                });
            }
        }
        LbState {
            edf,
            edf_now: 0.0,
            edf_seq: hosts.eligible.len() as u64,
            own_ring,
            own_maglev,
            policy,
            current: vec![0; hosts.eligible.len()],
            hosts,
            total_weight,
            next,
            weighted,
        }
    }

    fn round_robin(&mut self) -> Option<Arc<Host>> {
        let eligible = &self.hosts.eligible;
        if eligible.is_empty() {
            return None;
        }
        let pick = if self.weighted {
            // Smooth weighted round robin: same long-run shares as Envoy's EDF scheduler,
            // interleaved rather than bursty.
            let mut best = 0;
            for (i, &host) in eligible.iter().enumerate() {
                self.current[i] += self.hosts.hosts[host].weight as i64;
                if self.current[i] > self.current[best] {
                    best = i;
                }
            }
            self.current[best] -= self.total_weight;
            best
        } else {
            let p = self.next % eligible.len();
            self.next = self.next.wrapping_add(1);
            p
        };
        Some(self.hosts.hosts[eligible[pick]].clone())
    }

    fn random(&self) -> Option<Arc<Host>> {
        // Envoy's RANDOM draws uniformly among the eligible hosts: weights play no part.
        let eligible = &self.hosts.eligible;
        if eligible.is_empty() {
            return None;
        }
        Some(self.hosts.hosts[eligible[fastrand::usize(..eligible.len())]].clone())
    }

    fn least_request(&mut self, config: LeastRequest) -> Option<Arc<Host>> {
        let eligible = &self.hosts.eligible;
        let hosts = &self.hosts.hosts;
        let n = eligible.len();
        if n == 0 {
            return None;
        }
        // Envoy's load is the host's active requests (across workers), not connections.
        let load = |slot: usize| hosts[eligible[slot]].stats.rq_active.value();
        let slot = if self.weighted {
            // Envoy's EDF: the host due first is picked and scheduled again with its weight
            // as of now (the request being picked for is not yet active on it).
            let mut entry = self.edf.pop()?;
            self.edf_now = entry.deadline;
            let weight =
                least_request_weight(&hosts[eligible[entry.slot]], config.active_request_bias);
            let slot = entry.slot;
            entry.deadline = self.edf_now + 1.0 / weight;
            self.edf_seq += 1;
            entry.seq = self.edf_seq;
            self.edf.push(entry);
            slot
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
        Some(hosts[eligible[slot]].clone())
    }
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
        let hosts = &cluster.hosts;
        let state = match self.states.get_mut(&cluster.name) {
            // A changed policy (a cluster update) needs its own state too.
            Some(s) if Arc::ptr_eq(&s.hosts, hosts) && s.policy == cluster.lb_policy => s,
            _ => {
                self.states.insert(
                    cluster.name.clone(),
                    LbState::new(hosts.clone(), cluster.lb_policy),
                );
                self.states.get_mut(&cluster.name)?
            }
        };
        match cluster.lb_policy {
            LbPolicy::RoundRobin => state.round_robin(),
            LbPolicy::Random => state.random(),
            LbPolicy::LeastRequest(config) => state.least_request(config),
            LbPolicy::RingHash {
                min_ring_size,
                max_ring_size,
            } => {
                let ring = match &state.own_ring {
                    Some(r) => r,
                    None => state.hosts.ring(min_ring_size, max_ring_size),
                };
                let i = ring.choose(hash.unwrap_or_else(|| fastrand::u64(..)), attempt)?;
                state.hosts.hosts.get(i).cloned()
            }
            LbPolicy::Maglev { table_size } => {
                let table = match &state.own_maglev {
                    Some(t) => t,
                    None => state.hosts.maglev(table_size),
                };
                let i = table.choose(hash.unwrap_or_else(|| fastrand::u64(..)), attempt)?;
                state.hosts.hosts.get(i).cloned()
            }
        }
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
        LbState::new(Arc::new(test_host_set(weights)), LbPolicy::LeastRequest(lr))
    }

    /// How many of `picks` picks went to each host.
    fn shares(s: &mut LbState, lr: LeastRequest, picks: usize) -> Vec<usize> {
        let mut counts = vec![0; s.hosts.hosts.len()];
        for _ in 0..picks {
            let host = s.least_request(lr).expect("a host");
            let i = s
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
