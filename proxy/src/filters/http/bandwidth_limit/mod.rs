//! Bandwidth limiting (`envoy.filters.http.bandwidth_limit`): request and response bodies
//! paced to `limit_kbps` ([`crate::filters::http::stream_rate_limiter`]).
//!
//! As Envoy 1.40 (measured, `tests/http_bandwidth_limit.rs`):
//!
//! - `enable_mode` picks the bodies paced: `REQUEST`, `RESPONSE`, both, or none
//!   (`DISABLED`, the default); `runtime_enabled` (unset: on) is read for each request
//!   and each response.
//! - The most specific `typed_per_filter_config` `BandwidthLimit` (route, virtual host,
//!   route configuration) replaces the filter's own whole, its stats (under its own
//!   `stat_prefix`) and its bucket too; a per-route one must set `limit_kbps`.
//! - A config's bucket holds `limit_kbps` KiB, starts full and refills at `limit_kbps`
//!   KiB a second; it is shared by every stream of that config, on every worker (an
//!   atomic word, where Envoy's takes a mutex). The first second's worth of a config's
//!   traffic goes at once; then ticks every `fill_interval` (default 50 ms, 20 ms to
//!   1 s) let out what the bucket has.
//! - `enable_response_trailers` ends a paced response body with the trailers
//!   `bandwidth-request-delay-ms` and `bandwidth-response-delay-ms` (the bodies' transfer
//!   times) and `bandwidth-request-filter-delay-ms`, `bandwidth-response-filter-delay-ms`
//!   (the fill intervals the bodies waited), each when above 0 ms, after
//!   `response_trailer_prefix` and `-` when set. (HTTP/1.1 responses carry trailers only
//!   chunked, with `enable_trailers`.)
//! - Stats under `<stat_prefix>.http_bandwidth_limit.`: counters `request_enabled`,
//!   `response_enabled` (a stream the mode paces, body or not), `request_enforced`,
//!   `response_enforced` (ticks that left bytes waiting), `*_incoming_total_size`,
//!   `*_allowed_total_size` (bytes in, bytes let out); gauges `*_pending` (bodies being
//!   paced), `*_incoming_size`, `*_allowed_size` (the last frame in, the last tick's
//!   bytes); histograms `*_transfer_duration` (ms, first byte in to last byte out).
//!
//! Unlike Envoy's, a body cut off mid-way (its client gone) leaves `*_pending`: Envoy's
//! stays raised for good (see DIFFERENCES.md).

use std::cell::Cell;
use std::rc::Rc;
use std::sync::Arc;
use std::time::{Duration, Instant};

use courier_proto::envoy::extensions::filters::http::bandwidth_limit::v3::{
    bandwidth_limit::EnableMode, BandwidthLimit,
};
use http::header::HeaderName;
use http::{HeaderMap, HeaderValue, Request, Response};
use hyper::body::Body as _;

use crate::config::{self, ConfigError};
use crate::filters::http::stream_rate_limiter::{
    ByteBucket, PaceObserver, PacedBody, DEFAULT_FILL_INTERVAL,
};
use crate::http::codec::body::ProxyBody;
use crate::http::route::per_filter::{self, FilterConfigs};
use crate::layered_runtime::RuntimeFlag;
use crate::stats::{Counter, Gauge, Histogram, Store};

/// The filter's config type, also the per-route config's.
pub const FILTER_TYPE: &str = "envoy.extensions.filters.http.bandwidth_limit.v3.BandwidthLimit";
/// The filter's well-known name.
pub const FILTER_NAME: &str = "envoy.filters.http.bandwidth_limit";

/// One direction's stats (`request_*` or `response_*`).
struct DirectionStats {
    enabled: Arc<Counter>,
    enforced: Arc<Counter>,
    pending: Arc<Gauge>,
    incoming_size: Arc<Gauge>,
    allowed_size: Arc<Gauge>,
    incoming_total_size: Arc<Counter>,
    allowed_total_size: Arc<Counter>,
    transfer_duration: Arc<Histogram>,
}

impl DirectionStats {
    fn new(store: &Store, prefix: &str, dir: &str) -> DirectionStats {
        let name = |s: &str| format!("{prefix}.http_bandwidth_limit.{dir}_{s}");
        DirectionStats {
            enabled: store.counter(&name("enabled")),
            enforced: store.counter(&name("enforced")),
            pending: store.gauge(&name("pending")),
            incoming_size: store.gauge(&name("incoming_size")),
            allowed_size: store.gauge(&name("allowed_size")),
            incoming_total_size: store.counter(&name("incoming_total_size")),
            allowed_total_size: store.counter(&name("allowed_total_size")),
            transfer_duration: store.histogram(&name("transfer_duration")),
        }
    }
}

/// The delay trailers' names (`enable_response_trailers`).
struct Trailers {
    request: HeaderName,
    response: HeaderName,
    request_filter: HeaderName,
    response_filter: HeaderName,
}

impl Trailers {
    fn compile(prefix: &str, path: &str) -> Result<Trailers, ConfigError> {
        let name = |base: &str| {
            let full = match prefix {
                "" => base.to_string(),
                p => format!("{}-{base}", p.to_ascii_lowercase()),
            };
            HeaderName::from_bytes(full.as_bytes()).map_err(|_| {
                ConfigError::new(
                    format!("{path}.response_trailer_prefix"),
                    format!("{full:?} is not a header name"),
                )
            })
        };
        Ok(Trailers {
            request: name("bandwidth-request-delay-ms")?,
            response: name("bandwidth-response-delay-ms")?,
            request_filter: name("bandwidth-request-filter-delay-ms")?,
            response_filter: name("bandwidth-response-filter-delay-ms")?,
        })
    }
}

/// A compiled `BandwidthLimit`: the filter's own, or a route's.
pub struct BandwidthConfig {
    request: bool,
    response: bool,
    fill_interval: Duration,
    enabled: RuntimeFlag,
    /// Shared by every stream of this config, on every worker.
    bucket: Arc<ByteBucket>,
    /// Set with `enable_response_trailers`.
    trailers: Option<Trailers>,
    request_stats: DirectionStats,
    response_stats: DirectionStats,
}

impl BandwidthConfig {
    /// Compiles a `BandwidthLimit` at `path`; a per-route one must set `limit_kbps`.
    pub fn compile(
        p: &BandwidthLimit,
        path: &str,
        per_route: bool,
        store: &Store,
    ) -> Result<BandwidthConfig, ConfigError> {
        if p.stat_prefix.is_empty() {
            return Err(ConfigError::new(
                format!("{path}.stat_prefix"),
                "value length must be at least 1 characters",
            ));
        }
        let mode = EnableMode::try_from(p.enable_mode).map_err(|_| {
            ConfigError::new(
                format!("{path}.enable_mode"),
                "value must be one of the defined enum values",
            )
        })?;
        if p.limit_kbps.is_some_and(|l| l.value == 0) {
            return Err(ConfigError::new(
                format!("{path}.limit_kbps"),
                "value must be greater than or equal to 1",
            ));
        }
        if per_route && p.limit_kbps.is_none() {
            return Err(ConfigError::new(
                format!("{path}.limit_kbps"),
                "limit must be set for per route filter config",
            ));
        }
        let fill_interval = config::duration_or(
            p.fill_interval.as_ref(),
            DEFAULT_FILL_INTERVAL,
            &format!("{path}.fill_interval"),
        )?;
        if !(Duration::from_millis(20)..=Duration::from_secs(1)).contains(&fill_interval) {
            return Err(ConfigError::new(
                format!("{path}.fill_interval"),
                "value must be inside range [20ms, 1s]",
            ));
        }
        if p.response_trailer_prefix.contains(['\0', '\r', '\n']) {
            return Err(ConfigError::new(
                format!("{path}.response_trailer_prefix"),
                "value does not match regex pattern \"^[^\\u0000\\u000A\\u000D]*$\"",
            ));
        }
        let enabled = crate::filters::network::common::runtime_enabled(p.runtime_enabled.as_ref())
            .map_err(|e| e.at(path))?;
        Ok(BandwidthConfig {
            request: matches!(mode, EnableMode::Request | EnableMode::RequestAndResponse),
            response: matches!(mode, EnableMode::Response | EnableMode::RequestAndResponse),
            fill_interval,
            enabled,
            bucket: Arc::new(ByteBucket::full(p.limit_kbps.map_or(0, |l| l.value))),
            trailers: p
                .enable_response_trailers
                .then(|| Trailers::compile(&p.response_trailer_prefix, path))
                .transpose()?,
            request_stats: DirectionStats::new(store, &p.stat_prefix, "request"),
            response_stats: DirectionStats::new(store, &p.stat_prefix, "response"),
        })
    }
}

/// A connection manager's bandwidth limit filter.
pub struct BandwidthLimitFilter {
    /// The filter's name in `http_filters`: its key in `typed_per_filter_config`.
    pub name: String,
    config: Arc<BandwidthConfig>,
}

impl BandwidthLimitFilter {
    /// The filter named `name` with its own config (the connection manager's stat prefix
    /// is not used: the stats are under the config's own).
    pub fn compile(
        name: &str,
        p: &BandwidthLimit,
        path: &str,
        _stat_prefix: &str,
        store: &Store,
    ) -> Result<BandwidthLimitFilter, ConfigError> {
        Ok(BandwidthLimitFilter {
            name: name.to_string(),
            config: Arc::new(BandwidthConfig::compile(p, path, false, store)?),
        })
    }

    /// The filter on a request: its body paced when the config says so (`buffer_limit`:
    /// how far ahead it is read); what the response's pass needs.
    pub fn on_request(
        &self,
        levels: [&FilterConfigs; 3],
        req: &mut Request<ProxyBody>,
        buffer_limit: usize,
        worker: usize,
    ) -> BandwidthResponse {
        let config = per_filter::policy_arc::<BandwidthConfig>(levels, &self.name)
            .unwrap_or_else(|| self.config.clone());
        let delays = config.trailers.as_ref().map(|_| Rc::new(Delays::default()));
        if config.request && config.enabled.enabled() {
            config.request_stats.enabled.inc(worker);
            if !req.body().is_end_stream() {
                let body = std::mem::replace(req.body_mut(), ProxyBody::empty());
                let observer = Observer::new(&config, Direction::Request, delays.clone(), worker);
                *req.body_mut() = ProxyBody::filtered(PacedBody::new(
                    body,
                    config.bucket.clone(),
                    config.fill_interval,
                    buffer_limit,
                    observer,
                ));
            }
        }
        BandwidthResponse { config, delays }
    }
}

/// The filter's response pass for one request.
pub struct BandwidthResponse {
    config: Arc<BandwidthConfig>,
    /// What the request's pacing took, for the response's trailers.
    delays: Option<Rc<Delays>>,
}

impl BandwidthResponse {
    /// Paces the response's body when the config says so.
    pub fn on_response(self, resp: &mut Response<ProxyBody>, buffer_limit: usize, worker: usize) {
        let config = &self.config;
        if !(config.response && config.enabled.enabled()) {
            return;
        }
        config.response_stats.enabled.inc(worker);
        if resp.body().is_end_stream() {
            return;
        }
        let body = std::mem::replace(resp.body_mut(), ProxyBody::empty());
        let observer = Observer::new(config, Direction::Response, self.delays.clone(), worker);
        *resp.body_mut() = ProxyBody::filtered(PacedBody::new(
            body,
            config.bucket.clone(),
            config.fill_interval,
            buffer_limit,
            observer,
        ));
    }
}

/// What a stream's request pacing took, for its response's trailers.
#[derive(Default)]
struct Delays {
    /// The request body's transfer time.
    request: Cell<Duration>,
    /// The fill intervals it waited.
    request_filter: Cell<Duration>,
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Direction {
    Request,
    Response,
}

/// One body's pacing as the filter counts it.
struct Observer {
    config: Arc<BandwidthConfig>,
    direction: Direction,
    delays: Option<Rc<Delays>>,
    worker: usize,
    /// When the first data came (the transfer, counted in `*_pending`, started).
    started: Option<Instant>,
    /// The fill intervals this body waited.
    waited: Duration,
}

impl Observer {
    fn new(
        config: &Arc<BandwidthConfig>,
        direction: Direction,
        delays: Option<Rc<Delays>>,
        worker: usize,
    ) -> Observer {
        Observer {
            config: config.clone(),
            direction,
            delays,
            worker,
            started: None,
            waited: Duration::ZERO,
        }
    }

    fn stats(&self) -> &DirectionStats {
        match self.direction {
            Direction::Request => &self.config.request_stats,
            Direction::Response => &self.config.response_stats,
        }
    }
}

/// Milliseconds as a trailer's value.
fn ms_value(d: Duration) -> HeaderValue {
    HeaderValue::from(u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

impl PaceObserver for Observer {
    fn incoming(&mut self, len: usize) {
        let stats = self.stats();
        if self.started.is_none() {
            stats.pending.inc(self.worker);
        }
        // A set-only gauge: the last frame's, whichever worker set it.
        stats.incoming_size.set(len as i64);
        stats.incoming_total_size.add(self.worker, len as u64);
        self.started.get_or_insert_with(Instant::now);
    }

    fn allowed(&mut self, len: u64, enforced: bool, fill_interval: Duration) {
        let stats = self.stats();
        stats
            .allowed_size
            .set(i64::try_from(len).unwrap_or(i64::MAX));
        stats.allowed_total_size.add(self.worker, len);
        if enforced {
            stats.enforced.inc(self.worker);
            self.waited += fill_interval;
        }
    }

    fn finished(&mut self, trailers: &mut Option<HeaderMap>) {
        let Some(started) = self.started.take() else {
            return;
        };
        let took = started.elapsed();
        let stats = self.stats();
        stats.pending.dec(self.worker);
        stats.transfer_duration.record(
            self.worker,
            u64::try_from(took.as_millis()).unwrap_or(u64::MAX),
        );
        let Some(delays) = &self.delays else {
            return;
        };
        match self.direction {
            Direction::Request => {
                delays.request.set(took);
                delays.request_filter.set(self.waited);
            }
            Direction::Response => {
                let Some(names) = &self.config.trailers else {
                    return;
                };
                let t = trailers.get_or_insert_with(HeaderMap::new);
                let ms = Duration::from_millis(1);
                for (name, d) in [
                    (&names.request, delays.request.get()),
                    (&names.request_filter, delays.request_filter.get()),
                    (&names.response, took),
                    (&names.response_filter, self.waited),
                ] {
                    if d >= ms {
                        t.insert(name.clone(), ms_value(d));
                    }
                }
                if t.is_empty() {
                    *trailers = None;
                }
            }
        }
    }
}

impl Drop for Observer {
    fn drop(&mut self) {
        // A body cut off mid-way: its transfer is no longer pending.
        if self.started.is_some() {
            self.stats().pending.dec(self.worker);
        }
    }
}
