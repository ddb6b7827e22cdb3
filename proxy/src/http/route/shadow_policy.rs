//! A route's `request_mirror_policies`, compiled: which cluster a request is mirrored to,
//! how often, and the copy's authority. The router's [`crate::http::router::shadow`] sends
//! the copies.

use courier_proto::envoy::config::route::v3::route_action::RequestMirrorPolicy;
use http::header::{HeaderMap, HeaderName};

use crate::config::{ConfigError, Fraction};
use crate::layered_runtime::RuntimeFraction;

/// One compiled `RequestMirrorPolicy`.
#[derive(Debug)]
pub struct ShadowPolicy {
    target: Target,
    /// `runtime_fraction.default_value` (all requests when unset).
    fraction: RuntimeFraction,
    /// `!disable_shadow_host_suffix_append`.
    append_suffix: bool,
}

#[derive(Debug)]
enum Target {
    /// `cluster`.
    Cluster(String),
    /// `cluster_header`: the cluster named by the request's field (none: no mirror).
    Header(HeaderName),
}

/// Compiles a list of `request_mirror_policies` at `path`.
pub fn compile(list: &[RequestMirrorPolicy], path: &str) -> Result<Vec<ShadowPolicy>, ConfigError> {
    list.iter()
        .enumerate()
        .map(|(i, p)| {
            let path = format!("{path}[{i}]");
            if !p.request_headers_mutations.is_empty() {
                return Err(ConfigError::unsupported(format!(
                    "{path}.request_headers_mutations"
                )));
            }
            if !p.host_rewrite_literal.is_empty() {
                return Err(ConfigError::unsupported(format!(
                    "{path}.host_rewrite_literal"
                )));
            }
            let target = match (p.cluster.is_empty(), p.cluster_header.is_empty()) {
                (false, true) => Target::Cluster(p.cluster.clone()),
                (true, false) => Target::Header(
                    HeaderName::from_bytes(p.cluster_header.as_bytes()).map_err(|_| {
                        ConfigError::new(
                            format!("{path}.cluster_header"),
                            format!("invalid header name {:?}", p.cluster_header),
                        )
                    })?,
                ),
                _ => {
                    return Err(ConfigError::new(
                        path,
                        "exactly one of cluster and cluster_header must be specified",
                    ))
                }
            };
            let fraction = match &p.runtime_fraction {
                Some(f) => RuntimeFraction::compile(f, &format!("{path}.runtime_fraction"))?,
                None => RuntimeFraction::fixed(Fraction::ALL),
            };
            Ok(ShadowPolicy {
                target,
                fraction,
                append_suffix: !p.disable_shadow_host_suffix_append,
            })
        })
        .collect()
}

impl ShadowPolicy {
    /// The cluster this request is mirrored to, if it is (sampled by `runtime_fraction`).
    pub fn cluster<'a>(&'a self, headers: &'a HeaderMap) -> Option<&'a str> {
        if !self.fraction.sample() {
            return None;
        }
        match &self.target {
            Target::Cluster(c) => Some(c),
            Target::Header(h) => headers
                .get(h)
                .and_then(|v| v.to_str().ok())
                .filter(|c| !c.is_empty()),
        }
    }

    /// The copy's authority: `host-shadow[:port]`, as Envoy's, unless the suffix is off.
    pub fn authority(&self, authority: &str) -> String {
        if !self.append_suffix {
            return authority.to_string();
        }
        let split = if authority.starts_with('[') {
            authority
                .find("]:")
                .map(|i| (&authority[..=i], &authority[i + 2..]))
        } else {
            authority.rsplit_once(':')
        };
        match split {
            Some((host, port)) => format!("{host}-shadow:{port}"),
            None => format!("{authority}-shadow"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policy(append_suffix: bool) -> ShadowPolicy {
        ShadowPolicy {
            target: Target::Cluster("c".into()),
            fraction: RuntimeFraction::fixed(Fraction::ALL),
            append_suffix,
        }
    }

    #[test]
    fn shadow_authority_as_envoy() {
        let p = policy(true);
        assert_eq!(p.authority("example.com"), "example.com-shadow");
        assert_eq!(p.authority("example.com:8080"), "example.com-shadow:8080");
        assert_eq!(p.authority("127.0.0.1:80"), "127.0.0.1-shadow:80");
        assert_eq!(p.authority("[::1]:80"), "[::1]-shadow:80");
        assert_eq!(p.authority("[::1]"), "[::1]-shadow");
        assert_eq!(policy(false).authority("a:1"), "a:1");
    }
}
