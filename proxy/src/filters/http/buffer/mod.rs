//! The buffer filter (`envoy.filters.http.buffer`): a request's whole body is received
//! before the request goes on, up to `max_request_bytes`.
//!
//! As Envoy 1.40 (measured, `tests/http_buffer.rs`):
//!
//! - A request that ends with its headers is not touched. Any other body is held until it
//!   ends; a request without `content-length` then gets one with the body's length (a
//!   chunked request goes upstream with a length instead).
//! - Past `max_request_bytes`: `413 Payload Too Large` (details
//!   `request_payload_too_large`), counted in `http.<stat_prefix>.downstream_rq_too_large`.
//! - A `BufferPerRoute` (the most specific) turns the filter off there (`disabled`) or
//!   gives its own `buffer.max_request_bytes`.
//!
//! The holding itself is the router's retry buffer (`http::router::retry_buffer`),
//! filled before the request goes on: the connection manager runs it
//! (`http::conn_manager::serve`), this module only compiles the limits.

use courier_proto::envoy::extensions::filters::http::buffer::v3 as pb;

use crate::config::ConfigError;

/// The filter's config type.
pub const FILTER_TYPE: &str = "envoy.extensions.filters.http.buffer.v3.Buffer";
/// The filter's well-known name.
pub const FILTER_NAME: &str = "envoy.filters.http.buffer";
/// The per-route config's type.
pub const PER_ROUTE_TYPE: &str = "envoy.extensions.filters.http.buffer.v3.BufferPerRoute";

/// A `max_request_bytes` at `path`: required, above 0.
fn max_request_bytes(p: &pb::Buffer, path: &str) -> Result<usize, ConfigError> {
    let path = format!("{path}.max_request_bytes");
    match p.max_request_bytes {
        None => Err(ConfigError::new(path, "value is required")),
        Some(v) if v.value == 0 => Err(ConfigError::new(path, "value must be greater than 0")),
        Some(v) => Ok(v.value as usize),
    }
}

/// A compiled `BufferPerRoute`: the route's limit, `None` when the filter is off there.
pub struct RouteBuffer(Option<usize>);

impl RouteBuffer {
    /// Compiles a `BufferPerRoute` at `path`.
    pub fn compile(p: &pb::BufferPerRoute, path: &str) -> Result<RouteBuffer, ConfigError> {
        use pb::buffer_per_route::Override;
        match &p.r#override {
            None => Err(ConfigError::new(
                format!("{path}.override"),
                "value is required",
            )),
            Some(Override::Disabled(false)) => Err(ConfigError::new(
                format!("{path}.disabled"),
                "value must equal true",
            )),
            Some(Override::Disabled(true)) => Ok(RouteBuffer(None)),
            Some(Override::Buffer(b)) => Ok(RouteBuffer(Some(max_request_bytes(
                b,
                &format!("{path}.buffer"),
            )?))),
        }
    }
}

/// A connection manager's buffer filter.
pub struct BufferFilter {
    /// The filter's name in `http_filters`: its key in `typed_per_filter_config`.
    pub name: String,
    max: usize,
}

impl BufferFilter {
    /// Compiles the filter named `name` (its `Buffer` at `path`).
    pub fn compile(name: &str, p: &pb::Buffer, path: &str) -> Result<BufferFilter, ConfigError> {
        Ok(BufferFilter {
            name: name.to_string(),
            max: max_request_bytes(p, path)?,
        })
    }

    /// The most a request's body may hold here (`route`: the most specific per-route
    /// config); `None` when the filter is off.
    pub fn limit(&self, route: Option<&RouteBuffer>) -> Option<usize> {
        match route {
            Some(r) => r.0,
            None => Some(self.max),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn path<T>(r: Result<T, ConfigError>) -> Option<String> {
        r.err().map(|e| e.path)
    }

    #[test]
    fn limits_and_refusals() {
        let f = |yaml: &str| {
            let p: pb::Buffer = courier_proto::from_yaml(yaml).expect("Buffer");
            BufferFilter::compile("b", &p, "f")
        };
        let filter = f("{ max_request_bytes: 10 }").expect("valid");
        assert_eq!(filter.limit(None), Some(10));
        let r = |yaml: &str| {
            let p: pb::BufferPerRoute = courier_proto::from_yaml(yaml).expect("BufferPerRoute");
            RouteBuffer::compile(&p, "r")
        };
        let off = r("{ disabled: true }").expect("valid");
        assert_eq!(filter.limit(Some(&off)), None);
        let more = r("{ buffer: { max_request_bytes: 20 } }").expect("valid");
        assert_eq!(filter.limit(Some(&more)), Some(20));
        assert_eq!(path(f("{}")).as_deref(), Some("f.max_request_bytes"));
        assert_eq!(
            path(f("{ max_request_bytes: 0 }")).as_deref(),
            Some("f.max_request_bytes")
        );
        assert_eq!(path(r("{}")).as_deref(), Some("r.override"));
        assert_eq!(
            path(r("{ disabled: false }")).as_deref(),
            Some("r.disabled")
        );
        assert_eq!(
            path(r("{ buffer: {} }")).as_deref(),
            Some("r.buffer.max_request_bytes")
        );
    }
}
