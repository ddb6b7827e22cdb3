//! The admin's operational endpoints: `/logging` (levels per logger, taking effect),
//! `/reset_counters`, `/memory`, `/hot_restart_version` and `/init_dump`, compared with
//! Envoy 1.40 where Envoy answers the same.

mod http_support;

use std::time::{Duration, Instant};

use http_support::*;

/// POSTs `path`: the status and the body.
fn post(admin: std::net::SocketAddr, path: &str) -> (u16, String) {
    use std::io::{BufReader, Write};
    let mut s = std::net::TcpStream::connect(admin).expect("admin");
    s.write_all(
        format!(
            "POST {path} HTTP/1.1\r\nhost: a\r\ncontent-length: 0\r\nconnection: close\r\n\r\n"
        )
        .as_bytes(),
    )
    .expect("send");
    let r = read_response(&mut BufReader::new(s), false).expect("a response");
    let body = r.body_str();
    (r.status, body)
}

fn refused_bootstrap() -> String {
    bootstrap(
        &all_to("down"),
        "",
        &cluster("down", &[refusing_addr()], ""),
    )
}

#[test]
fn logging_levels_change_per_logger_and_take_effect() {
    let dir = tempfile::tempdir().expect("tempdir");
    let log = dir.path().join("courier.log");
    let log_arg = log.display().to_string();
    let courier = Courier::start_with(
        &refused_bootstrap(),
        &["-l", "info", "--log-path", &log_arg],
    );
    let connect_failures = || {
        std::fs::read_to_string(&log)
            .unwrap_or_default()
            .matches("upstream connect failure")
            .count()
    };
    // At info, a failed upstream connection is not logged.
    assert_eq!(get(courier.listener, "h", "/", &[]).status, 503);
    assert_eq!(connect_failures(), 0);

    let (status, body) = post(courier.admin, "/logging?http=debug");
    assert_eq!(status, 200, "{body}");
    assert!(
        body.contains("  http: debug\n") && body.contains("  upstream: info\n"),
        "{body}"
    );
    assert_eq!(get(courier.listener, "h", "/", &[]).status, 503);
    let deadline = Instant::now() + Duration::from_secs(10);
    while connect_failures() == 0 {
        assert!(
            Instant::now() < deadline,
            "no debug line after /logging?http=debug"
        );
        std::thread::sleep(Duration::from_millis(10));
    }

    // Every logger at once; then a bad name and a bad level.
    let (_, body) = post(courier.admin, "/logging?level=warning");
    assert!(
        body.lines().skip(1).all(|l| l.ends_with(": warning")),
        "{body}"
    );
    let (status, body) = post(courier.admin, "/logging?nope=debug");
    assert_eq!(status, 400);
    assert!(body.starts_with("error: unknown logger name"), "{body}");
    assert_eq!(post(courier.admin, "/logging?http=loud").0, 400);
    assert_eq!(admin_post(courier.admin, "/logging"), Some(200));
}

#[test]
fn reset_counters_memory_and_restart_version_answer_as_envoy() {
    let run = |proxy: &Courier| {
        let _ = get(proxy.listener, "h", "/", &[]);
        let before = proxy.stat("http.ingress.downstream_rq_total");
        let reset = post(proxy.admin, "/reset_counters");
        let after = proxy.stat("http.ingress.downstream_rq_total");
        let _ = get(proxy.listener, "h", "/", &[]);
        let again = proxy.stat("http.ingress.downstream_rq_total");
        let memory: serde_json::Value =
            serde_json::from_str(&admin_get(proxy.admin, "/memory").unwrap_or_default())
                .expect("/memory is JSON");
        let mut memory_fields: Vec<String> = memory
            .as_object()
            .map(|o| o.keys().cloned().collect())
            .unwrap_or_default();
        memory_fields.sort();
        let numbers = memory.as_object().is_some_and(|o| {
            o.values()
                .all(|v| v.as_str().is_some_and(|s| s.parse::<u64>().is_ok()))
        });
        let init: serde_json::Value =
            serde_json::from_str(&admin_get(proxy.admin, "/init_dump").unwrap_or_default())
                .expect("/init_dump is JSON");
        (
            (before, reset, after, again),
            memory_fields,
            numbers,
            init,
            admin_get(proxy.admin, "/hot_restart_version").is_some(),
        )
    };
    let boot = refused_bootstrap();
    let got = run(&Courier::start(&boot));
    if let Some(envoy) = Courier::start_envoy(&boot) {
        assert_eq!(run(&envoy), got, "envoy vs courier");
    }
    assert_eq!(got.0, (1, (200, "OK\n".to_string()), 0, 1));
    assert!(got.2, "every /memory figure is a number");
    assert_eq!(got.3, serde_json::json!({}));
}
