//! Upgraded connections (`Upgrade: websocket` and other `upgrade_configs` types): the
//! request goes upstream on a connection of its own; once the upstream answers
//! `101 Switching Protocols`, the downstream and upstream connections become one byte
//! tunnel until both directions have ended, as Envoy's upgrade handling.
//!
//! Downstream, an upgrade arrives either as HTTP/1.1 `Upgrade` or as an HTTP/2 extended
//! CONNECT (RFC 8441, with `http2_protocol_options.allow_connect`). As Envoy's HTTP/2 codec
//! does, the connection manager turns the latter into the HTTP/1.1 form (`GET` with
//! `upgrade: <protocol>`) on the way in ([`h2_to_h1_request`]) and the upstream's `101`
//! into a `200` on the way out ([`h1_to_h2_response`]); the tunnel is then the HTTP/2
//! stream. Upstream, the request goes as it is to an HTTP/1.1 cluster and as an extended
//! CONNECT to an HTTP/2 one ([`send_extended_connect`]).

use std::future::Future;
use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};

use http::{header, HeaderValue, Method, Request, Response, StatusCode};
use hyper::rt::{Read, ReadBufCursor, Write};
use hyper::upgrade::OnUpgrade;
use send_wrapper::SendWrapper;

use crate::http::codec::body::ProxyBody;
use crate::http::codec::handoff::DownstreamUpgrade;
use crate::http::conn_manager::stream_idle::StreamIdle;
use crate::transport_socket::Transport;
use courier_runtime::event::rt;

/// Rewrites an HTTP/2 extended CONNECT (`:protocol` set) into the HTTP/1.1 upgrade
/// request Envoy's codec makes of it, and returns the stream's upgrade handle; `None` (and
/// the request untouched) for anything else.
pub fn h2_to_h1_request<B>(req: &mut Request<B>) -> Option<DownstreamUpgrade> {
    if req.method() != Method::CONNECT {
        return None;
    }
    let protocol = req.extensions_mut().remove::<hyper::ext::Protocol>()?;
    let value = HeaderValue::from_str(protocol.as_str()).ok()?;
    *req.method_mut() = Method::GET;
    req.headers_mut().insert(header::UPGRADE, value);
    req.headers_mut()
        .insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
    Some(DownstreamUpgrade::Http2(hyper::upgrade::on(req)))
}

/// The answer to an HTTP/2 upgrade: a `101` becomes `200` without the HTTP/1.1
/// connection-level headers (HTTP/2 forbids them) and without a body, so the stream stays
/// open for the tunnel; any other response goes back as it is.
pub fn h1_to_h2_response(resp: &mut Response<ProxyBody>) {
    if resp.status() != StatusCode::SWITCHING_PROTOCOLS {
        return;
    }
    *resp.status_mut() = StatusCode::OK;
    resp.headers_mut().remove(header::UPGRADE);
    resp.headers_mut().remove(header::CONNECTION);
    resp.headers_mut().remove(header::CONTENT_LENGTH);
    *resp.body_mut() = ProxyBody::empty();
}

/// Why an upgrade request got no response from its upstream.
#[derive(Debug, thiserror::Error)]
pub enum UpgradeSendError {
    /// The HTTP/2 handshake failed.
    #[error("HTTP/2 handshake: {0}")]
    Handshake(hyper::Error),
    /// The request has no `Host` or `Upgrade` to make the extended CONNECT of.
    #[error("upgrade request without {0}")]
    Request(&'static str),
    /// The stream was refused or reset before a response.
    #[error("upstream reset: {0}")]
    Reset(hyper::Error),
}

/// Sends an upgrade request (HTTP/1.1 form: `Upgrade`, `Host`, origin-form target) to an
/// HTTP/2 upstream as an extended CONNECT, on `io` of its own, as Envoy's HTTP/2 upstream
/// codec does: `:protocol` from `Upgrade`, `:authority` from `Host`. The `2xx` that opens
/// the stream comes back as the `101` (with `upgrade` and `connection`) the rest of the
/// upgrade path expects; any other response as it is.
pub async fn send_extended_connect(
    io: Transport,
    req: Request<ProxyBody>,
) -> Result<Response<hyper::body::Incoming>, UpgradeSendError> {
    let (mut parts, _) = req.into_parts();
    let protocol = parts
        .headers
        .remove(header::UPGRADE)
        .ok_or(UpgradeSendError::Request("Upgrade"))?;
    let host = parts
        .headers
        .remove(header::HOST)
        .ok_or(UpgradeSendError::Request("Host"))?;
    parts.headers.remove(header::CONNECTION);
    let path = parts
        .uri
        .path_and_query()
        .map_or("/", http::uri::PathAndQuery::as_str);
    parts.uri = http::Uri::builder()
        .scheme("http")
        .authority(host.as_bytes())
        .path_and_query(path)
        .build()
        .map_err(|_| UpgradeSendError::Request("a valid Host"))?;
    parts.method = Method::CONNECT;
    parts.version = http::Version::HTTP_2;
    let name = protocol
        .to_str()
        .map_err(|_| UpgradeSendError::Request("a valid Upgrade"))?;
    parts.extensions.insert(hyper::ext::Protocol::from(name));
    let (mut sender, conn) = hyper::client::conn::http2::Builder::new(rt::LocalExec)
        .timer(rt::RtTimer)
        .handshake::<_, ProxyBody>(io)
        .await
        .map_err(UpgradeSendError::Handshake)?;
    // Runs until the tunnel's stream (its only one) is over.
    rt::spawn(async move {
        if let Err(e) = conn.await {
            tracing::debug!(error = %e, "upstream extended CONNECT connection closed");
        }
    });
    let mut resp = sender
        .send_request(Request::from_parts(parts, ProxyBody::empty()))
        .await
        .map_err(UpgradeSendError::Reset)?;
    if resp.status().is_success() {
        *resp.status_mut() = StatusCode::SWITCHING_PROTOCOLS;
        resp.headers_mut().insert(header::UPGRADE, protocol);
        resp.headers_mut()
            .insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
    }
    Ok(resp)
}

/// An I/O object of this worker made `Send` for hyper's upgrade machinery, which boxes
/// upgraded connections as `dyn Send`. Ours never leave the worker that owns them (the
/// runtime is thread-local); `SendWrapper` checks that on every access.
pub struct WorkerIo<T>(SendWrapper<T>);

impl<T> WorkerIo<T> {
    /// Wraps `io`, owned by the current worker.
    pub fn new(io: T) -> Self {
        WorkerIo(SendWrapper::new(io))
    }
}

impl<T: Read + Unpin> Read for WorkerIo<T> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: ReadBufCursor<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut *self.get_mut().0).poll_read(cx, buf)
    }
}

impl<T: Write + Unpin> Write for WorkerIo<T> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut *self.get_mut().0).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut *self.get_mut().0).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.0.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut *self.get_mut().0).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut *self.get_mut().0).poll_shutdown(cx)
    }
}

/// Joins the two sides once both upgrades complete, on this worker; `on_end` runs when the
/// tunnel closes.
pub fn tunnel(
    downstream: DownstreamUpgrade,
    upstream: OnUpgrade,
    idle: StreamIdle,
    on_end: impl FnOnce() + 'static,
) {
    rt::spawn(async move {
        let upstream = upstream.await.map_err(|e| format!("upstream: {e}"));
        let spliced = match downstream {
            DownstreamUpgrade::Http1(rx) => match (rx.await, upstream) {
                (Ok((down, end)), Ok(up)) => {
                    let spliced = std::pin::pin!(splice(down, up, idle));
                    match futures::future::select(spliced, end.cancelled()).await {
                        futures::future::Either::Left((r, _)) => r,
                        futures::future::Either::Right(_) => {
                            Err("closed with its connection (listener drained)".into())
                        }
                    }
                }
                (Err(_), _) => Err("downstream: closed before the 101 was written".into()),
                (_, Err(e)) => Err(e),
            },
            DownstreamUpgrade::Http2(on) => match (on.await, upstream) {
                (Ok(down), Ok(up)) => splice(down, up, idle).await,
                (Err(e), _) => Err(format!("downstream: {e}")),
                (_, Err(e)) => Err(e),
            },
        };
        if let Err(e) = spliced {
            tracing::debug!(error = %e, "upgraded connection ended with an error");
        }
        on_end();
    });
}

async fn splice<A, B>(a: A, b: B, idle: StreamIdle) -> Result<(), String>
where
    A: Read + Write + Unpin,
    B: Read + Write + Unpin,
{
    Splice {
        a,
        b,
        a_to_b: Direction::default(),
        b_to_a: Direction::default(),
        idle,
    }
    .await
    .map_err(|e| e.to_string())
}

const BUF: usize = 16 * 1024;

/// One direction of the tunnel: read into the buffer, write it out, half-close on EOF.
struct Direction {
    buf: Box<[u8; BUF]>,
    start: usize,
    end: usize,
    eof: bool,
    done: bool,
    /// Bytes were read since the tunnel last looked.
    moved: bool,
}

impl Default for Direction {
    fn default() -> Self {
        Direction {
            buf: Box::new([0; BUF]),
            start: 0,
            end: 0,
            eof: false,
            done: false,
            moved: false,
        }
    }
}

impl Direction {
    /// Moves bytes from `from` to `to` until it would block; ready once the direction ended.
    fn poll_copy<F: Read + Unpin, T: Write + Unpin>(
        &mut self,
        cx: &mut Context<'_>,
        from: &mut F,
        to: &mut T,
    ) -> Poll<io::Result<()>> {
        loop {
            if self.done {
                return Poll::Ready(Ok(()));
            }
            if self.start < self.end {
                let n = match Pin::new(&mut *to).poll_write(cx, &self.buf[self.start..self.end]) {
                    Poll::Ready(r) => r?,
                    Poll::Pending => return Poll::Pending,
                };
                if n == 0 {
                    return Poll::Ready(Err(io::ErrorKind::WriteZero.into()));
                }
                self.start += n;
                continue;
            }
            if self.eof {
                // Everything read was written: pass the half-close on.
                match Pin::new(&mut *to).poll_shutdown(cx) {
                    Poll::Ready(r) => {
                        self.done = true;
                        return Poll::Ready(r);
                    }
                    Poll::Pending => return Poll::Pending,
                }
            }
            let mut read = hyper::rt::ReadBuf::new(&mut self.buf[..]);
            match Pin::new(&mut *from).poll_read(cx, read.unfilled()) {
                Poll::Ready(r) => r?,
                Poll::Pending => return Poll::Pending,
            }
            let n = read.filled().len();
            self.moved = true;
            self.start = 0;
            self.end = n;
            if n == 0 {
                self.eof = true;
            }
        }
    }
}

/// Both directions between two upgraded connections, until both have ended or the tunnel
/// has been idle for the stream idle timeout (as Envoy, whose upgraded stream keeps it).
struct Splice<A, B> {
    a: A,
    b: B,
    a_to_b: Direction,
    b_to_a: Direction,
    idle: StreamIdle,
}

impl<A: Read + Write + Unpin, B: Read + Write + Unpin> Future for Splice<A, B> {
    type Output = io::Result<()>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.get_mut();
        let forward = this.a_to_b.poll_copy(cx, &mut this.a, &mut this.b);
        if let Poll::Ready(Err(e)) = forward {
            return Poll::Ready(Err(e));
        }
        let backward = this.b_to_a.poll_copy(cx, &mut this.b, &mut this.a);
        if let Poll::Ready(Err(e)) = backward {
            return Poll::Ready(Err(e));
        }
        if this.a_to_b.done && this.b_to_a.done {
            return Poll::Ready(Ok(()));
        }
        if std::mem::take(&mut this.a_to_b.moved) | std::mem::take(&mut this.b_to_a.moved) {
            this.idle.touch();
        }
        match this.idle.poll_expired(cx) {
            Poll::Ready(expiry) => Poll::Ready(Err(io::Error::new(
                io::ErrorKind::TimedOut,
                expiry.message(),
            ))),
            Poll::Pending => Poll::Pending,
        }
    }
}
