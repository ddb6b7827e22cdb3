//! The messages of a processing stream: the `ProcessingRequest`s a request and its answer
//! become, what a `ProcessingResponse` says for the message it answers, and an
//! immediate response's reply.

use bytes::Bytes;
use courier_proto::envoy::config::core::v3::{HeaderMap as HeaderMapProto, HeaderValue};
use courier_proto::envoy::service::ext_proc::v3::{
    processing_request, processing_response, CommonResponse, HttpBody, HttpHeaders, HttpTrailers,
    ImmediateResponse, ProcessingRequest, ProcessingResponse,
};
use http::{Response, StatusCode};
use prost::Message as _;

use super::mutation::{self, Pseudo, Target};
use super::ForwardRules;
use crate::http::codec::body::ProxyBody;
use crate::http::conn_manager::local_reply;

/// Which message of a request is being processed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Phase {
    /// The request's headers.
    RequestHeaders,
    /// The request's whole body.
    RequestBody,
    /// The response's headers.
    ResponseHeaders,
    /// The response's body (whole, or a chunk).
    ResponseBody,
    /// The request's trailers.
    RequestTrailers,
    /// The response's trailers.
    ResponseTrailers,
}

impl Phase {
    /// Whether the phase is the request's (Envoy's decoding state).
    pub fn is_request(self) -> bool {
        matches!(
            self,
            Phase::RequestHeaders | Phase::RequestBody | Phase::RequestTrailers
        )
    }
}

/// Which direction an answer is for: `Some(true)` the request's, `Some(false)` the
/// response's, `None` either (an immediate response, more time, or nothing known).
pub fn direction(r: &ProcessingResponse) -> Option<bool> {
    use processing_response::Response as R;
    if r.override_message_timeout.is_some() {
        return None;
    }
    match &r.response {
        Some(R::RequestHeaders(_) | R::RequestBody(_) | R::RequestTrailers(_)) => Some(true),
        Some(R::ResponseHeaders(_) | R::ResponseBody(_) | R::ResponseTrailers(_)) => Some(false),
        _ => None,
    }
}

/// A headers message: `pseudo` first (`:method`, `:path`, … or `:status`), then the
/// fields, each as `raw_value`, those `rules` forward.
pub fn headers_message<'h>(
    phase: Phase,
    pseudo: &[(&'h str, &'h [u8])],
    fields: impl Iterator<Item = (&'h str, &'h [u8])>,
    end_of_stream: bool,
    rules: &ForwardRules,
) -> ProcessingRequest {
    let headers = pseudo
        .iter()
        .copied()
        .chain(fields)
        .filter(|(k, _)| rules.forwards(k))
        .map(|(k, v)| HeaderValue {
            key: k.to_owned(),
            raw_value: v.to_vec(),
            ..Default::default()
        })
        .collect();
    let h = HttpHeaders {
        headers: Some(HeaderMapProto { headers }),
        end_of_stream,
        ..Default::default()
    };
    let request = match phase {
        Phase::RequestHeaders => processing_request::Request::RequestHeaders(h),
        _ => processing_request::Request::ResponseHeaders(h),
    };
    ProcessingRequest {
        request: Some(request),
        ..Default::default()
    }
}

/// A body's message (the whole body, or a chunk of it).
pub fn body_message(phase: Phase, body: &[u8], end_of_stream: bool) -> ProcessingRequest {
    let b = HttpBody {
        body: body.to_vec(),
        end_of_stream,
        ..Default::default()
    };
    let request = match phase {
        Phase::RequestBody => processing_request::Request::RequestBody(b),
        _ => processing_request::Request::ResponseBody(b),
    };
    ProcessingRequest {
        request: Some(request),
        ..Default::default()
    }
}

/// A trailers message: the fields `rules` forward, each as `raw_value`.
pub fn trailers_message(
    phase: Phase,
    trailers: &http::HeaderMap,
    rules: &ForwardRules,
) -> ProcessingRequest {
    let headers = trailers
        .iter()
        .filter(|(k, _)| rules.forwards(k.as_str()))
        .map(|(k, v)| HeaderValue {
            key: k.as_str().to_owned(),
            raw_value: v.as_bytes().to_vec(),
            ..Default::default()
        })
        .collect();
    let t = HttpTrailers {
        trailers: Some(HeaderMapProto { headers }),
    };
    let request = match phase {
        Phase::RequestTrailers => processing_request::Request::RequestTrailers(t),
        _ => processing_request::Request::ResponseTrailers(t),
    };
    ProcessingRequest {
        request: Some(request),
        ..Default::default()
    }
}

/// What an answer says, for the message `phase` is waiting on.
pub enum Answer {
    /// The answer to that message.
    Common(Box<CommonResponse>),
    /// The answer to a body's trailers (when a body streamed both ways waits for either
    /// kind): its header mutation alone.
    Trailers(Box<CommonResponse>),
    /// Answer the request with this.
    Immediate(Box<ImmediateResponse>),
    /// More time asked (`override_message_timeout`): ignored, as `max_message_timeout`
    /// is not set.
    MoreTime,
    /// An answer to another message, or none Courier knows: spurious.
    Spurious,
}

/// Decodes a message of the stream; `None` when it is not a `ProcessingResponse`.
pub fn decode(message: &Bytes) -> Option<ProcessingResponse> {
    ProcessingResponse::decode(message.as_ref()).ok()
}

/// What `r` says while `phase` waits.
pub fn classify(r: ProcessingResponse, phase: Phase) -> Answer {
    use processing_response::Response as R;
    if r.override_message_timeout.is_some() {
        return Answer::MoreTime;
    }
    match (r.response, phase) {
        (Some(R::RequestHeaders(h)), Phase::RequestHeaders)
        | (Some(R::ResponseHeaders(h)), Phase::ResponseHeaders) => {
            Answer::Common(Box::new(h.response.unwrap_or_default()))
        }
        (Some(R::RequestBody(b)), Phase::RequestBody)
        | (Some(R::ResponseBody(b)), Phase::ResponseBody) => {
            Answer::Common(Box::new(b.response.unwrap_or_default()))
        }
        (Some(R::RequestTrailers(t)), Phase::RequestTrailers)
        | (Some(R::ResponseTrailers(t)), Phase::ResponseTrailers) => {
            // A trailers answer is a header mutation alone.
            Answer::Common(Box::new(CommonResponse {
                header_mutation: t.header_mutation,
                ..Default::default()
            }))
        }
        (Some(R::ImmediateResponse(i)), _) => Answer::Immediate(Box::new(i)),
        _ => Answer::Spurious,
    }
}

/// What `r` says to a body streamed both ways (`request`'s, else the response's): a
/// body answer while `body_open` (a chunk sent and the service's body not ended) must
/// carry a `streamed_response`; a trailers answer is taken once `trailers_sent`.
pub fn classify_duplex(
    r: ProcessingResponse,
    request: bool,
    body_open: bool,
    trailers_sent: bool,
) -> Answer {
    use processing_response::Response as R;
    if r.override_message_timeout.is_some() {
        return Answer::MoreTime;
    }
    match r.response {
        Some(R::RequestBody(b)) if request && body_open => duplex_body(b),
        Some(R::ResponseBody(b)) if !request && body_open => duplex_body(b),
        Some(R::RequestTrailers(t)) if request && trailers_sent => trailers_answer(t),
        Some(R::ResponseTrailers(t)) if !request && trailers_sent => trailers_answer(t),
        Some(R::ImmediateResponse(i)) => Answer::Immediate(Box::new(i)),
        _ => Answer::Spurious,
    }
}

/// A body answer in full duplex: only a `streamed_response` is one (Envoy takes any
/// other as out of order).
fn duplex_body(b: courier_proto::envoy::service::ext_proc::v3::BodyResponse) -> Answer {
    use courier_proto::envoy::service::ext_proc::v3::body_mutation::Mutation;
    let c = b.response.unwrap_or_default();
    match c.body_mutation.as_ref().and_then(|m| m.mutation.as_ref()) {
        Some(Mutation::StreamedResponse(_)) => Answer::Common(Box::new(c)),
        _ => Answer::Spurious,
    }
}

fn trailers_answer(t: courier_proto::envoy::service::ext_proc::v3::TrailersResponse) -> Answer {
    Answer::Trailers(Box::new(CommonResponse {
        header_mutation: t.header_mutation,
        ..Default::default()
    }))
}

/// An immediate response as Envoy sends it (`sendLocalReply`): its status (`200` when
/// none or below 200), its body, its fields (the permissive rules of immediate
/// responses; `content-length` stays the body's), a gRPC request's `grpc-status`; and
/// its details, spaces made underscores.
pub fn immediate_reply(
    i: &ImmediateResponse,
    rejected: &mut dyn FnMut(),
) -> (Response<ProxyBody>, String) {
    let status = i
        .status
        .as_ref()
        .and_then(|s| u16::try_from(s.code).ok())
        .filter(|c| *c >= 200)
        .and_then(|c| StatusCode::from_u16(c).ok())
        .unwrap_or(StatusCode::OK);
    let mut reply = local_reply::local_reply_bytes(status, Bytes::copy_from_slice(&i.body));
    if let Some(m) = &i.headers {
        let mut fields = http::HeaderMap::new();
        // A failed mutation leaves the reply as it is (Envoy logs it).
        let _ = mutation::apply_headers(
            m,
            &mut fields,
            &mut Pseudo::default(),
            Target::Immediate,
            rejected,
        );
        // The service's fields replace the reply's own (`content-type`), but for its
        // length, which stays the body's.
        for name in fields.keys() {
            if name != http::header::CONTENT_LENGTH {
                reply.headers_mut().remove(name);
            }
        }
        for (k, v) in &fields {
            if k != http::header::CONTENT_LENGTH {
                reply.headers_mut().append(k.clone(), v.clone());
            }
        }
    }
    if let Some(g) = &i.grpc_status {
        local_reply::set_grpc_status(&mut reply, g.status);
    }
    let details = i.details.replace(|c: char| c.is_ascii_whitespace(), "_");
    (reply, details)
}
