//! How HTTP/1.1 field names are written: `Http1ProtocolOptions.header_key_format`.
//!
//! By default names go out lower-case (as they are held). `proper_case_words`, as Envoy,
//! capitalises the first character and every letter after a character that is not a
//! letter or digit (`content-type` → `Content-Type`, `foo$b#$are` → `Foo$B#$Are`): for
//! response heads written to clients (the connection manager's option) and request heads
//! written to upstreams (the cluster's). Trailers stay lower-case, as Envoy writes them.
//!
//! The stateful formatter `envoy.http.stateful_header_formatters.preserve_case`
//! (`PreserveCaseFormatterConfig`) works the other way round, as Envoy's: the side that
//! *receives* a head with it configured records the names as the peer spelled them
//! ([`crate::protocol::header_case::HeaderCase`], carried in the message's extensions),
//! and whichever codec writes that message on writes them so, whatever its own setting
//! (a request a connection manager with it received goes upstream with the client's
//! names; a response a cluster with it received goes back with the upstream's). Names the
//! peer did not send (those the proxy added) are written lower-case, or proper-cased with
//! `formatter_type_on_envoy_headers: PROPER_CASE`; `forward_reason_phrase` keeps an
//! upstream response's reason phrase. A message no configured side received (a local
//! reply) is written in the writing side's own format, lower-case for `preserve_case`.

use courier_proto::envoy::config::core::v3::http1_protocol_options::header_key_format::HeaderFormat;
use courier_proto::envoy::config::core::v3::Http1ProtocolOptions;
use courier_proto::envoy::extensions::http::header_formatters::preserve_case::v3::{
    preserve_case_formatter_config::FormatterTypeOnEnvoyHeaders, PreserveCaseFormatterConfig,
};

use crate::config::ConfigError;
use crate::protocol::header_case::HeaderCase;

const PRESERVE_CASE_TYPE: &str =
    "envoy.extensions.http.header_formatters.preserve_case.v3.PreserveCaseFormatterConfig";

/// How field names are written.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum KeyFormat {
    /// As held: lower-case.
    #[default]
    Lower,
    /// `proper_case_words`.
    ProperCase,
    /// `stateful_formatter: preserve_case`.
    PreserveCase(PreserveCase),
}

/// `PreserveCaseFormatterConfig`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PreserveCase {
    /// `forward_reason_phrase`: an upstream response's reason phrase is kept.
    pub forward_reason_phrase: bool,
    /// `formatter_type_on_envoy_headers: PROPER_CASE`: names the peer did not send are
    /// proper-cased (else lower-case).
    pub others_proper_case: bool,
}

impl KeyFormat {
    /// The format of `options` (at `path`).
    pub fn compile(
        options: Option<&Http1ProtocolOptions>,
        path: &str,
    ) -> Result<KeyFormat, ConfigError> {
        let format = options
            .and_then(|o| o.header_key_format.as_ref())
            .and_then(|k| k.header_format.as_ref());
        match format {
            None => Ok(KeyFormat::Lower),
            Some(HeaderFormat::ProperCaseWords(_)) => Ok(KeyFormat::ProperCase),
            Some(HeaderFormat::StatefulFormatter(e)) => {
                let at = format!("{path}.header_key_format.stateful_formatter.typed_config");
                let Some(any) = &e.typed_config else {
                    return Err(ConfigError::new(at, "value is required"));
                };
                let name = courier_proto::type_url::message_name(&any.type_url);
                if name != PRESERVE_CASE_TYPE {
                    return Err(ConfigError::new(
                        at,
                        format!("Didn't find a registered implementation for '{}' with type URL: '{name}'", e.name),
                    ));
                }
                let c: PreserveCaseFormatterConfig = courier_proto::unpack_any(any)
                    .map_err(|err| ConfigError::new(&at, err.to_string()))?;
                let others_proper_case = match FormatterTypeOnEnvoyHeaders::try_from(
                    c.formatter_type_on_envoy_headers,
                ) {
                    Ok(FormatterTypeOnEnvoyHeaders::Default) => false,
                    Ok(FormatterTypeOnEnvoyHeaders::ProperCase) => true,
                    Err(_) => {
                        return Err(ConfigError::new(
                            format!("{at}.formatter_type_on_envoy_headers"),
                            "value must be one of the defined enum values",
                        ))
                    }
                };
                Ok(KeyFormat::PreserveCase(PreserveCase {
                    forward_reason_phrase: c.forward_reason_phrase,
                    others_proper_case,
                }))
            }
        }
    }

    /// What a codec receiving heads in this format records of them (`preserve_case`).
    pub fn recorded(self) -> Option<PreserveCase> {
        match self {
            KeyFormat::PreserveCase(p) => Some(p),
            _ => None,
        }
    }

    /// Appends `name` to `out`: as `case` (the names the message came with) spells it,
    /// when it came with them (names it lacks lower-case or proper-cased as the recording
    /// side asked), else in this format.
    #[inline(always)]
    pub fn put_name(self, out: &mut impl bytes::BufMut, name: &[u8], case: Option<&HeaderCase>) {
        match case {
            Some(c) => put_recorded(out, name, c),
            None => self.put(out, name),
        }
    }

    /// Appends `name` to `out` in this format.
    #[inline(always)]
    pub fn put(self, out: &mut impl bytes::BufMut, name: &[u8]) {
        match self {
            // Without the names a message came with, a stateful formatter has nothing to
            // keep (Envoy's writes such a message lower-case).
            KeyFormat::Lower | KeyFormat::PreserveCase(_) => out.put_slice(name),
            KeyFormat::ProperCase => put_proper_case(out, name),
        }
    }
}

/// Appends `name` with the first letter of each word upper-cased.
#[inline(never)]
fn put_proper_case(out: &mut impl bytes::BufMut, name: &[u8]) {
    let mut start_of_word = true;
    for &b in name {
        out.put_u8(if start_of_word {
            b.to_ascii_uppercase()
        } else {
            b
        });
        start_of_word = !b.is_ascii_alphanumeric();
    }
}

/// Appends `name` as the names a message came with spell it (names it lacks lower-case or
/// proper-cased as the recording side asked): kept out of the encoders, as it is rare.
#[inline(never)]
fn put_recorded(out: &mut impl bytes::BufMut, name: &[u8], case: &HeaderCase) {
    match case.spelling(name) {
        Some(spelled) => out.put_slice(spelled),
        None if case.others_proper_case() => put_proper_case(out, name),
        None => out.put_slice(name),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn proper(name: &str) -> String {
        let mut out = Vec::new();
        KeyFormat::ProperCase.put(&mut out, name.as_bytes());
        String::from_utf8(out).expect("ascii")
    }

    #[test]
    fn recorded_names_win_over_the_format() {
        let mut c = HeaderCase::new(true, 1);
        c.record(bytes::Bytes::from_static(b"X-Foo-BAR"));
        let mut out = Vec::new();
        KeyFormat::Lower.put_name(&mut out, b"x-foo-bar", Some(&c));
        out.push(b' ');
        KeyFormat::Lower.put_name(&mut out, b"x-request-id", Some(&c));
        out.push(b' ');
        KeyFormat::ProperCase.put_name(&mut out, b"x-a", None);
        assert_eq!(out, b"X-Foo-BAR X-Request-Id X-A");
    }

    #[test]
    fn proper_case_words_as_envoy() {
        assert_eq!(proper("content-type"), "Content-Type");
        assert_eq!(proper("foo$b#$are"), "Foo$B#$Are");
        assert_eq!(
            proper("x-envoy-upstream-service-time"),
            "X-Envoy-Upstream-Service-Time"
        );
        assert_eq!(proper("x_under9score"), "X_Under9score");
    }
}
