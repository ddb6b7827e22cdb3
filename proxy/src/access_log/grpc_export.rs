//! The main thread's batching for the access loggers that export over gRPC
//! (OpenTelemetry, the access-log service): a record is built on the worker and handed to
//! the main thread through one bounded queue (a full queue drops it, counted in its
//! logger's `logs_dropped`); the main thread keeps each logger's records until its
//! `buffer_flush_interval` has passed since the first or its `buffer_size_bytes` are
//! waiting, then hands them to the logger's [`Destination`] in one batch. A worker never
//! waits on a collector.

use std::sync::{Arc, OnceLock};
use std::time::Duration;

use courier_proto::envoy::data::accesslog::v3::{HttpAccessLogEntry, TcpAccessLogEntry};
use opentelemetry_proto::tonic::logs::v1::LogRecord;
use prost::Message;

use crate::stats::{Counter, MAIN_THREAD};

/// How many records may wait for the main thread.
const QUEUE: usize = 10_000;

/// One record for a logger's batch.
pub enum Record {
    /// An OpenTelemetry log record.
    Otel(LogRecord),
    /// An access-log service HTTP entry (boxed: the queue holds many records, most of
    /// them small).
    Http(Box<HttpAccessLogEntry>),
    /// An access-log service TCP entry.
    Tcp(Box<TcpAccessLogEntry>),
}

impl Record {
    /// The record's encoded size, which `buffer_size_bytes` counts (as Envoy's
    /// `ByteSizeLong`).
    fn encoded_len(&self) -> usize {
        match self {
            Record::Otel(r) => r.encoded_len(),
            Record::Http(e) => e.encoded_len(),
            Record::Tcp(e) => e.encoded_len(),
        }
    }
}

/// A logger's batching settings and its `logs_written` / `logs_dropped` counters.
pub struct Batching {
    /// `buffer_flush_interval` (1 s when unset or zero).
    pub interval: Duration,
    /// `buffer_size_bytes` (16 KiB when unset).
    pub max_bytes: usize,
    /// Records taken into a batch (TCP entries are not counted, as in Envoy).
    pub logs_written: Arc<Counter>,
    /// Records dropped (a full queue, a collector too slow).
    pub logs_dropped: Arc<Counter>,
}

/// Where a logger's batches go; `export` runs on the main thread.
pub trait Destination: Send + Sync {
    /// The logger's batching.
    fn batching(&self) -> &Batching;
    /// Sends one batch (never blocking: a slow collector holds up nothing else).
    fn export(&self, records: Vec<Record>);
}

type Queued = (Arc<dyn Destination>, Record);

static QUEUE_IN: OnceLock<tokio::sync::mpsc::Sender<Queued>> = OnceLock::new();

/// Queues `record` for `to`'s next batch, from `worker`.
pub fn submit(to: &Arc<dyn Destination>, record: Record, worker: usize) {
    let Some(tx) = QUEUE_IN.get() else {
        to.batching().logs_dropped.inc(worker);
        return;
    };
    if tx.try_send((to.clone(), record)).is_err() {
        to.batching().logs_dropped.inc(worker);
    }
}

/// The same logger: compared by address (a trait object's vtable may differ between
/// codegen units, its data pointer does not).
fn same(a: &Arc<dyn Destination>, b: &Arc<dyn Destination>) -> bool {
    std::ptr::eq(Arc::as_ptr(a) as *const (), Arc::as_ptr(b) as *const ())
}

/// One logger's records waiting for export.
struct Pending {
    to: Arc<dyn Destination>,
    records: Vec<Record>,
    bytes: usize,
    due: tokio::time::Instant,
}

impl Pending {
    fn export(self) {
        self.to.export(self.records);
    }
}

/// Starts the main thread's batching task (once).
pub fn start() {
    let (tx, mut rx) = tokio::sync::mpsc::channel::<Queued>(QUEUE);
    if QUEUE_IN.set(tx).is_err() {
        return;
    }
    tokio::task::spawn_local(async move {
        let mut pending: Vec<Pending> = Vec::new();
        loop {
            let next = pending.iter().map(|p| p.due).min();
            let received = match next {
                Some(due) => tokio::time::timeout_at(due, rx.recv()).await,
                None => Ok(rx.recv().await),
            };
            match received {
                Ok(Some((to, record))) => {
                    // Envoy's access-log service counts its HTTP entries only (a TCP
                    // entry skips the buffer check that counts them).
                    if !matches!(record, Record::Tcp(_)) {
                        to.batching().logs_written.inc(MAIN_THREAD);
                    }
                    let at = match pending.iter().position(|p| same(&p.to, &to)) {
                        Some(i) => i,
                        None => {
                            pending.push(Pending {
                                due: tokio::time::Instant::now() + to.batching().interval,
                                to,
                                records: Vec::new(),
                                bytes: 0,
                            });
                            pending.len() - 1
                        }
                    };
                    let p = &mut pending[at];
                    p.bytes += record.encoded_len();
                    p.records.push(record);
                    if p.bytes >= p.to.batching().max_bytes {
                        pending.swap_remove(at).export();
                    }
                }
                Ok(None) => return,
                Err(_) => {
                    let now = tokio::time::Instant::now();
                    let mut i = 0;
                    while i < pending.len() {
                        if pending[i].due <= now {
                            pending.swap_remove(i).export();
                        } else {
                            i += 1;
                        }
                    }
                }
            }
        }
    });
}
