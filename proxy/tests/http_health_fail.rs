//! A server failing its health checks (`/healthcheck/fail`) drain-closes its HTTP
//! connections, and the health check filter answers for it, as Envoy's: every HTTP/1.1 response says `connection: close` and the
//! connection closes; an HTTP/2 connection gets GOAWAY. `/healthcheck/ok` ends it. Runs
//! through Courier and, when `envoy` is on PATH, through Envoy 1.40; the two must agree.

mod http_support;

use http_support::*;

/// HTTP/1.1 and HTTP/2 before, during and after a failed health check: whether each
/// response closed its connection, and `downstream_cx_drain_close`.
fn run(proxy: &Courier) -> Vec<String> {
    let mut out = Vec::new();
    let h1 = |label: &str, out: &mut Vec<String>| {
        let mut c = Client::connect(proxy.listener);
        let r = c.get("h", "/", &[]);
        // A connection said closed must be; one kept alive must take another request.
        let next = match r.header("connection") {
            Some("close") => format!("closed={}", c.closed()),
            _ => format!("then {}", c.get("h", "/", &[]).status),
        };
        out.push(format!(
            "{label} http/1.1: {} connection={:?} {next}",
            r.status,
            r.header("connection")
        ));
    };
    let h2 = |label: &str, out: &mut Vec<String>| {
        let listener = proxy.listener;
        let (status, goaway) = block_on(async move {
            let mut sender = h2_connect(listener).await;
            let (head, _, _) = h2_fetch(&mut sender, "/", "").await;
            // A GOAWAY closes the client's side of the connection.
            let goaway = sender.ready().await.is_err();
            (head.status.as_u16(), goaway)
        });
        out.push(format!("{label} http/2: {status} goaway={goaway}"));
    };
    h1("before", &mut out);
    h2("before", &mut out);
    out.push(format!(
        "fail: {:?}",
        admin_post(proxy.admin, "/healthcheck/fail")
    ));
    h1("failing", &mut out);
    h2("failing", &mut out);
    out.push(format!(
        "ok: {:?}",
        admin_post(proxy.admin, "/healthcheck/ok")
    ));
    h1("after", &mut out);
    h2("after", &mut out);
    out.push(format!(
        "downstream_cx_drain_close={}",
        proxy.stat("http.ingress.downstream_cx_drain_close")
    ));
    out
}

#[test]
fn failed_health_checks_drain_close_connections_like_envoy() {
    let a = Upstream::start("a");
    let boot = bootstrap(&all_to("a"), "", &cluster("a", &[a.addr], ""));
    let got = run(&Courier::start(&boot));
    if let Some(envoy) = Courier::start_envoy(&boot) {
        assert_eq!(run(&envoy), got, "envoy vs courier");
    }
    assert_eq!(
        got,
        [
            "before http/1.1: 200 connection=None then 200",
            "before http/2: 200 goaway=false",
            "fail: Some(200)",
            "failing http/1.1: 200 connection=Some(\"close\") closed=true",
            "failing http/2: 200 goaway=true",
            "ok: Some(200)",
            "after http/1.1: 200 connection=None then 200",
            "after http/2: 200 goaway=false",
            "downstream_cx_drain_close=2",
        ]
    );
}

/// The health check filter (`envoy.filters.http.health_check`) answering `/healthz`
/// itself, or passing it through, before and while the server fails its health checks.
#[test]
fn health_check_filter_matches_envoy() {
    let routes = "            name: local\n            virtual_hosts:\n            - name: main\n              domains: [\"*\"]\n              response_headers_to_add: [{ header: { key: x-vh, value: \"1\" } }]\n              routes:\n              - match: { prefix: \"/\" }\n                route: { cluster: a }\n";
    let filter = |pass_through: bool| {
        format!("          - name: envoy.filters.http.health_check\n            typed_config:\n              \"@type\": type.googleapis.com/envoy.extensions.filters.http.health_check.v3.HealthCheck\n              pass_through_mode: {pass_through}\n              headers: [{{ name: \":path\", string_match: {{ exact: \"/healthz\" }} }}]\n")
    };
    let run = |proxy: &Courier, a: &Upstream| {
        let mut out = Vec::new();
        let probe = |label: &str, path: &str, out: &mut Vec<String>| {
            let before = a.requests.load(std::sync::atomic::Ordering::SeqCst);
            let r = get(proxy.listener, "h", path, &[]);
            let upstream = a.requests.load(std::sync::atomic::Ordering::SeqCst) - before;
            let shown: Vec<String> = [
                "x-envoy-upstream-healthchecked-cluster",
                "x-envoy-immediate-health-check-fail",
                "x-vh",
                "connection",
            ]
            .iter()
            .filter_map(|n| r.header(n).map(|v| format!("{n}: {v}")))
            .collect();
            out.push(format!(
                "{label} {path}: {} {:?} upstream={upstream} {shown:?}",
                r.status,
                r.body_str()
            ));
        };
        probe("passing", "/healthz", &mut out);
        probe("passing", "/healthz?x=1", &mut out);
        probe("passing", "/x", &mut out);
        admin_post(proxy.admin, "/healthcheck/fail");
        probe("failing", "/healthz", &mut out);
        probe("failing", "/x", &mut out);
        admin_post(proxy.admin, "/healthcheck/ok");
        probe("passing again", "/healthz", &mut out);
        for c in ["request_total", "ok", "failed"] {
            let name = format!("http.ingress.health_check.{c}");
            out.push(format!("{name}={}", proxy.stat(&name)));
        }
        out
    };
    let mut got = Vec::new();
    for pass_through in [false, true] {
        let a = Upstream::start("a");
        let boot = |a: &Upstream| {
            with_filters(
                &bootstrap(routes, "", &cluster("a", &[a.addr], "")),
                &filter(pass_through),
            )
        };
        let args = ["--service-cluster", "svc"];
        let courier = run(&Courier::start_with(&boot(&a), &args), &a);
        let a = Upstream::start("a");
        if let Some(envoy) = Courier::start_envoy_with(&boot(&a), &args) {
            assert_eq!(run(&envoy, &a), courier, "envoy vs courier");
        }
        got.push(format!("pass_through_mode: {pass_through}"));
        got.extend(courier);
    }
    assert_eq!(
        got,
        [
            "pass_through_mode: false",
            "passing /healthz: 200 \"\" upstream=0 [\"x-envoy-upstream-healthchecked-cluster: svc\", \"x-vh: 1\"]",
            "passing /healthz?x=1: 200 \"a GET /healthz?x=1\" upstream=1 [\"x-vh: 1\"]",
            "passing /x: 200 \"a GET /x\" upstream=1 [\"x-vh: 1\"]",
            "failing /healthz: 503 \"\" upstream=0 [\"x-envoy-upstream-healthchecked-cluster: svc\", \"x-envoy-immediate-health-check-fail: true\", \"x-vh: 1\", \"connection: close\"]",
            "failing /x: 200 \"a GET /x\" upstream=1 [\"x-envoy-immediate-health-check-fail: true\", \"x-vh: 1\", \"connection: close\"]",
            "passing again /healthz: 200 \"\" upstream=0 [\"x-envoy-upstream-healthchecked-cluster: svc\", \"x-vh: 1\"]",
            "http.ingress.health_check.request_total=3",
            "http.ingress.health_check.ok=2",
            "http.ingress.health_check.failed=1",
            "pass_through_mode: true",
            "passing /healthz: 200 \"a GET /healthz\" upstream=1 [\"x-envoy-upstream-healthchecked-cluster: svc\", \"x-vh: 1\"]",
            "passing /healthz?x=1: 200 \"a GET /healthz?x=1\" upstream=1 [\"x-vh: 1\"]",
            "passing /x: 200 \"a GET /x\" upstream=1 [\"x-vh: 1\"]",
            "failing /healthz: 503 \"\" upstream=0 [\"x-envoy-upstream-healthchecked-cluster: svc\", \"x-envoy-immediate-health-check-fail: true\", \"x-vh: 1\", \"connection: close\"]",
            "failing /x: 200 \"a GET /x\" upstream=1 [\"x-envoy-immediate-health-check-fail: true\", \"x-vh: 1\", \"connection: close\"]",
            "passing again /healthz: 200 \"a GET /healthz\" upstream=1 [\"x-envoy-upstream-healthchecked-cluster: svc\", \"x-vh: 1\"]",
            "http.ingress.health_check.request_total=1",
            "http.ingress.health_check.ok=0",
            "http.ingress.health_check.failed=1",
        ]
    );
}
