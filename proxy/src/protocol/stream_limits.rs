//! What a cluster's `common_http_protocol_options` bound on each upstream stream, as
//! Envoy 1.40 applies them (measured; `tests/http_cluster_stream_limits.rs`):
//!
//! - `max_headers_count` (default 100) caps the fields of an upstream response head.
//!   Over HTTP/1.1 a longer head is a protocol error (`502`, `UPE`,
//!   `upstream_cx_protocol_error`, the connection closes); over HTTP/2, where Envoy
//!   counts `:status` as a field, the stream is reset and the client gets `503 … reset
//!   reason: remote reset` (`UR`, `upstream_rq_rx_reset`), the connection staying up.
//! - `max_stream_duration` bounds each attempt from the moment it has a connection. Before
//!   the response head the stream is reset and the client gets `504 upstream max stream
//!   duration reached` (`408` while its request is still arriving), flag `UMSDR`; after,
//!   the response body is cut off (the downstream HTTP/1.1 connection closes, an HTTP/2
//!   stream is reset), and a websocket tunnel closes. Either way
//!   `upstream_rq_max_duration_reached` counts it. A route retrying on `reset` retries it,
//!   as Envoy treats it as a local reset.
//! - `headers_with_underscores_action` has no effect on a cluster: Envoy 1.40 applies it
//!   to the requests its server codecs receive only, neither to upstream responses nor to
//!   the requests it sends (measured with `REJECT_REQUEST` and `DROP_HEADER`), so it is
//!   accepted and nothing is built for it.

use std::time::{Duration, Instant};

use courier_proto::envoy::config::core::v3::HttpProtocolOptions as CommonHttpProtocolOptions;
use http::HeaderMap;

use crate::config::{self, ConfigError};

/// Envoy's default `max_headers_count`.
pub const DEFAULT_MAX_HEADERS: usize = 100;

/// Envoy's body when an upstream stream outlives the cluster's `max_stream_duration`.
pub const UPSTREAM_DURATION_REACHED: &str = "upstream max stream duration reached";

/// Per-stream limits of a cluster's upstream HTTP streams.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct StreamLimits {
    /// `max_headers_count`: the most fields an upstream response head may carry.
    pub max_headers: usize,
    /// `max_stream_duration`: how long one attempt may last once it has a connection
    /// (`None`: unset or zero, no limit).
    pub max_duration: Option<Duration>,
}

impl Default for StreamLimits {
    fn default() -> Self {
        StreamLimits {
            max_headers: DEFAULT_MAX_HEADERS,
            max_duration: None,
        }
    }
}

impl StreamLimits {
    /// A cluster's limits from its `common_http_protocol_options` (`common`, at `path`).
    pub fn compile(
        common: Option<&CommonHttpProtocolOptions>,
        path: &str,
    ) -> Result<StreamLimits, ConfigError> {
        let mut out = StreamLimits::default();
        let Some(common) = common else {
            return Ok(out);
        };
        if let Some(n) = &common.max_headers_count {
            if n.value == 0 {
                // Envoy's proto validation: `gte: 1`.
                return Err(ConfigError::new(
                    format!("{path}.max_headers_count"),
                    "value must be greater than or equal to 1",
                ));
            }
            out.max_headers = n.value as usize;
        }
        if let Some(d) = &common.max_stream_duration {
            let d = config::duration(d, &format!("{path}.max_stream_duration"))?;
            out.max_duration = (!d.is_zero()).then_some(d);
        }
        Ok(out)
    }

    /// Whether an HTTP/2 response head is over `max_headers_count`: Envoy's HTTP/2 codec
    /// counts `:status`, which the parsed map does not hold.
    pub fn h2_head_too_large(&self, headers: &HeaderMap) -> bool {
        headers.len() >= self.max_headers
    }

    /// When an attempt whose connection is ready now must end, if it must.
    pub fn attempt_ends(&self) -> Option<Instant> {
        self.max_duration.map(|d| Instant::now() + d)
    }
}

/// Carried in an upstream response's extensions when its stream has a
/// `max_stream_duration`: when the stream (its body included) must end.
#[derive(Clone, Copy, Debug)]
pub struct StreamEnds(pub Instant);

#[cfg(test)]
mod tests {
    use super::*;

    fn common(yaml: &str) -> CommonHttpProtocolOptions {
        courier_proto::from_yaml(yaml).expect("CommonHttpProtocolOptions")
    }

    #[test]
    fn defaults_zero_and_set_values_as_envoy() {
        assert_eq!(
            StreamLimits::compile(None, "p").expect("compiles"),
            StreamLimits::default()
        );
        let set = StreamLimits::compile(
            Some(&common("{ max_headers_count: 5, max_stream_duration: 2s }")),
            "p",
        )
        .expect("compiles");
        assert_eq!(set.max_headers, 5);
        assert_eq!(set.max_duration, Some(Duration::from_secs(2)));
        // A zero duration is no limit (Envoy arms no timer).
        let zero = StreamLimits::compile(Some(&common("{ max_stream_duration: 0s }")), "p")
            .expect("compiles");
        assert_eq!(zero.max_duration, None);
        let err = StreamLimits::compile(Some(&common("{ max_headers_count: 0 }")), "p")
            .expect_err("refused");
        assert!(err.to_string().contains("p.max_headers_count"), "{err}");
    }

    #[test]
    fn h2_heads_count_their_status() {
        let limits = StreamLimits {
            max_headers: 3,
            max_duration: None,
        };
        let mut h = HeaderMap::new();
        h.insert("a", http::HeaderValue::from_static("1"));
        h.insert("b", http::HeaderValue::from_static("1"));
        assert!(!limits.h2_head_too_large(&h));
        h.append("b", http::HeaderValue::from_static("2"));
        assert!(limits.h2_head_too_large(&h));
    }
}
