//! Route tables: a `RouteConfiguration` compiled once on the main thread into matchers.
//!
//! All validation happens in [`RouteTable::compile`] (an RDS response that fails is NACKed
//! with the error's path); matching on the worker never fails.

// Deprecated proto fields (header matchers, cors) are still accepted or rejected by name.
#![allow(deprecated)]

pub mod hash_policy;
pub mod metadata;
pub mod per_filter;
pub mod rate_limits;
pub mod rds;
pub mod shadow_policy;

use std::borrow::Cow;
use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use courier_proto::envoy::config::core::v3::{data_source, DataSource};
use courier_proto::envoy::config::route::v3 as pb;
use courier_proto::envoy::r#type::matcher::v3::{
    string_matcher::MatchPattern, RegexMatcher, StringMatcher,
};
use http::header::{HeaderMap, HeaderName};
use http::StatusCode;
use regex::Regex;

use per_filter::{FilterConfigs, PerFilterCompiler};

use crate::config::{self, ConfigError};
use crate::http::request_stats::RequestStats;
use crate::layered_runtime::RuntimeFraction;
use crate::protocol::header_mutations::HeaderMutations;
use crate::stats::Store;
use hash_policy::HashPolicies;
use rate_limits::{Level, RateLimits};
use shadow_policy::ShadowPolicy;

/// A compiled route configuration.
pub struct RouteTable {
    /// `RouteConfiguration.name`.
    pub name: String,
    /// The source proto (config_dump, change detection).
    pub proto: Arc<RouteConfiguration>,
    vhosts: Vec<VirtualHost>,
    exact: HashMap<String, usize>,
    /// `*.suffix` domains: (suffix without `*`, vhost), longest first.
    suffixes: Vec<(String, usize)>,
    /// `prefix.*` domains: (prefix without `*`, vhost), longest first.
    prefixes: Vec<(String, usize)>,
    default_vhost: Option<usize>,
    ignore_port: bool,
    /// Route-configuration-level request header mutations.
    pub request_headers: HeaderMutations,
    /// Route-configuration-level response header mutations.
    pub response_headers: HeaderMutations,
    /// Whether any header mutation of the table reads request headers: only then does a
    /// request keep a copy of its headers (the hot path hands them upstream instead).
    pub reads_request_headers: bool,
    /// `internal_only_headers`: removed from external requests.
    pub internal_only_headers: Vec<HeaderName>,
    /// `typed_per_filter_config`.
    pub filters: FilterConfigs,
}

pub use courier_proto::envoy::config::route::v3::RouteConfiguration;

/// A compiled virtual host.
pub struct VirtualHost {
    /// `name`.
    pub name: String,
    /// Routes in order.
    pub routes: Vec<Route>,
    /// Virtual-host-level request header mutations.
    pub request_headers: HeaderMutations,
    /// Virtual-host-level response header mutations.
    pub response_headers: HeaderMutations,
    /// `retry_policy` (used by routes without their own).
    pub retry_policy: Option<Arc<RetryPolicy>>,
    /// `include_request_attempt_count`: each upstream request carries
    /// `x-envoy-attempt-count` (1 on the first).
    pub attempt_count_upstream: bool,
    /// `include_attempt_count_in_response`: the response carries the attempts made.
    pub attempt_count_response: bool,
    /// `include_is_timeout_retry_header`: a retry says whether a per-try timeout caused it
    /// (`x-envoy-is-timeout-retry`).
    pub timeout_retry_header: bool,
    /// `typed_per_filter_config`, and the deprecated `cors`.
    pub filters: FilterConfigs,
    /// `require_tls`.
    pub require_tls: TlsRequirement,
    /// `rate_limits`: descriptors for the rate limit filters.
    pub rate_limits: Option<Box<RateLimits>>,
    /// `virtual_clusters`, in order.
    virtual_clusters: Vec<VirtualCluster>,
    /// The stats of requests no virtual cluster matched (`vcluster.other`), when the
    /// virtual host has virtual clusters.
    other_vcluster: Option<Box<RequestStats>>,
    /// `metadata.filter_metadata`, which Lua scripts read (`virtualHost()`).
    pub metadata: Option<Arc<metadata::FilterMetadata>>,
}

/// A virtual cluster: requests matching all its header matchers are counted under its
/// name (`vhost.<virtual host>.vcluster.<name>.`).
struct VirtualCluster {
    name: Arc<str>,
    headers: Vec<HeaderMatcher>,
    stats: RequestStats,
}

/// A virtual host's `require_tls`: which of its requests are redirected to `https` when
/// they did not come over TLS (as Courier's listeners are plaintext, those whose
/// `x-forwarded-proto` is not `https`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TlsRequirement {
    /// `NONE`.
    None,
    /// `EXTERNAL_ONLY`: requests not marked `x-envoy-internal: true`.
    ExternalOnly,
    /// `ALL`.
    All,
}

impl TlsRequirement {
    /// Whether a request with these (already sanitised) headers must be redirected to
    /// `https`: as Envoy, by `x-forwarded-proto` (a TLS-terminating load balancer in front
    /// sets it to `https`) and, for `EXTERNAL_ONLY`, `x-envoy-internal`.
    pub fn redirects(self, headers: &HeaderMap) -> bool {
        let plain = || {
            headers
                .get("x-forwarded-proto")
                .is_none_or(|v| v.as_bytes() != b"https")
        };
        match self {
            TlsRequirement::None => false,
            TlsRequirement::All => plain(),
            TlsRequirement::ExternalOnly => {
                plain()
                    && headers
                        .get("x-envoy-internal")
                        .is_none_or(|v| v.as_bytes() != b"true")
            }
        }
    }
}

/// A compiled route.
pub struct Route {
    /// `name`.
    pub name: String,
    matcher: RouteMatcher,
    /// What to do with a matching request.
    pub action: Action,
    /// Route-level request header mutations.
    pub request_headers: HeaderMutations,
    /// Route-level response header mutations.
    pub response_headers: HeaderMutations,
    /// `per_request_buffer_limit_bytes` (the route's, else its virtual host's): how much
    /// of a request body is buffered to be replayed on retries. `None`: the listener's
    /// `per_connection_buffer_limit_bytes`.
    pub buffer_limit: Option<usize>,
    /// `typed_per_filter_config`, and the action's deprecated `cors`.
    pub filters: FilterConfigs,
    /// `stat_prefix`: the route's own upstream request stats
    /// (`vhost.<virtual host>.route.<stat_prefix>.`).
    pub stats: Option<Box<RequestStats>>,
    /// `decorator`: the traced request's span name, and whether it is sent upstream in
    /// `x-envoy-decorator-operation` (`propagate`, default true).
    pub decorator: Option<Box<(String, bool)>>,
    /// `metadata.filter_metadata`, which Lua scripts read (`metadata()`, `route()`).
    pub metadata: Option<Arc<metadata::FilterMetadata>>,
}

enum PathMatch {
    Prefix(String),
    Path(String),
    Regex(Regex),
    SeparatedPrefix(String),
}

struct RouteMatcher {
    path: PathMatch,
    case_sensitive: bool,
    headers: Vec<HeaderMatcher>,
    query: Vec<QueryMatcher>,
    /// `grpc: {}`: only requests with `content-type: application/grpc*`.
    grpc: bool,
    /// `runtime_fraction`: the share of requests (by their random value) the route takes.
    runtime: Option<RuntimeFraction>,
}

/// A compiled string matcher.
#[derive(Debug, Clone)]
pub enum StrMatch {
    /// `exact`.
    Exact(String, bool),
    /// `prefix`.
    Prefix(String, bool),
    /// `suffix`.
    Suffix(String, bool),
    /// `contains`.
    Contains(String, bool),
    /// `safe_regex` (full match).
    Regex(Regex),
}

impl StrMatch {
    /// Compiles a `StringMatcher`.
    pub fn compile(m: &StringMatcher, path: &str) -> Result<StrMatch, ConfigError> {
        let ic = m.ignore_case;
        let low = |s: &str| {
            if ic {
                s.to_ascii_lowercase()
            } else {
                s.to_string()
            }
        };
        Ok(match &m.match_pattern {
            Some(MatchPattern::Exact(s)) => StrMatch::Exact(low(s), ic),
            Some(MatchPattern::Prefix(s)) => StrMatch::Prefix(low(s), ic),
            Some(MatchPattern::Suffix(s)) => StrMatch::Suffix(low(s), ic),
            Some(MatchPattern::Contains(s)) => StrMatch::Contains(low(s), ic),
            Some(MatchPattern::SafeRegex(r)) => {
                StrMatch::Regex(compile_regex(r, &format!("{path}.safe_regex"))?)
            }
            _ => {
                return Err(ConfigError::new(
                    path,
                    "match_pattern is required (exact, prefix, suffix, contains or safe_regex)",
                ))
            }
        })
    }

    /// Whether `v` matches.
    pub fn matches(&self, v: &str) -> bool {
        fn cmp(v: &str, ic: bool, f: impl Fn(&str) -> bool) -> bool {
            if ic {
                f(&v.to_ascii_lowercase())
            } else {
                f(v)
            }
        }
        match self {
            StrMatch::Exact(s, ic) => cmp(v, *ic, |v| v == s),
            StrMatch::Prefix(s, ic) => cmp(v, *ic, |v| v.starts_with(s.as_str())),
            StrMatch::Suffix(s, ic) => cmp(v, *ic, |v| v.ends_with(s.as_str())),
            StrMatch::Contains(s, ic) => cmp(v, *ic, |v| v.contains(s.as_str())),
            StrMatch::Regex(r) => r.is_match(v),
        }
    }
}

#[derive(Clone)]
enum HeaderTest {
    Str(StrMatch),
    Present(bool),
    Range(i64, i64),
}

/// A compiled `HeaderMatcher`.
#[derive(Clone)]
pub struct HeaderMatcher {
    name: MatchedName,
    test: HeaderTest,
    invert: bool,
    missing_as_empty: bool,
}

/// What a header matcher looks at: a header, or one of the pseudo-headers a `HeaderMap`
/// does not hold.
#[derive(Clone)]
pub(crate) enum MatchedName {
    Header(HeaderName),
    Method,
    Path,
    Authority,
    Scheme,
    Status,
    /// Another pseudo-header: never present.
    OtherPseudo,
}

impl MatchedName {
    /// What the header name `name` (at `path`) names: a header, or a pseudo-header (`host`
    /// is `:authority`, as Envoy's header map holds it).
    pub(crate) fn compile(name: &str, path: &str) -> Result<MatchedName, ConfigError> {
        Ok(match name.to_ascii_lowercase().as_str() {
            ":method" => MatchedName::Method,
            ":path" => MatchedName::Path,
            ":authority" | "host" => MatchedName::Authority,
            ":scheme" => MatchedName::Scheme,
            ":status" => MatchedName::Status,
            n if n.starts_with(':') => MatchedName::OtherPseudo,
            _ => MatchedName::Header(header_name(name, path)?),
        })
    }

    /// The first value of what it names in a message with `headers` and `pseudo`.
    pub(crate) fn first<'a>(
        &self,
        headers: &'a HeaderMap,
        pseudo: &Pseudo<'a>,
    ) -> Option<Cow<'a, str>> {
        match self {
            MatchedName::Header(name) => headers
                .get(name)
                .map(|v| String::from_utf8_lossy(v.as_bytes())),
            MatchedName::Method => pseudo.method.map(Cow::Borrowed),
            MatchedName::Path => pseudo.path.map(Cow::Borrowed),
            MatchedName::Authority => pseudo.authority.map(Cow::Borrowed),
            MatchedName::Scheme => pseudo.scheme.map(Cow::Borrowed),
            MatchedName::Status => pseudo.status.map(|s| Cow::Owned(s.to_string())),
            MatchedName::OtherPseudo => None,
        }
    }
}

/// The pseudo-headers of the message a [`HeaderMatcher`] looks at (`:method`, `:path`
/// with its query, `:authority`, `:scheme` of a request; `:status` of a response), as
/// Envoy's matchers see them.
#[derive(Debug, Clone, Copy, Default)]
pub struct Pseudo<'a> {
    /// `:method`.
    pub method: Option<&'a str>,
    /// `:path`.
    pub path: Option<&'a str>,
    /// `:authority`.
    pub authority: Option<&'a str>,
    /// `:scheme`.
    pub scheme: Option<&'a str>,
    /// `:status`.
    pub status: Option<u16>,
}

impl<'a> Pseudo<'a> {
    /// A request's pseudo-headers.
    pub fn request(
        method: &'a http::Method,
        path: &'a str,
        authority: &'a str,
        scheme: &'static str,
    ) -> Pseudo<'a> {
        Pseudo {
            method: Some(method.as_str()),
            path: Some(path),
            authority: Some(authority),
            scheme: Some(scheme),
            status: None,
        }
    }

    /// A request's `:scheme`: its URI's (an HTTP/2 request, an absolute URL), else `http`.
    pub fn scheme_of(uri: &http::Uri) -> &'static str {
        if uri.scheme() == Some(&http::uri::Scheme::HTTPS) {
            "https"
        } else {
            "http"
        }
    }
}

impl HeaderMatcher {
    /// Whether the message with `headers` and `pseudo` headers matches.
    pub fn matches<'a>(&self, headers: &'a HeaderMap, pseudo: &Pseudo<'a>) -> bool {
        // Borrowed but for a repeated header (joined with `,`, as Envoy) and `:status`:
        // matchers run on every request, for routes and filters alike.
        let pseudo_value = |v: Option<&'a str>| v.map(Cow::Borrowed);
        let joined: Option<Cow<'a, str>> = match &self.name {
            MatchedName::Header(name) => {
                let mut values = headers.get_all(name).iter();
                match (values.next(), values.next()) {
                    (None, _) => None,
                    (Some(v), None) => Some(Cow::Borrowed(v.to_str().unwrap_or(""))),
                    (Some(first), Some(second)) => {
                        let v: Vec<&str> = [first, second]
                            .into_iter()
                            .chain(values)
                            .map(|v| v.to_str().unwrap_or(""))
                            .collect();
                        Some(Cow::Owned(v.join(",")))
                    }
                }
            }
            MatchedName::Method => pseudo_value(pseudo.method),
            MatchedName::Path => pseudo_value(pseudo.path),
            MatchedName::Authority => pseudo_value(pseudo.authority),
            MatchedName::Scheme => pseudo_value(pseudo.scheme),
            MatchedName::Status => pseudo.status.map(|s| Cow::Owned(s.to_string())),
            MatchedName::OtherPseudo => None,
        };
        if joined.is_none() && !self.missing_as_empty {
            // Envoy: a missing header never matches a value matcher, inverted or not; a
            // presence matcher matches it when it asks for absence.
            return match self.test {
                HeaderTest::Present(p) => p == self.invert,
                _ => false,
            };
        }
        let result = match &self.test {
            HeaderTest::Present(p) => *p,
            HeaderTest::Str(m) => m.matches(joined.as_deref().unwrap_or("")),
            HeaderTest::Range(lo, hi) => joined
                .as_deref()
                .unwrap_or("")
                .parse::<i64>()
                .is_ok_and(|n| n >= *lo && n < *hi),
        };
        result != self.invert
    }
}

struct QueryMatcher {
    name: String,
    test: Option<StrMatch>,
}

/// Which cluster(s) a route sends to.
pub enum ClusterSpec {
    /// `cluster`.
    Single(String),
    /// `cluster_header`: the cluster named by a request header.
    Header(HeaderName),
    /// `weighted_clusters`.
    Weighted {
        /// (name, weight, request mutations, response mutations).
        clusters: Vec<WeightedCluster>,
        /// Sum of weights.
        total: u64,
    },
}

/// One member of `weighted_clusters`.
pub struct WeightedCluster {
    /// Cluster name.
    pub name: String,
    /// Weight.
    pub weight: u32,
    /// Request header mutations of this member.
    pub request_headers: HeaderMutations,
    /// Response header mutations of this member.
    pub response_headers: HeaderMutations,
}

/// How the `host` header is rewritten.
pub enum HostRewrite {
    /// Unchanged.
    None,
    /// `host_rewrite_literal`.
    Literal(String),
    /// `auto_host_rewrite`: the upstream host's address.
    Auto,
}

/// `retry_policy`.
#[derive(Clone)]
pub struct RetryPolicy {
    /// `5xx`.
    pub on_5xx: bool,
    /// `gateway-error`.
    pub on_gateway_error: bool,
    /// `reset`.
    pub on_reset: bool,
    /// `reset-before-request`: only when nothing of the request was sent (a connection
    /// that could not be made).
    pub on_reset_before_request: bool,
    /// `connect-failure`.
    pub on_connect_failure: bool,
    /// `retriable-4xx` (409).
    pub on_retriable_4xx: bool,
    /// `retriable-status-codes`.
    pub on_status_codes: bool,
    /// `refused-stream`.
    pub on_refused_stream: bool,
    /// `retriable_status_codes`.
    pub status_codes: Vec<u16>,
    /// gRPC statuses to retry (`cancelled`, `deadline-exceeded`, `internal`,
    /// `resource-exhausted`, `unavailable`), read from the response head's `grpc-status`
    /// (a trailers-only response), as Envoy.
    pub grpc_statuses: Vec<u32>,
    /// `envoy-ratelimited`: a response carrying `x-envoy-ratelimited`.
    pub on_ratelimited: bool,
    /// `retriable-headers`: a response matching any of `retriable_headers`.
    on_headers: bool,
    /// `retriable_headers`.
    retriable_headers: Vec<HeaderMatcher>,
    /// `retriable_request_headers`: only requests matching one of them are retried.
    request_headers: Vec<HeaderMatcher>,
    /// `num_retries` (default 1).
    pub num_retries: u32,
    /// `per_try_timeout`.
    pub per_try_timeout: Option<Duration>,
    /// Back-off base (default 25 ms).
    pub base_interval: Duration,
    /// Back-off cap (default 10 × base).
    pub max_interval: Duration,
    /// `retry_host_predicate` `previous_hosts`: a retry avoids the hosts already tried.
    pub avoid_previous_hosts: bool,
    /// `host_selection_retry_max_attempts`: how many more picks a retry makes to avoid them.
    pub host_reselections: u32,
    /// `retry_host_predicate` `omit_canary_hosts`: a retry avoids canary hosts.
    pub omit_canary_hosts: bool,
}

/// The retry host predicates Courier has (Envoy's `previous_hosts` and
/// `omit_canary_hosts`), by their configs' types.
const PREVIOUS_HOSTS_TYPE: &str =
    "envoy.extensions.retry.host.previous_hosts.v3.PreviousHostsPredicate";
/// See [`PREVIOUS_HOSTS_TYPE`].
const OMIT_CANARY_HOSTS_TYPE: &str =
    "envoy.extensions.retry.host.omit_canary_hosts.v3.OmitCanaryHostsPredicate";

impl RetryPolicy {
    /// A policy with no retry condition, and Envoy's defaults: one retry, a 25 ms back-off.
    pub fn none() -> RetryPolicy {
        RetryPolicy {
            on_5xx: false,
            on_gateway_error: false,
            on_reset: false,
            on_reset_before_request: false,
            on_connect_failure: false,
            on_retriable_4xx: false,
            on_status_codes: false,
            on_refused_stream: false,
            status_codes: Vec::new(),
            grpc_statuses: Vec::new(),
            on_ratelimited: false,
            on_headers: false,
            retriable_headers: Vec::new(),
            request_headers: Vec::new(),
            num_retries: 1,
            per_try_timeout: None,
            base_interval: Duration::from_millis(25),
            max_interval: Duration::from_millis(250),
            avoid_previous_hosts: false,
            host_reselections: 0,
            omit_canary_hosts: false,
        }
    }

    /// Compiles a route's `retry_policy` at `path`.
    pub fn compile(p: &pb::RetryPolicy, path: &str) -> Result<RetryPolicy, ConfigError> {
        let mut r = RetryPolicy::none();
        r.status_codes = p.retriable_status_codes.iter().map(|c| *c as u16).collect();
        r.request_headers = p
            .retriable_request_headers
            .iter()
            .enumerate()
            .map(|(i, h)| {
                compile_header_matcher(h, &format!("{path}.retriable_request_headers[{i}]"))
            })
            .collect::<Result<_, _>>()?;
        r.retriable_headers = p
            .retriable_headers
            .iter()
            .enumerate()
            .map(|(i, h)| compile_header_matcher(h, &format!("{path}.retriable_headers[{i}]")))
            .collect::<Result<_, _>>()?;
        r.num_retries = p.num_retries.as_ref().map_or(1, |v| v.value);
        r.per_try_timeout = p
            .per_try_timeout
            .as_ref()
            .map(|d| config::duration(d, &format!("{path}.per_try_timeout")))
            .transpose()?
            .filter(|d| !d.is_zero());
        for token in p
            .retry_on
            .split(',')
            .map(str::trim)
            .filter(|t| !t.is_empty())
        {
            // HTTP/3 only: Courier has no HTTP/3 upstreams.
            if token == "http3-post-connect-failure" {
                continue;
            }
            if !r.enable(token) && !r.enable_grpc(token) {
                return Err(ConfigError::new(
                    format!("{path}.retry_on"),
                    format!("unknown retry policy '{token}'"),
                ));
            }
        }
        if let Some(b) = &p.retry_back_off {
            let base = b
                .base_interval
                .as_ref()
                .map(|d| config::duration(d, &format!("{path}.retry_back_off.base_interval")))
                .transpose()?
                .ok_or_else(|| {
                    ConfigError::new(
                        format!("{path}.retry_back_off.base_interval"),
                        "value is required",
                    )
                })?;
            if base.as_millis() < 1 {
                return Err(ConfigError::new(
                    format!("{path}.retry_back_off.base_interval"),
                    "value must be greater than or equal to 1ms",
                ));
            }
            let max = b
                .max_interval
                .as_ref()
                .map(|d| config::duration(d, &format!("{path}.retry_back_off.max_interval")))
                .transpose()?
                .unwrap_or(base * 10);
            if max < base {
                return Err(ConfigError::new(
                    format!("{path}.retry_back_off.max_interval"),
                    "max_interval must be greater than or equal to the base_interval",
                ));
            }
            r.base_interval = base;
            r.max_interval = max;
        }
        use pb::retry_policy::retry_host_predicate::ConfigType;
        for (i, predicate) in p.retry_host_predicate.iter().enumerate() {
            let is = |type_name: &str, name: &str| match &predicate.config_type {
                Some(ConfigType::TypedConfig(any)) => any
                    .type_url
                    .rsplit('/')
                    .next()
                    .is_some_and(|t| t == type_name),
                None => predicate.name == name,
            };
            if is(
                PREVIOUS_HOSTS_TYPE,
                "envoy.retry_host_predicates.previous_hosts",
            ) {
                r.avoid_previous_hosts = true;
            } else if is(
                OMIT_CANARY_HOSTS_TYPE,
                "envoy.retry_host_predicates.omit_canary_hosts",
            ) {
                r.omit_canary_hosts = true;
            } else {
                return Err(ConfigError::unsupported(format!(
                    "{path}.retry_host_predicate[{i}]"
                )));
            }
        }
        // Envoy reads a negative count as none.
        r.host_reselections =
            u32::try_from(p.host_selection_retry_max_attempts.max(0)).unwrap_or(u32::MAX);
        if p.retry_priority.is_some() {
            return Err(ConfigError::unsupported(format!("{path}.retry_priority")));
        }
        for (field, set) in [
            ("per_try_idle_timeout", p.per_try_idle_timeout.is_some()),
            (
                "rate_limited_retry_back_off",
                p.rate_limited_retry_back_off.is_some(),
            ),
            (
                "retry_options_predicates",
                !p.retry_options_predicates.is_empty(),
            ),
        ] {
            if set {
                return Err(ConfigError::unsupported(format!("{path}.{field}")));
            }
        }
        Ok(r)
    }

    /// Turns on an HTTP retry condition (a `retry_on` or `x-envoy-retry-on` token); false
    /// when `token` names none.
    pub fn enable(&mut self, token: &str) -> bool {
        let flag = match token {
            "5xx" => &mut self.on_5xx,
            "gateway-error" => &mut self.on_gateway_error,
            "reset" => &mut self.on_reset,
            "reset-before-request" => &mut self.on_reset_before_request,
            "connect-failure" => &mut self.on_connect_failure,
            "retriable-4xx" => &mut self.on_retriable_4xx,
            "retriable-status-codes" => &mut self.on_status_codes,
            "refused-stream" => &mut self.on_refused_stream,
            "envoy-ratelimited" => &mut self.on_ratelimited,
            "retriable-headers" => &mut self.on_headers,
            _ => return false,
        };
        *flag = true;
        true
    }

    /// Turns on a gRPC retry condition (a `retry_on` or `x-envoy-retry-grpc-on` token);
    /// false when `token` names none.
    pub fn enable_grpc(&mut self, token: &str) -> bool {
        let code = match token {
            "cancelled" => 1,
            "deadline-exceeded" => 4,
            "resource-exhausted" => 8,
            "internal" => 13,
            "unavailable" => 14,
            _ => return false,
        };
        if !self.grpc_statuses.contains(&code) {
            self.grpc_statuses.push(code);
        }
        true
    }

    /// Whether any retry condition is on.
    pub fn retries_anything(&self) -> bool {
        self.on_5xx
            || self.on_gateway_error
            || self.on_reset
            || self.on_reset_before_request
            || self.on_connect_failure
            || self.on_retriable_4xx
            || self.on_status_codes
            || self.on_refused_stream
            || self.on_ratelimited
            || self.on_headers
            || !self.grpc_statuses.is_empty()
    }

    /// Adds a response header whose presence asks for a retry (under `retriable-headers`).
    pub fn add_retriable_header(&mut self, name: HeaderName) {
        self.retriable_headers.push(HeaderMatcher {
            name: MatchedName::Header(name),
            test: HeaderTest::Present(true),
            invert: false,
            missing_as_empty: false,
        });
    }

    /// Whether this policy retries a request at all (`retriable_request_headers`).
    pub fn applies_to(&self, request: &HeaderMap, pseudo: &Pseudo<'_>) -> bool {
        self.request_headers.is_empty()
            || self
                .request_headers
                .iter()
                .any(|m| m.matches(request, pseudo))
    }

    /// Whether a response asks for a retry: by its status, its gRPC status, or its
    /// headers.
    pub fn retry_response(&self, status: u16, headers: &HeaderMap) -> bool {
        let grpc = || {
            headers
                .get("grpc-status")
                .and_then(|v| v.to_str().ok())
                .and_then(|v| v.parse::<u32>().ok())
                .is_some_and(|code| self.grpc_statuses.contains(&code))
        };
        // As Envoy: a rate-limited answer is retried under `envoy-ratelimited` only.
        if headers.contains_key("x-envoy-ratelimited") {
            return self.on_ratelimited;
        }
        (self.on_5xx && status >= 500)
            || (self.on_gateway_error && (502..=504).contains(&status))
            || (self.on_retriable_4xx && status == 409)
            || (self.on_status_codes && self.status_codes.contains(&status))
            || (!self.grpc_statuses.is_empty() && grpc())
            || (self.on_headers && {
                let pseudo = Pseudo {
                    status: Some(status),
                    ..Pseudo::default()
                };
                self.retriable_headers
                    .iter()
                    .any(|m| m.matches(headers, &pseudo))
            })
    }

    /// Whether a connection failure (nothing of the request sent) asks for a retry.
    pub fn retry_connect_failure(&self) -> bool {
        self.on_connect_failure
            || self.on_5xx
            || self.on_gateway_error
            || self.on_reset
            || self.on_reset_before_request
    }

    /// Whether a stream an HTTP/2 upstream refused asks for a retry (`refused-stream`,
    /// which `5xx`, `gateway-error` and `reset` include).
    pub fn retry_refused(&self) -> bool {
        self.on_refused_stream || self.on_5xx || self.on_gateway_error || self.on_reset
    }

    /// Whether a reset (disconnect before a response) asks for a retry.
    pub fn retry_reset(&self) -> bool {
        self.on_reset || self.on_5xx || self.on_gateway_error
    }

    /// Whether a per-try timeout asks for a retry.
    pub fn retry_timeout(&self) -> bool {
        self.on_5xx || self.on_gateway_error
    }

    /// Jittered exponential back-off before retry number `n` (1-based), as Envoy's.
    pub fn backoff(&self, n: u32) -> Duration {
        let base = self.base_interval.as_millis() as u64;
        let mult = (1u64 << n.min(16)) - 1;
        let ceiling = (base * mult)
            .min(self.max_interval.as_millis() as u64)
            .max(1);
        Duration::from_millis(fastrand::u64(0..=ceiling))
    }
}

/// A forwarding action.
pub struct RouteAction {
    /// Target cluster(s).
    pub cluster: ClusterSpec,
    /// `prefix_rewrite`.
    pub prefix_rewrite: Option<String>,
    /// `regex_rewrite`.
    pub regex_rewrite: Option<(Regex, String)>,
    /// `hash_policy`, for a hashing load balancer.
    pub hash_policy: Option<HashPolicies>,
    /// `host_rewrite_*`.
    pub host_rewrite: HostRewrite,
    /// `append_x_forwarded_host`: a rewritten host's original is appended to
    /// `x-forwarded-host`.
    pub append_x_forwarded_host: bool,
    /// `timeout` (default 15 s; `None` when 0).
    pub timeout: Option<Duration>,
    /// `max_stream_duration`: when set, `timeout` is not used (Envoy's "new" timeouts).
    pub stream_duration: Option<StreamDuration>,
    /// `max_grpc_timeout` (`Some(None)`: 0, no cap) and `grpc_timeout_offset`: a gRPC
    /// request's route timeout comes from its `grpc-timeout`.
    pub max_grpc_timeout: Option<(Option<Duration>, Duration)>,
    /// `idle_timeout`: replaces the connection manager's `stream_idle_timeout` for the
    /// route's streams; zero disables it.
    pub idle_timeout: Option<Duration>,
    /// `retry_policy` (or the virtual host's).
    pub retry_policy: Option<Arc<RetryPolicy>>,
    /// `upgrade_configs` enabled on this route (e.g. `websocket`), lower-case.
    pub upgrades: Vec<(String, bool)>,
    /// `cluster_not_found_response_code`.
    pub cluster_not_found: StatusCode,
    /// `request_mirror_policies` (else the virtual host's, else the route
    /// configuration's).
    pub shadows: Arc<[ShadowPolicy]>,
    /// `rate_limits`: descriptors for the rate limit filters.
    pub rate_limits: Option<Box<RateLimits>>,
    /// `include_vh_rate_limits`: the virtual host's `rate_limits` apply too.
    pub include_vh_rate_limits: bool,
}

/// A route's `max_stream_duration`.
#[derive(Debug, Clone, Copy)]
pub struct StreamDuration {
    /// `max_stream_duration` (`Some(None)`: 0, no duration; `None`: unset, the connection
    /// manager's applies).
    pub max: Option<Option<Duration>>,
    /// `grpc_timeout_header_max`: a request's `grpc-timeout` sets the duration, capped by
    /// this (`Some(None)`: 0, no cap).
    pub grpc_header_max: Option<Option<Duration>>,
    /// `grpc_timeout_header_offset`, taken off the header's value.
    pub grpc_header_offset: Duration,
}

/// The timeouts a request gets on a route.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RequestTimeouts {
    /// The route timeout (`504 upstream request timeout` when it ends).
    pub route: Option<Duration>,
    /// The stream's maximum duration (`504 downstream duration timeout`).
    pub duration: Option<Duration>,
    /// What a gRPC request tells its server as its `grpc-timeout` (Envoy rewrites it):
    /// the stream's duration, or the route timeout `max_grpc_timeout` made.
    pub grpc_timeout: Option<Duration>,
}

impl RouteAction {
    /// This route's timeouts for a request, as Envoy computes them (measured against
    /// Envoy 1.40): `max_stream_duration` replaces `timeout` (a request's `grpc-timeout`
    /// sets the duration when `grpc_timeout_header_max` is given, whatever its content
    /// type); `max_grpc_timeout` takes a gRPC request's `grpc-timeout` as the route timeout.
    /// `hcm_duration` (the connection manager's `max_stream_duration`) is the duration
    /// where the route sets none; the server learns it as a `grpc-timeout` only on a route
    /// with `max_stream_duration` (as Envoy).
    pub fn timeouts(
        &self,
        grpc: bool,
        grpc_timeout: Option<Duration>,
        hcm_duration: Option<Duration>,
    ) -> RequestTimeouts {
        let nonzero = |d: Duration| (!d.is_zero()).then_some(d);
        if let Some(sd) = &self.stream_duration {
            let from_header = match (sd.grpc_header_max, grpc_timeout) {
                (Some(max), Some(h)) => {
                    let capped = match max {
                        Some(m) if h > m => m,
                        _ => h,
                    };
                    Some(minus_offset(capped, sd.grpc_header_offset))
                }
                _ => None,
            };
            let duration = from_header.map_or(sd.max.unwrap_or(hcm_duration), nonzero);
            return RequestTimeouts {
                route: None,
                duration,
                grpc_timeout: duration.filter(|_| grpc),
            };
        }
        match self.max_grpc_timeout {
            Some((max, offset)) if grpc => {
                let h = grpc_timeout.map_or(Duration::ZERO, |h| minus_offset(h, offset));
                let route = match max {
                    Some(m) if h.is_zero() || h > m => Some(m),
                    _ => nonzero(h),
                };
                RequestTimeouts {
                    route,
                    duration: hcm_duration,
                    grpc_timeout: route,
                }
            }
            _ => RequestTimeouts {
                route: self.timeout,
                duration: hcm_duration,
                grpc_timeout: None,
            },
        }
    }
}

/// A `grpc-timeout` less an offset, which only applies when the timeout is longer (as
/// Envoy's `grpc_timeout_offset`).
fn minus_offset(t: Duration, offset: Duration) -> Duration {
    if t > offset {
        t - offset
    } else {
        t
    }
}

/// A `grpc-timeout` value (`<up to 8 digits><H|M|S|m|u|n>`); `None` when malformed.
pub fn parse_grpc_timeout(v: &[u8]) -> Option<Duration> {
    let (unit, digits) = v.split_last()?;
    if digits.is_empty() || digits.len() > 8 || !digits.iter().all(u8::is_ascii_digit) {
        return None;
    }
    let n: u64 = std::str::from_utf8(digits).ok()?.parse().ok()?;
    Some(match unit {
        b'H' => Duration::from_secs(n * 3600),
        b'M' => Duration::from_secs(n * 60),
        b'S' => Duration::from_secs(n),
        b'm' => Duration::from_millis(n),
        b'u' => Duration::from_micros(n),
        b'n' => Duration::from_nanos(n),
        _ => return None,
    })
}

/// `redirect`.
pub struct Redirect {
    /// Scheme to use (`https_redirect`/`scheme_redirect`), if changed.
    pub scheme: Option<String>,
    /// `host_redirect`.
    pub host: Option<String>,
    /// `port_redirect`.
    pub port: Option<u16>,
    /// `path_redirect`.
    pub path: Option<String>,
    /// `prefix_rewrite`.
    pub prefix_rewrite: Option<String>,
    /// `regex_rewrite`.
    pub regex_rewrite: Option<(Regex, String)>,
    /// `response_code`.
    pub status: StatusCode,
    /// `strip_query`.
    pub strip_query: bool,
}

impl Redirect {
    /// Where the redirect sends a request for `authority` and `path` (Envoy's `newUri`),
    /// `rewritten` its path as the redirect's prefix or regex rewrite made it.
    pub fn location(
        &self,
        authority: &str,
        path: &str,
        rewritten: Option<String>,
        request_scheme: &str,
    ) -> String {
        let scheme = self.scheme.as_deref().unwrap_or(request_scheme);
        let (orig_host, orig_port) = {
            let h = strip_port(authority);
            let port = authority
                .get(h.len() + 1..)
                .and_then(|p| p.parse::<u16>().ok());
            (h.to_string(), port)
        };
        // Envoy: `host_redirect` replaces host and port; otherwise the request's host keeps its
        // port unless `port_redirect` replaces it or the scheme changes away from a default port.
        let host = match (&self.host, self.port) {
            (Some(h), Some(p)) => format!("{}:{p}", strip_port(h)),
            (Some(h), None) => h.clone(),
            (None, Some(p)) => format!("{orig_host}:{p}"),
            (None, None) => match orig_port {
                Some(80) if self.scheme.is_some() => orig_host,
                Some(p) => format!("{orig_host}:{p}"),
                None => orig_host,
            },
        };
        let host = match self.port {
            Some(p) if (scheme == "http" && p == 80) || (scheme == "https" && p == 443) => {
                strip_port(&host).to_string()
            }
            _ => host,
        };
        let mut new_path = match (&self.path, rewritten) {
            (Some(p), _) => p.clone(),
            (None, Some(r)) => r,
            (None, None) => path.to_string(),
        };
        if self.strip_query {
            if let Some(i) = new_path.find('?') {
                new_path.truncate(i);
            }
        } else if self.path.is_some() && !new_path.contains('?') {
            if let Some(i) = path.find('?') {
                new_path.push_str(&path[i..]);
            }
        }
        format!("{scheme}://{host}{new_path}")
    }
}

/// What a route does.
pub enum Action {
    /// Forward to a cluster.
    Route(RouteAction),
    /// Answer with a redirect.
    Redirect(Redirect),
    /// Answer directly.
    Direct {
        /// `status`.
        status: StatusCode,
        /// `body`.
        body: Option<Bytes>,
    },
}

fn compile_regex(r: &RegexMatcher, path: &str) -> Result<Regex, ConfigError> {
    Regex::new(&format!("^(?:{})$", r.regex)).map_err(|e| {
        ConfigError::new(
            format!("{path}.regex"),
            format!(
                "Invalid regex '{}': {}",
                r.regex,
                e.to_string().lines().last().unwrap_or("")
            ),
        )
    })
}

fn compile_unanchored_regex(r: &RegexMatcher, path: &str) -> Result<Regex, ConfigError> {
    Regex::new(&r.regex).map_err(|e| {
        ConfigError::new(
            format!("{path}.regex"),
            format!(
                "Invalid regex '{}': {}",
                r.regex,
                e.to_string().lines().last().unwrap_or("")
            ),
        )
    })
}

/// Converts RE2 substitution syntax (`\1`) into the regex crate's (`${1}`).
fn substitution(s: &str) -> String {
    let mut out = String::new();
    let mut chars = s.chars().peekable();
    while let Some(c) = chars.next() {
        match c {
            '\\' => match chars.peek() {
                Some(d) if d.is_ascii_digit() => {
                    out.push_str(&format!("${{{d}}}"));
                    chars.next();
                }
                Some('\\') => {
                    out.push('\\');
                    chars.next();
                }
                _ => out.push('\\'),
            },
            '$' => out.push_str("$$"),
            c => out.push(c),
        }
    }
    out
}

fn compile_rewrite(
    r: &courier_proto::envoy::r#type::matcher::v3::RegexMatchAndSubstitute,
    path: &str,
) -> Result<(Regex, String), ConfigError> {
    let Some(p) = &r.pattern else {
        return Err(ConfigError::new(
            format!("{path}.pattern"),
            "value is required",
        ));
    };
    Ok((
        compile_unanchored_regex(p, &format!("{path}.pattern"))?,
        substitution(&r.substitution),
    ))
}

/// Reads a `DataSource` (inline or file) at compile time.
pub fn data_source(ds: &DataSource, path: &str) -> Result<Bytes, ConfigError> {
    Ok(match &ds.specifier {
        Some(data_source::Specifier::InlineString(s)) => Bytes::from(s.clone()),
        Some(data_source::Specifier::InlineBytes(b)) => Bytes::from(b.clone()),
        Some(data_source::Specifier::Filename(f)) => {
            Bytes::from(std::fs::read(f).map_err(|e| {
                ConfigError::new(
                    format!("{path}.filename"),
                    format!("cannot read '{f}': {e}"),
                )
            })?)
        }
        Some(data_source::Specifier::EnvironmentVariable(v)) => {
            Bytes::from(std::env::var(v).map_err(|_| {
                ConfigError::new(
                    format!("{path}.environment_variable"),
                    format!("environment variable '{v}' is not set"),
                )
            })?)
        }
        None => Bytes::new(),
    })
}

fn header_name(name: &str, path: &str) -> Result<HeaderName, ConfigError> {
    HeaderName::from_bytes(name.to_ascii_lowercase().as_bytes())
        .map_err(|_| ConfigError::new(path, format!("invalid header name '{name}'")))
}

/// Compiles a `HeaderMatcher` at `path`.
pub fn compile_header_matcher(
    h: &pb::HeaderMatcher,
    path: &str,
) -> Result<HeaderMatcher, ConfigError> {
    use pb::header_matcher::HeaderMatchSpecifier as S;
    let name = MatchedName::compile(&h.name, &format!("{path}.name"))?;
    let test = match &h.header_match_specifier {
        Some(S::ExactMatch(s)) => HeaderTest::Str(StrMatch::Exact(s.clone(), false)),
        Some(S::SafeRegexMatch(r)) => HeaderTest::Str(StrMatch::Regex(compile_regex(
            r,
            &format!("{path}.safe_regex_match"),
        )?)),
        Some(S::RangeMatch(r)) => HeaderTest::Range(r.start, r.end),
        Some(S::PresentMatch(p)) => HeaderTest::Present(*p),
        Some(S::PrefixMatch(s)) => HeaderTest::Str(StrMatch::Prefix(s.clone(), false)),
        Some(S::SuffixMatch(s)) => HeaderTest::Str(StrMatch::Suffix(s.clone(), false)),
        Some(S::ContainsMatch(s)) => HeaderTest::Str(StrMatch::Contains(s.clone(), false)),
        Some(S::StringMatch(m)) => {
            HeaderTest::Str(StrMatch::compile(m, &format!("{path}.string_match"))?)
        }
        // No specifier: the header must be present.
        None => HeaderTest::Present(true),
    };
    Ok(HeaderMatcher {
        name,
        test,
        invert: h.invert_match,
        missing_as_empty: h.treat_missing_header_as_empty,
    })
}

fn status(code: u32, path: &str) -> Result<StatusCode, ConfigError> {
    if !(200..=599).contains(&code) {
        return Err(ConfigError::new(
            path,
            format!("value must be inside range [200, 600), got {code}"),
        ));
    }
    StatusCode::from_u16(code as u16).map_err(|_| ConfigError::new(path, "invalid status"))
}

fn duration_opt(
    d: Option<&courier_proto::google::protobuf::Duration>,
    path: &str,
) -> Result<Option<Duration>, ConfigError> {
    d.map(|d| config::duration(d, path)).transpose()
}

impl RouteTable {
    /// Every header mutation in the table, at every level.
    fn mutations(&self) -> impl Iterator<Item = &HeaderMutations> {
        let tables = [&self.request_headers, &self.response_headers];
        let vhosts = self.vhosts.iter().flat_map(|vh| {
            let routes = vh.routes.iter().flat_map(|r| {
                let weighted = match &r.action {
                    Action::Route(RouteAction {
                        cluster: ClusterSpec::Weighted { clusters, .. },
                        ..
                    }) => clusters.as_slice(),
                    _ => &[],
                };
                [&r.request_headers, &r.response_headers].into_iter().chain(
                    weighted
                        .iter()
                        .flat_map(|w| [&w.request_headers, &w.response_headers]),
                )
            });
            [&vh.request_headers, &vh.response_headers]
                .into_iter()
                .chain(routes)
        });
        tables.into_iter().chain(vhosts)
    }

    /// Compiles and validates a route configuration: its virtual hosts in order (each
    /// checked, its domains indexed, then compiled), then its own settings.
    pub fn compile(
        proto: &RouteConfiguration,
        store: &Store,
        filters: &dyn PerFilterCompiler,
    ) -> Result<RouteTable, ConfigError> {
        for (field, set) in [
            ("vhds", proto.vhds.is_some()),
            (
                "cluster_specifier_plugins",
                !proto.cluster_specifier_plugins.is_empty(),
            ),
            ("vhost_header", !proto.vhost_header.is_empty()),
            // Accepted without effect before: refused, so no one relies on them.
            (
                "most_specific_header_mutations_wins",
                proto.most_specific_header_mutations_wins,
            ),
            (
                "ignore_path_parameters_in_path_matching",
                proto.ignore_path_parameters_in_path_matching,
            ),
        ] {
            if set {
                return Err(ConfigError::unsupported(field));
            }
        }
        let table_shadows: Arc<[ShadowPolicy]> =
            shadow_policy::compile(&proto.request_mirror_policies, "request_mirror_policies")?
                .into();
        let defaults = TableDefaults {
            shadows: &table_shadows,
            store,
            filters,
        };
        let mut vhosts = Vec::new();
        let mut domains = Domains::default();
        for (vi, vh) in proto.virtual_hosts.iter().enumerate() {
            let vpath = format!("virtual_hosts[{vi}]");
            check_virtual_host(vh, &vpath)?;
            domains.add(vh, vi, &vpath, &proto.name)?;
            vhosts.push(compile_virtual_host(vh, &vpath, &defaults)?);
        }
        let Domains {
            exact,
            mut suffixes,
            mut prefixes,
            default_vhost,
        } = domains;
        suffixes.sort_by_key(|s| std::cmp::Reverse(s.0.len()));
        prefixes.sort_by_key(|s| std::cmp::Reverse(s.0.len()));
        let mut table = RouteTable {
            name: proto.name.clone(),
            proto: Arc::new(proto.clone()),
            vhosts,
            exact,
            suffixes,
            prefixes,
            default_vhost,
            ignore_port: proto.ignore_port_in_host_matching,
            reads_request_headers: false,
            filters: FilterConfigs::compile(
                &proto.typed_per_filter_config,
                None,
                "",
                store,
                filters,
            )?,
            internal_only_headers: proto
                .internal_only_headers
                .iter()
                .enumerate()
                .map(|(i, h)| header_name(h, &format!("internal_only_headers[{i}]")))
                .collect::<Result<_, _>>()?,
            request_headers: HeaderMutations::compile(
                &proto.request_headers_to_add,
                &proto.request_headers_to_remove,
                "request_headers_to_add",
                "request_headers_to_remove",
            )?,
            response_headers: HeaderMutations::compile(
                &proto.response_headers_to_add,
                &proto.response_headers_to_remove,
                "response_headers_to_add",
                "response_headers_to_remove",
            )?,
        };
        let reads = table.mutations().any(|m| m.reads_request_headers());
        table.reads_request_headers = reads;
        Ok(table)
    }

    /// The virtual host for `host` (Envoy's search order: exact, longest `*.suffix`,
    /// longest `prefix.*`, then `*`).
    pub fn find_vhost(&self, host: &str) -> Option<&VirtualHost> {
        let lower;
        let host = if host.bytes().any(|b| b.is_ascii_uppercase()) {
            lower = host.to_ascii_lowercase();
            lower.as_str()
        } else {
            host
        };
        if let Some(v) = self.find_vhost_exact(host) {
            return Some(v);
        }
        if self.ignore_port {
            let stripped = strip_port(host);
            if stripped.len() != host.len() {
                if let Some(v) = self.find_vhost_exact(stripped) {
                    return Some(v);
                }
            }
        }
        self.default_vhost.map(|i| &self.vhosts[i])
    }

    fn find_vhost_exact(&self, host: &str) -> Option<&VirtualHost> {
        if let Some(&i) = self.exact.get(host) {
            return Some(&self.vhosts[i]);
        }
        for (s, i) in &self.suffixes {
            if host.len() > s.len() && host.ends_with(s.as_str()) {
                return Some(&self.vhosts[*i]);
            }
        }
        for (p, i) in &self.prefixes {
            if host.len() > p.len() && host.starts_with(p.as_str()) {
                return Some(&self.vhosts[*i]);
            }
        }
        None
    }

    /// The first route of the matching virtual host that matches; `random` is the
    /// request's random value (Envoy's stream id), which `runtime_fraction`s sample.
    pub fn route(
        &self,
        host: &str,
        path: &str,
        headers: &HeaderMap,
        pseudo: &Pseudo<'_>,
        random: u64,
    ) -> Option<(&VirtualHost, &Route)> {
        let vh = self.find_vhost(host)?;
        let r = vh.find_route(path, headers, pseudo, random)?;
        Some((vh, r))
    }

    /// The first cluster a route names that `known` does not, when the table is validated:
    /// `validate_clusters`, by default on for a listener's own (`inline`) route
    /// configuration and off for RDS, as Envoy. Envoy refuses such a configuration.
    pub fn unknown_cluster(
        &self,
        inline: bool,
        known: &dyn Fn(&str) -> bool,
    ) -> Option<ConfigError> {
        if !self
            .proto
            .validate_clusters
            .as_ref()
            .map_or(inline, |v| v.value)
        {
            return None;
        }
        for (vi, vh) in self.vhosts.iter().enumerate() {
            for (ri, r) in vh.routes.iter().enumerate() {
                let Action::Route(a) = &r.action else {
                    continue;
                };
                let (kind, names): (&str, Vec<&str>) = match &a.cluster {
                    ClusterSpec::Single(c) => ("cluster", vec![c.as_str()]),
                    ClusterSpec::Weighted { clusters, .. } => (
                        "weighted cluster",
                        clusters.iter().map(|c| c.name.as_str()).collect(),
                    ),
                    ClusterSpec::Header(_) => continue,
                };
                if let Some(missing) = names.into_iter().find(|n| !known(n)) {
                    return Some(ConfigError::new(
                        format!("virtual_hosts[{vi}].routes[{ri}].route"),
                        format!("route: unknown {kind} '{missing}'"),
                    ));
                }
            }
        }
        None
    }

    /// Every cluster this table may route to by name (not `cluster_header`).
    pub fn cluster_names(&self) -> Vec<String> {
        let mut out = Vec::new();
        for vh in &self.vhosts {
            for r in &vh.routes {
                if let Action::Route(a) = &r.action {
                    match &a.cluster {
                        ClusterSpec::Single(c) => out.push(c.clone()),
                        ClusterSpec::Weighted { clusters, .. } => {
                            out.extend(clusters.iter().map(|c| c.name.clone()))
                        }
                        ClusterSpec::Header(_) => {}
                    }
                }
            }
        }
        out.sort();
        out.dedup();
        out
    }

    /// The virtual hosts.
    pub fn virtual_hosts(&self) -> &[VirtualHost] {
        &self.vhosts
    }
}

/// `host:port` → `host` (IPv6 literals keep their brackets).
pub fn strip_port(host: &str) -> &str {
    if host.starts_with('[') {
        return match host.find(']') {
            Some(i) => &host[..=i],
            None => host,
        };
    }
    match host.rfind(':') {
        Some(i) if host[i + 1..].bytes().all(|b| b.is_ascii_digit()) => &host[..i],
        _ => host,
    }
}

impl VirtualHost {
    /// The stats of the virtual cluster a request belongs to: the first whose header
    /// matchers all match, else `other`; `None` without virtual clusters.
    pub fn virtual_cluster(
        &self,
        headers: &HeaderMap,
        pseudo: &Pseudo<'_>,
    ) -> Option<&RequestStats> {
        let other = self.other_vcluster.as_deref()?;
        Some(
            self.virtual_clusters
                .iter()
                .find(|vc| vc.headers.iter().all(|h| h.matches(headers, pseudo)))
                .map_or(other, |vc| &vc.stats),
        )
    }

    /// The name of the virtual cluster a request belongs to (the first whose header
    /// matchers all match); `None` for the catch-all, as Envoy names none for it.
    pub fn virtual_cluster_name(
        &self,
        headers: &HeaderMap,
        pseudo: &Pseudo<'_>,
    ) -> Option<&Arc<str>> {
        self.virtual_clusters
            .iter()
            .find(|vc| vc.headers.iter().all(|h| h.matches(headers, pseudo)))
            .map(|vc| &vc.name)
    }

    /// The first matching route (`random`: the request's random value, see
    /// [`RouteTable::route`]).
    pub fn find_route(
        &self,
        path: &str,
        headers: &HeaderMap,
        pseudo: &Pseudo<'_>,
        random: u64,
    ) -> Option<&Route> {
        self.routes
            .iter()
            .find(|r| r.matcher.matches(path, headers, pseudo, random))
    }
}

impl Route {
    /// The length of the path prefix this route matched (for `prefix_rewrite`).
    pub fn matched_prefix_len(&self) -> Option<usize> {
        match &self.matcher.path {
            PathMatch::Prefix(p) | PathMatch::SeparatedPrefix(p) | PathMatch::Path(p) => {
                Some(p.len())
            }
            PathMatch::Regex(_) => None,
        }
    }

    /// Whether the route's path match is a regex (prefix_rewrite then replaces the whole
    /// path).
    pub fn is_regex(&self) -> bool {
        matches!(self.matcher.path, PathMatch::Regex(_))
    }
}

fn path_only(path: &str) -> &str {
    let end = path.find(['?', '#']).unwrap_or(path.len());
    &path[..end]
}

impl RouteMatcher {
    fn matches(
        &self,
        full_path: &str,
        headers: &HeaderMap,
        pseudo: &Pseudo<'_>,
        random: u64,
    ) -> bool {
        if self.runtime.as_ref().is_some_and(|r| !r.contains(random)) {
            return false;
        }
        let path = path_only(full_path);
        let ok = match &self.path {
            PathMatch::Prefix(p) => {
                if self.case_sensitive {
                    full_path.starts_with(p.as_str())
                } else {
                    full_path.len() >= p.len()
                        && full_path.is_char_boundary(p.len())
                        && full_path[..p.len()].eq_ignore_ascii_case(p)
                }
            }
            PathMatch::Path(p) => {
                if self.case_sensitive {
                    path == p
                } else {
                    path.eq_ignore_ascii_case(p)
                }
            }
            PathMatch::Regex(r) => r.is_match(path),
            PathMatch::SeparatedPrefix(p) => {
                let head_ok = path.len() >= p.len()
                    && path.is_char_boundary(p.len())
                    && if self.case_sensitive {
                        path.starts_with(p.as_str())
                    } else {
                        path[..p.len()].eq_ignore_ascii_case(p)
                    };
                head_ok && (path.len() == p.len() || path.as_bytes()[p.len()] == b'/')
            }
        };
        if !ok {
            return false;
        }
        if self.grpc
            && !headers
                .get(http::header::CONTENT_TYPE)
                .and_then(|v| v.to_str().ok())
                .is_some_and(|v| v.starts_with("application/grpc"))
        {
            return false;
        }
        if !self.headers.iter().all(|h| h.matches(headers, pseudo)) {
            return false;
        }
        if !self.query.is_empty() {
            let query = full_path.split_once('?').map_or("", |(_, q)| q);
            let query = query.split('#').next().unwrap_or("");
            for qm in &self.query {
                let value = query.split('&').find_map(|kv| {
                    let (k, v) = kv.split_once('=').unwrap_or((kv, ""));
                    (k == qm.name).then_some(v)
                });
                let Some(v) = value else {
                    return false;
                };
                if let Some(t) = &qm.test {
                    if !t.matches(v) {
                        return false;
                    }
                }
            }
        }
        true
    }
}

/// The route table's domain index, as its virtual hosts are added: exact domains,
/// `*.suffix` and `prefix.*` wildcards (unsorted until the table is built) and `*`.
#[derive(Default)]
struct Domains {
    exact: HashMap<String, usize>,
    suffixes: Vec<(String, usize)>,
    prefixes: Vec<(String, usize)>,
    default_vhost: Option<usize>,
}

impl Domains {
    /// Indexes virtual host `vi`'s domains (lower-cased): a domain may appear once in the
    /// whole table, and a wildcard only as its prefix or suffix, as Envoy requires.
    /// `route` is the route configuration's name, for Envoy's duplicate message.
    fn add(
        &mut self,
        vh: &pb::VirtualHost,
        vi: usize,
        vpath: &str,
        route: &str,
    ) -> Result<(), ConfigError> {
        for (di, d) in vh.domains.iter().enumerate() {
            let dpath = format!("{vpath}.domains[{di}]");
            let d = d.to_ascii_lowercase();
            let dup = |what: &str| {
                ConfigError::new(
                    dpath.clone(),
                    format!(
                        "Only unique values for domains are permitted. Duplicate entry of domain {what} in route {route}"
                    ),
                )
            };
            if d == "*" {
                if self.default_vhost.is_some() {
                    return Err(ConfigError::new(
                        dpath,
                        format!("Only a single wildcard domain is permitted in route {route}"),
                    ));
                }
                self.default_vhost = Some(vi);
            } else if let Some(s) = d.strip_prefix('*') {
                if s.contains('*') {
                    return Err(ConfigError::new(
                        dpath,
                        format!("invalid domain '{d}': wildcard must be a prefix or suffix"),
                    ));
                }
                if self.suffixes.iter().any(|(x, _)| x == s) {
                    return Err(dup(&d));
                }
                self.suffixes.push((s.to_string(), vi));
            } else if let Some(p) = d.strip_suffix('*') {
                if p.contains('*') {
                    return Err(ConfigError::new(
                        dpath,
                        format!("invalid domain '{d}': wildcard must be a prefix or suffix"),
                    ));
                }
                if self.prefixes.iter().any(|(x, _)| x == p) {
                    return Err(dup(&d));
                }
                self.prefixes.push((p.to_string(), vi));
            } else if d.contains('*') {
                return Err(ConfigError::new(
                    dpath,
                    format!("invalid domain '{d}': wildcard must be a prefix or suffix"),
                ));
            } else if self.exact.insert(d.clone(), vi).is_some() {
                return Err(dup(&d));
            }
        }
        Ok(())
    }
}

/// A virtual host's required fields (`name`, `domains`) and the ones Courier refuses by
/// name, checked before its domains are indexed.
fn check_virtual_host(vh: &pb::VirtualHost, vpath: &str) -> Result<(), ConfigError> {
    if vh.name.is_empty() {
        return Err(ConfigError::new(
            format!("{vpath}.name"),
            "value length must be at least 1 characters",
        ));
    }
    if vh.domains.is_empty() {
        return Err(ConfigError::new(
            format!("{vpath}.domains"),
            "value must contain at least 1 item(s)",
        ));
    }
    for (field, set) in [
        ("matcher", vh.matcher.is_some()),
        ("hedge_policy", vh.hedge_policy.is_some()),
    ] {
        if set {
            return Err(ConfigError::unsupported(format!("{vpath}.{field}")));
        }
    }
    Ok(())
}

/// What a virtual host takes from its route configuration.
struct TableDefaults<'a> {
    /// The route configuration's `request_mirror_policies`, for virtual hosts without
    /// their own.
    shadows: &'a Arc<[ShadowPolicy]>,
    /// Where stats and per-filter settings keep their counters.
    store: &'a Store,
    /// Compiles per-filter settings.
    filters: &'a dyn PerFilterCompiler,
}

/// A virtual host: its retry policy, buffer limit and mirrors (which its routes inherit),
/// its routes in order, its virtual clusters, header mutations, per-filter settings and
/// `require_tls`.
fn compile_virtual_host(
    vh: &pb::VirtualHost,
    vpath: &str,
    table: &TableDefaults<'_>,
) -> Result<VirtualHost, ConfigError> {
    let retry_policy = vh
        .retry_policy
        .as_ref()
        .map(|p| RetryPolicy::compile(p, &format!("{vpath}.retry_policy")).map(Arc::new))
        .transpose()?;
    let mut routes = Vec::new();
    let vh_buffer_limit = buffer_limit(
        vh.request_body_buffer_limit.map(|v| v.value),
        vh.per_request_buffer_limit_bytes.map(|v| v.value),
    );
    let vh_shadows: Arc<[ShadowPolicy]> = if vh.request_mirror_policies.is_empty() {
        table.shadows.clone()
    } else {
        shadow_policy::compile(
            &vh.request_mirror_policies,
            &format!("{vpath}.request_mirror_policies"),
        )?
        .into()
    };
    let inherited = Inherited {
        vhost: &vh.name,
        store: table.store,
        filters: table.filters,
        retry: retry_policy.as_ref(),
        shadows: &vh_shadows,
    };
    for (ri, r) in vh.routes.iter().enumerate() {
        let mut route = compile_route(r, &format!("{vpath}.routes[{ri}]"), &inherited)?;
        route.buffer_limit = route.buffer_limit.or(vh_buffer_limit);
        routes.push(route);
    }
    let virtual_clusters = compile_virtual_clusters(vh, vpath, table.store)?;
    let other_vcluster = (!virtual_clusters.is_empty()).then(|| {
        Box::new(RequestStats::virtual_host(
            table.store,
            format!("vhost.{}.vcluster.other.", vh.name),
        ))
    });
    Ok(VirtualHost {
        virtual_clusters,
        other_vcluster,
        metadata: metadata::filter_metadata(vh.metadata.as_ref()),
        name: vh.name.clone(),
        routes,
        request_headers: HeaderMutations::compile(
            &vh.request_headers_to_add,
            &vh.request_headers_to_remove,
            &format!("{vpath}.request_headers_to_add"),
            &format!("{vpath}.request_headers_to_remove"),
        )?,
        response_headers: HeaderMutations::compile(
            &vh.response_headers_to_add,
            &vh.response_headers_to_remove,
            &format!("{vpath}.response_headers_to_add"),
            &format!("{vpath}.response_headers_to_remove"),
        )?,
        retry_policy,
        attempt_count_upstream: vh.include_request_attempt_count,
        attempt_count_response: vh.include_attempt_count_in_response,
        timeout_retry_header: vh.include_is_timeout_retry_header,
        filters: FilterConfigs::compile(
            &vh.typed_per_filter_config,
            vh.cors.as_ref().map(|c| (c, format!("{vpath}.cors"))),
            vpath,
            table.store,
            table.filters,
        )?,
        require_tls: tls_requirement(vh, vpath)?,
        rate_limits: RateLimits::compile(
            &vh.rate_limits,
            &format!("{vpath}.rate_limits"),
            Level::Route,
        )?,
    })
}

/// A virtual host's `virtual_clusters`, in order, each with its stats
/// (`vhost.<virtual host>.vcluster.<name>.`).
fn compile_virtual_clusters(
    vh: &pb::VirtualHost,
    vpath: &str,
    store: &Store,
) -> Result<Vec<VirtualCluster>, ConfigError> {
    let mut virtual_clusters = Vec::with_capacity(vh.virtual_clusters.len());
    for (ci, vc) in vh.virtual_clusters.iter().enumerate() {
        let cpath = format!("{vpath}.virtual_clusters[{ci}]");
        if vc.name.is_empty() {
            return Err(ConfigError::new(
                format!("{cpath}.name"),
                "value length must be at least 1 characters",
            ));
        }
        if vc.headers.is_empty() {
            // Envoy's own check.
            return Err(ConfigError::new(
                format!("{cpath}.headers"),
                "virtual clusters must define 'headers'",
            ));
        }
        virtual_clusters.push(VirtualCluster {
            name: vc.name.as_str().into(),
            headers: vc
                .headers
                .iter()
                .enumerate()
                .map(|(hi, h)| compile_header_matcher(h, &format!("{cpath}.headers[{hi}]")))
                .collect::<Result<_, _>>()?,
            stats: RequestStats::virtual_host(
                store,
                format!("vhost.{}.vcluster.{}.", vh.name, vc.name),
            ),
        });
    }
    Ok(virtual_clusters)
}

/// A virtual host's `require_tls`.
fn tls_requirement(vh: &pb::VirtualHost, vpath: &str) -> Result<TlsRequirement, ConfigError> {
    match pb::virtual_host::TlsRequirementType::try_from(vh.require_tls) {
        Ok(pb::virtual_host::TlsRequirementType::None) => Ok(TlsRequirement::None),
        Ok(pb::virtual_host::TlsRequirementType::ExternalOnly) => Ok(TlsRequirement::ExternalOnly),
        Ok(pb::virtual_host::TlsRequirementType::All) => Ok(TlsRequirement::All),
        Err(_) => Err(ConfigError::new(
            format!("{vpath}.require_tls"),
            format!(
                "value must be one of the defined enum values, not {}",
                vh.require_tls
            ),
        )),
    }
}

/// What a route takes from its virtual host (and route configuration) unless it sets its
/// own.
struct Inherited<'a> {
    /// The virtual host's name, in route stats' names.
    vhost: &'a str,
    retry: Option<&'a Arc<RetryPolicy>>,
    shadows: &'a Arc<[ShadowPolicy]>,
    /// Where per-route filter settings keep their counters.
    store: &'a Store,
    /// Compiles per-route filter settings.
    filters: &'a dyn PerFilterCompiler,
}

/// A route: its match, its action, its header mutations, buffer limit, per-filter
/// settings (with the action's deprecated `cors`) and stats.
fn compile_route(
    r: &pb::Route,
    path: &str,
    inherited: &Inherited<'_>,
) -> Result<Route, ConfigError> {
    let Some(m) = &r.r#match else {
        return Err(ConfigError::new(
            format!("{path}.match"),
            "value is required",
        ));
    };
    let matcher = compile_route_match(m, &format!("{path}.match"))?;
    let action = compile_action(r, path, inherited)?;
    if r.tracing.is_some() {
        return Err(ConfigError::unsupported(format!("{path}.tracing")));
    }
    Ok(Route {
        metadata: metadata::filter_metadata(r.metadata.as_ref()),
        decorator: r
            .decorator
            .as_ref()
            .map(|d| Box::new((d.operation.clone(), d.propagate.is_none_or(|p| p.value)))),
        name: r.name.clone(),
        matcher,
        action,
        request_headers: HeaderMutations::compile(
            &r.request_headers_to_add,
            &r.request_headers_to_remove,
            &format!("{path}.request_headers_to_add"),
            &format!("{path}.request_headers_to_remove"),
        )?,
        response_headers: HeaderMutations::compile(
            &r.response_headers_to_add,
            &r.response_headers_to_remove,
            &format!("{path}.response_headers_to_add"),
            &format!("{path}.response_headers_to_remove"),
        )?,
        buffer_limit: buffer_limit(
            r.request_body_buffer_limit.map(|v| v.value),
            r.per_request_buffer_limit_bytes.map(|v| v.value),
        ),
        filters: FilterConfigs::compile(
            &r.typed_per_filter_config,
            match &r.action {
                Some(pb::route::Action::Route(a)) => {
                    a.cors.as_ref().map(|c| (c, format!("{path}.route.cors")))
                }
                _ => None,
            },
            path,
            inherited.store,
            inherited.filters,
        )?,
        stats: (!r.stat_prefix.is_empty()).then(|| {
            Box::new(RequestStats::virtual_host(
                inherited.store,
                format!("vhost.{}.route.{}.", inherited.vhost, r.stat_prefix),
            ))
        }),
    })
}

/// A `RouteMatch` compiled on its own, for a filter that picks by one (jwt_authn's
/// `rules`): its path, `case_sensitive`, headers and query parameters, as a route's.
pub struct RequestMatcher(RouteMatcher);

impl RequestMatcher {
    /// Compiles `m` at `mpath`; `grpc` and `runtime_fraction`, which such filters' matchers
    /// do not read in Envoy, are refused.
    pub fn compile(m: &pb::RouteMatch, mpath: &str) -> Result<RequestMatcher, ConfigError> {
        if m.grpc.is_some() {
            return Err(ConfigError::unsupported(format!("{mpath}.grpc")));
        }
        if m.runtime_fraction.is_some() {
            return Err(ConfigError::unsupported(format!(
                "{mpath}.runtime_fraction"
            )));
        }
        compile_route_match(m, mpath).map(RequestMatcher)
    }

    /// Whether a request (`full_path` with its query) matches.
    pub fn matches(&self, full_path: &str, headers: &HeaderMap, pseudo: &Pseudo<'_>) -> bool {
        self.0.matches(full_path, headers, pseudo, 0)
    }
}

/// A route's `match` (at `mpath`): its path, header and query parameter matchers, and
/// `grpc`; the matchers Courier does not implement are refused by name.
fn compile_route_match(m: &pb::RouteMatch, mpath: &str) -> Result<RouteMatcher, ConfigError> {
    for (field, set) in [
        ("cookies", !m.cookies.is_empty()),
        ("tls_context", m.tls_context.is_some()),
        ("dynamic_metadata", !m.dynamic_metadata.is_empty()),
        ("filter_state", !m.filter_state.is_empty()),
    ] {
        if set {
            return Err(ConfigError::unsupported(format!("{mpath}.{field}")));
        }
    }
    let case_sensitive = m.case_sensitive.as_ref().is_none_or(|b| b.value);
    let pathm = compile_path_match(m, mpath)?;
    let headers = m
        .headers
        .iter()
        .enumerate()
        .map(|(i, h)| compile_header_matcher(h, &format!("{mpath}.headers[{i}]")))
        .collect::<Result<Vec<_>, _>>()?;
    let query = m
        .query_parameters
        .iter()
        .enumerate()
        .map(|(i, q)| compile_query_matcher(q, &format!("{mpath}.query_parameters[{i}]")))
        .collect::<Result<Vec<_>, _>>()?;
    Ok(RouteMatcher {
        path: pathm,
        case_sensitive,
        headers,
        query,
        grpc: m.grpc.is_some(),
        runtime: m
            .runtime_fraction
            .as_ref()
            .map(|f| RuntimeFraction::compile(f, &format!("{mpath}.runtime_fraction")))
            .transpose()?,
    })
}

/// A route match's path specifier: `prefix`, `path`, `safe_regex` or
/// `path_separated_prefix` (`connect_matcher` and `path_match_policy` are refused).
fn compile_path_match(m: &pb::RouteMatch, mpath: &str) -> Result<PathMatch, ConfigError> {
    use pb::route_match::PathSpecifier as P;
    match &m.path_specifier {
        Some(P::Prefix(p)) => Ok(PathMatch::Prefix(p.clone())),
        Some(P::Path(p)) => Ok(PathMatch::Path(p.clone())),
        Some(P::SafeRegex(re)) => Ok(PathMatch::Regex(compile_regex(
            re,
            &format!("{mpath}.safe_regex"),
        )?)),
        Some(P::PathSeparatedPrefix(p)) => {
            if p.contains(['?', '#']) || (p.len() > 1 && p.ends_with('/')) {
                return Err(ConfigError::new(
                    format!("{mpath}.path_separated_prefix"),
                    "value must not contain '?' or '#' or end with '/'",
                ));
            }
            Ok(PathMatch::SeparatedPrefix(p.clone()))
        }
        Some(P::ConnectMatcher(_)) => {
            Err(ConfigError::unsupported(format!("{mpath}.connect_matcher")))
        }
        Some(P::PathMatchPolicy(_)) => Err(ConfigError::unsupported(format!(
            "{mpath}.path_match_policy"
        ))),
        None => Err(ConfigError::new(
            mpath,
            "path_specifier is required (prefix, path, safe_regex or path_separated_prefix)",
        )),
    }
}

/// A query parameter matcher (at `qp`): a name, and a string match unless it only asks
/// for the parameter to be present.
fn compile_query_matcher(
    q: &pb::QueryParameterMatcher,
    qp: &str,
) -> Result<QueryMatcher, ConfigError> {
    use pb::query_parameter_matcher::QueryParameterMatchSpecifier as Q;
    if q.name.is_empty() {
        return Err(ConfigError::new(
            format!("{qp}.name"),
            "value length must be at least 1 characters",
        ));
    }
    let test = match &q.query_parameter_match_specifier {
        Some(Q::StringMatch(s)) => Some(StrMatch::compile(s, &format!("{qp}.string_match"))?),
        Some(Q::PresentMatch(_)) | None => None,
    };
    Ok(QueryMatcher {
        name: q.name.clone(),
        test,
    })
}

/// A route's action: `route`, `redirect` or `direct_response` (any other is refused).
fn compile_action(
    r: &pb::Route,
    path: &str,
    inherited: &Inherited<'_>,
) -> Result<Action, ConfigError> {
    match &r.action {
        Some(pb::route::Action::Route(a)) => Ok(Action::Route(compile_route_action(
            a,
            &format!("{path}.route"),
            inherited,
        )?)),
        Some(pb::route::Action::Redirect(rd)) => Ok(Action::Redirect(compile_redirect(
            rd,
            &format!("{path}.redirect"),
        )?)),
        Some(pb::route::Action::DirectResponse(d)) => {
            compile_direct_response(d, &format!("{path}.direct_response"))
        }
        Some(_) => Err(ConfigError::unsupported(format!("{path}.action"))),
        None => Err(ConfigError::new(
            format!("{path}.action"),
            "one of route, redirect or direct_response is required",
        )),
    }
}

/// A `direct_response` (at `dpath`): its status, and its body (at most 4096 bytes, as
/// Envoy's default `max_direct_response_body_size_bytes`; `body_format` is refused).
fn compile_direct_response(
    d: &pb::DirectResponseAction,
    dpath: &str,
) -> Result<Action, ConfigError> {
    let body = d
        .body
        .as_ref()
        .map(|b| data_source(b, &format!("{dpath}.body")))
        .transpose()?;
    if body.as_ref().is_some_and(|b| b.len() > 4096) {
        return Err(ConfigError::new(
            format!("{dpath}.body"),
            "response body size is over the max_direct_response_body_size_bytes limit of 4096",
        ));
    }
    if d.body_format.is_some() {
        return Err(ConfigError::unsupported(format!("{dpath}.body_format")));
    }
    Ok(Action::Direct {
        status: status(d.status, &format!("{dpath}.status"))?,
        body,
    })
}

/// A route's or virtual host's buffer limit: `request_body_buffer_limit`, else the older
/// `per_request_buffer_limit_bytes`.
fn buffer_limit(request_body: Option<u64>, per_request: Option<u32>) -> Option<usize> {
    request_body
        .or(per_request.map(u64::from))
        .map(|v| usize::try_from(v).unwrap_or(usize::MAX))
}

#[allow(deprecated)] // still what older configs say
fn internal_redirect_action(a: &pb::RouteAction) -> i32 {
    a.internal_redirect_action
}

/// A route's `route` action: the cluster(s), host rewrite, timeouts, retry policy (else
/// the virtual host's), upgrades, path rewrites, hash policy and mirrors (else the
/// virtual host's). The fields Courier does not implement are refused by name.
fn compile_route_action(
    a: &pb::RouteAction,
    path: &str,
    inherited: &Inherited<'_>,
) -> Result<RouteAction, ConfigError> {
    check_route_action(a, path)?;
    let cluster = compile_cluster_spec(a, path)?;
    let host_rewrite = compile_host_rewrite(a, path)?;
    let timeout = duration_opt(a.timeout.as_ref(), &format!("{path}.timeout"))?
        .unwrap_or(Duration::from_secs(15));
    let idle_timeout = duration_opt(a.idle_timeout.as_ref(), &format!("{path}.idle_timeout"))?;
    let stream_duration = a
        .max_stream_duration
        .as_ref()
        .map(|m| compile_stream_duration(m, &format!("{path}.max_stream_duration")))
        .transpose()?;
    let max_grpc_timeout = compile_max_grpc_timeout(a, path)?;
    let retry_policy = match &a.retry_policy {
        Some(p) => Some(Arc::new(RetryPolicy::compile(
            p,
            &format!("{path}.retry_policy"),
        )?)),
        None => inherited.retry.cloned(),
    };
    let upgrades = a
        .upgrade_configs
        .iter()
        .map(|u| {
            (
                u.upgrade_type.to_ascii_lowercase(),
                u.enabled.as_ref().is_none_or(|b| b.value),
            )
        })
        .collect();
    let cluster_not_found = match a.cluster_not_found_response_code {
        1 => StatusCode::NOT_FOUND,
        2 => StatusCode::INTERNAL_SERVER_ERROR,
        _ => StatusCode::SERVICE_UNAVAILABLE,
    };
    if !a.prefix_rewrite.is_empty() && a.regex_rewrite.is_some() {
        return Err(ConfigError::new(
            path,
            "Cannot specify both prefix_rewrite and regex_rewrite",
        ));
    }
    Ok(RouteAction {
        cluster,
        prefix_rewrite: (!a.prefix_rewrite.is_empty()).then(|| a.prefix_rewrite.clone()),
        regex_rewrite: a
            .regex_rewrite
            .as_ref()
            .map(|r| compile_rewrite(r, &format!("{path}.regex_rewrite")))
            .transpose()?,
        hash_policy: HashPolicies::compile(&a.hash_policy, &format!("{path}.hash_policy"))?,
        host_rewrite,
        append_x_forwarded_host: a.append_x_forwarded_host,
        timeout: (!timeout.is_zero()).then_some(timeout),
        stream_duration,
        max_grpc_timeout,
        idle_timeout,
        retry_policy,
        upgrades,
        cluster_not_found,
        rate_limits: RateLimits::compile(
            &a.rate_limits,
            &format!("{path}.rate_limits"),
            Level::Route,
        )?,
        include_vh_rate_limits: a.include_vh_rate_limits.as_ref().is_some_and(|b| b.value),
        shadows: if a.request_mirror_policies.is_empty() {
            inherited.shadows.clone()
        } else {
            shadow_policy::compile(
                &a.request_mirror_policies,
                &format!("{path}.request_mirror_policies"),
            )?
            .into()
        },
    })
}

/// The route action fields Courier does not implement, refused by name.
fn check_route_action(a: &pb::RouteAction, path: &str) -> Result<(), ConfigError> {
    for (field, set) in [
        ("metadata_match", a.metadata_match.is_some()),
        ("path_rewrite_policy", a.path_rewrite_policy.is_some()),
        ("hedge_policy", a.hedge_policy.is_some()),
        // Envoy's HIGH-priority pools and circuit breakers (Courier has the default ones).
        ("priority", a.priority != 0),
        ("path_rewrite", !a.path_rewrite.is_empty()),
        (
            "internal_redirect_policy",
            a.internal_redirect_policy.is_some(),
        ),
        // The deprecated form: HANDLE_INTERNAL_REDIRECT (PASS_THROUGH is what Courier does).
        ("internal_redirect_action", internal_redirect_action(a) != 0),
        (
            "retry_policy_typed_config",
            a.retry_policy_typed_config.is_some(),
        ),
        // A flow-control stall bound Courier does not enforce.
        ("flush_timeout", a.flush_timeout.is_some()),
    ] {
        if set {
            return Err(ConfigError::unsupported(format!("{path}.{field}")));
        }
    }
    Ok(())
}

/// The action's cluster: `cluster`, `cluster_header` or `weighted_clusters`
/// (`cluster_specifier_plugin` is refused).
fn compile_cluster_spec(a: &pb::RouteAction, path: &str) -> Result<ClusterSpec, ConfigError> {
    use pb::route_action::ClusterSpecifier as C;
    match &a.cluster_specifier {
        Some(C::Cluster(c)) if !c.is_empty() => Ok(ClusterSpec::Single(c.clone())),
        Some(C::Cluster(_)) => Err(ConfigError::new(
            format!("{path}.cluster"),
            "value length must be at least 1 characters",
        )),
        Some(C::ClusterHeader(h)) => Ok(ClusterSpec::Header(header_name(
            h,
            &format!("{path}.cluster_header"),
        )?)),
        Some(C::WeightedClusters(w)) => {
            compile_weighted_clusters(w, &format!("{path}.weighted_clusters"))
        }
        Some(_) => Err(ConfigError::unsupported(format!(
            "{path}.cluster_specifier_plugin"
        ))),
        None => Err(ConfigError::new(
            path,
            "one of cluster, cluster_header or weighted_clusters is required",
        )),
    }
}

/// `weighted_clusters` (at `wpath`): named clusters with their weights and header
/// mutations; the weights must add up to `total_weight` if it is given, and to more
/// than 0.
fn compile_weighted_clusters(
    w: &pb::WeightedCluster,
    wpath: &str,
) -> Result<ClusterSpec, ConfigError> {
    if w.random_value_specifier.is_some() {
        return Err(ConfigError::unsupported(format!("{wpath}.header_name")));
    }
    if w.clusters.is_empty() {
        return Err(ConfigError::new(
            format!("{wpath}.clusters"),
            "value must contain at least 1 item(s)",
        ));
    }
    let mut clusters = Vec::new();
    for (i, c) in w.clusters.iter().enumerate() {
        let cpath = format!("{wpath}.clusters[{i}]");
        if c.name.is_empty() {
            return Err(ConfigError::new(
                format!("{cpath}.name"),
                "cluster name is required (cluster_header is not supported)",
            ));
        }
        if c.host_rewrite_specifier.is_some() {
            return Err(ConfigError::unsupported(format!(
                "{cpath}.host_rewrite_literal"
            )));
        }
        clusters.push(WeightedCluster {
            name: c.name.clone(),
            weight: c.weight.as_ref().map_or(0, |v| v.value),
            request_headers: HeaderMutations::compile(
                &c.request_headers_to_add,
                &c.request_headers_to_remove,
                &format!("{cpath}.request_headers_to_add"),
                &format!("{cpath}.request_headers_to_remove"),
            )?,
            response_headers: HeaderMutations::compile(
                &c.response_headers_to_add,
                &c.response_headers_to_remove,
                &format!("{cpath}.response_headers_to_add"),
                &format!("{cpath}.response_headers_to_remove"),
            )?,
        });
    }
    let sum: u64 = clusters.iter().map(|c| c.weight as u64).sum();
    #[allow(deprecated)]
    if let Some(t) = &w.total_weight {
        if t.value as u64 != sum {
            return Err(ConfigError::new(
                format!("{wpath}.total_weight"),
                format!(
                    "Sum of weights in the weighted_cluster must equal total_weight ({} != {})",
                    sum, t.value
                ),
            ));
        }
    }
    if sum == 0 {
        return Err(ConfigError::new(
            wpath,
            "Sum of weights in the weighted_cluster must be greater than 0",
        ));
    }
    Ok(ClusterSpec::Weighted {
        clusters,
        total: sum,
    })
}

/// `host_rewrite_literal` or `auto_host_rewrite` (other host rewrites are refused).
fn compile_host_rewrite(a: &pb::RouteAction, path: &str) -> Result<HostRewrite, ConfigError> {
    use pb::route_action::HostRewriteSpecifier as H;
    match &a.host_rewrite_specifier {
        None => Ok(HostRewrite::None),
        Some(H::HostRewriteLiteral(h)) => Ok(HostRewrite::Literal(h.clone())),
        Some(H::AutoHostRewrite(b)) if b.value => Ok(HostRewrite::Auto),
        Some(H::AutoHostRewrite(_)) => Ok(HostRewrite::None),
        Some(_) => Err(ConfigError::unsupported(format!(
            "{path}.host_rewrite_specifier"
        ))),
    }
}

/// A route's `max_stream_duration` (at `mpath`); a zero maximum is no maximum.
fn compile_stream_duration(
    m: &pb::route_action::MaxStreamDuration,
    mpath: &str,
) -> Result<StreamDuration, ConfigError> {
    let d = |v, f: &str| duration_opt(v, &format!("{mpath}.{f}"));
    Ok(StreamDuration {
        max: d(m.max_stream_duration.as_ref(), "max_stream_duration")?
            .map(|d| (!d.is_zero()).then_some(d)),
        grpc_header_max: d(
            m.grpc_timeout_header_max.as_ref(),
            "grpc_timeout_header_max",
        )?
        .map(|d| (!d.is_zero()).then_some(d)),
        grpc_header_offset: d(
            m.grpc_timeout_header_offset.as_ref(),
            "grpc_timeout_header_offset",
        )?
        .unwrap_or_default(),
    })
}

/// The deprecated `max_grpc_timeout` (a zero one is no cap) with its
/// `grpc_timeout_offset`.
#[allow(deprecated)] // still what many configs say
fn compile_max_grpc_timeout(
    a: &pb::RouteAction,
    path: &str,
) -> Result<Option<(Option<Duration>, Duration)>, ConfigError> {
    match duration_opt(
        a.max_grpc_timeout.as_ref(),
        &format!("{path}.max_grpc_timeout"),
    )? {
        Some(max) => Ok(Some((
            (!max.is_zero()).then_some(max),
            duration_opt(
                a.grpc_timeout_offset.as_ref(),
                &format!("{path}.grpc_timeout_offset"),
            )?
            .unwrap_or_default(),
        ))),
        None => Ok(None),
    }
}

pub(crate) fn compile_redirect(
    r: &pb::RedirectAction,
    path: &str,
) -> Result<Redirect, ConfigError> {
    use pb::redirect_action::{PathRewriteSpecifier as P, SchemeRewriteSpecifier as S};
    let status = match r.response_code {
        0 => StatusCode::MOVED_PERMANENTLY,
        1 => StatusCode::FOUND,
        2 => StatusCode::SEE_OTHER,
        3 => StatusCode::TEMPORARY_REDIRECT,
        4 => StatusCode::PERMANENT_REDIRECT,
        c => {
            return Err(ConfigError::new(
                format!("{path}.response_code"),
                format!("unknown response code {c}"),
            ))
        }
    };
    let scheme = match &r.scheme_rewrite_specifier {
        Some(S::HttpsRedirect(true)) => Some("https".to_string()),
        Some(S::SchemeRedirect(s)) if !s.is_empty() => Some(s.to_ascii_lowercase()),
        _ => None,
    };
    let (path_redirect, prefix_rewrite, regex_rewrite) = match &r.path_rewrite_specifier {
        Some(P::PathRedirect(p)) => (Some(p.clone()), None, None),
        Some(P::PrefixRewrite(p)) => (None, Some(p.clone()), None),
        Some(P::RegexRewrite(rr)) => (
            None,
            None,
            Some(compile_rewrite(rr, &format!("{path}.regex_rewrite"))?),
        ),
        Some(_) => return Err(ConfigError::unsupported(format!("{path}.path_rewrite"))),
        None => (None, None, None),
    };
    Ok(Redirect {
        scheme,
        host: (!r.host_redirect.is_empty()).then(|| r.host_redirect.clone()),
        port: match r.port_redirect {
            0 => None,
            p => Some(u16::try_from(p).map_err(|_| {
                ConfigError::new(format!("{path}.port_redirect"), "port out of range")
            })?),
        },
        path: path_redirect,
        prefix_rewrite,
        regex_rewrite,
        status,
        strip_query: r.strip_query,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn table(yaml_json: serde_json::Value) -> Result<RouteTable, ConfigError> {
        let rc: RouteConfiguration =
            courier_proto::from_value(&yaml_json).expect("valid proto json");
        RouteTable::compile(&rc, &Store::new(1), &crate::filters::http::HTTP_FILTERS)
    }

    #[test]
    fn internal_redirects_and_bad_mirrors_are_refused_by_path() {
        let route = |action: serde_json::Value| {
            table(serde_json::json!({
                "name": "r",
                "virtual_hosts": [{"name": "v", "domains": ["*"], "routes": [
                    {"match": {"prefix": "/"}, "route": action}
                ]}]
            }))
            .err()
            .expect("must fail")
            .path
        };
        assert_eq!(
            route(
                serde_json::json!({"cluster": "c", "internal_redirect_action": "HANDLE_INTERNAL_REDIRECT"})
            ),
            "virtual_hosts[0].routes[0].route.internal_redirect_action"
        );
        assert_eq!(
            route(
                serde_json::json!({"cluster": "c", "request_mirror_policies": [
                    {"cluster": "a", "cluster_header": "x-b"}
                ]})
            ),
            "virtual_hosts[0].routes[0].route.request_mirror_policies[0]"
        );
        assert_eq!(
            route(
                serde_json::json!({"cluster": "c", "request_mirror_policies": [
                    {"cluster": "a"}, {"cluster": "b", "host_rewrite_literal": "h"}
                ]})
            ),
            "virtual_hosts[0].routes[0].route.request_mirror_policies[1].host_rewrite_literal"
        );
    }

    #[test]
    fn invalid_regex_names_the_path() {
        let err = table(serde_json::json!({
            "name": "r",
            "virtual_hosts": [{"name": "v", "domains": ["*"], "routes": [
                {"match": {"prefix": "/"}, "route": {"cluster": "c"}},
                {"match": {"safe_regex": {"regex": "(("}}, "route": {"cluster": "c"}}
            ]}]
        }))
        .err()
        .expect("must fail");
        assert_eq!(
            err.path,
            "virtual_hosts[0].routes[1].match.safe_regex.regex"
        );
    }

    #[test]
    fn previous_hosts_and_omit_canary_hosts_are_the_predicates_taken() {
        let policy = |predicate: serde_json::Value| {
            table(serde_json::json!({
                "name": "r",
                "virtual_hosts": [{"name": "v", "domains": ["*"], "routes": [
                    {"match": {"prefix": "/"}, "route": {"cluster": "c", "retry_policy": {
                        "retry_on": "5xx",
                        "host_selection_retry_max_attempts": 3,
                        "retry_host_predicate": [predicate]
                    }}}
                ]}]
            }))
        };
        let t = policy(serde_json::json!({"name": "envoy.retry_host_predicates.previous_hosts",
            "typed_config": {"@type": "type.googleapis.com/envoy.extensions.retry.host.previous_hosts.v3.PreviousHostsPredicate"}}))
        .expect("compiles");
        let Action::Route(a) = &t.vhosts[0].routes[0].action else {
            panic!("a route action")
        };
        let r = a.retry_policy.as_ref().expect("a retry policy");
        assert!(r.avoid_previous_hosts);
        assert_eq!(r.host_reselections, 3);
        let t = policy(serde_json::json!({"name": "envoy.retry_host_predicates.omit_canary_hosts",
            "typed_config": {"@type": "type.googleapis.com/envoy.extensions.retry.host.omit_canary_hosts.v3.OmitCanaryHostsPredicate"}}))
        .expect("compiles");
        let Action::Route(a) = &t.vhosts[0].routes[0].action else {
            panic!("a route action")
        };
        assert!(a.retry_policy.as_ref().is_some_and(|r| r.omit_canary_hosts));
        let err = policy(serde_json::json!({"name": "envoy.retry_host_predicates.omit_host_metadata",
            "typed_config": {"@type": "type.googleapis.com/envoy.extensions.retry.host.omit_host_metadata.v3.OmitHostMetadataConfig"}}))
        .err()
        .expect("refused");
        assert_eq!(
            err.path,
            "virtual_hosts[0].routes[0].route.retry_policy.retry_host_predicate[0]"
        );
    }

    #[test]
    fn virtual_clusters_are_checked_and_matched_in_order() {
        let store = Store::new(1);
        let vh = |clusters: serde_json::Value| {
            let rc: RouteConfiguration = courier_proto::from_value(&serde_json::json!({
                "name": "r",
                "virtual_hosts": [{"name": "v", "domains": ["*"], "routes": [],
                    "virtual_clusters": clusters}]
            }))
            .expect("valid proto json");
            RouteTable::compile(&rc, &store, &crate::filters::http::HTTP_FILTERS)
        };
        let err = vh(serde_json::json!([{"name": "c"}]))
            .err()
            .expect("a virtual cluster without headers is refused");
        assert_eq!(err.path, "virtual_hosts[0].virtual_clusters[0].headers");
        let err =
            vh(serde_json::json!([{"headers": [{"name": ":method", "present_match": true}]}]))
                .err()
                .expect("a virtual cluster without a name is refused");
        assert_eq!(err.path, "virtual_hosts[0].virtual_clusters[0].name");
        let t = vh(serde_json::json!([
            {"name": "gets", "headers": [{"name": ":method", "string_match": {"exact": "GET"}}]},
            {"name": "api", "headers": [{"name": ":path", "string_match": {"prefix": "/api"}}]}
        ]))
        .expect("compiles");
        let charge = |method: &str, path: &str| {
            let pseudo = Pseudo {
                method: Some(method),
                path: Some(path),
                ..Pseudo::default()
            };
            t.vhosts[0]
                .virtual_cluster(&HeaderMap::new(), &pseudo)
                .expect("a virtual host with virtual clusters")
                .charge(0, 200, false);
        };
        charge("GET", "/api/x");
        charge("POST", "/api/x");
        charge("POST", "/other");
        let counters: HashMap<String, u64> = store.counters().into_iter().collect();
        assert_eq!(counters["vhost.v.vcluster.gets.upstream_rq_200"], 1);
        assert_eq!(counters["vhost.v.vcluster.api.upstream_rq_200"], 1);
        assert_eq!(counters["vhost.v.vcluster.other.upstream_rq_200"], 1);
    }

    #[test]
    fn domain_search_order() {
        let t = table(serde_json::json!({
            "name": "r",
            "virtual_hosts": [
                {"name": "any", "domains": ["*"], "routes": []},
                {"name": "suffix", "domains": ["*.foo.com"], "routes": []},
                {"name": "longsuffix", "domains": ["*.bar.foo.com"], "routes": []},
                {"name": "prefix", "domains": ["foo.*"], "routes": []},
                {"name": "exact", "domains": ["www.foo.com", "Host.Example:8080"], "routes": []}
            ]
        }))
        .expect("compiles");
        let name = |h: &str| t.find_vhost(h).map(|v| v.name.clone()).unwrap_or_default();
        assert_eq!(name("www.foo.com"), "exact");
        assert_eq!(name("WWW.FOO.COM"), "exact");
        assert_eq!(name("a.foo.com"), "suffix");
        assert_eq!(name("a.bar.foo.com"), "longsuffix");
        assert_eq!(name("foo.org"), "prefix");
        assert_eq!(name("other"), "any");
        assert_eq!(name("host.example:8080"), "exact");
        assert_eq!(name("www.foo.com:80"), "any");
    }

    #[test]
    fn duplicate_domain_rejected() {
        let err = table(serde_json::json!({
            "name": "r",
            "virtual_hosts": [
                {"name": "a", "domains": ["x.com"], "routes": []},
                {"name": "b", "domains": ["x.com"], "routes": []}
            ]
        }))
        .err()
        .expect("must fail");
        assert_eq!(err.path, "virtual_hosts[1].domains[0]");
    }

    #[test]
    fn a_second_wildcard_domain_is_refused_with_envoys_message() {
        let err = table(serde_json::json!({
            "name": "r",
            "virtual_hosts": [
                {"name": "a", "domains": ["*"], "routes": []},
                {"name": "b", "domains": ["*"], "routes": []}
            ]
        }))
        .err()
        .expect("must fail");
        assert_eq!(
            err.message,
            "Only a single wildcard domain is permitted in route r"
        );
    }

    #[test]
    fn matchers() {
        let t = table(serde_json::json!({
            "name": "r",
            "virtual_hosts": [{"name": "v", "domains": ["*"], "routes": [
                {"name": "exact", "match": {"path": "/exact"}, "direct_response": {"status": 200}},
                {"name": "ci", "match": {"prefix": "/CI", "case_sensitive": false}, "direct_response": {"status": 200}},
                {"name": "sep", "match": {"path_separated_prefix": "/sep"}, "direct_response": {"status": 200}},
                {"name": "re", "match": {"safe_regex": {"regex": "/re/[0-9]+"}}, "direct_response": {"status": 200}},
                {"name": "hdr", "match": {"prefix": "/h", "headers": [{"name": "x-a", "string_match": {"suffix": "yz"}}]}, "direct_response": {"status": 200}},
                {"name": "inv", "match": {"prefix": "/h", "headers": [{"name": "x-b", "present_match": true, "invert_match": true}]}, "direct_response": {"status": 200}},
                {"name": "q", "match": {"prefix": "/q", "query_parameters": [{"name": "k", "string_match": {"exact": "v"}}]}, "direct_response": {"status": 200}},
                {"name": "fallback", "match": {"prefix": "/"}, "direct_response": {"status": 200}}
            ]}]
        }))
        .expect("compiles");
        let hm = |pairs: &[(&str, &str)]| {
            let mut h = HeaderMap::new();
            for (k, v) in pairs {
                h.append(
                    HeaderName::from_bytes(k.as_bytes()).expect("name"),
                    v.parse().expect("value"),
                );
            }
            h
        };
        let name = |p: &str, h: &HeaderMap| {
            t.route("x", p, h, &Pseudo::default(), 0)
                .map(|(_, r)| r.name.clone())
                .unwrap_or_default()
        };
        let none = HeaderMap::new();
        assert_eq!(name("/exact", &none), "exact");
        assert_eq!(name("/exact?x=1", &none), "exact");
        assert_eq!(name("/exactly", &none), "fallback");
        assert_eq!(name("/ci/x", &none), "ci");
        assert_eq!(name("/sep", &none), "sep");
        assert_eq!(name("/sep/x", &none), "sep");
        assert_eq!(name("/sepx", &none), "fallback");
        assert_eq!(name("/re/123", &none), "re");
        assert_eq!(name("/re/12a", &none), "fallback");
        assert_eq!(name("/h", &hm(&[("x-a", "xyz")])), "hdr");
        assert_eq!(name("/h", &hm(&[("x-a", "xy")])), "inv");
        assert_eq!(name("/h", &hm(&[("x-b", "1")])), "fallback");
        assert_eq!(name("/q?a=b&k=v", &none), "q");
        assert_eq!(name("/q?k=w", &none), "fallback");
    }

    /// A short in-process run of the `route_match` fuzz target's body on random inputs
    /// (the cargo-fuzz target in `proxy/fuzz` runs it for longer).
    #[test]
    fn random_inputs_never_panic() {
        let t = table(serde_json::json!({
            "name": "r",
            "virtual_hosts": [{"name": "v", "domains": ["*", "*.a.com", "b.*"], "routes": [
                {"match": {"path_separated_prefix": "/sep"}, "direct_response": {"status": 200}},
                {"match": {"prefix": "/CI", "case_sensitive": false}, "direct_response": {"status": 200}},
                {"match": {"safe_regex": {"regex": "/r/[a-z]+"}}, "direct_response": {"status": 200}},
                {"match": {"prefix": "/q", "query_parameters": [{"name": "k", "present_match": true}]}, "direct_response": {"status": 200}}
            ]}]
        }))
        .expect("compiles");
        let alphabet = "/?&=#.%:*abcCI\u{e9}sepqrk0123456789-_ ";
        let chars: Vec<char> = alphabet.chars().collect();
        let mut rng = fastrand::Rng::with_seed(7);
        for _ in 0..20_000 {
            let n = rng.usize(0..24);
            let s: String = (0..n).map(|_| chars[rng.usize(..chars.len())]).collect();
            let _ = t.route(&s, &s, &HeaderMap::new(), &Pseudo::default(), 0);
            let _ = crate::http::conn_manager::path::sanitize_path(&s, true, true);
        }
    }

    #[test]
    fn substitution_syntax() {
        assert_eq!(substitution("/v2/\\1/x"), "/v2/${1}/x");
        assert_eq!(substitution("a$b"), "a$$b");
    }
}
