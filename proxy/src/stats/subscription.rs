//! The stats of one xDS subscription and of one xDS stream, with Envoy's names and
//! counting rules (`GrpcSubscriptionImpl`, `GrpcStream`):
//!
//! - a subscription counts `update_attempt` when it starts and after every outcome:
//!   an accepted update (`update_success`, `update_time`, `version` — the xxHash64 of the
//!   version string —, `version_text`, `update_duration`), a rejected one
//!   (`update_rejected`), a stream failure (`update_failure`) or an initial fetch that
//!   timed out (`init_fetch_timeout`);
//! - every cluster has Envoy's configuration-update stats (`update_attempt`,
//!   `update_success`, `update_failure`, `update_empty`, `update_no_rebuild`, `version`:
//!   DNS resolutions count there); an EDS cluster's subscription shares them, under the
//!   cluster's scope, as in Envoy;
//! - a stream has `control_plane.{connected_state,pending_requests,rate_limit_enforced,
//!   identifier}`: at the root for ADS, under the subscription's scope for a stream of
//!   its own.
//!
//! Scopes: `cluster_manager.cds`, `listener_manager.lds`, `cluster.<name>` (EDS),
//! `http.<stat_prefix>.rds.<route_config>` (RDS). Only the main thread updates these, so
//! a subscription's stats are one [`StatGroup`] of plain fields.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use super::{Counter, Gauge, GaugeValue, Histogram, StatGroup, StatValue, Store, TextReadout};

/// Which stats a group holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    /// A CDS, LDS or RDS subscription.
    Subscription,
    /// A cluster without a subscription (static, DNS).
    Cluster,
    /// An EDS cluster: the cluster's stats and its subscription's.
    EdsCluster,
}

/// The counters, gauges, text and histogram of one scope's configuration updates.
struct UpdateStats {
    kind: Kind,
    init_fetch_timeout: AtomicU64,
    update_attempt: AtomicU64,
    update_failure: AtomicU64,
    update_rejected: AtomicU64,
    update_success: AtomicU64,
    update_empty: AtomicU64,
    update_no_rebuild: AtomicU64,
    update_time: AtomicU64,
    version: AtomicU64,
    version_text: Mutex<String>,
    /// `update_duration`, for subscriptions.
    update_duration: Option<Histogram>,
}

impl UpdateStats {
    fn new(kind: Kind, buckets: Arc<[f64]>) -> UpdateStats {
        let zero = || AtomicU64::new(0);
        UpdateStats {
            kind,
            init_fetch_timeout: zero(),
            update_attempt: zero(),
            update_failure: zero(),
            update_rejected: zero(),
            update_success: zero(),
            update_empty: zero(),
            update_no_rebuild: zero(),
            update_time: zero(),
            version: zero(),
            version_text: Mutex::new(String::new()),
            update_duration: (kind != Kind::Cluster).then(|| Histogram::main_thread(buckets)),
        }
    }

    fn text(&self) -> String {
        self.version_text
            .lock()
            .map(|t| t.clone())
            .unwrap_or_else(|p| p.into_inner().clone())
    }
}

impl StatGroup for UpdateStats {
    fn visit(&self, out: &mut dyn FnMut(StatValue<'_>)) {
        let get = |a: &AtomicU64| a.load(Ordering::Relaxed);
        let subscription = self.kind != Kind::Cluster;
        let cluster = self.kind != Kind::Subscription;
        if subscription {
            out(StatValue::Counter(
                "init_fetch_timeout",
                get(&self.init_fetch_timeout),
            ));
            out(StatValue::Counter(
                "update_rejected",
                get(&self.update_rejected),
            ));
            out(StatValue::Gauge(
                "update_time",
                GaugeValue::Signed(i64::try_from(get(&self.update_time)).unwrap_or(i64::MAX)),
            ));
            out(StatValue::Text("version_text", self.text()));
        }
        if cluster {
            out(StatValue::Counter("update_empty", get(&self.update_empty)));
            out(StatValue::Counter(
                "update_no_rebuild",
                get(&self.update_no_rebuild),
            ));
        }
        out(StatValue::Counter(
            "update_attempt",
            get(&self.update_attempt),
        ));
        out(StatValue::Counter(
            "update_failure",
            get(&self.update_failure),
        ));
        out(StatValue::Counter(
            "update_success",
            get(&self.update_success),
        ));
        out(StatValue::Gauge(
            "version",
            GaugeValue::Unsigned(get(&self.version)),
        ));
        if let Some(h) = &self.update_duration {
            out(StatValue::Histogram("update_duration", h.snapshot()));
        }
    }
}

/// Envoy's `SubscriptionStats` (and a cluster's configuration-update stats). Cheap to
/// clone: a handle on the scope's group.
#[derive(Clone)]
pub struct SubscriptionStats(Arc<UpdateStats>);

fn bump(a: &AtomicU64) {
    a.fetch_add(1, Ordering::Relaxed);
}

impl SubscriptionStats {
    /// A CDS, LDS or RDS subscription's stats under `scope` (e.g. `cluster_manager.cds`).
    pub fn new(store: &Store, scope: &str) -> SubscriptionStats {
        SubscriptionStats::of_kind(store, scope, Kind::Subscription)
    }

    /// A cluster's stats under `scope` (`cluster.<name>`), with its EDS subscription's
    /// when `eds`.
    pub fn for_cluster(store: &Store, scope: &str, eds: bool) -> SubscriptionStats {
        let kind = if eds { Kind::EdsCluster } else { Kind::Cluster };
        SubscriptionStats::of_kind(store, scope, kind)
    }

    fn of_kind(store: &Store, scope: &str, kind: Kind) -> SubscriptionStats {
        SubscriptionStats(store.group(
            scope,
            |g: &UpdateStats| g.kind == kind,
            || {
                UpdateStats::new(
                    kind,
                    store.view().buckets(&format!("{scope}.update_duration")),
                )
            },
        ))
    }

    /// The subscription started (or changed its names); a DNS resolution started.
    pub fn started(&self) {
        bump(&self.0.update_attempt);
    }

    /// An update was accepted; applying it took `took`.
    pub fn accepted(&self, version: &str, took: Duration) {
        let s = &self.0;
        bump(&s.update_success);
        bump(&s.update_attempt);
        s.update_time
            .store(u64::try_from(now_ms()).unwrap_or(0), Ordering::Relaxed);
        s.version.store(
            xxhash_rust::xxh64::xxh64(version.as_bytes(), 0),
            Ordering::Relaxed,
        );
        if let Ok(mut text) = s.version_text.lock() {
            text.clear();
            text.push_str(version);
        }
        if let Some(h) = &s.update_duration {
            h.record(
                super::MAIN_THREAD,
                u64::try_from(took.as_millis()).unwrap_or(u64::MAX),
            );
        }
    }

    /// An update was rejected (NACKed).
    pub fn rejected(&self) {
        bump(&self.0.update_rejected);
        bump(&self.0.update_attempt);
    }

    /// The stream serving the subscription failed or could not be opened.
    pub fn connection_failed(&self) {
        bump(&self.0.update_failure);
        bump(&self.0.update_attempt);
    }

    /// The first update did not arrive within `initial_fetch_timeout`.
    pub fn fetch_timed_out(&self) {
        bump(&self.0.init_fetch_timeout);
        bump(&self.0.update_attempt);
    }

    /// A DNS resolution succeeded (`update_success`).
    pub fn resolved(&self) {
        bump(&self.0.update_success);
    }

    /// A DNS resolution failed (`update_failure`).
    pub fn resolution_failed(&self) {
        bump(&self.0.update_failure);
    }

    /// An accepted EDS update left the hosts as they were (`update_no_rebuild`).
    pub fn not_rebuilt(&self) {
        bump(&self.0.update_no_rebuild);
    }

    /// `update_attempt` so far.
    pub fn update_attempt(&self) -> u64 {
        self.0.update_attempt.load(Ordering::Relaxed)
    }

    /// The last accepted version (empty before the first).
    pub fn version_text(&self) -> String {
        self.0.text()
    }
}

/// Envoy's `ControlPlaneStats` of one stream.
pub struct ControlPlaneStats {
    connected_state: Arc<Gauge>,
    /// `pending_requests`: requests held back (Courier never rate-limits, so 0).
    _pending_requests: Arc<Gauge>,
    /// `rate_limit_enforced`.
    _rate_limit_enforced: Arc<Counter>,
    /// `identifier`: the control plane's identifier from its responses.
    identifier: Arc<TextReadout>,
}

impl ControlPlaneStats {
    /// `control_plane.*` under `scope` (empty: at the root, as for ADS).
    pub fn new(store: &Store, scope: &str) -> ControlPlaneStats {
        let name = |s: &str| {
            if scope.is_empty() {
                format!("control_plane.{s}")
            } else {
                format!("{scope}.control_plane.{s}")
            }
        };
        ControlPlaneStats {
            connected_state: store.gauge(&name("connected_state")),
            _pending_requests: store.gauge(&name("pending_requests")),
            _rate_limit_enforced: store.counter(&name("rate_limit_enforced")),
            identifier: store.text_readout(&name("identifier")),
        }
    }

    /// `connected_state`.
    pub fn set_connected(&self, connected: bool) {
        self.connected_state.set(i64::from(connected));
    }

    /// `identifier` from a response's `control_plane.identifier`.
    pub fn set_identifier(&self, identifier: &str) {
        self.identifier.set(identifier);
    }
}

/// Milliseconds since the Unix epoch.
pub fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn version_is_envoys_xxhash64_of_the_version_text() {
        let store = Store::new(1);
        let stats = SubscriptionStats::new(&store, "cluster_manager.cds");
        stats.started();
        stats.accepted("3ff3b661416c306d", Duration::from_millis(2));
        let gauges: std::collections::HashMap<_, _> = store.gauges().into_iter().collect();
        // The value Envoy 1.40 reports for version_info "3ff3b661416c306d".
        assert_eq!(
            gauges["cluster_manager.cds.version"].to_string(),
            "15707919306193591752"
        );
        assert_eq!(stats.version_text(), "3ff3b661416c306d");
        assert_eq!(stats.update_attempt(), 2);
        // The same scope's stats are the same group.
        assert_eq!(
            SubscriptionStats::new(&store, "cluster_manager.cds").update_attempt(),
            2
        );
    }

    #[test]
    fn a_cluster_has_envoys_update_stats_and_an_eds_cluster_its_subscriptions_too() {
        let store = Store::new(1);
        SubscriptionStats::for_cluster(&store, "cluster.dns", false);
        SubscriptionStats::for_cluster(&store, "cluster.eds", true);
        let mut names: Vec<String> = store
            .counters()
            .into_iter()
            .map(|(n, _)| n)
            .chain(store.gauges().into_iter().map(|(n, _)| n))
            .chain(store.text_readouts().into_iter().map(|(n, _)| n))
            .chain(store.histograms().into_iter().map(|(n, _)| n))
            .collect();
        names.sort();
        let leaves = |scope: &str| -> Vec<&str> {
            names.iter().filter_map(|n| n.strip_prefix(scope)).collect()
        };
        assert_eq!(
            leaves("cluster.dns."),
            [
                "update_attempt",
                "update_empty",
                "update_failure",
                "update_no_rebuild",
                "update_success",
                "version"
            ]
        );
        assert_eq!(leaves("cluster.eds.").len(), 11);
        store.remove_scope("cluster.eds");
        assert!(!store
            .counters()
            .iter()
            .any(|(n, _)| n.starts_with("cluster.eds.")));
    }
}
