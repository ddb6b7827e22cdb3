//! A `Basic` credential (RFC 7617) read from a request field, as Envoy 1.40 reads it.
//!
//! The value must start with `Basic ` (that case, one space); the rest is base64 of
//! `name:password` decoded as Envoy's `Base64::decodeWithoutPadding`: the standard
//! alphabet, padding optional (up to two `=` at the end, whatever the length), unused
//! bits zero, nothing else — a space, a third `=` or a URL-safe character makes it
//! undecodable, which Envoy then reports as a credential without a colon.

use base64::Engine as _;

/// Why a field's value is not a credential, each with Envoy's reply body and response
/// code details.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    /// No field.
    Missing,
    /// Not `Basic `.
    Scheme,
    /// Not base64, or no `:` in it.
    Format,
    /// Not a user, or not the password.
    Credential,
}

impl Refusal {
    /// Envoy's reply body.
    pub fn body(self) -> &'static str {
        match self {
            Refusal::Missing => "User authentication failed. Missing username and password.",
            Refusal::Scheme => {
                "User authentication failed. Expected 'Basic' authentication scheme."
            }
            Refusal::Format => "User authentication failed. Invalid basic credential format.",
            Refusal::Credential => {
                "User authentication failed. Invalid username/password combination."
            }
        }
    }

    /// Envoy's response code details.
    pub fn details(self) -> &'static str {
        match self {
            Refusal::Missing => "no_credential_for_basic_auth",
            Refusal::Scheme => "invalid_scheme_for_basic_auth",
            Refusal::Format => "invalid_format_for_basic_auth",
            Refusal::Credential => "invalid_credential_for_basic_auth",
        }
    }
}

/// A decoded credential: `name:password`, split at its first `:`.
#[derive(Debug, PartialEq, Eq)]
pub struct Credential {
    decoded: Vec<u8>,
    colon: usize,
}

impl Credential {
    /// The user's name.
    pub fn name(&self) -> &[u8] {
        &self.decoded[..self.colon]
    }

    /// The password.
    pub fn password(&self) -> &[u8] {
        &self.decoded[self.colon + 1..]
    }
}

/// Reads a field's value as a `Basic` credential.
pub fn parse(value: &[u8]) -> Result<Credential, Refusal> {
    let token = value.strip_prefix(b"Basic ").ok_or(Refusal::Scheme)?;
    let decoded = decode_without_padding(token).unwrap_or_default();
    let colon = decoded
        .iter()
        .position(|&b| b == b':')
        .ok_or(Refusal::Format)?;
    Ok(Credential { decoded, colon })
}

/// Envoy's `Base64::decodeWithoutPadding`: `None` for what it cannot decode.
pub fn decode_without_padding(input: &[u8]) -> Option<Vec<u8>> {
    let mut end = input.len();
    for _ in 0..2 {
        if end > 0 && input[end - 1] == b'=' {
            end -= 1;
        }
    }
    base64::engine::general_purpose::STANDARD_NO_PAD
        .decode(&input[..end])
        .ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn envoys_decoding() {
        let ok = |v: &str| parse(v.as_bytes()).map(|c| (c.name().to_vec(), c.password().to_vec()));
        let pair = |n: &str, p: &str| Ok((n.as_bytes().to_vec(), p.as_bytes().to_vec()));
        assert_eq!(ok("Basic dXNlcjpwdw=="), pair("user", "pw"));
        assert_eq!(ok("Basic dXNlcjpwdw="), pair("user", "pw"));
        assert_eq!(ok("Basic dXNlcjpwdw"), pair("user", "pw"));
        assert_eq!(ok("Basic dXM6ZXI6cA=="), pair("us", "er:p"));
        assert_eq!(ok("Basic OnB3"), pair("", "pw"));
        assert_eq!(ok("basic dXNlcjpwdw=="), Err(Refusal::Scheme));
        assert_eq!(ok("Basic"), Err(Refusal::Scheme));
        assert_eq!(ok("Bearer x"), Err(Refusal::Scheme));
        for bad in [
            "Basic ",
            "Basic  dXNlcjpwdw==",
            "Basic dXNlcjpwdw===",
            "Basic dXNlcjpwdw==x",
            "Basic dXNlcjpwdx==",
            "Basic dXNlcjpw dw==",
            "Basic !!!!",
            "Basic Zm9v",
            "Basic dXNlcjpwd===",
        ] {
            assert_eq!(ok(bad), Err(Refusal::Format), "{bad}");
        }
    }

    #[test]
    fn garbage_never_panics() {
        let mut rng = fastrand::Rng::with_seed(7);
        let alphabet = b"Basic =:+/AZaz09\xff";
        for _ in 0..20_000 {
            let len = rng.usize(0..40);
            let mut v: Vec<u8> = (0..len)
                .map(|_| match rng.bool() {
                    true => alphabet[rng.usize(..alphabet.len())],
                    false => rng.u8(..),
                })
                .collect();
            if rng.bool() {
                v.splice(0..0, b"Basic ".iter().copied());
            }
            if let Ok(c) = parse(&v) {
                assert!(c.name().len() + c.password().len() < v.len());
            }
        }
    }
}
