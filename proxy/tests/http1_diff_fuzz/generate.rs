//! Structured random cases: requests and upstream responses built part by part (start line,
//! fields, framing, body) from alphabets that include the characters parsers disagree on —
//! delimiters, whitespace, controls, bytes over 0x7f — so that most cases are nearly valid
//! and reach the checks behind the parser.

use fastrand::Rng;

use crate::case::{Case, Side};

/// Characters a field value or a target is built from: mostly ordinary, some special.
const PLAIN: &[u8] = b"abcxyzABC0189-._~";
const SPECIAL: &[u8] = b"/?#[]@!$&'()*+,;=%:\\\"<> \t`{}|^";
const CONTROL: &[u8] = b"\x00\x01\x0b\x0c\x7f\x80\xff\r";

fn pick<'a, T>(rng: &mut Rng, items: &'a [T]) -> &'a T {
    &items[rng.usize(..items.len())]
}

fn one_of(rng: &mut Rng, items: &[&'static [u8]]) -> &'static [u8] {
    items[rng.usize(..items.len())]
}

/// A short string: plain characters with, now and then, a special or control one.
fn text(rng: &mut Rng, max: usize) -> Vec<u8> {
    let len = rng.usize(0..=max);
    (0..len)
        .map(|_| match rng.u8(0..100) {
            0..=89 => *pick(rng, PLAIN),
            90..=98 => *pick(rng, SPECIAL),
            _ => *pick(rng, CONTROL),
        })
        .collect()
}

/// A host, mostly valid: a name, an IPv4 or bracketed IPv6 literal, a port now and then.
fn host(rng: &mut Rng) -> Vec<u8> {
    let mut h: Vec<u8> = match rng.u8(0..10) {
        0..=4 => b"h".to_vec(),
        5 => b"example.com".to_vec(),
        6 => b"127.0.0.1".to_vec(),
        7 => b"[::1]".to_vec(),
        _ => {
            let mut t = text(rng, 6);
            t.insert(0, b'h');
            t
        }
    };
    if rng.u8(0..4) == 0 {
        let port: &[u8] = one_of(
            rng,
            &[
                b":80", b":8080", b":", b":99999", b":0", b":8a", b":65535", b":-1",
            ],
        );
        h.extend_from_slice(port);
    }
    if rng.u8(0..12) == 0 {
        let mut u = text(rng, 4);
        u.push(b'@');
        u.extend_from_slice(&h);
        h = u;
    }
    h
}

fn path(rng: &mut Rng) -> Vec<u8> {
    let mut p = vec![b'/'];
    p.extend_from_slice(&text(rng, 10));
    if rng.bool() {
        p.push(b'?');
        p.extend_from_slice(&text(rng, 8));
    }
    p
}

fn target(rng: &mut Rng, method: &[u8]) -> Vec<u8> {
    if method == b"CONNECT" && rng.u8(0..3) > 0 {
        return host(rng);
    }
    match rng.u8(0..20) {
        0..=13 => path(rng),
        14..=17 => {
            let scheme: &[u8] = one_of(
                rng,
                &[b"http", b"http", b"https", b"HTTP", b"ftp", b"ws", b""],
            );
            let mut t = scheme.to_vec();
            t.extend_from_slice(b"://");
            t.extend_from_slice(&host(rng));
            if rng.u8(0..5) > 0 {
                t.extend_from_slice(&path(rng));
            }
            t
        }
        18 => b"*".to_vec(),
        _ => host(rng),
    }
}

/// Tokens a `Connection` field may name: the hop-by-hop ones, the ones Envoy protects, and
/// ordinary fields the request also carries.
const CONNECTION_TOKENS: &[&str] = &[
    "close",
    "keep-alive",
    "upgrade",
    "te",
    "host",
    "x-forwarded-for",
    "x-forwarded-host",
    "x-forwarded-proto",
    "x-request-id",
    ":authority",
    ":path",
    "x-a",
    "x-b",
    "content-length",
    "transfer-encoding",
    "proxy-connection",
    "",
];

fn connection_value(rng: &mut Rng) -> String {
    let n = if rng.u8(0..10) == 0 {
        rng.usize(10..40)
    } else {
        rng.usize(1..4)
    };
    let tokens: Vec<&str> = (0..n).map(|_| *pick(rng, CONNECTION_TOKENS)).collect();
    tokens.join(if rng.bool() { ", " } else { "," })
}

/// How a body is framed.
#[derive(Clone, Copy)]
enum Framing {
    None,
    Length,
    Chunked,
}

fn field(out: &mut Vec<u8>, name: &[u8], value: &[u8]) {
    out.extend_from_slice(name);
    out.extend_from_slice(b": ");
    out.extend_from_slice(value);
    out.extend_from_slice(b"\r\n");
}

/// The framing fields and body of a message, mostly consistent, sometimes not.
fn framing_and_body(rng: &mut Rng, out: &mut Vec<u8>, body_ok: bool) {
    let framing = if !body_ok && rng.u8(0..4) > 0 {
        Framing::None
    } else {
        *pick(
            rng,
            &[
                Framing::None,
                Framing::Length,
                Framing::Length,
                Framing::Chunked,
            ],
        )
    };
    let body = text(rng, 12);
    match framing {
        Framing::None => out.extend_from_slice(b"\r\n"),
        Framing::Length => {
            let n = body.len();
            let value = match rng.u8(0..16) {
                0 => format!("{n}, {n}"),
                1 => format!("+{n}"),
                2 => format!("{n}x"),
                3 => format!(" {n}"),
                4 => format!("{}", n + 1),
                _ => n.to_string(),
            };
            field(out, b"content-length", value.as_bytes());
            match rng.u8(0..16) {
                0 => field(out, b"content-length", n.to_string().as_bytes()),
                1 => field(out, b"content-length", (n + 1).to_string().as_bytes()),
                2 => field(out, b"transfer-encoding", b"chunked"),
                _ => {}
            }
            out.extend_from_slice(b"\r\n");
            out.extend_from_slice(&body);
        }
        Framing::Chunked => {
            let te: &[u8] = one_of(
                rng,
                &[
                    b"chunked",
                    b"chunked",
                    b"chunked",
                    b"Chunked",
                    b"chunked, chunked",
                    b"gzip, chunked",
                    b"identity",
                    b"chunked ",
                    b"\tchunked",
                    b"chunked;q=1",
                    b"x, chunked",
                ],
            );
            field(out, b"transfer-encoding", te);
            if rng.u8(0..12) == 0 {
                field(out, b"content-length", b"3");
            }
            if rng.u8(0..12) == 0 {
                field(out, b"transfer-encoding", b"chunked");
            }
            out.extend_from_slice(b"\r\n");
            for piece in body.chunks(rng.usize(1..6)) {
                let size = match rng.u8(0..24) {
                    0 => format!("{:X}", piece.len()),
                    1 => format!("0{:x}", piece.len()),
                    2 => format!("{:x} ", piece.len()),
                    3 => format!("{:x}x", piece.len()),
                    _ => format!("{:x}", piece.len()),
                };
                out.extend_from_slice(size.as_bytes());
                if rng.u8(0..6) == 0 {
                    out.extend_from_slice(b";ext");
                    if rng.bool() {
                        out.extend_from_slice(b"=");
                        out.extend_from_slice(&text(rng, 4));
                    }
                }
                out.extend_from_slice(b"\r\n");
                out.extend_from_slice(piece);
                out.extend_from_slice(b"\r\n");
            }
            out.extend_from_slice(b"0\r\n");
            if rng.u8(0..6) == 0 {
                field(out, b"x-trailer", &text(rng, 4));
            }
            out.extend_from_slice(b"\r\n");
        }
    }
}

/// Extra fields: ordinary ones, ones with odd names or values, repeated forwarding fields.
fn extra_fields(rng: &mut Rng, out: &mut Vec<u8>, request: bool) {
    for _ in 0..rng.usize(0..4) {
        match rng.u8(0..14) {
            0 if request => field(out, b"connection", connection_value(rng).as_bytes()),
            1 if request => field(
                out,
                b"te",
                one_of(rng, &[b"trailers", b"gzip", b"trailers, deflate", b""]),
            ),
            2 if request => field(
                out,
                b"upgrade",
                one_of(rng, &[b"websocket", b"h2c", b"foo"]),
            ),
            3 if request => {
                for _ in 0..rng.usize(1..4) {
                    field(
                        out,
                        b"x-forwarded-for",
                        one_of(rng, &[b"1.2.3.4", b"5.6.7.8, 9.9.9.9", b"10.0.0.1"]),
                    );
                }
            }
            4 => {
                let mut name = b"x-".to_vec();
                name.extend_from_slice(&text(rng, 3));
                field(out, &name, &text(rng, 8));
            }
            5 => field(
                out,
                b"connection",
                one_of(rng, &[b"close", b"keep-alive", b"x-a", b"Close"]),
            ),
            6 if request => field(out, b"x-request-id", b"fixed-id"),
            7 if request => field(out, b"proxy-connection", b"keep-alive"),
            8 if request => field(out, b"expect", one_of(rng, &[b"100-continue", b"foo"])),
            // An obs-fold: a value continued on the next line.
            9 => field(out, b"x-a", b"b\r\n c"),
            _ => {
                field(out, b"x-a", &text(rng, 6));
                if rng.bool() {
                    field(out, b"x-b", b"b");
                }
            }
        }
    }
}

fn one_request(rng: &mut Rng) -> (Vec<u8>, bool) {
    let method: &[u8] = one_of(
        rng,
        &[
            b"GET", b"GET", b"GET", b"GET", b"POST", b"POST", b"HEAD", b"PUT", b"DELETE",
            b"OPTIONS", b"CONNECT", b"PATCH", b"get", b"G@T", b"QUERY",
        ],
    );
    let version: &[u8] = match rng.u8(0..20) {
        0..=15 => b"HTTP/1.1",
        16 | 17 => b"HTTP/1.0",
        _ => one_of(rng, &[b"HTTP/1.2", b"http/1.1", b"HTTP/1.10", b"HTTP/2.0"]),
    };
    let mut out = method.to_vec();
    out.push(b' ');
    out.extend_from_slice(&target(rng, method));
    out.push(b' ');
    out.extend_from_slice(version);
    out.extend_from_slice(b"\r\n");
    match rng.u8(0..12) {
        0 => {}
        1 => {
            field(&mut out, b"host", &host(rng));
            field(&mut out, b"host", &host(rng));
        }
        _ => field(&mut out, b"host", &host(rng)),
    }
    extra_fields(rng, &mut out, true);
    let body_ok = method != b"GET" || rng.u8(0..6) == 0;
    framing_and_body(rng, &mut out, body_ok);
    (out, method == b"HEAD")
}

/// A request case: one request, or two or three pipelined.
pub fn request(rng: &mut Rng) -> Case {
    let n = if rng.u8(0..8) == 0 {
        rng.usize(2..4)
    } else {
        1
    };
    let mut bytes = Vec::new();
    let mut heads = Vec::new();
    for _ in 0..n {
        let (r, head) = one_request(rng);
        bytes.extend_from_slice(&r);
        heads.push(head);
    }
    Case {
        side: Side::Request,
        bytes,
        heads,
    }
}

/// A response case: an upstream's answer to `GET /` (or `HEAD /`).
pub fn response(rng: &mut Rng) -> Case {
    let head = rng.u8(0..8) == 0;
    let version: &[u8] = match rng.u8(0..20) {
        0..=15 => b"HTTP/1.1",
        16 | 17 => b"HTTP/1.0",
        _ => one_of(rng, &[b"HTTP/1.2", b"HTTP/2.0", b"http/1.1"]),
    };
    let status: &[u8] = one_of(
        rng,
        &[
            b"200", b"200", b"200", b"201", b"204", b"204", b"304", b"304", b"100", b"101", b"103",
            b"302", b"404", b"500", b"999", b"20", b"0200", b"600",
        ],
    );
    let mut out = version.to_vec();
    out.push(b' ');
    out.extend_from_slice(status);
    match rng.u8(0..8) {
        0 => {}
        1 => out.push(b' '),
        2 => {
            out.push(b' ');
            out.extend_from_slice(&text(rng, 6));
        }
        _ => out.extend_from_slice(b" OK"),
    }
    out.extend_from_slice(b"\r\n");
    extra_fields(rng, &mut out, false);
    if status.starts_with(b"1") && status != b"101" && rng.bool() {
        // An interim response, then a final one.
        out.extend_from_slice(b"\r\n");
        out.extend_from_slice(b"HTTP/1.1 200 OK\r\n");
    }
    framing_and_body(rng, &mut out, true);
    Case {
        side: Side::Response { head },
        bytes: out,
        heads: vec![head],
    }
}
