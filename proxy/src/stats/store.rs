//! The stat registry and its per-thread cells.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

/// Index of the main thread's cell (workers use `0..concurrency`).
pub const MAIN_THREAD: usize = usize::MAX;

#[repr(align(64))]
#[derive(Default)]
struct PaddedU64(AtomicU64);

#[repr(align(64))]
#[derive(Default)]
struct PaddedI64(AtomicI64);

/// A monotonically increasing count, one cell per thread.
pub struct Counter {
    cells: Box<[PaddedU64]>,
}

impl Counter {
    fn new(threads: usize) -> Self {
        Counter {
            cells: (0..threads + 1).map(|_| PaddedU64::default()).collect(),
        }
    }

    fn cell(&self, thread: usize) -> &AtomicU64 {
        let idx = thread.min(self.cells.len() - 1);
        &self.cells[idx].0
    }

    /// Adds one on `thread`'s cell (a worker index, or [`MAIN_THREAD`]).
    #[inline]
    pub fn inc(&self, thread: usize) {
        self.add(thread, 1);
    }

    /// Adds `n` on `thread`'s cell.
    #[inline]
    pub fn add(&self, thread: usize, n: u64) {
        // Only `thread` writes this cell, so a relaxed load+store is enough and avoids a
        // locked read-modify-write on the hot path.
        let cell = self.cell(thread);
        cell.store(
            cell.load(Ordering::Relaxed).wrapping_add(n),
            Ordering::Relaxed,
        );
    }

    /// The sum over all threads.
    pub fn value(&self) -> u64 {
        self.cells.iter().map(|c| c.0.load(Ordering::Relaxed)).sum()
    }
}

/// A value that goes up and down; per-thread deltas summed when read.
pub struct Gauge {
    cells: Box<[PaddedI64]>,
}

impl Gauge {
    fn new(threads: usize) -> Self {
        Gauge {
            cells: (0..threads + 1).map(|_| PaddedI64::default()).collect(),
        }
    }

    fn cell(&self, thread: usize) -> &AtomicI64 {
        let idx = thread.min(self.cells.len() - 1);
        &self.cells[idx].0
    }

    /// Adds `n` (may be negative) on `thread`'s cell.
    #[inline]
    pub fn add(&self, thread: usize, n: i64) {
        let cell = self.cell(thread);
        cell.store(
            cell.load(Ordering::Relaxed).wrapping_add(n),
            Ordering::Relaxed,
        );
    }

    /// Adds one.
    #[inline]
    pub fn inc(&self, thread: usize) {
        self.add(thread, 1);
    }

    /// Subtracts one.
    #[inline]
    pub fn dec(&self, thread: usize) {
        self.add(thread, -1);
    }

    /// Sets the gauge from the main thread (only for gauges no worker touches).
    pub fn set(&self, value: i64) {
        for (i, c) in self.cells.iter().enumerate() {
            let v = if i == self.cells.len() - 1 { value } else { 0 };
            c.0.store(v, Ordering::Relaxed);
        }
    }

    /// The sum over all threads.
    pub fn value(&self) -> i64 {
        self.cells.iter().map(|c| c.0.load(Ordering::Relaxed)).sum()
    }
}

#[derive(Default)]
struct Registry {
    counters: BTreeMap<String, Arc<Counter>>,
    gauges: BTreeMap<String, Arc<Gauge>>,
}

/// The registry of every stat by name. Cheap to clone; lookups happen on the main thread
/// when snapshots are built, never on a worker's hot path.
#[derive(Clone)]
pub struct Store {
    threads: usize,
    registry: Arc<Mutex<Registry>>,
}

impl Store {
    /// A store for `workers` worker threads.
    pub fn new(workers: usize) -> Self {
        Store {
            threads: workers,
            registry: Arc::default(),
        }
    }

    fn registry(&self) -> std::sync::MutexGuard<'_, Registry> {
        // A panic while holding the registry lock cannot leave it inconsistent (inserts
        // are atomic map operations), so a poisoned lock is still usable.
        self.registry.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The counter named `name`, created at zero on first use.
    pub fn counter(&self, name: &str) -> Arc<Counter> {
        let threads = self.threads;
        self.registry()
            .counters
            .entry(name.to_string())
            .or_insert_with(|| Arc::new(Counter::new(threads)))
            .clone()
    }

    /// The gauge named `name`, created at zero on first use.
    pub fn gauge(&self, name: &str) -> Arc<Gauge> {
        let threads = self.threads;
        self.registry()
            .gauges
            .entry(name.to_string())
            .or_insert_with(|| Arc::new(Gauge::new(threads)))
            .clone()
    }

    /// A counter outside the registry (not listed by admin `/stats`), e.g. per-host stats
    /// that Envoy shows only in `/clusters`.
    pub fn detached_counter(&self) -> Arc<Counter> {
        Arc::new(Counter::new(self.threads))
    }

    /// A gauge outside the registry.
    pub fn detached_gauge(&self) -> Arc<Gauge> {
        Arc::new(Gauge::new(self.threads))
    }

    /// Every counter's current value, by name.
    pub fn counters(&self) -> Vec<(String, u64)> {
        self.registry()
            .counters
            .iter()
            .map(|(k, v)| (k.clone(), v.value()))
            .collect()
    }

    /// Every gauge's current value, by name.
    pub fn gauges(&self) -> Vec<(String, i64)> {
        self.registry()
            .gauges
            .iter()
            .map(|(k, v)| (k.clone(), v.value()))
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cells_sum_across_threads() {
        let store = Store::new(2);
        let c = store.counter("a.b");
        c.inc(0);
        c.add(1, 5);
        c.inc(MAIN_THREAD);
        assert_eq!(store.counter("a.b").value(), 7);
        let g = store.gauge("g");
        g.inc(0);
        g.inc(1);
        g.dec(0);
        assert_eq!(g.value(), 1);
        g.set(42);
        assert_eq!(g.value(), 42);
    }
}
