//! The gRPC authorization service (`envoy.service.auth.v3.Authorization/Check`): the
//! `CheckRequest` framed as a unary call on the service's cluster, the `CheckResponse`
//! read back as a [`Verdict`].

use std::time::Duration;

use bytes::Bytes;
use courier_proto::envoy::config::core::v3::header_value_option::HeaderAppendAction;
use courier_proto::envoy::config::core::v3::HeaderValueOption;
use courier_proto::envoy::service::auth::v3::check_response::HttpResponse;
use courier_proto::envoy::service::auth::v3::{CheckRequest, CheckResponse};
use http::StatusCode;
use prost::Message as _;

use super::verdict::{field, Allowed, Denied, Verdict};
use crate::protocol::message::{RequestMessage, ResponseMessage};
use crate::upstream::async_client::grpc::GrpcClient;

/// The method every check calls.
const CHECK_PATH: &str = "/envoy.service.auth.v3.Authorization/Check";

/// Envoy's timeout for a check whose `grpc_service` sets none.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_millis(200);

/// A compiled `grpc_service`.
pub struct GrpcService {
    /// Its cluster, authority and metadata.
    pub client: GrpcClient,
    /// The call's timeout.
    pub timeout: Duration,
}

impl GrpcService {
    /// The call carrying `check`.
    pub fn request(&self, check: &CheckRequest) -> RequestMessage<Bytes> {
        self.client.unary_call(CHECK_PATH, check, self.timeout)
    }
}

/// The decision the service's answer holds; a call that failed (a non-200 answer, a
/// `grpc-status` other than OK, a message that does not decode) is an error.
pub fn verdict(answer: &ResponseMessage) -> Verdict {
    let Some(message) = answer.grpc_message() else {
        return Verdict::Error;
    };
    let Ok(response) = CheckResponse::decode(message) else {
        return Verdict::Error;
    };
    let code = response.status.as_ref().map_or(0, |s| s.code);
    if code == 0 {
        let mut allowed = Allowed::default();
        if let Some(HttpResponse::OkResponse(ok)) = &response.http_response {
            for h in &ok.headers {
                request_header(&mut allowed, h);
            }
            for h in &ok.response_headers_to_add {
                response_header(&mut allowed, h);
            }
            allowed.remove = ok
                .headers_to_remove
                .iter()
                .filter(|n| !n.starts_with(':'))
                .filter_map(|n| http::HeaderName::from_bytes(n.as_bytes()).ok())
                .collect();
            allowed.query_set = ok
                .query_parameters_to_set
                .iter()
                .map(|q| (q.key.clone(), q.value.clone()))
                .collect();
            allowed.query_remove = ok.query_parameters_to_remove.clone();
        }
        return Verdict::Ok(Box::new(allowed));
    }
    let mut denied = Denied {
        status: StatusCode::FORBIDDEN,
        headers: Vec::new(),
        body: Bytes::new(),
    };
    if let Some(HttpResponse::DeniedResponse(d)) = &response.http_response {
        denied.headers = d
            .headers
            .iter()
            .filter_map(|h| h.header.as_ref())
            .filter_map(|h| field(&h.key, header_value(h)))
            .collect();
        if let Some(s) = d
            .status
            .as_ref()
            .filter(|s| s.code > 0)
            .and_then(|s| u16::try_from(s.code).ok())
            .and_then(|c| StatusCode::from_u16(c).ok())
        {
            denied.status = s;
        }
        denied.body = Bytes::copy_from_slice(d.body.as_bytes());
    }
    Verdict::Denied(Box::new(denied))
}

fn header_value(h: &courier_proto::envoy::config::core::v3::HeaderValue) -> &[u8] {
    if h.raw_value.is_empty() {
        h.value.as_bytes()
    } else {
        &h.raw_value
    }
}

/// An `ok_response.headers` entry: appended to a field the request has when `append` is
/// true, else set.
fn request_header(allowed: &mut Allowed, h: &HeaderValueOption) {
    let Some(f) = h
        .header
        .as_ref()
        .and_then(|v| field(&v.key, header_value(v)))
    else {
        return;
    };
    #[allow(deprecated)]
    if h.append.as_ref().is_some_and(|a| a.value) {
        allowed.append.push(f);
    } else {
        allowed.set.push(f);
    }
}

/// A `response_headers_to_add` entry, by `append` when set, else its `append_action`.
fn response_header(allowed: &mut Allowed, h: &HeaderValueOption) {
    let Some(f) = h
        .header
        .as_ref()
        .and_then(|v| field(&v.key, header_value(v)))
    else {
        return;
    };
    let r = &mut allowed.response;
    #[allow(deprecated)]
    match &h.append {
        Some(a) if a.value => r.add.push(f),
        Some(_) => r.set.push(f),
        None => match HeaderAppendAction::try_from(h.append_action) {
            Ok(HeaderAppendAction::AddIfAbsent) => r.add_if_absent.push(f),
            Ok(HeaderAppendAction::OverwriteIfExists) => r.overwrite_if_exists.push(f),
            Ok(HeaderAppendAction::OverwriteIfExistsOrAdd) => r.set.push(f),
            Ok(HeaderAppendAction::AppendIfExistsOrAdd) | Err(_) => r.add.push(f),
        },
    }
}
