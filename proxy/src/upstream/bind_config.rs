//! `upstream_bind_config`: the local address upstream connections are made from (a
//! cluster's own, else the bootstrap's `cluster_manager.upstream_bind_config`).

use std::io;
use std::net::{IpAddr, SocketAddr};

use courier_proto::envoy::config::core::v3::{self as core, BindConfig as BindProto};

use crate::config::ConfigError;

/// A compiled `BindConfig`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BindConfig {
    /// `source_address` (port 0: any).
    pub source: SocketAddr,
    /// `freebind`: bind even to an address the host does not have (`IP_FREEBIND`).
    pub freebind: bool,
}

impl BindConfig {
    /// Compiles `b` (at `path`).
    #[allow(deprecated)] // `additional_source_addresses` is still what some configs send
    pub fn compile(b: &BindProto, path: &str) -> Result<BindConfig, ConfigError> {
        for (field, set) in [
            ("socket_options", !b.socket_options.is_empty()),
            (
                "extra_source_addresses",
                !b.extra_source_addresses.is_empty(),
            ),
            (
                "additional_source_addresses",
                !b.additional_source_addresses.is_empty(),
            ),
            ("local_address_selector", b.local_address_selector.is_some()),
        ] {
            if set {
                return Err(ConfigError::unsupported(format!("{path}.{field}")));
            }
        }
        let Some(sa) = &b.source_address else {
            return Err(ConfigError::new(
                format!("{path}.source_address"),
                "source_address is required",
            ));
        };
        let addr = core::Address {
            address: Some(core::address::Address::SocketAddress(sa.clone())),
        };
        let source = crate::config::socket_address(Some(&addr), &format!("{path}.source_address"))
            .map_err(|e| {
                // The address was checked under `socket_address`; name the field as it is.
                ConfigError::new(e.path.replace(".socket_address", ""), e.message)
            })?;
        Ok(BindConfig {
            source,
            freebind: b.freebind.as_ref().is_some_and(|v| v.value),
        })
    }

    /// A non-blocking socket bound to the source address, connecting to `to`.
    pub fn connect(&self, to: SocketAddr) -> io::Result<mio::net::TcpStream> {
        use socket2::{Domain, Protocol, Socket, Type};
        let domain = match to.ip() {
            IpAddr::V4(_) => Domain::IPV4,
            IpAddr::V6(_) => Domain::IPV6,
        };
        let socket = Socket::new(domain, Type::STREAM, Some(Protocol::TCP))?;
        socket.set_nonblocking(true)?;
        if self.freebind {
            match domain {
                Domain::IPV6 => socket.set_freebind_v6(true)?,
                _ => socket.set_freebind_v4(true)?,
            }
        }
        socket.bind(&self.source.into())?;
        match socket.connect(&to.into()) {
            Ok(()) => {}
            Err(e) if e.raw_os_error() == Some(libc::EINPROGRESS) => {}
            Err(e) => return Err(e),
        }
        let _ = socket.set_tcp_nodelay(true);
        Ok(mio::net::TcpStream::from_std(socket.into()))
    }
}

/// Opens a non-blocking connection to `to`, from `bind`'s source address when there is
/// one.
pub fn open(to: SocketAddr, bind: Option<&BindConfig>) -> io::Result<mio::net::TcpStream> {
    match bind {
        Some(b) => b.connect(to),
        None => mio::net::TcpStream::connect(to),
    }
}

/// Opens a connection to `to` for the main thread (a health check), from `bind`'s source
/// address when there is one.
pub async fn open_tokio(
    to: SocketAddr,
    bind: Option<&BindConfig>,
) -> io::Result<tokio::net::TcpStream> {
    let Some(b) = bind else {
        return tokio::net::TcpStream::connect(to).await;
    };
    let socket = if to.is_ipv4() {
        tokio::net::TcpSocket::new_v4()?
    } else {
        tokio::net::TcpSocket::new_v6()?
    };
    if b.freebind {
        let s = socket2::SockRef::from(&socket);
        if to.is_ipv4() {
            s.set_freebind_v4(true)?;
        } else {
            s.set_freebind_v6(true)?;
        }
    }
    socket.bind(b.source)?;
    socket.connect(to).await
}
