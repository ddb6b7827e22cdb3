//! The xDS matcher API (`xds.type.matcher.v3.Matcher`), as Envoy evaluates it where all
//! the data is known at once (RBAC on a request or a connection, custom_response on a
//! response): a tree of matchers
//! whose leaves are actions.
//!
//! - `matcher_list`: the first field matcher whose predicate holds gives its `on_match`;
//!   a nested matcher that finds nothing lets the list go on. Predicates are a single
//!   input tested by a string matcher (`value_match`) or an IP range matcher
//!   (`custom_match` with `envoy.matching.input_matchers.ip`), and `or`/`and`/`not` of
//!   them; an input with no value never matches.
//! - `matcher_tree`: an input looked up in an `exact_match_map`, or in a
//!   `prefix_match_map` from the longest matching prefix to the shortest.
//! - `on_no_match` when nothing matched.
//!
//! - `matcher_tree` with `custom_match` `xds.type.matcher.v3.IPMatcher`: the address
//!   input's range matchers, the most specific first (an `exclusive` one only when no
//!   more specific one was tried).
//!
//! Inputs are in [`inputs`]. Refused by path: `keep_matching`, other custom matchers,
//! and string matchers' `custom`.

pub mod inputs;

use courier_proto::envoy::config::core::v3::CidrRange;
use courier_proto::xds::core::v3::TypedExtensionConfig;
use courier_proto::xds::r#type::matcher::v3 as pb;
use pb::matcher::matcher_list::predicate::{single_predicate, MatchType};

use crate::config::ConfigError;
use crate::http::conn_manager::internal_address::Cidr;
use crate::http::route::StrMatch;
pub use inputs::{Context, Input, MatchingData};

/// A compiled matcher whose leaves are actions `A`.
pub struct Matcher<A> {
    root: Node<A>,
}

enum Node<A> {
    List {
        matchers: Vec<(Predicate, OnMatch<A>)>,
        on_no_match: Option<Box<OnMatch<A>>>,
    },
    Tree {
        input: Input,
        map: Map<A>,
        on_no_match: Option<Box<OnMatch<A>>>,
    },
}

enum Map<A> {
    Exact(std::collections::HashMap<String, OnMatch<A>>),
    /// Longest prefix first.
    Prefix(Vec<(String, OnMatch<A>)>),
    /// `xds.type.matcher.v3.IPMatcher`'s range matchers, in declaration order.
    Ip(Vec<IpRange<A>>),
}

/// An `IPMatcher.IPRangeMatcher`.
struct IpRange<A> {
    ranges: Vec<Cidr>,
    on_match: OnMatch<A>,
    exclusive: bool,
}

enum OnMatch<A> {
    Action(A),
    Matcher(Box<Node<A>>),
}

enum Predicate {
    Single(Input, Test),
    Or(Vec<Predicate>),
    And(Vec<Predicate>),
    Not(Box<Predicate>),
}

enum Test {
    Value(StrMatch),
    Ip(Vec<Cidr>),
}

/// How an action is compiled (`TypedExtensionConfig` at a path).
pub type CompileAction<'a, A> = &'a dyn Fn(&TypedExtensionConfig, &str) -> Result<A, ConfigError>;

impl<A> Matcher<A> {
    /// Compiles `m` at `path`, its inputs for `context`, its actions by `action`.
    pub fn compile(
        m: &pb::Matcher,
        context: Context,
        action: CompileAction<'_, A>,
        path: &str,
    ) -> Result<Matcher<A>, ConfigError> {
        Ok(Matcher {
            root: node(m, context, action, path)?,
        })
    }

    /// The action the data leads to, if any.
    pub fn evaluate(&self, data: &MatchingData<'_>) -> Option<&A> {
        self.root.evaluate(data)
    }
}

fn node<A>(
    m: &pb::Matcher,
    context: Context,
    action: CompileAction<'_, A>,
    path: &str,
) -> Result<Node<A>, ConfigError> {
    let on_no_match = m
        .on_no_match
        .as_ref()
        .map(|o| on_match(o, context, action, &format!("{path}.on_no_match")).map(Box::new))
        .transpose()?;
    use pb::matcher::MatcherType;
    match &m.matcher_type {
        Some(MatcherType::MatcherList(l)) => {
            let at = format!("{path}.matcher_list.matchers");
            if l.matchers.is_empty() {
                return Err(ConfigError::new(
                    at,
                    "value must contain at least 1 item(s)",
                ));
            }
            let matchers = l
                .matchers
                .iter()
                .enumerate()
                .map(|(i, f)| {
                    let at = format!("{at}[{i}]");
                    let p = f.predicate.as_ref().ok_or_else(|| {
                        ConfigError::new(format!("{at}.predicate"), "value is required")
                    })?;
                    let o = f.on_match.as_ref().ok_or_else(|| {
                        ConfigError::new(format!("{at}.on_match"), "value is required")
                    })?;
                    Ok((
                        predicate(p, context, &format!("{at}.predicate"))?,
                        on_match(o, context, action, &format!("{at}.on_match"))?,
                    ))
                })
                .collect::<Result<_, ConfigError>>()?;
            Ok(Node::List {
                matchers,
                on_no_match,
            })
        }
        Some(MatcherType::MatcherTree(t)) => {
            use pb::matcher::matcher_tree::TreeType;
            let at = format!("{path}.matcher_tree");
            let input = Input::compile(t.input.as_ref(), context, &format!("{at}.input"))?;
            let entries = |m: &pb::matcher::matcher_tree::MatchMap, field: &str| {
                let mut keys: Vec<&String> = m.map.keys().collect();
                keys.sort();
                keys.into_iter()
                    .map(|k| {
                        let o =
                            on_match(&m.map[k], context, action, &format!("{at}.{field}[{k}]"))?;
                        Ok((k.clone(), o))
                    })
                    .collect::<Result<Vec<_>, ConfigError>>()
            };
            let map = match &t.tree_type {
                Some(TreeType::ExactMatchMap(m)) => {
                    Map::Exact(entries(m, "exact_match_map")?.into_iter().collect())
                }
                Some(TreeType::PrefixMatchMap(m)) => {
                    let mut e = entries(m, "prefix_match_map")?;
                    e.sort_by_key(|(k, _)| std::cmp::Reverse(k.len()));
                    Map::Prefix(e)
                }
                Some(TreeType::CustomMatch(c))
                    if c.typed_config.as_ref().is_some_and(|a| {
                        courier_proto::type_url::message_name(&a.type_url) == IP_MATCHER
                    }) =>
                {
                    Map::Ip(ip_ranges(
                        c,
                        context,
                        action,
                        &format!("{at}.custom_match"),
                    )?)
                }
                Some(TreeType::CustomMatch(c)) => {
                    return Err(ConfigError::unsupported(format!(
                        "{at}.custom_match ({})",
                        c.typed_config
                            .as_ref()
                            .map_or("", |a| courier_proto::type_url::message_name(&a.type_url))
                    )))
                }
                None => return Err(ConfigError::new(at, "tree_type is required")),
            };
            Ok(Node::Tree {
                input,
                map,
                on_no_match,
            })
        }
        None => Err(ConfigError::new(path, "matcher_type is required")),
    }
}

fn on_match<A>(
    o: &pb::matcher::OnMatch,
    context: Context,
    action: CompileAction<'_, A>,
    path: &str,
) -> Result<OnMatch<A>, ConfigError> {
    use pb::matcher::on_match::OnMatch as O;
    if o.keep_matching {
        return Err(ConfigError::unsupported(format!("{path}.keep_matching")));
    }
    match &o.on_match {
        Some(O::Action(a)) => Ok(OnMatch::Action(action(a, &format!("{path}.action"))?)),
        Some(O::Matcher(m)) => Ok(OnMatch::Matcher(Box::new(node(
            m,
            context,
            action,
            &format!("{path}.matcher"),
        )?))),
        None => Err(ConfigError::new(path, "on_match is required")),
    }
}

fn predicate(
    p: &pb::matcher::matcher_list::Predicate,
    context: Context,
    path: &str,
) -> Result<Predicate, ConfigError> {
    let list = |l: &pb::matcher::matcher_list::predicate::PredicateList, field: &str| {
        let at = format!("{path}.{field}.predicate");
        if l.predicate.len() < 2 {
            return Err(ConfigError::new(
                &at,
                "value must contain at least 2 item(s)",
            ));
        }
        l.predicate
            .iter()
            .enumerate()
            .map(|(i, p)| predicate(p, context, &format!("{at}[{i}]")))
            .collect::<Result<Vec<_>, _>>()
    };
    Ok(match &p.match_type {
        Some(MatchType::SinglePredicate(s)) => {
            let at = format!("{path}.single_predicate");
            let input = Input::compile(s.input.as_ref(), context, &format!("{at}.input"))?;
            let test = match &s.matcher {
                Some(single_predicate::Matcher::ValueMatch(m)) => {
                    Test::Value(string_matcher(m, &format!("{at}.value_match"))?)
                }
                Some(single_predicate::Matcher::CustomMatch(c)) => {
                    Test::Ip(ip_matcher(c, &format!("{at}.custom_match"))?)
                }
                None => return Err(ConfigError::new(at, "matcher is required")),
            };
            Predicate::Single(input, test)
        }
        Some(MatchType::OrMatcher(l)) => Predicate::Or(list(l, "or_matcher")?),
        Some(MatchType::AndMatcher(l)) => Predicate::And(list(l, "and_matcher")?),
        Some(MatchType::NotMatcher(n)) => Predicate::Not(Box::new(predicate(
            n,
            context,
            &format!("{path}.not_matcher"),
        )?)),
        None => return Err(ConfigError::new(path, "match_type is required")),
    })
}

/// An xDS `StringMatcher`, compiled as Envoy's own (the same fields).
fn string_matcher(m: &pb::StringMatcher, path: &str) -> Result<StrMatch, ConfigError> {
    use courier_proto::envoy::r#type::matcher::v3 as envoy;
    use envoy::string_matcher::MatchPattern as E;
    use pb::string_matcher::MatchPattern as X;
    let pattern = match &m.match_pattern {
        Some(X::Exact(s)) => E::Exact(s.clone()),
        Some(X::Prefix(s)) => E::Prefix(s.clone()),
        Some(X::Suffix(s)) => E::Suffix(s.clone()),
        Some(X::Contains(s)) => E::Contains(s.clone()),
        // xDS's regex matcher must name its engine (Envoy's validation).
        Some(X::SafeRegex(r)) if r.engine_type.is_none() => {
            return Err(ConfigError::new(
                format!("{path}.safe_regex.engine_type"),
                "value is required",
            ))
        }
        Some(X::SafeRegex(r)) => E::SafeRegex(envoy::RegexMatcher {
            regex: r.regex.clone(),
            ..Default::default()
        }),
        Some(X::Custom(_)) => return Err(ConfigError::unsupported(format!("{path}.custom"))),
        None => {
            return Err(ConfigError::new(
                path,
                "match_pattern is required (exact, prefix, suffix, contains or safe_regex)",
            ))
        }
    };
    StrMatch::compile(
        &envoy::StringMatcher {
            match_pattern: Some(pattern),
            ignore_case: m.ignore_case,
        },
        path,
    )
}

const IP_MATCHER: &str = "xds.type.matcher.v3.IPMatcher";

/// An `IPMatcher`'s range matchers.
fn ip_ranges<A>(
    c: &TypedExtensionConfig,
    context: Context,
    action: CompileAction<'_, A>,
    path: &str,
) -> Result<Vec<IpRange<A>>, ConfigError> {
    let Some(any) = c.typed_config.as_ref() else {
        return Err(ConfigError::new(
            format!("{path}.typed_config"),
            "value is required",
        ));
    };
    let m: courier_proto::ip_matcher::IpMatcher = courier_proto::unpack_any(any)
        .map_err(|e| ConfigError::new(format!("{path}.typed_config"), e.to_string()))?;
    m.range_matchers
        .iter()
        .enumerate()
        .map(|(i, r)| {
            let at = format!("{path}.typed_config.range_matchers[{i}]");
            if r.ranges.is_empty() {
                return Err(ConfigError::new(
                    format!("{at}.ranges"),
                    "value must contain at least 1 item(s)",
                ));
            }
            let ranges = r
                .ranges
                .iter()
                .enumerate()
                .map(|(j, x)| {
                    let range = CidrRange {
                        address_prefix: x.address_prefix.clone(),
                        prefix_len: x.prefix_len,
                    };
                    Cidr::compile(&range, &format!("{at}.ranges[{j}]"))
                })
                .collect::<Result<Vec<_>, _>>()?;
            let o = r
                .on_match
                .as_ref()
                .ok_or_else(|| ConfigError::new(format!("{at}.on_match"), "value is required"))?;
            Ok(IpRange {
                ranges,
                on_match: on_match(o, context, action, &format!("{at}.on_match"))?,
                exclusive: r.exclusive,
            })
        })
        .collect()
}

/// An `IPMatcher` on the address `value`: the range matchers holding it, the longest
/// prefix first (declaration order among equals), each tried until one gives an action;
/// an `exclusive` one only if it comes first (Envoy's trie matcher).
fn evaluate_ip<'m, A>(
    ranges: &'m [IpRange<A>],
    value: &str,
    data: &MatchingData<'_>,
) -> Option<&'m A> {
    let ip = value.parse::<std::net::IpAddr>().ok()?;
    let mut found: Vec<(u8, usize)> = ranges
        .iter()
        .enumerate()
        .filter_map(|(i, r)| {
            r.ranges
                .iter()
                .filter(|c| c.contains(ip))
                .map(|c| c.prefix_len())
                .max()
                .map(|len| (len, i))
        })
        .collect();
    found.sort_by(|a, b| b.0.cmp(&a.0).then(a.1.cmp(&b.1)));
    for (n, (_, i)) in found.into_iter().enumerate() {
        let r = &ranges[i];
        if n > 0 && r.exclusive {
            continue;
        }
        if let Some(a) = r.on_match.evaluate(data) {
            return Some(a);
        }
    }
    None
}

/// `envoy.matching.input_matchers.ip` (`Ip`): the input, an address, in one of the ranges.
fn ip_matcher(c: &TypedExtensionConfig, path: &str) -> Result<Vec<Cidr>, ConfigError> {
    const IP: &str = "envoy.extensions.matching.input_matchers.ip.v3.Ip";
    let any = c
        .typed_config
        .as_ref()
        .ok_or_else(|| ConfigError::new(format!("{path}.typed_config"), "value is required"))?;
    let ty = courier_proto::type_url::message_name(&any.type_url);
    if ty != IP {
        return Err(ConfigError::unsupported(format!("{path} ({ty})")));
    }
    let ip: courier_proto::envoy::extensions::matching::input_matchers::ip::v3::Ip =
        courier_proto::unpack_any(any).map_err(|e| ConfigError::new(path, e.to_string()))?;
    if ip.cidr_ranges.is_empty() {
        return Err(ConfigError::new(
            format!("{path}.typed_config.cidr_ranges"),
            "value must contain at least 1 item(s)",
        ));
    }
    ip.cidr_ranges
        .iter()
        .enumerate()
        .map(|(i, r): (usize, &CidrRange)| {
            Cidr::compile(r, &format!("{path}.typed_config.cidr_ranges[{i}]"))
        })
        .collect()
}

impl<A> Node<A> {
    fn evaluate(&self, data: &MatchingData<'_>) -> Option<&A> {
        match self {
            Node::List {
                matchers,
                on_no_match,
            } => {
                for (p, o) in matchers {
                    if p.holds(data) {
                        if let Some(a) = o.evaluate(data) {
                            return Some(a);
                        }
                    }
                }
                on_no_match.as_ref().and_then(|o| o.evaluate(data))
            }
            Node::Tree {
                input,
                map,
                on_no_match,
            } => {
                let found = data.value(input).and_then(|v| match map {
                    Map::Exact(m) => m.get(v.as_ref()).and_then(|o| o.evaluate(data)),
                    Map::Prefix(entries) => entries
                        .iter()
                        .filter(|(k, _)| v.starts_with(k.as_str()))
                        .find_map(|(_, o)| o.evaluate(data)),
                    Map::Ip(ranges) => evaluate_ip(ranges, &v, data),
                });
                found.or_else(|| on_no_match.as_ref().and_then(|o| o.evaluate(data)))
            }
        }
    }
}

impl<A> OnMatch<A> {
    fn evaluate(&self, data: &MatchingData<'_>) -> Option<&A> {
        match self {
            OnMatch::Action(a) => Some(a),
            OnMatch::Matcher(m) => m.evaluate(data),
        }
    }
}

impl Predicate {
    fn holds(&self, data: &MatchingData<'_>) -> bool {
        match self {
            Predicate::Single(input, test) => data.value(input).is_some_and(|v| match test {
                Test::Value(m) => m.matches(&v),
                Test::Ip(ranges) => v
                    .parse::<std::net::IpAddr>()
                    .is_ok_and(|ip| ranges.iter().any(|r| r.contains(ip))),
            }),
            Predicate::Or(all) => all.iter().any(|p| p.holds(data)),
            Predicate::And(all) => all.iter().all(|p| p.holds(data)),
            Predicate::Not(p) => !p.holds(data),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn data(source: &str) -> MatchingData<'static> {
        MatchingData {
            source: source.parse().expect("address"),
            direct_source: source.parse().expect("address"),
            destination: "10.0.0.1:8080".parse().expect("address"),
            server_name: None,
            tls: None,
            transport_protocol: None,
            application_protocols: &[],
            request_headers: None,
            pseudo: None,
            response: None,
        }
    }

    fn compile(yaml: &str) -> Result<Matcher<String>, ConfigError> {
        let m: pb::Matcher = courier_proto::from_yaml(yaml).expect("matcher");
        Matcher::compile(&m, Context::Network, &|a, _| Ok(a.name.clone()), "m")
    }

    const IP_INPUT: &str = "{ name: i, typed_config: { \"@type\": type.googleapis.com/envoy.extensions.matching.common_inputs.network.v3.SourceIPInput } }";
    const PORT_INPUT: &str = "{ name: i, typed_config: { \"@type\": type.googleapis.com/envoy.extensions.matching.common_inputs.network.v3.DestinationPortInput } }";

    #[test]
    fn lists_take_the_first_predicate_that_holds_and_nested_misses_go_on() {
        let m = compile(&format!(
            "{{ matcher_list: {{ matchers: [
              {{ predicate: {{ single_predicate: {{ input: {PORT_INPUT}, value_match: {{ exact: \"8080\" }} }} }},
                on_match: {{ matcher: {{ matcher_list: {{ matchers: [
                  {{ predicate: {{ single_predicate: {{ input: {IP_INPUT}, value_match: {{ prefix: \"192.\" }} }} }}, on_match: {{ action: {{ name: nested }} }} }} ] }} }} }} }},
              {{ predicate: {{ single_predicate: {{ input: {IP_INPUT}, custom_match: {{ name: ip, typed_config: {{ \"@type\": type.googleapis.com/envoy.extensions.matching.input_matchers.ip.v3.Ip, cidr_ranges: [{{ address_prefix: 10.0.0.0, prefix_len: 8 }}], stat_prefix: s }} }} }} }},
                on_match: {{ action: {{ name: ten }} }} }} ] }},
              on_no_match: {{ action: {{ name: none }} }} }}"
        ))
        .expect("valid");
        let got = |ip: &str| m.evaluate(&data(ip)).cloned();
        assert_eq!(got("192.168.0.1:1").as_deref(), Some("nested"));
        assert_eq!(got("10.1.2.3:1").as_deref(), Some("ten"));
        assert_eq!(got("172.16.0.1:1").as_deref(), Some("none"));
    }

    #[test]
    fn trees_look_the_input_up() {
        let m = compile(&format!(
            "{{ matcher_tree: {{ input: {IP_INPUT}, prefix_match_map: {{ map: {{ \"10.\": {{ action: {{ name: short }} }}, \"10.1.\": {{ action: {{ name: long }} }} }} }} }} }}"
        ))
        .expect("valid");
        assert_eq!(
            m.evaluate(&data("10.1.0.1:1")).map(String::as_str),
            Some("long")
        );
        assert_eq!(
            m.evaluate(&data("10.2.0.1:1")).map(String::as_str),
            Some("short")
        );
        assert_eq!(m.evaluate(&data("11.0.0.1:1")), None);
    }

    #[test]
    fn response_inputs_read_the_status_its_class_and_headers() {
        let m: pb::Matcher = courier_proto::from_yaml(
            "{ matcher_tree: { input: { name: c, typed_config: { \"@type\": type.googleapis.com/envoy.type.matcher.v3.HttpResponseStatusCodeClassMatchInput } }, exact_match_map: { map: { \"4xx\": { action: { name: four } } } } }, on_no_match: { action: { name: other } } }",
        )
        .expect("matcher");
        let m = Matcher::compile(&m, Context::HttpResponse, &|a, _| Ok(a.name.clone()), "m")
            .expect("valid");
        let headers = http::HeaderMap::new();
        let got = |status: u16| {
            let mut d = data("10.0.0.2:1");
            d.response = Some((
                http::StatusCode::from_u16(status).expect("status"),
                &headers,
            ));
            m.evaluate(&d).cloned()
        };
        assert_eq!(got(404).as_deref(), Some("four"));
        assert_eq!(got(499).as_deref(), Some("four"));
        assert_eq!(got(500).as_deref(), Some("other"));
        let status = Input::ResponseStatus;
        let mut d = data("10.0.0.2:1");
        assert_eq!(d.value(&status), None);
        let mut h = http::HeaderMap::new();
        h.append("x-a", http::HeaderValue::from_static("1"));
        h.append("x-a", http::HeaderValue::from_static("2"));
        d.response = Some((http::StatusCode::NOT_FOUND, &h));
        assert_eq!(d.value(&status).as_deref(), Some("404"));
        assert_eq!(
            d.value(&Input::ResponseHeader("x-a".into())).as_deref(),
            Some("1,2")
        );
    }

    #[test]
    fn what_cannot_be_evaluated_is_refused_by_path() {
        let err = |yaml: &str| compile(yaml).err().map(|e| e.path);
        assert_eq!(
            err(&format!("{{ matcher_list: {{ matchers: [{{ predicate: {{ single_predicate: {{ input: {IP_INPUT}, value_match: {{ exact: a }} }} }}, on_match: {{ keep_matching: true, action: {{ name: a }} }} }}] }} }}")).as_deref(),
            Some("m.matcher_list.matchers[0].on_match.keep_matching")
        );
        let header = "{ name: h, typed_config: { \"@type\": type.googleapis.com/envoy.type.matcher.v3.HttpRequestHeaderMatchInput, header_name: x } }";
        assert!(compile(&format!("{{ matcher_list: {{ matchers: [{{ predicate: {{ single_predicate: {{ input: {header}, value_match: {{ exact: a }} }} }}, on_match: {{ action: {{ name: a }} }} }}] }} }}"))
            .err()
            .is_some_and(|e| e.message.contains("Unsupported data input type")));
    }
}
