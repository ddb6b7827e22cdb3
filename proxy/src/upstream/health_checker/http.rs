//! HTTP health checks: a request to the host, judged by its status (Envoy's
//! `HttpHealthCheckerImpl`).

use std::net::SocketAddr;

use bytes::Bytes;
use courier_proto::envoy::config::core::v3::health_check::HttpHealthCheck;
use courier_proto::envoy::config::core::v3::RequestMethod;
use courier_proto::envoy::r#type::v3::{CodecClientType, Int64Range};
use http_body_util::{BodyExt, Full};

use super::{FailureKind, Outcome};
use crate::config::ConfigError;
use crate::protocol::header_mutations::{FormatContext, HeaderMutations};

/// Envoy's default `response_buffer_size`.
const DEFAULT_RESPONSE_BUFFER: usize = 1024;

/// A compiled `http_health_check`.
#[derive(Debug)]
pub struct HttpCheck {
    /// The `Host` sent: `host`, else the cluster's name.
    pub host: String,
    /// `path`.
    pub path: String,
    /// `method` (GET by default).
    pub method: http::Method,
    /// `send`: the request body.
    pub send: Option<Bytes>,
    /// `receive`: what the response body must hold, in order.
    pub receive: Vec<Vec<u8>>,
    /// `response_buffer_size`: how much of the body is searched (0: all of it).
    pub response_buffer_size: usize,
    /// `request_headers_to_add` / `request_headers_to_remove`.
    pub headers: HeaderMutations,
    /// `expected_statuses` as half-open ranges (default `[200, 201)`).
    pub expected: Vec<(u16, u16)>,
    /// `retriable_statuses`.
    pub retriable: Vec<(u16, u16)>,
    /// `codec_client_type` HTTP2.
    pub http2: bool,
}

fn ranges(ranges: &[Int64Range], kind: &str, path: &str) -> Result<Vec<(u16, u16)>, ConfigError> {
    ranges
        .iter()
        .enumerate()
        .map(|(i, r)| {
            let at = format!("{path}[{i}]");
            if r.start >= r.end {
                return Err(ConfigError::new(at, format!("Invalid http {kind} status range: expecting start < end, but found start={} and end={}", r.start, r.end)));
            }
            if r.start < 100 {
                return Err(ConfigError::new(at, format!("Invalid http {kind} status range: expecting start >= 100, but found start={}", r.start)));
            }
            if r.end > 600 {
                return Err(ConfigError::new(at, format!("Invalid http {kind} status range: expecting end <= 600, but found end={}", r.end)));
            }
            Ok((r.start as u16, r.end as u16))
        })
        .collect()
}

fn in_ranges(status: u16, ranges: &[(u16, u16)]) -> bool {
    ranges.iter().any(|&(s, e)| status >= s && status < e)
}

impl HttpCheck {
    /// Compiles the check of cluster `cluster`.
    pub fn compile(h: &HttpHealthCheck, cluster: &str) -> Result<HttpCheck, ConfigError> {
        if h.service_name_matcher.is_some() {
            return Err(ConfigError::unsupported("service_name_matcher"));
        }
        if h.path.is_empty() {
            return Err(ConfigError::new(
                "path",
                "value length must be at least 1 characters",
            ));
        }
        if h.path.bytes().any(|b| b.is_ascii_control()) || h.path.parse::<http::Uri>().is_err() {
            return Err(ConfigError::new(
                "path",
                "value does not match regex pattern",
            ));
        }
        let method = match RequestMethod::try_from(h.method) {
            Ok(RequestMethod::MethodUnspecified | RequestMethod::Get) => http::Method::GET,
            Ok(RequestMethod::Head) => http::Method::HEAD,
            Ok(RequestMethod::Post) => http::Method::POST,
            Ok(RequestMethod::Put) => http::Method::PUT,
            Ok(RequestMethod::Delete) => http::Method::DELETE,
            Ok(RequestMethod::Options) => http::Method::OPTIONS,
            Ok(RequestMethod::Trace) => http::Method::TRACE,
            Ok(RequestMethod::Patch) => http::Method::PATCH,
            _ => {
                return Err(ConfigError::new(
                    "method",
                    "value must not be in list [CONNECT]",
                ))
            }
        };
        let send = match &h.send {
            None => None,
            Some(p) => {
                if matches!(
                    method,
                    http::Method::GET
                        | http::Method::HEAD
                        | http::Method::DELETE
                        | http::Method::TRACE
                ) {
                    return Err(ConfigError::new(
                        "send",
                        format!("HTTP health check cannot specify a request payload with method '{method}'. Only methods that support a request body (POST, PUT, PATCH, OPTIONS) can be used with payload."),
                    ));
                }
                Some(Bytes::from(super::payload(p, "send")?))
            }
        };
        let receive = h
            .receive
            .iter()
            .enumerate()
            .map(|(i, p)| super::payload(p, &format!("receive[{i}]")))
            .collect::<Result<Vec<_>, _>>()?;
        let response_buffer_size = h
            .response_buffer_size
            .as_ref()
            .map_or(DEFAULT_RESPONSE_BUFFER, |v| v.value as usize);
        let total: usize = receive.iter().map(Vec::len).sum();
        if response_buffer_size != 0 && total > response_buffer_size {
            return Err(ConfigError::new("receive", format!("The expected response length '{total}' is over than http health response buffer size '{response_buffer_size}'")));
        }
        let http2 = match CodecClientType::try_from(h.codec_client_type) {
            Ok(CodecClientType::Http1) => false,
            Ok(CodecClientType::Http2) => true,
            _ => return Err(ConfigError::unsupported("codec_client_type")),
        };
        Ok(HttpCheck {
            host: if h.host.is_empty() {
                cluster.to_string()
            } else {
                h.host.clone()
            },
            path: h.path.clone(),
            method,
            send,
            receive,
            response_buffer_size,
            headers: HeaderMutations::compile(
                &h.request_headers_to_add,
                &h.request_headers_to_remove,
                "request_headers_to_add",
                "request_headers_to_remove",
            )?,
            expected: {
                let r = ranges(&h.expected_statuses, "expected", "expected_statuses")?;
                if r.is_empty() {
                    vec![(200, 201)]
                } else {
                    r
                }
            },
            retriable: ranges(&h.retriable_statuses, "retriable", "retriable_statuses")?,
            http2,
        })
    }

    /// The request sent to `host` (`https` says whether the connection runs TLS).
    pub fn request(&self, host: SocketAddr, https: bool) -> http::Request<Full<Bytes>> {
        let mut headers = http::HeaderMap::new();
        if let Ok(v) = http::HeaderValue::from_str(&self.host) {
            headers.insert(http::header::HOST, v);
        }
        headers.insert(
            http::header::USER_AGENT,
            http::HeaderValue::from_static("Envoy/HC"),
        );
        let local = SocketAddr::from(([127, 0, 0, 1], 0));
        self.headers.apply(
            &mut headers,
            &FormatContext {
                remote: Some(local),
                local: Some(local),
                protocol: if self.http2 { "HTTP/2" } else { "HTTP/1.1" },
                upstream: Some(host),
                request: None,
                start: None,
            },
        );
        let body = self.send.clone().unwrap_or_default();
        if self.send.is_some() {
            headers.insert(
                http::header::CONTENT_LENGTH,
                http::HeaderValue::from(body.len()),
            );
        }
        let uri = if self.http2 {
            // HTTP/2 needs the scheme and authority in the URI (:scheme, :authority).
            let scheme = if https { "https" } else { "http" };
            format!("{scheme}://{}{}", self.host, self.path)
        } else {
            self.path.clone()
        };
        let mut req = http::Request::new(Full::new(body));
        *req.method_mut() = self.method.clone();
        *req.uri_mut() = uri.parse().unwrap_or_else(|_| http::Uri::from_static("/"));
        *req.headers_mut() = headers;
        req
    }

    /// Judges a response: its status, then its body.
    pub async fn judge(&self, resp: http::Response<hyper::body::Incoming>) -> (Outcome, bool) {
        let status = resp.status().as_u16();
        let close = resp
            .headers()
            .get(http::header::CONNECTION)
            .is_some_and(|v| v.as_bytes().eq_ignore_ascii_case(b"close"));
        let degraded = resp.headers().contains_key("x-envoy-degraded");
        let mut body = Vec::new();
        let mut incoming = resp.into_body();
        // Read to the end (the connection may be reused), keeping what `receive` needs.
        while let Some(frame) = incoming.frame().await {
            let Ok(frame) = frame else {
                return (
                    Outcome::Failure {
                        kind: FailureKind::Network,
                        retriable: false,
                        status: 0,
                    },
                    true,
                );
            };
            if let Some(data) = frame.data_ref() {
                if !self.receive.is_empty() {
                    let room = if self.response_buffer_size == 0 {
                        data.len()
                    } else {
                        self.response_buffer_size
                            .saturating_sub(body.len())
                            .min(data.len())
                    };
                    body.extend_from_slice(&data[..room]);
                }
            }
        }
        // The status first, as Envoy: a retriable status stays retriable whatever the body.
        if !in_ranges(status, &self.expected) {
            return (
                Outcome::Failure {
                    kind: FailureKind::Active,
                    retriable: in_ranges(status, &self.retriable),
                    status,
                },
                close,
            );
        }
        if !self.receive.is_empty() && !super::payload_matches(&self.receive, &body) {
            return (
                Outcome::Failure {
                    kind: FailureKind::Active,
                    retriable: false,
                    status,
                },
                close,
            );
        }
        (Outcome::Success { degraded }, close)
    }
}
