//! Where an xDS stream connects: a tonic channel built from an `ApiConfigSource`'s
//! `grpc_services` (an `envoy_grpc` static cluster, or a `google_grpc` target URI).

use std::time::Duration;

use courier_proto::envoy::config::bootstrap::v3::Bootstrap;
use courier_proto::envoy::config::core::v3::{grpc_service::TargetSpecifier, ApiConfigSource};
use courier_proto::envoy::config::endpoint::v3::lb_endpoint::HostIdentifier;
use tonic::transport::Endpoint;

use crate::config::{self, ConfigError};

/// A resolved gRPC target.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GrpcTarget {
    /// `http://host:port`.
    pub uri: String,
    /// Per-request timeout from `grpc_services[0].timeout`, if any.
    pub timeout: Option<Duration>,
}

impl GrpcTarget {
    /// A tonic endpoint for this target.
    pub fn endpoint(&self) -> Result<Endpoint, tonic::transport::Error> {
        Ok(Endpoint::from_shared(self.uri.clone())?
            .connect_timeout(Duration::from_secs(5))
            .tcp_nodelay(true)
            .http2_keep_alive_interval(Duration::from_secs(30))
            .keep_alive_while_idle(true))
    }
}

/// Resolves the first `grpc_services` entry of `source` against the bootstrap's static
/// clusters.
pub fn grpc_target(
    source: &ApiConfigSource,
    bootstrap: &Bootstrap,
) -> Result<GrpcTarget, ConfigError> {
    let Some(service) = source.grpc_services.first() else {
        return Err(ConfigError::new(
            "grpc_services",
            "at least one gRPC service is required",
        ));
    };
    let timeout = service
        .timeout
        .as_ref()
        .map(|d| config::duration(d, "grpc_services[0].timeout"))
        .transpose()?;
    let uri = match &service.target_specifier {
        Some(TargetSpecifier::EnvoyGrpc(g)) => {
            let cluster = bootstrap
                .static_resources
                .as_ref()
                .and_then(|s| s.clusters.iter().find(|c| c.name == g.cluster_name))
                .ok_or_else(|| {
                    ConfigError::new(
                        "grpc_services[0].envoy_grpc.cluster_name",
                        format!("unknown static cluster '{}'", g.cluster_name),
                    )
                })?;
            if cluster.transport_socket.is_some() {
                return Err(ConfigError::unsupported(format!(
                    "static_resources.clusters['{}'].transport_socket (TLS to the xDS server)",
                    cluster.name
                )));
            }
            let endpoint = cluster
                .load_assignment
                .as_ref()
                .and_then(|cla| cla.endpoints.first())
                .and_then(|l| l.lb_endpoints.first())
                .and_then(|e| match &e.host_identifier {
                    Some(HostIdentifier::Endpoint(ep)) => ep.address.as_ref(),
                    _ => None,
                })
                .ok_or_else(|| {
                    ConfigError::new(
                        "grpc_services[0].envoy_grpc.cluster_name",
                        format!("cluster '{}' has no endpoint", g.cluster_name),
                    )
                })?;
            let (host, port) = config::socket_address_parts(Some(endpoint), "address")?;
            let host = if host.contains(':') {
                format!("[{host}]")
            } else {
                host
            };
            format!("http://{host}:{port}")
        }
        Some(TargetSpecifier::GoogleGrpc(g)) => {
            if g.channel_credentials.is_some() {
                return Err(ConfigError::unsupported(
                    "grpc_services[0].google_grpc.channel_credentials",
                ));
            }
            let target = g
                .target_uri
                .trim_start_matches("dns:///")
                .trim_start_matches("dns:");
            if target.is_empty() {
                return Err(ConfigError::new(
                    "grpc_services[0].google_grpc.target_uri",
                    "value length must be at least 1 characters",
                ));
            }
            format!("http://{target}")
        }
        None => {
            return Err(ConfigError::new(
                "grpc_services[0]",
                "one of envoy_grpc or google_grpc is required",
            ))
        }
    };
    Ok(GrpcTarget { uri, timeout })
}
