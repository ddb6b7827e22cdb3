//! A chain's filters that decide when a connection is established (Envoy's
//! `onNewConnection`, before a TLS handshake or any byte is read): the connection limit
//! and the local rate limit. They run in chain order before the terminal filter takes
//! the connection; the first that refuses ends the walk, as Envoy's filter chain stops
//! on `StopIteration`. RBAC, which decides on the first bytes, is not among them: its
//! `onNewConnection` lets every connection on, so its place in the chain does not change
//! what these decide.

use std::sync::Arc;
use std::time::Duration;

use super::connection_limit::{ConnectionLimit, Decision, LimitGuard};
use super::local_ratelimit::NetworkLocalRateLimit;

/// One filter deciding at establishment.
pub enum NewConnectionFilter {
    /// `envoy.filters.network.connection_limit`.
    ConnectionLimit(Arc<ConnectionLimit>),
    /// `envoy.filters.network.local_ratelimit`.
    LocalRateLimit(Arc<NetworkLocalRateLimit>),
}

/// A chain's filters deciding at establishment, in order (`None`: there are none, and
/// accepting costs nothing more).
#[derive(Clone, Default)]
pub struct NewConnectionFilters(pub Option<Arc<[NewConnectionFilter]>>);

/// What a connection holds of the filters that let it in: its places in connection
/// limits, given back when it is dropped with the connection.
#[derive(Default)]
pub struct Held(Vec<LimitGuard>);

/// What the filters decide for a new connection.
pub enum Admission {
    /// It goes on to the terminal filter, holding this.
    Continue(Held),
    /// It is closed now.
    Close,
    /// It is closed after the delay (a connection limit's `delay`), holding this until
    /// then; nothing is read from it meanwhile.
    CloseAfter(Duration, Held),
}

impl NewConnectionFilters {
    /// Whether the chain has any.
    pub fn is_empty(&self) -> bool {
        self.0.is_none()
    }

    /// Asks each filter in order (each counts its decision).
    pub fn admit(&self, worker: usize) -> Admission {
        let Some(filters) = &self.0 else {
            return Admission::Continue(Held::default());
        };
        let mut held = Held::default();
        for f in filters.iter() {
            match f {
                NewConnectionFilter::ConnectionLimit(limit) => {
                    match limit.on_new_connection(worker) {
                        Decision::Disabled => {}
                        Decision::Admitted(guard) => held.0.push(guard),
                        // The places taken so far are given back with the connection.
                        Decision::Limited(_, None) => return Admission::Close,
                        Decision::Limited(guard, Some(delay)) => {
                            held.0.push(guard);
                            return Admission::CloseAfter(delay, held);
                        }
                    }
                }
                NewConnectionFilter::LocalRateLimit(rl) => {
                    if !rl.admits(worker) {
                        return Admission::Close;
                    }
                }
            }
        }
        Admission::Continue(held)
    }
}
