//! The custom response filter (`envoy.filters.http.custom_response`): a response whose
//! status (or headers) a matcher picks is replaced by a policy's local reply.
//!
//! As Envoy 1.40 (measured, `tests/http_custom_response.rs`):
//!
//! - `custom_response_matcher` is the xDS matcher API ([`crate::matching`]) on the
//!   response: `HttpResponseStatusCodeMatchInput` (`"404"`),
//!   `HttpResponseStatusCodeClassMatchInput` (`"4xx"`) and `HttpResponseHeaderMatchInput`.
//!   Its actions are policies; `LocalResponsePolicy` is built.
//! - A `CustomResponse` on a route, virtual host or route configuration is matched first,
//!   the most specific first; the filter's own matcher when none of them picks a policy.
//! - The policy answers as Envoy's `sendLocalReply` does once the response has started:
//!   the response's headers and body are dropped; the status is `status_code`, else the
//!   response's; the body is `body` (none without it), `content-type: text/plain` when
//!   there is one and `response_headers_to_add` gave none; then the connection manager's
//!   own headers.
//! - It acts on whatever answers a request that reached the filter: an upstream's
//!   response, the router's local replies, a later filter's answer.
//!
//! - The reply's response code details are empty in the access log
//!   ([`crate::access_log::CLEARED_DETAILS`]); its flags stay.
//!
//! Refused by path: `RedirectPolicy` (a new request to another route), `body_format`,
//! `response_code_details_action`, and request inputs.
//!
//! Unlike Envoy, whose reply goes straight to the codec past the filters before this one
//! in the chain, the other filters' response marks still go on the reply (the connection
//! manager runs this pass first among them).

use bytes::Bytes;
use courier_proto::envoy::extensions::filters::http::custom_response::v3 as pb;
use courier_proto::envoy::extensions::http::custom_response::local_response_policy::v3 as local_pb;
use courier_proto::xds::core::v3::TypedExtensionConfig;
use http::{header, HeaderValue, Response, StatusCode};

use crate::config::ConfigError;
use crate::http::codec::body::ProxyBody;
use crate::http::conn_manager::local_reply::local_reply_bytes;
use crate::http::route::per_filter::{self, FilterConfigs};
use crate::matching::{Context, Matcher, MatchingData};
use crate::protocol::header_mutations::{FormatContext, HeaderMutations};

/// The filter's config type (also its per-route config's).
pub const FILTER_TYPE: &str = "envoy.extensions.filters.http.custom_response.v3.CustomResponse";
/// The filter's well-known name.
pub const FILTER_NAME: &str = "envoy.filters.http.custom_response";

const LOCAL_POLICY: &str =
    "envoy.extensions.http.custom_response.local_response_policy.v3.LocalResponsePolicy";
const REDIRECT_POLICY: &str =
    "envoy.extensions.http.custom_response.redirect_policy.v3.RedirectPolicy";

/// A compiled `LocalResponsePolicy`.
pub struct LocalPolicy {
    body: Bytes,
    status: Option<StatusCode>,
    headers: HeaderMutations,
}

impl LocalPolicy {
    fn compile(p: &local_pb::LocalResponsePolicy, path: &str) -> Result<LocalPolicy, ConfigError> {
        if p.body_format.is_some() {
            return Err(ConfigError::unsupported(format!("{path}.body_format")));
        }
        if p.response_code_details_action.is_some() {
            return Err(ConfigError::unsupported(format!(
                "{path}.response_code_details_action"
            )));
        }
        let status = match p.status_code {
            None => None,
            Some(s) if !(200..600).contains(&s.value) => {
                return Err(ConfigError::new(
                    format!("{path}.status_code"),
                    "value must be inside range [200, 600)",
                ))
            }
            Some(s) => Some(
                StatusCode::from_u16(s.value as u16)
                    .map_err(|e| ConfigError::new(format!("{path}.status_code"), e.to_string()))?,
            ),
        };
        if p.response_headers_to_add.len() > 1000 {
            return Err(ConfigError::new(
                format!("{path}.response_headers_to_add"),
                "value must contain no more than 1000 item(s)",
            ));
        }
        Ok(LocalPolicy {
            body: match &p.body {
                Some(ds) => crate::http::route::data_source(ds, &format!("{path}.body"))?,
                None => Bytes::new(),
            },
            status,
            headers: HeaderMutations::compile(
                &p.response_headers_to_add,
                &[],
                &format!("{path}.response_headers_to_add"),
                "",
            )?,
        })
    }

    /// The local reply that replaces `resp`: the policy's headers on fresh ones, then its
    /// length and (unless the policy gave one) its type, as Envoy's local reply.
    fn reply(&self, resp: &Response<ProxyBody>, cx: &FormatContext<'_>) -> Response<ProxyBody> {
        let status = self.status.unwrap_or(resp.status());
        let mut out = local_reply_bytes(status, self.body.clone());
        let mut headers = http::HeaderMap::new();
        self.headers.apply(&mut headers, cx);
        if self.body.is_empty() {
            headers.remove(header::CONTENT_TYPE);
        } else if !headers.contains_key(header::CONTENT_TYPE) {
            headers.insert(header::CONTENT_TYPE, HeaderValue::from_static("text/plain"));
        }
        headers.insert(header::CONTENT_LENGTH, HeaderValue::from(self.body.len()));
        *out.headers_mut() = headers;
        out
    }
}

/// A compiled `CustomResponse`: its matcher, if it has one.
pub struct CustomResponse {
    matcher: Option<Matcher<LocalPolicy>>,
}

impl CustomResponse {
    /// Compiles a `CustomResponse` at `path`.
    pub fn compile(p: &pb::CustomResponse, path: &str) -> Result<CustomResponse, ConfigError> {
        let matcher = p
            .custom_response_matcher
            .as_ref()
            .map(|m| {
                Matcher::compile(
                    m,
                    Context::HttpResponse,
                    &policy,
                    &format!("{path}.custom_response_matcher"),
                )
            })
            .transpose()?;
        Ok(CustomResponse { matcher })
    }

    fn pick(&self, data: &MatchingData<'_>) -> Option<&LocalPolicy> {
        self.matcher.as_ref()?.evaluate(data)
    }
}

/// A matcher's action: a policy.
fn policy(a: &TypedExtensionConfig, path: &str) -> Result<LocalPolicy, ConfigError> {
    let any = a
        .typed_config
        .as_ref()
        .ok_or_else(|| ConfigError::new(format!("{path}.typed_config"), "value is required"))?;
    let at = format!("{path}.typed_config");
    match courier_proto::type_url::message_name(&any.type_url) {
        LOCAL_POLICY => LocalPolicy::compile(&per_filter::unpack(any, &at)?, &at),
        REDIRECT_POLICY => Err(ConfigError::unsupported(format!(
            "{at} ({REDIRECT_POLICY})"
        ))),
        other => Err(ConfigError::new(
            at,
            format!("Didn't find a registered implementation for type: '{other}'"),
        )),
    }
}

/// A connection manager's custom response filter.
pub struct CustomResponseFilter {
    /// The filter's name in `http_filters`: its key in `typed_per_filter_config`.
    pub name: String,
    config: CustomResponse,
}

impl CustomResponseFilter {
    /// Compiles the filter named `name` (its `CustomResponse` at `path`).
    pub fn compile(
        name: &str,
        p: &pb::CustomResponse,
        path: &str,
    ) -> Result<CustomResponseFilter, ConfigError> {
        Ok(CustomResponseFilter {
            name: name.to_string(),
            config: CustomResponse::compile(p, path)?,
        })
    }

    /// The response pass: `resp` replaced when a policy picks it (the routes' configs
    /// in `levels`, the most specific first, then the filter's); whether one did.
    pub fn on_response(
        &self,
        levels: [&FilterConfigs; 3],
        resp: &mut Response<ProxyBody>,
        cx: &FormatContext<'_>,
    ) -> bool {
        let data = MatchingData {
            source: cx.remote.unwrap_or(UNSPECIFIED),
            direct_source: cx.remote.unwrap_or(UNSPECIFIED),
            destination: cx.local.unwrap_or(UNSPECIFIED),
            server_name: None,
            tls: None,
            transport_protocol: None,
            application_protocols: &[],
            request_headers: None,
            pseudo: None,
            response: Some((resp.status(), resp.headers())),
        };
        let picked = levels
            .iter()
            .filter_map(|l| l.policy::<CustomResponse>(&self.name))
            .find_map(|c| c.pick(&data))
            .or_else(|| self.config.pick(&data));
        match picked {
            Some(p) => {
                *resp = p.reply(resp, cx);
                true
            }
            None => false,
        }
    }
}

const UNSPECIFIED: std::net::SocketAddr = std::net::SocketAddr::V4(std::net::SocketAddrV4::new(
    std::net::Ipv4Addr::UNSPECIFIED,
    0,
));

#[cfg(test)]
mod tests {
    use super::*;

    fn compile(yaml: &str) -> Result<CustomResponse, ConfigError> {
        let p: pb::CustomResponse = courier_proto::from_yaml(yaml).expect("CustomResponse");
        CustomResponse::compile(&p, "f")
    }

    const STATUS: &str = "{ name: s, typed_config: { \"@type\": type.googleapis.com/envoy.type.matcher.v3.HttpResponseStatusCodeMatchInput } }";

    #[test]
    fn refusals_by_path() {
        let err = |policy: &str| {
            compile(&format!("{{ custom_response_matcher: {{ matcher_list: {{ matchers: [{{ predicate: {{ single_predicate: {{ input: {STATUS}, value_match: {{ exact: \"404\" }} }} }}, on_match: {{ action: {{ name: a, typed_config: {policy} }} }} }}] }} }} }}"))
                .err()
                .map(|e| e.path)
        };
        let at = "f.custom_response_matcher.matcher_list.matchers[0].on_match.action.typed_config";
        assert_eq!(
            err("{ \"@type\": type.googleapis.com/envoy.extensions.http.custom_response.local_response_policy.v3.LocalResponsePolicy, body_format: { text_format: x } }").as_deref(),
            Some(format!("{at}.body_format").as_str())
        );
        assert_eq!(
            err("{ \"@type\": type.googleapis.com/envoy.extensions.http.custom_response.local_response_policy.v3.LocalResponsePolicy, status_code: 100 }").as_deref(),
            Some(format!("{at}.status_code").as_str())
        );
        assert!(err("{ \"@type\": type.googleapis.com/envoy.extensions.http.custom_response.local_response_policy.v3.LocalResponsePolicy, status_code: 299 }").is_none());
        assert!(compile("{}").is_ok_and(|c| c.matcher.is_none()));
    }
}
