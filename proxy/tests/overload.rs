//! The global downstream connection limit: the overload manager's
//! `global_downstream_max_connections` monitor, the runtime key
//! `overload.global_downstream_max_connections`, a listener's `ignore_global_conn_limit`,
//! and Courier's default limit derived from the file-descriptor limit (Envoy has none).
//! Runs through Courier and, when `envoy` is on PATH, through Envoy 1.40; the two must
//! agree wherever Envoy has the same limit.

mod http_support;

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::Path;
use std::time::{Duration, Instant};

use http_support::*;

fn direct_bootstrap(extra: &str) -> String {
    let boot = bootstrap(&all_to("unused"), "", "    []\n").replace(
        "route: { cluster: unused }",
        "direct_response: { status: 200, body: { inline_string: ok } }",
    );
    format!("{boot}{extra}")
}

const MONITOR: &str = "overload_manager:
  refresh_interval: 0.25s
  resource_monitors:
  - name: envoy.resource_monitors.global_downstream_max_connections
    typed_config:
      \"@type\": type.googleapis.com/envoy.extensions.resource_monitors.downstream_connections.v3.DownstreamConnectionsConfig
      max_active_downstream_connections: 2
";

/// Sends a request on an open connection: `Some(status line)`, or `None` when the proxy
/// closed it.
fn ask(c: &mut TcpStream) -> Option<String> {
    c.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
    c.write_all(b"GET / HTTP/1.1\r\nhost: h\r\n\r\n").ok()?;
    let mut buf = [0u8; 512];
    let n = c.read(&mut buf).ok()?;
    let text = String::from_utf8_lossy(&buf[..n]).into_owned();
    text.lines()
        .next()
        .map(str::to_string)
        .filter(|l| !l.is_empty())
}

/// Waits until the start-up probe's connection (the harness connects once to see the
/// listener accept) is gone: it holds a share of the limit until the proxy closes it.
fn settle(proxy: &Courier) {
    let stat = |s: &str| {
        proxy.stat(&format!(
            "listener.127.0.0.1_{}.downstream_{s}",
            proxy.listener.port()
        ))
    };
    let deadline = Instant::now() + Duration::from_secs(10);
    while !(stat("cx_total") >= 1 && stat("cx_active") == 0) {
        assert!(
            Instant::now() < deadline,
            "the probe connection stayed open"
        );
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// Opens `n` connections, then asks on each: what each got.
fn flood(addr: SocketAddr, n: usize) -> (Vec<TcpStream>, Vec<Option<String>>) {
    let mut conns: Vec<TcpStream> = (0..n)
        .map(|_| TcpStream::connect(addr).expect("the kernel accepts"))
        .collect();
    let answers = conns.iter_mut().map(ask).collect();
    (conns, answers)
}

fn overflow(proxy: &Courier, addr: SocketAddr) -> u64 {
    proxy.stat(&format!(
        "listener.127.0.0.1_{}.downstream_global_cx_overflow",
        addr.port()
    ))
}

/// Waits until a new connection to `addr` is served again.
fn served_again(addr: SocketAddr) -> bool {
    let deadline = Instant::now() + Duration::from_secs(10);
    while Instant::now() < deadline {
        if let Ok(mut c) = TcpStream::connect(addr) {
            if ask(&mut c).is_some() {
                return true;
            }
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    false
}

/// Four connections against a limit of two, then the first two closed.
fn limited(proxy: &Courier) -> Vec<String> {
    settle(proxy);
    let (conns, answers) = flood(proxy.listener, 4);
    let mut out = vec![format!("answers: {answers:?}")];
    // Closed first: Envoy counts admin connections against a runtime-set limit (Courier's
    // admin is exempt), so /stats is read once the flood is gone.
    drop(conns);
    out.push(format!(
        "overflow: {}",
        proxy.wait_stat(
            &format!(
                "listener.127.0.0.1_{}.downstream_global_cx_overflow",
                proxy.listener.port()
            ),
            2
        )
    ));
    out.push(format!("served again: {}", served_again(proxy.listener)));
    out
}

#[test]
fn the_downstream_connections_monitor_limits_connections_like_envoy() {
    let boot = direct_bootstrap(MONITOR);
    let got = limited(&Courier::start(&boot));
    if let Some(envoy) = Courier::start_envoy(&boot) {
        assert_eq!(limited(&envoy), got, "envoy vs courier");
    }
    assert_eq!(
        got,
        [
            r#"answers: [Some("HTTP/1.1 200 OK"), Some("HTTP/1.1 200 OK"), None, None]"#,
            "overflow: 2",
            "served again: true",
        ]
    );
}

#[test]
fn the_runtime_key_limits_connections_without_a_monitor_like_envoy() {
    let boot = direct_bootstrap(
        "layered_runtime:
  layers:
  - name: base
    static_layer: { overload.global_downstream_max_connections: 2 }
",
    );
    let got = limited(&Courier::start(&boot));
    if let Some(envoy) = Courier::start_envoy(&boot) {
        // Envoy counts every accepted socket against a runtime-set limit, its admin's
        // too (even with `ignore_global_conn_limit`, which only skips the check): an
        // admin connection of the test's own that Envoy has not closed yet takes a share,
        // so how many of the four it serves depends on timing. Both must refuse past the
        // limit and serve again once clients leave.
        let envoy = limited(&envoy);
        let served = envoy[0].matches("200 OK").count();
        assert!((1..=2).contains(&served), "{envoy:?}");
        assert_eq!(envoy[2], got[2], "{envoy:?}");
    }
    assert_eq!(
        got[0],
        r#"answers: [Some("HTTP/1.1 200 OK"), Some("HTTP/1.1 200 OK"), None, None]"#
    );
}

#[test]
fn a_listener_ignoring_the_global_limit_keeps_accepting_like_envoy() {
    let exempt_port = free_port();
    let boot = direct_bootstrap(MONITOR);
    // A second listener, exempt, after the first.
    let second = boot
        .split("  - name: http\n")
        .nth(1)
        .and_then(|rest| rest.split("  clusters:").next())
        .expect("the listener block")
        .replace("LISTENER_PORT", &exempt_port.to_string());
    let boot = boot.replacen(
        "  clusters:",
        &format!("  - name: exempt\n    ignore_global_conn_limit: true\n{second}  clusters:"),
        1,
    );
    let run = |proxy: &Courier| {
        let exempt: SocketAddr = format!("127.0.0.1:{exempt_port}").parse().expect("addr");
        settle(proxy);
        let (_held, answers) = flood(proxy.listener, 3);
        let (_more, exempt_answers) = flood(exempt, 3);
        (answers, exempt_answers, overflow(proxy, exempt))
    };
    let got = run(&Courier::start(&boot));
    if let Some(envoy) = Courier::start_envoy(&boot) {
        assert_eq!(run(&envoy), got, "envoy vs courier");
    }
    let ok = Some("HTTP/1.1 200 OK".to_string());
    assert_eq!(got.0, [ok.clone(), ok.clone(), None]);
    assert_eq!(got.1, [ok.clone(), ok.clone(), ok]);
    assert_eq!(got.2, 0);
}

/// Courier started through `ulimit -n <nofile>`.
fn start_with_nofile(boot: &str, nofile: u32, dir: &std::path::Path) -> Courier {
    let script = dir.join("courier-limited.sh");
    std::fs::write(
        &script,
        format!(
            "#!/bin/sh\nulimit -n {nofile} || exit 1\nexec {} \"$@\"\n",
            env!("CARGO_BIN_EXE_courier")
        ),
    )
    .expect("write wrapper");
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&script, std::fs::Permissions::from_mode(0o755)).expect("chmod");
    Courier::launch_binary(script.to_str().expect("utf-8 path"), boot, &[])
}

#[test]
fn without_any_limit_a_flood_is_refused_before_descriptors_run_out() {
    // 256 descriptors: Courier's default limit is (256 - 128) / 2 = 64 connections.
    let dir = tempfile::tempdir().expect("tempdir");
    let proxy = start_with_nofile(&direct_bootstrap(""), 256, dir.path());
    settle(&proxy);
    let (conns, answers) = flood(proxy.listener, 100);
    let served = answers.iter().filter(|a| a.is_some()).count();
    assert_eq!(served, 64, "{answers:?}");
    assert_eq!(
        proxy.wait_stat(
            &format!(
                "listener.127.0.0.1_{}.downstream_global_cx_overflow",
                proxy.listener.port()
            ),
            36
        ),
        36
    );
    // The process kept descriptors for its admin, and recovers once clients leave.
    assert!(admin_get(proxy.admin, "/ready").is_some_and(|b| b.contains("LIVE")));
    drop(conns);
    assert!(served_again(proxy.listener));
}

#[test]
fn overload_settings_not_built_or_invalid_are_refused_by_path() {
    let monitor = |name: &str, max: i64| {
        format!(
            "overload_manager:
  resource_monitors:
  - name: {name}
    typed_config:
      \"@type\": type.googleapis.com/envoy.extensions.resource_monitors.downstream_connections.v3.DownstreamConnectionsConfig
      max_active_downstream_connections: {max}
"
        )
    };
    for (extra, want) in [
        (
            monitor("envoy.resource_monitors.global_downstream_max_connections", 0),
            "max_active_downstream_connections: value must be greater than 0",
        ),
        (
            monitor("mine", 10),
            "must be named envoy.resource_monitors.global_downstream_max_connections",
        ),
        (
            "overload_manager:
  resource_monitors:
  - name: envoy.resource_monitors.fixed_heap
    typed_config:
      \"@type\": type.googleapis.com/envoy.extensions.resource_monitors.fixed_heap.v3.FixedHeapConfig
      max_heap_size_bytes: 1000000
  actions:
  - name: envoy.overload_actions.stop_accepting_requests
    triggers: [{ name: envoy.resource_monitors.cgroup_memory, threshold: { value: 0.9 } }]
"
            .to_string(),
            "overload_manager.actions[0].triggers[0].name: Unknown trigger resource envoy.resource_monitors.cgroup_memory",
        ),
        (
            "overload_manager:
  resource_monitors:
  - name: envoy.resource_monitors.fixed_heap
    typed_config:
      \"@type\": type.googleapis.com/envoy.extensions.resource_monitors.fixed_heap.v3.FixedHeapConfig
      max_heap_size_bytes: 1000000
  actions:
  - name: envoy.overload_actions.reset_high_memory_stream
    triggers: [{ name: envoy.resource_monitors.fixed_heap, scaled: { scaling_threshold: 0.8, saturation_threshold: 0.9 } }]
"
            .to_string(),
            "overload_manager.actions[0].name (envoy.overload_actions.reset_high_memory_stream)",
        ),
        (
            "overload_manager:
  resource_monitors:
  - name: envoy.resource_monitors.fixed_heap
    typed_config:
      \"@type\": type.googleapis.com/envoy.extensions.resource_monitors.fixed_heap.v3.FixedHeapConfig
      max_heap_size_bytes: 1000000
  actions:
  - name: envoy.overload_actions.shrink_heap
    triggers: [{ name: envoy.resource_monitors.fixed_heap, scaled: { scaling_threshold: 0.9, saturation_threshold: 0.8 } }]
"
            .to_string(),
            "scaling_threshold must be less than saturation_threshold",
        ),
    ] {
        let (code, stderr) = validate(&direct_bootstrap(&extra));
        assert_eq!(code, Some(1), "{stderr}");
        assert!(stderr.contains(want), "want {want:?} in {stderr}");
    }
}

/// Writes a pressure as operators (and Envoy's watch) expect: a new file renamed over
/// the old one.
fn set_pressure(path: &Path, p: f64) {
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, format!("{p}")).expect("write pressure");
    std::fs::rename(&tmp, path).expect("rename pressure");
}

/// Waits until gauge `name` reads `want`.
fn wait_gauge(proxy: &Courier, name: &str, want: u64) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while proxy.stat(name) != want {
        assert!(Instant::now() < deadline, "{name} never became {want}");
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// One request on a new connection: its status line, whether it said `connection:
/// close`, and its body; `None` when the connection closed unanswered.
fn one_request(addr: SocketAddr) -> Option<(String, bool, String)> {
    let mut c = TcpStream::connect(addr).ok()?;
    c.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
    c.write_all(b"GET / HTTP/1.1\r\nhost: h\r\n\r\n").ok()?;
    let mut buf = Vec::new();
    let mut chunk = [0u8; 1024];
    loop {
        match c.read(&mut chunk) {
            Ok(0) | Err(_) => break,
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
        }
        let text = String::from_utf8_lossy(&buf);
        if let Some((head, body)) = text.split_once("\r\n\r\n") {
            let len = head
                .lines()
                .find_map(|l| {
                    l.to_ascii_lowercase()
                        .strip_prefix("content-length: ")
                        .map(str::to_string)
                })
                .and_then(|v| v.trim().parse::<usize>().ok())
                .unwrap_or(0);
            if body.len() >= len {
                break;
            }
        }
    }
    let text = String::from_utf8_lossy(&buf).into_owned();
    let (head, body) = text.split_once("\r\n\r\n")?;
    let status = head.lines().next()?.to_string();
    let close = head.to_ascii_lowercase().contains("\r\nconnection: close");
    Some((status, close, body.to_string()))
}

const ACTIONS: &str = "overload_manager:
  refresh_interval: 0.05s
  resource_monitors:
  - name: envoy.resource_monitors.injected_resource
    typed_config:
      \"@type\": type.googleapis.com/envoy.extensions.resource_monitors.injected_resource.v3.InjectedResourceConfig
      filename: PRESSURE_FILE
  actions:
  - name: envoy.overload_actions.disable_http_keepalive
    triggers: [{ name: envoy.resource_monitors.injected_resource, threshold: { value: 0.8 } }]
  - name: envoy.overload_actions.stop_accepting_requests
    triggers: [{ name: envoy.resource_monitors.injected_resource, threshold: { value: 0.9 } }]
  - name: envoy.overload_actions.reject_incoming_connections
    triggers: [{ name: envoy.resource_monitors.injected_resource, threshold: { value: 0.95 } }]
  - name: envoy.overload_actions.stop_accepting_connections
    triggers: [{ name: envoy.resource_monitors.injected_resource, threshold: { value: 0.99 } }]
";

/// Pressure stepped up through every action and back down.
fn stepped(proxy: &Courier, pressure: &Path) -> Vec<String> {
    let action = |a: &str| format!("overload.envoy.overload_actions.{a}.active");
    let mut out = Vec::new();
    let step = |label: &str, p: f64, active: &[&str], out: &mut Vec<String>| {
        set_pressure(pressure, p);
        wait_gauge(
            proxy,
            "overload.envoy.resource_monitors.injected_resource.pressure",
            (p * 100.0) as u64,
        );
        for a in active {
            wait_gauge(proxy, &action(a), 1);
        }
        out.push(format!("{label}: {:?}", one_request(proxy.listener)));
    };
    step("calm", 0.1, &[], &mut out);
    step("keepalive off", 0.85, &["disable_http_keepalive"], &mut out);
    step(
        "requests refused",
        0.92,
        &["stop_accepting_requests"],
        &mut out,
    );
    step(
        "connections rejected",
        0.97,
        &["reject_incoming_connections"],
        &mut out,
    );
    // Not accepting: the connection waits in the backlog and is served once the
    // pressure falls.
    set_pressure(pressure, 1.0);
    wait_gauge(proxy, &action("stop_accepting_connections"), 1);
    let listener = proxy.listener;
    let waiting = std::thread::spawn(move || one_request(listener));
    let before = proxy.stat(&format!(
        "listener.127.0.0.1_{}.downstream_cx_total",
        proxy.listener.port()
    ));
    set_pressure(pressure, 0.1);
    out.push(format!(
        "held then served: {:?}",
        waiting.join().expect("client")
    ));
    out.push(format!("accepted while stopped: {}", before));
    for a in [
        "disable_http_keepalive",
        "stop_accepting_requests",
        "reject_incoming_connections",
        "stop_accepting_connections",
    ] {
        wait_gauge(proxy, &action(a), 0);
    }
    let stat = |s: &str| proxy.stat(s);
    out.push(format!(
        "disable_keepalive={} overload_close={} overload_reject={}",
        stat("http.ingress.downstream_cx_overload_disable_keepalive"),
        stat("http.ingress.downstream_rq_overload_close"),
        stat(&format!(
            "listener.127.0.0.1_{}.downstream_cx_overload_reject",
            proxy.listener.port()
        )),
    ));
    out
}

#[test]
fn overload_actions_follow_pressure_like_envoy() {
    let run = |start: &dyn Fn(&str) -> Option<Courier>| {
        let dir = tempfile::tempdir().expect("tempdir");
        let pressure = dir.path().join("pressure");
        set_pressure(&pressure, 0.0);
        let boot =
            direct_bootstrap(&ACTIONS.replace("PRESSURE_FILE", &pressure.display().to_string()));
        let proxy = start(&boot)?;
        settle(&proxy);
        Some(stepped(&proxy, &pressure))
    };
    let got = run(&|b| Some(Courier::start(b))).expect("courier starts");
    if let Some(mut envoy) = run(&|b| Courier::start_envoy(b)) {
        // Envoy lifts `stop_accepting_connections` and `reject_incoming_connections` in
        // separate worker callbacks: on a loaded machine the connection held in the
        // backlog can be accepted between the two and rejected (seen once in a full
        // suite run). That is a race of Envoy's; its run is taken once more then.
        if envoy != got {
            if let Some(again) = run(&|b| Courier::start_envoy(b)) {
                envoy = again;
            }
        }
        assert_eq!(envoy, got, "envoy vs courier");
    }
    assert_eq!(got[0], r#"calm: Some(("HTTP/1.1 200 OK", false, "ok"))"#);
    assert_eq!(
        got[1],
        r#"keepalive off: Some(("HTTP/1.1 200 OK", true, "ok"))"#
    );
    assert!(
        got[2].contains("503 Service Unavailable") && got[2].contains("envoy overloaded"),
        "{got:#?}"
    );
    assert_eq!(got[3], "connections rejected: None");
    assert_eq!(
        got[4],
        r#"held then served: Some(("HTTP/1.1 200 OK", false, "ok"))"#
    );
}

/// An overload manager with the injected monitor (its pressure in `PRESSURE_FILE`) and
/// `rest` (actions, load shed points).
fn injected(rest: &str) -> String {
    format!(
        "overload_manager:
  refresh_interval: 0.05s
  resource_monitors:
  - name: envoy.resource_monitors.injected_resource
    typed_config:
      \"@type\": type.googleapis.com/envoy.extensions.resource_monitors.injected_resource.v3.InjectedResourceConfig
      filename: PRESSURE_FILE
{rest}"
    )
}

const REDUCE_TIMEOUTS: &str = "  actions:
  - name: envoy.overload_actions.reduce_timeouts
    triggers: [{ name: envoy.resource_monitors.injected_resource, scaled: { scaling_threshold: 0.5, saturation_threshold: 0.9 } }]
    typed_config:
      \"@type\": type.googleapis.com/envoy.config.overload.v3.ScaleTimersOverloadActionConfig
      timer_scale_factors:
      - { timer: HTTP_DOWNSTREAM_CONNECTION_IDLE, min_timeout: 1s }
      - { timer: HTTP_DOWNSTREAM_STREAM_IDLE, min_scale: { value: 5 } }
";

/// Runs `steps` on Courier and (when on PATH) Envoy, each on `boot` with its own pressure
/// file (starting calm): what each saw.
fn on_both<T: PartialEq + std::fmt::Debug>(
    boot: &str,
    steps: &dyn Fn(&Courier, &Path) -> T,
) -> (T, Option<T>) {
    let run = |start: &dyn Fn(&str) -> Option<Courier>| {
        let dir = tempfile::tempdir().expect("tempdir");
        let pressure = dir.path().join("pressure");
        set_pressure(&pressure, 0.0);
        let proxy = start(&boot.replace("PRESSURE_FILE", &pressure.display().to_string()))?;
        settle(&proxy);
        Some(steps(&proxy, &pressure))
    };
    let got = run(&|b| Some(Courier::start(b))).expect("courier starts");
    (got, run(&|b| Courier::start_envoy(b)))
}

/// Sets the pressure and waits until gauge `name` (an action's or point's
/// `scale_percent`) says the proxy acts on it.
fn press(proxy: &Courier, pressure: &Path, p: f64, gauge: &str, want: u64) {
    set_pressure(pressure, p);
    wait_gauge(
        proxy,
        "overload.envoy.resource_monitors.injected_resource.pressure",
        (p * 100.0).round() as u64,
    );
    wait_gauge(proxy, gauge, want);
}

/// How long after `since` the proxy closed `c` (reading what it sends meanwhile).
fn closed_after(c: &mut TcpStream, since: Instant) -> Option<Duration> {
    c.set_read_timeout(Some(Duration::from_secs(20))).ok()?;
    let mut buf = [0u8; 1024];
    loop {
        match c.read(&mut buf) {
            Ok(0) => return Some(since.elapsed()),
            Ok(_) => {}
            Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => {
                return Some(since.elapsed())
            }
            Err(_) => return None,
        }
    }
}

#[test]
fn idle_connections_close_sooner_under_pressure_like_envoy() {
    // A 30 s idle timeout scaled down to its 1 s minimum at full pressure.
    let boot = direct_bootstrap(&injected(REDUCE_TIMEOUTS)).replace(
        "          stat_prefix: ingress\n",
        "          stat_prefix: ingress\n          common_http_protocol_options: { idle_timeout: 30s }\n",
    );
    let steps = |proxy: &Courier, pressure: &Path| {
        let scale = "overload.envoy.overload_actions.reduce_timeouts.scale_percent";
        // Armed calm: the idle timer follows the scale once it changes.
        let mut armed = TcpStream::connect(proxy.listener).expect("connect");
        let calm = ask(&mut armed);
        let idle_since = Instant::now();
        // Three quarters of the way between the thresholds: 30 s scaled to 8.25 s.
        press(proxy, pressure, 0.8, scale, 75);
        press(proxy, pressure, 1.0, scale, 100);
        let armed_closed = closed_after(&mut armed, idle_since);
        // Armed under pressure: 1 s.
        let mut fresh = TcpStream::connect(proxy.listener).expect("connect");
        let answered = ask(&mut fresh);
        let fresh_closed = closed_after(&mut fresh, Instant::now());
        let window = |d: Option<Duration>| {
            d.map(|d| (Duration::from_millis(900)..Duration::from_secs(10)).contains(&d))
        };
        (
            calm,
            answered,
            window(armed_closed),
            window(fresh_closed),
            proxy.wait_stat("http.ingress.downstream_cx_idle_timeout", 2),
        )
    };
    let (got, envoy) = on_both(&boot, &steps);
    if let Some(envoy) = envoy {
        assert_eq!(envoy, got, "envoy vs courier");
    }
    let ok = Some("HTTP/1.1 200 OK".to_string());
    assert_eq!(got, (ok.clone(), ok, Some(true), Some(true), 2));
}

/// A request to the silent upstream on a new connection: its status line and body, and
/// how long the answer took.
fn timed_request(addr: SocketAddr) -> (Option<(String, String)>, Duration) {
    let start = Instant::now();
    let got = one_request(addr).map(|(status, _, body)| (status, body));
    (got, start.elapsed())
}

#[test]
fn idle_streams_time_out_sooner_under_pressure_like_envoy() {
    // A 60 s stream idle timeout, 5% of it (3 s) at full pressure; the route timeout is
    // off so that only the idle timer can answer.
    let boot = bootstrap(
        &all_to("silent").replace(
            "route: { cluster: silent }",
            "route: { cluster: silent, timeout: 0s }",
        ),
        "          stream_idle_timeout: 60s\n",
        &cluster("silent", &[silent_upstream()], ""),
    ) + &injected(REDUCE_TIMEOUTS);
    let steps = |proxy: &Courier, pressure: &Path| {
        let scale = "overload.envoy.overload_actions.reduce_timeouts.scale_percent";
        // A stream waiting since before the pressure: its timer follows the scale.
        let listener = proxy.listener;
        let waiting = std::thread::spawn(move || timed_request(listener));
        proxy.wait_stat("cluster.silent.upstream_rq_total", 1);
        press(proxy, pressure, 1.0, scale, 100);
        let (armed, armed_took) = waiting.join().expect("client");
        let (fresh, fresh_took) = timed_request(proxy.listener);
        (
            armed,
            armed_took < Duration::from_secs(20),
            fresh,
            (Duration::from_millis(2900)..Duration::from_secs(20)).contains(&fresh_took),
            proxy.wait_stat("http.ingress.downstream_rq_idle_timeout", 2),
        )
    };
    let (got, envoy) = on_both(&boot, &steps);
    if let Some(envoy) = envoy {
        assert_eq!(envoy, got, "envoy vs courier");
    }
    let timeout = Some((
        "HTTP/1.1 504 Gateway Timeout".to_string(),
        "stream timeout".to_string(),
    ));
    assert_eq!(got, (timeout.clone(), true, timeout, true, 2));
}

const LOAD_SHED_POINTS: &str = "  loadshed_points:
  - name: envoy.load_shed_points.http2_server_go_away_on_dispatch
    triggers: [{ name: envoy.resource_monitors.injected_resource, threshold: { value: 0.2 } }]
  - name: envoy.load_shed_points.http_connection_manager_decode_headers
    triggers: [{ name: envoy.resource_monitors.injected_resource, threshold: { value: 0.3 } }]
  - name: envoy.load_shed_points.http1_server_abort_dispatch
    triggers: [{ name: envoy.resource_monitors.injected_resource, threshold: { value: 0.5 } }]
  - name: envoy.load_shed_points.hcm_ondata_creating_codec
    triggers: [{ name: envoy.resource_monitors.injected_resource, threshold: { value: 0.7 } }]
  - name: envoy.load_shed_points.tcp_listener_accept
    triggers: [{ name: envoy.resource_monitors.injected_resource, threshold: { value: 0.9 } }]
  - name: mine.not_checked_anywhere
    triggers: [{ name: envoy.resource_monitors.injected_resource, scaled: { scaling_threshold: 0.1, saturation_threshold: 0.9 } }]
";

/// An HTTP/2 GET (prior knowledge, frame by frame): the GOAWAY's error code if one came,
/// and the response's body.
fn h2_get_watching_goaway(addr: SocketAddr) -> (Option<u32>, String) {
    use http_support::h2_raw::*;
    let mut c = TcpStream::connect(addr).expect("connect");
    c.set_read_timeout(Some(Duration::from_secs(5)))
        .expect("timeout");
    let mut out = PREFACE.to_vec();
    out.extend(frame(SETTINGS, 0, 0, &[]));
    // :method GET, :scheme http, :path /, :authority h (HPACK, no Huffman).
    out.extend(frame(
        HEADERS,
        END_STREAM | END_HEADERS,
        1,
        &[0x82, 0x86, 0x84, 0x01, 0x01, b'h'],
    ));
    c.write_all(&out).expect("write");
    let (mut goaway, mut body) = (None, Vec::new());
    let mut buf = Vec::new();
    let mut chunk = [0u8; 4096];
    let deadline = Instant::now() + Duration::from_secs(5);
    // Until the body ("ok", or the overload reply) and the GOAWAY are in, or it closed.
    while (goaway.is_none() || body.is_empty()) && Instant::now() < deadline {
        match c.read(&mut chunk) {
            Ok(0) | Err(_) => break,
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
        }
        for f in take_frames(&mut buf) {
            match f.kind {
                0x0 if f.stream == 1 => body.extend_from_slice(&f.payload),
                GOAWAY if f.payload.len() >= 8 => {
                    goaway = Some(u32::from_be_bytes([
                        f.payload[4],
                        f.payload[5],
                        f.payload[6],
                        f.payload[7],
                    ]))
                }
                // Only the server's own settings: acking its ACK is a protocol error.
                SETTINGS if f.stream == 0 && f.flags & ACK == 0 => {
                    let _ = c.write_all(&frame(SETTINGS, ACK, 0, &[]));
                }
                _ => {}
            }
        }
    }
    (goaway, String::from_utf8_lossy(&body).into_owned())
}

#[test]
fn load_shed_points_shed_like_envoy() {
    let boot = direct_bootstrap(&injected(LOAD_SHED_POINTS));
    let steps = |proxy: &Courier, pressure: &Path| {
        let point = |p: &str| format!("overload.envoy.load_shed_points.{p}.scale_percent");
        let mut out = Vec::new();
        press(
            proxy,
            pressure,
            0.25,
            &point("http2_server_go_away_on_dispatch"),
            100,
        );
        out.push(format!(
            "h2 drained: {:?}",
            h2_get_watching_goaway(proxy.listener)
        ));
        // Envoy checks the go-away point on HTTP/1 too: `connection: close`.
        out.push(format!("h1 drained: {:?}", one_request(proxy.listener)));
        press(
            proxy,
            pressure,
            0.4,
            &point("http_connection_manager_decode_headers"),
            100,
        );
        out.push(format!("decode headers: {:?}", one_request(proxy.listener)));
        press(
            proxy,
            pressure,
            0.6,
            &point("http1_server_abort_dispatch"),
            100,
        );
        out.push(format!("h1 abort: {:?}", one_request(proxy.listener)));
        press(
            proxy,
            pressure,
            0.8,
            &point("hcm_ondata_creating_codec"),
            100,
        );
        out.push(format!("before codec: {:?}", one_request(proxy.listener)));
        press(proxy, pressure, 0.95, &point("tcp_listener_accept"), 100);
        out.push(format!("at accept: {:?}", one_request(proxy.listener)));
        // The point no code checks still has its stats.
        out.push(format!(
            "unchecked: {}% shed {}",
            proxy.stat("overload.mine.not_checked_anywhere.scale_percent"),
            proxy.stat("overload.mine.not_checked_anywhere.shed_load_count")
        ));
        set_pressure(pressure, 0.0);
        wait_gauge(proxy, &point("tcp_listener_accept"), 0);
        out.push(format!("calm again: {:?}", one_request(proxy.listener)));
        let shed = |p: &str| {
            proxy.stat(&format!(
                "overload.envoy.load_shed_points.{p}.shed_load_count"
            ))
        };
        out.push(format!(
            "shed: h2 {} decode_headers {} h1 {} codec {} accept {}",
            shed("http2_server_go_away_on_dispatch") > 0,
            shed("http_connection_manager_decode_headers"),
            shed("http1_server_abort_dispatch"),
            shed("hcm_ondata_creating_codec"),
            shed("tcp_listener_accept"),
        ));
        out.push(format!(
            "overload_close {} overload_reject {}",
            proxy.stat("http.ingress.downstream_rq_overload_close"),
            overload_reject(proxy),
        ));
        out
    };
    let (got, envoy) = on_both(&boot, &steps);
    if let Some(envoy) = envoy {
        assert_eq!(envoy, got, "envoy vs courier");
    }
    assert_eq!(
        got,
        [
            r#"h2 drained: (Some(0), "ok")"#,
            r#"h1 drained: Some(("HTTP/1.1 200 OK", true, "ok"))"#,
            r#"decode headers: Some(("HTTP/1.1 503 Service Unavailable", true, "envoy overloaded"))"#,
            r#"h1 abort: Some(("HTTP/1.1 500 Internal Server Error", true, "Internal Server Error"))"#,
            "before codec: None",
            "at accept: None",
            "unchecked: 100% shed 0",
            r#"calm again: Some(("HTTP/1.1 200 OK", false, "ok"))"#,
            "shed: h2 true decode_headers 1 h1 1 codec 1 accept 1",
            "overload_close 3 overload_reject 1",
        ]
    );
}

fn overload_reject(proxy: &Courier) -> u64 {
    proxy.stat(&format!(
        "listener.127.0.0.1_{}.downstream_cx_overload_reject",
        proxy.listener.port()
    ))
}

#[test]
fn reduce_timeouts_and_load_shed_points_are_checked_as_envoy() {
    let base = direct_bootstrap(&injected(&format!("{REDUCE_TIMEOUTS}{LOAD_SHED_POINTS}")))
        .replace("PRESSURE_FILE", "/tmp/courier-overload-pressure");
    if let Some((code, out)) = envoy_validate(&base) {
        assert_eq!(code, Some(0), "{out}");
    }
    let first_timer = "      - { timer: HTTP_DOWNSTREAM_CONNECTION_IDLE, min_timeout: 1s }\n";
    let first_point = "  - name: envoy.load_shed_points.http2_server_go_away_on_dispatch\n";
    let point_trigger = "    triggers: [{ name: envoy.resource_monitors.injected_resource, threshold: { value: 0.2 } }]";
    // What Envoy refuses too, with its words.
    let edit = |from: &str, to: &str| {
        assert!(base.contains(from), "{from}");
        base.replacen(from, to, 1)
    };
    let invalid = [
        (
            remove_typed_config(&base),
            "Overload action \"envoy.overload_actions.reduce_timeouts\" requires typed_config",
        ),
        (
            edit(first_timer, &format!("{first_timer}{}", first_timer.replace("1s", "2s"))),
            "Found duplicate entry for timer type HTTP_DOWNSTREAM_CONNECTION_IDLE",
        ),
        (
            edit(first_timer, "      - { timer: HTTP_DOWNSTREAM_CONNECTION_IDLE }\n"),
            "timer_scale_factors[0].overload_adjust: is required",
        ),
        (
            edit("min_scale: { value: 5 }", "min_scale: { value: 500 }"),
            "timer_scale_factors[1].min_scale.value: value must be inside range [0, 100]",
        ),
        (
            edit(
                point_trigger,
                "    triggers: [{ name: envoy.resource_monitors.fixed_heap, threshold: { value: 0.2 } }]",
            ),
            "Unknown trigger resource envoy.resource_monitors.fixed_heap for loadshed point envoy.load_shed_points.http2_server_go_away_on_dispatch",
        ),
        (
            edit(first_point, "  - name: envoy.load_shed_points.tcp_listener_accept\n"),
            "Duplicate loadshed point envoy.load_shed_points.tcp_listener_accept",
        ),
    ];
    // Envoy's points and settings Courier has no code path for.
    let not_built = [
        (
            first_timer,
            "      - { timer: HTTP_DOWNSTREAM_STREAM_FLUSH, min_timeout: 1s }\n",
            "timer_scale_factors[0].timer (HTTP_DOWNSTREAM_STREAM_FLUSH)",
        ),
        (
            first_point,
            "  - name: envoy.load_shed_points.connection_pool_new_connection\n",
            "loadshed_points[0].name (envoy.load_shed_points.connection_pool_new_connection)",
        ),
        (
            first_point,
            "  - name: envoy.load_shed_points.http2_server_go_away_and_close_on_dispatch\n",
            "loadshed_points[0].name (envoy.load_shed_points.http2_server_go_away_and_close_on_dispatch)",
        ),
        (
            "  loadshed_points:\n",
            "  buffer_factory_config: { minimum_account_to_track_power_of_two: 20 }\n  loadshed_points:\n",
            "overload_manager.buffer_factory_config",
        ),
    ];
    for (changed, want) in invalid {
        let (code, stderr) = validate(&changed);
        assert_eq!(code, Some(1), "{stderr}");
        assert!(stderr.contains(want), "want {want:?} in {stderr}");
        if let Some((code, out)) = envoy_validate(&changed) {
            assert_ne!(
                code,
                Some(0),
                "envoy accepts what courier refuses ({want}): {out}"
            );
        }
    }
    assert_refused_by_path(&base, &not_built);
}

/// `boot` without the `reduce_timeouts` action's typed_config (and its lines).
fn remove_typed_config(boot: &str) -> String {
    let start = boot
        .find("    typed_config:\n      \"@type\": type.googleapis.com/envoy.config.overload.v3.ScaleTimersOverloadActionConfig")
        .expect("the typed_config");
    let end = boot[start..]
        .find("  loadshed_points:")
        .map(|i| start + i)
        .expect("the points");
    format!("{}{}", &boot[..start], &boot[end..])
}
