//! Upstream request stats, kept as Envoy's router keeps them in three places: for a
//! cluster (`cluster.<name>.`), for a route with a `stat_prefix`
//! (`vhost.<virtual host>.route.<stat_prefix>.`) and for a virtual cluster
//! (`vhost.<virtual host>.vcluster.<name>.`, `other` for requests no virtual cluster
//! matched).
//!
//! What is counted when follows Envoy 1.40 (measured, `tests/http_request_stats.rs`):
//! `upstream_rq_total` counts attempts; a response is charged to `upstream_rq_<code>`,
//! `upstream_rq_<class>xx` and `upstream_rq_completed` only when it is the one the
//! request ends with (one the route retries is not); a timeout is charged as the reply it
//! makes (`504`, or the alternative `204`); a retry whose answer the policy would not retry
//! again is a `upstream_rq_retry_success`, one it would retry with no attempt left an
//! `upstream_rq_retry_limit_exceeded`.

use std::sync::Arc;

use arc_swap::ArcSwap;

use crate::stats::{Counter, Histogram, Store};

/// `upstream_rq_<code>`, `upstream_rq_<class>xx` and `upstream_rq_completed` under one
/// prefix.
pub struct CodeCounters {
    /// `upstream_rq_completed`.
    completed: Arc<Counter>,
    /// `upstream_rq_1xx` … `upstream_rq_5xx`.
    classes: [Arc<Counter>; 5],
    /// `upstream_rq_<code>`, created as codes are first seen. Read without a lock by every
    /// worker; a new code (rare) replaces the list.
    codes: ArcSwap<Vec<(u16, Arc<Counter>)>>,
    store: Store,
    /// The counters' common prefix, with its trailing dot.
    prefix: String,
}

impl CodeCounters {
    fn new(store: &Store, prefix: String) -> CodeCounters {
        let c = |s: &str| store.counter(&format!("{prefix}{s}"));
        CodeCounters {
            completed: c("upstream_rq_completed"),
            classes: [
                c("upstream_rq_1xx"),
                c("upstream_rq_2xx"),
                c("upstream_rq_3xx"),
                c("upstream_rq_4xx"),
                c("upstream_rq_5xx"),
            ],
            codes: ArcSwap::default(),
            store: store.clone(),
            prefix,
        }
    }

    /// Counts a request that ended with `code`.
    fn charge(&self, worker: usize, code: u16) {
        let class = (code / 100) as usize;
        if (1..=5).contains(&class) {
            self.classes[class - 1].inc(worker);
        }
        // A handful of distinct codes per set: a scan beats hashing.
        let codes = self.codes.load();
        match codes.iter().find(|(c, _)| *c == code) {
            Some((_, counter)) => counter.inc(worker),
            None => {
                drop(codes);
                let counter = self
                    .store
                    .counter(&format!("{}upstream_rq_{code}", self.prefix));
                counter.inc(worker);
                self.codes.rcu(|codes| {
                    let mut codes = Vec::clone(codes);
                    if !codes.iter().any(|(c, _)| *c == code) {
                        codes.push((code, counter.clone()));
                    }
                    codes
                });
            }
        }
        self.completed.inc(worker);
    }
}

/// One set of upstream request stats.
pub struct RequestStats {
    /// `upstream_rq_total`: attempts.
    pub total: Arc<Counter>,
    /// `upstream_rq_retry`.
    pub retry: Arc<Counter>,
    /// `upstream_rq_retry_success`.
    pub retry_success: Arc<Counter>,
    /// `upstream_rq_retry_overflow`.
    pub retry_overflow: Arc<Counter>,
    /// `upstream_rq_retry_limit_exceeded`.
    pub retry_limit_exceeded: Arc<Counter>,
    /// `upstream_rq_timeout`.
    pub timeout: Arc<Counter>,
    /// `upstream_rq_time` (ms, from the first attempt to the response head).
    pub time: Arc<Histogram>,
    codes: CodeCounters,
    /// What only a cluster counts.
    cluster: Option<Box<ClusterCodes>>,
}

/// A cluster's codes kept apart: by whether the request was internal
/// (`x-envoy-internal`), and the answers that were retried.
struct ClusterCodes {
    /// `external.`, `internal.`.
    split: [CodeCounters; 2],
    /// `retry.`: answers a retry followed (not in the cluster's other codes).
    retried: CodeCounters,
}

impl RequestStats {
    fn with(store: &Store, prefix: String, cluster: bool) -> RequestStats {
        let c = |s: &str| store.counter(&format!("{prefix}{s}"));
        RequestStats {
            total: c("upstream_rq_total"),
            retry: c("upstream_rq_retry"),
            retry_success: c("upstream_rq_retry_success"),
            retry_overflow: c("upstream_rq_retry_overflow"),
            retry_limit_exceeded: c("upstream_rq_retry_limit_exceeded"),
            timeout: c("upstream_rq_timeout"),
            time: store.histogram(&format!("{prefix}upstream_rq_time")),
            cluster: cluster.then(|| {
                Box::new(ClusterCodes {
                    split: [
                        CodeCounters::new(store, format!("{prefix}external.")),
                        CodeCounters::new(store, format!("{prefix}internal.")),
                    ],
                    retried: CodeCounters::new(store, format!("{prefix}retry.")),
                })
            }),
            codes: CodeCounters::new(store, prefix),
        }
    }

    /// A cluster's stats (`cluster.<name>.`): its codes also split by internal and
    /// external requests, and retried answers counted apart.
    pub fn cluster(store: &Store, name: &str) -> RequestStats {
        RequestStats::with(store, format!("cluster.{name}."), true)
    }

    /// A route's (`vhost.<virtual host>.route.<stat_prefix>.`) or a virtual cluster's
    /// (`vhost.<virtual host>.vcluster.<name>.`) stats: `prefix` ends with a dot.
    pub fn virtual_host(store: &Store, prefix: String) -> RequestStats {
        RequestStats::with(store, prefix, false)
    }

    /// Counts a request that ended with `code` (`upstream_rq_<code>`,
    /// `upstream_rq_<class>xx`, `upstream_rq_completed`).
    pub fn charge(&self, worker: usize, code: u16, internal: bool) {
        self.codes.charge(worker, code);
        if let Some(c) = &self.cluster {
            c.split[usize::from(internal)].charge(worker, code);
        }
    }

    /// Counts an answer a retry follows (a cluster's `retry.upstream_rq_<code>`; a route
    /// or virtual cluster does not count it).
    pub fn charge_retried(&self, worker: usize, code: u16) {
        if let Some(c) = &self.cluster {
            c.retried.charge(worker, code);
        }
    }
}

/// Where one request's upstream outcome is counted: its cluster's stats, and its route's
/// and virtual cluster's when they keep any.
#[derive(Clone, Copy)]
pub struct StatSinks<'a> {
    /// The cluster's.
    pub cluster: &'a RequestStats,
    /// The route's (`stat_prefix`).
    pub route: Option<&'a RequestStats>,
    /// The virtual cluster's.
    pub vcluster: Option<&'a RequestStats>,
    /// Whether the request is internal (`x-envoy-internal: true`).
    pub internal: bool,
}

impl StatSinks<'_> {
    fn each(self, f: impl Fn(&RequestStats)) {
        f(self.cluster);
        if let Some(s) = self.route {
            f(s);
        }
        if let Some(s) = self.vcluster {
            f(s);
        }
    }

    /// An attempt goes upstream.
    pub fn attempt(self, worker: usize) {
        self.each(|s| s.total.inc(worker));
    }

    /// A retry follows.
    pub fn retry(self, worker: usize) {
        self.each(|s| s.retry.inc(worker));
    }

    /// A retried request got an answer its policy would not retry.
    pub fn retry_success(self, worker: usize) {
        self.each(|s| s.retry_success.inc(worker));
    }

    /// The policy would retry, and no attempt is left.
    pub fn retry_limit_exceeded(self, worker: usize) {
        self.each(|s| s.retry_limit_exceeded.inc(worker));
    }

    /// The policy would retry, and the cluster's retry breaker is full.
    pub fn retry_overflow(self, worker: usize) {
        self.each(|s| s.retry_overflow.inc(worker));
    }

    /// The route timeout ended the request before its response head.
    pub fn timeout(self, worker: usize) {
        self.each(|s| s.timeout.inc(worker));
    }

    /// The request ended with `code`, after `ms` since its first attempt when the code is
    /// an upstream's.
    pub fn charge(self, worker: usize, code: u16, ms: Option<u64>) {
        self.each(|s| {
            s.charge(worker, code, self.internal);
            if let Some(ms) = ms {
                s.time.record(worker, ms);
            }
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn codes_are_counted_by_name_across_sets_of_one_prefix() {
        let store = Store::new(2);
        let a = RequestStats::virtual_host(&store, "vhost.v.route.r.".into());
        a.charge(0, 200, false);
        a.charge(1, 200, false);
        a.charge(0, 503, false);
        // A second set with the same prefix (another worker's cluster stats) shares them.
        let b = RequestStats::virtual_host(&store, "vhost.v.route.r.".into());
        b.charge(1, 503, false);
        let counters: std::collections::HashMap<String, u64> =
            store.counters().into_iter().collect();
        assert_eq!(counters["vhost.v.route.r.upstream_rq_200"], 2);
        assert_eq!(counters["vhost.v.route.r.upstream_rq_503"], 2);
        assert_eq!(counters["vhost.v.route.r.upstream_rq_2xx"], 2);
        assert_eq!(counters["vhost.v.route.r.upstream_rq_5xx"], 2);
        assert_eq!(counters["vhost.v.route.r.upstream_rq_completed"], 4);
        assert!(!counters.keys().any(|k| k.contains("external")));
    }

    #[test]
    fn a_cluster_splits_its_codes_by_internal_and_external_requests() {
        let store = Store::new(1);
        let c = RequestStats::cluster(&store, "up");
        c.charge(0, 200, false);
        c.charge(0, 200, true);
        c.charge(0, 504, false);
        let counters: std::collections::HashMap<String, u64> =
            store.counters().into_iter().collect();
        assert_eq!(counters["cluster.up.upstream_rq_200"], 2);
        assert_eq!(counters["cluster.up.external.upstream_rq_200"], 1);
        assert_eq!(counters["cluster.up.internal.upstream_rq_200"], 1);
        assert_eq!(counters["cluster.up.external.upstream_rq_5xx"], 1);
        assert_eq!(counters["cluster.up.external.upstream_rq_completed"], 2);
        assert_eq!(counters["cluster.up.internal.upstream_rq_completed"], 1);
        c.charge_retried(0, 503);
        let counters: std::collections::HashMap<String, u64> =
            store.counters().into_iter().collect();
        assert_eq!(counters["cluster.up.retry.upstream_rq_503"], 1);
        assert_eq!(counters["cluster.up.upstream_rq_completed"], 3);
    }
}
