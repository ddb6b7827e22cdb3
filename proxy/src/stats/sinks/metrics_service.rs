//! `envoy.stat_sinks.metrics_service`: each flush is a `StreamMetricsMessage` on one
//! long-lived `envoy.service.metrics.v3.MetricsService/StreamMetrics` client stream, as
//! Envoy's `MetricsServiceSink` sends it: a Prometheus `MetricFamily` per used counter
//! (its value, or its delta with `report_counters_as_deltas`), per used gauge, and per
//! used histogram a `SUMMARY` (the interval's quantiles) and/or a `HISTOGRAM` (the
//! interval's cumulative bucket counts), every metric stamped with the snapshot's time.
//! The node goes in the first message of each stream. With `emit_tags_as_labels` a
//! family is named by the tag-extracted name and its tags become labels. `batch_size`
//! splits a flush into messages of at most that many families.
//!
//! A stream that ends (the collector closed it, or it could not start) is started again
//! at the next flush; a flush that finds no host, or a collector too slow to take the
//! previous flushes, is dropped.

use courier_proto::envoy::config::core::v3::ApiVersion;
use courier_proto::envoy::config::metrics::v3::{HistogramEmitMode, MetricsServiceConfig};
use courier_proto::envoy::service::metrics::v3::metrics_service_client::MetricsServiceClient;
use courier_proto::envoy::service::metrics::v3::stream_metrics_message::Identifier;
use courier_proto::envoy::service::metrics::v3::StreamMetricsMessage;
use courier_proto::google::protobuf::Any;
use courier_proto::io::prometheus::client::{
    self as prom, Bucket, LabelPair, Metric, MetricFamily, MetricType, Quantile,
};

use super::{FlushContext, MetricSnapshot, Sink};
use crate::config::ConfigError;
use crate::stats::Store;
use crate::upstream::async_client::grpc::{ClientStream, GrpcClient};

/// Envoy's supported quantiles, as fractions.
const QUANTILES: [f64; 10] = [0.0, 0.25, 0.5, 0.75, 0.9, 0.95, 0.99, 0.995, 0.999, 1.0];

/// Flushes that may wait for a slow collector before later ones are dropped.
const QUEUE: usize = 16;

/// What a flush becomes.
#[derive(Debug, Clone, Copy)]
pub struct Options {
    /// `report_counters_as_deltas`.
    pub deltas: bool,
    /// `emit_tags_as_labels`.
    pub labels: bool,
    /// `histogram_emit_mode`: summaries.
    pub summary: bool,
    /// `histogram_emit_mode`: histograms.
    pub histogram: bool,
}

/// The metric families of a flush, in Envoy's order: counters, gauges, histograms.
pub fn families(snapshot: &MetricSnapshot, store: &Store, o: Options) -> Vec<MetricFamily> {
    let timestamp = snapshot
        .time
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX));
    let family = |name: &str, kind: MetricType, fill: &dyn Fn(&mut Metric)| {
        let mut metric = Metric {
            timestamp_ms: Some(timestamp),
            ..Default::default()
        };
        let name = if o.labels {
            let (base, tags) = store.view().tags.produce(name);
            metric.label = tags
                .into_iter()
                .map(|(k, v)| LabelPair {
                    name: Some(k),
                    value: Some(v),
                })
                .collect();
            base
        } else {
            name.to_string()
        };
        fill(&mut metric);
        MetricFamily {
            name: Some(name),
            r#type: Some(kind as i32),
            metric: vec![metric],
            ..Default::default()
        }
    };
    let mut out = Vec::new();
    for c in snapshot.counters.iter().filter(|c| c.used) {
        let value = if o.deltas { c.delta } else { c.value };
        out.push(family(&c.name, MetricType::Counter, &|m| {
            m.counter = Some(prom::Counter {
                value: Some(value as f64),
                ..Default::default()
            })
        }));
    }
    for g in snapshot.gauges.iter().filter(|g| g.used) {
        let value = match g.value {
            crate::stats::GaugeValue::Signed(v) => v as f64,
            crate::stats::GaugeValue::Unsigned(v) => v as f64,
        };
        out.push(family(&g.name, MetricType::Gauge, &|m| {
            m.gauge = Some(prom::Gauge { value: Some(value) })
        }));
    }
    for h in snapshot.histograms.iter().filter(|h| h.used) {
        let interval = &h.interval;
        if o.summary {
            out.push(family(&h.name, MetricType::Summary, &|m| {
                m.summary = Some(prom::Summary {
                    quantile: QUANTILES
                        .iter()
                        .map(|q| Quantile {
                            quantile: Some(*q),
                            value: Some(interval.quantile(*q).unwrap_or(f64::NAN)),
                        })
                        .collect(),
                    ..Default::default()
                })
            }));
        }
        if o.histogram {
            out.push(family(&h.name, MetricType::Histogram, &|m| {
                let mut cumulative = 0;
                m.histogram = Some(prom::Histogram {
                    sample_count: Some(interval.count()),
                    sample_sum: Some(interval.sum as f64),
                    bucket: interval
                        .bounds
                        .iter()
                        .zip(&interval.counts)
                        .map(|(bound, n)| {
                            cumulative += n;
                            Bucket {
                                upper_bound: Some(*bound),
                                cumulative_count: Some(cumulative),
                                ..Default::default()
                            }
                        })
                        .collect(),
                    ..Default::default()
                })
            }));
        }
    }
    out
}

/// The sink: its service, options and the open stream, if any.
pub struct MetricsServiceSink {
    client: GrpcClient,
    options: Options,
    batch_size: usize,
    stream: Option<Stream>,
}

/// An open `StreamMetrics` call.
type Stream = ClientStream<StreamMetricsMessage>;

impl MetricsServiceSink {
    /// A new stream, or `None` when the cluster has no host now.
    fn start(&self) -> Option<Stream> {
        self.client
            .open_stream("metrics service", QUEUE, |channel, request| async move {
                MetricsServiceClient::new(channel)
                    .stream_metrics(request)
                    .await
            })
    }
}

impl Sink for MetricsServiceSink {
    fn flush(&mut self, snapshot: &MetricSnapshot, cx: &FlushContext<'_>) {
        if self.stream.as_ref().is_some_and(|s| s.ended()) {
            self.stream = None;
        }
        let mut identifier = None;
        if self.stream.is_none() {
            self.stream = self.start();
            identifier = Some(Identifier {
                node: Some(cx.node.clone()),
            });
        }
        let Some(stream) = &self.stream else { return };
        let mut all = families(snapshot, cx.store, self.options);
        let size = if self.batch_size == 0 {
            all.len().max(1)
        } else {
            self.batch_size
        };
        let mut messages = Vec::new();
        while !all.is_empty() || messages.is_empty() {
            let rest = all.split_off(size.min(all.len()));
            messages.push(StreamMetricsMessage {
                identifier: identifier.take(),
                envoy_metrics: std::mem::replace(&mut all, rest),
            });
        }
        for m in messages {
            if stream.try_send(m).is_err() {
                tracing::debug!("metrics service: collector too slow, flush dropped");
                return;
            }
        }
    }
}

/// `envoy.stat_sinks.metrics_service`.
#[allow(deprecated)] // `ApiVersion::V2` is named to refuse it
pub fn build(any: &Any, path: &str) -> Result<Box<dyn Sink>, ConfigError> {
    let c: MetricsServiceConfig = super::unpack(any, path)?;
    let at = format!("{path}.typed_config");
    let Some(grpc) = &c.grpc_service else {
        return Err(ConfigError::new(
            format!("{at}.grpc_service"),
            "value is required",
        ));
    };
    if c.transport_api_version == ApiVersion::V2 as i32 {
        return Err(ConfigError::new(
            format!("{at}.transport_api_version"),
            "V2 xDS transport protocol version is deprecated: only V3 is supported",
        ));
    }
    if ApiVersion::try_from(c.transport_api_version).is_err() {
        return Err(ConfigError::new(
            format!("{at}.transport_api_version"),
            "value must be one of the defined enum values",
        ));
    }
    let (summary, histogram) = match HistogramEmitMode::try_from(c.histogram_emit_mode) {
        Ok(HistogramEmitMode::SummaryAndHistogram) => (true, true),
        Ok(HistogramEmitMode::Summary) => (true, false),
        Ok(HistogramEmitMode::Histogram) => (false, true),
        Err(_) => {
            return Err(ConfigError::new(
                format!("{at}.histogram_emit_mode"),
                "value must be one of the defined enum values",
            ))
        }
    };
    let client = GrpcClient::compile(grpc, &format!("{at}.grpc_service"))?;
    Ok(Box::new(MetricsServiceSink {
        client,
        options: Options {
            deltas: c.report_counters_as_deltas.is_some_and(|b| b.value),
            labels: c.emit_tags_as_labels,
            summary,
            histogram,
        },
        batch_size: c.batch_size as usize,
        stream: None,
    }))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::stats::sinks::flush::Latches;

    #[test]
    fn families_are_envoys() {
        let store = Store::new(1);
        let c = store.counter("cluster.backend.upstream_rq_total");
        c.add(0, 3);
        store.counter("cluster.backend.unused");
        store.gauge("server.live").set(1);
        store
            .histogram("cluster.backend.upstream_rq_time")
            .record(0, 7);
        let mut latches = Latches::default();
        latches.snapshot(&store);
        c.add(0, 2);
        let snapshot = latches.snapshot(&store);
        let o = Options {
            deltas: true,
            labels: true,
            summary: true,
            histogram: true,
        };
        let f = families(&snapshot, &store, o);
        let names: Vec<(&str, i32)> = f
            .iter()
            .map(|f| (f.name.as_deref().unwrap_or(""), f.r#type.unwrap_or(-1)))
            .collect();
        assert_eq!(
            names,
            [
                ("cluster.upstream_rq_total", MetricType::Counter as i32),
                ("server.live", MetricType::Gauge as i32),
                ("cluster.upstream_rq_time", MetricType::Summary as i32),
                ("cluster.upstream_rq_time", MetricType::Histogram as i32),
            ]
        );
        let counter = &f[0].metric[0];
        assert_eq!(counter.counter.as_ref().and_then(|c| c.value), Some(2.0));
        assert_eq!(
            counter.label,
            [LabelPair {
                name: Some("envoy.cluster_name".into()),
                value: Some("backend".into())
            }]
        );
        // Nothing recorded in the second interval.
        let h = f[3].metric[0].histogram.as_ref().expect("histogram");
        assert_eq!(h.sample_count, Some(0));
        assert_eq!(h.bucket.len(), crate::stats::HISTOGRAM_BUCKETS.len());
        let totals = families(
            &snapshot,
            &store,
            Options {
                deltas: false,
                labels: false,
                summary: false,
                histogram: true,
            },
        );
        assert_eq!(
            totals[0].name.as_deref(),
            Some("cluster.backend.upstream_rq_total")
        );
        assert_eq!(
            totals[0].metric[0].counter.as_ref().and_then(|c| c.value),
            Some(5.0)
        );
        assert_eq!(totals.len(), 3);
    }
}
