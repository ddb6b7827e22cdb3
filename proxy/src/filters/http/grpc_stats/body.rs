//! The bodies the gRPC statistics filter watches as they stream: a request's frames
//! counted, a response's frames counted and its trailers' `grpc-status` charged. Both go
//! on unchanged.

use std::pin::Pin;
use std::rc::Rc;
use std::sync::Arc;
use std::task::{Context, Poll};

use bytes::Bytes;
use hyper::body::{Body, Frame, SizeHint};

use super::GRPC_STATUS;
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
}

impl BodyTransform for CountedRequest {
    fn poll_frame(&mut self, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let polled = Pin::new(&mut self.inner).poll_frame(cx);
        if let Poll::Ready(Some(Ok(frame))) = &polled {
            if let Some(data) = frame.data_ref() {
                let started = self.frames.inspect(data);
                if started > 0 {
                    self.counters.add(&self.name, self.worker, started);
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
            } else if let Some(status) = frame.trailers_ref().and_then(|t| t.get(&GRPC_STATUS)) {
                charge_status(&self.counters, &self.prefix, status.as_bytes(), self.worker);
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
