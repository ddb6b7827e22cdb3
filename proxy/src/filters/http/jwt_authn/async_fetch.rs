//! `remote_jwks.async_fetch`, the filter's side: which key sets the main thread fetches
//! ahead of requests, and whether each one's first fetch is over (a listener whose
//! filter has a set without `fast_listener` warms until then, as Envoy's init target).
//!
//! The fetching itself is the server's (`server::jwks_fetch`): a fetch on the
//! main thread's timer, its answer published to every worker's key set cache, where
//! requests find it without fetching. A set no request has yet (a `fast_listener`
//! set whose first fetch is pending, or one whose fetches fail) is fetched on demand by
//! the worker as without `async_fetch`.

use std::cell::RefCell;
use std::collections::HashSet;
use std::sync::Arc;

use super::provider::RemoteJwks;
use crate::stats::Counter;

thread_local! {
    /// The key sets (by [`RemoteJwks::id`]) whose first fetch is over (main thread).
    static SETTLED: RefCell<HashSet<u64>> = RefCell::new(HashSet::new());
}

/// A key set the main thread keeps fetched, with the filter's fetch counters.
pub struct AsyncKeySet {
    /// The set's config (the fetcher holds it weakly: a config gone stops its fetches).
    pub remote: Arc<RemoteJwks>,
    /// `jwt_authn.jwks_fetch_success`.
    pub success: Arc<Counter>,
    /// `jwt_authn.jwks_fetch_failed`.
    pub failed: Arc<Counter>,
}

/// Whether a listener holding `r` may serve: its first fetch is over, or it need not
/// wait for it (`fast_listener`, or no `async_fetch`).
pub fn settled(r: &RemoteJwks) -> bool {
    match r.async_fetch {
        Some(a) if !a.fast_listener => SETTLED.with(|s| s.borrow().contains(&r.id)),
        _ => true,
    }
}

/// Records that the first fetch of the set `id` is over, whatever its outcome.
pub fn mark_settled(id: u64) {
    SETTLED.with(|s| s.borrow_mut().insert(id));
}

/// Forgets the set `id` (its config is gone).
pub fn forget(id: u64) {
    SETTLED.with(|s| s.borrow_mut().remove(&id));
}
