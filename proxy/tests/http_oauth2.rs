//! The OAuth2 filter (`envoy.filters.http.oauth2`): the authorization-code flow run
//! through Courier and Envoy 1.40 side by side, both asking one token endpoint (a real
//! HTTP server started here). The random parts (flow id, CSRF token, PKCE verifier,
//! encrypted cookies, expiry) are compared by shape, and each proxy's flow must work
//! with what it minted; cookies minted by one are then sent to the other, which must
//! accept them (their HMAC and encryption are Envoy's), and cookies minted here with the
//! secret must be accepted or refused by both alike.

mod http_support;

use std::sync::{Arc, Mutex};

use base64::Engine as _;
use http_support::*;

/// The HMAC secret both proxies and this test know.
const HMAC: &str = "hmac-secret";

/// Answers the token endpoint by what the body asks.
fn token_server(seen: Arc<Mutex<Vec<String>>>) -> std::net::SocketAddr {
    http_service(move |p| {
        let body = String::from_utf8_lossy(&p.body).into_owned();
        let auth = p
            .headers
            .iter()
            .find(|(k, _)| k == "authorization")
            .map(|(_, v)| v.clone());
        if let Ok(mut s) = seen.lock() {
            s.push(format!("{} {} auth={auth:?} {body}", p.method, p.path));
        }
        let json = |status: u16, b: &'static str| Answer {
            status,
            headers: vec![("content-type".into(), "application/json".into())],
            body: bytes::Bytes::from_static(b.as_bytes()),
        };
        if body.contains("grant_type=refresh_token") {
            json(200, r#"{"access_token":"acc2","expires_in":600}"#)
        } else if body.contains("code=fail500") {
            json(500, r#"{"error":"server_error"}"#)
        } else if body.contains("code=garbage") {
            json(200, "this is not json")
        } else if body.contains("code=noexp") {
            json(200, r#"{"access_token":"acc"}"#)
        } else {
            json(
                200,
                r#"{"access_token":"acc","id_token":"idt","refresh_token":"ref","expires_in":3600,"token_type":"Bearer"}"#,
            )
        }
    })
}

fn filter(token_cluster: &str, extra: &str) -> String {
    format!(
        r#"          - name: envoy.filters.http.oauth2
            typed_config:
              "@type": type.googleapis.com/envoy.extensions.filters.http.oauth2.v3.OAuth2
              config:
                token_endpoint: {{ cluster: {token_cluster}, uri: "http://auth.internal/oauth/token", timeout: 1s }}
                authorization_endpoint: "https://auth.example/authorize?x=1"
                redirect_uri: "%REQ(x-forwarded-proto)%://%REQ(:authority)%/callback"
                redirect_path_matcher: {{ path: {{ exact: /callback }} }}
                signout_path: {{ path: {{ exact: /signout }} }}
                forward_bearer_token: true
                auth_scopes: ["openid", "email"]
                pass_through_matcher: [{{ name: x-pass, present_match: true }}]
                deny_redirect_matcher: [{{ name: x-no-redirect, present_match: true }}]
                credentials:
                  client_id: my-client
                  token_secret: {{ name: token }}
                  hmac_secret: {{ name: hmac }}
{extra}"#
    )
}

const ROUTES: &str = r#"            name: local
            virtual_hosts:
            - name: main
              domains: ["*"]
              routes:
              - match: { prefix: "/open" }
                route: { cluster: a }
                typed_per_filter_config:
                  envoy.filters.http.oauth2:
                    "@type": type.googleapis.com/envoy.config.route.v3.FilterConfig
                    disabled: true
              - match: { prefix: "/" }
                route: { cluster: a }
"#;

fn boot(a: &Upstream, token: std::net::SocketAddr, filter: &str) -> String {
    let clusters = format!(
        "{}{}",
        cluster("a", &[a.addr], ""),
        cluster("tok", &[token], "")
    );
    let silent = silent_upstream();
    with_filters(
        &bootstrap(
            ROUTES,
            "",
            &format!("{clusters}{}", cluster("silent", &[silent], "")),
        ),
        filter,
    )
    .replacen(
        "  clusters:\n",
        &format!(
            "  secrets:\n  - name: token\n    generic_secret: {{ secret: {{ inline_string: \"tok-secret\" }} }}\n  - name: hmac\n    generic_secret: {{ secret: {{ inline_string: \"{HMAC}\" }} }}\n  clusters:\n"
        ),
        1,
    )
}

/// Every `set-cookie` of `r`.
fn set_cookies(r: &Resp) -> Vec<String> {
    r.headers
        .iter()
        .filter(|(k, _)| k.eq_ignore_ascii_case("set-cookie"))
        .map(|(_, v)| v.clone())
        .collect()
}

/// `set-cookie` values with each value replaced by its shape (`<n chars>`) and flow ids
/// by `FLOW`.
fn cookie_shapes(r: &Resp, flow: &str) -> Vec<String> {
    set_cookies(r)
        .iter()
        .map(|c| {
            let (nv, attrs) = c.split_once(';').unwrap_or((c, ""));
            let (n, v) = nv.split_once('=').unwrap_or((nv, ""));
            let v = if v == "deleted" {
                v.to_string()
            } else {
                format!("<{}>", v.len().min(60) / 10)
            };
            format!("{}={v};{attrs}", n.replace(flow, "FLOW"))
        })
        .collect()
}

/// The value of cookie `name` set by `r`.
fn set_value(r: &Resp, name: &str) -> String {
    set_cookies(r)
        .iter()
        .find_map(|c| c.strip_prefix(&format!("{name}=")))
        .and_then(|v| v.split(';').next())
        .unwrap_or_default()
        .to_string()
}

/// The query parameter `name` of a Location.
fn param(location: &str, name: &str) -> String {
    location
        .split_once('?')
        .map_or("", |(_, q)| q)
        .split('&')
        .find_map(|p| p.strip_prefix(&format!("{name}=")))
        .unwrap_or_default()
        .to_string()
}

fn b64url(s: &str) -> Vec<u8> {
    base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(s.trim_end_matches('='))
        .expect("base64url")
}

/// The cookies an authenticated request sends, from a callback's answer.
fn session(cb: &Resp) -> String {
    [
        "OauthHMAC",
        "OauthExpires",
        "BearerToken",
        "IdToken",
        "RefreshToken",
    ]
    .iter()
    .map(|n| format!("{n}={}", set_value(cb, n)))
    .collect::<Vec<_>>()
    .join("; ")
}

/// Cookies minted here: the HMAC over `app.example`, `expires` and the tokens (plain).
fn minted(expires: u64, access: &str, refresh: &str) -> String {
    let payload = format!("app.example\n{expires}\n{access}\n\n{refresh}");
    let key = aws_lc_rs::hmac::Key::new(aws_lc_rs::hmac::HMAC_SHA256, HMAC.as_bytes());
    let mac = base64::engine::general_purpose::STANDARD
        .encode(aws_lc_rs::hmac::sign(&key, payload.as_bytes()));
    let mut c = format!("OauthHMAC={mac}; OauthExpires={expires}; BearerToken={access}");
    if !refresh.is_empty() {
        c.push_str(&format!("; RefreshToken={refresh}"));
    }
    c
}

fn now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("clock")
        .as_secs()
}

/// What a request became: status, location (its random parts dropped), what the upstream
/// saw (`authorization`, cookies sorted).
fn outcome(r: &Resp, a: &Upstream, before: usize) -> String {
    let reached = a.requests.load(std::sync::atomic::Ordering::SeqCst) - before;
    let seen = match (reached, a.last()) {
        (1, Some(s)) => {
            let mut cookies: Vec<&str> = s
                .header("cookie")
                .map(|c| c.split("; ").collect())
                .unwrap_or_default();
            cookies.sort();
            format!(
                " authorization={:?} cookies={cookies:?}",
                s.header("authorization")
            )
        }
        _ => String::new(),
    };
    let location = r
        .header("location")
        .map(|l| l.split("?client_id").next().unwrap_or(l).to_string());
    format!(
        "{} {location:?} {:?} upstream={reached}{seen}",
        r.status,
        r.body_str()
    )
}

/// One proxy's whole flow: the lines to compare, and the session cookies it minted.
fn flow(p: &Courier, a: &Upstream, seen: &Arc<Mutex<Vec<String>>>) -> (Vec<String>, String) {
    let mut out = Vec::new();
    let send = |path: &str, headers: &[(&str, &str)]| {
        let before = a.requests.load(std::sync::atomic::Ordering::SeqCst);
        let r = get(p.listener, "app.example", path, headers);
        let o = outcome(&r, a, before);
        (r, o)
    };
    // 1. Unauthenticated: to the authorization server.
    let (r, o) = send("/app?q=1", &[]);
    out.push(format!("start: {o}"));
    let location = r.header("location").unwrap_or_default().to_string();
    let state = String::from_utf8(b64url(&param(&location, "state"))).expect("utf-8");
    let st: serde_json::Value = serde_json::from_str(&state).expect("state is JSON");
    let flow_id = st["flow_id"].as_str().unwrap_or_default().to_string();
    assert_eq!(flow_id.len(), 16, "{state}");
    assert!(flow_id.bytes().all(|b| b.is_ascii_hexdigit()), "{state}");
    let csrf = st["csrf_token"].as_str().unwrap_or_default().to_string();
    assert!(csrf.starts_with(&format!("{flow_id}.")), "{state}");
    out.push(format!(
        "state url={} keys={:?}",
        st["url"],
        st.as_object()
            .map(|o| o.keys().cloned().collect::<Vec<_>>())
    ));
    let mut fixed = location.clone();
    for p in ["state", "code_challenge"] {
        fixed = fixed.replace(&param(&location, p), "X");
    }
    out.push(format!("location: {fixed}"));
    out.push(format!("cookies: {:?}", cookie_shapes(&r, &flow_id)));
    assert_eq!(set_value(&r, &format!("OauthNonce.{flow_id}")), csrf);
    let verifier = set_value(&r, &format!("CodeVerifier.{flow_id}"));
    let flow_cookies = format!("OauthNonce.{flow_id}={csrf}; CodeVerifier.{flow_id}={verifier}");
    let state_param = param(&location, "state");
    // 2. The callback: the code exchanged, the session's cookies set.
    let cb_path = format!("/callback?code=good&state={state_param}");
    let (cb, o) = send(&cb_path, &[("cookie", &flow_cookies)]);
    out.push(format!("callback: {o}"));
    out.push(format!(
        "callback cookies: {:?}",
        cookie_shapes(&cb, &flow_id)
    ));
    let posted = seen
        .lock()
        .expect("seen")
        .last()
        .cloned()
        .unwrap_or_default();
    // The verifier went to the token endpoint, and its S256 is the challenge.
    let sent_verifier = posted.rsplit("code_verifier=").next().unwrap_or_default();
    let challenge = base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(
        aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, sent_verifier.as_bytes()),
    );
    assert_eq!(challenge, param(&location, "code_challenge"));
    out.push(format!(
        "token request: {}",
        posted.replace(sent_verifier, "V")
    ));
    let cookies = session(&cb);
    // 3. Signed in: through, with the bearer token; the flow's cookies stay here.
    let with = format!("{cookies}; other=1");
    out.push(format!("signed in: {}", send("/x", &[("cookie", &with)]).1));
    out.push(format!(
        "client's authorization replaced: {}",
        send("/x", &[("cookie", &cookies), ("authorization", "Basic c")]).1
    ));
    // 4. The callback again once signed in: back to the original URL.
    let again = format!("{cookies}; {flow_cookies}");
    out.push(format!(
        "callback again: {}",
        send(&cb_path, &[("cookie", &again)]).1
    ));
    // 5. Forged and expired sessions.
    let forged = cookies.replacen("OauthHMAC=", "OauthHMAC=x", 1);
    let forged = forged
        .split("; RefreshToken")
        .next()
        .unwrap_or(&forged)
        .to_string();
    out.push(format!("forged: {}", send("/x", &[("cookie", &forged)]).1));
    let expired = minted(now() - 10, "acc", "");
    out.push(format!(
        "expired: {}",
        send("/x", &[("cookie", &expired)]).1
    ));
    let valid = minted(now() + 600, "mine", "");
    out.push(format!(
        "minted here: {}",
        send("/x", &[("cookie", &valid)]).1
    ));
    // 6. Expired with a refresh token: refreshed, the request goes on with the new token.
    let (r, o) = send("/x", &[("cookie", &minted(now() - 10, "acc", "ref"))]);
    out.push(format!("refreshed: {o}"));
    out.push(format!("refresh cookies: {:?}", cookie_shapes(&r, "-")));
    out.push(format!(
        "refresh request: {}",
        seen.lock()
            .expect("seen")
            .last()
            .cloned()
            .unwrap_or_default()
    ));
    // 7. Pass-through, per-route disabled, redirect denied.
    out.push(format!(
        "pass through: {}",
        send("/x", &[("x-pass", "1"), ("authorization", "Basic c")]).1
    ));
    out.push(format!("route disabled: {}", send("/open", &[]).1));
    out.push(format!(
        "redirect denied: {}",
        send("/x", &[("x-no-redirect", "1")]).1
    ));
    // 8. Bad callbacks.
    out.push(format!(
        "no code: {}",
        send(
            &format!("/callback?state={state_param}"),
            &[("cookie", &flow_cookies)]
        )
        .1
    ));
    out.push(format!("no nonce cookie: {}", send(&cb_path, &[]).1));
    let (r, o) = send(
        &format!("/callback?error=access_denied&state={state_param}"),
        &[("cookie", &flow_cookies)],
    );
    out.push(format!("error: {o} {:?}", cookie_shapes(&r, &flow_id)));
    for code in ["fail500", "garbage", "noexp"] {
        let (r, o) = send(
            &format!("/callback?code={code}&state={state_param}"),
            &[("cookie", &flow_cookies)],
        );
        out.push(format!(
            "token endpoint {code}: {o} {:?}",
            cookie_shapes(&r, &flow_id)
        ));
    }
    // 9. Signing out.
    let (r, o) = send("/signout", &[("cookie", &again)]);
    let mut deleted = cookie_shapes(&r, &flow_id);
    deleted.sort();
    out.push(format!("signout: {o} {deleted:?}"));
    for c in [
        "oauth_unauthorized_rq",
        "oauth_failure",
        "oauth_passthrough",
        "oauth_success",
        "oauth_refreshtoken_success",
        "oauth_refreshtoken_failure",
        "oauth_legacy_cbc_decrypt",
        "oauth_token_cookie_chunked",
    ] {
        out.push(format!("{c}={}", p.stat(&format!("http.ingress.{c}"))));
    }
    (out, cookies)
}

#[test]
fn authorization_code_flow_matches_envoy() {
    let seen = Arc::new(Mutex::new(Vec::new()));
    let token = token_server(seen.clone());
    let a = Upstream::start("a");
    let courier = Courier::start(&boot(&a, token, &filter("tok", "")));
    let (got, courier_cookies) = flow(&courier, &a, &seen);
    let s = |i: usize| got[i].as_str();
    assert_eq!(
        s(0),
        "start: 302 Some(\"https://auth.example/authorize\") \"\" upstream=0"
    );
    assert_eq!(s(1), "state url=\"http://app.example/app?q=1\" keys=Some([\"csrf_token\", \"flow_id\", \"url\"])");
    assert_eq!(s(2), "location: https://auth.example/authorize?client_id=my-client&code_challenge=X&code_challenge_method=S256&redirect_uri=http%3A%2F%2Fapp.example%2Fcallback&response_type=code&scope=openid%20email&state=X&x=1");
    assert_eq!(
        s(4),
        "callback: 302 Some(\"http://app.example/app?q=1\") \"\" upstream=0"
    );
    assert!(s(6).ends_with("grant_type=authorization_code&code=good&client_id=my-client&client_secret=tok-secret&redirect_uri=http%3A%2F%2Fapp.example%2Fcallback&code_verifier=V"), "{}", s(6));
    assert_eq!(s(7), "signed in: 200 None \"a GET /x\" upstream=1 authorization=Some(\"Bearer acc\") cookies=[\"BearerToken=acc\", \"IdToken=idt\", \"other=1\"]");
    let Some(envoy) = Courier::start_envoy(&boot(&a, token, &filter("tok", ""))) else {
        eprintln!("envoy not on PATH: Courier's side only");
        return;
    };
    let (want, envoy_cookies) = flow(&envoy, &a, &seen);
    assert_eq!(got, want, "courier vs envoy");
    // Each accepts the other's session.
    for (p, cookies) in [(&courier, &envoy_cookies), (&envoy, &courier_cookies)] {
        let before = a.requests.load(std::sync::atomic::Ordering::SeqCst);
        let r = get(p.listener, "app.example", "/cross", &[("cookie", cookies)]);
        assert_eq!(
            outcome(&r, &a, before),
            "200 None \"a GET /cross\" upstream=1 authorization=Some(\"Bearer acc\") cookies=[\"BearerToken=acc\", \"IdToken=idt\"]"
        );
    }
}

#[test]
fn token_endpoint_absent_or_silent_matches_envoy() {
    let seen = Arc::new(Mutex::new(Vec::new()));
    let token = token_server(seen.clone());
    let run = |p: &Courier, a: &Upstream| {
        let r = get(p.listener, "app.example", "/app", &[]);
        let location = r.header("location").unwrap_or_default().to_string();
        let state = param(&location, "state");
        let st: serde_json::Value = serde_json::from_slice(&b64url(&state)).expect("state is JSON");
        let flow_id = st["flow_id"].as_str().unwrap_or_default().to_string();
        let cookies = format!(
            "OauthNonce.{flow_id}={}; CodeVerifier.{flow_id}={}",
            set_value(&r, &format!("OauthNonce.{flow_id}")),
            set_value(&r, &format!("CodeVerifier.{flow_id}"))
        );
        let before = a.requests.load(std::sync::atomic::Ordering::SeqCst);
        let cb = get(
            p.listener,
            "app.example",
            &format!("/callback?code=good&state={state}"),
            &[("cookie", &cookies)],
        );
        let mut out = vec![format!(
            "{} {:?}",
            outcome(&cb, a, before),
            cookie_shapes(&cb, &flow_id)
        )];
        // The worker keeps serving.
        let before = a.requests.load(std::sync::atomic::Ordering::SeqCst);
        out.push(outcome(
            &get(p.listener, "app.example", "/open", &[]),
            a,
            before,
        ));
        out.push(format!(
            "oauth_failure={}",
            p.stat("http.ingress.oauth_failure")
        ));
        out
    };
    for cluster in ["missing", "silent"] {
        let a = Upstream::start("a");
        let got = run(&Courier::start(&boot(&a, token, &filter(cluster, ""))), &a);
        assert!(
            got[0].starts_with("401 None \"OAuth flow failed.\" upstream=0"),
            "{got:?}"
        );
        assert_eq!(got[2], "oauth_failure=1");
        if let Some(envoy) = Courier::start_envoy(&boot(&a, token, &filter(cluster, ""))) {
            assert_eq!(run(&envoy, &a), got, "{cluster}: courier vs envoy");
        }
    }
}

#[test]
fn fields_not_built_are_refused_by_path() {
    let a = Upstream::start("a");
    let base = boot(&a, silent_upstream(), &filter("tok", ""));
    assert_refused_by_path(
        &base,
        &[
            ("                forward_bearer_token: true\n", "                forward_bearer_token: true\n                allow_failed_matcher: [{ name: x, present_match: true }]\n", "allow_failed_matcher"),
            ("                forward_bearer_token: true\n", "                forward_bearer_token: true\n                end_session_endpoint: https://auth.example/logout\n", "end_session_endpoint"),
            ("                forward_bearer_token: true\n", "                forward_bearer_token: true\n                auth_type: TLS_CLIENT_AUTH\n", "auth_type"),
            ("                forward_bearer_token: true\n", "                forward_bearer_token: true\n                retry_policy: {}\n", "retry_policy"),
            ("%REQ(x-forwarded-proto)%", "%PROTOCOL%", "redirect_uri"),
            ("hmac_secret: { name: hmac }", "hmac_secret: { name: nope }", "hmac_secret.name"),
        ],
    );
}
