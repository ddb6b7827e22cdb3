//! The RBAC filter (`envoy.filters.http.rbac`): ALLOW, DENY and LOG rules, every
//! permission and principal Courier evaluates, shadow rules, per-route overrides at the
//! three levels, `x-forwarded-for` behind `use_remote_address` and
//! `xff_num_trusted_hops`. Each case runs through Courier and, when `envoy` is on PATH,
//! through Envoy 1.40; the two must agree, and agree with the values written here.

mod http_support;

use std::sync::atomic::Ordering;

use http_support::*;

/// The filters: `envoy.filters.http.rbac` (ALLOW, with shadow DENY rules), `deny`
/// (DENY) and `log` (LOG), in that order.
const FILTERS: &str = r#"          - name: envoy.filters.http.rbac
            typed_config:
              "@type": type.googleapis.com/envoy.extensions.filters.http.rbac.v3.RBAC
              rules_stat_prefix: main_
              shadow_rules_stat_prefix: shadow_
              track_per_rule_stats: true
              rules:
                action: ALLOW
                policies:
                  "01-public":
                    permissions: [{ and_rules: { rules: [{ header: { name: ":method", string_match: { exact: GET } } }, { url_path: { path: { prefix: /public } } }] } }]
                    principals: [{ any: true }]
                  "02-admin":
                    permissions: [{ any: true }]
                    principals: [{ header: { name: x-user, string_match: { exact: admin } } }]
                  "03-api":
                    permissions: [{ and_rules: { rules: [{ url_path: { path: { prefix: /api } } }, { not_rule: { url_path: { path: { prefix: /api/secret } } } }] } }]
                    principals: [{ or_ids: { ids: [{ direct_remote_ip: { address_prefix: 127.0.0.1, prefix_len: 32 } }, { remote_ip: { address_prefix: 10.0.0.0, prefix_len: 8 } }] } }]
                  "04-port":
                    permissions: [{ and_rules: { rules: [{ url_path: { path: { exact: /port } } }, { destination_port: LISTENER_PORT }, { destination_ip: { address_prefix: 127.0.0.0, prefix_len: 8 } }] } }]
                    principals: [{ any: true }]
                  "05-range":
                    permissions: [{ and_rules: { rules: [{ url_path: { path: { exact: /range } } }, { destination_port_range: { start: 1, end: LISTENER_PORT } }] } }]
                    principals: [{ any: true }]
                  "06-sni":
                    permissions: [{ and_rules: { rules: [{ url_path: { path: { prefix: /sni } } }, { requested_server_name: { exact: "" } }] } }]
                    principals: [{ any: true }]
                  "07-auth":
                    permissions: [{ url_path: { path: { exact: /auth } } }]
                    principals: [{ authenticated: {} }]
                  "08-not-auth":
                    permissions: [{ url_path: { path: { exact: /not-auth } } }]
                    principals: [{ not_id: { authenticated: { principal_name: { exact: spiffe://a } } } }]
                  "09-remote":
                    permissions: [{ url_path: { path: { exact: /remote } } }]
                    principals: [{ remote_ip: { address_prefix: 10.0.0.0, prefix_len: 8 } }]
                  "10-query":
                    permissions: [{ header: { name: ":path", string_match: { contains: "debug=1" } } }]
                    principals: [{ any: true }]
                  "11-source":
                    permissions: [{ or_rules: { rules: [{ url_path: { path: { exact: /source } } }, { url_path: { path: { exact: /SOURCE2, ignore_case: true } } }] } }]
                    principals: [{ source_ip: { address_prefix: 127.0.0.0, prefix_len: 24 } }]
              shadow_rules:
                action: DENY
                policies:
                  "s":
                    permissions: [{ url_path: { path: { prefix: /public/shadow } } }]
                    principals: [{ any: true }]
          - name: deny
            typed_config:
              "@type": type.googleapis.com/envoy.extensions.filters.http.rbac.v3.RBAC
              rules:
                action: DENY
                policies:
                  "blocked":
                    permissions: [{ header: { name: x-block, present_match: true } }]
                    principals: [{ any: true }]
          - name: log
            typed_config:
              "@type": type.googleapis.com/envoy.extensions.filters.http.rbac.v3.RBAC
              rules_stat_prefix: log_
              track_per_rule_stats: true
              rules:
                action: LOG
                policies:
                  "l":
                    permissions: [{ url_path: { path: { prefix: /public/log } } }]
                    principals: [{ any: true }]
"#;

/// Per-route settings: the route configuration's replaces `deny`'s rules, the
/// `vh.example` virtual host's the main filter's and `deny`'s, routes theirs.
const ROUTES: &str = r#"            name: local
            typed_per_filter_config:
              deny:
                "@type": type.googleapis.com/envoy.extensions.filters.http.rbac.v3.RBACPerRoute
                rbac:
                  rules:
                    action: DENY
                    policies:
                      "rc": { permissions: [{ header: { name: x-block-rc, present_match: true } }], principals: [{ any: true }] }
            virtual_hosts:
            - name: vh
              domains: ["vh.example"]
              typed_per_filter_config:
                envoy.filters.http.rbac:
                  "@type": type.googleapis.com/envoy.extensions.filters.http.rbac.v3.RBACPerRoute
                  rbac:
                    rules:
                      action: ALLOW
                      policies:
                        "post": { permissions: [{ header: { name: ":method", string_match: { exact: POST } } }], principals: [{ any: true }] }
                deny:
                  "@type": type.googleapis.com/envoy.config.route.v3.FilterConfig
                  config:
                    "@type": type.googleapis.com/envoy.extensions.filters.http.rbac.v3.RBACPerRoute
                    rbac:
                      rules:
                        action: DENY
                        policies:
                          "vh": { permissions: [{ header: { name: x-block, present_match: true } }], principals: [{ any: true }] }
              routes:
              - match: { prefix: "/vh/disabled" }
                route: { cluster: a }
                typed_per_filter_config:
                  envoy.filters.http.rbac:
                    "@type": type.googleapis.com/envoy.config.route.v3.FilterConfig
                    disabled: true
              - match: { prefix: "/" }
                route: { cluster: a }
            - name: main
              domains: ["*"]
              routes:
              - match: { prefix: "/override" }
                route: { cluster: a }
                typed_per_filter_config:
                  envoy.filters.http.rbac:
                    "@type": type.googleapis.com/envoy.extensions.filters.http.rbac.v3.RBACPerRoute
                    rbac:
                      rules_stat_prefix: ignored_
                      track_per_rule_stats: true
                      rules:
                        action: DENY
                        policies:
                          "o": { permissions: [{ any: true }], principals: [{ header: { name: x-deny, present_match: true } }] }
              - match: { prefix: "/off" }
                route: { cluster: a }
                typed_per_filter_config:
                  envoy.filters.http.rbac:
                    "@type": type.googleapis.com/envoy.extensions.filters.http.rbac.v3.RBACPerRoute
              - match: { prefix: "/direct" }
                direct_response: { status: 200, body: { inline_string: "d" } }
              - match: { prefix: "/" }
                route: { cluster: a }
"#;

fn boot(a: &Upstream, hcm_extra: &str, filters: &str, routes: &str) -> String {
    with_filters(
        &bootstrap(routes, hcm_extra, &cluster("a", &[a.addr], "")),
        filters,
    )
}

/// One request: method, host, path, headers.
type Case<'a> = (&'a str, &'a str, &'a str, &'a [(&'a str, &'a str)]);

/// Each request on a fresh connection as `label: status body grpc-status upstream=n`.
fn run_cases(proxy: &Courier, a: &Upstream, cases: &[(&str, Case<'_>)]) -> Vec<String> {
    cases
        .iter()
        .map(|(label, (method, host, path, headers))| {
            let before = a.requests.load(Ordering::SeqCst);
            let r = Client::connect(proxy.listener).request(method, host, path, headers, b"");
            let reached = a.requests.load(Ordering::SeqCst) - before;
            let grpc = r
                .header("grpc-status")
                .map(|s| format!(" grpc-status={s}"))
                .unwrap_or_default();
            let ctype = r.header("content-type").unwrap_or("-");
            format!(
                "{label}: {} {:?} {ctype}{grpc} upstream={reached}",
                r.status,
                r.body_str()
            )
        })
        .collect()
}

/// The counters, as `name=value`, in the order given.
fn counters(proxy: &Courier, names: &[&str]) -> Vec<String> {
    names
        .iter()
        .map(|n| format!("{n}={}", proxy.stat(&format!("http.ingress.rbac.{n}"))))
        .collect()
}

const GRPC: (&str, &str) = ("content-type", "application/grpc");
const H: &str = "example.com";
const VH: &str = "vh.example";

fn main_cases() -> Vec<(&'static str, Case<'static>)> {
    vec![
        ("public GET", ("GET", H, "/public/x", &[])),
        ("public POST", ("POST", H, "/public/x", &[])),
        ("admin header", ("GET", H, "/x", &[("x-user", "admin")])),
        (
            "admin header, other case",
            ("GET", H, "/x", &[("x-user", "Admin")]),
        ),
        ("api via direct peer", ("GET", H, "/api/list?secret", &[])),
        ("api secret (not_rule)", ("GET", H, "/api/secret/k", &[])),
        ("destination port and ip", ("GET", H, "/port", &[])),
        ("destination port range", ("GET", H, "/range", &[])),
        ("empty SNI", ("GET", H, "/sni", &[])),
        ("authenticated, plaintext", ("GET", H, "/auth", &[])),
        ("not authenticated", ("GET", H, "/not-auth", &[])),
        (
            "remote_ip from xff",
            ("GET", H, "/remote", &[("x-forwarded-for", "10.1.1.1")]),
        ),
        (
            "remote_ip, xff last entry",
            (
                "GET",
                H,
                "/remote",
                &[("x-forwarded-for", "10.1.1.1, 11.1.1.1")],
            ),
        ),
        ("remote_ip without xff", ("GET", H, "/remote", &[])),
        (
            ":path with its query",
            ("GET", H, "/other?a=b&debug=1", &[]),
        ),
        ("url_path without its query", ("GET", H, "/x?/public", &[])),
        ("source_ip", ("GET", H, "/source", &[])),
        ("ignore_case path", ("GET", H, "/source2", &[])),
        ("shadow denied", ("GET", H, "/public/shadow", &[])),
        ("logged", ("GET", H, "/public/log", &[])),
        (
            "deny filter, route configuration's rules",
            ("GET", H, "/public/x", &[("x-block-rc", "1")]),
        ),
        (
            "deny filter, its own rules replaced",
            ("GET", H, "/public/x", &[("x-block", "1")]),
        ),
        ("route override allows", ("GET", H, "/override", &[])),
        (
            "route override denies",
            ("GET", H, "/override", &[("x-deny", "1")]),
        ),
        ("RBACPerRoute without rbac", ("GET", H, "/off", &[])),
        ("direct response", ("GET", H, "/direct", &[])),
        ("gRPC denied", ("POST", H, "/svc/Method", &[GRPC])),
        ("virtual host GET", ("GET", VH, "/x", &[])),
        ("virtual host POST", ("POST", VH, "/x", &[])),
        (
            "virtual host POST, blocked",
            ("POST", VH, "/x", &[("x-block", "1")]),
        ),
        (
            "virtual host, FilterConfig disabled",
            ("GET", VH, "/vh/disabled", &[]),
        ),
    ]
}

const MAIN_COUNTERS: &[&str] = &[
    "main_.allowed",
    "main_.denied",
    "main_.policy.01-public.allowed",
    "main_.policy.02-admin.allowed",
    "main_.policy.03-api.allowed",
    "main_.policy.04-port.allowed",
    "main_.policy.05-range.allowed",
    "main_.policy.06-sni.allowed",
    "main_.policy.07-auth.allowed",
    "main_.policy.08-not-auth.allowed",
    "main_.policy.09-remote.allowed",
    "main_.policy.10-query.allowed",
    "main_.policy.11-source.allowed",
    "main_.policy.post.allowed",
    "main_.policy.o.denied",
    "ignored_.denied",
    "shadow_.shadow_allowed",
    "shadow_.shadow_denied",
    "shadow_.policy.s.shadow_denied",
    "allowed",
    "denied",
    "log_.allowed",
    "log_.denied",
    "log_.policy.l.allowed",
];

fn run_main(proxy: &Courier, a: &Upstream) -> Vec<String> {
    let mut out = run_cases(proxy, a, &main_cases());
    out.extend(counters(proxy, MAIN_COUNTERS));
    out
}

#[test]
fn rbac_matches_envoy() {
    let a = Upstream::start("a");
    let got = run_main(&Courier::start(&boot(&a, "", FILTERS, ROUTES)), &a);
    let a = Upstream::start("a");
    match Courier::start_envoy(&boot(&a, "", FILTERS, ROUTES)) {
        Some(envoy) => assert_eq!(run_main(&envoy, &a), got, "envoy vs courier"),
        None => eprintln!("envoy not on PATH: skipping the RBAC differential"),
    }
    const DENIED: &str = "403 \"RBAC: access denied\" text/plain upstream=0";
    let ok = |path: &str| format!("200 \"a GET {path}\" - upstream=1");
    let expected: Vec<String> = [
        ("public GET", ok("/public/x")),
        ("public POST", DENIED.into()),
        ("admin header", ok("/x")),
        ("admin header, other case", DENIED.into()),
        ("api via direct peer", ok("/api/list?secret")),
        ("api secret (not_rule)", DENIED.into()),
        ("destination port and ip", ok("/port")),
        ("destination port range", DENIED.into()),
        ("empty SNI", ok("/sni")),
        ("authenticated, plaintext", DENIED.into()),
        ("not authenticated", ok("/not-auth")),
        ("remote_ip from xff", ok("/remote")),
        ("remote_ip, xff last entry", DENIED.into()),
        ("remote_ip without xff", DENIED.into()),
        (":path with its query", ok("/other?a=b&debug=1")),
        ("url_path without its query", DENIED.into()),
        ("source_ip", ok("/source")),
        ("ignore_case path", ok("/source2")),
        ("shadow denied", ok("/public/shadow")),
        ("logged", ok("/public/log")),
        ("deny filter, route configuration's rules", DENIED.into()),
        ("deny filter, its own rules replaced", ok("/public/x")),
        ("route override allows", ok("/override")),
        ("route override denies", DENIED.into()),
        ("RBACPerRoute without rbac", ok("/off")),
        ("direct response", DENIED.into()),
        (
            "gRPC denied",
            "200 \"\" application/grpc grpc-status=7 upstream=0".into(),
        ),
        ("virtual host GET", DENIED.into()),
        ("virtual host POST", "200 \"a POST /x\" - upstream=1".into()),
        ("virtual host POST, blocked", DENIED.into()),
        ("virtual host, FilterConfig disabled", ok("/vh/disabled")),
    ]
    .into_iter()
    .map(|(l, v)| format!("{l}: {v}"))
    .chain(
        [
            "main_.allowed=17",
            "main_.denied=12",
            "main_.policy.01-public.allowed=5",
            "main_.policy.02-admin.allowed=1",
            "main_.policy.03-api.allowed=1",
            "main_.policy.04-port.allowed=1",
            "main_.policy.05-range.allowed=0",
            "main_.policy.06-sni.allowed=1",
            "main_.policy.07-auth.allowed=0",
            "main_.policy.08-not-auth.allowed=1",
            "main_.policy.09-remote.allowed=1",
            "main_.policy.10-query.allowed=1",
            "main_.policy.11-source.allowed=2",
            "main_.policy.post.allowed=0",
            "main_.policy.o.denied=1",
            "ignored_.denied=0",
            "shadow_.shadow_allowed=23",
            "shadow_.shadow_denied=1",
            "shadow_.policy.s.shadow_denied=1",
            "allowed=17",
            "denied=2",
            "log_.allowed=17",
            "log_.denied=0",
            "log_.policy.l.allowed=1",
        ]
        .map(String::from),
    )
    .collect();
    assert_eq!(got, expected);
}

/// A filter telling apart the client behind `x-forwarded-for`, the peer, and the header
/// as the filter sees it (this hop's address appended or not).
const XFF_FILTER: &str = r#"          - name: envoy.filters.http.rbac
            typed_config:
              "@type": type.googleapis.com/envoy.extensions.filters.http.rbac.v3.RBAC
              rules:
                action: ALLOW
                policies:
                  "remote":
                    permissions: [{ url_path: { path: { exact: /remote } } }]
                    principals: [{ remote_ip: { address_prefix: 10.0.0.0, prefix_len: 8 } }]
                  "direct":
                    permissions: [{ url_path: { path: { exact: /direct } } }]
                    principals: [{ and_ids: { ids: [{ direct_remote_ip: { address_prefix: 127.0.0.1, prefix_len: 32 } }, { not_id: { remote_ip: { address_prefix: 127.0.0.1, prefix_len: 32 } } }] } }]
                  "xff":
                    permissions: [{ url_path: { path: { exact: /xff } } }]
                    principals: [{ header: { name: x-forwarded-for, string_match: { exact: "10.1.1.1" } } }]
"#;

fn xff_cases() -> Vec<(&'static str, Case<'static>)> {
    let xff = |v| [("x-forwarded-for", v)];
    // Leaked once per test run: the cases borrow their headers for 'static.
    let h = |v: &'static str| -> &'static [(&'static str, &'static str)] {
        Box::leak(Box::new(xff(v)))
    };
    vec![
        ("one entry", ("GET", H, "/remote", h("10.1.1.1"))),
        ("two entries", ("GET", H, "/remote", h("10.1.1.1,11.1.1.1"))),
        (
            "two entries, spaced",
            ("GET", H, "/remote", h("10.1.1.1 , 11.1.1.1")),
        ),
        (
            "three entries",
            ("GET", H, "/remote", h("11.1.1.1,10.1.1.1,12.0.0.1")),
        ),
        ("not an address", ("GET", H, "/remote", h("junk,11.1.1.1"))),
        ("no xff", ("GET", H, "/remote", &[])),
        (
            "peer but not remote",
            ("GET", H, "/direct", h("11.1.1.1,12.1.1.1")),
        ),
        (
            "xff as the filter sees it",
            ("GET", H, "/xff", h("10.1.1.1")),
        ),
    ]
}

#[test]
fn remote_ip_behind_x_forwarded_for_matches_envoy() {
    let expected = |answers: [bool; 8]| -> Vec<String> {
        xff_cases()
            .iter()
            .zip(answers)
            .map(|((label, (_, _, path, _)), ok)| match ok {
                true => format!("{label}: 200 \"a GET {path}\" - upstream=1"),
                false => format!("{label}: 403 \"RBAC: access denied\" text/plain upstream=0"),
            })
            .collect()
    };
    for (hcm, answers) in [
        // The last entry is the client.
        ("", [true, false, false, false, false, false, true, true]),
        // One trusted proxy: the entry before the last.
        (
            "          xff_num_trusted_hops: 1\n",
            [false, true, true, true, false, false, true, true],
        ),
        // The peer, whatever the header says; the filter sees the header with this hop's
        // address appended.
        (
            "          use_remote_address: true\n",
            [false, false, false, false, false, false, false, false],
        ),
        // One trusted proxy before this hop: the header's last entry as it came.
        (
            "          use_remote_address: true\n          xff_num_trusted_hops: 1\n",
            [true, false, false, false, false, false, true, false],
        ),
        (
            "          use_remote_address: true\n          skip_xff_append: true\n          xff_num_trusted_hops: 2\n",
            [false, true, true, true, false, false, true, true],
        ),
    ] {
        let a = Upstream::start("a");
        let courier = Courier::start(&boot(&a, hcm, XFF_FILTER, &all_to("a")));
        let got = run_cases(&courier, &a, &xff_cases());
        drop(courier);
        let a = Upstream::start("a");
        if let Some(envoy) = Courier::start_envoy(&boot(&a, hcm, XFF_FILTER, &all_to("a"))) {
            assert_eq!(run_cases(&envoy, &a, &xff_cases()), got, "envoy vs courier: {hcm}");
        }
        assert_eq!(got, expected(answers), "{hcm}");
    }
}

/// A filter whose policy has a CEL `condition` (or another field Courier cannot
/// evaluate) is refused at load with the field's path, never ignored.
#[test]
fn rules_courier_cannot_evaluate_are_refused() {
    let a = Upstream::start("a");
    for (field, policy, path) in [
        (
            "condition",
            "condition: { const_expr: { bool_value: true } }",
            "http_filters[0].typed_config.rules.policies[p].condition",
        ),
        (
            "metadata",
            "permissions: [{ metadata: { filter: f, path: [{ key: k }], value: { present_match: true } } }]",
            "http_filters[0].typed_config.rules.policies[p].permissions[0].metadata",
        ),
    ] {
        let policy = match field {
            "condition" => format!("{{ permissions: [{{ any: true }}], principals: [{{ any: true }}], {policy} }}"),
            _ => format!("{{ {policy}, principals: [{{ any: true }}] }}"),
        };
        let filter = format!("          - name: envoy.filters.http.rbac\n            typed_config:\n              \"@type\": type.googleapis.com/envoy.extensions.filters.http.rbac.v3.RBAC\n              rules: {{ policies: {{ p: {policy} }} }}\n");
        let (code, stderr) = validate(&boot(&a, "", &filter, &all_to("a")));
        assert_eq!(code, Some(1), "{field}: {stderr}");
        assert!(
            stderr.contains(path) && stderr.contains("not supported"),
            "{field}: {stderr}"
        );
    }
}

/// The xDS matcher API in place of `rules` (Envoy Gateway's authorization and Kuma's
/// policies take this shape): a list of predicates on the client's address (an IP range
/// matcher), headers and pseudo-headers, `and`/`or`/`not`, a nested tree keyed by the
/// method, and `on_no_match`; a shadow matcher with no `on_no_match`.
const MATCHER_FILTER: &str = r#"          - name: envoy.filters.http.rbac
            typed_config:
              "@type": type.googleapis.com/envoy.extensions.filters.http.rbac.v3.RBAC
              track_per_rule_stats: true
              matcher:
                matcher_list:
                  matchers:
                  - predicate:
                      and_matcher:
                        predicate:
                        - single_predicate:
                            input: { name: ip, typed_config: { "@type": type.googleapis.com/envoy.extensions.matching.common_inputs.network.v3.SourceIPInput } }
                            custom_match: { name: envoy.matching.matchers.ip, typed_config: { "@type": type.googleapis.com/envoy.extensions.matching.input_matchers.ip.v3.Ip, cidr_ranges: [{ address_prefix: 10.0.0.0, prefix_len: 8 }], stat_prefix: corp } }
                        - single_predicate:
                            input: { name: path, typed_config: { "@type": type.googleapis.com/envoy.type.matcher.v3.HttpRequestHeaderMatchInput, header_name: ":path" } }
                            value_match: { prefix: /corp }
                    on_match: { action: { name: a, typed_config: { "@type": type.googleapis.com/envoy.config.rbac.v3.Action, name: corp, action: ALLOW } } }
                  - predicate:
                      or_matcher:
                        predicate:
                        - single_predicate:
                            input: { name: h, typed_config: { "@type": type.googleapis.com/envoy.type.matcher.v3.HttpRequestHeaderMatchInput, header_name: x-user } }
                            value_match: { exact: blocked }
                        - not_matcher:
                            single_predicate:
                              input: { name: port, typed_config: { "@type": type.googleapis.com/envoy.extensions.matching.common_inputs.network.v3.DestinationPortInput } }
                              value_match: { exact: "LISTENER_PORT" }
                    on_match: { action: { name: a, typed_config: { "@type": type.googleapis.com/envoy.config.rbac.v3.Action, name: blocked, action: DENY } } }
                  - predicate:
                      single_predicate:
                        input: { name: path, typed_config: { "@type": type.googleapis.com/envoy.type.matcher.v3.HttpRequestHeaderMatchInput, header_name: ":path" } }
                        value_match: { prefix: /api }
                    on_match:
                      matcher:
                        matcher_tree:
                          input: { name: m, typed_config: { "@type": type.googleapis.com/envoy.type.matcher.v3.HttpRequestHeaderMatchInput, header_name: ":method" } }
                          exact_match_map:
                            map:
                              GET: { action: { name: a, typed_config: { "@type": type.googleapis.com/envoy.config.rbac.v3.Action, name: api-read, action: ALLOW } } }
                              DELETE: { action: { name: a, typed_config: { "@type": type.googleapis.com/envoy.config.rbac.v3.Action, name: api-delete, action: DENY } } }
                  - predicate:
                      single_predicate:
                        input: { name: h, typed_config: { "@type": type.googleapis.com/envoy.type.matcher.v3.HttpRequestHeaderMatchInput, header_name: x-tenant } }
                        value_match: { safe_regex: { google_re2: {}, regex: "team-[0-9]+" } }
                    on_match: { action: { name: a, typed_config: { "@type": type.googleapis.com/envoy.config.rbac.v3.Action, name: tenant-log, action: LOG } } }
                on_no_match: { action: { name: a, typed_config: { "@type": type.googleapis.com/envoy.config.rbac.v3.Action, name: default-allow, action: ALLOW } } }
              shadow_matcher:
                matcher_list:
                  matchers:
                  - predicate:
                      single_predicate:
                        input: { name: src, typed_config: { "@type": type.googleapis.com/envoy.extensions.matching.common_inputs.network.v3.DirectSourceIPInput } }
                        value_match: { exact: 127.0.0.1 }
                    on_match: { action: { name: a, typed_config: { "@type": type.googleapis.com/envoy.config.rbac.v3.Action, name: local, action: DENY } } }
          - name: strict
            typed_config:
              "@type": type.googleapis.com/envoy.extensions.filters.http.rbac.v3.RBAC
              rules_stat_prefix: strict_
              matcher:
                matcher_list:
                  matchers:
                  - predicate:
                      single_predicate:
                        input: { name: path, typed_config: { "@type": type.googleapis.com/envoy.type.matcher.v3.HttpRequestHeaderMatchInput, header_name: x-pass } }
                        value_match: { exact: "yes" }
                    on_match: { action: { name: a, typed_config: { "@type": type.googleapis.com/envoy.config.rbac.v3.Action, name: pass, action: ALLOW } } }
"#;

fn matcher_cases() -> Vec<(&'static str, Case<'static>)> {
    let pass: &[(&str, &str)] = &[("x-pass", "yes")];
    vec![
        ("default allow", ("GET", H, "/x", pass)),
        ("no action in strict", ("GET", H, "/x", &[])),
        (
            "corp from xff",
            (
                "GET",
                H,
                "/corp/a",
                &[("x-pass", "yes"), ("x-forwarded-for", "10.1.2.3")],
            ),
        ),
        (
            "corp from elsewhere",
            (
                "GET",
                H,
                "/corp/a",
                &[("x-pass", "yes"), ("x-forwarded-for", "192.0.2.1")],
            ),
        ),
        (
            "blocked user",
            ("GET", H, "/x", &[("x-pass", "yes"), ("x-user", "blocked")]),
        ),
        ("api read", ("GET", H, "/api/items", pass)),
        ("api delete", ("DELETE", H, "/api/items", pass)),
        (
            "api post: nested miss goes on",
            ("POST", H, "/api/items", pass),
        ),
        (
            "api post tenant",
            (
                "POST",
                H,
                "/api/items",
                &[("x-pass", "yes"), ("x-tenant", "team-42")],
            ),
        ),
        (
            "tenant log",
            ("GET", H, "/t", &[("x-pass", "yes"), ("x-tenant", "team-7")]),
        ),
        (
            "tenant not a full match",
            (
                "GET",
                H,
                "/t",
                &[("x-pass", "yes"), ("x-tenant", "team-7x")],
            ),
        ),
        (
            "grpc denied",
            (
                "POST",
                H,
                "/api/Svc/M",
                &[("x-pass", "yes"), ("x-user", "blocked"), GRPC],
            ),
        ),
    ]
}

#[test]
fn matcher_matches_envoy() {
    let counters = |p: &Courier| {
        let mut c = counters(
            p,
            &[
                "allowed",
                "denied",
                "shadow_allowed",
                "shadow_denied",
                "policy.corp.allowed",
                "policy.blocked.denied",
                "policy.api-read.allowed",
                "policy.api-delete.denied",
                "policy.tenant-log.allowed",
                "policy.default-allow.allowed",
                "strict_.allowed",
                "strict_.denied",
            ],
        );
        c.push(format!(
            "shadow local={}",
            p.stat("http.ingress.rbac.policy.local.shadow_denied")
        ));
        c
    };
    let run = |start: &dyn Fn(&str) -> Option<Courier>| {
        let a = Upstream::start("a");
        let p = start(&boot(&a, "", MATCHER_FILTER, &all_to("a")))?;
        Some((run_cases(&p, &a, &matcher_cases()), counters(&p)))
    };
    let got = run(&|b| Some(Courier::start(b))).expect("courier starts");
    if let Some(envoy) = run(&|b| Courier::start_envoy(b)) {
        assert_eq!(envoy, got, "envoy vs courier");
    }
    let (answers, _) = &got;
    let status = |label: &str| {
        answers
            .iter()
            .find(|l| l.starts_with(&format!("{label}:")))
            .map(|l| {
                l.split(' ')
                    .nth(label.split(' ').count())
                    .unwrap_or("")
                    .to_string()
            })
            .unwrap_or_default()
    };
    assert_eq!(status("default allow"), "200", "{answers:#?}");
    assert_eq!(status("no action in strict"), "403", "{answers:#?}");
    assert_eq!(status("api delete"), "403", "{answers:#?}");
    assert_eq!(
        status("api post: nested miss goes on"),
        "200",
        "{answers:#?}"
    );
}
