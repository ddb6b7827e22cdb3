//! Filters chosen per request by the xDS matcher API: the composite filter behind a match
//! delegate (`ExtensionWithMatcher`), executing one filter, an inline chain, a named
//! chain, nothing for an unknown chain name or a failed sampling draw; and a match
//! delegate wrapping an ordinary filter, skipped where its matcher says `SkipFilter`.
//! Run through Courier and Envoy 1.40; the two must agree.

mod http_support;

use std::sync::atomic::Ordering;

use http_support::*;

const FAULT: &str = "type.googleapis.com/envoy.extensions.filters.http.fault.v3.HTTPFault";

fn abort(status: u32) -> String {
    format!(
        r#"{{ "@type": {FAULT}, abort: {{ http_status: {status}, percentage: {{ numerator: 100 }} }} }}"#
    )
}

fn execute(body: &str) -> String {
    format!(
        r#"{{ action: {{ name: run, typed_config: {{ "@type": type.googleapis.com/envoy.extensions.filters.http.composite.v3.ExecuteFilterAction, {body} }} }} }}"#
    )
}

fn boot(a: &Upstream) -> String {
    let filters = format!(
        r#"          - name: skipper
            typed_config:
              "@type": type.googleapis.com/envoy.extensions.common.matching.v3.ExtensionWithMatcher
              extension_config:
                name: envoy.filters.http.fault
                typed_config:
                  "@type": {FAULT}
                  abort: {{ header_abort: {{}}, percentage: {{ numerator: 100 }} }}
              xds_matcher:
                matcher_list:
                  matchers:
                  - predicate:
                      single_predicate:
                        input: {{ name: h, typed_config: {{ "@type": type.googleapis.com/envoy.type.matcher.v3.HttpRequestHeaderMatchInput, header_name: x-skip }} }}
                        value_match: {{ exact: "yes" }}
                    on_match: {{ action: {{ name: skip, typed_config: {{ "@type": type.googleapis.com/envoy.extensions.filters.common.matcher.action.v3.SkipFilter }} }} }}
          - name: composite
            typed_config:
              "@type": type.googleapis.com/envoy.extensions.common.matching.v3.ExtensionWithMatcher
              extension_config:
                name: composite
                typed_config:
                  "@type": type.googleapis.com/envoy.extensions.filters.http.composite.v3.Composite
                  named_filter_chains:
                    named:
                      typed_config:
                      - {{ name: envoy.filters.http.fault, typed_config: {named} }}
              xds_matcher:
                matcher_tree:
                  input: {{ name: h, typed_config: {{ "@type": type.googleapis.com/envoy.type.matcher.v3.HttpRequestHeaderMatchInput, header_name: x-pick }} }}
                  exact_match_map:
                    map:
                      one: {one}
                      chain: {chain}
                      named: {by_name}
                      ghost: {ghost}
                      never: {never}
"#,
        named = abort(419),
        one = execute(&format!("typed_config: {{ name: envoy.filters.http.fault, typed_config: {} }}", abort(418))),
        chain = execute(
            r#"filter_chain: { typed_config: [{ name: rl, typed_config: { "@type": type.googleapis.com/envoy.extensions.filters.http.local_ratelimit.v3.LocalRateLimit, stat_prefix: chain_rl, token_bucket: { max_tokens: 1, fill_interval: 3600s }, filter_enabled: { default_value: { numerator: 100 } }, filter_enforced: { default_value: { numerator: 100 } } } }] }"#,
        ),
        by_name = execute("filter_chain_name: named"),
        ghost = execute("filter_chain_name: missing"),
        never = execute(&format!(
            "typed_config: {{ name: envoy.filters.http.fault, typed_config: {} }}, sample_percent: {{ default_value: {{ numerator: 0 }} }}",
            abort(420)
        )),
    );
    with_filters(
        &bootstrap(&all_to("a"), "", &cluster("a", &[a.addr], "")),
        &filters,
    )
}

fn run(proxy: &Courier, a: &Upstream) -> Vec<String> {
    let cases: &[(&str, &[(&str, &str)])] = &[
        ("nothing picked", &[]),
        ("one filter", &[("x-pick", "one")]),
        ("inline chain 1", &[("x-pick", "chain")]),
        ("inline chain 2", &[("x-pick", "chain")]),
        ("named chain", &[("x-pick", "named")]),
        ("unknown chain name", &[("x-pick", "ghost")]),
        ("sampled out", &[("x-pick", "never")]),
        ("unmatched value", &[("x-pick", "other")]),
        (
            "wrapped filter runs",
            &[("x-envoy-fault-abort-request", "451")],
        ),
        (
            "wrapped filter skipped",
            &[("x-envoy-fault-abort-request", "451"), ("x-skip", "yes")],
        ),
        (
            "skip does not skip the composite",
            &[("x-skip", "yes"), ("x-pick", "one")],
        ),
        (
            "wrapped first, then composite",
            &[("x-envoy-fault-abort-request", "452"), ("x-pick", "one")],
        ),
    ];
    let mut out = Vec::new();
    for (label, headers) in cases {
        let before = a.requests.load(Ordering::SeqCst);
        let r = get(proxy.listener, "h", "/p", headers);
        let reached = a.requests.load(Ordering::SeqCst) - before;
        out.push(format!(
            "{label}: {} {:?} upstream={reached}",
            r.status,
            r.body_str()
        ));
    }
    out.extend(stats_with(proxy, "composite"));
    out.extend(stats_with(proxy, "ingress.fault."));
    out.extend(stats_with(proxy, "chain_rl"));
    out
}

#[test]
fn composite_and_match_delegate_match_envoy() {
    let a = Upstream::start("a");
    let got = run(&Courier::start(&boot(&a)), &a);
    let a = Upstream::start("a");
    match Courier::start_envoy(&boot(&a)) {
        Some(envoy) => assert_eq!(run(&envoy, &a), got, "envoy vs courier"),
        None => eprintln!("envoy not on PATH: skipping the composite differential"),
    }
    assert_eq!(
        got,
        [
            "nothing picked: 200 \"a GET /p\" upstream=1",
            "one filter: 418 \"fault filter abort\" upstream=0",
            "inline chain 1: 200 \"a GET /p\" upstream=1",
            "inline chain 2: 429 \"local_rate_limited\" upstream=0",
            "named chain: 419 \"fault filter abort\" upstream=0",
            "unknown chain name: 200 \"a GET /p\" upstream=1",
            "sampled out: 200 \"a GET /p\" upstream=1",
            "unmatched value: 200 \"a GET /p\" upstream=1",
            "wrapped filter runs: 451 \"fault filter abort\" upstream=0",
            "wrapped filter skipped: 200 \"a GET /p\" upstream=1",
            "skip does not skip the composite: 418 \"fault filter abort\" upstream=0",
            "wrapped first, then composite: 452 \"fault filter abort\" upstream=0",
            "http.ingress.composite.filter_delegation_error: 0",
            "http.ingress.composite.filter_delegation_success: 5",
            "http.ingress.fault.aborts_injected: 5",
            "http.ingress.fault.active_faults: 0",
            "http.ingress.fault.delays_injected: 0",
            "http.ingress.fault.faults_overflow: 0",
            "http.ingress.fault.response_rl_injected: 0",
            "chain_rl.http_local_rate_limit.enabled: 2",
            "chain_rl.http_local_rate_limit.enforced: 1",
            "chain_rl.http_local_rate_limit.ok: 1",
            "chain_rl.http_local_rate_limit.rate_limited: 1",
            "chain_rl.http_local_rate_limit.shadow_mode: 0",
        ]
    );
}

fn bare_boot(a: &Upstream) -> String {
    let filters = format!(
        r#"          - name: composite
            typed_config:
              "@type": type.googleapis.com/envoy.extensions.filters.http.composite.v3.Composite
              matcher:
                matcher_tree:
                  input: {{ name: h, typed_config: {{ "@type": type.googleapis.com/envoy.type.matcher.v3.HttpRequestHeaderMatchInput, header_name: x-pick }} }}
                  exact_match_map:
                    map:
                      one: {one}
"#,
        one = execute(&format!(
            "typed_config: {{ name: envoy.filters.http.fault, typed_config: {} }}",
            abort(418)
        )),
    );
    with_filters(
        &bootstrap(&all_to("a"), "", &cluster("a", &[a.addr], "")),
        &filters,
    )
}

/// A composite with its own `matcher`, without a match delegate around it.
#[test]
fn a_composite_with_its_own_matcher_matches_envoy() {
    let run = |proxy: &Courier| {
        let mut out: Vec<String> = [("x-pick", "one"), ("x-pick", "two")]
            .iter()
            .map(|h| get(proxy.listener, "h", "/p", &[*h]).status.to_string())
            .collect();
        out.extend(stats_with(proxy, "composite"));
        out
    };
    let a = Upstream::start("a");
    let got = run(&Courier::start(&bare_boot(&a)));
    if let Some(envoy) = Courier::start_envoy(&bare_boot(&a)) {
        assert_eq!(run(&envoy), got, "envoy vs courier");
    }
    assert_eq!(
        got,
        [
            "418",
            "200",
            "http.ingress.composite.filter_delegation_error: 0",
            "http.ingress.composite.filter_delegation_success: 1",
        ]
    );
}

/// What Courier does not build is refused by its path.
#[test]
fn what_is_not_built_is_refused_by_path() {
    let a = Upstream::start("a");
    assert_refused_by_path(
        &boot(&a),
        &[
            (
                "filter_chain_name: missing",
                "dynamic_config: { name: d, config_discovery: { config_source: { ads: {} }, type_urls: [type.googleapis.com/envoy.extensions.filters.http.fault.v3.HTTPFault] } }",
                "dynamic_config",
            ),
            (
                "\"@type\": type.googleapis.com/envoy.extensions.filters.http.fault.v3.HTTPFault, abort: { http_status: 419, percentage: { numerator: 100 } }",
                "\"@type\": type.googleapis.com/envoy.extensions.filters.http.composite.v3.Composite",
                "composite.v3.Composite",
            ),
        ],
    );
}
