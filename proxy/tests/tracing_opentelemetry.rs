//! OpenTelemetry tracing (`envoy.tracers.opentelemetry`) as Envoy 1.40 does it: W3C
//! `traceparent`/`tracestate` joined and sent upstream, one span per request (SERVER on
//! an ingress listener, CLIENT on an egress one) with Envoy's attributes and status, and
//! OTLP export batched to a collector over gRPC (`TraceService/Export`) or HTTP
//! (protobuf POST). Receivers in the test decode what arrives; the same requests go
//! through Courier and, when `envoy` is on PATH, through Envoy, and the normalised spans,
//! resources and upstream trace context must agree.

mod http_support;

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use http_support::*;
use opentelemetry_proto::tonic::collector::trace::v1::trace_service_server::{
    TraceService, TraceServiceServer,
};
use opentelemetry_proto::tonic::collector::trace::v1::{
    ExportTraceServiceRequest, ExportTraceServiceResponse,
};
use opentelemetry_proto::tonic::common::v1::{any_value, KeyValue};
use prost::Message;

/// One export as a receiver got it: the request's notable headers and its message.
#[derive(Clone, Debug)]
struct Export {
    headers: Vec<(String, String)>,
    request: ExportTraceServiceRequest,
}

type Exports = Arc<Mutex<Vec<Export>>>;

struct Grpc(Exports);

#[tonic::async_trait]
impl TraceService for Grpc {
    async fn export(
        &self,
        request: tonic::Request<ExportTraceServiceRequest>,
    ) -> Result<tonic::Response<ExportTraceServiceResponse>, tonic::Status> {
        let headers = grpc_headers(
            request.metadata(),
            &[
                "x-token",
                "content-type",
                "user-agent",
                "grpc-timeout",
                "x-envoy-internal",
                "te",
            ],
        );
        self.0.lock().expect("exports").push(Export {
            headers,
            request: request.into_inner(),
        });
        Ok(tonic::Response::new(ExportTraceServiceResponse::default()))
    }
}

/// An OTLP/gRPC receiver.
fn grpc_receiver() -> (SocketAddr, Exports) {
    let exports: Exports = Arc::default();
    let addr = spawn_grpc_server(TraceServiceServer::new(Grpc(exports.clone())));
    (addr, exports)
}

/// An OTLP/HTTP receiver: protobuf bodies posted to `/v1/traces`.
fn http_receiver() -> (SocketAddr, Exports) {
    let exports: Exports = Arc::default();
    let keep = exports.clone();
    // An empty `ExportTraceServiceResponse` encodes to no bytes.
    let addr = http_collector(200, "application/x-protobuf", b"", move |posted| {
        let mut headers: Vec<(String, String)> = posted
            .headers
            .into_iter()
            .filter(|(k, _)| {
                ["content-type", "host", "x-token", "user-agent"].contains(&k.as_str())
            })
            .collect();
        headers.push((":path".into(), posted.path));
        headers.push((":method".into(), posted.method));
        if let Ok(request) = ExportTraceServiceRequest::decode(posted.body) {
            keep.lock()
                .expect("exports")
                .push(Export { headers, request });
        }
    });
    (addr, exports)
}

#[derive(Clone, Copy, PartialEq)]
enum Exporter {
    Grpc,
    Http,
}

const H2: &str = "    typed_extension_protocol_options:\n      envoy.extensions.upstreams.http.v3.HttpProtocolOptions:\n        \"@type\": type.googleapis.com/envoy.extensions.upstreams.http.v3.HttpProtocolOptions\n        explicit_http_config: { http2_protocol_options: {} }\n";

fn traced_bootstrap(upstream: SocketAddr, collector: SocketAddr, exporter: Exporter) -> String {
    let export = match exporter {
        Exporter::Grpc => {
            "                grpc_service:
                  envoy_grpc: { cluster_name: otel }
                  timeout: 5s
                  initial_metadata: [{ key: x-token, value: secret }]
"
        }
        Exporter::Http => {
            "                http_service:
                  http_uri:
                    uri: http://collector.example:4318/v1/traces
                    cluster: otel
                    timeout: 5s
                  request_headers_to_add:
                  - header: { key: x-token, value: secret }
"
        }
    };
    let boot = bootstrap(
        "            name: local
            virtual_hosts:
            - name: main
              domains: [\"*\"]
              routes:
              - match: { prefix: \"/decorated\" }
                route: { cluster: up }
                decorator: { operation: checkout }
              - match: { prefix: \"/empty\" }
                route: { cluster: empty }
              - match: { prefix: \"/\" }
                route: { cluster: up }
            - name: other
              domains: [\"other.example\"]
              routes:
              - match: { prefix: \"/only\" }
                route: { cluster: up }
",
        &format!(
            "          tracing:
            random_sampling: {{ value: 50 }}
            custom_tags:
            - {{ tag: team, literal: {{ value: payments }} }}
            - {{ tag: tenant, request_header: {{ name: x-tenant, default_value: none }} }}
            provider:
              name: envoy.tracers.opentelemetry
              typed_config:
                \"@type\": type.googleapis.com/envoy.config.trace.v3.OpenTelemetryConfig
                service_name: checkout
{export}"
        ),
        &format!(
            "{}{}{}",
            cluster("up", &[upstream], ""),
            cluster("empty", &[], ""),
            cluster(
                "otel",
                &[collector],
                if exporter == Exporter::Grpc { H2 } else { "" }
            )
        ),
    );
    format!(
        "node: {{ id: node-1, cluster: checkout-svc, locality: {{ zone: zone-a }} }}
layered_runtime:
  layers:
  - name: base
    static_layer: {{ tracing.opentelemetry.min_flush_spans: 1, tracing.opentelemetry.flush_interval_ms: 100 }}
{boot}"
    )
}

const TRACE: &str = "4bf92f3577b34da6a3ce929d0e0e4736";
const CALLER: &str = "00f067aa0ba902b7";

/// A request id whose sampling pivot is `pivot` (under `random_sampling: 50`, pivots
/// below 5000 are sampled), numbered `n`.
fn rid(pivot: u32, n: u32) -> String {
    format!("{pivot:08x}-0000-4000-8000-{n:012x}")
}

fn attr(kv: &KeyValue) -> String {
    match kv.value.as_ref().and_then(|v| v.value.as_ref()) {
        Some(any_value::Value::StringValue(s)) => s.clone(),
        Some(any_value::Value::IntValue(i)) => format!("int:{i}"),
        Some(any_value::Value::BoolValue(b)) => format!("bool:{b}"),
        Some(any_value::Value::DoubleValue(d)) => format!("double:{d}"),
        other => format!("{other:?}"),
    }
}

/// A `traceparent` with its random ids replaced: `INCOMING` for the test's trace id,
/// `CALLER` for its span id, `NEW` for an id of the proxy's own.
fn shape(tp: &str) -> String {
    let parts: Vec<&str> = tp.split('-').collect();
    let random = |p: &str, len: usize| {
        p.len() == len && p.bytes().all(|b| b.is_ascii_hexdigit()) && p.bytes().any(|b| b != b'0')
    };
    match parts.as_slice() {
        [v, t, p, f] => format!(
            "{v}-{}-{}-{f}",
            match *t {
                TRACE => "INCOMING",
                t if random(t, 32) => "NEW",
                t => t,
            },
            match *p {
                CALLER => "CALLER",
                p if random(p, 16) => "NEW",
                p => p,
            }
        ),
        _ => tp.to_string(),
    }
}

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

/// What one run produced, normalised: the upstream's trace context per request, the
/// spans, the resources and scopes, the exports' headers, and stats.
type Run = (Vec<String>, Vec<String>, Vec<String>, Vec<String>);

/// One request: label, host, path and headers (the request id first).
type Request = (
    &'static str,
    &'static str,
    &'static str,
    Vec<(String, String)>,
);

/// The requests of one run.
fn requests() -> Vec<Request> {
    let tp = |flags: &str| format!("00-{TRACE}-{CALLER}-{flags}");
    let h = |k: &str, v: &str| (k.to_string(), v.to_string());
    vec![
        (
            "new",
            "shop",
            "/a?q=1",
            vec![
                h("x-request-id", &rid(1, 1)),
                h("user-agent", "agent/1"),
                h("x-tenant", "acme"),
            ],
        ),
        (
            "joined",
            "shop",
            "/b",
            vec![
                h("x-request-id", &rid(2, 2)),
                h("traceparent", &tp("01")),
                h("tracestate", "vendor=a"),
                h("tracestate", "other=b"),
            ],
        ),
        (
            "flag-unsampled",
            "shop",
            "/c",
            vec![h("x-request-id", &rid(3, 3)), h("traceparent", &tp("00"))],
        ),
        (
            "decision-unsampled",
            "shop",
            "/d",
            vec![h("x-request-id", &rid(9999, 4))],
        ),
        (
            "forced",
            "shop",
            "/e",
            vec![
                h("x-request-id", &rid(9999, 5)),
                h("x-envoy-force-trace", "true"),
            ],
        ),
        (
            "flag-sampled-decision-not",
            "shop",
            "/f",
            vec![
                h("x-request-id", &rid(9999, 6)),
                h("traceparent", &tp("01")),
            ],
        ),
        (
            "invalid",
            "shop",
            "/g",
            vec![
                h("x-request-id", &rid(7, 7)),
                h("traceparent", "00-4bf92f35-00f067aa0ba902b7-01"),
                h("tracestate", "kept=1"),
            ],
        ),
        (
            "zero-trace",
            "shop",
            "/h",
            vec![
                h("x-request-id", &rid(8, 8)),
                h(
                    "traceparent",
                    "00-00000000000000000000000000000000-00f067aa0ba902b7-01",
                ),
            ],
        ),
        (
            "upper-hex-flags-03",
            "shop",
            "/i",
            vec![
                h("x-request-id", &rid(9, 9)),
                h(
                    "traceparent",
                    "00-4BF92F3577B34DA6A3CE929D0E0E4736-00F067AA0BA902B7-03",
                ),
            ],
        ),
        (
            "decorated",
            "shop",
            "/decorated",
            vec![h("x-request-id", &rid(10, 10))],
        ),
        (
            "no-healthy-upstream",
            "shop",
            "/empty",
            vec![h("x-request-id", &rid(11, 11))],
        ),
        (
            "no-route",
            "other.example",
            "/x",
            vec![h("x-request-id", &rid(12, 12))],
        ),
    ]
}

/// How many of those requests' spans are reported: `new`, `joined`,
/// `upper-hex-flags-03`, `decorated`, `no-healthy-upstream` and `no-route`.
const REPORTED: usize = 6;

/// How many spans a run reports: with `spawn_upstream_span`, the four of those
/// requests that reached the upstream add their attempt's span.
fn reported(spawn: bool) -> usize {
    if spawn {
        REPORTED + 4
    } else {
        REPORTED
    }
}

fn run(
    start: &dyn Fn(&str) -> Option<Courier>,
    exporter: Exporter,
    outbound: bool,
    spawn: bool,
) -> Option<Run> {
    let up = Upstream::start("up");
    let (collector, exports) = match exporter {
        Exporter::Grpc => grpc_receiver(),
        Exporter::Http => http_receiver(),
    };
    let mut boot = traced_bootstrap(up.addr, collector, exporter);
    if outbound {
        boot = boot.replacen(
            "  - name: http\n",
            "  - name: http\n    traffic_direction: OUTBOUND\n",
            1,
        );
    }
    if spawn {
        boot = boot.replacen(
            "random_sampling: { value: 50 }",
            "random_sampling: { value: 50 }\n            spawn_upstream_span: true",
            1,
        );
    }
    let proxy = start(&boot)?;
    let mut seen = Vec::new();
    for (label, host, path, headers) in requests() {
        let hs: Vec<(&str, &str)> = headers
            .iter()
            .map(|(k, v)| (k.as_str(), v.as_str()))
            .collect();
        let r = get(proxy.listener, host, path, &hs);
        let id = &headers[0].1;
        let at_upstream = up
            .seen
            .lock()
            .expect("seen")
            .iter()
            .find(|s| s.header("x-request-id").map(|v| &v[15..]) == Some(&id[15..]))
            .cloned();
        let line = match at_upstream {
            Some(s) => format!(
                "{label}: status={} traceparent={} tracestate={:?} rid-mark={}",
                r.status,
                s.header("traceparent").map_or("-".into(), shape),
                s.header("tracestate"),
                s.header("x-request-id")
                    .and_then(|v| v.chars().nth(14))
                    .unwrap_or(' ')
            ),
            None => format!("{label}: status={} (not upstream)", r.status),
        };
        seen.push(line);
    }
    let deadline = Instant::now() + Duration::from_secs(15);
    let spans_in = |e: &Exports| -> usize {
        e.lock()
            .expect("exports")
            .iter()
            .flat_map(|x| &x.request.resource_spans)
            .flat_map(|r| &r.scope_spans)
            .map(|s| s.spans.len())
            .sum()
    };
    while spans_in(&exports) < reported(spawn) {
        assert!(
            Instant::now() < deadline,
            "spans never reached the collector: {} of {}",
            spans_in(&exports),
            reported(spawn)
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    let exports = exports.lock().expect("exports").clone();
    // The proxy's own span ids: an attempt's span names its request's span as parent.
    let own: std::collections::HashSet<String> = exports
        .iter()
        .flat_map(|x| &x.request.resource_spans)
        .flat_map(|r| &r.scope_spans)
        .flat_map(|s| &s.spans)
        .map(|s| hex(&s.span_id))
        .collect();
    // The upstream's traceparent, by request id: a span's context as sent upstream.
    let upstream_tp = |rid: &str| -> Option<String> {
        up.seen
            .lock()
            .expect("seen")
            .iter()
            .find(|s| s.header("x-request-id").map(|v| &v[15..]) == rid.get(15..))
            .and_then(|s| s.header("traceparent").map(str::to_string))
    };
    let port = proxy.listener.port().to_string();
    let up_port = up.addr.port().to_string();
    let mut spans = Vec::new();
    let mut resources = Vec::new();
    let mut languages = Vec::new();
    for e in &exports {
        for rs in &e.request.resource_spans {
            let mut attrs: Vec<String> = rs
                .resource
                .iter()
                .flat_map(|r| &r.attributes)
                .map(|kv| {
                    let v = attr(kv);
                    // The SDK version is the proxy's own version, and its language is
                    // its own (DIFFERENCES.md).
                    let v = match kv.key.as_str() {
                        "telemetry.sdk.version" => format!("<{}>", !v.is_empty()),
                        "telemetry.sdk.language" => {
                            languages.push(v);
                            "<language>".into()
                        }
                        _ => v,
                    };
                    format!("{}={v}", kv.key)
                })
                .collect();
            attrs.sort();
            for ss in &rs.scope_spans {
                let scope = ss.scope.as_ref().map(|s| {
                    format!(
                        "{} version={} attrs={}",
                        s.name,
                        !s.version.is_empty(),
                        s.attributes.len()
                    )
                });
                resources.push(format!(
                    "resource={attrs:?} schema={:?} scope={scope:?} scope_schema={:?}",
                    rs.schema_url, ss.schema_url
                ));
                for s in &ss.spans {
                    let mut a: Vec<String> = s
                        .attributes
                        .iter()
                        .map(|kv| {
                            let v = attr(kv).replace(&port, "PORT").replace(&up_port, "UP");
                            format!("{}={v}", kv.key)
                        })
                        .filter(|x| !x.starts_with("peer.address="))
                        .collect();
                    a.sort();
                    let rid = s
                        .attributes
                        .iter()
                        .find(|kv| kv.key == "guid:x-request-id")
                        .map(attr)
                        .unwrap_or_default();
                    let trace = hex(&s.trace_id);
                    let id = hex(&s.span_id);
                    let tp = upstream_tp(&rid).map(|tp| {
                        tp.replace(&trace, "TRACE")
                            .replace(&id, "SPAN")
                            .replace(TRACE, "INCOMING")
                            .split('-')
                            .map(|p| if own.contains(p) { "ATTEMPT" } else { p })
                            .collect::<Vec<_>>()
                            .join("-")
                    });
                    spans.push(format!(
                        "{} kind={:?} trace={} id={} parent={} state={:?} flags={} status={:?} times_ok={} events={} links={} dropped={}/{}/{} upstream_tp={:?} attrs={a:?}",
                        s.name,
                        s.kind,
                        if trace == TRACE { "INCOMING".to_string() } else { format!("new/{}", s.trace_id.len()) },
                        if s.span_id.len() == 8 { "new/8" } else { "?" },
                        match hex(&s.parent_span_id) {
                            p if p == CALLER => "CALLER".to_string(),
                            p if own.contains(&p) => "OWN".to_string(),
                            p => p,
                        },
                        s.trace_state,
                        s.flags,
                        s.status.as_ref().map(|st| (st.code, st.message.clone())),
                        s.start_time_unix_nano > 0 && s.end_time_unix_nano >= s.start_time_unix_nano,
                        s.events.len(),
                        s.links.len(),
                        s.dropped_attributes_count,
                        s.dropped_events_count,
                        s.dropped_links_count,
                        tp,
                    ));
                }
            }
        }
    }
    spans.sort();
    resources.sort();
    resources.dedup();
    let mut headers: Vec<String> = exports
        .iter()
        .map(|e| {
            let mut h: Vec<String> = e
                .headers
                .iter()
                .map(|(k, v)| match k.as_str() {
                    // The exporter's version is the proxy's own.
                    "user-agent" => format!("{k}: {}", v.split('/').next().unwrap_or_default()),
                    _ => format!("{k}: {v}"),
                })
                .collect();
            h.sort();
            h.join(", ")
        })
        .collect();
    headers.dedup();
    let mut stats = vec![format!(
        "spans_sent={}",
        proxy.wait_stat("tracing.opentelemetry.spans_sent", reported(spawn) as u64)
    )];
    for s in [
        "http.ingress.tracing.random_sampling",
        "http.ingress.tracing.not_traceable",
        "http.ingress.tracing.service_forced",
    ] {
        stats.push(format!("{s}={}", proxy.stat(s)));
    }
    seen.extend(headers);
    seen.extend(stats);
    languages.dedup();
    Some((seen, spans, resources, languages))
}

/// Runs the requests through Courier and, when there is one, through Envoy; returns
/// Courier's run after asserting both agree.
fn differential(exporter: Exporter, outbound: bool, spawn: bool) -> Run {
    let got = run(&|b| Some(Courier::start(b)), exporter, outbound, spawn).expect("courier starts");
    if let Some(envoy) = run(&|b| Courier::start_envoy(b), exporter, outbound, spawn) {
        // The SDK language is each proxy's own.
        assert_eq!(envoy.3, ["cpp"]);
        assert_eq!(
            (&envoy.0, &envoy.1, &envoy.2),
            (&got.0, &got.1, &got.2),
            "envoy vs courier"
        );
    }
    assert_eq!(got.3, ["rust"]);
    got
}

#[test]
fn otlp_grpc_spans_and_w3c_context_match_envoy() {
    let (seen, spans, resources, _) = differential(Exporter::Grpc, false, false);
    let line = |label: &str| {
        seen.iter()
            .find(|l| l.starts_with(&format!("{label}:")))
            .cloned()
            .unwrap_or_default()
    };
    // A new trace, sampled: the upstream's parent is the span itself.
    assert_eq!(
        line("new"),
        "new: status=200 traceparent=00-NEW-NEW-01 tracestate=Some(\"\") rid-mark=9"
    );
    assert!(
        line("joined").contains("traceparent=00-INCOMING-NEW-01"),
        "{seen:#?}"
    );
    assert!(
        line("joined").contains("tracestate=Some(\"vendor=a,other=b\")"),
        "{seen:#?}"
    );
    // Not sampled by the caller's flag, nor by the decision even with the flag set.
    assert!(
        line("flag-unsampled").contains("-00 tracestate"),
        "{seen:#?}"
    );
    assert!(
        line("flag-sampled-decision-not").contains("-00 tracestate"),
        "{seen:#?}"
    );
    // An invalid context is left as it came.
    assert!(
        line("invalid").contains("traceparent=00-4bf92f35-CALLER-01 tracestate=Some(\"kept=1\")"),
        "{seen:#?}"
    );
    assert_eq!(spans.len(), REPORTED, "{spans:#?}");
    assert!(
        spans
            .iter()
            .all(|s| s.contains("upstream_tp=Some(\"00-TRACE-SPAN-01\")")
                || s.contains("upstream_tp=None")),
        "{spans:#?}"
    );
    assert!(
        spans.iter().any(|s| s.starts_with("ingress kind=2 trace=INCOMING id=new/8 parent=CALLER state=\"vendor=a,other=b\" flags=769")),
        "{spans:#?}"
    );
    assert!(
        spans.iter().any(|s| s.starts_with("checkout kind=2 ")),
        "{spans:#?}"
    );
    assert!(
        spans
            .iter()
            .any(|s| s.contains("status=Some((2, \"\"))") && s.contains("response_flags=UH")),
        "{spans:#?}"
    );
    assert_eq!(
        resources,
        ["resource=[\"service.name=checkout\", \"telemetry.sdk.language=<language>\", \"telemetry.sdk.name=envoy\", \"telemetry.sdk.version=<true>\"] schema=\"\" scope=Some(\"envoy version=true attrs=0\") scope_schema=\"\""]
    );
    assert!(seen.contains(&"spans_sent=6".to_string()), "{seen:#?}");
}

#[test]
fn otlp_http_egress_spans_match_envoy() {
    let (seen, spans, _, _) = differential(Exporter::Http, true, false);
    assert!(
        seen.contains(&":method: POST, :path: /v1/traces, content-type: application/x-protobuf, host: collector.example:4318, user-agent: OTel-OTLP-Exporter-Envoy, x-token: secret".to_string()),
        "{seen:#?}"
    );
    // CLIENT spans; a 404 is an error on a client span.
    assert!(spans.iter().all(|s| s.contains(" kind=3 ")), "{spans:#?}");
    assert!(
        spans
            .iter()
            .any(|s| s.starts_with("egress other.example kind=3")
                && s.contains("status=Some((2, \"\"))")),
        "{spans:#?}"
    );
}

/// `spawn_upstream_span`: each attempt's CLIENT span is the upstream's parent, a child of
/// the request's span, which is a SERVER span even on an egress listener.
#[test]
fn attempt_spans_match_envoy() {
    for outbound in [false, true] {
        let (seen, spans, _, _) = differential(Exporter::Grpc, outbound, true);
        assert!(
            seen.iter()
                .any(|l| l.starts_with("new: status=200 traceparent=00-NEW-NEW-01")),
            "{seen:#?}"
        );
        assert_eq!(spans.len(), reported(true), "{spans:#?}");
        let attempts: Vec<&String> = spans
            .iter()
            .filter(|s| s.starts_with("router up egress kind=3 "))
            .collect();
        assert_eq!(attempts.len(), 4, "{spans:#?}");
        assert!(
            attempts.iter().all(|s| s.contains(" parent=OWN ")),
            "{spans:#?}"
        );
        assert!(
            spans
                .iter()
                .filter(|s| !s.starts_with("router "))
                .all(|s| s.contains(" kind=2 ")
                    && (s.contains("upstream_tp=Some(\"00-TRACE-ATTEMPT-01\")")
                        || s.contains("upstream_tp=None"))),
            "{spans:#?}"
        );
    }
}

#[test]
fn opentelemetry_settings_not_built_are_refused_by_path() {
    let addr: SocketAddr = "127.0.0.1:1".parse().expect("addr");
    let base = traced_bootstrap(addr, addr, Exporter::Grpc);
    assert_refused_by_path(
        &base,
        &[
        (
            "                service_name: checkout\n",
            "                service_name: checkout\n                sampler: { name: s, typed_config: { \"@type\": type.googleapis.com/google.protobuf.Struct, value: {} } }\n",
            "typed_config.sampler: not supported by Courier",
        ),
        (
            "                service_name: checkout\n",
            "                service_name: checkout\n                resource_detectors: [{ name: r, typed_config: { \"@type\": type.googleapis.com/google.protobuf.Struct, value: {} } }]\n",
            "typed_config.resource_detectors: not supported by Courier",
        ),
        (
            "                service_name: checkout\n",
            "                service_name: checkout\n                http_service: { http_uri: { uri: \"http://c/v1/traces\", cluster: otel, timeout: 1s } }\n",
            "OpenTelemetry Tracer must have exactly one of gRPC, HTTP, or custom exporter configured",
        ),
        (
            "random_sampling: { value: 50 }",
            "random_sampling: { value: 50 }\n            verbose: true",
            "tracing.verbose: not supported by Courier",
        ),
    ],
    );
}
