//! The htpasswd text `users` holds, read as Envoy 1.40 reads it: one `name:{SHA}<hash>`
//! a line, where `<hash>` is the password's SHA-1 in base64 (28 characters).
//!
//! Lines are split on `\n` only (a `\r` stays in the hash and makes it the wrong length),
//! nothing is trimmed (a leading space is part of the name), empty lines and lines that
//! start with `#` are skipped. Envoy refuses the whole config for any other line that is
//! not a well-formed `{SHA}` entry, with the messages below, and so does Courier.

use std::collections::HashMap;

/// The users an htpasswd text names: each name's base64 SHA-1 of its password, as
/// written (Envoy compares the texts, so a hash that is not base64 never matches).
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Users(HashMap<Box<[u8]>, Box<[u8]>>);

/// Why an htpasswd text is refused: Envoy's messages.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum HtpasswdError {
    #[error("basic auth: invalid htpasswd format, username:password is expected")]
    NoColon,
    #[error("basic auth: empty user name or password")]
    Empty,
    #[error("basic auth: duplicate users")]
    Duplicate,
    #[error("basic auth: unsupported htpasswd format: please use {{SHA}}")]
    NotSha,
    #[error("basic auth: invalid htpasswd format, invalid SHA hash length")]
    HashLength,
}

/// The length of a SHA-1 digest in base64.
const SHA1_BASE64_LEN: usize = 28;

impl Users {
    /// Reads an htpasswd text.
    pub fn parse(text: &[u8]) -> Result<Users, HtpasswdError> {
        let mut users = HashMap::new();
        // A final `\n` ends the last line; it does not start an empty one (either way an
        // empty line is skipped).
        for line in text.split(|&b| b == b'\n') {
            if line.is_empty() || line[0] == b'#' {
                continue;
            }
            let colon = line
                .iter()
                .position(|&b| b == b':')
                .ok_or(HtpasswdError::NoColon)?;
            let (name, hash) = (&line[..colon], &line[colon + 1..]);
            if name.is_empty() || hash.is_empty() {
                return Err(HtpasswdError::Empty);
            }
            if users.contains_key(name) {
                return Err(HtpasswdError::Duplicate);
            }
            let hash = hash.strip_prefix(b"{SHA}").ok_or(HtpasswdError::NotSha)?;
            if hash.len() != SHA1_BASE64_LEN {
                return Err(HtpasswdError::HashLength);
            }
            users.insert(Box::from(name), Box::from(hash));
        }
        Ok(Users(users))
    }

    /// Whether `name` is a user whose password is `password`.
    pub fn check(&self, name: &[u8], password: &[u8]) -> bool {
        use base64::Engine as _;
        let Some(want) = self.0.get(name) else {
            return false;
        };
        let digest =
            aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA1_FOR_LEGACY_USE_ONLY, password);
        let mut got = [0u8; SHA1_BASE64_LEN];
        match base64::engine::general_purpose::STANDARD.encode_slice(digest.as_ref(), &mut got) {
            Ok(SHA1_BASE64_LEN) => **want == got,
            _ => false,
        }
    }

    /// How many users there are.
    pub fn len(&self) -> usize {
        self.0.len()
    }

    /// Whether there are none.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `{SHA}` of `pw`.
    const PW: &str = "{SHA}GpHWL3ymc5liWkNopqtdSjuqYHM=";

    #[test]
    fn envoys_lines_and_refusals() {
        let u = Users::parse(format!("a:{PW}\n# c\n\n b:{PW}\n").as_bytes()).expect("valid");
        assert_eq!(u.len(), 2);
        assert!(u.check(b"a", b"pw"));
        assert!(u.check(b" b", b"pw"));
        assert!(!u.check(b"b", b"pw"));
        assert!(!u.check(b"a", b"pw2"));
        assert!(Users::parse(b"").expect("empty is valid").is_empty());
        let err = |t: &str| Users::parse(t.as_bytes()).err();
        assert_eq!(err("nocolon"), Some(HtpasswdError::NoColon));
        assert_eq!(err(" "), Some(HtpasswdError::NoColon));
        assert_eq!(err(&format!(":{PW}")), Some(HtpasswdError::Empty));
        assert_eq!(err("u:"), Some(HtpasswdError::Empty));
        assert_eq!(err("u:$apr1$x"), Some(HtpasswdError::NotSha));
        assert_eq!(
            err(&format!("u:{}", PW.to_lowercase())),
            Some(HtpasswdError::NotSha)
        );
        assert_eq!(err("u:{SHA}abc"), Some(HtpasswdError::HashLength));
        assert_eq!(
            err(&format!("u:{PW}\r\nv:{PW}")),
            Some(HtpasswdError::HashLength)
        );
        assert_eq!(err(&format!("u:{PW}:x")), Some(HtpasswdError::HashLength));
        assert_eq!(
            err(&format!("u:{PW}\nu:{PW}")),
            Some(HtpasswdError::Duplicate)
        );
        // Not base64: accepted, never matches.
        let u = Users::parse(b"u:{SHA}!!!!!!!!!!!!!!!!!!!!!!!!!!!!").expect("valid");
        assert!(!u.check(b"u", b"pw"));
    }

    #[test]
    fn garbage_never_panics() {
        let mut rng = fastrand::Rng::with_seed(24);
        let alphabet = b"ab:#{SHA}=\n\r \xff";
        for _ in 0..20_000 {
            let len = rng.usize(0..80);
            let text: Vec<u8> = (0..len)
                .map(|_| match rng.bool() {
                    true => alphabet[rng.usize(..alphabet.len())],
                    false => rng.u8(..),
                })
                .collect();
            if let Ok(u) = Users::parse(&text) {
                let _ = u.check(&text, &text);
            }
        }
    }
}
