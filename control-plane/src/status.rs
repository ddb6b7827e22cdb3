//! Per-node observability: connected streams, versions pushed and ACKed per type, the last
//! NACK with its error detail, counters; waiting on those facts; Prometheus rendering.

use std::collections::{BTreeMap, VecDeque};
use std::fmt::Write as _;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde::Serialize;
use tokio::sync::watch;

use crate::resource::ResourceType;

/// How many ACKed versions per node and type are remembered, so a waiter for an older version
/// still succeeds after a newer one was ACKed quickly.
const ACK_HISTORY: usize = 64;

/// A NACK as received: which version was rejected and why.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct NackRecord {
    /// The version the client rejected (the one sent with the NACKed nonce).
    pub rejected_version: String,
    /// The version the client still runs (`version_info` of the NACK; empty for delta).
    pub current_version: String,
    /// The NACKed nonce.
    pub nonce: String,
    /// `error_detail.code` (Envoy sends 13, INTERNAL).
    pub code: i32,
    /// `error_detail.message`: Envoy names each rejected resource and why.
    pub message: String,
    /// When it arrived, in milliseconds since the Unix epoch.
    pub at_unix_ms: u64,
}

impl NackRecord {
    /// A NACK received now.
    pub(crate) fn new(
        rejected_version: &str,
        current_version: &str,
        nonce: &str,
        error: &courier_proto::google::rpc::Status,
    ) -> NackRecord {
        NackRecord {
            rejected_version: rejected_version.to_string(),
            current_version: current_version.to_string(),
            nonce: nonce.to_string(),
            code: error.code,
            message: error.message.clone(),
            at_unix_ms: now_ms(),
        }
    }
}

/// The status of one resource type of one node.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct TypeStatus {
    /// The version of the last response sent.
    pub last_sent_version: Option<String>,
    /// The last version the node ACKed.
    pub acked_version: Option<String>,
    /// The last NACK (kept after later ACKs, as history).
    pub last_nack: Option<NackRecord>,
    /// Responses sent.
    pub pushes: u64,
    /// ACKs received.
    pub acks: u64,
    /// NACKs received.
    pub nacks: u64,
    #[serde(skip)]
    acked_history: VecDeque<String>,
}

impl TypeStatus {
    /// True if the node ACKed `version` (among its last `ACK_HISTORY` ACKs).
    pub fn has_acked(&self, version: &str) -> bool {
        self.acked_history.iter().any(|v| v == version)
    }
}

/// The status of one node (by node id).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct NodeStatus {
    /// The cache key the node is served from.
    pub key: String,
    /// Streams currently open.
    pub connected_streams: u64,
    /// Per type, by its plural name (`clusters`, …).
    pub types: BTreeMap<String, TypeStatus>,
}

impl NodeStatus {
    /// The status of one type (default if the node never used it).
    pub fn of(&self, kind: ResourceType) -> TypeStatus {
        self.types.get(kind.plural()).cloned().unwrap_or_default()
    }
}

/// A wait on a status fact did not succeed in time.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("timed out after {timeout:?} waiting for {what}; status of node {node:?}: {status}")]
pub struct WaitTimeout {
    /// What was awaited.
    pub what: String,
    /// The node.
    pub node: String,
    /// The node's status at the deadline, as JSON, for the test failure message.
    pub status: String,
    /// The timeout.
    pub timeout: Duration,
}

/// All node statuses. Cheap to clone; every clone is the same registry.
#[derive(Clone)]
pub struct StatusRegistry {
    nodes: Arc<Mutex<BTreeMap<String, NodeStatus>>>,
    // Bumped on every change so waiters re-check their condition.
    generation: Arc<watch::Sender<u64>>,
}

impl Default for StatusRegistry {
    fn default() -> Self {
        StatusRegistry {
            nodes: Arc::default(),
            generation: Arc::new(watch::channel(0).0),
        }
    }
}

impl std::fmt::Debug for StatusRegistry {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StatusRegistry").finish_non_exhaustive()
    }
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

impl StatusRegistry {
    /// An empty registry.
    pub fn new() -> StatusRegistry {
        StatusRegistry::default()
    }

    fn lock(&self) -> MutexGuard<'_, BTreeMap<String, NodeStatus>> {
        // Updates are single-field writes: a poisoned lock still holds consistent data.
        self.nodes.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn update<R>(&self, node: &str, f: impl FnOnce(&mut NodeStatus) -> R) -> R {
        let r = {
            let mut nodes = self.lock();
            f(nodes.entry(node.to_string()).or_default())
        };
        self.generation.send_modify(|g| *g += 1);
        r
    }

    fn update_type(&self, node: &str, kind: ResourceType, f: impl FnOnce(&mut TypeStatus)) {
        self.update(node, |n| {
            f(n.types.entry(kind.plural().to_string()).or_default())
        });
    }

    pub(crate) fn stream_opened(&self, node: &str, key: &str) {
        self.update(node, |n| {
            n.key = key.to_string();
            n.connected_streams += 1;
        });
    }

    pub(crate) fn stream_closed(&self, node: &str) {
        self.update(node, |n| {
            n.connected_streams = n.connected_streams.saturating_sub(1)
        });
    }

    pub(crate) fn pushed(&self, node: &str, kind: ResourceType, version: &str) {
        self.update_type(node, kind, |t| {
            t.pushes += 1;
            t.last_sent_version = Some(version.to_string());
        });
    }

    pub(crate) fn acked(&self, node: &str, kind: ResourceType, version: &str) {
        self.update_type(node, kind, |t| {
            t.acks += 1;
            t.acked_version = Some(version.to_string());
            if !t.acked_history.iter().any(|v| v == version) {
                if t.acked_history.len() == ACK_HISTORY {
                    t.acked_history.pop_front();
                }
                t.acked_history.push_back(version.to_string());
            }
        });
    }

    pub(crate) fn nacked(&self, node: &str, kind: ResourceType, nack: NackRecord) {
        tracing::warn!(
            node = %node, type_url = kind.type_url(), rejected_version = %nack.rejected_version,
            nonce = %nack.nonce, code = nack.code, error = %nack.message, "NACK"
        );
        self.update_type(node, kind, |t| {
            t.nacks += 1;
            t.last_nack = Some(nack);
        });
    }

    /// The status of one node.
    pub fn node(&self, node: &str) -> Option<NodeStatus> {
        self.lock().get(node).cloned()
    }

    /// Every node's status.
    pub fn nodes(&self) -> BTreeMap<String, NodeStatus> {
        self.lock().clone()
    }

    /// The version of `kind` the node last ACKed.
    pub fn acked_version(&self, node: &str, kind: ResourceType) -> Option<String> {
        self.node(node).and_then(|n| n.of(kind).acked_version)
    }

    /// The last NACK of `kind` by the node.
    pub fn last_nack(&self, node: &str, kind: ResourceType) -> Option<NackRecord> {
        self.node(node).and_then(|n| n.of(kind).last_nack)
    }

    /// Waits until `check` returns `Some` for the node's status (checked now and after each
    /// change), or `timeout` passes.
    pub async fn wait_for<T>(
        &self,
        node: &str,
        what: &str,
        timeout: Duration,
        mut check: impl FnMut(&NodeStatus) -> Option<T>,
    ) -> Result<T, WaitTimeout> {
        let deadline = tokio::time::Instant::now() + timeout;
        let mut rx = self.generation.subscribe();
        loop {
            rx.borrow_and_update();
            let status = self.node(node).unwrap_or_default();
            if let Some(v) = check(&status) {
                return Ok(v);
            }
            match tokio::time::timeout_at(deadline, rx.changed()).await {
                Ok(Ok(())) => {}
                // Timed out, or the registry is gone: report the status at this point.
                _ => {
                    return Err(WaitTimeout {
                        what: what.to_string(),
                        node: node.to_string(),
                        status: serde_json::to_string(&status).unwrap_or_default(),
                        timeout,
                    })
                }
            }
        }
    }

    /// Waits until the node has ACKed `version` of `kind`.
    pub async fn wait_for_ack(
        &self,
        node: &str,
        kind: ResourceType,
        version: &str,
        timeout: Duration,
    ) -> Result<(), WaitTimeout> {
        let what = format!("ACK of {kind} version {version:?}");
        self.wait_for(node, &what, timeout, |n| {
            n.types
                .get(kind.plural())
                .is_some_and(|t| t.has_acked(version))
                .then_some(())
        })
        .await
    }

    /// Waits until the node NACKs `version` of `kind`; returns the NACK.
    pub async fn wait_for_nack(
        &self,
        node: &str,
        kind: ResourceType,
        version: &str,
        timeout: Duration,
    ) -> Result<NackRecord, WaitTimeout> {
        let what = format!("NACK of {kind} version {version:?}");
        self.wait_for(node, &what, timeout, |n| {
            n.types
                .get(kind.plural())
                .and_then(|t| t.last_nack.clone())
                .filter(|nack| nack.rejected_version == version)
        })
        .await
    }

    /// Waits until the node has exactly `n` connected streams.
    pub async fn wait_for_streams(
        &self,
        node: &str,
        n: u64,
        timeout: Duration,
    ) -> Result<(), WaitTimeout> {
        let what = format!("{n} connected streams");
        self.wait_for(node, &what, timeout, |s| {
            (s.connected_streams == n).then_some(())
        })
        .await
    }

    /// The registry in the Prometheus text exposition format.
    pub fn render_prometheus(&self) -> String {
        let nodes = self.nodes();
        let mut out = String::new();
        let esc = |s: &str| {
            s.replace('\\', "\\\\")
                .replace('"', "\\\"")
                .replace('\n', "\\n")
        };
        let _ = writeln!(
            out,
            "# HELP courier_cp_connected_streams Open xDS streams per node."
        );
        let _ = writeln!(out, "# TYPE courier_cp_connected_streams gauge");
        for (id, n) in &nodes {
            let _ = writeln!(
                out,
                "courier_cp_connected_streams{{node=\"{}\"}} {}",
                esc(id),
                n.connected_streams
            );
        }
        type Field = fn(&TypeStatus) -> u64;
        let counters: [(&str, &str, Field); 3] = [
            ("courier_cp_pushes_total", "Responses sent.", |t| t.pushes),
            ("courier_cp_acks_total", "ACKs received.", |t| t.acks),
            ("courier_cp_nacks_total", "NACKs received.", |t| t.nacks),
        ];
        for (name, help, get) in counters {
            let _ = writeln!(out, "# HELP {name} {help}");
            let _ = writeln!(out, "# TYPE {name} counter");
            for (id, n) in &nodes {
                for (ty, t) in &n.types {
                    let _ = writeln!(
                        out,
                        "{name}{{node=\"{}\",type=\"{ty}\"}} {}",
                        esc(id),
                        get(t)
                    );
                }
            }
        }
        let _ = writeln!(
            out,
            "# HELP courier_cp_acked_version Version last ACKed per node and type (value 1)."
        );
        let _ = writeln!(out, "# TYPE courier_cp_acked_version gauge");
        for (id, n) in &nodes {
            for (ty, t) in &n.types {
                if let Some(v) = &t.acked_version {
                    let _ = writeln!(
                        out,
                        "courier_cp_acked_version{{node=\"{}\",type=\"{ty}\",version=\"{}\"}} 1",
                        esc(id),
                        esc(v)
                    );
                }
            }
        }
        out
    }
}
