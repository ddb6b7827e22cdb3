//! Stats across a hot restart (Envoy's `StatMerger`): the parent reports counter deltas
//! and gauge values; the child adds the deltas to its counters (totals continue) and
//! holds the parent's share of `Accumulate` gauges until the parent is gone.

use std::collections::HashMap;

use super::message::StatsReply;
use crate::stats::{Store, MAIN_THREAD};

/// Envoy's gauge import modes, by name: a gauge counting live things (`*_active`,
/// `*_buffered`: connections, requests, bytes in flight) adds the parent's; every other
/// gauge (state, configuration, sizes, `server.*`) is the child's own.
pub fn accumulates(gauge: &str) -> bool {
    !gauge.starts_with("server.") && (gauge.ends_with("_active") || gauge.ends_with("_buffered"))
}

/// The parent's side: what it last reported of each counter.
#[derive(Default)]
pub struct StatsExporter {
    reported: HashMap<String, u64>,
}

impl StatsExporter {
    /// The reply to a `Stats` request.
    pub fn export(&mut self, store: &Store, num_connections: u64) -> StatsReply {
        let mut reply = StatsReply {
            num_connections,
            ..Default::default()
        };
        for (name, value) in store.counters() {
            let last = self.reported.entry(name.clone()).or_insert(0);
            let delta = value.saturating_sub(*last);
            if delta > 0 {
                *last = value;
                reply.counter_deltas.insert(name, delta);
            }
        }
        for (name, value) in store.gauges() {
            if accumulates(&name) {
                reply
                    .gauges
                    .insert(name, u64::try_from(value.as_i64()).unwrap_or(0));
            }
        }
        reply
    }
}

/// The child's side: the parent's share in each imported gauge.
#[derive(Default)]
pub struct StatsImporter {
    gauges: HashMap<String, i64>,
    /// `server.parent_connections`.
    pub parent_connections: u64,
}

impl StatsImporter {
    /// Merges a reply into `store`.
    pub fn merge(&mut self, store: &Store, reply: StatsReply) {
        for (name, delta) in reply.counter_deltas {
            store.counter(&name).add(MAIN_THREAD, delta);
        }
        // A gauge the parent no longer reports has no parent share any more.
        let mut seen = std::collections::HashSet::new();
        for (name, value) in reply.gauges {
            if !accumulates(&name) {
                continue;
            }
            let value = i64::try_from(value).unwrap_or(i64::MAX);
            let held = self.gauges.entry(name.clone()).or_insert(0);
            store.gauge(&name).add(MAIN_THREAD, value - *held);
            *held = value;
            seen.insert(name);
        }
        self.gauges.retain(|name, held| {
            if !seen.contains(name) {
                store.gauge(name).add(MAIN_THREAD, -*held);
                return false;
            }
            true
        });
        self.parent_connections = reply.num_connections;
    }

    /// The parent is gone: its share leaves the gauges (counters keep its counts).
    pub fn parent_gone(&mut self, store: &Store) {
        for (name, held) in self.gauges.drain() {
            store.gauge(&name).add(MAIN_THREAD, -held);
        }
        self.parent_connections = 0;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counters_continue_and_gauges_leave_with_the_parent() {
        let parent = Store::new(1);
        parent.counter("http.in.downstream_rq_total").add(0, 7);
        parent.gauge("http.in.downstream_cx_active").add(0, 2);
        parent.gauge("server.live").set(1);
        let mut exporter = StatsExporter::default();
        let child = Store::new(1);
        child.counter("http.in.downstream_rq_total").add(0, 1);
        let mut importer = StatsImporter::default();
        let reply = exporter.export(&parent, 2);
        assert!(!reply.gauges.contains_key("server.live"));
        importer.merge(&child, reply);
        assert_eq!(child.counter("http.in.downstream_rq_total").value(), 8);
        assert_eq!(child.gauge("http.in.downstream_cx_active").value(), 2);
        // Only what was added since is sent again.
        parent.counter("http.in.downstream_rq_total").add(0, 3);
        parent.gauge("http.in.downstream_cx_active").add(0, -1);
        importer.merge(&child, exporter.export(&parent, 1));
        assert_eq!(child.counter("http.in.downstream_rq_total").value(), 11);
        assert_eq!(child.gauge("http.in.downstream_cx_active").value(), 1);
        importer.parent_gone(&child);
        assert_eq!(child.gauge("http.in.downstream_cx_active").value(), 0);
        assert_eq!(child.counter("http.in.downstream_rq_total").value(), 11);
    }
}
