//! `CommonTlsContext`: what downstream and upstream contexts share.

use std::sync::Arc;

use courier_proto::envoy::extensions::transport_sockets::tls::v3::{
    common_tls_context::ValidationContextType, CommonTlsContext,
};
use rustls::sign::CertifiedKey;

use super::certificates;
use super::params::{self, Params, Side};
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
}

/// Compiles `common_tls_context` at `path`.
pub fn compile(c: &CommonTlsContext, side: Side, path: &str) -> Result<Common, ConfigError> {
    #[allow(deprecated)]
    let unsupported = [
        // SDS is not built yet: a secret named here would never arrive.
        (
            "tls_certificate_sds_secret_configs",
            !c.tls_certificate_sds_secret_configs.is_empty(),
        ),
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
    let certificates = c
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
    let validation = match &c.validation_context_type {
        None => None,
        Some(ValidationContextType::ValidationContext(v)) => Some(Arc::new(Validation::compile(
            v,
            &format!("{path}.validation_context"),
        )?)),
        Some(ValidationContextType::CombinedValidationContext(_)) => {
            return Err(ConfigError::unsupported(format!(
                "{path}.combined_validation_context"
            )))
        }
        Some(ValidationContextType::ValidationContextSdsSecretConfig(_)) => {
            return Err(ConfigError::unsupported(format!(
                "{path}.validation_context_sds_secret_config"
            )))
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
    Ok(Common {
        params,
        certificates,
        alpn,
        validation,
    })
}
