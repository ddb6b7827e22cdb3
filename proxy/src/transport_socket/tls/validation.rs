//! `CertificateValidationContext`: how a peer's certificate is checked, on either end.
//!
//! As Envoy's default validator: the chain is verified against `trusted_ca` when one is
//! given (without it, any chain passes and only the checks below apply); then the
//! subject alternative names must match one of `match_typed_subject_alt_names`, and the
//! certificate's hash or its SPKI's hash must be one of the pins. A failure is reported
//! as the rustls error whose kind the stats tell apart (see [`Failure::of`]).

use std::net::IpAddr;
use std::sync::Arc;

use base64::Engine as _;
use courier_proto::envoy::extensions::transport_sockets::tls::v3::{
    certificate_validation_context::TrustChainVerification, subject_alt_name_matcher::SanType,
    CertificateValidationContext,
};
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::client::WebPkiServerVerifier;
use rustls::crypto::CryptoProvider;
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::server::danger::{ClientCertVerified, ClientCertVerifier};
use rustls::server::WebPkiClientVerifier;
use rustls::{CertificateError, DigitallySignedStruct, DistinguishedName, Error, RootCertStore};
use sha2::{Digest, Sha256};

use super::certificates;
use crate::config::ConfigError;
use crate::http::route::StrMatch;

/// One `SubjectAltNameMatcher`.
#[derive(Debug)]
struct SanMatcher {
    kind: SanKind,
    matcher: StrMatch,
}

#[derive(Debug, Clone, Copy, PartialEq)]
enum SanKind {
    Dns,
    Uri,
    Email,
    Ip,
    /// The deprecated `match_subject_alt_names`: any of the above.
    Any,
}

/// A compiled validation context (the checks after the chain's).
#[derive(Debug, Default)]
pub struct Validation {
    /// The first trusted CA certificate (for `/certs`).
    pub ca_record: Option<super::inventory::CertRecord>,
    roots: Option<Arc<RootCertStore>>,
    crls: Vec<rustls::pki_types::CertificateRevocationListDer<'static>>,
    sans: Vec<SanMatcher>,
    cert_hashes: Vec<[u8; 32]>,
    spki_hashes: Vec<[u8; 32]>,
}

impl Validation {
    /// Compiles a validation context at `path`.
    pub fn compile(
        v: &CertificateValidationContext,
        path: &str,
    ) -> Result<Validation, ConfigError> {
        #[allow(deprecated)]
        let unsupported = [
            (
                "ca_certificate_provider_instance",
                v.ca_certificate_provider_instance.is_some(),
            ),
            ("system_root_certs", v.system_root_certs.is_some()),
            ("watched_directory", v.watched_directory.is_some()),
            (
                "require_signed_certificate_timestamp",
                v.require_signed_certificate_timestamp
                    .as_ref()
                    .is_some_and(|b| b.value),
            ),
            ("allow_expired_certificate", v.allow_expired_certificate),
            (
                "custom_validator_config",
                v.custom_validator_config.is_some(),
            ),
            ("only_verify_leaf_cert_crl", v.only_verify_leaf_cert_crl),
            ("max_verify_depth", v.max_verify_depth.is_some()),
        ];
        if let Some((field, _)) = unsupported.iter().find(|(_, set)| *set) {
            return Err(ConfigError::unsupported(format!("{path}.{field}")));
        }
        let mut out = Validation::default();
        let accept_untrusted =
            v.trust_chain_verification == TrustChainVerification::AcceptUntrusted as i32;
        if let Some(ca) = &v.trusted_ca {
            let at = format!("{path}.trusted_ca");
            let mut roots = RootCertStore::empty();
            let cas = certificates::certificates(ca, &at, "trusted CA certificates")?;
            out.ca_record = cas.first().map(|der| super::inventory::CertRecord {
                path: certificates::origin(ca),
                der: der.clone(),
            });
            for cert in cas {
                roots.add(cert).map_err(|e| {
                    ConfigError::new(&at, format!("Failed to load trusted CA certificates: {e}"))
                })?;
            }
            if !accept_untrusted {
                out.roots = Some(Arc::new(roots));
            }
        }
        if let Some(crl) = &v.crl {
            if v.trusted_ca.is_none() {
                return Err(ConfigError::new(
                    format!("{path}.crl"),
                    "Failed to load CRL: a CRL requires trusted_ca",
                ));
            }
            out.crls = certificates::revocation_lists(crl, &format!("{path}.crl"))?;
        }
        for (i, m) in v.match_typed_subject_alt_names.iter().enumerate() {
            let at = format!("{path}.match_typed_subject_alt_names[{i}]");
            let kind = match SanType::try_from(m.san_type) {
                Ok(SanType::Dns) => SanKind::Dns,
                Ok(SanType::Uri) => SanKind::Uri,
                Ok(SanType::Email) => SanKind::Email,
                Ok(SanType::IpAddress) => SanKind::Ip,
                Ok(SanType::OtherName) => {
                    return Err(ConfigError::unsupported(format!("{at}.san_type")))
                }
                _ => {
                    return Err(ConfigError::new(
                        format!("{at}.san_type"),
                        "value must not be SAN_TYPE_UNSPECIFIED",
                    ))
                }
            };
            let matcher = m
                .matcher
                .as_ref()
                .ok_or_else(|| ConfigError::new(format!("{at}.matcher"), "value is required"))?;
            out.sans.push(SanMatcher {
                kind,
                matcher: StrMatch::compile(matcher, &format!("{at}.matcher"))?,
            });
        }
        #[allow(deprecated)]
        for (i, m) in v.match_subject_alt_names.iter().enumerate() {
            out.sans.push(SanMatcher {
                kind: SanKind::Any,
                matcher: StrMatch::compile(m, &format!("{path}.match_subject_alt_names[{i}]"))?,
            });
        }
        for (i, h) in v.verify_certificate_hash.iter().enumerate() {
            let hex: String = h.chars().filter(|c| *c != ':').collect();
            out.cert_hashes.push(hex_sha256(&hex).ok_or_else(|| {
                ConfigError::new(
                    format!("{path}.verify_certificate_hash[{i}]"),
                    format!("Invalid hex-encoded SHA-256 {h}"),
                )
            })?);
        }
        for (i, s) in v.verify_certificate_spki.iter().enumerate() {
            let bytes = base64::engine::general_purpose::STANDARD
                .decode(s)
                .ok()
                .and_then(|b| <[u8; 32]>::try_from(b).ok())
                .ok_or_else(|| {
                    ConfigError::new(
                        format!("{path}.verify_certificate_spki[{i}]"),
                        format!("Invalid base64-encoded SHA-256 {s}"),
                    )
                })?;
            out.spki_hashes.push(bytes);
        }
        Ok(out)
    }

    /// Whether anything is checked at all (a context with none of the fields Courier acts
    /// on verifies nothing, as in Envoy).
    pub fn checks_anything(&self) -> bool {
        self.roots.is_some()
            || !self.sans.is_empty()
            || !self.cert_hashes.is_empty()
            || !self.spki_hashes.is_empty()
    }

    /// The checks after the chain's, on the end-entity certificate.
    fn check_leaf(&self, leaf: &CertificateDer<'_>) -> Result<(), Error> {
        self.check_leaf_for(leaf, None)
    }

    /// [`Validation::check_leaf`]; with `name` (`auto_san_validation`), the certificate
    /// must name it instead of satisfying the configured SAN matchers, as Envoy's SAN
    /// override list replaces them.
    fn check_leaf_for(
        &self,
        leaf: &CertificateDer<'_>,
        name: Option<&ServerName<'_>>,
    ) -> Result<(), Error> {
        if name.is_none()
            && self.sans.is_empty()
            && self.cert_hashes.is_empty()
            && self.spki_hashes.is_empty()
        {
            return Ok(());
        }
        let (_, cert) = x509_parser::parse_x509_certificate(leaf)
            .map_err(|_| Error::InvalidCertificate(CertificateError::BadEncoding))?;
        let name_ok = match name {
            Some(n) => names(&cert, n),
            None => self.sans.is_empty() || self.san_matches(&cert),
        };
        if !name_ok {
            return Err(Error::InvalidCertificate(CertificateError::NotValidForName));
        }
        if !self.cert_hashes.is_empty() || !self.spki_hashes.is_empty() {
            let cert_hash: [u8; 32] = Sha256::digest(leaf.as_ref()).into();
            let spki_hash: [u8; 32] = Sha256::digest(cert.public_key().raw).into();
            if !self.cert_hashes.contains(&cert_hash) && !self.spki_hashes.contains(&spki_hash) {
                return Err(Error::InvalidCertificate(
                    CertificateError::ApplicationVerificationFailure,
                ));
            }
        }
        Ok(())
    }

    fn san_matches(&self, cert: &x509_parser::certificate::X509Certificate<'_>) -> bool {
        use x509_parser::extensions::GeneralName;
        let Ok(Some(san)) = cert.subject_alternative_name() else {
            return false;
        };
        san.value.general_names.iter().any(|name| {
            let (kind, value) = match name {
                GeneralName::DNSName(s) => (SanKind::Dns, s.to_string()),
                GeneralName::URI(s) => (SanKind::Uri, s.to_string()),
                GeneralName::RFC822Name(s) => (SanKind::Email, s.to_string()),
                GeneralName::IPAddress(b) => match certificates::ip_string(b) {
                    Some(ip) => (SanKind::Ip, ip),
                    None => return false,
                },
                _ => return false,
            };
            self.sans.iter().any(|m| {
                (m.kind == kind || m.kind == SanKind::Any)
                    && (m.matcher.matches(&value)
                        || (kind == SanKind::Dns && wildcard_matches(&m.matcher, &value)))
            })
        })
    }
}

/// Envoy's `dnsNameMatch`: an exact matcher also matches a certificate's wildcard name
/// (`*.example.com` covers `a.example.com`, one label only).
fn wildcard_matches(m: &StrMatch, san: &str) -> bool {
    let (StrMatch::Exact(want, _), Some(suffix)) = (m, san.strip_prefix('*')) else {
        return false;
    };
    let want = want.to_ascii_lowercase();
    let suffix = suffix.to_ascii_lowercase();
    want.len() > suffix.len()
        && want.ends_with(&suffix)
        && suffix.starts_with('.')
        && !want[..want.len() - suffix.len()].contains('.')
}

/// Whether `cert` has a SAN for `name`: a DNS SAN equal to it (ASCII case aside) or a
/// wildcard covering its first label; an IP SAN equal to an address.
fn names(cert: &x509_parser::certificate::X509Certificate<'_>, name: &ServerName<'_>) -> bool {
    use x509_parser::extensions::GeneralName;
    let Ok(Some(san)) = cert.subject_alternative_name() else {
        return false;
    };
    san.value.general_names.iter().any(|g| match (g, name) {
        (GeneralName::DNSName(san), ServerName::DnsName(want)) => {
            let want = want.as_ref();
            san.eq_ignore_ascii_case(want)
                || wildcard_matches(&StrMatch::Exact(want.to_string(), true), san)
        }
        (GeneralName::IPAddress(b), ServerName::IpAddress(ip)) => {
            certificates::ip_string(b) == Some(IpAddr::from(*ip).to_string())
        }
        _ => false,
    })
}

fn hex_sha256(hex: &str) -> Option<[u8; 32]> {
    if hex.len() != 64 || !hex.is_ascii() {
        return None;
    }
    let mut out = [0u8; 32];
    for (i, byte) in out.iter_mut().enumerate() {
        *byte = u8::from_str_radix(&hex[2 * i..2 * i + 2], 16).ok()?;
    }
    Some(out)
}

/// Why a handshake failed, as the `ssl.*` stats count it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Failure {
    /// `fail_verify_no_cert`: a required peer certificate was not sent.
    NoCertificate,
    /// `fail_verify_san`.
    San,
    /// `fail_verify_cert_hash`.
    CertHash,
    /// `fail_verify_error`: the chain did not verify.
    Chain,
    /// Anything else (`connection_error` only).
    Other,
}

impl Failure {
    /// Classifies a handshake error.
    pub fn of(e: &Error) -> Failure {
        match e {
            Error::NoCertificatesPresented => Failure::NoCertificate,
            Error::InvalidCertificate(CertificateError::NotValidForName)
            | Error::InvalidCertificate(CertificateError::NotValidForNameContext { .. }) => {
                Failure::San
            }
            Error::InvalidCertificate(CertificateError::ApplicationVerificationFailure) => {
                Failure::CertHash
            }
            Error::InvalidCertificate(_) => Failure::Chain,
            _ => Failure::Other,
        }
    }
}

/// Verifies a server's certificate for an upstream connection.
#[derive(Debug, Clone)]
pub struct ServerVerifier {
    validation: Arc<Validation>,
    chain: Option<Arc<WebPkiServerVerifier>>,
    /// `auto_sni_san_validation` / SNI-derived name check (Envoy checks the name only
    /// when asked to).
    check_name: bool,
    /// `auto_san_validation`: the name connected to (the request's host) replaces the
    /// configured SAN matchers.
    san_from_name: bool,
    provider: Arc<CryptoProvider>,
}

impl ServerVerifier {
    /// A verifier for `validation`.
    pub fn new(
        validation: Arc<Validation>,
        provider: Arc<CryptoProvider>,
        check_name: bool,
        path: &str,
    ) -> Result<ServerVerifier, ConfigError> {
        let chain = match &validation.roots {
            Some(roots) => Some(
                WebPkiServerVerifier::builder_with_provider(roots.clone(), provider.clone())
                    .with_crls(validation.crls.clone())
                    .build()
                    .map_err(|e| {
                        ConfigError::new(path, format!("invalid validation context: {e}"))
                    })?,
            ),
            None => None,
        };
        Ok(ServerVerifier {
            validation,
            chain,
            check_name,
            san_from_name: false,
            provider,
        })
    }

    /// This verifier with the name connected to replacing the SAN matchers
    /// (`auto_san_validation`).
    pub fn san_from_name(mut self) -> ServerVerifier {
        self.san_from_name = true;
        self
    }
}

impl ServerCertVerifier for ServerVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, Error> {
        if let Some(chain) = &self.chain {
            match chain.verify_server_cert(
                end_entity,
                intermediates,
                server_name,
                ocsp_response,
                now,
            ) {
                Ok(_) => {}
                // The chain verified; only the name did not match, which Envoy does not
                // check unless asked to.
                Err(Error::InvalidCertificate(
                    CertificateError::NotValidForName
                    | CertificateError::NotValidForNameContext { .. },
                )) if !self.check_name => {}
                Err(e) => return Err(e),
            }
        }
        self.validation
            .check_leaf_for(end_entity, self.san_from_name.then_some(server_name))?;
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
        self.provider
            .signature_verification_algorithms
            .supported_schemes()
    }
}

/// Verifies a client's certificate on a downstream connection.
#[derive(Debug)]
pub struct ClientVerifier {
    validation: Arc<Validation>,
    chain: Option<Arc<dyn ClientCertVerifier>>,
    mandatory: bool,
    provider: Arc<CryptoProvider>,
}

impl ClientVerifier {
    /// A verifier for `validation`; `mandatory` is `require_client_certificate`.
    pub fn new(
        validation: Arc<Validation>,
        provider: Arc<CryptoProvider>,
        mandatory: bool,
        path: &str,
    ) -> Result<ClientVerifier, ConfigError> {
        let chain = match &validation.roots {
            Some(roots) => Some(
                WebPkiClientVerifier::builder_with_provider(roots.clone(), provider.clone())
                    .with_crls(validation.crls.clone())
                    .allow_unauthenticated()
                    .build()
                    .map_err(|e| {
                        ConfigError::new(path, format!("invalid validation context: {e}"))
                    })?,
            ),
            None => None,
        };
        Ok(ClientVerifier {
            validation,
            chain,
            mandatory,
            provider,
        })
    }
}

impl ClientCertVerifier for ClientVerifier {
    fn client_auth_mandatory(&self) -> bool {
        self.mandatory
    }

    fn root_hint_subjects(&self) -> &[DistinguishedName] {
        self.chain.as_ref().map_or(&[], |c| c.root_hint_subjects())
    }

    fn verify_client_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        now: UnixTime,
    ) -> Result<ClientCertVerified, Error> {
        if let Some(chain) = &self.chain {
            chain.verify_client_cert(end_entity, intermediates, now)?;
        }
        self.validation.check_leaf(end_entity)?;
        Ok(ClientCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
        self.provider
            .signature_verification_algorithms
            .supported_schemes()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_exact_dns_matcher_matches_a_one_label_wildcard() {
        let m = StrMatch::Exact("api.example.com".into(), false);
        assert!(wildcard_matches(&m, "*.example.com"));
        assert!(!wildcard_matches(&m, "*.com"));
        let deep = StrMatch::Exact("a.b.example.com".into(), false);
        assert!(!wildcard_matches(&deep, "*.example.com"));
        assert!(!wildcard_matches(&m, "api.example.com"));
    }

    #[test]
    fn pins_are_checked_for_form() {
        assert!(hex_sha256(&"ab".repeat(32)).is_some());
        assert!(hex_sha256("abcd").is_none());
        assert!(hex_sha256(&"zz".repeat(32)).is_none());
    }
}
