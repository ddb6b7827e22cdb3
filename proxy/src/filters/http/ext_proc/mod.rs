//! The external processing filter (`envoy.filters.http.ext_proc`): a request and its
//! answer are shown to a service over one bidirectional gRPC stream
//! (`envoy.service.ext_proc.v3.ExternalProcessor/Process`) per request — request
//! headers, request body, response headers, response body, as the processing mode says —
//! and the service answers each message: go on unchanged, go on with changed fields and
//! body, or answer the request itself (an immediate response).
//!
//! As Envoy 1.40 (measured, `tests/http_ext_proc.rs`):
//!
//! - `processing_mode`: header modes `SEND`/`SKIP`/`DEFAULT` (send); body modes `NONE`,
//!   `BUFFERED` (the whole body held, then sent in one message, `end_of_stream` unless
//!   trailers follow), `STREAMED` (each chunk sent as it comes, held until its answer,
//!   which may change it; a chunked body ends with an empty chunk marked
//!   `end_of_stream`, a body with trailers with none) and `BUFFERED_PARTIAL` (held up to
//!   the connection's buffer limit, then sent, the rest passing on); trailer modes
//!   `SEND` (sent once the body's answers are in, their answer's header mutation
//!   applied) and `SKIP`/`DEFAULT`. The message loses its `content-length` in
//!   `STREAMED`, `BUFFERED_PARTIAL` and `FULL_DUPLEX_STREAMED`, and with a body sent but
//!   its headers skipped.
//! - `FULL_DUPLEX_STREAMED` (`tests/http_ext_proc_streamed.rs`): each chunk is sent as
//!   it comes (even while the headers wait for their answer) and dropped; the body that
//!   goes on is the one the service streams back in `streamed_response` pieces, ended by
//!   one marked `end_of_stream` or by the answer to the trailers (which must be `SEND`:
//!   the filter's config is refused otherwise, as Envoy's; a route's too, which Envoy
//!   accepts). A body answer that is not a `streamed_response`, or comes when no chunk
//!   waits, is spurious. Nothing of that direction has a `message_timeout`; once a chunk
//!   is sent a failure answers the request whatever `failure_mode_allow` says.
//! - `allow_mode_override`: a `mode_override` in an answer taken while a direction's
//!   headers wait (the request's or the response's) sets the mode of the rest of the
//!   request both ways, its `DEFAULT` header and trailer modes the filter's own (not a
//!   route's); ignored when the filter's own mode streams a body both ways, or when
//!   `allowed_override_modes` is set and lists no mode equal to it (its request header
//!   mode not compared). A request body already streaming both ways keeps doing so.
//! - A route's `ExtProcPerRoute` (merged from the route configuration down to the route):
//!   `disabled` skips every message; `overrides.processing_mode` replaces the mode.
//! - Each message waits at most `message_timeout` (default 200 ms) for its answer. A
//!   stream that fails (the service absent, reset, answering what is not gRPC or a
//!   non-OK status), or a timeout, ends processing: the request is answered `500`
//!   (`504` for a timeout) with details `ext_proc_error_gRPC_error_<status>` (or
//!   `ext_proc_error_per-message_timeout_exceeded`), unless `failure_mode_allow`, where
//!   it goes on unchanged (counted `failure_mode_allowed`). An answer out of order is
//!   spurious: counted, the stream closed, and the request answered `500` the same way
//!   (or let go on under `failure_mode_allow`).
//! - Header mutations follow Envoy's default mutation rules, an immediate response's
//!   too: `host`, `:authority`, `:scheme`, `:method` and `x-envoy-*` fields are not
//!   changed (counted `rejected_header_mutations`), pseudo-headers and `host` not
//!   removed; an invalid name or value fails the message (`500`). A field is set, or
//!   appended under the deprecated `append: true`; `append_action` has no effect in
//!   Envoy 1.40 (measured), nor here. Values are read from `raw_value`, and sent there.
//!   A body replaced in `BUFFERED` mode must match a `content-length` the message still
//!   has (else `500`); without one it goes on chunked.
//! - Counters `http.<stat_prefix>.ext_proc.{streams_started, stream_msgs_sent,
//!   stream_msgs_received, spurious_msgs_received, streams_closed, streams_failed,
//!   failure_mode_allowed, message_timeouts, rejected_header_mutations,
//!   override_message_timeout_received, override_message_timeout_ignored,
//!   clear_route_cache_ignored, clear_route_cache_disabled, ...}`.
//!
//! The messages and what the answers change are here ([`mutation`], [`messages`]); the
//! stream is opened and driven by the connection manager
//! (`http::conn_manager::service_calls::ext_proc`) through the router's
//! `async_stream`, as filters never reach the router.
//!
//! Refused by path: `http_service`, body mode `GRPC`, `request_attributes`,
//! `response_attributes`, `mutation_rules`, `max_message_timeout`, `observability_mode`,
//! `metadata_options`, `filter_metadata`, `route_cache_action` other than `DEFAULT`,
//! `disable_immediate_response`, `send_body_without_waiting_for_header_response`,
//! `status_on_error`, `processing_request_modifier`, `on_processing_response`,
//! `allow_content_length_header`, `emit_client_span`, a non-empty `stat_prefix`, and in
//! `ExtProcPerRoute.overrides` everything but `processing_mode` (and there a body
//! streamed both ways with its trailers not sent).

pub mod messages;
pub mod mutation;

use std::sync::Arc;
use std::time::Duration;

use courier_proto::envoy::extensions::filters::http::ext_proc::v3 as pb;
use pb::processing_mode::{BodySendMode, HeaderSendMode};

use crate::config::ConfigError;
use crate::http::route::per_filter::FilterConfigs;
use crate::http::route::StrMatch;
use crate::stats::{Counter, Store};
use crate::upstream::async_client::grpc::GrpcClient;

/// The filter's config type.
pub const FILTER_TYPE: &str = "envoy.extensions.filters.http.ext_proc.v3.ExternalProcessor";
/// The filter's well-known name.
pub const FILTER_NAME: &str = "envoy.filters.http.ext_proc";
/// The per-route config's type.
pub const PER_ROUTE_TYPE: &str = "envoy.extensions.filters.http.ext_proc.v3.ExtProcPerRoute";
/// The method every stream calls.
pub const PROCESS_PATH: &str = "/envoy.service.ext_proc.v3.ExternalProcessor/Process";
/// Envoy's `message_timeout` when none is set.
pub const DEFAULT_MESSAGE_TIMEOUT: Duration = Duration::from_millis(200);

/// How a body is sent (a compiled `BodySendMode`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BodyMode {
    /// Not sent.
    None,
    /// Held whole, then sent in one message.
    Buffered,
    /// Each chunk sent as it comes, held until its answer.
    Streamed,
    /// Held up to the buffer limit, then sent in one message (the rest passing on).
    BufferedPartial,
    /// Each chunk sent as it comes and dropped: the body that goes on is the one the
    /// service streams back (`streamed_response`), as much and as often as it likes.
    FullDuplex,
}

/// What is sent to the service for a request (a compiled `ProcessingMode`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Mode {
    /// The request's headers are sent.
    pub request_headers: bool,
    /// The response's headers are sent.
    pub response_headers: bool,
    /// How the request's body is sent.
    pub request_body: BodyMode,
    /// How the response's body is sent.
    pub response_body: BodyMode,
    /// The request's trailers are sent (`SEND`; `DEFAULT` is `SKIP` for trailers).
    pub request_trailers: bool,
    /// The response's trailers are sent.
    pub response_trailers: bool,
}

impl Mode {
    /// Nothing is sent (a route's `disabled`).
    pub const OFF: Mode = Mode {
        request_headers: false,
        response_headers: false,
        request_body: BodyMode::None,
        response_body: BodyMode::None,
        request_trailers: false,
        response_trailers: false,
    };

    /// Compiles a `ProcessingMode` at `path` (none: Envoy's defaults, headers both ways).
    pub fn compile(proto: Option<&pb::ProcessingMode>, path: &str) -> Result<Mode, ConfigError> {
        let Some(p) = proto else {
            return Ok(Mode {
                request_headers: true,
                response_headers: true,
                ..Mode::OFF
            });
        };
        let header = |v: i32, field: &str| match HeaderSendMode::try_from(v) {
            Ok(HeaderSendMode::Default | HeaderSendMode::Send) => Ok(true),
            Ok(HeaderSendMode::Skip) => Ok(false),
            Err(_) => Err(ConfigError::new(
                format!("{path}.{field}"),
                format!("unknown enum value {v}"),
            )),
        };
        let trailer =
            |v: i32, field: &str| header(v, field).map(|_| v == HeaderSendMode::Send as i32);
        let body = |v: i32, field: &str| match BodySendMode::try_from(v) {
            Ok(BodySendMode::None) => Ok(BodyMode::None),
            Ok(BodySendMode::Buffered) => Ok(BodyMode::Buffered),
            Ok(BodySendMode::Streamed) => Ok(BodyMode::Streamed),
            Ok(BodySendMode::BufferedPartial) => Ok(BodyMode::BufferedPartial),
            Ok(BodySendMode::FullDuplexStreamed) => Ok(BodyMode::FullDuplex),
            Ok(BodySendMode::Grpc) => Err(ConfigError::unsupported(format!("{path}.{field}"))),
            Err(_) => Err(ConfigError::new(
                format!("{path}.{field}"),
                format!("unknown enum value {v}"),
            )),
        };
        Ok(Mode {
            request_headers: header(p.request_header_mode, "request_header_mode")?,
            response_headers: header(p.response_header_mode, "response_header_mode")?,
            request_body: body(p.request_body_mode, "request_body_mode")?,
            response_body: body(p.response_body_mode, "response_body_mode")?,
            request_trailers: trailer(p.request_trailer_mode, "request_trailer_mode")?,
            response_trailers: trailer(p.response_trailer_mode, "response_trailer_mode")?,
        })
    }
}

/// The filter's counters (`http.<stat_prefix>.ext_proc.<name>`).
pub struct ExtProcStats {
    /// `streams_started`.
    pub streams_started: Arc<Counter>,
    /// `stream_msgs_sent`.
    pub stream_msgs_sent: Arc<Counter>,
    /// `stream_msgs_received`.
    pub stream_msgs_received: Arc<Counter>,
    /// `spurious_msgs_received`.
    pub spurious_msgs_received: Arc<Counter>,
    /// `streams_closed`.
    pub streams_closed: Arc<Counter>,
    /// `streams_failed`.
    pub streams_failed: Arc<Counter>,
    /// `failure_mode_allowed`.
    pub failure_mode_allowed: Arc<Counter>,
    /// `message_timeouts`.
    pub message_timeouts: Arc<Counter>,
    /// `rejected_header_mutations`.
    pub rejected_header_mutations: Arc<Counter>,
    /// `override_message_timeout_ignored`.
    pub override_message_timeout_ignored: Arc<Counter>,
    /// `clear_route_cache_ignored`.
    pub clear_route_cache_ignored: Arc<Counter>,
    /// `clear_route_cache_disabled`.
    pub clear_route_cache_disabled: Arc<Counter>,
}

/// Which request and response fields the service sees (`forward_rules`).
#[derive(Default)]
pub struct ForwardRules {
    allowed: Vec<StrMatch>,
    disallowed: Vec<StrMatch>,
}

impl ForwardRules {
    /// Whether a field named `name` is sent (Envoy's `headerCanBeForwarded`).
    pub fn forwards(&self, name: &str) -> bool {
        if self.disallowed.iter().any(|m| m.matches(name)) {
            return false;
        }
        self.allowed.is_empty() || self.allowed.iter().any(|m| m.matches(name))
    }
}

/// A compiled `ExternalProcessor`.
pub struct ExtProcFilter {
    /// The filter's name in the chain.
    pub name: String,
    /// What is sent, unless a route says otherwise.
    pub mode: Mode,
    /// What a request's processing reads (shared: a streamed body outlives the pass).
    pub core: Arc<Core>,
}

/// What a request's processing reads of its filter.
pub struct Core {
    /// The service's cluster, authority and metadata.
    pub client: GrpcClient,
    /// A failed stream lets the request go on.
    pub failure_mode_allow: bool,
    /// How long each message waits for its answer.
    pub message_timeout: Duration,
    /// Which fields the service sees.
    pub forward: ForwardRules,
    /// `disable_clear_route_cache`.
    pub disable_clear_route_cache: bool,
    /// What the service may do with a `mode_override`.
    pub overrides: ModeOverrides,
    /// The counters.
    pub stats: ExtProcStats,
}

/// `allow_mode_override` and `allowed_override_modes`: whether, and to what, the
/// service's answer to a message's headers may change the processing mode.
pub struct ModeOverrides {
    /// `allow_mode_override`.
    pub allowed: bool,
    /// The filter's own `processing_mode` (not a route's): an override's `DEFAULT`
    /// header and trailer modes keep its values, as Envoy's `effectiveModeOverride`.
    pub configured: pb::ProcessingMode,
    /// The filter's own mode streams a body both ways: Envoy then ignores overrides.
    pub duplex: bool,
    /// `allowed_override_modes` (empty: any).
    pub modes: Vec<pb::ProcessingMode>,
}

impl ModeOverrides {
    /// The mode a service's `mode_override` sets, or `None` when it is ignored (not
    /// allowed, or not in the allowed list), as Envoy's `onReceiveMessage`.
    pub fn effective(&self, asked: &pb::ProcessingMode) -> Option<Mode> {
        if !self.allowed || self.duplex {
            return None;
        }
        let keep = |asked: i32, configured: i32| match asked {
            0 => configured,
            v => v,
        };
        let c = &self.configured;
        let m = pb::ProcessingMode {
            request_header_mode: keep(asked.request_header_mode, c.request_header_mode),
            response_header_mode: keep(asked.response_header_mode, c.response_header_mode),
            request_trailer_mode: keep(asked.request_trailer_mode, c.request_trailer_mode),
            response_trailer_mode: keep(asked.response_trailer_mode, c.response_trailer_mode),
            request_body_mode: asked.request_body_mode,
            response_body_mode: asked.response_body_mode,
        };
        // The request's header mode is not compared: its headers are gone by then.
        let listed = self.modes.is_empty()
            || self.modes.iter().any(|o| {
                o.request_body_mode == m.request_body_mode
                    && o.request_trailer_mode == m.request_trailer_mode
                    && o.response_header_mode == m.response_header_mode
                    && o.response_body_mode == m.response_body_mode
                    && o.response_trailer_mode == m.response_trailer_mode
            });
        if !listed {
            tracing::debug!("ext_proc: processing mode override not in allowed_override_modes");
            return None;
        }
        match Mode::compile(Some(&m), "mode_override") {
            Ok(mode) => Some(mode),
            Err(e) => {
                // An enum value Courier does not know: taken as no override.
                tracing::debug!(error = %e, "ext_proc: processing mode override ignored");
                None
            }
        }
    }
}

/// A route's `ExtProcPerRoute`.
pub struct ExtProcPerRoute {
    disabled: bool,
    mode: Option<Mode>,
}

impl ExtProcPerRoute {
    /// Compiles an `ExtProcPerRoute` at `path`.
    pub fn compile(proto: &pb::ExtProcPerRoute, path: &str) -> Result<Self, ConfigError> {
        use pb::ext_proc_per_route::Override;
        match &proto.r#override {
            Some(Override::Disabled(true)) => Ok(ExtProcPerRoute {
                disabled: true,
                mode: None,
            }),
            Some(Override::Disabled(false)) => Err(ConfigError::new(
                format!("{path}.disabled"),
                "value must equal true",
            )),
            Some(Override::Overrides(o)) => {
                let at = format!("{path}.overrides");
                #[allow(deprecated)]
                let set = [
                    ("async_mode", o.async_mode),
                    ("request_attributes", !o.request_attributes.is_empty()),
                    ("response_attributes", !o.response_attributes.is_empty()),
                    ("grpc_service", o.grpc_service.is_some()),
                    ("metadata_options", o.metadata_options.is_some()),
                    ("grpc_initial_metadata", !o.grpc_initial_metadata.is_empty()),
                    ("failure_mode_allow", o.failure_mode_allow.is_some()),
                    (
                        "processing_request_modifier",
                        o.processing_request_modifier.is_some(),
                    ),
                    ("emit_client_span", o.emit_client_span.is_some()),
                ];
                if let Some((field, _)) = set.iter().find(|(_, on)| *on) {
                    return Err(ConfigError::unsupported(format!("{at}.{field}")));
                }
                let mode = o
                    .processing_mode
                    .as_ref()
                    .map(|m| Mode::compile(Some(m), &format!("{at}.processing_mode")))
                    .transpose()?;
                // Envoy accepts a route's body streamed both ways with its trailers not
                // sent (its filter's config would be refused), and then lets the
                // trailers pass before the service's body: not built.
                if let Some(m) = mode {
                    for (body, trailers, dir) in [
                        (m.request_body, m.request_trailers, "request"),
                        (m.response_body, m.response_trailers, "response"),
                    ] {
                        if body == BodyMode::FullDuplex && !trailers {
                            return Err(ConfigError::unsupported(format!(
                                "{at}.processing_mode.{dir}_trailer_mode"
                            )));
                        }
                    }
                }
                Ok(ExtProcPerRoute {
                    disabled: false,
                    mode,
                })
            }
            None => Err(ConfigError::new(
                format!("{path}.override"),
                "value is required",
            )),
        }
    }
}

impl ExtProcFilter {
    /// Compiles the filter at `path`; its counters under `http.<stat_prefix>.ext_proc.`.
    pub fn compile(
        name: &str,
        proto: &pb::ExternalProcessor,
        path: &str,
        stat_prefix: &str,
        store: &Store,
    ) -> Result<ExtProcFilter, ConfigError> {
        refuse_unsupported(proto, path)?;
        let client = match &proto.grpc_service {
            Some(g) => GrpcClient::compile(g, &format!("{path}.grpc_service"))?,
            None => {
                return Err(ConfigError::new(
                    path,
                    "one of grpc_service or http_service is required",
                ))
            }
        };
        if proto.disable_clear_route_cache
            && proto.route_cache_action != pb::external_processor::RouteCacheAction::Default as i32
        {
            return Err(ConfigError::new(
                path,
                "disable_clear_route_cache and route_cache_action can not be set to none-default at the same time.",
            ));
        }
        let list = |l: Option<&courier_proto::envoy::r#type::matcher::v3::ListStringMatcher>,
                    at: &str|
         -> Result<Vec<StrMatch>, ConfigError> {
            l.map_or(&[][..], |l| &l.patterns)
                .iter()
                .enumerate()
                .map(|(i, m)| StrMatch::compile(m, &format!("{at}.patterns[{i}]")))
                .collect()
        };
        let forward = match &proto.forward_rules {
            Some(r) => ForwardRules {
                allowed: list(
                    r.allowed_headers.as_ref(),
                    &format!("{path}.forward_rules.allowed_headers"),
                )?,
                disallowed: list(
                    r.disallowed_headers.as_ref(),
                    &format!("{path}.forward_rules.disallowed_headers"),
                )?,
            },
            None => ForwardRules::default(),
        };
        let prefix = format!("http.{stat_prefix}.ext_proc.");
        let c = |leaf: &str| store.counter(&format!("{prefix}{leaf}"));
        let mode = Mode::compile(
            proto.processing_mode.as_ref(),
            &format!("{path}.processing_mode"),
        )?;
        // Envoy's `verifyProcessingModeConfig`: a body streamed both ways ends with its
        // trailers' answer when it has trailers, so they must be sent.
        for (body, trailers, dir) in [
            (mode.request_body, mode.request_trailers, "request"),
            (mode.response_body, mode.response_trailers, "response"),
        ] {
            if body == BodyMode::FullDuplex && !trailers {
                return Err(ConfigError::new(
                    format!("{path}.processing_mode"),
                    format!(
                        "If the ext_proc filter has the {dir}_body_mode set to FULL_DUPLEX_STREAMED, then the {dir}_trailer_mode has to be set to SEND"
                    ),
                ));
            }
        }
        let allowed_override_modes = proto
            .allowed_override_modes
            .iter()
            .enumerate()
            .map(|(i, m)| {
                // Compiled only to refuse what Courier cannot run; matched as given.
                Mode::compile(Some(m), &format!("{path}.allowed_override_modes[{i}]"))?;
                Ok(*m)
            })
            .collect::<Result<Vec<_>, ConfigError>>()?;
        let core = Core {
            client,
            failure_mode_allow: proto.failure_mode_allow,
            message_timeout: crate::config::duration_or(
                proto.message_timeout.as_ref(),
                DEFAULT_MESSAGE_TIMEOUT,
                &format!("{path}.message_timeout"),
            )?,
            forward,
            disable_clear_route_cache: proto.disable_clear_route_cache,
            overrides: ModeOverrides {
                allowed: proto.allow_mode_override,
                configured: proto.processing_mode.unwrap_or_default(),
                duplex: mode.request_body == BodyMode::FullDuplex
                    || mode.response_body == BodyMode::FullDuplex,
                modes: allowed_override_modes,
            },
            stats: ExtProcStats {
                streams_started: c("streams_started"),
                stream_msgs_sent: c("stream_msgs_sent"),
                stream_msgs_received: c("stream_msgs_received"),
                spurious_msgs_received: c("spurious_msgs_received"),
                streams_closed: c("streams_closed"),
                streams_failed: c("streams_failed"),
                failure_mode_allowed: c("failure_mode_allowed"),
                message_timeouts: c("message_timeouts"),
                rejected_header_mutations: c("rejected_header_mutations"),
                override_message_timeout_ignored: c("override_message_timeout_ignored"),
                clear_route_cache_ignored: c("clear_route_cache_ignored"),
                clear_route_cache_disabled: c("clear_route_cache_disabled"),
            },
        };
        Ok(ExtProcFilter {
            name: name.to_owned(),
            mode,
            core: Arc::new(core),
        })
    }

    /// What is sent for a request at its route's `levels` (most specific first): the
    /// route settings merged from the least specific level down, as Envoy's
    /// `mergePerRouteConfig`.
    pub fn mode_for(&self, levels: [&FilterConfigs; 3]) -> Mode {
        let mut merged: Option<(bool, Option<Mode>)> = None;
        for level in levels.iter().rev() {
            let Some(p) = level.policy::<ExtProcPerRoute>(&self.name) else {
                continue;
            };
            merged = Some(match merged {
                None => (p.disabled, p.mode),
                Some(_) if p.disabled => (true, None),
                Some((_, less)) => (false, p.mode.or(less)),
            });
        }
        match merged {
            Some((true, _)) => Mode::OFF,
            Some((false, Some(m))) => m,
            _ => self.mode,
        }
    }
}

/// Refuses, by path, the fields Courier does not act on.
fn refuse_unsupported(proto: &pb::ExternalProcessor, path: &str) -> Result<(), ConfigError> {
    let set = [
        ("http_service", proto.http_service.is_some()),
        ("request_attributes", !proto.request_attributes.is_empty()),
        ("response_attributes", !proto.response_attributes.is_empty()),
        ("stat_prefix", !proto.stat_prefix.is_empty()),
        ("mutation_rules", proto.mutation_rules.is_some()),
        ("max_message_timeout", proto.max_message_timeout.is_some()),
        ("filter_metadata", proto.filter_metadata.is_some()),
        (
            "disable_immediate_response",
            proto.disable_immediate_response,
        ),
        ("metadata_options", proto.metadata_options.is_some()),
        ("observability_mode", proto.observability_mode),
        (
            "route_cache_action",
            proto.route_cache_action != pb::external_processor::RouteCacheAction::Default as i32,
        ),
        (
            "send_body_without_waiting_for_header_response",
            proto.send_body_without_waiting_for_header_response,
        ),
        (
            "processing_request_modifier",
            proto.processing_request_modifier.is_some(),
        ),
        (
            "on_processing_response",
            proto.on_processing_response.is_some(),
        ),
        ("status_on_error", proto.status_on_error.is_some()),
        (
            "allow_content_length_header",
            proto.allow_content_length_header,
        ),
        ("emit_client_span", proto.emit_client_span.is_some()),
    ];
    match set.iter().find(|(_, on)| *on) {
        Some((field, _)) => Err(ConfigError::unsupported(format!("{path}.{field}"))),
        None => Ok(()),
    }
}
