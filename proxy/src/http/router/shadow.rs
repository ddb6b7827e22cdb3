//! Request mirroring (Envoy's shadowing, `request_mirror_policies`): a copy of a routed
//! request goes to another cluster, its answer ignored, without holding the request back.
//!
//! As Envoy 1.40 (measured): the policies of the route's action, else its virtual host's,
//! else the route configuration's apply; the copy carries the headers the upstream gets
//! on the first attempt, its authority with `-shadow` appended to the host part
//! (`disable_shadow_host_suffix_append` keeps it); its body streams beside the request's
//! (a body past the route's buffer limit is mirrored too). Here a copy whose cluster reads
//! more slowly than the client sends falls behind by at most the listener's buffer limit
//! (`per_connection_buffer_limit_bytes`, 1 MiB by default, or the route's if larger), then
//! is abandoned (`retry_or_shadow_abandoned`): a mirror never slows the request down.
//! `runtime_fraction` samples its runtime key's share (its default value without one).

use std::cell::{Cell, RefCell};
use std::collections::VecDeque;
use std::pin::Pin;
use std::rc::Rc;
use std::sync::Arc;
use std::task::{Context, Poll, Waker};
use std::time::Instant;

use bytes::Bytes;
use http::header::HeaderMap;
use http::Request;
use hyper::body::{Body, Frame, SizeHint};

use crate::http::codec::body::{BodyTransform, BoxError, ProxyBody};
use crate::http::route::shadow_policy::ShadowPolicy;
use crate::http::router::async_client;
use crate::protocol::message::RequestMessage;
use crate::stats::{Counter, Store};
use crate::upstream::{ClusterInfo, ThreadLocalClusterManager};
use courier_runtime::event::rt;

/// A request body's frames as they pass, for one mirror: the request's body pushes them
/// ([`tee`]), the mirror's body takes them.
pub struct ShadowFeed {
    frames: RefCell<VecDeque<Frame<Bytes>>>,
    queued: Cell<usize>,
    limit: usize,
    state: Cell<FeedState>,
    waker: Cell<Option<Waker>>,
    abandoned: Arc<Counter>,
    worker: usize,
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum FeedState {
    Open,
    Ended,
    /// The request's body broke off, or the mirror fell too far behind.
    Broken,
}

impl ShadowFeed {
    /// A feed holding at most `limit` bytes the mirror has not taken; past that the
    /// mirror is abandoned and counted in `abandoned`.
    pub fn new(limit: usize, abandoned: Arc<Counter>, worker: usize) -> Rc<ShadowFeed> {
        Rc::new(ShadowFeed {
            frames: RefCell::new(VecDeque::new()),
            queued: Cell::new(0),
            limit,
            state: Cell::new(FeedState::Open),
            waker: Cell::new(None),
            abandoned,
            worker,
        })
    }

    /// A frame of the request's body went by.
    pub fn push(&self, frame: &Frame<Bytes>) {
        if self.state.get() != FeedState::Open {
            return;
        }
        let copy = if let Some(d) = frame.data_ref() {
            self.queued.set(self.queued.get() + d.len());
            Frame::data(d.clone())
        } else if let Some(t) = frame.trailers_ref() {
            Frame::trailers(t.clone())
        } else {
            return;
        };
        if self.queued.get() > self.limit {
            self.abandoned.inc(self.worker);
            self.frames.borrow_mut().clear();
            self.close(FeedState::Broken);
            return;
        }
        self.frames.borrow_mut().push_back(copy);
        self.wake();
    }

    /// The request's body ended: cleanly (`true`) or not.
    pub fn end(&self, clean: bool) {
        if self.state.get() == FeedState::Open {
            self.close(if clean {
                FeedState::Ended
            } else {
                FeedState::Broken
            });
        }
    }

    fn close(&self, state: FeedState) {
        self.state.set(state);
        self.wake();
    }

    fn wake(&self) {
        if let Some(w) = self.waker.take() {
            w.wake();
        }
    }

    /// The mirror's next frame.
    pub fn poll_frame(&self, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        if let Some(f) = self.frames.borrow_mut().pop_front() {
            if let Some(d) = f.data_ref() {
                self.queued.set(self.queued.get().saturating_sub(d.len()));
            }
            return Poll::Ready(Some(Ok(f)));
        }
        match self.state.get() {
            FeedState::Ended => Poll::Ready(None),
            FeedState::Broken => Poll::Ready(Some(Err("request body not mirrored".into()))),
            FeedState::Open => {
                self.waker.set(Some(cx.waker().clone()));
                Poll::Pending
            }
        }
    }

    /// Whether the mirror has taken every frame and the body has ended.
    pub fn is_end_stream(&self) -> bool {
        self.state.get() == FeedState::Ended && self.frames.borrow().is_empty()
    }

    /// The mirror is gone (it failed, or timed out): nothing more is kept for it.
    pub fn detach(&self) {
        self.frames.borrow_mut().clear();
        self.state.set(FeedState::Broken);
    }
}

/// A request's mirror to one cluster, its body ready (complete, or fed as the request's
/// streams).
pub struct Mirror<'a> {
    policy: &'a ShadowPolicy,
    cluster: Arc<ClusterInfo>,
    body: ProxyBody,
}

/// The mirrors of a request with `headers` under `policies`, and the feeds its body is to
/// copy its frames to when it has one to `stream` (a mirror falls at most `limit` bytes
/// behind, else is abandoned and counted in `abandoned`). A mirror to a cluster that does
/// not exist is not sent.
pub fn plan<'a>(
    policies: &'a [ShadowPolicy],
    headers: &HeaderMap,
    stream: bool,
    limit: usize,
    abandoned: &Arc<Counter>,
    worker: usize,
) -> (Vec<Mirror<'a>>, Vec<Rc<ShadowFeed>>) {
    let clusters = ThreadLocalClusterManager::with(|tlcm| tlcm.snapshot());
    let mut mirrors = Vec::new();
    let mut feeds = Vec::new();
    for policy in policies {
        let Some(name) = policy.cluster(headers) else {
            continue;
        };
        let Some(cluster) = clusters.get(name).cloned() else {
            tracing::debug!(cluster = name, "mirror cluster not found");
            continue;
        };
        let body = if stream {
            let feed = ShadowFeed::new(limit, abandoned.clone(), worker);
            feeds.push(feed.clone());
            ProxyBody::filtered(FeedBody(feed))
        } else {
            ProxyBody::empty()
        };
        mirrors.push(Mirror {
            policy,
            cluster,
            body,
        });
    }
    (mirrors, feeds)
}

impl Mirror<'_> {
    /// Sends the mirror with `main`'s head (the request's to its own upstream, whose
    /// authority is `authority`), bounded by `deadline`.
    pub fn send(
        self,
        main: &Request<ProxyBody>,
        authority: &str,
        store: &Store,
        worker: usize,
        deadline: Option<Instant>,
    ) {
        let authority = self.policy.authority(authority);
        let path = main
            .uri()
            .path_and_query()
            .map_or_else(String::new, |pq| pq.as_str().to_owned());
        let mut headers = main.headers().clone();
        // The main request's `x-envoy-expected-rq-timeout-ms` goes as it is.
        async_client::EnvoyHeaders::ALL.apply(&mut headers, None);
        let req = RequestMessage {
            method: main.method().clone(),
            path,
            authority,
            headers,
            body: self.body,
        };
        let req = match async_client::request_for(&self.cluster, req) {
            Ok(r) => r,
            Err(e) => {
                tracing::debug!(error = %e, "mirror not sent: its authority is not valid");
                return;
            }
        };
        let store = store.clone();
        rt::spawn(async move {
            // The answer is read off and dropped; a failure is the mirror's own.
            let _ =
                async_client::exchange(&self.cluster, req, &store, worker, deadline, false).await;
        });
    }
}

/// `inner`, its frames copied to each of `feeds` (request mirrors) as they pass.
pub fn tee(inner: ProxyBody, feeds: Vec<Rc<ShadowFeed>>) -> ProxyBody {
    let declared = inner.size_hint().exact();
    ProxyBody::filtered(Tee {
        inner,
        feeds,
        declared,
        passed: 0,
    })
}

/// A request body whose frames are copied to mirrors as they pass.
struct Tee {
    inner: ProxyBody,
    feeds: Vec<Rc<ShadowFeed>>,
    /// The body's announced length, and the data that went through.
    declared: Option<u64>,
    passed: u64,
}

impl Tee {
    fn end(&mut self, clean: bool) {
        for f in self.feeds.drain(..) {
            f.end(clean);
        }
    }
}

impl Drop for Tee {
    fn drop(&mut self) {
        // A reader may stop at the announced length without waiting for the end of the
        // stream (hyper's HTTP/1 client does): all of it went through all the same.
        let complete = self.inner.is_end_stream()
            || self.declared == Some(self.passed)
            || self.inner.size_hint().exact() == Some(0);
        self.end(complete);
    }
}

impl BodyTransform for Tee {
    fn poll_frame(&mut self, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let t = self;
        let r = Pin::new(&mut t.inner).poll_frame(cx);
        match &r {
            Poll::Ready(Some(Ok(frame))) => {
                if let Some(d) = frame.data_ref() {
                    t.passed += d.len() as u64;
                }
                for f in &t.feeds {
                    f.push(frame);
                }
                // The last frame: hyper may not poll again.
                if t.inner.is_end_stream() {
                    t.end(true);
                }
            }
            Poll::Ready(None) => t.end(true),
            Poll::Ready(Some(Err(_))) => t.end(false),
            Poll::Pending => {}
        }
        r
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

/// A mirror's copy of a request body, fed by a [`tee`]; a mirror that goes away detaches.
struct FeedBody(Rc<ShadowFeed>);

impl Drop for FeedBody {
    fn drop(&mut self) {
        self.0.detach();
    }
}

impl BodyTransform for FeedBody {
    fn poll_frame(&mut self, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        self.0.poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.0.is_end_stream()
    }
}
