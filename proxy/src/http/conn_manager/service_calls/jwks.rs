//! Remote key sets for the JWT authentication filter
//! ([`crate::filters::http::jwt_authn`]), as Envoy's `remote_jwks` without `async_fetch`:
//! a worker GETs a provider's JWKS when a token first needs it (the request waits) and
//! keeps it for `cache_duration`. A fetch that gets no `200`, an empty body or a set that
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

thread_local! {
    /// This worker's key sets by [`RemoteJwks::id`], with when each expires.
    static CACHE: RefCell<HashMap<u64, (Arc<Jwks>, Instant)>> = RefCell::new(HashMap::new());
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
                c.retain(|_, (_, until)| *until > now);
                c.insert(r.id, (jwks.clone(), now + r.cache_duration));
            });
        }
        fetched.push((r.id, got));
    }
}

/// The worker's set for `r`, unless expired.
fn cached(r: &RemoteJwks) -> Fetched {
    CACHE.with(|c| match c.borrow().get(&r.id) {
        Some((jwks, until)) if Instant::now() < *until => Fetched::Keys(jwks.clone()),
        _ => Fetched::NotYet,
    })
}

/// GETs `r`'s key set through the worker's async client; `None` when the fetch failed.
async fn fetch(r: &RemoteJwks, store: &Store, worker: usize) -> Option<Arc<Jwks>> {
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
