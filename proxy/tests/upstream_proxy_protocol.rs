//! `upstream_proxy_protocol`: an upstream connection starts with a PROXY header naming
//! the downstream connection's client and destination addresses, for HTTP and for
//! `tcp_proxy`, v1 and v2, on Courier as on Envoy 1.40 (when `envoy` is on PATH).

mod http_support;

use std::io::{BufReader, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::Duration;

use http_support::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// An upstream that reads a PROXY header, then answers each HTTP request with the
/// header it read (v1 as text, v2 as `v2 <src> <dst>`).
fn header_echo() -> SocketAddr {
    spawn_tokio_server(|mut s| async move {
        let mut buf = Vec::new();
        let mut chunk = [0u8; 1024];
        let header = loop {
            let Ok(n) = s.read(&mut chunk).await else {
                return;
            };
            if n == 0 {
                return;
            }
            buf.extend_from_slice(&chunk[..n]);
            if buf.starts_with(b"PROXY ") {
                if let Some(end) = buf.windows(2).position(|w| w == b"\r\n") {
                    let line = String::from_utf8_lossy(&buf[..end]).into_owned();
                    buf.drain(..end + 2);
                    break line;
                }
            } else if buf.len() >= 28 && buf[12] == 0x21 && buf[13] == 0x11 {
                let b = &buf[16..28];
                let line = format!(
                    "v2 {}.{}.{}.{}:{} {}.{}.{}.{}:{}",
                    b[0],
                    b[1],
                    b[2],
                    b[3],
                    u16::from_be_bytes([b[8], b[9]]),
                    b[4],
                    b[5],
                    b[6],
                    b[7],
                    u16::from_be_bytes([b[10], b[11]])
                );
                buf.drain(..28);
                break line;
            } else if buf.len() >= 28 {
                break "unexpected".to_string();
            }
        };
        loop {
            while let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                buf.drain(..end + 4);
                let resp = format!(
                    "HTTP/1.1 200 OK\r\ncontent-length: {}\r\n\r\n{header}",
                    header.len()
                );
                if s.write_all(resp.as_bytes()).await.is_err() {
                    return;
                }
            }
            let Ok(n) = s.read(&mut chunk).await else {
                return;
            };
            if n == 0 {
                return;
            }
            buf.extend_from_slice(&chunk[..n]);
        }
    })
}

fn pp_cluster(up: SocketAddr, version: &str) -> String {
    cluster(
        "c",
        &[up],
        &format!("    transport_socket:\n      name: envoy.transport_sockets.upstream_proxy_protocol\n      typed_config:\n        \"@type\": type.googleapis.com/envoy.extensions.transport_sockets.proxy_protocol.v3.ProxyProtocolUpstreamTransport\n        config: {{ version: {version} }}\n        transport_socket: {{ name: envoy.transport_sockets.raw_buffer, typed_config: {{ \"@type\": type.googleapis.com/envoy.extensions.transport_sockets.raw_buffer.v3.RawBuffer }} }}\n"),
    )
}

/// The header the upstream saw for one request, and what it should have been.
fn through(proxy: &Courier) -> (String, SocketAddr) {
    let mut s = TcpStream::connect(proxy.listener).expect("connect");
    s.set_read_timeout(Some(Duration::from_secs(5)))
        .expect("timeout");
    let me = s.local_addr().expect("addr");
    s.write_all(b"GET / HTTP/1.1\r\nhost: x\r\n\r\n")
        .expect("write");
    let r = read_response(&mut BufReader::new(s), false).expect("a response");
    (r.body_str(), me)
}

#[test]
fn http_upstreams_get_the_downstream_addresses_as_envoy() {
    let up = header_echo();
    for version in ["V1", "V2"] {
        let b = bootstrap(&all_to("c"), "", &pp_cluster(up, version));
        for proxy in [Some(Courier::start(&b)), Courier::start_envoy(&b)]
            .into_iter()
            .flatten()
        {
            let (seen, me) = through(&proxy);
            let want = if version == "V1" {
                format!(
                    "PROXY TCP4 {} {} {} {}",
                    me.ip(),
                    proxy.listener.ip(),
                    me.port(),
                    proxy.listener.port()
                )
            } else {
                format!("v2 {me} {}", proxy.listener)
            };
            assert_eq!(seen, want, "{version}");
        }
    }
}

#[test]
fn tcp_proxy_upstreams_get_the_downstream_addresses_as_envoy() {
    let up = header_echo();
    let b = tcp_bootstrap(&pp_cluster(up, "V1"));
    for proxy in [Some(Courier::start(&b)), Courier::start_envoy(&b)]
        .into_iter()
        .flatten()
    {
        let (seen, me) = through(&proxy);
        assert_eq!(
            seen,
            format!(
                "PROXY TCP4 {} {} {} {}",
                me.ip(),
                proxy.listener.ip(),
                me.port(),
                proxy.listener.port()
            )
        );
    }
}
