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
//!
//! The same scan enforces Envoy's inbound flood limits ([`FloodLimits`]), which the `h2`
//! crate does not have: more than `max_consecutive_inbound_frames_with_empty_payload`
//! DATA/HEADERS/CONTINUATION frames in a row with no payload and no END_STREAM, more
//! PRIORITY frames than `max_inbound_priority_frames_per_stream` × (1 + streams opened),
//! or more WINDOW_UPDATE frames than 5 + 2 × (streams opened +
//! `max_inbound_window_update_frames_per_data_frame_sent` × DATA frames sent) — Envoy's
//! formulas — end the connection: the read fails and hyper closes it. The DATA frames
//! sent are counted off the frame headers going out, likewise without copying.

use std::cell::Cell;
use std::io;
use std::pin::Pin;
use std::rc::Rc;
use std::task::{Context, Poll};
use std::time::Instant;

use super::handoff::PrefixedIo;
use crate::protocol::h2_options::FloodLimits;

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
/// DATA (RFC 9113 §6.1).
const DATA: u8 = 0x0;
/// PRIORITY (RFC 9113 §6.3).
const PRIORITY: u8 = 0x2;
/// WINDOW_UPDATE (RFC 9113 §6.9).
const WINDOW_UPDATE: u8 = 0x8;
/// END_STREAM flag.
const END_STREAM: u8 = 0x1;

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
    limits: FloodLimits,
    /// Frames with an empty payload in a row.
    empty_run: u32,
    /// Streams the client opened (HEADERS on a new stream id), and the highest id.
    streams: u64,
    last_stream: u32,
    priority: u64,
    window_updates: u64,
    /// Which limit a flood broke.
    flooded: Option<&'static str>,
}

impl HeadScan {
    /// A scan from the very start of the client's bytes (its preface first).
    pub fn new(open_since: Rc<Cell<Option<Instant>>>, limits: FloodLimits) -> HeadScan {
        HeadScan {
            state: State::Preface { left: PREFACE_LEN },
            buf: [0; HEADER],
            open_since,
            limits,
            empty_run: 0,
            streams: 0,
            last_stream: 0,
            priority: 0,
            window_updates: 0,
            flooded: None,
        }
    }

    /// Which flood limit the client broke, if any.
    pub fn flooded(&self) -> Option<&'static str> {
        self.flooded
    }

    /// Counts a frame (its type, flags, stream and payload length) against the flood
    /// limits, as Envoy's `trackInboundFrames`; `data_sent` is the DATA frames sent so far.
    fn track(&mut self, kind: u8, flags: u8, stream: u32, len: usize, data_sent: u64) {
        let l = &self.limits;
        match kind {
            DATA | HEADERS | CONTINUATION => {
                if kind == HEADERS && stream > self.last_stream {
                    self.last_stream = stream;
                    self.streams += 1;
                }
                if len == 0 && flags & END_STREAM == 0 {
                    self.empty_run += 1;
                    if self.empty_run > l.empty_frames {
                        self.flooded = Some("too many consecutive frames with an empty payload");
                    }
                } else {
                    self.empty_run = 0;
                }
            }
            PRIORITY => {
                self.priority += 1;
                if self.priority > u64::from(l.priority_per_stream) * (1 + self.streams) {
                    self.flooded = Some("too many PRIORITY frames");
                }
            }
            WINDOW_UPDATE => {
                self.window_updates += 1;
                let allowed =
                    5 + 2 * (self.streams + u64::from(l.window_updates_per_data_frame) * data_sent);
                if self.window_updates > allowed {
                    self.flooded = Some("too many WINDOW_UPDATE frames");
                }
            }
            _ => {}
        }
    }

    /// Takes the next bytes the client sent, in order; `data_sent` is the number of DATA
    /// frames sent to the client so far.
    pub fn feed(&mut self, mut data: &[u8], data_sent: u64) {
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
                    let stream = u32::from_be_bytes([
                        self.buf[5] & 0x7f,
                        self.buf[6],
                        self.buf[7],
                        self.buf[8],
                    ]);
                    self.track(kind, flags, stream, len, data_sent);
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

/// Counts the DATA frames in the server's outgoing bytes (from its first frame: a
/// server sends no preface), skipping payloads by their length.
#[derive(Default)]
struct DataCount {
    /// Bytes of the current frame header seen (0 to 8), or payload bytes left to skip.
    have: usize,
    skip: usize,
    len: usize,
    frames: u64,
}

impl DataCount {
    fn feed(&mut self, mut data: &[u8]) {
        while !data.is_empty() {
            if self.skip > 0 {
                let n = self.skip.min(data.len());
                self.skip -= n;
                data = &data[n..];
                continue;
            }
            let b = data[0];
            data = &data[1..];
            match self.have {
                0..=2 => self.len = self.len << 8 | usize::from(b),
                3 if b == DATA => self.frames += 1,
                _ => {}
            }
            self.have += 1;
            if self.have == HEADER {
                self.skip = self.len;
                self.have = 0;
                self.len = 0;
            }
        }
    }

    fn feed_slices(&mut self, bufs: &[io::IoSlice<'_>], mut n: usize) {
        for b in bufs {
            if n == 0 {
                break;
            }
            let k = n.min(b.len());
            self.feed(&b[..k]);
            n -= k;
        }
    }
}

/// A downstream HTTP/2 socket whose incoming frames are scanned for open header blocks
/// and floods.
pub struct HeadWatch {
    io: PrefixedIo,
    scan: HeadScan,
    sent: DataCount,
}

impl HeadWatch {
    /// Wraps the connection's socket, `io`, from the start of the client's bytes (its
    /// preface, which may be in `io`'s prefix); the scan reports into `open_since` and
    /// holds the client to `limits`.
    pub fn new(
        io: PrefixedIo,
        open_since: Rc<Cell<Option<Instant>>>,
        limits: FloodLimits,
    ) -> HeadWatch {
        HeadWatch {
            io,
            scan: HeadScan::new(open_since, limits),
            sent: DataCount::default(),
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
        let data_sent = this.sent.frames;
        let read = this
            .io
            .poll_read_observed(cx, buf, |read| scan.feed(read, data_sent));
        match scan.flooded() {
            Some(why) => {
                tracing::debug!(why, "downstream HTTP/2 flood: closing the connection");
                Poll::Ready(Err(io::Error::other(why)))
            }
            None => read,
        }
    }
}

impl hyper::rt::Write for HeadWatch {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        let r = Pin::new(&mut this.io).poll_write(cx, buf);
        if let Poll::Ready(Ok(n)) = r {
            this.sent.feed(&buf[..n]);
        }
        r
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        let r = Pin::new(&mut this.io).poll_write_vectored(cx, bufs);
        if let Poll::Ready(Ok(n)) = r {
            this.sent.feed_slices(bufs, n);
        }
        r
    }

    fn is_write_vectored(&self) -> bool {
        true
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().io).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().io).poll_shutdown(cx)
    }
}

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
        let mut scan = HeadScan::new(open.clone(), FloodLimits::default());
        let mut bytes = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n".to_vec();
        bytes.extend(frame(0x4, 0, 6));
        bytes.extend(frame(HEADERS, 0, 5));
        // Byte by byte: frame headers split across reads.
        for b in &bytes {
            scan.feed(std::slice::from_ref(b), 0);
        }
        let since = open.get().expect("open after HEADERS without END_HEADERS");
        scan.feed(&frame(CONTINUATION, 0, 3), 0);
        assert_eq!(open.get(), Some(since), "still the same block");
        scan.feed(&frame(CONTINUATION, END_HEADERS, 3), 0);
        assert_eq!(open.get(), None);
        scan.feed(&frame(HEADERS, END_HEADERS | 0x1, 4), 0);
        scan.feed(&frame(0x0, 0x1, 100), 0);
        assert_eq!(open.get(), None);
    }

    #[test]
    fn floods_break_envoys_limits() {
        let flood = |frames: &[Vec<u8>], sent: &[u8]| {
            let mut scan = HeadScan::new(Rc::new(Cell::new(None)), FloodLimits::default());
            let mut out = DataCount::default();
            out.feed(sent);
            scan.feed(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n", 0);
            for f in frames {
                scan.feed(f, out.frames);
            }
            scan.flooded()
        };
        let empty_data = frame(0x0, 0, 0);
        let end = frame(0x0, END_STREAM, 0);
        // One empty DATA frame at a time is allowed; two in a row are not.
        assert_eq!(
            flood(
                &[empty_data.clone(), frame(0x0, 0, 5), empty_data.clone()],
                &[]
            ),
            None
        );
        assert_eq!(
            flood(&[empty_data.clone(), end, empty_data.clone()], &[]),
            None
        );
        assert!(flood(&[empty_data.clone(), empty_data], &[]).is_some());
        // PRIORITY: 100 per stream opened, plus 100.
        let prio = frame(PRIORITY, 0, 5);
        assert_eq!(flood(&vec![prio.clone(); 100], &[]), None);
        assert!(flood(&vec![prio.clone(); 101], &[]).is_some());
        let mut opened = vec![frame(HEADERS, END_HEADERS, 5)];
        opened.extend(vec![prio; 200]);
        assert_eq!(flood(&opened, &[]), None);
        // WINDOW_UPDATE: 5 + 2 × (streams + 10 × DATA frames sent).
        let wu = frame(WINDOW_UPDATE, 0, 4);
        assert_eq!(flood(&vec![wu.clone(); 5], &[]), None);
        assert!(flood(&vec![wu.clone(); 6], &[]).is_some());
        let mut sent = frame(0x4, 0, 6);
        sent.extend(frame(0x0, 0, 100));
        sent.extend(frame(0x0, END_STREAM, 3));
        assert_eq!(flood(&vec![wu.clone(); 45], &sent), None);
        assert!(flood(&vec![wu; 46], &sent).is_some());
    }
}
