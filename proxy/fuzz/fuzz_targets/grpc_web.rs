//! Fuzzes the gRPC-Web filter's framing both ways, as the bodies stream through it in
//! arbitrary chunks: a client's `-text` (base64) or binary request body on its way up, and
//! a service's answer on its way back — gRPC frames re-encoded for a `-text` client, its
//! trailers made a trailers frame, or a non-gRPC answer's body made `grpc-message`. Nothing
//! may panic, and a `-text` request whose body is base64 as a whole reaches the upstream
//! decoded, whatever the chunks.
//!
//! The input: a flags byte (bit 0: `-text` request, 1: `-text` answer asked for, 2: the
//! answer is gRPC, 3: it has trailers, 4: it has no body), a chunk size byte, the request
//! body's length byte, the request body, then the answer's body.
#![no_main]

use std::collections::VecDeque;
use std::future::Future;
use std::pin::Pin;
use std::sync::OnceLock;
use std::task::{Context, Poll, Waker};

use base64::Engine as _;
use bytes::Bytes;
use courier::filters::http::grpc_web::GrpcWebFilter;
use courier::http::codec::body::{BodyTransform, BoxError, ProxyBody};
use http::{HeaderMap, HeaderValue, Request, Response};
use hyper::body::{Body, Frame};
use libfuzzer_sys::fuzz_target;

/// A body given in chunks of `size`, then its trailers.
struct Chunks {
    chunks: VecDeque<Bytes>,
    trailers: Option<HeaderMap>,
}

impl Chunks {
    fn body(data: &[u8], size: usize, trailers: Option<HeaderMap>) -> ProxyBody {
        let chunks = data.chunks(size).map(Bytes::copy_from_slice).collect();
        ProxyBody::filtered(Chunks { chunks, trailers })
    }
}

impl BodyTransform for Chunks {
    fn poll_frame(&mut self, _: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        if let Some(c) = self.chunks.pop_front() {
            return Poll::Ready(Some(Ok(Frame::data(c))));
        }
        Poll::Ready(self.trailers.take().map(|t| Ok(Frame::trailers(t))))
    }

    fn is_end_stream(&self) -> bool {
        self.chunks.is_empty() && self.trailers.is_none()
    }
}

/// Everything a body gives: its data, whether it ended in an error.
fn drain(body: &mut ProxyBody) -> (Vec<u8>, bool) {
    let mut cx = Context::from_waker(Waker::noop());
    let mut data = Vec::new();
    loop {
        match Pin::new(&mut *body).poll_frame(&mut cx) {
            Poll::Ready(Some(Ok(f))) => {
                if let Ok(d) = f.into_data() {
                    data.extend_from_slice(&d);
                }
            }
            Poll::Ready(Some(Err(_))) => return (data, true),
            Poll::Ready(None) => return (data, false),
            Poll::Pending => panic!("a body of ready chunks waits"),
        }
    }
}

fn filter() -> &'static GrpcWebFilter {
    static F: OnceLock<GrpcWebFilter> = OnceLock::new();
    F.get_or_init(|| GrpcWebFilter::new("grpc_web", &courier::stats::Store::new(1)))
}

fuzz_target!(|data: &[u8]| {
    let [flags, size, req_len, rest @ ..] = data else {
        return;
    };
    let size = usize::from(*size).max(1);
    let (req_body, resp_body) = rest.split_at(usize::from(*req_len).min(rest.len()));
    let text = flags & 1 != 0;

    let mut req = Request::builder()
        .method("POST")
        .uri("/pkg.Service/Method")
        .header(
            "content-type",
            if text {
                "application/grpc-web-text"
            } else {
                "application/grpc-web+proto"
            },
        )
        .header(
            "accept",
            if flags & 2 != 0 {
                "application/grpc-web-text"
            } else {
                "application/grpc-web"
            },
        )
        .body(Chunks::body(req_body, size, None))
        .expect("request");
    let Some(pending) = filter().on_request(&mut req, "/pkg.Service/Method", Some("up")) else {
        panic!("a gRPC-Web request not taken");
    };
    let (up, failed) = drain(req.body_mut());
    if text {
        if let Ok(whole) = base64::engine::general_purpose::STANDARD.decode(req_body) {
            assert!(
                !failed || req_body.is_empty(),
                "whole base64 refused in chunks of {size}"
            );
            assert_eq!(up, whole, "chunks of {size}");
        }
    } else {
        assert!(!failed);
        assert_eq!(up, req_body);
    }

    let grpc = flags & 4 != 0;
    let trailers = (flags & 8 != 0).then(|| {
        let mut t = HeaderMap::new();
        t.insert("grpc-status", HeaderValue::from_static("0"));
        t.insert("grpc-message", HeaderValue::from_static("fine%20thanks"));
        t
    });
    let body = if flags & 16 != 0 {
        ProxyBody::empty()
    } else {
        Chunks::body(resp_body, size, trailers)
    };
    let mut resp = Response::builder()
        .status(if grpc { 200 } else { 503 })
        .header(
            "content-type",
            if grpc {
                "application/grpc"
            } else {
                "text/plain"
            },
        )
        .body(body)
        .expect("response");
    {
        let mut cx = Context::from_waker(Waker::noop());
        let mut answer = std::pin::pin!(pending.on_response(&mut resp, 0));
        let Poll::Ready(_) = answer.as_mut().poll(&mut cx) else {
            panic!("the response pass waits on a ready body");
        };
    }
    let _ = drain(resp.body_mut());
});
