//! A Lua script's `httpCall()` ([`crate::filters::http::lua::stream`]): the call the
//! script built, sent from the worker through the router's async client to the cluster it
//! named, and its answer (or, for a call that got none, the local reply Envoy's async
//! client gives: its router's `503`/`504`) handed back to the script.

use std::future::Future;
use std::pin::Pin;

use bytes::Bytes;
use http::header::{HeaderName, HeaderValue};
use http::{HeaderMap, Method};

use crate::filters::http::lua::stream::{CallAnswer, Caller, HttpCall};
use crate::http::conn_manager::local_reply::{
    NO_HEALTHY_UPSTREAM, UPSTREAM_CONNECT_ERROR, UPSTREAM_OVERFLOW, UPSTREAM_TIMEOUT,
};
use crate::http::router::async_client::{self, AsyncFailure, EnvoyHeaders};
use crate::protocol::message::{RequestMessage, ResponseMessage};
use crate::stats::Store;
use crate::upstream::ThreadLocalClusterManager;
use courier_runtime::event::rt;

/// The connection manager's side of a stream's scripts' calls, on one worker.
pub(crate) struct LuaCaller<'a> {
    /// The stats store the calls' cluster stats go to.
    pub(crate) store: &'a Store,
    /// The worker the stream runs on.
    pub(crate) worker: usize,
}

impl Caller for LuaCaller<'_> {
    fn has_cluster(&self, cluster: &str) -> bool {
        ThreadLocalClusterManager::with(|tlcm| tlcm.get(cluster).is_some())
    }

    fn send(&self, call: HttpCall) -> Pin<Box<dyn Future<Output = CallAnswer> + '_>> {
        Box::pin(send(call, self.store.clone(), self.worker))
    }

    fn send_and_forget(&self, call: HttpCall) {
        let (store, worker) = (self.store.clone(), self.worker);
        rt::spawn(async move {
            send(call, store, worker).await;
        });
    }
}

/// Sends `call` and gives what the script gets back.
async fn send(call: HttpCall, store: Store, worker: usize) -> CallAnswer {
    let cluster = call.cluster.clone();
    let timeout = call.timeout;
    let envoy = EnvoyHeaders {
        internal: true,
        xff: call.send_xff,
    };
    let answer = match message(call) {
        Some(request) => {
            async_client::send(&cluster, request, &store, worker, timeout, envoy).await
        }
        None => Err(AsyncFailure::Reset("a request HTTP cannot carry".into())),
    };
    match answer {
        Ok(answer) => answered(answer),
        Err(e) => {
            tracing::debug!(cluster = %cluster, error = %e, "lua: http call failed");
            failed(&e)
        }
    }
}

/// The request of `call`: its pseudo-headers as the request line, its other fields, and
/// its body with its length (as Envoy sends it). `None` for one HTTP cannot carry.
fn message(call: HttpCall) -> Option<RequestMessage<Bytes>> {
    let pseudo = |name: &str| {
        call.fields
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| String::from_utf8_lossy(v).into_owned())
    };
    let method = Method::from_bytes(pseudo(":method")?.as_bytes()).ok()?;
    let (path, authority) = (pseudo(":path")?, pseudo(":authority")?);
    let mut headers = HeaderMap::with_capacity(call.fields.len());
    for (k, v) in &call.fields {
        if k.starts_with(':') || (call.body.is_some() && k == "content-length") {
            continue;
        }
        let (Ok(name), Ok(value)) = (
            HeaderName::from_bytes(k.as_bytes()),
            HeaderValue::from_bytes(v),
        ) else {
            tracing::debug!("lua: http call field HTTP cannot carry, dropped: {k}");
            continue;
        };
        headers.append(name, value);
    }
    if let Some(body) = &call.body {
        headers.insert(http::header::CONTENT_LENGTH, HeaderValue::from(body.len()));
    }
    let body = call.body.map(Bytes::from).unwrap_or_default();
    Some(RequestMessage {
        method,
        path,
        authority,
        headers,
        body,
    })
}

fn answered(answer: ResponseMessage) -> CallAnswer {
    let mut fields = Vec::with_capacity(answer.head.headers.len() + 1);
    fields.push((
        ":status".to_string(),
        answer.head.status.as_str().as_bytes().to_vec(),
    ));
    for (k, v) in &answer.head.headers {
        fields.push((k.as_str().to_string(), v.as_bytes().to_vec()));
    }
    CallAnswer {
        fields,
        body: answer.body.to_vec(),
    }
}

/// The local reply Envoy's async client gives a call that got no answer (its router's).
fn failed(e: &AsyncFailure) -> CallAnswer {
    let (status, body) = match e {
        AsyncFailure::Timeout => ("504", UPSTREAM_TIMEOUT),
        AsyncFailure::NoHealthyHost | AsyncFailure::NoCluster(_) => ("503", NO_HEALTHY_UPSTREAM),
        AsyncFailure::Overflow => ("503", UPSTREAM_OVERFLOW),
        AsyncFailure::Reset(_) => ("503", UPSTREAM_CONNECT_ERROR),
    };
    CallAnswer {
        fields: vec![
            (":status".into(), status.as_bytes().to_vec()),
            ("content-length".into(), body.len().to_string().into_bytes()),
            ("content-type".into(), b"text/plain".to_vec()),
        ],
        body: body.as_bytes().to_vec(),
    }
}
