//! What an authorization service decided (Envoy's `ExtAuthz::Response`), whichever
//! service answered, and how an allowed request and its answer change with it.

use bytes::Bytes;
use http::{HeaderMap, HeaderName, HeaderValue, StatusCode};

/// The service's decision.
pub enum Verdict {
    /// The request goes on, changed as the service says.
    Ok(Box<Allowed>),
    /// The request is answered with the service's reply.
    Denied(Box<Denied>),
    /// No decision: the call failed, timed out, or the service broke.
    Error,
}

/// The changes an allowed request and its answer take.
#[derive(Default)]
pub struct Allowed {
    /// Fields set on the request (replacing any there).
    pub set: Vec<(HeaderName, HeaderValue)>,
    /// Fields added to the request (beside any there).
    pub add: Vec<(HeaderName, HeaderValue)>,
    /// Values appended to fields the request has (`value,new`); absent fields are left.
    pub append: Vec<(HeaderName, HeaderValue)>,
    /// Fields removed from the request (never pseudo-headers nor `host`).
    pub remove: Vec<HeaderName>,
    /// Query parameters set.
    pub query_set: Vec<(String, String)>,
    /// Query parameters removed.
    pub query_remove: Vec<String>,
    /// What the answer to the request takes.
    pub response: ResponseChanges,
}

/// Fields the answer to an allowed request takes.
#[derive(Default)]
pub struct ResponseChanges {
    /// Added beside any there.
    pub add: Vec<(HeaderName, HeaderValue)>,
    /// Set, replacing any there.
    pub set: Vec<(HeaderName, HeaderValue)>,
    /// Added only where absent.
    pub add_if_absent: Vec<(HeaderName, HeaderValue)>,
    /// Replaced only where present.
    pub overwrite_if_exists: Vec<(HeaderName, HeaderValue)>,
}

impl ResponseChanges {
    /// Whether there is nothing to change.
    pub fn is_empty(&self) -> bool {
        self.add.is_empty()
            && self.set.is_empty()
            && self.add_if_absent.is_empty()
            && self.overwrite_if_exists.is_empty()
    }

    /// Changes `headers` (Envoy's `encodeHeaders` order: added, then set, then the
    /// conditional ones).
    pub fn apply(&self, headers: &mut HeaderMap) {
        for (k, v) in &self.add {
            headers.append(k.clone(), v.clone());
        }
        for (k, v) in &self.set {
            headers.insert(k.clone(), v.clone());
        }
        for (k, v) in &self.add_if_absent {
            if !headers.contains_key(k) {
                headers.insert(k.clone(), v.clone());
            }
        }
        for (k, v) in &self.overwrite_if_exists {
            if headers.contains_key(k) {
                headers.insert(k.clone(), v.clone());
            }
        }
    }
}

/// The reply to a denied request.
pub struct Denied {
    /// Its status.
    pub status: StatusCode,
    /// Fields it carries (each replacing what the reply had; repeated names all kept).
    pub headers: Vec<(HeaderName, HeaderValue)>,
    /// Its body.
    pub body: Bytes,
}

impl Allowed {
    /// Whether the request's fields or query change.
    pub fn changes_request(&self) -> bool {
        !(self.set.is_empty()
            && self.add.is_empty()
            && self.append.is_empty()
            && self.remove.is_empty()
            && self.query_set.is_empty()
            && self.query_remove.is_empty())
    }

    /// Changes the request's fields (Envoy's order: set, added, appended, removed).
    pub fn apply_headers(&self, headers: &mut HeaderMap) {
        for (k, v) in &self.set {
            headers.insert(k.clone(), v.clone());
        }
        for (k, v) in &self.add {
            headers.append(k.clone(), v.clone());
        }
        for (k, v) in &self.append {
            let Some(joined) = crate::filters::http::joined(headers, k.clone()) else {
                continue;
            };
            let mut value = joined.as_bytes().to_vec();
            value.push(b',');
            value.extend_from_slice(v.as_bytes());
            if let Ok(value) = HeaderValue::from_bytes(&value) {
                headers.insert(k.clone(), value);
            }
        }
        for k in &self.remove {
            if k != http::header::HOST {
                headers.remove(k);
            }
        }
    }

    /// The path with the query changed, if it changes. As Envoy's, the query is then
    /// rebuilt from a map: one value per name (the first), names in order.
    pub fn rewrite_query(&self, path: &str) -> Option<String> {
        if self.query_set.is_empty() && self.query_remove.is_empty() {
            return None;
        }
        let (base, query) = path.split_once('?').unwrap_or((path, ""));
        let mut params = std::collections::BTreeMap::new();
        for p in query.split('&').filter(|p| !p.is_empty()) {
            let (k, v) = p.split_once('=').unwrap_or((p, ""));
            params.entry(k.to_owned()).or_insert_with(|| v.to_owned());
        }
        for (k, v) in &self.query_set {
            params.insert(k.clone(), v.clone());
        }
        for k in &self.query_remove {
            params.remove(k);
        }
        if params.is_empty() {
            return Some(base.to_owned());
        }
        let query: Vec<String> = params.iter().map(|(k, v)| format!("{k}={v}")).collect();
        Some(format!("{base}?{}", query.join("&")))
    }
}

/// A `name: value` pair a service sent, as fields, if both are valid.
pub fn field(name: &str, value: &[u8]) -> Option<(HeaderName, HeaderValue)> {
    let name = HeaderName::from_bytes(name.as_bytes()).ok()?;
    let value = HeaderValue::from_bytes(value).ok()?;
    Some((name, value))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn appended_values_join_fields_that_exist_only() {
        let mut h = HeaderMap::new();
        h.insert("x-a", HeaderValue::from_static("1"));
        let allowed = Allowed {
            append: vec![field("x-a", b"2").unwrap(), field("x-b", b"3").unwrap()],
            remove: vec![HeaderName::from_static("host")],
            ..Default::default()
        };
        h.insert("host", HeaderValue::from_static("h"));
        allowed.apply_headers(&mut h);
        assert_eq!(h["x-a"], "1,2");
        assert!(!h.contains_key("x-b"));
        assert_eq!(h["host"], "h");
    }

    #[test]
    fn query_changes_rewrite_the_path() {
        let allowed = Allowed {
            query_set: vec![("a".into(), "9".into()), ("c".into(), "3".into())],
            query_remove: vec!["b".into()],
            ..Default::default()
        };
        assert_eq!(
            allowed.rewrite_query("/p?z=0&a=1&b=2&z=5").as_deref(),
            Some("/p?a=9&c=3&z=0")
        );
        assert_eq!(Allowed::default().rewrite_query("/p?a=1"), None);
    }
}
