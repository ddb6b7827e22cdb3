//! The connection manager's `original_ip_detection_extensions` (the `xff` and
//! `custom_header` extensions): the client's address they settle is what RBAC's
//! `remote_ip`, internal-ness (`x-envoy-internal`, with `internal_address_config`), a
//! route's `%DOWNSTREAM_REMOTE_ADDRESS%` and the access log see; the `xff` extension's
//! append, `custom_header`'s `reject_with_status`. Each request goes through Courier and,
//! when `envoy` is on PATH, through Envoy 1.40: the transcripts (status, what the upstream
//! received, the access log line) must be equal, and equal to what is written here where
//! it matters.

mod http_support;

use http_support::*;

/// A bootstrap whose connection manager has `extensions` (YAML list items at the HCM's
/// field indentation), `internal_address_config` 10/8, RBAC denying clients in
/// 6.6.6.0/24, a route adding `x-client: %DOWNSTREAM_REMOTE_ADDRESS%` and an access log
/// at `log`.
fn boot(upstream: std::net::SocketAddr, extensions: &str, log: &std::path::Path) -> String {
    let routes = "            name: local\n            virtual_hosts:\n            - name: main\n              domains: [\"*\"]\n              routes:\n              - match: { prefix: \"/\" }\n                route: { cluster: c }\n                request_headers_to_add:\n                - header: { key: x-client, value: \"%DOWNSTREAM_REMOTE_ADDRESS%\" }\n";
    let hcm = format!(
        "          internal_address_config: {{ cidr_ranges: [ {{ address_prefix: 10.0.0.0, prefix_len: 8 }} ] }}
          original_ip_detection_extensions:
{extensions}          access_log:
          - name: envoy.access_loggers.file
            typed_config:
              \"@type\": type.googleapis.com/envoy.extensions.access_loggers.file.v3.FileAccessLog
              path: {}
              log_format: {{ text_format_source: {{ inline_string: \"%RESPONSE_CODE% %RESPONSE_CODE_DETAILS% %DOWNSTREAM_REMOTE_ADDRESS% %DOWNSTREAM_DIRECT_REMOTE_ADDRESS_WITHOUT_PORT%\\n\" }} }}
",
        log.display()
    );
    let b = bootstrap(routes, &hcm, &cluster("c", &[upstream], ""));
    with_filters(
        &b,
        "          - name: envoy.filters.http.rbac
            typed_config:
              \"@type\": type.googleapis.com/envoy.extensions.filters.http.rbac.v3.RBAC
              rules:
                action: DENY
                policies:
                  six:
                    permissions: [ { any: true } ]
                    principals: [ { remote_ip: { address_prefix: 6.6.6.0, prefix_len: 24 } } ]
",
    )
}

/// `custom_header` (`x-real-ip`, trusted) first, then `xff` with one trusted hop,
/// appending.
const HEADER_THEN_XFF: &str = "          - name: custom
            typed_config:
              \"@type\": type.googleapis.com/envoy.extensions.http.original_ip_detection.custom_header.v3.CustomHeaderConfig
              header_name: x-real-ip
              allow_extension_to_set_address_as_trusted: true
          - name: xff
            typed_config:
              \"@type\": type.googleapis.com/envoy.extensions.http.original_ip_detection.xff.v3.XffConfig
              xff_num_trusted_hops: 1
              skip_xff_append: false
";

/// `xff` trusting 127/8 and 10/8 first, then `custom_header` (`x-real-ip`, untrusted)
/// rejecting with 401.
const XFF_CIDRS_THEN_REJECT: &str = "          - name: xff
            typed_config:
              \"@type\": type.googleapis.com/envoy.extensions.http.original_ip_detection.xff.v3.XffConfig
              xff_trusted_cidrs: { cidrs: [ { address_prefix: 127.0.0.0, prefix_len: 8 }, { address_prefix: 10.0.0.0, prefix_len: 8 } ] }
          - name: custom
            typed_config:
              \"@type\": type.googleapis.com/envoy.extensions.http.original_ip_detection.custom_header.v3.CustomHeaderConfig
              header_name: x-real-ip
              reject_with_status: { code: 401 }
";

/// `xff` with no trusted hops, not appending, trusting no peer it does not know
/// (`xff_trusted_cidrs` of 10/8 only: a loopback peer is untrusted).
const XFF_UNTRUSTED_PEER: &str = "          - name: xff
            typed_config:
              \"@type\": type.googleapis.com/envoy.extensions.http.original_ip_detection.xff.v3.XffConfig
              xff_trusted_cidrs: { cidrs: [ { address_prefix: 10.0.0.0, prefix_len: 8 } ] }
              skip_xff_append: false
";

/// The requests' extra headers.
const REQUESTS: &[&[(&str, &str)]] = &[
    &[],
    &[("x-real-ip", "10.1.2.3")],
    &[("x-real-ip", "6.6.6.6")],
    &[("x-real-ip", "bogus")],
    &[("x-real-ip", "2001:db8::1")],
    &[("x-forwarded-for", "1.1.1.1,2.2.2.2")],
    &[("x-forwarded-for", "6.6.6.7, 2.2.2.2")],
    &[("x-forwarded-for", "10.0.0.1")],
    &[("x-forwarded-for", "1.1.1.1")],
    &[("x-forwarded-for", "1.1.1.1,10.0.0.2,3.3.3.3")],
    &[("x-forwarded-for", "10.0.0.1,10.0.0.2")],
    &[("x-forwarded-for", "6.6.6.1,10.0.0.2")],
    &[("x-forwarded-for", "bogus,10.0.0.1")],
    &[("x-forwarded-for", "1.1.1.1,bogus")],
    &[
        ("x-real-ip", "10.1.2.3"),
        ("x-forwarded-for", "5.5.5.5,6.6.6.6"),
    ],
    &[("x-forwarded-for", "10.0.0.1"), ("x-envoy-retry-on", "5xx")],
];

/// `127.0.0.1:<port>` with a port other than 0 made `127.0.0.1:PEER` (the client's
/// ports differ from run to run).
fn without_peer_port(line: &str) -> String {
    line.split(' ')
        .map(|w| match w.split_once("127.0.0.1:") {
            Some((before, port)) if port != "0" => format!("{before}127.0.0.1:PEER"),
            _ => w.to_string(),
        })
        .collect::<Vec<_>>()
        .join(" ")
}

/// Every request of [`REQUESTS`] through a proxy on `boot(extensions)`: per request, its
/// status, the fields the upstream received that tell where it came from, and its access
/// log line.
fn transcript(start: fn(&str) -> Option<Courier>, extensions: &str) -> Option<Vec<String>> {
    let upstream = Upstream::start("u");
    let dir = tempfile::tempdir().expect("tempdir");
    let log = dir.path().join("access.log");
    let proxy = start(&boot(upstream.addr, extensions, &log))?;
    let mut out = Vec::new();
    for (i, headers) in REQUESTS.iter().enumerate() {
        let before = upstream.seen.lock().map(|s| s.len()).unwrap_or(0);
        let r = get(proxy.listener, "example.com", "/", headers);
        let seen = upstream
            .seen
            .lock()
            .ok()
            .filter(|s| s.len() > before)
            .and_then(|s| s.last().cloned());
        let fields = seen.map_or_else(
            || "-".to_string(),
            |s| {
                [
                    "x-forwarded-for",
                    "x-envoy-internal",
                    "x-envoy-external-address",
                    "x-forwarded-proto",
                    "x-envoy-retry-on",
                    "x-client",
                ]
                .iter()
                .map(|n| format!("{n}={}", s.header(n).unwrap_or("-")))
                .collect::<Vec<_>>()
                .join(" ")
            },
        );
        let line = log_lines(&log, i + 1)
            .get(i)
            .map_or_else(|| "no log line".to_string(), |l| without_peer_port(l));
        out.push(format!(
            "{headers:?} -> {} [{}] body={:?} | {line}",
            r.status,
            without_peer_port(&fields),
            r.body_str()
        ));
    }
    Some(out)
}

fn courier(b: &str) -> Option<Courier> {
    Some(Courier::start(b))
}

fn envoy(b: &str) -> Option<Courier> {
    Courier::start_envoy_with(b, &["--file-flush-interval-msec", "20"])
}

/// Runs `extensions` through both proxies; Courier's transcript.
fn compared(extensions: &str) -> Vec<String> {
    let ours = transcript(courier, extensions).expect("courier");
    if let Some(theirs) = transcript(envoy, extensions) {
        for (a, b) in ours.iter().zip(&theirs) {
            assert_eq!(a, b, "courier vs envoy");
        }
        assert_eq!(ours.len(), theirs.len());
    }
    ours
}

fn line_of<'a>(t: &'a [String], headers: &str) -> &'a str {
    t.iter()
        .find(|l| l.starts_with(headers))
        .map_or("", String::as_str)
}

#[test]
fn custom_header_then_xff_hops_as_envoy() {
    let t = compared(HEADER_THEN_XFF);
    // The header's address is the client's, trusted: internal, and RBAC's remote_ip.
    let internal = line_of(&t, "[(\"x-real-ip\", \"10.1.2.3\")]");
    assert!(internal.contains("x-envoy-internal=true"), "{internal}");
    assert!(internal.contains("x-client=10.1.2.3:0"), "{internal}");
    assert!(
        internal.ends_with("200 via_upstream 10.1.2.3:0 127.0.0.1"),
        "{internal}"
    );
    let denied = line_of(&t, "[(\"x-real-ip\", \"6.6.6.6\")]");
    assert!(denied.contains("-> 403"), "{denied}");
    // One trusted hop: the entry before the last; the peer appended after reading.
    let hop = line_of(&t, "[(\"x-forwarded-for\", \"1.1.1.1,2.2.2.2\")]");
    assert!(hop.contains("200 via_upstream 1.1.1.1:0"), "{hop}");
    assert!(hop.contains("x-forwarded-for=1.1.1.1,2.2.2.2,"), "{hop}");
    let denied = line_of(&t, "[(\"x-forwarded-for\", \"6.6.6.7, 2.2.2.2\")]");
    assert!(denied.contains("-> 403"), "{denied}");
    // Nothing found: the peer, with its port.
    let none = line_of(&t, "[(\"x-real-ip\", \"bogus\")]");
    assert!(none.contains("200 via_upstream 127.0.0.1:PEER"), "{none}");
}

#[test]
fn xff_trusted_cidrs_then_rejection_as_envoy() {
    let t = compared(XFF_CIDRS_THEN_REJECT);
    // Nothing found by either: rejected.
    let rejected = line_of(&t, "[] ");
    assert!(
        rejected.contains("-> 401 [-] body=\"\" | 401 rejecting_because_detection_failed"),
        "{rejected}"
    );
    // The last untrusted entry; all trusted: the first; a single one may be internal.
    let last = line_of(&t, "[(\"x-forwarded-for\", \"6.6.6.1,10.0.0.2\")]");
    assert!(last.contains("-> 403"), "{last}");
    let first = line_of(&t, "[(\"x-forwarded-for\", \"10.0.0.1,10.0.0.2\")]");
    assert!(first.contains("200 via_upstream 10.0.0.1:0"), "{first}");
    assert!(first.contains("x-envoy-internal=-"), "{first}");
    let single = line_of(
        &t,
        "[(\"x-forwarded-for\", \"10.0.0.1\"), (\"x-envoy-retry-on\"",
    );
    assert!(single.contains("x-envoy-internal=true"), "{single}");
    // (Its `x-envoy-retry-on` is the router's to obey and remove.)
    assert!(single.contains("x-envoy-retry-on=-"), "{single}");
}

#[test]
fn xff_untrusted_peer_appends_only() {
    let t = compared(XFF_UNTRUSTED_PEER);
    let x = line_of(&t, "[(\"x-forwarded-for\", \"1.1.1.1,10.0.0.2,3.3.3.3\")]");
    assert!(x.contains("200 via_upstream 127.0.0.1:PEER"), "{x}");
    assert!(
        x.contains("x-forwarded-for=1.1.1.1,10.0.0.2,3.3.3.3,"),
        "{x}"
    );
}

#[test]
fn bad_extension_configs_are_refused_as_envoy_refuses_them() {
    let upstream = Upstream::start("u");
    let dir = tempfile::tempdir().expect("tempdir");
    let base = boot(upstream.addr, HEADER_THEN_XFF, &dir.path().join("a.log"));
    if let Some((code, out)) = envoy_validate(&base) {
        assert_eq!(code, Some(0), "{out}");
    }
    let cases: &[(&str, &str, &str)] = &[
        (
            "          original_ip_detection_extensions:\n",
            "          use_remote_address: true\n          original_ip_detection_extensions:\n",
            "original_ip_detection_extensions",
        ),
        (
            "          original_ip_detection_extensions:\n",
            "          xff_num_trusted_hops: 1\n          original_ip_detection_extensions:\n",
            "original_ip_detection_extensions",
        ),
        (
            "              xff_num_trusted_hops: 1\n",
            "              xff_num_trusted_hops: 1\n              xff_trusted_cidrs: { cidrs: [ { address_prefix: 10.0.0.0, prefix_len: 8 } ] }\n",
            "original_ip_detection_extensions[1].typed_config",
        ),
        (
            "header_name: x-real-ip",
            "header_name: \"\"",
            "original_ip_detection_extensions[0].typed_config.header_name",
        ),
        (
            "header_name: x-real-ip",
            "header_name: \"x real\"",
            "original_ip_detection_extensions[0].typed_config.header_name",
        ),
        (
            "allow_extension_to_set_address_as_trusted: true",
            "reject_with_status: { code: 999 }",
            "original_ip_detection_extensions[0].typed_config.reject_with_status.code",
        ),
        (
            "type.googleapis.com/envoy.extensions.http.original_ip_detection.custom_header.v3.CustomHeaderConfig",
            "type.googleapis.com/google.protobuf.Struct",
            "original_ip_detection_extensions[0].typed_config",
        ),
    ];
    for (from, to, _) in cases {
        if let Some((code, out)) = envoy_validate(&base.replacen(from, to, 1)) {
            assert_ne!(code, Some(0), "envoy took {to}: {out}");
        }
    }
    assert_refused_by_path(&base, cases);
}
