//! One xDS stream (Envoy's `GrpcMux`): state of the world or delta, aggregated (ADS) or one
//! resource type per stream. It owns the per-type protocol state (subscribed names, last
//! accepted version, last nonce, delta resource versions), builds every request, pauses
//! types while dependent work is in flight, and reconnects with jittered exponential
//! back-off, re-sending every subscription.
//!
//! Responses are handed to [`super::apply`] synchronously on the main thread; the mux
//! then answers with an ACK (the response's version and nonce) or a NACK (the last
//! accepted version, the nonce, and `error_detail`).
//!
//! A mux whose [`Transport`] is REST-JSON (`api_type: REST`) keeps the same SotW state but
//! polls instead of streaming: [`super::rest`] builds each poll with
//! [`Mux::rest_request`] and hands responses to the same SotW handler, so the next poll's
//! `version_info`/`error_detail` is the ACK/NACK.

use std::cell::RefCell;
use std::collections::{BTreeMap, BTreeSet};
use std::rc::{Rc, Weak};
use std::time::Duration;

use courier_proto::envoy::config::core::v3::Node;
use courier_proto::envoy::service::discovery::v3::{
    aggregated_discovery_service_client::AggregatedDiscoveryServiceClient, DeltaDiscoveryRequest,
    DeltaDiscoveryResponse, DiscoveryRequest, DiscoveryResponse,
};
use courier_proto::envoy::service::{
    cluster::v3::cluster_discovery_service_client::ClusterDiscoveryServiceClient,
    endpoint::v3::endpoint_discovery_service_client::EndpointDiscoveryServiceClient,
    listener::v3::listener_discovery_service_client::ListenerDiscoveryServiceClient,
    route::v3::route_discovery_service_client::RouteDiscoveryServiceClient,
    runtime::v3::runtime_discovery_service_client::RuntimeDiscoveryServiceClient,
    secret::v3::secret_discovery_service_client::SecretDiscoveryServiceClient,
};
use courier_proto::google::rpc::Status;
use courier_proto::ResourceType;
use tokio::sync::mpsc;
use tokio_stream::wrappers::UnboundedReceiverStream;
use tonic::transport::Channel;

use super::apply::{self, Update};
use super::rest_target::RestTarget;
use super::transport::GrpcTarget;
use super::{ControlPlaneStats, SubscriptionStats};
use crate::server::Server;

/// Where a mux's requests go: a gRPC stream, or REST-JSON polls (SotW only).
#[derive(Debug, Clone)]
pub enum Transport {
    /// A gRPC server (`GRPC`, `DELTA_GRPC` and their aggregated forms).
    Grpc(GrpcTarget),
    /// A REST-JSON server (`api_type: REST`), polled.
    Rest(RestTarget),
}

impl From<GrpcTarget> for Transport {
    fn from(target: GrpcTarget) -> Transport {
        Transport::Grpc(target)
    }
}

/// SotW or incremental.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Protocol {
    /// `StreamAggregatedResources` / `Stream*`.
    Sotw,
    /// `DeltaAggregatedResources` / `Delta*`.
    Delta,
}

/// Which RPC the stream uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Rpc {
    /// Aggregated: every type on one stream.
    Ads,
    /// One resource type.
    Single(ResourceType),
}

#[derive(Default)]
struct TypeState {
    /// Subscribed at all (a request has been or must be sent).
    interested: bool,
    wildcard: bool,
    names: BTreeSet<String>,
    /// Last accepted `version_info` (SotW).
    version: String,
    /// Nonce of the last response.
    nonce: String,
    /// NACK detail to send with the next request.
    error: Option<Status>,
    /// While paused, requests wait; `pending` remembers one is due.
    paused: bool,
    pending: bool,
    /// Delta: versions of the resources held, and the names the server was told.
    versions: BTreeMap<String, String>,
    sent_names: BTreeSet<String>,
    sent_wildcard: bool,
}

enum Sender {
    Sotw(mpsc::UnboundedSender<DiscoveryRequest>),
    Delta(mpsc::UnboundedSender<DeltaDiscoveryRequest>),
}

#[derive(Default)]
struct MuxState {
    types: BTreeMap<ResourceType, TypeState>,
    sender: Option<Sender>,
    node_sent: bool,
}

/// Opens the stream RPC for `rpc`: the ADS method, or the per-type service's method, in the
/// order [ADS, CDS, EDS, LDS, RDS, SDS, RTDS]. The services share no trait, hence a macro.
macro_rules! open_rpc {
    ($rpc:expr, $channel:expr, $requests:expr, [$ads:ident, $cds:ident, $eds:ident, $lds:ident, $rds:ident, $sds:ident, $rtds:ident]) => {
        match $rpc {
            Rpc::Ads => {
                AggregatedDiscoveryServiceClient::new($channel)
                    .max_decoding_message_size(MAX_RESPONSE_BYTES)
                    .$ads($requests)
                    .await
            }
            Rpc::Single(ResourceType::Cluster) => {
                ClusterDiscoveryServiceClient::new($channel)
                    .max_decoding_message_size(MAX_RESPONSE_BYTES)
                    .$cds($requests)
                    .await
            }
            Rpc::Single(ResourceType::Endpoint) => {
                EndpointDiscoveryServiceClient::new($channel)
                    .max_decoding_message_size(MAX_RESPONSE_BYTES)
                    .$eds($requests)
                    .await
            }
            Rpc::Single(ResourceType::Listener) => {
                ListenerDiscoveryServiceClient::new($channel)
                    .max_decoding_message_size(MAX_RESPONSE_BYTES)
                    .$lds($requests)
                    .await
            }
            Rpc::Single(ResourceType::Route) => {
                RouteDiscoveryServiceClient::new($channel)
                    .max_decoding_message_size(MAX_RESPONSE_BYTES)
                    .$rds($requests)
                    .await
            }
            Rpc::Single(ResourceType::Secret) => {
                SecretDiscoveryServiceClient::new($channel)
                    .max_decoding_message_size(MAX_RESPONSE_BYTES)
                    .$sds($requests)
                    .await
            }
            Rpc::Single(ResourceType::Runtime) => {
                RuntimeDiscoveryServiceClient::new($channel)
                    .max_decoding_message_size(MAX_RESPONSE_BYTES)
                    .$rtds($requests)
                    .await
            }
        }
    };
}

/// The largest xDS response a stream takes (tonic's default is 4 MiB, which 100,000
/// clusters in one state-of-the-world or first delta response exceed many times; Envoy sets
/// no limit). A larger one fails the stream, counted as `update_failure`, and the stream
/// is retried with back-off.
pub const MAX_RESPONSE_BYTES: usize = 1 << 30;

/// An xDS stream and its subscriptions.
pub struct Mux {
    name: String,
    target: Transport,
    protocol: Protocol,
    rpc: Rpc,
    node: Node,
    node_first_only: bool,
    state: RefCell<MuxState>,
    control_plane: ControlPlaneStats,
    /// The TTLs of the resources this stream delivered with one.
    ttls: super::ttl::Ttls,
    /// The running stream and TTL tasks, aborted by [`Mux::stop`].
    tasks: RefCell<Vec<tokio::task::AbortHandle>>,
    /// Bumped when a subscription changes (REST polls at once then, as Envoy's new
    /// subscription does).
    subscriptions: tokio::sync::watch::Sender<u64>,
}

/// The ordering of types on a stream that (re)connects: runtime layers first (Envoy
/// initialises them before CDS), then make before break (secrets last: the clusters and
/// listeners that name them keep warming until they arrive). These are also the only
/// types a stream handles: a response of any other type is ignored as of an unknown type.
const ORDER: [ResourceType; 6] = [
    ResourceType::Runtime,
    ResourceType::Cluster,
    ResourceType::Endpoint,
    ResourceType::Listener,
    ResourceType::Route,
    ResourceType::Secret,
];

/// The type of a response's type URL, if it is one a stream handles.
fn canonical(type_url: &str) -> Option<ResourceType> {
    ResourceType::from_type_url(type_url).filter(|t| ORDER.contains(t))
}

impl Mux {
    /// A mux for `target`; call [`Mux::start`] to run it.
    pub fn new(
        name: String,
        target: impl Into<Transport>,
        protocol: Protocol,
        rpc: Rpc,
        node: Node,
        node_first_only: bool,
        control_plane: ControlPlaneStats,
    ) -> Rc<Mux> {
        Rc::new(Mux {
            name,
            target: target.into(),
            protocol,
            rpc,
            node,
            node_first_only,
            state: RefCell::default(),
            control_plane,
            ttls: Default::default(),
            tasks: RefCell::new(Vec::new()),
            subscriptions: tokio::sync::watch::Sender::new(0),
        })
    }

    /// The stream's protocol.
    pub fn protocol(&self) -> Protocol {
        self.protocol
    }

    /// Runs `stream` (the gRPC stream's [`Mux::run`], or REST-JSON polls) and the TTL
    /// expiry on the main thread, until [`Mux::stop`].
    pub fn start_with<F, Fut>(self: &Rc<Self>, server: Weak<Server>, stream: F)
    where
        F: FnOnce(Rc<Mux>, Weak<Server>) -> Fut,
        Fut: std::future::Future<Output = ()> + 'static,
    {
        let running = stream(self.clone(), server.clone());
        let stream = tokio::task::spawn_local(running);
        let mux = Rc::downgrade(self);
        let ttls = tokio::task::spawn_local(async move { expire_resources(mux, server).await });
        *self.tasks.borrow_mut() = vec![stream.abort_handle(), ttls.abort_handle()];
    }

    /// Ends the stream for good (its subscription is gone).
    pub fn stop(&self) {
        for task in self.tasks.borrow_mut().drain(..) {
            task.abort();
        }
        self.state.borrow_mut().sender = None;
        self.control_plane.set_connected(false);
    }

    /// Subscribes to `name` alone (a stream of one subscription), sending a request only
    /// when that changes something.
    pub fn subscribe_one(&self, kind: ResourceType, name: &str) {
        let unchanged = self
            .state
            .borrow()
            .types
            .get(&kind)
            .is_some_and(|t| t.interested && t.names.len() == 1 && t.names.contains(name));
        if !unchanged {
            self.set_names(kind, BTreeSet::from([name.to_string()]));
        }
    }

    /// The stats of every subscription this stream serves for `kind`.
    pub(super) fn subscriptions(
        &self,
        server: &Server,
        kind: ResourceType,
    ) -> Vec<SubscriptionStats> {
        let (wildcard, names) = match self.state.borrow().types.get(&kind) {
            Some(t) if t.interested => (t.wildcard, t.names.clone()),
            _ => return Vec::new(),
        };
        if wildcard {
            return super::subscriptions_of(server, kind, "");
        }
        names
            .iter()
            .flat_map(|n| super::subscriptions_of(server, kind, n))
            .collect()
    }

    /// Subscribes to every resource of `kind` (LDS, CDS).
    pub fn subscribe_wildcard(&self, kind: ResourceType) {
        let mut st = self.state.borrow_mut();
        let t = st.types.entry(kind).or_default();
        if t.interested && t.wildcard {
            return;
        }
        t.interested = true;
        t.wildcard = true;
        drop(st);
        self.subscriptions.send_modify(|n| *n += 1);
        self.send(kind);
    }

    /// Sets the names of `kind` wanted (EDS, RDS); sends a request when they change.
    pub fn set_names(&self, kind: ResourceType, names: BTreeSet<String>) {
        let mut st = self.state.borrow_mut();
        let t = st.types.entry(kind).or_default();
        if t.names == names && (t.interested || names.is_empty()) {
            return;
        }
        t.interested = true;
        t.names = names;
        // Forget what is no longer subscribed so a re-subscription starts afresh.
        let keep = t.names.clone();
        t.versions.retain(|k, _| keep.contains(k));
        drop(st);
        self.subscriptions.send_modify(|n| *n += 1);
        self.send(kind);
    }

    /// Adds `name` to the subscription of `kind`, next to its wildcard or other names
    /// (on-demand CDS; delta streams only, checked by the caller).
    pub fn subscribe_on_demand(&self, kind: ResourceType, name: &str) {
        {
            let mut st = self.state.borrow_mut();
            let t = st.types.entry(kind).or_default();
            if t.interested && t.names.contains(name) {
                return;
            }
            t.interested = true;
            t.names.insert(name.to_string());
        }
        self.send(kind);
    }

    /// Holds requests of `kind` until [`Mux::resume`] (Envoy pauses CDS while clusters
    /// warm).
    pub fn pause(&self, kind: ResourceType) {
        self.state
            .borrow_mut()
            .types
            .entry(kind)
            .or_default()
            .paused = true;
    }

    /// Releases a paused type, sending the request that was held, if any.
    pub fn resume(&self, kind: ResourceType) {
        let pending = {
            let mut st = self.state.borrow_mut();
            let t = st.types.entry(kind).or_default();
            let was = t.paused && t.pending;
            t.paused = false;
            t.pending = false;
            was
        };
        if pending {
            self.send(kind);
        }
    }

    /// Whether `kind` is paused.
    pub fn is_paused(&self, kind: ResourceType) -> bool {
        self.state
            .borrow()
            .types
            .get(&kind)
            .is_some_and(|t| t.paused)
    }

    /// The last accepted version of `kind`.
    pub fn version(&self, kind: ResourceType) -> Option<String> {
        self.state
            .borrow()
            .types
            .get(&kind)
            .map(|t| t.version.clone())
    }

    /// Builds and sends the current request of `kind` (ACK/NACK or subscription change),
    /// unless the type is paused or the stream is down.
    fn send(&self, kind: ResourceType) {
        let mut st = self.state.borrow_mut();
        let include_node = !st.node_sent || !self.node_first_only;
        let MuxState {
            types,
            sender,
            node_sent,
        } = &mut *st;
        let Some(t) = types.get_mut(&kind) else {
            return;
        };
        if !t.interested {
            return;
        }
        if t.paused {
            t.pending = true;
            return;
        }
        let Some(sender) = sender else {
            return;
        };
        let node = include_node.then(|| self.node.clone());
        let sent = match sender {
            Sender::Sotw(tx) => {
                let error = t.error.take();
                let req = sotw_request(kind, t, node, t.nonce.clone(), error);
                tx.send(req).is_ok()
            }
            Sender::Delta(tx) => {
                let mut subscribe = Vec::new();
                let mut unsubscribe = Vec::new();
                if t.wildcard && !t.sent_wildcard {
                    // The legacy wildcard: the type's first request names nothing, as
                    // Envoy's does (XDS.md rule 11).
                    t.sent_wildcard = true;
                }
                subscribe.extend(t.names.difference(&t.sent_names).cloned());
                unsubscribe.extend(t.sent_names.difference(&t.names).cloned());
                // Names next to a legacy wildcard (on-demand clusters next to CDS) go
                // alone, without an explicit "*": what Envoy 1.40 sends (measured; XDS.md
                // rule 11 would add "*").
                t.sent_names = t.names.clone();
                let req = DeltaDiscoveryRequest {
                    node,
                    type_url: kind.type_url().to_string(),
                    resource_names_subscribe: subscribe,
                    resource_names_unsubscribe: unsubscribe,
                    response_nonce: t.nonce.clone(),
                    error_detail: t.error.take(),
                    ..Default::default()
                };
                tx.send(req).is_ok()
            }
        };
        if sent {
            *node_sent = true;
        }
    }

    /// Queues the first request of every subscribed type on a new stream.
    fn send_initial(&self) {
        let types: Vec<ResourceType> = {
            let mut st = self.state.borrow_mut();
            let delta = matches!(st.sender, Some(Sender::Delta(_)));
            st.node_sent = false;
            for t in st.types.values_mut() {
                // A new stream has no nonce; SotW re-sends the last accepted version.
                t.nonce.clear();
                t.error = None;
                t.sent_names.clear();
                t.sent_wildcard = false;
                t.pending = false;
                if delta {
                    t.version.clear();
                }
            }
            ORDER
                .into_iter()
                .filter(|u| st.types.get(u).is_some_and(|t| t.interested))
                .collect()
        };
        for kind in types {
            if self.protocol == Protocol::Delta {
                self.send_delta_initial(kind);
            } else {
                self.send(kind);
            }
        }
    }

    fn send_delta_initial(&self, kind: ResourceType) {
        let mut st = self.state.borrow_mut();
        let include_node = !st.node_sent || !self.node_first_only;
        let MuxState {
            types,
            sender,
            node_sent,
        } = &mut *st;
        let (Some(t), Some(Sender::Delta(tx))) = (types.get_mut(&kind), sender.as_ref()) else {
            return;
        };
        // A wildcard is the legacy one (XDS.md rule 11); names next to it go alone, as
        // Envoy 1.40 sends them.
        let subscribe: Vec<String> = t.names.iter().cloned().collect();
        t.sent_wildcard = t.wildcard;
        t.sent_names = t.names.clone();
        let req = DeltaDiscoveryRequest {
            node: include_node.then(|| self.node.clone()),
            type_url: kind.type_url().to_string(),
            resource_names_subscribe: subscribe,
            initial_resource_versions: t.versions.clone().into_iter().collect(),
            ..Default::default()
        };
        if tx.send(req).is_ok() {
            *node_sent = true;
        }
    }

    /// The next REST poll of this mux's type: a SotW request with the node, the last
    /// accepted version and, after a rejection, its `error_detail` (kept on every poll
    /// until a response is accepted: a poll has no nonce to tie a NACK to). `None` while
    /// nothing is subscribed. Pauses do not apply (Envoy pauses only gRPC muxes).
    pub(super) fn rest_request(&self) -> Option<(ResourceType, DiscoveryRequest)> {
        let Rpc::Single(kind) = self.rpc else {
            return None;
        };
        let st = self.state.borrow();
        let t = st.types.get(&kind)?;
        if !t.interested || (!t.wildcard && t.names.is_empty()) {
            return None;
        }
        let req = sotw_request(
            kind,
            t,
            Some(self.node.clone()),
            String::new(),
            t.error.clone(),
        );
        Some((kind, req))
    }

    /// Changes of the subscriptions (a counter bumped by each).
    pub(super) fn subscription_changes(&self) -> tokio::sync::watch::Receiver<u64> {
        self.subscriptions.subscribe()
    }

    /// Records a REST response that could not be read as a `DiscoveryResponse` as a
    /// rejection (counted, and the next poll carries `error_detail`).
    pub(super) fn rest_rejected(&self, server: &Rc<Server>, kind: ResourceType, detail: String) {
        self.decode_rejected(server, kind);
        self.finish_response(kind, "", Err(detail), &[], &[]);
    }

    /// The mux's name (for logs).
    pub(super) fn name(&self) -> &str {
        &self.name
    }

    /// The gRPC stream's life: connect, stream, reconnect with back-off, forever.
    pub(super) async fn run(self: Rc<Self>, server: Weak<Server>) {
        let mut backoff = Backoff::new(Duration::from_millis(500), Duration::from_secs(30));
        loop {
            let established = self.stream_once(&server).await;
            self.state.borrow_mut().sender = None;
            let Some(server) = server.upgrade() else {
                return;
            };
            self.control_plane.set_connected(false);
            // Envoy's establishment failure: every subscription on the stream counts it.
            for kind in self.interested_types() {
                for stats in self.subscriptions(&server, kind) {
                    stats.connection_failed();
                }
            }
            if established {
                backoff.reset();
            }
            drop(server);
            let delay = backoff.next();
            tracing::debug!(mux = %self.name, ?delay, "xDS stream closed; reconnecting");
            tokio::time::sleep(delay).await;
        }
    }

    fn interested_types(&self) -> Vec<ResourceType> {
        self.state
            .borrow()
            .types
            .iter()
            .filter(|(_, t)| t.interested)
            .map(|(u, _)| *u)
            .collect()
    }

    /// One connection: returns whether a stream was established.
    async fn stream_once(&self, server: &Weak<Server>) -> bool {
        let Transport::Grpc(target) = &self.target else {
            return false;
        };
        let channel = match self.rpc {
            // The ADS stream has a connection of its own; per-subscription streams share one.
            Rpc::Ads => target.connect().await,
            Rpc::Single(_) => target.shared_channel(),
        };
        let channel = match channel {
            Ok(c) => c,
            Err(e) => {
                tracing::warn!(mux = %self.name, uri = %target.uri, error = %e, "cannot connect to the xDS server");
                return false;
            }
        };
        match self.protocol {
            Protocol::Sotw => self.sotw_stream(channel, server).await,
            Protocol::Delta => self.delta_stream(channel, server).await,
        }
    }

    async fn sotw_stream(&self, channel: Channel, server: &Weak<Server>) -> bool {
        let (tx, rx) = mpsc::unbounded_channel();
        self.state.borrow_mut().sender = Some(Sender::Sotw(tx));
        self.send_initial();
        let requests = self.request(UnboundedReceiverStream::new(rx));
        let response = open_rpc!(
            self.rpc,
            channel,
            requests,
            [
                stream_aggregated_resources,
                stream_clusters,
                stream_endpoints,
                stream_listeners,
                stream_routes,
                stream_secrets,
                stream_runtime
            ]
        );
        self.read_responses(response, server, Self::on_sotw_response)
            .await
    }

    async fn delta_stream(&self, channel: Channel, server: &Weak<Server>) -> bool {
        let (tx, rx) = mpsc::unbounded_channel();
        self.state.borrow_mut().sender = Some(Sender::Delta(tx));
        self.send_initial();
        let requests = self.request(UnboundedReceiverStream::new(rx));
        let response = open_rpc!(
            self.rpc,
            channel,
            requests,
            [
                delta_aggregated_resources,
                delta_clusters,
                delta_endpoints,
                delta_listeners,
                delta_routes,
                delta_secrets,
                delta_runtime
            ]
        );
        self.read_responses(response, server, Self::on_delta_response)
            .await
    }

    /// The stream's request, with `initial_metadata` (validated with the config).
    fn request<T>(&self, requests: T) -> tonic::Request<T> {
        let mut request = tonic::Request::new(requests);
        let metadata = match &self.target {
            Transport::Grpc(target) => target.metadata.as_slice(),
            Transport::Rest(_) => &[],
        };
        for (key, value) in metadata {
            if let (Ok(key), Ok(value)) = (
                tonic::metadata::AsciiMetadataKey::from_bytes(key.as_bytes()),
                tonic::metadata::AsciiMetadataValue::try_from(value.as_str()),
            ) {
                request.metadata_mut().insert(key, value);
            }
        }
        request
    }

    /// Delivers every response of an opened stream to `handle` until the stream ends;
    /// returns whether the stream was established at all.
    async fn read_responses<R: prost::Message>(
        &self,
        opened: Result<tonic::Response<tonic::codec::Streaming<R>>, tonic::Status>,
        server: &Weak<Server>,
        handle: fn(&Self, &Rc<Server>, R),
    ) -> bool {
        let mut stream = match opened {
            Ok(r) => r.into_inner(),
            Err(status) => {
                tracing::warn!(mux = %self.name, %status, "xDS stream refused");
                return false;
            }
        };
        self.connected();
        loop {
            match stream.message().await {
                Ok(Some(resp)) => {
                    let Some(server) = server.upgrade() else {
                        return true;
                    };
                    let size = resp.encoded_len();
                    handle(self, &server, resp);
                    if size >= crate::memory::TRIM_AFTER_BYTES {
                        crate::memory::release_free_heap();
                    }
                }
                Ok(None) => {
                    tracing::warn!(mux = %self.name, "xDS stream closed by the server");
                    return true;
                }
                Err(status) => {
                    tracing::warn!(mux = %self.name, %status, "xDS stream failed");
                    return true;
                }
            }
        }
    }

    fn connected(&self) {
        if let Transport::Grpc(target) = &self.target {
            tracing::info!(mux = %self.name, uri = %target.uri, "xDS stream established");
        }
        self.control_plane.set_connected(true);
    }

    /// Checks a response is of a type this stream watches and records its nonce; returns
    /// its type, or `None` (logged) for a response to ignore.
    fn accept(&self, type_url: &str, nonce: &str) -> Option<ResourceType> {
        let Some(kind) = canonical(type_url) else {
            tracing::warn!(mux = %self.name, type_url, "ignoring a response of an unknown type");
            return None;
        };
        let mut st = self.state.borrow_mut();
        let Some(t) = st.types.get_mut(&kind).filter(|t| t.interested) else {
            tracing::warn!(mux = %self.name, type_url, "ignoring a response for an unwatched type");
            return None;
        };
        t.nonce = nonce.to_string();
        Some(kind)
    }

    /// Applies a SotW response (from a stream or a REST poll) and records the ACK/NACK.
    pub(super) fn on_sotw_response(&self, server: &Rc<Server>, resp: DiscoveryResponse) {
        let Some(kind) = self.accept(&resp.type_url, &resp.nonce) else {
            return;
        };
        if let Some(cp) = &resp.control_plane {
            self.control_plane.set_identifier(&cp.identifier);
        }
        let rest = matches!(self.target, Transport::Rest(_));
        let decoded = apply::decode(kind, &resp.resources)
            .and_then(|resources| self.check_heartbeats(kind, resources))
            .and_then(|resources| match rest {
                true => apply::check_rtds_singleton(kind, resources),
                false => Ok(resources),
            });
        if decoded.is_err() {
            self.decode_rejected(server, kind);
        }
        let mut ttls = Vec::new();
        let result = decoded.and_then(|resources| {
            ttls = resources.iter().map(|r| (r.name.clone(), r.ttl)).collect();
            apply::apply(
                server,
                kind,
                Update::Sotw {
                    version: &resp.version_info,
                    resources,
                },
            )
        });
        if result.is_ok() {
            self.track_ttls(kind, &ttls, &[]);
        }
        self.finish_response(kind, &resp.version_info, result, &[], &[]);
    }

    fn on_delta_response(&self, server: &Rc<Server>, resp: DeltaDiscoveryResponse) {
        let Some(kind) = self.accept(&resp.type_url, &resp.nonce) else {
            return;
        };
        let mut versions = Vec::new();
        if let Some(cp) = &resp.control_plane {
            self.control_plane.set_identifier(&cp.identifier);
        }
        let decoded = apply::decode_delta(kind, &resp.resources)
            .and_then(|resources| self.check_heartbeats(kind, resources));
        if decoded.is_err() {
            self.decode_rejected(server, kind);
        }
        let mut ttls = Vec::new();
        let result = decoded.and_then(|resources| {
            ttls = resources.iter().map(|r| (r.name.clone(), r.ttl)).collect();
            versions = resources
                .iter()
                .filter(|r| !matches!(r.proto, apply::Proto::Heartbeat))
                .map(|r| (r.name.clone(), r.version.clone()))
                .collect();
            apply::apply(
                server,
                kind,
                Update::Delta {
                    version: &resp.system_version_info,
                    resources,
                    removed: &resp.removed_resources,
                },
            )
        });
        if result.is_ok() {
            self.track_ttls(kind, &ttls, &resp.removed_resources);
        }
        self.finish_response(
            kind,
            &resp.system_version_info,
            result,
            &versions,
            &resp.removed_resources,
        );
    }

    /// A heartbeat (a `Resource` wrapper without a resource) is valid only for a resource
    /// held with a TTL; any other is a resource without a body, rejected.
    fn check_heartbeats(
        &self,
        kind: ResourceType,
        resources: Vec<apply::Resource>,
    ) -> Result<Vec<apply::Resource>, String> {
        for (i, r) in resources.iter().enumerate() {
            if matches!(r.proto, apply::Proto::Heartbeat) && !self.ttls.holds(kind, &r.name) {
                return Err(format!("resources[{i}] ('{}'): no resource", r.name));
            }
        }
        Ok(resources)
    }

    /// After an accepted response: each resource's TTL from its wrapper (a heartbeat
    /// refreshes it; none clears it); removed resources have none.
    fn track_ttls(
        &self,
        kind: ResourceType,
        ttls: &[(String, Option<Duration>)],
        removed: &[String],
    ) {
        for (name, ttl) in ttls {
            self.ttls.set(kind, name, *ttl);
        }
        for name in removed {
            self.ttls.set(kind, name, None);
        }
    }

    /// A response whose resources do not decode (wrong type URL, bad bytes) is rejected by
    /// every subscription of its type on this stream, as in Envoy. A rejection ends the
    /// initial fetch of the stream's RTDS layers (Envoy's `onConfigUpdateFailed` lets
    /// start-up continue).
    fn decode_rejected(&self, server: &Rc<Server>, kind: ResourceType) {
        for stats in self.subscriptions(server, kind) {
            stats.rejected();
        }
        if kind == ResourceType::Runtime {
            let names = self.names(kind);
            super::rtds_settled(server, &names);
            super::after_update(server);
        }
    }

    /// The names of `kind` this stream subscribes to.
    pub(super) fn names(&self, kind: ResourceType) -> Vec<String> {
        self.state
            .borrow()
            .types
            .get(&kind)
            .map(|t| t.names.iter().cloned().collect())
            .unwrap_or_default()
    }

    /// Records the outcome and answers with an ACK or a NACK.
    fn finish_response(
        &self,
        kind: ResourceType,
        version: &str,
        result: Result<(), String>,
        delta_versions: &[(String, String)],
        removed: &[String],
    ) {
        {
            let mut st = self.state.borrow_mut();
            let t = st.types.entry(kind).or_default();
            match &result {
                Ok(()) => {
                    t.version = version.to_string();
                    t.error = None;
                    for (name, v) in delta_versions {
                        t.versions.insert(name.clone(), v.clone());
                    }
                    for name in removed {
                        t.versions.remove(name);
                    }
                }
                Err(detail) => {
                    tracing::warn!(mux = %self.name, type_url = kind.type_url(), error = %detail, "rejecting xDS update");
                    t.error = Some(Status {
                        code: tonic::Code::Internal as i32,
                        message: detail.clone(),
                        details: Vec::new(),
                    });
                }
            }
        }
        self.send(kind);
    }
}

/// A SotW request of `kind` from its state `t`.
fn sotw_request(
    kind: ResourceType,
    t: &TypeState,
    node: Option<Node>,
    response_nonce: String,
    error_detail: Option<Status>,
) -> DiscoveryRequest {
    DiscoveryRequest {
        version_info: t.version.clone(),
        node,
        resource_names: if t.wildcard {
            Vec::new()
        } else {
            t.names.iter().cloned().collect()
        },
        type_url: kind.type_url().to_string(),
        response_nonce,
        error_detail,
        ..Default::default()
    }
}

/// Removes the resources whose TTL expires, as a delta removal would (Envoy's TTL expiry,
/// in state of the world too), until the stream goes.
async fn expire_resources(mux: Weak<Mux>, server: Weak<Server>) {
    loop {
        let Some(m) = mux.upgrade() else {
            return;
        };
        // Held while waiting: a stopped stream's task is aborted.
        let expired = m.ttls.expired().await;
        drop(m);
        let Some(server) = server.upgrade() else {
            return;
        };
        let mut by_kind: BTreeMap<ResourceType, Vec<String>> = BTreeMap::new();
        for (kind, name) in expired {
            by_kind.entry(kind).or_default().push(name);
        }
        for (kind, names) in by_kind {
            tracing::info!(
                type_url = kind.type_url(),
                ?names,
                "xDS resources expired (TTL)"
            );
            let removed = apply::apply(
                &server,
                kind,
                Update::Delta {
                    version: "",
                    resources: Vec::new(),
                    removed: &names,
                },
            );
            if let Err(e) = removed {
                tracing::warn!(type_url = kind.type_url(), error = %e, "removing expired resources failed");
            }
        }
    }
}

/// Envoy's jittered exponential back-off: a random delay up to base·2ⁿ, capped.
struct Backoff {
    base: Duration,
    max: Duration,
    attempt: u32,
}

impl Backoff {
    fn new(base: Duration, max: Duration) -> Backoff {
        Backoff {
            base,
            max,
            attempt: 0,
        }
    }

    fn reset(&mut self) {
        self.attempt = 0;
    }

    fn next(&mut self) -> Duration {
        let ceiling = self
            .base
            .saturating_mul(1u32 << self.attempt.min(16))
            .min(self.max);
        self.attempt = self.attempt.saturating_add(1);
        let ms = ceiling.as_millis().max(1) as u64;
        Duration::from_millis(fastrand::u64(ms / 2..=ms))
    }
}
