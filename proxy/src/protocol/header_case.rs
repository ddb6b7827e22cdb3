//! The names of an HTTP/1 head's fields as the peer spelled them, kept in the message's
//! extensions when the receiving side has `preserve_case`
//! ([`crate::protocol::key_format`]): recorded by the codec that parsed the head, read by
//! the one that writes the message on. Made only when configured (a message otherwise
//! carries none, and writing it looks for none but an empty extension map).

use bytes::Bytes;

/// A head's field names as received, and its reason phrase.
#[derive(Clone, Debug)]
pub struct HeaderCase {
    /// The first spelling of each name (Envoy's formatter remembers the first: `Foo`
    /// then `foo` both go out `Foo`), slices of the head's own bytes.
    names: Vec<Bytes>,
    /// Names not received are proper-cased (`formatter_type_on_envoy_headers`).
    others_proper_case: bool,
    /// A response's reason phrase, with `forward_reason_phrase`.
    reason: Option<Bytes>,
}

impl HeaderCase {
    /// An empty record, with room for `fields` names; `others_proper_case`: names not
    /// received are to be proper-cased (`formatter_type_on_envoy_headers`).
    pub fn new(others_proper_case: bool, fields: usize) -> HeaderCase {
        HeaderCase {
            names: Vec::with_capacity(fields),
            others_proper_case,
            reason: None,
        }
    }

    /// Whether names not received are proper-cased.
    pub fn others_proper_case(&self) -> bool {
        self.others_proper_case
    }

    /// Notes a received field name (a slice of the head).
    pub fn record(&mut self, name: Bytes) {
        if self.spelling(&name).is_none() {
            self.names.push(name);
        }
    }

    /// Keeps a response's reason phrase.
    pub fn set_reason(&mut self, reason: Bytes) {
        self.reason = Some(reason);
    }

    /// The reason phrase kept, if any (not empty).
    pub fn reason(&self) -> Option<&[u8]> {
        self.reason.as_deref().filter(|r| !r.is_empty())
    }

    /// How `name` was received, if it was.
    pub fn spelling(&self, name: &[u8]) -> Option<&[u8]> {
        self.names
            .iter()
            .find(|n| n.eq_ignore_ascii_case(name))
            .map(|n| &n[..])
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn first_spelling_wins_and_others_follow_the_config() {
        let mut c = HeaderCase::new(true, 2);
        c.record(Bytes::from_static(b"X-Foo-BAR"));
        c.record(Bytes::from_static(b"x-foo-bar"));
        assert_eq!(c.spelling(b"x-foo-bar"), Some(&b"X-Foo-BAR"[..]));
        assert_eq!(c.spelling(b"x-request-id"), None);
    }
}
