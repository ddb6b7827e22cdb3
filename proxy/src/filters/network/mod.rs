//! Network filters. A filter chain ends in exactly one terminal filter, which owns the
//! connection from accept to close; filters before it only decide whether the
//! connection goes on: when it is established ([`on_new_connection`]: the connection
//! limit and the local rate limit) or on its first bytes ([`rbac::ReadFilters`]).

pub mod common;
pub mod connection_limit;
pub mod local_ratelimit;
pub mod on_new_connection;
pub mod rbac;
pub mod tcp_proxy;

use std::sync::Arc;

use courier_proto::envoy::config::listener::v3::{filter, Filter};
use courier_proto::google::protobuf::Any;

use crate::config::ConfigError;
use crate::extensions::{Factory, Registry};
use crate::stats::Store;

/// Well-known name and type of the TCP proxy filter.
pub const TCP_PROXY: &str = "envoy.filters.network.tcp_proxy";

/// A compiled terminal network filter.
#[derive(Clone)]
pub enum NetworkFilter {
    /// `envoy.filters.network.tcp_proxy`.
    TcpProxy(Arc<tcp_proxy::TcpProxyConfig>),
    /// `envoy.filters.network.http_connection_manager`.
    HttpConnectionManager(Arc<crate::http::HcmConfig>),
}

impl NetworkFilter {
    /// Every cluster the filter may route to by name.
    pub fn cluster_names(&self) -> Vec<String> {
        match self {
            NetworkFilter::TcpProxy(t) => t.cluster_names().map(String::from).collect(),
            NetworkFilter::HttpConnectionManager(h) => h.cluster_names(),
        }
    }
}

/// What a network filter's factory builds: a terminal filter, or one that runs before it.
pub enum Built {
    /// A terminal filter.
    Terminal(NetworkFilter),
    /// `envoy.filters.network.rbac`.
    Rbac(Arc<rbac::NetworkRbac>),
    /// One deciding when the connection is established.
    OnNewConnection(on_new_connection::NewConnectionFilter),
}

/// What a network filter's factory is given.
pub struct FilterArgs<'a> {
    /// The filter's config (a `TypedStruct` unwrapped).
    pub config: &'a Any,
    /// Where its `typed_config` is, for errors.
    pub path: &'a str,
    /// Where its stats live.
    pub store: &'a Store,
    /// The listener's `traffic_direction` is `OUTBOUND` (an HCM traces egress).
    pub egress: bool,
}

/// Builds one network filter from its config.
pub type BuildFilter = fn(&FilterArgs<'_>) -> Result<Built, ConfigError>;

/// The network filters a listener's filter chain may hold (each one terminal).
pub static NETWORK_FILTERS: Registry<BuildFilter> = Registry {
    point: "network filter",
    factories: &[
        Factory {
            type_name: "envoy.extensions.filters.network.tcp_proxy.v3.TcpProxy",
            name: TCP_PROXY,
            build: |a| {
                let cfg = courier_proto::unpack_any(a.config)
                    .map_err(|e| ConfigError::new(a.path, e.to_string()))?;
                Ok(Built::Terminal(NetworkFilter::TcpProxy(Arc::new(
                    tcp_proxy::TcpProxyConfig::compile(&cfg, a.store).map_err(|e| e.at(a.path))?,
                ))))
            },
        },
        Factory {
            type_name:
                "envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager",
            name: crate::http::HTTP_CONNECTION_MANAGER,
            build: |a| {
                let cfg = courier_proto::unpack_any(a.config)
                    .map_err(|e| ConfigError::new(a.path, e.to_string()))?;
                Ok(Built::Terminal(NetworkFilter::HttpConnectionManager(
                    Arc::new(
                        crate::http::HcmConfig::compile(&cfg, a.store, a.egress)
                            .map_err(|e| e.at(a.path))?,
                    ),
                )))
            },
        },
        Factory {
            type_name: "envoy.extensions.filters.network.rbac.v3.RBAC",
            name: "envoy.filters.network.rbac",
            build: |a| {
                let cfg = courier_proto::unpack_any(a.config)
                    .map_err(|e| ConfigError::new(a.path, e.to_string()))?;
                Ok(Built::Rbac(Arc::new(
                    rbac::NetworkRbac::compile(&cfg, a.store).map_err(|e| e.at(a.path))?,
                )))
            },
        },
        Factory {
            type_name: "envoy.extensions.filters.network.connection_limit.v3.ConnectionLimit",
            name: "envoy.filters.network.connection_limit",
            build: |a| {
                let cfg = courier_proto::unpack_any(a.config)
                    .map_err(|e| ConfigError::new(a.path, e.to_string()))?;
                Ok(Built::OnNewConnection(
                    on_new_connection::NewConnectionFilter::ConnectionLimit(Arc::new(
                        connection_limit::ConnectionLimit::compile(&cfg, a.store)
                            .map_err(|e| e.at(a.path))?,
                    )),
                ))
            },
        },
        Factory {
            type_name: "envoy.extensions.filters.network.local_ratelimit.v3.LocalRateLimit",
            name: "envoy.filters.network.local_ratelimit",
            build: |a| {
                let cfg = courier_proto::unpack_any(a.config)
                    .map_err(|e| ConfigError::new(a.path, e.to_string()))?;
                Ok(Built::OnNewConnection(
                    on_new_connection::NewConnectionFilter::LocalRateLimit(Arc::new(
                        local_ratelimit::NetworkLocalRateLimit::compile(&cfg, a.store)
                            .map_err(|e| e.at(a.path))?,
                    )),
                ))
            },
        },
    ],
};

/// A chain's compiled network filters.
pub struct ChainFilters {
    /// The terminal one.
    pub terminal: NetworkFilter,
    /// Those deciding when the connection is established.
    pub on_new_connection: on_new_connection::NewConnectionFilters,
    /// Those deciding on its first bytes.
    pub read: rbac::ReadFilters,
}

/// Compiles a chain's `filters`: supported filters only, the last one terminal, those
/// before it not.
pub fn compile_filters(
    filters: &[Filter],
    store: &Store,
    egress: bool,
) -> Result<ChainFilters, ConfigError> {
    let mut terminal = None;
    let mut read = Vec::new();
    let mut established = Vec::new();
    for (i, f) in filters.iter().enumerate() {
        let path = format!("filters[{i}]");
        let Some(filter::ConfigType::TypedConfig(any)) = &f.config_type else {
            return Err(ConfigError::new(
                path,
                format!("filter '{}' needs a typed_config", f.name),
            ));
        };
        let at = format!("{path}.typed_config");
        // Network filters have no `is_optional`: every unknown one is refused.
        let found = NETWORK_FILTERS
            .resolve(Some(any), &f.name, false, &at)
            .map_err(|e| {
                ConfigError::new(
                    &at,
                    format!(
                        "unsupported network filter '{}': {}; Courier supports {TCP_PROXY}, {}, envoy.filters.network.rbac, envoy.filters.network.connection_limit and envoy.filters.network.local_ratelimit",
                        f.name,
                        e.message,
                        crate::http::HTTP_CONNECTION_MANAGER
                    ),
                )
            })?
            .ok_or_else(|| ConfigError::new(&at, "unsupported network filter"))?;
        let config = found.config.as_ref().unwrap_or(any);
        let compiled = (found.factory.build)(&FilterArgs {
            config,
            path: &at,
            store,
            egress,
        })?;
        let last = i + 1 == filters.len();
        match (compiled, last) {
            (Built::Rbac(r), false) => read.push(r),
            (Built::OnNewConnection(f), false) => established.push(f),
            (Built::Terminal(c), true) => terminal = Some(c),
            (Built::Terminal(_), false) => {
                return Err(ConfigError::new(
                    path,
                    format!("terminal filter '{}' must be the last in the chain", f.name),
                ))
            }
            (Built::Rbac(_) | Built::OnNewConnection(_), true) => {
                return Err(ConfigError::new(
                    path,
                    format!(
                        "non-terminal filter '{}' is the last filter in a network filter chain",
                        f.name
                    ),
                ))
            }
        }
    }
    let terminal = terminal
        .ok_or_else(|| ConfigError::new("filters", "a filter chain needs a terminal filter"))?;
    Ok(ChainFilters {
        terminal,
        on_new_connection: on_new_connection::NewConnectionFilters(
            (!established.is_empty()).then(|| established.into()),
        ),
        read: rbac::ReadFilters(read.into()),
    })
}
