//! The Zipkin tracer (`envoy.tracers.zipkin`, `ZipkinConfig`): B3 trace context in and
//! out (`x-b3-traceid`, `x-b3-spanid`, `x-b3-parentspanid`, `x-b3-sampled`, `x-b3-flags`),
//! one span per request — a server span for ingress, a client span for egress — and
//! spans reported as Zipkin v2 JSON to `collector_endpoint` on `collector_cluster`.
//!
//! As Envoy: a request with a B3 context joins its trace, and with `shared_span_context`
//! (the default) its server span shares the caller's span id; `x-b3-sampled` (or debug
//! `x-b3-flags: 1`) overrides the sampling decision; an unsampled request still sends a
//! context upstream, with `x-b3-sampled: 0`. Refused by path: `collector_endpoint_version`
//! other than `HTTP_JSON`, `collector_service`, `split_spans_for_request`,
//! `trace_context_option`, `timestamp_trace_ids`.

use std::borrow::Cow;
use std::fmt::Write as _;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use bytes::Bytes;

use ::http::{HeaderMap, HeaderValue};
use courier_proto::envoy::config::trace::v3::zipkin_config::CollectorEndpointVersion;
use courier_proto::envoy::config::trace::v3::ZipkinConfig;
use courier_proto::google::protobuf::Any;

use super::reporter::{Destination, Destinations, Reporter};
use crate::config::ConfigError;
use crate::stats::{Counter, Store, MAIN_THREAD};
use crate::upstream::async_client::{host_of, http};

const TRACE_ID: &str = "x-b3-traceid";
const SPAN_ID: &str = "x-b3-spanid";
const PARENT_ID: &str = "x-b3-parentspanid";
const SAMPLED: &str = "x-b3-sampled";
const FLAGS: &str = "x-b3-flags";
const SINGLE: &str = "b3";

/// A B3 context: the trace id (high and low halves) and span id, if any.
type Ids = Option<((Option<u64>, u64), u64)>;

/// The single `b3` header: `{traceid}-{spanid}[-{sampled}[-{parentspanid}]]`, or just a
/// sampling state (`0`, `1`, `d`): the ids, the parent and the sampling flag.
fn parse_single(v: &str) -> (Ids, Option<u64>, Option<bool>) {
    let flag = |f: &str| match f {
        "1" | "d" => Some(true),
        "0" => Some(false),
        _ => None,
    };
    let parts: Vec<&str> = v.split('-').collect();
    match parts.as_slice() {
        [f] => (None, None, flag(f)),
        [t, s, rest @ ..] => {
            let ids = parse_trace_id(t).zip(parse_id(s));
            let sampled = rest.first().and_then(|f| flag(f));
            let parent = rest.get(1).and_then(|p| parse_id(p));
            (ids, parent, sampled)
        }
        [] => (None, None, None),
    }
}

/// A compiled `ZipkinConfig`.
pub struct ZipkinTracer {
    collector: Arc<Collector>,
    trace_id_128bit: bool,
    shared_span_context: bool,
}

impl ZipkinTracer {
    /// Compiles a `ZipkinConfig` (paths relative to `typed_config`).
    #[allow(deprecated)] // `split_spans_for_request` is deprecated, still read by Envoy
    pub fn compile(any: &Any, store: &Store) -> Result<ZipkinTracer, ConfigError> {
        let c: ZipkinConfig = courier_proto::unpack_any(any)
            .map_err(|e| ConfigError::new("typed_config", e.to_string()))?;
        let refused = [
            ("collector_service", c.collector_service.is_some()),
            ("split_spans_for_request", c.split_spans_for_request),
            ("trace_context_option", c.trace_context_option != 0),
            ("timestamp_trace_ids", c.timestamp_trace_ids),
        ];
        if let Some((field, _)) = refused.iter().find(|(_, set)| *set) {
            return Err(ConfigError::unsupported(format!("typed_config.{field}")));
        }
        if c.collector_endpoint_version != CollectorEndpointVersion::HttpJson as i32 {
            return Err(ConfigError::unsupported(
                "typed_config.collector_endpoint_version (only HTTP_JSON)",
            ));
        }
        if c.collector_cluster.is_empty() {
            return Err(ConfigError::new(
                "typed_config.collector_cluster",
                "value length must be at least 1 characters",
            ));
        }
        if c.collector_endpoint.is_empty() {
            return Err(ConfigError::new(
                "typed_config.collector_endpoint",
                "value length must be at least 1 characters",
            ));
        }
        Ok(ZipkinTracer {
            collector: collector(
                &c.collector_cluster,
                &c.collector_endpoint,
                &c.collector_hostname,
                store,
            ),
            trace_id_128bit: c.trace_id_128bit,
            shared_span_context: c.shared_span_context.is_none_or(|b| b.value),
        })
    }

    /// Starts a span for a request whose headers are `headers`; `traced` is the sampling
    /// decision (a B3 sampled flag overrides it); a `client` span is an egress one. The
    /// upstream's B3 context replaces the request's.
    pub fn start(&self, traced: bool, client: bool, headers: &mut HeaderMap) -> Span {
        let hex = |n: &str| headers.get(n).and_then(|v| v.to_str().ok());
        // The single `b3` header, when the multi-header context is absent; the upstream
        // then gets the context the same way.
        let single = hex(SINGLE).filter(|_| hex(TRACE_ID).is_none());
        let single_format = single.is_some();
        let (incoming, parent_header, sampled_flag) = match single {
            Some(single) => parse_single(single),
            _ => (
                hex(TRACE_ID)
                    .and_then(parse_trace_id)
                    .zip(hex(SPAN_ID).and_then(parse_id)),
                hex(PARENT_ID).and_then(parse_id),
                match (hex(SAMPLED), hex(FLAGS)) {
                    (Some("1" | "true" | "d"), _) | (None, Some("1")) => Some(true),
                    (Some("0" | "false"), _) => Some(false),
                    _ => None,
                },
            ),
        };
        let sampled = sampled_flag.unwrap_or(traced);
        let server = !client;
        let (trace_high, trace_id, id, parent) = match incoming {
            Some(((high, low), caller)) if server && self.shared_span_context => {
                (high, low, caller, parent_header)
            }
            Some(((high, low), caller)) => (high, low, fastrand::u64(..), Some(caller)),
            None => {
                let low = fastrand::u64(..);
                let high = self.trace_id_128bit.then(|| fastrand::u64(..));
                (high, low, low, None)
            }
        };
        let span = Span {
            trace_high,
            trace_id,
            id,
            parent,
            sampled,
            server,
            shared: server && self.shared_span_context,
            single: single_format,
            start: SystemTime::now(),
            started: Instant::now(),
        };
        span.inject(headers);
        span
    }

    /// An upstream attempt's CLIENT span, a child of `parent`; its context replaces the
    /// one in `headers`, in the same form (multi-header or single `b3`).
    pub fn child(&self, parent: &Span, headers: &mut HeaderMap) -> Span {
        let span = Span {
            trace_high: parent.trace_high,
            trace_id: parent.trace_id,
            id: fastrand::u64(..),
            parent: Some(parent.id),
            sampled: parent.sampled,
            server: false,
            shared: false,
            single: parent.single,
            start: SystemTime::now(),
            started: Instant::now(),
        };
        span.inject(headers);
        span
    }

    /// Ends `span` (named `name`, with `tags`); a sampled span goes to the reporter, as
    /// Zipkin v2 JSON written here in one buffer.
    pub fn finish(
        &self,
        span: Span,
        name: &str,
        tags: Vec<(Cow<'static, str>, String)>,
        worker: usize,
    ) {
        if !span.sampled {
            return;
        }
        let duration = span.started.elapsed().as_micros() as u64;
        let start = span
            .start
            .duration_since(SystemTime::UNIX_EPOCH)
            .map_or(0, |d| d.as_micros() as u64);
        let info = crate::server::local_info::node();
        let mut out = String::with_capacity(640);
        let text = |out: &mut String, s: &str| {
            // A JSON string, escaped (writing to a String cannot fail).
            let _ = serde_json::to_writer(string_writer(out), s);
        };
        out.push_str("{\"traceId\":\"");
        out.push_str(&span.trace_id_hex());
        let _ = write!(out, "\",\"id\":\"{:016x}\"", span.id);
        if let Some(p) = span.parent {
            let _ = write!(out, ",\"parentId\":\"{p:016x}\"");
        }
        out.push_str(if span.server {
            ",\"kind\":\"SERVER\",\"name\":"
        } else {
            ",\"kind\":\"CLIENT\",\"name\":"
        });
        text(&mut out, name);
        let _ = write!(
            out,
            ",\"timestamp\":{start},\"duration\":{duration},\"localEndpoint\":{{\"serviceName\":"
        );
        text(&mut out, &info.cluster);
        let _ = write!(
            out,
            ",\"ipv4\":\"{}\",\"port\":0}},\"annotations\":[{{\"value\":\"{}\",\"timestamp\":{}}}],\"tags\":{{",
            crate::server::local_info::local_address(),
            if span.server { "ss" } else { "cr" },
            start + duration
        );
        for (i, (k, v)) in tags.iter().enumerate() {
            if i > 0 {
                out.push(',');
            }
            text(&mut out, k);
            out.push(':');
            text(&mut out, v);
        }
        out.push('}');
        if span.shared {
            out.push_str(",\"shared\":true");
        }
        out.push('}');
        REPORTER.submit(&self.collector, out, worker);
    }
}

/// Zipkin spans on their way to the main thread.
pub static REPORTER: Reporter<Collector> = Reporter::new();

/// Where spans go, and `tracing.zipkin.*`.
pub struct Collector {
    cluster: String,
    endpoint: String,
    hostname: String,
    spans_sent: Arc<Counter>,
    spans_dropped: Arc<Counter>,
    reports_sent: Arc<Counter>,
    reports_dropped: Arc<Counter>,
    reports_failed: Arc<Counter>,
    reports_skipped_no_cluster: Arc<Counter>,
    timer_flushed: Arc<Counter>,
}

/// The collector for a cluster, endpoint and host name (one per distinct triple).
fn collector(cluster: &str, endpoint: &str, hostname: &str, store: &Store) -> Arc<Collector> {
    static COLLECTORS: Destinations<Collector> = Destinations::new();
    COLLECTORS.get_or_make([cluster, endpoint, hostname], || {
        let c = |s: &str| store.counter(&format!("tracing.zipkin.{s}"));
        Collector {
            cluster: cluster.to_string(),
            endpoint: endpoint.to_string(),
            hostname: if hostname.is_empty() {
                cluster.to_string()
            } else {
                hostname.to_string()
            },
            spans_sent: c("spans_sent"),
            spans_dropped: c("spans_dropped"),
            reports_sent: c("reports_sent"),
            reports_dropped: c("reports_dropped"),
            reports_failed: c("reports_failed"),
            reports_skipped_no_cluster: c("reports_skipped_no_cluster"),
            timer_flushed: c("timer_flushed"),
        }
    })
}

impl Destination for Collector {
    /// A span as Zipkin v2 JSON.
    type Span = String;
    const RUNTIME: &'static str = "tracing.zipkin";

    fn spans_dropped(&self) -> Option<&Counter> {
        Some(&self.spans_dropped)
    }

    fn timer_flushed(&self) -> Option<&Counter> {
        Some(&self.timer_flushed)
    }

    /// Posts the batch as one JSON array.
    fn flush(self: Arc<Self>, spans: Vec<String>) {
        let c = self;
        if host_of(&c.cluster).is_none() {
            c.reports_skipped_no_cluster.inc(MAIN_THREAD);
            return;
        }
        c.spans_sent.add(MAIN_THREAD, spans.len() as u64);
        tokio::task::spawn_local(async move {
            let mut body =
                String::with_capacity(spans.iter().map(|s| s.len() + 1).sum::<usize>() + 2);
            body.push('[');
            body.push_str(&spans.join(","));
            body.push(']');
            let sent = http::post(http::Post {
                cluster: &c.cluster,
                path: &c.endpoint,
                host: &c.hostname,
                content_type: "application/json",
                headers: &[],
                body: Bytes::from(body),
                timeout: Duration::from_secs(5),
            })
            .await;
            match sent {
                Ok((status, _)) if (200..300).contains(&status) => c.reports_sent.inc(MAIN_THREAD),
                Ok((status, _)) => {
                    tracing::debug!(status, cluster = %c.cluster, "zipkin collector refused a report");
                    c.reports_dropped.inc(MAIN_THREAD)
                }
                Err(e) => {
                    tracing::debug!(error = %e, cluster = %c.cluster, "cannot report spans");
                    c.reports_failed.inc(MAIN_THREAD)
                }
            }
        });
    }
}

/// `serde_json::to_writer` into a `String`: serde_json writes valid UTF-8 (it escapes
/// nothing into invalid sequences), so the bytes can go straight into the string.
fn string_writer(out: &mut String) -> impl std::io::Write + '_ {
    struct W<'a>(&'a mut String);
    impl std::io::Write for W<'_> {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            match std::str::from_utf8(buf) {
                Ok(s) => {
                    self.0.push_str(s);
                    Ok(buf.len())
                }
                Err(e) => Err(std::io::Error::new(std::io::ErrorKind::InvalidData, e)),
            }
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }
    W(out)
}

/// A request's span while it runs.
pub struct Span {
    trace_high: Option<u64>,
    trace_id: u64,
    id: u64,
    parent: Option<u64>,
    /// Reported when it ends.
    pub sampled: bool,
    server: bool,
    shared: bool,
    /// The context travels in the single `b3` header (as it came).
    single: bool,
    start: SystemTime,
    started: Instant,
}

impl Span {
    /// Sends this span's B3 context upstream in `headers`, replacing any there.
    fn inject(&self, headers: &mut HeaderMap) {
        for name in [TRACE_ID, SPAN_ID, PARENT_ID, SAMPLED, FLAGS, SINGLE] {
            headers.remove(name);
        }
        let mut set = |name: &'static str, value: String| {
            if let Ok(v) = HeaderValue::from_str(&value) {
                headers.insert(name, v);
            }
        };
        let sampled = if self.sampled { "1" } else { "0" };
        if self.single {
            let mut value = format!("{}-{:016x}-{sampled}", self.trace_id_hex(), self.id);
            if let Some(p) = self.parent {
                value.push_str(&format!("-{p:016x}"));
            }
            set(SINGLE, value);
        } else {
            set(TRACE_ID, self.trace_id_hex());
            set(SPAN_ID, format!("{:016x}", self.id));
            if let Some(p) = self.parent {
                set(PARENT_ID, format!("{p:016x}"));
            }
            set(SAMPLED, sampled.to_string());
        }
    }

    /// The trace id (its high half zero for a 64-bit one); as Envoy's Zipkin spans, the
    /// span's own id is not given out.
    pub fn ids(&self) -> crate::tracers::SpanIds {
        crate::tracers::SpanIds {
            trace: (u128::from(self.trace_high.unwrap_or(0)) << 64) | u128::from(self.trace_id),
            span: None,
            text: if self.trace_high.is_some() {
                crate::tracers::TraceIdText::Hex128
            } else {
                crate::tracers::TraceIdText::Hex64
            },
        }
    }

    fn trace_id_hex(&self) -> String {
        match self.trace_high {
            Some(high) => format!("{high:016x}{:016x}", self.trace_id),
            None => format!("{:016x}", self.trace_id),
        }
    }
}

/// A 64-bit id in 16 hex digits (or fewer).
fn parse_id(s: &str) -> Option<u64> {
    (!s.is_empty() && s.len() <= 16)
        .then(|| u64::from_str_radix(s, 16).ok())
        .flatten()
}

/// A 64- or 128-bit trace id: its high and low halves.
fn parse_trace_id(s: &str) -> Option<(Option<u64>, u64)> {
    if s.len() == 32 {
        Some((Some(parse_id(&s[..16])?), parse_id(&s[16..])?))
    } else {
        Some((None, parse_id(s)?))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn b3_ids_parse_as_hex_of_64_or_128_bits() {
        assert_eq!(parse_id("a2fb4a1d1a96d312"), Some(0xa2fb4a1d1a96d312));
        assert_eq!(parse_id("xyz"), None);
        assert_eq!(
            parse_trace_id("463ac35c9f6413ad48485a3953bb6124"),
            Some((Some(0x463ac35c9f6413ad), 0x48485a3953bb6124))
        );
        assert_eq!(
            parse_trace_id("463ac35c9f6413ad"),
            Some((None, 0x463ac35c9f6413ad))
        );
    }

    #[test]
    fn the_single_b3_header_parses() {
        let (ids, parent, sampled) =
            parse_single("80f198ee56343ba864fe8b2a57d3eff7-e457b5a2e4d86bd1-1-05e3ac9a4f6e3b90");
        assert_eq!(
            ids,
            Some((
                (Some(0x80f198ee56343ba8), 0x64fe8b2a57d3eff7),
                0xe457b5a2e4d86bd1
            ))
        );
        assert_eq!((parent, sampled), (Some(0x05e3ac9a4f6e3b90), Some(true)));
        assert_eq!(parse_single("0"), (None, None, Some(false)));
    }
}
