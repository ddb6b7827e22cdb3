//! A request's processing stream as both directions share it (Envoy's one stream per
//! filter instance, with a decoding and an encoding state): the stream opened with the
//! first message, each answer taken by the direction it is for, and what a failure, a
//! timeout or a spurious answer makes of the request.

use std::cell::RefCell;
use std::collections::VecDeque;
use std::rc::Rc;
use std::sync::Arc;
use std::task::{Context, Poll};

use courier_proto::envoy::extensions::filters::http::ext_proc::v3::ProcessingMode;
use courier_proto::envoy::service::ext_proc::v3::{
    CommonResponse, ProcessingRequest, ProcessingResponse,
};
use http::{HeaderMap, Response, StatusCode};

use crate::filters::http::ext_proc::messages::{self, Answer, Phase};
use crate::filters::http::ext_proc::mutation::{self, Pseudo, Target};
use crate::filters::http::ext_proc::{Core, PROCESS_PATH};
use crate::http::codec::body::ProxyBody;
use crate::http::conn_manager::local_reply::local_reply;
use crate::http::router::async_client::EnvoyHeaders;
use crate::http::router::async_stream::GrpcStream;
use crate::stats::Store;

/// Details of a request answered for a message's timeout.
const TIMEOUT_DETAILS: &str = "ext_proc_error_per-message_timeout_exceeded";

/// The channel as its users hold it.
pub(super) type Shared = Rc<RefCell<Channel>>;

/// How a message's exchange ended.
pub(super) enum Verdict {
    /// The service answered it.
    Answered(Box<CommonResponse>),
    /// The service answered a body's trailers (a body streamed both ways, which takes
    /// either answer).
    Trailers(Box<CommonResponse>),
    /// Processing ended; the request goes on as it is.
    Done,
    /// The request is answered so, with these details.
    Reply(Box<Response<ProxyBody>>, String),
}

/// One request's stream and what both directions know of it.
pub(super) struct Channel {
    /// The filter's settings and counters.
    pub core: Arc<Core>,
    stream: Option<GrpcStream>,
    /// Nothing more goes to the service (an answer ended it, or it failed).
    pub complete: bool,
    store: Store,
    /// The worker.
    pub worker: usize,
    /// Answers taken off the stream by one direction for the other (`[request, response]`).
    held: [VecDeque<ProcessingResponse>; 2],
    /// Which directions wait for an answer.
    expecting: [bool; 2],
    /// A reply decided while a body streamed, which its stream cannot give itself: the
    /// response pass gives it.
    pub reply: Option<(Box<Response<ProxyBody>>, String)>,
    /// A body streamed both ways has sent a chunk: its data is gone, so a failure can no
    /// longer let the request go on (Envoy's `failureModeAllow()`).
    pub duplex_body_sent: bool,
    /// The `mode_override` of the last answer taken while a direction's headers waited.
    pub mode_override: Option<ProcessingMode>,
}

/// The index of a direction.
fn slot(request: bool) -> usize {
    usize::from(!request)
}

impl Channel {
    /// A channel for one request; its stream opens with the first message.
    pub fn shared(core: Arc<Core>, store: Store, worker: usize) -> Shared {
        Rc::new(RefCell::new(Channel {
            core,
            stream: None,
            complete: false,
            store,
            worker,
            held: Default::default(),
            expecting: [false; 2],
            reply: None,
            duplex_body_sent: false,
            mode_override: None,
        }))
    }

    /// Sends `message` for `phase` (opening the stream first if needed); its direction
    /// now waits for an answer.
    pub fn send(&mut self, message: &ProcessingRequest, phase: Phase) {
        let (core, w) = (&self.core, self.worker);
        let stream = match &self.stream {
            Some(s) => s,
            None => {
                let mut req = core.client.stream_call(PROCESS_PATH);
                EnvoyHeaders::grpc(&core.client).apply(&mut req.headers, None);
                core.stats.streams_started.inc(w);
                self.stream.insert(GrpcStream::start(
                    core.client.cluster(),
                    req,
                    &self.store,
                    w,
                ))
            }
        };
        stream.send(crate::protocol::grpc_frame::frame(message));
        core.stats.stream_msgs_sent.inc(w);
        self.expecting[slot(phase.is_request())] = true;
    }

    /// Marks `request`'s direction as waiting for nothing.
    pub fn settle(&mut self, request: bool) {
        self.expecting[slot(request)] = false;
    }

    /// Ends a direction's body with the service's reply (the first reply stands): what a
    /// streamed body does with a verdict that answers the request.
    pub fn end_with_reply(
        &mut self,
        request: bool,
        reply: Box<Response<ProxyBody>>,
        details: String,
    ) {
        self.settle(request);
        self.reply.get_or_insert((reply, details));
    }

    /// Whether a failure lets the request go on.
    pub fn failure_mode_allow(&self) -> bool {
        self.core.failure_mode_allow && !self.duplex_body_sent
    }

    /// The verdict on the message `phase` waits on: its answer, or how processing ended.
    pub fn poll_verdict(&mut self, phase: Phase, cx: &mut Context<'_>) -> Poll<Verdict> {
        let headers = matches!(phase, Phase::RequestHeaders | Phase::ResponseHeaders);
        self.poll_answer(
            phase.is_request(),
            |r| {
                let over = headers.then_some(r.mode_override).flatten();
                (messages::classify(r, phase), over)
            },
            cx,
        )
    }

    /// The next answer for the request's direction (else the response's), as `judge`
    /// takes it (with the `mode_override` it carries, when that counts).
    pub fn poll_answer(
        &mut self,
        request: bool,
        mut judge: impl FnMut(ProcessingResponse) -> (Answer, Option<ProcessingMode>),
        cx: &mut Context<'_>,
    ) -> Poll<Verdict> {
        let own = slot(request);
        loop {
            let response = match self.held[own].pop_front() {
                Some(r) => r,
                None => {
                    let Some(stream) = &self.stream else {
                        return Poll::Ready(Verdict::Done);
                    };
                    match stream.poll_recv(cx) {
                        Poll::Pending => return Poll::Pending,
                        Poll::Ready(Err(end)) if end.status() == 0 => {
                            // The service closed the stream: processing ends, the request
                            // goes on.
                            self.core.stats.streams_closed.inc(self.worker);
                            self.stream = None;
                            self.complete = true;
                            return Poll::Ready(Verdict::Done);
                        }
                        Poll::Ready(Err(end)) => return Poll::Ready(self.failed(end.status())),
                        Poll::Ready(Ok(m)) => match messages::decode(&m) {
                            Some(r) => r,
                            // Envoy's client resets a stream whose message does not decode.
                            None => return Poll::Ready(self.failed(13)),
                        },
                    }
                }
            };
            // An answer for the other direction, which waits for one, is kept for it.
            if let Some(other) = messages::direction(&response).map(slot) {
                if other != own && self.expecting[other] {
                    self.held[other].push_back(response);
                    continue;
                }
            }
            let (answer, over) = judge(response);
            if over.is_some() {
                self.mode_override = over;
            }
            let (core, w) = (&self.core, self.worker);
            match answer {
                Answer::MoreTime => core.stats.override_message_timeout_ignored.inc(w),
                Answer::Common(c) => {
                    core.stats.stream_msgs_received.inc(w);
                    return Poll::Ready(Verdict::Answered(c));
                }
                Answer::Trailers(c) => {
                    core.stats.stream_msgs_received.inc(w);
                    return Poll::Ready(Verdict::Trailers(c));
                }
                Answer::Immediate(i) => {
                    core.stats.stream_msgs_received.inc(w);
                    self.close();
                    let rejected = &self.core.stats.rejected_header_mutations;
                    let (reply, details) = messages::immediate_reply(&i, &mut || rejected.inc(w));
                    return Poll::Ready(Verdict::Reply(Box::new(reply), details));
                }
                Answer::Spurious => {
                    core.stats.spurious_msgs_received.inc(w);
                    tracing::warn!("ext_proc: spurious response message received on gRPC stream");
                    self.close();
                    // Envoy 1.40 answers the request (measured), unless failures are allowed.
                    if self.failure_mode_allow() {
                        self.core.stats.failure_mode_allowed.inc(w);
                        return Poll::Ready(Verdict::Done);
                    }
                    return Poll::Ready(Verdict::Reply(
                        Box::new(local_reply(StatusCode::INTERNAL_SERVER_ERROR, "")),
                        "ext_proc_error_spurious_message".to_owned(),
                    ));
                }
            }
        }
    }

    /// Closes the stream from this side (counted), and ends processing.
    pub fn close(&mut self) {
        if let Some(s) = self.stream.take() {
            if !s.ended() {
                self.core.stats.streams_closed.inc(self.worker);
            }
        }
        self.complete = true;
    }

    /// `message_timeout` passed: Envoy's `onMessageTimeout`.
    pub fn timed_out(&mut self) -> Verdict {
        self.core.stats.message_timeouts.inc(self.worker);
        self.close();
        if self.failure_mode_allow() {
            self.core.stats.failure_mode_allowed.inc(self.worker);
            return Verdict::Done;
        }
        Verdict::Reply(
            Box::new(local_reply(StatusCode::GATEWAY_TIMEOUT, "")),
            TIMEOUT_DETAILS.to_owned(),
        )
    }

    /// The stream failed with gRPC status `status`: Envoy's `onGrpcError`.
    fn failed(&mut self, status: u32) -> Verdict {
        let (stats, w) = (&self.core.stats, self.worker);
        stats.streams_failed.inc(w);
        self.stream = None;
        self.complete = true;
        if self.failure_mode_allow() {
            // Taken as the stream's close.
            stats.streams_closed.inc(w);
            stats.failure_mode_allowed.inc(w);
            return Verdict::Done;
        }
        Verdict::Reply(
            Box::new(local_reply(StatusCode::INTERNAL_SERVER_ERROR, "")),
            format!("ext_proc_error_gRPC_error_{status}"),
        )
    }

    /// An answer's header mutation applied to `headers`; `Err` with the reply when it
    /// fails the message (Envoy answers `500` with the reason as details).
    pub fn mutate(
        &mut self,
        c: &CommonResponse,
        headers: &mut HeaderMap,
        pseudo: &mut Pseudo,
        target: Target,
    ) -> Result<(), Verdict> {
        self.count_route_cache(c);
        let Some(m) = &c.header_mutation else {
            return Ok(());
        };
        let (stats, w) = (&self.core.stats, self.worker);
        let rejected = &stats.rejected_header_mutations;
        mutation::apply_headers(m, headers, pseudo, target, &mut || rejected.inc(w))
            .map_err(|e| self.mutation_failed(e.to_string()))
    }

    /// What an answer's `clear_route_cache` counts (the route is never cleared).
    pub fn count_route_cache(&self, c: &CommonResponse) {
        let (core, w) = (&self.core, self.worker);
        if c.clear_route_cache {
            if core.disable_clear_route_cache {
                core.stats.clear_route_cache_disabled.inc(w);
            } else if c.header_mutation.is_none() {
                core.stats.clear_route_cache_ignored.inc(w);
            }
        }
    }

    /// A message the service's answer cannot be applied to: `500`, details its reason.
    pub fn mutation_failed(&mut self, reason: String) -> Verdict {
        self.close();
        Verdict::Reply(
            Box::new(local_reply(StatusCode::INTERNAL_SERVER_ERROR, "")),
            reason.replace(|c: char| c.is_ascii_whitespace(), "_"),
        )
    }
}

impl Drop for Channel {
    fn drop(&mut self) {
        // The request and every body of it are done: a stream still open is closed
        // (Envoy's `onDestroy`).
        self.close();
    }
}
