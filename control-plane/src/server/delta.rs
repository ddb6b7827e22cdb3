//! Incremental (delta) streams (ADS `DeltaAggregatedResources` and the per-type `Delta*`).
//!
//! Per stream and type the server tracks what the client holds (name → resource version),
//! seeded from `initial_resource_versions` (rule 13) and updated with every response. A
//! response carries only resources whose version differs from what the client holds, and
//! `removed_resources` for names the client holds that the snapshot no longer has (rule 22).
//! The first request of a type always gets one response (possibly empty) so the client can
//! finish initialisation; afterwards a response is sent only when something differs, so an
//! ACK or NACK alone never triggers one. What a client NACKed stays recorded as held, so it
//! is not re-sent until it changes (rule 23).

use std::collections::{BTreeSet, HashMap, VecDeque};
use std::sync::Arc;

use courier_proto::envoy::service::discovery::v3::{
    DeltaDiscoveryRequest, DeltaDiscoveryResponse, Resource as WireResource,
};
use tokio::sync::{mpsc, watch};
use tonic::{Status, Streaming};

use super::{shutdown_requested, snapshot_changed, Scope, Shared, StreamNode};
use crate::cache::Snapshot;
use crate::resource::ResourceType;
use crate::status::NackRecord;

/// How many unacknowledged nonces per type are remembered to attribute late ACKs.
const NONCE_WINDOW: usize = 16;

#[derive(Debug, Default)]
struct TypeState {
    requested: bool,
    wildcard: bool,
    names: BTreeSet<String>,
    /// What the client holds, as far as the server knows: name → version.
    held: HashMap<String, String>,
    /// Sent at least one response on this stream.
    responded: bool,
    /// Recent responses not yet ACKed or NACKed: (nonce, system version).
    pending: VecDeque<(String, String)>,
}

impl TypeState {
    fn apply_request(
        &mut self,
        req: &DeltaDiscoveryRequest,
        kind: ResourceType,
        node: &StreamNode,
    ) {
        if !self.requested {
            self.requested = true;
            self.held = req.initial_resource_versions.clone();
            // An empty first request for CDS/LDS is a wildcard subscription (rule 11).
            if req.resource_names_subscribe.is_empty() && kind.is_wildcard_type() {
                self.wildcard = true;
            }
        }
        if !req.response_nonce.is_empty() {
            match self
                .pending
                .iter()
                .position(|(n, _)| *n == req.response_nonce)
            {
                Some(i) => {
                    let (nonce, version) = self.pending[i].clone();
                    self.pending.drain(..=i);
                    match &req.error_detail {
                        Some(err) => node.status.nacked(
                            &node.id,
                            kind,
                            NackRecord::new(&version, "", &nonce, err),
                        ),
                        None => node.status.acked(&node.id, kind, &version),
                    }
                }
                None => tracing::debug!(
                    node = %node.id, type_url = kind.type_url(), nonce = %req.response_nonce,
                    "delta request with an unknown nonce"
                ),
            }
        }
        for name in &req.resource_names_subscribe {
            if name == "*" {
                self.wildcard = true;
            } else {
                self.names.insert(name.clone());
            }
        }
        for name in &req.resource_names_unsubscribe {
            if name == "*" {
                self.wildcard = false;
            } else {
                self.names.remove(name);
            }
        }
        if !req.resource_names_unsubscribe.is_empty() {
            // The client drops what it unsubscribed from (unless the wildcard still covers
            // it): forget it so a later re-subscription sends it again.
            let (wildcard, names) = (self.wildcard, &self.names);
            self.held.retain(|n, _| wildcard || names.contains(n));
        }
    }

    fn next_response(
        &mut self,
        kind: ResourceType,
        snapshot: &Snapshot,
        nonce: &mut u64,
        node: &StreamNode,
    ) -> Option<DeltaDiscoveryResponse> {
        if !self.requested {
            return None;
        }
        let tr = snapshot.of(kind);
        let mut resources = Vec::new();
        let mut consider = |r: &Arc<crate::resource::Resource>| {
            if self.held.get(r.name()).map(String::as_str) != Some(r.version()) {
                resources.push(r.clone());
            }
        };
        if self.wildcard {
            tr.items().values().for_each(&mut consider);
        }
        for name in &self.names {
            if self.wildcard && tr.items().contains_key(name) {
                continue; // already considered
            }
            if let Some(r) = tr.items().get(name) {
                consider(r);
            }
        }
        let mut removed: Vec<String> = self
            .held
            .keys()
            .filter(|n| !tr.items().contains_key(n.as_str()))
            .cloned()
            .collect();
        removed.sort();
        if resources.is_empty() && removed.is_empty() && self.responded {
            return None;
        }

        for r in &resources {
            self.held
                .insert(r.name().to_string(), r.version().to_string());
        }
        for n in &removed {
            self.held.remove(n);
        }
        *nonce += 1;
        let nonce = nonce.to_string();
        let version = tr.version().to_string();
        if self.pending.len() == NONCE_WINDOW {
            self.pending.pop_front();
        }
        self.pending.push_back((nonce.clone(), version.clone()));
        self.responded = true;
        node.status.pushed(&node.id, kind, &version);
        tracing::debug!(
            node = %node.id, type_url = kind.type_url(), %version, %nonce,
            resources = resources.len(), removed = removed.len(), "delta push"
        );
        Some(DeltaDiscoveryResponse {
            system_version_info: version,
            resources: resources
                .iter()
                .map(|r| WireResource {
                    name: r.name().to_string(),
                    version: r.version().to_string(),
                    resource: Some(r.any().clone()),
                    ..Default::default()
                })
                .collect(),
            type_url: kind.type_url().to_string(),
            removed_resources: removed,
            nonce,
            ..Default::default()
        })
    }
}

/// Runs one delta stream until the client goes away or shutdown.
pub(crate) async fn run(
    shared: Arc<Shared>,
    scope: Scope,
    mut requests: Streaming<DeltaDiscoveryRequest>,
    tx: mpsc::Sender<Result<DeltaDiscoveryResponse, Status>>,
    mut shutdown: watch::Receiver<bool>,
) {
    let mut node: Option<StreamNode> = None;
    let mut types: [TypeState; ResourceType::ALL.len()] = Default::default();
    let mut nonce: u64 = 0;
    loop {
        if let Some(n) = &mut node {
            let snapshot = n.snapshots.borrow_and_update().clone();
            if let Some(snapshot) = snapshot {
                for kind in ResourceType::ALL {
                    if let Some(resp) =
                        types[kind.index()].next_response(kind, &snapshot, &mut nonce, n)
                    {
                        if tx.send(Ok(resp)).await.is_err() {
                            return;
                        }
                    }
                }
            }
        }
        tokio::select! {
            msg = requests.message() => {
                let req = match msg {
                    Ok(Some(req)) => req,
                    Ok(None) => return,
                    Err(e) => {
                        tracing::debug!(error = %e, "delta stream ended with an error");
                        return;
                    }
                };
                let n = node.get_or_insert_with(|| StreamNode::open(&shared, req.node.as_ref()));
                match scope.resolve(&req.type_url) {
                    Ok(kind) => types[kind.index()].apply_request(&req, kind, n),
                    Err(why) => tracing::debug!(node = %n.id, "ignoring delta request: {why}"),
                }
            }
            _ = snapshot_changed(&mut node) => {}
            _ = shutdown_requested(&mut shutdown) => return,
        }
    }
}
