//! Request path sanitation (`normalize_path`, `merge_slashes`,
//! `path_with_escaped_slashes_action`), as Envoy's.

/// RFC 3986 dot-segment removal (Envoy's `normalize_path`).
pub(crate) fn normalize_dots(path: &str) -> String {
    let mut out: Vec<&str> = Vec::new();
    let trailing = path.ends_with("/.") || path.ends_with("/..") || path.ends_with('/');
    for seg in path.split('/').skip(1) {
        match seg {
            "." => {}
            ".." => {
                out.pop();
            }
            s => out.push(s),
        }
    }
    let mut s = String::with_capacity(path.len());
    for seg in &out {
        s.push('/');
        s.push_str(seg);
    }
    if s.is_empty() || (trailing && !s.ends_with('/')) {
        s.push('/');
    }
    s
}

pub(crate) fn merge_slashes(path: &str) -> String {
    let mut s = String::with_capacity(path.len());
    let mut prev = false;
    for c in path.chars() {
        if c == '/' {
            if prev {
                continue;
            }
            prev = true;
        } else {
            prev = false;
        }
        s.push(c);
    }
    s
}

/// RFC 3986 §2.3: the characters that never need percent-encoding.
pub(crate) fn is_unreserved(b: u8) -> bool {
    b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~')
}

/// The first step of Envoy's `normalize_path` (RFC 3986 §6.2.2): escapes of unreserved
/// characters decoded (so `%2e%2e` is a `..` segment, and `%41` is `A` for route
/// matching), other escapes kept as they are, `\` read as `/`. `None` for an
/// encoded NUL, which Envoy refuses.
pub(crate) fn decode_unreserved(path: &str) -> Option<String> {
    let hex = |b: u8| (b as char).to_digit(16);
    let b = path.as_bytes();
    let mut out = String::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        match b[i] {
            b'%' if i + 2 < b.len() => match (hex(b[i + 1]), hex(b[i + 2])) {
                (Some(h), Some(l)) => {
                    let v = (h * 16 + l) as u8;
                    if v == 0 {
                        return None;
                    }
                    if is_unreserved(v) {
                        out.push(v as char);
                    } else {
                        out.push_str(&path[i..i + 3]);
                    }
                    i += 3;
                    continue;
                }
                _ => out.push('%'),
            },
            b'\\' => out.push('/'),
            _ => {
                // Copy the whole UTF-8 sequence starting here.
                let end = (i + 1..=b.len())
                    .find(|&e| path.is_char_boundary(e))
                    .unwrap_or(b.len());
                out.push_str(&path[i..end]);
                i = end;
                continue;
            }
        }
        i += 1;
    }
    Some(out)
}

/// The path (not the query) with `%2F` and `%5C`, in either case, unescaped to `/` and
/// `\`; `None` when it has none.
pub(crate) fn unescape_slashes(path: &str) -> Option<String> {
    let end = path.find('?').unwrap_or(path.len());
    let (p, q) = path.split_at(end);
    let is_escape = |w: &[u8]| {
        w[0] == b'%'
            && (w[1] == b'2' && w[2].eq_ignore_ascii_case(&b'f')
                || w[1] == b'5' && w[2].eq_ignore_ascii_case(&b'c'))
    };
    if !p.as_bytes().windows(3).any(is_escape) {
        return None;
    }
    let mut out = String::with_capacity(path.len());
    let mut rest = p;
    while let Some(i) = rest.find('%') {
        out.push_str(&rest[..i]);
        let b = rest.as_bytes();
        if b.len() >= i + 3 && is_escape(&b[i..i + 3]) {
            out.push(if b[i + 1] == b'2' { '/' } else { '\\' });
            rest = &rest[i + 3..];
        } else {
            out.push('%');
            rest = &rest[i + 1..];
        }
    }
    out.push_str(rest);
    out.push_str(q);
    Some(out)
}

/// `normalize_path` / `merge_slashes` on a path with an optional query (what the
/// connection manager does before routing); `None` for a path Envoy refuses with `400`.
pub fn sanitize_path(path: &str, normalize: bool, merge: bool) -> Option<String> {
    let (p, q) = match path.split_once('?') {
        Some((p, q)) => (p, Some(q)),
        None => (path, None),
    };
    let mut p = p.to_string();
    if normalize && p.starts_with('/') {
        p = normalize_dots(&decode_unreserved(&p)?);
    }
    if merge {
        p = merge_slashes(&p);
    }
    Some(match q {
        Some(q) => format!("{p}?{q}"),
        None => p,
    })
}
