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
//! Refused as unsupported: `descriptors`, `rate_limits`, `local_cluster_rate_limit`, a
//! `stage` or `vh_rate_limits` other than the default.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use courier_proto::envoy::extensions::filters::http::local_ratelimit::v3::LocalRateLimit;
use http::header::HeaderName;
use http::{HeaderMap, StatusCode};

use crate::config::{self, ConfigError};
use crate::http::conn_manager::headers::decimal_value;
use crate::layered_runtime::RuntimeFraction;
use crate::protocol::header_mutations::{FormatContext, HeaderMutations};
use crate::stats::{Counter, Store};

/// The filter's config type, also the per-route policy's.
pub const FILTER_TYPE: &str = "envoy.extensions.filters.http.local_ratelimit.v3.LocalRateLimit";
/// The filter's well-known name (an HTTP filter without `typed_config`).
pub const FILTER_NAME: &str = "envoy.filters.http.local_ratelimit";
/// Envoy's body for a refused request.
pub const BODY: &str = "local_rate_limited";

static LIMIT: HeaderName = HeaderName::from_static("x-ratelimit-limit");
static REMAINING: HeaderName = HeaderName::from_static("x-ratelimit-remaining");
static RESET: HeaderName = HeaderName::from_static("x-ratelimit-reset");

/// A token bucket's size and refill rate (`token_bucket`).
#[derive(Debug, Clone, Copy)]
struct Bucket {
    max_tokens: f64,
    /// Tokens per second.
    rate: f64,
}

/// A token bucket's state: the (virtual) time at which it held no token, in seconds since
/// [`epoch`], as an `f64`'s bits. Taking a token moves it forward by one token's worth;
/// refilling is implicit in time passing (Envoy's atomic token bucket).
struct Tokens(AtomicU64);

/// The base of the buckets' clocks.
fn epoch() -> Instant {
    static EPOCH: OnceLock<Instant> = OnceLock::new();
    *EPOCH.get_or_init(Instant::now)
}

fn now_secs() -> f64 {
    epoch().elapsed().as_secs_f64()
}

impl Tokens {
    /// A full bucket.
    fn full(b: &Bucket) -> Tokens {
        Tokens(AtomicU64::new(
            (now_secs() - b.max_tokens / b.rate).to_bits(),
        ))
    }

    /// Takes a token if there is one.
    fn take(&self, b: &Bucket) -> bool {
        let now = now_secs();
        let mut old = self.0.load(Ordering::Relaxed);
        loop {
            let empty_at = f64::from_bits(old).max(now - b.max_tokens / b.rate) + 1.0 / b.rate;
            // A token is there when the bucket's last one lands at `now` exactly; the
            // arithmetic may miss that by a rounding error.
            if empty_at > now + 1e-9 {
                return false;
            }
            match self.0.compare_exchange_weak(
                old,
                empty_at.to_bits(),
                Ordering::Relaxed,
                Ordering::Relaxed,
            ) {
                Ok(_) => return true,
                Err(current) => old = current,
            }
        }
    }

    /// Tokens in the bucket, a fraction of one included.
    fn level(&self, b: &Bucket) -> f64 {
        let elapsed = now_secs() - f64::from_bits(self.0.load(Ordering::Relaxed));
        (elapsed * b.rate + 1e-9).clamp(0.0, b.max_tokens)
    }

    /// Whole tokens left.
    fn remaining(&self, b: &Bucket) -> u64 {
        self.level(b) as u64
    }

    /// Whole seconds (rounded up) until the next token, 0 while one is left.
    fn reset_secs(&self, b: &Bucket) -> u64 {
        let tokens = self.level(b);
        if tokens >= 1.0 {
            0
        } else {
            ((1.0 - tokens) / b.rate).ceil() as u64
        }
    }
}

/// A compiled `LocalRateLimit`.
pub struct RateLimitPolicy {
    bucket: Option<Bucket>,
    /// The bucket every worker shares (unused per connection).
    tokens: Option<Arc<Tokens>>,
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
        for (field, set) in [
            ("descriptors", !p.descriptors.is_empty()),
            ("rate_limits", !p.rate_limits.is_empty()),
            (
                "local_cluster_rate_limit",
                p.local_cluster_rate_limit.is_some(),
            ),
            ("stage", p.stage != 0),
            ("vh_rate_limits", p.vh_rate_limits != 0),
        ] {
            if set {
                return Err(ConfigError::unsupported(format!("{path}.{field}")));
            }
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
            Some(tb) => {
                let at = format!("{path}.token_bucket");
                let interval = tb
                    .fill_interval
                    .as_ref()
                    .map(|d| config::duration(d, &format!("{at}.fill_interval")))
                    .transpose()?
                    .unwrap_or_default();
                if interval < Duration::from_millis(50) {
                    return Err(ConfigError::new(
                        format!("{at}.fill_interval"),
                        "local rate limit token bucket fill timer must be >= 50ms",
                    ));
                }
                let per_fill = tb.tokens_per_fill.as_ref().map_or(1, |v| v.value);
                if tb.max_tokens == 0 || per_fill == 0 {
                    return Err(ConfigError::new(
                        at,
                        "max_tokens and tokens_per_fill must be greater than 0",
                    ));
                }
                Some(Bucket {
                    max_tokens: f64::from(tb.max_tokens),
                    rate: f64::from(per_fill) / interval.as_secs_f64(),
                })
            }
        };
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
        let c = |s: &str| store.counter(&format!("{}.http_local_rate_limit.{s}", p.stat_prefix));
        Ok(RateLimitPolicy {
            tokens: bucket.as_ref().map(|b| Arc::new(Tokens::full(b))),
            bucket,
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
pub struct ConnectionBuckets(std::cell::RefCell<Vec<(Arc<RateLimitPolicy>, Arc<Tokens>)>>);

impl ConnectionBuckets {
    fn tokens(&self, policy: &Arc<RateLimitPolicy>, bucket: &Bucket) -> Arc<Tokens> {
        let mut all = self.0.borrow_mut();
        if let Some((_, t)) = all.iter().find(|(p, _)| Arc::ptr_eq(p, policy)) {
            return t.clone();
        }
        let t = Arc::new(Tokens::full(bucket));
        all.push((policy.clone(), t.clone()));
        t
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
    policy: Arc<RateLimitPolicy>,
    tokens: Arc<Tokens>,
}

impl Remaining {
    /// Adds `x-ratelimit-limit`, `-remaining` and `-reset`.
    pub fn apply(&self, headers: &mut HeaderMap) {
        let Some(b) = self.policy.bucket.as_ref() else {
            return;
        };
        headers.append(LIMIT.clone(), decimal_value(b.max_tokens as u64));
        headers.append(REMAINING.clone(), decimal_value(self.tokens.remaining(b)));
        headers.append(RESET.clone(), decimal_value(self.tokens.reset_secs(b)));
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
        cx: &FormatContext<'_>,
        worker: usize,
    ) -> RateLimited {
        let policy = route_policy.unwrap_or(&self.policy);
        if !policy.enabled.as_ref().is_some_and(|f| f.sample()) {
            return RateLimited::Pass(None);
        }
        policy.stat_enabled.inc(worker);
        let (Some(bucket), Some(shared)) = (policy.bucket.as_ref(), policy.tokens.as_ref()) else {
            policy.stat_ok.inc(worker);
            return RateLimited::Pass(None);
        };
        let tokens = match policy.per_connection {
            true => conn.tokens(policy, bucket),
            false => shared.clone(),
        };
        let allowed = tokens.take(bucket);
        let report = |tokens: Arc<Tokens>| {
            policy.x_ratelimit_headers.then(|| Remaining {
                policy: policy.clone(),
                tokens,
            })
        };
        if allowed {
            policy.stat_ok.inc(worker);
            return RateLimited::Pass(report(tokens));
        }
        policy.stat_rate_limited.inc(worker);
        if !policy.enforced.as_ref().is_some_and(|f| f.sample()) {
            policy.request_headers.apply(headers, cx);
            return RateLimited::Pass(report(tokens));
        }
        policy.stat_enforced.inc(worker);
        let mut r = crate::http::conn_manager::local_reply::local_reply(policy.status, BODY);
        policy.response_headers.apply(r.headers_mut(), cx);
        if let Some(rem) = report(tokens) {
            rem.apply(r.headers_mut());
        }
        if policy.resource_exhausted {
            crate::http::conn_manager::local_reply::set_grpc_status(&mut r, 8);
        }
        RateLimited::Refuse(Box::new(r))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_full_bucket_gives_its_tokens_then_waits_for_the_refill() {
        // One token a minute: nothing refills while the test runs.
        let b = Bucket {
            max_tokens: 2.0,
            rate: 1.0 / 60.0,
        };
        let t = Tokens::full(&b);
        assert_eq!(t.remaining(&b), 2);
        assert_eq!(t.reset_secs(&b), 0);
        assert!(t.take(&b));
        assert!(t.take(&b));
        assert!(!t.take(&b));
        assert_eq!(t.remaining(&b), 0);
        let reset = t.reset_secs(&b);
        assert!((59..=60).contains(&reset), "{reset}");
    }

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
        let descriptors = compile(
            &format!("{{ stat_prefix: s, {bucket}, descriptors: [{{ entries: [{{ key: k, value: v }}], token_bucket: {{ max_tokens: 1, fill_interval: 1s }} }}] }}"),
            false,
        );
        assert_eq!(
            descriptors.err().map(|e| e.path).as_deref(),
            Some("rl.descriptors")
        );
    }
}
