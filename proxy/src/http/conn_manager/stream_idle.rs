//! The stream idle timeout: `stream_idle_timeout` of the connection manager (default five
//! minutes), replaced by the route's `idle_timeout` once one is chosen.
//!
//! As in Envoy, any activity on the stream restarts the timer: the request's body frames
//! and the response's. When it runs out before the response has started, the stream gets
//! Envoy's local reply: `504 stream timeout`, or `408` while the request is still arriving.
//! After the response has started, the response body ends with an error, which resets the
//! stream (HTTP/2) or closes the connection (HTTP/1.1). An upgraded (websocket) stream
//! keeps it: its tunnel closes once no byte has crossed it for the timeout.
//! `downstream_rq_idle_timeout` counts each.
//!
//! The same timer carries the route `timeout` once the response has started: Envoy's spans
//! the whole response, its body included, so a body still arriving when it runs out ends
//! with an error the same way (counted in the cluster's `upstream_rq_timeout`). Before the
//! response head, the router enforces the route timeout itself (`504`).

use std::cell::{Cell, RefCell};
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{ready, Context, Poll};
use std::time::{Duration, Instant};

use crate::overload::scaled_timers::{scaled, ScaleWatch, TimerType};
use crate::stats::Counter;
use courier_runtime::event::rt::Sleep;

/// One stream's idle state, shared by its request future and its bodies.
pub struct StreamIdle {
    timeout: Cell<Option<Duration>>,
    last_activity: Cell<Instant>,
    request_complete: Cell<bool>,
    /// The request body's length, once it has ended (for the access log).
    request_bytes: Cell<u64>,
    /// Armed by whichever part of the stream is waiting: the request future until the
    /// response head, then the response body.
    timer: RefCell<Option<Sleep>>,
    counter: Arc<Counter>,
    worker: usize,
    /// When the response must have ended, once it has started (the route timeout, a
    /// stream duration), what counts it and which expiry it is.
    response_deadline: RefCell<Option<(Instant, Arc<Counter>, Expiry)>>,
    /// Which timeout ended the stream, if one did.
    expired: Cell<Option<Expiry>>,
    /// The idle timer's registration for `reduce_timeouts`' scale changes (only while the
    /// action scales stream idle timers).
    scale_watch: RefCell<Option<ScaleWatch>>,
    /// What the access logs learn of the stream (made only when there are some).
    log: Option<Box<StreamLog>>,
}

/// What a stream's bodies tell its access logs: when the request's last byte arrived and
/// the response's trailers.
#[derive(Default)]
pub struct StreamLog {
    /// When the request's last byte arrived.
    pub request_end: Cell<Option<Instant>>,
    /// The response's trailers, if it had some.
    pub trailers: RefCell<Option<http::HeaderMap>>,
    /// The response was complete with its head (its body is never polled).
    pub response_whole: Cell<bool>,
}

/// Which of a stream's timeouts ran out.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Expiry {
    /// Nothing moved on the stream for its idle timeout.
    Idle,
    /// The route timeout ended while the response body was still arriving.
    Route,
    /// The cluster's `max_stream_duration` ended while the response body was still
    /// arriving.
    UpstreamDuration,
}

impl Expiry {
    /// The access log's response flag (Envoy's).
    pub fn flag(self) -> &'static str {
        match self {
            Expiry::Idle => "SI",
            Expiry::Route => "UT",
            Expiry::UpstreamDuration => "UMSDR",
        }
    }

    /// The access log's response code details (Envoy's, for a response cut off after
    /// its head).
    pub fn details(self) -> &'static str {
        match self {
            Expiry::Idle => "stream_idle_timeout",
            Expiry::Route => "response_timeout",
            Expiry::UpstreamDuration => "upstream_max_stream_duration_reached",
        }
    }

    /// The error a body ends with.
    pub fn message(self) -> &'static str {
        match self {
            Expiry::Idle => "stream idle timeout",
            Expiry::Route => "upstream request timeout",
            Expiry::UpstreamDuration => crate::protocol::stream_limits::UPSTREAM_DURATION_REACHED,
        }
    }
}

impl StreamIdle {
    /// A stream starting now, idle for at most `timeout` (`None`: never times out);
    /// `logged`: it keeps what the access logs read of it ([`StreamLog`]).
    pub fn new(
        timeout: Option<Duration>,
        request_complete: bool,
        counter: Arc<Counter>,
        worker: usize,
        logged: bool,
    ) -> StreamIdle {
        StreamIdle {
            timeout: Cell::new(timeout),
            last_activity: Cell::new(Instant::now()),
            request_complete: Cell::new(request_complete),
            request_bytes: Cell::new(0),
            timer: RefCell::new(None),
            counter,
            worker,
            response_deadline: RefCell::new(None),
            expired: Cell::new(None),
            scale_watch: RefCell::new(None),
            // The request's end is reached already when it came whole.
            log: logged.then(|| {
                Box::new(StreamLog {
                    request_end: Cell::new(request_complete.then(Instant::now)),
                    ..StreamLog::default()
                })
            }),
        }
    }

    /// What the access logs learnt of the stream, when they are kept.
    pub fn log(&self) -> Option<&StreamLog> {
        self.log.as_deref()
    }

    /// The response has started with the route timeout (or a stream duration, `expiry`)
    /// ending at `deadline`: the response body must end by then, else it ends with an
    /// error, counted in `counter`.
    pub fn set_response_deadline(&self, deadline: Instant, counter: Arc<Counter>, expiry: Expiry) {
        *self.response_deadline.borrow_mut() = Some((deadline, counter, expiry));
    }

    /// The route's `idle_timeout` replaces the connection manager's; zero disables it.
    pub fn set_route_timeout(&self, timeout: Duration) {
        self.timeout.set((!timeout.is_zero()).then_some(timeout));
        self.last_activity.set(Instant::now());
    }

    /// Something moved on the stream: the timer starts again.
    pub fn touch(&self) {
        if self.timeout.get().is_some() {
            self.last_activity.set(Instant::now());
        }
    }

    /// The request's body has ended, `bytes` long.
    pub fn request_ended(&self, bytes: u64) {
        self.request_complete.set(true);
        self.request_bytes.set(bytes);
        if let Some(l) = &self.log {
            if l.request_end.get().is_none() {
                l.request_end.set(Some(Instant::now()));
            }
        }
    }

    /// The request body's length, once it has ended (else 0).
    pub fn request_bytes(&self) -> u64 {
        self.request_bytes.get()
    }

    /// Whether the whole request has arrived (the local reply is then `504`, else `408`).
    pub fn request_complete(&self) -> bool {
        self.request_complete.get()
    }

    /// When the stream times out unless something moves first (its timeout scaled by
    /// the overload manager's `reduce_timeouts`).
    fn idle_deadline(&self) -> Option<Instant> {
        self.timeout
            .get()
            .map(|t| self.last_activity.get() + scaled(TimerType::StreamIdle, t))
    }

    /// The earlier of the idle deadline and the response's route deadline.
    fn deadline(&self) -> Option<Instant> {
        let route = self.response_deadline.borrow().as_ref().map(|(d, ..)| *d);
        match (self.idle_deadline(), route) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }

    /// Polls the stream's timer towards its deadline: `Ready` once the stream has been
    /// idle for its whole timeout, or the response has outlived the route timeout (and
    /// then counted).
    pub fn poll_expired(&self, cx: &mut Context<'_>) -> Poll<Expiry> {
        let mut timer = self.timer.borrow_mut();
        let Some(deadline) = self.deadline() else {
            *timer = None;
            return Poll::Pending;
        };
        if self.timeout.get().is_some() {
            // Looked at again when `reduce_timeouts`' scale changes.
            let mut watch = self.scale_watch.borrow_mut();
            match watch.as_ref() {
                Some(w) => w.update(cx.waker()),
                None => *watch = ScaleWatch::register(TimerType::StreamIdle, cx.waker()),
            }
        }
        let sleep = timer.get_or_insert_with(|| Sleep::until(deadline));
        // Activity only moves the deadline later: the timer is left on the old one and
        // moved when it fires, so a busy stream adds one timer entry per timeout period,
        // not one per frame. (A route's shorter timeout moves it earlier, once.)
        if deadline < sleep.deadline() {
            sleep.reset(deadline);
        }
        loop {
            ready!(Pin::new(&mut *sleep).poll(cx));
            match self.deadline() {
                Some(later) if later > sleep.deadline() => sleep.reset(later),
                _ => break,
            }
        }
        *timer = None;
        let route = self.response_deadline.borrow();
        let expiry = match route.as_ref() {
            Some((at, counter, expiry)) if Instant::now() >= *at => {
                counter.inc(self.worker);
                *expiry
            }
            _ => {
                self.counter.inc(self.worker);
                Expiry::Idle
            }
        };
        self.expired.set(Some(expiry));
        Poll::Ready(expiry)
    }

    /// Which timeout ended the stream, if one did.
    pub fn expired(&self) -> Option<Expiry> {
        self.expired.get()
    }

    /// Stops the timer until the next [`poll_expired`](Self::poll_expired): whoever polled
    /// it is done waiting.
    pub fn disarm(&self) {
        self.timer.borrow_mut().take();
        self.scale_watch.borrow_mut().take();
    }
}

pin_project_lite::pin_project! {
    /// A future raced against its stream's idle timeout: `None` when the stream went idle
    /// first.
    pub struct UntilIdle<'a, F> {
        #[pin]
        fut: F,
        idle: &'a StreamIdle,
    }
}

impl<'a, F: Future> UntilIdle<'a, F> {
    /// Races `fut` against `idle`.
    pub fn new(fut: F, idle: &'a StreamIdle) -> Self {
        UntilIdle { fut, idle }
    }
}

impl<F: Future> Future for UntilIdle<'_, F> {
    type Output = Option<F::Output>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.project();
        if let Poll::Ready(v) = this.fut.poll(cx) {
            this.idle.disarm();
            return Poll::Ready(Some(v));
        }
        this.idle.poll_expired(cx).map(|_| None)
    }
}

impl crate::http::codec::body::ActivityWatch for StreamIdle {
    fn touch(&self) {
        StreamIdle::touch(self)
    }

    fn request_ended(&self, bytes: u64) {
        StreamIdle::request_ended(self, bytes)
    }

    fn poll_expired(&self, cx: &mut Context<'_>) -> Poll<&'static str> {
        StreamIdle::poll_expired(self, cx).map(Expiry::message)
    }

    fn trailers(&self, trailers: &http::HeaderMap) {
        if let Some(l) = &self.log {
            *l.trailers.borrow_mut() = Some(trailers.clone());
        }
    }
}
