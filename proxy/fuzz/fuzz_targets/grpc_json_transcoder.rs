//! Fuzzes the gRPC-JSON transcoder with what peers send it: a client's method, path
//! (query included) and JSON body, matched against the `google.api.http` rules of a small
//! service (`descriptors/shop.pb`, compiled from `proxy/tests/grpc_json_transcoder/`) and
//! made a gRPC message; then the service's answer (gRPC frames, trailers-only or not)
//! printed as JSON. Nothing may panic, and a transcoded request's upstream body must be
//! one whole gRPC frame.
//!
//! The input: a flags byte (bits 0-2: the method; bit 3: the answer is trailers-only;
//! bit 4: print options on), the path's length byte, the path, the request body's length
//! byte, the request body, then the answer's body.
#![no_main]

use std::future::Future;
use std::pin::Pin;
use std::sync::OnceLock;
use std::task::{Context, Poll, Waker};

use bytes::Bytes;
use courier::filters::http::grpc_json_transcoder::{GrpcJsonTranscoderFilter, Transcoded};
use courier::http::codec::body::ProxyBody;
use courier::http::route::per_filter::FilterConfigs;
use courier_proto::envoy::extensions::filters::http::grpc_json_transcoder::v3::GrpcJsonTranscoder;
use http::{Request, Response};
use hyper::body::Body;
use libfuzzer_sys::fuzz_target;

static DESCRIPTORS: &[u8] = include_bytes!("../descriptors/shop.pb");

const METHODS: [&str; 8] = [
    "GET", "POST", "PUT", "PATCH", "DELETE", "LIST", "HEAD", "OPTIONS",
];

fn filter(print: bool) -> &'static GrpcJsonTranscoderFilter {
    static PLAIN: OnceLock<GrpcJsonTranscoderFilter> = OnceLock::new();
    static PRINTED: OnceLock<GrpcJsonTranscoderFilter> = OnceLock::new();
    let make = |print: bool| {
        let config = GrpcJsonTranscoder {
            services: vec!["shop.Books".into()],
            descriptor_set: Some(
                courier_proto::envoy::extensions::filters::http::grpc_json_transcoder::v3::grpc_json_transcoder::DescriptorSet::ProtoDescriptorBin(DESCRIPTORS.to_vec()),
            ),
            print_options: print.then(|| {
                courier_proto::envoy::extensions::filters::http::grpc_json_transcoder::v3::grpc_json_transcoder::PrintOptions {
                    add_whitespace: true,
                    always_print_primitive_fields: true,
                    always_print_enums_as_ints: true,
                    preserve_proto_field_names: true,
                    ..Default::default()
                }
            }),
            convert_grpc_status: print,
            ..Default::default()
        };
        let store = courier::stats::Store::new(1);
        GrpcJsonTranscoderFilter::compile("t", &config, "transcoder", "fuzz", &store)
            .expect("the fuzz config compiles")
    };
    match print {
        true => PRINTED.get_or_init(|| make(true)),
        false => PLAIN.get_or_init(|| make(false)),
    }
}

/// `f`'s output; `None` if it waits (nothing here should).
fn ready<F: Future>(f: F) -> Option<F::Output> {
    let mut f = std::pin::pin!(f);
    let mut cx = Context::from_waker(Waker::noop());
    for _ in 0..64 {
        if let Poll::Ready(v) = f.as_mut().poll(&mut cx) {
            return Some(v);
        }
    }
    None
}

/// A body's data, and whether it ended in an error.
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
            Poll::Ready(None) | Poll::Pending => return (data, false),
        }
    }
}

fuzz_target!(|data: &[u8]| {
    let [flags, path_len, rest @ ..] = data else {
        return;
    };
    let (path, rest) = rest.split_at(usize::from(*path_len).min(rest.len()));
    let Some((body_len, rest)) = rest.split_first() else {
        return;
    };
    let (req_body, answer) = rest.split_at(usize::from(*body_len).min(rest.len()));
    let Ok(path) = std::str::from_utf8(path) else {
        return;
    };
    let Ok(mut req) = Request::builder()
        .method(METHODS[usize::from(flags & 7)])
        .uri(path)
        .header("content-type", "application/json")
        .body(ProxyBody::full(Bytes::copy_from_slice(req_body)))
    else {
        return;
    };
    let levels = FilterConfigs::default();
    let f = filter(flags & 16 != 0);
    let Some(transcoded) =
        ready(f.on_request([&levels, &levels, &levels], &mut req, path, 1 << 20))
    else {
        return;
    };
    let response = match transcoded {
        Transcoded::Pass | Transcoded::Reply(_) => return,
        Transcoded::Call { response, .. } => response,
    };
    let (up, failed) = drain(req.body_mut());
    assert!(!failed);
    // One whole gRPC frame: a flag byte, the length, the message.
    assert!(up.len() >= 5, "no gRPC frame upstream");
    let len = u32::from_be_bytes([up[1], up[2], up[3], up[4]]) as usize;
    assert_eq!(up.len(), 5 + len, "not one whole frame");

    let trailers_only = flags & 8 != 0;
    let mut resp = Response::builder()
        .status(200)
        .header("content-type", "application/grpc");
    let body = if trailers_only {
        resp = resp
            .header("grpc-status", "7")
            .header("grpc-message", "denied");
        ProxyBody::empty()
    } else {
        ProxyBody::full(Bytes::copy_from_slice(answer))
    };
    let Ok(mut resp) = resp.body(body) else {
        return;
    };
    if ready(response.on_response(&mut resp, 1 << 20)).is_some() {
        let _ = drain(resp.body_mut());
        let _ = resp.body().is_end_stream();
    }
});
