//! Datadog tracing (`envoy.tracers.datadog`) as Envoy 1.40 (dd-trace-cpp) does it: the
//! Datadog and W3C trace context joined and sent upstream in both styles, every span
//! reported to the agent (`POST /v0.4/traces`, MessagePack) with its sampling priority,
//! the agent's rates taken from its answer, attempt spans (`spawn_upstream_span`) in
//! their request's trace chunk. A fake agent decodes what arrives; the same requests go
//! through Courier and, when `envoy` is on PATH, through Envoy, and the normalised spans
//! and upstream context must agree.

mod http_support;

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use http_support::*;

/// Every trace chunk the agent received (as JSON), and the headers of each report.
type Received = Arc<Mutex<(Vec<serde_json::Value>, Vec<HashMap<String, String>>)>>;

fn to_json(v: &rmpv::Value) -> serde_json::Value {
    use rmpv::Value as V;
    match v {
        V::Nil => serde_json::Value::Null,
        V::Boolean(b) => (*b).into(),
        V::Integer(i) => i
            .as_u64()
            .map(serde_json::Value::from)
            .or_else(|| i.as_i64().map(serde_json::Value::from))
            .unwrap_or_default(),
        V::F32(f) => f64::from(*f).into(),
        V::F64(f) => (*f).into(),
        V::String(s) => s.as_str().unwrap_or_default().into(),
        V::Array(a) => a.iter().map(to_json).collect(),
        V::Map(m) => serde_json::Value::Object(
            m.iter()
                .map(|(k, v)| (k.as_str().unwrap_or_default().to_string(), to_json(v)))
                .collect(),
        ),
        other => format!("{other:?}").into(),
    }
}

/// A Datadog agent: decodes trace reports and answers with `answer`.
fn agent(answer: &'static str) -> (std::net::SocketAddr, Received) {
    let got: Received = Arc::default();
    let keep = got.clone();
    let addr = http_collector(200, "application/json", answer.as_bytes(), move |posted| {
        if posted.path != "/v0.4/traces" {
            return;
        }
        let decoded = rmpv::decode::read_value(&mut &posted.body[..])
            .map(|v| to_json(&v))
            .unwrap_or_default();
        let mut g = keep.lock().expect("agent");
        if let serde_json::Value::Array(chunks) = decoded {
            g.0.extend(chunks);
        }
        g.1.push(posted.headers.into_iter().collect());
    });
    (addr, got)
}

fn traced_bootstrap(upstream: std::net::SocketAddr, agent: std::net::SocketAddr) -> String {
    let boot = bootstrap(
        "            name: local
            virtual_hosts:
            - name: main
              domains: [\"*\"]
              routes:
              - match: { prefix: \"/decorated\" }
                route: { cluster: up }
                decorator: { operation: checkout-op }
              - match: { prefix: \"/\" }
                route: { cluster: up }
",
        "          tracing:
            random_sampling: { value: 50 }
            spawn_upstream_span: true
            custom_tags:
            - { tag: team, literal: { value: payments } }
            provider:
              name: envoy.tracers.datadog
              typed_config:
                \"@type\": type.googleapis.com/envoy.config.trace.v3.DatadogConfig
                collector_cluster: dd
                service_name: checkout
",
        &format!(
            "{}{}",
            cluster("up", &[upstream], ""),
            cluster("dd", &[agent], "")
        ),
    );
    format!("node: {{ id: node-1, cluster: checkout-svc }}\n{boot}")
}

/// A request id whose sampling pivot is `pivot` (under `random_sampling: 50`, pivots
/// below 5000 are traced), numbered `n`.
fn rid(pivot: u32, n: u32) -> String {
    format!("{pivot:08x}-0000-4000-8000-{n:012x}")
}

const W3C: &str = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";

/// The requests: path and headers (a request id first).
fn requests() -> Vec<(&'static str, Vec<(&'static str, String)>)> {
    let dd = |prio: &str| {
        vec![
            ("x-datadog-trace-id", "1234567890".to_string()),
            ("x-datadog-parent-id", "987654321".to_string()),
            ("x-datadog-sampling-priority", prio.to_string()),
        ]
    };
    let with = |mut v: Vec<(&'static str, String)>, more: Vec<(&'static str, String)>| {
        v.extend(more);
        v
    };
    vec![
        ("/new", vec![("x-request-id", rid(1, 1))]),
        ("/not-traced", vec![("x-request-id", rid(9999, 2))]),
        ("/dd", with(vec![("x-request-id", rid(3, 3))], dd("1"))),
        (
            "/dd-keep-not-traced",
            with(vec![("x-request-id", rid(9999, 4))], dd("2")),
        ),
        ("/dd-drop", with(vec![("x-request-id", rid(5, 5))], dd("0"))),
        (
            "/dd-origin-tags",
            with(
                vec![("x-request-id", rid(6, 6))],
                with(
                    dd("1"),
                    vec![
                        ("x-datadog-origin", "synthetics".to_string()),
                        (
                            "x-datadog-tags",
                            "_dd.p.dm=-4,_dd.p.usr=abc,other=1".to_string(),
                        ),
                    ],
                ),
            ),
        ),
        (
            "/w3c",
            vec![
                ("x-request-id", rid(7, 7)),
                ("traceparent", W3C.to_string()),
                (
                    "tracestate",
                    "dd=s:2;p:0123456789abcdef;t.dm:-3,other=x".to_string(),
                ),
            ],
        ),
        (
            "/w3c-bare",
            vec![
                ("x-request-id", rid(8, 8)),
                ("traceparent", W3C.to_string()),
            ],
        ),
        ("/status/503", vec![("x-request-id", rid(9, 9))]),
        ("/decorated", vec![("x-request-id", rid(10, 10))]),
    ]
}

/// What one run produced, normalised: what the upstream saw per request, the reported
/// spans, and the agent-facing facts.
type Run = (Vec<String>, Vec<String>, Vec<String>);

fn run(start: &dyn Fn(&str) -> Option<Courier>) -> Option<Run> {
    let up = Upstream::start("up");
    let (agent_addr, got) = agent(r#"{"rate_by_service":{"service:,env:":1}}"#);
    let proxy = start(&traced_bootstrap(up.addr, agent_addr))?;
    let mut seen = Vec::new();
    for (i, (path, headers)) in requests().into_iter().enumerate() {
        let hs: Vec<(&str, &str)> = headers.iter().map(|(k, v)| (*k, v.as_str())).collect();
        let r = get(proxy.listener, "shop", path, &hs);
        seen.push((path, r.status, up.last().expect("upstream saw it")));
        if i == 0 {
            // The first report's answer gives the agent's rate: later new traces use it.
            let deadline = Instant::now() + Duration::from_secs(15);
            while got.lock().expect("agent").1.is_empty() {
                assert!(Instant::now() < deadline, "no report reached the agent");
                std::thread::sleep(Duration::from_millis(20));
            }
        }
    }
    // Ten requests' spans and nine attempts' (the request not traced still reports).
    let deadline = Instant::now() + Duration::from_secs(15);
    let count = |g: &Received| -> usize {
        g.lock()
            .expect("agent")
            .0
            .iter()
            .map(|c| c.as_array().map_or(0, Vec::len))
            .sum()
    };
    while count(&got) < 20 {
        assert!(
            Instant::now() < deadline,
            "spans never reached the agent: {}",
            count(&got)
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    let (chunks, reports) = got.lock().expect("agent").clone();
    let str_of = |v: &serde_json::Value| match v {
        serde_json::Value::String(s) => s.clone(),
        other => other.to_string(),
    };
    // Labels for ids: a request's span `D(path)`, its attempt's `A(path)`.
    let mut names: HashMap<String, String> = HashMap::new();
    names.insert("987654321".into(), "CALLER".into());
    names.insert("1234567890".into(), "CALLER-TRACE".into());
    names.insert(
        u64::from_str_radix("00f067aa0ba902b7", 16)
            .expect("hex")
            .to_string(),
        "W3C-CALLER".into(),
    );
    names.insert(
        u64::from_str_radix("a3ce929d0e0e4736", 16)
            .expect("hex")
            .to_string(),
        "W3C-TRACE".into(),
    );
    // A chunk's spans are its request's: the path is its first span's.
    let path_of = |chunk: &serde_json::Value| {
        str_of(&chunk[0]["meta"]["http.url"]).replace("http://shop", "")
    };
    for chunk in &chunks {
        for s in chunk.as_array().into_iter().flatten() {
            let path = path_of(chunk);
            let label = if str_of(&s["resource"]).starts_with("router ") {
                format!("A({path})")
            } else {
                format!("D({path})")
            };
            names.insert(str_of(&s["span_id"]), label.clone());
            // A new trace's id is its root span's.
            names
                .entry(str_of(&s["trace_id"]))
                .or_insert(format!("T({path})"));
        }
    }
    let name = |id: &str| names.get(id).cloned().unwrap_or_else(|| format!("?{id}"));
    let port = up.addr.port().to_string();
    let tid_shape = |v: &str| {
        if v.len() == 16 && v.ends_with("00000000") {
            "TIME00000000".to_string()
        } else {
            v.to_string()
        }
    };
    let mut spans: Vec<String> = chunks
        .iter()
        .flat_map(|chunk| {
            let chunk_line: Vec<String> = chunk
                .as_array()
                .into_iter()
                .flatten()
                .map(|s| {
                    let mut meta: Vec<String> = s["meta"]
                        .as_object()
                        .cloned()
                        .unwrap_or_default()
                        .into_iter()
                        .map(|(k, v)| {
                            let v = str_of(&v);
                            let v = match k.as_str() {
                                "runtime-id" => format!("<{}>", v.len()),
                                "version" | "language" => "<own>".to_string(),
                                "guid:x-request-id" => "RID".to_string(),
                                "_dd.p.tid" => tid_shape(&v),
                                _ => v.replace(&port, "UP"),
                            };
                            format!("{k}={v}")
                        })
                        .collect();
                    meta.sort();
                    let mut metrics: Vec<String> = s["metrics"]
                        .as_object()
                        .cloned()
                        .unwrap_or_default()
                        .into_iter()
                        .map(|(k, v)| match k.as_str() {
                            "process_id" => k,
                            _ => format!("{k}={v}"),
                        })
                        .collect();
                    metrics.sort();
                    format!(
                        "{} trace={} parent={} service={} name={} resource={} type={} error={} times_ok={} meta={meta:?} metrics={metrics:?}",
                        name(&str_of(&s["span_id"])),
                        name(&str_of(&s["trace_id"])),
                        match str_of(&s["parent_id"]).as_str() {
                            "0" => "0".to_string(),
                            p => name(p),
                        },
                        str_of(&s["service"]),
                        str_of(&s["name"]),
                        str_of(&s["resource"]),
                        str_of(&s["type"]),
                        s["error"],
                        s["start"].as_u64().is_some_and(|v| v > 0) && s["duration"].as_u64().is_some(),
                    )
                })
                .collect();
            // One chunk per request: its span first, then its attempts'.
            vec![chunk_line.join("  |  ")]
        })
        .collect();
    spans.sort();
    let upstream_saw = seen
        .iter()
        .map(|(path, status, s)| {
            let h = |n: &str| s.header(n).unwrap_or("").to_string();
            let hex_name = |x: &str| {
                u64::from_str_radix(x, 16)
                    .map(|v| name(&v.to_string()))
                    .unwrap_or_else(|_| x.to_string())
            };
            let tp: Vec<String> = h("traceparent")
                .split('-')
                .enumerate()
                .map(|(i, p)| match i {
                    1 if p.len() == 32 => format!("{}{}", tid_shape(&p[..16]), hex_name(&p[16..])),
                    2 => hex_name(p),
                    _ => p.to_string(),
                })
                .collect();
            let tags = h("x-datadog-tags")
                .split(',')
                .map(|t| match t.split_once('=') {
                    Some(("_dd.p.tid", v)) => format!("_dd.p.tid={}", tid_shape(v)),
                    _ => t.to_string(),
                })
                .collect::<Vec<_>>()
                .join(",");
            let state: Vec<String> = h("tracestate")
                .split(';')
                .map(|f| match f.strip_prefix("p:") {
                    Some(p) => format!("p:{}", hex_name(p)),
                    None => f.to_string(),
                })
                .collect();
            format!(
                "{path} {status} trace={} parent={} priority={} origin={:?} tags={tags} traceparent={} tracestate={}",
                name(&h("x-datadog-trace-id")),
                name(&h("x-datadog-parent-id")),
                h("x-datadog-sampling-priority"),
                s.header("x-datadog-origin"),
                tp.join("-"),
                state.join(";"),
            )
        })
        .collect();
    let mut facts: Vec<String> = reports
        .iter()
        .map(|h| {
            format!(
                "content-type={:?} host={:?} count={}",
                h.get("content-type"),
                h.get("host"),
                h.get("x-datadog-trace-count").is_some()
            )
        })
        .collect();
    facts.dedup();
    facts.push(format!(
        "reports_sent>0={}",
        proxy.wait_stat("tracing.datadog.reports_sent", 1) > 0
    ));
    Some((upstream_saw, spans, facts))
}

#[test]
fn datadog_spans_and_context_match_envoy() {
    let got = run(&|b| Some(Courier::start(b))).expect("courier starts");
    if let Some(envoy) = run(&|b| Courier::start_envoy(b)) {
        assert_eq!(envoy, got, "envoy vs courier");
    }
    let (saw, spans, facts) = &got;
    let line = |p: &str| {
        saw.iter()
            .find(|l| l.starts_with(&format!("{p} ")))
            .cloned()
            .unwrap_or_default()
    };
    // A new trace: 128-bit, the attempt's span is the upstream's parent, both styles.
    assert!(
        line("/new").contains("trace=D(/new) parent=A(/new) priority=1"),
        "{saw:#?}"
    );
    assert!(
        line("/new").contains("tags=_dd.p.tid=TIME00000000,_dd.p.dm=-0"),
        "{saw:#?}"
    );
    // Not traced by the connection manager: USER_DROP, still sent upstream.
    assert!(line("/not-traced").contains("priority=-1"), "{saw:#?}");
    // The caller's priority is kept whatever the decision.
    assert!(
        line("/dd-keep-not-traced").contains("priority=2"),
        "{saw:#?}"
    );
    assert!(line("/dd-drop").contains("priority=0"), "{saw:#?}");
    // After the agent's answer, its rate decides.
    assert!(
        line("/status/503").contains("_dd.p.dm=-1,_dd.p.ksr=1"),
        "{saw:#?}"
    );
    assert!(
        line("/w3c").contains("tracestate=dd=s:2;p:A(/w3c);t.dm:-3,other=x"),
        "{saw:#?}"
    );
    assert_eq!(spans.len(), 10, "{spans:#?}");
    assert!(
        spans
            .iter()
            .any(|s| s.starts_with("D(/status/503) ") && s.contains(" error=1 ")),
        "{spans:#?}"
    );
    assert!(
        spans.iter().any(|s| s.contains("resource=checkout-op")),
        "{spans:#?}"
    );
    assert!(
        facts.iter().any(|f| f == "reports_sent>0=true"),
        "{facts:?}"
    );
}

#[test]
fn datadog_settings_not_built_are_refused_by_path() {
    let addr: std::net::SocketAddr = "127.0.0.1:1".parse().expect("addr");
    let base = traced_bootstrap(addr, addr);
    assert_refused_by_path(
        &base,
        &[
            (
                "                service_name: checkout\n",
                "                service_name: checkout\n                remote_config: {}\n",
                "typed_config.remote_config: not supported by Courier",
            ),
            (
                "                service_name: checkout\n",
                "                service_name: \"\"\n",
                "typed_config.service_name",
            ),
        ],
    );
}
