//! `x-forwarded-for` as Envoy's connection manager reads and writes it: its entries
//! counted from the end (`getLastAddressFromXFF`), and the peer appended. What
//! `use_remote_address`/`xff_num_trusted_hops`, RBAC's `remote_ip`, internal-ness and the
//! `xff` original IP detection extension share.

use std::net::IpAddr;

use http::header::{HeaderName, HeaderValue};
use http::HeaderMap;

static X_FORWARDED_FOR: HeaderName = HeaderName::from_static("x-forwarded-for");

/// The address `skip` entries before the end of `x-forwarded-for` (its lines joined with
/// `,`, as Envoy's header map holds them), and whether the header has that one entry only
/// (Envoy's `getLastAddressFromXFF`: an address it may test for internal-ness).
pub fn xff_address(headers: &HeaderMap, skip: u32) -> Option<(IpAddr, bool)> {
    with_xff(headers, |xff| {
        let single = !xff.contains(',');
        // `skip` entries must be there before the one wanted (Envoy gives up otherwise).
        let entry = xff.rsplit(',').nth(usize::try_from(skip).ok()?)?;
        Some((parse_entry(entry)?, single))
    })
}

/// `x-forwarded-for` as one string (a request repeating the header, rare, has its lines
/// joined with `,`), given to `f`; `None` without the header.
pub(crate) fn with_xff<T>(headers: &HeaderMap, f: impl FnOnce(&str) -> Option<T>) -> Option<T> {
    let mut values = headers.get_all(&X_FORWARDED_FOR).iter();
    match (values.next(), values.next()) {
        (None, _) => None,
        (Some(v), None) => f(v.to_str().ok()?),
        (Some(first), Some(second)) => {
            let all: Vec<&str> = [first, second]
                .into_iter()
                .chain(values)
                .map(|v| v.to_str().unwrap_or(""))
                .collect();
            f(&all.join(","))
        }
    }
}

/// One `x-forwarded-for` entry as an address (surrounding whitespace allowed).
pub(crate) fn parse_entry(entry: &str) -> Option<IpAddr> {
    entry
        .trim_matches(|c: char| c.is_ascii_whitespace() || c == '\x0b')
        .parse()
        .ok()
}

/// Appends the peer to `x-forwarded-for` (the machine's own address for a loopback
/// peer), as the connection manager does with `use_remote_address`.
pub fn append_peer(headers: &mut HeaderMap, peer: IpAddr, local_address: IpAddr) {
    // As Envoy: a loopback peer (127.0.0.1 or ::1 exactly, a v4-mapped one included) is
    // this machine, named by its own address.
    let ip = if crate::server::local_info::is_loopback(peer) {
        local_address.to_string()
    } else {
        peer.to_string()
    };
    let v = match headers.get(&X_FORWARDED_FOR).and_then(|v| v.to_str().ok()) {
        Some(prev) if !prev.is_empty() => format!("{prev},{ip}"),
        _ => ip,
    };
    if let Ok(v) = HeaderValue::from_str(&v) {
        headers.insert(X_FORWARDED_FOR.clone(), v);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(xff: &str) -> HeaderMap {
        let mut h = HeaderMap::new();
        h.insert(
            "x-forwarded-for",
            HeaderValue::from_str(xff).expect("value"),
        );
        h
    }

    fn ip(s: &str) -> IpAddr {
        s.parse().expect("address")
    }

    #[test]
    fn xff_entries_from_the_end() {
        let h = headers("1.1.1.1, 2.2.2.2,3.3.3.3");
        assert_eq!(xff_address(&h, 0), Some((ip("3.3.3.3"), false)));
        assert_eq!(xff_address(&h, 1), Some((ip("2.2.2.2"), false)));
        assert_eq!(xff_address(&h, 3), None);
        assert_eq!(
            xff_address(&headers("10.0.0.1"), 0),
            Some((ip("10.0.0.1"), true))
        );
        assert_eq!(xff_address(&HeaderMap::new(), 0), None);
    }
}
