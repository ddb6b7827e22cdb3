//! Worker-local load balancing (Envoy's `LoadBalancer`), one state per cluster per worker.
//!
//! State is rebuilt when the cluster's host set changes (pointer identity of the published
//! `Arc<HostSet>`), so an endpoint update costs nothing until the next pick.

use std::sync::Arc;

use super::cluster::{ClusterInfo, LbPolicy};
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
        LbState {
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
        let eligible = &self.hosts.eligible;
        if eligible.is_empty() {
            return None;
        }
        if !self.weighted {
            return Some(self.hosts.hosts[eligible[fastrand::usize(..eligible.len())]].clone());
        }
        let mut r = fastrand::i64(0..self.total_weight.max(1));
        for &i in eligible {
            r -= self.hosts.hosts[i].weight as i64;
            if r < 0 {
                return Some(self.hosts.hosts[i].clone());
            }
        }
        eligible.last().map(|&i| self.hosts.hosts[i].clone())
    }

    fn least_request(&self) -> Option<Arc<Host>> {
        // Envoy's default: power of two choices on active requests.
        let eligible = &self.hosts.eligible;
        match eligible.len() {
            0 => None,
            1 => Some(self.hosts.hosts[eligible[0]].clone()),
            n => {
                let a = &self.hosts.hosts[eligible[fastrand::usize(..n)]];
                let b = &self.hosts.hosts[eligible[fastrand::usize(..n)]];
                let load = |h: &Host| h.stats.rq_active.value() + h.stats.cx_active.value();
                Some(if load(b) < load(a) {
                    b.clone()
                } else {
                    a.clone()
                })
            }
        }
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
            LbPolicy::LeastRequest => state.least_request(),
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
            // The cluster picks by each request's destination
            // ([`super::original_dst`]), never here.
            LbPolicy::ClusterProvided => None,
        }
    }

    /// Drops state of clusters that no longer exist.
    pub fn retain(&mut self, keep: impl Fn(&str) -> bool) {
        self.states.retain(|name, _| keep(name));
    }
}
