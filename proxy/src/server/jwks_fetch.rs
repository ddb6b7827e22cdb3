//! The main thread's JWKS fetchers (`remote_jwks.async_fetch`, Envoy's
//! `JwksAsyncFetcher`): each key set a live listener's JWT filter asks to have fetched
//! ahead of requests is fetched once the cluster manager is initialised (or as its
//! listener arrives), then again `cache_duration` less 5 s after each good fetch and
//! `failed_refetch_duration` after each failed one. A good set is installed on every
//! worker, where it stays until the next good fetch (a failed fetch keeps the last good
//! set serving). The first fetch's end, good or not, lets a listener waiting on it
//! serve. Each fetch counts `jwt_authn.jwks_fetch_success` or `jwks_fetch_failed`.
//!
//! Deliberate difference: the GET itself runs on a worker's async client (the one client
//! with the cluster's TLS, load balancing and retry policy), driven from here; Envoy's
//! runs on the main thread's. What the key set server sees is the same.

use std::cell::RefCell;
use std::collections::HashSet;
use std::rc::{Rc, Weak};
use std::sync::Arc;

use courier_runtime::event::rt;

use super::Server;
use crate::filters::http::jwt_authn::async_fetch::{self, AsyncKeySet};
use crate::filters::http::jwt_authn::jwks::Jwks;
use crate::filters::http::jwt_authn::provider::RemoteJwks;
use crate::filters::http::HttpFilter;
use crate::filters::network::NetworkFilter;
use crate::http::conn_manager::service_calls::jwks;
use crate::stats::MAIN_THREAD;

thread_local! {
    /// The key sets (by id) a fetcher runs for.
    static RUNNING: RefCell<HashSet<u64>> = RefCell::new(HashSet::new());
}

/// Starts a fetcher for each key set of the active and warming listeners that has none;
/// `settled` runs on the server each time a set's first fetch is over (warming
/// listeners may then serve).
pub fn sync(server: &Rc<Server>, settled: fn(&Rc<Server>)) {
    let sets: Vec<AsyncKeySet> = {
        let lm = server.listener_manager.borrow();
        lm.listeners()
            .values()
            .chain(lm.warming().values())
            .flat_map(|e| e.config.chains())
            .filter_map(|c| match &c.filter {
                NetworkFilter::HttpConnectionManager(h) => Some(h),
                NetworkFilter::TcpProxy(_) => None,
            })
            .flat_map(|h| h.filters.iter())
            .filter_map(|f| match &f.filter {
                HttpFilter::JwtAuthn(j) => Some(j.async_key_sets()),
                _ => None,
            })
            .flatten()
            .collect()
    };
    for set in sets {
        if RUNNING.with(|r| r.borrow_mut().insert(set.remote.id)) {
            tokio::task::spawn_local(run(Rc::downgrade(server), set, settled));
        }
    }
}

/// Fetches one key set until its config is gone.
async fn run(server: Weak<Server>, set: AsyncKeySet, settled: fn(&Rc<Server>)) {
    let id = set.remote.id;
    let remote = Arc::downgrade(&set.remote);
    let AsyncKeySet {
        remote: first,
        success,
        failed,
    } = set;
    drop(first);
    let mut first_fetch = true;
    loop {
        let (Some(r), Some(s)) = (remote.upgrade(), server.upgrade()) else {
            break;
        };
        let Some(timing) = r.async_fetch else { break };
        let got = fetch_on_worker(&s, &r).await;
        let wait = match got {
            Some(keys) => {
                s.tls
                    .run_on_all_workers_async(move |_| jwks::install(id, keys.clone()))
                    .await;
                success.inc(MAIN_THREAD);
                timing.good_refetch
            }
            None => {
                tracing::warn!(uri = %r.uri, "jwks async fetch failed");
                failed.inc(MAIN_THREAD);
                timing.failed_refetch
            }
        };
        if std::mem::take(&mut first_fetch) {
            async_fetch::mark_settled(id);
            settled(&s);
        }
        drop((r, s));
        tokio::time::sleep(wait).await;
    }
    RUNNING.with(|r| r.borrow_mut().remove(&id));
    async_fetch::forget(id);
    if let Some(s) = server.upgrade() {
        s.tls
            .run_on_all_workers_async(move |_| jwks::forget(id))
            .await;
    }
}

/// GETs `r`'s key set through a worker's async client; `None` when the fetch failed
/// (or no worker could take it).
async fn fetch_on_worker(server: &Server, r: &Arc<RemoteJwks>) -> Option<Arc<Jwks>> {
    let workers = server.options.concurrency().max(1);
    let worker = (r.id % workers as u64) as usize;
    let (tx, rx) = tokio::sync::oneshot::channel();
    let (remote, store) = (r.clone(), server.store.clone());
    let posted = server.tls.post_to(
        worker,
        Box::new(move |_| {
            rt::spawn(async move {
                let _ = tx.send(jwks::fetch(&remote, &store, worker).await);
            })
        }),
    );
    if !posted {
        return None;
    }
    rx.await.ok().flatten()
}
