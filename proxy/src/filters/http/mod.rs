//! HTTP filters, one folder each, and their registry.
//!
//! [`HTTP_FILTERS`] resolves what routes carry for a filter (a `typed_per_filter_config`
//! value, by its type) to that filter's compiler: routes hold the result opaquely
//! ([`crate::http::route::per_filter`]) and the filter reads it back typed. Adding a
//! per-route config is one line in [`PER_ROUTE`].

pub mod compressor;
pub mod cors;
pub mod fault;
pub mod health_check;
pub mod local_ratelimit;
pub mod rbac;

use std::sync::Arc;

use courier_proto::envoy::config::route::v3 as route_pb;
use courier_proto::google::protobuf::Any;

use crate::config::ConfigError;
use crate::http::route::per_filter::{FilterConfig, PerFilterCompiler};
use crate::stats::Store;
use compressor::CompressorPerRoute;
use cors::CorsPolicy;
use fault::FaultPolicy;
use local_ratelimit::RateLimitPolicy;
use rbac::RbacRules;

pub use crate::http::route::per_filter::unpack;

/// Compiles one type of per-route config for its filter.
type CompilePerRoute = fn(&Any, &str, &Store) -> Result<FilterConfig, ConfigError>;

/// The per-route config types Courier's filters take, by message name.
const PER_ROUTE: &[(&str, CompilePerRoute)] = &[
    (cors::POLICY_TYPE, |any, path, _| {
        Ok(Arc::new(CorsPolicy::from_filter_proto(
            &unpack(any, path)?,
            path,
        )?))
    }),
    (fault::FILTER_TYPE, |any, path, _| {
        Ok(Arc::new(FaultPolicy::compile(&unpack(any, path)?, path)?))
    }),
    (local_ratelimit::FILTER_TYPE, |any, path, store| {
        Ok(Arc::new(RateLimitPolicy::compile(
            &unpack(any, path)?,
            path,
            true,
            store,
        )?))
    }),
    (rbac::PER_ROUTE_TYPE, |any, path, _| {
        Ok(Arc::new(RbacRules::per_route(&unpack(any, path)?, path)?))
    }),
    (compressor::PER_ROUTE_TYPE, |any, path, _| {
        Ok(Arc::new(CompressorPerRoute::compile(
            &unpack(any, path)?,
            path,
        )?))
    }),
];

/// The registry of Courier's HTTP filters.
pub struct HttpFilterRegistry;

/// Courier's HTTP filters.
pub static HTTP_FILTERS: HttpFilterRegistry = HttpFilterRegistry;

impl PerFilterCompiler for HttpFilterRegistry {
    fn compile(
        &self,
        any: &Any,
        path: &str,
        store: &Store,
    ) -> Result<Option<FilterConfig>, ConfigError> {
        let name = courier_proto::type_url::message_name(&any.type_url);
        PER_ROUTE
            .iter()
            .find(|(type_name, _)| *type_name == name)
            .map(|(_, compile)| compile(any, path, store))
            .transpose()
    }

    fn compile_legacy_cors(
        &self,
        policy: &route_pb::CorsPolicy,
        path: &str,
    ) -> Result<FilterConfig, ConfigError> {
        Ok(Arc::new(CorsPolicy::from_route_proto(policy, path)?))
    }
}
