//! `envoy.filters.listener.http_inspector`: before a chain is picked, peeks at a
//! plaintext connection's first bytes for an HTTP request, so chains can match on the
//! application protocol it speaks (`http/1.0`, `http/1.1`, `h2c`).
//!
//! As Envoy's: the HTTP/2 connection preface means `h2c`; otherwise the first line must be
//! an HTTP/1 request line (a method token, a target, `HTTP/1.0` or `HTTP/1.1`). Nothing is
//! consumed. A connection the TLS inspector found to be TLS is not inspected. Counters
//! `http_inspector.{http10_found,http11_found,http2_found,http_not_found}`.

use std::sync::Arc;

use crate::stats::{Counter, Store};

/// The HTTP/2 connection preface.
const PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";
/// The most of a request line Envoy's inspector reads.
pub const MAX_INSPECT: usize = 8192;

/// What the peeked bytes say.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Detected {
    /// Not enough yet.
    Incomplete,
    /// Not HTTP.
    NotHttp,
    /// An application protocol: `http/1.0`, `http/1.1` or `h2c`.
    Protocol(&'static str),
}

/// Reads the first bytes of a plaintext connection.
pub fn detect(bytes: &[u8]) -> Detected {
    let n = bytes.len().min(PREFACE.len());
    if bytes[..n] == PREFACE[..n] {
        return match n == PREFACE.len() {
            true => Detected::Protocol("h2c"),
            false => Detected::Incomplete,
        };
    }
    let token = |b: &u8| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(b);
    let Some(end) = bytes.iter().position(|&b| b == b'\r' || b == b'\n') else {
        // What is there must already read as the start of a request line.
        let method = bytes.split(|&b| b == b' ').next().unwrap_or_default();
        let spaces = bytes.iter().filter(|&&b| b == b' ').count();
        if !method.iter().all(token) || spaces > 2 || bytes.len() >= MAX_INSPECT {
            return Detected::NotHttp;
        }
        return Detected::Incomplete;
    };
    let mut parts = bytes[..end].split(|&b| b == b' ');
    let (Some(method), Some(target), Some(version), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Detected::NotHttp;
    };
    if method.is_empty() || !method.iter().all(token) || target.is_empty() {
        return Detected::NotHttp;
    }
    match version {
        b"HTTP/1.1" => Detected::Protocol("http/1.1"),
        b"HTTP/1.0" => Detected::Protocol("http/1.0"),
        _ => Detected::NotHttp,
    }
}

/// `http_inspector.*` counters.
pub struct HttpInspectorStats {
    http10_found: Arc<Counter>,
    http11_found: Arc<Counter>,
    http2_found: Arc<Counter>,
    http_not_found: Arc<Counter>,
}

/// A compiled HTTP inspector.
#[derive(Clone)]
pub struct HttpInspector {
    stats: Arc<HttpInspectorStats>,
}

impl HttpInspector {
    /// The inspector, its counters in `store`.
    pub fn new(store: &Store) -> HttpInspector {
        let c = |s: &str| store.counter(&format!("http_inspector.{s}"));
        HttpInspector {
            stats: Arc::new(HttpInspectorStats {
                http10_found: c("http10_found"),
                http11_found: c("http11_found"),
                http2_found: c("http2_found"),
                http_not_found: c("http_not_found"),
            }),
        }
    }

    /// Counts what was found.
    pub fn count(&self, found: Option<&str>, worker: usize) {
        let s = &self.stats;
        match found {
            Some("http/1.0") => s.http10_found.inc(worker),
            Some("http/1.1") => s.http11_found.inc(worker),
            Some(_) => s.http2_found.inc(worker),
            None => s.http_not_found.inc(worker),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn request_lines_and_the_preface_are_told_apart() {
        assert_eq!(
            detect(b"GET / HTTP/1.1\r\n"),
            Detected::Protocol("http/1.1")
        );
        assert_eq!(
            detect(b"POST /a?b HTTP/1.0\r\nhost: x\r\n"),
            Detected::Protocol("http/1.0")
        );
        assert_eq!(detect(PREFACE), Detected::Protocol("h2c"));
        assert_eq!(detect(b"PRI * HTTP/2"), Detected::Incomplete);
        assert_eq!(detect(b"GET / HTT"), Detected::Incomplete);
        assert_eq!(detect(b"GET / HTTP/2.0\r\n"), Detected::NotHttp);
        assert_eq!(detect(b"\x16\x03\x01\x00"), Detected::NotHttp);
        assert_eq!(detect(b"G(T / HTTP/1.1\r\n"), Detected::NotHttp);
        assert_eq!(detect(b"SSH-2.0-OpenSSH\r\n"), Detected::NotHttp);
        assert_eq!(detect(&[b'a'; MAX_INSPECT]), Detected::NotHttp);
    }
}
