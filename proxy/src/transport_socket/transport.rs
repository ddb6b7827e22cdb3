//! [`Transport`]: the byte stream a connection's codec reads and writes — the socket
//! itself (`raw_buffer`, Envoy's default, at no cost), or TLS over it.

use std::io::{self, IoSlice, Read, Write};
use std::mem::MaybeUninit;
use std::pin::Pin;
use std::task::{Context, Poll};

use courier_runtime::event::rt::TcpIo;

use super::tls::TlsSession;

/// A connection's transport on a worker.
pub enum Transport {
    /// `envoy.transport_sockets.raw_buffer`.
    Raw(TcpIo),
    /// `envoy.transport_sockets.tls`.
    Tls(Box<TlsIo>),
}

/// TLS over a worker socket.
pub struct TlsIo {
    tcp: TcpIo,
    session: TlsSession,
}

/// The socket seen as blocking-style `Read + Write` for rustls, a pending poll being
/// `WouldBlock` (the waker is registered by then).
struct Polled<'a, 'b> {
    io: &'a mut TcpIo,
    cx: &'a mut Context<'b>,
}

impl Read for Polled<'_, '_> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        // SAFETY: the socket only writes initialised bytes into the slice.
        let uninit = unsafe { &mut *(buf as *mut [u8] as *mut [MaybeUninit<u8>]) };
        pending_as_would_block(self.io.poll_recv(self.cx, uninit))
    }
}

impl Write for Polled<'_, '_> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        pending_as_would_block(self.io.poll_send_vectored(self.cx, &[IoSlice::new(buf)]))
    }

    fn write_vectored(&mut self, bufs: &[IoSlice<'_>]) -> io::Result<usize> {
        pending_as_would_block(self.io.poll_send_vectored(self.cx, bufs))
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

fn pending_as_would_block<T>(p: Poll<io::Result<T>>) -> io::Result<T> {
    match p {
        Poll::Ready(r) => r,
        Poll::Pending => Err(io::ErrorKind::WouldBlock.into()),
    }
}

fn would_block_as_pending<T>(r: io::Result<T>) -> Poll<io::Result<T>> {
    match r {
        Err(e) if e.kind() == io::ErrorKind::WouldBlock => Poll::Pending,
        r => Poll::Ready(r),
    }
}

impl TlsIo {
    /// TLS over `tcp` with a new session (its handshake not yet run).
    pub fn new(tcp: TcpIo, session: TlsSession) -> TlsIo {
        TlsIo { tcp, session }
    }

    /// The TLS session (ALPN, SNI, peer certificates).
    pub fn session(&self) -> &TlsSession {
        &self.session
    }

    /// Runs the handshake to its end.
    pub fn poll_handshake(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let mut sock = Polled {
            io: &mut self.tcp,
            cx,
        };
        would_block_as_pending(self.session.handshake(&mut sock))
    }

    /// Waits for the handshake to end.
    pub async fn handshake(&mut self) -> io::Result<()> {
        std::future::poll_fn(|cx| self.poll_handshake(cx)).await
    }

    fn poll_recv(
        &mut self,
        cx: &mut Context<'_>,
        buf: &mut [MaybeUninit<u8>],
    ) -> Poll<io::Result<usize>> {
        let mut sock = Polled {
            io: &mut self.tcp,
            cx,
        };
        would_block_as_pending(self.session.read(&mut sock, buf))
    }

    fn poll_send_vectored(
        &mut self,
        cx: &mut Context<'_>,
        bufs: &[IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let mut sock = Polled {
            io: &mut self.tcp,
            cx,
        };
        would_block_as_pending(self.session.write(&mut sock, bufs))
    }

    fn poll_flush(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let mut sock = Polled {
            io: &mut self.tcp,
            cx,
        };
        would_block_as_pending(self.session.flush(&mut sock))
    }

    /// Flushes what waits without waiting: ciphertext accepted by an earlier write goes
    /// out whenever the connection's task is polled, whichever way it polls.
    fn flush_opportunistically(&mut self, cx: &mut Context<'_>) {
        if self.session.wants_write() {
            let _ = self.poll_flush(cx);
        }
    }
}

impl Transport {
    /// The socket under the transport.
    pub fn tcp(&self) -> &TcpIo {
        match self {
            Transport::Raw(t) => t,
            Transport::Tls(t) => &t.tcp,
        }
    }

    /// The ALPN protocol TLS negotiated, if any.
    pub fn alpn(&self) -> Option<&[u8]> {
        self.tls().and_then(|t| t.connection().alpn_protocol())
    }

    /// The TLS session, for a TLS transport.
    pub fn tls(&self) -> Option<&TlsSession> {
        match self {
            Transport::Raw(_) => None,
            Transport::Tls(t) => Some(&t.session),
        }
    }

    /// Reads into `buf` (non-blocking, waker registered when nothing is there).
    #[inline]
    pub fn poll_recv(
        &mut self,
        cx: &mut Context<'_>,
        buf: &mut [MaybeUninit<u8>],
    ) -> Poll<io::Result<usize>> {
        match self {
            Transport::Raw(t) => t.poll_recv(cx, buf),
            Transport::Tls(t) => t.poll_recv(cx, buf),
        }
    }

    /// Writes `bufs` (non-blocking, waker registered when the socket is full).
    #[inline]
    pub fn poll_send_vectored(
        &mut self,
        cx: &mut Context<'_>,
        bufs: &[IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        match self {
            Transport::Raw(t) => t.poll_send_vectored(cx, bufs),
            Transport::Tls(t) => t.poll_send_vectored(cx, bufs),
        }
    }

    /// Writes out whatever the transport still holds (nothing, for a raw socket).
    #[inline]
    pub fn poll_flush_transport(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self {
            Transport::Raw(_) => Poll::Ready(Ok(())),
            Transport::Tls(t) => t.poll_flush(cx),
        }
    }

    /// Whether input may have arrived since the last read found none; false means
    /// certainly none.
    #[inline]
    pub fn may_have_input(&self) -> bool {
        match self {
            Transport::Raw(t) => t.may_have_input(),
            Transport::Tls(t) => t.tcp.may_have_input() || t.session.has_buffered_input(),
        }
    }

    /// Ready when input may have arrived; otherwise the waker is registered.
    #[inline]
    pub fn poll_read_ready(&mut self, cx: &mut Context<'_>) -> Poll<()> {
        match self {
            Transport::Raw(t) => t.poll_read_ready(cx),
            Transport::Tls(t) => {
                t.flush_opportunistically(cx);
                if t.session.has_buffered_input() {
                    return Poll::Ready(());
                }
                t.tcp.poll_read_ready(cx)
            }
        }
    }

    /// Ends the sending direction: close_notify then FIN for TLS, FIN for a raw socket.
    pub fn shutdown_write(&mut self) {
        if let Transport::Tls(t) = self {
            let waker = futures::task::noop_waker();
            let mut cx = Context::from_waker(&waker);
            let mut sock = Polled {
                io: &mut t.tcp,
                cx: &mut cx,
            };
            let _ = t.session.close(&mut sock);
        }
        let _ = self.tcp().stream().shutdown(std::net::Shutdown::Write);
    }

    /// Reads into hyper's cursor, showing `observe` the bytes read.
    pub fn poll_read_observed(
        &mut self,
        cx: &mut Context<'_>,
        mut buf: hyper::rt::ReadBufCursor<'_>,
        observe: impl FnOnce(&[u8]),
    ) -> Poll<io::Result<()>> {
        if let Transport::Tls(t) = self {
            t.flush_opportunistically(cx);
        }
        // SAFETY: reads only write initialised bytes into the slice and we advance by
        // exactly the number reported.
        let slice = unsafe { buf.as_mut() };
        let n = match self.poll_recv(cx, slice) {
            Poll::Ready(Ok(n)) => n,
            Poll::Ready(Err(e)) => return Poll::Ready(Err(e)),
            Poll::Pending => return Poll::Pending,
        };
        // SAFETY: the read initialised the first `n` bytes of `slice`.
        observe(unsafe { std::slice::from_raw_parts(slice.as_ptr().cast::<u8>(), n) });
        // SAFETY: `n` bytes were written.
        unsafe { buf.advance(n) };
        Poll::Ready(Ok(()))
    }
}

impl hyper::rt::Read for Transport {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: hyper::rt::ReadBufCursor<'_>,
    ) -> Poll<io::Result<()>> {
        self.get_mut().poll_read_observed(cx, buf, |_| {})
    }
}

impl hyper::rt::Write for Transport {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            Transport::Raw(t) => Pin::new(t).poll_write(cx, buf),
            Transport::Tls(t) => t.poll_send_vectored(cx, &[IoSlice::new(buf)]),
        }
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        self.get_mut().poll_send_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        true
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        self.get_mut().poll_flush_transport(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Transport::Raw(t) => Pin::new(t).poll_shutdown(cx),
            Transport::Tls(t) => {
                let mut sock = Polled { io: &mut t.tcp, cx };
                match t.session.close(&mut sock) {
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Poll::Pending,
                    // The socket's own shutdown follows whatever close_notify's fate.
                    _ => {}
                }
                Pin::new(&mut t.tcp).poll_shutdown(cx)
            }
        }
    }
}
