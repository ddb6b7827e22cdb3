//! `x-forwarded-client-cert` (XFCC): `forward_client_cert_details` and
//! `set_current_client_cert_details`, as Envoy's `mutateXfccRequestHeader`.
//!
//! Without a client certificate (plaintext, or TLS without mTLS) the header is removed,
//! unless `ALWAYS_FORWARD_ONLY`. With one: `SANITIZE` removes it, `FORWARD_ONLY` and
//! `ALWAYS_FORWARD_ONLY` pass it on untouched, `APPEND_FORWARD` appends this hop's
//! element and `SANITIZE_SET` replaces the header with it. An element is
//! `By=<our URI SAN>;Hash=<sha256>` then the details asked for, in Envoy's order
//! (`Cert`, `Chain`, `Subject`, `URI`, `DNS`).

use courier_proto::envoy::extensions::filters::network::http_connection_manager::v3::http_connection_manager::{
    ForwardClientCertDetails, SetCurrentClientCertDetails,
};
use http::{HeaderMap, HeaderName, HeaderValue};

use crate::config::ConfigError;
use crate::transport_socket::tls::connection_info::PeerEncodings;
use crate::transport_socket::tls::TlsConnectionInfo;

static XFCC: HeaderName = HeaderName::from_static("x-forwarded-client-cert");

/// `forward_client_cert_details`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Mode {
    /// `SANITIZE` (the default).
    #[default]
    Sanitize,
    /// `FORWARD_ONLY`.
    ForwardOnly,
    /// `APPEND_FORWARD`.
    AppendForward,
    /// `SANITIZE_SET`.
    SanitizeSet,
    /// `ALWAYS_FORWARD_ONLY`.
    AlwaysForwardOnly,
}

/// A compiled XFCC policy.
#[derive(Debug, Clone, Copy, Default)]
pub struct ClientCertPolicy {
    mode: Mode,
    cert: bool,
    chain: bool,
    subject: bool,
    uri: bool,
    dns: bool,
}

impl ClientCertPolicy {
    /// Compiles the two HCM fields.
    pub fn compile(
        mode: i32,
        details: Option<&SetCurrentClientCertDetails>,
    ) -> Result<ClientCertPolicy, ConfigError> {
        let mode = match ForwardClientCertDetails::try_from(mode) {
            Ok(ForwardClientCertDetails::Sanitize) => Mode::Sanitize,
            Ok(ForwardClientCertDetails::ForwardOnly) => Mode::ForwardOnly,
            Ok(ForwardClientCertDetails::AppendForward) => Mode::AppendForward,
            Ok(ForwardClientCertDetails::SanitizeSet) => Mode::SanitizeSet,
            Ok(ForwardClientCertDetails::AlwaysForwardOnly) => Mode::AlwaysForwardOnly,
            Err(_) => {
                return Err(ConfigError::new(
                    "forward_client_cert_details",
                    format!("value {mode} is not a ForwardClientCertDetails"),
                ))
            }
        };
        let mut p = ClientCertPolicy {
            mode,
            ..Default::default()
        };
        if let Some(d) = details {
            if d.issuer {
                return Err(ConfigError::unsupported(
                    "set_current_client_cert_details.issuer",
                ));
            }
            if d.format != 0 {
                return Err(ConfigError::unsupported(
                    "set_current_client_cert_details.format",
                ));
            }
            p.cert = d.cert;
            p.chain = d.chain;
            p.subject = d.subject.as_ref().is_some_and(|b| b.value);
            p.uri = d.uri;
            p.dns = d.dns;
        }
        Ok(p)
    }

    /// The peer certificate encodings this policy sends (kept per connection only then).
    pub fn encodings(&self) -> PeerEncodings {
        let sets = matches!(self.mode, Mode::AppendForward | Mode::SanitizeSet);
        PeerEncodings {
            pem: sets && self.cert,
            chain: sets && self.chain,
        }
    }

    /// Applies the policy to a request's headers.
    pub fn apply(&self, tls: Option<&TlsConnectionInfo>, headers: &mut HeaderMap) {
        let Some((tls, peer)) = tls.and_then(|t| Some((t, t.peer.as_ref()?))) else {
            // Most requests carry none: a pass over the names costs less than hashing
            // this one for a removal.
            if self.mode != Mode::AlwaysForwardOnly && headers.keys().any(|k| *k == XFCC) {
                headers.remove(&XFCC);
            }
            return;
        };
        let element = match self.mode {
            Mode::ForwardOnly | Mode::AlwaysForwardOnly => return,
            Mode::Sanitize => {
                headers.remove(&XFCC);
                return;
            }
            Mode::AppendForward | Mode::SanitizeSet => {
                let mut parts: Vec<String> = tls
                    .local_uri_sans
                    .iter()
                    .map(|u| format!("By={u}"))
                    .collect();
                parts.push(format!("Hash={}", peer.sha256));
                if self.cert {
                    let pem = peer.pem_url_encoded.as_deref().unwrap_or_default();
                    parts.push(format!("Cert=\"{pem}\""));
                }
                if self.chain {
                    let chain = peer.chain_url_encoded.as_deref().unwrap_or_default();
                    parts.push(format!("Chain=\"{chain}\""));
                }
                if self.subject {
                    parts.push(format!("Subject=\"{}\"", peer.names.subject));
                }
                if self.uri {
                    if peer.names.uri_sans.is_empty() {
                        parts.push("URI=".to_string());
                    }
                    parts.extend(peer.names.uri_sans.iter().map(|u| format!("URI={u}")));
                }
                if self.dns {
                    parts.extend(peer.names.dns_sans.iter().map(|d| format!("DNS={d}")));
                }
                parts.join(";")
            }
        };
        let value = match (self.mode, headers.get(&XFCC).and_then(|v| v.to_str().ok())) {
            (Mode::AppendForward, Some(prev)) if !prev.is_empty() => format!("{prev},{element}"),
            _ => element,
        };
        match HeaderValue::from_str(&value) {
            Ok(v) => {
                headers.insert(XFCC.clone(), v);
            }
            Err(_) => {
                headers.remove(&XFCC);
            }
        }
    }
}
