//! The access-log service loggers, `envoy.access_loggers.http_grpc` and
//! `envoy.access_loggers.tcp_grpc`: each entry becomes an `HTTPAccessLogEntry` or a
//! `TCPAccessLogEntry` filled as Envoy fills them (`extractCommonAccessLogProperties`,
//! the HTTP request and response properties, the TCP connection properties), batched on
//! the main thread (`grpc_export.rs`) and streamed on one long-lived
//! `envoy.service.accesslog.v3.AccessLogService/StreamAccessLogs` call per logger. The
//! identifier (the node and `log_name`) goes in the first message of each stream only; a
//! stream that ended is started again, with the identifier, at the next flush.
//!
//! Loggers with the same `common_config` and kind share one stream (Envoy's logger cache
//! is keyed the same way), so a listener update keeps its loggers' stream.
//!
//! What Courier does not know is left out, as documented in DIFFERENCES.md: the
//! `time_to_*` fields, the HTTP header and wire byte counts other than
//! `request_headers_bytes` / `response_headers_bytes`, the TLS session id and the local
//! certificate's subject.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, OnceLock, Weak};
use std::time::{Duration, SystemTime};

use courier_proto::envoy::config::core::v3::{
    address, socket_address, Address, ApiVersion, RequestMethod, SocketAddress,
};
use courier_proto::envoy::data::accesslog::v3::{
    http_access_log_entry::HttpVersion, response_flags, tls_properties, AccessLogCommon,
    AccessLogType, ConnectionProperties, HttpAccessLogEntry, HttpRequestProperties,
    HttpResponseProperties, ResponseFlags, TcpAccessLogEntry, TlsProperties,
};
use courier_proto::envoy::extensions::access_loggers::grpc::v3::{
    CommonGrpcAccessLogConfig, HttpGrpcAccessLogConfig, TcpGrpcAccessLogConfig,
};
use courier_proto::envoy::service::accesslog::v3::access_log_service_client::AccessLogServiceClient;
use courier_proto::envoy::service::accesslog::v3::stream_access_logs_message::{
    HttpAccessLogEntries, Identifier, LogEntries, TcpAccessLogEntries,
};
use courier_proto::envoy::service::accesslog::v3::StreamAccessLogsMessage;
use courier_proto::google::protobuf::{Any, UInt32Value};
use http::HeaderMap;
use prost::Message;

use super::grpc_export::{self, Batching, Destination, Record};
use super::LogEntry;
use crate::config::ConfigError;
use crate::stats::{Store, MAIN_THREAD};
use crate::upstream::async_client::grpc::{ClientStream, GrpcClient};

/// Flushes that may wait for a slow collector before later ones are dropped.
const STREAM_QUEUE: usize = 16;

/// What a logger writes: HTTP entries (with the headers it names) or TCP entries.
enum Kind {
    Http {
        request_headers: Vec<String>,
        response_headers: Vec<String>,
    },
    Tcp,
}

/// A compiled `http_grpc` or `tcp_grpc` logger.
pub struct GrpcAccessLogger {
    kind: Kind,
    to: Arc<dyn Destination>,
}

/// An open `StreamAccessLogs` call.
type Stream = ClientStream<StreamAccessLogsMessage>;

/// One logger's service, its identifier and the open stream, if any (touched by the
/// main thread only; the lock is never contended).
struct Service {
    client: GrpcClient,
    log_name: String,
    batching: Batching,
    /// Entries handed to the stream.
    flushed: Arc<crate::stats::Counter>,
    /// Entries of batches that could not be handed to a stream (then dropped).
    flush_failed: Arc<crate::stats::Counter>,
    stream: Mutex<Option<Stream>>,
}

impl Service {
    /// A batch that found no stream, or a collector too slow to take it: dropped.
    fn failed(&self, count: u64) {
        self.flush_failed.add(MAIN_THREAD, count);
        self.batching.logs_dropped.add(MAIN_THREAD, count);
    }
}

impl Service {
    /// What the first message of a stream says of its sender.
    fn identifier(&self) -> Identifier {
        Identifier {
            node: Some(crate::server::local_info::node_proto()),
            log_name: self.log_name.clone(),
        }
    }

    /// A new stream, or `None` when the cluster has no host now.
    fn start(&self) -> Option<Stream> {
        self.client.open_stream(
            "access log service",
            STREAM_QUEUE,
            |channel, request| async move {
                AccessLogServiceClient::new(channel)
                    .stream_access_logs(request)
                    .await
            },
        )
    }
}

impl Destination for Service {
    fn batching(&self) -> &Batching {
        &self.batching
    }

    fn export(&self, records: Vec<Record>) {
        let mut http = Vec::new();
        let mut tcp = Vec::new();
        for r in records {
            match r {
                Record::Http(e) => http.push(*e),
                Record::Tcp(e) => tcp.push(*e),
                Record::Otel(_) => {}
            }
        }
        let mut stream = self.stream.lock().unwrap_or_else(|p| p.into_inner());
        if stream.as_ref().is_some_and(|s| s.ended()) {
            *stream = None;
        }
        let mut identifier = None;
        if stream.is_none() {
            *stream = self.start();
            identifier = Some(self.identifier());
        }
        let mut messages = Vec::new();
        if !http.is_empty() {
            messages.push(LogEntries::HttpLogs(HttpAccessLogEntries {
                log_entry: http,
            }));
        }
        if !tcp.is_empty() {
            messages.push(LogEntries::TcpLogs(TcpAccessLogEntries { log_entry: tcp }));
        }
        for entries in messages {
            let count = match &entries {
                LogEntries::HttpLogs(l) => l.log_entry.len(),
                LogEntries::TcpLogs(l) => l.log_entry.len(),
            } as u64;
            let mut m = StreamAccessLogsMessage {
                identifier: identifier.take(),
                log_entries: Some(entries),
            };
            // A stream the collector closed may not have been seen to end yet: its queue
            // is closed, and the message goes on a new stream (with the identifier).
            for _ in 0..2 {
                let Some(s) = stream.as_ref() else {
                    self.failed(count);
                    return;
                };
                match s.try_send(m) {
                    Ok(()) => {
                        self.flushed.add(MAIN_THREAD, count);
                        break;
                    }
                    Err(tokio::sync::mpsc::error::TrySendError::Full(_)) => {
                        tracing::debug!("access log service: collector too slow, entries dropped");
                        self.failed(count);
                        return;
                    }
                    Err(tokio::sync::mpsc::error::TrySendError::Closed(back)) => {
                        m = back;
                        m.identifier = Some(self.identifier());
                        *stream = self.start();
                    }
                }
            }
        }
    }
}

/// The services by `common_config` (encoded) and kind: loggers configured alike share one.
fn shared_service(key: (Vec<u8>, bool), make: impl FnOnce() -> Service) -> Arc<Service> {
    type Services = Mutex<HashMap<(Vec<u8>, bool), Weak<Service>>>;
    static SERVICES: OnceLock<Services> = OnceLock::new();
    let mut map = SERVICES
        .get_or_init(Default::default)
        .lock()
        .unwrap_or_else(|p| p.into_inner());
    if let Some(s) = map.get(&key).and_then(Weak::upgrade) {
        return s;
    }
    map.retain(|_, w| w.strong_count() > 0);
    let s = Arc::new(make());
    map.insert(key, Arc::downgrade(&s));
    s
}

/// Compiles `common_config` (at `typed_config.common_config`) into its service.
#[allow(deprecated)] // `ApiVersion::V2` is named to refuse it
fn service(
    common: Option<&CommonGrpcAccessLogConfig>,
    http: bool,
    store: &Store,
) -> Result<Arc<Service>, ConfigError> {
    const AT: &str = "typed_config.common_config";
    let Some(c) = common else {
        return Err(ConfigError::new(AT, "value is required"));
    };
    for (field, set) in [
        (
            "filter_state_objects_to_log",
            !c.filter_state_objects_to_log.is_empty(),
        ),
        (
            "grpc_stream_retry_policy",
            c.grpc_stream_retry_policy.is_some(),
        ),
        ("custom_tags", !c.custom_tags.is_empty()),
    ] {
        if set {
            return Err(ConfigError::unsupported(format!("{AT}.{field}")));
        }
    }
    if c.log_name.is_empty() {
        return Err(ConfigError::new(
            format!("{AT}.log_name"),
            "value length must be at least 1 characters",
        ));
    }
    // Envoy refuses V2 (it warns of AUTO and takes it as V3).
    match ApiVersion::try_from(c.transport_api_version) {
        Ok(ApiVersion::V2) => {
            return Err(ConfigError::new(
                format!("{AT}.transport_api_version"),
                "V2 xDS transport protocol version is deprecated: the v2 xDS major version has been removed and is no longer supported",
            ))
        }
        Ok(_) => {}
        Err(_) => {
            return Err(ConfigError::new(
                format!("{AT}.transport_api_version"),
                "value must be one of the defined enum values",
            ))
        }
    }
    let Some(grpc) = &c.grpc_service else {
        return Err(ConfigError::new(
            format!("{AT}.grpc_service"),
            "value is required",
        ));
    };
    let client = GrpcClient::compile(grpc, &format!("{AT}.grpc_service"))?;
    let interval = c
        .buffer_flush_interval
        .as_ref()
        .map(|d| crate::config::duration(d, &format!("{AT}.buffer_flush_interval")))
        .transpose()?
        .filter(|d| !d.is_zero())
        .unwrap_or(Duration::from_secs(1));
    let max_bytes = c.buffer_size_bytes.as_ref().map_or(16_384, |v| v.value) as usize;
    let stat = |s: &str| store.counter(&format!("access_logs.grpc_access_log.{s}"));
    Ok(shared_service((c.encode_to_vec(), http), || Service {
        client,
        log_name: c.log_name.clone(),
        batching: Batching {
            interval,
            max_bytes,
            logs_written: stat("logs_written"),
            logs_dropped: stat("logs_dropped"),
        },
        flushed: stat("grpc_entries_flushed"),
        flush_failed: stat("grpc_entries_flush_failed"),
        stream: Mutex::new(None),
    }))
}

/// Header names to log, lower-cased (as Envoy's `LowerCaseString`).
fn names(v: &[String]) -> Vec<String> {
    v.iter().map(|n| n.to_ascii_lowercase()).collect()
}

impl GrpcAccessLogger {
    /// `envoy.access_loggers.http_grpc`.
    pub fn compile_http(any: &Any, store: &Store) -> Result<GrpcAccessLogger, ConfigError> {
        let c: HttpGrpcAccessLogConfig = courier_proto::unpack_any(any)
            .map_err(|e| ConfigError::new("typed_config", e.to_string()))?;
        if !c.additional_response_trailers_to_log.is_empty() {
            // The entry Courier writes does not carry the response's trailers.
            return Err(ConfigError::unsupported(
                "typed_config.additional_response_trailers_to_log",
            ));
        }
        let to = service(c.common_config.as_ref(), true, store)?;
        Ok(GrpcAccessLogger {
            kind: Kind::Http {
                request_headers: names(&c.additional_request_headers_to_log),
                response_headers: names(&c.additional_response_headers_to_log),
            },
            to,
        })
    }

    /// `envoy.access_loggers.tcp_grpc`.
    pub fn compile_tcp(any: &Any, store: &Store) -> Result<GrpcAccessLogger, ConfigError> {
        let c: TcpGrpcAccessLogConfig = courier_proto::unpack_any(any)
            .map_err(|e| ConfigError::new("typed_config", e.to_string()))?;
        let to = service(c.common_config.as_ref(), false, store)?;
        Ok(GrpcAccessLogger {
            kind: Kind::Tcp,
            to,
        })
    }

    /// Builds the entry and queues it for the main thread.
    pub fn log(&self, e: &LogEntry<'_>, worker: usize) {
        let record = match &self.kind {
            Kind::Http {
                request_headers,
                response_headers,
            } => Record::Http(Box::new(http_entry(e, request_headers, response_headers))),
            Kind::Tcp => Record::Tcp(Box::new(tcp_entry(e))),
        };
        grpc_export::submit(&self.to, record, worker);
    }
}

/// `a` as an `envoy.config.core.v3.Address` (TCP, the IP without brackets).
fn address_proto(a: SocketAddr) -> Address {
    Address {
        address: Some(address::Address::SocketAddress(SocketAddress {
            address: a.ip().to_string(),
            port_specifier: Some(socket_address::PortSpecifier::PortValue(u32::from(
                a.port(),
            ))),
            ..Default::default()
        })),
    }
}

fn timestamp(t: SystemTime) -> courier_proto::google::protobuf::Timestamp {
    let d = t
        .duration_since(SystemTime::UNIX_EPOCH)
        .unwrap_or(Duration::ZERO);
    courier_proto::google::protobuf::Timestamp {
        seconds: i64::try_from(d.as_secs()).unwrap_or(i64::MAX),
        nanos: i32::try_from(d.subsec_nanos()).unwrap_or(0),
    }
}

fn duration_proto(d: Duration) -> courier_proto::google::protobuf::Duration {
    courier_proto::google::protobuf::Duration {
        seconds: i64::try_from(d.as_secs()).unwrap_or(i64::MAX),
        nanos: i32::try_from(d.subsec_nanos()).unwrap_or(0),
    }
}

/// The response flags of Envoy's flag string (`UH`, `NR,URX`, `-`), as booleans; `None`
/// when there are none (Envoy leaves the message unset then).
fn response_flags(flags: &str) -> Option<ResponseFlags> {
    let mut f = ResponseFlags::default();
    let mut any = false;
    for flag in flags.split(',') {
        let field = match flag {
            "LH" => &mut f.failed_local_healthcheck,
            "UH" => &mut f.no_healthy_upstream,
            "UT" => &mut f.upstream_request_timeout,
            "LR" => &mut f.local_reset,
            "UR" => &mut f.upstream_remote_reset,
            "UF" => &mut f.upstream_connection_failure,
            "UC" => &mut f.upstream_connection_termination,
            "UO" => &mut f.upstream_overflow,
            "NR" => &mut f.no_route_found,
            "DI" => &mut f.delay_injected,
            "FI" => &mut f.fault_injected,
            "RL" => &mut f.rate_limited,
            "RLSE" => &mut f.rate_limit_service_error,
            "DC" => &mut f.downstream_connection_termination,
            "URX" => &mut f.upstream_retry_limit_exceeded,
            "SI" => &mut f.stream_idle_timeout,
            "IH" => &mut f.invalid_envoy_request_headers,
            "DPE" => &mut f.downstream_protocol_error,
            "UMSDR" => &mut f.upstream_max_stream_duration_reached,
            "RFCF" => &mut f.response_from_cache_filter,
            "NFCF" => &mut f.no_filter_config_found,
            "DT" => &mut f.duration_timeout,
            "UPE" => &mut f.upstream_protocol_error,
            "NC" => &mut f.no_cluster_found,
            "OM" => &mut f.overload_manager,
            "DF" => &mut f.dns_resolution_failure,
            "DR" => &mut f.downstream_remote_reset,
            "UAEX" => {
                f.unauthorized_details = Some(response_flags::Unauthorized {
                    reason: response_flags::unauthorized::Reason::ExternalService as i32,
                });
                any = true;
                continue;
            }
            _ => continue,
        };
        *field = true;
        any = true;
    }
    any.then_some(f)
}

/// The TLS properties Envoy logs: the SNI, and with a handshake its version, cipher
/// suite and the certificates' URI SANs and peer subject.
fn tls_properties(e: &LogEntry<'_>) -> Option<TlsProperties> {
    let sni = e.requested_server_name.filter(|s| !s.is_empty());
    if sni.is_none() && e.tls.is_none() {
        return None;
    }
    let mut p = TlsProperties {
        tls_sni_hostname: sni.unwrap_or_default().to_string(),
        ..Default::default()
    };
    if let Some(t) = e.tls {
        let uri = |sans: &[String]| {
            sans.iter()
                .map(|s| tls_properties::certificate_properties::SubjectAltName {
                    san: Some(
                        tls_properties::certificate_properties::subject_alt_name::San::Uri(
                            s.clone(),
                        ),
                    ),
                })
                .collect()
        };
        p.tls_version = match t.version {
            "TLSv1.2" => tls_properties::TlsVersion::TlSv12,
            "TLSv1.3" => tls_properties::TlsVersion::TlSv13,
            _ => tls_properties::TlsVersion::VersionUnspecified,
        } as i32;
        p.tls_cipher_suite = Some(UInt32Value {
            value: u32::from(t.cipher_id),
        });
        p.local_certificate_properties = Some(tls_properties::CertificateProperties {
            subject_alt_name: uri(&t.local_uri_sans),
            ..Default::default()
        });
        p.peer_certificate_properties = Some(tls_properties::CertificateProperties {
            subject_alt_name: t
                .peer
                .as_ref()
                .map(|c| uri(&c.names.uri_sans))
                .unwrap_or_default(),
            subject: t
                .peer
                .as_ref()
                .map(|c| c.names.subject.clone())
                .unwrap_or_default(),
            ..Default::default()
        });
    }
    Some(p)
}

/// Whether the entry is written before its stream or connection ended (Envoy's
/// `intermediate_log_entry`, and no `duration`).
fn intermediate(t: AccessLogType) -> bool {
    matches!(
        t,
        AccessLogType::TcpUpstreamConnected
            | AccessLogType::TcpPeriodic
            | AccessLogType::DownstreamStart
            | AccessLogType::DownstreamPeriodic
            | AccessLogType::DownstreamTunnelSuccessfullyEstablished
            | AccessLogType::UpstreamPoolReady
            | AccessLogType::UpstreamPeriodic
    )
}

/// Envoy's `extractCommonAccessLogProperties`, from what the entry knows.
fn common(e: &LogEntry<'_>, stream_id: String) -> AccessLogCommon {
    let intermediate = intermediate(e.log_type);
    AccessLogCommon {
        downstream_remote_address: Some(address_proto(e.remote)),
        downstream_direct_remote_address: Some(address_proto(e.direct_remote.unwrap_or(e.remote))),
        downstream_local_address: e.local.map(address_proto),
        tls_properties: tls_properties(e),
        start_time: Some(timestamp(e.start)),
        duration: (!intermediate).then(|| duration_proto(e.duration)),
        // Envoy names the upstream's cluster only with its host (none with `UH`).
        upstream_remote_address: e.upstream_host.map(address_proto),
        upstream_cluster: e
            .upstream_host
            .and(e.upstream_cluster)
            .unwrap_or_default()
            .to_string(),
        upstream_local_address: e.upstream_local.map(address_proto),
        upstream_transport_failure_reason: e.transport_failure.unwrap_or_default().to_string(),
        route_name: e.route_name.to_string(),
        // A cluster was chosen: its first attempt (retries are not counted here).
        upstream_request_attempt_count: u32::from(e.upstream_cluster.is_some()),
        response_flags: response_flags(e.flags),
        stream_id,
        intermediate_log_entry: intermediate,
        access_log_type: e.log_type as i32,
        ..Default::default()
    }
}

/// Envoy's `byteSize()` of a header map: names and values, with the pseudo-headers it
/// holds.
fn header_bytes(map: &HeaderMap) -> u64 {
    map.iter()
        .map(|(k, v)| (k.as_str().len() + v.len()) as u64)
        .sum()
}

/// A pseudo-header or field's size, when it has a value.
fn field_bytes(name: &str, value: &str) -> u64 {
    if value.is_empty() {
        0
    } else {
        (name.len() + value.len()) as u64
    }
}

/// The size of the `content-length: 0` of a reply the proxy made itself with no body:
/// Envoy's codec writes that one on the wire, it is not in the map Envoy logs; Courier
/// sets it in the response's head.
fn local_empty_length(e: &LogEntry<'_>) -> u64 {
    let local = e.details != "via_upstream";
    let zero = e
        .response
        .and_then(|r| r.get(http::header::CONTENT_LENGTH))
        .is_some_and(|v| v.as_bytes() == b"0");
    if local && zero {
        field_bytes("content-length", "0")
    } else {
        0
    }
}

/// The named headers' values (the first of each), those present only.
fn logged(map: Option<&HeaderMap>, names: &[String]) -> HashMap<String, String> {
    let Some(map) = map else {
        return HashMap::new();
    };
    names
        .iter()
        .filter_map(|n| {
            let v = map.get(n.as_str())?;
            Some((
                n.clone(),
                String::from_utf8_lossy(v.as_bytes()).into_owned(),
            ))
        })
        .collect()
}

fn http_entry(
    e: &LogEntry<'_>,
    request_headers: &[String],
    response_headers: &[String],
) -> HttpAccessLogEntry {
    let header = |n: &str| {
        e.request
            .get(n)
            .map(|v| String::from_utf8_lossy(v.as_bytes()).into_owned())
            .unwrap_or_default()
    };
    let has_request = !e.method.is_empty();
    // `:scheme` as the connection manager sets it for a request arriving on this
    // connection.
    let scheme = match (has_request, e.tls.is_some()) {
        (false, _) => "",
        (true, true) => "https",
        (true, false) => "http",
    };
    let request_id = e.request_id.unwrap_or_default();
    let original_path = e
        .original_path
        .map(str::to_string)
        .unwrap_or_else(|| header("x-envoy-original-path"));
    // The request's header map as Envoy holds it once the connection manager is done
    // with it: the pseudo-headers, the fields it came with, the `x-request-id` and
    // `x-forwarded-proto` it settled, and `x-envoy-original-path` after a rewrite.
    let mut request_headers_bytes = header_bytes(e.request)
        + field_bytes(":authority", e.authority)
        + field_bytes(":path", e.path)
        + field_bytes(":method", e.method)
        + field_bytes(":scheme", scheme);
    if has_request {
        if !e.request.contains_key("x-request-id") {
            request_headers_bytes += field_bytes("x-request-id", request_id);
        }
        if !e.request.contains_key("x-forwarded-proto") {
            request_headers_bytes += field_bytes("x-forwarded-proto", scheme);
        }
        if let Some(o) = e.original_path {
            request_headers_bytes += field_bytes("x-envoy-original-path", o);
        }
        // The header as sent upstream was the host's; the `:authority` counted is enough.
        if e.request.contains_key(http::header::HOST) {
            request_headers_bytes -= field_bytes("host", &header("host"));
        }
    }
    // `:status` with its 3 digits, and the `date` the codec adds as it writes the head
    // (an HTTP-date is always 29 characters).
    let response_headers_bytes = e.response.map_or(0, |r| {
        let status = if e.status == 0 { 0 } else { 10 };
        let date = if r.contains_key(http::header::DATE) {
            0
        } else {
            33
        };
        header_bytes(r) + status + date - local_empty_length(e)
    });
    let mut common_properties = common(e, request_id.to_string());
    // The router's attempts (none for a request it never saw).
    common_properties.upstream_request_attempt_count = e.attempts.unwrap_or(0);
    HttpAccessLogEntry {
        common_properties: Some(common_properties),
        protocol_version: match e.protocol {
            "HTTP/1.0" => HttpVersion::Http10,
            "HTTP/1.1" => HttpVersion::Http11,
            "HTTP/2" => HttpVersion::Http2,
            "HTTP/3" => HttpVersion::Http3,
            _ => HttpVersion::ProtocolUnspecified,
        } as i32,
        request: Some(HttpRequestProperties {
            request_method: if has_request {
                RequestMethod::from_str_name(e.method).unwrap_or(RequestMethod::MethodUnspecified)
                    as i32
            } else {
                0
            },
            scheme: scheme.to_string(),
            authority: e.authority.to_string(),
            path: e.path.to_string(),
            user_agent: header("user-agent"),
            referer: header("referer"),
            forwarded_for: header("x-forwarded-for"),
            request_id: request_id.to_string(),
            original_path,
            request_headers_bytes,
            request_body_bytes: e.bytes_received,
            request_headers: logged(Some(e.request), request_headers),
            ..Default::default()
        }),
        response: Some(HttpResponseProperties {
            response_code: (e.status != 0).then_some(UInt32Value {
                value: u32::from(e.status),
            }),
            response_code_details: match e.details {
                super::CLEARED_DETAILS => String::new(),
                d => d.to_string(),
            },
            response_headers_bytes,
            response_body_bytes: e.bytes_sent,
            response_headers: {
                let mut h = logged(e.response, response_headers);
                if local_empty_length(e) > 0 {
                    h.remove("content-length");
                }
                h
            },
            ..Default::default()
        }),
    }
}

fn tcp_entry(e: &LogEntry<'_>) -> TcpAccessLogEntry {
    // Envoy names each connection's stream with a random UUID.
    let id = crate::http::conn_manager::headers::uuid4_value();
    let mut c = common(e, id.to_str().unwrap_or_default().to_string());
    // What a TCP proxy reads from one side it writes to the other: the wire counts are
    // the bytes it moved (the upstream's only once there is one).
    c.downstream_wire_bytes_received = e.bytes_received;
    c.downstream_wire_bytes_sent = e.bytes_sent;
    if e.upstream_host.is_some() {
        c.upstream_wire_bytes_sent = e.bytes_received;
        c.upstream_wire_bytes_received = e.bytes_sent;
    }
    TcpAccessLogEntry {
        common_properties: Some(c),
        connection_properties: Some(ConnectionProperties {
            received_bytes: e.bytes_received,
            sent_bytes: e.bytes_sent,
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn response_flags_follow_the_flag_string() {
        assert_eq!(response_flags("-"), None);
        assert_eq!(response_flags(""), None);
        let f = response_flags("UF,URX").expect("flags");
        assert!(f.upstream_connection_failure && f.upstream_retry_limit_exceeded);
        assert!(!f.no_route_found);
        let f = response_flags("UAEX").expect("flags");
        assert_eq!(
            f.unauthorized_details.map(|u| u.reason),
            Some(response_flags::unauthorized::Reason::ExternalService as i32)
        );
    }

    #[test]
    fn addresses_are_socket_addresses() {
        let a = address_proto("[::1]:80".parse().expect("addr"));
        let Some(address::Address::SocketAddress(s)) = a.address else {
            panic!("a socket address");
        };
        assert_eq!(s.address, "::1");
        assert_eq!(
            s.port_specifier,
            Some(socket_address::PortSpecifier::PortValue(80))
        );
    }
}
