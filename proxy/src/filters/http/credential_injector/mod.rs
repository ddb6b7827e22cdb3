//! The credential injector filter (`envoy.filters.http.credential_injector`): a credential
//! from a secret is set on each request before it goes upstream.
//!
//! As Envoy 1.40 (measured, `tests/http_credential_injector.rs`):
//!
//! - `credential` (required) is the `generic` credential
//!   (`envoy.extensions.http.injected_credentials.generic.v3.Generic`): the
//!   `generic_secret.secret` of the secret its `credential` names, trailing `\r`/`\n`
//!   dropped, after `header_value_prefix`, set in `header` (`authorization` when empty).
//! - A request that has the field already keeps it unless `overwrite` (counted
//!   `already_exists`); one that gets it is counted `injected`.
//! - An empty secret fails every request: `401 Failed to inject credential.` (details
//!   `failed_to_inject_credential`), counted `failed`; with
//!   `allow_request_without_credential` the request goes on without it (still `failed`).
//! - Counters `http.<stat_prefix>.credential_injector.{injected,failed,already_exists}`.
//!
//! The secret is a static one (`static_resources.secrets`), read from a file
//! (`sds_config: { path_config_source }`, re-read when it changes) or sent by a management
//! server (`sds_config: { ads }` or an `api_config_source`: an SDS subscription, the
//! filter's listener warming until the secret arrives, as Envoy's), all through
//! `transport_socket::tls::sds` as TLS contexts' secrets; requests take a new value at
//! once. The `oauth2` client-credentials credential is refused by path. A secret name no
//! static secret has, or a secret that is not a `generic_secret`, refuses the config
//! (Envoy 1.40 crashes on both, measured).

use std::sync::Arc;

use arc_swap::ArcSwap;
use courier_proto::envoy::extensions::transport_sockets::tls::v3::SdsSecretConfig;

use courier_proto::envoy::extensions::filters::http::credential_injector::v3 as pb;
use courier_proto::envoy::extensions::http::injected_credentials::generic::v3 as generic_pb;
use courier_proto::envoy::extensions::transport_sockets::tls::v3::secret;
use http::header::{HeaderName, HeaderValue, AUTHORIZATION};
use http::{HeaderMap, Response, StatusCode};

use crate::config::ConfigError;
use crate::http::codec::body::ProxyBody;
use crate::stats::{Counter, Store};
use crate::transport_socket::tls::sds::{self, Reload};

/// The filter's config type.
pub const FILTER_TYPE: &str =
    "envoy.extensions.filters.http.credential_injector.v3.CredentialInjector";
/// The filter's well-known name.
pub const FILTER_NAME: &str = "envoy.filters.http.credential_injector";
/// The generic credential's type.
const GENERIC_TYPE: &str = "envoy.extensions.http.injected_credentials.generic.v3.Generic";
/// The OAuth2 client-credentials credential's type (not built).
const OAUTH2_TYPE: &str = "envoy.extensions.http.injected_credentials.oauth2.v3.OAuth2";

/// A connection manager's credential injector filter.
pub struct CredentialInjectorFilter {
    /// The filter's name in `http_filters`: its key in `typed_per_filter_config`.
    pub name: String,
    header: HeaderName,
    credential: Arc<Credential>,
    overwrite: bool,
    allow_without: bool,
    injected: Arc<Counter>,
    failed: Arc<Counter>,
    already_exists: Arc<Counter>,
}

impl CredentialInjectorFilter {
    /// Compiles the filter named `name` (its `CredentialInjector` at `path`) of a
    /// connection manager whose stats are under `http.<prefix>`.
    pub fn compile(
        name: &str,
        p: &pb::CredentialInjector,
        path: &str,
        prefix: &str,
        store: &Store,
    ) -> Result<CredentialInjectorFilter, ConfigError> {
        let at = format!("{path}.credential");
        let Some(credential) = &p.credential else {
            return Err(ConfigError::new(at, "value is required"));
        };
        let Some(any) = &credential.typed_config else {
            return Err(ConfigError::new(
                format!("{at}.typed_config"),
                "value is required",
            ));
        };
        let at = format!("{at}.typed_config");
        let generic: generic_pb::Generic =
            match courier_proto::type_url::message_name(&any.type_url) {
                GENERIC_TYPE => super::unpack(any, &at)?,
                OAUTH2_TYPE => return Err(ConfigError::unsupported(at)),
                other => {
                    return Err(ConfigError::new(
                        at,
                        format!(
                        "Didn't find a registered implementation for '{}' with type URL: '{other}'",
                        credential.name
                    ),
                    ))
                }
            };
        let (header, credential) = compile_generic(&generic, &at)?;
        let counter = |c: &str| store.counter(&format!("http.{prefix}.credential_injector.{c}"));
        Ok(CredentialInjectorFilter {
            name: name.to_string(),
            header,
            credential,
            overwrite: p.overwrite,
            allow_without: p.allow_request_without_credential,
            injected: counter("injected"),
            failed: counter("failed"),
            already_exists: counter("already_exists"),
        })
    }

    /// The management server's secret the filter waits for, if its secret comes from one.
    pub fn server_secret(&self) -> Option<&str> {
        self.credential
            .from_server
            .then_some(self.credential.sds.name.as_str())
    }

    /// Injects the credential into a request: its refusal if it must not go on without.
    pub fn on_request(
        &self,
        headers: &mut HeaderMap,
        worker: usize,
    ) -> Option<Box<Response<ProxyBody>>> {
        if !self.overwrite && headers.contains_key(&self.header) {
            self.already_exists.inc(worker);
            return None;
        }
        let value = self.credential.value.load();
        let Some(value) = &**value else {
            tracing::debug!(filter = %self.name, "no credential to inject: the secret is empty");
            self.failed.inc(worker);
            return (!self.allow_without).then(|| {
                Box::new(crate::http::conn_manager::local_reply::local_reply(
                    StatusCode::UNAUTHORIZED,
                    "Failed to inject credential.",
                ))
            });
        };
        headers.insert(self.header.clone(), value.clone());
        self.injected.inc(worker);
        None
    }
}

/// The generic credential's value, re-read when its secret's file changes.
struct Credential {
    /// The field's value; `None`: the secret is empty.
    value: ArcSwap<Option<HeaderValue>>,
    sds: SdsSecretConfig,
    prefix: String,
    /// Where its `SdsSecretConfig` is, for errors.
    path: String,
    /// Whether a management server sends it (its listener warms on it).
    from_server: bool,
}

impl Reload for Credential {
    fn reload(&self) -> Result<(), ConfigError> {
        let value = read_secret(&self.sds, &self.prefix, &self.path, &mut Vec::new())?;
        self.value.store(Arc::new(value));
        Ok(())
    }
}

/// The generic credential at `path`: its field and value.
fn compile_generic(
    g: &generic_pb::Generic,
    path: &str,
) -> Result<(HeaderName, Arc<Credential>), ConfigError> {
    let header = match g.header.as_str() {
        "" => AUTHORIZATION,
        h => HeaderName::from_bytes(h.to_ascii_lowercase().as_bytes()).map_err(|_| {
            ConfigError::new(
                format!("{path}.header"),
                "value does not match regex pattern \"^[^\\x00\\n\\r]*$\"",
            )
        })?,
    };
    let at = format!("{path}.credential");
    let Some(sds) = &g.credential else {
        return Err(ConfigError::new(at, "value is required"));
    };
    let from_server = crate::transport_socket::tls::sds::from_server(sds);
    let mut refs = Vec::new();
    let value = read_secret(sds, &g.header_value_prefix, &at, &mut refs)?;
    let credential = Arc::new(Credential {
        value: ArcSwap::from_pointee(value),
        sds: sds.clone(),
        prefix: g.header_value_prefix.clone(),
        path: at,
        from_server,
    });
    if !refs.is_empty() {
        let weak: std::sync::Weak<dyn Reload + Send + Sync> = Arc::downgrade(&credential) as _;
        sds::watch(refs, weak);
    }
    Ok((header, credential))
}

/// The field value a generic secret gives (`None` for an empty one); a file it is read
/// from is added to `refs`.
fn read_secret(
    sds: &SdsSecretConfig,
    prefix: &str,
    at: &str,
    refs: &mut Vec<sds::SecretRef>,
) -> Result<Option<HeaderValue>, ConfigError> {
    let found = sds::resolve(sds, at, refs)?;
    let Some(found) = found else {
        // A server's secret not sent yet: requests fail until it comes (the listener
        // warms meanwhile, unless its initial fetch timed out).
        return Ok(None);
    };
    let secret::Type::GenericSecret(generic) = found else {
        return Err(ConfigError::new(
            format!("{at}.name"),
            format!("secret '{}' is not a generic_secret", sds.name),
        ));
    };
    let text = match &generic.secret {
        Some(ds) => crate::http::route::data_source(ds, &format!("{at}.generic_secret.secret"))?,
        None => bytes::Bytes::new(),
    };
    // Secret files commonly end with a newline, which a field value cannot hold.
    let mut end = text.len();
    while end > 0 && matches!(text[end - 1], b'\r' | b'\n') {
        end -= 1;
    }
    if end == 0 {
        return Ok(None);
    }
    let mut value = prefix.as_bytes().to_vec();
    value.extend_from_slice(&text[..end]);
    HeaderValue::from_bytes(&value).map(Some).map_err(|_| {
        ConfigError::new(
            format!("{at}.name"),
            format!("secret '{}' is not a valid field value", sds.name),
        )
    })
}
