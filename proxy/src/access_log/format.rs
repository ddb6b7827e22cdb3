//! Access-log formats: Envoy's command operators (`%RESPONSE_CODE%`, `%REQ(…)%`, …) and
//! the two shapes a line takes — a text template, or a JSON object whose string values
//! are templates (`json_format`): a value that is one operator keeps its type (a number
//! for `%RESPONSE_CODE%`, `null` when the value is absent), others are strings.
//! `omit_empty_values` prints an absent value as nothing in text, and drops it (and an
//! object left empty) from JSON, as Envoy does.
//!
//! Formats are parsed as Envoy 1.40 parses them: `%%` is a `%`, and any other `%` starts
//! a command, `%NAME%`, `%NAME(arguments)%` or `%NAME(arguments):length%`, checked for the
//! arguments and length it takes; a `%` that starts none is an error. Envoy's operators
//! that need what Courier does not have (dynamic metadata, filter state, upstream TLS, …)
//! are refused by name.

use std::borrow::Cow;
use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::time::{Duration, SystemTime};

use courier_proto::google::protobuf::{value::Kind, Struct};

use super::time_format::TimeFormat;
use super::LogEntry;
use crate::config::ConfigError;

/// The command operators a `log_format`'s `formatters` extensions add.
#[derive(Debug, Clone, Copy, Default)]
pub struct Extensions {
    /// `envoy.formatter.req_without_query`: `%REQ_WITHOUT_QUERY(X?Y):Z%`.
    pub req_without_query: bool,
}

/// Where a header operator looks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Side {
    Request,
    Response,
    Trailers,
}

/// A header operator's header, its alternative and its maximum length.
#[derive(Debug, Clone)]
struct HeaderOp {
    side: Side,
    name: String,
    alt: Option<String>,
    max: Option<usize>,
    /// `REQ_WITHOUT_QUERY`: the value up to its `?`.
    without_query: bool,
}

/// How `%GRPC_STATUS%` prints a status.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum GrpcFormat {
    /// `OK`, `NotFound`, … (`CAMEL_STRING`, the default).
    Camel,
    /// `OK`, `NOT_FOUND`, … (`SNAKE_STRING`).
    Snake,
    /// `0`, `5`, … (`NUMBER`; a number in JSON).
    Number,
}

/// A duration Envoy measures from the request's start.
#[derive(Debug, Clone, Copy)]
enum Timing {
    /// `%REQUEST_DURATION%`: to the request's last byte.
    RequestRx,
    /// `%REQUEST_TX_DURATION%`: to the request's last byte sent upstream.
    UpstreamTx,
    /// `%RESPONSE_DURATION%`: to the response's first byte from upstream.
    UpstreamRx,
    /// `%RESPONSE_TX_DURATION%`: from the response's first byte from upstream to its
    /// last byte sent downstream.
    DownstreamTx,
}

#[derive(Debug, Clone)]
enum Op {
    Lit(String),
    StartTime,
    /// `%START_TIME(<format>)%`, `%START_TIME_LOCAL%`, `%START_TIME_LOCAL(<format>)%`.
    Time(Box<TimeFormat>),
    Header(Box<HeaderOp>),
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
    /// `%RESPONSE_CODE_DETAILS%` (whitespace as `_`), or `(ALLOW_WHITESPACES)`.
    ResponseCodeDetails {
        allow_whitespace: bool,
    },
    /// Nothing Courier does ends a connection with termination details (Envoy sets them
    /// for network filters Courier does not have): always absent.
    ConnectionTerminationDetails,
    UpstreamTransportFailureReason,
    UpstreamClusterRaw,
    AccessLogType,
    UpstreamLocalAddress,
    UpstreamLocalAddressNoPort,
    UpstreamLocalPort,
    UpstreamRemoteAddress,
    UpstreamRemoteAddressNoPort,
    UpstreamRemotePort,
    UpstreamRequestAttemptCount,
    /// `%UPSTREAM_HOST_NAME%` (`true`: `_WITHOUT_PORT`).
    UpstreamHostName(bool),
    DownstreamLocalAddress,
    DownstreamLocalAddressNoPort,
    DownstreamLocalPort,
    DownstreamRemotePort,
    DownstreamDirectRemoteAddress,
    DownstreamDirectRemoteAddressNoPort,
    DownstreamDirectRemotePort,
    Hostname,
    GrpcStatus(GrpcFormat),
    TraceId,
    StreamId,
    ConnectionId,
    VirtualClusterName,
    /// `%ENVIRONMENT(X):Z%`: read when the format is compiled (`-` when unset, a string
    /// even in JSON, as Envoy's).
    Environment(String),
    Timing(Timing),
    /// `%CEL(expression):Z%`: the expression's value as Envoy prints it (a string even in
    /// JSON), absent when it errs.
    Cel {
        expr: Box<super::cel::Expression>,
        max: Option<usize>,
    },
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

/// One operator's value for a request.
enum Val<'a> {
    /// Not known for this request (`-` in text, `null` in JSON).
    Absent,
    Text(Cow<'a, str>),
    Number(u64),
    /// A number that may be negative (an invalid `grpc-status`, `-1`).
    Signed(i64),
}

impl TlsField {
    fn value<'a>(self, e: &LogEntry<'a>) -> Val<'a> {
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
            Some(v) if !v.is_empty() => Val::Text(Cow::Owned(v)),
            _ => Val::Absent,
        }
    }
}

/// `v` cut to `max` bytes (at a character boundary).
fn truncate(v: Cow<'_, str>, max: Option<usize>) -> Cow<'_, str> {
    match max {
        Some(m) if v.len() > m => {
            let mut cut = m;
            while !v.is_char_boundary(cut) {
                cut -= 1;
            }
            Cow::Owned(v[..cut].to_string())
        }
        _ => v,
    }
}

impl HeaderOp {
    /// The header's value (the alternative's when it is absent), cut to the length.
    fn value<'a>(&self, e: &LogEntry<'a>) -> Val<'a> {
        let map = match self.side {
            Side::Request => Some(e.request),
            Side::Response => e.response,
            Side::Trailers => e.trailers,
        };
        let get = |n: &str| -> Option<Cow<'a, str>> {
            match (self.side, n) {
                // Empty: a stream whose head never arrived (Envoy's `-`).
                (Side::Request, ":method") => {
                    (!e.method.is_empty()).then_some(Cow::Borrowed(e.method))
                }
                (Side::Request, ":path") => (!e.path.is_empty()).then_some(Cow::Borrowed(e.path)),
                (Side::Request, ":authority") => {
                    (!e.authority.is_empty()).then_some(Cow::Borrowed(e.authority))
                }
                (Side::Request, "x-envoy-original-path") if e.original_path.is_some() => {
                    e.original_path.map(Cow::Borrowed)
                }
                (Side::Response, ":status") if e.response.is_some() => {
                    Some(Cow::Owned(e.status.to_string()))
                }
                _ => map?.get(n)?.to_str().ok().map(Cow::Borrowed),
            }
        };
        match get(&self.name).or_else(|| self.alt.as_deref().and_then(get)) {
            Some(mut v) => {
                if self.without_query {
                    if let Some(q) = v.find('?') {
                        v = Cow::Owned(v[..q].to_string());
                    }
                }
                Val::Text(truncate(v, self.max))
            }
            None => Val::Absent,
        }
    }
}

/// gRPC's name for a status (Envoy's `grpcStatusToString`).
fn grpc_camel(status: i64) -> Option<&'static str> {
    Some(match status {
        0 => "OK",
        1 => "Canceled",
        2 => "Unknown",
        3 => "InvalidArgument",
        4 => "DeadlineExceeded",
        5 => "NotFound",
        6 => "AlreadyExists",
        7 => "PermissionDenied",
        8 => "ResourceExhausted",
        9 => "FailedPrecondition",
        10 => "Aborted",
        11 => "OutOfRange",
        12 => "Unimplemented",
        13 => "Internal",
        14 => "Unavailable",
        15 => "DataLoss",
        16 => "Unauthenticated",
        _ => return None,
    })
}

/// abseil's name for a status code (`absl::StatusCodeToString`).
fn grpc_snake(status: i64) -> Option<&'static str> {
    Some(match status {
        0 => "OK",
        1 => "CANCELLED",
        2 => "UNKNOWN",
        3 => "INVALID_ARGUMENT",
        4 => "DEADLINE_EXCEEDED",
        5 => "NOT_FOUND",
        6 => "ALREADY_EXISTS",
        7 => "PERMISSION_DENIED",
        8 => "RESOURCE_EXHAUSTED",
        9 => "FAILED_PRECONDITION",
        10 => "ABORTED",
        11 => "OUT_OF_RANGE",
        12 => "UNIMPLEMENTED",
        13 => "INTERNAL",
        14 => "UNAVAILABLE",
        15 => "DATA_LOSS",
        16 => "UNAUTHENTICATED",
        _ => return None,
    })
}

/// Whether a request is gRPC as Envoy's `isGrpcRequestHeaders` says.
fn is_grpc_request(e: &LogEntry<'_>) -> bool {
    !e.path.is_empty() && crate::protocol::grpc::is_grpc(e.request)
}

/// `%GRPC_STATUS%`: absent for a request that is not gRPC (Envoy's
/// `validate_grpc_header_before_log_grpc_status`) or without a status.
fn grpc_status_value<'a>(e: &LogEntry<'a>, f: GrpcFormat) -> Val<'a> {
    if !is_grpc_request(e) {
        return Val::Absent;
    }
    let Some(status) = super::grpc_status(e, true) else {
        return Val::Absent;
    };
    let name = match f {
        GrpcFormat::Number => return Val::Signed(status),
        GrpcFormat::Camel => grpc_camel(status),
        GrpcFormat::Snake => grpc_snake(status),
    };
    match name {
        Some(n) => Val::Text(Cow::Borrowed(n)),
        None => Val::Text(Cow::Owned(status.to_string())),
    }
}

/// `host` without its `:port` (Envoy's `HeaderUtility::stripPortFromHost`).
fn strip_port(host: &str) -> &str {
    let Some(colon) = host.rfind(':') else {
        return host;
    };
    let v6_end = host.rfind(']');
    if v6_end.is_some_and(|e| e > colon) {
        return host;
    }
    let port = &host[colon + 1..];
    if !port.is_empty() && port.bytes().all(|b| b.is_ascii_digit()) && port.parse::<u32>().is_ok() {
        &host[..colon]
    } else {
        host
    }
}

/// A duration in whole milliseconds.
fn millis<'a>(d: Option<Duration>) -> Val<'a> {
    d.map_or(Val::Absent, |d| {
        Val::Number(u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
    })
}

impl Op {
    fn value<'a>(&'a self, e: &LogEntry<'a>) -> Val<'a> {
        match self {
            Op::Lit(s) => Val::Text(Cow::Borrowed(s)),
            Op::StartTime => Val::Text(Cow::Owned(rfc3339_millis(e.start))),
            Op::Time(f) => Val::Text(Cow::Owned(f.format(e.start))),
            Op::Header(h) => h.value(e),
            // A TCP connection has none (`-`).
            Op::Protocol if e.protocol.is_empty() => Val::Absent,
            Op::Protocol => Val::Text(Cow::Borrowed(e.protocol)),
            Op::ResponseCode => Val::Number(u64::from(e.status)),
            Op::ResponseFlags => Val::Text(Cow::Borrowed(e.flags)),
            Op::BytesReceived => Val::Number(e.bytes_received),
            Op::BytesSent => Val::Number(e.bytes_sent),
            Op::Duration => Val::Number(u64::try_from(e.duration.as_millis()).unwrap_or(u64::MAX)),
            Op::UpstreamHost => match e.upstream_host {
                Some(h) => Val::Text(Cow::Owned(h.to_string())),
                None => Val::Absent,
            },
            Op::UpstreamCluster | Op::UpstreamClusterRaw => e
                .upstream_cluster
                .map_or(Val::Absent, |c| Val::Text(Cow::Borrowed(c))),
            Op::DownstreamRemoteAddress => Val::Text(Cow::Owned(e.remote.to_string())),
            Op::DownstreamRemoteAddressNoPort => Val::Text(Cow::Owned(e.remote.ip().to_string())),
            Op::RouteName if e.route_name.is_empty() => Val::Absent,
            Op::RouteName => Val::Text(Cow::Borrowed(e.route_name)),
            Op::Tls(field) => field.value(e),
            Op::ResponseCodeDetails { .. } if e.details == super::CLEARED_DETAILS => {
                Val::Text(Cow::Borrowed(""))
            }
            Op::ResponseCodeDetails { .. } if e.details.is_empty() => Val::Absent,
            Op::ResponseCodeDetails {
                allow_whitespace: true,
            } => Val::Text(Cow::Borrowed(e.details)),
            Op::ResponseCodeDetails { .. } => Val::Text(no_whitespace(e.details)),
            Op::ConnectionTerminationDetails => Val::Absent,
            Op::UpstreamTransportFailureReason => match e.transport_failure {
                Some(r) if !r.is_empty() => Val::Text(no_whitespace(r)),
                _ => Val::Absent,
            },
            Op::AccessLogType => Val::Text(Cow::Borrowed(e.log_type.as_str_name())),
            Op::UpstreamLocalAddress => addr(e.upstream_local, SocketAddr::to_string),
            Op::UpstreamLocalAddressNoPort => addr(e.upstream_local, |a| a.ip().to_string()),
            Op::UpstreamLocalPort => port(e.upstream_local),
            Op::UpstreamRemoteAddress => addr(e.upstream_remote, SocketAddr::to_string),
            Op::UpstreamRemoteAddressNoPort => addr(e.upstream_remote, |a| a.ip().to_string()),
            Op::UpstreamRemotePort => port(e.upstream_remote),
            Op::UpstreamRequestAttemptCount => Val::Number(u64::from(e.attempts.unwrap_or(0))),
            Op::UpstreamHostName(no_port) => {
                let name: Cow<'a, str> = match (e.upstream_hostname, e.upstream_host) {
                    (Some(h), _) if !h.is_empty() => Cow::Borrowed(h),
                    (_, Some(a)) => Cow::Owned(a.to_string()),
                    _ => return Val::Absent,
                };
                if *no_port {
                    Val::Text(Cow::Owned(strip_port(&name).to_string()))
                } else {
                    Val::Text(name)
                }
            }
            Op::DownstreamLocalAddress => addr(e.local, SocketAddr::to_string),
            Op::DownstreamLocalAddressNoPort => addr(e.local, |a| a.ip().to_string()),
            Op::DownstreamLocalPort => port(e.local),
            Op::DownstreamRemotePort => Val::Number(e.remote.port().into()),
            Op::DownstreamDirectRemoteAddress => {
                addr(e.direct_remote.or(Some(e.remote)), SocketAddr::to_string)
            }
            Op::DownstreamDirectRemoteAddressNoPort => {
                addr(e.direct_remote.or(Some(e.remote)), |a| a.ip().to_string())
            }
            Op::DownstreamDirectRemotePort => port(e.direct_remote.or(Some(e.remote))),
            Op::Hostname => Val::Text(Cow::Borrowed(hostname())),
            Op::GrpcStatus(f) => grpc_status_value(e, *f),
            Op::TraceId => {
                use crate::tracers::TraceIdText;
                let Some(t) = e.trace else {
                    return Val::Absent;
                };
                Val::Text(Cow::Owned(match t.text {
                    TraceIdText::Hex128 => format!("{:032x}", t.trace),
                    TraceIdText::Hex64 => format!("{:016x}", t.trace as u64),
                    TraceIdText::SpanId => match t.span {
                        Some(id) => format!("{id:x}"),
                        None => return Val::Absent,
                    },
                }))
            }
            Op::StreamId => e
                .request_id
                .map_or(Val::Absent, |id| Val::Text(Cow::Borrowed(id))),
            Op::ConnectionId => Val::Number(e.connection_id.unwrap_or(0)),
            Op::VirtualClusterName => e
                .virtual_cluster
                .map_or(Val::Absent, |v| Val::Text(Cow::Borrowed(v))),
            Op::Environment(v) => Val::Text(Cow::Borrowed(v)),
            Op::Cel { expr, max } => match expr.render(e) {
                Some(v) => Val::Text(truncate(Cow::Owned(v), *max)),
                None => Val::Absent,
            },
            Op::Timing(t) => {
                let timing = &e.timing;
                millis(match t {
                    Timing::RequestRx => timing.request_rx,
                    Timing::UpstreamTx => timing.upstream_tx,
                    Timing::UpstreamRx => timing.upstream_rx,
                    Timing::DownstreamTx => timing
                        .downstream_tx
                        .zip(timing.upstream_rx)
                        .map(|(tx, rx)| tx.saturating_sub(rx)),
                })
            }
        }
    }
}

/// An address as the operator prints it, `-` when there is none.
fn addr<'a>(a: Option<SocketAddr>, show: fn(&SocketAddr) -> String) -> Val<'a> {
    a.map_or(Val::Absent, |a| Val::Text(Cow::Owned(show(&a))))
}

/// An address's port (a number in JSON), `-` when there is none.
fn port<'a>(a: Option<SocketAddr>) -> Val<'a> {
    a.map_or(Val::Absent, |a| Val::Number(a.port().into()))
}

/// Envoy prints details and failure reasons with each whitespace as `_`, so a line
/// splits on spaces.
fn no_whitespace(s: &str) -> Cow<'_, str> {
    if s.bytes().any(|b| b.is_ascii_whitespace()) {
        Cow::Owned(s.replace(|c: char| c.is_ascii_whitespace(), "_"))
    } else {
        Cow::Borrowed(s)
    }
}

/// The machine's host name (`%HOSTNAME%`), read once.
fn hostname() -> &'static str {
    static NAME: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    NAME.get_or_init(|| {
        let mut buf = [0u8; 256];
        // SAFETY: gethostname writes at most `buf.len()` bytes into `buf`.
        let rc = unsafe { libc::gethostname(buf.as_mut_ptr().cast(), buf.len()) };
        if rc != 0 {
            return "-".to_string();
        }
        let end = buf.iter().position(|&b| b == 0).unwrap_or(buf.len());
        String::from_utf8_lossy(&buf[..end]).into_owned()
    })
}

/// Text operators and literals, rendered in order.
#[derive(Debug, Clone)]
struct Template(Vec<Op>);

impl Template {
    fn render(&self, e: &LogEntry<'_>, omit_empty: bool, out: &mut String) {
        for op in &self.0 {
            match op.value(e) {
                Val::Absent if omit_empty => {}
                Val::Absent => out.push('-'),
                Val::Text(t) => out.push_str(&t),
                Val::Number(n) => out.push_str(&n.to_string()),
                Val::Signed(n) => out.push_str(&n.to_string()),
            }
        }
    }
}

/// A `json_format` value.
#[derive(Debug, Clone)]
enum JsonNode {
    /// A literal number, boolean or null from the config, already written as JSON.
    Literal(String),
    /// A string: a template.
    Template(Template),
    /// A nested object (keys sorted, as Envoy prints them; each key already written as a
    /// JSON string).
    Object(Vec<(String, JsonNode)>),
}

/// `s` as a JSON string (quoted, escaped) appended to `out`.
fn push_json_str(out: &mut String, s: &str) {
    match serde_json::to_string(s) {
        Ok(quoted) => out.push_str(&quoted),
        Err(_) => out.push_str("\"\""),
    }
}

impl JsonNode {
    fn compile(s: &Struct, path: &str, ext: Extensions) -> Result<JsonNode, ConfigError> {
        let mut fields = BTreeMap::new();
        for (key, value) in &s.fields {
            let at = format!("{path}.{key}");
            let node = match &value.kind {
                Some(Kind::StringValue(t)) => {
                    JsonNode::Template(Template(parse_format(t, ext).map_err(|e| e.at(&at))?))
                }
                Some(Kind::StructValue(inner)) => JsonNode::compile(inner, &at, ext)?,
                // Integral numbers print without a fraction, as Envoy prints them.
                Some(Kind::NumberValue(n)) if n.fract() == 0.0 && n.abs() < 9.0e15 => {
                    JsonNode::Literal((*n as i64).to_string())
                }
                Some(Kind::NumberValue(n)) => JsonNode::Literal(serde_json::json!(n).to_string()),
                Some(Kind::BoolValue(b)) => JsonNode::Literal(b.to_string()),
                Some(Kind::NullValue(_)) | None => JsonNode::Literal("null".to_string()),
                Some(Kind::ListValue(_)) => {
                    return Err(ConfigError::new(
                        at,
                        "Only string values, nested structs, numbers and booleans are supported in structured access log format.",
                    ))
                }
            };
            let mut quoted = String::new();
            push_json_str(&mut quoted, key);
            fields.insert(quoted, node);
        }
        Ok(JsonNode::Object(fields.into_iter().collect()))
    }

    /// Writes the value for a request to `out`; false (and nothing written) when
    /// `omit_empty` drops it.
    fn write(&self, e: &LogEntry<'_>, omit_empty: bool, out: &mut String) -> bool {
        match self {
            JsonNode::Literal(v) => out.push_str(v),
            JsonNode::Template(t) => match t.0.as_slice() {
                [op] => match op.value(e) {
                    Val::Absent if omit_empty => return false,
                    Val::Absent => out.push_str("null"),
                    Val::Text(s) => push_json_str(out, &s),
                    Val::Number(n) => out.push_str(&n.to_string()),
                    Val::Signed(n) => out.push_str(&n.to_string()),
                },
                _ => {
                    let mut text = String::new();
                    t.render(e, omit_empty, &mut text);
                    push_json_str(out, &text);
                }
            },
            JsonNode::Object(fields) => {
                let start = out.len();
                out.push('{');
                let mut any = false;
                for (key, node) in fields {
                    let mark = out.len();
                    if any {
                        out.push(',');
                    }
                    out.push_str(key);
                    out.push(':');
                    if node.write(e, omit_empty, out) {
                        any = true;
                    } else {
                        out.truncate(mark);
                    }
                }
                out.push('}');
                if omit_empty && !any {
                    out.truncate(start);
                    return false;
                }
            }
        }
        true
    }
}

/// A compiled log format.
#[derive(Debug, Clone)]
pub struct LogFormat {
    shape: Shape,
    omit_empty: bool,
}

#[derive(Debug, Clone)]
enum Shape {
    Text(Template),
    Json(JsonNode),
}

impl LogFormat {
    /// A text format (`text_format`, `format`).
    pub fn text(format: &str, omit_empty: bool) -> Result<LogFormat, ConfigError> {
        LogFormat::text_with(format, omit_empty, Extensions::default())
    }

    /// A text format with the command operators of `ext`.
    pub fn text_with(
        format: &str,
        omit_empty: bool,
        ext: Extensions,
    ) -> Result<LogFormat, ConfigError> {
        Ok(LogFormat {
            shape: Shape::Text(Template(parse_format(format, ext)?)),
            omit_empty,
        })
    }

    /// A `json_format` at `path`, with the command operators of `ext`.
    pub fn json(
        format: &Struct,
        omit_empty: bool,
        path: &str,
        ext: Extensions,
    ) -> Result<LogFormat, ConfigError> {
        Ok(LogFormat {
            shape: Shape::Json(JsonNode::compile(format, path, ext)?),
            omit_empty,
        })
    }

    /// One request's line (JSON lines end with a newline, as Envoy's).
    pub fn render(&self, e: &LogEntry<'_>) -> String {
        match &self.shape {
            Shape::Text(t) => {
                let mut out = String::with_capacity(256);
                t.render(e, self.omit_empty, &mut out);
                out
            }
            Shape::Json(node) => {
                let mut out = String::with_capacity(256);
                if !node.write(e, self.omit_empty, &mut out) {
                    out.push_str("{}");
                }
                out.push('\n');
                out
            }
        }
    }

    /// Whether the format names the response code (tests).
    #[cfg(test)]
    pub fn names_response_code(&self) -> bool {
        match &self.shape {
            Shape::Text(t) => t.0.iter().any(|o| matches!(o, Op::ResponseCode)),
            Shape::Json(_) => false,
        }
    }
}

/// What a command accepts (Envoy's `CommandSyntaxChecker` flags).
#[derive(Clone, Copy, PartialEq, Eq)]
enum Syntax {
    /// No arguments, no length.
    CommandOnly,
    /// Arguments optional, no length.
    ParamsOptional,
    /// Arguments required, length allowed.
    ParamsAndLength,
}

/// Envoy's check of a command's arguments and length.
fn check_syntax(
    syntax: Syntax,
    command: &str,
    sub: &str,
    length: Option<usize>,
) -> Result<(), ConfigError> {
    let message = match syntax {
        Syntax::CommandOnly if !sub.is_empty() || length.is_some() => {
            format!("{command} does not take any parameters or length")
        }
        Syntax::ParamsAndLength if sub.is_empty() => format!("{command} requires parameters"),
        Syntax::ParamsOptional if length.is_some() => {
            format!("{command} does not allow length to be specified.")
        }
        _ => return Ok(()),
    };
    Err(ConfigError::new("format", message))
}

/// Envoy 1.40's command operators Courier does not serve, and why.
const REFUSED: &[(&str, &str)] = &[
    ("DYNAMIC_METADATA", "Courier keeps no dynamic metadata"),
    (
        "CLUSTER_METADATA",
        "Courier keeps no cluster metadata for access logs",
    ),
    (
        "UPSTREAM_METADATA",
        "Courier keeps no endpoint metadata for access logs",
    ),
    ("FILTER_STATE", "Courier keeps no filter state"),
    ("UPSTREAM_FILTER_STATE", "Courier keeps no filter state"),
    ("STREAM_INFO_REQ", "Courier keeps no stream info of its own"),
];

/// Envoy 1.40's other command operators, which Courier does not serve yet.
const NOT_YET: &[&str] = &[
    "DOWNSTREAM_HANDSHAKE_DURATION",
    "ROUNDTRIP_DURATION",
    "BYTES_RETRANSMITTED",
    "PACKETS_RETRANSMITTED",
    "UPSTREAM_WIRE_BYTES_RECEIVED",
    "UPSTREAM_HEADER_BYTES_RECEIVED",
    "DOWNSTREAM_WIRE_BYTES_RECEIVED",
    "DOWNSTREAM_HEADER_BYTES_RECEIVED",
    "UPSTREAM_PROTOCOL",
    "UPSTREAM_WIRE_BYTES_SENT",
    "UPSTREAM_HEADER_BYTES_SENT",
    "DOWNSTREAM_WIRE_BYTES_SENT",
    "DOWNSTREAM_HEADER_BYTES_SENT",
    "COMMON_DURATION",
    "CUSTOM_FLAGS",
    "RESPONSE_FLAGS_LONG",
    "UPSTREAM_CONNECTION_ID",
    "UPSTREAM_TLS_CIPHER",
    "UPSTREAM_TLS_VERSION",
    "UPSTREAM_TLS_SESSION_ID",
    "UPSTREAM_PEER_ISSUER",
    "UPSTREAM_PEER_CERT",
    "UPSTREAM_PEER_SUBJECT",
    "UPSTREAM_PEER_URI_SAN",
    "UPSTREAM_PEER_DNS_SAN",
    "UPSTREAM_PEER_IP_SAN",
    "UPSTREAM_LOCAL_URI_SAN",
    "UPSTREAM_LOCAL_DNS_SAN",
    "UPSTREAM_LOCAL_IP_SAN",
    "UPSTREAM_PEER_CERT_V_START",
    "UPSTREAM_PEER_CERT_V_END",
    "DOWNSTREAM_DIRECT_LOCAL_ADDRESS",
    "DOWNSTREAM_DIRECT_LOCAL_ADDRESS_WITHOUT_PORT",
    "DOWNSTREAM_DIRECT_LOCAL_PORT",
    "DOWNSTREAM_PEER_IP_SAN",
    "DOWNSTREAM_PEER_EMAIL_SAN",
    "DOWNSTREAM_PEER_OTHERNAME_SAN",
    "DOWNSTREAM_LOCAL_DNS_SAN",
    "DOWNSTREAM_LOCAL_IP_SAN",
    "DOWNSTREAM_LOCAL_EMAIL_SAN",
    "DOWNSTREAM_LOCAL_OTHERNAME_SAN",
    "DOWNSTREAM_LOCAL_SUBJECT",
    "DOWNSTREAM_TLS_SESSION_ID",
    "DOWNSTREAM_PEER_FINGERPRINT_1",
    "DOWNSTREAM_PEER_SERIAL",
    "DOWNSTREAM_PEER_CHAIN_FINGERPRINTS_256",
    "DOWNSTREAM_PEER_CHAIN_FINGERPRINTS_1",
    "DOWNSTREAM_PEER_CHAIN_SERIALS",
    "DOWNSTREAM_PEER_ISSUER",
    "DOWNSTREAM_PEER_CERT",
    "DOWNSTREAM_PEER_CERT_V_START",
    "DOWNSTREAM_PEER_CERT_V_END",
    "DOWNSTREAM_TRANSPORT_FAILURE_REASON",
    "FILTER_CHAIN_NAME",
    "TLS_JA3_FINGERPRINT",
    "TLS_JA4_FINGERPRINT",
    "UNIQUE_ID",
    "EMIT_TIME",
    "EMIT_TIME_LOCAL",
    "UPSTREAM_CONNECTION_POOL_READY_DURATION",
    "LOCAL_REPLY_BODY",
    "REQUEST_HEADERS_BYTES",
    "RESPONSE_HEADERS_BYTES",
    "RESPONSE_TRAILERS_BYTES",
];

/// A command at the start of `s` (Envoy's `^%([A-Z0-9_]+)(?:\((.*?)\))?(?::([0-9]+))?%`):
/// its length in `s`, its name, its arguments and its length argument.
fn match_command(s: &str) -> Option<(usize, &str, &str, Option<&str>)> {
    let b = s.as_bytes();
    let name_end = 1 + b[1..]
        .iter()
        .take_while(|c| c.is_ascii_uppercase() || c.is_ascii_digit() || **c == b'_')
        .count();
    if name_end == 1 {
        return None;
    }
    let name = &s[1..name_end];
    // `:digits` (optional) then `%`, from `at`: where the command ends and the digits.
    let tail = |at: usize| -> Option<(usize, Option<&str>)> {
        match b.get(at) {
            Some(b'%') => Some((at + 1, None)),
            Some(b':') => {
                let digits = b[at + 1..]
                    .iter()
                    .take_while(|c| c.is_ascii_digit())
                    .count();
                (digits > 0 && b.get(at + 1 + digits) == Some(&b'%'))
                    .then(|| (at + 2 + digits, Some(&s[at + 1..at + 1 + digits])))
            }
            _ => None,
        }
    };
    if b.get(name_end) == Some(&b'(') {
        // The shortest arguments that let the command end (a line break ends the search,
        // as the regex's `.` does not match one).
        for j in name_end + 1..b.len() {
            match b[j] {
                b'\n' | b'\r' => break,
                b')' => {
                    if let Some((end, len)) = tail(j + 1) {
                        return Some((end, name, &s[name_end + 1..j], len));
                    }
                }
                _ => {}
            }
        }
    }
    tail(name_end).map(|(end, len)| (end, name, "", len))
}

/// A header operator's `X?Y` (Envoy's `parseSubcommandHeaders`).
fn header_op(
    side: Side,
    sub: &str,
    max: Option<usize>,
    without_query: bool,
) -> Result<Op, ConfigError> {
    let mut parts = sub.split('?');
    let name = parts.next().unwrap_or("").to_ascii_lowercase();
    let alt = parts.next().map(str::to_ascii_lowercase);
    if parts.next().is_some() {
        return Err(ConfigError::new(
            "format",
            format!("More than 1 alternative header specified in token: {sub}"),
        ));
    }
    let bad = |h: &str| h.bytes().any(|b| matches!(b, 0 | b'\r' | b'\n'));
    if bad(&name) || alt.as_deref().is_some_and(bad) {
        return Err(ConfigError::new(
            "format",
            "Invalid header configuration. Format string contains null or newline.",
        ));
    }
    Ok(Op::Header(Box::new(HeaderOp {
        side,
        name,
        alt,
        max,
        without_query,
    })))
}

/// A time operator's format (`%n` refused, as Envoy refuses a line break).
fn time_op(sub: &str, local: bool) -> Result<Op, ConfigError> {
    static NEWLINE: std::sync::OnceLock<regex::Regex> = std::sync::OnceLock::new();
    let newline =
        NEWLINE.get_or_init(|| regex::Regex::new("%[-_0^#]*[1-9]*(E|O)?n").expect("a valid regex"));
    if newline.is_match(sub) {
        return Err(ConfigError::new(
            "format",
            "Invalid header configuration. Format string contains newline.",
        ));
    }
    let format = match (sub.is_empty(), local) {
        (true, false) => return Ok(Op::StartTime),
        (true, true) => "%Y-%m-%dT%H:%M:%E3S%z",
        (false, _) => sub,
    };
    Ok(Op::Time(Box::new(TimeFormat::new(format, local))))
}

/// One command: its operator.
fn command(
    name: &str,
    sub: &str,
    length: Option<usize>,
    ext: Extensions,
) -> Result<Op, ConfigError> {
    use Syntax::*;
    let (syntax, op) = match name {
        "REQ" => (
            ParamsAndLength,
            header_op(Side::Request, sub, length, false)?,
        ),
        "RESP" => (
            ParamsAndLength,
            header_op(Side::Response, sub, length, false)?,
        ),
        "TRAILER" => (
            ParamsAndLength,
            header_op(Side::Trailers, sub, length, false)?,
        ),
        "REQ_WITHOUT_QUERY" if ext.req_without_query => (
            ParamsAndLength,
            header_op(Side::Request, sub, length, true)?,
        ),
        "START_TIME" => (ParamsOptional, time_op(sub, false)?),
        "START_TIME_LOCAL" => (ParamsOptional, time_op(sub, true)?),
        "RESPONSE_CODE_DETAILS" => (
            ParamsOptional,
            Op::ResponseCodeDetails {
                allow_whitespace: sub == "ALLOW_WHITESPACES",
            },
        ),
        "GRPC_STATUS" => {
            let f =
                match sub {
                    "" | "CAMEL_STRING" => GrpcFormat::Camel,
                    "SNAKE_STRING" => GrpcFormat::Snake,
                    "NUMBER" => GrpcFormat::Number,
                    _ => return Err(ConfigError::new(
                        "format",
                        "GrpcStatusFormatter only supports CAMEL_STRING, SNAKE_STRING or NUMBER.",
                    )),
                };
            (ParamsOptional, Op::GrpcStatus(f))
        }
        "CEL" => (
            ParamsAndLength,
            Op::Cel {
                expr: Box::new(
                    super::cel::Expression::compile_as(sub, "expression")
                        .map_err(|m| ConfigError::new("format", m))?,
                ),
                max: length,
            },
        ),
        "ENVIRONMENT" => {
            // Checked first: Envoy reads the variable only for a well-formed command.
            check_syntax(ParamsAndLength, name, sub, length)?;
            let value = std::env::var_os(sub).map_or_else(
                || "-".to_string(),
                |v| truncate(Cow::Owned(v.to_string_lossy().into_owned()), length).into_owned(),
            );
            (ParamsAndLength, Op::Environment(value))
        }
        _ => {
            let op = match name {
                "PROTOCOL" => Op::Protocol,
                "RESPONSE_CODE" => Op::ResponseCode,
                "RESPONSE_FLAGS" => Op::ResponseFlags,
                "BYTES_RECEIVED" => Op::BytesReceived,
                "BYTES_SENT" => Op::BytesSent,
                "DURATION" => Op::Duration,
                "REQUEST_DURATION" => Op::Timing(Timing::RequestRx),
                "REQUEST_TX_DURATION" => Op::Timing(Timing::UpstreamTx),
                "RESPONSE_DURATION" => Op::Timing(Timing::UpstreamRx),
                "RESPONSE_TX_DURATION" => Op::Timing(Timing::DownstreamTx),
                "UPSTREAM_HOST" => Op::UpstreamHost,
                "UPSTREAM_HOST_NAME" => Op::UpstreamHostName(false),
                "UPSTREAM_HOST_NAME_WITHOUT_PORT" => Op::UpstreamHostName(true),
                "UPSTREAM_CLUSTER" => Op::UpstreamCluster,
                "UPSTREAM_CLUSTER_RAW" => Op::UpstreamClusterRaw,
                "UPSTREAM_LOCAL_ADDRESS" => Op::UpstreamLocalAddress,
                "UPSTREAM_LOCAL_ADDRESS_WITHOUT_PORT" => Op::UpstreamLocalAddressNoPort,
                "UPSTREAM_LOCAL_PORT" => Op::UpstreamLocalPort,
                "UPSTREAM_REMOTE_ADDRESS" => Op::UpstreamRemoteAddress,
                "UPSTREAM_REMOTE_ADDRESS_WITHOUT_PORT" => Op::UpstreamRemoteAddressNoPort,
                "UPSTREAM_REMOTE_PORT" => Op::UpstreamRemotePort,
                "UPSTREAM_REQUEST_ATTEMPT_COUNT" => Op::UpstreamRequestAttemptCount,
                "UPSTREAM_TRANSPORT_FAILURE_REASON" => Op::UpstreamTransportFailureReason,
                "DOWNSTREAM_REMOTE_ADDRESS" => Op::DownstreamRemoteAddress,
                "DOWNSTREAM_REMOTE_ADDRESS_WITHOUT_PORT" => Op::DownstreamRemoteAddressNoPort,
                "DOWNSTREAM_REMOTE_PORT" => Op::DownstreamRemotePort,
                "DOWNSTREAM_LOCAL_ADDRESS" => Op::DownstreamLocalAddress,
                "DOWNSTREAM_LOCAL_ADDRESS_WITHOUT_PORT" => Op::DownstreamLocalAddressNoPort,
                "DOWNSTREAM_LOCAL_PORT" => Op::DownstreamLocalPort,
                "DOWNSTREAM_DIRECT_REMOTE_ADDRESS" => Op::DownstreamDirectRemoteAddress,
                "DOWNSTREAM_DIRECT_REMOTE_ADDRESS_WITHOUT_PORT" => {
                    Op::DownstreamDirectRemoteAddressNoPort
                }
                "DOWNSTREAM_DIRECT_REMOTE_PORT" => Op::DownstreamDirectRemotePort,
                "ROUTE_NAME" => Op::RouteName,
                "REQUESTED_SERVER_NAME" => Op::Tls(TlsField::RequestedServerName),
                "DOWNSTREAM_TLS_VERSION" => Op::Tls(TlsField::Version),
                "DOWNSTREAM_TLS_CIPHER" => Op::Tls(TlsField::Cipher),
                "DOWNSTREAM_PEER_SUBJECT" => Op::Tls(TlsField::PeerSubject),
                "DOWNSTREAM_PEER_URI_SAN" => Op::Tls(TlsField::PeerUriSan),
                "DOWNSTREAM_PEER_DNS_SAN" => Op::Tls(TlsField::PeerDnsSan),
                "DOWNSTREAM_PEER_FINGERPRINT_256" => Op::Tls(TlsField::PeerFingerprint256),
                "DOWNSTREAM_LOCAL_URI_SAN" => Op::Tls(TlsField::LocalUriSan),
                "CONNECTION_TERMINATION_DETAILS" => Op::ConnectionTerminationDetails,
                "ACCESS_LOG_TYPE" => Op::AccessLogType,
                "HOSTNAME" => Op::Hostname,
                "GRPC_STATUS_NUMBER" => Op::GrpcStatus(GrpcFormat::Number),
                "TRACE_ID" => Op::TraceId,
                "STREAM_ID" => Op::StreamId,
                "CONNECTION_ID" => Op::ConnectionId,
                "VIRTUAL_CLUSTER_NAME" => Op::VirtualClusterName,
                other => return Err(unknown(other)),
            };
            (CommandOnly, op)
        }
    };
    check_syntax(syntax, name, sub, length)?;
    Ok(op)
}

/// An operator Courier does not serve: why, for one of Envoy's; Envoy's own message for
/// one Envoy does not know either.
fn unknown(name: &str) -> ConfigError {
    if let Some((_, why)) = REFUSED.iter().find(|(n, _)| *n == name) {
        return ConfigError::new(
            "format",
            format!("%{name}% is not supported by Courier: {why}"),
        );
    }
    if NOT_YET.contains(&name) {
        return ConfigError::new("format", format!("%{name}% is not supported by Courier"));
    }
    if name == "REQ_WITHOUT_QUERY" {
        // Envoy's too: it needs its formatter extension.
        return ConfigError::new(
            "format",
            "Not supported field in StreamInfo: REQ_WITHOUT_QUERY",
        );
    }
    ConfigError::new(
        "format",
        format!("Not supported field in StreamInfo: {name}"),
    )
}

fn parse_format(fmt: &str, ext: Extensions) -> Result<Vec<Op>, ConfigError> {
    let mut ops = Vec::new();
    let mut lit = String::new();
    let mut pos = 0;
    while pos < fmt.len() {
        let rest = &fmt[pos..];
        let Some(i) = rest.find('%') else {
            lit.push_str(rest);
            break;
        };
        lit.push_str(&rest[..i]);
        pos += i;
        if fmt[pos + 1..].starts_with('%') {
            lit.push('%');
            pos += 2;
            continue;
        }
        let Some((len, name, sub, length)) = match_command(&fmt[pos..]) else {
            return Err(ConfigError::new(
                "format",
                format!(
                    "Incorrect configuration: {fmt}. Couldn't find valid command at position {pos}"
                ),
            ));
        };
        let length = match length {
            Some(n) => Some(n.parse::<usize>().map_err(|_| {
                ConfigError::new("format", format!("Length must be an integer, given: {n}"))
            })?),
            None => None,
        };
        let op = command(name, sub, length, ext)?;
        if !lit.is_empty() {
            ops.push(Op::Lit(std::mem::take(&mut lit)));
        }
        ops.push(op);
        pos += len;
    }
    if !lit.is_empty() {
        ops.push(Op::Lit(lit));
    }
    Ok(ops)
}

/// `2024-01-02T03:04:05.678Z`.
fn rfc3339_millis(t: SystemTime) -> String {
    let d = t.duration_since(SystemTime::UNIX_EPOCH).unwrap_or_default();
    let secs = d.as_secs() as i64;
    let ms = d.subsec_millis();
    let (year, month, day) = super::time_format::civil_from_days(secs.div_euclid(86400));
    let sod = secs.rem_euclid(86400);
    format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}.{ms:03}Z",
        sod / 3600,
        (sod / 60) % 60,
        sod % 60
    )
}

#[cfg(test)]
mod tests {
    use super::super::parse_grpc_status;
    use super::*;

    fn parse(f: &str) -> Result<Vec<Op>, String> {
        parse_format(f, Extensions::default()).map_err(|e| e.message)
    }

    #[test]
    fn commands_parse_as_envoy_parses_them() {
        assert!(parse("%START_TIME(%Y/%m/%d %H:%M:%S.%3f)% x").is_ok());
        assert!(parse("%REQ(X-A?X-B):10% %RESP(:STATUS)% %TRAILER(GRPC-STATUS)%").is_ok());
        assert!(parse("100%% %GRPC_STATUS(NUMBER)% %ENVIRONMENT(HOME):3%").is_ok());
        // The shortest arguments that end a command: `)` may be inside them.
        assert!(parse("%REQ(a)b)%").is_ok());
        for (f, want) in [
            ("100%", "Couldn't find valid command at position 3"),
            ("%req(x)%", "Couldn't find valid command at position 0"),
            (
                "%PROTOCOL(x)%",
                "PROTOCOL does not take any parameters or length",
            ),
            (
                "%PROTOCOL:3%",
                "PROTOCOL does not take any parameters or length",
            ),
            ("%REQ%", "REQ requires parameters"),
            (
                "%START_TIME(%s):3%",
                "START_TIME does not allow length to be specified.",
            ),
            ("%START_TIME(%Y%n)%", "Format string contains newline"),
            (
                "%GRPC_STATUS(LOWER)%",
                "only supports CAMEL_STRING, SNAKE_STRING or NUMBER",
            ),
            (
                "%REQ(A?B?C)%",
                "More than 1 alternative header specified in token: A?B?C",
            ),
            (
                "%DYNAMIC_METADATA(a:b)%",
                "Courier keeps no dynamic metadata",
            ),
            ("%FILTER_STATE(k)%", "Courier keeps no filter state"),
            (
                "%REQ_WITHOUT_QUERY(:PATH)%",
                "Not supported field in StreamInfo: REQ_WITHOUT_QUERY",
            ),
            (
                "%NO_SUCH_THING%",
                "Not supported field in StreamInfo: NO_SUCH_THING",
            ),
        ] {
            let err = parse(f).err().unwrap_or_else(|| panic!("{f} parsed"));
            assert!(err.contains(want), "{f}: {err}");
        }
        let ext = Extensions {
            req_without_query: true,
        };
        assert!(parse_format("%REQ_WITHOUT_QUERY(:PATH?X):5%", ext).is_ok());
    }

    #[test]
    fn grpc_statuses_read_as_envoy_reads_them() {
        assert_eq!(parse_grpc_status(b"0", false), Some(0));
        assert_eq!(parse_grpc_status(b"16", false), Some(16));
        assert_eq!(parse_grpc_status(b"17", false), Some(-1));
        assert_eq!(parse_grpc_status(b"17", true), Some(17));
        assert_eq!(parse_grpc_status(b"abc", true), Some(-1));
        assert_eq!(parse_grpc_status(b"", true), None);
        assert_eq!(strip_port("127.0.0.1:80"), "127.0.0.1");
        assert_eq!(strip_port("[::1]:80"), "[::1]");
        assert_eq!(strip_port("[::1]"), "[::1]");
        assert_eq!(strip_port("host"), "host");
    }
}
