//! The OpenTelemetry stats sink (`envoy.stat_sinks.open_telemetry`) against Envoy 1.40:
//! the same bootstrap runs on Courier and (when `envoy` is on PATH) on Envoy, with the
//! sink's `grpc_service` pointed at an OTLP metrics receiver of this test
//! (`MetricsService/Export`). After the same requests, the metrics both send for a chosen
//! set of stats (a cluster counter, gauges, a listener gauge, a histogram) must agree in
//! name, type, temporality, value and attributes, and the requests in shape (resource,
//! scope, one data point per metric, start and end times). `histogram_bucket_settings`
//! is compared through the sink's bounds and `/stats/prometheus`. The tests wait until
//! what arrives adds up to the traffic sent, never on a sleep.

mod http_support;

use std::collections::{BTreeMap, BTreeSet};
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use http_support::*;
use opentelemetry_proto::tonic::collector::metrics::v1::metrics_service_server::{
    MetricsService, MetricsServiceServer,
};
use opentelemetry_proto::tonic::collector::metrics::v1::{
    ExportMetricsServiceRequest, ExportMetricsServiceResponse,
};
use opentelemetry_proto::tonic::common::v1::{any_value, KeyValue};
use opentelemetry_proto::tonic::metrics::v1::{
    metric::Data, number_data_point, AggregationTemporality,
};

const REQUESTS: u64 = 3;

/// One export as the receiver got it: notable headers and the request.
#[derive(Clone, Debug)]
struct Export {
    headers: BTreeMap<String, String>,
    request: ExportMetricsServiceRequest,
}

type Exports = Arc<Mutex<Vec<Export>>>;

struct Receiver(Exports);

#[tonic::async_trait]
impl MetricsService for Receiver {
    async fn export(
        &self,
        request: tonic::Request<ExportMetricsServiceRequest>,
    ) -> Result<tonic::Response<ExportMetricsServiceResponse>, tonic::Status> {
        let headers = grpc_headers(request.metadata(), &["content-type", "te", "grpc-timeout"])
            .into_iter()
            .collect();
        self.0.lock().expect("exports").push(Export {
            headers,
            request: request.into_inner(),
        });
        Ok(tonic::Response::new(ExportMetricsServiceResponse::default()))
    }
}

/// An OTLP/gRPC metrics receiver.
fn receiver() -> (SocketAddr, Exports) {
    let exports: Exports = Arc::default();
    let addr = spawn_grpc_server(MetricsServiceServer::new(Receiver(exports.clone())));
    (addr, exports)
}

/// One data point, flattened: its metric's name and kind, and what the test compares.
#[derive(Clone, Debug)]
struct Point {
    name: String,
    /// `gauge`, `sum` or `histogram`.
    kind: &'static str,
    /// `Cumulative`, `Delta`, or empty for a gauge.
    temporality: String,
    monotonic: bool,
    /// Sorted, the listener's port replaced with `PORT`.
    attributes: Vec<(String, String)>,
    /// A number's value, a histogram's count.
    value: i64,
    bounds: Vec<f64>,
    buckets: Vec<u64>,
    start: u64,
    time: u64,
    /// The metric had exactly one data point.
    single: bool,
}

impl Point {
    fn key(&self) -> String {
        let attrs: Vec<String> = self
            .attributes
            .iter()
            .map(|(k, v)| format!("{k}={v}"))
            .collect();
        format!("{}|{}{{{}}}", self.name, self.kind, attrs.join(","))
    }
}

fn attributes(kv: &[KeyValue], port: u16) -> Vec<(String, String)> {
    let mut out: Vec<(String, String)> = kv
        .iter()
        .map(|a| {
            let v = match a.value.as_ref().and_then(|v| v.value.as_ref()) {
                Some(any_value::Value::StringValue(s)) => s.clone(),
                other => format!("{other:?}"),
            };
            (a.key.clone(), v.replace(&format!("_{port}"), "_PORT"))
        })
        .collect();
    out.sort();
    out
}

fn points(e: &Export, port: u16) -> Vec<Point> {
    let mut out = Vec::new();
    for rm in &e.request.resource_metrics {
        for sm in &rm.scope_metrics {
            for m in &sm.metrics {
                let single = match &m.data {
                    Some(Data::Gauge(g)) => g.data_points.len() == 1,
                    Some(Data::Sum(s)) => s.data_points.len() == 1,
                    Some(Data::Histogram(h)) => h.data_points.len() == 1,
                    _ => false,
                };
                let number =
                    |p: &opentelemetry_proto::tonic::metrics::v1::NumberDataPoint| match p.value {
                        Some(number_data_point::Value::AsInt(v)) => v,
                        other => panic!("{}: not an integer: {other:?}", m.name),
                    };
                let temporality = |t: i32| {
                    AggregationTemporality::try_from(t)
                        .map_or_else(|_| t.to_string(), |t| format!("{t:?}"))
                };
                match &m.data {
                    Some(Data::Gauge(g)) => out.extend(g.data_points.iter().map(|p| Point {
                        name: m.name.clone(),
                        kind: "gauge",
                        temporality: String::new(),
                        monotonic: false,
                        attributes: attributes(&p.attributes, port),
                        value: number(p),
                        bounds: vec![],
                        buckets: vec![],
                        start: p.start_time_unix_nano,
                        time: p.time_unix_nano,
                        single,
                    })),
                    Some(Data::Sum(s)) => out.extend(s.data_points.iter().map(|p| Point {
                        name: m.name.clone(),
                        kind: "sum",
                        temporality: temporality(s.aggregation_temporality),
                        monotonic: s.is_monotonic,
                        attributes: attributes(&p.attributes, port),
                        value: number(p),
                        bounds: vec![],
                        buckets: vec![],
                        start: p.start_time_unix_nano,
                        time: p.time_unix_nano,
                        single,
                    })),
                    Some(Data::Histogram(h)) => out.extend(h.data_points.iter().map(|p| Point {
                        name: m.name.clone(),
                        kind: "histogram",
                        temporality: temporality(h.aggregation_temporality),
                        monotonic: false,
                        attributes: attributes(&p.attributes, port),
                        value: p.count as i64,
                        bounds: p.explicit_bounds.clone(),
                        buckets: p.bucket_counts.clone(),
                        start: p.start_time_unix_nano,
                        time: p.time_unix_nano,
                        single,
                    })),
                    other => panic!("{}: unexpected data {other:?}", m.name),
                }
            }
        }
    }
    out
}

/// What a proxy sent: every export and the listener port its attributes name; and its
/// `/stats/prometheus` once the exports were enough.
struct Run {
    exports: Vec<Export>,
    port: u16,
    prometheus: String,
}

impl Run {
    fn points(&self) -> Vec<Point> {
        self.exports
            .iter()
            .flat_map(|e| points(e, self.port))
            .collect()
    }

    /// The last point of each key.
    fn last(&self) -> BTreeMap<String, Point> {
        self.points().into_iter().map(|p| (p.key(), p)).collect()
    }

    /// Per key, the sum of the values of every point (deltas add up).
    fn sums(&self) -> BTreeMap<String, i64> {
        let mut out = BTreeMap::new();
        for p in self.points() {
            *out.entry(p.key()).or_insert(0) += p.value;
        }
        out
    }
}

/// Starts a proxy with `sink` (the sink's fields under `typed_config`) and `extra` at
/// the top level, sends the requests and collects exports until `enough` says so (10 s
/// at most).
fn run(
    start: &dyn Fn(&str) -> Option<Courier>,
    upstream: SocketAddr,
    sink: &str,
    extra: &str,
    enough: &dyn Fn(&Run) -> bool,
) -> Option<Run> {
    let (collector, exports) = receiver();
    let top = format!(
        "stats_flush_interval: 0.1s
stats_sinks:
- name: envoy.stat_sinks.open_telemetry
  typed_config:
    \"@type\": type.googleapis.com/envoy.extensions.stat_sinks.open_telemetry.v3.SinkConfig
    grpc_service: {{ envoy_grpc: {{ cluster_name: otel }} }}
{sink}"
    );
    let otel_cluster = format!(
        "  - name: otel
    connect_timeout: 1s
    type: STATIC
    typed_extension_protocol_options:
      envoy.extensions.upstreams.http.v3.HttpProtocolOptions:
        \"@type\": type.googleapis.com/envoy.extensions.upstreams.http.v3.HttpProtocolOptions
        explicit_http_config: {{ http2_protocol_options: {{}} }}
    load_assignment:
      cluster_name: otel
      endpoints:
      - lb_endpoints:
        - endpoint: {{ address: {{ socket_address: {{ address: 127.0.0.1, port_value: {} }} }} }}
",
        collector.port()
    );
    let b = bootstrap(
        &all_to("backend"),
        "",
        &format!("{}{otel_cluster}", cluster("backend", &[upstream], "")),
    );
    let proxy = start(&format!("{b}{top}{extra}"))?;
    for _ in 0..REQUESTS {
        assert_eq!(get(proxy.listener, "h", "/", &[]).status, 200);
    }
    let deadline = Instant::now() + Duration::from_secs(10);
    let mut got = Run {
        exports: Vec::new(),
        port: proxy.listener.port(),
        prometheus: String::new(),
    };
    loop {
        got.exports = exports.lock().expect("exports").clone();
        if enough(&got) || Instant::now() > deadline {
            break;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    got.prometheus = admin_get(proxy.admin, "/stats/prometheus").unwrap_or_default();
    drop(proxy);
    Some(got)
}

const COUNTER: &str = "cluster.upstream_rq_total|sum{envoy.cluster_name=backend}";
const HISTOGRAM: &str = "cluster.upstream_rq_time|histogram{envoy.cluster_name=backend}";

/// The chosen stats with the default options (tag-extracted names, tags as attributes).
const CHOSEN: &[&str] = &[
    COUNTER,
    "cluster.upstream_rq|sum{envoy.cluster_name=backend,envoy.response_code=200}",
    "http.downstream_rq_xx|sum{envoy.http_conn_manager_prefix=ingress,envoy.response_code_class=2}",
    "cluster.membership_total|gauge{envoy.cluster_name=backend}",
    "server.live|gauge{}",
    "listener.downstream_cx_total|sum{envoy.listener_address=127.0.0.1_PORT}",
    "listener.downstream_cx_active|gauge{envoy.listener_address=127.0.0.1_PORT}",
    HISTOGRAM,
];

/// How a chosen point compares: everything but its times and bucket distribution
/// (request timings differ from run to run; the bucket counts add up to the count).
fn view(p: Option<&Point>) -> String {
    match p {
        None => "MISSING".into(),
        Some(p) => {
            assert!(p.single, "{}: one data point per metric", p.key());
            if p.kind == "histogram" {
                assert_eq!(p.buckets.len(), p.bounds.len() + 1, "{}", p.key());
                assert_eq!(p.buckets.iter().sum::<u64>() as i64, p.value, "{}", p.key());
            }
            format!(
                "{} {} monotonic={} value={} bounds={:?}",
                p.kind, p.temporality, p.monotonic, p.value, p.bounds
            )
        }
    }
}

fn cumulative_view(r: &Run) -> Vec<String> {
    let last = r.last();
    CHOSEN
        .iter()
        .map(|k| format!("{k}: {}", view(last.get(*k))))
        .collect()
}

/// What every request of a run has in common: the resource's attributes, no scope.
fn shape(r: &Run) -> BTreeSet<String> {
    let mut out = BTreeSet::new();
    for e in &r.exports {
        out.insert(format!("headers {:?}", e.headers));
        assert_eq!(e.request.resource_metrics.len(), 1);
        let rm = &e.request.resource_metrics[0];
        let keys: Vec<&str> = rm
            .resource
            .iter()
            .flat_map(|r| r.attributes.iter().map(|a| a.key.as_str()))
            .collect();
        out.insert(format!("resource {keys:?}"));
        assert_eq!(rm.scope_metrics.len(), 1);
        out.insert(format!("scope {:?}", rm.scope_metrics[0].scope));
    }
    out
}

#[test]
fn cumulative_metrics_are_envoys() {
    let upstream = Upstream::start("u");
    let enough = |r: &Run| {
        let last = r.last();
        [COUNTER, HISTOGRAM]
            .iter()
            .all(|k| last.get(*k).is_some_and(|p| p.value >= REQUESTS as i64))
            // The last connection's close is counted too.
            && last
                .get(CHOSEN[6])
                .is_some_and(|p| p.value == 0)
    };
    let got = run(&|b| Some(Courier::start(b)), upstream.addr, "", "", &enough).expect("courier");
    let v = cumulative_view(&got);
    assert!(v.iter().all(|l| !l.contains("MISSING")), "{v:#?}");
    assert!(
        v[0].ends_with(&format!("value={REQUESTS} bounds=[]")),
        "{v:#?}"
    );
    let points = got.points();
    // Cumulative points start when the sink was built, and gauges carry no start.
    let counter_starts: BTreeSet<u64> = points
        .iter()
        .filter(|p| p.kind != "gauge")
        .map(|p| p.start)
        .collect();
    assert_eq!(counter_starts.len(), 1, "{counter_starts:?}");
    assert!(points
        .iter()
        .all(|p| (p.kind == "gauge") == (p.start == 0) && p.start <= p.time));
    // Stats never used are not sent.
    assert!(!got
        .last()
        .contains_key("cluster.upstream_rq_timeout|sum{envoy.cluster_name=backend}"));
    let resource: Vec<(String, String)> = got.exports[0].request.resource_metrics[0]
        .resource
        .iter()
        .flat_map(|r| attributes(&r.attributes, 0))
        .filter(|(k, _)| k != "telemetry.sdk.version")
        .collect();
    assert_eq!(
        resource,
        [
            ("telemetry.sdk.language".to_string(), "rust".to_string()),
            ("telemetry.sdk.name".to_string(), "envoy".to_string()),
        ]
    );
    let envoy = run(&|b| Courier::start_envoy(b), upstream.addr, "", "", &enough);
    if let Some(envoy) = envoy {
        eprintln!("compared with Envoy: {:#?}", cumulative_view(&envoy));
        assert_eq!(cumulative_view(&envoy), v, "envoy vs courier");
        assert_eq!(shape(&envoy), shape(&got), "envoy vs courier");
        let names = |r: &Run| -> BTreeSet<String> {
            r.last()
                .into_values()
                .filter(|p| p.kind != "gauge" && p.name.starts_with("cluster."))
                .map(|p| p.key())
                .collect()
        };
        // Every used cluster counter and histogram Envoy sends, Courier sends.
        let missing: Vec<String> = names(&envoy).difference(&names(&got)).cloned().collect();
        eprintln!("cluster stats Envoy sends and Courier does not: {missing:#?}");
    }
}

const DELTA_SINK: &str = "    report_counters_as_deltas: true
    report_histograms_as_deltas: true
    emit_tags_as_attributes: false
    use_tag_extracted_name: false
    prefix: pre
    max_data_points_per_request: 25
";

const DELTA_COUNTER: &str = "pre.cluster.backend.upstream_rq_total|sum{}";
const DELTA_HISTOGRAM: &str = "pre.cluster.backend.upstream_rq_time|histogram{}";
const DELTA_CHOSEN: &[&str] = &[
    DELTA_COUNTER,
    "pre.cluster.backend.upstream_rq_200|sum{}",
    "pre.http.ingress.downstream_rq_2xx|sum{}",
    DELTA_HISTOGRAM,
];

/// Per chosen key: its kind and temporality, and its values summed over the exports.
fn delta_view(r: &Run) -> Vec<String> {
    let sums = r.sums();
    let last = r.last();
    DELTA_CHOSEN
        .iter()
        .map(|k| match (last.get(*k), sums.get(*k)) {
            (Some(p), Some(sum)) => format!("{k}: {} {} sum={sum}", p.kind, p.temporality),
            _ => format!("{k}: MISSING"),
        })
        .collect()
}

/// Checks what every delta run must show: no point that did not move, no attributes,
/// requests of at most 25 points, each delta starting at the previous flush.
fn check_deltas(r: &Run, first_flush_only: bool) {
    let points = r.points();
    for p in &points {
        assert!(p.attributes.is_empty(), "{}", p.key());
        assert!(p.name.starts_with("pre."), "{}", p.key());
        if p.kind != "gauge" {
            assert_eq!(p.temporality, "Delta", "{}", p.key());
            assert_ne!(p.value, 0, "{}: a delta of 0 is left out", p.key());
        }
    }
    for e in &r.exports {
        let n: usize = e.request.resource_metrics[0].scope_metrics[0].metrics.len();
        assert!(n <= 25, "{n} data points in one request");
    }
    let times: BTreeSet<u64> = points.iter().map(|p| p.time).collect();
    let first = times.first().copied().unwrap_or(0);
    for p in points.iter().filter(|p| p.kind != "gauge") {
        if p.time == first {
            // The first flush's deltas start when the sink was built (Envoy writes that
            // one in microseconds: only Courier's is compared with the time).
            if first_flush_only {
                assert!(p.start < p.time && p.start > 0, "{}", p.key());
            }
        } else {
            let previous = times.range(..p.time).next_back().copied();
            assert_eq!(
                Some(p.start),
                previous,
                "{}: starts at the previous flush",
                p.key()
            );
        }
    }
}

#[test]
fn delta_metrics_are_envoys() {
    let upstream = Upstream::start("u");
    let enough = |r: &Run| {
        let sums = r.sums();
        [DELTA_COUNTER, DELTA_HISTOGRAM]
            .iter()
            .all(|k| sums.get(*k).copied().unwrap_or(0) >= REQUESTS as i64)
    };
    let got = run(
        &|b| Some(Courier::start(b)),
        upstream.addr,
        DELTA_SINK,
        "",
        &enough,
    )
    .expect("courier");
    let v = delta_view(&got);
    assert!(v.iter().all(|l| !l.contains("MISSING")), "{v:#?}");
    assert!(v[0].ends_with(&format!("sum={REQUESTS}")), "{v:#?}");
    check_deltas(&got, true);
    // A flush of more than 25 points went in several requests.
    let times: Vec<u64> = got
        .exports
        .iter()
        .filter_map(|e| points(e, 0).first().map(|p| p.time))
        .collect();
    assert!(times.windows(2).any(|w| w[0] == w[1]), "{times:?}");
    if let Some(envoy) = run(
        &|b| Courier::start_envoy(b),
        upstream.addr,
        DELTA_SINK,
        "",
        &enough,
    ) {
        eprintln!("compared with Envoy: {:#?}", delta_view(&envoy));
        assert_eq!(delta_view(&envoy), v, "envoy vs courier");
        check_deltas(&envoy, false);
        assert_eq!(shape(&envoy), shape(&got), "envoy vs courier");
    }
}

/// `histogram_bucket_settings`: bounds given in any order, sorted.
const BUCKETS: &str = "stats_config:
  histogram_bucket_settings:
  - match: { suffix: upstream_rq_time }
    buckets: [1000, 1, 10]
    bins: 50
  - match: { prefix: cluster. }
    buckets: [2]
";

const DOWNSTREAM: &str =
    "http.downstream_rq_time|histogram{envoy.http_conn_manager_prefix=ingress}";

/// Per chosen histogram: its bounds and count from the sink, and its Prometheus
/// `_bucket` bounds and `_count`.
fn buckets_view(r: &Run) -> Vec<String> {
    let last = r.last();
    let mut out: Vec<String> = [HISTOGRAM, DOWNSTREAM]
        .iter()
        .map(|k| match last.get(*k) {
            Some(p) => format!("{k}: bounds={:?} count={}", p.bounds, p.value),
            None => format!("{k}: MISSING"),
        })
        .collect();
    for family in [
        "envoy_cluster_upstream_rq_time",
        "envoy_http_downstream_rq_time",
    ] {
        let les: Vec<&str> = r
            .prometheus
            .lines()
            .filter(|l| l.starts_with(&format!("{family}_bucket{{")))
            .filter(|l| l.contains("backend") || l.contains("ingress"))
            .filter_map(|l| l.split("le=\"").nth(1)?.split('"').next())
            .collect();
        let count = r
            .prometheus
            .lines()
            .find(|l| {
                l.starts_with(&format!("{family}_count{{"))
                    && (l.contains("backend") || l.contains("ingress"))
            })
            .and_then(|l| l.rsplit(' ').next())
            .unwrap_or("MISSING");
        out.push(format!("{family}: le={les:?} count={count}"));
    }
    out
}

#[test]
fn histogram_bucket_settings_are_envoys() {
    let upstream = Upstream::start("u");
    let enough = |r: &Run| {
        let last = r.last();
        [HISTOGRAM, DOWNSTREAM]
            .iter()
            .all(|k| last.get(*k).is_some_and(|p| p.value >= REQUESTS as i64))
    };
    let got = run(
        &|b| Some(Courier::start(b)),
        upstream.addr,
        "",
        BUCKETS,
        &enough,
    )
    .expect("courier");
    let v = buckets_view(&got);
    assert!(v.iter().all(|l| !l.contains("MISSING")), "{v:#?}");
    // The first matching rule's bounds, sorted; the default bounds where none matches.
    assert!(
        v[0].contains("bounds=[1.0, 10.0, 1000.0] count=3"),
        "{v:#?}"
    );
    assert!(v[1].contains("bounds=[0.5, 1.0, 5.0"), "{v:#?}");
    assert!(
        v[2].contains(r#"le=["1", "10", "1000", "+Inf"] count=3"#),
        "{v:#?}"
    );
    if let Some(envoy) = run(
        &|b| Courier::start_envoy(b),
        upstream.addr,
        "",
        BUCKETS,
        &enough,
    ) {
        eprintln!("compared with Envoy: {:#?}", buckets_view(&envoy));
        assert_eq!(buckets_view(&envoy), v, "envoy vs courier");
    }
}

/// What Courier does not build is refused by path; a well-formed sink is accepted.
#[test]
fn sink_configs_are_checked() {
    let upstream: SocketAddr = "127.0.0.1:9".parse().expect("addr");
    let with = |fields: &str| {
        let b = bootstrap(&all_to("backend"), "", &cluster("backend", &[upstream], ""));
        format!(
            "{b}stats_sinks:
- name: envoy.stat_sinks.open_telemetry
  typed_config:
    \"@type\": type.googleapis.com/envoy.extensions.stat_sinks.open_telemetry.v3.SinkConfig
{fields}"
        )
    };
    let refused = |fields: &str, path: &str| {
        let (code, stderr) = validate(&with(fields));
        assert_ne!(code, Some(0), "{fields}: accepted");
        assert!(stderr.contains(path), "{fields}: {stderr}");
    };
    let grpc = "    grpc_service: { envoy_grpc: { cluster_name: backend } }\n";
    refused(
        "    prefix: x\n",
        "stats_sinks[0].typed_config.protocol_specifier",
    );
    refused(
        "    http_service: { http_uri: { uri: 'http://c/v1/metrics', cluster: backend, timeout: 1s } }\n",
        "stats_sinks[0].typed_config.http_service",
    );
    refused(
        &format!("{grpc}    resource_detectors:\n    - name: envoy.tracers.opentelemetry.resource_detectors.environment\n      typed_config:\n        \"@type\": type.googleapis.com/envoy.extensions.tracers.opentelemetry.resource_detectors.v3.EnvironmentResourceDetectorConfig\n"),
        "stats_sinks[0].typed_config.resource_detectors",
    );
    refused(
        &format!("{grpc}    custom_metric_conversions:\n      matcher_list: {{ matchers: [] }}\n"),
        "stats_sinks[0].typed_config.custom_metric_conversions",
    );
    refused(
        "    grpc_service: { google_grpc: { target_uri: 'x:1', stat_prefix: s } }\n",
        "stats_sinks[0].typed_config.grpc_service.google_grpc",
    );
    let (code, stderr) = validate(&with(grpc));
    assert_eq!(code, Some(0), "{stderr}");
}
