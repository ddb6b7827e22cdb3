//! The data inputs a matcher reads (`TypedExtensionConfig`s naming Envoy's common inputs),
//! and what a connection or request offers them ([`MatchingData`]).
//!
//! Values are Envoy's: addresses without port, ports in decimal, `local` for a source on
//! this host, the SNI, `tls`/`raw_buffer`, the ALPN list joined with `,`, a peer
//! certificate's URI or DNS SANs joined with `,` or its subject, a request header's
//! values joined with `,`. An input with nothing to read (no SNI, no TLS, no such header)
//! has no value, and a predicate on it does not match.

use std::borrow::Cow;
use std::net::SocketAddr;

use courier_proto::xds::core::v3::TypedExtensionConfig;
use http::{HeaderMap, HeaderName};

use crate::config::ConfigError;
use crate::transport_socket::tls::TlsConnectionInfo;

/// Where a matcher runs: which inputs it may read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Context {
    /// A connection (network RBAC): network and TLS inputs.
    Network,
    /// A request (HTTP RBAC): those and the request's headers.
    HttpRequest,
    /// A response (custom_response): the response's status and headers.
    HttpResponse,
}

/// A compiled data input.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Input {
    /// `SourceIPInput`: the client's address (for a request, as the connection manager
    /// works it out).
    SourceIp,
    /// `SourcePortInput`.
    SourcePort,
    /// `DirectSourceIPInput`: the peer's address.
    DirectSourceIp,
    /// `DestinationIPInput`: the connection's local address.
    DestinationIp,
    /// `DestinationPortInput`.
    DestinationPort,
    /// `SourceTypeInput`: `local` when the client is on this host.
    SourceType,
    /// `ServerNameInput`: the SNI.
    ServerName,
    /// `TransportProtocolInput`.
    TransportProtocol,
    /// `ApplicationProtocolInput`: the ALPN protocols the client offered.
    ApplicationProtocol,
    /// `UriSanInput`.
    UriSan,
    /// `DnsSanInput`.
    DnsSan,
    /// `SubjectInput`.
    Subject,
    /// `HttpRequestHeaderMatchInput` (lowercase; a pseudo-header's name starts with `:`).
    RequestHeader(String),
    /// `HttpResponseStatusCodeMatchInput`: the status in decimal.
    ResponseStatus,
    /// `HttpResponseStatusCodeClassMatchInput`: `1xx` to `5xx`.
    ResponseStatusClass,
    /// `HttpResponseHeaderMatchInput` (lowercase).
    ResponseHeader(String),
}

const NETWORK: &str = "envoy.extensions.matching.common_inputs.network.v3.";
const SSL: &str = "envoy.extensions.matching.common_inputs.ssl.v3.";

impl Input {
    /// Compiles the input at `path` for `context`; inputs Courier does not read, or that
    /// `context` has no data for, are refused by type.
    pub fn compile(
        c: Option<&TypedExtensionConfig>,
        context: Context,
        path: &str,
    ) -> Result<Input, ConfigError> {
        let Some(any) = c.and_then(|c| c.typed_config.as_ref()) else {
            return Err(ConfigError::new(path, "input is required"));
        };
        let ty = courier_proto::type_url::message_name(&any.type_url);
        let at = format!("{path}.typed_config");
        let input = match ty {
            t if t.starts_with(NETWORK) => match &t[NETWORK.len()..] {
                "SourceIPInput" => Input::SourceIp,
                "SourcePortInput" => Input::SourcePort,
                "DirectSourceIPInput" => Input::DirectSourceIp,
                "DestinationIPInput" => Input::DestinationIp,
                "DestinationPortInput" => Input::DestinationPort,
                "SourceTypeInput" => Input::SourceType,
                "ServerNameInput" => Input::ServerName,
                "TransportProtocolInput" => Input::TransportProtocol,
                "ApplicationProtocolInput" => Input::ApplicationProtocol,
                _ => return Err(ConfigError::unsupported(format!("{at} ({ty})"))),
            },
            t if t.starts_with(SSL) => match &t[SSL.len()..] {
                "UriSanInput" => Input::UriSan,
                "DnsSanInput" => Input::DnsSan,
                "SubjectInput" => Input::Subject,
                _ => return Err(ConfigError::unsupported(format!("{at} ({ty})"))),
            },
            "envoy.type.matcher.v3.HttpResponseStatusCodeMatchInput"
                if context == Context::HttpResponse =>
            {
                Input::ResponseStatus
            }
            "envoy.type.matcher.v3.HttpResponseStatusCodeClassMatchInput"
                if context == Context::HttpResponse =>
            {
                Input::ResponseStatusClass
            }
            "envoy.type.matcher.v3.HttpResponseHeaderMatchInput"
                if context == Context::HttpResponse =>
            {
                let h: courier_proto::envoy::r#type::matcher::v3::HttpResponseHeaderMatchInput =
                    courier_proto::unpack_any(any)
                        .map_err(|e| ConfigError::new(&at, e.to_string()))?;
                let name = h.header_name.to_ascii_lowercase();
                if HeaderName::from_bytes(name.as_bytes()).is_err() {
                    return Err(ConfigError::new(
                        format!("{at}.header_name"),
                        format!("invalid header name: {:?}", h.header_name),
                    ));
                }
                Input::ResponseHeader(name)
            }
            // A response matcher has no request (Envoy's custom_response matches on the
            // response's data only).
            _ if context == Context::HttpResponse => {
                return Err(ConfigError::unsupported(format!("{at} ({ty})")))
            }
            "envoy.type.matcher.v3.HttpRequestHeaderMatchInput" => {
                if context != Context::HttpRequest {
                    return Err(ConfigError::new(
                        at,
                        format!("requirement violation while creating match tree: INVALID_ARGUMENT: Unsupported data input type: {ty}"),
                    ));
                }
                let h: courier_proto::envoy::r#type::matcher::v3::HttpRequestHeaderMatchInput =
                    courier_proto::unpack_any(any)
                        .map_err(|e| ConfigError::new(&at, e.to_string()))?;
                let name = h.header_name.to_ascii_lowercase();
                let plain = name.strip_prefix(':').unwrap_or(&name);
                if HeaderName::from_bytes(plain.as_bytes()).is_err() {
                    return Err(ConfigError::new(
                        format!("{at}.header_name"),
                        format!("invalid header name: {:?}", h.header_name),
                    ));
                }
                Input::RequestHeader(name)
            }
            _ => {
                return Err(ConfigError::new(
                    at,
                    format!("requirement violation while creating match tree: INVALID_ARGUMENT: Unsupported data input type: {ty}"),
                ))
            }
        };
        Ok(input)
    }
}

/// What a connection (and a request on it) offers the inputs.
pub struct MatchingData<'a> {
    /// The client's address (after a PROXY protocol header; for a request, the one the
    /// connection manager works out from `x-forwarded-for`).
    pub source: SocketAddr,
    /// The peer's address.
    pub direct_source: SocketAddr,
    /// The connection's local address.
    pub destination: SocketAddr,
    /// The SNI.
    pub server_name: Option<&'a str>,
    /// What the TLS handshake settled (`None`: plaintext, or not yet handshaken).
    pub tls: Option<&'a TlsConnectionInfo>,
    /// What the listener's TLS inspector found (`tls`, `raw_buffer`) before any
    /// handshake, when a listener picks a filter chain; else told by `tls`.
    pub transport_protocol: Option<&'a str>,
    /// The ALPN protocols the client offered.
    pub application_protocols: &'a [String],
    /// The request's headers, pseudo-headers included where Envoy has them (`:path`,
    /// `:method`, `:authority`, `:scheme`); `None` on a connection.
    pub request_headers: Option<&'a HeaderMap>,
    /// The request's pseudo-headers.
    pub pseudo: Option<crate::http::route::Pseudo<'a>>,
    /// The response's status and headers; `None` before there is one.
    pub response: Option<(http::StatusCode, &'a HeaderMap)>,
}

impl MatchingData<'_> {
    /// `input`'s value, if it has one.
    pub fn value(&self, input: &Input) -> Option<Cow<'_, str>> {
        let names = || self.tls.and_then(|t| t.peer.as_ref()).map(|p| &p.names);
        let joined = |v: &[String]| (!v.is_empty()).then(|| Cow::Owned(v.join(",")));
        match input {
            Input::SourceIp => Some(Cow::Owned(self.source.ip().to_string())),
            Input::SourcePort => Some(Cow::Owned(self.source.port().to_string())),
            Input::DirectSourceIp => Some(Cow::Owned(self.direct_source.ip().to_string())),
            Input::DestinationIp => Some(Cow::Owned(self.destination.ip().to_string())),
            Input::DestinationPort => Some(Cow::Owned(self.destination.port().to_string())),
            Input::SourceType => {
                let ip = self.source.ip();
                (ip.is_loopback() || ip == self.destination.ip()).then_some(Cow::Borrowed("local"))
            }
            Input::ServerName => self
                .server_name
                .filter(|s| !s.is_empty())
                .map(Cow::Borrowed),
            Input::TransportProtocol => Some(Cow::Borrowed(match self.transport_protocol {
                Some(p) => p,
                None if self.tls.is_some() => "tls",
                None => "raw_buffer",
            })),
            Input::ApplicationProtocol => joined(self.application_protocols),
            Input::UriSan => names().and_then(|n| joined(&n.uri_sans)),
            Input::DnsSan => names().and_then(|n| joined(&n.dns_sans)),
            Input::Subject => names()
                .map(|n| n.subject.as_str())
                .filter(|s| !s.is_empty())
                .map(Cow::Borrowed),
            Input::ResponseStatus => self
                .response
                .as_ref()
                .map(|(s, _)| Cow::Borrowed(s.as_str())),
            Input::ResponseStatusClass => self.response.and_then(|(s, _)| {
                const CLASSES: [&str; 5] = ["1xx", "2xx", "3xx", "4xx", "5xx"];
                CLASSES
                    .get((s.as_u16() / 100).checked_sub(1)? as usize)
                    .map(|c| Cow::Borrowed(*c))
            }),
            Input::ResponseHeader(name) => joined_header(self.response?.1, name),
            Input::RequestHeader(name) => {
                if let Some(p) = self.pseudo.as_ref() {
                    let pseudo = match name.as_str() {
                        ":path" => p.path,
                        ":method" => p.method,
                        ":authority" => p.authority,
                        ":scheme" => p.scheme,
                        _ => None,
                    };
                    if let Some(v) = pseudo {
                        return Some(Cow::Borrowed(v));
                    }
                }
                if name.starts_with(':') {
                    return None;
                }
                joined_header(self.request_headers?, name)
            }
        }
    }
}

/// A header's values joined with `,`, as Envoy's header inputs read them.
fn joined_header<'h>(headers: &'h HeaderMap, name: &str) -> Option<Cow<'h, str>> {
    let mut values = headers.get_all(name).iter();
    let first = values.next()?;
    let first = String::from_utf8_lossy(first.as_bytes());
    match values.next() {
        None => Some(first),
        Some(second) => {
            let mut all = first.into_owned();
            for v in std::iter::once(second).chain(values) {
                all.push(',');
                all.push_str(&String::from_utf8_lossy(v.as_bytes()));
            }
            Some(Cow::Owned(all))
        }
    }
}
