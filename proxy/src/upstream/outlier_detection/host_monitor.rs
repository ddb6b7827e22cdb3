//! A host's outlier counters, written by every worker that sends it requests.

use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use super::config::{EjectionType, OutlierConfig};

/// One interval's request counts.
#[derive(Debug, Default)]
pub(super) struct Bucket {
    total: AtomicU32,
    success: AtomicU32,
}

impl Bucket {
    pub(super) fn put(&self, ok: bool) {
        self.total.fetch_add(1, Ordering::Relaxed);
        if ok {
            self.success.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// The interval's counts, starting a new interval.
    pub(super) fn take(&self) -> (u32, u32) {
        (
            self.success.swap(0, Ordering::Relaxed),
            self.total.swap(0, Ordering::Relaxed),
        )
    }
}

/// What the main thread keeps of a host's ejections.
#[derive(Debug, Default)]
pub(super) struct Ejections {
    pub(super) num_ejections: u32,
    pub(super) backoff: u32,
    pub(super) jitter: Duration,
    pub(super) last_ejection: Option<Instant>,
    pub(super) last_unejection: Option<Instant>,
}

/// A host's outlier counters: the consecutive failures and this interval's counts are
/// written by every worker (atomics); the ejection record by the main thread only.
#[derive(Debug, Default)]
pub struct HostMonitor {
    consecutive_5xx: AtomicU32,
    consecutive_gateway_failure: AtomicU32,
    consecutive_local_origin_failure: AtomicU32,
    pub(super) external: Bucket,
    pub(super) local: Bucket,
    // Only the main thread locks it (workers never do).
    ejections: Mutex<Ejections>,
}

/// Up to two thresholds one result can reach.
pub(super) type Reached = [Option<EjectionType>; 2];

impl HostMonitor {
    pub(super) fn http_status(&self, code: u16, c: &OutlierConfig) -> Option<Reached> {
        let is_5xx = (500..600).contains(&code);
        self.external.put(!is_5xx);
        if !is_5xx {
            self.consecutive_5xx.store(0, Ordering::Relaxed);
            self.consecutive_gateway_failure.store(0, Ordering::Relaxed);
            return None;
        }
        let mut out: Reached = [None, None];
        if matches!(code, 502..=504) {
            // `==`, as Envoy: the threshold is reported once, when reached.
            if self
                .consecutive_gateway_failure
                .fetch_add(1, Ordering::Relaxed)
                + 1
                == c.consecutive_gateway_failure
            {
                out[0] = Some(EjectionType::ConsecutiveGatewayFailure);
            }
        } else {
            self.consecutive_gateway_failure.store(0, Ordering::Relaxed);
        }
        if self.consecutive_5xx.fetch_add(1, Ordering::Relaxed) + 1 == c.consecutive_5xx {
            out[1] = Some(EjectionType::Consecutive5xx);
        }
        Some(out)
    }

    pub(super) fn local_origin_failure(&self, c: &OutlierConfig) -> Option<Reached> {
        self.local.put(false);
        (self
            .consecutive_local_origin_failure
            .fetch_add(1, Ordering::Relaxed)
            + 1
            == c.consecutive_local_origin_failure)
            .then_some([Some(EjectionType::ConsecutiveLocalOriginFailure), None])
    }

    pub(super) fn local_origin_success(&self) {
        self.local.put(true);
        self.consecutive_local_origin_failure
            .store(0, Ordering::Relaxed);
    }

    pub(super) fn reset(&self, kind: EjectionType) {
        let counter = match kind {
            EjectionType::Consecutive5xx => &self.consecutive_5xx,
            EjectionType::ConsecutiveGatewayFailure => &self.consecutive_gateway_failure,
            EjectionType::ConsecutiveLocalOriginFailure => &self.consecutive_local_origin_failure,
            _ => return,
        };
        counter.store(0, Ordering::Relaxed);
    }

    pub(super) fn ejections(&self) -> std::sync::MutexGuard<'_, Ejections> {
        self.ejections
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}
