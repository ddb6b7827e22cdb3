//! REST-JSON xDS (`api_config_source.api_type: REST`), as Envoy's `HttpSubscriptionImpl`
//! and `RestApiFetcher`.
//!
//! A REST subscription is state of the world over polling. Each poll is an HTTP `POST
//! /v3/discovery:<clusters|endpoints|listeners|routes|secrets|runtime>` to the first endpoint of the
//! static cluster named in `cluster_names` (HTTP/1.1, or HTTP/2 when the cluster's protocol
//! options say so; TLS when it has a transport socket), with `host: <cluster>`,
//! `content-type: application/json`, and the `DiscoveryRequest` in proto3 JSON: the node,
//! the last accepted `version_info`, the subscribed names, and after a rejection its
//! `error_detail` (Envoy sends none; a server that ignores it sees Envoy's request).
//!
//! Answers, as Envoy treats them:
//! - `200`: a `DiscoveryResponse` in JSON, applied exactly as a SotW gRPC response (the mux
//!   decodes and applies it and keeps the ACK/NACK state). Every resource is decoded as the
//!   type the path names; the body's `type_url` is not checked (Envoy does not either).
//!   A body that is not a `DiscoveryResponse` is rejected (`update_rejected`).
//! - `304 Not Modified`: nothing changed.
//! - anything else (errors, redirects, which are not followed), a connection failure, a body
//!   larger than [`MAX_RESPONSE_BYTES`], or no complete answer within `request_timeout`
//!   (default 1 s): `update_failure`; the last good config keeps serving.
//!
//! After each poll the next one waits `refresh_delay` plus a random jitter below
//! `refresh_delay` (Envoy's), or less when the subscription changes (Envoy starts a new
//! subscription, which polls at once). Everything runs on the main thread as tasks; nothing
//! blocks it.

use std::rc::{Rc, Weak};
use std::time::Duration;

use bytes::Bytes;
use courier_proto::envoy::service::discovery::v3::DiscoveryResponse;
use courier_proto::ResourceType;
use http_body_util::{BodyExt, Full, Limited};
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::io::{AsyncRead, AsyncWrite};

use super::mux::Mux;
use super::rest_target::RestTarget;
use crate::server::Server;

/// The largest response body a poll reads: 4 MiB, tonic's default limit for one gRPC
/// message, which the gRPC streams use too. A larger body fails the poll
/// (`update_failure`) after at most this much was read; it is never buffered whole.
pub const MAX_RESPONSE_BYTES: usize = 4 * 1024 * 1024;

/// Why a poll failed (Envoy's `ConnectionFailure`: counted as `update_failure`).
#[derive(Debug, thiserror::Error)]
enum PollError {
    #[error("cannot connect: {0}")]
    Connect(std::io::Error),
    #[error("the cluster's TLS secrets have not arrived")]
    NoTls,
    #[error("HTTP: {0}")]
    Http(#[from] hyper::Error),
    #[error("bad request: {0}")]
    Request(#[from] http::Error),
    #[error("HTTP status {0}")]
    Status(u16),
    #[error("response body larger than {MAX_RESPONSE_BYTES} bytes")]
    TooLarge,
    #[error("reading the response body: {0}")]
    Body(String),
    #[error("no response within the request_timeout of {0:?}")]
    Timeout(Duration),
}

/// A poll's answer.
enum Reply {
    /// `200` with its body.
    Body(Bytes),
    /// `304 Not Modified`.
    NotModified,
}

/// A byte stream to the server: TCP or TLS over it.
trait Io: AsyncRead + AsyncWrite + Unpin + Send {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send> Io for T {}

/// A connection kept between polls (Envoy's requests share the cluster's pool too).
enum Conn {
    Http1(hyper::client::conn::http1::SendRequest<Full<Bytes>>),
    Http2(hyper::client::conn::http2::SendRequest<Full<Bytes>>),
}

impl Conn {
    fn is_closed(&self) -> bool {
        match self {
            Conn::Http1(s) => s.is_closed(),
            Conn::Http2(s) => s.is_closed(),
        }
    }
}

/// Polls forever for the single type of `mux` (REST has no aggregated form), on the main
/// thread. Returns when the server is gone.
pub(super) async fn run(mux: Rc<Mux>, target: RestTarget, server: Weak<Server>) {
    let mut changes = mux.subscription_changes();
    let mut conn: Option<Conn> = None;
    loop {
        if server.strong_count() == 0 {
            return;
        }
        changes.borrow_and_update();
        let Some((kind, request)) = mux.rest_request() else {
            // Nothing subscribed (yet, or any more): wait for a subscription.
            if changes.changed().await.is_err() {
                return;
            }
            continue;
        };
        let body = courier_proto::to_json(&request).to_string();
        let path = format!("/v3/discovery:{}", kind.rest_name());
        tracing::debug!(mux = %mux.name(), %path, version = %request.version_info, "REST poll");
        let result = match tokio::time::timeout(
            target.request_timeout,
            exchange(&target, &mut conn, &path, body),
        )
        .await
        {
            Ok(r) => r,
            Err(_) => Err(PollError::Timeout(target.request_timeout)),
        };
        if result.is_err() {
            conn = None;
        }
        let Some(srv) = server.upgrade() else {
            return;
        };
        on_reply(&mux, &srv, kind, &path, result);
        drop(srv);
        let delay = jittered(target.refresh_delay);
        tokio::select! {
            _ = tokio::time::sleep(delay) => {}
            changed = changes.changed() => {
                if changed.is_err() {
                    return;
                }
            }
        }
    }
}

/// `refresh_delay` plus a random share of it below `refresh_delay`, as Envoy's.
fn jittered(refresh: Duration) -> Duration {
    let ms = refresh.as_millis().max(1) as u64;
    refresh + Duration::from_millis(fastrand::u64(0..ms))
}

/// Applies a poll's outcome: a response to the mux, a failure or rejection to the stats.
fn on_reply(
    mux: &Mux,
    server: &Rc<Server>,
    kind: ResourceType,
    path: &str,
    result: Result<Reply, PollError>,
) {
    match result {
        Ok(Reply::NotModified) => {
            // Envoy counts an attempt per poll; an answer that changes nothing adds nothing.
            tracing::debug!(mux = %mux.name(), path, "REST poll: not modified");
            for stats in mux.subscriptions(server, kind) {
                stats.started();
            }
        }
        Ok(Reply::Body(body)) => match parse(&body) {
            Ok(mut resp) => {
                if resp.type_url != kind.type_url() {
                    tracing::debug!(mux = %mux.name(), path, type_url = %resp.type_url, "REST response names another type; its resources are decoded as the path's");
                }
                resp.type_url = kind.type_url().to_string();
                mux.on_sotw_response(server, resp);
            }
            Err(e) => {
                tracing::warn!(mux = %mux.name(), path, error = %e, "REST config rejected");
                mux.rest_rejected(server, kind, e);
            }
        },
        Err(e) => {
            tracing::warn!(mux = %mux.name(), path, error = %e, "REST update failed");
            for stats in mux.subscriptions(server, kind) {
                stats.connection_failed();
            }
        }
    }
}

/// Reads a `DiscoveryResponse` from a JSON body.
fn parse(body: &[u8]) -> Result<DiscoveryResponse, String> {
    let text = std::str::from_utf8(body).map_err(|e| format!("response is not UTF-8: {e}"))?;
    courier_proto::from_json::<DiscoveryResponse>(text)
        .map_err(|e| format!("response is not a DiscoveryResponse: {e}"))
}

/// One POST on the kept connection (or a new one); the body of a `200`, or `304`.
async fn exchange(
    target: &RestTarget,
    conn: &mut Option<Conn>,
    path: &str,
    body: String,
) -> Result<Reply, PollError> {
    if conn.as_ref().is_none_or(Conn::is_closed) {
        *conn = Some(connect(target).await?);
    }
    let Some(sender) = conn.as_mut() else {
        return Err(PollError::Body("no connection".into()));
    };
    let uri = if target.http2 {
        let scheme = if target.tls.is_some() {
            "https"
        } else {
            "http"
        };
        format!("{scheme}://{}{path}", target.cluster)
    } else {
        path.to_string()
    };
    let len = body.len();
    let req = http::Request::post(uri)
        .header(http::header::HOST, &target.cluster)
        .header(http::header::CONTENT_TYPE, "application/json")
        .header(http::header::CONTENT_LENGTH, len)
        .body(Full::new(Bytes::from(body)))?;
    let resp = match sender {
        Conn::Http1(s) => {
            s.ready().await?;
            s.send_request(req).await?
        }
        Conn::Http2(s) => {
            s.ready().await?;
            s.send_request(req).await?
        }
    };
    let status = resp.status();
    if status == http::StatusCode::NOT_MODIFIED {
        return Ok(Reply::NotModified);
    }
    if status != http::StatusCode::OK {
        // The connection may hold an unread body: the next poll opens a new one.
        *conn = None;
        return Err(PollError::Status(status.as_u16()));
    }
    let declared = resp
        .headers()
        .get(http::header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|n| n > MAX_RESPONSE_BYTES as u64) {
        *conn = None;
        return Err(PollError::TooLarge);
    }
    match Limited::new(resp.into_body(), MAX_RESPONSE_BYTES)
        .collect()
        .await
    {
        Ok(collected) => Ok(Reply::Body(collected.to_bytes())),
        Err(e) => {
            *conn = None;
            if e.downcast_ref::<http_body_util::LengthLimitError>()
                .is_some()
            {
                Err(PollError::TooLarge)
            } else {
                Err(PollError::Body(e.to_string()))
            }
        }
    }
}

/// Opens a connection to the target (TLS when its cluster has it) and runs it as a task
/// of its own until either side closes it.
async fn connect(target: &RestTarget) -> Result<Conn, PollError> {
    if let Some(path) = &target.unix {
        let stream = tokio::net::UnixStream::connect(path)
            .await
            .map_err(PollError::Connect)?;
        return handshake(target, Box::new(stream)).await;
    }
    let tcp = tokio::net::TcpStream::connect((target.host.as_str(), target.port))
        .await
        .map_err(PollError::Connect)?;
    let _ = tcp.set_nodelay(true);
    let io: Box<dyn Io> = match &target.tls {
        None => Box::new(tcp),
        Some(tls) => {
            let peer = tcp.peer_addr().map_err(PollError::Connect)?;
            let alpn: &[u8] = if target.http2 { b"h2" } else { b"http/1.1" };
            let (config, name) = tls
                .for_main_thread(peer.ip(), None, alpn)
                .ok_or(PollError::NoTls)?;
            let stream = tokio_rustls::TlsConnector::from(config)
                .connect(name, tcp)
                .await
                .map_err(PollError::Connect)?;
            Box::new(stream)
        }
    };
    handshake(target, io).await
}

/// HTTP/2 or HTTP/1.1 over `io`, the connection running as a task of its own.
async fn handshake(target: &RestTarget, io: Box<dyn Io>) -> Result<Conn, PollError> {
    let io = TokioIo::new(io);
    if target.http2 {
        let (sender, connection) =
            hyper::client::conn::http2::handshake(TokioExecutor::new(), io).await?;
        tokio::task::spawn_local(connection);
        Ok(Conn::Http2(sender))
    } else {
        let (sender, connection) = hyper::client::conn::http1::handshake(io).await?;
        tokio::task::spawn_local(connection);
        Ok(Conn::Http1(sender))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::validate_rest_api as validate_api;
    use courier_proto::envoy::config::core::v3::ApiConfigSource;

    fn api(yaml: &str) -> ApiConfigSource {
        courier_proto::from_yaml(yaml).expect("api config source")
    }

    #[test]
    fn validation_follows_envoy() {
        let ok = api("{ api_type: REST, cluster_names: [xds], refresh_delay: 1s }");
        assert!(validate_api(&ok).is_ok());
        let cases = [
            ("{ api_type: REST, cluster_names: [xds] }", "refresh_delay is required for REST API configuration sources"),
            ("{ api_type: REST, refresh_delay: 1s }", "API configs must have either a gRPC service or a cluster name defined"),
            ("{ api_type: REST, cluster_names: [a, b], refresh_delay: 1s }", "must have a singleton cluster name specified"),
            ("{ api_type: REST, cluster_names: [xds], refresh_delay: 1s, grpc_services: [{ envoy_grpc: { cluster_name: xds } }] }", "if not a gRPC type, must not have a gRPC service specified"),
            ("{ api_type: REST, cluster_names: [xds], refresh_delay: 1s, request_timeout: 0s }", "value must be greater than 0s"),
        ];
        for (yaml, want) in cases {
            let err = validate_api(&api(yaml)).expect_err(yaml);
            assert!(err.message.contains(want), "{yaml}: {}", err.message);
        }
    }

    #[test]
    fn jitter_stays_below_twice_the_delay() {
        let d = Duration::from_millis(200);
        for _ in 0..100 {
            let j = jittered(d);
            assert!(j >= d && j < d * 2, "{j:?}");
        }
    }

    #[test]
    fn bad_bodies_are_rejected_not_panicking() {
        assert!(parse(b"{ not json").is_err());
        assert!(parse(&[0xff, 0xfe]).is_err());
        assert!(parse(b"{\"resources\": 3}").is_err());
        let ok = parse(b"{\"version_info\": \"1\", \"resources\": []}").expect("empty response");
        assert_eq!(ok.version_info, "1");
    }
}
