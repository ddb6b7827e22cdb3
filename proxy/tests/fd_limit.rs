//! The descriptor limit: raised to its hard limit at start-up (as Envoy's), and what
//! happens when it is reached anyway — listeners pause instead of spinning, log a few
//! lines instead of a flood, count the failures, and serve again by themselves once
//! descriptors are free.

mod common;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::*;

/// An HTTP listener `http_in` answering every request itself, and the admin. The global
/// connection limit is set above the descriptor limit, so that clients can use up the
/// descriptors (Courier's default limit would refuse them first).
const HTTP_YAML: &str = r#"
admin: { address: { socket_address: { address: 127.0.0.1, port_value: 0 } } }
layered_runtime:
  layers:
  - name: base
    static_layer: { overload.global_downstream_max_connections: 1000000 }
static_resources:
  listeners:
  - name: http_in
    address: { socket_address: { address: 127.0.0.1, port_value: 0 } }
    filter_chains:
    - filters:
      - name: envoy.filters.network.http_connection_manager
        typed_config:
          "@type": type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager
          stat_prefix: ingress
          http_filters:
          - name: envoy.filters.http.router
            typed_config: { "@type": type.googleapis.com/envoy.extensions.filters.http.router.v3.Router }
          route_config:
            virtual_hosts:
            - name: main
              domains: ["*"]
              routes:
              - match: { prefix: "/" }
                direct_response: { status: 200, body: { inline_string: "served" } }
"#;

/// The hard limit this test process runs under (a child cannot be given more).
fn own_hard_limit() -> u64 {
    nofile_limits(std::process::id()).1
}

#[test]
fn the_soft_descriptor_limit_is_raised_to_the_hard_one_as_envoy_does() {
    let hard = own_hard_limit().min(4096);
    let soft = (hard / 4).max(64).min(hard);
    let c = Courier::spawn_with_nofile(HTTP_YAML, &["-l", "info"], soft, hard);
    c.wait_ready();
    assert_eq!(nofile_limits(c.pid()), (hard, hard), "courier's limits");
    let log = c.stderr();
    assert!(
        log.contains(&format!(
            "open file limit soft={hard} hard={hard} soft_at_start={soft}"
        )),
        "the limits are logged at info:\n{log}"
    );

    // Envoy, started the same way, ends up with the same limits.
    let Some(envoy) = spawn_envoy_with_nofile(soft, hard) else {
        eprintln!("envoy not on PATH: skipping the descriptor limit differential");
        return;
    };
    let limits = nofile_limits(envoy.0.id());
    drop(envoy);
    assert_eq!(limits, (hard, hard), "envoy's limits");
}

/// A running Envoy on the admin-only part of [`HTTP_YAML`], killed on drop.
struct Envoy(std::process::Child, #[allow(dead_code)] tempfile::TempDir);

impl Drop for Envoy {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn spawn_envoy_with_nofile(soft: u64, hard: u64) -> Option<Envoy> {
    let dir = tempfile::tempdir().expect("tempdir");
    let config = write_config(dir.path(), "bootstrap.yaml", HTTP_YAML);
    let admin_path = dir.path().join("admin-address");
    let mut cmd = Command::new("envoy");
    with_nofile(&mut cmd, soft, hard);
    let child = cmd
        .arg("-c")
        .arg(&config)
        .arg("--admin-address-path")
        .arg(&admin_path)
        .args(["--use-dynamic-base-id", "-l", "error", "--concurrency", "1"])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .ok()?;
    let envoy = Envoy(child, dir);
    wait_for("envoy's admin address", DEADLINE, || {
        std::fs::metadata(&admin_path).ok().map(|_| ())
    });
    Some(envoy)
}

/// Log lines about failed accepts of `listener`.
fn accept_failures_logged(log: &str, listener: &str) -> usize {
    log.lines()
        .filter(|l| l.contains("accept failed") && l.contains(&format!("listener=\"{listener}\"")))
        .count()
}

#[test]
fn at_the_descriptor_limit_listeners_pause_log_little_and_recover() {
    // Courier itself holds about twenty descriptors; idle HTTP connections take the rest.
    const LIMIT: u64 = 64;
    let c = Courier::spawn_with_nofile(
        HTTP_YAML,
        &["--concurrency", "1", "-l", "info"],
        LIMIT,
        LIMIT,
    );
    c.wait_ready();
    let http = c.listener("http_in");
    let pid = c.pid();

    // More clients than descriptors: those past the limit wait in the listener's queue.
    let clients: Vec<TcpStream> = (0..LIMIT + 16).map(|_| connect(http)).collect();
    wait_for("courier to use every descriptor", DEADLINE, || {
        (open_fds(pid) as u64 >= LIMIT).then_some(())
    });
    wait_for("the HTTP listener to fail an accept", DEADLINE, || {
        (accept_failures_logged(&c.stderr(), "http_in") > 0).then_some(())
    });

    // One admin connection now waits in the admin's queue, its accept failing.
    let mut admin = connect(c.admin);
    write!(
        admin,
        "GET /ready HTTP/1.1\r\nHost: admin\r\nConnection: close\r\n\r\n"
    )
    .expect("send the admin request");

    // Over a window that ends on facts (two admin lines, logged at least a second apart),
    // the process stays nearly idle and its log small.
    let cpu_before = cpu_time(pid);
    let started = Instant::now();
    wait_for("a second logged admin accept failure", DEADLINE, || {
        (accept_failures_logged(&c.stderr(), "admin") >= 2).then_some(())
    });
    let wall = started.elapsed();
    let cpu = cpu_time(pid).saturating_sub(cpu_before);
    assert!(
        wall >= Duration::from_millis(900),
        "two admin lines within {wall:?}: the log is not rate-limited"
    );
    assert!(
        cpu < wall / 4,
        "courier used {cpu:?} of CPU in {wall:?} at the descriptor limit"
    );
    let log = c.stderr();
    assert!(
        log.len() < 16 * 1024,
        "{} bytes of log in {wall:?}:\n{}",
        log.len(),
        &log[..log.len().min(4096)]
    );

    // Descriptors free again: the queued admin request is answered, and new connections
    // are served on both listeners.
    drop(clients);
    let mut answer = String::new();
    admin
        .read_to_string(&mut answer)
        .expect("the queued admin request is answered");
    assert!(
        answer.starts_with("HTTP/1.1 200") && answer.ends_with("LIVE\n"),
        "{answer:?}"
    );
    let r = wait_for("the HTTP listener to serve again", DEADLINE, || {
        http_request(http, "GET", "/").ok()
    });
    assert_eq!((r.status, r.body.as_str()), (200, "served"));
    assert_eq!(c.get("/ready").body.trim(), "LIVE");

    // Each failure is counted; the log says both listeners recovered.
    let stats = c.stats();
    let listener_errors: i64 = stats
        .iter()
        .filter(|(k, _)| {
            k.starts_with("listener.127.0.0.1_") && k.ends_with(".downstream_cx_accept_error")
        })
        .map(|(_, v)| *v)
        .sum();
    assert!(listener_errors > 0, "{stats:?}");
    assert!(
        stats["listener.admin.downstream_cx_accept_error"] >= 2,
        "{stats:?}"
    );
    let log = c.stderr();
    assert!(
        log.lines()
            .any(|l| l.contains("accepting again") && l.contains("listener=\"admin\"")),
        "{log}"
    );
    assert!(
        log.lines()
            .any(|l| l.contains("accepting again") && l.contains("listener=\"http_in\"")),
        "{log}"
    );
}
