//! The body type that flows through the proxy in both directions.
//!
//! A [`ProxyBody`] is one of the codecs' own bodies (a full one, hyper's, Courier's
//! HTTP/1 server's and client's), or a body a filter or the router transforms as it
//! passes ([`ProxyBody::filtered`]: compression, a mirror's tee, a retry's replay), boxed,
//! as those always were. Its completion hooks and its part in the stream's idle timeout
//! ([`ActivityWatch`]) are the connection manager's, reached through a trait so the codec
//! layer imports nothing above it.

use std::pin::Pin;
use std::rc::Rc;
use std::task::{Context, Poll};

use bytes::Bytes;
use hyper::body::Incoming;
use hyper::body::{Body, Frame, SizeHint};

use crate::http::codec::downstream_body::DownstreamBody;
use crate::http::codec::upstream_h1::UpstreamBody;

/// Boxed body error.
pub type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// Called once when a streamed body ends: `true` when it reached its end cleanly, and the
/// number of data bytes that went through.
pub type OnEnd = Box<dyn FnOnce(bool, u64)>;

/// A body a filter or the router transforms as it passes (compression, a mirror's tee or
/// copy, a retry's replay): what [`ProxyBody::filtered`] takes.
pub trait BodyTransform {
    /// The next frame.
    fn poll_frame(&mut self, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, BoxError>>>;
    /// Whether nothing is left.
    fn is_end_stream(&self) -> bool;
    /// What is known of the length.
    fn size_hint(&self) -> SizeHint {
        SizeHint::default()
    }
}

/// A body passed on as it is, but for its length, which is no longer told (a filter took
/// away its `content-length`, as Envoy's gRPC-Web and gRPC HTTP/1.1 bridge filters do: the
/// codec would otherwise put one back from an exact size).
pub struct UnsizedBody(pub ProxyBody);

impl BodyTransform for UnsizedBody {
    fn poll_frame(&mut self, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        Pin::new(&mut self.0).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.0.is_end_stream()
    }
}

/// A stream's idle timeout as a body sees it (the connection manager's `StreamIdle`).
pub trait ActivityWatch {
    /// A frame went through: the stream is not idle.
    fn touch(&self);
    /// The request body ended, `bytes` long.
    fn request_ended(&self, bytes: u64);
    /// Ready with the error message once the stream has been idle too long (or outlived
    /// its route timeout); registers `cx` to be woken then.
    fn poll_expired(&self, cx: &mut Context<'_>) -> Poll<&'static str>;
    /// The response's trailers went through (for the access logs).
    fn trailers(&self, _trailers: &http::HeaderMap) {}
}

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
    stream: Rc<dyn ActivityWatch>,
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
    /// A body transformed as it passes.
    Filtered(Box<dyn BodyTransform>),
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
    /// ([`crate::http::codec::upstream_h1`]).
    pub fn upstream(inner: UpstreamBody) -> ProxyBody {
        ProxyBody::of(Kind::Upstream(inner))
    }

    /// A request body read from a downstream HTTP/1.1 connection by Courier's own codec
    /// ([`crate::http::codec::h1_server`]).
    pub fn downstream(inner: DownstreamBody) -> ProxyBody {
        ProxyBody::of(Kind::Downstream(inner))
    }

    /// `body`, transformed as it passes by a filter or the router.
    pub fn filtered(body: impl BodyTransform + 'static) -> ProxyBody {
        ProxyBody::of(Kind::Filtered(Box::new(body)))
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
    pub fn report_activity(&mut self, stream: Rc<dyn ActivityWatch>) {
        self.idle = Some(IdleWatch {
            stream,
            enforce: false,
        });
    }

    /// Ends this (response) body with an error when its stream stays idle past its
    /// timeout (each frame restarts the timer), or outlives the route timeout.
    pub fn enforce_idle_timeout(&mut self, stream: Rc<dyn ActivityWatch>) {
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
            Kind::Stream(_) | Kind::Upstream(_) | Kind::Downstream(_) | Kind::Filtered(_) => None,
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
            Kind::Filtered(b) => b.poll_frame(cx),
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
                Poll::Ready(Some(Ok(frame))) => {
                    w.stream.touch();
                    if w.enforce {
                        if let Some(t) = frame.trailers_ref() {
                            w.stream.trailers(t);
                        }
                    }
                }
                Poll::Pending if w.enforce => {
                    if let Poll::Ready(message) = w.stream.poll_expired(cx) {
                        this.finish(false);
                        return Poll::Ready(Some(Err(message.into())));
                    }
                }
                _ => {}
            }
            if ended && !w.enforce {
                w.stream.request_ended(this.bytes);
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
            Kind::Filtered(b) => b.is_end_stream(),
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
            Kind::Filtered(b) => b.size_hint(),
        }
    }
}
