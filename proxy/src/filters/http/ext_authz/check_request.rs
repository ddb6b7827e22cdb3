//! What the authorization service is told of a request (`envoy.service.auth.v3`'s
//! `AttributeContext`): its peers, its HTTP attributes and the route's context
//! extensions. The gRPC service gets it whole; the HTTP service sends its headers on.

use std::collections::HashMap;
use std::net::SocketAddr;

use bytes::Bytes;
use courier_proto::envoy::config::core::v3 as core;
use courier_proto::envoy::service::auth::v3::attribute_context::{
    HttpRequest, Peer, Request, TlsSession,
};
use courier_proto::envoy::service::auth::v3::{AttributeContext, CheckRequest};

use crate::http::route::StrMatch;
use crate::transport_socket::tls::TlsConnectionInfo;

/// What the filter reads of a request and its connection.
pub struct CheckView<'a> {
    /// The request's method.
    pub method: &'a str,
    /// Its path, with the query.
    pub path: &'a str,
    /// Its authority.
    pub authority: &'a str,
    /// Its scheme.
    pub scheme: &'a str,
    /// `HTTP/1.1`, `HTTP/2`.
    pub protocol: &'a str,
    /// Its header fields (pseudo-headers apart).
    pub headers: &'a http::HeaderMap,
    /// The connection's peer.
    pub remote: SocketAddr,
    /// The connection's local address.
    pub local: SocketAddr,
    /// What the TLS handshake settled, on a TLS connection.
    pub tls: Option<&'a TlsConnectionInfo>,
    /// The SNI the client sent.
    pub server_name: Option<&'a str>,
    /// The stream's id.
    pub stream_id: u64,
}

/// Which request headers the service sees (`allowed_headers`, `disallowed_headers`).
pub struct HeaderFilter {
    /// Only these, when set (pseudo-headers included).
    pub allowed: Option<Vec<StrMatch>>,
    /// Never these.
    pub disallowed: Vec<StrMatch>,
}

impl HeaderFilter {
    /// Whether the service sees the header `name`.
    pub fn passes(&self, name: &str) -> bool {
        if self.disallowed.iter().any(|m| m.matches(name)) {
            return false;
        }
        self.allowed
            .as_ref()
            .is_none_or(|allowed| allowed.iter().any(|m| m.matches(name)))
    }
}

/// The field telling the service whether the body it got was cut.
pub const PARTIAL_BODY: &str = "x-envoy-auth-partial-body";

/// The request's header fields as the service gets them: pseudo-headers first (as
/// Envoy's header map holds them), lowercase names, a repeated field's values joined with
/// `,`; with a held body, whether it was cut (`partial`).
pub fn headers(
    view: &CheckView<'_>,
    filter: &HeaderFilter,
    partial: Option<bool>,
) -> Vec<(String, String)> {
    let mut out: Vec<(String, String)> = Vec::with_capacity(view.headers.keys_len() + 4);
    for (name, value) in [
        (":authority", view.authority),
        (":path", view.path),
        (":method", view.method),
        (":scheme", view.scheme),
    ] {
        if filter.passes(name) {
            out.push((name.to_owned(), value.to_owned()));
        }
    }
    for name in view.headers.keys() {
        // HTTP/1.1's `host` is `:authority` here, as in Envoy's header map.
        if name == http::header::HOST || !filter.passes(name.as_str()) {
            continue;
        }
        let mut joined = String::new();
        for (i, v) in view.headers.get_all(name).iter().enumerate() {
            if i > 0 {
                joined.push(',');
            }
            joined.push_str(&String::from_utf8_lossy(v.as_bytes()));
        }
        out.push((name.as_str().to_owned(), joined));
    }
    if let Some(partial) = partial {
        out.push((PARTIAL_BODY.to_owned(), partial.to_string()));
    }
    out
}

/// The body the service gets (`with_request_body`).
pub struct CheckBody<'a> {
    /// The bytes buffered (at most `max_request_bytes`).
    pub bytes: &'a Bytes,
    /// As `raw_body` rather than `body`.
    pub pack_as_bytes: bool,
    /// Whether it was cut at `max_request_bytes`.
    pub partial: bool,
}

/// What a `CheckRequest` carries besides the request itself.
pub struct CheckExtras<'a> {
    /// The route's context extensions.
    pub context_extensions: HashMap<String, String>,
    /// Headers as `header_map` (`encode_raw_headers`) rather than `headers`.
    pub raw_headers: bool,
    /// The peer's certificate, URL-encoded PEM (`include_peer_certificate`).
    pub peer_certificate: bool,
    /// The TLS session's SNI (`include_tls_session`).
    pub tls_session: bool,
    /// The buffered body.
    pub body: Option<CheckBody<'a>>,
}

fn peer(addr: SocketAddr, principal: String, certificate: String) -> Peer {
    Peer {
        address: Some(core::Address {
            address: Some(core::address::Address::SocketAddress(core::SocketAddress {
                address: addr.ip().to_string(),
                port_specifier: Some(core::socket_address::PortSpecifier::PortValue(u32::from(
                    addr.port(),
                ))),
                ..Default::default()
            })),
        }),
        principal,
        certificate,
        ..Default::default()
    }
}

/// The `CheckRequest` for a request.
pub fn build(view: &CheckView<'_>, filter: &HeaderFilter, extras: CheckExtras<'_>) -> CheckRequest {
    let peer_cert = view.tls.and_then(|t| t.peer.as_ref());
    let source_principal = peer_cert.map_or_else(String::new, |p| {
        p.names
            .uri_sans
            .first()
            .cloned()
            .unwrap_or_else(|| p.names.subject.clone())
    });
    let certificate = if extras.peer_certificate {
        peer_cert
            .and_then(|p| p.pem_url_encoded.clone())
            .unwrap_or_default()
    } else {
        String::new()
    };
    let local_principal = view
        .tls
        .and_then(|t| t.local_uri_sans.first().cloned())
        .unwrap_or_default();
    let fields = headers(view, filter, extras.body.as_ref().map(|b| b.partial));
    let mut http = HttpRequest {
        id: view.stream_id.to_string(),
        method: view.method.to_owned(),
        path: view.path.to_owned(),
        host: view.authority.to_owned(),
        scheme: view.scheme.to_owned(),
        protocol: view.protocol.to_owned(),
        // As Envoy, the bytes received so far: the held body's, else none yet.
        size: extras
            .body
            .as_ref()
            .map_or(0, |b| i64::try_from(b.bytes.len()).unwrap_or(i64::MAX)),
        ..Default::default()
    };
    if extras.raw_headers {
        http.header_map = Some(core::HeaderMap {
            headers: fields
                .into_iter()
                .map(|(key, value)| core::HeaderValue {
                    key,
                    raw_value: value.into_bytes(),
                    ..Default::default()
                })
                .collect(),
        });
    } else {
        http.headers = fields.into_iter().collect();
    }
    if let Some(body) = extras.body {
        if body.pack_as_bytes {
            http.raw_body = body.bytes.to_vec();
        } else {
            http.body = String::from_utf8_lossy(body.bytes).into_owned();
        }
    }
    let tls_session = (extras.tls_session && view.tls.is_some()).then(|| TlsSession {
        sni: view.server_name.unwrap_or_default().to_owned(),
    });
    CheckRequest {
        attributes: Some(AttributeContext {
            source: Some(peer(view.remote, source_principal, certificate)),
            destination: Some(peer(view.local, local_principal, String::new())),
            request: Some(Request {
                time: Some(now()),
                http: Some(http),
            }),
            context_extensions: extras.context_extensions,
            tls_session,
            ..Default::default()
        }),
    }
}

fn now() -> courier_proto::google::protobuf::Timestamp {
    let d = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default();
    courier_proto::google::protobuf::Timestamp {
        seconds: i64::try_from(d.as_secs()).unwrap_or(i64::MAX),
        nanos: i32::try_from(d.subsec_nanos()).unwrap_or(0),
    }
}
