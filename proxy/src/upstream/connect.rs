//! Opening a connection to an upstream host: the TCP connect, then the cluster's
//! transport socket (the TLS handshake), both within the cluster's `connect_timeout` as
//! in Envoy.

use std::io;
use std::time::Instant;

use courier_runtime::event::rt::{self, TcpIo};

use super::{ClusterInfo, Host};
use crate::transport_socket::tls::{AlpnFallback, AutoName};
use crate::transport_socket::{TlsIo, Transport};

/// Why a connection could not be opened.
#[derive(Debug, thiserror::Error)]
pub enum ConnectError {
    /// `connect_timeout` passed first.
    #[error("connect timeout")]
    Timeout,
    /// The connect or the handshake failed.
    #[error("{0}")]
    Failed(#[from] io::Error),
}

/// Connects to `host` of `cluster`; `alpn` is what the connection will speak when the
/// TLS context names no ALPN protocols, `auto` the server name a request chose
/// (`auto_sni`).
pub async fn connect(
    cluster: &ClusterInfo,
    host: &Host,
    alpn: AlpnFallback,
    auto: Option<&AutoName>,
    worker: usize,
) -> Result<Transport, ConnectError> {
    let deadline = Instant::now() + cluster.connect_timeout;
    let open = async {
        let tcp = TcpIo::connected(super::bind_config::open(
            host.address,
            cluster.bind.as_ref(),
        )?)
        .await?;
        let Some(tls) = cluster.host_tls(host) else {
            return Ok(Transport::Raw(tcp));
        };
        // The request's name (`auto_sni`), else the host's (`auto_host_sni`).
        let host_name = auto
            .is_none()
            .then(|| tls.context.host_name(host.hostname.as_deref()))
            .flatten();
        let session = tls.session(host.address.ip(), alpn, auto.or(host_name.as_ref()), worker)?;
        let mut io = TlsIo::new(tcp, session);
        io.handshake().await?;
        Ok(Transport::Tls(Box::new(io)))
    };
    match rt::timeout(Some(deadline), open).await {
        None => Err(ConnectError::Timeout),
        Some(r) => r.map_err(ConnectError::Failed),
    }
}
