//! What retries need besides the retry policy (Envoy's `RetryStateImpl`): the request's
//! body kept to be sent again, which failures a policy retries, the `max_retries` breaker
//! slot a retry holds, the back-off, and a retried response kept in case no retry follows.

use std::rc::Rc;
use std::sync::Arc;
use std::time::Instant;

use bytes::Bytes;
use http::header::{self, HeaderValue};
use http::Response;
use http_body_util::BodyExt;
use hyper::body::Body as _;

use crate::http::codec::body::ProxyBody;
use crate::http::request_stats::StatSinks;
use crate::http::route::RetryPolicy;
use crate::http::router::pool;
use crate::http::router::retry_buffer::{Replay, RetryBuffer};
use crate::http::router::upstream_request::AttemptError;
use crate::stats::Counter;
use crate::upstream::ClusterInfo;
use courier_runtime::event::rt;

/// A request's body as its attempts send it.
pub(super) struct RequestBody {
    /// The client's body, streamed to the first attempt when no retry can replay it.
    stream: Option<ProxyBody>,
    /// The whole body, when it was all in before the first attempt.
    buffered: Option<Bytes>,
    /// The body forwarded as it arrives, with a copy kept for a retry.
    replay: Option<Rc<RetryBuffer>>,
}

impl RequestBody {
    /// The client's `body`; when a retry may need it again (`keep`), taken whole if it is
    /// all in, else forwarded as it arrives with a copy kept, up to `limit` bytes (past it
    /// counted in `abandoned`): Envoy's buffering, which holds nothing back.
    #[inline(always)]
    pub(super) fn new(
        body: ProxyBody,
        keep: bool,
        limit: usize,
        abandoned: &Arc<Counter>,
        worker: usize,
    ) -> RequestBody {
        let mut this = RequestBody {
            stream: None,
            buffered: None,
            replay: None,
        };
        if !keep {
            this.stream = Some(body);
        } else if body.is_end_stream() {
            this.buffered = Some(Bytes::new());
        } else {
            let rb = RetryBuffer::new(body, limit, abandoned.clone(), worker);
            match rb.prefill() {
                Some(bytes) => this.buffered = Some(bytes),
                None => this.replay = Some(rb),
            }
        }
        this
    }

    /// The body of the next attempt: the buffered copy, a replay of the kept one, or the
    /// client's own (to the first attempt only).
    #[inline(always)]
    pub(super) fn for_attempt(&mut self) -> ProxyBody {
        if let Some(b) = &self.buffered {
            ProxyBody::full(b.clone())
        } else if let Some(rb) = &self.replay {
            ProxyBody::filtered(Replay::new(rb.clone()))
        } else {
            match self.stream.take() {
                Some(b) if !b.is_end_stream() => b,
                // Nothing to stream (a GET): sent as a complete, empty body.
                _ => ProxyBody::empty(),
            }
        }
    }

    /// Whether another attempt could send the body again.
    #[inline(always)]
    pub(super) fn replayable(&self) -> bool {
        self.buffered.is_some() || self.replay.as_ref().is_some_and(|b| b.replayable())
    }
}

/// Whether `policy` retries an attempt that failed with `err`: its `connect-failure`,
/// `reset` (a protocol error, an oversized head and the cluster's stream duration count as
/// resets), `refused-stream` and per-try timeout conditions. An overflow is never retried.
pub(super) fn retries_failure(policy: Option<&RetryPolicy>, err: &AttemptError) -> bool {
    let Some(r) = policy else {
        return false;
    };
    match err {
        AttemptError::Overflow => false,
        AttemptError::ConnectFailure => r.retry_connect_failure(),
        AttemptError::Reset
        | AttemptError::Protocol
        | AttemptError::HeadOverflow
        | AttemptError::MaxDuration => r.retry_reset(),
        AttemptError::Refused => r.retry_refused(),
        AttemptError::PerTryTimeout => r.retry_timeout(),
    }
}

/// The most of a kept response's body read now (by `deadline`): see [`settle`].
const SETTLED_BODY_LIMIT: usize = 64 * 1024;

/// A response whose body is read to its end (up to [`SETTLED_BODY_LIMIT`], else left
/// out), so that it no longer holds its upstream connection: a retried response kept in
/// case no retry can follow would otherwise hold the attempt's connection (an HTTP/2
/// stream slot) while the retry looks for one.
pub(super) async fn settle(
    resp: Response<ProxyBody>,
    deadline: Option<Instant>,
) -> Response<ProxyBody> {
    let (mut parts, body) = resp.into_parts();
    let read = http_body_util::Limited::new(body, SETTLED_BODY_LIMIT).collect();
    let bytes = match rt::timeout(deadline, read).await {
        Some(Ok(collected)) => collected.to_bytes(),
        // Too long, broken or too slow: the head alone, announced as such.
        _ => {
            parts
                .headers
                .insert(header::CONTENT_LENGTH, HeaderValue::from(0));
            Bytes::new()
        }
    };
    Response::from_parts(parts, ProxyBody::full(bytes))
}

/// A retry in the `max_retries` circuit breaker (or the cluster's `retry_budget`): counted
/// from when it is scheduled until its attempt starts, as Envoy counts it.
pub(super) struct RetrySlot(Rc<pool::ClusterPool>);

impl RetrySlot {
    /// A slot, or `None` (counted in `upstream_rq_retry_overflow`) when the breaker is full.
    pub(super) fn take(
        pool: &Rc<pool::ClusterPool>,
        cluster: &ClusterInfo,
        worker: usize,
        sinks: StatSinks<'_>,
    ) -> Option<Self> {
        let b = &pool.breakers;
        let max = cluster
            .thresholds
            .max_retries(b.requests.get() + b.pending.get());
        if b.retries.get() >= max {
            sinks.retry_overflow(worker);
            return None;
        }
        b.retries.set(b.retries.get() + 1);
        Some(RetrySlot(pool.clone()))
    }
}

impl Drop for RetrySlot {
    fn drop(&mut self) {
        let b = &self.0.breakers;
        b.retries.set(b.retries.get().saturating_sub(1));
    }
}

/// Sleeps the back-off; false when the route deadline would pass first.
pub(super) async fn backoff(
    policy: Option<&RetryPolicy>,
    attempt: u32,
    deadline: Option<Instant>,
) -> bool {
    let Some(p) = policy else { return false };
    let d = p.backoff(attempt);
    let until = Instant::now() + d;
    if deadline.is_some_and(|dl| until >= dl) {
        return false;
    }
    rt::Sleep::until(until).await;
    true
}
