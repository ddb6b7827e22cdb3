//! The gzip library: its settings (`Gzip`) and a body compressed as it streams.

use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use bytes::Bytes;
use courier_proto::envoy::config::core::v3::TypedExtensionConfig;
use courier_proto::envoy::extensions::compression::gzip::compressor::v3 as gzip_pb;
use flate2::{Compress, Compression, FlushCompress, Status};
use http::HeaderMap;
use hyper::body::{Body, Frame};

use crate::config::ConfigError;
use crate::filters::http::compressor::DirectionStats;
use crate::filters::http::compressor::GZIP_TYPE;
use crate::http::codec::body::{BodyTransform, BoxError, ProxyBody};

/// The gzip library's settings (a `Gzip`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct GzipParams {
    level: u32,
    window_bits: u8,
}

impl GzipParams {
    /// A `compressor_library` at `path`: it must be gzip's.
    pub(super) fn compile(
        lib: &TypedExtensionConfig,
        path: &str,
    ) -> Result<Arc<GzipParams>, ConfigError> {
        if lib.name.is_empty() {
            return Err(ConfigError::new(
                format!("{path}.name"),
                "value length must be at least 1 characters",
            ));
        }
        let Some(any) = &lib.typed_config else {
            return Err(ConfigError::new(
                format!("{path}.typed_config"),
                "value is required",
            ));
        };
        let at = format!("{path}.typed_config");
        let ty = courier_proto::type_url::message_name(&any.type_url);
        if ty != GZIP_TYPE {
            return Err(ConfigError::new(
                at,
                format!("compressor library {ty} is not supported: Courier has only {GZIP_TYPE}"),
            ));
        }
        let g: gzip_pb::Gzip = crate::filters::http::unpack(any, &at)?;
        let ranged = |v: Option<u32>, default: u32, lo: u32, hi: u32, field: &str| {
            let v = v.unwrap_or(default);
            if (lo..=hi).contains(&v) {
                Ok(v)
            } else {
                Err(ConfigError::new(
                    format!("{at}.{field}"),
                    format!("value must be inside range [{lo}, {hi}]"),
                ))
            }
        };
        // Accepted, not honoured (flate2 has no setting for them): see the module's docs.
        ranged(g.memory_level.map(|v| v.value), 5, 1, 9, "memory_level")?;
        ranged(
            g.chunk_size.map(|v| v.value),
            4096,
            4096,
            65536,
            "chunk_size",
        )?;
        if gzip_pb::gzip::CompressionStrategy::try_from(g.compression_strategy).is_err() {
            return Err(ConfigError::new(
                format!("{at}.compression_strategy"),
                "value must be one of the defined enum values",
            ));
        }
        let window_bits = ranged(g.window_bits.map(|v| v.value), 12, 9, 15, "window_bits")?;
        let level = match gzip_pb::gzip::CompressionLevel::try_from(g.compression_level) {
            // zlib's Z_DEFAULT_COMPRESSION.
            Ok(gzip_pb::gzip::CompressionLevel::DefaultCompression) => 6,
            Ok(l) => l as u32,
            Err(_) => {
                return Err(ConfigError::new(
                    format!("{at}.compression_level"),
                    "value must be one of the defined enum values",
                ))
            }
        };
        Ok(Arc::new(GzipParams {
            level,
            window_bits: window_bits as u8,
        }))
    }

    pub(super) fn encoder(&self) -> Compress {
        Compress::new_gzip(Compression::new(self.level), self.window_bits)
    }
}

/// A body gzipped as it passes ([`ProxyBody::filtered`]): each data frame goes out
/// compressed and flushed, the gzip stream ends with the body (before its trailers).
pub struct Compressing {
    inner: ProxyBody,
    encoder: Compress,
    stats: Arc<DirectionStats>,
    worker: usize,
    finished: bool,
    trailers: Option<HeaderMap>,
}

impl Compressing {
    pub(super) fn new(
        inner: ProxyBody,
        encoder: Compress,
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

    /// Compresses `input`, then flushes (or, at the end, finishes) the stream.
    pub(super) fn compress(&mut self, mut input: &[u8], end: bool) -> Result<Bytes, BoxError> {
        let flush = if end {
            FlushCompress::Finish
        } else {
            FlushCompress::Sync
        };
        self.stats
            .total_uncompressed_bytes
            .add(self.worker, input.len() as u64);
        let mut out = Vec::with_capacity(input.len() / 2 + 64);
        loop {
            if out.capacity() - out.len() < 64 {
                out.reserve(out.capacity().max(1024));
            }
            let before = self.encoder.total_in();
            let status = self.encoder.compress_vec(input, &mut out, flush)?;
            let consumed = usize::try_from(self.encoder.total_in() - before).unwrap_or(input.len());
            input = &input[consumed.min(input.len())..];
            let room = out.len() < out.capacity();
            match status {
                Status::StreamEnd => break,
                // zlib has flushed all it holds once it leaves output room unused.
                Status::Ok | Status::BufError if !end && input.is_empty() && room => break,
                Status::BufError if input.is_empty() && room => break,
                _ => {}
            }
        }
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
                    return Poll::Ready(Some(self.compress(&data, end).map(Frame::data)));
                }
                Err(frame) => {
                    if let Ok(t) = frame.into_trailers() {
                        // Trailers end the body: the gzip stream ends before them.
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

    #[test]
    fn a_streamed_body_decompresses_whole() {
        let store = Store::new(1);
        let stats = DirectionStats::new("t.", &store);
        let params = GzipParams {
            level: 6,
            window_bits: 12,
        };
        let mut c = Compressing::new(ProxyBody::empty(), params.encoder(), stats.clone(), 0);
        let text: Vec<u8> = (0..200_000u32)
            .flat_map(|i| (i % 251).to_le_bytes())
            .collect();
        let mut gz = Vec::new();
        for chunk in text.chunks(7000) {
            let out = c.compress(chunk, false).expect("compress");
            // Each chunk is flushed: what went in so far can be decoded.
            assert!(!out.is_empty());
            gz.extend_from_slice(&out);
        }
        gz.extend_from_slice(&c.compress(&[], true).expect("finish"));
        assert!(c.is_end_stream());
        let mut back = Vec::new();
        flate2::read::GzDecoder::new(&gz[..])
            .read_to_end(&mut back)
            .expect("valid gzip");
        assert_eq!(back, text);
        assert_eq!(stats.total_uncompressed_bytes.value(), text.len() as u64);
        assert_eq!(stats.total_compressed_bytes.value(), gz.len() as u64);
    }
}
