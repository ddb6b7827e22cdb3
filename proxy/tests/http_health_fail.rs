//! A server failing its health checks (`/healthcheck/fail`) drain-closes its HTTP
//! connections, as Envoy's: every HTTP/1.1 response says `connection: close` and the
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
