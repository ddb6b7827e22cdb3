//! The API key auth filter (`envoy.filters.http.api_key_auth`): a request must carry a
//! known key (in a field, a query parameter or a cookie, [`sources`]); the client the key
//! names may be forwarded upstream, and a route may allow only some clients.
//!
//! As Envoy 1.40 (measured, `tests/http_api_key_auth.rs`):
//!
//! - `credentials` (key → client; a key twice refuses the config) and `key_sources`
//!   (asked in order, the first non-empty key counts). An `ApiKeyAuthPerRoute` (the most
//!   specific) replaces them when its own are not empty, and its `forwarding` replaces the
//!   filter's (none when it has none); its `allowed_clients`, when not empty, are the only
//!   clients let through there.
//! - No key sources, no credentials, no key, an unknown key: `401 Client authentication
//!   failed.` (details `missing_key_sources`, `missing_credentials`, `missing_api_key`,
//!   `unknown_api_key`); a client not allowed: `403 Client is
//!   forbidden.` (`client_not_allowed`).
//! - Allowed: `forwarding.header`, if set, is set to the client; `hide_credentials`
//!   takes every source's key away ([`sources::hide`]).
//! - Counters `http.<stat_prefix>.api_key_auth.allowed`, `unauthorized`, `forbidden`.

pub mod sources;

use std::collections::{HashMap, HashSet};
use std::sync::Arc;

use courier_proto::envoy::extensions::filters::http::api_key_auth::v3 as pb;
use http::header::{HeaderName, HeaderValue};
use http::{HeaderMap, Response, StatusCode};

use crate::config::ConfigError;
use crate::http::codec::body::ProxyBody;
use crate::stats::{Counter, Store};
use sources::Source;

/// The filter's config type.
pub const FILTER_TYPE: &str = "envoy.extensions.filters.http.api_key_auth.v3.ApiKeyAuth";
/// The filter's well-known name.
pub const FILTER_NAME: &str = "envoy.filters.http.api_key_auth";
/// The per-route config's type.
pub const PER_ROUTE_TYPE: &str = "envoy.extensions.filters.http.api_key_auth.v3.ApiKeyAuthPerRoute";

/// `forwarding`.
#[derive(Default)]
struct Forwarding {
    header: Option<HeaderName>,
    hide: bool,
}

/// What a filter or a route configures: keys, where to find them, what to forward.
#[derive(Default)]
struct Settings {
    /// Key → client; `None`: none configured.
    credentials: Option<HashMap<Box<[u8]>, Box<str>>>,
    sources: Option<Vec<Source>>,
    forwarding: Forwarding,
}

impl Settings {
    fn compile(
        credentials: &[pb::Credential],
        key_sources: &[pb::KeySource],
        forwarding: Option<&pb::Forwarding>,
        path: &str,
    ) -> Result<Settings, ConfigError> {
        let mut map = HashMap::with_capacity(credentials.len());
        for (i, c) in credentials.iter().enumerate() {
            let at = format!("{path}.credentials[{i}]");
            for (field, v) in [("key", &c.key), ("client", &c.client)] {
                if v.is_empty() {
                    return Err(ConfigError::new(
                        format!("{at}.{field}"),
                        "value length must be at least 1 characters",
                    ));
                }
            }
            if map
                .insert(Box::from(c.key.as_bytes()), Box::from(c.client.as_str()))
                .is_some()
            {
                return Err(ConfigError::new(
                    at,
                    format!("Duplicated credential key: '{}'", c.key),
                ));
            }
        }
        let sources = key_sources
            .iter()
            .enumerate()
            .map(|(i, s)| {
                let at = format!("{path}.key_sources[{i}]");
                // As Envoy: the first of `header`, `query`, `cookie` that is set counts.
                if !s.header.is_empty() {
                    header_name(&s.header, &format!("{at}.header")).map(Source::Header)
                } else if !s.query.is_empty() {
                    Ok(Source::Query(s.query.clone()))
                } else if !s.cookie.is_empty() {
                    Ok(Source::Cookie(s.cookie.clone()))
                } else {
                    Err(ConfigError::new(
                        at,
                        "One of 'header'/'query'/'cookie' must be set.",
                    ))
                }
            })
            .collect::<Result<Vec<_>, _>>()?;
        let forwarding = match forwarding {
            Some(f) => Forwarding {
                header: match f.header.as_str() {
                    "" => None,
                    h => Some(header_name(h, &format!("{path}.forwarding.header"))?),
                },
                hide: f.hide_credentials,
            },
            None => Forwarding::default(),
        };
        Ok(Settings {
            credentials: (!map.is_empty()).then_some(map),
            sources: (!sources.is_empty()).then_some(sources),
            forwarding,
        })
    }
}

/// A header name from config, lowercased as Envoy's `LowerCaseString`.
fn header_name(name: &str, path: &str) -> Result<HeaderName, ConfigError> {
    HeaderName::from_bytes(name.to_ascii_lowercase().as_bytes()).map_err(|_| {
        ConfigError::new(
            path,
            "value does not match regex pattern \"^[^\\x00\\n\\r]*$\"",
        )
    })
}

/// A compiled `ApiKeyAuthPerRoute`.
pub struct RouteSettings {
    settings: Settings,
    /// `allowed_clients`; empty: all.
    allowed: HashSet<Box<str>>,
}

impl RouteSettings {
    /// Compiles an `ApiKeyAuthPerRoute` at `path`.
    pub fn compile(p: &pb::ApiKeyAuthPerRoute, path: &str) -> Result<RouteSettings, ConfigError> {
        Ok(RouteSettings {
            settings: Settings::compile(
                &p.credentials,
                &p.key_sources,
                p.forwarding.as_ref(),
                path,
            )?,
            allowed: p
                .allowed_clients
                .iter()
                .map(|c| Box::from(c.as_str()))
                .collect(),
        })
    }
}

/// A connection manager's API key auth filter.
pub struct ApiKeyAuthFilter {
    /// The filter's name in `http_filters`: its key in `typed_per_filter_config`.
    pub name: String,
    settings: Settings,
    allowed: Arc<Counter>,
    unauthorized: Arc<Counter>,
    forbidden: Arc<Counter>,
}

/// What a request's check came to.
pub enum ApiKeyAuth {
    /// Allowed; the request's new `:path` if hiding a query key changed it.
    Pass(Option<String>),
    /// Refused: the answer and its response code details.
    Refuse(Box<Response<ProxyBody>>, &'static str),
}

impl ApiKeyAuthFilter {
    /// Compiles the filter named `name` (its `ApiKeyAuth` at `path`) of a connection
    /// manager whose stats are under `http.<prefix>`.
    pub fn compile(
        name: &str,
        p: &pb::ApiKeyAuth,
        path: &str,
        prefix: &str,
        store: &Store,
    ) -> Result<ApiKeyAuthFilter, ConfigError> {
        let counter = |c: &str| store.counter(&format!("http.{prefix}.api_key_auth.{c}"));
        Ok(ApiKeyAuthFilter {
            name: name.to_string(),
            settings: Settings::compile(
                &p.credentials,
                &p.key_sources,
                p.forwarding.as_ref(),
                path,
            )?,
            allowed: counter("allowed"),
            unauthorized: counter("unauthorized"),
            forbidden: counter("forbidden"),
        })
    }

    /// Checks a request (`route`: the most specific per-route settings, if any) whose
    /// `:path` is `path`.
    pub fn on_request(
        &self,
        route: Option<&RouteSettings>,
        headers: &mut HeaderMap,
        path: &str,
        worker: usize,
    ) -> ApiKeyAuth {
        let own = &self.settings;
        let routed = route.map(|r| &r.settings);
        let credentials = routed
            .and_then(|r| r.credentials.as_ref())
            .or(own.credentials.as_ref());
        let sources = routed
            .and_then(|r| r.sources.as_deref())
            .or(own.sources.as_deref());
        let forwarding = routed.map_or(&own.forwarding, |r| &r.forwarding);
        let Some(sources) = sources else {
            return self.refuse(StatusCode::UNAUTHORIZED, "missing_key_sources", worker);
        };
        let Some(credentials) = credentials else {
            return self.refuse(StatusCode::UNAUTHORIZED, "missing_credentials", worker);
        };
        let Some(key) = sources.iter().find_map(|s| s.key(headers, path)) else {
            return self.refuse(StatusCode::UNAUTHORIZED, "missing_api_key", worker);
        };
        let Some(client) = credentials.get(key.as_ref()) else {
            return self.refuse(StatusCode::UNAUTHORIZED, "unknown_api_key", worker);
        };
        if let Some(r) = route {
            if !r.allowed.is_empty() && !r.allowed.contains(client) {
                return self.refuse(StatusCode::FORBIDDEN, "client_not_allowed", worker);
            }
        }
        let new_path = forwarding
            .hide
            .then(|| sources::hide(sources, headers, path))
            .flatten();
        if let Some(h) = &forwarding.header {
            match HeaderValue::from_str(client) {
                Ok(v) => {
                    headers.insert(h.clone(), v);
                }
                Err(_) => {
                    tracing::debug!(filter = %self.name, "client not a field value: not forwarded")
                }
            }
        }
        self.allowed.inc(worker);
        ApiKeyAuth::Pass(new_path)
    }

    fn refuse(&self, status: StatusCode, details: &'static str, worker: usize) -> ApiKeyAuth {
        tracing::debug!(filter = %self.name, details, "api key auth denied");
        let body = match status {
            StatusCode::FORBIDDEN => {
                self.forbidden.inc(worker);
                "Client is forbidden."
            }
            _ => {
                self.unauthorized.inc(worker);
                "Client authentication failed."
            }
        };
        ApiKeyAuth::Refuse(
            Box::new(crate::http::conn_manager::local_reply::local_reply(
                status, body,
            )),
            details,
        )
    }
}
