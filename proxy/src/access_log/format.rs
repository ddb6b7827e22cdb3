//! Access-log formats: Envoy's command operators (`%RESPONSE_CODE%`, `%REQ(…)%`, …) and
//! the two shapes a line takes — a text template, or a JSON object whose string values
//! are templates (`json_format`): a value that is one operator keeps its type (a number
//! for `%RESPONSE_CODE%`, `null` when the value is absent), others are strings.
//! `omit_empty_values` prints an absent value as nothing in text, and drops it (and an
//! object left empty) from JSON, as Envoy does.

use std::borrow::Cow;
use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::time::SystemTime;

use courier_proto::google::protobuf::{value::Kind, Struct};
use http::HeaderMap;

use super::LogEntry;
use crate::config::ConfigError;

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
    ResponseCodeDetails,
    /// Nothing Courier does ends a connection with termination details (Envoy sets them
    /// for network filters Courier does not have): always absent.
    ConnectionTerminationDetails,
    UpstreamTransportFailureReason,
    UpstreamClusterRaw,
    AccessLogType,
    UpstreamLocalAddress,
    DownstreamLocalAddress,
    DownstreamLocalAddressNoPort,
    DownstreamLocalPort,
    DownstreamRemotePort,
    DownstreamDirectRemoteAddress,
    DownstreamDirectRemoteAddressNoPort,
    Hostname,
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

/// A header's value (`alt` when `name` is absent), cut to `max` bytes.
fn header<'a>(
    map: Option<&'a HeaderMap>,
    e: &LogEntry<'a>,
    name: &str,
    alt: &Option<String>,
    max: Option<usize>,
) -> Val<'a> {
    let get = |n: &str| -> Option<Cow<'a, str>> {
        match n {
            // Empty: a stream whose head never arrived (Envoy's `-`).
            ":method" => (!e.method.is_empty()).then_some(Cow::Borrowed(e.method)),
            ":path" => (!e.path.is_empty()).then_some(Cow::Borrowed(e.path)),
            ":authority" => (!e.authority.is_empty()).then_some(Cow::Borrowed(e.authority)),
            ":status" => Some(Cow::Owned(e.status.to_string())),
            "x-envoy-original-path" if e.original_path.is_some() => {
                e.original_path.map(Cow::Borrowed)
            }
            _ => map?.get(n)?.to_str().ok().map(Cow::Borrowed),
        }
    };
    match get(name).or_else(|| alt.as_deref().and_then(get)) {
        Some(mut v) => {
            if let Some(m) = max {
                if v.len() > m {
                    let mut cut = m;
                    while !v.is_char_boundary(cut) {
                        cut -= 1;
                    }
                    v = Cow::Owned(v[..cut].to_string());
                }
            }
            Val::Text(v)
        }
        None => Val::Absent,
    }
}

impl Op {
    fn value<'a>(&'a self, e: &LogEntry<'a>) -> Val<'a> {
        match self {
            Op::Lit(s) => Val::Text(Cow::Borrowed(s)),
            Op::StartTime => Val::Text(Cow::Owned(rfc3339_millis(e.start))),
            Op::Req(n, alt, m) => header(Some(e.request), e, n, alt, *m),
            Op::Resp(n, alt, m) => header(e.response, e, n, alt, *m),
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
            Op::ResponseCodeDetails if e.details.is_empty() => Val::Absent,
            Op::ResponseCodeDetails => Val::Text(no_whitespace(e.details)),
            Op::ConnectionTerminationDetails => Val::Absent,
            Op::UpstreamTransportFailureReason => match e.transport_failure {
                Some(r) if !r.is_empty() => Val::Text(no_whitespace(r)),
                _ => Val::Absent,
            },
            Op::AccessLogType => Val::Text(Cow::Borrowed(e.log_type.as_str_name())),
            Op::UpstreamLocalAddress => addr(e.upstream_local, SocketAddr::to_string),
            Op::DownstreamLocalAddress => addr(e.local, SocketAddr::to_string),
            Op::DownstreamLocalAddressNoPort => addr(e.local, |a| a.ip().to_string()),
            Op::DownstreamLocalPort => e
                .local
                .map_or(Val::Absent, |a| Val::Number(a.port().into())),
            Op::DownstreamRemotePort => Val::Number(e.remote.port().into()),
            Op::DownstreamDirectRemoteAddress => {
                addr(e.direct_remote.or(Some(e.remote)), SocketAddr::to_string)
            }
            Op::DownstreamDirectRemoteAddressNoPort => {
                addr(e.direct_remote.or(Some(e.remote)), |a| a.ip().to_string())
            }
            Op::Hostname => Val::Text(Cow::Borrowed(hostname())),
        }
    }
}

/// An address as the operator prints it, `-` when there is none.
fn addr<'a>(a: Option<SocketAddr>, show: fn(&SocketAddr) -> String) -> Val<'a> {
    a.map_or(Val::Absent, |a| Val::Text(Cow::Owned(show(&a))))
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
    fn compile(s: &Struct, path: &str) -> Result<JsonNode, ConfigError> {
        let mut fields = BTreeMap::new();
        for (key, value) in &s.fields {
            let at = format!("{path}.{key}");
            let node = match &value.kind {
                Some(Kind::StringValue(t)) => {
                    JsonNode::Template(Template(parse_format(t).map_err(|e| e.at(&at))?))
                }
                Some(Kind::StructValue(inner)) => JsonNode::compile(inner, &at)?,
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
        Ok(LogFormat {
            shape: Shape::Text(Template(parse_format(format)?)),
            omit_empty,
        })
    }

    /// A `json_format` at `path`.
    pub fn json(format: &Struct, omit_empty: bool, path: &str) -> Result<LogFormat, ConfigError> {
        Ok(LogFormat {
            shape: Shape::Json(JsonNode::compile(format, path)?),
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
                "RESPONSE_CODE_DETAILS" => Op::ResponseCodeDetails,
                "CONNECTION_TERMINATION_DETAILS" => Op::ConnectionTerminationDetails,
                "UPSTREAM_TRANSPORT_FAILURE_REASON" => Op::UpstreamTransportFailureReason,
                "UPSTREAM_CLUSTER_RAW" => Op::UpstreamClusterRaw,
                "ACCESS_LOG_TYPE" => Op::AccessLogType,
                "UPSTREAM_LOCAL_ADDRESS" => Op::UpstreamLocalAddress,
                "DOWNSTREAM_LOCAL_ADDRESS" => Op::DownstreamLocalAddress,
                "DOWNSTREAM_LOCAL_ADDRESS_WITHOUT_PORT" => Op::DownstreamLocalAddressNoPort,
                "DOWNSTREAM_LOCAL_PORT" => Op::DownstreamLocalPort,
                "DOWNSTREAM_REMOTE_PORT" => Op::DownstreamRemotePort,
                "DOWNSTREAM_DIRECT_REMOTE_ADDRESS" => Op::DownstreamDirectRemoteAddress,
                "DOWNSTREAM_DIRECT_REMOTE_ADDRESS_WITHOUT_PORT" => {
                    Op::DownstreamDirectRemoteAddressNoPort
                }
                "HOSTNAME" => Op::Hostname,
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
