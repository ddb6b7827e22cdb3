//! The compressor filter (`envoy.filters.http.compressor`, gzip, brotli, zstd): which
//! responses are compressed and what that does to their headers, per-route settings,
//! request compression, several compressor filters negotiating by `accept-encoding`, and
//! the filters' counters. Each case runs through Courier and, when `envoy` is on PATH,
//! through Envoy 1.40; the two must agree, and both must give what each case expects.
//! Bodies are compared decompressed (other builds of a library may pick other bytes for
//! the same text).

mod http_support;

use std::collections::BTreeMap;
use std::io::Read;

use http_support::*;

const GZIP_LIB: &str = "type.googleapis.com/envoy.extensions.compression.gzip.compressor.v3.Gzip";
const BROTLI_LIB: &str =
    "type.googleapis.com/envoy.extensions.compression.brotli.compressor.v3.Brotli";
const ZSTD_LIB: &str = "type.googleapis.com/envoy.extensions.compression.zstd.compressor.v3.Zstd";

/// A request: its label, method, host, path, headers and body, then whether its
/// response is to be compressed and to carry `vary: Accept-Encoding`.
struct Case {
    label: &'static str,
    method: &'static str,
    host: &'static str,
    path: &'static str,
    headers: &'static [(&'static str, &'static str)],
    body: &'static [u8],
    compressed: bool,
    vary: bool,
    /// The `content-encoding` of a compressed response.
    ce: &'static str,
}

const fn get(
    label: &'static str,
    path: &'static str,
    headers: &'static [(&'static str, &'static str)],
    compressed: bool,
    vary: bool,
) -> Case {
    Case {
        label,
        method: "GET",
        host: "example.com",
        path,
        headers,
        body: b"",
        compressed,
        vary,
        ce: "gzip",
    }
}

const GZ: &[(&str, &str)] = &[("accept-encoding", "gzip")];

fn gunzip(b: &[u8]) -> Option<Vec<u8>> {
    let mut out = Vec::new();
    flate2::read::GzDecoder::new(b).read_to_end(&mut out).ok()?;
    Some(out)
}

/// A body decoded by its `content-encoding` (`None`: not a valid stream of it, or an
/// encoding no compressor here makes).
fn decode(ce: &str, b: &[u8]) -> Option<Vec<u8>> {
    match ce {
        "gzip" => gunzip(b),
        "br" => {
            let mut out = Vec::new();
            brotli::Decompressor::new(b, 4096)
                .read_to_end(&mut out)
                .ok()?;
            Some(out)
        }
        "zstd" => zstd::decode_all(b).ok(),
        _ => None,
    }
}

/// The encoding the proxy compressed a response with (one it compressed has no
/// `content-length`; an upstream's encoded body keeps its own).
fn compressed_by(r: &Resp) -> Option<&str> {
    r.header("content-encoding")
        .filter(|ce| ["gzip", "br", "zstd"].contains(ce))
        .filter(|_| r.header("content-length").is_none())
}

/// What is compared of a response: status, the headers the filter touches, and the body
/// (decompressed, and the upstream's view of the request).
fn summary(r: &Resp) -> String {
    let h = |n: &str| r.header(n).unwrap_or("-").to_string();
    let body = match compressed_by(r) {
        Some(ce) => decode(ce, &r.body).unwrap_or_else(|| b"<invalid>".to_vec()),
        None => r.body.clone(),
    };
    // A request body the upstream echoed, compressed on its way there.
    let body = match r.header("x-seen-ce").and_then(|ce| decode(ce, &body)) {
        Some(b) => b,
        None => body,
    };
    let digest = body
        .iter()
        .fold(0u64, |h, b| h.wrapping_mul(31).wrapping_add(u64::from(*b)));
    format!(
        "{} ce={} vary={} length={} te={} etag={} seen-ae={} seen-ce={} body={}:{digest:x}",
        r.status,
        h("content-encoding"),
        h("vary"),
        r.header("content-length").is_some(),
        h("transfer-encoding"),
        h("etag"),
        h("x-seen-ae"),
        h("x-seen-ce"),
        body.len(),
    )
}

/// Runs the cases through `proxy`: each response's summary, after checking what the case
/// expects of it.
fn run(proxy: &Courier, cases: &[Case]) -> Vec<String> {
    let mut out = Vec::new();
    for c in cases {
        let mut client = Client::connect(proxy.listener);
        let r = client.request(c.method, c.host, c.path, c.headers, c.body);
        let compressed = compressed_by(&r).is_some();
        assert_eq!(compressed, c.compressed, "{}: {r:?}", c.label);
        let vary = r
            .header("vary")
            .is_some_and(|v| v.contains("Accept-Encoding"));
        assert_eq!(vary, c.vary, "{}: {r:?}", c.label);
        if compressed {
            assert!(r.header("content-length").is_none(), "{}", c.label);
            assert_eq!(
                r.header("transfer-encoding"),
                Some("chunked"),
                "{}",
                c.label
            );
            assert_eq!(r.header("content-encoding"), Some(c.ce), "{}", c.label);
            let plain = decode(c.ce, &r.body);
            assert!(plain.is_some(), "{}: not {}", c.label, c.ce);
            // What the upstream sent, when it is the shape server's text.
            if c.path.contains("/shape?") && !c.path.contains("echo") {
                let n = c
                    .path
                    .split(['?', '&'])
                    .find_map(|kv| kv.strip_prefix("n="))
                    .and_then(|n| n.parse().ok())
                    .unwrap_or(100);
                assert_eq!(plain, Some(shape_text(n)), "{}: body", c.label);
            }
        }
        out.push(format!("{}: {}", c.label, summary(&r)));
    }
    out
}

/// The filter's counters, by name.
fn counters(proxy: &Courier) -> BTreeMap<String, u64> {
    admin_get(proxy.admin, "/stats")
        .unwrap_or_default()
        .lines()
        .filter_map(|l| {
            let (k, v) = l.split_once(": ")?;
            k.contains(".compressor.")
                .then(|| Some((k.to_string(), v.trim().parse().ok()?)))
                .flatten()
        })
        .collect()
}

/// Runs `cases` (and `more`, given the proxy) through Courier and Envoy, compares the
/// responses and the counters (once `settled` reached its value on each), and returns
/// Courier's counters.
fn differential(
    yaml: &str,
    cases: &[Case],
    more: &dyn Fn(&Courier) -> Vec<String>,
    settled: (&str, u64),
) -> BTreeMap<String, u64> {
    let courier = Courier::start(yaml);
    let mut got = run(&courier, cases);
    got.extend(more(&courier));
    courier.wait_stat(settled.0, settled.1);
    let stats = counters(&courier);
    if let Some(envoy) = Courier::start_envoy(yaml) {
        let mut want = run(&envoy, cases);
        want.extend(more(&envoy));
        envoy.wait_stat(settled.0, settled.1);
        for (g, w) in got.iter().zip(&want) {
            assert_eq!(g, w, "Courier, then Envoy");
        }
        assert_eq!(got.len(), want.len());
        // Compressed sizes differ between zlib builds (Envoy's memory_level, for one).
        let comparable = |m: BTreeMap<String, u64>| -> BTreeMap<String, u64> {
            m.into_iter()
                .filter(|(k, _)| !k.ends_with("total_compressed_bytes"))
                .collect()
        };
        assert_eq!(
            comparable(stats.clone()),
            comparable(counters(&envoy)),
            "counters: Courier, then Envoy"
        );
    }
    stats
}

fn filter(config: &str) -> String {
    format!(
        "          - name: envoy.filters.http.compressor\n            typed_config:\n              \"@type\": type.googleapis.com/envoy.extensions.filters.http.compressor.v3.Compressor\n{config}"
    )
}

const MAIN_FILTER: &str = r#"              response_direction_config:
                common_config: { min_content_length: 64 }
                remove_accept_encoding_header: true
                uncompressible_response_codes: [206]
                weaken_etag_on_compress: true
              request_direction_config:
                common_config: { content_type: [application/json] }
              compressor_library:
                name: text_optimized
                typed_config:
                  "@type": GZIP_LIB
                  compression_level: BEST_SPEED
                  window_bits: 15
                  memory_level: 8
                  compression_strategy: DEFAULT_STRATEGY
                  chunk_size: 8192
"#;

const MAIN_ROUTES: &str = r#"            name: local
            virtual_hosts:
            - name: quiet
              domains: ["off.example"]
              typed_per_filter_config:
                envoy.filters.http.compressor:
                  "@type": type.googleapis.com/envoy.extensions.filters.http.compressor.v3.CompressorPerRoute
                  disabled: true
              routes:
              - match: { prefix: "/on/" }
                route: { cluster: a }
                typed_per_filter_config:
                  envoy.filters.http.compressor:
                    "@type": type.googleapis.com/envoy.extensions.filters.http.compressor.v3.CompressorPerRoute
                    overrides: { response_direction_config: {} }
              - match: { prefix: "/" }
                route: { cluster: a }
            - name: main
              domains: ["*"]
              routes:
              - match: { prefix: "/off/" }
                route: { cluster: a }
                typed_per_filter_config:
                  envoy.filters.http.compressor:
                    "@type": type.googleapis.com/envoy.extensions.filters.http.compressor.v3.CompressorPerRoute
                    disabled: true
              - match: { prefix: "/keep-ae/" }
                route: { cluster: a }
                typed_per_filter_config:
                  envoy.filters.http.compressor:
                    "@type": type.googleapis.com/envoy.extensions.filters.http.compressor.v3.CompressorPerRoute
                    overrides:
                      response_direction_config: { remove_accept_encoding_header: false }
                      compressor_library:
                        name: route_lib
                        typed_config: { "@type": GZIP_LIB, compression_level: BEST_COMPRESSION }
              - match: { prefix: "/no-filter/" }
                route: { cluster: a }
                typed_per_filter_config:
                  envoy.filters.http.compressor:
                    "@type": type.googleapis.com/envoy.config.route.v3.FilterConfig
                    disabled: true
              - match: { prefix: "/direct" }
                direct_response:
                  status: 200
                  body: { inline_string: "a direct response, long enough to be compressed by the filter: 0123456789" }
              - match: { prefix: "/dead" }
                route: { cluster: dead }
              - match: { prefix: "/" }
                route: { cluster: a }
"#;

fn clusters(a: &Upstream) -> String {
    let trailers = "    typed_extension_protocol_options:\n      envoy.extensions.upstreams.http.v3.HttpProtocolOptions:\n        \"@type\": type.googleapis.com/envoy.extensions.upstreams.http.v3.HttpProtocolOptions\n        explicit_http_config:\n          http_protocol_options: { enable_trailers: true }\n";
    [
        cluster("a", &[a.addr], trailers),
        cluster("dead", &[refusing_addr()], ""),
    ]
    .concat()
}

/// An HTTP/2 GET with `accept-encoding: gzip`: status, `content-encoding`, the body
/// decompressed, and the trailer `x-trailer`.
fn h2_case(proxy: &Courier) -> Vec<String> {
    block_on(async {
        let mut sender = h2_connect(proxy.listener).await;
        let path = "/shape?ct=text/plain&n=20000&chunked=1&chunks=4&trailer=t1";
        let (parts, bytes, trailer) = h2_fetch_bytes(
            &mut sender,
            path,
            &[("accept-encoding", "gzip")],
            "x-trailer",
        )
        .await;
        let ce = parts.headers.get("content-encoding").cloned();
        assert_eq!(ce.as_ref().map(|v| v.as_bytes()), Some(&b"gzip"[..]), "h2");
        let plain = gunzip(&bytes).expect("h2: gzip");
        assert_eq!(plain, shape_text(20000), "h2 body");
        assert_eq!(trailer.as_deref(), Some("t1"), "h2 trailer");
        assert!(parts.headers.get("content-length").is_none());
        vec![format!(
            "h2: {} ce={ce:?} vary={:?} trailer={trailer:?} body={}",
            parts.status,
            parts.headers.get("vary"),
            plain.len()
        )]
    })
}

#[test]
fn responses_compressed_as_envoy_compresses_them() {
    let a = Upstream::start("a");
    let yaml = with_filters(
        &bootstrap(MAIN_ROUTES, "", &clusters(&a)),
        &filter(MAIN_FILTER),
    )
    .replace("GZIP_LIB", GZIP_LIB);
    const T: &str = "/shape?ct=text/plain&n=1000";
    let cases = [
        get("text", T, GZ, true, true),
        get("no accept-encoding", T, &[], false, true),
        get(
            "identity",
            T,
            &[("accept-encoding", "identity")],
            false,
            true,
        ),
        get("wildcard", T, &[("accept-encoding", "*")], true, true),
        get(
            "gzip refused",
            T,
            &[("accept-encoding", "gzip;q=0, *")],
            false,
            true,
        ),
        get(
            "identity preferred",
            T,
            &[("accept-encoding", "gzip;q=0.3, identity;q=0.8")],
            false,
            true,
        ),
        get(
            "gzip preferred",
            T,
            &[("accept-encoding", "br;q=0.9, gzip;Q=0.95, identity;q=0.1")],
            true,
            true,
        ),
        get(
            "deflate only",
            T,
            &[("accept-encoding", "deflate")],
            false,
            true,
        ),
        get(
            "bad q-value",
            T,
            &[("accept-encoding", "gzip;q=x")],
            false,
            true,
        ),
        get("too short", "/shape?ct=text/plain&n=63", GZ, false, false),
        get(
            "just long enough",
            "/shape?ct=text/plain&n=64",
            GZ,
            true,
            true,
        ),
        get(
            "unknown length",
            "/shape?ct=text/plain&n=20&chunked=1",
            GZ,
            true,
            true,
        ),
        get("image", "/shape?ct=image/png&n=1000", GZ, false, false),
        get("no content-type", "/shape?n=1000", GZ, true, true),
        get(
            "content-type parameters",
            "/shape?ct=text/html;charset=utf-8&n=1000",
            GZ,
            true,
            true,
        ),
        get("json", "/shape?ct=application/json&n=1000", GZ, true, true),
        get(
            "no-transform",
            "/shape?ct=text/plain&n=1000&cc=no-transform",
            GZ,
            false,
            false,
        ),
        get(
            "already encoded",
            "/shape?ct=text/plain&n=1000&ce=br",
            GZ,
            false,
            false,
        ),
        get(
            "uncompressible status",
            "/shape?ct=text/plain&n=1000&status=206",
            GZ,
            false,
            false,
        ),
        get(
            "not found",
            "/shape?ct=text/plain&n=1000&status=404",
            GZ,
            true,
            true,
        ),
        Case {
            method: "HEAD",
            ..get("head", T, GZ, false, true)
        },
        get("no content", "/shape?status=204", GZ, false, true),
        get(
            "not modified",
            "/shape?status=304&ct=text/plain",
            GZ,
            false,
            true,
        ),
        get(
            "strong etag weakened",
            "/shape?ct=text/plain&n=1000&etag=abc",
            GZ,
            true,
            true,
        ),
        get(
            "weak etag kept",
            "/shape?ct=text/plain&n=1000&etag=W-abc",
            GZ,
            true,
            true,
        ),
        get(
            "vary merged",
            "/shape?ct=text/plain&n=1000&vary=Origin",
            GZ,
            true,
            true,
        ),
        get(
            "route disables",
            "/off/shape?ct=text/plain&n=1000",
            GZ,
            false,
            false,
        ),
        get(
            "route keeps accept-encoding, own library",
            "/keep-ae/shape?ct=text/plain&n=1000",
            GZ,
            true,
            true,
        ),
        get(
            "filter disabled by FilterConfig",
            "/no-filter/shape?ct=text/plain&n=1000",
            GZ,
            false,
            false,
        ),
        Case {
            host: "off.example",
            ..get("virtual host disables", T, GZ, false, false)
        },
        Case {
            host: "off.example",
            ..get(
                "route enables again",
                "/on/shape?ct=text/plain&n=1000",
                GZ,
                true,
                true,
            )
        },
        get("direct response", "/direct", GZ, true, true),
        get("router's own reply", "/dead", GZ, true, true),
        get(
            "router's own reply to gRPC",
            "/dead",
            &[
                ("content-type", "application/grpc"),
                ("accept-encoding", "gzip"),
            ],
            false,
            false,
        ),
        get(
            "large streamed body",
            "/shape?ct=text/plain&n=400000&chunked=1&chunks=50",
            GZ,
            true,
            true,
        ),
        Case {
            method: "POST",
            headers: &[("content-type", "application/json")],
            body: br#"{"request": "a json body long enough to be compressed upstream"}"#,
            ..get("request compressed", "/shape?echo=1", &[], false, true)
        },
        Case {
            method: "POST",
            headers: &[("content-type", "application/json")],
            body: br#"{"short": 1}"#,
            ..get("request too short", "/shape?echo=1", &[], false, false)
        },
        Case {
            method: "POST",
            headers: &[("content-type", "text/plain")],
            body: b"a plain text request body, long enough but of another type",
            ..get(
                "request of another type",
                "/shape?echo=1",
                &[],
                false,
                false,
            )
        },
    ];
    let stats = differential(
        &yaml,
        &cases,
        &h2_case,
        (
            "http.ingress.compressor.text_optimized.gzip.request.not_compressed",
            37,
        ),
    );
    let s = |k: &str| {
        stats
            .get(&format!("http.ingress.compressor.text_optimized.gzip.{k}"))
            .copied()
            .unwrap_or(u64::MAX)
    };
    // 18 compressed responses (the h2 one among them); every other one that the filter
    // ran for (all but the FilterConfig-disabled route's) not compressed.
    assert_eq!(s("response.compressed"), 18);
    assert_eq!(s("response.not_compressed"), 38 - 18);
    // `too short`, and the two short echoes.
    assert_eq!(s("response.content_length_too_small"), 3);
    assert_eq!(s("request.compressed"), 1);
    assert_eq!(s("request.not_compressed"), 37);
    assert_eq!(s("request.content_length_too_small"), 1);
    // `no accept-encoding` and the compressed request's echo (long enough).
    assert_eq!(s("no_accept_header"), 2);
    // The responses gzip was chosen for, compressed or not (206, no-transform, br).
    assert_eq!(s("header_compressor_used"), 20);
    assert_eq!(s("header_identity"), 2);
    assert_eq!(s("header_wildcard"), 1);
    assert_eq!(s("header_not_valid"), 4);
    assert!(s("response.total_uncompressed_bytes") > 400_000);
    assert!(s("response.total_compressed_bytes") < s("response.total_uncompressed_bytes"));
}

/// The deprecated top-level fields (no `response_direction_config`: counters without
/// `response.`), `disable_on_etag_header`, a `content_type` list.
#[test]
fn deprecated_fields_and_etags_as_envoy() {
    let a = Upstream::start("a");
    let config = r#"              content_length: 40
              content_type: [text/html, application/json]
              disable_on_etag_header: true
              remove_accept_encoding_header: true
              compressor_library:
                name: legacy
                typed_config: { "@type": GZIP_LIB }
"#;
    let yaml = with_filters(&bootstrap(&all_to("a"), "", &clusters(&a)), &filter(config))
        .replace("GZIP_LIB", GZIP_LIB);
    let cases = [
        get("html", "/shape?ct=text/html&n=500", GZ, true, true),
        get(
            "upper-case type",
            "/shape?ct=TEXT/HTML&n=500",
            GZ,
            true,
            true,
        ),
        get(
            "plain is not listed",
            "/shape?ct=text/plain&n=500",
            GZ,
            false,
            false,
        ),
        get(
            "strong etag",
            "/shape?ct=text/html&n=500&etag=abc",
            GZ,
            false,
            false,
        ),
        get(
            "weak etag",
            "/shape?ct=text/html&n=500&etag=W-abc",
            GZ,
            false,
            false,
        ),
        get("too short", "/shape?ct=text/html&n=39", GZ, false, false),
        get("long enough", "/shape?ct=text/html&n=40", GZ, true, true),
        get(
            "accept-encoding fields",
            "/shape?ct=application/json&n=500",
            &[("accept-encoding", "br"), ("accept-encoding", "gzip")],
            true,
            true,
        ),
    ];
    let stats = differential(
        &yaml,
        &cases,
        &|_| Vec::new(),
        (
            "http.ingress.compressor.legacy.gzip.request.not_compressed",
            8,
        ),
    );
    let s = |k: &str| {
        stats
            .get(&format!("http.ingress.compressor.legacy.gzip.{k}"))
            .copied()
            .unwrap_or(u64::MAX)
    };
    assert_eq!(s("compressed"), 4);
    assert_eq!(s("not_compressed"), 4);
    assert_eq!(s("not_compressed_etag"), 2);
    assert_eq!(s("content_length_too_small"), 1);
    assert_eq!(s("header_not_valid"), 1);
    assert!(!stats.contains_key("http.ingress.compressor.legacy.gzip.response.compressed"));
}

/// `content_type_matcher`, a strong `etag` removed, and the filter after CORS: a
/// preflight CORS answers before the compressor still passes its response pass.
#[test]
fn content_type_matchers_and_filter_order_as_envoy() {
    let a = Upstream::start("a");
    let config = r#"              response_direction_config:
                common_config:
                  content_type_matcher: [{ prefix: "text/" }, { exact: "application/json" }]
              compressor_library:
                name: m
                typed_config: { "@type": GZIP_LIB, compression_level: COMPRESSION_LEVEL_9 }
"#;
    let cors = "          - name: envoy.filters.http.cors\n            typed_config: { \"@type\": type.googleapis.com/envoy.extensions.filters.http.cors.v3.Cors }\n";
    let routes = r#"            name: local
            virtual_hosts:
            - name: main
              domains: ["*"]
              typed_per_filter_config:
                envoy.filters.http.cors:
                  "@type": type.googleapis.com/envoy.extensions.filters.http.cors.v3.CorsPolicy
                  allow_origin_string_match: [{ exact: "http://a.com" }]
                  allow_methods: "GET"
              routes:
              - match: { prefix: "/" }
                route: { cluster: a }
"#;
    let yaml = with_filters(
        &bootstrap(routes, "", &clusters(&a)),
        &format!("{cors}{}", filter(config)),
    )
    .replace("GZIP_LIB", GZIP_LIB);
    let cases = [
        get("text/css", "/shape?ct=text/css&n=500", GZ, true, true),
        get("json", "/shape?ct=application/json&n=500", GZ, true, true),
        get(
            "xml is not matched",
            "/shape?ct=application/xml&n=500",
            GZ,
            false,
            false,
        ),
        get(
            "upper case is not matched",
            "/shape?ct=Text/css&n=500",
            GZ,
            false,
            false,
        ),
        get(
            "strong etag removed",
            "/shape?ct=text/css&n=500&etag=abc",
            GZ,
            true,
            true,
        ),
        Case {
            method: "OPTIONS",
            headers: &[
                ("origin", "http://a.com"),
                ("access-control-request-method", "GET"),
                ("accept-encoding", "gzip"),
            ],
            ..get("preflight", "/shape", &[], false, true)
        },
        get(
            "cross-origin",
            "/shape?ct=text/css&n=500",
            &[("origin", "http://a.com"), ("accept-encoding", "gzip")],
            true,
            true,
        ),
    ];
    let stats = differential(
        &yaml,
        &cases,
        &|_| Vec::new(),
        ("http.ingress.compressor.m.gzip.request.not_compressed", 6),
    );
    let s = |k: &str| {
        stats
            .get(&format!("http.ingress.compressor.m.gzip.{k}"))
            .copied()
            .unwrap_or(u64::MAX)
    };
    assert_eq!(s("response.compressed"), 4);
    assert_eq!(s("response.not_compressed"), 3);
    // The preflight never reached the compressor's request pass.
    assert_eq!(s("request.not_compressed"), 6);
    assert_eq!(s("header_not_valid"), 2);
}

/// What Courier cannot do is refused at load, naming the field.
#[test]
fn unsupported_settings_are_refused() {
    let a = Upstream::start("a");
    for (label, config, path) in [
        (
            "zstd dictionary",
            "              compressor_library:\n                name: z\n                typed_config: { \"@type\": ZSTD_LIB, dictionary: { inline_string: abc } }\n",
            "http_filters[0].typed_config.compressor_library.typed_config.dictionary",
        ),
        (
            "status header",
            "              response_direction_config: { status_header_enabled: true }\n              compressor_library:\n                name: g\n                typed_config: { \"@type\": GZIP_LIB }\n",
            "http_filters[0].typed_config.response_direction_config.status_header_enabled",
        ),
        (
            "window bits",
            "              compressor_library:\n                name: g\n                typed_config: { \"@type\": GZIP_LIB, window_bits: 16 }\n",
            "http_filters[0].typed_config.compressor_library.typed_config.window_bits",
        ),
        (
            "no library",
            "              choose_first: true\n",
            "http_filters[0].typed_config.compressor_library",
        ),
    ] {
        let yaml = with_filters(&bootstrap(&all_to("a"), "", &clusters(&a)), &filter(config))
            .replace("GZIP_LIB", GZIP_LIB)
            .replace("ZSTD_LIB", ZSTD_LIB);
        let (code, stderr) = validate(&yaml);
        assert_eq!(code, Some(1), "{label}: {stderr}");
        assert!(stderr.contains(path), "{label}: {stderr}");
    }
}

/// The three libraries in one chain: gzip, brotli (its settings all set, request
/// compression of JSON) and zstd (JSON only, its settings set); a route without the
/// brotli filter, one where zstd's compression is off. Every library's output decodes to
/// what the upstream sent, and the choice follows `accept-encoding` as in Envoy.
/// HTTP/2 GETs with a trailer, compressed by brotli and by zstd: status,
/// `content-encoding`, the body decoded, the trailer after the compressed stream.
fn h2_brotli_zstd_cases(proxy: &Courier) -> Vec<String> {
    block_on(async {
        let mut sender = h2_connect(proxy.listener).await;
        let mut out = Vec::new();
        for (ae, ct) in [("br", "text/plain"), ("zstd", "application/json")] {
            let path = format!("/shape?ct={ct}&n=30000&chunked=1&chunks=6&trailer=t-{ae}");
            let (parts, bytes, trailer) =
                h2_fetch_bytes(&mut sender, &path, &[("accept-encoding", ae)], "x-trailer").await;
            let ce = parts.headers.get("content-encoding").cloned();
            assert_eq!(
                ce.as_ref().map(|v| v.as_bytes()),
                Some(ae.as_bytes()),
                "h2 {ae}"
            );
            let plain = decode(ae, &bytes).expect("h2: a valid stream");
            assert_eq!(plain, shape_text(30000), "h2 {ae} body");
            assert_eq!(trailer, Some(format!("t-{ae}")), "h2 {ae} trailer");
            out.push(format!(
                "h2 {ae}: {} ce={ce:?} vary={:?} trailer={trailer:?} body={}",
                parts.status,
                parts.headers.get("vary"),
                plain.len()
            ));
        }
        out
    })
}

#[test]
fn three_compressors_negotiate_as_envoy() {
    let a = Upstream::start("a");
    let filters = [
        filter(
            "              compressor_library: { name: g, typed_config: { \"@type\": GZIP_LIB } }\n",
        ),
        filter(
            r#"              request_direction_config:
                common_config: { content_type: [application/json] }
              compressor_library:
                name: b
                typed_config:
                  "@type": BROTLI_LIB
                  quality: 5
                  window_bits: 20
                  input_block_bits: 20
                  encoder_mode: TEXT
                  disable_literal_context_modeling: true
                  chunk_size: 8192
"#,
        ),
        filter(
            r#"              response_direction_config:
                common_config: { content_type: [application/json] }
              compressor_library:
                name: z
                typed_config:
                  "@type": ZSTD_LIB
                  compression_level: 7
                  enable_checksum: true
                  strategy: LAZY2
                  chunk_size: 8192
"#,
        ),
    ]
    .concat()
    .replace("envoy.filters.http.compressor\n", "COMPRESSOR_NAME\n");
    // Each filter under its own name, so that routes can address one.
    let mut named = String::new();
    for (i, part) in filters.split("COMPRESSOR_NAME\n").enumerate() {
        named.push_str(part);
        if i < 3 {
            named.push_str(["gzip\n", "brotli\n", "zstd\n"][i]);
        }
    }
    let named = named
        .replacen("- name: gzip\n", "- name: compress.gzip\n", 1)
        .replacen("- name: brotli\n", "- name: compress.brotli\n", 1)
        .replacen("- name: zstd\n", "- name: compress.zstd\n", 1);
    let routes = r#"            name: local
            virtual_hosts:
            - name: main
              domains: ["*"]
              routes:
              - match: { prefix: "/no-br/" }
                route: { cluster: a }
                typed_per_filter_config:
                  compress.brotli:
                    "@type": type.googleapis.com/envoy.config.route.v3.FilterConfig
                    disabled: true
              - match: { prefix: "/no-zstd/" }
                route: { cluster: a }
                typed_per_filter_config:
                  compress.zstd:
                    "@type": type.googleapis.com/envoy.extensions.filters.http.compressor.v3.CompressorPerRoute
                    disabled: true
              - match: { prefix: "/" }
                route: { cluster: a }
"#;
    let yaml = with_filters(&bootstrap(routes, "", &clusters(&a)), &named)
        .replace("GZIP_LIB", GZIP_LIB)
        .replace("BROTLI_LIB", BROTLI_LIB)
        .replace("ZSTD_LIB", ZSTD_LIB);
    const T: &str = "/shape?ct=text/plain&n=1000";
    const J: &str = "/shape?ct=application/json&n=1000";
    let ae = |v: &'static str| -> &'static [(&'static str, &'static str)] {
        Box::leak(Box::new([("accept-encoding", v)]))
    };
    let enc = |ce: &'static str, c: Case| Case { ce, ..c };
    let cases = [
        get("gzip", T, ae("gzip"), true, true),
        enc("br", get("br", T, ae("br"), true, true)),
        get("zstd, text", T, ae("zstd"), false, true),
        enc("zstd", get("zstd, json", J, ae("zstd"), true, true)),
        get("wildcard", T, ae("*"), true, true),
        enc(
            "br",
            get("gzip refused, wildcard", T, ae("gzip;q=0, *"), true, true),
        ),
        enc(
            "zstd",
            get(
                "gzip and br refused, json",
                J,
                ae("gzip;q=0, br;q=0, *"),
                true,
                true,
            ),
        ),
        get(
            "gzip and br refused, text",
            T,
            ae("gzip;q=0, br;q=0, *"),
            false,
            true,
        ),
        enc(
            "zstd",
            get(
                "zstd preferred, json",
                J,
                ae("br;q=0.8, zstd;q=0.9"),
                true,
                true,
            ),
        ),
        enc(
            "br",
            get(
                "zstd preferred, text",
                T,
                ae("br;q=0.8, zstd;q=0.9"),
                true,
                true,
            ),
        ),
        get("tie, gzip first", T, ae("gzip, br"), true, true),
        enc(
            "br",
            get("tie, br first", J, ae("br, gzip, zstd"), true, true),
        ),
        get("identity", T, ae("identity"), false, true),
        get(
            "identity preferred",
            T,
            ae("br;q=0.5, identity"),
            false,
            true,
        ),
        get("deflate", T, ae("deflate"), false, true),
        get("no accept-encoding", T, &[], false, true),
        get(
            "brotli filter off",
            "/no-br/shape?ct=text/plain&n=1000",
            ae("br"),
            false,
            true,
        ),
        get(
            "brotli filter off, gzip next",
            "/no-br/shape?ct=text/plain&n=1000",
            ae("br, gzip"),
            true,
            true,
        ),
        get(
            "zstd chosen but off",
            "/no-zstd/shape?ct=application/json&n=1000",
            ae("zstd, br;q=0.5"),
            false,
            true,
        ),
        enc(
            "br",
            get(
                "zstd off, br",
                "/no-zstd/shape?ct=application/json&n=1000",
                ae("br"),
                true,
                true,
            ),
        ),
        enc(
            "br",
            get(
                "large streamed body, br",
                "/shape?ct=text/plain&n=400000&chunked=1&chunks=50",
                ae("br"),
                true,
                true,
            ),
        ),
        enc(
            "zstd",
            get(
                "large streamed body, zstd",
                "/shape?ct=application/json&n=400000&chunked=1&chunks=50",
                ae("zstd"),
                true,
                true,
            ),
        ),
        get(
            "too short",
            "/shape?ct=application/json&n=20",
            ae("zstd"),
            false,
            false,
        ),
        enc(
            "br",
            get(
                "strong etag",
                "/shape?ct=text/plain&n=1000&etag=abc",
                ae("br"),
                true,
                true,
            ),
        ),
        Case {
            method: "HEAD",
            ..get("head", J, ae("zstd"), false, true)
        },
        Case {
            method: "POST",
            headers: &[("content-type", "application/json")],
            body: br#"{"request": "a json body long enough to be compressed upstream by brotli"}"#,
            ..get(
                "request compressed by brotli",
                "/shape?echo=1",
                &[],
                false,
                true,
            )
        },
    ];
    let stats = differential(
        &yaml,
        &cases,
        &h2_brotli_zstd_cases,
        ("http.ingress.compressor.g.gzip.request.not_compressed", 28),
    );
    let s = |k: &str| stats.get(&format!("http.ingress.compressor.{k}")).copied();
    assert_eq!(
        s("g.gzip.response.compressed").or(s("g.gzip.compressed")),
        Some(4)
    );
    assert_eq!(s("b.brotli.request.compressed"), Some(1));
    assert!(s("z.zstd.header_compressor_overshadowed").is_some_and(|n| n > 0));
    assert!(s("b.brotli.header_compressor_overshadowed").is_some_and(|n| n > 0));
}

/// Two filters: gzip, which removes `accept-encoding`, then brotli with `choose_first`.
/// Brotli, after gzip in the chain, never sees `accept-encoding`, yet gzip's choice (made
/// for both) can name it: then neither compresses, as in Envoy.
#[test]
fn choose_first_and_a_removed_accept_encoding_as_envoy() {
    let a = Upstream::start("a");
    let filters = [
        filter(
            "              response_direction_config: { remove_accept_encoding_header: true }\n              compressor_library: { name: g, typed_config: { \"@type\": GZIP_LIB } }\n",
        ),
        filter(
            "              choose_first: true\n              compressor_library: { name: b, typed_config: { \"@type\": BROTLI_LIB } }\n",
        ),
    ]
    .concat();
    let yaml = with_filters(&bootstrap(&all_to("a"), "", &clusters(&a)), &filters)
        .replace("GZIP_LIB", GZIP_LIB)
        .replace("BROTLI_LIB", BROTLI_LIB);
    const T: &str = "/shape?ct=text/plain&n=1000";
    let ae = |v: &'static str| -> &'static [(&'static str, &'static str)] {
        Box::leak(Box::new([("accept-encoding", v)]))
    };
    let cases = [
        get("gzip", T, ae("gzip"), true, true),
        get("br chosen, nobody compresses", T, ae("br"), false, true),
        get("tie goes to br", T, ae("gzip, br"), false, true),
        get("wildcard: gzip registered first", T, ae("*"), true, true),
        get("br refused", T, ae("br;q=0, gzip;q=0.1"), true, true),
        get("identity", T, ae("identity;q=0.5, gzip;q=0.5"), false, true),
    ];
    let stats = differential(
        &yaml,
        &cases,
        &|_| Vec::new(),
        ("http.ingress.compressor.g.gzip.request.not_compressed", 6),
    );
    let s = |k: &str| stats.get(&format!("http.ingress.compressor.{k}")).copied();
    assert_eq!(s("b.brotli.no_accept_header"), Some(6));
    assert_eq!(s("g.gzip.header_compressor_overshadowed"), Some(2));
    assert_eq!(s("g.gzip.response.compressed"), Some(3));
}
