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

use std::cell::{Cell, RefCell};
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{ready, Context, Poll};
use std::time::{Duration, Instant};

use crate::event::rt::Sleep;
use crate::stats::Counter;

/// One stream's idle state, shared by its request future and its bodies.
pub struct StreamIdle {
    timeout: Cell<Option<Duration>>,
    last_activity: Cell<Instant>,
    request_complete: Cell<bool>,
    /// Armed by whichever part of the stream is waiting: the request future until the
    /// response head, then the response body.
    timer: RefCell<Option<Sleep>>,
    counter: Arc<Counter>,
    worker: usize,
}

impl StreamIdle {
    /// A stream starting now, idle for at most `timeout` (`None`: never times out).
    pub fn new(
        timeout: Option<Duration>,
        request_complete: bool,
        counter: Arc<Counter>,
        worker: usize,
    ) -> StreamIdle {
        StreamIdle {
            timeout: Cell::new(timeout),
            last_activity: Cell::new(Instant::now()),
            request_complete: Cell::new(request_complete),
            timer: RefCell::new(None),
            counter,
            worker,
        }
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

    /// The request's body has ended.
    pub fn request_ended(&self) {
        self.request_complete.set(true);
    }

    /// Whether the whole request has arrived (the local reply is then `504`, else `408`).
    pub fn request_complete(&self) -> bool {
        self.request_complete.get()
    }

    /// When the stream times out unless something moves first.
    fn deadline(&self) -> Option<Instant> {
        self.timeout.get().map(|t| self.last_activity.get() + t)
    }

    /// Polls the stream's timer towards the idle deadline: `Ready` once the stream has been
    /// idle for its whole timeout (and then counted).
    pub fn poll_expired(&self, cx: &mut Context<'_>) -> Poll<()> {
        let mut timer = self.timer.borrow_mut();
        let Some(deadline) = self.deadline() else {
            *timer = None;
            return Poll::Pending;
        };
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
        self.counter.inc(self.worker);
        Poll::Ready(())
    }

    /// Stops the timer until the next [`poll_expired`](Self::poll_expired): whoever polled
    /// it is done waiting.
    pub fn disarm(&self) {
        self.timer.borrow_mut().take();
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
        this.idle.poll_expired(cx).map(|()| None)
    }
}
