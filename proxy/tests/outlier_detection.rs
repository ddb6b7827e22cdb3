//! Outlier detection, differential with Envoy 1.40: the same bootstrap runs through
//! Courier and (when `envoy` is on PATH) Envoy; an upstream starts answering 503 and must
//! be ejected after the same number of requests, come back after the same ejection time
//! (growing on a second ejection), and leave the same stats and events.

mod http_support;

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU16, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use http_body_util::Full;
use hyper::body::{Bytes, Incoming};
use hyper::Request;
use hyper_util::rt::TokioIo;

use http_support::*;

/// An upstream answering every request with the status the test sets, its name as the
/// body.
struct Target {
    addr: SocketAddr,
    status: Arc<AtomicU16>,
    hits: Arc<AtomicUsize>,
}

impl Target {
    fn start(name: &str) -> Target {
        let status = Arc::new(AtomicU16::new(200));
        let hits = Arc::new(AtomicUsize::new(0));
        let (s, h, n) = (status.clone(), hits.clone(), name.to_string());
        let addr = spawn_tokio_server(move |stream| {
            let (s, h, n) = (s.clone(), h.clone(), n.clone());
            async move {
                let svc = hyper::service::service_fn(move |_req: Request<Incoming>| {
                    let (s, h, n) = (s.clone(), h.clone(), n.clone());
                    async move {
                        h.fetch_add(1, Ordering::SeqCst);
                        hyper::Response::builder()
                            .status(s.load(Ordering::SeqCst))
                            .body(Full::new(Bytes::from(n)))
                    }
                });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(stream), svc)
                    .await;
            }
        });
        Target { addr, status, hits }
    }

    fn answer(&self, status: u16) {
        self.status.store(status, Ordering::SeqCst);
    }
}

/// `host`'s `health_flags` in `/clusters`.
fn flags(proxy: &Courier, host: SocketAddr) -> String {
    let prefix = format!("od::{host}::health_flags::");
    admin_get(proxy.admin, "/clusters")
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix(&prefix).map(str::to_string))
        .unwrap_or_default()
}

fn wait_flags(proxy: &Courier, host: SocketAddr, want: &str) -> Instant {
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let f = flags(proxy, host);
        if f == want {
            return Instant::now();
        }
        assert!(Instant::now() < deadline, "{host} never showed {want}: {f}");
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// Every `outlier_detection.*` stat of cluster `od`.
fn outlier_stats(proxy: &Courier) -> BTreeMap<String, String> {
    admin_get(proxy.admin, "/stats")
        .unwrap_or_default()
        .lines()
        .filter_map(|l| {
            let (k, v) = l.split_once(": ")?;
            k.strip_prefix("cluster.od.outlier_detection.")
                .map(|k| (k.to_string(), v.to_string()))
        })
        .collect()
}

/// Outlier events without what differs between runs (times, ports).
fn events(path: &std::path::Path) -> Vec<String> {
    std::fs::read_to_string(path)
        .unwrap_or_default()
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .map(|mut v| {
            if let Some(o) = v.as_object_mut() {
                o.remove("timestamp");
                o.remove("upstream_url");
                o.remove("secs_since_last_action");
            }
            v.to_string()
        })
        .collect()
}

struct Run {
    /// Requests the failing host saw before its first ejection.
    hits_before_ejection: usize,
    /// How long the first and the second ejection lasted.
    ejections: [Duration; 2],
    stats: BTreeMap<String, String>,
    events: Vec<String>,
}

fn consecutive_5xx(start: impl Fn(&str) -> Option<Courier>) -> Option<Run> {
    let targets: Vec<Target> = ["a", "b", "c"].iter().map(|n| Target::start(n)).collect();
    let dir = tempfile::tempdir().expect("tempdir");
    let log = dir.path().join("outlier.log");
    let od = "    outlier_detection: { consecutive_5xx: 3, interval: 0.2s, base_ejection_time: 1s, max_ejection_percent: 100 }\n";
    let addrs: Vec<SocketAddr> = targets.iter().map(|t| t.addr).collect();
    let b = bootstrap(&all_to("od"), "", &cluster("od", &addrs, od)).replacen(
        "static_resources:",
        &format!(
            "cluster_manager:\n  outlier_detection: {{ event_log_path: {} }}\nstatic_resources:",
            log.display()
        ),
        1,
    );
    let proxy = start(&b)?;
    let bad = &targets[1];
    bad.answer(503);
    // Round robin: every third request reaches the failing host until it is ejected.
    for _ in 0..30 {
        get(proxy.listener, "x", "/", &[]);
        if flags(&proxy, bad.addr) == "/failed_outlier_check" {
            break;
        }
    }
    let ejected = wait_flags(&proxy, bad.addr, "/failed_outlier_check");
    let hits_before_ejection = bad.hits.load(Ordering::SeqCst);
    // The ejected host's idle pooled connection is closed, as Envoy drains a host's pools
    // on a health failure.
    let prefix = format!("od::{}::cx_active::", bad.addr);
    let deadline = Instant::now() + Duration::from_secs(5);
    while admin_get(proxy.admin, "/clusters")
        .unwrap_or_default()
        .lines()
        .any(|l| l.strip_prefix(&prefix).is_some_and(|v| v != "0"))
    {
        assert!(
            Instant::now() < deadline,
            "the ejected host's connections stayed open"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    bad.answer(200);
    let back = wait_flags(&proxy, bad.addr, "healthy");
    let first = back - ejected;
    // Ejected again: the ejection time doubles.
    bad.answer(503);
    for _ in 0..30 {
        get(proxy.listener, "x", "/", &[]);
        if flags(&proxy, bad.addr) == "/failed_outlier_check" {
            break;
        }
    }
    let ejected = wait_flags(&proxy, bad.addr, "/failed_outlier_check");
    bad.answer(200);
    let back = wait_flags(&proxy, bad.addr, "healthy");
    let second = back - ejected;
    // Two ejections and two unejections; Envoy flushes its event log about once a second.
    let deadline = Instant::now() + Duration::from_secs(10);
    while events(&log).len() < 4 && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(50));
    }
    let run = Run {
        hits_before_ejection,
        ejections: [first, second],
        stats: outlier_stats(&proxy),
        events: events(&log),
    };
    drop(proxy);
    Some(run)
}

#[test]
fn consecutive_5xx_ejects_and_brings_back_as_envoy() {
    let courier = consecutive_5xx(|b| Some(Courier::start(b))).expect("courier ran");
    assert_eq!(courier.hits_before_ejection, 3, "ejected on the third 503");
    // Back after base_ejection_time, checked each interval; twice that the second time.
    let [first, second] = courier.ejections;
    assert!(
        first >= Duration::from_millis(900) && first < Duration::from_millis(1800),
        "{first:?}"
    );
    assert!(
        second >= Duration::from_millis(1900) && second < Duration::from_millis(2800),
        "{second:?}"
    );
    assert_eq!(
        courier
            .stats
            .get("ejections_enforced_consecutive_5xx")
            .map(String::as_str),
        Some("2")
    );
    assert_eq!(courier.events.len(), 4, "{:?}", courier.events);
    if let Some(envoy) = consecutive_5xx(Courier::start_envoy) {
        assert_eq!(courier.hits_before_ejection, envoy.hits_before_ejection);
        assert_eq!(courier.stats, envoy.stats);
        assert_eq!(courier.events, envoy.events);
        for (c, e) in courier.ejections.iter().zip(envoy.ejections) {
            let diff = c.as_millis().abs_diff(e.as_millis());
            assert!(diff < 500, "ejection times differ: {c:?} vs {e:?}");
        }
    }
}

/// Two hosts of three fail, `max_ejection_percent` allows one ejection: the other is
/// counted as an overflow and keeps its traffic.
fn overflow(start: impl Fn(&str) -> Option<Courier>) -> Option<BTreeMap<String, String>> {
    let targets: Vec<Target> = ["a", "b", "c"].iter().map(|n| Target::start(n)).collect();
    let od = "    outlier_detection: { consecutive_5xx: 2, interval: 10s, base_ejection_time: 30s, max_ejection_percent: 50 }\n";
    let addrs: Vec<SocketAddr> = targets.iter().map(|t| t.addr).collect();
    let proxy = start(&bootstrap(&all_to("od"), "", &cluster("od", &addrs, od)))?;
    targets[1].answer(503);
    targets[2].answer(503);
    let deadline = Instant::now() + Duration::from_secs(10);
    while outlier_stats(&proxy)
        .get("ejections_overflow")
        .is_none_or(|v| v == "0")
    {
        get(proxy.listener, "x", "/", &[]);
        assert!(Instant::now() < deadline, "no overflow counted");
    }
    let stats = outlier_stats(&proxy);
    drop(proxy);
    Some(stats)
}

#[test]
fn max_ejection_percent_counts_overflows_as_envoy() {
    let courier = overflow(|b| Some(Courier::start(b))).expect("courier ran");
    assert_eq!(
        courier.get("ejections_active").map(String::as_str),
        Some("1")
    );
    if let Some(envoy) = overflow(Courier::start_envoy) {
        assert_eq!(courier, envoy);
    }
}
