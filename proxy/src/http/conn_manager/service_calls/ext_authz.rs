//! A request's check by an ext_authz filter ([`crate::filters::http::ext_authz`]): its
//! body held as the filter asks, the call built by the filter and sent from the worker
//! through the router's async client, the service's verdict applied to the request.

use std::collections::VecDeque;
use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::{Bytes, BytesMut};
use http::{Request, Response, StatusCode};
use hyper::body::{Body, Frame, SizeHint};

use super::PoolCounters;
use crate::filters::http::ext_authz::check_request::{self, CheckBody, CheckExtras, CheckView};
use crate::filters::http::ext_authz::verdict::{ResponseChanges, Verdict};
use crate::filters::http::ext_authz::{
    grpc_service, Begin, BodySettings, Decision, ExtAuthzFilter, Service,
};
use crate::filters::http::ClusterCounters;
use crate::http::codec::body::{BodyTransform, BoxError, ProxyBody};
use crate::http::conn_manager::conn_info::ConnInfo;
use crate::http::conn_manager::local_reply::local_reply;
use crate::http::route::per_filter::FilterConfigs;
use crate::http::router::async_client::EnvoyHeaders;
use crate::http::router::{async_client, Outcome};
use crate::protocol::header_mutations::FormatContext;

/// What the check reads of the request beside its head.
pub(crate) struct CheckedRequest<'a> {
    /// Its connection.
    pub conn: &'a ConnInfo,
    /// `:path` as routed, with its query.
    pub path: &'a str,
    /// `:authority` as routed.
    pub authority: &'a str,
    /// `:scheme`.
    pub scheme: &'a str,
    /// `HTTP/1.1`, `HTTP/2`.
    pub protocol: &'a str,
    /// Its route's per-filter settings.
    pub levels: [&'a FilterConfigs; 3],
    /// Whether a route took it.
    pub routed: bool,
    /// The cluster its route sends it to, when known now.
    pub cluster: Option<String>,
}

/// What an allowed request goes on with.
#[derive(Default)]
pub(crate) struct Passed {
    /// The changes its answer is to take.
    pub response: Option<ResponseChanges>,
    /// Its path changed (query parameters set or removed): the router sends the new one.
    pub path_changed: bool,
}

/// Runs `f` on `req`: `Ok` with what it goes on with, `Err` with the reply that ends it.
pub(crate) async fn check(
    c: CheckedRequest<'_>,
    f: &ExtAuthzFilter,
    req: &mut Request<ProxyBody>,
    outcome: &mut Outcome,
) -> Result<Passed, Box<Response<ProxyBody>>> {
    let worker = c.conn.worker;
    let (context_extensions, skip_body) = match f.begin(c.levels, c.routed, worker) {
        Begin::Skip => return Ok(Passed::default()),
        Begin::Refuse(reply) => {
            outcome.ended("UAEX", crate::filters::http::ext_authz::ERROR);
            return Err(reply);
        }
        Begin::Check {
            context_extensions,
            skip_body,
        } => (context_extensions, skip_body),
    };
    let body = match f.body {
        Some(settings) if !skip_body && !req.body().is_end_stream() && !is_upgrade(req) => {
            match hold_body(req, settings).await {
                Ok(b) => Some(b),
                Err(reply) => {
                    outcome.ended("-", "request_payload_too_large");
                    return Err(reply);
                }
            }
        }
        _ => None,
    };
    let view = CheckView {
        method: req.method().as_str(),
        path: c.path,
        authority: c.authority,
        scheme: c.scheme,
        protocol: c.protocol,
        headers: req.headers(),
        remote: c.conn.remote,
        local: c.conn.local,
        tls: c.conn.tls.get().map(|t| &**t),
        server_name: c.conn.requested_server_name.as_deref(),
        stream_id: fastrand::u64(..),
    };
    let store = &c.conn.config.store;
    let message = match &f.service {
        Service::Grpc(g) => {
            let extras = CheckExtras {
                context_extensions,
                raw_headers: f.encode_raw_headers,
                peer_certificate: f.include_peer_certificate,
                tls_session: f.include_tls_session,
                body: body.as_ref().map(|b| CheckBody {
                    bytes: b,
                    pack_as_bytes: f.body.is_some_and(|s| s.pack_as_bytes),
                    partial: f.body.is_some_and(|s| b.len() >= s.max_bytes),
                }),
            };
            g.request(&check_request::build(&view, &f.headers, extras))
        }
        Service::Http(h) => {
            let partial = body
                .as_ref()
                .map(|b| f.body.is_some_and(|s| b.len() >= s.max_bytes));
            let fields = check_request::headers(&view, &f.headers, partial);
            let cx = FormatContext {
                remote: Some(c.conn.remote),
                local: Some(c.conn.local),
                protocol: c.protocol,
                upstream: None,
                request: Some(req.headers()),
                start: None,
            };
            h.request(&fields, body.as_ref(), &cx)
        }
    };
    let envoy = match &f.service {
        Service::Grpc(g) => EnvoyHeaders::grpc(&g.client),
        Service::Http(_) => EnvoyHeaders::NO_XFF,
    };
    let timeout = Some(f.service.timeout());
    let answer = async_client::send(f.service.cluster(), message, store, worker, timeout, envoy);
    let verdict = match Box::pin(answer).await {
        Err(e) => {
            tracing::debug!(cluster = f.service.cluster(), error = %e, "ext_authz call failed");
            Verdict::Error
        }
        Ok(answer) => match &f.service {
            Service::Grpc(_) => grpc_service::verdict(&answer),
            Service::Http(h) => h.verdict(&answer),
        },
    };
    let counters = c
        .cluster
        .as_deref()
        .and_then(|name| PoolCounters::of(c.conn, name));
    let counters = counters.as_ref().map(|p| p as &dyn ClusterCounters);
    match f.decide(verdict, counters, req.headers_mut(), worker) {
        Decision::Reply(reply, details) => {
            outcome.ended("UAEX", details);
            Err(reply)
        }
        Decision::Continue(None) => Ok(Passed::default()),
        Decision::Continue(Some(allowed)) => {
            let mut path_changed = false;
            if let Some(new) = allowed.rewrite_query(c.path) {
                let mut parts = req.uri().clone().into_parts();
                if let Ok(pq) = new.parse() {
                    parts.path_and_query = Some(pq);
                    if let Ok(uri) = http::Uri::from_parts(parts) {
                        *req.uri_mut() = uri;
                        path_changed = true;
                    }
                }
            }
            let changes = allowed.response;
            Ok(Passed {
                response: (!changes.is_empty()).then_some(changes),
                path_changed,
            })
        }
    }
}

/// Whether `req` upgrades its connection (its body is then the tunnel's, never held).
fn is_upgrade(req: &Request<ProxyBody>) -> bool {
    crate::http::codec::handoff::is_upgrade(req.headers()) || req.method() == http::Method::CONNECT
}

/// Holds `req`'s body up to `settings.max_bytes`: the bytes the service gets; the request
/// keeps its whole body. A longer body is cut (`allow_partial_message`) or refused with
/// `413` as Envoy's buffer limit does.
async fn hold_body(
    req: &mut Request<ProxyBody>,
    settings: BodySettings,
) -> Result<Bytes, Box<Response<ProxyBody>>> {
    let mut body = std::mem::replace(req.body_mut(), ProxyBody::empty());
    let mut frames = VecDeque::new();
    let mut held = BytesMut::new();
    let mut ended = false;
    while held.len() < settings.max_bytes || !settings.allow_partial {
        let Some(frame) = std::future::poll_fn(|cx| Pin::new(&mut body).poll_frame(cx)).await
        else {
            ended = true;
            break;
        };
        let Ok(frame) = frame else {
            // The client broke off: the request cannot go on, whatever the service says.
            return Err(Box::new(local_reply(StatusCode::BAD_REQUEST, "")));
        };
        if let Some(d) = frame.data_ref() {
            if held.len() + d.len() > settings.max_bytes && !settings.allow_partial {
                return Err(Box::new(local_reply(
                    StatusCode::PAYLOAD_TOO_LARGE,
                    "Payload Too Large",
                )));
            }
            held.extend_from_slice(d);
        }
        frames.push_back(frame);
    }
    let sent = held.freeze();
    let sent = sent.slice(..sent.len().min(settings.max_bytes));
    *req.body_mut() = ProxyBody::filtered(Held {
        frames,
        rest: (!ended).then_some(body),
    });
    Ok(sent)
}

/// A body whose first frames were read ahead, then the rest as it comes.
struct Held {
    frames: VecDeque<Frame<Bytes>>,
    rest: Option<ProxyBody>,
}

impl BodyTransform for Held {
    fn poll_frame(&mut self, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        if let Some(f) = self.frames.pop_front() {
            return Poll::Ready(Some(Ok(f)));
        }
        match &mut self.rest {
            Some(rest) => Pin::new(rest).poll_frame(cx),
            None => Poll::Ready(None),
        }
    }

    fn is_end_stream(&self) -> bool {
        self.frames.is_empty() && self.rest.as_ref().is_none_or(|r| r.is_end_stream())
    }

    fn size_hint(&self) -> SizeHint {
        let held: u64 = self
            .frames
            .iter()
            .filter_map(Frame::data_ref)
            .map(|d| d.len() as u64)
            .sum();
        match &self.rest {
            None => SizeHint::with_exact(held),
            Some(rest) => {
                let r = rest.size_hint();
                let mut h = SizeHint::new();
                h.set_lower(r.lower() + held);
                if let Some(u) = r.upper() {
                    h.set_upper(u + held);
                }
                h
            }
        }
    }
}
