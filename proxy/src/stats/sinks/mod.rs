//! Stats sinks (the bootstrap's `stats_sinks`): where the main thread sends a snapshot of
//! every stat each `stats_flush_interval` (Envoy's `flushMetricsToSinks`).
//!
//! A flush ([`flush::Flusher`]) reads the workers' cells without stopping them, latches
//! each counter (its delta since the last flush, Envoy's `latch()`) and each histogram
//! (the values recorded in the interval), and hands the [`MetricSnapshot`] to every sink.
//! Sinks are extensions, resolved through [`SINKS`] as Envoy's `envoy.stat_sinks`
//! category: StatsD and DogStatsD ([`statsd`]), the gRPC Metrics Service
//! ([`metrics_service`]) and OpenTelemetry's OTLP ([`open_telemetry`]). A sink's network I/O runs on the main thread's runtime; a slow
//! collector holds up its own reports, never a worker.

pub mod flush;
pub mod metrics_service;
pub mod open_telemetry;
pub mod statsd;

use std::time::{Duration, SystemTime};

use courier_proto::envoy::config::bootstrap::v3::bootstrap::StatsFlush;
use courier_proto::envoy::config::bootstrap::v3::Bootstrap;
use courier_proto::envoy::config::core::v3::Node;
use courier_proto::envoy::config::metrics::v3::stats_sink::ConfigType;
use courier_proto::google::protobuf::Any;

use super::{GaugeValue, HistogramSnapshot, Store};
use crate::config::ConfigError;
use crate::extensions::{Factory, Registry};

/// A counter in a flush.
#[derive(Debug, Clone, PartialEq)]
pub struct CounterSnapshot {
    /// Full name (`cluster.backend.upstream_rq_total`).
    pub name: String,
    /// Value since start.
    pub value: u64,
    /// Added since the previous flush.
    pub delta: u64,
    /// Whether it was ever added to (Envoy's sinks skip unused stats).
    pub used: bool,
}

/// A gauge in a flush.
#[derive(Debug, Clone, PartialEq)]
pub struct GaugeSnapshot {
    /// Full name.
    pub name: String,
    /// Value.
    pub value: GaugeValue,
    /// Whether it was ever set or changed.
    pub used: bool,
}

/// A histogram in a flush.
#[derive(Debug, Clone, PartialEq)]
pub struct HistogramFlush {
    /// Full name.
    pub name: String,
    /// Values recorded since start.
    pub cumulative: HistogramSnapshot,
    /// Values recorded since the previous flush.
    pub interval: HistogramSnapshot,
    /// Whether a value was ever recorded.
    pub used: bool,
}

/// Every stat `stats_matcher` keeps, at one moment (Envoy's `MetricSnapshot`).
#[derive(Debug, Clone)]
pub struct MetricSnapshot {
    /// Counters, by name.
    pub counters: Vec<CounterSnapshot>,
    /// Gauges, by name.
    pub gauges: Vec<GaugeSnapshot>,
    /// Histograms, by name.
    pub histograms: Vec<HistogramFlush>,
    /// When it was taken.
    pub time: SystemTime,
}

/// What a sink may need besides the snapshot.
pub struct FlushContext<'a> {
    /// The store: its `stats_config` gives names their tags.
    pub store: &'a Store,
    /// This proxy's node (the bootstrap's, with the command line's overrides).
    pub node: &'a Node,
}

/// A stats sink: given each flush's snapshot on the main thread.
pub trait Sink {
    /// Sends (or starts sending) `snapshot`.
    fn flush(&mut self, snapshot: &MetricSnapshot, cx: &FlushContext<'_>);

    /// The cluster it needs to exist at start-up, if any (Envoy checks a TCP StatsD
    /// sink's cluster when it builds the sink).
    fn required_cluster(&self) -> Option<&str> {
        None
    }
}

/// Builds a sink from its config (`typed_config`, or empty without one) at `path`.
/// Building checks the config and opens nothing: sockets and streams open at the first
/// flush.
type BuildSink = fn(&Any, &str) -> Result<Box<dyn Sink>, ConfigError>;

/// The sinks a `stats_sinks` entry may name.
pub static SINKS: Registry<BuildSink> = Registry {
    point: "stats sink",
    factories: &[
        Factory {
            type_name: "envoy.config.metrics.v3.StatsdSink",
            name: "envoy.stat_sinks.statsd",
            build: statsd::build_statsd,
        },
        Factory {
            type_name: "envoy.config.metrics.v3.DogStatsdSink",
            name: "envoy.stat_sinks.dog_statsd",
            build: statsd::build_dog_statsd,
        },
        Factory {
            type_name: "envoy.config.metrics.v3.MetricsServiceConfig",
            name: "envoy.stat_sinks.metrics_service",
            build: metrics_service::build,
        },
        Factory {
            type_name: "envoy.extensions.stat_sinks.open_telemetry.v3.SinkConfig",
            name: "envoy.stat_sinks.open_telemetry",
            build: open_telemetry::build,
        },
    ],
};

/// Sinks Envoy has that Courier does not build, refused by name with a reason rather
/// than reported as unknown.
const NOT_BUILT: &[(&str, &str)] = &[
    (
        "envoy.config.metrics.v3.HystrixSink",
        "the Hystrix stats sink is not built in Courier",
    ),
    (
        "envoy.extensions.stat_sinks.graphite_statsd.v3.GraphiteStatsdSink",
        "the Graphite StatsD sink is not built in Courier",
    ),
    (
        "envoy.extensions.stat_sinks.wasm.v3.Wasm",
        "the Wasm stats sink is not built in Courier",
    ),
];

/// When stats are flushed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FlushTrigger {
    /// Every interval (`stats_flush_interval`, 5 s by default).
    Every(Duration),
    /// When the admin's `/stats` is read (`stats_flush_on_admin`).
    OnAdmin,
}

/// The bootstrap's sinks and flush schedule.
pub struct SinkConfig {
    /// The sinks, in order.
    pub sinks: Vec<Box<dyn Sink>>,
    /// When to flush.
    pub trigger: FlushTrigger,
}

/// Compiles `stats_sinks`, `stats_flush_interval` and `stats_flush_on_admin` with
/// Envoy's checks.
pub fn compile(b: &Bootstrap) -> Result<SinkConfig, ConfigError> {
    let interval = match &b.stats_flush_interval {
        None => Duration::from_secs(5),
        Some(d) => {
            let interval = crate::config::duration(d, "stats_flush_interval")?;
            // Envoy's bounds: at least 1 ms, under 5 minutes.
            if interval < Duration::from_millis(1) || interval >= Duration::from_secs(300) {
                return Err(ConfigError::new(
                    "stats_flush_interval",
                    "value must be inside range [1ms, 5m)",
                ));
            }
            interval
        }
    };
    let trigger = match b.stats_flush {
        Some(StatsFlush::StatsFlushOnAdmin(on_admin)) => {
            if !on_admin {
                return Err(ConfigError::new(
                    "stats_flush_on_admin",
                    "value must equal true",
                ));
            }
            if b.stats_flush_interval.is_some() {
                return Err(ConfigError::new(
                    "stats_flush_on_admin",
                    "Only one of stats_flush_interval or stats_flush_on_admin should be set!",
                ));
            }
            FlushTrigger::OnAdmin
        }
        None => FlushTrigger::Every(interval),
    };
    let mut sinks = Vec::with_capacity(b.stats_sinks.len());
    for (i, s) in b.stats_sinks.iter().enumerate() {
        let path = format!("stats_sinks[{i}]");
        let any = s.config_type.as_ref().map(|ConfigType::TypedConfig(a)| a);
        if let Some(a) = any {
            let type_name = courier_proto::type_url::message_name(&a.type_url);
            if let Some((_, why)) = NOT_BUILT.iter().find(|(t, _)| *t == type_name) {
                return Err(ConfigError::new(format!("{path}.typed_config"), *why));
            }
        }
        let found = SINKS
            .resolve(any, &s.name, false, &path)?
            .ok_or_else(|| ConfigError::new(path.clone(), "unknown stats sink"))?;
        let config = found.config.unwrap_or_default();
        sinks.push((found.factory.build)(&config, &path)?);
    }
    Ok(SinkConfig { sinks, trigger })
}

/// Unpacks a sink's config, naming `path` on failure.
fn unpack<T: prost::Message + prost::Name + Default>(
    any: &Any,
    path: &str,
) -> Result<T, ConfigError> {
    if any.type_url.is_empty() {
        return Ok(T::default());
    }
    courier_proto::unpack_any(any)
        .map_err(|e| ConfigError::new(format!("{path}.typed_config"), e.to_string()))
}
