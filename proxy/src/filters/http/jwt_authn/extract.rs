//! Where a requirement finds its tokens (Envoy's `Extractor`): its providers'
//! `from_headers` (a header, after `value_prefix`), `from_params` (a query parameter),
//! `from_cookies`, or by default `Authorization: Bearer <token>` and `access_token`.
//! Tokens are found headers first (by name and prefix), then parameters, then cookies
//! (each by name), as Envoy's ordered maps hold them.

use std::collections::BTreeMap;

use http::{HeaderMap, HeaderName};

use super::provider::Provider;

/// The issuers a location serves (an empty issuer: any).
#[derive(Debug, Default, Clone)]
pub struct Issuers {
    any: bool,
    listed: Vec<String>,
}

impl Issuers {
    fn add(&mut self, issuer: &str) {
        match issuer {
            "" => self.any = true,
            i if !self.listed.iter().any(|l| l == i) => self.listed.push(i.to_string()),
            _ => {}
        }
    }

    /// Whether a token from here may have issuer `iss`.
    pub fn allows(&self, iss: &str) -> bool {
        self.any || self.listed.iter().any(|l| l == iss)
    }
}

/// Where a token was found: what `forward: false` removes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Place {
    Header(HeaderName),
    Param(String),
    /// Envoy leaves a cookie's token in place.
    Cookie,
}

/// A token found on a request.
pub struct Token<'e> {
    pub value: String,
    pub place: Place,
    pub issuers: &'e Issuers,
}

/// A compiled extractor.
#[derive(Default)]
pub struct Extractor {
    /// By header name and prefix (Envoy's map key is their concatenation).
    headers: BTreeMap<String, (HeaderName, String, Issuers)>,
    params: BTreeMap<String, Issuers>,
    cookies: BTreeMap<String, Issuers>,
    /// `forward_payload_header`s and `claim_to_headers`' headers, removed before a
    /// verification so that only the filter sets them.
    sanitize: Vec<HeaderName>,
}

/// Base64url's characters and `.`: what a header's token is made of after its prefix.
fn token_char(b: u8) -> bool {
    b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.')
}

impl Extractor {
    /// The extractor of `providers`' locations.
    pub fn new<'p>(providers: impl IntoIterator<Item = &'p Provider>) -> Extractor {
        let mut x = Extractor::default();
        for p in providers {
            for (name, prefix) in &p.from_headers {
                x.add_header(name.clone(), prefix, &p.issuer);
            }
            for param in &p.from_params {
                x.params.entry(param.clone()).or_default().add(&p.issuer);
            }
            for cookie in &p.from_cookies {
                x.cookies.entry(cookie.clone()).or_default().add(&p.issuer);
            }
            if p.from_headers.is_empty() && p.from_params.is_empty() && p.from_cookies.is_empty() {
                x.add_header(http::header::AUTHORIZATION, "Bearer ", &p.issuer);
                x.params
                    .entry("access_token".to_string())
                    .or_default()
                    .add(&p.issuer);
            }
            x.sanitize.extend(p.forward_payload_header.iter().cloned());
            x.sanitize
                .extend(p.claim_to_headers.iter().map(|c| c.header.clone()));
        }
        x
    }

    fn add_header(&mut self, name: HeaderName, prefix: &str, issuer: &str) {
        let key = format!("{}{prefix}", name.as_str());
        self.headers
            .entry(key)
            .or_insert_with(|| (name, prefix.to_string(), Issuers::default()))
            .2
            .add(issuer);
    }

    /// Removes the headers only the filter may set.
    pub fn sanitize(&self, headers: &mut HeaderMap) {
        for h in &self.sanitize {
            headers.remove(h);
        }
    }

    /// The tokens on a request (`path_and_query` for its parameters).
    pub fn extract(&self, headers: &HeaderMap, path_and_query: &str) -> Vec<Token<'_>> {
        let mut tokens = Vec::new();
        for (name, prefix, issuers) in self.headers.values() {
            for v in headers.get_all(name) {
                let Ok(v) = std::str::from_utf8(v.as_bytes()) else {
                    continue;
                };
                let value = if prefix.is_empty() {
                    v
                } else {
                    // After the prefix (anywhere in the value), from the first token
                    // character to the end; no such character: the whole value.
                    let Some(at) = v.find(prefix.as_str()) else {
                        continue;
                    };
                    let rest = &v[at + prefix.len()..];
                    match rest.bytes().position(token_char) {
                        Some(start) => &rest[start..],
                        None => v,
                    }
                };
                tokens.push(Token {
                    value: value.to_string(),
                    place: Place::Header(name.clone()),
                    issuers,
                });
            }
        }
        if !self.params.is_empty() {
            let query = query_of(path_and_query);
            for (name, issuers) in &self.params {
                if let Some(v) = first_param(query, name) {
                    tokens.push(Token {
                        value: v,
                        place: Place::Param(name.clone()),
                        issuers,
                    });
                }
            }
        }
        if !self.cookies.is_empty() {
            for (name, issuers) in &self.cookies {
                if let Some(v) = cookie(headers, name) {
                    tokens.push(Token {
                        value: v,
                        place: Place::Cookie,
                        issuers,
                    });
                }
            }
        }
        tokens
    }
}

/// A path's query (without its fragment).
fn query_of(path_and_query: &str) -> &str {
    let q = path_and_query.split_once('?').map_or("", |(_, q)| q);
    q.split('#').next().unwrap_or("")
}

/// `%XX` decoded (invalid escapes kept), as Envoy decodes query parameters.
fn percent_decode(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        let hex = |c: u8| (c as char).to_digit(16);
        if b[i] == b'%' && i + 2 < b.len() {
            if let (Some(h), Some(l)) = (hex(b[i + 1]), hex(b[i + 2])) {
                out.push((h * 16 + l) as u8);
                i += 3;
                continue;
            }
        }
        out.push(b[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// The first value of query parameter `name` (both decoded).
fn first_param(query: &str, name: &str) -> Option<String> {
    query.split('&').filter(|kv| !kv.is_empty()).find_map(|kv| {
        let (k, v) = kv.split_once('=').unwrap_or((kv, ""));
        (percent_decode(k) == name).then(|| percent_decode(v))
    })
}

/// `path_and_query` without parameter `name` (Envoy rewrites `:path` so when a
/// parameter's token is not forwarded): the remaining parameters, sorted by name as
/// Envoy's map of them is.
pub fn without_param(path_and_query: &str, name: &str) -> String {
    let (path, _) = path_and_query
        .split_once('?')
        .unwrap_or((path_and_query, ""));
    let mut kept: Vec<(String, &str)> = query_of(path_and_query)
        .split('&')
        .filter(|kv| !kv.is_empty())
        .filter_map(|kv| {
            let (k, v) = kv.split_once('=').unwrap_or((kv, ""));
            let k = percent_decode(k);
            (k != name).then_some((k, v))
        })
        .collect();
    kept.sort_by(|a, b| a.0.cmp(&b.0));
    if kept.is_empty() {
        return path.to_string();
    }
    let q: Vec<String> = kept.iter().map(|(k, v)| format!("{k}={v}")).collect();
    format!("{path}?{}", q.join("&"))
}

/// Cookie `name`'s value (the first one, unquoted), as Envoy's `parseCookies` reads them.
fn cookie(headers: &HeaderMap, name: &str) -> Option<String> {
    let v = crate::protocol::cookie::value(headers, name.as_bytes())?;
    std::str::from_utf8(v).ok().map(str::to_string)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn params_and_cookies() {
        assert_eq!(first_param("a=1&t=x%2Ey&t=2", "t").as_deref(), Some("x.y"));
        assert_eq!(first_param("a=1", "t"), None);
        assert_eq!(
            without_param("/p?z=1&access_token=T&a=2", "access_token"),
            "/p?a=2&z=1"
        );
        assert_eq!(without_param("/p?access_token=T", "access_token"), "/p");
        let mut h = HeaderMap::new();
        h.append(
            http::header::COOKIE,
            "a=1; jwt=\"tok\"".parse().expect("value"),
        );
        assert_eq!(cookie(&h, "jwt").as_deref(), Some("tok"));
        assert_eq!(cookie(&h, "b"), None);
        assert_eq!(percent_decode("%"), "%");
        assert_eq!(percent_decode("a%2"), "a%2");
    }
}
