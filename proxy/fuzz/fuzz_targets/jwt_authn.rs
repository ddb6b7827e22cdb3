//! Fuzzes the JWT authentication filter on what a client sends: tokens in the
//! `Authorization` header, a header of its own with a prefix, a query parameter and a
//! cookie (the `Cookie` parser), parsed and verified against local key sets (RS256, ES256,
//! HS256), with `forward_payload_header`, `claim_to_headers` and the parameter's removal on
//! success. An input starting with `{` is a JWKS document instead (what a remote JWKS
//! server sends): parsed, then asked to verify the seed tokens. Nothing may panic, no
//! remote key set is asked for, and a path the filter rewrites stays a path.
#![no_main]

use std::sync::OnceLock;

use courier::filters::http::jwt_authn::jwks::Jwks;
use courier::filters::http::jwt_authn::jwt::Jwt;
use courier::filters::http::jwt_authn::provider::RemoteJwks;
use courier::filters::http::jwt_authn::requirement::Fetched;
use courier::filters::http::jwt_authn::{JwtAuthnFilter, JwtRequest};
use courier::http::route::Pseudo;
use courier_proto::envoy::extensions::filters::http::jwt_authn::v3::JwtAuthentication;
use libfuzzer_sys::fuzz_target;

const RS_JWKS: &str = r#"{"keys":[{"kty":"RSA","kid":"r1","alg":"RS256","n":"z9Gb7WZwv19vlakvkTPbkmowGecbwXuEZprSPqEYAqtGpSKvJ2D1Juxo2sxm2ppHmDuOTWUd2FrgAHk8EX4iSDgkQ1HRrWCH1WqE6NX25z-M_8ugftshzKnZVwypCndsJG55RKU9AGwGsHw8_nirpqFpSU153wP_H_mhdB1bjWzRNB0KULevko62QZhPyLH_fmir_sEd2TDz0WWpNa2VDiA99dYa8quTeV7JulOv1ckbwPTnonAZ_juryhBeUh1ol2qoq3URux1FgKqz4jSOoAnGFYuy1eMZOaoTNwLulUHCHkqyfqu7ZgO_x0ymLS60U_NROLGoR45c5FbhQx03CQ","e":"AQAB"},{"kty":"EC","kid":"e1","crv":"P-256","x":"4Nv8RBcp-WQvOGygn1I5ZMn-Uh0iTOmfADqzzyDl0Q0","y":"Y7HuEk7VNWvijGQkvfr23uJZsxk3E7-JeayAXQRPWg4"}]}"#;
const HS_JWKS: &str =
    r#"{"keys":[{"kty":"oct","alg":"HS256","k":"ZnV6emluZyBzZWNyZXQgb2YgMzIgYnl0ZXMgbG9uZyE"}]}"#;
/// Tokens the local key sets verify (signed when the keys were made; see the seeds).
const TOKENS: [&str; 3] = [
    "eyJhbGciOiJSUzI1NiIsImtpZCI6InIxIiwidHlwIjoiSldUIn0.eyJpc3MiOiJodHRwczovL3JzLmV4YW1wbGUiLCJzdWIiOiJhbGljZSIsImF1ZCI6WyJhcGkiLCJ3ZWIiXSwiaWF0IjoxNzAwMDAwMDAwLCJuYmYiOjE3MDAwMDAwMDB9.Da4TVUzcHAzssWNI_GdB-Nsg8F6HdpMNsQt9IDKulDYkXeOPPfclEvrkQGO6DHAMMDcPD6Vbm6rPMSXx-MxPE9Bx4toF8WO32NXuVKZ654OhsB0mRyhPWHFT2h6W8_0M647xGR-6uSxJLCxiq5I2p8QkiHonVuOsB1-rT8NSc5VExSOnr6AtCH-K8OxNgQdFrqxe89JI6VlfhNmN2SGns4H6GqUK0EjHs_GKulEZHiypgtF1PuccWMcI5xyAI86kPG_BKgUg8dfHkxmJ_lsUVstt8zOUSbs4BaRRIkCwDUgvGr2rB-p-hLedMPSKTbMnkH3Gof7E92NWJiEL0YGXOw",
    "eyJhbGciOiJFUzI1NiIsImtpZCI6ImUxIn0.eyJpc3MiOiJodHRwczovL3JzLmV4YW1wbGUiLCJzdWIiOiJhbGljZSIsImF1ZCI6WyJhcGkiLCJ3ZWIiXSwiaWF0IjoxNzAwMDAwMDAwLCJuYmYiOjE3MDAwMDAwMDB9.jeybDpCLuk32kqsJN0x8Br-85ulOXTY_Pjr5cm4F6up_eITRLmP39gTHAe-4xiUMIX5HBNlznNsWBzybW4cTKQ",
    "eyJhbGciOiJIUzI1NiJ9.eyJpc3MiOiJodHRwczovL2hzLmV4YW1wbGUiLCJzdWIiOiJib2IiLCJncm91cHMiOlsiYSIsImIiXSwibiI6M30._KcwM0-baQjckK67p61sfSX37QD6z4QIXNYQFoNIxjQ",
];

fn filter() -> &'static JwtAuthnFilter {
    static F: OnceLock<JwtAuthnFilter> = OnceLock::new();
    F.get_or_init(|| {
        let p: JwtAuthentication = courier_proto::from_value(&serde_json::json!({
            "providers": {
                "rs": {
                    "issuer": "https://rs.example",
                    "audiences": ["api"],
                    "local_jwks": {"inline_string": RS_JWKS},
                    "forward_payload_header": "x-payload",
                    "pad_forward_payload_header": true,
                    "claim_to_headers": [
                        {"header_name": "x-sub", "claim_name": "sub"},
                        {"header_name": "x-aud", "claim_name": "aud"}
                    ],
                    "clock_skew_seconds": 30
                },
                "hs": {
                    "issuer": "https://hs.example",
                    "local_jwks": {"inline_string": HS_JWKS},
                    "from_headers": [{"name": "x-jwt", "value_prefix": "JWT "}],
                    "from_params": ["tok"],
                    "from_cookies": ["jwt", "session"],
                    "forward": true,
                    "claim_to_headers": [{"header_name": "x-groups", "claim_name": "groups"}]
                }
            },
            "rules": [
                {"match": {"prefix": "/any"}, "requires": {"requires_any": {"requirements": [
                    {"provider_name": "rs"}, {"provider_name": "hs"}]}}},
                {"match": {"prefix": "/all"}, "requires": {"requires_all": {"requirements": [
                    {"provider_name": "rs"}, {"provider_name": "hs"}]}}},
                {"match": {"prefix": "/missing"}, "requires": {"requires_any": {"requirements": [
                    {"provider_name": "hs"}, {"allow_missing": {}}]}}},
                {"match": {"prefix": "/failed"}, "requires": {"allow_missing_or_failed": {}}},
                {"match": {"prefix": "/rs"}, "requires": {"provider_name": "rs"}},
                {"match": {"prefix": "/"}, "requires": {"provider_name": "hs"}}
            ]
        }))
        .expect("fuzz jwt_authn config");
        JwtAuthnFilter::compile("jwt", &p, "jwt", "fuzz", &courier::stats::Store::new(1))
            .expect("compiles")
    })
}

fuzz_target!(|data: &[u8]| {
    let text = String::from_utf8_lossy(data);
    if text.starts_with('{') {
        if let Ok(jwks) = Jwks::parse(&text) {
            for t in TOKENS {
                if let Ok(jwt) = Jwt::parse(t) {
                    let _ = jwks.verify(&jwt);
                }
            }
        }
        return;
    }
    let (path, rest) = text.split_once('\n').unwrap_or((&text, ""));
    let path = if path.starts_with('/') { path } else { "/" };
    let mut headers = http::HeaderMap::new();
    for line in rest.lines() {
        if let Some((k, v)) = line.split_once(':') {
            if let (Ok(k), Ok(v)) = (
                http::header::HeaderName::from_bytes(k.trim().as_bytes()),
                http::HeaderValue::from_bytes(v.trim_start().as_bytes()),
            ) {
                headers.append(k, v);
            }
        }
        // A token alone on a line is parsed and verified directly too.
        if let Ok(jwt) = Jwt::parse(line) {
            let _ = jwt.check_time(1_800_000_000, 60);
        }
    }
    let pseudo = Pseudo {
        method: Some("GET"),
        path: Some(path),
        authority: Some("fuzz"),
        scheme: Some("http"),
        status: None,
    };
    let no_remote = |_: &RemoteJwks| -> Fetched { panic!("no provider has remote keys") };
    match filter().on_request(None, &mut headers, path, &pseudo, 0, &no_remote) {
        JwtRequest::Pass(new_path) => {
            if let Some(p) = new_path {
                assert!(p.starts_with('/'), "rewritten path {p:?}");
            }
        }
        JwtRequest::Refuse(..) => {}
        JwtRequest::Fetch(_) => panic!("a fetch without remote keys"),
    }
});
