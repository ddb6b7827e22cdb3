//! A listener's `listener_filters`: what runs on an accepted connection before its
//! filter chain is picked. Courier has the original destination filter, the PROXY
//! protocol filter, the TLS inspector and the HTTP inspector (run in that order).

use courier_proto::envoy::config::listener::v3::{listener_filter, ListenerFilter};
use courier_proto::envoy::extensions::filters::listener::original_dst::v3::OriginalDst;
use courier_proto::envoy::extensions::filters::listener::tls_inspector::v3 as tls_pb;

use super::tls_inspector::TlsInspector;
use crate::config::ConfigError;
use crate::extensions::{Factory, Registry};
use crate::stats::Store;

/// One compiled listener filter.
pub enum ListenerFilterConfig {
    /// `envoy.filters.listener.tls_inspector`.
    TlsInspector(TlsInspector),
    /// `envoy.filters.listener.original_dst`: the connection's local address becomes the
    /// destination it had before NAT redirected it (`SO_ORIGINAL_DST`).
    OriginalDst,
    /// `envoy.filters.listener.proxy_protocol`.
    ProxyProtocol(super::proxy_protocol::ProxyProtocol),
    /// `envoy.filters.listener.http_inspector`.
    HttpInspector(super::http_inspector::HttpInspector),
}

/// Builds a listener filter.
pub type BuildListenerFilter = fn(
    &courier_proto::google::protobuf::Any,
    &str,
    &Store,
) -> Result<ListenerFilterConfig, ConfigError>;

/// The listener filters Courier has.
pub static LISTENER_FILTERS: Registry<BuildListenerFilter> = Registry {
    point: "listener filter",
    factories: &[
        Factory {
            type_name: "envoy.extensions.filters.listener.tls_inspector.v3.TlsInspector",
            name: "envoy.filters.listener.tls_inspector",
            build: |any, path, store| {
                let cfg: tls_pb::TlsInspector = courier_proto::unpack_any(any)
                    .map_err(|e| ConfigError::new(path, e.to_string()))?;
                TlsInspector::compile(&cfg, path, store).map(ListenerFilterConfig::TlsInspector)
            },
        },
        Factory {
            type_name: "envoy.extensions.filters.listener.proxy_protocol.v3.ProxyProtocol",
            name: "envoy.filters.listener.proxy_protocol",
            build: |any, path, store| {
                let cfg: courier_proto::envoy::extensions::filters::listener::proxy_protocol::v3::ProxyProtocol =
                    courier_proto::unpack_any(any)
                        .map_err(|e| ConfigError::new(path, e.to_string()))?;
                super::proxy_protocol::ProxyProtocol::compile(&cfg, path, store)
                    .map(ListenerFilterConfig::ProxyProtocol)
            },
        },
        Factory {
            type_name: "envoy.extensions.filters.listener.http_inspector.v3.HttpInspector",
            name: "envoy.filters.listener.http_inspector",
            // Its config has no fields.
            build: |_, _, store| {
                Ok(ListenerFilterConfig::HttpInspector(
                    super::http_inspector::HttpInspector::new(store),
                ))
            },
        },
        Factory {
            type_name: "envoy.extensions.filters.listener.original_dst.v3.OriginalDst",
            name: "envoy.filters.listener.original_dst",
            build: |any, path, _store| {
                let cfg: OriginalDst = courier_proto::unpack_any(any)
                    .map_err(|e| ConfigError::new(path, e.to_string()))?;
                if cfg != OriginalDst::default() {
                    // Its fields are for Windows (traffic direction) only.
                    return Err(ConfigError::unsupported(format!(
                        "{path}.traffic_direction"
                    )));
                }
                Ok(ListenerFilterConfig::OriginalDst)
            },
        },
    ],
};

/// A listener's compiled `listener_filters`.
#[derive(Default)]
pub struct ListenerFilters {
    /// The TLS inspector, when configured.
    pub tls_inspector: Option<TlsInspector>,
    /// Whether the original destination filter is configured.
    pub original_dst: bool,
    /// The PROXY protocol filter, when configured.
    pub proxy_protocol: Option<super::proxy_protocol::ProxyProtocol>,
    /// The HTTP inspector, when configured.
    pub http_inspector: Option<super::http_inspector::HttpInspector>,
}

/// Compiles a listener's `listener_filters`.
pub fn compile(filters: &[ListenerFilter], store: &Store) -> Result<ListenerFilters, ConfigError> {
    let mut out = ListenerFilters::default();
    for (i, f) in filters.iter().enumerate() {
        let path = format!("listener_filters[{i}]");
        if f.filter_disabled.is_some() {
            return Err(ConfigError::unsupported(format!("{path}.filter_disabled")));
        }
        let any = match &f.config_type {
            Some(listener_filter::ConfigType::TypedConfig(any)) => Some(any),
            Some(listener_filter::ConfigType::ConfigDiscovery(_)) => {
                return Err(ConfigError::unsupported(format!("{path}.config_discovery")))
            }
            None => None,
        };
        let at = format!("{path}.typed_config");
        let Some(found) = LISTENER_FILTERS.resolve(any, &f.name, false, &at)? else {
            continue;
        };
        let config = found.config.unwrap_or_default();
        let default_any;
        let config = if config.type_url.is_empty() {
            default_any = courier_proto::google::protobuf::Any {
                type_url: format!("type.googleapis.com/{}", found.factory.type_name),
                value: Vec::new(),
            };
            &default_any
        } else {
            &config
        };
        let built = (found.factory.build)(config, &at, store)?;
        let twice = match &built {
            ListenerFilterConfig::TlsInspector(_) => out.tls_inspector.is_some(),
            ListenerFilterConfig::OriginalDst => out.original_dst,
            ListenerFilterConfig::ProxyProtocol(_) => out.proxy_protocol.is_some(),
            ListenerFilterConfig::HttpInspector(_) => out.http_inspector.is_some(),
        };
        if twice {
            // Envoy runs each; Courier runs one of a kind.
            return Err(ConfigError::unsupported(format!(
                "{path} (a second {} listener filter)",
                found.factory.name
            )));
        }
        match built {
            ListenerFilterConfig::TlsInspector(t) => {
                if out.http_inspector.is_some() {
                    // Courier inspects for TLS first, as Envoy's usual order has it.
                    return Err(ConfigError::unsupported(format!(
                        "{path} (the TLS inspector after the HTTP inspector)"
                    )));
                }
                out.tls_inspector = Some(t)
            }
            ListenerFilterConfig::HttpInspector(h) => out.http_inspector = Some(h),
            ListenerFilterConfig::OriginalDst => out.original_dst = true,
            ListenerFilterConfig::ProxyProtocol(p) => {
                if out.tls_inspector.is_some() || out.http_inspector.is_some() {
                    // Courier reads the PROXY header first; the other order would inspect
                    // the header as a ClientHello or a request line.
                    return Err(ConfigError::unsupported(format!(
                        "{path} (the PROXY protocol filter after the TLS inspector)"
                    )));
                }
                out.proxy_protocol = Some(p);
            }
        }
    }
    Ok(out)
}
