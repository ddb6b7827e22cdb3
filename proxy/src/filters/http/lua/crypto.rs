//! The stream handle's encoding and signature helpers: `base64Escape()`, `base64Decode()`,
//! `importPublicKey()` and `verifySignature()`, as Envoy 1.40's (measured,
//! `tests/http_lua.rs`).
//!
//! - `base64Decode()` is abseil's `Base64Unescape`: the standard alphabet, whitespace
//!   anywhere skipped, padding optional but, when given, making the length a multiple of
//!   four; trailing bits need not be zero. Input it cannot decode gives `nil`.
//! - `importPublicKey(der, length)` takes a DER `SubjectPublicKeyInfo` (RSA or EC); the key
//!   is known to the handle by its text up to its first NUL byte (Envoy reads it as a C
//!   string), which is what `get()` gives (`nil` when the key did not parse). A handle
//!   keeps the first key it imported: later imports give that one again.
//! - `verifySignature(hash, key, signature, length, text, length)` verifies with the
//!   imported key (PKCS #1 v1.5 for RSA, ECDSA for EC): `true, nil`, or `false` and
//!   Envoy's message (`<hash> is not supported.`, `Failed to verify digest. Error code:
//!   0`). A key the handle did not import is the error `invalid public key`.
//!
//! aws-lc-rs (rustls's provider) does the verifying. It has no SHA-224 and no SHA-384
//! for RSA keys under 2048 bits: those verify as failures (DIFFERENCES.md).

use aws_lc_rs::signature::{self, VerificationAlgorithm};

/// abseil's `Base64Unescape`: the decoded bytes, or `None`.
pub(crate) fn base64_decode(input: &[u8]) -> Option<Vec<u8>> {
    use base64::engine::{general_purpose::GeneralPurposeConfig, DecodePaddingMode};
    use base64::Engine as _;
    let chars: Vec<u8> = input
        .iter()
        .copied()
        .filter(|c| !c.is_ascii_whitespace() && *c != 0x0b)
        .collect();
    let data_len = chars.iter().position(|c| *c == b'=').unwrap_or(chars.len());
    let (data, pad) = chars.split_at(data_len);
    if pad.iter().any(|c| *c != b'=') || data.len() % 4 == 1 {
        return None;
    }
    if !pad.is_empty() && (!chars.len().is_multiple_of(4) || pad.len() > 2) {
        return None;
    }
    let engine = base64::engine::GeneralPurpose::new(
        &base64::alphabet::STANDARD,
        GeneralPurposeConfig::new()
            .with_decode_allow_trailing_bits(true)
            .with_decode_padding_mode(DecodePaddingMode::RequireNone),
    );
    engine.decode(data).ok()
}

/// abseil's `Base64Escape`: the standard alphabet, padded.
pub(crate) fn base64_escape(input: &[u8]) -> String {
    use base64::Engine as _;
    base64::engine::general_purpose::STANDARD.encode(input)
}

/// The kind of key an imported `SubjectPublicKeyInfo` holds.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum KeyKind {
    Rsa,
    P256,
    P384,
}

/// A public key a script imported.
pub(crate) struct PublicKey {
    kind: KeyKind,
    /// The DER `SubjectPublicKeyInfo`.
    spki: Vec<u8>,
}

const RSA: &str = "1.2.840.113549.1.1.1";
const EC: &str = "1.2.840.10045.2.1";
const P256: &str = "1.2.840.10045.3.1.7";
const P384: &str = "1.3.132.0.34";

impl PublicKey {
    /// Parses a DER `SubjectPublicKeyInfo` (bytes after it are ignored, as `d2i_PUBKEY`
    /// ignores them); `None` when it is not one Courier verifies with.
    pub(crate) fn import(der: &[u8]) -> Option<PublicKey> {
        use x509_parser::prelude::FromDer as _;
        let (rest, spki) = x509_parser::x509::SubjectPublicKeyInfo::from_der(der).ok()?;
        let used = &der[..der.len() - rest.len()];
        let kind = match spki.algorithm.algorithm.to_id_string().as_str() {
            RSA => KeyKind::Rsa,
            EC => {
                let curve = spki.algorithm.parameters.as_ref()?.as_oid().ok()?;
                match curve.to_id_string().as_str() {
                    P256 => KeyKind::P256,
                    P384 => KeyKind::P384,
                    _ => return None,
                }
            }
            _ => return None,
        };
        let key = PublicKey {
            kind,
            spki: used.to_vec(),
        };
        // The key itself must parse (an RSA modulus, a point on the curve).
        let alg = key.algorithm("sha256")?;
        signature::ParsedPublicKey::new(alg, &key.spki).ok()?;
        Some(key)
    }

    /// The algorithm that verifies this key's signatures made with `hash` (lower case).
    fn algorithm(&self, hash: &str) -> Option<&'static dyn VerificationAlgorithm> {
        Some(match (self.kind, hash) {
            (KeyKind::Rsa, "sha1") => &signature::RSA_PKCS1_1024_8192_SHA1_FOR_LEGACY_USE_ONLY,
            (KeyKind::Rsa, "sha256") => &signature::RSA_PKCS1_1024_8192_SHA256_FOR_LEGACY_USE_ONLY,
            (KeyKind::Rsa, "sha384") => &signature::RSA_PKCS1_2048_8192_SHA384,
            (KeyKind::Rsa, "sha512") => &signature::RSA_PKCS1_1024_8192_SHA512_FOR_LEGACY_USE_ONLY,
            (KeyKind::P256, "sha1") => &signature::ECDSA_P256_SHA1_ASN1,
            (KeyKind::P256, "sha256") => &signature::ECDSA_P256_SHA256_ASN1,
            (KeyKind::P256, "sha384") => &signature::ECDSA_P256_SHA384_ASN1,
            (KeyKind::P256, "sha512") => &signature::ECDSA_P256_SHA512_ASN1,
            (KeyKind::P384, "sha256") => &signature::ECDSA_P384_SHA256_ASN1,
            (KeyKind::P384, "sha384") => &signature::ECDSA_P384_SHA384_ASN1,
            (KeyKind::P384, "sha512") => &signature::ECDSA_P384_SHA512_ASN1,
            _ => return None,
        })
    }

    /// Verifies `sig` over `text` with `hash` (Envoy's names, in any case): `Ok`, or Envoy's
    /// message.
    pub(crate) fn verify(&self, hash: &str, sig: &[u8], text: &[u8]) -> Result<(), String> {
        let lower = hash.to_ascii_lowercase();
        if !matches!(
            lower.as_str(),
            "sha1" | "sha224" | "sha256" | "sha384" | "sha512"
        ) {
            return Err(format!("{hash} is not supported."));
        }
        let failed = || "Failed to verify digest. Error code: 0".to_string();
        let alg = self.algorithm(&lower).ok_or_else(failed)?;
        signature::UnparsedPublicKey::new(alg, &self.spki)
            .verify(text, sig)
            .map_err(|_| failed())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn base64_decodes_as_abseil() {
        let d =
            |s: &str| base64_decode(s.as_bytes()).map(|b| String::from_utf8_lossy(&b).into_owned());
        assert_eq!(d("aGVsbG8/Pg==").as_deref(), Some("hello?>"));
        assert_eq!(d("aGVsbG8/Pg").as_deref(), Some("hello?>"));
        assert_eq!(d("aGVs bG8=").as_deref(), Some("hello"));
        assert_eq!(d("aGVsbG9=").as_deref(), Some("hello"));
        assert_eq!(d("ab==").as_deref(), Some("i"));
        assert_eq!(d("").as_deref(), Some(""));
        for bad in [
            "!!!",
            "aGVsbG8_Pg==",
            "aGVsbG8==",
            "aGVsbA=x",
            "a",
            "ab=",
            "=",
            "====",
            "aG=Vs",
        ] {
            assert_eq!(d(bad), None, "{bad}");
        }
    }
}
