//! Where an API key is read from (`KeySource`: a field, a query parameter, a cookie) and
//! how `hide_credentials` takes it away, as Envoy 1.40 does both.
//!
//! - A field: its first value, without a leading `Bearer `.
//! - A query parameter: the first value of the first parameter with that name, names and
//!   values percent-decoded (`%XX` only; `+` stays, a broken escape stays as written).
//! - A cookie: the first `name=value` of any `cookie` field (pairs split at `;`, leading
//!   blanks dropped, trailing ones kept), a value's surrounding double quotes dropped.
//!
//! An empty value counts as none: the next source is asked.
//!
//! Hiding takes every source's credential away, whichever source gave the key: the
//! fields are removed; the query is rebuilt from its decoded parameters without the
//! named ones, sorted by name (values in their order), `name=value` joined with `&`, and
//! dropped with its `?` when nothing is left; `cookie` fields are rebuilt as one, the
//! named cookies left out, the rest joined with `; `, removed when nothing is left.

use std::borrow::Cow;

use http::header::{HeaderMap, HeaderName, HeaderValue, COOKIE};

/// One `KeySource`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Source {
    Header(HeaderName),
    Query(String),
    Cookie(String),
}

impl Source {
    /// This source's key in a request, if it has a non-empty one.
    pub fn key<'a>(&self, headers: &'a HeaderMap, path: &'a str) -> Option<Cow<'a, [u8]>> {
        let key: Cow<'a, [u8]> = match self {
            Source::Header(name) => {
                let v = headers.get(name)?.as_bytes();
                Cow::Borrowed(v.strip_prefix(b"Bearer ").unwrap_or(v))
            }
            Source::Query(name) => query_params(path)
                .find(|(k, _)| k.as_ref() == name.as_bytes())
                .map(|(_, v)| v)?,
            Source::Cookie(name) => Cow::Borrowed(cookie(headers, name.as_bytes())?),
        };
        (!key.is_empty()).then_some(key)
    }
}

/// A query parameter's name and value, decoded.
pub type Param<'a> = (Cow<'a, [u8]>, Cow<'a, [u8]>);

/// Envoy's `parseAndDecodeQueryString`: the query's parameters in order, names and values
/// percent-decoded (a parameter without `=` has an empty value; an empty one between two
/// `&` counts, with an empty name).
pub fn query_params(path: &str) -> impl Iterator<Item = Param<'_>> {
    let query = path.split_once('?').map(|(_, q)| q);
    query
        .filter(|q| !q.is_empty())
        .into_iter()
        .flat_map(|q| q.split('&'))
        .map(|param| {
            let (k, v) = param.split_once('=').unwrap_or((param, ""));
            (percent_decode(k.as_bytes()), percent_decode(v.as_bytes()))
        })
}

/// Envoy's `PercentEncoding::decode`: `%XX` decoded, anything else as written.
fn percent_decode(s: &[u8]) -> Cow<'_, [u8]> {
    if !s.contains(&b'%') {
        return Cow::Borrowed(s);
    }
    let hex = |b: u8| (b as char).to_digit(16);
    let mut out = Vec::with_capacity(s.len());
    let mut i = 0;
    while i < s.len() {
        if s[i] == b'%' && i + 2 < s.len() {
            if let (Some(h), Some(l)) = (hex(s[i + 1]), hex(s[i + 2])) {
                out.push((h * 16 + l) as u8);
                i += 3;
                continue;
            }
        }
        out.push(s[i]);
        i += 1;
    }
    Cow::Owned(out)
}

/// Envoy's `parseCookieValue`: the first cookie named `name`, unquoted.
pub fn cookie<'a>(headers: &'a HeaderMap, name: &[u8]) -> Option<&'a [u8]> {
    crate::protocol::cookie::value(headers, name)
}

/// Takes every source's credential out of a request: its new path if the query changed
/// (see the module's doc).
pub fn hide(sources: &[Source], headers: &mut HeaderMap, path: &str) -> Option<String> {
    let mut queries: Vec<&[u8]> = Vec::new();
    let mut cookies: Vec<&[u8]> = Vec::new();
    for s in sources {
        match s {
            Source::Header(h) => {
                headers.remove(h);
            }
            Source::Query(q) => queries.push(q.as_bytes()),
            Source::Cookie(c) => cookies.push(c.as_bytes()),
        }
    }
    if !cookies.is_empty() && headers.contains_key(COOKIE) {
        let kept: Vec<u8> = {
            let mut kept = Vec::new();
            for p in headers
                .get_all(COOKIE)
                .iter()
                .flat_map(|v| v.as_bytes().split(|&b| b == b';'))
                .map(|p| p.trim_ascii_start())
                .filter(|p| !p.is_empty())
            {
                let name = p.split(|&b| b == b'=').next().unwrap_or(p);
                if p.contains(&b'=') && cookies.contains(&name) {
                    continue;
                }
                if !kept.is_empty() {
                    kept.extend_from_slice(b"; ");
                }
                kept.extend_from_slice(p);
            }
            kept
        };
        headers.remove(COOKIE);
        if let Ok(v) = HeaderValue::from_bytes(&kept) {
            if !kept.is_empty() {
                headers.insert(COOKIE, v);
            }
        }
    }
    if queries.is_empty() || !path.contains('?') {
        return None;
    }
    let mut params: Vec<Param<'_>> = query_params(path)
        .filter(|(k, _)| !queries.contains(&k.as_ref()))
        .collect();
    // Envoy's parameters live in a map ordered by name, each name's values in order.
    params.sort_by(|a, b| a.0.cmp(&b.0));
    let base = path.split(['?', '#']).next().unwrap_or(path);
    let mut out = Vec::with_capacity(path.len());
    out.extend_from_slice(base.as_bytes());
    for (i, (k, v)) in params.iter().enumerate() {
        out.push(if i == 0 { b'?' } else { b'&' });
        encode_unsafe(k, &mut out);
        out.push(b'=');
        encode_unsafe(v, &mut out);
    }
    Some(String::from_utf8_lossy(&out).into_owned())
}

/// Writes `s`, percent-encoding the bytes a request target cannot carry (Envoy writes them
/// as decoded, a space breaking its request line: a deliberate difference).
fn encode_unsafe(s: &[u8], out: &mut Vec<u8>) {
    for &b in s {
        if b.is_ascii_graphic()
            && !matches!(
                b,
                b'"' | b'#' | b'<' | b'>' | b'\\' | b'^' | b'`' | b'{' | b'|' | b'}'
            )
        {
            out.push(b);
        } else {
            const HEX: &[u8; 16] = b"0123456789ABCDEF";
            out.extend_from_slice(&[b'%', HEX[usize::from(b >> 4)], HEX[usize::from(b & 15)]]);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::http::conn_manager::headers::test_header_map;

    fn key(s: &Source, h: &[(&'static str, &'static str)], path: &str) -> Option<Vec<u8>> {
        let h = test_header_map(h);
        s.key(&h, path).map(|k| k.into_owned())
    }

    #[test]
    fn envoys_sources() {
        let header = Source::Header(HeaderName::from_static("x-api-key"));
        assert_eq!(
            key(&header, &[("x-api-key", "Bearer k")], "/"),
            Some(b"k".to_vec())
        );
        assert_eq!(
            key(&header, &[("x-api-key", "bearer k")], "/"),
            Some(b"bearer k".to_vec())
        );
        assert_eq!(key(&header, &[("x-api-key", "Bearer ")], "/"), None);
        let query = Source::Query("api_key".into());
        assert_eq!(
            key(&query, &[], "/x?a=1&api%5Fkey=k%32&api_key=z"),
            Some(b"k2".to_vec())
        );
        assert_eq!(key(&query, &[], "/x?api_key=&api_key=z"), None);
        assert_eq!(key(&query, &[], "/x?api_key=a=b"), Some(b"a=b".to_vec()));
        assert_eq!(
            key(&query, &[], "/x?api_key=%zz%4"),
            Some(b"%zz%4".to_vec())
        );
        let cookie = Source::Cookie("ak".into());
        assert_eq!(
            key(&cookie, &[("cookie", "a=b;  ak=\"k1\"; ak=k2")], "/"),
            Some(b"k1".to_vec())
        );
        assert_eq!(
            key(&cookie, &[("cookie", "ak=k1 ; c=3")], "/"),
            Some(b"k1 ".to_vec())
        );
        assert_eq!(
            key(&cookie, &[("cookie", "a=b"), ("cookie", "ak=k")], "/"),
            Some(b"k".to_vec())
        );
        assert_eq!(key(&cookie, &[("cookie", "ak")], "/"), None);
    }

    #[test]
    fn hiding_rebuilds_query_and_cookies_as_envoy() {
        let sources = [
            Source::Header(HeaderName::from_static("x-api-key")),
            Source::Query("api_key".into()),
            Source::Cookie("ak".into()),
        ];
        let mut h = test_header_map(&[
            ("x-api-key", "k"),
            ("cookie", "a=1; ak=k"),
            ("cookie", "ak=z"),
        ]);
        assert_eq!(
            hide(&sources, &mut h, "/x?z=%41&api_key=k1&=q&&b&z=0").as_deref(),
            Some("/x?=q&=&b=&z=A&z=0")
        );
        assert!(h.get("x-api-key").is_none());
        assert_eq!(h.get("cookie").map(|v| v.as_bytes()), Some(&b"a=1"[..]));
        let mut h = test_header_map(&[("cookie", "ak=k")]);
        assert_eq!(
            hide(&sources, &mut h, "/x?api_key=k").as_deref(),
            Some("/x")
        );
        assert!(h.get("cookie").is_none());
        assert_eq!(hide(&sources, &mut h, "/x").as_deref(), None);
        assert_eq!(
            hide(&sources, &mut h, "/x?a=%20").as_deref(),
            Some("/x?a=%20")
        );
    }

    #[test]
    fn garbage_never_panics() {
        let mut rng = fastrand::Rng::with_seed(11);
        let alphabet = b"?&=%;\" akAK0f";
        let sources = [Source::Query("ak".into()), Source::Cookie("ak".into())];
        for _ in 0..20_000 {
            let len = rng.usize(0..30);
            let text: String = (0..len)
                .map(|_| alphabet[rng.usize(..alphabet.len())] as char)
                .collect();
            let mut h = HeaderMap::new();
            if let Ok(v) = HeaderValue::from_str(&text) {
                h.insert(COOKIE, v);
            }
            for s in &sources {
                let _ = s.key(&h, &text);
            }
            // A request's path is a valid request target: only such paths are hidden from.
            let path = format!("/{text}");
            if path.parse::<http::uri::PathAndQuery>().is_err() {
                continue;
            }
            if let Some(p) = hide(&sources, &mut h, &path) {
                assert!(p.parse::<http::uri::PathAndQuery>().is_ok(), "{p}");
            }
        }
    }
}
