//! A route's `hash_policy`: the hash a hashing load balancer (`RING_HASH`) picks a host
//! with, from the request's headers, a cookie, the client's address or a query parameter,
//! computed as Envoy computes it (xxHash64; several policies combined by rotating the hash
//! so far and XOR-ing the next; a `terminal` policy that produced a hash ends the list).
//! A cookie policy with a `ttl` makes the cookie when the request has none, and the response
//! sets it, so that the client's next requests hash the same.

use std::net::SocketAddr;
use std::time::Duration;

use courier_proto::envoy::config::route::v3::route_action::{hash_policy, HashPolicy};
use http::header::{HeaderMap, HeaderName, HeaderValue};
use regex::Regex;
use xxhash_rust::xxh64::xxh64;

use crate::config::{self, ConfigError};

/// One compiled hash policy.
struct Method {
    kind: Kind,
    /// `terminal`.
    terminal: bool,
}

enum Kind {
    /// `header`: the field's values, sorted, hashed in turn; `regex_rewrite` first.
    Header {
        name: HeaderName,
        rewrite: Option<(Regex, String)>,
    },
    /// `cookie`.
    Cookie {
        name: String,
        /// `ttl`: the cookie is made when absent.
        ttl: Option<Duration>,
        path: String,
        attributes: Vec<(String, String)>,
    },
    /// `connection_properties.source_ip`.
    SourceIp,
    /// `query_parameter`: the parameter's first value.
    QueryParameter(String),
}

/// A route's hash policies, in order.
pub struct HashPolicies {
    methods: Vec<Method>,
}

/// What hashing a request gave.
#[derive(Default)]
pub struct RequestHash {
    /// The hash, when a policy produced one.
    pub hash: Option<u64>,
    /// A `set-cookie` value for the response: the cookie a `ttl` policy made.
    pub set_cookie: Option<HeaderValue>,
}

impl HashPolicies {
    /// Compiles `policies` at `path` (`…route.hash_policy`); `None` when empty.
    pub fn compile(
        policies: &[HashPolicy],
        path: &str,
    ) -> Result<Option<HashPolicies>, ConfigError> {
        use hash_policy::PolicySpecifier as P;
        let mut methods = Vec::with_capacity(policies.len());
        for (i, p) in policies.iter().enumerate() {
            let ppath = format!("{path}[{i}]");
            let kind = match &p.policy_specifier {
                Some(P::Header(h)) => Kind::Header {
                    name: crate::http::route::header_name(
                        &h.header_name,
                        &format!("{ppath}.header.header_name"),
                    )?,
                    rewrite: h
                        .regex_rewrite
                        .as_ref()
                        .map(|r| {
                            crate::http::route::compile_rewrite(
                                r,
                                &format!("{ppath}.header.regex_rewrite"),
                            )
                        })
                        .transpose()?,
                },
                Some(P::Cookie(c)) => {
                    if c.name.is_empty() {
                        return Err(ConfigError::new(
                            format!("{ppath}.cookie.name"),
                            "value length must be at least 1 characters",
                        ));
                    }
                    Kind::Cookie {
                        name: c.name.clone(),
                        ttl: c
                            .ttl
                            .as_ref()
                            .map(|t| config::duration(t, &format!("{ppath}.cookie.ttl")))
                            .transpose()?,
                        path: c.path.clone(),
                        attributes: c
                            .attributes
                            .iter()
                            .map(|a| (a.name.clone(), a.value.clone()))
                            .collect(),
                    }
                }
                // Without `source_ip` the policy hashes nothing, as in Envoy.
                Some(P::ConnectionProperties(c)) if !c.source_ip => continue,
                Some(P::ConnectionProperties(_)) => Kind::SourceIp,
                Some(P::QueryParameter(q)) => {
                    if q.name.is_empty() {
                        return Err(ConfigError::new(
                            format!("{ppath}.query_parameter.name"),
                            "value length must be at least 1 characters",
                        ));
                    }
                    Kind::QueryParameter(q.name.clone())
                }
                // Courier's connections keep no filter state.
                Some(P::FilterState(_)) => {
                    return Err(ConfigError::unsupported(format!("{ppath}.filter_state")))
                }
                None => {
                    return Err(ConfigError::new(
                        format!("{ppath}.policy_specifier"),
                        "value is required",
                    ))
                }
            };
            methods.push(Method {
                kind,
                terminal: p.terminal,
            });
        }
        Ok((!policies.is_empty()).then_some(HashPolicies { methods }))
    }

    /// Hashes a request: its (sanitised) headers, its path with the query, and the
    /// connection's two ends.
    pub fn hash(
        &self,
        headers: &HeaderMap,
        path: &str,
        remote: SocketAddr,
        local: SocketAddr,
    ) -> RequestHash {
        let mut out = RequestHash::default();
        for m in &self.methods {
            let next = match &m.kind {
                Kind::Header { name, rewrite } => header_hash(headers, name, rewrite.as_ref()),
                Kind::Cookie {
                    name,
                    ttl,
                    path,
                    attributes,
                } => match cookie_value(headers, name) {
                    Some(v) => Some(xxh64(v.as_bytes(), 0)),
                    None => ttl.map(|ttl| {
                        // Envoy's made value: the hash of the connection's two addresses.
                        let value =
                            format!("{:016x}", xxh64(format!("{remote}{local}").as_bytes(), 0));
                        out.set_cookie = set_cookie(name, &value, path, ttl, attributes);
                        xxh64(value.as_bytes(), 0)
                    }),
                },
                Kind::SourceIp => Some(ip_hash(remote.ip())),
                Kind::QueryParameter(name) => {
                    query_value(path, name).map(|v| xxh64(v.as_bytes(), 0))
                }
            };
            if let Some(n) = next {
                // Rotating what came before keeps two equal policies from cancelling out.
                out.hash = Some(out.hash.map_or(0, |h| h.rotate_left(1)) ^ n);
            }
            if m.terminal && out.hash.is_some() {
                break;
            }
        }
        out
    }
}

/// A header policy's hash: every value of the field (rewritten), sorted so that their order
/// does not matter, each hashed with the hash so far as its seed.
fn header_hash(
    headers: &HeaderMap,
    name: &HeaderName,
    rewrite: Option<&(Regex, String)>,
) -> Option<u64> {
    let mut values: Vec<std::borrow::Cow<'_, [u8]>> = headers
        .get_all(name)
        .iter()
        .map(|v| match rewrite {
            Some((re, sub)) => std::borrow::Cow::Owned(
                re.replace_all(&String::from_utf8_lossy(v.as_bytes()), sub.as_str())
                    .into_owned()
                    .into_bytes(),
            ),
            None => std::borrow::Cow::Borrowed(v.as_bytes()),
        })
        .collect();
    if values.is_empty() {
        return None;
    }
    values.sort();
    Some(values.iter().fold(0, |seed, v| xxh64(v, seed)))
}

/// The xxHash64 of an address's text, written on the stack (it runs on every request of a
/// route hashing by source address).
fn ip_hash(ip: std::net::IpAddr) -> u64 {
    use std::io::Write;
    let mut buf = [0u8; 64];
    let mut cursor = std::io::Cursor::new(&mut buf[..]);
    // An address's text is at most 45 bytes: the write cannot fail.
    let _ = write!(cursor, "{ip}");
    let n = cursor.position() as usize;
    xxh64(&buf[..n], 0)
}

/// The value of cookie `name` in the request's `cookie` fields, without surrounding quotes
/// (an empty value counts as none, as Envoy's).
fn cookie_value<'h>(headers: &'h HeaderMap, name: &str) -> Option<&'h str> {
    crate::protocol::cookie::value(headers, name.as_bytes())
        .and_then(|v| std::str::from_utf8(v).ok())
        .filter(|v| !v.is_empty())
}

/// The first value of query parameter `name` in `path` (as sent, not decoded).
fn query_value<'p>(path: &'p str, name: &str) -> Option<&'p str> {
    let query = path.split_once('?')?.1;
    let query = query.split_once('#').map_or(query, |(q, _)| q);
    query
        .split('&')
        .map(|p| p.split_once('=').unwrap_or((p, "")))
        .find(|(k, _)| *k == name)
        .map(|(_, v)| v)
}

/// The `set-cookie` value for a made cookie, in Envoy's form.
fn set_cookie(
    name: &str,
    value: &str,
    path: &str,
    ttl: Duration,
    attributes: &[(String, String)],
) -> Option<HeaderValue> {
    let mut c = format!("{name}=\"{value}\"");
    if !ttl.is_zero() {
        c.push_str(&format!("; Max-Age={}", ttl.as_secs()));
    }
    if !path.is_empty() {
        c.push_str(&format!("; Path={path}"));
    }
    for (k, v) in attributes {
        if v.is_empty() {
            c.push_str(&format!("; {k}"));
        } else {
            c.push_str(&format!("; {k}={v}"));
        }
    }
    c.push_str("; HttpOnly");
    HeaderValue::from_str(&c).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cookies_and_query_parameters_are_read_as_envoy_reads_them() {
        let mut h = HeaderMap::new();
        h.append(
            http::header::COOKIE,
            HeaderValue::from_static("a=1; s=\"xyz\""),
        );
        h.append(http::header::COOKIE, HeaderValue::from_static("e=; t=2"));
        assert_eq!(cookie_value(&h, "s"), Some("xyz"));
        assert_eq!(cookie_value(&h, "t"), Some("2"));
        assert_eq!(cookie_value(&h, "e"), None);
        assert_eq!(cookie_value(&h, "missing"), None);
        assert_eq!(query_value("/p?a=1&b=2&a=3", "a"), Some("1"));
        assert_eq!(query_value("/p?flag&b=2", "flag"), Some(""));
        assert_eq!(query_value("/p", "a"), None);
        let ip: std::net::IpAddr = "2001:db8::1".parse().expect("ip");
        assert_eq!(ip_hash(ip), xxh64(b"2001:db8::1", 0));
    }

    #[test]
    fn header_values_hash_in_any_order() {
        let name = HeaderName::from_static("x-k");
        let mut a = HeaderMap::new();
        a.append(&name, HeaderValue::from_static("one"));
        a.append(&name, HeaderValue::from_static("two"));
        let mut b = HeaderMap::new();
        b.append(&name, HeaderValue::from_static("two"));
        b.append(&name, HeaderValue::from_static("one"));
        assert_eq!(header_hash(&a, &name, None), header_hash(&b, &name, None));
        assert_eq!(
            header_hash(&a, &name, None),
            Some(xxh64(b"two", xxh64(b"one", 0)))
        );
        assert_eq!(header_hash(&HeaderMap::new(), &name, None), None);
    }
}
