//! The custom response filter (`envoy.filters.http.custom_response`): a response whose
//! status (or headers) a matcher picks is replaced by a policy's local reply.
//!
//! As Envoy 1.40 (measured, `tests/http_custom_response.rs`,
//! `tests/http_custom_response_redirect.rs`):
//!
//! - `custom_response_matcher` is the xDS matcher API ([`crate::matching`]) on the
//!   response: `HttpResponseStatusCodeMatchInput` (`"404"`),
//!   `HttpResponseStatusCodeClassMatchInput` (`"4xx"`) and `HttpResponseHeaderMatchInput`.
//!   Its actions are policies: `LocalResponsePolicy` and `RedirectPolicy` are built.
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
//! - `RedirectPolicy` is an internal redirect (Envoy's `recreateStream`): the request, as
//!   the router sent it upstream (the route's added headers, `x-envoy-original-path`
//!   kept, as Envoy's router changes the request in place), goes again, as a `GET`
//!   without a body, to `uri` (its `#fragment` dropped) or where `redirect_action` sends
//!   it (Envoy's `newUri`), with `request_headers_to_add`; the connection manager routes
//!   and filters it anew. The new answer is returned with `response_headers_to_add` and
//!   the status `status_code`, else the first response's. It is never matched again (no
//!   loop). A new request no route takes is not made: the first response passes and
//!   `custom_response_redirect_no_route` counts (under `http.<stat_prefix>.` for the
//!   filter's policies, at the root for a route's); `custom_response_invalid_uri`
//!   counts a `redirect_action` that makes no URI. A request whose body had not all
//!   arrived is not redirected. The connection manager logs the first request as
//!   `internal_redirect` and counts the new one in `downstream_rq_total`.
//!   Unlike Envoy, a body the router buffered for retries is not sent again (Envoy sends
//!   it, with the `GET`).
//!
//! - `LocalResponsePolicy.body_format` is rendered as an access log format (the command
//!   operators Courier's access logs serve) against the request and the response being
//!   replaced (`%RESPONSE_CODE%` is its status); `content_type` changes nothing (the
//!   reply is `text/plain` as Envoy's). A reply `400` closes an HTTP/1 connection (the
//!   connection manager's pass), as Envoy's local reply.
//!
//! Refused by path: `response_code_details_action`,
//! `modify_request_headers_action` (Envoy has no such extension built in), and request
//! inputs. Envoy refuses `redirect_action`'s `prefix_rewrite` and `regex_rewrite`, a `uri`
//! that is not absolute and a `path_redirect` with a `#fragment`; so does Courier.
//!
//! Unlike Envoy, whose reply goes straight to the codec past the filters before this one
//! in the chain, the other filters' response marks still go on the reply (the connection
//! manager runs this pass first among them).

use std::sync::Arc;

use bytes::Bytes;
use courier_proto::envoy::extensions::filters::http::custom_response::v3 as pb;
use courier_proto::envoy::extensions::http::custom_response::local_response_policy::v3 as local_pb;
use courier_proto::envoy::extensions::http::custom_response::redirect_policy::v3 as redirect_pb;
use courier_proto::xds::core::v3::TypedExtensionConfig;
use http::{header, HeaderMap, HeaderValue, Method, Request, Response, StatusCode, Version};

use crate::access_log::BodyFormat;
use crate::config::ConfigError;
use crate::http::codec::body::ProxyBody;
use crate::http::conn_manager::local_reply::local_reply_bytes;
use crate::http::route::per_filter::{self, FilterConfigs};
use crate::http::route::Redirect;
use crate::matching::{Context, Matcher, MatchingData};
use crate::protocol::header_mutations::{FormatContext, HeaderMutations};
use crate::stats::{Counter, Store};

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
    /// `body_format`, rendered over `body`.
    format: Option<BodyFormat>,
    status: Option<StatusCode>,
    headers: HeaderMutations,
}

/// Renders a `body_format` for the request (when kept) and the response being
/// replaced (its headers and status): the connection manager knows the rest of the
/// request.
pub type RenderBody<'a> =
    &'a dyn Fn(&BodyFormat, Option<&RequestHead>, &HeaderMap, StatusCode) -> String;

impl LocalPolicy {
    fn compile(p: &local_pb::LocalResponsePolicy, path: &str) -> Result<LocalPolicy, ConfigError> {
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
            format: p
                .body_format
                .as_ref()
                .map(|f| BodyFormat::compile(f, &format!("{path}.body_format")))
                .transpose()?,
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
    fn reply(
        &self,
        resp: &Response<ProxyBody>,
        cx: &FormatContext<'_>,
        request: Option<&RequestHead>,
        render: RenderBody<'_>,
    ) -> Response<ProxyBody> {
        let status = self.status.unwrap_or(resp.status());
        // As Envoy: the format sees the response being replaced (its status the
        // stream's so far).
        let body = match &self.format {
            Some(f) => Bytes::from(render(f, request, resp.headers(), resp.status())),
            None => self.body.clone(),
        };
        let len = body.len();
        let mut out = local_reply_bytes(status, body);
        let mut headers = http::HeaderMap::new();
        self.headers.apply(&mut headers, cx);
        if len == 0 {
            headers.remove(header::CONTENT_TYPE);
        } else if !headers.contains_key(header::CONTENT_TYPE) {
            headers.insert(header::CONTENT_TYPE, HeaderValue::from_static("text/plain"));
        }
        headers.insert(header::CONTENT_LENGTH, HeaderValue::from(len));
        *out.headers_mut() = headers;
        out
    }
}

/// Where a `RedirectPolicy` sends the request.
enum Target {
    /// `uri`, taken apart: scheme, host (and port), path and query.
    Uri {
        scheme: String,
        host: String,
        path: String,
    },
    /// `redirect_action`, applied to the request (Envoy's `newUri`).
    Action(Redirect),
}

/// A compiled `RedirectPolicy`.
pub struct RedirectPolicy {
    target: Target,
    status: Option<StatusCode>,
    response_headers: HeaderMutations,
    request_headers: HeaderMutations,
    no_route: Arc<Counter>,
    invalid_uri: Arc<Counter>,
}

/// An absolute `http(s)` URL taken apart (its `#fragment` dropped): scheme, host and
/// port, path and query (`/` when it has no path).
fn absolute_url(uri: &str) -> Option<(String, String, String)> {
    let uri = uri.split('#').next().unwrap_or(uri);
    let parsed: http::Uri = uri.parse().ok()?;
    let scheme = parsed.scheme_str()?.to_ascii_lowercase();
    let host = parsed.authority()?.as_str();
    if host.is_empty() || host.contains('@') {
        return None;
    }
    let path = parsed
        .path_and_query()
        .map_or("/", |p| p.as_str())
        .to_string();
    let path = if path.is_empty() { "/".into() } else { path };
    Some((scheme, host.to_string(), path))
}

impl RedirectPolicy {
    fn compile(
        p: &redirect_pb::RedirectPolicy,
        path: &str,
        stats: &PolicyStats<'_>,
    ) -> Result<RedirectPolicy, ConfigError> {
        use redirect_pb::redirect_policy::RedirectActionSpecifier as S;
        let target = match &p.redirect_action_specifier {
            None => {
                return Err(ConfigError::new(
                    format!("{path}.redirect_action_specifier"),
                    "value is required",
                ))
            }
            Some(S::Uri(u)) => {
                if u.is_empty() {
                    return Err(ConfigError::new(
                        format!("{path}.uri"),
                        "value length must be at least 1 characters",
                    ));
                }
                let (scheme, host, path_q) = absolute_url(u).ok_or_else(|| {
                    ConfigError::new(
                        format!("{path}.uri"),
                        format!("Invalid uri specified for redirection for custom response: {u}"),
                    )
                })?;
                Target::Uri {
                    scheme,
                    host,
                    path: path_q,
                }
            }
            Some(S::RedirectAction(a)) => {
                use courier_proto::envoy::config::route::v3::redirect_action::PathRewriteSpecifier as P;
                let at = format!("{path}.redirect_action");
                match &a.path_rewrite_specifier {
                    Some(P::RegexRewrite(_)) => {
                        return Err(ConfigError::new(
                            format!("{at}.regex_rewrite"),
                            "regex_rewrite is not supported for Custom Response",
                        ))
                    }
                    Some(P::PrefixRewrite(_)) => {
                        return Err(ConfigError::new(
                            format!("{at}.prefix_rewrite"),
                            "prefix_rewrite is not supported for Custom Response",
                        ))
                    }
                    Some(P::PathRedirect(pr)) if pr.contains('#') => {
                        return Err(ConfigError::new(
                            format!("{at}.path_redirect"),
                            format!("#fragment is not supported for custom response. Specified path_redirect is {pr}"),
                        ))
                    }
                    _ => {}
                }
                Target::Action(crate::http::route::compile_redirect(a, &at)?)
            }
        };
        if p.modify_request_headers_action.is_some() {
            return Err(ConfigError::unsupported(format!(
                "{path}.modify_request_headers_action"
            )));
        }
        let status = match p.status_code {
            None => None,
            Some(s) if !(200..=999).contains(&s.value) => {
                return Err(ConfigError::new(
                    format!("{path}.status_code"),
                    "value must be inside range [200, 999]",
                ))
            }
            Some(s) => Some(
                StatusCode::from_u16(s.value as u16)
                    .map_err(|e| ConfigError::new(format!("{path}.status_code"), e.to_string()))?,
            ),
        };
        for (field, list) in [
            ("response_headers_to_add", &p.response_headers_to_add),
            ("request_headers_to_add", &p.request_headers_to_add),
        ] {
            if list.len() > 1000 {
                return Err(ConfigError::new(
                    format!("{path}.{field}"),
                    "value must contain no more than 1000 item(s)",
                ));
            }
        }
        Ok(RedirectPolicy {
            target,
            status,
            response_headers: HeaderMutations::compile(
                &p.response_headers_to_add,
                &[],
                &format!("{path}.response_headers_to_add"),
                "",
            )?,
            request_headers: HeaderMutations::compile(
                &p.request_headers_to_add,
                &[],
                &format!("{path}.request_headers_to_add"),
                "",
            )?,
            no_route: stats.store.counter(&format!(
                "{}custom_response_redirect_no_route",
                stats.prefix
            )),
            invalid_uri: stats
                .store
                .counter(&format!("{}custom_response_invalid_uri", stats.prefix)),
        })
    }

    /// The request to make again for `head`, or why there is none (counted): a URI
    /// `redirect_action` cannot make (`Err(false)`), or one no route takes (`routes`:
    /// `Err(true)`).
    fn recreate(
        &self,
        head: &RequestHead,
        routes: &dyn Fn(&str, &str, &HeaderMap) -> bool,
        cx: &FormatContext<'_>,
        worker: usize,
    ) -> Result<Request<ProxyBody>, bool> {
        let (scheme, host, path) = match &self.target {
            Target::Uri { scheme, host, path } => (scheme.clone(), host.clone(), path.clone()),
            Target::Action(rd) => {
                let location = rd.location(&head.authority, &head.path, None, head.scheme);
                let parts = absolute_url(&location).and_then(|(scheme, host, path)| {
                    let valid =
                        HeaderValue::from_str(&host).is_ok() && path.parse::<http::Uri>().is_ok();
                    valid.then_some((scheme, host, path))
                });
                match parts {
                    Some(parts) => parts,
                    None => {
                        self.invalid_uri.inc(worker);
                        return Err(false);
                    }
                }
            }
        };
        let mut headers = head.headers.clone();
        let (Ok(host_value), Ok(uri)) = (HeaderValue::from_str(&host), path.parse::<http::Uri>())
        else {
            self.invalid_uri.inc(worker);
            return Err(false);
        };
        headers.insert(header::HOST, host_value);
        self.request_headers.apply(&mut headers, cx);
        if !routes(&host, &path, &headers) {
            tracing::trace!(%host, %path, "custom response redirect: no route");
            self.no_route.inc(worker);
            return Err(true);
        }
        // As Envoy: a GET, without the body (none is sent again).
        headers.remove(header::CONTENT_LENGTH);
        headers.remove(header::TRANSFER_ENCODING);
        let mut req = Request::new(ProxyBody::empty());
        *req.method_mut() = Method::GET;
        *req.uri_mut() = uri;
        *req.version_mut() = head.version;
        *req.headers_mut() = headers;
        tracing::debug!(%scheme, %host, %path, "custom response: internal redirect");
        Ok(req)
    }

    /// The redirected request's answer, made the policy's: its headers added, the status
    /// the policy's, else the first response's (`original`).
    fn on_redirected(
        &self,
        resp: &mut Response<ProxyBody>,
        original: StatusCode,
        cx: &FormatContext<'_>,
    ) {
        self.response_headers.apply(resp.headers_mut(), cx);
        *resp.status_mut() = self.status.unwrap_or(original);
    }
}

/// A matcher's action.
pub enum Policy {
    /// `LocalResponsePolicy`.
    Local(LocalPolicy),
    /// `RedirectPolicy`.
    Redirect(Arc<RedirectPolicy>),
}

/// Where a config's policies keep their counters.
pub struct PolicyStats<'a> {
    /// The counters' prefix: `http.<stat_prefix>.` for the filter's, empty for a route's.
    pub prefix: &'a str,
    /// The store they are in.
    pub store: &'a Store,
}

/// A compiled `CustomResponse`: its matcher, if it has one.
pub struct CustomResponse {
    matcher: Option<Matcher<Policy>>,
    /// Whether one of its policies reads the request (a redirect, a `body_format`).
    redirects: bool,
}

impl CustomResponse {
    /// Compiles a `CustomResponse` at `path`.
    pub fn compile(
        p: &pb::CustomResponse,
        path: &str,
        stats: &PolicyStats<'_>,
    ) -> Result<CustomResponse, ConfigError> {
        let redirects = std::cell::Cell::new(false);
        let matcher = p
            .custom_response_matcher
            .as_ref()
            .map(|m| {
                Matcher::compile(
                    m,
                    Context::HttpResponse,
                    &|a: &TypedExtensionConfig, at: &str| {
                        let p = policy(a, at, stats)?;
                        let needs = match &p {
                            Policy::Redirect(_) => true,
                            Policy::Local(l) => l.format.is_some(),
                        };
                        redirects.set(redirects.get() || needs);
                        Ok(p)
                    },
                    &format!("{path}.custom_response_matcher"),
                )
            })
            .transpose()?;
        Ok(CustomResponse {
            matcher,
            redirects: redirects.get(),
        })
    }

    fn pick(&self, data: &MatchingData<'_>) -> Option<&Policy> {
        self.matcher.as_ref()?.evaluate(data)
    }
}

/// A matcher's action: a policy.
fn policy(
    a: &TypedExtensionConfig,
    path: &str,
    stats: &PolicyStats<'_>,
) -> Result<Policy, ConfigError> {
    let any = a
        .typed_config
        .as_ref()
        .ok_or_else(|| ConfigError::new(format!("{path}.typed_config"), "value is required"))?;
    let at = format!("{path}.typed_config");
    match courier_proto::type_url::message_name(&any.type_url) {
        LOCAL_POLICY => Ok(Policy::Local(LocalPolicy::compile(
            &per_filter::unpack(any, &at)?,
            &at,
        )?)),
        REDIRECT_POLICY => Ok(Policy::Redirect(Arc::new(RedirectPolicy::compile(
            &per_filter::unpack(any, &at)?,
            &at,
            stats,
        )?))),
        other => Err(ConfigError::new(
            at,
            format!("Didn't find a registered implementation for type: '{other}'"),
        )),
    }
}

/// The request as a redirect policy makes it again: as the router sent it upstream (or,
/// answered before, as the filters left it).
pub struct RequestHead {
    /// The request's version.
    pub version: Version,
    /// Its headers.
    pub headers: HeaderMap,
    /// Its host, as routed.
    pub authority: String,
    /// Its path and query, as sent (a route's rewrite applied).
    pub path: String,
    /// Its scheme.
    pub scheme: &'static str,
}

/// A stream's custom response state (Envoy's filter state, kept across the redirect).
#[derive(Default)]
pub struct StreamState {
    /// The request, kept while a redirect policy may make it again.
    pub head: Option<RequestHead>,
    /// Whether the request had all arrived when its response came.
    pub complete: bool,
    /// Set once a redirect policy made the request again: the policy and the first
    /// response's status.
    pub redirected: Option<(Arc<RedirectPolicy>, StatusCode)>,
    /// The request to make again (the connection manager takes it).
    pub recreate: Option<Request<ProxyBody>>,
}

/// What the connection manager lends the filter's response pass.
#[derive(Clone, Copy)]
pub struct Hooks<'a> {
    /// Whether a route takes a request for a host, path and headers.
    pub routes: &'a dyn Fn(&str, &str, &HeaderMap) -> bool,
    /// Renders a `body_format`.
    pub render: RenderBody<'a>,
    /// The worker the stream is on (its counters' cell).
    pub worker: usize,
}

/// What the filter's response pass did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Pass {
    /// Nothing: the response goes on.
    Untouched,
    /// A local policy's reply replaced the response.
    Replaced,
    /// The redirected request's answer got the policy's status and headers.
    Redirected,
    /// The request is to be made again ([`StreamState::recreate`]); the response goes.
    Recreate,
    /// A redirect policy's request would have no route: the response goes on, the route
    /// (and its cluster) forgotten, as Envoy's cleared route cache.
    NoRoute,
}

/// A connection manager's custom response filter.
pub struct CustomResponseFilter {
    /// The filter's name in `http_filters`: its key in `typed_per_filter_config`.
    pub name: String,
    config: CustomResponse,
}

impl CustomResponseFilter {
    /// Compiles the filter named `name` (its `CustomResponse` at `path`), in a connection
    /// manager whose stats are under `http.<stat_prefix>`.
    pub fn compile(
        name: &str,
        p: &pb::CustomResponse,
        path: &str,
        stat_prefix: &str,
        store: &Store,
    ) -> Result<CustomResponseFilter, ConfigError> {
        let prefix = format!("http.{stat_prefix}.");
        Ok(CustomResponseFilter {
            name: name.to_string(),
            config: CustomResponse::compile(
                p,
                path,
                &PolicyStats {
                    prefix: &prefix,
                    store,
                },
            )?,
        })
    }

    /// The response pass: `resp` replaced when a policy picks it (the routes' configs
    /// in `levels`, the most specific first, then the filter's), or the request to be
    /// made again (`state`).
    pub fn on_response(
        &self,
        levels: [&FilterConfigs; 3],
        resp: &mut Response<ProxyBody>,
        cx: &FormatContext<'_>,
        state: Option<&mut StreamState>,
        hooks: &Hooks<'_>,
    ) -> Pass {
        let Hooks {
            routes,
            render,
            worker,
        } = *hooks;
        // The redirected request's answer is the policy's, never matched again.
        if let Some((p, original)) = state.as_ref().and_then(|s| s.redirected.as_ref()) {
            p.on_redirected(resp, *original, cx);
            return Pass::Redirected;
        }
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
            Some(Policy::Local(p)) => {
                let request = state.as_deref().and_then(|s| s.head.as_ref());
                *resp = p.reply(resp, cx, request, render);
                Pass::Replaced
            }
            Some(Policy::Redirect(p)) => {
                // Envoy's stream is made again only once the request has all arrived.
                let Some(state) = state.filter(|s| s.complete) else {
                    return Pass::Untouched;
                };
                let Some(head) = state.head.as_ref() else {
                    return Pass::Untouched;
                };
                match p.recreate(head, routes, cx, worker) {
                    Ok(req) => {
                        state.redirected = Some((p.clone(), resp.status()));
                        state.recreate = Some(req);
                        state.head = None;
                        Pass::Recreate
                    }
                    Err(true) => Pass::NoRoute,
                    Err(false) => Pass::Untouched,
                }
            }
            None => Pass::Untouched,
        }
    }

    /// Whether a policy of the filter's, or of a route's, may read the request (redirect
    /// it, or format a body).
    pub fn may_redirect(&self, levels: [&FilterConfigs; 3]) -> bool {
        self.config.redirects
            || levels
                .iter()
                .filter_map(|l| l.policy::<CustomResponse>(&self.name))
                .any(|c| c.redirects)
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
        let store = Store::new(1);
        CustomResponse::compile(
            &p,
            "f",
            &PolicyStats {
                prefix: "",
                store: &store,
            },
        )
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
        assert!(err("{ \"@type\": type.googleapis.com/envoy.extensions.http.custom_response.local_response_policy.v3.LocalResponsePolicy, body_format: { text_format: x } }").is_none());
        assert_eq!(
            err("{ \"@type\": type.googleapis.com/envoy.extensions.http.custom_response.local_response_policy.v3.LocalResponsePolicy, body_format: { text_format: \"%LOCAL_REPLY_BODY%\" } }").as_deref(),
            Some(format!("{at}.body_format.text_format.format").as_str())
        );
        assert_eq!(
            err("{ \"@type\": type.googleapis.com/envoy.extensions.http.custom_response.local_response_policy.v3.LocalResponsePolicy, status_code: 100 }").as_deref(),
            Some(format!("{at}.status_code").as_str())
        );
        assert!(err("{ \"@type\": type.googleapis.com/envoy.extensions.http.custom_response.local_response_policy.v3.LocalResponsePolicy, status_code: 299 }").is_none());
        assert!(compile("{}").is_ok_and(|c| c.matcher.is_none()));
        let redirect = |p: &str| {
            err(&format!("{{ \"@type\": type.googleapis.com/envoy.extensions.http.custom_response.redirect_policy.v3.RedirectPolicy, {p} }}"))
        };
        assert!(redirect("uri: \"http://x/y#z\"").is_none());
        assert!(redirect("redirect_action: { host_redirect: x }").is_none());
        assert_eq!(
            redirect("uri: \"/relative\"").as_deref(),
            Some(format!("{at}.uri").as_str())
        );
        assert_eq!(
            redirect("redirect_action: { prefix_rewrite: /p }").as_deref(),
            Some(format!("{at}.redirect_action.prefix_rewrite").as_str())
        );
        assert_eq!(
            redirect("redirect_action: { path_redirect: \"/p#f\" }").as_deref(),
            Some(format!("{at}.redirect_action.path_redirect").as_str())
        );
        assert_eq!(
            redirect("uri: \"http://x/\", status_code: 1000").as_deref(),
            Some(format!("{at}.status_code").as_str())
        );
    }
}
