//! The snapshot cache: the current [`Snapshot`] of every node, and the watches streams use to
//! learn that it changed.
//!
//! Nodes are grouped by a [`NodeHash`] key (the node id by default). A key without its own
//! snapshot is served the *default* snapshot, if one is set: that is how `courier-cp` serves
//! one file to every proxy while still allowing per-node overrides.

mod snapshot;

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex, MutexGuard};

use courier_proto::envoy::config::core::v3::Node;
use tokio::sync::watch;

pub use snapshot::{MissingReference, Snapshot, SnapshotBuilder, SnapshotError, TypeResources};

use crate::resource::{Resource, ResourceType};

/// Maps a node to the key its snapshot is stored under.
pub trait NodeHash: Send + Sync + 'static {
    /// The cache key of `node`.
    fn key(&self, node: &Node) -> String;
}

/// Keys nodes by `node.id` (the default, as go-control-plane's `IDHash`).
#[derive(Debug, Clone, Copy, Default)]
pub struct NodeIdHash;

impl NodeHash for NodeIdHash {
    fn key(&self, node: &Node) -> String {
        node.id.clone()
    }
}

/// Keys nodes by `node.cluster`, so every proxy of one service cluster shares a snapshot.
#[derive(Debug, Clone, Copy, Default)]
pub struct NodeClusterHash;

impl NodeHash for NodeClusterHash {
    fn key(&self, node: &Node) -> String {
        node.cluster.clone()
    }
}

/// The receiving end of a node's snapshot watch: the effective snapshot of one key, updated
/// whenever it is replaced.
pub type SnapshotWatch = watch::Receiver<Option<Arc<Snapshot>>>;

struct NodeEntry {
    own: Option<Arc<Snapshot>>,
    tx: watch::Sender<Option<Arc<Snapshot>>>,
}

#[derive(Default)]
struct State {
    default: Option<Arc<Snapshot>>,
    nodes: HashMap<String, NodeEntry>,
}

impl State {
    fn effective(&self, key: &str) -> Option<Arc<Snapshot>> {
        self.nodes
            .get(key)
            .and_then(|e| e.own.clone())
            .or_else(|| self.default.clone())
    }

    fn entry(&mut self, key: &str) -> &mut NodeEntry {
        let default = self.default.clone();
        self.nodes
            .entry(key.to_string())
            .or_insert_with(|| NodeEntry {
                own: None,
                tx: watch::channel(default).0,
            })
    }
}

/// The per-node snapshot cache. Cheap to clone; every clone is the same cache.
#[derive(Clone)]
pub struct SnapshotCache {
    hash: Arc<dyn NodeHash>,
    state: Arc<Mutex<State>>,
}

impl Default for SnapshotCache {
    fn default() -> Self {
        SnapshotCache::new()
    }
}

impl std::fmt::Debug for SnapshotCache {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SnapshotCache").finish_non_exhaustive()
    }
}

impl SnapshotCache {
    /// A cache keyed by node id.
    pub fn new() -> SnapshotCache {
        SnapshotCache::with_hash(NodeIdHash)
    }

    /// A cache keyed by a custom [`NodeHash`] (e.g. [`NodeClusterHash`]).
    pub fn with_hash(hash: impl NodeHash) -> SnapshotCache {
        SnapshotCache {
            hash: Arc::new(hash),
            state: Arc::new(Mutex::new(State::default())),
        }
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        // A panic while holding the lock cannot leave State half-updated (every update is a
        // single assignment or send), so a poisoned lock is still safe to use.
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The cache key of a node.
    pub fn node_key(&self, node: &Node) -> String {
        self.hash.key(node)
    }

    /// Sets (replaces) the snapshot of `key`; every stream of that key is notified.
    pub fn set_snapshot(&self, key: &str, snapshot: Snapshot) -> Arc<Snapshot> {
        let snapshot = Arc::new(snapshot);
        let mut st = self.lock();
        let e = st.entry(key);
        e.own = Some(snapshot.clone());
        e.tx.send_replace(Some(snapshot.clone()));
        snapshot
    }

    /// Removes the own snapshot of `key`; it falls back to the default snapshot (if any).
    pub fn clear_snapshot(&self, key: &str) {
        let mut st = self.lock();
        let default = st.default.clone();
        if let Some(e) = st.nodes.get_mut(key) {
            e.own = None;
            e.tx.send_replace(default);
        }
    }

    /// Sets the snapshot served to every key that has none of its own (`None` to stop).
    pub fn set_default_snapshot(&self, snapshot: Option<Snapshot>) {
        let snapshot = snapshot.map(Arc::new);
        let mut st = self.lock();
        st.default = snapshot.clone();
        for e in st.nodes.values() {
            if e.own.is_none() {
                e.tx.send_replace(snapshot.clone());
            }
        }
    }

    /// Replaces the default snapshot and the own snapshots of several keys at once (keys not
    /// listed lose their own snapshot), so no stream ever sees a half-applied update.
    pub fn replace_all(&self, default: Option<Snapshot>, nodes: BTreeMap<String, Snapshot>) {
        let default = default.map(Arc::new);
        let mut nodes: HashMap<String, Arc<Snapshot>> =
            nodes.into_iter().map(|(k, s)| (k, Arc::new(s))).collect();
        let mut st = self.lock();
        st.default = default.clone();
        for k in nodes.keys() {
            st.entry(k);
        }
        for (k, e) in st.nodes.iter_mut() {
            e.own = nodes.remove(k);
            let effective = e.own.clone().or_else(|| default.clone());
            e.tx.send_replace(effective);
        }
    }

    /// The effective snapshot of `key` (its own, else the default).
    pub fn snapshot(&self, key: &str) -> Option<Arc<Snapshot>> {
        self.lock().effective(key)
    }

    /// The default snapshot.
    pub fn default_snapshot(&self) -> Option<Arc<Snapshot>> {
        self.lock().default.clone()
    }

    /// The keys that have a snapshot of their own, with it.
    pub fn node_snapshots(&self) -> BTreeMap<String, Arc<Snapshot>> {
        self.lock()
            .nodes
            .iter()
            .filter_map(|(k, e)| e.own.clone().map(|s| (k.clone(), s)))
            .collect()
    }

    /// Applies `upserts` and `removals` to the effective snapshot of `key` (an empty one if
    /// there is none) and stores the result as the key's own snapshot. Atomic: on error
    /// nothing changes. Returns the new snapshot (its per-type versions are what clients
    /// will ACK).
    pub fn update_resources(
        &self,
        key: &str,
        upserts: impl IntoIterator<Item = Arc<Resource>>,
        removals: impl IntoIterator<Item = (ResourceType, String)>,
    ) -> Result<Arc<Snapshot>, SnapshotError> {
        let mut st = self.lock();
        let base = st
            .effective(key)
            .unwrap_or_else(|| Arc::new(Snapshot::empty()));
        let next = Arc::new(base.with_changes(upserts, removals)?);
        let e = st.entry(key);
        e.own = Some(next.clone());
        e.tx.send_replace(Some(next.clone()));
        Ok(next)
    }

    /// Adds or replaces one resource of `key`'s snapshot; returns the new version of its type.
    pub fn update_resource(&self, key: &str, r: Arc<Resource>) -> Result<String, SnapshotError> {
        let kind = r.kind();
        let s = self.update_resources(key, [r], [])?;
        Ok(s.version(kind).to_string())
    }

    /// Removes one resource of `key`'s snapshot; returns the new version of its type.
    pub fn remove_resource(
        &self,
        key: &str,
        kind: ResourceType,
        name: &str,
    ) -> Result<String, SnapshotError> {
        let s = self.update_resources(key, [], [(kind, name.to_string())])?;
        Ok(s.version(kind).to_string())
    }

    /// Watches the effective snapshot of `key` (used by every stream of that key).
    pub fn watch(&self, key: &str) -> SnapshotWatch {
        self.lock().entry(key).tx.subscribe()
    }
}
