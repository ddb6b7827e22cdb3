//! A JWT parsed from its compact form (`header.payload.signature`), as jwt_verify_lib
//! parses it: each failure is the [`Status`] Envoy answers with. Nothing here panics on
//! what a client sends (`tests` feeds it garbage).

use base64::engine::{DecodePaddingMode, GeneralPurpose, GeneralPurposeConfig};
use base64::Engine;
use serde_json::{Map, Value};

use super::status::Status;

/// Base64url as absl's `WebSafeBase64Unescape` reads it: padding optional.
pub(crate) const B64URL: GeneralPurpose = GeneralPurpose::new(
    &base64::alphabet::URL_SAFE,
    GeneralPurposeConfig::new()
        .with_decode_padding_mode(DecodePaddingMode::Indifferent)
        .with_decode_allow_trailing_bits(true),
);

/// The algorithms jwt_verify_lib verifies.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Alg {
    Rs256,
    Rs384,
    Rs512,
    Ps256,
    Ps384,
    Ps512,
    Es256,
    Es384,
    Es512,
    Hs256,
    Hs384,
    Hs512,
    EdDsa,
}

impl Alg {
    fn parse(s: &str) -> Option<Alg> {
        Some(match s {
            "RS256" => Alg::Rs256,
            "RS384" => Alg::Rs384,
            "RS512" => Alg::Rs512,
            "PS256" => Alg::Ps256,
            "PS384" => Alg::Ps384,
            "PS512" => Alg::Ps512,
            "ES256" => Alg::Es256,
            "ES384" => Alg::Es384,
            "ES512" => Alg::Es512,
            "HS256" => Alg::Hs256,
            "HS384" => Alg::Hs384,
            "HS512" => Alg::Hs512,
            "EdDSA" => Alg::EdDsa,
            _ => return None,
        })
    }
}

/// A parsed (not yet verified) JWT.
#[derive(Debug)]
pub struct Jwt<'t> {
    /// `alg`, as written.
    pub alg_name: String,
    pub alg: Alg,
    /// `kid` (empty when absent).
    pub kid: String,
    /// The payload's claims.
    pub payload: Map<String, Value>,
    /// The payload as sent (base64url), for `forward_payload_header`.
    pub payload_b64: &'t str,
    /// `header.payload`: what the signature signs.
    pub signed: &'t str,
    pub signature: Vec<u8>,
    /// `iss` (empty when absent).
    pub iss: String,
    /// `aud`, a string or a list of them.
    pub audiences: Vec<String>,
    pub nbf: u64,
    /// `exp` (0 when absent: it never expires).
    pub exp: u64,
}

/// A JSON object from base64url, or which of the two failed.
fn object(b64: &str, bad_base64: Status, bad_json: Status) -> Result<Map<String, Value>, Status> {
    let raw = B64URL.decode(b64).map_err(|_| bad_base64)?;
    match serde_json::from_slice(&raw) {
        Ok(Value::Object(m)) => Ok(m),
        _ => Err(bad_json),
    }
}

/// A string claim: absent is empty, another type is `wrong`.
fn string(m: &Map<String, Value>, name: &str, wrong: Status) -> Result<String, Status> {
    match m.get(name) {
        None => Ok(String::new()),
        Some(Value::String(s)) => Ok(s.clone()),
        Some(_) => Err(wrong),
    }
}

/// A time claim (jwt_verify_lib's `GetUInt64`: a number, truncated; absent is 0).
fn time(m: &Map<String, Value>, name: &str, wrong: Status, range: Status) -> Result<u64, Status> {
    match m.get(name) {
        None => Ok(0),
        Some(Value::Number(n)) => {
            let f = n.as_f64().ok_or(range)?;
            if !(0.0..u64::MAX as f64).contains(&f) {
                return Err(range);
            }
            Ok(n.as_u64().unwrap_or(f as u64))
        }
        Some(_) => Err(wrong),
    }
}

impl<'t> Jwt<'t> {
    /// Parses `token` as jwt_verify_lib's `Jwt::parseFromString` does, in its order.
    pub fn parse(token: &'t str) -> Result<Jwt<'t>, Status> {
        // Three non-empty sections (absl's `SkipEmpty` drops empty ones).
        let mut parts = token.split('.').filter(|p| !p.is_empty());
        let (Some(h), Some(p), Some(s), None) =
            (parts.next(), parts.next(), parts.next(), parts.next())
        else {
            return Err(Status::JwtBadFormat);
        };
        let header = object(
            h,
            Status::JwtHeaderParseErrorBadBase64,
            Status::JwtHeaderParseErrorBadJson,
        )?;
        let Some(Value::String(alg_name)) = header.get("alg") else {
            return Err(Status::JwtHeaderBadAlg);
        };
        let alg = Alg::parse(alg_name).ok_or(Status::JwtHeaderNotImplementedAlg)?;
        let kid = string(&header, "kid", Status::JwtHeaderBadKid)?;
        let payload = object(
            p,
            Status::JwtPayloadParseErrorBadBase64,
            Status::JwtPayloadParseErrorBadJson,
        )?;
        let iss = string(&payload, "iss", Status::JwtPayloadParseErrorIssNotString)?;
        string(&payload, "sub", Status::JwtPayloadParseErrorSubNotString)?;
        time(
            &payload,
            "iat",
            Status::JwtPayloadParseErrorIatNotInteger,
            Status::JwtPayloadParseErrorIatOutOfRange,
        )?;
        let nbf = time(
            &payload,
            "nbf",
            Status::JwtPayloadParseErrorNbfNotInteger,
            Status::JwtPayloadParseErrorNbfOutOfRange,
        )?;
        let exp = time(
            &payload,
            "exp",
            Status::JwtPayloadParseErrorExpNotInteger,
            Status::JwtPayloadParseErrorExpOutOfRange,
        )?;
        string(&payload, "jti", Status::JwtPayloadParseErrorJtiNotString)?;
        let audiences = match payload.get("aud") {
            None => Vec::new(),
            Some(Value::String(a)) => vec![a.clone()],
            Some(Value::Array(list)) => list
                .iter()
                .map(|v| v.as_str().map(str::to_owned))
                .collect::<Option<Vec<_>>>()
                .ok_or(Status::JwtPayloadParseErrorAudNotString)?,
            Some(_) => return Err(Status::JwtPayloadParseErrorAudNotString),
        };
        let signature = B64URL
            .decode(s)
            .map_err(|_| Status::JwtSignatureParseErrorBadBase64)?;
        Ok(Jwt {
            alg_name: alg_name.clone(),
            alg,
            kid,
            payload_b64: p,
            signed: &token[..h.len() + 1 + p.len()],
            signature,
            iss,
            audiences,
            nbf,
            exp,
            payload,
        })
    }

    /// jwt_verify_lib's `verifyTimeConstraint`: `nbf` and `exp` with `skew` seconds of
    /// slack either way.
    pub fn check_time(&self, now: u64, skew: u64) -> Result<(), Status> {
        if now.saturating_add(skew) < self.nbf {
            return Err(Status::JwtNotYetValid);
        }
        if self.exp != 0 && now > self.exp.saturating_add(skew) {
            return Err(Status::JwtExpired);
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn b64(s: &str) -> String {
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(s)
    }

    #[test]
    fn statuses_in_jwt_verify_libs_order() {
        let h = b64(r#"{"alg":"RS256","kid":"k"}"#);
        let p = b64(r#"{"iss":"i","aud":["a","b"],"exp":10,"nbf":2.5}"#);
        let ok = format!("{h}.{p}.c2ln");
        let jwt = Jwt::parse(&ok).expect("parses");
        assert_eq!(
            (jwt.alg, jwt.kid.as_str(), jwt.iss.as_str()),
            (Alg::Rs256, "k", "i")
        );
        assert_eq!(jwt.audiences, ["a", "b"]);
        assert_eq!(
            (jwt.nbf, jwt.exp, jwt.signature.as_slice()),
            (2, 10, &b"sig"[..])
        );
        assert_eq!(jwt.signed, format!("{h}.{p}"));
        let cases = [
            ("a.b", Status::JwtBadFormat),
            ("a..b", Status::JwtBadFormat),
            ("a.b.c.d", Status::JwtBadFormat),
            ("!!.b.c", Status::JwtHeaderParseErrorBadBase64),
            (
                &format!("{}.b.c", b64("[1]")),
                Status::JwtHeaderParseErrorBadJson,
            ),
            (
                &format!("{}.b.c", b64(r#"{"alg":1}"#)),
                Status::JwtHeaderBadAlg,
            ),
            (
                &format!("{}.b.c", b64(r#"{"alg":"none"}"#)),
                Status::JwtHeaderNotImplementedAlg,
            ),
            (
                &format!("{}.b.c", b64(r#"{"alg":"HS256","kid":2}"#)),
                Status::JwtHeaderBadKid,
            ),
            (&format!("{h}.!!.c"), Status::JwtPayloadParseErrorBadBase64),
            (
                &format!("{h}.{}.c", b64(r#"{"exp":"x"}"#)),
                Status::JwtPayloadParseErrorExpNotInteger,
            ),
            (
                &format!("{h}.{}.c", b64(r#"{"exp":-1}"#)),
                Status::JwtPayloadParseErrorExpOutOfRange,
            ),
            (
                &format!("{h}.{}.c", b64(r#"{"aud":[1]}"#)),
                Status::JwtPayloadParseErrorAudNotString,
            ),
            (
                &format!("{h}.{p}.!!"),
                Status::JwtSignatureParseErrorBadBase64,
            ),
        ];
        for (token, want) in cases {
            assert_eq!(Jwt::parse(token).map(|_| ()), Err(want), "{token}");
        }
    }

    #[test]
    fn time_constraints_with_skew() {
        let p = b64(r#"{"nbf":100,"exp":200}"#);
        let h = b64(r#"{"alg":"HS256"}"#);
        let t = format!("{h}.{p}.c2ln");
        let jwt = Jwt::parse(&t).expect("parses");
        assert_eq!(jwt.check_time(39, 60), Err(Status::JwtNotYetValid));
        assert_eq!(jwt.check_time(40, 60), Ok(()));
        assert_eq!(jwt.check_time(260, 60), Ok(()));
        assert_eq!(jwt.check_time(261, 60), Err(Status::JwtExpired));
    }

    /// Garbage never panics: random bytes, random dots, mangled valid tokens, huge ones.
    #[test]
    fn garbage_never_panics() {
        let h = b64(r#"{"alg":"ES256","kid":"k"}"#);
        let p = b64(r#"{"iss":"i","aud":"a","exp":99999999999}"#);
        let valid = format!("{h}.{p}.c2lnbmF0dXJl");
        let mut rng = fastrand::Rng::with_seed(24);
        let alphabet = b"ABCxyz019-_.=+/ {}\":\\\x00\xff";
        for i in 0..20_000 {
            let token: Vec<u8> = match i % 3 {
                0 => (0..rng.usize(0..80)).map(|_| rng.u8(..)).collect(),
                1 => (0..rng.usize(0..80))
                    .map(|_| alphabet[rng.usize(..alphabet.len())])
                    .collect(),
                _ => {
                    let mut t = valid.clone().into_bytes();
                    for _ in 0..rng.usize(1..4) {
                        let at = rng.usize(..t.len());
                        t[at] = alphabet[rng.usize(..alphabet.len())];
                    }
                    t
                }
            };
            let token = String::from_utf8_lossy(&token);
            if let Ok(jwt) = Jwt::parse(&token) {
                let _ = jwt.check_time(rng.u64(..), rng.u64(..));
            }
        }
        let huge = format!("{h}.{}.{}", "A".repeat(1 << 20), "B".repeat(1 << 20));
        assert!(Jwt::parse(&huge).is_err());
        let deep = format!("{h}.{}.c2ln", b64(&"[".repeat(10_000)));
        assert_eq!(
            Jwt::parse(&deep).map(|_| ()),
            Err(Status::JwtPayloadParseErrorBadJson)
        );
    }
}
