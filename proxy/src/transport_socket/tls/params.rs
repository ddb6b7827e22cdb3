//! `tls_params`: protocol versions, TLS 1.2 cipher suites and key-exchange groups, as
//! rustls's crypto provider and version list.
//!
//! Envoy names ciphers and curves as BoringSSL does; the ones rustls implements are mapped,
//! any other is refused by name (a config naming a cipher Courier cannot offer would
//! otherwise be served with a different set than the operator chose). TLS 1.3 suites are
//! not configurable, as in Envoy.

use std::sync::Arc;

use courier_proto::envoy::extensions::transport_sockets::tls::v3::{
    tls_parameters::TlsProtocol, TlsParameters,
};
use rustls::crypto::{aws_lc_rs, CryptoProvider, SupportedKxGroup};
use rustls::{SupportedCipherSuite, SupportedProtocolVersion};

use crate::config::ConfigError;

/// BoringSSL's TLS 1.2 cipher names and the rustls suites they are.
const TLS12_SUITES: &[(&str, SupportedCipherSuite)] = &[
    (
        "ECDHE-ECDSA-AES128-GCM-SHA256",
        aws_lc_rs::cipher_suite::TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256,
    ),
    (
        "ECDHE-RSA-AES128-GCM-SHA256",
        aws_lc_rs::cipher_suite::TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256,
    ),
    (
        "ECDHE-ECDSA-AES256-GCM-SHA384",
        aws_lc_rs::cipher_suite::TLS_ECDHE_ECDSA_WITH_AES_256_GCM_SHA384,
    ),
    (
        "ECDHE-RSA-AES256-GCM-SHA384",
        aws_lc_rs::cipher_suite::TLS_ECDHE_RSA_WITH_AES_256_GCM_SHA384,
    ),
    (
        "ECDHE-ECDSA-CHACHA20-POLY1305",
        aws_lc_rs::cipher_suite::TLS_ECDHE_ECDSA_WITH_CHACHA20_POLY1305_SHA256,
    ),
    (
        "ECDHE-RSA-CHACHA20-POLY1305",
        aws_lc_rs::cipher_suite::TLS_ECDHE_RSA_WITH_CHACHA20_POLY1305_SHA256,
    ),
];

const TLS13_SUITES: &[SupportedCipherSuite] = &[
    aws_lc_rs::cipher_suite::TLS13_AES_128_GCM_SHA256,
    aws_lc_rs::cipher_suite::TLS13_AES_256_GCM_SHA384,
    aws_lc_rs::cipher_suite::TLS13_CHACHA20_POLY1305_SHA256,
];

/// BoringSSL's curve names and the rustls groups they are.
fn kx_group(name: &str) -> Option<&'static dyn SupportedKxGroup> {
    Some(match name {
        "X25519" => aws_lc_rs::kx_group::X25519,
        "P-256" => aws_lc_rs::kx_group::SECP256R1,
        "P-384" => aws_lc_rs::kx_group::SECP384R1,
        "X25519MLKEM768" => aws_lc_rs::kx_group::X25519MLKEM768,
        _ => return None,
    })
}

/// What `tls_params` compiles to.
pub struct Params {
    /// The provider: the cipher suites and groups allowed, in preference order.
    pub provider: Arc<CryptoProvider>,
    /// The protocol versions allowed.
    pub versions: Vec<&'static SupportedProtocolVersion>,
}

/// Which end of a connection the parameters are for: Envoy's defaults differ.
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum Side {
    /// Upstream: TLS 1.2 at most unless configured (Envoy's client default).
    Client,
    /// Downstream: TLS 1.2 to 1.3.
    Server,
}

/// Compiles `tls_params` (absent: Envoy's defaults, the suites and groups rustls has).
pub fn compile(
    params: Option<&TlsParameters>,
    side: Side,
    path: &str,
) -> Result<Params, ConfigError> {
    let default = TlsParameters::default();
    let p = params.unwrap_or(&default);
    if !p.signature_algorithms.is_empty() {
        return Err(ConfigError::unsupported(format!(
            "{path}.signature_algorithms"
        )));
    }
    if !p.compliance_policies.is_empty() {
        return Err(ConfigError::unsupported(format!(
            "{path}.compliance_policies"
        )));
    }
    let version = |v: i32, field: &str, auto: u8| -> Result<u8, ConfigError> {
        match TlsProtocol::try_from(v) {
            Ok(TlsProtocol::TlsAuto) => Ok(auto),
            Ok(TlsProtocol::TlSv12) => Ok(2),
            Ok(TlsProtocol::TlSv13) => Ok(3),
            Ok(TlsProtocol::TlSv10) | Ok(TlsProtocol::TlSv11) => Err(ConfigError::new(
                format!("{path}.{field}"),
                "TLS 1.0 and 1.1 are not supported (rustls implements TLS 1.2 and 1.3)",
            )),
            Err(_) => Err(ConfigError::new(
                format!("{path}.{field}"),
                format!("unknown TLS protocol version {v}"),
            )),
        }
    };
    let min = version(
        p.tls_minimum_protocol_version,
        "tls_minimum_protocol_version",
        2,
    )?;
    let default_max = if side == Side::Client { 2 } else { 3 };
    let max = version(
        p.tls_maximum_protocol_version,
        "tls_maximum_protocol_version",
        default_max,
    )?;
    if min > max {
        return Err(ConfigError::new(
            path,
            "tls_minimum_protocol_version is above tls_maximum_protocol_version",
        ));
    }
    let mut versions = Vec::new();
    if min <= 3 && max >= 3 {
        versions.push(&rustls::version::TLS13);
    }
    if min <= 2 {
        versions.push(&rustls::version::TLS12);
    }

    let mut suites: Vec<SupportedCipherSuite> = TLS13_SUITES.to_vec();
    if p.cipher_suites.is_empty() {
        suites.extend(TLS12_SUITES.iter().map(|(_, s)| *s));
    } else {
        for (i, entry) in p.cipher_suites.iter().enumerate() {
            // `[A|B]` is BoringSSL's group of equally preferred ciphers.
            let names = entry.trim_start_matches('[').trim_end_matches(']');
            for name in names.split('|') {
                let Some((_, suite)) = TLS12_SUITES.iter().find(|(n, _)| *n == name) else {
                    return Err(ConfigError::new(
                        format!("{path}.cipher_suites[{i}]"),
                        format!(
                            "cipher suite '{name}' is not supported; Courier supports {}",
                            TLS12_SUITES
                                .iter()
                                .map(|(n, _)| *n)
                                .collect::<Vec<_>>()
                                .join(", ")
                        ),
                    ));
                };
                if !suites.contains(suite) {
                    suites.push(*suite);
                }
            }
        }
    }

    let mut groups: Vec<&'static dyn SupportedKxGroup> = Vec::new();
    if p.ecdh_curves.is_empty() {
        // Envoy's (BoringSSL's) default: X25519, P-256, P-384 — and the hybrid post-quantum
        // group rustls offers first.
        groups.extend([
            aws_lc_rs::kx_group::X25519MLKEM768,
            aws_lc_rs::kx_group::X25519,
            aws_lc_rs::kx_group::SECP256R1,
            aws_lc_rs::kx_group::SECP384R1,
        ]);
    } else {
        for (i, name) in p.ecdh_curves.iter().enumerate() {
            let Some(group) = kx_group(name) else {
                return Err(ConfigError::new(
                    format!("{path}.ecdh_curves[{i}]"),
                    format!(
                        "curve '{name}' is not supported; Courier supports X25519, P-256, P-384 and X25519MLKEM768"
                    ),
                ));
            };
            groups.push(group);
        }
    }

    let provider = CryptoProvider {
        cipher_suites: suites,
        kx_groups: groups,
        ..aws_lc_rs::default_provider()
    };
    Ok(Params {
        provider: Arc::new(provider),
        versions,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn boringssl_names_map_and_unknown_ones_are_refused_by_name() {
        let p = TlsParameters {
            cipher_suites: vec![
                "[ECDHE-ECDSA-AES128-GCM-SHA256|ECDHE-ECDSA-CHACHA20-POLY1305]".into(),
                "ECDHE-RSA-AES256-GCM-SHA384".into(),
            ],
            ecdh_curves: vec!["P-256".into()],
            ..Default::default()
        };
        let c = compile(Some(&p), Side::Server, "tls_params").expect("compiles");
        assert_eq!(c.provider.cipher_suites.len(), 3 + 3);
        assert_eq!(c.provider.kx_groups.len(), 1);

        let p = TlsParameters {
            cipher_suites: vec!["AES128-SHA".into()],
            ..Default::default()
        };
        let e = compile(Some(&p), Side::Server, "tls_params")
            .err()
            .expect("refused");
        assert_eq!(e.path, "tls_params.cipher_suites[0]");
        assert!(e.message.contains("AES128-SHA"), "{}", e.message);
    }

    #[test]
    fn versions_follow_min_and_max() {
        let only12 = TlsParameters {
            tls_maximum_protocol_version: TlsProtocol::TlSv12 as i32,
            ..Default::default()
        };
        let c = compile(Some(&only12), Side::Server, "p").expect("compiles");
        assert_eq!(c.versions.len(), 1);
        assert_eq!(c.versions[0].version, rustls::ProtocolVersion::TLSv1_2);
        let old = TlsParameters {
            tls_minimum_protocol_version: TlsProtocol::TlSv10 as i32,
            ..Default::default()
        };
        let e = compile(Some(&old), Side::Server, "p")
            .err()
            .expect("refused");
        assert_eq!(e.path, "p.tls_minimum_protocol_version");
    }
}
