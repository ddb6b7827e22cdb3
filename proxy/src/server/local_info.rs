//! What the process knows of the machine it runs on (Envoy's `LocalInfo`): its address.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::sync::OnceLock;

/// The machine's own IPv4 address as Envoy picks it (`--local-address-ip-version v4`, its
/// default): the first IPv4 interface address other than `127.0.0.1`, else `127.0.0.1`.
///
/// `use_remote_address` appends it to `x-forwarded-for` in place of a loopback client's
/// address. Read once, on first use, and cached: interfaces are not watched.
pub fn local_address() -> IpAddr {
    static ADDRESS: OnceLock<IpAddr> = OnceLock::new();
    *ADDRESS.get_or_init(|| {
        let found = first_non_loopback_v4();
        tracing::debug!(address = ?found, "local address");
        found.map_or(IpAddr::V4(Ipv4Addr::LOCALHOST), IpAddr::V4)
    })
}

/// Whether `ip` is the loopback address as Envoy tells it: `127.0.0.1` or `::1` exactly
/// (an IPv4-mapped `::ffff:127.0.0.1` counts), not the rest of `127.0.0.0/8`.
pub fn is_loopback(ip: IpAddr) -> bool {
    match ip.to_canonical() {
        IpAddr::V4(v4) => v4 == Ipv4Addr::LOCALHOST,
        IpAddr::V6(v6) => v6 == Ipv6Addr::LOCALHOST,
    }
}

fn first_non_loopback_v4() -> Option<Ipv4Addr> {
    let mut list: *mut libc::ifaddrs = std::ptr::null_mut();
    // SAFETY: getifaddrs fills `list` with a linked list it allocates, or fails.
    if unsafe { libc::getifaddrs(&mut list) } != 0 {
        tracing::warn!(error = %std::io::Error::last_os_error(), "getifaddrs failed");
        return None;
    }
    let mut found = None;
    let mut at = list;
    while !at.is_null() {
        // SAFETY: `at` is a node of the list getifaddrs returned, not yet freed.
        let ifa = unsafe { &*at };
        at = ifa.ifa_next;
        if ifa.ifa_addr.is_null() {
            continue;
        }
        // SAFETY: `ifa_addr` points to a sockaddr whose family says its real type.
        if i32::from(unsafe { (*ifa.ifa_addr).sa_family }) != libc::AF_INET {
            continue;
        }
        // SAFETY: an AF_INET address is a sockaddr_in.
        let sin = unsafe { &*(ifa.ifa_addr as *const libc::sockaddr_in) };
        let ip = Ipv4Addr::from(u32::from_be(sin.sin_addr.s_addr));
        if ip != Ipv4Addr::LOCALHOST {
            found = Some(ip);
            break;
        }
    }
    // SAFETY: `list` came from getifaddrs and is freed once, after its last use.
    unsafe { libc::freeifaddrs(list) };
    found
}

/// The node's cluster (`node.cluster`, or `--service-cluster`), as the bootstrap set it;
/// empty before start-up, or when neither gives one.
pub fn service_cluster() -> &'static str {
    SERVICE_CLUSTER.get().map_or("", String::as_str)
}

/// Records the node's cluster once the bootstrap is loaded (later calls are ignored).
pub fn set_service_cluster(cluster: &str) {
    let _ = SERVICE_CLUSTER.set(cluster.to_string());
}

static SERVICE_CLUSTER: OnceLock<String> = OnceLock::new();

/// The node's identity, as spans and tags name it.
#[derive(Debug, Default)]
pub struct NodeInfo {
    /// `node.id`.
    pub id: String,
    /// `node.cluster`.
    pub cluster: String,
    /// `node.locality.zone`.
    pub zone: String,
}

static NODE: OnceLock<NodeInfo> = OnceLock::new();

static NODE_PROTO: OnceLock<courier_proto::envoy::config::core::v3::Node> = OnceLock::new();

/// Records the whole node (with Courier's user agent) once the bootstrap is loaded, for
/// the services that are told who is talking (later calls are ignored).
pub fn set_node_proto(node: courier_proto::envoy::config::core::v3::Node) {
    let _ = NODE_PROTO.set(node);
}

/// The whole node, as the bootstrap set it (empty before start-up).
pub fn node_proto() -> courier_proto::envoy::config::core::v3::Node {
    NODE_PROTO.get().cloned().unwrap_or_default()
}

/// Records the node once the bootstrap is loaded (later calls are ignored).
pub fn set_node(node: NodeInfo) {
    let _ = NODE.set(node);
}

/// The node (empty before start-up).
pub fn node() -> &'static NodeInfo {
    static EMPTY: NodeInfo = NodeInfo {
        id: String::new(),
        cluster: String::new(),
        zone: String::new(),
    };
    NODE.get().unwrap_or(&EMPTY)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_local_address_is_one_of_this_machines() {
        let addr = local_address();
        assert!(addr.is_ipv4());
        // Only an address of this machine can be bound.
        assert!(std::net::UdpSocket::bind((addr, 0)).is_ok(), "{addr}");
        // Loopback only when there is nothing else, as Envoy.
        assert_eq!(
            addr == IpAddr::V4(Ipv4Addr::LOCALHOST),
            first_non_loopback_v4().is_none()
        );
    }

    #[test]
    fn only_the_loopback_address_itself_is_loopback() {
        for (ip, loopback) in [
            ("127.0.0.1", true),
            ("::1", true),
            ("::ffff:127.0.0.1", true),
            ("127.0.0.2", false),
            ("10.0.0.1", false),
            ("::2", false),
        ] {
            let parsed: IpAddr = ip.parse().expect("address");
            assert_eq!(is_loopback(parsed), loopback, "{ip}");
        }
    }
}
