//! A body that goes on while the service sees it (Envoy's `STREAMED` body mode, and the
//! trailers of a body not held): each chunk is sent as it comes and held until its
//! answer, which may change it; chunks are read ahead, up to the buffer limit, while
//! answers are pending (Envoy's chunk queue and watermarks). Trailers wait for the last
//! chunk's answer, then for their own when they are sent.
//!
//! As Envoy's: each chunk sent (re)starts `message_timeout`; an answer stops it when no
//! other chunk waits (Envoy's stops it even then: see the answer's handling); a
//! chunk's answer may replace or clear it, never the headers, already gone. An
//! immediate response, a failure or a timeout that does not let the request go on ends
//! the body with an error (the request's reply is then the channel's, given by the
//! response pass; a response already under way is reset); one that does (`failure_mode_allow`,
//! a stream the service closed) lets the chunks held and the rest of the body pass on.
//! A chunk's answer with a `streamed_response` (full duplex's) is out of order.

use std::collections::VecDeque;
use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Instant;

use bytes::{Bytes, BytesMut};
use http::HeaderMap;
use hyper::body::{Body, Frame};

use super::channel::{Shared, Verdict};
use crate::filters::http::ext_proc::messages::{self, Answer, Phase};
use crate::filters::http::ext_proc::mutation::{self, Pseudo, Target};
use crate::http::codec::body::{BodyTransform, BoxError, ProxyBody};
use courier_runtime::event::rt::Sleep;

/// Why a streamed body ended early.
#[derive(Debug, thiserror::Error)]
#[error("external processing ended the body")]
pub(super) struct Ended;

/// A body streamed to the service.
pub(super) struct Streamed {
    chan: Shared,
    /// The request's body (else the response's).
    request: bool,
    /// Its chunks are sent (else only its trailers are).
    send_body: bool,
    send_trailers: bool,
    inner: ProxyBody,
    inner_done: bool,
    /// A chunk marked `end_of_stream` was sent.
    end_sent: bool,
    /// The chunks sent whose answers are pending, and whether each ended the body.
    queue: VecDeque<(Bytes, bool)>,
    queued: usize,
    limit: usize,
    /// Frames answered, to be passed on.
    ready: VecDeque<Frame<Bytes>>,
    /// The trailers, held.
    trailers: Option<HeaderMap>,
    /// They were sent and wait for their answer.
    trailers_sent: bool,
    timer: Option<Sleep>,
    /// Processing ended: the rest passes on as it is.
    passthrough: bool,
}

impl Streamed {
    /// `inner` streamed (`send_body`; else its trailers only) on `chan`, read ahead up
    /// to `limit` bytes.
    pub fn new(
        chan: Shared,
        request: bool,
        send_body: bool,
        send_trailers: bool,
        inner: ProxyBody,
        limit: usize,
    ) -> Streamed {
        Streamed {
            chan,
            request,
            send_body,
            send_trailers,
            inner,
            inner_done: false,
            end_sent: false,
            queue: VecDeque::new(),
            queued: 0,
            limit,
            ready: VecDeque::new(),
            trailers: None,
            trailers_sent: false,
            timer: None,
            passthrough: false,
        }
    }

    /// The body starts with `head`, already answered (a partly held body's part).
    pub fn with_head(mut self, head: Bytes) -> Streamed {
        if !head.is_empty() {
            self.ready.push_back(Frame::data(head));
        }
        self
    }

    fn body_phase(&self) -> Phase {
        if self.request {
            Phase::RequestBody
        } else {
            Phase::ResponseBody
        }
    }

    fn trailers_phase(&self) -> Phase {
        if self.request {
            Phase::RequestTrailers
        } else {
            Phase::ResponseTrailers
        }
    }

    fn start_timer(&mut self) {
        let timeout = self.chan.borrow().core.message_timeout;
        self.timer = Some(Sleep::until(Instant::now() + timeout));
    }

    /// Sends a chunk and holds it for its answer.
    fn send_chunk(&mut self, data: Bytes, end: bool) {
        let phase = self.body_phase();
        self.chan
            .borrow_mut()
            .send(&messages::body_message(phase, &data, end), phase);
        self.end_sent |= end;
        self.queued += data.len();
        self.queue.push_back((data, end));
        self.start_timer();
    }

    fn on_data(&mut self, data: Bytes, end: bool) {
        if self.send_body && !self.chan.borrow().complete {
            self.send_chunk(data, end);
        } else if !data.is_empty() {
            self.ready.push_back(Frame::data(data));
        }
    }

    /// The body ended without trailers after a chunk not marked as its end (a chunked
    /// body's last chunk): an empty chunk ends it, as Envoy's codec's last data.
    fn on_end(&mut self) {
        if self.send_body && !self.end_sent && !self.chan.borrow().complete {
            self.send_chunk(Bytes::new(), true);
        }
    }

    fn on_trailers(&mut self, t: HeaderMap) {
        self.trailers = Some(t);
        if self.queue.is_empty() {
            self.trailers_due();
        }
    }

    /// The trailers are next: sent, or passed on.
    fn trailers_due(&mut self) {
        let Some(t) = self.trailers.take() else {
            return;
        };
        let complete = self.chan.borrow().complete;
        if self.send_trailers && !complete {
            let phase = self.trailers_phase();
            let msg = {
                let c = self.chan.borrow();
                messages::trailers_message(phase, &t, &c.core.forward)
            };
            self.chan.borrow_mut().send(&msg, phase);
            self.trailers = Some(t);
            self.trailers_sent = true;
            self.start_timer();
        } else {
            self.ready.push_back(Frame::trailers(t));
        }
    }

    fn awaiting(&self) -> bool {
        !self.queue.is_empty() || self.trailers_sent
    }

    /// Processing ended and lets the request go on: what is held passes on as it is
    /// (Envoy's `clearAsyncState`).
    fn release(&mut self) {
        self.passthrough = true;
        self.timer = None;
        self.trailers_sent = false;
        self.chan.borrow_mut().settle(self.request);
        let mut held = BytesMut::new();
        for (d, _) in self.queue.drain(..) {
            held.extend_from_slice(&d);
        }
        self.queued = 0;
        if !held.is_empty() {
            self.ready.push_back(Frame::data(held.freeze()));
        }
        if let Some(t) = self.trailers.take() {
            self.ready.push_back(Frame::trailers(t));
        }
    }

    /// What a verdict that is not an answer does: `Err` ends the body.
    fn ended(&mut self, v: Verdict) -> Result<(), BoxError> {
        match v {
            Verdict::Reply(reply, details) => {
                self.timer = None;
                self.chan
                    .borrow_mut()
                    .end_with_reply(self.request, reply, details);
                Err(Box::new(Ended))
            }
            _ => {
                self.release();
                Ok(())
            }
        }
    }

    /// Waits for the pending answer (or the timeout) and applies it.
    fn poll_answer(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), BoxError>> {
        if let Some(t) = &mut self.timer {
            if Pin::new(t).poll(cx).is_ready() {
                self.timer = None;
                let v = self.chan.borrow_mut().timed_out();
                return Poll::Ready(self.ended(v));
            }
        }
        let phase = if self.trailers_sent {
            self.trailers_phase()
        } else {
            self.body_phase()
        };
        let body = !self.trailers_sent;
        let v = match self.chan.borrow_mut().poll_answer(
            self.request,
            |r| {
                // A chunk's answer streaming a body back belongs to full duplex: Envoy
                // takes it as out of order here.
                let a = match messages::classify(r, phase) {
                    Answer::Common(c) if body && streams_back(&c) => Answer::Spurious,
                    a => a,
                };
                (a, None)
            },
            cx,
        ) {
            Poll::Pending => return Poll::Pending,
            Poll::Ready(v) => v,
        };
        let c = match v {
            Verdict::Answered(c) => c,
            other => return Poll::Ready(self.ended(other)),
        };
        self.timer = None;
        if self.trailers_sent {
            self.trailers_sent = false;
            self.chan.borrow_mut().settle(self.request);
            let mut t = self.trailers.take().unwrap_or_default();
            let mutated =
                self.chan
                    .borrow_mut()
                    .mutate(&c, &mut t, &mut Pseudo::default(), Target::Trailers);
            if let Err(v) = mutated {
                return Poll::Ready(self.ended(v));
            }
            self.ready.push_back(Frame::trailers(t));
            return Poll::Ready(Ok(()));
        }
        self.chan.borrow().count_route_cache(&c);
        if let Some((data, _)) = self.queue.pop_front() {
            self.queued -= data.len();
            let data = c
                .body_mutation
                .as_ref()
                .and_then(mutation::apply_body)
                .unwrap_or(data);
            if !data.is_empty() {
                self.ready.push_back(Frame::data(data));
            }
        }
        if self.queue.is_empty() {
            self.chan.borrow_mut().settle(self.request);
            self.trailers_due();
        } else {
            // Envoy stops its timer here though chunks still wait (a chunk sent before
            // the answer to the one ahead of it then never times out, and the request
            // hangs until the route's timeout): Courier gives the next one its own
            // `message_timeout` (DIFFERENCES.md).
            self.start_timer();
        }
        Poll::Ready(Ok(()))
    }
}

/// Whether an answer's body mutation is a `streamed_response`.
fn streams_back(c: &courier_proto::envoy::service::ext_proc::v3::CommonResponse) -> bool {
    use courier_proto::envoy::service::ext_proc::v3::body_mutation::Mutation;
    matches!(
        c.body_mutation.as_ref().and_then(|m| m.mutation.as_ref()),
        Some(Mutation::StreamedResponse(_))
    )
}

impl BodyTransform for Streamed {
    fn poll_frame(&mut self, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        loop {
            if let Some(f) = self.ready.pop_front() {
                return Poll::Ready(Some(Ok(f)));
            }
            if self.passthrough {
                if self.inner_done {
                    return Poll::Ready(None);
                }
                let next = std::task::ready!(Pin::new(&mut self.inner).poll_frame(cx));
                self.inner_done = next.is_none();
                return Poll::Ready(next);
            }
            if self.chan.borrow().reply.is_some() {
                // The other direction decided the request's reply.
                return Poll::Ready(Some(Err(Box::new(Ended))));
            }
            if self.chan.borrow().complete && !self.awaiting() {
                self.release();
                continue;
            }
            if !self.inner_done && self.queued <= self.limit && self.trailers.is_none() {
                match Pin::new(&mut self.inner).poll_frame(cx) {
                    Poll::Ready(Some(Ok(frame))) => {
                        match frame.into_data() {
                            Ok(d) => {
                                let end = self.inner.is_end_stream();
                                self.inner_done = end;
                                self.on_data(d, end);
                            }
                            Err(frame) => {
                                self.inner_done = true;
                                if let Ok(t) = frame.into_trailers() {
                                    self.on_trailers(t);
                                }
                            }
                        }
                        continue;
                    }
                    Poll::Ready(Some(Err(e))) => return Poll::Ready(Some(Err(e))),
                    Poll::Ready(None) => {
                        self.inner_done = true;
                        self.on_end();
                        continue;
                    }
                    Poll::Pending => {}
                }
            }
            if self.awaiting() {
                match self.poll_answer(cx) {
                    Poll::Ready(Ok(())) => continue,
                    Poll::Ready(Err(e)) => return Poll::Ready(Some(Err(e))),
                    Poll::Pending => {}
                }
            }
            if self.inner_done && !self.awaiting() && self.trailers.is_none() {
                return Poll::Ready(None);
            }
            return Poll::Pending;
        }
    }

    fn is_end_stream(&self) -> bool {
        self.ready.is_empty()
            && self.inner_done
            && self.queue.is_empty()
            && self.trailers.is_none()
            && !self.trailers_sent
    }
}
