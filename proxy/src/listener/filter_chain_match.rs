//! `filter_chain_match`: which of a listener's filter chains takes a connection.
//!
//! Envoy's order, one criterion at a time, the most specific match at each level
//! narrowing the candidates for the next (no backtracking: a connection that matched a
//! specific value at one level and nothing at a later one gets no chain, not a less
//! specific one): `destination_port`, then `prefix_ranges` (the local address's longest
//! matching prefix, then chains naming none), then `server_names` (exact, then the
//! longest wildcard suffix, then chains naming none), then `transport_protocol`, then
//! `application_protocols`, then `direct_source_prefix_ranges` (the peer's address),
//! `source_type` (a local client: the loopback address or the listener's own),
//! `source_prefix_ranges` (the client's address, after a PROXY protocol header) and
//! `source_ports`. Nothing left: the `default_filter_chain`.

use std::net::{IpAddr, SocketAddr};

use courier_proto::envoy::config::listener::v3 as pb;

use crate::config::ConfigError;
use crate::http::conn_manager::internal_address::Cidr;

/// `source_type`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash)]
pub enum SourceType {
    /// `ANY`.
    #[default]
    Any,
    /// `SAME_IP_OR_LOOPBACK`: the client is on this host.
    Local,
    /// `EXTERNAL`: it is not.
    External,
}

/// What a chain matches on, compiled.
#[derive(Debug, Clone, Default, PartialEq, Eq, Hash)]
pub struct ChainMatch {
    /// `destination_port`.
    pub destination_port: Option<u16>,
    /// `server_names`, lower-cased; `*.example.com` is a wildcard.
    pub server_names: Vec<String>,
    /// `transport_protocol` (`tls`, `raw_buffer`), if set.
    pub transport_protocol: Option<String>,
    /// `application_protocols`.
    pub application_protocols: Vec<String>,
    /// `prefix_ranges`: the local address's.
    pub prefix_ranges: Vec<Cidr>,
    /// `direct_source_prefix_ranges`: the peer's address's.
    pub direct_source_prefix_ranges: Vec<Cidr>,
    /// `source_type`.
    pub source_type: SourceType,
    /// `source_prefix_ranges`: the client's address's.
    pub source_prefix_ranges: Vec<Cidr>,
    /// `source_ports`.
    pub source_ports: Vec<u16>,
}

/// What the listener knows of a connection when it picks the chain.
#[derive(Debug, Clone, Default)]
pub struct ConnectionFacts {
    /// The local port.
    pub port: u16,
    /// The TLS SNI the inspector found (lower-cased).
    pub server_name: Option<String>,
    /// `tls` when the inspector found a ClientHello, else `raw_buffer`.
    pub transport_protocol: &'static str,
    /// The client's ALPN offer.
    pub application_protocols: Vec<String>,
    /// The original destination a listener filter restored: the connection's local
    /// address from here on.
    pub restored_local: Option<std::net::SocketAddr>,
    /// The client address a PROXY protocol header gave: the connection's remote address
    /// from here on.
    pub restored_remote: Option<std::net::SocketAddr>,
    /// The connection's own addresses, read only when a chain matches on them (each
    /// costs a system call): the local one (`getsockname`) and the peer's
    /// (`getpeername`).
    pub socket_local: Option<SocketAddr>,
    /// See `socket_local`.
    pub socket_peer: Option<SocketAddr>,
}

impl ConnectionFacts {
    /// The connection's local address (a restored original destination first).
    fn local_ip(&self) -> Option<IpAddr> {
        self.restored_local.or(self.socket_local).map(|a| a.ip())
    }

    /// The client's address (a PROXY protocol header's first).
    fn source(&self) -> Option<SocketAddr> {
        self.restored_remote.or(self.socket_peer)
    }
}

impl ChainMatch {
    /// Compiles a `filter_chain_match` (fields Courier cannot act on are refused).
    pub fn compile(m: Option<&pb::FilterChainMatch>) -> Result<ChainMatch, ConfigError> {
        let Some(m) = m else {
            return Ok(ChainMatch::default());
        };
        if !m.address_suffix.is_empty() || m.suffix_len.is_some() {
            return Err(ConfigError::new(
                "filter_chain_match",
                "filter chain contains unimplemented fields",
            ));
        }
        let cidrs = |ranges: &[courier_proto::envoy::config::core::v3::CidrRange], field: &str| {
            ranges
                .iter()
                .enumerate()
                .map(|(i, r)| Cidr::compile(r, &format!("filter_chain_match.{field}[{i}]")))
                .collect::<Result<Vec<_>, _>>()
        };
        let source_type = match m.source_type {
            0 => SourceType::Any,
            1 => SourceType::Local,
            2 => SourceType::External,
            _ => {
                return Err(ConfigError::new(
                    "filter_chain_match.source_type",
                    "value must be one of the defined enum values",
                ))
            }
        };
        let source_ports = m
            .source_ports
            .iter()
            .enumerate()
            .map(|(i, p)| {
                u16::try_from(*p).map_err(|_| {
                    ConfigError::new(
                        format!("filter_chain_match.source_ports[{i}]"),
                        "value must be inside range [0, 65535]",
                    )
                })
            })
            .collect::<Result<Vec<_>, _>>()?;
        let destination_port = m
            .destination_port
            .as_ref()
            .map(|p| {
                u16::try_from(p.value).map_err(|_| {
                    ConfigError::new(
                        "filter_chain_match.destination_port",
                        format!("port {} out of range", p.value),
                    )
                })
            })
            .transpose()?;
        for (i, name) in m.server_names.iter().enumerate() {
            // Envoy: a wildcard is a whole leading label only.
            if name.contains('*') && (!name.starts_with("*.") || name[1..].contains('*')) {
                return Err(ConfigError::new(
                    format!("filter_chain_match.server_names[{i}]"),
                    format!("error adding listener: partial wildcards are not supported in \"server_names\": '{name}'"),
                ));
            }
        }
        Ok(ChainMatch {
            destination_port,
            server_names: m
                .server_names
                .iter()
                .map(|s| s.to_ascii_lowercase())
                .collect(),
            transport_protocol: (!m.transport_protocol.is_empty())
                .then(|| m.transport_protocol.clone()),
            application_protocols: m.application_protocols.clone(),
            prefix_ranges: cidrs(&m.prefix_ranges, "prefix_ranges")?,
            direct_source_prefix_ranges: cidrs(
                &m.direct_source_prefix_ranges,
                "direct_source_prefix_ranges",
            )?,
            source_type,
            source_prefix_ranges: cidrs(&m.source_prefix_ranges, "source_prefix_ranges")?,
            source_ports,
        })
    }

    /// Whether the chain needs the connection's local address.
    pub fn needs_local(&self) -> bool {
        !self.prefix_ranges.is_empty() || self.source_type != SourceType::Any
    }

    /// Whether the chain needs the peer's address.
    pub fn needs_peer(&self) -> bool {
        !self.direct_source_prefix_ranges.is_empty()
            || self.source_type != SourceType::Any
            || !self.source_prefix_ranges.is_empty()
            || !self.source_ports.is_empty()
    }

    /// Whether the chain needs the TLS inspector's facts to be told apart.
    pub fn needs_inspection(&self) -> bool {
        !self.server_names.is_empty()
            || self.transport_protocol.is_some()
            || !self.application_protocols.is_empty()
    }

    /// The keys two chains may not share (Envoy: "multiple filter chains with the same
    /// matching rules are defined"): one per combination of the listed values.
    pub fn keys(&self) -> Vec<Vec<String>> {
        fn or_any(values: Vec<String>) -> Vec<String> {
            if values.is_empty() {
                vec![String::new()]
            } else {
                values
            }
        }
        let shown = |c: &[Cidr]| c.iter().map(|c| format!("{c:?}")).collect::<Vec<_>>();
        let levels = [
            vec![format!("{:?}", self.destination_port)],
            or_any(shown(&self.prefix_ranges)),
            or_any(self.server_names.clone()),
            vec![format!("{:?}", self.transport_protocol)],
            or_any(self.application_protocols.clone()),
            or_any(shown(&self.direct_source_prefix_ranges)),
            vec![format!("{:?}", self.source_type)],
            or_any(shown(&self.source_prefix_ranges)),
            or_any(self.source_ports.iter().map(u16::to_string).collect()),
        ];
        levels.iter().fold(vec![Vec::new()], |keys, level| {
            keys.iter()
                .flat_map(|k| {
                    level.iter().map(move |v| {
                        let mut k = k.clone();
                        k.push(v.clone());
                        k
                    })
                })
                .collect()
        })
    }
}

/// Picks among `chains` (each with its match) for `facts`; `None` means the default
/// chain, if any.
pub fn select<'a, T>(
    chains: impl Iterator<Item = (&'a ChainMatch, &'a T)> + Clone,
    facts: &ConnectionFacts,
) -> Option<&'a T> {
    // destination_port
    let by_port = chains
        .clone()
        .any(|(m, _)| m.destination_port == Some(facts.port));
    let level: Vec<(&ChainMatch, &T)> = chains
        .filter(|(m, _)| {
            if by_port {
                m.destination_port == Some(facts.port)
            } else {
                m.destination_port.is_none()
            }
        })
        .collect();
    // prefix_ranges: the longest prefix holding the local address, then none named.
    let local = facts.local_ip();
    let level = narrow(level, |m| ip_rank(&m.prefix_ranges, local));
    // server_names: exact, then the longest wildcard, then none named.
    let level = narrow(level, |m| server_name_rank(m, facts.server_name.as_deref()));
    // transport_protocol
    let level = narrow(level, |m| match &m.transport_protocol {
        Some(p) if p == facts.transport_protocol => Some(1),
        Some(_) => None,
        None => Some(0),
    });
    // application_protocols: the client's first protocol a chain names.
    let level = narrow(level, |m| {
        if m.application_protocols.is_empty() {
            return Some(0);
        }
        let n = facts.application_protocols.len();
        facts
            .application_protocols
            .iter()
            .position(|p| m.application_protocols.contains(p))
            .map(|i| n - i)
    });
    let peer = facts.socket_peer.map(|a| a.ip());
    let level = narrow(level, |m| ip_rank(&m.direct_source_prefix_ranges, peer));
    let source = facts.source();
    let level = narrow(level, |m| {
        let local = match (source, local) {
            (Some(s), Some(l)) => s.ip().is_loopback() || s.ip() == l,
            (Some(s), None) => s.ip().is_loopback(),
            (None, _) => false,
        };
        match (m.source_type, local) {
            (SourceType::Any, _) => Some(0),
            (SourceType::Local, true) | (SourceType::External, false) => Some(1),
            _ => None,
        }
    });
    let level = narrow(level, |m| {
        ip_rank(&m.source_prefix_ranges, source.map(|a| a.ip()))
    });
    let level = narrow(level, |m| match source {
        _ if m.source_ports.is_empty() => Some(0),
        Some(s) if m.source_ports.contains(&s.port()) => Some(1),
        _ => None,
    });
    level.first().map(|(_, t)| *t)
}

/// A chain naming no range ranks 0 (Envoy's catch-all `/0`); one naming ranges ranks by
/// its longest prefix holding `ip`, or is no candidate.
fn ip_rank(ranges: &[Cidr], ip: Option<IpAddr>) -> Option<usize> {
    if ranges.is_empty() {
        return Some(0);
    }
    let ip = ip?;
    ranges
        .iter()
        .filter(|c| c.contains(ip))
        .map(|c| usize::from(c.prefix_len()))
        .max()
}

/// Keeps the candidates with the best rank (`None`: not a candidate).
fn narrow<'a, T>(
    level: Vec<(&'a ChainMatch, &'a T)>,
    rank: impl Fn(&ChainMatch) -> Option<usize>,
) -> Vec<(&'a ChainMatch, &'a T)> {
    let best = level.iter().filter_map(|(m, _)| rank(m)).max();
    match best {
        Some(best) => level
            .into_iter()
            .filter(|(m, _)| rank(m) == Some(best))
            .collect(),
        None => Vec::new(),
    }
}

/// An exact name ranks above any wildcard, a longer wildcard above a shorter one, and
/// any named match above a chain naming none (rank 0).
fn server_name_rank(m: &ChainMatch, sni: Option<&str>) -> Option<usize> {
    if m.server_names.is_empty() {
        return Some(0);
    }
    let sni = sni?;
    m.server_names
        .iter()
        .filter_map(|name| {
            if name == sni {
                Some(usize::MAX)
            } else if let Some(suffix) = name.strip_prefix('*') {
                // `*.example.com` covers any name ending in `.example.com`.
                (sni.len() > suffix.len() && sni.ends_with(suffix)).then_some(suffix.len())
            } else {
                None
            }
        })
        .max()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn m(names: &[&str], tp: Option<&str>, alpn: &[&str]) -> ChainMatch {
        ChainMatch {
            server_names: names.iter().map(|s| s.to_string()).collect(),
            transport_protocol: tp.map(String::from),
            application_protocols: alpn.iter().map(|s| s.to_string()).collect(),
            ..ChainMatch::default()
        }
    }

    fn facts(sni: Option<&str>, tp: &'static str, alpn: &[&str]) -> ConnectionFacts {
        ConnectionFacts {
            restored_local: None,
            restored_remote: None,
            port: 443,
            server_name: sni.map(String::from),
            transport_protocol: tp,
            application_protocols: alpn.iter().map(|s| s.to_string()).collect(),
            socket_local: None,
            socket_peer: None,
        }
    }

    #[test]
    fn the_most_specific_name_wins_and_nothing_backtracks() {
        let chains = [
            (m(&["api.example.com"], None, &[]), "exact"),
            (m(&["*.example.com"], None, &[]), "wild"),
            (m(&["*.a.example.com"], None, &[]), "longer wild"),
            (m(&[], Some("tls"), &[]), "any tls"),
            (m(&[], Some("raw_buffer"), &[]), "plain"),
        ];
        let pick = |f: ConnectionFacts| select(chains.iter().map(|(m, t)| (m, t)), &f).copied();
        assert_eq!(
            pick(facts(Some("api.example.com"), "tls", &[])),
            Some("exact")
        );
        assert_eq!(pick(facts(Some("x.example.com"), "tls", &[])), Some("wild"));
        assert_eq!(
            pick(facts(Some("b.a.example.com"), "tls", &[])),
            Some("longer wild")
        );
        assert_eq!(pick(facts(Some("other.org"), "tls", &[])), Some("any tls"));
        assert_eq!(pick(facts(None, "raw_buffer", &[])), Some("plain"));
        // A name matched, then its chain's transport did not: no chain (Envoy's tree).
        let strict = [
            (m(&["a.org"], Some("raw_buffer"), &[]), 1),
            (m(&[], None, &[]), 2),
        ];
        let f = facts(Some("a.org"), "tls", &[]);
        assert_eq!(select(strict.iter().map(|(m, t)| (m, t)), &f), None);
    }

    #[test]
    fn alpn_prefers_the_clients_first_protocol() {
        let chains = [(m(&[], None, &["http/1.1"]), 1), (m(&[], None, &["h2"]), 2)];
        let f = facts(None, "tls", &["h2", "http/1.1"]);
        assert_eq!(select(chains.iter().map(|(m, t)| (m, t)), &f), Some(&2));
        let f = facts(None, "tls", &["acme"]);
        assert_eq!(select(chains.iter().map(|(m, t)| (m, t)), &f), None);
    }
}
