//! The connection manager's `request_id_extension`: Envoy's UUID extension
//! (`envoy.extensions.request_id.uuid.v3.UuidRequestIdConfig`), the only one, and what
//! Courier does without one. `x-request-id` is a version 4 UUID
//! ([`crate::http::conn_manager::headers::uuid4_value`]); the tracing decision reads the
//! mark in its 13th hex digit (`9` sampled, `a` forced by the service, `b` forced by the
//! client) and writes it there ([`crate::tracers::HttpTracing`]).
//!
//! - `pack_trace_reason: false`: the decision is still read from the request's id, never
//!   written into it.
//! - `use_request_id_for_trace_sampling: false`: the request id takes no part in the
//!   decision (Envoy's `mutateTracingRequestHeader` returns "sampled" at once, leaving the
//!   tracer to decide): every request is traced and its id left as it is.

use courier_proto::envoy::extensions::filters::network::http_connection_manager::v3::RequestIdExtension;
use courier_proto::envoy::extensions::request_id::uuid::v3::UuidRequestIdConfig;

use crate::config::ConfigError;

const UUID_TYPE: &str = "envoy.extensions.request_id.uuid.v3.UuidRequestIdConfig";

/// The UUID extension's settings (both true without `request_id_extension`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RequestIdOptions {
    /// `pack_trace_reason`: the tracing decision is written into the id.
    pub pack_trace_reason: bool,
    /// `use_request_id_for_trace_sampling`: the id's sampling pivot and mark decide.
    pub use_for_sampling: bool,
}

impl Default for RequestIdOptions {
    fn default() -> RequestIdOptions {
        RequestIdOptions {
            pack_trace_reason: true,
            use_for_sampling: true,
        }
    }
}

impl RequestIdOptions {
    /// Compiles `request_id_extension` (at `path`): the UUID extension, or its defaults
    /// when absent; any other extension is refused, as Envoy knows no other.
    pub fn compile(
        proto: Option<&RequestIdExtension>,
        path: &str,
    ) -> Result<RequestIdOptions, ConfigError> {
        let Some(ext) = proto else {
            return Ok(RequestIdOptions::default());
        };
        let at = format!("{path}.typed_config");
        let Some(any) = &ext.typed_config else {
            return Err(ConfigError::new(at, "value is required"));
        };
        let name = courier_proto::type_url::message_name(&any.type_url);
        if name != UUID_TYPE {
            return Err(ConfigError::new(
                at,
                format!("Didn't find a registered implementation for type: '{name}'"),
            ));
        }
        let c: UuidRequestIdConfig =
            courier_proto::unpack_any(any).map_err(|e| ConfigError::new(&at, e.to_string()))?;
        Ok(RequestIdOptions {
            pack_trace_reason: c.pack_trace_reason.as_ref().is_none_or(|b| b.value),
            use_for_sampling: c
                .use_request_id_for_trace_sampling
                .as_ref()
                .is_none_or(|b| b.value),
        })
    }
}
