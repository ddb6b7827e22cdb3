//! Fuzzes the xDS matcher (`courier::matching`, what RBAC's `matcher`, custom responses
//! and filter-chain matchers evaluate) on request inputs: arbitrary header values and
//! client addresses against one matcher using each node kind — a `matcher_list` with
//! `and`/`or`/`not` predicates, string and IP-range tests and a nested matcher that may
//! find nothing, a `prefix_match_map`, and an `IPMatcher` tree as `on_no_match`.
//! Evaluation must never panic, and must pick what a plain reading of the config picks
//! (the oracle below).
#![no_main]

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::sync::OnceLock;

use courier::matching::{Context, Matcher, MatchingData};
use courier_proto::xds::r#type::matcher::v3 as pb;
use libfuzzer_sys::fuzz_target;

fn action(name: &str) -> serde_json::Value {
    serde_json::json!({ "action": { "name": name, "typed_config": {
        "@type": "type.googleapis.com/google.protobuf.StringValue", "value": name } } })
}

fn header(name: &str) -> serde_json::Value {
    serde_json::json!({ "name": "h", "typed_config": {
        "@type": "type.googleapis.com/envoy.type.matcher.v3.HttpRequestHeaderMatchInput",
        "header_name": name } })
}

fn source_ip() -> serde_json::Value {
    serde_json::json!({ "name": "ip", "typed_config": {
        "@type": "type.googleapis.com/envoy.extensions.matching.common_inputs.network.v3.SourceIPInput" } })
}

fn single(input: serde_json::Value, value_match: serde_json::Value) -> serde_json::Value {
    serde_json::json!({ "single_predicate": { "input": input, "value_match": value_match } })
}

fn matcher() -> &'static Matcher<String> {
    static M: OnceLock<Matcher<String>> = OnceLock::new();
    M.get_or_init(|| {
        let ip_range = serde_json::json!({ "single_predicate": { "input": source_ip(), "custom_match": {
            "name": "envoy.matching.matchers.ip", "typed_config": {
                "@type": "type.googleapis.com/envoy.extensions.matching.input_matchers.ip.v3.Ip",
                "cidr_ranges": [{ "address_prefix": "192.168.0.0", "prefix_len": 16 }],
                "stat_prefix": "fuzz" } } } });
        let by_prefix = serde_json::json!({ "matcher_tree": { "input": header("x-p"),
            "prefix_match_map": { "map": {
                "a": action("p-a"), "ab": action("p-ab"), "abc": action("p-abc") } } } });
        let by_ip = serde_json::json!({ "matcher_tree": { "input": source_ip(), "custom_match": {
            "name": "ip", "typed_config": {
                "@type": "type.googleapis.com/xds.type.matcher.v3.IPMatcher",
                "range_matchers": [
                    { "ranges": [{ "address_prefix": "10.0.0.0", "prefix_len": 8 }], "on_match": action("ip-10") },
                    { "ranges": [{ "address_prefix": "10.1.0.0", "prefix_len": 16 }], "on_match": action("ip-10-1") },
                    { "ranges": [{ "address_prefix": "::", "prefix_len": 0 }], "on_match": action("ip-v6-any") }
                ] } } },
            "on_no_match": action("none") });
        let config = serde_json::json!({
            "matcher_list": { "matchers": [
                { "predicate": { "and_matcher": { "predicate": [
                    single(header("x-list"), serde_json::json!({ "prefix": "abc" })),
                    { "not_matcher": single(header("x-list"), serde_json::json!({ "contains": "z", "ignore_case": true })) }
                ] } }, "on_match": action("list-abc-noz") },
                { "predicate": { "or_matcher": { "predicate": [
                    single(header("x-list"), serde_json::json!({ "exact": "q" })),
                    ip_range
                ] } }, "on_match": action("list-q-or-192") },
                { "predicate": single(header("x-p"), serde_json::json!({ "safe_regex": { "google_re2": {}, "regex": "^a[a-c]*$" } })),
                  "on_match": { "matcher": by_prefix } }
            ] },
            "on_no_match": { "matcher": by_ip }
        });
        let m: pb::Matcher = courier_proto::from_value(&config).expect("fuzz matcher");
        let name = |c: &courier_proto::xds::core::v3::TypedExtensionConfig,
                    _: &str|
         -> Result<String, courier::config::ConfigError> { Ok(c.name.clone()) };
        Matcher::compile(&m, Context::HttpRequest, &name, "fuzz").expect("compiles")
    })
}

/// What the config says, read plainly.
fn oracle(list: Option<&str>, p: Option<&str>, ip: IpAddr) -> &'static str {
    if let Some(l) = list {
        if l.starts_with("abc") && !l.to_ascii_lowercase().contains('z') {
            return "list-abc-noz";
        }
    }
    let in_192 = matches!(ip, IpAddr::V4(v4) if v4.octets()[..2] == [192, 168]);
    if list == Some("q") || in_192 {
        return "list-q-or-192";
    }
    if let Some(p) = p {
        let regex = p.starts_with('a') && p.bytes().all(|b| (b'a'..=b'c').contains(&b));
        if regex {
            for (prefix, name) in [("abc", "p-abc"), ("ab", "p-ab"), ("a", "p-a")] {
                if p.starts_with(prefix) {
                    return name;
                }
            }
        }
    }
    match ip {
        IpAddr::V4(v4) if v4.octets()[..2] == [10, 1] => "ip-10-1",
        IpAddr::V4(v4) if v4.octets()[0] == 10 => "ip-10",
        IpAddr::V6(_) => "ip-v6-any",
        IpAddr::V4(_) => "none",
    }
}

fuzz_target!(|data: &[u8]| {
    let Some((&kind, rest)) = data.split_first() else {
        return;
    };
    let (ip, rest): (IpAddr, &[u8]) = if kind & 1 == 0 {
        let Some((a, rest)) = rest.split_first_chunk::<4>() else {
            return;
        };
        (Ipv4Addr::from(*a).into(), rest)
    } else {
        let Some((a, rest)) = rest.split_first_chunk::<16>() else {
            return;
        };
        (Ipv6Addr::from(*a).into(), rest)
    };
    let text = String::from_utf8_lossy(rest);
    let mut values = text.splitn(2, '\n');
    let (list, p) = (values.next(), values.next());
    let mut headers = http::HeaderMap::new();
    let mut sent = |name: &'static str, v: Option<&str>| {
        let v = v.and_then(|v| http::HeaderValue::from_str(v).ok())?;
        let text = v.to_str().ok()?.to_string();
        headers.insert(name, v);
        Some(text)
    };
    let list = sent("x-list", list);
    let p = sent("x-p", p);
    let addr = SocketAddr::new(ip, 1234);
    let data = MatchingData {
        source: addr,
        direct_source: addr,
        destination: addr,
        server_name: None,
        tls: None,
        transport_protocol: None,
        application_protocols: &[],
        request_headers: Some(&headers),
        pseudo: None,
        response: None,
    };
    let got = matcher().evaluate(&data).map(String::as_str);
    assert_eq!(
        got,
        Some(oracle(list.as_deref(), p.as_deref(), ip)),
        "x-list {list:?}, x-p {p:?}, source {ip}"
    );
});
