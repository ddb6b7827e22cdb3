//! Body pacing (Envoy's `StreamRateLimiter`), which the bandwidth limit filter and the
//! fault filter's `response_rate_limit` put on a request or response body.
//!
//! As Envoy's: what arrives is buffered (up to the connection's buffer limit, past which
//! the body's source is no longer read: backpressure) and written out on ticks. The first
//! tick comes as soon as data is there; each takes as many bytes from the token bucket as
//! are buffered, or what it holds, and writes those. While bytes are left the next tick
//! comes one `fill_interval` later; a tick that empties the buffer arms none, and the
//! next data ticks at once. The body ends (its trailers go on) once the buffer is empty.
//!
//! The pacing is a [`BodyTransform`] on the worker: its ticks are the worker's timers
//! ([`rt::Sleep`]), it is only polled when the peer can take more, and a body dropped
//! mid-way (a client gone, a stream reset) cancels its timer and frees its buffer with it.

use std::collections::VecDeque;
use std::future::Future;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use bytes::{Buf, Bytes};
use courier_runtime::event::rt;
use http::HeaderMap;
use hyper::body::{Body, Frame, SizeHint};

use crate::filters::token_bucket::{Bucket, Tokens};
use crate::http::codec::body::{BodyTransform, BoxError, ProxyBody};

/// Envoy's default `fill_interval`.
pub const DEFAULT_FILL_INTERVAL: Duration = Duration::from_millis(50);

/// A token bucket of bytes: `limit_kbps` KiB a second, holding a second's worth when
/// full (Envoy's `StreamRateLimiter` buckets).
pub struct ByteBucket {
    spec: Bucket,
    tokens: Tokens,
}

impl ByteBucket {
    /// A full bucket of `limit_kbps` KiB a second (the bandwidth limit filter's, shared by
    /// the streams of its config on every worker).
    pub fn full(limit_kbps: u64) -> ByteBucket {
        let spec = ByteBucket::spec(limit_kbps);
        ByteBucket {
            tokens: Tokens::full(&spec),
            spec,
        }
    }

    /// A bucket of `limit_kbps` KiB a second holding one default fill interval's worth
    /// (Envoy's `simpleTokenBucket`: the fault filter's, one per stream).
    pub fn for_one_stream(limit_kbps: u64) -> ByteBucket {
        let spec = ByteBucket::spec(limit_kbps);
        let start = spec.max_tokens * DEFAULT_FILL_INTERVAL.as_secs_f64();
        ByteBucket {
            tokens: Tokens::holding(&spec, start.floor()),
            spec,
        }
    }

    fn spec(limit_kbps: u64) -> Bucket {
        let bytes = limit_kbps.saturating_mul(1024) as f64;
        Bucket {
            max_tokens: bytes,
            rate: bytes,
        }
    }

    /// Takes up to `want` bytes' worth.
    fn take_up_to(&self, want: u64) -> u64 {
        self.tokens.take_up_to(&self.spec, want)
    }
}

/// What the filter that paces a body does as it goes: its stats, and its trailers.
pub trait PaceObserver {
    /// A data frame of `len` bytes arrived (the first one starts the transfer).
    fn incoming(&mut self, len: usize);
    /// A tick let `len` bytes go; `enforced` when bytes were left waiting for the next
    /// one (`fill_interval` later).
    fn allowed(&mut self, len: u64, enforced: bool, fill_interval: Duration);
    /// The body went whole; `trailers` are the ones it ends with (it may add some).
    fn finished(&mut self, trailers: &mut Option<HeaderMap>);
}

/// A body paced through a [`ByteBucket`].
pub struct PacedBody<O: PaceObserver> {
    inner: ProxyBody,
    bucket: Arc<ByteBucket>,
    fill_interval: Duration,
    /// Past this many bytes buffered the source is not read.
    buffer_limit: usize,
    buffered: VecDeque<Bytes>,
    buffered_len: usize,
    /// The source ended (its trailers, if any, kept here).
    source_done: bool,
    trailers: Option<HeaderMap>,
    /// Bytes the last tick let go that are not written yet.
    granted: usize,
    /// The next tick, while bytes wait for one; none: the next data ticks at once.
    next_tick: Option<rt::Sleep>,
    /// The body went whole (the observer was told).
    finished: bool,
    observer: O,
}

impl<O: PaceObserver> PacedBody<O> {
    /// `inner` paced through `bucket`, a tick each `fill_interval`, buffering up to
    /// `buffer_limit` bytes ahead.
    pub fn new(
        inner: ProxyBody,
        bucket: Arc<ByteBucket>,
        fill_interval: Duration,
        buffer_limit: usize,
        observer: O,
    ) -> PacedBody<O> {
        PacedBody {
            inner,
            bucket,
            fill_interval,
            buffer_limit: buffer_limit.max(1),
            buffered: VecDeque::new(),
            buffered_len: 0,
            source_done: false,
            trailers: None,
            granted: 0,
            next_tick: None,
            finished: false,
            observer,
        }
    }

    /// Reads what the source has, up to the buffer limit.
    fn read_ahead(&mut self, cx: &mut Context<'_>) -> Result<(), BoxError> {
        while !self.source_done && self.buffered_len < self.buffer_limit {
            match std::pin::Pin::new(&mut self.inner).poll_frame(cx) {
                Poll::Ready(Some(Ok(frame))) => match frame.into_data() {
                    Ok(data) => {
                        self.observer.incoming(data.len());
                        if !data.is_empty() {
                            self.buffered_len += data.len();
                            self.buffered.push_back(data);
                        }
                    }
                    Err(frame) => {
                        // Trailers come last.
                        self.trailers = frame.into_trailers().ok();
                        self.source_done = true;
                    }
                },
                Poll::Ready(Some(Err(e))) => return Err(e),
                Poll::Ready(None) => self.source_done = true,
                Poll::Pending => break,
            }
        }
        Ok(())
    }

    /// Up to `granted` bytes off the front of the buffer.
    fn take_granted(&mut self) -> Option<Bytes> {
        let front = self.buffered.front_mut()?;
        let n = self.granted.min(front.len());
        let out = if n == front.len() {
            self.buffered.pop_front()?
        } else {
            let out = front.slice(..n);
            front.advance(n);
            out
        };
        self.granted -= n;
        self.buffered_len -= n;
        Some(out)
    }
}

impl<O: PaceObserver> BodyTransform for PacedBody<O> {
    fn poll_frame(&mut self, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        if let Err(e) = self.read_ahead(cx) {
            return Poll::Ready(Some(Err(e)));
        }
        loop {
            if self.granted > 0 {
                if let Some(data) = self.take_granted() {
                    return Poll::Ready(Some(Ok(Frame::data(data))));
                }
            }
            if self.buffered_len == 0 {
                if !self.source_done {
                    // The source registered the waker.
                    return Poll::Pending;
                }
                if !self.finished {
                    self.finished = true;
                    self.observer.finished(&mut self.trailers);
                }
                return Poll::Ready(self.trailers.take().map(|t| Ok(Frame::trailers(t))));
            }
            if let Some(tick) = self.next_tick.as_mut() {
                if std::pin::Pin::new(tick).poll(cx).is_pending() {
                    return Poll::Pending;
                }
                self.next_tick = None;
            }
            let want = self.buffered_len as u64;
            let got = self.bucket.take_up_to(want);
            let enforced = got < want;
            self.observer.allowed(got, enforced, self.fill_interval);
            // `got` is at most what is buffered.
            self.granted = usize::try_from(got).unwrap_or(usize::MAX);
            if enforced {
                self.next_tick = Some(rt::Sleep::until(Instant::now() + self.fill_interval));
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        self.finished && self.trailers.is_none()
    }

    /// The length is the source's: pacing changes when bytes go, not how many.
    fn size_hint(&self) -> SizeHint {
        match self.inner.size_hint().exact() {
            Some(n) => SizeHint::with_exact(n + self.buffered_len as u64),
            None => SizeHint::default(),
        }
    }
}
