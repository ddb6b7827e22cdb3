//! A `decompressor_library`: gzip, brotli or zstd, by its `typed_config`'s type, and the
//! streams that decode a body chunk by chunk as Envoy's libraries do (each data chunk in,
//! what it decodes to out; errors counted, never fatal to the stream).

use std::sync::Arc;

use courier_proto::envoy::config::core::v3::TypedExtensionConfig;
use courier_proto::envoy::extensions::compression::brotli::decompressor::v3 as brotli_pb;
use courier_proto::envoy::extensions::compression::gzip::decompressor::v3 as gzip_pb;
use courier_proto::envoy::extensions::compression::zstd::decompressor::v3 as zstd_pb;
use courier_proto::google::protobuf::Any;

use crate::config::ConfigError;
use crate::stats::{Counter, Store};

/// The gzip library's config type.
pub const GZIP_TYPE: &str = "envoy.extensions.compression.gzip.decompressor.v3.Gzip";
/// The brotli library's config type.
pub const BROTLI_TYPE: &str = "envoy.extensions.compression.brotli.decompressor.v3.Brotli";
/// The zstd library's config type.
pub const ZSTD_TYPE: &str = "envoy.extensions.compression.zstd.decompressor.v3.Zstd";

/// How many times its input a brotli chunk may decode to (Envoy's fixed `MaxInflateRatio`).
const BROTLI_MAX_INFLATE_RATIO: u64 = 100;

/// A decompressor library's settings.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Library {
    /// `Gzip`: zlib's inflate over a gzip wrapper.
    Gzip {
        window_bits: u8,
        chunk_size: usize,
        max_inflate_ratio: u64,
    },
    /// `Brotli`.
    Brotli { chunk_size: usize },
    /// `Zstd`.
    Zstd { chunk_size: usize },
}

/// A `[lo, hi]`-checked `UInt32Value` (its default when unset), as Envoy's validation.
fn ranged(v: Option<u32>, default: u32, lo: u32, hi: u32, at: &str) -> Result<u32, ConfigError> {
    let v = v.unwrap_or(default);
    if (lo..=hi).contains(&v) {
        Ok(v)
    } else {
        Err(ConfigError::new(
            at,
            format!("value must be inside range [{lo}, {hi}]"),
        ))
    }
}

impl Library {
    /// A `decompressor_library` at `path`.
    pub(super) fn compile(lib: &TypedExtensionConfig, path: &str) -> Result<Library, ConfigError> {
        let (any, at) = crate::filters::http::library_config(lib, path)?;
        match courier_proto::type_url::message_name(&any.type_url) {
            GZIP_TYPE => Library::gzip(any, &at),
            BROTLI_TYPE => {
                let b: brotli_pb::Brotli = crate::filters::http::unpack(any, &at)?;
                let chunk = b.chunk_size.map(|v| v.value);
                Ok(Library::Brotli {
                    chunk_size: ranged(chunk, 4096, 4096, 65536, &format!("{at}.chunk_size"))?
                        as usize,
                })
            }
            ZSTD_TYPE => {
                let z: zstd_pb::Zstd = crate::filters::http::unpack(any, &at)?;
                if !z.dictionaries.is_empty() {
                    return Err(ConfigError::unsupported(format!("{at}.dictionaries")));
                }
                let chunk = z.chunk_size.map(|v| v.value);
                Ok(Library::Zstd {
                    chunk_size: ranged(chunk, 4096, 4096, 65536, &format!("{at}.chunk_size"))?
                        as usize,
                })
            }
            ty => Err(ConfigError::new(
                at,
                format!(
                    "Didn't find a registered implementation for type: '{ty}' (Courier's decompressor libraries: {GZIP_TYPE}, {BROTLI_TYPE}, {ZSTD_TYPE})"
                ),
            )),
        }
    }

    fn gzip(any: &Any, at: &str) -> Result<Library, ConfigError> {
        let g: gzip_pb::Gzip = crate::filters::http::unpack(any, at)?;
        let window_bits = ranged(
            g.window_bits.map(|v| v.value),
            15,
            9,
            15,
            &format!("{at}.window_bits"),
        )?;
        let chunk_size = ranged(
            g.chunk_size.map(|v| v.value),
            4096,
            4096,
            65536,
            &format!("{at}.chunk_size"),
        )?;
        let max_inflate_ratio = ranged(
            g.max_inflate_ratio.map(|v| v.value),
            100,
            1,
            10000,
            &format!("{at}.max_inflate_ratio"),
        )?;
        Ok(Library::Gzip {
            window_bits: window_bits as u8,
            chunk_size: chunk_size as usize,
            max_inflate_ratio: u64::from(max_inflate_ratio),
        })
    }

    /// The `content-encoding` it decodes.
    pub(super) fn encoding(&self) -> &'static str {
        match self {
            Library::Gzip { .. } => "gzip",
            Library::Brotli { .. } => "br",
            Library::Zstd { .. } => "zstd",
        }
    }

    /// Its part of the filter's stat prefix (`decompressor.<name>.<this>.`).
    pub(super) fn stats_name(&self) -> &'static str {
        match self {
            Library::Gzip { .. } => "gzip",
            Library::Brotli { .. } => "brotli",
            Library::Zstd { .. } => "zstd",
        }
    }

    /// The library's own error counters' names (under `decompressor_library.`).
    fn error_names(&self) -> &'static [&'static str] {
        match self {
            Library::Gzip { .. } => &[
                "zlib_errno",
                "zlib_stream_error",
                "zlib_data_error",
                "zlib_mem_error",
                "zlib_buf_error",
                "zlib_version_error",
            ],
            Library::Brotli { .. } => &[
                "brotli_error",
                "brotli_output_overflow",
                "brotli_redundant_input",
            ],
            Library::Zstd { .. } => &[
                "zstd_generic_error",
                "zstd_dictionary_error",
                "zstd_checksum_wrong_error",
                "zstd_memory_error",
            ],
        }
    }

    /// The library's error counters, under `prefix`.
    pub(super) fn stats(&self, prefix: &str, store: &Store) -> Arc<LibraryStats> {
        Arc::new(LibraryStats(
            self.error_names()
                .iter()
                .map(|n| (*n, store.counter(&format!("{prefix}{n}"))))
                .collect(),
        ))
    }

    /// A new decoding stream; `None` (logged) when the library cannot make one.
    pub(super) fn decoder(&self) -> Option<Decoder> {
        Some(match *self {
            Library::Gzip {
                window_bits,
                chunk_size,
                max_inflate_ratio,
            } => Decoder::Gzip(Box::new(GzipDecoder {
                z: flate2::Decompress::new_gzip(window_bits),
                chunk_size,
                max_inflate_ratio,
                state: State::Running,
            })),
            Library::Brotli { chunk_size } => Decoder::Brotli(Box::new(BrotliDecoder {
                state: brotli::BrotliState::new(
                    brotli::enc::StandardAlloc::default(),
                    brotli::enc::StandardAlloc::default(),
                    brotli::enc::StandardAlloc::default(),
                ),
                chunk_size,
                done: State::Running,
            })),
            Library::Zstd { chunk_size } => {
                let Some(dctx) = zstd::zstd_safe::DCtx::try_create() else {
                    tracing::warn!("cannot create a zstd decompression context");
                    return None;
                };
                Decoder::Zstd(Box::new(ZstdDecoder {
                    dctx,
                    chunk_size,
                    failed: false,
                }))
            }
        })
    }
}

/// A library's error counters, by name.
pub(super) struct LibraryStats(Vec<(&'static str, Arc<Counter>)>);

impl LibraryStats {
    fn inc(&self, name: &str, worker: usize) {
        if let Some((_, c)) = self.0.iter().find(|(n, _)| *n == name) {
            c.inc(worker);
        }
    }
}

/// Where a stream is.
#[derive(Clone, Copy, PartialEq, Eq)]
enum State {
    Running,
    /// The compressed stream ended: what follows is ignored.
    Ended,
    /// An error (or a chunk past the inflate ratio) stopped it: each later chunk is
    /// counted as an error again and decodes to nothing, as zlib's and brotli's broken
    /// states answer.
    Failed,
}

/// A decoding stream of one of the libraries (boxed: they are large).
pub(super) enum Decoder {
    /// zlib's inflate.
    Gzip(Box<GzipDecoder>),
    /// brotli.
    Brotli(Box<BrotliDecoder>),
    /// zstd.
    Zstd(Box<ZstdDecoder>),
}

impl Decoder {
    /// What one data chunk decodes to; errors are counted in `stats` and end the
    /// output (what decoded before them is kept).
    pub(super) fn decompress(
        &mut self,
        input: &[u8],
        stats: &LibraryStats,
        worker: usize,
    ) -> Vec<u8> {
        match self {
            Decoder::Gzip(d) => d.decompress(input, stats, worker),
            Decoder::Brotli(d) => d.decompress(input, stats, worker),
            Decoder::Zstd(d) => d.decompress(input, stats, worker),
        }
    }
}

/// A gzip stream (zlib's inflate, `window_bits` + 16).
pub(super) struct GzipDecoder {
    z: flate2::Decompress,
    chunk_size: usize,
    max_inflate_ratio: u64,
    state: State,
}

impl GzipDecoder {
    /// Inflates `input` into `chunk_size` pieces. Once the pieces pass
    /// `max_inflate_ratio` times the chunk's size the chunk is cut there, counted in
    /// `zlib_data_error`, and the stream stops (Envoy's bomb protection).
    fn decompress(&mut self, input: &[u8], stats: &LibraryStats, worker: usize) -> Vec<u8> {
        use flate2::{FlushDecompress, Status};
        if input.is_empty() {
            return Vec::new();
        }
        match self.state {
            State::Running => {}
            State::Ended => return Vec::new(),
            State::Failed => {
                stats.inc("zlib_data_error", worker);
                return Vec::new();
            }
        }
        let limit = self.max_inflate_ratio.saturating_mul(input.len() as u64);
        let mut out = Vec::new();
        let mut piece = vec![0u8; self.chunk_size];
        let mut filled = 0;
        let mut rest = input;
        loop {
            let (in_before, out_before) = (self.z.total_in(), self.z.total_out());
            let r = self
                .z
                .decompress(rest, &mut piece[filled..], FlushDecompress::None);
            let consumed = usize::try_from(self.z.total_in() - in_before).unwrap_or(rest.len());
            let produced = usize::try_from(self.z.total_out() - out_before).unwrap_or(0);
            rest = &rest[consumed.min(rest.len())..];
            filled += produced;
            match r {
                Err(e) => {
                    tracing::trace!("zlib decompression error: {e}");
                    stats.inc("zlib_data_error", worker);
                    self.state = State::Failed;
                    break;
                }
                Ok(Status::StreamEnd) => {
                    self.state = State::Ended;
                    break;
                }
                Ok(_) if consumed == 0 && produced == 0 && filled < piece.len() => break,
                Ok(_) => {}
            }
            if filled == piece.len() {
                out.extend_from_slice(&piece);
                filled = 0;
                if out.len() as u64 > limit {
                    tracing::trace!(
                        "excessive decompression ratio detected: output size {} for input size {}",
                        out.len(),
                        input.len()
                    );
                    stats.inc("zlib_data_error", worker);
                    self.state = State::Failed;
                    return out;
                }
            }
        }
        out.extend_from_slice(&piece[..filled]);
        out
    }
}

/// A brotli stream.
pub(super) struct BrotliDecoder {
    state: brotli::BrotliState<
        brotli::enc::StandardAlloc,
        brotli::enc::StandardAlloc,
        brotli::enc::StandardAlloc,
    >,
    chunk_size: usize,
    done: State,
}

impl BrotliDecoder {
    /// Decodes `input` in `chunk_size` pieces; past 100 times the chunk's size it stops
    /// (`brotli_output_overflow`), as Envoy's.
    fn decompress(&mut self, input: &[u8], stats: &LibraryStats, worker: usize) -> Vec<u8> {
        use brotli::BrotliResult;
        match self.done {
            State::Running => {}
            // Envoy's libbrotli is called once more at the end of the body, without input:
            // a broken stream counts that call too.
            State::Failed if input.is_empty() => {
                stats.inc("brotli_error", worker);
                return Vec::new();
            }
            State::Ended if input.is_empty() => return Vec::new(),
            State::Ended => {
                stats.inc("brotli_error", worker);
                stats.inc("brotli_redundant_input", worker);
                return Vec::new();
            }
            State::Failed => {
                stats.inc("brotli_error", worker);
                return Vec::new();
            }
        }
        let limit = BROTLI_MAX_INFLATE_RATIO.saturating_mul(input.len() as u64);
        let mut out = Vec::new();
        let mut piece = vec![0u8; self.chunk_size];
        let (mut avail_in, mut in_off) = (input.len(), 0usize);
        let (mut avail_out, mut out_off, mut total) = (piece.len(), 0usize, 0usize);
        loop {
            let r = brotli::BrotliDecompressStream(
                &mut avail_in,
                &mut in_off,
                input,
                &mut avail_out,
                &mut out_off,
                &mut piece,
                &mut total,
                &mut self.state,
            );
            let more = match r {
                BrotliResult::ResultSuccess if avail_in > 0 => {
                    stats.inc("brotli_error", worker);
                    stats.inc("brotli_redundant_input", worker);
                    self.done = State::Ended;
                    false
                }
                BrotliResult::ResultFailure => {
                    stats.inc("brotli_error", worker);
                    self.done = State::Failed;
                    false
                }
                _ if out.len() as u64 > limit => {
                    stats.inc("brotli_error", worker);
                    stats.inc("brotli_output_overflow", worker);
                    self.done = State::Failed;
                    false
                }
                r => {
                    if avail_out == 0 {
                        out.extend_from_slice(&piece);
                        avail_out = piece.len();
                        out_off = 0;
                    }
                    if matches!(r, BrotliResult::ResultSuccess) {
                        self.done = State::Ended;
                    }
                    // Input left, or output the decoder still holds.
                    avail_in > 0 || matches!(r, BrotliResult::NeedsMoreOutput)
                }
            };
            if !more {
                break;
            }
        }
        out.extend_from_slice(&piece[..out_off]);
        out
    }
}

/// A zstd stream.
/// How far a zstd chunk may inflate (Courier's bound; brotli's fixed ratio).
const ZSTD_MAX_INFLATE_RATIO: u64 = 100;

pub(super) struct ZstdDecoder {
    dctx: zstd::zstd_safe::DCtx<'static>,
    chunk_size: usize,
    failed: bool,
}

impl ZstdDecoder {
    /// Decodes `input` in `chunk_size` pieces, as long as there is input, and no more
    /// than [`ZSTD_MAX_INFLATE_RATIO`] times the input: past that the body is cut
    /// (counted in `zstd_generic_error`), as brotli's is, so a small chunk cannot make a
    /// worker hold an unbounded output.
    fn decompress(&mut self, input: &[u8], stats: &LibraryStats, worker: usize) -> Vec<u8> {
        use zstd::zstd_safe::{InBuffer, OutBuffer};
        if input.is_empty() {
            return Vec::new();
        }
        if self.failed {
            stats.inc("zstd_generic_error", worker);
            return Vec::new();
        }
        let mut out = Vec::new();
        let mut piece = vec![0u8; self.chunk_size];
        let mut inb = InBuffer::around(input);
        while inb.pos() < input.len() {
            let mut outb = OutBuffer::around(&mut piece[..]);
            match self.dctx.decompress_stream(&mut outb, &mut inb) {
                Ok(_) => {
                    let n = outb.pos();
                    out.extend_from_slice(&piece[..n]);
                    let limit = ZSTD_MAX_INFLATE_RATIO.saturating_mul(input.len() as u64);
                    if out.len() as u64 > limit {
                        tracing::debug!(
                            "zstd: excessive decompression ratio: output {} for input {}",
                            out.len(),
                            input.len()
                        );
                        out.truncate(usize::try_from(limit).unwrap_or(usize::MAX));
                        stats.inc("zstd_generic_error", worker);
                        self.failed = true;
                        break;
                    }
                }
                Err(code) => {
                    let name = zstd::zstd_safe::get_error_name(code);
                    tracing::trace!("zstd decompression error: {name}");
                    let stat = match name {
                        n if n.contains("checksum") => "zstd_checksum_wrong_error",
                        n if n.contains("Dictionary") || n.contains("dictionary") => {
                            "zstd_dictionary_error"
                        }
                        n if n.contains("llocation") => "zstd_memory_error",
                        _ => "zstd_generic_error",
                    };
                    stats.inc(stat, worker);
                    self.failed = true;
                    break;
                }
            }
        }
        out
    }
}
