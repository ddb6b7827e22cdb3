//! A fuzz case: bytes a client sends, or bytes an upstream answers with, written as one
//! escaped line so that a disagreement found once is kept as a regression case
//! (`regressions.txt`) and replayed on every run.

use std::fmt;

/// Who sends the case's bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Side {
    /// A client's request(s), pipelined on one connection.
    Request,
    /// An upstream's response to `GET /` (or to `HEAD /` when `head`), after which the
    /// upstream closes.
    Response { head: bool },
}

/// One case.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Case {
    pub side: Side,
    pub bytes: Vec<u8>,
    /// For requests: which of the pipelined requests are HEADs (their number is the number
    /// of responses to wait for).
    pub heads: Vec<bool>,
}

impl Case {
    /// The request the client sends for a response case.
    pub fn client_bytes(&self) -> Vec<u8> {
        match self.side {
            Side::Request => self.bytes.clone(),
            Side::Response { head: true } => b"HEAD / HTTP/1.1\r\nhost: h\r\n\r\n".to_vec(),
            Side::Response { head: false } => b"GET / HTTP/1.1\r\nhost: h\r\n\r\n".to_vec(),
        }
    }

    /// The responses the client waits for, by whether their request was a HEAD.
    pub fn client_heads(&self) -> Vec<bool> {
        match self.side {
            Side::Request => self.heads.clone(),
            Side::Response { head } => vec![head],
        }
    }

    /// Reads a case from a regression line (`request <escaped>`, `response <escaped>`,
    /// `head-response <escaped>`).
    pub fn from_line(line: &str) -> Result<Case, String> {
        let (kind, text) = line
            .split_once(' ')
            .ok_or_else(|| format!("no case kind in {line:?}"))?;
        let bytes = unescape(text)?;
        let side = match kind {
            "request" => Side::Request,
            "response" => Side::Response { head: false },
            "head-response" => Side::Response { head: true },
            other => return Err(format!("unknown case kind {other:?}")),
        };
        let heads = request_heads(&bytes);
        Ok(Case { side, bytes, heads })
    }
}

/// Which requests in pipelined bytes are HEADs: each request line starts after the
/// previous message's blank line, so a count of `\r\n\r\n`-separated heads is a fair
/// guess for the fuzzer's own (well-delimited) cases.
pub fn request_heads(bytes: &[u8]) -> Vec<bool> {
    let text = String::from_utf8_lossy(bytes);
    let mut heads: Vec<bool> = text
        .split("\r\n\r\n")
        .filter(|part| {
            let first = part.split(' ').next().unwrap_or("");
            !first.is_empty()
                && first.bytes().all(|b| b.is_ascii_alphabetic() || b == b'-')
                && part.contains(" HTTP/")
        })
        .map(|part| part.starts_with("HEAD "))
        .collect();
    if heads.is_empty() {
        heads.push(false);
    }
    heads
}

impl fmt::Display for Case {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let kind = match self.side {
            Side::Request => "request",
            Side::Response { head: false } => "response",
            Side::Response { head: true } => "head-response",
        };
        write!(f, "{kind} {}", escape(&self.bytes))
    }
}

/// Bytes as one printable line: `\r`, `\n`, `\t`, `\\` and `\xNN` for the rest outside
/// printable ASCII.
pub fn escape(bytes: &[u8]) -> String {
    let mut out = String::with_capacity(bytes.len() + 16);
    for &b in bytes {
        match b {
            b'\r' => out.push_str("\\r"),
            b'\n' => out.push_str("\\n"),
            b'\t' => out.push_str("\\t"),
            b'\\' => out.push_str("\\\\"),
            0x20..=0x7e => out.push(char::from(b)),
            _ => out.push_str(&format!("\\x{b:02x}")),
        }
    }
    out
}

/// The inverse of [`escape`].
pub fn unescape(text: &str) -> Result<Vec<u8>, String> {
    let mut out = Vec::with_capacity(text.len());
    let mut bytes = text.bytes();
    while let Some(b) = bytes.next() {
        if b != b'\\' {
            out.push(b);
            continue;
        }
        match bytes.next() {
            Some(b'r') => out.push(b'\r'),
            Some(b'n') => out.push(b'\n'),
            Some(b't') => out.push(b'\t'),
            Some(b'\\') => out.push(b'\\'),
            Some(b'x') => {
                let hex: Vec<u8> = bytes.by_ref().take(2).collect();
                let hex = std::str::from_utf8(&hex).map_err(|e| e.to_string())?;
                out.push(u8::from_str_radix(hex, 16).map_err(|e| format!("\\x{hex}: {e}"))?);
            }
            other => return Err(format!("unknown escape \\{:?}", other.map(char::from))),
        }
    }
    Ok(out)
}
