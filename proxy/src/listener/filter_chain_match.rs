//! `filter_chain_match`: which of a listener's filter chains takes a connection.
//!
//! Envoy's order, one criterion at a time, the most specific match at each level
//! narrowing the candidates for the next (no backtracking: a connection that matched a
//! specific value at one level and nothing at a later one gets no chain, not a less
//! specific one): `destination_port`, then `server_names` (exact, then the longest
//! wildcard suffix, then chains naming none), then `transport_protocol`, then
//! `application_protocols`. Nothing left: the `default_filter_chain`.

use courier_proto::envoy::config::listener::v3 as pb;

use crate::config::ConfigError;

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
}

impl ChainMatch {
    /// Compiles a `filter_chain_match` (fields Courier cannot act on are refused).
    pub fn compile(m: Option<&pb::FilterChainMatch>) -> Result<ChainMatch, ConfigError> {
        let Some(m) = m else {
            return Ok(ChainMatch::default());
        };
        let unsupported = [
            ("prefix_ranges", !m.prefix_ranges.is_empty()),
            ("source_prefix_ranges", !m.source_prefix_ranges.is_empty()),
            (
                "direct_source_prefix_ranges",
                !m.direct_source_prefix_ranges.is_empty(),
            ),
            ("source_ports", !m.source_ports.is_empty()),
            ("address_suffix", !m.address_suffix.is_empty()),
            ("source_type", m.source_type != 0),
        ];
        if let Some((field, _)) = unsupported.iter().find(|(_, set)| *set) {
            return Err(ConfigError::unsupported(format!(
                "filter_chain_match.{field}"
            )));
        }
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
        })
    }

    /// Whether the chain needs the TLS inspector's facts to be told apart.
    pub fn needs_inspection(&self) -> bool {
        !self.server_names.is_empty()
            || self.transport_protocol.is_some()
            || !self.application_protocols.is_empty()
    }

    /// The keys two chains may not share (Envoy: "multiple filter chains with the same
    /// matching rules are defined").
    pub fn keys(&self) -> Vec<(Option<u16>, String, Option<String>, String)> {
        let names: Vec<String> = if self.server_names.is_empty() {
            vec![String::new()]
        } else {
            self.server_names.clone()
        };
        let alpns: Vec<String> = if self.application_protocols.is_empty() {
            vec![String::new()]
        } else {
            self.application_protocols.clone()
        };
        let mut out = Vec::new();
        for n in &names {
            for a in &alpns {
                out.push((
                    self.destination_port,
                    n.clone(),
                    self.transport_protocol.clone(),
                    a.clone(),
                ));
            }
        }
        out
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
    level.first().map(|(_, t)| *t)
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
            destination_port: None,
            server_names: names.iter().map(|s| s.to_string()).collect(),
            transport_protocol: tp.map(String::from),
            application_protocols: alpn.iter().map(|s| s.to_string()).collect(),
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
