//! The decompressor filter (`envoy.filters.http.decompressor`) with the gzip, brotli and
//! zstd libraries (`envoy.extensions.compression.{gzip,brotli,zstd}.decompressor.v3`, see
//! [`library`]): request and response bodies whose `content-encoding` is the library's
//! are decoded as they stream.
//!
//! As Envoy 1.40 (measured, `tests/http_decompressor.rs`):
//!
//! - A request gets the library's encoding in `accept-encoding` when response
//!   decompression is enabled and `advertise_accept_encoding` (default true): appended,
//!   an entry of the same encoding (with its q-value) removed first, the list rewritten
//!   comma-separated without spaces.
//! - A message with a body (not headers-only) is decompressed when its direction is
//!   enabled (`common_config.enabled`, a runtime flag), it has no `cache-control:
//!   no-transform` (unless `ignore_no_transform_header`), and the first entry of its
//!   `content-encoding` (values joined, trimmed, any case) is the library's encoding.
//!   That entry is removed from `content-encoding` (the header goes when it was the only
//!   one), `content-length` is removed. Each message with a body counts in `decompressed`
//!   or `not_decompressed`.
//! - The body is decoded chunk by chunk; it ends with the trailers
//!   `x-envoy-decompressor-<library name>-compressed-bytes` and `-uncompressed-bytes`
//!   (sent where the codec sends trailers: HTTP/2, HTTP/1.1 with `enable_trailers`).
//! - A corrupt body is not an error of the stream: what decoded before the error goes
//!   on, the rest of the body is dropped, each later chunk counted again in the library's
//!   error counter. A gzip chunk that inflates past `max_inflate_ratio` (100) times its
//!   size, or a brotli one past 100 times, is cut there (`zlib_data_error`,
//!   `brotli_output_overflow`): the output never grows without bound.
//! - Counters under `http.<stat_prefix>.decompressor.<library name>.<gzip|brotli|zstd>.`:
//!   `request.` and `response.` `decompressed`, `not_decompressed`,
//!   `total_compressed_bytes`, `total_uncompressed_bytes`; the library's under
//!   `decompressor_library.` (gzip: `zlib_data_error` and the other `zlib_*`; brotli:
//!   `brotli_error`, `brotli_output_overflow`, `brotli_redundant_input`; zstd:
//!   `zstd_generic_error`, `zstd_dictionary_error`, `zstd_checksum_wrong_error`,
//!   `zstd_memory_error`).
//!
//! Differences: zstd's `dictionaries` is refused; brotli's
//! `disable_ring_buffer_reallocation` only chooses how Envoy's libbrotli allocates its
//! window (the Rust decoder has one strategy: the decoded bytes are the same). The
//! library's counters exist from the start (Envoy makes them with the first stream).
//! The response passes of decompressor filters run before the compressor filters' (as
//! in a chain with the compressor first, the usual order).

mod library;
mod stream;

use std::sync::Arc;

use courier_proto::envoy::extensions::filters::http::decompressor::v3 as pb;
use http::header::{self, HeaderName};
use http::{HeaderMap, HeaderValue, Request, Response};
use hyper::body::Body;

use self::library::Library;
pub use self::library::{BROTLI_TYPE, GZIP_TYPE, ZSTD_TYPE};
pub use self::stream::Decompressing;
use self::stream::DecompressorShared;
use crate::config::ConfigError;
use crate::filters::http::joined;
use crate::http::codec::body::ProxyBody;
use crate::layered_runtime::RuntimeFlag;
use crate::stats::{Counter, Store};

/// The filter's config type (`typed_config`).
pub const FILTER_TYPE: &str = "envoy.extensions.filters.http.decompressor.v3.Decompressor";
/// The filter's well-known name.
pub const FILTER_NAME: &str = "envoy.filters.http.decompressor";

/// The counters of one direction.
pub(crate) struct DirectionStats {
    decompressed: Arc<Counter>,
    not_decompressed: Arc<Counter>,
    total_compressed_bytes: Arc<Counter>,
    total_uncompressed_bytes: Arc<Counter>,
}

/// One direction's settings (`common_config`) and counters.
struct Direction {
    enabled: RuntimeFlag,
    ignore_no_transform_header: bool,
    stats: Arc<DirectionStats>,
}

impl Direction {
    fn compile(
        common: Option<&pb::decompressor::CommonDirectionConfig>,
        prefix: &str,
        store: &Store,
    ) -> Direction {
        let counter = |s: &str| store.counter(&format!("{prefix}{s}"));
        Direction {
            enabled: RuntimeFlag::compile(common.and_then(|c| c.enabled.as_ref())),
            ignore_no_transform_header: common.is_some_and(|c| c.ignore_no_transform_header),
            stats: Arc::new(DirectionStats {
                decompressed: counter("decompressed"),
                not_decompressed: counter("not_decompressed"),
                total_compressed_bytes: counter("total_compressed_bytes"),
                total_uncompressed_bytes: counter("total_uncompressed_bytes"),
            }),
        }
    }
}

/// A connection manager's decompressor filter.
pub struct DecompressorFilter {
    /// The filter's name in `http_filters`.
    pub name: String,
    library: Library,
    request: Direction,
    response: Direction,
    /// `request_direction_config.advertise_accept_encoding` (default true).
    advertise_accept_encoding: bool,
    shared: Arc<DecompressorShared>,
}

impl DecompressorFilter {
    /// Compiles the filter named `name` at `path` (its `typed_config`), its stats under
    /// `http.<stat_prefix>.`.
    pub fn compile(
        name: &str,
        p: &pb::Decompressor,
        path: &str,
        stat_prefix: &str,
        store: &Store,
    ) -> Result<DecompressorFilter, ConfigError> {
        let Some(lib) = &p.decompressor_library else {
            return Err(ConfigError::new(
                format!("{path}.decompressor_library"),
                "value is required",
            ));
        };
        let library = Library::compile(lib, &format!("{path}.decompressor_library"))?;
        let base = format!(
            "http.{stat_prefix}.decompressor.{}.{}.",
            lib.name,
            library.stats_name()
        );
        let req = p.request_direction_config.as_ref();
        let trailer = |kind: &str| {
            HeaderName::from_bytes(
                format!("x-envoy-decompressor-{}-{kind}-bytes", lib.name)
                    .to_ascii_lowercase()
                    .as_bytes(),
            )
            .map_err(|_| {
                ConfigError::new(
                    format!("{path}.decompressor_library.name"),
                    "not a valid header name part",
                )
            })
        };
        Ok(DecompressorFilter {
            name: name.to_string(),
            request: Direction::compile(
                req.and_then(|r| r.common_config.as_ref()),
                &format!("{base}request."),
                store,
            ),
            response: Direction::compile(
                p.response_direction_config
                    .as_ref()
                    .and_then(|r| r.common_config.as_ref()),
                &format!("{base}response."),
                store,
            ),
            advertise_accept_encoding: req
                .and_then(|r| r.advertise_accept_encoding)
                .is_none_or(|b| b.value),
            shared: Arc::new(DecompressorShared {
                compressed_trailer: trailer("compressed")?,
                uncompressed_trailer: trailer("uncompressed")?,
                library_stats: library.stats(&format!("{base}decompressor_library."), store),
            }),
            library,
        })
    }

    /// The filter's request pass: advertises the encoding in `accept-encoding`, and
    /// decompresses the request body when it should.
    pub fn on_request(&self, req: &mut Request<ProxyBody>, worker: usize) {
        let encoding = self.library.encoding();
        if self.response.enabled.enabled() && self.advertise_accept_encoding {
            let current = joined(req.headers(), header::ACCEPT_ENCODING);
            let value = add_encoding(
                current.as_ref().map_or(&b""[..], |v| v.as_bytes()),
                encoding,
            );
            if let Ok(v) = HeaderValue::from_str(&value) {
                req.headers_mut().insert(header::ACCEPT_ENCODING, v);
            }
        }
        // A headers-only request is left alone, and not counted.
        if req.body().is_end_stream() {
            return;
        }
        if let Some(d) = self.decide(&self.request, req.headers_mut(), worker) {
            self.wrap(&self.request, req.body_mut(), d, worker);
        }
    }

    /// The filter's response pass: decompresses the response body when it should.
    pub fn on_response(&self, resp: &mut Response<ProxyBody>, worker: usize) {
        if resp.body().is_end_stream() {
            return;
        }
        if let Some(d) = self.decide(&self.response, resp.headers_mut(), worker) {
            self.wrap(&self.response, resp.body_mut(), d, worker);
        }
    }

    /// Whether a message is decompressed (counted either way): its headers rewritten and
    /// a stream to decode its body when it is.
    fn decide(
        &self,
        dir: &Direction,
        headers: &mut HeaderMap,
        worker: usize,
    ) -> Option<library::Decoder> {
        let should = dir.enabled.enabled()
            && (dir.ignore_no_transform_header || !no_transform(headers))
            && self.encoding_matches(headers);
        let decoder = should.then(|| self.library.decoder()).flatten();
        let Some(decoder) = decoder else {
            dir.stats.not_decompressed.inc(worker);
            return None;
        };
        dir.stats.decompressed.inc(worker);
        headers.remove(header::CONTENT_LENGTH);
        strip_first_encoding(headers);
        Some(decoder)
    }

    fn wrap(
        &self,
        dir: &Direction,
        body: &mut ProxyBody,
        decoder: library::Decoder,
        worker: usize,
    ) {
        let inner = std::mem::replace(body, ProxyBody::empty());
        *body = ProxyBody::filtered(Decompressing::new(
            inner,
            decoder,
            self,
            dir.stats.clone(),
            worker,
        ));
    }

    /// Whether the first entry of `content-encoding` is the library's encoding.
    fn encoding_matches(&self, headers: &HeaderMap) -> bool {
        let Some(v) = joined(headers, header::CONTENT_ENCODING) else {
            return false;
        };
        let s = String::from_utf8_lossy(v.as_bytes());
        let first = s.split(',').next().unwrap_or("").trim();
        first.eq_ignore_ascii_case(self.library.encoding())
    }
}

/// Whether `cache-control` has the token `no-transform`.
fn no_transform(headers: &HeaderMap) -> bool {
    headers.get_all(header::CACHE_CONTROL).iter().any(|v| {
        String::from_utf8_lossy(v.as_bytes())
            .split(',')
            .any(|t| t.trim().eq_ignore_ascii_case("no-transform"))
    })
}

/// `content-encoding` without its first entry (the decoded one): what follows the first
/// comma, trimmed; the header goes when there is no comma.
fn strip_first_encoding(headers: &mut HeaderMap) {
    let Some(v) = joined(headers, header::CONTENT_ENCODING) else {
        return;
    };
    let all = String::from_utf8_lossy(v.as_bytes());
    let all = all.trim();
    match all.split_once(',') {
        Some((_, rest)) => match HeaderValue::from_str(rest.trim()) {
            Ok(v) => {
                headers.insert(header::CONTENT_ENCODING, v);
            }
            Err(_) => {
                headers.remove(header::CONTENT_ENCODING);
            }
        },
        None => {
            headers.remove(header::CONTENT_ENCODING);
        }
    }
}

/// `accept-encoding` with `encoding` added as Envoy adds it: the entries (trimmed, empty
/// ones dropped) but those naming `encoding` (with any q-value), then `encoding`, joined
/// by `,`.
fn add_encoding(accept_encoding: &[u8], encoding: &str) -> String {
    let current = String::from_utf8_lossy(accept_encoding);
    let mut out: Vec<&str> = current
        .split(',')
        .map(str::trim)
        .filter(|t| !t.is_empty())
        .filter(|t| t.split(';').next().unwrap_or("").trim() != encoding)
        .collect();
    out.push(encoding);
    out.join(",")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accept_encoding_is_advertised_as_envoy_does() {
        assert_eq!(add_encoding(b"one,two", "three"), "one,two,three");
        assert_eq!(add_encoding(b"one,two", "one"), "two,one");
        assert_eq!(add_encoding(b"one;q=0.3,two", "two"), "one;q=0.3,two");
        assert_eq!(add_encoding(b"one;q=0.3,two", "one"), "two,one");
        assert_eq!(add_encoding(b"", "one"), "one");
        assert_eq!(add_encoding(b" br , ,gzip ;q=0", "gzip"), "br,gzip");
    }

    #[test]
    fn the_first_encoding_goes() {
        let mut h = HeaderMap::new();
        h.insert(
            header::CONTENT_ENCODING,
            HeaderValue::from_static(" gzip , br "),
        );
        strip_first_encoding(&mut h);
        assert_eq!(h[header::CONTENT_ENCODING], "br");
        strip_first_encoding(&mut h);
        assert!(h.get(header::CONTENT_ENCODING).is_none());
    }
}
