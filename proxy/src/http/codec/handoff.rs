//! How a downstream connection leaves its codec for a tunnel once an upgrade is accepted:
//! the upgrade test, the handle the connection manager waits on, the link that keeps the
//! tunnel one of the listener's connections, and the socket with what the client already
//! sent in front.

use std::future::Future;
use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};

use futures::channel::oneshot;
use http::header;
use hyper::upgrade::OnUpgrade;

use crate::transport_socket::Transport;

/// Whether a request asks for an upgrade: an `Upgrade` field and `upgrade` among the
/// `Connection` tokens (as Envoy's `Utility::isUpgrade`). A stray `Upgrade` alone is a
/// hop-by-hop field like any other, dropped on the way upstream.
pub fn is_upgrade(headers: &http::HeaderMap) -> bool {
    headers.contains_key(header::UPGRADE)
        && headers
            .get_all(header::CONNECTION)
            .iter()
            .any(|v| crate::http::codec::fields::has_token(v, b"upgrade"))
}

/// The downstream half of an upgrade, delivered once the response accepting it is sent.
pub enum DownstreamUpgrade {
    /// HTTP/1.1: the connection (with what the client sent past the request head in
    /// front), once the `101` is written, and the tunnel's end of its [`TunnelLink`].
    Http1(oneshot::Receiver<(PrefixedIo, TunnelEnd)>),
    /// HTTP/2 extended CONNECT: the stream, once the `200` is sent.
    Http2(OnUpgrade),
}

/// What an HTTP/1.1 connection's handler keeps once a tunnel has taken its socket, so the
/// tunnel stays one of the listener's connections: dropping the link (the handler closed,
/// e.g. at the end of a listener's drain) ends the tunnel, and the link resolves when the
/// tunnel ends by itself. (An HTTP/2 tunnel is a stream of a connection its handler still
/// drives, and ends with it.)
pub struct TunnelLink {
    ended: oneshot::Receiver<()>,
    _cancel: oneshot::Sender<()>,
}

/// The tunnel's end of a [`TunnelLink`].
pub struct TunnelEnd {
    cancel: oneshot::Receiver<()>,
    _ended: oneshot::Sender<()>,
}

impl TunnelEnd {
    /// Resolves when the connection's handler drops its link (the tunnel must end).
    pub fn cancelled(self) -> Pin<Box<dyn Future<Output = ()>>> {
        // Dropping `_ended` tells the link the tunnel is over: the future keeps it for as
        // long as it lives.
        let TunnelEnd { cancel, _ended } = self;
        Box::pin(async move {
            let _ended = _ended;
            let _ = cancel.await;
        })
    }
}

/// A connected [`TunnelLink`] and [`TunnelEnd`].
pub fn tunnel_link() -> (TunnelLink, TunnelEnd) {
    let (cancel_tx, cancel) = oneshot::channel();
    let (ended_tx, ended) = oneshot::channel();
    (
        TunnelLink {
            ended,
            _cancel: cancel_tx,
        },
        TunnelEnd {
            cancel,
            _ended: ended_tx,
        },
    )
}

impl Future for TunnelLink {
    type Output = ();

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        // The tunnel never sends: its end is dropped when it is over.
        Pin::new(&mut self.get_mut().ended).poll(cx).map(|_| ())
    }
}

/// A transport with bytes already read in front (the protocol sniff, or what a client sent
/// after an upgrade request's head).
pub struct PrefixedIo {
    prefix: Vec<u8>,
    pos: usize,
    io: Transport,
}

impl PrefixedIo {
    /// `io`, read from after `prefix`.
    pub fn new(prefix: Vec<u8>, io: Transport) -> Self {
        PrefixedIo { prefix, pos: 0, io }
    }

    /// [`hyper::rt::Read::poll_read`], showing `observe` the bytes read (the prefix's
    /// included) before they are handed over.
    pub fn poll_read_observed(
        &mut self,
        cx: &mut Context<'_>,
        mut buf: hyper::rt::ReadBufCursor<'_>,
        observe: impl FnOnce(&[u8]),
    ) -> Poll<io::Result<()>> {
        if self.pos < self.prefix.len() {
            let n = (self.prefix.len() - self.pos).min(buf.remaining());
            let bytes = &self.prefix[self.pos..self.pos + n];
            observe(bytes);
            buf.put_slice(bytes);
            self.pos += n;
            if self.pos == self.prefix.len() {
                self.prefix = Vec::new();
                self.pos = 0;
            }
            return Poll::Ready(Ok(()));
        }
        self.io.poll_read_observed(cx, buf, observe)
    }
}

impl hyper::rt::Read for PrefixedIo {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        mut buf: hyper::rt::ReadBufCursor<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if this.pos < this.prefix.len() {
            let n = (this.prefix.len() - this.pos).min(buf.remaining());
            buf.put_slice(&this.prefix[this.pos..this.pos + n]);
            this.pos += n;
            if this.pos == this.prefix.len() {
                this.prefix = Vec::new();
                this.pos = 0;
            }
            return Poll::Ready(Ok(()));
        }
        Pin::new(&mut this.io).poll_read(cx, buf)
    }
}

courier_runtime::write_through!(PrefixedIo, io);
