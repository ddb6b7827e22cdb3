//! The connection limit filter (`envoy.filters.network.connection_limit`): at most
//! `max_connections` connections at once through one filter config, whichever worker
//! accepted them.
//!
//! As Envoy 1.40: the filter decides when the connection is established (its
//! `onNewConnection`, before a TLS handshake or any byte is read), in chain order. Every
//! connection it sees is counted, the ones it refuses too: a connection over the limit
//! (counted `connection_limit.<stat_prefix>.limited_connections`) holds its place until
//! it is closed — at once, or after `delay` — so refused connections lingering in their
//! delay keep later ones out as well. `connection_limit.<stat_prefix>.active_connections`
//! is that count as a gauge. A filter `runtime_enabled` turns off sees nothing.
//!
//! The count is one atomic shared by every worker (Envoy's `std::atomic` per filter
//! config): the one thing here that is not per worker, since a limit on a config's
//! connections cannot be split between workers without refusing connections another
//! worker could take. It is not the overload manager's `ConnectionPermit`: that one gives
//! its place back when refused and has no stats, where this one keeps a refused
//! connection's place until it closes.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use courier_proto::envoy::extensions::filters::network::connection_limit::v3 as pb;

use crate::config::{self, ConfigError};
use crate::layered_runtime::RuntimeFlag;
use crate::stats::{Counter, Gauge, Store};

/// A compiled connection limit filter, shared by every worker's connections.
pub struct ConnectionLimit {
    enabled: RuntimeFlag,
    max: u64,
    delay: Option<Duration>,
    /// Connections counted now, the refused ones still open included.
    count: AtomicU64,
    limited: Arc<Counter>,
    active: Arc<Gauge>,
}

/// One connection's place in a [`ConnectionLimit`]'s count, given back when the
/// connection is gone (it lives with the connection, whichever its terminal filter).
pub struct LimitGuard {
    limit: Arc<ConnectionLimit>,
    worker: usize,
}

impl Drop for LimitGuard {
    fn drop(&mut self) {
        self.limit.count.fetch_sub(1, Ordering::AcqRel);
        self.limit.active.dec(self.worker);
    }
}

/// What the filter decides for a new connection.
pub enum Decision {
    /// Turned off by `runtime_enabled`: not counted.
    Disabled,
    /// Within the limit.
    Admitted(LimitGuard),
    /// Over it: closed at once (`None`) or after the delay, its place held until then.
    Limited(LimitGuard, Option<Duration>),
}

impl ConnectionLimit {
    /// Compiles the filter's `ConnectionLimit` (paths under `typed_config`).
    pub fn compile(p: &pb::ConnectionLimit, store: &Store) -> Result<ConnectionLimit, ConfigError> {
        if p.stat_prefix.is_empty() {
            return Err(ConfigError::new(
                "stat_prefix",
                "value length must be at least 1 characters",
            ));
        }
        let max = p
            .max_connections
            .as_ref()
            .ok_or_else(|| ConfigError::new("max_connections", "value is required"))?
            .value;
        if max < 1 {
            return Err(ConfigError::new(
                "max_connections",
                "value must be greater than or equal to 1",
            ));
        }
        let delay = p
            .delay
            .as_ref()
            .map(|d| config::duration(d, "delay"))
            .transpose()?
            .filter(|d| !d.is_zero());
        let base = format!("connection_limit.{}", p.stat_prefix);
        Ok(ConnectionLimit {
            enabled: super::common::runtime_enabled(p.runtime_enabled.as_ref())?,
            max,
            delay,
            count: AtomicU64::new(0),
            limited: store.counter(&super::common::join(&base, "limited_connections")),
            active: store.gauge(&super::common::join(&base, "active_connections")),
        })
    }

    /// Envoy's `onNewConnection`: counts the connection and says whether it is within
    /// the limit.
    pub fn on_new_connection(self: &Arc<Self>, worker: usize) -> Decision {
        if !self.enabled.enabled() {
            return Decision::Disabled;
        }
        self.active.inc(worker);
        // Counted whatever the outcome (Envoy counts a refused connection too, so that
        // its close may un-count it); within the limit when the count was below it.
        let before = self.count.fetch_add(1, Ordering::AcqRel);
        let guard = LimitGuard {
            limit: self.clone(),
            worker,
        };
        if before < self.max {
            return Decision::Admitted(guard);
        }
        self.limited.inc(worker);
        tracing::trace!("connection_limit: connection limiting connection");
        Decision::Limited(guard, self.delay)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn refused_connections_hold_their_place_until_closed() {
        let store = Store::new(1);
        let p: pb::ConnectionLimit =
            courier_proto::from_yaml("{ stat_prefix: c, max_connections: 1 }").expect("config");
        let limit = Arc::new(ConnectionLimit::compile(&p, &store).expect("compiles"));
        let first = limit.on_new_connection(0);
        assert!(matches!(first, Decision::Admitted(_)));
        let second = limit.on_new_connection(0);
        assert!(matches!(second, Decision::Limited(_, None)));
        drop(first);
        // The refused one still counts: the next is refused too, until it is gone.
        assert!(matches!(limit.on_new_connection(0), Decision::Limited(..)));
        drop(second);
        assert!(matches!(limit.on_new_connection(0), Decision::Admitted(_)));
        assert_eq!(limit.limited.value(), 2);
        assert_eq!(limit.count.load(Ordering::Relaxed), 0);
    }
}
