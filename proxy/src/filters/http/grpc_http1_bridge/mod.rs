//! The gRPC HTTP/1.1 bridge filter (`envoy.filters.http.grpc_http1_bridge`): an HTTP/1.x
//! client's gRPC call gets its whole answer with the gRPC status in the head, as an
//! HTTP/1.1 client that cannot read trailers needs.
//!
//! As Envoy 1.40 (`http1_bridge_filter.cc`; measured, `tests/http_grpc_http1_bridge.rs`):
//!
//! - With `upgrade_protobuf_to_grpc`, a request whose `content-type` is exactly
//!   `application/x-protobuf` (any protocol) gets `content-type: application/grpc` and
//!   loses its `content-length`.
//! - A gRPC request (after that) from an HTTP/1.0 or HTTP/1.1 client is bridged: with
//!   `ignore_query_parameters` its path loses its query; an upgraded one's body is sent
//!   as one gRPC message once whole (an empty body goes on empty). Over HTTP/2 an
//!   upgraded request keeps its body as it is.
//! - A bridged response with a body is held whole. When it ends with trailers, their
//!   `grpc-status` (any value but `0`, or one that is not a number, makes the status
//!   `503`) and `grpc-message` go into the head, with `content-length` the body's; the
//!   trailers are dropped. An upgraded request's answer loses the first 5 bytes (its frame
//!   head) of its first chunk. A body that ends without trailers goes out as it came, held
//!   whole, without a known length (chunked).
//! - A headers-only answer (trailers-only, a local reply) goes on as it is.

mod body;

use courier_proto::envoy::extensions::filters::http::grpc_http1_bridge::v3::Config;
use http::header::{self, HeaderName, HeaderValue};
use http::{Request, Response, StatusCode, Version};
use hyper::body::Body as _;

use crate::http::codec::body::{ProxyBody, UnsizedBody};
use crate::protocol::grpc::is_grpc;
use body::{gather, FramedRequest, Gathered};

/// The filter's config type (`typed_config`).
pub const FILTER_TYPE: &str = "envoy.extensions.filters.http.grpc_http1_bridge.v3.Config";
/// The filter's well-known name.
pub const FILTER_NAME: &str = "envoy.filters.http.grpc_http1_bridge";

const GRPC_STATUS: HeaderName = HeaderName::from_static("grpc-status");
const GRPC_MESSAGE: HeaderName = HeaderName::from_static("grpc-message");

/// A connection manager's gRPC HTTP/1.1 bridge filter.
pub struct GrpcHttp1BridgeFilter {
    /// The filter's name in `http_filters`.
    pub name: String,
    /// `upgrade_protobuf_to_grpc`.
    upgrade_protobuf: bool,
    /// `ignore_query_parameters`.
    ignore_query: bool,
}

/// What the bridge did to a request.
pub struct BridgedRequest {
    /// The request's path lost its query.
    pub path_changed: bool,
    /// The response pass, for a bridged request.
    pub response: Option<BridgeResponse>,
}

/// What a bridged request's response pass needs.
pub struct BridgeResponse {
    /// The request was an upgraded protobuf one: its answer's frame head goes.
    unframe: bool,
}

impl GrpcHttp1BridgeFilter {
    /// The filter named `name` with its config.
    pub fn new(name: &str, config: &Config) -> GrpcHttp1BridgeFilter {
        GrpcHttp1BridgeFilter {
            name: name.to_string(),
            upgrade_protobuf: config.upgrade_protobuf_to_grpc,
            ignore_query: config.ignore_query_parameters,
        }
    }

    /// Whether the request pass can change `headers`' request (what it does otherwise is
    /// nothing: the connection manager asks first, without cost).
    #[inline]
    pub fn applies(&self, version: Version, headers: &http::HeaderMap) -> bool {
        (version < Version::HTTP_2 && is_grpc(headers))
            || (self.upgrade_protobuf && is_protobuf(headers))
    }

    /// The request pass (for a request [`applies`](Self::applies) took).
    pub fn on_request(&self, req: &mut Request<ProxyBody>) -> BridgedRequest {
        let framing = self.upgrade_protobuf && is_protobuf(req.headers());
        if framing {
            let headers = req.headers_mut();
            headers.insert(
                header::CONTENT_TYPE,
                HeaderValue::from_static("application/grpc"),
            );
            headers.remove(header::CONTENT_LENGTH);
        }
        let bridging = req.version() < Version::HTTP_2 && is_grpc(req.headers());
        let mut path_changed = false;
        if bridging && self.ignore_query && req.uri().query().is_some() {
            let mut parts = req.uri().clone().into_parts();
            parts.path_and_query = parts
                .path_and_query
                .and_then(|pq| pq.path().parse::<http::uri::PathAndQuery>().ok());
            if let Ok(uri) = http::Uri::from_parts(parts) {
                *req.uri_mut() = uri;
                path_changed = true;
            }
        }
        if framing {
            let inner = std::mem::replace(req.body_mut(), ProxyBody::empty());
            // Framed when bridged; else as it came, without its length.
            *req.body_mut() = if bridging {
                ProxyBody::filtered(FramedRequest::new(inner))
            } else {
                ProxyBody::filtered(UnsizedBody(inner))
            };
        }
        BridgedRequest {
            path_changed,
            response: bridging.then_some(BridgeResponse { unframe: framing }),
        }
    }
}

impl BridgeResponse {
    /// The response pass: a response with a body is held whole, then given its gRPC
    /// status in its head.
    pub async fn on_response(self, resp: &mut Response<ProxyBody>) {
        if resp.body().is_end_stream() {
            return;
        }
        let mut body = std::mem::replace(resp.body_mut(), ProxyBody::empty());
        match gather(&mut body, self.unframe).await {
            Gathered::Trailers(data, trailers) => {
                if let Some(status) = trailers.get(&GRPC_STATUS) {
                    let ok = std::str::from_utf8(status.as_bytes())
                        .ok()
                        .and_then(|s| s.parse::<u64>().ok())
                        == Some(0);
                    if !ok {
                        *resp.status_mut() = StatusCode::SERVICE_UNAVAILABLE;
                    }
                    resp.headers_mut().insert(GRPC_STATUS, status.clone());
                }
                if let Some(message) = trailers.get(&GRPC_MESSAGE) {
                    resp.headers_mut().insert(GRPC_MESSAGE, message.clone());
                }
                resp.headers_mut()
                    .insert(header::CONTENT_LENGTH, HeaderValue::from(data.len()));
                *resp.body_mut() = ProxyBody::full(data);
            }
            Gathered::End(data) => {
                *resp.body_mut() = ProxyBody::filtered(UnsizedBody(ProxyBody::full(data)));
            }
            Gathered::Failed(e) => {
                tracing::debug!("gRPC HTTP/1.1 bridge: the response broke off: {e}");
                *resp.body_mut() = ProxyBody::filtered(body::Broken(Some(e)));
            }
        }
    }
}

/// Whether a request's content-type is exactly `application/x-protobuf`.
fn is_protobuf(headers: &http::HeaderMap) -> bool {
    headers
        .get(header::CONTENT_TYPE)
        .is_some_and(|v| v.as_bytes() == b"application/x-protobuf")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn filter(upgrade: bool, ignore: bool) -> GrpcHttp1BridgeFilter {
        GrpcHttp1BridgeFilter::new(
            "b",
            &Config {
                upgrade_protobuf_to_grpc: upgrade,
                ignore_query_parameters: ignore,
            },
        )
    }

    fn request(version: Version, uri: &str, content_type: &str) -> Request<ProxyBody> {
        let mut r = Request::new(ProxyBody::full("x"));
        *r.version_mut() = version;
        *r.uri_mut() = uri.parse().expect("uri");
        r.headers_mut().insert(
            header::CONTENT_TYPE,
            HeaderValue::from_str(content_type).expect("ct"),
        );
        r.headers_mut()
            .insert(header::CONTENT_LENGTH, HeaderValue::from(1));
        r
    }

    #[test]
    fn only_http1_grpc_is_bridged_and_loses_its_query() {
        let f = filter(false, true);
        let h = |ct: &str| {
            let mut m = http::HeaderMap::new();
            m.insert(header::CONTENT_TYPE, HeaderValue::from_str(ct).expect("ct"));
            m
        };
        assert!(f.applies(Version::HTTP_11, &h("application/grpc")));
        assert!(f.applies(Version::HTTP_10, &h("application/grpc+proto")));
        assert!(!f.applies(Version::HTTP_2, &h("application/grpc")));
        assert!(!f.applies(Version::HTTP_11, &h("application/x-protobuf")));
        let mut r = request(Version::HTTP_11, "/s/M?a=1", "application/grpc");
        let b = f.on_request(&mut r);
        assert!(b.path_changed && b.response.is_some());
        assert_eq!(r.uri().to_string(), "/s/M");
        let mut r = request(Version::HTTP_2, "/s/M?a=1", "application/grpc");
        let b = f.on_request(&mut r);
        assert!(!b.path_changed && b.response.is_none());
    }

    #[test]
    fn protobuf_is_upgraded_only_when_configured_and_exact() {
        let f = filter(true, false);
        let mut r = request(Version::HTTP_2, "/s/M", "application/x-protobuf");
        let b = f.on_request(&mut r);
        assert_eq!(r.headers()[header::CONTENT_TYPE], "application/grpc");
        assert!(!r.headers().contains_key(header::CONTENT_LENGTH));
        assert!(b.response.is_none());
        let mut r = request(Version::HTTP_11, "/s/M", "application/x-protobuf");
        assert!(f.on_request(&mut r).response.is_some_and(|b| b.unframe));
        let mut r = request(Version::HTTP_11, "/s/M", "application/x-protobuf; a=b");
        assert!(f.on_request(&mut r).response.is_none());
    }
}
