//! One attempt of a request on an upstream connection (Envoy's `UpstreamRequest`): a
//! connection from the pool, the request sent, the response head awaited.

use std::rc::Rc;
use std::sync::Arc;
use std::time::Instant;

use http::{Request, Response, Version};

use crate::http::codec::body::ProxyBody;
use crate::http::codec::header_map_pool;
use crate::http::codec::upstream_h1::{H1Connection, H1Error};
use crate::http::conn_manager::headers::strip_response_hop_by_hop;
use crate::http::request_stats::StatSinks;
use crate::http::router::pool;
use crate::protocol::stream_limits::StreamEnds;
use crate::upstream::ClusterInfo;
use courier_runtime::event::rt;
use pool::{PoolError, Sender};

/// An HTTP/1.1 upstream's response body as the cluster passes it on: its trailers only
/// with `enable_trailers`.
pub(crate) fn http1_response_body(cluster: &ClusterInfo, body: ProxyBody) -> ProxyBody {
    if cluster.http1_trailers {
        body
    } else {
        body.without_trailers()
    }
}

/// The addresses an attempt is sent for, and the one it learns.
#[derive(Default)]
pub(crate) struct AttemptAddrs<'a> {
    /// The (client, destination) addresses of the request's connection, which an
    /// `upstream_proxy_protocol` cluster's connections are kept per.
    pub downstream: Option<(std::net::SocketAddr, std::net::SocketAddr)>,
    /// Learns the upstream connection the request went on (for the access log).
    pub connected: Option<&'a std::cell::Cell<Option<Connected>>>,
}

/// The upstream connection an attempt went on, for the access log.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Connected {
    /// Its local address.
    pub local: Option<std::net::SocketAddr>,
    /// Its peer's.
    pub remote: std::net::SocketAddr,
    /// When the request went on it.
    pub at: std::time::Instant,
}

/// Sends one request on a connection of `pool` to `host` (a stale kept-alive one is
/// replaced); the response as its head arrives.
pub(crate) async fn send_once(
    pool: &Rc<pool::ClusterPool>,
    cluster: &Arc<ClusterInfo>,
    host: &Arc<crate::upstream::Host>,
    worker: usize,
    sinks: &StatSinks<'_>,
    req: Request<ProxyBody>,
    addrs: AttemptAddrs<'_>,
) -> Result<Response<ProxyBody>, AttemptError> {
    let mut req = req;
    let limits = &cluster.stream_limits;
    // A request that never went out on a reused connection (found closed as it was
    // written) goes on another one; a request written whole is never sent twice.
    // A complete body (none, or buffered for retries) goes through Courier's own HTTP/1
    // client; a streamed one through hyper's.
    // Under `use_downstream_protocol_config` the router built the request in its
    // downstream protocol's form, which names the connections it goes on.
    let downstream_h2 = cluster.http_downstream && req.version() == Version::HTTP_2;
    let raw_body = (!cluster.http2 && !downstream_h2)
        .then(|| req.body().bytes())
        .flatten();
    // Under `auto_sni`, only connections opened with this request's server name serve it.
    let name = cluster.auto_sni.as_ref().and_then(|a| a.name_for(&req));
    let mut key = pool::ConnKey::new(host.address, name.as_ref());
    key.h2 = downstream_h2;
    if cluster.proxy_protocol.is_some() {
        key.downstream = addrs.downstream;
    }
    let mut counted = false;
    for _ in 0..3 {
        let raw = raw_body.is_some();
        let (sender, reused) = match pool.checkout(cluster, host, &key, worker, raw).await {
            Ok(s) => s,
            Err(e) => return Err(checkout_failure(cluster, e)),
        };
        if let Some(c) = addrs.connected {
            c.set(Some(Connected {
                local: sender.local_addr(),
                remote: host.address,
                at: std::time::Instant::now(),
            }));
        }
        // As Envoy, an attempt counts (`upstream_rq_total`) once it has a connection.
        if !counted {
            sinks.attempt(worker);
            counted = true;
        }
        // As Envoy, the cluster's stream duration counts from the moment the attempt has
        // its connection.
        let ends = limits.attempt_ends();
        if cluster.http_auto {
            // Built in the HTTP/1.1 form; the connection's negotiated protocol decides.
            set_form(&mut req, matches!(sender, Sender::H2(..)));
        }
        match sender {
            Sender::Raw(c, usage) => {
                let pool2 = pool.clone();
                let key = key.clone();
                let on_done = Box::new(move |conn: Option<H1Connection>| {
                    if let Some(conn) = conn {
                        pool2.release_raw(key, conn, usage);
                    }
                });
                let (parts, req_body) = req.into_parts();
                let body = raw_body.clone().unwrap_or_default();
                let sent = match ends {
                    // Without a duration the send is awaited in place: moved into a
                    // timer's future it would be copied on every request.
                    None => c.send(&parts, &body, on_done).await,
                    Some(_) => {
                        match Box::pin(rt::timeout(ends, c.send(&parts, &body, on_done))).await {
                            Some(sent) => sent,
                            None => return Err(duration_reached(pool, worker)),
                        }
                    }
                };
                match sent {
                    // The upstream client leaves the response's hop-by-hop fields out.
                    Ok((resp, body)) => {
                        header_map_pool::recycle(parts.headers);
                        let body = http1_response_body(cluster, ProxyBody::upstream(body));
                        let mut resp = Response::from_parts(resp, body);
                        mark_stream_end(&mut resp, ends);
                        return Ok(resp);
                    }
                    // The upstream closed the kept-alive connection before the request
                    // went out: it goes on another connection.
                    Err(e) if reused && e.unsent() => {
                        tracing::debug!(error = %e, "stale upstream connection; sending again");
                        req = Request::from_parts(parts, req_body);
                        continue;
                    }
                    Err(H1Error::Protocol(e)) => {
                        pool.stats.cx_protocol_error.inc(worker);
                        tracing::debug!(error = %e, "upstream protocol error");
                        return Err(AttemptError::Protocol);
                    }
                    Err(e) => {
                        pool.stats.rq_rx_reset.inc(worker);
                        tracing::debug!(error = %e, "upstream reset");
                        return Err(AttemptError::Reset);
                    }
                }
            }
            Sender::H1(mut s, usage) => match rt::timeout(ends, s.try_send_request(req)).await {
                None => return Err(duration_reached(pool, worker)),
                Some(Ok(resp)) => {
                    let pool2 = pool.clone();
                    let key = key.clone();
                    let (parts, body) = resp.into_parts();
                    let mut parts = parts;
                    strip_response_hop_by_hop(&mut parts.headers, parts.status);
                    let body = ProxyBody::stream(
                        body,
                        Some(Box::new(move |ok, _| {
                            if ok {
                                pool2.release(key, s, usage);
                            }
                        })),
                    );
                    let mut resp = Response::from_parts(parts, http1_response_body(cluster, body));
                    mark_stream_end(&mut resp, ends);
                    return Ok(resp);
                }
                Some(Err(mut e)) => match e.take_message() {
                    Some(r) => {
                        req = r;
                        continue;
                    }
                    None => return Err(h1_failure(pool, worker, e.error())),
                },
            },
            Sender::H2(mut s, stream) => {
                if s.ready().await.is_err() {
                    continue;
                }
                match rt::timeout(ends, s.try_send_request(req)).await {
                    None => return Err(duration_reached(pool, worker)),
                    Some(Ok(resp)) => {
                        return h2_response(pool, cluster, worker, resp, stream, ends)
                    }
                    Some(Err(mut e)) => match e.take_message() {
                        Some(r) => {
                            req = r;
                            continue;
                        }
                        None => return Err(h2_failure(pool, worker, e.error())),
                    },
                }
            }
        }
    }
    Err(AttemptError::Reset)
}

/// Puts `req` in the form of the connection it goes on (`auto_config`): HTTP/2's (the
/// authority in the URI, no `host`) or HTTP/1.1's (origin-form path, `host`), whichever
/// it was in.
fn set_form(req: &mut Request<ProxyBody>, h2: bool) {
    if h2 == (req.version() == Version::HTTP_2) {
        return;
    }
    let path = req.uri().path_and_query().cloned();
    if h2 {
        let Some(host) = req.headers_mut().remove(http::header::HOST) else {
            return;
        };
        let uri = host.to_str().ok().and_then(|authority| {
            let mut b = http::Uri::builder().scheme("http").authority(authority);
            if let Some(pq) = path {
                b = b.path_and_query(pq);
            }
            b.build().ok()
        });
        let Some(uri) = uri else {
            // Not an authority an HTTP/2 request can carry: left in the HTTP/1.1 form,
            // which hyper's HTTP/2 client refuses as any malformed request.
            req.headers_mut().insert(http::header::HOST, host);
            return;
        };
        *req.uri_mut() = uri;
        *req.version_mut() = Version::HTTP_2;
    } else {
        if let Some(authority) = req.uri().authority() {
            if let Ok(v) = http::HeaderValue::from_str(authority.as_str()) {
                req.headers_mut().insert(http::header::HOST, v);
            }
        }
        if let Some(pq) = path {
            *req.uri_mut() = http::Uri::from(pq);
        }
        *req.version_mut() = Version::HTTP_11;
    }
}

/// The attempt's failure when the pool gives it no connection.
fn checkout_failure(cluster: &ClusterInfo, e: PoolError) -> AttemptError {
    match e {
        PoolError::Overflow => AttemptError::Overflow,
        PoolError::ConnectFailure(e) => {
            tracing::debug!(cluster = %cluster.name, error = %e, "upstream connect failure");
            AttemptError::ConnectFailure(Some(e.into_boxed_str()))
        }
        PoolError::ConnectTimeout => AttemptError::ConnectFailure(None),
    }
}

/// The attempt's failure when hyper's HTTP/1.1 client gets no response: a response it could
/// not parse (more fields than the cluster's `max_headers_count` among them) is Envoy's
/// protocol error, anything else a reset.
fn h1_failure(pool: &pool::ClusterPool, worker: usize, e: &hyper::Error) -> AttemptError {
    if e.is_parse() {
        pool.stats.cx_protocol_error.inc(worker);
        tracing::debug!(error = %e, "upstream protocol error");
        return AttemptError::Protocol;
    }
    pool.stats.rq_rx_reset.inc(worker);
    tracing::debug!(error = %e, "upstream reset");
    AttemptError::Reset
}

/// An HTTP/2 response head as it goes on (its stream holding its place on the connection
/// until the response ends), or a reset for a head over the cluster's
/// `max_headers_count`.
fn h2_response(
    pool: &pool::ClusterPool,
    cluster: &ClusterInfo,
    worker: usize,
    resp: Response<hyper::body::Incoming>,
    stream: pool::H2Stream,
    ends: Option<Instant>,
) -> Result<Response<ProxyBody>, AttemptError> {
    if cluster.stream_limits.h2_head_too_large(resp.headers()) {
        // Dropping the response resets the stream; the connection stays, as Envoy's.
        pool.stats.rq_rx_reset.inc(worker);
        tracing::debug!(
            cluster = %cluster.name,
            fields = resp.headers().len() + 1,
            "upstream response head over max_headers_count"
        );
        return Err(AttemptError::HeadOverflow);
    }
    let (mut parts, body) = resp.into_parts();
    strip_response_hop_by_hop(&mut parts.headers, parts.status);
    parts.version = Version::HTTP_11;
    // The stream holds its place on the connection until the response ends.
    let body = ProxyBody::stream(body, Some(Box::new(move |_, _| drop(stream))));
    let mut resp = Response::from_parts(parts, body);
    mark_stream_end(&mut resp, ends);
    Ok(resp)
}

/// The attempt's failure when an HTTP/2 stream gets no response: a reset, or a refused
/// stream (`REFUSED_STREAM`), which the upstream did not process.
fn h2_failure(pool: &pool::ClusterPool, worker: usize, e: &hyper::Error) -> AttemptError {
    pool.stats.rq_rx_reset.inc(worker);
    tracing::debug!(error = %e, "upstream reset");
    if refused_stream(e) {
        return AttemptError::Refused;
    }
    AttemptError::Reset
}

/// An attempt outlived the cluster's `max_stream_duration` before its response head: the
/// stream was dropped (an HTTP/1.1 connection closes, an HTTP/2 stream is reset).
pub(crate) fn duration_reached(pool: &pool::ClusterPool, worker: usize) -> AttemptError {
    pool.stats.rq_max_duration_reached.inc(worker);
    AttemptError::MaxDuration
}

/// Notes on `resp` when its stream must end (the cluster's `max_stream_duration`), for
/// the router to cut its body off then.
pub(crate) fn mark_stream_end(resp: &mut Response<ProxyBody>, ends: Option<Instant>) {
    if let Some(at) = ends {
        resp.extensions_mut().insert(StreamEnds(at));
    }
}

/// Whether an HTTP/2 upstream refused the stream (RST_STREAM `REFUSED_STREAM`).
pub(crate) fn refused_stream(e: &hyper::Error) -> bool {
    let mut source: Option<&(dyn std::error::Error + 'static)> = std::error::Error::source(e);
    while let Some(err) = source {
        if let Some(h2) = err.downcast_ref::<h2::Error>() {
            return h2.reason() == Some(h2::Reason::REFUSED_STREAM);
        }
        source = err.source();
    }
    false
}

/// Why one attempt failed.
#[derive(Debug)]
pub(crate) enum AttemptError {
    Overflow,
    /// The connection attempt failed: why, in Envoy's words (its transport failure
    /// reason), or `None` when it timed out.
    ConnectFailure(Option<Box<str>>),
    Reset,
    /// An HTTP/2 upstream refused the stream (`REFUSED_STREAM`): it did not process it.
    Refused,
    /// The upstream's response broke HTTP/1.1 (retried as a reset, answered `502`).
    Protocol,
    /// The HTTP/2 stream was reset for its response head (more fields than the cluster's
    /// `max_headers_count`): Envoy's `503 … remote reset` (retried as a reset).
    HeadOverflow,
    /// The attempt outlived the cluster's `max_stream_duration` before its response head
    /// (retried as a reset, as Envoy's local reset).
    MaxDuration,
    PerTryTimeout,
}

impl AttemptError {
    /// How the attempt ended, for its span (`spawn_upstream_span`), with Envoy's flag
    /// and reset reason; `protocol` is the cluster's, for an attempt that had a
    /// connection.
    pub(crate) fn span_end(&self, protocol: &'static str) -> crate::tracers::AttemptEnd {
        let (flags, reset, canceled) = match self {
            AttemptError::Overflow => ("UO", Some("overflow"), false),
            AttemptError::ConnectFailure(Some(_)) => {
                ("UF", Some("remote connection failure"), false)
            }
            AttemptError::ConnectFailure(None) => ("UF", Some("connection timeout"), false),
            AttemptError::Reset => ("UC", Some("connection termination"), false),
            AttemptError::Refused => ("UR", Some("remote refused stream reset"), false),
            AttemptError::Protocol => ("UPE", Some("protocol error"), false),
            AttemptError::HeadOverflow => ("UR", Some("remote reset"), false),
            AttemptError::MaxDuration => ("UMSDR", None, true),
            AttemptError::PerTryTimeout => ("UT", None, true),
        };
        let connected = !matches!(
            self,
            AttemptError::Overflow | AttemptError::ConnectFailure(_)
        );
        crate::tracers::AttemptEnd {
            status: 0,
            protocol: if connected { protocol } else { "-" },
            flags,
            reset,
            canceled,
        }
    }
}
