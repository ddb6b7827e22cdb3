//! The gzip library (`envoy.compression.gzip.compressor`): its settings (`Gzip`) and its
//! stream, zlib's (flate2 over zlib-rs).
//!
//! `compression_level` and `window_bits` are honoured; `memory_level`,
//! `compression_strategy` and `chunk_size` are checked as Envoy checks them and have no
//! effect (flate2 exposes none of them; the output is valid gzip either way, only its size
//! differs).

use courier_proto::envoy::extensions::compression::gzip::compressor::v3 as gzip_pb;
use courier_proto::google::protobuf::Any;
use flate2::{Compress, Compression, FlushCompress, Status};

use crate::config::ConfigError;
use crate::http::codec::body::BoxError;

/// The gzip library's settings (a `Gzip`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct GzipParams {
    level: u32,
    window_bits: u8,
}

impl GzipParams {
    /// A `Gzip` at `at` (the library's `typed_config`).
    pub(super) fn compile(any: &Any, at: &str) -> Result<GzipParams, ConfigError> {
        let g: gzip_pb::Gzip = crate::filters::http::unpack(any, at)?;
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
        Ok(GzipParams {
            level,
            window_bits: window_bits as u8,
        })
    }

    pub(super) fn encoder(&self) -> Compress {
        Compress::new_gzip(Compression::new(self.level), self.window_bits)
    }
}

/// Compresses `input` into the gzip stream, then flushes it (zlib's sync flush) or, at the
/// end, finishes it.
pub(super) fn compress(
    encoder: &mut Compress,
    mut input: &[u8],
    end: bool,
) -> Result<Vec<u8>, BoxError> {
    let flush = if end {
        FlushCompress::Finish
    } else {
        FlushCompress::Sync
    };
    let mut out = Vec::with_capacity(input.len() / 2 + 64);
    loop {
        if out.capacity() - out.len() < 64 {
            out.reserve(out.capacity().max(1024));
        }
        let before = encoder.total_in();
        let status = encoder.compress_vec(input, &mut out, flush)?;
        let consumed = usize::try_from(encoder.total_in() - before).unwrap_or(input.len());
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
    Ok(out)
}
