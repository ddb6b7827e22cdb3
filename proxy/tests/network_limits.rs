//! The connection limit (`envoy.filters.network.connection_limit`) and network local
//! rate limit (`envoy.filters.network.local_ratelimit`) filters before `tcp_proxy` and
//! the HTTP connection manager, alone, together and with network RBAC: connections
//! within and over the limits, places freed and taken again, the delayed close, the
//! bucket refilling, one limit across two workers, and the configs Envoy refuses. Every
//! case runs through Courier and, when `envoy` is on PATH, through Envoy 1.40; they must
//! agree.

mod http_support;

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::{Duration, Instant};

use http_support::*;

/// A connection limit filter (a YAML list item, indented as the chain's filters).
fn connection_limit(prefix: &str, max: u32, extra: &str) -> String {
    format!(
        "      - name: envoy.filters.network.connection_limit
        typed_config:
          \"@type\": type.googleapis.com/envoy.extensions.filters.network.connection_limit.v3.ConnectionLimit
          stat_prefix: {prefix}
          max_connections: {max}
{extra}"
    )
}

/// A network local rate limit filter.
fn local_ratelimit(prefix: &str, bucket: &str) -> String {
    format!(
        "      - name: envoy.filters.network.local_ratelimit
        typed_config:
          \"@type\": type.googleapis.com/envoy.extensions.filters.network.local_ratelimit.v3.LocalRateLimit
          stat_prefix: {prefix}
          token_bucket: {bucket}
"
    )
}

/// A network RBAC filter letting every connection in.
fn rbac_allow_all() -> String {
    "      - name: envoy.filters.network.rbac
        typed_config:
          \"@type\": type.googleapis.com/envoy.extensions.filters.network.rbac.v3.RBAC
          stat_prefix: net
          rules: { action: ALLOW, policies: { any: { permissions: [{ any: true }], principals: [{ any: true }] } } }
"
    .to_string()
}

/// A TCP proxy bootstrap to an echo server with `filters` before `tcp_proxy`.
fn tcp_with(filters: &str) -> String {
    before_terminal(&tcp_bootstrap(&cluster("c", &[echo_server()], "")), filters)
}

/// Opens a connection through the TCP proxy and sends `ping`: `("ping", the open
/// connection)` when it comes back, `("closed", None)` when the proxy closes it.
fn hold(addr: SocketAddr) -> (String, Option<TcpStream>) {
    let Ok(mut s) = TcpStream::connect(addr) else {
        return ("refused".into(), None);
    };
    s.set_read_timeout(Some(Duration::from_secs(10)))
        .expect("timeout");
    if s.write_all(b"ping").is_err() {
        return ("closed".into(), None);
    }
    let mut buf = [0u8; 4];
    match s.read_exact(&mut buf) {
        Ok(()) => (String::from_utf8_lossy(&buf).into_owned(), Some(s)),
        Err(_) => ("closed".into(), None),
    }
}

/// Opens `n` connections one after another, keeping the ones let through: how many were
/// let through and closed, and the open ones.
fn hold_many(addr: SocketAddr, n: usize) -> (String, Vec<TcpStream>) {
    let mut open = Vec::new();
    let mut closed = 0;
    for _ in 0..n {
        match hold(addr) {
            (got, Some(s)) if got == "ping" => open.push(s),
            _ => closed += 1,
        }
    }
    (format!("through={} closed={closed}", open.len()), open)
}

/// Waits until the stat `name` is `want` (counters and gauges alike); its last value.
fn wait_equal(p: &Courier, name: &str, want: u64) -> u64 {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let v = p.stat(name);
        if v == want || Instant::now() > deadline {
            return v;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// Waits until the harness's readiness probe, a connection of its own, is gone.
fn probe_gone(p: &Courier) {
    let destroyed = format!(
        "listener.127.0.0.1_{}.downstream_cx_destroy",
        p.listener.port()
    );
    assert_eq!(
        p.wait_stat(&destroyed, 1),
        1,
        "the readiness probe's connection stays"
    );
}

/// Waits until the readiness probe is gone from the connection limit too.
fn settled(p: &Courier) {
    probe_gone(p);
    assert_eq!(
        wait_equal(p, ACTIVE, 0),
        0,
        "the readiness probe holds a place"
    );
}

/// Runs `case` on Courier and, when there is one, on Envoy; they must agree. Courier's
/// result.
fn differential(boot: &str, args: &[&str], case: &dyn Fn(&Courier) -> Vec<String>) -> Vec<String> {
    let got = case(&Courier::start_with(boot, args));
    if let Some(envoy) = Courier::start_envoy_with(boot, args) {
        assert_eq!(case(&envoy), got, "envoy vs courier");
    }
    got
}

const LIMITED: &str = "connection_limit.cl.limited_connections";
const ACTIVE: &str = "connection_limit.cl.active_connections";

/// 20 connections held against a limit of 5; two closed, their places taken again.
fn limit_case(p: &Courier) -> Vec<String> {
    settled(p);
    let (first, mut open) = hold_many(p.listener, 20);
    let active = wait_equal(p, ACTIVE, 5);
    let limited = p.stat(LIMITED);
    open.truncate(3);
    let freed = wait_equal(p, ACTIVE, 3);
    let (again, _more) = hold_many(p.listener, 3);
    vec![
        first,
        format!("active={active} limited={limited}"),
        format!("after two closed: active={freed}"),
        again,
        format!("limited={}", p.stat(LIMITED)),
        format!(
            "listener total={} destroy={} tcp total={}",
            p.stat(&format!(
                "listener.127.0.0.1_{}.downstream_cx_total",
                p.listener.port()
            )),
            wait_equal(
                p,
                &format!(
                    "listener.127.0.0.1_{}.downstream_cx_destroy",
                    p.listener.port()
                ),
                19
            ),
            p.stat("tcp.t.downstream_cx_total")
        ),
    ]
}

#[test]
fn a_connection_limit_before_tcp_proxy_closes_the_connections_over_it_as_envoy() {
    let boot = tcp_with(&connection_limit("cl", 5, ""));
    let got = differential(&boot, &[], &limit_case);
    assert_eq!(
        got,
        [
            "through=5 closed=15",
            "active=5 limited=15",
            "after two closed: active=3",
            "through=2 closed=1",
            "limited=16",
            // The readiness probe, 20 and 3: each one the listener's and the TCP proxy's.
            "listener total=24 destroy=19 tcp total=24",
        ]
    );
}

#[test]
fn one_limit_holds_across_two_workers_as_in_envoy() {
    let boot = tcp_with(&connection_limit("cl", 5, ""));
    let got = differential(&boot, &["--concurrency", "2"], &limit_case);
    // Per worker, about ten would have gone through.
    assert_eq!(got[0], "through=5 closed=15");
    assert_eq!(got[3], "through=2 closed=1");
}

#[test]
fn a_delayed_close_holds_the_place_until_it_happens_as_in_envoy() {
    let delay = Duration::from_millis(1500);
    let boot = tcp_with(&connection_limit("cl", 1, "          delay: 1.5s\n"));
    let case = |p: &Courier| {
        settled(p);
        let mut out = Vec::new();
        let (got, first) = hold(p.listener);
        out.push(format!("first: {got}"));
        // Over the limit: open, nothing comes back, until the delay ends.
        let started = Instant::now();
        let mut second = TcpStream::connect(p.listener).expect("connect");
        second.write_all(b"ping").expect("write");
        out.push(format!("limited={}", wait_equal(p, LIMITED, 1)));
        out.push(format!("active={}", wait_equal(p, ACTIVE, 2)));
        // The first goes; the one in its delay still holds a place: the next is over too.
        drop(first);
        out.push(format!("first closed: active={}", wait_equal(p, ACTIVE, 1)));
        let third = TcpStream::connect(p.listener).expect("connect");
        out.push(format!("limited={}", wait_equal(p, LIMITED, 2)));
        second
            .set_read_timeout(Some(Duration::from_secs(10)))
            .expect("timeout");
        let mut buf = Vec::new();
        // What it sent was never read: the close resets it.
        let read = second.read_to_end(&mut buf).map_err(|e| e.kind());
        let waited = started.elapsed();
        out.push(format!(
            "second: read {read:?}, closed after the delay: {}",
            waited >= delay.mul_f32(0.8)
        ));
        drop(third);
        out.push(format!("all closed: active={}", wait_equal(p, ACTIVE, 0)));
        out.push(format!("next: {}", hold(p.listener).0));
        out
    };
    let got = differential(&boot, &[], &case);
    assert_eq!(
        got,
        [
            "first: ping",
            "limited=1",
            "active=2",
            "first closed: active=1",
            "limited=2",
            "second: read Err(ConnectionReset), closed after the delay: true",
            "all closed: active=0",
            "next: ping",
        ]
    );
}

const RATE_LIMITED: &str = "local_rate_limit.rl.rate_limited";

#[test]
fn a_local_rate_limit_takes_a_token_per_connection_as_envoy() {
    // Six tokens, none refilled while the test runs; the harness's readiness probe takes
    // the first.
    let boot = tcp_with(&local_ratelimit(
        "rl",
        "{ max_tokens: 6, tokens_per_fill: 1, fill_interval: 3600s }",
    ));
    let case = |p: &Courier| {
        probe_gone(p);
        let (through, _open) = hold_many(p.listener, 20);
        vec![through, format!("rate_limited={}", p.stat(RATE_LIMITED))]
    };
    let got = differential(&boot, &[], &case);
    assert_eq!(got, ["through=5 closed=15", "rate_limited=15"]);
    // The bucket is one for every worker.
    let got = differential(&boot, &["--concurrency", "2"], &case);
    assert_eq!(got, ["through=5 closed=15", "rate_limited=15"]);
}

#[test]
fn the_bucket_refills_as_in_envoy() {
    let boot = tcp_with(&local_ratelimit(
        "rl",
        "{ max_tokens: 2, tokens_per_fill: 1, fill_interval: 0.3s }",
    ));
    let case = |p: &Courier| {
        let mut out = Vec::new();
        // Empty it: connections until one is refused.
        let mut tries = 0;
        while hold(p.listener).0 == "ping" {
            tries += 1;
            assert!(tries < 50, "the bucket never ran out");
        }
        out.push(format!(
            "emptied: rate_limited>=1: {}",
            p.stat(RATE_LIMITED) >= 1
        ));
        // Then a connection goes through again once a token is back.
        let deadline = Instant::now() + Duration::from_secs(10);
        let refilled = loop {
            if hold(p.listener).0 == "ping" {
                break true;
            }
            if Instant::now() > deadline {
                break false;
            }
            std::thread::sleep(Duration::from_millis(20));
        };
        out.push(format!("refilled: {refilled}"));
        out
    };
    let got = differential(&boot, &[], &case);
    assert_eq!(got, ["emptied: rate_limited>=1: true", "refilled: true"]);
}

#[test]
fn both_limits_with_rbac_before_tcp_proxy_as_in_envoy() {
    let filters = rbac_allow_all()
        + &connection_limit("cl", 4, "")
        + &local_ratelimit(
            "rl",
            "{ max_tokens: 7, tokens_per_fill: 1, fill_interval: 3600s }",
        );
    let boot = tcp_with(&filters);
    let case = |p: &Courier| {
        settled(p);
        // Four held within the limit; the rest refused by the limit before any token is
        // taken from the bucket.
        let (first, mut open) = hold_many(p.listener, 10);
        let limited = wait_equal(p, LIMITED, 6);
        // Four places freed: now the bucket (seven tokens, the probe's and four taken)
        // runs out first; a connection it refuses gives its place in the limit back.
        open.clear();
        wait_equal(p, ACTIVE, 0);
        let (second, _open) = hold_many(p.listener, 10);
        vec![
            first,
            format!("limited={limited}"),
            second,
            format!(
                "limited={} rate_limited={} rbac allowed={} denied={}",
                p.stat(LIMITED),
                p.stat(RATE_LIMITED),
                p.stat("net.rbac.allowed"),
                p.stat("net.rbac.denied")
            ),
        ]
    };
    let got = differential(&boot, &[], &case);
    assert_eq!(got[0], "through=4 closed=6");
    assert_eq!(got[1], "limited=6");
    assert_eq!(got[2], "through=2 closed=8");
    // RBAC decides only what the limits let through (the probe's included).
    assert_eq!(got[3], "limited=6 rate_limited=8 rbac allowed=7 denied=0");
}

#[test]
fn limits_before_the_connection_manager_as_in_envoy() {
    let up = Upstream::start("up");
    let boot = before_terminal(
        &bootstrap(&all_to("up"), "", &cluster("up", &[up.addr], "")),
        &(connection_limit("cl", 2, "")
            + &local_ratelimit(
                "rl",
                "{ max_tokens: 100, tokens_per_fill: 1, fill_interval: 3600s }",
            )
            + &rbac_allow_all()),
    );
    let case = |p: &Courier| {
        settled(p);
        let mut clients: Vec<Client> = (0..2).map(|_| Client::connect(p.listener)).collect();
        let mut out: Vec<String> = clients
            .iter_mut()
            .map(|c| format!("held: {}", c.get("h", "/", &[]).status))
            .collect();
        let mut over = Client::connect(p.listener);
        over.send_raw(b"GET / HTTP/1.1\r\nhost: h\r\n\r\n");
        out.push(format!("over the limit: closed={}", over.closed()));
        out.push(format!("limited={}", p.stat(LIMITED)));
        clients.pop();
        out.push(format!("one closed: active={}", wait_equal(p, ACTIVE, 1)));
        let mut again = Client::connect(p.listener);
        out.push(format!("again: {}", again.get("h", "/", &[]).status));
        drop(over);
        let stats = admin_get(p.admin, "/stats").unwrap_or_default();
        // A refused connection is the connection manager's too (Envoy made it before its
        // filters ran).
        out.extend(
            ["total", "active", "destroy", "http1_total"]
                .iter()
                .filter_map(|s| {
                    let line = format!("http.ingress.downstream_cx_{s}: ");
                    stats
                        .lines()
                        .find(|l| l.starts_with(&line))
                        .map(String::from)
                }),
        );
        out
    };
    let got = differential(&boot, &[], &case);
    assert_eq!(
        got,
        [
            "held: 200",
            "held: 200",
            "over the limit: closed=true",
            "limited=1",
            "one closed: active=1",
            "again: 200",
            "http.ingress.downstream_cx_total: 5",
            "http.ingress.downstream_cx_active: 2",
            "http.ingress.downstream_cx_destroy: 3",
            "http.ingress.downstream_cx_http1_total: 3",
        ]
    );
}

#[test]
fn bad_limits_are_refused_as_by_envoy() {
    let base = tcp_with(
        &(connection_limit("cl", 1, "")
            + &local_ratelimit("rl", "{ max_tokens: 1, fill_interval: 1s }")),
    );
    let cases = [
        (
            "          max_connections: 1\n",
            "          max_connections: 0\n",
            "max_connections",
        ),
        (
            "          max_connections: 1\n",
            "",
            "max_connections: value is required",
        ),
        (
            "fill_interval: 1s",
            "fill_interval: 0.04s",
            "fill timer must be >= 50ms",
        ),
        (
            "          stat_prefix: rl\n",
            "          stat_prefix: \"\"\n",
            "stat_prefix",
        ),
    ];
    for (from, to, _) in &cases {
        if let Some((code, text)) = envoy_validate(&base.replacen(from, to, 1)) {
            assert_ne!(code, Some(0), "envoy accepts {to:?}: {text}");
        }
    }
    if let Some((code, text)) = envoy_validate(&base) {
        assert_eq!(code, Some(0), "{text}");
    }
    assert_refused_by_path(&base, &cases);
}

#[test]
fn runtime_enabled_turns_both_off_as_in_envoy() {
    let flag = |key: &str| {
        format!("          runtime_enabled: {{ default_value: true, runtime_key: {key} }}\n")
    };
    let filters = connection_limit("cl", 1, &flag("cl_on"))
        + &local_ratelimit(
            "rl",
            "{ max_tokens: 1, tokens_per_fill: 1, fill_interval: 3600s }",
        )
        + &flag("rl_on");
    let boot = tcp_with(&filters)
        + "layered_runtime:\n  layers:\n  - name: static\n    static_layer: { cl_on: false, rl_on: false }\n";
    let case = |p: &Courier| {
        probe_gone(p);
        let (through, _open) = hold_many(p.listener, 10);
        vec![
            through,
            format!(
                "limited={} rate_limited={}",
                p.stat(LIMITED),
                p.stat(RATE_LIMITED)
            ),
            format!("active={}", p.stat(ACTIVE)),
        ]
    };
    let got = case(&Courier::start(&boot));
    assert_eq!(
        got,
        [
            "through=10 closed=0",
            "limited=0 rate_limited=0",
            "active=0"
        ]
    );
    if let Some(envoy) = Courier::start_envoy(&boot) {
        let envoy = case(&envoy);
        assert_eq!(envoy[..2], got[..2], "envoy vs courier");
        // Envoy 1.40 un-counts at close a connection its disabled filter never counted:
        // the gauge (and its atomic count) go below zero with the probe's close.
        assert_eq!(envoy[2], format!("active={}", u64::MAX));
    }
}

#[test]
fn listeners_with_one_share_key_share_a_bucket_as_in_envoy() {
    let bucket =
        "{ max_tokens: 6, tokens_per_fill: 1, fill_interval: 3600s }\n          share_key: shared";
    let boot = tcp_with(&local_ratelimit("rl", bucket));
    // A second listener with the same chain, on a port of its own.
    let start = boot.find("  - name: tcp\n").expect("listener");
    let end = boot.find("  clusters:\n").expect("clusters");
    let second = boot[start..end]
        .replace("name: tcp\n", "name: tcp2\n")
        .replace("LISTENER_PORT", &free_port().to_string());
    let boot = format!("{}{second}{}", &boot[..end], &boot[end..]);
    let case = |p: &Courier| {
        probe_gone(p);
        let port = second_port(&second);
        let other: SocketAddr = format!("127.0.0.1:{port}").parse().expect("addr");
        // Alternating between the listeners: five tokens left for both together (the
        // probe took one).
        let mut open = Vec::new();
        let mut through = 0;
        for i in 0..10 {
            let (got, s) = hold(if i % 2 == 0 { p.listener } else { other });
            through += usize::from(got == "ping");
            open.extend(s);
        }
        vec![
            format!("through={through}"),
            format!("rate_limited={}", p.stat(RATE_LIMITED)),
        ]
    };
    let got = differential(&boot, &[], &case);
    assert_eq!(got, ["through=5", "rate_limited=5"]);
}

/// The port of a listener's YAML block.
fn second_port(listener: &str) -> u16 {
    let at = listener.find("port_value: ").expect("port") + "port_value: ".len();
    listener[at..]
        .split(|c: char| !c.is_ascii_digit())
        .next()
        .and_then(|p| p.parse().ok())
        .expect("a port")
}

#[test]
fn rbac_before_a_delayed_limit_sees_no_bytes_of_a_refused_connection_as_in_envoy() {
    let boot =
        tcp_with(&(rbac_allow_all() + &connection_limit("cl", 1, "          delay: 0.2s\n")));
    let case = |p: &Courier| {
        settled(p);
        let (first, _held) = hold(p.listener);
        let mut second = TcpStream::connect(p.listener).expect("connect");
        second.write_all(b"ping").expect("write");
        second
            .set_read_timeout(Some(Duration::from_secs(10)))
            .expect("timeout");
        let mut buf = Vec::new();
        let read = second.read_to_end(&mut buf).map_err(|e| e.kind());
        wait_equal(p, ACTIVE, 1);
        vec![
            format!("first: {first}, second: {read:?}"),
            format!(
                "limited={} rbac allowed={}",
                p.stat(LIMITED),
                p.stat("net.rbac.allowed")
            ),
        ]
    };
    let got = differential(&boot, &[], &case);
    // The probe and the first.
    assert_eq!(
        got,
        [
            "first: ping, second: Err(ConnectionReset)",
            "limited=1 rbac allowed=2"
        ]
    );
}

#[test]
fn refused_connections_are_logged_as_by_envoy() {
    let format = "%RESPONSE_FLAGS% %UPSTREAM_CLUSTER% %BYTES_RECEIVED% %BYTES_SENT% %ACCESS_LOG_TYPE% %DOWNSTREAM_REMOTE_ADDRESS_WITHOUT_PORT% %DOWNSTREAM_LOCAL_ADDRESS_WITHOUT_PORT% %CONNECTION_TERMINATION_DETAILS%\\n";
    let log = |path: &std::path::Path, indent: &str| {
        format!(
            "{indent}access_log:\n{indent}- name: envoy.access_loggers.file\n{indent}  typed_config:\n{indent}    \"@type\": type.googleapis.com/envoy.extensions.access_loggers.file.v3.FileAccessLog\n{indent}    path: {}\n{indent}    log_format: {{ text_format_source: {{ inline_string: \"{format}\" }} }}\n",
            path.display(),
        )
    };
    let filters = connection_limit("cl", 1, "")
        + &local_ratelimit(
            "rl",
            "{ max_tokens: 3, tokens_per_fill: 1, fill_interval: 3600s }",
        );
    let base = tcp_with(&filters);
    // A TCP proxy log and a listener log in `dir`.
    let boot = |dir: &std::path::Path| {
        base.replacen(
            "          cluster: c\n",
            &format!(
                "          cluster: c\n{}",
                log(&dir.join("tcp.log"), "          ")
            ),
            1,
        )
        .replacen(
            "    filter_chains:\n",
            &format!(
                "{}    filter_chains:\n",
                log(&dir.join("listener.log"), "    ")
            ),
            1,
        )
    };
    let case = |p: &Courier, dir: &std::path::Path| {
        settled(p);
        let (first, held) = hold(p.listener);
        // Over the limit, then (the first gone) within it but out of tokens.
        let (second, _) = hold(p.listener);
        drop(held);
        wait_equal(p, ACTIVE, 0);
        let (third, held) = hold(p.listener);
        let (fourth, _) = hold(p.listener);
        drop(held);
        let mut out = vec![format!("{first} {second} {third} {fourth}")];
        // The readiness probe's entry first; each refused one as an upstream-less
        // connection's, no response flag (not even the rate limit's `URX`).
        out.extend(log_lines(&dir.join("tcp.log"), 5));
        out.push("--".into());
        out.extend(log_lines(&dir.join("listener.log"), 5));
        out
    };
    let dir = tempfile::tempdir().expect("tempdir");
    let got = case(&Courier::start(&boot(dir.path())), dir.path());
    let envoy_dir = tempfile::tempdir().expect("tempdir");
    if let Some(envoy) = Courier::start_envoy(&boot(envoy_dir.path())) {
        assert_eq!(case(&envoy, envoy_dir.path()), got, "envoy vs courier");
    }
    let connection = |bytes: u8, cluster: &str, log_type: &str| {
        format!("- {cluster} {bytes} {bytes} {log_type} 127.0.0.1 127.0.0.1 -")
    };
    let mut want = vec!["ping closed ping closed".to_string()];
    for log_type in ["TcpConnectionEnd", "NotSet"] {
        want.extend([
            connection(0, "c", log_type),
            connection(0, "-", log_type),
            connection(4, "c", log_type),
            connection(0, "-", log_type),
            connection(4, "c", log_type),
        ]);
        want.push("--".into());
    }
    want.pop();
    assert_eq!(got, want);
}
