//! The network RBAC filter (`envoy.filters.network.rbac`) before `tcp_proxy` and the
//! HTTP connection manager: `rules` and the xDS `matcher` on the connection's addresses,
//! ports and peer certificate (Kuma's inbound shape: the peer's SPIFFE id by URI SAN,
//! `on_no_match` DENY), shadow rules, and the filter's counters. Every case runs through
//! Courier and, when `envoy` is on PATH, through Envoy 1.40; they must agree.

mod http_support;
mod tls_support;

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::Duration;

use http_support::*;
use tls_support::*;

/// A network RBAC filter with `config` (YAML lines under `typed_config`, indented 10).
fn rbac(config: &str) -> String {
    format!(
        "      - name: envoy.filters.network.rbac
        typed_config:
          \"@type\": type.googleapis.com/envoy.extensions.filters.network.rbac.v3.RBAC
{config}"
    )
}

/// Sends `ping` through a TCP proxy to an echo server: what comes back, or `closed`.
fn echo(addr: SocketAddr) -> String {
    let Ok(mut s) = TcpStream::connect(addr) else {
        return "refused".into();
    };
    s.set_read_timeout(Some(Duration::from_secs(5)))
        .expect("timeout");
    if s.write_all(b"ping").is_err() {
        return "closed".into();
    }
    let mut buf = [0u8; 4];
    match s.read_exact(&mut buf) {
        Ok(()) => String::from_utf8_lossy(&buf).into_owned(),
        Err(_) => "closed".into(),
    }
}

const PORT_INPUT: &str = "{ name: p, typed_config: { \"@type\": type.googleapis.com/envoy.extensions.matching.common_inputs.network.v3.DestinationPortInput } }";
const SOURCE_INPUT: &str = "{ name: s, typed_config: { \"@type\": type.googleapis.com/envoy.extensions.matching.common_inputs.network.v3.SourceIPInput } }";

fn action(name: &str, action: &str) -> String {
    format!("{{ action: {{ name: envoy.filters.rbac.action, typed_config: {{ \"@type\": type.googleapis.com/envoy.config.rbac.v3.Action, name: {name}, action: {action} }} }} }}")
}

/// The TCP cases: the filter's config, and the counters to read (under `net.rbac.`).
fn tcp_cases() -> Vec<(&'static str, String)> {
    vec![
        (
            "rules allow",
            "          stat_prefix: net\n          rules: { action: ALLOW, policies: { any: { permissions: [{ any: true }], principals: [{ any: true }] } } }\n".to_string(),
        ),
        (
            "rules deny this port",
            "          stat_prefix: net.\n          rules: { action: DENY, policies: { port: { permissions: [{ destination_port: LISTENER_PORT }], principals: [{ any: true }] } } }\n          shadow_rules_stat_prefix: sh_\n          shadow_rules: { action: ALLOW, policies: { local: { permissions: [{ any: true }], principals: [{ direct_remote_ip: { address_prefix: 127.0.0.1, prefix_len: 32 } }] } } }\n".to_string(),
        ),
        (
            "matcher deny loopback",
            format!(
                "          stat_prefix: net\n          matcher:\n            matcher_list:\n              matchers:\n              - predicate: {{ single_predicate: {{ input: {SOURCE_INPUT}, custom_match: {{ name: ip, typed_config: {{ \"@type\": type.googleapis.com/envoy.extensions.matching.input_matchers.ip.v3.Ip, cidr_ranges: [{{ address_prefix: 127.0.0.0, prefix_len: 8 }}], stat_prefix: ip }} }} }} }}\n                on_match: {}\n            on_no_match: {}\n",
                action("loopback", "DENY"),
                action("rest", "ALLOW")
            ),
        ),
        (
            "matcher allow this port",
            format!(
                "          stat_prefix: net\n          matcher:\n            matcher_list:\n              matchers:\n              - predicate: {{ single_predicate: {{ input: {PORT_INPUT}, value_match: {{ exact: \"LISTENER_PORT\" }} }} }}\n                on_match: {}\n            on_no_match: {}\n",
                action("port", "ALLOW"),
                action("default", "DENY")
            ),
        ),
        (
            "matcher without an action reached",
            format!(
                "          stat_prefix: net\n          matcher:\n            matcher_list:\n              matchers:\n              - predicate: {{ single_predicate: {{ input: {PORT_INPUT}, value_match: {{ exact: \"1\" }} }} }}\n                on_match: {}\n",
                action("port", "ALLOW")
            ),
        ),
    ]
}

const COUNTERS: &[&str] = &[
    "net.rbac.allowed",
    "net.rbac.denied",
    "net.rbac.sh_.shadow_allowed",
    "net.rbac.sh_.shadow_denied",
];

#[test]
fn tcp_proxy_connections_are_allowed_and_closed_as_by_envoy() {
    let echo_addr = echo_server();
    let run = |config: &str, start: &dyn Fn(&str) -> Option<Courier>| {
        let boot = before_terminal(
            &tcp_bootstrap(&cluster("c", &[echo_addr], "")),
            &rbac(config),
        );
        let p = start(&boot)?;
        let got = echo(p.listener);
        // Two connections decided: the harness's readiness probe (decided at its close,
        // having sent nothing) and this one.
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        while p.stat("net.rbac.allowed") + p.stat("net.rbac.denied") < 2
            && std::time::Instant::now() < deadline
        {
            std::thread::sleep(Duration::from_millis(10));
        }
        let counters: Vec<String> = COUNTERS
            .iter()
            .map(|c| format!("{c}={}", p.stat(c)))
            .collect();
        Some(format!("{got} {counters:?}"))
    };
    let mut results = Vec::new();
    for (label, config) in tcp_cases() {
        let got = run(&config, &|b| Some(Courier::start(b))).expect("courier starts");
        if let Some(envoy) = run(&config, &|b| Courier::start_envoy(b)) {
            assert_eq!(envoy, got, "envoy vs courier: {label}");
        }
        results.push(format!("{label}: {got}"));
    }
    let expect = [
        "rules allow: ping [\"net.rbac.allowed=2\", \"net.rbac.denied=0\"",
        "rules deny this port: closed [\"net.rbac.allowed=0\", \"net.rbac.denied=2\", \"net.rbac.sh_.shadow_allowed=2\"",
        "matcher deny loopback: closed [\"net.rbac.allowed=0\", \"net.rbac.denied=2\"",
        "matcher allow this port: ping [\"net.rbac.allowed=2\"",
        "matcher without an action reached: closed [\"net.rbac.allowed=0\", \"net.rbac.denied=2\"",
    ];
    for (r, e) in results.iter().zip(expect) {
        assert!(r.starts_with(e), "{r} (want {e}…)");
    }
}

/// Kuma's inbound shape: mTLS, then a network RBAC matcher on the peer's URI SAN with
/// `on_no_match` DENY, before the HTTP connection manager.
#[test]
fn kuma_style_spiffe_matcher_before_the_connection_manager_as_in_envoy() {
    kuma_style("");
}

/// The same, the server's TLS context offering ALPN (Kuma's and Istio's do): the codec
/// is named by the handshake, and the filters still decide before it runs.
#[test]
fn kuma_style_with_alpn_decides_before_the_negotiated_codec_as_in_envoy() {
    kuma_style("            alpn_protocols: [h2, http/1.1]\n");
}

fn kuma_style(alpn: &str) {
    let dir = tempfile::tempdir().expect("tempdir");
    let d = dir.path();
    let ca = Ca::new(d, "ca");
    let server = ca.leaf(d, "server", &["inbound.test"], &[]);
    let good = ca.leaf(d, "good", &[], &["spiffe://mesh/ns/a/sa/web"]);
    let evil = ca.leaf(d, "evil", &[], &["spiffe://other/ns/a/sa/web"]);
    let up = Upstream::start("up");
    let boot = bootstrap(&all_to("up"), "", &cluster("up", &[up.addr], ""));
    let filter = rbac(&format!(
        "          stat_prefix: inbound.\n          matcher:\n            matcher_list:\n              matchers:\n              - predicate: {{ single_predicate: {{ input: {{ name: envoy.matching.inputs.uri_san, typed_config: {{ \"@type\": type.googleapis.com/envoy.extensions.matching.common_inputs.ssl.v3.UriSanInput }} }}, value_match: {{ prefix: \"spiffe://mesh/\" }} }} }}\n                on_match: {}\n            on_no_match: {}\n",
        action("mesh", "ALLOW"),
        action("default", "DENY")
    ));
    let socket = format!(
        r#"    - transport_socket:
        name: envoy.transport_sockets.tls
        typed_config:
          "@type": type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.DownstreamTlsContext
          common_tls_context:
{alpn}            tls_certificates:
            - certificate_chain: {{ filename: "{}" }}
              private_key: {{ filename: "{}" }}
            validation_context: {{ trusted_ca: {{ filename: "{}" }} }}
      filters:
{filter}"#,
        server.cert.display(),
        server.key.display(),
        ca.cert.display()
    );
    let boot = boot.replacen("    - filters:\n", &socket, 1);
    let run = |p: &Courier| -> Vec<String> {
        let mut out: Vec<String> = [
            ("mesh peer", Some(&good)),
            ("other mesh", Some(&evil)),
            ("no certificate", None),
        ]
        .iter()
        .map(|(label, cert)| {
            let status = tls_connect(p.listener, &ca.cert, "inbound.test", &["http/1.1"], *cert)
                .ok()
                .and_then(|mut s| get_over(&mut s, "inbound.test", "/").ok())
                .map(|r| r.0);
            format!("{label}: {status:?}")
        })
        .collect();
        for c in ["inbound.rbac.allowed", "inbound.rbac.denied"] {
            out.push(format!("{c}={}", p.stat(c)));
        }
        out
    };
    let got = run(&Courier::start(&boot));
    if let Some(envoy) = Courier::start_envoy(&boot) {
        assert_eq!(run(&envoy), got, "envoy vs courier");
    }
    assert_eq!(
        got,
        [
            "mesh peer: Some(200)",
            "other mesh: None",
            "no certificate: None",
            "inbound.rbac.allowed=1",
            "inbound.rbac.denied=2",
        ]
    );
}

#[test]
fn what_network_rbac_cannot_do_is_refused_by_path() {
    let base = before_terminal(
        &tcp_bootstrap(&cluster("c", &["127.0.0.1:1".parse().expect("addr")], "")),
        &rbac("          stat_prefix: net\n"),
    );
    assert_refused_by_path(
        &base,
        &[(
            "          stat_prefix: net\n",
            "          stat_prefix: net\n          delay_deny: 1s\n",
            "delay_deny: not supported by Courier",
        )],
    );
}
