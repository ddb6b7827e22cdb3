//! A worker's own bidirectional gRPC stream to a cluster (Envoy's `Grpc::AsyncStream` over
//! `Http::AsyncClient::Stream`): what a filter that talks with a service for the whole of
//! a request uses (ext_proc's `Process` stream). The stream goes out as one of the
//! cluster's requests (its pool, circuit breakers and `upstream_rq_*` stats), over
//! HTTP/2; messages are sent as they are given and read one at a time.
//!
//! The exchange runs as a task of the worker's own: a filter's wait for the next message
//! never has to poll the connection itself, and dropping the [`GrpcStream`] ends the
//! exchange (its request half-closed, the HTTP/2 stream reset), as Envoy's `close`.

use std::cell::RefCell;
use std::collections::VecDeque;
use std::future::poll_fn;
use std::pin::Pin;
use std::rc::Rc;
use std::task::{Context, Poll, Waker};

use bytes::Bytes;
use hyper::body::{Body as _, Frame, SizeHint};

use crate::http::codec::body::{BodyTransform, BoxError, ProxyBody};
use crate::http::request_stats::StatSinks;
use crate::http::router::async_client::{request_for, AsyncFailure, MAX_ANSWER_BYTES};
use crate::http::router::pool;
use crate::protocol::grpc_frame::FrameSplitter;
use crate::protocol::message::RequestMessage;
use crate::stats::Store;
use crate::upstream::ThreadLocalClusterManager;
use courier_runtime::event::rt;

/// How a stream ended (no more messages will come).
#[derive(Debug, Clone)]
pub enum StreamEnd {
    /// The service closed it with this `grpc-status` (0: OK).
    Closed(u32),
    /// It broke before the service closed it: it never opened, was reset, or carried what
    /// is not gRPC. Counts as gRPC's `UNAVAILABLE` or `INTERNAL` (see [`StreamEnd::status`]).
    Failed(FailReason),
}

/// Why a stream broke.
#[derive(Debug, Clone)]
pub enum FailReason {
    /// The cluster, a host or a connection could not be had, or the stream was reset.
    Unavailable(String),
    /// What came back was not a gRPC stream of whole messages.
    Internal(String),
}

impl StreamEnd {
    /// The gRPC status the end counts as (Envoy's async client maps a reset to
    /// `UNAVAILABLE` (14), an undecodable answer to `INTERNAL` (13)).
    pub fn status(&self) -> u32 {
        match self {
            StreamEnd::Closed(s) => *s,
            StreamEnd::Failed(FailReason::Unavailable(_)) => 14,
            StreamEnd::Failed(FailReason::Internal(_)) => 13,
        }
    }
}

/// What the filter's handle and the exchange's task share.
#[derive(Default)]
struct Shared {
    /// Framed messages not yet taken by the request body.
    outbox: VecDeque<Bytes>,
    /// The request half is closed: its body ends once the outbox is empty.
    out_closed: bool,
    /// The request body waiting for a message.
    out_waker: Option<Waker>,
    /// Whole messages (without their frame heads) not yet read by the filter.
    inbox: VecDeque<Bytes>,
    /// The stream's end, once known.
    ended: Option<StreamEnd>,
    /// Those waiting for a message (a request's two directions may both wait).
    in_wakers: Vec<Waker>,
    /// The handle was dropped: the task stops.
    dropped: bool,
    /// The task waiting on the answer.
    task_waker: Option<Waker>,
}

/// One bidirectional gRPC stream; dropping it ends the exchange.
pub struct GrpcStream {
    shared: Rc<RefCell<Shared>>,
}

impl GrpcStream {
    /// Opens a stream of `req` (its path, authority and fields; the body is the messages
    /// [`GrpcStream::send`] gives) to the cluster named `cluster` on this worker. A
    /// stream that cannot open ends at once, as [`StreamEnd::Failed`].
    pub fn start(cluster: &str, req: RequestMessage<()>, store: &Store, worker: usize) -> Self {
        let shared = Rc::new(RefCell::new(Shared::default()));
        let task = exchange(
            cluster.to_owned(),
            req,
            store.clone(),
            worker,
            shared.clone(),
        );
        rt::spawn(async move {
            let end = task.await;
            let mut s = end.1.borrow_mut();
            if s.ended.is_none() {
                s.ended = Some(end.0);
            }
            for w in s.in_wakers.drain(..) {
                w.wake();
            }
        });
        GrpcStream { shared }
    }

    /// Sends `message` (framed) on the stream.
    pub fn send(&self, message: Bytes) {
        let mut s = self.shared.borrow_mut();
        if s.out_closed || s.ended.is_some() {
            return;
        }
        s.outbox.push_back(message);
        if let Some(w) = s.out_waker.take() {
            w.wake();
        }
    }

    /// The next message from the service, or how the stream ended.
    pub async fn recv(&self) -> Result<Bytes, StreamEnd> {
        poll_fn(|cx| self.poll_recv(cx)).await
    }

    /// Polls for the next message from the service, or how the stream ended; every
    /// waiting task is woken when one comes.
    pub fn poll_recv(&self, cx: &mut Context<'_>) -> Poll<Result<Bytes, StreamEnd>> {
        let mut s = self.shared.borrow_mut();
        if let Some(m) = s.inbox.pop_front() {
            return Poll::Ready(Ok(m));
        }
        if let Some(end) = &s.ended {
            return Poll::Ready(Err(end.clone()));
        }
        if !s.in_wakers.iter().any(|w| w.will_wake(cx.waker())) {
            s.in_wakers.push(cx.waker().clone());
        }
        Poll::Pending
    }

    /// Whether the stream has ended (the service closed it, or it broke).
    pub fn ended(&self) -> bool {
        let s = self.shared.borrow();
        s.ended.is_some() && s.inbox.is_empty()
    }
}

impl Drop for GrpcStream {
    fn drop(&mut self) {
        let mut s = self.shared.borrow_mut();
        s.dropped = true;
        s.out_closed = true;
        if let Some(w) = s.out_waker.take() {
            w.wake();
        }
        if let Some(w) = s.task_waker.take() {
            w.wake();
        }
    }
}

/// The request body: the messages as they are sent, ending when the handle closes.
struct Outbound(Rc<RefCell<Shared>>);

impl BodyTransform for Outbound {
    fn poll_frame(&mut self, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let mut s = self.0.borrow_mut();
        if let Some(m) = s.outbox.pop_front() {
            return Poll::Ready(Some(Ok(Frame::data(m))));
        }
        if s.out_closed {
            return Poll::Ready(None);
        }
        s.out_waker = Some(cx.waker().clone());
        Poll::Pending
    }

    fn is_end_stream(&self) -> bool {
        let s = self.0.borrow();
        s.out_closed && s.outbox.is_empty()
    }

    fn size_hint(&self) -> SizeHint {
        SizeHint::default()
    }
}

/// Ready once the handle is dropped.
fn dropped(shared: &Rc<RefCell<Shared>>) -> impl std::future::Future<Output = ()> + '_ {
    poll_fn(move |cx| {
        let mut s = shared.borrow_mut();
        if s.dropped {
            return Poll::Ready(());
        }
        s.task_waker = Some(cx.waker().clone());
        Poll::Pending
    })
}

/// Delivers whole messages to the handle; `Err` once they are not gRPC's.
fn deliver(
    shared: &Rc<RefCell<Shared>>,
    splitter: &mut FrameSplitter,
    data: &[u8],
) -> Result<(), StreamEnd> {
    let mut frames = Vec::new();
    if !splitter.push(data, &mut frames) || splitter.pending() > MAX_ANSWER_BYTES {
        return Err(StreamEnd::Failed(FailReason::Internal(
            "undecodable gRPC frame".into(),
        )));
    }
    if frames.is_empty() {
        return Ok(());
    }
    let mut s = shared.borrow_mut();
    for f in frames {
        if f.first() != Some(&0) {
            // A compressed message: nothing was negotiated that would allow it.
            return Err(StreamEnd::Failed(FailReason::Internal(
                "compressed gRPC message".into(),
            )));
        }
        s.inbox.push_back(f.slice(5..));
    }
    for w in s.in_wakers.drain(..) {
        w.wake();
    }
    Ok(())
}

/// `grpc-status` of a head or trailers, if present (unparseable: `UNKNOWN`).
fn grpc_status(h: &http::HeaderMap) -> Option<u32> {
    h.get("grpc-status").map(|v| {
        std::str::from_utf8(v.as_bytes())
            .ok()
            .and_then(|s| s.parse().ok())
            .unwrap_or(2)
    })
}

/// The exchange: the request sent as one of the cluster's, its answer read message by
/// message into `shared`, until it ends or the handle is dropped.
async fn exchange(
    cluster: String,
    req: RequestMessage<()>,
    store: Store,
    worker: usize,
    shared: Rc<RefCell<Shared>>,
) -> (StreamEnd, Rc<RefCell<Shared>>) {
    let unavailable = |why: String| StreamEnd::Failed(FailReason::Unavailable(why));
    let Some(info) = ThreadLocalClusterManager::with(|tlcm| tlcm.snapshot().get(&cluster).cloned())
    else {
        return (
            unavailable(AsyncFailure::NoCluster(cluster).to_string()),
            shared,
        );
    };
    let req = RequestMessage {
        method: req.method,
        path: req.path,
        authority: req.authority,
        headers: req.headers,
        body: ProxyBody::filtered(Outbound(shared.clone())),
    };
    let req = match request_for(&info, req) {
        Ok(r) => r,
        Err(e) => return (unavailable(e.to_string()), shared),
    };
    let pool = pool::cluster_pool(&info, &store, worker);
    let host = match crate::http::router::async_client::admit(&info, &pool, worker) {
        Ok(host) => host,
        Err(e) => return (unavailable(e.to_string()), shared),
    };
    let _request = pool.request_slot();
    let _active = pool.stats.rq_active.raise(worker);
    let run = async {
        let sinks = StatSinks {
            cluster: &pool.stats.rq,
            route: None,
            vcluster: None,
            internal: false,
        };
        let resp = crate::http::router::send_once(
            &pool,
            &info,
            &host,
            worker,
            &sinks,
            req,
            Default::default(),
        )
        .await
        .map_err(|e| unavailable(format!("upstream reset: {e:?}")))?;
        pool.stats.rq.charge(worker, resp.status().as_u16(), false);
        if resp.status() != http::StatusCode::OK {
            // Envoy maps a non-200 answer's HTTP status to a gRPC status; any is a failure.
            return Err(unavailable(format!("HTTP status {}", resp.status())));
        }
        if let Some(status) = grpc_status(resp.headers()) {
            // A trailers-only answer.
            return Ok(StreamEnd::Closed(status));
        }
        let mut body = resp.into_body();
        let mut splitter = FrameSplitter::default();
        while let Some(frame) = poll_fn(|cx| Pin::new(&mut body).poll_frame(cx)).await {
            let frame = frame.map_err(|e| unavailable(format!("upstream reset: {e}")))?;
            match frame.into_data() {
                Ok(d) => deliver(&shared, &mut splitter, &d)?,
                Err(frame) => {
                    if let Ok(t) = frame.into_trailers() {
                        return Ok(StreamEnd::Closed(grpc_status(&t).unwrap_or(2)));
                    }
                }
            }
        }
        // The body ended without trailers: not a gRPC stream's end.
        Err(StreamEnd::Failed(FailReason::Internal(
            "stream ended without trailers".into(),
        )))
    };
    let end = {
        let stop = dropped(&shared);
        futures::pin_mut!(run);
        futures::pin_mut!(stop);
        match futures::future::select(run, stop).await {
            futures::future::Either::Left((Ok(end) | Err(end), _)) => end,
            futures::future::Either::Right(((), _)) => StreamEnd::Closed(0),
        }
    };
    if let StreamEnd::Failed(why) = &end {
        tracing::debug!(cluster = %info.name, reason = ?why, "gRPC stream failed");
    }
    (end, shared)
}
