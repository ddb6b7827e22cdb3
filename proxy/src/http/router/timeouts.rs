//! A request's timeouts as the router holds its attempts to them (Envoy's
//! `FilterUtility::finalTimeout` and per-try timeouts): the deadlines settled before the
//! first attempt, what each attempt tells the upstream of them, and where a response's body
//! is cut off.

use std::sync::Arc;
use std::time::{Duration, Instant};

use http::header::{self, HeaderMap, HeaderValue};
use http::{Response, StatusCode};

use crate::http::codec::body::ProxyBody;
use crate::http::conn_manager::local_reply::{
    is_grpc, local_reply, GRPC_TIMEOUT, UPSTREAM_TIMEOUT,
};
use crate::http::conn_manager::stream_idle::Expiry;
use crate::http::route::RouteAction;
use crate::protocol::stream_limits::StreamEnds;
use crate::stats::Counter;

/// A `grpc-timeout` value for `d`, in milliseconds as Envoy writes it (`300m`), in the
/// next larger unit (seconds, minutes, hours) while it takes more than gRPC's eight digits.
pub(super) fn grpc_timeout_value(d: Duration) -> HeaderValue {
    let mut n = u64::try_from(d.as_millis()).unwrap_or(u64::MAX);
    let mut unit = 'm';
    for (div, next) in [(1000, 'S'), (60, 'M'), (60, 'H')] {
        if n <= 99_999_999 {
            break;
        }
        n /= div;
        unit = next;
    }
    HeaderValue::from_str(&format!("{n}{unit}")).unwrap_or(HeaderValue::from_static("0m"))
}

/// What an upstream timeout answers.
#[derive(Clone, Copy)]
pub(super) enum TimeoutReply {
    /// Envoy's `504 upstream request timeout`.
    GatewayTimeout,
    /// `204` with no body (`x-envoy-upstream-rq-timeout-alt-response`).
    NoContent,
}

impl TimeoutReply {
    pub(super) fn response(self) -> Response<ProxyBody> {
        match self {
            TimeoutReply::GatewayTimeout => {
                local_reply(StatusCode::GATEWAY_TIMEOUT, UPSTREAM_TIMEOUT)
            }
            TimeoutReply::NoContent => {
                let mut r = local_reply(StatusCode::NO_CONTENT, "");
                r.headers_mut().remove(header::CONTENT_LENGTH);
                r
            }
        }
    }
}

/// The timeouts a request is held to besides its route's: its retry policy's per-try
/// timeout, and an internal request's timeout controls, which take precedence.
#[derive(Clone, Copy)]
pub(super) struct TimeoutOverrides {
    /// `x-envoy-upstream-rq-timeout-ms`: the route timeout (`Some(None)`: none).
    pub(super) route: Option<Option<Duration>>,
    /// `x-envoy-upstream-rq-per-try-timeout-ms`, else the retry policy's `per_try_timeout`.
    pub(super) per_try: Option<Duration>,
    /// `x-envoy-upstream-rq-timeout-alt-response`: a timeout answers `204`.
    pub(super) alt_response: bool,
}

/// When a request's attempts must end, settled before the first: kept whole in the
/// request's future, each one a few words.
#[derive(Clone, Copy)]
pub(super) struct Deadlines {
    /// When the router took the request: the route timeout and
    /// `x-envoy-upstream-service-time` count from it.
    pub(super) start: Instant,
    /// The route timeout, as the upstream learns it.
    pub(super) route: Option<Duration>,
    /// The per-try timeout, when shorter than the route's.
    pub(super) per_try: Option<Duration>,
    /// The end of the route timeout.
    pub(super) global: Option<Instant>,
    /// The end of the stream's `max_stream_duration`, an upgrade's tunnel included (Envoy
    /// resets it).
    pub(super) duration: Option<Instant>,
    /// The earlier of the two, which bounds every attempt.
    pub(super) overall: Option<Instant>,
    /// `max_grpc_timeout` (without `max_stream_duration`): each attempt tells the gRPC
    /// server its own deadline.
    pub(super) grpc_per_attempt: bool,
    /// What a timeout answers.
    pub(super) reply: TimeoutReply,
}

impl Deadlines {
    /// The deadlines of a request with `headers` (its `content-type` and `grpc-timeout`)
    /// on `action`, from `start`; `hcm_duration` is the connection manager's
    /// `max_stream_duration`. As Envoy, the gRPC server learns the deadline the proxy holds
    /// it to: `headers` get it as their `grpc-timeout` unless each attempt sends its own.
    #[inline(always)]
    pub(super) fn new(
        start: Instant,
        headers: &mut HeaderMap,
        action: &RouteAction,
        overrides: TimeoutOverrides,
        hcm_duration: Option<Duration>,
        upgrade: bool,
    ) -> Deadlines {
        let grpc = is_grpc(headers);
        let mut timeouts = action.timeouts(
            grpc,
            headers
                .get(GRPC_TIMEOUT)
                .and_then(|v| crate::http::route::parse_grpc_timeout(v.as_bytes())),
            hcm_duration,
        );
        timeouts.route = overrides.route.unwrap_or(timeouts.route);
        // As Envoy, a per-try timeout no shorter than the route's is no per-try timeout.
        let per_try = overrides
            .per_try
            .filter(|p| timeouts.route.is_none_or(|t| *p < t));
        let global = timeouts.route.map(|t| start + t);
        let duration = timeouts.duration.map(|d| start + d);
        let grpc_per_attempt = grpc
            && !upgrade
            && action.max_grpc_timeout.is_some()
            && action.stream_duration.is_none();
        if let Some(t) = timeouts
            .grpc_timeout
            .filter(|_| !upgrade && !grpc_per_attempt)
        {
            headers.insert(GRPC_TIMEOUT, grpc_timeout_value(t));
        }
        let overall = match (global, duration) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        };
        Deadlines {
            start,
            route: timeouts.route,
            per_try,
            global,
            duration,
            overall,
            grpc_per_attempt,
            reply: match overrides.alt_response {
                true => TimeoutReply::NoContent,
                false => TimeoutReply::GatewayTimeout,
            },
        }
    }

    /// Whether the route timeout or the stream's duration has run out: no attempt follows.
    #[inline(always)]
    pub(super) fn overall_passed(&self) -> bool {
        self.overall.is_some_and(|d| Instant::now() >= d)
    }

    /// Whether the route timeout has run out.
    #[inline(always)]
    pub(super) fn route_passed(&self) -> bool {
        self.global.is_some_and(|d| Instant::now() >= d)
    }

    /// Whether the stream's `max_stream_duration` has run out.
    #[inline(always)]
    pub(super) fn duration_passed(&self) -> bool {
        self.duration.is_some_and(|d| Instant::now() >= d)
    }

    /// The deadline of an attempt starting now: its per-try timeout, within the overall one.
    #[inline(always)]
    pub(super) fn for_attempt(&self) -> Option<Instant> {
        match (self.per_try.map(|p| Instant::now() + p), self.overall) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }

    /// The time attempt number `attempt` is held to, in milliseconds, as the upstream learns
    /// it: the route timeout left, capped by the per-try timeout. The whole timeout on the
    /// first attempt, less what earlier attempts used on a retry (as Envoy; measuring the
    /// first attempt's few microseconds made it 299 under load).
    #[inline(always)]
    pub(super) fn expected_ms(&self, attempt: u32) -> Option<u64> {
        let elapsed = if attempt == 1 {
            0
        } else {
            self.start.elapsed().as_millis() as u64
        };
        let left = self
            .route
            .map(|t| (t.as_millis() as u64).saturating_sub(elapsed));
        let per_try_ms = self.per_try.map(|p| p.as_millis() as u64);
        match (left, per_try_ms) {
            (Some(t), Some(p)) => Some(t.min(p)),
            (t, p) => t.or(p),
        }
    }

    /// Where a response's body still arriving is cut off, what counts it, and as what:
    /// Envoy's route timeout spans the whole response (`route_timeout` counts it), unless
    /// the stream's duration (`stream_duration` counts it) ends first; the cluster's
    /// `max_stream_duration` (`ends`, counted in `cluster_duration`) resets the upstream
    /// stream, the body included.
    #[inline(always)]
    pub(super) fn body_cut<'c>(
        &self,
        ends: Option<&StreamEnds>,
        route_timeout: &'c Arc<Counter>,
        stream_duration: &'c Arc<Counter>,
        cluster_duration: &'c Arc<Counter>,
    ) -> Option<(Instant, &'c Arc<Counter>, Expiry)> {
        let cut = match (self.global, self.duration) {
            (Some(g), Some(d)) if d < g => Some((d, stream_duration, Expiry::Route)),
            (Some(g), _) => Some((g, route_timeout, Expiry::Route)),
            (None, Some(d)) => Some((d, stream_duration, Expiry::Route)),
            (None, None) => None,
        };
        match (cut, ends) {
            (Some(c), Some(e)) if c.0 <= e.0 => Some(c),
            (_, Some(e)) => Some((e.0, cluster_duration, Expiry::UpstreamDuration)),
            (c, None) => c,
        }
    }
}
