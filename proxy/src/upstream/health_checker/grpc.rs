//! gRPC health checks: the standard `grpc.health.v1.Health/Check` (Envoy's
//! `GrpcHealthCheckerImpl`).

use bytes::{BufMut, Bytes, BytesMut};
use courier_proto::envoy::config::core::v3::health_check::GrpcHealthCheck;
use http_body_util::{BodyExt, Full};

use super::{FailureKind, Outcome};
use crate::config::ConfigError;
use crate::protocol::header_mutations::{FormatContext, HeaderMutations};

/// A compiled `grpc_health_check`.
#[derive(Debug)]
pub struct GrpcCheck {
    /// `service_name`: the service asked about (empty: the server as a whole).
    pub service_name: String,
    /// `authority`, else the cluster's name.
    pub authority: String,
    /// `initial_metadata`.
    pub metadata: HeaderMutations,
}

/// `HealthCheckResponse.ServingStatus.SERVING`.
const SERVING: u64 = 1;

impl GrpcCheck {
    /// Compiles the check of cluster `cluster`.
    pub fn compile(g: &GrpcHealthCheck, cluster: &str) -> Result<GrpcCheck, ConfigError> {
        Ok(GrpcCheck {
            service_name: g.service_name.clone(),
            authority: if g.authority.is_empty() {
                cluster.to_string()
            } else {
                g.authority.clone()
            },
            metadata: HeaderMutations::compile(&g.initial_metadata, &[], "initial_metadata", "")?,
        })
    }

    /// The `Check` call.
    pub fn request(&self, https: bool, host: std::net::SocketAddr) -> http::Request<Full<Bytes>> {
        // HealthCheckRequest { service = 1 }, in one length-prefixed gRPC message.
        let mut msg = BytesMut::new();
        if !self.service_name.is_empty() {
            msg.put_u8(0x0a);
            put_varint(&mut msg, self.service_name.len() as u64);
            msg.put_slice(self.service_name.as_bytes());
        }
        let mut body = BytesMut::with_capacity(5 + msg.len());
        body.put_u8(0);
        body.put_u32(msg.len() as u32);
        body.put_slice(&msg);
        let scheme = if https { "https" } else { "http" };
        let uri = format!("{scheme}://{}/grpc.health.v1.Health/Check", self.authority);
        let mut req = http::Request::new(Full::new(body.freeze()));
        *req.method_mut() = http::Method::POST;
        *req.uri_mut() = uri.parse().unwrap_or_else(|_| http::Uri::from_static("/"));
        let h = req.headers_mut();
        h.insert(
            http::header::CONTENT_TYPE,
            http::HeaderValue::from_static("application/grpc"),
        );
        h.insert(http::header::TE, http::HeaderValue::from_static("trailers"));
        h.insert(
            http::header::USER_AGENT,
            http::HeaderValue::from_static("Envoy/HC"),
        );
        let local = std::net::SocketAddr::from(([127, 0, 0, 1], 0));
        self.metadata.apply(
            h,
            &FormatContext {
                remote: Some(local),
                local: Some(local),
                protocol: "HTTP/2",
                upstream: Some(host),
                request: None,
                start: None,
            },
        );
        req
    }

    /// Judges the answer: HTTP 200, `grpc-status: 0` and status SERVING.
    pub async fn judge(&self, resp: http::Response<hyper::body::Incoming>) -> Outcome {
        let active = Outcome::Failure {
            kind: FailureKind::Active,
            retriable: false,
            status: resp.status().as_u16(),
        };
        if resp.status() != http::StatusCode::OK {
            return active;
        }
        let head_status = grpc_status(resp.headers());
        let collected = match resp.into_body().collect().await {
            Ok(c) => c,
            Err(_) => {
                return Outcome::Failure {
                    kind: FailureKind::Network,
                    retriable: false,
                    status: 0,
                }
            }
        };
        let trailer_status = collected.trailers().and_then(grpc_status);
        if head_status.or(trailer_status) != Some(0) {
            return active;
        }
        let body = collected.to_bytes();
        match serving_status(&body) {
            Some(SERVING) => Outcome::Success { degraded: false },
            _ => active,
        }
    }
}

fn grpc_status(h: &http::HeaderMap) -> Option<u32> {
    h.get("grpc-status")?.to_str().ok()?.parse().ok()
}

fn put_varint(buf: &mut BytesMut, mut v: u64) {
    while v >= 0x80 {
        buf.put_u8((v as u8) | 0x80);
        v >>= 7;
    }
    buf.put_u8(v as u8);
}

fn varint(buf: &[u8]) -> Option<(u64, usize)> {
    let mut v = 0u64;
    for (i, &b) in buf.iter().enumerate().take(10) {
        v |= u64::from(b & 0x7f) << (7 * i);
        if b & 0x80 == 0 {
            return Some((v, i + 1));
        }
    }
    None
}

/// The `status` (field 1) of the one `HealthCheckResponse` in a gRPC body (0 when
/// absent, as proto3 defaults).
fn serving_status(body: &[u8]) -> Option<u64> {
    let (&flag, rest) = body.split_first()?;
    if flag != 0 || rest.len() < 4 {
        return None;
    }
    let len = u32::from_be_bytes([rest[0], rest[1], rest[2], rest[3]]) as usize;
    let mut msg = rest.get(4..4 + len)?;
    let mut status = 0;
    while !msg.is_empty() {
        let (key, n) = varint(msg)?;
        msg = &msg[n..];
        match key & 7 {
            0 => {
                let (v, n) = varint(msg)?;
                msg = &msg[n..];
                if key >> 3 == 1 {
                    status = v;
                }
            }
            2 => {
                let (l, n) = varint(msg)?;
                msg = msg.get(n + l as usize..)?;
            }
            1 => msg = msg.get(8..)?,
            5 => msg = msg.get(4..)?,
            _ => return None,
        }
    }
    Some(status)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_the_serving_status() {
        assert_eq!(serving_status(&[0, 0, 0, 0, 2, 0x08, 1]), Some(1));
        assert_eq!(serving_status(&[0, 0, 0, 0, 0]), Some(0));
        assert_eq!(serving_status(&[1, 0, 0, 0, 0]), None);
    }
}
