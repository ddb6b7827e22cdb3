//! The refusal of a request head by the HTTP/1.1 server codec: the status Envoy answers
//! it with, and whether its reply carries the reason phrase.

use http::StatusCode;

/// A request the codec refuses, with the status Envoy answers it with.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("{reason} ({status})")]
pub struct CodecError {
    /// The local reply's status.
    pub status: StatusCode,
    /// What was wrong (logged; not sent).
    pub reason: &'static str,
    /// The reply has no body: Envoy refuses this one in its connection manager, after the
    /// codec (whose replies carry the status's reason phrase).
    pub bare: bool,
}

impl CodecError {
    /// A request Envoy's codec refuses (`400` with its reason phrase as the body).
    pub(crate) fn bad(reason: &'static str) -> Self {
        CodecError {
            status: StatusCode::BAD_REQUEST,
            reason,
            bare: false,
        }
    }

    /// A request the connection manager refuses after the codec took it (`400` without a
    /// body).
    pub(crate) fn refused(reason: &'static str) -> Self {
        CodecError {
            bare: true,
            ..CodecError::bad(reason)
        }
    }

    /// A request Envoy's codec answers `403` (an `https` absolute URL on a plaintext
    /// connection).
    pub(crate) fn forbidden(reason: &'static str) -> Self {
        CodecError {
            status: StatusCode::FORBIDDEN,
            ..CodecError::bad(reason)
        }
    }

    /// A version other than 1.1 (or 1.0 where allowed).
    pub fn upgrade_required() -> Self {
        CodecError {
            status: StatusCode::UPGRADE_REQUIRED,
            reason: "unsupported HTTP version",
            bare: false,
        }
    }

    /// The head grew past the limits.
    pub fn too_large() -> Self {
        CodecError {
            status: StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE,
            reason: "request headers too large",
            bare: false,
        }
    }
}
