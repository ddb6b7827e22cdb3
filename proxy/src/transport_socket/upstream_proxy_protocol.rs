//! `envoy.transport_sockets.upstream_proxy_protocol`: an upstream connection starts with
//! a PROXY protocol header (v1 or v2) naming the downstream connection's client and
//! destination addresses, then runs its inner transport socket (raw or TLS).

use std::net::SocketAddr;

use courier_proto::envoy::config::core::v3::proxy_protocol_config::Version;
use courier_proto::envoy::extensions::transport_sockets::proxy_protocol::v3::ProxyProtocolUpstreamTransport;

use crate::config::ConfigError;

/// The PROXY protocol version to send.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ProxyProtocolVersion {
    /// The text header.
    V1,
    /// The binary header.
    V2,
}

/// The wrapper's config type.
pub const TYPE: &str =
    "envoy.extensions.transport_sockets.proxy_protocol.v3.ProxyProtocolUpstreamTransport";

/// Compiles the wrapper (at `path`): its version and inner transport socket.
pub fn compile(
    t: &ProxyProtocolUpstreamTransport,
    path: &str,
) -> Result<
    (
        ProxyProtocolVersion,
        Option<courier_proto::envoy::config::core::v3::TransportSocket>,
    ),
    ConfigError,
> {
    if t.allow_unspecified_address {
        return Err(ConfigError::unsupported(format!(
            "{path}.allow_unspecified_address"
        )));
    }
    if t.tlv_as_pool_key {
        return Err(ConfigError::unsupported(format!("{path}.tlv_as_pool_key")));
    }
    let version = match &t.config {
        None => ProxyProtocolVersion::V1,
        Some(c) => {
            if c.pass_through_tlvs.is_some() || !c.added_tlvs.is_empty() {
                return Err(ConfigError::unsupported(format!("{path}.config (TLVs)")));
            }
            match Version::try_from(c.version) {
                Ok(Version::V1) => ProxyProtocolVersion::V1,
                Ok(Version::V2) => ProxyProtocolVersion::V2,
                Err(_) => {
                    return Err(ConfigError::new(
                        format!("{path}.config.version"),
                        "value must be one of the defined enum values",
                    ))
                }
            }
        }
    };
    Ok((version, t.transport_socket.clone()))
}

/// The header for a downstream connection from `src` to `dst`. Addresses of different
/// families name no connection: v1 `UNKNOWN`, v2 `LOCAL`.
pub fn header(version: ProxyProtocolVersion, src: SocketAddr, dst: SocketAddr) -> Vec<u8> {
    match version {
        ProxyProtocolVersion::V1 => match (src, dst) {
            (SocketAddr::V4(s), SocketAddr::V4(d)) => format!(
                "PROXY TCP4 {} {} {} {}\r\n",
                s.ip(),
                d.ip(),
                s.port(),
                d.port()
            )
            .into_bytes(),
            (SocketAddr::V6(s), SocketAddr::V6(d)) => format!(
                "PROXY TCP6 {} {} {} {}\r\n",
                s.ip(),
                d.ip(),
                s.port(),
                d.port()
            )
            .into_bytes(),
            _ => b"PROXY UNKNOWN\r\n".to_vec(),
        },
        ProxyProtocolVersion::V2 => {
            let mut out = b"\r\n\r\n\0\r\nQUIT\n".to_vec();
            match (src, dst) {
                (SocketAddr::V4(s), SocketAddr::V4(d)) => {
                    out.extend_from_slice(&[0x21, 0x11, 0, 12]);
                    out.extend_from_slice(&s.ip().octets());
                    out.extend_from_slice(&d.ip().octets());
                    out.extend_from_slice(&s.port().to_be_bytes());
                    out.extend_from_slice(&d.port().to_be_bytes());
                }
                (SocketAddr::V6(s), SocketAddr::V6(d)) => {
                    out.extend_from_slice(&[0x21, 0x21, 0, 36]);
                    out.extend_from_slice(&s.ip().octets());
                    out.extend_from_slice(&d.ip().octets());
                    out.extend_from_slice(&s.port().to_be_bytes());
                    out.extend_from_slice(&d.port().to_be_bytes());
                }
                _ => out.extend_from_slice(&[0x20, 0x00, 0, 0]),
            }
            out
        }
    }
}

/// The header of a connection made for no downstream one (a health check): v1
/// `UNKNOWN`, v2 `LOCAL`.
pub fn local_header(version: ProxyProtocolVersion) -> Vec<u8> {
    match version {
        ProxyProtocolVersion::V1 => b"PROXY UNKNOWN\r\n".to_vec(),
        ProxyProtocolVersion::V2 => {
            let mut out = b"\r\n\r\n\0\r\nQUIT\n".to_vec();
            out.extend_from_slice(&[0x20, 0x00, 0, 0]);
            out
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn headers_the_listener_filter_reads_back() {
        let src: SocketAddr = "10.0.0.1:5000".parse().unwrap_or_else(|_| unreachable!());
        let dst: SocketAddr = "10.0.0.2:80".parse().unwrap_or_else(|_| unreachable!());
        for v in [ProxyProtocolVersion::V1, ProxyProtocolVersion::V2] {
            let h = header(v, src, dst);
            match crate::listener::proxy_protocol::parse(&h) {
                crate::listener::proxy_protocol::Header::Found { len, addresses, .. } => {
                    assert_eq!(len, h.len());
                    assert_eq!(addresses, Some((src, dst)));
                }
                other => panic!("{other:?}"),
            }
        }
    }
}
