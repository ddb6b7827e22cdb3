//! `envoy.filters.http.grpc_stats` against a gRPC upstream, the same requests (HTTP/2 and
//! HTTP/1.1 clients) through Courier and Envoy 1.40 under each way of naming methods:
//! what the client gets back and every `cluster.<name>.grpc.*` counter.

mod http_support;

use http_support::*;

const STATS_TYPE: &str =
    "type.googleapis.com/envoy.extensions.filters.http.grpc_stats.v3.FilterConfig";

const ROUTES: &str = r#"            name: local
            virtual_hosts:
            - name: main
              domains: ["*"]
              routes:
              - match: { prefix: "/down." }
                route: { cluster: down }
              - match: { prefix: "/direct." }
                direct_response: { status: 200, body: { inline_string: "direct" } }
              - match: { prefix: "/" }
                route: { cluster: backend }
"#;

/// The filter with `fields` (YAML lines under its `typed_config`, indented by 14).
fn filter(fields: &str) -> String {
    format!(
        "          - name: envoy.filters.http.grpc_stats\n            typed_config:\n              \"@type\": {STATS_TYPE}\n{fields}"
    )
}

fn boot(up: std::net::SocketAddr, fields: &str) -> String {
    let clusters =
        cluster("backend", &[up], H2_CLUSTER) + &cluster("down", &[refusing_addr()], H2_CLUSTER);
    with_filters(&bootstrap(ROUTES, "", &clusters), &filter(fields))
}

/// The ways of naming methods the test runs.
const CONFIGS: &[(&str, &str)] = &[
    ("default", ""),
    (
        "all methods",
        "              stats_for_all_methods: true\n",
    ),
    (
        "all methods, dots replaced",
        "              stats_for_all_methods: true\n              replace_dots_in_grpc_service_name: true\n",
    ),
    (
        "allowlist",
        "              replace_dots_in_grpc_service_name: true\n              individual_method_stats_allowlist:\n                services:\n                - name: svc.Greeter\n                  method_names: [Echo, Many]\n                - name: svc.Other\n                  method_names: [Fail]\n",
    ),
];

/// One request: (name, HTTP/2 client, path, headers, body).
type Case = (
    &'static str,
    bool,
    &'static str,
    Vec<(&'static str, &'static str)>,
    Vec<u8>,
);

fn cases() -> Vec<Case> {
    let grpc = ("content-type", "application/grpc");
    let te = ("te", "trailers");
    let hello = grpc_frame(b"hello");
    let mut three = grpc_frame(b"a");
    three.extend(grpc_frame(b"bb"));
    three.extend(grpc_frame(b""));
    let mut with_garbage = grpc_frame(b"x");
    with_garbage.extend_from_slice(&[0x42, 0, 0, 0, 2, 7]);
    vec![
        (
            "h2 echo",
            true,
            "/svc.Greeter/Echo",
            vec![grpc, te],
            hello.clone(),
        ),
        (
            "h2 echo three messages",
            true,
            "/svc.Greeter/Echo",
            vec![grpc, te],
            three.clone(),
        ),
        (
            "h2 echo flagged frames",
            true,
            "/svc.Greeter/Echo",
            vec![grpc],
            with_garbage,
        ),
        (
            "h2 echo empty body",
            true,
            "/svc.Greeter/Echo",
            vec![grpc],
            vec![],
        ),
        (
            "h2 many",
            true,
            "/svc.Greeter/Many",
            vec![grpc],
            hello.clone(),
        ),
        (
            "h2 trailers-only",
            true,
            "/svc.Greeter/Fail",
            vec![grpc],
            hello.clone(),
        ),
        (
            "h2 trailers-only listed service",
            true,
            "/svc.Other/Fail",
            vec![grpc],
            hello.clone(),
        ),
        (
            "h2 error in trailers",
            true,
            "/svc.Greeter/Error",
            vec![grpc],
            hello.clone(),
        ),
        (
            "h2 garbage response",
            true,
            "/svc.Greeter/Garbage",
            vec![grpc],
            hello.clone(),
        ),
        (
            "h2 unknown method (404)",
            true,
            "/svc.Greeter/Nope",
            vec![grpc],
            hello.clone(),
        ),
        (
            "h2 other service",
            true,
            "/svc.Other/Echo",
            vec![grpc],
            hello.clone(),
        ),
        (
            "h2 grpc+proto",
            true,
            "/svc.Greeter/Echo",
            vec![("content-type", "application/grpc+proto")],
            hello.clone(),
        ),
        (
            "h2 query",
            true,
            "/svc.Greeter/Echo?x=1",
            vec![grpc],
            hello.clone(),
        ),
        (
            "h2 not a method path",
            true,
            "/svc.Greeter/Echo/more",
            vec![grpc],
            hello.clone(),
        ),
        (
            "h2 not grpc",
            true,
            "/svc.Greeter/Echo",
            vec![("content-type", "application/json")],
            hello.clone(),
        ),
        (
            "h2 grpc-web is not grpc",
            true,
            "/svc.Greeter/Echo",
            vec![("content-type", "application/grpc-web")],
            hello.clone(),
        ),
        (
            "h2 plain 503",
            true,
            "/plain.Svc/plain503",
            vec![grpc],
            hello.clone(),
        ),
        (
            "h2 plain 200",
            true,
            "/plain.Svc/plain200",
            vec![grpc],
            three.clone(),
        ),
        // No body: how much of one Envoy reads before the local reply depends on timing.
        (
            "h2 upstream down",
            true,
            "/down.Svc/Call",
            vec![grpc],
            vec![],
        ),
        (
            "h2 direct response",
            true,
            "/direct.Svc/Call",
            vec![grpc],
            hello.clone(),
        ),
        ("h1 echo", false, "/svc.Greeter/Echo", vec![grpc, te], three),
        (
            "h1 many",
            false,
            "/svc.Greeter/Many",
            vec![grpc],
            hello.clone(),
        ),
        (
            "h1 trailers-only",
            false,
            "/svc.Greeter/Fail",
            vec![grpc],
            hello.clone(),
        ),
        (
            "h1 error",
            false,
            "/svc.Greeter/Error",
            vec![grpc],
            hello.clone(),
        ),
        (
            "h1 upstream down",
            false,
            "/down.Svc/Call",
            vec![grpc],
            vec![],
        ),
        (
            "h1 not grpc",
            false,
            "/plain.Svc/plain200",
            vec![("content-type", "text/plain")],
            b"hi".to_vec(),
        ),
    ]
}

/// What response headers matter.
const RESPONSE_HEADERS: &[&str] = &["content-type", "grpc-status", "grpc-message"];

fn run(fields: &str, start: &dyn Fn(&str) -> Option<Courier>) -> Option<Vec<String>> {
    let (up, _) = grpc_upstream();
    let proxy = start(&boot(up, fields))?;
    let mut out = Vec::new();
    for (name, h2, path, headers, body) in cases() {
        let line = if h2 {
            match h2_call(proxy.listener, "POST", path, &headers, &body) {
                None => format!("{name}: no response"),
                Some(a) => {
                    let mut line = format!("{name}: {}", a.parts.status.as_u16());
                    for h in RESPONSE_HEADERS {
                        line += &format!(" {h}={:?}", a.parts.headers.get(*h));
                    }
                    line += &format!(" body={:?}", a.body);
                    if let Some(t) = &a.trailers {
                        for h in ["grpc-status", "grpc-message"] {
                            line += &format!(" trailer {h}={:?}", t.get(h));
                        }
                    }
                    line
                }
            }
        } else {
            let mut client = Client::connect(proxy.listener);
            let resp = client.request("POST", "x", path, &headers, &body);
            let mut line = format!("{name}: {}", resp.status);
            for h in RESPONSE_HEADERS {
                line += &format!(" {h}={:?}", resp.header(h));
            }
            line + &format!(" body={:?}", bytes::Bytes::from(resp.body))
        };
        eprintln!("{line}");
        out.push(line);
    }
    out.extend(stats_with(&proxy, ".grpc."));
    Some(out)
}

#[test]
fn grpc_calls_are_counted_as_envoy_counts_them() {
    for (config, fields) in CONFIGS {
        eprintln!("-- {config}");
        let courier = run(fields, &|b| Some(Courier::start(b))).expect("courier");
        if let Some(envoy) = run(fields, &Courier::start_envoy) {
            let differ: Vec<_> = courier.iter().zip(&envoy).filter(|(c, e)| c != e).collect();
            assert!(differ.is_empty(), "{config}: {differ:#?}");
            assert_eq!(
                courier.len(),
                envoy.len(),
                "{config}: {courier:#?}\n{envoy:#?}"
            );
        } else {
            eprintln!("no envoy on PATH: compared with nothing");
        }
        // The facts this test is about, whatever Envoy says.
        let has = |line: &str| courier.iter().any(|l| l == line);
        match *config {
            "default" => {
                assert!(has("cluster.backend.grpc.failure: 5"), "{courier:#?}");
                assert!(
                    has("cluster.backend.grpc.request_message_count: 25"),
                    "{courier:#?}"
                );
            }
            "all methods" => {
                assert!(
                    has("cluster.backend.grpc.svc.Greeter.Echo.0: 7"),
                    "{courier:#?}"
                );
                assert!(has("cluster.down.grpc.down.Svc.Call.14: 2"), "{courier:#?}");
            }
            "all methods, dots replaced" => {
                assert!(
                    has("cluster.backend.grpc.svc_Greeter.Many.response_message_count: 6"),
                    "{courier:#?}"
                );
            }
            _ => {
                assert!(
                    has("cluster.backend.grpc.svc.Other.Fail.7: 1"),
                    "{courier:#?}"
                );
                assert!(
                    !courier.iter().any(|l| l.contains("svc.Other.Echo")),
                    "{courier:#?}"
                );
            }
        }
    }
}

/// The Prometheus lines of the `.grpc.` `upstream_rq_time` histograms, once their counts add up to `want` (Envoy merges its
/// histograms at each stats flush); sorted.
fn upstream_time_lines(proxy: &Courier, want: u64) -> Vec<String> {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    loop {
        let prom = admin_get(proxy.admin, "/stats/prometheus").unwrap_or_default();
        let mut lines: Vec<String> = prom
            .lines()
            .filter(|l| {
                // A dotted service name's parts past the first stay in the name.
                l.starts_with("envoy_cluster_grpc_") && l.contains("_upstream_rq_time")
            })
            .map(str::to_string)
            .collect();
        lines.sort();
        let total: u64 = lines
            .iter()
            .filter(|l| l.contains("_upstream_rq_time_count"))
            .filter_map(|l| l.rsplit(' ').next()?.parse::<u64>().ok())
            .sum();
        if total >= want {
            return lines;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "{total} of {want} timed: {prom}"
        );
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
}

/// `enable_upstream_stats`: every counted request whose answer came from upstream and
/// ended in trailers or in its head is timed, per method as its counters are named, from
/// its request's end to that end; local replies and answers without trailers are not.
#[test]
fn upstream_round_trips_are_timed_as_envoy_times_them() {
    // Every call of `cases` that is counted and answered by the upstream with trailers or
    // headers only, and the slow one.
    const TIMED: u64 = 18;
    for (config, fields) in [CONFIGS[0], CONFIGS[1], CONFIGS[3]] {
        eprintln!("-- {config}");
        let fields = format!("{fields}              enable_upstream_stats: true\n");
        let run = |start: &dyn Fn(&str) -> Option<Courier>| -> Option<(Vec<String>, Vec<String>)> {
            let (up, _) = grpc_upstream();
            let b = format!("stats_flush_interval: 0.1s\n{}", boot(up, &fields));
            let proxy = start(&b)?;
            let mut answers = Vec::new();
            for (name, h2, path, headers, body) in cases() {
                let status = if h2 {
                    h2_call(proxy.listener, "POST", path, &headers, &body)
                        .map(|a| a.parts.status.as_u16())
                } else {
                    let mut client = Client::connect(proxy.listener);
                    Some(client.request("POST", "x", path, &headers, &body).status)
                };
                answers.push(format!("{name}: {status:?}"));
            }
            let grpc = [("content-type", "application/grpc")];
            let slow = h2_call(
                proxy.listener,
                "POST",
                "/svc.Greeter/Slow",
                &grpc,
                &grpc_frame(b"z"),
            )
            .map(|a| a.trailers.and_then(|t| t.get("grpc-status").cloned()));
            answers.push(format!("slow: {slow:?}"));
            let lines = upstream_time_lines(&proxy, TIMED);
            let counts: Vec<String> = lines
                .iter()
                .filter(|l| l.contains("_upstream_rq_time_count"))
                .cloned()
                .collect();
            answers.extend(counts);
            Some((answers, lines))
        };
        let (courier, lines) = run(&|b| Some(Courier::start(b))).expect("courier");
        // Cumulative buckets, all histograms: only the slow call is above 250 ms.
        let between_250_and_500 = |lines: &[String]| -> u64 {
            let bucket = |le: &str| -> u64 {
                lines
                    .iter()
                    .filter(|l| l.contains(&format!("le=\"{le}\"")))
                    .filter_map(|l| l.rsplit(' ').next()?.parse::<u64>().ok())
                    .sum()
            };
            bucket("500") - bucket("250")
        };
        assert_eq!(between_250_and_500(&lines), 1, "{lines:#?}");
        eprintln!("{courier:#?}");
        if let Some((envoy, envoy_lines)) = run(&Courier::start_envoy) {
            assert_eq!(courier, envoy, "{config}");
            assert_eq!(between_250_and_500(&envoy_lines), 1, "{envoy_lines:#?}");
        } else {
            eprintln!("no envoy on PATH: compared with nothing");
        }
        let total: u64 = courier
            .iter()
            .filter(|l| l.contains("_upstream_rq_time_count"))
            .filter_map(|l| l.rsplit(' ').next()?.parse::<u64>().ok())
            .sum();
        assert_eq!(total, TIMED, "{courier:#?}");
    }
}

#[test]
fn fields_courier_does_not_build_are_refused_by_path() {
    let (up, _) = grpc_upstream();
    let base = boot(up, "              stats_for_all_methods: false\n");
    // `emit_filter_state` (Istio and Contour set it) is taken: what it would emit no
    // part of Courier reads.
    let (code, stderr) = validate(&base.replacen(
        "stats_for_all_methods: false\n",
        "stats_for_all_methods: false\n              emit_filter_state: true\n",
        1,
    ));
    assert_eq!(code, Some(0), "{stderr}");
    // An allowlist's service needs a name and a method, in Envoy as in Courier.
    for bad in [
        "individual_method_stats_allowlist: { services: [ { name: s } ] }\n",
        "individual_method_stats_allowlist: { services: [ { method_names: [M] } ] }\n",
    ] {
        let b = base.replacen("stats_for_all_methods: false\n", bad, 1);
        let (code, stderr) = validate(&b);
        assert_eq!(code, Some(1), "{bad}: {stderr}");
        assert!(
            stderr.contains("individual_method_stats_allowlist.services[0]"),
            "{stderr}"
        );
        if let Some((code, text)) = envoy_validate(&b) {
            assert_ne!(code, Some(0), "envoy took {bad}: {text}");
        }
    }
}
