//! The global downstream connection limit (Envoy's `global_downstream_max_connections`
//! proactive resource): one process-wide count of accepted connections, taken by a
//! worker when it accepts and given back when the connection is gone.
//!
//! A count shared by every worker is the one thing here that is not per-worker: a limit
//! on the process's connections cannot be split without refusing connections one worker
//! could still take. It is a single atomic, never a lock.

use std::sync::atomic::{AtomicU64, Ordering};

/// Where the limit comes from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LimitSource {
    /// The `downstream_connections` resource monitor's `max_active_downstream_connections`.
    Monitor(u64),
    /// The runtime key `overload.global_downstream_max_connections` if set, else Courier's
    /// safe default (derived from the file-descriptor limit; Envoy has none).
    RuntimeOrDefault(u64),
}

/// The runtime key Envoy reads when no monitor is configured.
pub const RUNTIME_KEY: &str = "overload.global_downstream_max_connections";

static ACTIVE: AtomicU64 = AtomicU64::new(0);
/// The monitor's limit, or 0: the runtime key, else [`DEFAULT`].
static MONITOR_LIMIT: AtomicU64 = AtomicU64::new(0);
static DEFAULT: AtomicU64 = AtomicU64::new(u64::MAX);

/// Sets where the limit comes from (the main thread, at start-up, before any accept).
pub fn configure(source: LimitSource) {
    match source {
        LimitSource::Monitor(max) => MONITOR_LIMIT.store(max.max(1), Ordering::Relaxed),
        LimitSource::RuntimeOrDefault(default) => {
            MONITOR_LIMIT.store(0, Ordering::Relaxed);
            DEFAULT.store(default, Ordering::Relaxed);
        }
    }
}

/// The limit in force now (`runtime` read only when no monitor is configured).
pub fn limit() -> u64 {
    match MONITOR_LIMIT.load(Ordering::Relaxed) {
        0 => crate::layered_runtime::snapshot()
            .get_integer(RUNTIME_KEY, DEFAULT.load(Ordering::Relaxed)),
        max => max,
    }
}

/// Connections holding a permit now.
pub fn active() -> u64 {
    ACTIVE.load(Ordering::Relaxed)
}

/// One accepted connection's share of the limit; given back on drop.
#[derive(Debug)]
pub struct ConnectionPermit {
    counted: bool,
}

impl ConnectionPermit {
    /// A permit for a listener exempt from the limit (`ignore_global_conn_limit`): not
    /// counted, as in Envoy.
    pub fn exempt() -> ConnectionPermit {
        ConnectionPermit { counted: false }
    }

    /// Takes a permit unless the process is at the limit.
    pub fn try_acquire() -> Option<ConnectionPermit> {
        let limit = limit();
        // Taken first and given back if over: two workers racing for the last permit
        // cannot both get it.
        let before = ACTIVE.fetch_add(1, Ordering::AcqRel);
        if before >= limit {
            ACTIVE.fetch_sub(1, Ordering::AcqRel);
            return None;
        }
        Some(ConnectionPermit { counted: true })
    }
}

impl Drop for ConnectionPermit {
    fn drop(&mut self) {
        if self.counted {
            ACTIVE.fetch_sub(1, Ordering::AcqRel);
        }
    }
}

/// Courier's default limit when nothing configures one: the descriptors left once a
/// reserve (admin, xDS, logs, DNS) is set aside, halved because a proxied connection
/// usually holds an upstream descriptor too.
pub fn default_from_fd_limit(nofile: u64) -> u64 {
    const RESERVE: u64 = 128;
    (nofile.saturating_sub(RESERVE) / 2).max(1)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_default_leaves_room_for_upstreams_and_the_process() {
        assert_eq!(default_from_fd_limit(1024), 448);
        assert_eq!(default_from_fd_limit(1_048_576), 524_224);
        assert_eq!(default_from_fd_limit(10), 1);
    }
}
