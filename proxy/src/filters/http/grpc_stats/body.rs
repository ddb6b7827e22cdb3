//! The bodies the gRPC statistics filter watches as they stream: a request's frames
//! counted (and, with upstream stats, the moment its last one went upstream), a
//! response's frames counted and its trailers' `grpc-status` charged (with upstream
//! stats, the time since the request's end recorded). Both go on unchanged.

use std::cell::Cell;
use std::pin::Pin;
use std::rc::Rc;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Instant;

use bytes::Bytes;
use hyper::body::{Body, Frame, SizeHint};

use super::{UpstreamTiming, GRPC_STATUS};
use crate::http::codec::body::{BodyTransform, BoxError, ProxyBody};
use crate::protocol::grpc::charge_status;
use crate::protocol::grpc_frame::FrameCounter;
use crate::stats::dynamic::DynamicCounters;

/// A gRPC request body whose frames are added to `<prefix>request_message_count` as they
/// start (Envoy's `decodeData`).
pub(super) struct CountedRequest {
    pub(super) inner: ProxyBody,
    pub(super) frames: FrameCounter,
    pub(super) counters: Arc<DynamicCounters>,
    /// `<prefix>request_message_count`.
    pub(super) name: Rc<str>,
    pub(super) worker: usize,
    /// With upstream stats: set when the router took the body's last frame (Envoy's
    /// `lastUpstreamTxByteSent`, as the upstream codec writes what it takes at once).
    pub(super) sent: Option<Rc<Cell<Option<Instant>>>>,
}

impl BodyTransform for CountedRequest {
    fn poll_frame(&mut self, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let polled = Pin::new(&mut self.inner).poll_frame(cx);
        match &polled {
            Poll::Ready(Some(Ok(frame))) => {
                if let Some(data) = frame.data_ref() {
                    let started = self.frames.inspect(data);
                    if started > 0 {
                        self.counters.add(&self.name, self.worker, started);
                    }
                }
                if self.inner.is_end_stream() {
                    self.mark_sent();
                }
            }
            Poll::Ready(None) => self.mark_sent(),
            _ => {}
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

impl CountedRequest {
    /// The body's end went upstream (the first time it is seen).
    fn mark_sent(&self) {
        if let Some(sent) = &self.sent {
            if sent.get().is_none() {
                sent.set(Some(Instant::now()));
            }
        }
    }
}

/// A response body to a gRPC request: its frames added to
/// `<prefix>response_message_count` when the response is gRPC (Envoy's `encodeData`), and
/// its trailers' `grpc-status` charged (`encodeTrailers`).
pub(super) struct CountedResponse {
    pub(super) inner: ProxyBody,
    /// `Some` when the response's head said gRPC.
    pub(super) frames: Option<FrameCounter>,
    pub(super) counters: Arc<DynamicCounters>,
    /// `cluster.<name>.grpc.`, then `<service>.<method>.` when the method has its own.
    pub(super) prefix: Rc<str>,
    pub(super) worker: usize,
    /// With upstream stats: what times the request's upstream round trip.
    pub(super) upstream: Option<UpstreamTiming>,
}

impl BodyTransform for CountedResponse {
    fn poll_frame(&mut self, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let polled = Pin::new(&mut self.inner).poll_frame(cx);
        if let Poll::Ready(Some(Ok(frame))) = &polled {
            if let Some(data) = frame.data_ref() {
                if let Some(frames) = &mut self.frames {
                    let started = frames.inspect(data);
                    if started > 0 {
                        let name = format!("{}response_message_count", self.prefix);
                        self.counters.add(&name, self.worker, started);
                    }
                }
            } else if let Some(trailers) = frame.trailers_ref() {
                if let Some(status) = trailers.get(&GRPC_STATUS) {
                    charge_status(&self.counters, &self.prefix, status.as_bytes(), self.worker);
                }
                // Envoy's `encodeTrailers` charges the upstream time whatever the
                // trailers hold.
                if let Some(timing) = self.upstream.take() {
                    timing.charge(&self.prefix, self.worker);
                }
            }
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}
