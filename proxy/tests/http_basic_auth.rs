//! The basic auth filter (`envoy.filters.http.basic_auth`): htpasswd users, the
//! credential's decoding and every refusal (its status, body, `www-authenticate` realm
//! and response code details), `forward_username_header`, `authentication_header`,
//! `allow_missing`, `BasicAuthPerRoute` at the route and virtual host, the counters, and
//! the htpasswd texts Envoy refuses. Each case runs through Courier and, when `envoy` is
//! on PATH, through Envoy 1.40; the two must agree, and agree with the values written
//! here.

mod http_support;

use std::path::Path;
use std::sync::atomic::Ordering;

use http_support::*;

/// `user:pw`, `us:er:p` (a colon in the password), a comment and an empty line.
const USERS: &str = r#"user:{SHA}GpHWL3ymc5liWkNopqtdSjuqYHM=\n# comment\n\nus:{SHA}ARYJmsvKWi8s2q64x/FJ+E+IItQ=\n"#;

fn filters(extra: &str) -> String {
    format!(
        r#"          - name: envoy.filters.http.basic_auth
            typed_config:
              "@type": type.googleapis.com/envoy.extensions.filters.http.basic_auth.v3.BasicAuth
              users: {{ inline_string: "{USERS}" }}
{extra}"#
    )
}

const ROUTES: &str = r#"            name: local
            virtual_hosts:
            - name: vh
              domains: ["vh.example"]
              typed_per_filter_config:
                envoy.filters.http.basic_auth:
                  "@type": type.googleapis.com/envoy.extensions.filters.http.basic_auth.v3.BasicAuthPerRoute
                  users: { inline_string: "vh:{SHA}fX4gVrUoYtJ/d8RGWb7BoYAVymI=" }
              routes:
              - match: { prefix: "/" }
                route: { cluster: a }
            - name: main
              domains: ["*"]
              routes:
              - match: { prefix: "/route" }
                route: { cluster: a }
                typed_per_filter_config:
                  envoy.filters.http.basic_auth:
                    "@type": type.googleapis.com/envoy.extensions.filters.http.basic_auth.v3.BasicAuthPerRoute
                    users: { inline_string: "admin:{SHA}Qu9j54Nu9iLZGFwaRWBR7fFglcw=" }
              - match: { prefix: "/off" }
                route: { cluster: a }
                typed_per_filter_config:
                  envoy.filters.http.basic_auth:
                    "@type": type.googleapis.com/envoy.config.route.v3.FilterConfig
                    disabled: true
              - match: { prefix: "/direct" }
                direct_response: { status: 200, body: { inline_string: "d" } }
              - match: { prefix: "/" }
                route: { cluster: a }
"#;

fn boot(dir: &Path, a: &Upstream, extra: &str) -> String {
    let log = format!(
        "          access_log:
          - name: details
            typed_config:
              \"@type\": type.googleapis.com/envoy.extensions.access_loggers.file.v3.FileAccessLog
              path: {}
              log_format: {{ text_format: \"%RESPONSE_CODE% %RESPONSE_CODE_DETAILS% %RESPONSE_FLAGS%\\n\" }}
",
        dir.join("details.log").display()
    );
    with_filters(
        &bootstrap(ROUTES, &log, &cluster("a", &[a.addr], "")),
        &filters(extra),
    )
}

/// One request: method, host, path, headers.
type Case<'a> = (&'a str, &'a str, &'a str, &'a [(&'a str, &'a str)]);

const H: &str = "example.com";
const OK: (&str, &str) = ("authorization", "Basic dXNlcjpwdw==");

/// Each request on a fresh connection as `label: status body realm upstream=n` and, when
/// it reached the upstream, the `x-user` and `authorization` it got; then each request's
/// access log line; then the counters.
fn run(proxy: &Courier, dir: &Path, a: &Upstream, cases: &[(&str, Case<'_>)]) -> Vec<String> {
    let mut out: Vec<String> = cases
        .iter()
        .map(|(label, (method, host, path, headers))| {
            let before = a.requests.load(Ordering::SeqCst);
            let r = Client::connect(proxy.listener).request(method, host, path, headers, b"");
            let reached = a.requests.load(Ordering::SeqCst) - before;
            let seen = match (reached, a.last()) {
                (1, Some(s)) => format!(
                    " x-user={:?} authorization={:?}",
                    s.header("x-user"),
                    s.header("authorization")
                ),
                _ => String::new(),
            };
            format!(
                "{label}: {} {:?} {:?} {:?} upstream={reached}{seen}",
                r.status,
                r.body_str(),
                r.header("www-authenticate"),
                r.header("grpc-status"),
            )
        })
        .collect();
    out.extend(log_lines(&dir.join("details.log"), cases.len()));
    for c in ["allowed", "denied"] {
        out.push(format!(
            "{c}={}",
            proxy.stat(&format!("http.ingress.basic_auth.{c}"))
        ));
    }
    out
}

/// Runs `cases` through Courier and Envoy (when on PATH): they must agree; Courier's.
fn differential(extra: &str, cases: &[(&str, Case<'_>)]) -> Vec<String> {
    courier_and_envoy_agree(
        |dir, a| boot(dir, a, extra),
        |proxy, dir, a| run(proxy, dir, a, cases),
    )
}

#[test]
fn basic_auth_matches_envoy() {
    let long = format!("/{}", "a".repeat(300));
    let cases: Vec<(&str, Case<'_>)> = vec![
        ("no credential", ("GET", H, "/x?q=1", &[])),
        ("valid", ("GET", H, "/x", &[OK])),
        (
            "unpadded",
            ("GET", H, "/x", &[("authorization", "Basic dXNlcjpwdw")]),
        ),
        (
            "one pad",
            ("GET", H, "/x", &[("authorization", "Basic dXNlcjpwdw=")]),
        ),
        (
            "colon in password",
            ("GET", H, "/x", &[("authorization", "Basic dXM6ZXI6cA==")]),
        ),
        (
            "wrong password",
            ("GET", H, "/x", &[("authorization", "Basic dXNlcjpiYWQ=")]),
        ),
        (
            "unknown user",
            ("GET", H, "/x", &[("authorization", "Basic bm9ib2R5OnB3")]),
        ),
        (
            "lowercase scheme",
            ("GET", H, "/x", &[("authorization", "basic dXNlcjpwdw==")]),
        ),
        (
            "bearer",
            ("GET", H, "/x", &[("authorization", "Bearer dXNlcjpwdw==")]),
        ),
        (
            "empty token",
            ("GET", H, "/x", &[("authorization", "Basic ")]),
        ),
        (
            "two spaces",
            ("GET", H, "/x", &[("authorization", "Basic  dXNlcjpwdw==")]),
        ),
        (
            "not base64",
            ("GET", H, "/x", &[("authorization", "Basic !!!!")]),
        ),
        (
            "three pads",
            ("GET", H, "/x", &[("authorization", "Basic dXNlcjpwdw===")]),
        ),
        (
            "trailing bits",
            ("GET", H, "/x", &[("authorization", "Basic dXNlcjpwdx==")]),
        ),
        (
            "no colon",
            ("GET", H, "/x", &[("authorization", "Basic Zm9v")]),
        ),
        (
            "empty name",
            ("GET", H, "/x", &[("authorization", "Basic OnB3")]),
        ),
        (
            "spoofed x-user",
            ("GET", H, "/x", &[OK, ("x-user", "root")]),
        ),
        (
            "spoofed x-user, denied",
            ("GET", H, "/x", &[("x-user", "root")]),
        ),
        (
            "two fields, valid first",
            ("GET", H, "/x", &[OK, ("authorization", "Basic x")]),
        ),
        (
            "forwarded proto",
            ("GET", H, "/p", &[("x-forwarded-proto", "https")]),
        ),
        ("long path", ("GET", H, &long, &[])),
        (
            "route users",
            (
                "GET",
                H,
                "/route",
                &[("authorization", "Basic YWRtaW46YWRt")],
            ),
        ),
        ("route users, filter's user", ("GET", H, "/route", &[OK])),
        (
            "virtual host users",
            (
                "GET",
                "vh.example",
                "/v",
                &[("authorization", "Basic dmg6dmhwdw==")],
            ),
        ),
        (
            "virtual host, filter's user",
            ("GET", "vh.example", "/v", &[OK]),
        ),
        ("disabled on route", ("GET", H, "/off", &[])),
        ("direct response", ("GET", H, "/direct", &[])),
        ("direct response, valid", ("GET", H, "/direct", &[OK])),
        (
            "gRPC",
            ("POST", H, "/svc/M", &[("content-type", "application/grpc")]),
        ),
    ];
    let got = differential("              forward_username_header: X-User\n", &cases);
    let realm = |p: &str| format!("Some(\"Basic realm=\\\"http://example.com{p}\\\"\")");
    let denied = |body: &str, p: &str| format!("401 {body:?} {} None upstream=0", realm(p));
    const MISSING: &str = "User authentication failed. Missing username and password.";
    const SCHEME: &str = "User authentication failed. Expected 'Basic' authentication scheme.";
    const FORMAT: &str = "User authentication failed. Invalid basic credential format.";
    const CRED: &str = "User authentication failed. Invalid username/password combination.";
    let ok = |p: &str, user: &str, auth: &str| {
        format!("200 \"a GET {p}\" None None upstream=1 x-user={user} authorization={auth}")
    };
    let user_ok = |auth: &str| ok("/x", "Some(\"user\")", &format!("Some({auth:?})"));
    let expected: Vec<String> = [
        ("no credential", denied(MISSING, "/x?q=1")),
        ("valid", user_ok("Basic dXNlcjpwdw==")),
        ("unpadded", user_ok("Basic dXNlcjpwdw")),
        ("one pad", user_ok("Basic dXNlcjpwdw=")),
        ("colon in password", ok("/x", "Some(\"us\")", "Some(\"Basic dXM6ZXI6cA==\")")),
        ("wrong password", denied(CRED, "/x")),
        ("unknown user", denied(CRED, "/x")),
        ("lowercase scheme", denied(SCHEME, "/x")),
        ("bearer", denied(SCHEME, "/x")),
        // The field's trailing space is trimmed: no `Basic ` left.
        ("empty token", denied(SCHEME, "/x")),
        ("two spaces", denied(FORMAT, "/x")),
        ("not base64", denied(FORMAT, "/x")),
        ("three pads", denied(FORMAT, "/x")),
        ("trailing bits", denied(FORMAT, "/x")),
        ("no colon", denied(FORMAT, "/x")),
        ("empty name", denied(CRED, "/x")),
        ("spoofed x-user", user_ok("Basic dXNlcjpwdw==")),
        ("spoofed x-user, denied", denied(MISSING, "/x")),
        ("two fields, valid first", denied(FORMAT, "/x")),
        (
            "forwarded proto",
            format!("401 {MISSING:?} Some(\"Basic realm=\\\"https://example.com/p\\\"\") None upstream=0"),
        ),
        ("long path", denied(MISSING, &long[..256])),
        ("route users", ok("/route", "Some(\"admin\")", "Some(\"Basic YWRtaW46YWRt\")")),
        ("route users, filter's user", denied(CRED, "/route")),
        ("virtual host users", "200 \"a GET /v\" None None upstream=1 x-user=Some(\"vh\") authorization=Some(\"Basic dmg6dmhwdw==\")".to_string()),
        ("virtual host, filter's user", format!("401 {CRED:?} Some(\"Basic realm=\\\"http://vh.example/v\\\"\") None upstream=0")),
        ("disabled on route", ok("/off", "None", "None")),
        ("direct response", denied(MISSING, "/direct")),
        ("direct response, valid", "200 \"d\" None None upstream=0".into()),
        ("gRPC", format!("200 \"\" {} Some(\"16\") upstream=0", realm("/svc/M"))),
    ]
    .into_iter()
    .map(|(l, v)| format!("{l}: {v}"))
    .collect();
    assert_eq!(got[..cases.len()], expected[..]);
    let details: Vec<&str> = got[cases.len()..2 * cases.len()]
        .iter()
        .map(String::as_str)
        .collect();
    assert_eq!(details[0], "401 no_credential_for_basic_auth -");
    assert_eq!(details[1], "200 via_upstream -");
    assert_eq!(details[5], "401 invalid_credential_for_basic_auth -");
    assert_eq!(details[7], "401 invalid_scheme_for_basic_auth -");
    assert_eq!(details[10], "401 invalid_format_for_basic_auth -");
    assert_eq!(got[2 * cases.len()..], ["allowed=8", "denied=20"]);
}

#[test]
fn authentication_header_and_allow_missing_match_envoy() {
    let cases: Vec<(&str, Case<'_>)> = vec![
        ("no field", ("GET", H, "/x", &[])),
        ("authorization is not read", ("GET", H, "/x", &[OK])),
        (
            "field valid",
            ("GET", H, "/x", &[("x-auth", "Basic dXNlcjpwdw==")]),
        ),
        (
            "field invalid",
            ("GET", H, "/x", &[("x-auth", "Basic dXNlcjpiYWQ=")]),
        ),
        (
            "field, other scheme",
            ("GET", H, "/x", &[("x-auth", "Bearer t")]),
        ),
        ("field, no scheme", ("GET", H, "/x", &[("x-auth", "Basic")])),
        (
            "field, not base64",
            ("GET", H, "/x", &[("x-auth", "Basic !!!!")]),
        ),
        (
            "field repeated, valid first",
            (
                "GET",
                H,
                "/x",
                &[("x-auth", "Basic dXNlcjpwdw=="), ("x-auth", "junk")],
            ),
        ),
        (
            "field repeated, junk first",
            (
                "GET",
                H,
                "/x",
                &[("x-auth", "junk"), ("x-auth", "Basic dXNlcjpwdw==")],
            ),
        ),
    ];
    let got = differential(
        "              authentication_header: X-Auth\n              allow_missing: true\n",
        &cases,
    );
    let statuses: Vec<&str> = got[..cases.len()]
        .iter()
        .map(|l| l.split(": ").nth(1).and_then(|r| r.get(..3)).unwrap_or(""))
        .collect();
    assert_eq!(
        statuses,
        ["200", "200", "200", "401", "200", "200", "401", "200", "200"]
    );
    assert_eq!(got[2 * cases.len()..], ["allowed=2", "denied=2"]);
}

/// The htpasswd texts Envoy refuses (and the one it takes), Envoy's message for each;
/// `emit_dynamic_metadata`, which Envoy takes, is refused by path.
#[test]
fn bad_configs_are_refused_as_envoy_refuses_them() {
    let a = Upstream::start("a");
    let dir = tempfile::tempdir().expect("tempdir");
    let base = boot(dir.path(), &a, "");
    let sha = "{SHA}GpHWL3ymc5liWkNopqtdSjuqYHM=";
    let cases: Vec<(String, &str)> = vec![
        (
            "nocolon".into(),
            "basic auth: invalid htpasswd format, username:password is expected",
        ),
        (format!(":{sha}"), "basic auth: empty user name or password"),
        ("u:".into(), "basic auth: empty user name or password"),
        (
            "u:$apr1$x".into(),
            "basic auth: unsupported htpasswd format: please use {SHA}",
        ),
        (
            "u:{SHA}abc".into(),
            "basic auth: invalid htpasswd format, invalid SHA hash length",
        ),
        (
            format!("u:{sha}\\r\\nv:{sha}"),
            "basic auth: invalid htpasswd format, invalid SHA hash length",
        ),
        (format!("u:{sha}\\nu:{sha}"), "basic auth: duplicate users"),
        ("".into(), "DataSource cannot be empty"),
    ];
    for (users, want) in &cases {
        let cfg = base.replacen(USERS, users, 1);
        let (code, stderr) = validate(&cfg);
        assert_eq!(code, Some(1), "{users}: {stderr}");
        assert!(stderr.contains(want), "{users}: want {want:?} in {stderr}");
        if let Some((code, out)) = envoy_validate(&cfg) {
            assert_ne!(code, Some(0), "{users}: envoy took it");
            assert!(out.contains(want), "{users}: envoy said {out}");
        }
    }
    let with_metadata = base.replacen(
        "users: {",
        "emit_dynamic_metadata: true\n              users: {",
        1,
    );
    if let Some((code, out)) = envoy_validate(&with_metadata) {
        assert_eq!(code, Some(0), "{out}");
    }
    assert_refused_by_path(
        &base,
        &[(
            "users: {",
            "emit_dynamic_metadata: true\n              users: {",
            "emit_dynamic_metadata: not supported by Courier",
        )],
    );
}
