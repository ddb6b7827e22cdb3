//! What a processing service's answers change (Envoy's ext_proc `MutationUtils` under the
//! default `HeaderMutationRules`): header mutations on a message's fields and
//! pseudo-headers, body mutations, and an immediate response's reply.

use bytes::Bytes;
use courier_proto::envoy::service::ext_proc::v3::{
    body_mutation::Mutation, BodyMutation, HeaderMutation,
};
use http::{HeaderMap, HeaderName, HeaderValue, StatusCode};

/// The pseudo-headers of a message a mutation may change besides its fields.
#[derive(Debug, Default)]
pub struct Pseudo {
    /// A request's new `:path`, if the service set one.
    pub path: Option<String>,
    /// A request's new `:method` (only when the service replaces the message).
    pub method: Option<http::Method>,
    /// A response's new `:status`.
    pub status: Option<StatusCode>,
}

/// Which kind of message a mutation applies to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Target {
    /// A request's headers (`:path` may change; `:method` when replacing).
    Request {
        /// The answer is `CONTINUE_AND_REPLACE`.
        replacing: bool,
    },
    /// A response's headers (`:status` may change).
    Response,
    /// An immediate response's reply (the same rules as a response's, as Envoy 1.40's
    /// `immediate_response_use_filter_mutation_rule`).
    Immediate,
    /// A request's or response's trailers (no pseudo-headers).
    Trailers,
}

/// Why a mutation failed the message (the text is Envoy's, the reply's details).
#[derive(Debug, thiserror::Error)]
pub enum MutationError {
    /// A name or value with characters a field may not have.
    #[error("Invalid character in set_headers mutation.")]
    InvalidSet,
    /// A name to remove with characters a field name may not have.
    #[error("Invalid character in remove_headers mutation.")]
    InvalidRemove,
    /// Both `value` and `raw_value` given.
    #[error("Only one of value or raw_value in the HeaderValue message should be set.")]
    BothValues,
}

/// What the default rules say of a change.
enum Check {
    Ok,
    /// Not done, counted in `rejected_header_mutations`.
    Ignore,
}

/// Envoy's `Checker` under the default `HeaderMutationRules`: routing fields (`host`,
/// `:authority`, `:scheme`, `:method`) and `x-envoy-*` are not set, pseudo-headers and
/// `host` not removed, `:status` only to a valid status.
fn check(target: Target, name: &str, value: &[u8], remove: bool) -> Check {
    if remove {
        let kept = name.starts_with(':') || name == "host" || name.starts_with("x-envoy");
        return if kept { Check::Ignore } else { Check::Ok };
    }
    match name {
        "host" | ":authority" | ":scheme" => Check::Ignore,
        ":method" if target == (Target::Request { replacing: true }) => Check::Ok,
        ":method" => Check::Ignore,
        ":status" => {
            let ok = std::str::from_utf8(value)
                .ok()
                .and_then(|v| v.parse::<u16>().ok())
                .is_some_and(|c| (200..=999).contains(&c));
            if ok {
                Check::Ok
            } else {
                Check::Ignore
            }
        }
        n if n.starts_with("x-envoy") => Check::Ignore,
        _ => Check::Ok,
    }
}

/// Whether `name` is a valid field name (pseudo-headers included).
fn valid_name(name: &str) -> bool {
    let bare = name.strip_prefix(':').unwrap_or(name);
    !bare.is_empty() && HeaderName::from_bytes(bare.as_bytes()).is_ok()
}

/// Whether `value` is a valid field value (no NUL, CR or LF).
fn valid_value(value: &[u8]) -> bool {
    !value.iter().any(|b| matches!(b, 0 | b'\r' | b'\n'))
}

/// Applies `m` to `headers` (and a message's pseudo-headers, into `pseudo`) as `target`
/// allows; each change the rules refuse is counted by `rejected`. `Err` fails the message.
pub fn apply_headers(
    m: &HeaderMutation,
    headers: &mut HeaderMap,
    pseudo: &mut Pseudo,
    target: Target,
    rejected: &mut dyn FnMut(),
) -> Result<(), MutationError> {
    for name in &m.remove_headers {
        if !valid_name(name) {
            rejected();
            return Err(MutationError::InvalidRemove);
        }
        let lower = name.to_ascii_lowercase();
        match check(target, &lower, b"", true) {
            Check::Ignore => rejected(),
            Check::Ok => {
                headers.remove(lower.as_str());
            }
        }
    }
    for option in &m.set_headers {
        let Some(h) = &option.header else { continue };
        if !h.value.is_empty() && !h.raw_value.is_empty() {
            rejected();
            return Err(MutationError::BothValues);
        }
        // Envoy 1.40 reads `raw_value` only (`send_header_raw_value`).
        let value = &h.raw_value[..];
        if !valid_name(&h.key) || !valid_value(value) {
            rejected();
            return Err(MutationError::InvalidSet);
        }
        let name = h.key.to_ascii_lowercase();
        // Envoy 1.40 reads `append` only (measured): `append_action` has no effect, and
        // a field is overwritten unless `append` says otherwise.
        #[allow(deprecated)]
        let append = option.append.as_ref().is_some_and(|a| a.value);
        if let Check::Ignore = check(target, &name, value, false) {
            rejected();
            continue;
        }
        set_field(headers, pseudo, target, &name, value, append);
    }
    Ok(())
}

/// Sets (or appends) one checked field.
fn set_field(
    headers: &mut HeaderMap,
    pseudo: &mut Pseudo,
    target: Target,
    name: &str,
    value: &[u8],
    append: bool,
) {
    if name.starts_with(':') {
        let text = String::from_utf8_lossy(value);
        match (name, target) {
            (":path", Target::Request { .. }) => pseudo.path = Some(text.into_owned()),
            (":method", Target::Request { .. }) => {
                pseudo.method = http::Method::from_bytes(value).ok();
            }
            (":status", Target::Response | Target::Immediate) => {
                pseudo.status = text.parse().ok().and_then(|c| StatusCode::from_u16(c).ok());
            }
            // A pseudo-header the message does not have is not a field.
            _ => {}
        }
        return;
    }
    let (Ok(n), Ok(v)) = (
        HeaderName::from_bytes(name.as_bytes()),
        HeaderValue::from_bytes(value),
    ) else {
        return;
    };
    if append {
        headers.append(n, v);
    } else {
        headers.insert(n, v);
    }
}

/// The body `m` leaves of `body` (`None`: unchanged).
pub fn apply_body(m: &BodyMutation) -> Option<Bytes> {
    match &m.mutation {
        Some(Mutation::Body(b)) => Some(Bytes::copy_from_slice(b)),
        Some(Mutation::ClearBody(true)) => Some(Bytes::new()),
        _ => None,
    }
}

/// The length a body mutation gives the body, for Envoy's `content-length` check (a
/// cleared body counts as the empty `body` field it leaves).
pub fn mutated_len(m: &BodyMutation) -> usize {
    match &m.mutation {
        Some(Mutation::Body(b)) => b.len(),
        _ => 0,
    }
}
