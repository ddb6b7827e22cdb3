//! A scripted ADS server: the test sends exactly the `DiscoveryResponse`s it wants
//! (wrong type URLs, undecodable bytes, duplicate names — what courier-cp refuses to build)
//! and reads every `DiscoveryRequest` the proxy sends; on delta streams it reads the
//! `DeltaDiscoveryRequest`s and answers as the test says.

use std::time::Duration;

use courier_proto::envoy::service::discovery::v3::aggregated_discovery_service_server::{
    AggregatedDiscoveryService, AggregatedDiscoveryServiceServer,
};
pub use courier_proto::envoy::service::discovery::v3::Resource as DeltaResource;
use courier_proto::envoy::service::discovery::v3::{
    DeltaDiscoveryRequest, DeltaDiscoveryResponse, DiscoveryRequest, DiscoveryResponse,
};
use futures::StreamExt;
use tokio::sync::{mpsc, Mutex};
use tokio_stream::wrappers::{ReceiverStream, TcpListenerStream};
use tonic::{Request, Response, Status, Streaming};

type Tx = mpsc::Sender<Result<DiscoveryResponse, Status>>;
type DeltaTx = mpsc::Sender<Result<DeltaDiscoveryResponse, Status>>;

/// A SotW stream handed to the test: its response sender, its requests, its metadata.
type NewStream = (
    Tx,
    mpsc::UnboundedReceiver<DiscoveryRequest>,
    tonic::metadata::MetadataMap,
);

struct Service {
    // The newest stream's sender, handed to the test.
    streams: mpsc::UnboundedSender<NewStream>,
    delta_streams: mpsc::UnboundedSender<(DeltaTx, mpsc::UnboundedReceiver<DeltaDiscoveryRequest>)>,
}

/// A relayed stream: the sender of its responses and their receiving end (the stream
/// returned to the proxy), and the requests read off it.
type Relayed<Req, Resp> = (
    mpsc::Sender<Result<Resp, Status>>,
    mpsc::Receiver<Result<Resp, Status>>,
    mpsc::UnboundedReceiver<Req>,
);

/// Forwards a stream's requests to the test.
fn relay<Req: Send + 'static, Resp>(request: Request<Streaming<Req>>) -> Relayed<Req, Resp> {
    let (tx, rx) = mpsc::channel(16);
    let (req_tx, req_rx) = mpsc::unbounded_channel();
    let mut incoming = request.into_inner();
    tokio::spawn(async move {
        while let Some(Ok(req)) = incoming.next().await {
            if req_tx.send(req).is_err() {
                return;
            }
        }
    });
    (tx, rx, req_rx)
}

#[tonic::async_trait]
impl AggregatedDiscoveryService for Service {
    type StreamAggregatedResourcesStream = ReceiverStream<Result<DiscoveryResponse, Status>>;
    type DeltaAggregatedResourcesStream = ReceiverStream<Result<DeltaDiscoveryResponse, Status>>;

    async fn stream_aggregated_resources(
        &self,
        request: Request<Streaming<DiscoveryRequest>>,
    ) -> Result<Response<Self::StreamAggregatedResourcesStream>, Status> {
        let metadata = request.metadata().clone();
        let (tx, rx, req_rx) = relay(request);
        let _ = self.streams.send((tx, req_rx, metadata));
        Ok(Response::new(ReceiverStream::new(rx)))
    }

    async fn delta_aggregated_resources(
        &self,
        request: Request<Streaming<DeltaDiscoveryRequest>>,
    ) -> Result<Response<Self::DeltaAggregatedResourcesStream>, Status> {
        let (tx, rx, req_rx) = relay(request);
        let _ = self.delta_streams.send((tx, req_rx));
        Ok(Response::new(ReceiverStream::new(rx)))
    }
}

/// The server; `next_stream` yields each stream the proxy opens.
pub struct ScriptedAds {
    /// Its port.
    pub port: u16,
    streams: Mutex<mpsc::UnboundedReceiver<NewStream>>,
    delta_streams:
        Mutex<mpsc::UnboundedReceiver<(DeltaTx, mpsc::UnboundedReceiver<DeltaDiscoveryRequest>)>>,
    task: tokio::task::JoinHandle<()>,
}

/// One delta ADS stream as the server sees it.
pub struct ScriptedDeltaStream {
    tx: DeltaTx,
    rx: mpsc::UnboundedReceiver<DeltaDiscoveryRequest>,
    nonce: u64,
}

impl ScriptedDeltaStream {
    /// The next request of `type_url` (requests of other types are dropped).
    pub async fn recv(&mut self, type_url: &str) -> DeltaDiscoveryRequest {
        loop {
            let r = tokio::time::timeout(crate::FACT_TIMEOUT, self.rx.recv())
                .await
                .unwrap_or_else(|_| panic!("no delta {type_url} request in time"))
                .expect("stream closed");
            if r.type_url == type_url {
                return r;
            }
        }
    }

    /// Sends `resources` (name, resource), each at version `version`; returns the nonce.
    pub async fn send(
        &mut self,
        type_url: &str,
        version: &str,
        resources: Vec<(String, prost_types_any::Any)>,
    ) -> String {
        let resources = resources
            .into_iter()
            .map(|(name, any)| DeltaResource {
                name,
                version: version.to_string(),
                resource: Some(any),
                ..Default::default()
            })
            .collect();
        self.send_resources(type_url, version, resources).await
    }

    /// Sends `Resource` wrappers as they are (TTLs, heartbeats); returns the nonce.
    pub async fn send_resources(
        &mut self,
        type_url: &str,
        version: &str,
        resources: Vec<DeltaResource>,
    ) -> String {
        self.nonce += 1;
        let nonce = format!("d{}", self.nonce);
        self.tx
            .send(Ok(DeltaDiscoveryResponse {
                system_version_info: version.to_string(),
                type_url: type_url.to_string(),
                nonce: nonce.clone(),
                resources,
                ..Default::default()
            }))
            .await
            .expect("stream closed");
        nonce
    }

    /// Sends a response with no resources; returns its nonce.
    pub async fn send_empty(&mut self, type_url: &str, version: &str) -> String {
        self.nonce += 1;
        let nonce = format!("d{}", self.nonce);
        self.tx
            .send(Ok(DeltaDiscoveryResponse {
                system_version_info: version.to_string(),
                type_url: type_url.to_string(),
                nonce: nonce.clone(),
                ..Default::default()
            }))
            .await
            .expect("stream closed");
        nonce
    }
}

impl Drop for ScriptedAds {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// One ADS stream as the server sees it.
pub struct ScriptedStream {
    /// The metadata (headers) the proxy opened the stream with.
    pub metadata: tonic::metadata::MetadataMap,
    tx: Tx,
    rx: mpsc::UnboundedReceiver<DiscoveryRequest>,
    nonce: u64,
    // Requests of other types read while looking for one type, in order.
    pending: std::collections::VecDeque<DiscoveryRequest>,
}

impl ScriptedAds {
    /// Starts on an ephemeral port.
    pub async fn start() -> ScriptedAds {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let port = listener.local_addr().expect("addr").port();
        ScriptedAds::serve(port, TcpListenerStream::new(listener))
    }

    /// Starts on a Unix-domain socket at `path` (`port` is 0): a local agent as Istio's
    /// and Kuma's bootstraps reach it.
    pub async fn start_unix(path: &std::path::Path) -> ScriptedAds {
        let listener = tokio::net::UnixListener::bind(path).expect("bind unix socket");
        ScriptedAds::serve(0, tokio_stream::wrappers::UnixListenerStream::new(listener))
    }

    /// Serves the connections `incoming` yields.
    fn serve<S, IO>(port: u16, incoming: S) -> ScriptedAds
    where
        S: futures::Stream<Item = std::io::Result<IO>> + Send + 'static,
        IO: tokio::io::AsyncRead
            + tokio::io::AsyncWrite
            + tonic::transport::server::Connected
            + Unpin
            + Send
            + 'static,
    {
        let (tx, rx) = mpsc::unbounded_channel();
        let (delta_tx, delta_rx) = mpsc::unbounded_channel();
        let svc = Service {
            streams: tx,
            delta_streams: delta_tx,
        };
        let task = tokio::spawn(async move {
            let _ = tonic::transport::Server::builder()
                .add_service(AggregatedDiscoveryServiceServer::new(svc))
                .serve_with_incoming(incoming)
                .await;
        });
        ScriptedAds {
            port,
            streams: Mutex::new(rx),
            delta_streams: Mutex::new(delta_rx),
            task,
        }
    }

    /// Waits for the proxy's next delta stream.
    pub async fn next_delta_stream(&self) -> ScriptedDeltaStream {
        let (tx, rx) =
            tokio::time::timeout(crate::FACT_TIMEOUT, self.delta_streams.lock().await.recv())
                .await
                .expect("no delta ADS stream opened in time")
                .expect("server gone");
        ScriptedDeltaStream { tx, rx, nonce: 0 }
    }

    /// Waits for the proxy's next stream.
    pub async fn next_stream(&self) -> ScriptedStream {
        let (tx, rx, metadata) =
            tokio::time::timeout(crate::FACT_TIMEOUT, self.streams.lock().await.recv())
                .await
                .expect("no ADS stream opened in time")
                .expect("server gone");
        ScriptedStream {
            metadata,
            tx,
            rx,
            nonce: 0,
            pending: Default::default(),
        }
    }
}

impl ScriptedStream {
    /// The next request of `type_url` (requests of other types are skipped).
    pub async fn recv(&mut self, type_url: &str) -> DiscoveryRequest {
        if let Some(i) = self.pending.iter().position(|r| r.type_url == type_url) {
            return self.pending.remove(i).expect("index");
        }
        loop {
            let r = tokio::time::timeout(crate::FACT_TIMEOUT, self.rx.recv())
                .await
                .unwrap_or_else(|_| panic!("no {type_url} request in time"))
                .expect("stream closed");
            if r.type_url == type_url {
                return r;
            }
            self.pending.push_back(r);
        }
    }

    /// The next request of any type.
    pub async fn recv_any(&mut self) -> DiscoveryRequest {
        if let Some(r) = self.pending.pop_front() {
            return r;
        }
        tokio::time::timeout(crate::FACT_TIMEOUT, self.rx.recv())
            .await
            .expect("no request in time")
            .expect("stream closed")
    }

    /// The next request of `type_url` within `d`, if any.
    pub async fn try_recv(&mut self, type_url: &str, d: Duration) -> Option<DiscoveryRequest> {
        tokio::time::timeout(d, self.recv(type_url)).await.ok()
    }

    /// Sends a response; returns its nonce.
    pub async fn send(
        &mut self,
        type_url: &str,
        version: &str,
        resources: Vec<prost_types_any::Any>,
    ) -> String {
        self.nonce += 1;
        let nonce = format!("n{}", self.nonce);
        self.tx
            .send(Ok(DiscoveryResponse {
                version_info: version.to_string(),
                resources,
                type_url: type_url.to_string(),
                nonce: nonce.clone(),
                ..Default::default()
            }))
            .await
            .expect("stream closed");
        nonce
    }
}

/// The `Any` type used in discovery responses.
pub mod prost_types_any {
    pub use courier_proto::google::protobuf::Any;
}
