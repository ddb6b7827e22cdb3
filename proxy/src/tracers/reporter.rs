//! Span reporting off the data path: workers hand finished spans to a bounded queue
//! (a full queue drops the span, counted); the main thread batches them per collector
//! and posts each batch as a Zipkin v2 JSON array once `tracing.zipkin.min_flush_spans`
//! (5) are waiting or `tracing.zipkin.flush_interval_ms` (5 s) has passed — Envoy's
//! runtime keys and defaults. Spans already queued when a batch is due go with it, so
//! under load a report carries more than five (Envoy sends five a report from each
//! worker): the collector receives the same spans in fewer requests.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use bytes::Bytes;

use crate::upstream::async_client::{host_of, http};

use crate::stats::{Counter, Store, MAIN_THREAD};

/// Collectors by cluster, endpoint and host name.
type Collectors = HashMap<(String, String, String), Arc<Collector>>;

/// How many finished spans may wait for the main thread.
const QUEUE: usize = 10_000;

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
pub fn collector(cluster: &str, endpoint: &str, hostname: &str, store: &Store) -> Arc<Collector> {
    static ALL: OnceLock<Mutex<Collectors>> = OnceLock::new();
    let key = (
        cluster.to_string(),
        endpoint.to_string(),
        hostname.to_string(),
    );
    let mut all = ALL
        .get_or_init(Default::default)
        .lock()
        .unwrap_or_else(|p| p.into_inner());
    all.entry(key)
        .or_insert_with(|| {
            let c = |s: &str| store.counter(&format!("tracing.zipkin.{s}"));
            Arc::new(Collector {
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
            })
        })
        .clone()
}

/// A finished, sampled span on its way to its collector.
pub struct ReportedSpan {
    /// Its collector.
    pub collector: Arc<Collector>,
    /// The span, as Zipkin v2 JSON.
    pub span: String,
}

static QUEUE_IN: OnceLock<tokio::sync::mpsc::Sender<ReportedSpan>> = OnceLock::new();

/// Queues a span for reporting (from any thread); a full queue drops it.
pub fn submit(span: ReportedSpan, worker: usize) {
    let Some(tx) = QUEUE_IN.get() else {
        span.collector.spans_dropped.inc(worker);
        return;
    };
    if let Err(
        tokio::sync::mpsc::error::TrySendError::Full(s)
        | tokio::sync::mpsc::error::TrySendError::Closed(s),
    ) = tx.try_send(span)
    {
        s.collector.spans_dropped.inc(worker);
    }
}

/// Starts the main thread's reporter.
pub fn start() {
    let (tx, mut rx) = tokio::sync::mpsc::channel::<ReportedSpan>(QUEUE);
    if QUEUE_IN.set(tx).is_err() {
        return;
    }
    tokio::task::spawn_local(async move {
        let mut pending: Vec<(Arc<Collector>, Vec<String>)> = Vec::new();
        loop {
            let interval = Duration::from_millis(
                crate::layered_runtime::snapshot()
                    .get_integer("tracing.zipkin.flush_interval_ms", 5000),
            );
            let received = tokio::time::timeout(interval, rx.recv()).await;
            let min = crate::layered_runtime::snapshot()
                .get_integer("tracing.zipkin.min_flush_spans", 5)
                .max(1) as usize;
            match received {
                Ok(Some(first)) => {
                    // Whatever else is already queued joins this batch: under load a
                    // report carries many spans instead of one request per five.
                    let mut batch = vec![first];
                    while batch.len() < 4096 {
                        match rx.try_recv() {
                            Ok(s) => batch.push(s),
                            Err(_) => break,
                        }
                    }
                    for s in batch {
                        let at = match pending
                            .iter()
                            .position(|(c, _)| Arc::ptr_eq(c, &s.collector))
                        {
                            Some(i) => i,
                            None => {
                                pending.push((s.collector.clone(), Vec::new()));
                                pending.len() - 1
                            }
                        };
                        pending[at].1.push(s.span);
                    }
                    let mut i = 0;
                    while i < pending.len() {
                        if pending[i].1.len() >= min {
                            let (c, spans) = pending.swap_remove(i);
                            flush(c, spans);
                        } else {
                            i += 1;
                        }
                    }
                }
                Ok(None) => return,
                Err(_) => {
                    for (c, spans) in pending.drain(..) {
                        if !spans.is_empty() {
                            c.timer_flushed.inc(MAIN_THREAD);
                            flush(c, spans);
                        }
                    }
                }
            }
        }
    });
}

/// Posts one batch (in its own task: a slow collector holds up nothing else).
fn flush(c: Arc<Collector>, spans: Vec<String>) {
    if host_of(&c.cluster).is_none() {
        c.reports_skipped_no_cluster.inc(MAIN_THREAD);
        return;
    }
    c.spans_sent.add(MAIN_THREAD, spans.len() as u64);
    tokio::task::spawn_local(async move {
        let mut body = String::with_capacity(spans.iter().map(|s| s.len() + 1).sum::<usize>() + 2);
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
