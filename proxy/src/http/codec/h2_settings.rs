//! An upstream HTTP/2 server's stream limit, read off the connection's incoming bytes.
//!
//! hyper's HTTP/2 client keeps the server's `SETTINGS_MAX_CONCURRENT_STREAMS` to itself and
//! queues any stream past it until another ends, so a long-lived stream (a gRPC watch)
//! can hold the next request back indefinitely. Envoy's pool opens another connection
//! instead. To do the same, [`SettingsWatch`] wraps the upstream socket and scans the
//! frames going past: it reads their 9-byte headers and the entries of each SETTINGS frame,
//! skips every other payload by its length, and copies nothing.

use std::cell::Cell;
use std::io;
use std::pin::Pin;
use std::rc::Rc;
use std::task::{Context, Poll};

use crate::transport_socket::Transport;

/// HTTP/2 frame type of SETTINGS (RFC 9113 §6.5).
const SETTINGS: u8 = 0x4;
/// The SETTINGS frame's ACK flag.
const ACK: u8 = 0x1;
/// `SETTINGS_MAX_CONCURRENT_STREAMS`.
const MAX_CONCURRENT_STREAMS: u16 = 0x3;
/// Frame header length.
const HEADER: usize = 9;
/// One SETTINGS entry: a 16-bit identifier and a 32-bit value.
const ENTRY: usize = 6;

/// Where the scan is in the server's frame stream.
#[derive(Debug, Clone, Copy)]
enum State {
    /// Collecting a frame header (`have` of its 9 bytes so far).
    Header { have: usize },
    /// Skipping `left` payload bytes of a frame other than SETTINGS.
    Skip { left: usize },
    /// Reading a SETTINGS payload: `left` bytes of it, `have` of the current entry.
    Settings { left: usize, have: usize },
}

/// What the pool knows of a server's settings.
#[derive(Debug, Default)]
pub struct PeerSettings {
    /// Whether its first SETTINGS frame (its connection preface) has been read.
    known: Cell<bool>,
    /// Its `SETTINGS_MAX_CONCURRENT_STREAMS` (unlimited unless it set one).
    max_streams: Cell<u32>,
}

impl PeerSettings {
    /// How many streams the server allows at once; `None` until its first SETTINGS
    /// frame has been read.
    pub fn max_streams(&self) -> Option<u32> {
        self.known.get().then(|| self.max_streams.get())
    }
}

/// Follows a server's frames and keeps its latest `SETTINGS_MAX_CONCURRENT_STREAMS`.
pub struct FrameScan {
    state: State,
    buf: [u8; HEADER],
    peer: Rc<PeerSettings>,
    /// Run once the first SETTINGS frame has been read.
    on_known: Option<Box<dyn FnOnce()>>,
}

impl FrameScan {
    /// A scan from the start of a server's byte stream (its connection preface is a
    /// SETTINGS frame), kept in `peer`; `on_known` runs once the first SETTINGS frame has
    /// been read.
    pub fn new(peer: Rc<PeerSettings>, on_known: Box<dyn FnOnce()>) -> FrameScan {
        FrameScan {
            state: State::Header { have: 0 },
            buf: [0; HEADER],
            peer,
            on_known: Some(on_known),
        }
    }

    /// Takes the next bytes the server sent, in order.
    pub fn feed(&mut self, mut data: &[u8]) {
        while !data.is_empty() {
            match self.state {
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
                    self.state = if kind == SETTINGS && flags & ACK == 0 {
                        if !self.peer.known.get() {
                            // Settings persist: only the first frame starts from the
                            // default (no limit).
                            self.peer.max_streams.set(u32::MAX);
                        }
                        State::Settings { left: len, have: 0 }
                    } else {
                        State::Skip { left: len }
                    };
                    self.finish_frame_if_empty();
                }
                State::Skip { left } => {
                    let n = left.min(data.len());
                    data = &data[n..];
                    self.state = State::Skip { left: left - n };
                    self.finish_frame_if_empty();
                }
                State::Settings { left, have } => {
                    let n = (ENTRY - have).min(left).min(data.len());
                    self.buf[have..have + n].copy_from_slice(&data[..n]);
                    data = &data[n..];
                    let have = have + n;
                    if have == ENTRY {
                        let id = u16::from_be_bytes([self.buf[0], self.buf[1]]);
                        if id == MAX_CONCURRENT_STREAMS {
                            let v = &self.buf[2..ENTRY];
                            self.peer
                                .max_streams
                                .set(u32::from_be_bytes([v[0], v[1], v[2], v[3]]));
                        }
                    }
                    self.state = State::Settings {
                        left: left - n,
                        have: have % ENTRY,
                    };
                    self.finish_frame_if_empty();
                }
            }
        }
    }

    /// A frame whose payload is all read: the next bytes are a header.
    fn finish_frame_if_empty(&mut self) {
        match self.state {
            State::Skip { left: 0 } => self.state = State::Header { have: 0 },
            State::Settings { left: 0, .. } => {
                self.state = State::Header { have: 0 };
                self.peer.known.set(true);
                if let Some(f) = self.on_known.take() {
                    f();
                }
            }
            _ => {}
        }
    }
}

/// An upstream socket whose incoming frames are scanned for the server's stream limit.
pub struct SettingsWatch {
    io: Transport,
    scan: FrameScan,
}

impl SettingsWatch {
    /// Wraps a freshly connected socket (nothing read from it yet); see
    /// [`FrameScan::new`].
    pub fn new(
        io: Transport,
        peer: Rc<PeerSettings>,
        on_known: Box<dyn FnOnce()>,
    ) -> SettingsWatch {
        SettingsWatch {
            io,
            scan: FrameScan::new(peer, on_known),
        }
    }
}

impl hyper::rt::Read for SettingsWatch {
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

courier_runtime::write_through!(SettingsWatch, io);

#[cfg(test)]
mod tests {
    use super::*;

    fn frame(kind: u8, flags: u8, payload: &[u8]) -> Vec<u8> {
        let len = payload.len();
        let mut f = vec![(len >> 16) as u8, (len >> 8) as u8, len as u8, kind, flags];
        f.extend_from_slice(&[0, 0, 0, 0]);
        f.extend_from_slice(payload);
        f
    }

    fn setting(id: u16, value: u32) -> Vec<u8> {
        let mut e = id.to_be_bytes().to_vec();
        e.extend_from_slice(&value.to_be_bytes());
        e
    }

    /// A server's frames: its preface, data, a ping, an ACK that looks like a limit, and a
    /// later SETTINGS lowering the limit.
    fn stream() -> Vec<u8> {
        let mut preface = setting(0x4, 65535);
        preface.extend(setting(MAX_CONCURRENT_STREAMS, 100));
        preface.extend(setting(0x5, 16384));
        let mut s = frame(SETTINGS, 0, &preface);
        s.extend(frame(0x0, 0x1, &[7u8; 300]));
        s.extend(frame(0x6, 0, &[0; 8]));
        s.extend(frame(SETTINGS, ACK, &[]));
        s.extend(frame(0x1, 0x4, &[]));
        s.extend(frame(SETTINGS, 0, &setting(MAX_CONCURRENT_STREAMS, 1)));
        s
    }

    #[test]
    fn the_latest_limit_is_kept_however_the_bytes_are_split() {
        let bytes = stream();
        for chunk in 1..=bytes.len() {
            let peer = Rc::new(PeerSettings::default());
            let known_at = Rc::new(Cell::new(None));
            let k = known_at.clone();
            let p = peer.clone();
            let mut scan = FrameScan::new(peer.clone(), Box::new(move || k.set(p.max_streams())));
            let mut seen = Vec::new();
            for piece in bytes.chunks(chunk) {
                assert_eq!(peer.max_streams().is_some(), known_at.get().is_some());
                scan.feed(piece);
                seen.push(peer.max_streams());
            }
            // The hook ran once the preface's entries were all read.
            assert_eq!(known_at.get(), Some(100), "chunks of {chunk}");
            assert_eq!(peer.max_streams(), Some(1), "chunks of {chunk}");
            let seen: Vec<u32> = seen.into_iter().flatten().collect();
            // The preface's limit was seen first, unless one piece held both frames.
            let last = frame(SETTINGS, 0, &setting(MAX_CONCURRENT_STREAMS, 1)).len();
            if chunk <= bytes.len() - last {
                assert!(seen.contains(&100), "chunks of {chunk}: {seen:?}");
            }
        }
    }

    #[test]
    fn no_limit_unless_a_settings_frame_sets_one() {
        let peer = Rc::new(PeerSettings::default());
        let mut scan = FrameScan::new(peer.clone(), Box::new(|| {}));
        // Before the preface: unknown; a preface without the setting: no limit.
        scan.feed(&frame(0x0, 0, &setting(MAX_CONCURRENT_STREAMS, 2)));
        assert_eq!(peer.max_streams(), None);
        scan.feed(&frame(SETTINGS, 0, &setting(0x4, 1 << 20)));
        assert_eq!(peer.max_streams(), Some(u32::MAX));
        // An ACK, a DATA payload and a later SETTINGS without it change nothing.
        scan.feed(&frame(SETTINGS, ACK, &setting(MAX_CONCURRENT_STREAMS, 1)));
        scan.feed(&frame(0x0, 0, &setting(MAX_CONCURRENT_STREAMS, 2)));
        scan.feed(&frame(SETTINGS, 0, &setting(MAX_CONCURRENT_STREAMS, 5)));
        scan.feed(&frame(SETTINGS, 0, &[]));
        assert_eq!(peer.max_streams(), Some(5));
    }
}
