//! Upstreams: clusters, their hosts, load balancing and the cluster manager.
//!
//! The [`ClusterManager`] lives on the main thread: it compiles Cluster protos into
//! immutable [`ClusterInfo`]s, keeps them in a [`ClusterSnapshot`] and publishes each new
//! snapshot to the workers through a thread-local slot. On each worker a
//! [`ThreadLocalClusterManager`] takes the snapshot: it picks hosts (one balancer state per
//! cluster) and keeps, and drains, each cluster's connection pools.

pub mod async_client;
pub mod bind_config;
mod cluster;
mod cluster_manager;
pub mod connect;
pub mod dns;
pub mod health_checker;
mod health_flags;
pub mod health_refresh;
mod host;
pub mod host_override;
mod host_set;
mod lb_policy;
mod load_balancer;
pub mod maglev;
pub mod on_demand;
pub mod original_dst;
pub mod outlier_detection;
mod per_cluster_tasks;
pub mod ring_hash;
mod thread_local_cluster_manager;
pub mod transport_socket_match;

pub use cluster::{
    compile_cluster, compile_cluster_reporting, validate_assignment, ClusterInfo, ClusterStats,
    ConnLifetime, DiscoveryType, LbPolicy, LeastRequest, SlowStart, ToMainThread,
};
pub use cluster_manager::{
    ClusterChange, ClusterEntry, ClusterManager, ClusterManagerStats, HealthRefresh,
};
pub use health_flags::HealthFlags;
pub use host::{Host, HostHealth, HostStats};
pub use host_set::HostSet;
pub use load_balancer::LbStates;
pub use thread_local_cluster_manager::{ConnPool, ThreadLocalClusterManager};

use std::cell::RefCell;
use std::rc::Rc;
use std::sync::Arc;

/// What the main thread's upstream tasks (DNS resolution, health checking, outlier
/// detection) need of the server: the cluster manager they change, the changes they
/// re-plan on, and whom to tell when clusters warmed.
pub trait UpstreamContext {
    /// The cluster manager.
    fn cluster_manager(&self) -> &RefCell<ClusterManager>;
    /// Ticks whenever clusters were added, updated or removed.
    fn cluster_changes(&self) -> tokio::sync::watch::Receiver<u64>;
    /// Warming clusters got what they waited for: CDS's ACK and initialisation may go on.
    fn clusters_warmed(self: &Rc<Self>);
}

/// The clusters a worker can route to, immutable once published.
#[derive(Default)]
pub struct ClusterSnapshot {
    /// Active (warm) clusters by name. Looked up on every request: hashed with Fx (names
    /// come from the configuration, not from clients).
    pub clusters: rustc_hash::FxHashMap<String, Arc<ClusterInfo>>,
}

impl ClusterSnapshot {
    /// The active cluster `name`.
    #[inline]
    pub fn get(&self, name: &str) -> Option<&Arc<ClusterInfo>> {
        self.clusters.get(name)
    }
}
