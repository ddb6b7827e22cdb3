//! The connection manager's `early_header_mutation_extensions` (Envoy's `header_mutation`
//! extension): removals and additions (append actions, `%REQ(…)%` and `%PROTOCOL%`
//! values) in order, before routing (a route matches a header added here) and before the
//! connection manager's own forwarding headers (an `x-forwarded-for` added here makes the
//! request internal). Each request goes through Courier and, when `envoy` is on PATH,
//! through Envoy 1.40: the transcripts (status, body, what the upstream received) must be
//! equal, and equal to what is written here where it matters.

mod http_support;

use http_support::*;

const MUTATIONS: &str = "          early_header_mutation_extensions:
          - name: early
            typed_config:
              \"@type\": type.googleapis.com/envoy.extensions.http.early_header_mutation.header_mutation.v3.HeaderMutation
              mutations:
              - append: { header: { key: x-forwarded-for, value: 10.0.0.1 }, append_action: ADD_IF_ABSENT }
              - append: { header: { key: x-route, value: a }, append_action: ADD_IF_ABSENT }
              - remove: x-gone
              - append: { header: { key: x-gone, value: back } }
              - append: { header: { key: x-fmt, value: \"%REQ(x-in)%-%PROTOCOL%\" } }
              - append: { header: { key: x-over, value: o }, append_action: OVERWRITE_IF_EXISTS }
          - name: second
            typed_config:
              \"@type\": type.googleapis.com/envoy.extensions.http.early_header_mutation.header_mutation.v3.HeaderMutation
              mutations:
              - append: { header: { key: x-fmt2, value: \"%REQ(x-fmt)%\" }, append_action: OVERWRITE_IF_EXISTS_OR_ADD }
              - remove: x-drop
              - remove_on_match: { key_matcher: { prefix: x-strip- } }
";

fn boot(upstream: std::net::SocketAddr) -> String {
    let routes = "            name: local
            virtual_hosts:
            - name: main
              domains: [\"*\"]
              routes:
              - match: { prefix: \"/\", headers: [ { name: x-route, string_match: { exact: a } } ] }
                route: { cluster: c }
                request_headers_to_add: [ { header: { key: x-matched, value: \"yes\" } } ]
              - match: { prefix: \"/\" }
                direct_response: { status: 404, body: { inline_string: unrouted } }
";
    bootstrap(
        routes,
        &format!(
            "          internal_address_config: {{ cidr_ranges: [ {{ address_prefix: 10.0.0.0, prefix_len: 8 }} ] }}
{MUTATIONS}"
        ),
        &cluster("c", &[upstream], ""),
    )
}

const REQUESTS: &[&[(&str, &str)]] = &[
    &[],
    &[("x-in", "v")],
    &[("x-route", "b")],
    &[("x-route", "a")],
    &[("x-forwarded-for", "1.2.3.4")],
    &[("x-forwarded-for", "10.9.9.9")],
    &[("x-gone", "1")],
    &[("x-gone", "1"), ("x-gone", "2")],
    &[("x-over", "1")],
    &[("x-drop", "1"), ("x-keep", "1")],
    &[("x-fmt", "client")],
    &[("x-in", "v"), ("x-fmt2", "client")],
    &[("x-envoy-retry-on", "5xx")],
    &[("x-forwarded-for", "1.2.3.4"), ("x-envoy-retry-on", "5xx")],
    &[("x-in", "")],
    &[("x-route", "A")],
    &[("x-in", "a b"), ("x-over", "")],
    &[("x-drop", "")],
    &[("x-forwarded-for", "10.0.0.2,10.0.0.3")],
    &[("x-gone", "back")],
    &[("x-strip-a", "1"), ("X-Strip-B", "2"), ("x-strip", "3")],
];

fn transcript(start: fn(&str) -> Option<Courier>) -> Option<Vec<String>> {
    let upstream = Upstream::start("u");
    let proxy = start(&boot(upstream.addr))?;
    let mut out = Vec::new();
    for headers in REQUESTS {
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
                    "x-route",
                    "x-gone",
                    "x-fmt",
                    "x-fmt2",
                    "x-over",
                    "x-drop",
                    "x-keep",
                    "x-matched",
                    "x-envoy-retry-on",
                    "x-strip-a",
                    "x-strip-b",
                    "x-strip",
                ]
                .iter()
                .map(|n| {
                    let all: Vec<&str> = s
                        .headers
                        .iter()
                        .filter(|(k, _)| k.eq_ignore_ascii_case(n))
                        .map(|(_, v)| v.as_str())
                        .collect();
                    format!("{n}={all:?}")
                })
                .collect::<Vec<_>>()
                .join(" ")
            },
        );
        out.push(format!(
            "{headers:?} -> {} {:?} [{fields}]",
            r.status,
            r.body_str()
        ));
    }
    Some(out)
}

fn has(t: &[String], start: &str, part: &str) {
    let line = t
        .iter()
        .find(|l| l.starts_with(start))
        .map_or("", String::as_str);
    assert!(line.contains(part), "{part:?} not in {line:?}");
}

#[test]
fn mutations_run_in_order_before_routing_and_forwarding_as_envoy() {
    let ours = transcript(|b| Some(Courier::start(b))).expect("courier");
    if let Some(theirs) = transcript(Courier::start_envoy) {
        for (a, b) in ours.iter().zip(&theirs) {
            assert_eq!(a, b, "courier vs envoy");
        }
        assert_eq!(ours.len(), theirs.len());
    }
    // Routed by the header added here; internal by the `x-forwarded-for` added here.
    has(&ours, "[] ", "x-envoy-internal=[\"true\"]");
    has(&ours, "[] ", "x-matched=[\"yes\"]");
    has(&ours, "[(\"x-route\", \"b\")]", "-> 404 \"unrouted\"");
    has(
        &ours,
        "[(\"x-forwarded-for\", \"1.2.3.4\")] ",
        "x-envoy-internal=[]",
    );
    // A removal then an addition; a value reading what an earlier step left.
    has(
        &ours,
        "[(\"x-gone\", \"1\"), (\"x-gone\", \"2\")]",
        "x-gone=[\"back\"]",
    );
    has(
        &ours,
        "[(\"x-in\", \"v\")] ",
        "x-fmt=[\"v-HTTP/1.1\"] x-fmt2=[\"v-HTTP/1.1\"]",
    );
    has(&ours, "[(\"x-over\", \"1\")]", "x-over=[\"o\"]");
    has(
        &ours,
        "[(\"x-strip-a\"",
        "x-strip-a=[] x-strip-b=[] x-strip=[\"3\"]",
    );
}

#[test]
fn bad_mutations_are_refused_as_envoy_refuses_them() {
    let base = boot(refusing_addr());
    if let Some((code, out)) = envoy_validate(&base) {
        assert_eq!(code, Some(0), "{out}");
    }
    let cases: &[(&str, &str, &str)] = &[
        (
            "              - remove: x-gone\n",
            "              - append: {}\n",
            "early_header_mutation_extensions[0].typed_config.mutations[2].append",
        ),
        (
            "remove_on_match: { key_matcher: { prefix: x-strip- } }",
            "remove_on_match: {}",
            "early_header_mutation_extensions[1].typed_config.mutations[2].remove_on_match.key_matcher",
        ),
        (
            "type.googleapis.com/envoy.extensions.http.early_header_mutation.header_mutation.v3.HeaderMutation",
            "type.googleapis.com/google.protobuf.Struct",
            "early_header_mutation_extensions[0].typed_config",
        ),
    ];
    for (from, to, _) in cases {
        if let Some((code, out)) = envoy_validate(&base.replacen(from, to, 1)) {
            assert_ne!(code, Some(0), "envoy took {to}: {out}");
        }
    }
    assert_refused_by_path(&base, cases);
    // An empty removal removes nothing, taken as Envoy takes it.
    let empty = base.replacen("remove: x-drop", "remove: \"\"", 1);
    assert_eq!(validate(&empty).0, Some(0));
}
