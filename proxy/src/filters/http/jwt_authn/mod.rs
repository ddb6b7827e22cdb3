//! The JWT authentication filter (`envoy.filters.http.jwt_authn`): requests carrying
//! JSON Web Tokens checked against providers' keys, as Istio's RequestAuthentication and
//! Envoy Gateway's SecurityPolicy configure it.
//!
//! As Envoy 1.40 (measured, `tests/http_jwt_authn.rs`):
//!
//! - `providers` ([`provider`]): `issuer`, `audiences`, `local_jwks` (inline or a file;
//!   one that does not parse fails requests with `Jwks doesn't have any valid public
//!   key`), `remote_jwks` (`http_uri`, `cache_duration`, default 600 s: a worker GETs
//!   the set when a token first needs it, the request waiting, and keeps it that long;
//!   the fetch is the connection manager's, `http::conn_manager::service_calls::jwks`,
//!   this filter answering [`JwtRequest::Fetch`] until it has the set; a fetch without a
//!   `200` and a key set fails the token with `Jwks remote fetch is failed`), token
//!   locations ([`extract`]: `from_headers` with `value_prefix`,
//!   `from_params`, `from_cookies`, else `Authorization: Bearer` and `access_token`),
//!   `forward` (a header's token is removed, a parameter's taken out of `:path`, a
//!   cookie's left), `forward_payload_header` (`pad_forward_payload_header`),
//!   `claim_to_headers`, `clock_skew_seconds` (default 60).
//! - Tokens ([`jwt`], [`jwks`]): RS/PS 256/384/512, ES256/384/512, EdDSA (Ed25519),
//!   HS256/384/512, verified with aws-lc-rs against the key whose `kid` and `alg` match.
//! - Which requirement ([`requirement`]): the most specific `PerRouteConfig`
//!   (`disabled`, or a `requirement_name` of `requirement_map`; an unknown name is `403
//!   Failed JWT authentication: Wrong requirement_name: …`), else the first of `rules`
//!   whose match takes the request (a rule without a requirement, or no rule: nothing
//!   required). `bypass_cors_preflight` lets CORS preflights through.
//! - A refusal: `401` with the failure as body and `www-authenticate: Bearer
//!   realm="<scheme>://<host><path>"` (`, error="invalid_token"` unless the token is
//!   missing), `403` for `Audiences in Jwt are not allowed`; `strip_failure_response`
//!   sends neither body nor header. Details `jwt_authn_access_denied{<failure, _ for
//!   spaces>}`.
//! - Counters `http.<stat_prefix>.jwt_authn.allowed`, `denied`, `cors_preflight_bypassed`,
//!   `jwt_cache_hit`, `jwt_cache_miss` (every token a provider checks: no cache is kept),
//!   `jwks_fetch_success`, `jwks_fetch_failed` (each remote fetch).
//!
//! `remote_jwks.retry_policy` retries a fetch as Envoy's fetcher does (its route retry
//! policy: 5xx, gateway errors, connect failures and resets; see `provider.rs`).
//!
//! `remote_jwks.async_fetch` ([`async_fetch`]; the fetcher is the server's,
//! `server::jwks_fetch`): the set is fetched ahead of requests once the cluster manager
//! is initialised and installed on every worker, never expiring there; refetched
//! `cache_duration` (in whole seconds) less 5 s after a good fetch,
//! `failed_refetch_duration` (default 1 s) after a failed one (the last good set keeps
//! serving); the listener warms until the first fetch is over unless `fast_listener`. A
//! set with no good fetch yet is fetched by the request, as without `async_fetch`.
//!
//! Refused by path: `jwt_cache_config`, `filter_state_rules`,
//! `stat_prefix`, `subjects`, `require_expiration`, `max_lifetime`, the metadata fields,
//! `clear_route_cache`, `claim_path`, `extract_only_without_validation`.

pub mod async_fetch;
pub mod extract;
pub mod jwks;
pub mod jwt;
pub mod provider;
pub mod requirement;
pub mod status;

use std::collections::BTreeMap;
use std::sync::Arc;

use courier_proto::envoy::extensions::filters::http::jwt_authn::v3 as pb;
use http::{header, HeaderMap, HeaderValue, Method, Response, StatusCode};

use crate::config::ConfigError;
use crate::http::codec::body::ProxyBody;
use crate::http::route::{Pseudo, RequestMatcher};
use crate::stats::{Counter, Store};
use provider::{KeySource, Provider, RemoteJwks};
use requirement::{Check, Fetched, Requirement};
use status::Status;

/// The filter's config type.
pub const FILTER_TYPE: &str = "envoy.extensions.filters.http.jwt_authn.v3.JwtAuthentication";
/// The filter's well-known name.
pub const FILTER_NAME: &str = "envoy.filters.http.jwt_authn";
/// The per-route config's type.
pub const PER_ROUTE_TYPE: &str = "envoy.extensions.filters.http.jwt_authn.v3.PerRouteConfig";

/// Envoy's `realm` path limit in `www-authenticate`.
const MAX_URI_PATH: usize = 256;

/// The filter's counters.
pub struct Stats {
    allowed: Arc<Counter>,
    denied: Arc<Counter>,
    cors_preflight_bypassed: Arc<Counter>,
    jwt_cache_miss: Arc<Counter>,
    jwks_fetch_success: Arc<Counter>,
    jwks_fetch_failed: Arc<Counter>,
}

impl Stats {
    fn new(prefix: &str, store: &Store) -> Stats {
        let c = |n: &str| store.counter(&format!("http.{prefix}.jwt_authn.{n}"));
        // Created now, as Envoy shows it from the start; Courier never counts it.
        c("jwt_cache_hit");
        Stats {
            allowed: c("allowed"),
            denied: c("denied"),
            cors_preflight_bypassed: c("cors_preflight_bypassed"),
            jwt_cache_miss: c("jwt_cache_miss"),
            jwks_fetch_success: c("jwks_fetch_success"),
            jwks_fetch_failed: c("jwks_fetch_failed"),
        }
    }
}

/// A route's `PerRouteConfig`.
pub enum JwtPerRoute {
    /// `disabled: true`: nothing required.
    Disabled,
    /// `requirement_name`.
    Requirement(String),
}

impl JwtPerRoute {
    /// Compiles a `PerRouteConfig` at `path`.
    pub fn compile(p: &pb::PerRouteConfig, path: &str) -> Result<JwtPerRoute, ConfigError> {
        use pb::per_route_config::RequirementSpecifier as S;
        match &p.requirement_specifier {
            Some(S::Disabled(true)) => Ok(JwtPerRoute::Disabled),
            Some(S::Disabled(false)) => Err(ConfigError::new(
                format!("{path}.disabled"),
                "value must equal true",
            )),
            Some(S::RequirementName(n)) if n.is_empty() => Err(ConfigError::new(
                format!("{path}.requirement_name"),
                "value length must be at least 1 characters",
            )),
            Some(S::RequirementName(n)) => Ok(JwtPerRoute::Requirement(n.clone())),
            None => Err(ConfigError::new(
                format!("{path}.requirement_specifier"),
                "value is required",
            )),
        }
    }
}

/// What the filter made of a request.
pub enum JwtRequest {
    /// Go on; `Some`: the new `:path` (a parameter's token taken out).
    Pass(Option<String>),
    /// Refused: the answer and its response code details.
    Refuse(Box<Response<ProxyBody>>, String),
    /// Undecided: a token needs this remote key set, which the worker does not have. The
    /// request is to be checked again, as it came, once it is fetched (or failed).
    Fetch(Arc<RemoteJwks>),
}

/// A connection manager's JWT authentication filter.
pub struct JwtAuthnFilter {
    /// The filter's name in `http_filters`: its key in `typed_per_filter_config`.
    pub name: String,
    /// By name (Envoy finds a provider by issuer in its map's order; this one is sorted).
    providers: Vec<Provider>,
    rules: Vec<(RequestMatcher, Option<Requirement>)>,
    requirement_map: BTreeMap<String, Requirement>,
    bypass_cors_preflight: bool,
    strip_failure_response: bool,
    /// Whether a provider has `remote_jwks`.
    remote: bool,
    stats: Stats,
}

impl JwtAuthnFilter {
    /// Compiles the filter named `name` (its config at `path`) of a connection manager
    /// whose stats are under `http.<prefix>`.
    pub fn compile(
        name: &str,
        p: &pb::JwtAuthentication,
        path: &str,
        prefix: &str,
        store: &Store,
    ) -> Result<JwtAuthnFilter, ConfigError> {
        if p.filter_state_rules.is_some() {
            return Err(ConfigError::unsupported(format!(
                "{path}.filter_state_rules"
            )));
        }
        if !p.stat_prefix.is_empty() {
            return Err(ConfigError::unsupported(format!("{path}.stat_prefix")));
        }
        let mut names: Vec<&String> = p.providers.keys().collect();
        names.sort();
        let providers = names
            .into_iter()
            .map(|n| Provider::compile(n, &p.providers[n], &format!("{path}.providers[{n}]")))
            .collect::<Result<Vec<_>, _>>()?;
        let requirement_map = p
            .requirement_map
            .iter()
            .map(|(n, r)| {
                let at = format!("{path}.requirement_map[{n}]");
                Ok((n.clone(), Requirement::compile(r, &providers, &[], &at)?))
            })
            .collect::<Result<BTreeMap<_, _>, ConfigError>>()?;
        use pb::requirement_rule::RequirementType as R;
        let rules = p
            .rules
            .iter()
            .enumerate()
            .map(|(i, rule)| {
                let at = format!("{path}.rules[{i}]");
                let Some(m) = &rule.r#match else {
                    return Err(ConfigError::new(format!("{at}.match"), "value is required"));
                };
                let matcher = RequestMatcher::compile(m, &format!("{at}.match"))?;
                let req = match &rule.requirement_type {
                    None => None,
                    Some(R::Requires(r)) => Some(Requirement::compile(
                        r,
                        &providers,
                        &[],
                        &format!("{at}.requires"),
                    )?),
                    Some(R::RequirementName(n)) => {
                        let Some(r) = p.requirement_map.get(n) else {
                            return Err(ConfigError::new(
                                format!("{at}.requirement_name"),
                                format!(
                                    "Wrong requirement_name: {n}. It should be one of [{}]",
                                    all_names(&requirement_map)
                                ),
                            ));
                        };
                        Some(Requirement::compile(
                            r,
                            &providers,
                            &[],
                            &format!("{at}.requirement_name"),
                        )?)
                    }
                };
                Ok((matcher, req))
            })
            .collect::<Result<Vec<_>, _>>()?;
        Ok(JwtAuthnFilter {
            name: name.to_string(),
            rules,
            requirement_map,
            bypass_cors_preflight: p.bypass_cors_preflight,
            strip_failure_response: p.strip_failure_response,
            remote: providers
                .iter()
                .any(|p| matches!(p.keys, KeySource::Remote(_))),
            providers,
            stats: Stats::new(prefix, store),
        })
    }

    /// The remote key sets the main thread fetches ahead of requests (`async_fetch`).
    pub fn async_key_sets(&self) -> impl Iterator<Item = async_fetch::AsyncKeySet> + '_ {
        self.providers.iter().filter_map(|p| match &p.keys {
            KeySource::Remote(r) if r.async_fetch.is_some() => Some(async_fetch::AsyncKeySet {
                remote: r.clone(),
                success: self.stats.jwks_fetch_success.clone(),
                failed: self.stats.jwks_fetch_failed.clone(),
            }),
            _ => None,
        })
    }

    /// Whether every key set its listener waits for has had its first fetch.
    pub fn key_sets_settled(&self) -> bool {
        self.providers.iter().all(|p| match &p.keys {
            KeySource::Remote(r) => async_fetch::settled(r),
            KeySource::Local(_) => true,
        })
    }

    /// Whether a provider's keys are remote: a request may then wait for them.
    pub fn has_remote_jwks(&self) -> bool {
        self.remote
    }

    /// Counts a fetch of a remote key set.
    pub fn count_fetch(&self, ok: bool, worker: usize) {
        match ok {
            true => self.stats.jwks_fetch_success.inc(worker),
            false => self.stats.jwks_fetch_failed.inc(worker),
        }
    }

    /// The filter on a request: `route` is the most specific per-route config, `path`
    /// `:path` with its query, `pseudo` what header matchers see, `remote` what the
    /// worker has of the remote key sets (never asked unless a provider has them).
    pub fn on_request(
        &self,
        route: Option<&JwtPerRoute>,
        headers: &mut HeaderMap,
        path: &str,
        pseudo: &Pseudo<'_>,
        worker: usize,
        remote: &dyn Fn(&RemoteJwks) -> Fetched,
    ) -> JwtRequest {
        if self.bypass_cors_preflight && is_cors_preflight(pseudo.method, headers) {
            self.stats.cors_preflight_bypassed.inc(worker);
            self.stats.allowed.inc(worker);
            return JwtRequest::Pass(None);
        }
        let requirement = match route {
            Some(JwtPerRoute::Disabled) => None,
            Some(JwtPerRoute::Requirement(n)) => match self.requirement_map.get(n) {
                Some(r) => Some(r),
                None => {
                    self.stats.denied.inc(worker);
                    let msg = format!(
                        "Wrong requirement_name: {n}. It should be one of [{}]",
                        all_names(&self.requirement_map)
                    );
                    let body = match self.strip_failure_response {
                        true => String::new(),
                        false => format!("Failed JWT authentication: {msg}"),
                    };
                    let r = crate::http::conn_manager::local_reply::local_reply(
                        StatusCode::FORBIDDEN,
                        &body,
                    );
                    return JwtRequest::Refuse(Box::new(r), details(&msg));
                }
            },
            None => self
                .rules
                .iter()
                .find(|(m, _)| m.matches(path, headers, pseudo))
                .and_then(|(_, r)| r.as_ref()),
        };
        let Some(requirement) = requirement else {
            self.stats.allowed.inc(worker);
            return JwtRequest::Pass(None);
        };
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_secs());
        let mut cx = Check {
            headers,
            path: path.to_string(),
            path_changed: false,
            now,
            remote,
            fetch: None,
            cache_misses: 0,
        };
        let verified = requirement.verify(&self.providers, &mut cx);
        if let Some(r) = cx.fetch {
            return JwtRequest::Fetch(r);
        }
        self.stats.jwt_cache_miss.add(worker, cx.cache_misses);
        match verified {
            Ok(()) => {
                self.stats.allowed.inc(worker);
                JwtRequest::Pass(cx.path_changed.then_some(cx.path))
            }
            Err(status) => {
                self.stats.denied.inc(worker);
                tracing::debug!(filter = %self.name, "jwt authentication failed: {}", status.message());
                let (reply, details) = self.refusal(status, pseudo, path);
                JwtRequest::Refuse(reply, details)
            }
        }
    }

    /// The answer to a refused request.
    fn refusal(
        &self,
        status: Status,
        pseudo: &Pseudo<'_>,
        path: &str,
    ) -> (Box<Response<ProxyBody>>, String) {
        let code = match status {
            Status::JwtAudienceNotAllowed => StatusCode::FORBIDDEN,
            _ => StatusCode::UNAUTHORIZED,
        };
        let body = match self.strip_failure_response {
            true => "",
            false => status.message(),
        };
        let mut r = crate::http::conn_manager::local_reply::local_reply(code, body);
        if !self.strip_failure_response {
            let mut end = path.len().min(MAX_URI_PATH);
            while !path.is_char_boundary(end) {
                end -= 1;
            }
            let mut v = format!(
                "Bearer realm=\"{}://{}{}\"",
                pseudo.scheme.unwrap_or_default(),
                pseudo.authority.unwrap_or_default(),
                &path[..end]
            );
            if status != Status::JwtMissed {
                v.push_str(", error=\"invalid_token\"");
            }
            if let Ok(v) = HeaderValue::from_str(&v) {
                r.headers_mut().insert(header::WWW_AUTHENTICATE, v);
            }
        }
        (Box::new(r), details(status.message()))
    }
}

/// A CORS preflight: `OPTIONS` with a non-empty `origin` and
/// `access-control-request-method`.
fn is_cors_preflight(method: Option<&str>, headers: &HeaderMap) -> bool {
    let non_empty = |h: &str| headers.get(h).is_some_and(|v| !v.is_empty());
    method == Some(Method::OPTIONS.as_str())
        && non_empty("origin")
        && non_empty("access-control-request-method")
}

/// `requirement_map`'s names, sorted, joined with `,`.
fn all_names(map: &BTreeMap<String, Requirement>) -> String {
    map.keys().map(String::as_str).collect::<Vec<_>>().join(",")
}

/// Envoy's response code details for a refusal: spaces as `_`.
fn details(msg: &str) -> String {
    let msg: String = msg
        .chars()
        .map(|c| if c.is_whitespace() { '_' } else { c })
        .collect();
    format!("jwt_authn_access_denied{{{msg}}}")
}
