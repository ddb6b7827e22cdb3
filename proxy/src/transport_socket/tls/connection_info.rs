//! What a downstream TLS handshake settled, kept with the connection for the layers
//! that read it: `x-forwarded-client-cert`, RBAC's `authenticated` and
//! `requested_server_name`, and the access log's TLS fields. Computed once per
//! connection when its handshake ends (the peer certificate parsed once).

use std::fmt::Write as _;

use sha2::{Digest, Sha256};
use x509_parser::certificate::X509Certificate;
use x509_parser::extensions::GeneralName;
use x509_parser::x509::X509Name;

use super::session::TlsSession;
use super::stats;

/// A certificate's names, as Envoy reports them.
#[derive(Debug, Clone, Default)]
pub struct CertificateNames {
    /// The subject, RFC 2253 (`CN=a,O=b`, the last RDN first, as OpenSSL prints it).
    pub subject: String,
    /// URI subject alternative names.
    pub uri_sans: Vec<String>,
    /// DNS subject alternative names.
    pub dns_sans: Vec<String>,
}

impl CertificateNames {
    /// The names of a DER certificate (empty when it does not parse).
    pub fn of(der: &[u8]) -> CertificateNames {
        let Ok((_, cert)) = x509_parser::parse_x509_certificate(der) else {
            return CertificateNames::default();
        };
        names(&cert)
    }
}

fn names(cert: &X509Certificate<'_>) -> CertificateNames {
    let mut out = CertificateNames {
        subject: rfc2253(cert.subject()),
        ..Default::default()
    };
    if let Ok(Some(san)) = cert.subject_alternative_name() {
        for name in &san.value.general_names {
            match name {
                GeneralName::URI(u) => out.uri_sans.push(u.to_string()),
                GeneralName::DNSName(d) => out.dns_sans.push(d.to_string()),
                _ => {}
            }
        }
    }
    out
}

/// A name as OpenSSL's `XN_FLAG_RFC2253` prints it.
fn rfc2253(name: &X509Name<'_>) -> String {
    let registry = x509_parser::objects::oid_registry();
    let rdns: Vec<String> = name
        .iter_rdn()
        .map(|rdn| {
            rdn.iter()
                .map(|attr| {
                    let key = match x509_parser::objects::oid2abbrev(attr.attr_type(), registry) {
                        Ok("Email") => "emailAddress".to_string(),
                        Ok(k) => k.to_string(),
                        Err(_) => attr.attr_type().to_id_string(),
                    };
                    let value = attr.as_str().map(escape).unwrap_or_default();
                    format!("{key}={value}")
                })
                .collect::<Vec<_>>()
                .join("+")
        })
        .collect();
    rdns.into_iter().rev().collect::<Vec<_>>().join(",")
}

fn escape(v: &str) -> String {
    let mut out = String::with_capacity(v.len());
    let last = v.chars().count().saturating_sub(1);
    for (i, c) in v.chars().enumerate() {
        let special = matches!(c, ',' | '+' | '"' | '\\' | '<' | '>' | ';')
            || (i == 0 && (c == '#' || c == ' '))
            || (i == last && c == ' ');
        if special {
            out.push('\\');
        }
        out.push(c);
    }
    out
}

/// The peer's certificate.
#[derive(Debug, Clone)]
pub struct PeerCertificate {
    /// Its names.
    pub names: CertificateNames,
    /// SHA-256 of its DER, lower-case hex (XFCC's `Hash`).
    pub sha256: String,
    /// Its PEM, URL-encoded (XFCC's `Cert`): kept only when the connection's config
    /// sends it (a few KB per connection otherwise held for nothing).
    pub pem_url_encoded: Option<String>,
    /// The whole chain the peer sent, PEM, URL-encoded (XFCC's `Chain`): kept only when
    /// the config sends it.
    pub chain_url_encoded: Option<String>,
}

/// Which of the peer certificate's encodings a connection's config uses.
#[derive(Debug, Clone, Copy, Default)]
pub struct PeerEncodings {
    /// XFCC's `Cert`.
    pub pem: bool,
    /// XFCC's `Chain`.
    pub chain: bool,
}

/// What a downstream connection's handshake settled.
#[derive(Debug, Clone)]
pub struct TlsConnectionInfo {
    /// `TLSv1.2` or `TLSv1.3`.
    pub version: &'static str,
    /// The cipher suite, as Envoy names it.
    pub cipher: &'static str,
    /// The cipher suite's IANA number (0 when none was negotiated).
    pub cipher_id: u16,
    /// The client's certificate, when it sent one.
    pub peer: Option<PeerCertificate>,
    /// This side's certificate's URI SANs (XFCC's `By`).
    pub local_uri_sans: Vec<String>,
}

impl TlsConnectionInfo {
    /// Reads a completed handshake.
    pub fn of(
        session: &TlsSession,
        local_uri_sans: &[String],
        keep: PeerEncodings,
    ) -> TlsConnectionInfo {
        let conn = session.connection();
        let peer = conn.peer_certificates().and_then(|chain| {
            let leaf = chain.first()?;
            Some(PeerCertificate {
                names: CertificateNames::of(leaf),
                sha256: hex(&Sha256::digest(leaf.as_ref())),
                pem_url_encoded: keep.pem.then(|| url_encode(&pem(leaf.as_ref()))),
                chain_url_encoded: keep.chain.then(|| {
                    url_encode(&chain.iter().map(|c| pem(c.as_ref())).collect::<String>())
                }),
            })
        });
        TlsConnectionInfo {
            version: match conn.protocol_version() {
                Some(rustls::ProtocolVersion::TLSv1_3) => "TLSv1.3",
                Some(rustls::ProtocolVersion::TLSv1_2) => "TLSv1.2",
                _ => "",
            },
            cipher: conn
                .negotiated_cipher_suite()
                .and_then(|s| stats::cipher_name(s.suite()))
                .unwrap_or(""),
            cipher_id: conn
                .negotiated_cipher_suite()
                .map_or(0, |s| u16::from(s.suite())),
            peer,
            local_uri_sans: local_uri_sans.to_vec(),
        }
    }
}

fn hex(bytes: &[u8]) -> String {
    let mut s = String::with_capacity(bytes.len() * 2);
    for b in bytes {
        let _ = write!(s, "{b:02x}");
    }
    s
}

fn pem(der: &[u8]) -> String {
    use base64::Engine as _;
    let b64 = base64::engine::general_purpose::STANDARD.encode(der);
    let mut out = String::from("-----BEGIN CERTIFICATE-----\n");
    for line in b64.as_bytes().chunks(64) {
        out.push_str(std::str::from_utf8(line).unwrap_or_default());
        out.push('\n');
    }
    out.push_str("-----END CERTIFICATE-----\n");
    out
}

/// Envoy's URL encoding of a PEM: everything but unreserved characters escaped.
fn url_encode(s: &str) -> String {
    const UNRESERVED: &percent_encoding::AsciiSet = &percent_encoding::NON_ALPHANUMERIC
        .remove(b'-')
        .remove(b'_')
        .remove(b'.')
        .remove(b'~');
    percent_encoding::utf8_percent_encode(s, UNRESERVED).to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn special_characters_are_escaped_as_rfc_2253_says() {
        assert_eq!(escape("a,b"), "a\\,b");
        assert_eq!(escape(" x "), "\\ x\\ ");
        assert_eq!(escape("#x"), "\\#x");
    }
}
