//! Rate limit actions (`rate_limits` of a route action, a virtual host, or a rate limit
//! filter): each entry turns a request into one descriptor (a list of key/value entries)
//! or none, as Envoy 1.40's `router_ratelimit.cc`.
//!
//! An entry's actions run in order; the first that cannot produce its entry (a missing
//! header without `skip_if_absent`, a header match that fails) drops the whole
//! descriptor. A skipped action adds nothing. Filters read the descriptors; the route
//! only compiles and computes them.
//!
//! Refused by path: the `metadata`, `dynamic_metadata`, `extension`,
//! `query_parameter_value_match`, `remote_address_match` and `query_parameters` actions,
//! and an entry's `limit`, `hits_addend`, `apply_on_stream_done` and
//! `x_ratelimit_option` (nothing in Courier reads them).

use std::net::IpAddr;

use courier_proto::envoy::config::route::v3 as pb;
use http::header::HeaderMap;

use super::{
    compile_header_matcher, ClusterSpec, HeaderMatcher, MatchedName, Pseudo, RouteAction,
    VirtualHost,
};
use crate::config::ConfigError;

/// One descriptor entry: a key and its value.
pub type Entry = (String, String);

/// A request's descriptor: its entries in order.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Descriptor {
    /// The entries.
    pub entries: Vec<Entry>,
}

/// What rate limit actions read of a request.
pub struct RequestFacts<'a> {
    /// The request headers.
    pub headers: &'a HeaderMap,
    /// Its pseudo-headers.
    pub pseudo: Pseudo<'a>,
    /// The downstream peer's address.
    pub remote: Option<IpAddr>,
    /// The route's cluster, when it has a single named one.
    pub cluster: Option<&'a str>,
    /// The node's cluster (`node.cluster`).
    pub local_cluster: &'a str,
}

/// One action of an entry.
enum Action {
    SourceCluster,
    DestinationCluster,
    RequestHeaders {
        name: MatchedName,
        key: String,
        skip_if_absent: bool,
    },
    RemoteAddress,
    MaskedRemoteAddress {
        v4: u8,
        v6: u8,
    },
    GenericKey {
        key: String,
        value: String,
    },
    HeaderValueMatch {
        key: String,
        value: String,
        expect_match: bool,
        headers: Vec<HeaderMatcher>,
    },
}

/// What one action did.
enum Produced {
    Entry(Entry),
    Skipped,
    Failed,
}

impl Action {
    fn produce(&self, facts: &RequestFacts<'_>) -> Produced {
        match self {
            Action::SourceCluster => Produced::Entry((
                "source_cluster".to_string(),
                facts.local_cluster.to_string(),
            )),
            Action::DestinationCluster => match facts.cluster {
                Some(c) => Produced::Entry(("destination_cluster".to_string(), c.to_string())),
                None => Produced::Failed,
            },
            Action::RequestHeaders {
                name,
                key,
                skip_if_absent,
            } => match name.first(facts.headers, &facts.pseudo) {
                // As Envoy: the first value of a repeated header.
                Some(v) => Produced::Entry((key.clone(), v.into_owned())),
                None if *skip_if_absent => Produced::Skipped,
                None => Produced::Failed,
            },
            Action::RemoteAddress => match facts.remote {
                Some(ip) => Produced::Entry(("remote_address".to_string(), ip.to_string())),
                None => Produced::Failed,
            },
            Action::MaskedRemoteAddress { v4, v6 } => match facts.remote {
                Some(ip) => {
                    Produced::Entry(("masked_remote_address".to_string(), mask(ip, *v4, *v6)))
                }
                None => Produced::Failed,
            },
            Action::GenericKey { key, value } => Produced::Entry((key.clone(), value.clone())),
            Action::HeaderValueMatch {
                key,
                value,
                expect_match,
                headers,
            } => {
                let all = headers
                    .iter()
                    .all(|h| h.matches(facts.headers, &facts.pseudo));
                if all == *expect_match {
                    Produced::Entry((key.clone(), value.clone()))
                } else {
                    Produced::Failed
                }
            }
        }
    }
}

/// `ip` masked to its prefix, as a CIDR range (`10.1.2.0/24`).
fn mask(ip: IpAddr, v4: u8, v6: u8) -> String {
    match ip {
        IpAddr::V4(a) => {
            let bits = u32::from(a);
            let kept = if v4 == 0 {
                0
            } else {
                bits & (u32::MAX << (32 - u32::from(v4)))
            };
            format!("{}/{v4}", std::net::Ipv4Addr::from(kept))
        }
        IpAddr::V6(a) => {
            let bits = u128::from(a);
            let kept = if v6 == 0 {
                0
            } else {
                bits & (u128::MAX << (128 - u32::from(v6)))
            };
            format!("{}/{v6}", std::net::Ipv6Addr::from(kept))
        }
    }
}

/// One `RateLimit` entry.
struct RateLimitEntry {
    stage: u32,
    /// `disable_key` set: the local rate limit filter skips the entry.
    disabled: bool,
    actions: Vec<Action>,
}

impl RateLimitEntry {
    fn populate(&self, facts: &RequestFacts<'_>, out: &mut Vec<Descriptor>) {
        let mut d = Descriptor::default();
        for a in &self.actions {
            match a.produce(facts) {
                Produced::Entry(e) => d.entries.push(e),
                Produced::Skipped => {}
                Produced::Failed => return,
            }
        }
        out.push(d);
    }
}

/// Compiled `rate_limits`.
pub struct RateLimits {
    entries: Vec<RateLimitEntry>,
}

/// Where a `rate_limits` list is configured: Envoy checks a filter's own more strictly.
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum Level {
    /// A route action's or a virtual host's.
    Route,
    /// A rate limit filter's own (`LocalRateLimit.rate_limits`).
    Filter,
}

impl RateLimits {
    /// Compiles `list` at `path`; `None` when it is empty.
    pub fn compile(
        list: &[pb::RateLimit],
        path: &str,
        level: Level,
    ) -> Result<Option<Box<RateLimits>>, ConfigError> {
        if list.is_empty() {
            return Ok(None);
        }
        let entries = list
            .iter()
            .enumerate()
            .map(|(i, r)| compile_entry(r, &format!("{path}[{i}]"), level))
            .collect::<Result<_, _>>()?;
        Ok(Some(Box::new(RateLimits { entries })))
    }

    /// The descriptors of the entries at `stage` without a `disable_key`, appended to
    /// `out` (a filter's own list: all of them).
    pub fn populate(&self, stage: u32, facts: &RequestFacts<'_>, out: &mut Vec<Descriptor>) {
        for e in &self.entries {
            if e.stage == stage && !e.disabled {
                e.populate(facts, out);
            }
        }
    }
}

fn compile_entry(
    r: &pb::RateLimit,
    path: &str,
    level: Level,
) -> Result<RateLimitEntry, ConfigError> {
    if level == Level::Filter && (r.stage.is_some() || !r.disable_key.is_empty()) {
        return Err(ConfigError::new(
            path,
            "'stage' field and 'disable_key' field are not supported",
        ));
    }
    for (field, set) in [
        ("limit", r.limit.is_some()),
        ("hits_addend", r.hits_addend.is_some()),
        ("apply_on_stream_done", r.apply_on_stream_done),
        ("x_ratelimit_option", r.x_ratelimit_option != 0),
    ] {
        if set {
            return Err(ConfigError::unsupported(format!("{path}.{field}")));
        }
    }
    let stage = r.stage.as_ref().map_or(0, |s| s.value);
    if stage > 10 {
        return Err(ConfigError::new(
            format!("{path}.stage"),
            "value must be less than or equal to 10",
        ));
    }
    if r.actions.is_empty() {
        return Err(ConfigError::new(
            format!("{path}.actions"),
            "value must contain at least 1 item(s)",
        ));
    }
    let actions = r
        .actions
        .iter()
        .enumerate()
        .map(|(i, a)| compile_action(a, &format!("{path}.actions[{i}]")))
        .collect::<Result<_, _>>()?;
    Ok(RateLimitEntry {
        stage,
        disabled: !r.disable_key.is_empty(),
        actions,
    })
}

fn required(value: &str, path: String) -> Result<String, ConfigError> {
    if value.is_empty() {
        return Err(ConfigError::new(
            path,
            "value length must be at least 1 characters",
        ));
    }
    Ok(value.to_string())
}

fn compile_action(a: &pb::rate_limit::Action, path: &str) -> Result<Action, ConfigError> {
    use pb::rate_limit::action::ActionSpecifier as S;
    let unsupported = |f: &str| Err(ConfigError::unsupported(format!("{path}.{f}")));
    Ok(match &a.action_specifier {
        None => {
            return Err(ConfigError::new(
                path,
                "value is required (action_specifier)",
            ))
        }
        Some(S::SourceCluster(_)) => Action::SourceCluster,
        Some(S::DestinationCluster(_)) => Action::DestinationCluster,
        Some(S::RequestHeaders(h)) => Action::RequestHeaders {
            // A pseudo-header too (`:path`, `:authority`...), as Envoy's header map has them.
            name: MatchedName::compile(
                &required(
                    &h.header_name,
                    format!("{path}.request_headers.header_name"),
                )?,
                &format!("{path}.request_headers.header_name"),
            )?,
            key: required(
                &h.descriptor_key,
                format!("{path}.request_headers.descriptor_key"),
            )?,
            skip_if_absent: h.skip_if_absent,
        },
        Some(S::RemoteAddress(_)) => Action::RemoteAddress,
        Some(S::MaskedRemoteAddress(m)) => {
            let v4 = m.v4_prefix_mask_len.as_ref().map_or(32, |v| v.value);
            let v6 = m.v6_prefix_mask_len.as_ref().map_or(128, |v| v.value);
            if v4 > 32 {
                return Err(ConfigError::new(
                    format!("{path}.masked_remote_address.v4_prefix_mask_len"),
                    "value must be less than or equal to 32",
                ));
            }
            if v6 > 128 {
                return Err(ConfigError::new(
                    format!("{path}.masked_remote_address.v6_prefix_mask_len"),
                    "value must be less than or equal to 128",
                ));
            }
            Action::MaskedRemoteAddress {
                v4: v4 as u8,
                v6: v6 as u8,
            }
        }
        Some(S::GenericKey(g)) if !g.default_value.is_empty() => {
            return unsupported("generic_key.default_value")
        }
        Some(S::GenericKey(g)) => Action::GenericKey {
            key: if g.descriptor_key.is_empty() {
                "generic_key".to_string()
            } else {
                g.descriptor_key.clone()
            },
            value: required(
                &g.descriptor_value,
                format!("{path}.generic_key.descriptor_value"),
            )?,
        },
        Some(S::HeaderValueMatch(m)) => {
            if !m.default_value.is_empty() {
                return unsupported("header_value_match.default_value");
            }
            if m.headers.is_empty() {
                return Err(ConfigError::new(
                    format!("{path}.header_value_match.headers"),
                    "value must contain at least 1 item(s)",
                ));
            }
            Action::HeaderValueMatch {
                key: if m.descriptor_key.is_empty() {
                    "header_match".to_string()
                } else {
                    m.descriptor_key.clone()
                },
                value: required(
                    &m.descriptor_value,
                    format!("{path}.header_value_match.descriptor_value"),
                )?,
                expect_match: m.expect_match.as_ref().is_none_or(|b| b.value),
                headers: m
                    .headers
                    .iter()
                    .enumerate()
                    .map(|(i, h)| {
                        compile_header_matcher(
                            h,
                            &format!("{path}.header_value_match.headers[{i}]"),
                        )
                    })
                    .collect::<Result<_, _>>()?,
            }
        }
        Some(S::QueryParameters(_)) => return unsupported("query_parameters"),
        Some(S::DynamicMetadata(_)) => return unsupported("dynamic_metadata"),
        Some(S::Metadata(_)) => return unsupported("metadata"),
        Some(S::Extension(_)) => return unsupported("extension"),
        Some(S::QueryParameterValueMatch(_)) => return unsupported("query_parameter_value_match"),
        Some(S::RemoteAddressMatch(_)) => return unsupported("remote_address_match"),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn masks_keep_the_prefix() {
        let ip: IpAddr = "10.1.2.3".parse().expect("ip");
        assert_eq!(mask(ip, 24, 128), "10.1.2.0/24");
        assert_eq!(mask(ip, 0, 128), "0.0.0.0/0");
        assert_eq!(mask(ip, 32, 128), "10.1.2.3/32");
        let ip6: IpAddr = "2001:db8::1".parse().expect("ip");
        assert_eq!(mask(ip6, 32, 64), "2001:db8::/64");
    }
}

/// How a rate limit filter takes the route's virtual host's `rate_limits`
/// (`vh_rate_limits`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum VhRateLimits {
    /// `OVERRIDE`: only when the route has none.
    Override,
    /// `INCLUDE`: after the route's.
    Include,
    /// `IGNORE`.
    Ignore,
}

impl VhRateLimits {
    /// The proto enum's value (`OVERRIDE` for unknown ones, as its default).
    pub fn of(v: i32) -> VhRateLimits {
        match v {
            1 => VhRateLimits::Include,
            2 => VhRateLimits::Ignore,
            _ => VhRateLimits::Override,
        }
    }
}

/// What the request offers the descriptors' actions besides its headers.
pub struct RateLimitView<'a> {
    /// The virtual host and route action that took the request (none for a direct
    /// response or a redirect, as Envoy's route entry).
    pub route: Option<(&'a VirtualHost, &'a RouteAction)>,
    /// The request's pseudo-headers.
    pub pseudo: Pseudo<'a>,
    /// The downstream peer.
    pub remote: Option<IpAddr>,
    /// `node.cluster`.
    pub local_cluster: &'a str,
}

/// Where a rate limit filter takes a request's descriptors from.
pub struct DescriptorSource<'a> {
    /// The filter's own `rate_limits`, which replace the route's.
    pub own: Option<&'a RateLimits>,
    /// The filter's `stage`.
    pub stage: u32,
    /// How the virtual host's are taken.
    pub vh_rate_limits: VhRateLimits,
}

impl DescriptorSource<'_> {
    /// The request's descriptors: from the filter's own `rate_limits`, else from the
    /// route's (at `stage`) and its virtual host's as `vh_rate_limits` and the route's
    /// `include_vh_rate_limits` say.
    pub fn descriptors(&self, headers: &HeaderMap, view: &RateLimitView<'_>) -> Vec<Descriptor> {
        let mut out = Vec::new();
        let cluster = view.route.and_then(|(_, a)| match &a.cluster {
            ClusterSpec::Single(name) => Some(name.as_str()),
            ClusterSpec::Header(h) => headers.get(h).and_then(|v| v.to_str().ok()),
            ClusterSpec::Weighted { .. } => None,
        });
        let facts = RequestFacts {
            headers,
            pseudo: view.pseudo,
            remote: view.remote,
            cluster,
            local_cluster: view.local_cluster,
        };
        if let Some(own) = self.own {
            own.populate(0, &facts, &mut out);
            return out;
        }
        let Some((vh, action)) = view.route else {
            return out;
        };
        if let Some(r) = &action.rate_limits {
            r.populate(self.stage, &facts, &mut out);
        }
        let mode = match action.include_vh_rate_limits {
            true => VhRateLimits::Include,
            false => self.vh_rate_limits,
        };
        let with_vh = match mode {
            VhRateLimits::Ignore => false,
            VhRateLimits::Include => true,
            VhRateLimits::Override => action.rate_limits.is_none(),
        };
        if let (true, Some(r)) = (with_vh, &vh.rate_limits) {
            r.populate(self.stage, &facts, &mut out);
        }
        out
    }
}
