//! The main thread's cluster manager (Envoy's `ClusterManager`).
//!
//! It owns every cluster by name in two maps: `active` (published to workers) and
//! `warming` (added or updated, waiting for their first hosts). A change marks the manager
//! dirty; [`ClusterManager::publish`] then builds one new immutable [`ClusterSnapshot`] and
//! sets it on every worker, so a burst of changes (one xDS response) costs one publish.

use std::collections::{BTreeMap, BTreeSet, HashSet};
use std::sync::Arc;
use std::time::{Instant, SystemTime};

use courier_proto::envoy::config::cluster::v3::Cluster;
use courier_proto::envoy::config::endpoint::v3::ClusterLoadAssignment;

use super::cluster::{build_host_set, compile_cluster_reporting, ClusterInfo, DiscoveryType};
use super::host_set::HostSet;
use super::ClusterSnapshot;
use crate::config::ConfigError;
use crate::memory::Encoded;
use crate::stats::{Counter, Gauge, Store, MAIN_THREAD};
use courier_runtime::thread_local::Slot;

/// `cluster_manager.*` stats.
pub struct ClusterManagerStats {
    /// `cluster_added`.
    pub cluster_added: Arc<Counter>,
    /// `cluster_modified`.
    pub cluster_modified: Arc<Counter>,
    /// `cluster_removed`.
    pub cluster_removed: Arc<Counter>,
    /// `cluster_updated` (membership updates).
    pub cluster_updated: Arc<Counter>,
    /// `active_clusters`.
    pub active_clusters: Arc<Gauge>,
    /// `warming_clusters`.
    pub warming_clusters: Arc<Gauge>,
}

/// A cluster as the manager keeps it: compiled info plus xDS bookkeeping.
#[derive(Clone)]
pub struct ClusterEntry {
    /// The compiled cluster.
    pub info: Arc<ClusterInfo>,
    /// `version_info` of the response that carried it (empty for static clusters).
    pub version_info: String,
    /// When it was last added or updated.
    pub last_updated: SystemTime,
    /// Whether it came from CDS (dynamic) rather than the bootstrap.
    pub added_via_api: bool,
    /// Whether its hosts are known (its first EDS response or DNS resolution came, or
    /// their initial fetch timed out; always, for static hosts). A warming cluster whose
    /// hosts are known waits only for its TLS secrets.
    pub hosts_known: bool,
}

/// Whether a cluster whose hosts are known may serve: every server secret its TLS context
/// names has arrived (or timed out), and, with active health checking, each host has had
/// its first check (as Envoy's cluster initialisation waits for them).
fn ready(info: &ClusterInfo) -> bool {
    let secrets = info.tls_contexts().all(|t| {
        t.context
            .pending()
            .iter()
            .all(|n| crate::transport_socket::tls::sds::settled(n))
    });
    let checked =
        info.health_check.is_none() || info.hosts.hosts.iter().all(|h| h.stats.hc_checked());
    secrets && checked
}

/// `info` with its hosts' selection health recomputed from their current flags; a host
/// EDS removed that kept serving while it passed its checks goes once it fails one.
fn refreshed(info: &ClusterInfo) -> Arc<ClusterInfo> {
    use super::HealthFlags as F;
    let gone = F::PENDING_DYNAMIC_REMOVAL | F::FAILED_ACTIVE_HC;
    let hosts = info
        .hosts
        .hosts
        .iter()
        .filter(|h| !h.stats.flags().contains(gone))
        .map(|h| Arc::new(h.refreshed()))
        .collect();
    let set =
        HostSet::with_overprovisioning(hosts, info.panic_threshold, info.hosts.overprovisioning);
    let info = info.with_hosts(Arc::new(set));
    info.update_membership_stats();
    Arc::new(info)
}

/// The cluster manager.
pub struct ClusterManager {
    store: Store,
    slot: Slot<ClusterSnapshot>,
    active: BTreeMap<String, ClusterEntry>,
    warming: BTreeMap<String, ClusterEntry>,
    /// Last assignment per EDS service name, so a re-added cluster gets hosts at once
    /// (kept encoded: see [`Encoded`]).
    assignments: BTreeMap<String, Encoded<ClusterLoadAssignment>>,
    /// EDS service name → the clusters (active or warming) fed by it, so an EDS response
    /// with thousands of assignments costs O(assignments), not O(assignments × clusters).
    /// One ordered set of (service, cluster) pairs rather than a set per service: almost
    /// every service has one cluster, and a set of its own would cost a node each.
    eds_users: BTreeSet<(String, String)>,
    stats: ClusterManagerStats,
    dirty: bool,
    /// Ticks on every change of a cluster or of its hosts (published or warming).
    changes: tokio::sync::watch::Sender<u64>,
    /// Per active cluster: when its hosts last reached the workers, and whether a health
    /// change waits for its `update_merge_window` to end.
    merges: std::collections::HashMap<String, Merge>,
    /// The bootstrap's `cluster_manager.upstream_bind_config`, for clusters without one.
    default_bind: Option<super::bind_config::BindConfig>,
    /// Where clusters' workers post to the main thread.
    to_main: super::ToMainThread,
}

/// A cluster's `update_merge_window` state.
#[derive(Clone, Copy)]
struct Merge {
    /// When its hosts last reached the workers (after it became active).
    last: Instant,
    /// A health change waits for the window's end.
    waiting: bool,
}

/// What [`ClusterManager::refresh_health`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HealthRefresh {
    /// Applied; `activated` when a warming version became active.
    Applied {
        /// A warming version became active.
        activated: bool,
    },
    /// Held until the cluster's merge window ends: call
    /// [`ClusterManager::apply_merged_health`] then.
    Held(std::time::Duration),
    /// Already held: the pending apply will take it.
    Merged,
}

/// What [`ClusterManager::add_or_update`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ClusterChange {
    /// Identical to the existing cluster; nothing changed.
    Unchanged,
    /// Added or updated and active at once.
    Active,
    /// Added or updated and warming until its hosts arrive.
    Warming,
}

impl ClusterManager {
    /// A manager publishing through `slot`, its clusters' workers posting to the main
    /// thread through `to_main`.
    pub fn new(
        store: Store,
        slot: Slot<ClusterSnapshot>,
        to_main: super::ToMainThread,
    ) -> ClusterManager {
        let stats = ClusterManagerStats {
            cluster_added: store.counter("cluster_manager.cluster_added"),
            cluster_modified: store.counter("cluster_manager.cluster_modified"),
            cluster_removed: store.counter("cluster_manager.cluster_removed"),
            cluster_updated: store.counter("cluster_manager.cluster_updated"),
            active_clusters: store.gauge("cluster_manager.active_clusters"),
            warming_clusters: store.gauge("cluster_manager.warming_clusters"),
        };
        ClusterManager {
            store,
            slot,
            active: BTreeMap::new(),
            warming: BTreeMap::new(),
            assignments: BTreeMap::new(),
            eds_users: BTreeSet::new(),
            stats,
            dirty: true,
            changes: tokio::sync::watch::channel(0).0,
            merges: std::collections::HashMap::new(),
            default_bind: None,
            to_main,
        }
    }

    /// Sets the bootstrap's `cluster_manager.upstream_bind_config`: the source address of
    /// clusters without their own.
    pub fn set_default_bind(&mut self, bind: Option<super::bind_config::BindConfig>) {
        self.default_bind = bind;
    }

    /// Ticks on every change of a cluster or of its hosts, warming ones included.
    pub fn subscribe(&self) -> tokio::sync::watch::Receiver<u64> {
        self.changes.subscribe()
    }

    fn notify(&self) {
        self.changes.send_modify(|v| *v = v.wrapping_add(1));
    }

    /// Rebuilds cluster `name`'s host sets with each host's current health, after health
    /// checking or outlier detection changed it. A warming version is rebuilt at once
    /// (and becomes active when its hosts all had their first check); the active one, as
    /// in Envoy, at once unless it changed less than `update_merge_window` ago: then the
    /// change waits for the window's end, merged with any that follow.
    pub fn refresh_health(&mut self, name: &str) -> HealthRefresh {
        let mut activated = false;
        if let Some(entry) = self.warming.get_mut(name) {
            entry.info = refreshed(&entry.info);
            if entry.hosts_known && ready(&entry.info) {
                if let Some(entry) = self.warming.remove(name) {
                    self.active.insert(name.to_string(), entry);
                    // A new version starts without a window, as Envoy's.
                    self.merges.remove(name);
                    self.dirty = true;
                    activated = true;
                    self.update_gauges();
                }
            }
            return HealthRefresh::Applied { activated };
        }
        let Some(entry) = self.active.get(name) else {
            return HealthRefresh::Applied { activated };
        };
        let window = entry.info.update_merge_window;
        let now = Instant::now();
        if let Some(merge) = self.merges.get_mut(name) {
            if merge.waiting {
                return HealthRefresh::Merged;
            }
            let since = now.duration_since(merge.last);
            if !window.is_zero() && since <= window {
                merge.waiting = true;
                return HealthRefresh::Held(window - since);
            }
        }
        self.merges.insert(
            name.to_string(),
            Merge {
                last: now,
                waiting: false,
            },
        );
        self.apply_health(name);
        HealthRefresh::Applied { activated }
    }

    /// Adds `host` (an `ORIGINAL_DST` host a worker made) to cluster `name`, unless it
    /// has one at that address already.
    pub fn add_host(&mut self, name: &str, host: Arc<super::Host>) {
        let Some(entry) = self.active.get(name) else {
            return;
        };
        if entry.info.hosts.find(host.address).is_some() {
            return;
        }
        let mut hosts = entry.info.hosts.hosts.clone();
        hosts.push(host);
        self.replace_hosts(name, hosts);
    }

    /// Keeps only the hosts of cluster `name` at `keep` (an `ORIGINAL_DST` sweep).
    pub fn retain_hosts(&mut self, name: &str, keep: &HashSet<std::net::SocketAddr>) {
        let Some(entry) = self.active.get(name) else {
            return;
        };
        let hosts = entry
            .info
            .hosts
            .hosts
            .iter()
            .filter(|h| keep.contains(&h.address))
            .cloned()
            .collect();
        self.replace_hosts(name, hosts);
    }

    /// Cluster `name`'s membership is now `hosts` (its settings kept), published with the
    /// next snapshot; the tasks that follow membership are told.
    fn replace_hosts(&mut self, name: &str, hosts: Vec<Arc<super::Host>>) {
        let Some(entry) = self.active.get_mut(name) else {
            return;
        };
        let set = HostSet::with_overprovisioning(
            hosts,
            entry.info.panic_threshold,
            entry.info.hosts.overprovisioning,
        );
        entry.info = Arc::new(entry.info.with_hosts(Arc::new(set)));
        entry.info.update_membership_stats();
        self.stats.cluster_updated.inc(MAIN_THREAD);
        self.dirty = true;
        self.hosts_updated(name);
        self.notify();
    }

    /// Membership changed (hosts reached the workers): a health change within the merge
    /// window from now waits for it, as in Envoy.
    fn hosts_updated(&mut self, name: &str) {
        self.merges.insert(
            name.to_string(),
            Merge {
                last: Instant::now(),
                waiting: false,
            },
        );
    }

    /// Applies the health changes held for cluster `name`'s merge window.
    pub fn apply_merged_health(&mut self, name: &str) {
        if let Some(m) = self.merges.get_mut(name) {
            m.waiting = false;
            m.last = Instant::now();
        }
        self.apply_health(name);
    }

    fn apply_health(&mut self, name: &str) {
        if let Some(entry) = self.active.get_mut(name) {
            entry.info = refreshed(&entry.info);
            self.dirty = true;
        }
    }

    /// Adds or updates a cluster. An EDS cluster without a known assignment warms; every
    /// other cluster (and an update of one whose assignment is known) is active at once.
    pub fn add_or_update(
        &mut self,
        proto: &Cluster,
        version_info: &str,
        added_via_api: bool,
    ) -> Result<ClusterChange, ConfigError> {
        let existing = self
            .warming
            .get(&proto.name)
            .or_else(|| self.active.get(&proto.name));
        if existing.is_some_and(|e| e.info.proto.same_as(proto)) {
            return Ok(ClusterChange::Unchanged);
        }
        if self
            .active
            .get(&proto.name)
            .is_some_and(|e| !e.added_via_api && added_via_api)
        {
            return Err(ConfigError::new(
                "name",
                format!(
                    "cluster '{}': cannot update a static cluster through CDS",
                    proto.name
                ),
            ));
        }
        let mut info = compile_cluster_reporting(proto, &self.store, &self.to_main)?;
        if info.bind.is_none() {
            info.bind = self.default_bind;
        }
        let is_update =
            self.active.contains_key(&proto.name) || self.warming.contains_key(&proto.name);
        let mut warm = true;
        if let DiscoveryType::Eds { service_name, .. } = &info.discovery {
            match self.assignments.get(service_name) {
                Some(cla) => {
                    let hosts = build_host_set(
                        &cla.decode(),
                        &self.store,
                        self.active.get(&proto.name).map(|e| &*e.info.hosts),
                        info.host_set_params(),
                    )?;
                    info = info.with_hosts(hosts);
                }
                None => warm = false,
            }
        } else if matches!(
            info.discovery,
            DiscoveryType::StrictDns | DiscoveryType::LogicalDns
        ) {
            // Warms until its first resolution (`upstream::dns`); a previous version
            // serves meanwhile, as in Envoy.
            warm = false;
        }
        info.update_membership_stats();
        let entry = ClusterEntry {
            info: Arc::new(info),
            version_info: version_info.to_string(),
            last_updated: SystemTime::now(),
            added_via_api,
            hosts_known: warm,
        };
        self.unindex(&proto.name);
        if let DiscoveryType::Eds { service_name, .. } = &entry.info.discovery {
            self.eds_users
                .insert((service_name.clone(), proto.name.clone()));
        }
        if is_update {
            self.stats.cluster_modified.inc(MAIN_THREAD);
        } else {
            self.stats.cluster_added.inc(MAIN_THREAD);
        }
        // Each new cluster object starts its own EDS subscription, as Envoy's EDS cluster
        // does (an update counts a start again).
        if entry.info.stats.eds {
            entry.info.stats.updates.started();
        }
        let change = if warm && ready(&entry.info) {
            // Make before break: the new cluster replaces the old one in one publish.
            self.warming.remove(&proto.name);
            self.merges.remove(&proto.name);
            self.active.insert(proto.name.clone(), entry);
            self.dirty = true;
            ClusterChange::Active
        } else {
            tracing::debug!(cluster = %proto.name, "cluster warming until its hosts and secrets are known");
            self.warming.insert(proto.name.clone(), entry);
            ClusterChange::Warming
        };
        self.update_gauges();
        self.notify();
        Ok(change)
    }

    /// Removes a cluster (active or warming). Returns whether it existed.
    pub fn remove(&mut self, name: &str) -> bool {
        self.unindex(name);
        let warming = self.warming.remove(name).is_some();
        let active = self.active.remove(name).is_some();
        self.merges.remove(name);
        if active {
            self.dirty = true;
        }
        if warming || active {
            // Envoy drops a removed cluster's stats scope with it.
            self.store.remove_scope(&format!("cluster.{name}"));
            self.stats.cluster_removed.inc(MAIN_THREAD);
            self.update_gauges();
            self.notify();
        }
        warming || active
    }

    /// Applies an endpoint assignment to every cluster using `service_name`; warming
    /// clusters become active. Fails (changing nothing) if the assignment is invalid. An
    /// assignment identical to the current one changes nothing (SotW EDS re-sends every
    /// subscribed assignment on each update). Returns the clusters whose hosts changed.
    pub fn update_assignment(
        &mut self,
        service_name: &str,
        encoded: &Encoded<ClusterLoadAssignment>,
    ) -> Result<Vec<String>, ConfigError> {
        let users: Vec<String> = self.eds_user_names(service_name).cloned().collect();
        let stored = self.assignments.get(service_name);
        let any_warming = users.iter().any(|n| self.warming.contains_key(n));
        // Same bytes: unchanged without decoding (SotW EDS re-sends every assignment).
        let same_bytes = stored.is_some_and(|a| a == encoded);
        if same_bytes && !any_warming {
            return Ok(Vec::new());
        }
        let cla = encoded.decode();
        // Differing bytes can still be the same message (map fields have no fixed order).
        if !any_warming && !same_bytes && stored.is_some_and(|a| a.decode() == cla) {
            return Ok(Vec::new());
        }
        // Build every new host set first so a bad assignment changes nothing.
        let mut updates = Vec::new();
        for name in &users {
            let Some(entry) = self.warming.get(name).or_else(|| self.active.get(name)) else {
                continue;
            };
            let previous = self.active.get(name).map(|e| &*e.info.hosts);
            let hosts = build_host_set(&cla, &self.store, previous, entry.info.host_set_params())?;
            updates.push((name.clone(), hosts));
        }
        self.assignments
            .insert(service_name.to_string(), encoded.clone());
        let mut touched = Vec::new();
        for (name, hosts) in updates {
            if let Some(mut entry) = self.warming.remove(&name) {
                entry.info = Arc::new(entry.info.with_hosts(hosts));
                entry.info.update_membership_stats();
                self.hosts_known(name.clone(), entry);
            } else if let Some(entry) = self.active.get_mut(&name) {
                entry.info = Arc::new(entry.info.with_hosts(hosts));
                entry.info.update_membership_stats();
                self.hosts_updated(&name);
            }
            self.stats.cluster_updated.inc(MAIN_THREAD);
            touched.push(name);
        }
        if !touched.is_empty() {
            self.dirty = true;
            self.update_gauges();
            self.notify();
        }
        Ok(touched)
    }

    /// The clusters fed by EDS `service_name`.
    pub fn eds_users<'a>(
        &'a self,
        service_name: &'a str,
    ) -> impl Iterator<Item = &'a ClusterEntry> + 'a {
        self.eds_user_names(service_name)
            .filter_map(|n| self.active.get(n).or_else(|| self.warming.get(n)))
    }

    fn eds_user_names<'a>(&'a self, service_name: &'a str) -> impl Iterator<Item = &'a String> {
        self.eds_users
            .range((service_name.to_string(), String::new())..)
            .take_while(move |(s, _)| s == service_name)
            .map(|(_, n)| n)
    }

    fn unindex(&mut self, name: &str) {
        let service = self
            .warming
            .get(name)
            .or_else(|| self.active.get(name))
            .and_then(|e| match &e.info.discovery {
                DiscoveryType::Eds { service_name, .. } => Some(service_name.clone()),
                _ => None,
            });
        if let Some(service) = service {
            self.eds_users.remove(&(service, name.to_string()));
        }
    }

    /// A DNS cluster's resolution: its hosts replaced (`None`: the lookup failed, the hosts
    /// stay). A warming cluster becomes active either way: as in Envoy, its first attempt
    /// ends warming, a failed one with no hosts.
    pub fn set_resolved_hosts(&mut self, name: &str, hosts: Option<Arc<HostSet>>) {
        if let Some(mut entry) = self.warming.remove(name) {
            if let Some(hosts) = hosts {
                entry.info = Arc::new(entry.info.with_hosts(hosts));
                entry.info.update_membership_stats();
            }
            self.hosts_known(name.to_string(), entry);
            self.stats.cluster_updated.inc(MAIN_THREAD);
            self.dirty = true;
            self.update_gauges();
            self.notify();
        } else if let (Some(entry), Some(hosts)) = (self.active.get_mut(name), hosts) {
            entry.info = Arc::new(entry.info.with_hosts(hosts));
            entry.info.update_membership_stats();
            self.hosts_updated(name);
            self.stats.cluster_updated.inc(MAIN_THREAD);
            self.dirty = true;
            self.notify();
        }
    }

    /// Ends warming of a cluster whose endpoints did not arrive in time
    /// (initial_fetch_timeout): it becomes active with no hosts, as in Envoy.
    pub fn finish_warming(&mut self, name: &str) {
        if let Some(entry) = self.warming.remove(name) {
            self.hosts_known(name.to_string(), entry);
            self.dirty = true;
            self.update_gauges();
            self.notify();
        }
    }

    /// A warming cluster's hosts are known: it becomes active, or keeps warming until
    /// its secrets arrive.
    fn hosts_known(&mut self, name: String, mut entry: ClusterEntry) {
        entry.hosts_known = true;
        if ready(&entry.info) {
            self.active.insert(name, entry);
        } else {
            self.warming.insert(name, entry);
        }
    }

    /// Activates warming clusters whose hosts are known and whose secrets have now
    /// arrived (or timed out).
    pub fn on_secrets_settled(&mut self) {
        let ready: Vec<String> = self
            .warming
            .iter()
            .filter(|(_, e)| e.hosts_known && ready(&e.info))
            .map(|(n, _)| n.clone())
            .collect();
        for name in ready {
            if let Some(entry) = self.warming.remove(&name) {
                self.active.insert(name, entry);
                self.dirty = true;
            }
        }
        self.update_gauges();
    }

    /// Ends warming of every cluster fed by EDS `service_name` (its initial fetch timed out).
    pub fn finish_warming_service(&mut self, service_name: &str) {
        let names: Vec<String> = self
            .eds_user_names(service_name)
            .filter(|n| self.warming.contains_key(*n))
            .cloned()
            .collect();
        for name in names {
            self.finish_warming(&name);
        }
    }

    /// Publishes a new snapshot to the workers if anything changed since the last one.
    pub fn publish(&mut self) {
        if !self.dirty {
            return;
        }
        self.dirty = false;
        let snapshot = ClusterSnapshot {
            clusters: self
                .active
                .iter()
                .map(|(k, v)| (k.clone(), v.info.clone()))
                .collect(),
        };
        self.slot.set(Arc::new(snapshot));
    }

    /// The active cluster `name`.
    pub fn get(&self, name: &str) -> Option<&ClusterEntry> {
        self.active.get(name)
    }

    /// Whether `name` exists (active or warming).
    pub fn contains(&self, name: &str) -> bool {
        self.active.contains_key(name) || self.warming.contains_key(name)
    }

    /// Active clusters by name.
    pub fn active(&self) -> &BTreeMap<String, ClusterEntry> {
        &self.active
    }

    /// Warming clusters by name.
    pub fn warming(&self) -> &BTreeMap<String, ClusterEntry> {
        &self.warming
    }

    /// EDS service names that clusters currently need.
    pub fn eds_service_names(&self) -> Vec<String> {
        let mut names: Vec<String> = self
            .active
            .values()
            .chain(self.warming.values())
            .filter_map(|e| match &e.info.discovery {
                DiscoveryType::Eds { service_name, .. } => Some(service_name.clone()),
                _ => None,
            })
            .collect();
        names.sort();
        names.dedup();
        names
    }

    /// Forgets assignments no cluster uses any more (EDS unsubscribe).
    pub fn retain_assignments(&mut self, keep: &HashSet<String>) {
        self.assignments.retain(|k, _| keep.contains(k));
    }

    /// The stat store clusters register into.
    pub fn store(&self) -> &Store {
        &self.store
    }

    fn update_gauges(&self) {
        self.stats.active_clusters.set(self.active.len() as i64);
        self.stats.warming_clusters.set(self.warming.len() as i64);
    }
}
