//! `<scope>.ssl.*`: what Envoy's TLS transport socket counts, per listener
//! (`listener.<address>.ssl.*`) or cluster (`cluster.<name>.ssl.*`).

use std::sync::{Arc, OnceLock};

use rustls::{CipherSuite, NamedGroup, ProtocolVersion};

use super::validation::Failure;
use crate::stats::{Counter, Store};

/// What a handshake negotiated, as Envoy names it in `ssl.ciphers.*`, `ssl.versions.*`
/// and `ssl.curves.*`.
const NEGOTIATED: &[&str] = &[
    "ciphers.TLS_AES_128_GCM_SHA256",
    "ciphers.TLS_AES_256_GCM_SHA384",
    "ciphers.TLS_CHACHA20_POLY1305_SHA256",
    "ciphers.ECDHE-ECDSA-AES128-GCM-SHA256",
    "ciphers.ECDHE-RSA-AES128-GCM-SHA256",
    "ciphers.ECDHE-ECDSA-AES256-GCM-SHA384",
    "ciphers.ECDHE-RSA-AES256-GCM-SHA384",
    "ciphers.ECDHE-ECDSA-CHACHA20-POLY1305",
    "ciphers.ECDHE-RSA-CHACHA20-POLY1305",
    "versions.TLSv1.2",
    "versions.TLSv1.3",
    "curves.X25519",
    "curves.P-256",
    "curves.P-384",
    "curves.X25519MLKEM768",
];

fn cipher_index(suite: CipherSuite) -> Option<usize> {
    Some(match suite {
        CipherSuite::TLS13_AES_128_GCM_SHA256 => 0,
        CipherSuite::TLS13_AES_256_GCM_SHA384 => 1,
        CipherSuite::TLS13_CHACHA20_POLY1305_SHA256 => 2,
        CipherSuite::TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256 => 3,
        CipherSuite::TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256 => 4,
        CipherSuite::TLS_ECDHE_ECDSA_WITH_AES_256_GCM_SHA384 => 5,
        CipherSuite::TLS_ECDHE_RSA_WITH_AES_256_GCM_SHA384 => 6,
        CipherSuite::TLS_ECDHE_ECDSA_WITH_CHACHA20_POLY1305_SHA256 => 7,
        CipherSuite::TLS_ECDHE_RSA_WITH_CHACHA20_POLY1305_SHA256 => 8,
        _ => return None,
    })
}

/// A cipher suite's name as Envoy reports it (`%DOWNSTREAM_TLS_CIPHER%`).
pub fn cipher_name(suite: CipherSuite) -> Option<&'static str> {
    cipher_index(suite).and_then(|i| NEGOTIATED[i].strip_prefix("ciphers."))
}

fn version_index(v: ProtocolVersion) -> Option<usize> {
    Some(match v {
        ProtocolVersion::TLSv1_2 => 9,
        ProtocolVersion::TLSv1_3 => 10,
        _ => return None,
    })
}

fn curve_index(g: NamedGroup) -> Option<usize> {
    Some(match g {
        NamedGroup::X25519 => 11,
        NamedGroup::secp256r1 => 12,
        NamedGroup::secp384r1 => 13,
        NamedGroup::X25519MLKEM768 => 14,
        _ => return None,
    })
}

/// The `ssl.*` counters of one listener or cluster.
pub struct SslStats {
    /// `handshake`: handshakes completed.
    pub handshake: Arc<Counter>,
    /// `connection_error`: handshakes (or later records) that failed.
    pub connection_error: Arc<Counter>,
    /// `session_reused`.
    pub session_reused: Arc<Counter>,
    /// `no_certificate`: a server handshake completed without a client certificate.
    pub no_certificate: Arc<Counter>,
    /// `fail_verify_no_cert`.
    pub fail_verify_no_cert: Arc<Counter>,
    /// `fail_verify_error`.
    pub fail_verify_error: Arc<Counter>,
    /// `fail_verify_san`.
    pub fail_verify_san: Arc<Counter>,
    /// `fail_verify_cert_hash`.
    pub fail_verify_cert_hash: Arc<Counter>,
    /// `server_ssl_socket_factory.downstream_context_secrets_not_ready` (listeners) or
    /// `client_ssl_socket_factory.upstream_context_secrets_not_ready` (clusters): a
    /// connection refused because the context's secrets have not arrived.
    pub context_secrets_not_ready: Arc<Counter>,
    /// `ciphers.*`, `versions.*`, `curves.*`: created at their first use, as Envoy's
    /// (a handful of registry lookups per listener or cluster in its whole life, after
    /// which counting takes no lock).
    negotiated: [OnceLock<Arc<Counter>>; NEGOTIATED.len()],
    store: Store,
    scope: String,
}

impl SslStats {
    /// The counters under `<scope>.ssl.` of a listener (`downstream`) or a cluster.
    pub fn new(store: &Store, scope: &str, downstream: bool) -> Arc<SslStats> {
        let c = |s: &str| store.counter(&format!("{scope}.ssl.{s}"));
        let not_ready = if downstream {
            "server_ssl_socket_factory.downstream_context_secrets_not_ready"
        } else {
            "client_ssl_socket_factory.upstream_context_secrets_not_ready"
        };
        Arc::new(SslStats {
            context_secrets_not_ready: store.counter(&format!("{scope}.{not_ready}")),
            handshake: c("handshake"),
            connection_error: c("connection_error"),
            session_reused: c("session_reused"),
            no_certificate: c("no_certificate"),
            fail_verify_no_cert: c("fail_verify_no_cert"),
            fail_verify_error: c("fail_verify_error"),
            fail_verify_san: c("fail_verify_san"),
            fail_verify_cert_hash: c("fail_verify_cert_hash"),
            negotiated: Default::default(),
            store: store.clone(),
            scope: format!("{scope}.ssl"),
        })
    }

    /// Counts what an established connection negotiated.
    pub fn negotiated(&self, worker: usize, conn: &rustls::CommonState) {
        let found = [
            conn.negotiated_cipher_suite()
                .and_then(|s| cipher_index(s.suite())),
            conn.protocol_version().and_then(version_index),
            conn.negotiated_key_exchange_group()
                .and_then(|g| curve_index(g.name())),
        ];
        for i in found.into_iter().flatten() {
            self.negotiated[i]
                .get_or_init(|| {
                    self.store
                        .counter(&format!("{}.{}", self.scope, NEGOTIATED[i]))
                })
                .inc(worker);
        }
    }

    /// Counts a failed handshake: a failed verification as its own kind only (Envoy's
    /// `connection_error` excludes them).
    pub fn failed(&self, worker: usize, failure: Failure) {
        match failure {
            Failure::NoCertificate => self.fail_verify_no_cert.inc(worker),
            Failure::San => self.fail_verify_san.inc(worker),
            Failure::CertHash => self.fail_verify_cert_hash.inc(worker),
            Failure::Chain => self.fail_verify_error.inc(worker),
            Failure::Other => self.connection_error.inc(worker),
        }
    }
}
