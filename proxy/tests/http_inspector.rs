//! The HTTP inspector (`envoy.filters.listener.http_inspector`): chains matched on the
//! application protocol a plaintext connection speaks (`http/1.0`, `http/1.1`, `h2c`), the
//! rest to a default chain, with Envoy's counters. Each case runs through Courier and,
//! when `envoy` is on PATH, through Envoy 1.40; the two must agree.

mod http_support;

use std::io::{Read, Write};

use http_support::*;

fn bootstrap(echo: std::net::SocketAddr) -> String {
    let hcm = |name: &str, body: &str| {
        format!(
            r#"      - name: envoy.filters.network.http_connection_manager
        typed_config:
          "@type": type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager
          stat_prefix: {name}
          http_protocol_options: {{ accept_http_10: true }}
          http_filters:
          - name: envoy.filters.http.router
            typed_config: {{ "@type": type.googleapis.com/envoy.extensions.filters.http.router.v3.Router }}
          route_config:
            virtual_hosts:
            - name: all
              domains: ["*"]
              routes: [{{ match: {{ prefix: / }}, direct_response: {{ status: 200, body: {{ inline_string: {body} }} }} }}]
"#
        )
    };
    format!(
        r#"admin:
  address: {{ socket_address: {{ address: 127.0.0.1, port_value: 0 }} }}
static_resources:
  listeners:
  - name: inspected
    address: {{ socket_address: {{ address: 127.0.0.1, port_value: LISTENER_PORT }} }}
    listener_filters:
    - name: envoy.filters.listener.tls_inspector
      typed_config: {{ "@type": type.googleapis.com/envoy.extensions.filters.listener.tls_inspector.v3.TlsInspector }}
    - name: envoy.filters.listener.http_inspector
      typed_config: {{ "@type": type.googleapis.com/envoy.extensions.filters.listener.http_inspector.v3.HttpInspector }}
    filter_chains:
    - filter_chain_match: {{ application_protocols: [http/1.1] }}
      filters:
{h11}    - filter_chain_match: {{ application_protocols: [http/1.0] }}
      filters:
{h10}    - filter_chain_match: {{ application_protocols: [h2c] }}
      filters:
{h2c}    default_filter_chain:
      filters:
      - name: envoy.filters.network.tcp_proxy
        typed_config:
          "@type": type.googleapis.com/envoy.extensions.filters.network.tcp_proxy.v3.TcpProxy
          stat_prefix: raw
          cluster: echo
  clusters:
{echo}"#,
        h11 = hcm("h11", "one-one"),
        h10 = hcm("h10", "one-zero"),
        h2c = hcm("h2c", "two"),
        echo = cluster("echo", &[echo], ""),
    )
}

/// What a connection that sends `bytes` gets back (up to 4 KiB or its close).
fn answer(proxy: &Courier, bytes: &[u8]) -> String {
    let mut s = std::net::TcpStream::connect(proxy.listener).expect("connect");
    s.set_read_timeout(Some(std::time::Duration::from_secs(5)))
        .expect("timeout");
    s.write_all(bytes).expect("write");
    let mut buf = vec![0u8; 4096];
    let mut got = Vec::new();
    while let Ok(n) = s.read(&mut buf) {
        if n == 0 {
            break;
        }
        got.extend_from_slice(&buf[..n]);
        let text = String::from_utf8_lossy(&got);
        // Enough to tell the chains apart: a whole HTTP/1 answer, an echo, an h2 frame.
        if text.contains("one-one")
            || text.contains("one-zero")
            || got.starts_with(b"ping")
            || got.len() >= 9 && got[3] == 4
        {
            break;
        }
    }
    let text = String::from_utf8_lossy(&got);
    if text.contains("one-one") {
        "http/1.1 chain".into()
    } else if text.contains("one-zero") {
        "http/1.0 chain".into()
    } else if got.starts_with(b"ping") {
        "default chain (echoed)".into()
    } else if got.len() >= 9 && got[3] == 4 {
        "h2c chain (SETTINGS)".into()
    } else {
        format!("other: {text:?}")
    }
}

fn run(proxy: &Courier) -> Vec<String> {
    let mut t = vec![
        answer(proxy, b"GET / HTTP/1.1\r\nhost: a\r\n\r\n"),
        answer(proxy, b"GET / HTTP/1.0\r\nhost: a\r\n\r\n"),
        answer(
            proxy,
            b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n\0\0\0\x04\0\0\0\0\0",
        ),
        answer(proxy, b"ping\r\n"),
        answer(proxy, b"GET / HTTP/1.1\r\nhost: b\r\n\r\n"),
    ];
    for n in [
        "http10_found",
        "http11_found",
        "http2_found",
        "http_not_found",
    ] {
        let name = format!("http_inspector.{n}");
        t.push(format!("{name}={}", proxy.stat(&name)));
    }
    t.push(format!(
        "tls_inspector.tls_not_found={}",
        proxy.stat("tls_inspector.tls_not_found")
    ));
    t
}

#[test]
fn chains_by_application_protocol_as_envoy() {
    let b = bootstrap(echo_server());
    let courier = run(&Courier::start(&b));
    for line in &courier {
        eprintln!("courier: {line}");
    }
    assert_eq!(courier[0], "http/1.1 chain");
    assert_eq!(courier[1], "http/1.0 chain");
    assert_eq!(courier[2], "h2c chain (SETTINGS)");
    assert_eq!(courier[3], "default chain (echoed)");
    if let Some(envoy) = Courier::start_envoy(&b).map(|e| run(&e)) {
        for line in &envoy {
            eprintln!("envoy:   {line}");
        }
        assert_eq!(courier, envoy, "Courier (left) and Envoy (right) differ");
    }
}
