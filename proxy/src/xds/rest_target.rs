//! Where a REST-JSON source's polls go (`api_type: REST`): the static cluster named in
//! `cluster_names`, its first endpoint (TCP, TLS or a Unix socket), HTTP/1.1 or HTTP/2, and
//! how often — resolved and checked with Envoy's errors. The polling is `rest`.

use std::sync::Arc;
use std::time::Duration;

use courier_proto::envoy::config::bootstrap::v3::Bootstrap;
use courier_proto::envoy::config::cluster::v3::Cluster;
use courier_proto::envoy::config::core::v3::{address::Address, ApiConfigSource};
use courier_proto::envoy::extensions::upstreams::http::v3::{
    http_protocol_options::{explicit_http_config::ProtocolConfig, UpstreamProtocolOptions},
    HttpProtocolOptions,
};

use crate::config::{self, ConfigError};
use crate::transport_socket::tls::ClientContext;

/// `request_timeout` when the source leaves it unset (Envoy's default).
const DEFAULT_REQUEST_TIMEOUT: Duration = Duration::from_secs(1);

/// The shortest wait between polls: Envoy accepts `refresh_delay: 0s` (and then divides by
/// it when jittering); Courier polls at most once a millisecond instead.
const MIN_REFRESH_DELAY: Duration = Duration::from_millis(1);

/// The name Envoy gives the type in its errors.
const API_CONFIG_SOURCE: &str = "envoy.config.core.v3.ApiConfigSource";

/// The typed protocol options of a cluster's HTTP upstream.
const HTTP_PROTOCOL_OPTIONS: &str = "envoy.extensions.upstreams.http.v3.HttpProtocolOptions";

/// A REST-JSON server: where polls go and how often.
#[derive(Clone)]
pub struct RestTarget {
    /// The static cluster (also the `host` header, as Envoy sends).
    pub(super) cluster: String,
    /// Its first endpoint: a host (IPv6 without brackets) and port, or a Unix socket (a
    /// `pipe` address).
    pub(super) host: String,
    pub(super) port: u16,
    pub(super) unix: Option<std::path::PathBuf>,
    /// HTTP/2 (the cluster's protocol options), else HTTP/1.1.
    pub(super) http2: bool,
    /// TLS, when the cluster has a transport socket.
    pub(super) tls: Option<Arc<ClientContext>>,
    pub(super) refresh_delay: Duration,
    pub(super) request_timeout: Duration,
}

impl std::fmt::Debug for RestTarget {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RestTarget")
            .field("cluster", &self.cluster)
            .field("host", &self.host)
            .field("port", &self.port)
            .field("unix", &self.unix)
            .field("http2", &self.http2)
            .field("tls", &self.tls.is_some())
            .field("refresh_delay", &self.refresh_delay)
            .field("request_timeout", &self.request_timeout)
            .finish()
    }
}

/// Resolves a REST source against the bootstrap's static clusters.
pub fn rest_target(
    api: &ApiConfigSource,
    bootstrap: &Bootstrap,
) -> Result<RestTarget, ConfigError> {
    config::validate_rest_api(api)?;
    let name = &api.cluster_names[0];
    let known = bootstrap
        .static_resources
        .as_ref()
        .is_some_and(|s| s.clusters.iter().any(|c| &c.name == name));
    if !known {
        return Err(ConfigError::new(
            "cluster_names[0]",
            format!("{API_CONFIG_SOURCE} must have a statically defined non-EDS cluster: '{name}' does not exist, was added via api, or is an EDS cluster"),
        ));
    }
    let target = super::transport::static_cluster(bootstrap, name, "cluster_names[0]")?;
    let (host, port, unix) = match &target.endpoint.address {
        Some(Address::Pipe(pipe)) => {
            if target.tls.is_some() {
                return Err(ConfigError::unsupported(format!(
                    "{} (TLS over a pipe address)",
                    target.socket_path
                )));
            }
            let path = super::transport::pipe_path(pipe, name)?;
            (String::new(), 0, Some(path))
        }
        _ => {
            let (host, port) =
                config::socket_address_parts(Some(target.endpoint), "cluster_names[0]")?;
            (host, port, None)
        }
    };
    let refresh_delay = api
        .refresh_delay
        .as_ref()
        .map(|d| config::duration(d, "refresh_delay"))
        .transpose()?
        .unwrap_or_default()
        .max(MIN_REFRESH_DELAY);
    let request_timeout = config::duration_or(
        api.request_timeout.as_ref(),
        DEFAULT_REQUEST_TIMEOUT,
        "request_timeout",
    )?;
    Ok(RestTarget {
        cluster: name.clone(),
        http2: speaks_http2(target.cluster),
        host,
        port,
        unix,
        tls: target.tls,
        refresh_delay,
        request_timeout,
    })
}

/// Whether a cluster's upstream is HTTP/2: `explicit_http_config.http2_protocol_options` in
/// its typed protocol options, or the legacy `http2_protocol_options`.
fn speaks_http2(cluster: &Cluster) -> bool {
    if let Some(any) = cluster
        .typed_extension_protocol_options
        .get(HTTP_PROTOCOL_OPTIONS)
    {
        let options = courier_proto::unpack_any::<HttpProtocolOptions>(any).ok();
        return matches!(
            options.and_then(|o| o.upstream_protocol_options),
            Some(UpstreamProtocolOptions::ExplicitHttpConfig(c))
                if matches!(c.protocol_config, Some(ProtocolConfig::Http2ProtocolOptions(_)))
        );
    }
    #[allow(deprecated)]
    cluster.http2_protocol_options.is_some()
}
