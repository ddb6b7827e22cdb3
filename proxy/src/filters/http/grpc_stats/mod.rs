//! The gRPC statistics filter (`envoy.filters.http.grpc_stats`): counts a gRPC request's
//! outcome and messages in its route's cluster's scope.
//!
//! As Envoy 1.40 (`grpc_stats_filter.cc`, `Grpc::ContextImpl`; measured,
//! `tests/http_grpc_stats.rs`):
//!
//! - Only a gRPC request (`content-type` `application/grpc` or `application/grpc+…`)
//!   whose route names a cluster this worker has, and whose path is `/<service>/<method>`
//!   (query ignored), is counted. Its counters are `cluster.<cluster>.grpc.` followed by
//!   `<service>.<method>.` when the method has stats of its own, then the suffix.
//! - A method has stats of its own with `stats_for_all_methods: true` (every method; the
//!   service's dots become `_` with `replace_dots_in_grpc_service_name`), or when
//!   `individual_method_stats_allowlist` lists it. Every other method counts under
//!   `cluster.<cluster>.grpc.` alone; `stats_for_all_methods` defaults to false.
//! - Each `grpc-status` the response carries, in its head (trailers-only, or a local
//!   reply in gRPC's form) or its trailers, counts `<status>`, `success` (`0`) or
//!   `failure`, and `total`.
//! - Request frames count `request_message_count` as they start (as the router reads
//!   them: a body never sent upstream is not counted); a gRPC response's (a `200` of
//!   gRPC's content-type) frames count `response_message_count`, up to a frame flagged
//!   Connect's end of stream (`0x02`), which ends the count.
//! - Connect requests (`connect-protocol-version`, `application/connect+…`), which
//!   Envoy 1.40 counts too, are not: only gRPC is (`DIFFERENCES.md`).
//!
//! - With `enable_upstream_stats`, a counted request whose response came from upstream
//!   and ended in trailers, or in a headers-only response, records the milliseconds
//!   (truncated) from its last byte sent upstream to that end in the histogram
//!   `<prefix>upstream_rq_time` (Envoy's `chargeUpstreamStat`). A local reply (the
//!   upstream unreachable, a timeout) records nothing: Envoy's upstream timing lacks one
//!   end. The request's end is when the router took its last frame; a request without a
//!   body is taken as sent when the filter sees it (the connection's set-up, if any, is
//!   inside the time; Envoy's starts after it).
//!
//! `emit_filter_state` is taken and does nothing: Envoy's filter state object is read
//! only by `%FILTER_STATE%` access-log operators and other filters' extensions, and
//! Courier keeps no filter state and refuses all of those, so nothing could see it.

mod body;

use std::cell::Cell;
use std::rc::Rc;
use std::sync::Arc;
use std::time::Instant;

use courier_proto::envoy::extensions::filters::http::grpc_stats::v3::{
    filter_config::PerMethodStatSpecifier, FilterConfig,
};
use http::header::HeaderName;
use http::{Request, Response};
use hyper::body::Body as _;
use rustc_hash::{FxHashMap, FxHashSet};

use crate::config::ConfigError;
use crate::http::codec::body::ProxyBody;
use crate::protocol::grpc::{charge_status, is_grpc_response, service_and_method};
use crate::protocol::grpc_frame::FrameCounter;
use crate::stats::dynamic::{DynamicCounters, DynamicHistograms};
use crate::stats::Store;
use body::{CountedRequest, CountedResponse};

/// The filter's config type (`typed_config`).
pub const FILTER_TYPE: &str = "envoy.extensions.filters.http.grpc_stats.v3.FilterConfig";
/// The filter's well-known name.
pub const FILTER_NAME: &str = "envoy.filters.http.grpc_stats";

const GRPC_STATUS: HeaderName = HeaderName::from_static("grpc-status");

/// Which methods have counters of their own.
enum Methods {
    /// Every method (`stats_for_all_methods: true`).
    All {
        /// `replace_dots_in_grpc_service_name`.
        replace_dots: bool,
    },
    /// The allowlist's, by service (empty: none, `stats_for_all_methods: false`).
    Listed(FxHashMap<Box<str>, FxHashSet<Box<str>>>),
}

/// A connection manager's gRPC statistics filter.
pub struct GrpcStatsFilter {
    /// The filter's name in `http_filters`.
    pub name: String,
    counters: Arc<DynamicCounters>,
    methods: Methods,
    /// `enable_upstream_stats`: the per-method `upstream_rq_time` histograms.
    upstream: Option<Arc<DynamicHistograms>>,
}

/// What times a counted request's upstream round trip (`enable_upstream_stats`).
pub(crate) struct UpstreamTiming {
    histograms: Arc<DynamicHistograms>,
    /// When the request's last byte went upstream.
    sent: Rc<Cell<Option<Instant>>>,
}

impl UpstreamTiming {
    /// The response's end arrived now: `<prefix>upstream_rq_time` records the time since
    /// the request's end, when it went.
    fn charge(self, prefix: &str, worker: usize) {
        if let Some(sent) = self.sent.get() {
            let ms = sent.elapsed().as_millis() as u64;
            self.histograms
                .record(&format!("{prefix}upstream_rq_time"), worker, ms);
        }
    }
}

/// What the filter keeps of a counted request for its response.
pub struct GrpcStatsRequest {
    counters: Arc<DynamicCounters>,
    /// `cluster.<name>.grpc.`, then `<service>.<method>.` when the method has its own.
    prefix: Rc<str>,
    upstream: Option<UpstreamTiming>,
}

impl GrpcStatsFilter {
    /// Compiles the filter's config (at `path`), its counters in `store`.
    pub fn compile(
        name: &str,
        proto: &FilterConfig,
        path: &str,
        store: &Store,
    ) -> Result<GrpcStatsFilter, ConfigError> {
        let methods = match &proto.per_method_stat_specifier {
            Some(PerMethodStatSpecifier::StatsForAllMethods(b)) if b.value => Methods::All {
                replace_dots: proto.replace_dots_in_grpc_service_name,
            },
            Some(PerMethodStatSpecifier::IndividualMethodStatsAllowlist(list)) => {
                let mut listed: FxHashMap<Box<str>, FxHashSet<Box<str>>> = FxHashMap::default();
                for (i, service) in list.services.iter().enumerate() {
                    let at = format!("{path}.individual_method_stats_allowlist.services[{i}]");
                    if service.name.is_empty() {
                        return Err(ConfigError::new(
                            format!("{at}.name"),
                            "value length must be at least 1 characters",
                        ));
                    }
                    if service.method_names.is_empty() {
                        return Err(ConfigError::new(
                            format!("{at}.method_names"),
                            "value must contain at least 1 item(s)",
                        ));
                    }
                    listed
                        .entry(service.name.as_str().into())
                        .or_default()
                        .extend(service.method_names.iter().map(|m| m.as_str().into()));
                }
                Methods::Listed(listed)
            }
            _ => Methods::Listed(FxHashMap::default()),
        };
        Ok(GrpcStatsFilter {
            name: name.to_string(),
            counters: Arc::new(DynamicCounters::new(store)),
            methods,
            upstream: proto
                .enable_upstream_stats
                .then(|| Arc::new(DynamicHistograms::new(store))),
        })
    }

    /// The request pass, for a gRPC request: `None` when it is not counted (no cluster, or
    /// its path names no method). `path` is the request's path, `cluster` its route's
    /// cluster when this worker has it. A counted request's body has its frames counted.
    pub fn on_request(
        &self,
        req: &mut Request<ProxyBody>,
        path: &str,
        cluster: Option<&str>,
        worker: usize,
    ) -> Option<Box<GrpcStatsRequest>> {
        let cluster = cluster?;
        let (service, method) = service_and_method(path)?;
        let prefix: Rc<str> = match &self.methods {
            Methods::All { replace_dots: true } => Rc::from(format!(
                "cluster.{cluster}.grpc.{}.{method}.",
                service.replace('.', "_")
            )),
            Methods::All {
                replace_dots: false,
            } => Rc::from(format!("cluster.{cluster}.grpc.{service}.{method}.")),
            Methods::Listed(listed) if listed.get(service).is_some_and(|m| m.contains(method)) => {
                Rc::from(format!("cluster.{cluster}.grpc.{service}.{method}."))
            }
            Methods::Listed(_) => Rc::from(format!("cluster.{cluster}.grpc.")),
        };
        let upstream = self.upstream.as_ref().map(|histograms| UpstreamTiming {
            histograms: histograms.clone(),
            sent: Rc::new(Cell::new(None)),
        });
        if !req.body().is_end_stream() {
            let inner = std::mem::replace(req.body_mut(), ProxyBody::empty());
            *req.body_mut() = ProxyBody::filtered(CountedRequest {
                inner,
                frames: FrameCounter::default(),
                counters: self.counters.clone(),
                name: Rc::from(format!("{prefix}request_message_count")),
                worker,
                sent: upstream.as_ref().map(|u| u.sent.clone()),
            });
        } else if let Some(u) = &upstream {
            u.sent.set(Some(Instant::now()));
        }
        Some(Box::new(GrpcStatsRequest {
            counters: self.counters.clone(),
            prefix,
            upstream,
        }))
    }
}

impl GrpcStatsRequest {
    /// The response pass: the head's `grpc-status` (or `local_status`, the one a local
    /// reply gets in gRPC's form) charged, the body watched for frames and trailers.
    pub fn on_response(
        mut self,
        resp: &mut Response<ProxyBody>,
        local_status: Option<u32>,
        worker: usize,
    ) {
        // A local reply never came from upstream: Envoy's upstream timing lacks its end,
        // nothing is timed.
        if local_status.is_some() {
            self.upstream = None;
        }
        if let Some(status) = resp.headers().get(&GRPC_STATUS) {
            charge_status(&self.counters, &self.prefix, status.as_bytes(), worker);
        } else if let Some(status) = local_status {
            charge_status(
                &self.counters,
                &self.prefix,
                status.to_string().as_bytes(),
                worker,
            );
            // A local reply goes out headers-only in gRPC's form.
            return;
        }
        let end_stream = resp.body().is_end_stream();
        if end_stream {
            // Envoy's `encodeHeaders` with `end_stream` charges the upstream time.
            if let Some(timing) = self.upstream.take() {
                timing.charge(&self.prefix, worker);
            }
            return;
        }
        let grpc = is_grpc_response(resp.status().as_u16(), resp.headers(), end_stream);
        let inner = std::mem::replace(resp.body_mut(), ProxyBody::empty());
        *resp.body_mut() = ProxyBody::filtered(CountedResponse {
            inner,
            frames: grpc.then(FrameCounter::for_responses),
            counters: self.counters,
            prefix: self.prefix,
            worker,
            upstream: self.upstream,
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use courier_proto::envoy::config::core::v3::{grpc_method_list::Service, GrpcMethodList};

    fn compile(proto: &FilterConfig) -> Result<GrpcStatsFilter, ConfigError> {
        GrpcStatsFilter::compile("f", proto, "p", &Store::new(1))
    }

    fn prefix(f: &GrpcStatsFilter, path: &str) -> Option<String> {
        let mut req = Request::new(ProxyBody::empty());
        f.on_request(&mut req, path, Some("c"), 0)
            .map(|r| r.prefix.to_string())
    }

    fn allowlist(services: Vec<Service>) -> FilterConfig {
        FilterConfig {
            per_method_stat_specifier: Some(
                PerMethodStatSpecifier::IndividualMethodStatsAllowlist(GrpcMethodList { services }),
            ),
            ..Default::default()
        }
    }

    #[test]
    fn methods_are_named_as_configured() {
        let none = compile(&FilterConfig::default()).expect("default");
        assert_eq!(prefix(&none, "/a.B/M").as_deref(), Some("cluster.c.grpc."));
        assert_eq!(prefix(&none, "/a.B/M/x"), None);
        assert_eq!(prefix(&none, "/"), None);
        let all = FilterConfig {
            per_method_stat_specifier: Some(PerMethodStatSpecifier::StatsForAllMethods(
                courier_proto::google::protobuf::BoolValue { value: true },
            )),
            ..Default::default()
        };
        let f = compile(&all).expect("all");
        assert_eq!(
            prefix(&f, "/a.B/M?q=1").as_deref(),
            Some("cluster.c.grpc.a.B.M.")
        );
        let dots = FilterConfig {
            replace_dots_in_grpc_service_name: true,
            ..all
        };
        let f = compile(&dots).expect("dots");
        assert_eq!(
            prefix(&f, "/a.B/M").as_deref(),
            Some("cluster.c.grpc.a_B.M.")
        );
        let listed = allowlist(vec![Service {
            name: "a.B".into(),
            method_names: vec!["M".into()],
        }]);
        let f = compile(&listed).expect("listed");
        assert_eq!(
            prefix(&f, "/a.B/M").as_deref(),
            Some("cluster.c.grpc.a.B.M.")
        );
        assert_eq!(prefix(&f, "/a.B/N").as_deref(), Some("cluster.c.grpc."));
        // No cluster: not counted.
        let mut req = Request::new(ProxyBody::empty());
        assert!(f.on_request(&mut req, "/a.B/M", None, 0).is_none());
    }

    #[test]
    fn bad_allowlists_and_unbuilt_fields_are_refused_by_path() {
        let e = compile(&allowlist(vec![Service {
            name: String::new(),
            method_names: vec!["M".into()],
        }]))
        .err()
        .expect("empty name");
        assert_eq!(
            e.path,
            "p.individual_method_stats_allowlist.services[0].name"
        );
        let e = compile(&allowlist(vec![Service {
            name: "s".into(),
            method_names: vec![],
        }]))
        .err()
        .expect("no methods");
        assert_eq!(
            e.path,
            "p.individual_method_stats_allowlist.services[0].method_names"
        );
        let upstream = FilterConfig {
            enable_upstream_stats: true,
            ..Default::default()
        };
        assert!(compile(&upstream).is_ok());
        let emit = FilterConfig {
            emit_filter_state: true,
            ..Default::default()
        };
        assert!(compile(&emit).is_ok());
    }
}
