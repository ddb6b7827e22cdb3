//! The HTTP authorization service (`http_service`): the request's method, path (with
//! `path_prefix`, or `path_override`) and chosen fields sent to the service's cluster; a
//! `200` allows, a `5xx` is an error, anything else denies with the service's answer.

use std::time::Duration;

use bytes::Bytes;
use courier_proto::envoy::extensions::filters::http::ext_authz::v3 as pb;
use courier_proto::envoy::r#type::matcher::v3::ListStringMatcher;
use http::{HeaderMap, HeaderName, HeaderValue, Method, StatusCode};

use super::check_request;
use super::verdict::{Allowed, Denied, Verdict};
use crate::config::ConfigError;
use crate::http::route::StrMatch;
use crate::protocol::header_mutations::{FormatContext, ValueFormat};
use crate::protocol::message::{RequestMessage, ResponseMessage};

/// The field an allowing service lists the request's fields to remove in.
const HEADERS_TO_REMOVE: &str = "x-envoy-auth-headers-to-remove";

/// A compiled `http_service`.
pub struct HttpService {
    /// The service's cluster.
    pub cluster: String,
    /// `server_uri.timeout`.
    pub timeout: Duration,
    path_prefix: String,
    path_override: Option<String>,
    /// Fields of the request the service gets (besides Envoy's own four).
    request_allowed: Vec<StrMatch>,
    headers_to_add: Vec<(HeaderName, ValueFormat)>,
    upstream: Vec<StrMatch>,
    upstream_append: Vec<StrMatch>,
    /// `None`: every field but `host`.
    client: Option<Vec<StrMatch>>,
    client_on_success: Vec<StrMatch>,
}

fn any(list: &[StrMatch], name: &str) -> bool {
    list.iter().any(|m| m.matches(name))
}

impl HttpService {
    /// Compiles `http_service` at `path`; `allowed_headers` is the filter's own list of
    /// request fields the service gets.
    pub fn compile(
        proto: &pb::HttpService,
        allowed_headers: Option<&ListStringMatcher>,
        path: &str,
    ) -> Result<HttpService, ConfigError> {
        if proto.retry_policy.is_some() {
            return Err(ConfigError::unsupported(format!("{path}.retry_policy")));
        }
        let Some(uri) = &proto.server_uri else {
            return Err(ConfigError::new(
                format!("{path}.server_uri"),
                "value is required",
            ));
        };
        let at = format!("{path}.server_uri");
        if uri.uri.is_empty() {
            return Err(ConfigError::new(
                format!("{at}.uri"),
                "value length must be at least 1 characters",
            ));
        }
        let cluster = match &uri.http_upstream_type {
            Some(courier_proto::envoy::config::core::v3::http_uri::HttpUpstreamType::Cluster(
                c,
            )) if !c.is_empty() => c.clone(),
            _ => {
                return Err(ConfigError::new(
                    format!("{at}.cluster"),
                    "value length must be at least 1 characters",
                ))
            }
        };
        let Some(timeout) = &uri.timeout else {
            return Err(ConfigError::new(
                format!("{at}.timeout"),
                "value is required",
            ));
        };
        let timeout = crate::config::duration(timeout, &format!("{at}.timeout"))?;
        let request = proto.authorization_request.clone().unwrap_or_default();
        let rpath = format!("{path}.authorization_request");
        #[allow(deprecated)]
        let mut request_allowed = super::matcher_list(
            request.allowed_headers.as_ref(),
            &format!("{rpath}.allowed_headers"),
        )?;
        if let Some(list) = allowed_headers {
            request_allowed.extend(super::matcher_list(Some(list), "allowed_headers")?);
        }
        let mut headers_to_add = Vec::with_capacity(request.headers_to_add.len());
        for (i, h) in request.headers_to_add.iter().enumerate() {
            let hp = format!("{rpath}.headers_to_add[{i}]");
            let name = HeaderName::from_bytes(h.key.as_bytes()).map_err(|_| {
                ConfigError::new(
                    format!("{hp}.key"),
                    format!("invalid header name '{}'", h.key),
                )
            })?;
            let raw = if h.raw_value.is_empty() {
                h.value.clone()
            } else {
                String::from_utf8(h.raw_value.clone())
                    .map_err(|_| ConfigError::new(format!("{hp}.raw_value"), "not UTF-8"))?
            };
            headers_to_add.push((name, ValueFormat::parse(&raw, &format!("{hp}.value"))?));
        }
        let response = proto.authorization_response.clone().unwrap_or_default();
        let rp = format!("{path}.authorization_response");
        if response.dynamic_metadata_from_headers.is_some() {
            return Err(ConfigError::unsupported(format!(
                "{rp}.dynamic_metadata_from_headers"
            )));
        }
        let client = super::matcher_list(
            response.allowed_client_headers.as_ref(),
            &format!("{rp}.allowed_client_headers"),
        )?;
        Ok(HttpService {
            cluster,
            timeout,
            path_prefix: proto.path_prefix.clone(),
            path_override: (!proto.path_override.is_empty()).then(|| proto.path_override.clone()),
            request_allowed,
            headers_to_add,
            upstream: super::matcher_list(
                response.allowed_upstream_headers.as_ref(),
                &format!("{rp}.allowed_upstream_headers"),
            )?,
            upstream_append: super::matcher_list(
                response.allowed_upstream_headers_to_append.as_ref(),
                &format!("{rp}.allowed_upstream_headers_to_append"),
            )?,
            client: (!client.is_empty()).then_some(client),
            client_on_success: super::matcher_list(
                response.allowed_client_headers_on_success.as_ref(),
                &format!("{rp}.allowed_client_headers_on_success"),
            )?,
        })
    }

    /// Whether the service gets the request's field `name`: `authorization`, `:method`,
    /// `:path`, `:authority` and whether the body was cut always, the configured ones
    /// too.
    fn sends(&self, name: &str) -> bool {
        matches!(
            name,
            "authorization" | ":method" | ":path" | ":authority" | check_request::PARTIAL_BODY
        ) || any(&self.request_allowed, name)
    }

    /// The request to the service for a request whose fields the filter lets it see are
    /// `fields` (pseudo-headers first), with the buffered `body`.
    pub fn request(
        &self,
        fields: &[(String, String)],
        body: Option<&Bytes>,
        cx: &FormatContext<'_>,
    ) -> RequestMessage<Bytes> {
        let mut headers = HeaderMap::new();
        let body = body.cloned().unwrap_or_default();
        headers.insert(http::header::CONTENT_LENGTH, HeaderValue::from(body.len()));
        let (mut method, mut path, mut authority) = (Method::GET, String::from("/"), String::new());
        for (name, value) in fields {
            if !self.sends(name) {
                continue;
            }
            match name.as_str() {
                ":method" => method = Method::from_bytes(value.as_bytes()).unwrap_or(Method::GET),
                ":path" => {
                    path = match &self.path_override {
                        Some(p) => p.clone(),
                        None => format!("{}{value}", self.path_prefix),
                    }
                }
                ":authority" => authority.clone_from(value),
                "content-length" => {}
                n if n.starts_with(':') => {}
                _ => {
                    if let (Ok(k), Ok(v)) = (
                        HeaderName::from_bytes(name.as_bytes()),
                        HeaderValue::from_str(value),
                    ) {
                        headers.append(k, v);
                    }
                }
            }
        }
        // Envoy's async client marks its requests internal.
        headers.insert("x-envoy-internal", HeaderValue::from_static("true"));
        for (name, value) in &self.headers_to_add {
            if let Some(v) = value.render(cx) {
                headers.insert(name.clone(), v);
            }
        }
        RequestMessage {
            method,
            path,
            authority,
            headers,
            body,
        }
    }

    /// The decision the service's answer holds.
    pub fn verdict(&self, answer: &ResponseMessage) -> Verdict {
        let status = answer.head.status;
        if status.is_server_error() {
            return Verdict::Error;
        }
        let fields = answer
            .head
            .headers
            .iter()
            .filter(|(k, _)| k.as_str() != HEADERS_TO_REMOVE);
        if status == StatusCode::OK {
            let mut allowed = Allowed::default();
            for (k, v) in fields {
                // Envoy drops these from an allowing answer before matching.
                if matches!(
                    k.as_str(),
                    "date" | "content-length" | "content-type" | "x-envoy-upstream-service-time"
                ) {
                    continue;
                }
                if any(&self.upstream, k.as_str()) {
                    allowed.set.push((k.clone(), v.clone()));
                }
                if any(&self.upstream_append, k.as_str()) {
                    allowed.add.push((k.clone(), v.clone()));
                }
                if any(&self.client_on_success, k.as_str()) {
                    allowed.response.add.push((k.clone(), v.clone()));
                }
            }
            for v in answer.head.headers.get_all(HEADERS_TO_REMOVE) {
                let Ok(list) = v.to_str() else { continue };
                for name in list.split(',').map(str::trim).filter(|n| !n.is_empty()) {
                    if let Ok(n) = HeaderName::from_bytes(name.to_ascii_lowercase().as_bytes()) {
                        allowed.remove.push(n);
                    }
                }
            }
            return Verdict::Ok(Box::new(allowed));
        }
        let headers = fields
            .filter(|(k, _)| match &self.client {
                None => *k != http::header::HOST,
                Some(list) => {
                    matches!(
                        k.as_str(),
                        "content-length" | "www-authenticate" | "location"
                    ) || any(list, k.as_str())
                }
            })
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect();
        Verdict::Denied(Box::new(Denied {
            status,
            headers,
            body: answer.body.clone(),
        }))
    }
}
