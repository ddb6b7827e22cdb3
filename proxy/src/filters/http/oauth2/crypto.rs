//! The OAuth2 filter's cryptography, as Envoy 1.40 computes it so that cookies one proxy
//! mints the other accepts: the cookies' HMAC, the CSRF token, PKCE's verifier and
//! challenge, the `state` parameter, and the AES-256-CBC encryption of token cookies.

use aws_lc_rs::cipher::{
    DecryptionContext, EncryptionContext, PaddedBlockDecryptingKey, PaddedBlockEncryptingKey,
    UnboundCipherKey, AES_256,
};
use aws_lc_rs::iv::FixedLength;
use aws_lc_rs::{digest, hmac};
use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use base64::Engine as _;

/// HMAC-SHA256 of `message` under `secret`.
fn hmac_sha256(secret: &[u8], message: &[u8]) -> hmac::Tag {
    hmac::sign(&hmac::Key::new(hmac::HMAC_SHA256, secret), message)
}

/// The cookies' HMAC: base64 of HMAC-SHA256 over `domain`, `expires` and the three
/// tokens joined with `\n` (Envoy's `encodeHmacBase64`).
pub fn cookie_hmac(secret: &[u8], fields: [&str; 5]) -> String {
    STANDARD.encode(hmac_sha256(secret, fields.join("\n").as_bytes()))
}

/// Whether `hmac` is the cookies' HMAC, in either form Envoy accepts: base64 of the
/// digest, or (older Envoys') base64 of its lowercase hex.
pub fn cookie_hmac_matches(secret: &[u8], fields: [&str; 5], hmac: &str) -> bool {
    let tag = hmac_sha256(secret, fields.join("\n").as_bytes());
    if STANDARD.encode(tag) == hmac {
        return true;
    }
    let hex: String = tag.as_ref().iter().map(|b| format!("{b:02x}")).collect();
    STANDARD.encode(hex) == hmac
}

/// A flow's id: 16 lowercase hex digits of a random `u64` (Envoy's `Hex::uint64ToHex`).
pub fn flow_id() -> String {
    format!("{:016x}", fastrand::u64(..))
}

/// The CSRF token of a flow: `<flow id>.<base64 HMAC of it>` (a signed double-submit
/// cookie).
pub fn csrf_token(secret: &[u8], flow_id: &str) -> String {
    format!(
        "{flow_id}.{}",
        STANDARD.encode(hmac_sha256(secret, flow_id.as_bytes()))
    )
}

/// Whether `token` is a CSRF token this secret signed.
pub fn csrf_token_valid(secret: &[u8], token: &str) -> bool {
    let Some((id, mac)) = token.split_once('.') else {
        return false;
    };
    STANDARD.encode(hmac_sha256(secret, id.as_bytes())) == mac
}

/// PKCE's code verifier: 32 random bytes, base64url (RFC 7636 §7.1).
pub fn code_verifier() -> String {
    let mut bytes = [0u8; 32];
    fill(&mut bytes);
    URL_SAFE_NO_PAD.encode(bytes)
}

/// PKCE's `S256` challenge of `verifier`.
pub fn code_challenge(verifier: &str) -> String {
    URL_SAFE_NO_PAD.encode(digest::digest(&digest::SHA256, verifier.as_bytes()))
}

/// The `state` parameter: base64url of `{"url":…,"csrf_token":…,"flow_id":…}`.
pub fn encode_state(url: &str, csrf: &str, flow_id: &str) -> String {
    let json = format!(
        "{{\"url\":{},\"csrf_token\":{},\"flow_id\":{}}}",
        json_string(url),
        json_string(csrf),
        json_string(flow_id)
    );
    URL_SAFE_NO_PAD.encode(json)
}

/// What a `state` parameter carries.
pub struct State {
    /// The URL the flow started from.
    pub url: String,
    /// Its CSRF token.
    pub csrf_token: String,
    /// Its flow id (empty from Envoys before per-flow cookies).
    pub flow_id: String,
}

/// Decodes a `state` parameter: `Err` with why it is not one.
pub fn decode_state(state: &str) -> Result<State, String> {
    let raw = decode_base64url(state).unwrap_or_default();
    let text = String::from_utf8_lossy(&raw);
    let value: serde_json::Value = serde_json::from_str(&text)
        .map_err(|_| format!("State query param is not a valid JSON: {text}"))?;
    let field = |k: &str| value.get(k).and_then(|v| v.as_str()).map(str::to_owned);
    let (Some(url), Some(csrf_token)) = (field("url"), field("csrf_token")) else {
        return Err(format!(
            "State query param does not contain url or CSRF token: {text}"
        ));
    };
    Ok(State {
        url,
        csrf_token,
        flow_id: field("flow_id").unwrap_or_default(),
    })
}

/// Base64url, padded or not (Envoy's `Base64Url::decode`).
fn decode_base64url(s: &str) -> Option<Vec<u8>> {
    URL_SAFE_NO_PAD.decode(s.trim_end_matches('=')).ok()
}

/// `s` as a JSON string literal.
fn json_string(s: &str) -> String {
    serde_json::Value::String(s.to_owned()).to_string()
}

/// Random bytes from the system's generator (a zeroed buffer is never used: the
/// generator failing is a broken host, and the fallback keeps the worker serving).
fn fill(bytes: &mut [u8]) {
    if aws_lc_rs::rand::fill(bytes).is_err() {
        for b in bytes.iter_mut() {
            *b = fastrand::u8(..);
        }
    }
}

/// The AES-256 key Envoy derives from the HMAC secret: its SHA-256.
fn aes_key(secret: &[u8]) -> Option<UnboundCipherKey> {
    let key = digest::digest(&digest::SHA256, secret);
    UnboundCipherKey::new(&AES_256, key.as_ref()).ok()
}

/// Encrypts `plain` as Envoy 1.40 does by default (AES-256-CBC, PKCS#7): base64url of a
/// random IV followed by the ciphertext.
pub fn encrypt(plain: &str, secret: &[u8]) -> String {
    let mut iv = [0u8; 16];
    fill(&mut iv);
    let Some(key) = aes_key(secret).and_then(|k| PaddedBlockEncryptingKey::cbc_pkcs7(k).ok())
    else {
        return plain.to_owned();
    };
    let mut data = plain.as_bytes().to_vec();
    if key
        .less_safe_encrypt(&mut data, EncryptionContext::Iv128(FixedLength::from(iv)))
        .is_err()
    {
        return plain.to_owned();
    }
    let mut out = iv.to_vec();
    out.extend_from_slice(&data);
    URL_SAFE_NO_PAD.encode(out)
}

/// Decrypts what [`encrypt`] made; `None` if it is not such a value under this secret.
pub fn decrypt(encrypted: &str, secret: &[u8]) -> Option<String> {
    let mut raw = decode_base64url(encrypted)?;
    if raw.len() <= 16 {
        return None;
    }
    let iv: [u8; 16] = raw[..16].try_into().ok()?;
    let key = PaddedBlockDecryptingKey::cbc_pkcs7(aes_key(secret)?).ok()?;
    let plain = key
        .decrypt(
            &mut raw[16..],
            DecryptionContext::Iv128(FixedLength::from(iv)),
        )
        .ok()?;
    String::from_utf8(plain.to_vec()).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hmac_matches_envoys() {
        // Measured from Envoy 1.40 (secret `hmac-secret`).
        let fields = ["localhost:18080", "1796579033", "acc", "idt", "ref"];
        assert_eq!(
            cookie_hmac(b"hmac-secret", fields),
            "prQi8kdLjyv18Pz/u89mp6FpKedN75Wn7Ton2Zj0oAg="
        );
        assert!(cookie_hmac_matches(
            b"hmac-secret",
            fields,
            "prQi8kdLjyv18Pz/u89mp6FpKedN75Wn7Ton2Zj0oAg="
        ));
        assert!(!cookie_hmac_matches(
            b"other",
            fields,
            "prQi8kdLjyv18Pz/u89mp6FpKedN75Wn7Ton2Zj0oAg="
        ));
    }

    #[test]
    fn envoys_encrypted_cookie_decrypts() {
        // Envoy 1.40's `BearerToken` for the token `acc` under `hmac-secret`.
        assert_eq!(
            decrypt(
                "uLCzuDnk_fzaF4gZpd9s-zWVMdhrH4FtulmVYKZbFF0",
                b"hmac-secret"
            )
            .as_deref(),
            Some("acc")
        );
        let e = encrypt("a token", b"k");
        assert_eq!(decrypt(&e, b"k").as_deref(), Some("a token"));
        assert_eq!(decrypt(&e, b"other"), None);
    }

    #[test]
    fn csrf_and_state_round_trip() {
        let t = csrf_token(b"hmac-secret", "f88fb0e7103b461d");
        assert_eq!(
            t,
            "f88fb0e7103b461d.aYfbtf/6nHe21E73vE0UBCHbwmRLSa+BcAGSyAl4mzo="
        );
        assert!(csrf_token_valid(b"hmac-secret", &t));
        let s = decode_state(&encode_state("http://h/p?q=\"1\"", &t, "f88fb0e7103b461d")).unwrap();
        assert_eq!(s.url, "http://h/p?q=\"1\"");
        assert_eq!(s.flow_id, "f88fb0e7103b461d");
    }
}
