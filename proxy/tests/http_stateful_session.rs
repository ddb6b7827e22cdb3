//! The stateful session filter (`envoy.filters.http.stateful_session`) over a cluster of
//! three upstreams that each answer with their own name: the first request gets a cookie
//! naming the host that answered, requests carrying it stick to that host (in the
//! protobuf form and the older plain `ip:port` form, with no new cookie), an expired
//! cookie or one naming an unknown host gets a new host and cookie, a strict session's
//! unknown host fails the request, header-based sessions, a route that disables the
//! filter and one that replaces its config. Each run goes through Courier and, when
//! `envoy` is on PATH, through Envoy 1.40 with the same upstreams; the two accounts must
//! agree, and agree with the values written here.

mod http_support;

use std::collections::{BTreeSet, HashMap};
use std::net::SocketAddr;
use std::time::{SystemTime, UNIX_EPOCH};

use base64::Engine as _;
use http_support::*;

/// The protobuf an Envoy session cookie holds.
#[derive(Clone, PartialEq, prost::Message)]
struct SessionCookie {
    #[prost(string, tag = "1")]
    address: String,
    #[prost(uint64, tag = "2")]
    expires: u64,
}

/// The cookie session state, its lines indented by `n`.
fn cookie_state(n: usize) -> String {
    let pad = " ".repeat(n);
    [
        "session_state:",
        "  name: envoy.http.stateful_session.cookie",
        "  typed_config:",
        "    \"@type\": type.googleapis.com/envoy.extensions.http.stateful_session.cookie.v3.CookieBasedSessionState",
        "    cookie: { name: sess, path: \"/\", ttl: 120s }",
    ]
    .iter()
    .map(|l| format!("{pad}{l}\n"))
    .collect()
}

fn routes() -> String {
    let strict = cookie_state(22);
    format!(
        r#"            name: local
            virtual_hosts:
            - name: main
              domains: ["*"]
              routes:
              - match: {{ prefix: "/off" }}
                route: {{ cluster: c }}
                typed_per_filter_config:
                  envoy.filters.http.stateful_session:
                    "@type": type.googleapis.com/envoy.extensions.filters.http.stateful_session.v3.StatefulSessionPerRoute
                    disabled: true
              - match: {{ prefix: "/strict418" }}
                route: {{ cluster: c }}
                typed_per_filter_config:
                  envoy.filters.http.stateful_session:
                    "@type": type.googleapis.com/envoy.extensions.filters.http.stateful_session.v3.StatefulSessionPerRoute
                    stateful_session:
                      strict: true
                      status_on_strict_destination_not_found: 418
{strict}              - match: {{ prefix: "/strict" }}
                route: {{ cluster: c }}
                typed_per_filter_config:
                  envoy.filters.http.stateful_session:
                    "@type": type.googleapis.com/envoy.extensions.filters.http.stateful_session.v3.StatefulSessionPerRoute
                    stateful_session:
                      strict: true
{strict}              - match: {{ prefix: "/hdr" }}
                route: {{ cluster: c }}
                typed_per_filter_config:
                  envoy.filters.http.stateful_session:
                    "@type": type.googleapis.com/envoy.extensions.filters.http.stateful_session.v3.StatefulSessionPerRoute
                    stateful_session:
                      session_state:
                        name: envoy.http.stateful_session.header
                        typed_config:
                          "@type": type.googleapis.com/envoy.extensions.http.stateful_session.header.v3.HeaderBasedSessionState
                          name: x-session
              - match: {{ prefix: "/" }}
                route: {{ cluster: c }}
"#
    )
}

/// The bootstrap; `log`: where its access log (path, status, flags, details) goes.
fn boot(hosts: &[SocketAddr], log: &std::path::Path) -> String {
    let filter = format!(
        r#"          - name: envoy.filters.http.stateful_session
            typed_config:
              "@type": type.googleapis.com/envoy.extensions.filters.http.stateful_session.v3.StatefulSession
{}"#,
        cookie_state(14)
    );
    let access_log = format!(
        "          access_log:
          - name: details
            typed_config:
              \"@type\": type.googleapis.com/envoy.extensions.access_loggers.file.v3.FileAccessLog
              path: {}
              log_format: {{ text_format: \"%REQ(:PATH)% %RESPONSE_CODE% %RESPONSE_FLAGS% %RESPONSE_CODE_DETAILS%\\n\" }}
",
        log.display()
    );
    with_filters(
        &bootstrap(&routes(), &access_log, &cluster("c", hosts, "")),
        &filter,
    )
}

fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .expect("clock after 1970")
        .as_secs()
}

fn b64(v: &[u8]) -> String {
    base64::engine::general_purpose::STANDARD.encode(v)
}

/// A protobuf cookie naming `addr`, expiring at `expires`.
fn proto_cookie(addr: SocketAddr, expires: u64) -> String {
    let msg = SessionCookie {
        address: addr.to_string(),
        expires,
    };
    format!("sess=\"{}\"", b64(&prost::Message::encode_to_vec(&msg)))
}

/// The run's account, hosts by name: what answered, and what the response said of the
/// session.
fn run(
    proxy: &Courier,
    log: &std::path::Path,
    names: &HashMap<SocketAddr, String>,
    hosts: &[SocketAddr],
) -> Vec<String> {
    let mut c = Client::connect(proxy.listener);
    let mut sent = 0;
    let name_of = |a: &str| {
        a.parse::<SocketAddr>()
            .ok()
            .and_then(|a| names.get(&a).cloned())
            .unwrap_or_else(|| format!("unknown {a}"))
    };
    // What a response said: status, the host that answered, and the session it set (the
    // cookie's host and attributes; its expiry checked to be now + ttl).
    let mut say = |what: &str, path: &str, headers: &[(&str, &str)]| -> (String, Option<String>) {
        let r = c.get("h", path, headers);
        sent += 1;
        let answered = r.header("x-upstream").unwrap_or("-").to_string();
        let mut line = format!("{what}: {} by {answered}", r.status);
        if r.status != 200 {
            line.push_str(&format!(" body {:?}", r.body_str()));
        }
        let mut set = None;
        if let Some(sc) = r.header("set-cookie") {
            let (pair, attrs) = sc.split_once(';').unwrap_or((sc, ""));
            let value = pair
                .strip_prefix("sess=\"")
                .and_then(|v| v.strip_suffix('"'))
                .unwrap_or_else(|| panic!("quoted sess cookie: {sc}"));
            let raw = base64::engine::general_purpose::STANDARD
                .decode(value)
                .expect("base64 cookie");
            let msg: SessionCookie = prost::Message::decode(raw.as_slice()).expect("proto cookie");
            let expires_ok = msg.expires.abs_diff(now() + 120) <= 5;
            line.push_str(&format!(
                " set-cookie {} attrs{attrs} expires-ok {expires_ok}",
                name_of(&msg.address)
            ));
            set = Some(pair.to_string());
        }
        if let Some(h) = r.header("x-session") {
            let raw = base64::engine::general_purpose::STANDARD
                .decode(h)
                .expect("base64 header");
            line.push_str(&format!(
                " x-session {}",
                name_of(&String::from_utf8_lossy(&raw))
            ));
        }
        (line, set)
    };
    let mut out = Vec::new();
    // A first request: a cookie naming the host that answered.
    let (line, set) = say("first", "/", &[]);
    let cookie = set.expect("a first request gets a cookie");
    let first = line
        .split(" by ")
        .nth(1)
        .and_then(|s| s.split(' ').next())
        .map(str::to_string);
    out.push(rename(&line, first.as_deref().unwrap_or("?"), "FIRST"));
    // It sticks, with no new cookie.
    for i in 0..5 {
        let (line, _) = say(&format!("sticky {i}"), "/", &[("cookie", &cookie)]);
        out.push(rename(&line, first.as_deref().unwrap_or("?"), "FIRST"));
    }
    for (i, h) in hosts.iter().enumerate() {
        // The older plain `ip:port` form.
        let old = format!("sess={}", b64(h.to_string().as_bytes()));
        out.push(say(&format!("old form {i}"), "/", &[("cookie", &old)]).0);
        // Made here, with other cookies about.
        let made = format!("a=b; {}; c=d", proto_cookie(*h, now() + 100));
        out.push(say(&format!("proto {i}"), "/x", &[("cookie", &made)]).0);
        // Expired: any host, a new cookie.
        let expired = proto_cookie(*h, 1);
        let (line, _) = say(&format!("expired {i}"), "/", &[("cookie", &expired)]);
        out.push(consistent(&line));
        // A session with no expiry.
        out.push(
            say(
                &format!("no expiry {i}"),
                "/",
                &[("cookie", &proto_cookie(*h, 0))],
            )
            .0,
        );
    }
    // A host the cluster has not: another, and a new cookie; strict: refused.
    let gone = format!("sess={}", b64(b"127.0.0.1:1"));
    let (line, _) = say("unknown", "/", &[("cookie", &gone)]);
    out.push(consistent(&line));
    let garbage = format!("sess={}", b64(b"not an address"));
    let (line, _) = say("garbage", "/", &[("cookie", &garbage)]);
    out.push(consistent(&line));
    out.push(say("strict unknown", "/strict", &[("cookie", &gone)]).0);
    out.push(say("strict 418 unknown", "/strict418", &[("cookie", &gone)]).0);
    out.push(
        say(
            "strict known",
            "/strict",
            &[("cookie", &proto_cookie(hosts[1], 0))],
        )
        .0,
    );
    let (line, _) = say("strict none", "/strict", &[]);
    out.push(consistent(&line));
    // Header-based sessions.
    let (line, _) = say("header none", "/hdr", &[]);
    out.push(consistent(&line));
    for (i, h) in hosts.iter().enumerate() {
        let v = b64(h.to_string().as_bytes());
        out.push(say(&format!("header {i}"), "/hdr", &[("x-session", &v)]).0);
    }
    let (line, _) = say(
        "header unknown",
        "/hdr",
        &[("x-session", &b64(b"127.0.0.1:1"))],
    );
    out.push(consistent(&line));
    // Disabled on a route: round robin, whatever the cookie says, and no cookie.
    let pinned = proto_cookie(hosts[0], 0);
    let mut seen = BTreeSet::new();
    for i in 0..3 {
        let (line, set) = say(&format!("off {i}"), "/off", &[("cookie", &pinned)]);
        assert!(set.is_none(), "{line}");
        seen.insert(line.split(" by ").nth(1).map(str::to_string));
    }
    out.push(format!("off: {} hosts", seen.len()));
    // The strict refusals' flags and details.
    let n = sent;
    out.extend(
        log_lines(log, n)
            .into_iter()
            .filter(|l| l.starts_with("/strict") && !l.contains(" 200 ")),
    );
    out
}

/// A line whose host is the load balancer's pick: the pick replaced by `PICK` once it is
/// checked to be the host the session now names.
fn consistent(line: &str) -> String {
    let answered = line
        .split(" by ")
        .nth(1)
        .and_then(|s| s.split(' ').next())
        .unwrap_or("?")
        .to_string();
    let named = line
        .split(" set-cookie ")
        .nth(1)
        .or_else(|| line.split(" x-session ").nth(1))
        .and_then(|s| s.split(' ').next())
        .unwrap_or("none");
    assert_eq!(
        named, answered,
        "the session names the host that answered: {line}"
    );
    rename(line, &answered, "PICK")
}

/// `line` with host `name` (where it answered, and in the session set) called `to`.
fn rename(line: &str, name: &str, to: &str) -> String {
    line.replace(&format!(" by {name}"), &format!(" by {to}"))
        .replace(
            &format!(" set-cookie {name} "),
            &format!(" set-cookie {to} "),
        )
        .replace(&format!(" x-session {name}"), &format!(" x-session {to}"))
}

#[test]
fn sessions_stick_as_envoys() {
    let ups: Vec<Upstream> = ["a", "b", "c"].iter().map(|n| Upstream::start(n)).collect();
    let hosts: Vec<SocketAddr> = ups.iter().map(|u| u.addr).collect();
    let names: HashMap<SocketAddr, String> = ups.iter().map(|u| (u.addr, u.name.clone())).collect();
    let dir = tempfile::tempdir().expect("tempdir");
    let log = dir.path().join("courier.log");
    let courier = run(&Courier::start(&boot(&hosts, &log)), &log, &names, &hosts);
    let attrs = " attrs Max-Age=120; Path=/; HttpOnly expires-ok true";
    let want: Vec<String> = [
        format!("first: 200 by FIRST set-cookie FIRST{attrs}"),
        "sticky 0: 200 by FIRST".into(),
        "sticky 1: 200 by FIRST".into(),
        "sticky 2: 200 by FIRST".into(),
        "sticky 3: 200 by FIRST".into(),
        "sticky 4: 200 by FIRST".into(),
        "old form 0: 200 by a".into(),
        "proto 0: 200 by a".into(),
        format!("expired 0: 200 by PICK set-cookie PICK{attrs}"),
        "no expiry 0: 200 by a".into(),
        "old form 1: 200 by b".into(),
        "proto 1: 200 by b".into(),
        format!("expired 1: 200 by PICK set-cookie PICK{attrs}"),
        "no expiry 1: 200 by b".into(),
        "old form 2: 200 by c".into(),
        "proto 2: 200 by c".into(),
        format!("expired 2: 200 by PICK set-cookie PICK{attrs}"),
        "no expiry 2: 200 by c".into(),
        format!("unknown: 200 by PICK set-cookie PICK{attrs}"),
        format!("garbage: 200 by PICK set-cookie PICK{attrs}"),
        "strict unknown: 503 by - body \"no healthy upstream\"".into(),
        "strict 418 unknown: 418 by - body \"no healthy upstream\"".into(),
        "strict known: 200 by b".into(),
        format!("strict none: 200 by PICK set-cookie PICK{attrs}"),
        "header none: 200 by PICK x-session PICK".into(),
        "header 0: 200 by a".into(),
        "header 1: 200 by b".into(),
        "header 2: 200 by c".into(),
        "header unknown: 200 by PICK x-session PICK".into(),
        "off: 3 hosts".into(),
        "/strict 503 UH no_healthy_upstream".into(),
        "/strict418 418 UH no_healthy_upstream".into(),
    ]
    .into_iter()
    .collect();
    let log = dir.path().join("envoy.log");
    // Envoy writes its access log every 10 s unless told otherwise.
    let flush = ["--file-flush-interval-msec", "50"];
    if let Some(envoy) = Courier::start_envoy_with(&boot(&hosts, &log), &flush) {
        assert_eq!(
            run(&envoy, &log, &names, &hosts),
            courier,
            "envoy vs courier"
        );
    } else {
        eprintln!("envoy not on PATH: Courier's side only");
    }
    assert_eq!(courier, want);
}

#[test]
fn unbuilt_fields_are_refused_by_path() {
    let hosts = [refusing_addr()];
    let base = boot(&hosts, std::path::Path::new("/dev/null"));
    let f = "StatefulSession\n";
    assert_refused_by_path(
        &base,
        &[
            (
                f,
                "StatefulSession\n              stat_prefix: s\n",
                "stat_prefix",
            ),
            (
                "cookie: { name: sess, path: \"/\", ttl: 120s }",
                "cookie: { name: sess, attributes: [{ name: a, value: b }] }",
                "cookie.attributes",
            ),
        ],
    );
}
