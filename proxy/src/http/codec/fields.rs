//! Field-value helpers the HTTP/1 codecs share with the connection manager: token lists
//! (`Connection`), hop-by-hop names, joining repeated fields, decimal values.

use http::header::{HeaderMap, HeaderName, HeaderValue};

/// The connection-level fields of a response that a proxy never forwards (RFC 9110
/// §7.6.1); a `101` keeps them, since they are its upgrade.
pub fn is_response_hop_by_hop(name: &HeaderName) -> bool {
    use http::header::*;
    name == CONNECTION
        || name == TRANSFER_ENCODING
        || name == UPGRADE
        || matches!(name.as_str(), "keep-alive" | "proxy-connection")
}

/// Whether a comma-separated field value (`Connection` and the like) lists `token`, in
/// any case.
pub fn has_token(value: &HeaderValue, token: &[u8]) -> bool {
    value
        .as_bytes()
        .split(|b| *b == b',')
        .any(|t| t.trim_ascii().eq_ignore_ascii_case(token))
}

/// Every value of `name` joined with `sep`, then `extra` if given, empty values left out
/// (as Envoy appends); `None` when there is no more than one value (nothing to join).
pub(crate) fn joined_values(
    headers: &HeaderMap,
    name: &HeaderName,
    sep: &[u8],
    extra: Option<&HeaderValue>,
) -> Option<HeaderValue> {
    let values = headers.get_all(name).iter().chain(extra);
    let mut out = Vec::new();
    let mut count = 0;
    for v in values {
        count += 1;
        if v.is_empty() {
            continue;
        }
        if !out.is_empty() {
            out.extend_from_slice(sep);
        }
        out.extend_from_slice(v.as_bytes());
    }
    (count > 1)
        .then(|| HeaderValue::from_bytes(&out).ok())
        .flatten()
}

/// A header value holding `n` in decimal. Values below 1024 (durations in ms, attempt
/// counts) come from a table of static strings, so they cost no allocation.
pub fn decimal_value(n: u64) -> HeaderValue {
    static SMALL: std::sync::OnceLock<Vec<&'static str>> = std::sync::OnceLock::new();
    const SMALL_LEN: u64 = 1024;
    if n >= SMALL_LEN {
        // Larger values repeat too (a route's timeout in ms): the worker keeps the last one.
        thread_local! {
            static LAST: std::cell::RefCell<Option<(u64, HeaderValue)>> =
                const { std::cell::RefCell::new(None) };
        }
        return LAST.with(|last| {
            let mut last = last.borrow_mut();
            match &*last {
                Some((m, v)) if *m == n => v.clone(),
                _ => {
                    let v = HeaderValue::from(n);
                    *last = Some((n, v.clone()));
                    v
                }
            }
        });
    }
    let table = SMALL.get_or_init(|| {
        let mut all = String::new();
        let mut ends = Vec::with_capacity(SMALL_LEN as usize);
        for i in 0..SMALL_LEN {
            all.push_str(&i.to_string());
            ends.push(all.len());
        }
        // One allocation for the process's lifetime, so the strings can be `'static`.
        let all: &'static str = Box::leak(all.into_boxed_str());
        let mut start = 0;
        ends.into_iter()
            .map(|end| {
                let s = &all[start..end];
                start = end;
                s
            })
            .collect()
    });
    HeaderValue::from_static(table[n as usize])
}

/// Makes the `name` fields one, their values joined with `sep`.
pub fn join_fields(headers: &mut HeaderMap, name: &HeaderName, sep: &[u8]) {
    if let Some(v) = joined_values(headers, name, sep, None) {
        headers.insert(name.clone(), v);
    }
}

/// Makes each of `names` one field, its repeated lines joined with `,`: the fields Envoy's
/// header map keeps as one.
pub fn join_each(headers: &mut HeaderMap, names: &[&'static str]) {
    for name in names {
        join_fields(headers, &HeaderName::from_static(name), b",");
    }
}

/// Whether each byte may appear in an authority: RFC 3986's unreserved and sub-delims,
/// `:`, `@`, `[`, `]` and `%` (Envoy's `HeaderUtility::authorityIsValid`).
const AUTHORITY: [bool; 256] = {
    let mut table = [false; 256];
    let allowed =
        b"!$&'()*+,-.0123456789:;=@ABCDEFGHIJKLMNOPQRSTUVWXYZ[]_abcdefghijklmnopqrstuvwxyz~%";
    let mut i = 0;
    while i < allowed.len() {
        table[allowed[i] as usize] = true;
        i += 1;
    }
    table
};

/// Whether `value` may be an authority (`Host`, `:authority`): Envoy refuses one holding
/// `/`, `?`, `#`, whitespace, quotes, angle brackets, a backslash or a control character.
pub fn is_valid_authority(value: &[u8]) -> bool {
    value.iter().all(|&b| AUTHORITY[usize::from(b)])
}
