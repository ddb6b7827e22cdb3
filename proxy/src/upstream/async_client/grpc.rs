//! A gRPC service a collector offers (`envoy.config.core.v3.GrpcService`), reached from
//! the main thread: its `envoy_grpc` cluster, `:authority`, per-request `timeout` and
//! `initial_metadata`. Channels are tonic's, one per host and authority, kept while the
//! cluster keeps that host.

use std::cell::RefCell;
use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use courier_proto::envoy::config::core::v3::grpc_service::TargetSpecifier;
use courier_proto::envoy::config::core::v3::GrpcService;
use tonic::metadata::{AsciiMetadataKey, AsciiMetadataValue};
use tonic::transport::{Channel, Endpoint, Uri};

use crate::config::ConfigError;

/// Why there is no channel to the service now.
#[derive(Debug, thiserror::Error)]
pub enum GrpcError {
    /// The cluster is unknown or has no host.
    #[error("gRPC client cluster '{0}' has no host")]
    NoHost(String),
    /// tonic refused the endpoint.
    #[error("cannot reach gRPC client cluster '{cluster}': {reason}")]
    Endpoint {
        /// The cluster.
        cluster: String,
        /// tonic's reason.
        reason: String,
    },
}

/// A compiled `GrpcService`.
#[derive(Debug, Clone)]
pub struct GrpcClient {
    cluster: String,
    authority: Uri,
    timeout: Option<Duration>,
    metadata: Vec<(AsciiMetadataKey, AsciiMetadataValue)>,
    /// Envoy marks its own gRPC calls `x-envoy-internal: true` unless
    /// `envoy_grpc.skip_envoy_headers`.
    envoy_headers: bool,
}

thread_local! {
    /// Channels by host and authority (main thread only).
    static CHANNELS: RefCell<HashMap<(SocketAddr, String), Channel>> = RefCell::new(HashMap::new());
}

impl GrpcClient {
    /// Compiles a `GrpcService`; errors name fields under `at`.
    pub fn compile(proto: &GrpcService, at: &str) -> Result<GrpcClient, ConfigError> {
        if proto.retry_policy.is_some() {
            return Err(ConfigError::unsupported(format!("{at}.retry_policy")));
        }
        let g = match &proto.target_specifier {
            Some(TargetSpecifier::EnvoyGrpc(g)) => g,
            Some(TargetSpecifier::GoogleGrpc(_)) => {
                return Err(ConfigError::new(
                    format!("{at}.google_grpc"),
                    "not supported by Courier (name the collector's cluster with envoy_grpc)",
                ))
            }
            None => {
                return Err(ConfigError::new(
                    at,
                    "one of envoy_grpc or google_grpc is required",
                ))
            }
        };
        for (field, set) in [
            ("retry_policy", g.retry_policy.is_some()),
            (
                "max_receive_message_length",
                g.max_receive_message_length.is_some(),
            ),
        ] {
            if set {
                return Err(ConfigError::unsupported(format!("{at}.envoy_grpc.{field}")));
            }
        }
        if g.cluster_name.is_empty() {
            return Err(ConfigError::new(
                format!("{at}.envoy_grpc.cluster_name"),
                "value length must be at least 1 characters",
            ));
        }
        let authority = if g.authority.is_empty() {
            &g.cluster_name
        } else {
            &g.authority
        };
        let authority = format!("http://{authority}").parse::<Uri>().map_err(|e| {
            ConfigError::new(
                format!("{at}.envoy_grpc.authority"),
                format!("'{authority}' is not a valid authority: {e}"),
            )
        })?;
        let timeout = proto
            .timeout
            .as_ref()
            .map(|d| crate::config::duration(d, &format!("{at}.timeout")))
            .transpose()?
            .filter(|d| !d.is_zero());
        let mut metadata = Vec::with_capacity(proto.initial_metadata.len());
        for (i, h) in proto.initial_metadata.iter().enumerate() {
            let key = AsciiMetadataKey::from_bytes(h.key.as_bytes());
            let value = AsciiMetadataValue::try_from(h.value.as_str());
            match (key, value) {
                (Ok(k), Ok(v)) => metadata.push((k, v)),
                _ => {
                    return Err(ConfigError::new(
                        format!("{at}.initial_metadata[{i}]"),
                        format!("'{}: {}' is not a valid header", h.key, h.value),
                    ))
                }
            }
        }
        Ok(GrpcClient {
            cluster: g.cluster_name.clone(),
            authority,
            timeout,
            metadata,
            envoy_headers: !g.skip_envoy_headers,
        })
    }

    /// The collector's cluster.
    pub fn cluster(&self) -> &str {
        &self.cluster
    }

    /// The per-request timeout, if any.
    pub fn timeout(&self) -> Option<Duration> {
        self.timeout
    }

    /// Whether its calls carry Envoy's headers (`x-envoy-internal`, `x-forwarded-for`):
    /// not under `skip_envoy_headers`.
    pub fn sends_envoy_headers(&self) -> bool {
        self.envoy_headers
    }

    /// The call's `:authority` (`envoy_grpc.authority`, else the cluster's name).
    pub fn authority(&self) -> &str {
        self.authority.authority().map_or("", |a| a.as_str())
    }

    /// The fields a call carries besides gRPC's own: `initial_metadata`, and
    /// `x-envoy-internal: true` unless `skip_envoy_headers` (for a worker's own calls,
    /// which do not go through tonic).
    fn call_headers(&self, headers: &mut http::HeaderMap) {
        for (k, v) in &self.metadata {
            if let (Ok(k), Ok(v)) = (
                http::HeaderName::from_bytes(k.as_str().as_bytes()),
                http::HeaderValue::from_bytes(v.as_bytes()),
            ) {
                headers.append(k, v);
            }
        }
        if self.envoy_headers {
            headers.insert("x-envoy-internal", http::HeaderValue::from_static("true"));
        }
    }

    /// A unary call of `path` (`/<service>/<method>`) carrying `message`, as a worker
    /// sends it itself: gRPC's fields, the call's `timeout` as `grpc-timeout`, the
    /// service's metadata, the message framed.
    pub fn unary_call(
        &self,
        path: &str,
        message: &impl prost::Message,
        timeout: Duration,
    ) -> crate::protocol::message::RequestMessage<bytes::Bytes> {
        let mut headers = http::HeaderMap::new();
        headers.insert(
            http::header::CONTENT_TYPE,
            http::HeaderValue::from_static("application/grpc"),
        );
        headers.insert(http::header::TE, http::HeaderValue::from_static("trailers"));
        headers.insert(
            "grpc-timeout",
            crate::protocol::grpc::timeout_value(timeout),
        );
        self.call_headers(&mut headers);
        crate::protocol::message::RequestMessage {
            method: http::Method::POST,
            path: path.to_owned(),
            authority: self.authority().to_owned(),
            headers,
            body: crate::protocol::grpc_frame::frame(message),
        }
    }

    /// A streaming call of `path` (`/<service>/<method>`), as a worker opens it itself:
    /// gRPC's fields and the service's metadata; no `grpc-timeout` (the stream lives as
    /// long as the request it serves), and its messages go as they are sent.
    pub fn stream_call(&self, path: &str) -> crate::protocol::message::RequestMessage<()> {
        let mut headers = http::HeaderMap::new();
        headers.insert(
            http::header::CONTENT_TYPE,
            http::HeaderValue::from_static("application/grpc"),
        );
        headers.insert(http::header::TE, http::HeaderValue::from_static("trailers"));
        self.call_headers(&mut headers);
        crate::protocol::message::RequestMessage {
            method: http::Method::POST,
            path: path.to_owned(),
            authority: self.authority().to_owned(),
            headers,
            body: (),
        }
    }

    /// A channel to a host of the cluster as it is now (main thread only).
    pub fn channel(&self) -> Result<Channel, GrpcError> {
        let addr =
            super::host_of(&self.cluster).ok_or_else(|| GrpcError::NoHost(self.cluster.clone()))?;
        let key = (addr, self.authority.to_string());
        if let Some(c) = CHANNELS.with(|m| m.borrow().get(&key).cloned()) {
            return Ok(c);
        }
        let endpoint = Endpoint::from_shared(format!("http://{addr}"))
            .map_err(|e| GrpcError::Endpoint {
                cluster: self.cluster.clone(),
                reason: e.to_string(),
            })?
            .origin(self.authority.clone())
            .tcp_nodelay(true)
            .connect_timeout(Duration::from_secs(5));
        let channel = endpoint.connect_lazy();
        CHANNELS.with(|m| m.borrow_mut().insert(key, channel.clone()));
        Ok(channel)
    }

    /// Wraps a message (or a stream of them) with the service's metadata and timeout.
    pub fn request<T>(&self, message: T) -> tonic::Request<T> {
        let mut r = tonic::Request::new(message);
        for (k, v) in &self.metadata {
            r.metadata_mut().append(k.clone(), v.clone());
        }
        if self.envoy_headers {
            r.metadata_mut()
                .insert("x-envoy-internal", AsciiMetadataValue::from_static("true"));
        }
        if let Some(t) = self.timeout {
            r.set_timeout(t);
        }
        r
    }
}

/// An open client-streaming call (a stream of access-log entries, of metrics): where its
/// messages go, and whether it has ended.
pub struct ClientStream<T> {
    tx: tokio::sync::mpsc::Sender<T>,
    ended: Arc<AtomicBool>,
}

impl<T> ClientStream<T> {
    /// Whether the call has ended (the next flush opens another).
    pub fn ended(&self) -> bool {
        self.ended.load(Ordering::Relaxed)
    }

    /// Queues a message; a full queue (a collector slower than the flushes) or an ended
    /// call gives it back.
    pub fn try_send(&self, message: T) -> Result<(), tokio::sync::mpsc::error::TrySendError<T>> {
        self.tx.try_send(message)
    }
}

impl GrpcClient {
    /// Opens a client-streaming call on a host of the cluster (main thread): `call` starts
    /// it with the channel and the request. The call lives across flushes, so the
    /// service's per-call timeout is not sent. `None` when the cluster has no host now.
    pub fn open_stream<T, R, F, Fut>(
        &self,
        what: &'static str,
        queue: usize,
        call: F,
    ) -> Option<ClientStream<T>>
    where
        T: Send + 'static,
        F: FnOnce(Channel, tonic::Request<tokio_stream::wrappers::ReceiverStream<T>>) -> Fut,
        Fut: std::future::Future<Output = Result<R, tonic::Status>> + 'static,
    {
        let channel = match self.channel() {
            Ok(c) => c,
            Err(e) => {
                tracing::debug!(error = %e, service = what, "no stream");
                return None;
            }
        };
        let (tx, rx) = tokio::sync::mpsc::channel(queue);
        let ended = Arc::new(AtomicBool::new(false));
        let mut request = self.request(tokio_stream::wrappers::ReceiverStream::new(rx));
        request.metadata_mut().remove("grpc-timeout");
        let done = ended.clone();
        let running = call(channel, request);
        tokio::task::spawn_local(async move {
            if let Err(status) = running.await {
                tracing::debug!(%status, service = what, "stream ended");
            }
            done.store(true, Ordering::Relaxed);
        });
        Some(ClientStream { tx, ended })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn service(yaml: &str) -> GrpcService {
        courier_proto::from_yaml(yaml).expect("parses")
    }

    #[test]
    fn compiles_an_envoy_grpc_service() {
        let c = GrpcClient::compile(
            &service("{ envoy_grpc: { cluster_name: otel }, timeout: 2s, initial_metadata: [{ key: x-token, value: abc }] }"),
            "grpc_service",
        )
        .expect("compiles");
        assert_eq!(c.cluster(), "otel");
        assert_eq!(c.timeout(), Some(Duration::from_secs(2)));
        let r = c.request(());
        assert_eq!(
            r.metadata().get("x-token").map(|v| v.to_str().ok()),
            Some(Some("abc"))
        );
        assert_eq!(c.authority.host(), Some("otel"));
    }

    #[test]
    fn refuses_what_it_cannot_honour() {
        let err = |y: &str| {
            GrpcClient::compile(&service(y), "grpc_service")
                .err()
                .map(|e| e.path)
        };
        assert_eq!(
            err("{ envoy_grpc: { cluster_name: '' } }").as_deref(),
            Some("grpc_service.envoy_grpc.cluster_name")
        );
        assert_eq!(
            err("{ google_grpc: { target_uri: 'x:1', stat_prefix: s } }").as_deref(),
            Some("grpc_service.google_grpc")
        );
        assert_eq!(
            err("{ envoy_grpc: { cluster_name: c }, initial_metadata: [{ key: 'bad key', value: v }] }").as_deref(),
            Some("grpc_service.initial_metadata[0]")
        );
    }
}
