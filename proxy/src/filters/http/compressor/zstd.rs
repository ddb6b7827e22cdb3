//! The zstd library (`envoy.compression.zstd.compressor`): its settings (`Zstd`) and its
//! stream, the reference libzstd (the `zstd` crate).
//!
//! `compression_level` (0: zstd's default, 3; levels past zstd's maximum are clamped by
//! libzstd, as in Envoy), `enable_checksum` and `strategy` are honoured; `chunk_size` (the
//! size of Envoy's output buffer) is checked and changes only how output is cut. As in
//! Envoy the body's chunks are compressed without a flush (`ZSTD_e_continue`): output comes
//! as zstd produces it, the frame ends with the body. `dictionary` is refused.

use std::io::Write;

use courier_proto::envoy::extensions::compression::zstd::compressor::v3 as zstd_pb;
use courier_proto::google::protobuf::Any;
use zstd::zstd_safe::{CParameter, Strategy};

use crate::config::ConfigError;
use crate::http::codec::body::BoxError;

/// The zstd library's settings (a `Zstd`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct ZstdParams {
    level: i32,
    checksum: bool,
    strategy: zstd_pb::zstd::Strategy,
}

impl ZstdParams {
    /// A `Zstd` at `at` (the library's `typed_config`), checked as Envoy checks it.
    pub(super) fn compile(any: &Any, at: &str) -> Result<ZstdParams, ConfigError> {
        let z: zstd_pb::Zstd = crate::filters::http::unpack(any, at)?;
        if z.dictionary.is_some() {
            return Err(ConfigError::unsupported(format!("{at}.dictionary")));
        }
        if let Some(c) = z.chunk_size.map(|v| v.value) {
            if !(4096..=65536).contains(&c) {
                return Err(ConfigError::new(
                    format!("{at}.chunk_size"),
                    "value must be inside range [4096, 65536]",
                ));
            }
        }
        let strategy = zstd_pb::zstd::Strategy::try_from(z.strategy).map_err(|_| {
            ConfigError::new(
                format!("{at}.strategy"),
                "value must be one of the defined enum values",
            )
        })?;
        let level = match z.compression_level.map(|v| v.value) {
            None | Some(0) => zstd::DEFAULT_COMPRESSION_LEVEL,
            Some(l) => i32::try_from(l).unwrap_or(i32::MAX),
        };
        Ok(ZstdParams {
            level,
            checksum: z.enable_checksum,
            strategy,
        })
    }

    /// A new stream with these settings.
    pub(super) fn encoder(&self) -> Result<ZstdEncoder, BoxError> {
        use zstd_pb::zstd::Strategy as S;
        let mut e = zstd::stream::write::Encoder::new(Vec::new(), self.level)?;
        e.include_checksum(self.checksum)?;
        let strategy = match self.strategy {
            S::Default => None,
            S::Fast => Some(Strategy::ZSTD_fast),
            S::Dfast => Some(Strategy::ZSTD_dfast),
            S::Greedy => Some(Strategy::ZSTD_greedy),
            S::Lazy => Some(Strategy::ZSTD_lazy),
            S::Lazy2 => Some(Strategy::ZSTD_lazy2),
            S::Btlazy2 => Some(Strategy::ZSTD_btlazy2),
            S::Btopt => Some(Strategy::ZSTD_btopt),
            S::Btultra => Some(Strategy::ZSTD_btultra),
            S::Btultra2 => Some(Strategy::ZSTD_btultra2),
        };
        if let Some(s) = strategy {
            e.set_parameter(CParameter::Strategy(s))?;
        }
        Ok(ZstdEncoder(Some(e)))
    }
}

/// A zstd frame being written: the encoder writes into the `Vec` it holds, emptied at
/// each chunk.
pub(super) struct ZstdEncoder(Option<zstd::stream::write::Encoder<'static, Vec<u8>>>);

impl ZstdEncoder {
    /// Compresses `input` (what zstd has produced so far comes out) or, at the end, ends
    /// the frame.
    pub(super) fn compress(&mut self, input: &[u8], end: bool) -> Result<Vec<u8>, BoxError> {
        let Some(e) = self.0.as_mut() else {
            return Err("the zstd frame has already ended".into());
        };
        e.write_all(input)?;
        if end {
            let e = self.0.take().ok_or("the zstd frame has already ended")?;
            return Ok(e.finish()?);
        }
        Ok(std::mem::take(e.get_mut()))
    }
}
