//! The OAuth2 filter's two secrets (the client's `token_secret`, the cookies'
//! `hmac_secret`): generic secrets named by SDS config, static, from a file (re-read when
//! it changes) or from a management server (the filter's listener warms until they
//! come), through `transport_socket::tls::sds` as every secret Courier reads.

use std::sync::Arc;

use arc_swap::ArcSwap;
use bytes::Bytes;
use courier_proto::envoy::extensions::transport_sockets::tls::v3::{secret, SdsSecretConfig};

use crate::config::ConfigError;
use crate::transport_socket::tls::sds::{self, Reload};

/// A generic secret's current value.
pub struct SecretValue {
    /// Its bytes; `None` until a management server sends it.
    value: ArcSwap<Option<Bytes>>,
    sds: SdsSecretConfig,
    path: String,
    /// Whether a management server sends it (its listener warms on it).
    pub from_server: bool,
}

impl SecretValue {
    /// The secret `sds` (at `path`) names.
    pub fn compile(sds: &SdsSecretConfig, path: &str) -> Result<Arc<SecretValue>, ConfigError> {
        let from_server = crate::transport_socket::tls::sds::from_server(sds);
        let mut refs = Vec::new();
        let value = read(sds, path, &mut refs)?;
        let secret = Arc::new(SecretValue {
            value: ArcSwap::from_pointee(value),
            sds: sds.clone(),
            path: path.to_owned(),
            from_server,
        });
        if !refs.is_empty() {
            let weak: std::sync::Weak<dyn Reload + Send + Sync> = Arc::downgrade(&secret) as _;
            sds::watch(refs, weak);
        }
        Ok(secret)
    }

    /// Its name.
    pub fn name(&self) -> &str {
        &self.sds.name
    }

    /// Its value now.
    pub fn get(&self) -> Option<Bytes> {
        (**self.value.load()).clone()
    }
}

impl Reload for SecretValue {
    fn reload(&self) -> Result<(), ConfigError> {
        let value = read(&self.sds, &self.path, &mut Vec::new())?;
        self.value.store(Arc::new(value));
        Ok(())
    }
}

/// The generic secret's bytes, as Envoy's `SecretReader` gives them (the whole value).
fn read(
    sds: &SdsSecretConfig,
    at: &str,
    refs: &mut Vec<sds::SecretRef>,
) -> Result<Option<Bytes>, ConfigError> {
    let Some(found) = sds::resolve(sds, at, refs)? else {
        return Ok(None);
    };
    let secret::Type::GenericSecret(generic) = found else {
        return Err(ConfigError::new(
            format!("{at}.name"),
            format!("secret '{}' is not a generic_secret", sds.name),
        ));
    };
    Ok(Some(match &generic.secret {
        Some(ds) => crate::http::route::data_source(ds, &format!("{at}.generic_secret.secret"))?,
        None => Bytes::new(),
    }))
}
