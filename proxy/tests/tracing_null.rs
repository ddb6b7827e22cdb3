//! A connection manager's `tracing` without a provider (Istio with tracing on and no
//! collector): Envoy's null tracer. No span goes anywhere, but each request is still
//! decided on, its `x-request-id` marked with the decision, and the decision counted.
//! Each case runs through Courier and, when `envoy` is on PATH, through Envoy 1.40.

mod http_support;

use http_support::*;

fn bootstrap(up: std::net::SocketAddr, random: u32) -> String {
    bootstrap_with(
        &all_to("up"),
        &format!(
            "          tracing:\n            random_sampling: {{ value: {random} }}\n            client_sampling: {{ value: 100 }}\n            overall_sampling: {{ value: 100 }}\n            custom_tags: [{{ tag: mesh, literal: {{ value: m }} }}]\n"
        ),
        &cluster("up", &[up], ""),
    )
}

fn bootstrap_with(routes: &str, hcm: &str, clusters: &str) -> String {
    http_support::bootstrap(routes, hcm, clusters)
}

/// The request id's version digit the upstream saw (Envoy's mark of the decision: `4`
/// not traced, `9` sampled, `a` forced by the service, `b` by the client).
fn mark(proxy: &Courier, up: &Upstream, headers: &[(&str, &str)]) -> String {
    let r = Client::connect(proxy.listener).get("example.com", "/", headers);
    let id = up
        .last()
        .and_then(|s| s.header("x-request-id").map(str::to_owned))
        .unwrap_or_default();
    format!("{} mark={:?}", r.status, id.chars().nth(14))
}

fn run(proxy: &Courier, up: &Upstream) -> Vec<String> {
    let mut t = vec![
        mark(proxy, up, &[]),
        mark(proxy, up, &[("x-client-trace-id", "c1")]),
        mark(
            proxy,
            up,
            &[("x-request-id", "6b0d2f7e-3c1a-4b5e-9f00-1234567890ab")],
        ),
        mark(proxy, up, &[("x-envoy-force-trace", "true")]),
    ];
    for n in [
        "random_sampling",
        "client_enabled",
        "service_forced",
        "not_traceable",
    ] {
        let name = format!("http.ingress.tracing.{n}");
        t.push(format!("{name}={}", proxy.stat(&name)));
    }
    t
}

#[test]
fn without_a_provider_requests_are_decided_and_marked_as_envoy() {
    let up = Upstream::start("up");
    for random in [100, 0] {
        let b = bootstrap(up.addr, random);
        let courier = run(&Courier::start(&b), &up);
        for line in &courier {
            eprintln!("courier ({random}%): {line}");
        }
        let want_first = if random == 100 {
            "Some('9')"
        } else {
            "Some('4')"
        };
        assert!(courier[0].ends_with(want_first), "{}", courier[0]);
        assert!(courier[1].ends_with("Some('b')"), "{}", courier[1]);
        if let Some(envoy) = Courier::start_envoy(&b).map(|e| run(&e, &up)) {
            for line in &envoy {
                eprintln!("envoy   ({random}%): {line}");
            }
            assert_eq!(courier, envoy, "Courier (left) and Envoy (right) differ");
        }
    }
}
