//! Access logs (`envoy.access_loggers.file`, `stdout`, `stderr`) in Envoy's text or
//! JSON formats (`format.rs`), OpenTelemetry records (`open_telemetry.rs`) and the
//! access-log service's entries (`grpc.rs`; both batched by `grpc_export.rs`), written
//! for each HTTP request (the connection manager's), each TCP proxy connection
//! (`tcp_proxy`'s) and each connection of a listener (the listener's), with Envoy's
//! filters (`filter.rs`). Lines are formatted on the worker and handed to a writer
//! thread through a channel, so a slow disk never blocks a worker.

// `format` and `text_format` are deprecated in the protos but common in configs.
#![allow(deprecated)]

use crate::transport_socket::tls::TlsConnectionInfo;
use std::collections::HashMap;
use std::io::Write;
use std::net::SocketAddr;
use std::sync::mpsc::{self, Sender};
use std::sync::{Mutex, OnceLock};
use std::time::{Duration, SystemTime};

use courier_proto::envoy::config::accesslog::v3::{access_log, AccessLog as AccessLogProto};
use courier_proto::envoy::config::core::v3::substitution_format_string::Format;
use courier_proto::envoy::config::core::v3::SubstitutionFormatString;
pub use courier_proto::envoy::data::accesslog::v3::AccessLogType;
use courier_proto::envoy::extensions::access_loggers::file::v3::{file_access_log, FileAccessLog};
use courier_proto::envoy::extensions::access_loggers::stream::v3::{
    stderr_access_log, stdout_access_log, StderrAccessLog, StdoutAccessLog,
};
use http::HeaderMap;

use courier_proto::google::protobuf::Any;

use crate::config::ConfigError;
use crate::extensions::{Factory, Registry};
use crate::stats::Store;
use filter::LogFilter;
use format::LogFormat;

mod cel;
mod filter;
mod format;
pub mod grpc;
pub mod grpc_export;
pub mod open_telemetry;
pub mod time_format;

/// Envoy's default access log format.
pub const DEFAULT_FORMAT: &str = "[%START_TIME%] \"%REQ(:METHOD)% %REQ(X-ENVOY-ORIGINAL-PATH?:PATH)% %PROTOCOL%\" %RESPONSE_CODE% %RESPONSE_FLAGS% %BYTES_RECEIVED% %BYTES_SENT% %DURATION% %RESP(X-ENVOY-UPSTREAM-SERVICE-TIME)% \"%REQ(X-FORWARDED-FOR)%\" \"%REQ(USER-AGENT)%\" \"%REQ(X-REQUEST-ID)%\" \"%REQ(:AUTHORITY)%\" \"%UPSTREAM_HOST%\"\n";

/// Response code details set to nothing (a custom response policy's local reply, as
/// Envoy's `sendLocalReply` with empty details): logged as an empty value, not `-`.
pub const CLEARED_DETAILS: &str = "\u{1}cleared";

/// What one request leaves for the log.
pub struct LogEntry<'a> {
    /// When the request started.
    pub start: SystemTime,
    /// Method.
    pub method: &'a str,
    /// Path (as the route rewrote it, if it did).
    pub path: &'a str,
    /// The path the request came with, when the route rewrote it.
    pub original_path: Option<&'a str>,
    /// Authority.
    pub authority: &'a str,
    /// Protocol (`HTTP/1.1`).
    pub protocol: &'a str,
    /// Request headers.
    pub request: &'a HeaderMap,
    /// Response headers.
    pub response: Option<&'a HeaderMap>,
    /// Status sent.
    pub status: u16,
    /// Envoy response flags (`NR`, `UF`, `UT`, `-`).
    pub flags: &'a str,
    /// Request body bytes.
    pub bytes_received: u64,
    /// Response body bytes.
    pub bytes_sent: u64,
    /// The duration so far (the whole, once the request or connection has ended).
    pub duration: Duration,
    /// Upstream host.
    pub upstream_host: Option<SocketAddr>,
    /// Upstream cluster.
    pub upstream_cluster: Option<&'a str>,
    /// Client address.
    pub remote: SocketAddr,
    /// Route name.
    pub route_name: &'a str,
    /// What the downstream TLS handshake settled.
    pub tls: Option<&'a TlsConnectionInfo>,
    /// The SNI the listener's TLS inspector found.
    pub requested_server_name: Option<&'a str>,
    /// The request was a health check (the health check filter recognised it).
    pub health_check: bool,
    /// Why the entry is written (Envoy's `AccessLogType`).
    pub log_type: AccessLogType,
    /// The downstream connection's local address (an original destination a listener
    /// filter restored, if any).
    pub local: Option<SocketAddr>,
    /// The downstream peer's own address, whatever a PROXY protocol header said.
    pub direct_remote: Option<SocketAddr>,
    /// The upstream connection's local address.
    pub upstream_local: Option<SocketAddr>,
    /// Envoy's response code details (`via_upstream`, `route_not_found`, …); empty when
    /// none, [`CLEARED_DETAILS`] when set to nothing.
    pub details: &'a str,
    /// Why the upstream connection failed, in Envoy's words.
    pub transport_failure: Option<&'a str>,
    /// The request's span, when it is traced.
    pub trace: Option<crate::tracers::SpanIds>,
    /// The request's `x-request-id` as the connection manager settled it (generated or
    /// kept), when there is one.
    pub request_id: Option<&'a str>,
    /// The response's trailers, when it had some.
    pub trailers: Option<&'a HeaderMap>,
    /// The address of the upstream connection the request went on.
    pub upstream_remote: Option<SocketAddr>,
    /// The upstream host's name (an endpoint's `hostname`, a DNS cluster's name), when it
    /// has one.
    pub upstream_hostname: Option<&'a str>,
    /// The attempts the router made (`None`: the request never reached it).
    pub attempts: Option<u32>,
    /// The downstream connection's id.
    pub connection_id: Option<u64>,
    /// When the request's steps happened, from its start.
    pub timing: Timing,
    /// The virtual cluster the request matched (not the catch-all), when its virtual
    /// host has some.
    pub virtual_cluster: Option<&'a str>,
    /// The request was traced by `x-envoy-force-trace` (what Envoy's `traceable_filter`
    /// passes).
    pub service_forced: bool,
}

/// When an HTTP request's steps happened, each from its start (Envoy's downstream and
/// upstream timing); `None` for a step it never reached.
#[derive(Debug, Default, Clone, Copy)]
pub struct Timing {
    /// The request's last byte arrived.
    pub request_rx: Option<Duration>,
    /// The request's last byte went upstream.
    pub upstream_tx: Option<Duration>,
    /// The response's first byte came from upstream.
    pub upstream_rx: Option<Duration>,
    /// The response's last byte went downstream.
    pub downstream_tx: Option<Duration>,
}

impl<'a> LogEntry<'a> {
    /// A connection's entry with nothing known yet (no request, no upstream), written as
    /// a listener's (`NotSet`) entry; `no_headers` stands for the request's headers.
    pub fn connection(no_headers: &'a HeaderMap) -> LogEntry<'a> {
        LogEntry {
            start: SystemTime::now(),
            method: "",
            path: "",
            original_path: None,
            authority: "",
            protocol: "",
            request: no_headers,
            response: None,
            status: 0,
            flags: "-",
            bytes_received: 0,
            bytes_sent: 0,
            duration: Duration::ZERO,
            upstream_host: None,
            upstream_cluster: None,
            remote: SocketAddr::from(([0, 0, 0, 0], 0)),
            route_name: "",
            tls: None,
            requested_server_name: None,
            health_check: false,
            log_type: AccessLogType::NotSet,
            local: None,
            direct_remote: None,
            upstream_local: None,
            details: "",
            transport_failure: None,
            trace: None,
            request_id: None,
            trailers: None,
            upstream_remote: None,
            upstream_hostname: None,
            attempts: None,
            connection_id: None,
            timing: Timing::default(),
            virtual_cluster: None,
            service_forced: false,
        }
    }
}

/// A new downstream connection's id (`%CONNECTION_ID%`), unique in the process; taken
/// only for connections something logs.
pub fn next_connection_id() -> u64 {
    static NEXT: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed)
}

/// A compiled access log.
pub struct AccessLog {
    filter: Option<LogFilter>,
    sink: Sink,
}

/// Where a logger's entries go.
pub enum Sink {
    /// A line formatted on the worker, for a writer thread (a file, stdout, stderr).
    Line {
        /// The line's format.
        format: LogFormat,
        /// The writer's channel.
        writer: Sender<String>,
    },
    /// An OpenTelemetry log record, for the main thread's exporter.
    OpenTelemetry(open_telemetry::OtelLogger),
    /// An access-log service entry (HTTP or TCP), for the main thread's stream.
    Grpc(grpc::GrpcAccessLogger),
}

fn writer(path: &str) -> Sender<String> {
    static WRITERS: OnceLock<Mutex<HashMap<String, Sender<String>>>> = OnceLock::new();
    let map = WRITERS.get_or_init(Default::default);
    let mut map = map.lock().unwrap_or_else(|p| p.into_inner());
    if let Some(tx) = map.get(path) {
        return tx.clone();
    }
    let (tx, rx) = mpsc::channel::<String>();
    let p = path.to_string();
    let spawned = std::thread::Builder::new()
        .name("courier-access-log".into())
        .spawn(move || {
            let mut out: Box<dyn Write> = if p == "/dev/stdout" {
                Box::new(std::io::stdout())
            } else {
                match std::fs::OpenOptions::new()
                    .create(true)
                    .append(true)
                    .open(&p)
                {
                    Ok(f) => Box::new(f),
                    Err(e) => {
                        tracing::error!(path = %p, error = %e, "cannot open access log");
                        return;
                    }
                }
            };
            while let Ok(line) = rx.recv() {
                let _ = out.write_all(line.as_bytes());
                while let Ok(more) = rx.try_recv() {
                    let _ = out.write_all(more.as_bytes());
                }
                let _ = out.flush();
            }
        });
    if let Err(e) = spawned {
        tracing::error!(error = %e, "cannot start the access log writer");
    }
    map.insert(path.to_string(), tx.clone());
    tx
}

/// A local reply's `body_format` (a custom response policy's): a `SubstitutionFormatString`
/// rendered against the request as the access logs see it.
pub struct BodyFormat(LogFormat);

impl BodyFormat {
    /// Compiles `f`, at `path`.
    pub fn compile(f: &SubstitutionFormatString, path: &str) -> Result<BodyFormat, ConfigError> {
        format_from(f).map(BodyFormat).map_err(|e| e.at(path))
    }

    /// The body for the request `e` tells of.
    pub fn render(&self, e: &LogEntry<'_>) -> String {
        self.0.render(e)
    }
}

/// A `log_format` (paths relative to it). `content_type` and `json_format_options` change
/// nothing in an access log (Envoy reads the first for local replies only, and prints JSON
/// keys sorted either way); of the `formatters` extensions, `envoy.formatter.req_without_query`
/// and `envoy.formatter.cel` are served and the others are refused.
fn format_from(f: &SubstitutionFormatString) -> Result<LogFormat, ConfigError> {
    let ext = formatters(&f.formatters)?;
    let omit = f.omit_empty_values;
    match &f.format {
        None => LogFormat::text_with(DEFAULT_FORMAT, omit, ext),
        Some(Format::TextFormat(s)) => {
            LogFormat::text_with(s, omit, ext).map_err(|e| e.at("text_format"))
        }
        Some(Format::TextFormatSource(ds)) => {
            let b = crate::http::route::data_source(ds, "text_format_source")?;
            LogFormat::text_with(&String::from_utf8_lossy(&b), omit, ext)
                .map_err(|e| e.at("text_format_source"))
        }
        Some(Format::JsonFormat(j)) => LogFormat::json(j, omit, "json_format", ext),
    }
}

/// The command operators a `log_format`'s `formatters` add: Envoy's
/// `envoy.formatter.req_without_query`, and `envoy.formatter.cel` (which adds nothing:
/// Envoy 1.40 serves `%CEL()%` without it, and so does Courier; its `cel_config` is
/// refused); any other extension is refused by its path.
pub(super) fn formatters(
    list: &[courier_proto::envoy::config::core::v3::TypedExtensionConfig],
) -> Result<format::Extensions, ConfigError> {
    const REQ_WITHOUT_QUERY: &str =
        "type.googleapis.com/envoy.extensions.formatter.req_without_query.v3.ReqWithoutQuery";
    const CEL: &str = "type.googleapis.com/envoy.extensions.formatter.cel.v3.Cel";
    let mut ext = format::Extensions::default();
    for (i, f) in list.iter().enumerate() {
        match f.typed_config.as_ref() {
            Some(a) if a.type_url == REQ_WITHOUT_QUERY => ext.req_without_query = true,
            Some(a) if a.type_url == CEL => {
                use courier_proto::envoy::extensions::formatter::cel::v3::Cel;
                let at = format!("formatters[{i}].typed_config");
                let c: Cel = courier_proto::unpack_any(a)
                    .map_err(|e| ConfigError::new(&at, e.to_string()))?;
                if c.cel_config.is_some() {
                    return Err(ConfigError::unsupported(format!("{at}.cel_config")));
                }
            }
            _ => {
                return Err(ConfigError::new(
                    format!("formatters[{i}]"),
                    format!(
                        "formatter extension {} is not supported by Courier",
                        if f.name.is_empty() {
                            "(unnamed)"
                        } else {
                            &f.name
                        }
                    ),
                ))
            }
        }
    }
    Ok(ext)
}

/// Envoy's default format.
fn default_format() -> Result<LogFormat, ConfigError> {
    LogFormat::text(DEFAULT_FORMAT, false)
}

/// Builds an access logger's sink from its config.
type BuildLogger = fn(&Any, &Store) -> Result<Sink, ConfigError>;

/// The access loggers an `access_log` entry may name.
static ACCESS_LOGGERS: Registry<BuildLogger> = Registry {
    point: "access logger",
    factories: &[
        Factory {
            type_name: "envoy.extensions.access_loggers.file.v3.FileAccessLog",
            name: "envoy.access_loggers.file",
            build: |any, _| file_logger(any),
        },
        Factory {
            type_name: "envoy.extensions.access_loggers.stream.v3.StdoutAccessLog",
            name: "envoy.access_loggers.stdout",
            build: |any, _| stream_logger::<StdoutAccessLog>(any, "/dev/stdout"),
        },
        Factory {
            type_name: "envoy.extensions.access_loggers.stream.v3.StderrAccessLog",
            name: "envoy.access_loggers.stderr",
            build: |any, _| stream_logger::<StderrAccessLog>(any, "/dev/stderr"),
        },
        Factory {
            type_name:
                "envoy.extensions.access_loggers.open_telemetry.v3.OpenTelemetryAccessLogConfig",
            name: "envoy.access_loggers.open_telemetry",
            build: |any, store| {
                open_telemetry::OtelLogger::compile(any, store).map(Sink::OpenTelemetry)
            },
        },
        Factory {
            type_name: "envoy.extensions.access_loggers.grpc.v3.HttpGrpcAccessLogConfig",
            name: "envoy.access_loggers.http_grpc",
            build: |any, store| grpc::GrpcAccessLogger::compile_http(any, store).map(Sink::Grpc),
        },
        Factory {
            type_name: "envoy.extensions.access_loggers.grpc.v3.TcpGrpcAccessLogConfig",
            name: "envoy.access_loggers.tcp_grpc",
            build: |any, store| grpc::GrpcAccessLogger::compile_tcp(any, store).map(Sink::Grpc),
        },
    ],
};

/// `envoy.access_loggers.file`: its path and format.
fn file_logger(any: &Any) -> Result<Sink, ConfigError> {
    let f: FileAccessLog = courier_proto::unpack_any(any)
        .map_err(|e| ConfigError::new("typed_config", e.to_string()))?;
    if f.path.is_empty() {
        return Err(ConfigError::new(
            "typed_config.path",
            "value length must be at least 1 characters",
        ));
    }
    let fmt = match &f.access_log_format {
        None => default_format()?,
        Some(file_access_log::AccessLogFormat::Format(s)) => {
            LogFormat::text(s, false).map_err(|e| e.at("typed_config.format"))?
        }
        Some(file_access_log::AccessLogFormat::LogFormat(l)) => {
            format_from(l).map_err(|e| e.at("typed_config.log_format"))?
        }
        // The deprecated forms of `log_format.json_format`.
        Some(file_access_log::AccessLogFormat::JsonFormat(j)) => {
            LogFormat::json(j, false, "typed_config.json_format", Default::default())?
        }
        Some(file_access_log::AccessLogFormat::TypedJsonFormat(j)) => LogFormat::json(
            j,
            false,
            "typed_config.typed_json_format",
            Default::default(),
        )?,
    };
    Ok(Sink::Line {
        format: fmt,
        writer: writer(&f.path),
    })
}

/// A stream logger's config: its `log_format`, if any.
trait StreamLogger: prost::Message + prost::Name + Default {
    fn log_format(&self) -> Option<&SubstitutionFormatString>;
}

impl StreamLogger for StdoutAccessLog {
    fn log_format(&self) -> Option<&SubstitutionFormatString> {
        match &self.access_log_format {
            Some(stdout_access_log::AccessLogFormat::LogFormat(l)) => Some(l),
            None => None,
        }
    }
}

impl StreamLogger for StderrAccessLog {
    fn log_format(&self) -> Option<&SubstitutionFormatString> {
        match &self.access_log_format {
            Some(stderr_access_log::AccessLogFormat::LogFormat(l)) => Some(l),
            None => None,
        }
    }
}

/// `envoy.access_loggers.stdout` / `stderr`: the stream's path and the format.
fn stream_logger<L: StreamLogger>(any: &Any, path: &str) -> Result<Sink, ConfigError> {
    let s: L = courier_proto::unpack_any(any)
        .map_err(|e| ConfigError::new("typed_config", e.to_string()))?;
    let fmt = match s.log_format() {
        None => default_format()?,
        Some(l) => format_from(l).map_err(|e| e.at("typed_config.log_format"))?,
    };
    Ok(Sink::Line {
        format: fmt,
        writer: writer(path),
    })
}

/// Access logs shared by the connections of a listener.
pub type SharedLogs = std::sync::Arc<[std::sync::Arc<AccessLog>]>;

/// Compiles a list of `access_log` entries, each with its errors under `at[i]`.
pub fn compile_all(
    protos: &[AccessLogProto],
    at: &str,
    store: &Store,
) -> Result<Vec<std::sync::Arc<AccessLog>>, ConfigError> {
    protos
        .iter()
        .enumerate()
        .map(|(i, l)| {
            AccessLog::compile(l, store)
                .map(std::sync::Arc::new)
                .map_err(|e| e.at(&format!("{at}[{i}]")))
        })
        .collect()
}

impl AccessLog {
    /// Compiles one `access_log` entry.
    pub fn compile(proto: &AccessLogProto, store: &Store) -> Result<AccessLog, ConfigError> {
        let filter = proto
            .filter
            .as_ref()
            .map(|f| LogFilter::compile(f, "filter"))
            .transpose()?;
        let Some(access_log::ConfigType::TypedConfig(any)) = &proto.config_type else {
            return Err(ConfigError::new(
                "typed_config",
                "an access logger needs a typed_config",
            ));
        };
        let Some(found) = ACCESS_LOGGERS.resolve(Some(any), &proto.name, false, "typed_config")?
        else {
            return Err(ConfigError::new(
                "typed_config",
                "unsupported access logger",
            ));
        };
        let config = found.config.as_ref().unwrap_or(any);
        let sink = (found.factory.build)(config, store)?;
        Ok(AccessLog { filter, sink })
    }

    /// Writes one entry, on `worker`, if the filter lets it through.
    pub fn log(&self, e: &LogEntry<'_>, worker: usize) {
        if self.filter.as_ref().is_some_and(|f| !f.passes(e)) {
            return;
        }
        match &self.sink {
            Sink::Line { format, writer } => {
                let _ = writer.send(format.render(e));
            }
            Sink::OpenTelemetry(l) => l.log(e, worker),
            Sink::Grpc(l) => l.log(e, worker),
        }
    }
}

/// Envoy's response flags (short forms), the ones a `response_flag_filter` may name.
const RESPONSE_FLAGS: &[&str] = &[
    "LH", "UH", "UT", "LR", "UR", "UF", "UC", "UO", "NR", "DI", "FI", "RL", "UAEX", "RLSE", "DC",
    "URX", "SI", "IH", "DPE", "UMSDR", "RFCF", "NFCF", "DT", "UPE", "NC", "OM", "DF", "DO", "DR",
    "UDO", "OL",
];

/// A status from a `grpc-status` value (Envoy's `Grpc::Common::getGrpcStatus`): a number
/// (above 16 only when `allow_user_defined`), else `-1` (`InvalidCode`).
fn parse_grpc_status(v: &[u8], allow_user_defined: bool) -> Option<i64> {
    if v.is_empty() {
        return None;
    }
    let s = std::str::from_utf8(v)
        .unwrap_or("")
        .trim_matches(|c: char| c.is_ascii_whitespace());
    let digits = s.strip_prefix('+').unwrap_or(s);
    let parsed = (!digits.is_empty() && digits.bytes().all(|b| b.is_ascii_digit()))
        .then(|| digits.parse::<u64>().ok())
        .flatten();
    Some(match parsed {
        Some(n) if n <= 16 || allow_user_defined => n as i64,
        _ => -1,
    })
}

/// The request's gRPC status as Envoy finds it: the trailers' `grpc-status`, else the
/// response headers', else the HTTP status's; none without a response.
fn grpc_status(e: &LogEntry<'_>, allow_user_defined: bool) -> Option<i64> {
    let of = |m: Option<&HeaderMap>| {
        m.and_then(|m| m.get("grpc-status"))
            .and_then(|v| parse_grpc_status(v.as_bytes(), allow_user_defined))
    };
    of(e.trailers).or_else(|| of(e.response)).or_else(|| {
        (e.status != 0).then(|| i64::from(crate::protocol::grpc::http_to_grpc_status(e.status)))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(any: Any) -> AccessLogProto {
        AccessLogProto {
            name: "log".into(),
            config_type: Some(access_log::ConfigType::TypedConfig(any)),
            ..Default::default()
        }
    }

    #[test]
    fn loggers_resolve_through_the_registry() {
        let stderr = courier_proto::pack_any(&StderrAccessLog::default());
        assert!(AccessLog::compile(&entry(stderr), &Store::new(1)).is_ok());
        let unknown = Any {
            type_url: "type.googleapis.com/envoy.extensions.access_loggers.fluentd.v3.FluentdAccessLogConfig"
                .into(),
            value: Vec::new(),
        };
        let err = AccessLog::compile(&entry(unknown), &Store::new(1))
            .err()
            .expect("refused");
        assert_eq!(err.path, "typed_config");
        assert!(
            err.message.contains("FluentdAccessLogConfig"),
            "{}",
            err.message
        );
    }

    #[test]
    fn parses_default_format() {
        assert!(default_format().expect("parses").names_response_code());
    }
}
