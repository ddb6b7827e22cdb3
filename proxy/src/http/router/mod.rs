//! One request through the connection manager and the router filter: header sanitising,
//! route selection, local replies, and forwarding with retries and timeouts.

pub mod pool;
pub mod retry_buffer;
pub mod shadow;

use std::borrow::Cow;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::pin::Pin;
use std::rc::Rc;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use bytes::Bytes;
use http::header::{self, HeaderName, HeaderValue};
use http::{Method, Request, Response, StatusCode, Uri, Version};
use http_body_util::BodyExt;
use hyper::body::Body as _;

use crate::filters::http::cors::CorsRequest;
use crate::filters::http::fault::{AbortWith, FaultFilter};
use crate::filters::http::health_check::HealthCheckRequest;
use crate::filters::http::local_ratelimit::RateLimited;
use crate::filters::http::rbac::{RequestView, XffTrust};
use crate::filters::http::{self as http_filters, most_specific, FilterConfigs, FilterPolicy};
use crate::http::codec::body::ProxyBody;
use crate::http::codec::h1_server::{CodecEvent, H1Service, H1Settings, ServeFuture};
use crate::http::codec::handoff::DownstreamUpgrade;
use crate::http::codec::header_map_pool;
use crate::protocol::stream_limits::{StreamEnds, UPSTREAM_DURATION_REACHED};
use crate::http::codec::upstream_h1::{H1Connection, H1Error};
use crate::http::conn_manager::access_log::LogEntry;
use crate::http::conn_manager::config::{
    EscapedSlashes, HcmConfig, HttpFilter, RouteSource, UnderscoreAction,
};
use crate::http::conn_manager::headers::{
    decimal_value, strip_hop_by_hop, strip_response_hop_by_hop, FormatContext,
};
use crate::http::conn_manager::request_controls::RequestControls;
use crate::http::conn_manager::stream_idle::{Expiry, StreamIdle, UntilIdle};
use crate::http::conn_manager::upgrade::{self, WorkerIo};
use crate::http::request_stats::StatSinks;
use crate::http::route::{
    Action, ClusterSpec, HostRewrite, Pseudo, Redirect, Route, RouteAction, RouteTable, VirtualHost,
};
use crate::http::router::retry_buffer::{Replay, RetryBuffer};
use crate::upstream::{ClusterInfo, ThreadLocalClusterManager};
use courier_runtime::event::rt;
use pool::{PoolError, Sender};

/// What a request knows about its connection.
pub struct ConnInfo {
    /// The connection manager.
    pub config: Arc<HcmConfig>,
    /// Client address.
    pub remote: SocketAddr,
    /// Local address.
    pub local: SocketAddr,
    /// Worker index.
    pub worker: usize,
    /// Requests started on this connection.
    pub requests: std::cell::Cell<u32>,
    /// Requests in flight on this connection.
    pub active: std::cell::Cell<u32>,
    /// Set when the connection should close after the current request.
    pub closing: std::cell::Cell<bool>,
    /// Last time a request started or finished.
    pub last_activity: std::cell::Cell<Instant>,
    /// The listener's stats (its `downstream_cx_active` is what a drain waits on).
    pub listener_stats: Arc<crate::listener::ListenerStats>,
    /// The codec once detected: `Some(true)` for HTTP/2.
    pub http2: std::cell::Cell<Option<bool>>,
    /// The listener's `per_connection_buffer_limit_bytes`: by default, how much of a
    /// request body is buffered to be replayed on retries.
    pub buffer_limit: usize,
    /// The connection's own rate limit buckets (`local_rate_limit_per_downstream_connection`).
    pub rate_limit_buckets: crate::filters::http::local_ratelimit::ConnectionBuckets,
    /// The connection drains (a listener drain, a failed health check): it takes no new
    /// request after the current ones (HTTP/2: GOAWAY).
    pub draining: std::cell::Cell<bool>,
    /// The HTTP/1.1 codec's settings, from `config`.
    pub h1: H1Settings,
}

/// The HTTP/1.1 codec serves its requests through the connection manager.
impl H1Service for ConnInfo {
    fn settings(&self) -> &H1Settings {
        &self.h1
    }

    fn serve(
        self: Rc<Self>,
        req: Request<ProxyBody>,
        upgrade: Option<DownstreamUpgrade>,
    ) -> ServeFuture {
        serve_boxed(self, req, upgrade)
    }

    fn local_reply(&self, status: StatusCode, body: &str) -> Response<ProxyBody> {
        let mut r = local_reply(status, body);
        finish_response(&self.config, &mut r);
        r
    }

    fn closing(&self) -> bool {
        self.closing.get()
    }

    fn count(&self, event: CodecEvent) {
        let stats = &self.config.stats;
        match event {
            CodecEvent::ProtocolError => stats.downstream_cx_protocol_error.inc(self.worker),
            CodecEvent::HeaderTimeout => stats.downstream_rq_header_timeout.inc(self.worker),
        }
    }
}

impl ConnInfo {
    /// Starts draining the connection (`downstream_cx_drain_close`, once): HTTP/1.1 closes
    /// after the current response, HTTP/2 sends GOAWAY ([`crate::http::conn_manager::connection`] acts on it).
    pub fn drain_close(&self) {
        self.closing.set(true);
        if !self.draining.replace(true) {
            self.config.stats.downstream_cx_drain_close.inc(self.worker);
        }
    }
}

/// The connection counts as active until its last holder is gone: the connection itself,
/// a response still finishing, or a tunnel (an upgraded connection outlives its HTTP codec;
/// as in Envoy, it stays in `downstream_cx_active` and a drain waits for it).
impl Drop for ConnInfo {
    fn drop(&mut self) {
        let w = self.worker;
        let stats = &self.config.stats;
        match self.http2.get() {
            Some(true) => stats.downstream_cx_http2_active.dec(w),
            Some(false) => stats.downstream_cx_http1_active.dec(w),
            None => {}
        }
        stats.downstream_cx_active.dec(w);
        stats.downstream_cx_destroy.inc(w);
        self.listener_stats.downstream_cx_active.dec(w);
        self.listener_stats.downstream_cx_destroy.inc(w);
    }
}

static X_REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");
static X_FORWARDED_FOR: HeaderName = HeaderName::from_static("x-forwarded-for");
static X_FORWARDED_PROTO: HeaderName = HeaderName::from_static("x-forwarded-proto");
static X_ENVOY_EXTERNAL_ADDRESS: HeaderName = HeaderName::from_static("x-envoy-external-address");
static X_ENVOY_INTERNAL: HeaderName = HeaderName::from_static("x-envoy-internal");
static X_FORWARDED_CLIENT_CERT: HeaderName = HeaderName::from_static("x-forwarded-client-cert");
static X_ENVOY_FORCE_TRACE: HeaderName = HeaderName::from_static("x-envoy-force-trace");
static X_ENVOY_ORIGINAL_PATH: HeaderName = HeaderName::from_static("x-envoy-original-path");
static X_ENVOY_ORIGINAL_HOST: HeaderName = HeaderName::from_static("x-envoy-original-host");
static X_FORWARDED_HOST: HeaderName = HeaderName::from_static("x-forwarded-host");
static X_ENVOY_IS_TIMEOUT_RETRY: HeaderName = HeaderName::from_static("x-envoy-is-timeout-retry");
static X_ENVOY_EXPECTED_RQ_TIMEOUT_MS: HeaderName =
    HeaderName::from_static("x-envoy-expected-rq-timeout-ms");
static X_ENVOY_UPSTREAM_SERVICE_TIME: HeaderName =
    HeaderName::from_static("x-envoy-upstream-service-time");
static X_ENVOY_OVERLOADED: HeaderName = HeaderName::from_static("x-envoy-overloaded");
static X_ENVOY_ATTEMPT_COUNT: HeaderName = HeaderName::from_static("x-envoy-attempt-count");

/// Envoy's body for an upstream connection failure.
pub const UPSTREAM_CONNECT_ERROR: &str =
    "upstream connect error or disconnect/reset before headers. reset reason: remote connection failure";
/// Envoy's body for a reset before response headers.
pub const UPSTREAM_RESET: &str =
    "upstream connect error or disconnect/reset before headers. reset reason: connection termination";
/// Envoy's body when a route's `max_stream_duration` ends before the response.
pub const DURATION_TIMEOUT: &str = "downstream duration timeout";
/// `grpc-timeout`.
const GRPC_TIMEOUT: HeaderName = HeaderName::from_static("grpc-timeout");
/// Envoy's body for a stream an HTTP/2 upstream refused (`REFUSED_STREAM`, a `503`).
pub const UPSTREAM_REFUSED: &str =
    "upstream connect error or disconnect/reset before headers. reset reason: remote refused stream reset";
/// Envoy's body for a stream reset for its response head (a `503`).
pub const UPSTREAM_REMOTE_RESET: &str =
    "upstream connect error or disconnect/reset before headers. reset reason: remote reset";
/// Envoy's body for an upstream response that broke HTTP/1.1 (a `502`).
pub const UPSTREAM_PROTOCOL_ERROR: &str =
    "upstream connect error or disconnect/reset before headers. reset reason: protocol error";
/// Envoy's body for a circuit-breaker overflow.
pub const UPSTREAM_OVERFLOW: &str =
    "upstream connect error or disconnect/reset before headers. reset reason: overflow";
/// Envoy's body when no host is healthy.
pub const NO_HEALTHY_UPSTREAM: &str = "no healthy upstream";
/// Envoy's body for a route timeout.
pub const UPSTREAM_TIMEOUT: &str = "upstream request timeout";

/// A local reply as Envoy sends it (`content-type: text/plain` when there is a body).
pub fn local_reply(status: StatusCode, body: &str) -> Response<ProxyBody> {
    let mut r = Response::new(ProxyBody::full(Bytes::copy_from_slice(body.as_bytes())));
    *r.status_mut() = status;
    r.extensions_mut().insert(LocalReply(None));
    if !body.is_empty() {
        r.headers_mut()
            .insert(header::CONTENT_TYPE, HeaderValue::from_static("text/plain"));
    }
    r.headers_mut()
        .insert(header::CONTENT_LENGTH, HeaderValue::from(body.len()));
    r
}

/// Marks a response the proxy made itself (a gRPC request gets it in gRPC's form), with
/// the `grpc-status` it then carries when that is not the HTTP status's.
#[derive(Clone, Copy)]
struct LocalReply(Option<u32>);

/// Gives a local reply, in its gRPC form, this `grpc-status` rather than the HTTP
/// status's.
pub(crate) fn set_grpc_status(resp: &mut Response<ProxyBody>, status: u32) {
    resp.extensions_mut().insert(LocalReply(Some(status)));
}

/// A local reply to a gRPC request in gRPC's form, as Envoy sends it: `200`,
/// `content-type: application/grpc`, the HTTP status mapped to a `grpc-status` (gRPC's
/// table), the body as a percent-encoded `grpc-message`, and no body.
fn grpc_local_reply(resp: &mut Response<ProxyBody>, grpc_status: Option<u32>) {
    let grpc_status = grpc_status.unwrap_or(match resp.status().as_u16() {
        400 => 13,
        401 => 16,
        403 => 7,
        404 => 12,
        429 | 502 | 503 | 504 => 14,
        _ => 2,
    });
    let message = resp.body().bytes().unwrap_or_default();
    *resp.status_mut() = StatusCode::OK;
    *resp.body_mut() = ProxyBody::empty();
    let headers = resp.headers_mut();
    headers.remove(header::CONTENT_LENGTH);
    headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/grpc"),
    );
    headers.insert("grpc-status", decimal_value(grpc_status.into()));
    if !message.is_empty() {
        // gRPC's percent-encoding: everything outside printable ASCII, and `%`.
        const GRPC_MESSAGE: &percent_encoding::AsciiSet = &percent_encoding::CONTROLS.add(b'%');
        let encoded = percent_encoding::percent_encode(&message, GRPC_MESSAGE).to_string();
        if let Ok(v) = HeaderValue::from_str(&encoded) {
            headers.insert("grpc-message", v);
        }
    }
}

/// A `grpc-timeout` value for `d`, in milliseconds as Envoy writes it (`300m`), in the
/// next larger unit (seconds, minutes, hours) while it takes more than gRPC's eight digits.
fn grpc_timeout_value(d: Duration) -> HeaderValue {
    let mut n = u64::try_from(d.as_millis()).unwrap_or(u64::MAX);
    let mut unit = 'm';
    for (div, next) in [(1000, 'S'), (60, 'M'), (60, 'H')] {
        if n <= 99_999_999 {
            break;
        }
        n /= div;
        unit = next;
    }
    HeaderValue::from_str(&format!("{n}{unit}")).unwrap_or(HeaderValue::from_static("0m"))
}

/// Whether a request is gRPC (`content-type: application/grpc`, or `+` a suffix).
fn is_grpc(headers: &http::HeaderMap) -> bool {
    // `application/grpc` or `application/grpc+proto`, not `application/grpc-web`.
    headers.get(header::CONTENT_TYPE).is_some_and(|v| {
        let v = v.as_bytes();
        v == b"application/grpc" || v.starts_with(b"application/grpc+")
    })
}

fn protocol_name(v: Version) -> &'static str {
    match v {
        Version::HTTP_10 => "HTTP/1.0",
        Version::HTTP_2 => "HTTP/2",
        _ => "HTTP/1.1",
    }
}

/// RFC 3986 dot-segment removal (Envoy's `normalize_path`).
fn normalize_dots(path: &str) -> String {
    let mut out: Vec<&str> = Vec::new();
    let trailing = path.ends_with("/.") || path.ends_with("/..") || path.ends_with('/');
    for seg in path.split('/').skip(1) {
        match seg {
            "." => {}
            ".." => {
                out.pop();
            }
            s => out.push(s),
        }
    }
    let mut s = String::with_capacity(path.len());
    for seg in &out {
        s.push('/');
        s.push_str(seg);
    }
    if s.is_empty() || (trailing && !s.ends_with('/')) {
        s.push('/');
    }
    s
}

fn merge_slashes(path: &str) -> String {
    let mut s = String::with_capacity(path.len());
    let mut prev = false;
    for c in path.chars() {
        if c == '/' {
            if prev {
                continue;
            }
            prev = true;
        } else {
            prev = false;
        }
        s.push(c);
    }
    s
}

/// RFC 3986 §2.3: the characters that never need percent-encoding.
fn is_unreserved(b: u8) -> bool {
    b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~')
}

/// The first step of Envoy's `normalize_path` (RFC 3986 §6.2.2): escapes of unreserved
/// characters decoded (so `%2e%2e` is a `..` segment, and `%41` is `A` for route
/// matching), other escapes kept as they are, `\` read as `/`. `None` for an
/// encoded NUL, which Envoy refuses.
fn decode_unreserved(path: &str) -> Option<String> {
    let hex = |b: u8| (b as char).to_digit(16);
    let b = path.as_bytes();
    let mut out = String::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        match b[i] {
            b'%' if i + 2 < b.len() => match (hex(b[i + 1]), hex(b[i + 2])) {
                (Some(h), Some(l)) => {
                    let v = (h * 16 + l) as u8;
                    if v == 0 {
                        return None;
                    }
                    if is_unreserved(v) {
                        out.push(v as char);
                    } else {
                        out.push_str(&path[i..i + 3]);
                    }
                    i += 3;
                    continue;
                }
                _ => out.push('%'),
            },
            b'\\' => out.push('/'),
            _ => {
                // Copy the whole UTF-8 sequence starting here.
                let end = (i + 1..=b.len())
                    .find(|&e| path.is_char_boundary(e))
                    .unwrap_or(b.len());
                out.push_str(&path[i..end]);
                i = end;
                continue;
            }
        }
        i += 1;
    }
    Some(out)
}

/// The path (not the query) with `%2F` and `%5C`, in either case, unescaped to `/` and
/// `\`; `None` when it has none.
fn unescape_slashes(path: &str) -> Option<String> {
    let end = path.find('?').unwrap_or(path.len());
    let (p, q) = path.split_at(end);
    let is_escape = |w: &[u8]| {
        w[0] == b'%'
            && (w[1] == b'2' && w[2].eq_ignore_ascii_case(&b'f')
                || w[1] == b'5' && w[2].eq_ignore_ascii_case(&b'c'))
    };
    if !p.as_bytes().windows(3).any(is_escape) {
        return None;
    }
    let mut out = String::with_capacity(path.len());
    let mut rest = p;
    while let Some(i) = rest.find('%') {
        out.push_str(&rest[..i]);
        let b = rest.as_bytes();
        if b.len() >= i + 3 && is_escape(&b[i..i + 3]) {
            out.push(if b[i + 1] == b'2' { '/' } else { '\\' });
            rest = &rest[i + 3..];
        } else {
            out.push('%');
            rest = &rest[i + 1..];
        }
    }
    out.push_str(rest);
    out.push_str(q);
    Some(out)
}

/// `normalize_path` / `merge_slashes` on a path with an optional query (what the
/// connection manager does before routing); `None` for a path Envoy refuses with `400`.
pub fn sanitize_path(path: &str, normalize: bool, merge: bool) -> Option<String> {
    let (p, q) = match path.split_once('?') {
        Some((p, q)) => (p, Some(q)),
        None => (path, None),
    };
    let mut p = p.to_string();
    if normalize && p.starts_with('/') {
        p = normalize_dots(&decode_unreserved(&p)?);
    }
    if merge {
        p = merge_slashes(&p);
    }
    Some(match q {
        Some(q) => format!("{p}?{q}"),
        None => p,
    })
}

/// The request's response flags and upstream for the access log.
#[derive(Default)]
struct Outcome {
    flags: &'static str,
    /// A fault the request is counted in (`active_faults`) until it completes.
    active_fault: Option<crate::filters::http::fault::ActiveFault>,
    /// The `x-request-id` the response echoes (`always_set_request_id_in_response`, or an
    /// internal request's `x-envoy-force-trace`), once the request's is settled.
    request_id: Option<HeaderValue>,
    upstream_host: Option<SocketAddr>,
    upstream_cluster: Option<String>,
    route_name: String,
}

/// A request's future, boxed.

/// A request's future ([`serve`]) on the heap, built in place: it is several KiB, and
/// built on the stack first it would be copied whole into its box on every request (which
/// the optimiser does or does not elide as the code around it changes; measured at 7.6 KB
/// of `memcpy` a request when it did not).
pub fn serve_boxed(
    conn: Rc<ConnInfo>,
    req: Request<ProxyBody>,
    upgrade: Option<DownstreamUpgrade>,
) -> ServeFuture {
    // The box is allocated before the future is built (arguments are evaluated in order),
    // so that it is built where it stays.
    pin_in(Box::new_uninit(), serve(conn, req, upgrade)) as ServeFuture
}

/// `value` in `slot`, pinned.
fn pin_in<T>(slot: Box<std::mem::MaybeUninit<T>>, value: T) -> Pin<Box<T>> {
    Box::into_pin(Box::write(slot, value))
}

/// A downstream request in `downstream_rq_active` and its connection's active count, until
/// its response body ends (the guard goes into the body's completion) or it is dropped
/// without a response (its stream reset, its timeout).
struct ActiveRequest(Rc<ConnInfo>);

impl ActiveRequest {
    fn new(conn: &Rc<ConnInfo>) -> Self {
        conn.active.set(conn.active.get() + 1);
        conn.config.stats.downstream_rq_active.inc(conn.worker);
        ActiveRequest(conn.clone())
    }
}

impl Drop for ActiveRequest {
    fn drop(&mut self) {
        let conn = &self.0;
        conn.active.set(conn.active.get().saturating_sub(1));
        conn.config.stats.downstream_rq_active.dec(conn.worker);
    }
}

/// Handles one request end to end. `upgrade` delivers the downstream connection (or HTTP/2
/// stream) once the response accepting an upgrade request is sent.
pub async fn serve(
    conn: Rc<ConnInfo>,
    req: Request<ProxyBody>,
    upgrade: Option<DownstreamUpgrade>,
) -> Result<Response<ProxyBody>, Infallible> {
    let cfg = conn.config.clone();
    let worker = conn.worker;
    let start = Instant::now();
    let start_wall = SystemTime::now();
    conn.requests.set(conn.requests.get() + 1);
    conn.last_activity.set(start);
    cfg.stats.downstream_rq_total.inc(worker);
    let active = ActiveRequest::new(&conn);
    if req.version() == Version::HTTP_2 {
        cfg.stats.downstream_rq_http2_total.inc(worker);
    } else {
        cfg.stats.downstream_rq_http1_total.inc(worker);
    }
    let log_state = (!cfg.access_logs.is_empty()).then(|| {
        (
            req.method().to_string(),
            req.uri()
                .path_and_query()
                .map_or_else(|| req.uri().path().to_string(), |p| p.to_string()),
            authority_of(&req).unwrap_or_default(),
            req.headers().clone(),
            req.version(),
        )
    });
    let mut outcome = Outcome {
        flags: "-",
        ..Default::default()
    };
    let request_id_for_response = if cfg.always_set_request_id_in_response {
        req.headers().get(&X_REQUEST_ID).cloned()
    } else {
        None
    };
    let h2_upgrade = matches!(upgrade, Some(DownstreamUpgrade::Http2(_)));
    let grpc = is_grpc(req.headers());
    let deadline = cfg.request_timeout.map(|t| start + t);
    let idle = Rc::new(StreamIdle::new(
        cfg.stream_idle_timeout,
        req.body().is_end_stream(),
        cfg.stats.downstream_rq_idle_timeout.clone(),
        worker,
    ));
    let mut req = req;
    if !req.body().is_end_stream() {
        req.body_mut().report_activity(idle.clone());
    }
    // The work future is built in the await's own expression: bound to a local first, it
    // would take room in this future twice (the local and the timeout's copy), about
    // 34 KiB instead of 8 for every request.
    let mut resp = match rt::timeout(
        deadline,
        UntilIdle::new(process(&conn, req, upgrade, &mut outcome, &idle), &idle),
    )
    .await
    {
        Some(Some(r)) => r,
        Some(None) => {
            outcome.flags = "SI";
            let status = if idle.request_complete() {
                StatusCode::GATEWAY_TIMEOUT
            } else {
                // An HTTP/1.1 connection then closes: its request body was not read to the end.
                StatusCode::REQUEST_TIMEOUT
            };
            local_reply(status, "stream timeout")
        }
        None => {
            cfg.stats.downstream_rq_timeout.inc(worker);
            outcome.flags = "-";
            local_reply(StatusCode::REQUEST_TIMEOUT, "request timeout")
        }
    };
    if grpc {
        if let Some(LocalReply(status)) = resp.extensions().get::<LocalReply>().copied() {
            grpc_local_reply(&mut resp, status);
        }
    }
    if h2_upgrade && resp.status().is_success() {
        // Any 2xx to an extended CONNECT opens the tunnel (RFC 8441), so an upstream that
        // answered the upgrade with an ordinary response cannot be passed on as one.
        outcome.flags = "UPE";
        resp = local_reply(StatusCode::BAD_GATEWAY, "upstream did not switch protocols");
    }
    // Counted and logged as the upstream answered (a `101`), as Envoy's connection manager
    // does before its HTTP/2 codec turns it into a `200`.
    let status = resp.status().as_u16();
    let class = (status / 100) as usize;
    if (1..=5).contains(&class) {
        cfg.stats.downstream_rq_xx[class - 1].inc(worker);
    }
    if h2_upgrade {
        upgrade::h1_to_h2_response(&mut resp);
    }
    finish_response(&cfg, &mut resp);
    if let Some(id) = outcome.request_id.take().or(request_id_for_response) {
        // The request's id, whatever the upstream said (as Envoy).
        resp.headers_mut().insert(X_REQUEST_ID.clone(), id);
    }
    // While the server fails its health checks every response ends its connection, as
    // Envoy's drain-close: `connection: close` on HTTP/1.1, GOAWAY on HTTP/2.
    if crate::worker::health_failed() {
        conn.drain_close();
    }
    if conn.closing.get() && resp.version() != Version::HTTP_2 {
        resp.headers_mut()
            .insert(header::CONNECTION, HeaderValue::from_static("close"));
    }
    // Completion: when the response body ends (or is dropped).
    let conn2 = conn.clone();
    let (parts, body) = resp.into_parts();
    let resp_headers = log_state.as_ref().map(|_| parts.headers.clone());
    let timers = log_state.as_ref().map(|_| idle.clone());
    let on_done = move |_ok: bool, bytes_sent: u64| {
        let cfg = &conn2.config;
        cfg.stats.downstream_rq_completed.inc(worker);
        cfg.stats
            .downstream_rq_time
            .record(worker, start.elapsed().as_millis() as u64);
        drop(active);
        conn2.last_activity.set(Instant::now());
        if let Some((method, path, authority, headers, version)) = &log_state {
            let entry = LogEntry {
                start: start_wall,
                method,
                path,
                authority,
                protocol: protocol_name(*version),
                request: headers,
                response: resp_headers.as_ref(),
                status,
                // A timeout that cut the response body off after its head.
                flags: timers
                    .as_ref()
                    .and_then(|t| t.expired())
                    .map_or(outcome.flags, |e| e.flag()),
                bytes_received: 0,
                bytes_sent,
                duration: start.elapsed(),
                upstream_host: outcome.upstream_host,
                upstream_cluster: outcome.upstream_cluster.as_deref(),
                remote: conn2.remote,
                route_name: &outcome.route_name,
            };
            for l in &cfg.access_logs {
                l.log(&entry);
            }
        }
    };
    let mut body = body;
    body.on_end(Box::new(on_done));
    if !body.is_end_stream() {
        body.enforce_idle_timeout(idle);
    }
    Ok(Response::from_parts(parts, body))
}

fn authority_of<B>(req: &Request<B>) -> Option<String> {
    if let Some(a) = req.uri().authority() {
        return Some(a.as_str().to_string());
    }
    req.headers()
        .get(header::HOST)
        .and_then(|v| v.to_str().ok())
        .map(str::to_string)
}

/// Server header, per `server_header_transformation`.
pub(crate) fn finish_response(cfg: &HcmConfig, resp: &mut Response<ProxyBody>) {
    use courier_proto::envoy::extensions::filters::network::http_connection_manager::v3::http_connection_manager::ServerHeaderTransformation as S;
    match cfg.server_header {
        S::Overwrite => {
            resp.headers_mut()
                .insert(header::SERVER, cfg.server_name.clone());
        }
        S::AppendIfAbsent => {
            resp.headers_mut()
                .entry(header::SERVER)
                .or_insert_with(|| cfg.server_name.clone());
        }
        S::PassThrough => {}
    }
    if let Some(via) = &cfg.via {
        crate::http::conn_manager::headers::append_value(resp.headers_mut(), &header::VIA, via);
    }
}

/// Header-size accounting as Envoy's `max_request_headers_kb` (names + values).
fn headers_size<B>(req: &Request<B>) -> usize {
    let uri = req.uri();
    let mut n = req.method().as_str().len()
        + uri.scheme_str().map_or(0, |s| s.len() + 3)
        + uri.authority().map_or(0, |a| a.as_str().len())
        + uri.path_and_query().map_or(1, |p| p.as_str().len());
    for (k, v) in req.headers() {
        n += k.as_str().len() + v.len();
    }
    n
}

async fn process(
    conn: &Rc<ConnInfo>,
    mut req: Request<ProxyBody>,
    mut downstream_upgrade: Option<DownstreamUpgrade>,
    outcome: &mut Outcome,
    idle: &StreamIdle,
) -> Response<ProxyBody> {
    let cfg = &conn.config;
    let worker = conn.worker;
    // The version and framing (HTTP/1.0 without `accept_http_10`, Content-Length with
    // Transfer-Encoding and the like) were checked by the codec: `downstream_h1` for
    // HTTP/1, hyper's for HTTP/2.
    if req.headers().len() > cfg.max_headers_count
        || headers_size(&req) > cfg.max_request_headers_kb as usize * 1024
    {
        cfg.stats.downstream_rq_too_large.inc(worker);
        conn.closing.set(true);
        return local_reply(StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE, "");
    }
    match cfg.underscores {
        UnderscoreAction::Allow => {}
        UnderscoreAction::Reject => {
            if req.headers().keys().any(|k| k.as_str().contains('_')) {
                conn.closing.set(true);
                return local_reply(StatusCode::BAD_REQUEST, "");
            }
        }
        UnderscoreAction::Drop => {
            let drop: Vec<HeaderName> = req
                .headers()
                .keys()
                .filter(|k| k.as_str().contains('_'))
                .cloned()
                .collect();
            for k in drop {
                req.headers_mut().remove(k);
            }
        }
    }
    // Host / authority, borrowed from cheap clones of the request's own (shared) bytes, as
    // the request itself moves on upstream.
    let uri_authority = req.uri().authority().cloned();
    let host_header = match &uri_authority {
        Some(_) => None,
        None => req.headers().get(header::HOST).cloned(),
    };
    let found = match (&uri_authority, &host_header) {
        (Some(a), _) => Some(a.as_str()),
        (None, Some(h)) => h.to_str().ok(),
        (None, None) => None,
    };
    let mut authority: Cow<'_, str> = match found {
        Some(a) => Cow::Borrowed(a),
        None if req.version() == Version::HTTP_10 => {
            Cow::Owned(cfg.default_host_for_http_10.clone().unwrap_or_default())
        }
        None => {
            conn.closing.set(true);
            // Envoy's reply has no body.
            return local_reply(StatusCode::BAD_REQUEST, "");
        }
    };
    // `strip_trailing_host_dot`, then the port, as Envoy's connection manager.
    if cfg.strip_trailing_host_dot {
        let host = crate::http::route::strip_port(&authority);
        if let Some(bare) = host.strip_suffix('.') {
            authority = Cow::Owned(format!("{bare}{}", &authority[host.len()..]));
        }
    }
    if let Some(any) = cfg.strip_port {
        let stripped = crate::http::route::strip_port(&authority);
        if stripped.len() != authority.len() {
            let port_matches =
                authority[stripped.len() + 1..].parse::<u16>().ok() == Some(conn.local.port());
            if any || port_matches {
                authority = Cow::Owned(stripped.to_string());
            }
        }
    }
    // Path.
    let method = req.method().clone();
    let path_and_query = req.uri().path_and_query().cloned();
    let mut path: Cow<'_, str> = path_and_query
        .as_ref()
        .map_or(Cow::Borrowed("/"), |p| Cow::Borrowed(p.as_str()));
    let asterisk = method == Method::OPTIONS && path == "*";
    if !path.starts_with('/') && !asterisk {
        conn.closing.set(true);
        return local_reply(StatusCode::BAD_REQUEST, "");
    }
    // Escaped slashes first, then normalisation, as Envoy's connection manager.
    let mut redirect_unescaped = false;
    if cfg.escaped_slashes != EscapedSlashes::Keep {
        if let Some(p) = unescape_slashes(&path) {
            match cfg.escaped_slashes {
                EscapedSlashes::Reject => {
                    conn.closing.set(true);
                    return local_reply(StatusCode::BAD_REQUEST, "");
                }
                EscapedSlashes::Redirect => redirect_unescaped = true,
                EscapedSlashes::Forward | EscapedSlashes::Keep => {}
            }
            path = Cow::Owned(p);
        }
    }
    if cfg.normalize_path || cfg.merge_slashes {
        match sanitize_path(&path, cfg.normalize_path, cfg.merge_slashes) {
            Some(p) => path = Cow::Owned(p),
            None => {
                conn.closing.set(true);
                return local_reply(StatusCode::BAD_REQUEST, "");
            }
        }
    }
    if redirect_unescaped {
        let mut r = local_reply(StatusCode::TEMPORARY_REDIRECT, "");
        if let Ok(v) = HeaderValue::from_str(&path) {
            r.headers_mut().insert(header::LOCATION, v);
        }
        return r;
    }
    // Forwarding headers. An internal request keeps its controls and request id; without
    // `internal_address_config` every request is external (Envoy 1.40's default).
    let headers = req.headers_mut();
    let internal = cfg.internal_addresses.is_internal(
        conn.remote.ip(),
        headers,
        cfg.use_remote_address,
        cfg.xff_num_trusted_hops,
    );
    if internal {
        // `forward_client_cert_details`' SANITIZE holds for internal requests too.
        headers.remove(&X_FORWARDED_CLIENT_CERT);
    } else {
        crate::http::conn_manager::headers::strip_external_control_headers(
            headers,
            cfg.use_remote_address,
        );
    }
    let remote_ip = conn.remote.ip();
    if cfg.use_remote_address {
        if !cfg.skip_xff_append {
            // As Envoy: a loopback peer (127.0.0.1 or ::1 exactly, a v4-mapped one
            // included) is this machine, named by its own address.
            let ip = if crate::server::local_info::is_loopback(remote_ip) {
                cfg.local_address.to_string()
            } else {
                remote_ip.to_string()
            };
            let v = match headers.get(&X_FORWARDED_FOR).and_then(|v| v.to_str().ok()) {
                Some(prev) if !prev.is_empty() => format!("{prev},{ip}"),
                _ => ip,
            };
            if let Ok(v) = HeaderValue::from_str(&v) {
                headers.insert(X_FORWARDED_FOR.clone(), v);
            }
        }
        if !internal {
            if let Ok(v) = HeaderValue::from_str(&remote_ip.to_string()) {
                headers.insert(X_ENVOY_EXTERNAL_ADDRESS.clone(), v);
            }
        }
        headers.insert(X_FORWARDED_PROTO.clone(), HeaderValue::from_static("http"));
    } else if !headers.contains_key(&X_FORWARDED_PROTO) {
        headers.insert(X_FORWARDED_PROTO.clone(), HeaderValue::from_static("http"));
    }
    if internal {
        headers.insert(X_ENVOY_INTERNAL.clone(), HeaderValue::from_static("true"));
    }
    if cfg.generate_request_id {
        let regenerate = cfg.use_remote_address && !internal && !cfg.preserve_external_request_id;
        if regenerate || !headers.contains_key(&X_REQUEST_ID) {
            headers.insert(
                X_REQUEST_ID.clone(),
                crate::http::conn_manager::headers::uuid4_value(),
            );
        }
    }
    if cfg.always_set_request_id_in_response
        || (internal && headers.contains_key(&X_ENVOY_FORCE_TRACE))
    {
        outcome.request_id = headers.get(&X_REQUEST_ID).cloned();
    }
    if let Some(via) = &cfg.via {
        crate::http::conn_manager::headers::append_value(headers, &header::VIA, via);
    }
    // Route.
    let table: Option<Arc<RouteTable>> = match &cfg.routes {
        RouteSource::Static(t) => Some(t.clone()),
        RouteSource::Rds(rds) => crate::http::route::rds::table(&rds.route_config_name),
    };
    let Some(table) = table else {
        cfg.stats.no_route.inc(worker);
        outcome.flags = "NR";
        return local_reply(StatusCode::NOT_FOUND, "");
    };
    if method == Method::CONNECT {
        // Only routes with a `connect_matcher` take CONNECT, and Courier has none: Envoy's
        // 404, and the connection (a would-be tunnel) closes.
        cfg.stats.no_route.inc(worker);
        outcome.flags = "NR";
        conn.closing.set(true);
        return local_reply(StatusCode::NOT_FOUND, "");
    }
    // `internal_only_headers` leave every external request (before routing, as Envoy).
    if internal {
        // The router obeys (and removes) its controls: see `forward`.
        req.extensions_mut().insert(Internal);
    } else {
        for name in &table.internal_only_headers {
            req.headers_mut().remove(name);
        }
    }
    // What header matchers see of `:method`, `:path`, `:authority` and `:scheme` (built
    // where used: held across the request's awaits it would take room in its future).
    let scheme = Pseudo::scheme_of(req.uri());
    let pseudo = || Pseudo::request(&method, &path, &authority, scheme);
    let vh = table.find_vhost(&authority);
    // `require_tls` comes before the routes, as in Envoy: even a request no route takes
    // is sent to `https`.
    if vh.is_some_and(|vh| vh.require_tls.redirects(req.headers())) {
        return tls_redirect(&authority, &path);
    }
    // A request no route takes still goes through the filters, as in Envoy (a health
    // check, a fault or a rate limit may answer it), with no per-route settings.
    let routed = vh.and_then(|vh| Some((vh, vh.find_route(&path, req.headers(), &pseudo())?)));
    if let Some((_, route)) = routed {
        if !cfg.access_logs.is_empty() {
            outcome.route_name = route.name.clone();
        }
    }
    let fcx_remote = conn.remote;
    let fcx_local = conn.local;
    let protocol = protocol_name(req.version());
    // Upgrades (websocket).
    let mut upgrade = crate::http::codec::handoff::is_upgrade(req.headers())
        .then(|| req.headers().get(header::UPGRADE))
        .flatten()
        .and_then(|v| v.to_str().ok())
        .map(str::to_ascii_lowercase);
    if upgrade.as_deref() == Some("h2c") {
        // Envoy does not upgrade to h2c: the request is served as plain HTTP/1.1, without
        // its upgrade headers.
        crate::http::conn_manager::headers::drop_h2c_upgrade(req.headers_mut());
        upgrade = None;
    }
    let upgrade_refused = upgrade.as_ref().is_some_and(|up| {
        let allowed = match routed.map(|(_, route)| &route.action) {
            Some(Action::Route(a)) => a
                .upgrades
                .iter()
                .find(|(t, _)| t == up)
                .map_or_else(|| cfg.upgrades.iter().any(|t| t == up), |(_, en)| *en),
            _ => false,
        };
        !allowed
    });
    // The filters before the router, in the chain's order. CORS acts on requests routed
    // to a cluster only (Envoy's sees no route entry for direct responses and
    // redirects): a preflight is answered at once, without the route's response headers
    // (Envoy's answer gets none), and its headers go on whatever answers a later filter
    // or the router gives.
    let mut cors = None;
    let mut rate_limit = None;
    let mut health_mark = None;
    // Boxed, as it is rare: held across the request's awaits, it is copied with them.
    let mut compress: Option<Box<crate::filters::http::compressor::CompressorRequest<'_>>> = None;
    let grpc = cfg.compressor.is_some() && is_grpc(req.headers());
    // Boxed: it is rare, and a response kept inline would be copied on every request.
    let mut filter_reply: Option<Box<Response<ProxyBody>>> = None;
    let levels = match routed {
        Some((vh, route)) => [&route.filters, &vh.filters, &table.filters],
        None => [&http_filters::NONE; 3],
    };
    let to_cluster = routed.is_some_and(|(_, route)| matches!(route.action, Action::Route(_)));
    for chained in &cfg.filters {
        if !http_filters::runs(levels, chained.filter.name(), chained.off_by_default) {
            continue;
        }
        match &chained.filter {
            HttpFilter::Cors(f) if to_cluster => {
                match f.on_request(levels, &method, req.headers(), worker) {
                    CorsRequest::Preflight(r) => {
                        let mut r = *r;
                        // Envoy's compressor sees the preflight before its codec gives it
                        // a length.
                        let length = r.headers_mut().remove(header::CONTENT_LENGTH);
                        compress_response(cfg, levels, compress.as_deref(), grpc, &mut r, worker);
                        if let Some(l) = length {
                            r.headers_mut().insert(header::CONTENT_LENGTH, l);
                        }
                        return r;
                    }
                    CorsRequest::Allowed(h) => cors = Some(h),
                    CorsRequest::Pass => {}
                }
            }
            HttpFilter::Cors(_) => {}
            HttpFilter::HealthCheck(f) => {
                let failed = crate::worker::health_failed();
                match f.on_request(req.headers(), &pseudo(), failed, worker) {
                    HealthCheckRequest::Answer(r) => {
                        filter_reply = Some(r);
                        break;
                    }
                    HealthCheckRequest::PassThrough => health_mark = Some((f, true, failed)),
                    HealthCheckRequest::Pass if failed => health_mark = Some((f, false, true)),
                    HealthCheckRequest::Pass => {}
                }
            }
            HttpFilter::LocalRateLimit(f) => {
                let route_policy = match most_specific(levels, &f.name) {
                    Some(FilterPolicy::RateLimit(p)) => Some(p),
                    _ => None,
                };
                let cx = FormatContext {
                    remote: Some(fcx_remote),
                    local: Some(fcx_local),
                    protocol,
                    upstream: None,
                    request: None,
                };
                match f.on_request(
                    route_policy,
                    &conn.rate_limit_buckets,
                    req.headers_mut(),
                    &cx,
                    worker,
                ) {
                    RateLimited::Refuse(r) => {
                        outcome.flags = "RL";
                        filter_reply = Some(r);
                        break;
                    }
                    RateLimited::Pass(r) => rate_limit = r,
                }
            }
            HttpFilter::Rbac(f) => {
                let route_rules = match most_specific(levels, &f.name) {
                    Some(FilterPolicy::Rbac(r)) => Some(r.as_ref()),
                    _ => None,
                };
                let view = RequestView {
                    headers: req.headers(),
                    pseudo: pseudo(),
                    local: conn.local,
                    peer: conn.remote.ip(),
                    xff: XffTrust {
                        use_remote_address: cfg.use_remote_address,
                        trusted_hops: cfg.xff_num_trusted_hops,
                        appended: cfg.use_remote_address && !cfg.skip_xff_append,
                    },
                };
                if let Some(r) = f.on_request(route_rules, &view, worker) {
                    filter_reply = Some(r);
                    break;
                }
            }
            HttpFilter::Compressor(f) => {
                compress = Some(f.on_request(levels, &mut req, worker));
            }
            HttpFilter::Fault(f) => {
                // Boxed: its delay would otherwise take room in every request's future.
                filter_reply = Box::pin(inject_fault(
                    f,
                    levels,
                    routed.map(|(_, route)| &route.action),
                    req.headers(),
                    &pseudo(),
                    outcome,
                    worker,
                ))
                .await;
                if filter_reply.is_some() {
                    break;
                }
            }
        }
    }
    // A filter's answer gets the route's response headers only on a route to a cluster
    // (Envoy's route entry; measured).
    let route_headers = routed.filter(|_| filter_reply.is_none() || to_cluster);
    let Some((vh, route)) = routed else {
        let mut resp = match filter_reply {
            Some(reply) => *reply,
            None => {
                cfg.stats.no_route.inc(worker);
                outcome.flags = "NR";
                local_reply(StatusCode::NOT_FOUND, "")
            }
        };
        mark_response(&mut resp, rate_limit, health_mark, cors);
        compress_response(cfg, levels, compress.as_deref(), grpc, &mut resp, worker);
        return resp;
    };
    let mut resp = match (filter_reply, &route.action) {
        (Some(reply), _) => *reply,
        // The refusal still gets the route's response headers, as Envoy's does.
        (None, _) if upgrade_refused => {
            cfg.stats.downstream_rq_ws_on_non_ws_route.inc(worker);
            // As Envoy, an HTTP/1.1 connection whose upgrade was refused is closed.
            if req.version() != Version::HTTP_2 {
                conn.closing.set(true);
            }
            local_reply(StatusCode::FORBIDDEN, "")
        }
        (None, Action::Direct { status, body }) => {
            cfg.stats.rq_direct_response.inc(worker);
            let mut r = match body {
                Some(b) => {
                    let mut r = Response::new(ProxyBody::full(b.clone()));
                    r.headers_mut()
                        .insert(header::CONTENT_TYPE, HeaderValue::from_static("text/plain"));
                    r.headers_mut()
                        .insert(header::CONTENT_LENGTH, HeaderValue::from(b.len()));
                    r
                }
                None => {
                    let mut r = Response::new(ProxyBody::empty());
                    r.headers_mut()
                        .insert(header::CONTENT_LENGTH, HeaderValue::from(0));
                    r
                }
            };
            *r.status_mut() = *status;
            r.extensions_mut().insert(LocalReply(None));
            // Envoy sets Location on 201 and redirect direct responses.
            let code = status.as_u16();
            if code == 201 || matches!(code, 301 | 302 | 303 | 307 | 308) {
                if let Ok(v) = HeaderValue::from_str(&format!("http://{authority}{path}")) {
                    r.headers_mut().insert(header::LOCATION, v);
                }
            }
            r
        }
        (None, Action::Redirect(rd)) => {
            cfg.stats.rq_redirect.inc(worker);
            // As Envoy: without a scheme of its own, the redirect keeps the request's, as
            // `x-forwarded-proto` (set above) tells it.
            let scheme = req
                .headers()
                .get(&X_FORWARDED_PROTO)
                .and_then(|v| v.to_str().ok())
                .filter(|s| is_scheme(s))
                .unwrap_or("http");
            redirect(rd, route, &authority, &path, scheme)
        }
        (None, Action::Route(action)) => {
            // The headers go upstream; a copy is kept only for what reads them later.
            let req_headers_for_cx =
                (upgrade.is_some() || table.reads_request_headers).then(|| req.headers().clone());
            let fcx = FormatContext {
                remote: Some(fcx_remote),
                local: Some(fcx_local),
                protocol,
                upstream: None,
                request: req_headers_for_cx.as_ref(),
            };
            let on_upgrade = upgrade.as_ref().and(downstream_upgrade.take());
            if let Some(t) = action.idle_timeout {
                idle.set_route_timeout(t);
            }
            forward(
                conn, req, &authority, &path, &table, vh, route, action, &fcx, on_upgrade, outcome,
                idle,
            )
            .await
        }
    };
    // Response header mutations: route, virtual host, route configuration.
    let fcx = FormatContext {
        remote: Some(fcx_remote),
        local: Some(fcx_local),
        protocol,
        upstream: outcome.upstream_host,
        request: None,
    };
    if let Some((vh, route)) = route_headers {
        route.response_headers.apply(resp.headers_mut(), &fcx);
        vh.response_headers.apply(resp.headers_mut(), &fcx);
        table.response_headers.apply(resp.headers_mut(), &fcx);
    }
    mark_response(&mut resp, rate_limit, health_mark, cors);
    compress_response(cfg, levels, compress.as_deref(), grpc, &mut resp, worker);
    resp
}

/// The compressor's response pass, when the chain has a compressor that runs for the
/// request: `seen` is what it made of the request, if the request reached it (Envoy runs
/// it on the answers of filters before it too, without the request's `accept-encoding`).
fn compress_response(
    cfg: &HcmConfig,
    levels: [&http_filters::FilterConfigs; 3],
    seen: Option<&crate::filters::http::compressor::CompressorRequest<'_>>,
    grpc: bool,
    resp: &mut Response<ProxyBody>,
    worker: usize,
) {
    let Some(chained) = cfg.compressor.and_then(|i| cfg.filters.get(i)) else {
        return;
    };
    let HttpFilter::Compressor(f) = &chained.filter else {
        return;
    };
    // A local reply to a gRPC request goes out in gRPC's form, headers only, which is
    // what Envoy's compressor sees of it: it is given that form first.
    if grpc {
        if let Some(LocalReply(status)) = resp.extensions_mut().remove::<LocalReply>() {
            grpc_local_reply(resp, status);
        }
    }
    match seen {
        Some(r) => r.on_response(resp, worker),
        None if http_filters::runs(levels, &f.name, chained.off_by_default) => {
            f.unseen(levels).on_response(resp, worker)
        }
        None => {}
    }
}

/// What the filters add to whatever answers a request: rate limit headers, the health
/// check filter's marks, CORS headers.
fn mark_response(
    resp: &mut Response<ProxyBody>,
    rate_limit: Option<crate::filters::http::local_ratelimit::Remaining>,
    health_mark: Option<(
        &crate::filters::http::health_check::HealthCheckFilter,
        bool,
        bool,
    )>,
    cors: Option<crate::filters::http::cors::AllowedHeaders>,
) {
    if let Some(r) = rate_limit {
        r.apply(resp.headers_mut());
    }
    if let Some((f, health_check, failed)) = health_mark {
        f.mark(resp.headers_mut(), health_check, failed);
    }
    if let Some(cors) = cors {
        cors.apply(resp.headers_mut());
    }
}

/// Runs the fault filter on a request: delays it, and answers it when the fault aborts it.
async fn inject_fault(
    filter: &FaultFilter,
    levels: [&FilterConfigs; 3],
    action: Option<&Action>,
    headers: &http::HeaderMap,
    pseudo: &Pseudo<'_>,
    outcome: &mut Outcome,
    worker: usize,
) -> Option<Box<Response<ProxyBody>>> {
    // The most specific level naming the filter decides, whatever the route does (only
    // `upstream_cluster` needs a route to a cluster).
    let route_policy = match most_specific(levels, &filter.name) {
        Some(FilterPolicy::Fault(p)) => Some(p),
        _ => None,
    };
    let cluster = match action {
        Some(Action::Route(a)) => match &a.cluster {
            ClusterSpec::Single(c) => Some(c.as_str()),
            ClusterSpec::Header(h) => headers.get(h).and_then(|v| v.to_str().ok()),
            ClusterSpec::Weighted { .. } => None,
        },
        _ => None,
    };
    let mut injection = filter.on_request(route_policy, headers, pseudo, cluster, worker)?;
    if let Some(d) = injection.delay {
        outcome.flags = "DI";
        rt::Sleep::until(Instant::now() + d).await;
    }
    let abort = injection.abort(headers, filter, worker);
    outcome.active_fault = Some(injection.active);
    let (with, body) = abort?;
    outcome.flags = if outcome.flags == "DI" { "DI,FI" } else { "FI" };
    let mut r = match with {
        AbortWith::Http(status) => local_reply(status, ""),
        AbortWith::Grpc(_) => local_reply(StatusCode::OK, ""),
    };
    if let AbortWith::Grpc(g) = with {
        set_grpc_status(&mut r, g);
    }
    r.headers_mut()
        .insert(header::CONTENT_TYPE, HeaderValue::from_static("text/plain"));
    r.headers_mut()
        .insert(header::CONTENT_LENGTH, HeaderValue::from(body.len()));
    *r.body_mut() = ProxyBody::full(body);
    Some(Box::new(r))
}

fn rewrite_prefix(route: &Route, path: &str, new_prefix: &str) -> String {
    if route.is_regex() {
        // Envoy replaces the whole path (query kept) for regex matches.
        let q = path.find('?').map_or("", |i| &path[i..]);
        return format!("{new_prefix}{q}");
    }
    match route.matched_prefix_len() {
        Some(n) if n <= path.len() && path.is_char_boundary(n) => {
            format!("{new_prefix}{}", &path[n..])
        }
        _ => path.to_string(),
    }
}

fn rewrite_regex(re: &regex::Regex, sub: &str, path: &str) -> String {
    let (p, q) = match path.find('?') {
        Some(i) => (&path[..i], &path[i..]),
        None => (path, ""),
    };
    format!("{}{q}", re.replace_all(p, sub))
}

/// Whether `s` is a URI scheme (RFC 3986 §3.1).
fn is_scheme(s: &str) -> bool {
    s.starts_with(|c: char| c.is_ascii_alphabetic())
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'+' | b'-' | b'.'))
}

fn redirect(
    rd: &Redirect,
    route: &Route,
    authority: &str,
    path: &str,
    request_scheme: &str,
) -> Response<ProxyBody> {
    let scheme = rd.scheme.as_deref().unwrap_or(request_scheme);
    let (orig_host, orig_port) = {
        let h = crate::http::route::strip_port(authority);
        let port = authority
            .get(h.len() + 1..)
            .and_then(|p| p.parse::<u16>().ok());
        (h.to_string(), port)
    };
    // Envoy: `host_redirect` replaces host and port; otherwise the request's host keeps its
    // port unless `port_redirect` replaces it or the scheme changes away from a default port.
    let host = match (&rd.host, rd.port) {
        (Some(h), Some(p)) => format!("{}:{p}", crate::http::route::strip_port(h)),
        (Some(h), None) => h.clone(),
        (None, Some(p)) => format!("{orig_host}:{p}"),
        (None, None) => match orig_port {
            Some(80) if rd.scheme.is_some() => orig_host,
            Some(p) => format!("{orig_host}:{p}"),
            None => orig_host,
        },
    };
    let host = match rd.port {
        Some(p) if (scheme == "http" && p == 80) || (scheme == "https" && p == 443) => {
            crate::http::route::strip_port(&host).to_string()
        }
        _ => host,
    };
    let mut new_path = if let Some(p) = &rd.path {
        p.clone()
    } else if let Some(p) = &rd.prefix_rewrite {
        rewrite_prefix(route, path, p)
    } else if let Some((re, sub)) = &rd.regex_rewrite {
        rewrite_regex(re, sub, path)
    } else {
        path.to_string()
    };
    if rd.strip_query {
        if let Some(i) = new_path.find('?') {
            new_path.truncate(i);
        }
    } else if rd.path.is_some() && !new_path.contains('?') {
        if let Some(i) = path.find('?') {
            new_path.push_str(&path[i..]);
        }
    }
    let location = format!("{scheme}://{host}{new_path}");
    let mut r = Response::new(ProxyBody::empty());
    *r.status_mut() = rd.status;
    if let Ok(v) = HeaderValue::from_str(&location) {
        r.headers_mut().insert(header::LOCATION, v);
    }
    r.headers_mut()
        .insert(header::CONTENT_LENGTH, HeaderValue::from(0));
    r
}

/// Envoy's answer to a plaintext request for a virtual host with `require_tls`: `301` to the
/// same host and path (query included) over `https`.
fn tls_redirect(authority: &str, path: &str) -> Response<ProxyBody> {
    let mut r = Response::new(ProxyBody::empty());
    *r.status_mut() = StatusCode::MOVED_PERMANENTLY;
    if let Ok(v) = HeaderValue::from_str(&format!("https://{authority}{path}")) {
        r.headers_mut().insert(header::LOCATION, v);
    }
    r.headers_mut()
        .insert(header::CONTENT_LENGTH, HeaderValue::from(0));
    r
}

/// Why one attempt failed.
#[derive(Debug)]
pub(super) enum AttemptError {
    Overflow,
    ConnectFailure,
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

/// Marks an internal request ([`crate::http::conn_manager::internal_address`]) for [`forward`], which obeys its
/// controls ([`RequestControls`]).
#[derive(Clone, Copy)]
struct Internal;

/// What an upstream timeout answers.
#[derive(Clone, Copy)]
enum TimeoutReply {
    /// Envoy's `504 upstream request timeout`.
    GatewayTimeout,
    /// `204` with no body (`x-envoy-upstream-rq-timeout-alt-response`).
    NoContent,
}

impl TimeoutReply {
    fn response(self) -> Response<ProxyBody> {
        match self {
            TimeoutReply::GatewayTimeout => {
                local_reply(StatusCode::GATEWAY_TIMEOUT, UPSTREAM_TIMEOUT)
            }
            TimeoutReply::NoContent => {
                let mut r = local_reply(StatusCode::NO_CONTENT, "");
                r.headers_mut().remove(header::CONTENT_LENGTH);
                r
            }
        }
    }
}

#[allow(clippy::too_many_arguments)]
async fn forward(
    conn: &Rc<ConnInfo>,
    req: Request<ProxyBody>,
    authority: &str,
    path: &str,
    table: &RouteTable,
    vh: &VirtualHost,
    route: &Route,
    action: &RouteAction,
    fcx: &FormatContext<'_>,
    mut on_upgrade: Option<DownstreamUpgrade>,
    outcome: &mut Outcome,
    idle: &StreamIdle,
) -> Response<ProxyBody> {
    let cfg = &conn.config;
    let worker = conn.worker;
    let start = Instant::now();
    // Cluster.
    let (cluster_name, weighted) = match &action.cluster {
        ClusterSpec::Single(c) => (Cow::Borrowed(c.as_str()), None),
        ClusterSpec::Header(h) => match req.headers().get(h).and_then(|v| v.to_str().ok()) {
            Some(c) if !c.is_empty() => (Cow::Owned(c.to_string()), None),
            _ => {
                cfg.stats.no_cluster.inc(worker);
                outcome.flags = "NC";
                return local_reply(action.cluster_not_found, "");
            }
        },
        ClusterSpec::Weighted { clusters, total } => {
            let mut r = fastrand::u64(0..*total);
            let mut pick = &clusters[clusters.len() - 1];
            for c in clusters {
                if r < c.weight as u64 {
                    pick = c;
                    break;
                }
                r -= c.weight as u64;
            }
            (Cow::Borrowed(pick.name.as_str()), Some(pick))
        }
    };
    let cluster = ThreadLocalClusterManager::with(|tlcm| tlcm.get(&cluster_name));
    let Some(cluster) = cluster else {
        cfg.stats.no_cluster.inc(worker);
        outcome.flags = "NC";
        return local_reply(action.cluster_not_found, "");
    };
    if !cfg.access_logs.is_empty() {
        outcome.upstream_cluster = Some(cluster.name.clone());
    }
    let pool = pool::cluster_pool(&cluster, &cfg.store, worker);
    // max_requests.
    if pool.breakers.requests.get() >= cluster.thresholds.max_requests {
        pool.stats.rq_pending_overflow.inc(worker);
        outcome.flags = "UO";
        let mut r = local_reply(StatusCode::SERVICE_UNAVAILABLE, UPSTREAM_OVERFLOW);
        r.headers_mut()
            .insert(X_ENVOY_OVERLOADED.clone(), HeaderValue::from_static("true"));
        return r;
    }
    // Build the upstream request head.
    let is_upgrade = on_upgrade.is_some();
    let (mut parts, body) = req.into_parts();
    strip_hop_by_hop(&mut parts.headers);
    // `100-continue` was answered here (or by the codec); other expectations go on, as
    // Envoy forwards them.
    if parts
        .headers
        .get(header::EXPECT)
        .is_some_and(|v| v.as_bytes().eq_ignore_ascii_case(b"100-continue"))
    {
        parts.headers.remove(header::EXPECT);
    }
    // An internal request's `x-envoy-*` controls, taken off it (an external one lost them
    // to the connection manager).
    // Only what the attempts need of them is kept: the controls themselves would take room
    // in every request's future.
    let internal = parts.extensions.get::<Internal>().is_some();
    let (retry, timeout_controls) = match parts.extensions.remove::<Internal>() {
        Some(Internal) => {
            if let Err(body) = cfg.controls.check(&parts.headers) {
                conn.closing.set(true);
                return local_reply(StatusCode::BAD_REQUEST, &body);
            }
            let c = RequestControls::take(&mut parts.headers, &cfg.controls);
            (
                c.retry_policy(action.retry_policy.as_ref()),
                Some((c.timeout, c.per_try_timeout, c.alt_response)),
            )
        }
        None => (action.retry_policy.clone(), None),
    };
    // As Envoy, `retriable_request_headers` and virtual clusters look at the request
    // before the route's header mutations.
    let (retry, vcluster) = {
        let scheme = Pseudo::scheme_of(&parts.uri);
        let pseudo = Pseudo::request(&parts.method, path, authority, scheme);
        (
            retry.filter(|r| r.applies_to(&parts.headers, &pseudo)),
            vh.virtual_cluster(&parts.headers, &pseudo),
        )
    };
    // The load balancer's hash (a route's `hash_policy`), also from the request as it came;
    // a cookie it makes goes on the response (boxed: rare).
    let (lb_hash, set_cookie) = match &action.hash_policy {
        Some(policies) => {
            let h = policies.hash(&parts.headers, path, conn.remote, conn.local);
            (h.hash, h.set_cookie.map(Box::new))
        }
        None => (None, None),
    };
    let sinks = StatSinks {
        cluster: &pool.stats.rq,
        route: route.stats.as_deref(),
        vcluster,
        internal,
    };
    // Kept to be reused upstream when the authority is unchanged (no copy). The field
    // stays where it is: removing it would move the map's last field into its place, and
    // Envoy sends `host` where the client did (first, as a rule).
    let downstream_host = parts.headers.get(header::HOST).cloned();
    let new_path: Cow<'_, str> = if let Some(p) = &action.prefix_rewrite {
        Cow::Owned(rewrite_prefix(route, path, p))
    } else if let Some((re, sub)) = &action.regex_rewrite {
        Cow::Owned(rewrite_regex(re, sub, path))
    } else {
        Cow::Borrowed(path)
    };
    if new_path != path {
        if let Ok(v) = HeaderValue::from_str(path) {
            parts.headers.insert(X_ENVOY_ORIGINAL_PATH.clone(), v);
        }
    }
    let mut upstream_authority: Cow<'_, str> = match &action.host_rewrite {
        HostRewrite::Literal(h) => Cow::Borrowed(h),
        _ => Cow::Borrowed(authority),
    };
    if is_upgrade {
        if let Some(u) = fcx.request.and_then(|h| h.get(header::UPGRADE)) {
            parts.headers.insert(header::UPGRADE, u.clone());
            parts
                .headers
                .insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
        }
    }
    if let Some(w) = weighted {
        w.request_headers.apply(&mut parts.headers, fcx);
    }
    route.request_headers.apply(&mut parts.headers, fcx);
    vh.request_headers.apply(&mut parts.headers, fcx);
    table.request_headers.apply(&mut parts.headers, fcx);
    let grpc = is_grpc(&parts.headers);
    let mut timeouts = action.timeouts(
        grpc,
        parts
            .headers
            .get(GRPC_TIMEOUT)
            .and_then(|v| crate::http::route::parse_grpc_timeout(v.as_bytes())),
        cfg.max_stream_duration,
    );
    let mut per_try = retry.as_ref().and_then(|r| r.per_try_timeout);
    let mut alt_response = false;
    if let Some((timeout, per_try_timeout, alt)) = timeout_controls {
        timeouts.route = timeout.unwrap_or(timeouts.route);
        per_try = per_try_timeout.unwrap_or(per_try);
        alt_response = alt;
    }
    // As Envoy, a per-try timeout no shorter than the route's is no per-try timeout.
    let per_try = per_try.filter(|p| timeouts.route.is_none_or(|t| *p < t));
    let timeout_reply = match alt_response {
        true => TimeoutReply::NoContent,
        false => TimeoutReply::GatewayTimeout,
    };
    let global_deadline = timeouts.route.map(|t| start + t);
    // `max_stream_duration`, an upgrade's tunnel included (Envoy resets it).
    let duration_deadline = timeouts.duration.map(|d| start + d);
    // `max_grpc_timeout` (without `max_stream_duration`): each attempt tells the server
    // its own deadline (below).
    let grpc_timeout_from_route = grpc
        && !is_upgrade
        && action.max_grpc_timeout.is_some()
        && action.stream_duration.is_none();
    if let Some(t) = timeouts
        .grpc_timeout
        .filter(|_| !is_upgrade && !grpc_timeout_from_route)
    {
        // As Envoy: the gRPC server learns the deadline the proxy holds it to.
        parts.headers.insert(GRPC_TIMEOUT, grpc_timeout_value(t));
    }
    // The earlier of the route timeout and the stream's duration bounds every attempt.
    let overall_deadline = match (global_deadline, duration_deadline) {
        (Some(a), Some(b)) => Some(a.min(b)),
        (a, b) => a.or(b),
    };
    // Request mirrors, sent with the first attempt (not for an upgrade), fed as the client's
    // body passes.
    let mut stream_body = Some(body);
    let mut mirrors = if action.shadows.is_empty() || is_upgrade {
        Vec::new()
    } else {
        // A mirror may fall this far behind: the listener's buffer limit, or the route's
        // when that is larger (Envoy mirrors bodies past the route's).
        let limit = route
            .buffer_limit
            .map_or(conn.buffer_limit, |l| l.max(conn.buffer_limit));
        let (mirrors, feeds) = shadow::plan(
            &action.shadows,
            &parts.headers,
            stream_body.as_ref().is_some_and(|b| !b.is_end_stream()),
            limit,
            &pool.stats.retry_or_shadow_abandoned,
            worker,
        );
        if !feeds.is_empty() {
            stream_body = stream_body.take().map(|b| shadow::tee(b, feeds));
        }
        mirrors
    };
    // Body, when retries are possible: taken whole if it is all in, else forwarded as it
    // arrives with a copy kept for a retry (Envoy's buffering, which holds nothing back).
    let mut buffered: Option<Bytes> = None;
    let mut retry_buffer: Option<Rc<RetryBuffer>> = None;
    let retries_allowed = retry.as_ref().is_some_and(|r| r.num_retries > 0);
    if retries_allowed && !is_upgrade {
        if let Some(b) = stream_body.take() {
            if b.is_end_stream() {
                buffered = Some(Bytes::new());
            } else {
                let limit = route.buffer_limit.unwrap_or(conn.buffer_limit);
                let abandoned = pool.stats.retry_or_shadow_abandoned.clone();
                let rb = RetryBuffer::new(b, limit, abandoned, worker);
                match rb.prefill() {
                    Some(bytes) => buffered = Some(bytes),
                    None => retry_buffer = Some(rb),
                }
            }
        }
    }
    let replayable = |buffered: &Option<Bytes>, rb: &Option<Rc<RetryBuffer>>| {
        buffered.is_some() || rb.as_ref().is_some_and(|b| b.replayable())
    };
    let _request = pool.request_slot();
    let mut attempt: u32 = 0;
    // The hosts tried so far, for a `previous_hosts` retry predicate.
    let mut tried: Vec<std::net::SocketAddr> = Vec::new();
    let mut last_error: Option<AttemptError> = None;
    let mut last_response: Option<Response<ProxyBody>> = None;
    let upstream_start = Instant::now();
    loop {
        attempt += 1;
        if overall_deadline.is_some_and(|d| Instant::now() >= d) {
            // Not made: `attempt` counts the attempts sent.
            attempt -= 1;
            break;
        }
        let avoiding = retry
            .as_ref()
            .filter(|r| r.avoid_previous_hosts && attempt > 1);
        let host = match avoiding {
            Some(r) => pool::choose_host_avoiding(&cluster, lb_hash, &tried, r.host_reselections),
            None => pool::choose_host(&cluster, lb_hash),
        };
        let Some(host) = host else {
            cluster.stats.upstream_cx_none_healthy.inc(worker);
            outcome.flags = "UH";
            return local_reply(StatusCode::SERVICE_UNAVAILABLE, NO_HEALTHY_UPSTREAM);
        };
        if cluster.hosts.panic {
            cluster.stats.lb_healthy_panic.inc(worker);
        }
        outcome.upstream_host = Some(host.address);
        if retry.as_ref().is_some_and(|r| r.avoid_previous_hosts) {
            tried.push(host.address);
        }
        // As Envoy: the endpoint's hostname (a DNS cluster's name, an endpoint's
        // `hostname`); an endpoint without one leaves the authority as it is.
        if let (HostRewrite::Auto, Some(name)) = (&action.host_rewrite, &host.hostname) {
            upstream_authority = Cow::Owned(name.to_string());
        }
        let body = if let Some(b) = &buffered {
            ProxyBody::full(b.clone())
        } else if let Some(rb) = &retry_buffer {
            ProxyBody::filtered(Replay::new(rb.clone()))
        } else {
            match stream_body.take() {
                Some(b) if !b.is_end_stream() => b,
                // Nothing to stream (a GET): sent as a complete, empty body.
                _ => ProxyBody::empty(),
            }
        };
        // Upgrades are built in the HTTP/1.1 form whatever the cluster's protocol; for an
        // HTTP/2 cluster, `send_upgrade` makes an extended CONNECT of it.
        let h2_upstream = cluster.http2 && !is_upgrade;
        let mut head = http::request::Builder::new()
            .method(parts.method.clone())
            .version(if h2_upstream {
                Version::HTTP_2
            } else {
                Version::HTTP_11
            });
        // Unchanged (the common case), the request's own path is reused without parsing.
        let path_and_query = match parts.uri.path_and_query() {
            Some(pq) if pq.as_str() == new_path => pq.clone(),
            _ => match http::uri::PathAndQuery::try_from(new_path.as_ref()) {
                Ok(pq) => pq,
                Err(_) => return local_reply(StatusCode::BAD_REQUEST, ""),
            },
        };
        let uri = if h2_upstream {
            Uri::builder()
                .scheme("http")
                .authority(upstream_authority.as_ref())
                .path_and_query(path_and_query)
                .build()
        } else {
            Uri::builder().path_and_query(path_and_query).build()
        };
        let Ok(uri) = uri else {
            return local_reply(StatusCode::BAD_REQUEST, "");
        };
        head = head.uri(uri);
        let Ok(mut up_req) = head.body(body) else {
            return local_reply(StatusCode::BAD_REQUEST, "");
        };
        // The last possible attempt takes the headers instead of copying them.
        let last_attempt = !(retry.as_ref().is_some_and(|r| attempt <= r.num_retries)
            && replayable(&buffered, &retry_buffer));
        *up_req.headers_mut() = if last_attempt {
            std::mem::take(&mut parts.headers)
        } else {
            parts.headers.clone()
        };
        if upstream_authority != authority {
            // A rewritten host: the original goes along, as Envoy sends it.
            if let Ok(v) = HeaderValue::from_str(authority) {
                up_req
                    .headers_mut()
                    .insert(X_ENVOY_ORIGINAL_HOST.clone(), v);
            }
            if action.append_x_forwarded_host {
                append_forwarded_host(up_req.headers_mut(), authority);
            }
        }
        if h2_upstream {
            // `:authority` carries it.
            up_req.headers_mut().remove(header::HOST);
        } else {
            let value = match &downstream_host {
                Some(v) if v.as_bytes() == upstream_authority.as_bytes() => Some(v.clone()),
                _ => HeaderValue::from_str(&upstream_authority).ok(),
            };
            if let Some(v) = value {
                up_req.headers_mut().insert(header::HOST, v);
            }
        }
        if !cfg.suppress_envoy_headers || grpc_timeout_from_route {
            // The time left of the route timeout, capped by the per-try timeout: the whole
            // timeout on the first attempt, less what earlier attempts used on a retry (as
            // Envoy; measuring the first attempt's few microseconds made it 299 under load).
            let elapsed = if attempt == 1 {
                0
            } else {
                start.elapsed().as_millis() as u64
            };
            let left = timeouts
                .route
                .map(|t| (t.as_millis() as u64).saturating_sub(elapsed));
            let per_try_ms = per_try.map(|p| p.as_millis() as u64);
            let expected = match (left, per_try_ms) {
                (Some(t), Some(p)) => Some(t.min(p)),
                (t, p) => t.or(p),
            };
            if let Some(ms) = expected {
                if !cfg.suppress_envoy_headers {
                    up_req
                        .headers_mut()
                        .insert(X_ENVOY_EXPECTED_RQ_TIMEOUT_MS.clone(), decimal_value(ms));
                }
                if grpc_timeout_from_route {
                    // As Envoy: the server learns the timeout this attempt is held to, an
                    // internal request's timeout controls and the per-try one included.
                    up_req
                        .headers_mut()
                        .insert(GRPC_TIMEOUT, grpc_timeout_value(Duration::from_millis(ms)));
                }
            }
        }
        if attempt > 1 && vh.timeout_retry_header {
            let timeout = matches!(last_error, Some(AttemptError::PerTryTimeout));
            up_req.headers_mut().insert(
                X_ENVOY_IS_TIMEOUT_RETRY.clone(),
                HeaderValue::from_static(if timeout { "true" } else { "false" }),
            );
        }
        if vh.attempt_count_upstream {
            up_req
                .headers_mut()
                .insert(X_ENVOY_ATTEMPT_COUNT.clone(), decimal_value(attempt.into()));
        }
        // The mirrors get the first attempt's head.
        for mirror in mirrors.drain(..) {
            mirror.send(
                &up_req,
                &upstream_authority,
                &cfg.store,
                worker,
                overall_deadline,
            );
        }
        host.stats.rq_total.inc(worker);
        let active = (
            pool.stats.rq_active.raise(worker),
            host.stats.rq_active.raise(worker),
        );
        let try_deadline = match (per_try.map(|p| Instant::now() + p), overall_deadline) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        };
        let result = match on_upgrade.take() {
            Some(downstream) => {
                // Boxed: rare, and the request future would otherwise carry its size.
                let upgraded = Box::pin(send_upgrade(
                    &cluster,
                    &host,
                    worker,
                    up_req,
                    downstream,
                    conn,
                    TunnelLimits {
                        idle_timeout: action.idle_timeout,
                        ends_at: duration_deadline,
                        duration_reached: pool.stats.rq_max_duration_reached.clone(),
                    },
                    &sinks,
                ));
                rt::timeout(try_deadline, upgraded).await
            }
            None => {
                // Built in place: a future held in a local would take room of its own in
                // the request future, next to the copy the timeout holds.
                rt::timeout(
                    try_deadline,
                    send_once(&pool, &cluster, &host, worker, &sinks, up_req),
                )
                .await
            }
        };
        drop(active);
        let err = match result {
            Some(Ok(resp)) => {
                let status = resp.status().as_u16();
                let retriable = retry
                    .as_ref()
                    .is_some_and(|r| r.retry_response(status, resp.headers()));
                let left = retry.as_ref().is_some_and(|r| attempt <= r.num_retries);
                let more = left && replayable(&buffered, &retry_buffer);
                let slot = if retriable && more {
                    RetrySlot::take(&pool, &cluster, worker, sinks)
                } else {
                    None
                };
                if let Some(slot) = slot {
                    sinks.cluster.charge_retried(worker, status);
                    // Kept in case no retry can follow, read off its connection first: an
                    // open body would hold the attempt's connection (an HTTP/2 stream
                    // slot) while the retry looks for one.
                    last_response = Some(settle(resp, overall_deadline).await);
                    last_error = None;
                    if !backoff(retry.as_deref(), attempt, overall_deadline).await {
                        break;
                    }
                    drop(slot);
                    sinks.retry(worker);
                    continue;
                }
                if retriable && !left {
                    sinks.retry_limit_exceeded(worker);
                } else if attempt > 1 && !retriable {
                    sinks.retry_success(worker);
                }
                let elapsed = upstream_start.elapsed();
                sinks.charge(worker, status, Some(elapsed.as_millis() as u64));
                let mut resp = resp;
                if !cfg.suppress_envoy_headers {
                    resp.headers_mut().insert(
                        X_ENVOY_UPSTREAM_SERVICE_TIME.clone(),
                        decimal_value(start.elapsed().as_millis() as u64),
                    );
                }
                if vh.attempt_count_response {
                    resp.headers_mut()
                        .insert(X_ENVOY_ATTEMPT_COUNT.clone(), decimal_value(attempt.into()));
                }
                if let Some(w) = weighted {
                    w.response_headers.apply(resp.headers_mut(), fcx);
                }
                if let Some(cookie) = set_cookie {
                    resp.headers_mut().append(header::SET_COOKIE, *cookie);
                }
                // Envoy's route timeout spans the whole response: a body still arriving
                // when it ends is cut off (an upgrade's tunnel is not).
                if !is_upgrade && !resp.body().is_end_stream() {
                    // The stream's duration, when it ends first, counts as such.
                    let cut = match (global_deadline, duration_deadline) {
                        (Some(g), Some(d)) if d < g => Some((
                            d,
                            cfg.stats.downstream_rq_max_duration_reached.clone(),
                            Expiry::Route,
                        )),
                        (Some(g), _) => Some((g, pool.stats.rq.timeout.clone(), Expiry::Route)),
                        (None, Some(d)) => Some((
                            d,
                            cfg.stats.downstream_rq_max_duration_reached.clone(),
                            Expiry::Route,
                        )),
                        (None, None) => None,
                    };
                    // The cluster's `max_stream_duration` resets the upstream stream, the
                    // body included.
                    let cut = match (cut, resp.extensions().get::<StreamEnds>()) {
                        (Some(c), Some(e)) if c.0 <= e.0 => Some(c),
                        (_, Some(e)) => Some((
                            e.0,
                            pool.stats.rq_max_duration_reached.clone(),
                            Expiry::UpstreamDuration,
                        )),
                        (c, None) => c,
                    };
                    if let Some((deadline, counter, expiry)) = cut {
                        idle.set_response_deadline(deadline, counter, expiry);
                    }
                }
                return resp;
            }
            Some(Err(e)) => e,
            None => {
                if overall_deadline.is_some_and(|d| Instant::now() >= d) {
                    break;
                }
                pool.stats.rq_per_try_timeout.inc(worker);
                AttemptError::PerTryTimeout
            }
        };
        let retriable = match &err {
            AttemptError::Overflow => false,
            AttemptError::ConnectFailure => {
                retry.as_ref().is_some_and(|r| r.retry_connect_failure())
            }
            AttemptError::Reset
            | AttemptError::Protocol
            | AttemptError::HeadOverflow
            | AttemptError::MaxDuration => retry.as_ref().is_some_and(|r| r.retry_reset()),
            AttemptError::Refused => retry.as_ref().is_some_and(|r| r.retry_refused()),
            AttemptError::PerTryTimeout => retry.as_ref().is_some_and(|r| r.retry_timeout()),
        };
        let left = retry.as_ref().is_some_and(|r| attempt <= r.num_retries);
        let more = left && replayable(&buffered, &retry_buffer);
        if attempt > 1 && !retriable {
            sinks.retry_success(worker);
        }
        last_error = Some(err);
        last_response = None;
        let slot = if retriable && more {
            RetrySlot::take(&pool, &cluster, worker, sinks)
        } else {
            None
        };
        if let Some(slot) = slot {
            if !backoff(retry.as_deref(), attempt, overall_deadline).await {
                break;
            }
            drop(slot);
            sinks.retry(worker);
            continue;
        }
        if retriable && !left {
            sinks.retry_limit_exceeded(worker);
        }
        break;
    }
    if duration_deadline.is_some_and(|d| Instant::now() >= d) {
        cfg.stats.downstream_rq_max_duration_reached.inc(worker);
        outcome.flags = "-";
        // gRPC's DEADLINE_EXCEEDED rather than the 504's UNAVAILABLE, as Envoy.
        let mut r = local_reply(StatusCode::GATEWAY_TIMEOUT, DURATION_TIMEOUT);
        r.extensions_mut().insert(LocalReply(Some(4)));
        return r;
    }
    if let Some(mut resp) = last_response {
        sinks.charge(worker, resp.status().as_u16(), None);
        if !cfg.suppress_envoy_headers {
            resp.headers_mut().insert(
                X_ENVOY_UPSTREAM_SERVICE_TIME.clone(),
                decimal_value(start.elapsed().as_millis() as u64),
            );
        }
        if vh.attempt_count_response {
            resp.headers_mut()
                .insert(X_ENVOY_ATTEMPT_COUNT.clone(), decimal_value(attempt.into()));
        }
        return resp;
    }
    let mut reply = match last_error {
        None | Some(AttemptError::PerTryTimeout)
            if global_deadline.is_some_and(|d| Instant::now() >= d) || last_error.is_none() =>
        {
            sinks.timeout(worker);
            outcome.flags = "UT";
            timeout_reply.response()
        }
        Some(AttemptError::PerTryTimeout) => {
            outcome.flags = "UT";
            timeout_reply.response()
        }
        Some(AttemptError::Overflow) => {
            outcome.flags = "UO";
            let mut r = local_reply(StatusCode::SERVICE_UNAVAILABLE, UPSTREAM_OVERFLOW);
            r.headers_mut()
                .insert(X_ENVOY_OVERLOADED.clone(), HeaderValue::from_static("true"));
            r
        }
        Some(AttemptError::ConnectFailure) => {
            outcome.flags = "UF";
            local_reply(StatusCode::SERVICE_UNAVAILABLE, UPSTREAM_CONNECT_ERROR)
        }
        Some(AttemptError::Protocol) => {
            outcome.flags = "UPE";
            local_reply(StatusCode::BAD_GATEWAY, UPSTREAM_PROTOCOL_ERROR)
        }
        Some(AttemptError::Reset) => {
            outcome.flags = "UC";
            local_reply(StatusCode::SERVICE_UNAVAILABLE, UPSTREAM_RESET)
        }
        Some(AttemptError::Refused) => {
            outcome.flags = "UR";
            local_reply(StatusCode::SERVICE_UNAVAILABLE, UPSTREAM_REFUSED)
        }
        Some(AttemptError::HeadOverflow) => {
            outcome.flags = "UR";
            local_reply(StatusCode::SERVICE_UNAVAILABLE, UPSTREAM_REMOTE_RESET)
        }
        Some(AttemptError::MaxDuration) => {
            outcome.flags = "UMSDR";
            // Envoy's `408` while the client's request is still arriving.
            let status = if idle.request_complete() {
                StatusCode::GATEWAY_TIMEOUT
            } else {
                StatusCode::REQUEST_TIMEOUT
            };
            local_reply(status, UPSTREAM_DURATION_REACHED)
        }
        None => local_reply(StatusCode::GATEWAY_TIMEOUT, UPSTREAM_TIMEOUT),
    };
    // As Envoy's router, the reply to an upstream failure or timeout is the code the
    // request ends with; a stream's duration running out is not charged.
    if !matches!(last_error, Some(AttemptError::MaxDuration)) {
        sinks.charge(worker, reply.status().as_u16(), None);
    }
    // Envoy's router counts its attempts on its own replies too.
    if vh.attempt_count_response && attempt > 0 {
        reply
            .headers_mut()
            .insert(X_ENVOY_ATTEMPT_COUNT.clone(), decimal_value(attempt.into()));
    }
    reply
}

/// Appends `host` to `x-forwarded-host` unless it is the last value there already (Envoy's
/// `append_x_forwarded_host`).
fn append_forwarded_host(headers: &mut http::HeaderMap, host: &str) {
    let joined = match headers.get(&X_FORWARDED_HOST).and_then(|v| v.to_str().ok()) {
        Some(existing) if existing.rsplit(',').next().map(str::trim) == Some(host) => return,
        Some(existing) => format!("{existing},{host}"),
        None => host.to_string(),
    };
    if let Ok(v) = HeaderValue::from_str(&joined) {
        headers.insert(X_FORWARDED_HOST.clone(), v);
    }
}

/// The most of a kept response's body read now (by `deadline`): see the caller.
const SETTLED_BODY_LIMIT: usize = 64 * 1024;

/// A response whose body is read to its end (up to [`SETTLED_BODY_LIMIT`], else left
/// out), so that it no longer holds its upstream connection.
async fn settle(resp: Response<ProxyBody>, deadline: Option<Instant>) -> Response<ProxyBody> {
    let (mut parts, body) = resp.into_parts();
    let read = http_body_util::Limited::new(body, SETTLED_BODY_LIMIT).collect();
    let bytes = match rt::timeout(deadline, read).await {
        Some(Ok(collected)) => collected.to_bytes(),
        // Too long, broken or too slow: the head alone, announced as such.
        _ => {
            parts
                .headers
                .insert(header::CONTENT_LENGTH, HeaderValue::from(0));
            Bytes::new()
        }
    };
    Response::from_parts(parts, ProxyBody::full(bytes))
}

/// A retry in the `max_retries` circuit breaker (or the cluster's `retry_budget`): counted
/// from when it is scheduled until its attempt starts, as Envoy counts it.
struct RetrySlot(Rc<pool::ClusterPool>);

impl RetrySlot {
    /// A slot, or `None` (counted in `upstream_rq_retry_overflow`) when the breaker is full.
    fn take(
        pool: &Rc<pool::ClusterPool>,
        cluster: &ClusterInfo,
        worker: usize,
        sinks: StatSinks<'_>,
    ) -> Option<Self> {
        let b = &pool.breakers;
        let max = cluster
            .thresholds
            .max_retries(b.requests.get() + b.pending.get());
        if b.retries.get() >= max {
            sinks.retry_overflow(worker);
            return None;
        }
        b.retries.set(b.retries.get() + 1);
        Some(RetrySlot(pool.clone()))
    }
}

impl Drop for RetrySlot {
    fn drop(&mut self) {
        let b = &self.0.breakers;
        b.retries.set(b.retries.get().saturating_sub(1));
    }
}

/// Sleeps the back-off; false when the route deadline would pass first.
async fn backoff(
    policy: Option<&crate::http::route::RetryPolicy>,
    attempt: u32,
    deadline: Option<Instant>,
) -> bool {
    let Some(p) = policy else { return false };
    let d = p.backoff(attempt);
    let until = Instant::now() + d;
    if deadline.is_some_and(|dl| until >= dl) {
        return false;
    }
    rt::Sleep::until(until).await;
    true
}

/// Sends an upgrade request (websocket) on a connection of its own and, on `101`, joins
/// it with the downstream connection into a tunnel (Envoy's upgrade handling; the pool's
/// connections are never upgraded, so they stay reusable).
/// What bounds an upgrade's tunnel besides the connection manager's stream idle timeout.
struct TunnelLimits {
    /// The route's `idle_timeout`.
    idle_timeout: Option<Duration>,
    /// The end of the stream's `max_stream_duration`.
    ends_at: Option<Instant>,
    /// The cluster's `upstream_rq_max_duration_reached`, for its `max_stream_duration`.
    duration_reached: Arc<crate::stats::Counter>,
}

#[allow(clippy::too_many_arguments)]
async fn send_upgrade(
    cluster: &Arc<ClusterInfo>,
    host: &Arc<crate::upstream::Host>,
    worker: usize,
    req: Request<ProxyBody>,
    downstream: DownstreamUpgrade,
    downstream_conn: &Rc<ConnInfo>,
    limits: TunnelLimits,
    sinks: &StatSinks<'_>,
) -> Result<Response<ProxyBody>, AttemptError> {
    let stats = cluster.stats.clone();
    stats.upstream_cx_total.inc(worker);
    let deadline = Instant::now() + cluster.connect_timeout;
    let io = match rt::timeout(Some(deadline), rt::TcpIo::connect(host.address)).await {
        Some(Ok(io)) => io,
        Some(Err(e)) => {
            tracing::debug!(cluster = %cluster.name, error = %e, "upstream connect failure");
            stats.upstream_cx_connect_fail.inc(worker);
            return Err(AttemptError::ConnectFailure);
        }
        None => {
            stats.upstream_cx_connect_timeout.inc(worker);
            return Err(AttemptError::ConnectFailure);
        }
    };
    sinks.attempt(worker);
    // The cluster's stream duration runs from here, the tunnel included, as Envoy's.
    let upstream_ends = cluster.stream_limits.attempt_ends();
    let sent = if cluster.http2 {
        rt::timeout(upstream_ends, upgrade::send_extended_connect(io, req)).await
    } else {
        rt::timeout(upstream_ends, send_h1_upgrade(io, req)).await
    };
    let Some(sent) = sent else {
        limits.duration_reached.inc(worker);
        return Err(AttemptError::MaxDuration);
    };
    let mut resp = match sent {
        Ok(r) => r,
        Err(e @ upgrade::UpgradeSendError::Handshake(_)) => {
            tracing::debug!(error = %e, "upstream upgrade connection failed");
            return Err(AttemptError::ConnectFailure);
        }
        Err(e) => {
            tracing::debug!(error = %e, "upstream reset before the upgrade response");
            return Err(AttemptError::Reset);
        }
    };
    if resp.status() == StatusCode::SWITCHING_PROTOCOLS {
        let upstream = hyper::upgrade::on(&mut resp);
        let conn = downstream_conn.clone();
        conn.config.stats.downstream_cx_upgrades_total.inc(worker);
        conn.config.stats.downstream_cx_upgrades_active.inc(worker);
        // Counted from the 101 on, so an attempt dropped by its timeout leaves no count.
        stats.upstream_cx_active.inc(worker);
        // The tunnel is an active stream of its connection until it closes: an HTTP/2
        // connection carrying one is not idle.
        conn.active.set(conn.active.get() + 1);
        // The tunnel is the stream's body: the stream idle timeout goes on applying to it.
        let cfg = &downstream_conn.config;
        let idle = StreamIdle::new(
            cfg.stream_idle_timeout,
            true,
            cfg.stats.downstream_rq_idle_timeout.clone(),
            worker,
        );
        if let Some(t) = limits.idle_timeout {
            idle.set_route_timeout(t);
        }
        // The stream's `max_stream_duration` and the cluster's end the tunnel, whichever
        // comes first (Envoy resets it).
        let stream_end = limits.ends_at.map(|d| {
            let counter = cfg.stats.downstream_rq_max_duration_reached.clone();
            (d, counter, Expiry::Route)
        });
        let cluster_end =
            upstream_ends.map(|d| (d, limits.duration_reached, Expiry::UpstreamDuration));
        let end = match (stream_end, cluster_end) {
            (Some(s), Some(c)) => Some(if c.0 < s.0 { c } else { s }),
            (s, c) => s.or(c),
        };
        if let Some((d, counter, expiry)) = end {
            idle.set_response_deadline(d, counter, expiry);
        }
        upgrade::tunnel(downstream, upstream, idle, move || {
            conn.config.stats.downstream_cx_upgrades_active.dec(worker);
            stats.upstream_cx_active.dec(worker);
            conn.active.set(conn.active.get().saturating_sub(1));
            conn.last_activity.set(Instant::now());
            // The downstream connection stops counting as active with the tunnel.
            drop(conn);
        });
    }
    // Refused (not 101): the connection closes once the response body is done.
    let (mut parts, body) = resp.into_parts();
    strip_response_hop_by_hop(&mut parts.headers, parts.status);
    Ok(Response::from_parts(parts, ProxyBody::stream(body, None)))
}

/// Sends an upgrade request to an HTTP/1.1 upstream on `io` of its own.
async fn send_h1_upgrade(
    io: rt::TcpIo,
    req: Request<ProxyBody>,
) -> Result<Response<hyper::body::Incoming>, upgrade::UpgradeSendError> {
    let (mut sender, conn) = hyper::client::conn::http1::Builder::new()
        .handshake::<_, ProxyBody>(WorkerIo::new(io))
        .await
        .map_err(upgrade::UpgradeSendError::Handshake)?;
    rt::spawn(async move {
        if let Err(e) = conn.with_upgrades().await {
            tracing::debug!(error = %e, "upstream upgrade connection closed");
        }
    });
    sender
        .send_request(req)
        .await
        .map_err(upgrade::UpgradeSendError::Reset)
}

/// An HTTP/1.1 upstream's response body as the cluster passes it on: its trailers only
/// with `enable_trailers`.
fn http1_response_body(cluster: &ClusterInfo, body: ProxyBody) -> ProxyBody {
    if cluster.http1_trailers {
        body
    } else {
        body.without_trailers()
    }
}

/// Sends one request on a connection of `pool` to `host` (a stale kept-alive one is
/// replaced); the response as its head arrives.
pub(super) async fn send_once(
    pool: &Rc<pool::ClusterPool>,
    cluster: &Arc<ClusterInfo>,
    host: &Arc<crate::upstream::Host>,
    worker: usize,
    sinks: &StatSinks<'_>,
    req: Request<ProxyBody>,
) -> Result<Response<ProxyBody>, AttemptError> {
    let mut req = req;
    let limits = &cluster.stream_limits;
    // A request that never reached a reused connection (closed under us) is sent again
    // on another one, as Envoy's pool does for stale keep-alive connections.
    // A complete body (none, or buffered for retries) goes through Courier's own HTTP/1
    // client; a streamed one through hyper's.
    let raw_body = (!cluster.http2).then(|| req.body().bytes()).flatten();
    let mut counted = false;
    for _ in 0..3 {
        let raw = raw_body.is_some();
        let (sender, reused) = match pool.checkout(cluster, host, worker, raw).await {
            Ok(s) => s,
            Err(PoolError::Overflow) => return Err(AttemptError::Overflow),
            Err(PoolError::ConnectFailure(e)) => {
                tracing::debug!(cluster = %cluster.name, error = %e, "upstream connect failure");
                return Err(AttemptError::ConnectFailure);
            }
            Err(PoolError::ConnectTimeout) => return Err(AttemptError::ConnectFailure),
        };
        // As Envoy, an attempt counts (`upstream_rq_total`) once it has a connection.
        if !counted {
            sinks.attempt(worker);
            counted = true;
        }
        // As Envoy, the cluster's stream duration counts from the moment the attempt has
        // its connection.
        let ends = limits.attempt_ends();
        match sender {
            Sender::Raw(c, usage) => {
                let pool2 = pool.clone();
                let addr = host.address;
                let on_done = Box::new(move |conn: Option<H1Connection>| {
                    if let Some(conn) = conn {
                        pool2.release_raw(addr, conn, usage);
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
                    // The upstream closed the kept-alive connection as the request went
                    // out: an idempotent request goes again on another connection.
                    Err(e) if reused && e.before_response() && parts.method.is_idempotent() => {
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
                    let addr = host.address;
                    let (parts, body) = resp.into_parts();
                    let mut parts = parts;
                    strip_response_hop_by_hop(&mut parts.headers, parts.status);
                    let body = ProxyBody::stream(
                        body,
                        Some(Box::new(move |ok, _| {
                            if ok {
                                pool2.release(addr, s, usage);
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
                    // A response hyper could not parse (more fields than the cluster's
                    // `max_headers_count` among them): Envoy's protocol error.
                    None if e.error().is_parse() => {
                        pool.stats.cx_protocol_error.inc(worker);
                        tracing::debug!(error = %e.error(), "upstream protocol error");
                        return Err(AttemptError::Protocol);
                    }
                    None => {
                        pool.stats.rq_rx_reset.inc(worker);
                        tracing::debug!(error = %e.error(), "upstream reset");
                        return Err(AttemptError::Reset);
                    }
                },
            },
            Sender::H2(mut s, stream) => {
                if s.ready().await.is_err() {
                    continue;
                }
                match rt::timeout(ends, s.try_send_request(req)).await {
                    None => return Err(duration_reached(pool, worker)),
                    Some(Ok(resp)) => {
                        if cluster.stream_limits.h2_head_too_large(resp.headers()) {
                            // Dropping the response resets the stream; the connection
                            // stays, as Envoy's.
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
                        // The stream holds its place on the connection until the response
                        // ends.
                        let body =
                            ProxyBody::stream(body, Some(Box::new(move |_, _| drop(stream))));
                        let mut resp = Response::from_parts(parts, body);
                        mark_stream_end(&mut resp, ends);
                        return Ok(resp);
                    }
                    Some(Err(mut e)) => match e.take_message() {
                        Some(r) => {
                            req = r;
                            continue;
                        }
                        None => {
                            pool.stats.rq_rx_reset.inc(worker);
                            tracing::debug!(error = %e.error(), "upstream reset");
                            if refused_stream(e.error()) {
                                return Err(AttemptError::Refused);
                            }
                            return Err(AttemptError::Reset);
                        }
                    },
                }
            }
        }
    }
    Err(AttemptError::Reset)
}

/// An attempt outlived the cluster's `max_stream_duration` before its response head: the
/// stream was dropped (an HTTP/1.1 connection closes, an HTTP/2 stream is reset).
fn duration_reached(pool: &pool::ClusterPool, worker: usize) -> AttemptError {
    pool.stats.rq_max_duration_reached.inc(worker);
    AttemptError::MaxDuration
}

/// Notes on `resp` when its stream must end (the cluster's `max_stream_duration`), for
/// the router to cut its body off then.
fn mark_stream_end(resp: &mut Response<ProxyBody>, ends: Option<Instant>) {
    if let Some(at) = ends {
        resp.extensions_mut().insert(StreamEnds(at));
    }
}

/// Whether an HTTP/2 upstream refused the stream (RST_STREAM `REFUSED_STREAM`).
fn refused_stream(e: &hyper::Error) -> bool {
    let mut source: Option<&(dyn std::error::Error + 'static)> = std::error::Error::source(e);
    while let Some(err) = source {
        if let Some(h2) = err.downcast_ref::<h2::Error>() {
            return h2.reason() == Some(h2::Reason::REFUSED_STREAM);
        }
        source = err.source();
    }
    false
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn escaped_slashes_are_unescaped_in_the_path_only() {
        assert_eq!(unescape_slashes("/a/b?x=%2F"), None);
        assert_eq!(
            unescape_slashes("/a%2Fb%2fc%5Cd%5ce%2G%?q=%2F").as_deref(),
            Some("/a/b/c\\d\\e%2G%?q=%2F")
        );
        assert_eq!(unescape_slashes("/%2F").as_deref(), Some("//"));
    }

    #[test]
    fn path_normalisation() {
        assert_eq!(normalize_dots("/a/./b/../c"), "/a/c");
        assert_eq!(normalize_dots("/../a"), "/a");
        assert_eq!(normalize_dots("/a/b/.."), "/a/");
        assert_eq!(merge_slashes("//a///b/"), "/a/b/");
        let mut h = http::HeaderMap::new();
        let ours = HeaderValue::from_static("ours");
        let append_via = |h: &mut http::HeaderMap| {
            crate::http::conn_manager::headers::append_value(h, &header::VIA, &ours)
        };
        append_via(&mut h);
        assert_eq!(h.get_all(header::VIA).iter().collect::<Vec<_>>(), ["ours"]);
        h.append(header::VIA, HeaderValue::from_static("1.1 b"));
        append_via(&mut h);
        assert_eq!(
            h.get_all(header::VIA).iter().collect::<Vec<_>>(),
            ["ours, 1.1 b, ours"]
        );
        let norm = |p: &str| sanitize_path(p, true, false);
        assert_eq!(norm("/a/%2e%2E/x?q=%2e").as_deref(), Some("/x?q=%2e"));
        assert_eq!(
            norm("/a/%41%7e%20%2f%3a").as_deref(),
            Some("/a/A~%20%2f%3a")
        );
        assert_eq!(norm("/a\\b\\..\\c").as_deref(), Some("/a/c"));
        assert_eq!(norm("/a/%00"), None);
        assert_eq!(norm("/a/%zz/%4").as_deref(), Some("/a/%zz/%4"));
        assert_eq!(norm("/é/%C3%A9").as_deref(), Some("/é/%C3%A9"));
        let v = crate::http::conn_manager::headers::uuid4_value();
        let id = v.to_str().unwrap_or_default();
        assert_eq!(id.len(), 36);
        assert_eq!(&id[14..15], "4");
        assert!(matches!(&id[19..20], "8" | "9" | "a" | "b"), "{id}");
        assert_eq!(id.matches('-').count(), 4);
        assert_eq!(crate::http::conn_manager::headers::decimal_value(7), "7");
        assert_eq!(
            crate::http::conn_manager::headers::decimal_value(1023),
            "1023"
        );
        assert_eq!(
            crate::http::conn_manager::headers::decimal_value(40_000),
            "40000"
        );
    }
}
