//! RBAC policies compiled once (`envoy.config.rbac.v3.RBAC`) and matched against a
//! request without allocating.
//!
//! Permissions and principals share one compiled form, [`Rule`]: both are trees of
//! `and`/`or`/`not` over leaf tests of the request and its connection, and Envoy
//! evaluates them alike (`matchers.cc`). `requested_server_name` and `authenticated` read
//! the connection's TLS handshake.

// `source_ip` and `metadata` are deprecated fields, still accepted or refused by name.
#![allow(deprecated)]

use std::net::{IpAddr, SocketAddr};

use courier_proto::envoy::config::rbac::v3 as pb;
use courier_proto::envoy::r#type::matcher::v3::{path_matcher, PathMatcher};
use http::HeaderMap;

use crate::config::ConfigError;
use crate::http::conn_manager::internal_address::Cidr;
use crate::http::conn_manager::xff::xff_address;
use crate::http::route::{compile_header_matcher, HeaderMatcher, Pseudo, StrMatch};
use crate::transport_socket::tls::TlsConnectionInfo;

/// How the connection manager finds the client's address (Envoy's "downstream remote
/// address") behind `x-forwarded-for`: its `use_remote_address`, `xff_num_trusted_hops`
/// and whether it appended the peer to `x-forwarded-for` before the filters ran.
#[derive(Debug, Clone, Copy, Default)]
pub struct XffTrust {
    /// `use_remote_address`.
    pub use_remote_address: bool,
    /// `xff_num_trusted_hops`.
    pub trusted_hops: u32,
    /// The peer was appended to `x-forwarded-for` (`use_remote_address` without
    /// `skip_xff_append`).
    pub appended: bool,
    /// With `original_ip_detection_extensions`: the client's address as they settled it
    /// (the peer when they found none).
    pub detected: Option<IpAddr>,
}

/// What a rule looks at: the request as the filter sees it, and its connection.
pub struct RequestView<'a> {
    /// The request's headers (after the connection manager's own mutations, as Envoy's
    /// filters see them).
    pub headers: &'a HeaderMap,
    /// Its pseudo-headers; `:path` with its query.
    pub pseudo: Pseudo<'a>,
    /// The connection's local address (the listener's side).
    pub local: SocketAddr,
    /// The connection's peer.
    pub peer: IpAddr,
    /// The peer's port.
    pub peer_port: u16,
    /// What the connection's TLS handshake settled (`None`: plaintext).
    pub tls: Option<&'a TlsConnectionInfo>,
    /// The SNI the listener's TLS inspector found.
    pub requested_server_name: Option<&'a str>,
    /// How the client's address is found behind `x-forwarded-for`.
    pub xff: XffTrust,
}

impl RequestView<'_> {
    /// What the request offers the xDS matcher API's inputs.
    pub fn matching_data(&self) -> crate::matching::MatchingData<'_> {
        let remote = self.remote();
        crate::matching::MatchingData {
            // The client behind `x-forwarded-for` has no port.
            source: SocketAddr::new(
                remote,
                if remote == self.peer {
                    self.peer_port
                } else {
                    0
                },
            ),
            direct_source: SocketAddr::new(self.peer, self.peer_port),
            destination: self.local,
            server_name: self.requested_server_name,
            tls: self.tls,
            transport_protocol: None,
            application_protocols: &[],
            request_headers: Some(self.headers),
            pseudo: Some(self.pseudo),
            response: None,
        }
    }

    /// The client's address as Envoy's connection manager works it out: with
    /// `use_remote_address`, the peer, or with `xff_num_trusted_hops` the address that
    /// many hops back in `x-forwarded-for` as it came in; without it, the address
    /// `xff_num_trusted_hops` entries from `x-forwarded-for`'s end; the peer when
    /// `x-forwarded-for` has no valid address there.
    pub fn remote(&self) -> IpAddr {
        let skip = match self.xff {
            XffTrust {
                detected: Some(found),
                ..
            } => return found,
            XffTrust {
                use_remote_address: true,
                trusted_hops: 0,
                ..
            } => return self.peer,
            // The peer this hop appended is the header's last entry now: one more to skip.
            XffTrust {
                use_remote_address: true,
                trusted_hops,
                appended,
                ..
            } => (trusted_hops - 1).saturating_add(u32::from(appended)),
            XffTrust { trusted_hops, .. } => trusted_hops,
        };
        xff_address(self.headers, skip).map_or(self.peer, |(ip, _)| ip)
    }

    /// `:path` without its query and fragment.
    fn url_path(&self) -> Option<&str> {
        self.pseudo
            .path
            .map(|p| p.find(['?', '#']).map_or(p, |end| &p[..end]))
    }
}

/// A compiled permission or principal.
#[derive(Clone)]
pub enum Rule {
    /// Settled at load (`any`).
    Always(bool),
    /// `and_rules` / `and_ids`.
    And(Box<[Rule]>),
    /// `or_rules` / `or_ids`, and a policy's lists.
    Or(Box<[Rule]>),
    /// `not_rule` / `not_id`.
    Not(Box<Rule>),
    /// `header`.
    Header(HeaderMatcher),
    /// `url_path`: the path without its query and fragment.
    UrlPath(StrMatch),
    /// `destination_ip`: the connection's local address.
    DestinationIp(Cidr),
    /// `destination_port`.
    DestinationPort(u16),
    /// `destination_port_range`: `[start, end)`.
    DestinationPorts(u32, u32),
    /// `direct_remote_ip` and `source_ip`: the peer.
    DirectRemoteIp(Cidr),
    /// `remote_ip`: the client's address behind `x-forwarded-for`.
    RemoteIp(Cidr),
    /// `requested_server_name`: the SNI the TLS inspector found (empty without one).
    RequestedServerName(StrMatch),
    /// `authenticated`: a TLS connection; with a matcher, its peer certificate's URI SANs,
    /// else its DNS SANs, else its subject must match (Envoy's `AuthenticatedMatcher`).
    Authenticated(Option<StrMatch>),
}

impl Rule {
    /// Whether the request matches.
    pub fn matches(&self, r: &RequestView<'_>) -> bool {
        match self {
            Rule::Always(b) => *b,
            Rule::And(rules) => rules.iter().all(|x| x.matches(r)),
            Rule::Or(rules) => rules.iter().any(|x| x.matches(r)),
            Rule::Not(rule) => !rule.matches(r),
            Rule::Header(h) => h.matches(r.headers, &r.pseudo),
            // Envoy: a request without `:path` matches no path rule.
            Rule::UrlPath(m) => r.url_path().is_some_and(|p| m.matches(p)),
            Rule::DestinationIp(c) => c.contains(r.local.ip()),
            Rule::DestinationPort(p) => r.local.port() == *p,
            Rule::DestinationPorts(start, end) => {
                (*start..*end).contains(&u32::from(r.local.port()))
            }
            Rule::DirectRemoteIp(c) => c.contains(r.peer),
            Rule::RemoteIp(c) => c.contains(r.remote()),
            Rule::RequestedServerName(m) => m.matches(r.requested_server_name.unwrap_or("")),
            Rule::Authenticated(m) => {
                let Some(tls) = r.tls else { return false };
                let Some(m) = m else { return true };
                let Some(peer) = &tls.peer else {
                    return m.matches("");
                };
                let names = &peer.names;
                if !names.uri_sans.is_empty() {
                    names.uri_sans.iter().any(|u| m.matches(u))
                } else if !names.dns_sans.is_empty() {
                    names.dns_sans.iter().any(|d| m.matches(d))
                } else {
                    m.matches(&names.subject)
                }
            }
        }
    }
}

/// A rule list in a set or policy: at least one item, as Envoy's validation requires.
fn non_empty<T>(items: &[T], path: &str) -> Result<(), ConfigError> {
    if items.is_empty() {
        return Err(ConfigError::new(
            path,
            "value must contain at least 1 item(s)",
        ));
    }
    Ok(())
}

fn url_path(m: &PathMatcher, path: &str) -> Result<Rule, ConfigError> {
    match &m.rule {
        Some(path_matcher::Rule::Path(s)) => Ok(Rule::UrlPath(StrMatch::compile(
            s,
            &format!("{path}.path"),
        )?)),
        None => Err(ConfigError::new(
            format!("{path}.rule"),
            "value is required",
        )),
    }
}

fn any(value: bool, path: &str) -> Result<Rule, ConfigError> {
    if !value {
        return Err(ConfigError::new(
            format!("{path}.any"),
            "value must equal true",
        ));
    }
    Ok(Rule::Always(true))
}

fn cidr(
    c: &courier_proto::envoy::config::core::v3::CidrRange,
    path: &str,
) -> Result<Cidr, ConfigError> {
    Cidr::compile(c, path)
}

/// Compiles a `Permission` at `path`; what Courier cannot evaluate is refused by name.
pub fn permission(p: &pb::Permission, path: &str) -> Result<Rule, ConfigError> {
    use pb::permission::Rule as R;
    let set = |rules: &[pb::Permission], field: &str| -> Result<Box<[Rule]>, ConfigError> {
        let at = format!("{path}.{field}.rules");
        non_empty(rules, &at)?;
        rules
            .iter()
            .enumerate()
            .map(|(i, r)| permission(r, &format!("{at}[{i}]")))
            .collect()
    };
    Ok(match &p.rule {
        Some(R::AndRules(s)) => Rule::And(set(&s.rules, "and_rules")?),
        Some(R::OrRules(s)) => Rule::Or(set(&s.rules, "or_rules")?),
        Some(R::Any(b)) => any(*b, path)?,
        Some(R::Header(h)) => Rule::Header(compile_header_matcher(h, &format!("{path}.header"))?),
        Some(R::UrlPath(m)) => url_path(m, &format!("{path}.url_path"))?,
        Some(R::DestinationIp(c)) => {
            Rule::DestinationIp(cidr(c, &format!("{path}.destination_ip"))?)
        }
        Some(R::DestinationPort(port)) => match u16::try_from(*port) {
            Ok(port) => Rule::DestinationPort(port),
            Err(_) => {
                return Err(ConfigError::new(
                    format!("{path}.destination_port"),
                    "value must be less than or equal to 65535",
                ))
            }
        },
        Some(R::DestinationPortRange(r)) => {
            let at = format!("{path}.destination_port_range");
            for (field, v) in [("start", r.start), ("end", r.end)] {
                if !(0..=65536).contains(&v) {
                    return Err(ConfigError::new(
                        format!("{at}.{field}"),
                        format!("range {field} {v} is out of bounds"),
                    ));
                }
            }
            if r.start >= r.end {
                return Err(ConfigError::new(
                    at,
                    format!(
                        "range start {} cannot be greater or equal than range end {}",
                        r.start, r.end
                    ),
                ));
            }
            // Both within 0..=65536: the conversions cannot fail.
            Rule::DestinationPorts(r.start.unsigned_abs(), r.end.unsigned_abs())
        }
        Some(R::NotRule(r)) => Rule::Not(Box::new(permission(r, &format!("{path}.not_rule"))?)),
        Some(R::RequestedServerName(m)) => Rule::RequestedServerName(StrMatch::compile(
            m,
            &format!("{path}.requested_server_name"),
        )?),
        Some(R::Metadata(_)) => return Err(ConfigError::unsupported(format!("{path}.metadata"))),
        Some(R::Matcher(_)) => return Err(ConfigError::unsupported(format!("{path}.matcher"))),
        Some(R::UriTemplate(_)) => {
            return Err(ConfigError::unsupported(format!("{path}.uri_template")))
        }
        Some(R::SourcedMetadata(_)) => {
            return Err(ConfigError::unsupported(format!("{path}.sourced_metadata")))
        }
        None => return Err(ConfigError::new(format!("{path}.rule"), "is required")),
    })
}

/// Compiles a `Principal` at `path`; what Courier cannot evaluate is refused by name.
pub fn principal(p: &pb::Principal, path: &str) -> Result<Rule, ConfigError> {
    use pb::principal::Identifier as I;
    let set = |ids: &[pb::Principal], field: &str| -> Result<Box<[Rule]>, ConfigError> {
        let at = format!("{path}.{field}.ids");
        non_empty(ids, &at)?;
        ids.iter()
            .enumerate()
            .map(|(i, r)| principal(r, &format!("{at}[{i}]")))
            .collect()
    };
    Ok(match &p.identifier {
        Some(I::AndIds(s)) => Rule::And(set(&s.ids, "and_ids")?),
        Some(I::OrIds(s)) => Rule::Or(set(&s.ids, "or_ids")?),
        Some(I::Any(b)) => any(*b, path)?,
        Some(I::Authenticated(a)) => Rule::Authenticated(
            a.principal_name
                .as_ref()
                .map(|m| StrMatch::compile(m, &format!("{path}.authenticated.principal_name")))
                .transpose()?,
        ),
        // Courier reads no PROXY protocol: the connection's remote address is the peer.
        Some(I::SourceIp(c)) => Rule::DirectRemoteIp(cidr(c, &format!("{path}.source_ip"))?),
        Some(I::DirectRemoteIp(c)) => {
            Rule::DirectRemoteIp(cidr(c, &format!("{path}.direct_remote_ip"))?)
        }
        Some(I::RemoteIp(c)) => Rule::RemoteIp(cidr(c, &format!("{path}.remote_ip"))?),
        Some(I::Header(h)) => Rule::Header(compile_header_matcher(h, &format!("{path}.header"))?),
        Some(I::UrlPath(m)) => url_path(m, &format!("{path}.url_path"))?,
        Some(I::NotId(r)) => Rule::Not(Box::new(principal(r, &format!("{path}.not_id"))?)),
        Some(I::Metadata(_)) => return Err(ConfigError::unsupported(format!("{path}.metadata"))),
        Some(I::FilterState(_)) => {
            return Err(ConfigError::unsupported(format!("{path}.filter_state")))
        }
        Some(I::SourcedMetadata(_)) => {
            return Err(ConfigError::unsupported(format!("{path}.sourced_metadata")))
        }
        Some(I::Custom(_)) => return Err(ConfigError::unsupported(format!("{path}.custom"))),
        None => {
            return Err(ConfigError::new(
                format!("{path}.identifier"),
                "is required",
            ))
        }
    })
}

/// A compiled `Policy`: it matches when one of its permissions and one of its principals
/// do.
pub struct Policy {
    /// Its name (the key in `policies`).
    pub name: String,
    permissions: Rule,
    principals: Rule,
}

impl Policy {
    /// Compiles the policy `name` at `path`.
    pub fn compile(name: &str, p: &pb::Policy, path: &str) -> Result<Policy, ConfigError> {
        for (field, set) in [
            ("condition", p.condition.is_some()),
            ("checked_condition", p.checked_condition.is_some()),
            ("cel_config", p.cel_config.is_some()),
        ] {
            if set {
                return Err(ConfigError::unsupported(format!("{path}.{field}")));
            }
        }
        non_empty(&p.permissions, &format!("{path}.permissions"))?;
        non_empty(&p.principals, &format!("{path}.principals"))?;
        let permissions = p
            .permissions
            .iter()
            .enumerate()
            .map(|(i, x)| permission(x, &format!("{path}.permissions[{i}]")))
            .collect::<Result<_, _>>()?;
        let principals = p
            .principals
            .iter()
            .enumerate()
            .map(|(i, x)| principal(x, &format!("{path}.principals[{i}]")))
            .collect::<Result<_, _>>()?;
        Ok(Policy {
            name: name.to_string(),
            permissions: Rule::Or(permissions),
            principals: Rule::Or(principals),
        })
    }

    /// Whether the request matches the policy.
    pub fn matches(&self, r: &RequestView<'_>) -> bool {
        self.permissions.matches(r) && self.principals.matches(r)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::http::conn_manager::headers::test_header_map;
    use http::Method;

    fn view<'a>(headers: &'a HeaderMap, method: &'a Method, path: &'a str) -> RequestView<'a> {
        RequestView {
            headers,
            pseudo: Pseudo::request(method, path, "host", "http"),
            local: "127.0.0.1:8080".parse().expect("address"),
            peer: "192.168.1.1".parse().expect("address"),
            peer_port: 40000,
            tls: None,
            requested_server_name: None,
            xff: XffTrust::default(),
        }
    }

    fn perm(yaml: &str) -> Result<Rule, ConfigError> {
        let p: pb::Permission = courier_proto::from_yaml(yaml).expect("Permission");
        permission(&p, "p")
    }

    fn princ(yaml: &str) -> Result<Rule, ConfigError> {
        let p: pb::Principal = courier_proto::from_yaml(yaml).expect("Principal");
        principal(&p, "p")
    }

    #[test]
    fn permissions_match_the_request_and_its_connection() {
        let h = test_header_map(&[("x-a", "1"), ("x-a", "2")]);
        let get = Method::GET;
        let r = view(&h, &get, "/api/v1?x=/admin#f");
        let yes = |y: &str| perm(y).expect("valid").matches(&r);
        assert!(yes("{ any: true }"));
        assert!(yes("{ url_path: { path: { exact: /api/v1 } } }"));
        assert!(!yes("{ url_path: { path: { suffix: admin } } }"));
        assert!(yes(
            "{ header: { name: ':path', string_match: { suffix: '#f' } } }"
        ));
        assert!(yes(
            "{ header: { name: x-a, string_match: { exact: '1,2' } } }"
        ));
        assert!(yes(
            "{ header: { name: ':method', string_match: { exact: GET } } }"
        ));
        assert!(yes("{ destination_port: 8080 }"));
        assert!(!yes("{ destination_port_range: { start: 1, end: 8080 } }"));
        assert!(yes(
            "{ destination_port_range: { start: 8080, end: 8081 } }"
        ));
        assert!(yes(
            "{ destination_ip: { address_prefix: 127.0.0.0, prefix_len: 8 } }"
        ));
        assert!(yes("{ requested_server_name: { exact: '' } }"));
        assert!(!yes("{ requested_server_name: { prefix: a } }"));
        assert!(yes(
            "{ and_rules: { rules: [{ any: true }, { not_rule: { destination_port: 1 } }] } }"
        ));
        assert!(!yes(
            "{ or_rules: { rules: [{ destination_port: 1 }, { destination_port: 2 }] } }"
        ));
    }

    #[test]
    fn principals_see_the_peer_and_the_client_behind_it() {
        let h = test_header_map(&[("x-forwarded-for", "10.0.0.1, 11.0.0.1,192.168.1.1")]);
        let get = Method::GET;
        let mut r = view(&h, &get, "/");
        let ten = princ("{ remote_ip: { address_prefix: 10.0.0.0, prefix_len: 8 } }").expect("ok");
        let eleven =
            princ("{ remote_ip: { address_prefix: 11.0.0.0, prefix_len: 8 } }").expect("ok");
        let direct = princ("{ direct_remote_ip: { address_prefix: 192.168.0.0, prefix_len: 16 } }")
            .expect("ok");
        assert!(direct.matches(&r));
        assert!(!ten.matches(&r) && !eleven.matches(&r));
        r.xff = XffTrust {
            use_remote_address: false,
            trusted_hops: 1,
            appended: false,
            detected: None,
        };
        assert!(eleven.matches(&r));
        r.xff.trusted_hops = 2;
        assert!(ten.matches(&r));
        r.xff.trusted_hops = 3;
        assert_eq!(r.remote(), r.peer);
        // The last entry is this hop's own, appended after the header came in.
        r.xff = XffTrust {
            use_remote_address: true,
            trusted_hops: 1,
            appended: true,
            detected: None,
        };
        assert!(eleven.matches(&r));
        r.xff.trusted_hops = 0;
        assert_eq!(r.remote(), r.peer);
        // What an original IP detection extension settled wins.
        r.xff.detected = Some("10.9.9.9".parse().expect("ip"));
        assert!(ten.matches(&r));
        let authenticated = princ("{ authenticated: {} }").expect("ok");
        assert!(!authenticated.matches(&r));
        let not = princ("{ not_id: { authenticated: { principal_name: { exact: a } } } }");
        assert!(not.expect("ok").matches(&r));
    }

    #[test]
    fn what_courier_cannot_evaluate_is_refused_by_name() {
        let path = |r: Result<Rule, ConfigError>| r.err().map(|e| e.path);
        assert_eq!(
            path(perm("{ and_rules: { rules: [{ metadata: { filter: f, path: [{ key: k }], value: { present_match: true } } }] } }")).as_deref(),
            Some("p.and_rules.rules[0].metadata")
        );
        assert_eq!(
            path(princ(
                "{ filter_state: { key: k, string_match: { exact: v } } }"
            ))
            .as_deref(),
            Some("p.filter_state")
        );
        assert_eq!(path(perm("{ any: false }")).as_deref(), Some("p.any"));
        assert_eq!(
            path(perm("{ or_rules: { rules: [] } }")).as_deref(),
            Some("p.or_rules.rules")
        );
        assert_eq!(path(perm("{}")).as_deref(), Some("p.rule"));
        assert_eq!(
            path(perm("{ destination_port_range: { start: 10, end: 10 } }")).as_deref(),
            Some("p.destination_port_range")
        );
        assert_eq!(
            path(perm("{ destination_port: 70000 }")).as_deref(),
            Some("p.destination_port")
        );
        assert_eq!(
            path(perm("{ url_path: {} }")).as_deref(),
            Some("p.url_path.rule")
        );
    }
}
