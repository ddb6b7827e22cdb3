//! Fuzzes what the filters read of a service's answer: the unary gRPC message and its
//! status (`ResponseMessage::grpc_message`: `200`, `grpc-status` in the trailers or a
//! trailers-only head, one whole uncompressed frame), decoded as ext_authz's
//! `CheckResponse` and applied to a request, and as the rate limit service's
//! `RateLimitResponse` (with the `x-ratelimit-*` fields from its statuses); the same answer
//! read by ext_authz's HTTP service; gRPC frames cut from the body in chunks. Nothing may
//! panic, and the frames cut in chunks are the frames cut whole.
//!
//! The input: a flags byte (bits 0-1: the status, 200, 200, 403 or 500; bit 2:
//! `grpc-status` in the trailers, else the head; bit 3: `grpc-status: 0`, else `7`; bit 4:
//! the rest framed as one uncompressed message, else the body as it is; bits 5-7: the chunk
//! size of the frame splitter), then the body.
#![no_main]

use std::sync::OnceLock;

use bytes::Bytes;
use courier::filters::http::ext_authz::grpc_service::verdict;
use courier::filters::http::ext_authz::http_service::HttpService;
use courier::filters::http::ext_authz::verdict::Verdict;
use courier::filters::http::ratelimit::{Limited, RateLimitFilter};
use courier::protocol::grpc_frame::{FrameCounter, FrameSplitter};
use courier::protocol::header_mutations::FormatContext;
use courier::protocol::message::ResponseMessage;
use courier_proto::envoy::extensions::filters::http::{
    ext_authz::v3 as authz, ratelimit::v3 as rl,
};
use http::{HeaderMap, HeaderValue};
use libfuzzer_sys::fuzz_target;

fn http_service() -> &'static HttpService {
    static S: OnceLock<HttpService> = OnceLock::new();
    S.get_or_init(|| {
        let p: authz::HttpService = courier_proto::from_value(&serde_json::json!({
            "server_uri": {"uri": "http://authz/check", "cluster": "authz", "timeout": "1s"},
            "authorization_response": {
                "allowed_upstream_headers": {"patterns": [{"prefix": "x-"}]},
                "allowed_upstream_headers_to_append": {"patterns": [{"exact": "x-append"}]},
                "allowed_client_headers": {"patterns": [{"exact": "x-deny"}]},
                "allowed_client_headers_on_success": {"patterns": [{"exact": "x-ok"}]}
            }
        }))
        .expect("fuzz http service");
        HttpService::compile(&p, None, "http_service").expect("compiles")
    })
}

fn ratelimit() -> &'static RateLimitFilter {
    static F: OnceLock<RateLimitFilter> = OnceLock::new();
    F.get_or_init(|| {
        let p: rl::RateLimit = courier_proto::from_value(&serde_json::json!({
            "domain": "fuzz",
            "enable_x_ratelimit_headers": "DRAFT_VERSION_03",
            "rate_limit_service": {
                "transport_api_version": "V3",
                "grpc_service": {"envoy_grpc": {"cluster_name": "rls"}}
            }
        }))
        .expect("fuzz rate limit");
        RateLimitFilter::compile("ratelimit", &p, "ratelimit").expect("compiles")
    })
}

fn request_headers() -> HeaderMap {
    let mut h = HeaderMap::new();
    h.insert("x-existing", HeaderValue::from_static("1"));
    h.insert("authorization", HeaderValue::from_static("secret"));
    h
}

fuzz_target!(|data: &[u8]| {
    let Some((&flags, rest)) = data.split_first() else {
        return;
    };
    let status = [200u16, 200, 403, 500][usize::from(flags & 3)];
    let grpc_status = HeaderValue::from_static(if flags & 8 != 0 { "0" } else { "7" });
    let body = if flags & 16 != 0 {
        let mut framed = vec![0u8];
        framed.extend_from_slice(&u32::try_from(rest.len()).unwrap_or(u32::MAX).to_be_bytes());
        framed.extend_from_slice(rest);
        Bytes::from(framed)
    } else {
        Bytes::copy_from_slice(rest)
    };
    let mut head = http::Response::builder()
        .status(status)
        .header("content-type", "application/grpc")
        .header("x-ok", "yes")
        .header("x-deny", "no")
        .header("x-append", "more");
    if let Ok(v) = HeaderValue::from_bytes(rest) {
        head = head.header("x-envoy-auth-headers-to-remove", v);
    }
    let mut trailers = None;
    if flags & 4 != 0 {
        let mut t = HeaderMap::new();
        t.insert("grpc-status", grpc_status);
        trailers = Some(t);
    } else {
        head = head.header("grpc-status", grpc_status);
    }
    let head = head.body(()).expect("head").into_parts().0;
    let answer = ResponseMessage {
        head,
        body: body.clone(),
        trailers,
    };

    for v in [verdict(&answer), http_service().verdict(&answer)] {
        match v {
            Verdict::Ok(allowed) => {
                let mut headers = request_headers();
                allowed.apply_headers(&mut headers);
                let _ = allowed.rewrite_query("/path?a=1&b=2&a=3");
                let mut response = HeaderMap::new();
                allowed.response.apply(&mut response);
            }
            Verdict::Denied(d) => assert!(d.status.as_u16() >= 100),
            Verdict::Error => {}
        }
    }

    let mut headers = request_headers();
    let cx = FormatContext {
        remote: None,
        local: None,
        protocol: "HTTP/1.1",
        upstream: None,
        request: None,
        start: None,
    };
    match ratelimit().decide(Some(&answer), &mut headers, &cx) {
        Limited::Pass(..) | Limited::Refuse(..) => {}
    }

    // Frames cut from chunks are the frames cut from the whole body.
    let size = usize::from(flags >> 5) * 3 + 1;
    let (mut whole, mut chunked) = (Vec::new(), Vec::new());
    let mut splitter = FrameSplitter::default();
    let whole_ok = splitter.push(&body, &mut whole);
    let mut splitter = FrameSplitter::default();
    let mut chunks_ok = true;
    let mut counter = FrameCounter::for_responses();
    for c in body.chunks(size) {
        chunks_ok &= splitter.push(c, &mut chunked);
        counter.inspect(c);
    }
    if whole_ok && chunks_ok {
        assert_eq!(whole, chunked, "chunks of {size}");
    }
});
