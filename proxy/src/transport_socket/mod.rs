//! Transport sockets: what sits between a connection's socket and its filters (Envoy's
//! `TransportSocket`) — `raw_buffer`, the socket itself, or `tls`.
//!
//! A filter chain's or cluster's `transport_socket` resolves through the extension
//! registry ([`DOWNSTREAM`], [`UPSTREAM`]) to a compiled context; on the workers a
//! connection's codec reads and writes a [`Transport`].

pub mod tls;
mod transport;
pub mod upstream_proxy_protocol;

use std::sync::Arc;

use courier_proto::envoy::config::core::v3::{transport_socket, TransportSocket};
use courier_proto::google::protobuf::Any;

use crate::config::ConfigError;
use crate::extensions::{Factory, Registry};

pub use transport::{TlsIo, Transport};

/// The transport socket extensions' well-known names.
pub const RAW_BUFFER: &str = "envoy.transport_sockets.raw_buffer";
/// See [`RAW_BUFFER`].
pub const TLS: &str = "envoy.transport_sockets.tls";
const RAW_BUFFER_TYPE: &str = "envoy.extensions.transport_sockets.raw_buffer.v3.RawBuffer";

/// Builds a downstream transport socket: `None` is `raw_buffer`.
pub type BuildDownstream = Build<Arc<tls::ServerContext>>;
/// Builds an upstream transport socket: `None` is `raw_buffer`.
pub type BuildUpstream = Build<Arc<tls::ClientContext>>;

/// A filter chain's transport sockets.
pub static DOWNSTREAM: Registry<BuildDownstream> = Registry {
    point: "downstream transport socket",
    factories: &[
        Factory {
            type_name: RAW_BUFFER_TYPE,
            name: RAW_BUFFER,
            build: |_, _| Ok(None),
        },
        Factory {
            type_name: "envoy.extensions.transport_sockets.tls.v3.DownstreamTlsContext",
            name: TLS,
            build: |any, path| {
                let ctx = courier_proto::unpack_any(any)
                    .map_err(|e| ConfigError::new(path, e.to_string()))?;
                Ok(Some(tls::server_context::compile(&ctx, path)?))
            },
        },
    ],
};

/// A cluster's transport sockets.
pub static UPSTREAM: Registry<BuildUpstream> = Registry {
    point: "upstream transport socket",
    factories: &[
        Factory {
            type_name: RAW_BUFFER_TYPE,
            name: RAW_BUFFER,
            build: |_, _| Ok(None),
        },
        Factory {
            type_name: "envoy.extensions.transport_sockets.tls.v3.UpstreamTlsContext",
            name: TLS,
            build: |any, path| {
                let ctx = courier_proto::unpack_any(any)
                    .map_err(|e| ConfigError::new(path, e.to_string()))?;
                Ok(Some(tls::client_context::compile(&ctx, path)?))
            },
        },
    ],
};

/// A transport socket factory: `None` is `raw_buffer`.
type Build<T> = fn(&Any, &str) -> Result<Option<T>, ConfigError>;

/// Resolves `socket` at `path` in `registry` and builds it.
fn build<T>(
    registry: &Registry<Build<T>>,
    socket: &TransportSocket,
    path: &str,
) -> Result<Option<T>, ConfigError> {
    let any = socket
        .config_type
        .as_ref()
        .map(|transport_socket::ConfigType::TypedConfig(any)| any);
    let at = format!("{path}.typed_config");
    let Some(found) = registry.resolve(any, &socket.name, false, &at)? else {
        return Ok(None);
    };
    match &found.config {
        Some(config) => (found.factory.build)(config, &at),
        // A name without a config: raw_buffer needs none; TLS without a context is
        // refused as Envoy refuses it.
        None if found.factory.name == RAW_BUFFER => Ok(None),
        None => Err(ConfigError::new(
            path,
            format!("transport socket '{}' needs a typed_config", socket.name),
        )),
    }
}

/// Compiles a filter chain's `transport_socket` (at `path`).
pub fn compile_downstream(
    socket: Option<&TransportSocket>,
    path: &str,
) -> Result<Option<Arc<tls::ServerContext>>, ConfigError> {
    socket.map_or(Ok(None), |s| build(&DOWNSTREAM, s, path))
}

/// Compiles a cluster's `transport_socket` (at `path`).
pub fn compile_upstream(
    socket: Option<&TransportSocket>,
    path: &str,
) -> Result<Option<Arc<tls::ClientContext>>, ConfigError> {
    socket.map_or(Ok(None), |s| build(&UPSTREAM, s, path))
}

/// Compiles a cluster's `transport_socket` (at `path`): its TLS (`None`: raw) and, for
/// `upstream_proxy_protocol`, the PROXY protocol header its connections start with (its
/// inner socket is the TLS or raw one).
pub fn compile_upstream_socket(
    socket: Option<&TransportSocket>,
    path: &str,
) -> Result<
    (
        Option<Arc<tls::ClientContext>>,
        Option<upstream_proxy_protocol::ProxyProtocolVersion>,
    ),
    ConfigError,
> {
    let wrapper = socket
        .and_then(|s| s.config_type.as_ref())
        .map(|transport_socket::ConfigType::TypedConfig(any)| any)
        .filter(|any| {
            courier_proto::type_url::message_name(&any.type_url) == upstream_proxy_protocol::TYPE
        });
    let Some(any) = wrapper else {
        return Ok((compile_upstream(socket, path)?, None));
    };
    let at = format!("{path}.typed_config");
    let t = courier_proto::unpack_any(any).map_err(|e| ConfigError::new(&at, e.to_string()))?;
    let (version, inner) = upstream_proxy_protocol::compile(&t, &at)?;
    let tls = compile_upstream(inner.as_ref(), &format!("{at}.transport_socket"))?;
    Ok((tls, Some(version)))
}
