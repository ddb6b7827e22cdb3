//! A provider's JSON Web Key Set and the signature check against it
//! (jwt_verify_lib's `verifyJwtWithoutTimeChecking`), on aws-lc-rs.

use aws_lc_rs::signature::{ParsedPublicKey, RsaParameters, RsaPublicKeyComponents};
use aws_lc_rs::{hmac, signature};
use base64::Engine;
use serde_json::Value;

use super::jwt::{Alg, Jwt, B64URL};
use super::status::Status;

/// One key's material. Public keys are parsed once, with the set: building an RSA key
/// (its Montgomery context) costs several times its signature check, which runs on every
/// request (Envoy's jwt_verify_lib keeps its parsed keys too). A key whose material does
/// not make a key (`None`) verifies nothing, as when it was parsed at each check.
enum Material {
    /// `kty: RSA`: the key for each algorithm of [`RSA_ALGS`] it may serve (the one its
    /// `alg` names, or all).
    Rsa(Box<[Option<ParsedPublicKey>; 6]>),
    /// `kty: EC`: the `alg` it serves (by its `alg` or curve) and the key.
    Ec {
        alg: Alg,
        key: Option<ParsedPublicKey>,
    },
    /// `kty: oct`: an HMAC secret.
    Oct(Vec<u8>),
    /// `kty: OKP`, `crv: Ed25519`.
    Ed25519(Option<ParsedPublicKey>),
}

/// The RSA algorithms, their names and aws-lc-rs's verifications.
const RSA_ALGS: [(Alg, &str, &RsaParameters); 6] = [
    (Alg::Rs256, "RS256", &signature::RSA_PKCS1_2048_8192_SHA256),
    (Alg::Rs384, "RS384", &signature::RSA_PKCS1_2048_8192_SHA384),
    (Alg::Rs512, "RS512", &signature::RSA_PKCS1_2048_8192_SHA512),
    (Alg::Ps256, "PS256", &signature::RSA_PSS_2048_8192_SHA256),
    (Alg::Ps384, "PS384", &signature::RSA_PSS_2048_8192_SHA384),
    (Alg::Ps512, "PS512", &signature::RSA_PSS_2048_8192_SHA512),
];

/// A key of the set.
struct Jwk {
    kid: String,
    alg: String,
    material: Material,
}

/// A parsed JWKS; keys that do not parse are left out (as jwt_verify_lib's), and a set
/// with none left verifies nothing (`Jwks doesn't have any valid public key`).
pub struct Jwks {
    keys: Vec<Jwk>,
}

fn field<'a>(key: &'a serde_json::Map<String, Value>, name: &str) -> Option<&'a str> {
    key.get(name).and_then(Value::as_str)
}

fn b64_field(key: &serde_json::Map<String, Value>, name: &str) -> Option<Vec<u8>> {
    field(key, name).and_then(|v| B64URL.decode(v).ok())
}

impl Jwks {
    /// Parses a JWKS document (`{"keys": [...]}`); `Err` says why it is unusable.
    pub fn parse(text: &str) -> Result<Jwks, String> {
        let doc: Value = serde_json::from_str(text).map_err(|_| "Jwks is an invalid JSON")?;
        let Some(keys) = doc.get("keys").and_then(Value::as_array) else {
            return Err("Jwks does not have [keys] field".into());
        };
        let keys: Vec<Jwk> = keys
            .iter()
            .filter_map(|k| Jwk::parse(k.as_object()?))
            .collect();
        if keys.is_empty() {
            return Err("Jwks doesn't have any valid public key".into());
        }
        Ok(Jwks { keys })
    }

    /// Verifies `jwt`'s signature: a key whose `kid` (when both have one) and `alg` (when
    /// the key has one) match must verify it.
    pub fn verify(&self, jwt: &Jwt<'_>) -> Result<(), Status> {
        if jwt.alg == Alg::EdDsa && jwt.signature.len() != 64 {
            return Err(Status::JwtEd25519SignatureWrongLength);
        }
        let mut matched = false;
        for k in &self.keys {
            if !jwt.kid.is_empty() && !k.kid.is_empty() && k.kid != jwt.kid {
                continue;
            }
            if !k.alg.is_empty() && k.alg != jwt.alg_name {
                continue;
            }
            matched = true;
            if k.verifies(jwt) {
                return Ok(());
            }
        }
        Err(match matched {
            true => Status::JwtVerificationFail,
            false => Status::JwksKidAlgMismatch,
        })
    }
}

impl Jwk {
    fn parse(key: &serde_json::Map<String, Value>) -> Option<Jwk> {
        let kid = match key.get("kid") {
            None => String::new(),
            Some(Value::String(s)) => s.clone(),
            Some(_) => return None,
        };
        let alg = match key.get("alg") {
            None => String::new(),
            Some(Value::String(s)) => s.clone(),
            Some(_) => return None,
        };
        let material = match field(key, "kty")? {
            "RSA" => {
                if !alg.is_empty() && !alg.starts_with("RS") && !alg.starts_with("PS") {
                    return None;
                }
                let (n, e) = (b64_field(key, "n")?, b64_field(key, "e")?);
                let components = RsaPublicKeyComponents { n: &n, e: &e };
                Material::Rsa(Box::new(RSA_ALGS.map(|(_, name, params)| {
                    if !alg.is_empty() && alg != name {
                        return None;
                    }
                    components.to_parsed_public_key(params).ok()
                })))
            }
            "EC" => {
                let by_alg = match alg.as_str() {
                    "" => None,
                    "ES256" => Some(Alg::Es256),
                    "ES384" => Some(Alg::Es384),
                    "ES512" => Some(Alg::Es512),
                    _ => return None,
                };
                let by_crv = match field(key, "crv") {
                    None => None,
                    Some("P-256") => Some(Alg::Es256),
                    Some("P-384") => Some(Alg::Es384),
                    Some("P-521") => Some(Alg::Es512),
                    Some(_) => return None,
                };
                let alg = match (by_alg, by_crv) {
                    (Some(a), Some(c)) if a != c => return None,
                    (Some(a), _) | (None, Some(a)) => a,
                    (None, None) => Alg::Es256,
                };
                let (x, y) = (b64_field(key, "x")?, b64_field(key, "y")?);
                let mut point = Vec::with_capacity(1 + x.len() + y.len());
                point.push(4);
                point.extend_from_slice(&x);
                point.extend_from_slice(&y);
                let params = match alg {
                    Alg::Es384 => &signature::ECDSA_P384_SHA384_FIXED,
                    Alg::Es512 => &signature::ECDSA_P521_SHA512_FIXED,
                    _ => &signature::ECDSA_P256_SHA256_FIXED,
                };
                Material::Ec {
                    alg,
                    key: ParsedPublicKey::new(params, &point).ok(),
                }
            }
            "oct" => {
                if !alg.is_empty() && !alg.starts_with("HS") {
                    return None;
                }
                Material::Oct(b64_field(key, "k")?)
            }
            "OKP" => {
                if field(key, "crv")? != "Ed25519" || (!alg.is_empty() && alg != "EdDSA") {
                    return None;
                }
                let x = b64_field(key, "x")?;
                if x.len() != 32 {
                    return None;
                }
                Material::Ed25519(ParsedPublicKey::new(&signature::ED25519, &x).ok())
            }
            _ => return None,
        };
        Some(Jwk { kid, alg, material })
    }

    /// Whether this key verifies the token's signature with the token's algorithm.
    fn verifies(&self, jwt: &Jwt<'_>) -> bool {
        let msg = jwt.signed.as_bytes();
        let sig = jwt.signature.as_slice();
        match (&self.material, jwt.alg) {
            (Material::Rsa(keys), alg) => RSA_ALGS
                .iter()
                .position(|(a, _, _)| *a == alg)
                .and_then(|i| keys[i].as_ref())
                .is_some_and(|k| k.verify_sig(msg, sig).is_ok()),
            (Material::Ec { alg, key }, jwt_alg) if *alg == jwt_alg => {
                key.as_ref().is_some_and(|k| k.verify_sig(msg, sig).is_ok())
            }
            (Material::Oct(secret), alg) => {
                let algorithm = match alg {
                    Alg::Hs256 => hmac::HMAC_SHA256,
                    Alg::Hs384 => hmac::HMAC_SHA384,
                    Alg::Hs512 => hmac::HMAC_SHA512,
                    _ => return false,
                };
                hmac::verify(&hmac::Key::new(algorithm, secret), msg, sig).is_ok()
            }
            (Material::Ed25519(key), Alg::EdDsa) => {
                key.as_ref().is_some_and(|k| k.verify_sig(msg, sig).is_ok())
            }
            _ => false,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use aws_lc_rs::signature::{EcdsaKeyPair, Ed25519KeyPair, KeyPair};

    fn b64(b: &[u8]) -> String {
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(b)
    }

    fn token(alg: &str, sign: impl Fn(&[u8]) -> Vec<u8>) -> String {
        let signed = format!(
            "{}.{}",
            b64(format!(r#"{{"alg":"{alg}","kid":"k1"}}"#).as_bytes()),
            b64(br#"{"iss":"i"}"#)
        );
        let sig = sign(signed.as_bytes());
        format!("{signed}.{}", b64(&sig))
    }

    #[test]
    fn es256_eddsa_hs256_verify_and_tampering_fails() {
        let rng = aws_lc_rs::rand::SystemRandom::new();
        let ec = EcdsaKeyPair::generate(&signature::ECDSA_P256_SHA256_FIXED_SIGNING).expect("ec");
        let pt = ec.public_key().as_ref();
        let ed = Ed25519KeyPair::generate().expect("ed");
        let secret = b"0123456789abcdef0123456789abcdef";
        let jwks = Jwks::parse(&format!(
            r#"{{"keys":[
              {{"kty":"EC","kid":"k1","crv":"P-256","x":"{}","y":"{}"}},
              {{"kty":"OKP","kid":"k1","crv":"Ed25519","x":"{}"}},
              {{"kty":"oct","kid":"k1","alg":"HS256","k":"{}"}},
              {{"kty":"nope"}}
            ]}}"#,
            b64(&pt[1..33]),
            b64(&pt[33..]),
            b64(ed.public_key().as_ref()),
            b64(secret)
        ))
        .expect("jwks");
        assert_eq!(jwks.keys.len(), 3);
        let tokens = [
            token("ES256", |m| {
                ec.sign(&rng, m).expect("sign").as_ref().to_vec()
            }),
            token("EdDSA", |m| ed.sign(m).as_ref().to_vec()),
            token("HS256", |m| {
                hmac::sign(&hmac::Key::new(hmac::HMAC_SHA256, secret), m)
                    .as_ref()
                    .to_vec()
            }),
        ];
        for t in &tokens {
            let jwt = Jwt::parse(t).expect("parses");
            assert_eq!(jwks.verify(&jwt), Ok(()), "{t}");
            let mut bad = Jwt::parse(t).expect("parses");
            bad.signature[0] ^= 1;
            assert_eq!(jwks.verify(&bad), Err(Status::JwtVerificationFail), "{t}");
            let mut other = Jwt::parse(t).expect("parses");
            other.kid = "k2".into();
            assert_eq!(jwks.verify(&other), Err(Status::JwksKidAlgMismatch), "{t}");
        }
    }

    /// An RSA key, parsed with its set, verifies each algorithm it serves: all of them
    /// without an `alg`, only its own with one.
    #[test]
    fn rsa_keys_verify_the_algorithms_they_serve() {
        use aws_lc_rs::rsa::KeySize;
        use aws_lc_rs::signature::{RsaEncoding, RsaKeyPair};
        let rng = aws_lc_rs::rand::SystemRandom::new();
        let rsa = RsaKeyPair::generate(KeySize::Rsa2048).expect("rsa");
        // PKCS#1 `RSAPublicKey` of a 2048-bit key: a 257-byte `n` (a sign byte first), `e`.
        let der = rsa.public_key().as_ref();
        assert_eq!(
            der[..9],
            [0x30, 0x82, 0x01, 0x0a, 0x02, 0x82, 0x01, 0x01, 0x00]
        );
        assert_eq!(der[265..267], [0x02, 0x03]);
        let (n, e) = (&der[9..265], &der[267..]);
        let set = |alg: &str| {
            Jwks::parse(&format!(
                r#"{{"keys":[{{"kty":"RSA","kid":"k1",{alg}"n":"{}","e":"{}"}}]}}"#,
                b64(n),
                b64(e)
            ))
            .expect("jwks")
        };
        let (any, rs256) = (set(""), set(r#""alg":"RS256","#));
        let encodings: [(&str, &'static dyn RsaEncoding); 3] = [
            ("RS256", &signature::RSA_PKCS1_SHA256),
            ("RS512", &signature::RSA_PKCS1_SHA512),
            ("PS384", &signature::RSA_PSS_SHA384),
        ];
        for (alg, encoding) in encodings {
            let t = token(alg, |m| {
                let mut sig = vec![0; rsa.public_modulus_len()];
                rsa.sign(encoding, &rng, m, &mut sig).expect("sign");
                sig
            });
            let jwt = Jwt::parse(&t).expect("parses");
            assert_eq!(any.verify(&jwt), Ok(()), "{alg}");
            let want = match alg {
                "RS256" => Ok(()),
                _ => Err(Status::JwksKidAlgMismatch),
            };
            assert_eq!(rs256.verify(&jwt), want, "{alg}");
            let mut bad = Jwt::parse(&t).expect("parses");
            bad.signature[7] ^= 1;
            assert_eq!(any.verify(&bad), Err(Status::JwtVerificationFail), "{alg}");
        }
        // Components that make no key verify nothing, as before they were parsed once.
        let broken =
            Jwks::parse(r#"{"keys":[{"kty":"RSA","n":"AQAB","e":"AQAB"}]}"#).expect("kept");
        let t = token("RS256", |_| vec![1; 256]);
        let jwt = Jwt::parse(&t).expect("parses");
        assert_eq!(broken.verify(&jwt), Err(Status::JwtVerificationFail));
    }

    #[test]
    fn unusable_sets() {
        assert!(Jwks::parse("{").is_err());
        assert!(Jwks::parse(r#"{"k":[]}"#).is_err());
        assert!(Jwks::parse(r#"{"keys":[{"kty":"RSA","n":"!!","e":"AQAB"}]}"#).is_err());
    }
}
