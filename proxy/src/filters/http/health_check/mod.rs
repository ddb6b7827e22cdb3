//! The health check filter (`envoy.filters.http.health_check`): the proxy answers a load
//! balancer's health checks itself, `200` while it passes and `503` once
//! `/healthcheck/fail` was posted.
//!
//! As Envoy 1.40 (measured, `tests/http_health_fail.rs`):
//!
//! - A request matching `headers` (pseudo-headers included, `:path` with its query) is a
//!   health check. Without `pass_through_mode` it is answered `200` with no body, or `503`
//!   while the server fails its health checks; with it, it goes upstream, and only a
//!   failing server answers it (`503`).
//! - A health check's response carries `x-envoy-upstream-healthchecked-cluster` (the
//!   node's cluster, `--service-cluster`); while the server fails, every response through
//!   the filter carries `x-envoy-immediate-health-check-fail: true` (and the connection
//!   manager drain-closes the connection).
//! - `http.<stat_prefix>.health_check.request_total`, `ok` and `failed` count the answers
//!   the filter gives.
//!
//! Refused as unsupported: `cache_time` and `cluster_min_healthy_percentages`.

use std::sync::Arc;

use courier_proto::envoy::extensions::filters::http::health_check::v3::HealthCheck;
use http::header::HeaderName;
use http::{HeaderMap, HeaderValue, Response, StatusCode};

use crate::config::ConfigError;
use crate::http::codec::body::ProxyBody;
use crate::http::route::{compile_header_matcher, HeaderMatcher, Pseudo};
use crate::stats::{Counter, Store};

/// The filter's config type.
pub const FILTER_TYPE: &str = "envoy.extensions.filters.http.health_check.v3.HealthCheck";
/// The filter's well-known name (an HTTP filter without `typed_config`).
pub const FILTER_NAME: &str = "envoy.filters.http.health_check";

static HEALTHCHECKED_CLUSTER: HeaderName =
    HeaderName::from_static("x-envoy-upstream-healthchecked-cluster");
static IMMEDIATE_FAIL: HeaderName = HeaderName::from_static("x-envoy-immediate-health-check-fail");

/// A connection manager's health check filter.
pub struct HealthCheckFilter {
    /// The filter's name in `http_filters`.
    pub name: String,
    pass_through: bool,
    headers: Vec<HeaderMatcher>,
    /// The node's cluster, for `x-envoy-upstream-healthchecked-cluster`.
    cluster: HeaderValue,
    request_total: Arc<Counter>,
    ok: Arc<Counter>,
    failed: Arc<Counter>,
}

/// What the filter made of a request.
pub enum HealthCheckRequest {
    /// Not a health check (the response is only marked while the server fails).
    Pass,
    /// A health check that goes upstream: its response is marked.
    PassThrough,
    /// A health check answered here.
    Answer(Box<Response<ProxyBody>>),
}

impl HealthCheckFilter {
    /// Compiles the filter named `name` (its `HealthCheck` at `path`) of a connection
    /// manager whose stats are under `http.<prefix>`.
    pub fn compile(
        name: &str,
        p: &HealthCheck,
        path: &str,
        prefix: &str,
        store: &Store,
    ) -> Result<HealthCheckFilter, ConfigError> {
        let Some(pass_through) = p.pass_through_mode.map(|b| b.value) else {
            return Err(ConfigError::new(
                format!("{path}.pass_through_mode"),
                "value is required",
            ));
        };
        for (field, set) in [
            ("cache_time", p.cache_time.is_some()),
            (
                "cluster_min_healthy_percentages",
                !p.cluster_min_healthy_percentages.is_empty(),
            ),
        ] {
            if set {
                return Err(ConfigError::unsupported(format!("{path}.{field}")));
            }
        }
        let c = |s: &str| store.counter(&format!("http.{prefix}.health_check.{s}"));
        // Shown as Envoy shows them, though nothing here moves them.
        for unused in [
            "cached_response",
            "degraded",
            "failed_cluster_empty",
            "failed_cluster_not_found",
            "failed_cluster_unhealthy",
        ] {
            let _ = c(unused);
        }
        Ok(HealthCheckFilter {
            name: name.to_string(),
            pass_through,
            headers: p
                .headers
                .iter()
                .enumerate()
                .map(|(i, h)| compile_header_matcher(h, &format!("{path}.headers[{i}]")))
                .collect::<Result<_, _>>()?,
            cluster: HeaderValue::from_str(crate::server::local_info::service_cluster())
                .unwrap_or_else(|_| HeaderValue::from_static("")),
            request_total: c("request_total"),
            ok: c("ok"),
            failed: c("failed"),
        })
    }

    /// The filter's decision for a request (`failed`: the server fails its health checks).
    pub fn on_request(
        &self,
        headers: &HeaderMap,
        pseudo: &Pseudo<'_>,
        failed: bool,
        worker: usize,
    ) -> HealthCheckRequest {
        if !self.headers.iter().all(|m| m.matches(headers, pseudo)) {
            return HealthCheckRequest::Pass;
        }
        if self.pass_through && !failed {
            return HealthCheckRequest::PassThrough;
        }
        self.request_total.inc(worker);
        let status = if failed {
            self.failed.inc(worker);
            StatusCode::SERVICE_UNAVAILABLE
        } else {
            self.ok.inc(worker);
            StatusCode::OK
        };
        let mut r = crate::http::conn_manager::local_reply::local_reply(status, "");
        self.mark(r.headers_mut(), true, failed);
        HealthCheckRequest::Answer(Box::new(r))
    }

    /// Marks a response that passes through the filter: a health check's names the
    /// node's cluster, any names a failing server.
    pub fn mark(&self, headers: &mut HeaderMap, health_check: bool, failed: bool) {
        if health_check {
            headers.insert(HEALTHCHECKED_CLUSTER.clone(), self.cluster.clone());
        }
        if failed {
            headers.insert(IMMEDIATE_FAIL.clone(), HeaderValue::from_static("true"));
        }
    }
}
