//! A lenient HTTP/1.1 message reader for the fuzzer's two ends: the recording upstream reads
//! the requests a proxy forwards, the client reads the responses a proxy sends. Both
//! proxies write well-formed messages, so this only needs to split them and tell how they
//! were framed; what it cannot read is reported, never guessed.

/// How a message's body was framed on the wire.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Framing {
    /// `content-length: n`.
    Length(u64),
    /// `transfer-encoding: chunked`.
    Chunked,
    /// No body, and nothing that announces one.
    None,
    /// A response body read to the connection's end.
    UntilClose,
}

/// One message: its start line, its fields (names lowercased, in order), its framing, body
/// and trailers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Message {
    pub start: String,
    pub headers: Vec<(String, String)>,
    pub framing: Framing,
    pub body: Vec<u8>,
    pub trailers: Vec<(String, String)>,
}

impl Message {
    /// All values of field `name`, in order.
    pub fn values(&self, name: &str) -> Vec<&str> {
        self.headers
            .iter()
            .filter(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
            .collect()
    }

    /// A response's status code (0 when the start line has none).
    pub fn status(&self) -> u16 {
        self.start
            .split(' ')
            .nth(1)
            .and_then(|s| s.parse().ok())
            .unwrap_or(0)
    }
}

/// What kind of message is read, which decides how a body without framing ends.
#[derive(Debug, Clone, Copy)]
pub enum Kind {
    Request,
    /// A response; `head`: to a HEAD request (no body whatever the fields say).
    Response {
        head: bool,
    },
}

/// What [`parse`] made of the front of a buffer.
#[derive(Debug)]
pub enum Parsed {
    /// A whole message, and how many bytes it took.
    Complete(Message, usize),
    /// More bytes are needed.
    Incomplete,
    /// The bytes are not a message this reader understands.
    Invalid(String),
}

fn find(buf: &[u8], pat: &[u8]) -> Option<usize> {
    buf.windows(pat.len()).position(|w| w == pat)
}

fn fields(lines: &[u8]) -> Result<Vec<(String, String)>, String> {
    let text = String::from_utf8_lossy(lines);
    let mut out = Vec::new();
    for line in text.split("\r\n").filter(|l| !l.is_empty()) {
        let (k, v) = line
            .split_once(':')
            .ok_or_else(|| format!("field line without a colon: {line:?}"))?;
        out.push((k.to_ascii_lowercase(), v.trim().to_string()));
    }
    Ok(out)
}

/// Reads one message off the front of `buf`; `eof`: the peer has closed, so a body read
/// to the end is complete.
pub fn parse(buf: &[u8], kind: Kind, eof: bool) -> Parsed {
    let Some(head_end) = find(buf, b"\r\n\r\n") else {
        return Parsed::Incomplete;
    };
    let head = &buf[..head_end + 2];
    let line_end = find(head, b"\r\n").unwrap_or(head.len());
    let start = String::from_utf8_lossy(&head[..line_end]).into_owned();
    let headers = match fields(&head[line_end..]) {
        Ok(h) => h,
        Err(e) => return Parsed::Invalid(e),
    };
    let mut msg = Message {
        start,
        headers,
        framing: Framing::None,
        body: Vec::new(),
        trailers: Vec::new(),
    };
    let body_at = head_end + 4;
    let chunked = msg
        .values("transfer-encoding")
        .iter()
        .any(|v| v.to_ascii_lowercase().contains("chunked"));
    let length = msg
        .values("content-length")
        .first()
        .map(|v| v.parse::<u64>());
    let no_body = match kind {
        Kind::Request => false,
        Kind::Response { head } => {
            let s = msg.status();
            head || s == 204 || s == 304 || (100..200).contains(&s)
        }
    };
    if no_body {
        return Parsed::Complete(msg, body_at);
    }
    if chunked {
        msg.framing = Framing::Chunked;
        return chunked_body(buf, body_at, msg);
    }
    match length {
        Some(Ok(n)) => {
            msg.framing = Framing::Length(n);
            let end = body_at + n as usize;
            if buf.len() < end {
                return Parsed::Incomplete;
            }
            msg.body = buf[body_at..end].to_vec();
            Parsed::Complete(msg, end)
        }
        Some(Err(_)) => Parsed::Invalid("unreadable content-length".into()),
        None => match kind {
            Kind::Request => Parsed::Complete(msg, body_at),
            Kind::Response { .. } if eof => {
                msg.framing = Framing::UntilClose;
                msg.body = buf[body_at..].to_vec();
                Parsed::Complete(msg, buf.len())
            }
            Kind::Response { .. } => Parsed::Incomplete,
        },
    }
}

fn chunked_body(buf: &[u8], mut at: usize, mut msg: Message) -> Parsed {
    loop {
        let Some(line_len) = find(&buf[at..], b"\r\n") else {
            return Parsed::Incomplete;
        };
        let line = String::from_utf8_lossy(&buf[at..at + line_len]).into_owned();
        let size_text = line.split(';').next().unwrap_or("").trim();
        let Ok(size) = usize::from_str_radix(size_text, 16) else {
            return Parsed::Invalid(format!("chunk size {line:?}"));
        };
        at += line_len + 2;
        if size == 0 {
            let end = if buf[at..].starts_with(b"\r\n") {
                Some(2)
            } else {
                find(&buf[at..], b"\r\n\r\n").map(|i| i + 4)
            };
            let Some(end) = end else {
                return Parsed::Incomplete;
            };
            match fields(&buf[at..at + end]) {
                Ok(t) => msg.trailers = t,
                Err(e) => return Parsed::Invalid(e),
            }
            return Parsed::Complete(msg, at + end);
        }
        if buf.len() < at + size + 2 {
            return Parsed::Incomplete;
        }
        msg.body.extend_from_slice(&buf[at..at + size]);
        at += size + 2;
    }
}
