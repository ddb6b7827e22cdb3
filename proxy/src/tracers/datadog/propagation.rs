//! Trace context in and out as Envoy's Datadog tracer (dd-trace-cpp) carries it, with its
//! default styles: Datadog's headers first (`x-datadog-trace-id`, `x-datadog-parent-id`,
//! `x-datadog-sampling-priority`, `x-datadog-origin`, `x-datadog-tags`), else W3C
//! `traceparent` with the `dd` member of `tracestate`. Both styles go upstream.
//!
//! Trace tags are the `_dd.p.*` entries of `x-datadog-tags` (others are dropped), kept
//! in the order they were added; the high half of a 128-bit trace id travels as
//! `_dd.p.tid`, added after those of a W3C `tracestate`.

use std::fmt::Write as _;

use http::{HeaderMap, HeaderValue};

use crate::tracers::opentelemetry::context;

const TRACE_ID: &str = "x-datadog-trace-id";
const PARENT_ID: &str = "x-datadog-parent-id";
const PRIORITY: &str = "x-datadog-sampling-priority";
const ORIGIN: &str = "x-datadog-origin";
const TAGS: &str = "x-datadog-tags";

/// The trace tag that carries a 128-bit trace id's high half.
pub const TID: &str = "_dd.p.tid";

/// A caller's context.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Extracted {
    /// The trace id's high and low halves.
    pub trace_high: u64,
    /// The low half (what Datadog calls the trace id).
    pub trace_low: u64,
    /// The caller's span.
    pub parent: u64,
    /// Its sampling priority, if it sent one.
    pub priority: Option<i32>,
    /// `x-datadog-origin` / `o:`.
    pub origin: Option<String>,
    /// `_dd.p.*` trace tags, in the order they came.
    pub tags: Vec<(String, String)>,
    /// From W3C: the `p:` of the `dd` member (16 zeros without one), reported as
    /// `_dd.parent_id`.
    pub w3c_parent: Option<String>,
    /// From W3C: the other vendors' `tracestate` members, sent on after `dd`.
    pub other_state: String,
}

fn header<'a>(headers: &'a HeaderMap, name: &str) -> Option<&'a str> {
    headers.get(name).and_then(|v| v.to_str().ok())
}

/// The caller's context, in the first style that has one.
pub fn extract(headers: &HeaderMap) -> Option<Extracted> {
    extract_datadog(headers).or_else(|| extract_w3c(headers))
}

fn extract_datadog(headers: &HeaderMap) -> Option<Extracted> {
    let trace_low: u64 = header(headers, TRACE_ID)?.trim().parse().ok()?;
    let parent: u64 = header(headers, PARENT_ID)?.trim().parse().ok()?;
    if trace_low == 0 {
        return None;
    }
    let mut e = Extracted {
        trace_low,
        parent,
        priority: header(headers, PRIORITY).and_then(|p| p.trim().parse().ok()),
        origin: header(headers, ORIGIN).map(str::to_string),
        ..Extracted::default()
    };
    for entry in header(headers, TAGS).unwrap_or("").split(',') {
        let Some((k, v)) = entry.split_once('=') else {
            continue;
        };
        let (k, v) = (k.trim(), v.trim());
        if k == TID {
            e.trace_high = u64::from_str_radix(v, 16).unwrap_or(0);
        }
        if k.starts_with("_dd.p.") {
            e.tags.push((k.to_string(), v.to_string()));
        }
    }
    Some(e)
}

fn extract_w3c(headers: &HeaderMap) -> Option<Extracted> {
    let incoming = context::extract(headers)?.ok()?;
    let mut e = Extracted {
        trace_high: u64::from_be_bytes(incoming.trace_id[..8].try_into().ok()?),
        trace_low: u64::from_be_bytes(incoming.trace_id[8..].try_into().ok()?),
        parent: u64::from_be_bytes(incoming.parent_id),
        w3c_parent: Some("0000000000000000".to_string()),
        ..Extracted::default()
    };
    let mut others = Vec::new();
    let mut state_priority = None;
    for member in incoming.trace_state.split(',').map(str::trim) {
        let Some(dd) = member.strip_prefix("dd=") else {
            if !member.is_empty() {
                others.push(member);
            }
            continue;
        };
        for field in dd.split(';') {
            let Some((k, v)) = field.split_once(':') else {
                continue;
            };
            match k {
                "s" => state_priority = v.parse::<i32>().ok(),
                "p" => e.w3c_parent = Some(v.to_string()),
                "o" => e.origin = Some(v.replace('~', "=")),
                _ => {
                    if let Some(tag) = k.strip_prefix("t.") {
                        e.tags.push((format!("_dd.p.{tag}"), v.replace('~', "=")));
                    }
                }
            }
        }
    }
    // The flag wins over a `dd` priority that disagrees with it.
    e.priority = Some(match (incoming.sampled, state_priority) {
        (true, Some(p)) if p > 0 => p,
        (false, Some(p)) if p <= 0 => p,
        (sampled, _) => i32::from(sampled),
    });
    e.other_state = others.join(",");
    if e.trace_high != 0 {
        e.tags
            .push((TID.to_string(), format!("{:016x}", e.trace_high)));
    }
    Some(e)
}

/// What goes upstream: a span's context in both styles.
pub struct Outgoing<'a> {
    /// The trace id's high half.
    pub trace_high: u64,
    /// Its low half.
    pub trace_low: u64,
    /// The span the upstream's work is a child of.
    pub span: u64,
    /// The trace's sampling priority.
    pub priority: i32,
    /// The trace's origin.
    pub origin: Option<&'a str>,
    /// Its `_dd.p.*` tags.
    pub tags: &'a [(String, String)],
    /// Other vendors' `tracestate` members.
    pub other_state: &'a str,
}

/// Writes `out` into `headers`, replacing any context there.
pub fn inject(out: &Outgoing<'_>, headers: &mut HeaderMap) {
    for name in [
        TRACE_ID,
        PARENT_ID,
        PRIORITY,
        ORIGIN,
        TAGS,
        context::TRACEPARENT,
        context::TRACESTATE,
    ] {
        headers.remove(name);
    }
    let mut set = |name: &'static str, value: String| {
        if let Ok(v) = HeaderValue::from_str(&value) {
            headers.insert(name, v);
        }
    };
    set(TRACE_ID, out.trace_low.to_string());
    set(PARENT_ID, out.span.to_string());
    set(PRIORITY, out.priority.to_string());
    if let Some(o) = out.origin {
        set(ORIGIN, o.to_string());
    }
    let mut tags = String::new();
    for (k, v) in out.tags {
        if !tags.is_empty() {
            tags.push(',');
        }
        let _ = write!(tags, "{k}={v}");
    }
    if !tags.is_empty() {
        set(TAGS, tags);
    }
    set(
        context::TRACEPARENT,
        format!(
            "00-{:016x}{:016x}-{:016x}-{}",
            out.trace_high,
            out.trace_low,
            out.span,
            if out.priority > 0 { "01" } else { "00" }
        ),
    );
    let mut state = format!("dd=s:{};p:{:016x}", out.priority, out.span);
    if let Some(o) = out.origin {
        let _ = write!(state, ";o:{}", o.replace('=', "~"));
    }
    // The trace id's high half is in `traceparent`.
    for (k, v) in out.tags.iter().filter(|(k, _)| k != TID) {
        if let Some(short) = k.strip_prefix("_dd.p.") {
            let _ = write!(state, ";t.{short}:{}", v.replace('=', "~"));
        }
    }
    if !out.other_state.is_empty() {
        state.push(',');
        state.push_str(out.other_state);
    }
    set(context::TRACESTATE, state);
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(pairs: &[(&'static str, &str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.insert(*k, HeaderValue::from_str(v).expect("value"));
        }
        h
    }

    #[test]
    fn datadog_headers_come_first_and_keep_only_propagated_tags() {
        let h = headers(&[
            (TRACE_ID, "1234567890"),
            (PARENT_ID, "987654321"),
            (PRIORITY, "2"),
            (TAGS, "_dd.p.tid=4bf92f3577b34da6,_dd.p.dm=-4,other=1"),
            (
                "traceparent",
                "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            ),
        ]);
        let e = extract(&h).expect("extracted");
        assert_eq!(
            (e.trace_high, e.trace_low),
            (0x4bf92f3577b34da6, 1234567890)
        );
        assert_eq!((e.parent, e.priority), (987654321, Some(2)));
        let tags: Vec<&str> = e.tags.iter().map(|(k, _)| k.as_str()).collect();
        assert_eq!(tags, ["_dd.p.tid", "_dd.p.dm"]);
        assert_eq!(e.w3c_parent, None);
    }

    #[test]
    fn w3c_context_reads_the_dd_member() {
        let h = headers(&[
            (
                "traceparent",
                "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            ),
            ("tracestate", "dd=s:2;p:0123456789abcdef;t.dm:-4,other=x"),
        ]);
        let e = extract(&h).expect("extracted");
        assert_eq!(e.trace_low, 0xa3ce929d0e0e4736);
        assert_eq!(e.priority, Some(2));
        assert_eq!(e.w3c_parent.as_deref(), Some("0123456789abcdef"));
        assert_eq!(e.other_state, "other=x");
        // A flag that disagrees with `s:` wins.
        let h = headers(&[
            (
                "traceparent",
                "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-00",
            ),
            ("tracestate", "dd=s:2"),
        ]);
        assert_eq!(extract(&h).expect("extracted").priority, Some(0));
    }

    #[test]
    fn both_styles_go_upstream() {
        let mut h = HeaderMap::new();
        let tags = [
            (TID.to_string(), "6b15382100000000".to_string()),
            ("_dd.p.dm".to_string(), "-1".to_string()),
        ];
        inject(
            &Outgoing {
                trace_high: 0x6b15382100000000,
                trace_low: 1,
                span: 2,
                priority: 1,
                origin: None,
                tags: &tags,
                other_state: "",
            },
            &mut h,
        );
        let get = |n: &str| h.get(n).and_then(|v| v.to_str().ok()).unwrap_or("");
        assert_eq!(get(TAGS), "_dd.p.tid=6b15382100000000,_dd.p.dm=-1");
        assert_eq!(
            get("traceparent"),
            "00-6b153821000000000000000000000001-0000000000000002-01"
        );
        assert_eq!(get("tracestate"), "dd=s:1;p:0000000000000002;t.dm:-1");
    }
}
