//! gRPC's length-prefixed message framing (a flags byte, a 4-byte big-endian length, the
//! message), read as a body streams: counting frames (Envoy's `Grpc::FrameInspector`) and
//! cutting whole frames out of arbitrary chunks (its `Grpc::Decoder`).

use bytes::{Buf, Bytes, BytesMut};

/// A frame's head: its flags byte and length.
const HEAD: usize = 5;
/// Connect's end-of-stream flag (Envoy's `CONNECT_FH_EOS`).
const CONNECT_END_STREAM: u8 = 0x02;

/// Counts the frames that start in a stream of chunks (Envoy's `FrameInspector`: a frame
/// counts when its flags byte is seen, whatever its flags). Keeps no bytes.
///
/// A response's counter ([`FrameCounter::for_responses`], Envoy's grpc_stats
/// `ResponseFrameCounter`) takes a frame whose flags have Connect's end-of-stream bit
/// (`0x02`) for the stream's last: that frame and any after it are not counted.
#[derive(Default)]
pub struct FrameCounter {
    /// Stop at a frame with Connect's end-of-stream flag.
    responses: bool,
    /// The end-of-stream frame was seen: nothing more counts.
    ended: bool,
    /// Bytes of the current frame's head seen so far (0: at a frame's start).
    head_seen: usize,
    length: [u8; 4],
    /// Bytes of the current frame's message still to skip.
    remaining: u64,
    count: u64,
}

impl FrameCounter {
    /// A response's counter: it stops at Connect's end-of-stream frame.
    pub fn for_responses() -> FrameCounter {
        FrameCounter {
            responses: true,
            ..FrameCounter::default()
        }
    }

    /// Reads `data`; the number of frames that started in it.
    pub fn inspect(&mut self, mut data: &[u8]) -> u64 {
        let mut started = 0;
        while !data.is_empty() && !self.ended {
            if self.remaining > 0 {
                let skip = (self.remaining.min(data.len() as u64)) as usize;
                self.remaining -= skip as u64;
                data = &data[skip..];
                continue;
            }
            if self.head_seen == 0 {
                if self.responses && data[0] & CONNECT_END_STREAM != 0 {
                    self.ended = true;
                    break;
                }
                started += 1;
                self.count += 1;
            } else {
                self.length[self.head_seen - 1] = data[0];
            }
            self.head_seen += 1;
            data = &data[1..];
            if self.head_seen == HEAD {
                self.head_seen = 0;
                self.remaining = u64::from(u32::from_be_bytes(self.length));
            }
        }
        started
    }

    /// The frames started so far.
    pub fn count(&self) -> u64 {
        self.count
    }
}

/// Cuts whole frames out of a stream of chunks (Envoy's `Grpc::Decoder`): what is left of
/// a frame waits for the next chunk. A flags byte other than 0 or 1 (compressed) is a
/// decoding error of that chunk: the frames before it are still given, the rest of the
/// chunk is not read, and the next chunk starts a frame again (Envoy's decoder state).
#[derive(Default)]
pub struct FrameSplitter {
    pending: BytesMut,
}

impl FrameSplitter {
    /// Adds `data`, giving each whole frame now complete (head and message) in order;
    /// `false` on a decoding error.
    pub fn push(&mut self, data: &[u8], out: &mut Vec<Bytes>) -> bool {
        self.pending.extend_from_slice(data);
        loop {
            if self.pending.len() < HEAD {
                return true;
            }
            if self.pending[0] & !1 != 0 {
                self.pending = BytesMut::new();
                return false;
            }
            let mut len = [0u8; 4];
            len.copy_from_slice(&self.pending[1..HEAD]);
            let len = u32::from_be_bytes(len) as usize;
            let Some(total) = HEAD.checked_add(len) else {
                return true;
            };
            if self.pending.len() < total {
                return true;
            }
            out.push(self.pending.split_to(total).freeze());
        }
    }

    /// Bytes of an incomplete frame held.
    pub fn pending(&self) -> usize {
        self.pending.remaining()
    }
}

/// A unary call's message, framed: the flags byte (uncompressed), the length, `message`.
pub fn frame(message: &impl prost::Message) -> Bytes {
    let len = message.encoded_len();
    let mut body = bytes::BytesMut::with_capacity(5 + len);
    bytes::BufMut::put_u8(&mut body, 0);
    bytes::BufMut::put_u32(&mut body, u32::try_from(len).unwrap_or(u32::MAX));
    // Encoding into a buffer with room for the whole message cannot fail.
    let _ = message.encode(&mut body);
    body.freeze()
}

/// The first message of a unary answer's body: `None` unless it is whole and
/// uncompressed.
pub fn unary_message(body: &Bytes) -> Option<Bytes> {
    let (flag, rest) = body.split_first()?;
    if *flag != 0 || rest.len() < 4 {
        return None;
    }
    let len = u32::from_be_bytes([rest[0], rest[1], rest[2], rest[3]]) as usize;
    let end = 5usize.checked_add(len)?;
    (body.len() >= end).then(|| body.slice(5..end))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn frame(flags: u8, msg: &[u8]) -> Vec<u8> {
        let mut f = vec![flags];
        f.extend_from_slice(&(msg.len() as u32).to_be_bytes());
        f.extend_from_slice(msg);
        f
    }

    #[test]
    fn frames_are_counted_across_any_split() {
        let mut all = frame(0, b"hello");
        all.extend(frame(1, b""));
        all.extend(frame(0x80, b"x:y\r\n"));
        for cut in 0..all.len() {
            let mut c = FrameCounter::default();
            let n = c.inspect(&all[..cut]) + c.inspect(&all[cut..]);
            assert_eq!(n, 3, "cut at {cut}");
            assert_eq!(c.count(), 3);
        }
        // Byte by byte.
        let mut c = FrameCounter::default();
        let n: u64 = all.iter().map(|b| c.inspect(std::slice::from_ref(b))).sum();
        assert_eq!(n, 3);
    }

    #[test]
    fn a_response_counter_stops_at_connects_end_of_stream_frame() {
        let mut all = frame(0, b"a");
        all.extend(frame(1, b"b"));
        all.extend(frame(0x42, b"{}"));
        all.extend(frame(0, b"after"));
        for cut in 0..all.len() {
            let mut c = FrameCounter::for_responses();
            let n = c.inspect(&all[..cut]) + c.inspect(&all[cut..]);
            assert_eq!(n, 2, "cut at {cut}");
            assert_eq!(c.count(), 2);
        }
        // A request's counter counts them all.
        assert_eq!(FrameCounter::default().inspect(&all), 4);
    }

    #[test]
    fn a_huge_announced_length_is_skipped_not_kept() {
        let mut c = FrameCounter::default();
        assert_eq!(c.inspect(&[0, 0xff, 0xff, 0xff, 0xff, 1, 2, 3]), 1);
        assert_eq!(c.inspect(&[0; 64]), 0);
    }

    #[test]
    fn whole_frames_come_out_of_any_split() {
        let mut all = frame(0, b"hello");
        all.extend(frame(1, b"world!"));
        for cut in 0..all.len() {
            let mut s = FrameSplitter::default();
            let mut out = Vec::new();
            s.push(&all[..cut], &mut out);
            s.push(&all[cut..], &mut out);
            assert_eq!(out.concat(), all, "cut at {cut}");
            assert_eq!(out.len(), 2);
            assert_eq!(s.pending(), 0);
        }
    }

    #[test]
    fn bad_flags_end_the_chunk_not_the_stream() {
        let mut all = frame(0, b"ok");
        all.extend(frame(0x80, b"trailer"));
        all.extend(frame(0, b"after"));
        let mut s = FrameSplitter::default();
        let mut out = Vec::new();
        assert!(!s.push(&all, &mut out));
        assert_eq!(out, vec![Bytes::from(frame(0, b"ok"))]);
        assert_eq!(s.pending(), 0);
        assert!(s.push(&frame(1, b"more"), &mut out));
        assert_eq!(out.len(), 2);
    }

    #[test]
    fn garbage_never_panics() {
        let mut s = FrameSplitter::default();
        let mut c = FrameCounter::default();
        let mut out = Vec::new();
        for seed in 0u32..2000 {
            let bytes: Vec<u8> = (0..(seed % 23))
                .map(|i| (seed.wrapping_mul(2_654_435_761).rotate_left(i)) as u8)
                .collect();
            s.push(&bytes, &mut out);
            c.inspect(&bytes);
        }
    }

    #[test]
    fn unary_messages_must_be_whole_and_uncompressed() {
        assert_eq!(unary_message(&Bytes::from_static(b"")), None);
        assert_eq!(unary_message(&Bytes::from_static(b"\0\0\0\0\x05ab")), None);
        assert_eq!(unary_message(&Bytes::from_static(b"\x01\0\0\0\x01a")), None);
        assert_eq!(
            unary_message(&Bytes::from_static(b"\0\0\0\0\x02abc")).as_deref(),
            Some(&b"ab"[..])
        );
        assert_eq!(
            unary_message(&Bytes::from_static(b"\0\xff\xff\xff\xff")),
            None
        );
    }
}
