//! The flush: a snapshot of every stat with each counter latched (its delta since the
//! previous flush) and each histogram's interval values, handed to every sink.
//!
//! As Envoy does, the snapshot is taken on the main thread: workers keep writing their
//! own cells meanwhile and never wait for it. A counter is latched by its handle, so a
//! counter removed with its cluster and created again under the same name starts over
//! instead of reporting a negative (or a bogus) delta.

use std::collections::HashMap;
use std::sync::{Arc, Weak};
use std::time::SystemTime;

use courier_proto::envoy::config::core::v3::Node;

use super::{CounterSnapshot, FlushContext, GaugeSnapshot, HistogramFlush, MetricSnapshot, Sink};
use crate::stats::{Counter, Histogram, HistogramSnapshot, Store};

/// What a stat was at the previous flush.
struct Latched<T, V> {
    /// The stat itself (grouped stats have none); a `Weak` keeps its allocation, so the
    /// same address means the same stat.
    handle: Option<Weak<T>>,
    value: V,
}

/// The state kept from one flush to the next.
#[derive(Default)]
pub struct Latches {
    counters: HashMap<String, Latched<Counter, u64>>,
    histograms: HashMap<String, Latched<Histogram, HistogramSnapshot>>,
}

fn same<T>(previous: &Option<Weak<T>>, now: &Option<Arc<T>>) -> bool {
    match (previous, now) {
        (Some(w), Some(a)) => std::ptr::eq(w.as_ptr(), Arc::as_ptr(a)),
        (None, None) => true,
        _ => false,
    }
}

impl Latches {
    /// Takes a snapshot of `store` (the stats `stats_matcher` keeps), latching counters
    /// and histograms.
    pub fn snapshot(&mut self, store: &Store) -> MetricSnapshot {
        let entries = store.entries();
        let view = store.view();
        let mut counters = Vec::with_capacity(entries.counters.len());
        let mut latched = HashMap::with_capacity(entries.counters.len());
        for c in entries.counters {
            if !view.shows(&c.name) {
                continue;
            }
            let previous = self
                .counters
                .remove(&c.name)
                .filter(|l| same(&l.handle, &c.handle) && l.value <= c.value)
                .map_or(0, |l| l.value);
            counters.push(CounterSnapshot {
                delta: c.value - previous,
                value: c.value,
                used: c.used,
                name: c.name.clone(),
            });
            latched.insert(
                c.name,
                Latched {
                    handle: c.handle.as_ref().map(Arc::downgrade),
                    value: c.value,
                },
            );
        }
        self.counters = latched;
        let mut gauges: Vec<GaugeSnapshot> = entries
            .gauges
            .into_iter()
            .filter(|g| view.shows(&g.name))
            .map(|g| GaugeSnapshot {
                name: g.name,
                value: g.value,
                used: g.used,
            })
            .collect();
        let mut histograms = Vec::with_capacity(entries.histograms.len());
        let mut latched = HashMap::with_capacity(entries.histograms.len());
        for h in entries.histograms {
            if !view.shows(&h.name) {
                continue;
            }
            let previous = self
                .histograms
                .remove(&h.name)
                .filter(|l| same(&l.handle, &h.handle));
            let interval = match previous {
                Some(l) if l.value.counts.len() == h.snapshot.counts.len() => HistogramSnapshot {
                    counts: h
                        .snapshot
                        .counts
                        .iter()
                        .zip(&l.value.counts)
                        .map(|(now, before)| now.saturating_sub(*before))
                        .collect(),
                    sum: h.snapshot.sum.saturating_sub(l.value.sum),
                    bounds: h.snapshot.bounds.clone(),
                },
                _ => h.snapshot.clone(),
            };
            histograms.push(HistogramFlush {
                name: h.name.clone(),
                cumulative: h.snapshot.clone(),
                interval,
                used: h.used,
            });
            latched.insert(
                h.name,
                Latched {
                    handle: h.handle.as_ref().map(Arc::downgrade),
                    value: h.snapshot,
                },
            );
        }
        self.histograms = latched;
        counters.sort_by(|a, b| a.name.cmp(&b.name));
        gauges.sort_by(|a, b| a.name.cmp(&b.name));
        histograms.sort_by(|a, b| a.name.cmp(&b.name));
        MetricSnapshot {
            counters,
            gauges,
            histograms,
            time: SystemTime::now(),
        }
    }
}

/// The sinks and their latches, owned by the main thread.
pub struct Flusher {
    sinks: Vec<Box<dyn Sink>>,
    latches: Latches,
    store: Store,
    node: Node,
}

impl Flusher {
    /// A flusher of `store` to `sinks`.
    pub fn new(store: Store, sinks: Vec<Box<dyn Sink>>, node: Node) -> Flusher {
        Flusher {
            sinks,
            latches: Latches::default(),
            store,
            node,
        }
    }

    /// One flush: latch, then hand the snapshot to every sink. Without sinks it still
    /// latches, as Envoy's flush does.
    pub fn flush(&mut self) {
        let snapshot = self.latches.snapshot(&self.store);
        tracing::debug!(
            counters = snapshot.counters.len(),
            gauges = snapshot.gauges.len(),
            histograms = snapshot.histograms.len(),
            "flushing stats"
        );
        let cx = FlushContext {
            store: &self.store,
            node: &self.node,
        };
        for sink in &mut self.sinks {
            sink.flush(&snapshot, &cx);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::stats::MAIN_THREAD;

    #[test]
    fn counters_latch_their_delta_and_a_recreated_counter_starts_over() {
        let store = Store::new(2);
        let c = store.counter("cluster.a.upstream_rq_total");
        store.counter("cluster.a.never");
        c.add(0, 3);
        c.add(1, 2);
        let mut l = Latches::default();
        let s = l.snapshot(&store);
        let find = |s: &MetricSnapshot, n: &str| {
            s.counters
                .iter()
                .find(|c| c.name == n)
                .map(|c| (c.value, c.delta, c.used))
        };
        assert_eq!(find(&s, "cluster.a.upstream_rq_total"), Some((5, 5, true)));
        assert_eq!(find(&s, "cluster.a.never"), Some((0, 0, false)));
        c.inc(MAIN_THREAD);
        let s = l.snapshot(&store);
        assert_eq!(find(&s, "cluster.a.upstream_rq_total"), Some((6, 1, true)));
        let s = l.snapshot(&store);
        assert_eq!(find(&s, "cluster.a.upstream_rq_total"), Some((6, 0, true)));
        drop(c);
        store.remove_scope("cluster.a");
        let again = store.counter("cluster.a.upstream_rq_total");
        again.add(0, 9);
        let s = l.snapshot(&store);
        assert_eq!(find(&s, "cluster.a.upstream_rq_total"), Some((9, 9, true)));
    }

    #[test]
    fn histograms_report_their_interval() {
        let store = Store::new(1);
        let h = store.histogram("http.p.downstream_rq_time");
        h.record(0, 3);
        let mut l = Latches::default();
        let s = l.snapshot(&store);
        assert_eq!(s.histograms[0].interval.count(), 1);
        h.record(0, 7);
        h.record(0, 700);
        let s = l.snapshot(&store);
        assert_eq!(s.histograms[0].interval.count(), 2);
        assert_eq!(s.histograms[0].interval.sum, 707);
        assert_eq!(s.histograms[0].cumulative.count(), 3);
        assert!(s.histograms[0].used);
    }
}
