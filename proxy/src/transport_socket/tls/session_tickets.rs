//! `session_ticket_keys`: TLS session tickets sealed with configured keys, so that every
//! proxy given the same keys resumes the others' sessions. Envoy's rules: each key is 80
//! bytes (a 16-byte name, then key material), the first key seals new tickets, every key
//! opens them (so keys rotate by being prepended, then dropped).
//!
//! Sealing is AES-256-GCM under the key's last 32 bytes, the name as associated data, a
//! random nonce per ticket: `name ‖ nonce ‖ ciphertext ‖ tag`. BoringSSL (Envoy) uses
//! AES-128-CBC with HMAC-SHA256 over its own session encoding instead, so a ticket of one
//! does not resume on the other; Courier's proxies resume each other's sessions.

use std::sync::Arc;

use aws_lc_rs::aead::{Aad, LessSafeKey, Nonce, UnboundKey, AES_256_GCM, NONCE_LEN};
use aws_lc_rs::rand::{SecureRandom, SystemRandom};
use rustls::server::ProducesTickets;

use crate::config::ConfigError;

/// The length Envoy requires of a session ticket key.
pub const KEY_LEN: usize = 80;
const NAME_LEN: usize = 16;
/// Envoy's default session lifetime (`session_timeout`), in seconds.
const LIFETIME: u32 = 7200;

/// Seals and opens tickets with configured keys.
pub struct KeyedTicketer {
    keys: Vec<([u8; NAME_LEN], LessSafeKey)>,
    rng: SystemRandom,
}

impl std::fmt::Debug for KeyedTicketer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KeyedTicketer")
            .field("keys", &self.keys.len())
            .finish()
    }
}

/// A ticketer for `keys` (the bytes of each key; `path` names them for errors).
pub fn compile(keys: &[Vec<u8>], path: &str) -> Result<Arc<KeyedTicketer>, ConfigError> {
    if keys.is_empty() {
        return Err(ConfigError::new(
            format!("{path}.keys"),
            "value must contain at least 1 item(s)",
        ));
    }
    let mut out = Vec::with_capacity(keys.len());
    for (i, key) in keys.iter().enumerate() {
        if key.len() != KEY_LEN {
            return Err(ConfigError::new(
                format!("{path}.keys[{i}]"),
                format!(
                    "Incorrect TLS session ticket key length. Length {}, expected length {KEY_LEN}.",
                    key.len()
                ),
            ));
        }
        let mut name = [0u8; NAME_LEN];
        name.copy_from_slice(&key[..NAME_LEN]);
        let sealing = UnboundKey::new(&AES_256_GCM, &key[KEY_LEN - 32..])
            .map_err(|_| ConfigError::new(format!("{path}.keys[{i}]"), "unusable key"))?;
        out.push((name, LessSafeKey::new(sealing)));
    }
    Ok(Arc::new(KeyedTicketer {
        keys: out,
        rng: SystemRandom::new(),
    }))
}

impl ProducesTickets for KeyedTicketer {
    fn enabled(&self) -> bool {
        true
    }

    fn lifetime(&self) -> u32 {
        LIFETIME
    }

    fn encrypt(&self, plain: &[u8]) -> Option<Vec<u8>> {
        let (name, key) = self.keys.first()?;
        let mut nonce = [0u8; NONCE_LEN];
        self.rng.fill(&mut nonce).ok()?;
        let mut sealed = plain.to_vec();
        key.seal_in_place_append_tag(
            Nonce::assume_unique_for_key(nonce),
            Aad::from(&name[..]),
            &mut sealed,
        )
        .ok()?;
        let mut out = Vec::with_capacity(NAME_LEN + NONCE_LEN + sealed.len());
        out.extend_from_slice(name);
        out.extend_from_slice(&nonce);
        out.extend_from_slice(&sealed);
        Some(out)
    }

    fn decrypt(&self, ticket: &[u8]) -> Option<Vec<u8>> {
        if ticket.len() < NAME_LEN + NONCE_LEN {
            return None;
        }
        let (name, rest) = ticket.split_at(NAME_LEN);
        let (nonce, sealed) = rest.split_at(NONCE_LEN);
        let (_, key) = self.keys.iter().find(|(n, _)| n[..] == *name)?;
        let mut body = sealed.to_vec();
        let plain = key
            .open_in_place(
                Nonce::try_assume_unique_for_key(nonce).ok()?,
                Aad::from(name),
                &mut body,
            )
            .ok()?;
        Some(plain.to_vec())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(name: u8, material: u8) -> Vec<u8> {
        let mut k = vec![material; KEY_LEN];
        k[..NAME_LEN].fill(name);
        k
    }

    #[test]
    fn the_first_key_seals_and_every_key_opens() {
        let old = compile(&[key(1, 1)], "k").expect("compiles");
        let rotated = compile(&[key(2, 2), key(1, 1)], "k").expect("compiles");
        let sealed_old = old.encrypt(b"session").expect("sealed");
        assert_eq!(
            rotated.decrypt(&sealed_old).as_deref(),
            Some(&b"session"[..])
        );
        let sealed_new = rotated.encrypt(b"session").expect("sealed");
        assert_eq!(old.decrypt(&sealed_new), None, "an unknown key name");
        let mut tampered = sealed_new.clone();
        let last = tampered.len() - 1;
        tampered[last] ^= 1;
        assert_eq!(rotated.decrypt(&tampered), None);
    }

    #[test]
    fn a_key_of_another_length_is_refused_with_envoy_s_words() {
        let err = compile(&[vec![0; 48]], "session_ticket_keys").expect_err("refused");
        assert_eq!(err.path, "session_ticket_keys.keys[0]");
        assert!(
            err.to_string().contains("Length 48, expected length 80"),
            "{err}"
        );
    }
}
