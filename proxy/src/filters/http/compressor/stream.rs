//! A body compressed as it streams through a compressor filter.

use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use bytes::Bytes;
use http::HeaderMap;
use hyper::body::{Body, Frame};

use super::library::Encoder;
use super::DirectionStats;
use crate::http::codec::body::{BodyTransform, BoxError, ProxyBody};

/// A body compressed as it passes ([`ProxyBody::filtered`]): each data frame goes out
/// compressed, the stream ends with the body (before its trailers).
pub struct Compressing {
    inner: ProxyBody,
    encoder: Encoder,
    stats: Arc<DirectionStats>,
    worker: usize,
    finished: bool,
    trailers: Option<HeaderMap>,
}

impl Compressing {
    pub(super) fn new(
        inner: ProxyBody,
        encoder: Encoder,
        stats: Arc<DirectionStats>,
        worker: usize,
    ) -> Compressing {
        Compressing {
            inner,
            encoder,
            stats,
            worker,
            finished: false,
            trailers: None,
        }
    }

    /// Compresses `input`, counting both sizes; `end` ends the stream.
    pub(super) fn compress(&mut self, input: &[u8], end: bool) -> Result<Bytes, BoxError> {
        self.stats
            .total_uncompressed_bytes
            .add(self.worker, input.len() as u64);
        let out = self.encoder.compress(input, end)?;
        if end {
            self.finished = true;
        }
        self.stats
            .total_compressed_bytes
            .add(self.worker, out.len() as u64);
        Ok(Bytes::from(out))
    }
}

impl BodyTransform for Compressing {
    /// The next frame of the compressed body.
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
                    return Poll::Ready(Some(self.compress(&[], true).map(Frame::data)));
                }
                Poll::Ready(Some(Err(e))) => return Poll::Ready(Some(Err(e))),
                Poll::Ready(Some(Ok(frame))) => frame,
            };
            match frame.into_data() {
                Ok(data) => {
                    let end = self.inner.is_end_stream();
                    if data.is_empty() && !end {
                        continue;
                    }
                    let out = self.compress(&data, end);
                    // zstd holds what it has not yet made into a block: nothing to send.
                    if matches!(&out, Ok(b) if b.is_empty()) && !end {
                        continue;
                    }
                    return Poll::Ready(Some(out.map(Frame::data)));
                }
                Err(frame) => {
                    if let Ok(t) = frame.into_trailers() {
                        // Trailers end the body: the compressed stream ends before them.
                        let last = self.compress(&[], true);
                        self.trailers = Some(t);
                        return Poll::Ready(Some(last.map(Frame::data)));
                    }
                }
            }
        }
    }

    /// Whether the compressed body has ended.
    fn is_end_stream(&self) -> bool {
        self.finished && self.trailers.is_none()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::stats::Store;
    use std::io::Read;

    fn stream_through(lib: &str, text: &[u8]) -> (Vec<u8>, Arc<DirectionStats>) {
        use courier_proto::envoy::config::core::v3::TypedExtensionConfig;
        let ty = match lib {
            "gzip" => super::super::library::GZIP_TYPE,
            "br" => super::super::library::BROTLI_TYPE,
            _ => super::super::library::ZSTD_TYPE,
        };
        let lib_flushes = lib != "zstd";
        let lib = super::super::library::Library::compile(
            &TypedExtensionConfig {
                name: "l".into(),
                typed_config: Some(courier_proto::google::protobuf::Any {
                    type_url: format!("type.googleapis.com/{ty}"),
                    value: Vec::new(),
                }),
            },
            "lib",
        )
        .expect("a library");
        let store = Store::new(1);
        let stats = DirectionStats::new("t.", &store);
        let mut c = Compressing::new(
            ProxyBody::empty(),
            lib.encoder().expect("encoder"),
            stats.clone(),
            0,
        );
        let mut out = Vec::new();
        for chunk in text.chunks(7000) {
            let o = c.compress(chunk, false).expect("compress");
            // gzip and brotli flush each chunk: what went in so far can be decoded.
            assert!(!lib_flushes || !o.is_empty(), "{ty}");
            out.extend_from_slice(&o);
        }
        out.extend_from_slice(&c.compress(&[], true).expect("finish"));
        assert!(c.is_end_stream());
        (out, stats)
    }

    #[test]
    fn streamed_bodies_decompress_whole() {
        let text: Vec<u8> = (0..200_000u32)
            .flat_map(|i| (i % 251).to_le_bytes())
            .collect();
        for lib in ["gzip", "br", "zstd"] {
            let (out, stats) = stream_through(lib, &text);
            let mut back = Vec::new();
            match lib {
                "gzip" => {
                    flate2::read::GzDecoder::new(&out[..])
                        .read_to_end(&mut back)
                        .expect("valid gzip");
                }
                "br" => {
                    brotli::Decompressor::new(&out[..], 4096)
                        .read_to_end(&mut back)
                        .expect("valid brotli");
                }
                _ => back = zstd::decode_all(&out[..]).expect("valid zstd"),
            }
            assert_eq!(back, text, "{lib}");
            assert_eq!(stats.total_uncompressed_bytes.value(), text.len() as u64);
            assert_eq!(stats.total_compressed_bytes.value(), out.len() as u64);
            assert!(out.len() < text.len() / 2, "{lib}");
        }
    }
}
