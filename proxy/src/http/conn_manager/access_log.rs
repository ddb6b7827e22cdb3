//! HTTP access logs (`envoy.access_loggers.file`, `envoy.access_loggers.stdout`) with
//! Envoy's command operators. Lines are formatted on the worker and handed to a writer
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
use courier_proto::envoy::extensions::access_loggers::file::v3::{file_access_log, FileAccessLog};
use courier_proto::envoy::extensions::access_loggers::stream::v3::{
    stderr_access_log, stdout_access_log, StderrAccessLog, StdoutAccessLog,
};
use http::HeaderMap;

use courier_proto::google::protobuf::Any;

use crate::config::ConfigError;
use crate::extensions::{Factory, Registry};

/// Envoy's default access log format.
pub const DEFAULT_FORMAT: &str = "[%START_TIME%] \"%REQ(:METHOD)% %REQ(X-ENVOY-ORIGINAL-PATH?:PATH)% %PROTOCOL%\" %RESPONSE_CODE% %RESPONSE_FLAGS% %BYTES_RECEIVED% %BYTES_SENT% %DURATION% %RESP(X-ENVOY-UPSTREAM-SERVICE-TIME)% \"%REQ(X-FORWARDED-FOR)%\" \"%REQ(USER-AGENT)%\" \"%REQ(X-REQUEST-ID)%\" \"%REQ(:AUTHORITY)%\" \"%UPSTREAM_HOST%\"\n";

#[derive(Debug, Clone)]
enum Op {
    Lit(String),
    StartTime,
    Req(String, Option<String>, Option<usize>),
    Resp(String, Option<String>, Option<usize>),
    Protocol,
    ResponseCode,
    ResponseFlags,
    BytesReceived,
    BytesSent,
    Duration,
    UpstreamHost,
    UpstreamCluster,
    DownstreamRemoteAddress,
    DownstreamRemoteAddressNoPort,
    RouteName,
    Tls(TlsField),
}

/// The downstream connection's TLS facts the format can name (`-` on plaintext or when
/// absent, as Envoy prints them).
#[derive(Debug, Clone, Copy)]
enum TlsField {
    RequestedServerName,
    Version,
    Cipher,
    PeerSubject,
    PeerUriSan,
    PeerDnsSan,
    PeerFingerprint256,
    LocalUriSan,
}

impl TlsField {
    fn write(self, e: &LogEntry<'_>, out: &mut String) {
        let tls = e.tls;
        let peer = tls.and_then(|t| t.peer.as_ref());
        let value: Option<String> = match self {
            TlsField::RequestedServerName => e.requested_server_name.map(str::to_string),
            TlsField::Version => tls.map(|t| t.version.to_string()),
            TlsField::Cipher => tls.map(|t| t.cipher.to_string()),
            TlsField::PeerSubject => peer.map(|p| p.names.subject.clone()),
            TlsField::PeerUriSan => peer.map(|p| p.names.uri_sans.join(",")),
            TlsField::PeerDnsSan => peer.map(|p| p.names.dns_sans.join(",")),
            TlsField::PeerFingerprint256 => peer.map(|p| p.sha256.clone()),
            TlsField::LocalUriSan => tls.map(|t| t.local_uri_sans.join(",")),
        };
        match value {
            Some(v) if !v.is_empty() => out.push_str(&v),
            _ => out.push('-'),
        }
    }
}

/// What one request leaves for the log.
pub struct LogEntry<'a> {
    /// When the request started.
    pub start: SystemTime,
    /// Method.
    pub method: &'a str,
    /// Path (original, before rewrites).
    pub path: &'a str,
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
    /// Total duration.
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
}

/// A compiled access log.
pub struct AccessLog {
    ops: Vec<Op>,
    sink: Sender<String>,
}

fn parse_format(fmt: &str) -> Result<Vec<Op>, ConfigError> {
    let mut ops = Vec::new();
    let mut lit = String::new();
    let mut rest = fmt;
    while let Some(i) = rest.find('%') {
        lit.push_str(&rest[..i]);
        let after = &rest[i + 1..];
        if let Some(s) = after.strip_prefix('%') {
            lit.push('%');
            rest = s;
            continue;
        }
        let Some(end) = after.find('%') else {
            lit.push('%');
            rest = after;
            continue;
        };
        let cmd = &after[..end];
        rest = &after[end + 1..];
        let (cmd, max_len) = match cmd.rsplit_once("):") {
            Some((c, n)) if n.bytes().all(|b| b.is_ascii_digit()) => {
                (&cmd[..c.len() + 1], n.parse().ok())
            }
            _ => (cmd, None),
        };
        let header = |inner: &str| {
            let (a, b) = match inner.split_once('?') {
                Some((a, b)) => (a.to_ascii_lowercase(), Some(b.to_ascii_lowercase())),
                None => (inner.to_ascii_lowercase(), None),
            };
            (a, b)
        };
        let op = if let Some(inner) = cmd.strip_prefix("REQ(").and_then(|s| s.strip_suffix(')')) {
            let (a, b) = header(inner);
            Op::Req(a, b, max_len)
        } else if let Some(inner) = cmd.strip_prefix("RESP(").and_then(|s| s.strip_suffix(')')) {
            let (a, b) = header(inner);
            Op::Resp(a, b, max_len)
        } else {
            match cmd {
                "START_TIME" => Op::StartTime,
                "PROTOCOL" => Op::Protocol,
                "RESPONSE_CODE" => Op::ResponseCode,
                "RESPONSE_FLAGS" => Op::ResponseFlags,
                "BYTES_RECEIVED" => Op::BytesReceived,
                "BYTES_SENT" => Op::BytesSent,
                "DURATION" => Op::Duration,
                "UPSTREAM_HOST" => Op::UpstreamHost,
                "UPSTREAM_CLUSTER" => Op::UpstreamCluster,
                "DOWNSTREAM_REMOTE_ADDRESS" => Op::DownstreamRemoteAddress,
                "DOWNSTREAM_REMOTE_ADDRESS_WITHOUT_PORT" => Op::DownstreamRemoteAddressNoPort,
                "ROUTE_NAME" => Op::RouteName,
                "REQUESTED_SERVER_NAME" => Op::Tls(TlsField::RequestedServerName),
                "DOWNSTREAM_TLS_VERSION" => Op::Tls(TlsField::Version),
                "DOWNSTREAM_TLS_CIPHER" => Op::Tls(TlsField::Cipher),
                "DOWNSTREAM_PEER_SUBJECT" => Op::Tls(TlsField::PeerSubject),
                "DOWNSTREAM_PEER_URI_SAN" => Op::Tls(TlsField::PeerUriSan),
                "DOWNSTREAM_PEER_DNS_SAN" => Op::Tls(TlsField::PeerDnsSan),
                "DOWNSTREAM_PEER_FINGERPRINT_256" => Op::Tls(TlsField::PeerFingerprint256),
                "DOWNSTREAM_LOCAL_URI_SAN" => Op::Tls(TlsField::LocalUriSan),
                other => {
                    return Err(ConfigError::new(
                        "format",
                        format!("Not supported field in StreamInfo: {other}"),
                    ))
                }
            }
        };
        if !lit.is_empty() {
            ops.push(Op::Lit(std::mem::take(&mut lit)));
        }
        ops.push(op);
    }
    lit.push_str(rest);
    if !lit.is_empty() {
        ops.push(Op::Lit(lit));
    }
    Ok(ops)
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

fn format_from(f: Option<&Format>) -> Result<String, ConfigError> {
    match f {
        None => Ok(DEFAULT_FORMAT.to_string()),
        Some(Format::TextFormat(s)) => Ok(s.clone()),
        Some(Format::TextFormatSource(ds)) => {
            let b = crate::http::route::data_source(ds, "text_format_source")?;
            Ok(String::from_utf8_lossy(&b).into_owned())
        }
        Some(_) => Err(ConfigError::unsupported("log_format.json_format")),
    }
}

/// Builds an access logger's sink (a path) and its format from its config.
type BuildLogger = fn(&Any) -> Result<(String, String), ConfigError>;

/// The access loggers an `access_log` entry may name.
static ACCESS_LOGGERS: Registry<BuildLogger> = Registry {
    point: "access logger",
    factories: &[
        Factory {
            type_name: "envoy.extensions.access_loggers.file.v3.FileAccessLog",
            name: "envoy.access_loggers.file",
            build: file_logger,
        },
        Factory {
            type_name: "envoy.extensions.access_loggers.stream.v3.StdoutAccessLog",
            name: "envoy.access_loggers.stdout",
            build: |any| stream_logger::<StdoutAccessLog>(any, "/dev/stdout"),
        },
        Factory {
            type_name: "envoy.extensions.access_loggers.stream.v3.StderrAccessLog",
            name: "envoy.access_loggers.stderr",
            build: |any| stream_logger::<StderrAccessLog>(any, "/dev/stderr"),
        },
    ],
};

/// `envoy.access_loggers.file`: its path and format.
fn file_logger(any: &Any) -> Result<(String, String), ConfigError> {
    let f: FileAccessLog = courier_proto::unpack_any(any)
        .map_err(|e| ConfigError::new("typed_config", e.to_string()))?;
    if f.path.is_empty() {
        return Err(ConfigError::new(
            "typed_config.path",
            "value length must be at least 1 characters",
        ));
    }
    let fmt = match &f.access_log_format {
        None => DEFAULT_FORMAT.to_string(),
        #[allow(deprecated)]
        Some(file_access_log::AccessLogFormat::Format(s)) => s.clone(),
        Some(file_access_log::AccessLogFormat::LogFormat(l)) => {
            format_from(l.format.as_ref()).map_err(|e| e.at("typed_config.log_format"))?
        }
        Some(_) => return Err(ConfigError::unsupported("typed_config.json_format")),
    };
    Ok((f.path, fmt))
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
fn stream_logger<L: StreamLogger>(any: &Any, path: &str) -> Result<(String, String), ConfigError> {
    let s: L = courier_proto::unpack_any(any)
        .map_err(|e| ConfigError::new("typed_config", e.to_string()))?;
    let fmt = match s.log_format() {
        None => DEFAULT_FORMAT.to_string(),
        Some(l) => format_from(l.format.as_ref()).map_err(|e| e.at("typed_config.log_format"))?,
    };
    Ok((path.to_string(), fmt))
}

impl AccessLog {
    /// Compiles one `access_log` entry.
    pub fn compile(proto: &AccessLogProto) -> Result<AccessLog, ConfigError> {
        if proto.filter.is_some() {
            return Err(ConfigError::unsupported("filter"));
        }
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
        let (path, fmt) = (found.factory.build)(config)?;
        let ops = parse_format(&fmt).map_err(|e| e.at("typed_config"))?;
        Ok(AccessLog {
            ops,
            sink: writer(&path),
        })
    }

    /// Formats and queues one line.
    pub fn log(&self, e: &LogEntry<'_>) {
        let line = self.format(e);
        let _ = self.sink.send(line);
    }

    fn format(&self, e: &LogEntry<'_>) -> String {
        fn hdr(
            map: Option<&HeaderMap>,
            e: &LogEntry<'_>,
            name: &str,
            alt: &Option<String>,
            max: Option<usize>,
        ) -> String {
            let get = |n: &str| -> Option<String> {
                match n {
                    // Empty: a stream whose head never arrived (Envoy's `-`).
                    ":method" => (!e.method.is_empty()).then(|| e.method.to_string()),
                    ":path" => (!e.path.is_empty()).then(|| e.path.to_string()),
                    ":authority" => (!e.authority.is_empty()).then(|| e.authority.to_string()),
                    ":status" => Some(e.status.to_string()),
                    _ => map?.get(n)?.to_str().ok().map(str::to_string),
                }
            };
            let v = get(name).or_else(|| alt.as_deref().and_then(get));
            match v {
                Some(mut v) => {
                    if let Some(m) = max {
                        v.truncate(m);
                    }
                    v
                }
                None => "-".to_string(),
            }
        }
        let mut out = String::with_capacity(256);
        for op in &self.ops {
            match op {
                Op::Lit(s) => out.push_str(s),
                Op::StartTime => out.push_str(&rfc3339_millis(e.start)),
                Op::Req(n, alt, m) => out.push_str(&hdr(Some(e.request), e, n, alt, *m)),
                Op::Resp(n, alt, m) => out.push_str(&hdr(e.response, e, n, alt, *m)),
                Op::Protocol => out.push_str(e.protocol),
                Op::ResponseCode => out.push_str(&e.status.to_string()),
                Op::ResponseFlags => out.push_str(e.flags),
                Op::BytesReceived => out.push_str(&e.bytes_received.to_string()),
                Op::BytesSent => out.push_str(&e.bytes_sent.to_string()),
                Op::Duration => out.push_str(&e.duration.as_millis().to_string()),
                Op::UpstreamHost => match e.upstream_host {
                    Some(h) => out.push_str(&h.to_string()),
                    None => out.push('-'),
                },
                Op::UpstreamCluster => out.push_str(e.upstream_cluster.unwrap_or("-")),
                Op::DownstreamRemoteAddress => out.push_str(&e.remote.to_string()),
                Op::DownstreamRemoteAddressNoPort => out.push_str(&e.remote.ip().to_string()),
                Op::RouteName => out.push_str(if e.route_name.is_empty() {
                    "-"
                } else {
                    e.route_name
                }),
                Op::Tls(field) => field.write(e, &mut out),
            }
        }
        out
    }
}

/// `2024-01-02T03:04:05.678Z`.
fn rfc3339_millis(t: SystemTime) -> String {
    let d = t.duration_since(SystemTime::UNIX_EPOCH).unwrap_or_default();
    let secs = d.as_secs() as i64;
    let ms = d.subsec_millis();
    let days = secs.div_euclid(86400);
    let sod = secs.rem_euclid(86400);
    // Civil-from-days (Howard Hinnant).
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36524 - doe / 146_096) / 365;
    let y = yoe + era * 400;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = if month <= 2 { y + 1 } else { y };
    format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}.{ms:03}Z",
        sod / 3600,
        (sod / 60) % 60,
        sod % 60
    )
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
        assert!(AccessLog::compile(&entry(stderr)).is_ok());
        let unknown = Any {
            type_url: "type.googleapis.com/envoy.extensions.access_loggers.grpc.v3.HttpGrpcAccessLogConfig"
                .into(),
            value: Vec::new(),
        };
        let err = AccessLog::compile(&entry(unknown)).err().expect("refused");
        assert_eq!(err.path, "typed_config");
        assert!(
            err.message.contains("HttpGrpcAccessLogConfig"),
            "{}",
            err.message
        );
    }

    #[test]
    fn parses_default_format() {
        let ops = parse_format(DEFAULT_FORMAT).expect("parses");
        assert!(ops.iter().any(|o| matches!(o, Op::ResponseCode)));
        assert_eq!(
            rfc3339_millis(SystemTime::UNIX_EPOCH),
            "1970-01-01T00:00:00.000Z"
        );
    }
}
