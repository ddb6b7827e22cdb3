//! HTTP filters, one folder each, and their registries.
//!
//! - [`CHAIN`]: the filters a connection manager's `http_filters` may name, resolved by
//!   type (or well-known name) through the extension registry
//!   ([`crate::extensions::Registry`], with Envoy's rules for unknown, optional and
//!   `TypedStruct` configs) to a factory building an [`HttpFilter`].
//! - [`HTTP_FILTERS`]: what routes carry for a filter (a `typed_per_filter_config` value,
//!   by its type), resolved to that filter's compiler (`PER_ROUTE`); routes hold the
//!   result opaquely ([`crate::http::route::per_filter`]) and the filter reads it back
//!   typed.
//!
//! Adding a filter: its folder, a line in [`CHAIN`] (and in `PER_ROUTE` if it takes
//! per-route config), a variant of [`HttpFilter`], and its step in the connection
//! manager's request path (`http::conn_manager::serve`).

pub mod api_key_auth;
pub mod bandwidth_limit;
pub mod basic_auth;
pub mod buffer;
pub mod composite;
pub mod compressor;
pub mod cors;
pub mod credential_injector;
pub mod custom_response;
pub mod decompressor;
pub mod ext_authz;
pub mod ext_proc;
pub mod fault;
pub mod grpc_http1_bridge;
pub mod grpc_json_transcoder;
pub mod grpc_stats;
pub mod grpc_web;
pub mod health_check;
pub mod jwt_authn;
pub mod local_ratelimit;
pub mod lua;
pub mod oauth2;
pub mod on_demand;
pub mod ratelimit;
pub mod rbac;
pub mod stateful_session;
pub mod stream_rate_limiter;

use std::sync::Arc;

use courier_proto::envoy::config::route::v3 as route_pb;
use courier_proto::google::protobuf::Any;

use crate::config::ConfigError;
use crate::extensions::{Factory, Registry};
use crate::http::route::per_filter::{FilterConfig, PerFilterCompiler};
use crate::stats::Store;
use compressor::CompressorPerRoute;
use cors::CorsPolicy;
use ext_authz::ExtAuthzPerRoute;
use fault::FaultPolicy;
use local_ratelimit::RateLimitPolicy;
use rbac::RbacRules;

pub use crate::http::route::per_filter::unpack;

/// A library's `TypedExtensionConfig` at `path` (a compressor's or decompressor's): its
/// name must be set and its `typed_config` given, which is returned with its path.
pub(crate) fn library_config<'a>(
    lib: &'a courier_proto::envoy::config::core::v3::TypedExtensionConfig,
    path: &str,
) -> Result<(&'a Any, String), ConfigError> {
    if lib.name.is_empty() {
        return Err(ConfigError::new(
            format!("{path}.name"),
            "value length must be at least 1 characters",
        ));
    }
    let Some(any) = &lib.typed_config else {
        return Err(ConfigError::new(
            format!("{path}.typed_config"),
            "value is required",
        ));
    };
    Ok((any, format!("{path}.typed_config")))
}

/// Every value of a field, joined with `,` (as Envoy holds a repeated inline header).
pub(crate) fn joined(
    headers: &http::HeaderMap,
    name: http::HeaderName,
) -> Option<http::HeaderValue> {
    let mut all = headers.get_all(&name).iter();
    let first = all.next()?;
    let mut rest = all.peekable();
    if rest.peek().is_none() {
        return Some(first.clone());
    }
    let mut v = first.as_bytes().to_vec();
    for r in rest {
        v.push(b',');
        v.extend_from_slice(r.as_bytes());
    }
    http::HeaderValue::from_bytes(&v).ok()
}

/// Counters a filter keeps in the scope of the cluster a request goes to
/// (`cluster.<routed>.ext_authz.ok`), through whoever keeps that cluster's stats on this
/// worker (its connection pool): filters never reach the router themselves.
pub trait ClusterCounters {
    /// Counts `cluster.<routed>.<leaf>`.
    fn inc(&self, leaf: &str);
    /// Charges a status the filter answered as the cluster's `upstream_rq_<code>`.
    fn charge(&self, status: http::StatusCode);
}

/// An HTTP filter Courier runs before the router.
pub enum HttpFilter {
    /// `envoy.filters.http.cors`.
    Cors(cors::CorsFilter),
    /// `envoy.filters.http.fault`.
    Fault(fault::FaultFilter),
    /// `envoy.filters.http.local_ratelimit`.
    LocalRateLimit(local_ratelimit::LocalRateLimitFilter),
    /// `envoy.filters.http.health_check`.
    HealthCheck(health_check::HealthCheckFilter),
    /// `envoy.filters.http.rbac`.
    Rbac(Box<rbac::RbacFilter>),
    /// `envoy.filters.http.compressor` (boxed: it is large and rare).
    Compressor(Box<compressor::CompressorFilter>),
    /// `envoy.filters.http.on_demand` (on-demand CDS).
    OnDemand(on_demand::OnDemandFilter),
    /// `envoy.filters.http.decompressor` (boxed: it is rare).
    Decompressor(Box<decompressor::DecompressorFilter>),
    /// `envoy.filters.http.ext_authz` (boxed: it is large).
    ExtAuthz(Box<ext_authz::ExtAuthzFilter>),
    /// `envoy.filters.http.ext_proc` (boxed: it is large).
    ExtProc(Box<ext_proc::ExtProcFilter>),
    /// `envoy.filters.http.ratelimit` (boxed: it is large).
    RateLimit(Box<ratelimit::RateLimitFilter>),
    /// `envoy.filters.http.grpc_web`.
    GrpcWeb(grpc_web::GrpcWebFilter),
    /// `envoy.filters.http.grpc_stats` (boxed: it is rare).
    GrpcStats(Box<grpc_stats::GrpcStatsFilter>),
    /// `envoy.filters.http.grpc_http1_bridge`.
    GrpcHttp1Bridge(grpc_http1_bridge::GrpcHttp1BridgeFilter),
    /// `envoy.filters.http.grpc_json_transcoder` (boxed: it is rare).
    GrpcJsonTranscoder(Box<grpc_json_transcoder::GrpcJsonTranscoderFilter>),
    /// `envoy.filters.http.basic_auth` (boxed: it is rare).
    BasicAuth(Box<basic_auth::BasicAuthFilter>),
    /// `envoy.filters.http.api_key_auth` (boxed: it is rare).
    ApiKeyAuth(Box<api_key_auth::ApiKeyAuthFilter>),
    /// `envoy.filters.http.buffer`.
    Buffer(buffer::BufferFilter),
    /// `envoy.filters.http.credential_injector` (boxed: it is rare).
    CredentialInjector(Box<credential_injector::CredentialInjectorFilter>),
    /// `envoy.filters.http.jwt_authn` (boxed: it is large).
    JwtAuthn(Box<jwt_authn::JwtAuthnFilter>),
    /// `envoy.filters.http.lua` (boxed: it is rare).
    Lua(Box<lua::LuaFilter>),
    /// `envoy.filters.http.oauth2` (boxed: it is large and rare).
    OAuth2(Box<oauth2::OAuth2Filter>),
    /// `envoy.filters.http.stateful_session` (boxed: it is rare).
    StatefulSession(Box<stateful_session::StatefulSessionFilter>),
    /// `envoy.filters.http.custom_response` (boxed: it is rare).
    CustomResponse(Box<custom_response::CustomResponseFilter>),
    /// `envoy.filters.http.bandwidth_limit` (boxed: it is rare).
    BandwidthLimit(Box<bandwidth_limit::BandwidthLimitFilter>),
    /// `envoy.filters.http.match_delegate` or `envoy.filters.http.composite`: filters
    /// chosen per request (boxed: it is rare).
    Composite(Box<composite::CompositeFilter>),
}

impl HttpFilter {
    /// The filter's name in `http_filters`: its key in `typed_per_filter_config`.
    pub fn name(&self) -> &str {
        match self {
            HttpFilter::Cors(f) => &f.name,
            HttpFilter::Fault(f) => &f.name,
            HttpFilter::LocalRateLimit(f) => &f.name,
            HttpFilter::HealthCheck(f) => &f.name,
            HttpFilter::Rbac(f) => &f.name,
            HttpFilter::Compressor(f) => &f.name,
            HttpFilter::OnDemand(f) => &f.name,
            HttpFilter::Decompressor(f) => &f.name,
            HttpFilter::ExtAuthz(f) => &f.name,
            HttpFilter::ExtProc(f) => &f.name,
            HttpFilter::RateLimit(f) => &f.name,
            HttpFilter::GrpcWeb(f) => &f.name,
            HttpFilter::GrpcStats(f) => &f.name,
            HttpFilter::GrpcHttp1Bridge(f) => &f.name,
            HttpFilter::GrpcJsonTranscoder(f) => &f.name,
            HttpFilter::BasicAuth(f) => &f.name,
            HttpFilter::ApiKeyAuth(f) => &f.name,
            HttpFilter::Buffer(f) => &f.name,
            HttpFilter::CredentialInjector(f) => &f.name,
            HttpFilter::JwtAuthn(f) => &f.name,
            HttpFilter::Lua(f) => &f.name,
            HttpFilter::OAuth2(f) => &f.name,
            HttpFilter::StatefulSession(f) => &f.name,
            HttpFilter::CustomResponse(f) => &f.name,
            HttpFilter::BandwidthLimit(f) => &f.name,
            HttpFilter::Composite(f) => &f.name,
        }
    }
}

/// What a filter's factory is given: an `http_filters` entry.
pub struct FilterArgs<'a> {
    /// The entry's `name` (its key in routes' `typed_per_filter_config`).
    pub name: &'a str,
    /// Its `typed_config`, a `TypedStruct` unwrapped.
    pub config: Option<&'a Any>,
    /// Where its `typed_config` is, for errors.
    pub path: &'a str,
    /// The connection manager's `stat_prefix`.
    pub stat_prefix: &'a str,
    /// Where the filter's stats live.
    pub store: &'a Store,
}

impl FilterArgs<'_> {
    /// The config as `M`; the message's defaults when there is none.
    fn config_or_default<M: prost::Message + prost::Name + Default>(
        &self,
    ) -> Result<M, ConfigError> {
        match self.config {
            Some(any) => unpack(any, self.path),
            None => Ok(M::default()),
        }
    }

    /// The config as `M`, which the filter requires.
    fn required_config<M: prost::Message + prost::Name + Default>(&self) -> Result<M, ConfigError> {
        match self.config {
            Some(any) => unpack(any, self.path),
            None => Err(ConfigError::new(self.path, "value is required")),
        }
    }
}

/// Builds one HTTP filter from its `http_filters` entry.
pub type BuildFilter = fn(&FilterArgs<'_>) -> Result<HttpFilter, ConfigError>;

/// The registry entry of a filter whose config compiles as `<module>::<Type>::compile(name,
/// config, path, stat_prefix, store)` into a boxed `HttpFilter::<Variant>`; `config` is
/// `config_or_default` or `required_config`.
macro_rules! compiled {
    ($module:ident, $variant:ident, $ty:ident, $config:ident) => {
        Factory {
            type_name: $module::FILTER_TYPE,
            name: $module::FILTER_NAME,
            build: |a| {
                Ok(HttpFilter::$variant(Box::new($module::$ty::compile(
                    a.name,
                    &a.$config()?,
                    a.path,
                    a.stat_prefix,
                    a.store,
                )?)))
            },
        }
    };
}

/// The HTTP filters a connection manager's chain may hold (the router, its terminal
/// filter, is the manager's own).
pub static CHAIN: Registry<BuildFilter> = Registry {
    point: "HTTP filter",
    factories: &[
        Factory {
            type_name: cors::FILTER_TYPE,
            name: cors::FILTER_NAME,
            build: |a| {
                Ok(HttpFilter::Cors(cors::CorsFilter::new(
                    a.name,
                    a.stat_prefix,
                    a.store,
                )))
            },
        },
        Factory {
            type_name: local_ratelimit::FILTER_TYPE,
            name: local_ratelimit::FILTER_NAME,
            build: |a| {
                let policy =
                    RateLimitPolicy::compile(&a.config_or_default()?, a.path, false, a.store)?;
                Ok(HttpFilter::LocalRateLimit(
                    local_ratelimit::LocalRateLimitFilter::new(a.name, policy),
                ))
            },
        },
        Factory {
            type_name: health_check::FILTER_TYPE,
            name: health_check::FILTER_NAME,
            build: |a| {
                Ok(HttpFilter::HealthCheck(
                    health_check::HealthCheckFilter::compile(
                        a.name,
                        &a.config_or_default()?,
                        a.path,
                        a.stat_prefix,
                        a.store,
                    )?,
                ))
            },
        },
        compiled!(rbac, Rbac, RbacFilter, config_or_default),
        Factory {
            type_name: composite::FILTER_TYPE,
            name: composite::FILTER_NAME,
            build: |a| {
                Ok(HttpFilter::Composite(Box::new(
                    composite::CompositeFilter::compile(a)?,
                )))
            },
        },
        Factory {
            type_name: composite::COMPOSITE_TYPE,
            name: composite::COMPOSITE_NAME,
            build: |a| {
                Ok(HttpFilter::Composite(Box::new(
                    composite::CompositeFilter::compile(a)?,
                )))
            },
        },
        compiled!(
            bandwidth_limit,
            BandwidthLimit,
            BandwidthLimitFilter,
            config_or_default
        ),
        compiled!(compressor, Compressor, CompressorFilter, required_config),
        compiled!(
            decompressor,
            Decompressor,
            DecompressorFilter,
            required_config
        ),
        compiled!(ext_authz, ExtAuthz, ExtAuthzFilter, required_config),
        compiled!(ext_proc, ExtProc, ExtProcFilter, required_config),
        Factory {
            type_name: ratelimit::FILTER_TYPE,
            name: ratelimit::FILTER_NAME,
            build: |a| {
                Ok(HttpFilter::RateLimit(Box::new(
                    ratelimit::RateLimitFilter::compile(a.name, &a.required_config()?, a.path)?,
                )))
            },
        },
        compiled!(
            grpc_json_transcoder,
            GrpcJsonTranscoder,
            GrpcJsonTranscoderFilter,
            required_config
        ),
        compiled!(basic_auth, BasicAuth, BasicAuthFilter, config_or_default),
        compiled!(
            api_key_auth,
            ApiKeyAuth,
            ApiKeyAuthFilter,
            config_or_default
        ),
        Factory {
            type_name: custom_response::FILTER_TYPE,
            name: custom_response::FILTER_NAME,
            build: |a| {
                Ok(HttpFilter::CustomResponse(Box::new(
                    custom_response::CustomResponseFilter::compile(
                        a.name,
                        &a.config_or_default()?,
                        a.path,
                        a.stat_prefix,
                        a.store,
                    )?,
                )))
            },
        },
        Factory {
            type_name: buffer::FILTER_TYPE,
            name: buffer::FILTER_NAME,
            build: |a| {
                Ok(HttpFilter::Buffer(buffer::BufferFilter::compile(
                    a.name,
                    &a.config_or_default()?,
                    a.path,
                )?))
            },
        },
        compiled!(
            credential_injector,
            CredentialInjector,
            CredentialInjectorFilter,
            config_or_default
        ),
        compiled!(jwt_authn, JwtAuthn, JwtAuthnFilter, config_or_default),
        compiled!(lua, Lua, LuaFilter, config_or_default),
        compiled!(oauth2, OAuth2, OAuth2Filter, config_or_default),
        Factory {
            type_name: stateful_session::FILTER_TYPE,
            name: stateful_session::FILTER_NAME,
            build: |a| {
                Ok(HttpFilter::StatefulSession(Box::new(
                    stateful_session::StatefulSessionFilter::compile(
                        a.name,
                        &a.config_or_default()?,
                        a.path,
                    )?,
                )))
            },
        },
        Factory {
            type_name: on_demand::FILTER_TYPE,
            name: on_demand::FILTER_NAME,
            build: |a| {
                Ok(HttpFilter::OnDemand(on_demand::OnDemandFilter::compile(
                    a.name,
                    &a.config_or_default()?,
                    a.path,
                )?))
            },
        },
        Factory {
            type_name: grpc_web::FILTER_TYPE,
            name: grpc_web::FILTER_NAME,
            build: |a| {
                // `GrpcWeb` has no fields: unpacking checks the type.
                let _: courier_proto::envoy::extensions::filters::http::grpc_web::v3::GrpcWeb =
                    a.config_or_default()?;
                Ok(HttpFilter::GrpcWeb(grpc_web::GrpcWebFilter::new(
                    a.name, a.store,
                )))
            },
        },
        Factory {
            type_name: grpc_stats::FILTER_TYPE,
            name: grpc_stats::FILTER_NAME,
            build: |a| {
                Ok(HttpFilter::GrpcStats(Box::new(
                    grpc_stats::GrpcStatsFilter::compile(
                        a.name,
                        &a.config_or_default()?,
                        a.path,
                        a.store,
                    )?,
                )))
            },
        },
        Factory {
            type_name: grpc_http1_bridge::FILTER_TYPE,
            name: grpc_http1_bridge::FILTER_NAME,
            build: |a| {
                Ok(HttpFilter::GrpcHttp1Bridge(
                    grpc_http1_bridge::GrpcHttp1BridgeFilter::new(a.name, &a.config_or_default()?),
                ))
            },
        },
        Factory {
            type_name: fault::FILTER_TYPE,
            name: fault::FILTER_NAME,
            build: |a| {
                let fault = FaultPolicy::compile(&a.config_or_default()?, a.path)?;
                Ok(HttpFilter::Fault(fault::FaultFilter::new(
                    a.name,
                    fault,
                    a.stat_prefix,
                    a.store,
                )))
            },
        },
    ],
};

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
    (oauth2::PER_ROUTE_TYPE, |_, path, _| {
        Err(ConfigError::unsupported(path.to_string()))
    }),
    (on_demand::PER_ROUTE_TYPE, |_, path, _| {
        Err(ConfigError::unsupported(path.to_string()))
    }),
    (ext_authz::PER_ROUTE_TYPE, |any, path, _| {
        Ok(Arc::new(ExtAuthzPerRoute::compile(
            &unpack(any, path)?,
            path,
        )?))
    }),
    (ext_proc::PER_ROUTE_TYPE, |any, path, _| {
        Ok(Arc::new(ext_proc::ExtProcPerRoute::compile(
            &unpack(any, path)?,
            path,
        )?))
    }),
    (ratelimit::PER_ROUTE_TYPE, |any, path, _| {
        Ok(Arc::new(ratelimit::RateLimitPerRoute::compile(
            &unpack(any, path)?,
            path,
        )?))
    }),
    (basic_auth::PER_ROUTE_TYPE, |any, path, _| {
        Ok(Arc::new(basic_auth::RouteUsers::compile(
            &unpack(any, path)?,
            path,
        )?))
    }),
    (api_key_auth::PER_ROUTE_TYPE, |any, path, _| {
        Ok(Arc::new(api_key_auth::RouteSettings::compile(
            &unpack(any, path)?,
            path,
        )?))
    }),
    (custom_response::FILTER_TYPE, |any, path, store| {
        Ok(Arc::new(custom_response::CustomResponse::compile(
            &unpack(any, path)?,
            path,
            &custom_response::PolicyStats { prefix: "", store },
        )?))
    }),
    (buffer::PER_ROUTE_TYPE, |any, path, _| {
        Ok(Arc::new(buffer::RouteBuffer::compile(
            &unpack(any, path)?,
            path,
        )?))
    }),
    (jwt_authn::PER_ROUTE_TYPE, |any, path, _| {
        Ok(Arc::new(jwt_authn::JwtPerRoute::compile(
            &unpack(any, path)?,
            path,
        )?))
    }),
    (lua::PER_ROUTE_TYPE, |any, path, _| {
        Ok(Arc::new(lua::LuaPerRoute::compile(
            &unpack(any, path)?,
            path,
        )?))
    }),
    (stateful_session::PER_ROUTE_TYPE, |any, path, _| {
        Ok(Arc::new(
            stateful_session::StatefulSessionPerRoute::compile(&unpack(any, path)?, path)?,
        ))
    }),
    (bandwidth_limit::FILTER_TYPE, |any, path, store| {
        Ok(Arc::new(bandwidth_limit::BandwidthConfig::compile(
            &unpack(any, path)?,
            path,
            true,
            store,
        )?))
    }),
    (grpc_json_transcoder::FILTER_TYPE, |any, path, _| {
        Ok(Arc::new(grpc_json_transcoder::Transcoder::compile(
            &unpack(any, path)?,
            path,
        )?))
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
