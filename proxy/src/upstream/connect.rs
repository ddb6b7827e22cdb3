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

/// Why a connection could not be opened, as Envoy words it: a socket error is a
/// `delayed connect error` (the connect was non-blocking) with the system's message.
pub fn transport_failure_reason(e: &io::Error) -> String {
    match e.raw_os_error() {
        Some(code) => {
            let text = io::Error::from_raw_os_error(code).to_string();
            // Rust appends ` (os error N)` to the system's message.
            let message = text
                .rsplit_once(" (os error")
                .map_or(text.as_str(), |(m, _)| m);
            format!("delayed connect error: {message}")
        }
        None => e.to_string(),
    }
}

/// Connects to `host` of `cluster`; `alpn` is what the connection will speak when the
/// TLS context names no ALPN protocols, `auto` the server name a request chose
/// (`auto_sni`), `downstream` the (client, destination) addresses of the downstream
/// connection it serves (the PROXY protocol header of an `upstream_proxy_protocol`
/// cluster names them).
pub async fn connect(
    cluster: &ClusterInfo,
    host: &Host,
    alpn: AlpnFallback,
    auto: Option<&AutoName>,
    worker: usize,
    downstream: Option<(std::net::SocketAddr, std::net::SocketAddr)>,
) -> Result<Transport, ConnectError> {
    let deadline = Instant::now() + cluster.connect_timeout;
    let open = async {
        let mut tcp = TcpIo::connected(super::bind_config::open(
            host.address,
            cluster.bind.as_ref(),
        )?)
        .await?;
        if let Some(version) = cluster.proxy_protocol {
            use crate::transport_socket::upstream_proxy_protocol::{header, local_header};
            let bytes = match downstream {
                Some((src, dst)) => header(version, src, dst),
                None => local_header(version),
            };
            write_all(&mut tcp, &bytes).await?;
        }
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

/// Writes all of `bytes` (the PROXY protocol header, before anything else).
async fn write_all(io: &mut TcpIo, mut bytes: &[u8]) -> io::Result<()> {
    while !bytes.is_empty() {
        let n = std::future::poll_fn(|cx| io.poll_send_vectored(cx, &[io::IoSlice::new(bytes)]))
            .await?;
        if n == 0 {
            return Err(io::ErrorKind::WriteZero.into());
        }
        bytes = &bytes[n..];
    }
    Ok(())
}
