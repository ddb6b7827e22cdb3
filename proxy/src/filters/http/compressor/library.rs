//! A `compressor_library`: gzip, brotli or zstd, by its `typed_config`'s type.

use courier_proto::envoy::config::core::v3::TypedExtensionConfig;

use super::brotli::{BrotliEncoder, BrotliParams};
use super::gzip::GzipParams;
use super::zstd::{ZstdEncoder, ZstdParams};
use crate::config::ConfigError;
use crate::http::codec::body::BoxError;

/// The gzip library's config type.
pub const GZIP_TYPE: &str = "envoy.extensions.compression.gzip.compressor.v3.Gzip";
/// The brotli library's config type.
pub const BROTLI_TYPE: &str = "envoy.extensions.compression.brotli.compressor.v3.Brotli";
/// The zstd library's config type.
pub const ZSTD_TYPE: &str = "envoy.extensions.compression.zstd.compressor.v3.Zstd";

/// A compressor library's settings.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Library {
    /// `Gzip`.
    Gzip(GzipParams),
    /// `Brotli`.
    Brotli(BrotliParams),
    /// `Zstd`.
    Zstd(ZstdParams),
}

impl Library {
    /// A `compressor_library` at `path`.
    pub(super) fn compile(lib: &TypedExtensionConfig, path: &str) -> Result<Library, ConfigError> {
        let (any, at) = crate::filters::http::library_config(lib, path)?;
        match courier_proto::type_url::message_name(&any.type_url) {
            GZIP_TYPE => Ok(Library::Gzip(GzipParams::compile(any, &at)?)),
            BROTLI_TYPE => Ok(Library::Brotli(BrotliParams::compile(any, &at)?)),
            ZSTD_TYPE => Ok(Library::Zstd(ZstdParams::compile(any, &at)?)),
            ty => Err(ConfigError::new(
                at,
                format!(
                    "Didn't find a registered implementation for type: '{ty}' (Courier's compressor libraries: {GZIP_TYPE}, {BROTLI_TYPE}, {ZSTD_TYPE})"
                ),
            )),
        }
    }

    /// The `content-encoding` it produces (the token `accept-encoding` names it by).
    pub(super) fn encoding(&self) -> &'static str {
        match self {
            Library::Gzip(_) => "gzip",
            Library::Brotli(_) => "br",
            Library::Zstd(_) => "zstd",
        }
    }

    /// Its part of the filter's stat prefix (`compressor.<name>.<this>.`).
    pub(super) fn stats_name(&self) -> &'static str {
        match self {
            Library::Gzip(_) => "gzip",
            Library::Brotli(_) => "brotli",
            Library::Zstd(_) => "zstd",
        }
    }

    /// A new compression stream.
    pub(super) fn encoder(&self) -> Result<Encoder, BoxError> {
        Ok(match self {
            Library::Gzip(p) => Encoder::Gzip(Box::new(p.encoder())),
            Library::Brotli(p) => Encoder::Brotli(Box::new(p.encoder())),
            Library::Zstd(p) => Encoder::Zstd(Box::new(p.encoder()?)),
        })
    }
}

/// A compression stream of one of the libraries (boxed: they are large).
pub(super) enum Encoder {
    /// zlib's deflate in a gzip wrapper.
    Gzip(Box<flate2::Compress>),
    /// brotli.
    Brotli(Box<BrotliEncoder>),
    /// zstd.
    Zstd(Box<ZstdEncoder>),
}

impl Encoder {
    /// Compresses `input`; at `end` the stream ends (what each library does between chunks
    /// is its module's to say).
    pub(super) fn compress(&mut self, input: &[u8], end: bool) -> Result<Vec<u8>, BoxError> {
        match self {
            Encoder::Gzip(e) => super::gzip::compress(e, input, end),
            Encoder::Brotli(e) => e.compress(input, end),
            Encoder::Zstd(e) => e.compress(input, end),
        }
    }
}
