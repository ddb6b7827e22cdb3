//! The OAuth2 filter (`envoy.filters.http.oauth2`): the authorization-code flow of an
//! OAuth 2.0 / OpenID Connect client, as Envoy 1.40 runs it (measured,
//! `tests/http_oauth2.rs`).
//!
//! - A request matching a `pass_through_matcher` goes on untouched (`oauth_passthrough`).
//! - Token cookies (`BearerToken`, `IdToken`, `RefreshToken`) are AES-256-CBC encrypted
//!   under the HMAC secret (unless `disable_token_encryption`); the request's are
//!   decrypted first (each counted `oauth_legacy_cbc_decrypt`, as 1.40 counts CBC).
//! - `authorization` is dropped unless `preserve_authorization_header`.
//! - `signout_path`: every OAuth cookie deleted, `302` to `<scheme>://<host>/`.
//! - Valid cookies (the `OauthHMAC` over host or `cookie_domain`, `OauthExpires` and the
//!   tokens, not expired) pass (`oauth_success`), with `authorization: Bearer <token>`
//!   under `forward_bearer_token`; the flow's cookies are taken out of the request.
//! - Otherwise, with a refresh token cookie and `use_refresh_token` (default on), the
//!   token endpoint is asked for new tokens: the request goes on with them and its
//!   answer sets the new cookies (`oauth_refreshtoken_success`); a failure starts the
//!   flow (`oauth_refreshtoken_failure`).
//! - Otherwise `302` to the `authorization_endpoint` with `client_id`, PKCE's
//!   `code_challenge` (`S256`), `redirect_uri` (formatted from the request),
//!   `response_type=code`, `scope` and `state` (base64url JSON: the original URL, a CSRF
//!   token `<flow id>.<HMAC>`, the flow id), query parameters sorted by name, setting
//!   the nonce and encrypted code-verifier cookies, each under its name and under
//!   `<name>.<flow id>` (`oauth_unauthorized_rq`); a `deny_redirect_matcher` match gets
//!   the `401` instead.
//! - `redirect_path_matcher`: the callback. Its `state`'s CSRF token must equal the
//!   nonce cookie and carry this secret's HMAC; the code is exchanged at the
//!   `token_endpoint` (a POST through the worker's async client,
//!   `http::conn_manager::service_calls::oauth2`) and the answer sets the cookies and
//!   sends the user back to the original URL (`oauth_success`).
//! - Any failure (callback without code or state, CSRF mismatch, token endpoint absent,
//!   not `200`, not JSON, no `access_token`, no expiry, timeout) is Envoy's
//!   `401 OAuth flow failed.` (`oauth_failure`).
//!
//! Counters `http.<stat_prefix>.<filter stat_prefix>oauth_*`, Envoy's set. Not built,
//! refused by path: per-route `OAuth2PerRoute`, `end_session_endpoint`,
//! `post_logout_redirect_uri`, `retry_policy`, `allow_failed_matcher`,
//! `original_request_uri`, `allowed_redirect_domains`, `forward_id_token`,
//! `private_key_jwt_config`, `use_access_token_expiry_for_id_token_cookie`, the
//! `TLS_CLIENT_AUTH` and `PRIVATE_KEY_JWT` auth types.

pub mod crypto;
pub mod secret;

use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use courier_proto::envoy::extensions::filters::http::oauth2::v3 as pb;
use courier_proto::envoy::r#type::matcher::v3::{path_matcher, PathMatcher};
use http::header::{AUTHORIZATION, COOKIE, LOCATION, SET_COOKIE};
use http::{HeaderMap, HeaderName, HeaderValue, Method, Response, StatusCode};

use crate::config::ConfigError;
use crate::filters::http::ext_authz::verdict::ResponseChanges;
use crate::http::codec::body::ProxyBody;
use crate::http::route::{compile_header_matcher, HeaderMatcher, Pseudo, StrMatch};
use crate::protocol::message::{RequestMessage, ResponseMessage};
use crate::stats::{Counter, Store};
use secret::SecretValue;

/// The filter's config type.
pub const FILTER_TYPE: &str = "envoy.extensions.filters.http.oauth2.v3.OAuth2";
/// The filter's well-known name.
pub const FILTER_NAME: &str = "envoy.filters.http.oauth2";
/// Its per-route config type (not built).
pub const PER_ROUTE_TYPE: &str = "envoy.extensions.filters.http.oauth2.v3.OAuth2PerRoute";

/// The body of every refusal.
const UNAUTHORIZED_BODY: &str = "OAuth flow failed.";

/// The filter's counters.
struct Stats {
    unauthorized_rq: Arc<Counter>,
    failure: Arc<Counter>,
    passthrough: Arc<Counter>,
    success: Arc<Counter>,
    refreshtoken_success: Arc<Counter>,
    refreshtoken_failure: Arc<Counter>,
    legacy_cbc_decrypt: Arc<Counter>,
}

/// One cookie's settings (`cookie_configs`).
#[derive(Clone)]
struct CookieSettings {
    path: String,
    same_site: &'static str,
    partitioned: bool,
}

impl CookieSettings {
    fn compile(c: Option<&pb::CookieConfig>) -> CookieSettings {
        let Some(c) = c else {
            return CookieSettings {
                path: "/".into(),
                same_site: "",
                partitioned: false,
            };
        };
        use pb::cookie_config::SameSite;
        CookieSettings {
            path: if c.path.is_empty() {
                "/".into()
            } else {
                c.path.clone()
            },
            same_site: match SameSite::try_from(c.same_site) {
                Ok(SameSite::Strict) => ";SameSite=Strict",
                Ok(SameSite::Lax) => ";SameSite=Lax",
                Ok(SameSite::None) => ";SameSite=None",
                _ => "",
            },
            partitioned: c.partitioned,
        }
    }
}

/// The cookies' names.
struct CookieNames {
    bearer: String,
    hmac: String,
    expires: String,
    id_token: String,
    refresh: String,
    nonce: String,
    code_verifier: String,
}

/// A part of `redirect_uri`.
enum UriPart {
    Literal(String),
    Authority,
    Path,
    Scheme,
    Method,
    Header(HeaderName),
}

/// What the filter reads of a request beside its fields.
pub struct RequestView<'a> {
    /// `:authority` (the host).
    pub authority: &'a str,
    /// `:path`, with its query.
    pub path: &'a str,
    /// `:scheme`.
    pub scheme: &'a str,
    /// `:method`.
    pub method: &'a Method,
}

/// What the filter decides as a request arrives.
pub enum OAuth2Step {
    /// The request goes on.
    Pass,
    /// The filter answers it, with these details.
    Reply(Box<Response<ProxyBody>>, &'static str),
    /// The token endpoint is to be asked first.
    Call(Box<TokenCall>),
}

/// What a token endpoint call is for.
enum CallKind {
    /// A callback's code exchange.
    Exchange {
        original_url: String,
        flow_id: String,
    },
    /// A refresh of expired tokens.
    Refresh,
}

/// A call to the token endpoint the connection manager sends.
pub struct TokenCall {
    /// The request.
    pub request: RequestMessage<Bytes>,
    /// Its cluster.
    pub cluster: String,
    /// Its timeout.
    pub timeout: Duration,
    kind: CallKind,
}

/// A connection manager's OAuth2 filter.
pub struct OAuth2Filter {
    /// The filter's name in `http_filters`: its key in `typed_per_filter_config`.
    pub name: String,
    cluster: String,
    token_authority: String,
    token_path: String,
    timeout: Duration,
    /// `scheme://host/path` of the authorization endpoint.
    auth_base: String,
    /// Its query parameters (raw), then the filter's, sorted by name when sent.
    auth_params: Vec<(String, String)>,
    resources: String,
    client_id: String,
    token_secret: Option<Arc<SecretValue>>,
    hmac_secret: Arc<SecretValue>,
    names: CookieNames,
    cookie_domain: String,
    redirect_uri: Vec<UriPart>,
    redirect_matcher: StrMatch,
    signout: StrMatch,
    basic_auth: bool,
    forward_bearer: bool,
    preserve_authorization: bool,
    pass_through: Vec<HeaderMatcher>,
    deny_redirect: Vec<HeaderMatcher>,
    use_refresh: bool,
    default_expires_in: u64,
    default_refresh_expires_in: u64,
    csrf_expires_in: u64,
    code_verifier_expires_in: u64,
    set_access: bool,
    set_id: bool,
    set_refresh: bool,
    encrypt: bool,
    bearer_cookie: CookieSettings,
    hmac_cookie: CookieSettings,
    expires_cookie: CookieSettings,
    id_cookie: CookieSettings,
    refresh_cookie: CookieSettings,
    nonce_cookie: CookieSettings,
    verifier_cookie: CookieSettings,
    stats: Stats,
}

/// `name` or its default.
fn or(name: &str, default: &str) -> String {
    if name.is_empty() {
        default.to_owned()
    } else {
        name.to_owned()
    }
}

/// Seconds of an optional duration, or `default`.
fn seconds(d: Option<&courier_proto::google::protobuf::Duration>, default: u64) -> u64 {
    d.map_or(default, |d| d.seconds.max(0) as u64)
}

/// A compiled `PathMatcher` (it matches the path without its query).
fn path_matcher(m: Option<&PathMatcher>, path: &str) -> Result<StrMatch, ConfigError> {
    match m.and_then(|m| m.rule.as_ref()) {
        Some(path_matcher::Rule::Path(s)) => StrMatch::compile(s, &format!("{path}.path")),
        None => Err(ConfigError::new(path, "value is required")),
    }
}

/// `redirect_uri`'s parts: literals and `%REQ(...)%` (other commands refused).
fn compile_redirect_uri(uri: &str, path: &str) -> Result<Vec<UriPart>, ConfigError> {
    let mut parts = Vec::new();
    let mut lit = String::new();
    let mut rest = uri;
    while let Some(i) = rest.find('%') {
        lit.push_str(&rest[..i]);
        let after = &rest[i + 1..];
        let Some(end) = after.find('%') else {
            return Err(ConfigError::new(
                path,
                format!("Invalid formatter: un-terminated command in '{uri}'"),
            ));
        };
        let cmd = &after[..end];
        let Some(name) = cmd.strip_prefix("REQ(").and_then(|c| c.strip_suffix(')')) else {
            return Err(ConfigError::unsupported(format!("{path} (%{cmd}%)")));
        };
        let name = name.split('?').next().unwrap_or(name).to_ascii_lowercase();
        if !lit.is_empty() {
            parts.push(UriPart::Literal(std::mem::take(&mut lit)));
        }
        parts.push(match name.as_str() {
            ":authority" | "host" => UriPart::Authority,
            ":path" => UriPart::Path,
            ":scheme" => UriPart::Scheme,
            ":method" => UriPart::Method,
            n => {
                UriPart::Header(HeaderName::from_bytes(n.as_bytes()).map_err(|_| {
                    ConfigError::new(path, format!("invalid header name in %{cmd}%"))
                })?)
            }
        });
        rest = &after[end + 1..];
    }
    lit.push_str(rest);
    if !lit.is_empty() {
        parts.push(UriPart::Literal(lit));
    }
    Ok(parts)
}

/// Envoy's `PercentEncoding::urlEncode`: all but RFC 3986's unreserved characters.
pub(crate) fn url_encode(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~') {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// A request's cookies in order, `(name, value)` with quotes around a value dropped.
fn cookies(headers: &HeaderMap) -> Vec<(String, String)> {
    let mut out: Vec<(String, String)> = Vec::new();
    for (k, v) in crate::protocol::cookie::pairs(headers) {
        let (Ok(k), Ok(v)) = (std::str::from_utf8(k), std::str::from_utf8(v)) else {
            continue;
        };
        // Envoy keeps the first of a repeated name.
        if !out.iter().any(|(n, _)| n == k) {
            out.push((k.to_owned(), v.to_owned()));
        }
    }
    out
}

/// The value of cookie `name` (empty when absent, as Envoy reads it).
fn find<'a>(cookies: &'a [(String, String)], name: &str) -> &'a str {
    cookies
        .iter()
        .find(|(n, _)| n == name)
        .map_or("", |(_, v)| v.as_str())
}

/// Sets the request's `cookie` field to `cookies` (none left: the field goes).
fn set_cookies(headers: &mut HeaderMap, cookies: &[(String, String)]) {
    let joined = cookies
        .iter()
        .map(|(k, v)| format!("{k}={v}"))
        .collect::<Vec<_>>()
        .join("; ");
    headers.remove(COOKIE);
    if let Ok(v) = HeaderValue::from_str(&joined) {
        headers.insert(COOKIE, v);
    }
}

/// Seconds since the epoch now.
fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// A JWT's `exp` claim, if `token` is a JWT with one.
fn jwt_exp(token: &str) -> Option<u64> {
    use base64::Engine as _;
    let mut parts = token.split('.');
    let (_, payload, _) = (parts.next()?, parts.next()?, parts.next()?);
    let raw = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(payload.trim_end_matches('='))
        .ok()?;
    let v: serde_json::Value = serde_json::from_slice(&raw).ok()?;
    v.get("exp")?.as_u64().filter(|e| *e != 0)
}

/// The tokens a token endpoint's answer gives.
struct Tokens {
    access: String,
    id: String,
    refresh: String,
    expires_in: u64,
}

/// What the filter makes of the token endpoint's answer.
pub enum Finished {
    /// The request goes on, its answer getting these changes.
    Pass(Option<ResponseChanges>),
    /// The filter answers it, with these details.
    Reply(Box<Response<ProxyBody>>, &'static str),
}

/// A `302` to `location` with `cookies`.
fn redirect(location: &str, cookies: Vec<String>) -> Box<Response<ProxyBody>> {
    let mut r = Response::new(ProxyBody::empty());
    *r.status_mut() = StatusCode::FOUND;
    let h = r.headers_mut();
    for c in cookies {
        if let Ok(v) = HeaderValue::from_str(&c) {
            h.append(SET_COOKIE, v);
        }
    }
    if let Ok(v) = HeaderValue::from_str(location) {
        h.insert(LOCATION, v);
    }
    h.insert(http::header::CONTENT_LENGTH, HeaderValue::from(0));
    Box::new(r)
}

impl OAuth2Filter {
    /// Compiles the filter named `name` (its `OAuth2` at `path`) of a connection manager
    /// whose stats are under `http.<prefix>`.
    pub fn compile(
        name: &str,
        p: &pb::OAuth2,
        path: &str,
        prefix: &str,
        store: &Store,
    ) -> Result<OAuth2Filter, ConfigError> {
        let at = format!("{path}.config");
        let Some(c) = &p.config else {
            // Envoy's filter without a config does nothing but per-route, refused here.
            return Err(ConfigError::unsupported(at));
        };
        let refuse = |set: bool, field: &str| -> Result<(), ConfigError> {
            if set {
                Err(ConfigError::unsupported(format!("{at}.{field}")))
            } else {
                Ok(())
            }
        };
        refuse(c.retry_policy.is_some(), "retry_policy")?;
        refuse(!c.end_session_endpoint.is_empty(), "end_session_endpoint")?;
        refuse(
            c.post_logout_redirect_uri.is_some(),
            "post_logout_redirect_uri",
        )?;
        refuse(!c.allow_failed_matcher.is_empty(), "allow_failed_matcher")?;
        refuse(!c.original_request_uri.is_empty(), "original_request_uri")?;
        refuse(
            !c.allowed_redirect_domains.is_empty(),
            "allowed_redirect_domains",
        )?;
        refuse(c.forward_id_token.is_some(), "forward_id_token")?;
        refuse(c.private_key_jwt_config.is_some(), "private_key_jwt_config")?;
        refuse(
            c.use_access_token_expiry_for_id_token_cookie,
            "use_access_token_expiry_for_id_token_cookie",
        )?;
        use pb::o_auth2_config::AuthType;
        let basic_auth = match AuthType::try_from(c.auth_type) {
            Ok(AuthType::UrlEncodedBody) => false,
            Ok(AuthType::BasicAuth) => true,
            Ok(_) => return Err(ConfigError::unsupported(format!("{at}.auth_type"))),
            Err(_) => {
                return Err(ConfigError::new(
                    format!("{at}.auth_type"),
                    "value must be one of the defined enum values",
                ))
            }
        };
        let Some(te) = &c.token_endpoint else {
            return Err(ConfigError::new(
                format!("{at}.token_endpoint"),
                "value is required",
            ));
        };
        let cluster = match &te.http_upstream_type {
            Some(courier_proto::envoy::config::core::v3::http_uri::HttpUpstreamType::Cluster(
                c,
            )) if !c.is_empty() => c.clone(),
            _ => {
                return Err(ConfigError::new(
                    format!("{at}.token_endpoint.cluster"),
                    "value length must be at least 1 characters",
                ))
            }
        };
        let Some(timeout) = &te.timeout else {
            return Err(ConfigError::new(
                format!("{at}.token_endpoint.timeout"),
                "value is required",
            ));
        };
        let timeout = Duration::new(timeout.seconds.max(0) as u64, timeout.nanos.max(0) as u32);
        let (authority, token_path) = crate::protocol::message::host_and_path(&te.uri);
        if c.authorization_endpoint.is_empty() {
            return Err(ConfigError::new(
                format!("{at}.authorization_endpoint"),
                "value length must be at least 1 characters",
            ));
        }
        let (auth_base, auth_params) = authorization_endpoint(
            &c.authorization_endpoint,
            &format!("{at}.authorization_endpoint"),
        )?;
        let Some(creds) = &c.credentials else {
            return Err(ConfigError::new(
                format!("{at}.credentials"),
                "value is required",
            ));
        };
        let cat = format!("{at}.credentials");
        if creds.client_id.is_empty() {
            return Err(ConfigError::new(
                format!("{cat}.client_id"),
                "value length must be at least 1 characters",
            ));
        }
        let hmac_secret = match &creds.token_formation {
            Some(pb::o_auth2_credentials::TokenFormation::HmacSecret(s)) => {
                SecretValue::compile(s, &format!("{cat}.hmac_secret"))?
            }
            None => {
                return Err(ConfigError::new(
                    format!("{cat}.token_formation"),
                    "value is required",
                ))
            }
        };
        let token_secret = match &creds.token_secret {
            Some(s) => Some(SecretValue::compile(s, &format!("{cat}.token_secret"))?),
            None => None,
        };
        let n = creds.cookie_names.clone().unwrap_or_default();
        let names = CookieNames {
            bearer: or(&n.bearer_token, "BearerToken"),
            hmac: or(&n.oauth_hmac, "OauthHMAC"),
            expires: or(&n.oauth_expires, "OauthExpires"),
            id_token: or(&n.id_token, "IdToken"),
            refresh: or(&n.refresh_token, "RefreshToken"),
            nonce: or(&n.oauth_nonce, "OauthNonce"),
            code_verifier: or(&n.code_verifier, "CodeVerifier"),
        };
        if c.redirect_uri.is_empty() {
            return Err(ConfigError::new(
                format!("{at}.redirect_uri"),
                "value length must be at least 1 characters",
            ));
        }
        let redirect_uri = compile_redirect_uri(&c.redirect_uri, &format!("{at}.redirect_uri"))?;
        let redirect_matcher = path_matcher(
            c.redirect_path_matcher.as_ref(),
            &format!("{at}.redirect_path_matcher"),
        )?;
        let signout = path_matcher(c.signout_path.as_ref(), &format!("{at}.signout_path"))?;
        let matchers = |list: &[courier_proto::envoy::config::route::v3::HeaderMatcher],
                        field: &str|
         -> Result<Vec<HeaderMatcher>, ConfigError> {
            list.iter()
                .enumerate()
                .map(|(i, m)| compile_header_matcher(m, &format!("{at}.{field}[{i}]")))
                .collect()
        };
        let scopes = if c.auth_scopes.is_empty() {
            "user".to_owned()
        } else {
            c.auth_scopes.join(" ")
        };
        let mut auth_params = auth_params;
        let mut overwrite = |k: &str, v: String| {
            auth_params.retain(|(n, _)| n != k);
            auth_params.push((k.to_owned(), v));
        };
        overwrite("client_id", creds.client_id.clone());
        overwrite("response_type", "code".into());
        overwrite("scope", url_encode(&scopes));
        let configs = c.cookie_configs.clone().unwrap_or_default();
        let stat = |leaf: &str| store.counter(&format!("http.{prefix}.{}{leaf}", c.stat_prefix));
        // Envoy's whole set exists from the start, chunking's included (not built).
        for leaf in [
            "oauth_allow_failed_passthrough",
            "oauth_token_cookie_chunked",
            "oauth_token_cookie_malformed_chunks",
            "oauth_token_cookie_oversized",
            "oauth_token_cookie_reassembled",
        ] {
            stat(leaf);
        }
        Ok(OAuth2Filter {
            name: name.to_owned(),
            cluster,
            token_authority: authority.to_owned(),
            token_path: token_path.to_owned(),
            timeout,
            auth_base,
            auth_params,
            resources: c
                .resources
                .iter()
                .map(|r| format!("&resource={}", url_encode(r)))
                .collect(),
            client_id: creds.client_id.clone(),
            token_secret,
            hmac_secret,
            names,
            cookie_domain: creds.cookie_domain.clone(),
            redirect_uri,
            redirect_matcher,
            signout,
            basic_auth,
            forward_bearer: c.forward_bearer_token,
            preserve_authorization: c.preserve_authorization_header,
            pass_through: matchers(&c.pass_through_matcher, "pass_through_matcher")?,
            deny_redirect: matchers(&c.deny_redirect_matcher, "deny_redirect_matcher")?,
            use_refresh: c.use_refresh_token.is_none_or(|b| b.value),
            default_expires_in: seconds(c.default_expires_in.as_ref(), 0),
            default_refresh_expires_in: seconds(
                c.default_refresh_token_expires_in.as_ref(),
                604800,
            ),
            csrf_expires_in: seconds(c.csrf_token_expires_in.as_ref(), 600),
            code_verifier_expires_in: seconds(c.code_verifier_token_expires_in.as_ref(), 600),
            set_access: !c.disable_access_token_set_cookie,
            set_id: !c.disable_id_token_set_cookie,
            set_refresh: !c.disable_refresh_token_set_cookie,
            encrypt: !c.disable_token_encryption,
            bearer_cookie: CookieSettings::compile(configs.bearer_token_cookie_config.as_ref()),
            hmac_cookie: CookieSettings::compile(configs.oauth_hmac_cookie_config.as_ref()),
            expires_cookie: CookieSettings::compile(configs.oauth_expires_cookie_config.as_ref()),
            id_cookie: CookieSettings::compile(configs.id_token_cookie_config.as_ref()),
            refresh_cookie: CookieSettings::compile(configs.refresh_token_cookie_config.as_ref()),
            nonce_cookie: CookieSettings::compile(configs.oauth_nonce_cookie_config.as_ref()),
            verifier_cookie: CookieSettings::compile(configs.code_verifier_cookie_config.as_ref()),
            stats: Stats {
                unauthorized_rq: stat("oauth_unauthorized_rq"),
                failure: stat("oauth_failure"),
                passthrough: stat("oauth_passthrough"),
                success: stat("oauth_success"),
                refreshtoken_success: stat("oauth_refreshtoken_success"),
                refreshtoken_failure: stat("oauth_refreshtoken_failure"),
                legacy_cbc_decrypt: stat("oauth_legacy_cbc_decrypt"),
            },
        })
    }

    /// The management server's secrets the filter waits for.
    pub fn server_secrets(&self) -> impl Iterator<Item = &str> {
        std::iter::once(&self.hmac_secret)
            .chain(self.token_secret.iter())
            .filter(|s| s.from_server)
            .map(|s| s.name())
    }

    /// The request's `redirect_uri`.
    fn redirect_uri(&self, headers: &HeaderMap, rq: &RequestView<'_>) -> String {
        let mut out = String::new();
        for p in &self.redirect_uri {
            match p {
                UriPart::Literal(s) => out.push_str(s),
                UriPart::Authority => out.push_str(rq.authority),
                UriPart::Path => out.push_str(rq.path),
                UriPart::Scheme => out.push_str(rq.scheme),
                UriPart::Method => out.push_str(rq.method.as_str()),
                UriPart::Header(h) => {
                    if let Some(v) = headers.get(h).and_then(|v| v.to_str().ok()) {
                        out.push_str(v)
                    }
                }
            }
        }
        out
    }

    /// A cookie's attributes after its value.
    fn tail(&self, s: &CookieSettings, max_age: &str) -> String {
        let mut t = String::new();
        if !self.cookie_domain.is_empty() {
            t.push_str(";domain=");
            t.push_str(&self.cookie_domain);
        }
        t.push_str(&format!(
            ";path={};Max-Age={max_age};secure;HttpOnly{}",
            s.path, s.same_site
        ));
        if s.partitioned {
            t.push_str(";Partitioned");
        }
        t
    }

    /// The `Set-Cookie` deleting cookie `name` at `path`.
    fn delete(&self, name: &str, path: &str) -> String {
        let mut c = format!("{name}=deleted; path={path}; expires=Thu, 01 Jan 1970 00:00:00 GMT");
        if !self.cookie_domain.is_empty() {
            c.push_str(";domain=");
            c.push_str(&self.cookie_domain);
        }
        if name.starts_with("__Secure-") || name.starts_with("__Host-") {
            c.push_str("; Secure");
        }
        c
    }

    /// The `Set-Cookie`s deleting a flow's nonce and code-verifier cookies.
    fn delete_flow_cookies(&self, flow_id: &str, out: &mut Vec<String>) {
        for (base, s) in [
            (&self.names.nonce, &self.nonce_cookie),
            (&self.names.code_verifier, &self.verifier_cookie),
        ] {
            if !flow_id.is_empty() {
                out.push(self.delete(&format!("{base}.{flow_id}"), &s.path));
            }
            out.push(self.delete(base, &s.path));
        }
    }

    /// Envoy's `401`, counted, deleting the flow's cookies when it is known.
    fn unauthorized(&self, flow_id: &str, why: &str, worker: usize) -> Box<Response<ProxyBody>> {
        tracing::warn!(filter = %self.name, "Responding with 401 Unauthorized. Cause: {why}");
        self.stats.failure.inc(worker);
        let mut r = crate::http::conn_manager::local_reply::local_reply(
            StatusCode::UNAUTHORIZED,
            UNAUTHORIZED_BODY,
        );
        if !flow_id.is_empty() {
            let mut cookies = Vec::new();
            self.delete_flow_cookies(flow_id, &mut cookies);
            for c in cookies {
                if let Ok(v) = HeaderValue::from_str(&c) {
                    r.headers_mut().append(SET_COOKIE, v);
                }
            }
        }
        Box::new(r)
    }

    /// Decides on a request as it arrives.
    pub fn on_request(
        &self,
        headers: &mut HeaderMap,
        rq: &RequestView<'_>,
        pseudo: &Pseudo<'_>,
        worker: usize,
    ) -> OAuth2Step {
        if self.pass_through.iter().any(|m| m.matches(headers, pseudo)) {
            self.stats.passthrough.inc(worker);
            return OAuth2Step::Pass;
        }
        let Some(secret) = self.hmac_secret.get() else {
            self.stats.failure.inc(worker);
            return OAuth2Step::Reply(
                Box::new(crate::http::conn_manager::local_reply::local_reply(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "Service Unavailable",
                )),
                "OAuth2_secrets_are_not_ready",
            );
        };
        let mut jar = cookies(headers);
        if self.encrypt {
            let mut changed = false;
            for name in [
                &self.names.bearer,
                &self.names.id_token,
                &self.names.refresh,
            ] {
                if let Some((_, v)) = jar.iter_mut().find(|(n, v)| n == name && !v.is_empty()) {
                    // A value that does not decrypt stays as it is: its HMAC then fails.
                    if let Some(plain) = crypto::decrypt(v, &secret) {
                        self.stats.legacy_cbc_decrypt.inc(worker);
                        *v = plain;
                    }
                    changed = true;
                }
            }
            if changed {
                set_cookies(headers, &jar);
            }
        }
        if !self.preserve_authorization {
            headers.remove(AUTHORIZATION);
        }
        let path_only = rq.path.split(['?', '#']).next().unwrap_or(rq.path);
        if self.signout.matches(path_only) {
            return OAuth2Step::Reply(self.sign_out(&jar, rq), "oauth.sign_out");
        }
        let on_callback = self.redirect_matcher.matches(path_only);
        let domain = if self.cookie_domain.is_empty() {
            rq.authority
        } else {
            &self.cookie_domain
        };
        let expires = find(&jar, &self.names.expires);
        let access = find(&jar, &self.names.bearer);
        let valid = crypto::cookie_hmac_matches(
            &secret,
            [
                domain,
                expires,
                access,
                find(&jar, &self.names.id_token),
                find(&jar, &self.names.refresh),
            ],
            find(&jar, &self.names.hmac),
        ) && expires.parse::<u64>().is_ok_and(|e| e > now());
        if valid {
            self.stats.success.inc(worker);
            if self.forward_bearer && !access.is_empty() {
                if let Ok(v) = HeaderValue::from_str(&format!("Bearer {access}")) {
                    headers.insert(AUTHORIZATION, v);
                }
            }
            if on_callback {
                let checked = self.check_callback(&jar, rq.path, &secret);
                return OAuth2Step::Reply(
                    match checked {
                        Err((flow, why)) => self.unauthorized(&flow, &why, worker),
                        Ok((url, flow, _)) if self.redirect_matcher.matches(url_path(&url)) => {
                            let why = format!(
                                "State url query params matches the redirect path matcher: {url}"
                            );
                            self.unauthorized(&flow, &why, worker)
                        }
                        Ok((url, flow, _)) => {
                            let mut c = Vec::new();
                            self.delete_flow_cookies(&flow, &mut c);
                            redirect(&url, c)
                        }
                    },
                    "oauth.race_redirect",
                );
            }
            self.remove_flow_cookies(headers, jar);
            return OAuth2Step::Pass;
        }
        if !on_callback {
            let refresh = find(&jar, &self.names.refresh);
            if self.use_refresh && !refresh.is_empty() {
                return OAuth2Step::Call(Box::new(self.refresh_call(refresh)));
            }
            if self
                .deny_redirect
                .iter()
                .any(|m| m.matches(headers, pseudo))
            {
                let why = format!(
                    "Unauthorized, and redirecting to OAuth server is not allowed: {}",
                    rq.path
                );
                return OAuth2Step::Reply(self.unauthorized("", &why, worker), "oauth_flow_failed");
            }
            return OAuth2Step::Reply(
                self.to_authorization_server(headers, rq, &secret, worker),
                "oauth.missing_credentials",
            );
        }
        let (url, flow_id, code) = match self.check_callback(&jar, rq.path, &secret) {
            Ok(ok) => ok,
            Err((flow, why)) => {
                return OAuth2Step::Reply(
                    self.unauthorized(&flow, &why, worker),
                    "oauth_flow_failed",
                )
            }
        };
        let verifier = cookie_with_suffix(&jar, &self.names.code_verifier, &flow_id);
        let Some(verifier) = verifier else {
            let why = "Code verifier cookie is missing in the request";
            return OAuth2Step::Reply(
                self.unauthorized(&flow_id, why, worker),
                "oauth_flow_failed",
            );
        };
        let Some(verifier) = crypto::decrypt(verifier, &secret) else {
            let why = format!("Failed to decrypt code verifier: {verifier}");
            return OAuth2Step::Reply(
                self.unauthorized(&flow_id, &why, worker),
                "oauth_flow_failed",
            );
        };
        self.stats.legacy_cbc_decrypt.inc(worker);
        let redirect_uri = self.redirect_uri(headers, rq);
        let client = url_encode(&self.client_id);
        let secret = url_encode(&self.client_secret());
        let cb = url_encode(&redirect_uri);
        let mut call_headers = HeaderMap::new();
        let body = if self.basic_auth {
            self.basic_authorization(&mut call_headers);
            format!("grant_type=authorization_code&code={code}&redirect_uri={cb}&code_verifier={verifier}")
        } else {
            format!("grant_type=authorization_code&code={code}&client_id={client}&client_secret={secret}&redirect_uri={cb}&code_verifier={verifier}")
        };
        OAuth2Step::Call(Box::new(self.call(
            call_headers,
            body,
            CallKind::Exchange {
                original_url: url,
                flow_id,
            },
        )))
    }

    /// The client's secret, as text.
    fn client_secret(&self) -> String {
        self.token_secret
            .as_ref()
            .and_then(|s| s.get())
            .map(|b| String::from_utf8_lossy(&b).into_owned())
            .unwrap_or_default()
    }

    /// `authorization: Basic <client_id:secret>` for `BASIC_AUTH`.
    fn basic_authorization(&self, headers: &mut HeaderMap) {
        use base64::Engine as _;
        let token = base64::engine::general_purpose::STANDARD.encode(format!(
            "{}:{}",
            self.client_id,
            self.client_secret()
        ));
        if let Ok(v) = HeaderValue::from_str(&format!("Basic {token}")) {
            headers.insert(AUTHORIZATION, v);
        }
    }

    /// A POST of `body` to the token endpoint.
    fn call(&self, mut headers: HeaderMap, body: String, kind: CallKind) -> TokenCall {
        headers.insert(
            http::header::CONTENT_TYPE,
            HeaderValue::from_static("application/x-www-form-urlencoded"),
        );
        headers.insert(
            http::header::ACCEPT,
            HeaderValue::from_static("application/json"),
        );
        TokenCall {
            request: RequestMessage {
                method: Method::POST,
                path: self.token_path.clone(),
                authority: self.token_authority.clone(),
                headers,
                body: Bytes::from(body),
            },
            cluster: self.cluster.clone(),
            timeout: self.timeout,
            kind,
        }
    }

    /// The refresh grant for `refresh`.
    fn refresh_call(&self, refresh: &str) -> TokenCall {
        let mut headers = HeaderMap::new();
        let body = if self.basic_auth {
            self.basic_authorization(&mut headers);
            format!(
                "grant_type=refresh_token&refresh_token={}",
                url_encode(refresh)
            )
        } else {
            format!(
                "grant_type=refresh_token&refresh_token={}&client_id={}&client_secret={}",
                url_encode(refresh),
                url_encode(&self.client_id),
                url_encode(&self.client_secret())
            )
        };
        self.call(headers, body, CallKind::Refresh)
    }

    /// Checks a callback: `Ok((original url, flow id, code))`, or `Err((flow id, why))`.
    #[allow(clippy::type_complexity)]
    fn check_callback(
        &self,
        jar: &[(String, String)],
        path: &str,
        secret: &[u8],
    ) -> Result<(String, String, String), (String, String)> {
        let query = path.split_once('?').map_or("", |(_, q)| q);
        let param = |name: &str| {
            query
                .split('&')
                .filter_map(|p| p.split_once('=').or(Some((p, ""))))
                .find(|(k, _)| *k == name)
                .map(|(_, v)| v.to_owned())
        };
        let state = param("state");
        if param("error").is_some() {
            let flow = state
                .and_then(|s| self.check_state(jar, &s, secret).ok())
                .map(|s| s.1)
                .unwrap_or_default();
            return Err((flow, format!("OAuth server returned an error: {query}")));
        }
        let (Some(code), Some(state)) = (param("code"), state) else {
            return Err((
                String::new(),
                format!("Code or state query param does not exist: {query}"),
            ));
        };
        let (url, flow) = self.check_state(jar, &state, secret)?;
        Ok((url, flow, code))
    }

    /// Checks a `state`: `Ok((original url, flow id))`.
    fn check_state(
        &self,
        jar: &[(String, String)],
        state: &str,
        secret: &[u8],
    ) -> Result<(String, String), (String, String)> {
        let s = crypto::decode_state(state).map_err(|why| (String::new(), why))?;
        let cookie = cookie_with_suffix(jar, &self.names.nonce, &s.flow_id);
        if cookie != Some(s.csrf_token.as_str()) || !crypto::csrf_token_valid(secret, &s.csrf_token)
        {
            return Err((String::new(), "CSRF token validation failed".into()));
        }
        if !s.url.contains("://") {
            return Err((
                s.flow_id,
                format!("State url can not be initialized: {}", s.url),
            ));
        }
        Ok((s.url, s.flow_id))
    }

    /// The `302` to the authorization server, setting the flow's cookies.
    fn to_authorization_server(
        &self,
        headers: &HeaderMap,
        rq: &RequestView<'_>,
        secret: &[u8],
        worker: usize,
    ) -> Box<Response<ProxyBody>> {
        let scheme = if rq.scheme.eq_ignore_ascii_case("http") {
            "http"
        } else {
            "https"
        };
        let original = format!("{scheme}://{}{}", rq.authority, rq.path);
        let flow_id = crypto::flow_id();
        let csrf = crypto::csrf_token(secret, &flow_id);
        let mut cookies = Vec::new();
        let tail = self.tail(&self.nonce_cookie, &self.csrf_expires_in.to_string());
        cookies.push(format!("{}.{flow_id}={csrf}{tail}", self.names.nonce));
        cookies.push(format!("{}={csrf}{tail}", self.names.nonce));
        let verifier = crypto::code_verifier();
        let encrypted = crypto::encrypt(&verifier, secret);
        let tail = self.tail(
            &self.verifier_cookie,
            &self.code_verifier_expires_in.to_string(),
        );
        cookies.push(format!(
            "{}.{flow_id}={encrypted}{tail}",
            self.names.code_verifier
        ));
        cookies.push(format!("{}={encrypted}{tail}", self.names.code_verifier));
        let mut params = self.auth_params.clone();
        params.push((
            "state".into(),
            crypto::encode_state(&original, &csrf, &flow_id),
        ));
        params.push((
            "redirect_uri".into(),
            url_encode(&self.redirect_uri(headers, rq)),
        ));
        params.push(("code_challenge".into(), crypto::code_challenge(&verifier)));
        params.push(("code_challenge_method".into(), "S256".into()));
        // Envoy's query parameters are a map by name: sorted, stable for repeats.
        params.sort_by(|a, b| a.0.cmp(&b.0));
        let query = params
            .iter()
            .map(|(k, v)| format!("{k}={v}"))
            .collect::<Vec<_>>()
            .join("&");
        let location = format!("{}?{query}{}", self.auth_base, self.resources);
        self.stats.unauthorized_rq.inc(worker);
        redirect(&location, cookies)
    }

    /// Signing out: every OAuth cookie deleted, back to `/`.
    fn sign_out(&self, jar: &[(String, String)], rq: &RequestView<'_>) -> Box<Response<ProxyBody>> {
        let n = &self.names;
        let mut cookies = vec![
            self.delete(&n.hmac, &self.hmac_cookie.path),
            self.delete(&n.bearer, &self.bearer_cookie.path),
            self.delete(&n.id_token, &self.id_cookie.path),
            self.delete(&n.refresh, &self.refresh_cookie.path),
            self.delete(&n.expires, &self.expires_cookie.path),
        ];
        for (name, _) in jar {
            if matches_base(name, &n.nonce) {
                cookies.push(self.delete(name, &self.nonce_cookie.path));
            } else if matches_base(name, &n.code_verifier) {
                cookies.push(self.delete(name, &self.verifier_cookie.path));
            }
        }
        redirect(&format!("{}://{}/", rq.scheme, rq.authority), cookies)
    }

    /// Takes the flow's and the HMAC's cookies out of a request going upstream (Envoy's
    /// `oauth2_cleanup_cookies`).
    fn remove_flow_cookies(&self, headers: &mut HeaderMap, mut jar: Vec<(String, String)>) {
        if jar.is_empty() {
            return;
        }
        let n = &self.names;
        jar.retain(|(k, _)| {
            *k != n.hmac
                && *k != n.expires
                && *k != n.refresh
                && !matches_base(k, &n.nonce)
                && !matches_base(k, &n.code_verifier)
        });
        set_cookies(headers, &jar);
    }

    /// The tokens an answer of the token endpoint gives: `Err` with why not.
    fn tokens(&self, answer: Option<&ResponseMessage>) -> Result<Tokens, String> {
        let Some(answer) = answer else {
            return Err("OAuth request failed".into());
        };
        if answer.head.status != StatusCode::OK {
            return Err(format!(
                "Oauth response code: {}",
                answer.head.status.as_u16()
            ));
        }
        let v: serde_json::Value = serde_json::from_slice(&answer.body)
            .map_err(|e| format!("Error parsing response body: {e}"))?;
        let text = |k: &str| v.get(k).and_then(|x| x.as_str()).map(str::to_owned);
        let Some(access) = text("access_token") else {
            return Err("No access token after asyncGetAccessToken".into());
        };
        let expires_in = match v.get("expires_in") {
            Some(serde_json::Value::Number(n)) => n.as_u64().unwrap_or(0),
            Some(serde_json::Value::String(s)) => s.parse().unwrap_or(0),
            _ => self.default_expires_in,
        };
        if expires_in == 0 {
            return Err("No default or explicit access token expiration".into());
        }
        Ok(Tokens {
            access,
            id: text("id_token").unwrap_or_default(),
            refresh: text("refresh_token").unwrap_or_default(),
            expires_in,
        })
    }

    /// The cookies that carry `t` (its tokens as kept: those the config sets), with the
    /// expiry and HMAC; the kept tokens are returned too.
    fn token_cookies(
        &self,
        t: &Tokens,
        domain: &str,
        jar: &[(String, String)],
        secret: &[u8],
    ) -> (Vec<String>, String, [String; 3]) {
        let access = if self.set_access {
            t.access.clone()
        } else {
            String::new()
        };
        let id = if self.set_id {
            t.id.clone()
        } else {
            String::new()
        };
        let refresh = if self.use_refresh && self.set_refresh {
            t.refresh.clone()
        } else {
            String::new()
        };
        let expires_in = t.expires_in.to_string();
        let new_expires = (now() + t.expires_in).to_string();
        let hmac = crypto::cookie_hmac(secret, [domain, &new_expires, &access, &id, &refresh]);
        let now = now();
        let jwt_left = |tok: &str| jwt_exp(tok).map(|e| e.saturating_sub(now).to_string());
        let id_age = if id.is_empty() {
            expires_in.clone()
        } else {
            jwt_left(&id).unwrap_or_else(|| expires_in.clone())
        };
        let refresh_age = if self.use_refresh {
            jwt_left(&refresh).unwrap_or_else(|| self.default_refresh_expires_in.to_string())
        } else {
            expires_in.clone()
        };
        let enc = |s: &str| {
            if self.encrypt {
                crypto::encrypt(s, secret)
            } else {
                s.to_owned()
            }
        };
        let n = &self.names;
        let mut c = vec![
            format!(
                "{}={hmac}{}",
                n.hmac,
                self.tail(&self.hmac_cookie, &expires_in)
            ),
            format!(
                "{}={new_expires}{}",
                n.expires,
                self.tail(&self.expires_cookie, &expires_in)
            ),
        ];
        for (name, value, settings, age) in [
            (&n.bearer, &access, &self.bearer_cookie, &expires_in),
            (&n.id_token, &id, &self.id_cookie, &id_age),
            (&n.refresh, &refresh, &self.refresh_cookie, &refresh_age),
        ] {
            if !value.is_empty() {
                c.push(format!("{name}={}{}", enc(value), self.tail(settings, age)));
            } else if jar.iter().any(|(k, _)| k == name) {
                c.push(self.delete(name, &settings.path));
            }
        }
        (c, new_expires, [access, id, refresh])
    }

    /// Applies the token endpoint's answer (`None`: no answer) to the request `call` was
    /// made for.
    pub fn finish(
        &self,
        call: TokenCall,
        answer: Option<&ResponseMessage>,
        headers: &mut HeaderMap,
        rq: &RequestView<'_>,
        pseudo: &Pseudo<'_>,
        worker: usize,
    ) -> Finished {
        let Some(secret) = self.hmac_secret.get() else {
            return Finished::Reply(
                self.unauthorized("", "no HMAC secret", worker),
                "oauth_flow_failed",
            );
        };
        let domain = if self.cookie_domain.is_empty() {
            rq.authority.to_owned()
        } else {
            self.cookie_domain.clone()
        };
        let jar = cookies(headers);
        match call.kind {
            CallKind::Exchange {
                original_url,
                flow_id,
            } => {
                let tokens = match self.tokens(answer) {
                    Ok(t) => t,
                    Err(why) => {
                        return Finished::Reply(
                            self.unauthorized(&flow_id, &why, worker),
                            "oauth_flow_failed",
                        )
                    }
                };
                let (mut c, _, _) = self.token_cookies(&tokens, &domain, &jar, &secret);
                self.delete_flow_cookies(&flow_id, &mut c);
                self.stats.success.inc(worker);
                Finished::Reply(redirect(&original_url, c), "oauth.logged_in")
            }
            CallKind::Refresh => {
                let tokens = match self.tokens(answer) {
                    // An answer without a new refresh token keeps the one the request
                    // had (in the HMAC and the answer's cookie too), as Envoy.
                    Ok(mut t) => {
                        if t.refresh.is_empty() {
                            t.refresh = find(&jar, &self.names.refresh).to_owned();
                        }
                        t
                    }
                    Err(why) => {
                        tracing::debug!(filter = %self.name, "refreshing the access token failed: {why}");
                        self.stats.refreshtoken_failure.inc(worker);
                        if self
                            .deny_redirect
                            .iter()
                            .any(|m| m.matches(headers, pseudo))
                        {
                            let why = "Failed to refresh the access token, and redirecting to OAuth server is not allowed";
                            return Finished::Reply(
                                self.unauthorized("", why, worker),
                                "oauth_flow_failed",
                            );
                        }
                        return Finished::Reply(
                            self.to_authorization_server(headers, rq, &secret, worker),
                            "oauth.missing_credentials",
                        );
                    }
                };
                let (set, new_expires, [access, id, refresh]) =
                    self.token_cookies(&tokens, &domain, &jar, &secret);
                let mut jar = jar;
                let mut put = |k: &str, v: &str| match jar.iter_mut().find(|(n, _)| n == k) {
                    Some((_, old)) => *old = v.to_owned(),
                    None => jar.push((k.to_owned(), v.to_owned())),
                };
                put(&self.names.expires, &new_expires);
                if !access.is_empty() {
                    put(&self.names.bearer, &access);
                }
                if !id.is_empty() {
                    put(&self.names.id_token, &id);
                }
                if !refresh.is_empty() {
                    put(&self.names.refresh, &refresh);
                }
                set_cookies(headers, &jar);
                if self.forward_bearer && !access.is_empty() {
                    if let Ok(v) = HeaderValue::from_str(&format!("Bearer {access}")) {
                        headers.insert(AUTHORIZATION, v);
                    }
                }
                self.stats.refreshtoken_success.inc(worker);
                self.stats.success.inc(worker);
                self.remove_flow_cookies(headers, jar);
                let add = set
                    .into_iter()
                    .filter_map(|c| HeaderValue::from_str(&c).ok())
                    .map(|v| (SET_COOKIE, v))
                    .collect();
                Finished::Pass(Some(ResponseChanges {
                    add,
                    ..Default::default()
                }))
            }
        }
    }
}

/// Whether cookie `name` is `base` or `base.<suffix>`.
fn matches_base(name: &str, base: &str) -> bool {
    name == base
        || name
            .strip_prefix(base)
            .and_then(|r| r.strip_prefix('.'))
            .is_some_and(|r| !r.is_empty())
}

/// Cookie `<base>.<flow id>`, else `<base>` (Envoys before per-flow cookies); empty
/// values count as absent.
fn cookie_with_suffix<'a>(
    jar: &'a [(String, String)],
    base: &str,
    flow_id: &str,
) -> Option<&'a str> {
    let suffixed = format!("{base}.{flow_id}");
    [find(jar, &suffixed), find(jar, base)]
        .into_iter()
        .find(|v| !v.is_empty())
}

/// The path and query of a URL.
fn url_path(url: &str) -> &str {
    crate::protocol::message::host_and_path(url).1
}

/// The authorization endpoint's base (`scheme://host/path`) and its query parameters.
fn authorization_endpoint(
    url: &str,
    path: &str,
) -> Result<(String, Vec<(String, String)>), ConfigError> {
    let invalid = || {
        ConfigError::new(
            path,
            format!("OAuth2 filter: invalid authorization endpoint URL '{url}' in config."),
        )
    };
    let (scheme, rest) = url.split_once("://").ok_or_else(invalid)?;
    if scheme.is_empty() || rest.is_empty() || rest.starts_with('/') {
        return Err(invalid());
    }
    let (base, query) = match url.split_once('?') {
        Some((b, q)) => (b, q),
        None => (url, ""),
    };
    let base = if base[scheme.len() + 3..].contains('/') {
        base.to_owned()
    } else {
        format!("{base}/")
    };
    let mut params: Vec<(String, String)> = Vec::new();
    for p in query.split('&').filter(|p| !p.is_empty()) {
        let (k, v) = p.split_once('=').unwrap_or((p, ""));
        params.retain(|(n, _)| n != k);
        params.push((k.to_owned(), v.to_owned()));
    }
    Ok((base, params))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn url_encoding_is_envoys() {
        assert_eq!(url_encode("http://h:1/cb"), "http%3A%2F%2Fh%3A1%2Fcb");
        assert_eq!(url_encode("openid email"), "openid%20email");
    }

    #[test]
    fn authorization_endpoint_splits() {
        let (b, p) = authorization_endpoint("https://a.example/authorize?x=1", "p").unwrap();
        assert_eq!(b, "https://a.example/authorize");
        assert_eq!(p, vec![("x".to_string(), "1".to_string())]);
        assert!(authorization_endpoint("nope", "p").is_err());
    }

    #[test]
    fn cookie_bases_match_with_suffixes() {
        assert!(matches_base("OauthNonce", "OauthNonce"));
        assert!(matches_base("OauthNonce.ab", "OauthNonce"));
        assert!(!matches_base("OauthNonce.", "OauthNonce"));
        assert!(!matches_base("OauthNonceX", "OauthNonce"));
    }
}
