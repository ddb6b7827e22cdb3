//! The body type that flows through the proxy in both directions.

use std::pin::Pin;
use std::rc::Rc;
use std::task::{Context, Poll};

use bytes::Bytes;
use hyper::body::Incoming;
use hyper::body::{Body, Frame, SizeHint};

use super::compressor::Compressing;
use super::h1_server::DownstreamBody;
use super::retry_buffer::{Replay, RetryBuffer};
use super::shadow::ShadowFeed;
use super::stream_idle::StreamIdle;
use super::upstream_h1::UpstreamBody;

/// Boxed body error.
pub type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// Called once when a streamed body ends: `true` when it reached its end cleanly, and the
/// number of data bytes that went through.
pub type OnEnd = Box<dyn FnOnce(bool, u64)>;

/// A request or response body, with completion hooks.
pub struct ProxyBody {
    kind: Kind,
    on_end: Option<OnEnd>,
    bytes: u64,
    idle: Option<IdleWatch>,
    /// Trailers end the body without being passed on.
    drop_trailers: bool,
}

/// A body's part in its stream's idle timeout and, for a response, the route timeout
/// ([`StreamIdle`]).
struct IdleWatch {
    stream: Rc<StreamIdle>,
    /// A response body ends with an error once the stream is idle too long; a request
    /// body only reports its frames (the request future enforces the timeout).
    enforce: bool,
}

enum Kind {
    Empty,
    Full(Option<Bytes>),
    Stream(Incoming),
    Upstream(UpstreamBody),
    Downstream(DownstreamBody),
    /// A request body whose frames are copied to mirrors as they pass.
    Tee(Box<Tee>),
    /// A mirror's copy of a request body.
    Shadow(Rc<ShadowFeed>),
    /// One attempt's reading of a request body kept for retries.
    Replay(Box<Replay>),
    /// A body gzipped as it passes (the compressor filter).
    Compressed(Box<Compressing>),
}

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

impl ProxyBody {
    fn of(kind: Kind) -> ProxyBody {
        ProxyBody {
            kind,
            on_end: None,
            bytes: 0,
            idle: None,
            drop_trailers: false,
        }
    }

    /// No body.
    pub fn empty() -> ProxyBody {
        ProxyBody::of(Kind::Empty)
    }

    /// A complete body.
    pub fn full(b: impl Into<Bytes>) -> ProxyBody {
        let b = b.into();
        ProxyBody::of(if b.is_empty() {
            Kind::Empty
        } else {
            Kind::Full(Some(b))
        })
    }

    /// A streamed body; `on_end` runs when it ends (at once if it is already complete).
    pub fn stream(inner: Incoming, on_end: Option<OnEnd>) -> ProxyBody {
        let mut on_end = on_end;
        if inner.is_end_stream() {
            // hyper never polls a body that is already complete.
            if let Some(f) = on_end.take() {
                f(true, 0);
            }
        }
        let mut body = ProxyBody::of(Kind::Stream(inner));
        body.on_end = on_end;
        body
    }

    /// A response body read from an upstream HTTP/1.1 connection by Courier's own client
    /// ([`super::upstream_h1`]).
    pub fn upstream(inner: UpstreamBody) -> ProxyBody {
        ProxyBody::of(Kind::Upstream(inner))
    }

    /// A request body read from a downstream HTTP/1.1 connection by Courier's own codec
    /// ([`super::h1_server`]).
    pub fn downstream(inner: DownstreamBody) -> ProxyBody {
        ProxyBody::of(Kind::Downstream(inner))
    }

    /// `inner`, its frames copied to each of `feeds` (request mirrors) as they pass.
    pub fn tee(inner: ProxyBody, feeds: Vec<Rc<ShadowFeed>>) -> ProxyBody {
        let declared = inner.size_hint().exact();
        ProxyBody::of(Kind::Tee(Box::new(Tee {
            inner,
            feeds,
            declared,
            passed: 0,
        })))
    }

    /// One attempt's reading of a request body kept for retries: from its start.
    pub fn replay(buffer: Rc<RetryBuffer>) -> ProxyBody {
        ProxyBody::of(Kind::Replay(Box::new(Replay::new(buffer))))
    }

    /// A body gzipped as it passes ([`super::compressor`]).
    pub fn compressed(c: Box<Compressing>) -> ProxyBody {
        ProxyBody::of(Kind::Compressed(c))
    }

    /// A mirror's copy of a request body, fed by a [`ProxyBody::tee`].
    pub fn shadow(feed: Rc<ShadowFeed>) -> ProxyBody {
        ProxyBody::of(Kind::Shadow(feed))
    }

    /// Ends the body at its trailers instead of passing them on (an HTTP/1.1 upstream's
    /// trailers without `enable_trailers`, which Envoy's codec does not read).
    pub fn without_trailers(mut self) -> ProxyBody {
        self.drop_trailers = true;
        self
    }

    /// Adds a hook run after the existing ones when the body ends or is dropped.
    pub fn on_end(&mut self, f: OnEnd) {
        self.on_end = Some(match self.on_end.take() {
            None => f,
            Some(prev) => Box::new(move |ok, n| {
                prev(ok, n);
                f(ok, n)
            }),
        });
    }

    /// Reports this (request) body's frames and its end to the stream's idle timeout.
    pub fn report_activity(&mut self, stream: Rc<StreamIdle>) {
        self.idle = Some(IdleWatch {
            stream,
            enforce: false,
        });
    }

    /// Ends this (response) body with an error when its stream stays idle past its
    /// timeout (each frame restarts the timer), or outlives the route timeout.
    pub fn enforce_idle_timeout(&mut self, stream: Rc<StreamIdle>) {
        self.idle = Some(IdleWatch {
            stream,
            enforce: true,
        });
    }

    /// The complete bytes of a `full` body (for replaying a request on retry).
    pub fn bytes(&self) -> Option<Bytes> {
        match &self.kind {
            Kind::Empty => Some(Bytes::new()),
            Kind::Full(b) => b.clone(),
            Kind::Stream(_)
            | Kind::Upstream(_)
            | Kind::Downstream(_)
            | Kind::Tee(_)
            | Kind::Shadow(_)
            | Kind::Replay(_)
            | Kind::Compressed(_) => None,
        }
    }

    fn finish(&mut self, ok: bool) {
        if let Some(f) = self.on_end.take() {
            f(ok, self.bytes);
        }
    }
}

impl Drop for ProxyBody {
    fn drop(&mut self) {
        self.finish(false);
        if let Kind::Shadow(feed) = &self.kind {
            feed.detach();
        }
    }
}

impl Body for ProxyBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let this = self.get_mut();
        let mut r = match &mut this.kind {
            Kind::Empty => Poll::Ready(None),
            Kind::Full(b) => Poll::Ready(b.take().map(|b| Ok(Frame::data(b)))),
            Kind::Stream(inner) => Pin::new(inner)
                .poll_frame(cx)
                .map_err(|e| Box::new(e) as BoxError),
            Kind::Upstream(inner) => Pin::new(inner)
                .poll_frame(cx)
                .map_err(|e| Box::new(e) as BoxError),
            Kind::Downstream(inner) => inner.poll_frame(cx).map_err(|e| Box::new(e) as BoxError),
            Kind::Tee(t) => {
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
            Kind::Shadow(feed) => feed.poll_frame(cx),
            Kind::Replay(r) => r.poll_frame(cx),
            Kind::Compressed(c) => c.poll_frame(cx),
        };
        if this.drop_trailers && matches!(&r, Poll::Ready(Some(Ok(f))) if f.is_trailers()) {
            // Trailers come last: the body is complete without them.
            r = Poll::Ready(None);
        }
        let ended = match &r {
            Poll::Ready(Some(Ok(frame))) => {
                if let Some(d) = frame.data_ref() {
                    this.bytes += d.len() as u64;
                }
                this.is_end_stream()
            }
            Poll::Ready(Some(Err(_))) => {
                this.finish(false);
                false
            }
            Poll::Ready(None) => true,
            Poll::Pending => false,
        };
        if let Some(w) = &mut this.idle {
            match &r {
                Poll::Ready(Some(Ok(_))) => w.stream.touch(),
                Poll::Pending if w.enforce => {
                    if let Poll::Ready(expiry) = w.stream.poll_expired(cx) {
                        this.finish(false);
                        return Poll::Ready(Some(Err(expiry.message().into())));
                    }
                }
                _ => {}
            }
            if ended && !w.enforce {
                w.stream.request_ended();
            }
        }
        if ended {
            this.finish(true);
        }
        r
    }

    fn is_end_stream(&self) -> bool {
        match &self.kind {
            Kind::Empty => true,
            Kind::Full(b) => b.is_none(),
            Kind::Stream(inner) => inner.is_end_stream(),
            Kind::Upstream(inner) => inner.is_end_stream(),
            Kind::Downstream(inner) => inner.is_end_stream(),
            Kind::Tee(t) => t.inner.is_end_stream(),
            Kind::Shadow(feed) => feed.is_end_stream(),
            Kind::Replay(r) => r.is_end_stream(),
            Kind::Compressed(c) => c.is_end_stream(),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match &self.kind {
            Kind::Empty => SizeHint::with_exact(0),
            Kind::Full(b) => SizeHint::with_exact(b.as_ref().map_or(0, |b| b.len() as u64)),
            Kind::Stream(inner) => inner.size_hint(),
            Kind::Upstream(inner) => inner
                .exact_len()
                .map_or_else(SizeHint::default, SizeHint::with_exact),
            Kind::Downstream(inner) => inner
                .exact_len()
                .map_or_else(SizeHint::default, SizeHint::with_exact),
            Kind::Tee(t) => t.inner.size_hint(),
            Kind::Shadow(_) | Kind::Replay(_) | Kind::Compressed(_) => SizeHint::default(),
        }
    }
}
