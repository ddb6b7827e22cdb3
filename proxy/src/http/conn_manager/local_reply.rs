//! Local replies as Envoy sends them: the plain-text form, its gRPC form for gRPC
//! requests, the connection manager's `server` and `via`, and Envoy's reply bodies.

use bytes::Bytes;
use http::header::{self, HeaderName, HeaderValue};
use http::{Response, StatusCode};

use crate::http::codec::body::ProxyBody;
use crate::http::conn_manager::headers::decimal_value;

/// Envoy's body for an upstream connection failure.
pub const UPSTREAM_CONNECT_ERROR: &str =
    "upstream connect error or disconnect/reset before headers. reset reason: remote connection failure";
/// Envoy's body for a reset before response headers.
pub const UPSTREAM_RESET: &str =
    "upstream connect error or disconnect/reset before headers. reset reason: connection termination";
/// Envoy's body when a route's `max_stream_duration` ends before the response.
pub const DURATION_TIMEOUT: &str = "downstream duration timeout";
/// `grpc-timeout`.
pub(crate) const GRPC_TIMEOUT: HeaderName = HeaderName::from_static("grpc-timeout");
/// Envoy's body for a stream an HTTP/2 upstream refused (`REFUSED_STREAM`, a `503`).
pub const UPSTREAM_REFUSED: &str =
    "upstream connect error or disconnect/reset before headers. reset reason: remote refused stream reset";
/// Envoy's body for a stream reset for its response head (a `503`).
pub const UPSTREAM_REMOTE_RESET: &str =
    "upstream connect error or disconnect/reset before headers. reset reason: remote reset";
/// Envoy's body for an upstream response that broke HTTP/1.1 (a `502`).
pub const UPSTREAM_PROTOCOL_ERROR: &str =
    "upstream connect error or disconnect/reset before headers. reset reason: protocol error";
/// Envoy's body for a circuit-breaker overflow.
pub const UPSTREAM_OVERFLOW: &str =
    "upstream connect error or disconnect/reset before headers. reset reason: overflow";
/// Envoy's body when no host is healthy.
pub const NO_HEALTHY_UPSTREAM: &str = "no healthy upstream";
/// Envoy's body for a route timeout.
pub const UPSTREAM_TIMEOUT: &str = "upstream request timeout";

/// A local reply as Envoy sends it (`content-type: text/plain` when there is a body).
pub fn local_reply(status: StatusCode, body: &str) -> Response<ProxyBody> {
    local_reply_bytes(status, Bytes::copy_from_slice(body.as_bytes()))
}

/// [`local_reply`] with a body a service gave (an authorization denial's, a rate limit
/// service's), which may not be text.
pub fn local_reply_bytes(status: StatusCode, body: Bytes) -> Response<ProxyBody> {
    let len = body.len();
    let mut r = Response::new(ProxyBody::full(body));
    *r.status_mut() = status;
    r.extensions_mut().insert(LocalReply(None));
    if len > 0 {
        r.headers_mut()
            .insert(header::CONTENT_TYPE, HeaderValue::from_static("text/plain"));
    }
    r.headers_mut()
        .insert(header::CONTENT_LENGTH, HeaderValue::from(len));
    r
}

/// Marks a response the proxy made itself (a gRPC request gets it in gRPC's form), with
/// the `grpc-status` it then carries when that is not the HTTP status's.
#[derive(Clone, Copy)]
pub(crate) struct LocalReply(pub(crate) Option<u32>);

/// Gives a local reply, in its gRPC form, this `grpc-status` rather than the HTTP
/// status's.
pub(crate) fn set_grpc_status(resp: &mut Response<ProxyBody>, status: u32) {
    resp.extensions_mut().insert(LocalReply(Some(status)));
}

/// A local reply to a gRPC request in gRPC's form, as Envoy sends it: `200`,
/// `content-type: application/grpc`, the HTTP status mapped to a `grpc-status` (gRPC's
/// table), the body as a percent-encoded `grpc-message`, and no body.
pub(crate) fn grpc_local_reply(resp: &mut Response<ProxyBody>, grpc_status: Option<u32>) {
    let grpc_status = grpc_status
        .unwrap_or_else(|| crate::protocol::grpc::http_to_grpc_status(resp.status().as_u16()));
    let message = resp.body().bytes().unwrap_or_default();
    *resp.status_mut() = StatusCode::OK;
    *resp.body_mut() = ProxyBody::empty();
    let headers = resp.headers_mut();
    headers.remove(header::CONTENT_LENGTH);
    headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/grpc"),
    );
    headers.insert("grpc-status", decimal_value(grpc_status.into()));
    if !message.is_empty() {
        // gRPC's percent-encoding: everything outside printable ASCII, and `%`.
        const GRPC_MESSAGE: &percent_encoding::AsciiSet = &percent_encoding::CONTROLS.add(b'%');
        let encoded = percent_encoding::percent_encode(&message, GRPC_MESSAGE).to_string();
        if let Ok(v) = HeaderValue::from_str(&encoded) {
            headers.insert("grpc-message", v);
        }
    }
}

pub(crate) use crate::protocol::grpc::is_grpc;
