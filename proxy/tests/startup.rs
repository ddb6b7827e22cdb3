//! End to end: `--mode validate` and bad input at start-up. Every failure must be exit
//! code 1 with exactly one `error: …` line naming the offending field, and never a panic.

mod common;

use std::net::TcpListener;

use common::*;

const EXAMPLE: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../examples/static-tcp.yaml");
const STATIC_HTTP: &str = include_str!("../../examples/static-http.yaml");

/// A listener on `port` proxying to cluster `c`, which exists.
fn good_yaml(port: u16) -> String {
    static_tcp_yaml(port, &["127.0.0.1:9".parse().expect("addr")], &[], &[])
}

/// Asserts a failed start: exit 1, one error line containing every `needles`, no panic.
fn assert_one_line_error(f: &Finished, needles: &[&str]) {
    assert_eq!(f.code(), 1, "{f:?}");
    assert!(!f.stderr.contains("panicked"), "panic: {f:?}");
    let errors = f.error_lines();
    assert_eq!(errors.len(), 1, "expected one error line: {f:?}");
    for n in needles {
        assert!(errors[0].contains(n), "error line lacks {n:?}: {f:?}");
    }
}

fn run_with_config(mode: &str, yaml: &str) -> Finished {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = write_config(dir.path(), "bootstrap.yaml", yaml);
    let path = path.to_str().expect("utf-8 path");
    run_to_exit(&["--mode", mode, "-c", path])
}

/// An HTTP listener taking its routes from `ads: {}`, with no `ads_config` (Envoy dies with
/// "ADS must be configured to support an ADS config source").
const HTTP_RDS_OVER_ADS: &str = r#"static_resources:
  listeners:
  - name: http
    address: { socket_address: { address: 127.0.0.1, port_value: 0 } }
    filter_chains:
    - filters:
      - name: envoy.filters.network.http_connection_manager
        typed_config:
          "@type": type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager
          stat_prefix: ingress
          rds: { route_config_name: routes, config_source: { ads: {}, resource_api_version: V3 } }
          http_filters:
          - name: envoy.filters.http.router
            typed_config: { "@type": type.googleapis.com/envoy.extensions.filters.http.router.v3.Router }
"#;

/// Bad bootstraps and the field path their error must name.
fn bad_configs() -> Vec<(&'static str, String, &'static str)> {
    let good = good_yaml(0);
    vec![
        (
            "malformed YAML",
            "static_resources: [unclosed\n  - x: {\n".to_string(),
            "invalid YAML",
        ),
        (
            "unknown field",
            good.replace(
                "    type: STATIC\n",
                "    type: STATIC\n    bogus_field: 1\n",
            ),
            "static_resources.clusters[0]: unknown field \"bogus_field\"",
        ),
        (
            "bad enum value",
            good.replace(
                "    type: STATIC\n",
                "    type: STATIC\n    lb_policy: NOPE\n",
            ),
            "static_resources.clusters[0].lb_policy",
        ),
        (
            "missing required field",
            good.replace("          stat_prefix: tcp_in\n", ""),
            "static_resources.listeners[0].filter_chains[0].filters[0].typed_config.stat_prefix",
        ),
        (
            "unsupported extension",
            good.replace(
                "type.googleapis.com/envoy.extensions.filters.network.tcp_proxy.v3.TcpProxy",
                "type.googleapis.com/envoy.extensions.filters.network.redis_proxy.v3.RedisProxy",
            )
            .replace("          cluster: backend\n", ""),
            "static_resources.listeners[0].filter_chains[0].filters[0].typed_config",
        ),
        (
            "stats sink not built",
            format!("{good}stats_sinks:\n- name: envoy.stat_sinks.hystrix\n  typed_config: {{ \"@type\": type.googleapis.com/envoy.config.metrics.v3.HystrixSink }}\n"),
            "stats_sinks[0].typed_config: the Hystrix stats sink is not built in Courier",
        ),
        (
            "bootstrap field not built",
            format!("{good}header_prefix: x-acme\n"),
            "header_prefix: not supported by Courier",
        ),
        (
            "bootstrap extension",
            format!("{good}bootstrap_extensions:\n- name: envoy.bootstrap.internal_listener\n  typed_config: {{ \"@type\": type.googleapis.com/envoy.extensions.bootstrap.internal_listener.v3.InternalListener }}\n"),
            "bootstrap_extensions: not supported by Courier",
        ),
        (
            "watchdogs",
            format!("{good}watchdogs: {{ main_thread_watchdog: {{ kill_timeout: 10s }} }}\n"),
            "watchdogs: not supported by Courier",
        ),
        (
            "RDS over ADS without an ADS stream",
            HTTP_RDS_OVER_ADS.to_string(),
            "static_resources.listeners[0].filter_chains.filters.typed_config.rds.config_source",
        ),
        (
            // Envoy: inline routes are validated against the known clusters by default.
            "inline route to an unknown cluster",
            STATIC_HTTP.replace("route: { cluster: web }", "route: { cluster: nope }"),
            "static_resources.listeners[0].filter_chains[0].filters[0].typed_config.route_config.virtual_hosts[0].routes[1].route: route: unknown cluster 'nope'",
        ),
        (
            // Accepted before and without effect: refused, so no one relies on it.
            "route priority HIGH",
            STATIC_HTTP.replace("route: { cluster: web }", "route: { cluster: web, priority: HIGH }"),
            "static_resources.listeners[0].filter_chains[0].filters[0].typed_config.route_config.virtual_hosts[0].routes[1].route.priority: not supported by Courier",
        ),
        (
            "duplicate cluster",
            format!("{good}  - name: backend\n    type: STATIC\n    connect_timeout: 1s\n"),
            "static_resources.clusters[1].name",
        ),
    ]
}

#[test]
fn validate_accepts_the_example() {
    let f = run_to_exit(&["--mode", "validate", "-c", EXAMPLE]);
    assert_eq!(f.code(), 0, "{f:?}");
    assert!(f.stdout.contains("OK"), "{f:?}");
}

#[test]
fn validate_opens_no_sockets() {
    // The listener's port is taken: validate must not care.
    let held = TcpListener::bind("127.0.0.1:0").expect("bind");
    let port = held.local_addr().expect("addr").port();
    let f = run_with_config("validate", &good_yaml(port));
    assert_eq!(f.code(), 0, "{f:?}");
}

#[test]
fn validate_rejects_bad_files_with_the_field_path() {
    for (what, yaml, path) in bad_configs() {
        eprintln!("case: {what}");
        let f = run_with_config("validate", &yaml);
        assert_one_line_error(&f, &[path]);
    }
}

#[test]
fn serve_rejects_bad_files_with_the_field_path() {
    for (what, yaml, path) in bad_configs() {
        eprintln!("case: {what}");
        let f = run_with_config("serve", &yaml);
        assert_one_line_error(&f, &[path]);
    }
}

/// `validate_clusters: false` lets inline routes name clusters that are not (yet) known,
/// as in Envoy.
#[test]
fn inline_routes_may_opt_out_of_cluster_validation() {
    let yaml = STATIC_HTTP
        .replace("route: { cluster: web }", "route: { cluster: nope }")
        .replace(
            "            name: local_route\n",
            "            name: local_route\n            validate_clusters: false\n",
        );
    let f = run_with_config("validate", &yaml);
    assert_eq!(f.code(), 0, "{f:?}");
}

#[test]
fn listener_port_in_use_fails_start_up() {
    let held = TcpListener::bind("127.0.0.1:0").expect("bind");
    let port = held.local_addr().expect("addr").port();
    let f = run_with_config("serve", &good_yaml(port));
    assert_one_line_error(
        &f,
        &[
            "static_resources.listeners[0].address",
            &format!("127.0.0.1:{port}"),
        ],
    );
}

#[test]
fn admin_port_in_use_fails_start_up() {
    let held = TcpListener::bind("127.0.0.1:0").expect("bind");
    let port = held.local_addr().expect("addr").port();
    let yaml = good_yaml(0).replacen(
        "socket_address: { address: 127.0.0.1, port_value: 0 }",
        &format!("socket_address: {{ address: 127.0.0.1, port_value: {port} }}"),
        1,
    );
    let f = run_with_config("serve", &yaml);
    assert_one_line_error(&f, &["admin", &format!("127.0.0.1:{port}")]);
}

#[test]
fn missing_or_unreadable_config_fails_start_up() {
    assert_one_line_error(&run_to_exit(&[]), &["no configuration"]);
    assert_one_line_error(
        &run_to_exit(&["-c", "/nonexistent/courier.yaml"]),
        &["/nonexistent/courier.yaml"],
    );
}

#[test]
fn unknown_flag_exits_1_like_envoy() {
    let f = run_to_exit(&["--no-such-flag"]);
    assert_eq!(f.code(), 1, "{f:?}");
    assert!(!f.stderr.contains("panicked"), "{f:?}");
}

#[test]
fn init_only_binds_and_exits_0() {
    let f = run_with_config("init_only", &good_yaml(0));
    assert_eq!(f.code(), 0, "{f:?}");
}

/// A CDS or LDS file that does not exist fails start-up (Envoy: "paths must refer to an
/// existing path in the system"); `--mode validate` lets it pass, as Envoy's does.
#[test]
fn a_missing_lds_file_fails_start_up_as_in_envoy() {
    let yaml = "node: { id: node1, cluster: c1 }\ndynamic_resources:\n  lds_config: { path_config_source: { path: /nonexistent/lds.yaml } }\n";
    let f = run_with_config("serve", yaml);
    assert_one_line_error(
        &f,
        &[
            "dynamic_resources.lds_config",
            "'/nonexistent/lds.yaml' does not exist",
        ],
    );
    assert_eq!(run_with_config("validate", yaml).code(), 0);
}

#[test]
fn settings_not_acted_on_are_refused_by_path() {
    let with = |extra: &str| {
        STATIC_HTTP.replace(
            "          stat_prefix: ingress_http\n",
            &format!("          stat_prefix: ingress_http\n{extra}"),
        )
    };
    for (extra, want) in [
        ("          drain_timeout: 1s\n", "drain_timeout: not supported by Courier"),
        ("          stream_flush_timeout: 1s\n", "stream_flush_timeout: not supported by Courier"),
        (
            "          http_protocol_options: { allow_absolute_url: false }\n",
            "http_protocol_options.allow_absolute_url: not supported by Courier",
        ),
        (
            "          http2_protocol_options: { hpack_table_size: 0 }\n",
            "http2_protocol_options.hpack_table_size: not supported by Courier",
        ),
        (
            "          http2_protocol_options: { max_outbound_frames: 50 }\n",
            "http2_protocol_options.max_outbound_frames: not supported by Courier",
        ),
        (
            "          http2_protocol_options: { connection_keepalive: { timeout: 1s, interval: 5s, connection_idle_interval: 1s } }\n",
            "connection_keepalive.connection_idle_interval: not supported by Courier",
        ),
    ] {
        let f = run_with_config("validate", &with(extra));
        assert_one_line_error(&f, &[want]);
    }
    // Envoy's defaults, spelled out, are accepted.
    let f = run_with_config(
        "validate",
        &with("          http2_protocol_options: { hpack_table_size: 4096, max_outbound_frames: 10000, connection_keepalive: { timeout: 1s, interval: 5s, interval_jitter: { value: 15 } } }\n"),
    );
    assert_eq!(f.status.code(), Some(0), "{}", f.stderr);
}

/// `good_yaml` with `socket_options` on its listener.
fn with_socket_options(port: u16, options: &str) -> String {
    good_yaml(port).replacen(
        "    filter_chains:",
        &format!("    socket_options: {options}\n    filter_chains:"),
        1,
    )
}

#[test]
fn listener_socket_options_are_set_at_their_state() {
    // SO_KEEPALIVE before bind, IP_TOS once listening (Contour's DSCP mark), and an
    // IPv6-only one that an IPv4 socket skips: the listener serves.
    let port = 0;
    let ok = with_socket_options(
        port,
        "[{ level: 1, name: 9, int_value: 1, state: STATE_PREBIND }, { level: 0, name: 1, int_value: 72, state: STATE_LISTENING }, { level: 41, name: 67, int_value: 72, state: STATE_LISTENING, ip_version: SOCKET_IP_VERSION_IPV6 }]",
    );
    let f = run_with_config("init_only", &ok);
    assert_eq!(f.status.code(), Some(0), "{}", f.stderr);
    // One the kernel refuses fails the listener at start-up, naming it.
    let bad = with_socket_options(
        0,
        "[{ level: 1, name: 999999, int_value: 1, state: STATE_BOUND }]",
    );
    let f = run_with_config("serve", &bad);
    assert_one_line_error(
        &f,
        &["static_resources.listeners[0].address", "name 999999"],
    );
    // A value out of a C int's range is refused when the config is read.
    let f = run_with_config(
        "validate",
        &with_socket_options(port, "[{ level: 1, name: 9, int_value: 4294967296 }]"),
    );
    assert_one_line_error(&f, &["socket_options[0].int_value"]);
}
