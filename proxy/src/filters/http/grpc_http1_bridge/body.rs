//! The bridge's bodies: an upgraded protobuf request framed as one gRPC message, and a
//! bridged response gathered whole.

use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::{Buf, BufMut, Bytes, BytesMut};
use http::HeaderMap;
use hyper::body::{Body, Frame};

use crate::http::codec::body::{BodyTransform, BoxError, ProxyBody};

/// A gRPC frame's head: its flags byte and length.
const FRAME_HEAD: usize = 5;

/// An `application/x-protobuf` request body, gathered whole and sent as one uncompressed
/// gRPC message (Envoy's `prependGrpcFrameHeader` once the body ends). A body with no data
/// goes on empty, unframed, as Envoy's filter never sees data for it.
pub(super) struct FramedRequest {
    inner: ProxyBody,
    gathered: BytesMut,
    seen_data: bool,
    done: bool,
}

impl FramedRequest {
    pub(super) fn new(inner: ProxyBody) -> FramedRequest {
        FramedRequest {
            inner,
            gathered: BytesMut::new(),
            seen_data: false,
            done: false,
        }
    }

    /// The gathered body as one frame, or nothing without data.
    fn frame(&mut self) -> Option<Bytes> {
        if !self.seen_data {
            return None;
        }
        let body = std::mem::take(&mut self.gathered);
        let mut out = BytesMut::with_capacity(FRAME_HEAD + body.len());
        out.put_u8(0);
        out.put_u32(u32::try_from(body.len()).unwrap_or(u32::MAX));
        out.put_slice(&body);
        Some(out.freeze())
    }
}

impl BodyTransform for FramedRequest {
    fn poll_frame(&mut self, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        if self.done {
            return Poll::Ready(None);
        }
        loop {
            match Pin::new(&mut self.inner).poll_frame(cx) {
                Poll::Pending => return Poll::Pending,
                Poll::Ready(Some(Err(e))) => {
                    self.done = true;
                    return Poll::Ready(Some(Err(e)));
                }
                Poll::Ready(Some(Ok(frame))) => match frame.into_data() {
                    Ok(data) => {
                        self.seen_data = true;
                        self.gathered.extend_from_slice(&data);
                    }
                    // Request trailers: the frame goes first, they are dropped (gRPC
                    // requests have none).
                    Err(_) => {
                        self.done = true;
                        return Poll::Ready(self.frame().map(|f| Ok(Frame::data(f))));
                    }
                },
                Poll::Ready(None) => {
                    self.done = true;
                    return Poll::Ready(self.frame().map(|f| Ok(Frame::data(f))));
                }
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        self.done
    }
}

/// How a bridged response body ended.
pub(super) enum Gathered {
    /// With trailers (a gRPC response's end).
    Trailers(Bytes, HeaderMap),
    /// Without trailers.
    End(Bytes),
    /// The upstream broke off.
    Failed(BoxError),
}

/// Gathers a bridged response's body (Envoy's filter buffers it until the trailers): with
/// `unframe`, the first chunk that does not end the body loses its first 5 bytes (the
/// frame head of an upgraded request's answer), as Envoy drains them.
pub(super) async fn gather(body: &mut ProxyBody, unframe: bool) -> Gathered {
    let mut buf = BytesMut::new();
    let mut unframe = unframe;
    loop {
        let frame = std::future::poll_fn(|cx| Pin::new(&mut *body).poll_frame(cx)).await;
        match frame {
            None => return Gathered::End(buf.freeze()),
            Some(Err(e)) => return Gathered::Failed(e),
            Some(Ok(frame)) => match frame.into_data() {
                Ok(mut data) => {
                    if unframe && !body.is_end_stream() {
                        data.advance(FRAME_HEAD.min(data.len()));
                        unframe = false;
                    }
                    buf.extend_from_slice(&data);
                }
                Err(frame) => {
                    let trailers = frame.into_trailers().unwrap_or_default();
                    return Gathered::Trailers(buf.freeze(), trailers);
                }
            },
        }
    }
}

/// A body that ends with the error its upstream broke off with.
pub(super) struct Broken(pub(super) Option<BoxError>);

impl BodyTransform for Broken {
    fn poll_frame(&mut self, _: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        Poll::Ready(self.0.take().map(Err))
    }

    fn is_end_stream(&self) -> bool {
        self.0.is_none()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use http_body_util::BodyExt;

    fn run<F: std::future::Future>(f: F) -> F::Output {
        tokio::runtime::Builder::new_current_thread()
            .build()
            .expect("runtime")
            .block_on(f)
    }

    #[test]
    fn a_protobuf_body_becomes_one_frame() {
        let framed =
            run(ProxyBody::filtered(FramedRequest::new(ProxyBody::full("hello"))).collect())
                .expect("body")
                .to_bytes();
        assert_eq!(&framed[..], b"\0\0\0\0\x05hello");
        let empty = run(ProxyBody::filtered(FramedRequest::new(ProxyBody::empty())).collect())
            .expect("body")
            .to_bytes();
        assert!(empty.is_empty());
    }

    #[test]
    fn a_short_first_chunk_is_drained_without_panicking() {
        let mut body = ProxyBody::full("abc");
        match run(gather(&mut body, true)) {
            // A body that ends with its only chunk is not unframed (Envoy's filter lets
            // the last chunk pass as it is).
            Gathered::End(b) => assert_eq!(&b[..], b"abc"),
            _ => panic!("not an end"),
        }
    }
}
