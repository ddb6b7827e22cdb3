//! Header mutations (`request_headers_to_add/remove`, `response_headers_to_add/remove`) of a
//! route, virtual host or route configuration (and the connection manager's and filters'
//! own), with Envoy's value formatting (`%DOWNSTREAM_REMOTE_ADDRESS%` and the like).

use courier_proto::envoy::config::core::v3::{
    header_value_option::HeaderAppendAction, HeaderValueOption,
};
use http::header::{HeaderMap, HeaderName, HeaderValue};

use crate::config::ConfigError;

/// How a header value is added.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AppendAction {
    /// `APPEND_IF_EXISTS_OR_ADD` (and `append: true`).
    Append,
    /// `ADD_IF_ABSENT`.
    AddIfAbsent,
    /// `OVERWRITE_IF_EXISTS_OR_ADD` (and `append: false`).
    Overwrite,
    /// `OVERWRITE_IF_EXISTS`.
    OverwriteIfExists,
}

/// One value piece: literal text or a `%COMMAND%` substituted per request.
#[derive(Debug, Clone)]
enum Part {
    Literal(String),
    DownstreamRemoteAddress,
    DownstreamRemoteAddressNoPort,
    DownstreamLocalAddress,
    DownstreamLocalAddressNoPort,
    Protocol,
    UpstreamRemoteAddress,
    RequestHeader(HeaderName),
    /// `%START_TIME%`, `%START_TIME(<format>)%`, `%START_TIME_LOCAL…%`: the request's
    /// start.
    StartTime(Box<crate::access_log::time_format::TimeFormat>),
}

/// A header value with Envoy's `%...%` substitutions.
#[derive(Debug, Clone)]
pub struct ValueFormat {
    parts: Vec<Part>,
    literal: Option<HeaderValue>,
}

/// What substitutions can read.
#[derive(Default)]
pub struct FormatContext<'a> {
    /// Client address.
    pub remote: Option<std::net::SocketAddr>,
    /// Local (listener) address.
    pub local: Option<std::net::SocketAddr>,
    /// `HTTP/1.1`, `HTTP/2`.
    pub protocol: &'a str,
    /// Upstream host address, once picked.
    pub upstream: Option<std::net::SocketAddr>,
    /// Request headers.
    pub request: Option<&'a HeaderMap>,
    /// When the request started (`None`: the time the value is made).
    pub start: Option<std::time::SystemTime>,
}

impl ValueFormat {
    /// Parses `value`; unknown `%COMMANDS%` are rejected like Envoy does.
    pub fn parse(value: &str, path: &str) -> Result<ValueFormat, ConfigError> {
        let mut parts = Vec::new();
        let mut lit = String::new();
        let mut rest = value;
        while let Some(i) = rest.find('%') {
            lit.push_str(&rest[..i]);
            let after = &rest[i + 1..];
            if let Some(stripped) = after.strip_prefix('%') {
                lit.push('%');
                rest = stripped;
                continue;
            }
            // A time format holds `%`s of its own: the command ends at `)%`.
            let end = if after.starts_with("START_TIME(") || after.starts_with("START_TIME_LOCAL(")
            {
                after.find(")%").map(|i| i + 1)
            } else {
                after.find('%')
            };
            let Some(end) = end else {
                return Err(ConfigError::new(
                    path,
                    format!(
                        "Invalid header configuration. Un-terminated variable expression '{after}'"
                    ),
                ));
            };
            let cmd = &after[..end];
            let part = match cmd {
                "DOWNSTREAM_REMOTE_ADDRESS" => Part::DownstreamRemoteAddress,
                "DOWNSTREAM_REMOTE_ADDRESS_WITHOUT_PORT" => Part::DownstreamRemoteAddressNoPort,
                "DOWNSTREAM_LOCAL_ADDRESS" => Part::DownstreamLocalAddress,
                "DOWNSTREAM_LOCAL_ADDRESS_WITHOUT_PORT" => Part::DownstreamLocalAddressNoPort,
                "PROTOCOL" => Part::Protocol,
                "UPSTREAM_REMOTE_ADDRESS" => Part::UpstreamRemoteAddress,
                "START_TIME" => Part::StartTime(Box::new(
                    crate::access_log::time_format::TimeFormat::new("%Y-%m-%dT%H:%M:%E3SZ", false),
                )),
                "START_TIME_LOCAL" => Part::StartTime(Box::new(
                    crate::access_log::time_format::TimeFormat::new("%Y-%m-%dT%H:%M:%E3S%z", true),
                )),
                c if (c.starts_with("START_TIME(") || c.starts_with("START_TIME_LOCAL("))
                    && c.ends_with(')') =>
                {
                    let local = c.starts_with("START_TIME_LOCAL(");
                    let open = c.find('(').unwrap_or(0);
                    let format = &c[open + 1..c.len() - 1];
                    Part::StartTime(Box::new(crate::access_log::time_format::TimeFormat::new(
                        format, local,
                    )))
                }
                c if c.starts_with("REQ(") && c.ends_with(')') => {
                    let name = &c[4..c.len() - 1];
                    let name = name.split('?').next().unwrap_or(name);
                    Part::RequestHeader(HeaderName::from_bytes(name.as_bytes()).map_err(|_| {
                        ConfigError::new(path, format!("invalid header name in %{c}%"))
                    })?)
                }
                _ => {
                    return Err(ConfigError::new(
                        path,
                        format!("Invalid header configuration. Format string contains unsupported command '%{cmd}%'"),
                    ))
                }
            };
            if !lit.is_empty() {
                parts.push(Part::Literal(std::mem::take(&mut lit)));
            }
            parts.push(part);
            rest = &after[end + 1..];
        }
        lit.push_str(rest);
        if !lit.is_empty() {
            parts.push(Part::Literal(lit));
        }
        let literal = match parts.as_slice() {
            [] => Some(HeaderValue::from_static("")),
            [Part::Literal(s)] => Some(
                HeaderValue::from_str(s)
                    .map_err(|_| ConfigError::new(path, "invalid header value"))?,
            ),
            _ => None,
        };
        Ok(ValueFormat { parts, literal })
    }

    /// The value for one request.
    pub fn render(&self, cx: &FormatContext<'_>) -> Option<HeaderValue> {
        if let Some(v) = &self.literal {
            return Some(v.clone());
        }
        let mut out = String::new();
        for p in &self.parts {
            match p {
                Part::Literal(s) => out.push_str(s),
                Part::DownstreamRemoteAddress => {
                    if let Some(a) = cx.remote {
                        out.push_str(&a.to_string())
                    }
                }
                Part::DownstreamRemoteAddressNoPort => {
                    if let Some(a) = cx.remote {
                        out.push_str(&a.ip().to_string())
                    }
                }
                Part::DownstreamLocalAddress => {
                    if let Some(a) = cx.local {
                        out.push_str(&a.to_string())
                    }
                }
                Part::DownstreamLocalAddressNoPort => {
                    if let Some(a) = cx.local {
                        out.push_str(&a.ip().to_string())
                    }
                }
                Part::Protocol => out.push_str(cx.protocol),
                Part::UpstreamRemoteAddress => {
                    if let Some(a) = cx.upstream {
                        out.push_str(&a.to_string())
                    }
                }
                Part::StartTime(f) => {
                    out.push_str(&f.format(cx.start.unwrap_or_else(std::time::SystemTime::now)))
                }
                Part::RequestHeader(h) => {
                    if let Some(v) = cx
                        .request
                        .and_then(|r| r.get(h))
                        .and_then(|v| v.to_str().ok())
                    {
                        out.push_str(v)
                    }
                }
            }
        }
        HeaderValue::from_str(&out).ok()
    }
}

/// One header to add.
#[derive(Debug, Clone)]
pub struct HeaderAdd {
    name: HeaderName,
    value: ValueFormat,
    action: AppendAction,
    keep_empty: bool,
}

/// Headers to add and remove at one level (route, virtual host, route configuration).
#[derive(Debug, Clone, Default)]
pub struct HeaderMutations {
    add: Vec<HeaderAdd>,
    remove: Vec<HeaderName>,
}

fn invalid_name(name: &str) -> bool {
    // Pseudo-headers and `host` may not be mutated (Envoy rejects them in config).
    name.starts_with(':') || name.eq_ignore_ascii_case("host")
}

impl HeaderMutations {
    /// Compiles `*_headers_to_add` and `*_headers_to_remove`.
    pub fn compile(
        add: &[HeaderValueOption],
        remove: &[String],
        add_path: &str,
        remove_path: &str,
    ) -> Result<HeaderMutations, ConfigError> {
        let mut out = HeaderMutations::default();
        for (i, opt) in add.iter().enumerate() {
            let path = format!("{add_path}[{i}]");
            let Some(h) = &opt.header else {
                return Err(ConfigError::new(path, "header is required"));
            };
            if h.key.is_empty() || invalid_name(&h.key) {
                return Err(ConfigError::new(
                    format!("{path}.header.key"),
                    format!("invalid header name '{}'", h.key),
                ));
            }
            let name = HeaderName::from_bytes(h.key.as_bytes()).map_err(|_| {
                ConfigError::new(
                    format!("{path}.header.key"),
                    format!("invalid header name '{}'", h.key),
                )
            })?;
            let raw = if h.raw_value.is_empty() {
                h.value.clone()
            } else {
                String::from_utf8(h.raw_value.clone()).map_err(|_| {
                    ConfigError::new(format!("{path}.header.raw_value"), "not UTF-8")
                })?
            };
            let value = ValueFormat::parse(&raw, &format!("{path}.header.value"))?;
            #[allow(deprecated)]
            let action = match &opt.append {
                Some(b) if b.value => AppendAction::Append,
                Some(_) => AppendAction::Overwrite,
                None => match HeaderAppendAction::try_from(opt.append_action) {
                    Ok(HeaderAppendAction::AppendIfExistsOrAdd) => AppendAction::Append,
                    Ok(HeaderAppendAction::AddIfAbsent) => AppendAction::AddIfAbsent,
                    Ok(HeaderAppendAction::OverwriteIfExistsOrAdd) => AppendAction::Overwrite,
                    Ok(HeaderAppendAction::OverwriteIfExists) => AppendAction::OverwriteIfExists,
                    Err(_) => {
                        return Err(ConfigError::new(
                            format!("{path}.append_action"),
                            "unknown append action",
                        ))
                    }
                },
            };
            out.add.push(HeaderAdd {
                name,
                value,
                action,
                keep_empty: opt.keep_empty_value,
            });
        }
        for (i, name) in remove.iter().enumerate() {
            let path = format!("{remove_path}[{i}]");
            if name.is_empty() || invalid_name(name) {
                return Err(ConfigError::new(
                    path,
                    format!("invalid header name '{name}'"),
                ));
            }
            out.remove
                .push(HeaderName::from_bytes(name.as_bytes()).map_err(|_| {
                    ConfigError::new(path, format!("invalid header name '{name}'"))
                })?);
        }
        Ok(out)
    }

    /// Whether a value reads request headers (`%REQ(...)%`), so the request's headers
    /// must be kept for it after they were handed upstream.
    pub fn reads_request_headers(&self) -> bool {
        self.add.iter().any(|a| {
            a.value
                .parts
                .iter()
                .any(|p| matches!(p, Part::RequestHeader(_)))
        })
    }

    /// Whether there is nothing to do.
    pub fn is_empty(&self) -> bool {
        self.add.is_empty() && self.remove.is_empty()
    }

    /// Applies removals then additions to `headers`.
    pub fn apply(&self, headers: &mut HeaderMap, cx: &FormatContext<'_>) {
        for name in &self.remove {
            headers.remove(name);
        }
        for a in &self.add {
            let Some(v) = a.value.render(cx) else {
                continue;
            };
            if v.is_empty() && !a.keep_empty {
                continue;
            }
            match a.action {
                AppendAction::Append => {
                    headers.append(a.name.clone(), v);
                }
                AppendAction::AddIfAbsent => {
                    if !headers.contains_key(&a.name) {
                        headers.insert(a.name.clone(), v);
                    }
                }
                AppendAction::Overwrite => {
                    headers.insert(a.name.clone(), v);
                }
                AppendAction::OverwriteIfExists => {
                    if headers.contains_key(&a.name) {
                        headers.insert(a.name.clone(), v);
                    }
                }
            }
        }
    }
}
