//! A TLS connection beside its socket: rustls's sans-I/O state driven over any
//! non-blocking `Read + Write` (the raw socket in `tcp_proxy`, the worker runtime's
//! [`TcpIo`](courier_runtime::event::rt::TcpIo) under the HTTP codecs).
//!
//! Reads decrypt straight into the caller's buffer; writes encrypt into rustls's outgoing
//! buffer, which is flushed before more plaintext is taken, so at most one buffer limit
//! of ciphertext waits per connection and a full socket pushes back on the writer
//! exactly as a plaintext one does.

use std::io::{self, BufRead, IoSlice, Read, Write};
use std::mem::MaybeUninit;
use std::sync::Arc;

use rustls::Connection;

use super::stats::SslStats;
use super::validation::Failure;

/// One TLS connection's state.
pub struct TlsSession {
    conn: Connection,
    stats: Arc<SslStats>,
    worker: usize,
    /// The handshake completed (and was counted).
    established: bool,
    /// The peer's close (close_notify, or the socket's end) was read.
    peer_closed: bool,
    /// Decrypted bytes not yet read.
    plaintext: usize,
}

impl TlsSession {
    /// Wraps a new rustls connection.
    pub fn new(conn: Connection, stats: Arc<SslStats>, worker: usize) -> TlsSession {
        TlsSession {
            conn,
            stats,
            worker,
            established: false,
            peer_closed: false,
            plaintext: 0,
        }
    }

    /// The rustls connection (ALPN, SNI, peer certificates, version).
    pub fn connection(&self) -> &Connection {
        &self.conn
    }

    /// Whether the handshake is still running.
    pub fn is_handshaking(&self) -> bool {
        self.conn.is_handshaking()
    }

    /// Whether a read would return something without touching the socket: decrypted
    /// bytes, or the peer's close.
    pub fn has_buffered_input(&self) -> bool {
        self.peer_closed || self.plaintext > 0
    }

    /// Whether ciphertext waits to be written.
    pub fn wants_write(&self) -> bool {
        self.conn.wants_write()
    }

    /// Writes the waiting ciphertext; `WouldBlock` when the socket cannot take it all.
    pub fn flush<S: Write>(&mut self, sock: &mut S) -> io::Result<()> {
        while self.conn.wants_write() {
            match self.conn.write_tls(sock) {
                Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
                Ok(_) => {}
                Err(e) => return Err(e),
            }
        }
        Ok(())
    }

    /// Reads TLS records from `sock` once and processes them. `Ok(false)` at the
    /// socket's end.
    fn receive<S: Read + Write>(&mut self, sock: &mut S) -> io::Result<bool> {
        let n = self.conn.read_tls(sock)?;
        if n == 0 {
            self.peer_closed = true;
        }
        let state = match self.conn.process_new_packets() {
            Ok(state) => state,
            Err(e) => {
                // Tell the peer why (the alert rustls queued), best effort.
                let _ = self.flush(sock);
                if !self.established {
                    self.stats.failed(self.worker, Failure::of(&e));
                } else {
                    self.stats.connection_error.inc(self.worker);
                }
                return Err(io::Error::new(io::ErrorKind::InvalidData, e));
            }
        };
        self.plaintext = state.plaintext_bytes_to_read();
        if state.peer_has_closed() {
            self.peer_closed = true;
        }
        if !self.established && !self.conn.is_handshaking() {
            self.on_established();
        }
        Ok(n > 0)
    }

    fn on_established(&mut self) {
        self.established = true;
        self.stats.handshake.inc(self.worker);
        self.stats.negotiated(self.worker, &self.conn);
        if self.conn.handshake_kind() == Some(rustls::HandshakeKind::Resumed) {
            self.stats.session_reused.inc(self.worker);
        }
        if matches!(self.conn, Connection::Server(_)) && self.conn.peer_certificates().is_none() {
            self.stats.no_certificate.inc(self.worker);
        }
    }

    /// Drives the handshake as far as the socket allows: `Ok(())` once it is complete,
    /// `WouldBlock` while it waits for the peer or the socket.
    pub fn handshake<S: Read + Write>(&mut self, sock: &mut S) -> io::Result<()> {
        loop {
            match self.flush(sock) {
                Ok(()) => {}
                // Still handshaking: the peer cannot answer what it has not received.
                Err(e) if e.kind() == io::ErrorKind::WouldBlock && self.is_handshaking() => {
                    return Err(e)
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                Err(e) => return Err(e),
            }
            if !self.is_handshaking() {
                return Ok(());
            }
            if !self.receive(sock)? {
                // Not a TLS error (Envoy counts none): a peer that connects and leaves
                // (a port probe) or gives up half-way.
                return Err(io::Error::new(
                    io::ErrorKind::UnexpectedEof,
                    "the peer closed the connection during the TLS handshake",
                ));
            }
        }
    }

    /// Reads decrypted bytes into `out`: `Ok(0)` at the peer's close (with or without
    /// close_notify, as Envoy treats both), `WouldBlock` when nothing is there yet.
    pub fn read<S: Read + Write>(
        &mut self,
        sock: &mut S,
        out: &mut [MaybeUninit<u8>],
    ) -> io::Result<usize> {
        loop {
            match self.conn.reader().fill_buf() {
                Ok(chunk) if !chunk.is_empty() => {
                    let n = chunk.len().min(out.len());
                    // SAFETY: `MaybeUninit<u8>` has the layout of `u8`; `n` bytes fit.
                    unsafe {
                        std::ptr::copy_nonoverlapping(chunk.as_ptr(), out.as_mut_ptr().cast(), n)
                    };
                    self.conn.reader().consume(n);
                    self.plaintext = self.plaintext.saturating_sub(n);
                    return Ok(n);
                }
                Ok(_) => return Ok(0),
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => return Ok(0),
                Err(e) => return Err(e),
            }
            if self.peer_closed {
                return Ok(0);
            }
            // Handshake messages and alerts go out before more is read.
            match self.flush(sock) {
                Ok(()) => {}
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                Err(e) => return Err(e),
            }
            self.receive(sock)?;
        }
    }

    /// Encrypts as much of `bufs` as the outgoing buffer takes, after flushing what was
    /// already waiting; `WouldBlock` while the socket cannot take that.
    pub fn write<S: Write>(&mut self, sock: &mut S, bufs: &[IoSlice<'_>]) -> io::Result<usize> {
        self.flush(sock)?;
        let n = self.conn.writer().write_vectored(bufs)?;
        match self.flush(sock) {
            Ok(()) => Ok(n),
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => Ok(n),
            Err(e) => Err(e),
        }
    }

    /// Queues close_notify and flushes it (best effort: the socket's shutdown follows).
    pub fn close<S: Write>(&mut self, sock: &mut S) -> io::Result<()> {
        self.conn.send_close_notify();
        self.flush(sock)
    }
}
