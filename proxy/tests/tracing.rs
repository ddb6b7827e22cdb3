//! Zipkin tracing as Envoy 1.40 does it: the sampling decision marked in `x-request-id`,
//! B3 context joined and sent upstream, one server span per request (shared with the
//! caller's span), tags, custom tags, route decorators, and Zipkin v2 JSON reports
//! batched to the collector cluster. A real collector (an HTTP server decoding the
//! reports) receives the spans of the same requests through Courier and, when `envoy` is
//! on PATH, through Envoy; what they report must agree.

mod http_support;

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use http_support::*;

/// A Zipkin collector: every span posted to it.
fn collector() -> (std::net::SocketAddr, Arc<Mutex<Vec<serde_json::Value>>>) {
    let spans: Arc<Mutex<Vec<serde_json::Value>>> = Arc::default();
    let keep = spans.clone();
    let addr = http_collector(202, "application/json", b"", move |posted| {
        if posted.path == "/api/v2/spans" {
            if let Ok(serde_json::Value::Array(list)) = serde_json::from_slice(&posted.body) {
                keep.lock().expect("spans").extend(list);
            }
        }
    });
    (addr, spans)
}

fn traced_bootstrap(upstream: std::net::SocketAddr, zipkin: std::net::SocketAddr) -> String {
    let boot = bootstrap(
        "            name: local
            virtual_hosts:
            - name: main
              domains: [\"*\"]
              routes:
              - match: { prefix: \"/flaky\" }
                route: { cluster: up, retry_policy: { retry_on: 5xx, num_retries: 2 } }
              - match: { prefix: \"/decorated\" }
                route: { cluster: up }
                decorator: { operation: checkout }
              - match: { prefix: \"/\" }
                route: { cluster: up }
",
        "          tracing:
            random_sampling: { value: 100 }
            custom_tags:
            - { tag: team, literal: { value: payments } }
            - { tag: tenant, request_header: { name: x-tenant, default_value: none } }
            provider:
              name: envoy.tracers.zipkin
              typed_config:
                \"@type\": type.googleapis.com/envoy.config.trace.v3.ZipkinConfig
                collector_cluster: zipkin
                collector_endpoint: /api/v2/spans
                collector_endpoint_version: HTTP_JSON
",
        &format!(
            "{}{}",
            cluster("up", &[upstream], ""),
            cluster("zipkin", &[zipkin], "")
        ),
    );
    format!(
        "node: {{ id: node-1, cluster: checkout-svc, locality: {{ zone: zone-a }} }}
layered_runtime:
  layers:
  - name: base
    static_layer: {{ tracing.zipkin.min_flush_spans: 1 }}
{boot}"
    )
}

/// The spans of one run, normalised (ids replaced by their relations), and what the
/// upstream saw of the trace context.
fn run(
    start: &dyn Fn(&str) -> Option<Courier>,
    outbound: bool,
) -> Option<(Vec<String>, Vec<String>, Vec<String>)> {
    let up = Upstream::start("up");
    let (zipkin, spans) = collector();
    let mut boot = traced_bootstrap(up.addr, zipkin);
    if outbound {
        boot = boot.replacen(
            "  - name: http\n",
            "  - name: http\n    traffic_direction: OUTBOUND\n",
            1,
        );
    }
    let proxy = start(&boot)?;
    let mut seen = Vec::new();
    let b3 = |s: &Seen| {
        let h = |n: &str| s.header(n).map(str::to_string).unwrap_or_default();
        let id = h("x-request-id");
        format!(
            "traceid={} spanid={} parent={} sampled={} rid-mark={} decorator={:?} b3={}",
            h("x-b3-traceid").len(),
            match h("x-b3-spanid") {
                id if id == h("x-b3-traceid") => "=traceid".to_string(),
                id if id == "a2fb4a1d1a96d312" => id,
                // A span id of its own: random, so only its existence is compared.
                _ => "new".to_string(),
            },
            h("x-b3-parentspanid"),
            h("x-b3-sampled"),
            id.chars().nth(14).unwrap_or(' '),
            s.header("x-envoy-decorator-operation"),
            // The single header: its span id (random for a new span) made stable.
            h("b3")
                .replace("a2fb4a1d1a96d312", "CALLER")
                .split('-')
                .enumerate()
                .map(|(i, p)| if i == 1 && p != "CALLER" { "new" } else { p })
                .collect::<Vec<_>>()
                .join("-")
        )
    };
    let r = get(
        proxy.listener,
        "shop",
        "/a?q=1",
        &[("user-agent", "agent/1"), ("x-tenant", "acme")],
    );
    assert_eq!(r.status, 200);
    seen.push(format!("a: {}", b3(&up.last().expect("a seen"))));
    get(
        proxy.listener,
        "shop",
        "/b",
        &[
            ("x-b3-traceid", "463ac35c9f6413ad48485a3953bb6124"),
            ("x-b3-spanid", "a2fb4a1d1a96d312"),
            ("x-b3-parentspanid", "0020000000000001"),
            ("x-b3-sampled", "1"),
        ],
    );
    seen.push(format!("b: {}", b3(&up.last().expect("b seen"))));
    get(proxy.listener, "shop", "/c", &[("x-b3-sampled", "0")]);
    seen.push(format!("c: {}", b3(&up.last().expect("c seen"))));
    get(
        proxy.listener,
        "shop",
        "/single",
        &[("b3", "463ac35c9f6413ad-a2fb4a1d1a96d312-1")],
    );
    seen.push(format!("single: {}", b3(&up.last().expect("single seen"))));
    let r = get(proxy.listener, "shop", "/decorated", &[]);
    seen.push(format!(
        "decorated: {} response decorator={:?}",
        b3(&up.last().expect("decorated seen")),
        r.header("x-envoy-decorator-operation")
    ));
    // Four spans are sampled (the one with `x-b3-sampled: 0` is not).
    let deadline = Instant::now() + Duration::from_secs(15);
    while spans.lock().expect("spans").len() < 4 {
        assert!(
            Instant::now() < deadline,
            "spans never reached the collector"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    let mut normalised: Vec<String> = spans
        .lock()
        .expect("spans")
        .iter()
        .map(|s| {
            let tags = s["tags"].as_object().cloned().unwrap_or_default();
            let tag = |k: &str| tags.get(k).and_then(|v| v.as_str()).unwrap_or("").to_string();
            let mut keys: Vec<&String> = tags.keys().collect();
            keys.sort();
            format!(
                "{} kind={} shared={} trace={} id={} parent={} local={}/{} url={} method={} status={} cluster={} ua={} team={} tenant={} flags={} proto={} node={} zone={} keys={:?}",
                s["name"].as_str().unwrap_or(""),
                s["kind"].as_str().unwrap_or(""),
                s["shared"],
                s["traceId"].as_str().map_or(0, str::len),
                match s["id"].as_str().unwrap_or("") {
                    id if Some(id) == s["traceId"].as_str() => "=trace".to_string(),
                    "a2fb4a1d1a96d312" => "a2fb4a1d1a96d312".to_string(),
                    // A span id of its own: random, so only its existence is compared.
                    _ => "new".to_string(),
                },
                s["parentId"].as_str().unwrap_or("-"),
                s["localEndpoint"]["serviceName"].as_str().unwrap_or(""),
                s["localEndpoint"]["port"],
                tag("http.url").replace(&proxy.listener.port().to_string(), "PORT"),
                tag("http.method"),
                tag("http.status_code"),
                tag("upstream_cluster"),
                tag("user_agent"),
                tag("team"),
                tag("tenant"),
                tag("response_flags"),
                tag("http.protocol"),
                tag("node_id"),
                tag("zone"),
                keys
            )
        })
        .collect();
    normalised.sort();
    let stats = vec![
        format!(
            "spans_sent={}",
            proxy.wait_stat("tracing.zipkin.spans_sent", 4)
        ),
        format!(
            "random_sampling={}",
            proxy.stat("http.ingress.tracing.random_sampling")
        ),
        format!(
            "not_traceable={}",
            proxy.stat("http.ingress.tracing.not_traceable")
        ),
    ];
    Some((seen, normalised, stats))
}

#[test]
fn zipkin_spans_and_b3_context_match_envoy() {
    let got = run(&|b| Some(Courier::start(b)), false).expect("courier starts");
    if let Some(envoy) = run(&|b| Courier::start_envoy(b), false) {
        assert_eq!(envoy, got, "envoy vs courier");
    }
    let (seen, spans, stats) = &got;
    assert_eq!(
        seen[0],
        "a: traceid=16 spanid==traceid parent= sampled=1 rid-mark=9 decorator=None b3="
    );
    assert_eq!(
        seen[1],
        "b: traceid=32 spanid=a2fb4a1d1a96d312 parent=0020000000000001 sampled=1 rid-mark=9 decorator=None b3="
    );
    assert!(seen[2].contains("sampled=0"), "{seen:?}");
    assert!(
        seen[4].ends_with("response decorator=Some(\"checkout\")"),
        "{seen:?}"
    );
    assert_eq!(
        seen[3],
        "single: traceid=0 spanid==traceid parent= sampled= rid-mark=9 decorator=None b3=463ac35c9f6413ad-CALLER-1"
    );
    assert_eq!(spans.len(), 4, "{spans:#?}");
    assert!(
        spans
            .iter()
            .any(|s| s.starts_with("checkout kind=SERVER shared=true")),
        "{spans:#?}"
    );
    assert!(
        spans
            .iter()
            .any(|s| s.contains("team=payments tenant=acme")),
        "{spans:#?}"
    );
    assert_eq!(stats[0], "spans_sent=4");
}

#[test]
fn tracing_settings_not_built_are_refused_by_path() {
    let (up, zipkin) = (
        "127.0.0.1:1".parse().expect("addr"),
        "127.0.0.1:2".parse().expect("addr"),
    );
    let base = traced_bootstrap(up, zipkin);
    assert_refused_by_path(
        &base,
        &[
        (
            "collector_endpoint_version: HTTP_JSON",
            "collector_endpoint_version: HTTP_PROTO",
            "collector_endpoint_version (only HTTP_JSON)",
        ),
        (
            "name: envoy.tracers.zipkin\n              typed_config:\n                \"@type\": type.googleapis.com/envoy.config.trace.v3.ZipkinConfig\n                collector_cluster: zipkin\n                collector_endpoint: /api/v2/spans\n                collector_endpoint_version: HTTP_JSON",
            "name: envoy.tracers.skywalking\n              typed_config:\n                \"@type\": type.googleapis.com/envoy.config.trace.v3.SkyWalkingConfig\n                grpc_service: { envoy_grpc: { cluster_name: zipkin } }",
            "tracing.provider: Didn't find a registered implementation",
        ),
        (
            "random_sampling: { value: 100 }",
            "random_sampling: { value: 100 }\n            verbose: true",
            "tracing.verbose: not supported by Courier",
        ),
        (
            "decorator: { operation: checkout }",
            "tracing: { random_sampling: { numerator: 1 } }",
            "routes[1].tracing: not supported by Courier",
        ),
    ],
    );
}

#[test]
fn egress_spans_on_an_outbound_listener_match_envoy() {
    let got = run(&|b| Some(Courier::start(b)), true).expect("courier starts");
    if let Some(envoy) = run(&|b| Courier::start_envoy(b), true) {
        assert_eq!(envoy, got, "envoy vs courier");
    }
    let (seen, spans, _) = &got;
    assert!(
        spans.iter().all(|s| s.contains(" kind=CLIENT ")),
        "{spans:#?}"
    );
    assert!(seen[4].contains("decorator=Some(\"checkout\")"), "{seen:?}");
}

/// What the upstream saw of the trace context and the spans reported, with
/// `spawn_upstream_span`: ids replaced by what they name (`D(/a)` the request's span,
/// `A0(/a)` its first attempt's, `CALLER` the caller's), random values by placeholders.
fn upstream_span_run(
    start: &dyn Fn(&str) -> Option<Courier>,
    outbound: bool,
) -> Option<(Vec<String>, Vec<String>)> {
    let up = Upstream::start("up");
    let (zipkin, spans) = collector();
    let mut boot = traced_bootstrap(up.addr, zipkin).replace(
        "random_sampling: { value: 100 }",
        "random_sampling: { value: 100 }\n            spawn_upstream_span: true",
    );
    if outbound {
        boot = boot.replacen(
            "  - name: http\n",
            "  - name: http\n    traffic_direction: OUTBOUND\n",
            1,
        );
    }
    let proxy = start(&boot)?;
    let caller: &[(&str, &str)] = &[
        ("x-b3-traceid", "463ac35c9f6413ad48485a3953bb6124"),
        ("x-b3-spanid", "a2fb4a1d1a96d312"),
        ("x-b3-sampled", "1"),
    ];
    let single: &[(&str, &str)] = &[("b3", "463ac35c9f6413ad-a2fb4a1d1a96d312-1")];
    let grpc: &[(&str, &str)] = &[("content-type", "application/grpc"), ("grpc-timeout", "5S")];
    // A plain request, one joining the caller's trace, one retried after a 503, one
    // whose upstream resets, one with the single `b3` header, gRPC ones answered
    // UNAVAILABLE (a server failure) and NOT_FOUND (not one).
    let requests: [(&str, &[(&str, &str)]); 7] = [
        ("/a", &[("x-client-trace-id", "client-1")]),
        ("/b", caller),
        ("/flaky/1", &[]),
        ("/close", &[]),
        ("/single", single),
        ("/flaky-header/9/grpc-status=14", grpc),
        ("/flaky-header/9/grpc-status=5", grpc),
    ];
    let mut seen = Vec::new();
    for (path, headers) in requests {
        let before = up.seen.lock().expect("seen").len();
        let r = get(proxy.listener, "shop", path, headers);
        let got: Vec<Seen> = up.seen.lock().expect("seen")[before..].to_vec();
        seen.push((path, r.status, got));
    }
    // Seven requests' spans and eight attempts'.
    let deadline = Instant::now() + Duration::from_secs(15);
    while spans.lock().expect("spans").len() < 15 {
        assert!(
            Instant::now() < deadline,
            "spans never reached the collector"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    let spans = spans.lock().expect("spans").clone();
    let tag = |s: &serde_json::Value, k: &str| s["tags"][k].as_str().unwrap_or("").to_string();
    let path_of = |s: &serde_json::Value| tag(s, "http.url").replace("http://shop", "");
    let mut names: std::collections::HashMap<String, String> = Default::default();
    names.insert("a2fb4a1d1a96d312".into(), "CALLER".into());
    let str_of = |v: &serde_json::Value| v.as_str().unwrap_or("").to_string();
    let downstream: Vec<&serde_json::Value> = spans
        .iter()
        .filter(|s| !str_of(&s["name"]).starts_with("router "))
        .collect();
    for d in &downstream {
        names.insert(str_of(&d["id"]), format!("D({})", path_of(d)));
    }
    for s in spans
        .iter()
        .filter(|s| str_of(&s["name"]).starts_with("router "))
    {
        let parent = downstream
            .iter()
            .find(|d| d["id"] == s["parentId"] && d["traceId"] == s["traceId"])
            .map(|d| path_of(d))
            .unwrap_or_default();
        let retry = tag(s, "retry.count");
        names.insert(
            str_of(&s["id"]),
            format!("A{}({parent})", if retry.is_empty() { "0" } else { &retry }),
        );
    }
    let name = |id: &str| names.get(id).cloned().unwrap_or_else(|| id.to_string());
    let port = up.addr.port().to_string();
    let mut reported: Vec<String> = spans
        .iter()
        .map(|s| {
            let mut tags: Vec<String> = s["tags"]
                .as_object()
                .cloned()
                .unwrap_or_default()
                .into_iter()
                .map(|(k, v)| {
                    let v = match k.as_str() {
                        "guid:x-request-id" => "RID".to_string(),
                        _ => str_of(&v).replace(&port, "UP"),
                    };
                    format!("{k}={v}")
                })
                .collect();
            tags.sort();
            format!(
                "{} name={} kind={} shared={} parent={} trace={} {}",
                name(&str_of(&s["id"])),
                str_of(&s["name"]),
                str_of(&s["kind"]),
                s["shared"],
                name(&str_of(&s["parentId"])),
                str_of(&s["traceId"]).len(),
                tags.join(" ")
            )
        })
        .collect();
    reported.sort();
    let upstream_saw = seen
        .iter()
        .map(|(path, status, got)| {
            let ctx: Vec<String> = got
                .iter()
                .map(|s| {
                    let h = |n: &str| s.header(n).unwrap_or("").to_string();
                    let b3: Vec<String> = h("b3").split('-').map(&name).collect();
                    format!(
                        "span={} parent={} sampled={} b3={}",
                        name(&h("x-b3-spanid")),
                        name(&h("x-b3-parentspanid")),
                        h("x-b3-sampled"),
                        b3.join("-")
                    )
                })
                .collect();
            format!("{path} {status} {ctx:?}")
        })
        .collect();
    Some((upstream_saw, reported))
}

#[test]
fn upstream_spans_match_envoy() {
    for outbound in [false, true] {
        let got = upstream_span_run(&|b| Some(Courier::start(b)), outbound).expect("courier");
        if let Some(envoy) = upstream_span_run(&|b| Courier::start_envoy(b), outbound) {
            assert_eq!(envoy, got, "envoy vs courier (outbound: {outbound})");
        }
        let (saw, spans) = &got;
        assert!(
            saw[2].contains("span=A0(/flaky/1) parent=D(/flaky/1)")
                && saw[2].contains("span=A1(/flaky/1) parent=D(/flaky/1)"),
            "{saw:?}"
        );
        assert!(
            spans.iter().any(
                |s| s.starts_with("A0(/close) name=router up egress kind=CLIENT")
                    && s.contains("error.reason=connection termination")
                    && s.contains("response_flags=UC")
            ),
            "{spans:#?}"
        );
        assert!(
            spans
                .iter()
                .any(|s| s.starts_with("A1(/flaky/1)") && s.contains("retry.count=1")),
            "{spans:#?}"
        );
        assert!(
            spans
                .iter()
                .any(|s| s.starts_with("D(/a) name=shop kind=SERVER")
                    && s.contains("guid:x-client-trace-id=client-1")),
            "{spans:#?}"
        );
        assert!(
            spans
                .iter()
                .any(|s| s.starts_with("D(/flaky-header/9/grpc-status=14)")
                    && s.contains("error=true")
                    && s.contains("grpc.status_code=14")
                    && s.contains("grpc.timeout=5S")),
            "{spans:#?}"
        );
    }
}
