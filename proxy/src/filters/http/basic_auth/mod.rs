//! The basic auth filter (`envoy.filters.http.basic_auth`): requests must carry a user's
//! name and password (RFC 7617) from an htpasswd list, else they are answered `401`.
//!
//! As Envoy 1.40 (measured, `tests/http_basic_auth.rs`):
//!
//! - `users` ([`htpasswd`]): `name:{SHA}<base64 SHA-1>` lines; any other line refuses the
//!   config, with Envoy's message. A `BasicAuthPerRoute`'s `users` (required) replace the
//!   filter's on its route, virtual host or route configuration (the most specific).
//! - The credential is read from `authentication_header` if set, else `Authorization`
//!   (whose repeats are joined with `,`, as Envoy's inline header; a custom field's first
//!   value counts) and decoded as [`credentials`] says.
//! - Refused: `401`, a plain-text body saying why, and `www-authenticate: Basic
//!   realm="<x-forwarded-proto>://<host><path>"` (the path with its query, cut at 256
//!   bytes), response code details `no_credential_for_basic_auth`,
//!   `invalid_scheme_for_basic_auth`, `invalid_format_for_basic_auth`,
//!   `invalid_credential_for_basic_auth`.
//! - Allowed: `forward_username_header`, if set, is set to the user's name (replacing
//!   what the client sent); the credential goes upstream as it came.
//! - `allow_missing`: a request without the field, or whose field is not `Basic `, goes
//!   on, counted neither way.
//! - Counters `http.<stat_prefix>.basic_auth.allowed` and `denied`.
//!
//! Refused as unsupported: `emit_dynamic_metadata` (Courier keeps no dynamic metadata).

pub mod credentials;
pub mod htpasswd;

use std::sync::Arc;

use courier_proto::envoy::config::core::v3::{data_source, DataSource};
use courier_proto::envoy::extensions::filters::http::basic_auth::v3 as pb;
use http::header::{HeaderName, HeaderValue};
use http::{HeaderMap, Response, StatusCode};

use crate::config::ConfigError;
use crate::http::codec::body::ProxyBody;
use crate::stats::{Counter, Store};
use credentials::Refusal;
use htpasswd::Users;

/// The filter's config type.
pub const FILTER_TYPE: &str = "envoy.extensions.filters.http.basic_auth.v3.BasicAuth";
/// The filter's well-known name.
pub const FILTER_NAME: &str = "envoy.filters.http.basic_auth";
/// The per-route config's type.
pub const PER_ROUTE_TYPE: &str = "envoy.extensions.filters.http.basic_auth.v3.BasicAuthPerRoute";

/// What the realm's scheme is read from (set by the connection manager by now).
const X_FORWARDED_PROTO: HeaderName = HeaderName::from_static("x-forwarded-proto");

/// How much of the path the realm shows (Envoy's `MaximumUriLength`).
const REALM_PATH_MAX: usize = 256;

/// The users a route's `BasicAuthPerRoute` names.
pub struct RouteUsers(Users);

impl RouteUsers {
    /// Compiles a `BasicAuthPerRoute` at `path`.
    pub fn compile(p: &pb::BasicAuthPerRoute, path: &str) -> Result<RouteUsers, ConfigError> {
        let Some(users) = &p.users else {
            return Err(ConfigError::new(
                format!("{path}.users"),
                "value is required",
            ));
        };
        Ok(RouteUsers(read_users(users, &format!("{path}.users"))?))
    }
}

/// Reads and parses an htpasswd `DataSource` at `path`, with Envoy's refusals.
fn read_users(ds: &DataSource, path: &str) -> Result<Users, ConfigError> {
    if ds.specifier.is_none() {
        return Err(ConfigError::new(
            path,
            "Unexpected DataSource::specifier_case(): 0",
        ));
    }
    if let Some(data_source::Specifier::Filename(f)) = &ds.specifier {
        if f.is_empty() {
            return Err(ConfigError::new(
                format!("{path}.filename"),
                "value length must be at least 1 characters",
            ));
        }
    }
    let text = crate::http::route::data_source(ds, path)?;
    if text.is_empty() {
        return Err(ConfigError::new(path, "DataSource cannot be empty"));
    }
    Users::parse(&text).map_err(|e| ConfigError::new(path, e.to_string()))
}

/// A header name from config (lowercased as Envoy's `LowerCaseString`); `None` if empty.
fn header_name(name: &str, path: &str) -> Result<Option<HeaderName>, ConfigError> {
    if name.is_empty() {
        return Ok(None);
    }
    HeaderName::from_bytes(name.to_ascii_lowercase().as_bytes())
        .map(Some)
        .map_err(|_| {
            ConfigError::new(
                path,
                "value does not match regex pattern \"^[^\\x00\\n\\r]*$\"",
            )
        })
}

/// A connection manager's basic auth filter.
pub struct BasicAuthFilter {
    /// The filter's name in `http_filters`: its key in `typed_per_filter_config`.
    pub name: String,
    users: Users,
    /// `forward_username_header`.
    forward: Option<HeaderName>,
    /// `authentication_header`; `None`: `Authorization`.
    field: Option<HeaderName>,
    allow_missing: bool,
    allowed: Arc<Counter>,
    denied: Arc<Counter>,
}

/// What a request's check came to.
pub enum BasicAuth {
    /// Allowed, or no credential under `allow_missing`.
    Pass,
    /// Refused: the answer and its response code details.
    Refuse(Box<Response<ProxyBody>>, &'static str),
}

impl BasicAuthFilter {
    /// Compiles the filter named `name` (its `BasicAuth` at `path`) of a connection
    /// manager whose stats are under `http.<prefix>`.
    pub fn compile(
        name: &str,
        p: &pb::BasicAuth,
        path: &str,
        prefix: &str,
        store: &Store,
    ) -> Result<BasicAuthFilter, ConfigError> {
        if p.emit_dynamic_metadata {
            return Err(ConfigError::unsupported(format!(
                "{path}.emit_dynamic_metadata"
            )));
        }
        let forward = header_name(
            &p.forward_username_header,
            &format!("{path}.forward_username_header"),
        )?;
        let field = header_name(
            &p.authentication_header,
            &format!("{path}.authentication_header"),
        )?;
        let users = match &p.users {
            Some(ds) => read_users(ds, &format!("{path}.users"))?,
            None => read_users(&DataSource::default(), &format!("{path}.users"))?,
        };
        Ok(BasicAuthFilter {
            name: name.to_string(),
            users,
            forward,
            field,
            allow_missing: p.allow_missing,
            allowed: store.counter(&format!("http.{prefix}.basic_auth.allowed")),
            denied: store.counter(&format!("http.{prefix}.basic_auth.denied")),
        })
    }

    /// Checks a request (`route`: the most specific per-route users, if any), whose
    /// `:authority` and `:path` are `authority` and `path` (for the realm).
    pub fn on_request(
        &self,
        route: Option<&RouteUsers>,
        headers: &mut HeaderMap,
        authority: &str,
        path: &str,
        worker: usize,
    ) -> BasicAuth {
        let users = route.map_or(&self.users, |r| &r.0);
        let value = match &self.field {
            Some(f) => headers.get(f).cloned(),
            None => super::joined(headers, http::header::AUTHORIZATION),
        };
        let checked = match value {
            None => Err(Refusal::Missing),
            Some(v) => credentials::parse(v.as_bytes()).and_then(|c| {
                match users.check(c.name(), c.password()) {
                    true => Ok(c),
                    false => Err(Refusal::Credential),
                }
            }),
        };
        match checked {
            Ok(c) => {
                if let Some(f) = &self.forward {
                    match HeaderValue::from_bytes(c.name()) {
                        Ok(v) => {
                            headers.insert(f.clone(), v);
                        }
                        Err(_) => {
                            tracing::debug!(filter = %self.name, "user name not a field value: not forwarded")
                        }
                    }
                }
                self.allowed.inc(worker);
                BasicAuth::Pass
            }
            // Envoy's `allow_missing` lets through a request with no `Basic` credential
            // at all (another scheme may be some other filter's), uncounted.
            Err(Refusal::Missing | Refusal::Scheme) if self.allow_missing => BasicAuth::Pass,
            Err(why) => {
                tracing::debug!(filter = %self.name, details = why.details(), "basic auth denied");
                self.denied.inc(worker);
                let mut r = crate::http::conn_manager::local_reply::local_reply(
                    StatusCode::UNAUTHORIZED,
                    why.body(),
                );
                let proto = headers
                    .get(X_FORWARDED_PROTO)
                    .map_or(&b""[..], |v| v.as_bytes());
                let cut = path
                    .as_bytes()
                    .get(..REALM_PATH_MAX)
                    .unwrap_or(path.as_bytes());
                let mut realm = Vec::with_capacity(16 + proto.len() + authority.len() + cut.len());
                realm.extend_from_slice(b"Basic realm=\"");
                realm.extend_from_slice(proto);
                realm.extend_from_slice(b"://");
                realm.extend_from_slice(authority.as_bytes());
                realm.extend_from_slice(cut);
                realm.push(b'"');
                if let Ok(v) = HeaderValue::from_bytes(&realm) {
                    r.headers_mut().insert(http::header::WWW_AUTHENTICATE, v);
                }
                BasicAuth::Refuse(Box::new(r), why.details())
            }
        }
    }
}
