//! `upstream_bind_config`: connections to a cluster's hosts come from its source address
//! (else the bootstrap's `cluster_manager.upstream_bind_config`), for HTTP and for
//! `tcp_proxy`, on Courier as on Envoy 1.40 (when `envoy` is on PATH).

mod http_support;

use std::net::SocketAddr;

use http_support::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// An HTTP/1.1 upstream whose answer is the address the connection came from.
fn peer_echo() -> SocketAddr {
    spawn_tokio_server(|mut s| async move {
        let peer = s
            .peer_addr()
            .map(|a| a.ip().to_string())
            .unwrap_or_default();
        let mut buf = vec![0u8; 4096];
        let mut seen = Vec::new();
        loop {
            let Ok(n) = s.read(&mut buf).await else {
                return;
            };
            if n == 0 {
                return;
            }
            seen.extend_from_slice(&buf[..n]);
            while let Some(end) = seen.windows(4).position(|w| w == b"\r\n\r\n") {
                seen.drain(..end + 4);
                let resp = format!(
                    "HTTP/1.1 200 OK\r\ncontent-length: {}\r\n\r\n{peer}",
                    peer.len()
                );
                if s.write_all(resp.as_bytes()).await.is_err() {
                    return;
                }
            }
        }
    })
}

fn source_seen(start: impl Fn(&str) -> Option<Courier>, bootstrap: &str) -> Option<String> {
    let proxy = start(bootstrap)?;
    let r = get(proxy.listener, "x", "/", &[]);
    assert_eq!(r.status, 200);
    Some(r.body_str())
}

#[test]
fn http_connections_come_from_the_cluster_source_address() {
    let up = peer_echo();
    let bind =
        "    upstream_bind_config: { source_address: { address: 127.0.0.2, port_value: 0 } }\n";
    let b = bootstrap(&all_to("c"), "", &cluster("c", &[up], bind));
    assert_eq!(
        source_seen(|b| Some(Courier::start(b)), &b).as_deref(),
        Some("127.0.0.2")
    );
    if let Some(envoy) = source_seen(Courier::start_envoy, &b) {
        assert_eq!(envoy, "127.0.0.2");
    }
    // The bootstrap's applies to clusters without their own.
    let b = bootstrap(&all_to("c"), "", &cluster("c", &[up], "")).replacen(
        "static_resources:",
        "cluster_manager:\n  upstream_bind_config: { source_address: { address: 127.0.0.3, port_value: 0 } }\nstatic_resources:",
        1,
    );
    assert_eq!(
        source_seen(|b| Some(Courier::start(b)), &b).as_deref(),
        Some("127.0.0.3")
    );
    if let Some(envoy) = source_seen(Courier::start_envoy, &b) {
        assert_eq!(envoy, "127.0.0.3");
    }
}

#[test]
fn tcp_proxy_connections_come_from_the_cluster_source_address() {
    let up = peer_echo();
    let run = |start: &dyn Fn(&str) -> Option<Courier>| -> Option<String> {
        let b = tcp_bootstrap(&cluster(
            "c",
            &[up],
            "    upstream_bind_config: { source_address: { address: 127.0.0.4, port_value: 0 } }\n",
        ));
        let proxy = start(&b)?;
        let r = get(proxy.listener, "x", "/", &[]);
        Some(r.body_str())
    };
    assert_eq!(
        run(&|b| Some(Courier::start(b))).as_deref(),
        Some("127.0.0.4")
    );
    if let Some(envoy) = run(&Courier::start_envoy) {
        assert_eq!(envoy, "127.0.0.4");
    }
}

#[test]
fn bind_settings_courier_lacks_are_refused_by_path() {
    let up = peer_echo();
    let bind = "    upstream_bind_config: { source_address: { address: 127.0.0.2, port_value: 0 }, socket_options: [ { level: 1, name: 2, int_value: 1 } ] }\n";
    let (code, out) = validate(&bootstrap(&all_to("c"), "", &cluster("c", &[up], bind)));
    assert_ne!(code, Some(0));
    assert!(out.contains("upstream_bind_config.socket_options"), "{out}");
}
