//! An OAuth2 filter's call to its token endpoint ([`crate::filters::http::oauth2`]): the
//! code exchange of a callback or the refresh of expired tokens, built by the filter,
//! sent from the worker through the router's async client to the token cluster, and its
//! answer handed back to the filter.

use http::HeaderMap;

use crate::filters::http::oauth2::{Finished, OAuth2Filter, RequestView, TokenCall};
use crate::http::route::Pseudo;
use crate::http::router::async_client::{self, EnvoyHeaders};
use crate::stats::Store;

/// Sends `call` and lets `f` apply the answer to the request (`headers`).
pub(crate) async fn call(
    f: &OAuth2Filter,
    call: TokenCall,
    headers: &mut HeaderMap,
    rq: &RequestView<'_>,
    pseudo: &Pseudo<'_>,
    store: &Store,
    worker: usize,
) -> Finished {
    let request = crate::protocol::message::RequestMessage {
        method: call.request.method.clone(),
        path: call.request.path.clone(),
        authority: call.request.authority.clone(),
        headers: call.request.headers.clone(),
        body: call.request.body.clone(),
    };
    let answer = async_client::send(
        &call.cluster,
        request,
        store,
        worker,
        Some(call.timeout),
        EnvoyHeaders::ALL,
    )
    .await;
    let answer = match answer {
        Ok(a) => Some(a),
        Err(e) => {
            tracing::debug!(cluster = %call.cluster, error = %e, "OAuth request failed");
            None
        }
    };
    f.finish(call, answer.as_ref(), headers, rq, pseudo, worker)
}
