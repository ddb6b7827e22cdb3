//! Which requests are internal: the connection manager's `internal_address_config`.
//!
//! An internal request keeps the `x-envoy-*` controls it carries, and the router obeys
//! them ([`crate::http::conn_manager::request_controls`]); it keeps its `x-request-id`, is marked
//! `x-envoy-internal: true` and gets no `x-envoy-external-address`. Every other request
//! is external and loses those headers. Measured against Envoy 1.40:
//!
//! - without `internal_address_config` no request is internal;
//! - with it but no `cidr_ranges`, Envoy's private addresses are: `10/8`, `172.16/12`,
//!   `192.168/16`, `fd00::/8`, and `127.0.0.1` and `::1` exactly;
//! - the address tested is the peer's when `use_remote_address` is set, and then only for
//!   a request that arrived without `x-forwarded-for`; otherwise it is `x-forwarded-for`'s
//!   one and only address (with `xff_num_trusted_hops` 0).

use std::net::IpAddr;

use courier_proto::envoy::config::core::v3::CidrRange as CidrProto;
use courier_proto::envoy::extensions::filters::network::http_connection_manager::v3::http_connection_manager::InternalAddressConfig;
use http::header::HeaderName;
use http::HeaderMap;

use crate::config::ConfigError;

static X_FORWARDED_FOR: HeaderName = HeaderName::from_static("x-forwarded-for");

/// An address block (`CidrRange`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Cidr {
    /// The block's first address (the prefix, host bits cleared).
    network: IpAddr,
    /// The prefix length.
    len: u8,
}

impl Cidr {
    /// A block, its host bits cleared as Envoy's `CidrRange` does. `None` when `len` is
    /// longer than the address.
    pub fn new(address: IpAddr, len: u8) -> Option<Cidr> {
        let network = match address {
            IpAddr::V4(a) if len <= 32 => IpAddr::V4((u32::from(a) & mask32(len)).into()),
            IpAddr::V6(a) if len <= 128 => IpAddr::V6((u128::from(a) & mask128(len)).into()),
            _ => return None,
        };
        Some(Cidr { network, len })
    }

    /// Compiles a `CidrRange` at `path`.
    pub fn compile(p: &CidrProto, path: &str) -> Result<Cidr, ConfigError> {
        let address: IpAddr = p.address_prefix.parse().map_err(|_| {
            ConfigError::new(
                format!("{path}.address_prefix"),
                format!("malformed IP address: {}", p.address_prefix),
            )
        })?;
        let len = p.prefix_len.as_ref().map_or(0, |v| v.value);
        u8::try_from(len)
            .ok()
            .and_then(|l| Cidr::new(address, l))
            .ok_or_else(|| {
                ConfigError::new(
                    format!("{path}.prefix_len"),
                    format!("prefix length {len} is too long for {address}"),
                )
            })
    }

    /// The prefix length.
    pub fn prefix_len(&self) -> u8 {
        self.len
    }

    /// Whether `ip` is in the block (an IPv4 address is never in an IPv6 block).
    pub fn contains(&self, ip: IpAddr) -> bool {
        match (self.network, ip) {
            (IpAddr::V4(n), IpAddr::V4(a)) => u32::from(a) & mask32(self.len) == u32::from(n),
            (IpAddr::V6(n), IpAddr::V6(a)) => u128::from(a) & mask128(self.len) == u128::from(n),
            _ => false,
        }
    }
}

fn mask32(len: u8) -> u32 {
    u32::MAX.checked_shl(32 - u32::from(len)).unwrap_or(0)
}

fn mask128(len: u8) -> u128 {
    u128::MAX.checked_shl(128 - u32::from(len)).unwrap_or(0)
}

/// The compiled `internal_address_config`.
#[derive(Debug, Clone, Default)]
pub enum InternalAddresses {
    /// Not configured: every request is external.
    #[default]
    None,
    /// No `cidr_ranges`: Envoy's private and loopback addresses.
    Private,
    /// These blocks.
    Ranges(Vec<Cidr>),
}

impl InternalAddresses {
    /// Compiles the connection manager's `internal_address_config` (`unix_sockets` has no
    /// effect: Courier's HTTP listeners are TCP).
    pub fn compile(
        proto: Option<&InternalAddressConfig>,
        path: &str,
    ) -> Result<InternalAddresses, ConfigError> {
        let Some(p) = proto else {
            return Ok(InternalAddresses::None);
        };
        if p.cidr_ranges.is_empty() {
            return Ok(InternalAddresses::Private);
        }
        p.cidr_ranges
            .iter()
            .enumerate()
            .map(|(i, c)| Cidr::compile(c, &format!("{path}.cidr_ranges[{i}]")))
            .collect::<Result<_, _>>()
            .map(InternalAddresses::Ranges)
    }

    /// Whether `ip` is an internal address.
    pub fn contains(&self, ip: IpAddr) -> bool {
        match self {
            InternalAddresses::None => false,
            InternalAddresses::Private => is_private(ip),
            InternalAddresses::Ranges(r) => r.iter().any(|c| c.contains(ip)),
        }
    }

    /// Whether a request from `peer` with `headers` (before this hop appends to
    /// `x-forwarded-for`) is internal.
    pub fn is_internal(
        &self,
        peer: IpAddr,
        headers: &HeaderMap,
        use_remote_address: bool,
        xff_num_trusted_hops: u32,
    ) -> bool {
        if matches!(self, InternalAddresses::None) {
            return false;
        }
        let mut xff = headers.get_all(&X_FORWARDED_FOR).iter();
        if use_remote_address {
            return xff.next().is_none() && self.contains(peer);
        }
        // `x-forwarded-for`'s only address.
        xff_num_trusted_hops == 0
            && crate::http::conn_manager::xff::xff_address(headers, 0)
                .is_some_and(|(ip, single)| single && self.contains(ip))
    }
}

/// Envoy's internal addresses when no ranges are given (its `isInternalAddress`).
fn is_private(ip: IpAddr) -> bool {
    const PRIVATE: [(IpAddr, u8); 5] = [
        (IpAddr::V4(std::net::Ipv4Addr::new(10, 0, 0, 0)), 8),
        (IpAddr::V4(std::net::Ipv4Addr::new(172, 16, 0, 0)), 12),
        (IpAddr::V4(std::net::Ipv4Addr::new(192, 168, 0, 0)), 16),
        (
            IpAddr::V6(std::net::Ipv6Addr::new(0xfd00, 0, 0, 0, 0, 0, 0, 0)),
            8,
        ),
        (IpAddr::V4(std::net::Ipv4Addr::LOCALHOST), 32),
    ];
    ip == IpAddr::V6(std::net::Ipv6Addr::LOCALHOST)
        || PRIVATE
            .iter()
            .any(|(net, len)| Cidr::new(*net, *len).is_some_and(|c| c.contains(ip)))
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::HeaderValue;

    fn ip(s: &str) -> IpAddr {
        s.parse().expect("test address")
    }

    #[test]
    fn blocks_contain_their_addresses_only() {
        let c = Cidr::new(ip("10.1.2.3"), 8).expect("valid");
        assert!(c.contains(ip("10.255.0.1")));
        assert!(!c.contains(ip("11.0.0.1")));
        assert!(!c.contains(ip("::ffff:10.0.0.1")));
        assert!(Cidr::new(ip("0.0.0.0"), 0).is_some_and(|c| c.contains(ip("1.2.3.4"))));
        assert!(Cidr::new(ip("1.2.3.4"), 33).is_none());
        let v6 = Cidr::new(ip("2001:db8::"), 32).expect("valid");
        assert!(v6.contains(ip("2001:db8:1::1")));
        assert!(!v6.contains(ip("2001:db9::1")));
    }

    #[test]
    fn private_addresses_are_envoys() {
        let p = InternalAddresses::Private;
        for a in [
            "10.1.1.1",
            "172.31.255.255",
            "192.168.1.1",
            "127.0.0.1",
            "::1",
            "fd00::1",
        ] {
            assert!(p.contains(ip(a)), "{a}");
        }
        for a in [
            "11.1.1.1",
            "172.32.0.1",
            "127.5.5.5",
            "fc00::1",
            "169.254.1.1",
        ] {
            assert!(!p.contains(ip(a)), "{a}");
        }
    }

    #[test]
    fn the_address_tested_follows_use_remote_address() {
        let cfg = InternalAddresses::Ranges(vec![Cidr::new(ip("10.0.0.0"), 8).expect("valid")]);
        let none = HeaderMap::new();
        let mut one = HeaderMap::new();
        one.insert("x-forwarded-for", HeaderValue::from_static("10.1.1.1"));
        let mut two = HeaderMap::new();
        two.insert(
            "x-forwarded-for",
            HeaderValue::from_static("11.1.1.1,10.1.1.1"),
        );
        let peer = ip("10.9.9.9");
        assert!(cfg.is_internal(peer, &none, true, 0));
        assert!(!cfg.is_internal(peer, &one, true, 0));
        assert!(!cfg.is_internal(ip("11.0.0.1"), &none, true, 0));
        assert!(cfg.is_internal(ip("11.0.0.1"), &one, false, 0));
        assert!(!cfg.is_internal(peer, &one, false, 1));
        assert!(!cfg.is_internal(peer, &two, false, 0));
        assert!(!cfg.is_internal(peer, &none, false, 0));
        assert!(!InternalAddresses::None.is_internal(peer, &none, true, 0));
    }
}
