//! Per-route filter configuration: the `typed_per_filter_config` of a route, virtual host
//! or route configuration, compiled for Courier's HTTP filters ([`crate::filters::http::cors`],
//! [`crate::filters::http::fault`], [`crate::filters::http::local_ratelimit`], [`crate::filters::http::rbac`], [`crate::filters::http::compressor`]).

//!
//! An entry is keyed by the filter's name in the connection manager's `http_filters`
//! (route tables come from RDS independently of the listeners that use them, so the
//! lookup happens per request, by the name). Entries for other filters are ignored. A
//! `FilterConfig` wrapper holds a policy, or `disabled: true` turns the filter off below
//! that level.

pub mod compressor;
pub mod cors;
pub mod fault;
pub mod health_check;
pub mod local_ratelimit;
pub mod rbac;

use std::collections::HashMap;
use std::sync::Arc;

use courier_proto::envoy::config::route::v3 as route_pb;
use courier_proto::google::protobuf::Any;

use crate::config::ConfigError;
use crate::stats::Store;
use compressor::CompressorPerRoute;
use cors::CorsPolicy;
use fault::FaultPolicy;
use local_ratelimit::RateLimitPolicy;
use rbac::RbacRules;

const FILTER_CONFIG_TYPE: &str = "envoy.config.route.v3.FilterConfig";

/// One `typed_per_filter_config` entry Courier acts on.
pub enum FilterPolicy {
    /// A CORS policy.
    Cors(Arc<CorsPolicy>),
    /// A fault injection policy (it replaces the filter's own).
    Fault(Arc<FaultPolicy>),
    /// A local rate limit (it replaces the filter's own, bucket included).
    RateLimit(Arc<RateLimitPolicy>),
    /// RBAC rules (an `RBACPerRoute`: they replace the filter's own).
    Rbac(Arc<RbacRules>),
    /// A compressor's `CompressorPerRoute`.
    Compressor(Arc<CompressorPerRoute>),
    /// `FilterConfig { disabled: false }` with no config of Courier's: the filter is on
    /// here (a filter disabled in the chain runs only where a level turns it on).
    Enabled,
    /// `FilterConfig { disabled: true }`: the filter is off here.
    Disabled,
}

/// No per-route settings: what filters see of a request no route takes.
pub static NONE: FilterConfigs = FilterConfigs {
    per_filter: Vec::new(),
    legacy_cors: None,
};

/// A route's, virtual host's or route configuration's filter settings.
#[derive(Default)]
pub struct FilterConfigs {
    per_filter: Vec<(String, FilterPolicy)>,
    /// The deprecated `cors` field (a route action's or a virtual host's).
    pub legacy_cors: Option<Arc<CorsPolicy>>,
}

impl FilterConfigs {
    /// Compiles a level's `typed_per_filter_config` at `path`, and its deprecated `cors`
    /// (`legacy_cors`, with its own path).
    pub fn compile(
        typed_per_filter_config: &HashMap<String, Any>,
        legacy_cors: Option<(&route_pb::CorsPolicy, String)>,
        path: &str,
        store: &Store,
    ) -> Result<FilterConfigs, ConfigError> {
        let mut per_filter = Vec::new();
        for (name, any) in typed_per_filter_config {
            let at = match path {
                "" => format!("typed_per_filter_config[{name}]"),
                _ => format!("{path}.typed_per_filter_config[{name}]"),
            };
            let entry = if type_name(any) == FILTER_CONFIG_TYPE {
                let fc: route_pb::FilterConfig = unpack(any, &at)?;
                match &fc.config {
                    _ if fc.disabled => Some(FilterPolicy::Disabled),
                    Some(inner) => Some(
                        policy(inner, &format!("{at}.config"), store)?
                            .unwrap_or(FilterPolicy::Enabled),
                    ),
                    None => Some(FilterPolicy::Enabled),
                }
            } else {
                policy(any, &at, store)?
            };
            if let Some(entry) = entry {
                per_filter.push((name.clone(), entry));
            }
        }
        let legacy_cors = legacy_cors
            .map(|(p, at)| CorsPolicy::from_route_proto(p, &at).map(Arc::new))
            .transpose()?;
        Ok(FilterConfigs {
            per_filter,
            legacy_cors,
        })
    }

    /// The entry for the filter named `filter`.
    pub fn get(&self, filter: &str) -> Option<&FilterPolicy> {
        self.per_filter
            .iter()
            .find(|(n, _)| n == filter)
            .map(|(_, e)| e)
    }
}

/// The most specific entry for the filter named `name` among a request's levels (route,
/// virtual host, route configuration).
pub fn most_specific<'a>(levels: [&'a FilterConfigs; 3], name: &str) -> Option<&'a FilterPolicy> {
    levels.iter().find_map(|l| l.get(name))
}

/// Whether the filter named `name` runs for a request: not where the most specific entry
/// disables it, and, for a filter disabled in the chain (`off_by_default`), only where one
/// turns it on (as Envoy's per-route `FilterConfig`).
pub fn runs(levels: [&FilterConfigs; 3], name: &str, off_by_default: bool) -> bool {
    match most_specific(levels, name) {
        Some(FilterPolicy::Disabled) => false,
        Some(_) => true,
        None => !off_by_default,
    }
}

/// A filter's policy from an `Any`, if it is one of Courier's filters'.
fn policy(any: &Any, path: &str, store: &Store) -> Result<Option<FilterPolicy>, ConfigError> {
    Ok(Some(match type_name(any) {
        cors::POLICY_TYPE => FilterPolicy::Cors(Arc::new(CorsPolicy::from_filter_proto(
            &unpack(any, path)?,
            path,
        )?)),
        fault::FILTER_TYPE => {
            FilterPolicy::Fault(Arc::new(FaultPolicy::compile(&unpack(any, path)?, path)?))
        }
        local_ratelimit::FILTER_TYPE => FilterPolicy::RateLimit(Arc::new(
            RateLimitPolicy::compile(&unpack(any, path)?, path, true, store)?,
        )),
        rbac::PER_ROUTE_TYPE => {
            FilterPolicy::Rbac(Arc::new(RbacRules::per_route(&unpack(any, path)?, path)?))
        }
        compressor::PER_ROUTE_TYPE => FilterPolicy::Compressor(Arc::new(
            CompressorPerRoute::compile(&unpack(any, path)?, path)?,
        )),
        _ => return Ok(None),
    }))
}

fn type_name(any: &Any) -> &str {
    courier_proto::type_url::message_name(&any.type_url)
}

/// Decodes an `Any` at `path`.
pub fn unpack<M: prost::Message + prost::Name + Default>(
    any: &Any,
    path: &str,
) -> Result<M, ConfigError> {
    courier_proto::unpack_any(any).map_err(|e| ConfigError::new(path, e.to_string()))
}
