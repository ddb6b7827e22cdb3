//! A body decompressed as it streams through a decompressor filter.

use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use bytes::Bytes;
use http::{HeaderMap, HeaderValue};
use hyper::body::{Body, Frame};

use super::library::{Decoder, LibraryStats};
use super::{DecompressorFilter, DirectionStats};
use crate::http::codec::body::{BodyTransform, BoxError, ProxyBody};

/// A body decompressed as it passes ([`ProxyBody::filtered`]): each data frame goes out
/// decoded; the body ends with trailers carrying the filter's byte counts
/// (`x-envoy-decompressor-<library>-{compressed,uncompressed}-bytes`), added to its own
/// trailers if it has them, as Envoy's filter adds them.
pub struct Decompressing {
    inner: ProxyBody,
    decoder: Decoder,
    filter: Arc<DecompressorShared>,
    stats: Arc<DirectionStats>,
    worker: usize,
    compressed: u64,
    uncompressed: u64,
    /// The trailers have gone out: the body has ended.
    finished: bool,
    trailers: Option<HeaderMap>,
}

/// What the streams of one filter share: the trailer names and the library's counters.
pub(super) struct DecompressorShared {
    pub(super) compressed_trailer: http::HeaderName,
    pub(super) uncompressed_trailer: http::HeaderName,
    pub(super) library_stats: Arc<LibraryStats>,
}

impl Decompressing {
    pub(super) fn new(
        inner: ProxyBody,
        decoder: Decoder,
        filter: &DecompressorFilter,
        stats: Arc<DirectionStats>,
        worker: usize,
    ) -> Decompressing {
        Decompressing {
            inner,
            decoder,
            filter: filter.shared.clone(),
            stats,
            worker,
            compressed: 0,
            uncompressed: 0,
            finished: false,
            trailers: None,
        }
    }

    fn decompress(&mut self, input: &[u8]) -> Bytes {
        let out = self
            .decoder
            .decompress(input, &self.filter.library_stats, self.worker);
        self.compressed += input.len() as u64;
        self.uncompressed += out.len() as u64;
        self.stats
            .total_compressed_bytes
            .add(self.worker, input.len() as u64);
        self.stats
            .total_uncompressed_bytes
            .add(self.worker, out.len() as u64);
        Bytes::from(out)
    }

    /// The body's trailers (or new ones) with the byte counts.
    fn report(&mut self, mut trailers: HeaderMap) -> HeaderMap {
        self.finished = true;
        trailers.append(
            self.filter.compressed_trailer.clone(),
            HeaderValue::from(self.compressed),
        );
        trailers.append(
            self.filter.uncompressed_trailer.clone(),
            HeaderValue::from(self.uncompressed),
        );
        trailers
    }
}

impl BodyTransform for Decompressing {
    /// The next frame of the decompressed body.
    fn poll_frame(&mut self, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        if let Some(t) = self.trailers.take() {
            return Poll::Ready(Some(Ok(Frame::trailers(t))));
        }
        if self.finished {
            return Poll::Ready(None);
        }
        loop {
            let frame = match Pin::new(&mut self.inner).poll_frame(cx) {
                Poll::Pending => return Poll::Pending,
                Poll::Ready(None) => {
                    let last = self.decompress(&[]);
                    let t = self.report(HeaderMap::new());
                    if last.is_empty() {
                        return Poll::Ready(Some(Ok(Frame::trailers(t))));
                    }
                    self.trailers = Some(t);
                    return Poll::Ready(Some(Ok(Frame::data(last))));
                }
                Poll::Ready(Some(Err(e))) => return Poll::Ready(Some(Err(e))),
                Poll::Ready(Some(Ok(frame))) => frame,
            };
            match frame.into_data() {
                Ok(data) => {
                    let mut out = self.decompress(&data);
                    if self.inner.is_end_stream() {
                        // The end of the body is one more (empty) chunk, as Envoy's
                        // HTTP/1.1 codec gives it.
                        let last = self.decompress(&[]);
                        if !last.is_empty() {
                            let mut all = out.to_vec();
                            all.extend_from_slice(&last);
                            out = Bytes::from(all);
                        }
                        let t = self.report(HeaderMap::new());
                        self.trailers = Some(t);
                    }
                    if out.is_empty() {
                        if let Some(t) = self.trailers.take() {
                            return Poll::Ready(Some(Ok(Frame::trailers(t))));
                        }
                        continue;
                    }
                    return Poll::Ready(Some(Ok(Frame::data(out))));
                }
                Err(frame) => {
                    if let Ok(t) = frame.into_trailers() {
                        let last = self.decompress(&[]);
                        let t = self.report(t);
                        if !last.is_empty() {
                            self.trailers = Some(t);
                            return Poll::Ready(Some(Ok(Frame::data(last))));
                        }
                        return Poll::Ready(Some(Ok(Frame::trailers(t))));
                    }
                }
            }
        }
    }

    /// Whether the decompressed body has ended.
    fn is_end_stream(&self) -> bool {
        self.finished && self.trailers.is_none()
    }
}
