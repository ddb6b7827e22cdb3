//! `DownstreamTlsContext` compiled to a rustls server config, and the certificate
//! choice Envoy makes per handshake.

use std::sync::Arc;

use courier_proto::envoy::extensions::transport_sockets::tls::v3::{
    downstream_tls_context::{OcspStaplePolicy, SessionTicketKeysType},
    secret, DownstreamTlsContext,
};
use rustls::server::{ClientHello, NoServerSessionStorage, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use rustls::ServerConfig;

use arc_swap::ArcSwap;

use super::common;
use super::inventory::{self, ContextCerts, HoldsCertificates};
use super::params::Side;
use super::sds::{self, Reload};
use super::session_tickets;
use super::validation::ClientVerifier;
use crate::config::ConfigError;

/// A compiled downstream TLS context. Built from changeable secrets, it is rebuilt when
/// they change ([`super::sds`]); a worker reads the current build at each handshake (one
/// atomic load, no lock).
pub struct ServerContext {
    built: ArcSwap<Built>,
    proto: DownstreamTlsContext,
    path: String,
}

/// One build of a context.
struct Built {
    /// The rustls config every handshake of the filter chain starts from; `None` while a
    /// secret it names has not arrived.
    config: Option<Arc<ServerConfig>>,
    /// The URI SANs of the (first) certificate: XFCC's `By`.
    local_uri_sans: Vec<String>,
    /// The server secrets it still waits for.
    pending: Vec<String>,
    /// What it holds, for `/certs`.
    held: ContextCerts,
}

impl ServerContext {
    /// The rustls config for a new handshake, `None` while a secret has not arrived.
    pub fn config(&self) -> Option<Arc<ServerConfig>> {
        self.built.load().config.clone()
    }

    /// The server secrets it still waits for (its listener warms on them).
    pub fn pending(&self) -> Vec<String> {
        self.built.load().pending.clone()
    }

    /// The URI SANs of the context's (first) certificate.
    pub fn local_uri_sans(&self) -> Vec<String> {
        self.built.load().local_uri_sans.clone()
    }
}

impl HoldsCertificates for ServerContext {
    fn certificates(&self) -> ContextCerts {
        self.built.load().held.clone()
    }

    fn expires(&self) -> Option<i64> {
        self.built.load().held.expires()
    }
}

impl Reload for ServerContext {
    fn reload(&self) -> Result<(), ConfigError> {
        let (built, _) = build(&self.proto, &self.path)?;
        self.built.store(Arc::new(built));
        Ok(())
    }
}

impl std::fmt::Debug for ServerContext {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ServerContext").finish_non_exhaustive()
    }
}

/// Picks the certificate for a handshake as Envoy does: one whose names cover the SNI,
/// else any; among those, the first whose key the client can verify.
#[derive(Debug)]
struct CertChoice {
    certs: Vec<(Arc<CertifiedKey>, Vec<String>)>,
    require_sni: bool,
}

impl CertChoice {
    fn new(certs: Vec<Arc<CertifiedKey>>, require_sni: bool) -> CertChoice {
        let certs = certs
            .into_iter()
            .map(|c| {
                let names = c.end_entity_cert().map(dns_names).unwrap_or_default();
                (c, names)
            })
            .collect();
        CertChoice { certs, require_sni }
    }
}

fn dns_names(der: &rustls::pki_types::CertificateDer<'_>) -> Vec<String> {
    use x509_parser::extensions::GeneralName;
    let Ok((_, cert)) = x509_parser::parse_x509_certificate(der) else {
        return Vec::new();
    };
    let Ok(Some(san)) = cert.subject_alternative_name() else {
        return Vec::new();
    };
    san.value
        .general_names
        .iter()
        .filter_map(|n| match n {
            GeneralName::DNSName(s) => Some(s.to_ascii_lowercase()),
            _ => None,
        })
        .collect()
}

fn name_covers(pattern: &str, sni: &str) -> bool {
    if pattern == sni {
        return true;
    }
    match pattern.strip_prefix("*.") {
        Some(suffix) => sni
            .split_once('.')
            .is_some_and(|(label, rest)| !label.is_empty() && rest == suffix),
        None => false,
    }
}

impl ResolvesServerCert for CertChoice {
    fn resolve(&self, hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        let sni = hello.server_name().map(str::to_ascii_lowercase);
        if self.require_sni && sni.is_none() {
            return None;
        }
        let schemes = hello.signature_schemes();
        let usable =
            |c: &&(Arc<CertifiedKey>, Vec<String>)| c.0.key.choose_scheme(schemes).is_some();
        let named = |c: &&(Arc<CertifiedKey>, Vec<String>)| {
            sni.as_deref()
                .is_some_and(|s| c.1.iter().any(|p| name_covers(p, s)))
        };
        self.certs
            .iter()
            .filter(named)
            .find(usable)
            .or_else(|| self.certs.iter().find(usable))
            .or_else(|| self.certs.first())
            .map(|c| c.0.clone())
    }
}

/// The bytes of each session ticket key.
fn key_bytes(
    keys: &[courier_proto::envoy::config::core::v3::DataSource],
    path: &str,
) -> Result<Vec<Vec<u8>>, ConfigError> {
    keys.iter()
        .enumerate()
        .map(|(i, k)| {
            crate::http::route::data_source(k, &format!("{path}.keys[{i}]")).map(|b| b.to_vec())
        })
        .collect()
}

/// Compiles a `DownstreamTlsContext` at `path`.
pub fn compile(ctx: &DownstreamTlsContext, path: &str) -> Result<Arc<ServerContext>, ConfigError> {
    let (built, secrets) = build(ctx, path)?;
    let context = Arc::new(ServerContext {
        built: ArcSwap::from_pointee(built),
        proto: ctx.clone(),
        path: path.to_string(),
    });
    if !secrets.is_empty() {
        let weak: std::sync::Weak<dyn Reload + Send + Sync> = Arc::downgrade(&context) as _;
        sds::watch(secrets, weak);
    }
    let held: std::sync::Weak<dyn HoldsCertificates + Send + Sync> = Arc::downgrade(&context) as _;
    inventory::register(held);
    Ok(context)
}

fn build(
    ctx: &DownstreamTlsContext,
    path: &str,
) -> Result<(Built, Vec<sds::SecretRef>), ConfigError> {
    let unsupported = [
        ("session_timeout", ctx.session_timeout.is_some()),
        (
            "ocsp_staple_policy",
            ctx.ocsp_staple_policy != OcspStaplePolicy::LenientStapling as i32,
        ),
    ];
    if let Some((field, _)) = unsupported.iter().find(|(_, set)| *set) {
        return Err(ConfigError::unsupported(format!("{path}.{field}")));
    }
    let common_path = format!("{path}.common_tls_context");
    let default = Default::default();
    let mut common = common::compile(
        ctx.common_tls_context.as_ref().unwrap_or(&default),
        Side::Server,
        &common_path,
    )?;
    let ticket_keys = match &ctx.session_ticket_keys_type {
        Some(SessionTicketKeysType::SessionTicketKeys(k)) => {
            let at = format!("{path}.session_ticket_keys");
            Some(session_tickets::compile(&key_bytes(&k.keys, &at)?, &at)?)
        }
        Some(SessionTicketKeysType::SessionTicketKeysSdsSecretConfig(config)) => {
            let at = format!("{path}.session_ticket_keys_sds_secret_config");
            match sds::resolve(config, &at, &mut common.secrets)? {
                None => {
                    common.pending.push(config.name.clone());
                    None
                }
                Some(secret::Type::SessionTicketKeys(k)) => {
                    let at = format!("{at} (secret '{}')", config.name);
                    Some(session_tickets::compile(&key_bytes(&k.keys, &at)?, &at)?)
                }
                Some(_) => {
                    return Err(ConfigError::new(
                        format!("{at}.name"),
                        format!("secret '{}' is not session ticket keys", config.name),
                    ))
                }
            }
        }
        _ => None,
    };
    if !common.ready() {
        let built = Built {
            config: None,
            local_uri_sans: Vec::new(),
            pending: common.pending,
            held: common.held,
        };
        return Ok((built, common.secrets));
    }
    if common.certificates.is_empty() {
        return Err(ConfigError::new(
            &common_path,
            "No TLS certificates found for server context",
        ));
    }
    let require_client = ctx.require_client_certificate.is_some_and(|b| b.value);
    let validation = common.validation.filter(|v| v.checks_anything());
    if require_client && validation.is_none() {
        return Err(ConfigError::new(
            path,
            "require_client_certificate needs a validation context with trusted_ca or matchers",
        ));
    }
    let builder = ServerConfig::builder_with_provider(common.params.provider.clone())
        .with_protocol_versions(&common.params.versions)
        .map_err(|e| ConfigError::new(&common_path, format!("invalid tls_params: {e}")))?;
    let builder = match validation {
        Some(v) => builder.with_client_cert_verifier(Arc::new(ClientVerifier::new(
            v,
            common.params.provider.clone(),
            require_client,
            &format!("{common_path}.validation_context"),
        )?)),
        None => builder.with_no_client_auth(),
    };
    let held = common.held;
    let local_uri_sans = common.certificates[0]
        .end_entity_cert()
        .map(|c| super::connection_info::CertificateNames::of(c).uri_sans)
        .unwrap_or_default();
    let mut config = builder.with_cert_resolver(Arc::new(CertChoice::new(
        common.certificates,
        ctx.require_sni.is_some_and(|b| b.value),
    )));
    config.alpn_protocols = common.alpn;
    // The client's order picks the cipher suite: what BoringSSL (Envoy) does for TLS 1.3,
    // whatever `prefer_client_ciphers` says. rustls has one switch for both versions, so
    // TLS 1.2 follows the client's order too (integration-tests/DIFFERENCES.md).
    config.ignore_client_order = false;
    let stateless_off = matches!(
        ctx.session_ticket_keys_type,
        Some(SessionTicketKeysType::DisableStatelessSessionResumption(
            true
        ))
    );
    if let Some(keyed) = ticket_keys {
        config.ticketer = keyed;
    } else if !stateless_off {
        config.ticketer = rustls::crypto::aws_lc_rs::Ticketer::new()
            .map_err(|e| ConfigError::new(path, format!("session tickets: {e}")))?;
    }
    if ctx.disable_stateful_session_resumption {
        config.session_storage = Arc::new(NoServerSessionStorage {});
    }
    Ok((
        Built {
            config: Some(Arc::new(config)),
            local_uri_sans,
            pending: Vec::new(),
            held,
        },
        common.secrets,
    ))
}

#[cfg(test)]
mod tests {
    use super::name_covers;

    #[test]
    fn a_wildcard_name_covers_one_label() {
        assert!(name_covers("*.example.com", "a.example.com"));
        assert!(!name_covers("*.example.com", "a.b.example.com"));
        assert!(!name_covers("*.example.com", "example.com"));
        assert!(name_covers("example.com", "example.com"));
    }
}
