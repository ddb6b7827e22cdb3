//! A request body forwarded as it arrives while a copy is kept for retries (Envoy's
//! buffering for retries, which holds nothing back): a gRPC stream or a slow upload on a
//! route with a retry policy reaches the upstream at once, and a retry sends the copy
//! again, then whatever the client still sends.
//!
//! The copy is bounded by the request's buffer limit; past it the request goes on without
//! retries (`retry_or_shadow_abandoned`), as Envoy. A body already complete when the
//! request is routed is taken whole ([`RetryBuffer::prefill`]), the common case, and goes
//! through Courier's own HTTP/1 client like any complete body.
//!
//! The buffer filter holds a request's whole body in one before the request goes on
//! ([`RetryBuffer::fill`]); past its limit the request is refused.

use std::cell::{Cell, RefCell};
use std::pin::Pin;
use std::rc::Rc;
use std::sync::Arc;
use std::task::{Context, Poll, Waker};

use bytes::Bytes;
use http::HeaderMap;
use hyper::body::{Body, Frame};

use crate::http::codec::body::{BodyTransform, BoxError, ProxyBody};
use crate::stats::Counter;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum State {
    /// The client is still sending; everything so far is kept.
    Open,
    /// The whole body is kept.
    Ended,
    /// Past the limit: no retry. What is kept is only what the first attempt has yet to
    /// send.
    Overflowed,
    /// The client's body failed.
    Broken,
}

/// The body of one request, shared by its attempts ([`ProxyBody::filtered`] of a [`Replay`]).
pub struct RetryBuffer {
    source: RefCell<Option<ProxyBody>>,
    kept: RefCell<Vec<Bytes>>,
    kept_len: Cell<usize>,
    trailers: RefCell<Option<HeaderMap>>,
    limit: usize,
    state: Cell<State>,
    abandoned: Arc<Counter>,
    worker: usize,
}

impl RetryBuffer {
    /// `source`, kept up to `limit` bytes (past it counted in `abandoned`: the router's
    /// `retry_or_shadow_abandoned`, the buffer filter's `downstream_rq_too_large`).
    pub fn new(
        source: ProxyBody,
        limit: usize,
        abandoned: Arc<Counter>,
        worker: usize,
    ) -> Rc<Self> {
        Rc::new(RetryBuffer {
            source: RefCell::new(Some(source)),
            kept: RefCell::new(Vec::new()),
            kept_len: Cell::new(0),
            trailers: RefCell::new(None),
            limit,
            state: Cell::new(State::Open),
            abandoned,
            worker,
        })
    }

    /// Takes in what has already arrived, without waiting: the whole body when it is all
    /// in (and has no trailers).
    pub fn prefill(&self) -> Option<Bytes> {
        let mut cx = Context::from_waker(Waker::noop());
        while self.state.get() == State::Open {
            match self.poll_source(&mut cx, true) {
                Poll::Ready(Some(Ok(_))) => {}
                Poll::Ready(None) => break,
                Poll::Ready(Some(Err(_))) | Poll::Pending => return None,
            }
        }
        if self.state.get() != State::Ended || self.trailers.borrow().is_some() {
            return None;
        }
        let kept = self.kept.borrow();
        Some(match kept.len() {
            0 => Bytes::new(),
            1 => kept[0].clone(),
            _ => kept.concat().into(),
        })
    }

    /// Receives the whole body, keeping all of it, before anything reads it (the buffer
    /// filter): whether it ended, past the limit, or broke.
    pub async fn fill(&self) -> Filled {
        std::future::poll_fn(|cx| {
            while self.state.get() == State::Open {
                match std::task::ready!(self.poll_source(cx, true)) {
                    Some(Ok(_)) => {}
                    None | Some(Err(_)) => break,
                }
            }
            Poll::Ready(match self.state.get() {
                State::Open | State::Ended => Filled::Whole(self.kept_len.get()),
                State::Overflowed => Filled::TooLarge,
                State::Broken => Filled::Broken,
            })
        })
        .await
    }

    /// Whether another attempt can send the body again.
    pub fn replayable(&self) -> bool {
        matches!(self.state.get(), State::Open | State::Ended)
    }

    /// The next frame from the client, kept while under the limit. `store_past_limit`:
    /// the frame that crosses the limit is kept too (no attempt is reading yet, so it has
    /// nowhere else to go).
    fn poll_source(
        &self,
        cx: &mut Context<'_>,
        store_past_limit: bool,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let mut source = self.source.borrow_mut();
        let Some(body) = source.as_mut() else {
            return Poll::Ready(None);
        };
        let frame = std::task::ready!(Pin::new(&mut *body).poll_frame(cx));
        match &frame {
            Some(Ok(f)) => {
                if let Some(d) = f.data_ref() {
                    self.keep(d, store_past_limit);
                } else if let Some(t) = f.trailers_ref() {
                    if self.state.get() == State::Open {
                        *self.trailers.borrow_mut() = Some(t.clone());
                    }
                }
                if body.is_end_stream() {
                    *source = None;
                    self.ended();
                }
            }
            None => {
                *source = None;
                self.ended();
            }
            Some(Err(_)) => {
                *source = None;
                if self.state.get() == State::Open {
                    self.state.set(State::Broken);
                }
            }
        }
        Poll::Ready(frame)
    }

    fn keep(&self, data: &Bytes, store_past_limit: bool) {
        if self.state.get() != State::Open {
            return;
        }
        let len = self.kept_len.get() + data.len();
        if len > self.limit {
            self.abandoned.inc(self.worker);
            self.state.set(State::Overflowed);
            if !store_past_limit {
                // The attempt reading it has sent everything kept before it.
                self.kept.borrow_mut().clear();
                return;
            }
        }
        self.kept_len.set(len);
        self.kept.borrow_mut().push(data.clone());
    }

    fn ended(&self) {
        if self.state.get() == State::Open {
            self.state.set(State::Ended);
        }
    }
}

/// What [`RetryBuffer::fill`] came to.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Filled {
    /// The whole body, this long.
    Whole(usize),
    /// Past the limit.
    TooLarge,
    /// The client's body failed.
    Broken,
}

/// One attempt's reading of a [`RetryBuffer`]: the kept frames from the start, then the
/// client's.
pub struct Replay {
    buffer: Rc<RetryBuffer>,
    next: usize,
    trailers_sent: bool,
}

impl Replay {
    /// A reading from the start.
    pub fn new(buffer: Rc<RetryBuffer>) -> Replay {
        Replay {
            buffer,
            next: 0,
            trailers_sent: false,
        }
    }
}

impl BodyTransform for Replay {
    /// The next frame.
    fn poll_frame(&mut self, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let b = &*self.buffer;
        {
            let mut kept = b.kept.borrow_mut();
            if self.next < kept.len() {
                self.next += 1;
                let data = kept[self.next - 1].clone();
                if b.state.get() == State::Overflowed && self.next == kept.len() {
                    // Past the limit nothing is replayed: what was kept goes now.
                    kept.clear();
                    self.next = 0;
                }
                return Poll::Ready(Some(Ok(Frame::data(data))));
            }
        }
        match b.state.get() {
            State::Ended => {
                if !self.trailers_sent {
                    self.trailers_sent = true;
                    if let Some(t) = b.trailers.borrow().clone() {
                        return Poll::Ready(Some(Ok(Frame::trailers(t))));
                    }
                }
                Poll::Ready(None)
            }
            State::Broken => Poll::Ready(Some(Err("request body failed".into()))),
            State::Open | State::Overflowed => {
                let frame = std::task::ready!(b.poll_source(cx, false));
                // A kept frame is this attempt's already.
                self.next = b.kept.borrow().len();
                if matches!(&frame, Some(Ok(f)) if f.is_trailers()) {
                    self.trailers_sent = true;
                }
                Poll::Ready(frame)
            }
        }
    }

    /// Whether nothing is left to read.
    fn is_end_stream(&self) -> bool {
        let b = &*self.buffer;
        b.state.get() == State::Ended
            && self.next >= b.kept.borrow().len()
            && (self.trailers_sent || b.trailers.borrow().is_none())
    }
}
