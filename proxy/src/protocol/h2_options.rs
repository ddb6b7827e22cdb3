//! `Http2ProtocolOptions` of a connection manager (downstream) or a cluster (upstream), as
//! they apply to hyper's HTTP/2 builders.
//!
//! - `max_concurrent_streams` (default 2147483647, as Envoy).
//! - `initial_stream_window_size` and `initial_connection_window_size` when set (Envoy's
//!   range, 65535 to 2147483647). **Unset, hyper's windows stay** (downstream 1 MiB a
//!   stream and a connection; upstream 2 MiB a stream, 5 MiB a connection), where Envoy
//!   advertises 256 MiB: a deliberate difference, as a peer may send a whole window that
//!   nothing reads yet, and 256 MiB a stream is more than a proxy should hold. Setting
//!   only the stream window leaves the connection window at hyper's, which then bounds a
//!   single stream too.
//! - `connection_keepalive`: a PING every `interval` (jitter aside) and the connection
//!   closed when its answer takes longer than `timeout`, as Envoy. `interval_jitter` other
//!   than Envoy's 15% and `connection_idle_interval` are refused (hyper has neither).
//! - Envoy's inbound flood limits (`max_consecutive_inbound_frames_with_empty_payload`,
//!   `max_inbound_priority_frames_per_stream`,
//!   `max_inbound_window_update_frames_per_data_frame_sent`) apply downstream as in Envoy
//!   (`crate::http::codec::h2_head_watch` counts the frames; a flood closes the
//!   connection) and are refused upstream at other than Envoy's defaults.
//!   `max_outbound_frames`, `max_outbound_control_frames` and `hpack_table_size` are
//!   accepted at Envoy's defaults — the `h2` crate's own protections apply (it answers one
//!   PING or SETTINGS at a time and reads nothing more while the answer cannot be
//!   written, so nothing queues) and its 4096-byte table — and refused at any other value; the settings Courier does not act on
//!   (`stream_error_on_invalid_http_messaging`, its override, `allow_metadata`,
//!   `custom_settings_parameters`, …) are refused when set.

use std::time::Duration;

use courier_proto::envoy::config::core::v3::Http2ProtocolOptions;

use crate::config::{self, ConfigError};
use courier_runtime::event::rt::LocalExec;

/// Envoy's default (and maximum) `max_concurrent_streams`.
pub const DEFAULT_MAX_CONCURRENT_STREAMS: u32 = 2_147_483_647;

/// The window sizes Envoy accepts.
const WINDOW_RANGE: std::ops::RangeInclusive<u32> = 65_535..=2_147_483_647;

/// Envoy's inbound flood limits for a downstream connection (Envoy's defaults unless set).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct FloodLimits {
    /// `max_consecutive_inbound_frames_with_empty_payload`: DATA, HEADERS or
    /// CONTINUATION frames in a row with no payload and no END_STREAM.
    pub empty_frames: u32,
    /// `max_inbound_priority_frames_per_stream`: PRIORITY frames per stream opened (plus
    /// one).
    pub priority_per_stream: u32,
    /// `max_inbound_window_update_frames_per_data_frame_sent`.
    pub window_updates_per_data_frame: u32,
}

impl Default for FloodLimits {
    fn default() -> Self {
        FloodLimits {
            empty_frames: 1,
            priority_per_stream: 100,
            window_updates_per_data_frame: 10,
        }
    }
}

impl FloodLimits {
    fn compile(o: &Http2ProtocolOptions) -> FloodLimits {
        let d = FloodLimits::default();
        FloodLimits {
            empty_frames: o
                .max_consecutive_inbound_frames_with_empty_payload
                .map_or(d.empty_frames, |v| v.value),
            priority_per_stream: o
                .max_inbound_priority_frames_per_stream
                .map_or(d.priority_per_stream, |v| v.value),
            window_updates_per_data_frame: o
                .max_inbound_window_update_frames_per_data_frame_sent
                .map_or(d.window_updates_per_data_frame, |v| v.value),
        }
    }
}

/// Compiled HTTP/2 protocol options.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct H2Options {
    /// `max_concurrent_streams`.
    pub max_concurrent_streams: u32,
    /// `initial_stream_window_size`.
    pub stream_window: Option<u32>,
    /// `initial_connection_window_size`.
    pub connection_window: Option<u32>,
    /// `connection_keepalive`: PING interval and how long an answer may take.
    pub keepalive: Option<(Duration, Duration)>,
    /// The inbound flood limits (acted on downstream only).
    pub flood: FloodLimits,
}

impl Default for H2Options {
    fn default() -> Self {
        H2Options {
            max_concurrent_streams: DEFAULT_MAX_CONCURRENT_STREAMS,
            stream_window: None,
            connection_window: None,
            keepalive: None,
            flood: FloodLimits::default(),
        }
    }
}

/// Refuses, by path, the settings Courier does not act on when they differ from Envoy's
/// defaults (which Courier's behaviour matches).
#[allow(deprecated)] // `stream_error_on_invalid_http_messaging` is still read by Envoy
fn check_not_acted_on(o: &Http2ProtocolOptions, path: &str) -> Result<(), ConfigError> {
    let u32_is = |v: &Option<u32>, default: u32| v.is_none_or(|v| v == default);
    let defaults = [
        (
            "hpack_table_size",
            u32_is(&o.hpack_table_size.map(|v| v.value), 4096),
        ),
        (
            "max_outbound_frames",
            u32_is(&o.max_outbound_frames.map(|v| v.value), 10_000),
        ),
        (
            "max_outbound_control_frames",
            u32_is(&o.max_outbound_control_frames.map(|v| v.value), 1_000),
        ),
        (
            "stream_error_on_invalid_http_messaging",
            !o.stream_error_on_invalid_http_messaging,
        ),
        (
            "override_stream_error_on_invalid_http_message",
            o.override_stream_error_on_invalid_http_message.is_none(),
        ),
        ("allow_metadata", !o.allow_metadata),
        (
            "custom_settings_parameters",
            o.custom_settings_parameters.is_empty(),
        ),
        ("max_metadata_size", o.max_metadata_size.is_none()),
        (
            "enable_huffman_encoding",
            o.enable_huffman_encoding.is_none_or(|v| v.value),
        ),
        (
            "max_header_field_size_kb",
            o.max_header_field_size_kb.is_none(),
        ),
        ("disallow_obs_text", o.disallow_obs_text.is_none()),
        ("stream_reset_burst", o.stream_reset_burst.is_none()),
        ("stream_reset_rate", o.stream_reset_rate.is_none()),
        (
            "connection_keepalive.interval_jitter",
            o.connection_keepalive
                .as_ref()
                .and_then(|k| k.interval_jitter.as_ref())
                .is_none_or(|j| (j.value - 15.0).abs() < f64::EPSILON),
        ),
        (
            "connection_keepalive.connection_idle_interval",
            o.connection_keepalive
                .as_ref()
                .is_none_or(|k| k.connection_idle_interval.is_none()),
        ),
    ];
    match defaults.iter().find(|(_, ok)| !ok) {
        Some((field, _)) => Err(ConfigError::unsupported(format!("{path}.{field}"))),
        None => Ok(()),
    }
}

impl H2Options {
    /// Compiles `options` (found at `path`); none gives Envoy's defaults.
    pub fn compile(
        options: Option<&Http2ProtocolOptions>,
        path: &str,
    ) -> Result<H2Options, ConfigError> {
        let Some(o) = options else {
            return Ok(H2Options::default());
        };
        check_not_acted_on(o, path)?;
        let window = |v: Option<u32>, field: &str| -> Result<Option<u32>, ConfigError> {
            match v {
                Some(n) if !WINDOW_RANGE.contains(&n) => Err(ConfigError::new(
                    format!("{path}.{field}"),
                    format!("value must be inside range [65535, 2147483647], got {n}"),
                )),
                v => Ok(v),
            }
        };
        let max_concurrent_streams = o
            .max_concurrent_streams
            .as_ref()
            .map_or(DEFAULT_MAX_CONCURRENT_STREAMS, |v| v.value);
        if max_concurrent_streams == 0 {
            return Err(ConfigError::new(
                format!("{path}.max_concurrent_streams"),
                "value must be inside range [1, 2147483647]",
            ));
        }
        let keepalive = match &o.connection_keepalive {
            None => None,
            Some(k) => {
                let kpath = format!("{path}.connection_keepalive");
                let Some(timeout) = &k.timeout else {
                    return Err(ConfigError::new(
                        format!("{kpath}.timeout"),
                        "value is required",
                    ));
                };
                let timeout = config::duration(timeout, &format!("{kpath}.timeout"))?;
                if timeout < Duration::from_millis(1) {
                    return Err(ConfigError::new(
                        format!("{kpath}.timeout"),
                        "value must be at least 1ms",
                    ));
                }
                // Without an interval Envoy sends no periodic PINGs.
                match &k.interval {
                    Some(i) => {
                        let interval = config::duration(i, &format!("{kpath}.interval"))?;
                        (interval >= Duration::from_millis(1)).then_some((interval, timeout))
                    }
                    None => None,
                }
            }
        };
        Ok(H2Options {
            max_concurrent_streams,
            stream_window: window(
                o.initial_stream_window_size.as_ref().map(|v| v.value),
                "initial_stream_window_size",
            )?,
            connection_window: window(
                o.initial_connection_window_size.as_ref().map(|v| v.value),
                "initial_connection_window_size",
            )?,
            keepalive,
            flood: FloodLimits::compile(o),
        })
    }

    /// [`H2Options::compile`] for an upstream (cluster) connection, where the inbound
    /// flood limits are not acted on: refused, by path, at other than Envoy's defaults.
    pub fn compile_client(
        options: Option<&Http2ProtocolOptions>,
        path: &str,
    ) -> Result<H2Options, ConfigError> {
        let o = H2Options::compile(options, path)?;
        let d = FloodLimits::default();
        let not_default = [
            (
                "max_consecutive_inbound_frames_with_empty_payload",
                o.flood.empty_frames != d.empty_frames,
            ),
            (
                "max_inbound_priority_frames_per_stream",
                o.flood.priority_per_stream != d.priority_per_stream,
            ),
            (
                "max_inbound_window_update_frames_per_data_frame_sent",
                o.flood.window_updates_per_data_frame != d.window_updates_per_data_frame,
            ),
        ];
        match not_default.iter().find(|(_, differs)| *differs) {
            Some((field, _)) => Err(ConfigError::unsupported(format!("{path}.{field}"))),
            None => Ok(o),
        }
    }

    /// Applies these options to a downstream connection's builder.
    pub fn apply_server(&self, b: &mut hyper::server::conn::http2::Builder<LocalExec>) {
        b.max_concurrent_streams(self.max_concurrent_streams);
        if let Some(w) = self.stream_window {
            b.initial_stream_window_size(w);
        }
        if let Some(w) = self.connection_window {
            b.initial_connection_window_size(w);
        }
        if let Some((interval, timeout)) = self.keepalive {
            b.keep_alive_interval(interval).keep_alive_timeout(timeout);
        }
    }

    /// Applies these options to an upstream connection's builder.
    pub fn apply_client(&self, b: &mut hyper::client::conn::http2::Builder<LocalExec>) {
        if let Some(w) = self.stream_window {
            b.initial_stream_window_size(w);
        }
        if let Some(w) = self.connection_window {
            b.initial_connection_window_size(w);
        }
        if let Some((interval, timeout)) = self.keepalive {
            // Envoy pings on its interval whether or not streams are open.
            b.keep_alive_interval(interval)
                .keep_alive_timeout(timeout)
                .keep_alive_while_idle(true);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn compile(json: serde_json::Value) -> Result<H2Options, ConfigError> {
        let o: Http2ProtocolOptions = courier_proto::from_value(&json).expect("proto json");
        H2Options::compile(Some(&o), "http2_protocol_options")
    }

    #[test]
    fn options_compile_with_envoy_ranges() {
        assert_eq!(
            compile(serde_json::json!({})).ok(),
            Some(H2Options::default())
        );
        let o = compile(serde_json::json!({
            "max_concurrent_streams": 7,
            "initial_stream_window_size": 65535,
            "initial_connection_window_size": 1048576,
            "connection_keepalive": {"interval": "2s", "timeout": "1s"}
        }))
        .expect("compiles");
        assert_eq!(o.max_concurrent_streams, 7);
        assert_eq!(
            (o.stream_window, o.connection_window),
            (Some(65535), Some(1048576))
        );
        assert_eq!(
            o.keepalive,
            Some((Duration::from_secs(2), Duration::from_secs(1)))
        );
        let err =
            compile(serde_json::json!({"initial_stream_window_size": 100})).expect_err("refused");
        assert_eq!(
            err.path,
            "http2_protocol_options.initial_stream_window_size"
        );
        let err = compile(serde_json::json!({"connection_keepalive": {"interval": "1s"}}))
            .expect_err("refused");
        assert_eq!(
            err.path,
            "http2_protocol_options.connection_keepalive.timeout"
        );
        // Envoy's inbound flood limits: acted on downstream, refused upstream.
        let flood = serde_json::json!({"max_inbound_priority_frames_per_stream": 7});
        let o = compile(flood.clone()).expect("compiles");
        assert_eq!(o.flood.priority_per_stream, 7);
        assert_eq!(o.flood.empty_frames, 1);
        let o: Http2ProtocolOptions = courier_proto::from_value(&flood).expect("proto json");
        let err = H2Options::compile_client(Some(&o), "h").expect_err("refused upstream");
        assert_eq!(err.path, "h.max_inbound_priority_frames_per_stream");
        // A timeout without an interval: no periodic PINGs.
        let o = compile(serde_json::json!({"connection_keepalive": {"timeout": "1s"}}))
            .expect("compiles");
        assert_eq!(o.keepalive, None);
    }
}
