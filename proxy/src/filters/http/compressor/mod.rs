//! The compressor filter (`envoy.filters.http.compressor`) with the gzip, brotli and zstd
//! libraries (`envoy.extensions.compression.{gzip,brotli,zstd}.compressor.v3`, see
//! [`library`]): response bodies compressed on the way to clients that accept it, request
//! bodies on the way upstream when `request_direction_config` asks for it. A chain may have
//! several compressor filters: they negotiate by `accept-encoding` as Envoy's do.
//!
//! As Envoy 1.40 (measured, `tests/http_compressor.rs`):
//!
//! - The request's `accept-encoding` is read when the request passes the filter (after
//!   which `remove_accept_encoding_header` may remove it); a response a filter before it
//!   answered sees none. Every response the proxy sends after the filters (the
//!   upstream's, a direct response, the router's own replies, a filter's answer, a CORS
//!   preflight) is then judged: compressed when response compression is enabled (the
//!   runtime flag, or the route's `CompressorPerRoute`), its
//!   `content-length` (when it has one) is at least `min_content_length` (30), it is not an
//!   upgrade, its status is not in `uncompressible_response_codes`, its `content-type`
//!   (without parameters) is in `content_type` (Envoy's default list when empty) or
//!   matches `content_type_matcher`, it has no `cache-control: no-transform`, no `etag`
//!   when `disable_on_etag_header` (unless `weaken_etag_on_compress`), no
//!   `content-encoding`, it has a body, and `accept-encoding` chooses its encoding.
//! - The choice is made once per response among the compressor filters that run for the
//!   request (in chain order; those whose content types exclude the response's left out):
//!   q-values, `identity`, `*` (the first compressor still allowed), a `q=0` refusing an
//!   encoding, an unparsable q-value dropping its entry, ties going to the first named
//!   unless a later one's filter has `choose_first` ([`accept`]). Each filter counts the
//!   choice (`header_compressor_used`, or `header_compressor_overshadowed` when another
//!   encoding was chosen, `header_wildcard`, `header_identity`, `header_not_valid`); the
//!   filters' response passes run from the last in the chain to the first, so the chosen
//!   one's `content-encoding` makes the others leave the response alone (each counts it in
//!   `not_compressed`).
//! - A compressed response loses `content-length` (HTTP/1.1 goes chunked), gets
//!   `content-encoding` (`gzip`, `br`, `zstd`), and a strong `etag` is removed (made weak with
//!   `weaken_etag_on_compress`). Every response that could have been compressed but for
//!   the request (its `accept-encoding`, a HEAD, a `204`/`304`) gets `vary:
//!   Accept-Encoding` (appended to a `vary` that lacks that exact token).
//! - The body is compressed as it streams: gzip and brotli flush each chunk, zstd (as in
//!   Envoy) does not; the stream ends with the body or before its trailers, which follow it.
//! - Counters under `http.<stat_prefix>.compressor.<library name>.<gzip|brotli|zstd>.`:
//!   `header_compressor_used`, `header_compressor_overshadowed`, `header_identity`,
//!   `header_wildcard`, `header_not_valid`, `no_accept_header`, `not_compressed_etag`,
//!   then `compressed`, `not_compressed`, `content_length_too_small`,
//!   `total_uncompressed_bytes`, `total_compressed_bytes` (under `response.` when the
//!   filter has a `response_direction_config`) and the same five under `request.` (each
//!   request the filter sees counts in `request.not_compressed` unless compressed).
//!
//! Differences and limits: `status_header_enabled` is refused; what each library honours
//! of its settings is in its module ([`gzip`]: `memory_level`, `compression_strategy` and
//! `chunk_size` have no effect; [`zstd`]: `dictionary` is refused). A route's
//! `CompressorPerRoute` library is used only when it has the filter's encoding (Envoy
//! 1.40 compresses with the filter's own otherwise, measured).

mod accept;
mod brotli;
mod gzip;
mod library;
mod stream;
mod zstd;

use std::sync::Arc;

use courier_proto::envoy::config::core::v3::RuntimeFeatureFlag;
use courier_proto::envoy::extensions::filters::http::compressor::v3 as pb;
use http::header;
use http::{HeaderMap, HeaderValue, Response};
use hyper::body::Body;

use self::accept::{choose, Candidate, Decision};
use self::library::Library;
pub use self::library::{BROTLI_TYPE, GZIP_TYPE, ZSTD_TYPE};
pub use self::stream::Compressing;
use crate::config::ConfigError;
use crate::filters::http::joined;
use crate::http::codec::body::ProxyBody;
use crate::http::route::per_filter::{self, FilterConfigs};
use crate::http::route::StrMatch;
use crate::layered_runtime::RuntimeFlag;
use crate::stats::{Counter, Store};

/// The filter's config type (`typed_config`).
pub const FILTER_TYPE: &str = "envoy.extensions.filters.http.compressor.v3.Compressor";
/// The filter's well-known name.
pub const FILTER_NAME: &str = "envoy.filters.http.compressor";
/// The per-route settings' type (`typed_per_filter_config`).
pub const PER_ROUTE_TYPE: &str = "envoy.extensions.filters.http.compressor.v3.CompressorPerRoute";
const ACCEPT_ENCODING_TOKEN: &str = "Accept-Encoding";

/// Envoy's content types when `content_type` is empty.
const DEFAULT_CONTENT_TYPES: &[&str] = &[
    "text/html",
    "text/plain",
    "text/css",
    "application/javascript",
    "application/x-javascript",
    "text/javascript",
    "text/x-javascript",
    "text/ecmascript",
    "text/js",
    "text/jscript",
    "text/x-js",
    "application/ecmascript",
    "application/x-json",
    "application/xml",
    "application/json",
    "image/svg+xml",
    "text/xml",
    "application/xhtml+xml",
    "application/grpc-web",
    "application/grpc-web+proto",
];

/// `response_direction_config.common_config` (or `request_direction_config`'s).
struct Common {
    enabled: RuntimeFlag,
    min_content_length: u64,
    content_types: ContentTypes,
}

enum ContentTypes {
    /// `content_type` (or Envoy's default list), lower-case: matched ignoring case.
    Set(Vec<String>),
    /// `content_type_matcher`.
    Matchers(Vec<StrMatch>),
}

impl ContentTypes {
    fn compile(
        types: &[String],
        matchers: &[courier_proto::envoy::r#type::matcher::v3::StringMatcher],
        path: &str,
    ) -> Result<ContentTypes, ConfigError> {
        if !matchers.is_empty() {
            return Ok(ContentTypes::Matchers(
                matchers
                    .iter()
                    .enumerate()
                    .map(|(i, m)| {
                        StrMatch::compile(m, &format!("{path}.content_type_matcher[{i}]"))
                    })
                    .collect::<Result<_, _>>()?,
            ));
        }
        let list: Vec<String> = if types.is_empty() {
            DEFAULT_CONTENT_TYPES
                .iter()
                .map(|t| t.to_string())
                .collect()
        } else {
            types.iter().map(|t| t.to_ascii_lowercase()).collect()
        };
        Ok(ContentTypes::Set(list))
    }

    /// Whether a media type (parameters cut off) is one to compress.
    fn allows(&self, media_type: &str) -> bool {
        match self {
            ContentTypes::Set(list) => list.iter().any(|t| t.eq_ignore_ascii_case(media_type)),
            ContentTypes::Matchers(ms) => ms.iter().any(|m| m.matches(media_type)),
        }
    }
}

impl Common {
    fn compile(
        c: Option<&pb::compressor::CommonDirectionConfig>,
        path: &str,
    ) -> Result<Common, ConfigError> {
        let default = pb::compressor::CommonDirectionConfig::default();
        let c = c.unwrap_or(&default);
        #[allow(deprecated)]
        let types = &c.content_type;
        Ok(Common {
            enabled: feature_flag(c.enabled.as_ref()),
            min_content_length: min_length(c.min_content_length.map(|v| v.value)),
            content_types: ContentTypes::compile(types, &c.content_type_matcher, path)?,
        })
    }

    /// Whether a message's `content-length`, if it has one, reaches `min_content_length`
    /// (counted in `content_length_too_small` when not).
    fn long_enough(&self, headers: &HeaderMap, stats: &DirectionStats, worker: usize) -> bool {
        let Some(v) = headers.get(header::CONTENT_LENGTH) else {
            return true;
        };
        let ok = std::str::from_utf8(v.as_bytes())
            .ok()
            .and_then(|s| s.parse::<u64>().ok())
            .is_some_and(|n| n >= self.min_content_length);
        if !ok {
            stats.content_length_too_small.inc(worker);
        }
        ok
    }

    /// Whether the message's `content-type` (none: yes) is one to compress.
    fn content_type_allowed(&self, headers: &HeaderMap) -> bool {
        match media_type(headers) {
            Some(t) => self.content_types.allows(t),
            None => true,
        }
    }
}

/// A `RuntimeFeatureFlag` (on when unset).
fn feature_flag(f: Option<&RuntimeFeatureFlag>) -> RuntimeFlag {
    RuntimeFlag::compile(f)
}

/// `min_content_length` (0 or unset: 30, as Envoy).
fn min_length(v: Option<u32>) -> u64 {
    match v {
        Some(n) if n > 0 => u64::from(n),
        _ => 30,
    }
}

/// The `content-type`'s media type, parameters and surrounding space cut off.
fn media_type(headers: &HeaderMap) -> Option<&str> {
    let v = headers.get(header::CONTENT_TYPE)?.to_str().ok()?;
    Some(v.split(';').next().unwrap_or("").trim())
}

/// The counters of one direction.
struct DirectionStats {
    compressed: Arc<Counter>,
    not_compressed: Arc<Counter>,
    content_length_too_small: Arc<Counter>,
    total_uncompressed_bytes: Arc<Counter>,
    total_compressed_bytes: Arc<Counter>,
}

impl DirectionStats {
    fn new(prefix: &str, store: &Store) -> Arc<DirectionStats> {
        let c = |s: &str| store.counter(&format!("{prefix}{s}"));
        Arc::new(DirectionStats {
            compressed: c("compressed"),
            not_compressed: c("not_compressed"),
            content_length_too_small: c("content_length_too_small"),
            total_uncompressed_bytes: c("total_uncompressed_bytes"),
            total_compressed_bytes: c("total_compressed_bytes"),
        })
    }
}

/// The counters of the response's `accept-encoding` negotiation and `etag`.
struct HeaderStats {
    header_compressor_used: Arc<Counter>,
    header_compressor_overshadowed: Arc<Counter>,
    header_identity: Arc<Counter>,
    header_wildcard: Arc<Counter>,
    header_not_valid: Arc<Counter>,
    no_accept_header: Arc<Counter>,
    not_compressed_etag: Arc<Counter>,
}

/// The response direction's settings.
struct ResponseConfig {
    common: Common,
    disable_on_etag_header: bool,
    weaken_etag_on_compress: bool,
    remove_accept_encoding_header: bool,
    uncompressible_response_codes: Vec<u16>,
}

/// A connection manager's compressor filter.
pub struct CompressorFilter {
    /// The filter's name in `http_filters`: its key in `typed_per_filter_config`.
    pub name: String,
    library: Library,
    /// `content-encoding: <the library's>`.
    encoding: HeaderValue,
    choose_first: bool,
    response: ResponseConfig,
    /// `request_direction_config`; `None` when unset (request compression off).
    request: Option<Common>,
    request_stats: Arc<DirectionStats>,
    response_stats: Arc<DirectionStats>,
    header_stats: HeaderStats,
}

/// A route's `CompressorPerRoute`.
#[derive(Debug, Default)]
pub struct CompressorPerRoute {
    /// Response compression on or off here (`disabled`, or `overrides` with a
    /// `response_direction_config`); `None` leaves the filter's setting.
    response_enabled: Option<bool>,
    remove_accept_encoding_header: Option<bool>,
    library: Option<Library>,
}

impl CompressorPerRoute {
    /// Compiles a `CompressorPerRoute` at `path`.
    pub fn compile(
        p: &pb::CompressorPerRoute,
        path: &str,
    ) -> Result<CompressorPerRoute, ConfigError> {
        use pb::compressor_per_route::Override;
        match &p.r#override {
            None => Err(ConfigError::new(
                format!("{path}.override"),
                "value is required (disabled or overrides)",
            )),
            Some(Override::Disabled(d)) => {
                if !d {
                    return Err(ConfigError::new(
                        format!("{path}.disabled"),
                        "value must equal true",
                    ));
                }
                Ok(CompressorPerRoute {
                    response_enabled: Some(false),
                    ..Default::default()
                })
            }
            Some(Override::Overrides(o)) => {
                let library = o
                    .compressor_library
                    .as_ref()
                    .map(|l| Library::compile(l, &format!("{path}.overrides.compressor_library")))
                    .transpose()?;
                let rdc = o.response_direction_config.as_ref();
                Ok(CompressorPerRoute {
                    // An empty `response_direction_config` turns compression on, as in Envoy.
                    response_enabled: rdc.map(|_| true),
                    remove_accept_encoding_header: rdc
                        .and_then(|r| r.remove_accept_encoding_header)
                        .map(|b| b.value),
                    library,
                })
            }
        }
    }
}

impl CompressorFilter {
    /// Compiles the filter named `name` at `path` (its `typed_config`), its stats under
    /// `http.<stat_prefix>.`.
    pub fn compile(
        name: &str,
        p: &pb::Compressor,
        path: &str,
        stat_prefix: &str,
        store: &Store,
    ) -> Result<CompressorFilter, ConfigError> {
        let Some(lib) = &p.compressor_library else {
            return Err(ConfigError::new(
                format!("{path}.compressor_library"),
                "value is required",
            ));
        };
        let library = Library::compile(lib, &format!("{path}.compressor_library"))?;
        let response = match &p.response_direction_config {
            Some(r) => {
                let at = format!("{path}.response_direction_config");
                if r.status_header_enabled {
                    return Err(ConfigError::unsupported(format!(
                        "{at}.status_header_enabled"
                    )));
                }
                let uncompressible_response_codes = r
                    .uncompressible_response_codes
                    .iter()
                    .enumerate()
                    .map(|(i, c)| {
                        u16::try_from(*c)
                            .ok()
                            .filter(|c| (100..=599).contains(c))
                            .ok_or_else(|| {
                                ConfigError::new(
                                    format!("{at}.uncompressible_response_codes[{i}]"),
                                    "value must be inside range [100, 599]",
                                )
                            })
                    })
                    .collect::<Result<_, _>>()?;
                ResponseConfig {
                    common: Common::compile(
                        r.common_config.as_ref(),
                        &format!("{at}.common_config"),
                    )?,
                    disable_on_etag_header: r.disable_on_etag_header,
                    weaken_etag_on_compress: r.weaken_etag_on_compress,
                    remove_accept_encoding_header: r.remove_accept_encoding_header,
                    uncompressible_response_codes,
                }
            }
            // The deprecated top-level fields, which a `response_direction_config` replaces.
            #[allow(deprecated)]
            None => ResponseConfig {
                common: Common {
                    enabled: feature_flag(p.runtime_enabled.as_ref()),
                    min_content_length: min_length(p.content_length.map(|v| v.value)),
                    content_types: ContentTypes::compile(&p.content_type, &[], path)?,
                },
                disable_on_etag_header: p.disable_on_etag_header,
                weaken_etag_on_compress: false,
                remove_accept_encoding_header: p.remove_accept_encoding_header,
                uncompressible_response_codes: Vec::new(),
            },
        };
        let request = p
            .request_direction_config
            .as_ref()
            .map(|r| {
                Common::compile(
                    r.common_config.as_ref(),
                    &format!("{path}.request_direction_config.common_config"),
                )
            })
            .transpose()?;
        let base = format!(
            "http.{stat_prefix}.compressor.{}.{}.",
            lib.name,
            library.stats_name()
        );
        let response_prefix = match p.response_direction_config {
            Some(_) => format!("{base}response."),
            None => base.clone(),
        };
        let c = |s: &str| store.counter(&format!("{base}{s}"));
        Ok(CompressorFilter {
            name: name.to_string(),
            encoding: HeaderValue::from_static(library.encoding()),
            library,
            choose_first: p.choose_first,
            response,
            request,
            request_stats: DirectionStats::new(&format!("{base}request."), store),
            response_stats: DirectionStats::new(&response_prefix, store),
            header_stats: HeaderStats {
                header_compressor_used: c("header_compressor_used"),
                header_compressor_overshadowed: c("header_compressor_overshadowed"),
                header_identity: c("header_identity"),
                header_wildcard: c("header_wildcard"),
                header_not_valid: c("header_not_valid"),
                no_accept_header: c("no_accept_header"),
                not_compressed_etag: c("not_compressed_etag"),
            },
        })
    }

    /// The route's `CompressorPerRoute`, the most specific of the request's levels.
    fn per_route<'a>(&self, levels: [&'a FilterConfigs; 3]) -> Option<&'a CompressorPerRoute> {
        per_filter::policy(levels, &self.name)
    }

    /// The filter's request pass: notes `accept-encoding` (removing it when configured),
    /// and compresses the request body when `request_direction_config` says so. The
    /// result judges the response ([`CompressorRequest::on_response`]); `earlier` is what
    /// the compressor filters before this one made of the request.
    pub fn on_request<'a>(
        &'a self,
        levels: [&'a FilterConfigs; 3],
        req: &mut http::Request<ProxyBody>,
        worker: usize,
        earlier: Option<Box<CompressorRequest<'a>>>,
    ) -> Box<CompressorRequest<'a>> {
        let per_route = self.per_route(levels);
        let headers = req.headers_mut();
        let accept_encoding = joined(headers, header::ACCEPT_ENCODING);
        let r = CompressorRequest {
            filter: self,
            per_route,
            accept_encoding,
            earlier,
        };
        if r.response_enabled() && r.remove_accept_encoding() {
            headers.remove(header::ACCEPT_ENCODING);
        }
        let compress_request = self.request.as_ref().is_some_and(|c| {
            c.enabled.enabled()
                && !req.body().is_end_stream()
                && !crate::http::codec::handoff::is_upgrade(req.headers())
                && c.long_enough(req.headers(), &self.request_stats, worker)
                && c.content_type_allowed(req.headers())
                && !req.headers().contains_key(header::CONTENT_ENCODING)
                && transfer_encoding_allowed(req.headers())
        });
        let encoder = compress_request.then(|| r.encoder()).flatten();
        if let Some(encoder) = encoder {
            let h = req.headers_mut();
            h.remove(header::CONTENT_LENGTH);
            h.insert(header::CONTENT_ENCODING, self.encoding.clone());
            self.request_stats.compressed.inc(worker);
            let body = std::mem::replace(req.body_mut(), ProxyBody::empty());
            *req.body_mut() = ProxyBody::filtered(Compressing::new(
                body,
                encoder,
                self.request_stats.clone(),
                worker,
            ));
        } else {
            self.request_stats.not_compressed.inc(worker);
        }
        Box::new(r)
    }

    /// What judges the response to a request that did not reach the filter (an earlier
    /// filter answered it): it has no `accept-encoding`, as in Envoy.
    pub fn unseen<'a>(&'a self, levels: [&'a FilterConfigs; 3]) -> CompressorRequest<'a> {
        CompressorRequest {
            filter: self,
            per_route: self.per_route(levels),
            accept_encoding: None,
            earlier: None,
        }
    }

    /// Whether the filter takes part in choosing the response's encoding: it does unless
    /// the response's content type is one it does not compress.
    fn candidate(&self, headers: &HeaderMap) -> Option<Candidate> {
        let allowed = media_type(headers)
            .filter(|t| !t.is_empty())
            .is_none_or(|t| self.response.common.content_types.allows(t));
        allowed.then_some(Candidate {
            encoding: self.library.encoding(),
            choose_first: self.choose_first,
        })
    }
}

/// Visits the compressor filters that run for a request, in chain order.
pub type Registry<'r> = &'r dyn Fn(&mut dyn FnMut(&CompressorFilter));

/// The choice of a response's encoding, made once (by the first filter to need it) among
/// the compressor filters that run for the request, as Envoy's filters share their
/// `EncodingDecision`.
pub struct Negotiation<'r> {
    /// Visits the compressor filters that run for the request, in chain order.
    registry: Registry<'r>,
    decision: Option<Decision>,
}

impl<'r> Negotiation<'r> {
    /// A negotiation among the filters `registry` visits.
    pub fn new(registry: Registry<'r>) -> Negotiation<'r> {
        Negotiation {
            registry,
            decision: None,
        }
    }

    fn decide(&mut self, accept_encoding: &[u8], headers: &HeaderMap) -> Decision {
        if let Some(d) = self.decision {
            return d;
        }
        let mut candidates = Vec::with_capacity(3);
        (self.registry)(&mut |f| candidates.extend(f.candidate(headers)));
        let d = choose(accept_encoding, candidates.into_iter());
        self.decision = Some(d);
        d
    }
}

/// Whether a `transfer-encoding` names no compression already applied.
fn transfer_encoding_allowed(headers: &HeaderMap) -> bool {
    headers.get_all(header::TRANSFER_ENCODING).iter().all(|v| {
        let s = String::from_utf8_lossy(v.as_bytes());
        !s.split(',').map(str::trim).any(|t| {
            ["gzip", "br", "deflate", "compress", "zstd"]
                .iter()
                .any(|c| t.eq_ignore_ascii_case(c))
        })
    })
}

/// A request's compressor state: what judges its response.
pub struct CompressorRequest<'a> {
    filter: &'a CompressorFilter,
    per_route: Option<&'a CompressorPerRoute>,
    accept_encoding: Option<HeaderValue>,
    /// The state of the compressor filter before this one in the chain, when the request
    /// passed one.
    earlier: Option<Box<CompressorRequest<'a>>>,
}

impl<'a> CompressorRequest<'a> {
    fn response_enabled(&self) -> bool {
        self.per_route
            .and_then(|p| p.response_enabled)
            .unwrap_or_else(|| self.filter.response.common.enabled.enabled())
    }

    fn remove_accept_encoding(&self) -> bool {
        self.per_route
            .and_then(|p| p.remove_accept_encoding_header)
            .unwrap_or(self.filter.response.remove_accept_encoding_header)
    }

    /// The compressor filter before this one in the chain that the request passed.
    pub fn earlier(&self) -> Option<&CompressorRequest<'a>> {
        self.earlier.as_deref()
    }

    /// Whether this is the state of `filter`.
    pub fn is_of(&self, filter: &CompressorFilter) -> bool {
        std::ptr::eq(self.filter, filter)
    }

    /// A new stream of the library: the route's when it has the filter's encoding (Envoy
    /// 1.40 keeps the filter's otherwise, measured). `None` (logged) if it cannot be made.
    fn encoder(&self) -> Option<library::Encoder> {
        let own = &self.filter.library;
        let lib = self
            .per_route
            .and_then(|p| p.library.as_ref())
            .filter(|l| l.encoding() == own.encoding())
            .unwrap_or(own);
        match lib.encoder() {
            Ok(e) => Some(e),
            Err(e) => {
                tracing::warn!(filter = %self.filter.name, "cannot start a {} stream: {e}", lib.encoding());
                None
            }
        }
    }

    /// Whether `accept-encoding` picks this filter's encoding, counted as Envoy counts it.
    fn accepts(
        &self,
        headers: &HeaderMap,
        negotiation: &mut Negotiation<'_>,
        worker: usize,
    ) -> bool {
        let f = self.filter;
        let s = &f.header_stats;
        let Some(ae) = &self.accept_encoding else {
            s.no_accept_header.inc(worker);
            return false;
        };
        let decision = negotiation.decide(ae.as_bytes(), headers);
        let picked = decision.picks(f.library.encoding());
        match decision {
            Decision::Compressor(_) if picked => s.header_compressor_used.inc(worker),
            Decision::Compressor(_) => s.header_compressor_overshadowed.inc(worker),
            Decision::Wildcard(_) => s.header_wildcard.inc(worker),
            Decision::Identity => s.header_identity.inc(worker),
            Decision::NotValid => s.header_not_valid.inc(worker),
        }
        picked
    }

    /// The filter's response pass: compresses the response, or leaves it alone, and adds
    /// `vary` where the request decided. `negotiation` is the response's choice of
    /// encoding, shared by the chain's compressor filters.
    pub fn on_response(
        &self,
        resp: &mut Response<ProxyBody>,
        negotiation: &mut Negotiation<'_>,
        worker: usize,
    ) {
        let f = self.filter;
        let cfg = &f.response;
        let stats = &f.response_stats;
        let end_stream = resp.body().is_end_stream();
        let headers = resp.headers();
        let enabled = self.response_enabled();
        let long_enough = enabled && cfg.common.long_enough(headers, stats, worker);
        let compressible = long_enough
            && !crate::http::codec::handoff::is_upgrade(headers)
            && !cfg
                .uncompressible_response_codes
                .contains(&resp.status().as_u16())
            && cfg.common.content_type_allowed(headers)
            && !no_transform(headers)
            && self.etag_allowed(headers, worker)
            && !headers.contains_key(header::CONTENT_ENCODING);
        let compress = !end_stream
            && long_enough
            && self.accepts(headers, negotiation, worker)
            && compressible
            && transfer_encoding_allowed(headers);
        let encoder = compress.then(|| self.encoder()).flatten();
        let headers = resp.headers_mut();
        if encoder.is_some() {
            sanitize_etag(headers, cfg.weaken_etag_on_compress);
            headers.remove(header::CONTENT_LENGTH);
            headers.insert(header::CONTENT_ENCODING, f.encoding.clone());
            stats.compressed.inc(worker);
        } else {
            stats.not_compressed.inc(worker);
        }
        if compressible {
            insert_vary(headers);
        }
        if let Some(encoder) = encoder {
            let body = std::mem::replace(resp.body_mut(), ProxyBody::empty());
            *resp.body_mut() =
                ProxyBody::filtered(Compressing::new(body, encoder, stats.clone(), worker));
        }
    }

    fn etag_allowed(&self, headers: &HeaderMap, worker: usize) -> bool {
        let cfg = &self.filter.response;
        let allowed = cfg.weaken_etag_on_compress
            || !(cfg.disable_on_etag_header && headers.contains_key(header::ETAG));
        if !allowed {
            self.filter.header_stats.not_compressed_etag.inc(worker);
        }
        allowed
    }
}

fn no_transform(headers: &HeaderMap) -> bool {
    headers.get_all(header::CACHE_CONTROL).iter().any(|v| {
        String::from_utf8_lossy(v.as_bytes())
            .split(',')
            .any(|t| t.trim().eq_ignore_ascii_case("no-transform"))
    })
}

/// A strong `etag` goes (or is made weak): the compressed body is another representation.
fn sanitize_etag(headers: &mut HeaderMap, weaken: bool) {
    let Some(v) = headers.get(header::ETAG) else {
        return;
    };
    let b = v.as_bytes();
    let weak = b.len() > 1 && (b[0] == b'W' || b[0] == b'w') && b[1] == b'/';
    if b.len() <= 2 || weak {
        return;
    }
    if weaken {
        let mut w = b"W/".to_vec();
        w.extend_from_slice(b);
        if let Ok(w) = HeaderValue::from_bytes(&w) {
            headers.insert(header::ETAG, w);
            return;
        }
    }
    headers.remove(header::ETAG);
}

/// `vary: Accept-Encoding`, appended to a `vary` without that exact token.
fn insert_vary(headers: &mut HeaderMap) {
    let Some(existing) = joined(headers, header::VARY) else {
        headers.insert(
            header::VARY,
            HeaderValue::from_static(ACCEPT_ENCODING_TOKEN),
        );
        return;
    };
    let has = String::from_utf8_lossy(existing.as_bytes())
        .split(',')
        .any(|t| t.trim() == ACCEPT_ENCODING_TOKEN);
    if has {
        return;
    }
    let mut v = existing.as_bytes().to_vec();
    v.extend_from_slice(b", ");
    v.extend_from_slice(ACCEPT_ENCODING_TOKEN.as_bytes());
    if let Ok(v) = HeaderValue::from_bytes(&v) {
        headers.insert(header::VARY, v);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn vary_is_added_once() {
        let mut h = HeaderMap::new();
        insert_vary(&mut h);
        assert_eq!(h[header::VARY], "Accept-Encoding");
        insert_vary(&mut h);
        assert_eq!(h[header::VARY], "Accept-Encoding");
        let mut h = HeaderMap::new();
        h.insert(header::VARY, HeaderValue::from_static("accept-encoding"));
        insert_vary(&mut h);
        assert_eq!(h[header::VARY], "accept-encoding, Accept-Encoding");
    }

    #[test]
    fn strong_etags_go_or_weaken() {
        let mut h = HeaderMap::new();
        h.insert(header::ETAG, HeaderValue::from_static("\"abc\""));
        sanitize_etag(&mut h, true);
        assert_eq!(h[header::ETAG], "W/\"abc\"");
        sanitize_etag(&mut h, false);
        assert_eq!(h[header::ETAG], "W/\"abc\"");
        h.insert(header::ETAG, HeaderValue::from_static("\"abc\""));
        sanitize_etag(&mut h, false);
        assert!(h.get(header::ETAG).is_none());
    }

    #[test]
    fn unknown_libraries_are_refused() {
        let lib = courier_proto::envoy::config::core::v3::TypedExtensionConfig {
            name: "lz4".into(),
            typed_config: Some(courier_proto::google::protobuf::Any {
                type_url: "type.googleapis.com/envoy.extensions.compression.lz4.compressor.v3.Lz4"
                    .into(),
                value: Vec::new(),
            }),
        };
        let p = pb::Compressor {
            compressor_library: Some(lib),
            ..Default::default()
        };
        let e =
            CompressorFilter::compile("c", &p, "http_filters[0].typed_config", "p", &Store::new(1))
                .err()
                .expect("refused");
        assert_eq!(
            e.path,
            "http_filters[0].typed_config.compressor_library.typed_config"
        );
        assert!(e.message.contains("lz4"), "{}", e.message);
    }
}
