//! CEL in access logs as Envoy 1.40 evaluates it: the `extension_filters.cel` filter
//! (which entries each of many expressions lets through: header equality, status ranges,
//! `has()`, `in`, string functions, boolean combinations, a missing attribute, an error an
//! `||` absorbs, a value that is not a boolean) and the `%CEL()%` command operator (how
//! each kind of value prints, truncation, an error, in text and JSON formats). The same
//! requests go through Courier and Envoy; the logged lines must be equal. Expressions
//! Envoy refuses when it loads the config are refused by both.

mod http_support;

use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;

use http_support::*;

/// The filters: a log each, named, with the expression that decides what it writes.
const FILTERS: &[(&str, &str)] = &[
    ("header", "request.headers['x-log'] == 'yes'"),
    ("header_upper", "request.headers['X-Log'] == 'yes'"),
    (
        "client_errors",
        "response.code >= 400 && response.code < 500",
    ),
    ("server_errors", "response.code >= 500"),
    ("no_cluster", "!has(xds.cluster_name)"),
    ("header_in", "'x-log' in request.headers"),
    ("method_in", "request.method in ['POST', 'PUT']"),
    (
        "prefix_or_suffix",
        "request.path.startsWith('/api') || request.url_path.endsWith('.json')",
    ),
    ("host_contains", "request.host.contains('example')"),
    ("path_matches", "request.path.matches('^/v[0-9]+/')"),
    ("missing_header", "request.headers['x-missing'] == 'x'"),
    ("negated_missing", "!(request.headers['x-missing'] == 'x')"),
    (
        "error_or_true",
        "request.headers['x-missing'] == 'x' || response.code == 200",
    ),
    (
        "error_and_false",
        "request.headers['x-missing'] == 'x' && response.code == 999",
    ),
    ("not_bool", "response.code"),
    ("route", "xds.route_name == 'direct'"),
    ("cluster", "xds.cluster_name == 'a' && upstream.port > 0"),
    (
        "upstream_header",
        "response.headers['x-upstream'] == 'a' && response.code != 200",
    ),
    ("flags", "response.flags != 0"),
    (
        "peers",
        "source.port > 0 && destination.address.startsWith('127.0.0.1:')",
    ),
    ("query", "request.query == 'a=1'"),
    ("size", "request.size == 4"),
    (
        "protocol",
        "request.protocol == 'HTTP/1.1' && request.scheme == 'http' && request.method == 'GET'",
    ),
    ("details", "response.code_details == 'direct_response'"),
    (
        "ternary",
        "(request.headers['x-log'] == 'yes' ? 1 : 2) == 1 && size(request.path) > 3",
    ),
    ("uint", "response.code == 404u"),
    // Envoy's runtime has no string concatenation: an error, `||` absorbs it.
    ("concat", "request.path + 'x' == '/okx'"),
    (
        "concat_or_head",
        "request.path + 'x' == '/okx' || request.method == 'HEAD'",
    ),
    ("addition", "response.code + 1 == 405"),
    (
        "no_upstream",
        "!has(upstream.address) && request.method == 'GET'",
    ),
];

/// What the `%CEL()%` log writes: each kind of value, truncated, absent.
const CEL_TEXT: &str = "%REQ(:PATH)% path=%CEL(request.path)% code=%CEL(response.code)% log=%CEL(request.headers['x-log'])% ok=%CEL(response.code == 200)% map=%CEL(request.headers)% list=%CEL(['a', 1])% double=%CEL(1.5)% big=%CEL(1e20)% null=%CEL(null)% bytes=%CEL(b'xy')% cut=%CEL(request.path):3% uint=%CEL(3u)% neg=%CEL(-7)% route=%CEL(xds.route_name)% cluster=%CEL(xds.cluster_name)% flags=%CEL(response.flags)% missing=%CEL(request.headers['x-missing'])% up=%CEL(upstream.port > 0)% url=%CEL(request.url_path)% q=%CEL(request.query)%\n";

const ROUTES: &str = r#"            name: local
            virtual_hosts:
            - name: nothing
              domains: ["noroute.example"]
              routes: []
            - name: main
              domains: ["*"]
              routes:
              - name: direct
                match: { prefix: "/direct" }
                direct_response: { status: 200, body: { inline_string: hello } }
              - name: proxied
                match: { prefix: "/" }
                route: { cluster: a }
"#;

/// Every log names the marker request, sent last, whatever its expression says: once a
/// log has it, it has everything it will write.
fn or_marker(expr: &str) -> String {
    format!(
        r#"              or_filter:
                filters:
                - header_filter: {{ header: {{ name: x-marker, present_match: true }} }}
                - extension_filter:
                    name: envoy.access_loggers.extension_filters.cel
                    typed_config:
                      "@type": type.googleapis.com/envoy.extensions.access_loggers.filters.cel.v3.ExpressionFilter
                      expression: {expr:?}
"#
    )
}

fn file_log(dir: &Path, name: &str, filter: Option<&str>, format: &str) -> String {
    let filter = filter.map_or(String::new(), |f| format!("            filter:\n{f}"));
    format!(
        "          - name: {name}\n{filter}            typed_config:\n              \"@type\": type.googleapis.com/envoy.extensions.access_loggers.file.v3.FileAccessLog\n              path: {}\n{format}",
        dir.join(format!("{name}.log")).display(),
    )
}

fn boot(dir: &Path, a: &Upstream) -> String {
    let mut logs = String::from("          access_log:\n");
    let line = "              log_format: { text_format: \"%REQ(:METHOD)% %REQ(:PATH)% %RESPONSE_CODE%\\n\" }\n";
    for (name, expr) in FILTERS {
        logs.push_str(&file_log(dir, name, Some(&or_marker(expr)), line));
    }
    logs.push_str(&file_log(
        dir,
        "cel_text",
        None,
        &format!("              log_format: {{ text_format: {CEL_TEXT:?} }}\n"),
    ));
    // The formatter extension listed, as Envoy Gateway lists it, and JSON values.
    logs.push_str(&file_log(
        dir,
        "cel_json",
        None,
        r#"              log_format:
                json_format:
                  path: "%REQ(:PATH)%"
                  code: "%CEL(response.code)%"
                  missing: "%CEL(request.headers['x-missing'])%"
                  mixed: "code=%CEL(response.code)% ok=%CEL(response.code < 300)%"
                formatters:
                - name: envoy.formatter.cel
                  typed_config:
                    "@type": type.googleapis.com/envoy.extensions.formatter.cel.v3.Cel
"#,
    ));
    bootstrap(ROUTES, &logs, &cluster("a", &[a.addr], ""))
}

/// A request: method, path, host, headers.
type Case = (
    &'static str,
    &'static str,
    &'static str,
    &'static [(&'static str, &'static str)],
);

const REQUESTS: &[Case] = &[
    ("GET", "/ok", "h", &[]),
    ("GET", "/api/users", "h", &[("x-log", "yes")]),
    ("GET", "/status/404", "h", &[("X-Log", "no")]),
    ("GET", "/status/503", "h", &[]),
    ("POST", "/v1/data.json?a=1", "h", &[]),
    ("PUT", "/v2/items", "h", &[("x-log", "yes")]),
    ("GET", "/direct", "www.example.com", &[]),
    ("GET", "/direct/more", "h", &[("x-missing", "x")]),
    ("GET", "/ok?a=1", "h", &[("x-missing", "y")]),
    ("GET", "/anything", "noroute.example", &[]),
    ("DELETE", "/status/500", "h", &[("x-log", "yes")]),
    ("GET", "/status/401", "api.example.org", &[]),
    (
        "GET",
        "/api/v1/x.json",
        "h",
        &[("x-log", "a"), ("x-log", "b")],
    ),
    ("HEAD", "/ok", "h", &[]),
    ("GET", "/v10/", "h", &[("x-missing", "x"), ("x-log", "yes")]),
    ("POST", "/echo", "h", &[("x-log", "YES")]),
    ("GET", "/status/201", "h", &[]),
    ("OPTIONS", "/direct", "h", &[]),
    ("GET", "/x", "noroute.example", &[("x-log", "yes")]),
    ("GET", "/status/499", "h", &[]),
    ("PUT", "/api", "example", &[]),
    ("GET", "/status/302", "h", &[("x-missing", "no")]),
];

fn send(addr: SocketAddr, method: &str, path: &str, host: &str, headers: &[(&str, &str)]) {
    use std::io::{Read, Write};
    let Ok(mut s) = std::net::TcpStream::connect(addr) else {
        return;
    };
    let _ = s.set_read_timeout(Some(Duration::from_secs(5)));
    let mut head = format!("{method} {path} HTTP/1.1\r\nhost: {host}\r\nconnection: close\r\n");
    for (k, v) in headers {
        head.push_str(&format!("{k}: {v}\r\n"));
    }
    if matches!(method, "POST" | "PUT") {
        head.push_str("content-length: 4\r\n\r\nbody");
    } else {
        head.push_str("\r\n");
    }
    let _ = s.write_all(head.as_bytes());
    let mut sink = Vec::new();
    let _ = s.read_to_end(&mut sink);
}

/// The lines of log `name` up to the marker request's (which every log writes, last).
fn lines(dir: &Path, name: &str) -> Vec<String> {
    let path = dir.join(format!("{name}.log"));
    let deadline = std::time::Instant::now() + Duration::from_secs(15);
    loop {
        let got = log_lines(&path, 1);
        if let Some(end) = got.iter().position(|l| l.contains("/marker")) {
            return got[..end].to_vec();
        }
        assert!(
            std::time::Instant::now() < deadline,
            "{name} never wrote the marker: {got:?}"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn cel_filters_and_formatters_log_what_envoy_logs() {
    let logs = courier_and_envoy_agree(boot, |proxy, dir, _a| {
        for (method, path, host, headers) in REQUESTS {
            send(proxy.listener, method, path, host, headers);
        }
        send(proxy.listener, "GET", "/marker", "h", &[("x-marker", "1")]);
        let mut all: Vec<(String, Vec<String>)> = FILTERS
            .iter()
            .map(|(name, _)| (name.to_string(), lines(dir, name)))
            .collect();
        for name in ["cel_text", "cel_json"] {
            all.push((name.to_string(), lines(dir, name)));
        }
        all
    });
    let log = |name: &str| -> &Vec<String> {
        &logs
            .iter()
            .find(|(n, _)| n == name)
            .unwrap_or_else(|| panic!("log {name}"))
            .1
    };
    // What Courier wrote is what the expressions say (and, above, what Envoy wrote).
    assert_eq!(
        log("header"),
        &[
            "GET /api/users 200",
            "PUT /v2/items 200",
            "DELETE /status/500 500",
            "GET /v10/ 200",
            "GET /x 404",
        ]
    );
    assert_eq!(log("header_upper"), log("header"));
    assert_eq!(
        log("client_errors"),
        &[
            "GET /status/404 404",
            "GET /anything 404",
            "GET /status/401 401",
            "GET /x 404",
            "GET /status/499 499",
        ]
    );
    // An error negated is an error: only the requests that have the header.
    assert_eq!(
        log("negated_missing"),
        &["GET /ok?a=1 200", "GET /status/302 302"]
    );
    assert!(log("not_bool").is_empty(), "{:?}", log("not_bool"));
    assert!(log("error_and_false").is_empty());
    assert!(log("concat").is_empty(), "{:?}", log("concat"));
    assert_eq!(log("concat_or_head"), &["HEAD /ok 200"]);
    assert_eq!(
        log("addition"),
        &["GET /status/404 404", "GET /anything 404", "GET /x 404"]
    );
    assert_eq!(
        log("missing_header"),
        &["GET /direct/more 200", "GET /v10/ 200"]
    );
    assert_eq!(log("flags"), &["GET /anything 404", "GET /x 404"]);
    let text = log("cel_text");
    assert_eq!(text.len(), REQUESTS.len());
    assert!(
        text[0].starts_with("/ok path=/ok code=200 log=- ok=true map=CelMap value list=CelList value double=1.5 big=1e+20 null=NULL bytes=xy cut=/ok uint=3 neg=-7 route=proxied cluster=a flags=0 missing=- up=true"),
        "{}",
        text[0]
    );
    assert!(text[12].contains("log=a,b"), "{}", text[12]);
    // In JSON a value is a string, an error `null`.
    assert_eq!(
        log("cel_json")[0],
        r#"{"code":"200","missing":null,"mixed":"code=200 ok=true","path":"/ok"}"#
    );
}

#[test]
fn expressions_envoy_refuses_are_refused() {
    let dir = tempfile::tempdir().expect("tempdir");
    let a = Upstream::start("a");
    let base = boot(dir.path(), &a);
    for (bad, want) in [
        ("response.code >= ", "Not able to parse filter expression"),
        (
            "has(request.headers['x-log'])",
            "Not able to parse filter expression",
        ),
        (
            "",
            "Not able to parse filter expression: INVALID_ARGUMENT: ERROR: <input>:1:1: Syntax error: mismatched input '<EOF>' expecting",
        ),
        (
            "[1, 2].exists(x, x == 1)",
            "Comprehension support is disabled",
        ),
        (
            "string(response.code) == '200'",
            "No overload found in reference resolve step for string",
        ),
        // Functions of the `cel` crate's library Envoy's runtime does not have.
        (
            "request.path.lowerAscii() == '/ok'",
            "No overload found in reference resolve step for lowerAscii",
        ),
        (
            "optional.of(1).hasValue()",
            "No overload found in reference resolve step for of",
        ),
        ("request.?path.hasValue()", "Not able to parse filter expression"),
    ] {
        let config = base.replacen(&format!("{:?}", FILTERS[0].1), &format!("{bad:?}"), 1);
        assert_ne!(config, base);
        let (code, stderr) = validate(&config);
        assert_eq!(code, Some(1), "{bad}: {stderr}");
        assert!(stderr.contains(want), "{bad}: want {want:?} in {stderr}");
        assert!(
            stderr.contains("extension_filter.typed_config.expression"),
            "{bad}: {stderr}"
        );
        if let Some((code, text)) = envoy_validate(&config) {
            assert_ne!(code, Some(0), "envoy accepted {bad}");
            assert!(text.contains(want), "envoy, {bad}: {text}");
        }
        // The same expression in a `%CEL()%` is refused too.
        let format = base.replacen("%CEL(request.path)%", &format!("%CEL({bad})%"), 1);
        let (code, stderr) = validate(&format);
        assert_eq!(code, Some(1), "{bad}: {stderr}");
        // Envoy's formatter says `expression` where its filter says `filter expression`.
        let want = want.replace("filter expression", "expression");
        assert!(stderr.contains(&want), "{bad}: want {want:?} in {stderr}");
        if let Some((code, text)) = envoy_validate(&format) {
            assert_ne!(code, Some(0), "envoy accepted %CEL({bad})%");
            assert!(text.contains(&want), "envoy, %CEL({bad})%: {text}");
        }
    }
    // Envoy's opt-in CEL features are not built: refused by path.
    let expr = format!("expression: {:?}", FILTERS[0].1);
    assert_refused_by_path(
        &base,
        &[
            (
                &expr,
                &format!("{expr}\n                      cel_config: {{ enable_string_concat: true }}"),
                "access_log[0].filter.or_filter.filters[1].extension_filter.typed_config.cel_config: not supported by Courier",
            ),
            (
                "type.googleapis.com/envoy.extensions.formatter.cel.v3.Cel",
                "type.googleapis.com/envoy.extensions.formatter.cel.v3.Cel\n                    cel_config: { enable_string_functions: true }",
                "formatters[0].typed_config.cel_config: not supported by Courier",
            ),
        ],
    );
    if let Some((code, text)) = envoy_validate(&base) {
        assert_eq!(code, Some(0), "{text}");
    }
}
