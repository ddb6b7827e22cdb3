//! Per-route filter configuration: the `typed_per_filter_config` of a route, virtual host
//! or route configuration, held opaquely by filter name.
//!
//! An entry is keyed by the filter's name in the connection manager's `http_filters`
//! (route tables come from RDS independently of the listeners that use them, so the
//! lookup happens per request, by the name). The value is compiled by the filter's own
//! factory through a [`PerFilterCompiler`] (the HTTP filter registry), so routes know no
//! filter; a filter reads its entry back typed ([`policy`]). A `FilterConfig` wrapper
//! holds a policy, or `disabled: true` turns the filter off below that level. Entries for
//! types no filter knows are ignored, as before.

use std::any::Any;
use std::collections::HashMap;
use std::sync::Arc;

use courier_proto::envoy::config::route::v3 as route_pb;
use courier_proto::google::protobuf;

use crate::config::ConfigError;
use crate::stats::Store;

const FILTER_CONFIG_TYPE: &str = "envoy.config.route.v3.FilterConfig";

/// A filter's compiled per-route config, as the route holds it.
pub type FilterConfig = Arc<dyn Any + Send + Sync>;

/// Compiles per-route filter configs: implemented by the HTTP filter registry.
pub trait PerFilterCompiler {
    /// Compiles a `typed_per_filter_config` value at `path`; `None` for a type no filter
    /// takes per route.
    fn compile(
        &self,
        any: &protobuf::Any,
        path: &str,
        store: &Store,
    ) -> Result<Option<FilterConfig>, ConfigError>;

    /// Compiles a level's deprecated `cors` field (the CORS filter's policy).
    fn compile_legacy_cors(
        &self,
        policy: &route_pb::CorsPolicy,
        path: &str,
    ) -> Result<FilterConfig, ConfigError>;
}

/// One `typed_per_filter_config` entry Courier acts on.
pub enum PerFilter {
    /// The filter's own per-route config.
    Config(FilterConfig),
    /// `FilterConfig { disabled: false }` with no config of Courier's: the filter is on
    /// here (a filter disabled in the chain runs only where a level turns it on).
    Enabled,
    /// `FilterConfig { disabled: true }`: the filter is off here.
    Disabled,
}

/// A level without per-filter configuration.
pub static NONE: FilterConfigs = FilterConfigs {
    per_filter: Vec::new(),
    legacy_cors: None,
};

/// The per-filter configuration of one level (route, virtual host or route
/// configuration).
#[derive(Default)]
pub struct FilterConfigs {
    per_filter: Vec<(String, PerFilter)>,
    /// The level's deprecated `cors` policy, used when no `typed_per_filter_config`
    /// entry sets one.
    legacy_cors: Option<FilterConfig>,
}

impl FilterConfigs {
    /// Compiles a level's `typed_per_filter_config` (at `path`) and its deprecated `cors`.
    pub fn compile(
        typed_per_filter_config: &HashMap<String, protobuf::Any>,
        legacy_cors: Option<(&route_pb::CorsPolicy, String)>,
        path: &str,
        store: &Store,
        filters: &dyn PerFilterCompiler,
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
                    _ if fc.disabled => Some(PerFilter::Disabled),
                    Some(inner) => Some(
                        filters
                            .compile(inner, &format!("{at}.config"), store)?
                            .map_or(PerFilter::Enabled, PerFilter::Config),
                    ),
                    None => Some(PerFilter::Enabled),
                }
            } else {
                filters.compile(any, &at, store)?.map(PerFilter::Config)
            };
            if let Some(entry) = entry {
                per_filter.push((name.clone(), entry));
            }
        }
        let legacy_cors = legacy_cors
            .map(|(p, at)| filters.compile_legacy_cors(p, &at))
            .transpose()?;
        Ok(FilterConfigs {
            per_filter,
            legacy_cors,
        })
    }

    /// The entry for the filter named `filter`.
    pub fn get(&self, filter: &str) -> Option<&PerFilter> {
        self.per_filter
            .iter()
            .find(|(n, _)| n == filter)
            .map(|(_, e)| e)
    }

    /// The filter `filter`'s own config at this level, if it is a `T`.
    pub fn policy<T: Any>(&self, filter: &str) -> Option<&T> {
        match self.get(filter)? {
            PerFilter::Config(c) => c.downcast_ref(),
            PerFilter::Enabled | PerFilter::Disabled => None,
        }
    }

    /// The level's deprecated `cors` policy, if it is a `T`.
    pub fn legacy_cors<T: Any>(&self) -> Option<&T> {
        self.legacy_cors.as_ref()?.downcast_ref()
    }
}

/// The entry of the most specific level that has one (route, virtual host, route
/// configuration).
pub fn most_specific<'a>(levels: [&'a FilterConfigs; 3], name: &str) -> Option<&'a PerFilter> {
    levels.iter().find_map(|l| l.get(name))
}

/// The filter `name`'s own config from the most specific level that has an entry for it,
/// if that entry is a `T` (an `Enabled` or `Disabled` entry hides those below it).
pub fn policy<'a, T: Any>(levels: [&'a FilterConfigs; 3], name: &str) -> Option<&'a T> {
    match most_specific(levels, name)? {
        PerFilter::Config(c) => c.downcast_ref(),
        PerFilter::Enabled | PerFilter::Disabled => None,
    }
}

/// [`policy`], shared: for a filter that keeps its route's config past the call.
pub fn policy_arc<T: Any + Send + Sync>(levels: [&FilterConfigs; 3], name: &str) -> Option<Arc<T>> {
    match most_specific(levels, name)? {
        PerFilter::Config(c) => c.clone().downcast().ok(),
        PerFilter::Enabled | PerFilter::Disabled => None,
    }
}

/// Whether the filter `name` runs for a request at these levels: the most specific entry
/// decides; without one, filters run unless `off_by_default` (`disabled` in the chain).
pub fn runs(levels: [&FilterConfigs; 3], name: &str, off_by_default: bool) -> bool {
    match most_specific(levels, name) {
        Some(PerFilter::Disabled) => false,
        Some(_) => true,
        None => !off_by_default,
    }
}

fn type_name(any: &protobuf::Any) -> &str {
    courier_proto::type_url::message_name(&any.type_url)
}

/// Decodes `any` as `M`, the error naming `path`.
pub fn unpack<M: prost::Message + prost::Name + Default>(
    any: &protobuf::Any,
    path: &str,
) -> Result<M, ConfigError> {
    courier_proto::unpack_any(any).map_err(|e| ConfigError::new(path, e.to_string()))
}
