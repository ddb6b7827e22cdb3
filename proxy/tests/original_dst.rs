//! `ORIGINAL_DST` clusters and `use_original_dst` listeners, differential with Envoy 1.40
//! (when `envoy` is on PATH):
//! - the destination from `x-envoy-original-dst-host` (`use_http_header`), the port
//!   override, the invalid-header counter, `503` without a destination, the hosts the
//!   cluster learns and its cleanup;
//! - transparent proxying: in a network namespace the test makes (unshare + iptables
//!   `REDIRECT`, when the machine allows them), a redirected connection reaches its
//!   original destination through a `use_original_dst` listener and an `ORIGINAL_DST`
//!   cluster, and a connection to a port that has a (`bind_to_port: false`) listener of
//!   its own is handed off to that listener.

mod http_support;

use std::net::SocketAddr;
use std::process::Command;
use std::time::{Duration, Instant};

use http_support::*;

fn original_dst_cluster(extra: &str) -> String {
    format!(
        "  - name: od\n    type: ORIGINAL_DST\n    lb_policy: CLUSTER_PROVIDED\n    connect_timeout: 1s\n{extra}"
    )
}

/// Hosts of cluster `od` in `/clusters`.
fn hosts(proxy: &Courier) -> Vec<String> {
    let mut out: Vec<String> = admin_get(proxy.admin, "/clusters")
        .unwrap_or_default()
        .lines()
        .filter_map(|l| {
            let rest = l.strip_prefix("od::")?;
            let (addr, _) = rest.split_once("::cx_total::")?;
            Some(addr.to_string())
        })
        .collect();
    out.sort();
    out
}

#[derive(Debug, PartialEq)]
struct HeaderRun {
    statuses: Vec<u16>,
    bodies: Vec<String>,
    invalid: u64,
    learned: usize,
}

fn by_header(start: impl Fn(&str) -> Option<Courier>) -> Option<HeaderRun> {
    let a = Upstream::start("a");
    let b = Upstream::start("b");
    // Pooled connections close soon, so the hosts can be swept (a host keeps its place
    // while a connection to it is open, as in Envoy).
    let extra = "    cleanup_interval: 1s\n    common_http_protocol_options: { idle_timeout: 0.2s }\n    original_dst_lb_config: { use_http_header: true }\n";
    let proxy = start(&bootstrap(&all_to("od"), "", &original_dst_cluster(extra)))?;
    let mut statuses = Vec::new();
    let mut bodies = Vec::new();
    for value in [
        Some(a.addr.to_string()),
        Some(b.addr.to_string()),
        Some(a.addr.to_string()),
        Some("not-an-address".to_string()),
        None,
    ] {
        let headers: Vec<(&str, &str)> = value
            .as_deref()
            .map(|v| vec![("x-envoy-original-dst-host", v)])
            .unwrap_or_default();
        let r = get(proxy.listener, "x", "/", &headers);
        statuses.push(r.status);
        bodies.push(r.header("x-upstream").unwrap_or("-").to_string());
    }
    // The workers hand new hosts to the main thread, which the admin reads: wait for them.
    let deadline = Instant::now() + Duration::from_secs(10);
    while hosts(&proxy).len() < 2 && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(10));
    }
    let learned = hosts(&proxy).len();
    assert_eq!(
        learned,
        2,
        "both destinations became hosts: {:?}",
        hosts(&proxy)
    );
    // Unused hosts are swept (within a few cleanup intervals).
    let deadline = Instant::now() + Duration::from_secs(10);
    while !hosts(&proxy).is_empty() {
        assert!(
            Instant::now() < deadline,
            "hosts never cleaned up: {:?}",
            hosts(&proxy)
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    let invalid = proxy.stat("cluster.od.original_dst_host_invalid");
    Some(HeaderRun {
        statuses,
        bodies,
        invalid,
        learned,
    })
}

#[test]
fn destination_from_the_header_as_envoy() {
    let courier = by_header(|b| Some(Courier::start(b))).expect("courier ran");
    assert_eq!(courier.statuses, [200, 200, 200, 503, 503]);
    assert_eq!(courier.bodies[..3], ["a", "b", "a"]);
    assert_eq!(courier.invalid, 1);
    if let Some(envoy) = by_header(Courier::start_envoy) {
        assert_eq!(courier, envoy);
    }
}

#[test]
fn port_override_replaces_the_port() {
    let up = Upstream::start("up");
    let extra = format!(
        "    original_dst_lb_config: {{ use_http_header: true, upstream_port_override: {} }}\n",
        up.addr.port()
    );
    let run = |start: &dyn Fn(&str) -> Option<Courier>| -> Option<u16> {
        let proxy = start(&bootstrap(&all_to("od"), "", &original_dst_cluster(&extra)))?;
        let r = get(
            proxy.listener,
            "x",
            "/",
            &[("x-envoy-original-dst-host", "127.0.0.1:1")],
        );
        Some(r.status)
    };
    assert_eq!(run(&|b| Some(Courier::start(b))), Some(200));
    if let Some(envoy) = run(&Courier::start_envoy) {
        assert_eq!(envoy, 200);
    }
}

#[test]
fn invalid_original_dst_clusters_are_refused_as_envoy_refuses_them() {
    for (yaml, why) in [
        (
            "  - name: od\n    type: ORIGINAL_DST\n    connect_timeout: 1s\n",
            "Only 'CLUSTER_PROVIDED' is allowed with cluster type 'ORIGINAL_DST'",
        ),
        (
            "  - name: od\n    type: ORIGINAL_DST\n    lb_policy: CLUSTER_PROVIDED\n    connect_timeout: 1s\n    original_dst_lb_config: { http_header_name: x-dst }\n",
            "Set use_http_header to true if http_header_name is desired",
        ),
        (
            "  - name: od\n    type: STATIC\n    lb_policy: CLUSTER_PROVIDED\n    connect_timeout: 1s\n",
            "cluster provided LB specified but cluster 'od' did not provide one",
        ),
    ] {
        let (code, out) = validate(&bootstrap(&all_to("od"), "", yaml));
        assert_ne!(code, Some(0), "accepted: {yaml}");
        assert!(out.contains(why), "{why} not in: {out}");
    }
}

/// What the transparent scenario saw, run inside a network namespace.
const IN_NETNS: &str = "COURIER_TEST_IN_NETNS";

/// Runs `test` of this binary in a new user and network namespace; `None` when the
/// machine does not allow one (no `unshare`, no user namespaces, no iptables).
fn in_netns(test: &str, proxy: &str) -> Option<bool> {
    let exe = std::env::current_exe().ok()?;
    let probe = Command::new("unshare")
        .args([
            "-rn",
            "sh",
            "-c",
            "ip link set lo up && iptables -t nat -L >/dev/null",
        ])
        .output()
        .ok()?;
    if !probe.status.success() {
        eprintln!(
            "skipped: no network namespace with iptables here ({})",
            String::from_utf8_lossy(&probe.stderr).trim()
        );
        return None;
    }
    let status = Command::new("unshare")
        .arg("-rn")
        .arg(exe)
        .args([
            "--exact",
            test,
            "--ignored",
            "--nocapture",
            "--test-threads=1",
        ])
        .env(IN_NETNS, proxy)
        .status()
        .ok()?;
    Some(status.success())
}

#[test]
fn transparent_proxying_reaches_the_original_destination_as_envoy() {
    assert_ne!(
        in_netns("transparent_scenario", "courier"),
        Some(false),
        "the scenario failed on Courier"
    );
    let has_envoy = Command::new("envoy").arg("--version").output().is_ok();
    if has_envoy {
        assert_ne!(
            in_netns("transparent_scenario", "envoy"),
            Some(false),
            "the scenario failed on Envoy"
        );
    }
}

fn sh(cmd: &str) {
    let out = Command::new("sh").args(["-c", cmd]).output().expect("sh");
    assert!(
        out.status.success(),
        "{cmd}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// The transparent scenario, inside the namespace [`in_netns`] made (ignored elsewhere).
#[test]
#[ignore]
fn transparent_scenario() {
    let Ok(which) = std::env::var(IN_NETNS) else {
        return;
    };
    sh("ip link set lo up");
    let direct = Upstream::start("direct");
    let named = Upstream::start("named");
    // Every connection from 127.0.0.1 to the upstreams' ports, and to a port with a
    // listener of its own (`virtual_port`), goes to the proxy's outbound port instead.
    // The proxy's own upstream connections come from 127.0.0.2 and are left alone.
    let outbound = free_port();
    let virtual_port = free_port();
    for port in [direct.addr.port(), virtual_port] {
        sh(&format!(
            "iptables -t nat -A OUTPUT -p tcp -s 127.0.0.1 -d 127.0.0.1 --dport {port} -j REDIRECT --to-ports {outbound}"
        ));
    }
    let bootstrap = format!(
        r#"admin:
  address: {{ socket_address: {{ address: 127.0.0.1, port_value: 0 }} }}
static_resources:
  listeners:
  - name: outbound
    address: {{ socket_address: {{ address: 127.0.0.1, port_value: {outbound} }} }}
    use_original_dst: true
    filter_chains:
    - filters:
      - name: envoy.filters.network.tcp_proxy
        typed_config:
          "@type": type.googleapis.com/envoy.extensions.filters.network.tcp_proxy.v3.TcpProxy
          stat_prefix: passthrough
          cluster: od
  - name: virtual
    address: {{ socket_address: {{ address: 0.0.0.0, port_value: {virtual_port} }} }}
    bind_to_port: false
    filter_chains:
    - filters:
      - name: envoy.filters.network.tcp_proxy
        typed_config:
          "@type": type.googleapis.com/envoy.extensions.filters.network.tcp_proxy.v3.TcpProxy
          stat_prefix: virtual
          cluster: named
  - name: http
    address: {{ socket_address: {{ address: 127.0.0.1, port_value: LISTENER_PORT }} }}
    filter_chains:
    - filters:
      - name: envoy.filters.network.tcp_proxy
        typed_config:
          "@type": type.googleapis.com/envoy.extensions.filters.network.tcp_proxy.v3.TcpProxy
          stat_prefix: unused
          cluster: named
  clusters:
  - name: od
    type: ORIGINAL_DST
    lb_policy: CLUSTER_PROVIDED
    connect_timeout: 1s
    upstream_bind_config: {{ source_address: {{ address: 127.0.0.2, port_value: 0 }} }}
{named}"#,
        named = cluster(
            "named",
            &[named.addr],
            "    upstream_bind_config: { source_address: { address: 127.0.0.2, port_value: 0 } }\n"
        )
    );
    let proxy = if which == "envoy" {
        Courier::start_envoy(&bootstrap).expect("envoy")
    } else {
        Courier::start(&bootstrap)
    };
    // To the upstream's own port: redirected, then passed through to it.
    let r = get(direct.addr, "x", "/", &[]);
    assert_eq!(r.header("x-upstream"), Some("direct"), "{which}: {r:?}");
    // To a port with a listener of its own: handed off to that listener.
    let to_virtual: SocketAddr = format!("127.0.0.1:{virtual_port}").parse().expect("addr");
    let r = get(to_virtual, "x", "/", &[]);
    assert_eq!(r.header("x-upstream"), Some("named"), "{which}: {r:?}");
    assert!(
        admin_get(proxy.admin, "/clusters")
            .unwrap_or_default()
            .lines()
            .any(|l| l.starts_with(&format!("od::{}::", direct.addr))),
        "{which}: the original destination became a host"
    );
}
