//! The Datadog tracer (`envoy.tracers.datadog`, `DatadogConfig`), as Envoy 1.40 runs it
//! on dd-trace-cpp: Datadog and W3C trace context in and out ([`propagation`]), agent-rate
//! sampling of new traces ([`sampler`]), and spans reported to the Datadog agent on
//! `collector_cluster` (`POST /v0.4/traces`, MessagePack) every two seconds.
//!
//! As Envoy: every span is reported, kept or not — the sampling priority goes with it
//! and the agent drops what it must. A caller's priority is kept; a new trace the
//! connection manager does not trace is `USER_DROP` (-1); else the sampler decides
//! (`_dd.p.dm`, `_dd.agent_psr`, `_dd.p.ksr`). A span is `envoy.proxy`, its resource the
//! span's name, type `web`; tags go to `meta`, except `error`, which sets the span's
//! error flag. A trace's local root carries its trace tags and `_sampling_priority_v1`;
//! a request's attempt spans (`spawn_upstream_span`) go in the same trace chunk.
//!
//! Deliberate differences: `language` is `rust` and `version` is Courier's; the
//! `DD_*` environment variables dd-trace-cpp reads are not read. Refused by path:
//! `remote_config`.

pub mod propagation;
pub mod sampler;

use std::borrow::Cow;
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant, SystemTime};

use ::http::{HeaderMap, HeaderName, HeaderValue};
use bytes::Bytes;
use courier_proto::envoy::config::trace::v3::DatadogConfig;
use courier_proto::google::protobuf::Any;

use self::propagation::{Extracted, Outgoing};
use self::sampler::Sampler;
use super::reporter::{Destination, Destinations, Reporter};
use crate::config::ConfigError;
use crate::stats::{Counter, Store, MAIN_THREAD};
use crate::upstream::async_client::{host_of, http};

/// Datadog trace chunks on their way to the main thread.
pub static REPORTER: Reporter<Agent> = Reporter::new();

/// The operation name of every span (Envoy's).
const OPERATION: &str = "envoy.proxy";

/// A compiled `DatadogConfig`.
pub struct DatadogTracer {
    agent: Arc<Agent>,
    service: Arc<str>,
}

impl DatadogTracer {
    /// Compiles a `DatadogConfig` (paths relative to `typed_config`).
    pub fn compile(any: &Any, store: &Store) -> Result<DatadogTracer, ConfigError> {
        let c: DatadogConfig = courier_proto::unpack_any(any)
            .map_err(|e| ConfigError::new("typed_config", e.to_string()))?;
        if c.remote_config.is_some() {
            return Err(ConfigError::unsupported("typed_config.remote_config"));
        }
        for (field, value) in [
            ("collector_cluster", &c.collector_cluster),
            ("service_name", &c.service_name),
        ] {
            if value.is_empty() {
                return Err(ConfigError::new(
                    format!("typed_config.{field}"),
                    "value length must be at least 1 characters",
                ));
            }
        }
        Ok(DatadogTracer {
            agent: agent(
                &c.collector_cluster,
                &c.collector_hostname,
                &c.service_name,
                store,
            ),
            service: c.service_name.as_str().into(),
        })
    }

    /// Starts a request's span: the caller's context joined, else a new trace sampled
    /// (`traced` is the connection manager's decision). The upstream's context replaces
    /// the request's.
    pub fn start(&self, traced: bool, headers: &mut HeaderMap) -> Span {
        let id = nonzero_id();
        let segment = match propagation::extract(headers) {
            Some(e) => Segment {
                priority: e.priority.unwrap_or_else(|| {
                    if traced {
                        self.agent.sampler.decide(e.trace_low).priority
                    } else {
                        -1
                    }
                }),
                decision: None,
                caller: e,
            },
            None => {
                let trace_low = id;
                let secs = SystemTime::now()
                    .duration_since(SystemTime::UNIX_EPOCH)
                    .map_or(0, |d| d.as_secs());
                let trace_high = (secs & 0xffff_ffff) << 32;
                let mut caller = Extracted {
                    trace_high,
                    trace_low,
                    tags: vec![(propagation::TID.to_string(), format!("{trace_high:016x}"))],
                    ..Extracted::default()
                };
                let decision = traced.then(|| self.agent.sampler.decide(trace_low));
                let priority = decision.as_ref().map_or(-1, |d| d.priority);
                if let Some(d) = decision.as_ref().filter(|d| d.priority > 0) {
                    caller
                        .tags
                        .push(("_dd.p.dm".to_string(), d.mechanism.to_string()));
                    if d.from_agent {
                        caller
                            .tags
                            .push(("_dd.p.ksr".to_string(), sampler::format_rate(d.rate)));
                    }
                }
                Segment {
                    priority,
                    decision,
                    caller,
                }
            }
        };
        let span = Span {
            id,
            parent: segment.caller.parent,
            trace_high: segment.caller.trace_high,
            trace_low: segment.caller.trace_low,
            segment: Some(Box::new(segment)),
            sampled: true,
            start: SystemTime::now(),
            started: Instant::now(),
        };
        span.inject(&span, headers);
        span
    }

    /// An upstream attempt's span, a child of `parent`; its context replaces the one in
    /// `headers`.
    pub fn child(&self, parent: &Span, headers: &mut HeaderMap) -> Span {
        let span = Span {
            id: nonzero_id(),
            parent: parent.id,
            trace_high: parent.trace_high,
            trace_low: parent.trace_low,
            segment: None,
            sampled: true,
            start: SystemTime::now(),
            started: Instant::now(),
        };
        span.inject(parent, headers);
        span
    }

    /// An attempt's span, ended and encoded, for its request's trace chunk; `root` is
    /// the request's span.
    pub fn encode_child(
        &self,
        span: Span,
        root: &Span,
        name: &str,
        tags: Vec<(Cow<'static, str>, String)>,
    ) -> Vec<u8> {
        let mut out = Vec::with_capacity(512);
        self.encode(&mut out, &span, root, name, tags);
        out
    }

    /// Ends a request's span (named `name`, with `tags`) and reports its trace chunk:
    /// this span first, then its attempts' (`children`, encoded).
    pub fn finish(
        &self,
        span: Span,
        name: &str,
        tags: Vec<(Cow<'static, str>, String)>,
        children: Vec<Vec<u8>>,
        worker: usize,
    ) {
        let mut out = Vec::with_capacity(1024 + children.iter().map(Vec::len).sum::<usize>());
        let _ = rmp::encode::write_array_len(&mut out, 1 + children.len() as u32);
        self.encode(&mut out, &span, &span, name, tags);
        for c in children {
            out.extend_from_slice(&c);
        }
        REPORTER.submit(&self.agent, out, worker);
    }

    /// One span as the agent's v0.4 MessagePack map.
    fn encode(
        &self,
        out: &mut Vec<u8>,
        span: &Span,
        root: &Span,
        name: &str,
        tags: Vec<(Cow<'static, str>, String)>,
    ) {
        use rmp::encode::{write_f64, write_map_len, write_sint, write_str, write_uint};
        let start = span
            .start
            .duration_since(SystemTime::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos() as i64);
        let duration = span.started.elapsed().as_nanos() as i64;
        let mut error = false;
        let mut meta: Vec<(Cow<'static, str>, Cow<'_, str>)> = Vec::with_capacity(tags.len() + 8);
        for (k, v) in tags {
            if k == "error" {
                error = v == "true";
                continue;
            }
            meta.push((k, Cow::Owned(v)));
        }
        let process = process();
        meta.push((Cow::Borrowed("language"), Cow::Borrowed("rust")));
        meta.push((
            Cow::Borrowed("runtime-id"),
            Cow::Borrowed(&process.runtime_id),
        ));
        meta.push((Cow::Borrowed("version"), Cow::Borrowed(&process.version)));
        let segment = root.segment.as_deref();
        if let Some(o) = segment.and_then(|s| s.caller.origin.as_deref()) {
            meta.push((Cow::Borrowed("_dd.origin"), Cow::Borrowed(o)));
        }
        let mut metrics: Vec<(&str, f64)> = vec![("process_id", f64::from(process.pid))];
        // The trace's own tags and its priority go on its local root, which Envoy also
        // tags with the zone, empty or not.
        if let Some(s) = span.segment.as_deref() {
            if !meta.iter().any(|(k, _)| k == "zone") {
                meta.push((Cow::Borrowed("zone"), Cow::Borrowed("")));
            }
            for (k, v) in &s.caller.tags {
                meta.push((Cow::Owned(k.clone()), Cow::Borrowed(v)));
            }
            if let Some(p) = &s.caller.w3c_parent {
                meta.push((Cow::Borrowed("_dd.parent_id"), Cow::Borrowed(p)));
            }
            if let Some(d) = &s.decision {
                metrics.push(("_dd.agent_psr", d.rate));
            }
            metrics.push(("_sampling_priority_v1", f64::from(s.priority)));
        }
        let _ = write_map_len(out, 12);
        let text = |out: &mut Vec<u8>, k: &str, v: &str| {
            let _ = write_str(out, k);
            let _ = write_str(out, v);
        };
        text(out, "service", &self.service);
        text(out, "name", OPERATION);
        text(out, "resource", name);
        let number = |out: &mut Vec<u8>, k: &str, v: u64| {
            let _ = write_str(out, k);
            let _ = write_uint(out, v);
        };
        number(out, "trace_id", span.trace_low);
        number(out, "span_id", span.id);
        number(out, "parent_id", span.parent);
        let _ = write_str(out, "start");
        let _ = write_sint(out, start);
        let _ = write_str(out, "duration");
        let _ = write_sint(out, duration);
        let _ = write_str(out, "error");
        let _ = write_sint(out, i64::from(error));
        let _ = write_str(out, "meta");
        let _ = write_map_len(out, meta.len() as u32);
        for (k, v) in &meta {
            let _ = write_str(out, k);
            let _ = write_str(out, v);
        }
        let _ = write_str(out, "metrics");
        let _ = write_map_len(out, metrics.len() as u32);
        for (k, v) in metrics {
            let _ = write_str(out, k);
            let _ = write_f64(out, v);
        }
        let _ = write_str(out, "type");
        let _ = write_str(out, "web");
    }
}

/// A random id that is not zero (zero means "none" in Datadog's ids).
fn nonzero_id() -> u64 {
    loop {
        let id = fastrand::u64(..);
        if id != 0 {
            return id;
        }
    }
}

/// What every span says of the process: its pid, a runtime id of its own, the version.
struct Process {
    pid: u32,
    runtime_id: String,
    version: String,
}

fn process() -> &'static Process {
    static PROCESS: OnceLock<Process> = OnceLock::new();
    PROCESS.get_or_init(|| {
        let r = fastrand::u128(..);
        let hex = format!("{r:032x}");
        Process {
            pid: std::process::id(),
            runtime_id: format!(
                "{}-{}-4{}-{}-{}",
                &hex[..8],
                &hex[8..12],
                &hex[13..16],
                &hex[16..20],
                &hex[20..]
            ),
            version: format!("courier {}/{}", crate::GIT_REVISION, crate::VERSION),
        }
    })
}

/// The trace a request's span roots here: its caller's context (or the new trace's) and
/// its sampling.
struct Segment {
    caller: Extracted,
    priority: i32,
    /// The sampler's decision, when it made one.
    decision: Option<sampler::Decision>,
}

/// A span while it runs.
pub struct Span {
    trace_high: u64,
    trace_low: u64,
    id: u64,
    parent: u64,
    /// The request's span has its trace's context; an attempt's has none.
    segment: Option<Box<Segment>>,
    /// Always: every span goes to the agent, which samples by its priority.
    pub sampled: bool,
    start: SystemTime,
    started: Instant,
}

impl Span {
    /// The trace id and the span's own.
    pub fn ids(&self) -> crate::tracers::SpanIds {
        crate::tracers::SpanIds {
            trace: (u128::from(self.trace_high) << 64) | u128::from(self.trace_low),
            span: Some(self.id),
            text: crate::tracers::TraceIdText::SpanId,
        }
    }

    /// Sends this span's context upstream; `root` is the request's span (the trace's).
    fn inject(&self, root: &Span, headers: &mut HeaderMap) {
        let Some(s) = root.segment.as_deref() else {
            return;
        };
        propagation::inject(
            &Outgoing {
                trace_high: self.trace_high,
                trace_low: self.trace_low,
                span: self.id,
                priority: s.priority,
                origin: s.caller.origin.as_deref(),
                tags: &s.caller.tags,
                other_state: &s.caller.other_state,
            },
            headers,
        );
    }
}

/// Where trace chunks go, the sampling rates it gives back, and `tracing.datadog.*`.
pub struct Agent {
    cluster: String,
    hostname: String,
    sampler: Sampler,
    reports_sent: Arc<Counter>,
    reports_dropped: Arc<Counter>,
    reports_failed: Arc<Counter>,
    reports_skipped_no_cluster: Arc<Counter>,
    /// Courier's own: trace chunks dropped on the way (queue or batch full).
    spans_dropped: Arc<Counter>,
}

/// The agent for a cluster, host name and service (one per distinct triple: the agent's
/// rates are per service).
fn agent(cluster: &str, hostname: &str, service: &str, store: &Store) -> Arc<Agent> {
    static AGENTS: Destinations<Agent> = Destinations::new();
    AGENTS.get_or_make([cluster, hostname, service], || {
        let c = |s: &str| store.counter(&format!("tracing.datadog.{s}"));
        Agent {
            cluster: cluster.to_string(),
            hostname: if hostname.is_empty() {
                cluster.to_string()
            } else {
                hostname.to_string()
            },
            sampler: Sampler::new(service),
            reports_sent: c("reports_sent"),
            reports_dropped: c("reports_dropped"),
            reports_failed: c("reports_failed"),
            reports_skipped_no_cluster: c("reports_skipped_no_cluster"),
            spans_dropped: c("spans_dropped"),
        }
    })
}

impl Destination for Agent {
    /// A trace chunk: a MessagePack array of spans.
    type Span = Vec<u8>;
    const RUNTIME: &'static str = "tracing.datadog";
    /// dd-trace-cpp flushes on its interval only.
    const DEFAULT_MIN_FLUSH_SPANS: u64 = u64::MAX;
    const DEFAULT_FLUSH_INTERVAL_MS: u64 = 2000;

    fn spans_dropped(&self) -> Option<&Counter> {
        Some(&self.spans_dropped)
    }

    /// At most this many trace chunks wait for the next report (two seconds' worth at
    /// 5,000 requests a second): a busy proxy cannot pile spans up without bound.
    fn max_pending(&self) -> usize {
        10_000
    }

    fn timer_flushed(&self) -> Option<&Counter> {
        None
    }

    /// Posts the chunks as one MessagePack array of traces; the answer's rates feed the
    /// sampler.
    fn flush(self: Arc<Self>, chunks: Vec<Vec<u8>>) {
        let a = self;
        if host_of(&a.cluster).is_none() {
            a.reports_skipped_no_cluster.inc(MAIN_THREAD);
            return;
        }
        tokio::task::spawn_local(async move {
            let mut body = Vec::with_capacity(chunks.iter().map(Vec::len).sum::<usize>() + 5);
            let _ = rmp::encode::write_array_len(&mut body, chunks.len() as u32);
            for c in &chunks {
                body.extend_from_slice(c);
            }
            let count = HeaderValue::from(chunks.len());
            let headers = [
                (
                    HeaderName::from_static("datadog-meta-lang"),
                    HeaderValue::from_static("rust"),
                ),
                (
                    HeaderName::from_static("datadog-meta-tracer-version"),
                    HeaderValue::from_static(crate::VERSION),
                ),
                (HeaderName::from_static("x-datadog-trace-count"), count),
            ];
            let sent = http::post(http::Post {
                cluster: &a.cluster,
                path: "/v0.4/traces",
                host: &a.hostname,
                content_type: "application/msgpack",
                headers: &headers,
                body: Bytes::from(body),
                timeout: Duration::from_secs(2),
            })
            .await;
            match sent {
                Ok((200, answer)) => {
                    a.reports_sent.inc(MAIN_THREAD);
                    a.sampler.update(&answer);
                }
                Ok((status, _)) => {
                    tracing::debug!(status, cluster = %a.cluster, "datadog agent refused a report");
                    a.reports_dropped.inc(MAIN_THREAD);
                }
                Err(e) => {
                    tracing::debug!(error = %e, cluster = %a.cluster, "cannot report traces");
                    a.reports_failed.inc(MAIN_THREAD);
                }
            }
        });
    }
}
