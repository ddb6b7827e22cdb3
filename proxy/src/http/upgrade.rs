//! Upgraded connections (`Upgrade: websocket` and other `upgrade_configs` types): the
//! request goes upstream on a connection of its own; once the upstream answers
//! `101 Switching Protocols`, the downstream and upstream connections become one byte
//! tunnel until both directions have ended, as Envoy's upgrade handling.

use std::future::Future;
use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};

use hyper::rt::{Read, ReadBufCursor, Write};
use hyper::upgrade::OnUpgrade;
use send_wrapper::SendWrapper;

use super::h1_server::DownstreamUpgrade;
use crate::event::rt;

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
pub fn tunnel(downstream: DownstreamUpgrade, upstream: OnUpgrade, on_end: impl FnOnce() + 'static) {
    rt::spawn(async move {
        let downstream = downstream
            .await
            .map_err(|_| "downstream: closed before the 101 was written".to_string());
        let upstream = upstream.await.map_err(|e| format!("upstream: {e}"));
        match (downstream, upstream) {
            (Ok(down), Ok(up)) => {
                if let Err(e) = (Splice {
                    a: down,
                    b: up,
                    a_to_b: Direction::default(),
                    b_to_a: Direction::default(),
                })
                .await
                {
                    tracing::debug!(error = %e, "upgraded connection ended with an error");
                }
            }
            (Err(e), _) | (_, Err(e)) => {
                tracing::debug!(error = %e, "connection upgrade failed");
            }
        }
        on_end();
    });
}

const BUF: usize = 16 * 1024;

/// One direction of the tunnel: read into the buffer, write it out, half-close on EOF.
struct Direction {
    buf: Box<[u8; BUF]>,
    start: usize,
    end: usize,
    eof: bool,
    done: bool,
}

impl Default for Direction {
    fn default() -> Self {
        Direction {
            buf: Box::new([0; BUF]),
            start: 0,
            end: 0,
            eof: false,
            done: false,
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
            self.start = 0;
            self.end = n;
            if n == 0 {
                self.eof = true;
            }
        }
    }
}

/// Both directions between two upgraded connections, until both have ended.
struct Splice<A, B> {
    a: A,
    b: B,
    a_to_b: Direction,
    b_to_a: Direction,
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
            Poll::Ready(Ok(()))
        } else {
            Poll::Pending
        }
    }
}
