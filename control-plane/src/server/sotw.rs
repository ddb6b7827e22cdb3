//! State-of-the-world streams (ADS `StreamAggregatedResources` and the per-type `Stream*`).
//!
//! One task per stream owns all of its state; it wakes on a request or on a change of the
//! node's snapshot and then, in ADS push order (CDS, EDS, LDS, RDS, SDS), sends each type that
//! needs a response. Rules (XDS.md):
//! - one response per type in flight: the next is sent only after the client ACKed or NACKed
//!   the last one, which also batches bursts of snapshot updates into one push — except a
//!   newer CDS version, which goes at once (clients withhold the CDS ACK while clusters warm);
//! - a response is sent when the type's version differs from the last one sent, or the
//!   subscription gained names (or, for CDS/LDS, changed), never in answer to an ACK or NACK
//!   alone (no push loops) and a NACKed version is not re-sent (rule 23);
//! - requests whose `response_nonce` is not the latest one sent for the type are stale and
//!   ignored (rule 5);
//! - the first request of a type with a `version_info` equal to the snapshot's gets no
//!   response (a reconnecting client already holds it), as go-control-plane does.
//!
//! A type blocked on an outstanding response never holds back the later types: Envoy
//! withholds its CDS ACK while clusters warm on EDS (rule 24), so EDS must flow meanwhile.

use std::collections::BTreeSet;
use std::sync::Arc;

use courier_proto::envoy::service::discovery::v3::{DiscoveryRequest, DiscoveryResponse};
use tokio::sync::{mpsc, watch};
use tonic::{Status, Streaming};

use super::{shutdown_requested, snapshot_changed, Scope, Shared, StreamNode};
use crate::cache::Snapshot;
use crate::resource::{Resource, ResourceType};
use crate::status::NackRecord;

/// A subscription applied to a snapshot: what a response carried.
#[derive(Debug, Clone)]
struct Selection {
    snapshot: Arc<Snapshot>,
    wildcard: bool,
    names: Arc<BTreeSet<String>>,
}

impl Selection {
    fn names(&self, kind: ResourceType) -> BTreeSet<&str> {
        let items = self.snapshot.of(kind).items();
        if self.wildcard {
            items.keys().map(String::as_str).collect()
        } else {
            self.names
                .iter()
                .filter(|n| items.contains_key(*n))
                .map(String::as_str)
                .collect()
        }
    }
}

/// Per-type state of one SotW stream.
#[derive(Debug, Default)]
pub(crate) struct TypeState {
    /// The client has asked for this type on this stream.
    requested: bool,
    /// The subscription is a wildcard.
    wildcard: bool,
    /// Explicitly subscribed names (shared with `sent` so recording a push copies nothing).
    names: Arc<BTreeSet<String>>,
    /// The stream has named a resource of this type at least once: an empty list now means
    /// "nothing", not wildcard (rule 2).
    named_ever: bool,
    /// Version the client reported on its first request (it already holds it).
    client_version: Option<String>,
    /// Version of the last response (or of what the client reported holding).
    sent_version: Option<String>,
    /// What the last response selected, to tell whether a subscription change needs a new
    /// response at the same version.
    sent: Option<Selection>,
    /// Nonce of the last response; a request echoing any other nonce is stale.
    nonce: Option<String>,
    /// The last response has not been ACKed or NACKed yet.
    outstanding: bool,
}

impl TypeState {
    /// Applies a request's subscription. Returns false when the request is stale.
    pub(crate) fn apply_request(
        &mut self,
        req: &DiscoveryRequest,
        kind: ResourceType,
        node: &StreamNode,
    ) -> bool {
        if !req.response_nonce.is_empty() {
            if self.nonce.as_deref() != Some(req.response_nonce.as_str()) {
                tracing::debug!(
                    node = %node.id, type_url = kind.type_url(), nonce = %req.response_nonce,
                    "ignoring request with a stale nonce"
                );
                return false;
            }
            if self.outstanding {
                self.outstanding = false;
                let sent = self.sent_version.clone().unwrap_or_default();
                match &req.error_detail {
                    Some(err) => node.status.nacked(
                        &node.id,
                        kind,
                        NackRecord::new(&sent, &req.version_info, &req.response_nonce, err),
                    ),
                    None => {
                        tracing::debug!(node = %node.id, type_url = kind.type_url(), version = %req.version_info, "ACK");
                        node.status.acked(&node.id, kind, &req.version_info);
                    }
                }
            }
        } else if !self.requested && !req.version_info.is_empty() {
            self.client_version = Some(req.version_info.clone());
        }
        self.requested = true;

        let mut names: BTreeSet<String> = req.resource_names.iter().cloned().collect();
        let star = names.remove("*");
        if names.is_empty() && !star {
            // Legacy wildcard: an empty list is a wildcard until the stream names something.
            self.wildcard = !self.named_ever;
        } else {
            self.named_ever |= !names.is_empty();
            self.wildcard = star;
        }
        if *self.names != names {
            self.names = Arc::new(names);
        }
        true
    }

    /// The response this type needs now, if any; records it as sent.
    pub(crate) fn next_response(
        &mut self,
        kind: ResourceType,
        snapshot: &Arc<Snapshot>,
        strict: bool,
        nonce: &mut u64,
        node: &StreamNode,
    ) -> Option<DiscoveryResponse> {
        let tr = snapshot.of(kind);
        // One response in flight, except CDS with a newer version: Envoy withholds its CDS
        // ACK while clusters warm after init (rule 24), so waiting for it would hold an
        // update or removal of a warming cluster until the client's initial_fetch_timeout.
        let newer_cds = kind == ResourceType::Cluster
            && self
                .sent_version
                .as_deref()
                .is_some_and(|v| v != tr.version());
        let blocked = self.outstanding && !newer_cds;
        // Subscribed to nothing (an empty list after naming resources): nothing to send, and
        // the client now holds nothing of this type, so a name subscribed again later must
        // be sent again even if its version did not change.
        if self.requested && !self.wildcard && self.names.is_empty() && !self.outstanding {
            self.sent = None;
        }
        if !self.requested || blocked || (!self.wildcard && self.names.is_empty()) {
            return None;
        }
        if !self.wildcard && strict && self.names.iter().any(|n| !tr.items().contains_key(n)) {
            return None;
        }
        let selection = Selection {
            snapshot: snapshot.clone(),
            wildcard: self.wildcard,
            names: self.names.clone(),
        };
        let needed = match (&self.sent_version, &self.sent) {
            (None, _) => match self.client_version.take() {
                Some(v) if v == tr.version() => {
                    // The client already runs this version (reconnect): nothing to send.
                    self.sent_version = Some(v.clone());
                    self.sent = Some(selection.clone());
                    node.status.acked(&node.id, kind, &v);
                    false
                }
                _ => true,
            },
            (Some(v), _) if v != tr.version() => true,
            (Some(_), None) => true,
            (Some(_), Some(prev)) => {
                let same_subscription =
                    prev.wildcard == self.wildcard && Arc::ptr_eq(&prev.names, &self.names);
                if same_subscription {
                    // Same version, same subscription: the client has exactly this.
                    false
                } else {
                    let (before, now) = (prev.names(kind), selection.names(kind));
                    let gained = now.iter().any(|n| !before.contains(n));
                    gained || (kind.is_wildcard_type() && now != before)
                }
            }
        };
        if !needed {
            // A shrunk subscription needs no response, but what the client holds shrank
            // too: remember that, so a name re-subscribed later is sent again.
            if self.sent_version.is_some() && !self.outstanding {
                self.sent = Some(selection);
            }
            return None;
        }
        let selected: Vec<&Arc<Resource>> = if self.wildcard {
            tr.items().values().collect()
        } else {
            self.names
                .iter()
                .filter_map(|n| tr.items().get(n))
                .collect()
        };

        *nonce += 1;
        let nonce = nonce.to_string();
        let version = tr.version().to_string();
        self.sent_version = Some(version.clone());
        self.sent = Some(selection);
        self.nonce = Some(nonce.clone());
        self.outstanding = true;
        node.status.pushed(&node.id, kind, &version);
        tracing::debug!(
            node = %node.id, type_url = kind.type_url(), %version, %nonce,
            resources = selected.len(), "push"
        );
        Some(DiscoveryResponse {
            version_info: version,
            resources: selected.iter().map(|r| r.any().clone()).collect(),
            type_url: kind.type_url().to_string(),
            nonce,
            ..Default::default()
        })
    }
}

/// Runs one SotW stream until the client goes away or shutdown.
pub(crate) async fn run(
    shared: Arc<Shared>,
    scope: Scope,
    mut requests: Streaming<DiscoveryRequest>,
    tx: mpsc::Sender<Result<DiscoveryResponse, Status>>,
    mut shutdown: watch::Receiver<bool>,
) {
    let mut node: Option<StreamNode> = None;
    let mut types: [TypeState; ResourceType::ALL.len()] = Default::default();
    let mut nonce: u64 = 0;
    let strict = shared.config.ads_strict && scope == Scope::Aggregated;
    loop {
        if let Some(n) = &mut node {
            let snapshot = n.snapshots.borrow_and_update().clone();
            if let Some(snapshot) = snapshot {
                for kind in ResourceType::ALL {
                    // Strictness only concerns the names-based types (EDS, RDS, SDS).
                    let strict = strict && !kind.is_wildcard_type();
                    let resp =
                        types[kind.index()].next_response(kind, &snapshot, strict, &mut nonce, n);
                    if let Some(resp) = resp {
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
                        tracing::debug!(error = %e, "SotW stream ended with an error");
                        return;
                    }
                };
                let n = node.get_or_insert_with(|| StreamNode::open(&shared, req.node.as_ref()));
                match scope.resolve(&req.type_url) {
                    Ok(kind) => {
                        types[kind.index()].apply_request(&req, kind, n);
                    }
                    Err(why) => {
                        tracing::debug!(node = %n.id, "ignoring request: {why}");
                    }
                }
            }
            _ = snapshot_changed(&mut node) => {}
            _ = shutdown_requested(&mut shutdown) => return,
        }
    }
}
