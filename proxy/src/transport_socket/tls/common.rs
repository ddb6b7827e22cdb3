//! `CommonTlsContext`: what downstream and upstream contexts share.

use std::sync::Arc;

use courier_proto::envoy::extensions::transport_sockets::tls::v3::{
    common_tls_context::ValidationContextType, secret, CertificateValidationContext,
    CommonTlsContext, SdsSecretConfig,
};
use prost::Message;
use rustls::sign::CertifiedKey;

use super::certificates;
use super::inventory::{CertRecord, ContextCerts};
use super::params::{self, Params, Side};
use super::sds;
use super::validation::Validation;
use crate::config::ConfigError;

/// A compiled `CommonTlsContext`.
pub struct Common {
    /// `tls_params`.
    pub params: Params,
    /// `tls_certificates`, in order.
    pub certificates: Vec<Arc<CertifiedKey>>,
    /// `alpn_protocols`.
    pub alpn: Vec<Vec<u8>>,
    /// The validation context, if any.
    pub validation: Option<Arc<Validation>>,
    /// What it holds, for `/certs`.
    pub held: ContextCerts,
    /// The changeable secrets it was built from (rebuilt when they change).
    pub secrets: Vec<sds::SecretRef>,
    /// Server secrets that have not arrived: the context cannot handshake yet.
    pub pending: Vec<String>,
}

impl Common {
    /// Whether every secret it names is there.
    pub fn ready(&self) -> bool {
        self.pending.is_empty()
    }
}

/// Where a certificate's chain came from (`<inline>` or its file).
fn origin_of(
    cert: &courier_proto::envoy::extensions::transport_sockets::tls::v3::TlsCertificate,
) -> String {
    cert.certificate_chain
        .as_ref()
        .map_or_else(|| "<inline>".to_string(), certificates::origin)
}

/// A validation context secret, `None` while its server has not sent it (then it is
/// noted in `pending`).
fn validation_secret(
    config: &SdsSecretConfig,
    path: &str,
    secrets: &mut Vec<sds::SecretRef>,
    pending: &mut Vec<String>,
) -> Result<Option<CertificateValidationContext>, ConfigError> {
    match sds::resolve(config, path, secrets)? {
        None => {
            pending.push(config.name.clone());
            Ok(None)
        }
        Some(secret::Type::ValidationContext(v)) => Ok(Some(v)),
        _ => Err(ConfigError::new(
            format!("{path}.name"),
            format!("secret '{}' is not a validation context", config.name),
        )),
    }
}

/// Compiles `common_tls_context` at `path`.
pub fn compile(c: &CommonTlsContext, side: Side, path: &str) -> Result<Common, ConfigError> {
    #[allow(deprecated)]
    let unsupported = [
        (
            "tls_certificate_provider_instance",
            c.tls_certificate_provider_instance.is_some(),
        ),
        (
            "custom_tls_certificate_selector",
            c.custom_tls_certificate_selector.is_some(),
        ),
        (
            "tls_certificate_certificate_provider",
            c.tls_certificate_certificate_provider.is_some(),
        ),
        (
            "tls_certificate_certificate_provider_instance",
            c.tls_certificate_certificate_provider_instance.is_some(),
        ),
        ("custom_handshaker", c.custom_handshaker.is_some()),
        ("key_log", c.key_log.is_some()),
    ];
    if let Some((field, _)) = unsupported.iter().find(|(_, set)| *set) {
        return Err(ConfigError::unsupported(format!("{path}.{field}")));
    }
    let params = params::compile(c.tls_params.as_ref(), side, &format!("{path}.tls_params"))?;
    let mut secrets = Vec::new();
    let mut pending = Vec::new();
    let mut certificates = c
        .tls_certificates
        .iter()
        .enumerate()
        .map(|(i, cert)| {
            certificates::certified_key(
                cert,
                &format!("{path}.tls_certificates[{i}]"),
                &params.provider,
            )
        })
        .collect::<Result<Vec<_>, _>>()?;
    let mut origins: Vec<String> = c.tls_certificates.iter().map(origin_of).collect();
    for (i, config) in c.tls_certificate_sds_secret_configs.iter().enumerate() {
        let at = format!("{path}.tls_certificate_sds_secret_configs[{i}]");
        let resolved = sds::resolve(config, &at, &mut secrets)?;
        let Some(resolved) = resolved else {
            pending.push(config.name.clone());
            continue;
        };
        let secret::Type::TlsCertificate(cert) = resolved else {
            return Err(ConfigError::new(
                format!("{at}.name"),
                format!("secret '{}' is not a TLS certificate", config.name),
            ));
        };
        certificates.push(certificates::certified_key(
            &cert,
            &format!("{at} (secret '{}')", config.name),
            &params.provider,
        )?);
        origins.push(origin_of(&cert));
    }
    let validation = match &c.validation_context_type {
        None => None,
        Some(ValidationContextType::ValidationContext(v)) => Some(Arc::new(Validation::compile(
            v,
            &format!("{path}.validation_context"),
        )?)),
        Some(ValidationContextType::CombinedValidationContext(combined)) => {
            let at = format!("{path}.combined_validation_context");
            let Some(config) = &combined.validation_context_sds_secret_config else {
                return Err(ConfigError::new(
                    format!("{at}.validation_context_sds_secret_config"),
                    "value is required",
                ));
            };
            #[allow(deprecated)]
            let provider = combined.validation_context_certificate_provider.is_some()
                || combined
                    .validation_context_certificate_provider_instance
                    .is_some();
            if provider {
                return Err(ConfigError::unsupported(format!(
                    "{at}.validation_context_certificate_provider"
                )));
            }
            // Envoy's merge: the secret's fields over the default's, lists appended
            // (protobuf's MergeFrom).
            let mut merged = combined
                .default_validation_context
                .clone()
                .unwrap_or_default();
            let dynamic = validation_secret(
                config,
                &format!("{at}.validation_context_sds_secret_config"),
                &mut secrets,
                &mut pending,
            )?;
            match dynamic {
                None => None,
                Some(dynamic) => {
                    merged
                        .merge(dynamic.encode_to_vec().as_slice())
                        .map_err(|e| ConfigError::new(&at, e.to_string()))?;
                    Some(Arc::new(Validation::compile(&merged, &at)?))
                }
            }
        }
        Some(ValidationContextType::ValidationContextSdsSecretConfig(config)) => {
            let at = format!("{path}.validation_context_sds_secret_config");
            match validation_secret(config, &at, &mut secrets, &mut pending)? {
                None => None,
                Some(v) => Some(Arc::new(Validation::compile(&v, &at)?)),
            }
        }
        Some(_) => {
            return Err(ConfigError::unsupported(format!(
                "{path}.validation_context_certificate_provider"
            )))
        }
    };
    let alpn = c
        .alpn_protocols
        .iter()
        .map(|p| p.as_bytes().to_vec())
        .collect();
    let held = ContextCerts::new(
        validation.as_ref().and_then(|v| v.ca_record.clone()),
        certificates
            .iter()
            .zip(origins)
            .filter_map(|(key, path)| {
                key.cert.first().map(|der| CertRecord {
                    path,
                    der: der.clone(),
                })
            })
            .collect(),
    );
    Ok(Common {
        held,
        params,
        certificates,
        alpn,
        validation,
        secrets,
        pending,
    })
}
