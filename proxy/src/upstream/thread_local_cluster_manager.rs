//! One worker's view of the clusters (Envoy's `ThreadLocalClusterManager`): the cluster
//! snapshot it routes with, one load-balancer state per cluster (shared by `tcp_proxy` and
//! the HTTP router, so both walk the same round robin), and each cluster's connection
//! pools.
//!
//! Every snapshot the [`ClusterManager`](super::ClusterManager) publishes reaches each
//! worker's manager through [`ThreadLocalClusterManager::update`], which drains what the
//! snapshot no longer has, as Envoy's does:
//! - a **removed or modified cluster** (a new config, not just new endpoints): its pools are
//!   drained — idle connections close at once, busy ones when their request ends — and the
//!   next request opens a pool of the new cluster;
//! - a **host that left the cluster** (an EDS or DNS update): its connections drain the
//!   same way; connections to hosts that stay are untouched.
//!
//! The pools themselves belong to the protocols that use them (HTTP's in
//! `http::router::pool`); this home keeps them type-erased behind [`ConnPool`], so the upstream
//! layer never imports a codec.

use std::any::Any;
use std::cell::RefCell;
use std::net::SocketAddr;
use std::rc::Rc;
use std::sync::Arc;

use rustc_hash::{FxHashMap, FxHashSet};

use super::load_balancer::LbStates;
use super::{ClusterInfo, ClusterSnapshot, Host};

/// A cluster's connection pool on one worker, as the cluster manager drains it.
pub trait ConnPool: 'static {
    /// The cluster is gone or replaced: close idle connections now, close busy ones once
    /// their requests end, and never hand out another.
    fn drain(&self);
    /// These hosts left the cluster: the same, for their connections only.
    fn drain_hosts(&self, gone: &FxHashSet<SocketAddr>);
}

/// A pool held twice: as a [`ConnPool`] to drain, as `Any` to hand back typed.
struct PoolEntry {
    drain: Rc<dyn ConnPool>,
    typed: Rc<dyn Any>,
}

/// One worker's clusters, load balancers and pools. Reached with
/// [`ThreadLocalClusterManager::with`] from handlers and tasks alike.
#[derive(Default)]
pub struct ThreadLocalClusterManager {
    snapshot: RefCell<Arc<ClusterSnapshot>>,
    lb: RefCell<LbStates>,
    pools: RefCell<FxHashMap<String, PoolEntry>>,
    /// `ORIGINAL_DST` hosts this worker made that the cluster's published hosts do not
    /// have yet, by cluster.
    new_hosts: RefCell<FxHashMap<String, FxHashMap<SocketAddr, Arc<Host>>>>,
    /// Requests waiting for a cluster discovered on demand, by cluster name.
    arrivals: RefCell<FxHashMap<String, Vec<std::task::Waker>>>,
}

thread_local! {
    static CURRENT: ThreadLocalClusterManager = ThreadLocalClusterManager::default();
}

impl ThreadLocalClusterManager {
    /// Runs `f` with this thread's manager.
    #[inline]
    pub fn with<R>(f: impl FnOnce(&ThreadLocalClusterManager) -> R) -> R {
        CURRENT.with(f)
    }

    /// Runs `f` with this thread's manager unless the thread is being torn down.
    pub fn try_with(f: impl FnOnce(&ThreadLocalClusterManager)) {
        let _ = CURRENT.try_with(f);
    }

    /// The active cluster `name`.
    #[inline]
    pub fn get(&self, name: &str) -> Option<Arc<ClusterInfo>> {
        self.snapshot.borrow().get(name).cloned()
    }

    /// The snapshot this worker routes with.
    pub fn snapshot(&self) -> Arc<ClusterSnapshot> {
        self.snapshot.borrow().clone()
    }

    /// Picks a host of `cluster` with this worker's balancer (see [`LbStates::choose`]).
    #[inline]
    pub fn choose_host(
        &self,
        cluster: &ClusterInfo,
        hash: Option<u64>,
        attempt: u32,
    ) -> Option<Arc<Host>> {
        self.lb.borrow_mut().choose(cluster, hash, attempt)
    }

    /// The host of an `ORIGINAL_DST` cluster for destination `dst`: the cluster's, else
    /// one this worker made already, else a new one (posted to the main thread, which
    /// adds it to the cluster).
    pub fn original_dst_host(&self, cluster: &ClusterInfo, dst: SocketAddr) -> Option<Arc<Host>> {
        let od = cluster.original_dst.as_ref()?;
        if let Some(h) = cluster.hosts.find(dst) {
            return Some(h.clone());
        }
        let mut made = self.new_hosts.borrow_mut();
        if let Some(h) = made.get(&cluster.name).and_then(|m| m.get(&dst)) {
            return Some(h.clone());
        }
        let host = od.new_host(dst);
        made.entry(cluster.name.clone())
            .or_default()
            .insert(dst, host.clone());
        Some(host)
    }

    /// The pool of type `P` of `cluster` on this worker, made by `make` on first use (or
    /// after the cluster's previous pool was drained).
    pub fn conn_pool<P: ConnPool>(&self, cluster: &ClusterInfo, make: impl FnOnce() -> P) -> Rc<P> {
        if let Some(pool) = self
            .pools
            .borrow()
            .get(&cluster.name)
            .and_then(|e| e.typed.clone().downcast::<P>().ok())
        {
            return pool;
        }
        let pool = Rc::new(make());
        self.pools.borrow_mut().insert(
            cluster.name.clone(),
            PoolEntry {
                drain: pool.clone(),
                typed: pool.clone(),
            },
        );
        pool
    }

    /// Wakes `waker` when a snapshot holding cluster `name` arrives
    /// ([`super::on_demand::ClusterArrival`]).
    pub fn wake_on_arrival(&self, name: &str, waker: &std::task::Waker) {
        let mut arrivals = self.arrivals.borrow_mut();
        let wakers = arrivals.entry(name.to_string()).or_default();
        if !wakers.iter().any(|w| w.will_wake(waker)) {
            wakers.push(waker.clone());
        }
    }

    /// Withdraws a waker registered by [`Self::wake_on_arrival`].
    pub fn forget_arrival(&self, name: &str, waker: &std::task::Waker) {
        let mut arrivals = self.arrivals.borrow_mut();
        if let Some(wakers) = arrivals.get_mut(name) {
            wakers.retain(|w| !w.will_wake(waker));
            if wakers.is_empty() {
                arrivals.remove(name);
            }
        }
    }

    /// Number of clusters with a pool on this worker (for tests and `/clusters`).
    pub fn pool_count(&self) -> usize {
        self.pools.borrow().len()
    }

    /// Takes `snapshot` as this thread's (a slot's `apply`: see [`update`](Self::update)).
    pub fn apply(snapshot: &Arc<ClusterSnapshot>) {
        Self::with(|tlcm| tlcm.update(snapshot.clone()));
    }

    /// Takes `next` as this worker's snapshot, draining the pools of clusters it removed
    /// or replaced and the connections to hosts that left, and dropping the balancer state
    /// of clusters that are gone.
    pub fn update(&self, next: Arc<ClusterSnapshot>) {
        let previous = std::mem::replace(&mut *self.snapshot.borrow_mut(), next.clone());
        // Drained outside the borrow: closing a connection may reach back for its pool.
        let mut drained: Vec<Rc<dyn ConnPool>> = Vec::new();
        let mut hosts_left: Vec<(Rc<dyn ConnPool>, FxHashSet<SocketAddr>)> = Vec::new();
        self.pools.borrow_mut().retain(|name, entry| {
            let (Some(old), new) = (previous.get(name), next.get(name)) else {
                // A pool of a cluster the previous snapshot did not have cannot exist;
                // drop it anyway, drained.
                drained.push(entry.drain.clone());
                return false;
            };
            match new {
                Some(new) if Arc::ptr_eq(old, new) => true,
                // Only the endpoints changed (an EDS or DNS update keeps the config).
                Some(new) if Arc::ptr_eq(&old.proto, &new.proto) => {
                    if !Arc::ptr_eq(&old.hosts, &new.hosts) {
                        let gone = hosts_gone_or_failed(old, new);
                        if !gone.is_empty() {
                            hosts_left.push((entry.drain.clone(), gone));
                        }
                    }
                    true
                }
                // Removed, or a new config: a new cluster in Envoy's terms.
                _ => {
                    drained.push(entry.drain.clone());
                    false
                }
            }
        });
        self.lb.borrow_mut().retain(|name| next.get(name).is_some());
        // Hosts this worker made are forgotten once published (or their cluster is gone).
        self.new_hosts.borrow_mut().retain(|name, made| {
            let Some(c) = next.get(name) else {
                return false;
            };
            made.retain(|addr, _| c.hosts.find(*addr).is_none());
            !made.is_empty()
        });
        for pool in drained {
            pool.drain();
        }
        for (pool, gone) in hosts_left {
            pool.drain_hosts(&gone);
        }
        // Requests waiting for clusters this snapshot brings go on (woken outside the
        // borrow: a woken task may wait again).
        let arrived: Vec<std::task::Waker> = {
            let mut arrivals = self.arrivals.borrow_mut();
            let names: Vec<String> = arrivals
                .keys()
                .filter(|n| next.get(n).is_some())
                .cloned()
                .collect();
            names
                .iter()
                .filter_map(|n| arrivals.remove(n))
                .flatten()
                .collect()
        };
        for waker in arrived {
            waker.wake();
        }
    }
}

/// Addresses of `old`'s hosts that `new` does not have, and of hosts a health check or
/// outlier detection has just failed: their connections drain, as Envoy drains a host's
/// pools on a health failure.
fn hosts_gone_or_failed(old: &ClusterInfo, new: &ClusterInfo) -> FxHashSet<SocketAddr> {
    use super::HealthFlags as F;
    let failed = F::FAILED_ACTIVE_HC | F::FAILED_OUTLIER_CHECK;
    let kept: FxHashSet<SocketAddr> = new.hosts.hosts.iter().map(|h| h.address).collect();
    let mut out: FxHashSet<SocketAddr> = old
        .hosts
        .hosts
        .iter()
        .map(|h| h.address)
        .filter(|a| !kept.contains(a))
        .collect();
    for h in &new.hosts.hosts {
        let newly_failed = h.health == super::HostHealth::Unhealthy
            && h.stats.flags().intersects(failed)
            && old
                .hosts
                .find(h.address)
                .is_some_and(|o| o.health != super::HostHealth::Unhealthy);
        if newly_failed {
            out.insert(h.address);
        }
    }
    out
}
