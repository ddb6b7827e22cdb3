//! The gRPC access-log service loggers (`envoy.access_loggers.http_grpc`,
//! `envoy.access_loggers.tcp_grpc`) as Envoy 1.40 runs them: entries streamed on
//! `envoy.service.accesslog.v3.AccessLogService/StreamAccessLogs`, one stream per logger,
//! the identifier (node and `log_name`) on each stream's first message only, entries
//! batched per `buffer_flush_interval`. An AccessLogService server in the test collects
//! what arrives; the same requests (a proxied 200, a 404 no route takes, a 503 with no
//! healthy upstream, a TCP proxy connection) go through Courier and, when `envoy` is on
//! PATH, through Envoy, and the normalised entries and identifiers must be equal.

mod http_support;

use std::collections::{BTreeMap, HashMap};
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use courier_proto::envoy::config::core::v3::{address, socket_address, Address};
use courier_proto::envoy::data::accesslog::v3::AccessLogCommon;
use courier_proto::envoy::service::accesslog::v3::access_log_service_server::{
    AccessLogService, AccessLogServiceServer,
};
use courier_proto::envoy::service::accesslog::v3::stream_access_logs_message::LogEntries;
use courier_proto::envoy::service::accesslog::v3::{
    StreamAccessLogsMessage, StreamAccessLogsResponse,
};
use http_support::*;

/// Messages received: the stream each came on (numbered in order of arrival) and the
/// message.
type Received = Arc<Mutex<Vec<(usize, StreamAccessLogsMessage)>>>;

struct Receiver {
    received: Received,
    streams: Arc<Mutex<usize>>,
    /// Ends each stream after its first message (as a collector going away would).
    close_after_first: bool,
}

#[tonic::async_trait]
impl AccessLogService for Receiver {
    async fn stream_access_logs(
        &self,
        request: tonic::Request<tonic::Streaming<StreamAccessLogsMessage>>,
    ) -> Result<tonic::Response<StreamAccessLogsResponse>, tonic::Status> {
        let stream = {
            let mut n = self.streams.lock().expect("streams");
            *n += 1;
            *n
        };
        let mut messages = request.into_inner();
        while let Ok(Some(m)) = messages.message().await {
            self.received.lock().expect("received").push((stream, m));
            if self.close_after_first {
                break;
            }
        }
        Ok(tonic::Response::new(StreamAccessLogsResponse {}))
    }
}

/// An AccessLogService server.
fn receiver(close_after_first: bool) -> (SocketAddr, Received) {
    let received: Received = Arc::default();
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
    let addr = listener.local_addr().expect("addr");
    listener.set_nonblocking(true).expect("nonblocking");
    let service = AccessLogServiceServer::new(Receiver {
        received: received.clone(),
        streams: Arc::default(),
        close_after_first,
    });
    std::thread::spawn(move || {
        block_on(async move {
            let listener = tokio::net::TcpListener::from_std(listener).expect("listener");
            let _ = tonic::transport::Server::builder()
                .add_service(service)
                .serve_with_incoming(tokio_stream::wrappers::TcpListenerStream::new(listener))
                .await;
        })
    });
    (addr, received)
}

const HTTP_LOGGER: &str = r#"          access_log:
          - name: envoy.access_loggers.http_grpc
            typed_config:
              "@type": type.googleapis.com/envoy.extensions.access_loggers.grpc.v3.HttpGrpcAccessLogConfig
              common_config:
                log_name: http_log
                transport_api_version: V3
                grpc_service: { envoy_grpc: { cluster_name: als } }
                buffer_flush_interval: 0.05s
              additional_request_headers_to_log: [x-custom, x-absent]
              additional_response_headers_to_log: [x-upstream, content-length, x-envoy-upstream-service-time, x-absent]
"#;

const ROUTES: &str = r#"            name: local
            virtual_hosts:
            - name: main
              domains: ["*"]
              routes:
              - name: ok
                match: { prefix: "/ok" }
                route: { cluster: h, prefix_rewrite: "/rewritten", timeout: 0s }
              - name: unhealthy
                match: { prefix: "/empty" }
                route: { cluster: empty, timeout: 0s }
"#;

/// Ports the entries name, and the names they are given when normalised.
struct Ports {
    tcp: u16,
}

fn boot(collector: SocketAddr, http_up: SocketAddr, echo: SocketAddr, p: &Ports) -> String {
    let clusters = [
        cluster(
            "als",
            &[collector],
            "    typed_extension_protocol_options:\n      envoy.extensions.upstreams.http.v3.HttpProtocolOptions:\n        \"@type\": type.googleapis.com/envoy.extensions.upstreams.http.v3.HttpProtocolOptions\n        explicit_http_config: { http2_protocol_options: {} }\n",
        ),
        cluster("h", &[http_up], ""),
        cluster("c", &[echo], ""),
        "  - name: empty\n    type: STATIC\n    connect_timeout: 1s\n    load_assignment: { cluster_name: empty, endpoints: [] }\n".to_string(),
    ]
    .concat();
    let b = bootstrap(ROUTES, HTTP_LOGGER, &clusters);
    let tcp = format!(
        r#"  - name: tcp
    address: {{ socket_address: {{ address: 127.0.0.1, port_value: {} }} }}
    filter_chains:
    - filters:
      - name: envoy.filters.network.tcp_proxy
        typed_config:
          "@type": type.googleapis.com/envoy.extensions.filters.network.tcp_proxy.v3.TcpProxy
          stat_prefix: t
          cluster: c
          access_log:
          - name: envoy.access_loggers.tcp_grpc
            typed_config:
              "@type": type.googleapis.com/envoy.extensions.access_loggers.grpc.v3.TcpGrpcAccessLogConfig
              common_config:
                log_name: tcp_log
                transport_api_version: V3
                grpc_service: {{ envoy_grpc: {{ cluster_name: als }} }}
                buffer_flush_interval: 0.05s
"#,
        p.tcp
    );
    let b = b.replacen("  clusters:\n", &format!("{tcp}  clusters:\n"), 1);
    format!("node: {{ id: node-1, cluster: edge-cluster, locality: {{ zone: zone-a }} }}\n{b}")
}

/// `a` with its port named: a known port by its name, any other (ephemeral) `*`.
fn address(a: &Option<Address>, names: &HashMap<u16, &str>) -> String {
    let Some(Address {
        address: Some(address::Address::SocketAddress(s)),
    }) = a
    else {
        return format!("{a:?}");
    };
    let port = match s.port_specifier {
        Some(socket_address::PortSpecifier::PortValue(p)) => u16::try_from(p).unwrap_or(0),
        _ => 0,
    };
    let name = names.get(&port).copied().unwrap_or("*");
    format!("{}:{name} {:?}", s.address, s.protocol)
}

/// The common properties with times reduced to whether they are set and addresses named.
fn common(c: &Option<AccessLogCommon>, names: &HashMap<u16, &str>, http: bool) -> String {
    let Some(c) = c else { return "None".into() };
    let mut c = c.clone();
    let addresses = [
        ("remote", address(&c.downstream_remote_address, names)),
        (
            "direct",
            address(&c.downstream_direct_remote_address, names),
        ),
        ("local", address(&c.downstream_local_address, names)),
        ("up_remote", address(&c.upstream_remote_address, names)),
        ("up_local", address(&c.upstream_local_address, names)),
    ];
    c.downstream_remote_address = None;
    c.downstream_direct_remote_address = None;
    c.downstream_local_address = None;
    c.upstream_remote_address = None;
    c.upstream_local_address = None;
    let times = [
        ("start", c.start_time.take().is_some()),
        ("duration", c.duration.take().is_some()),
    ];
    // Courier does not keep these (DIFFERENCES.md, Access logs): the `time_to_*` points
    // and, for HTTP, the wire byte counts.
    c.time_to_last_rx_byte = None;
    c.time_to_first_upstream_tx_byte = None;
    c.time_to_last_upstream_tx_byte = None;
    c.time_to_first_upstream_rx_byte = None;
    c.time_to_last_upstream_rx_byte = None;
    c.time_to_first_downstream_tx_byte = None;
    c.time_to_last_downstream_tx_byte = None;
    if http {
        c.downstream_wire_bytes_sent = 0;
        c.downstream_wire_bytes_received = 0;
        c.upstream_wire_bytes_sent = 0;
        c.upstream_wire_bytes_received = 0;
    }
    // A random id (the request's, or the TCP stream's): whether there is one.
    let stream_id = !std::mem::take(&mut c.stream_id).is_empty();
    format!("{addresses:?} times={times:?} stream_id={stream_id} {c:?}")
}

/// The entries received, one line each, normalised; and per stream, whether each of its
/// messages carried the identifier (with what it said of the node and the log).
fn entries(received: &Received, names: &HashMap<u16, &str>) -> (Vec<String>, Vec<String>) {
    let mut out = Vec::new();
    let mut identifiers = Vec::new();
    for (stream, m) in received.lock().expect("received").iter() {
        let id = m.identifier.as_ref().map(|i| {
            let node = i.node.as_ref();
            format!(
                "{} node={:?}/{:?}/{:?}",
                i.log_name,
                node.map(|n| &n.id),
                node.map(|n| &n.cluster),
                node.and_then(|n| n.locality.as_ref()).map(|l| &l.zone)
            )
        });
        identifiers.push(format!("stream {stream}: {id:?}"));
        match &m.log_entries {
            Some(LogEntries::HttpLogs(l)) => {
                for e in &l.log_entry {
                    let mut e = e.clone();
                    let c = common(&e.common_properties, names, true);
                    e.common_properties = None;
                    if let Some(r) = &mut e.request {
                        if !r.request_id.is_empty() {
                            r.request_id = "<id>".into();
                        }
                        // Not kept by Courier (DIFFERENCES.md).
                        r.upstream_header_bytes_sent = 0;
                        r.downstream_header_bytes_received = 0;
                    }
                    if let Some(r) = &mut e.response {
                        r.upstream_header_bytes_received = 0;
                        r.downstream_header_bytes_sent = 0;
                        // `x-envoy-upstream-service-time` is a duration: its digits vary.
                        if let Some(t) = r.response_headers.get_mut("x-envoy-upstream-service-time")
                        {
                            r.response_headers_bytes -= t.len() as u64;
                            *t = "<ms>".into();
                        }
                    }
                    // Maps print in no fixed order: printed sorted, apart.
                    let mut sorted = String::new();
                    if let Some(r) = &mut e.request {
                        let h: BTreeMap<_, _> =
                            std::mem::take(&mut r.request_headers).into_iter().collect();
                        sorted += &format!(" request_headers={h:?}");
                    }
                    if let Some(r) = &mut e.response {
                        let h: BTreeMap<_, _> = std::mem::take(&mut r.response_headers)
                            .into_iter()
                            .collect();
                        let t: BTreeMap<_, _> = std::mem::take(&mut r.response_trailers)
                            .into_iter()
                            .collect();
                        sorted += &format!(" response_headers={h:?} response_trailers={t:?}");
                    }
                    out.push(format!("http {c} {e:?}{sorted}"));
                }
            }
            Some(LogEntries::TcpLogs(l)) => {
                for e in &l.log_entry {
                    let mut e = e.clone();
                    let c = common(&e.common_properties, names, false);
                    e.common_properties = None;
                    out.push(format!("tcp {c} {e:?}"));
                }
            }
            None => out.push("no entries".into()),
        }
    }
    out.sort();
    (out, identifiers)
}

/// Waits until `n` entries have arrived.
fn wait_entries(received: &Received, n: usize) {
    let count = || {
        received
            .lock()
            .expect("received")
            .iter()
            .map(|(_, m)| match &m.log_entries {
                Some(LogEntries::HttpLogs(l)) => l.log_entry.len(),
                Some(LogEntries::TcpLogs(l)) => l.log_entry.len(),
                None => 0,
            })
            .sum::<usize>()
    };
    let deadline = Instant::now() + Duration::from_secs(10);
    while count() < n && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(10));
    }
}

type Run = (Vec<String>, Vec<String>);

fn run(start: &dyn Fn(&str) -> Option<Courier>) -> Option<Run> {
    let (collector, received) = receiver(false);
    let http_up = Upstream::start("h");
    let echo = echo_server();
    let p = Ports { tcp: free_port() };
    let proxy = start(&boot(collector, http_up.addr, echo, &p))?;
    let names: HashMap<u16, &str> = [
        (proxy.listener.port(), "http_listener"),
        (p.tcp, "tcp_listener"),
        (http_up.addr.port(), "http_upstream"),
        (echo.port(), "echo"),
    ]
    .into_iter()
    .collect();
    // Each request waits for its entry: the entries of one stream come in messages of
    // their own, so the identifier's absence from later messages is seen.
    let r = get(
        proxy.listener,
        "h",
        "/ok",
        &[
            ("user-agent", "ua/1"),
            ("referer", "http://ref"),
            ("x-custom", "c1"),
        ],
    );
    assert_eq!(r.status, 200);
    wait_entries(&received, 1);
    assert_eq!(get(proxy.listener, "h", "/nope", &[]).status, 404);
    wait_entries(&received, 2);
    assert_eq!(get(proxy.listener, "h", "/empty", &[]).status, 503);
    wait_entries(&received, 3);
    let mut s = TcpStream::connect(("127.0.0.1", p.tcp)).expect("connect");
    s.write_all(b"hello").expect("write");
    let mut five = [0u8; 5];
    s.read_exact(&mut five).expect("echo");
    drop(s);
    wait_entries(&received, 4);
    let (mut got, ids) = entries(&received, &names);
    // Envoy counts the HTTP entries only in `logs_written`, every entry sent in
    // `grpc_entries_flushed`.
    let flushed = proxy.wait_stat("access_logs.grpc_access_log.grpc_entries_flushed", 4);
    let stat = |s: &str| proxy.stat(&format!("access_logs.grpc_access_log.{s}"));
    got.push(format!(
        "logs_written={} logs_dropped={} grpc_entries_flushed={flushed} grpc_entries_flush_failed={}",
        stat("logs_written"),
        stat("logs_dropped"),
        stat("grpc_entries_flush_failed"),
    ));
    drop(proxy);
    Some((got, ids))
}

#[test]
fn entries_are_streamed_as_envoy_streams_them() {
    let (got, ids) = run(&|b| Some(Courier::start(b))).expect("courier starts");
    assert_eq!(got.len(), 5, "{got:#?}");
    assert_eq!(
        ids,
        [
            "stream 1: Some(\"http_log node=Some(\\\"node-1\\\")/Some(\\\"edge-cluster\\\")/Some(\\\"zone-a\\\")\")",
            "stream 1: None",
            "stream 1: None",
            "stream 2: Some(\"tcp_log node=Some(\\\"node-1\\\")/Some(\\\"edge-cluster\\\")/Some(\\\"zone-a\\\")\")",
        ]
    );
    if let Some((envoy, envoy_ids)) = run(&Courier::start_envoy) {
        for (e, c) in envoy.iter().zip(&got) {
            if e != c {
                eprintln!("envoy:   {e}\ncourier: {c}\n");
            }
        }
        assert_eq!(envoy, got, "envoy vs courier");
        assert_eq!(envoy_ids, ids, "identifiers: envoy vs courier");
    }
}

/// A collector that ends each stream after its first message: the next flush starts a
/// new stream, and its first message carries the identifier again.
fn reopened(start: &dyn Fn(&str) -> Option<Courier>) -> Option<Vec<String>> {
    let (collector, received) = receiver(true);
    let http_up = Upstream::start("h");
    let p = Ports { tcp: free_port() };
    let proxy = start(&boot(collector, http_up.addr, echo_server(), &p))?;
    for (i, path) in ["/nope", "/nope2", "/nope3"].iter().enumerate() {
        assert_eq!(get(proxy.listener, "h", path, &[]).status, 404);
        wait_entries(&received, i + 1);
    }
    let (got, ids) = entries(&received, &HashMap::new());
    assert_eq!(got.len(), 3, "{got:#?}");
    drop(proxy);
    Some(ids)
}

#[test]
fn a_stream_the_collector_ended_is_started_again_with_the_identifier() {
    let ids = reopened(&|b| Some(Courier::start(b))).expect("courier starts");
    let first = "Some(\"http_log node=Some(\\\"node-1\\\")/Some(\\\"edge-cluster\\\")/Some(\\\"zone-a\\\")\")";
    assert_eq!(
        ids,
        [1, 2, 3].map(|n| format!("stream {n}: {first}")),
        "{ids:#?}"
    );
    if let Some(envoy) = reopened(&Courier::start_envoy) {
        assert_eq!(envoy, ids, "envoy vs courier");
    }
}

#[test]
fn what_envoy_refuses_or_courier_lacks_is_refused_by_path() {
    let addr: SocketAddr = "127.0.0.1:9".parse().expect("addr");
    let base = boot(addr, addr, addr, &Ports { tcp: 1 });
    assert_eq!(validate(&base).0, Some(0));
    const TCP_COMMON: &str = "                log_name: tcp_log\n";
    const HTTP_LOGGER_END: &str = "              additional_request_headers_to_log";
    // V2 is refused by both.
    let v2 = base.replacen(
        "                transport_api_version: V3\n",
        "                transport_api_version: V2\n",
        1,
    );
    let (code, err) = validate(&v2);
    assert_ne!(code, Some(0));
    assert!(err.contains("common_config.transport_api_version"), "{err}");
    if let Some(envoy) = envoy_validate(&v2).map(|(code, _)| code) {
        assert_ne!(envoy, Some(0), "envoy accepted V2");
    }
    // What Courier does not build is refused by its path.
    for (field, anchor, yaml) in [
        (
            "typed_config.common_config.filter_state_objects_to_log",
            TCP_COMMON,
            "                filter_state_objects_to_log: [a]\n",
        ),
        (
            "typed_config.common_config.grpc_stream_retry_policy",
            TCP_COMMON,
            "                grpc_stream_retry_policy: { num_retries: 1 }\n",
        ),
        (
            "typed_config.common_config.custom_tags",
            TCP_COMMON,
            "                custom_tags: [{ tag: t, literal: { value: v } }]\n",
        ),
        (
            "typed_config.additional_response_trailers_to_log",
            HTTP_LOGGER_END,
            "              additional_response_trailers_to_log: [x-t]\n",
        ),
    ] {
        assert!(base.contains(anchor), "{anchor}");
        let b = base.replacen(anchor, &format!("{yaml}{anchor}"), 1);
        let (code, err) = validate(&b);
        assert_ne!(code, Some(0), "{field}");
        assert!(err.contains(field), "{field}: {err}");
        if let Some(envoy) = envoy_validate(&b).map(|(code, _)| code) {
            assert_eq!(envoy, Some(0), "envoy takes {field}");
        }
    }
}
