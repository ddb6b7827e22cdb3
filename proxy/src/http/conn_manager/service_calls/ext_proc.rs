//! A request's external processing ([`crate::filters::http::ext_proc`]): one gRPC stream
//! (the router's `async_stream`) for the request and its answer, opened with the first
//! message sent; each message waits for its answer up to `message_timeout`. The
//! [`Session`] a request's pass leaves is what its response pass goes on with.

use std::collections::VecDeque;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Instant;

use bytes::{Bytes, BytesMut};
use courier_proto::envoy::service::ext_proc::v3::common_response::ResponseStatus;
use courier_proto::envoy::service::ext_proc::v3::{CommonResponse, ProcessingRequest};
use http::{header, HeaderMap, Request, Response, StatusCode};
use hyper::body::{Body, Frame, SizeHint};

use crate::filters::http::ext_proc::messages::{self, Answer, Phase};
use crate::filters::http::ext_proc::mutation::{self, Pseudo, Target};
use crate::filters::http::ext_proc::{ExtProcFilter, Mode, PROCESS_PATH};
use crate::http::codec::body::{BodyTransform, BoxError, ProxyBody};
use crate::http::conn_manager::local_reply::local_reply;
use crate::http::router::async_client::EnvoyHeaders;
use crate::http::router::async_stream::GrpcStream;
use crate::http::router::Outcome;
use crate::stats::Store;
use courier_runtime::event::rt;

/// The most of a body held to be sent whole (Envoy's default buffer limit,
/// `per_connection_buffer_limit_bytes`).
const BODY_LIMIT: usize = 1 << 20;

/// Details of a request answered for a message's timeout.
const TIMEOUT_DETAILS: &str = "ext_proc_error_per-message_timeout_exceeded";

/// What the request pass reads of the request beside its head.
pub(crate) struct ProcessedRequest<'a> {
    /// `:method`.
    pub method: &'a str,
    /// `:path` as routed.
    pub path: &'a str,
    /// `:authority` as routed.
    pub authority: &'a str,
    /// `:scheme`.
    pub scheme: &'a str,
    /// Where the stream's stats and pool live.
    pub store: &'a Store,
    /// The worker.
    pub worker: usize,
}

/// One request's processing: its stream (once opened) and what is left to send.
pub(crate) struct Session<'a> {
    filter: &'a ExtProcFilter,
    mode: Mode,
    stream: Option<GrpcStream>,
    /// Nothing more goes to the service (an answer ended it, or it failed).
    complete: bool,
    store: Store,
    worker: usize,
}

/// How a message's exchange ended.
enum Exchange {
    /// The service answered it.
    Answered(Box<CommonResponse>),
    /// Processing ended; the request goes on as it is.
    Done,
    /// The request is answered so, with these details.
    Reply(Box<Response<ProxyBody>>, String),
}

impl<'a> Session<'a> {
    /// Whether the response pass has anything to do.
    pub(crate) fn wants_response(&self) -> bool {
        !self.complete && (self.mode.response_headers || self.mode.response_body)
    }

    /// Sends `message` (opening the stream first if needed) and waits for its answer.
    async fn exchange(&mut self, message: ProcessingRequest, phase: Phase) -> Exchange {
        let f = self.filter;
        let w = self.worker;
        let stream = match &self.stream {
            Some(s) => s,
            None => {
                let mut req = f.client.stream_call(PROCESS_PATH);
                EnvoyHeaders::grpc(&f.client).apply(&mut req.headers, None);
                f.stats.streams_started.inc(w);
                self.stream
                    .insert(GrpcStream::start(f.client.cluster(), req, &self.store, w))
            }
        };
        stream.send(crate::protocol::grpc_frame::frame(&message));
        f.stats.stream_msgs_sent.inc(w);
        let deadline = Some(Instant::now() + f.message_timeout);
        loop {
            let got = rt::timeout(deadline, stream.recv()).await;
            let message = match got {
                None => return self.timed_out(),
                Some(Err(end)) if end.status() == 0 => {
                    // The service closed the stream: processing ends, the request goes on.
                    f.stats.streams_closed.inc(w);
                    self.stream = None;
                    self.complete = true;
                    return Exchange::Done;
                }
                Some(Err(end)) => return self.failed(end.status()),
                Some(Ok(m)) => m,
            };
            let Some(response) = messages::decode(&message) else {
                // Envoy's client resets a stream whose message does not decode (INTERNAL).
                return self.failed(13);
            };
            match messages::classify(response, phase) {
                Answer::MoreTime => {
                    f.stats.override_message_timeout_ignored.inc(w);
                }
                Answer::Common(c) => {
                    f.stats.stream_msgs_received.inc(w);
                    return Exchange::Answered(c);
                }
                Answer::Immediate(i) => {
                    f.stats.stream_msgs_received.inc(w);
                    self.close();
                    let rejected = &f.stats.rejected_header_mutations;
                    let (reply, details) = messages::immediate_reply(&i, &mut || rejected.inc(w));
                    return Exchange::Reply(Box::new(reply), details);
                }
                Answer::Spurious => {
                    f.stats.spurious_msgs_received.inc(w);
                    tracing::warn!(filter = %f.name, "spurious response message received on gRPC stream");
                    self.close();
                    // Envoy 1.40 answers the request (measured), unless failures are allowed.
                    if f.failure_mode_allow {
                        f.stats.failure_mode_allowed.inc(w);
                        return Exchange::Done;
                    }
                    return Exchange::Reply(
                        Box::new(local_reply(StatusCode::INTERNAL_SERVER_ERROR, "")),
                        "ext_proc_error_spurious_message".to_owned(),
                    );
                }
            }
        }
    }

    /// Closes the stream from this side (counted), and ends processing.
    fn close(&mut self) {
        if let Some(s) = self.stream.take() {
            if !s.ended() {
                self.filter.stats.streams_closed.inc(self.worker);
            }
        }
        self.complete = true;
    }

    /// `message_timeout` passed: Envoy's `onMessageTimeout`.
    fn timed_out(&mut self) -> Exchange {
        let f = self.filter;
        f.stats.message_timeouts.inc(self.worker);
        self.close();
        if f.failure_mode_allow {
            f.stats.failure_mode_allowed.inc(self.worker);
            return Exchange::Done;
        }
        Exchange::Reply(
            Box::new(local_reply(StatusCode::GATEWAY_TIMEOUT, "")),
            TIMEOUT_DETAILS.to_owned(),
        )
    }

    /// The stream failed with gRPC status `status`: Envoy's `onGrpcError`.
    fn failed(&mut self, status: u32) -> Exchange {
        let f = self.filter;
        f.stats.streams_failed.inc(self.worker);
        self.stream = None;
        self.complete = true;
        if f.failure_mode_allow {
            // Taken as the stream's close.
            f.stats.streams_closed.inc(self.worker);
            f.stats.failure_mode_allowed.inc(self.worker);
            return Exchange::Done;
        }
        Exchange::Reply(
            Box::new(local_reply(StatusCode::INTERNAL_SERVER_ERROR, "")),
            format!("ext_proc_error_gRPC_error_{status}"),
        )
    }

    /// An answer's header mutation applied to `headers`; `Err` with the reply when it
    /// fails the message (Envoy answers `500` with the reason as details).
    fn mutate(
        &mut self,
        c: &CommonResponse,
        headers: &mut HeaderMap,
        pseudo: &mut Pseudo,
        target: Target,
    ) -> Result<(), Exchange> {
        let f = self.filter;
        let w = self.worker;
        if c.clear_route_cache {
            if f.disable_clear_route_cache {
                f.stats.clear_route_cache_disabled.inc(w);
            } else if c.header_mutation.is_none() {
                f.stats.clear_route_cache_ignored.inc(w);
            }
        }
        let Some(m) = &c.header_mutation else {
            return Ok(());
        };
        let rejected = &f.stats.rejected_header_mutations;
        mutation::apply_headers(m, headers, pseudo, target, &mut || rejected.inc(w))
            .map_err(|e| self.mutation_failed(e.to_string()))
    }

    /// A message the service's answer cannot be applied to: `500`, details its reason.
    fn mutation_failed(&mut self, reason: String) -> Exchange {
        self.close();
        Exchange::Reply(
            Box::new(local_reply(StatusCode::INTERNAL_SERVER_ERROR, "")),
            reason.replace(|c: char| c.is_ascii_whitespace(), "_"),
        )
    }
}

impl Drop for Session<'_> {
    fn drop(&mut self) {
        // The request is done: a stream still open is closed (Envoy's `onDestroy`).
        self.close();
    }
}

/// What the request pass decided.
pub(crate) enum Processed<'a> {
    /// Nothing to do for this request.
    Skip,
    /// The request goes on; its session goes with it to the response pass; `path_changed`
    /// when the service gave it a new `:path`.
    Continue(Box<Session<'a>>, bool),
    /// It is answered so.
    Reply(Box<Response<ProxyBody>>),
}

/// The request pass of `f`, the route's `mode` decided.
pub(crate) async fn on_request<'a>(
    f: &'a ExtProcFilter,
    mode: Mode,
    r: ProcessedRequest<'_>,
    req: &mut Request<ProxyBody>,
    outcome: &mut Outcome,
) -> Processed<'a> {
    if mode == Mode::OFF {
        return Processed::Skip;
    }
    let mut session = Box::new(Session {
        filter: f,
        mode,
        stream: None,
        complete: false,
        store: r.store.clone(),
        worker: r.worker,
    });
    let has_body = !req.body().is_end_stream();
    let mut path_changed = false;
    let mut send_body = mode.request_body;
    // The headers the body's answer may still change (Envoy's `headers_`).
    let mut headers_held = false;
    if mode.request_headers {
        let method = r.method.as_bytes();
        let pseudo = [
            (":authority", r.authority.as_bytes()),
            (":path", r.path.as_bytes()),
            (":method", method),
            (":scheme", r.scheme.as_bytes()),
        ];
        let fields = req
            .headers()
            .iter()
            .filter(|(k, _)| *k != header::HOST)
            .map(|(k, v)| (k.as_str(), v.as_bytes()));
        let msg = messages::headers_message(
            Phase::RequestHeaders,
            &pseudo,
            fields,
            !has_body,
            &f.forward,
        );
        match session.exchange(msg, Phase::RequestHeaders).await {
            Exchange::Answered(c) => {
                let replacing = c.status == ResponseStatus::ContinueAndReplace as i32;
                let mut pseudo = Pseudo::default();
                if let Err(e) = session.mutate(
                    &c,
                    req.headers_mut(),
                    &mut pseudo,
                    Target::Request { replacing },
                ) {
                    return reply(e, outcome);
                }
                path_changed = set_pseudo(req, pseudo);
                if replacing {
                    if let Some(b) = c.body_mutation.as_ref().and_then(mutation::apply_body) {
                        req.headers_mut().remove(header::CONTENT_LENGTH);
                        let old = std::mem::replace(req.body_mut(), ProxyBody::empty());
                        *req.body_mut() = ProxyBody::filtered(Replaced::after(old, b));
                    }
                    send_body = false;
                } else {
                    headers_held = true;
                }
            }
            other => {
                if let Some(p) = reply_or_done(other, outcome) {
                    return p;
                }
            }
        }
    }
    if session.complete {
        return Processed::Continue(session, path_changed);
    }
    if mode.request_body && !mode.request_headers {
        // Envoy cannot keep a length the service may change (`shouldRemoveContentLength`).
        req.headers_mut().remove(header::CONTENT_LENGTH);
    }
    if send_body && has_body {
        let (body, trailers) = match hold(req.body_mut()).await {
            Ok(held) => held,
            Err(()) => {
                outcome.set_details("request_payload_too_large");
                return Processed::Reply(Box::new(local_reply(
                    StatusCode::PAYLOAD_TOO_LARGE,
                    "Payload Too Large",
                )));
            }
        };
        let msg = messages::body_message(Phase::RequestBody, &body);
        let mut body = body;
        match session.exchange(msg, Phase::RequestBody).await {
            Exchange::Answered(c) => {
                if headers_held {
                    let mut pseudo = Pseudo::default();
                    if let Err(e) = session.mutate(
                        &c,
                        req.headers_mut(),
                        &mut pseudo,
                        Target::Request { replacing: false },
                    ) {
                        return reply(e, outcome);
                    }
                    path_changed |= set_pseudo(req, pseudo);
                }
                if let Some(m) = &c.body_mutation {
                    if let Err(e) = check_length(&mut session, headers_held, req.headers(), m) {
                        return reply(e, outcome);
                    }
                    if let Some(b) = mutation::apply_body(m) {
                        body = b;
                    }
                }
            }
            other => {
                if let Some(p) = reply_or_done(other, outcome) {
                    return p;
                }
            }
        }
        let sized = req.headers().contains_key(header::CONTENT_LENGTH);
        *req.body_mut() = ProxyBody::filtered(Replaced::whole(body, trailers, sized));
    }
    Processed::Continue(session, path_changed)
}

/// The response pass of a request's session.
pub(crate) async fn on_response(
    mut session: Session<'_>,
    resp: &mut Response<ProxyBody>,
    outcome: &mut Outcome,
) {
    let mode = session.mode;
    let has_body = !resp.body().is_end_stream();
    let mut send_body = mode.response_body;
    let mut headers_held = false;
    if mode.response_headers {
        let status = resp.status();
        let pseudo = [(":status", status.as_str().as_bytes())];
        let fields = resp
            .headers()
            .iter()
            .map(|(k, v)| (k.as_str(), v.as_bytes()));
        let msg = messages::headers_message(
            Phase::ResponseHeaders,
            &pseudo,
            fields,
            !has_body,
            &session.filter.forward,
        );
        match session.exchange(msg, Phase::ResponseHeaders).await {
            Exchange::Answered(c) => {
                let replacing = c.status == ResponseStatus::ContinueAndReplace as i32;
                let mut pseudo = Pseudo::default();
                if let Err(e) =
                    session.mutate(&c, resp.headers_mut(), &mut pseudo, Target::Response)
                {
                    return replace(resp, e, outcome);
                }
                if let Some(s) = pseudo.status {
                    *resp.status_mut() = s;
                }
                if replacing {
                    if let Some(b) = c.body_mutation.as_ref().and_then(mutation::apply_body) {
                        resp.headers_mut().remove(header::CONTENT_LENGTH);
                        let old = std::mem::replace(resp.body_mut(), ProxyBody::empty());
                        *resp.body_mut() = ProxyBody::filtered(Replaced::after(old, b));
                    }
                    send_body = false;
                } else {
                    headers_held = true;
                }
            }
            other => return replace(resp, other, outcome),
        }
    }
    if session.complete {
        return;
    }
    if mode.response_body && !mode.response_headers {
        resp.headers_mut().remove(header::CONTENT_LENGTH);
    }
    if send_body && has_body {
        let Ok((body, trailers)) = hold(resp.body_mut()).await else {
            session.close();
            *resp = local_reply(StatusCode::INTERNAL_SERVER_ERROR, "Internal Server Error");
            return;
        };
        let msg = messages::body_message(Phase::ResponseBody, &body);
        let mut body = body;
        match session.exchange(msg, Phase::ResponseBody).await {
            Exchange::Answered(c) => {
                if headers_held {
                    let mut pseudo = Pseudo::default();
                    if let Err(e) =
                        session.mutate(&c, resp.headers_mut(), &mut pseudo, Target::Response)
                    {
                        return replace(resp, e, outcome);
                    }
                    if let Some(s) = pseudo.status {
                        *resp.status_mut() = s;
                    }
                }
                if let Some(m) = &c.body_mutation {
                    if let Err(e) = check_length(&mut session, headers_held, resp.headers(), m) {
                        return replace(resp, e, outcome);
                    }
                    if let Some(b) = mutation::apply_body(m) {
                        body = b;
                    }
                }
            }
            Exchange::Done => {}
            reply @ Exchange::Reply(..) => return replace(resp, reply, outcome),
        }
        let sized = resp.headers().contains_key(header::CONTENT_LENGTH);
        *resp.body_mut() = ProxyBody::filtered(Replaced::whole(body, trailers, sized));
    }
}

/// Replaces `resp` with an exchange's reply, if it is one.
fn replace(resp: &mut Response<ProxyBody>, e: Exchange, outcome: &mut Outcome) {
    if let Exchange::Reply(r, details) = e {
        outcome.set_details_owned(|| details);
        *resp = *r;
    }
}

/// A request pass's end from an exchange that was not answered: `None` to go on.
fn reply_or_done<'a>(e: Exchange, outcome: &mut Outcome) -> Option<Processed<'a>> {
    match e {
        Exchange::Reply(r, details) => {
            outcome.set_details_owned(|| details);
            Some(Processed::Reply(r))
        }
        _ => None,
    }
}

/// A request pass's end from a failed message.
fn reply<'a>(e: Exchange, outcome: &mut Outcome) -> Processed<'a> {
    reply_or_done(e, outcome).unwrap_or(Processed::Skip)
}

/// Envoy's check of a buffered body's replacement: a `content-length` the message still
/// has must be the new body's.
fn check_length(
    session: &mut Session<'_>,
    headers_held: bool,
    headers: &HeaderMap,
    m: &courier_proto::envoy::service::ext_proc::v3::BodyMutation,
) -> Result<(), Exchange> {
    let declared = headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| std::str::from_utf8(v.as_bytes()).ok())
        .and_then(|v| v.parse::<usize>().ok());
    match declared {
        Some(len) if headers_held && len != mutation::mutated_len(m) => Err(session
            .mutation_failed(
                "mismatch between content length and the length of the mutated body".into(),
            )),
        _ => Ok(()),
    }
}

/// Gives the request the `:path` or `:method` the service set; whether the path changed.
fn set_pseudo(req: &mut Request<ProxyBody>, pseudo: Pseudo) -> bool {
    if let Some(m) = pseudo.method {
        *req.method_mut() = m;
    }
    let Some(path) = pseudo.path else {
        return false;
    };
    let mut parts = req.uri().clone().into_parts();
    let Ok(pq) = path.parse() else {
        return false;
    };
    parts.path_and_query = Some(pq);
    match http::Uri::from_parts(parts) {
        Ok(uri) => {
            *req.uri_mut() = uri;
            true
        }
        Err(_) => false,
    }
}

/// Reads `body` whole (up to [`BODY_LIMIT`]): its data and trailers. `Err` past the
/// limit or when the peer broke off.
async fn hold(body: &mut ProxyBody) -> Result<(Bytes, Option<HeaderMap>), ()> {
    let mut data = BytesMut::new();
    let mut trailers = None;
    while let Some(frame) = std::future::poll_fn(|cx| Pin::new(&mut *body).poll_frame(cx)).await {
        let frame = frame.map_err(|_| ())?;
        match frame.into_data() {
            Ok(d) if data.len() + d.len() > BODY_LIMIT => return Err(()),
            Ok(d) => data.extend_from_slice(&d),
            Err(f) => trailers = f.into_trailers().ok(),
        }
    }
    Ok((data.freeze(), trailers))
}

/// A body replaced: the original read off and dropped first (as Envoy drains what
/// comes after a `CONTINUE_AND_REPLACE`), then the new bytes and any trailers.
struct Replaced {
    old: Option<ProxyBody>,
    frames: VecDeque<Frame<Bytes>>,
    /// Its length is told (the message kept its `content-length`); else the codec
    /// sends it chunked, as Envoy's.
    sized: bool,
}

impl Replaced {
    /// `body` in place of whatever `old` still holds.
    fn after(old: ProxyBody, body: Bytes) -> Replaced {
        Replaced {
            old: (!old.is_end_stream()).then_some(old),
            frames: [Frame::data(body)].into(),
            sized: false,
        }
    }

    /// A body held whole.
    fn whole(body: Bytes, trailers: Option<HeaderMap>, sized: bool) -> Replaced {
        let mut frames = VecDeque::new();
        frames.push_back(Frame::data(body));
        if let Some(t) = trailers {
            frames.push_back(Frame::trailers(t));
        }
        Replaced {
            old: None,
            frames,
            sized,
        }
    }
}

impl BodyTransform for Replaced {
    fn poll_frame(&mut self, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        while let Some(old) = &mut self.old {
            match Pin::new(old).poll_frame(cx) {
                Poll::Pending => return Poll::Pending,
                Poll::Ready(Some(Ok(_))) => {}
                Poll::Ready(Some(Err(e))) => return Poll::Ready(Some(Err(e))),
                Poll::Ready(None) => self.old = None,
            }
        }
        Poll::Ready(self.frames.pop_front().map(Ok))
    }

    fn is_end_stream(&self) -> bool {
        self.old.is_none()
            && self
                .frames
                .iter()
                .all(|f| f.data_ref().is_some_and(Bytes::is_empty))
    }

    fn size_hint(&self) -> SizeHint {
        let len: u64 = self
            .frames
            .iter()
            .filter_map(Frame::data_ref)
            .map(|d| d.len() as u64)
            .sum();
        match self.old {
            None if self.sized && self.frames.iter().all(|f| f.is_data()) => {
                SizeHint::with_exact(len)
            }
            _ => {
                let mut h = SizeHint::new();
                h.set_lower(len);
                h
            }
        }
    }
}
