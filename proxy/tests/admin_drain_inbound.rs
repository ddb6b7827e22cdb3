//! `POST /drain_listeners?inboundonly`: only the `INBOUND` listeners stop accepting; the
//! others go on. Run through Courier and Envoy 1.40; the two must agree.

mod http_support;

use std::net::{SocketAddr, TcpStream};
use std::time::{Duration, Instant};

use http_support::*;

fn listener(name: &str, port: &str, direction: &str) -> String {
    format!(
        "  - name: {name}\n    traffic_direction: {direction}\n    address: {{ socket_address: {{ address: 127.0.0.1, port_value: {port} }} }}\n    filter_chains:\n    - name: {name}\n{}",
        answering_filters(name)
    )
}

fn boot(outbound_port: u16) -> String {
    format!(
        "admin:\n  address:\n    socket_address: {{ address: 127.0.0.1, port_value: 0 }}\nstatic_resources:\n  listeners:\n{}{}",
        listener("inbound", "LISTENER_PORT", "INBOUND"),
        listener("outbound", &outbound_port.to_string(), "OUTBOUND"),
    )
}

/// Whether `addr` refuses connections within 10 s.
fn stops_accepting(addr: SocketAddr) -> bool {
    let deadline = Instant::now() + Duration::from_secs(10);
    while Instant::now() < deadline {
        if TcpStream::connect_timeout(&addr, Duration::from_secs(1)).is_err() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    false
}

fn run(proxy: &Courier, outbound: SocketAddr) -> Vec<String> {
    let before = [
        get(proxy.listener, "h", "/", &[]).body_str(),
        get(outbound, "h", "/", &[]).body_str(),
    ];
    let status = admin_post(proxy.admin, "/drain_listeners?inboundonly");
    vec![
        format!("before: {before:?}"),
        format!("drain: {status:?}"),
        format!(
            "inbound stops accepting: {}",
            stops_accepting(proxy.listener)
        ),
        format!(
            "outbound answers: {}",
            get(outbound, "h", "/", &[]).body_str()
        ),
    ]
}

#[test]
fn inbound_only_drains_only_inbound_listeners() {
    let port = free_port();
    let outbound = SocketAddr::from(([127, 0, 0, 1], port));
    let got = run(&Courier::start(&boot(port)), outbound);
    let port = free_port();
    let outbound = SocketAddr::from(([127, 0, 0, 1], port));
    if let Some(envoy) = Courier::start_envoy(&boot(port)) {
        assert_eq!(run(&envoy, outbound), got, "envoy vs courier");
    }
    assert_eq!(
        got,
        [
            "before: [\"inbound\", \"outbound\"]",
            "drain: Some(200)",
            "inbound stops accepting: true",
            "outbound answers: outbound",
        ]
    );
}
