//! Stats sinks (`stats_sinks`, `stats_flush_interval`) against Envoy 1.40: the same
//! bootstrap runs on Courier and (when `envoy` is on PATH) on Envoy, with StatsD and
//! DogStatsD sinks pointed at UDP sockets of this test and a Metrics Service sink at a
//! gRPC server of this test. After the same requests, both proxies must send the same
//! names, types and values for a chosen set of stats. Counter deltas are summed over
//! flushes until they reach the traffic sent (a flush may split it), so the tests wait
//! on what arrives, never on a sleep.

mod http_support;

use std::collections::{BTreeMap, HashSet};
use std::net::{SocketAddr, UdpSocket};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use courier_proto::envoy::service::metrics::v3::metrics_service_server::{
    MetricsService, MetricsServiceServer,
};
use courier_proto::envoy::service::metrics::v3::{StreamMetricsMessage, StreamMetricsResponse};
use http_support::*;

const REQUESTS: u64 = 3;

fn bootstrap_with(upstream: SocketAddr, top: &str, clusters_extra: &str) -> String {
    let b = bootstrap(
        &all_to("backend"),
        "",
        &format!("{}{clusters_extra}", cluster("backend", &[upstream], "")),
    );
    format!("{b}stats_flush_interval: 0.05s\n{top}")
}

/// A UDP socket collecting StatsD lines.
struct StatsdListener {
    socket: UdpSocket,
}

impl StatsdListener {
    fn new() -> StatsdListener {
        let socket = UdpSocket::bind("127.0.0.1:0").expect("bind udp");
        socket
            .set_read_timeout(Some(Duration::from_millis(200)))
            .expect("timeout");
        StatsdListener { socket }
    }

    fn port(&self) -> u16 {
        self.socket.local_addr().expect("addr").port()
    }

    /// Reads datagrams until `done` says what was read is enough (10 s at most); every
    /// datagram read, as received.
    fn read_until(&self, done: impl Fn(&[String]) -> bool) -> Vec<String> {
        let deadline = Instant::now() + Duration::from_secs(10);
        let mut datagrams = Vec::new();
        let mut buf = vec![0u8; 65536];
        while Instant::now() < deadline {
            if let Ok(n) = self.socket.recv(&mut buf) {
                datagrams.push(String::from_utf8_lossy(&buf[..n]).into_owned());
                if done(&datagrams) {
                    break;
                }
            }
        }
        datagrams
    }
}

/// Per `name|type[|#tags]`: the sum of the values (counters) or the last value (gauges).
fn fold(datagrams: &[String]) -> BTreeMap<String, i64> {
    let mut out = BTreeMap::new();
    for line in datagrams.iter().flat_map(|d| d.lines()) {
        let Some((name, rest)) = line.split_once(':') else {
            continue;
        };
        let mut parts = rest.splitn(3, '|');
        let value: i64 = parts.next().and_then(|v| v.parse().ok()).unwrap_or(0);
        let kind = parts.next().unwrap_or("");
        let tags = parts.next().map(|t| format!("|{t}")).unwrap_or_default();
        let key = format!("{name}|{kind}{tags}");
        if kind == "c" {
            *out.entry(key).or_insert(0) += value;
        } else {
            out.insert(key, value);
        }
    }
    out
}

fn traffic(proxy: &Courier) {
    for _ in 0..REQUESTS {
        assert_eq!(get(proxy.listener, "h", "/", &[]).status, 200);
    }
}

/// Keys of `fold` that both proxies must send alike, with their values.
fn chosen(got: &BTreeMap<String, i64>, keys: &[&str]) -> Vec<String> {
    keys.iter()
        .map(|k| {
            format!(
                "{k} = {}",
                got.get(*k).map_or("MISSING".into(), i64::to_string)
            )
        })
        .collect()
}

const STATSD: &[&str] = &[
    "envoy.cluster.backend.upstream_rq_total|c",
    "envoy.cluster.backend.upstream_rq_2xx|c",
    "envoy.http.ingress.downstream_rq_2xx|c",
    "envoy.http.ingress.downstream_rq_total|c",
    "envoy.cluster.backend.membership_total|g",
    "envoy.cluster.backend.membership_healthy|g",
    "envoy.server.live|g",
];

const DOGSTATSD: &[&str] = &[
    "dd.cluster.upstream_rq_total|c|#envoy.cluster_name:backend",
    "dd.cluster.upstream_rq|c|#envoy.response_code:200,envoy.cluster_name:backend",
    "dd.http.downstream_rq_xx|c|#envoy.response_code_class:2,envoy.http_conn_manager_prefix:ingress",
    "dd.cluster.membership_total|g|#envoy.cluster_name:backend",
    "dd.server.live|g",
];

/// What the StatsD sink sent (folded), what the DogStatsD one did, and its datagrams.
type Sent = (BTreeMap<String, i64>, BTreeMap<String, i64>, Vec<String>);

/// Sends traffic through a proxy with a StatsD and a DogStatsD sink; what each sent.
fn run_statsd(start: &dyn Fn(&str) -> Option<Courier>, upstream: SocketAddr) -> Option<Sent> {
    let plain = StatsdListener::new();
    let dog = StatsdListener::new();
    let top = format!(
        "stats_sinks:
- name: envoy.stat_sinks.statsd
  typed_config:
    \"@type\": type.googleapis.com/envoy.config.metrics.v3.StatsdSink
    address: {{ socket_address: {{ address: 127.0.0.1, port_value: {} }} }}
- name: envoy.stat_sinks.dog_statsd
  typed_config:
    \"@type\": type.googleapis.com/envoy.config.metrics.v3.DogStatsdSink
    prefix: dd
    max_bytes_per_datagram: 512
    address: {{ socket_address: {{ address: 127.0.0.1, port_value: {} }} }}
",
        plain.port(),
        dog.port()
    );
    let proxy = start(&bootstrap_with(upstream, &top, ""))?;
    traffic(&proxy);
    // Enough once every chosen stat arrived and the first counter's deltas add up to
    // the requests sent.
    let enough = |keys: &'static [&'static str]| {
        move |d: &[String]| {
            let f = fold(d);
            keys.iter().all(|k| f.contains_key(*k))
                && f.get(keys[0]).copied().unwrap_or(0) >= REQUESTS as i64
        }
    };
    let plain_got = plain.read_until(enough(STATSD));
    let dog_got = dog.read_until(enough(DOGSTATSD));
    drop(proxy);
    Some((fold(&plain_got), fold(&dog_got), dog_got))
}

#[test]
fn statsd_and_dogstatsd_send_what_envoy_sends() {
    let upstream = Upstream::start("u");
    let (plain, dog, dog_datagrams) =
        run_statsd(&|b| Some(Courier::start(b)), upstream.addr).expect("courier starts");
    let got = (chosen(&plain, STATSD), chosen(&dog, DOGSTATSD));
    assert!(
        got.0.iter().chain(&got.1).all(|l| !l.ends_with("MISSING")),
        "{got:#?}"
    );
    // Each StatsD counter's deltas add up to the requests sent.
    assert!(got.0[0].ends_with(&format!("= {REQUESTS}")), "{got:#?}");
    // Stats never used are not sent.
    assert!(!plain.contains_key("envoy.cluster.backend.upstream_rq_timeout|c"));
    // DogStatsD packs lines into datagrams of at most 512 bytes.
    assert!(dog_datagrams.iter().all(|d| d.len() <= 512));
    assert!(dog_datagrams.iter().any(|d| d.lines().count() > 1));
    if let Some((eplain, edog, _)) = run_statsd(&|b| Courier::start_envoy(b), upstream.addr) {
        eprintln!("compared with Envoy: {eplain:#?}");
        assert_eq!(
            (chosen(&eplain, STATSD), chosen(&edog, DOGSTATSD)),
            got,
            "envoy vs courier"
        );
        assert!(!eplain.contains_key("envoy.cluster.backend.upstream_rq_timeout|c"));
    }
}

/// A Metrics Service collecting every message of every stream.
struct Collector {
    tx: mpsc::Sender<StreamMetricsMessage>,
}

#[tonic::async_trait]
impl MetricsService for Collector {
    async fn stream_metrics(
        &self,
        request: tonic::Request<tonic::Streaming<StreamMetricsMessage>>,
    ) -> Result<tonic::Response<StreamMetricsResponse>, tonic::Status> {
        let mut stream = request.into_inner();
        while let Ok(Some(m)) = stream.message().await {
            if self.tx.send(m).is_err() {
                break;
            }
        }
        Ok(tonic::Response::new(StreamMetricsResponse {}))
    }
}

fn start_collector() -> (SocketAddr, mpsc::Receiver<StreamMetricsMessage>) {
    let (tx, rx) = mpsc::channel();
    let addr = spawn_grpc_server(MetricsServiceServer::new(Collector { tx }));
    (addr, rx)
}

/// What the Metrics Service received, folded: per `name|TYPE{labels}`, the sum of
/// counter values (deltas) and of histogram sample counts, the last gauge value; and the
/// node id of the first message.
#[derive(Debug, Default)]
struct Received {
    node: Option<String>,
    identifiers: usize,
    values: BTreeMap<String, f64>,
    kinds: HashSet<String>,
}

impl Received {
    fn add(&mut self, m: StreamMetricsMessage) {
        use courier_proto::io::prometheus::client::MetricType;
        if let Some(id) = m.identifier {
            self.identifiers += 1;
            if self.node.is_none() {
                self.node = id.node.map(|n| n.id);
            }
        }
        for f in m.envoy_metrics {
            let name = f.name.unwrap_or_default();
            let kind = MetricType::try_from(f.r#type.unwrap_or(0)).map_or("?", |t| t.as_str_name());
            for metric in f.metric {
                assert!(
                    metric.timestamp_ms.is_some_and(|t| t > 0),
                    "{name}: no timestamp"
                );
                let labels: Vec<String> = metric
                    .label
                    .iter()
                    .map(|l| format!("{}={}", l.name(), l.value()))
                    .collect();
                let key = format!("{name}|{kind}{{{}}}", labels.join(","));
                self.kinds.insert(key.clone());
                let v = self.values.entry(key).or_insert(0.0);
                if let Some(c) = &metric.counter {
                    *v += c.value();
                } else if let Some(g) = &metric.gauge {
                    *v = g.value();
                } else if let Some(h) = &metric.histogram {
                    *v += h.sample_count() as f64;
                } else if let Some(s) = &metric.summary {
                    assert_eq!(s.quantile.len(), 10, "{name}: Envoy's ten quantiles");
                }
            }
        }
    }
}

const METRICS: &[&str] = &[
    "cluster.upstream_rq_total|COUNTER{envoy.cluster_name=backend}",
    "http.downstream_rq_xx|COUNTER{envoy.response_code_class=2,envoy.http_conn_manager_prefix=ingress}",
    "cluster.membership_total|GAUGE{envoy.cluster_name=backend}",
    "server.live|GAUGE{}",
    "cluster.upstream_rq_time|HISTOGRAM{envoy.cluster_name=backend}",
    "cluster.upstream_rq_time|SUMMARY{envoy.cluster_name=backend}",
];

fn run_metrics_service(
    start: &dyn Fn(&str) -> Option<Courier>,
    upstream: SocketAddr,
) -> Option<Received> {
    let (collector, rx) = start_collector();
    let top = "node: { id: sink-test, cluster: c }
stats_sinks:
- name: envoy.stat_sinks.metrics_service
  typed_config:
    \"@type\": type.googleapis.com/envoy.config.metrics.v3.MetricsServiceConfig
    transport_api_version: V3
    report_counters_as_deltas: true
    emit_tags_as_labels: true
    grpc_service: { envoy_grpc: { cluster_name: metrics } }
";
    let metrics_cluster = format!(
        "  - name: metrics
    connect_timeout: 1s
    type: STATIC
    typed_extension_protocol_options:
      envoy.extensions.upstreams.http.v3.HttpProtocolOptions:
        \"@type\": type.googleapis.com/envoy.extensions.upstreams.http.v3.HttpProtocolOptions
        explicit_http_config: {{ http2_protocol_options: {{}} }}
    load_assignment:
      cluster_name: metrics
      endpoints:
      - lb_endpoints:
        - endpoint: {{ address: {{ socket_address: {{ address: 127.0.0.1, port_value: {} }} }} }}
",
        collector.port()
    );
    let proxy = start(&bootstrap_with(upstream, top, &metrics_cluster))?;
    traffic(&proxy);
    let mut received = Received::default();
    let deadline = Instant::now() + Duration::from_secs(10);
    let enough = |r: &Received| {
        [METRICS[0], METRICS[4]]
            .iter()
            .all(|k| r.values.get(*k).copied().unwrap_or(0.0) >= REQUESTS as f64)
    };
    while !enough(&received) && Instant::now() < deadline {
        if let Ok(m) = rx.recv_timeout(Duration::from_millis(200)) {
            received.add(m);
        }
    }
    drop(proxy);
    Some(received)
}

fn metrics_view(r: &Received) -> Vec<String> {
    METRICS
        .iter()
        .map(|k| {
            format!(
                "{k} = {}",
                r.values.get(*k).map_or("MISSING".into(), f64::to_string)
            )
        })
        .collect()
}

#[test]
fn metrics_service_streams_what_envoy_streams() {
    let upstream = Upstream::start("u");
    let got =
        run_metrics_service(&|b| Some(Courier::start(b)), upstream.addr).expect("courier starts");
    let view = metrics_view(&got);
    assert!(view.iter().all(|l| !l.ends_with("MISSING")), "{view:#?}");
    assert_eq!(got.node.as_deref(), Some("sink-test"));
    assert_eq!(
        got.identifiers, 1,
        "the node goes in the first message only"
    );
    assert!(!got
        .kinds
        .contains("cluster.upstream_rq_timeout|COUNTER{envoy.cluster_name=backend}"));
    if let Some(envoy) = run_metrics_service(&|b| Courier::start_envoy(b), upstream.addr) {
        eprintln!("compared with Envoy: {envoy:#?}");
        assert_eq!(metrics_view(&envoy), view, "envoy vs courier");
        assert_eq!(envoy.node.as_deref(), Some("sink-test"));
        assert_eq!(envoy.identifiers, 1);
    }
}

/// Envoy's checks of the flush schedule and of sink configs; what Courier does not
/// build is refused by path.
#[test]
fn flush_settings_and_sink_configs_are_checked() {
    let upstream: SocketAddr = "127.0.0.1:9".parse().expect("addr");
    let refused = |top: &str, path: &str| {
        let (code, stderr) = validate(
            &bootstrap_with(upstream, top, "").replace("stats_flush_interval: 0.05s\n", ""),
        );
        assert_ne!(code, Some(0), "{top}: accepted");
        assert!(stderr.contains(path), "{top}: {stderr}");
    };
    refused("stats_flush_interval: 0s\n", "stats_flush_interval");
    refused("stats_flush_interval: 301s\n", "stats_flush_interval");
    refused(
        "stats_flush_interval: 1s\nstats_flush_on_admin: true\n",
        "stats_flush_on_admin",
    );
    refused(
        "stats_sinks:\n- name: envoy.stat_sinks.hystrix\n  typed_config:\n    \"@type\": type.googleapis.com/envoy.config.metrics.v3.HystrixSink\n",
        "stats_sinks[0].typed_config",
    );
    refused(
        "stats_sinks:\n- name: envoy.stat_sinks.statsd\n  typed_config:\n    \"@type\": type.googleapis.com/envoy.config.metrics.v3.StatsdSink\n    prefix: x\n",
        "stats_sinks[0].typed_config.statsd_specifier",
    );
    refused(
        "stats_sinks:\n- name: envoy.stat_sinks.metrics_service\n  typed_config:\n    \"@type\": type.googleapis.com/envoy.config.metrics.v3.MetricsServiceConfig\n    grpc_service: { google_grpc: { target_uri: 'x:1', stat_prefix: s } }\n",
        "stats_sinks[0].typed_config.grpc_service.google_grpc",
    );
    let (code, stderr) = validate(&bootstrap_with(upstream, "", ""));
    assert_eq!(code, Some(0), "{stderr}");
}
