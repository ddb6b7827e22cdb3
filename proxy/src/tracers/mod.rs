//! Request tracing (a connection manager's `tracing`, the bootstrap's `tracing.http`):
//! whether a request is traced, the span a traced request gets, and the trace context
//! sent upstream. Tracers are extensions (`envoy.tracers.*`); Zipkin ([`zipkin`]),
//! OpenTelemetry ([`opentelemetry`]) and Datadog ([`datadog`]) are built.
//!
//! The decision is Envoy's: a request already marked in its `x-request-id` keeps its
//! mark; else `x-client-trace-id` with `client_sampling`, `x-envoy-force-trace`, or
//! `random_sampling` (pivoting on the request id) marks it; `overall_sampling` can take
//! the mark away. The mark is written into the request id, so every proxy on the way
//! decides the same. Spans are built on the worker when the request ends and handed to
//! the main thread, which batches them to the collector: a worker never waits on it.
//!
//! With `spawn_upstream_span`, every attempt the router makes gets a CLIENT child span of
//! its own (`router <cluster> egress`, Envoy's name), whose context goes upstream instead
//! of the request's span; the request's span is then a SERVER span on either traffic
//! direction, as Envoy makes it. An attempt's span ends when the attempt does: a failed
//! or retried one at once, the one that answered with the request.

pub mod datadog;
pub mod opentelemetry;
pub mod reporter;
pub mod zipkin;

use std::borrow::Cow;
use std::sync::Arc;

use courier_proto::envoy::config::trace::v3::tracing::Http as TracerConfig;
use courier_proto::envoy::extensions::filters::network::http_connection_manager::v3::http_connection_manager::Tracing;
use courier_proto::envoy::r#type::tracing::v3::custom_tag;
use http::{HeaderMap, HeaderValue};

use crate::config::{ConfigError, Fraction};
use crate::extensions::{Factory, Registry};
use crate::layered_runtime::RuntimeFraction;
use crate::stats::{Counter, Store};

/// Why a request is traced (or not), as Envoy names the reasons.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reason {
    /// Not traced.
    NotTraceable,
    /// `random_sampling` chose it.
    Sampling,
    /// `x-client-trace-id` with `client_sampling`.
    ClientForced,
    /// `x-envoy-force-trace`.
    ServiceForced,
}

impl Reason {
    /// The mark in a UUID request id's version nibble (Envoy's request-id extension).
    fn mark(self) -> u8 {
        match self {
            Reason::NotTraceable => b'4',
            Reason::Sampling => b'9',
            Reason::ServiceForced => b'a',
            Reason::ClientForced => b'b',
        }
    }

    fn of_mark(m: u8) -> Reason {
        match m {
            b'9' => Reason::Sampling,
            b'a' => Reason::ServiceForced,
            b'b' => Reason::ClientForced,
            _ => Reason::NotTraceable,
        }
    }
}

/// A tracer a connection manager sends spans to.
pub enum Tracer {
    /// `envoy.tracers.zipkin`.
    Zipkin(Arc<zipkin::ZipkinTracer>),
    /// `envoy.tracers.opentelemetry`.
    OpenTelemetry(Arc<opentelemetry::OtelTracer>),
    /// `envoy.tracers.datadog`.
    Datadog(Arc<datadog::DatadogTracer>),
}

/// Starts the main thread's span reporters (one per tracer type).
pub fn start_reporters() {
    zipkin::REPORTER.start();
    opentelemetry::REPORTER.start();
    datadog::REPORTER.start();
}

type BuildTracer = fn(&courier_proto::google::protobuf::Any, &Store) -> Result<Tracer, ConfigError>;

/// The tracers a `tracing.provider` may name.
static TRACERS: Registry<BuildTracer> = Registry {
    point: "tracer",
    factories: &[
        Factory {
            type_name: "envoy.config.trace.v3.ZipkinConfig",
            name: "envoy.tracers.zipkin",
            build: |any, store| {
                Ok(Tracer::Zipkin(Arc::new(zipkin::ZipkinTracer::compile(
                    any, store,
                )?)))
            },
        },
        Factory {
            type_name: "envoy.config.trace.v3.OpenTelemetryConfig",
            name: "envoy.tracers.opentelemetry",
            build: |any, store| {
                Ok(Tracer::OpenTelemetry(Arc::new(
                    opentelemetry::OtelTracer::compile(any, store)?,
                )))
            },
        },
        Factory {
            type_name: "envoy.config.trace.v3.DatadogConfig",
            name: "envoy.tracers.datadog",
            build: |any, store| {
                Ok(Tracer::Datadog(Arc::new(datadog::DatadogTracer::compile(
                    any, store,
                )?)))
            },
        },
    ],
};

static BOOTSTRAP_PROVIDER: std::sync::OnceLock<Option<TracerConfig>> = std::sync::OnceLock::new();

/// Checks the bootstrap's `tracing.http` and keeps it for connection managers that name
/// no provider.
#[allow(deprecated)] // the bootstrap's `tracing` is deprecated, still honoured by Envoy
pub fn set_bootstrap_provider(
    b: &courier_proto::envoy::config::bootstrap::v3::Bootstrap,
) -> Result<(), ConfigError> {
    let http = b.tracing.as_ref().and_then(|t| t.http.clone());
    if let Some(h) = &http {
        use courier_proto::envoy::config::trace::v3::tracing::http::ConfigType;
        let any = h.config_type.as_ref().map(|ConfigType::TypedConfig(a)| a);
        let found = TRACERS
            .resolve(any, &h.name, false, "tracing.http")?
            .ok_or_else(|| ConfigError::new("tracing.http", "unknown tracer"))?;
        (found.factory.build)(&found.config.unwrap_or_default(), &Store::new(1))
            .map_err(|e| e.at("tracing.http"))?;
    }
    let _ = BOOTSTRAP_PROVIDER.set(http);
    Ok(())
}

/// A custom tag's value source.
enum TagValue {
    Literal(String),
    /// An environment variable, read when the config is compiled (as Envoy reads it once).
    Environment(String),
    RequestHeader {
        name: http::HeaderName,
        default: String,
    },
}

/// `http.<prefix>.tracing.*`.
struct TracingStats {
    random_sampling: Arc<Counter>,
    service_forced: Arc<Counter>,
    client_enabled: Arc<Counter>,
    not_traceable: Arc<Counter>,
    health_check: Arc<Counter>,
}

/// A connection manager's compiled `tracing`.
pub struct HttpTracing {
    client: RuntimeFraction,
    random: RuntimeFraction,
    overall: RuntimeFraction,
    max_path_tag_length: usize,
    custom_tags: Vec<(String, TagValue)>,
    /// Ingress (server spans) or egress (client spans), from the listener's
    /// `traffic_direction`.
    egress: bool,
    /// `spawn_upstream_span`: a child span per upstream attempt.
    spawn_upstream_span: bool,
    /// None without a provider (Envoy's null tracer).
    tracer: Option<Tracer>,
    stats: TracingStats,
    /// The connection manager's `request_id_extension`.
    request_id: crate::http::conn_manager::request_id::RequestIdOptions,
}

/// A `type.v3.Percent` as a share in ten-thousandths (Envoy's conversion), `default`
/// percent when unset.
fn percent(p: Option<&courier_proto::envoy::r#type::v3::Percent>, default: f64) -> Fraction {
    let value = p.map_or(default, |p| p.value).clamp(0.0, 100.0);
    Fraction::new((value * 100.0).round() as u32, 10_000)
}

impl HttpTracing {
    /// Compiles a connection manager's `tracing` (at `tracing`); `bootstrap` is the
    /// bootstrap's `tracing.http`, the provider when the connection manager names none.
    pub fn compile(
        t: &Tracing,
        egress: bool,
        stat_prefix: &str,
        store: &Store,
    ) -> Result<HttpTracing, ConfigError> {
        let bootstrap = BOOTSTRAP_PROVIDER.get().and_then(Option::as_ref);
        #[allow(deprecated)]
        let refused = [
            ("verbose", t.verbose),
            ("operation", !t.operation.is_empty()),
            ("upstream_operation", !t.upstream_operation.is_empty()),
        ];
        if let Some((field, _)) = refused.iter().find(|(_, set)| *set) {
            return Err(ConfigError::unsupported(format!("tracing.{field}")));
        }
        let provider = match (&t.provider, bootstrap) {
            (Some(p), _) => Some((p.name.as_str(), p.config_type.as_ref())),
            (None, Some(b)) => Some((b.name.as_str(), b.config_type.as_ref())),
            // As Envoy's null tracer: requests are still decided on and their
            // `x-request-id` marked, and no span is sent anywhere.
            (None, None) => None,
        };
        let tracer = match provider {
            Some((name, typed)) => {
                use courier_proto::envoy::config::trace::v3::tracing::http::ConfigType;
                let any = typed.map(|ConfigType::TypedConfig(a)| a);
                let found = TRACERS
                    .resolve(any, name, false, "tracing.provider")?
                    .ok_or_else(|| ConfigError::new("tracing.provider", "unknown tracer"))?;
                let config = found.config.unwrap_or_default();
                Some((found.factory.build)(&config, store).map_err(|e| e.at("tracing.provider"))?)
            }
            None => None,
        };
        let mut custom_tags = Vec::new();
        for (i, tag) in t.custom_tags.iter().enumerate() {
            let at = format!("tracing.custom_tags[{i}]");
            let value = match &tag.r#type {
                Some(custom_tag::Type::Literal(l)) => TagValue::Literal(l.value.clone()),
                Some(custom_tag::Type::Environment(e)) => TagValue::Environment(
                    std::env::var(&e.name).unwrap_or_else(|_| e.default_value.clone()),
                ),
                Some(custom_tag::Type::RequestHeader(h)) => TagValue::RequestHeader {
                    name: http::HeaderName::from_bytes(h.name.to_ascii_lowercase().as_bytes())
                        .map_err(|e| {
                            ConfigError::new(format!("{at}.request_header.name"), e.to_string())
                        })?,
                    default: h.default_value.clone(),
                },
                Some(custom_tag::Type::Metadata(_)) => {
                    return Err(ConfigError::unsupported(format!("{at}.metadata")))
                }
                Some(custom_tag::Type::Value(_)) => {
                    return Err(ConfigError::unsupported(format!("{at}.value")))
                }
                None => return Err(ConfigError::new(at, "type is required")),
            };
            custom_tags.push((tag.tag.clone(), value));
        }
        let c = |s: &str| store.counter(&format!("http.{stat_prefix}.tracing.{s}"));
        Ok(HttpTracing {
            client: RuntimeFraction::keyed(
                "tracing.client_enabled",
                percent(t.client_sampling.as_ref(), 100.0),
            ),
            random: RuntimeFraction::keyed(
                "tracing.random_sampling",
                percent(t.random_sampling.as_ref(), 100.0),
            ),
            overall: RuntimeFraction::keyed(
                "tracing.global_enabled",
                percent(t.overall_sampling.as_ref(), 100.0),
            ),
            max_path_tag_length: t.max_path_tag_length.map_or(256, |v| v.value as usize),
            custom_tags,
            egress,
            spawn_upstream_span: t.spawn_upstream_span.is_some_and(|b| b.value),
            tracer,
            stats: TracingStats {
                random_sampling: c("random_sampling"),
                service_forced: c("service_forced"),
                client_enabled: c("client_enabled"),
                not_traceable: c("not_traceable"),
                health_check: c("health_check"),
            },
            request_id: Default::default(),
        })
    }

    /// Decides whether the request is traced and marks its `x-request-id` accordingly
    /// (Envoy's `mutateTracingRequestHeader`); counted in `tracing.*`.
    pub fn decide(&self, headers: &mut HeaderMap, worker: usize) -> Reason {
        let reason = self.reason(headers);
        let counter = match reason {
            Reason::Sampling => &self.stats.random_sampling,
            Reason::ServiceForced => &self.stats.service_forced,
            Reason::ClientForced => &self.stats.client_enabled,
            Reason::NotTraceable => &self.stats.not_traceable,
        };
        counter.inc(worker);
        reason
    }

    /// The tracing as the connection manager's `request_id_extension` has the request id
    /// take part in it.
    pub fn with_request_id(
        mut self,
        request_id: crate::http::conn_manager::request_id::RequestIdOptions,
    ) -> HttpTracing {
        self.request_id = request_id;
        self
    }

    fn reason(&self, headers: &mut HeaderMap) -> Reason {
        if !self.request_id.use_for_sampling {
            // The tracer decides (Envoy: "sampled", the id untouched).
            return Reason::Sampling;
        }
        let Some(id) = headers.get("x-request-id") else {
            return Reason::NotTraceable;
        };
        // A UUID's first eight hex digits, modulo 10,000: the request's sampling pivot.
        let Some(pivot) = std::str::from_utf8(id.as_bytes().get(..8).unwrap_or_default())
            .ok()
            .and_then(|h| u64::from_str_radix(h, 16).ok())
            .map(|n| n % 10_000)
        else {
            return Reason::NotTraceable;
        };
        // A UUID carries the mark in its version digit; copied, as the header may change.
        let uuid: Option<[u8; 36]> = id.as_bytes().try_into().ok();
        // Without `pack_trace_reason` no mark is read either (measured against Envoy 1.40).
        let mut reason = uuid
            .filter(|_| self.request_id.pack_trace_reason)
            .map_or(Reason::NotTraceable, |u| Reason::of_mark(u[14]));
        if reason == Reason::NotTraceable {
            if headers.contains_key("x-client-trace-id") && self.client.sample() {
                reason = Reason::ClientForced;
            } else if headers.contains_key("x-envoy-force-trace") {
                reason = Reason::ServiceForced;
            } else if self.random.contains(pivot) {
                reason = Reason::Sampling;
            }
        }
        if reason != Reason::NotTraceable && !self.overall.contains(pivot) {
            reason = Reason::NotTraceable;
        }
        if let Some(mut marked) =
            uuid.filter(|u| self.request_id.pack_trace_reason && u[14] != reason.mark())
        {
            marked[14] = reason.mark();
            if let Ok(v) = HeaderValue::from_bytes(&marked) {
                headers.insert("x-request-id", v);
            }
        }
        reason
    }

    /// A span's name when no decorator names it: Zipkin names spans by the authority;
    /// the others take Envoy's operation name, `ingress` or `egress <authority>`.
    pub fn default_span_name(&self, authority: &str) -> String {
        match (&self.tracer, self.egress) {
            (Some(Tracer::Zipkin(_)), _) => authority.to_string(),
            (_, false) => "ingress".to_string(),
            (_, true) => format!("egress {authority}"),
        }
    }

    /// Whether spans are egress (client) spans.
    pub fn egress(&self) -> bool {
        self.egress
    }

    /// A health check is not traced (counted in `tracing.health_check`).
    pub fn health_check(&self, worker: usize) {
        self.stats.health_check.inc(worker);
    }

    /// Starts the request's span: from the trace context it came with, else a new trace;
    /// the context for the upstream replaces the request's. The request's tags are taken
    /// now (its headers go on upstream).
    pub fn start_span(
        &self,
        reason: Reason,
        headers: &mut HeaderMap,
        req: &SpanStart<'_>,
    ) -> ActiveSpan {
        if self.tracer.is_none() {
            // No tracer: nothing would read the tags.
            return ActiveSpan {
                span: Started::Null,
                tags: Vec::new(),
                custom_from: 0,
                spawns: false,
                upstream: None,
                ended: Vec::new(),
            };
        }
        let mut tags: Vec<(Cow<'static, str>, String)> = Vec::with_capacity(20);
        let mut tag = |k: &'static str, v: &str| tags.push((Cow::Borrowed(k), v.to_string()));
        let header = |n: &str| headers.get(n).and_then(|v| v.to_str().ok());
        let info = crate::server::local_info::node();
        tag("component", "proxy");
        tag("node_id", &info.id);
        if !info.zone.is_empty() {
            tag("zone", &info.zone);
        }
        tag("guid:x-request-id", header("x-request-id").unwrap_or(""));
        let mut url = format!("{}://{}{}", req.scheme, req.authority, req.path);
        if url.len() > self.max_path_tag_length {
            let mut cut = self.max_path_tag_length;
            while !url.is_char_boundary(cut) {
                cut -= 1;
            }
            url.truncate(cut);
        }
        tag("http.url", &url);
        tag("http.method", req.method);
        tag(
            "downstream_cluster",
            header("x-envoy-downstream-service-cluster").unwrap_or("-"),
        );
        tag("user_agent", header("user-agent").unwrap_or("-"));
        tag("http.protocol", req.protocol);
        tag("peer.address", &req.peer.to_string());
        if let Some(id) = header("x-client-trace-id") {
            tag("guid:x-client-trace-id", id);
        }
        if crate::protocol::grpc::is_grpc(headers) {
            tag("grpc.path", req.path);
            tag("grpc.authority", req.authority);
            if let Some(ct) = header("content-type") {
                tag("grpc.content_type", ct);
            }
            if let Some(t) = header("grpc-timeout") {
                tag("grpc.timeout", t);
            }
        }
        let custom_from = tags.len();
        for (name, value) in &self.custom_tags {
            let v = match value {
                TagValue::Literal(v) | TagValue::Environment(v) => Some(v.as_str()),
                TagValue::RequestHeader { name: h, default } => {
                    match headers.get(h).and_then(|v| v.to_str().ok()) {
                        Some(v) => Some(v),
                        None if !default.is_empty() => Some(default.as_str()),
                        None => None,
                    }
                }
            };
            if let Some(v) = v {
                tags.push((Cow::Owned(name.clone()), v.to_string()));
            }
        }
        let traced = reason != Reason::NotTraceable;
        // With a span per attempt, the request's own span is the server side of this hop.
        let client = self.egress && !self.spawn_upstream_span;
        let span = match &self.tracer {
            Some(Tracer::Zipkin(z)) => Started::Zipkin(z.start(traced, client, headers), z.clone()),
            Some(Tracer::OpenTelemetry(o)) => match o.start(traced, client, headers) {
                Some(span) => Started::OpenTelemetry(span, o.clone()),
                None => Started::Null,
            },
            Some(Tracer::Datadog(d)) => Started::Datadog(d.start(traced, headers), d.clone()),
            None => Started::Null,
        };
        ActiveSpan {
            span,
            tags,
            custom_from,
            spawns: self.spawn_upstream_span,
            upstream: None,
            ended: Vec::new(),
        }
    }
}

/// What a request tells its span when it starts.
pub struct SpanStart<'a> {
    /// `http` or `https`.
    pub scheme: &'a str,
    /// The request's authority.
    pub authority: &'a str,
    /// Its path and query.
    pub path: &'a str,
    /// Its method.
    pub method: &'a str,
    /// `HTTP/1.1`, `HTTP/2`.
    pub protocol: &'a str,
    /// The client's address.
    pub peer: std::net::IpAddr,
}

/// What a finished request tells its span.
pub struct SpanEnd<'a> {
    /// Request body bytes.
    pub request_size: u64,
    /// Response body bytes.
    pub response_size: u64,
    /// Envoy's response flags.
    pub flags: &'a str,
    /// The status sent (0: none).
    pub status: u16,
    /// The cluster the request went to.
    pub upstream_cluster: Option<&'a str>,
}

/// A tracer's span and the tracer it goes back to.
enum Started {
    Zipkin(zipkin::Span, Arc<zipkin::ZipkinTracer>),
    OpenTelemetry(opentelemetry::Span, Arc<opentelemetry::OtelTracer>),
    Datadog(datadog::Span, Arc<datadog::DatadogTracer>),
    /// No span (Envoy's null span: the tracer could not take the request's context).
    Null,
}

/// A span's trace id and its own id (what an access log names).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SpanIds {
    /// The trace id (128 bits; a 64-bit one in the low half).
    pub trace: u128,
    /// The span's id, when the tracer gives it out (Envoy's Zipkin spans do not).
    pub span: Option<u64>,
    /// How `%TRACE_ID%` writes the trace (each tracer's as Envoy's).
    pub text: TraceIdText,
}

/// How Envoy's `%TRACE_ID%` writes a tracer's trace id.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TraceIdText {
    /// 32 hex digits (OpenTelemetry, a 128-bit Zipkin trace).
    Hex128,
    /// 16 hex digits of the low half (a 64-bit Zipkin trace).
    Hex64,
    /// The span's own id in hex, unpadded: what Envoy's Datadog spans give out as their
    /// trace id.
    SpanId,
}

/// A request's span, from its start to its end.
pub struct ActiveSpan {
    span: Started,
    tags: Vec<(Cow<'static, str>, String)>,
    /// Where the custom tags start in `tags` (an attempt's span carries them too).
    custom_from: usize,
    /// `spawn_upstream_span`.
    spawns: bool,
    /// The span of the attempt under way, or of the one that answered.
    upstream: Option<Box<UpstreamSpan>>,
    /// Attempts' spans ended and waiting to go with this one (Datadog reports a trace's
    /// spans together).
    ended: Vec<Vec<u8>>,
}

/// An upstream attempt's span (`spawn_upstream_span`), from its start to its end.
struct UpstreamSpan {
    span: Started,
    name: String,
    tags: Vec<(Cow<'static, str>, String)>,
    status: u16,
    protocol: &'static str,
}

/// How an upstream attempt ended, for its span.
pub struct AttemptEnd {
    /// The status it was answered with (0: none).
    pub status: u16,
    /// `HTTP/1.1`, `HTTP/2`; `-` when no connection carried it.
    pub protocol: &'static str,
    /// Its response flag (`-`: none).
    pub flags: &'static str,
    /// Why its stream was reset (Envoy's reset reason), if it was.
    pub reset: Option<&'static str>,
    /// Whether the router gave up on it (a retry or a timeout cut it short).
    pub canceled: bool,
}

/// Sets tag `k` (a tag set again keeps its place and takes the new value, as Envoy's
/// `setTag`).
fn set_tag(tags: &mut Vec<(Cow<'static, str>, String)>, k: Cow<'static, str>, v: String) {
    match tags.iter_mut().find(|(key, _)| *key == k) {
        Some(t) => t.1 = v,
        None => tags.push((k, v)),
    }
}

impl AttemptEnd {
    /// An attempt the router gave up on after `status` (0: none) over `protocol`.
    pub fn canceled(status: u16, protocol: &'static str) -> AttemptEnd {
        AttemptEnd {
            status,
            protocol,
            flags: "-",
            reset: None,
            canceled: true,
        }
    }
}

impl UpstreamSpan {
    /// Ends the span: reported, or encoded for its request's trace chunk (Datadog; `root`
    /// is the request's span).
    fn finish(mut self, end: &AttemptEnd, root: &Started, worker: usize) -> Option<Vec<u8>> {
        let mut tag =
            |k: &'static str, v: &str| set_tag(&mut self.tags, Cow::Borrowed(k), v.into());
        tag("http.protocol", end.protocol);
        tag("http.status_code", &end.status.to_string());
        tag("response_flags", end.flags);
        if end.status == 0 || end.status >= 500 || end.reset.is_some() {
            tag("error", "true");
        }
        if let Some(reason) = end.reset {
            tag("error.reason", reason);
        }
        if end.canceled {
            tag("canceled", "true");
        }
        match (self.span, root) {
            (Started::Zipkin(span, tracer), _) => {
                tracer.finish(span, &self.name, self.tags, worker)
            }
            (Started::OpenTelemetry(span, tracer), _) => {
                tracer.finish(span, &self.name, self.tags, worker)
            }
            (Started::Datadog(span, tracer), Started::Datadog(root, _)) => {
                return Some(tracer.encode_child(span, root, &self.name, self.tags));
            }
            _ => {}
        }
        None
    }
}

impl ActiveSpan {
    /// With `spawn_upstream_span`, starts attempt `attempt`'s span to `host` of `cluster`
    /// (an earlier attempt's ended first) and sends its context upstream in `headers`.
    pub fn start_attempt(
        &mut self,
        headers: &mut HeaderMap,
        cluster: &str,
        host: std::net::SocketAddr,
        attempt: u32,
    ) {
        if !self.spawns {
            return;
        }
        let span = match &self.span {
            Started::Zipkin(parent, z) => Started::Zipkin(z.child(parent, headers), z.clone()),
            Started::OpenTelemetry(parent, o) => {
                Started::OpenTelemetry(o.child(parent, headers), o.clone())
            }
            Started::Datadog(parent, d) => Started::Datadog(d.child(parent, headers), d.clone()),
            Started::Null => return,
        };
        let sampled = match &span {
            Started::Zipkin(s, _) => s.sampled,
            Started::OpenTelemetry(s, _) => s.sampled,
            Started::Datadog(s, _) => s.sampled,
            Started::Null => false,
        };
        if !sampled {
            // Its context went upstream; an unsampled span is never reported.
            self.upstream = None;
            return;
        }
        let mut tags: Vec<(Cow<'static, str>, String)> = Vec::with_capacity(12);
        let host = host.to_string();
        tags.push((Cow::Borrowed("upstream_address"), host.clone()));
        tags.push((Cow::Borrowed("peer.address"), host));
        tags.push((Cow::Borrowed("component"), "proxy".to_string()));
        tags.push((Cow::Borrowed("upstream_cluster"), cluster.to_string()));
        tags.push((Cow::Borrowed("upstream_cluster.name"), cluster.to_string()));
        if attempt > 1 {
            tags.push((Cow::Borrowed("retry.count"), (attempt - 1).to_string()));
        }
        tags.extend_from_slice(&self.tags[self.custom_from..]);
        self.upstream = Some(Box::new(UpstreamSpan {
            span,
            name: format!("router {cluster} egress"),
            tags,
            status: 0,
            protocol: "-",
        }));
    }

    /// Ends the attempt under way, as `end` says.
    pub fn end_attempt(&mut self, end: &AttemptEnd, worker: usize) {
        if let Some(up) = self.upstream.take() {
            if let Some(encoded) = up.finish(end, &self.span, worker) {
                self.ended.push(encoded);
            }
        }
    }

    /// The attempt under way answered with `status` over `protocol`; its span ends with
    /// the request's.
    pub fn attempt_answered(&mut self, status: u16, protocol: &'static str) {
        if let Some(up) = self.upstream.as_mut() {
            up.status = status;
            up.protocol = protocol;
        }
    }

    /// The response's head: a `grpc-status` in it tags the request's span and the
    /// answering attempt's with Envoy's gRPC tags (an error for the statuses Envoy counts
    /// as the server's failure).
    pub fn response_head(&mut self, headers: &HeaderMap) {
        let Some(status) = headers.get("grpc-status") else {
            return;
        };
        if !self.sampled() {
            return;
        }
        let text = |v: &HeaderValue| String::from_utf8_lossy(v.as_bytes()).into_owned();
        let mut grpc = vec![(Cow::Borrowed("grpc.status_code"), text(status))];
        if let Some(m) = headers.get("grpc-message") {
            grpc.push((Cow::Borrowed("grpc.message"), text(m)));
        }
        // Unknown, DeadlineExceeded, Unimplemented, ResourceExhausted, Internal,
        // Unavailable, DataLoss.
        let server_failure = std::str::from_utf8(status.as_bytes())
            .ok()
            .and_then(|s| s.parse::<u64>().ok())
            .is_some_and(|c| matches!(c, 2 | 4 | 8 | 12 | 13 | 14 | 15));
        if server_failure {
            grpc.push((Cow::Borrowed("error"), "true".to_string()));
        }
        if let Some(up) = self.upstream.as_mut() {
            for (k, v) in &grpc {
                set_tag(&mut up.tags, k.clone(), v.clone());
            }
        }
        for (k, v) in grpc {
            set_tag(&mut self.tags, k, v);
        }
    }

    /// Ends the span, named `name`; a sampled one goes to the reporter.
    pub fn finish(mut self, name: &str, end: &SpanEnd<'_>, worker: usize) {
        if let Some(up) = self.upstream.take() {
            let attempt = AttemptEnd {
                status: up.status,
                protocol: up.protocol,
                flags: "-",
                reset: None,
                canceled: false,
            };
            if let Some(encoded) = up.finish(&attempt, &self.span, worker) {
                self.ended.push(encoded);
            }
        }
        if !self.sampled() {
            return;
        }
        let mut tag = |k: &'static str, v: String| set_tag(&mut self.tags, Cow::Borrowed(k), v);
        tag("request_size", end.request_size.to_string());
        tag("response_size", end.response_size.to_string());
        tag("response_flags", end.flags.to_string());
        tag("http.status_code", end.status.to_string());
        if let Some(cluster) = end.upstream_cluster {
            tag("upstream_cluster", cluster.to_string());
            tag("upstream_cluster.name", cluster.to_string());
        }
        if end.status == 0 || end.status >= 500 {
            tag("error", "true".to_string());
        }
        match self.span {
            Started::Zipkin(span, tracer) => tracer.finish(span, name, self.tags, worker),
            Started::OpenTelemetry(span, tracer) => tracer.finish(span, name, self.tags, worker),
            Started::Datadog(span, tracer) => {
                tracer.finish(span, name, self.tags, self.ended, worker)
            }
            Started::Null => {}
        }
    }

    /// The span's ids (`None` for Envoy's null span).
    pub fn ids(&self) -> Option<SpanIds> {
        match &self.span {
            Started::Zipkin(span, _) => Some(span.ids()),
            Started::OpenTelemetry(span, _) => Some(span.ids()),
            Started::Datadog(span, _) => Some(span.ids()),
            Started::Null => None,
        }
    }

    /// Whether the span is sampled (reported when it ends).
    pub fn sampled(&self) -> bool {
        match &self.span {
            Started::Zipkin(span, _) => span.sampled,
            Started::OpenTelemetry(span, _) => span.sampled,
            Started::Datadog(span, _) => span.sampled,
            Started::Null => false,
        }
    }
}
