//! REST-JSON xDS (`api_type: REST`): `POST /v3/discovery:<clusters|endpoints|listeners|
//! routes|secrets|runtime>` with a `DiscoveryRequest` in JSON, answered from the node's snapshot
//! with a `DiscoveryResponse` in JSON (proto field names), over HTTP/1.1 or h2c (prior
//! knowledge), in plaintext.
//!
//! Rules, after go-control-plane's REST gateway where it has one:
//! - the path names the type (the body's `type_url` is overridden); an unknown path is
//!   `404`, a method other than POST `405`, a body that is not a `DiscoveryRequest` `400`,
//!   a node without a snapshot `500` (go-control-plane's codes);
//! - the response carries exactly the requested names the snapshot has, or every resource
//!   of the type for a wildcard request (no names, or `*`) — go-control-plane ignores the
//!   names and always sends every resource;
//! - `304 Not Modified` when the request's `version_info` is the snapshot's version of the
//!   type *and* that version was served to this node for the same names. go-control-plane
//!   answers 304 on the version alone, which leaves a client that adds a name to a
//!   subscription (one REST subscription for several EDS clusters) without it until the
//!   version changes; courier-cp remembers, per node, type and name set, what it served;
//! - ACK/NACK, as on the gRPC streams (XDS.md rule 23): a `version_info` the node did not
//!   report before is recorded as ACKed; a request with `error_detail` records a NACK of
//!   the version last served for those names (once), and that version is not served again
//!   (`304`) until the snapshot changes. Envoy sends no `error_detail` over REST, so for
//!   Envoy a rejected version is served again at every poll (as go-control-plane does) and
//!   no NACK is recorded: its `version_info` simply stays at the last accepted version.

use std::collections::HashMap;
use std::convert::Infallible;
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use courier_proto::envoy::service::discovery::v3::{DiscoveryRequest, DiscoveryResponse};
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::net::TcpListener;
use tokio::sync::watch;

use super::{shutdown_requested, Shared};
use crate::resource::ResourceType;
use crate::status::NackRecord;

/// The largest request body read: a `DiscoveryRequest` is a node and a list of names.
const MAX_REQUEST_BYTES: usize = 4 * 1024 * 1024;

/// How many (node, type, names) entries of REST state are kept before they are forgotten
/// all at once (a client then gets one extra full response per subscription).
const MAX_STATE_ENTRIES: usize = 100_000;

/// What courier-cp knows of one REST subscription: a node's requests of one type for one
/// set of names.
#[derive(Debug, Default)]
struct Subscription {
    /// The version last served (200).
    served: Option<String>,
    /// The version last recorded as ACKed.
    acked: Option<String>,
    /// The version last recorded as NACKed.
    nacked: Option<String>,
}

type Key = (String, ResourceType, Vec<String>);

/// The REST-JSON endpoint's state.
pub(crate) struct Rest {
    shared: Arc<Shared>,
    subscriptions: Mutex<HashMap<Key, Subscription>>,
}

/// What to answer.
#[derive(Debug)]
enum Answer {
    Response(DiscoveryResponse),
    NotModified,
    Error(http::StatusCode, String),
}

impl Rest {
    pub(crate) fn new(shared: Arc<Shared>) -> Rest {
        Rest {
            shared,
            subscriptions: Mutex::default(),
        }
    }

    async fn handle(&self, req: http::Request<Incoming>) -> http::Response<Full<Bytes>> {
        let answer = self.answer(req).await;
        let (status, body) = match answer {
            Answer::Response(resp) => (
                http::StatusCode::OK,
                courier_proto::to_json(&resp).to_string(),
            ),
            Answer::NotModified => (http::StatusCode::NOT_MODIFIED, String::new()),
            Answer::Error(status, message) => (status, message),
        };
        let content_type = if status == http::StatusCode::OK {
            "application/json"
        } else {
            "text/plain"
        };
        let mut resp = http::Response::new(Full::new(Bytes::from(body)));
        *resp.status_mut() = status;
        if let Ok(v) = http::HeaderValue::from_str(content_type) {
            resp.headers_mut().insert(http::header::CONTENT_TYPE, v);
        }
        resp
    }

    async fn answer(&self, req: http::Request<Incoming>) -> Answer {
        let kind = req
            .uri()
            .path()
            .strip_prefix("/v3/discovery:")
            .and_then(ResourceType::from_rest_name);
        let Some(kind) = kind else {
            return Answer::Error(http::StatusCode::NOT_FOUND, "no endpoint".into());
        };
        if req.method() != http::Method::POST {
            return Answer::Error(
                http::StatusCode::METHOD_NOT_ALLOWED,
                "xDS REST requests are POSTs".into(),
            );
        }
        let body = match Limited::new(req.into_body(), MAX_REQUEST_BYTES)
            .collect()
            .await
        {
            Ok(b) => b.to_bytes(),
            Err(e) => {
                return Answer::Error(
                    http::StatusCode::BAD_REQUEST,
                    format!("cannot read body: {e}"),
                )
            }
        };
        let request = std::str::from_utf8(&body)
            .map_err(|e| e.to_string())
            .and_then(|text| {
                courier_proto::from_json::<DiscoveryRequest>(text).map_err(|e| e.to_string())
            });
        match request {
            Ok(request) => self.fetch(kind, &request),
            Err(e) => Answer::Error(
                http::StatusCode::BAD_REQUEST,
                format!("cannot parse JSON body: {e}"),
            ),
        }
    }

    /// Answers one request of `kind` from the node's snapshot, recording its ACK/NACK.
    fn fetch(&self, kind: ResourceType, req: &DiscoveryRequest) -> Answer {
        let node = req.node.clone().unwrap_or_default();
        let key = self.shared.cache.node_key(&node);
        let Some(snapshot) = self.shared.cache.snapshot(&key) else {
            return Answer::Error(
                http::StatusCode::INTERNAL_SERVER_ERROR,
                format!("fetch error: missing snapshot for {key:?}"),
            );
        };
        let mut names: Vec<String> = req
            .resource_names
            .iter()
            .filter(|n| n.as_str() != "*")
            .cloned()
            .collect();
        names.sort();
        names.dedup();
        let wildcard = names.is_empty();
        let current = snapshot.version(kind).to_string();
        let status = &self.shared.status;

        let mut subs = self.subscriptions.lock().unwrap_or_else(|p| p.into_inner());
        if subs.len() >= MAX_STATE_ENTRIES {
            subs.clear();
        }
        let sub = subs
            .entry((node.id.clone(), kind, names.clone()))
            .or_default();
        match &req.error_detail {
            Some(err) => {
                let rejected = sub.served.clone().unwrap_or_default();
                if sub.nacked.as_deref() != Some(rejected.as_str()) {
                    status.nacked(
                        &node.id,
                        kind,
                        NackRecord::new(&rejected, &req.version_info, "", err),
                    );
                    sub.nacked = Some(rejected);
                }
            }
            None if !req.version_info.is_empty()
                && sub.acked.as_deref() != Some(req.version_info.as_str()) =>
            {
                tracing::debug!(node = %node.id, type_url = kind.type_url(), version = %req.version_info, "REST ACK");
                status.acked(&node.id, kind, &req.version_info);
                sub.acked = Some(req.version_info.clone());
            }
            None => {}
        }
        let holds_current =
            req.version_info == current && sub.served.as_deref() == Some(current.as_str());
        let rejected_current =
            req.error_detail.is_some() && sub.nacked.as_deref() == Some(current.as_str());
        if holds_current || rejected_current {
            return Answer::NotModified;
        }
        sub.served = Some(current.clone());
        drop(subs);

        let items = snapshot.of(kind).items();
        let resources = if wildcard {
            items.values().map(|r| r.any().clone()).collect()
        } else {
            names
                .iter()
                .filter_map(|n| items.get(n))
                .map(|r| r.any().clone())
                .collect::<Vec<_>>()
        };
        status.pushed(&node.id, kind, &current);
        tracing::debug!(
            node = %node.id, type_url = kind.type_url(), version = %current,
            resources = resources.len(), "REST response"
        );
        Answer::Response(DiscoveryResponse {
            version_info: current,
            resources,
            type_url: kind.type_url().to_string(),
            ..Default::default()
        })
    }

    /// Serves on `listener` until `shutdown` turns true.
    pub(crate) async fn serve(
        self: Arc<Self>,
        listener: TcpListener,
        mut shutdown: watch::Receiver<bool>,
    ) {
        loop {
            let (stream, peer) = tokio::select! {
                accepted = listener.accept() => match accepted {
                    Ok(a) => a,
                    Err(e) => {
                        tracing::warn!(error = %e, "REST xDS accept failed");
                        continue;
                    }
                },
                _ = shutdown_requested(&mut shutdown) => return,
            };
            let _ = stream.set_nodelay(true);
            let rest = self.clone();
            let mut stop = shutdown.clone();
            tokio::spawn(async move {
                let svc = hyper::service::service_fn(move |req| {
                    let rest = rest.clone();
                    async move { Ok::<_, Infallible>(rest.handle(req).await) }
                });
                let builder = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new());
                let conn = builder.serve_connection(TokioIo::new(stream), svc);
                tokio::select! {
                    r = conn => if let Err(e) = r {
                        tracing::debug!(%peer, error = %e, "REST xDS connection error");
                    },
                    _ = shutdown_requested(&mut stop) => {}
                }
            });
        }
    }
}

/// A running REST-JSON server: the same handle as the gRPC server's.
pub type RestServerHandle = super::XdsServerHandle;
