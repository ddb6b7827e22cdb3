//! `<scope>.ssl.*`: what Envoy's TLS transport socket counts, per listener
//! (`listener.<address>.ssl.*`) or cluster (`cluster.<name>.ssl.*`).

use std::sync::Arc;

use super::validation::Failure;
use crate::stats::{Counter, Store};

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
}

impl SslStats {
    /// The counters under `<scope>.ssl.`.
    pub fn new(store: &Store, scope: &str) -> Arc<SslStats> {
        let c = |s: &str| store.counter(&format!("{scope}.ssl.{s}"));
        Arc::new(SslStats {
            handshake: c("handshake"),
            connection_error: c("connection_error"),
            session_reused: c("session_reused"),
            no_certificate: c("no_certificate"),
            fail_verify_no_cert: c("fail_verify_no_cert"),
            fail_verify_error: c("fail_verify_error"),
            fail_verify_san: c("fail_verify_san"),
            fail_verify_cert_hash: c("fail_verify_cert_hash"),
        })
    }

    /// Counts a failed handshake.
    pub fn failed(&self, worker: usize, failure: Failure) {
        self.connection_error.inc(worker);
        match failure {
            Failure::NoCertificate => self.fail_verify_no_cert.inc(worker),
            Failure::San => self.fail_verify_san.inc(worker),
            Failure::CertHash => self.fail_verify_cert_hash.inc(worker),
            Failure::Chain => self.fail_verify_error.inc(worker),
            Failure::Other => {}
        }
    }
}
