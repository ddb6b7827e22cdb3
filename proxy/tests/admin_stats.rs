//! The admin's stats parameters and endpoints Envoy 1.40 has: `/stats?usedonly`,
//! `/stats?filter=<regex>` (and Envoy's 400 on a bad regex), `/stats/recentlookups` with
//! its `enable`, `disable` and `clear` (POST), and `stats_flush_on_admin`. Each is run on
//! Courier and, when `envoy` is on PATH, on Envoy with the same bootstrap.

mod http_support;

use std::io::{BufReader, Write};
use std::net::TcpStream;
use std::time::Duration;

use http_support::*;

/// Status and body of an admin request.
fn admin(proxy: &Courier, method: &str, path: &str) -> (u16, String) {
    let mut s = TcpStream::connect(proxy.admin).expect("admin");
    s.set_read_timeout(Some(Duration::from_secs(5)))
        .expect("timeout");
    s.write_all(
        format!(
            "{method} {path} HTTP/1.1\r\nhost: admin\r\ncontent-length: 0\r\nconnection: close\r\n\r\n"
        )
        .as_bytes(),
    )
    .expect("send");
    let r = read_response(&mut BufReader::new(s), false).expect("response");
    let body = r.body_str();
    (r.status, body)
}

fn names(body: &str) -> Vec<String> {
    body.lines()
        .filter_map(|l| l.split_once(": ").map(|(k, _)| k.to_string()))
        .collect()
}

/// What both proxies must answer alike.
fn observe(proxy: &Courier) -> Vec<String> {
    assert_eq!(get(proxy.listener, "h", "/", &[]).status, 200);
    let mut out = Vec::new();
    // usedonly: a used counter is there, one never used is not (but is without usedonly).
    let used = admin(proxy, "GET", "/stats?usedonly").1;
    let all = admin(proxy, "GET", "/stats").1;
    for stat in [
        "cluster.backend.upstream_rq_total",
        "cluster.backend.upstream_rq_timeout",
        "http.ingress.downstream_rq_2xx",
        "http.ingress.downstream_rq_5xx",
    ] {
        out.push(format!(
            "{stat}: usedonly {} all {}",
            names(&used).iter().any(|n| n == stat),
            names(&all).iter().any(|n| n == stat)
        ));
    }
    // filter is a regex; combined with usedonly.
    out.push(format!(
        "filter: {:?}",
        names(
            &admin(
                proxy,
                "GET",
                "/stats?filter=%5Ecluster%5C.backend%5C.upstream_rq_(total%7C2xx)%24"
            )
            .1
        )
    ));
    out.push(format!(
        "filter+usedonly: {:?}",
        names(
            &admin(
                proxy,
                "GET",
                "/stats?usedonly&filter=backend%5C.upstream_rq_(timeout%7Ctotal)"
            )
            .1
        )
    ));
    let json = admin(
        proxy,
        "GET",
        "/stats?usedonly&format=json&filter=upstream_rq_total",
    )
    .1;
    // Compared as JSON (Envoy writes it compact, Courier indented).
    let json: serde_json::Value = serde_json::from_str(&json).expect("json");
    out.push(format!("json: {json}"));
    let (status, body) = admin(proxy, "GET", "/stats?filter=%5B");
    out.push(format!(
        "bad regex: {status} {}",
        body.starts_with("Invalid re2 regex")
    ));
    // recentlookups: off by default, the endpoints need POST, enable/clear/disable.
    let off = admin(proxy, "GET", "/stats/recentlookups").1;
    out.push(format!("off: {:?}", off.lines().next().unwrap_or_default()));
    out.push(format!(
        "ends with total: {}",
        off.lines()
            .last()
            .unwrap_or_default()
            .starts_with("total: ")
    ));
    out.push(format!(
        "enable by GET: {}",
        admin(proxy, "GET", "/stats/recentlookups/enable").0
    ));
    for action in ["enable", "clear"] {
        let (status, body) = admin(proxy, "POST", &format!("/stats/recentlookups/{action}"));
        out.push(format!("{action}: {status} {body:?}"));
    }
    let on = admin(proxy, "GET", "/stats/recentlookups").1;
    out.push(format!("on: {:?}", on.lines().next().unwrap_or_default()));
    let (status, body) = admin(proxy, "POST", "/stats/recentlookups/disable");
    out.push(format!("disable: {status} {body:?}"));
    let off = admin(proxy, "GET", "/stats/recentlookups").1;
    out.push(format!(
        "off again: {:?}",
        off.lines().next().unwrap_or_default()
    ));
    out
}

#[test]
fn usedonly_filter_and_recentlookups_answer_as_envoy() {
    let upstream = Upstream::start("u");
    let boot = bootstrap(
        &all_to("backend"),
        "",
        &cluster("backend", &[upstream.addr], ""),
    );
    let got = observe(&Courier::start(&boot));
    assert!(got[0].ends_with("usedonly true all true"), "{got:#?}");
    assert!(got[1].ends_with("usedonly false all true"), "{got:#?}");
    if let Some(envoy) = Courier::start_envoy(&boot) {
        assert_eq!(observe(&envoy), got, "envoy vs courier");
    }
}

#[test]
fn stats_flush_on_admin_flushes_when_stats_are_read() {
    let upstream = Upstream::start("u");
    let statsd = std::net::UdpSocket::bind("127.0.0.1:0").expect("udp");
    statsd
        .set_read_timeout(Some(Duration::from_millis(300)))
        .expect("timeout");
    let port = statsd.local_addr().expect("addr").port();
    let boot = format!(
        "{}stats_flush_on_admin: true
stats_sinks:
- name: envoy.stat_sinks.statsd
  typed_config:
    \"@type\": type.googleapis.com/envoy.config.metrics.v3.StatsdSink
    address: {{ socket_address: {{ address: 127.0.0.1, port_value: {port} }} }}
",
        bootstrap(
            &all_to("backend"),
            "",
            &cluster("backend", &[upstream.addr], "")
        )
    );
    let run = |proxy: Courier| {
        assert_eq!(get(proxy.listener, "h", "/", &[]).status, 200);
        // Nothing is flushed until the admin's /stats is read.
        let mut buf = [0u8; 65536];
        while statsd.recv(&mut buf).is_ok() {}
        admin(&proxy, "GET", "/stats");
        let mut lines = Vec::new();
        while let Ok(n) = statsd.recv(&mut buf) {
            lines.extend(
                String::from_utf8_lossy(&buf[..n])
                    .lines()
                    .map(str::to_string),
            );
        }
        lines
            .into_iter()
            .filter(|l| l.starts_with("envoy.cluster.backend.upstream_rq_total:"))
            .collect::<Vec<_>>()
    };
    let got = run(Courier::start(&boot));
    assert_eq!(got, ["envoy.cluster.backend.upstream_rq_total:1|c"]);
    if let Some(envoy) = Courier::start_envoy(&boot) {
        assert_eq!(run(envoy), got, "envoy vs courier");
    }
}
