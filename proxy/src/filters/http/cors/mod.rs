//! The CORS filter (`envoy.filters.http.cors`): preflight requests answered by the proxy,
//! and the `access-control-*` headers of responses to cross-origin requests.
//!
//! As Envoy 1.40 (measured, `tests/http_cors.rs`):
//!
//! - Policies come from `typed_per_filter_config` under the filter's name (a
//!   `CorsPolicy`, or a `FilterConfig` holding one) of the route, its virtual host and
//!   the route configuration; each setting is taken from the most specific policy that
//!   sets it. With none there, the deprecated `cors` fields of the route and virtual host
//!   apply. Only routes to a cluster have policies: a direct response or a redirect gets
//!   no CORS headers.
//! - `filter_enabled` (of the most specific policy) turns the filter on for a share of
//!   requests; `shadow_enabled` only counts origins. A request without `origin` is left
//!   alone.
//! - An `OPTIONS` request with `origin` and `access-control-request-method` is a
//!   preflight: answered `200` with the policy's headers, unless its origin is not allowed
//!   and `forward_not_matching_preflights` (default true) sends it on upstream.
//!   `allow_methods`/`allow_headers` of `*` echo what the request asked for.
//! - Any other response to an allowed origin gets `access-control-allow-origin` (the
//!   origin), `access-control-allow-credentials` and `access-control-expose-headers`,
//!   the router's own replies included.
//! - `http.<stat_prefix>.cors.origin_valid` / `origin_invalid` count requests with an
//!   `origin`.

use std::sync::Arc;

use courier_proto::envoy::config::route::v3 as route_pb;
use courier_proto::envoy::extensions::filters::http::cors::v3 as cors_pb;
use http::header::{self, HeaderName};
use http::{HeaderMap, HeaderValue, Method, Response, StatusCode};

use crate::config::{ConfigError, Fraction};
use crate::http::codec::body::ProxyBody;
use crate::http::route::per_filter::FilterConfigs;
use crate::http::route::StrMatch;
use crate::layered_runtime::RuntimeFraction;
use crate::stats::{Counter, Store};

/// The filter's config type (`typed_config`).
pub const FILTER_TYPE: &str = "envoy.extensions.filters.http.cors.v3.Cors";
/// The filter's well-known name (an HTTP filter without `typed_config`).
pub const FILTER_NAME: &str = "envoy.filters.http.cors";
/// The per-route policy's type (`typed_per_filter_config`).
pub const POLICY_TYPE: &str = "envoy.extensions.filters.http.cors.v3.CorsPolicy";

static REQUEST_METHOD: HeaderName = HeaderName::from_static("access-control-request-method");
static REQUEST_HEADERS: HeaderName = HeaderName::from_static("access-control-request-headers");
static REQUEST_PRIVATE_NETWORK: HeaderName =
    HeaderName::from_static("access-control-request-private-network");
static ALLOW_ORIGIN: HeaderName = HeaderName::from_static("access-control-allow-origin");
static ALLOW_CREDENTIALS: HeaderName = HeaderName::from_static("access-control-allow-credentials");
static ALLOW_METHODS: HeaderName = HeaderName::from_static("access-control-allow-methods");
static ALLOW_HEADERS: HeaderName = HeaderName::from_static("access-control-allow-headers");
static MAX_AGE: HeaderName = HeaderName::from_static("access-control-max-age");
static EXPOSE_HEADERS: HeaderName = HeaderName::from_static("access-control-expose-headers");
static ALLOW_PRIVATE_NETWORK: HeaderName =
    HeaderName::from_static("access-control-allow-private-network");

/// One level's CORS policy (a `CorsPolicy`); unset settings fall to less specific levels.
pub struct CorsPolicy {
    allow_origins: Vec<StrMatch>,
    allow_methods: Option<HeaderValue>,
    allow_headers: Option<HeaderValue>,
    expose_headers: Option<HeaderValue>,
    max_age: Option<HeaderValue>,
    allow_credentials: Option<bool>,
    allow_private_network_access: Option<bool>,
    forward_not_matching_preflights: Option<bool>,
    enabled: RuntimeFraction,
    shadow: Option<RuntimeFraction>,
}

/// The fields both `CorsPolicy` protos have (the filter's, and the route's deprecated one).
/// They name them alike, but for `filter_enabled`, which the route's holds in a oneof.
macro_rules! policy_fields {
    ($p:expr, $filter_enabled:expr) => {
        PolicyFields {
            allow_origin_string_match: &$p.allow_origin_string_match,
            allow_methods: &$p.allow_methods,
            allow_headers: &$p.allow_headers,
            expose_headers: &$p.expose_headers,
            max_age: &$p.max_age,
            allow_credentials: $p.allow_credentials.map(|b| b.value),
            allow_private_network_access: $p.allow_private_network_access.map(|b| b.value),
            forward_not_matching_preflights: $p.forward_not_matching_preflights.map(|b| b.value),
            filter_enabled: $filter_enabled,
            shadow_enabled: $p.shadow_enabled.as_ref(),
        }
    };
}

/// The fields both `CorsPolicy` protos have, borrowed.
struct PolicyFields<'a> {
    allow_origin_string_match: &'a [courier_proto::envoy::r#type::matcher::v3::StringMatcher],
    allow_methods: &'a str,
    allow_headers: &'a str,
    expose_headers: &'a str,
    max_age: &'a str,
    allow_credentials: Option<bool>,
    allow_private_network_access: Option<bool>,
    forward_not_matching_preflights: Option<bool>,
    filter_enabled: Option<&'a courier_proto::envoy::config::core::v3::RuntimeFractionalPercent>,
    shadow_enabled: Option<&'a courier_proto::envoy::config::core::v3::RuntimeFractionalPercent>,
}

impl CorsPolicy {
    fn compile(f: PolicyFields<'_>, path: &str) -> Result<CorsPolicy, ConfigError> {
        let value = |s: &str, field: &str| -> Result<Option<HeaderValue>, ConfigError> {
            if s.is_empty() {
                return Ok(None);
            }
            HeaderValue::from_str(s).map(Some).map_err(|_| {
                ConfigError::new(format!("{path}.{field}"), "not a valid header value")
            })
        };
        Ok(CorsPolicy {
            allow_origins: f
                .allow_origin_string_match
                .iter()
                .enumerate()
                .map(|(i, m)| {
                    StrMatch::compile(m, &format!("{path}.allow_origin_string_match[{i}]"))
                })
                .collect::<Result<_, _>>()?,
            allow_methods: value(f.allow_methods, "allow_methods")?,
            allow_headers: value(f.allow_headers, "allow_headers")?,
            expose_headers: value(f.expose_headers, "expose_headers")?,
            max_age: value(f.max_age, "max_age")?,
            allow_credentials: f.allow_credentials,
            allow_private_network_access: f.allow_private_network_access,
            forward_not_matching_preflights: f.forward_not_matching_preflights,
            enabled: match f.filter_enabled {
                Some(e) => RuntimeFraction::compile(e, &format!("{path}.filter_enabled"))?,
                None => RuntimeFraction::fixed(Fraction::ALL),
            },
            shadow: f
                .shadow_enabled
                .map(|s| RuntimeFraction::compile(s, &format!("{path}.shadow_enabled")))
                .transpose()?,
        })
    }

    /// The filter's `CorsPolicy`.
    pub fn from_filter_proto(
        p: &cors_pb::CorsPolicy,
        path: &str,
    ) -> Result<CorsPolicy, ConfigError> {
        CorsPolicy::compile(policy_fields!(p, p.filter_enabled.as_ref()), path)
    }

    /// A route's or virtual host's deprecated `cors`.
    pub fn from_route_proto(
        p: &route_pb::CorsPolicy,
        path: &str,
    ) -> Result<CorsPolicy, ConfigError> {
        let filter_enabled = p
            .enabled_specifier
            .as_ref()
            .map(|route_pb::cors_policy::EnabledSpecifier::FilterEnabled(e)| e);
        CorsPolicy::compile(policy_fields!(p, filter_enabled), path)
    }
}

/// A connection manager's CORS filter.
pub struct CorsFilter {
    /// The filter's name in `http_filters`: its key in `typed_per_filter_config`.
    pub name: String,
    origin_valid: Arc<Counter>,
    origin_invalid: Arc<Counter>,
}

/// What the filter made of a request.
pub enum CorsRequest {
    /// Not a CORS request (or the filter is off): the response is left alone.
    Pass,
    /// A preflight the proxy answers (boxed: the other variants are small).
    Preflight(Box<Response<ProxyBody>>),
    /// A CORS request from an allowed origin: the response gets these headers.
    Allowed(AllowedHeaders),
}

/// The headers a response to an allowed origin gets.
pub struct AllowedHeaders {
    origin: HeaderValue,
    credentials: bool,
    expose: Option<HeaderValue>,
}

impl AllowedHeaders {
    /// Adds the headers to a response.
    pub fn apply(&self, headers: &mut HeaderMap) {
        headers.insert(ALLOW_ORIGIN.clone(), self.origin.clone());
        if self.credentials {
            headers.insert(ALLOW_CREDENTIALS.clone(), HeaderValue::from_static("true"));
        }
        if let Some(v) = &self.expose {
            headers.insert(EXPOSE_HEADERS.clone(), v.clone());
        }
    }
}

/// The policies that apply to a request, most specific first.
struct Policies<'a>([Option<&'a CorsPolicy>; 3]);

impl<'a> Policies<'a> {
    fn first<T>(&self, f: impl Fn(&'a CorsPolicy) -> Option<T>) -> Option<T> {
        self.0.iter().flatten().find_map(|p| f(p))
    }
}

impl CorsFilter {
    /// The filter named `name` in a connection manager whose stats are under `http.<prefix>`.
    pub fn new(name: &str, prefix: &str, store: &Store) -> CorsFilter {
        CorsFilter {
            name: name.to_string(),
            origin_valid: store.counter(&format!("http.{prefix}.cors.origin_valid")),
            origin_invalid: store.counter(&format!("http.{prefix}.cors.origin_invalid")),
        }
    }

    /// The filter's decision for a request routed to a cluster, given the CORS settings of
    /// its route, virtual host and route configuration (most specific first).
    pub fn on_request(
        &self,
        levels: [&FilterConfigs; 3],
        method: &Method,
        headers: &HeaderMap,
        worker: usize,
    ) -> CorsRequest {
        // Most requests are not cross-origin: nothing else is looked at for them.
        let Some(origin) = headers.get(header::ORIGIN).filter(|o| !o.is_empty()) else {
            return CorsRequest::Pass;
        };
        let policies = self.policies(levels);
        let Some(first) = policies.0.iter().flatten().next() else {
            return CorsRequest::Pass;
        };
        let enabled = first.enabled.sample();
        let shadow = first.shadow.as_ref().is_some_and(|s| s.sample());
        if !enabled && !shadow {
            return CorsRequest::Pass;
        }
        let allowed = policies
            .first(|p| (!p.allow_origins.is_empty()).then_some(&p.allow_origins))
            .is_some_and(|ms| {
                let o = origin.to_str().unwrap_or("");
                ms.iter().any(|m| m.matches("*") || m.matches(o))
            });
        if allowed {
            self.origin_valid.inc(worker);
        } else {
            self.origin_invalid.inc(worker);
        }
        if !enabled {
            return CorsRequest::Pass;
        }
        let credentials = policies.first(|p| p.allow_credentials).unwrap_or(false);
        let simple = allowed.then(|| AllowedHeaders {
            origin: origin.clone(),
            credentials,
            expose: policies.first(|p| p.expose_headers.clone()),
        });
        let asked_method = headers.get(&REQUEST_METHOD).filter(|v| !v.is_empty());
        let preflight = method == Method::OPTIONS && asked_method.is_some();
        let forward = policies
            .first(|p| p.forward_not_matching_preflights)
            .unwrap_or(true);
        if !preflight || (!allowed && forward) {
            return simple.map_or(CorsRequest::Pass, CorsRequest::Allowed);
        }
        let mut r = Response::new(ProxyBody::empty());
        *r.status_mut() = StatusCode::OK;
        let h = r.headers_mut();
        if allowed {
            h.insert(ALLOW_ORIGIN.clone(), origin.clone());
        }
        if credentials {
            h.insert(ALLOW_CREDENTIALS.clone(), HeaderValue::from_static("true"));
        }
        // `*` echoes what the preflight asks for (an empty value when it asks nothing).
        let echo = |configured: Option<HeaderValue>, asked: Option<&HeaderValue>| {
            configured.map(|v| match v.as_bytes() {
                b"*" => asked
                    .cloned()
                    .unwrap_or_else(|| HeaderValue::from_static("")),
                _ => v,
            })
        };
        if let Some(v) = echo(policies.first(|p| p.allow_methods.clone()), asked_method) {
            h.insert(ALLOW_METHODS.clone(), v);
        }
        let asked_headers = headers.get(&REQUEST_HEADERS);
        if let Some(v) = echo(policies.first(|p| p.allow_headers.clone()), asked_headers) {
            h.insert(ALLOW_HEADERS.clone(), v);
        }
        if let Some(v) = policies.first(|p| p.max_age.clone()) {
            h.insert(MAX_AGE.clone(), v);
        }
        let private = policies
            .first(|p| p.allow_private_network_access)
            .unwrap_or(false);
        if private
            && headers
                .get(&REQUEST_PRIVATE_NETWORK)
                .is_some_and(|v| v.as_bytes() == b"true")
        {
            h.insert(
                ALLOW_PRIVATE_NETWORK.clone(),
                HeaderValue::from_static("true"),
            );
        }
        // The filter's response pass then treats its own answer like any other.
        if let Some(s) = &simple {
            s.apply(h);
        }
        h.insert(header::CONTENT_LENGTH, HeaderValue::from(0));
        CorsRequest::Preflight(Box::new(r))
    }

    /// The policies of the levels, most specific first: their `typed_per_filter_config`
    /// ones, else their deprecated `cors` ones. (Whether the filter runs at all was
    /// settled by the chain: [`crate::http::route::per_filter::runs`].)
    fn policies<'a>(&self, levels: [&'a FilterConfigs; 3]) -> Policies<'a> {
        let found = levels.map(|l| l.policy::<CorsPolicy>(&self.name));
        if found.iter().any(Option::is_some) {
            return Policies(found);
        }
        Policies(levels.map(FilterConfigs::legacy_cors::<CorsPolicy>))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::http::conn_manager::headers::test_header_map as request;
    use courier_proto::envoy::r#type::matcher::v3::{string_matcher::MatchPattern, StringMatcher};

    fn policy(origins: &[&str], methods: &str) -> cors_pb::CorsPolicy {
        cors_pb::CorsPolicy {
            allow_origin_string_match: origins
                .iter()
                .map(|o| StringMatcher {
                    match_pattern: Some(MatchPattern::Exact(o.to_string())),
                    ..Default::default()
                })
                .collect(),
            allow_methods: methods.into(),
            ..Default::default()
        }
    }

    fn config(p: cors_pb::CorsPolicy) -> FilterConfigs {
        let any = courier_proto::pack_any(&p);
        let map = std::collections::HashMap::from([(FILTER_NAME.to_string(), any)]);
        FilterConfigs::compile(
            &map,
            None,
            "vh",
            &Store::new(1),
            &crate::filters::http::HTTP_FILTERS,
        )
        .expect("valid policy")
    }

    #[test]
    fn preflights_from_allowed_origins_are_answered() {
        let store = Store::new(1);
        let f = CorsFilter::new(FILTER_NAME, "p", &store);
        let vh = config(policy(&["http://a.com"], "*"));
        let none = FilterConfigs::default();
        let pre = request(&[
            ("origin", "http://a.com"),
            ("access-control-request-method", "PUT"),
        ]);
        match f.on_request([&none, &vh, &none], &Method::OPTIONS, &pre, 0) {
            CorsRequest::Preflight(r) => {
                assert_eq!(r.headers()["access-control-allow-origin"], "http://a.com");
                assert_eq!(r.headers()["access-control-allow-methods"], "PUT");
            }
            _ => panic!("a preflight"),
        }
        let other = request(&[
            ("origin", "http://z.com"),
            ("access-control-request-method", "PUT"),
        ]);
        assert!(matches!(
            f.on_request([&none, &vh, &none], &Method::OPTIONS, &other, 0),
            CorsRequest::Pass
        ));
        assert!(matches!(
            f.on_request([&none, &vh, &none], &Method::GET, &pre, 0),
            CorsRequest::Allowed(_)
        ));
        assert_eq!(f.origin_valid.value(), 2);
        assert_eq!(f.origin_invalid.value(), 1);
    }
}
