//! The stateful session filter (`envoy.filters.http.stateful_session`): a request that
//! names the upstream host of its session (in a cookie or a header) goes to that host,
//! and the response names the host that answered when it is not the one named.
//!
//! As Envoy 1.40 (measured, `tests/http_stateful_session.rs`):
//!
//! - `session_state` is `envoy.http.stateful_session.cookie` (`CookieBasedSessionState`)
//!   or `envoy.http.stateful_session.header` (`HeaderBasedSessionState`); without one the
//!   filter does nothing.
//! - The cookie's value is the base64 of the protobuf `envoy.Cookie { string address = 1;
//!   uint64 expires = 2; }` (`expires`: wall-clock epoch seconds plus `ttl`, left out when
//!   `ttl` is zero), set as `name="value"; Max-Age=<ttl>; Path=<path>; HttpOnly`. An
//!   expired cookie names no host; a value that is no such message is taken as a plain
//!   `ip:port` (the older format). A cookie `path` limits the requests the session applies
//!   to, as Envoy's path matcher.
//! - The header's value is the base64 of `ip:port`, set on the response when it changes.
//! - The named host is used when the cluster has it and its health lets it take requests;
//!   else the load balancer picks (and the response names the new host), or, `strict`,
//!   the request fails: `503 no healthy upstream` (`UH`), or the
//!   `status_on_strict_destination_not_found`.
//! - Per route, `StatefulSessionPerRoute` disables the filter or replaces its config.
//!
//! Refused by path: `stat_prefix` (the filter's counters are not built) and the cookie's
//! `attributes`.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use base64::Engine as _;
use courier_proto::envoy::extensions::filters::http::stateful_session::v3 as pb;
use courier_proto::envoy::extensions::http::stateful_session::cookie::v3 as cookie_pb;
use courier_proto::envoy::extensions::http::stateful_session::header::v3 as header_pb;
use http::header::{HeaderName, HeaderValue, SET_COOKIE};
use http::{HeaderMap, Request, Response, StatusCode};

use crate::config::ConfigError;
use crate::http::codec::body::ProxyBody;
use crate::upstream::host_override::UpstreamOverride;

/// The filter's config type.
pub const FILTER_TYPE: &str = "envoy.extensions.filters.http.stateful_session.v3.StatefulSession";
/// The filter's well-known name.
pub const FILTER_NAME: &str = "envoy.filters.http.stateful_session";
/// The per-route config type.
pub const PER_ROUTE_TYPE: &str =
    "envoy.extensions.filters.http.stateful_session.v3.StatefulSessionPerRoute";
const COOKIE_TYPE: &str =
    "envoy.extensions.http.stateful_session.cookie.v3.CookieBasedSessionState";
const HEADER_TYPE: &str =
    "envoy.extensions.http.stateful_session.header.v3.HeaderBasedSessionState";

/// A connection manager's stateful session filter.
pub struct StatefulSessionFilter {
    /// The filter's name in `http_filters`: its key in `typed_per_filter_config`.
    pub name: String,
    config: Arc<SessionConfig>,
}

/// A compiled `StatefulSession`.
pub struct SessionConfig {
    /// `None`: no `session_state`, the filter does nothing.
    state: Option<SessionState>,
    strict: bool,
    status: StatusCode,
}

/// Where a session's host is kept.
enum SessionState {
    Cookie(CookieState),
    Header(HeaderName),
}

/// A cookie-based session's cookie.
struct CookieState {
    name: String,
    path: String,
    ttl: u64,
}

/// A route's `StatefulSessionPerRoute`.
pub enum StatefulSessionPerRoute {
    /// `disabled`.
    Disabled,
    /// `stateful_session`: the config the route's requests use.
    Config(Arc<SessionConfig>),
}

impl StatefulSessionPerRoute {
    /// Compiles a `StatefulSessionPerRoute` at `path`.
    pub fn compile(
        p: &pb::StatefulSessionPerRoute,
        path: &str,
    ) -> Result<StatefulSessionPerRoute, ConfigError> {
        match &p.r#override {
            Some(pb::stateful_session_per_route::Override::Disabled(true)) => {
                Ok(StatefulSessionPerRoute::Disabled)
            }
            Some(pb::stateful_session_per_route::Override::Disabled(false)) => Err(
                ConfigError::new(format!("{path}.disabled"), "value must equal true"),
            ),
            Some(pb::stateful_session_per_route::Override::StatefulSession(s)) => {
                Ok(StatefulSessionPerRoute::Config(Arc::new(
                    SessionConfig::compile(s, &format!("{path}.stateful_session"))?,
                )))
            }
            None => Err(ConfigError::new(
                format!("{path}.override"),
                "value is required",
            )),
        }
    }
}

/// The protobuf an Envoy session cookie holds.
#[derive(Clone, PartialEq, prost::Message)]
struct SessionCookie {
    #[prost(string, tag = "1")]
    address: String,
    #[prost(uint64, tag = "2")]
    expires: u64,
}

impl SessionConfig {
    /// Compiles a `StatefulSession` at `path`.
    pub fn compile(p: &pb::StatefulSession, path: &str) -> Result<SessionConfig, ConfigError> {
        if !p.stat_prefix.is_empty() {
            return Err(ConfigError::unsupported(format!("{path}.stat_prefix")));
        }
        let status = match p.status_on_strict_destination_not_found {
            // Envoy reads it only in strict mode.
            0 => StatusCode::SERVICE_UNAVAILABLE,
            _ if !p.strict => StatusCode::SERVICE_UNAVAILABLE,
            n => u16::try_from(n)
                .ok()
                .and_then(|n| StatusCode::from_u16(n).ok())
                .ok_or_else(|| {
                    ConfigError::new(
                        format!("{path}.status_on_strict_destination_not_found"),
                        format!("{n} is not an HTTP status"),
                    )
                })?,
        };
        let state = match &p.session_state {
            None => None,
            Some(ext) => {
                let at = format!("{path}.session_state");
                let (any, at) = super::library_config(ext, &at)?;
                Some(
                    match courier_proto::type_url::message_name(&any.type_url) {
                        COOKIE_TYPE => {
                            let c: cookie_pb::CookieBasedSessionState = super::unpack(any, &at)?;
                            let at = format!("{at}.cookie");
                            let Some(cookie) = &c.cookie else {
                                return Err(ConfigError::new(at, "value is required"));
                            };
                            if cookie.name.is_empty() {
                                return Err(ConfigError::new(
                                    format!("{at}.name"),
                                    "value length must be at least 1 characters",
                                ));
                            }
                            if !cookie.attributes.is_empty() {
                                return Err(ConfigError::unsupported(format!("{at}.attributes")));
                            }
                            let ttl = match &cookie.ttl {
                                Some(d) if d.seconds < 0 || d.nanos < 0 => {
                                    return Err(ConfigError::new(
                                        format!("{at}.ttl"),
                                        "value must be greater than or equal to 0s",
                                    ))
                                }
                                Some(d) => d.seconds as u64,
                                None => 0,
                            };
                            SessionState::Cookie(CookieState {
                                name: cookie.name.clone(),
                                path: cookie.path.clone(),
                                ttl,
                            })
                        }
                        HEADER_TYPE => {
                            let h: header_pb::HeaderBasedSessionState = super::unpack(any, &at)?;
                            let name = HeaderName::from_bytes(h.name.as_bytes()).map_err(|_| {
                                ConfigError::new(
                                    format!("{at}.name"),
                                    format!("{:?} is not a header name", h.name),
                                )
                            })?;
                            SessionState::Header(name)
                        }
                        other => {
                            return Err(ConfigError::new(
                                at,
                                format!(
                                    "Didn't find a registered implementation for '{}' with type URL: '{other}'",
                                    ext.name
                                ),
                            ))
                        }
                    },
                )
            }
        };
        Ok(SessionConfig {
            state,
            strict: p.strict,
            status,
        })
    }
}

impl StatefulSessionFilter {
    /// Compiles the filter named `name` (its `StatefulSession` at `path`).
    pub fn compile(
        name: &str,
        p: &pb::StatefulSession,
        path: &str,
    ) -> Result<StatefulSessionFilter, ConfigError> {
        Ok(StatefulSessionFilter {
            name: name.to_string(),
            config: Arc::new(SessionConfig::compile(p, path)?),
        })
    }

    /// Reads a request's session (`path`: its path as routed): the host it names goes
    /// with the request to the router; the session returned updates the response.
    pub fn on_request(
        &self,
        route: Option<&StatefulSessionPerRoute>,
        req: &mut Request<ProxyBody>,
        path: &str,
    ) -> Option<Session> {
        let config = match route {
            Some(StatefulSessionPerRoute::Disabled) => return None,
            Some(StatefulSessionPerRoute::Config(c)) => c,
            None => &self.config,
        };
        let state = config.state.as_ref()?;
        let named = match state {
            SessionState::Cookie(c) => {
                if !c.applies_to(path) {
                    return None;
                }
                c.address(req.headers())
            }
            SessionState::Header(h) => req
                .headers()
                .get(h)
                .and_then(|v| decode(v.as_bytes()))
                .and_then(|v| String::from_utf8(v).ok()),
        };
        if let Some(named) = &named {
            req.extensions_mut().insert(UpstreamOverride {
                address: named.parse().ok(),
                strict: config.strict,
                status: config.status,
            });
        }
        Some(Session {
            config: config.clone(),
            named,
        })
    }
}

fn decode(v: &[u8]) -> Option<Vec<u8>> {
    base64::engine::general_purpose::STANDARD.decode(v).ok()
}

impl CookieState {
    /// Envoy's cookie path matcher: no path, or `/`, takes every request; a path ending in
    /// `/` takes the paths under it; another takes itself and what follows it after `/`,
    /// `?` or `#`.
    fn applies_to(&self, path: &str) -> bool {
        let p = self.path.as_str();
        if p.is_empty() || p == "/" {
            return true;
        }
        if p.ends_with('/') {
            return path.starts_with(p);
        }
        match path.strip_prefix(p) {
            Some(rest) => rest.is_empty() || rest.starts_with(['/', '?', '#']),
            None => false,
        }
    }

    /// The host the request's cookie names, if it names one that has not expired.
    fn address(&self, headers: &HeaderMap) -> Option<String> {
        let value = crate::protocol::cookie::value(headers, self.name.as_bytes())?;
        let raw = decode(value)?;
        match <SessionCookie as prost::Message>::decode(raw.as_slice()) {
            Ok(c) if !c.address.is_empty() => {
                (c.expires == 0 || c.expires > epoch_seconds()).then_some(c.address)
            }
            _ => String::from_utf8(raw).ok(),
        }
    }

    /// The `Set-Cookie` naming `address`.
    fn set_cookie(&self, address: String) -> Option<HeaderValue> {
        let expires = match self.ttl {
            0 => 0,
            ttl => epoch_seconds() + ttl,
        };
        let msg = SessionCookie { address, expires };
        let value =
            base64::engine::general_purpose::STANDARD.encode(prost::Message::encode_to_vec(&msg));
        let mut s = format!("{}=\"{value}\"", self.name);
        if self.ttl != 0 {
            s.push_str(&format!("; Max-Age={}", self.ttl));
        }
        if !self.path.is_empty() {
            s.push_str(&format!("; Path={}", self.path));
        }
        s.push_str("; HttpOnly");
        HeaderValue::from_str(&s).ok()
    }
}

fn epoch_seconds() -> u64 {
    SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .unwrap_or(Duration::ZERO)
        .as_secs()
}

/// A request's session, for its response.
pub struct Session {
    config: Arc<SessionConfig>,
    /// The host the request named.
    named: Option<String>,
}

impl Session {
    /// Names the host that answered (`upstream`) on the response when the request named
    /// another (or none).
    pub fn on_response(&self, upstream: Option<SocketAddr>, resp: &mut Response<ProxyBody>) {
        let Some(host) = upstream else { return };
        let host = host.to_string();
        if self.named.as_deref() == Some(host.as_str()) {
            return;
        }
        match &self.config.state {
            Some(SessionState::Cookie(c)) => {
                if let Some(v) = c.set_cookie(host) {
                    resp.headers_mut().append(SET_COOKIE, v);
                }
            }
            Some(SessionState::Header(h)) => {
                let v = base64::engine::general_purpose::STANDARD.encode(host);
                if let Ok(v) = HeaderValue::from_str(&v) {
                    resp.headers_mut().insert(h.clone(), v);
                }
            }
            None => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::header::COOKIE;

    fn cookie(path: &str) -> CookieState {
        CookieState {
            name: "sess".into(),
            path: path.into(),
            ttl: 120,
        }
    }

    #[test]
    fn path_matcher_is_envoys() {
        assert!(cookie("").applies_to("/x"));
        assert!(cookie("/a/").applies_to("/a/b"));
        assert!(!cookie("/a/").applies_to("/a"));
        assert!(cookie("/a").applies_to("/a?q"));
        assert!(cookie("/a").applies_to("/a"));
        assert!(!cookie("/a").applies_to("/ab"));
    }

    #[test]
    fn cookie_round_trips_and_reads_the_old_format() {
        let c = cookie("/");
        let v = c.set_cookie("127.0.0.1:80".into()).expect("value");
        let v = v.to_str().expect("ascii");
        assert!(v.ends_with("; Max-Age=120; Path=/; HttpOnly"), "{v}");
        let value = v
            .split(';')
            .next()
            .expect("pair")
            .trim_start_matches("sess=");
        let mut h = HeaderMap::new();
        h.insert(
            COOKIE,
            HeaderValue::from_str(&format!("a=b; sess={value}")).expect("v"),
        );
        assert_eq!(c.address(&h).as_deref(), Some("127.0.0.1:80"));
        let old = base64::engine::general_purpose::STANDARD.encode("127.0.0.1:81");
        h.insert(
            COOKIE,
            HeaderValue::from_str(&format!("sess={old}")).expect("v"),
        );
        assert_eq!(c.address(&h).as_deref(), Some("127.0.0.1:81"));
        // Expired.
        let msg = SessionCookie {
            address: "127.0.0.1:82".into(),
            expires: 1,
        };
        let v =
            base64::engine::general_purpose::STANDARD.encode(prost::Message::encode_to_vec(&msg));
        h.insert(
            COOKIE,
            HeaderValue::from_str(&format!("sess=\"{v}\"")).expect("v"),
        );
        assert_eq!(c.address(&h), None);
    }
}
