//! A cluster's `use_downstream_protocol_config` (Istio's sidecar inbound clusters): each
//! request goes upstream in the protocol it came in (HTTP/1.0 and HTTP/1.1 as HTTP/1.1,
//! HTTP/2 as HTTP/2), on connections pooled per protocol, the per-protocol options
//! applying to their protocol's connections. The same bootstrap runs through Courier and
//! Envoy 1.40: what the upstream saw, on which of its connections, and the cluster's
//! connection counters must be equal, and equal to what is written here.

mod http_support;

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use bytes::Bytes;
use http_body_util::Full;
use hyper::{Request, Response};
use hyper_util::rt::{TokioExecutor, TokioIo};

use http_support::*;

const OPTIONS: &str = "envoy.extensions.upstreams.http.v3.HttpProtocolOptions";

/// An upstream answering HTTP/1.1 and HTTP/2 (prior knowledge) on one port: each answer
/// names the protocol the request came in and the connection it came on (numbered as
/// opened). `/hold` requests are answered once three of them are in, so that three are
/// in flight together.
fn dual_upstream() -> SocketAddr {
    let conns = Arc::new(AtomicUsize::new(0));
    let hold = Arc::new(tokio::sync::Barrier::new(3));
    spawn_tokio_server(move |s| {
        let id = conns.fetch_add(1, Ordering::SeqCst);
        let hold = hold.clone();
        async move {
            let svc = hyper::service::service_fn(move |req: Request<hyper::body::Incoming>| {
                let hold = hold.clone();
                async move {
                    if req.uri().path() == "/hold" {
                        hold.wait().await;
                    }
                    let text = format!("{:?} conn={id}", req.version());
                    Ok::<_, Infallible>(Response::new(Full::new(Bytes::from(text))))
                }
            });
            let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                .serve_connection(TokioIo::new(s), svc)
                .await;
        }
    })
}

/// The cluster's protocol options: `use_downstream_protocol_config` with `inner`.
fn options(inner: &str) -> String {
    format!(
        "    typed_extension_protocol_options:\n      {OPTIONS}:\n        \"@type\": type.googleapis.com/{OPTIONS}\n        use_downstream_protocol_config: {inner}\n"
    )
}

fn boot(upstream: SocketAddr, inner: &str) -> String {
    bootstrap(
        &all_to("svc"),
        "          http_protocol_options: { accept_http_10: true }\n",
        &cluster("svc", &[upstream], &options(inner)),
    )
}

/// What a client saw of one request: its protocol, path, status and body (the
/// upstream's account of it).
fn line(client: &str, path: &str, status: u16, body: &str) -> String {
    format!("{client} {path} {status} {body}")
}

/// HTTP/2 requests on one prior-knowledge connection: `sequential` one after the other,
/// then three `/hold` ones together (their bodies sorted: their order is the upstream's).
fn h2_requests(listener: SocketAddr, sequential: usize) -> Vec<String> {
    block_on(async move {
        let mut sender = h2_connect(listener).await;
        let mut out = Vec::new();
        for i in 0..sequential {
            let path = format!("/h2/{i}");
            let (parts, body, _) = h2_fetch(&mut sender, &path, "").await;
            out.push(line("h2", &path, parts.status.as_u16(), &body));
        }
        let (mut a, mut b, mut c) = (sender.clone(), sender.clone(), sender.clone());
        let (x, y, z) = tokio::join!(
            h2_fetch(&mut a, "/hold", ""),
            h2_fetch(&mut b, "/hold", ""),
            h2_fetch(&mut c, "/hold", "")
        );
        let mut held: Vec<String> = [x, y, z]
            .into_iter()
            .map(|(p, body, _)| line("h2", "/hold", p.status.as_u16(), &body))
            .collect();
        held.sort();
        out.extend(held);
        out
    })
}

/// HTTP/1.1 requests on one kept-alive connection.
fn h1_requests(listener: SocketAddr, from: usize, n: usize) -> Vec<String> {
    let mut client = Client::connect(listener);
    (from..from + n)
        .map(|i| {
            let path = format!("/h1/{i}");
            let r = client.get("example.com", &path, &[]);
            line("h1.1", &path, r.status, &r.body_str())
        })
        .collect()
}

/// Three HTTP/1.1 `/hold` requests on connections of their own, in flight together.
fn h1_held(listener: SocketAddr) -> Vec<String> {
    let mut clients: Vec<Client> = (0..3).map(|_| Client::connect(listener)).collect();
    for c in &mut clients {
        c.send_raw(b"GET /hold HTTP/1.1\r\nhost: example.com\r\n\r\n");
    }
    let mut held: Vec<String> = clients
        .iter_mut()
        .map(|c| {
            let r = c.read().expect("a response");
            line("h1.1", "/hold", r.status, &r.body_str())
        })
        .collect();
    held.sort();
    held
}

/// The cluster's connection counters.
fn counters(proxy: &Courier) -> Vec<String> {
    [
        "upstream_cx_total",
        "upstream_cx_http1_total",
        "upstream_cx_http2_total",
        "upstream_rq_total",
    ]
    .iter()
    .map(|c| format!("{c}={}", proxy.stat(&format!("cluster.svc.{c}"))))
    .collect()
}

/// Runs `run` through Courier, then Envoy 1.40 (when on PATH), each with an upstream of
/// its own on the bootstrap with `inner` options: the two transcripts must be equal.
fn agree(inner: &str, run: impl Fn(&Courier) -> Vec<String>) -> Vec<String> {
    let got = run(&Courier::start(&boot(dual_upstream(), inner)));
    match Courier::start_envoy(&boot(dual_upstream(), inner)) {
        Some(envoy) => assert_eq!(run(&envoy), got, "envoy vs courier"),
        None => eprintln!("envoy not on PATH: Courier's side only"),
    }
    got
}

#[test]
fn each_request_goes_upstream_in_its_downstream_protocol() {
    let got = agree("{}", |proxy| {
        let l = proxy.listener;
        let mut out = h1_requests(l, 0, 6);
        out.extend(h2_requests(l, 6));
        // HTTP/1.0 goes upstream as HTTP/1.1, on the kept-alive HTTP/1.1 connection.
        let mut ten = Client::connect(l);
        ten.send_raw(b"GET /ten HTTP/1.0\r\nhost: example.com\r\n\r\n");
        let r = ten.read().expect("a response");
        out.push(line("h1.0", "/ten", r.status, &r.body_str()));
        out.extend(h1_requests(l, 6, 4));
        out.extend(h1_held(l));
        out.extend(h2_requests(l, 2));
        proxy.wait_stat("cluster.svc.upstream_rq_total", 28);
        out.extend(counters(proxy));
        out
    });
    let mut want: Vec<String> = (0..6)
        .map(|i| format!("h1.1 /h1/{i} 200 HTTP/1.1 conn=0"))
        .collect();
    want.extend((0..6).map(|i| format!("h2 /h2/{i} 200 HTTP/2.0 conn=1")));
    want.extend((0..3).map(|_| "h2 /hold 200 HTTP/2.0 conn=1".to_string()));
    want.push("h1.0 /ten 200 HTTP/1.1 conn=0".into());
    want.extend((6..10).map(|i| format!("h1.1 /h1/{i} 200 HTTP/1.1 conn=0")));
    // Three at once need three HTTP/1.1 connections: the one kept alive and two more.
    want.extend(["conn=0", "conn=2", "conn=3"].map(|c| format!("h1.1 /hold 200 HTTP/1.1 {c}")));
    want.extend((0..2).map(|i| format!("h2 /h2/{i} 200 HTTP/2.0 conn=1")));
    want.extend((0..3).map(|_| "h2 /hold 200 HTTP/2.0 conn=1".to_string()));
    want.extend([
        "upstream_cx_total=4".to_string(),
        "upstream_cx_http1_total=3".into(),
        "upstream_cx_http2_total=1".into(),
        "upstream_rq_total=28".into(),
    ]);
    assert_eq!(got, want);
}

/// `http2_protocol_options` applies to the HTTP/2 connections: with one stream a
/// connection, three HTTP/2 requests at once take three; HTTP/1.1 is unaffected.
#[test]
fn http2_options_apply_to_http2_connections() {
    let got = agree(
        "{ http2_protocol_options: { max_concurrent_streams: 1 }, http_protocol_options: {} }",
        |proxy| {
            let l = proxy.listener;
            let mut out = h2_requests(l, 3);
            out.extend(h1_requests(l, 0, 3));
            proxy.wait_stat("cluster.svc.upstream_rq_total", 9);
            out.extend(counters(proxy));
            out
        },
    );
    let mut want: Vec<String> = (0..3)
        .map(|i| format!("h2 /h2/{i} 200 HTTP/2.0 conn=0"))
        .collect();
    want.extend(["conn=0", "conn=1", "conn=2"].map(|c| format!("h2 /hold 200 HTTP/2.0 {c}")));
    want.extend((0..3).map(|i| format!("h1.1 /h1/{i} 200 HTTP/1.1 conn=3")));
    want.extend([
        "upstream_cx_total=4".to_string(),
        "upstream_cx_http1_total=1".into(),
        "upstream_cx_http2_total=3".into(),
        "upstream_rq_total=9".into(),
    ]);
    assert_eq!(got, want);
}

#[test]
fn refusals_by_path_and_envoy_rejections() {
    let base = boot("127.0.0.1:1".parse().expect("addr"), "{}");
    assert_refused_by_path(
        &base,
        &[(
            "use_downstream_protocol_config: {}",
            "use_downstream_protocol_config: { http3_protocol_options: {} }",
            "use_downstream_protocol_config.http3_protocol_options",
        )],
    );
    // Rejected by Envoy and Courier alike: options Envoy's validation refuses.
    for bad in [
        "{ http2_protocol_options: { max_concurrent_streams: 0 } }",
        "{ http2_protocol_options: { initial_stream_window_size: 1 } }",
    ] {
        let cfg = boot("127.0.0.1:1".parse().expect("addr"), bad);
        let (code, stderr) = validate(&cfg);
        assert_eq!(code, Some(1), "{bad}: {stderr}");
        assert!(
            stderr.contains("use_downstream_protocol_config.http2_protocol_options"),
            "{bad}: {stderr}"
        );
        if let Some((code, text)) = envoy_validate(&cfg) {
            assert_ne!(code, Some(0), "envoy accepted {bad}: {text}");
        }
    }
    // Accepted by both.
    let good = boot(
        "127.0.0.1:1".parse().expect("addr"),
        "{ http_protocol_options: { enable_trailers: true }, http2_protocol_options: { max_concurrent_streams: 10 } }",
    );
    assert_eq!(validate(&good).0, Some(0), "{}", validate(&good).1);
    if let Some((code, text)) = envoy_validate(&good) {
        assert_eq!(code, Some(0), "{text}");
    }
}
