//! Access logs of TCP proxy connections and of listeners, as Envoy 1.40 writes them:
//! `tcp_proxy`'s `access_log` (with `flush_access_log_on_connected` and a periodic entry)
//! for a proxied connection, a refused upstream, an empty cluster; a listener's
//! `access_log` for those connections, for a connection no filter chain takes, and for an
//! HTTP connection. The same connections go through Courier and, when `envoy` is on PATH,
//! through Envoy; the logged lines must be equal.

mod http_support;

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::Path;
use std::time::{Duration, Instant};

use http_support::*;

const FORMAT: &str = "%ACCESS_LOG_TYPE% code=%RESPONSE_CODE% flags=%RESPONSE_FLAGS% details=%RESPONSE_CODE_DETAILS% term=%CONNECTION_TERMINATION_DETAILS% failure=%UPSTREAM_TRANSPORT_FAILURE_REASON% rx=%BYTES_RECEIVED% tx=%BYTES_SENT% proto=%PROTOCOL% path=%REQ(:PATH)% cluster=%UPSTREAM_CLUSTER% up=%UPSTREAM_HOST% up_local=%UPSTREAM_LOCAL_ADDRESS% local=%DOWNSTREAM_LOCAL_ADDRESS% remote=%DOWNSTREAM_REMOTE_ADDRESS_WITHOUT_PORT% sni=%REQUESTED_SERVER_NAME% dur=%DURATION%\n";

fn logger(dir: &Path, name: &str, indent: &str) -> String {
    format!(
        "{indent}- name: {name}
{indent}  typed_config:
{indent}    \"@type\": type.googleapis.com/envoy.extensions.access_loggers.file.v3.FileAccessLog
{indent}    path: {}
{indent}    log_format: {{ text_format: {:?} }}
",
        dir.join(format!("{name}.log")).display(),
        FORMAT
    )
}

fn tcp_listener(name: &str, port: &str, cluster: &str, dir: &Path, options: &str) -> String {
    format!(
        "  - name: {name}
    address: {{ socket_address: {{ address: 127.0.0.1, port_value: {port} }} }}
    access_log:
{listener_log}    filter_chains:
    - filters:
      - name: envoy.filters.network.tcp_proxy
        typed_config:
          \"@type\": type.googleapis.com/envoy.extensions.filters.network.tcp_proxy.v3.TcpProxy
          stat_prefix: {name}
          cluster: {cluster}
{options}          access_log:
{tcp_log}",
        listener_log = logger(dir, &format!("{name}_listener"), "    "),
        tcp_log = logger(dir, &format!("{name}_tcp"), "          "),
    )
}

struct Ports {
    periodic: u16,
    refused: u16,
    empty: u16,
    unmatched: u16,
    http: u16,
}

fn boot(
    dir: &Path,
    p: &Ports,
    echo: SocketAddr,
    refused: SocketAddr,
    http_up: SocketAddr,
) -> String {
    let listeners = [
        tcp_listener(
            "echo",
            "LISTENER_PORT",
            "c",
            dir,
            "          access_log_options: { flush_access_log_on_connected: true }\n",
        ),
        tcp_listener(
            "periodic",
            &p.periodic.to_string(),
            "c",
            dir,
            "          access_log_options: { access_log_flush_interval: 0.05s }\n",
        ),
        tcp_listener("refused", &p.refused.to_string(), "refused", dir, ""),
        tcp_listener("empty", &p.empty.to_string(), "empty", dir, ""),
        format!(
            "  - name: unmatched
    address: {{ socket_address: {{ address: 127.0.0.1, port_value: {} }} }}
    access_log:
{}    filter_chains:
    - filter_chain_match: {{ destination_port: 1 }}
      filters:
      - name: envoy.filters.network.tcp_proxy
        typed_config:
          \"@type\": type.googleapis.com/envoy.extensions.filters.network.tcp_proxy.v3.TcpProxy
          stat_prefix: unmatched
          cluster: c
",
            p.unmatched,
            logger(dir, "unmatched_listener", "    ")
        ),
        format!(
            "  - name: http
    address: {{ socket_address: {{ address: 127.0.0.1, port_value: {} }} }}
    access_log:
{}    filter_chains:
    - filters:
      - name: envoy.filters.network.http_connection_manager
        typed_config:
          \"@type\": type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager
          stat_prefix: http
          http_filters:
          - name: envoy.filters.http.router
            typed_config:
              \"@type\": type.googleapis.com/envoy.extensions.filters.http.router.v3.Router
          route_config:
            virtual_hosts:
            - name: all
              domains: [\"*\"]
              routes:
              - match: {{ prefix: / }}
                route: {{ cluster: h }}
",
            p.http,
            logger(dir, "http_listener", "    ")
        ),
    ]
    .concat();
    let clusters = [
        cluster("c", &[echo], ""),
        cluster("refused", &[refused], ""),
        cluster("h", &[http_up], ""),
        "  - name: empty\n    type: STATIC\n    connect_timeout: 1s\n    load_assignment: { cluster_name: empty, endpoints: [] }\n".to_string(),
    ]
    .concat();
    format!(
        "admin:
  address: {{ socket_address: {{ address: 127.0.0.1, port_value: 0 }} }}
static_resources:
  listeners:
{listeners}  clusters:
{clusters}"
    )
}

/// The lines of `name`.log once it has `n` (or after 10 s).
fn lines(dir: &Path, name: &str, n: usize) -> Vec<String> {
    log_lines(&dir.join(format!("{name}.log")), n)
}

/// Connects to `port`, sends `data`, reads until the proxy closes or `expect` bytes came.
fn exchange(port: u16, data: &[u8], expect: usize) -> Vec<u8> {
    let Ok(mut s) = TcpStream::connect(("127.0.0.1", port)) else {
        return Vec::new();
    };
    let _ = s.set_read_timeout(Some(Duration::from_secs(5)));
    let _ = s.write_all(data);
    let mut got = Vec::new();
    let mut buf = [0u8; 1024];
    while got.len() < expect || expect == 0 {
        match s.read(&mut buf) {
            Ok(0) | Err(_) => break,
            Ok(n) => got.extend_from_slice(&buf[..n]),
        }
    }
    got
}

fn run(start: &dyn Fn(&str) -> Option<Courier>) -> Option<Vec<String>> {
    let dir = tempfile::tempdir().expect("tempdir");
    let echo = echo_server();
    let refused = refusing_addr();
    let http_up = Upstream::start("h");
    let p = Ports {
        periodic: free_port(),
        refused: free_port(),
        empty: free_port(),
        unmatched: free_port(),
        http: free_port(),
    };
    let proxy = start(&boot(dir.path(), &p, echo, refused, http_up.addr))?;
    let echo_port = proxy.listener.port();
    assert_eq!(exchange(echo_port, b"hello", 5), b"hello");
    // A connection held open gets periodic entries: the first one is compared.
    let mut held = TcpStream::connect(("127.0.0.1", p.periodic)).expect("connect");
    held.write_all(b"hi").expect("write");
    let mut two = [0u8; 2];
    held.read_exact(&mut two).expect("echo");
    // The first entry after the echo (an earlier one may have come before the bytes).
    let deadline = Instant::now() + Duration::from_secs(10);
    let periodic = loop {
        let got: Vec<String> = lines(dir.path(), "periodic_tcp", 1)
            .into_iter()
            .filter(|l| l.contains("rx=2 tx=2"))
            .collect();
        if !got.is_empty() || Instant::now() > deadline {
            break got;
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    drop(held);
    exchange(p.refused, b"x", 0);
    exchange(p.empty, b"x", 0);
    exchange(p.unmatched, b"x", 0);
    // One request on a connection the proxy closes after it (`connection: close`).
    let response = exchange(
        p.http,
        b"GET /ok HTTP/1.1\r\nhost: h\r\nconnection: close\r\n\r\n",
        0,
    );
    assert!(response.starts_with(b"HTTP/1.1 200"), "{response:?}");
    let mut out: Vec<String> = periodic
        .iter()
        .take(1)
        .map(|l| format!("periodic_tcp: {l}"))
        .collect();
    // The start-up check's connection is logged too (before or after this test's, as the
    // two race): each file's lines are compared sorted.
    for (name, n) in [
        ("echo_tcp", 4),
        ("echo_listener", 2),
        ("refused_tcp", 1),
        ("refused_listener", 1),
        ("empty_tcp", 1),
        ("empty_listener", 1),
        ("unmatched_listener", 1),
        ("http_listener", 1),
    ] {
        let mut got = lines(dir.path(), name, n);
        got.sort();
        for l in got {
            out.push(format!("{name}: {l}"));
        }
    }
    drop(proxy);
    let ports = [
        (echo_port, "ECHO_PORT"),
        (p.periodic, "PERIODIC_PORT"),
        (p.refused, "REFUSED_PORT"),
        (p.empty, "EMPTY_PORT"),
        (p.unmatched, "UNMATCHED_PORT"),
        (p.http, "HTTP_PORT"),
    ];
    let re_local = regex::Regex::new(r"up_local=127\.0\.0\.1:\d+").expect("regex");
    let re_dur = regex::Regex::new(r"dur=\d+").expect("regex");
    let re_tx = regex::Regex::new(r"tx=1\d\d").expect("regex");
    Some(
        out.into_iter()
            .map(|l| {
                let mut l = l
                    .replace(&echo.to_string(), "ECHO")
                    .replace(&refused.to_string(), "REFUSED");
                for (port, name) in ports {
                    l = l.replace(&format!("127.0.0.1:{port}"), name);
                }
                let l = re_local.replace_all(&l, "up_local=EPHEMERAL");
                let l = re_dur.replace_all(&l, "dur=N");
                // The response's `x-envoy-upstream-service-time` may take another digit.
                if l.starts_with("http_listener") {
                    re_tx.replace_all(&l, "tx=N").into_owned()
                } else {
                    l.into_owned()
                }
            })
            .collect(),
    )
}

#[test]
fn tcp_and_listener_entries_are_logged_as_envoy_logs_them() {
    let got = run(&|b| Some(Courier::start(b))).expect("courier starts");
    if let Some(envoy) =
        run(&|b| Courier::start_envoy_with(b, &["--file-flush-interval-msec", "20"]))
    {
        assert_eq!(envoy, got, "envoy vs courier");
    }
}
