//! `envoy.access_loggers.open_telemetry`: each entry becomes an OTLP `LogRecord` (its
//! start time, a `body` and `attributes` whose strings are access-log formats, nested
//! lists and arrays kept as they are), exported with `LogsService/Export` under a
//! resource naming the log and the node (`log_name`, `zone_name`, `cluster_name`,
//! `node_name`, unless `disable_builtin_labels`) and the configured
//! `resource_attributes`. Its `formatters` are a file logger's (`req_without_query`, `cel`).
//!
//! Records are built on the worker and batched on the main thread (`grpc_export.rs`:
//! `buffer_flush_interval`, 1 s, or `buffer_size_bytes`, 16 KiB); each batch is exported
//! in one call, in a task of its own: a slow collector holds up nothing else.

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use courier_proto::envoy::extensions::access_loggers::open_telemetry::v3::OpenTelemetryAccessLogConfig;
use courier_proto::google::protobuf::Any;
use courier_proto::opentelemetry::proto::common::v1 as config_otel;
use opentelemetry_proto::tonic::collector::logs::v1::logs_service_client::LogsServiceClient;
use opentelemetry_proto::tonic::collector::logs::v1::ExportLogsServiceRequest;
use opentelemetry_proto::tonic::common::v1::{
    any_value, AnyValue, ArrayValue, KeyValue, KeyValueList,
};
use opentelemetry_proto::tonic::logs::v1::{LogRecord, ResourceLogs, ScopeLogs};
use opentelemetry_proto::tonic::resource::v1::Resource;
use prost::Message;

use super::format::{Extensions, LogFormat};
use super::grpc_export::{self, Batching, Destination, Record};
use super::LogEntry;
use crate::config::ConfigError;
use crate::stats::Store;
use crate::upstream::async_client::grpc::GrpcClient;

/// Envoy's message for a value its formatter cannot take.
const ONLY_STRINGS: &str = "Only string values, nested key value lists and array values are supported in OpenTelemetry access log format.";

/// A `body` or attribute value: a format, or lists of them.
enum ValueFormat {
    Text(LogFormat),
    List(Vec<(String, ValueFormat)>),
    Array(Vec<ValueFormat>),
}

impl ValueFormat {
    fn compile(
        v: &config_otel::AnyValue,
        at: &str,
        ext: Extensions,
    ) -> Result<ValueFormat, ConfigError> {
        use config_otel::any_value::Value;
        match &v.value {
            Some(Value::StringValue(s)) => Ok(ValueFormat::Text(
                LogFormat::text_with(s, false, ext).map_err(|e| e.at(at))?,
            )),
            Some(Value::KvlistValue(l)) => Ok(ValueFormat::List(compile_list(l, at, ext)?)),
            Some(Value::ArrayValue(a)) => Ok(ValueFormat::Array(
                a.values
                    .iter()
                    .enumerate()
                    .map(|(i, v)| ValueFormat::compile(v, &format!("{at}[{i}]"), ext))
                    .collect::<Result<_, _>>()?,
            )),
            _ => Err(ConfigError::new(at, ONLY_STRINGS)),
        }
    }

    fn render(&self, e: &LogEntry<'_>) -> AnyValue {
        let value = match self {
            ValueFormat::Text(f) => any_value::Value::StringValue(f.render(e)),
            ValueFormat::List(l) => any_value::Value::KvlistValue(KeyValueList {
                values: render_list(l, e),
            }),
            ValueFormat::Array(a) => any_value::Value::ArrayValue(ArrayValue {
                values: a.iter().map(|v| v.render(e)).collect(),
            }),
        };
        AnyValue { value: Some(value) }
    }
}

fn compile_list(
    l: &config_otel::KeyValueList,
    at: &str,
    ext: Extensions,
) -> Result<Vec<(String, ValueFormat)>, ConfigError> {
    l.values
        .iter()
        .map(|kv| {
            let at = format!("{at}.{}", kv.key);
            let v = kv
                .value
                .as_ref()
                .ok_or_else(|| ConfigError::new(&at, ONLY_STRINGS))?;
            Ok((kv.key.clone(), ValueFormat::compile(v, &at, ext)?))
        })
        .collect()
}

fn render_list(l: &[(String, ValueFormat)], e: &LogEntry<'_>) -> Vec<KeyValue> {
    l.iter()
        .map(|(k, v)| KeyValue {
            key: k.clone(),
            value: Some(v.render(e)),
            ..Default::default()
        })
        .collect()
}

/// Where a logger's records go, and its `access_logs.open_telemetry_access_log.*` stats.
pub struct Exporter {
    client: GrpcClient,
    resource: Resource,
    batching: Batching,
}

/// A compiled OpenTelemetry access logger.
pub struct OtelLogger {
    body: Option<ValueFormat>,
    attributes: Vec<(String, ValueFormat)>,
    exporter: Arc<dyn Destination>,
}

/// `s` as a string attribute.
fn string_attribute(key: &str, value: &str) -> KeyValue {
    KeyValue {
        key: key.to_string(),
        value: Some(AnyValue {
            value: Some(any_value::Value::StringValue(value.to_string())),
        }),
        ..Default::default()
    }
}

impl OtelLogger {
    /// Compiles the logger's `typed_config`.
    pub fn compile(any: &Any, store: &Store) -> Result<OtelLogger, ConfigError> {
        let c: OpenTelemetryAccessLogConfig = courier_proto::unpack_any(any)
            .map_err(|e| ConfigError::new("typed_config", e.to_string()))?;
        for (field, set) in [
            ("http_service", c.http_service.is_some()),
            ("grpc_service", c.grpc_service.is_some()),
            ("log_name", !c.log_name.is_empty()),
            ("buffer_flush_interval", c.buffer_flush_interval.is_some()),
            ("buffer_size_bytes", c.buffer_size_bytes.is_some()),
            ("resource_detectors", !c.resource_detectors.is_empty()),
            (
                "filter_state_objects_to_log",
                !c.filter_state_objects_to_log.is_empty(),
            ),
            ("custom_tags", !c.custom_tags.is_empty()),
        ] {
            if set {
                return Err(ConfigError::unsupported(format!("typed_config.{field}")));
            }
        }
        let Some(common) = &c.common_config else {
            return Err(ConfigError::new(
                "typed_config.common_config",
                "an OpenTelemetry access logger needs common_config (its grpc_service)",
            ));
        };
        for (field, set) in [
            (
                "filter_state_objects_to_log",
                !common.filter_state_objects_to_log.is_empty(),
            ),
            (
                "grpc_stream_retry_policy",
                common.grpc_stream_retry_policy.is_some(),
            ),
            ("custom_tags", !common.custom_tags.is_empty()),
        ] {
            if set {
                return Err(ConfigError::unsupported(format!(
                    "typed_config.common_config.{field}"
                )));
            }
        }
        let Some(grpc) = &common.grpc_service else {
            return Err(ConfigError::new(
                "typed_config.common_config.grpc_service",
                "value is required",
            ));
        };
        let client = GrpcClient::compile(grpc, "typed_config.common_config.grpc_service")?;
        let interval = common
            .buffer_flush_interval
            .as_ref()
            .map(|d| crate::config::duration(d, "typed_config.common_config.buffer_flush_interval"))
            .transpose()?
            .filter(|d| !d.is_zero())
            .unwrap_or(Duration::from_secs(1));
        let max_bytes = common
            .buffer_size_bytes
            .as_ref()
            .map_or(16_384, |v| v.value) as usize;
        let mut attributes = Vec::new();
        if !c.disable_builtin_labels {
            let node = crate::server::local_info::node();
            attributes.push(string_attribute("log_name", &common.log_name));
            attributes.push(string_attribute("zone_name", &node.zone));
            attributes.push(string_attribute("cluster_name", &node.cluster));
            attributes.push(string_attribute("node_name", &node.id));
        }
        if let Some(extra) = &c.resource_attributes {
            // The config's OpenTelemetry types and the exporter's are the same messages
            // from two code generators: converted through their wire form.
            for kv in &extra.values {
                let converted = KeyValue::decode(kv.encode_to_vec().as_slice()).map_err(|e| {
                    ConfigError::new(
                        format!("typed_config.resource_attributes.{}", kv.key),
                        e.to_string(),
                    )
                })?;
                attributes.push(converted);
            }
        }
        // The command operators `formatters` add (`%REQ_WITHOUT_QUERY()%`; `%CEL()%` needs
        // none), as a file logger's `log_format` takes them.
        let ext = super::formatters(&c.formatters).map_err(|e| e.at("typed_config"))?;
        let body = c
            .body
            .as_ref()
            .filter(|b| b.value.is_some())
            .map(|b| ValueFormat::compile(b, "typed_config.body", ext))
            .transpose()?;
        let attribute_formats = match &c.attributes {
            Some(l) => compile_list(l, "typed_config.attributes", ext)?,
            None => Vec::new(),
        };
        let prefix = if c.stat_prefix.is_empty() {
            String::new()
        } else {
            format!("{}.", c.stat_prefix)
        };
        let stat = |s: &str| {
            store.counter(&format!(
                "access_logs.open_telemetry_access_log.{prefix}{s}"
            ))
        };
        Ok(OtelLogger {
            body,
            attributes: attribute_formats,
            exporter: Arc::new(Exporter {
                client,
                resource: Resource {
                    attributes,
                    ..Default::default()
                },
                batching: Batching {
                    interval,
                    max_bytes,
                    logs_written: stat("logs_written"),
                    logs_dropped: stat("logs_dropped"),
                },
            }),
        })
    }

    /// Builds the entry's record and queues it for the main thread.
    pub fn log(&self, e: &LogEntry<'_>, worker: usize) {
        let time = e
            .start
            .duration_since(SystemTime::UNIX_EPOCH)
            .map_or(0, |d| u64::try_from(d.as_nanos()).unwrap_or(u64::MAX));
        // A traced request's record names its trace and span (a 64-bit trace id padded
        // to 128 bits, as Envoy pads it).
        let (trace_id, span_id) = e.trace.map_or((Vec::new(), Vec::new()), |ids| {
            (
                ids.trace.to_be_bytes().to_vec(),
                ids.span.map_or(Vec::new(), |s| s.to_be_bytes().to_vec()),
            )
        });
        let record = LogRecord {
            time_unix_nano: time,
            body: self.body.as_ref().map(|b| b.render(e)),
            attributes: render_list(&self.attributes, e),
            trace_id,
            span_id,
            ..Default::default()
        };
        grpc_export::submit(&self.exporter, Record::Otel(record), worker);
    }
}

impl Destination for Exporter {
    fn batching(&self) -> &Batching {
        &self.batching
    }

    /// Exports one logger's records in a task of its own.
    fn export(&self, records: Vec<Record>) {
        let records = records
            .into_iter()
            .filter_map(|r| match r {
                Record::Otel(r) => Some(r),
                _ => None,
            })
            .collect();
        export(self, records);
    }
}

fn export(exporter: &Exporter, records: Vec<LogRecord>) {
    let channel = match exporter.client.channel() {
        Ok(c) => c,
        Err(e) => {
            tracing::debug!(error = %e, "cannot export access log records");
            return;
        }
    };
    let request = ExportLogsServiceRequest {
        resource_logs: vec![ResourceLogs {
            resource: Some(exporter.resource.clone()),
            scope_logs: vec![ScopeLogs {
                log_records: records,
                ..Default::default()
            }],
            ..Default::default()
        }],
    };
    let call = exporter.client.request(request);
    // Without a `timeout` of its own, an export still gives up after 5 s: a silent
    // collector must not pile up calls.
    let limit = exporter.client.timeout().unwrap_or(Duration::from_secs(5));
    tokio::task::spawn_local(async move {
        let mut client = LogsServiceClient::new(channel);
        match tokio::time::timeout(limit, client.export(call)).await {
            Ok(Ok(_)) => {}
            Ok(Err(status)) => tracing::debug!(%status, "the collector refused access log records"),
            Err(_) => tracing::debug!("access log export timed out"),
        }
    });
}
