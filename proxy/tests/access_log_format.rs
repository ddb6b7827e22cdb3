//! Access-log formats as Envoy 1.40 writes them: `json_format` (typed values for a lone
//! operator, `null` for an absent one, nested objects, literals, keys sorted), and
//! `omit_empty_values` in JSON and in text. The same requests go through Courier and,
//! when `envoy` is on PATH, through Envoy; the logged lines must be equal.

mod http_support;

use std::path::Path;

use http_support::*;

fn logged_bootstrap(dir: &Path) -> String {
    let logger = |name: &str, format: &str| {
        format!(
            "          - name: {name}
            typed_config:
              \"@type\": type.googleapis.com/envoy.extensions.access_loggers.file.v3.FileAccessLog
              path: {}
{format}",
            dir.join(format!("{name}.log")).display()
        )
    };
    let loggers = [
        logger(
            "json",
            "              log_format:
                json_format:
                  code: \"%RESPONSE_CODE%\"
                  method: \"%REQ(:METHOD)%\"
                  mixed: \"x-%RESPONSE_CODE%-%REQ(X-NONE)%\"
                  missing: \"%REQ(X-NONE)%\"
                  nested: { a: \"%PROTOCOL%\", b: \"%UPSTREAM_HOST%\" }
                  lit: 5
                  yes: true
                  bytes: \"%BYTES_SENT%\"
                  received: \"%BYTES_RECEIVED%\"
                  flags: \"%RESPONSE_FLAGS%\"
                  ua: \"%REQ(USER-AGENT)%\"
                  short: \"%REQ(X-LONG):3%\"
                  pct: \"100%%\"
                  route: \"%ROUTE_NAME%\"
",
        ),
        logger(
            "omit",
            "              log_format:
                omit_empty_values: true
                json_format: { code: \"%RESPONSE_CODE%\", missing: \"%REQ(X-NONE)%\", nested: { a: \"%UPSTREAM_HOST%\" }, empty: \"\", lit: 5 }
",
        ),
        logger(
            "text",
            "              log_format:
                omit_empty_values: true
                text_format: \"[%REQ(X-NONE)%] %RESPONSE_CODE% %RESPONSE_FLAGS%\\n\"
",
        ),
        logger(
            "legacy",
            "              json_format: { code: \"%RESPONSE_CODE%\", path: \"%REQ(:PATH)%\" }
",
        ),
    ]
    .concat();
    bootstrap(
        "            name: local
            virtual_hosts:
            - name: main
              domains: [\"*\"]
              routes:
              - name: ok
                match: { prefix: \"/ok\" }
                direct_response: { status: 200, body: { inline_string: hello } }
",
        &format!("          access_log:\n{loggers}"),
        "    []\n",
    )
}

/// The lines of `name`.log once it has `n`.
fn lines(dir: &Path, name: &str, n: usize) -> Vec<String> {
    log_lines(&dir.join(format!("{name}.log")), n)
}

fn run(start: &dyn Fn(&str) -> Option<Courier>) -> Option<Vec<String>> {
    let dir = tempfile::tempdir().expect("tempdir");
    let proxy = start(&logged_bootstrap(dir.path()))?;
    get(
        proxy.listener,
        "h",
        "/ok",
        &[("user-agent", "te\"st"), ("x-long", "abcdef")],
    );
    get(proxy.listener, "h", "/nope", &[]);
    let mut out = Vec::new();
    for name in ["json", "omit", "text", "legacy"] {
        out.extend(lines(dir.path(), name, 2));
    }
    Some(out)
}

#[test]
fn json_and_omitted_values_are_logged_as_envoy_logs_them() {
    let got = run(&|b| Some(Courier::start(b))).expect("courier starts");
    // Envoy flushes log files every 10 s by default.
    if let Some(envoy) =
        run(&|b| Courier::start_envoy_with(b, &["--file-flush-interval-msec", "20"]))
    {
        assert_eq!(envoy, got, "envoy vs courier");
    }
    assert_eq!(
        got,
        [
            r#"{"bytes":5,"code":200,"flags":"-","lit":5,"method":"GET","missing":null,"mixed":"x-200--","nested":{"a":"HTTP/1.1","b":null},"pct":"100%","received":0,"route":"ok","short":"abc","ua":"te\"st","yes":true}"#,
            r#"{"bytes":0,"code":404,"flags":"NR","lit":5,"method":"GET","missing":null,"mixed":"x-404--","nested":{"a":"HTTP/1.1","b":null},"pct":"100%","received":0,"route":null,"short":null,"ua":null,"yes":true}"#,
            r#"{"code":200,"empty":"","lit":5}"#,
            r#"{"code":404,"empty":"","lit":5}"#,
            "[] 200 -",
            "[] 404 NR",
            r#"{"code":200,"path":"/ok"}"#,
            r#"{"code":404,"path":"/nope"}"#,
        ]
    );
}

/// One logger per filter, each writing `<path> <status>` lines.
fn filtered_bootstrap(dir: &Path) -> String {
    let filters: &[(&str, &str)] = &[
        ("errors", "status_code_filter: { comparison: { op: GE, value: { default_value: 400, runtime_key: log.min_status } } }"),
        ("ok_only", "status_code_filter: { comparison: { op: EQ, value: { default_value: 200, runtime_key: k } } }"),
        ("not_hc", "not_health_check_filter: {}"),
        ("header", "header_filter: { header: { name: x-log, present_match: true } }"),
        ("no_route", "response_flag_filter: { flags: [NR] }"),
        ("any_flag", "response_flag_filter: {}"),
        ("and", "and_filter: { filters: [{ status_code_filter: { comparison: { op: EQ, value: { default_value: 200, runtime_key: k } } } }, { not_health_check_filter: {} }] }"),
        ("or", "or_filter: { filters: [{ status_code_filter: { comparison: { op: EQ, value: { default_value: 404, runtime_key: k } } } }, { header_filter: { header: { name: x-log, present_match: true } } }] }"),
        ("all_sampled", "runtime_filter: { runtime_key: log.sample, percent_sampled: { numerator: 100 } }"),
        ("none_sampled", "runtime_filter: { runtime_key: log.sample, percent_sampled: { numerator: 0 }, use_independent_randomness: true }"),
        ("fast", "duration_filter: { comparison: { op: LE, value: { default_value: 10000, runtime_key: k } } }"),
        ("end_type", "log_type_filter: { types: [DownstreamEnd] }"),
        ("not_end_type", "log_type_filter: { types: [DownstreamEnd], exclude: true }"),
        ("traced", "traceable_filter: {}"),
    ];
    let loggers: String = filters
        .iter()
        .map(|(name, filter)| {
            format!(
                "          - name: {name}
            filter: {{ {filter} }}
            typed_config:
              \"@type\": type.googleapis.com/envoy.extensions.access_loggers.file.v3.FileAccessLog
              path: {}
              log_format: {{ text_format: \"%REQ(:PATH)% %RESPONSE_CODE%\\n\" }}
",
                dir.join(format!("{name}.log")).display()
            )
        })
        .collect();
    let boot = bootstrap(
        "            name: local
            virtual_hosts:
            - name: main
              domains: [\"*\"]
              routes:
              - match: { prefix: \"/ok\" }
                direct_response: { status: 200, body: { inline_string: hello } }
",
        &format!("          access_log:\n{loggers}"),
        "    []\n",
    );
    with_filters(
        &boot,
        "          - name: envoy.filters.http.health_check
            typed_config:
              \"@type\": type.googleapis.com/envoy.extensions.filters.http.health_check.v3.HealthCheck
              pass_through_mode: false
              headers: [{ name: \":path\", string_match: { exact: /healthz } }]
",
    )
}

fn run_filtered(start: &dyn Fn(&str) -> Option<Courier>) -> Option<Vec<String>> {
    let dir = tempfile::tempdir().expect("tempdir");
    let proxy = start(&filtered_bootstrap(dir.path()))?;
    get(proxy.listener, "h", "/ok", &[]);
    get(proxy.listener, "h", "/nope", &[]);
    get(proxy.listener, "h", "/healthz", &[]);
    get(proxy.listener, "h", "/ok?tagged", &[("x-log", "1")]);
    // Each log file has its own writer: each is read once it holds the lines it should
    // (as many as the expected result below; a file that should stay empty is read as
    // it is once the others are complete).
    let mut out = Vec::new();
    for (name, lines_expected) in [
        ("end_type", 4),
        ("errors", 1),
        ("ok_only", 3),
        ("not_hc", 3),
        ("header", 1),
        ("no_route", 1),
        ("any_flag", 1),
        ("and", 2),
        ("or", 2),
        ("all_sampled", 4),
        ("none_sampled", 0),
        ("fast", 4),
        ("not_end_type", 0),
        ("traced", 0),
    ] {
        out.push(format!(
            "{name}: {:?}",
            lines(dir.path(), name, lines_expected)
        ));
    }
    Some(out)
}

#[test]
fn access_log_filters_choose_the_lines_envoy_chooses() {
    let got = run_filtered(&|b| Some(Courier::start(b))).expect("courier starts");
    if let Some(envoy) =
        run_filtered(&|b| Courier::start_envoy_with(b, &["--file-flush-interval-msec", "20"]))
    {
        assert_eq!(envoy, got, "envoy vs courier");
    }
    assert_eq!(
        got,
        [
            r#"end_type: ["/ok 200", "/nope 404", "/healthz 200", "/ok?tagged 200"]"#,
            r#"errors: ["/nope 404"]"#,
            r#"ok_only: ["/ok 200", "/healthz 200", "/ok?tagged 200"]"#,
            r#"not_hc: ["/ok 200", "/nope 404", "/ok?tagged 200"]"#,
            r#"header: ["/ok?tagged 200"]"#,
            r#"no_route: ["/nope 404"]"#,
            r#"any_flag: ["/nope 404"]"#,
            r#"and: ["/ok 200", "/ok?tagged 200"]"#,
            r#"or: ["/nope 404", "/ok?tagged 200"]"#,
            r#"all_sampled: ["/ok 200", "/nope 404", "/healthz 200", "/ok?tagged 200"]"#,
            r#"none_sampled: []"#,
            r#"fast: ["/ok 200", "/nope 404", "/healthz 200", "/ok?tagged 200"]"#,
            r#"not_end_type: []"#,
            r#"traced: []"#,
        ]
    );
}
