//! Local rate limiting (`envoy.filters.http.local_ratelimit`): a token bucket in front of
//! the router; requests past it are answered `429 local_rate_limited`.
//!
//! As Envoy 1.40 (measured, `tests/http_local_ratelimit.rs`):
//!
//! - The most specific `typed_per_filter_config` `LocalRateLimit` (route, virtual host,
//!   route configuration) replaces the filter's own. A config without `token_bucket`
//!   limits nothing (the filter's own may omit it; a per-route one must have one).
//! - `filter_enabled` (default: off) samples the requests that take a token; of those
//!   refused, `filter_enforced` (default: off) samples the ones answered `status`
//!   (default 429) with the body `local_rate_limited` and `response_headers_to_add`;
//!   the others go on with `request_headers_to_add_when_not_enforced`.
//! - The bucket refills continuously, `tokens_per_fill` per `fill_interval` (at least
//!   50 ms), up to `max_tokens`, and starts full. It is shared by every worker (an atomic
//!   word, no lock), or is one per downstream connection with
//!   `local_rate_limit_per_downstream_connection`.
//! - `enable_x_ratelimit_headers: DRAFT_VERSION_03` puts `x-ratelimit-limit`,
//!   `-remaining` and `-reset` (seconds until the next token while none is left, else 0)
//!   on every response; `rate_limited_as_resource_exhausted` answers a gRPC request
//!   RESOURCE_EXHAUSTED. `enable_retry_after_header` has no effect, as in Envoy 1.40.
//! - Counters `<stat_prefix>.http_local_rate_limit.enabled`, `ok`, `rate_limited`,
//!   `enforced`.
//!
//! - `descriptors` (measured, `tests/http_local_ratelimit_descriptors.rs`): only a policy
//!   with descriptors computes the request's, from its own `rate_limits` if it has them,
//!   else from the route's entries at its `stage` (those with a `disable_key` skipped)
//!   and the virtual host's (`vh_rate_limits`: OVERRIDE, only when the route has none;
//!   INCLUDE; IGNORE; the route's `include_vh_rate_limits` forces INCLUDE). A direct
//!   response or redirect has none. Every request descriptor equal to a configured one
//!   takes a token from its bucket, slowest refill first, until one is empty (refused,
//!   that bucket reported); then the default bucket, when nothing matched or
//!   `always_consume_default_token_bucket` (default true). `x-ratelimit-*` report the
//!   deciding bucket: the refusing one, else the first matched, else the default.
//!   Several rate limit filters each add their headers, the last filter's first.
//!
//!   A descriptor with an entry without a value is a wildcard: a bucket per distinct
//!   request descriptor it matches, at most `max_dynamic_descriptors` (default 20) kept,
//!   least recently used forgotten first (`descriptors.rs`).
//!
//! Refused as unsupported: `local_cluster_rate_limit`.

use std::sync::Arc;

mod descriptors;

use courier_proto::envoy::extensions::filters::http::local_ratelimit::v3::LocalRateLimit;
use http::header::HeaderName;
use http::{HeaderMap, StatusCode};

use crate::config::ConfigError;
use crate::filters::token_bucket::{Bucket, Tokens};
use crate::http::conn_manager::headers::decimal_value;
use crate::http::route::rate_limits::Entry;
use crate::http::route::rate_limits::{
    Descriptor, DescriptorSource, Level, RateLimitView, RateLimits, VhRateLimits,
};
use crate::layered_runtime::RuntimeFraction;
use crate::protocol::header_mutations::{FormatContext, HeaderMutations};
use crate::stats::{Counter, Store};
use descriptors::{DynamicBuckets, LocalDescriptor};

/// The filter's config type, also the per-route policy's.
pub const FILTER_TYPE: &str = "envoy.extensions.filters.http.local_ratelimit.v3.LocalRateLimit";
/// The filter's well-known name (an HTTP filter without `typed_config`).
pub const FILTER_NAME: &str = "envoy.filters.http.local_ratelimit";
/// Envoy's body for a refused request.
pub const BODY: &str = "local_rate_limited";

static LIMIT: HeaderName = HeaderName::from_static("x-ratelimit-limit");
static REMAINING: HeaderName = HeaderName::from_static("x-ratelimit-remaining");
static RESET: HeaderName = HeaderName::from_static("x-ratelimit-reset");

/// A policy's buckets: the default one and each descriptor's, in the descriptors' order.
/// Shared by every worker, or one per downstream connection.
struct Limiter {
    default: Option<Arc<Tokens>>,
    descriptors: Box<[DescriptorTokens]>,
}

/// A descriptor's bucket, or a wildcard's buckets.
enum DescriptorTokens {
    Exact(Arc<Tokens>),
    Wildcard(DynamicBuckets),
}

impl Limiter {
    fn new(bucket: Option<&Bucket>, descriptors: &[LocalDescriptor], max_dynamic: u32) -> Limiter {
        Limiter {
            default: bucket.map(|b| Arc::new(Tokens::full(b))),
            descriptors: descriptors
                .iter()
                .map(|d| match d.wildcard {
                    false => DescriptorTokens::Exact(Arc::new(Tokens::full(&d.bucket))),
                    true => DescriptorTokens::Wildcard(DynamicBuckets::new(max_dynamic)),
                })
                .collect(),
        }
    }

    /// The bucket of the request descriptor `entries` under the configured descriptor `i`.
    fn tokens(&self, i: usize, d: &LocalDescriptor, entries: &[Entry]) -> Arc<Tokens> {
        match &self.descriptors[i] {
            DescriptorTokens::Exact(t) => t.clone(),
            DescriptorTokens::Wildcard(w) => w.get(entries, &d.bucket),
        }
    }
}

/// A compiled `LocalRateLimit`.
pub struct RateLimitPolicy {
    bucket: Option<Bucket>,
    /// `descriptors`, in order.
    descriptors: Vec<LocalDescriptor>,
    /// The buckets every worker shares (unused per connection).
    limiter: Arc<Limiter>,
    /// `rate_limits`: the filter's own actions, which replace the route's.
    rate_limits: Option<Box<RateLimits>>,
    /// `stage`: the route's `rate_limits` entries taken.
    stage: u32,
    vh_rate_limits: VhRateLimits,
    /// `always_consume_default_token_bucket` (default true).
    always_consume_default: bool,
    /// `max_dynamic_descriptors`: the buckets each wildcard descriptor keeps.
    max_dynamic: u32,
    per_connection: bool,
    enabled: Option<RuntimeFraction>,
    enforced: Option<RuntimeFraction>,
    status: StatusCode,
    response_headers: HeaderMutations,
    request_headers: HeaderMutations,
    x_ratelimit_headers: bool,
    resource_exhausted: bool,
    stat_enabled: Arc<Counter>,
    stat_ok: Arc<Counter>,
    stat_rate_limited: Arc<Counter>,
    stat_enforced: Arc<Counter>,
}

impl RateLimitPolicy {
    /// Compiles a `LocalRateLimit` at `path`; `per_route` ones must have a bucket.
    pub fn compile(
        p: &LocalRateLimit,
        path: &str,
        per_route: bool,
        store: &Store,
    ) -> Result<RateLimitPolicy, ConfigError> {
        if p.local_cluster_rate_limit.is_some() {
            return Err(ConfigError::unsupported(format!(
                "{path}.local_cluster_rate_limit"
            )));
        }
        if p.stat_prefix.is_empty() {
            return Err(ConfigError::new(
                format!("{path}.stat_prefix"),
                "value length must be at least 1 characters",
            ));
        }
        let bucket = match &p.token_bucket {
            None if per_route => {
                return Err(ConfigError::new(
                    format!("{path}.token_bucket"),
                    "local rate limit token bucket must be set for per filter configs",
                ))
            }
            None => None,
            Some(tb) => Some(Bucket::compile(tb, &format!("{path}.token_bucket"), "")?),
        };
        let descriptors = descriptors::compile(&p.descriptors, &format!("{path}.descriptors"))?;
        let rate_limits = RateLimits::compile(
            &p.rate_limits,
            &format!("{path}.rate_limits"),
            Level::Filter,
        )?;
        if p.stage > 10 {
            return Err(ConfigError::new(
                format!("{path}.stage"),
                "value must be less than or equal to 10",
            ));
        }
        let vh_rate_limits = VhRateLimits::of(p.vh_rate_limits);
        let status = match p.status.as_ref().map(|s| s.code) {
            None | Some(0) => StatusCode::TOO_MANY_REQUESTS,
            Some(code) => {
                // Envoy's `StatusCode` enum names the codes it takes; below 400 it answers
                // 429.
                courier_proto::envoy::r#type::v3::StatusCode::try_from(code).map_err(|_| {
                    ConfigError::new(
                        format!("{path}.status.code"),
                        "value must be one of the defined enum values",
                    )
                })?;
                u16::try_from(code)
                    .ok()
                    .filter(|c| *c >= 400)
                    .and_then(|c| StatusCode::from_u16(c).ok())
                    .unwrap_or(StatusCode::TOO_MANY_REQUESTS)
            }
        };
        let max_dynamic = match p.max_dynamic_descriptors.as_ref().map(|v| v.value) {
            None => descriptors::DEFAULT_MAX_DYNAMIC,
            Some(0) => {
                return Err(ConfigError::new(
                    format!("{path}.max_dynamic_descriptors"),
                    "value must be greater than or equal to 1",
                ))
            }
            Some(n) => n,
        };
        let c = |s: &str| store.counter(&format!("{}.http_local_rate_limit.{s}", p.stat_prefix));
        // Envoy 1.40 registers `shadow_mode` too; its `shadow_mode` field is newer than the
        // protos Courier reads, so nothing is ever counted there.
        c("shadow_mode");
        let limiter = Arc::new(Limiter::new(bucket.as_ref(), &descriptors, max_dynamic));
        Ok(RateLimitPolicy {
            limiter,
            bucket,
            descriptors,
            rate_limits,
            stage: p.stage,
            vh_rate_limits,
            always_consume_default: p
                .always_consume_default_token_bucket
                .as_ref()
                .is_none_or(|b| b.value),
            max_dynamic,
            per_connection: p.local_rate_limit_per_downstream_connection,
            enabled: p
                .filter_enabled
                .as_ref()
                .map(|f| RuntimeFraction::compile(f, &format!("{path}.filter_enabled")))
                .transpose()?,
            enforced: p
                .filter_enforced
                .as_ref()
                .map(|f| RuntimeFraction::compile(f, &format!("{path}.filter_enforced")))
                .transpose()?,
            status,
            response_headers: HeaderMutations::compile(
                &p.response_headers_to_add,
                &[],
                &format!("{path}.response_headers_to_add"),
                "",
            )?,
            request_headers: HeaderMutations::compile(
                &p.request_headers_to_add_when_not_enforced,
                &[],
                &format!("{path}.request_headers_to_add_when_not_enforced"),
                "",
            )?,
            // DRAFT_VERSION_03.
            x_ratelimit_headers: p.enable_x_ratelimit_headers == 1,
            resource_exhausted: p.rate_limited_as_resource_exhausted,
            stat_enabled: c("enabled"),
            stat_ok: c("ok"),
            stat_rate_limited: c("rate_limited"),
            stat_enforced: c("enforced"),
        })
    }
}

/// A connection's own buckets (`local_rate_limit_per_downstream_connection`), by policy.
#[derive(Default)]
pub struct ConnectionBuckets(std::cell::RefCell<Vec<(Arc<RateLimitPolicy>, Arc<Limiter>)>>);

impl ConnectionBuckets {
    fn limiter(&self, policy: &Arc<RateLimitPolicy>) -> Arc<Limiter> {
        let mut all = self.0.borrow_mut();
        if let Some((_, l)) = all.iter().find(|(p, _)| Arc::ptr_eq(p, policy)) {
            return l.clone();
        }
        let l = Arc::new(Limiter::new(
            policy.bucket.as_ref(),
            &policy.descriptors,
            policy.max_dynamic,
        ));
        all.push((policy.clone(), l.clone()));
        l
    }
}

/// What the filter decided for a request.
pub enum RateLimited {
    /// Go on; the response gets these `x-ratelimit-*` headers, if any.
    Pass(Option<Remaining>),
    /// Answer with this refusal.
    Refuse(Box<http::Response<crate::http::codec::body::ProxyBody>>),
}

/// The bucket a response reports on (`x-ratelimit-*`), read when the response goes out.
pub struct Remaining {
    bucket: Bucket,
    tokens: Arc<Tokens>,
    /// An earlier rate limit filter's report: it adds its headers after this one's (the
    /// response passes the filters in reverse).
    earlier: Option<Box<Remaining>>,
}

impl Remaining {
    /// Adds `x-ratelimit-limit`, `-remaining` and `-reset`.
    pub fn apply(&self, headers: &mut HeaderMap) {
        let b = &self.bucket;
        headers.append(LIMIT.clone(), decimal_value(b.max_tokens as u64));
        headers.append(REMAINING.clone(), decimal_value(self.tokens.remaining(b)));
        headers.append(RESET.clone(), decimal_value(self.tokens.reset_secs(b)));
        if let Some(e) = &self.earlier {
            e.apply(headers);
        }
    }

    /// This filter's report after `earlier` filters'.
    pub fn after(mut self, earlier: Option<Remaining>) -> Remaining {
        self.earlier = earlier.map(Box::new);
        self
    }
}

/// A connection manager's local rate limit filter.
pub struct LocalRateLimitFilter {
    /// The filter's name in `http_filters`: its key in `typed_per_filter_config`.
    pub name: String,
    policy: Arc<RateLimitPolicy>,
}

impl LocalRateLimitFilter {
    /// The filter named `name` with its own `policy`.
    pub fn new(name: &str, policy: RateLimitPolicy) -> LocalRateLimitFilter {
        LocalRateLimitFilter {
            name: name.to_string(),
            policy: Arc::new(policy),
        }
    }

    /// The filter's decision: `route_policy` is the most specific per-route one (`None`:
    /// the filter's own). A request that goes on unenforced gets the policy's request
    /// headers.
    pub fn on_request(
        &self,
        route_policy: Option<&Arc<RateLimitPolicy>>,
        conn: &ConnectionBuckets,
        headers: &mut HeaderMap,
        view: &RateLimitView<'_>,
        cx: &FormatContext<'_>,
        worker: usize,
    ) -> RateLimited {
        let policy = route_policy.unwrap_or(&self.policy);
        if !policy.enabled.as_ref().is_some_and(|f| f.sample()) {
            return RateLimited::Pass(None);
        }
        policy.stat_enabled.inc(worker);
        // Only a policy with descriptors computes the request's (as Envoy).
        let request_descriptors = if policy.descriptors.is_empty() {
            Vec::new()
        } else {
            policy.request_descriptors(headers, view)
        };
        let limiter = match policy.per_connection {
            true => conn.limiter(policy),
            false => policy.limiter.clone(),
        };
        let (allowed, context) = policy.decide(&limiter, &request_descriptors);
        let report = |context: Option<(Bucket, Arc<Tokens>)>| {
            policy
                .x_ratelimit_headers
                .then_some(context)
                .flatten()
                .map(|(bucket, tokens)| Remaining {
                    bucket,
                    tokens,
                    earlier: None,
                })
        };
        if allowed {
            policy.stat_ok.inc(worker);
            return RateLimited::Pass(report(context));
        }
        policy.stat_rate_limited.inc(worker);
        if !policy.enforced.as_ref().is_some_and(|f| f.sample()) {
            policy.request_headers.apply(headers, cx);
            return RateLimited::Pass(report(context));
        }
        policy.stat_enforced.inc(worker);
        let mut r = crate::http::conn_manager::local_reply::local_reply(policy.status, BODY);
        policy.response_headers.apply(r.headers_mut(), cx);
        if let Some(rem) = report(context) {
            rem.apply(r.headers_mut());
        }
        if policy.resource_exhausted {
            crate::http::conn_manager::local_reply::set_grpc_status(&mut r, 8);
        }
        RateLimited::Refuse(Box::new(r))
    }
}

impl RateLimitPolicy {
    /// The request's descriptors: from the filter's own `rate_limits`, else from its
    /// route's and virtual host's.
    fn request_descriptors(
        &self,
        headers: &HeaderMap,
        view: &RateLimitView<'_>,
    ) -> Vec<Descriptor> {
        let source = DescriptorSource {
            own: self.rate_limits.as_deref(),
            stage: self.stage,
            vh_rate_limits: self.vh_rate_limits,
        };
        source.descriptors(headers, view)
    }

    /// Whether the request may go on, and the bucket its `x-ratelimit-*` headers report:
    /// the matching descriptors' buckets are taken from, slowest refill first, until one
    /// is empty; then the default one, when no descriptor matched or
    /// `always_consume_default_token_bucket`.
    fn decide(
        &self,
        limiter: &Limiter,
        request: &[Descriptor],
    ) -> (bool, Option<(Bucket, Arc<Tokens>)>) {
        // Each request descriptor's bucket: an exact descriptor's, else the first
        // matching wildcard's bucket for it.
        let mut matched: Vec<(Bucket, Arc<Tokens>)> = Vec::new();
        for rd in request {
            let exact = self
                .descriptors
                .iter()
                .position(|d| !d.wildcard && *d.entries == *rd.entries);
            let found = exact.or_else(|| {
                self.descriptors
                    .iter()
                    .position(|d| d.wildcard_matches(&rd.entries))
            });
            if let Some(i) = found {
                let d = &self.descriptors[i];
                matched.push((d.bucket, limiter.tokens(i, d, &rd.entries)));
            }
        }
        // Stable, as Envoy's sort of so few elements is in effect.
        matched.sort_by(|a, b| a.0.rate.total_cmp(&b.0.rate));
        for (bucket, tokens) in &matched {
            if !tokens.take(bucket) {
                return (false, Some((*bucket, tokens.clone())));
            }
        }
        let first = matched.first().cloned();
        if matched.is_empty() || self.always_consume_default {
            if let (Some(b), Some(t)) = (self.bucket.as_ref(), limiter.default.as_ref()) {
                if !t.take(b) {
                    return (false, Some((*b, t.clone())));
                }
                return (true, first.or(Some((*b, t.clone()))));
            }
        }
        (true, first)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn configs_are_checked_as_envoy_does() {
        let store = Store::new(1);
        let compile = |yaml: &str, per_route: bool| {
            let p: LocalRateLimit = courier_proto::from_yaml(yaml).expect("LocalRateLimit");
            RateLimitPolicy::compile(&p, "rl", per_route, &store)
        };
        let bucket = "token_bucket: { max_tokens: 1, fill_interval: 1s }";
        assert!(compile(&format!("{{ stat_prefix: s, {bucket} }}"), true).is_ok());
        let no_bucket = compile("{ stat_prefix: s }", true).err().map(|e| e.path);
        assert_eq!(no_bucket.as_deref(), Some("rl.token_bucket"));
        let fast = compile(
            "{ stat_prefix: s, token_bucket: { max_tokens: 1, fill_interval: 0.01s } }",
            false,
        );
        assert!(fast.is_err());
        let wildcard = compile(
            &format!("{{ stat_prefix: s, {bucket}, descriptors: [{{ entries: [{{ key: k }}], token_bucket: {{ max_tokens: 1, fill_interval: 1s }} }}] }}"),
            false,
        );
        assert!(wildcard.is_ok());
        let no_dynamic = compile(
            &format!("{{ stat_prefix: s, {bucket}, max_dynamic_descriptors: 0 }}"),
            false,
        );
        assert_eq!(
            no_dynamic.err().map(|e| e.path).as_deref(),
            Some("rl.max_dynamic_descriptors")
        );
        let duplicate = compile(
            &format!("{{ stat_prefix: s, {bucket}, descriptors: [{{ entries: [{{ key: k, value: v }}], token_bucket: {{ max_tokens: 1, fill_interval: 1s }} }}, {{ entries: [{{ key: k, value: v }}], token_bucket: {{ max_tokens: 2, fill_interval: 1s }} }}] }}"),
            false,
        );
        assert!(duplicate.is_err());
    }
}
