//! The credential injector filter (`envoy.filters.http.credential_injector`) with the
//! `generic` credential from a static secret: injected into `authorization` or a named
//! field with `header_value_prefix`, the secret's trailing newline dropped, a client's
//! field kept or overwritten, an empty secret failing the request (`401`) or letting it
//! through (`allow_request_without_credential`), the counters and details, and the
//! configs refused (by path, or as Envoy refuses them). Each case runs through Courier
//! and, when `envoy` is on PATH, through Envoy 1.40; the two must agree, and agree with
//! the values written here.

mod http_support;

use std::path::Path;
use std::sync::atomic::Ordering;

use http_support::*;

const SECRETS: &str = r#"  secrets:
  - name: tok
    generic_secret: { secret: { inline_string: "abc123\r\n" } }
  - name: empty
    generic_secret: {}
  - name: cert
    tls_certificate: {}
"#;

fn filter(extra: &str, generic: &str) -> String {
    format!(
        r#"          - name: envoy.filters.http.credential_injector
            typed_config:
              "@type": type.googleapis.com/envoy.extensions.filters.http.credential_injector.v3.CredentialInjector
{extra}              credential:
                name: envoy.http.injected_credentials.generic
                typed_config:
                  "@type": type.googleapis.com/envoy.extensions.http.injected_credentials.generic.v3.Generic
{generic}"#
    )
}

const ROUTES: &str = r#"            name: local
            virtual_hosts:
            - name: main
              domains: ["*"]
              routes:
              - match: { prefix: "/off" }
                route: { cluster: a }
                typed_per_filter_config:
                  envoy.filters.http.credential_injector:
                    "@type": type.googleapis.com/envoy.config.route.v3.FilterConfig
                    disabled: true
              - match: { prefix: "/direct" }
                direct_response: { status: 200, body: { inline_string: "d" } }
              - match: { prefix: "/" }
                route: { cluster: a }
"#;

fn boot(dir: &Path, a: &Upstream, filter: &str) -> String {
    let log = format!(
        "          access_log:
          - name: details
            typed_config:
              \"@type\": type.googleapis.com/envoy.extensions.access_loggers.file.v3.FileAccessLog
              path: {}
              log_format: {{ text_format: \"%RESPONSE_CODE% %RESPONSE_CODE_DETAILS%\\n\" }}
",
        dir.join("details.log").display()
    );
    with_filters(
        &bootstrap(ROUTES, &log, &cluster("a", &[a.addr], "")),
        filter,
    )
    .replacen("  clusters:\n", &format!("{SECRETS}  clusters:\n"), 1)
}

/// One request: path, headers.
type Case<'a> = (&'a str, &'a [(&'a str, &'a str)]);

/// Each request as `label: status body upstream=n` with the upstream's `authorization`
/// and `x-tok`; each request's log line; the counters.
fn run(proxy: &Courier, dir: &Path, a: &Upstream, cases: &[(&str, Case<'_>)]) -> Vec<String> {
    let mut out: Vec<String> = cases
        .iter()
        .map(|(label, (path, headers))| {
            let before = a.requests.load(Ordering::SeqCst);
            let r =
                Client::connect(proxy.listener).request("GET", "example.com", path, headers, b"");
            let reached = a.requests.load(Ordering::SeqCst) - before;
            let seen = match (reached, a.last()) {
                (1, Some(s)) => format!(
                    " authorization={:?} x-tok={:?}",
                    s.header("authorization"),
                    s.header("x-tok")
                ),
                _ => String::new(),
            };
            format!(
                "{label}: {} {:?} upstream={reached}{seen}",
                r.status,
                r.body_str()
            )
        })
        .collect();
    out.extend(log_lines(&dir.join("details.log"), cases.len()));
    for c in ["injected", "failed", "already_exists"] {
        out.push(format!(
            "{c}={}",
            proxy.stat(&format!("http.ingress.credential_injector.{c}"))
        ));
    }
    out
}

/// Runs `cases` through Courier and Envoy (when on PATH): they must agree; Courier's.
fn differential(filter: &str, cases: &[(&str, Case<'_>)]) -> Vec<String> {
    courier_and_envoy_agree(
        |dir, a| boot(dir, a, filter),
        |proxy, dir, a| run(proxy, dir, a, cases),
    )
}

const TOK: &str = "                  credential: { name: tok }\n";

#[test]
fn authorization_kept_unless_overwritten_matches_envoy() {
    let cases: Vec<(&str, Case<'_>)> = vec![
        ("none", ("/x", &[])),
        ("client's own", ("/x", &[("authorization", "Basic mine")])),
        ("client's own, empty", ("/x", &[("authorization", "")])),
        ("other field", ("/x", &[("x-tok", "t")])),
        ("disabled", ("/off", &[])),
        ("direct response", ("/direct", &[])),
        ("again", ("/y", &[])),
    ];
    let got = differential(&filter("", TOK), &cases);
    let n = cases.len();
    assert_eq!(
        got[..n],
        [
            "none: 200 \"a GET /x\" upstream=1 authorization=Some(\"abc123\") x-tok=None",
            "client's own: 200 \"a GET /x\" upstream=1 authorization=Some(\"Basic mine\") x-tok=None",
            "client's own, empty: 200 \"a GET /x\" upstream=1 authorization=Some(\"\") x-tok=None",
            "other field: 200 \"a GET /x\" upstream=1 authorization=Some(\"abc123\") x-tok=Some(\"t\")",
            "disabled: 200 \"a GET /off\" upstream=1 authorization=None x-tok=None",
            "direct response: 200 \"d\" upstream=0",
            "again: 200 \"a GET /y\" upstream=1 authorization=Some(\"abc123\") x-tok=None",
        ]
    );
    assert_eq!(got[2 * n..], ["injected=4", "failed=0", "already_exists=2"]);
}

#[test]
fn named_field_prefix_and_overwrite_match_envoy() {
    let cases: Vec<(&str, Case<'_>)> = vec![
        ("none", ("/x", &[])),
        ("client's own", ("/x", &[("x-tok", "mine")])),
        ("client's two", ("/x", &[("x-tok", "a"), ("x-tok", "b")])),
        (
            "authorization untouched",
            ("/x", &[("authorization", "Basic mine")]),
        ),
    ];
    let generic = format!("{TOK}                  header: X-Tok\n                  header_value_prefix: \"Bearer \"\n");
    let got = differential(&filter("              overwrite: true\n", &generic), &cases);
    let n = cases.len();
    assert_eq!(
        got[..n],
        [
            "none: 200 \"a GET /x\" upstream=1 authorization=None x-tok=Some(\"Bearer abc123\")",
            "client's own: 200 \"a GET /x\" upstream=1 authorization=None x-tok=Some(\"Bearer abc123\")",
            "client's two: 200 \"a GET /x\" upstream=1 authorization=None x-tok=Some(\"Bearer abc123\")",
            "authorization untouched: 200 \"a GET /x\" upstream=1 authorization=Some(\"Basic mine\") x-tok=Some(\"Bearer abc123\")",
        ]
    );
    assert_eq!(got[2 * n..], ["injected=4", "failed=0", "already_exists=0"]);
}

#[test]
fn an_empty_secret_fails_requests_as_envoy() {
    let cases: Vec<(&str, Case<'_>)> = vec![
        ("none", ("/x", &[])),
        ("client's own", ("/x", &[("authorization", "Basic mine")])),
        ("direct response", ("/direct", &[])),
    ];
    let empty = "                  credential: { name: empty }\n";
    let got = differential(&filter("", empty), &cases);
    assert_eq!(
        got,
        [
            "none: 401 \"Failed to inject credential.\" upstream=0",
            "client's own: 200 \"a GET /x\" upstream=1 authorization=Some(\"Basic mine\") x-tok=None",
            "direct response: 401 \"Failed to inject credential.\" upstream=0",
            "401 failed_to_inject_credential",
            "200 via_upstream",
            "401 failed_to_inject_credential",
            "injected=0",
            "failed=2",
            "already_exists=1",
        ]
    );
    let allowed = differential(
        &filter(
            "              allow_request_without_credential: true\n",
            empty,
        ),
        &cases[..1],
    );
    assert_eq!(
        allowed,
        [
            "none: 200 \"a GET /x\" upstream=1 authorization=None x-tok=None",
            "200 via_upstream",
            "injected=0",
            "failed=1",
            "already_exists=0",
        ]
    );
}

/// The secret file `path_config_source` names: a `DiscoveryResponse` holding `filetok`,
/// written whole and moved into place (as Envoy watches it).
fn write_secret(file: &Path, value: &str) {
    let text = format!(
        "resources:\n- \"@type\": type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.Secret\n  name: filetok\n  generic_secret: {{ secret: {{ inline_string: \"{value}\\n\" }} }}\n"
    );
    let tmp = file.with_extension("tmp");
    std::fs::write(&tmp, text).expect("write secret");
    std::fs::rename(&tmp, file).expect("move secret");
}

/// A request's `authorization` at the upstream once it is `want` (or the last seen after
/// 10 s): the proxy re-reads the file on its own schedule.
fn wait_for_credential(proxy: &Courier, a: &Upstream, want: &str) -> Option<String> {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    loop {
        Client::connect(proxy.listener).get("example.com", "/x", &[]);
        let got = a
            .last()
            .and_then(|s| s.header("authorization").map(str::to_string));
        if got.as_deref() == Some(want) || std::time::Instant::now() > deadline {
            return got;
        }
    }
}

/// A secret from a file (`path_config_source`): injected, and the new value once the
/// file changes, as Envoy.
#[test]
fn a_secret_from_a_file_follows_the_file_as_envoy() {
    let run = |envoy: bool| -> Option<Vec<Option<String>>> {
        let dir = tempfile::tempdir().expect("tempdir");
        let file = dir.path().join("secret.yaml");
        write_secret(&file, "v1");
        let a = Upstream::start("a");
        let generic = format!(
            "                  credential:\n                    name: filetok\n                    sds_config: {{ path_config_source: {{ path: {} }} }}\n",
            file.display()
        );
        let cfg = format!(
            "node: {{ id: node1, cluster: cluster1 }}\n{}",
            boot(dir.path(), &a, &filter("", &generic))
        );
        let proxy = match envoy {
            true => Courier::start_envoy(&cfg)?,
            false => Courier::start(&cfg),
        };
        let first = wait_for_credential(&proxy, &a, "v1");
        write_secret(&file, "v2");
        let second = wait_for_credential(&proxy, &a, "v2");
        Some(vec![first, second])
    };
    let got = run(false).expect("courier");
    assert_eq!(got, [Some("v1".to_string()), Some("v2".to_string())]);
    match run(true) {
        Some(envoy) => assert_eq!(envoy, got, "envoy vs courier"),
        None => eprintln!("envoy not on PATH: skipping the secret file differential"),
    }
}

#[test]
fn configs_are_refused_as_envoy_or_by_path() {
    let a = Upstream::start("a");
    let dir = tempfile::tempdir().expect("tempdir");
    let base = boot(dir.path(), &a, &filter("", TOK));
    // Envoy refuses these too (a missing secret or one of another type crashes it).
    for (from, to) in [
        (TOK, ""),
        (TOK, "                  credential: { name: nope }\n"),
        (TOK, "                  credential: { name: cert }\n"),
        (TOK, &format!("{TOK}                  header: \"a b\"\n")),
    ] {
        let cfg = base.replacen(from, to, 1);
        let (code, stderr) = validate(&cfg);
        assert_eq!(code, Some(1), "{to}: {stderr}");
        if let Some((code, out)) = envoy_validate(&cfg) {
            assert_ne!(code, Some(0), "{to}: envoy took it: {out}");
        }
    }
    let generic = format!("envoy.extensions.http.injected_credentials.generic.v3.Generic\n{TOK}");
    assert_refused_by_path(
        &base,
        &[
            (
                &generic,
                "envoy.extensions.http.injected_credentials.oauth2.v3.OAuth2\n                  token_endpoint: { cluster: a, timeout: 1s, uri: \"http://a/token\" }\n                  client_credentials: { client_id: c, client_secret: { name: tok } }\n",
                "credential.typed_config: not supported by Courier",
            ),
        ],
    );
}
