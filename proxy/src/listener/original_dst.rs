//! Original destinations: the address a connection was sent to before NAT (iptables
//! `REDIRECT`/`DNAT`) redirected it to the proxy (`SO_ORIGINAL_DST`), and the listener a
//! `use_original_dst` listener hands such a connection to.

use std::collections::HashMap;
use std::net::SocketAddr;

use crate::worker::WorkerListener;

/// The connection's original destination, when NAT changed it (`None` when it was sent
/// to the proxy's own address, or the kernel has no record).
pub fn original_dst(stream: &mio::net::TcpStream) -> Option<SocketAddr> {
    let local = stream.local_addr().ok()?;
    let socket = socket2::SockRef::from(stream);
    let dst = if local.is_ipv4() {
        socket.original_dst_v4()
    } else {
        socket.original_dst_v6()
    }
    .ok()?
    .as_socket()?;
    (dst != local).then_some(dst)
}

/// The listener a connection to `dst` belongs to, as Envoy finds it: one bound to exactly
/// that address, else a wildcard one on its port.
pub fn listener_for(
    listeners: &HashMap<String, WorkerListener>,
    dst: SocketAddr,
) -> Option<&WorkerListener> {
    listeners
        .values()
        .find(|l| l.config.address == dst)
        .or_else(|| {
            listeners.values().find(|l| {
                l.config.address.port() == dst.port()
                    && l.config.address.ip().is_unspecified()
                    && l.config.address.is_ipv4() == dst.is_ipv4()
            })
        })
}
