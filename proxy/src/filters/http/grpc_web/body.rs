//! The bodies the gRPC-Web filter transforms as they stream: a `-text` request's base64
//! decoded, and a response's frames (base64-encoded for a `-text` client) ending with its
//! trailers as a frame.

use std::cell::Cell;
use std::collections::VecDeque;
use std::pin::Pin;
use std::rc::Rc;
use std::sync::Arc;
use std::task::{Context, Poll};

use base64::Engine as _;
use bytes::{BufMut, Bytes, BytesMut};
use http::HeaderMap;
use hyper::body::{Body, Frame};

use super::{charge, GRPC_STATUS};
use crate::http::codec::body::{BodyTransform, BoxError, ProxyBody};
use crate::protocol::grpc_frame::FrameSplitter;
use crate::stats::dynamic::DynamicCounters;

/// A trailers frame's flags (gRPC-Web's `0x80`).
const TRAILER_FLAG: u8 = 0x80;

/// Why a `-text` request body was refused (Envoy's response details).
const BAD_SIZE: &str = "grpc_base_64_decode_failed_bad_size";
const BAD_DATA: &str = "grpc_base_64_decode_failed";

/// Decodes base64 a chunk at a time (Envoy's `decodeData` for `-text`): what completes a
/// 4-character quad is decoded with what came before it, the rest held for the next
/// chunk.
#[derive(Default)]
pub(super) struct Base64Decoder {
    held: Vec<u8>,
}

impl Base64Decoder {
    /// Decodes what `data` completes; `end` when it is the body's last. An error is the
    /// response details of the refusal.
    pub(super) fn push(&mut self, data: &[u8], end: bool) -> Result<Bytes, &'static str> {
        let available = self.held.len() + data.len();
        if end {
            if available == 0 {
                return Ok(Bytes::new());
            }
            if !available.is_multiple_of(4) {
                return Err(BAD_SIZE);
            }
        } else if available < 4 {
            self.held.extend_from_slice(data);
            return Ok(Bytes::new());
        }
        let take = available / 4 * 4 - self.held.len();
        self.held.extend_from_slice(&data[..take]);
        let decoded = base64::engine::general_purpose::STANDARD
            .decode(&self.held)
            .map_err(|_| BAD_DATA)?;
        if decoded.is_empty() {
            return Err(BAD_DATA);
        }
        self.held.clear();
        self.held.extend_from_slice(&data[take..]);
        Ok(Bytes::from(decoded))
    }
}

/// A `-text` request body, decoded as it passes; a body that is not base64 ends with an
/// error (the upstream request is reset) and leaves its details in `bad`.
pub(super) struct TextRequestBody {
    inner: ProxyBody,
    decoder: Base64Decoder,
    bad: Rc<Cell<Option<&'static str>>>,
    done: bool,
}

impl TextRequestBody {
    pub(super) fn new(inner: ProxyBody, bad: Rc<Cell<Option<&'static str>>>) -> TextRequestBody {
        TextRequestBody {
            inner,
            decoder: Base64Decoder::default(),
            bad,
            done: false,
        }
    }

    fn fail(&mut self, details: &'static str) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        self.done = true;
        self.bad.set(Some(details));
        Poll::Ready(Some(Err("invalid gRPC-Web base64 body".into())))
    }
}

impl BodyTransform for TextRequestBody {
    fn poll_frame(&mut self, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        if self.done {
            return Poll::Ready(None);
        }
        loop {
            match Pin::new(&mut self.inner).poll_frame(cx) {
                Poll::Pending => return Poll::Pending,
                Poll::Ready(Some(Err(e))) => return Poll::Ready(Some(Err(e))),
                Poll::Ready(None) => match self.decoder.push(&[], true) {
                    Ok(_) => {
                        self.done = true;
                        return Poll::Ready(None);
                    }
                    Err(d) => return self.fail(d),
                },
                Poll::Ready(Some(Ok(frame))) => match frame.into_data() {
                    Ok(data) => {
                        let end = self.inner.is_end_stream();
                        match self.decoder.push(&data, end) {
                            Ok(out) if out.is_empty() => {
                                if end {
                                    self.done = true;
                                    return Poll::Ready(None);
                                }
                                continue;
                            }
                            Ok(out) => {
                                self.done = end;
                                return Poll::Ready(Some(Ok(Frame::data(out))));
                            }
                            Err(d) => return self.fail(d),
                        }
                    }
                    // Trailers end the body; a partial quad before them is dropped, as
                    // Envoy's filter drops it.
                    Err(frame) => {
                        self.done = true;
                        return Poll::Ready(Some(Ok(frame)));
                    }
                },
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        self.done
    }
}

/// A gRPC response body on its way to a gRPC-Web client: frames as they came (each whole
/// frame base64-encoded on its own for a `-text` client), the trailers as a last frame.
pub(super) struct GrpcWebResponseBody {
    inner: ProxyBody,
    /// `Some` for a `-text` client: the frames not yet complete.
    text: Option<FrameSplitter>,
    counters: Arc<DynamicCounters>,
    stat_prefix: Option<Rc<str>>,
    worker: usize,
    queued: VecDeque<Bytes>,
    done: bool,
}

impl GrpcWebResponseBody {
    pub(super) fn new(
        inner: ProxyBody,
        text: bool,
        counters: Arc<DynamicCounters>,
        stat_prefix: Option<Rc<str>>,
        worker: usize,
    ) -> GrpcWebResponseBody {
        GrpcWebResponseBody {
            inner,
            text: text.then(FrameSplitter::default),
            counters,
            stat_prefix,
            worker,
            queued: VecDeque::new(),
            done: false,
        }
    }

    /// What goes out for a data chunk: itself, or its whole frames in base64.
    fn data(&mut self, data: Bytes) -> Option<Bytes> {
        let Some(splitter) = &mut self.text else {
            return (!data.is_empty()).then_some(data);
        };
        let mut frames = Vec::new();
        let decoded = splitter.push(&data, &mut frames);
        if decoded && frames.is_empty() {
            return None;
        }
        let mut out = String::new();
        for f in &frames {
            base64::engine::general_purpose::STANDARD.encode_string(f, &mut out);
        }
        if decoded {
            return Some(Bytes::from(out));
        }
        // Envoy's filter leaves a chunk it could not decode in place and adds the frames
        // it did decode after it.
        let mut raw = BytesMut::from(&data[..]);
        raw.put_slice(out.as_bytes());
        Some(raw.freeze())
    }

    /// The trailers frame (counted first, as Envoy's filter counts them).
    fn trailers(&mut self, trailers: &HeaderMap) -> Bytes {
        if let Some(status) = trailers.get(&GRPC_STATUS) {
            charge(
                &self.counters,
                self.stat_prefix.as_deref(),
                status.as_bytes(),
                self.worker,
            );
        }
        let frame = trailer_frame(trailers);
        if self.text.is_some() {
            Bytes::from(base64::engine::general_purpose::STANDARD.encode(&frame))
        } else {
            frame
        }
    }
}

/// gRPC-Web's trailers frame: `0x80`, the length, then `name:value\r\n` for each field.
pub(super) fn trailer_frame(trailers: &HeaderMap) -> Bytes {
    let mut fields = BytesMut::new();
    for (name, value) in trailers {
        fields.put_slice(name.as_str().as_bytes());
        fields.put_u8(b':');
        fields.put_slice(value.as_bytes());
        fields.put_slice(b"\r\n");
    }
    let mut frame = BytesMut::with_capacity(5 + fields.len());
    frame.put_u8(TRAILER_FLAG);
    frame.put_u32(u32::try_from(fields.len()).unwrap_or(u32::MAX));
    frame.put_slice(&fields);
    frame.freeze()
}

impl BodyTransform for GrpcWebResponseBody {
    fn poll_frame(&mut self, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        if let Some(b) = self.queued.pop_front() {
            return Poll::Ready(Some(Ok(Frame::data(b))));
        }
        if self.done {
            return Poll::Ready(None);
        }
        loop {
            match Pin::new(&mut self.inner).poll_frame(cx) {
                Poll::Pending => return Poll::Pending,
                Poll::Ready(Some(Err(e))) => return Poll::Ready(Some(Err(e))),
                Poll::Ready(None) => {
                    self.done = true;
                    return Poll::Ready(None);
                }
                Poll::Ready(Some(Ok(frame))) => match frame.into_data() {
                    Ok(data) => {
                        if self.inner.is_end_stream() {
                            self.done = true;
                        }
                        match self.data(data) {
                            Some(out) => return Poll::Ready(Some(Ok(Frame::data(out)))),
                            None if self.done => return Poll::Ready(None),
                            None => continue,
                        }
                    }
                    Err(frame) => {
                        self.done = true;
                        let Ok(t) = frame.into_trailers() else {
                            return Poll::Ready(None);
                        };
                        let out = self.trailers(&t);
                        return Poll::Ready(Some(Ok(Frame::data(out))));
                    }
                },
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        self.done && self.queued.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn b64(b: &[u8]) -> Vec<u8> {
        base64::engine::general_purpose::STANDARD
            .encode(b)
            .into_bytes()
    }

    #[test]
    fn base64_split_anywhere_decodes_whole() {
        let plain: Vec<u8> = (0u8..=40).collect();
        let text = b64(&plain);
        for cut in 0..=text.len() {
            let mut d = Base64Decoder::default();
            let mut out = d.push(&text[..cut], false).expect("first part").to_vec();
            out.extend_from_slice(&d.push(&text[cut..], true).expect("second part"));
            assert_eq!(out, plain, "cut at {cut}");
        }
        // A byte at a time.
        let mut d = Base64Decoder::default();
        let mut out = Vec::new();
        for (i, b) in text.iter().enumerate() {
            out.extend_from_slice(&d.push(&[*b], i + 1 == text.len()).expect("byte"));
        }
        assert_eq!(out, plain);
    }

    #[test]
    fn bad_base64_is_refused_with_envoys_details() {
        let mut d = Base64Decoder::default();
        assert_eq!(d.push(b"AAAAA", true), Err(BAD_SIZE));
        let mut d = Base64Decoder::default();
        assert_eq!(d.push(b"!!!!", false), Err(BAD_DATA));
        // Padding inside what is decoded at once.
        let mut d = Base64Decoder::default();
        assert_eq!(d.push(b"AA==AAAA", true), Err(BAD_DATA));
        // A padded quad ending one chunk is fine, as Envoy decodes chunk by chunk.
        let mut d = Base64Decoder::default();
        assert_eq!(d.push(b"AA==", false).as_deref(), Ok(&[0u8][..]));
        assert_eq!(d.push(b"AAAA", true).as_deref(), Ok(&[0u8, 0, 0][..]));
        // Nothing at all is no error.
        let mut d = Base64Decoder::default();
        assert_eq!(d.push(b"", true).as_deref(), Ok(&[][..]));
        // Garbage of every shape never panics.
        for seed in 0u32..500 {
            let bytes: Vec<u8> = (0..(seed % 13))
                .map(|i| seed.wrapping_mul(2_654_435_761).rotate_left(i) as u8)
                .collect();
            let _ = Base64Decoder::default().push(&bytes, seed % 2 == 0);
        }
    }

    #[test]
    fn trailers_frame_as_envoy_writes_it() {
        let mut t = HeaderMap::new();
        t.insert("grpc-status", http::HeaderValue::from_static("0"));
        t.insert("grpc-message", http::HeaderValue::from_static("ok"));
        let f = trailer_frame(&t);
        let body = b"grpc-status:0\r\ngrpc-message:ok\r\n";
        assert_eq!(f[0], 0x80);
        assert_eq!(&f[1..5], &(body.len() as u32).to_be_bytes());
        assert_eq!(&f[5..], body);
    }
}
