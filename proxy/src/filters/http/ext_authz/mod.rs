//! The external authorization filter (`envoy.filters.http.ext_authz`): each request is
//! checked by a service — gRPC (`envoy.service.auth.v3.Authorization`) or plain HTTP —
//! before it goes on; the service allows it (changing its fields and its answer's) or
//! denies it with its own reply.
//!
//! As Envoy 1.40 (measured, `tests/http_ext_authz.rs`):
//!
//! - A request no route takes, or whose most specific `ExtAuthzPerRoute` says `disabled`,
//!   is not checked. `check_settings.context_extensions` merge from the route
//!   configuration down to the route; `disable_request_body_buffering` skips the body.
//! - `filter_enabled` samples the requests checked; one left out counts `disabled`, and
//!   is refused with `status_on_error` under `deny_at_disable`.
//! - `with_request_body` holds the body (up to `max_request_bytes`; more is a `413`
//!   unless `allow_partial_message`) and sends it (`pack_as_bytes`: as `raw_body`).
//! - Allowed: the service's fields go on the request (set, added, appended, removed,
//!   query parameters) and on the answer, counted `ok`. Denied: the service's status,
//!   fields and body answer the request (`ext_authz_denied`, flag `UAEX`), counted
//!   `denied`. A call that fails, times out or gets a broken answer is an `error`: the
//!   request is answered `status_on_error` (`403`; `ext_authz_error`), or goes on under
//!   `failure_mode_allow` (counted `failure_mode_allowed`, marked
//!   `x-envoy-auth-failure-mode-allowed: true` with `failure_mode_allow_header_add`).
//! - Counters `http.<stat_prefix>.ext_authz.[<filter stat_prefix>.]{ok,denied,error,
//!   disabled,failure_mode_allowed}`, and under `charge_cluster_response_stats` (the
//!   default) `cluster.<routed cluster>.ext_authz.{ok,denied,error,failure_mode_allowed}`
//!   with the denied status charged as the cluster's `upstream_rq_<code>`.
//!
//! The gRPC service's cluster, authority and metadata are compiled as every gRPC
//! client's ([`GrpcClient`]); the call goes out from the worker through the router's
//! async client, as one of that cluster's requests.
//!
//! Refused by path: metadata namespaces other than empty ones, `filter_enabled_metadata`,
//! `clear_route_cache`, `decoder_header_mutation_rules`, `filter_metadata`,
//! `emit_filter_state_stats`, `enforce_response_header_limits`, `shadow_mode`,
//! `emit_client_span`, `bootstrap_metadata_labels_key`, `validate_mutations`, a per-route
//! `with_request_body` or `service_override`, the HTTP service's `retry_policy` and
//! `dynamic_metadata_from_headers`, and `google_grpc`. The service's dynamic metadata is
//! not kept: nothing in Courier reads it.

pub mod check_request;
pub mod grpc_service;
pub mod http_service;
pub mod verdict;

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use courier_proto::envoy::extensions::filters::http::ext_authz::v3 as pb;
use http::{Response, StatusCode};

use crate::config::ConfigError;
use crate::filters::http::ClusterCounters;
use crate::http::codec::body::ProxyBody;
use crate::http::route::per_filter::{self, FilterConfigs};
use crate::http::route::StrMatch;
use crate::layered_runtime::{RuntimeFlag, RuntimeFraction};
use crate::stats::{Counter, Store};
use crate::upstream::async_client::grpc::GrpcClient;
use check_request::HeaderFilter;
use grpc_service::GrpcService;
use http_service::HttpService;
use verdict::{Allowed, Verdict};

/// The filter's config type.
pub const FILTER_TYPE: &str = "envoy.extensions.filters.http.ext_authz.v3.ExtAuthz";
/// The filter's well-known name.
pub const FILTER_NAME: &str = "envoy.filters.http.ext_authz";
/// The per-route config's type.
pub const PER_ROUTE_TYPE: &str = "envoy.extensions.filters.http.ext_authz.v3.ExtAuthzPerRoute";
/// Response code details of a denied request.
pub const DENIED: &str = "ext_authz_denied";
/// Response code details of a request refused for want of a decision.
pub const ERROR: &str = "ext_authz_error";
/// The field `failure_mode_allow_header_add` marks a request with.
pub const FAILURE_MODE_ALLOWED_HEADER: &str = "x-envoy-auth-failure-mode-allowed";

/// The service a filter asks.
pub enum Service {
    /// `grpc_service`.
    Grpc(GrpcService),
    /// `http_service`.
    Http(HttpService),
}

impl Service {
    /// The service's cluster.
    pub fn cluster(&self) -> &str {
        match self {
            Service::Grpc(g) => g.client.cluster(),
            Service::Http(h) => &h.cluster,
        }
    }

    /// The call's timeout.
    pub fn timeout(&self) -> Duration {
        match self {
            Service::Grpc(g) => g.timeout,
            Service::Http(h) => h.timeout,
        }
    }
}

/// `with_request_body`.
#[derive(Debug, Clone, Copy)]
pub struct BodySettings {
    /// The most of the body sent.
    pub max_bytes: usize,
    /// A longer body is cut rather than refused.
    pub allow_partial: bool,
    /// Sent as bytes (`raw_body`).
    pub pack_as_bytes: bool,
}

struct Stats {
    ok: Arc<Counter>,
    denied: Arc<Counter>,
    error: Arc<Counter>,
    disabled: Arc<Counter>,
    failure_mode_allowed: Arc<Counter>,
}

/// A compiled `ExtAuthz`.
pub struct ExtAuthzFilter {
    /// The filter's name in the chain.
    pub name: String,
    /// The service asked.
    pub service: Service,
    /// Which request fields the service sees.
    pub headers: HeaderFilter,
    /// `with_request_body`.
    pub body: Option<BodySettings>,
    failure_mode_allow: bool,
    failure_mode_allow_header_add: bool,
    status_on_error: StatusCode,
    filter_enabled: Option<RuntimeFraction>,
    deny_at_disable: Option<RuntimeFlag>,
    /// `include_peer_certificate`.
    pub include_peer_certificate: bool,
    /// `include_tls_session`.
    pub include_tls_session: bool,
    /// `encode_raw_headers`.
    pub encode_raw_headers: bool,
    /// `charge_cluster_response_stats`.
    pub charge_cluster: bool,
    max_denied_body: Option<usize>,
    stats: Stats,
}

/// A route's `ExtAuthzPerRoute`.
pub struct ExtAuthzPerRoute {
    disabled: bool,
    context_extensions: HashMap<String, String>,
    skip_body: bool,
}

impl ExtAuthzPerRoute {
    /// Compiles an `ExtAuthzPerRoute` at `path`.
    pub fn compile(proto: &pb::ExtAuthzPerRoute, path: &str) -> Result<Self, ConfigError> {
        use pb::ext_authz_per_route::Override;
        match &proto.r#override {
            // Envoy 1.40 takes `disabled: false` too (measured): nothing is overridden.
            Some(Override::Disabled(disabled)) => Ok(ExtAuthzPerRoute {
                disabled: *disabled,
                context_extensions: HashMap::new(),
                skip_body: false,
            }),
            Some(Override::CheckSettings(s)) => {
                let at = format!("{path}.check_settings");
                if s.with_request_body.is_some() {
                    return Err(ConfigError::unsupported(format!("{at}.with_request_body")));
                }
                if s.service_override.is_some() {
                    return Err(ConfigError::unsupported(format!("{at}.service_override")));
                }
                Ok(ExtAuthzPerRoute {
                    disabled: false,
                    context_extensions: s.context_extensions.clone(),
                    skip_body: s.disable_request_body_buffering,
                })
            }
            None => Err(ConfigError::new(
                format!("{path}.override"),
                "value is required",
            )),
        }
    }
}

/// What a request meets before any call.
pub enum Begin {
    /// Not checked here: it goes on.
    Skip,
    /// Refused at once (`deny_at_disable`).
    Refuse(Box<Response<ProxyBody>>),
    /// Checked, with the route's context extensions, its body held unless `skip_body`.
    Check {
        /// The merged `context_extensions`.
        context_extensions: HashMap<String, String>,
        /// `disable_request_body_buffering`.
        skip_body: bool,
    },
}

/// What the request becomes once the service has spoken.
pub enum Decision {
    /// It goes on, changed so (`None`: unchanged, on `failure_mode_allow`).
    Continue(Option<Box<Allowed>>),
    /// It is answered so, with these response code details.
    Reply(Box<Response<ProxyBody>>, &'static str),
}

/// A `ListStringMatcher` at `path` compiled (none: an empty list).
fn matcher_list(
    list: Option<&courier_proto::envoy::r#type::matcher::v3::ListStringMatcher>,
    path: &str,
) -> Result<Vec<StrMatch>, ConfigError> {
    list.map_or(&[][..], |l| &l.patterns)
        .iter()
        .enumerate()
        .map(|(i, m)| StrMatch::compile(m, &format!("{path}.patterns[{i}]")))
        .collect()
}

impl ExtAuthzFilter {
    /// Compiles the filter at `path`; its counters under `http.<stat_prefix>.ext_authz.`.
    pub fn compile(
        name: &str,
        proto: &pb::ExtAuthz,
        path: &str,
        stat_prefix: &str,
        store: &Store,
    ) -> Result<ExtAuthzFilter, ConfigError> {
        refuse_unsupported(proto, path)?;
        // AUTO means V3, as in Envoy; V2 is gone.
        #[allow(deprecated)]
        if proto.transport_api_version
            == courier_proto::envoy::config::core::v3::ApiVersion::V2 as i32
        {
            return Err(ConfigError::new(
                format!("{path}.transport_api_version"),
                "V2 is not supported (Envoy refuses it): use V3",
            ));
        }
        let service = match &proto.services {
            Some(pb::ext_authz::Services::GrpcService(g)) => {
                let client = GrpcClient::compile(g, &format!("{path}.grpc_service"))?;
                let timeout = client.timeout().unwrap_or(grpc_service::DEFAULT_TIMEOUT);
                Service::Grpc(GrpcService { client, timeout })
            }
            Some(pb::ext_authz::Services::HttpService(h)) => Service::Http(HttpService::compile(
                h,
                proto.allowed_headers.as_ref(),
                &format!("{path}.http_service"),
            )?),
            None => {
                return Err(ConfigError::new(
                    path,
                    "one of grpc_service or http_service is required",
                ))
            }
        };
        let allowed = matcher_list(
            proto.allowed_headers.as_ref(),
            &format!("{path}.allowed_headers"),
        )?;
        let headers = HeaderFilter {
            // The HTTP service picks its own fields; the list only adds to them.
            allowed: (!allowed.is_empty() && matches!(service, Service::Grpc(_)))
                .then_some(allowed),
            disallowed: matcher_list(
                proto.disallowed_headers.as_ref(),
                &format!("{path}.disallowed_headers"),
            )?,
        };
        let status_on_error = match &proto.status_on_error {
            Some(s) if s.code != 0 => u16::try_from(s.code)
                .ok()
                .and_then(|c| StatusCode::from_u16(c).ok())
                .ok_or_else(|| {
                    ConfigError::new(
                        format!("{path}.status_on_error.code"),
                        format!("{} is not an HTTP status", s.code),
                    )
                })?,
            _ => StatusCode::FORBIDDEN,
        };
        let filter_enabled = proto
            .filter_enabled
            .as_ref()
            .map(|f| RuntimeFraction::compile(f, &format!("{path}.filter_enabled")))
            .transpose()?;
        let prefix = if proto.stat_prefix.is_empty() {
            format!("http.{stat_prefix}.ext_authz.")
        } else {
            format!("http.{stat_prefix}.ext_authz.{}.", proto.stat_prefix)
        };
        let c = |leaf: &str| store.counter(&format!("{prefix}{leaf}"));
        Ok(ExtAuthzFilter {
            name: name.to_owned(),
            service,
            headers,
            body: proto.with_request_body.map(|b| BodySettings {
                max_bytes: b.max_request_bytes as usize,
                allow_partial: b.allow_partial_message,
                pack_as_bytes: b.pack_as_bytes,
            }),
            failure_mode_allow: proto.failure_mode_allow,
            failure_mode_allow_header_add: proto.failure_mode_allow_header_add,
            status_on_error,
            filter_enabled,
            deny_at_disable: proto
                .deny_at_disable
                .as_ref()
                .map(|f| RuntimeFlag::compile(Some(f))),
            include_peer_certificate: proto.include_peer_certificate,
            include_tls_session: proto.include_tls_session,
            encode_raw_headers: proto.encode_raw_headers,
            charge_cluster: proto
                .charge_cluster_response_stats
                .as_ref()
                .is_none_or(|b| b.value),
            max_denied_body: (proto.max_denied_response_body_bytes > 0)
                .then_some(proto.max_denied_response_body_bytes as usize),
            stats: Stats {
                ok: c("ok"),
                denied: c("denied"),
                error: c("error"),
                disabled: c("disabled"),
                failure_mode_allowed: c("failure_mode_allowed"),
            },
        })
    }

    /// What a request meets before any call, at its route's `levels` (`routed`: a route
    /// took it).
    pub fn begin(&self, levels: [&FilterConfigs; 3], routed: bool, worker: usize) -> Begin {
        if !routed {
            return Begin::Skip;
        }
        if per_filter::policy::<ExtAuthzPerRoute>(levels, &self.name).is_some_and(|p| p.disabled) {
            return Begin::Skip;
        }
        if self.filter_enabled.as_ref().is_some_and(|f| !f.sample()) {
            self.stats.disabled.inc(worker);
            if self
                .deny_at_disable
                .as_ref()
                .is_some_and(RuntimeFlag::enabled)
            {
                return Begin::Refuse(Box::new(self.error_reply()));
            }
            return Begin::Skip;
        }
        // Merged from the least specific level to the most specific.
        let mut context_extensions = HashMap::new();
        let mut skip_body = false;
        for level in levels.iter().rev() {
            if let Some(p) = level.policy::<ExtAuthzPerRoute>(&self.name) {
                context_extensions.extend(
                    p.context_extensions
                        .iter()
                        .map(|(k, v)| (k.clone(), v.clone())),
                );
                skip_body = p.skip_body;
            }
        }
        Begin::Check {
            context_extensions,
            skip_body,
        }
    }

    fn error_reply(&self) -> Response<ProxyBody> {
        crate::http::conn_manager::local_reply::local_reply(self.status_on_error, "")
    }

    /// What the request becomes under `verdict`; `cluster` counts in the routed
    /// cluster's scope.
    pub fn decide(
        &self,
        verdict: Verdict,
        cluster: Option<&dyn ClusterCounters>,
        headers: &mut http::HeaderMap,
        worker: usize,
    ) -> Decision {
        let cluster = cluster.filter(|_| self.charge_cluster);
        match verdict {
            Verdict::Ok(allowed) => {
                self.stats.ok.inc(worker);
                if let Some(c) = cluster {
                    c.inc("ext_authz.ok");
                }
                allowed.apply_headers(headers);
                Decision::Continue(Some(allowed))
            }
            Verdict::Denied(denied) => {
                self.stats.denied.inc(worker);
                if let Some(c) = cluster {
                    c.inc("ext_authz.denied");
                    c.charge(denied.status);
                }
                let mut body = denied.body;
                if let Some(max) = self.max_denied_body {
                    body.truncate(max);
                }
                let mut reply =
                    crate::http::conn_manager::local_reply::local_reply_bytes(denied.status, body);
                for (k, _) in &denied.headers {
                    reply.headers_mut().remove(k);
                }
                for (k, v) in denied.headers {
                    if k == http::header::CONTENT_LENGTH {
                        continue;
                    }
                    reply.headers_mut().append(k, v);
                }
                Decision::Reply(Box::new(reply), DENIED)
            }
            Verdict::Error => {
                self.stats.error.inc(worker);
                if let Some(c) = cluster {
                    c.inc("ext_authz.error");
                }
                if !self.failure_mode_allow {
                    return Decision::Reply(Box::new(self.error_reply()), ERROR);
                }
                self.stats.failure_mode_allowed.inc(worker);
                if let Some(c) = cluster {
                    c.inc("ext_authz.failure_mode_allowed");
                }
                if self.failure_mode_allow_header_add {
                    headers.append(
                        FAILURE_MODE_ALLOWED_HEADER,
                        http::HeaderValue::from_static("true"),
                    );
                }
                Decision::Continue(None)
            }
        }
    }
}

/// Refuses, by path, the fields Courier does not act on.
fn refuse_unsupported(proto: &pb::ExtAuthz, path: &str) -> Result<(), ConfigError> {
    let set = [
        ("clear_route_cache", proto.clear_route_cache),
        ("validate_mutations", proto.validate_mutations),
        (
            "metadata_context_namespaces",
            !proto.metadata_context_namespaces.is_empty(),
        ),
        (
            "typed_metadata_context_namespaces",
            !proto.typed_metadata_context_namespaces.is_empty(),
        ),
        (
            "route_metadata_context_namespaces",
            !proto.route_metadata_context_namespaces.is_empty(),
        ),
        (
            "route_typed_metadata_context_namespaces",
            !proto.route_typed_metadata_context_namespaces.is_empty(),
        ),
        (
            "filter_enabled_metadata",
            proto.filter_enabled_metadata.is_some(),
        ),
        (
            "bootstrap_metadata_labels_key",
            !proto.bootstrap_metadata_labels_key.is_empty(),
        ),
        (
            "decoder_header_mutation_rules",
            proto.decoder_header_mutation_rules.is_some(),
        ),
        ("filter_metadata", proto.filter_metadata.is_some()),
        ("emit_filter_state_stats", proto.emit_filter_state_stats),
        (
            "enforce_response_header_limits",
            proto.enforce_response_header_limits,
        ),
        ("shadow_mode", proto.shadow_mode),
        ("emit_client_span", proto.emit_client_span.is_some()),
    ];
    match set.iter().find(|(_, on)| *on) {
        Some((field, _)) => Err(ConfigError::unsupported(format!("{path}.{field}"))),
        None => Ok(()),
    }
}
