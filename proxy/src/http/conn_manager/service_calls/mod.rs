//! Filters' calls to services before a request goes on: what a filter builds is sent
//! from the worker through the router's async client (`http::router::async_client`), and
//! the answer handed back to the filter, which never reaches the router itself.
//!
//! - [`ext_authz`]: an authorization check (gRPC or HTTP), the request body held first
//!   when the filter asks for it.
//! - [`ext_proc`]: a request and its answer processed by a service over one gRPC stream
//!   (the router's `async_stream`).
//! - [`ratelimit`]: a global rate limit check.
//! - [`jwks`]: the remote key sets JWT providers verify tokens with.
//! - [`oauth2`]: the OAuth2 filter's token endpoint calls (code exchange, refresh).
//! - [`lua`]: a Lua script's `httpCall()`.

pub mod ext_authz;
pub mod ext_proc;
pub mod jwks;
pub mod lua;
pub mod oauth2;
pub mod ratelimit;

use std::rc::Rc;

use http::StatusCode;

use crate::filters::http::ClusterCounters;
use crate::http::conn_manager::conn_info::ConnInfo;
use crate::http::router::pool::{self, ClusterPool};
use crate::stats::Store;
use crate::upstream::ThreadLocalClusterManager;

/// The routed cluster's counters, kept by its pool on this worker.
pub(crate) struct PoolCounters<'a> {
    pool: Rc<ClusterPool>,
    store: &'a Store,
    cluster: &'a str,
    worker: usize,
}

impl<'a> PoolCounters<'a> {
    /// The counters of the cluster named `cluster`, if this worker has it.
    pub(crate) fn of(conn: &'a ConnInfo, cluster: &'a str) -> Option<PoolCounters<'a>> {
        let info = ThreadLocalClusterManager::with(|tlcm| tlcm.get(cluster))?;
        let store = &conn.config.store;
        Some(PoolCounters {
            pool: pool::cluster_pool(&info, store, conn.worker),
            store,
            cluster,
            worker: conn.worker,
        })
    }
}

impl ClusterCounters for PoolCounters<'_> {
    fn inc(&self, leaf: &str) {
        self.pool
            .stats
            .named(self.store, self.cluster, leaf)
            .inc(self.worker);
    }

    fn charge(&self, status: StatusCode) {
        // As Envoy, a filter's answer counts as an internal request's.
        self.pool
            .stats
            .rq
            .charge(self.worker, status.as_u16(), true);
    }
}
