//! A body streamed both ways (Envoy's `FULL_DUPLEX_STREAMED` body mode): each chunk is
//! sent to the service as it comes, and dropped; what goes on is the body the service
//! streams back (`streamed_response`), in as many pieces as it likes, independently of
//! what it was sent, until one is marked `end_of_stream` — or, when the body has
//! trailers, until its answer to them, which also changes them.
//!
//! As Envoy's: chunks go to the service even while the headers wait for their answer
//! (the service may read the whole body before it answers the headers); no message of a
//! direction streamed both ways has a `message_timeout`; a body answer without a
//! `streamed_response`, or one when no chunk waits, is out of order (spurious); once a
//! chunk is sent a failure cannot let the request go on, whatever
//! `failure_mode_allow` says (the data is gone). A stream the service closes lets the
//! rest of the body pass on as it is.

use std::collections::VecDeque;
use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::Bytes;
use courier_proto::envoy::service::ext_proc::v3::body_mutation::Mutation;
use http::HeaderMap;
use hyper::body::{Body, Frame};

use super::channel::{Shared, Verdict};
use super::streamed::Ended;
use crate::filters::http::ext_proc::messages::{self, Phase};
use crate::filters::http::ext_proc::mutation::{Pseudo, Target};
use crate::http::codec::body::{BodyTransform, BoxError, ProxyBody};

/// A body streamed both ways.
pub(super) struct Duplex {
    chan: Shared,
    /// The request's body (else the response's).
    request: bool,
    send_trailers: bool,
    inner: ProxyBody,
    inner_done: bool,
    /// A chunk marked `end_of_stream` was sent.
    end_sent: bool,
    /// The peer broke off: given as the body's error once what is ready is out.
    failed: Option<BoxError>,
    /// A chunk was sent and the service's body has not ended since (Envoy's
    /// `StreamedBodyCallback` state): body answers are taken.
    body_open: bool,
    /// The trailers, sent and waiting for their answer.
    trailers: Option<HeaderMap>,
    trailers_sent: bool,
    /// Frames the service gave, to be passed on.
    ready: VecDeque<Frame<Bytes>>,
    /// The service's body ended: nothing more goes on.
    ended: bool,
    /// Processing ended: the rest of the body passes on as it is.
    passthrough: bool,
}

impl Duplex {
    /// `inner` streamed both ways on `chan`; its trailers sent when `send_trailers`.
    pub fn new(chan: Shared, request: bool, send_trailers: bool, inner: ProxyBody) -> Duplex {
        Duplex {
            chan,
            request,
            send_trailers,
            inner,
            inner_done: false,
            end_sent: false,
            failed: None,
            body_open: false,
            trailers: None,
            trailers_sent: false,
            ready: VecDeque::new(),
            ended: false,
            passthrough: false,
        }
    }

    /// What of the body the service has not been sent (a `CONTINUE_AND_REPLACE` to the
    /// headers drops the rest; what was sent is gone, as in Envoy).
    pub fn into_rest(self) -> ProxyBody {
        self.inner
    }

    fn phase(&self) -> Phase {
        match self.request {
            true => Phase::RequestBody,
            false => Phase::ResponseBody,
        }
    }

    fn send_chunk(&mut self, data: &[u8], end: bool) {
        let phase = self.phase();
        let mut c = self.chan.borrow_mut();
        c.send(&messages::body_message(phase, data, end), phase);
        c.duplex_body_sent = true;
        self.end_sent |= end;
        self.body_open = true;
    }

    fn on_trailers(&mut self, t: HeaderMap) {
        if self.send_trailers {
            let phase = match self.request {
                true => Phase::RequestTrailers,
                false => Phase::ResponseTrailers,
            };
            let msg = {
                let c = self.chan.borrow();
                messages::trailers_message(phase, &t, &c.core.forward)
            };
            self.chan.borrow_mut().send(&msg, phase);
            self.trailers = Some(t);
            self.trailers_sent = true;
        } else {
            // Trailers not sent (a mode the service set): Envoy lets them go on at once,
            // which ends the body.
            self.ready.push_back(Frame::trailers(t));
            self.ended = true;
        }
    }

    /// Reads what the peer has sent of the body and sends it on to the service.
    pub fn pump(&mut self, cx: &mut Context<'_>) {
        while !self.inner_done && !self.passthrough && !self.chan.borrow().complete {
            match Pin::new(&mut self.inner).poll_frame(cx) {
                Poll::Pending => return,
                Poll::Ready(Some(Ok(frame))) => match frame.into_data() {
                    Ok(d) => {
                        let end = self.inner.is_end_stream();
                        self.inner_done = end;
                        self.send_chunk(&d, end);
                    }
                    Err(frame) => {
                        self.inner_done = true;
                        if let Ok(t) = frame.into_trailers() {
                            self.on_trailers(t);
                        }
                    }
                },
                Poll::Ready(Some(Err(e))) => {
                    self.inner_done = true;
                    self.failed = Some(e);
                }
                Poll::Ready(None) => {
                    self.inner_done = true;
                    // A chunked body's end: an empty chunk ends it, as Envoy's codec's
                    // last data.
                    if !self.end_sent {
                        self.send_chunk(&[], true);
                    }
                }
            }
        }
    }

    /// Processing ended and lets the request go on: held trailers and the rest of the
    /// body pass on as they are.
    fn release(&mut self) {
        self.passthrough = true;
        self.body_open = false;
        self.trailers_sent = false;
        self.chan.borrow_mut().settle(self.request);
        if let Some(t) = self.trailers.take() {
            self.ready.push_back(Frame::trailers(t));
        }
    }

    /// What a verdict that is not an answer does: `Err` ends the body.
    fn stopped(&mut self, v: Verdict) -> Result<(), BoxError> {
        match v {
            Verdict::Reply(reply, details) => {
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

    /// Takes the service's next answer and applies it.
    fn poll_answer(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), BoxError>> {
        let (request, open, trailers) = (self.request, self.body_open, self.trailers_sent);
        let v = std::task::ready!(self.chan.borrow_mut().poll_answer(
            request,
            |r| (messages::classify_duplex(r, request, open, trailers), None),
            cx,
        ));
        match v {
            Verdict::Answered(c) => {
                self.chan.borrow().count_route_cache(&c);
                let streamed = c.body_mutation.and_then(|m| match m.mutation {
                    Some(Mutation::StreamedResponse(s)) => Some(s),
                    _ => None,
                });
                if let Some(s) = streamed {
                    if !s.body.is_empty() {
                        self.ready.push_back(Frame::data(Bytes::from(s.body)));
                    }
                    if s.end_of_stream {
                        self.body_open = false;
                        if !self.trailers_sent {
                            self.ended = true;
                            self.chan.borrow_mut().settle(self.request);
                        }
                    }
                }
                Poll::Ready(Ok(()))
            }
            Verdict::Trailers(c) => {
                let mut t = self.trailers.take().unwrap_or_default();
                let mutated = self.chan.borrow_mut().mutate(
                    &c,
                    &mut t,
                    &mut Pseudo::default(),
                    Target::Trailers,
                );
                if let Err(v) = mutated {
                    return Poll::Ready(self.stopped(v));
                }
                self.ready.push_back(Frame::trailers(t));
                self.trailers_sent = false;
                self.body_open = false;
                self.ended = true;
                self.chan.borrow_mut().settle(self.request);
                Poll::Ready(Ok(()))
            }
            other => Poll::Ready(self.stopped(other)),
        }
    }
}

impl BodyTransform for Duplex {
    fn poll_frame(&mut self, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        loop {
            if let Some(f) = self.ready.pop_front() {
                return Poll::Ready(Some(Ok(f)));
            }
            if let Some(e) = self.failed.take() {
                return Poll::Ready(Some(Err(e)));
            }
            if self.ended {
                return Poll::Ready(None);
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
            if self.chan.borrow().complete {
                self.release();
                continue;
            }
            self.pump(cx);
            if self.failed.is_some() || !self.ready.is_empty() || self.ended {
                continue;
            }
            if !self.body_open && !self.trailers_sent {
                // Nothing waits for an answer (no chunk yet, or the body ended with none
                // marked as its end).
                if self.inner_done {
                    return Poll::Ready(None);
                }
                return Poll::Pending;
            }
            match self.poll_answer(cx) {
                Poll::Ready(Ok(())) => continue,
                Poll::Ready(Err(e)) => return Poll::Ready(Some(Err(e))),
                Poll::Pending => return Poll::Pending,
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        self.ready.is_empty()
            && self.failed.is_none()
            && (self.ended || (self.passthrough && self.inner_done))
    }
}
