//! How HTTP/1.1 field names are written: `Http1ProtocolOptions.header_key_format`.
//!
//! By default names go out lower-case (as they are held). `proper_case_words`, as Envoy,
//! capitalises the first character and every letter after a character that is not a
//! letter or digit (`content-type` → `Content-Type`, `foo$b#$are` → `Foo$B#$Are`): for
//! response heads written to clients (the connection manager's option) and request heads
//! written to upstreams (the cluster's). Trailers stay lower-case, as Envoy writes them.
//! The stateful formatter extensions (`preserve_case`) are refused.

use courier_proto::envoy::config::core::v3::http1_protocol_options::header_key_format::HeaderFormat;
use courier_proto::envoy::config::core::v3::Http1ProtocolOptions;

use crate::config::ConfigError;

/// How field names are written.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum KeyFormat {
    /// As held: lower-case.
    #[default]
    Lower,
    /// `proper_case_words`.
    ProperCase,
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
            Some(HeaderFormat::StatefulFormatter(_)) => Err(ConfigError::unsupported(format!(
                "{path}.header_key_format.stateful_formatter"
            ))),
        }
    }

    /// Appends `name` to `out` in this format.
    pub fn put(self, out: &mut impl bytes::BufMut, name: &[u8]) {
        match self {
            KeyFormat::Lower => out.put_slice(name),
            KeyFormat::ProperCase => {
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
        }
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
