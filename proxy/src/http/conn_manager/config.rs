//! The compiled `envoy.filters.network.http_connection_manager` config.

use crate::http::codec::h1_server::H1Settings;
use crate::protocol::h2_options::H2Options;
use crate::protocol::key_format::KeyFormat;
use std::sync::Arc;
use std::time::Duration;

use courier_proto::envoy::config::core::v3::http_protocol_options::HeadersWithUnderscoresAction;
use courier_proto::envoy::config::core::v3::ConfigSource;
use courier_proto::envoy::extensions::filters::http::router::v3::Router;
use courier_proto::envoy::extensions::filters::network::http_connection_manager::v3::{
    http_connection_manager::{
        CodecType, PathWithEscapedSlashesAction, RouteSpecifier, ServerHeaderTransformation,
        StripPortMode,
    },
    http_filter, HttpConnectionManager, HttpFilter as HttpFilterProto,
};
use http::HeaderValue;

use crate::config::{self, ConfigError};
use crate::filters::http::HttpFilter;
use crate::http::conn_manager::request_controls::ControlOptions;
use crate::http::route::RouteTable;
use crate::stats::{Counter, Gauge, Histogram, Store};

/// Well-known name of the HTTP connection manager.
pub const HTTP_CONNECTION_MANAGER: &str = "envoy.filters.network.http_connection_manager";
const ROUTER_TYPE: &str = "envoy.extensions.filters.http.router.v3.Router";

/// Where the connection manager's routes come from.
pub enum RouteSource {
    /// `route_config` inline.
    Static(Arc<RouteTable>),
    /// `rds`: read from the worker's RDS slot per request.
    Rds(Box<RdsSubscription>),
}

/// `http_connection_manager.rds`: the route configuration a connection manager subscribes
/// to, and the config source serving it (each HCM names its own, as in Envoy).
#[derive(Clone, Debug, PartialEq)]
pub struct RdsSubscription {
    /// `route_config_name`.
    pub route_config_name: String,
    /// `config_source`.
    pub config_source: ConfigSource,
}

/// `codec_type`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Codec {
    /// AUTO: HTTP/2 when the connection starts with the HTTP/2 preface.
    Auto,
    /// HTTP1.
    Http1,
    /// HTTP2 (prior knowledge).
    Http2,
}

/// `headers_with_underscores_action`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum UnderscoreAction {
    /// ALLOW.
    Allow,
    /// REJECT_REQUEST (400).
    Reject,
    /// DROP_HEADER.
    Drop,
}

/// `path_with_escaped_slashes_action`: what a path with `%2F` or `%5C` (any case) in it
/// gets before routing.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EscapedSlashes {
    /// KEEP_UNCHANGED (and Envoy's default for IMPLEMENTATION_SPECIFIC_DEFAULT).
    Keep,
    /// REJECT_REQUEST: `400`.
    Reject,
    /// UNESCAPE_AND_REDIRECT: `307` to the unescaped path.
    Redirect,
    /// UNESCAPE_AND_FORWARD: routed and sent on unescaped.
    Forward,
}

/// `http.<stat_prefix>.*` stats.
pub struct HttpStats {
    /// `downstream_cx_total`.
    pub downstream_cx_total: Arc<Counter>,
    /// `downstream_cx_active`.
    pub downstream_cx_active: Arc<Gauge>,
    /// `downstream_cx_http1_total`.
    pub downstream_cx_http1_total: Arc<Counter>,
    /// `downstream_cx_http2_total`.
    pub downstream_cx_http2_total: Arc<Counter>,
    /// `downstream_cx_http1_active`.
    pub downstream_cx_http1_active: Arc<Gauge>,
    /// `downstream_cx_http2_active`.
    pub downstream_cx_http2_active: Arc<Gauge>,
    /// `downstream_cx_destroy`.
    pub downstream_cx_destroy: Arc<Counter>,
    /// `downstream_cx_idle_timeout`.
    pub downstream_cx_idle_timeout: Arc<Counter>,
    /// `downstream_cx_max_duration_reached`.
    pub downstream_cx_max_duration_reached: Arc<Counter>,
    /// `downstream_cx_protocol_error`.
    pub downstream_cx_protocol_error: Arc<Counter>,
    /// `downstream_cx_drain_close`.
    pub downstream_cx_drain_close: Arc<Counter>,
    /// `downstream_cx_overload_disable_keepalive`: responses that ended their connection
    /// under the `disable_http_keepalive` overload action.
    pub downstream_cx_overload_disable_keepalive: Arc<Counter>,
    /// `downstream_rq_overload_close`: requests refused under `stop_accepting_requests`.
    pub downstream_rq_overload_close: Arc<Counter>,
    /// `downstream_rq_total`.
    pub downstream_rq_total: Arc<Counter>,
    /// `downstream_rq_active`.
    pub downstream_rq_active: Arc<Gauge>,
    /// `downstream_rq_http1_total`.
    pub downstream_rq_http1_total: Arc<Counter>,
    /// `downstream_rq_http2_total`.
    pub downstream_rq_http2_total: Arc<Counter>,
    /// `downstream_rq_1xx` … `downstream_rq_5xx`.
    pub downstream_rq_xx: [Arc<Counter>; 5],
    /// `downstream_rq_completed`.
    pub downstream_rq_completed: Arc<Counter>,
    /// `downstream_rq_timeout` (request_timeout).
    pub downstream_rq_timeout: Arc<Counter>,
    /// `downstream_rq_max_duration_reached` (a stream's `max_stream_duration`, the route's or the connection manager's).
    pub downstream_rq_max_duration_reached: Arc<Counter>,
    /// `downstream_rq_idle_timeout`.
    pub downstream_rq_idle_timeout: Arc<Counter>,
    /// `downstream_rq_too_large`.
    pub downstream_rq_too_large: Arc<Counter>,
    /// `downstream_rq_header_timeout`.
    pub downstream_rq_header_timeout: Arc<Counter>,
    /// `downstream_rq_ws_on_non_ws_route`.
    pub downstream_rq_ws_on_non_ws_route: Arc<Counter>,
    /// `downstream_cx_upgrades_total`.
    pub downstream_cx_upgrades_total: Arc<Counter>,
    /// `downstream_cx_upgrades_active`.
    pub downstream_cx_upgrades_active: Arc<Gauge>,
    /// `no_route`.
    pub no_route: Arc<Counter>,
    /// `no_cluster`.
    pub no_cluster: Arc<Counter>,
    /// `rq_direct_response`.
    pub rq_direct_response: Arc<Counter>,
    /// `rq_redirect`.
    pub rq_redirect: Arc<Counter>,
    /// `rq_total` (router).
    pub rq_total: Arc<Counter>,
    /// `downstream_rq_time` (ms, from the request's first byte to the response's end).
    pub downstream_rq_time: Arc<Histogram>,
}

impl HttpStats {
    fn new(store: &Store, prefix: &str) -> HttpStats {
        let c = |s: &str| store.counter(&format!("http.{prefix}.{s}"));
        let g = |s: &str| store.gauge(&format!("http.{prefix}.{s}"));
        HttpStats {
            downstream_cx_total: c("downstream_cx_total"),
            downstream_cx_active: g("downstream_cx_active"),
            downstream_cx_http1_total: c("downstream_cx_http1_total"),
            downstream_cx_http2_total: c("downstream_cx_http2_total"),
            downstream_cx_http1_active: g("downstream_cx_http1_active"),
            downstream_cx_http2_active: g("downstream_cx_http2_active"),
            downstream_cx_destroy: c("downstream_cx_destroy"),
            downstream_cx_idle_timeout: c("downstream_cx_idle_timeout"),
            downstream_cx_max_duration_reached: c("downstream_cx_max_duration_reached"),
            downstream_cx_protocol_error: c("downstream_cx_protocol_error"),
            downstream_cx_drain_close: c("downstream_cx_drain_close"),
            downstream_cx_overload_disable_keepalive: c("downstream_cx_overload_disable_keepalive"),
            downstream_rq_overload_close: c("downstream_rq_overload_close"),
            downstream_rq_total: c("downstream_rq_total"),
            downstream_rq_active: g("downstream_rq_active"),
            downstream_rq_http1_total: c("downstream_rq_http1_total"),
            downstream_rq_http2_total: c("downstream_rq_http2_total"),
            downstream_rq_xx: [
                c("downstream_rq_1xx"),
                c("downstream_rq_2xx"),
                c("downstream_rq_3xx"),
                c("downstream_rq_4xx"),
                c("downstream_rq_5xx"),
            ],
            downstream_rq_completed: c("downstream_rq_completed"),
            downstream_rq_timeout: c("downstream_rq_timeout"),
            downstream_rq_max_duration_reached: c("downstream_rq_max_duration_reached"),
            downstream_rq_idle_timeout: c("downstream_rq_idle_timeout"),
            downstream_rq_too_large: c("downstream_rq_too_large"),
            downstream_rq_header_timeout: c("downstream_rq_header_timeout"),
            downstream_rq_ws_on_non_ws_route: c("downstream_rq_ws_on_non_ws_route"),
            downstream_cx_upgrades_total: c("downstream_cx_upgrades_total"),
            downstream_cx_upgrades_active: g("downstream_cx_upgrades_active"),
            no_route: c("no_route"),
            no_cluster: c("no_cluster"),
            rq_direct_response: c("rq_direct_response"),
            rq_redirect: c("rq_redirect"),
            rq_total: c("rq_total"),
            downstream_rq_time: store.histogram(&format!("http.{prefix}.downstream_rq_time")),
        }
    }
}

/// An HTTP filter of the chain, before the router.
pub struct ChainFilter {
    /// `disabled` in the chain: it runs only where a route's settings turn it on.
    pub off_by_default: bool,
    /// The filter.
    pub filter: HttpFilter,
}

/// A compiled HTTP connection manager.
pub struct HcmConfig {
    /// `stat_prefix`.
    pub stat_prefix: String,
    /// `tracing`.
    pub tracing: Option<Arc<crate::tracers::HttpTracing>>,
    /// Routes.
    pub routes: RouteSource,
    /// `codec_type`.
    pub codec: Codec,
    /// `server_name` (default `envoy`).
    pub server_name: HeaderValue,
    /// `server_header_transformation`.
    pub server_header: ServerHeaderTransformation,
    /// `use_remote_address`.
    pub use_remote_address: bool,
    /// The machine's own address, appended to `x-forwarded-for` for a loopback client
    /// ([`crate::server::local_info`]).
    pub local_address: std::net::IpAddr,
    /// `xff_num_trusted_hops`.
    pub xff_num_trusted_hops: u32,
    /// `original_ip_detection_extensions`: where the client's address is read instead
    /// (`None`: `use_remote_address` and `xff_num_trusted_hops` say).
    pub original_ip: Option<crate::http::conn_manager::original_ip::OriginalIpDetection>,
    /// `early_header_mutation_extensions`: what a request's headers get as it arrives.
    pub early_header_mutations:
        Option<crate::http::conn_manager::early_header_mutation::EarlyHeaderMutations>,
    /// `internal_address_config`: which requests are internal.
    pub internal_addresses: crate::http::conn_manager::internal_address::InternalAddresses,
    /// `skip_xff_append`.
    pub skip_xff_append: bool,
    /// `forward_client_cert_details` and `set_current_client_cert_details`.
    pub client_cert: crate::http::conn_manager::client_cert::ClientCertPolicy,
    /// `via`.
    pub via: Option<HeaderValue>,
    /// `generate_request_id` (default true).
    pub generate_request_id: bool,
    /// `preserve_external_request_id`.
    pub preserve_external_request_id: bool,
    /// `always_set_request_id_in_response`.
    pub always_set_request_id_in_response: bool,
    /// `request_timeout` (default off).
    pub request_timeout: Option<Duration>,
    /// `request_headers_timeout` (default off).
    pub request_headers_timeout: Option<Duration>,
    /// `stream_idle_timeout` (default 5 min).
    pub stream_idle_timeout: Option<Duration>,
    /// `delayed_close_timeout` (default 1 s): how long a connection the proxy closes keeps
    /// reading what its client still sends; `None` (0) closes it once its output is out.
    pub delayed_close_timeout: Option<Duration>,
    /// `common_http_protocol_options.idle_timeout` (default 1 h).
    pub idle_timeout: Option<Duration>,
    /// `common_http_protocol_options.max_connection_duration`.
    pub max_connection_duration: Option<Duration>,
    /// `common_http_protocol_options.max_stream_duration`: every stream's duration, unless
    /// its route sets one (`None` when unset or 0).
    pub max_stream_duration: Option<Duration>,
    /// `common_http_protocol_options.max_headers_count` (default 100).
    pub max_headers_count: usize,
    /// `common_http_protocol_options.max_requests_per_connection`.
    pub max_requests_per_connection: Option<u32>,
    /// `common_http_protocol_options.headers_with_underscores_action`.
    pub underscores: UnderscoreAction,
    /// `max_request_headers_kb` (default 60).
    pub max_request_headers_kb: u32,
    /// `normalize_path`.
    pub normalize_path: bool,
    /// `merge_slashes`.
    pub merge_slashes: bool,
    /// `path_with_escaped_slashes_action`.
    pub escaped_slashes: EscapedSlashes,
    /// `strip_trailing_host_dot`: `example.com.` is routed (and sent) as `example.com`.
    pub strip_trailing_host_dot: bool,
    /// `strip_matching_host_port` / `strip_any_host_port`.
    pub strip_port: Option<bool>,
    /// `http_protocol_options.accept_http_10`.
    pub accept_http_10: bool,
    /// `http_protocol_options.default_host_for_http_10`.
    pub default_host_for_http_10: Option<String>,
    /// `http_protocol_options.header_key_format`: how response field names are written.
    pub h1_key_format: KeyFormat,
    /// `http_protocol_options.enable_trailers`: a chunked response's trailers are written
    /// (off: dropped, as Envoy's codec drops them).
    pub h1_trailers: bool,
    /// `http_protocol_options.allow_chunked_length`.
    pub allow_chunked_length: bool,
    /// `upgrade_configs` enabled at the connection manager (lower-case types).
    pub upgrades: Vec<String>,
    /// Router `suppress_envoy_headers`.
    pub suppress_envoy_headers: bool,
    /// Router `respect_expected_rq_timeout` and `strict_check_headers`.
    pub controls: crate::http::conn_manager::request_controls::ControlOptions,
    /// The HTTP filters before the router, in order.
    pub filters: Vec<ChainFilter>,
    /// The compressor filters' places in `filters`, in chain order: they judge every
    /// response, those to requests that did not reach them included.
    pub compressors: Vec<usize>,
    /// `http2_protocol_options`: streams, windows and keepalive of HTTP/2 connections.
    pub h2: H2Options,
    /// `http2_protocol_options.allow_connect`: HTTP/2 extended CONNECT (RFC 8441), which
    /// carries websockets over HTTP/2.
    pub h2_allow_connect: bool,
    /// Access logs.
    pub access_logs: Vec<Arc<crate::access_log::AccessLog>>,
    /// `flush_access_log_on_new_request`: a `DownstreamStart` entry once a request is
    /// routed, before its filters run.
    pub log_on_new_request: bool,
    /// Stats.
    pub stats: HttpStats,
    /// The stat store (per-cluster, per-code stats are created lazily).
    pub store: Store,
}

fn optional_duration(
    d: Option<&courier_proto::google::protobuf::Duration>,
    default: Option<Duration>,
    path: &str,
) -> Result<Option<Duration>, ConfigError> {
    match d {
        None => Ok(default),
        Some(d) => {
            let d = config::duration(d, path)?;
            Ok((!d.is_zero()).then_some(d))
        }
    }
}

impl HcmConfig {
    /// Compiles the filter config. Each part is compiled by a function of its own, in the
    /// order their errors are reported (the first one wins).
    pub fn compile(
        proto: &HttpConnectionManager,
        store: &Store,
        egress: bool,
    ) -> Result<HcmConfig, ConfigError> {
        check_supported(proto)?;
        let routes = compile_routes(proto, store)?;
        let codec = compile_codec(proto.codec_type)?;
        let chain = FilterChain::compile(proto, store)?;
        let common = CommonOptions::compile(proto.common_http_protocol_options.as_ref())?;
        let max_request_headers_kb = proto
            .max_request_headers_kb
            .as_ref()
            .map_or(60, |v| v.value);
        if !(1..=8192).contains(&max_request_headers_kb) {
            return Err(ConfigError::new(
                "max_request_headers_kb",
                "value must be inside range (0, 8192]",
            ));
        }
        let server = ServerHeaders::compile(proto)?;
        let upgrades = compile_upgrades(proto)?;
        let h1 = proto.http_protocol_options.as_ref();
        let h2 = H2Options::compile(
            proto.http2_protocol_options.as_ref(),
            "http2_protocol_options",
        )?;
        let h2_allow_connect = proto
            .http2_protocol_options
            .as_ref()
            .is_some_and(|o| o.allow_connect);
        let access_logs = crate::access_log::compile_all(&proto.access_log, "access_log", store)?;
        #[allow(deprecated)] // the top-level form is deprecated, still honoured by Envoy
        let legacy_on_new_request = proto.flush_access_log_on_new_request;
        let options_on_new_request = proto
            .access_log_options
            .as_ref()
            .is_some_and(|o| o.flush_access_log_on_new_request);
        if legacy_on_new_request && options_on_new_request {
            return Err(ConfigError::new(
                "access_log_options.flush_access_log_on_new_request",
                "Only one of flush_access_log_on_new_request or access_log_options.flush_access_log_on_new_request can be specified.",
            ));
        }
        let local_address = crate::server::local_info::local_address();
        let internal_addresses =
            crate::http::conn_manager::internal_address::InternalAddresses::compile(
                proto.internal_address_config.as_ref(),
                "internal_address_config",
            )?;
        let original_ip = crate::http::conn_manager::original_ip::OriginalIpDetection::compile(
            &proto.original_ip_detection_extensions,
            proto.use_remote_address.as_ref().is_some_and(|b| b.value),
            proto.xff_num_trusted_hops,
        )?;
        let early_header_mutations =
            crate::http::conn_manager::early_header_mutation::EarlyHeaderMutations::compile(
                &proto.early_header_mutation_extensions,
            )?;
        let request_id = crate::http::conn_manager::request_id::RequestIdOptions::compile(
            proto.request_id_extension.as_ref(),
            "request_id_extension",
        )?;
        let timeouts = StreamTimeouts::compile(proto)?;
        Ok(HcmConfig {
            tracing: proto
                .tracing
                .as_ref()
                .map(|t| {
                    crate::tracers::HttpTracing::compile(t, egress, &proto.stat_prefix, store)
                        .map(|t| Arc::new(t.with_request_id(request_id)))
                })
                .transpose()?,
            stat_prefix: proto.stat_prefix.clone(),
            routes,
            codec,
            server_name: server.name,
            server_header: server.transformation,
            use_remote_address: proto.use_remote_address.as_ref().is_some_and(|b| b.value),
            local_address,
            xff_num_trusted_hops: proto.xff_num_trusted_hops,
            original_ip,
            early_header_mutations,
            internal_addresses,
            skip_xff_append: proto.skip_xff_append,
            client_cert: crate::http::conn_manager::client_cert::ClientCertPolicy::compile(
                proto.forward_client_cert_details,
                proto.set_current_client_cert_details.as_ref(),
            )?,
            via: server.via,
            generate_request_id: proto.generate_request_id.as_ref().is_none_or(|b| b.value),
            preserve_external_request_id: proto.preserve_external_request_id,
            always_set_request_id_in_response: proto.always_set_request_id_in_response,
            request_timeout: timeouts.request,
            request_headers_timeout: timeouts.request_headers,
            stream_idle_timeout: timeouts.stream_idle,
            delayed_close_timeout: timeouts.delayed_close,
            idle_timeout: common.idle_timeout,
            max_connection_duration: common.max_connection_duration,
            max_stream_duration: common.max_stream_duration,
            max_headers_count: common.max_headers_count,
            max_requests_per_connection: common.max_requests_per_connection,
            underscores: common.underscores,
            max_request_headers_kb,
            normalize_path: proto.normalize_path.as_ref().is_some_and(|b| b.value),
            merge_slashes: proto.merge_slashes,
            escaped_slashes: escaped_slashes(proto),
            strip_trailing_host_dot: proto.strip_trailing_host_dot,
            strip_port: strip_port(proto),
            accept_http_10: h1.is_some_and(|o| o.accept_http_10),
            h1_key_format: KeyFormat::compile(h1, "http_protocol_options")?,
            h1_trailers: h1.is_some_and(|o| o.enable_trailers),
            allow_chunked_length: h1.is_some_and(|o| o.allow_chunked_length),
            default_host_for_http_10: h1
                .map(|o| o.default_host_for_http_10.clone())
                .filter(|s| !s.is_empty()),
            upgrades,
            suppress_envoy_headers: chain.suppress_envoy_headers,
            controls: chain.controls,
            filters: chain.filters,
            compressors: chain.compressors,
            h2,
            h2_allow_connect,
            access_logs,
            log_on_new_request: legacy_on_new_request || options_on_new_request,
            stats: HttpStats::new(store, &proto.stat_prefix),
            store: store.clone(),
        })
    }

    /// Every cluster the inline route table may route to.
    pub fn cluster_names(&self) -> Vec<String> {
        match &self.routes {
            RouteSource::Static(t) => t.cluster_names(),
            RouteSource::Rds(_) => Vec::new(),
        }
    }
}

/// `stat_prefix` is required, and the fields Courier does not implement are refused by
/// name rather than ignored.
#[allow(deprecated)] // deprecated fields are still refused by name
fn check_supported(proto: &HttpConnectionManager) -> Result<(), ConfigError> {
    if proto.stat_prefix.is_empty() {
        return Err(ConfigError::new(
            "stat_prefix",
            "value length must be at least 1 characters",
        ));
    }
    for (field, set) in [
        (
            "http3_protocol_options",
            proto.http3_protocol_options.is_some(),
        ),
        ("local_reply_config", proto.local_reply_config.is_some()),
        (
            "typed_header_validation_config",
            proto.typed_header_validation_config.is_some(),
        ),
        (
            "path_normalization_options",
            proto.path_normalization_options.is_some(),
        ),
        ("proxy_status_config", proto.proxy_status_config.is_some()),
        // Not acted on: refused rather than ignored.
        (
            "access_log_flush_interval",
            proto.access_log_flush_interval.is_some(),
        ),
        (
            "access_log_options.access_log_flush_interval",
            proto
                .access_log_options
                .as_ref()
                .is_some_and(|o| o.access_log_flush_interval.is_some()),
        ),
        (
            "access_log_options.flush_log_on_tunnel_successfully_established",
            proto
                .access_log_options
                .as_ref()
                .is_some_and(|o| o.flush_log_on_tunnel_successfully_established),
        ),
        ("drain_timeout", proto.drain_timeout.is_some()),
        ("stream_flush_timeout", proto.stream_flush_timeout.is_some()),
        (
            "stream_error_on_invalid_http_message",
            proto.stream_error_on_invalid_http_message.is_some(),
        ),
        (
            "http_protocol_options.allow_absolute_url",
            proto
                .http_protocol_options
                .as_ref()
                .and_then(|o| o.allow_absolute_url)
                .is_some_and(|v| !v.value),
        ),
        (
            "http_protocol_options.override_stream_error_on_invalid_http_message",
            proto
                .http_protocol_options
                .as_ref()
                .is_some_and(|o| o.override_stream_error_on_invalid_http_message.is_some()),
        ),
        (
            "http_protocol_options.send_fully_qualified_url",
            proto
                .http_protocol_options
                .as_ref()
                .is_some_and(|o| o.send_fully_qualified_url),
        ),
        (
            "http_protocol_options.allow_custom_methods",
            proto
                .http_protocol_options
                .as_ref()
                .is_some_and(|o| o.allow_custom_methods),
        ),
    ] {
        if set {
            return Err(ConfigError::unsupported(field));
        }
    }
    Ok(())
}

/// `route_config` (compiled here, its errors under `route_config`) or `rds` (its
/// subscription checked; the routes come later); `scoped_routes` is refused.
fn compile_routes(
    proto: &HttpConnectionManager,
    store: &Store,
) -> Result<RouteSource, ConfigError> {
    match &proto.route_specifier {
        Some(RouteSpecifier::RouteConfig(rc)) => Ok(RouteSource::Static(Arc::new(
            RouteTable::compile(rc, store, &crate::filters::http::HTTP_FILTERS)
                .map_err(|e| e.at("route_config"))?,
        ))),
        Some(RouteSpecifier::Rds(rds)) => {
            if rds.route_config_name.is_empty() {
                return Err(ConfigError::new(
                    "rds.route_config_name",
                    "value length must be at least 1 characters",
                ));
            }
            let Some(config_source) = &rds.config_source else {
                return Err(ConfigError::new("rds.config_source", "value is required"));
            };
            crate::config::validate_config_source(config_source)
                .map_err(|e| e.at("rds.config_source"))?;
            Ok(RouteSource::Rds(Box::new(RdsSubscription {
                route_config_name: rds.route_config_name.clone(),
                config_source: config_source.clone(),
            })))
        }
        Some(RouteSpecifier::ScopedRoutes(_)) => Err(ConfigError::unsupported("scoped_routes")),
        None => Err(ConfigError::new(
            "route_specifier",
            "one of rds or route_config is required",
        )),
    }
}

/// `codec_type`.
fn compile_codec(codec_type: i32) -> Result<Codec, ConfigError> {
    match CodecType::try_from(codec_type) {
        Ok(CodecType::Auto) => Ok(Codec::Auto),
        Ok(CodecType::Http1) => Ok(Codec::Http1),
        Ok(CodecType::Http2) => Ok(Codec::Http2),
        _ => Err(ConfigError::unsupported("codec_type")),
    }
}

/// `http_filters`, compiled: the filters before the router, and the router's own settings.
struct FilterChain {
    filters: Vec<ChainFilter>,
    /// The compressor filters' places in `filters`.
    compressors: Vec<usize>,
    /// The router's `suppress_envoy_headers`.
    suppress_envoy_headers: bool,
    /// The router's request controls.
    controls: ControlOptions,
}

impl FilterChain {
    /// Each filter through the HTTP filter registry (an optional unknown one skipped), up
    /// to the router, which must end the chain.
    fn compile(proto: &HttpConnectionManager, store: &Store) -> Result<FilterChain, ConfigError> {
        let mut suppress_envoy_headers = false;
        let mut controls = ControlOptions::default();
        let mut filters = Vec::new();
        let mut saw_router = false;
        for (i, f) in proto.http_filters.iter().enumerate() {
            let path = format!("http_filters[{i}]");
            if saw_router {
                return Err(ConfigError::new(
                    path,
                    format!("Error: terminal filter named envoy.filters.http.router of type {ROUTER_TYPE} must be the last filter in a http filter chain."),
                ));
            }
            let type_name = match &f.config_type {
                Some(http_filter::ConfigType::TypedConfig(any)) => {
                    courier_proto::type_url::message_name(&any.type_url).to_string()
                }
                Some(_) => {
                    return Err(ConfigError::unsupported(format!("{path}.config_discovery")))
                }
                None => String::new(),
            };
            let is_router = type_name == ROUTER_TYPE
                || (type_name.is_empty() && f.name == "envoy.filters.http.router");
            if is_router {
                if let Some(http_filter::ConfigType::TypedConfig(any)) = &f.config_type {
                    (suppress_envoy_headers, controls) = compile_router(any, &path)?;
                }
                saw_router = true;
                continue;
            }
            let Some(filter) = build_filter(f, &path, &proto.stat_prefix, store)? else {
                continue;
            };
            filters.push(ChainFilter {
                off_by_default: f.disabled,
                filter,
            });
        }
        let compressors = filters
            .iter()
            .enumerate()
            .filter(|(_, f)| matches!(f.filter, HttpFilter::Compressor(_)))
            .map(|(i, _)| i)
            .collect();
        if !saw_router {
            return Err(ConfigError::new(
                "http_filters",
                "a terminal http filter is required: the last filter must be envoy.filters.http.router",
            ));
        }
        Ok(FilterChain {
            filters,
            compressors,
            suppress_envoy_headers,
            controls,
        })
    }
}

/// The router's typed config: its `suppress_envoy_headers` and request controls
/// (`upstream_http_filters` are refused).
fn compile_router(
    any: &courier_proto::google::protobuf::Any,
    path: &str,
) -> Result<(bool, ControlOptions), ConfigError> {
    let r: Router = courier_proto::unpack_any(any)
        .map_err(|e| ConfigError::new(format!("{path}.typed_config"), e.to_string()))?;
    let controls = ControlOptions::compile(&r, &format!("{path}.typed_config"))?;
    if !r.upstream_http_filters.is_empty() {
        return Err(ConfigError::unsupported(format!(
            "{path}.typed_config.upstream_http_filters"
        )));
    }
    Ok((r.suppress_envoy_headers, controls))
}

/// A filter of the chain other than the router, built by its factory in the HTTP filter
/// registry; `None` for an optional filter the registry does not know.
fn build_filter(
    f: &HttpFilterProto,
    path: &str,
    stat_prefix: &str,
    store: &Store,
) -> Result<Option<HttpFilter>, ConfigError> {
    let config = match &f.config_type {
        Some(http_filter::ConfigType::TypedConfig(any)) => Some(any),
        _ => None,
    };
    let at = format!("{path}.typed_config");
    let Some(found) = crate::filters::http::CHAIN.resolve(config, &f.name, f.is_optional, path)?
    else {
        return Ok(None);
    };
    let filter = (found.factory.build)(&crate::filters::http::FilterArgs {
        name: &f.name,
        config: found.config.as_ref(),
        path: &at,
        stat_prefix,
        store,
    })?;
    Ok(Some(filter))
}

/// `common_http_protocol_options`, as the connection manager reads them.
struct CommonOptions {
    idle_timeout: Option<Duration>,
    max_connection_duration: Option<Duration>,
    max_stream_duration: Option<Duration>,
    max_headers_count: usize,
    max_requests_per_connection: Option<u32>,
    underscores: UnderscoreAction,
}

impl CommonOptions {
    /// The options with Envoy's defaults (an idle timeout of 1 h, 100 headers); a zero
    /// duration turns its limit off.
    fn compile(
        common: Option<&courier_proto::envoy::config::core::v3::HttpProtocolOptions>,
    ) -> Result<CommonOptions, ConfigError> {
        let idle_timeout = optional_duration(
            common.and_then(|c| c.idle_timeout.as_ref()),
            Some(Duration::from_secs(3600)),
            "common_http_protocol_options.idle_timeout",
        )?;
        let max_connection_duration = optional_duration(
            common.and_then(|c| c.max_connection_duration.as_ref()),
            None,
            "common_http_protocol_options.max_connection_duration",
        )?;
        let max_stream_duration = optional_duration(
            common.and_then(|c| c.max_stream_duration.as_ref()),
            None,
            "common_http_protocol_options.max_stream_duration",
        )?;
        let max_headers_count = common
            .and_then(|c| c.max_headers_count.as_ref())
            .map_or(100, |v| v.value as usize);
        if max_headers_count == 0 {
            return Err(ConfigError::new(
                "common_http_protocol_options.max_headers_count",
                "value must be greater than or equal to 1",
            ));
        }
        let underscores = match common.map(|c| c.headers_with_underscores_action) {
            None => UnderscoreAction::Allow,
            Some(a) => match HeadersWithUnderscoresAction::try_from(a) {
                Ok(HeadersWithUnderscoresAction::Allow) => UnderscoreAction::Allow,
                Ok(HeadersWithUnderscoresAction::RejectRequest) => UnderscoreAction::Reject,
                Ok(HeadersWithUnderscoresAction::DropHeader) => UnderscoreAction::Drop,
                Err(_) => {
                    return Err(ConfigError::unsupported(
                        "common_http_protocol_options.headers_with_underscores_action",
                    ))
                }
            },
        };
        Ok(CommonOptions {
            idle_timeout,
            max_connection_duration,
            max_stream_duration,
            max_headers_count,
            max_requests_per_connection: common
                .and_then(|c| c.max_requests_per_connection.as_ref())
                .map(|v| v.value)
                .filter(|v| *v > 0),
            underscores,
        })
    }
}

/// `server_name` (default `envoy`), `server_header_transformation` and `via`.
struct ServerHeaders {
    name: HeaderValue,
    transformation: ServerHeaderTransformation,
    via: Option<HeaderValue>,
}

impl ServerHeaders {
    fn compile(proto: &HttpConnectionManager) -> Result<ServerHeaders, ConfigError> {
        let name = if proto.server_name.is_empty() {
            HeaderValue::from_static("envoy")
        } else {
            HeaderValue::from_str(&proto.server_name)
                .map_err(|_| ConfigError::new("server_name", "invalid header value"))?
        };
        let transformation =
            ServerHeaderTransformation::try_from(proto.server_header_transformation)
                .map_err(|_| ConfigError::new("server_header_transformation", "unknown value"))?;
        let via = (!proto.via.is_empty())
            .then(|| {
                HeaderValue::from_str(&proto.via)
                    .map_err(|_| ConfigError::new("via", "invalid header value"))
            })
            .transpose()?;
        Ok(ServerHeaders {
            name,
            transformation,
            via,
        })
    }
}

/// The upgrade types `upgrade_configs` enables, lower-case (their `filters` are refused).
fn compile_upgrades(proto: &HttpConnectionManager) -> Result<Vec<String>, ConfigError> {
    let mut upgrades = Vec::new();
    for (i, u) in proto.upgrade_configs.iter().enumerate() {
        if !u.filters.is_empty() {
            return Err(ConfigError::unsupported(format!(
                "upgrade_configs[{i}].filters"
            )));
        }
        if u.enabled.as_ref().is_none_or(|b| b.value) {
            upgrades.push(u.upgrade_type.to_ascii_lowercase());
        }
    }
    Ok(upgrades)
}

/// The stream's timeouts: `request_timeout` and `request_headers_timeout` (default off),
/// `stream_idle_timeout` (default 5 min), `delayed_close_timeout` (default 1 s); 0 is off.
struct StreamTimeouts {
    request: Option<Duration>,
    request_headers: Option<Duration>,
    stream_idle: Option<Duration>,
    delayed_close: Option<Duration>,
}

impl StreamTimeouts {
    fn compile(proto: &HttpConnectionManager) -> Result<StreamTimeouts, ConfigError> {
        Ok(StreamTimeouts {
            request: optional_duration(proto.request_timeout.as_ref(), None, "request_timeout")?,
            request_headers: optional_duration(
                proto.request_headers_timeout.as_ref(),
                None,
                "request_headers_timeout",
            )?,
            stream_idle: optional_duration(
                proto.stream_idle_timeout.as_ref(),
                Some(Duration::from_secs(300)),
                "stream_idle_timeout",
            )?,
            delayed_close: optional_duration(
                proto.delayed_close_timeout.as_ref(),
                Some(Duration::from_secs(1)),
                "delayed_close_timeout",
            )?,
        })
    }
}

/// `path_with_escaped_slashes_action` (Envoy's implementation-specific default keeps them).
fn escaped_slashes(proto: &HttpConnectionManager) -> EscapedSlashes {
    match proto.path_with_escaped_slashes_action() {
        PathWithEscapedSlashesAction::ImplementationSpecificDefault
        | PathWithEscapedSlashesAction::KeepUnchanged => EscapedSlashes::Keep,
        PathWithEscapedSlashesAction::RejectRequest => EscapedSlashes::Reject,
        PathWithEscapedSlashesAction::UnescapeAndRedirect => EscapedSlashes::Redirect,
        PathWithEscapedSlashesAction::UnescapeAndForward => EscapedSlashes::Forward,
    }
}

/// `strip_any_host_port` (`Some(true)`) or `strip_matching_host_port` (`Some(false)`).
fn strip_port(proto: &HttpConnectionManager) -> Option<bool> {
    match proto.strip_port_mode {
        Some(StripPortMode::StripAnyHostPort(true)) => Some(true),
        _ if proto.strip_matching_host_port => Some(false),
        _ => None,
    }
}

impl HcmConfig {
    /// The HTTP/1.1 server codec's settings.
    pub fn h1_settings(&self) -> H1Settings {
        H1Settings {
            max_headers: self.max_headers_count,
            max_head_bytes: self.max_request_headers_kb as usize * 1024,
            accept_http_10: self.accept_http_10,
            allow_chunked_length: self.allow_chunked_length,
            delayed_close_timeout: self.delayed_close_timeout,
            request_headers_timeout: self.request_headers_timeout,
            stream_idle_timeout: self.stream_idle_timeout,
            request_timeout: self.request_timeout,
            key_format: self.h1_key_format,
            trailers: self.h1_trailers,
        }
    }

    /// A cluster its inline route configuration names that `known` does not (see
    /// [`RouteTable::unknown_cluster`]).
    pub fn unknown_cluster(&self, known: &dyn Fn(&str) -> bool) -> Option<ConfigError> {
        match &self.routes {
            RouteSource::Static(t) => t.unknown_cluster(true, known).map(|e| e.at("route_config")),
            RouteSource::Rds(_) => None,
        }
    }

    /// The RDS subscription the connection manager needs (none for inline routes).
    pub fn rds(&self) -> Option<&RdsSubscription> {
        match &self.routes {
            RouteSource::Rds(rds) => Some(rds),
            RouteSource::Static(_) => None,
        }
    }
}
