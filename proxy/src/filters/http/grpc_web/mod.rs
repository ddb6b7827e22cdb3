//! The gRPC-Web filter (`envoy.filters.http.grpc_web`): a browser's gRPC-Web request goes
//! upstream as gRPC, and its gRPC response comes back as gRPC-Web.
//!
//! As Envoy 1.40 (`grpc_web_filter.cc`; measured, `tests/http_grpc_web.rs`):
//!
//! - Only a request whose `content-type` is exactly `application/grpc-web`,
//!   `application/grpc-web+proto`, `application/grpc-web-text` or
//!   `application/grpc-web-text+proto` is touched. It loses its `content-length`, gets
//!   `content-type: application/grpc`, `te: trailers`, and `grpc-accept-encoding:
//!   identity` when it has none; `x-grpc-web` and `x-user-agent` go on as they are. A
//!   `-text` body is base64: it is decoded as it streams, a partial quad held for the
//!   next chunk; a body whose length is not a multiple of 4 at its end, or that does not
//!   decode, is answered `400` `Bad gRPC-web request, invalid base64 data.`
//!   (`grpc_base_64_decode_failed_bad_size`, `grpc_base_64_decode_failed`), which then
//!   takes gRPC-Web's form below.
//! - The response loses its `content-length` and gets `content-type:
//!   application/grpc-web-text+proto` when the request's `accept` was a `-text` type,
//!   else `application/grpc-web+proto`. A gRPC response (a `200` of gRPC's
//!   content-type, or a headers-only one with `grpc-status`) or one already gRPC-Web
//!   goes on framed as it came; its trailers become the body's last frame (flags `0x80`,
//!   `name:value\r\n` each). A `-text` response has each whole frame base64-encoded on
//!   its own (a partial frame waits for the next chunk).
//! - Any other response with a body (a plain `503`, a local reply) keeps its status and
//!   gets `grpc-status` from it (gRPC's table), its body (up to 16 KiB once it took more
//!   than one chunk) as a percent-encoded `grpc-message`, `content-length: 0`, no body.
//!   Headers-only, it only gets the content-type.
//! - With the route's cluster known, each `grpc-status` seen (in headers or trailers) is
//!   counted under the cluster's scope: `cluster.<name>.grpc-web.<service>.<method>.`
//!   `<status>`, `success` or `failure`, and `total`.
//!
//! The config (`GrpcWeb`) has no fields.

mod body;

use std::cell::Cell;
use std::rc::Rc;
use std::sync::Arc;

use bytes::{Bytes, BytesMut};
use http::header::{self, HeaderName, HeaderValue};
use http::{HeaderMap, Request, Response, StatusCode};
use hyper::body::Body as _;

use crate::http::codec::body::{ProxyBody, UnsizedBody};
use crate::protocol::grpc::{
    charge_status, http_to_grpc_status, is_grpc_response, service_and_method,
};
use crate::stats::dynamic::DynamicCounters;
use crate::stats::Store;
use body::{GrpcWebResponseBody, TextRequestBody};

/// The filter's config type (`typed_config`).
pub const FILTER_TYPE: &str = "envoy.extensions.filters.http.grpc_web.v3.GrpcWeb";
/// The filter's well-known name.
pub const FILTER_NAME: &str = "envoy.filters.http.grpc_web";

const GRPC_WEB: &str = "application/grpc-web";
const GRPC_WEB_PROTO: &str = "application/grpc-web+proto";
const GRPC_WEB_TEXT: &str = "application/grpc-web-text";
const GRPC_WEB_TEXT_PROTO: &str = "application/grpc-web-text+proto";
/// The most of a non-gRPC response's body that goes into `grpc-message` once it was
/// buffered over several chunks (Envoy's `MAX_BUFFERED_PLAINTEXT_LENGTH`).
const MAX_BUFFERED_PLAINTEXT: usize = 16384;
/// The local reply to a `-text` body that is not base64.
const BAD_BASE64: &str = "Bad gRPC-web request, invalid base64 data.";
const GRPC_STATUS: HeaderName = HeaderName::from_static("grpc-status");
const GRPC_MESSAGE: HeaderName = HeaderName::from_static("grpc-message");
const GRPC_ACCEPT_ENCODING: HeaderName = HeaderName::from_static("grpc-accept-encoding");

/// A connection manager's gRPC-Web filter.
pub struct GrpcWebFilter {
    /// The filter's name in `http_filters`.
    pub name: String,
    counters: Arc<DynamicCounters>,
}

/// Whether a request is gRPC-Web (its content-type one of the four, exactly).
#[inline]
pub fn is_grpc_web(headers: &HeaderMap) -> bool {
    headers.get(header::CONTENT_TYPE).is_some_and(|v| {
        matches!(
            v.as_bytes(),
            b"application/grpc-web"
                | b"application/grpc-web+proto"
                | b"application/grpc-web-text"
                | b"application/grpc-web-text+proto"
        )
    })
}

/// What the filter keeps of a gRPC-Web request for its response.
pub struct GrpcWebRequest {
    counters: Arc<DynamicCounters>,
    /// The client asked for base64 (`accept` a `-text` type).
    text_response: bool,
    /// `cluster.<name>.grpc-web.<service>.<method>.`, with the route's cluster known.
    stat_prefix: Option<Rc<str>>,
    /// Set by a `-text` request body that is not base64: the details of the answer it
    /// gets instead of the upstream's.
    bad_body: Option<Rc<Cell<Option<&'static str>>>>,
}

impl GrpcWebFilter {
    /// The filter named `name`, its counters in `store`.
    pub fn new(name: &str, store: &Store) -> GrpcWebFilter {
        GrpcWebFilter {
            name: name.to_string(),
            counters: Arc::new(DynamicCounters::new(store)),
        }
    }

    /// The request pass: `None` for a request that is not gRPC-Web (untouched). `path` is
    /// the request's path, `cluster` its route's cluster when this worker has it.
    pub fn on_request(
        &self,
        req: &mut Request<ProxyBody>,
        path: &str,
        cluster: Option<&str>,
    ) -> Option<Box<GrpcWebRequest>> {
        if !is_grpc_web(req.headers()) {
            return None;
        }
        let headers = req.headers_mut();
        headers.remove(header::CONTENT_LENGTH);
        let text_request = headers.get(header::CONTENT_TYPE).is_some_and(|v| {
            v.as_bytes() == GRPC_WEB_TEXT.as_bytes()
                || v.as_bytes() == GRPC_WEB_TEXT_PROTO.as_bytes()
        });
        headers.insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/grpc"),
        );
        let text_response = headers.get(header::ACCEPT).is_some_and(|v| {
            v.as_bytes() == GRPC_WEB_TEXT.as_bytes()
                || v.as_bytes() == GRPC_WEB_TEXT_PROTO.as_bytes()
        });
        headers.insert(header::TE, HeaderValue::from_static("trailers"));
        if !headers.contains_key(&GRPC_ACCEPT_ENCODING) {
            headers.insert(GRPC_ACCEPT_ENCODING, HeaderValue::from_static("identity"));
        }
        let stat_prefix = cluster.and_then(|c| {
            let (service, method) = service_and_method(path)?;
            Some(Rc::from(format!(
                "cluster.{c}.grpc-web.{service}.{method}."
            )))
        });
        // The body goes on without a known length (it has no `content-length` now; an
        // empty one too, or the upstream codec would give it `content-length: 0`), as
        // Envoy's does; a `-text` one decoded.
        let mut bad_body = None;
        {
            let inner = std::mem::replace(req.body_mut(), ProxyBody::empty());
            *req.body_mut() = if text_request {
                let flag = Rc::new(Cell::new(None));
                bad_body = Some(flag.clone());
                ProxyBody::filtered(TextRequestBody::new(inner, flag))
            } else {
                ProxyBody::filtered(UnsizedBody(inner))
            };
        }
        Some(Box::new(GrpcWebRequest {
            counters: self.counters.clone(),
            text_response,
            stat_prefix,
            bad_body,
        }))
    }
}

impl GrpcWebRequest {
    /// The response pass; the response details when the request body's base64 was bad
    /// (the answer is then Envoy's local reply for it, in gRPC-Web's form).
    pub async fn on_response(
        self: Box<Self>,
        resp: &mut Response<ProxyBody>,
        worker: usize,
    ) -> Option<&'static str> {
        let details = self.bad_body.as_ref().and_then(|f| f.get());
        if details.is_some() {
            *resp = crate::http::conn_manager::local_reply::local_reply(
                StatusCode::BAD_REQUEST,
                BAD_BASE64,
            );
        }
        if let Some(status) = resp.headers().get(&GRPC_STATUS) {
            charge(
                &self.counters,
                self.stat_prefix.as_deref(),
                status.as_bytes(),
                worker,
            );
        }
        let end_stream = resp.body().is_end_stream();
        let status = resp.status().as_u16();
        let already = is_grpc_response(status, resp.headers(), end_stream)
            || (status == 200 && has_proto_grpc_web_content_type(resp.headers()));
        let transform = !already;
        let headers = resp.headers_mut();
        headers.remove(header::CONTENT_LENGTH);
        headers.insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static(if self.text_response {
                GRPC_WEB_TEXT_PROTO
            } else {
                GRPC_WEB_PROTO
            }),
        );
        if end_stream {
            return details;
        }
        if transform {
            let (message, trailers) = collect_message(resp.body_mut()).await;
            if let Some(status) = trailers.as_ref().and_then(|t| t.get(&GRPC_STATUS)) {
                charge(
                    &self.counters,
                    self.stat_prefix.as_deref(),
                    status.as_bytes(),
                    worker,
                );
            }
            let headers = resp.headers_mut();
            let encoded = grpc_message(&message);
            if let Ok(v) = HeaderValue::from_str(&encoded) {
                headers.insert(GRPC_MESSAGE, v);
            }
            headers.insert(GRPC_STATUS, HeaderValue::from(http_to_grpc_status(status)));
            headers.insert(header::CONTENT_LENGTH, HeaderValue::from(0));
            *resp.body_mut() = ProxyBody::empty();
            return details;
        }
        let inner = std::mem::replace(resp.body_mut(), ProxyBody::empty());
        *resp.body_mut() = ProxyBody::filtered(GrpcWebResponseBody::new(
            inner,
            self.text_response,
            self.counters,
            self.stat_prefix,
            worker,
        ));
        details
    }
}

/// Counts a `grpc-status` under `prefix`, when the route's cluster is known.
fn charge(counters: &DynamicCounters, prefix: Option<&str>, status: &[u8], worker: usize) {
    if let Some(prefix) = prefix {
        charge_status(counters, prefix, status, worker);
    }
}

/// Whether the content-type, without its parameters, is `application/grpc-web+proto` or
/// `application/grpc-web` (any case).
fn has_proto_grpc_web_content_type(headers: &HeaderMap) -> bool {
    let Some(v) = headers.get(header::CONTENT_TYPE) else {
        return false;
    };
    let v = v.as_bytes();
    let media = v.split(|&b| b == b';').next().unwrap_or(b"");
    let media = media.trim_ascii_end();
    media.eq_ignore_ascii_case(GRPC_WEB_PROTO.as_bytes())
        || media.eq_ignore_ascii_case(GRPC_WEB.as_bytes())
}

/// A non-gRPC response's body for `grpc-message` (whole when it came in one chunk, else
/// its first 16 KiB: Envoy stops buffering past that) and its trailers.
async fn collect_message(body: &mut ProxyBody) -> (Bytes, Option<HeaderMap>) {
    let mut buf = BytesMut::new();
    let mut chunks = 0usize;
    let mut trailers = None;
    loop {
        let frame = std::future::poll_fn(|cx| std::pin::Pin::new(&mut *body).poll_frame(cx)).await;
        let Some(Ok(frame)) = frame else { break };
        match frame.into_data() {
            Ok(data) => {
                if buf.len() < MAX_BUFFERED_PLAINTEXT {
                    buf.extend_from_slice(&data);
                }
                chunks += 1;
            }
            Err(frame) => {
                trailers = frame.into_trailers().ok();
                break;
            }
        }
    }
    if chunks > 1 || trailers.is_some() {
        buf.truncate(MAX_BUFFERED_PLAINTEXT);
    }
    (buf.freeze(), trailers)
}

/// gRPC's percent-encoding of `grpc-message` (as the connection manager's gRPC local
/// replies): everything outside printable ASCII, and `%`.
fn grpc_message(message: &[u8]) -> String {
    const SET: &percent_encoding::AsciiSet = &percent_encoding::CONTROLS.add(b'%');
    percent_encoding::percent_encode(message, SET).to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_grpc_web_content_types_are_grpc_web() {
        let mut h = HeaderMap::new();
        for (ct, want) in [
            ("application/grpc-web", true),
            ("application/grpc-web+proto", true),
            ("application/grpc-web-text", true),
            ("application/grpc-web-text+proto", true),
            ("application/grpc-web+json", false),
            ("application/grpc", false),
            ("Application/grpc-web", false),
            ("application/grpc-web; charset=utf-8", false),
        ] {
            h.insert(header::CONTENT_TYPE, HeaderValue::from_static(ct));
            assert_eq!(is_grpc_web(&h), want, "{ct}");
        }
        h.clear();
        assert!(!is_grpc_web(&h));
    }

    #[test]
    fn proto_grpc_web_response_types_ignore_parameters_and_case() {
        let mut h = HeaderMap::new();
        for (ct, want) in [
            ("application/grpc-web+proto", true),
            ("Application/GRPC-Web ; charset=x", true),
            ("application/grpc-web-text+proto", false),
            ("application/grpc", false),
        ] {
            h.insert(header::CONTENT_TYPE, HeaderValue::from_static(ct));
            assert_eq!(has_proto_grpc_web_content_type(&h), want, "{ct}");
        }
    }
}
