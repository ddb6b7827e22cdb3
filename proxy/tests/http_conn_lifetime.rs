//! How long upstream HTTP connections live: a cluster's `max_requests_per_connection`
//! (typed and legacy), `idle_timeout` and `max_connection_duration`, over HTTP/1.1 and
//! HTTP/2 upstreams. Each case runs through Courier and, when `envoy` is on PATH, through
//! Envoy on the same bootstrap, and what the upstream saw (connections opened and closed)
//! and the cluster's counters are compared. Last, how long a downstream connection the
//! proxy closes lingers (`delayed_close_timeout`).

mod http_support;

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::{Request, Response};
use http_body_util::Full;
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo};

use http_support::*;

/// An upstream speaking HTTP/1.1 and HTTP/2 (prior knowledge) that counts the connections
/// it accepts and the ones that have closed. `/slow` answers after 600 ms.
struct CountingUpstream {
    addr: SocketAddr,
    opened: Arc<AtomicUsize>,
    closed: Arc<AtomicUsize>,
}

impl CountingUpstream {
    fn start() -> CountingUpstream {
        let opened = Arc::new(AtomicUsize::new(0));
        let closed = Arc::new(AtomicUsize::new(0));
        let (o, c) = (opened.clone(), closed.clone());
        let addr = spawn_tokio_server(move |s| {
            o.fetch_add(1, Ordering::SeqCst);
            let c = c.clone();
            async move {
                let svc = hyper::service::service_fn(|req: Request<Incoming>| async move {
                    if req.uri().path() == "/slow" {
                        tokio::time::sleep(Duration::from_millis(600)).await;
                    }
                    Ok::<_, Infallible>(Response::new(Full::new(Bytes::from_static(b"ok"))))
                });
                let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                    .serve_connection(TokioIo::new(s), svc)
                    .await;
                c.fetch_add(1, Ordering::SeqCst);
            }
        });
        CountingUpstream {
            addr,
            opened,
            closed,
        }
    }

    fn opened(&self) -> usize {
        self.opened.load(Ordering::SeqCst)
    }

    /// Waits until `n` connections have closed; how long that took.
    fn wait_closed(&self, n: usize) -> Duration {
        let start = Instant::now();
        while self.closed.load(Ordering::SeqCst) < n {
            assert!(
                start.elapsed() < Duration::from_secs(15),
                "{} of {n} upstream connections closed",
                self.closed.load(Ordering::SeqCst)
            );
            std::thread::sleep(Duration::from_millis(10));
        }
        start.elapsed()
    }
}

/// The cluster's typed `HttpProtocolOptions`: `common` (YAML lines indented by 10) and
/// HTTP/1.1 or HTTP/2.
fn protocol_options(common: &str, h2: bool) -> String {
    let protocol = if h2 {
        "http2_protocol_options: {}"
    } else {
        "http_protocol_options: {}"
    };
    format!(
        "    typed_extension_protocol_options:\n      envoy.extensions.upstreams.http.v3.HttpProtocolOptions:\n        \"@type\": type.googleapis.com/envoy.extensions.upstreams.http.v3.HttpProtocolOptions\n        common_http_protocol_options:\n{common}        explicit_http_config:\n          {protocol}\n"
    )
}

/// Starts Courier and, if it is on PATH, Envoy, each with an upstream of its own.
fn proxies(cluster_extra: &str) -> Vec<(&'static str, Courier, CountingUpstream)> {
    let mut out = Vec::new();
    for name in ["courier", "envoy"] {
        let up = CountingUpstream::start();
        let config = bootstrap(&all_to("c"), "", &cluster("c", &[up.addr], cluster_extra));
        let proxy = if name == "courier" {
            Some(Courier::start(&config))
        } else {
            Courier::start_envoy(&config)
        };
        if let Some(p) = proxy {
            out.push((name, p, up));
        }
    }
    out
}

/// Sends `n` requests one after the other on one downstream connection: GETs, or POSTs
/// with a chunked (streamed) body.
fn sequential(proxy: &Courier, n: usize, chunked: bool) {
    let mut client = Client::connect(proxy.listener);
    for i in 0..n {
        let resp = if chunked {
            client.send_raw(
                b"POST /up HTTP/1.1\r\nhost: x\r\ntransfer-encoding: chunked\r\n\r\n4\r\nbody\r\n0\r\n\r\n",
            );
            client.read().expect("a response")
        } else {
            client.get("x", "/", &[])
        };
        assert_eq!(resp.status, 200, "request {i}: {}", resp.body_str());
    }
}

#[test]
fn max_requests_per_connection_matches_envoy() {
    let cases = [
        // (cluster options, HTTP/2, streamed bodies, requests, connections, at the limit)
        (
            protocol_options("          max_requests_per_connection: 2\n", false),
            false,
            5,
            3,
            2,
        ),
        (
            protocol_options("          max_requests_per_connection: 2\n", false),
            true,
            5,
            3,
            2,
        ),
        (
            protocol_options("          max_requests_per_connection: 2\n", true),
            false,
            5,
            3,
            2,
        ),
        // The legacy field on the cluster.
        (
            "    max_requests_per_connection: 1\n".to_string(),
            false,
            3,
            3,
            3,
        ),
        // Zero is no limit.
        (
            protocol_options("          max_requests_per_connection: 0\n", false),
            false,
            4,
            1,
            0,
        ),
    ];
    for (extra, chunked, requests, connections, maxed) in cases {
        for (name, proxy, up) in proxies(&extra) {
            sequential(&proxy, requests, chunked);
            let what = format!("{name}, {requests} requests (streamed bodies: {chunked}), {extra}");
            assert_eq!(up.opened(), connections, "connections: {what}");
            assert_eq!(
                proxy.wait_stat("cluster.c.upstream_cx_max_requests", maxed),
                maxed,
                "upstream_cx_max_requests: {what}"
            );
            // The connections at their limit are closed once their response is done.
            up.wait_closed(maxed as usize);
        }
    }
}

#[test]
fn idle_upstream_connections_close_after_idle_timeout_as_in_envoy() {
    for h2 in [false, true] {
        let extra = protocol_options("          idle_timeout: 0.5s\n", h2);
        for (name, proxy, up) in proxies(&extra) {
            let what = format!("{name}, HTTP/2 upstream: {h2}");
            let mut client = Client::connect(proxy.listener);
            assert_eq!(client.get("x", "/", &[]).status, 200, "{what}");
            let idle_for = up.wait_closed(1);
            assert!(
                idle_for >= Duration::from_millis(400),
                "{what}: closed after {idle_for:?}, before its idle timeout"
            );
            assert_eq!(
                proxy.wait_stat("cluster.c.upstream_cx_idle_timeout", 1),
                1,
                "{what}"
            );
            // The next request opens another.
            assert_eq!(client.get("x", "/", &[]).status, 200, "{what}");
            assert_eq!(up.opened(), 2, "{what}");
        }
    }
}

#[test]
fn max_connection_duration_retires_connections_as_in_envoy() {
    for h2 in [false, true] {
        let extra = protocol_options("          max_connection_duration: 0.3s\n", h2);
        for (name, proxy, up) in proxies(&extra) {
            let what = format!("{name}, HTTP/2 upstream: {h2}");
            let mut client = Client::connect(proxy.listener);
            // A request still in flight when the duration passes is answered; the
            // connection closes after it.
            assert_eq!(client.get("x", "/slow", &[]).status, 200, "{what}");
            up.wait_closed(1);
            assert_eq!(
                proxy.wait_stat("cluster.c.upstream_cx_max_duration_reached", 1),
                1,
                "{what}"
            );
            // An idle one closes when its duration passes.
            assert_eq!(client.get("x", "/", &[]).status, 200, "{what}");
            assert_eq!(up.opened(), 2, "{what}");
            up.wait_closed(2);
            assert_eq!(
                proxy.wait_stat("cluster.c.upstream_cx_max_duration_reached", 2),
                2,
                "{what}"
            );
        }
    }
}

/// The listener's `downstream_cx_active` once it is `want`, or whatever it is at the
/// deadline.
fn wait_active(p: &Courier, want: u64, within: Duration) -> u64 {
    let name = format!(
        "listener.127.0.0.1_{}.downstream_cx_active",
        p.listener.port()
    );
    let deadline = Instant::now() + within;
    loop {
        let v = p.stat(&name);
        if v == want || Instant::now() > deadline {
            return v;
        }
        std::thread::sleep(Duration::from_millis(5));
    }
}

/// `delayed_close_timeout`: after a response that closes its connection, Courier
/// half-closes at once and reads what the client still sends until the client closes or
/// the delay ends; with `0s` the connection ends as soon as its response is out (well
/// before the default second). Not compared with Envoy, whose FIN waits for the delay: a
/// client reading to the end of the connection would wait for it (a documented
/// difference).
#[test]
fn delayed_close_timeout_bounds_the_linger() {
    use std::io::{Read, Write};
    for (delay, lingers) in [("0s", false), ("30s", true)] {
        let a = Upstream::start("a");
        let hcm = format!("          delayed_close_timeout: {delay}\n");
        let p = Courier::start(&bootstrap(&all_to("a"), &hcm, &cluster("a", &[a.addr], "")));
        let mut s = std::net::TcpStream::connect(p.listener).expect("connect");
        s.write_all(b"GET / HTTP/1.1\r\nhost: h\r\nconnection: close\r\n\r\n")
            .expect("send");
        let mut response = Vec::new();
        s.read_to_end(&mut response)
            .expect("read to the proxy's FIN");
        assert!(response.starts_with(b"HTTP/1.1 200"), "{delay}");
        let ended = Instant::now();
        if lingers {
            // Still reading: what the client sends now is taken, not answered with a reset.
            assert_eq!(wait_active(&p, 1, Duration::ZERO), 1, "{delay}: lingers");
            s.write_all(b"late bytes").expect("the proxy still reads");
            assert_eq!(wait_active(&p, 1, Duration::ZERO), 1, "{delay}: lingers");
            drop(s);
            assert_eq!(
                wait_active(&p, 0, Duration::from_secs(10)),
                0,
                "{delay}: client closed"
            );
        } else {
            assert_eq!(
                wait_active(&p, 0, Duration::from_secs(10)),
                0,
                "{delay}: closed"
            );
            assert!(
                ended.elapsed() < Duration::from_millis(700),
                "{delay}: the connection ended {:?} after its response, as with the default delay",
                ended.elapsed()
            );
        }
    }
}
