//! Where an xDS stream connects: a tonic channel built from an `ApiConfigSource`'s
//! `grpc_services` (an `envoy_grpc` static cluster, or a `google_grpc` target URI), in
//! plaintext or over TLS: the static cluster's `UpstreamTlsContext` (Envoy's semantics,
//! certificates from files), or `google_grpc`'s `ssl_credentials` (gRPC's: the server's
//! certificate must name the target's host).

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use courier_proto::envoy::config::bootstrap::v3::Bootstrap;
use courier_proto::envoy::config::core::v3::grpc_service::google_grpc::channel_args::value::ValueSpecifier as ChannelArg;
use courier_proto::envoy::config::core::v3::grpc_service::google_grpc::channel_credentials::CredentialSpecifier;
use courier_proto::envoy::config::core::v3::grpc_service::GoogleGrpc;
use courier_proto::envoy::config::core::v3::{
    address::Address, grpc_service::TargetSpecifier, ApiConfigSource, Pipe,
};
use courier_proto::envoy::config::endpoint::v3::lb_endpoint::HostIdentifier;
use courier_proto::envoy::extensions::transport_sockets::tls::v3::{
    common_tls_context::ValidationContextType, CertificateValidationContext, CommonTlsContext,
    TlsCertificate, UpstreamTlsContext,
};
use hyper_util::rt::TokioIo;
use tonic::codegen::http::Uri;
use tonic::transport::{Channel, Endpoint};

use crate::config::{self, ConfigError};
use crate::transport_socket::tls::{client_context, ClientContext};

/// TLS to the management server.
#[derive(Clone)]
pub struct XdsTls {
    /// The context (its current build is read at each connection: rotated secrets apply
    /// to the next one).
    context: Arc<ClientContext>,
    /// The name the server's certificate must hold (and the SNI).
    host: String,
}

impl std::fmt::Debug for XdsTls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("XdsTls")
            .field("host", &self.host)
            .finish_non_exhaustive()
    }
}

/// A resolved gRPC target.
#[derive(Debug, Clone)]
pub struct GrpcTarget {
    /// `http://host:port` (`http://localhost` for a Unix socket, the `:authority` gRPC
    /// sends there).
    pub uri: String,
    /// A Unix-domain socket to connect to instead of `uri`'s host and port: a
    /// `google_grpc` `unix:` target, or an `envoy_grpc` cluster whose endpoint is a `pipe`
    /// (how Istio's and Kuma's bootstraps reach their local agent).
    pub unix: Option<std::path::PathBuf>,
    /// Per-request timeout from `grpc_services[0].timeout`, if any.
    pub timeout: Option<Duration>,
    /// The `:authority` of the streams (Envoy's: `envoy_grpc.authority`, else the cluster
    /// name; for `google_grpc`, `grpc.default_authority`, else the target).
    pub authority: Option<Uri>,
    /// `initial_metadata`: headers sent on every stream.
    pub metadata: Vec<(String, String)>,
    /// TLS, when the target asks for it.
    pub tls: Option<XdsTls>,
}

/// Connects tonic's channel over TLS: TCP, then rustls's handshake (tokio-rustls).
#[derive(Clone)]
struct TlsConnector(XdsTls);

type Connecting = Pin<
    Box<
        dyn Future<
                Output = std::io::Result<
                    TokioIo<tokio_rustls::client::TlsStream<tokio::net::TcpStream>>,
                >,
            > + Send,
    >,
>;

impl tonic::codegen::Service<Uri> for TlsConnector {
    type Response = TokioIo<tokio_rustls::client::TlsStream<tokio::net::TcpStream>>;
    type Error = std::io::Error;
    type Future = Connecting;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, uri: Uri) -> Self::Future {
        let tls = self.0.clone();
        Box::pin(async move {
            let host = uri
                .host()
                .unwrap_or_default()
                .trim_matches(|c| c == '[' || c == ']');
            let port = uri.port_u16().unwrap_or(443);
            let tcp = tokio::net::TcpStream::connect((host, port)).await?;
            tcp.set_nodelay(true)?;
            let (config, name) = tls.context.for_grpc(&tls.host).ok_or_else(|| {
                std::io::Error::other(format!("'{}' is not a name TLS can verify", tls.host))
            })?;
            let stream = tokio_rustls::TlsConnector::from(config)
                .connect(name, tcp)
                .await?;
            Ok(TokioIo::new(stream))
        })
    }
}

impl GrpcTarget {
    /// Connects a channel to the target.
    pub async fn connect(&self) -> Result<Channel, tonic::transport::Error> {
        let endpoint = self.endpoint()?;
        if let Some(path) = &self.unix {
            return endpoint.connect_with_connector(unix_connector(path)).await;
        }
        match &self.tls {
            None => endpoint.connect().await,
            Some(tls) => {
                endpoint
                    .connect_with_connector(TlsConnector(tls.clone()))
                    .await
            }
        }
    }

    /// A channel to the target shared by every stream of a subscription of its own
    /// (thousands of EDS clusters share one HTTP/2 connection, as Envoy's streams share
    /// the xDS cluster's connection pool). It connects on first use and reconnects when
    /// the connection is lost; a stream that fails retries on it with back-off.
    pub fn shared_channel(&self) -> Result<Channel, tonic::transport::Error> {
        thread_local! {
            static CHANNELS: std::cell::RefCell<std::collections::HashMap<(String, Option<String>), Channel>> =
                Default::default();
        }
        let key = (
            match &self.unix {
                Some(path) => format!("unix:{}", path.display()),
                None => self.uri.clone(),
            },
            self.tls.as_ref().map(|t| t.host.clone()),
        );
        if let Some(channel) = CHANNELS.with(|c| c.borrow().get(&key).cloned()) {
            return Ok(channel);
        }
        let endpoint = self.endpoint()?;
        let channel = match (&self.unix, &self.tls) {
            (Some(path), _) => endpoint.connect_with_connector_lazy(unix_connector(path)),
            (None, None) => endpoint.connect_lazy(),
            (None, Some(tls)) => endpoint.connect_with_connector_lazy(TlsConnector(tls.clone())),
        };
        CHANNELS.with(|c| c.borrow_mut().insert(key, channel.clone()));
        Ok(channel)
    }

    /// A tonic endpoint for this target.
    pub fn endpoint(&self) -> Result<Endpoint, tonic::transport::Error> {
        let mut endpoint = Endpoint::from_shared(self.uri.clone())?;
        if let Some(origin) = &self.authority {
            endpoint = endpoint.origin(origin.clone());
        }
        Ok(endpoint
            .connect_timeout(Duration::from_secs(5))
            .tcp_nodelay(true)
            .http2_keep_alive_interval(Duration::from_secs(30))
            .keep_alive_while_idle(true))
    }
}

/// Connects to a Unix-domain socket whatever the URI says.
#[derive(Clone)]
struct UnixConnector(std::path::PathBuf);

type UnixConnecting =
    Pin<Box<dyn Future<Output = std::io::Result<TokioIo<tokio::net::UnixStream>>> + Send>>;

impl tonic::codegen::Service<Uri> for UnixConnector {
    type Response = TokioIo<tokio::net::UnixStream>;
    type Error = std::io::Error;
    type Future = UnixConnecting;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, _uri: Uri) -> Self::Future {
        let path = self.0.clone();
        Box::pin(async move { Ok(TokioIo::new(tokio::net::UnixStream::connect(path).await?)) })
    }
}

fn unix_connector(path: &std::path::Path) -> UnixConnector {
    UnixConnector(path.to_path_buf())
}

/// Resolves the first `grpc_services` entry of `source` against the bootstrap's static
/// clusters.
pub fn grpc_target(
    source: &ApiConfigSource,
    bootstrap: &Bootstrap,
) -> Result<GrpcTarget, ConfigError> {
    // Envoy's token bucket on a stream's requests (`control_plane.rate_limit_enforced`):
    // not built, so refused rather than ignored.
    if source.rate_limit_settings.is_some() {
        return Err(ConfigError::unsupported("rate_limit_settings"));
    }
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
    if service.retry_policy.is_some() {
        return Err(ConfigError::unsupported("grpc_services[0].retry_policy"));
    }
    let metadata = service
        .initial_metadata
        .iter()
        .map(|h| (h.key.to_ascii_lowercase(), h.value.clone()))
        .collect::<Vec<_>>();
    for (i, (key, value)) in metadata.iter().enumerate() {
        let valid =
            tonic::metadata::MetadataKey::<tonic::metadata::Ascii>::from_bytes(key.as_bytes())
                .is_ok()
                && tonic::metadata::MetadataValue::<tonic::metadata::Ascii>::try_from(
                    value.as_str(),
                )
                .is_ok();
        if !valid {
            return Err(ConfigError::new(
                format!("grpc_services[0].initial_metadata[{i}]"),
                format!("'{key}: {value}' is not a valid header"),
            ));
        }
    }
    let authority: Option<String>;
    let mut tls = None;
    let mut unix = None;
    let uri = match &service.target_specifier {
        Some(TargetSpecifier::EnvoyGrpc(g)) => {
            for (field, set) in [
                ("retry_policy", g.retry_policy.is_some()),
                (
                    "max_receive_message_length",
                    g.max_receive_message_length.is_some(),
                ),
            ] {
                if set {
                    return Err(ConfigError::unsupported(format!(
                        "grpc_services[0].envoy_grpc.{field}"
                    )));
                }
            }
            authority = Some(if g.authority.is_empty() {
                g.cluster_name.clone()
            } else {
                g.authority.clone()
            });
            let StaticCluster {
                cluster,
                tls: context,
                endpoint,
                socket_path,
            } = static_cluster(
                bootstrap,
                &g.cluster_name,
                "grpc_services[0].envoy_grpc.cluster_name",
            )?;
            if let Some(Address::Pipe(pipe)) = &endpoint.address {
                if context.is_some() {
                    return Err(ConfigError::unsupported(format!(
                        "{socket_path} (TLS over a pipe address)"
                    )));
                }
                unix = Some(pipe_path(pipe, &cluster.name)?);
                return Ok(GrpcTarget {
                    uri: "http://localhost".into(),
                    unix,
                    timeout,
                    authority: origin(authority)?,
                    metadata,
                    tls,
                });
            }
            let (host, port) = config::socket_address_parts(Some(endpoint), "address")?;
            let host = if host.contains(':') {
                format!("[{host}]")
            } else {
                host
            };
            if let Some(context) = context {
                tls = Some(xds_tls(context, &host, &socket_path)?);
            }
            format!("http://{host}:{port}")
        }
        Some(TargetSpecifier::GoogleGrpc(g)) if g.target_uri.starts_with("unix:") => {
            let path = "grpc_services[0].google_grpc";
            authority = google_grpc_authority(g)?;
            // gRPC's forms: `unix:relative/path`, `unix:/absolute`, `unix:///absolute`.
            let socket = g.target_uri["unix:".len()..].trim_start_matches("//");
            if socket.is_empty() {
                return Err(ConfigError::new(
                    format!("{path}.target_uri"),
                    "a unix: target needs a socket path",
                ));
            }
            if g.channel_credentials.is_some() {
                return Err(ConfigError::unsupported(format!(
                    "{path}.channel_credentials with a unix: target"
                )));
            }
            unix = Some(std::path::PathBuf::from(socket));
            "http://localhost".to_string()
        }
        Some(TargetSpecifier::GoogleGrpc(g)) => {
            authority = google_grpc_authority(g)?;
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
            if let Some(creds) = &g.channel_credentials {
                let path = "grpc_services[0].google_grpc.channel_credentials";
                let host = host_of(target);
                let context = google_grpc_tls(creds.credential_specifier.as_ref(), &host, path)?;
                tls = Some(xds_tls(context, &host, path)?);
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
    Ok(GrpcTarget {
        uri,
        unix,
        timeout,
        authority: origin(authority)?,
        metadata,
        tls,
    })
}

/// The origin a stream's `:authority` comes from.
fn origin(authority: Option<String>) -> Result<Option<Uri>, ConfigError> {
    authority
        .map(|a| {
            Uri::try_from(format!("http://{a}")).map_err(|_| {
                ConfigError::new(
                    "grpc_services[0]",
                    format!("'{a}' is not a valid :authority"),
                )
            })
        })
        .transpose()
}

/// Checks the `google_grpc` fields Courier does not build (refused by name) and returns the
/// `grpc.default_authority` channel argument, the only one it takes.
fn google_grpc_authority(g: &GoogleGrpc) -> Result<Option<String>, ConfigError> {
    let path = "grpc_services[0].google_grpc";
    for (field, set) in [
        ("call_credentials", !g.call_credentials.is_empty()),
        (
            "call_credentials_plugin",
            !g.call_credentials_plugin.is_empty(),
        ),
        (
            "channel_credentials_plugin",
            !g.channel_credentials_plugin.is_empty(),
        ),
        (
            "credentials_factory_name",
            !g.credentials_factory_name.is_empty(),
        ),
        ("config", g.config.is_some()),
        (
            "per_stream_buffer_limit_bytes",
            g.per_stream_buffer_limit_bytes.is_some(),
        ),
    ] {
        if set {
            return Err(ConfigError::unsupported(format!("{path}.{field}")));
        }
    }
    let mut authority = None;
    for (name, value) in g.channel_args.iter().flat_map(|a| &a.args) {
        match (name.as_str(), &value.value_specifier) {
            ("grpc.default_authority", Some(ChannelArg::StringValue(v))) => {
                authority = Some(v.clone());
            }
            _ => {
                return Err(ConfigError::unsupported(format!(
                    "{path}.channel_args.args['{name}']"
                )))
            }
        }
    }
    Ok(authority)
}

/// Whether `cluster` is a static cluster whose endpoints are all `pipe` addresses. Courier
/// connects to Unix sockets only from gRPC config sources (`envoy_grpc`), so such a
/// cluster is not added to the cluster manager: traffic routed to it is refused as to an
/// unknown cluster (DIFFERENCES.md).
pub fn is_pipe_cluster(cluster: &courier_proto::envoy::config::cluster::v3::Cluster) -> bool {
    let mut endpoints = cluster
        .load_assignment
        .iter()
        .flat_map(|cla| &cla.endpoints)
        .flat_map(|l| &l.lb_endpoints)
        .peekable();
    endpoints.peek().is_some()
        && endpoints.all(|e| {
            matches!(
                &e.host_identifier,
                Some(HostIdentifier::Endpoint(ep))
                    if matches!(ep.address.as_ref().and_then(|a| a.address.as_ref()), Some(Address::Pipe(_)))
            )
        })
}

/// The socket path of a `pipe` address (abstract sockets, `@name`, are Linux-only and not
/// supported by tokio's connect).
pub(super) fn pipe_path(pipe: &Pipe, cluster: &str) -> Result<std::path::PathBuf, ConfigError> {
    let path = format!("static_resources.clusters['{cluster}'].load_assignment.endpoints[0].lb_endpoints[0].endpoint.address.pipe.path");
    if pipe.path.is_empty() {
        return Err(ConfigError::new(
            path,
            "value length must be at least 1 characters",
        ));
    }
    if pipe.path.starts_with('@') {
        return Err(ConfigError::unsupported(format!(
            "{path} (abstract socket)"
        )));
    }
    Ok(std::path::PathBuf::from(&pipe.path))
}

/// A bootstrap's static cluster that carries xDS: its first endpoint's address, and its
/// TLS context if it has one.
pub(super) struct StaticCluster<'a> {
    /// The cluster.
    pub cluster: &'a courier_proto::envoy::config::cluster::v3::Cluster,
    /// Its first endpoint's address.
    pub endpoint: &'a courier_proto::envoy::config::core::v3::Address,
    /// Its TLS, if its transport socket has one.
    pub tls: Option<Arc<ClientContext>>,
    /// The path of its `transport_socket`, for errors.
    pub socket_path: String,
}

/// Resolves the static cluster `name` of `bootstrap` (named at `path`, for errors).
pub(super) fn static_cluster<'a>(
    bootstrap: &'a Bootstrap,
    name: &str,
    path: &str,
) -> Result<StaticCluster<'a>, ConfigError> {
    let cluster = bootstrap
        .static_resources
        .as_ref()
        .and_then(|s| s.clusters.iter().find(|c| c.name == name))
        .ok_or_else(|| ConfigError::new(path, format!("unknown static cluster '{name}'")))?;
    let socket_path = format!(
        "static_resources.clusters['{}'].transport_socket",
        cluster.name
    );
    let tls =
        crate::transport_socket::compile_upstream(cluster.transport_socket.as_ref(), &socket_path)?;
    let endpoint = cluster
        .load_assignment
        .as_ref()
        .and_then(|cla| cla.endpoints.first())
        .and_then(|l| l.lb_endpoints.first())
        .and_then(|e| match &e.host_identifier {
            Some(HostIdentifier::Endpoint(ep)) => ep.address.as_ref(),
            _ => None,
        })
        .ok_or_else(|| ConfigError::new(path, format!("cluster '{name}' has no endpoint")))?;
    Ok(StaticCluster {
        cluster,
        endpoint,
        tls,
        socket_path,
    })
}

/// The host of a `host:port` target (brackets of an IPv6 address removed).
fn host_of(target: &str) -> String {
    let host = match target.rsplit_once(':') {
        Some((h, p)) if p.bytes().all(|b| b.is_ascii_digit()) => h,
        _ => target,
    };
    host.trim_matches(|c| c == '[' || c == ']').to_string()
}

fn xds_tls(context: Arc<ClientContext>, host: &str, path: &str) -> Result<XdsTls, ConfigError> {
    // Checked once here so that a bad name is a config error, not a failing connection.
    context
        .for_grpc(host)
        .ok_or_else(|| ConfigError::new(path, format!("'{host}' is not a name TLS can verify")))?;
    Ok(XdsTls {
        context,
        host: host.to_string(),
    })
}

/// gRPC's `ssl_credentials` as the equivalent upstream TLS context: the roots verify the
/// server, whose certificate must name `host`; the key and chain are the client's.
fn google_grpc_tls(
    creds: Option<&CredentialSpecifier>,
    host: &str,
    path: &str,
) -> Result<Arc<ClientContext>, ConfigError> {
    let ssl = match creds {
        Some(CredentialSpecifier::SslCredentials(ssl)) => ssl,
        Some(_) => {
            return Err(ConfigError::unsupported(format!(
                "{path}: only ssl_credentials are supported"
            )))
        }
        None => return Err(ConfigError::new(path, "credential_specifier is required")),
    };
    let Some(roots) = &ssl.root_certs else {
        // gRPC would use the system's roots; Courier has none to offer.
        return Err(ConfigError::unsupported(format!(
            "{path}.ssl_credentials without root_certs (system roots)"
        )));
    };
    let tls_certificates = match (&ssl.cert_chain, &ssl.private_key) {
        (Some(chain), Some(key)) => vec![TlsCertificate {
            certificate_chain: Some(chain.clone()),
            private_key: Some(key.clone()),
            ..Default::default()
        }],
        (None, None) => Vec::new(),
        _ => {
            return Err(ConfigError::new(
                format!("{path}.ssl_credentials"),
                "cert_chain and private_key go together",
            ))
        }
    };
    let ctx = UpstreamTlsContext {
        sni: host.to_string(),
        common_tls_context: Some(CommonTlsContext {
            tls_certificates,
            validation_context_type: Some(ValidationContextType::ValidationContext(
                CertificateValidationContext {
                    trusted_ca: Some(roots.clone()),
                    ..Default::default()
                },
            )),
            ..Default::default()
        }),
        ..Default::default()
    };
    // The sni must be a valid name: an address is reached without one.
    let ctx = if host.parse::<std::net::IpAddr>().is_ok() {
        UpstreamTlsContext {
            sni: String::new(),
            ..ctx
        }
    } else {
        ctx
    };
    client_context::compile_verifying_name(&ctx, &format!("{path}.ssl_credentials"))
}
