//! Remote key sets for the JWT authentication filter
//! ([`crate::filters::http::jwt_authn`]), as Envoy's `remote_jwks`: a worker GETs a
//! provider's JWKS when a token first needs it (the request waits) and keeps it for
//! `cache_duration`. With `async_fetch` the main thread fetches it ahead (through
//! [`fetch`] on a worker) and [`install`]s it on every worker, to keep until the next
//! fetch replaces it. A fetch that gets no `200`, an empty body or a set that
//! does not parse has failed: the token fails with `Jwks remote fetch is failed`, and the
//! next request fetches again.
//!
//! The cache is the worker's own (a thread-local, keyed by the compiled config), so the
//! request path takes no lock; entries of configs gone expire with their
//! `cache_duration`, and are dropped when a later fetch stores.

use std::cell::RefCell;
use std::collections::HashMap;
use std::sync::Arc;
use std::time::Instant;

use bytes::Bytes;
use http::{HeaderMap, Method, StatusCode};

use crate::filters::http::jwt_authn::jwks::Jwks;
use crate::filters::http::jwt_authn::provider::RemoteJwks;
use crate::filters::http::jwt_authn::requirement::Fetched;
use crate::filters::http::jwt_authn::{JwtAuthnFilter, JwtPerRoute, JwtRequest};
use crate::http::route::Pseudo;
use crate::http::router::async_client::{self, AsyncFailure, EnvoyHeaders};
use crate::protocol::message::RequestMessage;
use crate::stats::Store;

/// A worker's key set and when it expires (`None`: a set fetched ahead, kept until
/// replaced or forgotten).
type Cached = (Arc<Jwks>, Option<Instant>);

thread_local! {
    /// This worker's key sets by [`RemoteJwks::id`].
    static CACHE: RefCell<HashMap<u64, Cached>> = RefCell::new(HashMap::new());
}

/// Runs `f` on a request (as [`JwtAuthnFilter::on_request`]), fetching the remote key
/// sets its tokens need that this worker does not have. Each set is fetched at most once
/// for the request: the check then runs again on the request as it came.
pub(crate) async fn check(
    f: &JwtAuthnFilter,
    route: Option<&JwtPerRoute>,
    headers: &mut HeaderMap,
    path: &str,
    pseudo: &Pseudo<'_>,
    store: &Store,
    worker: usize,
) -> JwtRequest {
    let original = headers.clone();
    // This request's fetches: a set (`None`: failed), whatever its `cache_duration`.
    let mut fetched: Vec<(u64, Option<Arc<Jwks>>)> = Vec::new();
    loop {
        let have = |r: &RemoteJwks| match fetched.iter().find(|(id, _)| *id == r.id) {
            Some((_, Some(jwks))) => Fetched::Keys(jwks.clone()),
            Some((_, None)) => Fetched::Failed,
            None => cached(r),
        };
        let r = match f.on_request(route, headers, path, pseudo, worker, &have) {
            JwtRequest::Fetch(r) => r,
            decided => return decided,
        };
        headers.clone_from(&original);
        let got = fetch(&r, store, worker).await;
        f.count_fetch(got.is_some(), worker);
        if let Some(jwks) = &got {
            let now = Instant::now();
            CACHE.with(|c| {
                let mut c = c.borrow_mut();
                c.retain(|_, (_, until)| until.is_none_or(|u| u > now));
                c.insert(r.id, (jwks.clone(), Some(now + r.cache_duration)));
            });
        }
        fetched.push((r.id, got));
    }
}

/// The worker's set for `r`, unless expired.
fn cached(r: &RemoteJwks) -> Fetched {
    CACHE.with(|c| match c.borrow().get(&r.id) {
        Some((jwks, until)) if until.is_none_or(|u| Instant::now() < u) => {
            Fetched::Keys(jwks.clone())
        }
        _ => Fetched::NotYet,
    })
}

/// Keeps `jwks`, fetched ahead by the main thread, as this worker's set `id` until a
/// later fetch replaces it (as Envoy's async fetch, it never expires).
pub(crate) fn install(id: u64, jwks: Arc<Jwks>) {
    CACHE.with(|c| c.borrow_mut().insert(id, (jwks, None)));
}

/// Drops this worker's set `id` (its config is gone).
pub(crate) fn forget(id: u64) {
    CACHE.with(|c| c.borrow_mut().remove(&id));
}

/// GETs `r`'s key set through the worker's async client; `None` when the fetch failed.
pub(crate) async fn fetch(r: &RemoteJwks, store: &Store, worker: usize) -> Option<Arc<Jwks>> {
    let req = RequestMessage {
        method: Method::GET,
        path: r.path.clone(),
        authority: r.authority.clone(),
        headers: HeaderMap::new(),
        body: Bytes::new(),
    };
    let answer = match &r.retry {
        None => {
            async_client::send(
                &r.cluster,
                req,
                store,
                worker,
                r.timeout,
                EnvoyHeaders::NO_XFF,
            )
            .await
        }
        Some(retry) => {
            let policy = &retry.0;
            let envoy = EnvoyHeaders::NO_XFF;
            async_client::send_retried(&r.cluster, req, store, worker, r.timeout, envoy, policy)
                .await
        }
    };
    let answer = match answer {
        Ok(answer) => answer,
        Err(AsyncFailure::NoCluster(_)) => {
            // As Envoy's fetcher, at error level: a config naming a cluster never defined.
            tracing::error!(
                "fetch pubkey [uri = {}] failed: [cluster = {}] is not configured",
                r.uri,
                r.cluster
            );
            return None;
        }
        Err(e) => {
            tracing::debug!(uri = %r.uri, error = %e, "jwks fetch failed");
            return None;
        }
    };
    if answer.head.status != StatusCode::OK || answer.body.is_empty() {
        tracing::debug!(
            uri = %r.uri,
            status = answer.head.status.as_u16(),
            "jwks fetch failed: no key set in the answer"
        );
        return None;
    }
    match Jwks::parse(&String::from_utf8_lossy(&answer.body)) {
        Ok(jwks) => Some(Arc::new(jwks)),
        Err(e) => {
            tracing::debug!(uri = %r.uri, "jwks fetch failed: {e}");
            None
        }
    }
}
