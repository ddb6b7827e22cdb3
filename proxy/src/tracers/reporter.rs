//! Span reporting off the data path, shared by the tracers: workers hand finished spans
//! to a bounded queue (a full queue drops the span, counted); the main thread batches
//! them per destination and flushes a batch once `<runtime prefix>.min_flush_spans` (5)
//! are waiting or `<runtime prefix>.flush_interval_ms` (5 s) has passed — Envoy's runtime
//! keys and defaults (`tracing.zipkin.*`, `tracing.opentelemetry.*`). Spans already queued
//! when a batch is due go with it, so under load a report carries more than five (Envoy
//! sends five a report from each worker): the collector receives the same spans in fewer
//! requests.
//!
//! A tracer type has one [`Reporter`] (its queue) and a [`Destination`] per collector
//! (how a batch is sent and counted).

use std::collections::HashMap;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use crate::stats::{Counter, MAIN_THREAD};

/// How many finished spans may wait for the main thread, per tracer type.
const QUEUE: usize = 10_000;

/// Where a tracer's batches go: a collector, with its counters.
pub trait Destination: Send + Sync + 'static {
    /// A finished span, as the destination wants it.
    type Span: Send + 'static;
    /// The runtime prefix of the flush keys (`tracing.zipkin`).
    const RUNTIME: &'static str;
    /// How many spans make a batch due, when the runtime does not say.
    const DEFAULT_MIN_FLUSH_SPANS: u64 = 5;
    /// How often waiting spans are flushed, when the runtime does not say.
    const DEFAULT_FLUSH_INTERVAL_MS: u64 = 5000;
    /// Counts a span dropped on the way (queue full or cache full), if the tracer counts
    /// them.
    fn spans_dropped(&self) -> Option<&Counter>;
    /// Counts a flush on the interval rather than on the span count, if the tracer
    /// counts them.
    fn timer_flushed(&self) -> Option<&Counter>;
    /// How many spans may wait for a flush at most (more are dropped).
    fn max_pending(&self) -> usize {
        usize::MAX
    }
    /// Sends one batch (main thread; in a task of its own so a slow collector holds up
    /// nothing else).
    fn flush(self: Arc<Self>, spans: Vec<Self::Span>);
}

/// A tracer type's queue from the workers to the main thread.
pub struct Reporter<D: Destination> {
    queue: OnceLock<tokio::sync::mpsc::Sender<(Arc<D>, D::Span)>>,
}

impl<D: Destination> Default for Reporter<D> {
    fn default() -> Self {
        Self::new()
    }
}

impl<D: Destination> Reporter<D> {
    /// A reporter not yet started (spans submitted before [`Reporter::start`] are dropped).
    pub const fn new() -> Self {
        Reporter {
            queue: OnceLock::new(),
        }
    }

    /// Queues a span for `dest` (from any thread); a full queue drops it.
    pub fn submit(&self, dest: &Arc<D>, span: D::Span, worker: usize) {
        let Some(tx) = self.queue.get() else {
            if let Some(c) = dest.spans_dropped() {
                c.inc(worker);
            }
            return;
        };
        if let Err(
            tokio::sync::mpsc::error::TrySendError::Full((d, _))
            | tokio::sync::mpsc::error::TrySendError::Closed((d, _)),
        ) = tx.try_send((dest.clone(), span))
        {
            if let Some(c) = d.spans_dropped() {
                c.inc(worker);
            }
        }
    }

    /// Starts the main thread's batching task (once).
    pub fn start(&'static self) {
        let (tx, mut rx) = tokio::sync::mpsc::channel::<(Arc<D>, D::Span)>(QUEUE);
        if self.queue.set(tx).is_err() {
            return;
        }
        let interval_key = format!("{}.flush_interval_ms", D::RUNTIME);
        let min_key = format!("{}.min_flush_spans", D::RUNTIME);
        tokio::task::spawn_local(async move {
            let mut pending: Vec<(Arc<D>, Vec<D::Span>)> = Vec::new();
            let interval = || {
                Duration::from_millis(
                    crate::layered_runtime::snapshot()
                        .get_integer(&interval_key, D::DEFAULT_FLUSH_INTERVAL_MS),
                )
            };
            // A deadline, not a timeout per receive: a trickle of spans below the minimum
            // must not keep putting the flush off.
            let mut due = tokio::time::Instant::now() + interval();
            loop {
                let received = tokio::time::timeout_at(due, rx.recv()).await;
                let min = crate::layered_runtime::snapshot()
                    .get_integer(&min_key, D::DEFAULT_MIN_FLUSH_SPANS)
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
                        for (dest, span) in batch {
                            let at = match pending.iter().position(|(d, _)| Arc::ptr_eq(d, &dest)) {
                                Some(i) => i,
                                None => {
                                    pending.push((dest, Vec::new()));
                                    pending.len() - 1
                                }
                            };
                            let (dest, spans) = &mut pending[at];
                            if spans.len() >= dest.max_pending() {
                                if let Some(c) = dest.spans_dropped() {
                                    c.inc(MAIN_THREAD);
                                }
                            } else {
                                spans.push(span);
                            }
                        }
                        let mut i = 0;
                        while i < pending.len() {
                            if pending[i].1.len() >= min {
                                let (d, spans) = pending.swap_remove(i);
                                d.flush(spans);
                            } else {
                                i += 1;
                            }
                        }
                    }
                    Ok(None) => return,
                    Err(_) => {
                        due = tokio::time::Instant::now() + interval();
                        for (d, spans) in pending.drain(..) {
                            if !spans.is_empty() {
                                if let Some(c) = d.timer_flushed() {
                                    c.inc(MAIN_THREAD);
                                }
                                d.flush(spans);
                            }
                        }
                    }
                }
            }
        });
    }
}

/// A tracer type's destinations, one per distinct key (cluster, endpoint or service, host
/// name): tracers configured alike share one, with its batches and counters.
pub struct Destinations<D> {
    all: OnceLock<Mutex<HashMap<[String; 3], Arc<D>>>>,
}

impl<D> Destinations<D> {
    /// None yet.
    pub const fn new() -> Self {
        Destinations {
            all: OnceLock::new(),
        }
    }

    /// The destination for `key`, made by `make` the first time.
    pub fn get_or_make(&self, key: [&str; 3], make: impl FnOnce() -> D) -> Arc<D> {
        let mut all = self
            .all
            .get_or_init(Default::default)
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        all.entry(key.map(str::to_string))
            .or_insert_with(|| Arc::new(make()))
            .clone()
    }
}

impl<D> Default for Destinations<D> {
    fn default() -> Self {
        Self::new()
    }
}
