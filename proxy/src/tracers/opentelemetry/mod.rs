//! The OpenTelemetry tracer (`envoy.tracers.opentelemetry`, `OpenTelemetryConfig`): W3C
//! trace context in and out ([`context`]), one span per request — SERVER on an ingress
//! listener, CLIENT on an egress one — and spans exported over OTLP ([`exporter`]).
//!
//! As Envoy 1.40: a request with a valid `traceparent` joins its trace as a child of the
//! caller's span, keeps its `tracestate`, and is sampled only when both the caller's
//! sampled flag and the connection manager's decision say so; a request without one
//! starts a new trace sampled by the decision. A `traceparent` that is present but not
//! valid gets no span at all: nothing is reported and the request's trace headers go
//! upstream untouched. Upstream gets `traceparent: 00-{trace}-{this span}-{01|00}` and
//! `tracestate` (empty when there is none).
//!
//! Attributes are the connection manager's tags as strings; the span's status is ERROR
//! for a 5xx, and for a 4xx on a CLIENT span (OpenTelemetry's HTTP conventions, as Envoy
//! applies them). The resource carries `service.name` (`service_name`, default
//! `unknown_service:envoy`) and `telemetry.sdk.*`; the scope is `envoy` with the proxy's
//! version.
//!
//! Refused by path: `resource_detectors`, `sampler`, `exporter` (extensions Courier does
//! not build), `http_service.formatters`, header values with substitution formatters and
//! `append_action`s other than the default in `http_service.request_headers_to_add`.

pub mod context;
pub mod exporter;

use std::borrow::Cow;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use courier_proto::envoy::config::core::v3::http_uri::HttpUpstreamType;
use courier_proto::envoy::config::core::v3::HttpService;
use courier_proto::envoy::config::trace::v3::OpenTelemetryConfig;
use courier_proto::google::protobuf::Any;
use http::{HeaderMap, HeaderValue};
use opentelemetry_proto::tonic::common::v1::InstrumentationScope;
use opentelemetry_proto::tonic::resource::v1::Resource;
use opentelemetry_proto::tonic::trace::v1 as otlp;

use self::exporter::{string_kv, Exporter, HttpTarget, Transport};
use super::reporter::Reporter;
use crate::config::ConfigError;
use crate::stats::Store;
use crate::upstream::async_client::grpc::GrpcClient;

/// OpenTelemetry spans on their way to the main thread.
pub static REPORTER: Reporter<Exporter> = Reporter::new();

/// `max_cache_size`'s default.
const DEFAULT_MAX_CACHE_SIZE: usize = 1024;

/// `service_name`'s default.
const DEFAULT_SERVICE_NAME: &str = "unknown_service:envoy";

/// The span flags' "is remote is known" bit (OTLP `SPAN_FLAGS_CONTEXT_HAS_IS_REMOTE_MASK`).
const FLAG_HAS_IS_REMOTE: u32 = 0x100;
/// The span flags' "parent is remote" bit (`SPAN_FLAGS_CONTEXT_IS_REMOTE_MASK`).
const FLAG_IS_REMOTE: u32 = 0x200;

/// A compiled `OpenTelemetryConfig`.
pub struct OtelTracer {
    exporter: Arc<Exporter>,
}

/// Compiles `http_service` (paths under `at`).
fn http_target(h: &HttpService, at: &str) -> Result<HttpTarget, ConfigError> {
    if !h.formatters.is_empty() {
        return Err(ConfigError::unsupported(format!("{at}.formatters")));
    }
    let uri = h
        .http_uri
        .as_ref()
        .ok_or_else(|| ConfigError::new(format!("{at}.http_uri"), "value is required"))?;
    let cluster = match &uri.http_upstream_type {
        Some(HttpUpstreamType::Cluster(c)) if !c.is_empty() => c.clone(),
        _ => {
            return Err(ConfigError::new(
                format!("{at}.http_uri.cluster"),
                "value length must be at least 1 characters",
            ))
        }
    };
    let timeout = uri
        .timeout
        .as_ref()
        .ok_or_else(|| ConfigError::new(format!("{at}.http_uri.timeout"), "value is required"))?;
    let timeout = crate::config::duration(timeout, &format!("{at}.http_uri.timeout"))?;
    // A zero timeout is no timeout for Envoy's async client; a day stands for it here.
    let timeout = if timeout.is_zero() {
        Duration::from_secs(86_400)
    } else {
        timeout
    };
    let (host, path) = crate::protocol::message::host_and_path(&uri.uri);
    let mut headers = Vec::with_capacity(h.request_headers_to_add.len());
    for (i, o) in h.request_headers_to_add.iter().enumerate() {
        let here = format!("{at}.request_headers_to_add[{i}]");
        if o.append_action != 0 {
            return Err(ConfigError::unsupported(format!("{here}.append_action")));
        }
        let hv = o
            .header
            .as_ref()
            .ok_or_else(|| ConfigError::new(format!("{here}.header"), "value is required"))?;
        let value: &[u8] = if hv.raw_value.is_empty() {
            hv.value.as_bytes()
        } else {
            &hv.raw_value
        };
        // Envoy reads the value as a substitution format string; only plain text is
        // built here, so a `%` (a command or an escape) is refused rather than sent raw.
        if value.contains(&b'%') {
            return Err(ConfigError::new(
                format!("{here}.header.value"),
                "substitution formatters are not supported by Courier",
            ));
        }
        let name = http::HeaderName::from_bytes(hv.key.to_ascii_lowercase().as_bytes())
            .map_err(|e| ConfigError::new(format!("{here}.header.key"), e.to_string()))?;
        let value = HeaderValue::from_bytes(value)
            .map_err(|e| ConfigError::new(format!("{here}.header.value"), e.to_string()))?;
        headers.push((name, value));
    }
    Ok(HttpTarget {
        cluster,
        path: path.to_string(),
        host: host.to_string(),
        headers,
        timeout,
    })
}

impl OtelTracer {
    /// Compiles an `OpenTelemetryConfig` (paths relative to `typed_config`).
    pub fn compile(any: &Any, store: &Store) -> Result<OtelTracer, ConfigError> {
        let c: OpenTelemetryConfig = courier_proto::unpack_any(any)
            .map_err(|e| ConfigError::new("typed_config", e.to_string()))?;
        if !c.resource_detectors.is_empty() {
            return Err(ConfigError::unsupported("typed_config.resource_detectors"));
        }
        if c.sampler.is_some() {
            return Err(ConfigError::unsupported("typed_config.sampler"));
        }
        let exporters = [
            c.grpc_service.is_some(),
            c.http_service.is_some(),
            c.exporter.is_some(),
        ];
        if exporters.iter().filter(|set| **set).count() != 1 {
            return Err(ConfigError::new(
                "typed_config",
                "OpenTelemetry Tracer must have exactly one of gRPC, HTTP, or custom exporter configured.",
            ));
        }
        let transport = match (&c.grpc_service, &c.http_service) {
            (Some(g), _) => Transport::Grpc(GrpcClient::compile(g, "typed_config.grpc_service")?),
            (_, Some(h)) => Transport::Http(http_target(h, "typed_config.http_service")?),
            _ => return Err(ConfigError::unsupported("typed_config.exporter")),
        };
        let flag = |b: &Option<courier_proto::google::protobuf::BoolValue>| {
            b.as_ref().is_none_or(|b| b.value)
        };
        let version = exporter::sdk_version();
        let mut attributes = Vec::with_capacity(4);
        if flag(&c.set_telemetry_sdk_resource_attributes) {
            // The language is Courier's own (Envoy says `cpp`); the name is Envoy's, as
            // collectors know the proxy by it.
            attributes.push(string_kv("telemetry.sdk.language", "rust"));
            attributes.push(string_kv("telemetry.sdk.name", "envoy"));
            attributes.push(string_kv("telemetry.sdk.version", version.clone()));
        }
        if flag(&c.set_service_name_resource_attribute) {
            let name = if c.service_name.is_empty() {
                DEFAULT_SERVICE_NAME
            } else {
                &c.service_name
            };
            attributes.push(string_kv("service.name", name));
        }
        let scope = flag(&c.set_instrumentation_scope).then(|| InstrumentationScope {
            name: "envoy".into(),
            version,
            ..Default::default()
        });
        let max_cache_size = c
            .max_cache_size
            .map_or(DEFAULT_MAX_CACHE_SIZE, |v| v.value as usize);
        Ok(OtelTracer {
            exporter: Exporter::new(
                transport,
                Resource {
                    attributes,
                    ..Default::default()
                },
                scope,
                max_cache_size,
                store,
            ),
        })
    }

    /// Starts a span for a request whose headers are `headers`; `traced` is the
    /// connection manager's decision; a `client` span is an egress one. `None` when the
    /// request's `traceparent` is not valid (Envoy's null span: nothing reported, headers
    /// untouched); else the upstream's trace context replaces the request's.
    pub fn start(&self, traced: bool, client: bool, headers: &mut HeaderMap) -> Option<Span> {
        let span = match context::extract(headers) {
            None => Span {
                trace_id: random_id(),
                span_id: random_id(),
                parent: None,
                remote_parent: false,
                attempt: false,
                trace_state: String::new(),
                sampled: traced,
                client,
                start: SystemTime::now(),
                started: Instant::now(),
            },
            Some(Ok(incoming)) => Span {
                trace_id: incoming.trace_id,
                span_id: random_id(),
                parent: Some(incoming.parent_id),
                remote_parent: true,
                attempt: false,
                trace_state: incoming.trace_state,
                // The caller's flag, and the connection manager may still say no.
                sampled: incoming.sampled && traced,
                client,
                start: SystemTime::now(),
                started: Instant::now(),
            },
            Some(Err(e)) => {
                tracing::trace!(error = %e, "unable to extract span context");
                return None;
            }
        };
        span.inject(headers);
        Some(span)
    }

    /// An upstream attempt's CLIENT span, a child of `parent`; its context replaces the
    /// one in `headers`.
    pub fn child(&self, parent: &Span, headers: &mut HeaderMap) -> Span {
        let span = Span {
            trace_id: parent.trace_id,
            span_id: random_id(),
            parent: Some(parent.span_id),
            remote_parent: false,
            attempt: true,
            trace_state: parent.trace_state.clone(),
            sampled: parent.sampled,
            client: true,
            start: SystemTime::now(),
            started: Instant::now(),
        };
        span.inject(headers);
        span
    }

    /// Ends `span` (named `name`, with `tags`); a sampled span goes to the reporter as an
    /// OTLP span.
    pub fn finish(
        &self,
        span: Span,
        name: &str,
        tags: Vec<(Cow<'static, str>, String)>,
        worker: usize,
    ) {
        if !span.sampled {
            return;
        }
        let mut attributes: Vec<opentelemetry_proto::tonic::common::v1::KeyValue> =
            Vec::with_capacity(tags.len() + 1);
        let mut error = false;
        let mut has_zone = false;
        for (k, v) in tags {
            if k.is_empty() {
                continue;
            }
            if k == "http.status_code" {
                // 5xx is an error; 4xx only for a client span (the server answered it).
                if let Ok(code) = v.parse::<u64>() {
                    error = code >= 500 || (code >= 400 && span.client);
                }
            }
            has_zone |= k == "zone";
            // A tag set twice keeps its first place and its last value (Envoy's setTag).
            match attributes.iter_mut().find(|a| a.key == k) {
                Some(a) => *a = string_kv(k.into_owned(), v),
                None => attributes.push(string_kv(k.into_owned(), v)),
            }
        }
        if !has_zone && !span.attempt {
            // Envoy tags every request's span with the zone, empty or not.
            attributes.push(string_kv("zone", ""));
        }
        let start = span
            .start
            .duration_since(SystemTime::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos() as u64);
        let end = start + span.started.elapsed().as_nanos() as u64;
        let kind = if span.client {
            otlp::span::SpanKind::Client
        } else {
            otlp::span::SpanKind::Server
        };
        let mut flags = FLAG_HAS_IS_REMOTE | u32::from(span.sampled);
        if span.remote_parent {
            flags |= FLAG_IS_REMOTE;
        }
        let out = otlp::Span {
            trace_id: span.trace_id.to_vec(),
            span_id: span.span_id.to_vec(),
            trace_state: span.trace_state,
            parent_span_id: span.parent.map(|p| p.to_vec()).unwrap_or_default(),
            flags,
            name: name.to_string(),
            kind: kind as i32,
            start_time_unix_nano: start,
            end_time_unix_nano: end,
            attributes,
            status: error.then(|| otlp::Status {
                code: otlp::status::StatusCode::Error as i32,
                message: String::new(),
            }),
            ..Default::default()
        };
        REPORTER.submit(&self.exporter, out, worker);
    }
}

/// A request's span while it runs.
pub struct Span {
    trace_id: [u8; 16],
    span_id: [u8; 8],
    parent: Option<[u8; 8]>,
    /// The parent is the caller's span (not one of this proxy's).
    remote_parent: bool,
    /// An upstream attempt's span (`spawn_upstream_span`).
    attempt: bool,
    trace_state: String,
    /// Reported when it ends.
    pub sampled: bool,
    client: bool,
    start: SystemTime,
    started: Instant,
}

/// A random span or trace id; never all zeros, which W3C trace context forbids.
fn random_id<const N: usize>() -> [u8; N] {
    loop {
        let id: [u8; N] = std::array::from_fn(|_| fastrand::u8(..));
        if id.iter().any(|b| *b != 0) {
            return id;
        }
    }
}

impl Span {
    /// Sends this span's context upstream in `headers`, replacing any there.
    fn inject(&self, headers: &mut HeaderMap) {
        let tp = context::traceparent(&self.trace_id, &self.span_id, self.sampled);
        if let Ok(v) = HeaderValue::from_str(&tp) {
            headers.insert(context::TRACEPARENT, v);
        }
        // The joined tracestate came from header values, so it is a valid value; an
        // empty one is sent as Envoy sends it.
        if let Ok(v) = HeaderValue::from_str(&self.trace_state) {
            headers.insert(context::TRACESTATE, v);
        }
    }

    /// The trace and span ids.
    pub fn ids(&self) -> crate::tracers::SpanIds {
        crate::tracers::SpanIds {
            trace: u128::from_be_bytes(self.trace_id),
            span: Some(u64::from_be_bytes(self.span_id)),
            text: crate::tracers::TraceIdText::Hex128,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn any(yaml: &str) -> Any {
        let c: OpenTelemetryConfig = courier_proto::from_yaml(yaml).expect("parses");
        Any {
            type_url: "type.googleapis.com/envoy.config.trace.v3.OpenTelemetryConfig".into(),
            value: prost::Message::encode_to_vec(&c),
        }
    }

    fn refused(yaml: &str) -> String {
        match OtelTracer::compile(&any(yaml), &Store::new(1)) {
            Ok(_) => "accepted".into(),
            Err(e) => format!("{}: {}", e.path, e.message),
        }
    }

    #[test]
    fn what_cannot_be_honoured_is_refused_by_path() {
        let grpc = "grpc_service: { envoy_grpc: { cluster_name: otel } }";
        assert_eq!(refused(grpc), "accepted");
        assert!(refused("service_name: x")
            .starts_with("typed_config: OpenTelemetry Tracer must have exactly one"));
        assert!(refused(&format!(
            "{grpc}\nhttp_service: {{ http_uri: {{ uri: 'http://a/v1/traces', cluster: c, timeout: 1s }} }}"
        ))
        .starts_with("typed_config: OpenTelemetry Tracer must have exactly one"));
        assert_eq!(
            refused(&format!("{grpc}\nsampler: {{ name: s, typed_config: {{ '@type': type.googleapis.com/google.protobuf.Struct, value: {{}} }} }}")),
            "typed_config.sampler: not supported by Courier"
        );
        assert_eq!(
            refused(&format!("{grpc}\nresource_detectors: [{{ name: s, typed_config: {{ '@type': type.googleapis.com/google.protobuf.Struct, value: {{}} }} }}]")),
            "typed_config.resource_detectors: not supported by Courier"
        );
        assert_eq!(
            refused("http_service: { http_uri: { uri: 'http://a/v1/traces', cluster: c } }"),
            "typed_config.http_service.http_uri.timeout: value is required"
        );
        assert_eq!(
            refused("http_service: { http_uri: { uri: 'http://a/v1/traces', cluster: c, timeout: 1s }, request_headers_to_add: [{ header: { key: a, value: '%ENVIRONMENT(HOME)%' } }] }"),
            "typed_config.http_service.request_headers_to_add[0].header.value: substitution formatters are not supported by Courier"
        );
    }

    #[test]
    fn spans_join_the_callers_trace_and_both_flags_must_sample() {
        let t = OtelTracer::compile(
            &any("grpc_service: { envoy_grpc: { cluster_name: otel } }"),
            &Store::new(1),
        )
        .expect("compiles");
        let tp = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
        let mut h = HeaderMap::new();
        h.insert("traceparent", HeaderValue::from_static(tp));
        let s = t.start(false, false, &mut h).expect("a span");
        assert!(!s.sampled);
        assert_eq!(
            s.parent,
            Some([0x00, 0xf0, 0x67, 0xaa, 0x0b, 0xa9, 0x02, 0xb7])
        );
        let sent = h
            .get("traceparent")
            .and_then(|v| v.to_str().ok())
            .unwrap_or("");
        assert!(
            sent.starts_with("00-4bf92f3577b34da6a3ce929d0e0e4736-"),
            "{sent}"
        );
        assert!(
            sent.ends_with("-00") && !sent.contains("00f067aa0ba902b7"),
            "{sent}"
        );
        assert_eq!(h.get("tracestate").map(|v| v.as_bytes()), Some(&b""[..]));
        let mut bad = HeaderMap::new();
        bad.insert("traceparent", HeaderValue::from_static("00-1-2-01"));
        assert!(t.start(true, false, &mut bad).is_none());
        assert_eq!(
            bad.get("traceparent").map(|v| v.as_bytes()),
            Some(&b"00-1-2-01"[..])
        );
    }
}
