//! The global rate limit filter (`envoy.filters.http.ratelimit`): a request's rate limit
//! descriptors go to a rate limit service (`envoy.service.ratelimit.v3.RateLimitService`)
//! which says whether the request is over a limit.
//!
//! As Envoy 1.40 (measured, `tests/http_ratelimit.rs`):
//!
//! - Only routed requests of the configured `request_type` (`internal`, `external`,
//!   `both`) whose route names a cluster are checked, at the filter's `stage`, with the
//!   route's and virtual host's `rate_limits` (as `vh_rate_limits` and
//!   `include_vh_rate_limits` say) or the filter's own; no descriptor, no call.
//! - `OK`: the request goes on with the service's `request_headers_to_add`; its answer
//!   gets the service's `response_headers_to_add`. `OVER_LIMIT`: `429`
//!   (`rate_limited_status`) with `x-envoy-ratelimited: true` (unless
//!   `disable_x_envoy_ratelimited_header`), the service's headers and body, flag `RL`,
//!   details `request_rate_limited`; gRPC requests get `RESOURCE_EXHAUSTED` under
//!   `rate_limited_as_resource_exhausted`. A call that fails or outlives `timeout` (20 ms
//!   by default) lets the request go on unless `failure_mode_deny`, which answers
//!   `status_on_error` (500), flag `RLSE`, details `rate_limiter_error`.
//! - Counters in the routed cluster's scope: `cluster.<c>.ratelimit.[<stat_prefix>.]{ok,
//!   over_limit,error,failure_mode_allowed}`, and an over-limit request's status charged
//!   as the cluster's `upstream_rq_<code>`.
//! - `RateLimitPerRoute`: `vh_rate_limits`, its own `rate_limits` (replacing the
//!   route's) and `domain`.
//!
//! - `enable_x_ratelimit_headers: DRAFT_VERSION_03`: the answer (allowed or not) gets
//!   `x-ratelimit-limit` (the tightest descriptor's limit, then each limit's quota
//!   policy, `, <n>;w=<seconds>[;name="<name>"]`), `x-ratelimit-remaining` and
//!   `x-ratelimit-reset` from the service's descriptor statuses.
//!
//! Refused by path: `enable_retry_after_header`,
//! `failure_mode_deny_percent`, `metadata_namespace`, `filter_enforced`, and a per-route
//! `override_option`. The service's dynamic metadata is not kept: nothing in Courier
//! reads it.

use std::time::Duration;

use bytes::Bytes;
use courier_proto::envoy::config::core::v3::HeaderValue as PbHeaderValue;
use courier_proto::envoy::extensions::common::ratelimit::v3 as common_pb;
use courier_proto::envoy::extensions::filters::http::ratelimit::v3 as pb;
use courier_proto::envoy::service::ratelimit::v3::rate_limit_response::Code;
use courier_proto::envoy::service::ratelimit::v3::{RateLimitRequest, RateLimitResponse};
use http::{HeaderMap, HeaderName, HeaderValue, Response, StatusCode};
use prost::Message as _;

use crate::config::ConfigError;
use crate::http::codec::body::ProxyBody;
use crate::http::route::per_filter::{self, FilterConfigs};
use crate::http::route::rate_limits::{
    Descriptor, DescriptorSource, Level, RateLimitView, RateLimits, VhRateLimits,
};
use crate::layered_runtime::RuntimeFraction;
use crate::protocol::header_mutations::{FormatContext, HeaderMutations};
use crate::protocol::message::{RequestMessage, ResponseMessage};
use crate::upstream::async_client::grpc::GrpcClient;

/// The filter's config type.
pub const FILTER_TYPE: &str = "envoy.extensions.filters.http.ratelimit.v3.RateLimit";
/// The filter's well-known name.
pub const FILTER_NAME: &str = "envoy.filters.http.ratelimit";
/// The per-route config's type.
pub const PER_ROUTE_TYPE: &str = "envoy.extensions.filters.http.ratelimit.v3.RateLimitPerRoute";
/// Response code details of a request over a limit.
pub const RATE_LIMITED: &str = "request_rate_limited";
/// Response code details of a request refused for want of an answer.
pub const RATE_LIMITER_ERROR: &str = "rate_limiter_error";

const SHOULD_RATE_LIMIT: &str = "/envoy.service.ratelimit.v3.RateLimitService/ShouldRateLimit";
const DEFAULT_TIMEOUT: Duration = Duration::from_millis(20);

/// Which requests the filter checks (`request_type`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum RequestType {
    Internal,
    External,
    Both,
}

/// A compiled `RateLimit`.
pub struct RateLimitFilter {
    /// The filter's name in the chain.
    pub name: String,
    domain: String,
    stage: u32,
    request_type: RequestType,
    /// The rate limit service.
    pub service: GrpcClient,
    /// The call's timeout.
    pub timeout: Duration,
    failure_mode_deny: bool,
    /// `enable_x_ratelimit_headers: DRAFT_VERSION_03`.
    x_ratelimit_headers: bool,
    resource_exhausted: bool,
    ratelimited_header: bool,
    rate_limited_status: StatusCode,
    status_on_error: StatusCode,
    response_headers: HeaderMutations,
    enabled: Option<RuntimeFraction>,
    own: Option<Box<RateLimits>>,
    /// The counters' leaves (`ratelimit.[<stat_prefix>.]ok`, …).
    leaves: Leaves,
}

/// The counters' leaf names in the routed cluster's scope.
pub struct Leaves {
    /// `…ok`.
    pub ok: Box<str>,
    /// `…over_limit`.
    pub over_limit: Box<str>,
    /// `…error`.
    pub error: Box<str>,
    /// `…failure_mode_allowed`.
    pub failure_mode_allowed: Box<str>,
}

/// A route's `RateLimitPerRoute`.
pub struct RateLimitPerRoute {
    vh_rate_limits: VhRateLimits,
    own: Option<Box<RateLimits>>,
    domain: Option<String>,
}

impl RateLimitPerRoute {
    /// Compiles a `RateLimitPerRoute` at `path`.
    pub fn compile(proto: &pb::RateLimitPerRoute, path: &str) -> Result<Self, ConfigError> {
        if proto.override_option != 0 {
            return Err(ConfigError::unsupported(format!("{path}.override_option")));
        }
        Ok(RateLimitPerRoute {
            vh_rate_limits: VhRateLimits::of(proto.vh_rate_limits),
            own: RateLimits::compile(
                &proto.rate_limits,
                &format!("{path}.rate_limits"),
                Level::Filter,
            )?,
            domain: (!proto.domain.is_empty()).then(|| proto.domain.clone()),
        })
    }
}

fn status_code(
    code: Option<i32>,
    path: &str,
    default: StatusCode,
) -> Result<StatusCode, ConfigError> {
    match code {
        None | Some(0) => Ok(default),
        Some(code) => {
            courier_proto::envoy::r#type::v3::StatusCode::try_from(code).map_err(|_| {
                ConfigError::new(path, "value must be one of the defined enum values")
            })?;
            Ok(u16::try_from(code)
                .ok()
                .and_then(|c| StatusCode::from_u16(c).ok())
                .unwrap_or(default))
        }
    }
}

fn leaf(prefix: &str, name: &str) -> Box<str> {
    if prefix.is_empty() {
        format!("ratelimit.{name}").into()
    } else {
        format!("ratelimit.{prefix}.{name}").into()
    }
}

impl RateLimitFilter {
    /// Compiles the filter at `path`.
    pub fn compile(name: &str, proto: &pb::RateLimit, path: &str) -> Result<Self, ConfigError> {
        for (field, set) in [
            ("enable_retry_after_header", proto.enable_retry_after_header),
            (
                "failure_mode_deny_percent",
                proto.failure_mode_deny_percent.is_some(),
            ),
            ("metadata_namespace", !proto.metadata_namespace.is_empty()),
            ("filter_enforced", proto.filter_enforced.is_some()),
        ] {
            if set {
                return Err(ConfigError::unsupported(format!("{path}.{field}")));
            }
        }
        if proto.domain.is_empty() {
            return Err(ConfigError::new(
                format!("{path}.domain"),
                "value length must be at least 1 characters",
            ));
        }
        if proto.stage > 10 {
            return Err(ConfigError::new(
                format!("{path}.stage"),
                "value must be less than or equal to 10",
            ));
        }
        let request_type = match proto.request_type.as_str() {
            "" | "both" => RequestType::Both,
            "internal" => RequestType::Internal,
            "external" => RequestType::External,
            other => {
                return Err(ConfigError::new(
                    format!("{path}.request_type"),
                    format!("'{other}' is not one of internal, external, both"),
                ))
            }
        };
        let Some(rls) = &proto.rate_limit_service else {
            return Err(ConfigError::new(
                format!("{path}.rate_limit_service"),
                "value is required",
            ));
        };
        let rls_path = format!("{path}.rate_limit_service");
        #[allow(deprecated)]
        if rls.transport_api_version
            == courier_proto::envoy::config::core::v3::ApiVersion::V2 as i32
        {
            return Err(ConfigError::new(
                format!("{rls_path}.transport_api_version"),
                "V2 is not supported (Envoy refuses it): use V3",
            ));
        }
        let Some(grpc) = &rls.grpc_service else {
            return Err(ConfigError::new(
                format!("{rls_path}.grpc_service"),
                "value is required",
            ));
        };
        let service = GrpcClient::compile(grpc, &format!("{rls_path}.grpc_service"))?;
        let timeout = match &proto.timeout {
            Some(d) => crate::config::duration(d, &format!("{path}.timeout"))?,
            None => DEFAULT_TIMEOUT,
        };
        let rate_limited_status = status_code(
            proto.rate_limited_status.as_ref().map(|s| s.code),
            &format!("{path}.rate_limited_status.code"),
            StatusCode::TOO_MANY_REQUESTS,
        )?;
        // As Envoy, a rate limited status below 400 is answered 429.
        let rate_limited_status = if rate_limited_status.as_u16() < 400 {
            StatusCode::TOO_MANY_REQUESTS
        } else {
            rate_limited_status
        };
        let prefix = &proto.stat_prefix;
        Ok(RateLimitFilter {
            name: name.to_owned(),
            domain: proto.domain.clone(),
            stage: proto.stage,
            request_type,
            service,
            timeout,
            failure_mode_deny: proto.failure_mode_deny,
            x_ratelimit_headers: proto.enable_x_ratelimit_headers == 1,
            resource_exhausted: proto.rate_limited_as_resource_exhausted,
            ratelimited_header: !proto.disable_x_envoy_ratelimited_header,
            rate_limited_status,
            status_on_error: status_code(
                proto.status_on_error.as_ref().map(|s| s.code),
                &format!("{path}.status_on_error.code"),
                StatusCode::INTERNAL_SERVER_ERROR,
            )?,
            response_headers: HeaderMutations::compile(
                &proto.response_headers_to_add,
                &[],
                &format!("{path}.response_headers_to_add"),
                "",
            )?,
            enabled: proto
                .filter_enabled
                .as_ref()
                .map(|f| RuntimeFraction::compile(f, &format!("{path}.filter_enabled")))
                .transpose()?,
            own: RateLimits::compile(
                &proto.rate_limits,
                &format!("{path}.rate_limits"),
                Level::Filter,
            )?,
            leaves: Leaves {
                ok: leaf(prefix, "ok"),
                over_limit: leaf(prefix, "over_limit"),
                error: leaf(prefix, "error"),
                failure_mode_allowed: leaf(prefix, "failure_mode_allowed"),
            },
        })
    }

    /// The status an over-limit request is answered (and charged as the cluster's).
    pub fn rate_limited_status(&self) -> StatusCode {
        self.rate_limited_status
    }

    /// The counters' leaves.
    pub fn leaves(&self) -> &Leaves {
        &self.leaves
    }

    /// The call for a request at its route's `levels`, if it is checked: none when the
    /// filter is off for it, the request is not of its type, or it has no descriptor.
    pub fn call(
        &self,
        levels: [&FilterConfigs; 3],
        headers: &HeaderMap,
        view: &RateLimitView<'_>,
    ) -> Option<RequestMessage<Bytes>> {
        if self.enabled.as_ref().is_some_and(|f| !f.sample()) {
            return None;
        }
        let internal = headers
            .get("x-envoy-internal")
            .is_some_and(|v| v.as_bytes() == b"true");
        match (self.request_type, internal) {
            (RequestType::Internal, false) | (RequestType::External, true) => return None,
            _ => {}
        }
        view.route?;
        let per_route = per_filter::policy::<RateLimitPerRoute>(levels, &self.name);
        let source = DescriptorSource {
            own: per_route
                .and_then(|p| p.own.as_deref())
                .or(self.own.as_deref()),
            stage: self.stage,
            vh_rate_limits: per_route.map_or(VhRateLimits::Override, |p| p.vh_rate_limits),
        };
        let descriptors = source.descriptors(headers, view);
        if descriptors.is_empty() {
            return None;
        }
        let domain = per_route
            .and_then(|p| p.domain.clone())
            .unwrap_or_else(|| self.domain.clone());
        Some(self.request(domain, &descriptors))
    }

    fn request(&self, domain: String, descriptors: &[Descriptor]) -> RequestMessage<Bytes> {
        let message = RateLimitRequest {
            domain,
            descriptors: descriptors
                .iter()
                .map(|d| common_pb::RateLimitDescriptor {
                    entries: d
                        .entries
                        .iter()
                        .map(|(key, value)| common_pb::rate_limit_descriptor::Entry {
                            key: key.clone(),
                            value: value.clone(),
                        })
                        .collect(),
                    ..Default::default()
                })
                .collect(),
            hits_addend: 0,
        };
        self.service
            .unary_call(SHOULD_RATE_LIMIT, &message, self.timeout)
    }

    /// What the service's answer (`None`: the call failed) makes of the request.
    pub fn decide(
        &self,
        answer: Option<&ResponseMessage>,
        headers: &mut HeaderMap,
        cx: &FormatContext<'_>,
    ) -> Limited {
        let Some(response) = answer.and_then(decode) else {
            return match self.failure_mode_deny {
                true => Limited::Refuse(
                    Box::new(crate::http::conn_manager::local_reply::local_reply(
                        self.status_on_error,
                        "",
                    )),
                    Outcome::Error,
                ),
                false => Limited::Pass(None, Outcome::FailureModeAllowed),
            };
        };
        let mut response_headers = fields(&response.response_headers_to_add);
        if self.x_ratelimit_headers {
            x_ratelimit_headers(&response.statuses, &mut response_headers);
        }
        match Code::try_from(response.overall_code) {
            Ok(Code::OverLimit) => {
                let mut reply = crate::http::conn_manager::local_reply::local_reply_bytes(
                    self.rate_limited_status,
                    Bytes::from(response.raw_body),
                );
                if self.ratelimited_header {
                    reply
                        .headers_mut()
                        .insert("x-envoy-ratelimited", HeaderValue::from_static("true"));
                }
                for (k, v) in &response_headers {
                    reply.headers_mut().append(k.clone(), v.clone());
                }
                self.response_headers.apply(reply.headers_mut(), cx);
                if self.resource_exhausted {
                    crate::http::conn_manager::local_reply::set_grpc_status(&mut reply, 8);
                }
                Limited::Refuse(Box::new(reply), Outcome::OverLimit)
            }
            Ok(Code::Ok) => {
                for (k, v) in fields(&response.request_headers_to_add) {
                    headers.append(k, v);
                }
                Limited::Pass(
                    (!response_headers.is_empty()).then_some(response_headers),
                    Outcome::Ok,
                )
            }
            // An unknown code is an error, as Envoy's client treats it.
            _ => self.decide(None, headers, cx),
        }
    }
}

/// How a check ended, for the counters.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// `ok`.
    Ok,
    /// `over_limit` (and `upstream_rq_429`).
    OverLimit,
    /// `error`, and the request refused.
    Error,
    /// `error` and `failure_mode_allowed`.
    FailureModeAllowed,
}

/// What the check makes of a request.
pub enum Limited {
    /// It goes on; its answer gets these fields.
    Pass(Option<Vec<(HeaderName, HeaderValue)>>, Outcome),
    /// It is answered so.
    Refuse(Box<Response<ProxyBody>>, Outcome),
}

fn fields(list: &[PbHeaderValue]) -> Vec<(HeaderName, HeaderValue)> {
    list.iter()
        .filter_map(|h| {
            let value = if h.raw_value.is_empty() {
                h.value.as_bytes()
            } else {
                &h.raw_value
            };
            Some((
                HeaderName::from_bytes(h.key.as_bytes()).ok()?,
                HeaderValue::from_bytes(value).ok()?,
            ))
        })
        .collect()
}

/// The service's answer, if the call succeeded: `200`, `grpc-status: 0`, one message.
fn decode(answer: &ResponseMessage) -> Option<RateLimitResponse> {
    RateLimitResponse::decode(answer.grpc_message()?).ok()
}

/// A rate limit unit's window in seconds (none for an unknown unit).
fn window(unit: i32) -> Option<u64> {
    use courier_proto::envoy::service::ratelimit::v3::rate_limit_response::rate_limit::Unit;
    match Unit::try_from(unit).ok()? {
        Unit::Second => Some(1),
        Unit::Minute => Some(60),
        Unit::Hour => Some(3600),
        Unit::Day => Some(86_400),
        Unit::Week => Some(604_800),
        Unit::Month => Some(2_592_000),
        Unit::Year => Some(31_536_000),
        Unit::Unknown => None,
    }
}

/// The draft-03 `x-ratelimit-*` fields of the descriptors' statuses, added to `out`:
/// the limit and remaining count of the status with the fewest requests left, and every
/// limit's quota policy.
fn x_ratelimit_headers(
    statuses: &[courier_proto::envoy::service::ratelimit::v3::rate_limit_response::DescriptorStatus],
    out: &mut Vec<(HeaderName, HeaderValue)>,
) {
    let mut policy = String::new();
    let mut tightest: Option<
        &courier_proto::envoy::service::ratelimit::v3::rate_limit_response::DescriptorStatus,
    > = None;
    for status in statuses {
        let Some(limit) = &status.current_limit else {
            continue;
        };
        if tightest.is_none_or(|t| status.limit_remaining < t.limit_remaining) {
            tightest = Some(status);
        }
        if let Some(w) = window(limit.unit) {
            policy.push_str(&format!(", {};w={w}", limit.requests_per_unit));
            if !limit.name.is_empty() {
                policy.push_str(&format!(";name=\"{}\"", limit.name));
            }
        }
    }
    let Some(t) = tightest else { return };
    let limit = t.current_limit.as_ref().map_or(0, |l| l.requests_per_unit);
    let reset = t.duration_until_reset.as_ref().map_or(0, |d| d.seconds);
    for (name, value) in [
        ("x-ratelimit-limit", format!("{limit}{policy}")),
        ("x-ratelimit-remaining", t.limit_remaining.to_string()),
        ("x-ratelimit-reset", reset.to_string()),
    ] {
        if let Ok(v) = HeaderValue::from_str(&value) {
            out.push((HeaderName::from_static(name), v));
        }
    }
}
