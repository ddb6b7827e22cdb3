//! Plain YAML scalars in a bootstrap read as Envoy reads them (yaml-cpp's booleans and
//! integers, everything else a string): bootstraps differing only in one scalar's spelling
//! get the same verdict from `--mode validate` in Courier and Envoy 1.40, and a Struct (the
//! node's metadata) holds the same values in both `/config_dump`s.

mod http_support;

use http_support::*;

/// A TCP proxy bootstrap with `node` as its node and `extra` (4-space indented lines) in
/// cluster `c`.
fn boot(node: &str, extra: &str) -> String {
    let c = cluster("c", &["127.0.0.1:1".parse().expect("addr")], extra);
    format!("node: {node}\n{}", tcp_bootstrap(&c))
}

#[test]
fn same_verdict_for_each_spelling() {
    let mut cases: Vec<String> = Vec::new();
    // A string field.
    for v in [
        "off",
        "yes",
        "n",
        "On",
        "Y",
        "NO",
        "true",
        "5",
        "0x10",
        "-7",
        "\"yes\"",
        "'5'",
        "yEs",
        "1.5",
        "1e3",
        ".inf",
        "08",
        "0o17",
        "1_000",
        "5000000000",
    ] {
        cases.push(boot(&format!("{{ id: {v}, cluster: t }}"), ""));
    }
    // A boolean field.
    for v in [
        "yes", "Off", "y", "N", "ON", "1", "\"yes\"", "\"1\"", "\"on\"", "\"t\"", "yEs",
    ] {
        cases.push(boot(
            "{ id: node1 }",
            &format!("    ignore_health_on_host_removal: {v}\n"),
        ));
    }
    // An integer field (a UInt32Value).
    for v in [
        "1e3",
        "1.0",
        "1.5",
        "0x10",
        "010",
        "08",
        "+5",
        "\"16\"",
        "\"1e3\"",
        "5000000000",
        "1_000",
        "-0x10",
        "0o17",
        ".inf",
        "yes",
        "\" 16\"",
    ] {
        cases.push(boot(
            "{ id: node1 }",
            &format!("    per_connection_buffer_limit_bytes: {v}\n"),
        ));
    }
    // A double field.
    for v in [
        "1.50",
        "1e1",
        ".inf",
        ".nan",
        "0x10",
        "010",
        "\"2.5\"",
        "yes",
        "\"Infinity\"",
        "\"NaN\"",
        "150",
    ] {
        cases.push(boot(
            "{ id: node1 }",
            &format!("    common_lb_config: {{ healthy_panic_threshold: {{ value: {v} }} }}\n"),
        ));
    }
    let mut compared = 0;
    let mut accepted = 0;
    for case in &cases {
        let (code, stderr) = validate(case);
        accepted += usize::from(code == Some(0));
        let Some((envoy_code, envoy_out)) = envoy_validate(case) else {
            continue;
        };
        compared += 1;
        assert_eq!(
            code == Some(0),
            envoy_code == Some(0),
            "verdicts differ on\n{case}\ncourier: {stderr}\nenvoy: {envoy_out}"
        );
    }
    // Both verdicts occur (32 spellings are accepted, the rest refused).
    assert_eq!(accepted, 32, "accepted");
    if compared == 0 {
        eprintln!("envoy not on PATH: Courier's side only");
    }
}

#[test]
fn refusal_names_the_field_and_how_to_quote() {
    let (code, stderr) = validate(&boot(
        "{ id: node1 }",
        "    common_lb_config: { healthy_panic_threshold: { value: 0x10 }, update_merge_window: y }\n",
    ));
    assert_eq!(code, Some(1), "{stderr}");
    assert!(
        stderr.contains("static_resources.clusters[0].common_lb_config.update_merge_window"),
        "{stderr}"
    );
    let (code, stderr) = validate(&boot("{ id: off }", ""));
    assert_eq!(code, Some(1), "{stderr}");
    assert!(
        stderr.contains(
            "node.id: wrong type: expected a string, got boolean false (quote it to make it a \
             string) (line 1, column 13)"
        ),
        "{stderr}"
    );
}

/// The node's metadata as `/config_dump` shows it, numbers as floats (Envoy prints `16`
/// where Courier prints `16.0`).
fn node_metadata(proxy: &Courier) -> serde_json::Value {
    let body = admin_get(proxy.admin, "/config_dump").expect("config_dump");
    let dump: serde_json::Value = serde_json::from_str(&body).expect("json");
    let mut metadata = dump["configs"][0]["bootstrap"]["node"]["metadata"].clone();
    as_floats(&mut metadata);
    metadata
}

fn as_floats(v: &mut serde_json::Value) {
    match v {
        serde_json::Value::Number(n) => *v = serde_json::json!(n.as_f64()),
        serde_json::Value::Array(items) => items.iter_mut().for_each(as_floats),
        serde_json::Value::Object(map) => map.values_mut().for_each(as_floats),
        _ => {}
    }
}

#[test]
fn struct_values_match_envoy() {
    let node = "{ id: node1, metadata: { a: yes, b: off, c: n, d: True, e: 0x10, f: 010, g: +5, \
                h: 1e3, i: .inf, j: 5000000000, k: ~, l: \"yes\", m: '010', n: 1.50, o: 08, \
                p: 1_000, q: -7, r: [on, 2, 2.5], s: -0x10, yes: 1 } }";
    let bootstrap = boot(node, "");
    let got = node_metadata(&Courier::start(&bootstrap));
    let want = serde_json::json!({
        "a": true, "b": false, "c": false, "d": true, "e": 16.0, "f": 8.0, "g": 5.0,
        "h": "1e3", "i": ".inf", "j": "5000000000", "k": null, "l": "yes", "m": "010",
        "n": "1.50", "o": "08", "p": "1_000", "q": -7.0, "r": [true, 2.0, "2.5"], "s": -16.0,
        "yes": 1.0,
    });
    assert_eq!(got, want);
    match Courier::start_envoy(&bootstrap) {
        Some(envoy) => assert_eq!(node_metadata(&envoy), got, "envoy vs courier"),
        None => eprintln!("envoy not on PATH: Courier's side only"),
    }
}
