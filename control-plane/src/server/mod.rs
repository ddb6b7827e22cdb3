//! The gRPC xDS services on tonic: ADS (state of the world and delta) and the per-type
//! CDS/EDS/LDS/RDS/SDS services, plus REST-JSON xDS on a port of its own, all driven by
//! one [`SnapshotCache`] and reporting to one [`StatusRegistry`].

mod delta;
mod per_type;
mod rest;
mod sotw;

pub use rest::RestServerHandle;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use courier_proto::envoy::config::core::v3::Node;
use courier_proto::envoy::service::discovery::v3::aggregated_discovery_service_server::{
    AggregatedDiscoveryService, AggregatedDiscoveryServiceServer,
};
use courier_proto::envoy::service::discovery::v3::{
    DeltaDiscoveryRequest, DeltaDiscoveryResponse, DiscoveryRequest, DiscoveryResponse,
};
use tokio::net::TcpListener;
use tokio::sync::{mpsc, watch};
use tokio::task::JoinHandle;
use tokio_stream::wrappers::{ReceiverStream, TcpListenerStream};
use tonic::{Request, Response, Status, Streaming};

use crate::cache::{SnapshotCache, SnapshotWatch};
use crate::resource::ResourceType;
use crate::status::StatusRegistry;

/// Responses buffered per stream before the stream task waits for the client to read: small,
/// so a slow client applies backpressure instead of growing memory.
const STREAM_BUFFER: usize = 8;

/// Server behaviour knobs.
#[derive(Debug, Clone, Default)]
pub struct ServerConfig {
    /// On ADS, answer an EDS/RDS request only once *every* requested name exists in the
    /// snapshot (go-control-plane's ADS mode). Off by default: courier-cp answers with the
    /// requested names the snapshot has (XDS.md rule 21 allows either). Rationale: snapshots
    /// are consistent, so a missing name can only be a stale one from the client's previous
    /// config; waiting for it would hold back a legitimate update until the client
    /// unsubscribes.
    pub ads_strict: bool,
    /// Serve over TLS (and require client certificates when it names a client CA).
    pub tls: Option<ServerTls>,
}

/// The xDS server's TLS: its certificate and key (PEM), and the CA its clients'
/// certificates must chain to (mTLS), if any.
#[derive(Clone, Default)]
pub struct ServerTls {
    /// The server's certificate chain, PEM.
    pub cert: Vec<u8>,
    /// The server's private key, PEM.
    pub key: Vec<u8>,
    /// The CA client certificates must chain to; `None` serves TLS without client
    /// certificates.
    pub client_ca: Option<Vec<u8>>,
}

impl std::fmt::Debug for ServerTls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ServerTls")
            .field("mtls", &self.client_ca.is_some())
            .finish_non_exhaustive()
    }
}

/// Which types a stream may carry.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Scope {
    /// ADS: every type, multiplexed.
    Aggregated,
    /// A per-type service.
    Single(ResourceType),
}

impl Scope {
    /// Resolves a request's type URL (a per-type stream may leave it empty).
    fn resolve(self, type_url: &str) -> Result<ResourceType, String> {
        match self {
            Scope::Single(t) if type_url.is_empty() || type_url == t.type_url() => Ok(t),
            Scope::Single(t) => Err(format!(
                "type URL {type_url:?} on the {} service (expected {})",
                t,
                t.type_url()
            )),
            Scope::Aggregated => ResourceType::from_type_url(type_url)
                .ok_or_else(|| format!("unsupported type URL {type_url:?}")),
        }
    }
}

/// The node a stream belongs to, learnt from its first request.
pub(crate) struct StreamNode {
    pub(crate) id: String,
    pub(crate) snapshots: SnapshotWatch,
    status: StatusRegistry,
}

impl StreamNode {
    fn open(shared: &Shared, node: Option<&Node>) -> StreamNode {
        let default = Node::default();
        let node = node.unwrap_or(&default);
        let key = shared.cache.node_key(node);
        shared.status.stream_opened(&node.id, &key);
        tracing::info!(node = %node.id, key = %key, "xDS stream opened");
        StreamNode {
            id: node.id.clone(),
            snapshots: shared.cache.watch(&key),
            status: shared.status.clone(),
        }
    }
}

impl Drop for StreamNode {
    fn drop(&mut self) {
        // Runs on every exit path of a stream task, panics included.
        self.status.stream_closed(&self.id);
        tracing::info!(node = %self.id, "xDS stream closed");
    }
}

/// State shared by every service and stream.
pub(crate) struct Shared {
    pub(crate) cache: SnapshotCache,
    pub(crate) status: StatusRegistry,
    pub(crate) config: ServerConfig,
    shutdown: watch::Sender<bool>,
}

/// Waits until the snapshot watch changes; never returns when there is no watch yet (the
/// stream has not named its node) or the cache is gone.
pub(crate) async fn snapshot_changed(node: &mut Option<StreamNode>) {
    match node {
        Some(n) => {
            if n.snapshots.changed().await.is_err() {
                std::future::pending::<()>().await;
            }
        }
        None => std::future::pending::<()>().await,
    }
}

/// Resolves once shutdown was requested.
pub(crate) async fn shutdown_requested(rx: &mut watch::Receiver<bool>) {
    // An error means the sender is gone, which only happens when the server is dropped.
    let _ = rx.wait_for(|down| *down).await;
}

/// The xDS services. Cheap to clone; clones share cache, status and shutdown.
#[derive(Clone)]
pub struct XdsServer {
    shared: Arc<Shared>,
}

impl std::fmt::Debug for XdsServer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("XdsServer")
            .field("config", &self.shared.config)
            .finish_non_exhaustive()
    }
}

/// The response stream of a SotW service.
pub type SotwStream = ReceiverStream<Result<DiscoveryResponse, Status>>;
/// The response stream of a delta service.
pub type DeltaStream = ReceiverStream<Result<DeltaDiscoveryResponse, Status>>;

impl XdsServer {
    /// Services over `cache`, reporting to `status`.
    pub fn new(cache: SnapshotCache, status: StatusRegistry, config: ServerConfig) -> XdsServer {
        XdsServer {
            shared: Arc::new(Shared {
                cache,
                status,
                config,
                shutdown: watch::channel(false).0,
            }),
        }
    }

    /// Ends every open stream (with status OK, so clients reconnect elsewhere) and refuses
    /// new ones; used for graceful shutdown, before the transport stops.
    pub fn shutdown_streams(&self) {
        self.shared.shutdown.send_replace(true);
    }

    pub(crate) fn open_sotw(
        &self,
        scope: Scope,
        requests: Streaming<DiscoveryRequest>,
    ) -> SotwStream {
        let (tx, rx) = mpsc::channel(STREAM_BUFFER);
        let shared = self.shared.clone();
        let shutdown = self.shared.shutdown.subscribe();
        tokio::spawn(sotw::run(shared, scope, requests, tx, shutdown));
        ReceiverStream::new(rx)
    }

    pub(crate) fn open_delta(
        &self,
        scope: Scope,
        requests: Streaming<DeltaDiscoveryRequest>,
    ) -> DeltaStream {
        let (tx, rx) = mpsc::channel(STREAM_BUFFER);
        let shared = self.shared.clone();
        let shutdown = self.shared.shutdown.subscribe();
        tokio::spawn(delta::run(shared, scope, requests, tx, shutdown));
        ReceiverStream::new(rx)
    }

    /// A tonic router with ADS and every per-type service (over TLS when configured).
    pub fn router(&self) -> Result<tonic::transport::server::Router, tonic::transport::Error> {
        use courier_proto::envoy::service::cluster::v3::cluster_discovery_service_server::ClusterDiscoveryServiceServer;
        use courier_proto::envoy::service::endpoint::v3::endpoint_discovery_service_server::EndpointDiscoveryServiceServer;
        use courier_proto::envoy::service::listener::v3::listener_discovery_service_server::ListenerDiscoveryServiceServer;
        use courier_proto::envoy::service::route::v3::route_discovery_service_server::RouteDiscoveryServiceServer;
        use courier_proto::envoy::service::runtime::v3::runtime_discovery_service_server::RuntimeDiscoveryServiceServer;
        use courier_proto::envoy::service::secret::v3::secret_discovery_service_server::SecretDiscoveryServiceServer;
        // Large snapshots (thousands of clusters) exceed tonic's 4 MiB default message size.
        const MAX_MESSAGE: usize = 64 * 1024 * 1024;
        let mut builder = tonic::transport::Server::builder()
            .tcp_nodelay(true)
            .http2_keepalive_interval(Some(Duration::from_secs(30)));
        if let Some(tls) = &self.shared.config.tls {
            let mut config = tonic::transport::ServerTlsConfig::new()
                .identity(tonic::transport::Identity::from_pem(&tls.cert, &tls.key));
            if let Some(ca) = &tls.client_ca {
                config = config.client_ca_root(tonic::transport::Certificate::from_pem(ca));
            }
            builder = builder.tls_config(config)?;
        }
        Ok(builder
            .add_service(
                AggregatedDiscoveryServiceServer::new(self.clone())
                    .max_decoding_message_size(MAX_MESSAGE)
                    .max_encoding_message_size(MAX_MESSAGE),
            )
            .add_service(ClusterDiscoveryServiceServer::new(per_type::Cds(
                self.clone(),
            )))
            .add_service(EndpointDiscoveryServiceServer::new(per_type::Eds(
                self.clone(),
            )))
            .add_service(ListenerDiscoveryServiceServer::new(per_type::Lds(
                self.clone(),
            )))
            .add_service(RouteDiscoveryServiceServer::new(per_type::Rds(
                self.clone(),
            )))
            .add_service(SecretDiscoveryServiceServer::new(per_type::Sds(
                self.clone(),
            )))
            .add_service(RuntimeDiscoveryServiceServer::new(per_type::Rtds(
                self.clone(),
            ))))
    }

    /// Serves on `listener` until `shutdown` resolves, then ends every stream and stops.
    pub async fn serve(
        self,
        listener: TcpListener,
        shutdown: impl std::future::Future<Output = ()> + Send + 'static,
    ) -> Result<(), tonic::transport::Error> {
        let this = self.clone();
        let shutdown = async move {
            shutdown.await;
            this.shutdown_streams();
        };
        self.router()?
            .serve_with_incoming_shutdown(TcpListenerStream::new(listener), shutdown)
            .await
    }

    /// Serves REST-JSON xDS (`POST /v3/discovery:<type>`, HTTP/1.1 or h2c) on `listener`
    /// until `shutdown` turns true (or the server's streams are shut down).
    pub async fn serve_rest(self, listener: TcpListener, mut shutdown: watch::Receiver<bool>) {
        let rest = Arc::new(rest::Rest::new(self.shared.clone()));
        let mut streams_down = self.shared.shutdown.subscribe();
        let (stop_tx, stop_rx) = watch::channel(false);
        let serving = tokio::spawn(rest.serve(listener, stop_rx));
        tokio::select! {
            _ = shutdown_requested(&mut shutdown) => {}
            _ = shutdown_requested(&mut streams_down) => {}
        }
        stop_tx.send_replace(true);
        let _ = serving.await;
    }

    /// Binds `addr` (port 0: ephemeral) and serves REST-JSON xDS in a background task.
    pub async fn start_rest(self, addr: SocketAddr) -> std::io::Result<RestServerHandle> {
        let listener = TcpListener::bind(addr).await?;
        let local_addr = listener.local_addr()?;
        let (stop, stop_rx) = watch::channel(false);
        let task = tokio::spawn(self.serve_rest(listener, stop_rx));
        tracing::info!(%local_addr, "REST xDS server listening");
        Ok(RestServerHandle {
            local_addr,
            stop,
            task: Some(task),
        })
    }

    /// Binds `addr` (port 0 for an ephemeral port) and serves in a background task.
    pub async fn start(self, addr: SocketAddr) -> std::io::Result<XdsServerHandle> {
        let listener = TcpListener::bind(addr).await?;
        let local_addr = listener.local_addr()?;
        let (stop_tx, mut stop_rx) = watch::channel(false);
        let task = tokio::spawn(async move {
            let stop = async move { shutdown_requested(&mut stop_rx).await };
            if let Err(e) = self.serve(listener, stop).await {
                tracing::error!(error = %e, "xDS server failed");
            }
        });
        tracing::info!(%local_addr, "xDS server listening");
        Ok(XdsServerHandle {
            local_addr,
            stop: stop_tx,
            task: Some(task),
        })
    }
}

/// A running xDS server, gRPC ([`XdsServer::start`]) or REST-JSON. Dropping it stops the
/// server.
#[derive(Debug)]
pub struct XdsServerHandle {
    pub(crate) local_addr: SocketAddr,
    pub(crate) stop: watch::Sender<bool>,
    pub(crate) task: Option<JoinHandle<()>>,
}

impl XdsServerHandle {
    /// The address the server listens on.
    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// Ends every stream, stops accepting and waits for the server task to finish.
    pub async fn shutdown(mut self) {
        self.stop.send_replace(true);
        if let Some(task) = self.task.take() {
            let _ = task.await;
        }
    }
}

impl Drop for XdsServerHandle {
    fn drop(&mut self) {
        self.stop.send_replace(true);
    }
}

type BoxResult<T> = Result<Response<T>, Status>;

#[tonic::async_trait]
impl AggregatedDiscoveryService for XdsServer {
    type StreamAggregatedResourcesStream = SotwStream;
    type DeltaAggregatedResourcesStream = DeltaStream;

    async fn stream_aggregated_resources(
        &self,
        request: Request<Streaming<DiscoveryRequest>>,
    ) -> BoxResult<SotwStream> {
        Ok(Response::new(
            self.open_sotw(Scope::Aggregated, request.into_inner()),
        ))
    }

    async fn delta_aggregated_resources(
        &self,
        request: Request<Streaming<DeltaDiscoveryRequest>>,
    ) -> BoxResult<DeltaStream> {
        Ok(Response::new(
            self.open_delta(Scope::Aggregated, request.into_inner()),
        ))
    }
}
