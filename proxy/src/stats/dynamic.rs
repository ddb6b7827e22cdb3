//! Counters and histograms whose names are only known as requests arrive (a gRPC
//! method's, say): made through the [`Store`] the first time a name is seen, then found
//! without a lock.

use std::sync::Arc;

use arc_swap::ArcSwap;
use rustc_hash::FxHashMap;

use super::{Counter, Histogram, Store};

/// Counters by full name, created on first use. Workers read the map without a lock; a new
/// name (rare: once per name for the process's life) takes the store's lock once and
/// replaces the map.
pub struct DynamicCounters {
    store: Store,
    known: ArcSwap<FxHashMap<Box<str>, Arc<Counter>>>,
}

impl DynamicCounters {
    /// Counters made in `store`.
    pub fn new(store: &Store) -> DynamicCounters {
        DynamicCounters {
            store: store.clone(),
            known: ArcSwap::default(),
        }
    }

    /// Adds `n` to the counter `name` on thread `worker`.
    pub fn add(&self, name: &str, worker: usize, n: u64) {
        if let Some(c) = self.known.load().get(name) {
            c.add(worker, n);
            return;
        }
        let counter = self.store.counter(name);
        counter.add(worker, n);
        self.known.rcu(|known| {
            let mut known = FxHashMap::clone(known);
            known.entry(name.into()).or_insert_with(|| counter.clone());
            known
        });
    }
}

/// Histograms by full name, created on first use, as [`DynamicCounters`] are.
pub struct DynamicHistograms {
    store: Store,
    known: ArcSwap<FxHashMap<Box<str>, Arc<Histogram>>>,
}

impl DynamicHistograms {
    /// Histograms made in `store`.
    pub fn new(store: &Store) -> DynamicHistograms {
        DynamicHistograms {
            store: store.clone(),
            known: ArcSwap::default(),
        }
    }

    /// Records `value` in the histogram `name` on thread `worker`.
    pub fn record(&self, name: &str, worker: usize, value: u64) {
        if let Some(h) = self.known.load().get(name) {
            h.record(worker, value);
            return;
        }
        let histogram = self.store.histogram(name);
        histogram.record(worker, value);
        self.known.rcu(|known| {
            let mut known = FxHashMap::clone(known);
            known
                .entry(name.into())
                .or_insert_with(|| histogram.clone());
            known
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_name_is_one_counter() {
        let store = Store::new(1);
        let d = DynamicCounters::new(&store);
        d.add("cluster.c.grpc.s.m.total", 0, 1);
        d.add("cluster.c.grpc.s.m.total", 0, 2);
        assert_eq!(store.counter("cluster.c.grpc.s.m.total").value(), 3);
    }
}
