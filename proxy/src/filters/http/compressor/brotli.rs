//! The brotli library (`envoy.compression.brotli.compressor`): its settings (`Brotli`) and
//! its stream, Dropbox's pure-Rust brotli.
//!
//! Every setting is honoured as Envoy's libbrotli is given it: `quality` (default 3),
//! `window_bits` (lgwin, default 18), `input_block_bits` (lgblock, default 24),
//! `disable_literal_context_modeling`, `encoder_mode` (`DEFAULT` is libbrotli's generic
//! mode) and `chunk_size` (the size of the encoder's output buffer, default 4096: it
//! changes how output is cut, not what it decodes to). Each chunk of the body is flushed
//! (`BROTLI_OPERATION_FLUSH`), the stream finished with the body, as Envoy's.

use std::io::Write;

use brotli::enc::backward_references::BrotliEncoderMode;
use brotli::enc::BrotliEncoderParams;
use courier_proto::envoy::extensions::compression::brotli::compressor::v3 as brotli_pb;
use courier_proto::google::protobuf::Any;

use crate::config::ConfigError;
use crate::http::codec::body::BoxError;

/// The brotli library's settings (a `Brotli`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct BrotliParams {
    quality: u32,
    window_bits: u32,
    input_block_bits: u32,
    disable_literal_context_modeling: bool,
    mode: brotli_pb::brotli::EncoderMode,
    chunk_size: u32,
}

impl BrotliParams {
    /// A `Brotli` at `at` (the library's `typed_config`), checked as Envoy checks it.
    pub(super) fn compile(any: &Any, at: &str) -> Result<BrotliParams, ConfigError> {
        let b: brotli_pb::Brotli = crate::filters::http::unpack(any, at)?;
        let ranged = |v: Option<u32>, default: u32, lo: u32, hi: u32, field: &str| {
            let v = v.unwrap_or(default);
            if (lo..=hi).contains(&v) {
                Ok(v)
            } else if lo == 0 {
                Err(ConfigError::new(
                    format!("{at}.{field}"),
                    format!("value must be less than or equal to {hi}"),
                ))
            } else {
                Err(ConfigError::new(
                    format!("{at}.{field}"),
                    format!("value must be inside range [{lo}, {hi}]"),
                ))
            }
        };
        let quality = ranged(b.quality.map(|v| v.value), 3, 0, 11, "quality")?;
        let window_bits = ranged(b.window_bits.map(|v| v.value), 18, 10, 24, "window_bits")?;
        let input_block_bits = ranged(
            b.input_block_bits.map(|v| v.value),
            24,
            16,
            24,
            "input_block_bits",
        )?;
        let chunk_size = ranged(
            b.chunk_size.map(|v| v.value),
            4096,
            4096,
            65536,
            "chunk_size",
        )?;
        let mode = brotli_pb::brotli::EncoderMode::try_from(b.encoder_mode).map_err(|_| {
            ConfigError::new(
                format!("{at}.encoder_mode"),
                "value must be one of the defined enum values",
            )
        })?;
        Ok(BrotliParams {
            quality,
            window_bits,
            input_block_bits,
            disable_literal_context_modeling: b.disable_literal_context_modeling,
            mode,
            chunk_size,
        })
    }

    /// A new stream with these settings.
    pub(super) fn encoder(&self) -> BrotliEncoder {
        use brotli_pb::brotli::EncoderMode;
        let params = BrotliEncoderParams {
            quality: self.quality as i32,
            lgwin: self.window_bits as i32,
            lgblock: self.input_block_bits as i32,
            disable_literal_context_modeling: i32::from(self.disable_literal_context_modeling),
            mode: match self.mode {
                EncoderMode::Default | EncoderMode::Generic => {
                    BrotliEncoderMode::BROTLI_MODE_GENERIC
                }
                EncoderMode::Text => BrotliEncoderMode::BROTLI_MODE_TEXT,
                EncoderMode::Font => BrotliEncoderMode::BROTLI_MODE_FONT,
            },
            ..BrotliEncoderParams::default()
        };
        BrotliEncoder(Some(brotli::CompressorWriter::with_params(
            Vec::new(),
            self.chunk_size as usize,
            &params,
        )))
    }
}

/// A brotli stream: the encoder writes into the `Vec` it holds, emptied at each chunk.
pub(super) struct BrotliEncoder(Option<brotli::CompressorWriter<Vec<u8>>>);

impl BrotliEncoder {
    /// Compresses `input`, then flushes the stream or, at the end, finishes it.
    pub(super) fn compress(&mut self, input: &[u8], end: bool) -> Result<Vec<u8>, BoxError> {
        let Some(w) = self.0.as_mut() else {
            return Err("the brotli stream has already ended".into());
        };
        w.write_all(input)?;
        if end {
            let w = self.0.take().ok_or("the brotli stream has already ended")?;
            return Ok(w.into_inner());
        }
        w.flush()?;
        Ok(std::mem::take(w.get_mut()))
    }
}
