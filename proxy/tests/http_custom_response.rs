//! The custom response filter (`envoy.filters.http.custom_response`): a matcher on the
//! response's status (exact, prefix, class) and headers picks a `LocalResponsePolicy`
//! whose answer replaces the response (its body, status when set, headers); statuses no
//! policy picks pass untouched; a route's `CustomResponse` is matched before the filter's;
//! the router's own answers (a connect failure, a direct response, no route) are matched
//! too. Each case runs through Courier and,
//! when `envoy` is on PATH, through Envoy 1.40; the two must agree, and agree with the
//! values written here.

mod http_support;

use std::path::Path;

use http_support::*;

const STATUS: &str = r#"{ name: s, typed_config: { "@type": type.googleapis.com/envoy.type.matcher.v3.HttpResponseStatusCodeMatchInput } }"#;
const CLASS: &str = r#"{ name: c, typed_config: { "@type": type.googleapis.com/envoy.type.matcher.v3.HttpResponseStatusCodeClassMatchInput } }"#;
const UPSTREAM: &str = r#"{ name: h, typed_config: { "@type": type.googleapis.com/envoy.type.matcher.v3.HttpResponseHeaderMatchInput, header_name: X-Upstream } }"#;
const LOCAL: &str =
    "type.googleapis.com/envoy.extensions.http.custom_response.local_response_policy.v3.LocalResponsePolicy";
const REDIRECT: &str =
    "type.googleapis.com/envoy.extensions.http.custom_response.redirect_policy.v3.RedirectPolicy";

fn filter() -> String {
    format!(
        r#"          - name: envoy.filters.http.custom_response
            typed_config:
              "@type": type.googleapis.com/envoy.extensions.filters.http.custom_response.v3.CustomResponse
              custom_response_matcher:
                matcher_list:
                  matchers:
                  - predicate: {{ single_predicate: {{ input: {STATUS}, value_match: {{ exact: "404" }} }} }}
                    on_match: {{ action: {{ name: nf, typed_config: {{ "@type": {LOCAL}, body: {{ inline_string: "custom 404" }}, response_headers_to_add: [{{ header: {{ key: x-custom, value: nf }} }}] }} }} }}
                  - predicate: {{ single_predicate: {{ input: {CLASS}, value_match: {{ exact: "5xx" }} }} }}
                    on_match: {{ action: {{ name: five, typed_config: {{ "@type": {LOCAL}, body: {{ inline_string: "{{\"error\":\"server\"}}" }}, status_code: 503, response_headers_to_add: [{{ header: {{ key: content-type, value: application/json }} }}] }} }} }}
                  - predicate: {{ single_predicate: {{ input: {STATUS}, value_match: {{ prefix: "41" }} }} }}
                    on_match: {{ action: {{ name: empty, typed_config: {{ "@type": {LOCAL}, status_code: 299 }} }} }}
                  - predicate: {{ and_matcher: {{ predicate: [
                      {{ single_predicate: {{ input: {STATUS}, value_match: {{ exact: "401" }} }} }},
                      {{ single_predicate: {{ input: {UPSTREAM}, value_match: {{ exact: "a" }} }} }} ] }} }}
                    on_match: {{ action: {{ name: auth, typed_config: {{ "@type": {LOCAL}, body: {{ inline_string: "log in" }}, status_code: 200 }} }} }}
"#
    )
}

fn routes() -> String {
    format!(
        r#"            name: local
            virtual_hosts:
            - name: main
              domains: ["*"]
              routes:
              - match: {{ prefix: "/o/" }}
                route: {{ cluster: a, prefix_rewrite: "/status/" }}
                typed_per_filter_config:
                  envoy.filters.http.custom_response:
                    "@type": type.googleapis.com/envoy.extensions.filters.http.custom_response.v3.CustomResponse
                    custom_response_matcher:
                      matcher_tree:
                        input: {STATUS}
                        exact_match_map:
                          map:
                            "404": {{ action: {{ name: r, typed_config: {{ "@type": {LOCAL}, body: {{ inline_string: "route 404" }}, status_code: 410 }} }} }}
                            "403": {{ action: {{ name: r, typed_config: {{ "@type": {LOCAL}, body: {{ inline_string: "route 403" }} }} }} }}
              - match: {{ prefix: "/direct" }}
                direct_response: {{ status: 404, body: {{ inline_string: "direct" }} }}
              - match: {{ prefix: "/dead" }}
                route: {{ cluster: dead }}
              - match: {{ prefix: "/" }}
                route: {{ cluster: a }}
            - name: narrow
              domains: ["narrow"]
              routes:
              - match: {{ prefix: "/only" }}
                route: {{ cluster: a }}
"#
    )
}

fn boot(dir: &Path, a: &Upstream) -> String {
    let log = format!(
        "          access_log:
          - name: details
            typed_config:
              \"@type\": type.googleapis.com/envoy.extensions.access_loggers.file.v3.FileAccessLog
              path: {}
              log_format: {{ text_format: \"%REQ(:PATH)% %RESPONSE_CODE% %RESPONSE_CODE_DETAILS% %RESPONSE_FLAGS% %BYTES_SENT%\\n\" }}
",
        dir.join("details.log").display()
    );
    let clusters = cluster("a", &[a.addr], "") + &cluster("dead", &[refusing_addr()], "");
    with_filters(&bootstrap(&routes(), &log, &clusters), &filter())
}

/// What a response shows: status, headers (but `date`, and the upstream's timing by name
/// only), body.
fn shown(r: &Resp) -> String {
    let mut headers: Vec<String> = r
        .headers
        .iter()
        .filter(|(k, _)| !k.eq_ignore_ascii_case("date"))
        .map(|(k, v)| match k.to_ascii_lowercase().as_str() {
            "x-envoy-upstream-service-time" => k.to_ascii_lowercase(),
            k => format!("{k}: {v}"),
        })
        .collect();
    headers.sort();
    format!("{} [{}] {:?}", r.status, headers.join("; "), r.body_str())
}

#[test]
fn policies_replace_the_responses_they_match() {
    let paths = [
        "/status/200",
        "/status/201",
        "/status/404",
        "/status/403",
        "/status/500",
        "/status/502",
        "/status/503",
        "/status/410",
        "/status/418",
        "/status/401",
        "/status/400",
        "/status/302",
        "/o/404",
        "/o/403",
        "/o/500",
        "/o/410",
        "/o/200",
        "/o/401",
        "/dead",
        "/direct",
        "/nowhere",
    ];
    let (got, logged) = courier_and_envoy_agree(boot, |proxy, dir, _| {
        let mut c = Client::connect(proxy.listener);
        let mut got = paths
            .iter()
            .map(|p| format!("{p} -> {}", shown(&c.get("x", p, &[]))))
            .collect::<Vec<_>>();
        // No route: the connection manager's own 404.
        got.push(format!(
            "narrow -> {}",
            shown(&c.get("narrow", "/other", &[]))
        ));
        (got, log_lines(&dir.join("details.log"), paths.len() + 1))
    });
    // A replaced response is logged with empty details (Envoy's local reply with none),
    // its flags kept.
    assert!(
        logged.contains(&"/status/404 404  - 10".to_string()),
        "{logged:#?}"
    );
    assert!(
        logged.contains(&"/dead 503  UF 18".to_string()),
        "{logged:#?}"
    );
    assert!(
        logged.contains(&"/status/200 200 via_upstream - 17".to_string()),
        "{logged:#?}"
    );
    let want = |path: &str| {
        got.iter()
            .find(|l| l.starts_with(&format!("{path} -> ")))
            .map(|l| l[path.len() + 4..].to_string())
            .unwrap_or_default()
    };
    // Untouched: what no policy picks.
    assert!(want("/status/200").starts_with("200 ["), "{got:#?}");
    assert!(want("/status/200").contains("x-upstream: a"), "{got:#?}");
    assert!(want("/status/403").contains("x-upstream: a"), "{got:#?}");
    assert!(want("/status/400").starts_with("400 "), "{got:#?}");
    // Replaced: the upstream's headers and body gone, the policy's in their place.
    assert_eq!(
        want("/status/404"),
        "404 [content-length: 10; content-type: text/plain; server: envoy; x-custom: nf] \"custom 404\"",
        "{got:#?}"
    );
    assert_eq!(
        want("/status/502"),
        "503 [content-length: 18; content-type: application/json; server: envoy] \"{\\\"error\\\":\\\"server\\\"}\"",
        "{got:#?}"
    );
    assert_eq!(
        want("/status/418"),
        "299 [content-length: 0; server: envoy] \"\"",
        "{got:#?}"
    );
    assert_eq!(
        want("/status/401"),
        "200 [content-length: 6; content-type: text/plain; server: envoy] \"log in\"",
        "{got:#?}"
    );
    // The route's matcher first, the filter's when the route's picks nothing.
    assert!(want("/o/404").starts_with("410 ") && want("/o/404").contains("route 404"));
    assert!(want("/o/403").starts_with("403 ") && want("/o/403").contains("route 403"));
    assert_eq!(want("/o/500"), want("/status/500"), "{got:#?}");
    assert!(want("/o/200").contains("x-upstream: a"), "{got:#?}");
    // The router's own answers are matched too: a direct response, no route.
    assert_eq!(want("/direct"), want("/status/404"), "{got:#?}");
    assert_eq!(want("narrow"), want("/status/404"), "{got:#?}");
    assert!(
        logged.contains(&"/other 404  NR 10".to_string()),
        "{logged:#?}"
    );
}

#[test]
fn configs_envoy_rejects_are_refused() {
    let dir = tempfile::tempdir().expect("tempdir");
    let a = Upstream::start("a");
    let base = boot(dir.path(), &a);
    // A redirect policy Envoy refuses: no target, a relative URI, a route redirect's
    // rewrites, a fragment in the path, a status past 999, a request header action
    // Envoy has no extension for.
    let log_in = format!(
        "{{ \"@type\": {LOCAL}, body: {{ inline_string: \"log in\" }}, status_code: 200 }}"
    );
    let redirect = |fields: &str| format!("{{ \"@type\": {REDIRECT}, {fields} }}");
    let bad_redirects = [
        redirect("status_code: 302"),
        redirect("uri: \"/relative\""),
        redirect("uri: \"\""),
        redirect("redirect_action: { prefix_rewrite: \"/p\" }"),
        redirect("redirect_action: { regex_rewrite: { pattern: { regex: \"a\" }, substitution: b } }"),
        redirect("redirect_action: { path_redirect: \"/p#f\" }"),
        redirect("uri: \"http://x/\", status_code: 1000"),
        redirect("uri: \"http://x/\", status_code: 199"),
        redirect("uri: \"http://x/\", modify_request_headers_action: { name: m, typed_config: { \"@type\": type.googleapis.com/google.protobuf.Empty } }"),
    ];
    for (from, to) in [
        ("status_code: 299", "status_code: 100"),
        ("status_code: 503", "status_code: 600"),
        ("value_match: { exact: \"404\" }", "value_match: {}"),
    ]
    .into_iter()
    .map(|(f, t)| (f.to_string(), t.to_string()))
    .chain(bad_redirects.iter().map(|r| (log_in.clone(), r.clone())))
    {
        let (from, to) = (from.as_str(), to.as_str());
        assert!(base.contains(from), "{from}");
        let bad = base.replacen(from, to, 1);
        let (code, stderr) = validate(&bad);
        assert_eq!(code, Some(1), "{to}: {stderr}");
        if let Some((code, out)) = envoy_validate(&bad) {
            assert_ne!(code, Some(0), "envoy accepts {to}: {out}");
        }
    }
    // What both take: the base.
    let (code, stderr) = validate(&base);
    assert_eq!(code, Some(0), "{stderr}");
}
