//! The JWT authentication filter (`envoy.filters.http.jwt_authn`): three providers with
//! local JWKS (RS256, ES256, HS256), each token location, `forward`,
//! `forward_payload_header`, `claim_to_headers`, rules with every requirement type,
//! per-route `disabled` and `requirement_name`, the CORS preflight bypass, the refusals
//! and the counters. Tokens are signed here with keys made for the run. Each case runs
//! through Courier and, when `envoy` is on PATH, through Envoy 1.40: the two transcripts
//! must be equal, and agree with what is written here.

mod http_support;

use std::sync::atomic::Ordering;

use aws_lc_rs::rand::SystemRandom;
use aws_lc_rs::signature::{self, EcdsaKeyPair, KeyPair, RsaKeyPair};
use aws_lc_rs::{hmac, rsa::KeySize};
use base64::Engine;
use http_support::*;

fn b64(b: &[u8]) -> String {
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(b)
}

/// The run's keys.
struct Keys {
    rsa: RsaKeyPair,
    ec: EcdsaKeyPair,
    secret: Vec<u8>,
}

impl Keys {
    fn new() -> Keys {
        Keys {
            rsa: RsaKeyPair::generate(KeySize::Rsa2048).expect("rsa key"),
            ec: EcdsaKeyPair::generate(&signature::ECDSA_P256_SHA256_FIXED_SIGNING).expect("ec"),
            secret: b"a shared secret of thirty-two by".to_vec(),
        }
    }

    fn rsa_jwks(&self) -> String {
        let (n, e) = rsa_components(self.rsa.public_key().as_ref());
        format!(
            r#"{{"keys":[{{"kty":"RSA","kid":"r1","alg":"RS256","n":"{}","e":"{}"}}]}}"#,
            b64(n),
            b64(e)
        )
    }

    fn ec_jwks(&self) -> String {
        let pt = self.ec.public_key().as_ref();
        format!(
            r#"{{"keys":[{{"kty":"EC","crv":"P-256","x":"{}","y":"{}"}}]}}"#,
            b64(&pt[1..33]),
            b64(&pt[33..])
        )
    }

    fn oct_jwks(&self) -> String {
        format!(
            r#"{{"keys":[{{"kty":"oct","alg":"HS256","k":"{}"}}]}}"#,
            b64(&self.secret)
        )
    }

    /// A token signed with `alg` (`RS256`, `ES256`, `HS256`) carrying `payload`.
    fn token(&self, alg: &str, header: &str, payload: &str) -> String {
        let signed = format!("{}.{}", b64(header.as_bytes()), b64(payload.as_bytes()));
        let rng = SystemRandom::new();
        let sig = match alg {
            "RS256" => {
                let mut sig = vec![0; self.rsa.public_modulus_len()];
                self.rsa
                    .sign(
                        &signature::RSA_PKCS1_SHA256,
                        &rng,
                        signed.as_bytes(),
                        &mut sig,
                    )
                    .expect("sign");
                sig
            }
            "ES256" => self
                .ec
                .sign(&rng, signed.as_bytes())
                .expect("sign")
                .as_ref()
                .to_vec(),
            _ => hmac::sign(
                &hmac::Key::new(hmac::HMAC_SHA256, &self.secret),
                signed.as_bytes(),
            )
            .as_ref()
            .to_vec(),
        };
        format!("{signed}.{}", b64(&sig))
    }
}

/// `n` and `e` of a PKCS#1 `RSAPublicKey` (`SEQUENCE { INTEGER, INTEGER }`), without
/// their sign bytes.
fn rsa_components(der: &[u8]) -> (&[u8], &[u8]) {
    // A DER element at `at`: its content's range.
    fn element(der: &[u8], at: usize) -> (usize, usize) {
        let first = der[at + 1] as usize;
        let (len, start) = if first < 0x80 {
            (first, at + 2)
        } else {
            let n = first & 0x7f;
            let len = der[at + 2..at + 2 + n]
                .iter()
                .fold(0, |l, b| l << 8 | *b as usize);
            (len, at + 2 + n)
        };
        (start, start + len)
    }
    let (seq, _) = element(der, 0);
    let (n0, n1) = element(der, seq);
    let (e0, e1) = element(der, n1);
    let strip = |b: &'_ [u8]| -> usize { b.iter().take_while(|x| **x == 0).count() };
    (
        &der[n0 + strip(&der[n0..n1])..n1],
        &der[e0 + strip(&der[e0..e1])..e1],
    )
}

fn now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("clock")
        .as_secs()
}

/// The filter, its providers' JWKS inline (indented for the YAML below).
fn filters(keys: &Keys) -> String {
    format!(
        r#"          - name: envoy.filters.http.jwt_authn
            typed_config:
              "@type": type.googleapis.com/envoy.extensions.filters.http.jwt_authn.v3.JwtAuthentication
              bypass_cors_preflight: true
              providers:
                p1:
                  issuer: https://issuer.one
                  audiences: [api, "https://svc.example/"]
                  local_jwks: {{ inline_string: '{}' }}
                  forward_payload_header: x-jwt-payload
                  claim_to_headers:
                  - {{ header_name: x-sub, claim_name: sub }}
                  - {{ header_name: x-n, claim_name: "num" }}
                  - {{ header_name: x-nested, claim_name: o.k }}
                p2:
                  issuer: issuer.two
                  from_headers: [{{ name: x-token, value_prefix: "Token " }}]
                  from_params: [tok]
                  forward: true
                  forward_payload_header: x-two-payload
                  pad_forward_payload_header: true
                  local_jwks: {{ inline_string: '{}' }}
                p3:
                  issuer: issuer.three
                  from_cookies: [jwt]
                  clock_skew_seconds: 10
                  local_jwks: {{ inline_string: '{}' }}
              requirement_map:
                need3: {{ provider_name: p3 }}
                need1: {{ provider_name: p1 }}
              rules:
              - match: {{ prefix: /optional }}
                requires: {{ allow_missing: {{}} }}
              - match: {{ prefix: /any }}
                requires: {{ requires_any: {{ requirements: [{{ provider_name: p2 }}, {{ provider_name: p3 }}] }} }}
              - match: {{ prefix: /all }}
                requires: {{ requires_all: {{ requirements: [{{ provider_name: p1 }}, {{ provider_name: p3 }}] }} }}
              - match: {{ prefix: /aud }}
                requires: {{ provider_and_audiences: {{ provider_name: p1, audiences: [other] }} }}
              - match: {{ prefix: /failed }}
                requires: {{ requires_any: {{ requirements: [{{ provider_name: p1 }}, {{ allow_missing_or_failed: {{}} }}] }} }}
              - match: {{ prefix: /open }}
              - match: {{ prefix: /two }}
                requires: {{ provider_name: p2 }}
              - match: {{ prefix: /three }}
                requirement_name: need3
              - match: {{ prefix: /post, headers: [{{ name: ":method", string_match: {{ exact: POST }} }}] }}
                requires: {{ provider_name: p3 }}
              - match: {{ prefix: / }}
                requires: {{ provider_name: p1 }}
"#,
        keys.rsa_jwks(),
        keys.ec_jwks(),
        keys.oct_jwks()
    )
}

const ROUTES: &str = r#"            name: local
            virtual_hosts:
            - name: main
              domains: ["*"]
              routes:
              - match: { prefix: "/route-disabled" }
                route: { cluster: a }
                typed_per_filter_config:
                  envoy.filters.http.jwt_authn:
                    "@type": type.googleapis.com/envoy.extensions.filters.http.jwt_authn.v3.PerRouteConfig
                    disabled: true
              - match: { prefix: "/route-named" }
                route: { cluster: a }
                typed_per_filter_config:
                  envoy.filters.http.jwt_authn:
                    "@type": type.googleapis.com/envoy.extensions.filters.http.jwt_authn.v3.PerRouteConfig
                    requirement_name: need3
              - match: { prefix: "/route-wrong" }
                route: { cluster: a }
                typed_per_filter_config:
                  envoy.filters.http.jwt_authn:
                    "@type": type.googleapis.com/envoy.extensions.filters.http.jwt_authn.v3.PerRouteConfig
                    requirement_name: nope
              - match: { prefix: "/" }
                route: { cluster: a }
"#;

fn boot(keys: &Keys, a: &Upstream) -> String {
    with_filters(
        &bootstrap(ROUTES, "", &cluster("a", &[a.addr], "")),
        &filters(keys),
    )
}

/// The upstream headers a case shows.
const SEEN: &[&str] = &[
    "authorization",
    "x-jwt-payload",
    "x-sub",
    "x-n",
    "x-nested",
    "x-token",
    "x-two-payload",
    "cookie",
];

/// One request: label, method, path, headers.
type Case = (String, &'static str, String, Vec<(String, String)>);

/// Each request on a fresh connection: its answer and what the upstream saw of it.
fn run(proxy: &Courier, a: &Upstream, cases: &[Case]) -> Vec<String> {
    let mut out: Vec<String> = cases
        .iter()
        .map(|(label, method, path, headers)| {
            let before = a.requests.load(Ordering::SeqCst);
            let h: Vec<(&str, &str)> = headers
                .iter()
                .map(|(k, v)| (k.as_str(), v.as_str()))
                .collect();
            let r = Client::connect(proxy.listener).request(method, "example.com", path, &h, b"");
            let reached = a.requests.load(Ordering::SeqCst) - before;
            let mut line = format!(
                "{label}: {} {:?} www-authenticate={:?} upstream={reached}",
                r.status,
                r.body_str(),
                r.header("www-authenticate")
            );
            if reached == 1 {
                let seen = a.last().expect("seen");
                line.push_str(&format!(" path={}", seen.path));
                for name in SEEN {
                    let all: Vec<&str> = seen
                        .headers
                        .iter()
                        .filter(|(k, _)| k.eq_ignore_ascii_case(name))
                        .map(|(_, v)| v.as_str())
                        .collect();
                    if !all.is_empty() {
                        line.push_str(&format!(" {name}={}", all.join("|")));
                    }
                }
            }
            line
        })
        .collect();
    for n in [
        "allowed",
        "denied",
        "cors_preflight_bypassed",
        "jwt_cache_hit",
        "jwt_cache_miss",
        "jwks_fetch_success",
        "jwks_fetch_failed",
    ] {
        out.push(format!(
            "{n}={}",
            proxy.stat(&format!("http.ingress.jwt_authn.{n}"))
        ));
    }
    out
}

fn cases(keys: &Keys) -> Vec<Case> {
    let t = now();
    let exp = t + 3600;
    let p1 = |claims: &str| {
        keys.token(
            "RS256",
            r#"{"alg":"RS256","kid":"r1","typ":"JWT"}"#,
            &format!(r#"{{"iss":"https://issuer.one","aud":"api",{claims}}}"#),
        )
    };
    let good1 = p1(&format!(
        r#""sub":"alice","num":42,"o":{{"k":"v"}},"exp":{exp}"#
    ));
    let good2 = keys.token(
        "ES256",
        r#"{"alg":"ES256"}"#,
        &format!(r#"{{"iss":"issuer.two","sub":"bob","exp":{exp}}}"#),
    );
    let good3 = keys.token(
        "HS256",
        r#"{"alg":"HS256"}"#,
        &format!(r#"{{"iss":"issuer.three","exp":{}}}"#, t - 5),
    );
    let expired1 = p1(&format!(r#""exp":{}"#, t - 120));
    let early1 = p1(&format!(r#""nbf":{},"exp":{exp}"#, t + 600));
    let wrong_iss = keys.token(
        "RS256",
        r#"{"alg":"RS256","kid":"r1"}"#,
        &format!(r#"{{"iss":"https://evil","aud":"api","exp":{exp}}}"#),
    );
    let wrong_aud = keys.token(
        "RS256",
        r#"{"alg":"RS256","kid":"r1"}"#,
        &format!(r#"{{"iss":"https://issuer.one","aud":["nope","x"],"exp":{exp}}}"#),
    );
    let aud_url = keys.token(
        "RS256",
        r#"{"alg":"RS256","kid":"r1"}"#,
        &format!(r#"{{"iss":"https://issuer.one","aud":"http://svc.example","exp":{exp}}}"#),
    );
    // A signature character changed (not the last one, whose low bits are padding).
    let mut bad_sig = good1.clone().into_bytes();
    let at = bad_sig.len() - 10;
    bad_sig[at] = if bad_sig[at] == b'A' { b'B' } else { b'A' };
    let bad_sig = String::from_utf8(bad_sig).expect("ascii");
    let other_kid = keys.token(
        "RS256",
        r#"{"alg":"RS256","kid":"r2"}"#,
        &format!(r#"{{"iss":"https://issuer.one","aud":"api","exp":{exp}}}"#),
    );
    let none_alg = format!("{}.{}.c2ln", b64(br#"{"alg":"none"}"#), b64(b"{}"));
    let bearer = |tok: &str| ("authorization".to_string(), format!("Bearer {tok}"));
    let h = |k: &str, v: &str| (k.to_string(), v.to_string());
    let case = |label: &str, method: &'static str, path: &str, headers: Vec<(String, String)>| {
        (label.to_string(), method, path.to_string(), headers)
    };
    vec![
        case(
            "valid, bearer",
            "GET",
            "/x",
            vec![bearer(&good1), h("x-sub", "spoofed")],
        ),
        case("expired", "GET", "/x", vec![bearer(&expired1)]),
        case("not yet valid", "GET", "/x", vec![bearer(&early1)]),
        case("wrong issuer", "GET", "/x", vec![bearer(&wrong_iss)]),
        case("wrong audience", "GET", "/x", vec![bearer(&wrong_aud)]),
        case("audience as a URL", "GET", "/x", vec![bearer(&aud_url)]),
        case("bad signature", "GET", "/x?q=1", vec![bearer(&bad_sig)]),
        case("unknown kid", "GET", "/x", vec![bearer(&other_kid)]),
        case("alg none", "GET", "/x", vec![bearer(&none_alg)]),
        case("garbage", "GET", "/x", vec![bearer("abc")]),
        case("bad base64", "GET", "/x", vec![bearer("a!b.c.d")]),
        case("missing", "GET", "/x?q=1", vec![]),
        case("missing, allow_missing", "GET", "/optional", vec![]),
        case(
            "bad, allow_missing",
            "GET",
            "/optional",
            vec![bearer(&bad_sig)],
        ),
        case(
            "good, allow_missing",
            "GET",
            "/optional",
            vec![bearer(&good1)],
        ),
        case(
            "access_token parameter",
            "GET",
            &format!("/x?z=1&access_token={good1}&a=2"),
            vec![],
        ),
        case(
            "two tokens, one expired",
            "GET",
            &format!("/x?access_token={expired1}"),
            vec![bearer(&good1)],
        ),
        case(
            "from_headers prefix",
            "GET",
            "/two",
            vec![h("x-token", &format!("Token {good2}"))],
        ),
        case(
            "from_headers without prefix",
            "GET",
            "/two",
            vec![h("x-token", &good2)],
        ),
        case(
            "from_params",
            "GET",
            &format!("/two?tok={good2}&b=1"),
            vec![],
        ),
        case(
            "from_cookies, skew",
            "GET",
            "/three",
            vec![h("cookie", &format!("a=1; jwt={good3}"))],
        ),
        case(
            "requires_any, second",
            "GET",
            "/any",
            vec![h("cookie", &format!("jwt={good3}"))],
        ),
        case("requires_any, none", "GET", "/any", vec![]),
        case(
            "requires_any, first bad",
            "GET",
            "/any",
            vec![h("x-token", &format!("Token {bad_sig}"))],
        ),
        case("requires_all, one", "GET", "/all", vec![bearer(&good1)]),
        case(
            "requires_all, both",
            "GET",
            "/all",
            vec![bearer(&good1), h("cookie", &format!("jwt={good3}"))],
        ),
        case(
            "provider_and_audiences",
            "GET",
            "/aud",
            vec![bearer(&good1)],
        ),
        case(
            "allow_missing_or_failed",
            "GET",
            "/failed",
            vec![bearer(&bad_sig)],
        ),
        case("no requirement", "GET", "/open", vec![]),
        case("rule on a header", "POST", "/post", vec![bearer(&good1)]),
        case("per-route disabled", "GET", "/route-disabled", vec![]),
        case(
            "per-route requirement_name",
            "GET",
            "/route-named",
            vec![bearer(&good1)],
        ),
        case(
            "per-route requirement_name, good",
            "GET",
            "/route-named",
            vec![h("cookie", &format!("jwt={good3}"))],
        ),
        case(
            "per-route unknown requirement",
            "GET",
            "/route-wrong",
            vec![],
        ),
        case(
            "CORS preflight",
            "OPTIONS",
            "/x",
            vec![
                h("origin", "https://a.example"),
                h("access-control-request-method", "GET"),
            ],
        ),
        case(
            "OPTIONS, not a preflight",
            "OPTIONS",
            "/x",
            vec![h("origin", "https://a.example")],
        ),
    ]
}

#[test]
fn jwt_authn_matches_envoy() {
    let keys = Keys::new();
    let cases = cases(&keys);
    let a = Upstream::start("a");
    let got = run(&Courier::start(&boot(&keys, &a)), &a, &cases);
    let a = Upstream::start("a");
    match Courier::start_envoy(&boot(&keys, &a)) {
        Some(envoy) => {
            let want = run(&envoy, &a, &cases);
            for (e, c) in want.iter().zip(&got) {
                if e != c {
                    eprintln!("envoy:   {e}\ncourier: {c}");
                }
            }
            assert_eq!(want, got, "envoy vs courier");
        }
        None => eprintln!("envoy not on PATH: skipping the jwt_authn differential"),
    }
    let line = |label: &str| {
        got.iter()
            .find(|l| l.starts_with(&format!("{label}: ")))
            .cloned()
            .unwrap_or_default()
    };
    let realm = |path: &str, invalid: bool| {
        let error = if invalid {
            ", error=\\\"invalid_token\\\""
        } else {
            ""
        };
        format!("www-authenticate=Some(\"Bearer realm=\\\"http://example.com{path}\\\"{error}\")")
    };
    assert!(
        line("valid, bearer").contains(" x-sub=alice x-n=42 x-nested=v"),
        "{}",
        line("valid, bearer")
    );
    assert!(!line("valid, bearer").contains("authorization="));
    assert!(line("expired").starts_with("expired: 401 \"Jwt is expired\""));
    assert!(
        line("expired").contains(&realm("/x", true)),
        "{}",
        line("expired")
    );
    assert!(
        line("missing").contains(&realm("/x?q=1", false)),
        "{}",
        line("missing")
    );
    assert!(line("wrong audience").contains(": 403 \"Audiences in Jwt are not allowed\""));
    assert!(line("bad signature").contains("401 \"Jwt verification fails\""));
    assert!(line("access_token parameter").contains("path=/x?a=2&z=1 "));
    assert!(line("from_headers prefix").contains(" x-token=Token "));
    assert!(line("from_headers prefix").contains("=="), "padded payload");
    assert!(line("missing, allow_missing").contains(": 200 "));
    assert!(line("allow_missing_or_failed").contains(": 200 "));
    assert!(line("requires_all, both").contains(": 200 "));
    assert!(line("per-route disabled").contains(": 200 "));
    assert!(line("per-route unknown requirement").contains("403 \"Failed JWT authentication: Wrong requirement_name: nope. It should be one of [need1,need3]\""));
    assert!(line("CORS preflight").contains(": 200 "));
    let counters: Vec<&str> = got[got.len() - 7..].iter().map(String::as_str).collect();
    assert_eq!(
        counters,
        [
            "allowed=15",
            "denied=21",
            "cors_preflight_bypassed=1",
            "jwt_cache_hit=0",
            "jwt_cache_miss=24",
            "jwks_fetch_success=0",
            "jwks_fetch_failed=0"
        ]
    );
}

/// What Courier does not act on is refused by its path; the base config validates.
#[test]
fn jwt_authn_refuses_what_it_does_not_build() {
    let keys = Keys::new();
    let a = Upstream::start("a");
    let base = boot(&keys, &a);
    let p2 = "                  forward: true\n";
    let refused = |field: &str| format!("{p2}                  {field}\n");
    let top = "              bypass_cors_preflight: true\n";
    let at_top = |field: &str| format!("{top}              {field}\n");
    let cases: Vec<(&str, String, &str)> = vec![
        (
            p2,
            refused("payload_in_metadata: m"),
            "providers[p2].payload_in_metadata",
        ),
        (
            p2,
            refused("header_in_metadata: m"),
            "providers[p2].header_in_metadata",
        ),
        (
            p2,
            refused("normalize_payload_in_metadata: {}"),
            "providers[p2].normalize_payload_in_metadata",
        ),
        (
            p2,
            refused("jwt_cache_config: {}"),
            "providers[p2].jwt_cache_config",
        ),
        (
            p2,
            refused("max_lifetime: 10s"),
            "providers[p2].max_lifetime",
        ),
        (
            p2,
            refused("require_expiration: true"),
            "providers[p2].require_expiration",
        ),
        (
            p2,
            refused("subjects: { prefix: a }"),
            "providers[p2].subjects",
        ),
        (top, at_top("stat_prefix: s"), ".stat_prefix"),
        (
            top,
            at_top("filter_state_rules: { name: f }"),
            ".filter_state_rules",
        ),
    ];
    let cases: Vec<(&str, &str, &str)> =
        cases.iter().map(|(f, t, w)| (*f, t.as_str(), *w)).collect();
    assert_refused_by_path(&base, &cases);
    // `remote_jwks`' invalid parts.
    let local = base
        .lines()
        .find(|l| l.contains("local_jwks") && l.contains("\"oct\""))
        .expect("p3's jwks")
        .to_string();
    let remote = |extra: &str| {
        format!("                  remote_jwks: {{ http_uri: {{ uri: \"http://a/jwks\", cluster: a, timeout: 1s }}{extra} }}")
    };
    let with_retry =
        remote(", retry_policy: { retry_back_off: { base_interval: 2s, max_interval: 1s } }");
    assert_refused_by_path(
        &base,
        &[
            (
                local.as_str(),
                with_retry.as_str(),
                "providers[p3].remote_jwks.retry_policy.retry_back_off: max_interval must be greater than or equal to the base_interval",
            ),
        ],
    );
    // Without them, it is taken; a `cache_duration` under 1ms is not, as Envoy's.
    let taken = base.replacen(
        &local,
        &remote(", async_fetch: { fast_listener: true, failed_refetch_duration: 2s }"),
        1,
    );
    let (code, stderr) = validate(&taken);
    assert_eq!(code, Some(0), "{stderr}");
    let zero = base.replacen(&local, &remote(", cache_duration: 0s"), 1);
    let (code, stderr) = validate(&zero);
    assert_eq!(code, Some(1), "{stderr}");
    assert!(
        stderr.contains("providers[p3].remote_jwks.cache_duration"),
        "{stderr}"
    );
    for (bootstrap, want) in [(&taken, Some(0)), (&zero, Some(1))] {
        if let Some((code, out)) = envoy_validate(bootstrap) {
            assert_eq!(code, want, "{out}");
        }
    }
}

/// The remote JWKS test's providers: one per way a key set's server answers, each
/// required under its own path prefix (`/<name>`).
const REMOTE: &[(&str, &str, &str)] = &[
    // name, cluster and path, extra
    ("good", "jwks /keys", "cache_duration: 300s"),
    ("both", "jwks /keys2", ""),
    ("e500", "jwks /e500", ""),
    ("garbage", "jwks /garbage", ""),
    ("empty", "jwks /empty", ""),
    ("nokeys", "jwks /nokeys", ""),
    ("silent", "jwks_silent /keys", ""),
    ("nocluster", "missing /keys", ""),
    (
        "flaky",
        "jwks /flaky",
        "retry_policy: { num_retries: 3, retry_back_off: { base_interval: 0.01s } }",
    ),
    (
        "always500",
        "jwks /e500",
        "retry_policy: { num_retries: 2, retry_back_off: { base_interval: 0.01s, max_interval: 0.02s } }",
    ),
    (
        "rgarbage",
        "jwks /garbage",
        "retry_policy: { retry_back_off: { base_interval: 0.01s } }",
    ),
];

fn remote_boot(
    keys: &Keys,
    a: &Upstream,
    jwks: std::net::SocketAddr,
    silent: std::net::SocketAddr,
) -> String {
    // `/both` needs a local provider's token (not forwarded) and a remote one's: the
    // request the check runs again after the fetch is the one that came.
    let providers = format!(
        "                loc:\n                  issuer: remote.loc\n                  from_headers: [{{ name: x-local }}]\n                  local_jwks: {{ inline_string: '{}' }}\n",
        keys.rsa_jwks()
    );
    let rules = "              - match: { prefix: /both }\n                requires: { requires_all: { requirements: [{ provider_name: loc }, { provider_name: both }] } }\n".to_string();
    let clusters = cluster("a", &[a.addr], "")
        + &cluster("jwks", &[jwks], "")
        + &cluster("jwks_silent", &[silent], "");
    with_remote_providers(REMOTE, providers, rules, &clusters)
}

/// The bootstrap with a JWT filter whose providers are `providers` and then one remote
/// provider per row of `table` (name, `<cluster> <path>` of its key set, extra
/// `remote_jwks` fields), each required under `/<name>` after `rules`.
fn with_remote_providers(
    table: &[(&str, &str, &str)],
    mut providers: String,
    mut rules: String,
    clusters: &str,
) -> String {
    for (name, target, extra) in table {
        let (cluster, path) = target.split_once(' ').expect("target");
        let extra = match *extra {
            "" => String::new(),
            e => format!(", {e}"),
        };
        providers.push_str(&format!(
            "                {name}:\n                  issuer: remote.{name}\n                  remote_jwks: {{ http_uri: {{ uri: \"http://jwks.example{path}\", cluster: {cluster}, timeout: 1s }}{extra} }}\n"
        ));
        rules.push_str(&format!(
            "              - match: {{ prefix: /{name} }}\n                requires: {{ provider_name: {name} }}\n"
        ));
    }
    let filter = format!(
        r#"          - name: envoy.filters.http.jwt_authn
            typed_config:
              "@type": type.googleapis.com/envoy.extensions.filters.http.jwt_authn.v3.JwtAuthentication
              providers:
{providers}              rules:
{rules}"#
    );
    with_filters(&bootstrap(ROUTES, "", clusters), &filter)
}

/// A JWKS server: what it answers on each path, and the requests it got (`<host>
/// <path>`).
fn jwks_server(
    keys: &Keys,
) -> (
    std::net::SocketAddr,
    std::sync::Arc<std::sync::Mutex<Vec<String>>>,
) {
    let log = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
    let seen = log.clone();
    let jwks = keys.rsa_jwks();
    // `/flaky` fails twice, then serves the key set.
    let flaky = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let addr = http_service(move |posted| {
        let host = posted
            .headers
            .iter()
            .find(|(k, _)| k == "host")
            .map_or("", |(_, v)| v.as_str());
        seen.lock()
            .expect("log")
            .push(format!("{} {host} {}", posted.method, posted.path));
        let (status, body) = match posted.path.as_str() {
            "/keys" | "/keys2" => (200, jwks.clone()),
            "/flaky" if flaky.fetch_add(1, Ordering::SeqCst) < 2 => (503, String::new()),
            "/flaky" => (200, jwks.clone()),
            "/e500" => (500, jwks.clone()),
            "/garbage" => (200, "not a key set".to_string()),
            "/nokeys" => (200, r#"{"keys":[]}"#.to_string()),
            _ => (200, String::new()),
        };
        Answer {
            status,
            headers: vec![("content-type".into(), "application/json".into())],
            body: body.into(),
        }
    });
    (addr, log)
}

/// Each request on a fresh connection: its answer, whether it reached the upstream, and
/// the key set fetches it made; then the filter's counters.
fn run_remote(
    proxy: &Courier,
    a: &Upstream,
    log: &std::sync::Mutex<Vec<String>>,
    cases: &[Case],
) -> Vec<String> {
    let mut out: Vec<String> = cases
        .iter()
        .map(|(label, method, path, headers)| {
            let before = a.requests.load(Ordering::SeqCst);
            let fetched_before = log.lock().expect("log").len();
            let h: Vec<(&str, &str)> = headers
                .iter()
                .map(|(k, v)| (k.as_str(), v.as_str()))
                .collect();
            let r = Client::connect(proxy.listener).request(method, "example.com", path, &h, b"");
            let fetched = log.lock().expect("log")[fetched_before..].join(", ");
            format!(
                "{label}: {} {:?} www-authenticate={:?} upstream={} fetched=[{fetched}]",
                r.status,
                r.body_str(),
                r.header("www-authenticate"),
                a.requests.load(Ordering::SeqCst) - before,
            )
        })
        .collect();
    for n in [
        "allowed",
        "denied",
        "jwt_cache_miss",
        "jwks_fetch_success",
        "jwks_fetch_failed",
    ] {
        out.push(format!(
            "{n}={}",
            proxy.stat(&format!("http.ingress.jwt_authn.{n}"))
        ));
    }
    for n in [
        "upstream_rq_retry",
        "upstream_rq_retry_success",
        "upstream_rq_retry_limit_exceeded",
        "retry.upstream_rq_503",
        "retry.upstream_rq_500",
    ] {
        out.push(format!(
            "jwks cluster {n}={}",
            proxy.stat(&format!("cluster.jwks.{n}"))
        ));
    }
    out
}

fn remote_cases(keys: &Keys) -> Vec<Case> {
    let exp = now() + 3600;
    let token = |iss: &str, exp: u64| {
        keys.token(
            "RS256",
            r#"{"alg":"RS256","kid":"r1"}"#,
            &format!(r#"{{"iss":"remote.{iss}","sub":"s","exp":{exp}}}"#),
        )
    };
    let bearer = |t: &str| vec![("authorization".to_string(), format!("Bearer {t}"))];
    let get = |label: &str, path: &str, t: Option<String>| {
        (
            label.to_string(),
            "GET",
            path.to_string(),
            t.map_or_else(Vec::new, |t| bearer(&t)),
        )
    };
    let mut bad_sig = token("good", exp);
    bad_sig.truncate(bad_sig.len() - 4);
    bad_sig.push_str("AAAA");
    vec![
        get("good, no token", "/good", None),
        get("good, expired", "/good", Some(token("good", now() - 3600))),
        get("good, other issuer", "/good", Some(token("e500", exp))),
        get("good, first", "/good/x", Some(token("good", exp))),
        get("good, cached", "/good/y", Some(token("good", exp))),
        get("good, bad signature", "/good", Some(bad_sig)),
        get("500", "/e500", Some(token("e500", exp))),
        get("500, again", "/e500", Some(token("e500", exp))),
        get("garbage", "/garbage", Some(token("garbage", exp))),
        get("empty body", "/empty", Some(token("empty", exp))),
        get("no keys", "/nokeys", Some(token("nokeys", exp))),
        get("no answer", "/silent", Some(token("silent", exp))),
        get("no cluster", "/nocluster", Some(token("nocluster", exp))),
        get("good, still cached", "/good", Some(token("good", exp))),
        get("retried", "/flaky", Some(token("flaky", exp))),
        get(
            "retried, always 500",
            "/always500",
            Some(token("always500", exp)),
        ),
        get(
            "retried, garbage",
            "/rgarbage",
            Some(token("rgarbage", exp)),
        ),
        (
            "local and remote".to_string(),
            "GET",
            "/both".to_string(),
            vec![
                ("x-local".to_string(), token("loc", exp)),
                (
                    "authorization".to_string(),
                    format!("Bearer {}", token("both", exp)),
                ),
            ],
        ),
    ]
}

/// `remote_jwks`: a worker fetches a provider's key set when a token first needs it and
/// keeps it for `cache_duration`; a fetch that fails (an error status, a body that is no
/// key set, no answer within the timeout, no cluster) fails the token. Courier and Envoy
/// 1.40 give the same transcript.
#[test]
fn jwt_authn_remote_jwks_matches_envoy() {
    let keys = Keys::new();
    let cases = remote_cases(&keys);
    let silent = silent_upstream();
    let a = Upstream::start("a");
    let (jwks, log) = jwks_server(&keys);
    let got = run_remote(
        &Courier::start(&remote_boot(&keys, &a, jwks, silent)),
        &a,
        &log,
        &cases,
    );
    let a = Upstream::start("a");
    let (jwks, log) = jwks_server(&keys);
    match Courier::start_envoy(&remote_boot(&keys, &a, jwks, silent)) {
        Some(envoy) => {
            let want = run_remote(&envoy, &a, &log, &cases);
            for (e, c) in want.iter().zip(&got) {
                if e != c {
                    eprintln!("envoy:   {e}\ncourier: {c}");
                }
            }
            assert_eq!(want, got, "envoy vs courier");
        }
        None => eprintln!("envoy not on PATH: skipping the remote jwks differential"),
    }
    let line = |label: &str| {
        got.iter()
            .find(|l| l.starts_with(&format!("{label}: ")))
            .cloned()
            .unwrap_or_default()
    };
    assert!(line("good, no token").ends_with("upstream=0 fetched=[]"));
    assert!(line("good, expired").contains("\"Jwt is expired\""));
    assert!(line("good, expired").ends_with("fetched=[]"));
    assert!(line("good, first").contains(": 200 "));
    assert!(line("good, first").ends_with("upstream=1 fetched=[GET jwks.example /keys]"));
    assert!(line("good, cached").contains(": 200 "));
    assert!(line("good, cached").ends_with("upstream=1 fetched=[]"));
    assert!(line("good, still cached").ends_with("upstream=1 fetched=[]"));
    let failed = "401 \"Jwks remote fetch is failed\"";
    for label in [
        "500",
        "500, again",
        "garbage",
        "empty body",
        "no keys",
        "no answer",
        "no cluster",
    ] {
        assert!(line(label).contains(failed), "{}", line(label));
    }
    assert!(line("500, again").ends_with("fetched=[GET jwks.example /e500]"));
    assert!(line("local and remote").contains(": 200 "));
    assert!(line("local and remote").ends_with("upstream=1 fetched=[GET jwks.example /keys2]"));
    // `retry_policy`: a 503 twice, then the key set; 500s until the retries run out; a
    // garbage key set is no reason to retry.
    assert!(line("retried").contains(": 200 "));
    assert!(line("retried").ends_with(
        "fetched=[GET jwks.example /flaky, GET jwks.example /flaky, GET jwks.example /flaky]"
    ));
    assert!(line("retried, always 500").contains(failed));
    assert!(line("retried, always 500").ends_with(
        "fetched=[GET jwks.example /e500, GET jwks.example /e500, GET jwks.example /e500]"
    ));
    assert!(line("retried, garbage").ends_with("fetched=[GET jwks.example /garbage]"));
    let counters: Vec<&str> = got[got.len() - 10..].iter().map(String::as_str).collect();
    assert_eq!(
        counters,
        [
            "allowed=5",
            "denied=13",
            "jwt_cache_miss=18",
            "jwks_fetch_success=3",
            "jwks_fetch_failed=9",
            "jwks cluster upstream_rq_retry=4",
            "jwks cluster upstream_rq_retry_success=1",
            "jwks cluster upstream_rq_retry_limit_exceeded=1",
            "jwks cluster retry.upstream_rq_503=2",
            "jwks cluster retry.upstream_rq_500=2",
        ]
    );
}

/// The async fetch test's providers: name, cluster and path, `remote_jwks` extras.
const ASYNC: &[(&str, &str, &str)] = &[
    // The listener waits for this one's first fetch.
    (
        "gated",
        "jwks_gated /keys",
        "cache_duration: 300s, async_fetch: {}",
    ),
    (
        "fast",
        "jwks /keys",
        "cache_duration: 300s, async_fetch: { fast_listener: true }",
    ),
    (
        "failing",
        "jwks /e500",
        "async_fetch: { failed_refetch_duration: 300s }",
    ),
    // Fails twice, then serves: refetched after 0.1 s each time.
    (
        "flaky",
        "jwks /flaky",
        "cache_duration: 300s, async_fetch: { failed_refetch_duration: 0.1s }",
    ),
    // Refetched every second: its server rotates the key.
    (
        "rotating",
        "jwks /rot",
        "cache_duration: 1s, async_fetch: {}",
    ),
    ("ondemand", "jwks /keys2", ""),
];

fn async_boot(a: &Upstream, jwks: std::net::SocketAddr, gated: std::net::SocketAddr) -> String {
    let clusters = cluster("a", &[a.addr], "")
        + &cluster("jwks", &[jwks], "")
        + &cluster("jwks_gated", &[gated], "");
    with_remote_providers(ASYNC, String::new(), String::new(), &clusters)
}

type Log = std::sync::Arc<std::sync::Mutex<Vec<String>>>;

/// The async fetch test's key set servers: one answering each path (`/rot` serves the
/// RSA set until `rotate` is set, then the EC one), and one holding its answer until
/// `gate` opens; with the requests each got (`<method> <path>`).
struct AsyncJwks {
    addr: std::net::SocketAddr,
    log: Log,
    rotate: std::sync::Arc<std::sync::atomic::AtomicBool>,
    gated: std::net::SocketAddr,
    gated_log: Log,
    gate: std::sync::Arc<(std::sync::Mutex<bool>, std::sync::Condvar)>,
}

impl AsyncJwks {
    fn start(keys: &Keys) -> AsyncJwks {
        use std::sync::atomic::{AtomicBool, AtomicUsize};
        use std::sync::{Arc, Condvar, Mutex};
        let (log, gated_log): (Log, Log) = Default::default();
        let rotate = Arc::new(AtomicBool::new(false));
        let (rsa, ec) = (keys.rsa_jwks(), keys.ec_jwks());
        let flaky = AtomicUsize::new(0);
        let (seen, rotated) = (log.clone(), rotate.clone());
        let addr = http_service(move |r| {
            seen.lock()
                .expect("log")
                .push(format!("{} {}", r.method, r.path));
            let (status, body) = match r.path.as_str() {
                "/keys" | "/keys2" => (200, rsa.clone()),
                "/flaky" if flaky.fetch_add(1, Ordering::SeqCst) < 2 => (503, String::new()),
                "/flaky" => (200, rsa.clone()),
                "/rot" if rotated.load(Ordering::SeqCst) => (200, ec.clone()),
                "/rot" => (200, rsa.clone()),
                _ => (500, String::new()),
            };
            Answer {
                status,
                headers: vec![("content-type".into(), "application/json".into())],
                body: body.into(),
            }
        });
        let gate = Arc::new((Mutex::new(false), Condvar::new()));
        let (held, seen, rsa) = (gate.clone(), gated_log.clone(), keys.rsa_jwks());
        // Its own server: the wait blocks the thread answering.
        let gated = http_service(move |r| {
            seen.lock()
                .expect("log")
                .push(format!("{} {}", r.method, r.path));
            let (open, opened) = &*held;
            let mut open = open.lock().expect("gate");
            while !*open {
                open = opened.wait(open).expect("gate");
            }
            Answer {
                status: 200,
                headers: vec![("content-type".into(), "application/json".into())],
                body: rsa.clone().into(),
            }
        });
        AsyncJwks {
            addr,
            log,
            rotate,
            gated,
            gated_log,
            gate,
        }
    }

    fn open_gate(&self) {
        let (open, opened) = &*self.gate;
        *open.lock().expect("gate") = true;
        opened.notify_all();
    }

    /// Every request both servers got, but `/rot`'s (refetched every second).
    fn fetches(&self) -> Vec<String> {
        let mut all = self.gated_log.lock().expect("log").clone();
        all.extend(
            self.log
                .lock()
                .expect("log")
                .iter()
                .filter(|l| !l.ends_with("/rot"))
                .cloned(),
        );
        all
    }

    fn count(&self, line: &str) -> usize {
        self.log
            .lock()
            .expect("log")
            .iter()
            .filter(|l| *l == line)
            .count()
    }
}

/// Waits (at most 10 s) until `fact` holds.
fn wait_until(what: &str, fact: impl Fn() -> bool) {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while !fact() {
        assert!(
            std::time::Instant::now() < deadline,
            "waited 10 s for {what}"
        );
        std::thread::sleep(std::time::Duration::from_millis(10));
    }
}

/// The async fetch scenario on one proxy (started unready on its bootstrap).
fn run_async(mut proxy: Courier, a: &Upstream, jwks: &AsyncJwks, keys: &Keys) -> Vec<String> {
    let mut out = Vec::new();
    // Start-up: every set is fetched at once; the listener waits for `gated`'s answer.
    wait_until("the first fetches", || {
        !jwks.gated_log.lock().expect("log").is_empty()
            && jwks.count("GET /flaky") == 3
            && jwks.count("GET /e500") == 1
            && jwks.count("GET /keys") == 1
            && jwks.count("GET /rot") >= 1
    });
    proxy.wait_stat("http.ingress.jwt_authn.jwks_fetch_failed", 3);
    // Fetched concurrently: in no given order.
    let mut first = jwks.fetches();
    first.sort();
    out.push(format!(
        "while gated's first fetch waits: live={} fetched={first:?} failed={}",
        admin_get(proxy.admin, "/ready").is_some_and(|b| b.contains("LIVE")),
        proxy.stat("http.ingress.jwt_authn.jwks_fetch_failed"),
    ));
    jwks.open_gate();
    assert!(proxy.wait_ready(), "the proxy exited");
    let exp = now() + 3600;
    let rsa = |iss: &str| {
        keys.token(
            "RS256",
            r#"{"alg":"RS256","kid":"r1"}"#,
            &format!(r#"{{"iss":"remote.{iss}","sub":"s","exp":{exp}}}"#),
        )
    };
    let ec = |iss: &str| {
        keys.token(
            "ES256",
            r#"{"alg":"ES256"}"#,
            &format!(r#"{{"iss":"remote.{iss}","sub":"s","exp":{exp}}}"#),
        )
    };
    let request = |label: &str, path: &str, token: Option<String>| {
        let before = a.requests.load(Ordering::SeqCst);
        let fetched_before = jwks.fetches().len();
        let bearer = token.map(|t| format!("Bearer {t}"));
        let h: Vec<(&str, &str)> = bearer
            .iter()
            .map(|b| ("authorization", b.as_str()))
            .collect();
        let r = Client::connect(proxy.listener).request("GET", "example.com", path, &h, b"");
        format!(
            "{label}: {} {:?} upstream={} fetched={:?}",
            r.status,
            r.body_str(),
            a.requests.load(Ordering::SeqCst) - before,
            &jwks.fetches()[fetched_before..],
        )
    };
    out.extend([
        request("gated", "/gated", Some(rsa("gated"))),
        request("gated, no token", "/gated", None),
        request("gated, unknown key", "/gated", Some(ec("gated"))),
        request("fast", "/fast", Some(rsa("fast"))),
        request("flaky", "/flaky", Some(rsa("flaky"))),
        request("failing", "/failing", Some(rsa("failing"))),
        request("failing, again", "/failing", Some(rsa("failing"))),
        request("on demand", "/ondemand", Some(rsa("ondemand"))),
        request("on demand, again", "/ondemand", Some(rsa("ondemand"))),
        request("rotating, old key", "/rotating", Some(rsa("rotating"))),
        request("rotating, new key", "/rotating", Some(ec("rotating"))),
    ]);
    // The server rotates; a refetch brings the new key (no request fetches it).
    jwks.rotate.store(true, Ordering::SeqCst);
    wait_until("the rotated key", || {
        let h = format!("Bearer {}", ec("rotating"));
        Client::connect(proxy.listener)
            .request(
                "GET",
                "example.com",
                "/rotating",
                &[("authorization", &h)],
                b"",
            )
            .status
            == 200
    });
    out.extend([
        request("rotated, old key", "/rotating", Some(rsa("rotating"))),
        request("rotated, new key", "/rotating", Some(ec("rotating"))),
    ]);
    out.push(format!(
        "failed={} some successes={}",
        proxy.stat("http.ingress.jwt_authn.jwks_fetch_failed"),
        proxy.stat("http.ingress.jwt_authn.jwks_fetch_success") >= 6,
    ));
    out
}

/// `remote_jwks.async_fetch`: key sets fetched ahead of requests at start-up (the
/// listener waiting for a set without `fast_listener`, even one whose fetch fails),
/// refetched after `failed_refetch_duration` when a fetch fails and before
/// `cache_duration` ends when it succeeds (a rotated key arrives with no request
/// fetching it); a set with no good fetch yet is fetched by the request. Courier and
/// Envoy 1.40 give the same transcript.
#[test]
fn jwt_authn_async_fetch_matches_envoy() {
    let keys = Keys::new();
    let run = |envoy: bool| {
        let a = Upstream::start("a");
        let jwks = AsyncJwks::start(&keys);
        let boot = async_boot(&a, jwks.addr, jwks.gated);
        let proxy = match envoy {
            false => Courier::start_unready(&boot),
            true => Courier::start_envoy_unready(&boot)?,
        };
        Some(run_async(proxy, &a, &jwks, &keys))
    };
    let got = run(false).expect("courier");
    match run(true) {
        Some(want) => {
            for (e, c) in want.iter().zip(&got) {
                if e != c {
                    eprintln!("envoy:   {e}\ncourier: {c}");
                }
            }
            assert_eq!(want, got, "envoy vs courier");
        }
        None => eprintln!("envoy not on PATH: skipping the async fetch differential"),
    }
    let missing = r#"401 "Jwt is missing""#;
    let no_key = r#"401 "Jwks doesn't have key to match kid or alg from Jwt""#;
    let failed = r#"401 "Jwks remote fetch is failed""#;
    assert_eq!(
        got,
        [
            r#"while gated's first fetch waits: live=false fetched=["GET /e500", "GET /flaky", "GET /flaky", "GET /flaky", "GET /keys", "GET /keys"] failed=3"#.to_string(),
            r#"gated: 200 "a GET /gated" upstream=1 fetched=[]"#.into(),
            format!("gated, no token: {missing} upstream=0 fetched=[]"),
            format!("gated, unknown key: {no_key} upstream=0 fetched=[]"),
            r#"fast: 200 "a GET /fast" upstream=1 fetched=[]"#.into(),
            r#"flaky: 200 "a GET /flaky" upstream=1 fetched=[]"#.into(),
            format!(r#"failing: {failed} upstream=0 fetched=["GET /e500"]"#),
            format!(r#"failing, again: {failed} upstream=0 fetched=["GET /e500"]"#),
            r#"on demand: 200 "a GET /ondemand" upstream=1 fetched=["GET /keys2"]"#.into(),
            r#"on demand, again: 200 "a GET /ondemand" upstream=1 fetched=[]"#.into(),
            r#"rotating, old key: 200 "a GET /rotating" upstream=1 fetched=[]"#.into(),
            format!("rotating, new key: {no_key} upstream=0 fetched=[]"),
            r#"rotated, old key: 401 "Jwt verification fails" upstream=0 fetched=[]"#.into(),
            r#"rotated, new key: 200 "a GET /rotating" upstream=1 fetched=[]"#.into(),
            "failed=5 some successes=true".into(),
        ]
    );
}
