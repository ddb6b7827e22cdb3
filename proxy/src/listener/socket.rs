//! Listening sockets, created on the main thread so bind errors surface there.

use std::io;
use std::net::{SocketAddr, TcpListener};

use socket2::{Domain, Protocol, Socket, Type};

use super::socket_options::{apply, SocketOption, State};

/// Binds the sockets for a listener: with `reuse_port`, one SO_REUSEPORT socket per worker
/// (the kernel spreads connections); without, one socket shared by all workers. A port of
/// 0 is resolved by the first bind and reused for the rest.
pub fn bind_listener_sockets(
    address: SocketAddr,
    reuse_port: bool,
    backlog: u32,
    ipv4_compat: bool,
    workers: usize,
    options: &[SocketOption],
) -> io::Result<(SocketAddr, Vec<TcpListener>)> {
    let count = if reuse_port { workers.max(1) } else { 1 };
    let mut sockets = Vec::with_capacity(count);
    let mut bound = address;
    for _ in 0..count {
        let socket = Socket::new(
            Domain::for_address(bound),
            Type::STREAM,
            Some(Protocol::TCP),
        )?;
        socket.set_reuse_address(true)?;
        if reuse_port {
            socket.set_reuse_port(true)?;
        }
        if bound.is_ipv6() {
            // IPv6 only unless `ipv4_compat`, as Envoy sets it.
            socket.set_only_v6(!ipv4_compat)?;
        }
        socket.set_nonblocking(true)?;
        let v6 = bound.is_ipv6();
        apply(options, State::Prebind, &socket, v6)?;
        socket.bind(&bound.into())?;
        apply(options, State::Bound, &socket, v6)?;
        socket.listen(backlog.min(i32::MAX as u32) as i32)?;
        apply(options, State::Listening, &socket, v6)?;
        if bound.port() == 0 {
            if let Some(local) = socket.local_addr()?.as_socket() {
                bound = local;
            }
        }
        sockets.push(socket.into());
    }
    Ok((bound, sockets))
}

/// A downstream connection's peer address as Envoy reads it: on a dual-stack
/// (`ipv4_compat`) socket an IPv4 client's IPv4-mapped IPv6 address is its IPv4 address,
/// so what logs, headers and matchers see is the same whichever socket took it.
pub fn peer_addr(stream: &impl std::os::fd::AsFd) -> io::Result<SocketAddr> {
    canonical(socket2::SockRef::from(stream).peer_addr()?)
}

/// A downstream connection's local address, read as [`peer_addr`] reads the peer's.
pub fn local_addr(stream: &impl std::os::fd::AsFd) -> io::Result<SocketAddr> {
    canonical(socket2::SockRef::from(stream).local_addr()?)
}

fn canonical(addr: socket2::SockAddr) -> io::Result<SocketAddr> {
    let addr = addr
        .as_socket()
        .ok_or_else(|| io::Error::other("not an IP socket address"))?;
    Ok(SocketAddr::new(addr.ip().to_canonical(), addr.port()))
}
