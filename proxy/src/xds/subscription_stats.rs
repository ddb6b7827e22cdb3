//! The stats of one xDS subscription and of one xDS stream, with Envoy's names and
//! counting rules (`GrpcSubscriptionImpl`, `GrpcStream`):
//!
//! - a subscription counts `update_attempt` when it starts and after every outcome:
//!   an accepted update (`update_success`, `update_time`, `version` — the xxHash64 of the
//!   version string —, `version_text`, `update_duration`), a rejected one
//!   (`update_rejected`), a stream failure (`update_failure`) or an initial fetch that
//!   timed out (`init_fetch_timeout`);
//! - a stream has `control_plane.{connected_state,pending_requests,rate_limit_enforced,
//!   identifier}`: at the root for ADS, under the subscription's scope for a stream of
//!   its own.
//!
//! Scopes: `cluster_manager.cds`, `listener_manager.lds`, `cluster.<name>` (EDS),
//! `http.<stat_prefix>.rds.<route_config>` (RDS).

use std::sync::Arc;
use std::time::Duration;

use crate::stats::{Counter, Gauge, Histogram, Store, TextReadout, MAIN_THREAD};

/// Envoy's `SubscriptionStats`.
#[derive(Clone)]
pub struct SubscriptionStats {
    /// `init_fetch_timeout`.
    pub init_fetch_timeout: Arc<Counter>,
    /// `update_attempt`.
    pub update_attempt: Arc<Counter>,
    /// `update_failure`: the stream failed.
    pub update_failure: Arc<Counter>,
    /// `update_rejected`: an update was NACKed.
    pub update_rejected: Arc<Counter>,
    /// `update_success`.
    pub update_success: Arc<Counter>,
    /// `update_time`: when the last update was accepted (ms since the epoch).
    update_time: Arc<Gauge>,
    /// `version`: xxHash64 of the last accepted version.
    version: Arc<Gauge>,
    /// `version_text`: the last accepted version.
    version_text: Arc<TextReadout>,
    /// `update_duration`: how long applying an accepted update took (ms).
    update_duration: Arc<Histogram>,
}

impl SubscriptionStats {
    /// The stats under `scope` (e.g. `cluster_manager.cds`).
    pub fn new(store: &Store, scope: &str) -> SubscriptionStats {
        let name = |s: &str| format!("{scope}.{s}");
        SubscriptionStats {
            init_fetch_timeout: store.counter(&name("init_fetch_timeout")),
            update_attempt: store.counter(&name("update_attempt")),
            update_failure: store.counter(&name("update_failure")),
            update_rejected: store.counter(&name("update_rejected")),
            update_success: store.counter(&name("update_success")),
            update_time: store.gauge(&name("update_time")),
            version: store.unsigned_gauge(&name("version")),
            version_text: store.text_readout(&name("version_text")),
            update_duration: store.main_thread_histogram(&name("update_duration")),
        }
    }

    /// The subscription started (or changed its names).
    pub fn started(&self) {
        self.update_attempt.inc(MAIN_THREAD);
    }

    /// An update was accepted; applying it took `took`.
    pub fn accepted(&self, version: &str, took: Duration) {
        self.update_success.inc(MAIN_THREAD);
        self.update_attempt.inc(MAIN_THREAD);
        self.update_time.set(now_ms());
        self.version
            .set_unsigned(xxhash_rust::xxh64::xxh64(version.as_bytes(), 0));
        self.version_text.set(version);
        self.update_duration.record(
            MAIN_THREAD,
            u64::try_from(took.as_millis()).unwrap_or(u64::MAX),
        );
    }

    /// An update was rejected (NACKed).
    pub fn rejected(&self) {
        self.update_rejected.inc(MAIN_THREAD);
        self.update_attempt.inc(MAIN_THREAD);
    }

    /// The stream serving the subscription failed or could not be opened.
    pub fn connection_failed(&self) {
        self.update_failure.inc(MAIN_THREAD);
        self.update_attempt.inc(MAIN_THREAD);
    }

    /// The first update did not arrive within `initial_fetch_timeout`.
    pub fn fetch_timed_out(&self) {
        self.init_fetch_timeout.inc(MAIN_THREAD);
        self.update_attempt.inc(MAIN_THREAD);
    }

    /// The last accepted version (empty before the first).
    pub fn version_text(&self) -> String {
        self.version_text.value()
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
        assert_eq!(stats.update_attempt.value(), 2);
    }
}
