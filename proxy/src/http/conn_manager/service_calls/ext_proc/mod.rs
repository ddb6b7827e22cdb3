//! A request's external processing ([`crate::filters::http::ext_proc`]): one gRPC stream
//! (the router's `async_stream`) for the request and its answer, opened with the first
//! message sent; each message waits for its answer up to `message_timeout` (none in a
//! direction whose body streams both ways). The [`Session`] a request's pass leaves is
//! what its response pass goes on with; a body streamed to the service ([`streamed`]),
//! or both ways ([`duplex`]), shares the session's [`channel`] and keeps it open until
//! it is done. A `mode_override` the headers' answer carries changes the session's mode
//! when the filter lets it.

mod channel;
mod duplex;
mod streamed;

use std::collections::VecDeque;
use std::future::poll_fn;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Instant;

use bytes::{Bytes, BytesMut};
use courier_proto::envoy::service::ext_proc::v3::common_response::ResponseStatus;
use courier_proto::envoy::service::ext_proc::v3::ProcessingRequest;
use http::{header, HeaderMap, Request, Response, StatusCode};
use hyper::body::{Body, Frame, SizeHint};

use crate::filters::http::ext_proc::messages::{self, Phase};
use crate::filters::http::ext_proc::mutation::{self, Pseudo, Target};
use crate::filters::http::ext_proc::{BodyMode, ExtProcFilter, Mode};
use crate::http::codec::body::{BodyTransform, BoxError, ProxyBody};
use crate::http::conn_manager::local_reply::local_reply;
use crate::http::router::Outcome;
use crate::stats::Store;
use channel::{Channel, Shared, Verdict};
use courier_runtime::event::rt;
use duplex::Duplex;
use streamed::Streamed;

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
    /// The connection's buffer limit (`per_connection_buffer_limit_bytes`): the most of
    /// a body held, whole or read ahead.
    pub buffer_limit: usize,
}

/// One request's processing: its channel and what is left to send.
pub(crate) struct Session {
    chan: Shared,
    mode: Mode,
    limit: usize,
    /// The request's body streams to the service: its answers may still decide the
    /// request's reply, which the response pass gives.
    streaming: bool,
}

impl Session {
    /// Whether the response pass has anything to do.
    pub(crate) fn wants_response(&self) -> bool {
        let m = self.mode;
        self.streaming
            || (!self.chan.borrow().complete
                && (m.response_headers || m.response_body != BodyMode::None || m.response_trailers))
    }

    fn complete(&self) -> bool {
        self.chan.borrow().complete
    }

    /// Applies a `mode_override` the headers' answer carried, if the filter lets it
    /// (Envoy's `onReceiveMessage`): the mode of the rest of the request, both ways.
    fn take_override(&mut self) -> bool {
        let asked = self.chan.borrow_mut().mode_override.take();
        let Some(asked) = asked else {
            return false;
        };
        let mode = self.chan.borrow().core.overrides.effective(&asked);
        match mode {
            Some(m) => {
                tracing::debug!("ext_proc: processing mode overridden by the service");
                self.mode = m;
                true
            }
            None => false,
        }
    }

    /// When a message of `phase` sent now stops waiting: none in a direction whose body
    /// streams both ways (Envoy starts no timer there).
    fn deadline(&self, phase: Phase) -> Option<Instant> {
        let duplex = match phase.is_request() {
            true => self.mode.request_body,
            false => self.mode.response_body,
        } == BodyMode::FullDuplex;
        let timeout = self.chan.borrow().core.message_timeout;
        (!duplex).then(|| Instant::now() + timeout)
    }

    /// Sends `message` and waits for its answer.
    async fn exchange(&self, message: ProcessingRequest, phase: Phase) -> Verdict {
        self.exchange_pumping(message, phase, None).await
    }

    /// Sends `message` and waits for its answer, sending on meanwhile what comes of a
    /// body streamed both ways (`duplex`).
    async fn exchange_pumping(
        &self,
        message: ProcessingRequest,
        phase: Phase,
        mut duplex: Option<&mut Duplex>,
    ) -> Verdict {
        self.chan.borrow_mut().send(&message, phase);
        let deadline = self.deadline(phase);
        let got = rt::timeout(
            deadline,
            poll_fn(|cx| {
                if let Some(d) = duplex.as_deref_mut() {
                    d.pump(cx);
                }
                self.chan.borrow_mut().poll_verdict(phase, cx)
            }),
        )
        .await;
        let mut c = self.chan.borrow_mut();
        c.settle(phase.is_request());
        match got {
            None => c.timed_out(),
            Some(v) => v,
        }
    }

    fn mutate(
        &self,
        c: &courier_proto::envoy::service::ext_proc::v3::CommonResponse,
        headers: &mut HeaderMap,
        pseudo: &mut Pseudo,
        target: Target,
    ) -> Result<(), Verdict> {
        self.chan.borrow_mut().mutate(c, headers, pseudo, target)
    }

    /// Sends held trailers (a held body's, in `SEND` mode) and applies the answer.
    async fn trailers(&self, phase: Phase, t: &mut HeaderMap) -> Result<(), Verdict> {
        let msg = {
            let c = self.chan.borrow();
            messages::trailers_message(phase, t, &c.core.forward)
        };
        match self.exchange(msg, phase).await {
            Verdict::Answered(c) => self.mutate(&c, t, &mut Pseudo::default(), Target::Trailers),
            Verdict::Done => Ok(()),
            reply => Err(reply),
        }
    }
}

/// What the request pass decided.
pub(crate) enum Processed {
    /// Nothing to do for this request.
    Skip,
    /// The request goes on; its session goes with it to the response pass; `path_changed`
    /// when the service gave it a new `:path`.
    Continue(Box<Session>, bool),
    /// It is answered so.
    Reply(Box<Response<ProxyBody>>),
}

/// Whether a body mode makes Envoy take away the message's `content-length`
/// (`shouldRemoveContentLength`): the service may change a body it sees in parts.
fn unsized_mode(body: BodyMode, headers_sent: bool) -> bool {
    match body {
        BodyMode::Streamed | BodyMode::BufferedPartial | BodyMode::FullDuplex => true,
        BodyMode::Buffered => !headers_sent,
        BodyMode::None => false,
    }
}

/// The request pass of `f`, the route's `mode` decided.
pub(crate) async fn on_request(
    f: &ExtProcFilter,
    mode: Mode,
    r: ProcessedRequest<'_>,
    req: &mut Request<ProxyBody>,
    outcome: &mut Outcome,
) -> Processed {
    if mode == Mode::OFF {
        return Processed::Skip;
    }
    let mut session = Box::new(Session {
        chan: Channel::shared(f.core.clone(), r.store.clone(), r.worker),
        mode,
        limit: r.buffer_limit,
        streaming: false,
    });
    let has_body = !req.body().is_end_stream();
    let mut path_changed = false;
    let mut body_mode = mode.request_body;
    let mut send_trailers = mode.request_trailers;
    // The headers the body's answer may still change (Envoy's `headers_`).
    let mut headers_held = false;
    // A body streamed both ways goes to the service even while the headers wait.
    let mut duplex = (body_mode == BodyMode::FullDuplex && has_body).then(|| {
        let inner = std::mem::replace(req.body_mut(), ProxyBody::empty());
        Duplex::new(session.chan.clone(), true, send_trailers, inner)
    });
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
            // Envoy's codecs keep neither in the request's header map.
            .filter(|(k, _)| *k != header::HOST && *k != header::TRANSFER_ENCODING)
            .map(|(k, v)| (k.as_str(), v.as_bytes()));
        let msg = messages::headers_message(
            Phase::RequestHeaders,
            &pseudo,
            fields,
            !has_body,
            &f.core.forward,
        );
        // Envoy takes the length away as the headers go to the service, whatever the
        // answer.
        if unsized_mode(body_mode, true) {
            req.headers_mut().remove(header::CONTENT_LENGTH);
        }
        let verdict = session
            .exchange_pumping(msg, Phase::RequestHeaders, duplex.as_mut())
            .await;
        if session.take_override() && duplex.is_none() {
            // The body's mode changes unless it already streams both ways (its chunks
            // are gone to the service).
            body_mode = session.mode.request_body;
            send_trailers = session.mode.request_trailers;
        }
        match verdict {
            Verdict::Answered(c) => {
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
                    if let Some(d) = duplex.take() {
                        *req.body_mut() = d.into_rest();
                    }
                    if let Some(b) = c.body_mutation.as_ref().and_then(mutation::apply_body) {
                        req.headers_mut().remove(header::CONTENT_LENGTH);
                        let old = std::mem::replace(req.body_mut(), ProxyBody::empty());
                        *req.body_mut() = ProxyBody::filtered(Replaced::after(old, b));
                    }
                    body_mode = BodyMode::None;
                    send_trailers = false;
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
    } else if unsized_mode(body_mode, false) {
        // Envoy cannot keep a length the service may change (`shouldRemoveContentLength`).
        req.headers_mut().remove(header::CONTENT_LENGTH);
    }
    if let Some(d) = duplex {
        session.streaming = true;
        *req.body_mut() = ProxyBody::filtered(d);
        return Processed::Continue(session, path_changed);
    }
    if session.complete() || !has_body {
        return Processed::Continue(session, path_changed);
    }
    match body_mode {
        BodyMode::Buffered => {
            let (body, trailers) = match hold(req.body_mut(), session.limit).await {
                Ok(held) => held,
                Err(()) => {
                    outcome.set_details("request_payload_too_large");
                    return Processed::Reply(Box::new(local_reply(
                        StatusCode::PAYLOAD_TOO_LARGE,
                        "Payload Too Large",
                    )));
                }
            };
            let mut held = Held {
                body,
                trailers,
                complete: true,
            };
            match session
                .held_body(
                    &mut held,
                    Phase::RequestBody,
                    headers_held,
                    req.headers_mut(),
                    send_trailers,
                )
                .await
            {
                Ok(pseudo) => path_changed |= set_pseudo(req, pseudo),
                Err(e) => return reply(e, outcome),
            }
            let sized = req.headers().contains_key(header::CONTENT_LENGTH);
            *req.body_mut() = ProxyBody::filtered(Replaced::whole(held.body, held.trailers, sized));
        }
        BodyMode::BufferedPartial => {
            let Ok(mut held) = hold_partial(req.body_mut(), session.limit).await else {
                // The peer broke off: the request cannot go on.
                return Processed::Reply(Box::new(local_reply(StatusCode::BAD_REQUEST, "")));
            };
            match session
                .held_body(
                    &mut held,
                    Phase::RequestBody,
                    headers_held,
                    req.headers_mut(),
                    send_trailers,
                )
                .await
            {
                Ok(pseudo) => path_changed |= set_pseudo(req, pseudo),
                Err(e) => return reply(e, outcome),
            }
            let rest = std::mem::replace(req.body_mut(), ProxyBody::empty());
            *req.body_mut() = session.rest(held, rest, true, send_trailers);
        }
        BodyMode::Streamed => {
            session.streaming = true;
            let inner = std::mem::replace(req.body_mut(), ProxyBody::empty());
            let s = Streamed::new(
                session.chan.clone(),
                true,
                true,
                send_trailers,
                inner,
                session.limit,
            );
            *req.body_mut() = ProxyBody::filtered(s);
        }
        BodyMode::FullDuplex => {
            // Set by the service's `mode_override`.
            session.streaming = true;
            let inner = std::mem::replace(req.body_mut(), ProxyBody::empty());
            let d = Duplex::new(session.chan.clone(), true, send_trailers, inner);
            *req.body_mut() = ProxyBody::filtered(d);
        }
        BodyMode::None if send_trailers => {
            session.streaming = true;
            let inner = std::mem::replace(req.body_mut(), ProxyBody::empty());
            let s = Streamed::new(
                session.chan.clone(),
                true,
                false,
                true,
                inner,
                session.limit,
            );
            *req.body_mut() = ProxyBody::filtered(s);
        }
        BodyMode::None => {}
    }
    Processed::Continue(session, path_changed)
}

/// A body held (whole, or its first part) to be sent in one message.
struct Held {
    body: Bytes,
    trailers: Option<HeaderMap>,
    /// The whole body is held (else more follows).
    complete: bool,
}

impl Session {
    /// Sends a held body (`end_of_stream` unless trailers or more follow) and applies the
    /// answer: to the held headers, the body; then its trailers in `SEND` mode.
    async fn held_body(
        &self,
        held: &mut Held,
        phase: Phase,
        headers_held: bool,
        headers: &mut HeaderMap,
        send_trailers: bool,
    ) -> Result<Pseudo, Verdict> {
        let end = held.complete && held.trailers.is_none();
        let partial = !held.complete || self.mode_of(phase) == BodyMode::BufferedPartial;
        let msg = messages::body_message(phase, &held.body, end);
        let mut pseudo = Pseudo::default();
        match self.exchange(msg, phase).await {
            Verdict::Answered(c) => {
                if headers_held {
                    let target = match phase.is_request() {
                        true => Target::Request { replacing: false },
                        false => Target::Response,
                    };
                    self.mutate(&c, headers, &mut pseudo, target)?;
                }
                if let Some(m) = &c.body_mutation {
                    if !partial {
                        check_length(self, headers_held, headers, m)?;
                    }
                    if let Some(b) = mutation::apply_body(m) {
                        held.body = b;
                    }
                }
            }
            Verdict::Done => return Ok(pseudo),
            reply => return Err(reply),
        }
        if let Some(t) = held
            .trailers
            .as_mut()
            .filter(|_| send_trailers && !self.complete())
        {
            let tp = match phase.is_request() {
                true => Phase::RequestTrailers,
                false => Phase::ResponseTrailers,
            };
            self.trailers(tp, t).await?;
        }
        Ok(pseudo)
    }

    fn mode_of(&self, phase: Phase) -> BodyMode {
        match phase.is_request() {
            true => self.mode.request_body,
            false => self.mode.response_body,
        }
    }

    /// A partly held body's whole: the part as answered, then the rest as it comes
    /// (its trailers sent in `SEND` mode).
    fn rest(&self, held: Held, rest: ProxyBody, request: bool, send_trailers: bool) -> ProxyBody {
        if held.complete {
            return ProxyBody::filtered(Replaced::whole(held.body, held.trailers, false));
        }
        let s = Streamed::new(
            self.chan.clone(),
            request,
            false,
            send_trailers,
            rest,
            self.limit,
        )
        .with_head(held.body);
        ProxyBody::filtered(s)
    }
}

/// The response pass of a request's session.
pub(crate) async fn on_response(
    mut session: Session,
    resp: &mut Response<ProxyBody>,
    outcome: &mut Outcome,
) {
    let decided = session.chan.borrow_mut().reply.take();
    if let Some((r, details)) = decided {
        // A streamed request body's answer decided the reply.
        outcome.set_details_owned(|| details);
        *resp = *r;
        return;
    }
    if session.complete() {
        return;
    }
    let mode = session.mode;
    let has_body = !resp.body().is_end_stream();
    let mut body_mode = mode.response_body;
    let mut send_trailers = mode.response_trailers;
    let mut headers_held = false;
    let mut duplex = (body_mode == BodyMode::FullDuplex && has_body).then(|| {
        let inner = std::mem::replace(resp.body_mut(), ProxyBody::empty());
        Duplex::new(session.chan.clone(), false, send_trailers, inner)
    });
    if mode.response_headers {
        let status = resp.status();
        let pseudo = [(":status", status.as_str().as_bytes())];
        let fields = resp
            .headers()
            .iter()
            .map(|(k, v)| (k.as_str(), v.as_bytes()));
        let msg = {
            let c = session.chan.borrow();
            messages::headers_message(
                Phase::ResponseHeaders,
                &pseudo,
                fields,
                !has_body,
                &c.core.forward,
            )
        };
        if unsized_mode(body_mode, true) {
            resp.headers_mut().remove(header::CONTENT_LENGTH);
        }
        let verdict = session
            .exchange_pumping(msg, Phase::ResponseHeaders, duplex.as_mut())
            .await;
        if session.take_override() && duplex.is_none() {
            body_mode = session.mode.response_body;
            send_trailers = session.mode.response_trailers;
        }
        match verdict {
            Verdict::Answered(c) => {
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
                    if let Some(d) = duplex.take() {
                        *resp.body_mut() = d.into_rest();
                    }
                    if let Some(b) = c.body_mutation.as_ref().and_then(mutation::apply_body) {
                        resp.headers_mut().remove(header::CONTENT_LENGTH);
                        let old = std::mem::replace(resp.body_mut(), ProxyBody::empty());
                        *resp.body_mut() = ProxyBody::filtered(Replaced::after(old, b));
                    }
                    body_mode = BodyMode::None;
                    send_trailers = false;
                } else {
                    headers_held = true;
                }
            }
            other => return replace(resp, other, outcome),
        }
    } else if unsized_mode(body_mode, false) {
        resp.headers_mut().remove(header::CONTENT_LENGTH);
    }
    if let Some(d) = duplex {
        *resp.body_mut() = ProxyBody::filtered(d);
        return;
    }
    if session.complete() || !has_body {
        return;
    }
    match body_mode {
        BodyMode::Buffered | BodyMode::BufferedPartial => {
            let held = match body_mode {
                BodyMode::Buffered => {
                    hold(resp.body_mut(), session.limit)
                        .await
                        .map(|(body, trailers)| Held {
                            body,
                            trailers,
                            complete: true,
                        })
                }
                _ => hold_partial(resp.body_mut(), session.limit).await,
            };
            let Ok(mut held) = held else {
                session.chan.borrow_mut().close();
                *resp = local_reply(StatusCode::INTERNAL_SERVER_ERROR, "Internal Server Error");
                return;
            };
            match session
                .held_body(
                    &mut held,
                    Phase::ResponseBody,
                    headers_held,
                    resp.headers_mut(),
                    send_trailers,
                )
                .await
            {
                Ok(Pseudo {
                    status: Some(s), ..
                }) => *resp.status_mut() = s,
                Ok(_) => {}
                Err(e) => return replace(resp, e, outcome),
            }
            if body_mode == BodyMode::Buffered {
                let sized = resp.headers().contains_key(header::CONTENT_LENGTH);
                *resp.body_mut() =
                    ProxyBody::filtered(Replaced::whole(held.body, held.trailers, sized));
            } else {
                let rest = std::mem::replace(resp.body_mut(), ProxyBody::empty());
                *resp.body_mut() = session.rest(held, rest, false, send_trailers);
            }
        }
        BodyMode::Streamed => {
            let inner = std::mem::replace(resp.body_mut(), ProxyBody::empty());
            let s = Streamed::new(
                session.chan.clone(),
                false,
                true,
                send_trailers,
                inner,
                session.limit,
            );
            *resp.body_mut() = ProxyBody::filtered(s);
        }
        BodyMode::FullDuplex => {
            let inner = std::mem::replace(resp.body_mut(), ProxyBody::empty());
            let d = Duplex::new(session.chan.clone(), false, send_trailers, inner);
            *resp.body_mut() = ProxyBody::filtered(d);
        }
        BodyMode::None if send_trailers => {
            let inner = std::mem::replace(resp.body_mut(), ProxyBody::empty());
            let s = Streamed::new(
                session.chan.clone(),
                false,
                false,
                true,
                inner,
                session.limit,
            );
            *resp.body_mut() = ProxyBody::filtered(s);
        }
        BodyMode::None => {}
    }
}

/// Replaces `resp` with an exchange's reply, if it is one.
fn replace(resp: &mut Response<ProxyBody>, e: Verdict, outcome: &mut Outcome) {
    if let Verdict::Reply(r, details) = e {
        outcome.set_details_owned(|| details);
        *resp = *r;
    }
}

/// A request pass's end from an exchange that was not answered: `None` to go on.
fn reply_or_done(e: Verdict, outcome: &mut Outcome) -> Option<Processed> {
    match e {
        Verdict::Reply(r, details) => {
            outcome.set_details_owned(|| details);
            Some(Processed::Reply(r))
        }
        _ => None,
    }
}

/// A request pass's end from a failed message.
fn reply(e: Verdict, outcome: &mut Outcome) -> Processed {
    reply_or_done(e, outcome).unwrap_or(Processed::Skip)
}

/// Envoy's check of a buffered body's replacement: a `content-length` the message still
/// has must be the new body's.
fn check_length(
    session: &Session,
    headers_held: bool,
    headers: &HeaderMap,
    m: &courier_proto::envoy::service::ext_proc::v3::BodyMutation,
) -> Result<(), Verdict> {
    let declared = headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| std::str::from_utf8(v.as_bytes()).ok())
        .and_then(|v| v.parse::<usize>().ok());
    match declared {
        Some(len) if headers_held && len != mutation::mutated_len(m) => {
            Err(session.chan.borrow_mut().mutation_failed(
                "mismatch between content length and the length of the mutated body".into(),
            ))
        }
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

/// Reads `body` whole (up to `limit` bytes): its data and trailers. `Err` past the
/// limit or when the peer broke off.
async fn hold(body: &mut ProxyBody, limit: usize) -> Result<(Bytes, Option<HeaderMap>), ()> {
    let mut data = BytesMut::new();
    let mut trailers = None;
    while let Some(frame) = poll_fn(|cx| Pin::new(&mut *body).poll_frame(cx)).await {
        let frame = frame.map_err(|_| ())?;
        match frame.into_data() {
            Ok(d) if data.len() + d.len() > limit => return Err(()),
            Ok(d) => data.extend_from_slice(&d),
            Err(f) => trailers = f.into_trailers().ok(),
        }
    }
    Ok((data.freeze(), trailers))
}

/// Reads `body` until it ends or more than `limit` bytes are held (Envoy's
/// `BUFFERED_PARTIAL`): what is held, and whether that is all of it. `Err` when the peer
/// broke off.
async fn hold_partial(body: &mut ProxyBody, limit: usize) -> Result<Held, ()> {
    let mut data = BytesMut::new();
    let mut trailers = None;
    let mut complete = true;
    while let Some(frame) = poll_fn(|cx| Pin::new(&mut *body).poll_frame(cx)).await {
        let frame = frame.map_err(|_| ())?;
        match frame.into_data() {
            Ok(d) => {
                data.extend_from_slice(&d);
                if data.len() > limit && !body.is_end_stream() {
                    complete = false;
                    break;
                }
            }
            Err(f) => trailers = f.into_trailers().ok(),
        }
    }
    Ok(Held {
        body: data.freeze(),
        trailers,
        complete,
    })
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
