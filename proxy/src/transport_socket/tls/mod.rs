//! `envoy.transport_sockets.tls`: TLS on rustls, run inside the workers on rustls's
//! sans-I/O connections (no thread or runtime of its own).
//!
//! Compiling (main thread): [`server_context`] and [`client_context`] turn Envoy's
//! contexts into rustls configs, through [`common`] (certificates, [`params`],
//! [`validation`]). Running (workers): a [`TlsSession`] beside each socket.

pub mod certificates;
pub mod client_context;
pub mod common;
pub mod connection_info;
pub mod inventory;
pub mod params;
pub mod sds;
pub mod server_context;
pub mod session;
pub mod session_tickets;
pub mod stats;
pub mod validation;

pub use client_context::{AlpnFallback, AutoName, ClientContext};
pub use connection_info::TlsConnectionInfo;
pub use server_context::ServerContext;
pub use session::TlsSession;
pub use stats::SslStats;

use std::sync::Arc;

/// A filter chain's TLS, with the stats its handshakes count into.
#[derive(Clone)]
pub struct ServerTls {
    /// The chain's compiled context.
    pub context: Arc<ServerContext>,
    /// The listener's `ssl.*`.
    pub stats: Arc<SslStats>,
}

impl ServerTls {
    /// A new server session for an accepted connection on `worker`.
    pub fn session(&self, worker: usize) -> std::io::Result<TlsSession> {
        let Some(config) = self.context.config() else {
            self.stats.context_secrets_not_ready.inc(worker);
            return Err(std::io::Error::other(
                "the filter chain's TLS secrets have not arrived",
            ));
        };
        let conn = rustls::ServerConnection::new(config).map_err(std::io::Error::other)?;
        Ok(TlsSession::new(conn.into(), self.stats.clone(), worker))
    }
}

/// A cluster's TLS, with the stats its handshakes count into.
#[derive(Clone)]
pub struct ClientTls {
    /// The cluster's compiled context.
    pub context: Arc<ClientContext>,
    /// The cluster's `ssl.*`.
    pub stats: Arc<SslStats>,
}

impl ClientTls {
    /// A new client session to `peer` on `worker`.
    pub fn session(
        &self,
        peer: std::net::IpAddr,
        fallback: AlpnFallback,
        auto: Option<&AutoName>,
        worker: usize,
    ) -> std::io::Result<TlsSession> {
        let conn = self.context.connect(peer, fallback, auto).map_err(|e| {
            if !self.context.pending().is_empty() {
                self.stats.context_secrets_not_ready.inc(worker);
            }
            std::io::Error::other(e)
        })?;
        Ok(TlsSession::new(conn.into(), self.stats.clone(), worker))
    }
}
