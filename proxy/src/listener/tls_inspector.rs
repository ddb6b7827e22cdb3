//! `envoy.filters.listener.tls_inspector`: before a chain is picked, peeks at the
//! connection's first bytes (`MSG_PEEK`: nothing is consumed, so a TLS-passthrough
//! `tcp_proxy` chain forwards the ClientHello untouched) for a TLS ClientHello, its SNI
//! and its ALPN offer.
//!
//! The ClientHello is parsed by rustls's `Acceptor` over a copy of the peeked bytes.
//! A connection that sends nothing within `listener_filters_timeout` is closed (or, with
//! `continue_on_listener_filters_timeout`, given to a chain as plaintext).

use std::io;
use std::sync::Arc;

use courier_proto::envoy::extensions::filters::listener::tls_inspector::v3 as pb;
use mio::event::Event;
use mio::net::TcpStream;
use mio::Interest;

use super::filter_chain_match::ConnectionFacts;
use super::http_inspector::Detected;
use super::ListenerConfig;
use crate::config::ConfigError;
use crate::overload::connection_limit::ConnectionPermit;
use crate::stats::{Counter, Store};
use crate::worker::{Ctx, EventHandler, HandlerId, Next, WorkerLocal};

const TIMER_TIMEOUT: u64 = 1;
/// Envoy's default `max_client_hello_size`.
const MAX_CLIENT_HELLO: usize = 16 * 1024;
const INITIAL_READ: usize = 1024;

/// `tls_inspector.*` stats.
pub struct TlsInspectorStats {
    tls_found: Arc<Counter>,
    tls_not_found: Arc<Counter>,
    sni_found: Arc<Counter>,
    sni_not_found: Arc<Counter>,
    alpn_found: Arc<Counter>,
    alpn_not_found: Arc<Counter>,
    client_hello_too_large: Arc<Counter>,
}

/// A compiled TLS inspector.
#[derive(Clone)]
pub struct TlsInspector {
    stats: Arc<TlsInspectorStats>,
    max_client_hello: usize,
}

impl TlsInspector {
    /// Compiles its config (at `path`).
    pub fn compile(
        cfg: &pb::TlsInspector,
        path: &str,
        store: &Store,
    ) -> Result<TlsInspector, ConfigError> {
        let unsupported = [
            (
                "enable_ja3_fingerprinting",
                cfg.enable_ja3_fingerprinting
                    .as_ref()
                    .is_some_and(|b| b.value),
            ),
            (
                "enable_ja4_fingerprinting",
                cfg.enable_ja4_fingerprinting
                    .as_ref()
                    .is_some_and(|b| b.value),
            ),
        ];
        if let Some((field, _)) = unsupported.iter().find(|(_, set)| *set) {
            return Err(ConfigError::unsupported(format!("{path}.{field}")));
        }
        let max_client_hello = cfg
            .max_client_hello_size
            .as_ref()
            .map_or(MAX_CLIENT_HELLO, |v| v.value as usize);
        if max_client_hello > 64 * 1024 {
            return Err(ConfigError::new(
                format!("{path}.max_client_hello_size"),
                format!("max_client_hello_size of {max_client_hello} is over the 65536 limit"),
            ));
        }
        let c = |s: &str| store.counter(&format!("tls_inspector.{s}"));
        Ok(TlsInspector {
            stats: Arc::new(TlsInspectorStats {
                tls_found: c("tls_found"),
                tls_not_found: c("tls_not_found"),
                sni_found: c("sni_found"),
                sni_not_found: c("sni_not_found"),
                alpn_found: c("alpn_found"),
                alpn_not_found: c("alpn_not_found"),
                client_hello_too_large: c("client_hello_too_large"),
            }),
            max_client_hello,
        })
    }
}

/// The rest of a connection's listener filters (the TLS inspector), then its chain.
/// `local` and `remote` are the addresses the earlier filters restored.
pub fn inspect_then_connect(
    ctx: &mut Ctx,
    config: &Arc<ListenerConfig>,
    stream: mio::net::TcpStream,
    local: Option<std::net::SocketAddr>,
    remote: Option<std::net::SocketAddr>,
    permit: ConnectionPermit,
) {
    // The addresses matter only to chains matching on them; skipping getsockname(2) and
    // getpeername(2) otherwise saves two of the ~20 syscalls a proxied connection costs.
    let socket_local = match local {
        None if config.match_local => super::local_addr(&stream).ok(),
        _ => None,
    };
    let socket_peer = config
        .match_peer
        .then(|| super::peer_addr(&stream).ok())
        .flatten();
    let facts = ConnectionFacts {
        port: local.or(socket_local).map_or(0, |a| a.port()),
        socket_local,
        socket_peer,
        server_name: None,
        transport_protocol: "raw_buffer",
        application_protocols: Vec::new(),
        restored_local: local,
        restored_remote: remote,
    };
    if config.tls_inspector.is_some() || config.http_inspector.is_some() {
        let listener = config.clone();
        let started = ctx.insert_handler(move |ctx, id| {
            Inspecting::start(ctx, id, stream, listener, facts, permit)
        });
        if let Err(e) = started {
            tracing::debug!(listener = %config.name, error = %e, "connection ended in the listener's inspectors");
        }
        return;
    }
    super::new_connection::new_connection(ctx, config, stream, &facts, permit);
}

/// What the peeked bytes are.
#[derive(Debug, PartialEq)]
enum Peeked {
    /// Not enough yet.
    Incomplete,
    /// Not a TLS ClientHello.
    NotTls,
    /// A ClientHello.
    Tls {
        sni: Option<String>,
        alpn: Vec<String>,
    },
}

fn inspect(bytes: &[u8]) -> Peeked {
    match bytes.first() {
        None => return Peeked::Incomplete,
        // A TLS record starts with the handshake content type.
        Some(0x16) => {}
        Some(_) => return Peeked::NotTls,
    }
    let mut acceptor = rustls::server::Acceptor::default();
    let mut rd = bytes;
    while !rd.is_empty() {
        match acceptor.read_tls(&mut rd) {
            Ok(0) => break,
            Ok(_) => {}
            Err(_) => return Peeked::NotTls,
        }
    }
    match acceptor.accept() {
        Ok(None) => Peeked::Incomplete,
        Ok(Some(accepted)) => {
            let hello = accepted.client_hello();
            Peeked::Tls {
                sni: hello.server_name().map(str::to_ascii_lowercase),
                alpn: hello
                    .alpn()
                    .map(|it| {
                        it.map(|p| String::from_utf8_lossy(p).into_owned())
                            .collect()
                    })
                    .unwrap_or_default(),
            }
        }
        Err(_) => Peeked::NotTls,
    }
}

/// A connection being inspected (by the TLS inspector, then the HTTP inspector, as the
/// listener has them), before its chain is known.
pub struct Inspecting {
    stream: Option<TcpStream>,
    config: Arc<ListenerConfig>,
    /// The TLS inspector found no ClientHello (counted once): the HTTP inspector goes on.
    not_tls: bool,
    /// What is known of the connection already (its port, the addresses earlier
    /// listener filters restored); the inspector adds what the ClientHello says.
    facts: ConnectionFacts,
    buf: Vec<u8>,
    /// The connection's share of the global connection limit.
    permit: ConnectionPermit,
}

impl Inspecting {
    /// Registers `stream` and waits for its first bytes.
    pub fn start(
        ctx: &mut Ctx,
        me: HandlerId,
        mut stream: TcpStream,
        config: Arc<ListenerConfig>,
        facts: ConnectionFacts,
        permit: ConnectionPermit,
    ) -> io::Result<Box<dyn EventHandler<WorkerLocal>>> {
        ctx.registry
            .register(&mut stream, me.token(0), Interest::READABLE)?;
        if let Some(timeout) = config.listener_filters_timeout {
            ctx.schedule(me, timeout, TIMER_TIMEOUT);
        }
        let mut me_ = Inspecting {
            not_tls: config.tls_inspector.is_none(),
            stream: Some(stream),
            config,
            facts,
            buf: vec![0; INITIAL_READ],
            permit,
        };
        // Bytes may have arrived with the connection.
        if me_.peek(ctx) == Next::Close {
            return Err(io::Error::other("connection ended during inspection"));
        }
        Ok(Box::new(me_))
    }

    fn peek(&mut self, ctx: &mut Ctx) -> Next {
        let Some(fd) = self.stream.as_ref().map(std::os::fd::AsRawFd::as_raw_fd) else {
            return Next::Close;
        };
        loop {
            // SAFETY: `buf` is initialised; recv writes at most its length.
            let n = unsafe {
                libc::recv(
                    fd,
                    self.buf.as_mut_ptr().cast(),
                    self.buf.len(),
                    libc::MSG_PEEK,
                )
            };
            if n < 0 {
                let e = io::Error::last_os_error();
                return match e.kind() {
                    io::ErrorKind::WouldBlock => Next::Continue,
                    io::ErrorKind::Interrupted => continue,
                    _ => Next::Close,
                };
            }
            let n = n as usize;
            if n == 0 {
                return Next::Close;
            }
            let worker = ctx.local.id;
            let config = self.config.clone();
            let Some(tls) = config.tls_inspector.as_ref().filter(|_| !self.not_tls) else {
                match self.inspect_http(ctx, n) {
                    Some(next) => return next,
                    None => continue,
                }
            };
            let stats = &tls.stats;
            return match inspect(&self.buf[..n]) {
                Peeked::Incomplete if n < self.buf.len() => Next::Continue,
                Peeked::Incomplete if self.buf.len() < tls.max_client_hello => {
                    let more = (self.buf.len() * 4).min(tls.max_client_hello);
                    self.buf.resize(more, 0);
                    continue;
                }
                Peeked::Incomplete => {
                    stats.client_hello_too_large.inc(worker);
                    Next::Close
                }
                Peeked::NotTls => {
                    stats.tls_not_found.inc(worker);
                    self.not_tls = true;
                    match self.inspect_http(ctx, n) {
                        Some(next) => next,
                        None => continue,
                    }
                }
                Peeked::Tls { sni, alpn } => {
                    stats.tls_found.inc(worker);
                    if sni.is_some() {
                        stats.sni_found.inc(worker)
                    } else {
                        stats.sni_not_found.inc(worker)
                    }
                    if alpn.is_empty() {
                        stats.alpn_not_found.inc(worker)
                    } else {
                        stats.alpn_found.inc(worker)
                    }
                    self.hand_over(ctx, sni, "tls", alpn)
                }
            };
        }
    }

    /// The HTTP inspector on the `n` bytes peeked (none configured: the connection goes
    /// on as plaintext): `None` to peek again with a larger buffer.
    fn inspect_http(&mut self, ctx: &mut Ctx, n: usize) -> Option<Next> {
        let config = self.config.clone();
        let Some(http) = &config.http_inspector else {
            return Some(self.hand_over(ctx, None, "raw_buffer", Vec::new()));
        };
        let found = match super::http_inspector::detect(&self.buf[..n]) {
            Detected::Incomplete if n < self.buf.len() => return Some(Next::Continue),
            Detected::Incomplete => {
                let more = (self.buf.len() * 4).min(super::http_inspector::MAX_INSPECT);
                self.buf.resize(more, 0);
                return None;
            }
            Detected::NotHttp => None,
            Detected::Protocol(p) => Some(p),
        };
        http.count(found, ctx.local.id);
        let alpn = found.map(|p| vec![p.to_owned()]).unwrap_or_default();
        Some(self.hand_over(ctx, None, "raw_buffer", alpn))
    }

    fn hand_over(
        &mut self,
        ctx: &mut Ctx,
        server_name: Option<String>,
        transport_protocol: &'static str,
        application_protocols: Vec<String>,
    ) -> Next {
        let Some(mut stream) = self.stream.take() else {
            return Next::Close;
        };
        if ctx.registry.deregister(&mut stream).is_err() {
            return Next::Close;
        }
        self.buf = Vec::new();
        let facts = ConnectionFacts {
            server_name,
            transport_protocol,
            application_protocols,
            ..std::mem::take(&mut self.facts)
        };
        let permit = std::mem::replace(&mut self.permit, ConnectionPermit::exempt());
        super::new_connection::new_connection(ctx, &self.config, stream, &facts, permit);
        Next::Close
    }
}

impl EventHandler<WorkerLocal> for Inspecting {
    fn on_ready(&mut self, _source: usize, _event: &Event, ctx: &mut Ctx, _me: HandlerId) -> Next {
        self.peek(ctx)
    }

    fn on_timer(&mut self, tag: u64, ctx: &mut Ctx, _me: HandlerId) -> Next {
        if tag != TIMER_TIMEOUT {
            return Next::Continue;
        }
        if self.config.filters_timed_out(ctx.local.id) {
            return self.hand_over(ctx, None, "raw_buffer", Vec::new());
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
    fn plaintext_is_told_apart_at_the_first_byte() {
        assert_eq!(inspect(b"GET / HTTP/1.1\r\n"), Peeked::NotTls);
        assert_eq!(inspect(b""), Peeked::Incomplete);
        // A record header announcing more than is there yet.
        assert_eq!(
            inspect(&[0x16, 0x03, 0x01, 0x02, 0x00, 0x01]),
            Peeked::Incomplete
        );
    }
}
