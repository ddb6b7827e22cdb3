//! TCP health checks: connect, optionally send bytes and look for bytes in the answer
//! (Envoy's `TcpHealthCheckerImpl`).

use courier_proto::envoy::config::core::v3::health_check::TcpHealthCheck;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use super::{FailureKind, Outcome};
use crate::config::ConfigError;

/// A compiled `tcp_health_check`.
#[derive(Debug)]
pub struct TcpCheck {
    /// `send`: written on each check.
    pub send: Vec<u8>,
    /// `receive`: what the answer must hold, in order. Empty: connecting is enough.
    pub receive: Vec<Vec<u8>>,
}

/// Envoy's TCP checker keeps at most this much of an answer to search.
const MAX_ANSWER: usize = 64 * 1024;

impl TcpCheck {
    /// Compiles the check.
    pub fn compile(t: &TcpHealthCheck) -> Result<TcpCheck, ConfigError> {
        if t.proxy_protocol_config.is_some() {
            return Err(ConfigError::unsupported("proxy_protocol_config"));
        }
        Ok(TcpCheck {
            send: match &t.send {
                Some(p) => super::payload(p, "send")?,
                None => Vec::new(),
            },
            receive: t
                .receive
                .iter()
                .enumerate()
                .map(|(i, p)| super::payload(p, &format!("receive[{i}]")))
                .collect::<Result<_, _>>()?,
        })
    }

    /// One check over `conn` (connected); whether the connection may be kept.
    pub async fn check<S>(&self, conn: &mut S) -> (Outcome, bool)
    where
        S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
    {
        let network = Outcome::Failure {
            kind: FailureKind::Network,
            retriable: false,
            status: 0,
        };
        if !self.send.is_empty() && conn.write_all(&self.send).await.is_err() {
            return (network, false);
        }
        if self.receive.is_empty() {
            // A connect-only check: Envoy closes the connection once it is up.
            return (Outcome::Success { degraded: false }, false);
        }
        let mut answer = Vec::new();
        let mut buf = [0u8; 4096];
        loop {
            match conn.read(&mut buf).await {
                Ok(0) | Err(_) => return (network, false),
                Ok(n) => {
                    answer.extend_from_slice(&buf[..n]);
                    if super::payload_matches(&self.receive, &answer) {
                        return (Outcome::Success { degraded: false }, true);
                    }
                    if answer.len() > MAX_ANSWER {
                        let keep = answer.len() - MAX_ANSWER;
                        answer.drain(..keep);
                    }
                }
            }
        }
    }
}
