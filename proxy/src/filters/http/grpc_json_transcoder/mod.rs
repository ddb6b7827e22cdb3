//! The gRPC-JSON transcoder (`envoy.filters.http.grpc_json_transcoder`): a JSON request
//! whose method and path a `google.api.http` rule maps to a unary gRPC method goes
//! upstream as that gRPC call, and its answer comes back as JSON.
//!
//! As Envoy 1.40 (`json_transcoder_filter.cc`, grpc-httpjson-transcoding; measured,
//! `tests/http_grpc_json_transcoder.rs`):
//!
//! - Config (off the request path): the FileDescriptorSet (`proto_descriptor` file or
//!   `proto_descriptor_bin`), each of `services` in it, each method's `google.api.http`
//!   rule and its `additional_bindings` (or, with `auto_mapping`, `POST /pkg.Svc/Method`
//!   with `body: "*"`) compiled to a path matcher.
//! - A gRPC request, or one no rule matches, passes untouched (unless
//!   `reject_unknown_method`: `404`). A binding (path variable, query parameter outside
//!   `ignored_query_parameters`) naming no field passes untouched too (unless
//!   `ignore_unknown_query_parameters` skips it, or `reject_unknown_query_parameters`
//!   answers `400`).
//! - A matched request loses its `content-length`, gets `content-type: application/grpc`,
//!   `x-envoy-original-path`, `x-envoy-original-method`, `:path /pkg.Svc/Method`,
//!   `:method POST`, `te: trailers`, and is routed again by its new path unless
//!   `match_incoming_request_route`. Its JSON body is read whole (up to
//!   `max_request_body_size`, else the connection's buffer limit: `413`) and sent as one
//!   framed message; a body that does not parse is a `400` with the parser's text.
//! - A gRPC answer (`200` with gRPC's content-type, or headers-only with `grpc-status`) is
//!   held whole (up to `max_response_body_size`); its message printed as JSON
//!   (`application/json`, `content-length`); its status the HTTP status
//!   (`grpcToHttpStatus`, `503` without one) with `grpc-status`/`grpc-message` in the
//!   head. With `convert_grpc_status`, an error without a body becomes a JSON
//!   `google.rpc.Status`.
//!
//! Streaming methods and `google.api.HttpBody` are refused by path (not built), as are
//! the options that only concern them or that Courier does not build.

mod request;
mod response;
mod template;

use std::pin::Pin;
use std::sync::Arc;

use bytes::{Bytes, BytesMut};
use courier_proto::envoy::extensions::filters::http::grpc_json_transcoder::v3::{
    grpc_json_transcoder::{DescriptorSet, UrlUnescapeSpec},
    GrpcJsonTranscoder,
};
use http::header::{self, HeaderName, HeaderValue};
use http::{Method, Request, Response, StatusCode, Version};
use hyper::body::Body as _;
use prost_reflect::{DescriptorPool, MessageDescriptor, ReflectMessage as _, Value};

use crate::config::ConfigError;
use crate::http::codec::body::ProxyBody;
use crate::http::conn_manager::local_reply::local_reply;
use crate::http::route::per_filter::{self, FilterConfigs};
use crate::protocol::grpc::{is_grpc, is_grpc_response};
use crate::protocol::grpc_frame::unary_message;
use crate::stats::Store;
use request::{resolve, BodyRule, RequestError};
use response::{grpc_to_http_status, parse_status, PrintOptions};
use template::Template;

/// The filter's config type (`typed_config`, and its per-route config).
pub const FILTER_TYPE: &str =
    "envoy.extensions.filters.http.grpc_json_transcoder.v3.GrpcJsonTranscoder";
/// The filter's well-known name.
pub const FILTER_NAME: &str = "envoy.filters.http.grpc_json_transcoder";

const GRPC_STATUS: HeaderName = HeaderName::from_static("grpc-status");
const GRPC_MESSAGE: HeaderName = HeaderName::from_static("grpc-message");
const GRPC_STATUS_DETAILS: HeaderName = HeaderName::from_static("grpc-status-details-bin");
const ORIGINAL_PATH: HeaderName = HeaderName::from_static("x-envoy-original-path");
const ORIGINAL_METHOD: HeaderName = HeaderName::from_static("x-envoy-original-method");

/// A connection manager's transcoder filter.
pub struct GrpcJsonTranscoderFilter {
    /// The filter's name in `http_filters`.
    pub name: String,
    config: Arc<Transcoder>,
}

/// One compiled config (the filter's, or a route's).
pub struct Transcoder {
    methods: Vec<MethodInfo>,
    bindings: Vec<Binding>,
    /// The custom verbs registered (a path's `:verb` is split off only for these).
    verbs: Vec<String>,
    ignored_query: Vec<String>,
    print: PrintOptions,
    match_incoming_route: bool,
    ignore_unknown_query: bool,
    convert_grpc_status: bool,
    unescape: UrlUnescapeSpec,
    unescape_plus: bool,
    reject_unknown_method: bool,
    reject_unknown_query: bool,
    max_request: Option<usize>,
    max_response: Option<usize>,
}

struct MethodInfo {
    grpc_path: HeaderValue,
    input: MessageDescriptor,
    output: MessageDescriptor,
}

struct Binding {
    method: usize,
    http_method: String,
    template: Template,
    body: BodyRule,
}

impl GrpcJsonTranscoderFilter {
    /// Compiles the filter's config.
    pub fn compile(
        name: &str,
        config: &GrpcJsonTranscoder,
        path: &str,
        _stat_prefix: &str,
        _store: &Store,
    ) -> Result<GrpcJsonTranscoderFilter, ConfigError> {
        Ok(GrpcJsonTranscoderFilter {
            name: name.to_string(),
            config: Arc::new(Transcoder::compile(config, path)?),
        })
    }
}

/// Envoy's config errors are the transcoder's own sentences.
fn err(path: &str, message: impl Into<String>) -> ConfigError {
    ConfigError::new(path, format!("transcoding_filter: {}", message.into()))
}

impl Transcoder {
    /// Compiles a `GrpcJsonTranscoder` (a filter's or a route's).
    pub fn compile(c: &GrpcJsonTranscoder, path: &str) -> Result<Transcoder, ConfigError> {
        for (set, field) in [
            (
                c.match_unregistered_custom_verb,
                "match_unregistered_custom_verb",
            ),
            (
                c.case_insensitive_enum_parsing,
                "case_insensitive_enum_parsing",
            ),
            (
                c.capture_unknown_query_parameters,
                "capture_unknown_query_parameters",
            ),
        ] {
            if set {
                return Err(ConfigError::unsupported(format!("{path}.{field}")));
            }
        }
        let print = c.print_options.unwrap_or_default();
        if print.stream_newline_delimited {
            return Err(ConfigError::unsupported(format!(
                "{path}.print_options.stream_newline_delimited"
            )));
        }
        if print.stream_sse_style_delimited {
            return Err(ConfigError::unsupported(format!(
                "{path}.print_options.stream_sse_style_delimited"
            )));
        }
        let validation = c.request_validation_options.unwrap_or_default();
        if validation.reject_binding_body_field_collisions {
            return Err(ConfigError::unsupported(format!(
                "{path}.request_validation_options.reject_binding_body_field_collisions"
            )));
        }
        let bytes: Bytes = match &c.descriptor_set {
            Some(DescriptorSet::ProtoDescriptor(file)) => std::fs::read(file)
                .map_err(|e| {
                    ConfigError::new(
                        format!("{path}.proto_descriptor"),
                        format!("unable to read {file}: {e}"),
                    )
                })?
                .into(),
            Some(DescriptorSet::ProtoDescriptorBin(b)) => Bytes::copy_from_slice(b),
            None => {
                return Err(err(path, "Unable to parse proto descriptor"));
            }
        };
        let pool = DescriptorPool::decode(bytes)
            .map_err(|e| err(path, format!("Unable to build proto descriptor pool: {e}")))?;
        let http_ext = pool.get_extension_by_name("google.api.http");
        let ignored_query: Vec<String> = c.ignored_query_parameters.clone();
        let mut t = Transcoder {
            methods: Vec::new(),
            bindings: Vec::new(),
            verbs: Vec::new(),
            ignored_query,
            print: PrintOptions {
                add_whitespace: print.add_whitespace,
                always_print_primitive_fields: print.always_print_primitive_fields,
                always_print_enums_as_ints: print.always_print_enums_as_ints,
                preserve_proto_field_names: print.preserve_proto_field_names,
            },
            match_incoming_route: c.match_incoming_request_route,
            ignore_unknown_query: c.ignore_unknown_query_parameters,
            convert_grpc_status: c.convert_grpc_status,
            unescape: UrlUnescapeSpec::try_from(c.url_unescape_spec)
                .unwrap_or(UrlUnescapeSpec::AllCharactersExceptReserved),
            unescape_plus: c.query_param_unescape_plus,
            reject_unknown_method: validation.reject_unknown_method,
            reject_unknown_query: validation.reject_unknown_query_parameters,
            max_request: c.max_request_body_size.map(|v| v.value as usize),
            max_response: c.max_response_body_size.map(|v| v.value as usize),
        };
        for (i, service_name) in c.services.iter().enumerate() {
            let Some(service) = pool.get_service_by_name(service_name) else {
                return Err(err(
                    path,
                    format!("Could not find '{service_name}' in the proto descriptor"),
                ));
            };
            for method in service.methods() {
                let rule = http_ext.as_ref().and_then(|ext| {
                    let options = method.options();
                    options
                        .has_extension(ext)
                        .then(|| options.get_extension(ext).into_owned())
                });
                let rule = match rule {
                    Some(Value::Message(m)) => Some(m),
                    _ if c.auto_mapping => None,
                    _ => continue,
                };
                let at = format!("{path}.services[{i}]");
                if method.is_client_streaming() || method.is_server_streaming() {
                    return Err(ConfigError::new(
                        at,
                        format!(
                            "not supported by Courier: streaming method {}",
                            method.full_name()
                        ),
                    ));
                }
                for desc in [method.input(), method.output()] {
                    if desc.full_name() == "google.api.HttpBody" {
                        return Err(ConfigError::new(
                            at,
                            format!(
                                "not supported by Courier: google.api.HttpBody in {}",
                                method.full_name()
                            ),
                        ));
                    }
                }
                let index = t.methods.len();
                let grpc_path = format!("/{}/{}", service.full_name(), method.name());
                t.methods.push(MethodInfo {
                    grpc_path: HeaderValue::from_str(&grpc_path)
                        .map_err(|_| err(path, format!("bad method name {grpc_path}")))?,
                    input: method.input(),
                    output: method.output(),
                });
                let cannot = || {
                    err(
                        path,
                        format!("Cannot register '{}' to path matcher", method.full_name()),
                    )
                };
                match rule {
                    None => t
                        .register(index, "POST", &grpc_path, "*")
                        .ok_or_else(cannot)?,
                    Some(rule) => {
                        let mut rules = vec![rule.clone()];
                        if let Some(Value::List(more)) =
                            rule.get_field_by_name("additional_bindings").as_deref()
                        {
                            rules.extend(more.iter().filter_map(|v| v.as_message().cloned()));
                        }
                        for r in rules {
                            t.register_rule(index, &r).ok_or_else(cannot)?;
                        }
                    }
                }
            }
        }
        Ok(t)
    }

    /// Registers one `HttpRule` (its pattern unset: nothing registered, as the library).
    fn register_rule(&mut self, method: usize, rule: &prost_reflect::DynamicMessage) -> Option<()> {
        let text = |name: &str| {
            rule.get_field_by_name(name)
                .and_then(|v| v.as_str().map(str::to_string))
                .unwrap_or_default()
        };
        let body = text("body");
        for verb in ["get", "put", "post", "delete", "patch"] {
            let field = rule.descriptor().get_field_by_name(verb)?;
            if rule.has_field(&field) {
                return self.register(method, &verb.to_ascii_uppercase(), &text(verb), &body);
            }
        }
        let field = rule.descriptor().get_field_by_name("custom")?;
        if rule.has_field(&field) {
            if let Value::Message(custom) = rule.get_field(&field).as_ref() {
                let get = |n: &str| {
                    custom
                        .get_field_by_name(n)
                        .and_then(|v| v.as_str().map(str::to_string))
                        .unwrap_or_default()
                };
                return self.register(method, &get("kind"), &get("path"), &body);
            }
        }
        Some(())
    }

    fn register(
        &mut self,
        method: usize,
        http_method: &str,
        pattern: &str,
        body: &str,
    ) -> Option<()> {
        let template = Template::parse(pattern)?;
        let input = &self.methods[method].input;
        let body = match body {
            "" => BodyRule::None,
            "*" => BodyRule::All,
            field => {
                let path: Vec<String> = field.split('.').map(str::to_string).collect();
                BodyRule::Field(resolve(input, &path).ok()?)
            }
        };
        if let Some(v) = &template.verb {
            if !self.verbs.contains(v) {
                self.verbs.push(v.clone());
            }
        }
        self.bindings.push(Binding {
            method,
            http_method: http_method.to_string(),
            template,
            body,
        });
        Some(())
    }

    /// The binding `method` and `path` (with its query) match, and what the request binds.
    fn lookup(&self, method: &str, path_and_query: &str) -> Lookup<'_> {
        let (path, query) = match path_and_query.split_once('?') {
            Some((p, q)) => (p, q),
            None => (path_and_query, ""),
        };
        let mut path = path;
        let mut verb = None;
        if let (Some(colon), slash) = (path.rfind(':'), path.rfind('/')) {
            if slash.is_none_or(|s| colon > s) && self.verbs.iter().any(|v| v == &path[colon + 1..])
            {
                verb = Some(&path[colon + 1..]);
                path = &path[..colon];
            }
        }
        let mut parts: Vec<&str> = match path.strip_prefix('/') {
            Some(p) => p.split('/').collect(),
            None => Vec::new(),
        };
        while parts.last() == Some(&"") {
            parts.pop();
        }
        let mut best: Option<(Vec<u8>, &Binding)> = None;
        let mut ambiguous = false;
        for b in &self.bindings {
            if b.http_method != method {
                continue;
            }
            let Some(rank) = b.template.matches(&parts, verb) else {
                continue;
            };
            match &best {
                Some((r, _)) if *r > rank => {}
                Some((r, _)) if *r == rank => ambiguous = true,
                _ => {
                    ambiguous = false;
                    best = Some((rank, b));
                }
            }
        }
        let Some((_, b)) = best.filter(|_| !ambiguous) else {
            return Lookup::NoMethod;
        };
        let input = &self.methods[b.method].input;
        let mut bound = Vec::new();
        for v in &b.template.variables {
            let end = v.end.unwrap_or(parts.len()).min(parts.len());
            let multi = v.end.is_none() || end - v.start > 1;
            let spec = if multi {
                self.unescape
            } else {
                UrlUnescapeSpec::AllCharacters
            };
            let value = parts[v.start.min(end)..end]
                .iter()
                .map(|p| unescape(p, spec, false))
                .collect::<Vec<_>>()
                .join("/");
            match resolve(input, &v.field_path) {
                Ok(fields) => bound.push((fields, value)),
                Err(_) if self.ignore_unknown_query => {}
                Err(e) => return Lookup::Unknown(e),
            }
        }
        for param in query.split('&') {
            let Some((name, value)) = param.split_once('=') else {
                continue;
            };
            if name.is_empty() || self.ignored_query.iter().any(|q| q == name) {
                continue;
            }
            let field_path: Vec<String> = name.split('.').map(str::to_string).collect();
            let value = unescape(value, UrlUnescapeSpec::AllCharacters, self.unescape_plus);
            match resolve(input, &field_path) {
                Ok(fields) => bound.push((fields, value)),
                Err(_) if self.ignore_unknown_query => {}
                Err(e) => return Lookup::Unknown(e),
            }
        }
        Lookup::Found(b, bound)
    }
}

enum Lookup<'a> {
    NoMethod,
    Unknown(RequestError),
    Found(
        &'a Binding,
        Vec<(Vec<prost_reflect::FieldDescriptor>, String)>,
    ),
}

/// RFC 6570's reserved characters, which a multi-segment variable keeps escaped by default.
fn is_reserved(c: u8) -> bool {
    b"!#$&'()*+,/:;=?@[]".contains(&c)
}

/// `%XX` decoded as `spec` says (and `+` as a space with `plus`).
fn unescape(s: &str, spec: UrlUnescapeSpec, plus: bool) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if plus && b[i] == b'+' {
            out.push(b' ');
            i += 1;
            continue;
        }
        if b[i] == b'%' && i + 2 < b.len() {
            let hex = |c: u8| (c as char).to_digit(16);
            if let (Some(h), Some(l)) = (hex(b[i + 1]), hex(b[i + 2])) {
                let c = (h * 16 + l) as u8;
                let keep = match spec {
                    UrlUnescapeSpec::AllCharactersExceptReserved => is_reserved(c),
                    UrlUnescapeSpec::AllCharactersExceptSlash => c == b'/',
                    UrlUnescapeSpec::AllCharacters => false,
                };
                if !keep {
                    out.push(c);
                    i += 3;
                    continue;
                }
            }
        }
        out.push(b[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// What the filter did with a request.
pub enum Transcoded {
    /// Not the filter's: it goes on untouched.
    Pass,
    /// Answered here.
    Reply(Box<Response<ProxyBody>>),
    /// Transcoded: the gRPC path it goes to (routed again by it unless `None`), and the
    /// response pass.
    Call {
        reroute: Option<String>,
        response: Box<TranscodeResponse>,
    },
}

/// A transcoded request's response pass.
pub struct TranscodeResponse {
    config: Arc<Transcoder>,
    method: usize,
    downstream_h2: bool,
}

impl GrpcJsonTranscoderFilter {
    /// The config that applies at these route levels (a route's own replaces the filter's).
    fn config_for(&self, levels: [&FilterConfigs; 3]) -> Arc<Transcoder> {
        per_filter::policy_arc::<Transcoder>(levels, &self.name)
            .unwrap_or_else(|| self.config.clone())
    }

    /// The request pass: `path` is the request's path and query as the filters see it;
    /// `buffer_limit` the connection's, for a body without `max_request_body_size`.
    pub async fn on_request(
        &self,
        levels: [&FilterConfigs; 3],
        req: &mut Request<ProxyBody>,
        path: &str,
        buffer_limit: usize,
    ) -> Transcoded {
        if is_grpc(req.headers()) {
            return Transcoded::Pass;
        }
        let config = self.config_for(levels);
        let (binding, bound) = match config.lookup(req.method().as_str(), path) {
            Lookup::Found(b, bound) => (b, bound),
            Lookup::NoMethod if config.reject_unknown_method => {
                let p = path.split('?').next().unwrap_or(path);
                return Transcoded::Reply(Box::new(local_reply(
                    StatusCode::NOT_FOUND,
                    &format!("Could not resolve {p} to a method."),
                )));
            }
            Lookup::Unknown(e) if config.reject_unknown_query => {
                return Transcoded::Reply(Box::new(local_reply(
                    StatusCode::BAD_REQUEST,
                    &e.to_string(),
                )));
            }
            Lookup::NoMethod | Lookup::Unknown(_) => return Transcoded::Pass,
        };
        let info = &config.methods[binding.method];
        let original_method = req.method().clone();
        let headers = req.headers_mut();
        headers.remove(header::CONTENT_LENGTH);
        headers.insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/grpc"),
        );
        if let Ok(v) = HeaderValue::from_str(path) {
            headers.insert(ORIGINAL_PATH, v);
        }
        if let Ok(v) = HeaderValue::from_str(original_method.as_str()) {
            headers.append(ORIGINAL_METHOD, v);
        }
        headers.insert(header::TE, HeaderValue::from_static("trailers"));
        *req.method_mut() = Method::POST;
        let mut parts = req.uri().clone().into_parts();
        parts.path_and_query = info.grpc_path.to_str().ok().and_then(|p| p.parse().ok());
        if let Ok(uri) = http::Uri::from_parts(parts) {
            *req.uri_mut() = uri;
        }
        let limit = config.max_request.unwrap_or(buffer_limit);
        let body = match &binding.body {
            BodyRule::None => Bytes::new(),
            _ => match gather(req.body_mut(), limit).await {
                Gathered::Whole(b, _) => b,
                Gathered::TooLarge => {
                    return Transcoded::Reply(Box::new(local_reply(
                        StatusCode::PAYLOAD_TOO_LARGE,
                        "Request rejected because the transcoder's internal buffer size exceeds the configured limit.",
                    )));
                }
                Gathered::Failed => {
                    return Transcoded::Reply(Box::new(local_reply(StatusCode::BAD_REQUEST, "")))
                }
            },
        };
        let message = match request::build(&info.input, &binding.body, &body, &bound) {
            Ok(m) => m,
            Err(e) => {
                tracing::debug!("grpc_json_transcoder: transcoding the request failed: {e}");
                return Transcoded::Reply(Box::new(local_reply(
                    StatusCode::BAD_REQUEST,
                    &e.to_string(),
                )));
            }
        };
        let mut framed = BytesMut::with_capacity(5 + message.len());
        framed.extend_from_slice(&[0]);
        framed.extend_from_slice(
            &u32::try_from(message.len())
                .unwrap_or(u32::MAX)
                .to_be_bytes(),
        );
        framed.extend_from_slice(&message);
        *req.body_mut() = ProxyBody::full(framed.freeze());
        let reroute = (!config.match_incoming_route)
            .then(|| info.grpc_path.to_str().unwrap_or_default().to_string());
        Transcoded::Call {
            reroute,
            response: Box::new(TranscodeResponse {
                method: binding.method,
                downstream_h2: req.version() >= Version::HTTP_2,
                config,
            }),
        }
    }
}

enum Gathered {
    Whole(Bytes, Option<http::HeaderMap>),
    TooLarge,
    Failed,
}

/// A body read whole (and its trailers), up to `limit` bytes.
async fn gather(body: &mut ProxyBody, limit: usize) -> Gathered {
    let mut buf = BytesMut::new();
    loop {
        if body.is_end_stream() {
            return Gathered::Whole(buf.freeze(), None);
        }
        let frame = std::future::poll_fn(|cx| Pin::new(&mut *body).poll_frame(cx)).await;
        match frame {
            None => return Gathered::Whole(buf.freeze(), None),
            Some(Err(_)) => return Gathered::Failed,
            Some(Ok(frame)) => match frame.into_data() {
                Ok(data) => {
                    if buf.len() + data.len() > limit {
                        return Gathered::TooLarge;
                    }
                    buf.extend_from_slice(&data);
                }
                Err(frame) => {
                    return Gathered::Whole(buf.freeze(), frame.into_trailers().ok());
                }
            },
        }
    }
}

impl TranscodeResponse {
    /// The response pass: a gRPC answer made JSON (anything else goes on as it is).
    pub async fn on_response(self, resp: &mut Response<ProxyBody>, buffer_limit: usize) {
        let end = resp.body().is_end_stream();
        if !is_grpc_response(resp.status().as_u16(), resp.headers(), end) {
            return;
        }
        let config = &self.config;
        let info = &config.methods[self.method];
        if end {
            // Trailers-only: the head is the trailers.
            let status = resp
                .headers()
                .get(&GRPC_STATUS)
                .and_then(|v| parse_status(v.as_bytes()));
            let headers = resp.headers().clone();
            if let Some(s) = status {
                if self.convert(resp, s, &headers, true) {
                    return;
                }
            }
            self.set_status(resp, status);
            self.finish_head(resp, 0);
            return;
        }
        resp.headers_mut().insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/json"),
        );
        let limit = config.max_response.unwrap_or(buffer_limit);
        let mut body = std::mem::replace(resp.body_mut(), ProxyBody::empty());
        let (data, trailers) = match gather(&mut body, limit).await {
            Gathered::Whole(d, t) => (d, t.unwrap_or_default()),
            Gathered::TooLarge => {
                *resp = local_reply(
                    StatusCode::INTERNAL_SERVER_ERROR,
                    "Response not transcoded because the transcoder's internal buffer size exceeds the configured limit.",
                );
                return;
            }
            Gathered::Failed => {
                *resp = local_reply(StatusCode::BAD_GATEWAY, "");
                return;
            }
        };
        let status = trailers
            .get(&GRPC_STATUS)
            .and_then(|v| parse_status(v.as_bytes()));
        if data.is_empty() {
            if let Some(s) = status {
                if self.convert(resp, s, &trailers, false) {
                    return;
                }
            }
        }
        let json = unary_message(&data)
            .and_then(|m| config.print.print(&info.output, &m))
            .unwrap_or_default();
        self.set_status(resp, status);
        if let Some(s) = status {
            resp.headers_mut().insert(GRPC_STATUS, HeaderValue::from(s));
        }
        if let Some(m) = trailers.get(&GRPC_MESSAGE) {
            resp.headers_mut().insert(GRPC_MESSAGE, m.clone());
        }
        self.finish_head(resp, json.len());
        *resp.body_mut() = ProxyBody::full(json);
    }

    fn set_status(&self, resp: &mut Response<ProxyBody>, status: Option<u64>) {
        let code = status.map_or(503, grpc_to_http_status);
        *resp.status_mut() =
            StatusCode::from_u16(code).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    }

    fn finish_head(&self, resp: &mut Response<ProxyBody>, len: usize) {
        if !self.downstream_h2 {
            resp.headers_mut().remove(header::TRAILER);
        }
        resp.headers_mut()
            .insert(header::CONTENT_LENGTH, HeaderValue::from(len));
    }

    /// `convert_grpc_status`: an error without a body becomes a JSON `google.rpc.Status`
    /// (its code and message; from `grpc-status-details-bin` when there is one).
    fn convert(
        &self,
        resp: &mut Response<ProxyBody>,
        status: u64,
        trailers: &http::HeaderMap,
        trailers_only: bool,
    ) -> bool {
        if !self.config.convert_grpc_status || status == 0 {
            return false;
        }
        let mut code = status as i64;
        let mut message = trailers
            .get(&GRPC_MESSAGE)
            .map(|m| {
                percent_encoding::percent_decode(m.as_bytes())
                    .decode_utf8_lossy()
                    .into_owned()
            })
            .unwrap_or_default();
        if let Some(details) = trailers.get(&GRPC_STATUS_DETAILS).and_then(|d| {
            use base64::Engine as _;
            base64::engine::general_purpose::STANDARD_NO_PAD
                .decode(
                    d.as_bytes()
                        .trim_ascii_end()
                        .strip_suffix(b"==")
                        .unwrap_or(d.as_bytes()),
                )
                .ok()
        }) {
            if let Ok(s) = <RpcStatus as prost::Message>::decode(details.as_slice()) {
                code = i64::from(s.code);
                message = s.message;
            }
        }
        let mut obj = serde_json::Map::new();
        if code != 0 || self.config.print.always_print_primitive_fields {
            obj.insert("code".into(), code.into());
        }
        if !message.is_empty() || self.config.print.always_print_primitive_fields {
            obj.insert("message".into(), message.into());
        }
        if self.config.print.always_print_primitive_fields {
            obj.insert("details".into(), serde_json::Value::Array(Vec::new()));
        }
        let value = serde_json::Value::Object(obj);
        let json = if self.config.print.add_whitespace {
            let mut out = Vec::new();
            let fmt = serde_json::ser::PrettyFormatter::with_indent(b" ");
            let mut ser = serde_json::Serializer::with_formatter(&mut out, fmt);
            let _ = serde::Serialize::serialize(&value, &mut ser);
            out.push(b'\n');
            out
        } else {
            serde_json::to_vec(&value).unwrap_or_default()
        };
        *resp.status_mut() = StatusCode::from_u16(grpc_to_http_status(status))
            .unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
        if trailers_only {
            resp.headers_mut().remove(GRPC_STATUS);
            resp.headers_mut().remove(GRPC_MESSAGE);
            resp.headers_mut().remove(GRPC_STATUS_DETAILS);
        }
        resp.headers_mut().insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/json"),
        );
        resp.headers_mut()
            .insert(header::CONTENT_LENGTH, HeaderValue::from(json.len()));
        *resp.body_mut() = ProxyBody::full(json);
        true
    }
}

/// `google.rpc.Status`'s code and message (its details are not printed).
#[derive(Clone, PartialEq, prost::Message)]
struct RpcStatus {
    #[prost(int32, tag = "1")]
    code: i32,
    #[prost(string, tag = "2")]
    message: String,
}
