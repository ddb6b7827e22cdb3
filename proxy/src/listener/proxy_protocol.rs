//! `envoy.filters.listener.proxy_protocol`: reads the PROXY protocol header (v1 text or
//! v2 binary) a load balancer puts in front of a connection, and takes the client and
//! destination addresses it carries as the connection's own.
//!
//! The header is peeked (`MSG_PEEK`) until it is whole, then exactly its bytes are read
//! off the socket, so the next listener filter (the TLS inspector) and the chain see the
//! connection's own first bytes. A connection without a header is closed, unless
//! `allow_requests_without_proxy_protocol`; a malformed one is closed. Stats as Envoy's:
//! `proxy_proto.[<stat_prefix>.]versions.v1|v2.found|error|disallowed`,
//! `proxy_proto.[<stat_prefix>.]not_found_allowed|not_found_disallowed`, and the legacy
//! `downstream_cx_proxy_proto_error`.

use std::io::{self, Read};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::sync::Arc;

use courier_proto::envoy::extensions::filters::listener::proxy_protocol::v3 as pb;
use mio::event::Event;
use mio::net::TcpStream;
use mio::Interest;

use super::ListenerConfig;
use crate::config::ConfigError;
use crate::overload::connection_limit::ConnectionPermit;
use crate::stats::{Counter, Store};
use crate::worker::{Ctx, EventHandler, HandlerId, Next, WorkerLocal};

const TIMER_TIMEOUT: u64 = 1;
/// The v2 signature.
const V2_SIGNATURE: &[u8; 12] = b"\r\n\r\n\0\r\nQUIT\n";
/// The longest v1 header, `\r\n` included.
const V1_MAX: usize = 107;

/// Stats of one PROXY protocol version.
struct VersionStats {
    found: Arc<Counter>,
    error: Arc<Counter>,
    disallowed: Arc<Counter>,
}

/// The filter's stats.
struct Stats {
    v1: VersionStats,
    v2: VersionStats,
    not_found_allowed: Arc<Counter>,
    not_found_disallowed: Arc<Counter>,
    legacy_error: Arc<Counter>,
}

/// A compiled `ProxyProtocol`.
#[derive(Clone)]
pub struct ProxyProtocol {
    stats: Arc<Stats>,
    allow_without: bool,
    allow_v1: bool,
    allow_v2: bool,
}

impl ProxyProtocol {
    /// Compiles the filter's config (at `path`).
    pub fn compile(
        cfg: &pb::ProxyProtocol,
        path: &str,
        store: &Store,
    ) -> Result<ProxyProtocol, ConfigError> {
        // TLVs go to metadata or onward: neither is built.
        for (field, set) in [
            ("rules", !cfg.rules.is_empty()),
            ("pass_through_tlvs", cfg.pass_through_tlvs.is_some()),
            ("tlv_location", cfg.tlv_location != 0),
        ] {
            if set {
                return Err(ConfigError::unsupported(format!("{path}.{field}")));
            }
        }
        let disallowed = |v: i32| cfg.disallowed_versions.contains(&v);
        let (allow_v1, allow_v2) = (!disallowed(0), !disallowed(1));
        if !allow_v1 && !allow_v2 {
            return Err(ConfigError::new(
                format!("{path}.disallowed_versions"),
                "Proxy Protocol filter is misconfigured: all versions are disallowed",
            ));
        }
        let prefix = if cfg.stat_prefix.is_empty() {
            "proxy_proto.".to_string()
        } else {
            format!("proxy_proto.{}.", cfg.stat_prefix)
        };
        let version = |v: &str| VersionStats {
            found: store.counter(&format!("{prefix}versions.{v}.found")),
            error: store.counter(&format!("{prefix}versions.{v}.error")),
            disallowed: store.counter(&format!("{prefix}versions.{v}.disallowed")),
        };
        Ok(ProxyProtocol {
            stats: Arc::new(Stats {
                v1: version("v1"),
                v2: version("v2"),
                not_found_allowed: store.counter(&format!("{prefix}not_found_allowed")),
                not_found_disallowed: store.counter(&format!("{prefix}not_found_disallowed")),
                legacy_error: store.counter("downstream_cx_proxy_proto_error"),
            }),
            allow_without: cfg.allow_requests_without_proxy_protocol,
            allow_v1,
            allow_v2,
        })
    }
}

/// What the first bytes of a connection are.
#[derive(Debug, PartialEq)]
pub enum Header {
    /// Not enough bytes yet.
    Incomplete,
    /// Not a PROXY protocol header.
    None,
    /// A malformed header of this version.
    Invalid(u8),
    /// A header of `len` bytes, of `version`, with the (source, destination) addresses
    /// it carries (`None`: `UNKNOWN` or `LOCAL`: the connection's own are kept).
    Found {
        /// Its length.
        len: usize,
        /// 1 or 2.
        version: u8,
        /// Source and destination.
        addresses: Option<(SocketAddr, SocketAddr)>,
    },
}

/// The version a connection's first bytes announce, once they are enough to tell.
fn version_of(buf: &[u8]) -> Option<u8> {
    if buf.starts_with(V2_SIGNATURE) {
        Some(2)
    } else if buf.starts_with(b"PROXY ") {
        Some(1)
    } else {
        None
    }
}

/// Parses the start of a connection.
pub fn parse(buf: &[u8]) -> Header {
    const V1_PREFIX: &[u8] = b"PROXY ";
    let n = buf.len().min(V2_SIGNATURE.len());
    if buf[..n] == V2_SIGNATURE[..n] {
        return if buf.len() < 16 {
            Header::Incomplete
        } else {
            parse_v2(buf)
        };
    }
    let n = buf.len().min(V1_PREFIX.len());
    if buf[..n] != V1_PREFIX[..n] || n == 0 {
        return if buf.is_empty() {
            Header::Incomplete
        } else {
            Header::None
        };
    }
    match buf.windows(2).take(V1_MAX - 1).position(|w| w == b"\r\n") {
        Some(end) => parse_v1(&buf[..end], end + 2),
        None if buf.len() >= V1_MAX => Header::Invalid(1),
        None => Header::Incomplete,
    }
}

fn parse_v1(line: &[u8], len: usize) -> Header {
    let Ok(line) = std::str::from_utf8(line) else {
        return Header::Invalid(1);
    };
    let fields: Vec<&str> = line.split(' ').collect();
    match fields.as_slice() {
        ["PROXY", "UNKNOWN", ..] => Header::Found {
            len,
            version: 1,
            addresses: None,
        },
        ["PROXY", proto @ ("TCP4" | "TCP6"), src, dst, sport, dport] => {
            let v4 = *proto == "TCP4";
            let ip = |s: &str| -> Option<IpAddr> {
                if v4 {
                    s.parse::<Ipv4Addr>().ok().map(IpAddr::V4)
                } else {
                    s.parse::<Ipv6Addr>().ok().map(IpAddr::V6)
                }
            };
            let port = |s: &str| -> Option<u16> {
                (s.bytes().all(|b| b.is_ascii_digit()) && !s.is_empty())
                    .then(|| s.parse().ok())
                    .flatten()
            };
            match (ip(src), ip(dst), port(sport), port(dport)) {
                (Some(s), Some(d), Some(sp), Some(dp)) => Header::Found {
                    len,
                    version: 1,
                    addresses: Some((SocketAddr::new(s, sp), SocketAddr::new(d, dp))),
                },
                _ => Header::Invalid(1),
            }
        }
        _ => Header::Invalid(1),
    }
}

fn parse_v2(buf: &[u8]) -> Header {
    let ver_cmd = buf[12];
    if ver_cmd >> 4 != 2 {
        return Header::Invalid(2);
    }
    let family = buf[13];
    let body = usize::from(u16::from_be_bytes([buf[14], buf[15]]));
    let len = 16 + body;
    if buf.len() < len {
        return Header::Incomplete;
    }
    let body = &buf[16..len];
    match ver_cmd & 0x0f {
        // LOCAL: the load balancer's own connection (a health check); addresses kept.
        0 => Header::Found {
            len,
            version: 2,
            addresses: None,
        },
        1 => {
            let addresses = match family {
                // TCP over IPv4.
                0x11 if body.len() >= 12 => {
                    let ip = |o: usize| {
                        IpAddr::V4(Ipv4Addr::new(
                            body[o],
                            body[o + 1],
                            body[o + 2],
                            body[o + 3],
                        ))
                    };
                    let port = |o: usize| u16::from_be_bytes([body[o], body[o + 1]]);
                    Some((
                        SocketAddr::new(ip(0), port(8)),
                        SocketAddr::new(ip(4), port(10)),
                    ))
                }
                // TCP over IPv6.
                0x21 if body.len() >= 36 => {
                    let ip = |o: usize| {
                        let mut b = [0u8; 16];
                        b.copy_from_slice(&body[o..o + 16]);
                        IpAddr::V6(Ipv6Addr::from(b))
                    };
                    let port = |o: usize| u16::from_be_bytes([body[o], body[o + 1]]);
                    Some((
                        SocketAddr::new(ip(0), port(32)),
                        SocketAddr::new(ip(16), port(34)),
                    ))
                }
                // UNSPEC: addresses kept.
                0x00 => None,
                // Too short, UDP or AF_UNIX: Envoy closes the connection.
                _ => return Header::Invalid(2),
            };
            Header::Found {
                len,
                version: 2,
                addresses,
            }
        }
        _ => Header::Invalid(2),
    }
}

/// A connection whose PROXY protocol header is being read.
pub struct Reading {
    stream: Option<TcpStream>,
    config: Arc<ListenerConfig>,
    filter: ProxyProtocol,
    restored_local: Option<SocketAddr>,
    buf: Vec<u8>,
    /// The connection's share of the global connection limit.
    permit: ConnectionPermit,
}

impl Reading {
    /// Starts reading `stream`'s header.
    pub fn start(
        ctx: &mut Ctx,
        me: HandlerId,
        mut stream: TcpStream,
        config: Arc<ListenerConfig>,
        filter: ProxyProtocol,
        restored_local: Option<SocketAddr>,
        permit: ConnectionPermit,
    ) -> io::Result<Box<dyn EventHandler<WorkerLocal>>> {
        ctx.registry
            .register(&mut stream, me.token(0), Interest::READABLE)?;
        if let Some(timeout) = config.listener_filters_timeout {
            ctx.schedule(me, timeout, TIMER_TIMEOUT);
        }
        let mut reading = Reading {
            stream: Some(stream),
            config,
            filter,
            restored_local,
            buf: vec![0; 256],
            permit,
        };
        if reading.peek(ctx) == Next::Close {
            return Err(io::Error::other(
                "connection ended in the PROXY protocol filter",
            ));
        }
        Ok(Box::new(reading))
    }

    fn peek(&mut self, ctx: &mut Ctx) -> Next {
        let Some(stream) = self.stream.as_ref() else {
            return Next::Close;
        };
        let worker = ctx.local.id;
        let n = match stream.peek(&mut self.buf) {
            Ok(0) => return Next::Close,
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Next::Continue,
            Err(_) => return Next::Close,
        };
        let stats = &self.filter.stats;
        // As Envoy: a disallowed version is known by its signature, before its header is
        // parsed.
        if let Some(version) = version_of(&self.buf[..n]) {
            let (s, allowed) = if version == 1 {
                (&stats.v1, self.filter.allow_v1)
            } else {
                (&stats.v2, self.filter.allow_v2)
            };
            if !allowed {
                if self.filter.allow_without {
                    // Not looked for: its bytes reach the chain as they are.
                    stats.not_found_allowed.inc(worker);
                    return self.hand_over(ctx, None);
                }
                s.found.inc(worker);
                s.disallowed.inc(worker);
                stats.legacy_error.inc(worker);
                return Next::Close;
            }
        }
        match parse(&self.buf[..n]) {
            Header::Incomplete => {
                if n == self.buf.len() {
                    // A v2 header longer than the buffer: peek again with room for it.
                    let want = if n >= 16 {
                        16 + usize::from(u16::from_be_bytes([self.buf[14], self.buf[15]]))
                    } else {
                        self.buf.len() * 2
                    };
                    self.buf.resize(want.max(self.buf.len() + 1), 0);
                    return self.peek(ctx);
                }
                Next::Continue
            }
            Header::None => {
                if self.filter.allow_without {
                    stats.not_found_allowed.inc(worker);
                    self.hand_over(ctx, None)
                } else {
                    stats.not_found_disallowed.inc(worker);
                    stats.legacy_error.inc(worker);
                    Next::Close
                }
            }
            Header::Invalid(v) => {
                let s = if v == 1 { &stats.v1 } else { &stats.v2 };
                s.error.inc(worker);
                stats.legacy_error.inc(worker);
                Next::Close
            }
            Header::Found {
                len,
                version,
                addresses,
            } => {
                let s = if version == 1 { &stats.v1 } else { &stats.v2 };
                s.found.inc(worker);
                // Take exactly the header off the socket: what follows is the client's.
                let mut header = vec![0u8; len];
                let Some(stream) = self.stream.as_mut() else {
                    return Next::Close;
                };
                if stream.read_exact(&mut header).is_err() {
                    return Next::Close;
                }
                self.hand_over(ctx, addresses)
            }
        }
    }

    fn hand_over(&mut self, ctx: &mut Ctx, addresses: Option<(SocketAddr, SocketAddr)>) -> Next {
        let Some(mut stream) = self.stream.take() else {
            return Next::Close;
        };
        if ctx.registry.deregister(&mut stream).is_err() {
            return Next::Close;
        }
        let (remote, local) = match addresses {
            Some((src, dst)) => (Some(src), Some(dst)),
            None => (None, self.restored_local),
        };
        let permit = std::mem::replace(&mut self.permit, ConnectionPermit::exempt());
        super::tls_inspector::inspect_then_connect(
            ctx,
            &self.config,
            stream,
            local,
            remote,
            permit,
        );
        Next::Close
    }
}

impl EventHandler<WorkerLocal> for Reading {
    fn on_ready(&mut self, _source: usize, _event: &Event, ctx: &mut Ctx, _me: HandlerId) -> Next {
        self.peek(ctx)
    }

    fn on_timer(&mut self, tag: u64, ctx: &mut Ctx, _me: HandlerId) -> Next {
        if tag != TIMER_TIMEOUT {
            return Next::Continue;
        }
        if self.config.filters_timed_out(ctx.local.id) {
            return self.hand_over(ctx, None);
        }
        Next::Close
    }

    fn on_drain(&mut self, _ctx: &mut Ctx, _me: HandlerId) -> Next {
        Next::Close
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn v1_headers_as_the_spec_writes_them() {
        let h = b"PROXY TCP4 192.0.2.1 198.51.100.2 56324 443\r\nGET /";
        assert_eq!(
            parse(h),
            Header::Found {
                len: 45,
                version: 1,
                addresses: Some((
                    "192.0.2.1:56324".parse().unwrap_or_else(|_| unreachable!()),
                    "198.51.100.2:443"
                        .parse()
                        .unwrap_or_else(|_| unreachable!())
                )),
            }
        );
        assert_eq!(parse(b"PROXY TCP4 192.0.2.1"), Header::Incomplete);
        assert_eq!(parse(b"PROX"), Header::Incomplete);
        assert_eq!(parse(b"GET / HTTP/1.1\r\n"), Header::None);
        assert_eq!(
            parse(b"PROXY TCP4 1.2.3 4.5.6.7 1 2\r\n"),
            Header::Invalid(1)
        );
        assert!(matches!(
            parse(b"PROXY UNKNOWN\r\n"),
            Header::Found {
                addresses: None,
                ..
            }
        ));
    }

    #[test]
    fn v2_headers_as_the_spec_writes_them() {
        let mut h = V2_SIGNATURE.to_vec();
        h.extend_from_slice(&[
            0x21, 0x11, 0, 12, 10, 0, 0, 1, 10, 0, 0, 2, 0x1f, 0x90, 0, 80,
        ]);
        assert_eq!(
            parse(&h),
            Header::Found {
                len: 28,
                version: 2,
                addresses: Some((
                    "10.0.0.1:8080".parse().unwrap_or_else(|_| unreachable!()),
                    "10.0.0.2:80".parse().unwrap_or_else(|_| unreachable!())
                )),
            }
        );
        assert_eq!(parse(&h[..20]), Header::Incomplete);
        let mut local = V2_SIGNATURE.to_vec();
        local.extend_from_slice(&[0x20, 0x00, 0, 0]);
        assert!(matches!(
            parse(&local),
            Header::Found {
                addresses: None,
                ..
            }
        ));
        let mut bad = V2_SIGNATURE.to_vec();
        bad.extend_from_slice(&[0x31, 0x11, 0, 0]);
        assert_eq!(parse(&bad), Header::Invalid(2));
    }
}
