//! When a downstream HTTP/2 client's request head (a header block) is still arriving.
//!
//! Envoy starts a stream, and its `stream_idle_timeout`, `request_timeout` and
//! `request_headers_timeout`, on the HEADERS frame that opens it; hyper's server only
//! surfaces a request once its whole header block (HEADERS and any CONTINUATION frames)
//! is in, so a client that sends a HEADERS frame without END_HEADERS and then nothing
//! would hold its connection for the connection's `idle_timeout`. [`HeadWatch`] wraps the
//! downstream socket and follows the frames going past — their 9-byte headers only, each
//! payload skipped by its length, nothing copied — noting when a header block opened and
//! is not finished. Until one ends, RFC 9113 §6.10 allows nothing else on the connection,
//! so the connection manager, whose timer runs out, closes it.

use std::cell::Cell;
use std::io;
use std::pin::Pin;
use std::rc::Rc;
use std::task::{Context, Poll};
use std::time::Instant;

use super::handoff::PrefixedIo;

/// The client connection preface, which precedes the first frame.
const PREFACE_LEN: usize = 24;
/// Frame header length.
const HEADER: usize = 9;
/// HEADERS (RFC 9113 §6.2).
const HEADERS: u8 = 0x1;
/// CONTINUATION (RFC 9113 §6.10).
const CONTINUATION: u8 = 0x9;
/// END_HEADERS flag.
const END_HEADERS: u8 = 0x4;

#[derive(Debug, Clone, Copy)]
enum State {
    /// Skipping the rest of the connection preface.
    Preface { left: usize },
    /// Collecting a frame header (`have` of its 9 bytes so far).
    Header { have: usize },
    /// Skipping `left` payload bytes.
    Skip { left: usize },
}

/// Follows a client's frames; [`HeadWatch::open_since`] says since when a header block
/// has been waiting for its end.
pub struct HeadScan {
    state: State,
    buf: [u8; HEADER],
    open_since: Rc<Cell<Option<Instant>>>,
}

impl HeadScan {
    /// A scan from the very start of the client's bytes (its preface first).
    pub fn new(open_since: Rc<Cell<Option<Instant>>>) -> HeadScan {
        HeadScan {
            state: State::Preface { left: PREFACE_LEN },
            buf: [0; HEADER],
            open_since,
        }
    }

    /// Takes the next bytes the client sent, in order.
    pub fn feed(&mut self, mut data: &[u8]) {
        while !data.is_empty() {
            match self.state {
                State::Preface { left } => {
                    let n = left.min(data.len());
                    data = &data[n..];
                    self.state = if left == n {
                        State::Header { have: 0 }
                    } else {
                        State::Preface { left: left - n }
                    };
                }
                State::Header { have } => {
                    let n = (HEADER - have).min(data.len());
                    self.buf[have..have + n].copy_from_slice(&data[..n]);
                    data = &data[n..];
                    if have + n < HEADER {
                        self.state = State::Header { have: have + n };
                        continue;
                    }
                    let len = usize::from(self.buf[0]) << 16
                        | usize::from(self.buf[1]) << 8
                        | usize::from(self.buf[2]);
                    let (kind, flags) = (self.buf[3], self.buf[4]);
                    if kind == HEADERS || kind == CONTINUATION {
                        if flags & END_HEADERS != 0 {
                            self.open_since.set(None);
                        } else if self.open_since.get().is_none() {
                            // Envoy's stream starts with the block's first frame.
                            self.open_since.set(Some(Instant::now()));
                        }
                    }
                    self.state = if len == 0 {
                        State::Header { have: 0 }
                    } else {
                        State::Skip { left: len }
                    };
                }
                State::Skip { left } => {
                    let n = left.min(data.len());
                    data = &data[n..];
                    self.state = if left == n {
                        State::Header { have: 0 }
                    } else {
                        State::Skip { left: left - n }
                    };
                }
            }
        }
    }
}

/// A downstream HTTP/2 socket whose incoming frames are scanned for open header blocks.
pub struct HeadWatch {
    io: PrefixedIo,
    scan: HeadScan,
}

impl HeadWatch {
    /// Wraps the connection's socket, `io`, from the start of the client's bytes (its
    /// preface, which may be in `io`'s prefix); the scan reports into `open_since`.
    pub fn new(io: PrefixedIo, open_since: Rc<Cell<Option<Instant>>>) -> HeadWatch {
        HeadWatch {
            io,
            scan: HeadScan::new(open_since),
        }
    }
}

impl hyper::rt::Read for HeadWatch {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: hyper::rt::ReadBufCursor<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        let scan = &mut this.scan;
        this.io.poll_read_observed(cx, buf, |read| scan.feed(read))
    }
}

courier_runtime::write_through!(HeadWatch, io);

#[cfg(test)]
mod tests {
    use super::*;

    fn frame(kind: u8, flags: u8, len: usize) -> Vec<u8> {
        let mut f = vec![(len >> 16) as u8, (len >> 8) as u8, len as u8, kind, flags];
        f.extend_from_slice(&[0, 0, 0, 1]);
        f.extend(std::iter::repeat_n(0xAA, len));
        f
    }

    #[test]
    fn a_header_block_is_open_until_its_end_headers() {
        let open = Rc::new(Cell::new(None));
        let mut scan = HeadScan::new(open.clone());
        let mut bytes = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n".to_vec();
        bytes.extend(frame(0x4, 0, 6));
        bytes.extend(frame(HEADERS, 0, 5));
        // Byte by byte: frame headers split across reads.
        for b in &bytes {
            scan.feed(std::slice::from_ref(b));
        }
        let since = open.get().expect("open after HEADERS without END_HEADERS");
        scan.feed(&frame(CONTINUATION, 0, 3));
        assert_eq!(open.get(), Some(since), "still the same block");
        scan.feed(&frame(CONTINUATION, END_HEADERS, 3));
        assert_eq!(open.get(), None);
        scan.feed(&frame(HEADERS, END_HEADERS | 0x1, 4));
        scan.feed(&frame(0x0, 0x1, 100));
        assert_eq!(open.get(), None);
    }
}
