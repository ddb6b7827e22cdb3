//! Network filters. A filter chain ends in exactly one terminal filter, which owns the
//! connection from accept to close.

pub mod tcp_proxy;

use std::sync::Arc;

use courier_proto::envoy::config::listener::v3::{filter, Filter};

use crate::config::ConfigError;
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

/// Compiles a chain's `filters`: supported filters only, the last one terminal.
pub fn compile_filters(filters: &[Filter], store: &Store) -> Result<NetworkFilter, ConfigError> {
    let mut terminal = None;
    for (i, f) in filters.iter().enumerate() {
        let path = format!("filters[{i}]");
        let Some(filter::ConfigType::TypedConfig(any)) = &f.config_type else {
            return Err(ConfigError::new(
                path,
                format!("filter '{}' needs a typed_config", f.name),
            ));
        };
        let type_name = courier_proto::type_url::message_name(&any.type_url);
        let compiled = match type_name {
            "envoy.extensions.filters.network.tcp_proxy.v3.TcpProxy" => {
                let cfg = courier_proto::unpack_any(any)
                    .map_err(|e| ConfigError::new(format!("{path}.typed_config"), e.to_string()))?;
                NetworkFilter::TcpProxy(Arc::new(
                    tcp_proxy::TcpProxyConfig::compile(&cfg, store)
                        .map_err(|e| e.at(&format!("{path}.typed_config")))?,
                ))
            }
            "envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager" => {
                let cfg = courier_proto::unpack_any(any)
                    .map_err(|e| ConfigError::new(format!("{path}.typed_config"), e.to_string()))?;
                NetworkFilter::HttpConnectionManager(Arc::new(
                    crate::http::HcmConfig::compile(&cfg, store)
                        .map_err(|e| e.at(&format!("{path}.typed_config")))?,
                ))
            }
            other => return Err(ConfigError::new(
                format!("{path}.typed_config"),
                format!(
                    "unsupported network filter '{}' (type {other}); Courier supports {TCP_PROXY} and {}",
                    f.name,
                    crate::http::HTTP_CONNECTION_MANAGER
                ),
            )),
        };
        if i + 1 != filters.len() {
            return Err(ConfigError::new(
                path,
                format!("terminal filter '{}' must be the last in the chain", f.name),
            ));
        }
        terminal = Some(compiled);
    }
    terminal.ok_or_else(|| ConfigError::new("filters", "a filter chain needs a terminal filter"))
}
