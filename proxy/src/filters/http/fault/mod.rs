//! Fault injection (`envoy.filters.http.fault`): requests delayed, or answered with an
//! error, before they are routed upstream.
//!
//! As Envoy 1.40 (measured, `tests/http_fault.rs`):
//!
//! - The filter's own `HTTPFault` applies unless the most specific
//!   `typed_per_filter_config` of the route (route, virtual host, route configuration;
//!   any route, a direct response's too) has one, which replaces it whole.
//! - A fault applies to requests matching `headers`, naming one of `downstream_nodes` in
//!   `x-envoy-downstream-service-node`, and routed to `upstream_cluster` when set. A
//!   request with a fault (a delay, an abort) counts in `active_faults` until it ends; one
//!   that would pass `max_active_faults` gets none (`faults_overflow`).
//! - The delay comes first (`fixed_delay`, or `x-envoy-fault-delay-request` in ms with
//!   `header_delay`), for `percentage` of requests; then the abort, sampled afresh: an
//!   `http_status`, or a `grpc_status` (a gRPC request gets it as its `grpc-status`, any
//!   other `200`), or with `header_abort` `x-envoy-fault-abort-request` (200 to 599) or
//!   `x-envoy-fault-abort-grpc-request`. The body is `fault filter abort` (or
//!   `response_body`). With header faults, `x-envoy-fault-*-request-percentage` narrows
//!   the configured percentage. The headers go upstream untouched.
//! - `response_rate_limit` paces the response body of `percentage` of requests (sampled
//!   first, before the delay) to `fixed_limit.limit_kbps` KiB a second, or with
//!   `header_limit` to `x-envoy-fault-throughput-response` (a positive number; absent,
//!   unparsable or `0`: no limit), its share narrowed by
//!   `x-envoy-fault-throughput-response-percentage`. Each paced stream has a bucket of its
//!   own holding one fill interval's worth (50 ms) at first
//!   ([`crate::filters::http::stream_rate_limiter`]); a local reply (the abort) is paced
//!   too. The header is read only with `header_limit`.
//! - Counted in `http.<stat_prefix>.fault.delays_injected`, `aborts_injected`,
//!   `response_rl_injected`, `faults_overflow`, and the `active_faults` gauge; flags `DI`
//!   and `FI` (a rate limit sets none). A request is one active fault however many it
//!   gets, from its first until it ends; but a delay that no abort follows stops counting
//!   once it is over unless the policy has a `response_rate_limit` (configured, even if
//!   this request was not sampled for it), as Envoy's `postDelayInjection`.
//!
//! - Runtime keys override the configured values as in Envoy: `delay_percent_runtime`
//!   (default `fault.http.delay.fixed_delay_percent`), `abort_percent_runtime`,
//!   `delay_duration_runtime`, `abort_http_status_runtime`, `abort_grpc_status_runtime`
//!   `max_active_faults_runtime` and `response_rate_limit_percent_runtime`
//!   (`fault.http.rate_limit.response_percent`), each with Envoy's default key.
//!
//! - A request naming its downstream cluster (`x-envoy-downstream-service-cluster`, even
//!   empty) reads that cluster's runtime keys in place of the policy's:
//!   `fault.http.<cluster>.delay.fixed_delay_percent` and `.abort.abort_percent` for the
//!   shares, and over the durations and statuses the policy's runtime keys gave (the
//!   statuses' over the configured ones) `.delay.fixed_duration_ms`,
//!   `.abort.http_status`, `.abort.grpc_status`. A non-empty cluster is counted in
//!   `http.<stat_prefix>.fault.<cluster>.delays_injected` and `aborts_injected`, unless
//!   the filter's or the applying policy's `disable_downstream_cluster_stats`.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use courier_proto::envoy::extensions::filters::common::fault::v3::fault_delay::FaultDelaySecifier;
use courier_proto::envoy::extensions::filters::common::fault::v3::fault_rate_limit::LimitType;
use courier_proto::envoy::extensions::filters::http::fault::v3::{fault_abort, HttpFault};
use http::header::HeaderName;
use http::{HeaderMap, HeaderValue, Response, StatusCode};

use crate::config::{self, ConfigError, Fraction};
use crate::filters::http::stream_rate_limiter::{
    ByteBucket, PaceObserver, PacedBody, DEFAULT_FILL_INTERVAL,
};
use crate::http::codec::body::ProxyBody;
use crate::http::conn_manager::headers::parse_decimal;
use crate::http::route::{compile_header_matcher, HeaderMatcher, Pseudo};
use crate::stats::dynamic::DynamicCounters;
use crate::stats::{Counter, Gauge, Store};

/// The filter's config type, also the per-route policy's.
pub const FILTER_TYPE: &str = "envoy.extensions.filters.http.fault.v3.HTTPFault";
/// The filter's well-known name (an HTTP filter without `typed_config`).
pub const FILTER_NAME: &str = "envoy.filters.http.fault";

static DELAY_REQUEST: HeaderName = HeaderName::from_static("x-envoy-fault-delay-request");
static DELAY_PERCENTAGE: HeaderName =
    HeaderName::from_static("x-envoy-fault-delay-request-percentage");
static ABORT_REQUEST: HeaderName = HeaderName::from_static("x-envoy-fault-abort-request");
static ABORT_GRPC_REQUEST: HeaderName = HeaderName::from_static("x-envoy-fault-abort-grpc-request");
static ABORT_PERCENTAGE: HeaderName =
    HeaderName::from_static("x-envoy-fault-abort-request-percentage");
static THROUGHPUT_RESPONSE: HeaderName =
    HeaderName::from_static("x-envoy-fault-throughput-response");
static THROUGHPUT_PERCENTAGE: HeaderName =
    HeaderName::from_static("x-envoy-fault-throughput-response-percentage");
static DOWNSTREAM_NODE: HeaderName = HeaderName::from_static("x-envoy-downstream-service-node");
static DOWNSTREAM_CLUSTER: HeaderName =
    HeaderName::from_static("x-envoy-downstream-service-cluster");

/// Envoy's abort body.
const ABORT_BODY: &str = "fault filter abort";

enum Delay {
    Fixed(Duration),
    /// `header_delay`: `x-envoy-fault-delay-request`.
    Header,
}

enum Abort {
    Http(StatusCode),
    Grpc(u32),
    /// `header_abort`: `x-envoy-fault-abort-request` / `-grpc-request`.
    Header,
}

enum RateLimit {
    /// `fixed_limit`: this many KiB a second.
    Fixed(u64),
    /// `header_limit`: `x-envoy-fault-throughput-response`.
    Header,
}

/// The runtime keys a policy reads (`*_runtime`, or Envoy's defaults).
struct RuntimeKeys {
    delay_percent: String,
    abort_percent: String,
    delay_duration: String,
    abort_http_status: String,
    abort_grpc_status: String,
    max_active_faults: String,
    response_rate_limit_percent: String,
}

impl RuntimeKeys {
    fn compile(p: &HttpFault) -> RuntimeKeys {
        let key = |set: &str, default: &str| {
            if set.is_empty() {
                default.to_string()
            } else {
                set.to_string()
            }
        };
        RuntimeKeys {
            delay_percent: key(
                &p.delay_percent_runtime,
                "fault.http.delay.fixed_delay_percent",
            ),
            abort_percent: key(&p.abort_percent_runtime, "fault.http.abort.abort_percent"),
            delay_duration: key(
                &p.delay_duration_runtime,
                "fault.http.delay.fixed_duration_ms",
            ),
            abort_http_status: key(&p.abort_http_status_runtime, "fault.http.abort.http_status"),
            abort_grpc_status: key(&p.abort_grpc_status_runtime, "fault.http.abort.grpc_status"),
            max_active_faults: key(&p.max_active_faults_runtime, "fault.http.max_active_faults"),
            response_rate_limit_percent: key(
                &p.response_rate_limit_percent_runtime,
                "fault.http.rate_limit.response_percent",
            ),
        }
    }
}

/// A compiled `HTTPFault`.
pub struct FaultPolicy {
    keys: RuntimeKeys,
    delay: Option<(Delay, Fraction)>,
    abort: Option<(Abort, Fraction)>,
    response_rate_limit: Option<(RateLimit, Fraction)>,
    body: Option<String>,
    upstream_cluster: Option<String>,
    headers: Vec<HeaderMatcher>,
    downstream_nodes: Vec<String>,
    max_active_faults: Option<i64>,
    disable_downstream_cluster_stats: bool,
}

/// A request's downstream cluster (`x-envoy-downstream-service-cluster`), whose runtime
/// keys replace the policy's.
struct DownstreamCluster<'a>(&'a str);

impl DownstreamCluster<'_> {
    fn of(headers: &HeaderMap) -> Option<DownstreamCluster<'_>> {
        let v = headers.get(&DOWNSTREAM_CLUSTER)?;
        Some(DownstreamCluster(v.to_str().unwrap_or_default()))
    }

    /// `fault.http.<cluster>.<key>`.
    fn key(&self, key: &str) -> String {
        format!("fault.http.{}.{key}", self.0)
    }
}

impl FaultPolicy {
    /// Compiles an `HTTPFault` at `path`.
    pub fn compile(p: &HttpFault, path: &str) -> Result<FaultPolicy, ConfigError> {
        // Envoy puts it in the stream's dynamic metadata when a fault is injected, which
        // nothing of Courier's reads back.
        if p.filter_metadata.is_some() {
            return Err(ConfigError::unsupported(format!("{path}.filter_metadata")));
        }
        let share = |p: Option<&courier_proto::envoy::r#type::v3::FractionalPercent>| {
            p.map_or(Fraction::NONE, Fraction::of)
        };
        let delay = match &p.delay {
            None => None,
            Some(d) => {
                let source = match &d.fault_delay_secifier {
                    Some(FaultDelaySecifier::FixedDelay(f)) => {
                        Delay::Fixed(config::duration(f, &format!("{path}.delay.fixed_delay"))?)
                    }
                    Some(FaultDelaySecifier::HeaderDelay(_)) => Delay::Header,
                    None => {
                        return Err(ConfigError::new(
                            format!("{path}.delay"),
                            "one of fixed_delay or header_delay is required",
                        ))
                    }
                };
                Some((source, share(d.percentage.as_ref())))
            }
        };
        let abort = match &p.abort {
            None => None,
            Some(a) => {
                let source = match &a.error_type {
                    Some(fault_abort::ErrorType::HttpStatus(s)) => {
                        let status = u16::try_from(*s)
                            .ok()
                            .filter(|s| (200..600).contains(s))
                            .and_then(|s| StatusCode::from_u16(s).ok())
                            .ok_or_else(|| {
                                ConfigError::new(
                                    format!("{path}.abort.http_status"),
                                    format!("value must be in [200, 600), got {s}"),
                                )
                            })?;
                        Abort::Http(status)
                    }
                    Some(fault_abort::ErrorType::GrpcStatus(s)) => Abort::Grpc(*s),
                    Some(fault_abort::ErrorType::HeaderAbort(_)) => Abort::Header,
                    None => {
                        return Err(ConfigError::new(
                            format!("{path}.abort"),
                            "one of http_status, grpc_status or header_abort is required",
                        ))
                    }
                };
                Some((source, share(a.percentage.as_ref())))
            }
        };
        let response_rate_limit = match &p.response_rate_limit {
            None => None,
            Some(r) => {
                let limit = match &r.limit_type {
                    Some(LimitType::FixedLimit(f)) if f.limit_kbps == 0 => {
                        return Err(ConfigError::new(
                            format!("{path}.response_rate_limit.fixed_limit.limit_kbps"),
                            "value must be greater than or equal to 1",
                        ))
                    }
                    Some(LimitType::FixedLimit(f)) => RateLimit::Fixed(f.limit_kbps),
                    Some(LimitType::HeaderLimit(_)) => RateLimit::Header,
                    None => {
                        return Err(ConfigError::new(
                            format!("{path}.response_rate_limit"),
                            "one of fixed_limit or header_limit is required",
                        ))
                    }
                };
                Some((limit, share(r.percentage.as_ref())))
            }
        };
        Ok(FaultPolicy {
            keys: RuntimeKeys::compile(p),
            delay,
            abort,
            response_rate_limit,
            body: p
                .abort
                .as_ref()
                .map(|a| a.response_body.clone())
                .filter(|b| !b.is_empty()),
            upstream_cluster: Some(p.upstream_cluster.clone()).filter(|c| !c.is_empty()),
            headers: p
                .headers
                .iter()
                .enumerate()
                .map(|(i, h)| compile_header_matcher(h, &format!("{path}.headers[{i}]")))
                .collect::<Result<_, _>>()?,
            downstream_nodes: p.downstream_nodes.clone(),
            max_active_faults: p.max_active_faults.map(|v| i64::from(v.value)),
            disable_downstream_cluster_stats: p.disable_downstream_cluster_stats,
        })
    }

    /// Whether this policy's faults are for the request (`cluster`: where it is routed).
    fn targets(&self, headers: &HeaderMap, pseudo: &Pseudo<'_>, cluster: Option<&str>) -> bool {
        self.upstream_cluster
            .as_deref()
            .is_none_or(|want| cluster == Some(want))
            && (self.downstream_nodes.is_empty()
                || headers
                    .get(&DOWNSTREAM_NODE)
                    .and_then(|v| v.to_str().ok())
                    .is_some_and(|n| self.downstream_nodes.iter().any(|d| d == n)))
            && self.headers.iter().all(|m| m.matches(headers, pseudo))
    }

    /// The delay this request gets, if any (its share and length overridable by the
    /// runtime, a header delay's too, as in Envoy).
    fn delay(&self, headers: &HeaderMap, dc: Option<&DownstreamCluster<'_>>) -> Option<Duration> {
        let (source, share) = self.delay.as_ref()?;
        let runtime = crate::layered_runtime::snapshot();
        let dc_share_key = dc.map(|dc| dc.key("delay.fixed_delay_percent"));
        let share_key = dc_share_key.as_deref().unwrap_or(&self.keys.delay_percent);
        let d = match source {
            Delay::Fixed(d) => {
                if !runtime.fraction(share_key, *share).sample() {
                    return None;
                }
                *d
            }
            Delay::Header => {
                // Past `i64::MAX` Envoy's milliseconds wrap negative: no delay.
                let ms = parse_decimal(headers.get(&DELAY_REQUEST))
                    .filter(|ms| i64::try_from(*ms).is_ok())?;
                let share = header_share(*share, headers.get(&DELAY_PERCENTAGE));
                if !runtime.fraction(share_key, share).sample() {
                    return None;
                }
                Duration::from_millis(ms)
            }
        };
        let ms = u64::try_from(d.as_millis()).unwrap_or(u64::MAX);
        let mut n = runtime.get_integer(&self.keys.delay_duration, ms);
        if let Some(dc) = dc {
            n = runtime.get_integer(&dc.key("delay.fixed_duration_ms"), n);
        }
        let d = match n {
            n if n == ms => d,
            n => Duration::from_millis(n),
        };
        (!d.is_zero()).then_some(d)
    }

    /// The rate (KiB a second) this request's response is paced to, if any: sampled
    /// first (its share overridable by the runtime, narrowed by a header with
    /// `header_limit`), as Envoy's `isResponseRateLimitEnabled`.
    fn response_kbps(&self, headers: &HeaderMap) -> Option<u64> {
        let (limit, share) = self.response_rate_limit.as_ref()?;
        let share = match limit {
            RateLimit::Fixed(_) => *share,
            RateLimit::Header => header_share(*share, headers.get(&THROUGHPUT_PERCENTAGE)),
        };
        let runtime = crate::layered_runtime::snapshot();
        if !runtime
            .fraction(&self.keys.response_rate_limit_percent, share)
            .sample()
        {
            return None;
        }
        match limit {
            RateLimit::Fixed(kbps) => Some(*kbps),
            RateLimit::Header => {
                parse_decimal(headers.get(&THROUGHPUT_RESPONSE)).filter(|kbps| *kbps > 0)
            }
        }
    }

    /// The abort this request gets, if any: an HTTP status, or a gRPC one.
    fn abort(&self, headers: &HeaderMap, dc: Option<&DownstreamCluster<'_>>) -> Option<AbortWith> {
        let (source, share) = self.abort.as_ref()?;
        let runtime = crate::layered_runtime::snapshot();
        // The downstream cluster's key, when there is one, overrides the configured status
        // (not what the policy's key made of it), as Envoy's.
        let status = |key: &str, dc_key: &str, configured: u64| match dc {
            Some(dc) => runtime.get_integer(&dc.key(dc_key), configured),
            None => runtime.get_integer(key, configured),
        };
        let configured = match source {
            Abort::Http(s) => AbortWith::Http(*s),
            Abort::Grpc(g) => AbortWith::Grpc(*g),
            Abort::Header => {
                let http = parse_decimal(headers.get(&ABORT_REQUEST))
                    .filter(|c| (200..600).contains(c))
                    .and_then(|c| StatusCode::from_u16(c as u16).ok());
                let grpc = parse_decimal(headers.get(&ABORT_GRPC_REQUEST))
                    .and_then(|g| u32::try_from(g).ok());
                match (http, grpc) {
                    (Some(s), _) => AbortWith::Http(s),
                    (None, Some(g)) => AbortWith::Grpc(g),
                    (None, None) => return None,
                }
            }
        };
        // The runtime overrides a header's status too, as Envoy's.
        let with = match configured {
            // A runtime status outside Envoy's range leaves the configured one.
            AbortWith::Http(s) => AbortWith::Http(
                u16::try_from(status(
                    &self.keys.abort_http_status,
                    "abort.http_status",
                    u64::from(s.as_u16()),
                ))
                .ok()
                .filter(|s| (200..600).contains(s))
                .and_then(|s| StatusCode::from_u16(s).ok())
                .unwrap_or(s),
            ),
            AbortWith::Grpc(g) => AbortWith::Grpc(
                u32::try_from(status(
                    &self.keys.abort_grpc_status,
                    "abort.grpc_status",
                    u64::from(g),
                ))
                .unwrap_or(g),
            ),
        };
        let share = match source {
            Abort::Header => header_share(*share, headers.get(&ABORT_PERCENTAGE)),
            _ => *share,
        };
        let dc_share_key = dc.map(|dc| dc.key("abort.abort_percent"));
        let share_key = dc_share_key.as_deref().unwrap_or(&self.keys.abort_percent);
        runtime.fraction(share_key, share).sample().then_some(with)
    }
}

/// A configured share, narrowed by a request header's percentage.
fn header_share(configured: Fraction, header: Option<&HeaderValue>) -> Fraction {
    match parse_decimal(header).and_then(|n| u32::try_from(n).ok()) {
        Some(n) => configured.capped(n),
        None => configured,
    }
}

/// How a request is aborted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AbortWith {
    /// This HTTP status.
    Http(StatusCode),
    /// This gRPC status (an HTTP `200`).
    Grpc(u32),
}

/// What the filter does to a request.
pub struct Injection {
    /// Wait this long first.
    pub delay: Option<Duration>,
    /// Then answer (decided after the delay, as Envoy samples it then).
    abort: Option<Arc<FaultPolicy>>,
    /// The policy has a `response_rate_limit`: the request stays an active fault after
    /// its delay.
    rate_limit_configured: bool,
    /// The response is paced to this many KiB a second.
    pub response_kbps: Option<u64>,
    /// The downstream cluster counted with the abort (a request naming one, whose
    /// counters are kept).
    counted_cluster: Option<Box<str>>,
    /// To be held while the request lives: the `active_faults` gauge.
    pub active: ActiveFault,
}

impl Injection {
    /// The abort, sampled now (after any delay), with its body; counted. A delay that
    /// no abort follows stops counting in `active_faults` here, unless the policy limits
    /// response rates (Envoy's `postDelayInjection`).
    pub fn abort(
        &mut self,
        headers: &HeaderMap,
        filter: &FaultFilter,
        worker: usize,
    ) -> Option<(AbortWith, Bytes)> {
        let abort = self.sample_abort(headers, filter, worker);
        if abort.is_none() && self.delay.is_some() && !self.rate_limit_configured {
            self.active = ActiveFault(None);
        }
        abort
    }

    fn sample_abort(
        &mut self,
        headers: &HeaderMap,
        filter: &FaultFilter,
        worker: usize,
    ) -> Option<(AbortWith, Bytes)> {
        let policy = self.abort.as_ref()?;
        let with = policy.abort(headers, DownstreamCluster::of(headers).as_ref())?;
        if !filter.try_activate(policy, &mut self.active, worker) {
            return None;
        }
        filter.aborts_injected.inc(worker);
        if let Some(dc) = &self.counted_cluster {
            filter.count_for_cluster(dc, "aborts_injected", worker);
        }
        let body = policy.body.as_deref().unwrap_or(ABORT_BODY);
        Some((with, Bytes::copy_from_slice(body.as_bytes())))
    }
}

/// A response paced by the fault filter's `response_rate_limit`.
pub struct FaultResponseLimit {
    kbps: u64,
}

impl FaultResponseLimit {
    /// The response's pace: `kbps` KiB a second.
    pub fn new(kbps: u64) -> FaultResponseLimit {
        FaultResponseLimit { kbps }
    }

    /// Paces the response's body through a bucket of its own (Envoy's fault filter
    /// builds a `StreamRateLimiter` per stream, starting with one fill interval's worth),
    /// reading up to `buffer_limit` bytes ahead.
    pub fn on_response(self, resp: &mut Response<ProxyBody>, buffer_limit: usize) {
        use hyper::body::Body as _;
        if resp.body().is_end_stream() {
            return;
        }
        let body = std::mem::replace(resp.body_mut(), ProxyBody::empty());
        *resp.body_mut() = ProxyBody::filtered(PacedBody::new(
            body,
            Arc::new(ByteBucket::for_one_stream(self.kbps)),
            DEFAULT_FILL_INTERVAL,
            buffer_limit,
            Unobserved,
        ));
    }
}

/// The fault filter keeps no stats of its pacing (Envoy's write stats callback is empty).
struct Unobserved;

impl PaceObserver for Unobserved {
    fn incoming(&mut self, _len: usize) {}
    fn allowed(&mut self, _len: u64, _enforced: bool, _fill_interval: Duration) {}
    fn finished(&mut self, _trailers: &mut Option<HeaderMap>) {}
}

/// One fault in progress, counted in `active_faults` until dropped (the request's end).
pub struct ActiveFault(Option<(Arc<Gauge>, usize)>);

impl Drop for ActiveFault {
    fn drop(&mut self) {
        if let Some((gauge, worker)) = self.0.take() {
            gauge.dec(worker);
        }
    }
}

/// A connection manager's fault filter.
pub struct FaultFilter {
    /// The filter's name in `http_filters`: its key in `typed_per_filter_config`.
    pub name: String,
    /// The filter's own `HTTPFault`.
    policy: Arc<FaultPolicy>,
    delays_injected: Arc<Counter>,
    aborts_injected: Arc<Counter>,
    response_rl_injected: Arc<Counter>,
    faults_overflow: Arc<Counter>,
    active_faults: Arc<Gauge>,
    /// `http.<prefix>.fault.`, before a downstream cluster's counters.
    prefix: String,
    per_cluster: DynamicCounters,
}

impl FaultFilter {
    /// The filter named `name`, configured with `policy`, in a connection manager whose
    /// stats are under `http.<prefix>`.
    pub fn new(name: &str, policy: FaultPolicy, prefix: &str, store: &Store) -> FaultFilter {
        let c = |s: &str| store.counter(&format!("http.{prefix}.fault.{s}"));
        FaultFilter {
            name: name.to_string(),
            policy: Arc::new(policy),
            delays_injected: c("delays_injected"),
            aborts_injected: c("aborts_injected"),
            response_rl_injected: c("response_rl_injected"),
            faults_overflow: c("faults_overflow"),
            active_faults: store.gauge(&format!("http.{prefix}.fault.active_faults")),
            prefix: format!("http.{prefix}.fault."),
            per_cluster: DynamicCounters::new(store),
        }
    }

    /// Counts `http.<prefix>.fault.<cluster>.<stat>`.
    fn count_for_cluster(&self, cluster: &str, stat: &str, worker: usize) {
        let name = format!("{}{cluster}.{stat}", self.prefix);
        self.per_cluster.add(&name, worker, 1);
    }

    /// The filter's decision for a request: `route_policy` is the most specific
    /// per-route `HTTPFault` (`None`: the filter's own), `cluster` where the request is
    /// routed. `None` when no fault applies.
    pub fn on_request(
        &self,
        route_policy: Option<&Arc<FaultPolicy>>,
        headers: &HeaderMap,
        pseudo: &Pseudo<'_>,
        cluster: Option<&str>,
        worker: usize,
    ) -> Option<Injection> {
        let policy = route_policy.unwrap_or(&self.policy);
        if !policy.targets(headers, pseudo, cluster) {
            return None;
        }
        let dc = DownstreamCluster::of(headers);
        let counted_cluster = dc
            .as_ref()
            .filter(|dc| {
                !dc.0.is_empty()
                    && !policy.disable_downstream_cluster_stats
                    && !self.policy.disable_downstream_cluster_stats
            })
            .map(|dc| Box::from(dc.0));
        let mut active = ActiveFault(None);
        // As Envoy's: the response rate limit is set up first, then the delay.
        let response_kbps = policy
            .response_kbps(headers)
            .filter(|_| self.try_activate(policy, &mut active, worker));
        if response_kbps.is_some() {
            self.response_rl_injected.inc(worker);
        }
        let delay = policy
            .delay(headers, dc.as_ref())
            .filter(|_| self.try_activate(policy, &mut active, worker));
        if delay.is_some() {
            self.delays_injected.inc(worker);
            if let Some(dc) = &counted_cluster {
                self.count_for_cluster(dc, "delays_injected", worker);
            }
        } else if policy.abort.is_none() && response_kbps.is_none() {
            return None;
        }
        Some(Injection {
            delay,
            abort: policy.abort.is_some().then(|| policy.clone()),
            rate_limit_configured: policy.response_rate_limit.is_some(),
            response_kbps,
            counted_cluster,
            active,
        })
    }

    /// Counts the request as one active fault (once, however many it gets), unless that
    /// would pass `max_active_faults` (`faults_overflow`): then no fault is injected.
    fn try_activate(&self, policy: &FaultPolicy, active: &mut ActiveFault, worker: usize) -> bool {
        if active.0.is_some() {
            return true;
        }
        let max = crate::layered_runtime::snapshot().get_integer(
            &policy.keys.max_active_faults,
            policy
                .max_active_faults
                .map_or(u64::MAX, |m| u64::try_from(m).unwrap_or(0)),
        );
        if u64::try_from(self.active_faults.value()).unwrap_or(0) >= max {
            self.faults_overflow.inc(worker);
            return false;
        }
        self.active_faults.inc(worker);
        *active = ActiveFault(Some((self.active_faults.clone(), worker)));
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::http::conn_manager::headers::test_header_map as headers;
    use courier_proto::envoy::extensions::filters::http::fault::v3::FaultAbort;
    use courier_proto::envoy::r#type::v3::FractionalPercent;

    fn abort_policy(error: fault_abort::ErrorType, numerator: u32) -> FaultPolicy {
        let p = HttpFault {
            abort: Some(FaultAbort {
                error_type: Some(error),
                percentage: Some(FractionalPercent {
                    numerator,
                    denominator: 0,
                }),
                ..Default::default()
            }),
            ..Default::default()
        };
        FaultPolicy::compile(&p, "f").expect("valid fault")
    }

    #[test]
    fn header_aborts_take_valid_statuses_and_narrowed_shares() {
        let p = abort_policy(fault_abort::ErrorType::HeaderAbort(Default::default()), 100);
        let h = |pairs| p.abort(&headers(pairs), None);
        assert_eq!(
            h(&[("x-envoy-fault-abort-request", "429")]),
            Some(AbortWith::Http(StatusCode::TOO_MANY_REQUESTS))
        );
        assert_eq!(h(&[("x-envoy-fault-abort-request", "600")]), None);
        assert_eq!(h(&[("x-envoy-fault-abort-request", "abc")]), None);
        assert_eq!(
            h(&[("x-envoy-fault-abort-grpc-request", "5")]),
            Some(AbortWith::Grpc(5))
        );
        assert_eq!(
            h(&[
                ("x-envoy-fault-abort-request", "429"),
                ("x-envoy-fault-abort-request-percentage", "0")
            ]),
            None
        );
        assert_eq!(h(&[]), None);
    }

    #[test]
    fn response_rate_limits_read_headers_only_with_header_limit() {
        use courier_proto::envoy::extensions::filters::common::fault::v3::{
            fault_rate_limit, FaultRateLimit,
        };
        let policy = |limit, numerator| {
            let p = HttpFault {
                response_rate_limit: Some(FaultRateLimit {
                    limit_type: Some(limit),
                    percentage: Some(FractionalPercent {
                        numerator,
                        denominator: 0,
                    }),
                }),
                ..Default::default()
            };
            FaultPolicy::compile(&p, "f").expect("valid fault")
        };
        let rate = ("x-envoy-fault-throughput-response", "32");
        let header = policy(LimitType::HeaderLimit(Default::default()), 100);
        let kbps = |pairs: &[(&'static str, &'static str)]| header.response_kbps(&headers(pairs));
        assert_eq!(kbps(&[rate]), Some(32));
        assert_eq!(kbps(&[]), None);
        assert_eq!(kbps(&[("x-envoy-fault-throughput-response", "0")]), None);
        assert_eq!(
            kbps(&[rate, ("x-envoy-fault-throughput-response-percentage", "0")]),
            None
        );
        let fixed = policy(
            LimitType::FixedLimit(fault_rate_limit::FixedLimit { limit_kbps: 7 }),
            100,
        );
        assert_eq!(fixed.response_kbps(&headers(&[rate])), Some(7));
        // A fixed limit's share is not narrowed by the percentage header.
        assert_eq!(
            fixed.response_kbps(&headers(&[(
                "x-envoy-fault-throughput-response-percentage",
                "0"
            )])),
            Some(7)
        );
        let none = policy(LimitType::HeaderLimit(Default::default()), 0);
        assert_eq!(none.response_kbps(&headers(&[rate])), None);
    }

    #[test]
    fn unset_percentages_inject_nothing() {
        let mut p = HttpFault {
            abort: Some(FaultAbort {
                error_type: Some(fault_abort::ErrorType::HttpStatus(503)),
                ..Default::default()
            }),
            ..Default::default()
        };
        let none = FaultPolicy::compile(&p, "f").expect("valid fault");
        assert_eq!(none.abort(&HeaderMap::new(), None), None);
        if let Some(a) = p.abort.as_mut() {
            a.error_type = Some(fault_abort::ErrorType::HttpStatus(99));
        }
        assert!(FaultPolicy::compile(&p, "f").is_err());
    }
}
