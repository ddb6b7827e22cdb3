//! The PROXY protocol listener filter, differential with Envoy 1.40 (when `envoy` is on
//! PATH): v1 and v2 headers give the connection its client address (seen upstream in
//! `x-forwarded-for`), a connection without one or with a malformed one is closed (or,
//! with `allow_requests_without_proxy_protocol`, served), a disallowed version is
//! refused, and the `proxy_proto.*` stats agree.

mod http_support;

use std::io::{BufReader, Write};
use std::net::TcpStream;
use std::time::Duration;

use http_support::*;

fn listener_bootstrap(up: std::net::SocketAddr, filter: &str) -> String {
    let b = bootstrap(
        &all_to("c"),
        "          use_remote_address: true\n",
        &cluster("c", &[up], ""),
    );
    b.replacen(
        "    filter_chains:\n",
        &format!(
            "    listener_filters:\n    - name: envoy.filters.listener.proxy_protocol\n      typed_config:\n        \"@type\": type.googleapis.com/envoy.extensions.filters.listener.proxy_protocol.v3.ProxyProtocol\n{filter}    filter_chains:\n"
        ),
        1,
    )
}

/// Sends `prefix` then a GET on a new connection: the status, or `None` if the proxy
/// closed the connection without answering.
fn send(proxy: &Courier, prefix: &[u8]) -> Option<u16> {
    let mut s = TcpStream::connect(proxy.listener).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
    let mut bytes = prefix.to_vec();
    bytes.extend_from_slice(b"GET / HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n");
    let _ = s.write_all(&bytes);
    read_response(&mut BufReader::new(s), false).map(|r| r.status)
}

fn v2_header() -> Vec<u8> {
    let mut h = b"\r\n\r\n\0\r\nQUIT\n".to_vec();
    h.extend_from_slice(&[
        0x21, 0x11, 0, 12, 10, 1, 2, 3, 10, 0, 0, 2, 0x1f, 0x90, 0, 80,
    ]);
    h
}

#[derive(Debug, PartialEq)]
struct Run {
    results: Vec<(Option<u16>, Option<String>)>,
    stats: Vec<(String, u64)>,
}

fn scenario(start: impl Fn(&str) -> Option<Courier>, filter: &str) -> Option<Run> {
    let up = Upstream::start("up");
    let proxy = start(&listener_bootstrap(up.addr, filter))?;
    let mut results = Vec::new();
    for prefix in [
        b"PROXY TCP4 192.0.2.1 198.51.100.2 56324 80\r\n".to_vec(),
        v2_header(),
        b"PROXY UNKNOWN\r\n".to_vec(),
        Vec::new(),
        b"PROXY TCP4 not-an-ip 198.51.100.2 1 2\r\n".to_vec(),
    ] {
        let before = up.requests.load(std::sync::atomic::Ordering::SeqCst);
        let status = send(&proxy, &prefix);
        let xff = (up.requests.load(std::sync::atomic::Ordering::SeqCst) > before)
            .then(|| {
                up.last()
                    .and_then(|s| s.header("x-forwarded-for").map(str::to_string))
            })
            .flatten();
        results.push((status, xff));
    }
    let mut stats: Vec<(String, u64)> = [
        "proxy_proto.versions.v1.found",
        "proxy_proto.versions.v1.error",
        "proxy_proto.versions.v1.disallowed",
        "proxy_proto.versions.v2.found",
        "proxy_proto.versions.v2.error",
        "proxy_proto.not_found_allowed",
        "proxy_proto.not_found_disallowed",
    ]
    .iter()
    .map(|n| (n.to_string(), proxy.stat(n)))
    .collect();
    stats.sort();
    Some(Run { results, stats })
}

#[test]
fn headers_give_the_client_address_as_envoy() {
    let courier = scenario(|b| Some(Courier::start(b)), "").expect("courier ran");
    assert_eq!(
        courier.results[..2],
        [
            (Some(200), Some("192.0.2.1".to_string())),
            (Some(200), Some("10.1.2.3".to_string())),
        ]
    );
    // UNKNOWN keeps the connection's own (loopback) address: the machine's is appended.
    assert!(
        matches!(courier.results[2], (Some(200), Some(_))),
        "{courier:?}"
    );
    assert_eq!(courier.results[3..], [(None, None), (None, None)]);
    if let Some(envoy) = scenario(Courier::start_envoy, "") {
        assert_eq!(courier, envoy);
    }
}

#[test]
fn without_a_header_allowed_and_a_version_disallowed_as_envoy() {
    let filter = "        allow_requests_without_proxy_protocol: true\n        disallowed_versions: [ V2 ]\n";
    let courier = scenario(|b| Some(Courier::start(b)), filter).expect("courier ran");
    // A disallowed version is not looked for: its header reaches the codec (a 400).
    assert_eq!(courier.results[1], (Some(400), None), "v2 is disallowed");
    assert!(
        matches!(courier.results[3], (Some(200), Some(_))),
        "{courier:?}"
    );
    if let Some(envoy) = scenario(Courier::start_envoy, filter) {
        assert_eq!(courier, envoy);
    }
}

#[test]
fn a_disallowed_version_is_refused_as_envoy() {
    let filter = "        disallowed_versions: [ V1 ]\n";
    let courier = scenario(|b| Some(Courier::start(b)), filter).expect("courier ran");
    assert_eq!(courier.results[0], (None, None), "v1 is disallowed");
    assert_eq!(
        courier.results[1],
        (Some(200), Some("10.1.2.3".to_string()))
    );
    if let Some(envoy) = scenario(Courier::start_envoy, filter) {
        assert_eq!(courier, envoy);
    }
}
