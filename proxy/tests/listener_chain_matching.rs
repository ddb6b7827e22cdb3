//! Which filter chain takes a connection: `filter_chain_match`'s address criteria
//! (`prefix_ranges`, `direct_source_prefix_ranges`, `source_type`,
//! `source_prefix_ranges`, `source_ports`) in Envoy's order, and `filter_chain_matcher`
//! (the xDS matcher API naming chains, an `IPMatcher` among its trees). Clients connect to and from several loopback
//! addresses (the listener is on 0.0.0.0) and from chosen ports; each chain answers its
//! own name. Run through Courier and Envoy 1.40; the two must agree.

mod http_support;

use std::io::{BufReader, Write};
use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use http_support::*;

/// A filter chain answering `name` to every request.
fn chain(name: &str, matching: &str) -> String {
    format!("    - name: {name}\n{matching}{}", answering_filters(name))
}

fn boot(chains: &str, extra: &str) -> String {
    format!(
        r#"admin:
  address:
    socket_address: {{ address: 127.0.0.1, port_value: 0 }}
static_resources:
  listeners:
  - name: main
    stat_prefix: main
    address:
      socket_address: {{ address: 0.0.0.0, port_value: LISTENER_PORT }}
{extra}    filter_chains:
{chains}"#
    )
}

fn by_match() -> String {
    let chains = [
        chain("dst_one", "      filter_chain_match: { prefix_ranges: [{ address_prefix: 127.0.0.1, prefix_len: 32 }] }\n"),
        chain("dst_loopback", "      filter_chain_match: { prefix_ranges: [{ address_prefix: 127.0.0.0, prefix_len: 8 }], source_type: SAME_IP_OR_LOOPBACK, source_ports: [41001] }\n"),
        chain("dst_loopback_any", "      filter_chain_match: { prefix_ranges: [{ address_prefix: 127.0.0.0, prefix_len: 8 }] }\n"),
        chain("dst_two_src", "      filter_chain_match: { prefix_ranges: [{ address_prefix: 127.0.0.2, prefix_len: 32 }], source_prefix_ranges: [{ address_prefix: 127.0.0.8, prefix_len: 29 }] }\n"),
        chain("dst_two_direct", "      filter_chain_match: { prefix_ranges: [{ address_prefix: 127.0.0.2, prefix_len: 32 }], direct_source_prefix_ranges: [{ address_prefix: 127.0.0.20, prefix_len: 32 }] }\n"),
        chain("dst_three_external", "      filter_chain_match: { prefix_ranges: [{ address_prefix: 127.0.0.3, prefix_len: 32 }], source_type: EXTERNAL }\n"),
    ]
    .concat();
    boot(&chains, "")
}

fn by_matcher() -> String {
    let action = |name: &str| {
        format!(
            r#"{{ action: {{ name: chain, typed_config: {{ "@type": type.googleapis.com/google.protobuf.StringValue, value: {name} }} }} }}"#
        )
    };
    let extra = format!(
        r#"    default_filter_chain:
{default}    filter_chain_matcher:
      matcher_tree:
        input: {{ name: dip, typed_config: {{ "@type": type.googleapis.com/envoy.extensions.matching.common_inputs.network.v3.DestinationIPInput }} }}
        exact_match_map:
          map:
            "127.0.0.1": {one}
            "127.0.0.3": {ghost}
            "127.0.0.2":
              matcher:
                matcher_list:
                  matchers:
                  - predicate:
                      single_predicate:
                        input: {{ name: sip, typed_config: {{ "@type": type.googleapis.com/envoy.extensions.matching.common_inputs.network.v3.SourceIPInput }} }}
                        value_match: {{ exact: 127.0.0.9 }}
                    on_match: {two}
                  - predicate:
                      single_predicate:
                        input: {{ name: sport, typed_config: {{ "@type": type.googleapis.com/envoy.extensions.matching.common_inputs.network.v3.SourcePortInput }} }}
                        value_match: {{ exact: "41002" }}
                    on_match: {one}
"#,
        default =
            chain("fallback", "").replacen("    - name: fallback\n", "      name: fallback\n", 1),
        one = action("one"),
        two = action("two"),
        ghost = action("ghost"),
    );
    // Matched chains keep a filter_chain_match that the matcher makes irrelevant.
    let chains = [
        chain("one", "      filter_chain_match: { destination_port: 1 }\n"),
        chain("two", "      filter_chain_match: { destination_port: 1 }\n"),
    ]
    .concat();
    boot(&chains, &extra)
}

/// One request from `from` (an address, and a port or 0) to `to`: the chain's answer, or
/// `closed` when the connection got none.
fn ask(port: u16, to: &str, from: (&str, u16)) -> String {
    let to = SocketAddr::new(to.parse::<IpAddr>().expect("to"), port);
    let socket =
        socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).expect("socket");
    socket.set_reuse_address(true).expect("reuse");
    let from = SocketAddr::new(from.0.parse::<IpAddr>().expect("from"), from.1);
    socket.bind(&from.into()).expect("bind the client");
    socket.connect(&to.into()).expect("connect");
    let mut stream: std::net::TcpStream = socket.into();
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .expect("timeout");
    if stream
        .write_all(b"GET / HTTP/1.1\r\nhost: h\r\nconnection: close\r\n\r\n")
        .is_err()
    {
        return "closed".into();
    }
    let mut r = BufReader::new(stream);
    match read_response(&mut r, false) {
        Some(resp) => resp.body_str(),
        None => "closed".into(),
    }
}

fn run(proxy: &Courier, cases: &[(&str, (&str, u16))]) -> Vec<String> {
    let port = proxy.listener.port();
    let mut out: Vec<String> = cases
        .iter()
        .map(|(to, from)| format!("{to} from {}:{}: {}", from.0, from.1, ask(port, to, *from)))
        .collect();
    out.push(format!(
        "no_filter_chain_match={}",
        proxy.stat("listener.main.no_filter_chain_match")
    ));
    out
}

fn agree(boot: &str, cases: &[(&str, (&str, u16))]) -> Vec<String> {
    let got = run(&Courier::start(boot), cases);
    match Courier::start_envoy(boot) {
        Some(envoy) => assert_eq!(run(&envoy, cases), got, "envoy vs courier"),
        None => eprintln!("envoy not on PATH: Courier's side only"),
    }
    got
}

#[test]
fn filter_chain_match_address_criteria_match_envoy() {
    let got = agree(
        &by_match(),
        &[
            ("127.0.0.1", ("127.0.0.1", 0)),
            ("127.0.0.4", ("127.0.0.1", 0)),
            ("127.0.0.4", ("127.0.0.1", 41001)),
            ("127.0.0.2", ("127.0.0.9", 0)),
            ("127.0.0.2", ("127.0.0.20", 0)),
            ("127.0.0.2", ("127.0.0.30", 0)),
            ("127.0.0.3", ("127.0.0.1", 0)),
        ],
    );
    assert_eq!(
        got,
        [
            "127.0.0.1 from 127.0.0.1:0: dst_one",
            "127.0.0.4 from 127.0.0.1:0: closed",
            "127.0.0.4 from 127.0.0.1:41001: dst_loopback",
            "127.0.0.2 from 127.0.0.9:0: dst_two_src",
            "127.0.0.2 from 127.0.0.20:0: dst_two_direct",
            "127.0.0.2 from 127.0.0.30:0: closed",
            "127.0.0.3 from 127.0.0.1:0: closed",
            "no_filter_chain_match=3",
        ]
    );
}

#[test]
fn filter_chain_matcher_names_chains_as_envoy() {
    let got = agree(
        &by_matcher(),
        &[
            ("127.0.0.1", ("127.0.0.1", 0)),
            ("127.0.0.2", ("127.0.0.9", 0)),
            ("127.0.0.2", ("127.0.0.1", 41002)),
            ("127.0.0.2", ("127.0.0.1", 0)),
            ("127.0.0.3", ("127.0.0.1", 0)),
            ("127.0.0.4", ("127.0.0.1", 0)),
        ],
    );
    assert_eq!(
        got,
        [
            "127.0.0.1 from 127.0.0.1:0: one",
            "127.0.0.2 from 127.0.0.9:0: two",
            "127.0.0.2 from 127.0.0.1:41002: one",
            "127.0.0.2 from 127.0.0.1:0: fallback",
            "127.0.0.3 from 127.0.0.1:0: closed",
            "127.0.0.4 from 127.0.0.1:0: fallback",
            "no_filter_chain_match=1",
        ]
    );
}

/// An `IPMatcher` (Istio's waypoints pick chains by one) on the destination address.
fn by_ip_matcher() -> String {
    let action = |name: &str| {
        format!(
            r#"{{ action: {{ name: chain, typed_config: {{ "@type": type.googleapis.com/google.protobuf.StringValue, value: {name} }} }} }}"#
        )
    };
    let from_nine = format!(
        r#"{{ matcher: {{ matcher_list: {{ matchers: [{{ predicate: {{ single_predicate: {{ input: {{ name: sip, typed_config: {{ "@type": type.googleapis.com/envoy.extensions.matching.common_inputs.network.v3.SourceIPInput }} }}, value_match: {{ exact: 127.0.0.9 }} }} }}, on_match: {two} }}] }} }} }}"#,
        two = action("two")
    );
    let extra = format!(
        r#"    default_filter_chain:
{default}    filter_chain_matcher:
      matcher_tree:
        input: {{ name: dip, typed_config: {{ "@type": type.googleapis.com/envoy.extensions.matching.common_inputs.network.v3.DestinationIPInput }} }}
        custom_match:
          name: ip
          typed_config:
            "@type": type.googleapis.com/xds.type.matcher.v3.IPMatcher
            range_matchers:
            - {{ ranges: [{{ address_prefix: 127.0.0.0, prefix_len: 8 }}], exclusive: true, on_match: {wide} }}
            - {{ ranges: [{{ address_prefix: 127.0.0.2, prefix_len: 32 }}], on_match: {from_nine} }}
            - {{ ranges: [{{ address_prefix: 127.0.0.0, prefix_len: 29 }}], on_match: {one} }}
            - {{ ranges: [{{ address_prefix: 127.0.0.12, prefix_len: 32 }}], on_match: {from_nine} }}
"#,
        default =
            chain("fallback", "").replacen("    - name: fallback\n", "      name: fallback\n", 1),
        wide = action("wide"),
        one = action("one"),
    );
    let chains = [chain("one", ""), chain("two", ""), chain("wide", "")].concat();
    boot(&chains, &extra)
}

#[test]
fn an_ip_matcher_picks_chains_as_envoy() {
    let got = agree(
        &by_ip_matcher(),
        &[
            ("127.0.0.2", ("127.0.0.9", 0)),
            ("127.0.0.2", ("127.0.0.1", 0)),
            ("127.0.0.12", ("127.0.0.1", 0)),
            ("127.0.0.12", ("127.0.0.9", 0)),
            ("127.0.0.20", ("127.0.0.1", 0)),
            ("127.0.0.5", ("127.0.0.1", 0)),
        ],
    );
    assert_eq!(
        got,
        [
            "127.0.0.2 from 127.0.0.9:0: two",
            "127.0.0.2 from 127.0.0.1:0: one",
            "127.0.0.12 from 127.0.0.1:0: fallback",
            "127.0.0.12 from 127.0.0.9:0: two",
            "127.0.0.20 from 127.0.0.1:0: wide",
            "127.0.0.5 from 127.0.0.1:0: one",
            "no_filter_chain_match=0",
        ]
    );
}

/// A matcher's chains need unique names; a chain named by a format string is refused by
/// its path.
#[test]
fn what_the_matcher_refuses() {
    assert_refused_by_path(
        &by_matcher(),
        &[
            ("- name: two", "- name: one", "\"name\" field is duplicated with value 'one'"),
            ("- name: two", "- name: \"\"", "\"name\" field is required when using a listener matcher"),
            (
                "\"@type\": type.googleapis.com/google.protobuf.StringValue, value: ghost",
                "\"@type\": type.googleapis.com/envoy.config.core.v3.SubstitutionFormatString, text_format: ghost",
                "envoy.config.core.v3.SubstitutionFormatString",
            ),
        ],
    );
}
