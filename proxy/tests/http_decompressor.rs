//! The decompressor filter (`envoy.filters.http.decompressor`, gzip, brotli, zstd):
//! which request and response bodies are decoded, what that does to their headers,
//! `accept-encoding` advertising, corrupt bodies and decompression bombs, and the
//! filter's counters. Each case runs through Courier and, when `envoy` is on PATH,
//! through Envoy 1.40; the two must agree, and both must give what each case expects.

mod http_support;

use std::collections::{BTreeMap, HashMap};
use std::io::{BufReader, Write};
use std::net::{SocketAddr, TcpListener};
use std::sync::Arc;

use http_support::*;

const DECOMPRESSOR: &str =
    "type.googleapis.com/envoy.extensions.filters.http.decompressor.v3.Decompressor";
const GZIP: &str = "type.googleapis.com/envoy.extensions.compression.gzip.decompressor.v3.Gzip";
const BROTLI: &str =
    "type.googleapis.com/envoy.extensions.compression.brotli.decompressor.v3.Brotli";
const ZSTD: &str = "type.googleapis.com/envoy.extensions.compression.zstd.decompressor.v3.Zstd";

fn gzip(b: &[u8]) -> Vec<u8> {
    let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
    e.write_all(b).expect("gzip");
    e.finish().expect("gzip")
}

fn brotli(b: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    {
        let mut w = brotli::CompressorWriter::new(&mut out, 4096, 5, 22);
        w.write_all(b).expect("brotli");
    }
    out
}

fn zstd(b: &[u8]) -> Vec<u8> {
    zstd::encode_all(b, 3).expect("zstd")
}

/// What the upstream answers on `/resp/<key>`: extra header lines and the body.
type Table = HashMap<String, (String, Vec<u8>)>;

/// An HTTP/1.1 upstream: `/resp/<key>` answers from `table` (with a `content-length`);
/// anything else echoes the request's body and says what its `accept-encoding`,
/// `content-encoding`, `content-length` and `transfer-encoding` were (`x-seen-*`, `-`
/// when absent).
fn upstream(table: Table) -> SocketAddr {
    let l = TcpListener::bind("127.0.0.1:0").expect("bind");
    let addr = l.local_addr().expect("addr");
    let table = Arc::new(table);
    std::thread::spawn(move || {
        for s in l.incoming() {
            let Ok(s) = s else { continue };
            let table = table.clone();
            std::thread::spawn(move || {
                let Ok(mut w) = s.try_clone() else { return };
                let mut r = BufReader::new(s);
                while let Some((line, headers)) = read_head(&mut r) {
                    let Some(body) = read_body(&mut r, &headers, false) else {
                        return;
                    };
                    let path = line.split(' ').nth(1).unwrap_or("").to_string();
                    let seen = |k: &str| {
                        headers
                            .iter()
                            .find(|(n, _)| n == k)
                            .map_or("-".to_string(), |(_, v)| v.clone())
                    };
                    let (extra, out) = match path.strip_prefix("/resp/").and_then(|k| table.get(k)) {
                        Some((h, b)) => (h.clone(), b.clone()),
                        None => (
                            format!(
                                "x-seen-ae: {}\r\nx-seen-ce: {}\r\nx-seen-cl: {}\r\nx-seen-te: {}\r\n",
                                seen("accept-encoding"),
                                seen("content-encoding"),
                                seen("content-length"),
                                seen("transfer-encoding"),
                            ),
                            body,
                        ),
                    };
                    let head = format!(
                        "HTTP/1.1 200 OK\r\n{extra}content-length: {}\r\n\r\n",
                        out.len()
                    );
                    if w.write_all(head.as_bytes())
                        .and_then(|_| w.write_all(&out))
                        .is_err()
                    {
                        return;
                    }
                }
            });
        }
    });
    addr
}

fn digest(b: &[u8]) -> u64 {
    b.iter()
        .fold(0u64, |h, b| h.wrapping_mul(31).wrapping_add(u64::from(*b)))
}

/// What is compared of a response.
fn summary(r: &Resp) -> String {
    let h = |n: &str| r.header(n).unwrap_or("-").to_string();
    format!(
        "{} ce={} cl={} cc={} seen-ae={} seen-ce={} seen-cl={} seen-te={} body={}:{:x}",
        r.status,
        h("content-encoding"),
        r.header("content-length").is_some(),
        h("cache-control"),
        h("x-seen-ae"),
        h("x-seen-ce"),
        h("x-seen-cl"),
        h("x-seen-te"),
        r.body.len(),
        digest(&r.body)
    )
}

/// The decompressor counters that are not zero, by name.
fn counters(proxy: &Courier) -> BTreeMap<String, u64> {
    admin_get(proxy.admin, "/stats")
        .unwrap_or_default()
        .lines()
        .filter_map(|l| {
            let (k, v) = l.split_once(": ")?;
            let v: u64 = v.trim().parse().ok()?;
            (k.contains(".decompressor.") && v > 0).then(|| (k.to_string(), v))
        })
        .collect()
}

/// A request: label, method, path, headers, body; what the case expects is checked by
/// `check` on the response.
struct Case {
    label: &'static str,
    method: &'static str,
    path: &'static str,
    headers: Vec<(&'static str, &'static str)>,
    body: Vec<u8>,
    check: Box<dyn Fn(&Resp)>,
}

fn run(proxy: &Courier, cases: &[Case]) -> Vec<String> {
    cases
        .iter()
        .map(|c| {
            let mut client = Client::connect(proxy.listener);
            let r = client.request(c.method, "example.com", c.path, &c.headers, &c.body);
            (c.check)(&r);
            format!("{}: {}", c.label, summary(&r))
        })
        .collect()
}

/// Runs `cases` through Courier, then Envoy; compares responses and non-zero counters
/// (`exact`: all of them; otherwise those not named in `loose`, which must be non-zero
/// on both). Returns Courier's counters.
fn differential(
    yaml: &str,
    cases: &[Case],
    settled: (&str, u64),
    loose: &[&str],
) -> BTreeMap<String, u64> {
    let courier = Courier::start(yaml);
    let got = run(&courier, cases);
    courier.wait_stat(settled.0, settled.1);
    let stats = counters(&courier);
    if let Some(envoy) = Courier::start_envoy(yaml) {
        let want = run(&envoy, cases);
        envoy.wait_stat(settled.0, settled.1);
        for (g, w) in got.iter().zip(&want) {
            assert_eq!(g, w, "Courier, then Envoy");
        }
        let exact = |m: &BTreeMap<String, u64>| -> BTreeMap<String, u64> {
            m.iter()
                .map(|(k, v)| {
                    let loose = loose.iter().any(|l| k.ends_with(l));
                    (k.clone(), if loose { 1 } else { *v })
                })
                .collect()
        };
        assert_eq!(
            exact(&stats),
            exact(&counters(&envoy)),
            "counters: Courier, then Envoy"
        );
    }
    stats
}

fn filter(name: &str, lib: &str, extra: &str) -> String {
    format!(
        "          - name: {name}\n            typed_config:\n              \"@type\": {DECOMPRESSOR}\n              decompressor_library: {{ name: {name}, typed_config: {{ \"@type\": {lib} }} }}\n{extra}"
    )
}

/// `n` bytes of pseudo-random words: they compress a few times over, well inside the
/// libraries' inflate ratio (100).
fn text(n: usize) -> Vec<u8> {
    let mut x: u32 = 12345;
    (0..n)
        .map(|_| {
            x = x.wrapping_mul(1_103_515_245).wrapping_add(12345);
            b"abcdefghijklmnopqrstuvwxyz     "[(x >> 16) as usize % 31]
        })
        .collect()
}

fn expect_plain(n: usize) -> Box<dyn Fn(&Resp)> {
    Box::new(move |r: &Resp| {
        assert_eq!(r.status, 200);
        assert!(
            r.body == text(n),
            "decoded body: {} bytes, want {n}",
            r.body.len()
        );
        assert!(r.header("content-length").is_none(), "no length: {r:?}");
    })
}

fn expect_untouched(ce: &'static str) -> Box<dyn Fn(&Resp)> {
    Box::new(move |r: &Resp| {
        assert_eq!(r.status, 200);
        assert_eq!(r.header("content-encoding"), Some(ce));
        assert!(r.header("content-length").is_some());
    })
}

#[test]
fn three_libraries_decompress_as_envoy() {
    let t = text(50_000);
    let big = text(300_000);
    let mut table = Table::new();
    let mut put = |k: &str, h: &str, b: Vec<u8>| {
        table.insert(k.to_string(), (h.to_string(), b));
    };
    put("gz", "content-encoding: gzip\r\n", gzip(&t));
    put("br", "content-encoding: br\r\n", brotli(&t));
    put("zs", "content-encoding: zstd\r\n", zstd(&big));
    put("upper", "content-encoding: GZIP\r\n", gzip(&t));
    put("gz-br", "content-encoding: gzip, br\r\n", gzip(&t));
    put(
        "br-gz",
        "content-encoding: br\r\ncontent-encoding: gzip\r\n",
        brotli(&gzip(&t)),
    );
    put(
        "no-transform",
        "content-encoding: gzip\r\ncache-control: max-age=1, No-Transform\r\n",
        gzip(&t),
    );
    put("deflate", "content-encoding: deflate\r\n", t.clone());
    put("plain", "", t.clone());
    let mut corrupt = gzip(&t);
    corrupt.truncate(20);
    corrupt.extend_from_slice(&[0xff; 200]);
    put("corrupt-gz", "content-encoding: gzip\r\n", corrupt);
    put("corrupt-br", "content-encoding: br\r\n", vec![0xff; 300]);
    put(
        "corrupt-zs",
        "content-encoding: zstd\r\n",
        b"\x28\xb5\x2f\xfd garbage, not a frame".repeat(5),
    );
    let whole = gzip(&t);
    put(
        "truncated-gz",
        "content-encoding: gzip\r\n",
        whole[..whole.len() / 2].to_vec(),
    );
    let a = upstream(table);
    let filters = [
        filter("g", GZIP, ""),
        filter("b", BROTLI, ""),
        filter("z", ZSTD, ""),
    ]
    .concat();
    let yaml = with_filters(
        &bootstrap(&all_to("a"), "", &cluster("a", &[a], "")),
        &filters,
    );
    let get = |label, path, check| Case {
        label,
        method: "GET",
        path,
        headers: vec![],
        body: vec![],
        check,
    };
    let post = |label, headers: Vec<(&'static str, &'static str)>, body, check| Case {
        label,
        method: "POST",
        path: "/req",
        headers,
        body,
        check,
    };
    let ok = || -> Box<dyn Fn(&Resp)> { Box::new(|r: &Resp| assert_eq!(r.status, 200)) };
    let cases = vec![
        get("gzip response", "/resp/gz", expect_plain(50_000)),
        get("brotli response", "/resp/br", expect_plain(50_000)),
        get("zstd response", "/resp/zs", expect_plain(300_000)),
        get("GZIP response", "/resp/upper", expect_plain(50_000)),
        get(
            "gzip, br: the first is decoded",
            "/resp/gz-br",
            Box::new(|r: &Resp| {
                assert_eq!(r.header("content-encoding"), Some("br"));
                assert!(r.body == text(50_000), "gzip, br");
            }),
        ),
        get(
            "br then gzip headers: both decoded",
            "/resp/br-gz",
            expect_plain(50_000),
        ),
        get(
            "no-transform",
            "/resp/no-transform",
            expect_untouched("gzip"),
        ),
        get("deflate", "/resp/deflate", expect_untouched("deflate")),
        get("plain", "/resp/plain", ok()),
        get("corrupt gzip", "/resp/corrupt-gz", ok()),
        get("corrupt brotli", "/resp/corrupt-br", ok()),
        get("corrupt zstd", "/resp/corrupt-zs", ok()),
        get("truncated gzip", "/resp/truncated-gz", ok()),
        get(
            "a GET is advertised every encoding",
            "/req",
            Box::new(|r: &Resp| assert_eq!(r.header("x-seen-ae"), Some("gzip,br,zstd"))),
        ),
        get_with_ae(),
        post(
            "gzip request",
            vec![("content-encoding", "gzip")],
            gzip(&t),
            Box::new(|r: &Resp| {
                assert_eq!(r.header("x-seen-ce"), Some("-"));
                assert_eq!(r.header("x-seen-cl"), Some("-"));
                assert!(r.body == text(50_000), "gzip request");
            }),
        ),
        post(
            "brotli request",
            vec![("content-encoding", "br")],
            brotli(&t),
            expect_echo(50_000),
        ),
        post(
            "zstd request",
            vec![("content-encoding", "zstd")],
            zstd(&big),
            expect_echo(300_000),
        ),
        post(
            "zstd, gzip request: zstd decoded, gzip left",
            vec![("content-encoding", "zstd, gzip")],
            zstd(&gzip(&t)),
            Box::new(|r: &Resp| assert_eq!(r.header("x-seen-ce"), Some("gzip"))),
        ),
        post(
            "no-transform request",
            vec![
                ("content-encoding", "gzip"),
                ("cache-control", "no-transform"),
            ],
            gzip(&t),
            Box::new(|r: &Resp| assert_eq!(r.header("x-seen-ce"), Some("gzip"))),
        ),
        post("plain request", vec![], t.clone(), ok()),
        post(
            "corrupt gzip request",
            vec![("content-encoding", "gzip")],
            vec![0x1f, 0x8b, 8, 0, 0, 0, 0, 0, 0, 3, 0xff, 0xff, 0xff],
            ok(),
        ),
    ];
    let stats = differential(
        &yaml,
        &cases,
        ("http.ingress.decompressor.g.gzip.request.decompressed", 2),
        &[],
    );
    let s = |k: &str| stats.get(k).copied().unwrap_or(0);
    assert_eq!(
        s("http.ingress.decompressor.g.gzip.response.decompressed"),
        6
    );
    assert!(s("http.ingress.decompressor.g.gzip.decompressor_library.zlib_data_error") >= 2);
    assert!(s("http.ingress.decompressor.b.brotli.decompressor_library.brotli_error") >= 1);
    assert!(s("http.ingress.decompressor.z.zstd.decompressor_library.zstd_generic_error") >= 1);
    assert_eq!(
        s("http.ingress.decompressor.z.zstd.response.total_uncompressed_bytes"),
        300_000
    );
}

fn get_with_ae() -> Case {
    Case {
        label: "accept-encoding rewritten",
        method: "GET",
        path: "/req",
        headers: vec![("accept-encoding", "br;q=0.5, deflate,, GZIP")],
        body: vec![],
        check: Box::new(|r: &Resp| {
            assert_eq!(r.header("x-seen-ae"), Some("deflate,GZIP,gzip,br,zstd"))
        }),
    }
}

fn expect_echo(n: usize) -> Box<dyn Fn(&Resp)> {
    Box::new(move |r: &Resp| {
        assert_eq!(r.header("x-seen-ce"), Some("-"));
        assert!(r.body == text(n), "echo: {} bytes, want {n}", r.body.len());
    })
}

/// Decompression bombs: 10 MB of zeros, gzipped (about 10 KB) and brotli'd, in requests
/// and responses. Envoy 1.40 cuts each chunk's output past its inflate ratio (gzip's
/// `max_inflate_ratio`, brotli's fixed 100), counts the error and passes the (short)
/// body on with status 200; Courier does the same: the output stays bounded.
#[test]
fn bombs_are_cut_and_counted_as_envoy() {
    let zeros = vec![0u8; 10 << 20];
    let gz = gzip(&zeros);
    let br = brotli(&zeros);
    assert!(gz.len() < 20_000, "a gzip bomb: {}", gz.len());
    let mut table = Table::new();
    table.insert(
        "gz".into(),
        ("content-encoding: gzip\r\n".into(), gz.clone()),
    );
    table.insert("br".into(), ("content-encoding: br\r\n".into(), br.clone()));
    let a = upstream(table);
    let filters = [
        filter(
            "g",
            GZIP,
            "",
        )
        .replace("typed_config: { \"@type\": type.googleapis.com/envoy.extensions.compression.gzip.decompressor.v3.Gzip }", "typed_config: { \"@type\": type.googleapis.com/envoy.extensions.compression.gzip.decompressor.v3.Gzip, max_inflate_ratio: 20, chunk_size: 8192 }"),
        filter("b", BROTLI, ""),
    ]
    .concat();
    let yaml = with_filters(
        &bootstrap(&all_to("a"), "", &cluster("a", &[a], "")),
        &filters,
    );
    // Bounded: never near the 10 MB the bombs hold.
    let bounded = || -> Box<dyn Fn(&Resp)> {
        Box::new(|r: &Resp| {
            assert_eq!(r.status, 200);
            assert!(r.body.len() < 3 << 20, "bomb output: {}", r.body.len());
        })
    };
    let cases = vec![
        Case {
            label: "gzip bomb response",
            method: "GET",
            path: "/resp/gz",
            headers: vec![],
            body: vec![],
            check: bounded(),
        },
        Case {
            label: "brotli bomb response",
            method: "GET",
            path: "/resp/br",
            headers: vec![],
            body: vec![],
            check: bounded(),
        },
        Case {
            label: "gzip bomb request",
            method: "POST",
            path: "/req",
            headers: vec![("content-encoding", "gzip")],
            body: gz,
            check: bounded(),
        },
        Case {
            label: "brotli bomb request",
            method: "POST",
            path: "/req",
            headers: vec![("content-encoding", "br")],
            body: br,
            check: bounded(),
        },
    ];
    // How the bodies are cut into chunks differs between the proxies: the sizes and the
    // error counts are compared as bounded, not exact.
    let courier = Courier::start(&yaml);
    let got = run(&courier, &cases);
    let stats = counters(&courier);
    let s = |m: &BTreeMap<String, u64>, k: &str| m.get(k).copied().unwrap_or(0);
    let check = |m: &BTreeMap<String, u64>| {
        assert!(
            s(
                m,
                "http.ingress.decompressor.g.gzip.decompressor_library.zlib_data_error"
            ) >= 2,
            "{m:?}"
        );
        assert!(
            s(
                m,
                "http.ingress.decompressor.b.brotli.decompressor_library.brotli_output_overflow"
            ) >= 2,
            "{m:?}"
        );
        assert!(
            s(
                m,
                "http.ingress.decompressor.g.gzip.response.total_uncompressed_bytes"
            ) < 3 << 20
        );
        assert_eq!(
            s(m, "http.ingress.decompressor.g.gzip.response.decompressed"),
            1
        );
        assert_eq!(
            s(m, "http.ingress.decompressor.b.brotli.request.decompressed"),
            1
        );
    };
    check(&stats);
    if let Some(envoy) = Courier::start_envoy(&yaml) {
        let want = run(&envoy, &cases);
        check(&counters(&envoy));
        for (g, w) in got.iter().zip(&want) {
            let head = |s: &str| s.split(" body=").next().unwrap_or("").to_string();
            assert_eq!(head(g), head(w), "Courier, then Envoy");
        }
    }
}

/// A direction turned off (`enabled` false): nothing decoded that way and, for
/// responses, no `accept-encoding` advertised; `ignore_no_transform_header` decodes
/// past `no-transform`; `advertise_accept_encoding: false` advertises nothing.
#[test]
fn disabled_directions_and_no_transform_as_envoy() {
    let t = text(20_000);
    let mut table = Table::new();
    table.insert("gz".into(), ("content-encoding: gzip\r\n".into(), gzip(&t)));
    let a = upstream(table);
    let off = filter(
        "g",
        GZIP,
        "              response_direction_config: { common_config: { enabled: { default_value: false, runtime_key: dec.response } } }\n              request_direction_config: { common_config: { ignore_no_transform_header: true } }\n",
    );
    let quiet = filter(
        "z",
        ZSTD,
        "              request_direction_config: { advertise_accept_encoding: false, common_config: { enabled: { default_value: false, runtime_key: dec.request } } }\n",
    );
    let yaml = with_filters(
        &bootstrap(&all_to("a"), "", &cluster("a", &[a], "")),
        &[off, quiet].concat(),
    );
    let cases = vec![
        Case {
            label: "response direction off",
            method: "GET",
            path: "/resp/gz",
            headers: vec![("accept-encoding", "br")],
            body: vec![],
            check: expect_untouched("gzip"),
        },
        Case {
            label: "no accept-encoding advertised",
            method: "GET",
            path: "/req",
            headers: vec![("accept-encoding", "br")],
            body: vec![],
            check: Box::new(|r: &Resp| assert_eq!(r.header("x-seen-ae"), Some("br"))),
        },
        Case {
            label: "no-transform ignored",
            method: "POST",
            path: "/req",
            headers: vec![
                ("content-encoding", "gzip"),
                ("cache-control", "no-transform"),
            ],
            body: gzip(&t),
            check: expect_echo(20_000),
        },
        Case {
            label: "request direction off",
            method: "POST",
            path: "/req",
            headers: vec![("content-encoding", "zstd")],
            body: zstd(&t),
            check: Box::new(|r: &Resp| assert_eq!(r.header("x-seen-ce"), Some("zstd"))),
        },
    ];
    let stats = differential(
        &yaml,
        &cases,
        ("http.ingress.decompressor.g.gzip.request.decompressed", 1),
        &[],
    );
    assert_eq!(
        stats.get("http.ingress.decompressor.g.gzip.response.not_decompressed"),
        Some(&3)
    );
    assert_eq!(
        stats.get("http.ingress.decompressor.z.zstd.request.not_decompressed"),
        Some(&2)
    );
}

/// What stays refused: zstd's `dictionaries` (by path), and a library of another
/// extension point.
#[test]
fn refused_settings() {
    let a = upstream(Table::new());
    let base = bootstrap(&all_to("a"), "", &cluster("a", &[a], ""));
    let dict = with_filters(
        &base,
        &filter("z", ZSTD, "").replace(
            &format!("\"@type\": {ZSTD} }}"),
            &format!("\"@type\": {ZSTD}, dictionaries: [{{ inline_bytes: \"AAAA\" }}] }}"),
        ),
    );
    let (code, stderr) = validate(&dict);
    assert_ne!(code, Some(0));
    assert!(
        stderr.contains(
            "http_filters[0].typed_config.decompressor_library.typed_config.dictionaries"
        ),
        "{stderr}"
    );
    let compressor_lib = with_filters(
        &base,
        &filter(
            "g",
            "type.googleapis.com/envoy.extensions.compression.gzip.compressor.v3.Gzip",
            "",
        ),
    );
    let (code, stderr) = validate(&compressor_lib);
    assert_ne!(code, Some(0));
    assert!(
        stderr.contains("Didn't find a registered implementation"),
        "{stderr}"
    );
    if let Some((code, out)) = envoy_validate(&compressor_lib) {
        assert_ne!(code, Some(0), "{out}");
    }
}

/// A zstd bomb is cut as brotli's is (100 times each chunk), where Envoy's zstd
/// decompressor has no ratio (a deliberate difference): 10 MB of zeros never reach the
/// other side whole, and the cut is counted.
#[test]
fn zstd_bombs_are_cut_and_counted() {
    let zeros = vec![0u8; 10 << 20];
    let zs = zstd(&zeros);
    assert!(zs.len() < 20_000, "a zstd bomb: {}", zs.len());
    let mut table = Table::new();
    table.insert(
        "zs".into(),
        ("content-encoding: zstd\r\n".into(), zs.clone()),
    );
    let a = upstream(table);
    let yaml = with_filters(
        &bootstrap(&all_to("a"), "", &cluster("a", &[a], "")),
        &filter("z", ZSTD, ""),
    );
    let bounded = || -> Box<dyn Fn(&Resp)> {
        Box::new(|r: &Resp| {
            assert_eq!(r.status, 200);
            assert!(r.body.len() < 3 << 20, "bomb output: {}", r.body.len());
        })
    };
    let cases = vec![
        Case {
            label: "zstd bomb response",
            method: "GET",
            path: "/resp/zs",
            headers: vec![],
            body: vec![],
            check: bounded(),
        },
        Case {
            label: "zstd bomb request",
            method: "POST",
            path: "/req",
            headers: vec![("content-encoding", "zstd")],
            body: zs,
            check: bounded(),
        },
    ];
    let courier = Courier::start(&yaml);
    run(&courier, &cases);
    let stats = counters(&courier);
    let errors = stats
        .get("http.ingress.decompressor.z.zstd.decompressor_library.zstd_generic_error")
        .copied()
        .unwrap_or(0);
    assert!(errors >= 2, "{stats:?}");
}
