//! `envoy.stat_sinks.open_telemetry` (`SinkConfig`): each flush becomes OTLP
//! `ExportMetricsServiceRequest`s sent with unary `MetricsService/Export` calls to
//! `grpc_service`, built as Envoy 1.40's `OtlpMetricsFlusherImpl` builds them:
//!
//! - one `ResourceMetrics` whose resource carries `telemetry.sdk.*` (no `service.name`:
//!   the sink has none) and one `ScopeMetrics` without a scope;
//! - one `Metric` per used stat, each with one data point stamped with the snapshot's
//!   time: gauges as `Gauge` (no start time), then counters as monotonic `Sum`, then
//!   histograms as `Histogram` with the bucket bounds, the disjoint bucket counts and
//!   one more count for values above the last bound;
//! - counters and histograms are cumulative (start: when the sink was built), or with
//!   `report_*_as_deltas` deltas since the previous flush (start: that flush), where a
//!   counter that did not move and a histogram that recorded nothing are left out;
//! - the name is the tag-extracted one (`use_tag_extracted_name`, default true) or the
//!   full one, after `prefix.`; the tags are string attributes
//!   (`emit_tags_as_attributes`, default true);
//! - `max_data_points_per_request` (0: no limit) splits a flush into several requests.
//!
//! Exports run on the main thread's runtime: a worker never waits for them. A call is
//! bounded by `grpc_service.timeout` (5 s without one; Envoy sets none), a failed one is
//! logged and never retried, and while [`MAX_IN_FLIGHT`] calls are outstanding a flush
//! is dropped (and logged) rather than piled up behind a slow collector.

use std::cell::Cell;
use std::rc::Rc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use courier_proto::envoy::extensions::stat_sinks::open_telemetry::v3::sink_config::ProtocolSpecifier;
use courier_proto::envoy::extensions::stat_sinks::open_telemetry::v3::SinkConfig;
use courier_proto::google::protobuf::Any;
use opentelemetry_proto::tonic::collector::metrics::v1::metrics_service_client::MetricsServiceClient;
use opentelemetry_proto::tonic::collector::metrics::v1::ExportMetricsServiceRequest;
use opentelemetry_proto::tonic::common::v1::KeyValue;
use opentelemetry_proto::tonic::metrics::v1::{
    metric::Data, number_data_point, AggregationTemporality, Gauge, Histogram, HistogramDataPoint,
    Metric, NumberDataPoint, ResourceMetrics, ScopeMetrics, Sum,
};
use opentelemetry_proto::tonic::resource::v1::Resource;

use super::{FlushContext, MetricSnapshot, Sink};
use crate::config::ConfigError;
use crate::stats::{GaugeValue, Store};
use crate::tracers::opentelemetry::exporter::{sdk_version, string_kv};
use crate::upstream::async_client::grpc::GrpcClient;

/// Export calls that may be outstanding before a flush is dropped.
pub const MAX_IN_FLIGHT: usize = 16;

/// How long an export may wait for its answer without `grpc_service.timeout`.
const DEFAULT_TIMEOUT: Duration = Duration::from_secs(5);

/// What a flush becomes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Options {
    /// `report_counters_as_deltas`.
    pub counters_as_deltas: bool,
    /// `report_histograms_as_deltas`.
    pub histograms_as_deltas: bool,
    /// `emit_tags_as_attributes`.
    pub emit_tags: bool,
    /// `use_tag_extracted_name`.
    pub tag_extracted_name: bool,
    /// `prefix` with its dot, or empty.
    pub prefix: String,
    /// `max_data_points_per_request`; 0 is no limit.
    pub max_data_points: usize,
}

/// The start times of a flush's data points, in nanoseconds since the epoch.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Starts {
    /// Of cumulative points: when the sink was built.
    pub cumulative: u64,
    /// Of delta points: the previous flush (the sink's building, before the first).
    pub delta: u64,
}

/// Nanoseconds since the epoch (0 before it, the maximum past `u64`).
pub fn unix_nanos(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_nanos()).unwrap_or(u64::MAX))
}

fn temporality(delta: bool) -> AggregationTemporality {
    if delta {
        AggregationTemporality::Delta
    } else {
        AggregationTemporality::Cumulative
    }
}

/// The metrics of a flush, in Envoy's order: gauges, counters, histograms (each by name).
pub fn metrics(
    snapshot: &MetricSnapshot,
    store: &Store,
    o: &Options,
    starts: Starts,
) -> Vec<Metric> {
    let time = unix_nanos(snapshot.time);
    let tags = &store.view().tags;
    // The metric's name and its data point's attributes.
    let named = |name: &str| -> (String, Vec<KeyValue>) {
        if !o.tag_extracted_name && !o.emit_tags {
            return (format!("{}{name}", o.prefix), Vec::new());
        }
        let (extracted, found) = tags.produce(name);
        let base = if o.tag_extracted_name {
            extracted
        } else {
            name.to_string()
        };
        let attributes = if o.emit_tags {
            found.into_iter().map(|(k, v)| string_kv(k, v)).collect()
        } else {
            Vec::new()
        };
        (format!("{}{base}", o.prefix), attributes)
    };
    let metric = |name: String, data: Data| Metric {
        name,
        data: Some(data),
        ..Default::default()
    };
    let mut out = Vec::new();
    for g in snapshot.gauges.iter().filter(|g| g.used) {
        let (name, attributes) = named(&g.name);
        // Envoy writes the unsigned value into `as_int` as it is (two's complement).
        let value = match g.value {
            GaugeValue::Signed(v) => v,
            GaugeValue::Unsigned(v) => v as i64,
        };
        out.push(metric(
            name,
            Data::Gauge(Gauge {
                data_points: vec![NumberDataPoint {
                    attributes,
                    time_unix_nano: time,
                    value: Some(number_data_point::Value::AsInt(value)),
                    ..Default::default()
                }],
            }),
        ));
    }
    let counter_start = if o.counters_as_deltas {
        starts.delta
    } else {
        starts.cumulative
    };
    for c in snapshot.counters.iter().filter(|c| c.used) {
        let value = if o.counters_as_deltas {
            c.delta
        } else {
            c.value
        };
        if o.counters_as_deltas && value == 0 {
            continue;
        }
        let (name, attributes) = named(&c.name);
        out.push(metric(
            name,
            Data::Sum(Sum {
                data_points: vec![NumberDataPoint {
                    attributes,
                    start_time_unix_nano: counter_start,
                    time_unix_nano: time,
                    value: Some(number_data_point::Value::AsInt(value as i64)),
                    ..Default::default()
                }],
                aggregation_temporality: temporality(o.counters_as_deltas) as i32,
                is_monotonic: true,
            }),
        ));
    }
    let histogram_start = if o.histograms_as_deltas {
        starts.delta
    } else {
        starts.cumulative
    };
    for h in snapshot.histograms.iter().filter(|h| h.used) {
        let values = if o.histograms_as_deltas {
            &h.interval
        } else {
            &h.cumulative
        };
        let count = values.count();
        if o.histograms_as_deltas && count == 0 {
            continue;
        }
        let (name, attributes) = named(&h.name);
        // One count per bound and one above the last: OTLP's shape and the store's.
        let mut bucket_counts = values.counts.clone();
        bucket_counts.resize(values.bounds.len() + 1, 0);
        out.push(metric(
            name,
            Data::Histogram(Histogram {
                data_points: vec![HistogramDataPoint {
                    attributes,
                    start_time_unix_nano: histogram_start,
                    time_unix_nano: time,
                    count,
                    sum: Some(values.sum as f64),
                    bucket_counts,
                    explicit_bounds: values.bounds.to_vec(),
                    ..Default::default()
                }],
                aggregation_temporality: temporality(o.histograms_as_deltas) as i32,
            }),
        ));
    }
    out
}

/// The resource of every request: the sink's `telemetry.sdk.*` (Envoy builds it without a
/// service name, so there is no `service.name`).
pub fn resource() -> Resource {
    Resource {
        attributes: vec![
            string_kv("telemetry.sdk.name", "envoy"),
            // Courier's own language, as its tracer's resource says.
            string_kv("telemetry.sdk.language", "rust"),
            string_kv("telemetry.sdk.version", sdk_version()),
        ],
        ..Default::default()
    }
}

/// The requests of a flush: `metrics` (one data point each) in requests of at most
/// `max_data_points` points (0: one request), each with the resource and a scope-less
/// `ScopeMetrics`. None when there is nothing to send.
pub fn requests(
    mut metrics: Vec<Metric>,
    resource: &Resource,
    max_data_points: usize,
) -> Vec<ExportMetricsServiceRequest> {
    let size = if max_data_points == 0 {
        metrics.len().max(1)
    } else {
        max_data_points
    };
    let mut out = Vec::with_capacity(metrics.len().div_ceil(size));
    while !metrics.is_empty() {
        let rest = metrics.split_off(size.min(metrics.len()));
        let chunk = std::mem::replace(&mut metrics, rest);
        out.push(ExportMetricsServiceRequest {
            resource_metrics: vec![ResourceMetrics {
                resource: Some(resource.clone()),
                scope_metrics: vec![ScopeMetrics {
                    scope: None,
                    metrics: chunk,
                    schema_url: String::new(),
                }],
                schema_url: String::new(),
            }],
        });
    }
    out
}

/// The sink.
pub struct OpenTelemetrySink {
    client: GrpcClient,
    options: Options,
    resource: Resource,
    /// When the sink was built: the start of cumulative points.
    created: u64,
    /// The previous flush's snapshot time: the start of delta points.
    last_flush: u64,
    /// Export calls outstanding.
    in_flight: Rc<Cell<usize>>,
}

impl OpenTelemetrySink {
    fn export(&self, request: ExportMetricsServiceRequest) {
        let channel = match self.client.channel() {
            Ok(c) => c,
            Err(e) => {
                tracing::debug!(error = %e, "OpenTelemetry stats sink: export dropped");
                return;
            }
        };
        let mut call = self.client.request(request);
        // Envoy sends no `grpc-timeout`; the service's timeout bounds the call on this
        // side only, so a collector that never answers cannot hold calls for ever.
        call.metadata_mut().remove("grpc-timeout");
        let deadline = self.client.timeout().unwrap_or(DEFAULT_TIMEOUT);
        let cluster = self.client.cluster().to_string();
        let in_flight = self.in_flight.clone();
        in_flight.set(in_flight.get() + 1);
        tokio::task::spawn_local(async move {
            let mut grpc = MetricsServiceClient::new(channel);
            match tokio::time::timeout(deadline, grpc.export(call)).await {
                Ok(Ok(answer)) => {
                    if let Some(p) = answer.into_inner().partial_success {
                        tracing::debug!(
                            rejected = p.rejected_data_points,
                            message = %p.error_message,
                            "OTLP metrics export partially accepted"
                        );
                    }
                }
                Ok(Err(status)) => tracing::debug!(
                    cluster,
                    code = ?status.code(),
                    message = status.message(),
                    "OTLP metrics export failed"
                ),
                Err(_) => tracing::debug!(cluster, "OTLP metrics export got no answer in time"),
            }
            in_flight.set(in_flight.get().saturating_sub(1));
        });
    }
}

impl Sink for OpenTelemetrySink {
    fn flush(&mut self, snapshot: &MetricSnapshot, cx: &FlushContext<'_>) {
        let starts = Starts {
            cumulative: self.created,
            delta: self.last_flush,
        };
        // The next delta starts here whether or not this flush is sent: what it held is
        // gone from the latches either way.
        self.last_flush = unix_nanos(snapshot.time);
        let all = metrics(snapshot, cx.store, &self.options, starts);
        let requests = requests(all, &self.resource, self.options.max_data_points);
        if self.in_flight.get() + requests.len() > MAX_IN_FLIGHT {
            tracing::debug!(
                in_flight = self.in_flight.get(),
                "OpenTelemetry stats sink: collector too slow, flush dropped"
            );
            return;
        }
        for r in requests {
            self.export(r);
        }
    }
}

/// `envoy.stat_sinks.open_telemetry`.
pub fn build(any: &Any, path: &str) -> Result<Box<dyn Sink>, ConfigError> {
    let c: SinkConfig = super::unpack(any, path)?;
    let at = format!("{path}.typed_config");
    let grpc = match &c.protocol_specifier {
        None => {
            return Err(ConfigError::new(
                format!("{at}.protocol_specifier"),
                "value is required",
            ))
        }
        Some(ProtocolSpecifier::HttpService(_)) => {
            return Err(ConfigError::unsupported(format!("{at}.http_service")))
        }
        Some(ProtocolSpecifier::GrpcService(g)) => g,
    };
    if !c.resource_detectors.is_empty() {
        return Err(ConfigError::unsupported(format!("{at}.resource_detectors")));
    }
    if c.custom_metric_conversions.is_some() {
        return Err(ConfigError::unsupported(format!(
            "{at}.custom_metric_conversions"
        )));
    }
    let client = GrpcClient::compile(grpc, &format!("{at}.grpc_service"))?;
    let created = unix_nanos(SystemTime::now());
    Ok(Box::new(OpenTelemetrySink {
        client,
        options: Options {
            counters_as_deltas: c.report_counters_as_deltas,
            histograms_as_deltas: c.report_histograms_as_deltas,
            emit_tags: c.emit_tags_as_attributes.is_none_or(|b| b.value),
            tag_extracted_name: c.use_tag_extracted_name.is_none_or(|b| b.value),
            prefix: if c.prefix.is_empty() {
                String::new()
            } else {
                format!("{}.", c.prefix)
            },
            max_data_points: c.max_data_points_per_request as usize,
        },
        resource: resource(),
        created,
        last_flush: created,
        in_flight: Rc::new(Cell::new(0)),
    }))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::stats::sinks::flush::Latches;

    fn options() -> Options {
        Options {
            counters_as_deltas: false,
            histograms_as_deltas: false,
            emit_tags: true,
            tag_extracted_name: true,
            prefix: String::new(),
            max_data_points: 0,
        }
    }

    const STARTS: Starts = Starts {
        cumulative: 100,
        delta: 200,
    };

    fn attrs(kv: &[KeyValue]) -> Vec<(String, String)> {
        use opentelemetry_proto::tonic::common::v1::any_value::Value;
        kv.iter()
            .map(|a| {
                let v = match a.value.as_ref().and_then(|v| v.value.as_ref()) {
                    Some(Value::StringValue(s)) => s.clone(),
                    other => format!("{other:?}"),
                };
                (a.key.clone(), v)
            })
            .collect()
    }

    fn store() -> (Store, std::sync::Arc<crate::stats::Counter>) {
        let store = Store::new(1);
        let c = store.counter("cluster.backend.upstream_rq_total");
        c.add(0, 3);
        store.counter("cluster.backend.unused");
        store.gauge("server.live").set(1);
        store
            .histogram("cluster.backend.upstream_rq_time")
            .record(0, 7);
        (store, c)
    }

    #[test]
    fn cumulative_metrics_are_envoys() {
        let (store, c) = store();
        let mut latches = Latches::default();
        latches.snapshot(&store);
        c.add(0, 2);
        let snapshot = latches.snapshot(&store);
        let m = metrics(&snapshot, &store, &options(), STARTS);
        let names: Vec<&str> = m.iter().map(|m| m.name.as_str()).collect();
        assert_eq!(
            names,
            [
                "server.live",
                "cluster.upstream_rq_total",
                "cluster.upstream_rq_time"
            ]
        );
        let time = unix_nanos(snapshot.time);
        let Some(Data::Gauge(g)) = &m[0].data else {
            panic!("gauge: {:?}", m[0])
        };
        assert_eq!(g.data_points[0].start_time_unix_nano, 0);
        assert_eq!(g.data_points[0].time_unix_nano, time);
        assert_eq!(
            g.data_points[0].value,
            Some(number_data_point::Value::AsInt(1))
        );
        let Some(Data::Sum(s)) = &m[1].data else {
            panic!("sum: {:?}", m[1])
        };
        assert!(s.is_monotonic);
        assert_eq!(
            s.aggregation_temporality,
            AggregationTemporality::Cumulative as i32
        );
        let p = &s.data_points[0];
        assert_eq!(p.value, Some(number_data_point::Value::AsInt(5)));
        assert_eq!((p.start_time_unix_nano, p.time_unix_nano), (100, time));
        assert_eq!(
            attrs(&p.attributes),
            [("envoy.cluster_name".to_string(), "backend".to_string())]
        );
        let Some(Data::Histogram(h)) = &m[2].data else {
            panic!("histogram: {:?}", m[2])
        };
        let p = &h.data_points[0];
        assert_eq!((p.count, p.sum), (1, Some(7.0)));
        assert_eq!(p.explicit_bounds, crate::stats::HISTOGRAM_BUCKETS);
        assert_eq!(
            p.bucket_counts.len(),
            crate::stats::HISTOGRAM_BUCKETS.len() + 1
        );
        // 7 is in (5, 10].
        assert_eq!(p.bucket_counts[3], 1);
        assert_eq!(p.bucket_counts.iter().sum::<u64>(), 1);
    }

    #[test]
    fn deltas_leave_out_what_did_not_move() {
        let (store, c) = store();
        let mut latches = Latches::default();
        let o = Options {
            counters_as_deltas: true,
            histograms_as_deltas: true,
            emit_tags: false,
            tag_extracted_name: false,
            prefix: "pre.".into(),
            max_data_points: 0,
        };
        let first = metrics(&latches.snapshot(&store), &store, &o, STARTS);
        assert_eq!(first.len(), 3);
        c.add(0, 2);
        let second = metrics(&latches.snapshot(&store), &store, &o, STARTS);
        let names: Vec<&str> = second.iter().map(|m| m.name.as_str()).collect();
        // The histogram recorded nothing since: left out, as is a counter at delta 0.
        assert_eq!(
            names,
            ["pre.server.live", "pre.cluster.backend.upstream_rq_total"]
        );
        let Some(Data::Sum(s)) = &second[1].data else {
            panic!("sum: {:?}", second[1])
        };
        assert_eq!(
            s.aggregation_temporality,
            AggregationTemporality::Delta as i32
        );
        let p = &s.data_points[0];
        assert_eq!(p.value, Some(number_data_point::Value::AsInt(2)));
        assert_eq!(p.start_time_unix_nano, 200);
        assert!(p.attributes.is_empty());
    }

    #[test]
    fn requests_split_by_data_points() {
        let m = |i: usize| Metric {
            name: format!("m{i}"),
            ..Default::default()
        };
        let all: Vec<Metric> = (0..5).map(m).collect();
        let r = resource();
        let sizes = |reqs: &[ExportMetricsServiceRequest]| -> Vec<usize> {
            reqs.iter()
                .map(|q| q.resource_metrics[0].scope_metrics[0].metrics.len())
                .collect()
        };
        assert_eq!(sizes(&requests(all.clone(), &r, 2)), [2, 2, 1]);
        assert_eq!(sizes(&requests(all.clone(), &r, 0)), [5]);
        assert!(requests(Vec::new(), &r, 0).is_empty());
        let one = requests(all, &r, 0);
        assert_eq!(one[0].resource_metrics[0].resource.as_ref(), Some(&r));
        assert!(one[0].resource_metrics[0].scope_metrics[0].scope.is_none());
    }

    fn sink_config(yaml_fields: SinkConfig) -> Any {
        courier_proto::pack_any(&yaml_fields)
    }

    #[test]
    fn what_is_not_built_is_refused_by_path() {
        use courier_proto::envoy::config::core::v3::{grpc_service, GrpcService, HttpService};
        let grpc = GrpcService {
            target_specifier: Some(grpc_service::TargetSpecifier::EnvoyGrpc(
                grpc_service::EnvoyGrpc {
                    cluster_name: "otel".into(),
                    ..Default::default()
                },
            )),
            ..Default::default()
        };
        let err = |c: SinkConfig| match build(&sink_config(c), "stats_sinks[0]") {
            Ok(_) => String::from("accepted"),
            Err(e) => e.to_string(),
        };
        assert!(
            err(SinkConfig::default()).contains("stats_sinks[0].typed_config.protocol_specifier")
        );
        assert!(err(SinkConfig {
            protocol_specifier: Some(ProtocolSpecifier::HttpService(HttpService::default())),
            ..Default::default()
        })
        .contains("stats_sinks[0].typed_config.http_service"));
        let with_grpc = SinkConfig {
            protocol_specifier: Some(ProtocolSpecifier::GrpcService(grpc)),
            ..Default::default()
        };
        assert!(err(SinkConfig {
            resource_detectors: vec![Default::default()],
            ..with_grpc.clone()
        })
        .contains("stats_sinks[0].typed_config.resource_detectors"));
        assert!(err(SinkConfig {
            custom_metric_conversions: Some(Default::default()),
            ..with_grpc.clone()
        })
        .contains("stats_sinks[0].typed_config.custom_metric_conversions"));
        assert_eq!(err(with_grpc), "accepted");
    }
}
