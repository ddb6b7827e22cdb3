//! The W3C trace context as Envoy's OpenTelemetry tracer reads and writes it:
//! `traceparent` (`{version}-{trace-id}-{parent-id}-{flags}`) and `tracestate`.
//!
//! Envoy's checks, no more: 55 characters, four dash-separated fields of 2, 32, 16 and 2
//! hex digits (either case; the version is not interpreted), a trace id and a parent id
//! that are not all zeros. The sampled flag is the flags' low bit. Multiple `tracestate`
//! fields are joined with `,` (RFC 9110 field order).

use http::HeaderMap;

/// `traceparent`.
pub const TRACEPARENT: &str = "traceparent";
/// `tracestate`.
pub const TRACESTATE: &str = "tracestate";

/// Why a `traceparent` was not taken (Envoy's reasons).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ContextError {
    /// Not 55 characters.
    #[error("invalid traceparent header length")]
    Length,
    /// Not four dash-separated fields.
    #[error("invalid traceparent hyphenation")]
    Hyphenation,
    /// A field of the wrong size.
    #[error("invalid traceparent field sizes")]
    FieldSizes,
    /// Not hex.
    #[error("invalid header hex")]
    Hex,
    /// An all-zero trace id.
    #[error("invalid trace id")]
    TraceId,
    /// An all-zero parent id.
    #[error("invalid parent id")]
    ParentId,
}

/// A caller's span context from `traceparent` (and `tracestate`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Incoming {
    /// The trace id.
    pub trace_id: [u8; 16],
    /// The caller's span: the parent of the span started here.
    pub parent_id: [u8; 8],
    /// The sampled flag.
    pub sampled: bool,
    /// `tracestate`, fields joined (empty when absent).
    pub trace_state: String,
}

/// Decodes hex digits (either case) into `out`; `false` when one is not hex.
fn decode_hex(s: &[u8], out: &mut [u8]) -> bool {
    let digit = |c: u8| (c as char).to_digit(16).map(|d| d as u8);
    for (o, pair) in out.iter_mut().zip(s.chunks_exact(2)) {
        match (digit(pair[0]), digit(pair[1])) {
            (Some(h), Some(l)) => *o = h << 4 | l,
            _ => return false,
        }
    }
    true
}

/// Parses a `traceparent` value.
pub fn parse_traceparent(v: &[u8]) -> Result<([u8; 16], [u8; 8], bool), ContextError> {
    if v.len() != 55 {
        return Err(ContextError::Length);
    }
    // Envoy splits skipping empty pieces, so "--" collapses: counted the same way here.
    let fields: Vec<&[u8]> = v.split(|&b| b == b'-').filter(|f| !f.is_empty()).collect();
    let [version, trace, parent, flags] = fields.as_slice() else {
        return Err(ContextError::Hyphenation);
    };
    if version.len() != 2 || trace.len() != 32 || parent.len() != 16 || flags.len() != 2 {
        return Err(ContextError::FieldSizes);
    }
    let (mut trace_id, mut parent_id, mut flag, mut ver) = ([0u8; 16], [0u8; 8], [0u8], [0u8]);
    if !(decode_hex(version, &mut ver)
        && decode_hex(trace, &mut trace_id)
        && decode_hex(parent, &mut parent_id)
        && decode_hex(flags, &mut flag))
    {
        return Err(ContextError::Hex);
    }
    if trace_id == [0; 16] {
        return Err(ContextError::TraceId);
    }
    if parent_id == [0; 8] {
        return Err(ContextError::ParentId);
    }
    Ok((trace_id, parent_id, flag[0] & 1 == 1))
}

/// The request's trace context: `None` without `traceparent`, an error when it is not
/// valid (Envoy then traces nothing for the request and leaves its headers as they are).
pub fn extract(headers: &HeaderMap) -> Option<Result<Incoming, ContextError>> {
    let tp = headers.get(TRACEPARENT)?;
    Some(
        parse_traceparent(tp.as_bytes()).map(|(trace_id, parent_id, sampled)| {
            let mut trace_state = String::new();
            for (i, v) in headers.get_all(TRACESTATE).iter().enumerate() {
                if i > 0 {
                    trace_state.push(',');
                }
                trace_state.push_str(&String::from_utf8_lossy(v.as_bytes()));
            }
            Incoming {
                trace_id,
                parent_id,
                sampled,
                trace_state,
            }
        }),
    )
}

/// Lower-case hex of `bytes`.
pub fn hex(bytes: &[u8]) -> String {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let mut s = String::with_capacity(bytes.len() * 2);
    for b in bytes {
        s.push(DIGITS[(b >> 4) as usize] as char);
        s.push(DIGITS[(b & 0xf) as usize] as char);
    }
    s
}

/// The `traceparent` sent upstream: version `00`, the span's own id as the parent, and
/// only the sampled bit in the flags (as Envoy writes it).
pub fn traceparent(trace_id: &[u8; 16], span_id: &[u8; 8], sampled: bool) -> String {
    format!(
        "00-{}-{}-{}",
        hex(trace_id),
        hex(span_id),
        if sampled { "01" } else { "00" }
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    const TP: &str = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";

    #[test]
    fn a_valid_traceparent_parses() {
        let (trace, parent, sampled) = parse_traceparent(TP.as_bytes()).expect("valid");
        assert_eq!(hex(&trace), "4bf92f3577b34da6a3ce929d0e0e4736");
        assert_eq!(hex(&parent), "00f067aa0ba902b7");
        assert!(sampled);
        let upper = TP.to_ascii_uppercase().replace("-01", "-02");
        let (t2, _, sampled) = parse_traceparent(upper.as_bytes()).expect("upper-case hex");
        assert_eq!(t2, trace);
        assert!(!sampled, "only the low bit samples");
        // Envoy does not interpret the version.
        assert!(parse_traceparent(TP.replacen("00", "ff", 1).as_bytes()).is_ok());
    }

    #[test]
    fn invalid_traceparents_are_refused_with_envoys_reasons() {
        let err = |s: &str| parse_traceparent(s.as_bytes()).err();
        assert_eq!(
            err("00-4bf92f35-00f067aa0ba902b7-01"),
            Some(ContextError::Length)
        );
        assert_eq!(
            err("00_4bf92f3577b34da6a3ce929d0e0e4736_00f067aa0ba902b7_01"),
            Some(ContextError::Hyphenation)
        );
        assert_eq!(
            err("000-4bf92f3577b34da6a3ce929d0e0e473-00f067aa0ba902b7-01"),
            Some(ContextError::FieldSizes)
        );
        assert_eq!(
            err("00-4bf92f3577b34da6a3ce929d0e0e473x-00f067aa0ba902b7-01"),
            Some(ContextError::Hex)
        );
        assert_eq!(
            err("00-00000000000000000000000000000000-00f067aa0ba902b7-01"),
            Some(ContextError::TraceId)
        );
        assert_eq!(
            err("00-4bf92f3577b34da6a3ce929d0e0e4736-0000000000000000-01"),
            Some(ContextError::ParentId)
        );
    }

    #[test]
    fn tracestate_fields_are_joined_and_context_is_written_back() {
        let mut h = HeaderMap::new();
        h.insert(TRACEPARENT, TP.parse().expect("value"));
        h.append(TRACESTATE, "a=1".parse().expect("value"));
        h.append(TRACESTATE, "b=2".parse().expect("value"));
        let got = extract(&h).expect("present").expect("valid");
        assert_eq!(got.trace_state, "a=1,b=2");
        assert_eq!(
            traceparent(&got.trace_id, &[0xab; 8], false),
            "00-4bf92f3577b34da6a3ce929d0e0e4736-abababababababab-00"
        );
        assert!(extract(&HeaderMap::new()).is_none());
    }
}
