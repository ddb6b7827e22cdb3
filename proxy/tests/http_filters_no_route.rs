//! Requests no route takes (no virtual host for their host, or no route in it) still go
//! through the HTTP filters, as Envoy's: a health check is answered, a fault aborts, a
//! local rate limit counts and refuses them, and only what passes gets the `404`. Runs
//! through Courier and, when `envoy` is on PATH, through Envoy 1.40; the two must agree.

mod http_support;

use http_support::*;

const ROUTES: &str = r#"            name: local
            virtual_hosts:
            - name: known
              domains: ["known"]
              routes:
              - match: { prefix: "/api" }
                direct_response: { status: 200, body: { inline_string: "api" } }
"#;

const FILTERS: &str = r#"          - name: envoy.filters.http.health_check
            typed_config:
              "@type": type.googleapis.com/envoy.extensions.filters.http.health_check.v3.HealthCheck
              pass_through_mode: false
              headers: [ { name: ":path", string_match: { exact: "/healthz" } } ]
          - name: envoy.filters.http.fault
            typed_config:
              "@type": type.googleapis.com/envoy.extensions.filters.http.fault.v3.HTTPFault
              abort: { header_abort: {}, percentage: { numerator: 100 } }
          - name: envoy.filters.http.local_ratelimit
            typed_config:
              "@type": type.googleapis.com/envoy.extensions.filters.http.local_ratelimit.v3.LocalRateLimit
              stat_prefix: rl
              token_bucket: { max_tokens: 2, tokens_per_fill: 1, fill_interval: 3600s }
              filter_enabled: { default_value: { numerator: 100 } }
              filter_enforced: { default_value: { numerator: 100 } }
          - name: envoy.filters.http.cors
            typed_config: { "@type": type.googleapis.com/envoy.extensions.filters.http.cors.v3.Cors }
"#;

/// Each request's status and body, then the filters' and the connection manager's
/// non-zero counters that say what happened.
fn run(p: &Courier) -> Vec<String> {
    const FAULT: (&str, &str) = ("x-envoy-fault-abort-request", "418");
    type Case<'a> = (&'a str, &'a str, &'a [(&'a str, &'a str)]);
    let cases: &[Case] = &[
        ("known", "/healthz", &[]),
        ("unknown", "/healthz", &[]),
        ("known", "/nope", &[]),
        ("known", "/nope", &[FAULT]),
        ("unknown", "/x", &[FAULT]),
        ("unknown", "/x", &[("origin", "http://o.example")]),
        ("known", "/nope", &[]),
        ("known", "/api", &[]),
    ];
    let mut out: Vec<String> = cases
        .iter()
        .map(|(host, path, headers)| {
            let r = get(p.listener, host, path, headers);
            format!(
                "{host}{path} {headers:?}: {} {:?} acao={:?}",
                r.status,
                r.body_str(),
                r.header("access-control-allow-origin")
            )
        })
        .collect();
    let stats = admin_get(p.admin, "/stats").unwrap_or_default();
    let mut counters: Vec<String> = stats
        .lines()
        .filter_map(|l| l.split_once(": "))
        .filter(|(k, v)| {
            *v != "0"
                && (k.ends_with(".no_route")
                    || k.ends_with("rate_limited")
                    || k.starts_with("http.ingress.fault.aborts_injected")
                    || k.starts_with("http.ingress.health_check.ok"))
        })
        .map(|(k, v)| format!("{k}: {v}"))
        .collect();
    counters.sort();
    out.extend(counters);
    out
}

#[test]
fn requests_no_route_takes_go_through_the_filters_like_envoy() {
    let a = Upstream::start("a");
    let boot = with_filters(
        &bootstrap(ROUTES, "", &cluster("a", &[a.addr], "")),
        FILTERS,
    );
    let got = run(&Courier::start(&boot));
    match Courier::start_envoy(&boot) {
        Some(envoy) => assert_eq!(run(&envoy), got, "envoy vs courier"),
        None => eprintln!("envoy not on PATH: skipping the no-route filter differential"),
    }
    assert_eq!(
        got,
        [
            "known/healthz []: 200 \"\" acao=None",
            "unknown/healthz []: 200 \"\" acao=None",
            "known/nope []: 404 \"\" acao=None",
            "known/nope [(\"x-envoy-fault-abort-request\", \"418\")]: 418 \"fault filter abort\" acao=None",
            "unknown/x [(\"x-envoy-fault-abort-request\", \"418\")]: 418 \"fault filter abort\" acao=None",
            "unknown/x [(\"origin\", \"http://o.example\")]: 404 \"\" acao=None",
            "known/nope []: 429 \"local_rate_limited\" acao=None",
            "known/api []: 429 \"local_rate_limited\" acao=None",
            "http.ingress.fault.aborts_injected: 2",
            "http.ingress.health_check.ok: 2",
            "http.ingress.no_route: 2",
            "rl.http_local_rate_limit.rate_limited: 2",
        ]
    );
}
