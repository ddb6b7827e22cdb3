//! Certificates and keys from a config's `DataSource`s, and `TlsCertificate` compiled to
//! the key rustls signs with.

use std::sync::Arc;

use courier_proto::envoy::config::core::v3::{data_source, DataSource};
use courier_proto::envoy::extensions::transport_sockets::tls::v3::TlsCertificate;
use rustls::crypto::CryptoProvider;
use rustls::sign::CertifiedKey;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, CertificateRevocationListDer, PrivateKeyDer};

use crate::config::ConfigError;

/// Where a `DataSource` points, as Envoy's messages name it (`<inline>` or the file).
pub fn origin(ds: &DataSource) -> String {
    match &ds.specifier {
        Some(data_source::Specifier::Filename(f)) => f.clone(),
        _ => "<inline>".to_string(),
    }
}

/// The bytes of a `DataSource`.
fn bytes(ds: &DataSource, path: &str) -> Result<Vec<u8>, ConfigError> {
    let b = crate::http::route::data_source(ds, path)?;
    if b.is_empty() {
        return Err(ConfigError::new(path, "the data source is empty"));
    }
    Ok(b.to_vec())
}

/// Every PEM certificate of `ds`: `what` is a `certificate chain` or `trusted CA
/// certificates`, for Envoy's wording of the error.
pub fn certificates(
    ds: &DataSource,
    path: &str,
    what: &str,
) -> Result<Vec<CertificateDer<'static>>, ConfigError> {
    let pem = bytes(ds, path)?;
    let certs = CertificateDer::pem_slice_iter(&pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| {
            ConfigError::new(
                path,
                format!("Failed to load {what} from {}: {e}", origin(ds)),
            )
        })?;
    if certs.is_empty() {
        return Err(ConfigError::new(
            path,
            format!(
                "Failed to load {what} from {}: no PEM certificate found",
                origin(ds)
            ),
        ));
    }
    Ok(certs)
}

/// Every PEM CRL of `ds`.
pub fn revocation_lists(
    ds: &DataSource,
    path: &str,
) -> Result<Vec<CertificateRevocationListDer<'static>>, ConfigError> {
    let pem = bytes(ds, path)?;
    let crls = CertificateRevocationListDer::pem_slice_iter(&pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| {
            ConfigError::new(path, format!("Failed to load CRL from {}: {e}", origin(ds)))
        })?;
    if crls.is_empty() {
        return Err(ConfigError::new(
            path,
            format!("Failed to load CRL from {}: no PEM CRL found", origin(ds)),
        ));
    }
    Ok(crls)
}

/// The PEM private key of `ds` (PKCS#8, PKCS#1 or SEC1).
fn private_key(ds: &DataSource, path: &str) -> Result<PrivateKeyDer<'static>, ConfigError> {
    let pem = bytes(ds, path)?;
    PrivateKeyDer::from_pem_slice(&pem).map_err(|e| {
        ConfigError::new(
            path,
            format!("Failed to load private key from {}: {e}", origin(ds)),
        )
    })
}

/// A `TlsCertificate` compiled: its chain and signing key, the key checked against the
/// chain's first certificate.
pub fn certified_key(
    cert: &TlsCertificate,
    path: &str,
    provider: &CryptoProvider,
) -> Result<Arc<CertifiedKey>, ConfigError> {
    for (field, set) in [
        ("pkcs12", cert.pkcs12.is_some()),
        ("watched_directory", cert.watched_directory.is_some()),
        ("private_key_provider", cert.private_key_provider.is_some()),
        ("password", cert.password.is_some()),
        (
            "signed_certificate_timestamp",
            !cert.signed_certificate_timestamp.is_empty(),
        ),
        ("tls_params", cert.tls_params.is_some()),
    ] {
        if set {
            return Err(ConfigError::unsupported(format!("{path}.{field}")));
        }
    }
    let chain_path = format!("{path}.certificate_chain");
    let key_path = format!("{path}.private_key");
    let chain = cert
        .certificate_chain
        .as_ref()
        .ok_or_else(|| ConfigError::new(&chain_path, "a certificate chain is required"))?;
    let key = cert
        .private_key
        .as_ref()
        .ok_or_else(|| ConfigError::new(&key_path, "a private key is required"))?;
    let certs = certificates(chain, &chain_path, "certificate chain")?;
    let der = private_key(key, &key_path)?;
    let mut certified = CertifiedKey::from_der(certs, der, provider).map_err(|e| {
        ConfigError::new(
            &key_path,
            format!(
                "Failed to load private key from {}: {e} (does the key belong to the certificate at {}?)",
                origin(key),
                origin(chain)
            ),
        )
    })?;
    if let Some(ocsp) = &cert.ocsp_staple {
        certified.ocsp = Some(bytes(ocsp, &format!("{path}.ocsp_staple"))?);
    }
    Ok(Arc::new(certified))
}

/// An IP address SAN's bytes as text.
pub(crate) fn ip_string(b: &[u8]) -> Option<String> {
    Some(match b.len() {
        4 => std::net::IpAddr::from(<[u8; 4]>::try_from(b).ok()?).to_string(),
        16 => std::net::IpAddr::from(<[u8; 16]>::try_from(b).ok()?).to_string(),
        _ => return None,
    })
}
