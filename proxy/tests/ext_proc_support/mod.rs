//! What the ext_proc tests share: the answers' building blocks and the filter's counters.

use courier_proto::envoy::config::core::v3::{HeaderValue, HeaderValueOption};
use courier_proto::envoy::service::ext_proc::v3::{
    body_mutation, BodyMutation, ProcessingResponse,
};

use crate::http_support::Courier;

/// A header the service sets.
pub fn set(key: &str, value: &str) -> HeaderValueOption {
    HeaderValueOption {
        header: Some(HeaderValue {
            key: key.into(),
            raw_value: value.as_bytes().to_vec(),
            ..Default::default()
        }),
        ..Default::default()
    }
}

/// A body the service puts in place of the one it got.
pub fn body(b: &str) -> Option<BodyMutation> {
    Some(BodyMutation {
        mutation: Some(body_mutation::Mutation::Body(b.as_bytes().to_vec())),
    })
}

/// The filter's counters named `names`, as `<name>=<value>` lines.
pub fn counters(proxy: &Courier, names: &[&str]) -> Vec<String> {
    names
        .iter()
        .map(|c| {
            let name = format!("http.ingress.ext_proc.{c}");
            format!("{name}={}", proxy.stat(&name))
        })
        .collect()
}

/// The answers a test's processor streams back.
pub type Answers = std::pin::Pin<
    Box<dyn tokio_stream::Stream<Item = Result<ProcessingResponse, tonic::Status>> + Send>,
>;
