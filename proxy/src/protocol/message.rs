//! Whole HTTP messages: what a worker's own requests to a service send and get back
//! (Envoy's `Http::RequestMessage` and `ResponseMessage`). Filters build and read them;
//! the router's async client carries them (`http::router::async_client`).

use bytes::Bytes;
use http::{HeaderMap, Method};

/// A request a worker sends on its own, its body `B`.
pub struct RequestMessage<B> {
    /// Its method.
    pub method: Method,
    /// Its path and query.
    pub path: String,
    /// Its authority (`:authority`, or `host` over HTTP/1.1).
    pub authority: String,
    /// Its other fields.
    pub headers: HeaderMap,
    /// Its body.
    pub body: B,
}

/// An answer, read whole.
pub struct ResponseMessage {
    /// Its head.
    pub head: http::response::Parts,
    /// Its body.
    pub body: Bytes,
    /// Its trailers, if it had any.
    pub trailers: Option<HeaderMap>,
}

impl ResponseMessage {
    /// The message of a unary gRPC call's answer, if the call succeeded: `200`,
    /// `grpc-status: 0` (in the trailers, or the head of a trailers-only answer), one
    /// whole uncompressed message.
    pub fn grpc_message(&self) -> Option<Bytes> {
        if self.head.status != http::StatusCode::OK {
            return None;
        }
        let status = self
            .trailers
            .as_ref()
            .and_then(|t| t.get("grpc-status"))
            .or_else(|| self.head.headers.get("grpc-status"))?;
        if status.as_bytes() != b"0" {
            return None;
        }
        crate::protocol::grpc_frame::unary_message(&self.body)
    }
}

/// Host and path of a URI as Envoy splits them (`Http::Utility::extractHostPathFromUri`):
/// after any `scheme://`, the host runs to the first `/`, and the path is the rest (`/`
/// when empty).
pub fn host_and_path(uri: &str) -> (&str, &str) {
    let rest = uri.find("://").map_or(uri, |i| &uri[i + 3..]);
    match rest.find('/') {
        Some(i) => (&rest[..i], &rest[i..]),
        None => (rest, "/"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn uris_split_as_envoy_splits_them() {
        assert_eq!(
            host_and_path("http://collector:4318/v1/traces"),
            ("collector:4318", "/v1/traces")
        );
        assert_eq!(host_and_path("collector"), ("collector", "/"));
        assert_eq!(host_and_path("https://c/x?y=1"), ("c", "/x?y=1"));
    }
}
