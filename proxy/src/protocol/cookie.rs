//! A request's cookies as Envoy reads them (`Http::Utility::forEachCookie`): each
//! `cookie` field split at `;`, leading spaces dropped, a part without `=` skipped, the
//! name up to the first `=` and the value after it, one pair of surrounding double
//! quotes taken off the value. Nothing else is trimmed or decoded. The filters that read
//! cookies (OAuth2, JWT, API keys, stateful sessions) and the route's hash policy all
//! read them here.

use http::header::COOKIE;
use http::HeaderMap;

/// Every cookie of the request's `cookie` fields, in order: `(name, value)`.
pub fn pairs(headers: &HeaderMap) -> impl Iterator<Item = (&[u8], &[u8])> {
    headers
        .get_all(COOKIE)
        .iter()
        .flat_map(|v| v.as_bytes().split(|&b| b == b';'))
        .filter_map(pair)
}

/// The first cookie named `name` (Envoy's `parseCookieValue`).
pub fn value<'a>(headers: &'a HeaderMap, name: &[u8]) -> Option<&'a [u8]> {
    pairs(headers).find(|(k, _)| *k == name).map(|(_, v)| v)
}

/// One `;`-separated part: its name and unquoted value, unless it has no `=`.
fn pair(part: &[u8]) -> Option<(&[u8], &[u8])> {
    let start = part.iter().position(|&b| b != b' ')?;
    let part = &part[start..];
    let eq = part.iter().position(|&b| b == b'=')?;
    let value = match &part[eq + 1..] {
        [b'"', inner @ .., b'"'] => inner,
        v => v,
    };
    Some((&part[..eq], value))
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::HeaderValue;

    fn headers(fields: &[&'static str]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for f in fields {
            h.append(COOKIE, HeaderValue::from_static(f));
        }
        h
    }

    #[test]
    fn cookies_are_split_as_envoy_splits_them() {
        let h = headers(&["a=1;  b=\"2\";c; =e;\td=4 ", "a=9; q=\"\"; r=\"; s=x=y"]);
        let got: Vec<(String, String)> = pairs(&h)
            .map(|(k, v)| {
                (
                    String::from_utf8_lossy(k).into_owned(),
                    String::from_utf8_lossy(v).into_owned(),
                )
            })
            .collect();
        let want = [
            ("a", "1"),
            ("b", "2"),
            ("", "e"),
            ("\td", "4 "),
            ("a", "9"),
            ("q", ""),
            ("r", "\""),
            ("s", "x=y"),
        ];
        assert_eq!(
            got,
            want.map(|(k, v)| (k.to_string(), v.to_string())).to_vec()
        );
        assert_eq!(value(&h, b"a"), Some(&b"1"[..]));
        assert_eq!(value(&h, b"s"), Some(&b"x=y"[..]));
        assert_eq!(value(&h, b"c"), None);
    }
}
