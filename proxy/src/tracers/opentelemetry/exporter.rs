//! OTLP export of finished spans, on the main thread: an `ExportTraceServiceRequest`
//! per batch (one resource, one scope), sent over gRPC (`TraceService/Export`, unary) to
//! `grpc_service`, or POSTed as protobuf (`application/x-protobuf`) to `http_service`'s
//! `http_uri` — both through [`crate::upstream::async_client`]. Counted in
//! `tracing.opentelemetry.*`: `spans_sent` (spans handed to a request), `spans_dropped`
//! (queue or `max_cache_size` full), `timer_flushed` — Envoy 1.40's counters.

use std::sync::{Arc, OnceLock};
use std::time::Duration;

use bytes::Bytes;
use opentelemetry_proto::tonic::collector::trace::v1::trace_service_client::TraceServiceClient;
use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
use opentelemetry_proto::tonic::common::v1::{any_value, AnyValue, InstrumentationScope, KeyValue};
use opentelemetry_proto::tonic::resource::v1::Resource;
use opentelemetry_proto::tonic::trace::v1::{ResourceSpans, ScopeSpans, Span};
use prost::Message;

use crate::stats::{Counter, Store, MAIN_THREAD};
use crate::tracers::reporter::Destination;
use crate::upstream::async_client::{grpc::GrpcClient, http};

/// How spans leave.
pub enum Transport {
    /// OTLP/gRPC.
    Grpc(GrpcClient),
    /// OTLP/HTTP (protobuf).
    Http(HttpTarget),
}

/// A compiled `http_service`.
pub struct HttpTarget {
    /// `http_uri.cluster`.
    pub cluster: String,
    /// The URI's path (and query).
    pub path: String,
    /// The URI's authority: the `host` header.
    pub host: String,
    /// `request_headers_to_add`, names lower-cased.
    pub headers: Vec<(::http::HeaderName, ::http::HeaderValue)>,
    /// `http_uri.timeout`.
    pub timeout: Duration,
}

/// The `user-agent` of export requests: OTLP's `OTel-OTLP-Exporter-<name>/<version>`, as
/// Envoy writes it, with Courier's version.
fn user_agent() -> &'static str {
    static UA: OnceLock<String> = OnceLock::new();
    UA.get_or_init(|| {
        format!(
            "OTel-OTLP-Exporter-Envoy/{}/{}",
            crate::GIT_REVISION,
            crate::VERSION
        )
    })
}

/// The version the resource and the instrumentation scope carry.
pub fn sdk_version() -> String {
    format!("{}/{}", crate::GIT_REVISION, crate::VERSION)
}

/// A string attribute.
pub fn string_kv(key: impl Into<String>, value: impl Into<String>) -> KeyValue {
    KeyValue {
        key: key.into(),
        value: Some(AnyValue {
            value: Some(any_value::Value::StringValue(value.into())),
        }),
        ..Default::default()
    }
}

/// One OpenTelemetry tracer's collector: where its spans go, what they are reported
/// under, and its counters.
pub struct Exporter {
    transport: Transport,
    resource: Resource,
    scope: Option<InstrumentationScope>,
    max_cache_size: usize,
    spans_sent: Arc<Counter>,
    spans_dropped: Arc<Counter>,
    timer_flushed: Arc<Counter>,
}

impl Exporter {
    /// An exporter over `transport`; the counters are `tracing.opentelemetry.*` in `store`.
    pub fn new(
        transport: Transport,
        resource: Resource,
        scope: Option<InstrumentationScope>,
        max_cache_size: usize,
        store: &Store,
    ) -> Arc<Exporter> {
        // Tracers share the counters: the store hands out one counter per name.
        let c = |s: &str| store.counter(&format!("tracing.opentelemetry.{s}"));
        let (spans_sent, spans_dropped, timer_flushed) =
            (c("spans_sent"), c("spans_dropped"), c("timer_flushed"));
        Arc::new(Exporter {
            transport,
            resource,
            scope,
            max_cache_size,
            spans_sent,
            spans_dropped,
            timer_flushed,
        })
    }

    /// The request for a batch.
    fn request(&self, spans: Vec<Span>) -> ExportTraceServiceRequest {
        ExportTraceServiceRequest {
            resource_spans: vec![ResourceSpans {
                resource: Some(self.resource.clone()),
                scope_spans: vec![ScopeSpans {
                    scope: self.scope.clone(),
                    spans,
                    schema_url: String::new(),
                }],
                schema_url: String::new(),
            }],
        }
    }
}

impl Destination for Exporter {
    type Span = Span;
    const RUNTIME: &'static str = "tracing.opentelemetry";

    fn spans_dropped(&self) -> Option<&Counter> {
        Some(&self.spans_dropped)
    }

    fn timer_flushed(&self) -> Option<&Counter> {
        Some(&self.timer_flushed)
    }

    fn max_pending(&self) -> usize {
        self.max_cache_size
    }

    fn flush(self: Arc<Self>, spans: Vec<Span>) {
        self.spans_sent.add(MAIN_THREAD, spans.len() as u64);
        let request = self.request(spans);
        tokio::task::spawn_local(async move {
            match &self.transport {
                Transport::Grpc(client) => {
                    let channel = match client.channel() {
                        Ok(c) => c,
                        Err(e) => {
                            tracing::debug!(error = %e, "cannot export spans");
                            return;
                        }
                    };
                    let mut req = client.request(request);
                    // Envoy's exporter sends no `grpc-timeout`: the service's timeout
                    // bounds the call here only (5 s without one), so a collector that
                    // never answers cannot pile calls up.
                    req.metadata_mut().remove("grpc-timeout");
                    let deadline = client.timeout().unwrap_or(Duration::from_secs(5));
                    req.metadata_mut().insert(
                        "user-agent",
                        tonic::metadata::AsciiMetadataValue::try_from(user_agent()).unwrap_or_else(
                            |_| tonic::metadata::AsciiMetadataValue::from_static("courier"),
                        ),
                    );
                    let mut grpc = TraceServiceClient::new(channel);
                    match tokio::time::timeout(deadline, grpc.export(req)).await {
                        Ok(Ok(_)) => {}
                        Ok(Err(status)) => tracing::debug!(
                            cluster = client.cluster(),
                            code = ?status.code(),
                            message = status.message(),
                            "OTLP gRPC export failed"
                        ),
                        Err(_) => tracing::debug!(
                            cluster = client.cluster(),
                            "OTLP gRPC export got no answer in time"
                        ),
                    }
                }
                Transport::Http(t) => {
                    let ua = (
                        ::http::header::USER_AGENT,
                        ::http::HeaderValue::from_static("courier"),
                    );
                    let ua = ::http::HeaderValue::from_str(user_agent())
                        .map(|v| (::http::header::USER_AGENT, v))
                        .unwrap_or(ua);
                    let mut headers = Vec::with_capacity(t.headers.len() + 1);
                    headers.push(ua);
                    // `request_headers_to_add` replace a header of the same name (Envoy
                    // sets them by reference), the user agent included.
                    for (k, v) in &t.headers {
                        headers.retain(|(n, _)| n != k);
                        headers.push((k.clone(), v.clone()));
                    }
                    let sent = http::post(http::Post {
                        cluster: &t.cluster,
                        path: &t.path,
                        host: &t.host,
                        content_type: "application/x-protobuf",
                        headers: &headers,
                        body: Bytes::from(request.encode_to_vec()),
                        timeout: t.timeout,
                    })
                    .await;
                    match sent {
                        Ok((200, _)) => {}
                        Ok((status, _)) => tracing::warn!(
                            status,
                            cluster = %t.cluster,
                            "OTLP HTTP exporter received a non-success status code"
                        ),
                        Err(e) => tracing::debug!(error = %e, "OTLP HTTP export failed"),
                    }
                }
            }
        });
    }
}
